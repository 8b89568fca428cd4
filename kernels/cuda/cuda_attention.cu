/* cuda_attention: causal, grouped-query, variable-length attention of the CUDA backend, FlashAttention-2 style:
 * tiled, online softmax, the T x T score matrix never exists in memory.
 *
 * Decomposition. A block of 4 warps owns one (query tile, head, sequence) in forward and in the dQ pass, and one
 * (key tile, kv head, sequence) in the dK/dV pass; grid (tiles of the longest sequence, heads, sequences), blocks
 * past the end of their sequence exit at once. Tiles are T x T (T = 64, or 32 / 16 where shared memory is
 * short: head dims above 128, or sm_80 in backward). The head dim is padded with zeros to HP, a multiple of 16,
 * so any head dim up to 256 runs on the same kernels (zero columns change no dot product).
 *
 * Products run on bf16 tensor cores through WMMA (16x16x16 fragments, fp32 accumulators): S = Q K^T, O += P V,
 * dP = dO V^T, dV += P^T dO, dK += dS^T Q, dQ += dS K. Softmax statistics, the O / dQ / dK / dV accumulators and
 * lse are fp32; P and dS are rounded to bf16 for the tensor-core products (as FlashAttention does). The running
 * row sum adds the rounded P, so the normalisation matches the values that were multiplied.
 *
 * Backward is deterministic without atomics: dK / dV of a key tile are summed by one block over the query tiles
 * and the query heads of its group in a fixed order; dQ is a separate pass over key tiles. D = rowsum(dO * O) is
 * computed first into the backend's scratch buffer. */
#include <mma.h>

#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

using namespace nvcuda;

#define AT_THREADS 128
#define AT_WARPS (AT_THREADS / 32)
#define AT_MAX_HD 256

/* ---- shared-memory layout (the same arithmetic on host and device) ----
 * bf16 tiles [T, HP + 8], fp32 score tiles [T, T + 4], bf16 P / dS tiles [T, T + 8], fp32 accumulators
 * [T, HP + 4]: the padding keeps rows off the same banks and every 16 x 16 sub-tile 32-byte aligned, as WMMA
 * requires (row offsets are multiples of 16 rows, column offsets multiples of 16). */
static __host__ __device__ __forceinline__ int ld_h(int hp) { return hp + 8; }
static __host__ __device__ __forceinline__ int ld_s(int t) { return t + 4; }
static __host__ __device__ __forceinline__ int ld_p(int t) { return t + 8; }
static __host__ __device__ __forceinline__ int ld_o(int hp) { return hp + 4; }
static __host__ __device__ __forceinline__ size_t al128(size_t b) { return (b + 127) / 128 * 128; }

typedef struct {
    size_t tile_h, tile_s, tile_p, tile_o, vec, total;
} smem_plan;

static __host__ __device__ __forceinline__ smem_plan plan(int t, int hp, int n_h, int n_s, int n_p, int n_o,
                                                          int n_vec) {
    smem_plan p;
    p.tile_h = al128((size_t)t * ld_h(hp) * 2);
    p.tile_s = al128((size_t)t * ld_s(t) * 4);
    p.tile_p = al128((size_t)t * ld_p(t) * 2);
    p.tile_o = al128((size_t)t * ld_o(hp) * 4);
    p.vec = al128((size_t)t * 4);
    p.total = n_h * p.tile_h + n_s * p.tile_s + n_p * p.tile_p + n_o * p.tile_o + n_vec * p.vec;
    return p;
}
/* forward: Q K V | S | P | O | (none); dQ pass: Q dO K V | S dP | dS | dQ | lse D;
 * dK/dV pass: K V Q dO | S dP | P dS | dK dV | lse D */
static __host__ __device__ __forceinline__ smem_plan plan_fwd(int t, int hp) { return plan(t, hp, 3, 1, 1, 1, 0); }
static __host__ __device__ __forceinline__ smem_plan plan_dq(int t, int hp) { return plan(t, hp, 4, 2, 1, 1, 2); }
static __host__ __device__ __forceinline__ smem_plan plan_dkv(int t, int hp) { return plan(t, hp, 4, 2, 2, 2, 2); }

/* ---- block-level tensor-core product over shared memory ----
 * C [M, N] fp32 (row-major, ldc) = (accumulate ? C : 0) + A [M, K] B [K, N], bf16 operands; A_ROW / B_ROW say
 * whether A and B are stored row-major (else column-major, i.e. the transpose is stored row-major). M, N, K are
 * multiples of 16; warps take output tiles in turn. */
