/* export_merged: the base model with one adapter merged in (W + scale * B A) as a complete HF model directory:
 * config.json, safetensors shards (model.safetensors, or model-0000i-of-0000N.safetensors with
 * model.safetensors.index.json), and the base's tokenizer and generation files where it has them. The base is
 * read one tensor at a time (HF directory or GGUF, in HF layout either way) and each shard is streamed, so the
 * export holds one tensor and one adapter in memory. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_gguf.h"
#include "data/tl_io.h"
#include "data/tl_safetensors.h"
#include "trainer/run/export_impl.h"

/* the base model, HF directory or GGUF, with HF names and layouts */
typedef struct {
    tl_tensor_src *src;
    tl_gguf *g;
    const char *path;
} base_src;

static int ends_gguf(const char *p) {
    size_t n = strlen(p);
    return n >= 5 && !strcmp(p + n - 5, ".gguf");
}

static tl_status base_read(base_src *b, const char *name, const int64_t *shape, int nd, float *dst, tl_error *err) {
    return b->g ? tl_gguf_read_hf_tensor(b->g, name, shape, nd, dst, err)
                : tl_tensor_src_read_f32(b->src, name, shape, nd, dst, err);
}

typedef struct {
    char name[96];
    int64_t shape[2];
    int nd;
    int layer, target; /* target < 0: not merged */
    int shard;
} mtensor;

/* Every weight of the model, in tailor's load order (lm_head only when it is its own tensor). */
static mtensor *list_tensors(const tl_model_config *c, int own_head, int *n_out) {
    const int64_t d = c->hidden_size, V = c->vocab_size, f = c->intermediate_size, hd = c->head_dim;
    const int64_t qd = c->num_attention_heads * hd, kvd = c->num_key_value_heads * hd;
    mtensor *w = calloc((size_t)c->num_hidden_layers * 13 + 3, sizeof *w);
    if (!w) return NULL;
    int n = 0;
#define ADD(fmt, lay, a, b, ndim, tg)                                                                  \
    do {                                                                                               \
        snprintf(w[n].name, sizeof w[n].name, fmt, lay);                                               \
        w[n].shape[0] = (a), w[n].shape[1] = (b), w[n].nd = (ndim), w[n].layer = (lay), w[n].target = (tg); \
        n++;                                                                                           \
    } while (0)
    ADD("model.embed_tokens.weight%.0d", 0, V, d, 2, -1);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        ADD("model.layers.%d.input_layernorm.weight", l, d, 1, 1, -1);
        ADD("model.layers.%d.self_attn.q_proj.weight", l, qd, d, 2, TL_T_Q);
        ADD("model.layers.%d.self_attn.k_proj.weight", l, kvd, d, 2, TL_T_K);
        ADD("model.layers.%d.self_attn.v_proj.weight", l, kvd, d, 2, TL_T_V);
        ADD("model.layers.%d.self_attn.o_proj.weight", l, d, qd, 2, TL_T_O);
        if (c->attention_bias) {
            ADD("model.layers.%d.self_attn.q_proj.bias", l, qd, 1, 1, -1);
            ADD("model.layers.%d.self_attn.k_proj.bias", l, kvd, 1, 1, -1);
            ADD("model.layers.%d.self_attn.v_proj.bias", l, kvd, 1, 1, -1);
        }
        if (tl_model_has_o_bias(c)) ADD("model.layers.%d.self_attn.o_proj.bias", l, d, 1, 1, -1);
        ADD("model.layers.%d.post_attention_layernorm.weight", l, d, 1, 1, -1);
        ADD("model.layers.%d.mlp.gate_proj.weight", l, f, d, 2, TL_T_GATE);
        ADD("model.layers.%d.mlp.up_proj.weight", l, f, d, 2, TL_T_UP);
        ADD("model.layers.%d.mlp.down_proj.weight", l, d, f, 2, TL_T_DOWN);
    }
    ADD("model.norm.weight%.0d", 0, d, 1, 1, -1);
    if (own_head) ADD("lm_head.weight%.0d", 0, V, d, 2, -1);
#undef ADD
    *n_out = n;
    return w;
}

static uint64_t numel(const mtensor *t) { return (uint64_t)t->shape[0] * (uint64_t)(t->nd == 2 ? t->shape[1] : 1); }

