/* tl_model: the Llama-family decoder over the backend op table, with a pool of LoRA adapters.
 *
 * The model is frozen; only LoRA A/B matrices train. One forward/backward runs a flat micro-batch whose rows
 * belong to many adapters: the base products run once over all rows, the LoRA products per adapter segment. */
#ifndef TL_MODEL_H
#define TL_MODEL_H

#include <stdint.h>

#include "data/tl_batcher.h"
#include "data/tl_hf_config.h"
#include "kernels/tl_backend.h"
#include "trainer/config/tl_config.h"

typedef struct {
    tl_act *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo; /* biases NULL unless attention_bias */
    tl_act *mlp_norm, *wgate, *wup, *wdown;
} tl_layer_weights;

typedef struct {
    tl_model_config cfg;
    tl_backend *be;
    tl_act *embed;      /* [V, d] */
    tl_act *final_norm; /* [d] */
    tl_act *lm_head;    /* [V, d]; == embed when tied */
    tl_layer_weights *layers;
    float *inv_freq;    /* backend, [head_dim / 2] */
    size_t n_params;
} tl_model;

/* Loads a model onto the backend: an HF directory (config.json + safetensors) or a llama GGUF file (path ending
 * in .gguf; config from its metadata, tensors dequantized and Q/K rows put back in HF order). */
tl_status tl_model_load(const char *dir, tl_backend *be, tl_model *m, tl_error *err);
/* Runs every check tl_model_load runs (config, each tensor's presence, shape, dtype and finite values), reading
 * through one host buffer and uploading nothing: `tailor inspect` calls it so that it never calls valid a model
 * that train, eval or generate refuse. *tied: the lm_head is the embedding. */
tl_status tl_model_validate(const char *path, tl_model_config *cfg, int64_t *n_params, int *tied, tl_error *err);
void tl_model_free(tl_model *m);
/* Only the configuration of a model path (HF directory or .gguf file), without loading weights. */
tl_status tl_model_config_from(const char *path, tl_model_config *cfg, tl_error *err);
/* in and out features of a target module (TL_T_*) */
void tl_target_dims(const tl_model_config *c, int target, int *in, int *out);

/* A pool of LoRA adapters. Slot s's parameters are one contiguous block of P floats at params + s * P (the
 * same layout for grads and Adam moments): for each layer, for each enabled target in TL_T_* order, A [r, in]
 * then B [out, r]. */
typedef struct {
    int n_slots, rank, n_layers;
    uint32_t targets;
    float alpha, scale, dropout;
    int rslora;
    size_t P;
    size_t off_head; /* reward models: the score head w [d] of each slot at this offset; 0 when there is none */
    int head_dim;    /* d when there is a score head, else 0 */
    size_t *off_A, *off_B; /* [n_layers * TL_N_TARGETS], offsets inside a slot block (unused targets: 0) */
    int in_dim[TL_N_TARGETS], out_dim[TL_N_TARGETS];
    float *params, *grads, *m, *v; /* backend memory, n_slots * P each */
    int64_t *steps;                /* host, [n_slots] optimizer steps taken by each adapter */
    char **names;                  /* host, [n_slots] adapter names */
} tl_lora_pool;

/* Where a checkpoint or an export reads a pool's state from when it is not the pool's own backend memory (one
 * rank's share of a many-process run, gathered while the file is written): read(ctx, k, first, dst, n) fills
 * dst with floats [first, first + n) of params (k = 0), m (1) or v (2), counted over the [n_slots * P] layout.
 * Readers are called in order: a checkpoint asks k = 0, 1, 2, each from 0 up in pieces of
 * tl_state_chunk_floats(P) floats (the last shorter); an export asks k = 0 one adapter (P floats) at a time. */
typedef struct {
    tl_status (*read)(void *ctx, int k, size_t first, float *dst, size_t n, tl_error *err);
    void *ctx;
} tl_state_reader;

/* A whole number of adapters' worth of floats, about 64 MiB (at least one adapter). */
static inline size_t tl_state_chunk_floats(size_t P) {
    size_t rows = ((size_t)16 << 20) / (P ? P : 1);
    return (rows ? rows : 1) * (P ? P : 1);
}

/* How a pool's adapters are shaped and started (the adapter.* keys). */
typedef struct {
    int rank;
    float alpha;
    int rslora;       /* scale alpha / sqrt(rank) instead of alpha / rank */
    float dropout;
    uint32_t targets; /* bits of the TL_T_* target modules (tl_config.h) */
    uint64_t seed;
    int with_head;    /* a per-adapter scalar score head (reward models) */
} tl_lora_opts;

