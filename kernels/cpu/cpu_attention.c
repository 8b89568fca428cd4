/* cpu_attention: causal grouped-query attention over the packed sequences of a micro-batch, CPU backend.
 *
 * Block-wise, on sgemm (as FlashAttention, with OpenBLAS for the tiles). A block is BM query rows of one query
 * head against a block of at most kb keys of its kv head; its scores S = scale Q K^T and probabilities P live in
 * the calling thread's slice of the backend scratch, so no op allocates and long sequences only make more key
 * blocks. Forward: online softmax over the key blocks (usually one: the whole causal prefix), O accumulated
 * unnormalised in `out` and divided by the row sum at the end; lse = max + log(sum). Backward recomputes
 * P = exp(S - lse) per tile: dV += P^T dO, dP = dO V^T, dS = P (dP - D) with D_i = dO_i . O_i,
 * dQ (+)= scale dS K, dK += scale dS^T Q.
 *
 * Parallel over (sequence, query block, kv head) in the forward and (sequence, kv head) in the backward: each
 * task writes only its own rows of out / lse, or of dq and the kv head's rows of dk / dv, summing in a fixed
 * order, so there are no races and results are bit-identical from run to run (for a given thread count, which
 * sets the key block length). Reductions over a row use explicit 16-lane partial sums, so that vectorisation
 * never depends on where the row sits in memory. OpenBLAS runs single-threaded inside the OpenMP team (its
 * thread count is set to 1 for the op and restored after) so the BLAS pool never oversubscribes the cores. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

enum {
    BM = 64,      /* query rows per block */
    KB_MAX = 512, /* keys per block at most; less when the scratch slice of a thread is smaller */
    KB_MIN = 16,  /* below this the team shrinks instead, so that each thread keeps a useful slice */
    LANES = 16    /* partial sums per row reduction; also the row stride granularity of the tiles */
};

typedef struct {
    int nthr, kb;  /* team size and key block length */
    size_t slice;  /* scratch floats per thread (a multiple of LANES: every slice is 64-byte aligned) */
} attn_plan;

/* per-thread slice: S/P [BM, kb], dP [BM, kb], and four row vectors of BM */
static size_t slice_floats(int kb) { return (size_t)2 * BM * kb + 4 * BM; }

static attn_plan plan_for(tl_backend *be) {
    tl_cpu_ctx *c = tl_cpu(be);
    attn_plan p = {c->threads, KB_MAX, 0};
    size_t per = c->scratch_n / (size_t)p.nthr;
    if (per < slice_floats(KB_MIN)) {
        p.nthr = (int)(c->scratch_n / slice_floats(KB_MIN));
        if (p.nthr < 1) p.nthr = 1;
        per = slice_floats(KB_MIN);
    }
    size_t kb = (per - 4 * BM) / (2 * BM) / LANES * LANES;
    p.kb = kb < KB_MAX ? (int)kb : KB_MAX;
    p.slice = slice_floats(p.kb);
    return p;
}

static int check_args(tl_backend *be, const char *op, int Hq, int Hkv, int hd) {
    if (Hq <= 0 || Hkv <= 0 || hd <= 0 || Hq % Hkv != 0 || hd > 4096) {
        tl_cpu_fail(be, "%s: bad heads Hq = %d, Hkv = %d, hd = %d (expected Hq a multiple of Hkv, hd <= 4096)", op,
                    Hq, Hkv, hd);
        return 0;
    }
    if (tl_cpu(be)->scratch_n < slice_floats(KB_MIN)) {
        tl_cpu_fail(be, "%s: the scratch holds %zu floats, fewer than the %zu one thread needs", op,
                    tl_cpu(be)->scratch_n, slice_floats(KB_MIN));
        return 0;
    }
    return 1;
}

static int max_seqlen(const int32_t *cu, int n_seq) {
    int m = 0;
    for (int s = 0; s < n_seq; s++)
        if (cu[s + 1] - cu[s] > m) m = cu[s + 1] - cu[s];
    return m;
}

/* OpenBLAS's pthread pool has one global thread count: 1 while an OpenMP team calls sgemm from each thread. */
static int blas_single_begin(void) {
    int saved = openblas_get_num_threads();
    if (saved != 1) openblas_set_num_threads(1);
    return saved;
}
static void blas_single_end(int saved) {
    if (saved != 1) openblas_set_num_threads(saved);
}

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int t = 0; t < n; t++) s += a[t] * b[t];
    return s;
}

/* max of x[0 .. n), n >= 1 */
static float row_max(const float *x, int n) {
    float lane[LANES];
    for (int t = 0; t < LANES; t++) lane[t] = -INFINITY;
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
#pragma omp simd
        for (int t = 0; t < LANES; t++) lane[t] = x[j + t] > lane[t] ? x[j + t] : lane[t];
    }
    float m = -INFINITY;
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    for (int t = 0; t < LANES; t++) m = lane[t] > m ? lane[t] : m;
    return m;
}

