/* hf_config: the Llama-family model configuration from (and to) an HF config.json.
 *
 * Reading follows what transformers' LlamaConfig / MistralConfig / Qwen2Config do with the same file (their
 * defaults, rope_scaling and transformers-v5 rope_parameters, Qwen2's use_sliding_window), but refuses
 * anything tailor's model would silently get wrong: other architectures or activations, MLP biases, RoPE
 * variants other than default/linear/llama3, sliding-window attention that would actually take effect. */
#include "data/tl_hf_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_safetensors.h" /* tl_write_file_atomic */

#define CFG_MAX_BYTES (16 * 1024 * 1024)

typedef struct {
    const char *arch, *model_type;
    int default_max_pos;  /* transformers' default max_position_embeddings */
    int default_sliding;  /* transformers' default sliding_window, 0 = none */
    int always_bias;      /* q/k/v biases regardless of attention_bias */
    int has_bias_field;   /* reads attention_bias */
} arch_info;

static const arch_info archs[] = {
    {"LlamaForCausalLM", "llama", 2048, 0, 0, 1},
    {"MistralForCausalLM", "mistral", 4096 * 32, 4096, 0, 0},
    {"Qwen2ForCausalLM", "qwen2", 32768, 0, 1, 0},
};
#define N_ARCHS ((int)(sizeof archs / sizeof archs[0]))

static const arch_info *arch_by_name(const char *a) {
    for (int i = 0; i < N_ARCHS; i++)
        if (strcmp(archs[i].arch, a) == 0) return &archs[i];
    return NULL;
}

static const arch_info *arch_by_type(const char *t) {
    for (int i = 0; i < N_ARCHS; i++)
        if (strcmp(archs[i].model_type, t) == 0) return &archs[i];
    return NULL;
}

