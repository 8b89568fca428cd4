/* eval_rouge: generation quality on held-out SFT data. Each example's prompt is answered greedily with its own
 * adapter (and with the bare base model), the answer and the reference response are decoded, and ROUGE-1 /
 * ROUGE-L F-measures (rouge.c) are averaged per adapter. Examples are decoded `batch` at a time through one KV
 * cache decoder (generate.c); a batch mixes adapters and the base model freely, each sequence with its slot. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/eval/tl_generate.h"
#include "trainer/eval/tl_rouge.h"

typedef struct {
    int64_t ex;
    int slot;    /* the example's adapter */
    int is_base; /* generate with slot TL_SLOT_BASE */
} er_item;

typedef struct {
    const tl_model *m;
    const tl_lora_pool *p;
    const tl_tokenizer *tok;
    const tl_sft_dataset *ds;
    int max_new, n_eos;
    int32_t eos[2];
    tl_eval_rouge_cb cb;
    void *cb_ctx;
    double *sum1, *sumL, *bsum1, *bsumL;
} er_ctx;

static int er_is_eos(const er_ctx *c, int32_t t) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos[i] == t) return 1;
    return 0;
}

/* decodes answer and reference of one item, scores them and adds the F-measures to the sums */
static tl_status er_score(const er_ctx *c, const er_item *it, const int32_t *ans, int n_ans, tl_error *err) {
    const tl_sft_dataset *ds = c->ds;
    int64_t b = ds->offsets[it->ex] + ds->prompt_len[it->ex], e = ds->offsets[it->ex + 1];
    if (e > b && er_is_eos(c, ds->tokens[e - 1])) e--; /* the end token the model learned to stop with */
    char *a_txt = NULL, *r_txt = NULL;
    size_t a_len, r_len;
    TL_TRY(tl_tokenizer_decode(c->tok, ans, (size_t)n_ans, &a_txt, &a_len, err));
    tl_status s = tl_tokenizer_decode(c->tok, ds->tokens + b, (size_t)(e - b), &r_txt, &r_len, err);
    if (s) {
        free(a_txt);
        return tl_wrap(err, "rouge eval: reference of example %lld", (long long)it->ex);
    }
    tl_rouge_score sc;
    tl_rouge(a_txt, r_txt, &sc);
    if (isnan(sc.rouge1.fmeasure)) s = tl_fail(err, TL_ERR_RUNTIME, "rouge eval: out of host memory");
    else if (it->is_base) c->bsum1[it->slot] += sc.rouge1.fmeasure, c->bsumL[it->slot] += sc.rougeL.fmeasure;
    else c->sum1[it->slot] += sc.rouge1.fmeasure, c->sumL[it->slot] += sc.rougeL.fmeasure;
    if (!s && c->cb) c->cb(c->cb_ctx, it->ex, it->slot, it->is_base, a_txt, r_txt);
    free(a_txt), free(r_txt);
    return s;
}

/* greedy answers for items[0..n), all in one decoder */
static tl_status er_batch(const er_ctx *c, const er_item *items, int n, tl_error *err) {
    const tl_sft_dataset *ds = c->ds;
    int V = c->m->cfg.vocab_size, max_prompt = 0, rows = 0;
    for (int i = 0; i < n; i++) {
        int pl = ds->prompt_len[items[i].ex];
        rows += pl;
        if (pl > max_prompt) max_prompt = pl;
    }
    int32_t *slots = malloc((size_t)n * sizeof(int32_t)), *toks = malloc((size_t)rows * sizeof(int32_t));
    int32_t *out = malloc((size_t)n * (c->max_new > 0 ? c->max_new : 1) * sizeof(int32_t));
    int *n_new = malloc((size_t)n * sizeof(int)), *n_out = calloc((size_t)n, sizeof(int));
    int *done = calloc((size_t)n, sizeof(int));
    float *logits = malloc((size_t)n * V * sizeof(float));
    tl_decoder *d = NULL;
    tl_status s = TL_OK;
    if (!slots || !toks || !out || !n_new || !n_out || !done || !logits) {
        s = tl_fail(err, TL_ERR_RUNTIME, "rouge eval: out of host memory");
        goto out;
    }
    for (int i = 0, k = 0; i < n; i++) {
        int64_t ex = items[i].ex;
        slots[i] = items[i].is_base ? TL_SLOT_BASE : items[i].slot;
        n_new[i] = ds->prompt_len[ex];
        memcpy(toks + k, ds->tokens + ds->offsets[ex], (size_t)n_new[i] * sizeof(int32_t));
        k += n_new[i];
    }
    if ((s = tl_decoder_create(c->m, c->p, n, slots, max_prompt + c->max_new, rows, &d, err)) != TL_OK) goto out;
    s = tl_decoder_append(d, toks, n_new, logits, err);
    for (int step = 0; s == TL_OK && step < c->max_new; step++) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            n_new[i] = 0;
            if (done[i]) continue;
            uint64_t rng = 0; /* unused when greedy */
            int32_t t = tl_sample_token(logits + (size_t)i * V, V, 0.0f, 1.0f, &rng, NULL);
            if (er_is_eos(c, t)) {
                done[i] = 1;
                continue;
            }
            out[(size_t)i * c->max_new + n_out[i]++] = t;
            if (n_out[i] == c->max_new) {
                done[i] = 1;
                continue;
            }
            toks[k++] = t, n_new[i] = 1;
        }
        if (!k) break;
        s = tl_decoder_append(d, toks, n_new, logits, err);
    }
    for (int i = 0; s == TL_OK && i < n; i++) s = er_score(c, &items[i], out + (size_t)i * c->max_new, n_out[i], err);
