/* test_cuda_ops: every op of the CUDA backend against the CPU backend (the fp32 reference), on fresh random
 * inputs with outputs poisoned (NaN) first, plus bit-for-bit repeatability of the reductions and the sticky
 * error. Needs a GPU: without one it prints "SKIPPED: no CUDA device" and exits 77.
 *
 * Inputs are rounded to bf16 values before both backends see them, so differences come only from the CUDA
 * backend's bf16 storage of results and intermediates (tolerance 1e-2 of the largest reference value) or from
 * summation order where everything is fp32 (1e-4 .. 1e-5). Any NaN fails. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"

#define TOL_BF16 1e-2
#define TOL_F32 1e-5

typedef struct {
    tl_backend *cpu, *gpu;
    uint64_t rng;
    int checks, failures;
} T;

/* ---- random numbers and bf16 rounding (host side) ---- */

static uint64_t next_u64(T *t) {
    t->rng ^= t->rng >> 12;
    t->rng ^= t->rng << 25;
    t->rng ^= t->rng >> 27;
    return t->rng * 0x2545f4914f6cdd1dULL;
}
static float uni(T *t) { return (float)(next_u64(t) >> 40) * (2.0f / 16777216.0f) - 1.0f; } /* [-1, 1) */
static int rand_int(T *t, int n) { return (int)(next_u64(t) % (uint64_t)n); }

static float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static float *rand_host(T *t, size_t n, float amp) {
    float *h = malloc(n * sizeof *h);
    if (!h) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) h[i] = bf16_round(amp * uni(t));
    return h;
}

/* ---- a buffer on both backends ---- */

enum { ACT, F32, RAW };
typedef struct {
    void *c, *g;
    size_t n; /* elements (bytes for RAW) */
    int kind;
} buf;

static void must(tl_status s, const tl_error *e, const char *what) {
    if (s != TL_OK) {
        fprintf(stderr, "FATAL: %s: %s\n", what, e->msg);
        exit(1);
    }
}

static size_t esize(tl_backend *be, int kind) { return kind == ACT ? be->act_size : kind == F32 ? 4 : 1; }

static void upload(T *t, buf *b, const void *h) {
    if (b->kind == ACT) {
        t->cpu->upload_act(t->cpu, b->c, h, b->n);
        t->gpu->upload_act(t->gpu, b->g, h, b->n);
    } else {
        size_t bytes = b->n * esize(t->cpu, b->kind);
        t->cpu->upload(t->cpu, b->c, h, bytes);
        t->gpu->upload(t->gpu, b->g, h, bytes);
    }
}

static buf mk(T *t, int kind, size_t n, const void *h) {
    buf b = {NULL, NULL, n, kind};
    tl_error e = {0};
    must(t->cpu->alloc(t->cpu, n * esize(t->cpu, kind), &b.c, &e), &e, "cpu alloc");
    must(t->gpu->alloc(t->gpu, n * esize(t->gpu, kind), &b.g, &e), &e, "cuda alloc");
    if (h) upload(t, &b, h);
    return b;
}
static buf mk_rand(T *t, int kind, size_t n, float amp) {
    float *h = rand_host(t, n, amp);
    buf b = mk(t, kind, n, h);
    free(h);
    return b;
}
static void poison(T *t, buf *b) {
    float *h = malloc(b->n * sizeof *h);
    for (size_t i = 0; i < b->n; i++) h[i] = NAN;
    upload(t, b, h);
    free(h);
}
static void drop(T *t, buf *b) {
    t->cpu->free(t->cpu, b->c);
    t->gpu->free(t->gpu, b->g);
    b->c = b->g = NULL;
}
/* element offset into a buffer on each backend */
static void *cpu_at(T *t, const buf *b, size_t i) { return (char *)b->c + i * esize(t->cpu, b->kind); }
static void *gpu_at(T *t, const buf *b, size_t i) { return (char *)b->g + i * esize(t->gpu, b->kind); }

static void fetch(tl_backend *be, const buf *b, void *p, float *h) {
    if (b->kind == ACT) be->download_act(be, h, p, b->n);
    else be->download(be, h, p, b->n * 4);
}

static void check_status(T *t, const char *what) {
    tl_error e = {0};
    if (t->cpu->status(t->cpu, &e) != TL_OK) {
        printf("FAIL %s: cpu backend: %s\n", what, e.msg);
        t->failures++;
    }
    if (t->gpu->status(t->gpu, &e) != TL_OK) {
        printf("FAIL %s: %s\n", what, e.msg);
        t->failures++;
    }
}

