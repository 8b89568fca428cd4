/* tl_bench_ops: times two ops of the backend table alone, for scripts/bench_gpu.sh (torch's side is
 * scripts/bench_gpu_torch.py --op): causal GQA attention forward + backward (attn_fwd, attn_bwd), and the fused
 * LM head + cross-entropy forward and backward (ce_fwd_bwd with dx, chunked as the model chunks it: 64 MiB of fp32
 * logits at a time).
 *
 *   tl_bench_ops --op attn --seqs S --seq-len T --hq H --hkv K --hd D [--backend B] [--warmup W] [--iters N]
 *   tl_bench_ops --op ce   --tokens N --hidden D --vocab V          [--backend B] [--warmup W] [--iters N]
 *
 * Inputs are random (N(0,1) for q/k/v/dout, N(0,0.02) for W, x N(0,1), targets uniform), drawn from a fixed seed;
 * every iteration is followed by be->status() (which waits for the device), so the time is the ops' wall time.
 * Prints the median and a checksum of the outputs (NaN-free check); the last line is
 * "RESULT op=... ms_median=... ms_mean=... checksum=..." */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/tl_backend.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x0b5e55edULL;
static double uniform(void) { /* splitmix64 -> [0, 1) */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static float normal(void) { return (float)(sqrt(-2.0 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform())); }

typedef struct {
    tl_backend *be;
    void *bufs[16];
    int nb;
} ctx;

/* backend buffer of n act (or fp32) elements, filled with std * N(0,1) (std 0: zeros) */
static tl_status buf(ctx *c, size_t n, int act, float std, void **out, tl_error *err) {
    size_t bytes = n * (act ? c->be->act_size : sizeof(float));
    TL_TRY(c->be->alloc(c->be, bytes, out, err));
    c->bufs[c->nb++] = *out;
    float *h = malloc(n * sizeof(float));
    if (!h) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    for (size_t i = 0; i < n; i++) h[i] = std == 0.0f ? 0.0f : std * normal();
    if (act) c->be->upload_act(c->be, *out, h, n);
    else c->be->upload(c->be, *out, h, n * sizeof(float));
    free(h);
    return TL_OK;
}

/* sum of |x| over n act elements, NaN propagates */
static double checksum(ctx *c, const void *p, size_t n, tl_error *err) {
    float *h = malloc(n * sizeof(float));
    if (!h) return NAN;
    c->be->download_act(c->be, h, p, n);
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += fabs((double)h[i]);
    free(h);
    return s;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const char *op, *backend;
    int seqs, seq_len, hq, hkv, hd, tokens, hidden, vocab, warmup, iters;
} opts;

static tl_status run(ctx *c, const opts *o, tl_error *err) {
    TL_TRY(tl_backend_open(o->backend, 0, &c->be, err));
    tl_backend *be = c->be;
    double *times = calloc((size_t)o->iters, sizeof(double));
    if (!times) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    tl_status s = TL_OK;
    double sum = 0.0, flops = 0.0;
    if (!strcmp(o->op, "attn")) {
        int S = o->seqs, T = o->seq_len, n = S * T;
        int32_t *cu = malloc((size_t)(S + 1) * sizeof(int32_t));
        if (!cu) return free(times), tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        for (int i = 0; i <= S; i++) cu[i] = i * T;
        tl_seg seg = {0, n, -1};
        void *dcu, *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
        size_t nq = (size_t)n * o->hq * o->hd, nk = (size_t)n * o->hkv * o->hd;
        if ((s = be->alloc(be, (size_t)(S + 1) * sizeof(int32_t), &dcu, err))) goto attn_done;
        c->bufs[c->nb++] = dcu;
        be->upload(be, dcu, cu, (size_t)(S + 1) * sizeof(int32_t));
        if ((s = buf(c, nq, 1, 1.0f, &q, err)) || (s = buf(c, nk, 1, 1.0f, &k, err)) ||
            (s = buf(c, nk, 1, 1.0f, &v, err)) || (s = buf(c, nq, 1, 0.0f, &out, err)) ||
            (s = buf(c, (size_t)n * o->hq, 0, 0.0f, &lse, err)) || (s = buf(c, nq, 1, 1.0f, &dout, err)) ||
            (s = buf(c, nq, 1, 0.0f, &dq, err)) || (s = buf(c, nk, 1, 0.0f, &dk, err)) ||
            (s = buf(c, nk, 1, 0.0f, &dv, err)))
            goto attn_done;
        tl_mb mb = {.n_tok = n, .n_seq = S, .n_seg = 1, .max_seqlen = T, .h_cu_seqlens = cu, .h_segs = &seg,
                    .cu_seqlens = dcu};
        for (int it = 0; it < o->warmup + o->iters; it++) {
            double t0 = now_s();
            be->attn_fwd(be, out, lse, q, k, v, &mb, o->hq, o->hkv, o->hd);
            be->attn_bwd(be, dq, dk, dv, dout, out, lse, q, k, v, &mb, o->hq, o->hkv, o->hd);
            if ((s = be->status(be, err))) goto attn_done;
            if (it >= o->warmup) times[it - o->warmup] = now_s() - t0;
        }
        sum = checksum(c, out, nq, err) + checksum(c, dq, nq, err) + checksum(c, dk, nk, err) +
              checksum(c, dv, nk, err);
        /* causal: half of the T x T scores; forward 2 products, backward 5 (one recompute of S) */
        flops = 7.0 * 2.0 * (double)S * 0.5 * (double)T * (double)T * o->hq * o->hd;
    attn_done:
        free(cu);
        if (s) return free(times), s;
    } else {
        int n = o->tokens, d = o->hidden, V = o->vocab;
        long chunk = (64L << 20) / (4L * V); /* as trainer/model/model.c sizes its chunk */
        if (chunk < 1) chunk = 1;
        if (chunk > n) chunk = n;
        int32_t *tg = malloc((size_t)n * sizeof(int32_t));
        float *dl = malloc((size_t)n * sizeof(float));
        if (!tg || !dl) return free(tg), free(dl), free(times), tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        for (int i = 0; i < n; i++) tg[i] = (int32_t)(uniform() * V), dl[i] = -1.0f / (float)n;
        void *x, *W, *dx, *logp, *work, *dtg, *ddl;
        if ((s = buf(c, (size_t)n * d, 1, 1.0f, &x, err)) || (s = buf(c, (size_t)V * d, 1, 0.02f, &W, err)) ||
            (s = buf(c, (size_t)n * d, 1, 0.0f, &dx, err)) || (s = buf(c, (size_t)n, 0, 0.0f, &logp, err)) ||
            (s = buf(c, (size_t)chunk * V, 0, 0.0f, &work, err)) ||
            (s = be->alloc(be, (size_t)n * sizeof(int32_t), &dtg, err)))
            goto ce_done;
        c->bufs[c->nb++] = dtg;
        if ((s = be->alloc(be, (size_t)n * sizeof(float), &ddl, err))) goto ce_done;
        c->bufs[c->nb++] = ddl;
        be->upload(be, dtg, tg, (size_t)n * sizeof(int32_t));
        be->upload(be, ddl, dl, (size_t)n * sizeof(float));
        for (int it = 0; it < o->warmup + o->iters; it++) {
            double t0 = now_s();
            be->ce_fwd_bwd(be, logp, dx, x, W, dtg, ddl, n, d, V, work, (size_t)chunk * V, (int)chunk);
            if ((s = be->status(be, err))) goto ce_done;
            if (it >= o->warmup) times[it - o->warmup] = now_s() - t0;
        }
        sum = checksum(c, dx, (size_t)n * d, err);
        {
            float *h = malloc((size_t)n * sizeof(float));
            if (!h) {
                s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
                goto ce_done;
            }
            be->download(be, h, logp, (size_t)n * sizeof(float));
            for (int i = 0; i < n; i++) sum += fabs((double)h[i]);
            free(h);
        }
        flops = 2.0 * 2.0 * (double)n * d * V; /* logits and dx = dlogits W */
    ce_done:
        free(tg), free(dl);
        if (s) return free(times), s;
    }
    double total = 0.0;
    for (int i = 0; i < o->iters; i++) total += times[i];
    qsort(times, (size_t)o->iters, sizeof(double), cmp_double);
    double med = o->iters % 2 ? times[o->iters / 2] : 0.5 * (times[o->iters / 2 - 1] + times[o->iters / 2]);
    free(times);
    if (!isfinite(sum)) return tl_fail(err, TL_ERR_RUNTIME, "%s: non-finite outputs", o->op);
    printf("RESULT impl=tailor op=%s backend=%s ms_median=%.4f ms_mean=%.4f tflops=%.2f checksum=%.6g\n", o->op,
           be->name, 1e3 * med, 1e3 * total / o->iters, flops / med * 1e-12, sum);
    return TL_OK;
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "tl_bench_ops: %s expects an integer in [%d, %d]\n", flag, lo, hi);
        return 0;
    }
    *out = (int)x;
    return 1;
}

