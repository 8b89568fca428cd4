/* rl_loss: GRPO / RLOO advantages and the clipped per-token policy-gradient loss with the k3 KL (see
 * tl_rl_loss.h for the TRL lines each formula follows). Everything in double: the step converts the float
 * log-probabilities once, and the tests compare against a float64 torch transcription of TRL. */
#include "trainer/step/tl_rl_loss.h"

#include <math.h>
#include <string.h>

static const char *const norm_names[] = {"grpo", "bnpo", "dr_grpo"};
#define N_NORMS ((int)(sizeof norm_names / sizeof norm_names[0]))

/* TRL adds this to a standard deviation before dividing by it (grpo_trainer.py and rloo_trainer.py) */
#define TL_RL_STD_EPS 1e-4

tl_status tl_rl_norm_parse(const char *s, tl_rl_norm *n, tl_error *err) {
    for (int i = 0; s && i < N_NORMS; i++)
        if (strcmp(s, norm_names[i]) == 0) {
            *n = (tl_rl_norm)i;
            return TL_OK;
        }
    return tl_fail(err, TL_ERR_INPUT,
                   "task.loss_type: \"%s\" is not an RL loss normalization (expected grpo, bnpo "
                   "or dr_grpo)",
                   s ? s : "(null)");
}

const char *tl_rl_norm_name(tl_rl_norm n) { return (int)n >= 0 && (int)n < N_NORMS ? norm_names[n] : "?"; }

/* torch.std: unbiased (divides by n - 1); n >= 2 */
static void mean_std(const double *x, int n, double *mean, double *std) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    double m = s / n, q = 0;
    for (int i = 0; i < n; i++) q += (x[i] - m) * (x[i] - m);
    *mean = m;
    *std = sqrt(q / (n - 1));
}

void tl_rl_advantages(tl_rl_adv_kind kind, int n_groups, int g, int scale, const double *r, double *adv,
                      double *group_std) {
    int64_t n = (int64_t)n_groups * g;
    if (g < 2) {
        for (int64_t i = 0; i < n; i++) adv[i] = NAN;
        if (group_std)
            for (int k = 0; k < n_groups; k++) group_std[k] = NAN;
        return;
    }
    for (int k = 0; k < n_groups; k++) {
        const double *rk = r + (int64_t)k * g;
        double *ak = adv + (int64_t)k * g;
        double mean, std;
        mean_std(rk, g, &mean, &std);
        if (group_std) group_std[k] = std;
        if (kind == TL_RL_ADV_GRPO) {
            for (int j = 0; j < g; j++) ak[j] = scale ? (rk[j] - mean) / (std + TL_RL_STD_EPS) : rk[j] - mean;
        } else {
            double sum = mean * g;
            for (int j = 0; j < g; j++) ak[j] = rk[j] - (sum - rk[j]) / (g - 1);
        }
    }
    if (kind == TL_RL_ADV_RLOO && scale && n >= 2) {
        double mean, std;
        mean_std(adv, (int)n, &mean, &std);
        for (int64_t i = 0; i < n; i++) adv[i] = (adv[i] - mean) / (std + TL_RL_STD_EPS);
    }
}

tl_status tl_rl_loss_opts_check(const tl_rl_loss_opts *o, tl_error *err) {
    if ((int)o->norm < 0 || (int)o->norm >= N_NORMS)
        return tl_fail(err, TL_ERR_INPUT, "task.loss_type: unknown normalization %d", (int)o->norm);
    if (!(o->beta >= 0 && isfinite(o->beta)))
        return tl_fail(err, TL_ERR_INPUT, "task.beta: %g, expected a finite number >= 0", o->beta);
    if (!(o->eps_low > 0 && o->eps_low < 1))
        return tl_fail(err, TL_ERR_INPUT, "task.epsilon: %g, expected 0 < value < 1", o->eps_low);
    if (!(o->eps_high > 0 && isfinite(o->eps_high)))
        return tl_fail(err, TL_ERR_INPUT, "task.epsilon_high: %g, expected a finite number > 0", o->eps_high);
    if (o->max_completion < 1)
        return tl_fail(err, TL_ERR_INPUT, "task.max_completion_length: %d, expected >= 1", o->max_completion);
    return TL_OK;
}

void tl_rl_loss(const tl_rl_loss_opts *o, const tl_rl_batch *b, double *dlogp, tl_rl_loss_out *out) {
    memset(out, 0, sizeof *out);
    const double lo = 1.0 - o->eps_low, hi = 1.0 + o->eps_high;
    const int use_kl = o->beta != 0;
    int64_t total = b->off[b->n_seq] - b->off[0];
    double n_norm = b->group_seqs > 0 ? (double)b->group_seqs : (double)b->n_seq;
    int64_t t_norm = b->group_seqs > 0 ? b->group_tokens : total;
    /* each token's loss is scaled by w: grpo 1 / (n_seq * max(len, 1)), bnpo 1 / max(total, 1),
     * dr_grpo 1 / (n_seq * max_completion), n_seq and total those of the whole group */
    double w_all = 0;
    if (o->norm == TL_RL_NORM_BNPO) w_all = 1.0 / (double)(t_norm > 1 ? t_norm : 1);
    else if (o->norm == TL_RL_NORM_DR_GRPO) w_all = 1.0 / (n_norm * o->max_completion);
    double loss = 0;
    for (int s = 0; s < b->n_seq; s++) {
        int64_t t0 = b->off[s], t1 = b->off[s + 1], len = t1 - t0;
        double w = o->norm == TL_RL_NORM_GRPO ? 1.0 / (n_norm * (double)(len > 1 ? len : 1)) : w_all;
        double a = b->adv[s], seq = 0;
        for (int64_t t = t0; t < t1; t++) {
            double c1 = exp(b->logp[t] - b->old[t]);
            double c2 = c1 < lo ? lo : c1 > hi ? hi : c1;
            double l1 = c1 * a, l2 = c2 * a;
            double l = -(l1 < l2 ? l1 : l2);
            double d = l1 <= l2 ? -a * c1 : 0.0;
            if (c1 < lo && a < 0) out->low_clipped++;
            if (c1 > hi && a > 0) out->high_clipped++;
            if (use_kl) {
                /* k3 = e^x - x - 1 with x = ref - logp; expm1 keeps it accurate where x is small and the
                 * three terms nearly cancel (TRL's torch expression loses those digits) */
                double x = b->ref[t] - b->logp[t], em1 = expm1(x);
                double k3 = em1 - x;
                l += o->beta * k3;
                d -= o->beta * em1;
                out->kl += k3;
            }
            seq += l;
            dlogp[t] = w * d;
        }
        loss += w * seq;
    }
    out->loss = loss;
    out->tokens = total;
}