template <bool A_ROW, bool B_ROW>
static __device__ void smem_mma(float *C, int ldc, bool accumulate, const tl_bf16 *A, int lda, const tl_bf16 *B,
                                int ldb, int M, int N, int K) {
    typedef typename std::conditional<A_ROW, wmma::row_major, wmma::col_major>::type LA;
    typedef typename std::conditional<B_ROW, wmma::row_major, wmma::col_major>::type LB;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    int warp = threadIdx.x >> 5, tn = N / 16, tiles = (M / 16) * tn;
    for (int t = warp; t < tiles; t += AT_WARPS) {
        int mi = (t / tn) * 16, nj = (t % tn) * 16;
        float *c = C + (size_t)mi * ldc + nj;
        if (accumulate) wmma::load_matrix_sync(fc, c, ldc, wmma::mem_row_major);
        else wmma::fill_fragment(fc, 0.0f);
        for (int k = 0; k < K; k += 16) {
            /* element (m, k) of A: row-major A[m lda + k], column-major A[k lda + m]; likewise for B (k, n) */
            const tl_bf16 *a = A_ROW ? A + (size_t)mi * lda + k : A + (size_t)k * lda + mi;
            const tl_bf16 *b = B_ROW ? B + (size_t)k * ldb + nj : B + (size_t)nj * ldb + k;
            wmma::load_matrix_sync(fa, a, lda);
            wmma::load_matrix_sync(fb, b, ldb);
            wmma::mma_sync(fc, fa, fb, fc);
        }
        wmma::store_matrix_sync(c, fc, ldc, wmma::mem_row_major);
    }
}

/* dst [T, HP] (ld) = rows [0, nrows) of src (row stride `stride` elements, first hd columns), zero elsewhere */
static __device__ void load_tile(tl_bf16 *dst, int ld, const tl_bf16 *src, size_t stride, int nrows, int t, int hd,
                                 int hp, bool vec) {
    if (vec) { /* hd % 8 == 0 and 16-byte aligned rows: 8 elements per access */
        int per = hp / 8;
        for (int e = threadIdx.x; e < t * per; e += AT_THREADS) {
            int i = e / per, c = (e % per) * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (i < nrows && c < hd) v = *(const uint4 *)(src + (size_t)i * stride + c);
            *(uint4 *)(dst + (size_t)i * ld + c) = v;
        }
    } else {
        for (int e = threadIdx.x; e < t * hp; e += AT_THREADS) {
            int i = e / hp, c = e % hp;
            dst[(size_t)i * ld + c] = i < nrows && c < hd ? src[(size_t)i * stride + c] : __float2bfloat16(0.0f);
        }
    }
}

static __device__ void zero_f32(float *p, int n) {
    for (int e = threadIdx.x; e < n; e += AT_THREADS) p[e] = 0.0f;
}

/* ---- forward ---- */

