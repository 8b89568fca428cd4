/* generate: KV-cache decoding with many LoRA adapters in one batch, token sampling, and tl_generate, what the
 * `tailor generate` command runs (its arguments and messages: trainer/cli/cmd_generate.c).
 *
 * The decoder runs its own forward pass over the op table (the training workspace keeps activations of every
 * layer for backward; decoding needs one layer's worth, reused). Prefill and decode steps are the same code: the
 * new rows' keys and values are stored into the caches at their positions, then each row attends over its own
 * sequence's cache prefix, which is causal attention for a prompt and plain attention for a single new token. */
#include "trainer/eval/tl_generate.h"
#include "data/tl_io.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_model_tokenizer.h"
#include "kernels/tl_text.h"
#include "trainer/run/tl_export.h"

struct tl_decoder {
    const tl_model *m;
    const tl_lora_pool *p;
    tl_backend *be;
    int n_seqs, max_ctx, max_rows;
    int32_t *slots; /* host [n_seqs] */
    int *len;       /* host [n_seqs] */
    tl_act **kc, **vc; /* [L] caches */
    /* one layer's activations for max_rows rows */
    tl_act *x, *xn, *q, *k, *v, *att, *mid, *g, *u, *hsw, *logits;
    float *rstd, *lora_h;
    int32_t *d_tok, *d_pos, *d_seq, *d_cu;
    uint64_t *d_seed;
    tl_seg *d_segs;
    /* host staging */
    int32_t *h_tok, *h_pos, *h_seq, *h_cu, *h_last;
    tl_seg *h_segs;
    void **allocs;
    int n_allocs;
};

static tl_status dec_alloc(tl_decoder *d, size_t bytes, void **out, tl_error *err) {
    TL_TRY(d->be->alloc(d->be, bytes ? bytes : 16, out, err));
    d->allocs[d->n_allocs++] = *out;
    return TL_OK;
}

void tl_decoder_free(tl_decoder *d) {
    if (!d) return;
    for (int i = 0; i < d->n_allocs; i++) d->be->free(d->be, d->allocs[i]);
    free(d->allocs);
    free(d->slots), free(d->len), free(d->kc), free(d->vc);
    free(d->h_tok), free(d->h_pos), free(d->h_seq), free(d->h_cu), free(d->h_last), free(d->h_segs);
    free(d);
}