static const char *kind(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* --------------------------------------------------------------------------------------- field readers
 * `key` in messages is the dotted path (rope_scaling.factor); `obj` the object holding the field. */

static const cJSON *field(const cJSON *obj, const char *name) { return cJSON_GetObjectItemCaseSensitive(obj, name); }

/* Sane limits of the model's dimensions, checked before anything is sized from them (tl_model_config_check): far
 * above every released Llama-family model (vocabularies reach 262144, hidden 16384, ffn 53248, 126 layers, 128
 * heads, head_dim 256, contexts 10M), and low enough that every product the loader and the workspace form (vocab x
 * hidden, ffn x hidden, heads x head_dim x hidden) fits comfortably in 64 bits. 0: not a dimension. */
int tl_model_dim_limit(const char *name) {
    static const struct {
        const char *name;
        int limit;
    } lim[] = {{"vocab_size", 1 << 24},      {"hidden_size", 1 << 16},         {"intermediate_size", 1 << 20},
               {"num_hidden_layers", 1024},   {"num_attention_heads", 1024},    {"num_key_value_heads", 1024},
               {"head_dim", 1024},            {"max_position_embeddings", 1 << 26}};
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (!strcmp(lim[i].name, name)) return lim[i].limit;
    return 0;
}

static int dim_limit(const char *name) { return tl_model_dim_limit(name); }

/* An integer field. Absent: *out = def when !required. null counts as absent only when null_ok. */
static tl_status get_int(const char *path, const cJSON *obj, const char *name, const char *key, int required,
                         int null_ok, int def, int *out, tl_error *err) {
    const cJSON *v = field(obj, name);
    if (!v || (null_ok && cJSON_IsNull(v))) {
        if (required) return tl_fail(err, TL_ERR_INPUT, "%s: missing required field '%s' (an integer)", path, key);
        *out = def;
        return TL_OK;
    }
    if (!cJSON_IsNumber(v))
        return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' must be an integer, got %s", path, key, kind(v));
    double d = v->valuedouble;
    if (floor(d) != d)
        return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' must be an integer, got %g", path, key, d);
    if (d > (double)INT_MAX && dim_limit(key) > 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s %.0f is above the supported limit %d", path, key, d, dim_limit(key));
    if (d < (double)INT_MIN || d > (double)INT_MAX)
        return tl_fail(err, TL_ERR_INPUT, "%s: field '%s': %.0f is out of range (expected an integer in [%d, %d])", path,
                       key, d, INT_MIN, INT_MAX);
    *out = (int)d;
    return TL_OK;
}

static tl_status get_num(const char *path, const cJSON *obj, const char *name, const char *key, int required,
                         double def, double *out, tl_error *err) {
    const cJSON *v = field(obj, name);
    if (!v) {
        if (required) return tl_fail(err, TL_ERR_INPUT, "%s: missing required field '%s' (a number)", path, key);
        *out = def;
        return TL_OK;
    }
    if (cJSON_IsNull(v)) return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' is null, expected a number", path, key);
    if (!cJSON_IsNumber(v))
        return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' must be a number, got %s", path, key, kind(v));
    if (!isfinite(v->valuedouble))
        return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' must be finite", path, key);
    *out = v->valuedouble;
    return TL_OK;
}

static tl_status get_bool(const char *path, const cJSON *obj, const char *name, int def, int *out, tl_error *err) {
    const cJSON *v = field(obj, name);
    if (!v) {
        *out = def;
        return TL_OK;
    }
    if (!cJSON_IsBool(v))
        return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' must be true or false, got %s", path, name, kind(v));
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return TL_OK;
}

/* --------------------------------------------------------------------------------------------- parsing */

static tl_status parse_arch(const char *path, const cJSON *root, tl_model_config *cfg, const arch_info **ai,
                            tl_error *err) {
    const cJSON *a = field(root, "architectures");
    const cJSON *mt = field(root, "model_type");
    if (mt && !cJSON_IsNull(mt) && !cJSON_IsString(mt))
        return tl_fail(err, TL_ERR_INPUT, "%s: field 'model_type' must be a string, got %s", path, kind(mt));
    const char *type = cJSON_IsString(mt) ? mt->valuestring : NULL;
    if (a && !cJSON_IsNull(a)) {
        if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) < 1)
            return tl_fail(err, TL_ERR_INPUT, "%s: field 'architectures' must be a non-empty array of strings, got %s",
                           path, cJSON_IsArray(a) ? "an empty array" : kind(a));
        const cJSON *a0 = a->child;
        if (!cJSON_IsString(a0))
            return tl_fail(err, TL_ERR_INPUT, "%s: field 'architectures[0]' must be a string, got %s", path, kind(a0));
        *ai = arch_by_name(a0->valuestring);
        if (!*ai)
            return tl_fail(err, TL_ERR_INPUT, "%s: architectures[0] '%.100s' is not supported (supported: "
                           "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)", path, a0->valuestring);
        if (type && strcmp(type, (*ai)->model_type) != 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: model_type '%.100s' does not match architectures[0] '%s' "
                           "(expected '%s')", path, type, (*ai)->arch, (*ai)->model_type);
    } else if (type) {
        /* configs saved from a bare config class carry model_type only */
        *ai = arch_by_type(type);
        if (!*ai)
            return tl_fail(err, TL_ERR_INPUT, "%s: model_type '%.100s' is not supported (supported: llama, mistral, "
                           "qwen2)", path, type);
    } else {
        return tl_fail(err, TL_ERR_INPUT, "%s: missing required field 'architectures' (e.g. [\"LlamaForCausalLM\"])",
                       path);
    }
    snprintf(cfg->arch, sizeof cfg->arch, "%s", (*ai)->arch);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", (*ai)->model_type);
    return TL_OK;
}

/* rope_theta and the scaling: transformers v4 writes rope_theta + rope_scaling, v5 rope_parameters holding
 * both. HF reads "type" as an old spelling of "rope_type". */
