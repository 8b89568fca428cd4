/* tl_export: writes each adapter of a pool as an HF PEFT LoRA directory, and reads one back into a slot.
 *
 * The PEFT format is a contract with other programs (peft, vLLM, LoRAX), so names, shapes and config fields
 * follow what PEFT's save_pretrained writes for a default adapter: keys without the adapter name, A [r, in],
 * B [out, r], F32. Directory names are derived from user names, which are arbitrary bytes, so they are made
 * safe and unique here, and the true name travels in the metadata and in index.json. */
#include "trainer/run/tl_export.h"

#include "trainer/run/export_impl.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "data/tl_io.h"

#define HASH_SUFFIX_LEN 9 /* "-" + 8 hex digits */
#define CONFIG_MAX_BYTES (1u << 20)

unsigned tl_fnv1a32(const char *s) {
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

static int safe_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
}

tl_status tl_safe_dirname(const char *name, char *out, size_t cap) {
    if (!name || !out || cap == 0) return TL_ERR_RUNTIME;
    char buf[TL_SAFE_DIRNAME_MAX + 1];
    size_t n = 0;
    int changed = 0;
    const unsigned char *p = (const unsigned char *)name;
    while (*p == '.') { /* leading dots go: no ".", "..", or hidden names */
        p++;
        changed = 1;
    }
    for (; *p; p++) {
        unsigned char c = safe_byte(*p) ? *p : '_';
        if (c != *p) changed = 1;
        if (n < TL_SAFE_DIRNAME_MAX) buf[n] = (char)c;
        n++;
    }
    if (n == 0) {
        /* The name was empty or only dots. */
        strcpy(buf, "adapter");
        n = strlen(buf);
        changed = 1;
    }
    if (n > TL_SAFE_DIRNAME_MAX) changed = 1;
    if (changed) {
        if (n > TL_SAFE_DIRNAME_MAX - HASH_SUFFIX_LEN) n = TL_SAFE_DIRNAME_MAX - HASH_SUFFIX_LEN;
        snprintf(buf + n, sizeof buf - n, "-%08x", tl_fnv1a32(name));
        n += HASH_SUFFIX_LEN;
    }
    buf[n] = '\0';
    if (n + 1 > cap) return TL_ERR_RUNTIME;
    memcpy(out, buf, n + 1);
    return TL_OK;
}

static const char *module_group(int t) { return t <= TL_T_O ? "self_attn" : "mlp"; }

tl_status tl_peft_key(int layer, int target, char which, char *out, size_t cap, tl_error *err) {
    if (target < 0 || target >= TL_N_TARGETS || (which != 'A' && which != 'B'))
        return tl_fail(err, TL_ERR_RUNTIME, "peft key: bad target %d or matrix '%c'", target, which);
    int k = snprintf(out, cap, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, module_group(target),
                     tl_target_names[target], which);
    if (k < 0 || (size_t)k >= cap) return tl_fail(err, TL_ERR_RUNTIME, "peft key: buffer of %zu bytes too small", cap);
    return TL_OK;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF): JSON files must be UTF-8. */
static int utf8_valid(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int extra;
        unsigned cp, min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        p += extra + 1;
    }
    return 1;
}

/* The pool's documented layout (tl_model.h): per layer, per enabled target in TL_T order, A [r, in] then
 * B [out, r], back to back, filling exactly P. Export and load rely on it, so a pool that breaks it is a bug. */
static tl_status check_pool_layout(const tl_lora_pool *p, tl_error *err) {
    if (p->n_slots < 0 || p->rank <= 0 || p->n_layers <= 0 || !p->off_A || !p->off_B || !p->names)
        return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: not initialized (slots %d, rank %d, layers %d)",
                       p->n_slots, p->rank, p->n_layers);
    if ((p->targets & ((1u << TL_N_TARGETS) - 1)) == 0 || (p->targets >> TL_N_TARGETS) != 0)
        return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: bad target mask 0x%x", p->targets);
    size_t off = 0, r = (size_t)p->rank;
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(p->targets & (1u << t))) continue;
            size_t i = (size_t)l * TL_N_TARGETS + (size_t)t;
            if (p->in_dim[t] <= 0 || p->out_dim[t] <= 0 || p->off_A[i] != off ||
                p->off_B[i] != off + r * (size_t)p->in_dim[t])
                return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: layer %d %s: offsets or dims break the layout", l,
                               tl_target_names[t]);
            off += r * (size_t)(p->in_dim[t] + p->out_dim[t]);
        }
    if (p->head_dim > 0) { /* reward models: the score head follows the matrices */
        if (p->off_head != off)
            return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: score head at %zu, expected %zu", p->off_head, off);
        off += (size_t)p->head_dim;
    }
    if (off != p->P)
        return tl_fail(err, TL_ERR_RUNTIME, "adapter pool: P = %zu but the matrices take %zu floats", p->P, off);
    return TL_OK;
}

