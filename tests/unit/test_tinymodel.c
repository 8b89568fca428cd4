/* test_tinymodel: random HF-layout models written by tl_write_random_model, reopened with tl_tensor_src.
 *
 * For F32 and BF16, one file and three shards, tied and untied, with and without q/k/v biases: config.json
 * loads back equal; every tensor the HF Llama layout needs is present with its shape (the expected list is
 * written out here, not taken from the writer) and nothing else is; values equal the generator exactly (BF16:
 * its rounding); the init statistics are what the header promises; seeds change values. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "trainer/model/tl_tinymodel.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_fs_fixture.h"

static char g_dir[512];

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
} expect_t;

static int expected_tensors(const tl_model_config *c, expect_t *out) {
    int n = 0;
    int64_t V = c->vocab_size, d = c->hidden_size, f = c->intermediate_size;
    int64_t q = c->num_attention_heads * c->head_dim, kv = c->num_key_value_heads * c->head_dim;
#define E(nm, a, b)                                                    \
    do {                                                               \
        snprintf(out[n].name, sizeof out[n].name, "%s", nm);           \
        out[n].ndim = (b) ? 2 : 1, out[n].shape[0] = a, out[n].shape[1] = b; \
        n++;                                                           \
    } while (0)
    E("model.embed_tokens.weight", V, d);
    E("model.norm.weight", d, 0);
    if (!c->tie_word_embeddings) E("lm_head.weight", V, d);
    char nm[96];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const struct {
            const char *s;
            int64_t a, b;
            int bias_only;
        } per[] = {{"input_layernorm.weight", d, 0, 0},   {"post_attention_layernorm.weight", d, 0, 0},
                   {"self_attn.q_proj.weight", q, d, 0},  {"self_attn.k_proj.weight", kv, d, 0},
                   {"self_attn.v_proj.weight", kv, d, 0}, {"self_attn.o_proj.weight", d, q, 0},
                   {"mlp.gate_proj.weight", f, d, 0},     {"mlp.up_proj.weight", f, d, 0},
                   {"mlp.down_proj.weight", d, f, 0},     {"self_attn.q_proj.bias", q, 0, 1},
                   {"self_attn.k_proj.bias", kv, 0, 1},   {"self_attn.v_proj.bias", kv, 0, 1},
                   {"self_attn.o_proj.bias", d, 0, 2}};
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++) {
            if (per[i].bias_only && !c->attention_bias) continue;
            if (per[i].bias_only == 2 && !tl_model_has_o_bias(c)) continue; /* Llama's o_proj bias, not Qwen2's */
            snprintf(nm, sizeof nm, "model.layers.%d.%s", l, per[i].s);
            E(nm, per[i].a, per[i].b);
        }
    }
#undef E
    return n;
}

/* Tensors actually stored in the directory's safetensors files, and a check on the shard files. */
static int stored_tensor_count(const char *dir, int n_shards, const char *dtype) {
    char p[1024];
    int total = 0;
    for (int s = 0; s < n_shards; s++) {
        if (n_shards == 1) snprintf(p, sizeof p, "%s/model.safetensors", dir);
        else snprintf(p, sizeof p, "%s/model-%05d-of-%05d.safetensors", dir, s + 1, n_shards);
        tl_st_file *f = NULL;
        tl_error e = {0};
        if (tl_st_open(p, &f, &e) != TL_OK) {
            fprintf(stderr, "%s\n", e.msg);
            g_fail++;
            return -1;
        }
        CHECK(tl_st_count(f) > 0);
        const char *fmt = tl_st_metadata(f, "format");
        CHECK(fmt && strcmp(fmt, "pt") == 0);
        for (int i = 0; i < tl_st_count(f); i++) CHECK(strcmp(tl_st_get(f, i)->dtype_name, dtype) == 0);
        total += tl_st_count(f);
        tl_st_close(f);
    }
    return total;
}

