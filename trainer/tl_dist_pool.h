/* tl_dist_pool: the adapter pool across ranks.
 *
 * data_parallel: every rank holds every adapter; tl_dist_pool_reduce_grads sums each active slot's gradient over
 * the ranks (a slot's sum never mixes in another slot's numbers).
 *
 * user_shard: each rank's pool holds only the adapters it owns (a "local pool": local slot a is adapter gidx[a]
 * of the run, gidx ascending). What needs every adapter at once — a checkpoint, the exported adapters
 * — goes through a view: the whole run's state in host memory, in the run's adapter order, with the layout of
 * a local pool; tl_dist_pool_collect builds it on one rank from everybody's local pools. (A resume reads each
 * rank's rows straight from the checkpoint: tl_checkpoint_load_rows.) */
#ifndef TL_DIST_POOL_H
#define TL_DIST_POOL_H

#include "../data/tl_batcher.h"
#include "tl_dist.h"
#include "tl_model.h"

/* Sums the gradients of the active slots over all ranks, in place. step names the collective in errors. */
tl_status tl_dist_pool_reduce_grads(tl_dist *d, tl_lora_pool *p, const int32_t *active, int n_active, int64_t step,
                                    tl_error *err);

typedef struct {
    tl_backend *cpu;    /* the view's memory: a CPU backend (host memory), so checkpoint and export code reads it */
    tl_lora_pool pool;  /* n_slots adapters; params, m, v, steps owned here; layout arrays and names borrowed */
    tl_cursor *cursors; /* [n_slots] data cursors */
} tl_pool_view;

/* An empty view (zeros) of n adapters named names[n] (borrowed), with the layout of `layout`. */
tl_status tl_pool_view_create(const tl_lora_pool *layout, char *const *names, int n, tl_pool_view *v, tl_error *err);
void tl_pool_view_free(tl_pool_view *v);

/* Collective. Every rank passes its local pool (backend be; local slot a is adapter gidx[a] of n_global) and its
 * cursors [local n_slots]; rank `root` gets the whole state in *v (created here, names[n_global] borrowed); the
 * others' *v stays empty (zeroed). Parameters, Adam moments, step counts and cursors travel as sums in which only
 * the owner contributes, so the view holds each owner's numbers exactly. Moves n_global x 3 x P floats in
 * chunks of at most 64 MiB. */
tl_status tl_dist_pool_collect(tl_dist *d, const tl_lora_pool *local, tl_backend *be, const int32_t *gidx,
                               const tl_cursor *cursors, char *const *names, int n_global, int root, tl_pool_view *v,
                               tl_error *err);

#endif
