/* test_pref_loss: the preference losses of trainer/pref_loss.c on fresh random pairs: loss values against the
 * plain textbook expressions, analytic derivatives against central finite differences (double), the exact
 * values at the reference point, label-smoothing and robust-loss identities, overflow-free tails, the
 * Bradley-Terry reward loss and the metric accumulator. TRL agreement itself is tests/torch/test_pref_loss_vs_trl.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/tl_math.h"
#include "trainer/step/tl_pref_loss.h"
#include "tests/lib/tl_check.h"

static uint64_t g_rng;

/* One row of the error table; a row over its tolerance (or NaN) is a failure, counted by CHECK. */
static void check(const char *what, double err, double tol) {
    int ok = err <= tol; /* false for NaN */
    printf("%-66s err %-10.3g tol %-8.1g %s\n", what, err, tol, ok ? "ok" : "FAIL");
    CHECK(ok, "%s: err %.3g > tol %.1g", what, err, tol);
}

static double urand(double lo, double hi) { return lo + (hi - lo) * (double)(tl_mix64(g_rng++) >> 11) * 0x1.0p-53; }
static int64_t irand(int64_t lo, int64_t hi) { return lo + (int64_t)(tl_mix64(g_rng++) % (uint64_t)(hi - lo + 1)); }
static void upd(double *worst, double e) {
    if (!(e <= *worst)) *worst = e; /* NaN sticks */
}

static void poison(tl_pref_out *o) {
    o->loss = o->dpc = o->dpr = NAN;
    o->reward_chosen = o->reward_rejected = o->logp_chosen = o->logp_rejected = NAN;
}
static int all_finite(const tl_pref_out *o) {
    return isfinite(o->loss) && isfinite(o->dpc) && isfinite(o->dpr) && isfinite(o->reward_chosen) &&
           isfinite(o->reward_rejected) && isfinite(o->logp_chosen) && isfinite(o->logp_rejected);
}

static const tl_pref_kind KINDS[] = {TL_PREF_SIGMOID, TL_PREF_IPO, TL_PREF_HINGE, TL_PREF_ROBUST, TL_PREF_SIMPO};
#define NK 5

/* A pair whose policy/reference log-ratio puts beta * logit in a moderate range, so derivatives are not
 * vanishingly small and a finite difference measures them well. */
static tl_pref_logps rand_pair(void) {
    tl_pref_logps p;
    p.nc = irand(1, 40);
    p.nr = irand(1, 40);
    p.pc = -urand(0.5, 4.0) * (double)p.nc;
    p.pr = -urand(0.5, 4.0) * (double)p.nr;
    p.rc = p.pc + urand(-6, 6);
    p.rr = p.pr + urand(-6, 6);
    return p;
}
static tl_pref_opts rand_opts(tl_pref_kind k) {
    tl_pref_opts o = {k, urand(0.02, 1.0), urand(0, 0.45), urand(0, 2.0), 0.0};
    if (tl_mix64(g_rng++) & 1) o.label_smoothing = 0.0;
    return o;
}

/* Textbook expressions, written independently of pref_loss.c (naive logs are fine at moderate z). */
static double naive_logsig(double x) { return log(1.0 / (1.0 + exp(-x))); }
static double naive_loss(const tl_pref_opts *o, const tl_pref_logps *p) {
    double b = o->beta, ls = o->label_smoothing;
    double h = (p->pc - p->pr) - (p->rc - p->rr), L = 0;
    switch (o->kind) {
    case TL_PREF_SIGMOID: L = -naive_logsig(b * h) * (1 - ls) - naive_logsig(-b * h) * ls; break;
    case TL_PREF_ROBUST: L = (-naive_logsig(b * h) * (1 - ls) + naive_logsig(-b * h) * ls) / (1 - 2 * ls); break;
    case TL_PREF_HINGE: L = fmax(0.0, 1 - b * h); break;
    case TL_PREF_IPO: {
        double hi = (p->pc / p->nc - p->pr / p->nr) - (p->rc / p->nc - p->rr / p->nr);
        L = (hi - 1 / (2 * b)) * (hi - 1 / (2 * b));
        break;
    }
    case TL_PREF_SIMPO: {
        double hs = p->pc / p->nc - p->pr / p->nr - o->gamma / b;
        L = -naive_logsig(b * hs) * (1 - ls) - naive_logsig(-b * hs) * ls;
        break;
    }
    }
    return L + o->sft_weight * (-p->pc / p->nc);
}

