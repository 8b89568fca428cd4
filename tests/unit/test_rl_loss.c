/* test_rl_loss: the GRPO / RLOO math of trainer/step/rl_loss.c on fresh random batches: advantages against
 * long-double references and the RLOO identity A = g/(g-1) (r - mean); the loss of every normalization
 * (grpo, bnpo, dr_grpo), beta = 0 and beta > 0, clipped and unclipped ratios, against a long-double reference
 * written from TRL's per-token expression; d loss / d logp against central finite differences; clip counts;
 * the ratio-1 gradient in closed form. Agreement with TRL's torch expressions is tests/torch/test_rl_loss_vs_trl.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/tl_math.h"
#include "tests/lib/tl_check.h"
#include "trainer/step/tl_rl_loss.h"

static uint64_t g_rng;

static void check(const char *what, double err, double tol) {
    int ok = err <= tol; /* false for NaN */
    printf("%-66s err %-10.3g tol %-8.1g %s\n", what, err, tol, ok ? "ok" : "FAIL");
    CHECK(ok, "%s: err %.3g > tol %.1g", what, err, tol);
}

static double urand(double lo, double hi) { return lo + (hi - lo) * (double)(tl_mix64(g_rng++) >> 11) * 0x1.0p-53; }
static int irand(int lo, int hi) { return lo + (int)(tl_mix64(g_rng++) % (uint64_t)(hi - lo + 1)); }
static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-12); }
static void upd(double *worst, double e) {
    if (!(e <= *worst)) *worst = e; /* NaN sticks */
}

static void test_names(void) {
    tl_error err;
    tl_rl_norm n;
    const char *names[] = {"grpo", "bnpo", "dr_grpo"};
    for (int i = 0; i < 3; i++) {
        CHECK(tl_rl_norm_parse(names[i], &n, &err) == TL_OK && (int)n == i, "parse %s", names[i]);
        CHECK(strcmp(tl_rl_norm_name(n), names[i]) == 0);
    }
    CHECK(tl_rl_norm_parse("GRPO", &n, &err) == TL_ERR_INPUT && strstr(err.msg, "task.loss_type"));
    CHECK(tl_rl_norm_parse(NULL, &n, &err) == TL_ERR_INPUT);
    CHECK(strcmp(tl_rl_norm_name((tl_rl_norm)7), "?") == 0);
}

