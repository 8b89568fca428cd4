/* tl_generate: text generation with KV-cache decoding over the base model and a pool of LoRA adapters, many
 * adapters side by side in one batch (one prompt answered by many users' adapters at once).
 *
 * A decoder holds, per layer, a key and a value cache [n_seqs, max_ctx, Hkv * hd] (backend activations)
 * allocated once. Each call appends new tokens to any subset of the sequences (the prompt at once for prefill,
 * then one token per step) and returns the logits of each sequence's last new token. Every sequence has its own
 * adapter slot (TL_SLOT_BASE: the bare base model); its rows form one segment of the micro-batch. docs/generate.md. */
#ifndef TL_GENERATE_H
#define TL_GENERATE_H

#include <stdint.h>
#include <stdio.h>

#include "trainer/model/tl_model.h"

typedef struct tl_decoder tl_decoder;

/* n_seqs sequences of at most max_ctx tokens; sequence s runs adapter slot slots[s] of p (TL_SLOT_BASE: base
 * model; p may be NULL when every slot is TL_SLOT_BASE). One append runs at most max_rows new tokens in all. */
tl_status tl_decoder_create(const tl_model *m, const tl_lora_pool *p, int n_seqs, const int32_t *slots,
                            int max_ctx, int max_rows, tl_decoder **out, tl_error *err);
void tl_decoder_free(tl_decoder *d);
/* Empties every sequence and gives sequence s the adapter slot slots[s] (checked as at create): a decoder made
 * once serves batch after batch (the RL rollouts of each step) without allocating. p: NULL keeps the pool of
 * create, else another pool of the same rank and targets (a frozen copy of the adapters: the RL evaluation of the
 * starting adapters); TL_ERR_RUNTIME when its layout differs. */
tl_status tl_decoder_reset(tl_decoder *d, const tl_lora_pool *p, const int32_t *slots, tl_error *err);
/* tokens held by sequence s so far */
int tl_decoder_len(const tl_decoder *d, int s);
/* Appends n_new[s] tokens to each sequence s (tokens: flat, sequence after sequence; n_new[s] may be 0) and
 * writes the logits of each extended sequence's last new token to logits[s * V .. + V) (host fp32; rows of
 * sequences with n_new[s] = 0 are left alone). TL_ERR_INPUT when a sequence would pass max_ctx, the rows pass
 * max_rows or a token is outside the vocabulary. */
tl_status tl_decoder_append(tl_decoder *d, const int32_t *tokens, const int *n_new, float *logits, tl_error *err);

/* Scratch of tl_sample_token: V entries. */
typedef struct {
    float p;
    int32_t id;
} tl_prob_id;

/* Next token from logits [V] (overwritten). temperature <= 0: greedy (the first largest logit). Otherwise
 * softmax(logits / temperature) restricted to the smallest set of most likely tokens whose mass reaches top_p
 * (top_p >= 1: all), sampled with the splitmix64 stream *rng (advanced): the same seed gives the same tokens. */
int32_t tl_sample_token(float *logits, int V, float temperature, float top_p, uint64_t *rng, tl_prob_id *scratch);

/* What `tailor generate` answers (docs/generate.md; its arguments: trainer/cli/cmd_generate.c). */
typedef struct {
    const char *model;                          /* HF directory or .gguf file */
    const char *const *adapters;                /* PEFT directories, each answered under its own path */
    int n_adapters;
    const char *run;                            /* a run directory: the adapters its adapters/index.json lists */
    const char *const *users;                   /* the run's users (or adapters) to answer as */
    int n_users;
    int all_users;                              /* every adapter of the run (users ignored) */
    int base;                                   /* also answer with the bare base model, named "base" */
    const char *prompt;
    int chat;                                   /* render the prompt with the chat template first */
    int max_new_tokens;                         /* capped at the model's context */
    float temperature, top_p;                   /* tl_sample_token */
    uint64_t seed;
    const char *backend;                        /* cpu, cuda or auto (NULL: auto) */
    int threads;                                /* 0: the backend's default */
} tl_generate_opts;

/* Generates the answers, all adapters of one layout in one batch. One answer is streamed to out token by token
 * (then a newline); several are written as "=== <name> ===" blocks. Errors come back in err (TL_ERR_INPUT for a bad
 * model, adapter, run or prompt); nothing is printed but the answers. */
tl_status tl_generate(const tl_generate_opts *o, FILE *out, tl_error *err);

/* The layout of a PEFT directory's adapter_config.json as generate reads it (r in [1, 65536], lora_alpha a
 * positive float, use_rslora, target_modules tailor supports); TL_ERR_INPUT naming the file and field otherwise.
 * `tailor inspect` of an adapter directory calls it too. */
tl_status tl_peft_read_layout(const char *dir, int *rank, float *alpha, int *rslora, uint32_t *targets,
                              tl_error *err);

#endif