static tl_status parse_rope(const char *path, const cJSON *root, tl_model_config *cfg, tl_error *err) {
    double theta;
    TL_TRY(get_num(path, root, "rope_theta", "rope_theta", 0, 10000.0, &theta, err));
    const char *group = "rope_parameters";
    const cJSON *rp = field(root, group);
    if (!rp || cJSON_IsNull(rp)) {
        group = "rope_scaling";
        rp = field(root, group);
    }
    cfg->rope_type = TL_ROPE_DEFAULT;
    cfg->rope_factor = 1.0f;
    cfg->rope_low_freq_factor = 0.0f;
    cfg->rope_high_freq_factor = 0.0f;
    cfg->rope_original_max_pos = 0;
    if (rp && !cJSON_IsNull(rp)) {
        char key[64];
        if (!cJSON_IsObject(rp))
            return tl_fail(err, TL_ERR_INPUT, "%s: field '%s' must be an object or null, got %s", path, group, kind(rp));
        if (field(rp, "rope_theta")) {
            snprintf(key, sizeof key, "%s.rope_theta", group);
            TL_TRY(get_num(path, rp, "rope_theta", key, 1, 0.0, &theta, err));
        }
        const cJSON *t = field(rp, "rope_type");
        const char *tname = "rope_type";
        if (!t) {
            t = field(rp, "type");
            tname = "type";
        }
        const char *type;
        if (!t) {
            if (strcmp(group, "rope_scaling") == 0)
                return tl_fail(err, TL_ERR_INPUT, "%s: rope_scaling has no 'rope_type'", path);
            type = "default"; /* v5 rope_parameters may hold rope_theta alone */
        } else if (!cJSON_IsString(t)) {
            return tl_fail(err, TL_ERR_INPUT, "%s: field '%s.%s' must be a string, got %s", path, group, tname,
                           kind(t));
        } else {
            type = t->valuestring;
        }
        if (strcmp(type, "default") == 0) {
            cfg->rope_type = TL_ROPE_DEFAULT;
        } else if (strcmp(type, "linear") == 0 || strcmp(type, "llama3") == 0) {
            double v;
            snprintf(key, sizeof key, "%s.factor", group);
            TL_TRY(get_num(path, rp, "factor", key, 1, 0.0, &v, err));
            cfg->rope_factor = (float)v;
            if (strcmp(type, "llama3") == 0) {
                cfg->rope_type = TL_ROPE_LLAMA3;
                snprintf(key, sizeof key, "%s.low_freq_factor", group);
                TL_TRY(get_num(path, rp, "low_freq_factor", key, 1, 0.0, &v, err));
                cfg->rope_low_freq_factor = (float)v;
                snprintf(key, sizeof key, "%s.high_freq_factor", group);
                TL_TRY(get_num(path, rp, "high_freq_factor", key, 1, 0.0, &v, err));
                cfg->rope_high_freq_factor = (float)v;
                snprintf(key, sizeof key, "%s.original_max_position_embeddings", group);
                TL_TRY(get_int(path, rp, "original_max_position_embeddings", key, 1, 0, 0,
                               &cfg->rope_original_max_pos, err));
            } else {
                cfg->rope_type = TL_ROPE_LINEAR;
            }
        } else {
            return tl_fail(err, TL_ERR_INPUT, "%s: %s.%s '%.60s' is not supported (supported: default, linear, llama3)",
                           path, group, tname, type);
        }
    }
    if (!(theta > 0.0) || theta > 3.0e38)
        return tl_fail(err, TL_ERR_INPUT, "%s: rope_theta must be a positive number, got %g", path, theta);
    cfg->rope_theta = (float)theta;
    return TL_OK;
}

/* tailor has no sliding-window attention: a window is acceptable only when it can never take effect. */
static tl_status check_sliding_window(const char *path, const cJSON *root, const arch_info *ai,
                                      const tl_model_config *cfg, tl_error *err) {
    if (ai->has_bias_field) return TL_OK; /* LlamaConfig has no sliding window */
    if (strcmp(ai->model_type, "qwen2") == 0) {
        int use = 0; /* Qwen2Config drops sliding_window unless use_sliding_window */
        TL_TRY(get_bool(path, root, "use_sliding_window", 0, &use, err));
        if (!use) return TL_OK;
    }
    const cJSON *sw = field(root, "sliding_window");
    int w = ai->default_sliding;
    if (sw) {
        if (cJSON_IsNull(sw)) return TL_OK;
        TL_TRY(get_int(path, root, "sliding_window", "sliding_window", 0, 0, 0, &w, err));
    }
    if (w > 0 && w < cfg->max_position_embeddings)
        return tl_fail(err, TL_ERR_INPUT, "%s: sliding_window %d%s is smaller than max_position_embeddings %d; tailor "
                       "has no sliding-window attention", path, w, sw ? "" : " (the default)",
                       cfg->max_position_embeddings);
    if (w <= 0 && sw)
        return tl_fail(err, TL_ERR_INPUT, "%s: field 'sliding_window' must be a positive integer or null, got %d", path,
                       w);
    return TL_OK;
}

