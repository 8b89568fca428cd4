/* cpu_mm: the CPU backend's own single-precision products, for every product of a training step:
 *
 *   NT  C = alpha A B^T (+ C)   A [M, K], B [N, K], both row-major: every row of both runs along K. The frozen
 *                               projections' forward (x W^T), the LM head's logits, LoRA's x A^T.
 *   NN  C = alpha A B (+ C)     A [M, K], B [K, N], row-major. The input gradients dy W, attention's P V.
 *   TN  C = alpha A^T B (+ C)   A [K, M], B [K, N]: LoRA's dA and dB, attention's dV and dK.
 *
 * Why not OpenBLAS: results that do not depend on the batch. OpenBLAS computes the rows and columns of C left
 * over after its register blocks with other kernels, in another order, so an element's value depended on where
 * it fell in the product: on a Zen 3 EPYC a user's eval loss changed in the 8th digit with the users it was
 * batched with (train.store on and off batch eval differently, and tests/e2e/store*.sh failed there). Here an
 * element depends on K only (below), so a user's numbers never depend on the other users in its micro-batch.
 *
 * The tiles read the operands where they lie (OpenBLAS copies every block of A and B into its panel layout):
 *   - NT keeps a 3 x 4 tile of 8-lane partial dot products (12 ymm accumulators; per 8 values of k, 3 loads of A
 *     and 4 of B for 12 FMAs, as llamafile's tinyBLAS does for C = A^T B) and sums each row's four vectors
 *     together at the end (reduce4). Rows of B are taken in blocks that stay in L2 while every 3-row tile of A
 *     (in L1) passes over them.
 *   - NN and TN keep a 6 x 16 tile of C (12 accumulators; per k one broadcast of A per row and two loads of B's
 *     row), over blocks of KC values of k and NB columns of B that stay in L2. With 24 rows of C or more, each
 *     block of B is first copied into 16-column strips (contiguous, so each k's row of a strip is one cache line
 *     and the TLB is not walked once per k); with fewer it is read where it lies.
 * Speed against OpenBLAS on a Zen 3 EPYC (2026-12-06, the step's shapes, cold caches, 2 threads): NN 0.93-1.08
 * of its rate, NT 0.84-0.95; a whole 4 x 256 step within 3% of OpenBLAS's (docs/performance.md).
 *
 * Summation order. NN, TN: k in increasing order, in blocks of TL_MM_NN_KC, each block's sum scaled by alpha and
 * added to C. NT with K <= TL_MM_NT_SMALL_K (LoRA's h B^T): as NN, on a copy of B^T. Longer NT: lane l of an
 * element adds the products of k = l, l + 8, ... (k < K) in increasing k, in chunks of TL_MM_NT_KC values of k
 * whose lane sums are added to C in order; the lanes are summed in the fixed tree of reduce4. All depend on K
 * only: an element's value does not depend on the tile it falls in, on M or N, or on how a caller splits C over
 * threads.
 *
 * x86-64 only. The functions are compiled for AVX2 + FMA with target attributes (whatever the build's -march)
 * and must be called only where tl_cpu_mm_choice() chose them, which asks the CPU for both. Single-threaded:
 * tl_cpu_gemm splits C over the backend's team. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

/* TL_CPU_GEMM: "auto" (or unset), "tailor" or "openblas"; -1 for anything else */
static int env_choice(void) {
    const char *v = getenv("TL_CPU_GEMM");
    if (!v || !*v || !strcmp(v, "auto")) return 2;
    if (!strcmp(v, "tailor")) return 1;
    if (!strcmp(v, "openblas")) return 0;
    return -1;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TL_MM_NT_KC 2048            /* values of k per NT chunk: a 3-row tile of A is at most 24 KiB */
#define TL_MM_NT_BBYTES (128 << 10) /* bytes of B's rows per NT block (L2) */
#define TL_MM_NN_KC 256             /* values of k per NN block */
#define TL_MM_NN_NB 256             /* columns per NN block: KC x NB floats of B = 256 KiB (L2) */
#define TL_MM_NT_SMALL_K 32         /* NT with K up to this: B^T copied, then the NN tiles (below) */
#define TL_MM_BT_FLOATS 16384       /* the copy of B^T, per thread */

#define MM_FN __attribute__((target("avx2,fma")))
#define MM_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

int tl_cpu_mm_choice(const char **why) {
    __builtin_cpu_init();
    int usable = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int env = env_choice();
    switch (env) {
    case 0: *why = "OpenBLAS (TL_CPU_GEMM=openblas)"; return 0;
    case 1:
    case 2:
        if (!usable) break;
        *why = env == 1 ? "tailor's AVX2 tiles (A B^T, A B, A^T B; TL_CPU_GEMM=tailor)"
                        : "tailor's AVX2 tiles (A B^T, A B, A^T B)";
        return 1;
    default: *why = NULL; return -1;
    }
    *why = "OpenBLAS (the CPU has no AVX2 and FMA for tailor's tiles)";
    return 0;
}

/* Four 8-lane vectors summed each into one lane of the result: [sum v0, sum v1, sum v2, sum v3], every sum in
 * one fixed tree ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). */
MM_INLINE __m128 reduce4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* Lanes [0, n) set, for n in [0, 8]. */
MM_INLINE __m256i lane_mask(int n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

/* K = 0: an empty sum, so C = 0 (acc = 0) or C unchanged. */
static void empty_sum(int M, int N, int acc, float *C, int ldc) {
    if (acc) return;
    for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
}

/* An opaque copy: keeps a loaded value in a register, so that the compiler does not fold the load into every FMA
 * that uses it (which turns 7 loads per 12 FMAs into 12 or 16, and the tile becomes load-bound). */
#define MM_KEEP(v) __asm__("" : "+x"(v))

/* NT tile: C[i, j] = (acc ? C[i, j] : 0) + alpha sum_{k < K} A[i, k] B[j, k], i < RM <= 3, j < RN <= 4. Each row's
 * four partial-sum vectors are reduced together (reduce4; missing columns are zero vectors, so an element's sum
 * is the same in an edge tile). */
MM_INLINE void nt_tile(int RM, int RN, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                       float *C, int ldc, int acc) {
    __m256 c[3][4];
#pragma GCC unroll 3
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) c[i][j] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) { /* 12 accumulators + 3 rows of A + 1 row of B: the 16 ymm registers */
        __m256 a[3];
#pragma GCC unroll 3
        for (int i = 0; i < RM; i++) {
            a[i] = _mm256_loadu_ps(A + (size_t)i * lda + k);
            MM_KEEP(a[i]);
        }
#pragma GCC unroll 4
        for (int j = 0; j < RN; j++) {
            __m256 b = _mm256_loadu_ps(B + (size_t)j * ldb + k);
            MM_KEEP(b);
#pragma GCC unroll 3
            for (int i = 0; i < RM; i++) c[i][j] = _mm256_fmadd_ps(a[i], b, c[i][j]);
        }
    }
    if (k < K) { /* the last K % 8 values: masked loads read only those lanes and give 0 in the others */
        __m256i m = lane_mask(K - k);
        __m256 b[4];
#pragma GCC unroll 4
        for (int j = 0; j < RN; j++) b[j] = _mm256_maskload_ps(B + (size_t)j * ldb + k, m);
#pragma GCC unroll 3
        for (int i = 0; i < RM; i++) {
            __m256 a = _mm256_maskload_ps(A + (size_t)i * lda + k, m);
#pragma GCC unroll 4
            for (int j = 0; j < RN; j++) c[i][j] = _mm256_fmadd_ps(a, b[j], c[i][j]);
        }
    }
    __m128 al = _mm_set1_ps(alpha);
#pragma GCC unroll 3
    for (int i = 0; i < RM; i++) {
        __m128 s = _mm_mul_ps(al, reduce4(c[i][0], c[i][1], c[i][2], c[i][3]));
        float *ci = C + (size_t)i * ldc;
        if (RN == 4) {
            if (acc) s = _mm_add_ps(_mm_loadu_ps(ci), s);
            _mm_storeu_ps(ci, s);
        } else {
            float t[4];
            _mm_storeu_ps(t, s);
#pragma GCC unroll 4
            for (int j = 0; j < RN; j++) ci[j] = acc ? ci[j] + t[j] : t[j];
        }
    }
}