/* PEFT initialization: A kaiming-uniform (a = sqrt(5), bound 1/sqrt(in)), B = 0. Each slot's A comes from an
 * RNG seeded by (seed, the slot's name), so an adapter's start never depends on the others in the pool. With
 * o->with_head, a per-adapter scalar score head (reward models, HF LlamaForSequenceClassification's `score`,
 * initialized normal(0, 0.02) as HF does) at the end of each slot's block, trained and saved with the LoRA
 * parameters. */
tl_status tl_lora_pool_init(tl_lora_pool *p, const tl_model *m, int n_slots, char *const *names,
                            const tl_lora_opts *o, tl_error *err);
void tl_lora_pool_free(tl_lora_pool *p, tl_backend *be);
/* p's layout for n_slots adapters named names[] with step counts steps[] (borrowed), holding no state (every buffer
 * NULL): what exports and checkpoints take when each adapter's rows come from a reader (a store, other ranks). */
tl_lora_pool tl_lora_pool_layout(const tl_lora_pool *p, int n_slots, char **names, int64_t *steps);
/* The initial parameters tl_lora_pool_init gives the adapter `name` (host, P floats): they depend only on the
 * seed, the name and the layout, so an adapter created later (a store's, a grown run's) starts as it would have. */
void tl_lora_fresh_params(const tl_lora_pool *p, uint64_t seed, const char *name, float *host);
/* Puts an adapter's state into slot `slot` (host arrays of P floats; m, v NULL: zero) with its name and step count:
 * how an adapter store moves adapters in and out of a pool of fewer slots than adapters. */
tl_status tl_lora_pool_set_slot(tl_lora_pool *p, tl_backend *be, int slot, const char *name, const float *params,
                                const float *m, const float *v, int64_t steps, tl_error *err);

/* Activation buffers for micro-batches of up to max_tokens rows, allocated once. What the backward keeps per layer
 * follows p's LoRA targets (a projection's input only where its LoRA gradient needs it): a backward with a pool
 * that has targets p lacks fails (TL_ERR_RUNTIME); forwards with any pool are fine. */
typedef struct tl_workspace tl_workspace;
tl_status tl_workspace_create(const tl_model *m, const tl_lora_pool *p, int max_tokens, int max_seqs,
                              tl_workspace **out, tl_error *err);
void tl_workspace_free(tl_workspace *ws, tl_backend *be);
size_t tl_workspace_bytes(const tl_workspace *ws);

/* Forward (and, when train, backward) on one micro-batch. Segments with slot < 0 run the bare base model.
 * logp_out (host, [n_tok]) receives log p(target) per row (0 where no target). With train, the LoRA
 * gradients of each segment's slot accumulate into p->grads with dL/dlogp[i] = -weight[i]. */
tl_status tl_model_step(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *mb, int train,
                        float *logp_out, tl_error *err);
/* The same step in pieces, for losses that need sequence-level quantities before the backward pass (DPO,
 * reward models). tl_model_forward runs every layer and keeps the activations; base_only runs every segment as
 * the bare base model (the DPO reference), else segment slots index pool p (the trained pool, or a frozen
 * reference pool of the same layout). Then either tl_model_logp (log p(target) per row; with dlogp it also
 * sets the gradient into the final hidden state, dL/dlogp[i] = dlogp[i]) or tl_model_hidden_rows +
 * tl_model_set_dhidden_rows (a head on chosen rows' final hidden states), then tl_model_backward accumulates
 * LoRA gradients into p->grads. */
tl_status tl_model_forward(const tl_model *m, const tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *mb,
                           int base_only, tl_error *err);
tl_status tl_model_logp(const tl_model *m, tl_workspace *ws, const tl_host_mb *mb, const float *dlogp,
                        float *logp_out, tl_error *err);
/* final normed hidden states of rows[] (host out [n_rows, d]) */
tl_status tl_model_hidden_rows(const tl_model *m, tl_workspace *ws, const int32_t *rows, int n_rows, float *out,
                               tl_error *err);
/* the gradient into the final hidden state: g [n_rows, d] at rows[], zero elsewhere */
tl_status tl_model_set_dhidden_rows(const tl_model *m, tl_workspace *ws, const int32_t *rows, int n_rows,
                                    const float *g, tl_error *err);
tl_status tl_model_backward(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_error *err);

/* Forward only, logits of every row: logits_out (host) [n_tok, V]. For tests and small inputs. */
tl_status tl_model_logits(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *mb,
                          float *logits_out, tl_error *err);

#endif
