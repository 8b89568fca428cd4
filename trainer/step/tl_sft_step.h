/* tl_sft_step: one micro-batch of SFT sequences through the model, the counterpart of tl_pref_step.h.
 *
 * The forward pass gives each target token's log-probability, the backward pass accumulates LoRA gradients
 * (weights: 1 / target tokens of the token's adapter in the step, tl_batcher.h), and each adapter's share of
 * the step's loss is accumulated from the same numbers. */
#ifndef TL_SFT_STEP_H
#define TL_SFT_STEP_H

#include "trainer/model/tl_model.h"

/* Trains on mb: gradients into p->grads, and adapter_loss[slot] -= weight * logp for every target token
 * (the caller zeroes the active slots' entries once per step). logp: scratch of mb->n_tok floats. */
tl_status tl_sft_microbatch(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *mb, float *logp,
                            double *adapter_loss, tl_error *err);

#endif
