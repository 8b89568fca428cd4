/* test_hf_config: reading HF config.json for Llama / Mistral / Qwen2, RoPE inverse frequencies, and writing.
 *
 * Configs shaped like real checkpoints (Llama 3.2 with llama3 RoPE, Qwen2.5, Mistral v0.3, a DeepSeek Qwen
 * distill with an unused sliding window), each error case with its field named in the message, llama3 and
 * linear inv_freq against HF's formula evaluated here in double, and write -> load round trips. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_hf_config.h"
#include "tests/lib/tl_check.h"


static char g_dir[512];

static void write_config(const char *text) {
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    FILE *f = fopen(p, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", p);
        exit(1);
    }
}

static int load_ok(const char *text, tl_model_config *cfg, int line) {
    write_config(text);
    tl_error e = {0};
    memset(cfg, 0x7f, sizeof *cfg); /* poison: every field must be set by the loader */
    if (tl_model_config_load(g_dir, cfg, &e) != TL_OK) {
        fprintf(stderr, "line %d: unexpected error: %s\n", line, e.msg);
        g_fail++;
        return 0;
    }
    return 1;
}
#define LOAD_OK(text, cfg) load_ok((text), (cfg), __LINE__)

/* The load fails with TL_ERR_INPUT, its message names config.json's path and contains `sub`. */
static void load_fails(const char *text, const char *sub, int line) {
    write_config(text);
    tl_error e = {0};
    tl_model_config cfg;
    tl_status s = tl_model_config_load(g_dir, &cfg, &e);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    if (s != TL_ERR_INPUT || e.code != TL_ERR_INPUT) {
        fprintf(stderr, "line %d: expected TL_ERR_INPUT containing '%s', got %d (%s)\n", line, sub, (int)s,
                s ? e.msg : "ok");
        g_fail++;
    } else if (!strstr(e.msg, sub) || !strstr(e.msg, path)) {
        fprintf(stderr, "line %d: message '%s' lacks '%s' or the file name\n", line, e.msg, sub);
        g_fail++;
    }
}
#define LOAD_FAILS(text, sub) load_fails((text), (sub), __LINE__)

/* HF's _compute_default_rope_parameters and _compute_llama3_parameters, in double, written as the Python is
 * (torch.where over the whole vector), independently of the library's loop. */
static void hf_inv_freq(int hd, double theta, int type, double factor, double lo, double hi, double old_ctx,
                        double *out) {
    int n = hd / 2;
    for (int i = 0; i < n; i++) out[i] = 1.0 / pow(theta, (double)(2 * i) / hd);
    if (type == 2) {
        for (int i = 0; i < n; i++) out[i] /= factor;
    } else if (type == 1) {
        double low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
        for (int i = 0; i < n; i++) {
            double inv = out[i], wavelen = 2 * M_PI / inv;
            double inv_llama = wavelen > low_freq_wavelen ? inv / factor : inv;
            double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            double smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama;
            int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            out[i] = medium ? smoothed : inv_llama;
        }
    }
}

static void check_inv_freq(const tl_model_config *c, int type, int line) {
    float got[512];
    double want[512];
    for (int i = 0; i < 512; i++) got[i] = NAN;
    tl_rope_inv_freq(c, got);
    hf_inv_freq(c->head_dim, c->rope_theta, type, c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                c->rope_original_max_pos, want);
    int n = c->head_dim / 2, bad = 0;
    for (int i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= 1e-6 * fabs(want[i]))) bad++;
    if (!isnan(got[n])) bad++; /* nothing written past head_dim / 2 */
    if (bad) {
        fprintf(stderr, "line %d: %d inv_freq values differ from HF's formula\n", line, bad);
        g_fail++;
    }
}

static const char *llama32 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 128000, \"eos_token_id\": 128001, \"head_dim\": 64, \"hidden_act\": \"silu\","
    " \"hidden_size\": 2048, \"initializer_range\": 0.02, \"intermediate_size\": 8192,"
    " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 16, \"num_key_value_heads\": 8,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 32.0,"
    " \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192,"
    " \"rope_type\": \"llama3\"}, \"rope_theta\": 500000.0, \"tie_word_embeddings\": true,"
    " \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.45.0.dev0\", \"use_cache\": true,"
    " \"vocab_size\": 128256}";

