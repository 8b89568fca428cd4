/* cuda_optim: the per-adapter optimizer ops of the CUDA backend: squared gradient norms and AdamW over a list
 * of adapter slots, each one launch for all listed slots.
 *
 * Slot arguments arrive in host memory; they are copied into the small buffer allocated at create time (in
 * chunks of TL_CUDA_SLOTBUF_ENTRIES slots), so nothing is allocated here. The norm is a two-stage reduction with
 * a partition that depends only on P (each block sums a fixed range in double, then one block per slot adds the
 * block results in order), so it is bit-identical from run to run and independent of which other slots are
 * listed. */
#include "kernels/cuda/cuda_common.cuh"

#define OPT_THREADS 256
#define NORM_MAX_PARTS 64
#define NORM_PART_MIN 8192 /* elements per part, at least */

static int norm_parts(size_t P) {
    size_t parts = (P + NORM_PART_MIN - 1) / NORM_PART_MIN;
    return parts < 1 ? 1 : parts > NORM_MAX_PARTS ? NORM_MAX_PARTS : (int)parts;
}

/* partial[y * parts + x] = sum of squares of part x of slot slots[y]; grid (parts, nslots) */
static __global__ void sqnorm_part_kernel(double *partial, const float *g, size_t stride, size_t P,
                                          const int32_t *slots, int parts) {
    __shared__ double sh[33];
    const float *gs = g + (size_t)slots[blockIdx.y] * stride;
    size_t per = (P + parts - 1) / parts, a = (size_t)blockIdx.x * per, b = a + per < P ? a + per : P;
    double s = 0.0;
    for (size_t i = a + threadIdx.x; i < b; i += blockDim.x) {
        double v = gs[i];
        s += v * v;
    }
    s = tl_block_sumd(s, sh);
    if (threadIdx.x == 0) partial[(size_t)blockIdx.y * parts + blockIdx.x] = s;
}

/* res[y] = sum over x of partial[y * parts + x], in order; one thread per slot */
static __global__ void sqnorm_final_kernel(float *res, const double *partial, int parts, int nslots) {
    int y = blockIdx.x * blockDim.x + threadIdx.x;
    if (y >= nslots) return;
    double s = 0.0;
    for (int x = 0; x < parts; x++) s += partial[(size_t)y * parts + x];
    res[y] = (float)s;
}

void tl_cuda_grad_sqnorm(tl_backend *be, float *out_host, const float *g, size_t slot_stride, size_t P,
                         const int32_t *slots, int nslots) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || nslots <= 0) return;
    if (P == 0) {
        for (int i = 0; i < nslots; i++) out_host[i] = 0.0f;
        return;
    }
    int parts = norm_parts(P);
    int32_t *dslots = (int32_t *)c->slotbuf;
    /* scratch: partials (doubles) first, then the fp32 results of the chunk */
    double *partial = (double *)c->scratch;
    float *res = (float *)(partial + (size_t)TL_CUDA_SLOTBUF_ENTRIES * NORM_MAX_PARTS);
    for (int i0 = 0; i0 < nslots; i0 += TL_CUDA_SLOTBUF_ENTRIES) {
        int m = nslots - i0 < TL_CUDA_SLOTBUF_ENTRIES ? nslots - i0 : TL_CUDA_SLOTBUF_ENTRIES;
        if (!tl_cuda_ok(c, cudaMemcpyAsync(dslots, slots + i0, (size_t)m * sizeof(int32_t), cudaMemcpyHostToDevice,
                                           c->stream),
                        "grad_sqnorm (slots %d..%d)", i0, i0 + m))
            return;
        sqnorm_part_kernel<<<dim3((unsigned)parts, (unsigned)m), OPT_THREADS, 0, c->stream>>>(partial, g, slot_stride,
                                                                                             P, dslots, parts);
        if (!tl_cuda_ok(c, cudaGetLastError(), "grad_sqnorm (P=%zu, nslots=%d, parts=%d)", P, m, parts)) return;
        sqnorm_final_kernel<<<(unsigned)((m + 127) / 128), 128, 0, c->stream>>>(res, partial, parts, m);
        if (!tl_cuda_ok(c, cudaGetLastError(), "grad_sqnorm (final, nslots=%d)", m)) return;
        if (!tl_cuda_ok(c, cudaMemcpyAsync(out_host + i0, res, (size_t)m * sizeof(float), cudaMemcpyDeviceToHost,
                                           c->stream),
                        "grad_sqnorm (result, nslots=%d)", m))
            return;
        /* the next chunk overwrites dslots and res: the host copy must be complete, and the result is due now */
        if (!tl_cuda_ok(c, cudaStreamSynchronize(c->stream), "grad_sqnorm (P=%zu, nslots=%d)", P, m)) return;
    }
}

/* AdamW on element range of every listed slot; grid (blocks over P, nslots) */
static __global__ void adamw_kernel(float *p, float *m, float *v, const float *g, size_t stride, size_t P,
                                    const tl_adam_slot *hs, float b1, float b2, float omb1, float omb2, float eps,
                                    float wd) {
    tl_adam_slot s = hs[blockIdx.y];
    size_t off = (size_t)s.slot * stride, step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < P; i += step) {
        size_t j = off + i;
        float pj = p[j], mj = m[j], vj = v[j];
        tl_adamw_update(&pj, &mj, &vj, g[j] * s.gscale, s.lr, b1, b2, omb1, omb2, eps, wd, s.bc1, s.bc2);
        p[j] = pj;
        m[j] = mj;
        v[j] = vj;
    }
}

void tl_cuda_adamw(tl_backend *be, float *p, float *m, float *v, const float *g, size_t slot_stride, size_t P,
                   const tl_adam_slot *hs, int nslots, double b1, double b2, float eps, float wd) {
    tl_cuda_ctx *c = tl_cuda(be);
    const float omb1 = (float)(1.0 - b1), omb2 = (float)(1.0 - b2); /* in double: tl_adamw_update */
    if (c->failed || nslots <= 0 || P == 0) return;
    tl_adam_slot *dslots = (tl_adam_slot *)c->slotbuf;
    unsigned bx = tl_cuda_blocks(P, OPT_THREADS * 4, 1024);
    for (int i0 = 0; i0 < nslots; i0 += TL_CUDA_SLOTBUF_ENTRIES) {
        int k = nslots - i0 < TL_CUDA_SLOTBUF_ENTRIES ? nslots - i0 : TL_CUDA_SLOTBUF_ENTRIES;
        /* stream order: this copy runs after the previous chunk's kernel has read the buffer */
        if (!tl_cuda_ok(c, cudaMemcpyAsync(dslots, hs + i0, (size_t)k * sizeof(tl_adam_slot), cudaMemcpyHostToDevice,
                                           c->stream),
                        "adamw (slots %d..%d)", i0, i0 + k))
            return;
        adamw_kernel<<<dim3(bx, (unsigned)k), OPT_THREADS, 0, c->stream>>>(p, m, v, g, slot_stride, P, dslots,
                                                                           (float)b1, (float)b2, omb1, omb2, eps, wd);
        if (!tl_cuda_ok(c, cudaGetLastError(), "adamw (P=%zu, nslots=%d)", P, k)) return;
    }
}