/* grid (query tiles, Hq, n_seq). Threads tpr = AT_THREADS / t per query row share its softmax state. */
static __global__ void __launch_bounds__(AT_THREADS)
    attn_fwd_kernel(tl_bf16 *out, float *lse, const tl_bf16 *q, const tl_bf16 *k, const tl_bf16 *v,
                    const int32_t *cu, int Hq, int Hkv, int hd, int hp, int t, float scale, int vec) {
    extern __shared__ __align__(128) unsigned char tl_smem[];
    int seq = blockIdx.z, h = blockIdx.y, s0 = cu[seq], L = cu[seq + 1] - s0;
    int q0 = (gridDim.x - 1 - blockIdx.x) * t; /* the last (longest-running) query tiles start first */
    if (q0 >= L) return;
    int kvh = h / (Hq / Hkv);
    smem_plan pl = plan_fwd(t, hp);
    unsigned char *sp = tl_smem;
    tl_bf16 *Qs = (tl_bf16 *)sp, *Ks = (tl_bf16 *)(sp + pl.tile_h), *Vs = (tl_bf16 *)(sp + 2 * pl.tile_h);
    sp += 3 * pl.tile_h;
    float *Ss = (float *)sp;
    sp += pl.tile_s;
    tl_bf16 *Ps = (tl_bf16 *)sp;
    sp += pl.tile_p;
    float *Os = (float *)sp;
    int LH = ld_h(hp), LS = ld_s(t), LP = ld_p(t), LO = ld_o(hp);
    size_t qstride = (size_t)Hq * hd, kstride = (size_t)Hkv * hd;

    int nq = L - q0 < t ? L - q0 : t;
    load_tile(Qs, LH, q + (size_t)(s0 + q0) * qstride + (size_t)h * hd, qstride, nq, t, hd, hp, vec);
    zero_f32(Os, t * LO);

    int tpr = AT_THREADS / t, row = threadIdx.x / tpr, part = threadIdx.x % tpr;
    int qi = q0 + row; /* this thread's query row within the sequence */
    bool live = qi < L;
    float m_run = -INFINITY, l_run = 0.0f;
    int q_last = q0 + nq - 1;

    for (int k0 = 0; k0 <= q_last; k0 += t) {
        int nk = L - k0 < t ? L - k0 : t;
        const tl_bf16 *kb = k + (size_t)(s0 + k0) * kstride + (size_t)kvh * hd;
        const tl_bf16 *vb = v + (size_t)(s0 + k0) * kstride + (size_t)kvh * hd;
        load_tile(Ks, LH, kb, kstride, nk, t, hd, hp, vec);
        load_tile(Vs, LH, vb, kstride, nk, t, hd, hp, vec);
        __syncthreads();
        smem_mma<true, false>(Ss, LS, false, Qs, LH, Ks, LH, t, t, hp); /* S = Q K^T */
        __syncthreads();
        /* online softmax over this key tile: key j is visible to query qi when j <= qi */
        float mx = -INFINITY;
        for (int c = part; c < t; c += tpr)
            if (live && k0 + c <= qi) mx = fmaxf(mx, Ss[row * LS + c] * scale);
        for (int o = tpr / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float m_new = fmaxf(m_run, mx);
        /* alpha rescales what was accumulated under the old max (nothing yet when m_run is -inf) */
        float alpha = m_new == -INFINITY ? 1.0f : expf(m_run - m_new);
        float rs = 0.0f;
        for (int c = part; c < t; c += tpr) {
            float p = 0.0f;
            if (live && k0 + c <= qi) p = expf(Ss[row * LS + c] * scale - m_new);
            tl_bf16 pb = __float2bfloat16(p);
            Ps[row * LP + c] = pb;
            rs += __bfloat162float(pb);
        }
        for (int o = tpr / 2; o > 0; o >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, o);
        l_run = l_run * alpha + rs;
        m_run = m_new;
        for (int c = part; c < hp; c += tpr) Os[row * LO + c] *= alpha;
        __syncthreads();
        smem_mma<true, true>(Os, LO, true, Ps, LP, Vs, LH, t, hp, t); /* O += P V */
        __syncthreads();
    }
    if (!live) return;
    float inv = l_run > 0.0f ? 1.0f / l_run : 0.0f;
    tl_bf16 *orow = out + (size_t)(s0 + qi) * qstride + (size_t)h * hd;
    for (int c = part; c < hd; c += tpr) orow[c] = __float2bfloat16(Os[row * LO + c] * inv);
    if (part == 0) lse[(size_t)(s0 + qi) * Hq + h] = m_run + logf(l_run);
}

/* ---- backward ---- */

/* D[row, h] = sum_d dO[row, h, d] O[row, h, d]; one warp per (row, head) */
static __global__ void attn_dot_kernel(float *D, const tl_bf16 *dout, const tl_bf16 *out, int n, int Hq, int hd) {
    size_t w = (size_t)blockIdx.x * AT_WARPS + (threadIdx.x >> 5);
    if (w >= (size_t)n * Hq) return; /* whole warps leave together */
    const tl_bf16 *a = dout + w * hd, *b = out + w * hd;
    float s = 0.0f;
    for (int c = threadIdx.x & 31; c < hd; c += 32) s += tl_ldf(a + c) * tl_ldf(b + c);
    s = tl_warp_sum(s);
    if ((threadIdx.x & 31) == 0) D[w] = s;
}

/* Loads a query tile's lse and D (rows past the sequence get 0; their P is masked to 0 anyway). */
static __device__ void load_rowstats(float *lse_s, float *D_s, const float *lse, const float *D, size_t row0, int nq,
                                     int Hq, int h, int t) {
    for (int i = threadIdx.x; i < t; i += AT_THREADS) {
        lse_s[i] = i < nq ? lse[(row0 + i) * Hq + h] : 0.0f;
        D_s[i] = i < nq ? D[(row0 + i) * Hq + h] : 0.0f;
    }
}

/* dK, dV of one key tile: grid (key tiles, Hkv, n_seq) */
static __global__ void __launch_bounds__(AT_THREADS)
    attn_dkv_kernel(tl_bf16 *dk, tl_bf16 *dv, const tl_bf16 *dout, const float *lse, const float *D, const tl_bf16 *q,
                    const tl_bf16 *k, const tl_bf16 *v, const int32_t *cu, int Hq, int Hkv, int hd, int hp, int t,
                    float scale, int vec) {
    extern __shared__ __align__(128) unsigned char tl_smem[];
    int seq = blockIdx.z, g = blockIdx.y, s0 = cu[seq], L = cu[seq + 1] - s0;
    int k0 = blockIdx.x * t;
    if (k0 >= L) return;
    int grp = Hq / Hkv;
    smem_plan pl = plan_dkv(t, hp);
    unsigned char *sp = tl_smem;
    tl_bf16 *Ks = (tl_bf16 *)sp, *Vs = (tl_bf16 *)(sp + pl.tile_h), *Qs = (tl_bf16 *)(sp + 2 * pl.tile_h),
            *dOs = (tl_bf16 *)(sp + 3 * pl.tile_h);
    sp += 4 * pl.tile_h;
    float *Ss = (float *)sp, *dPs = (float *)(sp + pl.tile_s);
    sp += 2 * pl.tile_s;
    tl_bf16 *Ps = (tl_bf16 *)sp, *dSs = (tl_bf16 *)(sp + pl.tile_p);
    sp += 2 * pl.tile_p;
    float *dKs = (float *)sp, *dVs = (float *)(sp + pl.tile_o);
    sp += 2 * pl.tile_o;
    float *lse_s = (float *)sp, *D_s = (float *)(sp + pl.vec);
    int LH = ld_h(hp), LS = ld_s(t), LP = ld_p(t), LO = ld_o(hp);
    size_t qstride = (size_t)Hq * hd, kstride = (size_t)Hkv * hd;

    int nk = L - k0 < t ? L - k0 : t;
    load_tile(Ks, LH, k + (size_t)(s0 + k0) * kstride + (size_t)g * hd, kstride, nk, t, hd, hp, vec);
    load_tile(Vs, LH, v + (size_t)(s0 + k0) * kstride + (size_t)g * hd, kstride, nk, t, hd, hp, vec);
    zero_f32(dKs, t * LO);
    zero_f32(dVs, t * LO);

    for (int hh = 0; hh < grp; hh++) {
        int h = g * grp + hh;
        /* query tiles at or after the key tile (tiles are aligned: the same t for queries and keys) */
        for (int q0 = k0; q0 < L; q0 += t) {
            int nq = L - q0 < t ? L - q0 : t;
            size_t qoff = (size_t)(s0 + q0) * qstride + (size_t)h * hd;
            load_tile(Qs, LH, q + qoff, qstride, nq, t, hd, hp, vec);
            load_tile(dOs, LH, dout + qoff, qstride, nq, t, hd, hp, vec);
            load_rowstats(lse_s, D_s, lse, D, (size_t)(s0 + q0), nq, Hq, h, t);
            __syncthreads();
            smem_mma<true, false>(Ss, LS, false, Qs, LH, Ks, LH, t, t, hp);  /* S = Q K^T */
            smem_mma<true, false>(dPs, LS, false, dOs, LH, Vs, LH, t, t, hp); /* dP = dO V^T */
            __syncthreads();
            /* P = exp(S scale - lse) on visible pairs; dS = P (dP - D) scale */
            for (int e = threadIdx.x; e < t * t; e += AT_THREADS) {
                int i = e / t, j = e % t;
                float p = 0.0f, ds = 0.0f;
                if (q0 + i < L && k0 + j <= q0 + i) {
                    p = expf(Ss[i * LS + j] * scale - lse_s[i]);
                    ds = p * (dPs[i * LS + j] - D_s[i]) * scale;
                }
                Ps[i * LP + j] = __float2bfloat16(p);
                dSs[i * LP + j] = __float2bfloat16(ds);
            }
            __syncthreads();
            smem_mma<false, true>(dVs, LO, true, Ps, LP, dOs, LH, t, hp, t); /* dV += P^T dO */
            smem_mma<false, true>(dKs, LO, true, dSs, LP, Qs, LH, t, hp, t); /* dK += dS^T Q */
            __syncthreads();
        }
    }
    tl_bf16 *dkb = dk + (size_t)(s0 + k0) * kstride + (size_t)g * hd;
    tl_bf16 *dvb = dv + (size_t)(s0 + k0) * kstride + (size_t)g * hd;
    for (int e = threadIdx.x; e < nk * hd; e += AT_THREADS) {
        int i = e / hd, c = e % hd;
        dkb[(size_t)i * kstride + c] = __float2bfloat16(dKs[i * LO + c]);
        dvb[(size_t)i * kstride + c] = __float2bfloat16(dVs[i * LO + c]);
    }
}

/* dQ of one query tile: grid (query tiles, Hq, n_seq) */
static __global__ void __launch_bounds__(AT_THREADS)
    attn_dq_kernel(tl_bf16 *dq, const tl_bf16 *dout, const float *lse, const float *D, const tl_bf16 *q,
                   const tl_bf16 *k, const tl_bf16 *v, const int32_t *cu, int Hq, int Hkv, int hd, int hp, int t,
                   float scale, int vec) {
    extern __shared__ __align__(128) unsigned char tl_smem[];
    int seq = blockIdx.z, h = blockIdx.y, s0 = cu[seq], L = cu[seq + 1] - s0;
    int q0 = (gridDim.x - 1 - blockIdx.x) * t; /* the last (longest-running) query tiles start first */
    if (q0 >= L) return;
    int kvh = h / (Hq / Hkv);
    smem_plan pl = plan_dq(t, hp);
    unsigned char *sp = tl_smem;
    tl_bf16 *Qs = (tl_bf16 *)sp, *dOs = (tl_bf16 *)(sp + pl.tile_h), *Ks = (tl_bf16 *)(sp + 2 * pl.tile_h),
            *Vs = (tl_bf16 *)(sp + 3 * pl.tile_h);
    sp += 4 * pl.tile_h;
    float *Ss = (float *)sp, *dPs = (float *)(sp + pl.tile_s);
    sp += 2 * pl.tile_s;
    tl_bf16 *dSs = (tl_bf16 *)sp;
    sp += pl.tile_p;
    float *dQs = (float *)sp;
    sp += pl.tile_o;
    float *lse_s = (float *)sp, *D_s = (float *)(sp + pl.vec);
    int LH = ld_h(hp), LS = ld_s(t), LP = ld_p(t), LO = ld_o(hp);
    size_t qstride = (size_t)Hq * hd, kstride = (size_t)Hkv * hd;

    int nq = L - q0 < t ? L - q0 : t;
    size_t qoff = (size_t)(s0 + q0) * qstride + (size_t)h * hd;
    load_tile(Qs, LH, q + qoff, qstride, nq, t, hd, hp, vec);
    load_tile(dOs, LH, dout + qoff, qstride, nq, t, hd, hp, vec);
    load_rowstats(lse_s, D_s, lse, D, (size_t)(s0 + q0), nq, Hq, h, t);
    zero_f32(dQs, t * LO);
    int q_last = q0 + nq - 1;

    for (int k0 = 0; k0 <= q_last; k0 += t) {
        int nk = L - k0 < t ? L - k0 : t;
        size_t koff = (size_t)(s0 + k0) * kstride + (size_t)kvh * hd;
        load_tile(Ks, LH, k + koff, kstride, nk, t, hd, hp, vec);
        load_tile(Vs, LH, v + koff, kstride, nk, t, hd, hp, vec);
        __syncthreads();
        smem_mma<true, false>(Ss, LS, false, Qs, LH, Ks, LH, t, t, hp);  /* S = Q K^T */
        smem_mma<true, false>(dPs, LS, false, dOs, LH, Vs, LH, t, t, hp); /* dP = dO V^T */
        __syncthreads();
        for (int e = threadIdx.x; e < t * t; e += AT_THREADS) {
            int i = e / t, j = e % t;
            float ds = 0.0f;
            if (q0 + i < L && k0 + j <= q0 + i) {
                float p = expf(Ss[i * LS + j] * scale - lse_s[i]);
                ds = p * (dPs[i * LS + j] - D_s[i]) * scale;
            }
            dSs[i * LP + j] = __float2bfloat16(ds);
        }
        __syncthreads();
        smem_mma<true, true>(dQs, LO, true, dSs, LP, Ks, LH, t, hp, t); /* dQ += dS K */
        __syncthreads();
    }
    tl_bf16 *dqb = dq + qoff;
    for (int e = threadIdx.x; e < nq * hd; e += AT_THREADS) {
        int i = e / hd, c = e % hd;
        dqb[(size_t)i * qstride + c] = __float2bfloat16(dQs[i * LO + c]);
    }
}

/* ---- host side ---- */

static int head_pad(int hd) { return (hd + 15) / 16 * 16; }

/* The longest sequence, from the host boundaries (the grid must cover it; max_seqlen is not trusted for that). */
static int longest(const tl_mb *mb) {
    int mx = 0;
    for (int s = 0; s < mb->n_seq; s++) {
        int L = mb->h_cu_seqlens[s + 1] - mb->h_cu_seqlens[s];
        if (L > mx) mx = L;
    }
    return mx;
}

/* The largest tile (64, 32, 16) whose layout fits the opt-in limit; 0 when none does. */
static int pick_tile(const tl_cuda_ctx *c, int hp, smem_plan (*pf)(int, int)) {
    for (int t = 64; t >= 16; t /= 2)
        if (pf(t, hp).total <= (size_t)c->attn_smem_max) return t;
    return 0;
}

int tl_cuda_attn_setup(tl_cuda_ctx *c) {
    /* the most any layout needs (64-row tiles at the largest head dim), capped by what the device allows */
    size_t want = plan_dkv(64, AT_MAX_HD).total;
    c->attn_smem_max = want < (size_t)c->smem_optin ? (int)want : c->smem_optin;
    if (!tl_cuda_ok(c, cudaFuncSetAttribute(attn_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            c->attn_smem_max),
                    "create (attention forward shared memory %d bytes)", c->attn_smem_max))
        return 0;
    if (!tl_cuda_ok(c, cudaFuncSetAttribute(attn_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            c->attn_smem_max),
                    "create (attention dK/dV shared memory %d bytes)", c->attn_smem_max))
        return 0;
    return tl_cuda_ok(c, cudaFuncSetAttribute(attn_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              c->attn_smem_max),
                      "create (attention dQ shared memory %d bytes)", c->attn_smem_max);
}

static int check_attn(tl_cuda_ctx *c, const char *op, const tl_mb *mb, int Hq, int Hkv, int hd) {
    if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0 || hd <= 0 || hd > AT_MAX_HD || hd % 2 != 0) {
        tl_cuda_fail(c, "need Hq a positive multiple of Hkv and an even head dim <= 256", "%s (Hq=%d, Hkv=%d, hd=%d)",
                     op, Hq, Hkv, hd);
        return 0;
    }
    if (mb->n_seq > 65535 || Hq > 65535) {
        tl_cuda_fail(c, "more than 65535 sequences or heads", "%s (n_seq=%d, Hq=%d)", op, mb->n_seq, Hq);
        return 0;
    }
    return 1;
}

