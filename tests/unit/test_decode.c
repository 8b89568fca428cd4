/* test_decode: KV-cache decoding (tl_decoder, kv_store / attn_kv on the CPU backend) gives the logits of a full
 * recomputation at every step. Four sequences with prompts of different lengths run side by side, three with
 * different random LoRA adapters (B non-zero, all seven targets) and one with the bare base model, on a tiny
 * random GQA model with attention biases; after the prefill and after each of several decode steps (fed random
 * tokens), each sequence's last logits must equal the last row of tl_model_logits over its whole prefix
 * (relative error <= 1e-5). Also: greedy / seeded sampling, and the decoder's input errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/eval/tl_generate.h"
#include "trainer/model/tl_tinymodel.h"
#include "tests/lib/tl_check.h"

static uint64_t rs = 0x1234567ULL;
static uint32_t rnd(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (uint32_t)(rs >> 11);
}
static float frand(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

enum { NS = 4, STEPS = 5, V = 96 };

/* logits of the last token of each of the n sequences seq[s][0..len[s]) (slot slots[s]) through tl_model_logits */
static tl_status full_logits(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, int32_t seq[NS][64],
                             const int *len, const int32_t *slots, float *out, float *all, tl_error *err) {
    int n = 0;
    int32_t tokens[NS * 64], pos[NS * 64], targets[NS * 64], adapter[NS * 64], cu[NS + 1];
    float weight[NS * 64];
    uint64_t seed[NS * 64];
    int64_t example[NS];
    tl_seg segs[NS];
    cu[0] = 0;
    int maxlen = 0;
    for (int s = 0; s < NS; s++) {
        for (int j = 0; j < len[s]; j++, n++)
            tokens[n] = seq[s][j], pos[n] = j, targets[n] = -1, adapter[n] = slots[s], weight[n] = 0, seed[n] = 0;
        cu[s + 1] = n;
        segs[s] = (tl_seg){cu[s], n, slots[s]};
        example[s] = s;
        if (len[s] > maxlen) maxlen = len[s];
    }
    tl_host_mb mb = {.n_tok = n, .n_seq = NS, .n_seg = NS, .max_seqlen = maxlen, .tokens = tokens, .pos = pos,
                     .cu_seqlens = cu, .targets = targets, .weight = weight, .adapter = adapter, .row_seed = seed,
                     .segs = segs, .example = example};
    TL_TRY(tl_model_logits(m, p, ws, &mb, all, err));
    for (int s = 0; s < NS; s++) memcpy(out + (size_t)s * V, all + (size_t)(cu[s + 1] - 1) * V, V * sizeof(float));
    return TL_OK;
}

static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        double dd = fabs((double)a[i] - b[i]);
        if (dd > md) md = dd;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