/* The edge tiles (fewer than 3 rows or 4 columns left), one instance per shape. */
MM_FN static void nt_edge(int rm, int rn, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                          float *C, int ldc, int acc) {
#define NT_CASE(r, c)                                                                                                 \
    case (r) * 8 + (c): nt_tile(r, c, K, alpha, A, lda, B, ldb, C, ldc, acc); break
    switch (rm * 8 + rn) {
        NT_CASE(1, 1); NT_CASE(1, 2); NT_CASE(1, 3); NT_CASE(1, 4);
        NT_CASE(2, 1); NT_CASE(2, 2); NT_CASE(2, 3); NT_CASE(2, 4);
        NT_CASE(3, 1); NT_CASE(3, 2); NT_CASE(3, 3); NT_CASE(3, 4);
    default: break;
    }
#undef NT_CASE
}

MM_FN static void nt_small(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                           int acc, float *C, int ldc);

MM_FN void tl_cpu_mm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                        float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        empty_sum(M, N, acc, C, ldc);
        return;
    }
    if (K <= TL_MM_NT_SMALL_K) { /* one or a few vectors per dot product: the lane sums would cost more than it */
        nt_small(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
        return;
    }
    for (int k0 = 0; k0 < K; k0 += TL_MM_NT_KC) {
        int kc = K - k0 < TL_MM_NT_KC ? K - k0 : TL_MM_NT_KC;
        int a = acc || k0 > 0;
        /* rows of B per block: what fits in TL_MM_NT_BBYTES, a multiple of 4, at least 4 */
        long nb = TL_MM_NT_BBYTES / ((long)kc * (long)sizeof(float));
        nb = nb < 4 ? 4 : nb / 4 * 4;
        for (int n0 = 0; n0 < N; n0 += (int)nb) {
            int n1 = N - n0 < nb ? N : n0 + (int)nb;
            for (int m0 = 0; m0 < M; m0 += 3) {
                int rm = M - m0 < 3 ? M - m0 : 3;
                const float *Am = A + (size_t)m0 * lda + k0;
                float *Cm = C + (size_t)m0 * ldc;
                int n = n0;
                if (rm == 3)
                    for (; n + 4 <= n1; n += 4)
                        nt_tile(3, 4, kc, alpha, Am, lda, B + (size_t)n * ldb + k0, ldb, Cm + n, ldc, a);
                for (; n < n1; n += 4)
                    nt_edge(rm, n1 - n < 4 ? n1 - n : 4, kc, alpha, Am, lda, B + (size_t)n * ldb + k0, ldb, Cm + n,
                            ldc, a);
            }
        }
    }
}