static tl_status parse_config(const char *path, const cJSON *root, tl_model_config *cfg, tl_error *err) {
    const arch_info *ai = NULL;
    if (!cJSON_IsObject(root))
        return tl_fail(err, TL_ERR_INPUT, "%s: must be a JSON object, got %s", path, kind(root));
    TL_TRY(parse_arch(path, root, cfg, &ai, err));
    TL_TRY(get_int(path, root, "vocab_size", "vocab_size", 1, 0, 0, &cfg->vocab_size, err));
    TL_TRY(get_int(path, root, "hidden_size", "hidden_size", 1, 0, 0, &cfg->hidden_size, err));
    TL_TRY(get_int(path, root, "intermediate_size", "intermediate_size", 1, 0, 0, &cfg->intermediate_size, err));
    TL_TRY(get_int(path, root, "num_hidden_layers", "num_hidden_layers", 1, 0, 0, &cfg->num_hidden_layers, err));
    TL_TRY(get_int(path, root, "num_attention_heads", "num_attention_heads", 1, 0, 0, &cfg->num_attention_heads, err));
    TL_TRY(get_int(path, root, "num_key_value_heads", "num_key_value_heads", 0, 1, cfg->num_attention_heads,
                   &cfg->num_key_value_heads, err));
    const cJSON *hd = field(root, "head_dim");
    if (!hd || cJSON_IsNull(hd)) {
        if (cfg->num_attention_heads <= 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: num_attention_heads must be positive, got %d", path,
                           cfg->num_attention_heads);
        if (cfg->hidden_size % cfg->num_attention_heads != 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: hidden_size %d is not divisible by num_attention_heads %d and "
                           "head_dim is not given", path, cfg->hidden_size, cfg->num_attention_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    } else {
        TL_TRY(get_int(path, root, "head_dim", "head_dim", 1, 0, 0, &cfg->head_dim, err));
    }
    TL_TRY(get_int(path, root, "max_position_embeddings", "max_position_embeddings", 0, 0, ai->default_max_pos,
                   &cfg->max_position_embeddings, err));
    double eps;
    TL_TRY(get_num(path, root, "rms_norm_eps", "rms_norm_eps", 0, 1e-6, &eps, err));
    if (!(eps > 0.0) || eps >= 1.0)
        return tl_fail(err, TL_ERR_INPUT, "%s: rms_norm_eps must be in (0, 1), got %g", path, eps);
    cfg->rms_norm_eps = (float)eps;
    TL_TRY(parse_rope(path, root, cfg, err));
    TL_TRY(get_bool(path, root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings, err));
    cfg->attention_bias = ai->always_bias;
    if (ai->has_bias_field) {
        TL_TRY(get_bool(path, root, "attention_bias", 0, &cfg->attention_bias, err));
        int mlp_bias;
        TL_TRY(get_bool(path, root, "mlp_bias", 0, &mlp_bias, err));
        if (mlp_bias) return tl_fail(err, TL_ERR_INPUT, "%s: mlp_bias true is not supported", path);
    }
    const cJSON *act = field(root, "hidden_act");
    if (act && !cJSON_IsNull(act)) {
        if (!cJSON_IsString(act))
            return tl_fail(err, TL_ERR_INPUT, "%s: field 'hidden_act' must be a string, got %s", path, kind(act));
        if (strcmp(act->valuestring, "silu") != 0 && strcmp(act->valuestring, "swish") != 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: hidden_act '%.60s' is not supported (supported: silu)", path,
                           act->valuestring);
    }
    TL_TRY(tl_model_config_check(cfg, path, err));
    return check_sliding_window(path, root, ai, cfg, err);
}

tl_status tl_model_config_check(const tl_model_config *c, const char *what, tl_error *err) {
    const arch_info *ai = arch_by_name(c->arch);
    if (!ai)
        return tl_fail(err, TL_ERR_INPUT, "%s: architecture '%s' is not supported (supported: LlamaForCausalLM, "
                       "MistralForCausalLM, Qwen2ForCausalLM)", what, c->arch);
    if (strcmp(ai->model_type, c->model_type) != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: model_type '%s' does not match architecture '%s' (expected '%s')", what,
                       c->model_type, c->arch, ai->model_type);
    const struct {
        const char *name;
        int v;
    } pos[] = {{"vocab_size", c->vocab_size},
               {"hidden_size", c->hidden_size},
               {"intermediate_size", c->intermediate_size},
               {"num_hidden_layers", c->num_hidden_layers},
               {"num_attention_heads", c->num_attention_heads},
               {"num_key_value_heads", c->num_key_value_heads},
               {"head_dim", c->head_dim},
               {"max_position_embeddings", c->max_position_embeddings}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s must be positive, got %d", what, pos[i].name, pos[i].v);
    /* a declared hidden_size of 2^30 is refused here, naming the field and its limit, not reported later as an
     * allocation failure */
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v > dim_limit(pos[i].name))
            return tl_fail(err, TL_ERR_INPUT, "%s: %s %d is above the supported limit %d", what, pos[i].name,
                           pos[i].v, dim_limit(pos[i].name));
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: num_attention_heads %d is not divisible by num_key_value_heads %d", what,
                       c->num_attention_heads, c->num_key_value_heads);
    if (c->head_dim % 2 != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: head_dim %d must be even (RoPE rotates pairs)", what, c->head_dim);
    if ((long long)c->num_attention_heads * c->head_dim > INT_MAX)
        return tl_fail(err, TL_ERR_INPUT, "%s: num_attention_heads * head_dim is too large", what);
    if (!(c->rms_norm_eps > 0.0f) || !(c->rms_norm_eps < 1.0f))
        return tl_fail(err, TL_ERR_INPUT, "%s: rms_norm_eps must be in (0, 1), got %g", what, (double)c->rms_norm_eps);
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return tl_fail(err, TL_ERR_INPUT, "%s: rope_theta must be a positive number, got %g", what,
                       (double)c->rope_theta);
    if (c->rope_type == TL_ROPE_LINEAR || c->rope_type == TL_ROPE_LLAMA3) {
        if (!(c->rope_factor > 0.0f) || !isfinite(c->rope_factor))
            return tl_fail(err, TL_ERR_INPUT, "%s: rope_scaling.factor must be positive, got %g", what,
                           (double)c->rope_factor);
    } else if (c->rope_type != TL_ROPE_DEFAULT) {
        return tl_fail(err, TL_ERR_INPUT, "%s: unknown rope type %d", what, (int)c->rope_type);
    }
    if (c->rope_type == TL_ROPE_LLAMA3) {
        if (!(c->rope_low_freq_factor > 0.0f) || !isfinite(c->rope_low_freq_factor) ||
            !isfinite(c->rope_high_freq_factor))
            return tl_fail(err, TL_ERR_INPUT, "%s: rope_scaling.low_freq_factor must be positive, got %g", what,
                           (double)c->rope_low_freq_factor);
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return tl_fail(err, TL_ERR_INPUT, "%s: rope_scaling.high_freq_factor %g must be greater than "
                           "low_freq_factor %g", what, (double)c->rope_high_freq_factor,
                           (double)c->rope_low_freq_factor);
        if (c->rope_original_max_pos <= 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: rope_scaling.original_max_position_embeddings must be positive, "
                           "got %d", what, c->rope_original_max_pos);
    }
    if (ai->always_bias && !c->attention_bias)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s always has q/k/v biases (attention_bias must be 1)", what, c->arch);
    if (!ai->always_bias && !ai->has_bias_field && c->attention_bias)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s has no attention biases (attention_bias must be 0)", what, c->arch);
    return TL_OK;
}

/* Reads a whole small file; ENOENT is reported by the caller in its own words. */
static int read_text(const char *path, char **out, size_t *len) {
    *out = NULL;
    /* O_NONBLOCK: a FIFO named config.json must not block the open; only a regular file is read */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return errno ? errno : EIO;
    struct stat sb;
    int e0 = fstat(fd, &sb) != 0 ? errno : S_ISDIR(sb.st_mode) ? EISDIR : !S_ISREG(sb.st_mode) ? ENODEV : 0;
    if (e0) { /* "cannot read: Is a directory" / "No such device" (a FIFO or a device) */
        close(fd);
        return e0;
    }
    FILE *fp = fdopen(fd, "rb");
    if (!fp) {
        close(fd);
        return ENOMEM;
    }
    size_t cap = 1 << 14, n = 0;
    char *buf = malloc(cap + 1);
    int e = 0;
    while (buf) {
        n += fread(buf + n, 1, cap - n, fp);
        if (n < cap) break;
        if (cap >= CFG_MAX_BYTES) {
            e = EFBIG;
            break;
        }
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) free(buf);
        buf = nb;
    }
    if (!buf) e = ENOMEM;
    else if (!e && ferror(fp)) e = EIO;
    fclose(fp);
    if (e) {
        free(buf);
        return e;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

tl_status tl_model_config_load(const char *dir, tl_model_config *cfg, tl_error *err) {
    memset(cfg, 0, sizeof *cfg);
    size_t dl = strlen(dir);
    char *path = malloc(dl + 16);
    if (!path) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", dir);
    snprintf(path, dl + 16, "%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    int e = read_text(path, &text, &len);
    tl_status st;
    if (e == ENOENT || e == ENOTDIR) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: no config.json", dir);
    } else if (e == ENOMEM) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    } else if (e == EFBIG) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: larger than 16 MB, not a model config", path);
    } else if (e) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: cannot read: %s", path, strerror(e));
    } else {
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
        if (!root) {
            int line = 1;
            for (const char *q = text; end && q < end && q < text + len; q++) line += *q == '\n';
            st = tl_fail(err, TL_ERR_INPUT, "%s: invalid JSON at line %d", path, line);
        } else {
            st = parse_config(path, root, cfg, err);
            cJSON_Delete(root);
        }
    }
    free(text);
    free(path);
    return st;
}