int main(int argc, char **argv) {
    opts o = {.op = NULL, .backend = "auto", .seqs = 8, .seq_len = 2048, .hq = 32, .hkv = 8, .hd = 64,
              .tokens = 16384, .hidden = 2048, .vocab = 128256, .warmup = 2, .iters = 10};
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--op") && v) o.op = v;
        else if (!strcmp(a, "--backend") && v) o.backend = v;
        else if (!strcmp(a, "--seqs")) ok = parse_int(a, v, 1, 1 << 16, &o.seqs);
        else if (!strcmp(a, "--seq-len")) ok = parse_int(a, v, 1, 1 << 20, &o.seq_len);
        else if (!strcmp(a, "--hq")) ok = parse_int(a, v, 1, 1024, &o.hq);
        else if (!strcmp(a, "--hkv")) ok = parse_int(a, v, 1, 1024, &o.hkv);
        else if (!strcmp(a, "--hd")) ok = parse_int(a, v, 2, 256, &o.hd);
        else if (!strcmp(a, "--tokens")) ok = parse_int(a, v, 1, 1 << 24, &o.tokens);
        else if (!strcmp(a, "--hidden")) ok = parse_int(a, v, 1, 1 << 16, &o.hidden);
        else if (!strcmp(a, "--vocab")) ok = parse_int(a, v, 2, 1 << 22, &o.vocab);
        else if (!strcmp(a, "--warmup")) ok = parse_int(a, v, 0, 1000, &o.warmup);
        else if (!strcmp(a, "--iters")) ok = parse_int(a, v, 1, 100000, &o.iters);
        else ok = 0, o.op = NULL;
        if (!ok) break;
    }
    if (!o.op || (strcmp(o.op, "attn") && strcmp(o.op, "ce")) || o.hq % o.hkv) {
        fprintf(stderr, "usage: tl_bench_ops --op attn|ce [--backend cpu|cuda|auto] [--seqs S --seq-len T --hq H "
                        "--hkv K --hd D] [--tokens N --hidden D --vocab V] [--warmup W] [--iters N]\n");
        return 2;
    }
    ctx c;
    memset(&c, 0, sizeof c);
    tl_error err = {0};
    tl_status s = run(&c, &o, &err);
    for (int i = 0; i < c.nb; i++) c.be->free(c.be, c.bufs[i]);
    if (c.be) c.be->destroy(c.be);
    if (s) {
        fprintf(stderr, "tl_bench_ops: %s\n", err.msg);
        return (int)s;
    }
    return 0;
}