typedef struct {
    base_src *b;
    const mtensor *t;
    const tl_lora_pool *p;
    const float *w; /* the adapter */
    float *buf;
    tl_export_dtype dt;
} produce_ctx;

static tl_status produce(void *ctx, uint64_t offset, void *dst, uint64_t n, tl_error *err) {
    produce_ctx *c = ctx;
    const mtensor *t = c->t;
    uint64_t cnt = numel(t);
    if (offset != 0 || n != cnt * tl_export_dtype_size(c->dt))
        return tl_fail(err, TL_ERR_RUNTIME, "merged export: tensor '%s' asked in pieces", t->name);
    TL_TRY(base_read(c->b, t->name, t->shape, t->nd, c->buf, err));
    for (uint64_t i = 0; i < cnt; i++)
        if (!isfinite(c->buf[i]))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' holds a non-finite value at index %llu", c->b->path,
                           t->name, (unsigned long long)i);
    const tl_lora_pool *p = c->p;
    if (t->target >= 0 && (p->targets & (1u << t->target))) {
        size_t k = (size_t)t->layer * TL_N_TARGETS + (size_t)t->target;
        tl_export_merge(c->buf, c->w + p->off_A[k], c->w + p->off_B[k], t->shape[0], t->shape[1], p->rank,
                        p->scale);
    }
    tl_export_convert(dst, c->buf, (size_t)cnt, c->dt);
    return TL_OK;
}

static const char *const dtype_st[] = {"F32", "F16", "BF16"};
static const char *const dtype_torch[] = {"float32", "float16", "bfloat16"};

/* files of an HF model directory that are not weights, copied when the base has them */
static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                         "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                                         "chat_template.jinja", "chat_template.json", "generation_config.json"};

static tl_status copy_side_files(tl_export_job *j, tl_error *err) {
    char src[TL_PATH_MAX], dst[TL_PATH_MAX];
    for (size_t i = 0; i < sizeof side_files / sizeof *side_files; i++) {
        TL_TRY(tl_path_join(src, sizeof src, j->base_model, side_files[i], err));
        if (!tl_is_file(src)) continue;
        char *text = NULL;
        size_t n = 0;
        TL_TRY(tl_read_file(src, (size_t)256 << 20, &text, &n, err));
        tl_status s = tl_path_join(dst, sizeof dst, j->tmp, side_files[i], err);
        if (!s) s = tl_write_file_atomic(dst, text, n, err);
        free(text);
        if (!s) s = tl_export_add_file(j, side_files[i], err);
        if (s) return s;
    }
    return TL_OK;
}

/* config.json: the base's own (every field kept) with torch_dtype set, or one built from a GGUF's config */
static tl_status write_config(tl_export_job *j, const tl_model_config *c, tl_error *err) {
    const char *td = dtype_torch[j->o->dtype];
    if (ends_gguf(j->base_model)) {
        TL_TRY(tl_model_config_write_dtype(j->tmp, c, td, err));
        return tl_export_add_file(j, "config.json", err);
    }
    char path[TL_PATH_MAX];
    TL_TRY(tl_path_join(path, sizeof path, j->base_model, "config.json", err));
    char *text = NULL;
    TL_TRY(tl_read_file(path, (size_t)16 << 20, &text, NULL, err));
    cJSON *o = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return tl_fail(err, TL_ERR_INPUT, "%s: not a JSON object", path);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(o, "torch_dtype");
    cJSON_DeleteItemFromObjectCaseSensitive(o, "quantization_config");
    char *out = cJSON_AddStringToObject(o, "torch_dtype", td) ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    return tl_export_write_text(j, "config.json", out, err);
}

