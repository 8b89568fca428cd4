/* cblas.h (stand-in): the part of the CBLAS interface the CPU backend uses, for building the GPU tests on a
 * machine without OpenBLAS (scripts/gpu_check.sh's direct build on a GPU machine without Debian's -dev
 * packages). Used only there; normal builds use the system's OpenBLAS. */
#ifndef TL_CBLAS_STANDIN_H
#define TL_CBLAS_STANDIN_H

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                 float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

#endif
