/* export_gguf: llama.cpp's formats. One GGUF LoRA adapter per user in the layout llama.cpp's
 * convert_lora_to_gguf.py writes (general.type "adapter", adapter.type "lora", adapter.lora.alpha, tensors
 * blk.L.<name>.weight.lora_a [ne in, r] and .lora_b [ne r, out]), and the base model with one adapter merged in as
 * a GGUF model. llama.cpp stores the q and k projections of llama models with their output rows permuted within
 * each head (convert_hf_to_gguf.py), so the B rows of q and k adapters (and merged q/k weights) are permuted the
 * same way; A (input side) is not. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_gguf.h"
#include "data/tl_gguf_write.h"
#include "data/tl_io.h"
#include "data/tl_safetensors.h"
#include "trainer/run/export_impl.h"

/* llama.cpp's tensor name of each target, blk.L.<name>.weight */
static const char *const gguf_target[TL_N_TARGETS] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                      "ffn_gate", "ffn_up", "ffn_down"};

void tl_export_llama_arch(const tl_model_config *c, const char **arch, int *permute_qk) {
    int qwen2 = !strcmp(c->model_type, "qwen2");
    *arch = qwen2 ? "qwen2" : "llama"; /* mistral converts to llama's architecture */
    *permute_qk = !qwen2;
}

void tl_export_permute_rows(float *dst, const float *src, int64_t rows, int64_t cols, int n_head) {
    const int64_t hd = rows / n_head, half = hd / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t i = 0; i < 2; i++)
            for (int64_t jj = 0; jj < half; jj++)
                memcpy(dst + (h * hd + 2 * jj + i) * cols, src + (h * hd + i * half + jj) * cols,
                       (size_t)cols * sizeof *dst);
}

unsigned tl_export_dtype_size(tl_export_dtype dt) { return dt == TL_EXPORT_F32 ? 4 : 2; }

void tl_export_convert(void *dst, const float *src, size_t n, tl_export_dtype dt) {
    if (dt == TL_EXPORT_F32) {
        memcpy(dst, src, n * sizeof *src);
        return;
    }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = dt == TL_EXPORT_F16 ? tl_f32_to_f16(src[i]) : tl_f32_to_bf16(src[i]);
}

void tl_export_merge(float *W, const float *A, const float *B, int64_t out, int64_t in, int r, float scale) {
    for (int64_t o = 0; o < out; o++) {
        float *row = W + o * in;
        for (int k = 0; k < r; k++) {
            const float b = scale * B[o * r + k];
            const float *a = A + (int64_t)k * in;
            for (int64_t i = 0; i < in; i++) row[i] += b * a[i];
        }
    }
}

static uint32_t ggml_type_of(tl_export_dtype dt) {
    return dt == TL_EXPORT_F32 ? TL_GGML_F32 : dt == TL_EXPORT_F16 ? TL_GGML_F16 : TL_GGML_BF16;
}

/* ---- LoRA adapters ---- */

typedef struct {
    const float *src;
    int64_t rows, cols;
    int perm_heads; /* > 0: permute rows within this many heads */
    tl_export_dtype dt;
    float *scratch; /* rows * cols floats when perm_heads */
} lora_tensor;

static tl_status produce_lora(void *ctx, void *dst, uint64_t nbytes, tl_error *err) {
    lora_tensor *t = ctx;
    size_t n = (size_t)(t->rows * t->cols);
    if (nbytes != n * tl_export_dtype_size(t->dt))
        return tl_fail(err, TL_ERR_RUNTIME, "gguf export: tensor of %zu elements asked for %llu bytes", n,
                       (unsigned long long)nbytes);
    const float *src = t->src;
    if (t->perm_heads > 0) {
        tl_export_permute_rows(t->scratch, t->src, t->rows, t->cols, t->perm_heads);
        src = t->scratch;
    }
    tl_export_convert(dst, src, n, t->dt);
    return TL_OK;
}

/* The base model's config, checked to be one llama.cpp's LoRA loader takes: q/k rows split into even heads. */
static tl_status base_config(const tl_export_job *j, tl_model_config *c, const char **arch, int *perm,
                             tl_error *err) {
    TL_TRY(tl_model_config_from(j->base_model, c, err));
    tl_export_llama_arch(c, arch, perm);
    return TL_OK;
}