/* max |gpu - cpu| / max |cpu| over elements [off, off + count) of the buffer; NaN anywhere fails */
static void compare_at(T *t, const char *what, const buf *b, size_t off, size_t count, double tol) {
    check_status(t, what);
    float *hc = malloc(b->n * sizeof *hc), *hg = malloc(b->n * sizeof *hg);
    fetch(t->cpu, b, b->c, hc);
    fetch(t->gpu, b, b->g, hg);
    double md = 0.0, mr = 0.0;
    size_t nan = 0, worst = off;
    for (size_t i = off; i < off + count; i++) {
        if (isnan(hc[i]) || isnan(hg[i])) {
            if (nan++ == 0) worst = i;
            continue;
        }
        double d = fabs((double)hg[i] - hc[i]);
        if (d > md) {
            md = d;
            if (!nan) worst = i;
        }
        if (fabs(hc[i]) > mr) mr = fabs(hc[i]);
    }
    double rel = mr > 0 ? md / mr : md;
    t->checks++;
    if (nan || rel > tol || mr == 0.0) {
        t->failures++;
        printf("FAIL %-44s rel %.3e (tol %.0e) NaN %zu, max|ref| %.3e, at %zu: cpu %g cuda %g\n", what, rel, tol, nan,
               mr, worst, hc[worst], hg[worst]);
    } else {
        printf("ok   %-44s rel %.3e\n", what, rel);
    }
    free(hc);
    free(hg);
}
static void compare(T *t, const char *what, const buf *b, double tol) { compare_at(t, what, b, 0, b->n, tol); }

/* the GPU buffer's bytes now, for the repeatability checks */
static void *snapshot(T *t, const buf *b) {
    size_t bytes = b->n * esize(t->gpu, b->kind);
    void *h = malloc(bytes);
    t->gpu->download(t->gpu, h, b->g, bytes);
    return h;
}
static void same_bits(T *t, const char *what, const buf *b, void *before) {
    check_status(t, what);
    void *now = snapshot(t, b);
    t->checks++;
    if (memcmp(now, before, b->n * esize(t->gpu, b->kind)) != 0) {
        t->failures++;
        printf("FAIL %-44s second run differs bitwise\n", what);
    } else {
        printf("ok   %-44s bit-identical\n", what);
    }
    free(now);
    free(before);
}

/* ---- micro-batches ---- */

typedef struct {
    tl_mb c, g;
    buf tokens, pos, cu, targets, seed, segs;
    int32_t *h_cu;
    tl_seg *h_segs;
} mbpair;

/* Sequences of the given lengths back to back; segments as given (NULL: one segment of slot 0). */
static mbpair mk_mb(T *t, const int *lens, int n_seq, const tl_seg *segs, int n_seg) {
    mbpair m;
    memset(&m, 0, sizeof m);
    int n = 0, mx = 0;
    for (int s = 0; s < n_seq; s++) {
        n += lens[s];
        if (lens[s] > mx) mx = lens[s];
    }
    tl_seg one = {0, n, 0};
    if (!segs) {
        segs = &one;
        n_seg = 1;
    }
    m.h_cu = malloc((size_t)(n_seq + 1) * sizeof *m.h_cu);
    m.h_segs = malloc((size_t)n_seg * sizeof *m.h_segs);
    int32_t *tok = malloc((size_t)n * 4), *pos = malloc((size_t)n * 4), *tgt = malloc((size_t)n * 4);
    uint64_t *seed = malloc((size_t)n * 8);
    m.h_cu[0] = 0;
    for (int s = 0; s < n_seq; s++) {
        m.h_cu[s + 1] = m.h_cu[s] + lens[s];
        for (int i = 0; i < lens[s]; i++) pos[m.h_cu[s] + i] = i;
    }
    for (int i = 0; i < n; i++) {
        tok[i] = rand_int(t, 50);
        tgt[i] = rand_int(t, 4) == 0 ? -1 : rand_int(t, 50);
        seed[i] = next_u64(t);
    }
    memcpy(m.h_segs, segs, (size_t)n_seg * sizeof *segs);
    m.tokens = mk(t, RAW, (size_t)n * 4, tok);
    m.pos = mk(t, RAW, (size_t)n * 4, pos);
    m.targets = mk(t, RAW, (size_t)n * 4, tgt);
    m.seed = mk(t, RAW, (size_t)n * 8, seed);
    m.cu = mk(t, RAW, (size_t)(n_seq + 1) * 4, m.h_cu);
    m.segs = mk(t, RAW, (size_t)n_seg * sizeof(tl_seg), m.h_segs);
    free(tok);
    free(pos);
    free(tgt);
    free(seed);
    tl_mb base = {n, n_seq, n_seg, mx, m.h_cu, m.h_segs, NULL, NULL, NULL, NULL, NULL, NULL};
    m.c = m.g = base;
    m.c.tokens = m.tokens.c, m.c.pos = m.pos.c, m.c.cu_seqlens = m.cu.c, m.c.targets = m.targets.c;
    m.c.row_seed = m.seed.c, m.c.segs = m.segs.c;
    m.g.tokens = m.tokens.g, m.g.pos = m.pos.g, m.g.cu_seqlens = m.cu.g, m.g.targets = m.targets.g;
    m.g.row_seed = m.seed.g, m.g.segs = m.segs.g;
    return m;
}

static void drop_mb(T *t, mbpair *m) {
    drop(t, &m->tokens);
    drop(t, &m->pos);
    drop(t, &m->cu);
    drop(t, &m->targets);
    drop(t, &m->seed);
    drop(t, &m->segs);
    free(m->h_cu);
    free(m->h_segs);
}

