/* cblas_naive: a plain, correct sgemm behind support/cblas.h, for the CPU reference of the GPU tests where no
 * OpenBLAS is installed. The test shapes are small, so clarity beats speed here; the sum runs in double. */
#include "cblas.h"

#include <stddef.h>

void openblas_set_num_threads(int n) { (void)n; }
int openblas_get_num_threads(void) { return 1; } /* this sgemm is single-threaded */

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                 float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (order == CblasColMajor) { /* C^T = op(B)^T op(A)^T in row-major terms */
        cblas_sgemm(CblasRowMajor, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
        return;
    }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                float a = ta == CblasNoTrans ? A[(size_t)i * lda + k] : A[(size_t)k * lda + i];
                float b = tb == CblasNoTrans ? B[(size_t)k * ldb + j] : B[(size_t)j * ldb + k];
                s += (double)a * b;
            }
            float *c = C + (size_t)i * ldc + j;
            /* beta = 0 must not read C: it may hold NaN (BLAS semantics) */
            *c = (float)(alpha * s + (beta != 0.0f ? (double)beta * *c : 0.0));
        }
}