static tl_status write_one_lora(tl_export_job *j, const tl_model_config *c, const char *arch, int perm,
                                const float *w, int slot, const char *path, lora_tensor *lt, float *scratch,
                                tl_error *err) {
    const tl_lora_pool *p = j->p;
    tl_gguf_writer *g = tl_gguf_writer_new();
    if (!g) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    /* llama.cpp scales by alpha / r (no rsLoRA): alpha is written so that alpha / r is the trained scale */
    double alpha = p->rslora ? j->alpha * sqrt((double)p->rank) : j->alpha;
    tl_status s = tl_gguf_writer_kv_str(g, "general.architecture", arch, err);
    if (!s) s = tl_gguf_writer_kv_str(g, "general.type", "adapter", err);
    if (!s) s = tl_gguf_writer_kv_str(g, "general.name", p->names[slot], err);
    if (!s) s = tl_gguf_writer_kv_str(g, "adapter.type", "lora", err);
    if (!s) s = tl_gguf_writer_kv_f32(g, "adapter.lora.alpha", (float)alpha, err);
    if (!s) s = tl_gguf_writer_kv_str(g, "tailor.adapter_name", p->names[slot], err);
    if (!s) s = tl_gguf_writer_kv_u32(g, "tailor.adapter_steps", p->steps ? (uint32_t)p->steps[slot] : 0, err);
    int n = 0;
    char name[96];
    for (int l = 0; l < p->n_layers && !s; l++)
        for (int t = 0; t < TL_N_TARGETS && !s; t++) {
            if (!(p->targets & (1u << t))) continue;
            size_t i = (size_t)l * TL_N_TARGETS + (size_t)t;
            int heads = !perm ? 0 : t == TL_T_Q ? c->num_attention_heads : t == TL_T_K ? c->num_key_value_heads : 0;
            lt[n] = (lora_tensor){w + p->off_A[i], p->rank, p->in_dim[t], 0, j->o->dtype, NULL};
            int64_t neA[2] = {p->in_dim[t], p->rank}, neB[2] = {p->rank, p->out_dim[t]};
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", l, gguf_target[t]);
            s = tl_gguf_writer_add_tensor(g, name, 2, neA, ggml_type_of(j->o->dtype), produce_lora, &lt[n], err);
            n++;
            lt[n] = (lora_tensor){w + p->off_B[i], p->out_dim[t], p->rank, heads, j->o->dtype, scratch};
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", l, gguf_target[t]);
            if (!s) s = tl_gguf_writer_add_tensor(g, name, 2, neB, ggml_type_of(j->o->dtype), produce_lora, &lt[n], err);
            n++;
        }
    if (!s) s = tl_gguf_writer_write(g, path, err);
    tl_gguf_writer_free(g);
    return s;
}

tl_status tl_export_write_gguf_loras(tl_export_job *j, tl_error *err) {
    const tl_lora_pool *p = j->p;
    tl_model_config c;
    const char *arch;
    int perm;
    TL_TRY(base_config(j, &c, &arch, &perm, err));
    if (perm && (c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.head_dim % 2 != 0 ||
                 p->out_dim[TL_T_Q] != c.num_attention_heads * c.head_dim ||
                 p->out_dim[TL_T_K] != c.num_key_value_heads * c.head_dim))
        return tl_fail(err, TL_ERR_INPUT, "%s: the adapters' q/k shapes do not split into the model's heads",
                       j->base_model);
    int max_rows = 0;
    for (int t = 0; t < TL_N_TARGETS; t++)
        if (p->out_dim[t] > max_rows) max_rows = p->out_dim[t];
    float *w = malloc((p->P ? p->P : 1) * sizeof *w);
    float *scratch = malloc((size_t)max_rows * (size_t)p->rank * sizeof *scratch);
    lora_tensor *lt = calloc((size_t)p->n_layers * TL_N_TARGETS * 2, sizeof *lt);
    tl_status s = w && scratch && lt ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "gguf export: out of memory");
    char file[TL_SAFE_DIRNAME_MAX + 40], path[TL_PATH_MAX];
    for (int i = 0; i < p->n_slots && !s; i++) {
        snprintf(file, sizeof file, "%s.gguf", j->dirs[i]);
        if ((s = tl_path_join(path, sizeof path, j->tmp, file, err))) break;
        if ((s = tl_export_read_slot(j, i, w, err))) break;
        if ((s = write_one_lora(j, &c, arch, perm, w, i, path, lt, scratch, err))) {
            tl_wrap(err, "exporting adapter '%s'", p->names[i]);
            break;
        }
        cJSON *list = cJSON_GetObjectItemCaseSensitive(j->index, "adapters");
        cJSON *e = cJSON_CreateObject();
        int ok = e && cJSON_AddItemToArray(list, e);
        if (!ok) cJSON_Delete(e);
        ok = ok && cJSON_AddStringToObject(e, "name", p->names[i]) && cJSON_AddStringToObject(e, "file", file) &&
             cJSON_AddNumberToObject(e, "steps", p->steps ? (double)p->steps[i] : 0.0);
        if (!ok) s = tl_fail(err, TL_ERR_RUNTIME, "gguf export: out of memory building index.json");
    }
    free(w);
    free(scratch);
    free(lt);
    return s;
}