/* ---- elementwise and normalization ---- */

static void test_embed_add(T *t) {
    char name[96];
    int lens[1] = {33};
    mbpair m = mk_mb(t, lens, 1, NULL, 0);
    for (int d = 96; d <= 100; d += 4) {
        buf table = mk_rand(t, ACT, (size_t)50 * d, 1.0f), out = mk(t, ACT, (size_t)33 * d, NULL);
        poison(t, &out);
        t->cpu->embed_fwd(t->cpu, out.c, table.c, m.c.tokens, 33, d);
        t->gpu->embed_fwd(t->gpu, out.g, table.g, m.g.tokens, 33, d);
        snprintf(name, sizeof name, "embed_fwd n=33 d=%d", d);
        compare(t, name, &out, 0.0); /* a gather is exact */
        drop(t, &table);
        drop(t, &out);
    }
    drop_mb(t, &m);
    for (int off = 0; off <= 1; off++) { /* off = 1: unaligned pointers take the scalar path */
        size_t n = 1001;
        buf y = mk_rand(t, ACT, n + 1, 1.0f), x = mk_rand(t, ACT, n + 1, 1.0f);
        t->cpu->add(t->cpu, cpu_at(t, &y, off), cpu_at(t, &x, off), n);
        t->gpu->add(t->gpu, gpu_at(t, &y, off), gpu_at(t, &x, off), n);
        snprintf(name, sizeof name, "add n=1001 offset=%d", off);
        compare(t, name, &y, TOL_BF16);
        drop(t, &y);
        drop(t, &x);
    }
}

static void test_rmsnorm(T *t) {
    char name[96];
    int n = 7;
    for (int d = 64; d <= 100; d += 36) {
        buf x = mk_rand(t, ACT, (size_t)n * d, 2.0f), out = mk(t, ACT, (size_t)n * d, NULL), rstd = mk(t, F32, n, NULL);
        float *wh = rand_host(t, d, 0.5f);
        for (int j = 0; j < d; j++) wh[j] = bf16_round(1.0f + wh[j]);
        buf w = mk(t, ACT, d, wh);
        free(wh);
        poison(t, &out);
        poison(t, &rstd);
        t->cpu->rmsnorm_fwd(t->cpu, out.c, rstd.c, x.c, w.c, n, d, 1e-5f);
        t->gpu->rmsnorm_fwd(t->gpu, out.g, rstd.g, x.g, w.g, n, d, 1e-5f);
        snprintf(name, sizeof name, "rmsnorm_fwd out n=%d d=%d", n, d);
        compare(t, name, &out, TOL_BF16);
        snprintf(name, sizeof name, "rmsnorm_fwd rstd n=%d d=%d", n, d);
        compare(t, name, &rstd, TOL_F32);
        void *snap = snapshot(t, &out);
        t->gpu->rmsnorm_fwd(t->gpu, out.g, rstd.g, x.g, w.g, n, d, 1e-5f);
        snprintf(name, sizeof name, "rmsnorm_fwd repeat d=%d", d);
        same_bits(t, name, &out, snap);

        buf dout = mk_rand(t, ACT, (size_t)n * d, 1.0f), dx = mk_rand(t, ACT, (size_t)n * d, 0.1f);
        /* the same rstd on both sides */
        float *rh = malloc((size_t)n * sizeof *rh);
        t->cpu->download(t->cpu, rh, rstd.c, (size_t)n * 4);
        upload(t, &rstd, rh);
        free(rh);
        t->cpu->rmsnorm_bwd(t->cpu, dx.c, dout.c, x.c, w.c, rstd.c, n, d);
        t->gpu->rmsnorm_bwd(t->gpu, dx.g, dout.g, x.g, w.g, rstd.g, n, d);
        snprintf(name, sizeof name, "rmsnorm_bwd n=%d d=%d", n, d);
        compare(t, name, &dx, TOL_BF16);
        drop(t, &x), drop(t, &out), drop(t, &rstd), drop(t, &w), drop(t, &dout), drop(t, &dx);
    }
}

static void test_rope(T *t) {
    char name[96];
    int n = 33, nh = 8;
    int32_t pos[33];
    for (int i = 0; i < n; i++) pos[i] = rand_int(t, 4096);
    buf p = mk(t, RAW, sizeof pos, pos);
    for (int hd = 16; hd <= 64; hd *= 4) {
        float inv[32];
        for (int j = 0; j < hd / 2; j++) inv[j] = powf(10000.0f, -2.0f * j / hd);
        buf f = mk(t, F32, (size_t)hd / 2, inv);
        for (int dir = 0; dir < 2; dir++) {
            buf x = mk_rand(t, ACT, (size_t)n * nh * hd, 1.0f);
            if (dir == 0) {
                t->cpu->rope_fwd(t->cpu, x.c, p.c, f.c, n, nh, hd);
                t->gpu->rope_fwd(t->gpu, x.g, p.g, f.g, n, nh, hd);
            } else {
                t->cpu->rope_bwd(t->cpu, x.c, p.c, f.c, n, nh, hd);
                t->gpu->rope_bwd(t->gpu, x.g, p.g, f.g, n, nh, hd);
            }
            snprintf(name, sizeof name, "rope_%s n=%d heads=%d hd=%d", dir ? "bwd" : "fwd", n, nh, hd);
            compare(t, name, &x, TOL_BF16);
            drop(t, &x);
        }
        drop(t, &f);
    }
    drop(t, &p);
}