tl_status tl_decoder_create(const tl_model *m, const tl_lora_pool *p, int n_seqs, const int32_t *slots,
                            int max_ctx, int max_rows, tl_decoder **out, tl_error *err) {
    const tl_model_config *c = &m->cfg;
    if (n_seqs < 1 || max_ctx < 1 || max_rows < 1)
        return tl_fail(err, TL_ERR_INPUT, "decoder: need >= 1 sequence, context and row (got %d, %d, %d)", n_seqs,
                       max_ctx, max_rows);
    for (int s = 0; s < n_seqs; s++)
        if (slots[s] >= (p ? p->n_slots : 0))
            return tl_fail(err, TL_ERR_INPUT, "decoder: sequence %d names adapter slot %d of a pool of %d", s,
                           slots[s], p ? p->n_slots : 0);
    tl_decoder *d = calloc(1, sizeof *d);
    if (!d) return tl_fail(err, TL_ERR_RUNTIME, "decoder: out of host memory");
    int L = c->num_hidden_layers;
    d->m = m, d->p = p, d->be = m->be, d->n_seqs = n_seqs, d->max_ctx = max_ctx, d->max_rows = max_rows;
    size_t n = (size_t)max_rows, S = (size_t)n_seqs;
    d->allocs = calloc((size_t)2 * L + 32, sizeof(void *));
    d->slots = malloc(S * sizeof(int32_t));
    d->len = calloc(S, sizeof(int));
    d->kc = calloc((size_t)L, sizeof(tl_act *));
    d->vc = calloc((size_t)L, sizeof(tl_act *));
    d->h_tok = malloc(n * sizeof(int32_t));
    d->h_pos = malloc(n * sizeof(int32_t));
    d->h_seq = malloc(n * sizeof(int32_t));
    d->h_cu = malloc((S + 1) * sizeof(int32_t));
    d->h_last = malloc(S * sizeof(int32_t));
    d->h_segs = malloc(S * sizeof(tl_seg));
    if (!d->allocs || !d->slots || !d->len || !d->kc || !d->vc || !d->h_tok || !d->h_pos || !d->h_seq ||
        !d->h_cu || !d->h_last || !d->h_segs) {
        tl_decoder_free(d);
        return tl_fail(err, TL_ERR_RUNTIME, "decoder: out of host memory");
    }
    memcpy(d->slots, slots, S * sizeof(int32_t));
    size_t A = d->be->act_size, dm = (size_t)c->hidden_size, f = (size_t)c->intermediate_size;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim, kvd = (size_t)c->num_key_value_heads * c->head_dim;
    size_t cache = S * (size_t)max_ctx * kvd * A;
    tl_status s = TL_OK;
#define AL(ptr, bytes)                                        \
    do {                                                      \
        s = dec_alloc(d, (bytes), (void **)&(ptr), err);      \
        if (s) goto fail;                                     \
    } while (0)
    for (int l = 0; l < L; l++) {
        AL(d->kc[l], cache);
        AL(d->vc[l], cache);
    }
    AL(d->x, n * dm * A);
    AL(d->xn, n * dm * A);
    AL(d->q, n * qd * A);
    AL(d->k, n * kvd * A);
    AL(d->v, n * kvd * A);
    AL(d->att, n * qd * A);
    AL(d->mid, n * dm * A);
    AL(d->g, n * f * A);
    AL(d->u, n * f * A);
    AL(d->hsw, n * f * A);
    AL(d->logits, S * (size_t)c->vocab_size * A);
    AL(d->rstd, n * sizeof(float));
    AL(d->lora_h, n * (size_t)(p ? p->rank : 1) * sizeof(float));
    AL(d->d_tok, n * sizeof(int32_t));
    AL(d->d_pos, n * sizeof(int32_t));
    AL(d->d_seq, n * sizeof(int32_t));
    AL(d->d_cu, (S + 1) * sizeof(int32_t));
    AL(d->d_seed, n * sizeof(uint64_t));
    AL(d->d_segs, S * sizeof(tl_seg));
#undef AL
    d->be->zero(d->be, d->d_seed, n * sizeof(uint64_t)); /* no dropout at inference; seeds unused but defined */
    *out = d;
    return TL_OK;
fail:
    tl_wrap(err, "decoder for %d sequences of %d tokens", n_seqs, max_ctx);
    tl_decoder_free(d);
    return s;
}

int tl_decoder_len(const tl_decoder *d, int s) { return d->len[s]; }

/* y = x W^T (+ b) + the segment's LoRA term (no dropout) */
static void proj(const tl_decoder *d, const tl_mb *mb, int l, int t, tl_act *y, const tl_act *x, const tl_act *W,
                 const tl_act *bias) {
    tl_backend *be = d->be;
    const tl_lora_pool *p = d->p;
    int in, out;
    tl_target_dims(&d->m->cfg, t, &in, &out);
    be->linear_fwd(be, y, x, W, bias, mb->n_tok, in, out, 0);
    if (p && (p->targets & (1u << t))) {
        size_t k = (size_t)l * TL_N_TARGETS + t;
        tl_lora_site ls = {.A = p->params + p->off_A[k], .B = p->params + p->off_B[k], .slot_stride = p->P,
                           .r = p->rank, .scale = p->scale, .dropout = 0.0f, .site = (uint32_t)k};
        be->lora_fwd(be, y, d->lora_h, x, &ls, mb, in, out);
    }
}