/* 16-byte accesses need every row start aligned: base pointers and row strides / head offsets (hd % 8) */
static int attn_vec(int hd, const void *a, const void *b, const void *c3, const void *d4) {
    return hd % 8 == 0 && tl_cuda_aligned16(a) && tl_cuda_aligned16(b) && tl_cuda_aligned16(c3) &&
           tl_cuda_aligned16(d4);
}

void tl_cuda_attn_fwd(tl_backend *be, tl_act *out, float *lse, const tl_act *q, const tl_act *k, const tl_act *v,
                      const tl_mb *mb, int Hq, int Hkv, int hd) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || mb->n_tok <= 0 || mb->n_seq <= 0) return;
    if (!check_attn(c, "attn_fwd", mb, Hq, Hkv, hd)) return;
    int hp = head_pad(hd), t = pick_tile(c, hp, plan_fwd);
    if (t == 0) {
        tl_cuda_fail(c, "not enough shared memory on this device", "attn_fwd (hd=%d)", hd);
        return;
    }
    size_t smem = plan_fwd(t, hp).total;
    int Lmax = longest(mb);
    dim3 grid((unsigned)((Lmax + t - 1) / t), (unsigned)Hq, (unsigned)mb->n_seq);
    if (grid.x == 0) return;
    attn_fwd_kernel<<<grid, AT_THREADS, smem, c->stream>>>(
        (tl_bf16 *)out, lse, (const tl_bf16 *)q, (const tl_bf16 *)k, (const tl_bf16 *)v, mb->cu_seqlens, Hq, Hkv, hd,
        hp, t, 1.0f / sqrtf((float)hd), attn_vec(hd, out, q, k, v));
    tl_cuda_ok(c, cudaGetLastError(), "attn_fwd (n=%d, n_seq=%d, longest=%d, Hq=%d, Hkv=%d, hd=%d, tile=%d)",
               mb->n_tok, mb->n_seq, Lmax, Hq, Hkv, hd, t);
}

