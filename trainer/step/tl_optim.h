/* tl_optim: learning-rate schedules and the per-adapter optimizer step (clipping + AdamW).
 *
 * Isolation: every quantity that scales an adapter's update (its gradient norm and clipping factor, its Adam
 * step count and bias corrections, its schedule position) is computed from that adapter alone. */
#ifndef TL_OPTIM_H
#define TL_OPTIM_H

#include <stdint.h>

#include "trainer/config/tl_config.h"
#include "trainer/model/tl_model.h"

/* What the optimizer reads of the configuration (train.*). */
typedef struct {
    double lr;              /* peak learning rate */
    tl_schedule schedule;   /* constant | linear | cosine */
    int64_t warmup_steps;
    double weight_decay;
    double grad_clip;       /* max gradient norm, 0 = no clipping */
    double beta1, beta2, adam_eps;
} tl_optim_opts;

/* The optimizer options of a run's configuration. */
tl_optim_opts tl_optim_opts_of(const tl_config *c);

/* Learning rate before optimizer step `step` (0-based) of an adapter that will take `total` steps; the
 * schedules of HF transformers' get_{constant,linear,cosine}_schedule_with_warmup. */
double tl_schedule_lr(const tl_optim_opts *o, int64_t step, int64_t total);

/* Clips and applies AdamW to the listed slots, then increments their step counts. total_steps[slot] is the
 * number of optimizer steps that slot takes in the whole run. grad_norm[i] and lr[i] receive the pre-clip
 * gradient norm and the learning rate used for active[i]; hs is caller-owned scratch of n_active entries (the
 * step loop allocates nothing). */
tl_status tl_optim_step(tl_lora_pool *p, tl_backend *be, const tl_optim_opts *c, const int32_t *active, int n_active,
                        const int64_t *total_steps, float *grad_norm, float *lr, tl_adam_slot *hs, tl_error *err);

#endif