static void test_valid(void) {
    tl_model_config c;
    if (LOAD_OK(llama32, &c)) {
        CHECK(strcmp(c.arch, "LlamaForCausalLM") == 0 && strcmp(c.model_type, "llama") == 0);
        CHECK(c.vocab_size == 128256 && c.hidden_size == 2048 && c.intermediate_size == 8192);
        CHECK(c.num_hidden_layers == 16 && c.num_attention_heads == 32 && c.num_key_value_heads == 8);
        CHECK(c.head_dim == 64 && c.max_position_embeddings == 131072);
        CHECK(c.rms_norm_eps == 1e-5f && c.rope_theta == 500000.0f);
        CHECK(c.rope_type == TL_ROPE_LLAMA3 && c.rope_factor == 32.0f && c.rope_low_freq_factor == 1.0f &&
              c.rope_high_freq_factor == 4.0f && c.rope_original_max_pos == 8192);
        CHECK(c.tie_word_embeddings == 1 && c.attention_bias == 0);
        check_inv_freq(&c, 1, __LINE__);
        /* the three llama3 regions are all present for these numbers: kept, smoothed, divided */
        float f[32];
        tl_rope_inv_freq(&c, f);
        CHECK(f[0] == 1.0f);
        CHECK(fabs(f[31] - 1.0 / pow(500000.0, 62.0 / 64) / 32) < 1e-6 * f[31]);
        int smooth = 0;
        for (int i = 0; i < 32; i++) {
            double base = 1.0 / pow(500000.0, 2.0 * i / 64);
            if (f[i] < base * (1 - 1e-6) && f[i] > base / 32 * (1 + 1e-6)) smooth++;
        }
        CHECK(smooth > 0);
    }
    /* Qwen2.5-0.5B: q/k/v biases, tied, head_dim derived, window unused (use_sliding_window false) */
    if (LOAD_OK("{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": 151643,"
                " \"eos_token_id\": 151643, \"hidden_act\": \"silu\", \"hidden_size\": 896,"
                " \"initializer_range\": 0.02, \"intermediate_size\": 4864, \"max_position_embeddings\": 32768,"
                " \"max_window_layers\": 24, \"model_type\": \"qwen2\", \"num_attention_heads\": 14,"
                " \"num_hidden_layers\": 24, \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-06,"
                " \"rope_theta\": 1000000.0, \"sliding_window\": 32768, \"tie_word_embeddings\": true,"
                " \"torch_dtype\": \"bfloat16\", \"use_cache\": true, \"use_sliding_window\": false,"
                " \"vocab_size\": 151936}",
                &c)) {
        CHECK(strcmp(c.model_type, "qwen2") == 0 && c.attention_bias == 1 && c.tie_word_embeddings == 1);
        CHECK(c.head_dim == 64 && c.num_key_value_heads == 2 && c.rope_theta == 1e6f && c.rms_norm_eps == 1e-6f);
        CHECK(c.rope_type == TL_ROPE_DEFAULT && c.max_position_embeddings == 32768);
        check_inv_freq(&c, 0, __LINE__);
    }
    /* DeepSeek-R1-Distill-Qwen-1.5B: a 4096 window that Qwen2Config drops since use_sliding_window is false */
    CHECK(LOAD_OK("{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 1536, \"intermediate_size\": 8960,"
                  " \"max_position_embeddings\": 131072, \"num_attention_heads\": 12, \"num_hidden_layers\": 28,"
                  " \"num_key_value_heads\": 2, \"rope_theta\": 10000, \"sliding_window\": 4096,"
                  " \"use_sliding_window\": false, \"vocab_size\": 151936, \"model_type\": \"qwen2\"}",
                  &c));
    /* Mistral v0.3: sliding_window null */
    if (LOAD_OK("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 4096, \"intermediate_size\": 14336,"
                " \"max_position_embeddings\": 32768, \"model_type\": \"mistral\", \"num_attention_heads\": 32,"
                " \"num_hidden_layers\": 32, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05,"
                " \"rope_theta\": 1000000.0, \"sliding_window\": null, \"tie_word_embeddings\": false,"
                " \"vocab_size\": 32768, \"head_dim\": null}",
                &c)) {
        CHECK(strcmp(c.arch, "MistralForCausalLM") == 0 && c.attention_bias == 0 && c.head_dim == 128);
        CHECK(c.tie_word_embeddings == 0 && c.num_key_value_heads == 8);
    }
    /* a window as long as the context never takes effect */
    CHECK(LOAD_OK("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"max_position_embeddings\": 4096, \"num_attention_heads\": 4, \"num_hidden_layers\": 2,"
                  " \"vocab_size\": 100}",
                  &c));
    /* defaults: kv heads, head_dim, max_position_embeddings, eps, theta, tie, bias */
    if (LOAD_OK("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 100}",
                &c)) {
        CHECK(strcmp(c.model_type, "llama") == 0 && c.num_key_value_heads == 4 && c.head_dim == 16);
        CHECK(c.max_position_embeddings == 2048 && c.rms_norm_eps == 1e-6f && c.rope_theta == 10000.0f);
        CHECK(c.tie_word_embeddings == 0 && c.attention_bias == 0 && c.rope_type == TL_ROPE_DEFAULT);
        check_inv_freq(&c, 0, __LINE__);
        float f[8];
        tl_rope_inv_freq(&c, f);
        CHECK(f[0] == 1.0f && fabs(f[1] - 0.31622776601683794) < 1e-7); /* 10000^(-2/16) */
    }
    /* llama with biases, head_dim not hidden / heads, linear scaling in the old "type" spelling */
    if (LOAD_OK("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 24, \"num_hidden_layers\": 2,"
                " \"vocab_size\": 100, \"attention_bias\": true, \"rope_theta\": 20000,"
                " \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}",
                &c)) {
        CHECK(c.attention_bias == 1 && c.head_dim == 24 && c.rope_type == TL_ROPE_LINEAR && c.rope_factor == 4.0f);
        check_inv_freq(&c, 2, __LINE__);
    }
    /* transformers v5: rope_parameters holds theta and scaling */
    if (LOAD_OK("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 256, \"intermediate_size\": 128,"
                " \"num_attention_heads\": 2, \"num_hidden_layers\": 1, \"vocab_size\": 100,"
                " \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0,"
                " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}",
                &c)) {
        CHECK(c.rope_theta == 500000.0f && c.rope_type == TL_ROPE_LLAMA3 && c.rope_factor == 8.0f);
        check_inv_freq(&c, 1, __LINE__);
    }
    if (LOAD_OK("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 100,"
                " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1234.0}, \"rope_scaling\": null}",
                &c))
        CHECK(c.rope_theta == 1234.0f && c.rope_type == TL_ROPE_DEFAULT);
    /* a config with model_type only (saved from a bare config class) */
    if (LOAD_OK("{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"intermediate_size\": 128,"
                " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 100}",
                &c))
        CHECK(strcmp(c.arch, "Qwen2ForCausalLM") == 0 && c.attention_bias == 1 && c.max_position_embeddings == 32768);
}