/* The shortest decimal that reads back as f, as a double: 0.1f is written "0.1", not "0.10000000149011612". */
static double float_decimal(float f) {
    char buf[64];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* adapter_config.json as PEFT's LoraConfig writes it. No field of our own: PEFT passes every key to
 * LoraConfig(**kwargs) and refuses unknown ones, so the true name lives in index.json and in the safetensors
 * metadata. */
static char *adapter_config_json(const tl_lora_pool *p, double alpha, double dropout, const char *base_model,
                                 const char *name) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int ok = 1;
    ok &= cJSON_AddStringToObject(o, "peft_type", "LORA") != NULL;
    /* A reward model is a sequence classifier with one label: PEFT saves its head under modules_to_save. */
    ok &= cJSON_AddStringToObject(o, "task_type", p->head_dim > 0 ? "SEQ_CLS" : "CAUSAL_LM") != NULL;
    ok &= cJSON_AddNumberToObject(o, "r", p->rank) != NULL;
    ok &= cJSON_AddNumberToObject(o, "lora_alpha", alpha) != NULL;
    ok &= cJSON_AddNumberToObject(o, "lora_dropout", dropout) != NULL;
    const char *names[TL_N_TARGETS];
    int nt = 0;
    for (int t = 0; t < TL_N_TARGETS; t++)
        if (p->targets & (1u << t)) names[nt++] = tl_target_names[t];
    qsort(names, (size_t)nt, sizeof names[0], cmp_str);
    cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
    ok &= tm != NULL;
    for (int i = 0; tm && i < nt; i++) {
        cJSON *s = cJSON_CreateString(names[i]);
        ok &= s != NULL && cJSON_AddItemToArray(tm, s);
    }
    ok &= cJSON_AddBoolToObject(o, "use_rslora", p->rslora != 0) != NULL;
    ok &= cJSON_AddStringToObject(o, "bias", "none") != NULL;
    ok &= cJSON_AddStringToObject(o, "base_model_name_or_path", base_model) != NULL;
    ok &= cJSON_AddFalseToObject(o, "fan_in_fan_out") != NULL;
    ok &= cJSON_AddTrueToObject(o, "inference_mode") != NULL;
    ok &= cJSON_AddTrueToObject(o, "init_lora_weights") != NULL;
    if (p->head_dim > 0) {
        cJSON *mts = cJSON_AddArrayToObject(o, "modules_to_save");
        cJSON *sc = cJSON_CreateString("score");
        ok &= mts != NULL && sc != NULL && cJSON_AddItemToArray(mts, sc);
    } else {
        ok &= cJSON_AddNullToObject(o, "modules_to_save") != NULL;
    }
    ok &= cJSON_AddNullToObject(o, "revision") != NULL;
    ok &= cJSON_AddFalseToObject(o, "use_dora") != NULL;
    ok &= cJSON_AddNullToObject(o, "layers_to_transform") != NULL;
    ok &= cJSON_AddNullToObject(o, "layers_pattern") != NULL;
    ok &= cJSON_AddObjectToObject(o, "rank_pattern") != NULL;
    ok &= cJSON_AddObjectToObject(o, "alpha_pattern") != NULL;
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    return text;
}

static tl_status write_json(const char *path, char *text, tl_error *err) {
    if (!text) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory building JSON", path);
    size_t n = strlen(text);
    char *buf = malloc(n + 2);
    if (!buf) {
        cJSON_free(text);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    memcpy(buf, text, n);
    buf[n] = '\n';
    buf[n + 1] = '\0';
    cJSON_free(text);
    tl_status s = tl_write_file_atomic(path, buf, n + 1, err);
    free(buf);
    return s;
}

/* Writes the adapter of one slot (its parameters already on the host in w) into dir. */
static tl_status write_adapter(const tl_lora_pool *p, const float *w, const char *name, double alpha,
                               double dropout, const char *base_model, const char *dir, tl_error *err) {
    char path[TL_PATH_MAX], key[160];
    TL_TRY(tl_path_join(path, sizeof path, dir, "adapter_config.json", err));
    TL_TRY(write_json(path, adapter_config_json(p, alpha, dropout, base_model, name), err));

    tl_st_writer *wr = tl_st_writer_new();
    if (!wr) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory creating the safetensors writer", dir);
    tl_status s = TL_OK;
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(p->targets & (1u << t))) continue;
            size_t i = (size_t)l * TL_N_TARGETS + (size_t)t;
            int64_t shA[2] = {p->rank, p->in_dim[t]}, shB[2] = {p->out_dim[t], p->rank};
            if ((s = tl_peft_key(l, t, 'A', key, sizeof key, err)) != TL_OK) goto done;
            if ((s = tl_st_writer_add_f32(wr, key, shA, 2, w + p->off_A[i], err)) != TL_OK) goto done;
            if ((s = tl_peft_key(l, t, 'B', key, sizeof key, err)) != TL_OK) goto done;
            if ((s = tl_st_writer_add_f32(wr, key, shB, 2, w + p->off_B[i], err)) != TL_OK) goto done;
        }
    if (p->head_dim > 0) {
        int64_t sh[2] = {1, p->head_dim}; /* score: Linear(hidden, num_labels = 1, bias = False) */
        s = tl_st_writer_add_f32(wr, "base_model.model.score.weight", sh, 2, w + p->off_head, err);
        if (s != TL_OK) goto done;
    }
    if ((s = tl_st_writer_meta(wr, "format", "pt", err)) != TL_OK) goto done;
    if ((s = tl_st_writer_meta(wr, "tailor_adapter_name", name, err)) != TL_OK) goto done;
    if ((s = tl_path_join(path, sizeof path, dir, "adapter_model.safetensors", err)) != TL_OK) goto done;
    s = tl_st_writer_write(wr, path, err);
