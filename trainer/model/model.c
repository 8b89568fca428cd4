/* model: the Llama-family decoder (forward and backward) over the backend op table, and the LoRA pool.
 *
 * The base weights are frozen, so backward computes only input gradients through them and LoRA gradients per
 * adapter segment. Activations needed by backward are kept per layer in a workspace planned once from the
 * largest micro-batch; nothing is allocated per step. */
#include "trainer/model/tl_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_gguf.h"
#include "data/tl_safetensors.h"
#include "kernels/tl_math.h"

void tl_target_dims(const tl_model_config *c, int target, int *in, int *out) {
    int d = c->hidden_size, q = c->num_attention_heads * c->head_dim, kv = c->num_key_value_heads * c->head_dim;
    int f = c->intermediate_size;
    switch (target) {
    case TL_T_Q: *in = d, *out = q; break;
    case TL_T_K: *in = d, *out = kv; break;
    case TL_T_V: *in = d, *out = kv; break;
    case TL_T_O: *in = q, *out = d; break;
    case TL_T_GATE: *in = d, *out = f; break;
    case TL_T_UP: *in = d, *out = f; break;
    default: *in = f, *out = d; break;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Loading */

static int is_gguf_path(const char *p) {
    size_t n = strlen(p);
    return n > 5 && !strcmp(p + n - 5, ".gguf");
}

/* Weights come from an HF directory (safetensors) or a GGUF file; both give HF names and HF shapes. */
typedef struct {
    tl_tensor_src *src;
    tl_gguf *gguf;
    tl_backend *be; /* NULL: validate only (tl_model_validate), nothing is uploaded */
    float *host;    /* staging buffer, sized for the largest tensor */
    const char *dir;
} tl_loader;

/* One weight tensor the model reads: its HF name, its shape from the config, and where it goes. */
typedef struct {
    char name[96];
    int64_t shape[2];
    int nd;
    tl_act **dst; /* NULL when only validating */
} wspec;

/* Every weight tensor of a model with config c, in load order (lm_head only when it is its own tensor);
 * dst points into m when m is given. n_layers <= 1024 (tl_model_config_check), so the list is small. */
static tl_status weight_specs(const tl_model_config *c, int own_head, tl_model *m, wspec **out, int *n_out,
                              tl_error *err) {
    const int64_t d = c->hidden_size, V = c->vocab_size, f = c->intermediate_size, hd = c->head_dim;
    const int64_t qd = c->num_attention_heads * hd, kvd = c->num_key_value_heads * hd;
    wspec *w = malloc(((size_t)c->num_hidden_layers * 13 + 3) * sizeof *w);
    if (!w) return tl_fail(err, TL_ERR_RUNTIME, "out of memory listing the model's tensors");
    int n = 0;
#define ADD(nm_fmt, lay, a, b, ndim, dstp)                                                        \
    do {                                                                                          \
        snprintf(w[n].name, sizeof w[n].name, nm_fmt, lay);                                       \
        w[n].shape[0] = (a), w[n].shape[1] = (b), w[n].nd = (ndim), w[n].dst = m ? (dstp) : NULL; \
        n++;                                                                                      \
    } while (0)
    ADD("model.embed_tokens.weight%.0d", 0, V, d, 2, &m->embed);
    ADD("model.norm.weight%.0d", 0, d, 1, 1, &m->final_norm);
    if (own_head) ADD("lm_head.weight%.0d", 0, V, d, 2, &m->lm_head);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        tl_layer_weights *lw = m ? &m->layers[l] : NULL;
        ADD("model.layers.%d.input_layernorm.weight", l, d, 1, 1, &lw->attn_norm);
        ADD("model.layers.%d.self_attn.q_proj.weight", l, qd, d, 2, &lw->wq);
        ADD("model.layers.%d.self_attn.k_proj.weight", l, kvd, d, 2, &lw->wk);
        ADD("model.layers.%d.self_attn.v_proj.weight", l, kvd, d, 2, &lw->wv);
        ADD("model.layers.%d.self_attn.o_proj.weight", l, d, qd, 2, &lw->wo);
        if (c->attention_bias) {
            ADD("model.layers.%d.self_attn.q_proj.bias", l, qd, 1, 1, &lw->bq);
            ADD("model.layers.%d.self_attn.k_proj.bias", l, kvd, 1, 1, &lw->bk);
            ADD("model.layers.%d.self_attn.v_proj.bias", l, kvd, 1, 1, &lw->bv);
        }
        if (tl_model_has_o_bias(c)) ADD("model.layers.%d.self_attn.o_proj.bias", l, d, 1, 1, &lw->bo);
        ADD("model.layers.%d.post_attention_layernorm.weight", l, d, 1, 1, &lw->mlp_norm);
        ADD("model.layers.%d.mlp.gate_proj.weight", l, f, d, 2, &lw->wgate);
        ADD("model.layers.%d.mlp.up_proj.weight", l, f, d, 2, &lw->wup);
        ADD("model.layers.%d.mlp.down_proj.weight", l, d, f, 2, &lw->wdown);
    }
#undef ADD
    *out = w, *n_out = n;
    return TL_OK;
}

/* Every tensor present with its configured shape, checked on the headers before anything is allocated: a config
 * declaring absurd sizes is refused here, naming the tensor, instead of failing an allocation. *biggest gets the
 * largest element count, which the file then holds. */
static tl_status check_specs(const tl_loader *L, const wspec *w, int n, size_t *biggest, tl_error *err) {
    const char *from = L->gguf ? "the GGUF metadata" : "config.json";
    *biggest = 1;
    for (int i = 0; i < n; i++) {
        int64_t sh[8] = {0};
        int nd = 0, found;
        if (L->gguf) {
            found = tl_gguf_hf_shape(L->gguf, w[i].name, sh, &nd);
        } else {
            const tl_st_tensor *t = tl_tensor_src_find(L->src, w[i].name);
            found = t != NULL;
            if (t) {
                nd = t->ndim > 8 ? 8 : t->ndim;
                for (int k = 0; k < nd; k++) sh[k] = t->shape[k];
            }
        }
        if (!found)
            return tl_fail(err, TL_ERR_INPUT, "%s: model has no tensor '%s' (expected from %s)", L->dir, w[i].name,
                           from);
        int same = nd == w[i].nd;
        for (int k = 0; same && k < nd; k++) same = sh[k] == w[i].shape[k];
        if (!same) {
            char a[160] = "", b[64];
            size_t la = 0;
            for (int k = 0; k < nd && la < sizeof a; k++)
                la += (size_t)snprintf(a + la, sizeof a - la, "%s%lld", k ? ", " : "", (long long)sh[k]);
            if (w[i].nd == 2)
                snprintf(b, sizeof b, "%lld, %lld", (long long)w[i].shape[0], (long long)w[i].shape[1]);
            else
                snprintf(b, sizeof b, "%lld", (long long)w[i].shape[0]);
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has shape [%s], expected [%s] (from %s)", L->dir,
                           w[i].name, a, b, from);
        }
        size_t numel = (size_t)w[i].shape[0] * (size_t)(w[i].nd == 2 ? w[i].shape[1] : 1);
        if (numel > *biggest) *biggest = numel;
    }
    return TL_OK;
}

