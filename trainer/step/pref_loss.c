/* pref_loss: TRL's preference losses on per-sequence log-prob sums, with analytic derivatives.
 *
 * Every loss here is a function of one scalar z (the beta-scaled logit, or IPO's logit) of pc and pr, so each
 * kind computes (loss, dL/dz, dz/dpc, dz/dpr) and the chain rule is applied once at the end. log-sigmoid and
 * sigmoid use forms that never overflow: a DPO logit is a difference of summed log-probs and easily reaches
 * hundreds of nats, where exp() of it does not exist in double. */
#include "trainer/step/tl_pref_loss.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[] = {"sigmoid", "ipo", "hinge", "robust", "simpo"};
#define N_KINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

const char *const tl_pref_metric_names[TL_PREF_N_METRICS] = {
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
    "logps/rejected",
};

tl_status tl_pref_kind_parse(const char *s, tl_pref_kind *k, tl_error *err) {
    for (int i = 0; s && i < N_KINDS; i++)
        if (strcmp(s, kind_names[i]) == 0) {
            *k = (tl_pref_kind)i;
            return TL_OK;
        }
    return tl_fail(err, TL_ERR_INPUT, "task.loss: \"%s\" is not a preference loss (expected sigmoid, ipo, hinge, "
                   "robust or simpo)", s ? s : "(null)");
}

const char *tl_pref_kind_name(tl_pref_kind k) {
    return (int)k >= 0 && (int)k < N_KINDS ? kind_names[k] : "?";
}

int tl_pref_needs_reference(tl_pref_kind k) { return k != TL_PREF_SIMPO; }

tl_status tl_pref_opts_check(const tl_pref_opts *o, tl_error *err) {
    if ((int)o->kind < 0 || (int)o->kind >= N_KINDS)
        return tl_fail(err, TL_ERR_INPUT, "task.loss: unknown preference loss kind %d", (int)o->kind);
    if (!(o->beta > 0 && isfinite(o->beta)))
        return tl_fail(err, TL_ERR_INPUT, "task.beta: %g, expected a finite number > 0", o->beta);
    if (!(o->label_smoothing >= 0 && o->label_smoothing < 0.5))
        return tl_fail(err, TL_ERR_INPUT, "task.label_smoothing: %g, expected 0 <= value < 0.5",
                       o->label_smoothing);
    if (!(o->gamma >= 0 && isfinite(o->gamma)))
        return tl_fail(err, TL_ERR_INPUT, "task.gamma: %g, expected a finite number >= 0", o->gamma);
    if (!(o->sft_weight >= 0 && isfinite(o->sft_weight)))
        return tl_fail(err, TL_ERR_INPUT, "task.sft_weight: %g, expected a finite number >= 0", o->sft_weight);
    return TL_OK;
}

/* log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): the exp argument is never positive (torch's form too). */
static double log_sigmoid(double x) { return fmin(x, 0.0) - log1p(exp(-fabs(x))); }

static double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* -(1-ls) logsig(z) - ls logsig(-z), the smoothed DPO loss shared by sigmoid and simpo; d/dz logsig(z) =
 * sigmoid(-z). */
static void smoothed_logistic(double z, double ls, double *loss, double *dz) {
    *loss = -(1.0 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z);
    *dz = -(1.0 - ls) * sigmoid(-z) + ls * sigmoid(z);
}

