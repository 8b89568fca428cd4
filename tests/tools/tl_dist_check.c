/* tl_dist_check: the collectives of tl_dist.h and tl_dist_pool.h across real processes, on real values.
 *
 *   mpirun -np N tl_dist_check [cuda] [--force]     (or srun --mpi=pmix -n N ...)
 *
 * cpu (default): MPI. cuda: NCCL on the CUDA backend, one GPU per rank (tl_dist_cuda_device), float buffers in
 * device memory. --force connects the transport even for one process (the NCCL path on a one-GPU machine, with
 * NCCL_COMM_ID=127.0.0.1:PORT RANK=0 WORLD_SIZE=1).
 *
 * Every rank fills buffers with values that depend on its rank, runs each collective and compares the result
 * with the sum (or maximum) computed locally from the same formulas; sizes include a large odd one. The pool
 * checks: tl_dist_pool_reduce_grads sums the active slots' gradients of a replicated pool and leaves the others
 * alone; with local pools (each rank a share of 11 adapters), the collector gives every rank the step counts
 * and cursors, and the root every owner's parameters and moments exactly, in a checkpoint's order and in an
 * export's, while the other ranks serve. Prints one line per check on rank 0 and exits non-zero on any mismatch. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/dist/tl_dist_pool.h"

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

/* f32 sums through backend memory (device memory on cuda) */
static tl_status reduce_f32_be(tl_dist *d, tl_backend *be, float *host, size_t n, tl_error *err) {
    float *dev = NULL;
    TL_TRY(be->alloc(be, n * sizeof *dev, (void **)&dev, err));
    be->upload(be, dev, host, n * sizeof *dev);
    tl_status s = tl_dist_allreduce_f32(d, dev, n, "f32 sum", err);
    if (!s) be->download(be, host, dev, n * sizeof *dev);
    be->free(be, dev);
    return s;
}

