/* tl_dist_pool: the adapter pool across ranks — gathering owned adapters, reducing gradients.
 *
 * Every rank holds the whole pool (all slots). Under user_shard a rank trains only the slots it owns, so the
 * others' copies go stale; tl_dist_pool_gather makes every rank's pool (parameters, Adam moments, step counts and
 * data cursors) equal to the owners' before a checkpoint, an evaluation or the export. Under data_parallel every
 * rank trains every active slot on a share of the step's micro-batches; tl_dist_pool_reduce_grads sums each
 * active slot's gradient over the ranks (a slot's sum never mixes in another slot's numbers). */
#ifndef TL_DIST_POOL_H
#define TL_DIST_POOL_H

#include "../data/tl_batcher.h"
#include "tl_dist.h"
#include "tl_model.h"

/* owner[s]: the rank that owns slot s. cursors [n_slots] or NULL. Non-owned slots are zeroed here and the pool
 * summed over ranks, so the result is each owner's state exactly (x + 0 = x). */
tl_status tl_dist_pool_gather(tl_dist *d, tl_lora_pool *p, tl_backend *be, const int *owner, tl_cursor *cursors,
                              tl_error *err);

/* Sums the gradients of the active slots over all ranks, in place. step names the collective in errors. */
tl_status tl_dist_pool_reduce_grads(tl_dist *d, tl_lora_pool *p, const int32_t *active, int n_active, int64_t step,
                                    tl_error *err);

#endif
