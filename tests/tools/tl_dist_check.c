/* tl_dist_check: the collectives of tl_dist.h and tl_dist_pool.h across real processes, on real values.
 *
 *   mpirun -np N tl_dist_check        (or srun --mpi=pmix -n N)
 *
 * Every rank fills buffers with values that depend on its rank, runs each collective and compares the result
 * with the sum (or maximum) computed locally from the same formulas; sizes include a large odd one. The pool
 * checks build a small pool on the CPU backend: after tl_dist_pool_gather every slot holds exactly its owner's
 * parameters, moments, step count and cursor; tl_dist_pool_reduce_grads sums the active slots' gradients and
 * leaves the others alone. Prints one line per check on rank 0 and exits non-zero on any mismatch. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"
#include "trainer/tl_dist.h"
#include "trainer/tl_dist_pool.h"

static int g_bad = 0, g_rank = 0;

static void report(const char *what, int ok) {
    if (!ok) g_bad++;
    if (g_rank == 0 || !ok) printf("rank %d: %-52s %s\n", g_rank, what, ok ? "ok" : "FAIL");
}

/* a value that differs per rank, element and buffer, exactly representable in float */
static float val(int rank, size_t i, int salt) { return (float)((int)((i * 7919u + (size_t)salt * 31u) % 2001u) - 1000) / 64.0f + (float)rank; }

#define TRY(x)                                                              \
    do {                                                                    \
        if ((x) != TL_OK) {                                                 \
            fprintf(stderr, "rank %d: %s\n", g_rank, err.msg);              \
            tl_dist_abort(d, 1);                                            \
            return 1;                                                       \
        }                                                                   \
    } while (0)

