/* test_cpu_ops: every op of the CPU backend against float64 references written here.
 *
 * Forward ops are compared with a float64 re-implementation (max |diff| / max |ref|). Backward ops are compared
 * with central finite differences (float64, step 1e-5) of the float64 reference forward, on the scalar
 * L = sum(out * R) with random R (R is then the upstream gradient given to the op). Inputs are fresh random
 * values; outputs are poisoned with NaN before each op so anything left unwritten fails. Tolerances: 1e-5 for
 * fp32 forward vs float64 and for fp32 analytic gradients vs float64 finite differences (observed ~1e-7). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"
#include "kernels/tl_math.h"

#define TOL_FWD 1e-5
#define TOL_BWD 1e-5

static int g_fail;
static tl_backend *g_be;
static uint64_t g_rng = 0x5eed1234abcdULL;

static void check(const char *what, double err, double tol) {
    int ok = err <= tol; /* false for NaN */
    printf("%-58s err %-10.3g tol %-8.1g %s\n", what, err, tol, ok ? "ok" : "FAIL");
    if (!ok) g_fail++;
}

/* ---- buffers: everything a case allocates is released by release_all() ---- */
#define MAX_TRACK 256
static struct {
    void *p;
    int dev;
} g_track[MAX_TRACK];
static int g_ntrack;

static void *track(void *p, int dev) {
    if (!p || g_ntrack == MAX_TRACK) {
        fprintf(stderr, "test_cpu_ops: out of memory or too many buffers\n");
        exit(1);
    }
    g_track[g_ntrack].p = p;
    g_track[g_ntrack].dev = dev;
    g_ntrack++;
    return p;
}

static void release_all(void) {
    for (int i = 0; i < g_ntrack; i++) {
        if (g_track[i].dev)
            g_be->free(g_be, g_track[i].p);
        else
            free(g_track[i].p);
    }
    g_ntrack = 0;
}

/* backend buffer of n floats, poisoned with NaN */
static float *dev_f(size_t n) {
    void *p = NULL;
    tl_error err;
    if (g_be->alloc(g_be, (n ? n : 1) * sizeof(float), &p, &err) != TL_OK) {
        fprintf(stderr, "test_cpu_ops: %s\n", err.msg);
        exit(1);
    }
    track(p, 1);
    float *f = p;
    for (size_t i = 0; i < n; i++) f[i] = NAN;
    return f;
}

static double *host_d(size_t n) { return track(calloc(n ? n : 1, sizeof(double)), 0); }
static void *host_b(size_t bytes) { return track(calloc(1, bytes ? bytes : 1), 0); }

static uint64_t next_u64(void) { return tl_mix64(g_rng++); }
static double urand(double lo, double hi) { return lo + (hi - lo) * (double)(next_u64() >> 11) * 0x1.0p-53; }
static int irand(int lo, int hi) { return lo + (int)(next_u64() % (uint64_t)(hi - lo)); } /* [lo, hi) */

static void fill(float *a, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) a[i] = (float)urand(lo, hi);
}
static float *dev_rand(size_t n, double lo, double hi) {
    float *a = dev_f(n);
    fill(a, n, lo, hi);
    return a;
}
static double *to_d(const float *a, size_t n) {
    double *d = host_d(n);
    for (size_t i = 0; i < n; i++) d[i] = a[i];
    return d;
}
static float *copy_f(const float *a, size_t n) {
    float *c = dev_f(n);
    memcpy(c, a, n * sizeof(float));
    return c;
}

/* max |a - ref| / max |ref| (NaN anywhere gives NaN) */
static double relerr(const float *a, const double *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - ref[i]);
        if (e != e) return NAN;
        if (e > num) num = e;
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / (den > 1e-30 ? den : 1e-30);
}

/* ---- central finite differences of a float64 loss ---- */
typedef double (*loss_fn)(void *ctx);

static void fd_grad(loss_fn f, void *ctx, double *x, size_t n, double *g) {
    const double step = 1e-5;
    for (size_t k = 0; k < n; k++) {
        double s = x[k];
        x[k] = s + step;
        double lp = f(ctx);
        x[k] = s - step;
        double lm = f(ctx);
        x[k] = s;
        g[k] = (lp - lm) / (2.0 * step);
    }
}

static double dot_d(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ======================================================================================= embed, add */

static void test_embed(void) {
    int V = 11, d = 13, n = 9;
    int32_t tokens[9] = {3, 0, 10, 3, 7, 1, 10, 2, 5};
    float *table = dev_rand((size_t)V * d, -1, 1), *out = dev_f((size_t)n * d);
    g_be->embed_fwd(g_be, out, table, tokens, n, d);
    double bad = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            if (out[i * d + j] != table[tokens[i] * d + j]) bad = 1;
    check("embed_fwd exact rows", bad, 0);
    release_all();
}

static void test_add(void) {
    size_t n = 10007;
    float *y = dev_rand(n, -1, 1), *x = dev_rand(n, -1, 1), *y0 = copy_f(y, n);
    g_be->add(g_be, y, x, n);
    double bad = 0;
    for (size_t i = 0; i < n; i++)
        if (y[i] != y0[i] + x[i]) bad = 1;
    check("add exact (n = 10007)", bad, 0);
    release_all();
}

/* ======================================================================================= rmsnorm */

typedef struct {
    double *x, *w, *R;
    int n, d;
    double eps;
} rms_ctx;

static void ref_rmsnorm(double *out, double *rstd, const double *x, const double *w, int n, int d, double eps) {
    for (int i = 0; i < n; i++) {
        double ss = dot_d(x + (size_t)i * d, x + (size_t)i * d, (size_t)d);
        double r = 1.0 / sqrt(ss / d + eps);
        if (rstd) rstd[i] = r;
        for (int j = 0; j < d; j++) out[(size_t)i * d + j] = x[(size_t)i * d + j] * r * w[j];
    }
}

static double rms_loss(void *p) {
    rms_ctx *c = p;
    double L = 0.0;
    for (int i = 0; i < c->n; i++) {
        const double *xi = c->x + (size_t)i * c->d;
        double r = 1.0 / sqrt(dot_d(xi, xi, (size_t)c->d) / c->d + c->eps);
        for (int j = 0; j < c->d; j++) L += xi[j] * r * c->w[j] * c->R[(size_t)i * c->d + j];
    }
    return L;
}

static void test_rmsnorm(int n, int d) {
    char name[128];
    size_t nd = (size_t)n * d;
    float eps = 1e-5f;
    float *x = dev_rand(nd, -2, 2), *w = dev_rand((size_t)d, 0.5, 1.5), *out = dev_f(nd), *rstd = dev_f((size_t)n);
    g_be->rmsnorm_fwd(g_be, out, rstd, x, w, n, d, eps);
    double *xd = to_d(x, nd), *wd = to_d(w, (size_t)d), *oref = host_d(nd), *rref = host_d((size_t)n);
    ref_rmsnorm(oref, rref, xd, wd, n, d, (double)eps);
    snprintf(name, sizeof name, "rmsnorm_fwd out  n=%d d=%d", n, d);
    check(name, relerr(out, oref, nd), TOL_FWD);
    snprintf(name, sizeof name, "rmsnorm_fwd rstd n=%d d=%d", n, d);
    check(name, relerr(rstd, rref, (size_t)n), TOL_FWD);

    float *R = dev_rand(nd, -1, 1), *dx = dev_rand(nd, -1, 1), *dx0 = copy_f(dx, nd);
    g_be->rmsnorm_bwd(g_be, dx, R, x, w, rstd, n, d);
    rms_ctx c = {xd, wd, to_d(R, nd), n, d, (double)eps};
    double *g = host_d(nd);
    fd_grad(rms_loss, &c, xd, nd, g);
    for (size_t i = 0; i < nd; i++) g[i] += dx0[i];
    snprintf(name, sizeof name, "rmsnorm_bwd dx (+=) vs FD n=%d d=%d", n, d);
    check(name, relerr(dx, g, nd), TOL_BWD);
    release_all();
}

/* ======================================================================================= rope */

typedef struct {
    double *x, *R;
    const int32_t *pos;
    const float *inv_freq;
    int n, nh, hd;
} rope_ctx;

/* the angle is the fp32 product pos * inv_freq (the contract, as in HF); the rotation itself in float64 */
static void ref_rope(double *out, const double *x, const int32_t *pos, const float *inv_freq, int n, int nh,
                     int hd) {
    int half = hd / 2;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            const double *xh = x + ((size_t)i * nh + h) * hd;
            double *oh = out + ((size_t)i * nh + h) * hd;
            for (int j = 0; j < half; j++) {
                double a = (double)((float)pos[i] * inv_freq[j]), c = cos(a), s = sin(a);
                oh[j] = xh[j] * c - xh[j + half] * s;
                oh[j + half] = xh[j + half] * c + xh[j] * s;
            }
        }
}

