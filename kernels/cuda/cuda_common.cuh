/* cuda_common: private state of the CUDA backend and the helpers its files share: the context, the sticky
 * error recording, bf16 <-> fp32 element access and deterministic block reductions.
 *
 * The CUDA backend keeps activations and frozen weights in bf16 (tl_act = __nv_bfloat16, act_size 2) and
 * everything typed float* in fp32; every kernel accumulates in fp32 (double where the result goes to host as a
 * norm). Ops never allocate: the buffers an op may need (staging for act transfers, a scratch area, a small
 * slot-argument buffer, the cuBLAS workspace) are allocated once at create time. */
#ifndef TL_CUDA_COMMON_CUH
#define TL_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#ifndef TL_HAVE_CUDA
#define TL_HAVE_CUDA 1 /* tl_backend.h declares the CUDA entry points only under this macro */
#endif
extern "C" {
#include "kernels/tl_backend.h"
#include "kernels/tl_status.h"
}
#include "kernels/tl_math.h"

typedef __nv_bfloat16 tl_bf16;

/* Sizes of the buffers allocated at create time (bytes / elements). */
#define TL_CUDA_STAGING_FLOATS ((size_t)1 << 20)  /* 4 MiB: fp32 <-> bf16 transfer chunks */
#define TL_CUDA_SCRATCH_FLOATS ((size_t)1 << 24)  /* 64 MiB: LoRA dh blocks, attention D, norm partials */
#define TL_CUDA_SLOTBUF_ENTRIES 4096              /* per-launch slot arguments (adamw, grad_sqnorm) */
#define TL_CUDA_BLAS_WS_BYTES ((size_t)32 << 20)  /* cuBLAS workspace (the size NVIDIA advises for Hopper) */

typedef struct {
    void *p;
    size_t bytes;
} tl_cuda_alloc_rec;

typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    float *staging;    /* TL_CUDA_STAGING_FLOATS */
    float *scratch;    /* TL_CUDA_SCRATCH_FLOATS (8-byte aligned: also holds doubles) */
    void *slotbuf;     /* TL_CUDA_SLOTBUF_ENTRIES * sizeof(tl_adam_slot) */
    int *bad_target;   /* device int: 1 + the last row whose target was outside [-1, V), 0 if none */
    int bad_target_V;  /* V of the ce_fwd_bwd call that may have set it */
    int *bad_kv;       /* device int: 1 + the last row of a kv_store / attn_kv whose cache sequence was < 0 or
                        * position outside [0, max_ctx) (the row was skipped), 0 if none */
    int bad_kv_max_ctx;/* max_ctx of the kv_store / attn_kv call that may have set it */
    int smem_optin;    /* largest dynamic shared memory a block may opt in to on this device */
    int attn_smem_max; /* the opt-in set on the attention kernels at create time */
    /* every device byte this backend holds (its own buffers and be->alloc blocks) */
    size_t bytes_now, bytes_peak;
    tl_cuda_alloc_rec *recs; /* live be->alloc blocks, to know their size on free */
    size_t n_recs, cap_recs;
    int failed; /* sticky: the first failure, reported by be->status(); later ops do nothing */
    tl_error err;
} tl_cuda_ctx;

static inline tl_cuda_ctx *tl_cuda(tl_backend *be) { return (tl_cuda_ctx *)be->ctx; }

