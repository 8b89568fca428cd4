/* cuda_backend: creation of the CUDA backend: device selection, its stream and cuBLAS handle, the buffers ops
 * reuse, device memory with byte accounting, transfers, the sticky error and the op table.
 *
 * All work goes to one non-blocking stream in issue order, so ops are ordered without host waits; only
 * download, download_act, grad_sqnorm (its result goes to host) and status wait for the stream. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* ---- sticky errors ---- */

static void vfail(tl_cuda_ctx *c, const char *reason, const char *fmt, va_list ap) {
    if (c->failed) return;
    char what[512];
    vsnprintf(what, sizeof what, fmt, ap);
    c->failed = 1;
    tl_fail(&c->err, TL_ERR_RUNTIME, "cuda: %s: %s", what, reason);
}

void tl_cuda_fail(tl_cuda_ctx *c, const char *reason, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(c, reason, fmt, ap);
    va_end(ap);
}

int tl_cuda_ok(tl_cuda_ctx *c, cudaError_t e, const char *fmt, ...) {
    if (e == cudaSuccess) return 1;
    va_list ap;
    va_start(ap, fmt);
    vfail(c, cudaGetErrorString(e), fmt, ap);
    va_end(ap);
    return 0;
}

int tl_cuda_blas_ok(tl_cuda_ctx *c, cublasStatus_t s, const char *fmt, ...) {
    if (s == CUBLAS_STATUS_SUCCESS) return 1;
    va_list ap;
    va_start(ap, fmt);
    vfail(c, cublasGetStatusString(s), fmt, ap);
    va_end(ap);
    return 0;
}

/* ---- device count ---- */

extern "C" int tl_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver / no device: leave no error behind for later calls */
        return 0;
    }
    return n > 0 ? n : 0;
}

/* Peak and current device bytes held by this backend (its own buffers included). */
static void cuda_mem_stats(tl_backend *be, size_t *now, size_t *peak) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (now) *now = c->bytes_now;
    if (peak) *peak = c->bytes_peak;
}

/* the backend's cudaStream_t (every op runs on it, in order), for NCCL collectives on its buffers */
static void *cuda_stream(tl_backend *be) { return (void *)tl_cuda(be)->stream; }

/* ---- memory ---- */

static void count_alloc(tl_cuda_ctx *c, size_t bytes) {
    c->bytes_now += bytes;
    if (c->bytes_now > c->bytes_peak) c->bytes_peak = c->bytes_now;
}

/* cudaMalloc with accounting, for the backend's own buffers */
static cudaError_t own_alloc(tl_cuda_ctx *c, void **p, size_t bytes) {
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) count_alloc(c, bytes);
    else *p = NULL;
    return e;
}

static void own_free(tl_cuda_ctx *c, void *p, size_t bytes) {
    if (!p) return;
    (void)cudaFree(p); /* teardown: nothing useful to do with a failure here */
    c->bytes_now -= bytes;
}

static tl_status cuda_alloc(tl_backend *be, size_t bytes, void **out, tl_error *err) {
    tl_cuda_ctx *c = tl_cuda(be);
    *out = NULL;
    if (c->failed) {
        if (err) *err = c->err;
        return c->err.code;
    }
    if (c->n_recs == c->cap_recs) {
        size_t cap = c->cap_recs ? 2 * c->cap_recs : 256;
        tl_cuda_alloc_rec *r = (tl_cuda_alloc_rec *)realloc(c->recs, cap * sizeof *r);
        if (!r) return tl_fail(err, TL_ERR_RUNTIME, "cuda: alloc: out of host memory for the allocation table");
        c->recs = r;
        c->cap_recs = cap;
    }
    void *p = NULL;
    /* a zero-byte request still gets a distinct, valid pointer, as on the CPU backend */
    size_t real = bytes ? bytes : 256;
    cudaError_t e = cudaMalloc(&p, real);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky for the context; report it here only */
        return tl_fail(err, TL_ERR_RUNTIME, "cuda: alloc (%zu bytes, %zu already held): %s", bytes, c->bytes_now,
                       cudaGetErrorString(e));
    }
    c->recs[c->n_recs].p = p;
    c->recs[c->n_recs].bytes = real;
    c->n_recs++;
    count_alloc(c, real);
    *out = p;
    return TL_OK;
}

static void cuda_free(tl_backend *be, void *p) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (!p) return;
    /* search from the end: buffers are mostly freed in reverse order of allocation */
    for (size_t i = c->n_recs; i-- > 0;) {
        if (c->recs[i].p != p) continue;
        size_t bytes = c->recs[i].bytes;
        c->recs[i] = c->recs[--c->n_recs];
        /* cudaFree synchronizes the device, so queued work that reads p finishes first */
        if (tl_cuda_ok(c, cudaFree(p), "free (%zu bytes)", bytes)) c->bytes_now -= bytes;
        return;
    }
    tl_cuda_fail(c, "pointer was not allocated by this backend", "free (%p)", p);
}

/* ---- transfers ---- */

