/* PEFT export of a hand-made adapter pool: safe and unique directory names for hostile user names, nothing
 * written outside the output directory, every field of adapter_config.json, every tensor (key, shape, dtype,
 * bits) of adapter_model.safetensors, index.json, replacement of an earlier export without leftovers, failure
 * halfway leaving the earlier export intact, and the round trip through tl_peft_load with its mismatch errors.
 *
 * The backend is a test double whose "device memory" is host memory (upload/download are memcpy); it counts
 * transfers and can be told to report a failure, as a real backend's status() does. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "trainer/run/tl_export.h"
#include "data/tl_io.h"

#include "tests/lib/tl_check.h"
#include "tests/lib/tl_test_host.h"
static float rng_float(void) {
    uint64_t r = rng_next();
    switch (r % 64) { /* values whose bits a lossy path would change */
    case 0: return -0.0f;
    case 1: return 1e-40f; /* subnormal */
    case 2: return 3.4e38f;
    default: return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}

/* ---- a hand-made pool ---- */

static const int DIM_IN[TL_N_TARGETS] = {12, 12, 12, 12, 12, 12, 20};
static const int DIM_OUT[TL_N_TARGETS] = {12, 4, 4, 12, 20, 20, 12};

static int64_t step_count(void) { return (int64_t)(rng_next() % 100000); }

static void make_pool(tl_lora_pool *p, tl_backend *be, int n_slots, char *const *names, int rank, int n_layers,
                      uint32_t targets, float alpha, int rslora, const int *in, const int *out) {
    host_make_pool(p, be, n_slots, names, rank, n_layers, targets, alpha, rslora, 0.05f, in, out, rng_float,
                   step_count);
}

/* ---- helpers ---- */

static unsigned fnv(const char *s) {
    unsigned h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static int only_entry(const char *dir, const char *name) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int ok = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, name)) {
            fprintf(stderr, "  unexpected entry %s/%s\n", dir, e->d_name);
            ok = 0;
        }
    closedir(d);
    return ok;
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    tl_error err;
    if (tl_read_file(path, 1 << 20, &text, NULL, &err) != TL_OK) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    cJSON *o = cJSON_Parse(text);
    free(text);
    return o;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* ---- tl_safe_dirname ---- */

static void test_safe_dirname(void) {
    char out[TL_SAFE_DIRNAME_MAX + 1], want[256];
    struct {
        const char *name, *base; /* base: expected before the hash; NULL: unchanged */
    } cases[] = {
        {"alice", NULL},          {"Alice-B_2.0", NULL},   {"../evil", "_evil"}, {"a/b", "a_b"},
        {"..", "adapter"},        {".", "adapter"},        {"", "adapter"},      {".hidden", "hidden"},
        {"\xe5\x90\x8d\xe5\x89\x8d", "______"},            {"x\ny", "x_y"},      {"a b\tc", "a_b_c"},
        {"..a..b", "a..b"},       {"C:\\x", "C__x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(tl_safe_dirname(cases[i].name, out, sizeof out) == TL_OK, "safe_dirname case %zu", i);
        if (cases[i].base) snprintf(want, sizeof want, "%s-%08x", cases[i].base, fnv(cases[i].name));
        else snprintf(want, sizeof want, "%s", cases[i].name);
        CHECK(strcmp(out, want) == 0, "safe_dirname(case %zu) = '%s', expected '%s'", i, out, want);
    }
    /* length: exactly 100 safe bytes stay; 101 are cut to 91 + hash */
    char longn[300];
    memset(longn, 'L', 100);
    longn[100] = '\0';
    CHECK(tl_safe_dirname(longn, out, sizeof out) == TL_OK && strcmp(out, longn) == 0, "100-byte name unchanged");
    memset(longn, 'L', 299);
    longn[299] = '\0';
    CHECK(tl_safe_dirname(longn, out, sizeof out) == TL_OK, "long name");
    snprintf(want, sizeof want, "%.91s-%08x", longn, fnv(longn));
    CHECK(strcmp(out, want) == 0 && strlen(out) == TL_SAFE_DIRNAME_MAX, "long name -> '%s'", out);
    /* a buffer too small is an error, not a truncation */
    char small[8];
    CHECK(tl_safe_dirname("abcdefghij", small, sizeof small) != TL_OK, "small buffer must fail");
    CHECK(tl_safe_dirname("abcdefg", small, sizeof small) == TL_OK && !strcmp(small, "abcdefg"), "fits exactly");
    CHECK(tl_safe_dirname(NULL, out, sizeof out) != TL_OK, "NULL name must fail");

    /* random byte strings: only safe bytes, never a leading dot, never empty, bounded, deterministic */
    for (int k = 0; k < 500; k++) {
        char name[160], again[TL_SAFE_DIRNAME_MAX + 1];
        int len = (int)(rng_next() % 150);
        for (int i = 0; i < len; i++) name[i] = (char)(1 + rng_next() % 255);
        name[len] = '\0';
        CHECK(tl_safe_dirname(name, out, sizeof out) == TL_OK, "random name %d", k);
        size_t n = strlen(out);
        int bad = n == 0 || n > TL_SAFE_DIRNAME_MAX || out[0] == '.';
        for (size_t i = 0; i < n; i++) {
            char c = out[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                  c == '_' || c == '.'))
                bad = 1;
        }
        CHECK(!bad, "random name %d gives unsafe '%s'", k, out);
        CHECK(tl_safe_dirname(name, again, sizeof again) == TL_OK && !strcmp(out, again), "deterministic");
    }
}

