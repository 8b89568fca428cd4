/* test_math: the shared per-element formulas of kernels/tl_math.h (used by both the CPU loops and the CUDA
 * kernels) against float64 math and finite differences, on fresh random inputs. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_math.h"
#include "tests/lib/tl_check.h"

static uint64_t g_rng = 0x1234abcd9876ULL;

/* One row of the error table; a row over its tolerance (or NaN) is a failure, counted by CHECK. */
static void check(const char *what, double err, double tol) {
    int ok = err <= tol; /* false for NaN */
    printf("%-62s err %-10.3g tol %-8.1g %s\n", what, err, tol, ok ? "ok" : "FAIL");
    CHECK(ok, "%s: err %.3g > tol %.1g", what, err, tol);
}

static double urand(double lo, double hi) { return lo + (hi - lo) * (double)(tl_mix64(g_rng++) >> 11) * 0x1.0p-53; }

static double sig_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static double silu_d(double x) { return x * sig_d(x); }

static void test_rstd(void) {
    double worst = 0;
    for (int t = 0; t < 200; t++) {
        int d = 1 + (int)urand(0, 300);
        double ss = 0;
        for (int j = 0; j < d; j++) {
            float x = (float)urand(-3, 3);
            ss += (double)x * x;
        }
        double ref = 1.0 / sqrt(ss / d + 1e-6);
        double e = fabs(tl_rstd((float)ss, d, 1e-6f) - ref) / ref;
        if (!(e <= worst)) worst = e;
    }
    check("tl_rstd vs float64", worst, 1e-6);
}

static void test_silu(void) {
    double e_sig = 0, e_silu = 0, e_grad = 0, e_fd = 0;
    for (int t = 0; t <= 4000; t++) {
        float g = (float)(-20.0 + 40.0 * t / 4000.0);
        if (t % 2) g = (float)urand(-20, 20);
        double gd = g;
        double es = fabs(tl_sigmoidf(g) - sig_d(gd)) / fmax(1.0, fabs(sig_d(gd)));
        double el = fabs(tl_silu(g) - silu_d(gd)) / fmax(1.0, fabs(silu_d(gd)));
        double s = sig_d(gd), ref_grad = s + gd * s * (1 - s);
        double eg = fabs(tl_silu_grad(g) - ref_grad);
        const double h = 1e-5;
        double fd = (silu_d(gd + h) - silu_d(gd - h)) / (2 * h);
        double ef = fabs(tl_silu_grad(g) - fd);
        if (!(es <= e_sig)) e_sig = es;
        if (!(el <= e_silu)) e_silu = el;
        if (!(eg <= e_grad)) e_grad = eg;
        if (!(ef <= e_fd)) e_fd = ef;
    }
    check("tl_sigmoidf vs float64 on [-20, 20]", e_sig, 1e-6);
    check("tl_silu vs float64 on [-20, 20]", e_silu, 1e-6);
    /* fp32 limit: for g ~ 17, 1 - s is one ulp of 1, so g (1 - s) carries an absolute error ~ |g| 6e-8 */
    check("tl_silu_grad vs float64 closed form", e_grad, 3e-6);
    check("tl_silu_grad vs central finite differences", e_fd, 3e-6);
    /* far tails: exp overflows to inf inside the formulas; the results must still be the right limits */
    const float big[4] = {-1e4f, -100.0f, 100.0f, 1e4f};
    double bad = 0;
    for (int i = 0; i < 4; i++) {
        float lim_s = big[i] > 0 ? 1.0f : 0.0f;
        if (tl_sigmoidf(big[i]) != lim_s) bad = 1;
        if (tl_silu(big[i]) != (big[i] > 0 ? big[i] : 0.0f)) bad = 1;
        if (tl_silu_grad(big[i]) != lim_s) bad = 1;
    }
    check("sigmoid / silu / silu_grad exact limits at |x| = 100, 1e4", bad, 0);
}