/* ---- the merged model as GGUF ---- */

typedef struct {
    tl_gguf *g;
    const tl_gguf_tensor *t;
    const float *A, *B; /* the adapter's matrices when this tensor is a target weight, else NULL */
    int64_t out, in;
    int rank, perm_heads;
    float scale;
    tl_export_dtype dt; /* F32 for 1-D tensors */
    float *buf, *bperm; /* the largest tensor; out * rank */
} merged_tensor;

static tl_status produce_merged(void *ctx, void *dst, uint64_t nbytes, tl_error *err) {
    merged_tensor *m = ctx;
    int64_t n = tl_gguf_tensor_numel(m->t);
    if (nbytes != (uint64_t)n * tl_export_dtype_size(m->dt))
        return tl_fail(err, TL_ERR_RUNTIME, "merged gguf: tensor '%s': size mismatch", m->t->name);
    TL_TRY(tl_gguf_read_f32(m->g, m->t->name, m->buf, n, err));
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(m->buf[i]))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' holds a non-finite value at index %lld",
                           tl_gguf_path(m->g), m->t->name, (long long)i);
    if (m->A) {
        const float *B = m->B;
        if (m->perm_heads > 0) {
            tl_export_permute_rows(m->bperm, m->B, m->out, m->rank, m->perm_heads);
            B = m->bperm;
        }
        tl_export_merge(m->buf, m->A, B, m->out, m->in, m->rank, m->scale);
    }
    tl_export_convert(dst, m->buf, (size_t)n, m->dt);
    return TL_OK;
}

/* "blk.L.<target>.weight" -> layer and target; 0 when the name is not a target weight */
static int target_of(const char *name, int *layer, int *target) {
    int l, k = 0;
    char rest[64];
    if (sscanf(name, "blk.%d.%63[a-z_].weight%n", &l, rest, &k) != 2 || name[k] != '\0') return 0;
    for (int t = 0; t < TL_N_TARGETS; t++)
        if (!strcmp(rest, gguf_target[t])) {
            *layer = l, *target = t;
            return 1;
        }
    return 0;
}

static int is_gguf_path(const char *p) {
    size_t n = strlen(p);
    return n >= 5 && !strcmp(p + n - 5, ".gguf");
}