/* NN / TN tile: C[i, 0:W) = (acc ? C[i, 0:W) : 0) + alpha sum_{k < K} a(i, k) B[k, 0:W), i < MR, where a(i, k)
 * is A[i * sai + k * sak] (NN: sai = lda, sak = 1; TN: sai = 1, sak = lda). W = 8 (NV - 1) + w columns with w in
 * [1, 8]: NV = 2 covers 9..16 columns, NV = 1 covers 1..8; the last vector is masked when w < 8 (masked loads and
 * stores touch only the columns that exist). */
MM_INLINE void nn_tile(int MR, int NV, int w, int K, float alpha, const float *A, size_t sai, size_t sak,
                       const float *B, int ldb, float *C, int ldc, int acc) {
    __m256i m = lane_mask(w);
    __m256 c[6][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) c[i][v] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *Bk = B + (size_t)k * ldb;
        __m256 b[2];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            b[v] = v == NV - 1 && w < 8 ? _mm256_maskload_ps(Bk + 8 * v, m) : _mm256_loadu_ps(Bk + 8 * v);
            MM_KEEP(b[v]);
        }
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 a = _mm256_broadcast_ss(A + i * sai + k * sak);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++) c[i][v] = _mm256_fmadd_ps(a, b[v], c[i][v]);
        }
    }
    __m256 al = _mm256_set1_ps(alpha);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            float *ci = C + (size_t)i * ldc + 8 * v;
            int part = v == NV - 1 && w < 8;
            __m256 s = _mm256_mul_ps(al, c[i][v]);
            if (acc) s = _mm256_add_ps(part ? _mm256_maskload_ps(ci, m) : _mm256_loadu_ps(ci), s);
            if (part)
                _mm256_maskstore_ps(ci, m, s);
            else
                _mm256_storeu_ps(ci, s);
        }
}