static void cuda_upload(tl_backend *be, void *dst, const void *src, size_t bytes) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || bytes == 0) return;
    /* synchronous: the caller may reuse or free its host buffer as soon as this returns */
    if (!tl_cuda_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "upload (%zu bytes)",
                    bytes))
        return;
    tl_cuda_ok(c, cudaStreamSynchronize(c->stream), "upload (%zu bytes)", bytes);
}

static void cuda_download(tl_backend *be, void *dst, const void *src, size_t bytes) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || bytes == 0) return;
    if (!tl_cuda_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download (%zu bytes)",
                    bytes))
        return;
    tl_cuda_ok(c, cudaStreamSynchronize(c->stream), "download (%zu bytes)", bytes);
}

/* fp32 host -> bf16 device through the staging buffer, chunk by chunk; stream order keeps a chunk's copy from
 * overwriting the staging buffer before the previous chunk's conversion has read it. */
static void cuda_upload_act(tl_backend *be, tl_act *dst, const float *src, size_t n) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n == 0) return;
    tl_bf16 *d = (tl_bf16 *)dst;
    for (size_t off = 0; off < n; off += TL_CUDA_STAGING_FLOATS) {
        size_t m = n - off < TL_CUDA_STAGING_FLOATS ? n - off : TL_CUDA_STAGING_FLOATS;
        if (!tl_cuda_ok(c, cudaMemcpyAsync(c->staging, src + off, m * sizeof(float), cudaMemcpyHostToDevice,
                                           c->stream),
                        "upload_act (n=%zu, chunk at %zu)", n, off))
            return;
        tl_cuda_f32_to_bf16(c, d + off, c->staging, m, "upload_act");
        if (c->failed) return;
    }
    tl_cuda_ok(c, cudaStreamSynchronize(c->stream), "upload_act (n=%zu)", n);
}

static void cuda_download_act(tl_backend *be, float *dst, const tl_act *src, size_t n) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || n == 0) return;
    const tl_bf16 *s = (const tl_bf16 *)src;
    for (size_t off = 0; off < n; off += TL_CUDA_STAGING_FLOATS) {
        size_t m = n - off < TL_CUDA_STAGING_FLOATS ? n - off : TL_CUDA_STAGING_FLOATS;
        tl_cuda_bf16_to_f32(c, c->staging, s + off, m, "download_act");
        if (c->failed) return;
        if (!tl_cuda_ok(c, cudaMemcpyAsync(dst + off, c->staging, m * sizeof(float), cudaMemcpyDeviceToHost,
                                           c->stream),
                        "download_act (n=%zu, chunk at %zu)", n, off))
            return;
    }
    tl_cuda_ok(c, cudaStreamSynchronize(c->stream), "download_act (n=%zu)", n);
}

static void cuda_zero(tl_backend *be, void *p, size_t bytes) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || bytes == 0) return;
    tl_cuda_ok(c, cudaMemsetAsync(p, 0, bytes, c->stream), "zero (%zu bytes)", bytes);
}

static tl_status cuda_status(tl_backend *be, tl_error *err) {
    tl_cuda_ctx *c = tl_cuda(be);
    if (!c->failed) tl_cuda_ok(c, cudaStreamSynchronize(c->stream), "status (asynchronous failure of an earlier op)");
    if (!c->failed) { /* bad inputs detected inside kernels */
        int bad = 0;
        if (tl_cuda_ok(c, cudaMemcpy(&bad, c->bad_target, sizeof bad, cudaMemcpyDeviceToHost), "status (flags)") &&
            bad > 0)
            tl_cuda_fail(c, "target outside [-1, V) (the row was treated as untrained)",
                         "ce_fwd_bwd (targets[%d], V=%d)", bad - 1, c->bad_target_V);
    }
    if (!c->failed) {
        int bad = 0;
        if (tl_cuda_ok(c, cudaMemcpy(&bad, c->bad_kv, sizeof bad, cudaMemcpyDeviceToHost), "status (flags)") &&
            bad > 0)
            tl_cuda_fail(c, "cache sequence < 0 or position outside [0, max_ctx) (the row was skipped)",
                         "kv_store / attn_kv (row %d, max_ctx=%d)", bad - 1, c->bad_kv_max_ctx);
    }
    if (!c->failed) return TL_OK;
    if (err) *err = c->err;
    return c->err.code;
}

/* ---- create / destroy ---- */

static void release(tl_cuda_ctx *c) {
    if (c->stream) (void)cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < c->n_recs; i++) own_free(c, c->recs[i].p, c->recs[i].bytes);
    free(c->recs);
    own_free(c, c->slotbuf, TL_CUDA_SLOTBUF_ENTRIES * sizeof(tl_adam_slot));
    own_free(c, c->bad_target, sizeof(int));
    own_free(c, c->bad_kv, sizeof(int));
    own_free(c, c->scratch, TL_CUDA_SCRATCH_FLOATS * sizeof(float));
    own_free(c, c->staging, TL_CUDA_STAGING_FLOATS * sizeof(float));
    own_free(c, c->blas_ws, TL_CUDA_BLAS_WS_BYTES);
    if (c->blas) (void)cublasDestroy(c->blas);
    if (c->stream) (void)cudaStreamDestroy(c->stream);
}

