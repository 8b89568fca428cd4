/* cuda_ce: the fused, chunked LM head + cross-entropy of the CUDA backend (the CPU version is cpu/cpu_ce.c).
 *
 * Per chunk of rows: logits [rows, V] fp32 into work (cuBLAS); one block per row computes max, log-sum-exp and
 * logp and, when dx is wanted, turns its logits row into dlogits = dlogp (onehot - p) in bf16, written in place
 * over the first half of the row's own fp32 storage (bf16 row i starts at bf16 element 2 i V); then
 * dx[rows] = dlogits W by cuBLAS with ld = 2 V. The in-place conversion is safe inside one block: the bf16 values
 * of elements [j, j + B) occupy the bytes of fp32 elements [j/2, (j + B)/2), all read in this step or earlier,
 * and a barrier separates each step's reads from its writes. */
#include "kernels/cuda/cuda_common.cuh"

#define CE_THREADS 512

static __global__ void ce_rows_kernel(float *logp, float *work, const int32_t *targets, const float *dlogp, int row0,
                                      int V, int want_dx, int *bad_target) {
    __shared__ float sh[33];
    int i = row0 + blockIdx.x;
    float *lg = work + (size_t)blockIdx.x * V;
    tl_bf16 *dl = (tl_bf16 *)lg;
    int t = targets[i];
    if (t < 0 || t >= V) { /* not trained: logp 0 and a zero gradient row; a target out of range is reported */
        if (threadIdx.x == 0) {
            logp[i] = 0.0f;
            if (t < -1 || t >= V) atomicMax(bad_target, i + 1);
        }
        if (want_dx)
            for (int j = threadIdx.x; j < V; j += blockDim.x) dl[j] = __float2bfloat16(0.0f);
        return;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, lg[j]);
    mx = tl_block_max(mx, sh);
    float se = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) se += expf(lg[j] - mx);
    float lse = mx + logf(tl_block_sum(se, sh)); /* the reductions end with a barrier: all reads are done */
    if (threadIdx.x == 0) logp[i] = lg[t] - lse;
    if (!want_dx) return;
    float g = dlogp[i];
    for (int j0 = 0; j0 < V; j0 += blockDim.x) {
        int j = j0 + threadIdx.x;
        float v = j < V ? lg[j] : 0.0f;
        __syncthreads();
        if (j < V) dl[j] = __float2bfloat16(tl_ce_dlogit(g, expf(v - lse), j == t));
    }
}

void tl_cuda_ce_fwd_bwd(tl_backend *be, float *logp, tl_act *dx, const tl_act *x, const tl_act *W,
                        const int32_t *targets, const float *dlogp, int n, int d, int V, float *work, size_t work_len,
                        int chunk) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0) return;
    if (chunk <= 0 || V <= 0 || d <= 0) {
        tl_cuda_fail(c, "chunk, V and d must be positive", "ce_fwd_bwd (n=%d, d=%d, V=%d, chunk=%d)", n, d, V, chunk);
        return;
    }
    if (work_len / (size_t)V < (size_t)chunk) {
        tl_cuda_fail(c, "work is smaller than chunk * V floats", "ce_fwd_bwd (work_len=%zu, chunk=%d, V=%d)", work_len,
                     chunk, V);
        return;
    }
    if ((size_t)2 * V > (size_t)INT32_MAX) {
        tl_cuda_fail(c, "2 V exceeds the int range of cuBLAS leading dimensions", "ce_fwd_bwd (V=%d)", V);
        return;
    }
    const tl_bf16 *xb = (const tl_bf16 *)x;
    tl_bf16 *dxb = (tl_bf16 *)dx;
    c->bad_target_V = V;
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int rows = n - r0 < chunk ? n - r0 : chunk;
        /* logits^T [V, rows] = W [V, d] x^T [d, rows] */
        if (!tl_cuda_gemm(c, "ce_fwd_bwd logits", CUBLAS_OP_T, CUBLAS_OP_N, V, rows, d, W, d, xb + (size_t)r0 * d,
                          d, 0.0f, work, CUDA_R_32F, V))
            return;
        ce_rows_kernel<<<rows, CE_THREADS, 0, c->stream>>>(logp, work, targets, dlogp, r0, V, dx != NULL,
                                                           c->bad_target);
        if (!tl_cuda_ok(c, cudaGetLastError(), "ce_fwd_bwd (rows %d..%d of %d, V=%d)", r0, r0 + rows, n, V)) return;
        if (!dx) continue;
        /* dx^T [d, rows] = W^T [d, V] dlogits^T [V, rows]; dlogits rows are 2 V bf16 apart */
        if (!tl_cuda_gemm(c, "ce_fwd_bwd dx", CUBLAS_OP_N, CUBLAS_OP_N, d, rows, V, W, d, work, 2 * V, 0.0f,
                          dxb + (size_t)r0 * d, CUDA_R_16BF, d))
            return;
    }
}