static tl_status load_tensor(tl_loader *L, const wspec *w, size_t *count, tl_error *err) {
    size_t n = (size_t)w->shape[0] * (size_t)(w->nd == 2 ? w->shape[1] : 1);
    if (L->gguf)
        TL_TRY(tl_gguf_read_hf_tensor(L->gguf, w->name, w->shape, w->nd, L->host, err));
    else
        TL_TRY(tl_tensor_src_read_f32(L->src, w->name, w->shape, w->nd, L->host, err));
    for (size_t i = 0; i < n; i++)
        if (!isfinite(L->host[i]))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' holds a non-finite value at index %zu", L->dir,
                           w->name, i);
    *count += n;
    if (!L->be) return TL_OK;
    TL_TRY(L->be->alloc(L->be, n * L->be->act_size, (void **)w->dst, err));
    L->be->upload_act(L->be, *w->dst, L->host, n);
    return TL_OK;
}

/* The one reading of a model: config, every tensor's presence and shape, then every value (finite). With a
 * backend the weights are uploaded into m; without one (validation) m only receives the config and counts. */
static tl_status read_model(const char *dir, tl_backend *be, tl_model *m, int *tied, tl_error *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    tl_loader L = {.be = be, .dir = dir};
    if (is_gguf_path(dir)) {
        TL_TRY(tl_gguf_open(dir, &L.gguf, err));
        tl_status gs = tl_gguf_model_config(L.gguf, &m->cfg, err);
        if (gs) {
            tl_gguf_close(L.gguf);
            return gs;
        }
    } else {
        TL_TRY(tl_model_config_load(dir, &m->cfg, err));
    }
    const tl_model_config *c = &m->cfg;
    const int hd = c->head_dim;
    wspec *w = NULL;
    int n_w = 0;
    tl_status s = L.gguf ? TL_OK : tl_tensor_src_open(dir, &L.src, err);
    if (s) return s;
    int has_head = L.gguf ? tl_gguf_has_hf_tensor(L.gguf, "lm_head.weight") : tl_tensor_src_has(L.src, "lm_head.weight");
    int own_head = has_head && !c->tie_word_embeddings;
    if (tied) *tied = !own_head;
    if (be) {
        m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
        if (!m->layers) {
            s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", dir);
            goto done;
        }
    }
    size_t biggest = 0;
    if ((s = weight_specs(c, own_head, be ? m : NULL, &w, &n_w, err)) != TL_OK) goto done;
    if ((s = check_specs(&L, w, n_w, &biggest, err)) != TL_OK) goto done;
    L.host = malloc(biggest * sizeof(float));
    if (!L.host) {
        s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory staging %zu floats", dir, biggest);
        goto done;
    }
    for (int i = 0; i < n_w && !s; i++) s = load_tensor(&L, &w[i], &m->n_params, err);
    if (s) goto done;
    if (be) {
        if (!own_head) m->lm_head = m->embed;
        float inv[512];
        if (hd / 2 > 512) {
            s = tl_fail(err, TL_ERR_INPUT, "%s/config.json: head_dim %d is larger than the supported 1024", dir, hd);
            goto done;
        }
        tl_rope_inv_freq(c, inv);
        s = be->alloc(be, (size_t)(hd / 2) * sizeof(float), (void **)&m->inv_freq, err);
        if (s) goto done;
        be->upload(be, m->inv_freq, inv, (size_t)(hd / 2) * sizeof(float));
        s = be->status(be, err);
    }
done:
    free(w);
    free(L.host);
    tl_tensor_src_close(L.src);
    if (L.gguf) tl_gguf_close(L.gguf);
    if (s && be) tl_model_free(m);
    return s;
}

