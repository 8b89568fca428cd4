/* cuda_elementwise: embedding gather, residual add, RMSNorm, RoPE, SwiGLU and the fp32 <-> bf16 conversions of
 * the CUDA backend, each forward beside its backward.
 *
 * Elementwise kernels are grid-stride loops that move 8 bf16 (16 bytes) per access when every pointer is
 * 16-byte aligned, with a scalar tail. RMSNorm uses one block per row and fp32 accumulation with a fixed-order
 * block reduction, so it is repeatable. Per-element math comes from tl_math.h, shared with the CPU backend. */
#include "kernels/cuda/cuda_common.cuh"

#define EW_THREADS 256
#define EW_MAX_BLOCKS 65535u

static unsigned ew_blocks(size_t n, int vec) { return tl_cuda_blocks(vec ? n / 8 + 1 : n, EW_THREADS, EW_MAX_BLOCKS); }

/* ---- conversions ---- */

static __global__ void f32_to_bf16_kernel(tl_bf16 *dst, const float *src, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) tl_stf(dst + i, src[i]);
}

static __global__ void bf16_to_f32_kernel(float *dst, const tl_bf16 *src, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = tl_ldf(src + i);
}

void tl_cuda_f32_to_bf16(tl_cuda_ctx *c, tl_bf16 *dst, const float *src, size_t n, const char *op) {
    f32_to_bf16_kernel<<<ew_blocks(n, 0), EW_THREADS, 0, c->stream>>>(dst, src, n);
    tl_cuda_ok(c, cudaGetLastError(), "%s (fp32 -> bf16, n=%zu)", op, n);
}

void tl_cuda_bf16_to_f32(tl_cuda_ctx *c, float *dst, const tl_bf16 *src, size_t n, const char *op) {
    bf16_to_f32_kernel<<<ew_blocks(n, 0), EW_THREADS, 0, c->stream>>>(dst, src, n);
    tl_cuda_ok(c, cudaGetLastError(), "%s (bf16 -> fp32, n=%zu)", op, n);
}

/* ---- embedding ---- */

/* one block per token row */
static __global__ void embed_kernel(tl_bf16 *out, const tl_bf16 *table, const int32_t *tokens, int d, int vec) {
    int i = blockIdx.x;
    const tl_bf16 *src = table + (size_t)tokens[i] * d;
    tl_bf16 *dst = out + (size_t)i * d;
    int j0 = 0;
    if (vec) {
        for (int j = threadIdx.x * 8; j + 8 <= d; j += blockDim.x * 8) *(uint4 *)(dst + j) = *(const uint4 *)(src + j);
        j0 = d / 8 * 8;
    }
    for (int j = j0 + threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
}

void tl_cuda_embed_fwd(tl_backend *be, tl_act *out, const tl_act *table, const int32_t *tokens, int n, int d) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0 || d <= 0) return;
    int vec = d % 8 == 0 && tl_cuda_aligned16(out) && tl_cuda_aligned16(table);
    embed_kernel<<<n, 128, 0, c->stream>>>((tl_bf16 *)out, (const tl_bf16 *)table, tokens, d, vec);
    tl_cuda_ok(c, cudaGetLastError(), "embed_fwd (n=%d, d=%d)", n, d);
}

/* ---- residual add ---- */

static __global__ void add_kernel(tl_bf16 *y, const tl_bf16 *x, size_t n, int vec) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t nv = vec ? n / 8 : 0;
    for (size_t i = t; i < nv; i += stride) {
        float a[8], b[8];
        tl_ld8(y + 8 * i, a);
        tl_ld8(x + 8 * i, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] += b[k];
        tl_st8(y + 8 * i, a);
    }
    for (size_t i = nv * 8 + t; i < n; i += stride) tl_stf(y + i, tl_ldf(y + i) + tl_ldf(x + i));
}

void tl_cuda_add(tl_backend *be, tl_act *y, const tl_act *x, size_t n) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n == 0) return;
    int vec = tl_cuda_aligned16(y) && tl_cuda_aligned16(x);
    add_kernel<<<ew_blocks(n, vec), EW_THREADS, 0, c->stream>>>((tl_bf16 *)y, (const tl_bf16 *)x, n, vec);
    tl_cuda_ok(c, cudaGetLastError(), "add (n=%zu)", n);
}

/* ---- RMSNorm: one block per row ---- */

static int norm_threads(int d) {
    int t = (d / 8 + 31) / 32 * 32; /* about 8 elements per thread */
    return t < 32 ? 32 : t > 512 ? 512 : t;
}