/* ------------------------------------------------------------------------------------------------ RoPE */

void tl_rope_inv_freq(const tl_model_config *cfg, float *inv_freq) {
    int hd = cfg->head_dim;
    double theta = cfg->rope_theta, factor = cfg->rope_factor;
    double old_ctx = cfg->rope_original_max_pos, lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow(theta, (double)(2 * i) / (double)hd);
        if (cfg->rope_type == TL_ROPE_LINEAR) {
            f /= factor;
        } else if (cfg->rope_type == TL_ROPE_LLAMA3) {
            /* transformers' _compute_llama3_parameters: long wavelengths slowed by factor, short ones kept,
             * a linear blend between */
            double wavelen = 2.0 * pi / f;
            double low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
            if (wavelen > low_freq_wavelen) {
                f /= factor;
            } else if (!(wavelen < high_freq_wavelen)) {
                double smooth = (old_ctx / wavelen - lo) / (hi - lo);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}

/* ---------------------------------------------------------------------------------------------- writing */

/* The shortest decimal that reads back as the same float, spelled as a Python float ("1e-05", "10000.0"). */
static cJSON *float_item(float v) {
    char buf[48];
    if (fabsf(v) >= 1.0f && fabsf(v) < 1e15f && floorf(v) == v) {
        snprintf(buf, sizeof buf, "%.1f", (double)v); /* 500000.0, not 5e+05 */
        return cJSON_CreateRaw(buf);
    }
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf - 2, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".en")) strcat(buf, ".0");
    return cJSON_CreateRaw(buf);
}