static void test_swiglu(T *t) {
    char name[96];
    size_t n = 1001;
    for (int off = 0; off <= 1; off++) {
        buf g = mk_rand(t, ACT, n + 1, 4.0f), u = mk_rand(t, ACT, n + 1, 1.0f), h = mk(t, ACT, n + 1, NULL);
        buf dh = mk_rand(t, ACT, n + 1, 1.0f), dg = mk(t, ACT, n + 1, NULL), du = mk(t, ACT, n + 1, NULL);
        poison(t, &h), poison(t, &dg), poison(t, &du);
        t->cpu->swiglu_fwd(t->cpu, cpu_at(t, &h, off), cpu_at(t, &g, off), cpu_at(t, &u, off), n);
        t->gpu->swiglu_fwd(t->gpu, gpu_at(t, &h, off), gpu_at(t, &g, off), gpu_at(t, &u, off), n);
        t->cpu->swiglu_bwd(t->cpu, cpu_at(t, &dg, off), cpu_at(t, &du, off), cpu_at(t, &dh, off), cpu_at(t, &g, off),
                           cpu_at(t, &u, off), n);
        t->gpu->swiglu_bwd(t->gpu, gpu_at(t, &dg, off), gpu_at(t, &du, off), gpu_at(t, &dh, off), gpu_at(t, &g, off),
                           gpu_at(t, &u, off), n);
        snprintf(name, sizeof name, "swiglu_fwd n=%zu offset=%d", n, off);
        compare_at(t, name, &h, off, n, TOL_BF16);
        snprintf(name, sizeof name, "swiglu_bwd dg n=%zu offset=%d", n, off);
        compare_at(t, name, &dg, off, n, TOL_BF16);
        snprintf(name, sizeof name, "swiglu_bwd du n=%zu offset=%d", n, off);
        compare_at(t, name, &du, off, n, TOL_BF16);
        drop(t, &g), drop(t, &u), drop(t, &h), drop(t, &dh), drop(t, &dg), drop(t, &du);
    }
}

/* ---- dense layers ---- */

static void test_linear(T *t) {
    char name[96];
    int in = 96, out = 80;
    buf W = mk_rand(t, ACT, (size_t)out * in, 0.5f), bias = mk_rand(t, ACT, out, 1.0f);
    for (int n = 1; n <= 33; n += 32)
        for (int acc = 0; acc <= 1; acc++)
            for (int hb = 0; hb <= 1; hb++) {
                buf x = mk_rand(t, ACT, (size_t)n * in, 1.0f), y = mk_rand(t, ACT, (size_t)n * out, 1.0f);
                if (!acc) poison(t, &y);
                t->cpu->linear_fwd(t->cpu, y.c, x.c, W.c, hb ? bias.c : NULL, n, in, out, acc);
                t->gpu->linear_fwd(t->gpu, y.g, x.g, W.g, hb ? bias.g : NULL, n, in, out, acc);
                snprintf(name, sizeof name, "linear_fwd n=%d in=%d out=%d acc=%d bias=%d", n, in, out, acc, hb);
                compare(t, name, &y, TOL_BF16);
                drop(t, &x), drop(t, &y);
                if (hb) continue; /* linear_bwd_x has no bias: once per (n, acc) */
                buf dy = mk_rand(t, ACT, (size_t)n * out, 1.0f), dx = mk_rand(t, ACT, (size_t)n * in, 1.0f);
                if (!acc) poison(t, &dx);
                t->cpu->linear_bwd_x(t->cpu, dx.c, dy.c, W.c, n, in, out, acc);
                t->gpu->linear_bwd_x(t->gpu, dx.g, dy.g, W.g, n, in, out, acc);
                snprintf(name, sizeof name, "linear_bwd_x n=%d in=%d out=%d acc=%d", n, in, out, acc);
                compare(t, name, &dx, TOL_BF16);
                drop(t, &dy), drop(t, &dx);
            }
    drop(t, &W), drop(t, &bias);
}

/* ---- LoRA ---- */