tl_status tl_decoder_reset(tl_decoder *d, const tl_lora_pool *p, const int32_t *slots, tl_error *err) {
    if (p && p != d->p) {
        if (!d->p || p->rank != d->p->rank || p->targets != d->p->targets || p->P != d->p->P)
            return tl_fail(err, TL_ERR_RUNTIME, "decoder: a pool of another layout than the one it was made for");
        d->p = p;
    }
    for (int s = 0; s < d->n_seqs; s++)
        if (slots[s] >= (d->p ? d->p->n_slots : 0))
            return tl_fail(err, TL_ERR_INPUT, "decoder: sequence %d names adapter slot %d of a pool of %d", s,
                           slots[s], d->p ? d->p->n_slots : 0);
    memcpy(d->slots, slots, (size_t)d->n_seqs * sizeof(int32_t));
    memset(d->len, 0, (size_t)d->n_seqs * sizeof(int));
    return TL_OK;
}

tl_status tl_decoder_append(tl_decoder *d, const int32_t *tokens, const int *n_new, float *logits, tl_error *err) {
    const tl_model *m = d->m;
    const tl_model_config *c = &m->cfg;
    tl_backend *be = d->be;
    int V = c->vocab_size, dm = c->hidden_size, hd = c->head_dim, Hq = c->num_attention_heads,
        Hkv = c->num_key_value_heads;
    int n = 0, nseq = 0, nseg = 0;
    d->h_cu[0] = 0;
    for (int s = 0; s < d->n_seqs; s++) {
        if (n_new[s] < 0 || d->len[s] + n_new[s] > d->max_ctx)
            return tl_fail(err, TL_ERR_INPUT, "decoder: sequence %d of %d tokens cannot take %d more (context %d)", s,
                           d->len[s], n_new[s], d->max_ctx);
        if (n_new[s] == 0) continue;
        if (n + n_new[s] > d->max_rows)
            return tl_fail(err, TL_ERR_INPUT, "decoder: more than the planned %d new tokens in one append",
                           d->max_rows);
        for (int j = 0; j < n_new[s]; j++, n++) {
            int32_t t = tokens[n];
            if (t < 0 || t >= V)
                return tl_fail(err, TL_ERR_INPUT, "decoder: token %d of sequence %d is outside the vocabulary of %d",
                               (int)t, s, V);
            d->h_tok[n] = t, d->h_pos[n] = d->len[s] + j, d->h_seq[n] = s;
        }
        d->h_segs[nseg++] = (tl_seg){n - n_new[s], n, d->slots[s]};
        d->h_last[nseq] = n - 1;
        d->h_cu[++nseq] = n;
    }
    if (n == 0) return TL_OK;
    be->upload(be, d->d_tok, d->h_tok, (size_t)n * sizeof(int32_t));
    be->upload(be, d->d_pos, d->h_pos, (size_t)n * sizeof(int32_t));
    be->upload(be, d->d_seq, d->h_seq, (size_t)n * sizeof(int32_t));
    be->upload(be, d->d_cu, d->h_cu, (size_t)(nseq + 1) * sizeof(int32_t));
    be->upload(be, d->d_segs, d->h_segs, (size_t)nseg * sizeof(tl_seg));
    int maxlen = 0;
    for (int i = 0; i < nseq; i++)
        if (d->h_cu[i + 1] - d->h_cu[i] > maxlen) maxlen = d->h_cu[i + 1] - d->h_cu[i];
    tl_mb mb = {.n_tok = n, .n_seq = nseq, .n_seg = nseg, .max_seqlen = maxlen, .h_cu_seqlens = d->h_cu,
                .h_segs = d->h_segs, .tokens = d->d_tok, .pos = d->d_pos, .cu_seqlens = d->d_cu, .targets = NULL,
                .row_seed = d->d_seed, .segs = d->d_segs};
    size_t nd = (size_t)n * dm;
    be->embed_fwd(be, d->x, m->embed, d->d_tok, n, dm);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const tl_layer_weights *w = &m->layers[l];
        be->rmsnorm_fwd(be, d->xn, d->rstd, d->x, w->attn_norm, n, dm, c->rms_norm_eps);
        proj(d, &mb, l, TL_T_Q, d->q, d->xn, w->wq, w->bq);
        proj(d, &mb, l, TL_T_K, d->k, d->xn, w->wk, w->bk);
        proj(d, &mb, l, TL_T_V, d->v, d->xn, w->wv, w->bv);
        be->rope_fwd(be, d->q, d->d_pos, m->inv_freq, n, Hq, hd);
        be->rope_fwd(be, d->k, d->d_pos, m->inv_freq, n, Hkv, hd);
        be->kv_store(be, d->kc[l], d->vc[l], d->k, d->v, d->d_seq, d->d_pos, n, d->max_ctx, Hkv, hd);
        be->attn_kv(be, d->att, d->q, d->kc[l], d->vc[l], d->d_seq, d->d_pos, n, d->max_ctx, Hq, Hkv, hd);
        proj(d, &mb, l, TL_T_O, d->mid, d->att, w->wo, w->bo);
        be->add(be, d->mid, d->x, nd);
        be->rmsnorm_fwd(be, d->xn, d->rstd, d->mid, w->mlp_norm, n, dm, c->rms_norm_eps);
        proj(d, &mb, l, TL_T_GATE, d->g, d->xn, w->wgate, NULL);
        proj(d, &mb, l, TL_T_UP, d->u, d->xn, w->wup, NULL);
        be->swiglu_fwd(be, d->hsw, d->g, d->u, (size_t)n * c->intermediate_size);
        proj(d, &mb, l, TL_T_DOWN, d->x, d->hsw, w->wdown, NULL); /* x is no longer needed: mid holds it */
        be->add(be, d->x, d->mid, nd);
    }
    be->rmsnorm_fwd(be, d->xn, d->rstd, d->x, m->final_norm, n, dm, c->rms_norm_eps);
    /* LM head on the last new row of each sequence only; in a decode step those rows are 0..nseq-1 */
    size_t A = be->act_size, V_ = (size_t)V;
    if (n == nseq) {
        be->linear_fwd(be, d->logits, d->xn, m->lm_head, NULL, n, dm, V, 0);
    } else {
        for (int i = 0; i < nseq; i++)
            be->linear_fwd(be, (char *)d->logits + (size_t)i * V_ * A,
                           (const char *)d->xn + (size_t)d->h_last[i] * dm * A, m->lm_head, NULL, 1, dm, V, 0);
    }
    for (int s = 0, i = 0; s < d->n_seqs; s++) {
        if (n_new[s] == 0) continue;
        be->download_act(be, logits + (size_t)s * V_, (const char *)d->logits + (size_t)i * V_ * A, V_);
        i++;
    }
    TL_TRY(be->status(be, err));
    for (int s = 0; s < d->n_seqs; s++) d->len[s] += n_new[s];
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Sampling */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int by_prob_desc(const void *a, const void *b) {
    const tl_prob_id *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t tl_sample_token(float *logits, int V, float temperature, float top_p, uint64_t *rng, tl_prob_id *scratch) {
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (!(temperature > 0.0f)) return best;
    float mx = logits[best];
    double total = 0.0;
    for (int i = 0; i < V; i++) {
        scratch[i].p = expf((logits[i] - mx) / temperature);
        scratch[i].id = i;
        total += scratch[i].p;
    }
    int keep = V;
    if (top_p < 1.0f) {
        qsort(scratch, (size_t)V, sizeof *scratch, by_prob_desc);
        double cum = 0.0, want = (double)top_p * total;
        for (keep = 0; keep < V;) {
            cum += scratch[keep++].p;
            if (cum >= want) break;
        }
        total = cum;
    }
    double u = (double)(splitmix64(rng) >> 11) * (1.0 / 9007199254740992.0) * total, acc = 0.0;
    for (int i = 0; i < keep; i++) {
        acc += scratch[i].p;
        if (u < acc) return scratch[i].id;
    }
    return scratch[keep - 1].id; /* u within rounding of the total */
}

/* ------------------------------------------------------------------------------------------------------------
 * The `tailor generate` command */

typedef struct {
    char *name; /* header of the answer */
    char *dir;  /* PEFT directory; NULL for the base model */
    int rank, rslora;
    uint32_t targets;
    float alpha, scale;
    int group; /* adapters of one group share a pool (same rank, targets and scaling) */
    int32_t *out;
    int n_out;
} gen_answer;

static tl_status read_json(const char *path, cJSON **out, tl_error *err) {
    FILE *f;
    TL_TRY(tl_fopen_regular(path, NULL, &f, NULL, err));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf), fclose(f);
                return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r < 4096) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return tl_fail(err, TL_ERR_INPUT, "%s: read error", path);
    }
    buf[n] = 0;
    *out = cJSON_Parse(buf);
    free(buf);
    return *out ? TL_OK : tl_fail(err, TL_ERR_INPUT, "%s: not valid JSON", path);
}