/* Records the first failure as "cuda: <what>: <reason>". */
void tl_cuda_fail(tl_cuda_ctx *c, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Returns 1 when e is cudaSuccess, else records "cuda: <what>: <cudaGetErrorString(e)>" and returns 0. */
int tl_cuda_ok(tl_cuda_ctx *c, cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int tl_cuda_blas_ok(tl_cuda_ctx *c, cublasStatus_t s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Launch configuration helpers. */
static inline unsigned tl_cuda_blocks(size_t work, unsigned per_block, unsigned cap) {
    size_t b = (work + per_block - 1) / per_block;
    if (b < 1) b = 1;
    return b > cap ? cap : (unsigned)b;
}
static inline int tl_cuda_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* ---- device helpers ---- */

static __device__ __forceinline__ float tl_ldf(const tl_bf16 *p) { return __bfloat162float(*p); }
static __device__ __forceinline__ void tl_stf(tl_bf16 *p, float v) { *p = __float2bfloat16(v); }

/* 8 bf16 <-> 8 floats through one 16-byte access (pointer 16-byte aligned) */
static __device__ __forceinline__ void tl_ld8(const tl_bf16 *p, float f[8]) {
    uint4 u = *(const uint4 *)p;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}
static __device__ __forceinline__ void tl_st8(tl_bf16 *p, const float f[8]) {
    uint4 u;
    __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *(uint4 *)p = u;
}

/* Block-wide sum / max with a fixed combination order (shuffle tree per warp, then warp 0 over the warp
 * results), so a given block size always gives bit-identical results. blockDim.x must be a multiple of 32 and
 * every thread must call it; sh holds 33 values. */
static __device__ __forceinline__ float tl_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float tl_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ double tl_warp_sumd(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float tl_block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tl_warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous reduction */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = tl_warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}
static __device__ __forceinline__ float tl_block_max(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tl_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : -INFINITY;
        t = tl_warp_max(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}
static __device__ __forceinline__ double tl_block_sumd(double v, double *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tl_warp_sumd(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = tl_warp_sumd(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

/* ---- ops (one file per group; the op table is filled in cuda_backend.cu) ---- */

/* cuda_elementwise.cu */
void tl_cuda_embed_fwd(tl_backend *be, tl_act *out, const tl_act *table, const int32_t *tokens, int n, int d);
void tl_cuda_add(tl_backend *be, tl_act *y, const tl_act *x, size_t n);
void tl_cuda_rmsnorm_fwd(tl_backend *be, tl_act *out, float *rstd, const tl_act *x, const tl_act *w, int n, int d,
                         float eps);
void tl_cuda_rmsnorm_bwd(tl_backend *be, tl_act *dx, const tl_act *dout, const tl_act *x, const tl_act *w,
                         const float *rstd, int n, int d);
void tl_cuda_rope_fwd(tl_backend *be, tl_act *x, const int32_t *pos, const float *inv_freq, int n, int nheads,
                      int hd);
void tl_cuda_rope_bwd(tl_backend *be, tl_act *dx, const int32_t *pos, const float *inv_freq, int n, int nheads,
                      int hd);
void tl_cuda_swiglu_fwd(tl_backend *be, tl_act *h, const tl_act *g, const tl_act *u, size_t n);
void tl_cuda_swiglu_bwd(tl_backend *be, tl_act *dg, tl_act *du, const tl_act *dh, const tl_act *g, const tl_act *u,
                        size_t n);
/* fp32 <-> bf16 conversion of n elements on the backend's stream (used by upload_act / download_act) */
void tl_cuda_f32_to_bf16(tl_cuda_ctx *c, tl_bf16 *dst, const float *src, size_t n, const char *op);
void tl_cuda_bf16_to_f32(tl_cuda_ctx *c, float *dst, const tl_bf16 *src, size_t n, const char *op);

/* cuda_linear.cu; tl_cuda_gemm: C[m, n] (column-major, ldc) = op(A) op(B) (+ C when beta != 0), bf16 A and B,
 * fp32 accumulation, C of type ctype; 0 after recording a cuBLAS failure naming `op` */
int tl_cuda_gemm(tl_cuda_ctx *c, const char *op, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 const void *A, int lda, const void *B, int ldb, float beta, void *C, cudaDataType_t ctype, int ldc);
void tl_cuda_linear_fwd(tl_backend *be, tl_act *y, const tl_act *x, const tl_act *W, const tl_act *bias, int n,
                        int in, int out, int accumulate);
void tl_cuda_linear_bwd_x(tl_backend *be, tl_act *dx, const tl_act *dy, const tl_act *W, int n, int in, int out,
                          int accumulate);

/* cuda_ce.cu */
void tl_cuda_ce_fwd_bwd(tl_backend *be, float *logp, tl_act *dx, const tl_act *x, const tl_act *W,
                        const int32_t *targets, const float *dlogp, int n, int d, int V, float *work,
                        size_t work_len, int chunk);

/* cuda_lora.cu */
void tl_cuda_lora_fwd(tl_backend *be, tl_act *y, float *h, const tl_act *x, const tl_lora_site *ls, const tl_mb *mb,
                     int in, int out);
void tl_cuda_lora_bwd(tl_backend *be, tl_act *dx, float *dA, float *dB, const tl_act *dy, const tl_act *x,
                     const float *h, const tl_lora_site *ls, const tl_mb *mb, int in, int out);

/* cuda_attention.cu */
void tl_cuda_attn_fwd(tl_backend *be, tl_act *out, float *lse, const tl_act *q, const tl_act *k, const tl_act *v,
                      const tl_mb *mb, int Hq, int Hkv, int hd);
void tl_cuda_attn_bwd(tl_backend *be, tl_act *dq, tl_act *dk, tl_act *dv, const tl_act *dout, const tl_act *out,
                      const float *lse, const tl_act *q, const tl_act *k, const tl_act *v, const tl_mb *mb, int Hq,
                      int Hkv, int hd);
/* Opts the attention kernels in to the shared memory they may need on this device (called once at create). */
int tl_cuda_attn_setup(tl_cuda_ctx *c);

/* cuda_optim.cu */
void tl_cuda_grad_sqnorm(tl_backend *be, float *out_host, const float *g, size_t slot_stride, size_t P,
                         const int32_t *slots, int nslots);
void tl_cuda_adamw(tl_backend *be, float *p, float *m, float *v, const float *g, size_t slot_stride, size_t P,
                   const tl_adam_slot *hs, int nslots, double b1, double b2, float eps, float wd);

/* cuda_decode.cu (KV-cache decoding ops) */
void tl_cuda_kv_store(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v, const int32_t *seq,
                      const int32_t *pos, int n, int max_ctx, int Hkv, int hd);
void tl_cuda_attn_kv(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                     const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd);

#endif
