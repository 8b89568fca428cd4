/* dist_pool: the adapter pool across ranks — gradient sums, whole-run views (see tl_dist_pool.h). */
#include "trainer/dist/tl_dist_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tl_status tl_dist_pool_reduce_grads(tl_dist *d, tl_lora_pool *p, const int32_t *active, int n_active, int64_t step,
                                    tl_error *err) {
    if (!strcmp(tl_dist_transport(d), "none") || n_active == 0) return TL_OK;
    char what[96];
    snprintf(what, sizeof what, "LoRA gradients of step %lld", (long long)step + 1);
    if (n_active == p->n_slots) /* every slot active (adapters_per_step 0): one collective for the pool */
        return tl_dist_allreduce_f32(d, p->grads, (size_t)p->n_slots * p->P, what, err);
    for (int i = 0; i < n_active;) { /* runs of consecutive slots travel together */
        int j = i + 1;
        while (j < n_active && active[j] == active[j - 1] + 1) j++;
        TL_TRY(tl_dist_allreduce_f32(d, p->grads + (size_t)active[i] * p->P, (size_t)(j - i) * p->P, what, err));
        i = j;
    }
    return TL_OK;
}

tl_status tl_dist_collect_init(tl_dist_collector *c, tl_dist *d, const tl_lora_pool *local, tl_backend *be,
                               const int32_t *gidx, int n_global, tl_error *err) {
    memset(c, 0, sizeof *c);
    c->d = d, c->local = local, c->be = be, c->n_global = n_global;
    c->ginv = malloc(((size_t)n_global + 1) * sizeof *c->ginv);
    if (!c->ginv) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int g = 0; g < n_global; g++) c->ginv[g] = -1;
    for (int a = 0; a < local->n_slots; a++) c->ginv[gidx[a]] = a;
    return TL_OK;
}

void tl_dist_collect_free(tl_dist_collector *c) {
    free(c->ginv);
    memset(c, 0, sizeof *c);
}

/* Floats [first, first + n) of tensor k over the run's [n_global * P] layout, into dst on every rank. */
static tl_status collect_rows(void *ctx, int k, size_t first, float *dst, size_t n, tl_error *err) {
    tl_dist_collector *c = ctx;
    size_t P = c->local->P;
    const float *src = k == 0 ? c->local->params : k == 1 ? c->local->m : c->local->v;
    memset(dst, 0, n * sizeof *dst);
    for (size_t g = first / P; g * P < first + n && g < (size_t)c->n_global; g++) {
        int a = c->ginv[g];
        if (a < 0) continue;
        size_t lo = g * P > first ? g * P : first, hi = (g + 1) * P < first + n ? (g + 1) * P : first + n;
        c->be->download(c->be, dst + (lo - first), src + (size_t)a * P + (lo - g * P), (hi - lo) * sizeof *dst);
    }
    TL_TRY(c->be->status(c->be, err));
    return tl_dist_allreduce_f32_host(c->d, dst, n, k == 0 ? "collect of adapter parameters" : "collect of Adam moments",
                                      err);
}

tl_state_reader tl_dist_collect_reader(tl_dist_collector *c) { return (tl_state_reader){collect_rows, c}; }

tl_status tl_dist_collect_ints(tl_dist_collector *c, const tl_cursor *local_cursors, int64_t *steps,
                               tl_cursor *cursors, tl_error *err) {
    size_t nG = (size_t)c->n_global;
    int64_t *ints = calloc(3 * nG + 1, sizeof *ints);
    if (!ints) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (size_t g = 0; g < nG; g++) {
        int a = c->ginv[g];
        if (a < 0) continue;
        ints[g] = c->local->steps[a];
        if (local_cursors) ints[nG + 2 * g] = local_cursors[a].epoch, ints[nG + 2 * g + 1] = local_cursors[a].pos;
    }
    tl_status s = tl_dist_allreduce_i64_host(c->d, ints, 3 * nG, "collect of step counts and cursors", err);
    for (size_t g = 0; !s && g < nG; g++) {
        steps[g] = ints[g];
        cursors[g].epoch = ints[nG + 2 * g], cursors[g].pos = ints[nG + 2 * g + 1];
    }
    free(ints);
    return s;
}

tl_status tl_dist_collect_serve(tl_dist_collector *c, int export, tl_error *err) {
    size_t P = c->local->P, total = (size_t)c->n_global * P;
    size_t chunk = export ? P : tl_state_chunk_floats(P);
    float *buf = malloc((chunk < total ? chunk : total) * sizeof *buf + 1);
    if (!buf) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    tl_status s = TL_OK;
    for (int k = 0; k < (export ? 1 : 3) && !s; k++)
        for (size_t first = 0; first < total && !s; first += chunk)
            s = collect_rows(c, k, first, buf, total - first < chunk ? total - first : chunk, err);
    free(buf);
    return s;
}
