/* cpu_internal: private state and op prototypes shared by the files of the CPU backend.
 *
 * The CPU backend is fp32 throughout (tl_act is float), parallel with OpenMP over rows / heads / sequences,
 * and uses OpenBLAS sgemm for dense products. Ops never allocate: the one scratch buffer an op may need (LoRA
 * row blocks, per-thread attention tiles) is allocated once at create time and never grown; ops that would need
 * more record a sticky failure that be->status() reports. */
#ifndef TL_CPU_INTERNAL_H
#define TL_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cblas.h>

#include "kernels/tl_backend.h"

/* Scratch: 2M floats (8 MiB) fits LoRA blocks of >= 64 rows up to in = 16384 with dropout, and full-size
 * attention tiles (64 query rows x 512 keys, twice) for up to 31 threads; more threads get shorter key blocks. */
#define TL_CPU_SCRATCH_FLOATS ((size_t)1 << 21)

typedef struct {
    int threads;      /* OpenMP team size of every parallel region of this backend */
    float *scratch;   /* TL_CPU_SCRATCH_FLOATS floats, 64-byte aligned */
    size_t scratch_n;
    int own_mm;       /* products run on cpu_mm.c's tiles instead of OpenBLAS (tl_cpu_mm_choice) */
    int failed;       /* sticky: the first failure inside an op, reported by status() */
    tl_error err;
} tl_cpu_ctx;

static inline tl_cpu_ctx *tl_cpu(tl_backend *be) { return (tl_cpu_ctx *)be->ctx; }

/* Records the first failure of an op (later ones are dropped: the first is the cause). Call from serial code. */
void tl_cpu_fail(tl_backend *be, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Row-major sgemm C = alpha op(A) op(B) + beta C, [M, N] = [M, K] [K, N]. Empty products are skipped; leading
 * dimensions are clamped to >= 1 so that K = 0 (C = beta C) is a valid call. */
static inline void tl_cpu_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                                const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda > 0 ? lda : 1, B, ldb > 0 ? ldb : 1, beta, C, ldc > 0 ? ldc : 1);
}

/* exp(x) for x in [-88, 88], in plain arithmetic so that loops over it vectorise (Cephes expf: x = n ln2 + r,
 * |r| <= ln2/2, degree-6 polynomial; relative error about 2e-7). x below about -87.7 gives +0 (the exponent field
 * becomes 0); NaN stays NaN. Callers clamp x first, in a loop of their own: a clamp inside the same loop turns
 * into branches that stop the vectoriser. Used by attention, cross-entropy and SwiGLU. */
static inline float tl_cpu_expf(float x) {
    union {
        float f;
        uint32_t u;
    } t, e;
    t.f = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: the low mantissa bits hold round(x log2 e) */
    float n = t.f - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    e.u = (t.u - 0x4B400000u + 127u) << 23; /* 2^n */
    return y * e.f;
}

/* cpu_gemm.c: one product on the calling thread by the backend's product code: cpu_mm.c's tiles for op(A) op(B)
 * other than A^T B^T with beta 0 or 1 when the backend chose them, else OpenBLAS (tl_cpu_sgemm). */
void tl_cpu_gemm1(const tl_cpu_ctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* cpu_gemm.c: tl_cpu_gemm1 split over the backend's OpenMP team (OpenBLAS itself runs single-threaded); called
 * from serial code, it runs on one thread inside a parallel region. */
void tl_cpu_gemm(tl_backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

/* cpu_mm.c: tailor's own products, row-major: C = alpha A B^T (+ C) (nt), C = alpha A B (+ C) (nn) and
 * C = alpha A^T B (+ C) (tn; A is [K, M]); acc = 0 overwrites C without reading it. Single-threaded and
 * thread-safe; an element's value depends on K only, not on M, N or the tile it falls in. Call only when
 * tl_cpu_mm_choice() returned 1. */
void tl_cpu_mm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                  float *C, int ldc);
void tl_cpu_mm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                  float *C, int ldc);
void tl_cpu_mm_tn(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                  float *C, int ldc);
/* Whether the backend uses them: 1 where the CPU has AVX2 and FMA, unless TL_CPU_GEMM=openblas is in the
 * environment (TL_CPU_GEMM=auto or tailor: the default); 0 for OpenBLAS; -1 when TL_CPU_GEMM holds anything else.
 * *why is set to a one-line description (NULL for -1). */
