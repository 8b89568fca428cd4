/* test_cpu_mm: the CPU backend's own products (kernels/cpu/cpu_mm.c) against a float64 reference written here,
 * on fresh random shapes and operands.
 *
 * Checked for C = alpha A B (+ C) (nn), C = alpha A B^T (+ C) (nt) and C = alpha A^T B (+ C) (tn):
 *   - every element within 1e-5 of the float64 sum, relative to the sum of |products| (fp32 accumulation);
 *   - acc = 0 never reads C (C is poisoned with NaN), and columns past N in a padded row are never written;
 *   - K = 0, K not a multiple of 8 (masked tails), K past one NT chunk (2048), NT's short K (<= 32: B^T copied),
 *     N not a multiple of 16, NN's
 *     packed and unpacked B (24 rows and more, or fewer), several blocks of columns and of K;
 *   - an element's value does not depend on where its tile falls: a sub-block computed on its own is bit-equal
 *     to the same elements of the whole product;
 *   - tl_cpu_gemm gives bit-equal results with one thread and with two (the split over the team).
 * Exit 77 (skipped) where the CPU lacks AVX2 and FMA. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

static int g_fail, g_checks;
static uint64_t g_rng = 0x6d6d5eedULL;

static float frand(void) {
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((g_rng >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}
static int irand(int n) {
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int)((g_rng >> 33) % (uint64_t)n);
}

static const char *const g_kind[3] = {"nn", "nt", "tn"};

static void fail(const char *fmt, int kind, int M, int N, int K, int i, int j, double got, double want) {
    if (g_fail++ < 10)
        printf("FAIL %s: %s M=%d N=%d K=%d at [%d, %d]: %.9g, expected %.9g\n", fmt, g_kind[kind], M, N, K, i, j, got,
               want);
}

static float *alloc_f(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "test_cpu_mm: out of memory\n");
        exit(1);
    }
    return p;
}

static void mm(int kind, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, int acc,
               float *C, int ldc) {
    if (kind == 1)
        tl_cpu_mm_nt(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
    else if (kind == 2)
        tl_cpu_mm_tn(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
    else
        tl_cpu_mm_nn(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
}

/* op(A)[i, k] and op(B)[k, j] as the kind lays them out */
static double a_at(int kind, const float *A, int lda, int i, int k) {
    return kind == 2 ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
}
static double b_at(int kind, const float *B, int ldb, int k, int j) {
    return kind == 1 ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
}

/* One random product with padded leading dimensions, against float64. */
static void one_case(int kind, int M, int N, int K, int acc, float alpha) {
    int nt = kind == 1, tn = kind == 2;
    int lda = (tn ? M : K) + irand(4), ldb = (nt ? K : N) + irand(4), ldc = N + 1 + irand(4);
    size_t na = tn ? (K ? (size_t)(K - 1) * lda + M : 0) : (size_t)(M - 1) * lda + K;
    size_t nb = nt ? (size_t)(N - 1) * ldb + K : (K ? (size_t)(K - 1) * ldb + N : 0);
    size_t nc = (size_t)M * ldc;
    float *A = alloc_f(na), *B = alloc_f(nb), *C = alloc_f(nc), *C0 = alloc_f(nc);
    for (size_t i = 0; i < na; i++) A[i] = frand();
    for (size_t i = 0; i < nb; i++) B[i] = frand();
    for (size_t i = 0; i < nc; i++) C0[i] = C[i] = acc ? frand() : NAN;
    mm(kind, M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
    g_checks++;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            size_t o = (size_t)i * ldc + j;
            if (j >= N) { /* padding: untouched (NaN stays NaN) */
                if (!(C[o] == C0[o] || (isnan(C[o]) && isnan(C0[o]))))
                    fail("padding written", kind, M, N, K, i, j, C[o], C0[o]);
                continue;
            }
            double s = 0.0, sa = 0.0;
            for (int k = 0; k < K; k++) {
                double p = a_at(kind, A, lda, i, k) * b_at(kind, B, ldb, k, j);
                s += p;
                sa += fabs(p);
            }
            double want = (acc ? (double)C0[o] : 0.0) + alpha * s;
            double tol = 1e-5 * (fabs(alpha) * sa + (acc ? fabs(C0[o]) : 0.0)) + 1e-7;
            if (!(fabs(C[o] - want) <= tol)) fail("value", kind, M, N, K, i, j, C[o], want);
        }
    free(A);
    free(B);
    free(C);
    free(C0);
}

