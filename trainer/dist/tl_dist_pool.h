/* tl_dist_pool: the adapter pool across ranks.
 *
 * data_parallel: every rank holds every adapter; tl_dist_pool_reduce_grads sums each active slot's gradient over
 * the ranks (a slot's sum never mixes in another slot's numbers).
 *
 * user_shard: each rank's pool holds only the adapters it owns (a "local pool": local slot a is adapter gidx[a]
 * of the run, gidx ascending). A checkpoint or the exported adapters need every adapter: rank 0 writes them
 * while the collector below brings the rows in. (A resume reads each rank's rows straight from the checkpoint:
 * tl_checkpoint_load_rows.) */
#ifndef TL_DIST_POOL_H
#define TL_DIST_POOL_H

#include "data/tl_batcher.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/model/tl_model.h"

/* Sums the gradients of the active slots over all ranks, in place. step names the collective in errors. */
tl_status tl_dist_pool_reduce_grads(tl_dist *d, tl_lora_pool *p, const int32_t *active, int n_active, int64_t step,
                                    tl_error *err);

/* Collecting the whole run's state from local pools, for rank `root` to write a checkpoint or an export while
 * the rows arrive (tl_checkpoint_save_from, tl_export_pool_from). Every rank builds a collector over its local
 * pool; rank root hands tl_dist_collect_reader's reader to the writer, and every other rank runs the matching
 * tl_dist_collect_serve, which takes part in the same collectives in the same order. A row travels as a sum to
 * which only its owner contributes, so root receives each owner's numbers exactly. No rank holds more than one
 * chunk (about 64 MiB) of the others' state. */
typedef struct {
    tl_dist *d;
    const tl_lora_pool *local;
    tl_backend *be;
    int n_global;
    int *ginv; /* [n_global] local slot of each adapter of the run, -1 when another rank owns it */
} tl_dist_collector;

tl_status tl_dist_collect_init(tl_dist_collector *c, tl_dist *d, const tl_lora_pool *local, tl_backend *be,
                               const int32_t *gidx, int n_global, tl_error *err);
void tl_dist_collect_free(tl_dist_collector *c);
/* The reader root gives to the writer (tl_model.h). */
tl_state_reader tl_dist_collect_reader(tl_dist_collector *c);
/* Collective: step counts and cursors of every adapter of the run (n_global each), on every rank. */
tl_status tl_dist_collect_ints(tl_dist_collector *c, const tl_cursor *local_cursors, int64_t *steps,
                               tl_cursor *cursors, tl_error *err);
/* The other ranks' side of a checkpoint's state (export = 0: params, m, v in chunks) or of an export
 * (export = 1: params, one adapter at a time). */
tl_status tl_dist_collect_serve(tl_dist_collector *c, int export, tl_error *err);

#endif