tl_status tl_export_write_merged(tl_export_job *j, int slot, tl_error *err) {
    const tl_lora_pool *p = j->p;
    base_src b = {.path = j->base_model};
    tl_model_config c;
    tl_status s;
    if (ends_gguf(j->base_model)) {
        TL_TRY(tl_gguf_open(j->base_model, &b.g, err));
        s = tl_gguf_model_config(b.g, &c, err);
    } else {
        s = tl_model_config_load(j->base_model, &c, err);
        if (!s) s = tl_tensor_src_open(j->base_model, &b.src, err);
    }
    int has_head = 0;
    if (!s) has_head = b.g ? tl_gguf_has_hf_tensor(b.g, "lm_head.weight") : tl_tensor_src_has(b.src, "lm_head.weight");
    int n = 0;
    mtensor *ts = s ? NULL : list_tensors(&c, has_head && !c.tie_word_embeddings, &n);
    if (!s && !ts) s = tl_fail(err, TL_ERR_RUNTIME, "merged export: out of memory");
    if (!s && (c.num_hidden_layers != p->n_layers))
        s = tl_fail(err, TL_ERR_INPUT, "%s: %d layers, the adapters have %d", j->base_model, c.num_hidden_layers,
                    p->n_layers);
    /* shards: tensors in order, a new shard when the next tensor would pass shard_bytes */
    uint64_t limit = j->o->shard_bytes ? j->o->shard_bytes : TL_EXPORT_SHARD_BYTES, used = 0, biggest = 1, total = 0;
    int n_shards = 1;
    for (int i = 0; i < n && !s; i++) {
        uint64_t nb = numel(&ts[i]) * tl_export_dtype_size(j->o->dtype);
        if (used > 0 && used + nb > limit) n_shards++, used = 0;
        used += nb, total += nb;
        ts[i].shard = n_shards - 1;
        if (numel(&ts[i]) > biggest) biggest = numel(&ts[i]);
    }
    float *w = s ? NULL : malloc((p->P ? p->P : 1) * sizeof *w);
    float *buf = s ? NULL : malloc(biggest * sizeof *buf);
    produce_ctx *pc = s ? NULL : calloc((size_t)n + 1, sizeof *pc);
    if (!s && (!w || !buf || !pc)) s = tl_fail(err, TL_ERR_RUNTIME, "merged export: out of memory");
    if (!s) s = tl_export_read_slot(j, slot, w, err);
    if (!s) s = write_config(j, &c, err);
    if (!s && !b.g) s = copy_side_files(j, err);
    cJSON *wmap = cJSON_CreateObject();
    if (!s && !wmap) s = tl_fail(err, TL_ERR_RUNTIME, "merged export: out of memory");
    char file[64], path[TL_PATH_MAX];
    for (int sh = 0, i = 0; sh < n_shards && !s; sh++) {
        if (n_shards == 1) snprintf(file, sizeof file, "model.safetensors");
        else snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", sh + 1, n_shards);
        tl_st_writer *wr = tl_st_writer_new();
        if (!wr) s = tl_fail(err, TL_ERR_RUNTIME, "merged export: out of memory");
        for (; i < n && ts[i].shard == sh && !s; i++) {
            pc[i] = (produce_ctx){&b, &ts[i], p, w, buf, j->o->dtype};
            uint64_t nb = numel(&ts[i]) * tl_export_dtype_size(j->o->dtype);
            s = tl_st_writer_add_stream(wr, ts[i].name, dtype_st[j->o->dtype], ts[i].shape, ts[i].nd, nb, produce,
                                        &pc[i], nb, err);
            if (!s && !cJSON_AddStringToObject(wmap, ts[i].name, file))
                s = tl_fail(err, TL_ERR_RUNTIME, "merged export: out of memory");
        }
        if (!s) s = tl_st_writer_meta(wr, "format", "pt", err);
        if (!s) s = tl_st_writer_meta(wr, "tailor_merged_adapter", p->names[slot], err);
        if (!s) s = tl_path_join(path, sizeof path, j->tmp, file, err);
        if (!s) s = tl_st_writer_write(wr, path, err);
        if (!s) s = tl_export_add_file(j, file, err);
        tl_st_writer_free(wr);
    }
    if (!s && n_shards > 1) {
        cJSON *idx = cJSON_CreateObject(), *meta = cJSON_CreateObject();
        int ok = idx && meta && cJSON_AddNumberToObject(meta, "total_size", (double)total) &&
                 cJSON_AddItemToObject(idx, "metadata", meta);
        if (!ok) cJSON_Delete(meta);
        ok = ok && cJSON_AddItemToObject(idx, "weight_map", wmap);
        if (ok) wmap = NULL;
        char *text = ok ? cJSON_Print(idx) : NULL;
        cJSON_Delete(idx);
        s = tl_export_write_text(j, "model.safetensors.index.json", text, err);
    }
    cJSON_Delete(wmap);
    free(pc);
    free(buf);
    free(w);
    free(ts);
    if (b.g) tl_gguf_close(b.g);
    if (b.src) tl_tensor_src_close(b.src);
    return s;
}