#define BASE "\"architectures\": [\"LlamaForCausalLM\"], \"intermediate_size\": 128, \"num_hidden_layers\": 2"

static void test_errors(void) {
    LOAD_FAILS("{\"architectures\": [\"GPT2LMHeadModel\"], \"vocab_size\": 10}",
               "architectures[0] 'GPT2LMHeadModel' is not supported");
    LOAD_FAILS("{\"architectures\": \"LlamaForCausalLM\"}", "field 'architectures' must be a non-empty array");
    LOAD_FAILS("{\"architectures\": []}", "an empty array");
    LOAD_FAILS("{\"vocab_size\": 10}", "missing required field 'architectures'");
    LOAD_FAILS("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"qwen2\"}",
               "model_type 'qwen2' does not match architectures[0] 'LlamaForCausalLM'");
    LOAD_FAILS("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4}", "missing required field 'vocab_size'");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"num_attention_heads\": 4}", "missing required field 'hidden_size'");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": \"64\", \"num_attention_heads\": 4}",
               "field 'hidden_size' must be an integer, got a string");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100.5, \"hidden_size\": 64, \"num_attention_heads\": 4}",
               "field 'vocab_size' must be an integer, got 100.5");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"tie_word_embeddings\": \"yes\"}",
               "field 'tie_word_embeddings' must be true or false, got a string");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4, \"rms_norm_eps\": []}",
               "field 'rms_norm_eps' must be a number, got an array");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
               "config.json: rope_scaling.rope_type 'yarn' is not supported (supported: default, linear, llama3)");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 4.0}}",
               "rope_scaling.type 'dynamic' is not supported");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000.0}}",
               "rope_parameters.rope_type 'yarn' is not supported");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_scaling\": {\"factor\": 4.0}}",
               "rope_scaling has no 'rope_type'");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_scaling\": \"linear\"}",
               "field 'rope_scaling' must be an object or null");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"high_freq_factor\": 4.0,"
               " \"original_max_position_embeddings\": 8192}}",
               "missing required field 'rope_scaling.low_freq_factor'");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_scaling\": {\"rope_type\": \"linear\"}}",
               "missing required field 'rope_scaling.factor'");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_theta\": null}",
               "field 'rope_theta' is null");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": null}}",
               "field 'rope_parameters.rope_theta' is null");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_theta\": -1}",
               "rope_theta must be a positive number");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"num_key_value_heads\": 3}",
               "num_attention_heads 4 is not divisible by num_key_value_heads 3");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 3}",
               "hidden_size 64 is not divisible by num_attention_heads 3");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4, \"head_dim\": 15}",
               "head_dim 15 must be even");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 0, \"hidden_size\": 64, \"num_attention_heads\": 4}",
               "vocab_size must be positive, got 0");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4,"
               " \"hidden_act\": \"gelu\"}",
               "hidden_act 'gelu' is not supported");
    LOAD_FAILS("{" BASE ", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4, \"mlp_bias\": true}",
               "mlp_bias");
    /* sliding windows that would take effect */
    LOAD_FAILS("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
               " \"max_position_embeddings\": 32768, \"num_attention_heads\": 4, \"num_hidden_layers\": 2,"
               " \"vocab_size\": 100, \"sliding_window\": 4096}",
               "sliding_window 4096 is smaller than max_position_embeddings 32768");
    LOAD_FAILS("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
               " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 100}",
               "sliding_window 4096 (the default) is smaller than max_position_embeddings 131072");
    LOAD_FAILS("{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
               " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 100,"
               " \"use_sliding_window\": true, \"sliding_window\": 1024}",
               "sliding_window 1024 is smaller than max_position_embeddings 32768");
    LOAD_FAILS("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
               " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 100, \"sliding_window\": \"x\"}",
               "field 'sliding_window' must be an integer");
    LOAD_FAILS("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,", "invalid JSON at line 1");
    LOAD_FAILS("[1, 2]", "must be a JSON object");

    /* no config.json at all */
    char empty[600];
    snprintf(empty, sizeof empty, "%s/empty", g_dir);
    CHECK(mkdir(empty, 0755) == 0);
    tl_model_config c;
    tl_error e = {0};
    CHECK(tl_model_config_load(empty, &c, &e) == TL_ERR_INPUT);
    char want[700];
    snprintf(want, sizeof want, "%s: no config.json", empty);
    CHECK(strcmp(e.msg, want) == 0);
    rmdir(empty);
}

