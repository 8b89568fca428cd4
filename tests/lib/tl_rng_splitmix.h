/* The splitmix64 generator the data-format tests draw fresh content from (the seed, g_rng, is set and printed by
 * each test's main so a failing run can be replayed). Header-only: each test is one translation unit. */
#ifndef TL_RNG_SPLITMIX_H
#define TL_RNG_SPLITMIX_H

#include <stdint.h>

static uint64_t g_rng;
static inline uint64_t rnd(void) {
    g_rng += 0x9e3779b97f4a7c15ULL;
    uint64_t z = g_rng;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* Uniform in [lo, hi]. */
static inline int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }

#endif