void tl_cuda_attn_bwd(tl_backend *be, tl_act *dq, tl_act *dk, tl_act *dv, const tl_act *dout, const tl_act *out,
                      const float *lse, const tl_act *q, const tl_act *k, const tl_act *v, const tl_mb *mb, int Hq,
                      int Hkv, int hd) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || mb->n_tok <= 0 || mb->n_seq <= 0) return;
    if (!check_attn(c, "attn_bwd", mb, Hq, Hkv, hd)) return;
    int n = mb->n_tok;
    if ((size_t)n * Hq > TL_CUDA_SCRATCH_FLOATS) {
        tl_cuda_fail(c, "n * Hq exceeds the scratch buffer", "attn_bwd (n=%d, Hq=%d)", n, Hq);
        return;
    }
    int hp = head_pad(hd), tkv = pick_tile(c, hp, plan_dkv), tq = pick_tile(c, hp, plan_dq);
    if (tkv == 0 || tq == 0) {
        tl_cuda_fail(c, "not enough shared memory on this device", "attn_bwd (hd=%d)", hd);
        return;
    }
    float *D = c->scratch, scale = 1.0f / sqrtf((float)hd);
    unsigned nw = (unsigned)(((size_t)n * Hq + AT_WARPS - 1) / AT_WARPS);
    attn_dot_kernel<<<nw, AT_THREADS, 0, c->stream>>>(D, (const tl_bf16 *)dout, (const tl_bf16 *)out, n, Hq, hd);
    if (!tl_cuda_ok(c, cudaGetLastError(), "attn_bwd (D, n=%d, Hq=%d, hd=%d)", n, Hq, hd)) return;
    int vec = attn_vec(hd, q, k, v, dout) && attn_vec(hd, dq, dk, dv, out);
    int Lmax = longest(mb);
    dim3 gkv((unsigned)((Lmax + tkv - 1) / tkv), (unsigned)Hkv, (unsigned)mb->n_seq);
    if (gkv.x == 0) return;
    attn_dkv_kernel<<<gkv, AT_THREADS, plan_dkv(tkv, hp).total, c->stream>>>(
        (tl_bf16 *)dk, (tl_bf16 *)dv, (const tl_bf16 *)dout, lse, D, (const tl_bf16 *)q, (const tl_bf16 *)k,
        (const tl_bf16 *)v, mb->cu_seqlens, Hq, Hkv, hd, hp, tkv, scale, vec);
    if (!tl_cuda_ok(c, cudaGetLastError(), "attn_bwd (dK/dV, n=%d, n_seq=%d, Hq=%d, Hkv=%d, hd=%d, tile=%d)", n,
                    mb->n_seq, Hq, Hkv, hd, tkv))
        return;
    dim3 gq((unsigned)((Lmax + tq - 1) / tq), (unsigned)Hq, (unsigned)mb->n_seq);
    attn_dq_kernel<<<gq, AT_THREADS, plan_dq(tq, hp).total, c->stream>>>(
        (tl_bf16 *)dq, (const tl_bf16 *)dout, lse, D, (const tl_bf16 *)q, (const tl_bf16 *)k, (const tl_bf16 *)v,
        mb->cu_seqlens, Hq, Hkv, hd, hp, tq, scale, vec);
    tl_cuda_ok(c, cudaGetLastError(), "attn_bwd (dQ, n=%d, n_seq=%d, Hq=%d, Hkv=%d, hd=%d, tile=%d)", n, mb->n_seq,
               Hq, Hkv, hd, tq);
}