done:
    tl_st_writer_free(wr);
    if (s != TL_OK) return s;
    return tl_fsync_dir(dir, err);
}

/* A set of taken directory names, compared ignoring ASCII case (open addressing, no deletions). */
typedef struct {
    char **slot;
    size_t cap;
} name_set;

static size_t fold_hash(const char *s) {
    uint32_t h = 2166136261u;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        h ^= (uint32_t)tolower(*c);
        h *= 16777619u;
    }
    return h;
}

static int set_has(const name_set *ns, const char *s) {
    for (size_t i = fold_hash(s) & (ns->cap - 1);; i = (i + 1) & (ns->cap - 1)) {
        if (!ns->slot[i]) return 0;
        if (strcasecmp(ns->slot[i], s) == 0) return 1;
    }
}

static void set_put(name_set *ns, char *s) {
    size_t i = fold_hash(s) & (ns->cap - 1);
    while (ns->slot[i]) i = (i + 1) & (ns->cap - 1);
    ns->slot[i] = s;
}

/* dirs[s] = unique directory name of slot s (malloc'd). "index.json" is reserved. */
static tl_status assign_dirs(const tl_lora_pool *p, char **dirs, tl_error *err) {
    name_set ns = {NULL, 16};
    while (ns.cap < 2 * ((size_t)p->n_slots + 1)) ns.cap *= 2;
    ns.slot = calloc(ns.cap, sizeof *ns.slot);
    char *reserved = strdup("index.json");
    if (!ns.slot || !reserved) {
        free(ns.slot);
        free(reserved);
        return tl_fail(err, TL_ERR_RUNTIME, "export: out of memory");
    }
    set_put(&ns, reserved);
    tl_status s = TL_OK;
    for (int i = 0; i < p->n_slots && s == TL_OK; i++) {
        char base[TL_SAFE_DIRNAME_MAX + 1], cand[TL_SAFE_DIRNAME_MAX + 24];
        if (tl_safe_dirname(p->names[i], base, sizeof base) != TL_OK) {
            s = tl_fail(err, TL_ERR_RUNTIME, "export: no directory name for adapter %d", i);
            break;
        }
        snprintf(cand, sizeof cand, "%s", base);
        for (long k = 2; set_has(&ns, cand); k++) snprintf(cand, sizeof cand, "%s-%ld", base, k);
        dirs[i] = strdup(cand);
        if (!dirs[i]) s = tl_fail(err, TL_ERR_RUNTIME, "export: out of memory");
        else set_put(&ns, dirs[i]);
    }
    free(reserved);
    free(ns.slot);
    return s;
}

/* The top-level file names an export writes: GGUF files, safetensors shards, manifests, config and the HF side
 * files of a merged directory. A file listed in index.json under another name is never replaced. */
static int export_file_name(const char *nm) {
    static const char *const fixed[] = {"vllm-lora-modules.json", "lorax-adapters.json", "llama-server-lora.json",
                                        "llama-server-args.txt", "config.json", "model.safetensors.index.json",
                                        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                                        "chat_template.jinja", "chat_template.json", "generation_config.json"};
    size_t n = strlen(nm);
    if ((n > 5 && !strcmp(nm + n - 5, ".gguf")) || (n > 12 && !strcmp(nm + n - 12, ".safetensors"))) return 1;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!strcmp(nm, fixed[i])) return 1;
    return 0;
}

/* An existing out_dir may be replaced only if it is empty, or is an earlier tailor export: its index.json (a
 * regular file) carries "format": TL_EXPORT_FORMAT, every entry of out_dir is index.json or an adapter folder
 * that index.json lists, and each such folder holds only adapter_config.json and adapter_model.safetensors.
 * Anything else is refused, naming the first stranger, so replacing never deletes what tailor did not write. */