/* rank, alpha, rsLoRA and targets of a PEFT directory, enough to build a pool for it; tl_peft_load checks the
 * rest (shapes against the model, no DoRA, ...) */
static tl_status read_adapter_layout(gen_answer *a, tl_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", a->dir);
    cJSON *o;
    TL_TRY(read_json(path, &o, err));
    tl_status s = TL_OK;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "r"), *al = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(o, "target_modules"), *e;
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 || r->valuedouble != (int)r->valuedouble) {
        s = tl_fail(err, TL_ERR_INPUT, "%s: r: expected an integer in [1, 65536]", path);
        goto done;
    }
    /* alpha is used as a float: 1e300 would become inf and every answer NaN */
    if (!cJSON_IsNumber(al) || !(al->valuedouble > 0) || !(al->valuedouble <= 1e6)) {
        s = tl_fail(err, TL_ERR_INPUT, "%s: lora_alpha: expected a positive number no larger than 1e6", path);
        goto done;
    }
    if (!cJSON_IsArray(tm)) {
        s = tl_fail(err, TL_ERR_INPUT, "%s: target_modules: expected a list of module names", path);
        goto done;
    }
    a->rank = (int)r->valuedouble, a->alpha = (float)al->valuedouble;
    a->rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "use_rslora"));
    a->scale = a->rslora ? a->alpha / sqrtf((float)a->rank) : a->alpha / (float)a->rank;
    a->targets = 0;
    cJSON_ArrayForEach(e, tm) {
        int t = -1;
        for (int j = 0; cJSON_IsString(e) && j < TL_N_TARGETS; j++)
            if (!strcmp(e->valuestring, tl_target_names[j])) t = j;
        if (t < 0) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: target_modules: '%s' is not a module tailor supports", path,
                        cJSON_IsString(e) ? e->valuestring : "(not a string)");
            goto done;
        }
        a->targets |= 1u << t;
    }
    if (!a->targets) s = tl_fail(err, TL_ERR_INPUT, "%s: target_modules: empty", path);