/* ---- export ---- */

#define NS 15
static char *g_names[NS];
static char g_lit[128], g_long1[200], g_long2[200];

static void init_names(void) {
    char tmp[TL_SAFE_DIRNAME_MAX + 1];
    tl_safe_dirname("a/b", tmp, sizeof tmp);
    snprintf(g_lit, sizeof g_lit, "%s", tmp); /* a true name equal to another's safe name */
    memset(g_long1, 'L', 150), g_long1[150] = '\0';
    memset(g_long2, 'L', 149), g_long2[149] = 'M', g_long2[150] = '\0';
    char *n[NS] = {"alice", "../evil", "a/b",  "..",         ".hidden", "\xe5\x90\x8d\xe5\x89\x8d", "x\ny", "Bob",
                   "bob",   g_lit,     "index.json", g_long1, g_long2,   "",                           "."};
    memcpy(g_names, n, sizeof n);
}

/* The directory each slot must get (safe name, then collision suffix). */
static void expected_dir(int s, char *out, size_t cap) {
    char base[TL_SAFE_DIRNAME_MAX + 1];
    tl_safe_dirname(g_names[s], base, sizeof base);
    if (s == 8 || s == 9 || s == 10) snprintf(out, cap, "%s-2", base); /* bob~Bob, lit~a/b, index.json */
    else snprintf(out, cap, "%s", base);
}