static void test_lora_case(T *t, int r, float dropout, int in, int out) {
    char name[128];
    /* 12 segments: uneven lengths, bare-model rows (slot -1), one slot used twice, an empty segment */
    const int lens[12] = {5, 1, 40, 7, 0, 70, 3, 33, 2, 9, 64, 17};
    const int slots[12] = {3, -1, 0, 7, 2, 5, -1, 9, 1, 3, 11, 4};
    tl_seg segs[12];
    int n = 0;
    for (int s = 0; s < 12; s++) {
        segs[s].row0 = n;
        n += lens[s];
        segs[s].row1 = n;
        segs[s].slot = slots[s];
    }
    int sl[3] = {n / 3, n / 3, n - 2 * (n / 3)};
    mbpair m = mk_mb(t, sl, 3, segs, 12);
    int nslots = 12;
    size_t stride = (size_t)r * (in + out) + 5;
    size_t pool = stride * nslots;
    float scale = 2.0f;
    uint32_t site = 7;
    buf A = mk_rand(t, F32, pool, 0.2f), B = mk_rand(t, F32, pool, 0.2f);
    buf x = mk_rand(t, ACT, (size_t)n * in, 1.0f), y = mk_rand(t, ACT, (size_t)n * out, 0.1f);
    buf h = mk(t, F32, (size_t)n * r, NULL);
    poison(t, &h);
    tl_lora_site lc = {A.c, B.c, stride, r, scale, dropout, site}, lg = {A.g, B.g, stride, r, scale, dropout, site};
    t->cpu->lora_fwd(t->cpu, y.c, h.c, x.c, &lc, &m.c, in, out);
    t->gpu->lora_fwd(t->gpu, y.g, h.g, x.g, &lg, &m.g, in, out);
    snprintf(name, sizeof name, "lora_fwd y r=%d p=%.1f in=%d out=%d", r, dropout, in, out);
    compare(t, name, &y, TOL_BF16);
    snprintf(name, sizeof name, "lora_fwd h r=%d p=%.1f", r, dropout);
    compare(t, name, &h, 1e-4);

    buf dy = mk_rand(t, ACT, (size_t)n * out, 1.0f), hh = mk_rand(t, F32, (size_t)n * r, 1.0f);
    buf dx = mk_rand(t, ACT, (size_t)n * in, 0.1f);
    buf dA = mk_rand(t, F32, pool, 0.01f), dB = mk_rand(t, F32, pool, 0.01f);
    float *dA0 = malloc(pool * 4), *dB0 = malloc(pool * 4);
    t->cpu->download(t->cpu, dA0, dA.c, pool * 4);
    t->cpu->download(t->cpu, dB0, dB.c, pool * 4);
    t->cpu->lora_bwd(t->cpu, dx.c, dA.c, dB.c, dy.c, x.c, hh.c, &lc, &m.c, in, out);
    t->gpu->lora_bwd(t->gpu, dx.g, dA.g, dB.g, dy.g, x.g, hh.g, &lg, &m.g, in, out);
    snprintf(name, sizeof name, "lora_bwd dx r=%d p=%.1f", r, dropout);
    compare(t, name, &dx, TOL_BF16);
    snprintf(name, sizeof name, "lora_bwd dA r=%d p=%.1f", r, dropout);
    compare(t, name, &dA, 1e-4);
    snprintf(name, sizeof name, "lora_bwd dB r=%d p=%.1f", r, dropout);
    compare(t, name, &dB, 1e-4);

    /* repeatability of the segment reductions: the same start, the same bits */
    void *sa = snapshot(t, &dA), *sb = snapshot(t, &dB);
    t->gpu->upload(t->gpu, dA.g, dA0, pool * 4);
    t->gpu->upload(t->gpu, dB.g, dB0, pool * 4);
    t->gpu->lora_bwd(t->gpu, NULL, dA.g, dB.g, dy.g, x.g, hh.g, &lg, &m.g, in, out);
    snprintf(name, sizeof name, "lora_bwd dA repeat (dx=NULL) r=%d", r);
    same_bits(t, name, &dA, sa);
    snprintf(name, sizeof name, "lora_bwd dB repeat (dx=NULL) r=%d", r);
    same_bits(t, name, &dB, sb);
    free(dA0), free(dB0);
    drop(t, &A), drop(t, &B), drop(t, &x), drop(t, &y), drop(t, &h), drop(t, &dy), drop(t, &hh), drop(t, &dx);
    drop(t, &dA), drop(t, &dB);
    drop_mb(t, &m);
}

static void test_lora(T *t) {
    for (int r = 8; r <= 16; r *= 2)
        for (int p = 0; p <= 1; p++) test_lora_case(t, r, p ? 0.1f : 0.0f, 96, 80);
    test_lora_case(t, 72, 0.1f, 40, 136); /* rank not a multiple of the tile, out over two tiles */
    test_lora_case(t, 1024, 0.0f, 24, 20); /* the largest supported rank */
}

/* ---- attention ---- */

