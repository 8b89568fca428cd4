/* cpu_ce: the LM head fused with cross-entropy on the CPU backend, chunked over tokens.
 *
 * Per chunk of rows: logits = x W^T into work [chunk, V] (sgemm), per row log-sum-exp and log p(target), then,
 * when a gradient is wanted, the logits become dlogits = dlogp (onehot - p) in place (as llm.c's fused
 * classifier) and dx = dlogits W (sgemm). Only `chunk` rows of logits ever exist. The exponentials are taken
 * once per logit with the vectorisable tl_cpu_expf (relative error about 2e-7, as expf) and kept in place for
 * the gradient: p = exp(z - max) / sum. */
#include <math.h>
#include <string.h>

#include "kernels/tl_math.h"
#include "kernels/cpu/cpu_internal.h"

/* partial sums of the softmax denominator: one per lane, in float, added in double at the end of the row */
#define CE_LANES 16

void tl_cpu_ce_fwd_bwd(tl_backend *be, float *logp, tl_act *dx_, const tl_act *x_, const tl_act *W_,
                       const int32_t *targets, const float *dlogp, int n, int d, int V, float *work,
                       size_t work_len, int chunk) {
    float *dx = dx_;
    const float *x = x_, *W = W_;
    if (chunk <= 0) {
        tl_cpu_fail(be, "ce_fwd_bwd: chunk = %d, expected > 0", chunk);
        return;
    }
    if (V > 0 && work_len / (size_t)V < (size_t)chunk) {
        tl_cpu_fail(be, "ce_fwd_bwd: work holds %zu floats, expected chunk * V = %d * %d", work_len, chunk, V);
        return;
    }
    int bad = -1; /* a target outside [-1, V): the row is treated as untrained and the failure recorded */
    for (int c0 = 0; c0 < n; c0 += chunk) {
        int m = n - c0 < chunk ? n - c0 : chunk;
        tl_cpu_gemm(be, 0, 1, m, V, d, 1.0f, x + (size_t)c0 * d, d, W, d, 0.0f, work, V);
#pragma omp parallel for num_threads(tl_cpu(be)->threads) reduction(max : bad) if ((long)m * V > 4096)
        for (int i = 0; i < m; i++) {
            int row = c0 + i, t = targets[row];
            float *zi = work + (size_t)i * V;
            if (t < 0 || t >= V) {
                if (t >= V || t < -1) bad = bad > row ? bad : row;
                logp[row] = 0.0f;
                if (dx) memset(zi, 0, (size_t)V * sizeof(float));
                continue;
            }
            float zmax = -INFINITY;
            for (int c = 0; c < V; c++) zmax = zi[c] > zmax ? zi[c] : zmax;
            float zt = zi[t];
            /* one pass of exponentials, kept in place when a gradient is wanted: p = exp(z - zmax) / sum */
            for (int c = 0; c < V; c++) {
                float e = zi[c] - zmax;
                zi[c] = e < -88.0f ? -88.0f : e;
            }
            /* 16 float partial sums (the loop vectorises; see cpu_attention.c's row_exp), added in double */
            float lane[CE_LANES] = {0.0f};
            int c = 0;
            for (; c + CE_LANES <= V; c += CE_LANES) {
#pragma omp simd
                for (int q = 0; q < CE_LANES; q++) {
                    float e = tl_cpu_expf(zi[c + q]);
                    zi[c + q] = e;
                    lane[q] += e;
                }
            }
            double sum = 0.0;
            for (; c < V; c++) {
                zi[c] = tl_cpu_expf(zi[c]);
                sum += zi[c];
            }
            for (int q = 0; q < CE_LANES; q++) sum += lane[q];
            float lse = zmax + (float)log(sum);
            logp[row] = zt - lse;
            if (dx) {
                float g = dlogp[row], inv = (float)(1.0 / sum);
#pragma omp simd
                for (int k = 0; k < V; k++) zi[k] = tl_ce_dlogit(g, zi[k] * inv, 0);
                zi[t] += g;
            }
        }
        if (dx) tl_cpu_gemm(be, 0, 0, m, d, V, 1.0f, work, V, W, d, 0.0f, dx + (size_t)c0 * d, d);
    }
    if (bad >= 0)
        tl_cpu_fail(be, "ce_fwd_bwd: targets[%d] = %d outside [-1, %d)", bad, targets[bad], V);
}