tl_status tl_model_load(const char *dir, tl_backend *be, tl_model *m, tl_error *err) {
    return read_model(dir, be, m, NULL, err);
}

tl_status tl_model_validate(const char *path, tl_model_config *cfg, int64_t *n_params, int *tied, tl_error *err) {
    tl_model m;
    TL_TRY(read_model(path, NULL, &m, tied, err));
    *cfg = m.cfg;
    *n_params = (int64_t)m.n_params;
    return TL_OK;
}

tl_status tl_model_config_from(const char *path, tl_model_config *cfg, tl_error *err) {
    if (!is_gguf_path(path)) return tl_model_config_load(path, cfg, err);
    tl_gguf *g;
    TL_TRY(tl_gguf_open(path, &g, err));
    tl_status s = tl_gguf_model_config(g, cfg, err);
    tl_gguf_close(g);
    return s;
}

void tl_model_free(tl_model *m) {
    if (!m || !m->be) return;
    tl_backend *be = m->be;
    if (m->lm_head && m->lm_head != m->embed) be->free(be, m->lm_head);
    be->free(be, m->embed);
    be->free(be, m->final_norm);
    be->free(be, m->inv_freq);
    if (m->layers) {
        for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
            tl_layer_weights *w = &m->layers[l];
            tl_act *all[] = {w->attn_norm, w->wq, w->wk, w->wv, w->wo, w->bq, w->bk, w->bv, w->bo,
                             w->mlp_norm, w->wgate, w->wup, w->wdown};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free(be, all[i]);
        }
        free(m->layers);
    }
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------------------------------------------
 * LoRA pool */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

void tl_lora_fresh_params(const tl_lora_pool *p, uint64_t seed, const char *name, float *host) {
    memset(host, 0, p->P * sizeof(float));
    uint64_t slot_seed = tl_mix64(seed ^ tl_mix64(fnv1a(name)));
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(p->targets & (1u << t))) continue;
            float bound = 1.0f / sqrtf((float)p->in_dim[t]);
            float *A = host + p->off_A[l * TL_N_TARGETS + t];
            size_t nA = (size_t)p->rank * p->in_dim[t];
            uint64_t site = (uint64_t)l * TL_N_TARGETS + t;
            for (size_t i = 0; i < nA; i++) A[i] = (2.0f * tl_uniform(slot_seed, site, i) - 1.0f) * bound;
        }
    for (int i = 0; i < p->head_dim; i++) { /* Box-Muller: normal(0, 0.02) */
        float u1 = tl_uniform(slot_seed, 0xffffu, 2 * (uint64_t)i),
              u2 = tl_uniform(slot_seed, 0xffffu, 2 * (uint64_t)i + 1);
        host[p->off_head + i] = 0.02f * sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.2831853f * u2);
    }
}

tl_status tl_lora_pool_set_slot(tl_lora_pool *p, tl_backend *be, int slot, const char *name, const float *params,
                                const float *m, const float *v, int64_t steps, tl_error *err) {
    if (slot < 0 || slot >= p->n_slots)
        return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: slot %d out of [0, %d)", slot, p->n_slots);
    if (strcmp(p->names[slot], name) != 0) {
        char *nm = strdup(name);
        if (!nm) return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: out of host memory");
        free(p->names[slot]);
        p->names[slot] = nm;
    }
    size_t off = (size_t)slot * p->P, bytes = p->P * sizeof(float);
    be->upload(be, p->params + off, params, bytes);
    if (m) be->upload(be, p->m + off, m, bytes);
    else be->zero(be, p->m + off, bytes);
    if (v) be->upload(be, p->v + off, v, bytes);
    else be->zero(be, p->v + off, bytes);
    p->steps[slot] = steps;
    return be->status(be, err);
}

tl_lora_pool tl_lora_pool_layout(const tl_lora_pool *p, int n_slots, char **names, int64_t *steps) {
    tl_lora_pool l = *p;
    l.n_slots = n_slots, l.names = names, l.steps = steps;
    l.params = l.grads = l.m = l.v = NULL;
    return l;
}