static tl_status check_replaceable(const char *out_dir, tl_error *err) {
    struct stat st;
    if (lstat(out_dir, &st) != 0) {
        if (errno == ENOENT) return TL_OK;
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot stat: %s", out_dir, strerror(errno));
    }
    if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode))
        return tl_fail(err, TL_ERR_INPUT, "%s: export directory exists and is not a directory; refusing to replace it",
                       out_dir);
    char idx[TL_PATH_MAX];
    TL_TRY(tl_path_join(idx, sizeof idx, out_dir, "index.json", err));
    cJSON *index = NULL;
    const char *why = NULL;
    if (lstat(idx, &st) == 0) {
        char *text = NULL;
        size_t n = 0;
        if (!S_ISREG(st.st_mode)) {
            why = "index.json is not a regular file";
        } else if (tl_read_file(idx, 64u << 20, &text, &n, err) != TL_OK) {
            why = "index.json cannot be read";
        } else {
            index = cJSON_ParseWithLength(text, n);
            free(text);
            const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(index, "format");
            if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, TL_EXPORT_FORMAT) != 0 ||
                !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(index, "adapters")))
                why = "its index.json has no \"format\": \"" TL_EXPORT_FORMAT "\" and \"adapters\" list";
        }
    }
    DIR *d = why ? NULL : opendir(out_dir);
    if (!why && !d) {
        cJSON_Delete(index);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot list: %s", out_dir, strerror(errno));
    }
    char stranger[TL_SAFE_DIRNAME_MAX + 32] = "";
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *nm = e->d_name;
        if (!strcmp(nm, ".") || !strcmp(nm, "..") || (index && !strcmp(nm, "index.json"))) continue;
        int listed = 0, file = 0;
        const cJSON *it, *list = cJSON_GetObjectItemCaseSensitive(index, "adapters");
        cJSON_ArrayForEach(it, list) {
            const cJSON *dir = cJSON_GetObjectItemCaseSensitive(it, "dir");
            if (cJSON_IsString(dir) && tl_plain_name(dir->valuestring) && !strcmp(dir->valuestring, nm)) listed = 1;
            const cJSON *fl = cJSON_GetObjectItemCaseSensitive(it, "file");
            if (cJSON_IsString(fl) && tl_plain_name(fl->valuestring) && !strcmp(fl->valuestring, nm)) file = 1;
        }
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(index, "files"))
            if (cJSON_IsString(it) && tl_plain_name(it->valuestring) && !strcmp(it->valuestring, nm)) file = 1;
        if (file && !export_file_name(nm)) file = 0; /* listed, but not a name any export writes: a stranger */
        char sub[TL_PATH_MAX];
        if (!listed && file) { /* a file the export wrote at the top level (a GGUF, a shard, a manifest) */
            if (tl_path_join(sub, sizeof sub, out_dir, nm, err) == TL_OK && lstat(sub, &st) == 0 &&
                S_ISREG(st.st_mode))
                continue;
        }
        if (listed && (tl_path_join(sub, sizeof sub, out_dir, nm, err) != TL_OK || lstat(sub, &st) != 0 ||
                       !S_ISDIR(st.st_mode)))
            listed = 0;
        if (!listed) {
            snprintf(stranger, sizeof stranger, "%.*s", TL_SAFE_DIRNAME_MAX + 16, nm);
            break;
        }
        /* inside an adapter folder: only the two files write_adapter writes */
        DIR *ad = opendir(sub);
        struct dirent *f;
        if (!ad) snprintf(stranger, sizeof stranger, "%.*s (cannot list it)", TL_SAFE_DIRNAME_MAX, nm);
        while (ad && !stranger[0] && (f = readdir(ad))) {
            const char *fn = f->d_name;
            if (!strcmp(fn, ".") || !strcmp(fn, "..")) continue;
            char fp[TL_PATH_MAX + 64];
            int ours = (!strcmp(fn, "adapter_config.json") || !strcmp(fn, "adapter_model.safetensors")) &&
                       tl_path_join(fp, sizeof fp, sub, fn, err) == TL_OK && lstat(fp, &st) == 0 && S_ISREG(st.st_mode);
            if (!ours) snprintf(stranger, sizeof stranger, "%.*s/%.*s", TL_SAFE_DIRNAME_MAX, nm, 16, fn);
        }
        if (ad) closedir(ad);
        if (stranger[0]) break;
    }
    if (d) closedir(d);
    cJSON_Delete(index);
    if (why)
        return tl_fail(err, TL_ERR_INPUT, "%s: exists and is not a tailor export (%s); refusing to replace it",
                       out_dir, why);
    if (stranger[0])
        return tl_fail(err, TL_ERR_INPUT, "%s: exists and holds '%s', which is not part of a tailor export (an "
                       "index.json with \"format\": \"" TL_EXPORT_FORMAT "\" listing it); refusing to replace it (nothing was written or deleted)",
                       out_dir, stranger);
    return TL_OK;
}

/* The tensor of the pool layout that holds float i of a slot, as its PEFT key. */
static void tensor_of(const tl_lora_pool *p, size_t i, char *out, size_t cap) {
    snprintf(out, cap, "(offset %zu)", i);
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(p->targets & (1u << t))) continue;
            size_t k = (size_t)l * TL_N_TARGETS + (size_t)t, r = (size_t)p->rank;
            if (i >= p->off_A[k] && i < p->off_B[k] + (size_t)p->out_dim[t] * r) {
                tl_error ignored;
                (void)tl_peft_key(l, t, i < p->off_B[k] ? 'A' : 'B', out, cap, &ignored);
                return;
            }
        }
    if (p->head_dim > 0 && i >= p->off_head) snprintf(out, cap, "base_model.model.score.weight");
}

/* Every parameter of one slot is finite (a NaN or Inf would be served silently). */
static tl_status check_finite_slot(const tl_lora_pool *p, const float *w, const char *what, tl_error *err) {
    for (size_t i = 0; i < p->P; i++)
        if (!isfinite(w[i])) {
            char key[160];
            tensor_of(p, i, key, sizeof key);
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor %s holds %g, expected finite numbers", what, key,
                           (double)w[i]);
        }
    return TL_OK;
}

/* ---- the export driver: every format ---- */

tl_status tl_export_read_slot(const tl_export_job *j, int slot, float *w, tl_error *err) {
    const tl_lora_pool *p = j->p;
    tl_status s = j->rd->read(j->rd->ctx, 0, (size_t)slot * p->P, w, p->P, err);
    if (s != TL_OK) {
        tl_wrap(err, "exporting adapter '%s'", p->names[slot]);
        return s;
    }
    char what[TL_PATH_MAX];
    snprintf(what, sizeof what, "export: adapter '%.200s'", p->names[slot]);
    return check_finite_slot(p, w, what, err);
}

