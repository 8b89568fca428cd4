/* cpu_backend: creation of the CPU backend (the fp32 reference): its op table, host memory, status.
 *
 * "Device" memory is host memory here, so transfers are memcpy and activations are plain fp32. */
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

void tl_cpu_fail(tl_backend *be, const char *fmt, ...) {
    tl_cpu_ctx *c = tl_cpu(be);
    if (c->failed) return;
    c->failed = 1;
    char msg[sizeof c->err.msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tl_fail(&c->err, TL_ERR_RUNTIME, "cpu backend: %s", msg);
}

static tl_status cpu_alloc(tl_backend *be, size_t bytes, void **out, tl_error *err) {
    (void)be;
    *out = NULL;
    /* aligned_alloc wants a multiple of the alignment; a zero-byte request still gets a distinct pointer */
    if (bytes > SIZE_MAX - 64)
        return tl_fail(err, TL_ERR_RUNTIME, "cpu backend: cannot allocate %zu bytes (too large)", bytes);
    size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) return tl_fail(err, TL_ERR_RUNTIME, "cpu backend: out of memory allocating %zu bytes", bytes);
    *out = p;
    return TL_OK;
}

static void cpu_free(tl_backend *be, void *p) {
    (void)be;
    free(p);
}

static void cpu_copy(tl_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_upload_act(tl_backend *be, tl_act *dst, const float *src, size_t n) {
    (void)be;
    if (n) memcpy(dst, src, n * sizeof(float));
}

static void cpu_download_act(tl_backend *be, float *dst, const tl_act *src, size_t n) {
    (void)be;
    if (n) memcpy(dst, src, n * sizeof(float));
}

/* below this many bytes one thread zeroes: a parallel region costs a few microseconds */
#define TL_ZERO_PAR_MIN ((size_t)1 << 22)

/* Large blocks (the gradients of every active adapter, 9.8 MB each at rank 8 on SmolLM2-135M, before each step)
 * are split over the team: one core's stores do not reach the memory bandwidth (625 MB for 64 adapters took
 * 0.065 s on one thread, 0.036 s on two). */
static void cpu_zero(tl_backend *be, void *p, size_t bytes) {
    int nthr = tl_cpu(be)->threads;
    if (bytes < TL_ZERO_PAR_MIN || nthr <= 1 || omp_in_parallel()) {
        if (bytes) memset(p, 0, bytes);
        return;
    }
    size_t per = (bytes / (size_t)nthr + 4095) & ~(size_t)4095; /* whole pages per thread */
#pragma omp parallel for num_threads(nthr) schedule(static, 1)
    for (int t = 0; t < nthr; t++) {
        size_t lo = (size_t)t * per, hi = lo + per < bytes ? lo + per : bytes;
        if (lo < hi) memset((char *)p + lo, 0, hi - lo);
    }
}

static tl_status cpu_status(tl_backend *be, tl_error *err) {
    tl_cpu_ctx *c = tl_cpu(be);
    if (!c->failed) return TL_OK;
    if (err) *err = c->err;
    return c->err.code;
}

static void cpu_destroy(tl_backend *be) {
    if (!be) return;
    tl_cpu_ctx *c = tl_cpu(be);
    if (c) free(c->scratch);
    free(c);
    free(be);
}

static void *cpu_stream(tl_backend *be) {
    (void)be;
    return NULL; /* ops run synchronously on the calling thread */
}

const char *tl_backend_cpu_products(void) {
    const char *why;
    return tl_cpu_mm_choice(&why) < 0 ? "TL_CPU_GEMM is not one of auto, tailor, openblas" : why;
}

tl_status tl_backend_cpu_create(int threads, tl_backend **out, tl_error *err) {
    *out = NULL;
    tl_backend *be = calloc(1, sizeof *be);
    tl_cpu_ctx *c = calloc(1, sizeof *c);
    float *scratch = aligned_alloc(64, TL_CPU_SCRATCH_FLOATS * sizeof(float));
    if (!be || !c || !scratch) {
        free(be);
        free(c);
        free(scratch);
        return tl_fail(err, TL_ERR_RUNTIME, "cpu backend: out of memory creating the backend (%zu bytes of scratch)",
                       TL_CPU_SCRATCH_FLOATS * sizeof(float));
    }
    const char *why;
    c->own_mm = tl_cpu_mm_choice(&why);
    if (c->own_mm < 0) {
        free(be);
        free(c);
        free(scratch);
        return tl_fail(err, TL_ERR_INPUT, "cpu backend: TL_CPU_GEMM=%s in the environment: expected auto, tailor or "
                       "openblas", getenv("TL_CPU_GEMM"));
    }
    c->threads = threads > 0 ? threads : omp_get_max_threads();
    if (c->threads < 1) c->threads = 1;
    /* OpenBLAS (pthread build) keeps its own pool, whose workers spin between calls and compete with the OpenMP
     * team: every product is split over the team instead (tl_cpu_gemm) and OpenBLAS runs on one thread. */
    openblas_set_num_threads(1);
    c->scratch = scratch;
    c->scratch_n = TL_CPU_SCRATCH_FLOATS;

    be->name = "cpu";
    be->act_size = sizeof(float);
    be->ctx = c;
    be->host_memory = 1;
    be->device = -1;
    be->stream = cpu_stream;
    be->mem_stats = NULL; /* host memory is the process's: no count kept */
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->upload_act = cpu_upload_act;
    be->download_act = cpu_download_act;
    be->zero = cpu_zero;
    be->status = cpu_status;
    be->destroy = cpu_destroy;

    be->embed_fwd = tl_cpu_embed_fwd;
    be->add = tl_cpu_add;
    be->rmsnorm_fwd = tl_cpu_rmsnorm_fwd;
    be->rmsnorm_bwd = tl_cpu_rmsnorm_bwd;
    be->rope_fwd = tl_cpu_rope_fwd;
    be->rope_bwd = tl_cpu_rope_bwd;
    be->swiglu_fwd = tl_cpu_swiglu_fwd;
    be->swiglu_bwd = tl_cpu_swiglu_bwd;
    be->linear_fwd = tl_cpu_linear_fwd;
    be->linear_bwd_x = tl_cpu_linear_bwd_x;
    be->lora_fwd = tl_cpu_lora_fwd;
    be->lora_bwd = tl_cpu_lora_bwd;
    be->attn_fwd = tl_cpu_attn_fwd;
    be->attn_bwd = tl_cpu_attn_bwd;
    be->ce_fwd_bwd = tl_cpu_ce_fwd_bwd;
    be->grad_sqnorm = tl_cpu_grad_sqnorm;
    be->adamw = tl_cpu_adamw;
    be->kv_store = tl_cpu_kv_store;
    be->attn_kv = tl_cpu_attn_kv;
    *out = be;
    return TL_OK;
}