static int same_config(const tl_model_config *a, const tl_model_config *b) {
    return strcmp(a->arch, b->arch) == 0 && strcmp(a->model_type, b->model_type) == 0 &&
           a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
           a->intermediate_size == b->intermediate_size && a->num_hidden_layers == b->num_hidden_layers &&
           a->num_attention_heads == b->num_attention_heads && a->num_key_value_heads == b->num_key_value_heads &&
           a->head_dim == b->head_dim && a->max_position_embeddings == b->max_position_embeddings &&
           a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta && a->rope_type == b->rope_type &&
           (a->rope_type == TL_ROPE_DEFAULT ||
            (a->rope_factor == b->rope_factor &&
             (a->rope_type != TL_ROPE_LLAMA3 ||
              (a->rope_low_freq_factor == b->rope_low_freq_factor &&
               a->rope_high_freq_factor == b->rope_high_freq_factor &&
               a->rope_original_max_pos == b->rope_original_max_pos)))) &&
           a->tie_word_embeddings == b->tie_word_embeddings && a->attention_bias == b->attention_bias;
}

static int count_tmp(void) {
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

static void test_write_roundtrip(void) {
    tl_model_config a, b;
    tl_error e = {0};
    /* a loaded real config, written and read back */
    if (LOAD_OK(llama32, &a)) {
        CHECK(tl_model_config_write(g_dir, &a, &e) == TL_OK);
        CHECK(count_tmp() == 0);
        memset(&b, 0, sizeof b);
        CHECK(tl_model_config_load(g_dir, &b, &e) == TL_OK);
        CHECK(same_config(&a, &b));
    }
    /* awkward floats survive exactly: shortest repr that reads back as the same float */
    memset(&a, 0, sizeof a);
    snprintf(a.arch, sizeof a.arch, "Qwen2ForCausalLM");
    snprintf(a.model_type, sizeof a.model_type, "qwen2");
    a.vocab_size = 97, a.hidden_size = 40, a.intermediate_size = 72, a.num_hidden_layers = 3;
    a.num_attention_heads = 4, a.num_key_value_heads = 2, a.head_dim = 12, a.max_position_embeddings = 333;
    a.rms_norm_eps = 3.3e-7f, a.rope_theta = 12345.678f, a.rope_type = TL_ROPE_LINEAR, a.rope_factor = 1.1f;
    a.tie_word_embeddings = 1, a.attention_bias = 1;
    CHECK(tl_model_config_write_dtype(g_dir, &a, "bfloat16", &e) == TL_OK);
    memset(&b, 0, sizeof b);
    CHECK(tl_model_config_load(g_dir, &b, &e) == TL_OK);
    CHECK(same_config(&a, &b));
    char p[600], text[8192] = {0};
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    FILE *f = fopen(p, "rb");
    CHECK(f && fread(text, 1, sizeof text - 1, f) > 0);
    if (f) fclose(f);
    CHECK(strstr(text, "\"torch_dtype\":\t\"bfloat16\"") && strstr(text, "\"use_sliding_window\":\tfalse"));
    CHECK(strstr(text, "\"rope_type\":\t\"linear\"") && strstr(text, "\"factor\":\t1.1"));
    /* mistral (no biases) */
    snprintf(a.arch, sizeof a.arch, "MistralForCausalLM");
    snprintf(a.model_type, sizeof a.model_type, "mistral");
    a.attention_bias = 0, a.rope_type = TL_ROPE_DEFAULT;
    CHECK(tl_model_config_write(g_dir, &a, &e) == TL_OK);
    memset(&b, 0, sizeof b);
    CHECK(tl_model_config_load(g_dir, &b, &e) == TL_OK);
    CHECK(same_config(&a, &b));
    /* an inconsistent config is refused before anything is written */
    a.attention_bias = 1;
    CHECK(tl_model_config_write(g_dir, &a, &e) == TL_ERR_INPUT && strstr(e.msg, "attention_bias"));
    a.attention_bias = 0, a.num_key_value_heads = 3;
    CHECK(tl_model_config_write(g_dir, &a, &e) == TL_ERR_INPUT && strstr(e.msg, "num_key_value_heads 3"));
    memset(&b, 0, sizeof b);
    CHECK(tl_model_config_load(g_dir, &b, &e) == TL_OK && b.num_key_value_heads == 2);
    CHECK(count_tmp() == 0);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/tl_cfg_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_valid();
    test_errors();
    test_write_roundtrip();
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    unlink(p);
    rmdir(g_dir);
    return tl_check_done("test_hf_config");
}
