/* dist_pool: gathering and reducing the adapter pool across ranks (see tl_dist_pool.h). */
#include "tl_dist_pool.h"

#include <stdio.h>
#include <string.h>

tl_status tl_dist_pool_gather(tl_dist *d, tl_lora_pool *p, tl_backend *be, const int *owner, tl_cursor *cursors,
                              tl_error *err) {
    if (!strcmp(tl_dist_transport(d), "none")) return TL_OK;
    int me = tl_dist_rank(d);
    size_t P = p->P, bytes = P * sizeof(float);
    for (int s = 0; s < p->n_slots; s++) {
        if (owner[s] == me) continue;
        be->zero(be, p->params + (size_t)s * P, bytes);
        be->zero(be, p->m + (size_t)s * P, bytes);
        be->zero(be, p->v + (size_t)s * P, bytes);
        p->steps[s] = 0;
        if (cursors) cursors[s].epoch = 0, cursors[s].pos = 0;
    }
    size_t n = (size_t)p->n_slots * P;
    TL_TRY(tl_dist_allreduce_f32(d, p->params, n, "gather of adapter parameters", err));
    TL_TRY(tl_dist_allreduce_f32(d, p->m, n, "gather of Adam first moments", err));
    TL_TRY(tl_dist_allreduce_f32(d, p->v, n, "gather of Adam second moments", err));
    TL_TRY(tl_dist_allreduce_i64_host(d, p->steps, (size_t)p->n_slots, "gather of adapter step counts", err));
    if (cursors) {
        _Static_assert(sizeof(tl_cursor) == 2 * sizeof(int64_t), "tl_cursor is two int64_t");
        TL_TRY(tl_dist_allreduce_i64_host(d, (int64_t *)(void *)cursors, 2 * (size_t)p->n_slots,
                                          "gather of data cursors", err));
    }
    return TL_OK;
}

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