static void test_rope(void) {
    double e_norm = 0, e_inv = 0, e_ref = 0, e_comp = 0;
    for (int t = 0; t < 10000; t++) {
        float x0 = (float)urand(-2, 2), x1 = (float)urand(-2, 2);
        double a = urand(-50, 50), b = urand(-3, 3);
        float c = (float)cos(a), s = (float)sin(a);
        float y0 = x0, y1 = x1;
        tl_rope_rotate(&y0, &y1, c, s);
        double n0 = (double)x0 * x0 + (double)x1 * x1, n1 = (double)y0 * y0 + (double)y1 * y1;
        double en = fabs(n1 - n0) / fmax(n0, 1e-12);
        double r0 = x0 * (double)c - x1 * (double)s, r1 = x1 * (double)c + x0 * (double)s;
        double er = fmax(fabs(y0 - r0), fabs(y1 - r1));
        float z0 = y0, z1 = y1; /* transpose = rotation by -angle: back to x */
        tl_rope_rotate(&z0, &z1, c, -s);
        double ei = fmax(fabs(z0 - x0), fabs(z1 - x1));
        float w0 = y0, w1 = y1; /* composition: rotating by a then b is rotating by a + b */
        tl_rope_rotate(&w0, &w1, (float)cos(b), (float)sin(b));
        double q0 = x0 * cos(a + b) - x1 * sin(a + b), q1 = x1 * cos(a + b) + x0 * sin(a + b);
        double ec = fmax(fabs(w0 - q0), fabs(w1 - q1));
        if (!(en <= e_norm)) e_norm = en;
        if (!(er <= e_ref)) e_ref = er;
        if (!(ei <= e_inv)) e_inv = ei;
        if (!(ec <= e_comp)) e_comp = ec;
    }
    check("tl_rope_rotate preserves the norm (orthogonal)", e_norm, 1e-6);
    check("tl_rope_rotate vs float64 rotation", e_ref, 1e-6);
    check("tl_rope_rotate by -angle inverts it", e_inv, 1e-6);
    check("tl_rope_rotate composes angles", e_comp, 1e-5);
}

/* d/dx of sum_j R_j x_j rstd(x) w_j for one row, float64 finite differences vs tl_rmsnorm_dx */
static double rms_row_loss(const double *x, const double *w, const double *R, int d, double eps) {
    double ss = 0, L = 0;
    for (int j = 0; j < d; j++) ss += x[j] * x[j];
    double r = 1.0 / sqrt(ss / d + eps);
    for (int j = 0; j < d; j++) L += R[j] * x[j] * r * w[j];
    return L;
}

static void test_rmsnorm_dx(void) {
    enum { D = 37 };
    double x[D], w[D], R[D], worst = 0, scale = 0;
    float xf[D], wf[D], Rf[D];
    for (int t = 0; t < 20; t++) {
        for (int j = 0; j < D; j++) {
            x[j] = xf[j] = (float)urand(-2, 2);
            w[j] = wf[j] = (float)urand(0.5, 1.5);
            R[j] = Rf[j] = (float)urand(-1, 1);
        }
        double ss = 0, dot = 0;
        for (int j = 0; j < D; j++) {
            ss += x[j] * x[j];
            dot += (double)Rf[j] * wf[j] * xf[j];
        }
        float rstd = tl_rstd((float)ss, D, 1e-5f), c = (float)(dot / D);
        for (int j = 0; j < D; j++) {
            double s = x[j], h = 1e-6;
            x[j] = s + h;
            double lp = rms_row_loss(x, w, R, D, (double)1e-5f);
            x[j] = s - h;
            double lm = rms_row_loss(x, w, R, D, (double)1e-5f);
            x[j] = s;
            double fd = (lp - lm) / (2 * h);
            double e = fabs(tl_rmsnorm_dx(Rf[j] * wf[j], xf[j], rstd, c) - fd);
            if (!(e <= worst)) worst = e;
            if (fabs(fd) > scale) scale = fabs(fd);
        }
    }
    check("tl_rmsnorm_dx vs finite differences (relative to max |grad|)", worst / scale, 1e-5);
}