static void test_opts_check(void) {
    tl_error err;
    tl_rl_loss_opts ok = {.norm = TL_RL_NORM_GRPO, .beta = 0, .eps_low = 0.2, .eps_high = 0.28, .max_completion = 8};
    CHECK(tl_rl_loss_opts_check(&ok, &err) == TL_OK);
    struct {
        tl_rl_loss_opts o;
        const char *key;
    } bad[] = {
        {{.norm = TL_RL_NORM_GRPO, .beta = -0.1, .eps_low = 0.2, .eps_high = 0.2, .max_completion = 8}, "task.beta"},
        {{.norm = TL_RL_NORM_GRPO, .beta = NAN, .eps_low = 0.2, .eps_high = 0.2, .max_completion = 8}, "task.beta"},
        {{.norm = TL_RL_NORM_GRPO, .beta = 0, .eps_low = 0, .eps_high = 0.2, .max_completion = 8}, "task.epsilon"},
        {{.norm = TL_RL_NORM_GRPO, .beta = 0, .eps_low = 1, .eps_high = 0.2, .max_completion = 8}, "task.epsilon"},
        {{.norm = TL_RL_NORM_GRPO, .beta = 0, .eps_low = 0.2, .eps_high = 0, .max_completion = 8}, "task.epsilon_high"},
        {{.norm = TL_RL_NORM_GRPO, .beta = 0, .eps_low = 0.2, .eps_high = 0.2, .max_completion = 0},
         "task.max_completion_length"},
        {{.norm = (tl_rl_norm)9, .beta = 0, .eps_low = 0.2, .eps_high = 0.2, .max_completion = 8}, "task.loss_type"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(tl_rl_loss_opts_check(&bad[i].o, &err) == TL_ERR_INPUT && strstr(err.msg, bad[i].key), "bad opts %zu: %s",
              i, err.msg);
}

#define MAXG 16
#define MAXN 256

static void test_advantages(void) {
    double worst_g = 0, worst_r = 0, worst_id = 0, worst_std = 0;
    for (int trial = 0; trial < 200; trial++) {
        int g = irand(2, MAXG), ng = irand(1, MAXN / MAXG), scale = trial & 1;
        int n = ng * g;
        double r[MAXN], a[MAXN], b[MAXN], gs[MAXN / MAXG + 1];
        double spread = urand(0.01, 10);
        for (int i = 0; i < n; i++) r[i] = urand(-spread, spread) + (trial % 7 == 0 ? 3.0 : 0.0);
        if (trial % 11 == 0) /* a group whose rewards are all equal: std 0, advantages 0 */
            for (int j = 1; j < g; j++) r[j] = r[0];
        tl_rl_advantages(TL_RL_ADV_GRPO, ng, g, scale, r, a, gs);
        /* errors are relative to the largest value of the group, floored by the rounding of r itself (a group
         * of equal rewards has advantages that are rounding noise, divided by 1e-4 when scaled) */
        double rmax = 0;
        for (int i = 0; i < n; i++) rmax = fmax(rmax, fabs(r[i]));
        double floor_a = 1e-6 * (1 + rmax) * (scale ? 1e4 : 1), floor_s = 1e-3 * (1 + rmax);
        for (int k = 0; k < ng; k++) {
            long double m = 0, q = 0;
            for (int j = 0; j < g; j++) m += r[k * g + j];
            m /= g;
            for (int j = 0; j < g; j++) q += (r[k * g + j] - m) * (r[k * g + j] - m);
            long double sd = sqrtl(q / (g - 1));
            upd(&worst_std, fabs((double)sd - gs[k]) / fmax((double)sd, floor_s));
            for (int j = 0; j < g; j++) {
                long double want = r[k * g + j] - m;
                if (scale) want /= sd + 1e-4L;
                upd(&worst_g, fabs(a[k * g + j] - (double)want) / fmax(fabsl(want), floor_a));
            }
        }
        /* RLOO without scaling: the leave-one-out baseline gives g/(g-1) (r - group mean) */
        tl_rl_advantages(TL_RL_ADV_RLOO, ng, g, 0, r, b, NULL);
        for (int k = 0; k < ng; k++) {
            long double m = 0;
            for (int j = 0; j < g; j++) m += r[k * g + j];
            m /= g;
            for (int j = 0; j < g; j++) {
                long double want = (long double)g / (g - 1) * (r[k * g + j] - m);
                upd(&worst_id, fabs(b[k * g + j] - (double)want) / fmax(fabsl(want), 1e-6 * (1 + rmax)));
            }
        }
        if (scale) { /* RLOO scaled: over all advantages given */
            double c[MAXN];
            tl_rl_advantages(TL_RL_ADV_RLOO, ng, g, 1, r, c, NULL);
            long double m = 0, q = 0;
            for (int i = 0; i < n; i++) m += b[i];
            m /= n;
            for (int i = 0; i < n; i++) q += (b[i] - m) * (b[i] - m);
            long double sd = sqrtl(q / (n - 1));
            for (int i = 0; i < n; i++) {
                long double want = (b[i] - m) / (sd + 1e-4L);
                upd(&worst_r, fabs(c[i] - (double)want) / fmax(fabsl(want), 1e-2 * (1 + rmax)));
            }
        }
    }
    check("grpo advantages vs long double (scaled and not)", worst_g, 1e-9);
    check("grpo group std vs long double", worst_std, 1e-12);
    check("rloo advantages = g/(g-1) (r - mean)", worst_id, 1e-9);
    check("rloo normalized advantages vs long double", worst_r, 1e-9);
    double r[3] = {1, 2, 3}, a[3], s[3];
    tl_rl_advantages(TL_RL_ADV_GRPO, 3, 1, 1, r, a, s);
    CHECK(isnan(a[0]) && isnan(a[2]) && isnan(s[1]), "g = 1 gives NaN advantages");
    tl_rl_advantages(TL_RL_ADV_RLOO, 1, 3, 0, r, a, NULL);
    CHECK(a[0] == -1.5 && a[1] == 0 && a[2] == 1.5, "rloo {1,2,3}: %g %g %g", a[0], a[1], a[2]);
}

#define MAXS 12
#define MAXT (MAXS * 24)

typedef struct {
    int n_seq;
    int64_t off[MAXS + 1];
    double logp[MAXT], old[MAXT], ref[MAXT], adv[MAXS];
} batch;

/* mode 0: ratio 1 (old == logp); 1: small offsets (mostly inside the clip range); 2: large (many clipped) */
static void rand_batch(batch *b, int mode) {
    b->n_seq = irand(1, MAXS);
    b->off[0] = 0;
    for (int s = 0; s < b->n_seq; s++) b->off[s + 1] = b->off[s] + irand(s == 0 ? 1 : 0, 24);
    for (int64_t t = 0; t < b->off[b->n_seq]; t++) {
        b->logp[t] = -urand(0.01, 6);
        double d = mode == 0 ? 0 : mode == 1 ? urand(-0.1, 0.1) : urand(-0.9, 0.9);
        b->old[t] = b->logp[t] + d;
        b->ref[t] = b->logp[t] + urand(-1.5, 1.5);
    }
    for (int s = 0; s < b->n_seq; s++) b->adv[s] = urand(-2, 2);
}

/* The loss written the way TRL builds it: a per-token loss tensor, then the loss_type reduction. */
static long double ref_loss(const tl_rl_loss_opts *o, const batch *b, int64_t *lowc, int64_t *highc, long double *klsum,
                            long double *mag) {
    long double per_seq_mean = 0, tok_sum = 0, abs_sum = 0;
    int64_t total = 0;
    *lowc = *highc = 0;
    *klsum = 0;
    for (int s = 0; s < b->n_seq; s++) {
        long double seq = 0;
        int64_t len = b->off[s + 1] - b->off[s];
        for (int64_t t = b->off[s]; t < b->off[s + 1]; t++) {
            long double c1 = expl((long double)b->logp[t] - b->old[t]);
            long double c2 = fminl(fmaxl(c1, 1.0L - o->eps_low), 1.0L + o->eps_high);
            long double l = -fminl(c1 * b->adv[s], c2 * b->adv[s]);
            if (o->beta != 0) {
                long double x = (long double)b->ref[t] - b->logp[t];
                long double k3 = expm1l(x) - x;
                l += o->beta * k3;
                *klsum += k3;
            }
            *lowc += c1 < 1.0L - o->eps_low && b->adv[s] < 0;
            *highc += c1 > 1.0L + o->eps_high && b->adv[s] > 0;
            seq += l;
            abs_sum += fabsl(l);
        }
        per_seq_mean += seq / (len > 1 ? len : 1);
        tok_sum += seq;
        total += len;
    }
    /* the loss is a sum of terms of both signs: its rounding is relative to the sum of their magnitudes */
    *mag = abs_sum / (total > 1 ? total : 1);
    if (o->norm == TL_RL_NORM_GRPO) return per_seq_mean / b->n_seq;
    if (o->norm == TL_RL_NORM_BNPO) return tok_sum / (total > 1 ? total : 1);
    return tok_sum / ((long double)b->n_seq * o->max_completion);
}

static double loss_of(const tl_rl_loss_opts *o, const batch *b) {
    double d[MAXT];
    tl_rl_loss_out out;
    tl_rl_batch tb = {b->n_seq, b->off, b->logp, b->old, b->ref, b->adv, 0, 0};
    tl_rl_loss(o, &tb, d, &out);
    return out.loss;
}

static void test_loss(void) {
    const char *mode_names[] = {"ratio 1", "unclipped", "clipped"};
    for (int norm = 0; norm < 3; norm++)
        for (int kl = 0; kl < 2; kl++)
            for (int mode = 0; mode < 3; mode++) {
                double worst_v = 0, worst_d = 0, worst_kl = 0;
                int64_t clipped = 0, cnt_bad = 0;
                for (int trial = 0; trial < 60; trial++) {
                    batch b;
                    rand_batch(&b, mode);
                    tl_rl_loss_opts o = {.norm = (tl_rl_norm)norm,
                                         .beta = kl ? urand(0.01, 0.5) : 0,
                                         .eps_low = urand(0.1, 0.3),
                                         .eps_high = urand(0.1, 0.4),
                                         .max_completion = 24 + irand(0, 8)};
                    double d[MAXT];
                    for (int i = 0; i < MAXT; i++) d[i] = NAN;
                    tl_rl_loss_out out;
                    tl_rl_batch tb = {b.n_seq, b.off, b.logp, b.old, kl ? b.ref : NULL, b.adv, 0, 0};
                    tl_rl_loss(&o, &tb, d, &out);
                    int64_t lowc, highc;
                    long double kls, mag;
                    long double want = ref_loss(&o, &b, &lowc, &highc, &kls, &mag);
                    upd(&worst_v, fabs(out.loss - (double)want) / fmax(fabsl(want), (double)mag * 1e-2));
                    if (kl) upd(&worst_kl, fabs(out.kl - (double)kls) / fmax((double)kls, 1e-12));
                    else if (out.kl != 0) cnt_bad++;
                    if (out.low_clipped != lowc || out.high_clipped != highc || out.tokens != b.off[b.n_seq]) cnt_bad++;
                    clipped += lowc + highc;
                    /* central differences in logp (old and ref held), away from the clip boundaries where the
                     * loss has a kink */
                    double dmax = 0, emax = 0;
                    for (int64_t t = 0; t < b.off[b.n_seq]; t++) {
                        double c1 = exp(b.logp[t] - b.old[t]);
                        if (fabs(c1 - (1 - o.eps_low)) < 1e-3 || fabs(c1 - (1 + o.eps_high)) < 1e-3) continue;
                        double h = 1e-5, x = b.logp[t];
                        b.logp[t] = x + h;
                        double lp = loss_of(&o, &b);
                        b.logp[t] = x - h;
                        double lm = loss_of(&o, &b);
                        b.logp[t] = x;
                        double fd = (lp - lm) / (2 * h);
                        dmax = fmax(dmax, fabs(fd));
                        upd(&emax, fabs(d[t] - fd));
                    }
                    upd(&worst_d, emax / fmax(dmax, 1e-12)); /* max error over the largest entry */
                    if (mode == 0) { /* ratio 1: d = w (-A + beta (1 - exp(ref - logp))) in closed form */
                        for (int s = 0; s < b.n_seq; s++) {
                            int64_t len = b.off[s + 1] - b.off[s], tot = b.off[b.n_seq];
                            double w = norm == 0   ? 1.0 / (b.n_seq * (double)(len > 1 ? len : 1))
                                       : norm == 1 ? 1.0 / (double)(tot > 1 ? tot : 1)
                                                   : 1.0 / ((double)b.n_seq * o.max_completion);
                            for (int64_t t = b.off[s]; t < b.off[s + 1]; t++) {
                                double want_d = w * (-b.adv[s] + (kl ? o.beta * (1 - exp(b.ref[t] - b.logp[t])) : 0));
                                if (rel(d[t], want_d) > 1e-12 && fabs(d[t] - want_d) > 1e-15) cnt_bad++;
                            }
                        }
                    }
                }
                char what[128];
                snprintf(what, sizeof what, "%s beta%s %s: loss vs long double", tl_rl_norm_name((tl_rl_norm)norm),
                         kl ? ">0" : "=0", mode_names[mode]);
                check(what, worst_v, 1e-12);
                snprintf(what, sizeof what, "%s beta%s %s: dlogp vs finite differences",
                         tl_rl_norm_name((tl_rl_norm)norm), kl ? ">0" : "=0", mode_names[mode]);
                check(what, worst_d, 1e-6);
                if (kl) {
                    snprintf(what, sizeof what, "%s %s: kl sum vs long double", tl_rl_norm_name((tl_rl_norm)norm),
                             mode_names[mode]);
                    check(what, worst_kl, 1e-12);
                }
                CHECK(cnt_bad == 0, "%s kl %d %s: %lld mismatched counts / closed-form gradients",
                      tl_rl_norm_name((tl_rl_norm)norm), kl, mode_names[mode], (long long)cnt_bad);
                if (mode == 2) CHECK(clipped > 0, "the clipped regime clipped no token");
                if (mode == 0) CHECK(clipped == 0, "ratio 1 clipped a token");
            }
}

/* A clipped token has no gradient from the policy term: with beta = 0 its dlogp is exactly 0. */
static void test_clipped_zero_grad(void) {
    int64_t off[2] = {0, 2};
    double logp[2] = {-1.0, -1.0}, old[2] = {-1.5, -0.5}, adv[1] = {1.0}, d[2];
    tl_rl_loss_opts o = {.norm = TL_RL_NORM_BNPO, .beta = 0, .eps_low = 0.2, .eps_high = 0.2, .max_completion = 4};
    tl_rl_batch b = {1, off, logp, old, NULL, adv, 0, 0};
    tl_rl_loss_out out;
    tl_rl_loss(&o, &b, d, &out);
    /* token 0: ratio e^0.5 > 1.2 with A > 0: clipped, loss -1.2, no gradient; token 1: ratio e^-0.5 < 0.8 with
     * A > 0: the unclipped branch is the smaller, loss -e^-0.5, gradient -e^-0.5 */
    CHECK(d[0] == 0.0 && rel(d[1], -exp(-0.5) / 2) < 1e-15, "d = %g %g", d[0], d[1]);
    CHECK(rel(out.loss, (-1.2 - exp(-0.5)) / 2) < 1e-15, "loss %g", out.loss);
    CHECK(out.high_clipped == 1 && out.low_clipped == 0);
}

/* A completion with no token (EOS sampled first): grpo divides its zero sum by max(0, 1) = 1 and still
 * counts it among the completions, as TRL's clamp(min=1) and mean do. */
static void test_empty_completion(void) {
    int64_t off[3] = {0, 0, 2};
    double logp[2] = {-1, -2}, adv[2] = {5, 1}, d[2];
    tl_rl_loss_opts o = {.norm = TL_RL_NORM_GRPO, .beta = 0, .eps_low = 0.2, .eps_high = 0.2, .max_completion = 4};
    tl_rl_batch b = {2, off, logp, logp, NULL, adv, 0, 0};
    tl_rl_loss_out out;
    tl_rl_loss(&o, &b, d, &out);
    CHECK(rel(out.loss, -0.5) < 1e-15 && rel(d[0], -0.25) < 1e-15 && rel(d[1], -0.25) < 1e-15, "loss %g d %g %g",
          out.loss, d[0], d[1]);
}

/* A group split into parts (as micro-batches split an adapter's completions), each part given the group's
 * totals: the parts' losses sum to the whole group's and every token's gradient is the same. */
static void test_split(void) {
    double worst = 0;
    int64_t bad_grad = 0;
    for (int trial = 0; trial < 200; trial++) {
        batch b;
        rand_batch(&b, trial % 3);
        tl_rl_loss_opts o = {.norm = (tl_rl_norm)(trial % 3),
                             .beta = trial % 2 ? 0.1 : 0,
                             .eps_low = 0.2,
                             .eps_high = 0.3,
                             .max_completion = 30};
        double whole_d[MAXT], part_d[MAXT];
        tl_rl_loss_out whole, part;
        tl_rl_batch tb = {b.n_seq, b.off, b.logp, b.old, b.ref, b.adv, 0, 0};
        tl_rl_loss(&o, &tb, whole_d, &whole);
        double sum = 0, mag = 0; /* mag: the parts' magnitudes, the scale of double rounding (a loss near 0 by
                                    cancellation would make an error relative to itself meaningless) */
        for (int s0 = 0; s0 < b.n_seq;) {
            int s1 = s0 + irand(1, 4);
            if (s1 > b.n_seq) s1 = b.n_seq;
            tl_rl_batch pb = {s1 - s0, b.off + s0, b.logp, b.old, b.ref, b.adv + s0, b.n_seq, b.off[b.n_seq]};
            tl_rl_loss(&o, &pb, part_d, &part);
            for (int64_t t = b.off[s0]; t < b.off[s1]; t++) bad_grad += part_d[t] != whole_d[t];
            sum += part.loss, mag += fabs(part.loss);
            s0 = s1;
        }
        upd(&worst, fabs(sum - whole.loss) / fmax(fmax(mag, fabs(whole.loss)), 1e-12));
    }
    check("a group split in parts: losses sum to the whole", worst, 1e-12);
    CHECK(bad_grad == 0, "a group split in parts: %lld token gradients differ", (long long)bad_grad);
}

int main(void) {
    const char *env = getenv("TL_TEST_SEED");
    g_rng = env ? strtoull(env, NULL, 0) : tl_mix64(((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid());
    printf("test_rl_loss: seed 0x%llx (replay with TL_TEST_SEED)\n", (unsigned long long)g_rng);
    test_names();
    test_opts_check();
    test_advantages();
    test_loss();
    test_clipped_zero_grad();
    test_empty_completion();
    test_split();
    return tl_check_done("test_rl_loss");
}