int main(void) {
    tl_error err = {0};
    tl_dist_env e;
    if (tl_dist_env_detect(&e, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 2;
    }
    g_rank = e.rank;
    tl_dist *d = NULL;
    tl_dist_opts o = {.backend = "cpu", .timeout_s = 60};
    if (tl_dist_init(&e, &o, &d, &err)) {
        fprintf(stderr, "rank %d: %s\n", e.rank, err.msg);
        return 1;
    }
    int W = tl_dist_world(d), R = tl_dist_rank(d);
    if (R == 0) printf("%d ranks over %s\n", W, tl_dist_transport(d));

    size_t sizes[3] = {1, 1000, (1u << 20) + 17};
    for (int k = 0; k < 3; k++) {
        size_t n = sizes[k];
        float *f = malloc(n * sizeof *f);
        double *g = malloc(n * sizeof *g);
        for (size_t i = 0; i < n; i++) f[i] = val(R, i, k), g[i] = (double)val(R, i, k + 5) * 1e-3;
        TRY(tl_dist_allreduce_f32(d, f, n, "f32 sum", &err));
        TRY(tl_dist_allreduce_f64_host(d, g, n, "f64 sum", &err));
        int ok_f = 1, ok_g = 1;
        for (size_t i = 0; i < n; i++) {
            float wf = 0;
            double wg = 0;
            for (int r = 0; r < W; r++) wf += val(r, i, k), wg += (double)val(r, i, k + 5) * 1e-3;
            if (f[i] != wf) ok_f = 0; /* small multiples of 1/64: exact in any order */
            if (fabs(g[i] - wg) > 1e-12 * (1 + fabs(wg))) ok_g = 0;
        }
        char what[96];
        snprintf(what, sizeof what, "all-reduce f32 sum of %zu values", n);
        report(what, ok_f);
        snprintf(what, sizeof what, "all-reduce f64 sum of %zu values", n);
        report(what, ok_g);
        free(f), free(g);
    }
    int64_t i64[3] = {(int64_t)R * (1LL << 40), -R, 7};
    TRY(tl_dist_allreduce_i64_host(d, i64, 3, "i64 sum", &err));
    int64_t tri = (int64_t)W * (W - 1) / 2;
    report("all-reduce i64 sum (beyond 32 bits)", i64[0] == tri * (1LL << 40) && i64[1] == -tri && i64[2] == 7LL * W);
    int mx[2] = {R == W - 1 ? 9 : R, -R};
    TRY(tl_dist_allreduce_max_int_host(d, mx, 2, "max", &err));
    report("all-reduce int max", mx[0] == 9 && mx[1] == 0);
    char msg[32];
    snprintf(msg, sizeof msg, "from rank %d", R);
    TRY(tl_dist_bcast_host(d, msg, sizeof msg, W - 1, "bcast", &err));
    char want[32];
    snprintf(want, sizeof want, "from rank %d", W - 1);
    report("broadcast from the last rank", !strcmp(msg, want));
    TRY(tl_dist_barrier(d, "barrier", &err));

    /* pool gather and gradient reduction on the CPU backend */
    tl_backend *be = NULL;
    TRY(tl_backend_cpu_create(1, &be, &err));
    tl_lora_pool p;
    memset(&p, 0, sizeof p);
    p.n_slots = 7, p.P = 1001;
    size_t N = (size_t)p.n_slots * p.P;
    TRY(be->alloc(be, N * sizeof(float), (void **)&p.params, &err));
    TRY(be->alloc(be, N * sizeof(float), (void **)&p.m, &err));
    TRY(be->alloc(be, N * sizeof(float), (void **)&p.v, &err));
    TRY(be->alloc(be, N * sizeof(float), (void **)&p.grads, &err));
    p.steps = calloc((size_t)p.n_slots, sizeof *p.steps);
    tl_cursor cur[7];
    int owner[7];
    for (int s = 0; s < p.n_slots; s++) {
        owner[s] = (s * 5 + 1) % W;
        int mine = owner[s] == R;
        p.steps[s] = mine ? 100 + s : -3; /* stale values elsewhere must not leak into the result */
        cur[s].epoch = mine ? s : 99, cur[s].pos = mine ? 2 * s : 99;
        for (size_t i = 0; i < p.P; i++) {
            size_t j = (size_t)s * p.P + i;
            p.params[j] = mine ? val(0, j, 1) : NAN;
            p.m[j] = mine ? val(0, j, 2) : 1e30f;
            p.v[j] = mine ? val(0, j, 3) : -1.0f;
            p.grads[j] = val(R, j, 4);
        }
    }
    TRY(tl_dist_pool_gather(d, &p, be, owner, cur, &err));
    int ok = 1;
    for (int s = 0; s < p.n_slots; s++) {
        if (p.steps[s] != 100 + s || cur[s].epoch != s || cur[s].pos != 2 * s) ok = 0;
        for (size_t i = 0; i < p.P; i++) {
            size_t j = (size_t)s * p.P + i;
            if (p.params[j] != val(0, j, 1) || p.m[j] != val(0, j, 2) || p.v[j] != val(0, j, 3)) ok = 0;
        }
    }
    report("pool gather: every slot equals its owner's state", ok);
    int32_t active[4] = {0, 2, 3, 6};
    TRY(tl_dist_pool_reduce_grads(d, &p, active, 4, 0, &err));
    ok = 1;
    for (int s = 0; s < p.n_slots; s++) {
        int act = s == 0 || s == 2 || s == 3 || s == 6;
        for (size_t i = 0; i < p.P; i++) {
            size_t j = (size_t)s * p.P + i;
            float w = 0;
            for (int r = 0; r < W; r++) w += val(r, j, 4);
            if (p.grads[j] != (act ? w : val(R, j, 4))) ok = 0;
        }
    }
    report("gradient reduction: active slots summed, others untouched", ok);
    be->free(be, p.params), be->free(be, p.m), be->free(be, p.v), be->free(be, p.grads);
    free(p.steps);
    be->destroy(be);
    int bad = g_bad;
    TRY(tl_dist_allreduce_max_int_host(d, &bad, 1, "verdict", &err));
    if (R == 0) printf("%s\n", bad ? "FAIL" : "ok");
    tl_dist_free(d);
    return bad ? 1 : 0;
}