static int exists(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat sb;
    return stat(p, &sb) == 0;
}

static double mean_of(const float *v, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += v[i];
    return s / (double)n;
}

static double std_of(const float *v, size_t n, double mean) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (v[i] - mean) * (v[i] - mean);
    return sqrt(s / (double)n);
}

static void run_case(const char *sub, const tl_model_config *cfg, uint64_t seed, int bf16, int n_shards) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/%s/nested", g_dir, sub); /* mkdir -p of two levels */
    tl_error e = {0};
    if (tl_write_random_model(dir, cfg, seed, bf16, n_shards, &e) != TL_OK) {
        fprintf(stderr, "%s: write failed: %s\n", sub, e.msg);
        g_fail++;
        return;
    }
    /* config.json reads back as the same model */
    tl_model_config got;
    CHECK(tl_model_config_load(dir, &got, &e) == TL_OK);
    CHECK(got.vocab_size == cfg->vocab_size && got.hidden_size == cfg->hidden_size &&
          got.intermediate_size == cfg->intermediate_size && got.num_hidden_layers == cfg->num_hidden_layers &&
          got.num_attention_heads == cfg->num_attention_heads &&
          got.num_key_value_heads == cfg->num_key_value_heads && got.head_dim == cfg->head_dim &&
          got.tie_word_embeddings == cfg->tie_word_embeddings && got.attention_bias == cfg->attention_bias &&
          got.rms_norm_eps == cfg->rms_norm_eps && got.rope_theta == cfg->rope_theta);
    /* the layout on disk */
    CHECK(exists(dir, "config.json"));
    CHECK(exists(dir, "model.safetensors") == (n_shards == 1));
    CHECK(exists(dir, "model.safetensors.index.json") == (n_shards > 1));
    char fn[64];
    for (int s = 0; s < n_shards && n_shards > 1; s++) {
        snprintf(fn, sizeof fn, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        CHECK(exists(dir, fn));
    }
    DIR *dd = opendir(dir);
    struct dirent *de;
    while (dd && (de = readdir(dd))) CHECK(strstr(de->d_name, ".tmp.") == NULL);
    if (dd) closedir(dd);

    double pool[3][3] = {{0}}; /* per kind (weight, norm, bias): sum z, sum z^2, count */
    expect_t *ex = malloc(512 * sizeof *ex);
    int n = expected_tensors(cfg, ex);
    CHECK(stored_tensor_count(dir, n_shards, bf16 ? "BF16" : "F32") == n);

    tl_tensor_src *src = NULL;
    if (tl_tensor_src_open(dir, &src, &e) != TL_OK) {
        fprintf(stderr, "%s: open failed: %s\n", sub, e.msg);
        g_fail++;
        free(ex);
        return;
    }
    CHECK(tl_tensor_src_has(src, "lm_head.weight") == !cfg->tie_word_embeddings);
    CHECK(tl_tensor_src_has(src, "model.layers.0.self_attn.q_proj.bias") == cfg->attention_bias);
    for (int i = 0; i < n; i++) {
        const tl_st_tensor *t = tl_tensor_src_find(src, ex[i].name);
        if (!t) {
            fprintf(stderr, "%s: tensor '%s' missing\n", sub, ex[i].name);
            g_fail++;
            continue;
        }
        CHECK(t->dtype == (bf16 ? TL_DT_BF16 : TL_DT_F32));
        CHECK(t->ndim == ex[i].ndim && t->shape[0] == ex[i].shape[0] &&
              (ex[i].ndim == 1 || t->shape[1] == ex[i].shape[1]));
        size_t cnt = (size_t)ex[i].shape[0] * (size_t)(ex[i].ndim == 2 ? ex[i].shape[1] : 1);
        float *v = malloc(cnt * sizeof *v), *want = malloc(cnt * sizeof *want);
        for (size_t j = 0; j < cnt; j++) v[j] = want[j] = NAN;
        CHECK(tl_tensor_src_read_f32(src, ex[i].name, ex[i].shape, ex[i].ndim, v, &e) == TL_OK);
        CHECK(tl_tiny_tensor_values(cfg, ex[i].name, seed, want, cnt, &e) == TL_OK);
        size_t bad = 0;
        for (size_t j = 0; j < cnt; j++) {
            float w = bf16 ? tl_bf16_to_f32(tl_f32_to_bf16(want[j])) : want[j];
            bad += !(v[j] == w);
        }
        if (bad) {
            fprintf(stderr, "%s: tensor '%s': %zu of %zu values differ from the generator\n", sub, ex[i].name, bad,
                    cnt);
            g_fail++;
        }
        /* the init the header promises: 2-D weights one by one, norms and biases pooled (they are short) */
        int kind = strstr(ex[i].name, "norm.weight") ? 1 : strstr(ex[i].name, ".bias") ? 2 : 0;
        double mu = kind == 1 ? 1.0 : 0.0, sig = kind == 1 ? 0.1 : kind == 2 ? 0.05 : 1.0 / sqrt((double)ex[i].shape[1]);
        for (size_t j = 0; j < cnt; j++) {
            double z = (want[j] - mu) / sig;
            pool[kind][0] += z, pool[kind][1] += z * z, pool[kind][2] += 1;
        }
        if (kind == 0) {
            double m = mean_of(want, cnt), sd = std_of(want, cnt, m);
            if (!(fabs(m) < 6.0 * sig / sqrt((double)cnt) && fabs(sd / sig - 1.0) < 6.0 / sqrt(2.0 * cnt) + 0.02)) {
                fprintf(stderr, "%s: tensor '%s': mean %g std %g, expected 0 and %g\n", sub, ex[i].name, m, sd, sig);
                g_fail++;
            }
        }
        free(v);
        free(want);
    }
    tl_tensor_src_close(src);
    free(ex);
    for (int k = 1; k < 3; k++) {
        double np = pool[k][2];
        if (np == 0) continue;
        double m = pool[k][0] / np, sd = sqrt(pool[k][1] / np - m * m);
        if (!(fabs(m) < 6.0 / sqrt(np) && fabs(sd - 1.0) < 6.0 / sqrt(2.0 * np) + 0.02)) {
            fprintf(stderr, "%s: %s values: standardized mean %g std %g, expected 0 and 1\n", sub,
                    k == 1 ? "norm" : "bias", m, sd);
            g_fail++;
        }
    }
    CHECK((pool[2][2] > 0) == (cfg->attention_bias != 0));
}