/* One column strip of up to 16 columns for an MR-row tile: the full strip, or an edge of 1..15 columns. */
MM_FN static void nn_strip(int mr, int cols, int K, float alpha, const float *A, size_t sai, size_t sak,
                           const float *B, int ldb, float *C, int ldc, int acc) {
    int nv = cols > 8 ? 2 : 1, w = cols - 8 * (nv - 1);
#define NN_CASE(r)                                                                                                    \
    case r:                                                                                                           \
        if (nv == 2)                                                                                                  \
            nn_tile(r, 2, w, K, alpha, A, sai, sak, B, ldb, C, ldc, acc);                                             \
        else                                                                                                          \
            nn_tile(r, 1, w, K, alpha, A, sai, sak, B, ldb, C, ldc, acc);                                             \
        break
    switch (mr) {
        NN_CASE(1); NN_CASE(2); NN_CASE(3); NN_CASE(4); NN_CASE(5); NN_CASE(6);
    default: break;
    }
#undef NN_CASE
}

/* B's block of kc rows x nc columns (nc <= TL_MM_NN_NB), packed strip by strip: strip s holds kc rows of 16
 * floats, columns n0 + 16 s .. n0 + 16 s + 15, zeros past the block's last column. One per thread: the product
 * runs inside the backend's OpenMP team, and ops never allocate. */
static _Thread_local float nn_panel[TL_MM_NN_KC * TL_MM_NN_NB] __attribute__((aligned(64)));

MM_FN static void nn_pack(int kc, int nc, const float *B, int ldb) {
    for (int s0 = 0; s0 < nc; s0 += 16) {
        int w = nc - s0 < 16 ? nc - s0 : 16;
        float *P = nn_panel + (size_t)s0 * kc;
        __m256i m0 = lane_mask(w), m1 = lane_mask(w - 8);
        for (int k = 0; k < kc; k++) {
            const float *Bk = B + (size_t)k * ldb + s0;
            if (w == 16) {
                _mm256_store_ps(P + 16 * k, _mm256_loadu_ps(Bk));
                _mm256_store_ps(P + 16 * k + 8, _mm256_loadu_ps(Bk + 8));
            } else {
                _mm256_store_ps(P + 16 * k, _mm256_maskload_ps(Bk, m0));
                _mm256_store_ps(P + 16 * k + 8, w > 8 ? _mm256_maskload_ps(Bk + 8, m1) : _mm256_setzero_ps());
            }
        }
    }
}

/* C = alpha op(A) B (+ C) with op(A)[i, k] = A[i * sai + k * sak]: the NN and TN products. */
MM_FN static void mm_xn(int M, int N, int K, float alpha, const float *A, size_t sai, size_t sak, const float *B,
                        int ldb, int acc, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        empty_sum(M, N, acc, C, ldc);
        return;
    }
    /* a block of B is packed when enough row tiles read it to repay the copy; else it is read where it lies */
    int pack = M >= 4 * 6;
    for (int k0 = 0; k0 < K; k0 += TL_MM_NN_KC) {
        int kc = K - k0 < TL_MM_NN_KC ? K - k0 : TL_MM_NN_KC;
        int a = acc || k0 > 0;
        for (int n0 = 0; n0 < N; n0 += TL_MM_NN_NB) {
            int nc = N - n0 < TL_MM_NN_NB ? N - n0 : TL_MM_NN_NB;
            const float *Bb = B + (size_t)k0 * ldb + n0;
            if (pack) nn_pack(kc, nc, Bb, ldb);
            for (int m0 = 0; m0 < M; m0 += 6) {
                int mr = M - m0 < 6 ? M - m0 : 6;
                const float *Am = A + (size_t)m0 * sai + (size_t)k0 * sak;
                float *Cm = C + (size_t)m0 * ldc + n0;
                for (int s0 = 0; s0 < nc; s0 += 16) {
                    const float *Bs = pack ? nn_panel + (size_t)s0 * kc : Bb + s0;
                    int ld = pack ? 16 : ldb, cols = nc - s0 < 16 ? nc - s0 : 16;
                    if (mr == 6 && cols == 16)
                        nn_tile(6, 2, 8, kc, alpha, Am, sai, sak, Bs, ld, Cm + s0, ldc, a);
                    else
                        nn_strip(mr, cols, kc, alpha, Am, sai, sak, Bs, ld, Cm + s0, ldc, a);
                }
            }
        }
    }
}