void tl_pref_loss(const tl_pref_opts *o, const tl_pref_logps *p, tl_pref_out *out) {
    const double b = o->beta, ls = o->label_smoothing;
    int per_token = o->kind == TL_PREF_IPO || o->kind == TL_PREF_SIMPO;
    if ((per_token || o->sft_weight != 0) && (p->nc < 1 || p->nr < 1)) {
        out->loss = out->dpc = out->dpr = NAN;
        out->reward_chosen = out->reward_rejected = out->logp_chosen = out->logp_rejected = NAN;
        return;
    }
    /* TRL divides every log-prob of ipo and simpo (policy and reference alike) by the completion length before
     * the loss, so the logit, the rewards and the logged logps are all per-token means for those kinds. */
    double nc = per_token ? (double)p->nc : 1.0, nr = per_token ? (double)p->nr : 1.0;
    double pc = p->pc / nc, pr = p->pr / nr, rc = p->rc / nc, rr = p->rr / nr;

    double loss = 0, dz = 0, z = 0, zc = 0; /* zc = dz/d(pc / nc); dz/d(pr / nr) = -zc */
    switch (o->kind) {
    case TL_PREF_SIGMOID:
        z = b * ((pc - pr) - (rc - rr));
        zc = b;
        smoothed_logistic(z, ls, &loss, &dz);
        break;
    case TL_PREF_ROBUST:
        z = b * ((pc - pr) - (rc - rr));
        zc = b;
        loss = (-(1.0 - ls) * log_sigmoid(z) + ls * log_sigmoid(-z)) / (1.0 - 2.0 * ls);
        dz = (-(1.0 - ls) * sigmoid(-z) - ls * sigmoid(z)) / (1.0 - 2.0 * ls);
        break;
    case TL_PREF_HINGE: {
        z = b * ((pc - pr) - (rc - rr));
        zc = b;
        double h = 1.0 - z;
        /* relu's derivative at 0 is 0 in torch; keep it so gradients match TRL at the kink too */
        loss = h > 0 ? h : 0.0;
        dz = h > 0 ? -1.0 : 0.0;
        break;
    }
    case TL_PREF_IPO: {
        z = (pc - pr) - (rc - rr); /* beta enters only through the target 1/(2 beta) */
        zc = 1.0;
        double d = z - 1.0 / (2.0 * b);
        loss = d * d;
        dz = 2.0 * d;
        break;
    }
    case TL_PREF_SIMPO:
        z = b * ((pc - pr) - o->gamma / b);
        zc = b;
        smoothed_logistic(z, ls, &loss, &dz);
        break;
    }
    double dpc = dz * zc / nc, dpr = -dz * zc / nr;
    if (o->sft_weight != 0) {
        /* RPO (TRL's rpo_alpha, added as in TRL >= 0.10): the mean NLL of the chosen response */
        loss += o->sft_weight * (-p->pc / (double)p->nc);
        dpc += -o->sft_weight / (double)p->nc;
    }
    out->loss = loss;
    out->dpc = dpc;
    out->dpr = dpr;
    if (o->kind == TL_PREF_SIMPO) {
        out->reward_chosen = b * pc;
        out->reward_rejected = b * pr;
    } else {
        out->reward_chosen = b * (pc - rc);
        out->reward_rejected = b * (pr - rr);
    }
    out->logp_chosen = pc;
    out->logp_rejected = pr;
}

void tl_bt_loss(double r_chosen, double r_rejected, double center_rewards, double *loss, double *d_rc,
                double *d_rr) {
    double m = r_chosen - r_rejected, s = r_chosen + r_rejected;
    double g = -sigmoid(-m); /* d(-logsig(m))/dm */
    *loss = -log_sigmoid(m) + center_rewards * s * s;
    *d_rc = g + 2.0 * center_rewards * s;
    *d_rr = -g + 2.0 * center_rewards * s;
}

void tl_pref_stats_init(tl_pref_stats *s) { memset(s, 0, sizeof *s); }

static void add_common(tl_pref_stats *s, double loss, double rc, double rr) {
    s->n++;
    s->loss += loss;
    s->reward_chosen += rc;
    s->reward_rejected += rr;
    s->accuracy += rc > rr ? 1.0 : 0.0;
    s->margin += rc - rr;
}

void tl_pref_stats_add(tl_pref_stats *s, const tl_pref_out *o) {
    add_common(s, o->loss, o->reward_chosen, o->reward_rejected);
    s->n_logp++;
    s->logp_chosen += o->logp_chosen;
    s->logp_rejected += o->logp_rejected;
}

void tl_pref_stats_add_bt(tl_pref_stats *s, double loss, double r_chosen, double r_rejected) {
    add_common(s, loss, r_chosen, r_rejected);
}

void tl_pref_stats_merge(tl_pref_stats *dst, const tl_pref_stats *src) {
    dst->n += src->n;
    dst->n_logp += src->n_logp;
    dst->loss += src->loss;
    dst->reward_chosen += src->reward_chosen;
    dst->reward_rejected += src->reward_rejected;
    dst->accuracy += src->accuracy;
    dst->margin += src->margin;
    dst->logp_chosen += src->logp_chosen;
    dst->logp_rejected += src->logp_rejected;
}

void tl_pref_stats_mean(const tl_pref_stats *s, double means[TL_PREF_N_METRICS]) {
    double inv = s->n > 0 ? 1.0 / (double)s->n : NAN;
    double inv_l = s->n_logp > 0 ? 1.0 / (double)s->n_logp : NAN;
    means[TL_PREF_M_LOSS] = s->loss * inv;
    means[TL_PREF_M_REWARDS_CHOSEN] = s->reward_chosen * inv;
    means[TL_PREF_M_REWARDS_REJECTED] = s->reward_rejected * inv;
    means[TL_PREF_M_REWARDS_ACCURACIES] = s->accuracy * inv;
    means[TL_PREF_M_REWARDS_MARGINS] = s->margin * inv;
    means[TL_PREF_M_LOGPS_CHOSEN] = s->logp_chosen * inv_l;
    means[TL_PREF_M_LOGPS_REJECTED] = s->logp_rejected * inv_l;
}