/* x[j] = exp(x[j] - sub) for j < cnt and 0 for cnt <= j < n; returns the sum of the exponentials */
static float row_exp(float *x, int cnt, int n, float sub) {
#pragma omp simd
    for (int j = 0; j < cnt; j++) {
        float d = x[j] - sub;
        d = d < -88.0f ? -88.0f : d;
        x[j] = d > 88.0f ? 88.0f : d;
    }
    float lane[LANES];
    for (int t = 0; t < LANES; t++) lane[t] = 0.0f;
    int j = 0;
    for (; j + LANES <= cnt; j += LANES) {
#pragma omp simd
        for (int t = 0; t < LANES; t++) {
            float e = tl_cpu_expf(x[j + t]);
            x[j + t] = e;
            lane[t] += e;
        }
    }
    float s = 0.0f;
    for (; j < cnt; j++) {
        x[j] = tl_cpu_expf(x[j]);
        s += x[j];
    }
    for (; j < n; j++) x[j] = 0.0f;
    for (int t = 0; t < LANES; t++) s += lane[t];
    return s;
}

static inline void scale_row(float *x, int n, float a) {
#pragma omp simd
    for (int t = 0; t < n; t++) x[t] *= a;
}

/* Forward of query rows [r0, r1) of query head h against keys [s0, r1) of kv head g (causal prefix). */
static void fwd_block(const tl_cpu_ctx *c, float *out, float *lse, const float *q, const float *k, const float *v,
                      int s0, int r0, int r1, int h, int g, int Hq, int Hkv, int hd, float scale, int kb, float *ws) {
    size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    int m = r1 - r0;
    float *S = ws, *mx = ws + (size_t)2 * BM * kb, *sum = mx + BM;
    const float *qb = q + (size_t)r0 * qs + (size_t)h * hd;
    float *ob = out + (size_t)r0 * qs + (size_t)h * hd;
    for (int a = 0; a < m; a++) {
        mx[a] = -INFINITY;
        sum[a] = 0.0f;
    }
    for (int c0 = s0; c0 < r1; c0 += kb) {
        int nk = r1 - c0 < kb ? r1 - c0 : kb, ld = (nk + LANES - 1) / LANES * LANES, first = c0 == s0;
        const float *kc = k + (size_t)c0 * ks + (size_t)g * hd, *vc = v + (size_t)c0 * ks + (size_t)g * hd;
        tl_cpu_gemm1(c, 0, 1, m, nk, hd, scale, qb, (int)qs, kc, (int)ks, 0.0f, S, ld);
        for (int a = 0; a < m; a++) {
            float *sa = S + (size_t)a * ld;
            int cnt = r0 + a - c0 + 1; /* keys j <= row */
            if (cnt > nk) cnt = nk;
            if (cnt <= 0) { /* the whole block is in this row's future */
                memset(sa, 0, (size_t)nk * sizeof(float));
                continue;
            }
            float mb = row_max(sa, cnt), mn = mb > mx[a] ? mb : mx[a];
            float corr = first ? 0.0f : expf(mx[a] - mn);
            sum[a] = sum[a] * corr + row_exp(sa, cnt, nk, mn);
            mx[a] = mn;
            if (!first && corr != 1.0f) scale_row(ob + (size_t)a * qs, hd, corr);
        }
        tl_cpu_gemm1(c, 0, 0, m, hd, nk, 1.0f, S, ld, vc, (int)ks, first ? 0.0f : 1.0f, ob, (int)qs);
    }
    for (int a = 0; a < m; a++) {
        scale_row(ob + (size_t)a * qs, hd, 1.0f / sum[a]);
        lse[(size_t)(r0 + a) * Hq + h] = mx[a] + logf(sum[a]);
    }
}

void tl_cpu_attn_fwd(tl_backend *be, tl_act *out_, float *lse, const tl_act *q_, const tl_act *k_, const tl_act *v_,
                     const tl_mb *mb, int Hq, int Hkv, int hd) {
    if (!check_args(be, "attn_fwd", Hq, Hkv, hd)) return;
    float *out = out_;
    const float *q = q_, *k = k_, *v = v_;
    const int32_t *cu = mb->h_cu_seqlens;
    int n_seq = mb->n_seq, group = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    attn_plan p = plan_for(be);
    float *scratch = tl_cpu(be)->scratch;
    int nb = (max_seqlen(cu, n_seq) + BM - 1) / BM;
    long per_b = (long)n_seq * Hkv, items = per_b * nb;
    int saved = blas_single_begin();
    /* the last query blocks (the longest causal prefixes) are handed out first */
#pragma omp parallel num_threads(p.nthr) if (items > 1)
    {
        float *ws = scratch + (size_t)omp_get_thread_num() * p.slice;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            int b = nb - 1 - (int)(it / per_b), s = (int)(it % per_b / Hkv), g = (int)(it % Hkv);
            int s0 = cu[s], r0 = s0 + b * BM;
            if (r0 >= cu[s + 1]) continue;
            int r1 = r0 + BM < cu[s + 1] ? r0 + BM : cu[s + 1];
            for (int h = g * group; h < (g + 1) * group; h++)
                fwd_block(tl_cpu(be), out, lse, q, k, v, s0, r0, r1, h, g, Hq, Hkv, hd, scale, p.kb, ws);
        }
    }
    blas_single_end(saved);
}

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *out, *lse, *q, *k, *v;
    int Hq, Hkv, hd, kb;
    float scale;
    const tl_cpu_ctx *c; /* the backend's product code (tl_cpu_gemm1) */
} bwd_args;

