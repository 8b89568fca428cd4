/* test_decode_ops: the KV-cache decoding ops of the CUDA backend (kv_store, attn_kv) against the CPU backend on
 * fresh random bf16-representable inputs, outputs poisoned (NaN) first. Caches of three sequences are filled by
 * kv_store from one flat batch (rows in shuffled order), then attn_kv runs queries at assorted positions of each
 * sequence (including position 0 and the last one); head dims 8, 64 and 80 (not a multiple of 32), GQA groups
 * 1 and 2. The stored caches must match exactly (a copy), attention to 1e-2 of the largest reference value
 * (bf16 output). Needs a GPU: without one it prints "SKIPPED: no CUDA device" and exits 77. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"

static uint64_t g_rng = 0x2545f4914f6cdd1dULL;
static int g_fail = 0;

static float uni(void) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return (float)((g_rng * 0x2545f4914f6cdd1dULL) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}
static float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}
static void must(tl_status s, const tl_error *e, const char *what) {
    if (s != TL_OK) {
        fprintf(stderr, "FATAL: %s: %s\n", what, e->msg);
        exit(1);
    }
}
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "FATAL: out of host memory\n");
        exit(1);
    }
    return p;
}

typedef struct {
    tl_backend *be;
    void *p;
} dbuf;

static void *alloc_on(tl_backend *be, size_t bytes) {
    tl_error e = {0};
    void *p;
    must(be->alloc(be, bytes, &p, &e), &e, "alloc");
    return p;
}

static void run_case(tl_backend *cpu, tl_backend *gpu, int Hq, int Hkv, int hd) {
    enum { S = 3, CTX = 21 };
    int len[S] = {1, 13, CTX};
    int kvd = Hkv * hd, qd = Hq * hd, n = 0;
    for (int s = 0; s < S; s++) n += len[s];
    int32_t *seq = xmalloc((size_t)n * 4), *pos = xmalloc((size_t)n * 4);
    /* every (sequence, position) once, in a shuffled order */
    for (int s = 0, r = 0; s < S; s++)
        for (int j = 0; j < len[s]; j++, r++) seq[r] = s, pos[r] = j;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)((uni() + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
        int32_t a = seq[i], b = pos[i];
        seq[i] = seq[j], pos[i] = pos[j], seq[j] = a, pos[j] = b;
    }
    size_t nc = (size_t)S * CTX * kvd;
    float *k = xmalloc((size_t)n * kvd * 4), *v = xmalloc((size_t)n * kvd * 4), *nan = xmalloc(nc * 4);
    for (size_t i = 0; i < (size_t)n * kvd; i++) k[i] = bf16_round(2.0f * uni()), v[i] = bf16_round(uni());
    for (size_t i = 0; i < nc; i++) nan[i] = NAN;
    /* queries: for each sequence positions 0, the middle and the last stored one */
    enum { NQ = 3 * S };
    int32_t qseq[NQ], qpos[NQ];
    for (int s = 0, r = 0; s < S; s++) {
        int ps[3] = {0, len[s] / 2, len[s] - 1};
        for (int j = 0; j < 3; j++, r++) qseq[r] = s, qpos[r] = ps[j];
    }
    float *q = xmalloc((size_t)NQ * qd * 4), *outn = xmalloc((size_t)NQ * qd * 4);
    for (size_t i = 0; i < (size_t)NQ * qd; i++) q[i] = bf16_round(2.0f * uni()), outn[i] = NAN;
    float *res[2][3];
    tl_backend *bes[2] = {cpu, gpu};
    for (int b = 0; b < 2; b++) {
        tl_backend *be = bes[b];
        size_t A = be->act_size;
        void *dk = alloc_on(be, (size_t)n * kvd * A), *dv = alloc_on(be, (size_t)n * kvd * A);
        void *kc = alloc_on(be, nc * A), *vc = alloc_on(be, nc * A), *dq = alloc_on(be, (size_t)NQ * qd * A);
        void *dout = alloc_on(be, (size_t)NQ * qd * A);
        int32_t *dseq = alloc_on(be, (size_t)n * 4), *dpos = alloc_on(be, (size_t)n * 4);
        int32_t *dqs = alloc_on(be, NQ * 4), *dqp = alloc_on(be, NQ * 4);
        be->upload_act(be, dk, k, (size_t)n * kvd);
        be->upload_act(be, dv, v, (size_t)n * kvd);
        be->upload_act(be, kc, nan, nc);
        be->upload_act(be, vc, nan, nc);
        be->upload_act(be, dq, q, (size_t)NQ * qd);
        be->upload_act(be, dout, outn, (size_t)NQ * qd);
        be->upload(be, dseq, seq, (size_t)n * 4);
        be->upload(be, dpos, pos, (size_t)n * 4);
        be->upload(be, dqs, qseq, NQ * 4);
        be->upload(be, dqp, qpos, NQ * 4);
        be->kv_store(be, kc, vc, dk, dv, dseq, dpos, n, CTX, Hkv, hd);
        be->attn_kv(be, dout, dq, kc, vc, dqs, dqp, NQ, CTX, Hq, Hkv, hd);
        tl_error e = {0};
        must(be->status(be, &e), &e, be->name);
        res[b][0] = xmalloc(nc * 4), res[b][1] = xmalloc(nc * 4), res[b][2] = xmalloc((size_t)NQ * qd * 4);
        be->download_act(be, res[b][0], kc, nc);
        be->download_act(be, res[b][1], vc, nc);
        be->download_act(be, res[b][2], dout, (size_t)NQ * qd);
        void *all[] = {dk, dv, kc, vc, dq, dout, dseq, dpos, dqs, dqp};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free(be, all[i]);
    }
    char what[96];
    /* caches: exact copies where stored (all of sequence s's first len[s] entries), NaN elsewhere on both */
    for (int c = 0; c < 2; c++) {
        size_t bad = 0;
        for (int s = 0; s < S; s++)
            for (int t = 0; t < CTX; t++)
                for (int e = 0; e < kvd; e++) {
                    size_t i = ((size_t)s * CTX + t) * kvd + e;
                    float a = res[0][c][i], b = res[1][c][i];
                    if (t < len[s] ? (isnan(a) || a != b) : !(isnan(a) && isnan(b))) bad++;
                }
        snprintf(what, sizeof what, "kv_store %s (Hkv=%d, hd=%d)", c ? "values" : "keys", Hkv, hd);
        printf("%s %-44s %zu bad\n", bad ? "FAIL" : "ok  ", what, bad);
        g_fail += bad != 0;
    }
    double md = 0, mr = 0;
    int nans = 0;
    for (size_t i = 0; i < (size_t)NQ * qd; i++) {
        if (isnan(res[0][2][i]) || isnan(res[1][2][i])) nans++;
        double d = fabs((double)res[0][2][i] - res[1][2][i]);
        if (d > md) md = d;
        if (fabs(res[0][2][i]) > mr) mr = fabs(res[0][2][i]);
    }
    double rel = mr > 0 ? md / mr : md;
    snprintf(what, sizeof what, "attn_kv (Hq=%d, Hkv=%d, hd=%d)", Hq, Hkv, hd);
    int ok = !nans && rel <= 1e-2 && mr > 0;
    printf("%s %-44s rel err %.2e%s\n", ok ? "ok  " : "FAIL", what, rel, nans ? " (NaN)" : "");
    g_fail += !ok;
    for (int b = 0; b < 2; b++)
        for (int c = 0; c < 3; c++) free(res[b][c]);
    free(seq), free(pos), free(k), free(v), free(nan), free(q), free(outn);
}

