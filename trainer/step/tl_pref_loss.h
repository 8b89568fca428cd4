/* tl_pref_loss: the preference losses (DPO family, SimPO) and the Bradley-Terry reward-model loss, as pure
 * math on per-sequence sums. No backend, no allocation: the trainer reduces each response's per-token
 * log-probabilities to a sum, calls tl_pref_loss per pair, and scatters dpc / dpr back onto the response tokens
 * of the policy's chosen / rejected sequences (d sum / d logp_token = 1 for every response token).
 *
 * The formulas are TRL's (DPOTrainer.dpo_loss and concatenated_forward of TRL 0.9 to 0.12, CPOTrainer.cpo_loss
 * for simpo, RewardTrainer.compute_loss for the reward model); docs/preference.md gives each with its TRL name,
 * and tests/torch/test_pref_loss_vs_trl.py holds tailor to TRL's expressions written in torch. */
#ifndef TL_PREF_LOSS_H
#define TL_PREF_LOSS_H

#include <stdint.h>

#include "kernels/tl_status.h"

typedef enum { TL_PREF_SIGMOID, TL_PREF_IPO, TL_PREF_HINGE, TL_PREF_ROBUST, TL_PREF_SIMPO } tl_pref_kind;

/* "sigmoid", "ipo", "hinge", "robust", "simpo" (TRL's loss_type names, exact and case-sensitive). An unknown
 * name is TL_ERR_INPUT naming task.loss and the accepted values. */
tl_status tl_pref_kind_parse(const char *s, tl_pref_kind *k, tl_error *err);
/* The name tl_pref_kind_parse accepts for k ("?" for a value outside the enum). */
const char *tl_pref_kind_name(tl_pref_kind k);
/* 1 when the loss reads the reference log-probabilities (all but simpo), so the trainer can skip the reference
 * forward for reference-free losses. */
int tl_pref_needs_reference(tl_pref_kind k);

typedef struct {
    tl_pref_kind kind;
    double beta;            /* > 0: TRL's beta (DPO temperature; IPO's tau; SimPO's beta) */
    double label_smoothing; /* [0, 0.5): sigmoid, robust and simpo read it; ipo and hinge ignore it, as TRL does */
    double gamma;           /* >= 0: SimPO's target margin (TRL's simpo_gamma); other kinds ignore it */
    double sft_weight;      /* >= 0: TRL's rpo_alpha: adds sft_weight * (-pc / nc) to every pair's loss */
} tl_pref_opts;

/* Checks the ranges above; an error names the task.* key (task.beta, task.label_smoothing, task.gamma,
 * task.sft_weight) and the expected range. */
tl_status tl_pref_opts_check(const tl_pref_opts *o, tl_error *err);

/* One preference pair: summed log-probabilities of the response tokens (prompt tokens excluded) under the
 * policy (pc chosen, pr rejected) and under the reference (rc, rr), and the response token counts. */
typedef struct {
    double pc, pr, rc, rr;
    int64_t nc, nr;
} tl_pref_logps;

/* loss of this pair and its derivatives w.r.t. pc and pr (the reference is a constant). reward_* and logp_*
 * are what TRL logs for the pair: rewards beta * (policy - reference) log-ratio, logps the policy's log-prob;
 * for ipo and simpo both are on per-token means (sum / n), because TRL averages the log-probs of those losses
 * (ipo: reward beta * (pc - rc) / nc; simpo, reference-free: reward beta * pc / nc). */
typedef struct {
    double loss, dpc, dpr;
    double reward_chosen, reward_rejected;
    double logp_chosen, logp_rejected;
} tl_pref_out;

/* Computes the loss of one pair. Per-token means (ipo, simpo, and the sft term when sft_weight > 0) need
 * nc >= 1 and nr >= 1: the caller skips a pair whose chosen or rejected response has no token (it has nothing to
 * train on); given one anyway, every output is NaN so the mistake cannot pass unnoticed. Options are assumed
 * valid (tl_pref_opts_check). */
void tl_pref_loss(const tl_pref_opts *o, const tl_pref_logps *p, tl_pref_out *out);

/* Bradley-Terry loss of a reward model on one pair of scalar rewards (TRL RewardTrainer):
 *   loss = -logsigmoid(r_chosen - r_rejected) + center_rewards * (r_chosen + r_rejected)^2
 * with TRL's center_rewards_coefficient, whose mean over the batch becomes the mean over pairs when the
 * caller averages pair losses. d_rc, d_rr: derivatives of loss w.r.t. r_chosen and r_rejected. */
void tl_bt_loss(double r_chosen, double r_rejected, double center_rewards, double *loss, double *d_rc,
                double *d_rr);

/* Metric accumulator over pairs (sums; means by tl_pref_stats_mean). TRL's metric names, in the order of
 * tl_pref_metric_names: rewards/chosen, rewards/rejected, rewards/accuracies (fraction of pairs with
 * reward_chosen > reward_rejected, strictly, as TRL), rewards/margins (mean reward_chosen - reward_rejected),
 * logps/chosen, logps/rejected (policy log-probs as in tl_pref_out; reward-model pairs have none). */
typedef struct {
    int64_t n;      /* pairs added */
    int64_t n_logp; /* pairs added with log-probs (tl_pref_stats_add; not tl_pref_stats_add_bt) */
    double loss, reward_chosen, reward_rejected, accuracy, margin, logp_chosen, logp_rejected;
} tl_pref_stats;

enum {
    TL_PREF_M_LOSS, TL_PREF_M_REWARDS_CHOSEN, TL_PREF_M_REWARDS_REJECTED, TL_PREF_M_REWARDS_ACCURACIES,
    TL_PREF_M_REWARDS_MARGINS, TL_PREF_M_LOGPS_CHOSEN, TL_PREF_M_LOGPS_REJECTED, TL_PREF_N_METRICS
};
/* "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
 * "logps/rejected" (index by TL_PREF_M_*) */
extern const char *const tl_pref_metric_names[TL_PREF_N_METRICS];

void tl_pref_stats_init(tl_pref_stats *s);
void tl_pref_stats_add(tl_pref_stats *s, const tl_pref_out *o);
/* A reward-model pair: its loss (tl_bt_loss) and its two rewards. */
void tl_pref_stats_add_bt(tl_pref_stats *s, double loss, double r_chosen, double r_rejected);
/* dst += src (e.g. per-adapter stats into a run total, or across ranks after a reduction). */
void tl_pref_stats_merge(tl_pref_stats *dst, const tl_pref_stats *src);
/* Means over the pairs added, indexed by TL_PREF_M_*; NaN for a mean over no pair (n = 0, or n_logp = 0 for
 * the logps). */
void tl_pref_stats_mean(const tl_pref_stats *s, double means[TL_PREF_N_METRICS]);

#endif