/* NT with a short K (LoRA's h B^T, K = rank): B's rows are copied as the columns of B^T [K, nc], some columns at
 * a time, and the NN tiles take it from there (k in increasing order, as NN). */
static _Thread_local float nt_bt[TL_MM_BT_FLOATS] __attribute__((aligned(64)));

MM_FN static void nt_small(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                           int acc, float *C, int ldc) {
    int chunk = TL_MM_BT_FLOATS / K / 16 * 16; /* columns per copy: K <= 32 gives at least 512 */
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int nc = N - n0 < chunk ? N - n0 : chunk;
        int j = 0;
        for (; j + 8 <= nc; j += 8) { /* 8 rows of B at a time, 8 x 8 blocks transposed in registers */
            const float *Bj = B + (size_t)(n0 + j) * ldb;
            int k = 0;
            for (; k + 8 <= K; k += 8) {
                __m256 r[8], t[8], u[8];
                for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(Bj + (size_t)q * ldb + k);
                for (int q = 0; q < 8; q += 2) {
                    t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
                    t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
                }
                for (int q = 0; q < 8; q += 4) {
                    u[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
                    u[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
                    u[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
                    u[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
                }
                for (int q = 0; q < 4; q++) { /* column k + q of the 8 rows, and column k + 4 + q */
                    _mm256_storeu_ps(nt_bt + (size_t)(k + q) * nc + j, _mm256_permute2f128_ps(u[q], u[q + 4], 0x20));
                    _mm256_storeu_ps(nt_bt + (size_t)(k + 4 + q) * nc + j,
                                     _mm256_permute2f128_ps(u[q], u[q + 4], 0x31));
                }
            }
            for (; k < K; k++)
                for (int q = 0; q < 8; q++) nt_bt[(size_t)k * nc + j + q] = Bj[(size_t)q * ldb + k];
        }
        for (; j < nc; j++) {
            const float *Bj = B + (size_t)(n0 + j) * ldb;
            for (int k = 0; k < K; k++) nt_bt[(size_t)k * nc + j] = Bj[k];
        }
        mm_xn(M, nc, K, alpha, A, (size_t)lda, 1, nt_bt, nc, acc, C + n0, ldc);
    }
}

MM_FN void tl_cpu_mm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                        float *C, int ldc) {
    mm_xn(M, N, K, alpha, A, (size_t)lda, 1, B, ldb, acc, C, ldc);
}

MM_FN void tl_cpu_mm_tn(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                        float *C, int ldc) {
    mm_xn(M, N, K, alpha, A, 1, (size_t)lda, B, ldb, acc, C, ldc);
}

#else /* not x86-64 with GCC or clang: the products stay with OpenBLAS */

int tl_cpu_mm_choice(const char **why) {
    if (env_choice() < 0) {
        *why = NULL;
        return -1;
    }
    *why = "OpenBLAS (tailor's tiles are for x86-64)";
    return 0;
}

void tl_cpu_mm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                  float *C, int ldc) {
    tl_cpu_sgemm(0, 1, M, N, K, alpha, A, lda, B, ldb, acc ? 1.0f : 0.0f, C, ldc);
}

void tl_cpu_mm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                  float *C, int ldc) {
    tl_cpu_sgemm(0, 0, M, N, K, alpha, A, lda, B, ldb, acc ? 1.0f : 0.0f, C, ldc);
}

void tl_cpu_mm_tn(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
                  float *C, int ldc) {
    tl_cpu_sgemm(1, 0, M, N, K, alpha, A, lda, B, ldb, acc ? 1.0f : 0.0f, C, ldc);
}

#endif
