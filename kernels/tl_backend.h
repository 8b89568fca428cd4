/* tl_backend: the op table the model calls. Two backends fill it: cpu (plain C + OpenMP + OpenBLAS, fp32,
 * the reference) and cuda (own kernels + cuBLAS, bf16 activations and frozen weights, fp32 accumulation).
 * The model, losses and trainer are written once against this table.
 *
 * Conventions
 * - Pointers passed to ops are backend ("device") memory from be->alloc; on the CPU backend that is host memory.
 * - tl_act is the backend's activation/frozen-weight element type: float on cpu, bf16 on cuda. Its size is
 *   be->act_size. Tensors typed float* are fp32 on every backend (LoRA params, grads, Adam moments, rstd, lse,
 *   per-token log-probabilities, loss weights).
 * - Layouts are row-major. A token batch is [n, d]. Linear weights are [out, in] (HF layout): y = x W^T.
 * - "accumulate" means y += result; otherwise y = result. Ops documented as "+=" always accumulate.
 * - Ops return void. A backend that can fail inside an op (CUDA launch errors) records the first failure with
 *   the op's name and shapes; be->status() reports it and clears nothing (the error is sticky). Every backend
 *   fills status (callers call it without a NULL check).
 * - Capabilities are fields, not names: callers ask host_memory, stream, mem_stats and device, never compare
 *   be->name.
 * - A micro-batch (tl_mb) is flat and padding-free: sequences back to back, boundaries in cu_seqlens, grouped
 *   by adapter so that each adapter's rows are one contiguous range (a segment). Attention never crosses a
 *   sequence boundary; LoRA applies the segment's adapter slot to its rows. */
#ifndef TL_BACKEND_H
#define TL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"

typedef void tl_act;

/* Rows [row0, row1) of a micro-batch use adapter slot `slot` (slot < 0: no adapter, the bare base model). */
typedef struct {
    int32_t row0, row1, slot;
} tl_seg;

/* One micro-batch as the ops see it. Host arrays (h_*) are always valid; the others are backend memory
 * (identical to the host arrays on the CPU backend). */
typedef struct {
    int n_tok, n_seq, n_seg, max_seqlen;
    const int32_t *h_cu_seqlens; /* [n_seq + 1], h_cu_seqlens[0] = 0, last = n_tok */
    const tl_seg *h_segs;        /* [n_seg], ordered, covering [0, n_tok) */
    const int32_t *tokens;       /* [n_tok] */
    const int32_t *pos;          /* [n_tok] position of each token within its sequence */
    const int32_t *cu_seqlens;   /* [n_seq + 1] */
    const int32_t *targets;      /* [n_tok] next-token target, -1 where the position is not trained */
    const uint64_t *row_seed;    /* [n_tok] dropout seed per row; depends only on the example, never the batch */
    const tl_seg *segs;          /* [n_seg] */
} tl_mb;

/* Per-adapter optimizer step arguments (host memory). The update of slot `slot` uses its own learning rate
 * (from its own schedule position), its own bias corrections and its own clipping factor `gscale`. */
typedef struct {
    int32_t slot;
    float lr, bc1, bc2, gscale;
} tl_adam_slot;

/* One LoRA site (one target matrix of one layer) over the adapter pool, as lora_fwd / lora_bwd see it.
 * Slot s's matrices are A + s * slot_stride ([r, in]) and B + s * slot_stride ([out, r]) (backend memory, fp32);
 * the gradients passed beside it use the same layout and stride. */
typedef struct {
    const float *A, *B;
    size_t slot_stride;
    int r;          /* the rank */
    float scale;    /* alpha / r */
    float dropout;  /* probability in [0, 1); 0: no dropout */
    uint32_t site;  /* the dropout stream of this site (tl_dropout_mul) */
} tl_lora_site;

typedef struct tl_backend tl_backend;
struct tl_backend {
    const char *name; /* "cpu" or "cuda" */
    size_t act_size;  /* bytes per tl_act element */
    void *ctx;

    /* ---- capabilities ---- */
    int host_memory; /* 1: backend buffers are host memory (cpu), readable without download; 0 otherwise */
    int device;      /* the device index of a GPU backend; -1 on the cpu */
    /* the native stream every op runs on, in order (cudaStream_t as void *), for collectives on backend buffers;
     * NULL on the cpu */
    void *(*stream)(tl_backend *be);
    /* bytes of backend memory held now and the peak since creation (either pointer may be NULL); the member is
     * NULL when the backend keeps no such count (cpu) */
    void (*mem_stats)(tl_backend *be, size_t *used, size_t *peak);