static __global__ void rmsnorm_fwd_kernel(tl_bf16 *out, float *rstd, const tl_bf16 *x, const tl_bf16 *w, int d,
                                          float eps, int vec) {
    __shared__ float sh[33];
    const tl_bf16 *xi = x + (size_t)blockIdx.x * d;
    tl_bf16 *oi = out + (size_t)blockIdx.x * d;
    int j0 = vec ? d / 8 * 8 : 0;
    float ss = 0.0f;
    for (int j = threadIdx.x * 8; j < j0; j += blockDim.x * 8) {
        float a[8];
        tl_ld8(xi + j, a);
#pragma unroll
        for (int k = 0; k < 8; k++) ss += a[k] * a[k];
    }
    for (int j = j0 + threadIdx.x; j < d; j += blockDim.x) {
        float a = tl_ldf(xi + j);
        ss += a * a;
    }
    float r = tl_rstd(tl_block_sum(ss, sh), d, eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int j = threadIdx.x * 8; j < j0; j += blockDim.x * 8) {
        float a[8], b[8];
        tl_ld8(xi + j, a);
        tl_ld8(w + j, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = a[k] * r * b[k];
        tl_st8(oi + j, a);
    }
    for (int j = j0 + threadIdx.x; j < d; j += blockDim.x) tl_stf(oi + j, tl_ldf(xi + j) * r * tl_ldf(w + j));
}

void tl_cuda_rmsnorm_fwd(tl_backend *be, tl_act *out, float *rstd, const tl_act *x, const tl_act *w, int n, int d,
                         float eps) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0 || d <= 0) return;
    int vec = d % 8 == 0 && tl_cuda_aligned16(out) && tl_cuda_aligned16(x) && tl_cuda_aligned16(w);
    rmsnorm_fwd_kernel<<<n, norm_threads(d), 0, c->stream>>>((tl_bf16 *)out, rstd, (const tl_bf16 *)x,
                                                             (const tl_bf16 *)w, d, eps, vec);
    tl_cuda_ok(c, cudaGetLastError(), "rmsnorm_fwd (n=%d, d=%d)", n, d);
}

/* dx += rstd (dout w - x rstd^2 c), c = sum_j(dout_j w_j x_j) / d (tl_rmsnorm_dx) */
static __global__ void rmsnorm_bwd_kernel(tl_bf16 *dx, const tl_bf16 *dout, const tl_bf16 *x, const tl_bf16 *w,
                                          const float *rstd, int d, int vec) {
    __shared__ float sh[33];
    size_t base = (size_t)blockIdx.x * d;
    const tl_bf16 *xi = x + base, *gi = dout + base;
    tl_bf16 *dxi = dx + base;
    int j0 = vec ? d / 8 * 8 : 0;
    float dot = 0.0f;
    for (int j = threadIdx.x * 8; j < j0; j += blockDim.x * 8) {
        float a[8], g[8], b[8];
        tl_ld8(xi + j, a);
        tl_ld8(gi + j, g);
        tl_ld8(w + j, b);
#pragma unroll
        for (int k = 0; k < 8; k++) dot += g[k] * b[k] * a[k];
    }
    for (int j = j0 + threadIdx.x; j < d; j += blockDim.x) dot += tl_ldf(gi + j) * tl_ldf(w + j) * tl_ldf(xi + j);
    float cc = tl_block_sum(dot, sh) / (float)d, r = rstd[blockIdx.x];
    for (int j = threadIdx.x * 8; j < j0; j += blockDim.x * 8) {
        float a[8], g[8], b[8], o[8];
        tl_ld8(xi + j, a);
        tl_ld8(gi + j, g);
        tl_ld8(w + j, b);
        tl_ld8(dxi + j, o);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] += tl_rmsnorm_dx(g[k] * b[k], a[k], r, cc);
        tl_st8(dxi + j, o);
    }
    for (int j = j0 + threadIdx.x; j < d; j += blockDim.x)
        tl_stf(dxi + j, tl_ldf(dxi + j) + tl_rmsnorm_dx(tl_ldf(gi + j) * tl_ldf(w + j), tl_ldf(xi + j), r, cc));
}

void tl_cuda_rmsnorm_bwd(tl_backend *be, tl_act *dx, const tl_act *dout, const tl_act *x, const tl_act *w,
                         const float *rstd, int n, int d) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0 || d <= 0) return;
    int vec = d % 8 == 0 && tl_cuda_aligned16(dx) && tl_cuda_aligned16(dout) && tl_cuda_aligned16(x) &&
              tl_cuda_aligned16(w);
    rmsnorm_bwd_kernel<<<n, norm_threads(d), 0, c->stream>>>((tl_bf16 *)dx, (const tl_bf16 *)dout,
                                                             (const tl_bf16 *)x, (const tl_bf16 *)w, rstd, d, vec);
    tl_cuda_ok(c, cudaGetLastError(), "rmsnorm_bwd (n=%d, d=%d)", n, d);
}

/* ---- RoPE: one thread per rotated pair (row, head, j < hd/2) ---- */

static __global__ void rope_kernel(tl_bf16 *x, const int32_t *pos, const float *inv_freq, int n, int nheads, int hd,
                                   float sign) {
    int half = hd / 2;
    size_t total = (size_t)n * nheads * half, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
        int j = (int)(t % half);
        size_t rh = t / half; /* row * nheads + head */
        int i = (int)(rh / nheads);
        /* the angle is the fp32 product pos * inv_freq, as HF and the CPU backend compute it */
        float a = (float)pos[i] * inv_freq[j];
        float cs = cosf(a), sn = sign * sinf(a);
        tl_bf16 *xh = x + rh * hd;
        float x0 = tl_ldf(xh + j), x1 = tl_ldf(xh + j + half);
        tl_rope_rotate(&x0, &x1, cs, sn);
        tl_stf(xh + j, x0);
        tl_stf(xh + j + half, x1);
    }
}