tl_status tl_lora_pool_init(tl_lora_pool *p, const tl_model *m, int n_slots, char *const *names,
                            const tl_lora_opts *o, tl_error *err) {
    int rank = o->rank, rslora = o->rslora, with_head = o->with_head;
    float alpha = o->alpha, dropout = o->dropout;
    uint32_t targets = o->targets;
    uint64_t seed = o->seed;
    memset(p, 0, sizeof *p);
    tl_backend *be = m->be;
    const tl_model_config *c = &m->cfg;
    if (n_slots < 1) return tl_fail(err, TL_ERR_INPUT, "adapter pool: no adapters to train");
    if (!(targets & ((1u << TL_N_TARGETS) - 1))) return tl_fail(err, TL_ERR_INPUT, "adapter.targets: empty");
    p->n_slots = n_slots, p->rank = rank, p->n_layers = c->num_hidden_layers, p->targets = targets;
    p->alpha = alpha, p->rslora = rslora, p->dropout = dropout;
    p->scale = rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    size_t nlt = (size_t)p->n_layers * TL_N_TARGETS;
    p->off_A = calloc(nlt, sizeof(size_t));
    p->off_B = calloc(nlt, sizeof(size_t));
    p->steps = calloc((size_t)n_slots, sizeof(int64_t));
    p->names = calloc((size_t)n_slots, sizeof(char *));
    if (!p->off_A || !p->off_B || !p->steps || !p->names) goto oom;
    for (int t = 0; t < TL_N_TARGETS; t++) tl_target_dims(c, t, &p->in_dim[t], &p->out_dim[t]);
    size_t P = 0;
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            p->off_A[l * TL_N_TARGETS + t] = P;
            P += (size_t)rank * p->in_dim[t];
            p->off_B[l * TL_N_TARGETS + t] = P;
            P += (size_t)p->out_dim[t] * rank;
        }
    if (with_head) {
        p->off_head = P;
        p->head_dim = c->hidden_size;
        P += (size_t)c->hidden_size;
    }
    p->P = P;
    for (int s = 0; s < n_slots; s++) {
        p->names[s] = strdup(names[s]);
        if (!p->names[s]) goto oom;
    }
    size_t bytes = (size_t)n_slots * P * sizeof(float);
    float **bufs[4] = {&p->params, &p->grads, &p->m, &p->v};
    for (int i = 0; i < 4; i++) {
        tl_status s = be->alloc(be, bytes, (void **)bufs[i], err);
        if (s) {
            tl_wrap(err, "adapter pool (%d adapters x %zu parameters)", n_slots, P);
            tl_lora_pool_free(p, be);
            return s;
        }
        be->zero(be, *bufs[i], bytes);
    }
    float *host = malloc(P * sizeof(float));
    if (!host) goto oom;
    for (int s = 0; s < n_slots; s++) {
        tl_lora_fresh_params(p, seed, names[s], host);
        be->upload(be, p->params + (size_t)s * P, host, P * sizeof(float));
    }
    free(host);
    return be->status(be, err);
oom:
    tl_lora_pool_free(p, be);
    return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: out of host memory");
}