static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t N = (size_t)c->n * c->nh * c->hd;
    double *o = malloc(N * sizeof(double));
    if (!o) exit(1);
    ref_rope(o, c->x, c->pos, c->inv_freq, c->n, c->nh, c->hd);
    double L = dot_d(o, c->R, N);
    free(o);
    return L;
}

static void test_rope(int n, int nh, int hd) {
    char name[128];
    size_t N = (size_t)n * nh * hd;
    float *inv_freq = dev_f((size_t)hd / 2);
    for (int j = 0; j < hd / 2; j++) inv_freq[j] = powf(10000.0f, -2.0f * (float)j / (float)hd);
    int32_t *pos = host_b((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) pos[i] = irand(0, 5000);
    float *x = dev_rand(N, -1, 1), *x0 = copy_f(x, N);
    g_be->rope_fwd(g_be, x, pos, inv_freq, n, nh, hd);
    double *x0d = to_d(x0, N), *ref = host_d(N);
    ref_rope(ref, x0d, pos, inv_freq, n, nh, hd);
    snprintf(name, sizeof name, "rope_fwd n=%d heads=%d hd=%d", n, nh, hd);
    check(name, relerr(x, ref, N), TOL_FWD);

    float *R = dev_rand(N, -1, 1), *dR = copy_f(R, N);
    g_be->rope_bwd(g_be, dR, pos, inv_freq, n, nh, hd);
    rope_ctx c = {x0d, to_d(R, N), pos, inv_freq, n, nh, hd};
    double *g = host_d(N);
    fd_grad(rope_loss, &c, x0d, N, g);
    snprintf(name, sizeof name, "rope_bwd vs FD n=%d heads=%d hd=%d", n, nh, hd);
    check(name, relerr(dR, g, N), TOL_BWD);

    g_be->rope_bwd(g_be, x, pos, inv_freq, n, nh, hd); /* x holds rope(x0): back to x0 */
    snprintf(name, sizeof name, "rope fwd then bwd round trip hd=%d", hd);
    check(name, relerr(x, x0d, N), 1e-6);
    release_all();
}

/* ======================================================================================= swiglu */

typedef struct {
    double *g, *u, *R;
    size_t n;
} swiglu_ctx;

static double silu_d(double g) { return g / (1.0 + exp(-g)); }

static double swiglu_loss(void *p) {
    swiglu_ctx *c = p;
    double L = 0.0;
    for (size_t i = 0; i < c->n; i++) L += silu_d(c->g[i]) * c->u[i] * c->R[i];
    return L;
}

/* |g| beyond the range where exp over- or underflows: silu(g) = g * sigmoid(g) saturates to g or 0, no NaN */
static void test_swiglu_extreme(void) {
    enum { N = 8 };
    static const float gv[N] = {-1000.0f, -200.0f, -90.0f, -87.0f, 87.0f, 90.0f, 200.0f, 1000.0f};
    float *g = dev_f(N), *u = dev_f(N), *h = dev_f(N), *dh = dev_f(N), *dg = dev_f(N), *du = dev_f(N);
    float ones[N];
    for (int i = 0; i < N; i++) ones[i] = 1.0f;
    g_be->upload(g_be, g, gv, sizeof gv);
    g_be->upload(g_be, u, ones, sizeof ones);
    g_be->upload(g_be, dh, ones, sizeof ones);
    g_be->swiglu_fwd(g_be, h, g, u, N);
    g_be->swiglu_bwd(g_be, dg, du, dh, g, u, N);
    float hv[N], dgv[N], duv[N];
    g_be->download(g_be, hv, h, sizeof hv);
    g_be->download(g_be, dgv, dg, sizeof dgv);
    g_be->download(g_be, duv, du, sizeof duv);
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        double ref = silu_d(gv[i]), dref = gv[i] > 0 ? 1.0 : 0.0;
        double e = fabs(hv[i] - ref) / (fabs(ref) + 1e-30), ed = fabs(dgv[i] - dref);
        if (!isfinite(hv[i]) || !isfinite(dgv[i]) || !isfinite(duv[i])) e = 1.0;
        if (fabs(ref) < 1e-30) e = fabs(hv[i]);
        worst = e > worst ? e : worst;
        worst = ed > worst ? ed : worst;
    }
    check("swiglu fwd/bwd at |g| up to 1000 (saturated, finite)", worst, 1e-5);
    release_all();
}