int main(int argc, char **argv) {
    tl_error err = {0};
    tl_dist_env e;
    const char *backend = "cpu";
    int force = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "cuda") || !strcmp(argv[i], "cpu"))
            backend = argv[i];
        else if (!strcmp(argv[i], "--force"))
            force = 1;
        else {
            fprintf(stderr, "usage: tl_dist_check [cpu|cuda] [--force]\n");
            return 2;
        }
    }
    if (tl_dist_env_detect(&e, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 2;
    }
    g_rank = e.rank;
    tl_dist *d = NULL;
    tl_backend *be = NULL;
    int device = 0;
#ifdef TL_HAVE_CUDA
    if (!strcmp(backend, "cuda")) device = tl_dist_cuda_device(&e, tl_cuda_device_count());
#endif
    if (tl_backend_open_on(backend, 1, device, &be, &err)) {
        fprintf(stderr, "rank %d: %s\n", e.rank, err.msg);
        return err.code == TL_ERR_INPUT ? 77 : 1; /* no GPU: skipped */
    }
    tl_dist_opts o = {.transport = tl_dist_kind_for(be->host_memory), .timeout_s = 60, .force = force,
                      .cuda_stream = be->stream(be)};
    if (tl_dist_init(&e, &o, &d, &err)) {
        fprintf(stderr, "rank %d: %s\n", e.rank, err.msg);
        be->destroy(be);
        return 1;
    }
    int W = tl_dist_world(d), R = tl_dist_rank(d);
    if (R == 0) printf("%d ranks over %s, %s backend\n", W, tl_dist_transport(d), be->name);

    size_t sizes[3] = {1, 1000, (1u << 20) + 17};
    for (int k = 0; k < 3; k++) {
        size_t n = sizes[k];
        float *f = malloc(n * sizeof *f);
        double *g = malloc(n * sizeof *g);
        for (size_t i = 0; i < n; i++) f[i] = val(R, i, k), g[i] = (double)val(R, i, k + 5) * 1e-3;
        TRY(reduce_f32_be(d, be, f, n, &err));
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

    /* gradient reduction over a replicated pool (data_parallel), in backend memory */
    tl_lora_pool p;
    memset(&p, 0, sizeof p);
    p.n_slots = 7, p.P = 1001;
    size_t N = (size_t)p.n_slots * p.P, NB = N * sizeof(float);
    float *hg = malloc(NB);
    TRY(be->alloc(be, NB, (void **)&p.grads, &err));
    for (size_t j = 0; j < N; j++) hg[j] = val(R, j, 4);
    be->upload(be, p.grads, hg, NB);
    int32_t active[4] = {0, 2, 3, 6};
    TRY(tl_dist_pool_reduce_grads(d, &p, active, 4, 0, &err));
    be->download(be, hg, p.grads, NB);
    int ok = 1;
    for (int s = 0; s < p.n_slots; s++) {
        int act = s == 0 || s == 2 || s == 3 || s == 6;
        for (size_t i = 0; i < p.P; i++) {
            size_t j = (size_t)s * p.P + i;
            float w = 0;
            for (int r = 0; r < W; r++) w += val(r, j, 4);
            if (hg[j] != (act ? w : val(R, j, 4))) ok = 0;
        }
    }
    report("gradient reduction: active slots summed, others untouched", ok);
    be->free(be, p.grads);
    free(hg);

    /* local pools (user_shard): global adapter g lives on rank (g * 5 + 1) mod W; collected by the last rank */
    enum { NG = 11 };
    size_t P = 1001;
    int32_t gidx[NG];
    char *names[NG], namebuf[NG][8];
    int nl = 0;
    for (int g = 0; g < NG; g++) {
        snprintf(namebuf[g], sizeof namebuf[g], "u%d", g);
        names[g] = namebuf[g];
        if ((g * 5 + 1) % W == R) gidx[nl++] = g;
    }
    tl_lora_pool lp;
    memset(&lp, 0, sizeof lp);
    lp.n_slots = nl, lp.P = P, lp.names = names; /* names unused by collect beyond the view */
    size_t LB = (size_t)(nl ? nl : 1) * P * sizeof(float);
    float *hl = malloc(LB);
    lp.steps = calloc((size_t)nl + 1, sizeof *lp.steps);
    tl_cursor lcur[NG];
    float **lbufs[3] = {&lp.params, &lp.m, &lp.v};
    for (int k = 0; k < 3; k++) {
        TRY(be->alloc(be, LB, (void **)lbufs[k], &err));
        for (int a = 0; a < nl; a++)
            for (size_t i = 0; i < P; i++) hl[(size_t)a * P + i] = val(0, (size_t)gidx[a] * P + i, 1 + k);
        be->upload(be, *lbufs[k], hl, LB);
    }
    for (int a = 0; a < nl; a++) {
        lp.steps[a] = 100 + gidx[a];
        lcur[a].epoch = gidx[a], lcur[a].pos = 2 * gidx[a];
    }
    tl_dist_collector c;
    TRY(tl_dist_collect_init(&c, d, &lp, be, gidx, NG, &err));
    int64_t gsteps[NG];
    tl_cursor gcur[NG];
    TRY(tl_dist_collect_ints(&c, lcur, gsteps, gcur, &err));
    ok = 1;
    for (int g = 0; g < NG; g++)
        if (gsteps[g] != 100 + g || gcur[g].epoch != g || gcur[g].pos != 2 * g) ok = 0;
    report("collect: every rank gets every adapter's step count and cursor", ok);
    /* a checkpoint's order (params, m, v in chunks of tl_state_chunk_floats) on the root, the
     * matching serve elsewhere; then an export's (params, one adapter at a time) */
    size_t total = (size_t)NG * P, chunk = tl_state_chunk_floats(P);
    float *got = malloc(total * sizeof *got);
    tl_state_reader rd = tl_dist_collect_reader(&c);
    for (int pass = 0; pass < 2; pass++) {
        size_t step = pass == 0 ? chunk : P;
        if (R == W - 1) {
            ok = 1;
            for (int k = 0; k < (pass == 0 ? 3 : 1); k++) {
                for (size_t first = 0; first < total; first += step)
                    TRY(rd.read(rd.ctx, k, first, got + first, total - first < step ? total - first : step, &err));
                for (size_t j = 0; j < total; j++)
                    if (got[j] != val(0, j, 1 + k)) ok = 0;
            }
            report(pass == 0 ? "collect: the root reads every owner's params, m and v" :
                               "collect: the root reads every adapter's params in export order", ok);
        } else {
            TRY(tl_dist_collect_serve(&c, pass, &err));
        }
    }
    free(got);
    tl_dist_collect_free(&c);
    for (int k = 0; k < 3; k++) be->free(be, *lbufs[k]);
    free(lp.steps);
    free(hl);
    int bad = g_bad;
    TRY(tl_dist_allreduce_max_int_host(d, &bad, 1, "verdict", &err));
    if (R == 0) printf("%s\n", bad ? "FAIL" : "ok");
    tl_dist_free(d);
    be->destroy(be);
    return bad ? 1 : 0;
}