tl_status tl_export_add_file(tl_export_job *j, const char *name, tl_error *err) {
    cJSON *str = cJSON_CreateString(name);
    if (!str || !cJSON_AddItemToArray(j->files, str)) {
        cJSON_Delete(str);
        return tl_fail(err, TL_ERR_RUNTIME, "export: out of memory building index.json");
    }
    return TL_OK;
}

tl_status tl_export_write_text(tl_export_job *j, const char *name, char *text, tl_error *err) {
    char path[TL_PATH_MAX];
    if (tl_path_join(path, sizeof path, j->tmp, name, err) != TL_OK) {
        cJSON_free(text);
        return TL_ERR_RUNTIME;
    }
    TL_TRY(write_json(path, text, err));
    return tl_export_add_file(j, name, err);
}

/* Adds {"name", "dir" or "file", "steps"} to index.json's adapters. */
static tl_status index_entry(tl_export_job *j, int slot, const char *dir, const char *file, tl_error *err) {
    cJSON *list = cJSON_GetObjectItemCaseSensitive(j->index, "adapters");
    cJSON *e = cJSON_CreateObject();
    int ok = e && cJSON_AddItemToArray(list, e);
    if (!ok) cJSON_Delete(e);
    ok = ok && cJSON_AddStringToObject(e, "name", j->p->names[slot]);
    if (dir) ok = ok && cJSON_AddStringToObject(e, "dir", dir);
    if (file) ok = ok && cJSON_AddStringToObject(e, "file", file);
    ok = ok && cJSON_AddNumberToObject(e, "steps", j->p->steps ? (double)j->p->steps[slot] : 0.0);
    return ok ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "export: out of memory building index.json");
}

/* The PEFT tree: one adapter directory per slot, read one adapter at a time. */
static tl_status build_peft(tl_export_job *j, double dropout, tl_error *err) {
    const tl_lora_pool *p = j->p;
    float *w = malloc((p->P ? p->P : 1) * sizeof *w);
    if (!w) return tl_fail(err, TL_ERR_RUNTIME, "export: out of memory for %zu parameters", p->P);
    tl_status s = TL_OK;
    char dir[TL_PATH_MAX];
    for (int i = 0; i < p->n_slots && s == TL_OK; i++) {
        if ((s = tl_path_join(dir, sizeof dir, j->tmp, j->dirs[i], err)) != TL_OK) break;
        if (mkdir(dir, 0755) != 0) {
            s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create directory: %s", dir, strerror(errno));
            break;
        }
        if ((s = tl_export_read_slot(j, i, w, err)) != TL_OK) break;
        if ((s = write_adapter(p, w, p->names[i], j->alpha, dropout, j->base_model, dir, err)) != TL_OK) {
            tl_wrap(err, "exporting adapter '%s'", p->names[i]);
            break;
        }
        s = index_entry(j, i, j->dirs[i], NULL, err);
    }
    free(w);
    return s;
}

/* The backend's own memory as a reader (tl_export_pool). */
typedef struct {
    const tl_lora_pool *p;
    tl_backend *be;
} backend_reader;

static tl_status read_backend(void *ctx, int k, size_t first, float *dst, size_t n, tl_error *err) {
    backend_reader *b = ctx;
    if (k != 0) return tl_fail(err, TL_ERR_RUNTIME, "export: reader asked for state %d", k);
    b->be->download(b->be, dst, b->p->params + first, n * sizeof *dst);
    return b->be->status(b->be, err);
}

static const char *const format_names[] = {"peft", "gguf", "merged", "merged-gguf"};

int tl_export_format_parse(const char *s) {
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, format_names[i])) return i;
    return -1;
}

const char *tl_export_format_name(tl_export_format f) { return (unsigned)f < 4 ? format_names[f] : "?"; }

int tl_export_dtype_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "f32")) return TL_EXPORT_F32;
    if (!strcmp(s, "f16")) return TL_EXPORT_F16;
    if (!strcmp(s, "bf16")) return TL_EXPORT_BF16;
    return -1;
}

static tl_status run_export(const tl_lora_pool *p, const tl_state_reader *rd, const tl_config *cfg,
                            const tl_export_opts *o, const char *out_dir, int *n_written, tl_error *err);

tl_status tl_export_pool(const tl_lora_pool *p, tl_backend *be, const tl_config *cfg, const char *base_model,
                         const char *out_dir, int *n_written, tl_error *err) {
    backend_reader b = {p, be};
    tl_state_reader rd = {read_backend, &b};
    tl_export_opts o = {.format = TL_EXPORT_PEFT, .base_model = base_model};
    return run_export(p, &rd, cfg, &o, out_dir, n_written, err);
}

tl_status tl_export_pool_from(const tl_lora_pool *p, const tl_state_reader *rd, const tl_config *cfg,
                              const char *base_model, const char *out_dir, int *n_written, tl_error *err) {
    tl_export_opts o = {.format = TL_EXPORT_PEFT, .base_model = base_model};
    return run_export(p, rd, cfg, &o, out_dir, n_written, err);
}

tl_status tl_export_run(const tl_lora_pool *layout, const tl_state_reader *rd, const tl_config *cfg,
                        const tl_export_opts *o, const char *out_dir, int *n_written, tl_error *err) {
    return run_export(layout, rd, cfg, o, out_dir, n_written, err);
}

static int ends_with_gguf(const char *p) {
    size_t n = strlen(p);
    return n >= 5 && !strcmp(p + n - 5, ".gguf");
}