void tl_lora_pool_free(tl_lora_pool *p, tl_backend *be) {
    if (!p) return;
    if (be) {
        be->free(be, p->params);
        be->free(be, p->grads);
        be->free(be, p->m);
        be->free(be, p->v);
    }
    if (p->names)
        for (int s = 0; s < p->n_slots; s++) free(p->names[s]);
    free(p->names);
    free(p->off_A);
    free(p->off_B);
    free(p->steps);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------------------------------------------------
 * Workspace: every activation that backward reads, per layer, plus backward scratch. */

typedef struct {
    tl_act *xn1, *q, *k, *v, *att, *resid_mid, *xn2, *g, *u, *hsw;
    float *rstd1, *rstd2, *lse;
    float *lora_h[TL_N_TARGETS]; /* [n, r] per enabled target */
} tl_layer_acts;

struct tl_workspace {
    int max_tokens, max_seqs, chunk;
    uint32_t lora_kept;   /* the LoRA targets whose inputs the backward finds kept (tl_workspace_create's pool) */
    tl_act **resid;       /* [L + 1] residual stream at each layer's input (and the output) */
    tl_layer_acts *layer; /* [L] */
    tl_act *xf;           /* final normed hidden */
    float *rstdf;
    /* backward scratch */
    tl_act *dresid, *dxn, *datt, *dq, *dk, *dv, *dhsw, *dg, *du;
    /* loss */
    float *logp, *dlogp, *ce_work;
    /* micro-batch on the backend */
    int32_t *tokens, *pos, *cu_seqlens, *targets;
    uint64_t *row_seed;
    tl_seg *segs;
    float *h_dlogp; /* host staging */
    tl_seg *h_segs_base; /* host scratch: the micro-batch's segments with every slot set to TL_SLOT_BASE */
    tl_mb mb;            /* the micro-batch of the last forward, as the ops see it */
    int have_fwd;
    size_t bytes;
    /* every allocation, for freeing */
    void **allocs;
    int n_allocs, cap_allocs;
};

static tl_status ws_alloc(tl_backend *be, tl_workspace *ws, size_t bytes, void **out, tl_error *err) {
    if (ws->n_allocs == ws->cap_allocs) {
        int cap = ws->cap_allocs ? 2 * ws->cap_allocs : 64;
        void **a = realloc(ws->allocs, (size_t)cap * sizeof(void *));
        if (!a) return tl_fail(err, TL_ERR_RUNTIME, "workspace: out of host memory");
        ws->allocs = a, ws->cap_allocs = cap;
    }
    if (bytes == 0) bytes = 16;
    TL_TRY(be->alloc(be, bytes, out, err));
    ws->allocs[ws->n_allocs++] = *out;
    ws->bytes += bytes;
    return TL_OK;
}

tl_status tl_workspace_create(const tl_model *m, const tl_lora_pool *p, int max_tokens, int max_seqs,
                              tl_workspace **out, tl_error *err) {
    tl_backend *be = m->be;
    const tl_model_config *c = &m->cfg;
    tl_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) return tl_fail(err, TL_ERR_RUNTIME, "workspace: out of host memory");
    int L = c->num_hidden_layers;
    size_t n = (size_t)max_tokens, A = be->act_size;
    size_t d = (size_t)c->hidden_size, f = (size_t)c->intermediate_size;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim, kvd = (size_t)c->num_key_value_heads * c->head_dim;
    ws->max_tokens = max_tokens, ws->max_seqs = max_seqs;
    /* Logits exist for `chunk` rows at a time: bound that matrix to about 64 MiB of fp32. */
    long chunk = (64L << 20) / (4L * c->vocab_size);
    ws->chunk = (int)(chunk < 1 ? 1 : chunk > max_tokens ? max_tokens : chunk);
    ws->resid = calloc((size_t)L + 1, sizeof(tl_act *));
    ws->layer = calloc((size_t)L, sizeof(tl_layer_acts));
    tl_status s = TL_OK;
    if (!ws->resid || !ws->layer) {
        s = tl_fail(err, TL_ERR_RUNTIME, "workspace: out of host memory");
        goto fail;
    }
#define AL(ptr, bytes)                                               \
    do {                                                             \
        s = ws_alloc(be, ws, (bytes), (void **)&(ptr), err);         \
        if (s) goto fail;                                            \
    } while (0)
    for (int l = 0; l <= L; l++) AL(ws->resid[l], n * d * A);
    /* The base is frozen, so a projection's input is needed by the backward only for its LoRA term's gradient:
     * the normed inputs of attention (xn1) and of the MLP (xn2) and the SwiGLU output (hsw) are kept per layer
     * only when a target reads them, else every layer's forward writes one shared buffer that its next
     * projection consumes at once. With q and v targeted (the usual LoRA) that is a quarter of the activations. */
    uint32_t tg = ws->lora_kept = p->targets;
    int keep_xn1 = (tg & (1u << TL_T_Q | 1u << TL_T_K | 1u << TL_T_V)) != 0;
    int keep_xn2 = (tg & (1u << TL_T_GATE | 1u << TL_T_UP)) != 0;
    int keep_hsw = (tg & 1u << TL_T_DOWN) != 0;
    tl_act *xn1 = NULL, *xn2 = NULL, *hsw = NULL;
    if (!keep_xn1) AL(xn1, n * d * A);
    if (!keep_xn2) AL(xn2, n * d * A);
    if (!keep_hsw) AL(hsw, n * f * A);
    for (int l = 0; l < L; l++) {
        tl_layer_acts *a = &ws->layer[l];
        if (keep_xn1) AL(a->xn1, n * d * A);
        else a->xn1 = xn1;
        AL(a->q, n * qd * A);
        AL(a->k, n * kvd * A);
        AL(a->v, n * kvd * A);
        AL(a->att, n * qd * A);
        AL(a->resid_mid, n * d * A);
        if (keep_xn2) AL(a->xn2, n * d * A);
        else a->xn2 = xn2;
        AL(a->g, n * f * A);
        AL(a->u, n * f * A);
        if (keep_hsw) AL(a->hsw, n * f * A);
        else a->hsw = hsw;
        AL(a->rstd1, n * sizeof(float));
        AL(a->rstd2, n * sizeof(float));
        AL(a->lse, n * (size_t)c->num_attention_heads * sizeof(float));
        for (int t = 0; t < TL_N_TARGETS; t++)
            if (p->targets & (1u << t)) AL(a->lora_h[t], n * (size_t)p->rank * sizeof(float));
    }
    AL(ws->xf, n * d * A);
    AL(ws->rstdf, n * sizeof(float));
    AL(ws->dresid, n * d * A);
    AL(ws->dxn, n * d * A);
    AL(ws->datt, n * qd * A);
    AL(ws->dq, n * qd * A);
    AL(ws->dk, n * kvd * A);
    AL(ws->dv, n * kvd * A);
    AL(ws->dhsw, n * f * A);
    AL(ws->dg, n * f * A);
    AL(ws->du, n * f * A);
    AL(ws->logp, n * sizeof(float));
    AL(ws->dlogp, n * sizeof(float));
    AL(ws->ce_work, (size_t)ws->chunk * c->vocab_size * sizeof(float));
    AL(ws->tokens, n * sizeof(int32_t));
    AL(ws->pos, n * sizeof(int32_t));
    AL(ws->targets, n * sizeof(int32_t));
    AL(ws->row_seed, n * sizeof(uint64_t));
    AL(ws->cu_seqlens, ((size_t)max_seqs + 1) * sizeof(int32_t));
    AL(ws->segs, ((size_t)max_seqs + 1) * sizeof(tl_seg));
#undef AL
    ws->h_dlogp = malloc(n * sizeof(float));
    ws->h_segs_base = malloc(((size_t)max_seqs + 1) * sizeof(tl_seg));
    if (!ws->h_dlogp || !ws->h_segs_base) {
        s = tl_fail(err, TL_ERR_RUNTIME, "workspace: out of host memory");
        goto fail;
    }
    *out = ws;
    return TL_OK;
fail:
    tl_wrap(err, "planning activations for %d tokens per micro-batch (train.micro_batch_tokens: a lower value needs "
                 "less memory)", max_tokens);
    tl_workspace_free(ws, be);
    return s;
}

void tl_workspace_free(tl_workspace *ws, tl_backend *be) {
    if (!ws) return;
    for (int i = 0; i < ws->n_allocs; i++) be->free(be, ws->allocs[i]);
    free(ws->allocs);
    free(ws->resid);
    free(ws->layer);
    free(ws->h_dlogp);
    free(ws->h_segs_base);
    free(ws);
}

size_t tl_workspace_bytes(const tl_workspace *ws) { return ws->bytes; }