    /* ---- memory and transfers ---- */
    tl_status (*alloc)(tl_backend *be, size_t bytes, void **out, tl_error *err);
    void (*free)(tl_backend *be, void *p);
    void (*upload)(tl_backend *be, void *dst, const void *src, size_t bytes);    /* host -> backend */
    void (*download)(tl_backend *be, void *dst, const void *src, size_t bytes);  /* backend -> host */
    void (*upload_act)(tl_backend *be, tl_act *dst, const float *src, size_t n);  /* fp32 host -> act */
    void (*download_act)(tl_backend *be, float *dst, const tl_act *src, size_t n);/* act -> fp32 host */
    void (*zero)(tl_backend *be, void *p, size_t bytes);
    tl_status (*status)(tl_backend *be, tl_error *err); /* mandatory: waits for queued work; reports a sticky failure */
    void (*destroy)(tl_backend *be);

    /* ---- elementwise and normalization ---- */
    /* out[i, :] = table[tokens[i], :] */
    void (*embed_fwd)(tl_backend *be, tl_act *out, const tl_act *table, const int32_t *tokens, int n, int d);
    /* y[i] += x[i] for i < n */
    void (*add)(tl_backend *be, tl_act *y, const tl_act *x, size_t n);
    /* out = x * rstd * w per row; rstd[n] saved for backward */
    void (*rmsnorm_fwd)(tl_backend *be, tl_act *out, float *rstd, const tl_act *x, const tl_act *w, int n, int d,
                        float eps);
    /* dx += d(out)/dx^T dout (w frozen: no dw) */
    void (*rmsnorm_bwd)(tl_backend *be, tl_act *dx, const tl_act *dout, const tl_act *x, const tl_act *w,
                        const float *rstd, int n, int d);
    /* in place on x [n, nheads * hd]; rotate-half pairs (j, j + hd/2) by pos[i] * inv_freq[j], j < hd/2 */
    void (*rope_fwd)(tl_backend *be, tl_act *x, const int32_t *pos, const float *inv_freq, int n, int nheads,
                     int hd);
    /* in place on the gradient: rotation by the negative angle */
    void (*rope_bwd)(tl_backend *be, tl_act *dx, const int32_t *pos, const float *inv_freq, int n, int nheads,
                     int hd);
    /* h = silu(g) * u, elementwise over n */
    void (*swiglu_fwd)(tl_backend *be, tl_act *h, const tl_act *g, const tl_act *u, size_t n);
    /* dg = dh * u * silu'(g), du = dh * silu(g) (written) */
    void (*swiglu_bwd)(tl_backend *be, tl_act *dg, tl_act *du, const tl_act *dh, const tl_act *g, const tl_act *u,
                       size_t n);

    /* ---- frozen dense layers ---- */
    /* y (+)= x W^T (+ bias if non-NULL); x [n, in], W [out, in], y [n, out] */
    void (*linear_fwd)(tl_backend *be, tl_act *y, const tl_act *x, const tl_act *W, const tl_act *bias, int n,
                       int in, int out, int accumulate);
    /* dx (+)= dy W; the weights are frozen, so there is no dW */
    void (*linear_bwd_x)(tl_backend *be, tl_act *dx, const tl_act *dy, const tl_act *W, int n, int in, int out,
                         int accumulate);

    /* ---- LoRA over adapter segments ----
     * With ls a tl_lora_site: slot s's matrices are A_s = ls->A + s * ls->slot_stride ([r, in]) and
     * B_s = ls->B + s * ls->slot_stride ([out, r]); gradients dA, dB use the same layout and stride. PEFT's
     * formula: y += scale * B_s(A_s(dropout(x))). The dropout mask of element (row, col) is
     * tl_dropout_mul(mb->row_seed[row], ls->site, col, ls->dropout).
     * h [n, r] (fp32) is x_drop A_s^T, saved for backward; rows of slot < 0 get h = 0 and no update. */
    void (*lora_fwd)(tl_backend *be, tl_act *y, float *h, const tl_act *x, const tl_lora_site *ls, const tl_mb *mb,
                     int in, int out);
    /* dB_s += scale dy^T h;  dh = scale dy B_s;  dA_s += dh^T x_drop;  dx += (dh A_s) * mask (dx may be NULL) */
    void (*lora_bwd)(tl_backend *be, tl_act *dx, float *dA, float *dB, const tl_act *dy, const tl_act *x,
                     const float *h, const tl_lora_site *ls, const tl_mb *mb, int in, int out);

    /* ---- attention: causal, grouped-query, within each sequence of mb ----
     * q, out [n, Hq * hd]; k, v [n, Hkv * hd]; query head h reads kv head h / (Hq / Hkv);
     * softmax scale 1/sqrt(hd); lse [n, Hq] (natural log) saved for backward. */
    void (*attn_fwd)(tl_backend *be, tl_act *out, float *lse, const tl_act *q, const tl_act *k, const tl_act *v,
                     const tl_mb *mb, int Hq, int Hkv, int hd);
    /* dq, dk, dv written (not accumulated) */
    void (*attn_bwd)(tl_backend *be, tl_act *dq, tl_act *dk, tl_act *dv, const tl_act *dout, const tl_act *out,
                     const float *lse, const tl_act *q, const tl_act *k, const tl_act *v, const tl_mb *mb, int Hq,
                     int Hkv, int hd);

