/* cpu_linear: the frozen dense layers on the CPU backend, y = x W^T (+ bias) and dx = dy W, with OpenBLAS
 * (split over the backend's team by tl_cpu_gemm).
 * Weights are HF [out, in]; there is no dW because base weights never train. */
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

void tl_cpu_linear_fwd(tl_backend *be, tl_act *y_, const tl_act *x_, const tl_act *W_, const tl_act *bias_, int n,
                       int in, int out, int accumulate) {
    float *y = y_;
    const float *x = x_, *W = W_, *bias = bias_;
    if (n <= 0 || out <= 0) return;
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias) {
        /* seed y with the bias so one sgemm with beta = 1 finishes the job */
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)n * out > 65536)
        for (int i = 0; i < n; i++) {
            float *yi = y + (size_t)i * out;
            if (accumulate)
                for (int j = 0; j < out; j++) yi[j] += bias[j];
            else
                memcpy(yi, bias, (size_t)out * sizeof(float));
        }
        beta = 1.0f;
    }
    tl_cpu_gemm(be, 0, 1, n, out, in, 1.0f, x, in, W, in, beta, y, out);
}

void tl_cpu_linear_bwd_x(tl_backend *be, tl_act *dx, const tl_act *dy, const tl_act *W, int n, int in, int out,
                         int accumulate) {
    tl_cpu_gemm(be, 0, 0, n, in, out, 1.0f, dy, out, W, in, accumulate ? 1.0f : 0.0f, dx, in);
}