/* ------------------------------------------------------------------------------------------------------------
 * Forward and backward */

static tl_status upload_mb(const tl_model *m, tl_workspace *ws, const tl_host_mb *h, int base_only, tl_mb *mb,
                           tl_error *err) {
    tl_backend *be = m->be;
    if (h->n_tok < 1 || h->n_tok > ws->max_tokens || h->n_seq < 1 || h->n_seq > ws->max_seqs ||
        h->n_seg > ws->max_seqs)
        return tl_fail(err, TL_ERR_RUNTIME,
                       "micro-batch of %d tokens / %d sequences / %d segments exceeds the planned %d tokens / %d "
                       "sequences",
                       h->n_tok, h->n_seq, h->n_seg, ws->max_tokens, ws->max_seqs);
    size_t n = (size_t)h->n_tok;
    be->upload(be, ws->tokens, h->tokens, n * sizeof(int32_t));
    be->upload(be, ws->pos, h->pos, n * sizeof(int32_t));
    be->upload(be, ws->targets, h->targets, n * sizeof(int32_t));
    be->upload(be, ws->row_seed, h->row_seed, n * sizeof(uint64_t));
    be->upload(be, ws->cu_seqlens, h->cu_seqlens, ((size_t)h->n_seq + 1) * sizeof(int32_t));
    const tl_seg *segs = h->segs;
    if (base_only) {
        for (int i = 0; i < h->n_seg; i++)
            ws->h_segs_base[i] = (tl_seg){h->segs[i].row0, h->segs[i].row1, TL_SLOT_BASE};
        segs = ws->h_segs_base;
    }
    be->upload(be, ws->segs, segs, (size_t)h->n_seg * sizeof(tl_seg));
    *mb = (tl_mb){.n_tok = h->n_tok, .n_seq = h->n_seq, .n_seg = h->n_seg, .max_seqlen = h->max_seqlen,
                  .h_cu_seqlens = h->cu_seqlens, .h_segs = segs, .tokens = ws->tokens, .pos = ws->pos,
                  .cu_seqlens = ws->cu_seqlens, .targets = ws->targets, .row_seed = ws->row_seed,
                  .segs = ws->segs};
    return TL_OK;
}

static tl_status check_slots(const tl_lora_pool *p, const tl_host_mb *h, tl_error *err) {
    for (int i = 0; i < h->n_seg; i++)
        if (h->segs[i].slot >= p->n_slots)
            return tl_fail(err, TL_ERR_RUNTIME, "micro-batch segment %d names adapter slot %d of a pool of %d", i,
                           h->segs[i].slot, p->n_slots);
    return TL_OK;
}

/* The LoRA site of target t of layer l: its slot-0 matrices in the pool and the pool's shared facts. */
static tl_lora_site lora_site(const tl_lora_pool *p, int l, int t) {
    size_t k = (size_t)l * TL_N_TARGETS + t;
    return (tl_lora_site){.A = p->params + p->off_A[k], .B = p->params + p->off_B[k], .slot_stride = p->P,
                          .r = p->rank, .scale = p->scale, .dropout = p->dropout, .site = (uint32_t)k};
}

/* frozen projection plus its LoRA term: y = x W^T (+ b) + scale B(A(drop(x))) */
static void proj_fwd(const tl_model *m, const tl_lora_pool *p, const tl_mb *mb, int l, int t, tl_act *y,
                     const tl_act *x, const tl_act *W, const tl_act *bias, float *h) {
    tl_backend *be = m->be;
    int in = p->in_dim[t], out = p->out_dim[t];
    be->linear_fwd(be, y, x, W, bias, mb->n_tok, in, out, 0);
    if (p->targets & (1u << t)) {
        tl_lora_site ls = lora_site(p, l, t);
        be->lora_fwd(be, y, h, x, &ls, mb, in, out);
    }
}

/* dx (+)= dy W (+ LoRA's input gradient); LoRA parameter gradients accumulate */
/* What a projection's forward kept for its backward: input x, frozen weight W, and LoRA's h = x·Aᵀ. */
typedef struct {
    const tl_act *x, *W;
    const float *h;
} proj_saved;

static void proj_bwd(const tl_model *m, tl_lora_pool *p, const tl_mb *mb, int l, int t, tl_act *dx, const tl_act *dy,
                     proj_saved f, int accumulate) {
    const tl_act *x = f.x, *W = f.W;
    const float *h = f.h;
    tl_backend *be = m->be;
    int in = p->in_dim[t], out = p->out_dim[t];
    be->linear_bwd_x(be, dx, dy, W, mb->n_tok, in, out, accumulate);
    if (p->targets & (1u << t)) {
        size_t k = (size_t)l * TL_N_TARGETS + t;
        tl_lora_site ls = lora_site(p, l, t);
        be->lora_bwd(be, dx, p->grads + p->off_A[k], p->grads + p->off_B[k], dy, x, h, &ls, mb, in, out);
    }
}