static double loss_at(const tl_pref_opts *o, tl_pref_logps p) {
    tl_pref_out out;
    tl_pref_loss(o, &p, &out);
    return out.loss;
}

static void test_kind_names(void) {
    int bad = 0;
    tl_error err;
    for (int i = 0; i < NK; i++) {
        tl_pref_kind k = (tl_pref_kind)-1;
        if (tl_pref_kind_parse(tl_pref_kind_name(KINDS[i]), &k, &err) != TL_OK || k != KINDS[i]) bad++;
    }
    const char *names[NK] = {"sigmoid", "ipo", "hinge", "robust", "simpo"};
    for (int i = 0; i < NK; i++)
        if (strcmp(tl_pref_kind_name(KINDS[i]), names[i]) != 0) bad++;
    const char *wrong[] = {"Sigmoid", "", "dpo", "sigmoid ", "exo_pair", NULL};
    for (int i = 0; i < 6; i++) {
        tl_pref_kind k = TL_PREF_HINGE;
        memset(&err, 0, sizeof err);
        if (tl_pref_kind_parse(wrong[i], &k, &err) != TL_ERR_INPUT || err.code != TL_ERR_INPUT) bad++;
        if (!strstr(err.msg, "task.loss") || !strstr(err.msg, "simpo")) bad++;
        if (k != TL_PREF_HINGE) bad++; /* untouched on failure */
    }
    if (strcmp(tl_pref_kind_name((tl_pref_kind)17), "?") != 0) bad++;
    if (!tl_pref_needs_reference(TL_PREF_SIGMOID) || !tl_pref_needs_reference(TL_PREF_IPO) ||
        !tl_pref_needs_reference(TL_PREF_HINGE) || !tl_pref_needs_reference(TL_PREF_ROBUST) ||
        tl_pref_needs_reference(TL_PREF_SIMPO))
        bad++;
    check("kind names parse both ways; bad names fail naming task.loss", bad, 0);
}

static void test_opts_check(void) {
    int bad = 0;
    tl_error err;
    tl_pref_opts ok = {TL_PREF_ROBUST, 0.1, 0.49, 0.5, 1.0};
    if (tl_pref_opts_check(&ok, &err) != TL_OK) bad++;
    struct { tl_pref_opts o; const char *key; } cases[] = {
        {{TL_PREF_SIGMOID, 0.0, 0, 0.5, 0}, "task.beta"},
        {{TL_PREF_SIGMOID, -1, 0, 0.5, 0}, "task.beta"},
        {{TL_PREF_SIGMOID, INFINITY, 0, 0.5, 0}, "task.beta"},
        {{TL_PREF_SIGMOID, NAN, 0, 0.5, 0}, "task.beta"},
        {{TL_PREF_SIGMOID, 0.1, 0.5, 0.5, 0}, "task.label_smoothing"},
        {{TL_PREF_SIGMOID, 0.1, -0.01, 0.5, 0}, "task.label_smoothing"},
        {{TL_PREF_SIMPO, 0.1, 0, -0.1, 0}, "task.gamma"},
        {{TL_PREF_SIGMOID, 0.1, 0, 0.5, -1}, "task.sft_weight"},
        {{TL_PREF_SIGMOID, 0.1, 0, 0.5, NAN}, "task.sft_weight"},
        {{(tl_pref_kind)9, 0.1, 0, 0.5, 0}, "task.loss"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&err, 0, sizeof err);
        if (tl_pref_opts_check(&cases[i].o, &err) != TL_ERR_INPUT || !strstr(err.msg, cases[i].key)) {
            printf("  case %zu: expected an error naming %s, got \"%s\"\n", i, cases[i].key, err.msg);
            bad++;
        }
    }
    check("tl_pref_opts_check accepts valid options, names the bad key", bad, 0);
}