static void rope(tl_backend *be, const char *op, tl_act *x, const int32_t *pos, const float *inv_freq, int n,
                 int nheads, int hd, float sign) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0 || nheads <= 0 || hd < 2) return;
    size_t total = (size_t)n * nheads * (hd / 2);
    rope_kernel<<<tl_cuda_blocks(total, EW_THREADS, EW_MAX_BLOCKS), EW_THREADS, 0, c->stream>>>(
        (tl_bf16 *)x, pos, inv_freq, n, nheads, hd, sign);
    tl_cuda_ok(c, cudaGetLastError(), "%s (n=%d, nheads=%d, hd=%d)", op, n, nheads, hd);
}

void tl_cuda_rope_fwd(tl_backend *be, tl_act *x, const int32_t *pos, const float *inv_freq, int n, int nheads,
                      int hd) {
    rope(be, "rope_fwd", x, pos, inv_freq, n, nheads, hd, 1.0f);
}

void tl_cuda_rope_bwd(tl_backend *be, tl_act *dx, const int32_t *pos, const float *inv_freq, int n, int nheads,
                      int hd) {
    rope(be, "rope_bwd", dx, pos, inv_freq, n, nheads, hd, -1.0f);
}

/* ---- SwiGLU ---- */

static __global__ void swiglu_fwd_kernel(tl_bf16 *h, const tl_bf16 *g, const tl_bf16 *u, size_t n, int vec) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t nv = vec ? n / 8 : 0;
    for (size_t i = t; i < nv; i += stride) {
        float a[8], b[8];
        tl_ld8(g + 8 * i, a);
        tl_ld8(u + 8 * i, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = tl_silu(a[k]) * b[k];
        tl_st8(h + 8 * i, a);
    }
    for (size_t i = nv * 8 + t; i < n; i += stride) tl_stf(h + i, tl_silu(tl_ldf(g + i)) * tl_ldf(u + i));
}

void tl_cuda_swiglu_fwd(tl_backend *be, tl_act *h, const tl_act *g, const tl_act *u, size_t n) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n == 0) return;
    int vec = tl_cuda_aligned16(h) && tl_cuda_aligned16(g) && tl_cuda_aligned16(u);
    swiglu_fwd_kernel<<<ew_blocks(n, vec), EW_THREADS, 0, c->stream>>>((tl_bf16 *)h, (const tl_bf16 *)g,
                                                                       (const tl_bf16 *)u, n, vec);
    tl_cuda_ok(c, cudaGetLastError(), "swiglu_fwd (n=%zu)", n);
}

/* every input is read before any output is written: callers may pass dg aliasing g or du aliasing u */
static __global__ void swiglu_bwd_kernel(tl_bf16 *dg, tl_bf16 *du, const tl_bf16 *dh, const tl_bf16 *g,
                                         const tl_bf16 *u, size_t n, int vec) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t nv = vec ? n / 8 : 0;
    for (size_t i = t; i < nv; i += stride) {
        float a[8], b[8], e[8], og[8], ou[8];
        tl_ld8(g + 8 * i, a);
        tl_ld8(u + 8 * i, b);
        tl_ld8(dh + 8 * i, e);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            og[k] = e[k] * b[k] * tl_silu_grad(a[k]);
            ou[k] = e[k] * tl_silu(a[k]);
        }
        tl_st8(dg + 8 * i, og);
        tl_st8(du + 8 * i, ou);
    }
    for (size_t i = nv * 8 + t; i < n; i += stride) {
        float gi = tl_ldf(g + i), ui = tl_ldf(u + i), dhi = tl_ldf(dh + i);
        tl_stf(dg + i, dhi * ui * tl_silu_grad(gi));
        tl_stf(du + i, dhi * tl_silu(gi));
    }
}

void tl_cuda_swiglu_bwd(tl_backend *be, tl_act *dg, tl_act *du, const tl_act *dh, const tl_act *g, const tl_act *u,
                        size_t n) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n == 0) return;
    int vec = tl_cuda_aligned16(dg) && tl_cuda_aligned16(du) && tl_cuda_aligned16(dh) && tl_cuda_aligned16(g) &&
              tl_cuda_aligned16(u);
    swiglu_bwd_kernel<<<ew_blocks(n, vec), EW_THREADS, 0, c->stream>>>(
        (tl_bf16 *)dg, (tl_bf16 *)du, (const tl_bf16 *)dh, (const tl_bf16 *)g, (const tl_bf16 *)u, n, vec);
    tl_cuda_ok(c, cudaGetLastError(), "swiglu_bwd (n=%zu)", n);
}