/* A row whose position is outside [0, max_ctx) (or whose cache sequence is < 0): kv_store and attn_kv skip it and
 * the backend reports a sticky failure naming max_ctx, on both backends; the cache is not written. */
static void bad_rows(const char *op, int32_t bad_seq, int32_t bad_pos) {
    enum { CTX = 4, Hkv = 1, hd = 8 };
    for (int b = 0; b < 2; b++) {
        tl_error e = {0};
        tl_backend *be;
        must(b ? tl_backend_cuda_create(0, &be, &e) : tl_backend_cpu_create(1, &be, &e), &e, "create");
        size_t A = be->act_size, nc = (size_t)CTX * Hkv * hd;
        float host[CTX * Hkv * hd], got[CTX * Hkv * hd];
        for (size_t i = 0; i < nc; i++) host[i] = (float)i;
        void *kc = alloc_on(be, nc * A), *vc = alloc_on(be, nc * A), *kv = alloc_on(be, (size_t)Hkv * hd * A);
        int32_t *dseq = alloc_on(be, 4), *dpos = alloc_on(be, 4);
        be->upload_act(be, kc, host, nc);
        be->upload_act(be, vc, host, nc);
        be->upload_act(be, kv, host, (size_t)Hkv * hd);
        be->upload(be, dseq, &bad_seq, 4);
        be->upload(be, dpos, &bad_pos, 4);
        must(be->status(be, &e), &e, "setup");
        if (!strcmp(op, "kv_store")) be->kv_store(be, kc, vc, kv, kv, dseq, dpos, 1, CTX, Hkv, hd);
        else be->attn_kv(be, kv, kv, kc, vc, dseq, dpos, 1, CTX, Hkv, Hkv, hd);
        tl_status s = be->status(be, &e);
        int untouched = 1;
        if (b == 0) { /* the CPU backend's memory is host memory: the cache is still readable */
            be->download_act(be, got, kc, nc);
            untouched = !memcmp(got, host, sizeof got);
        }
        int ok = s == TL_ERR_RUNTIME && strstr(e.msg, "max_ctx") && untouched;
        printf("%s %s seq %d pos %d on %-4s: \"%s\"\n", ok ? "ok  " : "FAIL", op, (int)bad_seq, (int)bad_pos,
               be->name, e.msg);
        g_fail += !ok;
        be->destroy(be);
    }
}

int main(void) {
    if (tl_cuda_device_count() <= 0) {
        printf("SKIPPED: no CUDA device\n");
        return 77;
    }
    tl_error e = {0};
    tl_backend *cpu, *gpu;
    must(tl_backend_cpu_create(2, &cpu, &e), &e, "cpu create");
    must(tl_backend_cuda_create(0, &gpu, &e), &e, "cuda create");
    run_case(cpu, gpu, 2, 2, 8);
    run_case(cpu, gpu, 4, 2, 64);
    run_case(cpu, gpu, 6, 3, 80);
    bad_rows("kv_store", 0, 4);
    bad_rows("kv_store", 0, -1);
    bad_rows("kv_store", -1, 0);
    bad_rows("attn_kv", 0, 4);
    cpu->destroy(cpu);
    gpu->destroy(gpu);
    if (g_fail) {
        printf("%d check(s) failed\n", g_fail);
        return 1;
    }
    printf("ok\n");
    return 0;
}