/* For every kind, with and without label smoothing and the SFT term: the loss against the textbook expression,
 * dpc and dpr against central finite differences, every output written and finite. */
static void test_values_and_derivatives(void) {
    for (int ki = 0; ki < NK; ki++) {
        double e_loss = 0, e_fd = 0, unwritten = 0;
        for (int t = 0; t < 3000; t++) {
            tl_pref_opts o = rand_opts(KINDS[ki]);
            if (t % 3 == 0) o.sft_weight = urand(0.1, 2.0);
            tl_pref_logps p = rand_pair();
            if (o.kind == TL_PREF_HINGE) {
                /* stay off the kink at beta * logit = 1, where the derivative jumps */
                double z = o.beta * ((p.pc - p.pr) - (p.rc - p.rr));
                if (fabs(1 - z) < 1e-3) continue;
            }
            tl_pref_out out;
            poison(&out);
            tl_pref_loss(&o, &p, &out);
            if (!all_finite(&out)) unwritten++;
            double ref = naive_loss(&o, &p);
            upd(&e_loss, fabs(out.loss - ref) / fmax(1.0, fabs(ref)));
            /* a fixed step: the loss curves on the scale of 1/beta in the logit whatever the size of pc; the
             * divisor is the step as represented, so rounding of pc +- h does not bias the quotient */
            const double h = 1e-5;
            tl_pref_logps a = p, b = p;
            a.pc += h, b.pc -= h;
            double fdc = (loss_at(&o, a) - loss_at(&o, b)) / (a.pc - b.pc);
            a = p, b = p;
            a.pr += h, b.pr -= h;
            double fdr = (loss_at(&o, a) - loss_at(&o, b)) / (a.pr - b.pr);
            upd(&e_fd, fabs(out.dpc - fdc) / fmax(fabs(fdc), 1e-3));
            upd(&e_fd, fabs(out.dpr - fdr) / fmax(fabs(fdr), 1e-3));
        }
        char what[128];
        snprintf(what, sizeof what, "%s: loss vs textbook expression (rel)", tl_pref_kind_name(KINDS[ki]));
        check(what, e_loss, 1e-12);
        snprintf(what, sizeof what, "%s: dpc, dpr vs central finite differences (rel)", tl_pref_kind_name(KINDS[ki]));
        check(what, e_fd, 1e-6);
        snprintf(what, sizeof what, "%s: every output written and finite", tl_pref_kind_name(KINDS[ki]));
        check(what, unwritten, 0);
    }
}

/* Rewards and logged log-probs follow TRL: beta * (policy - reference) on sums, on per-token means for ipo, and
 * beta * policy mean for reference-free simpo. The reference never gets a derivative, and simpo ignores it. */
static void test_rewards(void) {
    double e = 0;
    int bad = 0;
    for (int t = 0; t < 1000; t++) {
        tl_pref_kind k = KINDS[t % NK];
        tl_pref_opts o = rand_opts(k);
        tl_pref_logps p = rand_pair();
        tl_pref_out out;
        poison(&out);
        tl_pref_loss(&o, &p, &out);
        double rc, rr, lc, lr;
        if (k == TL_PREF_SIMPO) {
            lc = p.pc / p.nc, lr = p.pr / p.nr, rc = o.beta * lc, rr = o.beta * lr;
        } else if (k == TL_PREF_IPO) {
            lc = p.pc / p.nc, lr = p.pr / p.nr;
            rc = o.beta * (lc - p.rc / p.nc), rr = o.beta * (lr - p.rr / p.nr);
        } else {
            lc = p.pc, lr = p.pr, rc = o.beta * (p.pc - p.rc), rr = o.beta * (p.pr - p.rr);
        }
        upd(&e, fabs(out.reward_chosen - rc) / fmax(1.0, fabs(rc)));
        upd(&e, fabs(out.reward_rejected - rr) / fmax(1.0, fabs(rr)));
        upd(&e, fabs(out.logp_chosen - lc) / fmax(1.0, fabs(lc)));
        upd(&e, fabs(out.logp_rejected - lr) / fmax(1.0, fabs(lr)));
        if (k == TL_PREF_SIMPO) {
            tl_pref_logps q = p;
            q.rc += urand(-50, 50), q.rr += urand(-50, 50);
            tl_pref_out o2;
            poison(&o2);
            tl_pref_loss(&o, &q, &o2);
            if (memcmp(&out, &o2, sizeof out) != 0) bad++;
        }
    }
    check("rewards and logps as TRL reports them, all kinds", e, 1e-14);
    check("simpo output independent of the reference log-probs", bad, 0);
}

