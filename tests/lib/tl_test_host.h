/* Test helpers shared by the unit tests of modules that move an adapter pool between a backend and files
 * (export, checkpoint): a failure counter with CHECK, a host-memory backend double whose upload/download are
 * memcpy (it counts transfers and can inject a status() failure, as a real backend reports one), and a small
 * xorshift RNG. Header-only: each test is one translation unit. */
#ifndef TL_TEST_HOST_H
#define TL_TEST_HOST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"

static int failures = 0;
#define CHECK(cond, ...)                                         \
    do {                                                         \
        if (!(cond)) {                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fputc('\n', stderr);                                 \
            failures++;                                          \
        }                                                        \
    } while (0)

/* ---- host-memory backend double ---- */

typedef struct {
    long uploads, downloads;
    long fail_after_downloads; /* status() fails once more downloads than this happened; < 0: never */
} host_ctx;

static tl_status h_alloc(tl_backend *be, size_t bytes, void **out, tl_error *err) {
    *out = malloc(bytes ? bytes : 1);
    return *out ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of memory");
}
static void h_free(tl_backend *be, void *p) { free(p); }
static void h_upload(tl_backend *be, void *dst, const void *src, size_t n) {
    ((host_ctx *)be->ctx)->uploads++;
    memcpy(dst, src, n);
}
static void h_download(tl_backend *be, void *dst, const void *src, size_t n) {
    ((host_ctx *)be->ctx)->downloads++;
    memcpy(dst, src, n);
}
static void h_zero(tl_backend *be, void *p, size_t n) { memset(p, 0, n); }
static tl_status h_status(tl_backend *be, tl_error *err) {
    host_ctx *c = be->ctx;
    if (c->fail_after_downloads >= 0 && c->downloads > c->fail_after_downloads)
        return tl_fail(err, TL_ERR_RUNTIME, "test backend: injected failure");
    return TL_OK;
}

static void host_backend(tl_backend *be, host_ctx *c) {
    memset(be, 0, sizeof *be);
    memset(c, 0, sizeof *c);
    c->fail_after_downloads = -1;
    be->name = "host-double";
    be->act_size = 4;
    be->ctx = c;
    be->alloc = h_alloc;
    be->free = h_free;
    be->upload = h_upload;
    be->download = h_download;
    be->zero = h_zero;
    be->status = h_status;
}

/* ---- random numbers ---- */

static uint64_t rng_state;
static uint64_t rng_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

#endif