static void check_adapter_dir(const tl_lora_pool *p, int s, const char *dir, const char *base_model,
                              double want_alpha) {
    char path[TL_PATH_MAX];
    CHECK(count_entries(dir) == 2, "%s: %d entries, expected 2", dir, count_entries(dir));

    xpath(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *c = read_json(path);
    CHECK(cJSON_IsObject(c), "%s: not a JSON object", path);
    if (c) {
        CHECK(jstr(c, "peft_type") && !strcmp(jstr(c, "peft_type"), "LORA"), "peft_type");
        CHECK(jstr(c, "task_type") && !strcmp(jstr(c, "task_type"), "CAUSAL_LM"), "task_type");
        CHECK(jstr(c, "bias") && !strcmp(jstr(c, "bias"), "none"), "bias");
        CHECK(jstr(c, "base_model_name_or_path") && !strcmp(jstr(c, "base_model_name_or_path"), base_model),
              "base_model_name_or_path");
        CHECK(!cJSON_GetObjectItemCaseSensitive(c, "tailor_adapter_name"),
              "slot %d: adapter_config.json must hold only PEFT's keys (PEFT refuses others)", s);
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(c, "r");
        CHECK(cJSON_IsNumber(it) && it->valuedouble == p->rank, "r");
        it = cJSON_GetObjectItemCaseSensitive(c, "lora_alpha");
        CHECK(cJSON_IsNumber(it) && it->valuedouble == want_alpha, "lora_alpha %.17g, expected %.17g",
              it ? it->valuedouble : -1, want_alpha);
        it = cJSON_GetObjectItemCaseSensitive(c, "lora_dropout");
        CHECK(cJSON_IsNumber(it) && it->valuedouble == 0.05, "lora_dropout %.17g", it ? it->valuedouble : -1);
        CHECK(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(c, "use_rslora")) &&
                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "use_rslora")) == (p->rslora != 0),
              "use_rslora");
        CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "fan_in_fan_out")), "fan_in_fan_out");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "inference_mode")), "inference_mode");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "init_lora_weights")), "init_lora_weights");
        CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "use_dora")), "use_dora");
        const char *nulls[] = {"modules_to_save", "revision", "layers_to_transform", "layers_pattern"};
        for (int i = 0; i < 4; i++) CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, nulls[i])), "%s", nulls[i]);
        const char *objs[] = {"rank_pattern", "alpha_pattern"};
        for (int i = 0; i < 2; i++) {
            it = cJSON_GetObjectItemCaseSensitive(c, objs[i]);
            CHECK(cJSON_IsObject(it) && !it->child, "%s must be {}", objs[i]);
        }
        /* target_modules: exactly the enabled targets, sorted */
        it = cJSON_GetObjectItemCaseSensitive(c, "target_modules");
        const char *want[TL_N_TARGETS];
        int nw = 0;
        for (int t = 0; t < TL_N_TARGETS; t++)
            if (p->targets & (1u << t)) want[nw++] = tl_target_names[t];
        for (int i = 0; i < nw; i++)
            for (int j = i + 1; j < nw; j++)
                if (strcmp(want[j], want[i]) < 0) {
                    const char *x = want[i];
                    want[i] = want[j], want[j] = x;
                }
        CHECK(cJSON_IsArray(it) && cJSON_GetArraySize(it) == nw, "target_modules size");
        for (int i = 0; cJSON_IsArray(it) && i < nw && i < cJSON_GetArraySize(it); i++) {
            const cJSON *e = cJSON_GetArrayItem(it, i);
            CHECK(cJSON_IsString(e) && !strcmp(e->valuestring, want[i]), "target_modules[%d]", i);
        }
    }
    cJSON_Delete(c);

    xpath(path, sizeof path, "%s/adapter_model.safetensors", dir);
    tl_st_file *f = NULL;
    tl_error err = {0};
    CHECK(tl_st_open(path, &f, &err) == TL_OK, "open %s: %s", path, err.msg);
    if (!f) return;
    CHECK(tl_st_metadata(f, "format") && !strcmp(tl_st_metadata(f, "format"), "pt"), "format metadata");
    CHECK(tl_st_metadata(f, "tailor_adapter_name") && !strcmp(tl_st_metadata(f, "tailor_adapter_name"), p->names[s]),
          "tailor_adapter_name metadata of slot %d", s);
    int nt = 0;
    for (int t = 0; t < TL_N_TARGETS; t++) nt += (p->targets >> t) & 1;
    CHECK(tl_st_count(f) == 2 * nt * p->n_layers, "%d tensors, expected %d", tl_st_count(f), 2 * nt * p->n_layers);
    const float *slot = p->params + (size_t)s * p->P;
    for (int l = 0; l < p->n_layers; l++)
        for (int t = 0; t < TL_N_TARGETS; t++) {
            if (!(p->targets & (1u << t))) continue;
            for (int m = 0; m < 2; m++) {
                char key[200];
                snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l,
                         t < TL_T_GATE ? "self_attn" : "mlp", tl_target_names[t], m ? 'B' : 'A');
                const tl_st_tensor *ten = tl_st_find(f, key);
                CHECK(ten != NULL, "%s: missing %s", path, key);
                if (!ten) continue;
                int64_t rows = m ? p->out_dim[t] : p->rank, cols = m ? p->rank : p->in_dim[t];
                CHECK(ten->dtype == TL_DT_F32 && ten->ndim == 2 && ten->shape[0] == rows && ten->shape[1] == cols,
                      "%s: dtype/shape", key);
                size_t n = (size_t)(rows * cols);
                float *got = malloc(n * sizeof *got);
                for (size_t i = 0; i < n; i++) got[i] = NAN;
                int64_t shape[2] = {rows, cols};
                CHECK(tl_st_read_f32(f, key, shape, 2, got, &err) == TL_OK, "read %s: %s", key, err.msg);
                const float *src = slot + (m ? p->off_B[l * TL_N_TARGETS + t] : p->off_A[l * TL_N_TARGETS + t]);
                CHECK(memcmp(got, src, n * sizeof *got) == 0, "%s: values differ", key);
                free(got);
            }
        }
    tl_st_close(f);
}