/* At pc = rc and pr = rr (policy = reference, the start of DPO) sigmoid and robust give ln 2 for any beta and
 * smoothing, with zero rewards; the derivative is -beta (1 - 2 ls) / 2 for sigmoid, -beta / (2 (1 - 2 ls)) for
 * robust. */
static void test_reference_point(void) {
    double e_loss = 0, e_rew = 0, e_d = 0;
    for (int t = 0; t < 1000; t++) {
        tl_pref_kind k = t % 2 ? TL_PREF_ROBUST : TL_PREF_SIGMOID;
        tl_pref_opts o = rand_opts(k);
        tl_pref_logps p = rand_pair();
        p.rc = p.pc, p.rr = p.pr;
        tl_pref_out out;
        poison(&out);
        tl_pref_loss(&o, &p, &out);
        upd(&e_loss, fabs(out.loss - log(2.0)));
        upd(&e_rew, fabs(out.reward_chosen) + fabs(out.reward_rejected));
        double ls = o.label_smoothing;
        double d = k == TL_PREF_SIGMOID ? -o.beta * (1 - 2 * ls) / 2 : -o.beta / (2 * (1 - 2 * ls));
        upd(&e_d, (fabs(out.dpc - d) + fabs(out.dpr + d)) / fabs(d));
    }
    check("sigmoid/robust: loss = ln 2 at policy = reference", e_loss, 1e-12);
    check("sigmoid/robust: rewards exactly 0 at policy = reference", e_rew, 0);
    check("sigmoid/robust: dpc = -dpr = closed form at policy = reference (rel)", e_d, 1e-14);
}

/* Label smoothing: ls = 0 is plain -logsigmoid; with ls > 0 the sigmoid loss is minimal (zero derivative) at
 * beta * logit = log((1 - ls) / ls). Robust (Chowdhury et al.) is unbiased under label flips:
 * (1 - ls) L_rob(z) + ls L_rob(-z) = -logsigmoid(z), and equals sigmoid at ls = 0. */
static void test_label_smoothing(void) {
    double e_zero = 0, e_min = 0, e_unb = 0, e_same = 0;
    for (int t = 0; t < 1000; t++) {
        tl_pref_logps p = rand_pair();
        double h = (p.pc - p.pr) - (p.rc - p.rr);
        tl_pref_opts o = rand_opts(TL_PREF_SIGMOID);
        o.label_smoothing = 0;
        upd(&e_zero, fabs(loss_at(&o, p) - log1p(exp(-o.beta * h))) / fmax(1.0, fabs(loss_at(&o, p))));
        tl_pref_opts r = o;
        r.kind = TL_PREF_ROBUST;
        tl_pref_out a, b;
        tl_pref_loss(&o, &p, &a);
        tl_pref_loss(&r, &p, &b);
        upd(&e_same, fabs(a.loss - b.loss) + fabs(a.dpc - b.dpc) + fabs(a.dpr - b.dpr));

        double ls = urand(0.01, 0.49);
        o.label_smoothing = ls;
        tl_pref_logps q = p;
        q.pc = q.rc + q.pr - q.rr + log((1 - ls) / ls) / o.beta; /* beta * logit = log((1-ls)/ls) */
        tl_pref_out m;
        poison(&m);
        tl_pref_loss(&o, &q, &m);
        upd(&e_min, fabs(m.dpc) / o.beta + fabs(m.dpr) / o.beta);

        r.label_smoothing = ls;
        tl_pref_logps flip = p; /* swap chosen and rejected: logit -> -logit */
        flip.pc = p.pr, flip.pr = p.pc, flip.rc = p.rr, flip.rr = p.rc;
        double unb = (1 - ls) * loss_at(&r, p) + ls * loss_at(&r, flip);
        double target = -(fmin(o.beta * h, 0) - log1p(exp(-fabs(o.beta * h))));
        upd(&e_unb, fabs(unb - target) / fmax(1.0, target));
    }
    check("sigmoid with ls = 0 is log1p(exp(-beta logit))", e_zero, 1e-12);
    check("robust with ls = 0 equals sigmoid (loss and derivatives)", e_same, 1e-14);
    check("sigmoid with ls: zero derivative at beta logit = log((1-ls)/ls)", e_min, 1e-12);
    check("robust: (1-ls) L(z) + ls L(-z) = -logsigmoid(z)", e_unb, 1e-11);
}

