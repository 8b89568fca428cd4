/* cpu_attention: causal grouped-query attention over the packed sequences of a micro-batch, CPU backend.
 *
 * Forward: one online-softmax pass per (query row, query head), no score buffer. Backward: the standard
 * recomputation from lse. P_ij = exp(s_ij - lse_i) with s_ij = scale q_i.k_j, D_i = dout_i.out_i,
 * dS_ij = P_ij (dout_i.v_j - D_i); dQ_i = scale sum_j dS_ij k_j; dK_j = scale sum_i dS_ij q_i; dV_j = sum_i P_ij
 * dout_i. dQ is computed per (row, query head) and dK/dV per (row, kv head), summing the group's query heads in
 * a fixed order, so every output element has one writer: no races, no atomics, deterministic. */
#include <math.h>

#include "../tl_math.h"
#include "cpu_internal.h"

/* index of the sequence holding row i: the last s with cu[s] <= i */
static int seq_of(const int32_t *cu, int n_seq, int i) {
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (cu[mid] <= i)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int t = 0; t < n; t++) s += a[t] * b[t];
    return s;
}

static int check_heads(tl_backend *be, const char *op, int Hq, int Hkv, int hd) {
    if (Hq <= 0 || Hkv <= 0 || hd <= 0 || Hq % Hkv != 0 || hd > 4096) {
        tl_cpu_fail(be, "%s: bad heads Hq = %d, Hkv = %d, hd = %d (expected Hq a multiple of Hkv, hd <= 4096)", op,
                    Hq, Hkv, hd);
        return 0;
    }
    return 1;
}

void tl_cpu_attn_fwd(tl_backend *be, tl_act *out_, float *lse, const tl_act *q_, const tl_act *k_, const tl_act *v_,
                     const tl_mb *mb, int Hq, int Hkv, int hd) {
    if (!check_heads(be, "attn_fwd", Hq, Hkv, hd)) return;
    float *out = out_;
    const float *q = q_, *k = k_, *v = v_;
    const int32_t *cu = mb->h_cu_seqlens;
    int n = mb->n_tok, n_seq = mb->n_seq, group = Hq / Hkv;
    size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    long items = (long)n * Hq;
#pragma omp parallel for schedule(dynamic, 8) num_threads(tl_cpu(be)->threads)
    for (long it = 0; it < items; it++) {
        int i = (int)(it / Hq), h = (int)(it % Hq), g = h / group;
        int s0 = cu[seq_of(cu, n_seq, i)];
        const float *qi = q + i * qs + (size_t)h * hd;
        float acc[hd];
        for (int t = 0; t < hd; t++) acc[t] = 0.0f;
        float m = -INFINITY, l = 0.0f;
        for (int j = s0; j <= i; j++) {
            const float *kj = k + j * ks + (size_t)g * hd, *vj = v + j * ks + (size_t)g * hd;
            float w, c = tl_softmax_push(&m, &l, dotf(qi, kj, hd) * scale, &w);
            if (c != 1.0f) {
#pragma omp simd
                for (int t = 0; t < hd; t++) acc[t] *= c;
            }
#pragma omp simd
            for (int t = 0; t < hd; t++) acc[t] += w * vj[t];
        }
        float *oi = out + i * qs + (size_t)h * hd, inv = 1.0f / l;
        for (int t = 0; t < hd; t++) oi[t] = acc[t] * inv;
        lse[it] = m + logf(l);
    }
}

void tl_cpu_attn_bwd(tl_backend *be, tl_act *dq_, tl_act *dk_, tl_act *dv_, const tl_act *dout_, const tl_act *out_,
                     const float *lse, const tl_act *q_, const tl_act *k_, const tl_act *v_, const tl_mb *mb, int Hq,
                     int Hkv, int hd) {
    if (!check_heads(be, "attn_bwd", Hq, Hkv, hd)) return;
    float *dq = dq_, *dk = dk_, *dv = dv_;
    const float *dout = dout_, *out = out_, *q = q_, *k = k_, *v = v_;
    const int32_t *cu = mb->h_cu_seqlens;
    int n = mb->n_tok, n_seq = mb->n_seq, group = Hq / Hkv, nthr = tl_cpu(be)->threads;
    size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    long qitems = (long)n * Hq, kitems = (long)n * Hkv;

    /* Pass 1: D[i, h] = dout_i . out_i, parked in dq[i, h, 0]. dq is only written in pass 3, where each
     * (row, head) reads its own D before overwriting it, so the op needs no scratch of size n. */
#pragma omp parallel for num_threads(nthr) if (qitems * hd > 4096)
    for (long it = 0; it < qitems; it++) {
        size_t o = (size_t)(it / Hq) * qs + (size_t)(it % Hq) * hd;
        dq[o] = dotf(dout + o, out + o, hd);
    }

    /* Pass 2: dK, dV per (row j, kv head g), over the later rows i of j's sequence and the group's heads. */
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthr)
    for (long it = 0; it < kitems; it++) {
        int j = (int)(it / Hkv), g = (int)(it % Hkv);
        int s1 = cu[seq_of(cu, n_seq, j) + 1];
        const float *kj = k + j * ks + (size_t)g * hd, *vj = v + j * ks + (size_t)g * hd;
        float dka[hd], dva[hd];
        for (int t = 0; t < hd; t++) dka[t] = dva[t] = 0.0f;
        for (int h = g * group; h < (g + 1) * group; h++) {
            for (int i = j; i < s1; i++) {
                size_t o = i * qs + (size_t)h * hd;
                const float *qi = q + o, *gi = dout + o;
                float p = expf(dotf(qi, kj, hd) * scale - lse[(size_t)i * Hq + h]);
                float ds = p * (dotf(gi, vj, hd) - dq[o]) * scale;
#pragma omp simd
                for (int t = 0; t < hd; t++) {
                    dva[t] += p * gi[t];
                    dka[t] += ds * qi[t];
                }
            }
        }
        float *dkj = dk + j * ks + (size_t)g * hd, *dvj = dv + j * ks + (size_t)g * hd;
        for (int t = 0; t < hd; t++) {
            dkj[t] = dka[t];
            dvj[t] = dva[t];
        }
    }

    /* Pass 3: dQ per (row i, query head h), over the earlier rows j of i's sequence. */
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthr)
    for (long it = 0; it < qitems; it++) {
        int i = (int)(it / Hq), h = (int)(it % Hq), g = h / group;
        int s0 = cu[seq_of(cu, n_seq, i)];
        size_t o = i * qs + (size_t)h * hd;
        const float *qi = q + o, *gi = dout + o;
        float D = dq[o], li = lse[it];
        float acc[hd];
        for (int t = 0; t < hd; t++) acc[t] = 0.0f;
        for (int j = s0; j <= i; j++) {
            const float *kj = k + j * ks + (size_t)g * hd, *vj = v + j * ks + (size_t)g * hd;
            float p = expf(dotf(qi, kj, hd) * scale - li);
            float ds = p * (dotf(gi, vj, hd) - D) * scale;
#pragma omp simd
            for (int t = 0; t < hd; t++) acc[t] += ds * kj[t];
        }
        for (int t = 0; t < hd; t++) dq[o + t] = acc[t];
    }
}