static void check_export(const tl_lora_pool *p, const char *root, const char *out, const char *base_model,
                         double want_alpha) {
    CHECK(only_entry(root, "adapters"), "export wrote outside its directory");
    /* index.json, the adapter folders, and the vLLM and LoRAX manifests (listed in index.json's "files") */
    CHECK(count_entries(out) == p->n_slots + 3, "%s: %d entries, expected %d", out, count_entries(out),
          p->n_slots + 3);
    char path[TL_PATH_MAX], dir[TL_PATH_MAX], want[160];
    xpath(path, sizeof path, "%s/index.json", out);
    cJSON *idx = read_json(path);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(idx, "files");
    CHECK(cJSON_GetArraySize(files) == 2 && !strcmp(cJSON_GetArrayItem(files, 0)->valuestring, "vllm-lora-modules.json") &&
          !strcmp(cJSON_GetArrayItem(files, 1)->valuestring, "lorax-adapters.json"), "index.json files");
    for (int k = 0; k < 2; k++) {
        char mp[TL_PATH_MAX];
        xpath(mp, sizeof mp, "%s/%s", out, k ? "lorax-adapters.json" : "vllm-lora-modules.json");
        cJSON *man = read_json(mp);
        CHECK(cJSON_GetArraySize(man) == p->n_slots, "%s: %d entries", mp, cJSON_GetArraySize(man));
        for (int s = 0; s < p->n_slots && s < cJSON_GetArraySize(man); s++) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(man, s), "name");
            CHECK(cJSON_IsString(nm) && !strcmp(nm->valuestring, p->names[s]), "%s: entry %d name", mp, s);
        }
        cJSON_Delete(man);
    }
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(idx, "adapters");
    CHECK(cJSON_IsArray(list) && cJSON_GetArraySize(list) == p->n_slots, "index.json adapters");
    for (int s = 0; s < p->n_slots; s++) {
        expected_dir(s, want, sizeof want);
        const cJSON *e = cJSON_GetArrayItem(list, s);
        CHECK(jstr(e, "name") && !strcmp(jstr(e, "name"), p->names[s]), "index.json[%d].name", s);
        CHECK(jstr(e, "dir") && !strcmp(jstr(e, "dir"), want), "index.json[%d].dir = %s, expected %s", s,
              jstr(e, "dir") ? jstr(e, "dir") : "(none)", want);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "steps");
        CHECK(cJSON_IsNumber(st) && st->valuedouble == (double)p->steps[s], "index.json[%d].steps", s);
        xpath(dir, sizeof dir, "%s/%s", out, want);
        struct stat sb;
        CHECK(lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode), "%s: not a directory", dir);
        check_adapter_dir(p, s, dir, base_model, want_alpha);
    }
    cJSON_Delete(idx);
}

