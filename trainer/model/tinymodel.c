/* tinymodel: writes small random HF-layout Llama-family models (see tl_tinymodel.h for the init rule).
 *
 * Every tensor's values come from its own generator, seeded by (seed, tensor name), so the same model can be
 * written as F32 or BF16, in one file or in shards, and tests can regenerate any tensor to compare. */
#include "trainer/model/tl_tinymodel.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "kernels/tl_math.h"

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
} tm_tensor;

void tl_tiny_config(tl_model_config *cfg, int vocab, int hidden, int layers, int heads, int kv_heads, int ffn,
                    int head_dim, int tie, int bias) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->arch, sizeof cfg->arch, "LlamaForCausalLM");
    snprintf(cfg->model_type, sizeof cfg->model_type, "llama");
    cfg->vocab_size = vocab;
    cfg->hidden_size = hidden;
    cfg->intermediate_size = ffn;
    cfg->num_hidden_layers = layers;
    cfg->num_attention_heads = heads;
    cfg->num_key_value_heads = kv_heads > 0 ? kv_heads : heads;
    cfg->head_dim = head_dim > 0 ? head_dim : (heads > 0 ? hidden / heads : 0);
    cfg->max_position_embeddings = 2048;
    cfg->rms_norm_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->rope_type = TL_ROPE_DEFAULT;
    cfg->rope_factor = 1.0f;
    cfg->tie_word_embeddings = tie ? 1 : 0;
    cfg->attention_bias = bias ? 1 : 0;
}

static void put(tm_tensor *out, int *k, const char *name, int64_t a, int64_t b) {
    if (out) {
        tm_tensor *t = &out[*k];
        snprintf(t->name, sizeof t->name, "%s", name);
        t->ndim = b > 0 ? 2 : 1;
        t->shape[0] = a;
        t->shape[1] = b > 0 ? b : 0;
    }
    (*k)++;
}