static void test_swiglu(size_t n, int fd) {
    char name[128];
    float *g = dev_rand(n, -6, 6), *u = dev_rand(n, -1, 1), *h = dev_f(n);
    g_be->swiglu_fwd(g_be, h, g, u, n);
    double *gd = to_d(g, n), *ud = to_d(u, n), *ref = host_d(n);
    for (size_t i = 0; i < n; i++) ref[i] = silu_d(gd[i]) * ud[i];
    snprintf(name, sizeof name, "swiglu_fwd n=%zu", n);
    check(name, relerr(h, ref, n), TOL_FWD);
    if (!fd) {
        release_all();
        return;
    }
    float *R = dev_rand(n, -1, 1), *dg = dev_f(n), *du = dev_f(n);
    g_be->swiglu_bwd(g_be, dg, du, R, g, u, n);
    swiglu_ctx c = {gd, ud, to_d(R, n), n};
    double *gg = host_d(n), *gu = host_d(n);
    fd_grad(swiglu_loss, &c, gd, n, gg);
    fd_grad(swiglu_loss, &c, ud, n, gu);
    snprintf(name, sizeof name, "swiglu_bwd dg vs FD n=%zu", n);
    check(name, relerr(dg, gg, n), TOL_BWD);
    snprintf(name, sizeof name, "swiglu_bwd du vs FD n=%zu", n);
    check(name, relerr(du, gu, n), TOL_BWD);
    release_all();
}

/* ======================================================================================= linear */

typedef struct {
    double *x, *W, *b, *R;
    int n, in, out;
} lin_ctx;

static void ref_linear(double *y, const double *x, const double *W, const double *b, int n, int in, int out) {
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++)
            y[(size_t)i * out + o] = dot_d(x + (size_t)i * in, W + (size_t)o * in, (size_t)in) + (b ? b[o] : 0.0);
}

static double lin_loss(void *p) {
    lin_ctx *c = p;
    size_t N = (size_t)c->n * c->out;
    double *y = malloc(N * sizeof(double));
    if (!y) exit(1);
    ref_linear(y, c->x, c->W, c->b, c->n, c->in, c->out);
    double L = dot_d(y, c->R, N);
    free(y);
    return L;
}

static void test_linear(int n, int in, int out, int use_bias, int acc) {
    char name[160];
    size_t ny = (size_t)n * out, nx = (size_t)n * in;
    float *x = dev_rand(nx, -1, 1), *W = dev_rand((size_t)out * in, -0.5, 0.5);
    float *b = use_bias ? dev_rand((size_t)out, -1, 1) : NULL;
    float *y = acc ? dev_rand(ny, -1, 1) : dev_f(ny), *y0 = copy_f(y, ny);
    g_be->linear_fwd(g_be, y, x, W, b, n, in, out, acc);
    double *xd = to_d(x, nx), *Wd = to_d(W, (size_t)out * in), *bd = b ? to_d(b, (size_t)out) : NULL;
    double *ref = host_d(ny);
    ref_linear(ref, xd, Wd, bd, n, in, out);
    if (acc)
        for (size_t i = 0; i < ny; i++) ref[i] += y0[i];
    snprintf(name, sizeof name, "linear_fwd n=%d in=%d out=%d bias=%d acc=%d", n, in, out, use_bias, acc);
    check(name, relerr(y, ref, ny), TOL_FWD);

    float *R = dev_rand(ny, -1, 1), *dx = acc ? dev_rand(nx, -1, 1) : dev_f(nx), *dx0 = copy_f(dx, nx);
    g_be->linear_bwd_x(g_be, dx, R, W, n, in, out, acc);
    lin_ctx c = {xd, Wd, bd, to_d(R, ny), n, in, out};
    double *g = host_d(nx);
    int fd = nx <= 4096; /* beyond, finite differences take too long: the exact dx = R W in double */
    if (fd) {
        fd_grad(lin_loss, &c, xd, nx, g);
    } else {
        for (int i = 0; i < n; i++)
            for (int k = 0; k < in; k++) {
                double a = 0.0;
                for (int o = 0; o < out; o++) a += c.R[(size_t)i * out + o] * Wd[(size_t)o * in + k];
                g[(size_t)i * in + k] = a;
            }
    }
    if (acc)
        for (size_t i = 0; i < nx; i++) g[i] += dx0[i];
    snprintf(name, sizeof name, "linear_bwd_x vs %s n=%d in=%d out=%d acc=%d", fd ? "FD" : "exact", n, in, out, acc);
    check(name, relerr(dx, g, nx), TOL_BWD);
    release_all();
}

/* ======================================================================================= LoRA */

typedef struct {
    double *x, *pool, *mask, *R; /* pool: A_s at s * stride, B_s at s * stride + r * in */
    const tl_seg *segs;
    int n_seg, n, in, out, r;
    size_t stride;
    double scale;
} lora_ctx;

/* y[n, out] = scale * (x_drop A_s^T) B_s^T per segment (0 for slot < 0); h[n, r] = x_drop A_s^T */
static void ref_lora(double *y, double *h, const lora_ctx *c) {
    int in = c->in, out = c->out, r = c->r;
    memset(y, 0, (size_t)c->n * out * sizeof(double));
    memset(h, 0, (size_t)c->n * r * sizeof(double));
    for (int s = 0; s < c->n_seg; s++) {
        tl_seg sg = c->segs[s];
        if (sg.slot < 0) continue;
        const double *A = c->pool + (size_t)sg.slot * c->stride, *B = A + (size_t)r * in;
        for (int i = sg.row0; i < sg.row1; i++) {
            for (int k = 0; k < r; k++) {
                double acc = 0.0;
                for (int col = 0; col < in; col++)
                    acc += c->x[(size_t)i * in + col] * c->mask[(size_t)i * in + col] * A[(size_t)k * in + col];
                h[(size_t)i * r + k] = acc;
            }
            for (int o = 0; o < out; o++) {
                double acc = 0.0;
                for (int k = 0; k < r; k++) acc += h[(size_t)i * r + k] * B[(size_t)o * r + k];
                y[(size_t)i * out + o] = c->scale * acc;
            }
        }
    }
}

static double lora_loss(void *p) {
    lora_ctx *c = p;
    double *y = malloc((size_t)c->n * c->out * sizeof(double)), *h = malloc((size_t)c->n * c->r * sizeof(double));
    if (!y || !h) exit(1);
    ref_lora(y, h, c);
    double L = dot_d(y, c->R, (size_t)c->n * c->out);
    free(y);
    free(h);
    return L;
}

/* Reference backward in closed form (used where finite differences would be too slow: the blocked case). */
static void ref_lora_bwd(double *gpool, double *dx, const lora_ctx *c, const double *h) {
    int in = c->in, out = c->out, r = c->r;
    for (int s = 0; s < c->n_seg; s++) {
        tl_seg sg = c->segs[s];
        if (sg.slot < 0) continue;
        const double *A = c->pool + (size_t)sg.slot * c->stride, *B = A + (size_t)r * in;
        double *dA = gpool + (size_t)sg.slot * c->stride, *dB = dA + (size_t)r * in;
        for (int i = sg.row0; i < sg.row1; i++) {
            const double *dy = c->R + (size_t)i * out;
            for (int k = 0; k < r; k++) {
                double dh = 0.0;
                for (int o = 0; o < out; o++) {
                    dB[(size_t)o * r + k] += c->scale * dy[o] * h[(size_t)i * r + k];
                    dh += dy[o] * B[(size_t)o * r + k];
                }
                dh *= c->scale;
                for (int col = 0; col < in; col++) {
                    double m = c->mask[(size_t)i * in + col];
                    dA[(size_t)k * in + col] += dh * c->x[(size_t)i * in + col] * m;
                    dx[(size_t)i * in + col] += dh * A[(size_t)k * in + col] * m;
                }
            }
        }
    }
}