/* The slot of the adapter named user; TL_ERR_INPUT naming the run's first adapters when absent. */
static tl_status find_user(const tl_lora_pool *p, const char *user, int *slot, tl_error *err) {
    if (!user || !*user)
        return tl_fail(err, TL_ERR_INPUT, "export: --user NAME is needed for a merged export (one adapter is merged "
                       "into the base model)");
    for (int i = 0; i < p->n_slots; i++)
        if (!strcmp(p->names[i], user)) {
            *slot = i;
            return TL_OK;
        }
    return tl_fail(err, TL_ERR_INPUT, "export: --user '%.200s' is not an adapter of this run (%d adapters, the first "
                   "'%.100s')", user, p->n_slots, p->n_slots ? p->names[0] : "");
}

static tl_status run_export(const tl_lora_pool *p, const tl_state_reader *rd, const tl_config *cfg,
                            const tl_export_opts *o, const char *out_dir, int *n_written, tl_error *err) {
    if (n_written) *n_written = 0;
    if (!out_dir || !*out_dir) return tl_fail(err, TL_ERR_INPUT, "export: empty output directory");
    if (!rd || !o) return tl_fail(err, TL_ERR_RUNTIME, "export: no reader or options");
    if ((unsigned)o->format > TL_EXPORT_MERGED_GGUF || (unsigned)o->dtype > TL_EXPORT_BF16)
        return tl_fail(err, TL_ERR_INPUT, "export: unknown format %d or dtype %d", (int)o->format, (int)o->dtype);
    TL_TRY(check_pool_layout(p, err));
    const char *base_model = o->base_model ? o->base_model : cfg ? cfg->model_path : "";
    double alpha = float_decimal(p->alpha), dropout = float_decimal(p->dropout);
    if (cfg) {
        if (cfg->adapter_rank != p->rank || cfg->adapter_targets != p->targets ||
            (cfg->adapter_rslora != 0) != (p->rslora != 0) || (float)cfg->adapter_alpha != p->alpha ||
            (float)cfg->adapter_dropout != p->dropout)
            return tl_fail(err, TL_ERR_INPUT,
                           "export: config (rank %d, alpha %g, dropout %g, rslora %d, targets 0x%x) does not match "
                           "the adapters (rank %d, alpha %g, dropout %g, rslora %d, targets 0x%x)",
                           cfg->adapter_rank, cfg->adapter_alpha, cfg->adapter_dropout, cfg->adapter_rslora,
                           cfg->adapter_targets, p->rank, (double)p->alpha, (double)p->dropout, p->rslora,
                           p->targets);
        alpha = cfg->adapter_alpha;
        dropout = cfg->adapter_dropout;
    }
    if (!utf8_valid(base_model)) return tl_fail(err, TL_ERR_INPUT, "export: base model path is not valid UTF-8");
    for (int i = 0; i < p->n_slots; i++)
        if (!p->names[i] || !utf8_valid(p->names[i]))
            return tl_fail(err, TL_ERR_INPUT, "export: name of adapter %d is not valid UTF-8 (JSON requires UTF-8)", i);
    int slot = -1;
    if (o->format == TL_EXPORT_MERGED || o->format == TL_EXPORT_MERGED_GGUF) TL_TRY(find_user(p, o->user, &slot, err));
    if (o->format != TL_EXPORT_PEFT && p->head_dim > 0)
        return tl_fail(err, TL_ERR_INPUT, "export: --format %s: these adapters carry a reward model's score head "
                       "(task.type reward), which %s cannot take; export them with --format peft (SEQ_CLS)",
                       tl_export_format_name(o->format),
                       o->format == TL_EXPORT_GGUF ? "a llama.cpp LoRA" : "a causal language model");

    if (o->format == TL_EXPORT_MERGED_GGUF && !ends_with_gguf(base_model))
        return tl_fail(err, TL_ERR_INPUT, "export: --format merged-gguf needs a GGUF base model (model.path ending in "
                       ".gguf), but the run's base is the HF directory %s: write --format merged and convert that "
                       "directory with llama.cpp's convert_hf_to_gguf.py", base_model);

    char fin[TL_PATH_MAX], parent[TL_PATH_MAX], tmp[TL_PATH_MAX];
    TL_TRY(tl_path_trim(out_dir, fin, sizeof fin, err));
    if (strcmp(fin, "/") == 0) return tl_fail(err, TL_ERR_INPUT, "export: refusing to export into /");
    int k = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", fin);
    if (k < 0 || (size_t)k >= sizeof tmp) return tl_fail(err, TL_ERR_INPUT, "%s: path too long", fin);
    tl_export_job j = {.p = p, .rd = rd, .o = o, .base_model = base_model, .alpha = alpha, .tmp = tmp};
    if (fin[0] == '/') {
        snprintf(j.final_abs, sizeof j.final_abs, "%s", fin);
    } else {
        char cwd[TL_PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) return tl_fail(err, TL_ERR_RUNTIME, "export: getcwd: %s", strerror(errno));
        TL_TRY(tl_path_join(j.final_abs, sizeof j.final_abs, cwd, fin, err));
    }
    TL_TRY(check_replaceable(fin, err));
    TL_TRY(tl_path_parent(fin, parent, sizeof parent, err));
    int parent_made = !tl_path_exists(parent); /* removed again (when empty) if the export fails */
    TL_TRY(tl_mkdir_p(parent, err));
    /* a new sibling of a fresh name: nothing that exists is ever removed to make room for it */
    if (!mkdtemp(tmp)) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", tmp, strerror(errno));
    if (chmod(tmp, 0755) != 0) {
        int e = errno;
        (void)rmdir(tmp);
        if (parent_made) (void)rmdir(parent);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot chmod: %s", tmp, strerror(e));
    }

    j.dirs = calloc((size_t)p->n_slots + 1, sizeof *j.dirs);
    j.index = cJSON_CreateObject();
    int ok = j.dirs && j.index && cJSON_AddStringToObject(j.index, "format", TL_EXPORT_FORMAT) &&
             cJSON_AddStringToObject(j.index, "kind", tl_export_format_name(o->format)) &&
             cJSON_AddArrayToObject(j.index, "adapters") && (j.files = cJSON_AddArrayToObject(j.index, "files"));
    tl_status s = ok ? assign_dirs(p, j.dirs, err) : tl_fail(err, TL_ERR_RUNTIME, "export: out of memory");
    if (s == TL_OK) {
        switch (o->format) {
        case TL_EXPORT_PEFT: s = build_peft(&j, dropout, err); break;
        case TL_EXPORT_GGUF: s = tl_export_write_gguf_loras(&j, err); break;
        case TL_EXPORT_MERGED: s = tl_export_write_merged(&j, slot, err); break;
        case TL_EXPORT_MERGED_GGUF: s = tl_export_write_merged_gguf(&j, slot, err); break;
        }
    }
    if (s == TL_OK && slot >= 0) s = index_entry(&j, slot, NULL, NULL, err);
    if (s == TL_OK && (o->format == TL_EXPORT_PEFT || o->format == TL_EXPORT_GGUF))
        s = tl_export_write_manifests(&j, err);
    if (s == TL_OK) {
        char path[TL_PATH_MAX];
        s = tl_path_join(path, sizeof path, tmp, "index.json", err);
        if (s == TL_OK) s = write_json(path, cJSON_Print(j.index), err);
    }
    if (s == TL_OK) s = tl_fsync_dir(tmp, err);
    if (s == TL_OK) s = tl_replace_dir(tmp, fin, err);
    if (s != TL_OK) {
        tl_error ignored;
        (void)tl_remove_tree(tmp, &ignored); /* the first error is the one to report */
        if (parent_made) (void)rmdir(parent);
    }
    for (int i = 0; j.dirs && i < p->n_slots; i++) free(j.dirs[i]);
    free(j.dirs);
    cJSON_Delete(j.index);
    if (s == TL_OK && n_written) *n_written = slot >= 0 ? 1 : p->n_slots;
    return s;
}