static void cuda_destroy(tl_backend *be) {
    if (!be) return;
    tl_cuda_ctx *c = tl_cuda(be);
    if (c) {
        release(c);
        free(c);
    }
    free(be);
}

/* Everything that can fail while creating; on failure c->err holds the reason. */
static int setup(tl_cuda_ctx *c, int device) {
    if (!tl_cuda_ok(c, cudaSetDevice(device), "create (device %d)", device)) return 0;
    if (!tl_cuda_ok(c, cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                    "create (device %d shared memory limit)", device))
        return 0;
    if (!tl_cuda_ok(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "create (stream)")) return 0;
    if (!tl_cuda_blas_ok(c, cublasCreate(&c->blas), "create (cuBLAS handle)")) return 0;
    if (!tl_cuda_blas_ok(c, cublasSetStream(c->blas, c->stream), "create (cuBLAS stream)")) return 0;
    /* a workspace of our own, so cuBLAS never allocates inside the step loop */
    if (!tl_cuda_ok(c, own_alloc(c, &c->blas_ws, TL_CUDA_BLAS_WS_BYTES), "create (cuBLAS workspace, %zu bytes)",
                    TL_CUDA_BLAS_WS_BYTES))
        return 0;
    if (!tl_cuda_blas_ok(c, cublasSetWorkspace(c->blas, c->blas_ws, TL_CUDA_BLAS_WS_BYTES), "create (cuBLAS workspace)"))
        return 0;
    if (!tl_cuda_ok(c, own_alloc(c, (void **)&c->staging, TL_CUDA_STAGING_FLOATS * sizeof(float)),
                    "create (staging buffer)"))
        return 0;
    if (!tl_cuda_ok(c, own_alloc(c, (void **)&c->scratch, TL_CUDA_SCRATCH_FLOATS * sizeof(float)),
                    "create (scratch buffer)"))
        return 0;
    if (!tl_cuda_ok(c, own_alloc(c, &c->slotbuf, TL_CUDA_SLOTBUF_ENTRIES * sizeof(tl_adam_slot)),
                    "create (slot buffer)"))
        return 0;
    if (!tl_cuda_ok(c, own_alloc(c, (void **)&c->bad_target, sizeof(int)), "create (flag)")) return 0;
    if (!tl_cuda_ok(c, cudaMemset(c->bad_target, 0, sizeof(int)), "create (flag)")) return 0;
    if (!tl_cuda_ok(c, own_alloc(c, (void **)&c->bad_kv, sizeof(int)), "create (flag)")) return 0;
    if (!tl_cuda_ok(c, cudaMemset(c->bad_kv, 0, sizeof(int)), "create (flag)")) return 0;
    return tl_cuda_attn_setup(c);
}

extern "C" tl_status tl_backend_cuda_create(int device, tl_backend **out, tl_error *err) {
    *out = NULL;
    int count = tl_cuda_device_count();
    if (device < 0 || device >= count)
        return tl_fail(err, TL_ERR_INPUT, "cuda: device %d requested but %d CUDA device(s) present", device, count);
    tl_backend *be = (tl_backend *)calloc(1, sizeof *be);
    tl_cuda_ctx *c = (tl_cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return tl_fail(err, TL_ERR_RUNTIME, "cuda: out of host memory creating the backend");
    }
    c->device = device;
    if (!setup(c, device)) {
        tl_status s = c->err.code;
        if (err) *err = c->err;
        release(c);
        free(c);
        free(be);
        return s;
    }

    be->name = "cuda";
    be->act_size = sizeof(tl_bf16);
    be->ctx = c;
    be->host_memory = 0;
    be->device = device;
    be->stream = cuda_stream;
    be->mem_stats = cuda_mem_stats;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->upload_act = cuda_upload_act;
    be->download_act = cuda_download_act;
    be->zero = cuda_zero;
    be->status = cuda_status;
    be->destroy = cuda_destroy;

    be->embed_fwd = tl_cuda_embed_fwd;
    be->add = tl_cuda_add;
    be->rmsnorm_fwd = tl_cuda_rmsnorm_fwd;
    be->rmsnorm_bwd = tl_cuda_rmsnorm_bwd;
    be->rope_fwd = tl_cuda_rope_fwd;
    be->rope_bwd = tl_cuda_rope_bwd;
    be->swiglu_fwd = tl_cuda_swiglu_fwd;
    be->swiglu_bwd = tl_cuda_swiglu_bwd;
    be->linear_fwd = tl_cuda_linear_fwd;
    be->linear_bwd_x = tl_cuda_linear_bwd_x;
    be->lora_fwd = tl_cuda_lora_fwd;
    be->lora_bwd = tl_cuda_lora_bwd;
    be->attn_fwd = tl_cuda_attn_fwd;
    be->attn_bwd = tl_cuda_attn_bwd;
    be->ce_fwd_bwd = tl_cuda_ce_fwd_bwd;
    be->grad_sqnorm = tl_cuda_grad_sqnorm;
    be->adamw = tl_cuda_adamw;
    be->kv_store = tl_cuda_kv_store;
    be->attn_kv = tl_cuda_attn_kv;
    *out = be;
    return TL_OK;
}
