/* tl_gguf_dump: what tailor reads from a GGUF file, written out for tests/torch/test_gguf_vs_python.py to compare
 * with the `gguf` Python package.
 *
 *   tl_gguf_dump FILE.gguf OUT.safetensors OUT.json
 *
 * OUT.safetensors: every GGUF tensor dequantized to F32 as "gguf.<name>", shape in numpy order (ne reversed);
 *   then every HF tensor of the model (tl_gguf_read_hf_tensor: HF names, HF shapes, q/k un-permuted). The file
 *   must be a Llama GGUF (tl_gguf_model_config succeeds).
 * OUT.json: {"version", "alignment", "data_offset", "metadata": {key: value} (every key, through the typed
 *   accessors; 64-bit integers exact), "tensors": {name: {"type", "ne", "offset"}}, "config": the
 *   tl_model_config}.
 * Any error: its one line on stderr, exit code = its tl_status (2 for bad input). */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_gguf.h"
#include "data/tl_safetensors.h"

typedef struct {
    tl_gguf *g;
    tl_st_writer *w;
    cJSON *root;
    float **bufs;
    int n_bufs;
} dump_ctx;

static float *keep(dump_ctx *c, int64_t n, tl_error *err) {
    float **nb = realloc(c->bufs, (size_t)(c->n_bufs + 1) * sizeof *nb);
    if (!nb) return NULL;
    c->bufs = nb;
    float *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    if (!p) {
        tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) p[i] = __builtin_nanf(""); /* poison: unwritten values show */
    c->bufs[c->n_bufs++] = p;
    return p;
}