/* ---- reading an adapter back ---- */

static tl_status check_peft_config(const char *path, const cJSON *o, const tl_lora_pool *p, tl_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (it && (!cJSON_IsString(it) || strcmp(it->valuestring, "LORA") != 0))
        return tl_fail(err, TL_ERR_INPUT, "%s: peft_type: expected \"LORA\"", path);
    it = cJSON_GetObjectItemCaseSensitive(o, "r");
    if (!cJSON_IsNumber(it) || it->valuedouble != (double)p->rank)
        return tl_fail(err, TL_ERR_INPUT, "%s: r: expected %d (the rank of the adapters being trained)", path,
                       p->rank);
    it = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    if (!cJSON_IsArray(it))
        return tl_fail(err, TL_ERR_INPUT, "%s: target_modules: expected a list of module names", path);
    uint32_t mask = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        int t = -1;
        for (int j = 0; cJSON_IsString(e) && j < TL_N_TARGETS; j++)
            if (strcmp(e->valuestring, tl_target_names[j]) == 0) t = j;
        if (t < 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: target_modules: '%s' is not a module tailor trains", path,
                           cJSON_IsString(e) ? e->valuestring : "(not a string)");
        mask |= 1u << t;
    }
    if (mask != p->targets) {
        char want[128] = "", got[128] = "";
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (p->targets & (1u << t)) snprintf(want + strlen(want), sizeof want - strlen(want), " %s", tl_target_names[t]);
            if (mask & (1u << t)) snprintf(got + strlen(got), sizeof got - strlen(got), " %s", tl_target_names[t]);
        }
        return tl_fail(err, TL_ERR_INPUT, "%s: target_modules:%s; expected:%s", path, got, want);
    }
    it = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    if (!cJSON_IsNumber(it) || !(it->valuedouble > 0))
        return tl_fail(err, TL_ERR_INPUT, "%s: lora_alpha: expected a positive number", path);
    double alpha = it->valuedouble;
    it = cJSON_GetObjectItemCaseSensitive(o, "use_rslora");
    int rs = cJSON_IsTrue(it);
    double scale = rs ? alpha / sqrt((double)p->rank) : alpha / p->rank;
    if (fabs(scale - (double)p->scale) > 1e-5 * fabs((double)p->scale))
        return tl_fail(err, TL_ERR_INPUT, "%s: lora_alpha %g with use_rslora %s gives scaling %g; expected %g", path,
                       alpha, rs ? "true" : "false", scale, (double)p->scale);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "use_dora")))
        return tl_fail(err, TL_ERR_INPUT, "%s: use_dora: DoRA adapters are not supported", path);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "fan_in_fan_out")))
        return tl_fail(err, TL_ERR_INPUT, "%s: fan_in_fan_out: expected false", path);
    it = cJSON_GetObjectItemCaseSensitive(o, "bias");
    if (it && !cJSON_IsNull(it) && (!cJSON_IsString(it) || strcmp(it->valuestring, "none") != 0))
        return tl_fail(err, TL_ERR_INPUT, "%s: bias: expected \"none\"", path);
    const char *pats[2] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        it = cJSON_GetObjectItemCaseSensitive(o, pats[i]);
        if (it && !cJSON_IsNull(it) && (!cJSON_IsObject(it) || it->child))
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: per-module ranks or alphas are not supported", path, pats[i]);
    }
    return TL_OK;
}

