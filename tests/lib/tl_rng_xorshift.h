/* The xorshift64 generator the file-format tests (safetensors, GGUF) draw tensor values from (g_rng, the seed, is
 * set and printed by each test's main). Header-only: each test is one translation unit. */
#ifndef TL_RNG_XORSHIFT_H
#define TL_RNG_XORSHIFT_H

#include <stdint.h>

static uint64_t g_rng;
static inline uint64_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
/* Uniform in [-2, 2). */
static inline float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 4.0 - 2.0); }

#endif