static void test_values_depend_on_seed_and_name(const tl_model_config *cfg) {
    size_t n = (size_t)cfg->intermediate_size * cfg->hidden_size;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    tl_error e = {0};
    CHECK(tl_tiny_tensor_values(cfg, "model.layers.0.mlp.gate_proj.weight", 1, a, n, &e) == TL_OK);
    CHECK(tl_tiny_tensor_values(cfg, "model.layers.0.mlp.gate_proj.weight", 2, b, n, &e) == TL_OK);
    CHECK(tl_tiny_tensor_values(cfg, "model.layers.0.mlp.up_proj.weight", 1, c, n, &e) == TL_OK);
    size_t same_ab = 0, same_ac = 0;
    for (size_t i = 0; i < n; i++) same_ab += a[i] == b[i], same_ac += a[i] == c[i];
    CHECK(same_ab < n / 100 && same_ac < n / 100);
    CHECK(tl_tiny_tensor_values(cfg, "model.layers.0.mlp.gate_proj.weight", 1, b, n, &e) == TL_OK);
    CHECK(memcmp(a, b, n * sizeof *a) == 0);
    CHECK(tl_tiny_tensor_values(cfg, "model.layers.0.mlp.gate_proj.weight", 1, b, n - 1, &e) == TL_ERR_INPUT);
    CHECK(tl_tiny_tensor_values(cfg, "model.layers.9.mlp.gate_proj.weight", 1, b, n, &e) == TL_ERR_INPUT);
    free(a);
    free(b);
    free(c);
}