/* Reads every expected tensor into w (P floats); any other tensor in the file is an error. */
static tl_status read_peft_tensors(const char *path, tl_st_file *f, const tl_lora_pool *p, float *w,
                                   tl_error *err) {
    char key[160];
    int expected = 0;
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(p->targets & (1u << t))) continue;
            size_t i = (size_t)l * TL_N_TARGETS + (size_t)t;
            int64_t shA[2] = {p->rank, p->in_dim[t]}, shB[2] = {p->out_dim[t], p->rank};
            for (int m = 0; m < 2; m++) {
                TL_TRY(tl_peft_key(l, t, m ? 'B' : 'A', key, sizeof key, err));
                if (!tl_st_find(f, key))
                    return tl_fail(err, TL_ERR_INPUT, "%s: tensor %s missing (layer %d of %d)", path, key, l,
                                   p->n_layers);
                TL_TRY(tl_st_read_f32(f, key, m ? shB : shA, 2, w + (m ? p->off_B[i] : p->off_A[i]), err));
                expected++;
            }
        }
    const char *head_key = "base_model.model.score.weight"; /* a reward model's score head (modules_to_save) */
    if (p->head_dim > 0) {
        int64_t sh[2] = {1, p->head_dim};
        if (!tl_st_find(f, head_key))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor %s missing (task.type reward needs the score head of a "
                           "reward model's adapter)", path, head_key);
        TL_TRY(tl_st_read_f32(f, head_key, sh, 2, w + p->off_head, err));
        expected++;
    }
    if (tl_st_count(f) == expected) return TL_OK;
    /* Name the first tensor that is not one of ours. */
    for (int j = 0; j < tl_st_count(f); j++) {
        const char *name = tl_st_get(f, j)->name;
        int ours = 0;
        for (int l = 0; l < p->n_layers && !ours; l++)
            for (int t = 0; t < TL_N_TARGETS && !ours; t++) {
                if (!(p->targets & (1u << t))) continue;
                for (int m = 0; m < 2 && !ours; m++) {
                    TL_TRY(tl_peft_key(l, t, m ? 'B' : 'A', key, sizeof key, err));
                    ours = strcmp(key, name) == 0;
                }
            }
        if (!ours && p->head_dim > 0 && !strcmp(name, head_key)) ours = 1;
        if (!ours && !strcmp(name, head_key))
            return tl_fail(err, TL_ERR_INPUT, "%s: holds a reward model's score head (%s): a policy run cannot start "
                           "from a reward adapter", path, name);
        if (!ours)
            return tl_fail(err, TL_ERR_INPUT, "%s: unexpected tensor %s (the model has %d layers; targets as in the "
                           "config)", path, name, p->n_layers);
    }
    return tl_fail(err, TL_ERR_INPUT, "%s: %d tensors, expected %d", path, tl_st_count(f), expected);
}

tl_status tl_peft_load(const char *dir, tl_lora_pool *p, tl_backend *be, int slot, tl_error *err) {
    TL_TRY(check_pool_layout(p, err));
    if (slot < 0 || slot >= p->n_slots)
        return tl_fail(err, TL_ERR_RUNTIME, "peft load: slot %d out of range [0, %d)", slot, p->n_slots);
    char path[TL_PATH_MAX];
    TL_TRY(tl_path_join(path, sizeof path, dir, "adapter_config.json", err));
    char *text = NULL;
    TL_TRY(tl_read_file(path, CONFIG_MAX_BYTES, &text, NULL, err));
    cJSON *o = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return tl_fail(err, TL_ERR_INPUT, "%s: not a JSON object", path);
    }
    tl_status s = check_peft_config(path, o, p, err);
    cJSON_Delete(o);
    if (s != TL_OK) return s;

    TL_TRY(tl_path_join(path, sizeof path, dir, "adapter_model.safetensors", err));
    tl_st_file *f = NULL;
    TL_TRY(tl_st_open(path, &f, err));
    float *w = malloc((p->P ? p->P : 1) * sizeof *w);
    if (!w) {
        tl_st_close(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for %zu parameters", path, p->P);
    }
    s = read_peft_tensors(path, f, p, w, err);
    if (s == TL_OK) s = check_finite_slot(p, w, path, err);
    tl_st_close(f);
    if (s == TL_OK) {
        size_t off = (size_t)slot * p->P;
        be->upload(be, p->params + off, w, p->P * sizeof *w);
        if (p->m) be->zero(be, p->m + off, p->P * sizeof *w);
        if (p->v) be->zero(be, p->v + off, p->P * sizeof *w);
        if (p->steps) p->steps[slot] = 0;
        s = be->status(be, err);
    }
    free(w);
    return s;
}
