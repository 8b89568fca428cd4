/* Pieces shared by the batcher tests (SFT and preference): REQUIRE_OK for set-up calls that must succeed,
 * allocation that ends the test on failure, and the part of the specification's reference model that both
 * batchers follow (docs/data-format.md): the FNV-1a name hash and the per-stream epoch permutation.
 * Header-only: each test is one translation unit. */
#ifndef TL_BATCH_REF_H
#define TL_BATCH_REF_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_math.h"
#include "kernels/tl_status.h"

#define REQUIRE_OK(expr)                                                                        \
    do {                                                                                        \
        tl_error e_ = {0};                                                                      \
        tl_error *err = &e_;                                                                    \
        tl_status s_ = (expr);                                                                  \
        if (s_ != TL_OK) {                                                                      \
            fprintf(stderr, "FATAL %s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, e_.msg); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

static inline void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) exit(1);
    return p;
}
static inline char *xstrdup(const char *s) {
    char *d = strdup(s);
    if (!d) exit(1);
    return d;
}

static inline uint64_t ref_fnv1a(const char *s) {
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The order of a stream's examples ex[0..n) in an epoch: a Fisher-Yates shuffle keyed by run seed, stream name
 * and epoch, with rejection sampling so every permutation is equally likely. */
static inline void ref_perm(uint64_t seed, const char *name, int64_t epoch, const int64_t *ex, int64_t n,
                            int64_t *out) {
    memcpy(out, ex, (size_t)n * sizeof *out);
    uint64_t key = tl_mix64(tl_mix64(seed ^ 0x73747265616d5f31ULL) ^ ref_fnv1a(name));
    uint64_t st = tl_mix64(key ^ tl_mix64((uint64_t)epoch));
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t m = (uint64_t)i + 1, r;
        do {
            r = tl_mix64(st);
            st += 0x9e3779b97f4a7c15ULL;
        } while (r < (0 - m) % m);
        int64_t j = (int64_t)(r % m), t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

#endif