done:
    cJSON_Delete(o);
    return s;
}

tl_status tl_peft_read_layout(const char *dir, int *rank, float *alpha, int *rslora, uint32_t *targets,
                              tl_error *err) {
    gen_answer a;
    memset(&a, 0, sizeof a);
    a.dir = (char *)dir;
    TL_TRY(read_adapter_layout(&a, err));
    *rank = a.rank, *alpha = a.alpha, *rslora = a.rslora, *targets = a.targets;
    return TL_OK;
}

static char *dupstr(const char *s) {
    char *d = malloc(strlen(s) + 1);
    if (d) strcpy(d, s);
    return d;
}

static tl_status add_answer(gen_answer **list, int *n, const char *name, const char *dir, tl_error *err) {
    gen_answer *l = realloc(*list, (size_t)(*n + 1) * sizeof **list);
    if (!l) return tl_fail(err, TL_ERR_RUNTIME, "generate: out of memory");
    *list = l;
    gen_answer *a = &l[*n];
    memset(a, 0, sizeof *a);
    a->name = dupstr(name);
    a->dir = dir ? dupstr(dir) : NULL;
    (*n)++;
    if (!a->name || (dir && !a->dir)) return tl_fail(err, TL_ERR_RUNTIME, "generate: out of memory");
    return TL_OK;
}