static void test_attn_case(T *t, int hd) {
    char name[128];
    const int lens[4] = {7, 1, 130, 33}; /* odd lengths; the long one starts at an unaligned row */
    int Hq = 8, Hkv = 2;
    mbpair m = mk_mb(t, lens, 4, NULL, 0);
    int n = m.c.n_tok;
    size_t nq = (size_t)n * Hq * hd, nk = (size_t)n * Hkv * hd;
    buf q = mk_rand(t, ACT, nq, 2.0f), k = mk_rand(t, ACT, nk, 1.0f), v = mk_rand(t, ACT, nk, 1.0f);
    buf out = mk(t, ACT, nq, NULL), lse = mk(t, F32, (size_t)n * Hq, NULL);
    poison(t, &out), poison(t, &lse);
    t->cpu->attn_fwd(t->cpu, out.c, lse.c, q.c, k.c, v.c, &m.c, Hq, Hkv, hd);
    t->gpu->attn_fwd(t->gpu, out.g, lse.g, q.g, k.g, v.g, &m.g, Hq, Hkv, hd);
    snprintf(name, sizeof name, "attn_fwd out hd=%d Hq=%d Hkv=%d", hd, Hq, Hkv);
    compare(t, name, &out, TOL_BF16);
    snprintf(name, sizeof name, "attn_fwd lse hd=%d", hd);
    compare(t, name, &lse, 1e-3);

    /* backward from the same (reference) out and lse on both sides */
    float *ho = malloc(nq * 4), *hl = malloc((size_t)n * Hq * 4);
    t->cpu->download(t->cpu, ho, out.c, nq * 4);
    t->cpu->download(t->cpu, hl, lse.c, (size_t)n * Hq * 4);
    for (size_t i = 0; i < nq; i++) ho[i] = bf16_round(ho[i]);
    upload(t, &out, ho);
    upload(t, &lse, hl);
    free(ho), free(hl);
    buf dout = mk_rand(t, ACT, nq, 1.0f), dq = mk(t, ACT, nq, NULL), dk = mk(t, ACT, nk, NULL), dv = mk(t, ACT, nk, NULL);
    poison(t, &dq), poison(t, &dk), poison(t, &dv);
    t->cpu->attn_bwd(t->cpu, dq.c, dk.c, dv.c, dout.c, out.c, lse.c, q.c, k.c, v.c, &m.c, Hq, Hkv, hd);
    t->gpu->attn_bwd(t->gpu, dq.g, dk.g, dv.g, dout.g, out.g, lse.g, q.g, k.g, v.g, &m.g, Hq, Hkv, hd);
    snprintf(name, sizeof name, "attn_bwd dq hd=%d", hd);
    compare(t, name, &dq, TOL_BF16);
    snprintf(name, sizeof name, "attn_bwd dk hd=%d", hd);
    compare(t, name, &dk, TOL_BF16);
    snprintf(name, sizeof name, "attn_bwd dv hd=%d", hd);
    compare(t, name, &dv, TOL_BF16);
    if (hd == 64) {
        void *s1 = snapshot(t, &dq), *s2 = snapshot(t, &dk), *s3 = snapshot(t, &dv), *s4 = snapshot(t, &out);
        t->gpu->attn_bwd(t->gpu, dq.g, dk.g, dv.g, dout.g, out.g, lse.g, q.g, k.g, v.g, &m.g, Hq, Hkv, hd);
        same_bits(t, "attn_bwd dq repeat", &dq, s1);
        same_bits(t, "attn_bwd dk repeat", &dk, s2);
        same_bits(t, "attn_bwd dv repeat", &dv, s3);
        t->gpu->attn_fwd(t->gpu, out.g, lse.g, q.g, k.g, v.g, &m.g, Hq, Hkv, hd);
        void *s5 = snapshot(t, &out);
        t->gpu->attn_fwd(t->gpu, out.g, lse.g, q.g, k.g, v.g, &m.g, Hq, Hkv, hd);
        same_bits(t, "attn_fwd out repeat", &out, s5);
        free(s4);
    }
    drop(t, &q), drop(t, &k), drop(t, &v), drop(t, &out), drop(t, &lse);
    drop(t, &dout), drop(t, &dq), drop(t, &dk), drop(t, &dv);
    drop_mb(t, &m);
}

static void test_attn(T *t) {
    /* the two fast-path head dims, small ones (padded to 16; 6 also takes the unvectorized loads), the largest */
    const int hds[6] = {64, 128, 16, 8, 6, 256};
    for (int i = 0; i < 6; i++) test_attn_case(t, hds[i]);
}

/* ---- LM head + cross-entropy ---- */