static tl_mb make_mb(int n, const tl_seg *segs, int n_seg, const uint64_t *row_seed) {
    tl_mb mb;
    memset(&mb, 0, sizeof mb);
    mb.n_tok = n;
    mb.n_seg = n_seg;
    mb.h_segs = segs;
    mb.segs = segs;
    mb.row_seed = row_seed;
    return mb;
}

static void test_lora(int r, float dropout) {
    char name[160];
    const int n = 23, in = 11, out = 7, nslots = 3;
    /* slot 2 twice, a bare-model segment, slot 1 never used (its gradients must stay untouched) */
    static const tl_seg segs[4] = {{0, 5, 2}, {5, 9, -1}, {9, 16, 0}, {16, 23, 2}};
    const int n_seg = 4;
    const uint32_t site = 7;
    size_t stride = (size_t)r * in + (size_t)out * r + 5, npool = nslots * stride;
    size_t nx = (size_t)n * in, ny = (size_t)n * out, nh = (size_t)n * r;
    float scale = 1.7f;
    uint64_t *seeds = host_b((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) seeds[i] = next_u64();
    tl_mb mb = make_mb(n, segs, n_seg, seeds);

    float *x = dev_rand(nx, -1, 1), *pool = dev_rand(npool, -0.5, 0.5);
    float *A = pool, *B = pool + (size_t)r * in;
    float *y = dev_rand(ny, -1, 1), *y0 = copy_f(y, ny), *h = dev_f(nh);
    tl_lora_site ls = {A, B, stride, r, scale, dropout, site};
    g_be->lora_fwd(g_be, y, h, x, &ls, &mb, in, out);

    double *mask = host_d(nx);
    for (int i = 0; i < n; i++)
        for (int col = 0; col < in; col++)
            mask[(size_t)i * in + col] = tl_dropout_mul(seeds[i], site, (uint32_t)col, dropout);
    lora_ctx c = {to_d(x, nx), to_d(pool, npool), mask, NULL, segs, n_seg, n, in, out, r, stride, scale};
    double *yref = host_d(ny), *href = host_d(nh);
    ref_lora(yref, href, &c);
    for (size_t i = 0; i < ny; i++) yref[i] += y0[i];
    snprintf(name, sizeof name, "lora_fwd y (+=) r=%d dropout=%.1f", r, dropout);
    check(name, relerr(y, yref, ny), TOL_FWD);
    snprintf(name, sizeof name, "lora_fwd h r=%d dropout=%.1f", r, dropout);
    check(name, relerr(h, href, nh), TOL_FWD);
    double bare = 0;
    for (size_t i = 5 * (size_t)r; i < 9 * (size_t)r; i++)
        if (h[i] != 0.0f) bare = 1;
    for (size_t i = 5 * (size_t)out; i < 9 * (size_t)out; i++)
        if (y[i] != y0[i]) bare = 1;
    check("lora_fwd slot -1 rows: h = 0, y untouched", bare, 0);

    float *R = dev_rand(ny, -1, 1), *gp = dev_rand(npool, -1, 1), *gp0 = copy_f(gp, npool);
    float *dx = dev_rand(nx, -1, 1), *dx0 = copy_f(dx, nx);
    g_be->lora_bwd(g_be, dx, gp, gp + (size_t)r * in, R, x, h, &ls, &mb, in, out);
    c.R = to_d(R, ny);
    double *gpool = host_d(npool), *gx = host_d(nx);
    fd_grad(lora_loss, &c, c.pool, npool, gpool);
    fd_grad(lora_loss, &c, c.x, nx, gx);
    for (size_t i = 0; i < npool; i++) gpool[i] += gp0[i];
    for (size_t i = 0; i < nx; i++) gx[i] += dx0[i];
    snprintf(name, sizeof name, "lora_bwd dA,dB (+=) vs FD r=%d dropout=%.1f", r, dropout);
    check(name, relerr(gp, gpool, npool), TOL_BWD);
    snprintf(name, sizeof name, "lora_bwd dx (+=) vs FD r=%d dropout=%.1f", r, dropout);
    check(name, relerr(dx, gx, nx), TOL_BWD);
    double untouched = 0;
    for (size_t s = 0; s < (size_t)nslots; s++)
        for (size_t i = s * stride; i < (s + 1) * stride; i++)
            if ((s == 1 || i >= s * stride + (size_t)r * in + (size_t)out * r) && gp[i] != gp0[i]) untouched = 1;
    for (size_t i = 5 * (size_t)in; i < 9 * (size_t)in; i++)
        if (dx[i] != dx0[i]) untouched = 1;
    check("lora_bwd unused slot, stride gaps, slot -1 dx untouched", untouched, 0);

    /* dx = NULL: same parameter gradients, bit for bit */
    float *gq = copy_f(gp0, npool);
    g_be->lora_bwd(g_be, NULL, gq, gq + (size_t)r * in, R, x, h, &ls, &mb, in, out);
    check("lora_bwd dx = NULL gives identical dA, dB", memcmp(gq, gp, npool * sizeof(float)) != 0, 0);
    release_all();
}

/* Rows beyond one scratch block: the blocked products must match the closed-form reference. */
/* one_seg = 0: two adapters' segments and a bare one (shared out over the threads by slot); 1: one segment of one
 * adapter (the segments in turn, each product split over the threads) */
static void test_lora_blocked(float dropout, int one_seg) {
    char name[160];
    const int n = 1100, in = 2048, out = 24, r = 4;
    static const tl_seg segs3[3] = {{0, 1030, 1}, {1030, 1040, -1}, {1040, 1100, 0}}, segs1[1] = {{0, 1100, 1}};
    const tl_seg *segs = one_seg ? segs1 : segs3;
    const int n_seg = one_seg ? 1 : 3;
    const uint32_t site = 3;
    size_t stride = (size_t)r * in + (size_t)out * r, npool = 2 * stride;
    size_t nx = (size_t)n * in, ny = (size_t)n * out, nh = (size_t)n * r;
    float scale = 0.5f;
    uint64_t *seeds = host_b((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) seeds[i] = next_u64();
    tl_mb mb = make_mb(n, segs, n_seg, seeds);
    float *x = dev_rand(nx, -1, 1), *pool = dev_rand(npool, -0.1, 0.1);
    float *y = dev_rand(ny, -1, 1), *y0 = copy_f(y, ny), *h = dev_f(nh);
    tl_lora_site ls = {pool, pool + (size_t)r * in, stride, r, scale, dropout, site};
    g_be->lora_fwd(g_be, y, h, x, &ls, &mb, in, out);
    double *mask = host_d(nx);
    for (int i = 0; i < n; i++)
        for (int col = 0; col < in; col++)
            mask[(size_t)i * in + col] = tl_dropout_mul(seeds[i], site, (uint32_t)col, dropout);
    lora_ctx c = {to_d(x, nx), to_d(pool, npool), mask, NULL, segs, n_seg, n, in, out, r, stride, scale};
    double *yref = host_d(ny), *href = host_d(nh);
    ref_lora(yref, href, &c);
    for (size_t i = 0; i < ny; i++) yref[i] += y0[i];
    snprintf(name, sizeof name, "lora_fwd blocked n=%d in=%d dropout=%.1f segments=%d", n, in, dropout, n_seg);
    check(name, relerr(y, yref, ny), TOL_FWD);

    float *R = dev_rand(ny, -1, 1), *gp = dev_f(npool), *dx = dev_f(nx);
    g_be->zero(g_be, gp, npool * sizeof(float));
    g_be->zero(g_be, dx, nx * sizeof(float));
    g_be->lora_bwd(g_be, dx, gp, gp + (size_t)r * in, R, x, h, &ls, &mb, in, out);
    c.R = to_d(R, ny);
    double *gref = host_d(npool), *dxref = host_d(nx), *hd = to_d(h, nh);
    ref_lora_bwd(gref, dxref, &c, hd);
    snprintf(name, sizeof name, "lora_bwd blocked dA,dB n=%d in=%d dropout=%.1f segments=%d", n, in, dropout, n_seg);
    check(name, relerr(gp, gref, npool), TOL_FWD);
    snprintf(name, sizeof name, "lora_bwd blocked dx n=%d in=%d dropout=%.1f segments=%d", n, in, dropout, n_seg);
    check(name, relerr(dx, dxref, nx), TOL_FWD);
    release_all();
}

/* ======================================================================================= attention */

typedef struct {
    double *q, *k, *v, *R;
    const int32_t *cu;
    int n_seq, n, Hq, Hkv, hd;
} attn_ctx;

static void ref_attn(double *out, double *lse, const attn_ctx *c) {
    int Hq = c->Hq, Hkv = c->Hkv, hd = c->hd, group = Hq / Hkv;
    double scale = 1.0 / sqrt((double)hd);
    double *s = malloc((size_t)c->n * sizeof(double));
    if (!s) exit(1);
    for (int sq = 0; sq < c->n_seq; sq++)
        for (int i = c->cu[sq]; i < c->cu[sq + 1]; i++)
            for (int h = 0; h < Hq; h++) {
                const double *qi = c->q + ((size_t)i * Hq + h) * hd;
                int g = h / group;
                double mx = -INFINITY, sum = 0.0;
                for (int j = c->cu[sq]; j <= i; j++) {
                    s[j] = scale * dot_d(qi, c->k + ((size_t)j * Hkv + g) * hd, (size_t)hd);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = c->cu[sq]; j <= i; j++) sum += exp(s[j] - mx);
                double *oi = out + ((size_t)i * Hq + h) * hd;
                for (int t = 0; t < hd; t++) oi[t] = 0.0;
                for (int j = c->cu[sq]; j <= i; j++) {
                    double p = exp(s[j] - mx) / sum;
                    for (int t = 0; t < hd; t++) oi[t] += p * c->v[((size_t)j * Hkv + g) * hd + t];
                }
                if (lse) lse[(size_t)i * Hq + h] = mx + log(sum);
            }
    free(s);
}

static double attn_loss(void *p) {
    attn_ctx *c = p;
    size_t N = (size_t)c->n * c->Hq * c->hd;
    double *o = malloc(N * sizeof(double));
    if (!o) exit(1);
    ref_attn(o, NULL, c);
    double L = dot_d(o, c->R, N);
    free(o);
    return L;
}

static void test_attention(const int *lens, int n_seq, int Hq, int Hkv, int hd) {
    char name[160];
    int32_t *cu = host_b((size_t)(n_seq + 1) * sizeof(int32_t));
    int maxlen = 0;
    for (int s = 0; s < n_seq; s++) {
        cu[s + 1] = cu[s] + lens[s];
        if (lens[s] > maxlen) maxlen = lens[s];
    }
    int n = cu[n_seq];
    tl_mb mb;
    memset(&mb, 0, sizeof mb);
    mb.n_tok = n;
    mb.n_seq = n_seq;
    mb.max_seqlen = maxlen;
    mb.h_cu_seqlens = cu;
    mb.cu_seqlens = cu;
    size_t nq = (size_t)n * Hq * hd, nk = (size_t)n * Hkv * hd;
    float *q = dev_rand(nq, -1.5, 1.5), *k = dev_rand(nk, -1.5, 1.5), *v = dev_rand(nk, -1, 1);
    float *out = dev_f(nq), *lse = dev_f((size_t)n * Hq);
    g_be->attn_fwd(g_be, out, lse, q, k, v, &mb, Hq, Hkv, hd);
    attn_ctx c = {to_d(q, nq), to_d(k, nk), to_d(v, nk), NULL, cu, n_seq, n, Hq, Hkv, hd};
    double *oref = host_d(nq), *lref = host_d((size_t)n * Hq);
    ref_attn(oref, lref, &c);
    snprintf(name, sizeof name, "attn_fwd out n=%d seqs=%d Hq=%d Hkv=%d hd=%d", n, n_seq, Hq, Hkv, hd);
    check(name, relerr(out, oref, nq), TOL_FWD);
    snprintf(name, sizeof name, "attn_fwd lse n=%d seqs=%d Hq=%d Hkv=%d hd=%d", n, n_seq, Hq, Hkv, hd);
    check(name, relerr(lse, lref, (size_t)n * Hq), TOL_FWD);

    float *R = dev_rand(nq, -1, 1), *dq = dev_f(nq), *dk = dev_f(nk), *dv = dev_f(nk);
    g_be->attn_bwd(g_be, dq, dk, dv, R, out, lse, q, k, v, &mb, Hq, Hkv, hd);
    c.R = to_d(R, nq);
    double *gq = host_d(nq), *gk = host_d(nk), *gv = host_d(nk);
    fd_grad(attn_loss, &c, c.q, nq, gq);
    fd_grad(attn_loss, &c, c.k, nk, gk);
    fd_grad(attn_loss, &c, c.v, nk, gv);
    snprintf(name, sizeof name, "attn_bwd dq vs FD Hq=%d Hkv=%d hd=%d", Hq, Hkv, hd);
    check(name, relerr(dq, gq, nq), TOL_BWD);
    snprintf(name, sizeof name, "attn_bwd dk vs FD Hq=%d Hkv=%d hd=%d", Hq, Hkv, hd);
    check(name, relerr(dk, gk, nk), TOL_BWD);
    snprintf(name, sizeof name, "attn_bwd dv vs FD Hq=%d Hkv=%d hd=%d", Hq, Hkv, hd);
    check(name, relerr(dv, gv, nk), TOL_BWD);

    float *dq2 = dev_f(nq), *dk2 = dev_f(nk), *dv2 = dev_f(nk);
    g_be->attn_bwd(g_be, dq2, dk2, dv2, R, out, lse, q, k, v, &mb, Hq, Hkv, hd);
    int same = !memcmp(dq, dq2, nq * sizeof(float)) && !memcmp(dk, dk2, nk * sizeof(float)) &&
               !memcmp(dv, dv2, nk * sizeof(float));
    check("attn_bwd repeatable bit for bit", !same, 0);
    release_all();
}

/* Long sequences reach the blocked paths of the attention (several 64-row query blocks, key blocks of up to 512
 * with the online softmax): forward against the float64 reference, backward by directional finite differences
 * (d/dt L(x + t u) for a random direction u per input, which costs two reference evaluations instead of one
 * per element). */
static void test_attention_long(const int *lens, int n_seq, int Hq, int Hkv, int hd) {
    char name[160];
    int32_t *cu = host_b((size_t)(n_seq + 1) * sizeof(int32_t));
    int maxlen = 0;
    for (int s = 0; s < n_seq; s++) {
        cu[s + 1] = cu[s] + lens[s];
        if (lens[s] > maxlen) maxlen = lens[s];
    }
    int n = cu[n_seq];
    tl_mb mb;
    memset(&mb, 0, sizeof mb);
    mb.n_tok = n, mb.n_seq = n_seq, mb.max_seqlen = maxlen, mb.h_cu_seqlens = cu, mb.cu_seqlens = cu;
    size_t nq = (size_t)n * Hq * hd, nk = (size_t)n * Hkv * hd;
    float *q = dev_rand(nq, -1.5, 1.5), *k = dev_rand(nk, -1.5, 1.5), *v = dev_rand(nk, -1, 1);
    float *out = dev_f(nq), *lse = dev_f((size_t)n * Hq);
    g_be->attn_fwd(g_be, out, lse, q, k, v, &mb, Hq, Hkv, hd);
    attn_ctx c = {to_d(q, nq), to_d(k, nk), to_d(v, nk), NULL, cu, n_seq, n, Hq, Hkv, hd};
    double *oref = host_d(nq), *lref = host_d((size_t)n * Hq);
    ref_attn(oref, lref, &c);
    snprintf(name, sizeof name, "attn_fwd long out n=%d seqs=%d (max %d)", n, n_seq, maxlen);
    check(name, relerr(out, oref, nq), TOL_FWD);
    snprintf(name, sizeof name, "attn_fwd long lse n=%d seqs=%d (max %d)", n, n_seq, maxlen);
    check(name, relerr(lse, lref, (size_t)n * Hq), TOL_FWD);

    float *R = dev_rand(nq, -1, 1), *dq = dev_f(nq), *dk = dev_f(nk), *dv = dev_f(nk);
    g_be->attn_bwd(g_be, dq, dk, dv, R, out, lse, q, k, v, &mb, Hq, Hkv, hd);
    c.R = to_d(R, nq);
    struct {
        const char *what;
        double *x;
        const float *g;
        size_t len;
    } in[3] = {{"dq", c.q, dq, nq}, {"dk", c.k, dk, nk}, {"dv", c.v, dv, nk}};
    for (int t = 0; t < 3; t++) {
        double *u = to_d(dev_rand(in[t].len, -1, 1), in[t].len), *x0 = host_d(in[t].len);
        memcpy(x0, in[t].x, in[t].len * sizeof(double));
        const double step = 1e-4;
        for (size_t i = 0; i < in[t].len; i++) in[t].x[i] = x0[i] + step * u[i];
        double lp = attn_loss(&c);
        for (size_t i = 0; i < in[t].len; i++) in[t].x[i] = x0[i] - step * u[i];
        double lm = attn_loss(&c);
        memcpy(in[t].x, x0, in[t].len * sizeof(double));
        double fd = (lp - lm) / (2 * step), an = 0, scale = 0;
        for (size_t i = 0; i < in[t].len; i++) an += (double)in[t].g[i] * u[i], scale += fabs((double)in[t].g[i] * u[i]);
        snprintf(name, sizeof name, "attn_bwd long %s directional derivative n=%d (max %d)", in[t].what, n, maxlen);
        check(name, fabs(an - fd) / (scale > 0 ? scale : 1), TOL_BWD);
    }
    release_all();
}

/* ======================================================================================= cross-entropy */

typedef struct {
    double *x, *W, *dlogp;
    const int32_t *targets;
    int n, d, V;
} ce_ctx;

static void ref_ce(double *logp, const ce_ctx *c) {
    double *z = malloc((size_t)c->V * sizeof(double));
    if (!z) exit(1);
    for (int i = 0; i < c->n; i++) {
        int t = c->targets[i];
        if (t < 0) {
            logp[i] = 0.0;
            continue;
        }
        double mx = -INFINITY, sum = 0.0;
        for (int v = 0; v < c->V; v++) {
            z[v] = dot_d(c->x + (size_t)i * c->d, c->W + (size_t)v * c->d, (size_t)c->d);
            if (z[v] > mx) mx = z[v];
        }
        for (int v = 0; v < c->V; v++) sum += exp(z[v] - mx);
        logp[i] = z[t] - mx - log(sum);
    }
    free(z);
}

static double ce_loss(void *p) {
    ce_ctx *c = p;
    double *lp = malloc((size_t)c->n * sizeof(double));
    if (!lp) exit(1);
    ref_ce(lp, c);
    double L = dot_d(lp, c->dlogp, (size_t)c->n);
    free(lp);
    return L;
}

static void test_ce(int n, int d, int V, int chunk) {
    char name[160];
    int32_t *targets = host_b((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) targets[i] = (i % 5 == 2) ? -1 : irand(0, V);
    float *x = dev_rand((size_t)n * d, -1, 1), *W = dev_rand((size_t)V * d, -1, 1);
    float *dlogp = dev_rand((size_t)n, -1, 1), *logp = dev_f((size_t)n), *dx = dev_f((size_t)n * d);
    float *work = dev_f((size_t)chunk * V);
    g_be->ce_fwd_bwd(g_be, logp, dx, x, W, targets, dlogp, n, d, V, work, (size_t)chunk * V, chunk);
    ce_ctx c = {to_d(x, (size_t)n * d), to_d(W, (size_t)V * d), to_d(dlogp, (size_t)n), targets, n, d, V};
    double *lref = host_d((size_t)n), *gx = host_d((size_t)n * d);
    ref_ce(lref, &c);
    snprintf(name, sizeof name, "ce_fwd_bwd logp n=%d d=%d V=%d chunk=%d", n, d, V, chunk);
    check(name, relerr(logp, lref, (size_t)n), TOL_FWD);
    fd_grad(ce_loss, &c, c.x, (size_t)n * d, gx);
    snprintf(name, sizeof name, "ce_fwd_bwd dx vs FD n=%d d=%d V=%d chunk=%d", n, d, V, chunk);
    check(name, relerr(dx, gx, (size_t)n * d), TOL_BWD);
    double bad = 0;
    for (int i = 0; i < n; i++)
        if (targets[i] < 0) {
            if (logp[i] != 0.0f) bad = 1;
            for (int j = 0; j < d; j++)
                if (dx[(size_t)i * d + j] != 0.0f) bad = 1;
        }
    check("ce_fwd_bwd untrained rows: logp = 0, dx = 0 exactly", bad, 0);

    float *logp2 = dev_f((size_t)n);
    g_be->ce_fwd_bwd(g_be, logp2, NULL, x, W, targets, NULL, n, d, V, work, (size_t)chunk * V, chunk);
    check("ce_fwd_bwd without dx: same logp", memcmp(logp, logp2, (size_t)n * sizeof(float)) != 0, 0);
    if (!strncmp(tl_backend_cpu_products(), "tailor", 6)) {
        /* the rows with a target are gathered chunk by chunk: with tailor's tiles a row's values do not depend on
         * the rows it shares a chunk with, so one chunk of all rows gives the same bits */
        float *logp3 = dev_f((size_t)n), *work3 = dev_f((size_t)n * V);
        g_be->ce_fwd_bwd(g_be, logp3, NULL, x, W, targets, NULL, n, d, V, work3, (size_t)n * V, n);
        check("ce_fwd_bwd (tiles): the same logp with one chunk", memcmp(logp, logp3, (size_t)n * sizeof(float)) != 0,
              0);
    }
    release_all();
}

/* ======================================================================================= optimizer */

static void test_grad_sqnorm(size_t P) {
    char name[128];
    size_t stride = P + 3, nslots = 4;
    float *g = dev_rand(nslots * stride, -1, 1);
    int32_t slots[3] = {3, 0, 2};
    float out[3] = {NAN, NAN, NAN};
    g_be->grad_sqnorm(g_be, out, g, stride, P, slots, 3);
    double ref[3];
    for (int s = 0; s < 3; s++) {
        const float *gs = g + (size_t)slots[s] * stride;
        ref[s] = 0.0;
        for (size_t i = 0; i < P; i++) ref[s] += (double)gs[i] * gs[i];
    }
    snprintf(name, sizeof name, "grad_sqnorm P=%zu", P);
    check(name, relerr(out, ref, 3), 1e-6);
    float out2[3];
    g_be->grad_sqnorm(g_be, out2, g, stride, P, slots, 3);
    check("grad_sqnorm repeatable bit for bit", memcmp(out, out2, sizeof out) != 0, 0);
    release_all();
}

/* torch.optim.AdamW, one parameter, float64 */
static void ref_adamw(double *p, double *m, double *v, double grad, double lr, double b1, double b2, double eps,
                      double wd, int t) {
    *p *= 1.0 - lr * wd;
    *m = b1 * *m + (1.0 - b1) * grad;
    *v = b2 * *v + (1.0 - b2) * grad * grad;
    double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    double denom = sqrt(*v) / sqrt(bc2) + eps;
    *p -= lr / bc1 * *m / denom;
}

static void test_adamw(void) {
    const size_t P = 37, stride = 41, nslots = 3, N = nslots * stride;
    /* the betas in double, as the config holds them: 1 - b2 in float32 (1 - 0.999f) would leave v 1.3e-5 too small
     * against the float64 reference, over the 1e-5 tolerance of the v check */
    const double b1 = 0.9, b2 = 0.999;
    const float eps = 1e-8f, wd = 0.01f;
    float *p = dev_rand(N, -1, 1), *m = dev_f(N), *v = dev_f(N), *g = dev_f(N);
    g_be->zero(g_be, m, N * sizeof(float));
    g_be->zero(g_be, v, N * sizeof(float));
    float *p0 = copy_f(p, N);
    double *pd = to_d(p, N), *md = host_d(N), *vd = host_d(N);
    /* slot 2 starts at step 1, slot 0 at step 5: bias corrections are per slot; slot 1 is never listed */
    const int32_t slot_ids[2] = {2, 0};
    const int t0[2] = {1, 5};
    const float lrs[2] = {0.05f, 0.02f}, gscales[2] = {0.5f, 1.0f};
    for (int step = 0; step < 4; step++) {
        fill(g, N, -1, 1);
        tl_adam_slot hs[2];
        for (int s = 0; s < 2; s++) {
            int t = t0[s] + step;
            hs[s].slot = slot_ids[s];
            hs[s].lr = lrs[s];
            hs[s].gscale = gscales[s];
            hs[s].bc1 = (float)(1.0 - pow(b1, t));
            hs[s].bc2 = (float)(1.0 - pow(b2, t));
            for (size_t i = 0; i < P; i++) {
                size_t o = (size_t)slot_ids[s] * stride + i;
                ref_adamw(&pd[o], &md[o], &vd[o], (double)g[o] * gscales[s], lrs[s], b1, b2, eps, wd, t);
            }
        }
        g_be->adamw(g_be, p, m, v, g, stride, P, hs, 2, b1, b2, eps, wd);
    }
    double *dp = host_d(N), *dpr = host_d(N);
    for (size_t i = 0; i < N; i++) {
        dp[i] = (double)p[i] - p0[i];
        dpr[i] = pd[i] - p0[i];
    }
    float *dpf = dev_f(N);
    for (size_t i = 0; i < N; i++) dpf[i] = (float)dp[i];
    size_t o0 = 0, o2 = 2 * stride;
    check("adamw p (slots 0, 2) vs torch AdamW float64, 4 steps", fmax(relerr(p + o0, pd + o0, P),
                                                                       relerr(p + o2, pd + o2, P)), 1e-6);
    check("adamw total update p - p0 vs float64", fmax(relerr(dpf + o0, dpr + o0, P), relerr(dpf + o2, dpr + o2, P)),
          1e-4);
    check("adamw m vs float64", fmax(relerr(m + o0, md + o0, P), relerr(m + o2, md + o2, P)), 1e-5);
    check("adamw v vs float64", fmax(relerr(v + o0, vd + o0, P), relerr(v + o2, vd + o2, P)), 1e-5);
    double untouched = 0;
    for (size_t i = 0; i < N; i++) {
        int in_slot = (i < P) || (i >= 2 * stride && i < 2 * stride + P);
        if (!in_slot && memcmp(&p[i], &p0[i], sizeof(float)) != 0) untouched = 1;
    }
    check("adamw unlisted slot and gaps untouched", untouched, 0);
    release_all();
}

/* ======================================================================================= backend plumbing */

static void test_plumbing(void) {
    tl_error err;
    tl_status st;
    void *p = NULL;
    double bad = 0;
    if (g_be->alloc(g_be, 0, &p, &err) != TL_OK || !p || ((uintptr_t)p % 64) != 0) bad = 1;
    g_be->free(g_be, p);
    if (g_be->alloc(g_be, 1000, &p, &err) != TL_OK || ((uintptr_t)p % 64) != 0) bad = 1;
    float host[250], back[250];
    fill(host, 250, -1, 1);
    g_be->upload_act(g_be, p, host, 250);
    g_be->download_act(g_be, back, p, 250);
    if (memcmp(host, back, sizeof host)) bad = 1;
    g_be->free(g_be, p);
    check("alloc 64-byte aligned, act round trip", bad, 0);
#if !defined(__SANITIZE_ADDRESS__)
    p = NULL;
    st = g_be->alloc(g_be, (size_t)1 << 62, &p, &err);
    check("alloc of 2^62 bytes fails with TL_ERR_RUNTIME naming the size",
          !(st == TL_ERR_RUNTIME && !p && strstr(err.msg, "4611686018427387904")), 0);
#endif
    check("status OK after valid ops", g_be->status(g_be, &err) != TL_OK, 0);

    /* an out-of-range target is recorded, sticky, in status() */
    tl_backend *be2 = NULL;
    if (tl_backend_cpu_create(1, &be2, &err) != TL_OK) {
        check("second cpu backend", 1, 0);
        return;
    }
    float x[4] = {1, 2, 3, 4}, W[8] = {1, 0, 0, 1, 1, 1, 0, 0}, logp[2], work[2 * 4]; /* work [chunk, V] */
    int32_t t[2] = {1, 9};
    be2->ce_fwd_bwd(be2, logp, NULL, x, W, t, NULL, 2, 2, 4, work, sizeof work / sizeof *work, 2);
    tl_status s1 = be2->status(be2, &err), s2 = be2->status(be2, &err);
    check("bad target: status TL_ERR_RUNTIME, sticky, names targets[1]",
          !(s1 == TL_ERR_RUNTIME && s2 == TL_ERR_RUNTIME && strstr(err.msg, "targets[1]")), 0);
    be2->destroy(be2);

    /* a work buffer below chunk * V floats is refused before anything is written, naming work */
    be2 = NULL;
    if (tl_backend_cpu_create(1, &be2, &err) != TL_OK) {
        check("third cpu backend", 1, 0);
        return;
    }
    int32_t t_ok[2] = {1, 3};
    for (size_t i = 0; i < 8; i++) work[i] = -7.0f;
    logp[0] = logp[1] = -7.0f;
    be2->ce_fwd_bwd(be2, logp, NULL, x, W, t_ok, NULL, 2, 2, 4, work, 7, 2);
    s1 = be2->status(be2, &err);
    int wrote = logp[0] != -7.0f || logp[1] != -7.0f;
    for (size_t i = 0; i < 8; i++) wrote |= work[i] != -7.0f;
    check("ce_fwd_bwd work_len 7 < chunk * V = 8: TL_ERR_RUNTIME naming work, nothing written",
          !(s1 == TL_ERR_RUNTIME && strstr(err.msg, "work") && strstr(err.msg, "2 * 4") && !wrote), 0);
    be2->destroy(be2);

    tl_backend *b = NULL;
    st = tl_backend_open("cpu", 0, &b, &err);
    check("tl_backend_open(cpu)", !(st == TL_OK && b && !strcmp(b->name, "cpu") && b->act_size == 4), 0);
    if (b) {
        check("cpu capabilities: host memory, device -1, no stream, no memory count",
              !(b->host_memory == 1 && b->device == -1 && b->stream && b->stream(b) == NULL && !b->mem_stats &&
                b->status && b->status(b, &err) == TL_OK),
              0);
    }
    if (b) b->destroy(b);
    b = NULL;
    st = tl_backend_open("tpu", 0, &b, &err);
    check("tl_backend_open(tpu) is TL_ERR_INPUT", !(st == TL_ERR_INPUT && !b && strstr(err.msg, "train.backend")),
          0);
    b = NULL;
    st = tl_backend_open("auto", 0, &b, &err);
    check("tl_backend_open(auto)", !(st == TL_OK && b), 0);
    if (b) b->destroy(b);
    b = NULL;
    st = tl_backend_open("cuda", 0, &b, &err);
#ifdef TL_HAVE_CUDA
    if (tl_cuda_device_count() > 0) {
        check("tl_backend_open(cuda) with a GPU", !(st == TL_OK && b && !strcmp(b->name, "cuda")), 0);
        if (b) b->destroy(b);
    } else {
        check("tl_backend_open(cuda) without GPU is TL_ERR_INPUT", !(st == TL_ERR_INPUT && strstr(err.msg, "no GPU")),
              0);
    }
#else
    check("tl_backend_open(cuda) in a CPU-only build is TL_ERR_INPUT",
          !(st == TL_ERR_INPUT && !b && strstr(err.msg, "no CUDA backend")), 0);
#endif
}

int main(void) {
    tl_error err;
    if (tl_backend_cpu_create(0, &g_be, &err) != TL_OK) {
        fprintf(stderr, "test_cpu_ops: %s\n", err.msg);
        return 1;
    }
    test_plumbing();
    test_embed();
    test_add();
    test_rmsnorm(5, 17);
    test_rmsnorm(3, 64);
    test_rmsnorm(1, 3);
    test_rope(9, 3, 8);
    test_rope(5, 2, 16);
    test_swiglu(777, 1);
    test_swiglu(10007, 0);
    test_swiglu_extreme();
    test_linear(7, 13, 9, 0, 0);
    test_linear(7, 13, 9, 1, 0);
    test_linear(1, 5, 3, 1, 1);
    test_linear(20, 40, 17, 0, 1);
    test_linear(20, 40, 17, 1, 1);
    test_linear(300, 200, 70, 1, 0); /* large enough to be split over the threads: by rows */
    test_linear(64, 100, 520, 0, 1); /* by columns */
    for (int r = 2; r <= 4; r++) {
        test_lora(r, 0.0f);
        test_lora(r, 0.3f);
    }
    test_lora_blocked(0.0f, 0);
    test_lora_blocked(0.3f, 0);
    test_lora_blocked(0.0f, 1);
    test_lora_blocked(0.3f, 1);
    {
        const int lens1[4] = {5, 1, 8, 3}, lens2[3] = {1, 6, 4}, lens3[3] = {7, 1, 9};
        test_attention(lens1, 4, 4, 2, 8);
        test_attention(lens2, 3, 2, 2, 16);
        test_attention(lens3, 3, 4, 4, 8);
        test_attention(lens1, 4, 4, 1, 16);
        const int long1[4] = {65, 1, 130, 600}, long2[1] = {1100};
        test_attention_long(long1, 4, 4, 2, 16);
        test_attention_long(long2, 1, 2, 1, 8);
    }
    test_ce(13, 9, 50, 4);
    test_ce(13, 9, 50, 13);
    test_ce(7, 16, 53, 32);
    test_ce(5, 32, 1000, 3); /* several blocks of the softmax sum, a product split over the threads */
    test_grad_sqnorm(1000);
    test_grad_sqnorm(70001);
    test_adamw();
    check("status OK at the end", g_be->status(g_be, &err) != TL_OK, 0);
    g_be->destroy(g_be);
    if (g_fail) {
        printf("test_cpu_ops: %d check(s) FAILED\n", g_fail);
        return 1;
    }
    printf("test_cpu_ops: all checks passed\n");
    return 0;
}