    /* ---- LM head + cross-entropy, fused and chunked over tokens ----
     * For rows with targets[i] >= 0: logp[i] = log softmax(x_i W^T)[targets[i]]; other rows logp[i] = 0.
     * If dx != NULL: dx[i] = dlogp[i] * d(logp[i])/dx_i = dlogp[i] * (onehot - p_i) W (written; 0 where
     * targets[i] < 0). Logits exist only for `chunk` rows at a time in work [chunk, V] (fp32 backend memory),
     * so the [n, V] matrix is never held. x [n, d], W [V, d]. work_len is the number of floats work holds: less
     * than chunk * V (or chunk <= 0) records a failure naming work and writes nothing. */
    void (*ce_fwd_bwd)(tl_backend *be, float *logp, tl_act *dx, const tl_act *x, const tl_act *W,
                       const int32_t *targets, const float *dlogp, int n, int d, int V, float *work, size_t work_len,
                       int chunk);

    /* ---- optimizer over the adapter pool (params of one slot are one contiguous block of P floats) ---- */
    /* out_host[i] = sum of squares of g[slots[i] * slot_stride .. + P) (slots, out_host: host memory) */
    void (*grad_sqnorm)(tl_backend *be, float *out_host, const float *g, size_t slot_stride, size_t P,
                        const int32_t *slots, int nslots);
    /* AdamW on each listed slot with g scaled by gscale; betas, eps, weight decay shared (host array hs). The
     * betas are double: 1 - b1 and 1 - b2 are computed in double and rounded once (tl_adamw_update). */
    void (*adamw)(tl_backend *be, float *p, float *m, float *v, const float *g, size_t slot_stride, size_t P,
                  const tl_adam_slot *hs, int nslots, double b1, double b2, float eps, float wd);

    /* ---- KV-cache decoding (tailor generate, docs/generate.md) ----
     * A cache kc / vc is [n_cache_seqs, max_ctx, Hkv * hd] (tl_act): entry (s, t) holds the post-RoPE key (the
     * value) of token t of cache sequence s. seq[n], pos[n] (backend int32) give each batch row's cache sequence
     * and position; 0 <= pos[i] < max_ctx and seq[i] >= 0 are the caller's to guarantee. Both backends check them
     * and record a failure naming max_ctx (the CPU backend then writes nothing, the CUDA backend skips the row);
     * seq[i] < n_cache_seqs cannot be checked. */
    /* kc[seq[i], pos[i], :] = k[i, :] and vc[seq[i], pos[i], :] = v[i, :]; k, v [n, Hkv * hd] */
    void (*kv_store)(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v, const int32_t *seq,
                     const int32_t *pos, int n, int max_ctx, int Hkv, int hd);
    /* out[i] = softmax(q_i K^T / sqrt(hd)) V over entries [0, pos[i]] of cache sequence seq[i] (the row's own
     * key and value must already be stored), per query head, query head h reading kv head h / (Hq / Hkv);
     * q, out [n, Hq * hd] */
    void (*attn_kv)(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                    const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd);
};

/* Backends. name: "cpu", "cuda" or "auto" (cuda when a GPU is present and the build has it, else cpu).
 * threads <= 0 means the OpenMP default. */
tl_status tl_backend_open(const char *name, int threads, tl_backend **out, tl_error *err);
/* The same, on CUDA device `device` when the choice is cuda (one process per GPU: tl_dist_cuda_device). */
tl_status tl_backend_open_on(const char *name, int threads, int device, tl_backend **out, tl_error *err);
tl_status tl_backend_cpu_create(int threads, tl_backend **out, tl_error *err);
/* Which code the CPU backend's dense products run on, in one line (tailor's AVX2 tiles or OpenBLAS, and why:
 * the CPU, or TL_CPU_GEMM=auto|tailor|openblas in the environment). */
const char *tl_backend_cpu_products(void);
/* What the build and the machine offer, asked without a backend open: whether this build has the CUDA backend,
 * and the GPUs it sees (0 without it), for the choice of a process's device (tl_dist_cuda_device). */
int tl_backend_has_cuda(void);
int tl_backend_gpu_count(void);
#ifdef TL_HAVE_CUDA
tl_status tl_backend_cuda_create(int device, tl_backend **out, tl_error *err);
int tl_cuda_device_count(void);
/* Its stream and memory figures are the table's stream and mem_stats entries. */
#endif

#endif