/* The model's tensors in HF order; returns the count (out may be NULL to count only). */
static int tensor_list(const tl_model_config *c, tm_tensor *out) {
    int k = 0;
    int64_t V = c->vocab_size, d = c->hidden_size, f = c->intermediate_size;
    int64_t q = (int64_t)c->num_attention_heads * c->head_dim, kv = (int64_t)c->num_key_value_heads * c->head_dim;
    char nm[96];
    put(out, &k, "model.embed_tokens.weight", V, d);
    for (int i = 0; i < c->num_hidden_layers; i++) {
#define L(suffix, a, b)                                                 \
    do {                                                                \
        snprintf(nm, sizeof nm, "model.layers.%d.%s", i, suffix);       \
        put(out, &k, nm, a, b);                                         \
    } while (0)
        L("input_layernorm.weight", d, 0);
        L("self_attn.q_proj.weight", q, d);
        if (c->attention_bias) L("self_attn.q_proj.bias", q, 0);
        L("self_attn.k_proj.weight", kv, d);
        if (c->attention_bias) L("self_attn.k_proj.bias", kv, 0);
        L("self_attn.v_proj.weight", kv, d);
        if (c->attention_bias) L("self_attn.v_proj.bias", kv, 0);
        L("self_attn.o_proj.weight", d, q);
        if (tl_model_has_o_bias(c)) L("self_attn.o_proj.bias", d, 0);
        L("post_attention_layernorm.weight", d, 0);
        L("mlp.gate_proj.weight", f, d);
        L("mlp.up_proj.weight", f, d);
        L("mlp.down_proj.weight", d, f);
#undef L
    }
    put(out, &k, "model.norm.weight", d, 0);
    if (!c->tie_word_embeddings) put(out, &k, "lm_head.weight", V, d);
    return k;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static void fill(const tm_tensor *t, uint64_t seed, float *dst) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a of the name: each tensor its own stream */
    for (const unsigned char *p = (const unsigned char *)t->name; *p; p++) h = (h ^ *p) * 0x100000001b3ULL;
    uint64_t state = tl_mix64(seed ^ tl_mix64(h));
    size_t n = (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
    double mean = 0.0, std;
    if (ends_with(t->name, "norm.weight")) {
        mean = 1.0;
        std = 0.1;
    } else if (ends_with(t->name, ".bias")) {
        std = 0.05;
    } else {
        std = 1.0 / sqrt((double)t->shape[1]);
    }
    const double two_pi = 6.28318530717958647692;
    for (size_t i = 0; i < n; i += 2) {
        /* Box-Muller on two 53-bit uniforms; u1 in (0, 1] keeps the log finite */
        double u1 = ((double)(tl_mix64(state + 2 * i) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
        double u2 = (double)(tl_mix64(state + 2 * i + 1) >> 11) * (1.0 / 9007199254740992.0);
        double r = sqrt(-2.0 * log(u1));
        dst[i] = (float)(mean + std * r * cos(two_pi * u2));
        if (i + 1 < n) dst[i + 1] = (float)(mean + std * r * sin(two_pi * u2));
    }
}

static size_t numel(const tm_tensor *t) { return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1); }

tl_status tl_tiny_tensor_values(const tl_model_config *cfg, const char *name, uint64_t seed, float *dst, size_t n,
                                tl_error *err) {
    int cnt = tensor_list(cfg, NULL);
    tm_tensor *ts = malloc((size_t)cnt * sizeof *ts);
    if (!ts) return tl_fail(err, TL_ERR_RUNTIME, "tiny model: out of memory");
    tensor_list(cfg, ts);
    int i = 0;
    while (i < cnt && strcmp(ts[i].name, name) != 0) i++;
    tl_status st = TL_OK;
    if (i == cnt)
        st = tl_fail(err, TL_ERR_INPUT, "tiny model: no tensor '%s'", name);
    else if (numel(&ts[i]) != n)
        st = tl_fail(err, TL_ERR_INPUT, "tiny model: tensor '%s' has %zu elements, %zu asked", name, numel(&ts[i]), n);
    else
        fill(&ts[i], seed, dst);
    free(ts);
    return st;
}

static tl_status mkdir_p(const char *dir, tl_error *err) {
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", dir);
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            tl_status s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create directory: %s", p, strerror(errno));
            free(p);
            return s;
        }
        p[i] = c;
    }
    free(p);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return tl_fail(err, TL_ERR_RUNTIME, "%s: not a directory", dir);
    return TL_OK;
}

/* Writes tensors [lo, hi) of the list into one safetensors file. */
static tl_status write_shard(const char *path, const tm_tensor *ts, int lo, int hi, uint64_t seed, int bf16,
                             tl_error *err) {
    tl_st_writer *w = tl_st_writer_new();
    void **bufs = calloc(2 * (size_t)(hi - lo) + 1, sizeof *bufs); /* fp32 and bf16 buffer per tensor */
    tl_status st = TL_OK;
    if (!w || !bufs) st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    if (st == TL_OK) st = tl_st_writer_meta(w, "format", "pt", err); /* transformers refuses files without it */
    for (int i = lo; i < hi && st == TL_OK; i++) {
        size_t n = numel(&ts[i]);
        float *v = malloc((n ? n : 1) * sizeof *v);
        if (!v) {
            st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for tensor '%s'", path, ts[i].name);
            break;
        }
        bufs[2 * (i - lo)] = v;
        fill(&ts[i], seed, v);
        if (bf16) {
            uint16_t *b = malloc((n ? n : 1) * sizeof *b);
            if (!b) {
                st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for tensor '%s'", path, ts[i].name);
                break;
            }
            bufs[2 * (i - lo) + 1] = b;
            for (size_t j = 0; j < n; j++) b[j] = tl_f32_to_bf16(v[j]);
            st = tl_st_writer_add_bytes(w, ts[i].name, "BF16", ts[i].shape, ts[i].ndim, b, (uint64_t)n * 2, err);
        } else {
            st = tl_st_writer_add_f32(w, ts[i].name, ts[i].shape, ts[i].ndim, v, err);
        }
    }
    if (st == TL_OK) st = tl_st_writer_write(w, path, err);
    if (bufs)
        for (int i = 0; i < 2 * (hi - lo); i++) free(bufs[i]);
    free(bufs);
    tl_st_writer_free(w);
    return st;
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) snprintf(p, a + b + 2, "%s/%s", dir, name);
    return p;
}