/* The adapters of a run from <run>/adapters/index.json: the listed users (every one when users is NULL). */
static tl_status add_run_users(const char *run, const char *const *users, int n_users, gen_answer **list, int *n,
                               tl_error *err) {
    char path[4096], dir[4096];
    snprintf(path, sizeof path, "%s/adapters/index.json", run);
    cJSON *o;
    tl_status s = read_json(path, &o, err);
    if (s) return tl_wrap(err, "run %s has no readable adapter export (tailor export writes it)", run), s;
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(o, "adapters"), *e;
    if (!cJSON_IsArray(ads)) {
        cJSON_Delete(o);
        return tl_fail(err, TL_ERR_INPUT, "%s: adapters: expected a list", path);
    }
    for (int u = 0; s == TL_OK && u < (users ? n_users : 1); u++) {
        int found = 0;
        cJSON_ArrayForEach(e, ads) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name"), *dr = cJSON_GetObjectItemCaseSensitive(e, "dir");
            if (!cJSON_IsString(nm) || !cJSON_IsString(dr) || !tl_plain_name(dr->valuestring)) {
                s = tl_fail(err, TL_ERR_INPUT, "%s: adapters: entries need string 'name' and a plain 'dir'", path);
                break;
            }
            if (users && strcmp(nm->valuestring, users[u]) != 0) continue;
            found = 1;
            char root[4096];
            snprintf(root, sizeof root, "%s/adapters", run);
            snprintf(dir, sizeof dir, "%s/%s", root, dr->valuestring);
            /* a plain name can still be a symlink that leads out of the export */
            s = tl_path_inside(root, dir, path, err);
            if (!s) s = add_answer(list, n, nm->valuestring, dir, err);
            if (s) break;
        }
        if (s == TL_OK && !found)
            s = users ? tl_fail(err, TL_ERR_INPUT, "%s: no user '%s' in this run", path, users[u])
                      : tl_fail(err, TL_ERR_INPUT, "%s: the run has no adapters", path);
    }
    cJSON_Delete(o);
    return s;
}

typedef struct {
    float temperature, top_p;
    uint64_t seed;
    int max_new;
    int32_t eos[2];
    int n_eos;
    const tl_tokenizer *tok;
    FILE *stream; /* non-NULL: print each token of the (single) answer as it comes */
} gen_opts;

static int is_eos(const gen_opts *o, int32_t t) {
    for (int i = 0; i < o->n_eos; i++)
        if (o->eos[i] == t) return 1;
    return 0;
}

static tl_status stream_token(const gen_opts *o, int32_t t, tl_error *err) {
    char *text;
    size_t len;
    TL_TRY(tl_tokenizer_decode(o->tok, &t, 1, &text, &len, err));
    int bad = fwrite(text, 1, len, o->stream) != len || fflush(o->stream) != 0;
    free(text);
    return bad ? tl_fail(err, TL_ERR_RUNTIME, "generate: writing to stdout failed") : TL_OK;
}

/* Generates for the answers idx[0..n) of one group (pool p, NULL when only the base model), all in one batch. */
static tl_status generate_batch(const tl_model *m, const tl_lora_pool *p, gen_answer *ans, const int *idx,
                                const int32_t *slots, int n, const int32_t *prompt, int n_prompt,
                                const gen_opts *o, tl_error *err) {
    int V = m->cfg.vocab_size;
    tl_decoder *d = NULL;
    TL_TRY(tl_decoder_create(m, p, n, slots, n_prompt + o->max_new, n * n_prompt, &d, err));
    tl_status s = TL_OK;
    float *logits = malloc((size_t)n * V * sizeof(float));
    tl_prob_id *scratch = malloc((size_t)V * sizeof *scratch);
    int32_t *toks = malloc((size_t)n * n_prompt * sizeof(int32_t));
    int *n_new = malloc((size_t)n * sizeof(int)), *done = calloc((size_t)n, sizeof(int));
    uint64_t *rng = malloc((size_t)n * sizeof(uint64_t));
    if (!logits || !scratch || !toks || !n_new || !done || !rng) {
        s = tl_fail(err, TL_ERR_RUNTIME, "generate: out of host memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        memcpy(toks + (size_t)i * n_prompt, prompt, (size_t)n_prompt * sizeof(int32_t));
        n_new[i] = n_prompt;
        /* each answer's stream depends on the seed and its place in the listing only, never on the batching */
        rng[i] = o->seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(idx[i] + 1));
        ans[idx[i]].out = malloc((size_t)(o->max_new > 0 ? o->max_new : 1) * sizeof(int32_t));
        if (!ans[idx[i]].out) {
            s = tl_fail(err, TL_ERR_RUNTIME, "generate: out of host memory");
            goto out;
        }
    }
    s = tl_decoder_append(d, toks, n_new, logits, err);
    for (int step = 0; s == TL_OK && step < o->max_new; step++) {
        int active = 0, k = 0;
        for (int i = 0; i < n; i++) {
            n_new[i] = 0;
            if (done[i]) continue;
            gen_answer *a = &ans[idx[i]];
            int32_t t = tl_sample_token(logits + (size_t)i * V, V, o->temperature, o->top_p, &rng[i], scratch);
            if (is_eos(o, t)) {
                done[i] = 1;
                continue;
            }
            a->out[a->n_out++] = t;
            if (o->stream && (s = stream_token(o, t, err)) != TL_OK) goto out;
            if (a->n_out == o->max_new) {
                done[i] = 1;
                continue;
            }
            toks[k++] = t, n_new[i] = 1, active++;
        }
        if (!active) break;
        s = tl_decoder_append(d, toks, n_new, logits, err);
    }
out:
    free(logits), free(scratch), free(toks), free(n_new), free(done), free(rng);
    tl_decoder_free(d);
    return s;
}

