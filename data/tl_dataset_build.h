/* tl_data_build: `tailor data build IN.jsonl OUT.h5 --model PATH [--kind sft|preference|prompt]` — tokenizes a JSONL file
 * of per-user examples with the model's tokenizer and writes tailor's HDF5 schema (docs/data-format.md).
 *
 * Rows (one JSON object per line; blank lines skipped; optional "group" on every row of a user):
 *   sft:        {"user", "prompt", "response"}  or  {"user", "messages": [{"role", "content"}, ...]}, the last
 *               message being the assistant's: the messages before it are rendered with the ChatML template plus
 *               the generation prompt ("<|im_start|>assistant\n") as the prompt, and its content + "<|im_end|>\n"
 *               is the response (so the model learns to stop)
 *   preference: {"user", "prompt", "chosen", "rejected"}
 *   prompt:     {"user", "prompt"[, "reference"]}  or  {"user", "messages": [...]}: the messages rendered with the
 *               ChatML template plus the generation prompt; a last assistant message is the reference answer
 *               (+ "<|im_end|>\n"), not part of the prompt. Every row has a reference or none does; a prompt
 *               must not be empty (online RL: task.type grpo / rloo)
 * Prompt and response are tokenized separately (the boundary is exact). A bad row is TL_ERR_INPUT naming the file
 * and its line; the output is written under a temporary name and renamed, so it never exists half-written.
 *
 * Streaming: rows are written as they are read, in batches of TAILOR_DATA_BUILD_FLUSH_BYTES (default 8 MiB) of
 * tokens and per-row values, into chunked extendible datasets (1 MiB chunks); an input that fits one batch is
 * written contiguous, as before. Memory is O(users) (each user's name, group, row and token counts and a hash
 * slot: about 50 bytes plus the names) plus fixed buffers, never the dataset: the batch, HDF5's chunk caches
 * (3 MiB per array at most) and the final check's blocks (tl_data_check_bounded, about 10 MiB). The users table
 * is written after the last row, from those per-user records. Outputs of at most 64 MiB are also opened whole
 * with the reader train uses before they are published. */
#ifndef TL_DATA_BUILD_H
#define TL_DATA_BUILD_H

#include <stdio.h>

#include "kernels/tl_status.h"

typedef struct {
    FILE *report;     /* the closing summary (NULL: none) */
    int report_users; /* 1: one line per user in the summary whatever their number (otherwise only up to 64 users;
                       * above, the distribution of rows per user and the 5 largest users) */
    FILE *progress;   /* a progress line (lines, MiB and rows per second) every 10 s, or 1 s on a terminal (NULL:
                       * none); TAILOR_DATA_BUILD_PROGRESS_S overrides the interval */
    int progress_tty; /* progress is a terminal: one self-rewriting line */
} tl_data_build_opts;

/* model: an HF model directory holding tokenizer.json, or a GGUF file (tokenizer.ggml.*). opts may be NULL. */
tl_status tl_data_build_ex(const char *in, const char *out, const char *model, const char *kind,
                           const tl_data_build_opts *opts, tl_error *err);
/* The check data build runs on its output before publishing it, in bounded memory (a few MiB at a time, plus the
 * users table): the reader's rules for a file of `kind` (sft, preference, prompt), storage and dtypes included,
 * except the model's vocabulary. In-process, without the reader's crash isolation: for files tailor wrote.
 * A file that breaks a rule is TL_ERR_INPUT "<file>: <dataset>: <problem>" as from the reader. */
tl_status tl_data_check_bounded(const char *path, const char *kind, tl_error *err);
/* The same with only a report stream (may be NULL). */
tl_status tl_data_build(const char *in, const char *out, const char *model, const char *kind, FILE *report,
                        tl_error *err);

#endif