int tl_cpu_mm_choice(const char **why);

/* cpu_elementwise.c */
void tl_cpu_embed_fwd(tl_backend *be, tl_act *out, const tl_act *table, const int32_t *tokens, int n, int d);
void tl_cpu_add(tl_backend *be, tl_act *y, const tl_act *x, size_t n);
void tl_cpu_rmsnorm_fwd(tl_backend *be, tl_act *out, float *rstd, const tl_act *x, const tl_act *w, int n, int d,
                        float eps);
void tl_cpu_rmsnorm_bwd(tl_backend *be, tl_act *dx, const tl_act *dout, const tl_act *x, const tl_act *w,
                        const float *rstd, int n, int d);
void tl_cpu_rope_fwd(tl_backend *be, tl_act *x, const int32_t *pos, const float *inv_freq, int n, int nheads,
                     int hd);
void tl_cpu_rope_bwd(tl_backend *be, tl_act *dx, const int32_t *pos, const float *inv_freq, int n, int nheads,
                     int hd);
void tl_cpu_swiglu_fwd(tl_backend *be, tl_act *h, const tl_act *g, const tl_act *u, size_t n);
void tl_cpu_swiglu_bwd(tl_backend *be, tl_act *dg, tl_act *du, const tl_act *dh, const tl_act *g, const tl_act *u,
                       size_t n);

/* cpu_linear.c */
void tl_cpu_linear_fwd(tl_backend *be, tl_act *y, const tl_act *x, const tl_act *W, const tl_act *bias, int n,
                       int in, int out, int accumulate);
void tl_cpu_linear_bwd_x(tl_backend *be, tl_act *dx, const tl_act *dy, const tl_act *W, int n, int in, int out,
                         int accumulate);

/* cpu_lora.c */
void tl_cpu_lora_fwd(tl_backend *be, tl_act *y, float *h, const tl_act *x, const tl_lora_site *ls, const tl_mb *mb,
                     int in, int out);
void tl_cpu_lora_bwd(tl_backend *be, tl_act *dx, float *dA, float *dB, const tl_act *dy, const tl_act *x,
                     const float *h, const tl_lora_site *ls, const tl_mb *mb, int in, int out);

/* cpu_attention.c */
void tl_cpu_attn_fwd(tl_backend *be, tl_act *out, float *lse, const tl_act *q, const tl_act *k, const tl_act *v,
                     const tl_mb *mb, int Hq, int Hkv, int hd);
void tl_cpu_attn_bwd(tl_backend *be, tl_act *dq, tl_act *dk, tl_act *dv, const tl_act *dout, const tl_act *out,
                     const float *lse, const tl_act *q, const tl_act *k, const tl_act *v, const tl_mb *mb, int Hq,
                     int Hkv, int hd);

/* cpu_ce.c */
void tl_cpu_ce_fwd_bwd(tl_backend *be, float *logp, tl_act *dx, const tl_act *x, const tl_act *W,
                       const int32_t *targets, const float *dlogp, int n, int d, int V, float *work,
                       size_t work_len, int chunk);

/* cpu_optim.c */
void tl_cpu_grad_sqnorm(tl_backend *be, float *out_host, const float *g, size_t slot_stride, size_t P,
                        const int32_t *slots, int nslots);
void tl_cpu_adamw(tl_backend *be, float *p, float *m, float *v, const float *g, size_t slot_stride, size_t P,
                  const tl_adam_slot *hs, int nslots, double b1, double b2, float eps, float wd);

/* cpu_decode.c (KV-cache decoding ops) */
void tl_cpu_kv_store(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v, const int32_t *seq,
                     const int32_t *pos, int n, int max_ctx, int Hkv, int hd);
void tl_cpu_attn_kv(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                    const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd);

#endif