/* A stale file of the other layout would take precedence over (or shadow) what was just written. */
static tl_status remove_stale(const char *dir, const char *name, tl_error *err) {
    char *p = join(dir, name);
    if (!p) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", dir);
    tl_status st = TL_OK;
    if (unlink(p) != 0 && errno != ENOENT) st = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot remove: %s", p, strerror(errno));
    free(p);
    return st;
}

static tl_status write_index(const char *dir, const tm_tensor *ts, int cnt, int n_shards, int bf16, tl_error *err) {
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_CreateObject(), *wm = cJSON_CreateObject();
    int ok = root && meta && wm;
    uint64_t total = 0;
    for (int i = 0; i < cnt; i++) total += (uint64_t)numel(&ts[i]) * (bf16 ? 2 : 4);
    char fn[64];
    for (int i = 0; ok && i < cnt; i++) {
        int s = (int)((int64_t)i * n_shards / cnt);
        snprintf(fn, sizeof fn, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        ok = cJSON_AddStringToObject(wm, ts[i].name, fn) != NULL;
    }
    ok = ok && cJSON_AddNumberToObject(meta, "total_size", (double)total) != NULL;
    if (ok && cJSON_AddItemToObject(root, "metadata", meta)) meta = NULL;
    else ok = 0;
    if (ok && cJSON_AddItemToObject(root, "weight_map", wm)) wm = NULL;
    else ok = 0;
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    cJSON_Delete(meta);
    cJSON_Delete(wm);
    char *path = join(dir, "model.safetensors.index.json");
    tl_status st;
    if (!text || !path) st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory writing the index", dir);
    else st = tl_write_file_atomic(path, text, strlen(text), err);
    cJSON_free(text);
    free(path);
    return st;
}

tl_status tl_write_random_model(const char *dir, const tl_model_config *cfg, uint64_t seed, int bf16, int n_shards,
                                tl_error *err) {
    TL_TRY(tl_model_config_check(cfg, "tiny model config", err));
    int cnt = tensor_list(cfg, NULL);
    if (n_shards < 1 || n_shards > cnt || n_shards > 99999)
        return tl_fail(err, TL_ERR_INPUT, "tiny model: n_shards %d must be in 1..%d (the number of tensors)", n_shards,
                       cnt);
    TL_TRY(mkdir_p(dir, err));
    TL_TRY(tl_model_config_write_dtype(dir, cfg, bf16 ? "bfloat16" : "float32", err));
    tm_tensor *ts = malloc((size_t)cnt * sizeof *ts);
    if (!ts) return tl_fail(err, TL_ERR_RUNTIME, "tiny model: out of memory");
    tensor_list(cfg, ts);
    tl_status st = TL_OK;
    if (n_shards == 1) {
        char *p = join(dir, "model.safetensors");
        st = p ? write_shard(p, ts, 0, cnt, seed, bf16, err) : tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        free(p);
        if (st == TL_OK) st = remove_stale(dir, "model.safetensors.index.json", err);
    } else {
        char fn[64];
        for (int s = 0; s < n_shards && st == TL_OK; s++) {
            /* tensor i goes to shard i * n / cnt: contiguous runs, none empty since n <= cnt */
            int lo = (int)(((int64_t)s * cnt + n_shards - 1) / n_shards);
            int hi = (int)(((int64_t)(s + 1) * cnt + n_shards - 1) / n_shards);
            snprintf(fn, sizeof fn, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
            char *p = join(dir, fn);
            st = p ? write_shard(p, ts, lo, hi, seed, bf16, err) : tl_fail(err, TL_ERR_RUNTIME, "out of memory");
            free(p);
        }
        if (st == TL_OK) st = write_index(dir, ts, cnt, n_shards, bf16, err);
        if (st == TL_OK) st = remove_stale(dir, "model.safetensors", err);
    }
    free(ts);
    return st;
}