/* Logits of thousands of nats (summed log-probs of long responses) must give the exact asymptotes, not inf/NaN:
 * sigmoid loss -> ls z (z -> +inf) or (1 - ls) |z| (z -> -inf). */
static void test_tails(void) {
    int bad = 0;
    double e = 0;
    for (int t = 0; t < 200; t++) {
        tl_pref_opts o = rand_opts(t % 2 ? TL_PREF_SIGMOID : TL_PREF_ROBUST);
        double ls = o.label_smoothing;
        tl_pref_logps p = {-10.0, -20000.0, -10.0, -10.0, 5, 5}; /* logit +19990 */
        if (t % 4 >= 2) p.pc = -20000.0, p.pr = -10.0;           /* logit -19990 */
        double z = o.beta * ((p.pc - p.pr) - (p.rc - p.rr));
        tl_pref_out out;
        poison(&out);
        tl_pref_loss(&o, &p, &out);
        if (!all_finite(&out)) bad++;
        double L, d;
        if (o.kind == TL_PREF_SIGMOID) {
            L = z > 0 ? ls * z : (1 - ls) * -z;
            d = z > 0 ? ls : -(1 - ls);
        } else {
            L = (z > 0 ? -ls * z : (1 - ls) * -z) / (1 - 2 * ls);
            d = (z > 0 ? -ls : -(1 - ls)) / (1 - 2 * ls);
        }
        upd(&e, fabs(out.loss - L) / fmax(1.0, fabs(L)));
        upd(&e, fabs(out.dpc - o.beta * d) + fabs(out.dpr + o.beta * d));
    }
    tl_pref_opts s = {TL_PREF_SIMPO, 2.0, 0.1, 0.5, 0};
    tl_pref_logps p = {-1.0, -1e6, 0, 0, 1, 1};
    tl_pref_out out;
    poison(&out);
    tl_pref_loss(&s, &p, &out);
    if (!all_finite(&out)) bad++;
    /* hinge exactly on its kink (beta * logit = 1): loss 0 and derivative 0, torch's relu convention */
    tl_pref_opts hg = {TL_PREF_HINGE, 0.5, 0, 0.5, 0};
    tl_pref_logps hp = {-8.0, -7.0, -10.0, -7.0, 3, 4};
    poison(&out);
    tl_pref_loss(&hg, &hp, &out);
    if (!(out.loss == 0 && out.dpc == 0 && out.dpr == 0)) bad++;
    check("sigmoid/robust/simpo finite at |logit| ~ 2e4 and 1e6; hinge kink", bad, 0);
    check("sigmoid/robust: exact asymptotes of loss and derivative", e, 1e-12);
}

/* Per-token means need a token: a pair with an empty response gives NaN where a mean is needed, and nothing
 * else needs the counts. */
static void test_empty_responses(void) {
    int bad = 0;
    for (int ki = 0; ki < NK; ki++)
        for (int sft = 0; sft < 2; sft++)
            for (int which = 0; which < 2; which++) {
                tl_pref_opts o = {KINDS[ki], 0.1, 0.1, 0.5, sft ? 0.5 : 0.0};
                tl_pref_logps p = {-3, -4, -3.5, -3.5, which ? 0 : 4, which ? 4 : 0};
                tl_pref_out out;
                poison(&out);
                out.loss = 12345; /* must be overwritten either way */
                tl_pref_loss(&o, &p, &out);
                int needs = KINDS[ki] == TL_PREF_IPO || KINDS[ki] == TL_PREF_SIMPO || sft;
                if (needs ? !(isnan(out.loss) && isnan(out.dpc) && isnan(out.dpr) && isnan(out.reward_chosen))
                          : !all_finite(&out))
                    bad++;
            }
    check("empty response: NaN exactly where a per-token mean is needed", bad, 0);
}