static void test_export(const char *root) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p;
    uint32_t targets = (1u << TL_T_Q) | (1u << TL_T_V) | (1u << TL_T_GATE) | (1u << TL_T_DOWN);
    make_pool(&p, &be, NS, g_names, 4, 3, targets, 0.1f, 0, DIM_IN, DIM_OUT);
    char out[TL_PATH_MAX];
    xpath(out, sizeof out, "%s/adapters", root);
    tl_error err = {0};
    int written = -1;

    CHECK(tl_export_pool(&p, &be, NULL, "models/tiny llama", out, &written, &err) == TL_OK, "export: %s", err.msg);
    CHECK(written == NS, "n_written %d", written);
    CHECK(hc.downloads >= NS, "export must read parameters through the backend");
    check_export(&p, root, out, "models/tiny llama", 0.1);

    /* Replace with a different pool (fewer adapters, new values, rsLoRA): only the new export remains. */
    tl_lora_pool q;
    make_pool(&q, &be, 3, g_names, 4, 3, targets, 16.0f, 1, DIM_IN, DIM_OUT);
    tl_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.adapter_rank = 4, cfg.adapter_targets = targets, cfg.adapter_rslora = 1, cfg.adapter_alpha = 16.0;
    cfg.adapter_dropout = 0.05;
    snprintf(cfg.model_path, sizeof cfg.model_path, "base/model");
    CHECK(tl_export_pool(&q, &be, &cfg, NULL, out, &written, &err) == TL_OK, "re-export: %s", err.msg);
    CHECK(written == 3, "n_written %d", written);
    check_export(&q, root, out, "base/model", 16.0);

    /* A config that disagrees with the pool is refused before anything is written. */
    cfg.adapter_rank = 8;
    CHECK(tl_export_pool(&q, &be, &cfg, NULL, out, &written, &err) == TL_ERR_INPUT, "config mismatch must fail");
    cfg.adapter_rank = 4;

    /* A backend failure halfway: the earlier export stays as it was, no temporary directory is left. */
    hc.fail_after_downloads = hc.downloads + 7;
    err.msg[0] = '\0';
    CHECK(tl_export_pool(&p, &be, NULL, "x", out, &written, &err) == TL_ERR_RUNTIME, "injected failure must fail");
    CHECK(strstr(err.msg, "injected failure") != NULL, "error message: %s", err.msg);
    hc.fail_after_downloads = -1;
    check_export(&q, root, out, "base/model", 16.0);

    /* Names that are not UTF-8 cannot go into JSON. */
    free(q.names[1]);
    q.names[1] = strdup("bad\xff");
    CHECK(tl_export_pool(&q, &be, NULL, "x", out, &written, &err) == TL_ERR_INPUT, "non-UTF-8 name must fail");
    CHECK(strstr(err.msg, "adapter 1") != NULL, "error names the adapter: %s", err.msg);
    free(q.names[1]);
    q.names[1] = strdup(g_names[1]);
    check_export(&q, root, out, "base/model", 16.0);

    /* A directory that is not an earlier export is never replaced; an empty one is. */
    char other[TL_PATH_MAX], keep[TL_PATH_MAX + 16];
    xpath(other, sizeof other, "%s/adapters/not-an-export", root);
    CHECK(tl_mkdir_p(other, &err) == TL_OK, "mkdir: %s", err.msg);
    xpath(keep, sizeof keep, "%s/keep.txt", other);
    CHECK(tl_write_file_atomic(keep, "x", 1, &err) == TL_OK, "write: %s", err.msg);
    CHECK(tl_export_pool(&q, &be, NULL, "x", other, &written, &err) == TL_ERR_INPUT, "non-export dir must be kept");
    CHECK(tl_is_file(keep), "unrelated file deleted");
    CHECK(tl_export_pool(&q, &be, NULL, "x", keep, &written, &err) == TL_ERR_INPUT, "a file must be kept");
    CHECK(tl_remove_tree(other, &err) == TL_OK, "cleanup");
    xpath(other, sizeof other, "%s/empty", root);
    CHECK(tl_mkdir_p(other, &err) == TL_OK, "mkdir: %s", err.msg);
    char trailing[TL_PATH_MAX + 2];
    xpath(trailing, sizeof trailing, "%s//", other); /* trailing slashes: same directory */
    CHECK(tl_export_pool(&q, &be, NULL, "x", trailing, &written, &err) == TL_OK, "empty dir: %s", err.msg);
    xpath(keep, sizeof keep, "%s/index.json", other);
    CHECK(tl_is_file(keep), "export into an empty directory");
    CHECK(tl_remove_tree(other, &err) == TL_OK, "cleanup");
    check_export(&q, root, out, "base/model", 16.0);

    free_pool(&q, &be);
    free_pool(&p, &be);
}

/* ---- tl_peft_load ---- */

static int bits_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

static void poison(tl_lora_pool *p) {
    size_t n = (size_t)p->n_slots * p->P;
    for (size_t i = 0; i < n; i++) p->params[i] = NAN, p->m[i] = 7.0f, p->v[i] = 7.0f;
    for (int s = 0; s < p->n_slots; s++) p->steps[s] = 55;
}

