/* Test helpers shared by the unit tests of modules that move an adapter pool between a backend and files
 * (export, checkpoint): CHECK from tl_check.h, a host-memory backend double whose upload/download are
 * memcpy (it counts transfers and can inject a status() failure, as a real backend reports one), a small
 * xorshift RNG (seeded from TL_TEST_SEED or the clock), hand-made adapter pools in that backend's memory, an
 * aborting snprintf for paths, and the run's scratch directory.
 * Header-only: each test is one translation unit. */
#ifndef TL_TEST_HOST_H
#define TL_TEST_HOST_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_io.h"
#include "kernels/tl_backend.h"
#include "trainer/model/tl_model.h"
#include "tests/lib/tl_check.h"


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

/* ---- hand-made adapter pools ---- */

/* A pool of n_slots adapters with layers x enabled targets of in[t] x out[t] matrices, every element of params,
 * grads and both Adam moments drawn from value(), slot step counts from step(), names copied. */
/* A pool as tl_lora_pool_init lays it out: per slot, each layer's targets' A then B, then (head_dim > 0, a reward
 * model) the score head. */
static void host_make_pool_head(tl_lora_pool *p, tl_backend *be, int n_slots, char *const *names, int rank,
                                int n_layers, uint32_t targets, float alpha, int rslora, float dropout, const int *in,
                                const int *out, int head_dim, float (*value)(void), int64_t (*step)(void)) {
    memset(p, 0, sizeof *p);
    p->n_slots = n_slots, p->rank = rank, p->n_layers = n_layers, p->targets = targets;
    p->alpha = alpha, p->rslora = rslora, p->dropout = dropout;
    p->scale = rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    p->off_A = calloc((size_t)n_layers * TL_N_TARGETS, sizeof(size_t));
    p->off_B = calloc((size_t)n_layers * TL_N_TARGETS, sizeof(size_t));
    size_t off = 0;
    for (int t = 0; t < TL_N_TARGETS; t++) p->in_dim[t] = in[t], p->out_dim[t] = out[t];
    for (int l = 0; l < n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            p->off_A[l * TL_N_TARGETS + t] = off;
            off += (size_t)rank * (size_t)in[t];
            p->off_B[l * TL_N_TARGETS + t] = off;
            off += (size_t)rank * (size_t)out[t];
        }
    if (head_dim > 0) p->off_head = off, p->head_dim = head_dim, off += (size_t)head_dim;
    p->P = off;
    size_t n = (size_t)n_slots * off;
    float **bufs[4] = {&p->params, &p->grads, &p->m, &p->v};
    tl_error err;
    for (int k = 0; k < 4; k++) {
        if (be->alloc(be, n * sizeof(float), (void **)bufs[k], &err) != TL_OK) abort();
        for (size_t i = 0; i < n; i++) (*bufs[k])[i] = value();
    }
    p->steps = calloc((size_t)n_slots, sizeof(int64_t));
    p->names = calloc((size_t)n_slots, sizeof(char *));
    for (int s = 0; s < n_slots; s++) {
        p->steps[s] = step();
        p->names[s] = strdup(names[s]);
    }
}

static void host_make_pool(tl_lora_pool *p, tl_backend *be, int n_slots, char *const *names, int rank, int n_layers,
                           uint32_t targets, float alpha, int rslora, float dropout, const int *in, const int *out,
                           float (*value)(void), int64_t (*step)(void)) {
    host_make_pool_head(p, be, n_slots, names, rank, n_layers, targets, alpha, rslora, dropout, in, out, 0, value,
                        step);
}

static void free_pool(tl_lora_pool *p, tl_backend *be) {
    be->free(be, p->params), be->free(be, p->grads), be->free(be, p->m), be->free(be, p->v);
    for (int s = 0; s < p->n_slots; s++) free(p->names[s]);
    free(p->names), free(p->steps), free(p->off_A), free(p->off_B);
    memset(p, 0, sizeof *p);
}

/* ---- paths ---- */

/* snprintf for paths: a truncated path would make a test check the wrong file, so it aborts instead. */
static void xpath(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void xpath(char *dst, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= cap) {
        fprintf(stderr, "FAIL: test path too long\n");
        abort();
    }
}

/* ---- a run's seed and scratch directory ---- */

/* Seeds rng_state from TL_TEST_SEED when set, else from the time and pid (never 0), and returns the seed. */
static uint64_t host_seed(void) {
    rng_state = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15ull;
    const char *env = getenv("TL_TEST_SEED");
    if (env) rng_state = strtoull(env, NULL, 10);
    if (!rng_state) rng_state = 1;
    return rng_state;
}

/* A fresh directory $TMPDIR/{tag}_XXXXXX (or under /tmp) in root[TL_PATH_MAX]; 0, or 1 after perror. */
static int host_scratch(char *root, const char *tag) {
    const char *tmpdir = getenv("TMPDIR");
    xpath(root, TL_PATH_MAX, "%s/%s_XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp", tag);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    return 0;
}

/* Removes the scratch tree; not being able to is a test failure. */
static void host_scratch_remove(const char *root) {
    tl_error err;
    if (tl_remove_tree(root, &err) != TL_OK) {
        fprintf(stderr, "FAIL cleanup: %s\n", err.msg);
        g_fail++;
    }
}

#endif