static cJSON *raw_num(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static cJSON *raw_num(const char *fmt, ...) {
    char b[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    return cJSON_CreateRaw(b);
}

/* One value through the public accessors, so they are what the test checks. */
static tl_status kv_json(tl_gguf *g, int i, cJSON **out, tl_error *err) {
    const char *key = tl_gguf_kv_key(g, i);
    tl_gguf_vtype t = tl_gguf_kv_type(g, i);
    if (t == TL_GGUF_STRING) {
        const char *s;
        TL_TRY(tl_gguf_get_str(g, key, &s, NULL, err));
        *out = cJSON_CreateString(s);
    } else if (t == TL_GGUF_BOOL) {
        int b;
        TL_TRY(tl_gguf_get_bool(g, key, &b, err));
        *out = cJSON_CreateBool(b);
    } else if (t == TL_GGUF_F32 || t == TL_GGUF_F64) {
        double d;
        TL_TRY(tl_gguf_get_float(g, key, &d, err));
        *out = raw_num("%.17g", d);
    } else if (t == TL_GGUF_U64) {
        int64_t v;
        if (tl_gguf_get_int(g, key, &v, err) != TL_OK) { /* above INT64_MAX: through the float accessor */
            double d;
            TL_TRY(tl_gguf_get_float(g, key, &d, err));
            *out = raw_num("%.17g", d);
        } else {
            *out = raw_num("%" PRId64, v);
        }
    } else if (t != TL_GGUF_ARRAY) {
        int64_t v;
        TL_TRY(tl_gguf_get_int(g, key, &v, err));
        *out = raw_num("%" PRId64, v);
    } else {
        uint64_t n = tl_gguf_kv_array_len(g, i);
        cJSON *a = cJSON_CreateArray();
        *out = a;
        if (!a) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        tl_gguf_vtype at = tl_gguf_kv_array_type(g, i);
        if (at == TL_GGUF_STRING) {
            const char *const *s;
            uint64_t m;
            TL_TRY(tl_gguf_get_str_array(g, key, &s, NULL, &m, err));
            for (uint64_t j = 0; j < m; j++) cJSON_AddItemToArray(a, cJSON_CreateString(s[j]));
        } else {
            /* float32 arrays through the f32 accessor (printed to round-trip a float), float64 through f64 */
            float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
            double *dv = malloc((size_t)(n ? n : 1) * sizeof *dv);
            int64_t *iv = malloc((size_t)(n ? n : 1) * sizeof *iv);
            tl_status st = !f || !dv || !iv ? tl_fail(err, TL_ERR_RUNTIME, "out of memory")
                           : at == TL_GGUF_F32 ? tl_gguf_get_f32_array(g, key, f, n, err)
                           : at == TL_GGUF_F64 ? tl_gguf_get_f64_array(g, key, dv, n, err)
                                               : tl_gguf_get_i64_array(g, key, iv, n, err);
            for (uint64_t j = 0; st == TL_OK && j < n; j++)
                cJSON_AddItemToArray(a, at == TL_GGUF_F32    ? raw_num("%.9g", (double)f[j])
                                        : at == TL_GGUF_F64  ? raw_num("%.17g", dv[j])
                                        : at == TL_GGUF_BOOL ? cJSON_CreateBool((int)iv[j])
                                                             : raw_num("%" PRId64, iv[j]));
            free(f), free(dv), free(iv);
            TL_TRY(st);
        }
    }
    if (!*out) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    return TL_OK;
}

static tl_status add_hf(dump_ctx *c, const char *hf, tl_error *err) {
    int64_t shape[TL_GGUF_MAX_DIMS];
    int nd;
    if (!tl_gguf_hf_shape(c->g, hf, shape, &nd)) return TL_OK;
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n *= shape[d];
    float *p = keep(c, n, err);
    if (!p) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    TL_TRY(tl_gguf_read_hf_tensor(c->g, hf, shape, nd, p, err));
    return tl_st_writer_add_f32(c->w, hf, shape, nd, p, err);
}

static tl_status run(dump_ctx *c, const char *in, const char *out_st, const char *out_json, tl_error *err) {
    TL_TRY(tl_gguf_open(in, &c->g, err));
    tl_gguf *g = c->g;
    c->w = tl_st_writer_new();
    c->root = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject(), *tens = cJSON_CreateObject();
    if (!c->w || !c->root || !meta || !tens) {
        cJSON_Delete(meta), cJSON_Delete(tens);
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    }
    cJSON_AddItemToObject(c->root, "metadata", meta);
    cJSON_AddItemToObject(c->root, "tensors", tens);
    cJSON_AddItemToObject(c->root, "version", raw_num("%u", tl_gguf_version(g)));
    cJSON_AddItemToObject(c->root, "alignment", raw_num("%" PRIu64, tl_gguf_alignment(g)));
    cJSON_AddItemToObject(c->root, "data_offset", raw_num("%" PRIu64, tl_gguf_data_offset(g)));
    for (int i = 0; i < tl_gguf_n_kv(g); i++) {
        cJSON *v = NULL;
        tl_status st = kv_json(g, i, &v, err);
        if (v) cJSON_AddItemToObject(meta, tl_gguf_kv_key(g, i), v);
        TL_TRY(st);
    }
    for (int i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        cJSON *o = cJSON_CreateObject(), *ne = cJSON_CreateArray();
        if (!o || !ne) {
            cJSON_Delete(o), cJSON_Delete(ne);
            return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        }
        for (int d = 0; d < t->n_dims; d++) cJSON_AddItemToArray(ne, raw_num("%" PRId64, t->ne[d]));
        cJSON_AddItemToObject(o, "ne", ne);
        cJSON_AddItemToObject(o, "type", cJSON_CreateString(tl_gguf_type_name(t->type)));
        cJSON_AddItemToObject(o, "offset", raw_num("%" PRIu64, t->offset));
        cJSON_AddItemToObject(tens, t->name, o);
        int64_t shape[TL_GGUF_MAX_DIMS], n = tl_gguf_tensor_numel(t);
        for (int d = 0; d < t->n_dims; d++) shape[d] = t->ne[t->n_dims - 1 - d];
        float *p = keep(c, n, err);
        if (!p) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        TL_TRY(tl_gguf_read_f32(g, t->name, p, n, err));
        char name[512];
        snprintf(name, sizeof name, "gguf.%s", t->name);
        TL_TRY(tl_st_writer_add_f32(c->w, name, shape, t->n_dims, p, err));
    }
    {
        tl_model_config cfg;
        TL_TRY(tl_gguf_model_config(g, &cfg, err));
        cJSON *cj = cJSON_CreateObject();
        if (!cj) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        cJSON_AddItemToObject(c->root, "config", cj);
        cJSON_AddStringToObject(cj, "arch", cfg.arch);
        cJSON_AddStringToObject(cj, "model_type", cfg.model_type);
        const struct {
            const char *k;
            int v;
        } ints[] = {{"vocab_size", cfg.vocab_size}, {"hidden_size", cfg.hidden_size},
                    {"intermediate_size", cfg.intermediate_size}, {"num_hidden_layers", cfg.num_hidden_layers},
                    {"num_attention_heads", cfg.num_attention_heads}, {"num_key_value_heads", cfg.num_key_value_heads},
                    {"head_dim", cfg.head_dim}, {"max_position_embeddings", cfg.max_position_embeddings},
                    {"rope_type", (int)cfg.rope_type}, {"rope_original_max_pos", cfg.rope_original_max_pos},
                    {"tie_word_embeddings", cfg.tie_word_embeddings}, {"attention_bias", cfg.attention_bias}};
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
            cJSON_AddItemToObject(cj, ints[i].k, raw_num("%d", ints[i].v));
        cJSON_AddItemToObject(cj, "rms_norm_eps", raw_num("%.9g", (double)cfg.rms_norm_eps));
        cJSON_AddItemToObject(cj, "rope_theta", raw_num("%.9g", (double)cfg.rope_theta));
        cJSON_AddItemToObject(cj, "rope_factor", raw_num("%.9g", (double)cfg.rope_factor));
        cJSON_AddItemToObject(cj, "rope_low_freq_factor", raw_num("%.9g", (double)cfg.rope_low_freq_factor));
        cJSON_AddItemToObject(cj, "rope_high_freq_factor", raw_num("%.9g", (double)cfg.rope_high_freq_factor));
        static const char *const subs[] = {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                                           "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
                                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        TL_TRY(add_hf(c, "model.embed_tokens.weight", err));
        for (int l = 0; l < cfg.num_hidden_layers; l++)
            for (size_t s = 0; s < sizeof subs / sizeof subs[0]; s++)
                for (int b = 0; b < 2; b++) {
                    char hf[256];
                    snprintf(hf, sizeof hf, "model.layers.%d.%s.%s", l, subs[s], b ? "bias" : "weight");
                    TL_TRY(add_hf(c, hf, err));
                }
        TL_TRY(add_hf(c, "model.norm.weight", err));
        TL_TRY(add_hf(c, "lm_head.weight", err));
    }
    TL_TRY(tl_st_writer_write(c->w, out_st, err));
    char *js = cJSON_PrintUnformatted(c->root);
    if (!js) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    tl_status st = tl_write_file_atomic(out_json, js, strlen(js), err);
    free(js);
    return st;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE.gguf OUT.safetensors OUT.json\n", argv[0]);
        return 2;
    }
    dump_ctx c = {0};
    tl_error err = {0};
    tl_status st = run(&c, argv[1], argv[2], argv[3], &err);
    if (c.w) tl_st_writer_free(c.w);
    cJSON_Delete(c.root);
    for (int i = 0; i < c.n_bufs; i++) free(c.bufs[i]);
    free(c.bufs);
    tl_gguf_close(c.g);
    if (st != TL_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return (int)st;
    }
    return 0;
}