static void free_answers(gen_answer *a, int n) {
    for (int i = 0; i < n; i++) free(a[i].name), free(a[i].dir), free(a[i].out);
    free(a);
}

/* loads the model, tokenizes, groups the adapters by layout and runs each group as one batch */
tl_status tl_generate(const tl_generate_opts *g, FILE *out, tl_error *err) {
    gen_opts o = {.temperature = g->temperature, .top_p = g->top_p, .seed = g->seed, .max_new = g->max_new_tokens};
    gen_answer *ans = NULL;
    int n = 0;
    tl_status s = TL_OK;
    tl_tokenizer *tok = NULL;
    tl_backend *be = NULL;
    tl_model m;
    int have_model = 0;
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    char *rendered = NULL;
    int *idx = NULL;
    int32_t *slots = NULL;
    char **names = NULL;
    for (int i = 0; s == TL_OK && i < g->n_adapters; i++) s = add_answer(&ans, &n, g->adapters[i], g->adapters[i], err);
    if (s == TL_OK && g->run) s = add_run_users(g->run, g->all_users ? NULL : g->users, g->n_users, &ans, &n, err);
    for (int i = 0; s == TL_OK && i < n; i++) s = read_adapter_layout(&ans[i], err);
    if (s == TL_OK && g->base) s = add_answer(&ans, &n, "base", NULL, err);
    if (s) goto done;
    int n_groups = 0;
    for (int i = 0; i < n; i++) {
        ans[i].group = -1;
        if (!ans[i].dir) continue;
        for (int j = 0; j < i && ans[i].group < 0; j++)
            if (ans[j].dir && ans[j].rank == ans[i].rank && ans[j].targets == ans[i].targets &&
                ans[j].scale == ans[i].scale)
                ans[i].group = ans[j].group;
        if (ans[i].group < 0) ans[i].group = n_groups++;
    }
    for (int i = 0; i < n; i++)
        if (!ans[i].dir) ans[i].group = 0; /* the base model rides along with the first group */
    if (n_groups == 0) n_groups = 1;

    if ((s = tl_tokenizer_for_model(g->model, &tok, err)) != TL_OK) goto done;
    o.tok = tok;
    const char *eos_names[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        int32_t id = tl_tokenizer_token_id(tok, eos_names[i]);
        if (id >= 0) o.eos[o.n_eos++] = id;
    }
    const char *text = g->prompt;
    size_t tlen = strlen(text);
    if (g->chat) {
        tl_chat_msg msg = {"user", g->prompt};
        if ((s = tl_chat_render(&msg, 1, 1, &rendered, &tlen, err)) != TL_OK) goto done;
        text = rendered;
    }
    if ((s = tl_tokenizer_encode(tok, text, tlen, 0, &prompt, &n_prompt, err)) != TL_OK) goto done;
    tl_model_config cfg;
    if ((s = tl_model_config_from(g->model, &cfg, err)) != TL_OK) goto done;
    if (n_prompt < 1) {
        s = tl_fail(err, TL_ERR_INPUT, "generate: the prompt encodes to no tokens");
        goto done;
    }
    if ((long)n_prompt >= cfg.max_position_embeddings) {
        s = tl_fail(err, TL_ERR_INPUT, "generate: the prompt is %zu tokens; the model's context is %d", n_prompt,
                    cfg.max_position_embeddings);
        goto done;
    }
    if (o.max_new > cfg.max_position_embeddings - (int)n_prompt)
        o.max_new = cfg.max_position_embeddings - (int)n_prompt;
    if ((s = tl_backend_open(g->backend ? g->backend : "auto", g->threads, &be, err)) != TL_OK) goto done;
    if ((s = tl_model_load(g->model, be, &m, err)) != TL_OK) goto done;
    have_model = 1;
    o.stream = n == 1 ? out : NULL;
    idx = malloc((size_t)n * sizeof(int));
    slots = malloc((size_t)n * sizeof(int32_t));
    names = malloc((size_t)n * sizeof(char *));
    if (!idx || !slots || !names) {
        s = tl_fail(err, TL_ERR_RUNTIME, "generate: out of host memory");
        goto done;
    }
    for (int gr = 0; s == TL_OK && gr < n_groups; gr++) {
        int k = 0, na = 0, first = -1;
        for (int i = 0; i < n; i++) {
            if (ans[i].group != gr) continue;
            idx[k] = i;
            if (ans[i].dir) {
                if (first < 0) first = i;
                names[na] = ans[i].name;
                slots[k] = na++;
            } else {
                slots[k] = TL_SLOT_BASE;
            }
            k++;
        }
        tl_lora_pool pool, *pp = NULL;
        if (na > 0) {
            const gen_answer *f = &ans[first];
            s = tl_lora_pool_init(&pool, &m, na, names,
                                  &(tl_lora_opts){.rank = f->rank, .alpha = f->alpha, .rslora = f->rslora,
                                                  .targets = f->targets},
                                  err);
            if (s) break;
            pp = &pool;
            for (int j = 0; s == TL_OK && j < k; j++)
                if (slots[j] >= 0) s = tl_peft_load(ans[idx[j]].dir, pp, be, slots[j], err);
        }
        if (s == TL_OK)
            s = generate_batch(&m, pp, ans, idx, slots, k, prompt, (int)n_prompt, &o, err);
        if (pp) tl_lora_pool_free(pp, be);
    }
    if (s == TL_OK && n == 1) {
        if (fputc('\n', out) == EOF) s = tl_fail(err, TL_ERR_RUNTIME, "generate: writing to stdout failed");
    } else if (s == TL_OK) {
        for (int i = 0; s == TL_OK && i < n; i++) {
            char *out_text;
            size_t len;
            if ((s = tl_tokenizer_decode(tok, ans[i].out, (size_t)ans[i].n_out, &out_text, &len, err)) != TL_OK) break;
            char nb[TL_ESC_CAP]; /* a user or adapter name from the run: shown escaped (tl_text.h) */
            int bad = fprintf(out, "=== %s ===\n", tl_escape(nb, sizeof nb, ans[i].name)) < 0 ||
                      fwrite(out_text, 1, len, out) != len || fputc('\n', out) == EOF;
            free(out_text);
            if (bad) s = tl_fail(err, TL_ERR_RUNTIME, "generate: writing to stdout failed");
        }
        if (s == TL_OK && fflush(out) != 0) s = tl_fail(err, TL_ERR_RUNTIME, "generate: writing to stdout failed");
    }
done:
    if (have_model) tl_model_free(&m);
    if (be) be->destroy(be);
    tl_tokenizer_free(tok);
    free(prompt), free(rendered), free(idx), free(slots), free(names);
    free_answers(ans, n);
    return s;
}