/* The SFT (RPO) term adds sft_weight * (-pc / nc) to the loss and -sft_weight / nc to dpc, nothing else. */
static void test_sft_term(void) {
    double e = 0;
    for (int t = 0; t < 1000; t++) {
        tl_pref_opts o = rand_opts(KINDS[t % NK]);
        tl_pref_logps p = rand_pair();
        tl_pref_out a, b;
        tl_pref_loss(&o, &p, &a);
        o.sft_weight = urand(0.05, 3.0);
        tl_pref_loss(&o, &p, &b);
        upd(&e, fabs((b.loss - a.loss) - o.sft_weight * (-p.pc / p.nc)) / fmax(1.0, fabs(b.loss)));
        upd(&e, fabs((b.dpc - a.dpc) + o.sft_weight / p.nc) + fabs(b.dpr - a.dpr));
        upd(&e, fabs(b.reward_chosen - a.reward_chosen) + fabs(b.logp_chosen - a.logp_chosen));
    }
    check("sft_weight adds -w pc/nc to the loss and -w/nc to dpc only", e, 1e-12);
}

static void test_bt(void) {
    double e_fd = 0, e_val = 0;
    for (int t = 0; t < 3000; t++) {
        double rc = urand(-8, 8), rr = urand(-8, 8), c = t % 3 ? urand(0, 0.5) : 0.0;
        double L = NAN, dc = NAN, dr = NAN;
        tl_bt_loss(rc, rr, c, &L, &dc, &dr);
        double ref = -naive_logsig(rc - rr) + c * (rc + rr) * (rc + rr);
        upd(&e_val, fabs(L - ref) / fmax(1.0, fabs(ref)));
        const double h = 1e-5;
        double lp, lm, d1, d2;
        tl_bt_loss(rc + h, rr, c, &lp, &d1, &d2);
        tl_bt_loss(rc - h, rr, c, &lm, &d1, &d2);
        upd(&e_fd, fabs(dc - (lp - lm) / (2 * h)) / fmax(fabs((lp - lm) / (2 * h)), 1e-3));
        tl_bt_loss(rc, rr + h, c, &lp, &d1, &d2);
        tl_bt_loss(rc, rr - h, c, &lm, &d1, &d2);
        upd(&e_fd, fabs(dr - (lp - lm) / (2 * h)) / fmax(fabs((lp - lm) / (2 * h)), 1e-3));
    }
    check("tl_bt_loss vs -log(sigmoid(rc - rr)) + c (rc + rr)^2", e_val, 1e-12);
    check("tl_bt_loss derivatives vs central finite differences (rel)", e_fd, 1e-6);
    double L, dc, dr, x = urand(-5, 5);
    tl_bt_loss(x, x, 0.0, &L, &dc, &dr);
    double e0 = fabs(L - log(2.0)) + fabs(dc + 0.5) + fabs(dr - 0.5);
    tl_bt_loss(1e5, -1e5, 0.0, &L, &dc, &dr);
    double e1 = isfinite(L) && isfinite(dc) ? fabs(L) + fabs(dc) + fabs(dr) : INFINITY;
    tl_bt_loss(-1e5, 1e5, 0.0, &L, &dc, &dr);
    double e2 = fabs(L - 2e5) / 2e5 + fabs(dc + 1) + fabs(dr - 1);
    check("tl_bt_loss: ln 2 at a tie, exact tails at margins of +-2e5", e0 + e1 + e2, 1e-12);
}