static int add(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return 0;
    if (!cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return 0;
    }
    return 1;
}

tl_status tl_model_config_write_dtype(const char *dir, const tl_model_config *c, const char *torch_dtype,
                                      tl_error *err) {
    TL_TRY(tl_model_config_check(c, "model config", err));
    int ok = 1;
    cJSON *root = cJSON_CreateObject();
    cJSON *archs_arr = cJSON_CreateArray();
    if (!root || !archs_arr) {
        cJSON_Delete(root);
        cJSON_Delete(archs_arr);
        return tl_fail(err, TL_ERR_RUNTIME, "%s/config.json: out of memory", dir);
    }
    cJSON *a0 = cJSON_CreateString(c->arch);
    if (!a0 || !cJSON_AddItemToArray(archs_arr, a0)) ok = 0;
    ok &= add(root, "architectures", archs_arr);
    ok &= add(root, "model_type", cJSON_CreateString(c->model_type));
    ok &= add(root, "vocab_size", cJSON_CreateNumber(c->vocab_size));
    ok &= add(root, "hidden_size", cJSON_CreateNumber(c->hidden_size));
    ok &= add(root, "intermediate_size", cJSON_CreateNumber(c->intermediate_size));
    ok &= add(root, "num_hidden_layers", cJSON_CreateNumber(c->num_hidden_layers));
    ok &= add(root, "num_attention_heads", cJSON_CreateNumber(c->num_attention_heads));
    ok &= add(root, "num_key_value_heads", cJSON_CreateNumber(c->num_key_value_heads));
    ok &= add(root, "head_dim", cJSON_CreateNumber(c->head_dim));
    ok &= add(root, "max_position_embeddings", cJSON_CreateNumber(c->max_position_embeddings));
    ok &= add(root, "rms_norm_eps", float_item(c->rms_norm_eps));
    ok &= add(root, "rope_theta", float_item(c->rope_theta));
    if (c->rope_type == TL_ROPE_DEFAULT) {
        ok &= add(root, "rope_scaling", cJSON_CreateNull());
    } else {
        cJSON *rs = cJSON_CreateObject();
        if (rs) {
            ok &= add(rs, "rope_type", cJSON_CreateString(c->rope_type == TL_ROPE_LLAMA3 ? "llama3" : "linear"));
            ok &= add(rs, "factor", float_item(c->rope_factor));
            if (c->rope_type == TL_ROPE_LLAMA3) {
                ok &= add(rs, "low_freq_factor", float_item(c->rope_low_freq_factor));
                ok &= add(rs, "high_freq_factor", float_item(c->rope_high_freq_factor));
                ok &= add(rs, "original_max_position_embeddings", cJSON_CreateNumber(c->rope_original_max_pos));
            }
        }
        ok &= add(root, "rope_scaling", rs);
    }
    ok &= add(root, "tie_word_embeddings", cJSON_CreateBool(c->tie_word_embeddings));
    if (strcmp(c->model_type, "llama") == 0) {
        ok &= add(root, "attention_bias", cJSON_CreateBool(c->attention_bias));
        ok &= add(root, "mlp_bias", cJSON_CreateFalse());
    } else {
        /* no window: tailor computes full causal attention, so the written model must too */
        ok &= add(root, "sliding_window", cJSON_CreateNull());
        if (strcmp(c->model_type, "qwen2") == 0) {
            ok &= add(root, "use_sliding_window", cJSON_CreateFalse());
            ok &= add(root, "max_window_layers", cJSON_CreateNumber(c->num_hidden_layers));
        }
    }
    ok &= add(root, "hidden_act", cJSON_CreateString("silu"));
    ok &= add(root, "attention_dropout", float_item(0.0f));
    ok &= add(root, "initializer_range", float_item(0.02f));
    ok &= add(root, "use_cache", cJSON_CreateTrue());
    ok &= add(root, "torch_dtype", cJSON_CreateString(torch_dtype ? torch_dtype : "float32"));
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return tl_fail(err, TL_ERR_RUNTIME, "%s/config.json: out of memory", dir);
    size_t dl = strlen(dir);
    char *path = malloc(dl + 16);
    if (!path) {
        cJSON_free(text);
        return tl_fail(err, TL_ERR_RUNTIME, "%s/config.json: out of memory", dir);
    }
    snprintf(path, dl + 16, "%s/config.json", dir);
    size_t tl = strlen(text);
    char *withnl = malloc(tl + 2);
    tl_status st;
    if (!withnl) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    } else {
        memcpy(withnl, text, tl);
        withnl[tl] = '\n';
        st = tl_write_file_atomic(path, withnl, tl + 1, err);
    }
    free(withnl);
    cJSON_free(text);
    free(path);
    return st;
}

tl_status tl_model_config_write(const char *dir, const tl_model_config *cfg, tl_error *err) {
    return tl_model_config_write_dtype(dir, cfg, "float32", err);
}