static void test_peft_load(const char *root) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    uint32_t targets = (1u << TL_T_Q) | (1u << TL_T_K) | (1u << TL_T_O) | (1u << TL_T_UP);
    char *names[3] = {"u1", "u/2", "u3"};
    tl_lora_pool src;
    make_pool(&src, &be, 3, names, 3, 2, targets, 6.0f, 0, DIM_IN, DIM_OUT);
    char out[TL_PATH_MAX], dir[TL_PATH_MAX + 64], sub[TL_SAFE_DIRNAME_MAX + 1];
    xpath(out, sizeof out, "%s/peft", root);
    tl_error err = {0};
    CHECK(tl_export_pool(&src, &be, NULL, "m", out, NULL, &err) == TL_OK, "export: %s", err.msg);
    tl_safe_dirname("u/2", sub, sizeof sub);
    xpath(dir, sizeof dir, "%s/%s", out, sub);

    tl_lora_pool dst;
    make_pool(&dst, &be, 2, names, 3, 2, targets, 6.0f, 0, DIM_IN, DIM_OUT);
    poison(&dst);
    float *before = malloc(dst.P * sizeof(float));
    memcpy(before, dst.params, dst.P * sizeof(float));
    long up0 = hc.uploads;
    CHECK(tl_peft_load(dir, &dst, &be, 1, &err) == TL_OK, "peft load: %s", err.msg);
    CHECK(hc.uploads > up0, "load must write through the backend");
    CHECK(bits_equal(dst.params + dst.P, src.params + src.P, dst.P), "loaded slot differs from the exported one");
    CHECK(bits_equal(dst.params, before, dst.P), "slot 0 must be untouched");
    int zero = 1;
    for (size_t i = 0; i < dst.P; i++) zero &= dst.m[dst.P + i] == 0.0f && dst.v[dst.P + i] == 0.0f;
    CHECK(zero, "Adam moments of the loaded slot must be reset");
    CHECK(dst.m[0] == 7.0f && dst.v[0] == 7.0f, "other slot's moments untouched");
    CHECK(dst.steps[1] == 0 && dst.steps[0] == 55, "step counts");
    CHECK(tl_peft_load(dir, &dst, &be, 2, &err) != TL_OK, "slot out of range must fail");
    free_pool(&dst, &be);

    /* Mismatches: each a TL_ERR_INPUT naming the problem, leaving the slot as it was. */
    struct {
        int rank, layers;
        uint32_t targets;
        float alpha;
        int rslora, q_in;
        const char *what;
    } bad[] = {
        {2, 2, targets, 6.0f, 0, 12, "r:"},
        {3, 2, targets | (1u << TL_T_V), 6.0f, 0, 12, "target_modules"},
        {3, 2, targets, 8.0f, 0, 12, "scaling"},
        {3, 2, targets, 6.0f, 1, 12, "scaling"},
        {3, 3, targets, 6.0f, 0, 12, "missing"},
        {3, 1, targets, 6.0f, 0, 12, "unexpected tensor"},
        {3, 2, targets, 6.0f, 0, 16, "shape"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int in[TL_N_TARGETS];
        memcpy(in, DIM_IN, sizeof in);
        in[TL_T_Q] = bad[k].q_in;
        make_pool(&dst, &be, 1, names, bad[k].rank, bad[k].layers, bad[k].targets, bad[k].alpha, bad[k].rslora, in,
                  DIM_OUT);
        poison(&dst);
        err.msg[0] = '\0';
        CHECK(tl_peft_load(dir, &dst, &be, 0, &err) == TL_ERR_INPUT, "mismatch %zu must be TL_ERR_INPUT", k);
        CHECK(strstr(err.msg, bad[k].what) != NULL, "mismatch %zu: message '%s' lacks '%s'", k, err.msg,
              bad[k].what);
        int still = 1;
        for (size_t i = 0; i < dst.P; i++) still &= (isnan(dst.params[i]) && dst.m[i] == 7.0f);
        CHECK(still && dst.steps[0] == 55, "mismatch %zu changed the slot", k);
        free_pool(&dst, &be);
    }

    /* A damaged adapter_config.json */
    char cfgp[TL_PATH_MAX + 96];
    xpath(cfgp, sizeof cfgp, "%s/adapter_config.json", dir);
    CHECK(tl_write_file_atomic(cfgp, "{\"r\": 3,", 8, &err) == TL_OK, "write: %s", err.msg);
    make_pool(&dst, &be, 1, names, 3, 2, targets, 6.0f, 0, DIM_IN, DIM_OUT);
    CHECK(tl_peft_load(dir, &dst, &be, 0, &err) == TL_ERR_INPUT, "broken JSON must be TL_ERR_INPUT");
    CHECK(tl_peft_load(root, &dst, &be, 0, &err) == TL_ERR_INPUT, "a directory without adapter files");
    free_pool(&dst, &be);
    free(before);
    free_pool(&src, &be);
}

/* A reward model's export loads back into a reward pool, score head included (adapter.init_from of a reward run),
 * and a policy pool refuses it naming the head instead of calling it an unexpected tensor. */
static void test_peft_load_reward(const char *root) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    uint32_t targets = (1u << TL_T_Q) | (1u << TL_T_V);
    char *names[2] = {"r1", "r2"};
    const int head = DIM_IN[TL_T_Q];
    tl_lora_pool src, dst;
    host_make_pool_head(&src, &be, 2, names, 2, 2, targets, 4.0f, 0, 0.0f, DIM_IN, DIM_OUT, head, rng_float,
                        step_count);
    char out[TL_PATH_MAX], dir[TL_PATH_MAX + 64];
    xpath(out, sizeof out, "%s/reward", root);
    tl_error err = {0};
    CHECK(tl_export_pool(&src, &be, NULL, "m", out, NULL, &err) == TL_OK, "reward export: %s", err.msg);
    xpath(dir, sizeof dir, "%s/r2", out);

    host_make_pool_head(&dst, &be, 1, names, 2, 2, targets, 4.0f, 0, 0.0f, DIM_IN, DIM_OUT, head, rng_float,
                        step_count);
    poison(&dst);
    CHECK(tl_peft_load(dir, &dst, &be, 0, &err) == TL_OK, "reward load: %s", err.msg);
    CHECK(bits_equal(dst.params, src.params + src.P, dst.P), "reward slot (matrices and score head) differs");
    CHECK(bits_equal(dst.params + dst.off_head, src.params + src.P + src.off_head, (size_t)head),
          "score head differs");
    free_pool(&dst, &be);

    make_pool(&dst, &be, 1, names, 2, 2, targets, 4.0f, 0, DIM_IN, DIM_OUT);
    poison(&dst);
    err.msg[0] = '\0';
    CHECK(tl_peft_load(dir, &dst, &be, 0, &err) == TL_ERR_INPUT, "a policy pool must refuse a reward adapter");
    CHECK(strstr(err.msg, "score head") != NULL, "message names the score head: %s", err.msg);
    free_pool(&dst, &be);
    free_pool(&src, &be);
}