static void test_stats(void) {
    tl_pref_stats all, part[3];
    double means[TL_PREF_N_METRICS];
    tl_pref_stats_init(&all);
    for (int i = 0; i < 3; i++) tl_pref_stats_init(&part[i]);
    tl_pref_stats_mean(&all, means);
    int bad = 0;
    for (int m = 0; m < TL_PREF_N_METRICS; m++)
        if (!isnan(means[m])) bad++;
    check("stats: every mean over no pair is NaN", bad, 0);

    enum { N = 257 };
    double s[TL_PREF_N_METRICS] = {0};
    for (int i = 0; i < N; i++) {
        tl_pref_out o;
        poison(&o);
        o.loss = urand(0, 3), o.dpc = urand(-1, 1), o.dpr = urand(-1, 1);
        o.reward_chosen = urand(-1, 1);
        o.reward_rejected = i % 5 == 0 ? o.reward_chosen : urand(-1, 1); /* ties count as not accurate */
        o.logp_chosen = urand(-50, 0), o.logp_rejected = urand(-50, 0);
        tl_pref_stats_add(&all, &o);
        tl_pref_stats_add(&part[i % 3], &o);
        s[TL_PREF_M_LOSS] += o.loss;
        s[TL_PREF_M_REWARDS_CHOSEN] += o.reward_chosen;
        s[TL_PREF_M_REWARDS_REJECTED] += o.reward_rejected;
        s[TL_PREF_M_REWARDS_ACCURACIES] += o.reward_chosen > o.reward_rejected;
        s[TL_PREF_M_REWARDS_MARGINS] += o.reward_chosen - o.reward_rejected;
        s[TL_PREF_M_LOGPS_CHOSEN] += o.logp_chosen;
        s[TL_PREF_M_LOGPS_REJECTED] += o.logp_rejected;
    }
    tl_pref_stats merged;
    tl_pref_stats_init(&merged);
    for (int i = 0; i < 3; i++) tl_pref_stats_merge(&merged, &part[i]);
    double mm[TL_PREF_N_METRICS];
    tl_pref_stats_mean(&all, means);
    tl_pref_stats_mean(&merged, mm);
    double e = 0, em = 0;
    for (int m = 0; m < TL_PREF_N_METRICS; m++) {
        upd(&e, fabs(means[m] - s[m] / N));
        upd(&em, fabs(mm[m] - means[m]));
    }
    check("stats: means of loss, rewards, accuracy (strict), margins, logps", e, 1e-12);
    check("stats: merging partial accumulators equals one accumulator", em, 1e-12);

    tl_pref_stats bt;
    tl_pref_stats_init(&bt);
    tl_pref_stats_add_bt(&bt, 0.5, 2.0, 1.0);
    tl_pref_stats_add_bt(&bt, 1.5, -1.0, 1.0);
    tl_pref_stats_mean(&bt, means);
    double eb = fabs(means[TL_PREF_M_LOSS] - 1.0) + fabs(means[TL_PREF_M_REWARDS_CHOSEN] - 0.5) +
                fabs(means[TL_PREF_M_REWARDS_REJECTED] - 1.0) + fabs(means[TL_PREF_M_REWARDS_ACCURACIES] - 0.5) +
                fabs(means[TL_PREF_M_REWARDS_MARGINS] + 0.5);
    if (!isnan(means[TL_PREF_M_LOGPS_CHOSEN]) || !isnan(means[TL_PREF_M_LOGPS_REJECTED])) eb += 1;
    check("stats: reward-model pairs (no logps -> NaN logps means)", eb, 1e-15);

    const char *want[TL_PREF_N_METRICS] = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                           "rewards/margins", "logps/chosen", "logps/rejected"};
    int bn = 0;
    for (int m = 0; m < TL_PREF_N_METRICS; m++)
        if (strcmp(tl_pref_metric_names[m], want[m]) != 0) bn++;
    check("stats: TRL metric names", bn, 0);
}

int main(void) {
    /* fresh inputs every run; the seed is printed so a failure can be replayed with TL_TEST_SEED */
    const char *env = getenv("TL_TEST_SEED");
    g_rng = env ? strtoull(env, NULL, 0) : tl_mix64(((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid());
    printf("test_pref_loss: seed 0x%llx (replay with TL_TEST_SEED)\n", (unsigned long long)g_rng);
    test_kind_names();
    test_opts_check();
    test_values_and_derivatives();
    test_rewards();
    test_reference_point();
    test_label_smoothing();
    test_tails();
    test_empty_responses();
    test_sft_term();
    test_bt();
    test_stats();
    return tl_check_done("test_pref_loss");
}
