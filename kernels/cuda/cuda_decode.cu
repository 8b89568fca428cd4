/* cuda_decode: the KV-cache ops of incremental decoding (tailor generate), CUDA backend (bf16 caches).
 *
 * kv_store: one block per row copies its key and value into the caches. attn_kv: one warp per (row, query
 * head), online softmax over the row's cache prefix one key at a time; each lane holds hd/32 (rounded up) output
 * dimensions in registers, so head_dim is limited to 32 * KPL. Decode batches are small and contexts short in
 * this use, so the sequential key loop is acceptable; fp32 accumulation throughout. */
#include "kernels/cuda/cuda_common.cuh"

enum { KPL = 16, WARPS = 4 }; /* head_dim <= 512 */

void tl_cuda_kv_store(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v,
                      const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hkv, int hd);
void tl_cuda_attn_kv(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                     const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd);

static __global__ void kv_store_kernel(tl_bf16 *kc, tl_bf16 *vc, const tl_bf16 *k, const tl_bf16 *v,
                                       const int32_t *seq, const int32_t *pos, int max_ctx, int kvd, int *bad) {
    int i = blockIdx.x;
    if (seq[i] < 0 || pos[i] < 0 || pos[i] >= max_ctx) { /* the whole block skips the row */
        if (threadIdx.x == 0) atomicMax(bad, i + 1);
        return;
    }
    size_t at = ((size_t)seq[i] * max_ctx + (size_t)pos[i]) * kvd;
    for (int e = threadIdx.x; e < kvd; e += blockDim.x) {
        kc[at + e] = k[(size_t)i * kvd + e];
        vc[at + e] = v[(size_t)i * kvd + e];
    }
}

void tl_cuda_kv_store(tl_backend *be, tl_act *kc, tl_act *vc, const tl_act *k, const tl_act *v, const int32_t *seq,
                      const int32_t *pos, int n, int max_ctx, int Hkv, int hd) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0) return;
    c->bad_kv_max_ctx = max_ctx;
    kv_store_kernel<<<n, 128, 0, c->stream>>>((tl_bf16 *)kc, (tl_bf16 *)vc, (const tl_bf16 *)k, (const tl_bf16 *)v,
                                              seq, pos, max_ctx, Hkv * hd, c->bad_kv);
    tl_cuda_ok(c, cudaGetLastError(), "kv_store (n=%d, max_ctx=%d, kvd=%d)", n, max_ctx, Hkv * hd);
}

static __global__ void attn_kv_kernel(tl_bf16 *out, const tl_bf16 *q, const tl_bf16 *kc, const tl_bf16 *vc,
                                      const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv,
                                      int hd, float scale, int *bad) {
    int task = blockIdx.x * WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (task >= n * Hq) return; /* whole warps exit together */
    int i = task / Hq, h = task % Hq, kvh = h / (Hq / Hkv), len = pos[i] + 1;
    if (seq[i] < 0 || pos[i] < 0 || pos[i] >= max_ctx) { /* the whole warp skips the task; out is not written */
        if (lane == 0) atomicMax(bad, i + 1);
        return;
    }
    size_t kvd = (size_t)Hkv * hd, qd = (size_t)Hq * hd;
    const tl_bf16 *qi = q + (size_t)i * qd + (size_t)h * hd;
    const tl_bf16 *kb = kc + (size_t)seq[i] * max_ctx * kvd + (size_t)kvh * hd;
    const tl_bf16 *vb = vc + (size_t)seq[i] * max_ctx * kvd + (size_t)kvh * hd;
    float qv[KPL], acc[KPL];
#pragma unroll
    for (int r = 0; r < KPL; r++) {
        int e = lane + 32 * r;
        qv[r] = e < hd ? tl_ldf(qi + e) : 0.0f;
        acc[r] = 0.0f;
    }
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < len; j++) {
        const tl_bf16 *kj = kb + (size_t)j * kvd, *vj = vb + (size_t)j * kvd;
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < KPL; r++) {
            int e = lane + 32 * r;
            if (e < hd) s += qv[r] * tl_ldf(kj + e);
        }
        s = tl_warp_sum(s) * scale;
        float nm = fmaxf(mx, s), corr = expf(mx - nm), p = expf(s - nm);
        sum = sum * corr + p;
#pragma unroll
        for (int r = 0; r < KPL; r++) {
            int e = lane + 32 * r;
            if (e < hd) acc[r] = acc[r] * corr + p * tl_ldf(vj + e);
        }
        mx = nm;
    }
    tl_bf16 *oi = out + (size_t)i * qd + (size_t)h * hd;
    float inv = 1.0f / sum;
#pragma unroll
    for (int r = 0; r < KPL; r++) {
        int e = lane + 32 * r;
        if (e < hd) tl_stf(oi + e, acc[r] * inv);
    }
}

void tl_cuda_attn_kv(tl_backend *be, tl_act *out, const tl_act *q, const tl_act *kc, const tl_act *vc,
                     const int32_t *seq, const int32_t *pos, int n, int max_ctx, int Hq, int Hkv, int hd) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n <= 0) return;
    if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0 || hd <= 0 || hd > 32 * KPL) {
        tl_cuda_fail(c, "unsupported shape (expected Hq a multiple of Hkv, head_dim <= 512)",
                     "attn_kv (Hq=%d, Hkv=%d, hd=%d)", Hq, Hkv, hd);
        return;
    }
    long tasks = (long)n * Hq;
    unsigned blocks = (unsigned)((tasks + WARPS - 1) / WARPS);
    c->bad_kv_max_ctx = max_ctx;
    attn_kv_kernel<<<blocks, 32 * WARPS, 0, c->stream>>>((tl_bf16 *)out, (const tl_bf16 *)q, (const tl_bf16 *)kc,
                                                          (const tl_bf16 *)vc, seq, pos, n, max_ctx, Hq, Hkv, hd,
                                                          1.0f / sqrtf((float)hd), c->bad_kv);
    tl_cuda_ok(c, cudaGetLastError(), "attn_kv (n=%d, Hq=%d, Hkv=%d, hd=%d)", n, Hq, Hkv, hd);
}
