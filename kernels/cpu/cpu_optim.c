/* cpu_optim: per-adapter gradient norms and AdamW over the adapter pool, CPU backend.
 *
 * Each slot is a contiguous block of P floats at slot * slot_stride. The squared norm is summed in double
 * over a fixed partition of the block (independent of the thread count), then the partial sums are added in
 * order, so the result is bitwise repeatable on any machine with this backend. */
#include "kernels/tl_math.h"
#include "kernels/cpu/cpu_internal.h"

#define TL_SQNORM_PARTS 64

void tl_cpu_grad_sqnorm(tl_backend *be, float *out_host, const float *g, size_t slot_stride, size_t P,
                        const int32_t *slots, int nslots) {
    int nthr = tl_cpu(be)->threads;
    for (int s = 0; s < nslots; s++) {
        const float *gs = g + (size_t)slots[s] * slot_stride;
        double part[TL_SQNORM_PARTS];
        size_t per = (P + TL_SQNORM_PARTS - 1) / TL_SQNORM_PARTS;
#pragma omp parallel for num_threads(nthr) if (P > 65536)
        for (int b = 0; b < TL_SQNORM_PARTS; b++) {
            size_t lo = (size_t)b * per, hi = lo + per < P ? lo + per : P;
            double acc = 0.0;
#pragma omp simd reduction(+ : acc)
            for (size_t i = lo; i < hi; i++) acc += (double)gs[i] * gs[i];
            part[b] = acc;
        }
        double total = 0.0;
        for (int b = 0; b < TL_SQNORM_PARTS; b++) total += part[b];
        out_host[s] = (float)total;
    }
}

void tl_cpu_adamw(tl_backend *be, float *p, float *m, float *v, const float *g, size_t slot_stride, size_t P,
                  const tl_adam_slot *hs, int nslots, double b1, double b2, float eps, float wd) {
    int nthr = tl_cpu(be)->threads;
    const float b1f = (float)b1, b2f = (float)b2, omb1 = (float)(1.0 - b1), omb2 = (float)(1.0 - b2);
    for (int s = 0; s < nslots; s++) {
        tl_adam_slot a = hs[s];
        size_t off = (size_t)a.slot * slot_stride;
        float *ps = p + off, *ms = m + off, *vs = v + off;
        const float *gs = g + off;
#pragma omp parallel for simd num_threads(nthr) if (P > 16384)
        for (size_t i = 0; i < P; i++)
            tl_adamw_update(&ps[i], &ms[i], &vs[i], gs[i] * a.gscale, a.lr, b1f, b2f, omb1, omb2, eps, wd, a.bc1,
                            a.bc2);
    }
}