/* ---- what an export may replace, and what it refuses to write ---- */

static void write_text(const char *path, const char *text) {
    tl_error err = {0};
    CHECK(tl_write_file_atomic(path, text, strlen(text), &err) == TL_OK, "write %s: %s", path, err.msg);
}

static void test_replace_rules(const char *root) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    char *names[2] = {"ann", "bo"};
    tl_lora_pool p;
    make_pool(&p, &be, 2, names, 2, 1, (1u << TL_T_Q) | (1u << TL_T_V), 4.0f, 0, DIM_IN, DIM_OUT);
    tl_error err = {0};
    int written = 0;
    char out[TL_PATH_MAX], path[TL_PATH_MAX + 64], keep[TL_PATH_MAX + 64];

    /* a folder of the user's that merely holds a file named index.json: refused, both files kept */
    xpath(out, sizeof out, "%s/mine", root);
    CHECK(tl_mkdir_p(out, &err) == TL_OK, "mkdir: %s", err.msg);
    xpath(path, sizeof path, "%s/index.json", out);
    write_text(path, "{\"adapters\": []}\n");
    xpath(keep, sizeof keep, "%s/notes.txt", out);
    write_text(keep, "mine");
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT, "an unmarked index.json must be "
          "refused");
    CHECK(strstr(err.msg, "not a tailor export") && strstr(err.msg, out), "message: %s", err.msg);
    CHECK(tl_is_file(keep) && tl_is_file(path), "the user's files must survive");
    /* the mark alone does not do: an entry index.json does not list is the user's */
    write_text(path, "{\"format\": \"" TL_EXPORT_FORMAT "\", \"adapters\": []}\n");
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT, "an unlisted file must be refused");
    CHECK(strstr(err.msg, "notes.txt") != NULL, "the entry is named: %s", err.msg);
    CHECK(tl_is_file(keep), "the user's file must survive");
    /* a listed name that is a file, not a folder, is not the export's either */
    write_text(path, "{\"format\": \"" TL_EXPORT_FORMAT "\", \"adapters\": [{\"name\": \"x\", \"dir\": "
               "\"notes.txt\"}]}\n");
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT, "a listed file must be refused");
    CHECK(tl_is_file(keep), "the user's file must survive");

    /* a real export is marked and replaceable; with a file added it is not */
    xpath(out, sizeof out, "%s/exp", root);
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_OK, "export: %s", err.msg);
    xpath(path, sizeof path, "%s/index.json", out);
    char *text = NULL;
    CHECK(tl_read_file(path, 1 << 20, &text, NULL, &err) == TL_OK, "read: %s", err.msg);
    cJSON *idx = text ? cJSON_Parse(text) : NULL;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(idx, "format");
    CHECK(cJSON_IsString(fmt) && !strcmp(fmt->valuestring, TL_EXPORT_FORMAT), "index.json carries the mark");
    cJSON_Delete(idx);
    free(text);
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_OK, "re-export: %s", err.msg);
    xpath(keep, sizeof keep, "%s/mine.txt", out);
    write_text(keep, "x");
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT && strstr(err.msg, "mine.txt"),
          "a file added beside the adapters must be refused: %s", err.msg);
    CHECK(tl_is_file(keep), "the added file must survive");
    CHECK(unlink(keep) == 0, "unlink");
    xpath(keep, sizeof keep, "%s/ann/mine.txt", out); /* inside an adapter folder: not the export's either */
    write_text(keep, "x");
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT && strstr(err.msg, "ann/mine.txt"),
          "a file added inside an adapter folder must be refused: %s", err.msg);
    CHECK(tl_is_file(keep), "the added file must survive");
    CHECK(unlink(keep) == 0, "unlink");
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_OK, "clean again: %s", err.msg);

    /* a symlink to a folder is never replaced (nor followed) */
    char link[TL_PATH_MAX + 16];
    xpath(link, sizeof link, "%s/link", root);
    CHECK(symlink(out, link) == 0, "symlink");
    CHECK(tl_export_pool(&p, &be, NULL, "m", link, &written, &err) == TL_ERR_INPUT, "a symlink must be refused");
    xpath(path, sizeof path, "%s/index.json", out);
    CHECK(tl_is_file(path), "the export behind the link must survive");

    /* a NaN or Inf parameter: refused naming the adapter and the tensor; the earlier export stays as it was */
    int count0 = count_entries(root);
    size_t i = p.off_B[TL_N_TARGETS * 0 + TL_T_V] + 3;
    p.params[p.P + i] = INFINITY;
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT, "Inf must be refused");
    CHECK(strstr(err.msg, "'bo'") && strstr(err.msg, "layers.0.self_attn.v_proj.lora_B.weight"),
          "names adapter and tensor: %s", err.msg);
    p.params[p.P + i] = NAN;
    p.params[p.off_A[TL_T_Q]] = 1.0f;
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, &written, &err) == TL_ERR_INPUT, "NaN must be refused");
    CHECK(count_entries(root) == count0, "no temporary directory left behind");
    CHECK(tl_is_file(path), "the earlier export must survive");
    free_pool(&p, &be);
}