/* A sub-block [i0, i0 + m) x [j0, j0 + n) computed on its own equals the same elements of the whole product. */
static void tile_independence(int kind, int M, int N, int K) {
    int nt = kind == 1, tn = kind == 2;
    int lda = tn ? M : K, ldb = nt ? K : N, ldc = N;
    float *A = alloc_f((size_t)M * K), *B = alloc_f((size_t)N * K), *C = alloc_f((size_t)M * N),
          *S = alloc_f((size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
    for (size_t i = 0; i < (size_t)N * K; i++) B[i] = frand();
    mm(kind, M, N, K, 1.0f, A, lda, B, ldb, 0, C, ldc);
    for (int rep = 0; rep < 20; rep++) {
        int i0 = irand(M), j0 = irand(N), m = 1 + irand(M - i0), n = 1 + irand(N - j0);
        const float *Bs = nt ? B + (size_t)j0 * ldb : B + j0;
        mm(kind, m, n, K, 1.0f, tn ? A + i0 : A + (size_t)i0 * lda, lda, Bs, ldb, 0, S, n);
        g_checks++;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float a = S[(size_t)i * n + j], b = C[(size_t)(i0 + i) * ldc + j0 + j];
                if (memcmp(&a, &b, sizeof a)) fail("sub-block differs", kind, M, N, K, i0 + i, j0 + j, a, b);
            }
    }
    free(A);
    free(B);
    free(C);
    free(S);
}

/* tl_cpu_gemm on a one-thread and a two-thread backend: bit-equal. */
static void split_independence(tl_backend *b1, tl_backend *b2, int transA, int transB, int M, int N, int K,
                               float beta) {
    int lda = transA ? M : K, ldb = transB ? K : N;
    float *A = alloc_f((size_t)M * K), *B = alloc_f((size_t)N * K), *C1 = alloc_f((size_t)M * N),
          *C2 = alloc_f((size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
    for (size_t i = 0; i < (size_t)N * K; i++) B[i] = frand();
    for (size_t i = 0; i < (size_t)M * N; i++) C1[i] = C2[i] = beta != 0.0f ? frand() : NAN;
    tl_cpu_gemm(b1, transA, transB, M, N, K, 0.5f, A, lda, B, ldb, beta, C1, N);
    tl_cpu_gemm(b2, transA, transB, M, N, K, 0.5f, A, lda, B, ldb, beta, C2, N);
    g_checks++;
    if (memcmp(C1, C2, (size_t)M * N * sizeof(float)))
        fail("1 vs 2 threads", transA ? 2 : transB, M, N, K, 0, 0, C1[0], C2[0]);
    free(A);
    free(B);
    free(C1);
    free(C2);
}

int main(void) {
    setenv("TL_CPU_GEMM", "tailor", 1);
    const char *why;
    if (tl_cpu_mm_choice(&why) != 1) {
        printf("test_cpu_mm: SKIPPED (%s)\n", why);
        return 77;
    }
    for (int it = 0; it < 900; it++) {
        int kind = it % 3, big = it % 10 == 0;
        int M = 1 + irand(big ? 30 : 40), N = 1 + irand(big ? 40 : 70), K = irand(big ? 4200 : 90);
        one_case(kind, M, N, K, irand(2), it % 4 ? 1.0f : 2.0f * frand());
    }
    for (int kind = 0; kind <= 2; kind++) {
        one_case(kind, 4, 3, 0, 0, 1.0f); /* K = 0: C = 0 */
        one_case(kind, 4, 3, 0, 1, 1.0f); /* K = 0, acc: C unchanged */
        one_case(kind, 1, 1, 1, 0, 1.0f);
        one_case(kind, 6, 16, 8, 0, 1.0f);
        one_case(kind, 13, 33, 2049, 1, -0.75f); /* NT: two chunks of K; NN, TN: nine blocks */
        one_case(kind, 30, 530, 70, 1, 1.0f);    /* NN, TN: three column blocks, packed, the last strip 2 wide */
        one_case(kind, 23, 530, 300, 0, 1.0f);   /* NN, TN: B read where it lies (< 24 rows), two k blocks */
        tile_independence(kind, 37, 53, 61);
        tile_independence(kind, 12, 48, 2100);
        tile_independence(kind, 40, 70, 8); /* NT: the short-K path (B^T copied) */
        one_case(kind, 8, 600, 16, 1, 1.0f);
        one_case(kind, 7, 37, 24, 0, 1.0f); /* NT: B^T copied in 8 x 8 blocks, rows and no columns left over */
        one_case(kind, 5, 43, 13, 1, 1.0f); /* NT: 8 x 8 blocks, 5 columns and 3 rows left over */
    }
    tl_backend *b1, *b2;
    tl_error err;
    if (tl_backend_cpu_create(1, &b1, &err) != TL_OK || tl_backend_cpu_create(2, &b2, &err) != TL_OK) {
        fprintf(stderr, "test_cpu_mm: %s\n", err.msg);
        return 1;
    }
    for (int ta = 0; ta <= 1; ta++) {
        split_independence(b1, b2, ta, !ta, 300, 70, 200, 0.0f); /* split by rows */
        split_independence(b1, b2, ta, 0, 300, 70, 200, 1.0f);
        split_independence(b1, b2, ta, !ta, 64, 520, 100, 1.0f); /* by columns */
        split_independence(b1, b2, ta, 0, 64, 520, 100, 0.0f);
    }
    b1->destroy(b1);
    b2->destroy(b2);
    if (g_fail) {
        printf("test_cpu_mm: %d of %d checks FAILED\n", g_fail, g_checks);
        return 1;
    }
    printf("test_cpu_mm: %d checks passed\n", g_checks);
    return 0;
}
