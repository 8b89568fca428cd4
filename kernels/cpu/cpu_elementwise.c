/* cpu_elementwise: embedding lookup, residual add, RMSNorm, RoPE and SwiGLU on the CPU backend, each forward
 * beside its backward. Per-element formulas come from tl_math.h; rows are split over OpenMP threads. Row
 * reductions accumulate in double: this backend is the reference the others are checked against. */
#include <math.h>
#include <string.h>

#include "kernels/tl_math.h"
#include "kernels/cpu/cpu_internal.h"

/* below this many elements a parallel region costs more than it saves */
#define TL_CPU_PAR_MIN 4096

void tl_cpu_embed_fwd(tl_backend *be, tl_act *out_, const tl_act *table_, const int32_t *tokens, int n, int d) {
    float *out = out_;
    const float *table = table_;
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)n * d > TL_CPU_PAR_MIN)
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * d, table + (size_t)tokens[i] * d, (size_t)d * sizeof(float));
}

void tl_cpu_add(tl_backend *be, tl_act *y_, const tl_act *x_, size_t n) {
    float *y = y_;
    const float *x = x_;
#pragma omp parallel for simd num_threads(tl_cpu(be)->threads) if (n > TL_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* ---- RMSNorm ---- */

void tl_cpu_rmsnorm_fwd(tl_backend *be, tl_act *out_, float *rstd, const tl_act *x_, const tl_act *w_, int n, int d,
                        float eps) {
    float *out = out_;
    const float *x = x_, *w = w_;
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)n * d > TL_CPU_PAR_MIN)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
        float r = tl_rstd((float)ss, d, eps);
        rstd[i] = r;
        for (int j = 0; j < d; j++) oi[j] = xi[j] * r * w[j];
    }
}

void tl_cpu_rmsnorm_bwd(tl_backend *be, tl_act *dx_, const tl_act *dout_, const tl_act *x_, const tl_act *w_,
                        const float *rstd, int n, int d) {
    float *dx = dx_;
    const float *dout = dout_, *x = x_, *w = w_;
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)n * d > TL_CPU_PAR_MIN)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d, *gi = dout + (size_t)i * d;
        float *dxi = dx + (size_t)i * d;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < d; j++) dot += (double)gi[j] * w[j] * xi[j];
        float c = (float)(dot / d), r = rstd[i];
        for (int j = 0; j < d; j++) dxi[j] += tl_rmsnorm_dx(gi[j] * w[j], xi[j], r, c);
    }
}

/* ---- RoPE ---- */

/* Rotates every head of every row by +angle (sign 1) or -angle (sign -1, the transpose, for backward). The
 * angle is the fp32 product pos * inv_freq, as HF computes it, so positions match the reference model. */
static void rope_apply(tl_backend *be, float *x, const int32_t *pos, const float *inv_freq, int n, int nheads,
                       int hd, float sign) {
    int half = hd / 2;
    if (half <= 0) return;
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)n * nheads * hd > TL_CPU_PAR_MIN)
    for (int i = 0; i < n; i++) {
        float cs[half], sn[half]; /* hd/2 floats each: head dims are at most a few hundred */
        for (int j = 0; j < half; j++) {
            float a = (float)pos[i] * inv_freq[j];
            cs[j] = cosf(a);
            sn[j] = sign * sinf(a);
        }
        float *xi = x + (size_t)i * nheads * hd;
        for (int h = 0; h < nheads; h++) {
            float *xh = xi + (size_t)h * hd;
            for (int j = 0; j < half; j++) tl_rope_rotate(&xh[j], &xh[j + half], cs[j], sn[j]);
        }
    }
}

void tl_cpu_rope_fwd(tl_backend *be, tl_act *x, const int32_t *pos, const float *inv_freq, int n, int nheads,
                     int hd) {
    rope_apply(be, x, pos, inv_freq, n, nheads, hd, 1.0f);
}

void tl_cpu_rope_bwd(tl_backend *be, tl_act *dx, const int32_t *pos, const float *inv_freq, int n, int nheads,
                     int hd) {
    rope_apply(be, dx, pos, inv_freq, n, nheads, hd, -1.0f);
}

/* ---- SwiGLU ---- */

/* sigmoid(g) = 1 / (1 + exp(-g)) with the vectorisable tl_cpu_expf; -g is clamped to [-88, 88] first, in a loop
 * of its own (a clamp inside the exp loop turns into branches that stop the vectoriser), where the result is
 * already 0 or 1 to float precision. The formulas are tl_math.h's (tl_silu, tl_silu_grad). */

/* elements per parallel chunk: long enough for the vector loops, small enough for a stack buffer */
#define SWIGLU_CHUNK 2048

/* s[i] = sigmoid(g[i]) for i < n <= SWIGLU_CHUNK */
static void sigmoid_chunk(float *s, const float *g, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = -g[i];
        x = x < -88.0f ? -88.0f : x;
        s[i] = x > 88.0f ? 88.0f : x;
    }
#pragma omp simd
    for (size_t i = 0; i < n; i++) s[i] = 1.0f / (1.0f + tl_cpu_expf(s[i]));
}

void tl_cpu_swiglu_fwd(tl_backend *be, tl_act *h_, const tl_act *g_, const tl_act *u_, size_t n) {
    float *h = h_;
    const float *g = g_, *u = u_;
    size_t nb = (n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if (n > TL_CPU_PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * SWIGLU_CHUNK, m = n - i0 < SWIGLU_CHUNK ? n - i0 : SWIGLU_CHUNK;
        float s[SWIGLU_CHUNK];
        sigmoid_chunk(s, g + i0, m);
#pragma omp simd
        for (size_t i = 0; i < m; i++) h[i0 + i] = g[i0 + i] * s[i] * u[i0 + i];
    }
}

void tl_cpu_swiglu_bwd(tl_backend *be, tl_act *dg_, tl_act *du_, const tl_act *dh_, const tl_act *g_,
                       const tl_act *u_, size_t n) {
    float *dg = dg_, *du = du_;
    const float *dh = dh_, *g = g_, *u = u_;
    size_t nb = (n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if (n > TL_CPU_PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * SWIGLU_CHUNK, m = n - i0 < SWIGLU_CHUNK ? n - i0 : SWIGLU_CHUNK;
        float s[SWIGLU_CHUNK];
        sigmoid_chunk(s, g + i0, m);
#pragma omp simd
        for (size_t i = 0; i < m; i++) {
            /* read everything first: callers may pass dg aliasing g or du aliasing u */
            float gi = g[i0 + i], ui = u[i0 + i], dhi = dh[i0 + i], si = s[i];
            dg[i0 + i] = dhi * ui * (si * (1.0f + gi * (1.0f - si)));
            du[i0 + i] = dhi * (gi * si);
        }
    }
}