static void test_adamw(void) {
    /* (0.9, 0.95) and torch's default (0.9, 0.999): with 1 - b2 computed in float32 (1 - 0.999f) the second
     * moment is 1.3e-5 (relative) too small, which the relative check on v catches */
    const double betas[2][2] = {{0.9, 0.95}, {0.9, 0.999}};
    const double eps = 1e-8, wd = 0.1, lr = 0.01;
    double worst = 0, worst_v = 0;
    for (int bi = 0; bi < 2; bi++) {
        const double b1 = betas[bi][0], b2 = betas[bi][1];
        for (int e = 0; e < 50; e++) {
            float p = (float)urand(-1, 1), m = 0, v = 0;
            double pd = p, md = 0, vd = 0;
            for (int t = 1; t <= 5; t++) {
                float g = (float)urand(-1, 1);
                /* as trainer/optim.c and the backends' adamw: bias corrections and 1 - beta in double */
                float bc1 = (float)(1.0 - pow(b1, t)), bc2 = (float)(1.0 - pow(b2, t));
                tl_adamw_update(&p, &m, &v, g, (float)lr, (float)b1, (float)b2, (float)(1.0 - b1), (float)(1.0 - b2),
                                (float)eps, (float)wd, bc1, bc2);
                /* torch.optim.AdamW */
                pd *= 1 - lr * wd;
                md = b1 * md + (1 - b1) * g;
                vd = b2 * vd + (1 - b2) * (double)g * g;
                double denom = sqrt(vd) / sqrt(1 - pow(b2, t)) + eps;
                pd -= lr / (1 - pow(b1, t)) * md / denom;
            }
            double er = fmax(fabs(p - pd), fmax(fabs(m - md), fabs(v - vd)));
            if (!(er <= worst)) worst = er;
            double ev = vd > 0 ? fabs(v - vd) / vd : fabs(v - vd);
            if (!(ev <= worst_v)) worst_v = ev;
        }
    }
    check("tl_adamw_update vs torch.optim.AdamW in float64 (5 steps)", worst, 1e-6);
    check("tl_adamw_update second moment v vs float64, relative (betas 0.9/0.999, 1 - b2 in double)", worst_v, 2e-6);
}

static void test_dropout(void) {
    const int N = 100000;
    const float ps[3] = {0.1f, 0.3f, 0.5f};
    char name[128];
    for (int k = 0; k < 3; k++) {
        float p = ps[k];
        int dropped = 0, wrong_value = 0;
        double sum = 0;
        for (int i = 0; i < N; i++) {
            uint64_t seed = tl_mix64(1000u + (uint64_t)(i / 1000));
            float m = tl_dropout_mul(seed, 5u, (uint32_t)(i % 1000), p);
            if (m == 0.0f)
                dropped++;
            else if (m != 1.0f / (1.0f - p))
                wrong_value = 1;
            sum += m;
        }
        double rate = (double)dropped / N, sigma = sqrt(p * (1.0 - p) / N);
        snprintf(name, sizeof name, "dropout rate at p = %.1f over 1e5 draws (|rate - p| / 5 sigma)", p);
        check(name, fabs(rate - p) / (5 * sigma), 1.0);
        snprintf(name, sizeof name, "dropout p = %.1f: kept values are 1/(1-p), mean ~ 1", p);
        check(name, wrong_value ? 1.0 : fabs(sum / N - 1.0), 0.02);
    }
    /* determinism and independence across sites, columns, rows */
    int same = 1, agree_site = 0, agree_col = 0, never = 1;
    for (int i = 0; i < 20000; i++) {
        uint64_t seed = tl_mix64(77u + (uint64_t)i);
        float a = tl_dropout_mul(seed, 3u, (uint32_t)i % 97, 0.5f), b = tl_dropout_mul(seed, 3u, (uint32_t)i % 97, 0.5f);
        if (a != b) same = 0;
        agree_site += tl_dropout_mul(seed, 4u, (uint32_t)i % 97, 0.5f) == a;
        agree_col += tl_dropout_mul(seed, 3u, (uint32_t)i % 97 + 1, 0.5f) == a;
        if (tl_dropout_mul(seed, 3u, (uint32_t)i, 0.0f) != 1.0f) never = 0;
    }
    check("dropout mask deterministic for the same (seed, site, col)", !same, 0);
    check("dropout p = 0 always keeps (multiplier 1)", !never, 0);
    check("dropout masks of two sites agree ~ 50% at p = 0.5", fabs(agree_site / 20000.0 - 0.5), 0.02);
    check("dropout masks of adjacent columns agree ~ 50% at p = 0.5", fabs(agree_col / 20000.0 - 0.5), 0.02);

    int bins[10] = {0}, out_of_range = 0;
    for (int i = 0; i < N; i++) {
        float u = tl_uniform(42u, (uint64_t)i / 317, (uint64_t)i % 317);
        if (!(u >= 0.0f && u < 1.0f)) {
            out_of_range = 1;
            continue;
        }
        bins[(int)(u * 10)]++;
    }
    double worst = 0, sig = sqrt(N * 0.1 * 0.9);
    for (int b = 0; b < 10; b++) worst = fmax(worst, fabs(bins[b] - N * 0.1) / (5 * sig));
    check("tl_uniform in [0, 1), 10 bins each within 5 sigma", out_of_range ? 2.0 : worst, 1.0);
}

