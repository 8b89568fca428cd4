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
 * and its line; the output is written under a temporary name and renamed, so it never exists half-written. */
#ifndef TL_DATA_BUILD_H
#define TL_DATA_BUILD_H

#include <stdio.h>

#include "kernels/tl_status.h"

/* model: an HF model directory holding tokenizer.json, or a GGUF file (tokenizer.ggml.*). report: per-user summary lines (may be NULL). */
tl_status tl_data_build(const char *in, const char *out, const char *model, const char *kind, FILE *report,
                        tl_error *err);

#endif
