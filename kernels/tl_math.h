/* tl_math: per-element formulas shared by the CPU loops and the CUDA kernels.
 *
 * Every function here is `static inline` and marked TL_HD, which becomes __host__ __device__ under nvcc and
 * nothing under a C compiler. The math is therefore tested on machines without a GPU (tests/unit), and only
 * the parallel decomposition of each op is GPU-specific. Keep these free of memory access patterns: they take
 * scalars and return scalars. */
#ifndef TL_MATH_H
#define TL_MATH_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define TL_HD __host__ __device__
#else
#define TL_HD
#endif

/* ---- RMSNorm: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) ---- */
static inline TL_HD float tl_rstd(float sumsq, int d, float eps) { return 1.0f / sqrtf(sumsq / (float)d + eps); }

/* ---- SwiGLU: h = silu(g) * u ---- */
static inline TL_HD float tl_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline TL_HD float tl_silu(float g) { return g * tl_sigmoidf(g); }
/* d silu(g)/dg = s + g s (1 - s), s = sigmoid(g) */
static inline TL_HD float tl_silu_grad(float g) {
    float s = tl_sigmoidf(g);
    return s * (1.0f + g * (1.0f - s));
}

/* ---- RoPE (HF rotate-half): for i < hd/2, pair (x[i], x[i+hd/2]) rotated by angle pos * inv_freq[i] ----
 * forward:  x0' = x0 c - x1 s;  x1' = x1 c + x0 s
 * backward: the transpose of a rotation is the rotation by -angle. */
static inline TL_HD void tl_rope_rotate(float *x0, float *x1, float c, float s) {
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}

/* RMSNorm backward for one element, w frozen: with gw = dout * w and c = sum_j(gw_j x_j) / d over the row,
 * dx = rstd (gw - x rstd^2 c) (the second term is the gradient through rstd). */
static inline TL_HD float tl_rmsnorm_dx(float gw, float x, float rstd, float c) {
    return rstd * (gw - x * rstd * rstd * c);
}

/* ---- AdamW (decoupled weight decay, as torch.optim.AdamW) ----
 * p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 * p -= lr * (m / bc1) / (sqrt(v / bc2) + eps), with bc1 = 1 - b1^t, bc2 = 1 - b2^t.
 * omb1 = 1 - b1 and omb2 = 1 - b2 come from the caller computed in double from the double betas and rounded once
 * (torch computes them in Python floats): in float32, 1 - 0.999f is 1.3e-5 (relative) below 0.001, which makes
 * the second moment that much too small. bc1 and bc2 likewise are computed in double. */
static inline TL_HD void tl_adamw_update(float *p, float *m, float *v, float g, float lr, float b1, float b2,
                                         float omb1, float omb2, float eps, float wd, float bc1, float bc2) {
    float pv = *p * (1.0f - lr * wd);
    float mv = b1 * *m + omb1 * g;
    float vv = b2 * *v + omb2 * g * g;
    *m = mv;
    *v = vv;
    *p = pv - lr * (mv / bc1) / (sqrtf(vv / bc2) + eps);
}

/* ---- Counter-based random numbers (splitmix64 finalizer) ----
 * Dropout masks are regenerated from (row seed, site, column) in backward instead of being stored; the row
 * seed depends only on the example and the adapter's own step, so a mask never depends on batch composition. */
static inline TL_HD uint64_t tl_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* uniform in [0, 1) with 24 bits */
static inline TL_HD float tl_uniform(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t h = tl_mix64(seed ^ tl_mix64(a * 0x100000001b3ULL ^ tl_mix64(b)));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}
/* dropout multiplier: 0 with probability p, else 1/(1-p) */
static inline TL_HD float tl_dropout_mul(uint64_t row_seed, uint32_t site, uint32_t col, float p) {
    if (p <= 0.0f) return 1.0f;
    return tl_uniform(row_seed, site, col) < p ? 0.0f : 1.0f / (1.0f - p);
}

/* ---- Loss terms ---- */
/* log-sum-exp merge step of an online softmax: running (max m, sum s) absorbs value x */
static inline TL_HD void tl_lse_push(float *m, float *s, float x) {
    if (x > *m) {
        *s = *s * expf(*m - x) + 1.0f;
        *m = x;
    } else {
        *s += expf(x - *m);
    }
}

/* Online softmax step with a weighted accumulator (attention): running (max m, sum s) absorbs score x. Returns
 * the factor by which what was accumulated before must be rescaled (1 when the max did not move; s is already
 * rescaled) and sets *w to the weight of x relative to the new max. Start from m = -INFINITY, s = 0. */
static inline TL_HD float tl_softmax_push(float *m, float *s, float x, float *w) {
    if (x > *m) {
        float c = expf(*m - x);
        *s = *s * c + 1.0f;
        *m = x;
        *w = 1.0f;
        return c;
    }
    *w = expf(x - *m);
    *s += *w;
    return 1.0f;
}

/* Cross-entropy gradient w.r.t. one logit of a row, given p = softmax probability of that logit and dlogp, the
 * upstream gradient of the row's log p(target): d(logp)/dlogit = onehot - p. */
static inline TL_HD float tl_ce_dlogit(float dlogp, float p, int is_target) {
    return dlogp * ((is_target ? 1.0f : 0.0f) - p);
}

#endif