/* Runs embedding and every layer; leaves the final normed hidden state in ws->xf. */
static void forward(const tl_model *m, const tl_lora_pool *p, tl_workspace *ws, const tl_mb *mb) {
    tl_backend *be = m->be;
    const tl_model_config *c = &m->cfg;
    int n = mb->n_tok, d = c->hidden_size, hd = c->head_dim, Hq = c->num_attention_heads,
        Hkv = c->num_key_value_heads;
    size_t nf = (size_t)n * c->intermediate_size;
    be->embed_fwd(be, ws->resid[0], m->embed, mb->tokens, n, d);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const tl_layer_weights *w = &m->layers[l];
        tl_layer_acts *a = &ws->layer[l];
        tl_act *x = ws->resid[l];
        be->rmsnorm_fwd(be, a->xn1, a->rstd1, x, w->attn_norm, n, d, c->rms_norm_eps);
        proj_fwd(m, p, mb, l, TL_T_Q, a->q, a->xn1, w->wq, w->bq, a->lora_h[TL_T_Q]);
        proj_fwd(m, p, mb, l, TL_T_K, a->k, a->xn1, w->wk, w->bk, a->lora_h[TL_T_K]);
        proj_fwd(m, p, mb, l, TL_T_V, a->v, a->xn1, w->wv, w->bv, a->lora_h[TL_T_V]);
        be->rope_fwd(be, a->q, mb->pos, m->inv_freq, n, Hq, hd);
        be->rope_fwd(be, a->k, mb->pos, m->inv_freq, n, Hkv, hd);
        be->attn_fwd(be, a->att, a->lse, a->q, a->k, a->v, mb, Hq, Hkv, hd);
        proj_fwd(m, p, mb, l, TL_T_O, a->resid_mid, a->att, w->wo, w->bo, a->lora_h[TL_T_O]);
        be->add(be, a->resid_mid, x, (size_t)n * d);
        be->rmsnorm_fwd(be, a->xn2, a->rstd2, a->resid_mid, w->mlp_norm, n, d, c->rms_norm_eps);
        proj_fwd(m, p, mb, l, TL_T_GATE, a->g, a->xn2, w->wgate, NULL, a->lora_h[TL_T_GATE]);
        proj_fwd(m, p, mb, l, TL_T_UP, a->u, a->xn2, w->wup, NULL, a->lora_h[TL_T_UP]);
        be->swiglu_fwd(be, a->hsw, a->g, a->u, nf);
        proj_fwd(m, p, mb, l, TL_T_DOWN, ws->resid[l + 1], a->hsw, w->wdown, NULL, a->lora_h[TL_T_DOWN]);
        be->add(be, ws->resid[l + 1], a->resid_mid, (size_t)n * d);
    }
    be->rmsnorm_fwd(be, ws->xf, ws->rstdf, ws->resid[c->num_hidden_layers], m->final_norm, n, d, c->rms_norm_eps);
}

/* Backward from d(final normed hidden) in ws->dxn through every layer; LoRA gradients accumulate. */
static void backward(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_mb *mb) {
    tl_backend *be = m->be;
    const tl_model_config *c = &m->cfg;
    int n = mb->n_tok, d = c->hidden_size, hd = c->head_dim, Hq = c->num_attention_heads,
        Hkv = c->num_key_value_heads, L = c->num_hidden_layers;
    size_t nf = (size_t)n * c->intermediate_size;
    be->zero(be, ws->dresid, (size_t)n * d * be->act_size);
    be->rmsnorm_bwd(be, ws->dresid, ws->dxn, ws->resid[L], m->final_norm, ws->rstdf, n, d);
    for (int l = L - 1; l >= 0; l--) {
        const tl_layer_weights *w = &m->layers[l];
        tl_layer_acts *a = &ws->layer[l];
        /* MLP: resid[l+1] = resid_mid + down(swiglu(gate(xn2), up(xn2))) */
        proj_bwd(m, p, mb, l, TL_T_DOWN, ws->dhsw, ws->dresid, (proj_saved){a->hsw, w->wdown, a->lora_h[TL_T_DOWN]}, 0);
        be->swiglu_bwd(be, ws->dg, ws->du, ws->dhsw, a->g, a->u, nf);
        proj_bwd(m, p, mb, l, TL_T_GATE, ws->dxn, ws->dg, (proj_saved){a->xn2, w->wgate, a->lora_h[TL_T_GATE]}, 0);
        proj_bwd(m, p, mb, l, TL_T_UP, ws->dxn, ws->du, (proj_saved){a->xn2, w->wup, a->lora_h[TL_T_UP]}, 1);
        be->rmsnorm_bwd(be, ws->dresid, ws->dxn, a->resid_mid, w->mlp_norm, a->rstd2, n, d);
        /* attention: resid_mid = resid[l] + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))) */
        proj_bwd(m, p, mb, l, TL_T_O, ws->datt, ws->dresid, (proj_saved){a->att, w->wo, a->lora_h[TL_T_O]}, 0);
        be->attn_bwd(be, ws->dq, ws->dk, ws->dv, ws->datt, a->att, a->lse, a->q, a->k, a->v, mb, Hq, Hkv, hd);
        be->rope_bwd(be, ws->dq, mb->pos, m->inv_freq, n, Hq, hd);
        be->rope_bwd(be, ws->dk, mb->pos, m->inv_freq, n, Hkv, hd);
        proj_bwd(m, p, mb, l, TL_T_Q, ws->dxn, ws->dq, (proj_saved){a->xn1, w->wq, a->lora_h[TL_T_Q]}, 0);
        proj_bwd(m, p, mb, l, TL_T_K, ws->dxn, ws->dk, (proj_saved){a->xn1, w->wk, a->lora_h[TL_T_K]}, 1);
        proj_bwd(m, p, mb, l, TL_T_V, ws->dxn, ws->dv, (proj_saved){a->xn1, w->wv, a->lora_h[TL_T_V]}, 1);
        be->rmsnorm_bwd(be, ws->dresid, ws->dxn, ws->resid[l], w->attn_norm, a->rstd1, n, d);
    }
}