/* tl_peft_load (adapter.init_from) refuses a NaN in the file, naming the file and the tensor */
static void test_peft_load_nan(const char *root) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    char *names[1] = {"solo"};
    tl_lora_pool p;
    make_pool(&p, &be, 1, names, 2, 1, 1u << TL_T_O, 4.0f, 0, DIM_IN, DIM_OUT);
    char out[TL_PATH_MAX], dir[TL_PATH_MAX + 16];
    xpath(out, sizeof out, "%s/nan", root);
    tl_error err = {0};
    CHECK(tl_export_pool(&p, &be, NULL, "m", out, NULL, &err) == TL_OK, "export: %s", err.msg);
    xpath(dir, sizeof dir, "%s/solo", out);
    /* poke a NaN into lora_A: the first tensor's data starts right after the header */
    char st[TL_PATH_MAX + 64];
    xpath(st, sizeof st, "%s/adapter_model.safetensors", dir);
    tl_st_file *f = NULL;
    CHECK(tl_st_open(st, &f, &err) == TL_OK, "open: %s", err.msg);
    char key[160];
    tl_peft_key(0, TL_T_O, 'A', key, sizeof key, &err);
    const tl_st_tensor *t = f ? tl_st_find(f, key) : NULL;
    uint64_t off = t ? t->begin : 0;
    if (f) tl_st_close(f);
    FILE *fp = fopen(st, "r+b");
    unsigned char hdr[8] = {0};
    uint64_t n = 0;
    if (fp && fread(hdr, 1, 8, fp) == 8)
        for (int k = 0; k < 8; k++) n |= (uint64_t)hdr[k] << (8 * k);
    float nan = NAN;
    CHECK(t && fp && n > 0 && fseek(fp, (long)(8 + n + off + 4), SEEK_SET) == 0 && fwrite(&nan, 4, 1, fp) == 1,
          "poke");
    if (fp) fclose(fp);
    CHECK(tl_peft_load(dir, &p, &be, 0, &err) == TL_ERR_INPUT, "NaN must be refused");
    CHECK(strstr(err.msg, "adapter_model.safetensors") && strstr(err.msg, key), "names file and tensor: %s", err.msg);
    free_pool(&p, &be);
}

int main(void) {
    uint64_t seed = host_seed();
    char root[TL_PATH_MAX];
    if (host_scratch(root, "tl_test_export")) return 1;
    char r1[TL_PATH_MAX + 8], r2[TL_PATH_MAX + 8];
    xpath(r1, sizeof r1, "%s/a", root);
    xpath(r2, sizeof r2, "%s/b", root);
    tl_error err;
    if (tl_mkdir_p(r1, &err) || tl_mkdir_p(r2, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    init_names();
    test_safe_dirname();
    test_export(r1);
    test_peft_load(r2);
    test_peft_load_reward(r2);
    test_replace_rules(r2);
    test_peft_load_nan(r2);
    host_scratch_remove(root);
    return tl_check_done_seed("test_export", (unsigned long long)seed);
}
