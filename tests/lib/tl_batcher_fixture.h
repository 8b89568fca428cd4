/* Fixtures shared by the two batcher tests (test_batcher.c for SFT, test_pref_batcher.c for preference pairs):
 * the seeded test RNG, the user table of an in-memory dataset, the reference model's schedule and stream draw,
 * the step signature used to compare runs, and the cursor save/restore/resume check that both batchers must
 * pass. The batcher-specific parts (datasets, reference steps, what a signature holds) stay in each test.
 * Header-only: each test is one translation unit (it includes tl_check.h for CHECK and g_fail). */
#ifndef TL_BATCHER_FIXTURE_H
#define TL_BATCHER_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_batcher.h"
#include "kernels/tl_math.h"
#include "tests/lib/tl_batch_ref.h"
#include "tests/lib/tl_check.h"

/* ------------------------------------------------------------------------------------------------------------
 * Test RNG: a counter through tl_mix64, seeded per process so repeated runs cover more cases; the seed is
 * printed so a failing run can be reproduced. */

static uint64_t g_rng;
static inline uint64_t rnd(void) { return tl_mix64(g_rng++ * 0x9e3779b97f4a7c15ULL); }
static inline int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }
static inline void fx_seed_rng(uint64_t base, const char *test) {
    g_rng = base ^ ((uint64_t)getpid() << 20);
    printf("%s rng seed %llu\n", test, (unsigned long long)g_rng);
}

static const char *k_names[] = {"alice", "bob", "carol", "dave", "eve", "frank", "gina", "hal", "ivy", "jon"};

/* U generated user names "user000".. for the stress tests (U <= FX_MAX_USERS). */
enum { FX_MAX_USERS = 256 };
static inline const char *const *fx_user_names(int U) {
    static char names[FX_MAX_USERS][16];
    static const char *np[FX_MAX_USERS];
    if (U > FX_MAX_USERS) {
        fprintf(stderr, "FATAL: fx_user_names: %d users > %d\n", U, FX_MAX_USERS);
        exit(1);
    }
    for (int u = 0; u < U; u++) {
        snprintf(names[u], sizeof names[u], "user%03d", u);
        np[u] = names[u];
    }
    return np;
}

/* The /users table of an in-memory dataset, allocated the way the readers do (so tl_sft_free / tl_pref_free
 * release it): names always, groups when given. */
static inline void fx_user_table(int U, const char *const *names, const char *const *groups, char ***user_names,
                                 char ***user_groups) {
    *user_names = xmalloc((size_t)U * sizeof(char *));
    for (int u = 0; u < U; u++) (*user_names)[u] = xstrdup(names[u]);
    *user_groups = NULL;
    if (groups) {
        *user_groups = xmalloc((size_t)U * sizeof(char *));
        for (int u = 0; u < U; u++) (*user_groups)[u] = xstrdup(groups[u]);
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Reference model pieces both batchers follow (docs/data-format.md) */

/* The adapters a step trains, round robin: sched[a] = 1 for the k = adapters_per_step adapters of this step
 * (all of them when 0 or >= A). The caller frees the array. */
static inline char *ref_schedule(int A, const tl_batcher_opts *o, int64_t step) {
    int k = (o->adapters_per_step == 0 || o->adapters_per_step >= A) ? A : o->adapters_per_step;
    char *sched = calloc((size_t)A, 1);
    if (!sched) exit(1);
    for (int i = 0; i < k; i++) sched[(step * k + i) % A] = 1;
    return sched;
}

/* The next example of adapter a's stream at its cursor (epoch permutation, then position); advances the cursor,
 * wrapping into the next epoch. perm has room for the adapter's n_examples. */
static inline int64_t ref_draw(const tl_adapter_map *m, const tl_batcher_opts *o, int a, tl_cursor *cur,
                               int64_t *perm) {
    int64_t n = m->n_examples[a];
    ref_perm(o->seed, m->names[a], cur[a].epoch, m->examples[a], n, perm);
    int64_t e = perm[cur[a].pos];
    if (++cur[a].pos == n) {
        cur[a].pos = 0;
        cur[a].epoch++;
    }
    return e;
}

/* ------------------------------------------------------------------------------------------------------------
 * Signatures: a step (or one adapter's part of it) flattened to integers, to compare two runs */

typedef struct {
    int n;
    int64_t v[8192];
} sig;
static inline void sig_add(sig *s, int64_t x) {
    if (s->n < (int)(sizeof s->v / sizeof s->v[0])) s->v[s->n++] = x;
}
static inline int sig_equal(const sig *a, const sig *b) {
    return a->n == b->n && memcmp(a->v, b->v, (size_t)a->n * sizeof a->v[0]) == 0;
}

/* A batcher's cursors equal the reference's, adapter by adapter. */
static inline void fx_check_cursors(const char *label, const tl_cursor *got, const tl_cursor *want, int n_adapters) {
    for (int a = 0; a < n_adapters; a++)
        CHECK(got[a].epoch == want[a].epoch && got[a].pos == want[a].pos, "%s: cursor of adapter %d", label, a);
}

/* ------------------------------------------------------------------------------------------------------------
 * Cursor save / restore / resume, for either batcher through a small table */

typedef struct {
    /* runs step t on the batcher and writes the step's signature (set-up failures end the test) */
    void (*step_sig)(void *batcher, int64_t t, sig *out);
    tl_cursor *(*cursors)(void *batcher);
} fx_batcher_ops;

/* b has run the steps before t0. Saves its cursors, runs n steps from t0 into runs[0..n), restores the cursors
 * and checks the same n steps come again; then puts the saved cursors in fresh (a new batcher, as on resume) and
 * checks the same steps come from it. Leaves both batchers after step t0 + n - 1. */
static inline void fx_check_cursor_restore(const fx_batcher_ops *ops, void *b, void *fresh, int n_adapters,
                                           int64_t t0, int n, sig *runs) {
    tl_cursor *saved = xmalloc((size_t)n_adapters * sizeof *saved);
    sig *again = xmalloc(sizeof *again);
    memcpy(saved, ops->cursors(b), (size_t)n_adapters * sizeof *saved);
    for (int64_t t = t0; t < t0 + n; t++) ops->step_sig(b, t, &runs[t - t0]);
    memcpy(ops->cursors(b), saved, (size_t)n_adapters * sizeof *saved);
    for (int64_t t = t0; t < t0 + n; t++) {
        ops->step_sig(b, t, again);
        CHECK(sig_equal(again, &runs[t - t0]), "cursor restore: step %d differs", (int)t);
    }
    memcpy(ops->cursors(fresh), saved, (size_t)n_adapters * sizeof *saved);
    for (int64_t t = t0; t < t0 + n; t++) {
        ops->step_sig(fresh, t, again);
        CHECK(sig_equal(again, &runs[t - t0]), "resume in a fresh batcher: step %d differs", (int)t);
    }
    free(again);
    free(saved);
}

#endif
