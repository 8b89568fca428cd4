/* inspect: summaries that also validate (opening a file runs the same checks a run would). */
#include "trainer/run/tl_inspect.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/tl_dataset.h"
#include "data/tl_gguf.h"
#include "data/tl_pref.h"
#include "data/tl_prompt.h"
#include "data/tl_hf_config.h"
#include "data/tl_model_tokenizer.h"
#include "data/tl_safetensors.h"
#include "kernels/tl_text.h"
#include "trainer/run/tl_checkpoint.h"
#include "trainer/config/tl_config.h"
#include "trainer/eval/tl_generate.h"
#include "trainer/model/tl_model.h"
#include "data/tl_io.h"

static int exists(const char *dir, const char *name) {
    char p[8192];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static void print_shape(FILE *out, const tl_st_tensor *t) {
    fputc('[', out);
    for (int d = 0; d < t->ndim; d++) fprintf(out, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    fputc(']', out);
}

static tl_status inspect_safetensors(const char *path, FILE *out, tl_error *err) {
    tl_st_file *f;
    TL_TRY(tl_st_open(path, &f, err));
    int n = tl_st_count(f);
    int64_t total = 0;
    char nb[TL_ESC_CAP]; /* names and metadata from the file: shown escaped (tl_text.h) */
    fprintf(out, "safetensors %s: %d tensor(s)\n", path, n);
    for (int i = 0; i < n; i++) {
        const tl_st_tensor *t = tl_st_get(f, i);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        total += numel;
        if (i < 40 || i == n - 1) {
            fprintf(out, "  %-64s %-5s ", tl_escape(nb, sizeof nb, t->name), t->dtype_name);
            print_shape(out, t);
            fputc('\n', out);
        } else if (i == 40) {
            fprintf(out, "  ... (%d more)\n", n - 41);
        }
    }
    fprintf(out, "total elements: %lld\n", (long long)total);
    const char *keys[] = {"format", "tailor_adapter_name"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *v = tl_st_metadata(f, keys[k]);
        if (v) fprintf(out, "metadata %s: %s\n", keys[k], tl_escape(nb, sizeof nb, v));
    }
    tl_st_close(f);
    return TL_OK;
}

/* A model's tokenizer (tokenizer.json beside an HF model, tokenizer.ggml.* in a GGUF file), when it has one:
 * generate and data build refuse a broken one, so inspect does too. */
static tl_status check_tokenizer(const char *path, FILE *out, tl_error *err) {
    size_t len = strlen(path);
    int gguf = len > 5 && !strcmp(path + len - 5, ".gguf");
    if (gguf) {
        tl_gguf *g;
        TL_TRY(tl_gguf_open(path, &g, err));
        int has = tl_gguf_find_key(g, "tokenizer.ggml.model") >= 0 || tl_gguf_find_key(g, "tokenizer.ggml.tokens") >= 0;
        tl_gguf_close(g);
        if (!has) {
            fprintf(out, "  no tokenizer in the metadata\n");
            return TL_OK;
        }
    } else if (!exists(path, "tokenizer.json")) {
        fprintf(out, "  no tokenizer.json\n");
        return TL_OK;
    }
    tl_tokenizer *t = NULL;
    TL_TRY(tl_tokenizer_for_model(path, &t, err));
    fprintf(out, "  tokenizer: %s, valid\n", gguf ? "tokenizer.ggml.*" : "tokenizer.json");
    tl_tokenizer_free(t);
    return TL_OK;
}

static tl_status inspect_model(const char *dir, FILE *out, tl_error *err) {
    tl_model_config c;
    TL_TRY(tl_model_config_load(dir, &c, err));
    fprintf(out, "model %s: %s (%s)\n", dir, c.arch, c.model_type);
    fprintf(out, "  vocab %d, hidden %d, ffn %d, layers %d, heads %d, kv heads %d, head_dim %d\n", c.vocab_size,
            c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim);
    fprintf(out, "  rope_theta %g (%s scaling), rms_norm_eps %g, max_position_embeddings %d, tied embeddings: %s, "
                 "qkv bias: %s\n",
            (double)c.rope_theta,
            c.rope_type == TL_ROPE_LLAMA3 ? "llama3" : c.rope_type == TL_ROPE_LINEAR ? "linear" : "no",
            (double)c.rms_norm_eps, c.max_position_embeddings, c.tie_word_embeddings ? "yes" : "no",
            c.attention_bias ? "yes" : "no");
    /* the same reading as tl_model_load (config, presence, shapes, dtypes, finite values): inspect never calls
     * valid a model that train refuses */
    int64_t params = 0;
    int tied = 0;
    tl_status s = tl_model_validate(dir, &c, &params, &tied, err);
    if (!s) s = check_tokenizer(dir, out, err);
    if (!s) fprintf(out, "  %lld parameters, all tensors present with the expected shapes and finite values%s\n",
                    (long long)params, tied ? " (lm_head tied to embeddings)" : "");
    if (!s) fprintf(out, "valid\n");
    return s;
}

/* A GGUF model: its configuration, tensor types, and every HF tensor read (dequantized) once. */
static tl_status inspect_gguf(const char *path, FILE *out, tl_error *err) {
    tl_gguf *g;
    TL_TRY(tl_gguf_open(path, &g, err));
    tl_model_config c;
    tl_status s = tl_gguf_model_config(g, &c, err);
    if (s) {
        tl_gguf_close(g);
        return s;
    }
    int counts[64] = {0};
    for (int i = 0; i < tl_gguf_n_tensors(g); i++) {
        uint32_t t = tl_gguf_tensor_at(g, i)->type;
        if (t < 64) counts[t]++;
    }
    fprintf(out, "gguf %s: llama, %d tensors (", path, tl_gguf_n_tensors(g));
    int first = 1;
    for (uint32_t t = 0; t < 64; t++)
        if (counts[t]) fprintf(out, "%s%d %s", first ? "" : ", ", counts[t], tl_gguf_type_name(t)), first = 0;
    fprintf(out, ")\n  vocab %d, hidden %d, ffn %d, layers %d, heads %d, kv heads %d, head_dim %d, rope_theta %g, "
                 "tied embeddings: %s\n",
            c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim, (double)c.rope_theta, c.tie_word_embeddings ? "yes" : "no");
    tl_gguf_close(g);
    /* the same reading as tl_model_load: every tensor the model uses, its shape and finite values */
    int64_t params = 0;
    int tied = 0;
    s = tl_model_validate(path, &c, &params, &tied, err);
    if (!s) s = check_tokenizer(path, out, err);
    if (!s) fprintf(out, "  %lld parameters, all tensors present with the expected shapes and finite values%s\n",
                    (long long)params, tied ? " (output tied to token_embd)" : "");
    if (!s) fprintf(out, "valid\n");
    return s;
}

static tl_status inspect_dataset(const char *path, FILE *out, tl_error *err) {
    tl_sft_dataset ds;
    TL_TRY(tl_sft_open(path, 0, &ds, err));
    int64_t *ex = calloc((size_t)ds.n_users, sizeof(int64_t)), *tok = calloc((size_t)ds.n_users, sizeof(int64_t));
    int64_t *resp = calloc((size_t)ds.n_users, sizeof(int64_t));
    if (!ex || !tok || !resp) {
        free(ex), free(tok), free(resp);
        tl_sft_free(&ds);
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    }
    int32_t maxtok = 0;
    int64_t maxlen = 0;
    for (int64_t i = 0; i < ds.n_examples; i++) {
        int u = ds.user[i];
        int64_t len = ds.offsets[i + 1] - ds.offsets[i];
        ex[u]++, tok[u] += len, resp[u] += len - ds.prompt_len[i];
        if (len > maxlen) maxlen = len;
    }
    for (int64_t t = 0; t < ds.n_tokens; t++)
        if (ds.tokens[t] > maxtok) maxtok = ds.tokens[t];
    fprintf(out, "dataset %s: kind sft, %d user(s), %lld example(s), %lld token(s), longest example %lld, "
                 "largest token id %d%s\n",
            path, ds.n_users, (long long)ds.n_examples, (long long)ds.n_tokens, (long long)maxlen, maxtok,
            ds.user_groups ? ", with groups" : "");
    if (ds.vocab_size_attr) fprintf(out, "vocab_size attribute: %lld\n", (long long)ds.vocab_size_attr);
    fprintf(out, "  %-28s %-16s %9s %10s %10s\n", "user", "group", "examples", "tokens", "response");
    char nb[TL_ESC_CAP], gb[TL_ESC_CAP]; /* user and group names from the file: shown escaped (tl_text.h) */
    for (int u = 0; u < ds.n_users; u++) {
        if (u == 50 && ds.n_users > 51) {
            fprintf(out, "  ... (%d more users)\n", ds.n_users - 50);
            break;
        }
        fprintf(out, "  %-28.28s %-16.16s %9lld %10lld %10lld%s\n", tl_escape(nb, sizeof nb, ds.user_names[u]),
                tl_escape(gb, sizeof gb, ds.user_groups ? ds.user_groups[u] : "-"), (long long)ex[u], (long long)tok[u], (long long)resp[u],
                ex[u] ? "" : "  (no examples)");
    }
    free(ex), free(tok), free(resp);
    tl_sft_free(&ds);
    fprintf(out, "valid\n");
    return TL_OK;
}

static tl_status inspect_prompt(const char *path, FILE *out, tl_error *err) {
    tl_prompt_dataset ds;
    TL_TRY(tl_prompt_open(path, 0, &ds, err));
    int64_t *n = calloc((size_t)ds.n_users, sizeof(int64_t));
    if (!n) {
        tl_prompt_free(&ds);
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    }
    for (int64_t i = 0; i < ds.n_prompts; i++) n[ds.user[i]]++;
    fprintf(out, "dataset %s: kind prompt, %d user(s), %lld prompt(s), %lld tokens (longest prompt %lld)%s%s\n",
            path, ds.n_users, (long long)ds.n_prompts, (long long)ds.n_tokens, (long long)ds.max_prompt_len,
            ds.has_reference ? ", with reference answers" : "", ds.user_groups ? ", with groups" : "");
    fprintf(out, "  %-28s %-16s %9s\n", "user", "group", "prompts");
    char nb[TL_ESC_CAP], gb[TL_ESC_CAP]; /* names from the file: shown escaped (tl_text.h) */
    for (int u = 0; u < ds.n_users && u < 50; u++)
        fprintf(out, "  %-28.28s %-16.16s %9lld%s\n", tl_escape(nb, sizeof nb, ds.user_names[u]),
                tl_escape(gb, sizeof gb, ds.user_groups ? ds.user_groups[u] : "-"), (long long)n[u],
                n[u] ? "" : "  (no prompts)");
    if (ds.n_users > 50) fprintf(out, "  ... (%d more users)\n", ds.n_users - 50);
    free(n);
    tl_prompt_free(&ds);
    fprintf(out, "valid\n");
    return TL_OK;
}

static tl_status inspect_pref(const char *path, FILE *out, tl_error *err) {
    tl_pref_dataset ds;
    TL_TRY(tl_pref_open(path, 0, &ds, err));
    int64_t *pairs = calloc((size_t)ds.n_users, sizeof(int64_t));
    if (!pairs) {
        tl_pref_free(&ds);
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    }
    for (int64_t i = 0; i < ds.n_pairs; i++) pairs[ds.user[i]]++;
    fprintf(out, "dataset %s: kind preference, %d user(s), %lld pair(s), tokens: %lld prompt, %lld chosen, %lld "
                 "rejected%s\n",
            path, ds.n_users, (long long)ds.n_pairs, (long long)ds.prompt.n_tokens, (long long)ds.chosen.n_tokens,
            (long long)ds.rejected.n_tokens, ds.user_groups ? ", with groups" : "");
    fprintf(out, "  %-28s %-16s %9s\n", "user", "group", "pairs");
    char nb[TL_ESC_CAP], gb[TL_ESC_CAP]; /* user and group names from the file: shown escaped (tl_text.h) */
    for (int u = 0; u < ds.n_users && u < 50; u++)
        fprintf(out, "  %-28.28s %-16.16s %9lld%s\n", tl_escape(nb, sizeof nb, ds.user_names[u]),
                tl_escape(gb, sizeof gb, ds.user_groups ? ds.user_groups[u] : "-"),
                (long long)pairs[u], pairs[u] ? "" : "  (no pairs)");
    if (ds.n_users > 50) fprintf(out, "  ... (%d more users)\n", ds.n_users - 50);
    free(pairs);
    tl_pref_free(&ds);
    fprintf(out, "valid\n");
    return TL_OK;
}

/* Loads the checkpoint into a pool the way `tailor export` and a resume do (the model's shapes from its config,
 * the pool built from the checkpoint's names and config, then tl_checkpoint_load: names, sizes, dtypes, shapes,
 * the integer state and finite values), so that inspect never calls valid a checkpoint they refuse. */
static tl_status load_checkpoint(const char *dir, const tl_config *cfg, int n, char **names, tl_error *err) {
    tl_backend *be = NULL;
    tl_model m;
    memset(&m, 0, sizeof m);
    TL_TRY(tl_backend_cpu_create(1, &be, err));
    m.be = be;
    tl_status s = tl_model_config_from(cfg->model_path, &m.cfg, err);
    tl_lora_pool pool;
    int have_pool = 0;
    if (!s) {
        int reward = cfg->task_type == TL_TASK_REWARD;
        tl_lora_opts lo = {.rank = cfg->adapter_rank, .alpha = (float)cfg->adapter_alpha,
                           .rslora = cfg->adapter_rslora, .dropout = (float)cfg->adapter_dropout,
                           .targets = cfg->adapter_targets, .seed = cfg->seed, .with_head = reward};
        s = tl_lora_pool_init(&pool, &m, n, names, &lo, err);
        have_pool = !s;
    }
    tl_cursor *cur = NULL;
    if (!s && !(cur = calloc((size_t)(n > 0 ? n : 1), sizeof *cur)))
        s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    int64_t step = 0;
    if (!s) s = tl_checkpoint_load(dir, &pool, be, &step, cur, err);
    free(cur);
    if (have_pool) tl_lora_pool_free(&pool, be);
    be->destroy(be);
    return s;
}

static tl_status inspect_checkpoint(const char *dir, FILE *out, tl_error *err) {
    tl_config cfg;
    TL_TRY(tl_checkpoint_read_config(dir, &cfg, err));
    char **names = NULL;
    int n = 0;
    TL_TRY(tl_checkpoint_read_names(dir, &names, &n, err));
    char state[8192];
    snprintf(state, sizeof state, "%s/state.safetensors", dir);
    tl_st_file *f;
    tl_status s = load_checkpoint(dir, &cfg, n, names, err);
    if (!s) s = tl_st_open(state, &f, err);
    if (!s) {
        char nb[TL_ESC_CAP], mb[TL_ESC_CAP]; /* names from the checkpoint: shown escaped (tl_text.h) */
        fprintf(out, "checkpoint %s: run '%s', model %s, %d adapter(s), rank %d, alpha %g, %d tensor(s) of state\n",
                dir, tl_escape(nb, sizeof nb, cfg.run_name), tl_escape(mb, sizeof mb, cfg.model_path), n,
                cfg.adapter_rank, cfg.adapter_alpha, tl_st_count(f));
        for (int i = 0; i < n && i < 50; i++) fprintf(out, "  %s\n", tl_escape(nb, sizeof nb, names[i]));
        if (n > 50) fprintf(out, "  ... (%d more)\n", n - 50);
        tl_st_close(f);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return s;
}

tl_status tl_inspect(const char *path, FILE *out, tl_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        if (exists(path, "config.json")) return inspect_model(path, out, err);
        if (exists(path, "COMPLETE") && exists(path, "state.safetensors")) return inspect_checkpoint(path, out, err);
        if (exists(path, "adapter_model.safetensors")) {
            char p[8192];
            snprintf(p, sizeof p, "%s/adapter_model.safetensors", path);
            /* the adapter_config.json checks of generate, so that inspect does not call valid what it refuses */
            int rank = 0, rslora = 0;
            float alpha = 0;
            uint32_t targets = 0;
            TL_TRY(tl_peft_read_layout(path, &rank, &alpha, &rslora, &targets, err));
            int n_targets = 0;
            for (uint32_t t = targets; t; t &= t - 1) n_targets++;
            fprintf(out, "adapter %s: r %d, lora_alpha %g%s, %d target module(s)\n", path, rank, (double)alpha,
                    rslora ? " (rsLoRA)" : "", n_targets);
            return inspect_safetensors(p, out, err);
        }
        if (exists(path, "checkpoints")) {
            char ck[TL_PATH_MAX];
            int found = 0;
            TL_TRY(tl_checkpoint_latest(path, ck, sizeof ck, &found, err));
            if (!found) return tl_fail(err, TL_ERR_INPUT, "%s: run directory without a complete checkpoint", path);
            fprintf(out, "run %s, latest checkpoint:\n", path);
            return inspect_checkpoint(ck, out, err);
        }
        return tl_fail(err, TL_ERR_INPUT,
                       "%s: not a model directory (no config.json), checkpoint, adapter or run directory", path);
    }
    FILE *f; /* not fopen: a FIFO would block it until a writer comes */
    TL_TRY(tl_fopen_regular(path, NULL, &f, NULL, err));
    unsigned char magic[8] = {0};
    size_t got = fread(magic, 1, sizeof magic, f);
    fclose(f);
    if (got == 8 && memcmp(magic, "\x89HDF\r\n\x1a\n", 8) == 0) {
        char kind[32];
        TL_TRY(tl_h5_kind(path, kind, sizeof kind, err));
        if (strcmp(kind, "prompt") == 0) return inspect_prompt(path, out, err);
        return strcmp(kind, "preference") == 0 ? inspect_pref(path, out, err) : inspect_dataset(path, out, err);
    }
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".gguf") == 0) return inspect_gguf(path, out, err);
    if (len > 12 && strcmp(path + len - 12, ".safetensors") == 0) return inspect_safetensors(path, out, err);
    return tl_fail(err, TL_ERR_INPUT, "%s: unknown file type (expected .safetensors, an HDF5 dataset or a directory)",
                   path);
}
