/* cpu_decode: the KV-cache ops of incremental decoding (tailor generate), CPU backend.
 *
 * kv_store scatters a batch's post-RoPE keys and values into per-sequence caches; attn_kv attends each row's
 * query over its own cache prefix. Decoding batches are small (one row per sequence), so attention is a direct
 * two-pass softmax per (row, query head): pass one finds the maximum score, pass two accumulates exp-weighted
 * values straight into `out`. No scratch is needed; each task writes only its own output head, in a fixed key
 * order, so results do not depend on the thread count. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

void tl_cpu_kv_store(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v, const int32_t *seq,
                     const int32_t *pos, int n, int max_ctx, int Hkv, int hd);
void tl_cpu_attn_kv(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                    const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd);

static int check_rows(tl_backend *be, const char *op, const int32_t *seq, const int32_t *pos, int n, int max_ctx) {
    for (int i = 0; i < n; i++)
        if (seq[i] < 0 || pos[i] < 0 || pos[i] >= max_ctx) {
            tl_cpu_fail(be, "%s: row %d has cache sequence %d, position %d (expected >= 0 and < max_ctx %d)", op, i,
                        seq[i], pos[i], max_ctx);
            return 0;
        }
    return 1;
}

void tl_cpu_kv_store(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v, const int32_t *seq,
                     const int32_t *pos, int n, int max_ctx, int Hkv, int hd) {
    if (n <= 0 || !check_rows(be, "kv_store", seq, pos, n, max_ctx)) return;
    size_t kvd = (size_t)Hkv * hd;
    for (int i = 0; i < n; i++) {
        size_t at = ((size_t)seq[i] * max_ctx + (size_t)pos[i]) * kvd;
        memcpy((float *)kc + at, (const float *)k + (size_t)i * kvd, kvd * sizeof(float));
        memcpy((float *)vc + at, (const float *)v + (size_t)i * kvd, kvd * sizeof(float));
    }
}

void tl_cpu_attn_kv(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                    const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd) {
    if (n <= 0) return;
    if (Hq <= 0 || Hkv <= 0 || hd <= 0 || Hq % Hkv != 0) {
        tl_cpu_fail(be, "attn_kv: bad heads Hq = %d, Hkv = %d, hd = %d (expected Hq a multiple of Hkv)", Hq, Hkv, hd);
        return;
    }
    if (!check_rows(be, "attn_kv", seq, pos, n, max_ctx)) return;
    const float *Q = q, *K = kc, *V = vc;
    float *O = out;
    size_t kvd = (size_t)Hkv * hd, qd = (size_t)Hq * hd;
    int group = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    long tasks = (long)n * Hq;
#pragma omp parallel for schedule(static) num_threads(tl_cpu(be)->threads)
    for (long t = 0; t < tasks; t++) {
        int i = (int)(t / Hq), h = (int)(t % Hq), kvh = h / group, len = pos[i] + 1;
        const float *qi = Q + (size_t)i * qd + (size_t)h * hd;
        const float *kb = K + (size_t)seq[i] * max_ctx * kvd + (size_t)kvh * hd;
        const float *vb = V + (size_t)seq[i] * max_ctx * kvd + (size_t)kvh * hd;
        float *oi = O + (size_t)i * qd + (size_t)h * hd;
        float mx = -INFINITY;
        for (int j = 0; j < len; j++) {
            const float *kj = kb + (size_t)j * kvd;
            float s = 0.0f;
            for (int e = 0; e < hd; e++) s += qi[e] * kj[e];
            s *= scale;
            if (s > mx) mx = s;
        }
        for (int e = 0; e < hd; e++) oi[e] = 0.0f;
        float sum = 0.0f;
        for (int j = 0; j < len; j++) {
            const float *kj = kb + (size_t)j * kvd, *vj = vb + (size_t)j * kvd;
            float s = 0.0f;
            for (int e = 0; e < hd; e++) s += qi[e] * kj[e];
            float p = expf(s * scale - mx);
            sum += p;
            for (int e = 0; e < hd; e++) oi[e] += p * vj[e];
        }
        float inv = 1.0f / sum;
        for (int e = 0; e < hd; e++) oi[e] *= inv;
    }
}
