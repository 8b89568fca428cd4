/* cpu_ce: the LM head fused with cross-entropy on the CPU backend, chunked over tokens.
 *
 * Per chunk of rows that have a target (gathered into the backend's scratch: rows without one, prompt rows and
 * each sequence's last, get logp = 0 and dx = 0 and no logits): logits = x W^T into work [chunk, V], per row
 * log-sum-exp and log p(target), then, when a gradient is wanted, the logits become dlogits = dlogp (onehot - p)
 * in place (as llm.c's fused classifier) and dx = dlogits W, written back to the rows. Only `chunk` rows of
 * logits ever exist. With the tiles of cpu_mm.c a row's values do not depend on which rows share its chunk.
 * The exponentials are taken once per logit with the vectorisable tl_cpu_expf (relative error about 2e-7, as
 * expf) and kept in place for the gradient: p = exp(z - max) / sum. */
#include <math.h>
#include <string.h>

#include "kernels/tl_math.h"
#include "kernels/cpu/cpu_internal.h"

/* partial sums of the softmax denominator: one per lane, in float, added in double at the end of the row */
#define CE_LANES 16
/* rows with a target per product, at most (the gathered rows' indices live on the stack) */
#define CE_ROWS_MAX 4096

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
    /* Only the rows with a target go through the head: prompt rows and the last row of each sequence have none,
     * and their logits would be computed only to be dropped. Up to `m_cap` of them are gathered into the
     * backend's scratch (xg [m, d]), their logits computed into work, and dx written back row by row. */
    tl_cpu_ctx *cc = tl_cpu(be);
    size_t m_cap = cc->scratch_n / (size_t)(d > 0 ? d : 1);
    if (m_cap > (size_t)chunk) m_cap = (size_t)chunk;
    if (m_cap > CE_ROWS_MAX) m_cap = CE_ROWS_MAX;
    if (m_cap == 0) {
        tl_cpu_fail(be, "ce_fwd_bwd: d = %d needs more than the %zu floats of scratch for one row", d, cc->scratch_n);
        return;
    }
    float *xg = cc->scratch;
    int idx[CE_ROWS_MAX];
    int bad = -1; /* a target outside [-1, V): the row is treated as untrained and the failure recorded */
    for (int r = 0; r < n;) {
        int m = 0;
        for (; r < n && m < (int)m_cap; r++) {
            int t = targets[r];
            if (t >= 0 && t < V) {
                idx[m++] = r;
                continue;
            }
            if ((t >= V || t < -1) && bad < 0) bad = r;
            logp[r] = 0.0f;
            if (dx) memset(dx + (size_t)r * d, 0, (size_t)d * sizeof(float));
        }
        if (m == 0) continue;
        /* rows that are one run (every row trained, as in a step without prompts) are used where they lie */
        int run = idx[m - 1] - idx[0] == m - 1;
        const float *xm = run ? x + (size_t)idx[0] * d : xg;
        if (!run) {
#pragma omp parallel for num_threads(cc->threads) if ((long)m * d > 65536)
            for (int i = 0; i < m; i++)
                memcpy(xg + (size_t)i * d, x + (size_t)idx[i] * d, (size_t)d * sizeof(float));
        }
        tl_cpu_gemm(be, 0, 1, m, V, d, 1.0f, xm, d, W, d, 0.0f, work, V);
#pragma omp parallel for num_threads(cc->threads) if ((long)m * V > 4096)
        for (int i = 0; i < m; i++) {
            int row = idx[i], t = targets[row];
            float *zi = work + (size_t)i * V;
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
        if (dx && run) {
            tl_cpu_gemm(be, 0, 0, m, d, V, 1.0f, work, V, W, d, 0.0f, dx + (size_t)idx[0] * d, d);
        } else if (dx) {
            /* dx rows = dlogits W, into xg (the gathered x is no longer needed), then to their rows */
            tl_cpu_gemm(be, 0, 0, m, d, V, 1.0f, work, V, W, d, 0.0f, xg, d);
#pragma omp parallel for num_threads(cc->threads) if ((long)m * d > 65536)
            for (int i = 0; i < m; i++)
                memcpy(dx + (size_t)idx[i] * d, xg + (size_t)i * d, (size_t)d * sizeof(float));
        }
    }
    if (bad >= 0)
        tl_cpu_fail(be, "ce_fwd_bwd: targets[%d] = %d outside [-1, %d)", bad, targets[bad], V);
}
