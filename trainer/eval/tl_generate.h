/* tl_generate: text generation with KV-cache decoding over the base model and a pool of LoRA adapters, many
 * adapters side by side in one batch (one prompt answered by many users' adapters at once).
 *
 * A decoder holds, per layer, a key and a value cache [n_seqs, max_ctx, Hkv * hd] (backend activations)
 * allocated once. Each call appends new tokens to any subset of the sequences (the prompt at once for prefill,
 * then one token per step) and returns the logits of each sequence's last new token. Every sequence has its own
 * adapter slot (-1: the bare base model); its rows form one segment of the micro-batch. docs/generate.md. */
#ifndef TL_GENERATE_H
#define TL_GENERATE_H

#include <stdint.h>

#include "trainer/model/tl_model.h"

typedef struct tl_decoder tl_decoder;

/* n_seqs sequences of at most max_ctx tokens; sequence s runs adapter slot slots[s] of p (-1: base model; p may
 * be NULL when every slot is -1). One append runs at most max_rows new tokens in all. */
tl_status tl_decoder_create(const tl_model *m, const tl_lora_pool *p, int n_seqs, const int32_t *slots,
                            int max_ctx, int max_rows, tl_decoder **out, tl_error *err);
void tl_decoder_free(tl_decoder *d);
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

/* The `tailor generate` command: argv holds the arguments after "generate". Prints the answers to stdout,
 * errors as one line on stderr; returns the exit code (0 ok, 1 runtime failure, 2 bad usage or input). */
int tl_generate_main(int argc, char **argv);

/* The layout of a PEFT directory's adapter_config.json as generate reads it (r in [1, 65536], lora_alpha a
 * positive float, use_rslora, target_modules tailor supports); TL_ERR_INPUT naming the file and field otherwise.
 * `tailor inspect` of an adapter directory calls it too. */
tl_status tl_peft_read_layout(const char *dir, int *rank, float *alpha, int *rslora, uint32_t *targets,
                              tl_error *err);

#endif