out:
    tl_decoder_free(d);
    free(slots), free(toks), free(out), free(n_new), free(n_out), free(done), free(logits);
    return s;
}

void tl_eval_rouge_result_free(tl_eval_rouge_result *r) {
    free(r->examples), free(r->rouge1), free(r->rougeL), free(r->base_rouge1), free(r->base_rougeL);
    memset(r, 0, sizeof *r);
}

tl_status tl_eval_rouge(const tl_model *m, const tl_lora_pool *p, const tl_tokenizer *tok, const tl_sft_dataset *ds,
                        const tl_adapter_map *map, const tl_eval_rouge_opts *o, tl_eval_rouge_result *res,
                        tl_error *err) {
    memset(res, 0, sizeof *res);
    int max_new_tokens = o->max_new_tokens, with_base = o->with_base, batch = o->batch;
    tl_eval_rouge_cb cb = o->cb;
    void *cb_ctx = o->cb_ctx;
    if (max_new_tokens < 1)
        return tl_fail(err, TL_ERR_INPUT, "rouge eval: max_new_tokens must be >= 1 (got %d)", max_new_tokens);
    if (map->n_adapters != p->n_slots)
        return tl_fail(err, TL_ERR_INPUT, "rouge eval: the adapter map has %d adapters, the pool %d slots",
                       map->n_adapters, p->n_slots);
    if (batch <= 0) batch = 16;
    int n = p->n_slots, ctx = m->cfg.max_position_embeddings;
    if (n < 1) return tl_fail(err, TL_ERR_INPUT, "rouge eval: the pool has no adapters");
    size_t nn = (size_t)n;
    int64_t n_items = 0;
    for (int a = 0; a < n; a++) {
        for (int64_t j = 0; j < map->n_examples[a]; j++) {
            int64_t ex = map->examples[a][j];
            int pl = ds->prompt_len[ex];
            if (pl < 1)
                return tl_fail(err, TL_ERR_INPUT, "%s: example %lld has an empty prompt: nothing to answer", ds->path,
                               (long long)ex);
            if ((int64_t)pl + max_new_tokens > ctx)
                return tl_fail(err, TL_ERR_INPUT,
                               "%s: example %lld: prompt of %d tokens + %d new tokens exceed the model's context of %d",
                               ds->path, (long long)ex, pl, max_new_tokens, ctx);
        }
        n_items += map->n_examples[a] * (with_base ? 2 : 1);
    }
    res->n = n;
    res->examples = calloc(nn, sizeof(int64_t));
    res->rouge1 = calloc(nn, sizeof(double));
    res->rougeL = calloc(nn, sizeof(double));
    res->base_rouge1 = calloc(nn, sizeof(double));
    res->base_rougeL = calloc(nn, sizeof(double));
    er_item *items = malloc((size_t)(n_items > 0 ? n_items : 1) * sizeof *items);
    tl_status s = TL_OK;
    if (!res->examples || !res->rouge1 || !res->rougeL || !res->base_rouge1 || !res->base_rougeL || !items) {
        s = tl_fail(err, TL_ERR_RUNTIME, "rouge eval: out of host memory");
        goto done;
    }
    er_ctx c = {.m = m, .p = p, .tok = tok, .ds = ds, .max_new = max_new_tokens, .cb = cb, .cb_ctx = cb_ctx,
                .sum1 = res->rouge1, .sumL = res->rougeL, .bsum1 = res->base_rouge1, .bsumL = res->base_rougeL};
    const char *eos_names[] = {"<|im_end|>", "<|endoftext|>"}; /* as tailor generate stops */
    for (int i = 0; i < 2; i++) {
        int32_t id = tl_tokenizer_token_id(tok, eos_names[i]);
        if (id >= 0) c.eos[c.n_eos++] = id;
    }
    int64_t k = 0;
    for (int a = 0; a < n; a++) {
        res->examples[a] = map->n_examples[a];
        for (int64_t j = 0; j < map->n_examples[a]; j++) {
            items[k++] = (er_item){map->examples[a][j], a, 0};
            if (with_base) items[k++] = (er_item){map->examples[a][j], a, 1};
        }
    }
    for (int64_t i = 0; s == TL_OK && i < n_items; i += batch)
        s = er_batch(&c, items + i, (int)(n_items - i < batch ? n_items - i : batch), err);
    if (s) goto done;
    for (int a = 0; a < n; a++) {
        double e = (double)res->examples[a];
        res->rouge1[a] = e > 0 ? res->rouge1[a] / e : NAN;
        res->rougeL[a] = e > 0 ? res->rougeL[a] / e : NAN;
        res->base_rouge1[a] = with_base && e > 0 ? res->base_rouge1[a] / e : NAN;
        res->base_rougeL[a] = with_base && e > 0 ? res->base_rougeL[a] / e : NAN;
    }
done:
    free(items);
    if (s) tl_eval_rouge_result_free(res);
    return s;
}