static void test_errors(void) {
    tl_model_config c;
    tl_error e = {0};
    char dir[700];
    snprintf(dir, sizeof dir, "%s/bad", g_dir);
    tl_tiny_config(&c, 50, 32, 2, 4, 3, 48, 8, 0, 0); /* 4 heads over 3 kv heads */
    CHECK(tl_write_random_model(dir, &c, 1, 0, 1, &e) == TL_ERR_INPUT && strstr(e.msg, "num_key_value_heads"));
    tl_tiny_config(&c, 50, 32, 1, 4, 2, 48, 0, 1, 0);
    CHECK(tl_write_random_model(dir, &c, 1, 0, 0, &e) == TL_ERR_INPUT && strstr(e.msg, "n_shards"));
    CHECK(tl_write_random_model(dir, &c, 1, 0, 1000, &e) == TL_ERR_INPUT);
}

/* Rewriting a directory in the other layout removes the stale file that would shadow it. */
static void test_relayout(const tl_model_config *cfg) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/relayout", g_dir);
    tl_error e = {0};
    CHECK(tl_write_random_model(dir, cfg, 5, 0, 1, &e) == TL_OK);
    CHECK(tl_write_random_model(dir, cfg, 6, 0, 2, &e) == TL_OK);
    CHECK(!exists(dir, "model.safetensors") && exists(dir, "model.safetensors.index.json"));
    tl_tensor_src *src = NULL;
    CHECK(tl_tensor_src_open(dir, &src, &e) == TL_OK);
    if (src) {
        int64_t sh[1] = {cfg->hidden_size};
        float v[64], w[64];
        CHECK(tl_tensor_src_read_f32(src, "model.norm.weight", sh, 1, v, &e) == TL_OK);
        CHECK(tl_tiny_tensor_values(cfg, "model.norm.weight", 6, w, (size_t)cfg->hidden_size, &e) == TL_OK);
        CHECK(memcmp(v, w, (size_t)cfg->hidden_size * sizeof *v) == 0);
        tl_tensor_src_close(src);
    }
    CHECK(tl_write_random_model(dir, cfg, 7, 0, 1, &e) == TL_OK);
    CHECK(exists(dir, "model.safetensors") && !exists(dir, "model.safetensors.index.json"));
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/tl_tiny_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    tl_model_config c;
    /* untied, no bias, GQA, head_dim * heads != hidden */
    tl_tiny_config(&c, 50, 32, 2, 4, 2, 48, 10, 0, 0);
    CHECK(c.head_dim == 10 && c.num_key_value_heads == 2 && c.rms_norm_eps == 1e-5f && c.rope_theta == 10000.0f &&
          strcmp(c.arch, "LlamaForCausalLM") == 0);
    run_case("f32_1", &c, seed, 0, 1);
    run_case("bf16_3", &c, seed, 1, 3);
    test_values_depend_on_seed_and_name(&c);
    test_relayout(&c);
    /* tied, with q/k/v biases, defaults for kv heads and head_dim */
    tl_tiny_config(&c, 40, 32, 3, 4, 0, 64, 0, 1, 1);
    CHECK(c.head_dim == 8 && c.num_key_value_heads == 4 && c.tie_word_embeddings && c.attention_bias);
    run_case("f32_3_tied_bias", &c, seed + 1, 0, 3);
    run_case("bf16_1_tied_bias", &c, seed + 1, 1, 1);
    /* as many shards as tensors */
    tl_tiny_config(&c, 20, 16, 1, 2, 1, 24, 0, 1, 0);
    run_case("one_per_shard", &c, seed + 2, 0, 11);
    test_errors();
    rm_rf(g_dir);
    return tl_check_done_seed("test_tinymodel", (unsigned long long)seed);
}