tl_status tl_model_forward(const tl_model *m, const tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *h,
                           int base_only, tl_error *err) {
    ws->have_fwd = 0;
    TL_TRY(check_slots(p, h, err));
    TL_TRY(upload_mb(m, ws, h, base_only, &ws->mb, err));
    forward(m, p, ws, &ws->mb);
    ws->have_fwd = 1;
    return TL_OK;
}

static tl_status need_forward(const tl_workspace *ws, const char *what, tl_error *err) {
    return ws->have_fwd ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "%s called without a forward pass", what);
}

tl_status tl_model_logp(const tl_model *m, tl_workspace *ws, const tl_host_mb *h, const float *dlogp,
                        float *logp_out, tl_error *err) {
    tl_backend *be = m->be;
    const tl_model_config *c = &m->cfg;
    TL_TRY(need_forward(ws, "tl_model_logp", err));
    if (dlogp) be->upload(be, ws->dlogp, dlogp, (size_t)h->n_tok * sizeof(float));
    be->ce_fwd_bwd(be, ws->logp, dlogp ? ws->dxn : NULL, ws->xf, m->lm_head, ws->mb.targets, ws->dlogp, h->n_tok,
                   c->hidden_size, c->vocab_size, ws->ce_work, (size_t)ws->chunk * c->vocab_size, ws->chunk);
    if (logp_out) be->download(be, logp_out, ws->logp, (size_t)h->n_tok * sizeof(float));
    return be->status(be, err);
}

tl_status tl_model_hidden_rows(const tl_model *m, tl_workspace *ws, const int32_t *rows, int n_rows, float *out,
                               tl_error *err) {
    tl_backend *be = m->be;
    size_t d = (size_t)m->cfg.hidden_size;
    TL_TRY(need_forward(ws, "tl_model_hidden_rows", err));
    for (int i = 0; i < n_rows; i++) {
        if (rows[i] < 0 || rows[i] >= ws->mb.n_tok)
            return tl_fail(err, TL_ERR_RUNTIME, "hidden row %d outside the micro-batch of %d rows", rows[i],
                           ws->mb.n_tok);
        be->download_act(be, out + i * d, (const char *)ws->xf + (size_t)rows[i] * d * be->act_size, d);
    }
    return be->status(be, err);
}

tl_status tl_model_set_dhidden_rows(const tl_model *m, tl_workspace *ws, const int32_t *rows, int n_rows,
                                    const float *g, tl_error *err) {
    tl_backend *be = m->be;
    size_t d = (size_t)m->cfg.hidden_size;
    TL_TRY(need_forward(ws, "tl_model_set_dhidden_rows", err));
    be->zero(be, ws->dxn, (size_t)ws->mb.n_tok * d * be->act_size);
    for (int i = 0; i < n_rows; i++) {
        if (rows[i] < 0 || rows[i] >= ws->mb.n_tok)
            return tl_fail(err, TL_ERR_RUNTIME, "hidden row %d outside the micro-batch of %d rows", rows[i],
                           ws->mb.n_tok);
        be->upload_act(be, (char *)ws->dxn + (size_t)rows[i] * d * be->act_size, g + i * d, d);
    }
    return be->status(be, err);
}

tl_status tl_model_backward(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_error *err) {
    TL_TRY(need_forward(ws, "tl_model_backward", err));
    if (p->targets & ~ws->lora_kept)
        return tl_fail(err, TL_ERR_RUNTIME,
                       "tl_model_backward: the pool has LoRA targets (0x%x) whose inputs the workspace, planned "
                       "for targets 0x%x, does not keep",
                       (unsigned)p->targets, (unsigned)ws->lora_kept);
    backward(m, p, ws, &ws->mb);
    return m->be->status(m->be, err);
}

tl_status tl_model_step(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *h, int train,
                        float *logp_out, tl_error *err) {
    TL_TRY(tl_model_forward(m, p, ws, h, 0, err));
    if (train)
        for (int i = 0; i < h->n_tok; i++) ws->h_dlogp[i] = -h->weight[i];
    TL_TRY(tl_model_logp(m, ws, h, train ? ws->h_dlogp : NULL, logp_out, err));
    if (train) TL_TRY(tl_model_backward(m, p, ws, err));
    return TL_OK;
}

tl_status tl_model_logits(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_host_mb *h,
                          float *logits_out, tl_error *err) {
    tl_backend *be = m->be;
    const tl_model_config *c = &m->cfg;
    TL_TRY(tl_model_forward(m, p, ws, h, 0, err));
    /* A test path: the full [n, V] logits matrix is allocated here, once per call. */
    size_t nv = (size_t)h->n_tok * c->vocab_size;
    tl_act *logits;
    TL_TRY(be->alloc(be, nv * be->act_size, (void **)&logits, err));
    be->linear_fwd(be, logits, ws->xf, m->lm_head, NULL, h->n_tok, c->hidden_size, c->vocab_size, 0);
    be->download_act(be, logits_out, logits, nv);
    tl_status s = be->status(be, err);
    be->free(be, logits);
    return s;
}