/* Backward of query rows [r0, r1) of query head h over keys [s0, r1) of kv head g: dq rows written, dk / dv rows
 * of the keys accumulated. */
static void bwd_block(const bwd_args *A, int s0, int r0, int r1, int h, int g, float *ws) {
    const tl_cpu_ctx *c = A->c;
    size_t qs = (size_t)A->Hq * A->hd, ks = (size_t)A->Hkv * A->hd;
    int m = r1 - r0, hd = A->hd, kb = A->kb;
    float *P = ws, *dP = ws + (size_t)BM * kb, *D = dP + (size_t)BM * kb, *L = D + BM;
    size_t qo = (size_t)r0 * qs + (size_t)h * hd;
    const float *qb = A->q + qo, *gb = A->dout + qo;
    float *dqb = A->dq + qo;
    for (int a = 0; a < m; a++) {
        D[a] = dotf(gb + (size_t)a * qs, A->out + qo + (size_t)a * qs, hd);
        L[a] = A->lse[(size_t)(r0 + a) * A->Hq + h];
    }
    for (int c0 = s0; c0 < r1; c0 += kb) {
        int nk = r1 - c0 < kb ? r1 - c0 : kb, ld = (nk + LANES - 1) / LANES * LANES;
        size_t ko = (size_t)c0 * ks + (size_t)g * hd;
        const float *kc = A->k + ko, *vc = A->v + ko;
        tl_cpu_gemm1(c, 0, 1, m, nk, hd, A->scale, qb, (int)qs, kc, (int)ks, 0.0f, P, ld);
        for (int a = 0; a < m; a++) {
            int cnt = r0 + a - c0 + 1;
            row_exp(P + (size_t)a * ld, cnt < 0 ? 0 : (cnt > nk ? nk : cnt), nk, L[a]);
        }
        tl_cpu_gemm1(c, 1, 0, nk, hd, m, 1.0f, P, ld, gb, (int)qs, 1.0f, A->dv + ko, (int)ks);
        tl_cpu_gemm1(c, 0, 1, m, nk, hd, 1.0f, gb, (int)qs, vc, (int)ks, 0.0f, dP, ld);
        for (int a = 0; a < m; a++) {
            float *pa = P + (size_t)a * ld, *da = dP + (size_t)a * ld, Da = D[a];
#pragma omp simd
            for (int j = 0; j < nk; j++) da[j] = pa[j] * (da[j] - Da);
        }
        tl_cpu_gemm1(c, 0, 0, m, hd, nk, A->scale, dP, ld, kc, (int)ks, c0 == s0 ? 0.0f : 1.0f, dqb, (int)qs);
        tl_cpu_gemm1(c, 1, 0, nk, hd, m, A->scale, dP, ld, qb, (int)qs, 1.0f, A->dk + ko, (int)ks);
    }
}

void tl_cpu_attn_bwd(tl_backend *be, tl_act *dq_, tl_act *dk_, tl_act *dv_, const tl_act *dout_, const tl_act *out_,
                     const float *lse, const tl_act *q_, const tl_act *k_, const tl_act *v_, const tl_mb *mb, int Hq,
                     int Hkv, int hd) {
    if (!check_args(be, "attn_bwd", Hq, Hkv, hd)) return;
    const int32_t *cu = mb->h_cu_seqlens;
    int n_seq = mb->n_seq, group = Hq / Hkv;
    attn_plan p = plan_for(be);
    bwd_args A = {dq_, dk_, dv_, dout_, out_, lse, q_, k_, v_, Hq, Hkv, hd, p.kb, 1.0f / sqrtf((float)hd), tl_cpu(be)};
    float *scratch = tl_cpu(be)->scratch;
    size_t ks = (size_t)Hkv * hd;
    long items = (long)n_seq * Hkv;
    int saved = blas_single_begin();
#pragma omp parallel num_threads(p.nthr) if (items > 1)
    {
        float *ws = scratch + (size_t)omp_get_thread_num() * p.slice;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            int s = (int)(it / Hkv), g = (int)(it % Hkv), s0 = cu[s], s1 = cu[s + 1];
            for (int j = s0; j < s1; j++) {
                memset(A.dk + (size_t)j * ks + (size_t)g * hd, 0, (size_t)hd * sizeof(float));
                memset(A.dv + (size_t)j * ks + (size_t)g * hd, 0, (size_t)hd * sizeof(float));
            }
            for (int h = g * group; h < (g + 1) * group; h++)
                for (int r0 = s0; r0 < s1; r0 += BM)
                    bwd_block(&A, s0, r0, r0 + BM < s1 ? r0 + BM : s1, h, g, ws);
        }
    }
    blas_single_end(saved);
}