tl_status tl_export_write_merged_gguf(tl_export_job *j, int slot, tl_error *err) {
    const tl_lora_pool *p = j->p;
    if (!is_gguf_path(j->base_model))
        return tl_fail(err, TL_ERR_INPUT, "export: --format merged-gguf needs a GGUF base model (model.path ends in "
                       ".gguf), but the run's base is the HF directory %s: write --format merged and convert that "
                       "directory with llama.cpp's convert_hf_to_gguf.py", j->base_model);
    tl_gguf *g = NULL;
    TL_TRY(tl_gguf_open(j->base_model, &g, err));
    tl_model_config c;
    const char *arch = "llama";
    int perm = 1;
    tl_status s = tl_gguf_model_config(g, &c, err);
    if (!s) tl_export_llama_arch(&c, &arch, &perm);
    int nt = tl_gguf_n_tensors(g);
    int64_t biggest = 1;
    for (int i = 0; i < nt; i++)
        if (tl_gguf_tensor_numel(tl_gguf_tensor_at(g, i)) > biggest) biggest = tl_gguf_tensor_numel(tl_gguf_tensor_at(g, i));
    float *w = malloc((p->P ? p->P : 1) * sizeof *w);
    float *buf = malloc((size_t)biggest * sizeof *buf);
    int max_rows = 0;
    for (int t = 0; t < TL_N_TARGETS; t++)
        if (p->out_dim[t] > max_rows) max_rows = p->out_dim[t];
    float *bperm = malloc((size_t)max_rows * (size_t)p->rank * sizeof *bperm);
    merged_tensor *mt = calloc((size_t)nt + 1, sizeof *mt);
    tl_gguf_writer *gw = tl_gguf_writer_new();
    if (!s && (!w || !buf || !bperm || !mt || !gw)) s = tl_fail(err, TL_ERR_RUNTIME, "merged gguf: out of memory");
    if (!s) s = tl_export_read_slot(j, slot, w, err);
    /* every key of the base except the file type (now F32/F16/BF16) and quantization details */
    for (int i = 0; i < tl_gguf_n_kv(g) && !s; i++) {
        const char *key = tl_gguf_kv_key(g, i);
        if (!strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version") ||
            !strcmp(key, "general.alignment") || !strncmp(key, "tailor.", 7))
            continue;
        s = tl_gguf_writer_copy_kv(gw, g, i, err);
    }
    uint32_t ftype = j->o->dtype == TL_EXPORT_F32 ? 0 : j->o->dtype == TL_EXPORT_F16 ? 1 : 32; /* llama_ftype */
    if (!s) s = tl_gguf_writer_kv_u32(gw, "general.file_type", ftype, err);
    if (!s) s = tl_gguf_writer_kv_str(gw, "tailor.merged_adapter", p->names[slot], err);
    int merged = 0;
    for (int i = 0; i < nt && !s; i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        merged_tensor *m = &mt[i];
        *m = (merged_tensor){.g = g, .t = t, .dt = t->n_dims == 1 ? TL_EXPORT_F32 : j->o->dtype, .buf = buf,
                             .bperm = bperm, .scale = p->scale, .rank = p->rank};
        int l, tg;
        if (target_of(t->name, &l, &tg) && l < p->n_layers && (p->targets & (1u << tg))) {
            size_t k = (size_t)l * TL_N_TARGETS + (size_t)tg;
            if (t->n_dims != 2 || t->ne[0] != p->in_dim[tg] || t->ne[1] != p->out_dim[tg]) {
                s = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has ne [%lld, %lld], the adapter expects [%d, %d]",
                            j->base_model, t->name, (long long)t->ne[0], (long long)t->ne[1], p->in_dim[tg],
                            p->out_dim[tg]);
                break;
            }
            m->A = w + p->off_A[k], m->B = w + p->off_B[k];
            m->out = p->out_dim[tg], m->in = p->in_dim[tg];
            m->perm_heads = !perm ? 0 : tg == TL_T_Q ? c.num_attention_heads : tg == TL_T_K ? c.num_key_value_heads : 0;
            merged++;
        }
        s = tl_gguf_writer_add_tensor(gw, t->name, t->n_dims, t->ne, ggml_type_of(m->dt), produce_merged, m, err);
    }
    int expected = 0;
    for (int t = 0; t < TL_N_TARGETS; t++)
        if (p->targets & (1u << t)) expected += p->n_layers;
    if (!s && merged != expected)
        s = tl_fail(err, TL_ERR_INPUT, "%s: %d of the adapter's %d matrices have a tensor in the base model",
                    j->base_model, merged, expected);
    char file[TL_SAFE_DIRNAME_MAX + 40], path[TL_PATH_MAX];
    snprintf(file, sizeof file, "%s.gguf", j->dirs[slot]);
    if (!s) s = tl_path_join(path, sizeof path, j->tmp, file, err);
    if (!s) s = tl_gguf_writer_write(gw, path, err);
    if (!s) s = tl_export_add_file(j, file, err);
    tl_gguf_writer_free(gw);
    free(mt);
    free(bperm);
    free(buf);
    free(w);
    tl_gguf_close(g);
    return s;
}
