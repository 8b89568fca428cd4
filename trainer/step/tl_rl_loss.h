/* tl_rl_loss: the online-RL math of task.type grpo and rloo, as pure functions on per-token log-probabilities
 * and per-completion rewards. No backend, no allocation: the RL step (tl_rl_step.h) gathers one adapter's
 * completions of a step, calls tl_rl_advantages on their rewards and tl_rl_loss on their tokens, and scatters the
 * returned d loss / d logp onto the completion tokens of the policy's forward pass.
 *
 * The formulas are TRL's, pinned to two releases (docs/rl.md cites each line):
 *   GRPO advantages and the per-token loss: trl v0.19.1, trl/trainer/grpo_trainer.py
 *     (_generate_and_score_completions: mean / std of each group, scale_rewards, 1e-4;
 *      _compute_loss: coef_1 = exp(logp - old), coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high),
 *      -min(coef_1 A, coef_2 A) + beta k3, and the loss_type normalizations grpo, bnpo, dr_grpo).
 *   RLOO advantages: trl v0.22.0, trl/trainer/rloo_trainer.py (the leave-one-out baseline
 *     (sum of the group - r) / (G - 1); normalize_advantages: (A - mean) / (std + 1e-4)).
 * tailor applies the same per-token loss to both (TRL's RLOOTrainer instead uses a sequence-level ratio and puts
 * a k1 KL into the reward; docs/rl.md says what differs and why). "Batch" in TRL's normalizations is here one
 * adapter's completions of one step, so no adapter's loss depends on another's data. */
#ifndef TL_RL_LOSS_H
#define TL_RL_LOSS_H

#include <stdint.h>

#include "kernels/tl_status.h"

typedef enum { TL_RL_ADV_GRPO, TL_RL_ADV_RLOO } tl_rl_adv_kind;
/* TRL's loss_type: grpo (each completion's token mean, then the mean over completions), bnpo (token sum over
 * token count of the whole batch), dr_grpo (token sum over completions x max_completion_length). */
typedef enum { TL_RL_NORM_GRPO, TL_RL_NORM_BNPO, TL_RL_NORM_DR_GRPO } tl_rl_norm;

/* "grpo", "bnpo", "dr_grpo" (exact); an unknown name is TL_ERR_INPUT naming task.loss_type. */
tl_status tl_rl_norm_parse(const char *s, tl_rl_norm *n, tl_error *err);
const char *tl_rl_norm_name(tl_rl_norm n);

/* Advantages of n_groups groups of g completions each (group k = completions k*g .. k*g+g-1, the g samples of
 * one prompt), from their rewards r[n_groups * g] into adv[n_groups * g]. Needs g >= 2 (both baselines are
 * undefined for one sample: NaN is written then).
 *   GRPO: A = r - mean(group); scale != 0: A /= (std(group) + 1e-4), std unbiased (torch's std, as TRL).
 *   RLOO: A = r - (sum(group) - r) / (g - 1); scale != 0: A = (A - mean(all)) / (std(all) + 1e-4) over all
 *         n_groups * g advantages given (TRL's normalize_advantages over its batch; here one adapter's).
 * group_std, when not NULL, receives each group's unbiased reward std [n_groups] (TRL's reward_std metric). */
void tl_rl_advantages(tl_rl_adv_kind kind, int n_groups, int g, int scale, const double *r, double *adv,
                      double *group_std);

typedef struct {
    tl_rl_norm norm;
    double beta;              /* >= 0: weight of the k3 KL to the reference; 0 reads no reference */
    double eps_low, eps_high; /* > 0: the ratio is clipped to [1 - eps_low, 1 + eps_high] (TRL epsilon, epsilon_high) */
    int max_completion;       /* >= 1: dr_grpo's constant divisor (TRL max_completion_length) */
} tl_rl_loss_opts;

/* Checks the ranges above; an error names the task.* key. */
tl_status tl_rl_loss_opts_check(const tl_rl_loss_opts *o, tl_error *err);

/* One adapter's completions: n_seq completions, completion s's tokens at [off[s], off[s+1]) of the token arrays
 * (only completion tokens: prompt tokens are never trained). logp: the policy's log-probability of each token
 * (what the loss differentiates); old: the sampling policy's (TRL old_per_token_logps; equal to logp when each
 * rollout is used for one update, where the ratio is 1); ref: the reference policy's (read only when beta > 0,
 * may be NULL otherwise); adv[n_seq]: each completion's advantage. */
typedef struct {
    int n_seq;
    const int64_t *off; /* [n_seq + 1], nondecreasing (token arrays are indexed by off[] itself) */
    const double *logp, *old, *ref, *adv;
    /* The batch may be one part of an adapter's completions (those in one micro-batch): the normalization is
     * then the whole group's, given here: its completions and completion tokens (0, 0: this batch is the whole
     * group). The parts' losses and gradients sum to the whole group's. */
    int group_seqs;
    int64_t group_tokens;
} tl_rl_batch;

/* Sums over the batch's completion tokens, and the loss; means by the caller (kl / tokens, clipped / tokens). */
typedef struct {
    double loss;          /* the normalized loss of this batch (TRL's loss for a batch of one adapter) */
    int64_t tokens;       /* completion tokens */
    double kl;            /* sum of the k3 KL over tokens (0 when beta == 0: TRL logs kl only then too) */
    int64_t low_clipped;  /* tokens with ratio < 1 - eps_low and A < 0 (TRL is_low_clipped) */
    int64_t high_clipped; /* tokens with ratio > 1 + eps_high and A > 0 (TRL is_high_clipped) */
} tl_rl_loss_out;

/* The loss and dlogp[tokens] = d loss / d logp of every token (written for every token of the batch). The
 * gradient is torch autograd's at the same point: d(-min(c1 A, c2 A))/d logp = -A c1 where c1 A <= c2 A (the
 * unclipped branch, ties included: torch splits a tie's gradient between two equal branches), 0 where the
 * clipped branch is strictly smaller; the k3 term adds beta (1 - exp(ref - logp)). */
void tl_rl_loss(const tl_rl_loss_opts *o, const tl_rl_batch *b, double *dlogp, tl_rl_loss_out *out);

#endif