static void test_lse(void) {
    double worst_lse = 0, worst_soft = 0;
    for (int t = 0; t < 300; t++) {
        int n = 1 + (int)urand(0, 1000);
        float *x = malloc((size_t)n * sizeof(float)), *v = malloc((size_t)n * sizeof(float));
        if (!x || !v) exit(1);
        for (int i = 0; i < n; i++) {
            /* every third array ascending, so the running max moves at every step */
            x[i] = (t % 3 == 0) ? (float)(-30.0 + 60.0 * i / n + urand(0, 0.01)) : (float)urand(-30, 30);
            v[i] = (float)urand(-1, 1);
        }
        double mx = -INFINITY, s = 0, acc_ref = 0;
        for (int i = 0; i < n; i++) mx = fmax(mx, x[i]);
        for (int i = 0; i < n; i++) s += exp(x[i] - mx);
        for (int i = 0; i < n; i++) acc_ref += exp(x[i] - mx) / s * v[i];
        double lse = mx + log(s);

        float m = -INFINITY, sum = 0;
        for (int i = 0; i < n; i++) tl_lse_push(&m, &sum, x[i]);
        worst_lse = fmax(worst_lse, fabs((m + logf(sum)) - lse) / fmax(1.0, fabs(lse)));

        float m2 = -INFINITY, s2 = 0, acc = 0;
        for (int i = 0; i < n; i++) {
            float w, c = tl_softmax_push(&m2, &s2, x[i], &w);
            acc = acc * c + w * v[i];
        }
        double e = fabs(acc / s2 - acc_ref);
        e = fmax(e, fabs((m2 + logf(s2)) - lse) / fmax(1.0, fabs(lse)));
        worst_soft = fmax(worst_soft, e);
        free(x);
        free(v);
    }
    check("tl_lse_push log-sum-exp vs direct float64", worst_lse, 1e-5);
    check("tl_softmax_push weighted mean and lse vs direct float64", worst_soft, 1e-5);
}

static void test_ce_dlogit(void) {
    enum { V = 31 };
    double worst = 0;
    for (int t = 0; t < 20; t++) {
        double z[V], mx = -INFINITY, s = 0;
        int tgt = (int)urand(0, V);
        float dlogp = (float)urand(-2, 2);
        for (int v = 0; v < V; v++) mx = fmax(mx, z[v] = urand(-4, 4));
        for (int v = 0; v < V; v++) s += exp(z[v] - mx);
        for (int v = 0; v < V; v++) {
            /* d/dz_v of dlogp * log softmax(z)[tgt], by central differences */
            double h = 1e-6, zs = z[v], lp, lm, m2, s2;
            z[v] = zs + h;
            m2 = -INFINITY, s2 = 0;
            for (int u = 0; u < V; u++) m2 = fmax(m2, z[u]);
            for (int u = 0; u < V; u++) s2 += exp(z[u] - m2);
            lp = z[tgt] - m2 - log(s2);
            z[v] = zs - h;
            m2 = -INFINITY, s2 = 0;
            for (int u = 0; u < V; u++) m2 = fmax(m2, z[u]);
            for (int u = 0; u < V; u++) s2 += exp(z[u] - m2);
            lm = z[tgt] - m2 - log(s2);
            z[v] = zs;
            double fd = dlogp * (lp - lm) / (2 * h);
            float p = (float)(exp(z[v] - mx) / s);
            worst = fmax(worst, fabs(tl_ce_dlogit(dlogp, p, v == tgt) - fd));
        }
    }
    check("tl_ce_dlogit vs finite differences of log softmax", worst, 1e-6);
}

int main(void) {
    test_rstd();
    test_silu();
    test_rope();
    test_rmsnorm_dx();
    test_adamw();
    test_dropout();
    test_lse();
    test_ce_dlogit();
    return tl_check_done("test_math");
}
