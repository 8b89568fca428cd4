/* cpu_gemm: the CPU backend's one parallel matrix product. The products run single-threaded (OpenBLAS is set so
 * when the backend is created) and are split here over the backend's OpenMP team: C's rows or columns are cut
 * into one block per thread (multiples of 16), and each thread computes its block. Every element of C is still
 * one reduction over K, so the result does not depend on how the blocks fall except through OpenBLAS's edge
 * kernels; the split depends only on the shape and the team size, so runs are repeatable.
 *
 * Which code computes a block (tl_cpu_gemm1): cpu_mm.c's tiles for A B^T, A B and A^T B with beta 0 or 1 when
 * the backend chose them (tl_cpu_mm_choice), else OpenBLAS's sgemm.
 *
 * Why not OpenBLAS's own pthread pool: between two products its workers spin in sched_yield, and the OpenMP team
 * of the elementwise ops then competes with them for the same cores (on 2 cores, 15-20% of a short-sequence
 * step went to sched_yield in perf); one team for everything leaves no spinning pool behind. */
#include <omp.h>

#include "kernels/cpu/cpu_internal.h"

/* below this many multiply-adds one thread does the product: a parallel region costs a few microseconds */
#define TL_GEMM_PAR_MIN ((long)1 << 18)

void tl_cpu_gemm1(const tl_cpu_ctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (c->own_mm && !(transA && transB) && (beta == 0.0f || beta == 1.0f)) {
        int acc = beta != 0.0f;
        if (transA)
            tl_cpu_mm_tn(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
        else if (transB)
            tl_cpu_mm_nt(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
        else
            tl_cpu_mm_nn(M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
        return;
    }
    tl_cpu_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tl_cpu_gemm(tl_backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    const tl_cpu_ctx *c = tl_cpu(be);
    int nthr = c->threads;
    long work = (long)M * N * (K > 0 ? K : 1);
    int split_n = N >= M; /* cut the larger side of C */
    int side = split_n ? N : M;
    int blocks = side / 16 < nthr ? side / 16 : nthr;
    if (nthr <= 1 || work < TL_GEMM_PAR_MIN || blocks < 2 || omp_in_parallel()) {
        tl_cpu_gemm1(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#pragma omp parallel for num_threads(blocks) schedule(static, 1)
    for (int b = 0; b < blocks; b++) {
        /* block b covers [lo, hi) of the cut side, in multiples of 16; the last one runs to the end */
        int per = (side / 16 + blocks - 1) / blocks * 16;
        int lo = b * per, hi = b == blocks - 1 || lo + per > side ? side : lo + per;
        if (lo >= hi) continue;
        if (split_n) {
            const float *Bb = transB ? B + (size_t)lo * ldb : B + lo;
            tl_cpu_gemm1(c, transA, transB, M, hi - lo, K, alpha, A, lda, Bb, ldb, beta, C + lo, ldc);
        } else {
            const float *Ab = transA ? A + lo : A + (size_t)lo * lda;
            tl_cpu_gemm1(c, transA, transB, hi - lo, N, K, alpha, Ab, lda, B, ldb, beta, C + (size_t)lo * ldc, ldc);
        }
    }
}
