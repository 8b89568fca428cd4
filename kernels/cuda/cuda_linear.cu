/* cuda_linear: the frozen dense products of the CUDA backend on cuBLAS (linear forward, linear input gradient)
 * and the bf16 gemm wrapper they share with cuda_ce.cu (the fused LM head + cross-entropy).
 *
 * cuBLAS is column-major; a row-major [r, c] matrix is the column-major [c, r] matrix with leading dimension c.
 * So y = x W^T (row-major) is y^T = W x^T in column-major terms: gemm(T, N) with W as A and x as B. All products
 * take bf16 inputs and accumulate in fp32 (CUBLAS_COMPUTE_32F); results are bf16, or fp32 for the logits. */
#include "kernels/cuda/cuda_common.cuh"

static const float k_one = 1.0f, k_zero = 0.0f;

int tl_cuda_gemm(tl_cuda_ctx *c, const char *op, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 const void *A, int lda, const void *B, int ldb, float beta, void *C, cudaDataType_t ctype, int ldc) {
    cublasStatus_t s = cublasGemmEx(c->blas, ta, tb, m, n, k, &k_one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                                    beta != 0.0f ? &k_one : &k_zero, C, ctype, ldc, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    return tl_cuda_blas_ok(c, s, "%s (cublasGemmEx m=%d n=%d k=%d)", op, m, n, k);
}

/* y[i, :] = bias (+ y[i, :] when accumulating), so that one gemm with beta = 1 finishes y */
static __global__ void bias_rows_kernel(tl_bf16 *y, const tl_bf16 *bias, int n, int out, int accumulate) {
    size_t total = (size_t)n * out, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
        float b = tl_ldf(bias + t % out);
        tl_stf(y + t, accumulate ? tl_ldf(y + t) + b : b);
    }
}

void tl_cuda_linear_fwd(tl_backend *be, tl_act *y, const tl_act *x, const tl_act *W, const tl_act *bias, int n,
                        int in, int out, int accumulate) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0 || out <= 0) return;
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias) {
        bias_rows_kernel<<<tl_cuda_blocks((size_t)n * out, 256, 65535), 256, 0, c->stream>>>(
            (tl_bf16 *)y, (const tl_bf16 *)bias, n, out, accumulate);
        if (!tl_cuda_ok(c, cudaGetLastError(), "linear_fwd (bias, n=%d, out=%d)", n, out)) return;
        beta = 1.0f;
    }
    if (in <= 0) { /* an empty product: y keeps beta y (+ bias) */
        if (beta == 0.0f)
            tl_cuda_ok(c, cudaMemsetAsync(y, 0, (size_t)n * out * sizeof(tl_bf16), c->stream),
                       "linear_fwd (n=%d, in=0, out=%d)", n, out);
        return;
    }
    tl_cuda_gemm(c, "linear_fwd", CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, W, in, x, in, beta, y, CUDA_R_16BF, out);
}

void tl_cuda_linear_bwd_x(tl_backend *be, tl_act *dx, const tl_act *dy, const tl_act *W, int n, int in, int out,
                          int accumulate) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0 || in <= 0) return;
    if (out <= 0) {
        if (!accumulate)
            tl_cuda_ok(c, cudaMemsetAsync(dx, 0, (size_t)n * in * sizeof(tl_bf16), c->stream),
                       "linear_bwd_x (n=%d, in=%d, out=0)", n, in);
        return;
    }
    /* dx^T [in, n] = W^T [in, out] dy^T [out, n]: W row-major [out, in] is W^T column-major with ld = in */
    tl_cuda_gemm(c, "linear_bwd_x", CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, W, in, dy, out, accumulate ? 1.0f : 0.0f,
                 dx, CUDA_R_16BF, in);
}
