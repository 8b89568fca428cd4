/* dist_pool: the adapter pool across ranks — gradient sums, whole-run views (see tl_dist_pool.h). */
#include "tl_dist_pool.h"

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

void tl_pool_view_free(tl_pool_view *v) {
    if (v->cpu) {
        if (v->pool.params) v->cpu->free(v->cpu, v->pool.params);
        if (v->pool.m) v->cpu->free(v->cpu, v->pool.m);
        if (v->pool.v) v->cpu->free(v->cpu, v->pool.v);
        v->cpu->destroy(v->cpu);
    }
    free(v->pool.steps);
    free(v->cursors);
    memset(v, 0, sizeof *v);
}

tl_status tl_pool_view_create(const tl_lora_pool *layout, char *const *names, int n, tl_pool_view *v, tl_error *err) {
    memset(v, 0, sizeof *v);
    TL_TRY(tl_backend_cpu_create(1, &v->cpu, err));
    v->pool = *layout;
    v->pool.n_slots = n;
    v->pool.names = (char **)names;
    v->pool.params = v->pool.grads = v->pool.m = v->pool.v = NULL;
    v->pool.steps = calloc((size_t)n + 1, sizeof *v->pool.steps);
    v->cursors = calloc((size_t)n + 1, sizeof *v->cursors);
    size_t bytes = (size_t)n * layout->P * sizeof(float);
    tl_status s = v->pool.steps && v->cursors ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    float **bufs[3] = {&v->pool.params, &v->pool.m, &v->pool.v};
    for (int k = 0; k < 3 && !s; k++) {
        s = v->cpu->alloc(v->cpu, bytes, (void **)bufs[k], err);
        if (!s) memset(*bufs[k], 0, bytes);
    }
    if (s) tl_pool_view_free(v);
    return s;
}

tl_status tl_dist_pool_collect(tl_dist *d, const tl_lora_pool *local, tl_backend *be, const int32_t *gidx,
                               const tl_cursor *cursors, char *const *names, int n_global, int root, tl_pool_view *v,
                               tl_error *err) {
    memset(v, 0, sizeof *v);
    int me = tl_dist_rank(d);
    size_t P = local->P, per = 3 * P;
    size_t chunk = ((size_t)16 << 20) / (per ? per : 1); /* slots per collective: 64 MiB of floats */
    if (chunk < 1) chunk = 1;
    if (chunk > (size_t)n_global) chunk = (size_t)n_global;
    int *ginv = malloc(((size_t)n_global + 1) * sizeof *ginv);
    float *buf = malloc(chunk * per * sizeof *buf + 1);
    int64_t *ints = calloc(3 * (size_t)n_global + 1, sizeof *ints);
    tl_status s = ginv && buf && ints ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    if (!s && me == root) s = tl_pool_view_create(local, names, n_global, v, err);
    if (!s) {
        for (int g = 0; g < n_global; g++) ginv[g] = -1;
        for (int a = 0; a < local->n_slots; a++) ginv[gidx[a]] = a;
    }
    const float *src[3] = {local->params, local->m, local->v};
    for (size_t g0 = 0; !s && g0 < (size_t)n_global; g0 += chunk) {
        size_t g1 = g0 + chunk < (size_t)n_global ? g0 + chunk : (size_t)n_global;
        memset(buf, 0, (g1 - g0) * per * sizeof *buf);
        for (size_t g = g0; g < g1; g++) {
            int a = ginv[g];
            if (a < 0) continue;
            for (int k = 0; k < 3; k++)
                be->download(be, buf + (g - g0) * per + (size_t)k * P, src[k] + (size_t)a * P, P * sizeof(float));
        }
        if (be->status) s = be->status(be, err);
        if (!s) s = tl_dist_allreduce_f32_host(d, buf, (g1 - g0) * per, "collect of adapter state", err);
        if (!s && me == root) {
            float *dst[3] = {v->pool.params, v->pool.m, v->pool.v};
            for (size_t g = g0; g < g1; g++)
                for (int k = 0; k < 3; k++)
                    memcpy(dst[k] + g * P, buf + (g - g0) * per + (size_t)k * P, P * sizeof(float));
        }
    }
    if (!s) {
        for (int a = 0; a < local->n_slots; a++) {
            size_t g = (size_t)gidx[a];
            ints[g] = local->steps[a];
            if (cursors) ints[n_global + 2 * g] = cursors[a].epoch, ints[n_global + 2 * g + 1] = cursors[a].pos;
        }
        s = tl_dist_allreduce_i64_host(d, ints, 3 * (size_t)n_global, "collect of step counts and cursors", err);
    }
    if (!s && me == root)
        for (int g = 0; g < n_global; g++) {
            v->pool.steps[g] = ints[g];
            v->cursors[g].epoch = ints[n_global + 2 * g], v->cursors[g].pos = ints[n_global + 2 * g + 1];
        }
    if (s) tl_pool_view_free(v);
    free(ginv);
    free(buf);
    free(ints);
    return s;
}