static void test_ce(T *t) {
    char name[96];
    int n = 37, d = 64, V = 999, chunk = 16;
    int32_t tg[37];
    for (int i = 0; i < n; i++) tg[i] = i % 5 == 0 ? -1 : rand_int(t, V);
    buf tgt = mk(t, RAW, sizeof tg, tg);
    buf x = mk_rand(t, ACT, (size_t)n * d, 1.0f), W = mk_rand(t, ACT, (size_t)V * d, 1.0f);
    buf dlogp = mk_rand(t, F32, n, 1.0f), logp = mk(t, F32, n, NULL), dx = mk(t, ACT, (size_t)n * d, NULL);
    const size_t wl = (size_t)chunk * V; /* work [chunk, V] */
    buf work = mk(t, F32, wl, NULL);
    for (int want = 0; want <= 1; want++) {
        poison(t, &logp), poison(t, &dx), poison(t, &work);
        t->cpu->ce_fwd_bwd(t->cpu, logp.c, want ? dx.c : NULL, x.c, W.c, tgt.c, dlogp.c, n, d, V, work.c, wl, chunk);
        t->gpu->ce_fwd_bwd(t->gpu, logp.g, want ? dx.g : NULL, x.g, W.g, tgt.g, dlogp.g, n, d, V, work.g, wl, chunk);
        snprintf(name, sizeof name, "ce_fwd_bwd logp n=%d V=%d chunk=%d dx=%s", n, V, chunk, want ? "yes" : "NULL");
        compare(t, name, &logp, 1e-4);
        if (want) {
            snprintf(name, sizeof name, "ce_fwd_bwd dx n=%d d=%d V=%d", n, d, V);
            compare(t, name, &dx, TOL_BF16);
            void *s1 = snapshot(t, &logp), *s2 = snapshot(t, &dx);
            t->gpu->ce_fwd_bwd(t->gpu, logp.g, dx.g, x.g, W.g, tgt.g, dlogp.g, n, d, V, work.g, wl, chunk);
            same_bits(t, "ce_fwd_bwd logp repeat", &logp, s1);
            same_bits(t, "ce_fwd_bwd dx repeat", &dx, s2);
        }
    }
    drop(t, &tgt), drop(t, &x), drop(t, &W), drop(t, &dlogp), drop(t, &logp), drop(t, &dx), drop(t, &work);
}

/* ---- optimizer ---- */

static void test_optim(T *t) {
    size_t P = 10007, stride = 10240, pool = stride * 6;
    buf g = mk_rand(t, F32, pool, 1.0f);
    int32_t slots[3] = {4, 0, 5};
    float nc[3], ng[3], ng2[3];
    t->cpu->grad_sqnorm(t->cpu, nc, g.c, stride, P, slots, 3);
    t->gpu->grad_sqnorm(t->gpu, ng, g.g, stride, P, slots, 3);
    check_status(t, "grad_sqnorm");
    double worst = 0;
    int nan = 0;
    for (int i = 0; i < 3; i++) {
        if (isnan(ng[i])) nan = 1;
        double rel = fabs((double)ng[i] - nc[i]) / fabs((double)nc[i]);
        if (rel > worst) worst = rel;
    }
    t->checks++;
    if (nan || worst > TOL_F32) {
        t->failures++;
        printf("FAIL %-44s rel %.3e\n", "grad_sqnorm P=10007 slots {4,0,5}", worst);
    } else {
        printf("ok   %-44s rel %.3e\n", "grad_sqnorm P=10007 slots {4,0,5}", worst);
    }
    t->gpu->grad_sqnorm(t->gpu, ng2, g.g, stride, P, slots, 3);
    t->checks++;
    if (memcmp(ng, ng2, sizeof ng) != 0) {
        t->failures++;
        printf("FAIL %-44s second run differs bitwise\n", "grad_sqnorm repeat");
    } else {
        printf("ok   %-44s bit-identical\n", "grad_sqnorm repeat");
    }

    size_t Pa = 3001, sa = 3072, poola = sa * 5;
    buf p = mk_rand(t, F32, poola, 1.0f), mm = mk_rand(t, F32, poola, 0.1f), ga = mk_rand(t, F32, poola, 1.0f);
    float *vh = rand_host(t, poola, 0.01f);
    for (size_t i = 0; i < poola; i++) vh[i] = vh[i] * vh[i]; /* second moments are >= 0 */
    buf v = mk(t, F32, poola, vh);
    free(vh);
    tl_adam_slot hs[3] = {{3, 1e-2f, 0.1f, 0.001f, 1.0f}, {0, 3e-3f, 0.5f, 0.2f, 0.5f}, {4, 1e-3f, 0.9f, 0.9f, 0.25f}};
    t->cpu->adamw(t->cpu, p.c, mm.c, v.c, ga.c, sa, Pa, hs, 3, 0.9, 0.999, 1e-8f, 0.01f);
    t->gpu->adamw(t->gpu, p.g, mm.g, v.g, ga.g, sa, Pa, hs, 3, 0.9, 0.999, 1e-8f, 0.01f);
    compare(t, "adamw p (slots {3,0,4} of 5)", &p, TOL_F32);
    compare(t, "adamw m", &mm, TOL_F32);
    compare(t, "adamw v", &v, TOL_F32);
    drop(t, &g), drop(t, &p), drop(t, &mm), drop(t, &ga), drop(t, &v);
}

/* ---- errors: a failed op is reported by status, sticks, and later ops do nothing ---- */

