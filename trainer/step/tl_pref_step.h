/* tl_pref_step: one micro-batch of preference pairs through the model, for DPO-family losses and for reward
 * models. The chosen and rejected sequences of a pair are in the same micro-batch; pairs are given by the
 * indices of their two sequences in it.
 *
 * DPO: the reference log-probabilities come from a forward pass of the bare base model (ref == NULL) or of a
 * frozen reference pool (adapter.init_from), or from the caller's cache; then the policy forward gives the
 * policy log-probabilities; per pair, tl_pref_loss gives the loss and d/d(sum of response log-probs), which is
 * scattered onto the response tokens as dL/dlogp, and the backward pass accumulates LoRA gradients.
 * Reward: the final hidden state of each sequence's last token times the adapter's score head gives r; the
 * Bradley-Terry loss gives dr, hence the gradient into those hidden states and into the head. */
#ifndef TL_PREF_STEP_H
#define TL_PREF_STEP_H

#include "trainer/model/tl_model.h"
#include "trainer/step/tl_pref_loss.h"

typedef struct {
    int n;               /* pairs in this micro-batch */
    const int32_t *seq_c, *seq_r; /* [n] sequence index of chosen and rejected within the micro-batch */
    const int32_t *adapter;       /* [n] adapter (pool slot) of each pair */
    const double *weight;         /* [n] loss weight (1 / pairs of its adapter in the step); NULL for eval */
    /* DPO reference log-prob sums: when ref_in is given (2 per pair: chosen, rejected) no reference forward
     * runs; ref_out, when given, receives them (the caller caches them, task.precompute_ref). */
    const double *ref_in;
    double *ref_out;
    /* DPO reference policy when no ref_in: a frozen pool of the trained pool's layout (adapter.init_from), or
     * NULL for the bare base model */
    const tl_lora_pool *ref;
} tl_pair_set;

/* Per-adapter results of a micro-batch: stats[adapter] accumulates every pair's loss/rewards/accuracy. */
typedef struct {
    tl_pref_stats *stats; /* [pool size] */
} tl_pref_acc;

/* Scratch for up to max_tokens rows and max_seqs sequences (host), allocated once. */
typedef struct tl_pref_scratch tl_pref_scratch;
tl_status tl_pref_scratch_create(int max_tokens, int max_seqs, int hidden, tl_pref_scratch **out, tl_error *err);
void tl_pref_scratch_free(tl_pref_scratch *s);

/* train = 0 evaluates only (no backward, no gradients). force_base: the policy is the bare base model (eval
 * of the base model; then rewards are 0 for DPO, and meaningless for reward models). */
tl_status tl_dpo_microbatch(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_pref_scratch *sc,
                            const tl_host_mb *mb, const tl_pair_set *ps, const tl_pref_opts *o, int train,
                            tl_pref_acc *acc, tl_error *err);
tl_status tl_reward_microbatch(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_pref_scratch *sc,
                               const tl_host_mb *mb, const tl_pair_set *ps, double center_rewards, int train,
                               tl_pref_acc *acc, tl_error *err);

#endif