int main(void) {
    char dir[] = "/tmp/tl_test_decode_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    tl_model_config cfg;
    tl_tiny_config(&cfg, V, 48, 2, 4, 2, 64, 0, 0, 1);
    tl_error err = {0};
    if (tl_write_random_model(dir, &cfg, 7, 0, 1, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    tl_backend *be;
    if (tl_backend_cpu_create(2, &be, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    tl_model m;
    tl_lora_pool p;
    tl_workspace *ws;
    char *names[] = {"a", "b", "c"};
    if (tl_model_load(dir, be, &m, &err) ||
        tl_lora_pool_init(&p, &m, 3, names, &(tl_lora_opts){.rank = 4, .alpha = 8.0f, .targets = 0x7f, .seed = 1},
                          &err) ||
        tl_workspace_create(&m, &p, NS * 64, NS, &ws, &err)) {
        fprintf(stderr, "FAIL: setup: %s\n", err.msg);
        return 1;
    }
    /* random A and B for every slot, so each adapter moves the logits */
    size_t np = (size_t)p.n_slots * p.P;
    float *params = malloc(np * sizeof(float));
    for (size_t i = 0; i < np; i++) params[i] = 0.3f * frand();
    be->upload(be, p.params, params, np * sizeof(float));

    int32_t slots[NS] = {1, -1, 0, 2};
    int plen[NS] = {7, 3, 12, 1}, len[NS];
    int32_t seq[NS][64];
    int32_t flat[NS * 64];
    int n_new[NS], nf = 0;
    for (int s = 0; s < NS; s++) {
        for (int j = 0; j < plen[s]; j++) flat[nf++] = seq[s][j] = (int32_t)(rnd() % V);
        len[s] = n_new[s] = plen[s];
    }
    tl_decoder *d;
    if (tl_decoder_create(&m, &p, NS, slots, 12 + STEPS, nf, &d, &err)) {
        fprintf(stderr, "FAIL: decoder: %s\n", err.msg);
        return 1;
    }
    float *got = malloc(NS * V * sizeof(float)), *want = malloc(NS * V * sizeof(float));
    float *all = malloc((size_t)NS * 64 * V * sizeof(float));
    for (int i = 0; i < NS * V; i++) got[i] = NAN;
    double worst = 0;
    for (int step = 0; step <= STEPS; step++) {
        if (tl_decoder_append(d, flat, n_new, got, &err) ||
            full_logits(&m, &p, ws, seq, len, slots, want, all, &err)) {
            fprintf(stderr, "FAIL: step %d: %s\n", step, err.msg);
            return 1;
        }
        for (int s = 0; s < NS; s++) {
            CHECK(tl_decoder_len(d, s) == len[s], "step %d seq %d: decoder length %d, expected %d", step, s,
                  tl_decoder_len(d, s), len[s]);
            double e = rel_err(got + s * V, want + s * V, V);
            if (e > worst) worst = e;
            CHECK(e <= 1e-5, "step %d seq %d (slot %d, %d tokens): rel err %.3g", step, s, slots[s], len[s], e);
        }
        /* the adapters matter: sequences 0 and 2 under the base model's logits differ */
        /* next step: one random token per sequence, except sequence 1 which skips step 2 */
        nf = 0;
        for (int s = 0; s < NS; s++) {
            n_new[s] = (s == 1 && step == 2) ? 0 : 1;
            if (!n_new[s]) continue;
            flat[nf++] = seq[s][len[s]] = (int32_t)(rnd() % V);
            len[s]++;
            got[s * V] = NAN;
        }
    }
    printf("decode vs recompute: worst rel err %.3g over %d steps\n", worst, STEPS + 1);

    /* the adapter matters: sequence 0 under slot -1 instead of 1 gives other logits */
    {
        int32_t base_slots[NS] = {-1, -1, 0, 2};
        int l2[NS] = {len[0], len[1], len[2], len[3]};
        float *w2 = malloc(NS * V * sizeof(float));
        if (full_logits(&m, &p, ws, seq, l2, base_slots, w2, all, &err)) return 1;
        double e = rel_err(w2, want, V);
        CHECK(e > 1e-2, "adapter b barely changes the logits (rel %.3g)", e);
        free(w2);
    }

    /* errors: past the context, a token outside the vocabulary */
    {
        int big[NS] = {100, 0, 0, 0};
        CHECK(tl_decoder_append(d, flat, big, got, &err) == TL_ERR_INPUT, "append past max_ctx accepted");
        int one[NS] = {1, 0, 0, 0};
        int32_t badtok = V;
        CHECK(tl_decoder_append(d, &badtok, one, got, &err) == TL_ERR_INPUT && strstr(err.msg, "vocabulary"),
              "token outside the vocabulary accepted: %s", err.msg);
        int32_t bad_slots[NS] = {0, 3, 0, 0};
        tl_decoder *d2 = NULL;
        CHECK(tl_decoder_create(&m, &p, NS, bad_slots, 8, 8, &d2, &err) == TL_ERR_INPUT, "slot 3 of 3 accepted");
    }

    /* sampling: greedy is the first argmax; seeded sampling repeats; top-p tiny keeps only the argmax */
    {
        float l[8] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 1.9f, -3.0f, 0.0f}, c[8];
        tl_prob_id sc[8];
        uint64_t r1 = 42, r2 = 42;
        memcpy(c, l, sizeof l);
        CHECK(tl_sample_token(c, 8, 0.0f, 1.0f, &r1, sc) == 1, "greedy is not the first argmax");
        int32_t s1[64], s2[64];
        int hist[8] = {0};
        for (int i = 0; i < 64; i++) {
            memcpy(c, l, sizeof l);
            s1[i] = tl_sample_token(c, 8, 1.0f, 1.0f, &r1, sc);
            memcpy(c, l, sizeof l);
            s2[i] = tl_sample_token(c, 8, 1.0f, 1.0f, &r2, sc);
            hist[s1[i]]++;
        }
        CHECK(!memcmp(s1, s2, sizeof s1), "the same seed gave different samples");
        CHECK(hist[1] > 0 && hist[3] > 0 && hist[5] > 0, "temperature 1 never drew one of the likely tokens");
        for (int i = 0; i < 32; i++) {
            memcpy(c, l, sizeof l);
            int32_t t = tl_sample_token(c, 8, 1.0f, 0.01f, &r1, sc);
            CHECK(t == 1, "top-p 0.01 drew token %d (the nucleus is token 1 alone)", t);
        }
        for (int i = 0; i < 64; i++) {
            memcpy(c, l, sizeof l);
            int32_t t = tl_sample_token(c, 8, 1.0f, 0.5f, &r1, sc);
            CHECK(t == 1 || t == 3, "top-p 0.5 drew token %d outside the nucleus {1, 3}", t);
        }
    }

    tl_decoder_free(d);
    tl_workspace_free(ws, be);
    tl_lora_pool_free(&p, be);
    tl_model_free(&m);
    be->destroy(be);
    free(params), free(got), free(want), free(all);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    return tl_check_done("test_decode");
}