static void test_sticky_error(T *t) {
    tl_backend *be = NULL;
    tl_error e = {0};
    must(tl_backend_cuda_create(0, &be, &e), &e, "cuda create");
    int32_t cu[2] = {0, 4};
    tl_seg sg = {0, 4, 0};
    void *cud = NULL, *buf1 = NULL;
    must(be->alloc(be, sizeof cu, &cud, &e), &e, "alloc");
    must(be->alloc(be, 4096, &buf1, &e), &e, "alloc");
    be->upload(be, cud, cu, sizeof cu);
    tl_mb mb = {4, 1, 1, 4, cu, &sg, NULL, NULL, cud, NULL, NULL, NULL};
    be->attn_fwd(be, buf1, buf1, buf1, buf1, buf1, &mb, 2, 1, 512); /* head dim 512: not supported */
    tl_status s = be->status(be, &e);
    t->checks++;
    int ok = s == TL_ERR_RUNTIME && strncmp(e.msg, "cuda: attn_fwd", 14) == 0;
    float probe[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    be->download(be, probe, buf1, sizeof probe); /* must do nothing now */
    ok = ok && probe[0] == 1.0f && probe[3] == 4.0f && be->status(be, &e) == TL_ERR_RUNTIME;
    if (ok) printf("ok   %-44s \"%s\"\n", "sticky error", e.msg);
    else {
        t->failures++;
        printf("FAIL %-44s status %d \"%s\"\n", "sticky error", (int)s, e.msg);
    }
    be->destroy(be);
}

/* a ce_fwd_bwd work buffer below chunk * V floats is refused (sticky failure naming work) before any launch */
static void test_ce_work_len(T *t) {
    tl_backend *be = NULL;
    tl_error e = {0};
    must(tl_backend_cuda_create(0, &be, &e), &e, "cuda create");
    const int n = 4, d = 8, V = 16, chunk = 4;
    void *x = NULL, *W = NULL, *tg = NULL, *logp = NULL, *work = NULL;
    must(be->alloc(be, (size_t)n * d * be->act_size, &x, &e), &e, "alloc");
    must(be->alloc(be, (size_t)V * d * be->act_size, &W, &e), &e, "alloc");
    must(be->alloc(be, (size_t)n * sizeof(int32_t), &tg, &e), &e, "alloc");
    must(be->alloc(be, (size_t)n * sizeof(float), &logp, &e), &e, "alloc");
    must(be->alloc(be, (size_t)chunk * V * sizeof(float), &work, &e), &e, "alloc");
    be->zero(be, x, (size_t)n * d * be->act_size);
    be->zero(be, W, (size_t)V * d * be->act_size);
    be->zero(be, tg, (size_t)n * sizeof(int32_t));
    float sentinel[4] = {-7.0f, -7.0f, -7.0f, -7.0f};
    be->upload(be, logp, sentinel, sizeof sentinel);
    tl_status s0 = be->status(be, &e);
    be->ce_fwd_bwd(be, logp, NULL, x, W, tg, NULL, n, d, V, work, (size_t)chunk * V - 1, chunk);
    tl_status s = be->status(be, &e);
    t->checks++;
    int ok = s0 == TL_OK && s == TL_ERR_RUNTIME && strstr(e.msg, "ce_fwd_bwd") && strstr(e.msg, "work_len=63");
    if (ok) printf("ok   %-44s \"%s\"\n", "ce_fwd_bwd work_len < chunk * V", e.msg);
    else {
        t->failures++;
        printf("FAIL %-44s status %d \"%s\"\n", "ce_fwd_bwd work_len < chunk * V", (int)s, e.msg);
    }
    be->destroy(be); /* frees the buffers */
}

int main(void) {
    if (tl_cuda_device_count() <= 0) {
        printf("SKIPPED: no CUDA device\n");
        return 77;
    }
    T t;
    memset(&t, 0, sizeof t);
    t.rng = 0x9e3779b97f4a7c15ULL;
    tl_error e = {0};
    must(tl_backend_cpu_create(2, &t.cpu, &e), &e, "cpu create");
    must(tl_backend_cuda_create(0, &t.gpu, &e), &e, "cuda create");
    size_t base = 0, peak = 0, now = 0;
    t.checks++;
    if (t.gpu->host_memory != 0 || t.gpu->device != 0 || !t.gpu->stream || !t.gpu->stream(t.gpu) ||
        !t.gpu->mem_stats || !t.gpu->status) {
        t.failures++;
        printf("FAIL cuda capabilities: host_memory %d, device %d, stream/mem_stats/status filled %d/%d/%d\n",
               t.gpu->host_memory, t.gpu->device, t.gpu->stream != NULL, t.gpu->mem_stats != NULL,
               t.gpu->status != NULL);
    } else {
        printf("ok   cuda capabilities: device memory, device 0, a stream, a memory count\n");
    }
    t.gpu->mem_stats(t.gpu, &base, NULL);

    test_embed_add(&t);
    test_rmsnorm(&t);
    test_rope(&t);
    test_swiglu(&t);
    test_linear(&t);
    test_lora(&t);
    test_attn(&t);
    test_ce(&t);
    test_optim(&t);
    test_sticky_error(&t);
    test_ce_work_len(&t);

    t.gpu->mem_stats(t.gpu, &now, &peak);
    t.checks++;
    if (now != base || peak <= base) {
        t.failures++;
        printf("FAIL memory accounting: %zu bytes held at start, %zu at end, peak %zu\n", base, now, peak);
    } else {
        printf("ok   memory accounting: %zu bytes held by the backend, peak %zu\n", base, peak);
    }
    t.cpu->destroy(t.cpu);
    t.gpu->destroy(t.gpu);
    printf("%d passed, %d failed\n", t.checks - t.failures, t.failures);
    return t.failures ? 1 : 0;
}
