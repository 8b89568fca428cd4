/* train: one whole training run — set up, step loop, checkpoints, evaluation, export (see tl_train.h).
 *
 * Order matters for the "nothing half-written" rule: everything a run reads (config, model, datasets) is opened
 * and validated before the run directory is created, so bad input never leaves a run directory behind. */
#include "trainer/run/tl_train.h"

#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_batcher.h"
#include "kernels/tl_text.h"
#include "data/tl_dataset.h"
#include "data/tl_pref.h"
#include "trainer/run/tl_checkpoint.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/dist/tl_dist_pool.h"
#include "trainer/eval/tl_eval.h"
#include "trainer/run/tl_export.h"
#include "data/tl_io.h"
#include "trainer/model/tl_model.h"
#include "trainer/step/tl_optim.h"
#include "trainer/eval/tl_pref_eval.h"
#include "trainer/step/tl_pref_step.h"
#include "trainer/eval/tl_rouge.h"
#include "data/tl_model_tokenizer.h"

#include <cjson/cJSON.h>

static tl_adapter_key parse_key(const char *k) {
    return !strcmp(k, "group") ? TL_KEY_GROUP : !strcmp(k, "global") ? TL_KEY_GLOBAL : TL_KEY_USER;
}

/* Everything a command holds open; tl_session_close releases whatever was opened. */
typedef enum { TL_TASK_SFT, TL_TASK_DPO, TL_TASK_REWARD } tl_task;

typedef struct {
    tl_task task;
    tl_backend *be;
    tl_model model;
    int model_loaded;
    tl_sft_dataset train, eval;     /* sft */
    int have_train, have_eval;
    tl_pref_dataset ptrain, peval;  /* dpo, reward */
    int have_ptrain, have_peval;
    tl_adapter_map map;
    int have_map;
    tl_lora_pool pool;
    int have_pool;
    tl_lora_pool ref; /* dpo with adapter.init_from: the frozen starting adapters, the reference policy */
    int have_ref;
    tl_workspace *ws;
    tl_batcher *batcher;
    tl_pref_batcher *pbatcher;
    tl_pref_scratch *psc;
    tl_pref_opts popts;
    /* many processes (tl_dist.h) */
    tl_dist_env env;
    tl_dist *dist;   /* NULL outside tl_train */
    int dp;          /* dist.strategy data_parallel (else user_shard) */
    /* user_shard with world > 1 ("local pool"): the pool, batcher and optimizer hold this rank's adapters only;
     * local slot a is adapter gidx[a] of the run's n_global adapters (map: all of them, lmap: this rank's) */
    int lp;
    int n_global;
    int32_t *gidx;       /* [pool.n_slots] */
    tl_adapter_map lmap;
    int have_lmap;
    uint8_t *eval_mine;  /* data_parallel with world > 1: [n_slots] the adapters this rank evaluates */
    int device, threads; /* where this process runs: CUDA device, CPU threads (0 = default) */
} tl_session;

static tl_task task_of(const tl_config *cfg) {
    return !strcmp(cfg->task_type, "dpo") ? TL_TASK_DPO : !strcmp(cfg->task_type, "reward") ? TL_TASK_REWARD
                                                                                          : TL_TASK_SFT;
}

static void tl_session_close(tl_session *S) {
    if (S->batcher) tl_batcher_free(S->batcher);
    if (S->pbatcher) tl_pref_batcher_free(S->pbatcher);
    tl_pref_scratch_free(S->psc);
    if (S->ws) tl_workspace_free(S->ws, S->be);
    if (S->have_pool) tl_lora_pool_free(&S->pool, S->be);
    if (S->have_ref) tl_lora_pool_free(&S->ref, S->be);
    if (S->have_map) tl_adapter_map_free(&S->map);
    if (S->have_train) tl_sft_free(&S->train);
    if (S->have_eval) tl_sft_free(&S->eval);
    if (S->have_ptrain) tl_pref_free(&S->ptrain);
    if (S->have_peval) tl_pref_free(&S->peval);
    if (S->model_loaded) tl_model_free(&S->model);
    free(S->gidx);
    free(S->eval_mine);
    if (S->have_lmap) tl_adapter_map_free(&S->lmap);
    tl_dist_free(S->dist);
    if (S->be) S->be->destroy(S->be);
    memset(S, 0, sizeof *S);
}

/* A dataset for this task: SFT files for sft, preference files for dpo and reward, said clearly otherwise. */
static tl_status check_kind(const char *key, const char *path, tl_task task, tl_error *err) {
    char kind[32];
    TL_TRY(tl_h5_kind(path, kind, sizeof kind, err));
    const char *want = task == TL_TASK_SFT ? "sft" : "preference";
    if (strcmp(kind, want) != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s is a '%s' dataset, but task.type %s needs kind '%s'", key, path, kind,
                       task == TL_TASK_SFT ? "sft" : task == TL_TASK_DPO ? "dpo" : "reward", want);
    return TL_OK;
}

/* Backend, model and the datasets the command needs, all validated. */
static tl_status open_inputs(tl_session *S, const tl_config *cfg, int need_train, int need_eval, tl_error *err) {
    S->task = task_of(cfg);
    if (!cfg->model_path[0]) return tl_fail(err, TL_ERR_INPUT, "model.path: required");
    if (need_train && !cfg->data_train[0]) return tl_fail(err, TL_ERR_INPUT, "data.train: required for training");
    if (need_eval && !cfg->data_eval[0]) return tl_fail(err, TL_ERR_INPUT, "data.eval: required for tailor eval");
    if (S->task == TL_TASK_DPO) {
        TL_TRY(tl_pref_kind_parse(cfg->task_loss, &S->popts.kind, err));
        S->popts.beta = cfg->task_beta, S->popts.label_smoothing = cfg->task_label_smoothing;
        S->popts.gamma = cfg->task_gamma, S->popts.sft_weight = cfg->task_sft_weight;
        TL_TRY(tl_pref_opts_check(&S->popts, err));
    }
    int open_train = need_train, open_eval = cfg->data_eval[0] && (need_eval || need_train);
    if (open_train) TL_TRY(check_kind("data.train", cfg->data_train, S->task, err));
    if (open_eval) TL_TRY(check_kind("data.eval", cfg->data_eval, S->task, err));
    TL_TRY(tl_backend_open_on(cfg->backend, S->threads ? S->threads : cfg->threads, S->device, &S->be, err));
    TL_TRY(tl_model_load(cfg->model_path, S->be, &S->model, err));
    S->model_loaded = 1;
    int V = S->model.cfg.vocab_size;
    if (S->task == TL_TASK_SFT) {
        if (open_train) {
            TL_TRY(tl_sft_open(cfg->data_train, V, &S->train, err));
            S->have_train = 1;
        }
        if (open_eval) {
            TL_TRY(tl_sft_open(cfg->data_eval, V, &S->eval, err));
            S->have_eval = 1;
        }
    } else {
        if (open_train) {
            TL_TRY(tl_pref_open(cfg->data_train, V, &S->ptrain, err));
            S->have_ptrain = 1;
        }
        if (open_eval) {
            TL_TRY(tl_pref_open(cfg->data_eval, V, &S->peval, err));
            S->have_peval = 1;
        }
        if (2 * cfg->data_max_seq_len > cfg->micro_batch_tokens)
            return tl_fail(err, TL_ERR_INPUT,
                           "train.micro_batch_tokens (%d) must hold a whole pair: at least 2 x data.max_seq_len (%d)",
                           cfg->micro_batch_tokens, cfg->data_max_seq_len);
    }
    return TL_OK;
}

/* adapter.init_from: one PEFT directory for every adapter, or a run's adapters/ directory (index.json) from
 * which each adapter starts from the one of the same name. */
static tl_status load_init_from(tl_lora_pool *p, tl_backend *be, const char *from, tl_error *err) {
    char idx[TL_PATH_MAX + 16];
    TL_TRY(tl_path_join(idx, sizeof idx, from, "index.json", err));
    if (!tl_is_file(idx)) {
        for (int s = 0; s < p->n_slots; s++) TL_TRY(tl_peft_load(from, p, be, s, err));
        return TL_OK;
    }
    char *text = NULL;
    size_t n = 0;
    TL_TRY(tl_read_file(idx, 64u << 20, &text, &n, err));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    const cJSON *arr = root ? cJSON_GetObjectItemCaseSensitive(root, "adapters") : NULL;
    tl_status st = cJSON_IsArray(arr) ? TL_OK
                                      : tl_fail(err, TL_ERR_INPUT, "adapter.init_from: %s: expected {\"adapters\": [...]}", idx);
    for (int s = 0; !st && s < p->n_slots; s++) {
        const cJSON *it, *dir = NULL;
        cJSON_ArrayForEach(it, arr) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            if (cJSON_IsString(nm) && !strcmp(nm->valuestring, p->names[s])) dir = cJSON_GetObjectItemCaseSensitive(it, "dir");
        }
        if (!cJSON_IsString(dir)) {
            st = tl_fail(err, TL_ERR_INPUT, "adapter.init_from: %s has no adapter named '%s'", idx, p->names[s]);
            break;
        }
        /* the entry is metadata: it names a folder inside `from`, never a path elsewhere (nor a symlink out) */
        char path[TL_PATH_MAX + 256], what[TL_PATH_MAX + 64];
        snprintf(what, sizeof what, "adapter.init_from: %s: adapter '%.200s': dir", idx, p->names[s]);
        if (!tl_plain_name(dir->valuestring)) {
            st = tl_fail(err, TL_ERR_INPUT, "%s '%.200s': expected a folder name inside %s (no '/', no leading '.')",
                         what, dir->valuestring, from);
            break;
        }
        st = tl_path_join(path, sizeof path, from, dir->valuestring, err);
        if (!st) st = tl_path_inside(from, path, what, err);
        if (!st) st = tl_peft_load(path, p, be, s, err);
    }
    cJSON_Delete(root);
    return st;
}

/* The trained pool (with a score head for reward models), started from adapter.init_from when set; for DPO the
 * started adapters are also kept frozen as the reference policy, as TRL does with PEFT. */
static tl_status make_pools(tl_session *S, const tl_config *cfg, char *const *names, int n, tl_error *err) {
    TL_TRY(tl_lora_pool_init_head(&S->pool, &S->model, n, names, cfg->adapter_rank, (float)cfg->adapter_alpha,
                                  cfg->adapter_rslora, (float)cfg->adapter_dropout, cfg->adapter_targets, cfg->seed,
                                  S->task == TL_TASK_REWARD, err));
    S->have_pool = 1;
    if (!cfg->adapter_init_from[0]) return TL_OK;
    TL_TRY(load_init_from(&S->pool, S->be, cfg->adapter_init_from, err));
    if (S->task != TL_TASK_DPO) return TL_OK;
    /* the reference runs without dropout, as TRL's reference model is in eval mode */
    TL_TRY(tl_lora_pool_init(&S->ref, &S->model, n, names, cfg->adapter_rank, (float)cfg->adapter_alpha,
                             cfg->adapter_rslora, 0.0f, cfg->adapter_targets, cfg->seed, err));
    S->have_ref = 1;
    return load_init_from(&S->ref, S->be, cfg->adapter_init_from, err);
}

static void warn_empty_users(const tl_ui *ui, const char *path, int n_users, char *const *user_names,
                             const tl_adapter_map *map, tl_adapter_key key) {
    if (!map->n_empty || key != TL_KEY_USER) {
        if (map->n_empty)
            fprintf(ui->log, "warning: %s: %d adapter(s) have no examples and are skipped\n", path, map->n_empty);
        return;
    }
    fprintf(ui->log, "warning: %s: %d user(s) have no examples and are skipped:", path, map->n_empty);
    int shown = 0;
    char nb[TL_ESC_CAP]; /* a user name from the data may hold terminal escapes (tl_text.h) */
    for (int u = 0; u < n_users && shown < 5; u++)
        if (map->user_adapter[u] < 0)
            fprintf(ui->log, "%s '%s'", shown++ ? "," : "", tl_escape(nb, sizeof nb, user_names[u]));
    fprintf(ui->log, "%s\n", map->n_empty > shown ? ", ..." : "");
}

/* Whether example / pair i has a token to train on after truncation to any max_seq_len >= 2: a response token at
 * position >= 1 (tl_batcher.h; truncation keeps the response first); a pair needs one on both sides. */
static int sft_example_trainable(const tl_sft_dataset *d, int64_t i) {
    int64_t len = d->offsets[i + 1] - d->offsets[i];
    return len - d->prompt_len[i] >= 1 && len >= 2;
}
static int pref_side_trainable(int64_t prompt, int64_t response) { return response >= 1 && prompt + response >= 2; }
static int pref_pair_trainable(const tl_pref_dataset *d, int64_t i) {
    int64_t p = d->prompt.offsets[i + 1] - d->prompt.offsets[i];
    return pref_side_trainable(p, d->chosen.offsets[i + 1] - d->chosen.offsets[i]) &&
           pref_side_trainable(p, d->rejected.offsets[i + 1] - d->rejected.offsets[i]);
}

/* Adapters whose every example has nothing to train on would come out of the run untouched and be exported as
 * if trained: say so, naming a few (the whole-file case is refused when the dataset opens). One pass over the
 * examples at setup. */
static void warn_untrainable(const tl_ui *ui, const char *path, const tl_adapter_map *map,
                             const tl_sft_dataset *sft, const tl_pref_dataset *pref) {
    int n_bad = 0, shown = 0;
    char line[1024] = "", nb[TL_ESC_CAP];
    for (int a = 0; a < map->n_adapters; a++) {
        if (!map->n_examples[a]) continue;
        int any = 0;
        for (int64_t k = 0; k < map->n_examples[a] && !any; k++) {
            int64_t i = map->examples[a][k];
            any = sft ? sft_example_trainable(sft, i) : pref_pair_trainable(pref, i);
        }
        if (any) continue;
        n_bad++;
        if (shown < 5) {
            size_t n = strlen(line);
            snprintf(line + n, sizeof line - n, "%s '%s'", shown++ ? "," : "", tl_escape(nb, sizeof nb, map->names[a]));
        }
    }
    if (n_bad)
        fprintf(ui->log, "warning: %s: %d adapter(s) have no token to train on (every example is all prompt) and "
                "stay as initialized:%s%s\n", path, n_bad, line, n_bad > shown ? ", ..." : "");
}

/* Steps each adapter takes over the run under round-robin activation (its schedule length). */
static tl_status count_adapter_steps(const tl_config *cfg, int n, int64_t **out, tl_error *err) {
    int64_t *tot = calloc((size_t)n, sizeof(int64_t));
    if (!tot) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    int k = cfg->adapters_per_step;
    if (k <= 0 || k >= n) {
        for (int a = 0; a < n; a++) tot[a] = cfg->steps;
    } else {
        /* adapters (t*k + i) mod n for i < k: over the run, positions j = 0 .. steps*k - 1 taken mod n, so adapter
         * a gets floor(steps*k / n) plus one when a < (steps*k mod n). In closed form: a loop over the steps
         * would take as long as train.steps says (up to 2^63). steps = q*n + r keeps every product in range. */
        int64_t q = cfg->steps / n, r = cfg->steps % n, rk = r * k;
        int64_t base = q * k + rk / n, extra = rk % n;
        for (int a = 0; a < n; a++) tot[a] = base + (a < extra ? 1 : 0);
    }
    *out = tot;
    return TL_OK;
}

typedef struct {
    FILE *f;
} tl_metrics;

/* A number for metrics.jsonl: NaN and infinities (a diverged run) become null, as JSON has no other spelling
 * for them and tailor report reads null as "no value". buf: 48 bytes. */
static const char *jnum(char *buf, const char *fmt, double v) {
    if (!isfinite(v)) return "null";
    snprintf(buf, 48, fmt, v);
    return buf;
}

/* Opens metrics.jsonl for appending; on resume drops records past the resumed step so the file tells one story. */
static tl_status metrics_open(tl_metrics *M, const char *run_dir, int64_t keep_upto, tl_error *err) {
    char path[TL_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    if (keep_upto >= 0) {
        FILE *in = fopen(path, "r");
        if (in) {
            char tmp[TL_PATH_MAX + 48];
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *o = fopen(tmp, "w");
            if (!o) {
                fclose(in);
                return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot write: %s", tmp, strerror(errno));
            }
            char line[8192];
            while (fgets(line, sizeof line, in)) {
                const char *q = strstr(line, "\"step\":");
                long long st = q ? atoll(q + 7) : 0;
                if (st <= keep_upto) fputs(line, o);
            }
            fclose(in);
            int synced = fflush(o) == 0 && fsync(fileno(o)) == 0; /* on disk before it replaces the old file */
            if (fclose(o) || !synced || rename(tmp, path))
                return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot rewrite: %s", path, strerror(errno));
        }
    }
    M->f = fopen(path, keep_upto >= 0 ? "a" : "w");
    if (!M->f) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open for writing: %s", path, strerror(errno));
    return TL_OK;
}

static void fmt_eta(char *buf, size_t cap, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

static tl_pref_eval_opts pref_eval_opts(const tl_session *S, const tl_config *cfg) {
    return (tl_pref_eval_opts){.reward = S->task == TL_TASK_REWARD, .opts = S->popts,
                               .center_rewards = cfg->task_center_rewards, .ref = S->have_ref ? &S->ref : NULL};
}

/* pst as doubles for a sum over ranks (counts stay exact below 2^53) */
#define PSTAT_N 9
static void pstat_pack(const tl_pref_stats *s, double *d) {
    d[0] = (double)s->n, d[1] = (double)s->n_logp, d[2] = s->loss, d[3] = s->reward_chosen;
    d[4] = s->reward_rejected, d[5] = s->accuracy, d[6] = s->margin, d[7] = s->logp_chosen, d[8] = s->logp_rejected;
}
static void pstat_unpack(const double *d, tl_pref_stats *s) {
    s->n = (int64_t)d[0], s->n_logp = (int64_t)d[1], s->loss = d[2], s->reward_chosen = d[3];
    s->reward_rejected = d[4], s->accuracy = d[5], s->margin = d[6], s->logp_chosen = d[7], s->logp_rejected = d[8];
}

/* Many ranks: each evaluated its share of the adapters. A merge scatters each rank's entries into arrays over
 * the whole run's adapters (zero elsewhere) and sums them over the ranks, so every entry comes from the rank
 * that computed it, bit for bit (x + 0 = x). */
typedef struct {
    tl_dist *d;
    int n, nG;           /* entries on this rank, entries of the run */
    const int32_t *gi;   /* [n] global index of each entry (local pool), NULL: the identity (n == nG) */
    const uint8_t *mine; /* [n] entries this rank computed, NULL: all */
} tl_merge;

static tl_status merge_f64(const tl_merge *M, double **v, int k, const char *what, tl_error *err) {
    double *g = calloc((size_t)M->nG * k + 1, sizeof *g);
    if (!g) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int a = 0; a < M->n; a++)
        if (!M->mine || M->mine[a])
            memcpy(g + (size_t)(M->gi ? M->gi[a] : a) * k, *v + (size_t)a * k, (size_t)k * sizeof *g);
    tl_status s = tl_dist_allreduce_f64_host(M->d, g, (size_t)M->nG * k, what, err);
    if (s) {
        free(g);
        return s;
    }
    free(*v);
    *v = g;
    return TL_OK;
}

static tl_status merge_i64(const tl_merge *M, int64_t **v, const char *what, tl_error *err) {
    int64_t *g = calloc((size_t)M->nG + 1, sizeof *g);
    if (!g) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int a = 0; a < M->n; a++)
        if (!M->mine || M->mine[a]) g[M->gi ? M->gi[a] : a] = (*v)[a];
    tl_status s = tl_dist_allreduce_i64_host(M->d, g, (size_t)M->nG, what, err);
    if (s) {
        free(g);
        return s;
    }
    free(*v);
    *v = g;
    return TL_OK;
}

static tl_status merge_pref_stats(const tl_merge *M, tl_pref_stats **st, const char *what, tl_error *err) {
    double *buf = malloc((size_t)M->n * PSTAT_N * sizeof *buf + 1);
    tl_pref_stats *out = calloc((size_t)M->nG + 1, sizeof *out);
    tl_status s = buf && out ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int a = 0; !s && a < M->n; a++) pstat_pack(&(*st)[a], buf + (size_t)a * PSTAT_N);
    if (!s) s = merge_f64(M, &buf, PSTAT_N, what, err);
    if (!s) {
        for (int a = 0; a < M->nG; a++) pstat_unpack(buf + (size_t)a * PSTAT_N, &out[a]);
        free(*st);
        *st = out, out = NULL;
    }
    free(buf);
    free(out);
    return s;
}

/* Evaluates on data.eval, every rank its share of the adapters. Rank 0 writes eval.json and prints the table
 * when `final`, else appends one record to metrics.jsonl (metrics may be NULL) and prints one line. */
static tl_status run_eval(tl_session *S, const tl_config *cfg, const tl_ui *ui, FILE *metrics, int64_t step,
                          int final, tl_error *err) {
    char path[TL_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/eval.json", cfg->output_dir);
    tl_adapter_key key = parse_key(cfg->adapter_key);
    int n = S->pool.n_slots;
    int many = tl_dist_world(S->dist) > 1, rank0 = tl_dist_rank(S->dist) == 0;
    tl_merge M = {.d = S->dist, .n = n, .nG = S->lp ? S->n_global : n, .gi = S->lp ? S->gidx : NULL,
                  .mine = S->lp ? NULL : S->eval_mine};
    tl_eval_part part = {.only = M.mine, .cols = S->lp ? S->map.names : NULL, .n_cols = S->lp ? S->n_global : 0};
    const tl_eval_part *pp = many ? &part : NULL;
    int cross = final && M.nG <= TL_EVAL_CROSS_MAX;
    tl_lora_pool names = S->pool; /* for the table and eval.json: every adapter of the run by name */
    if (S->lp) names.n_slots = S->n_global, names.names = S->map.names;
    tl_status s;
    if (S->task == TL_TASK_SFT) {
        tl_eval_result r;
        TL_TRY(tl_eval_run(&S->model, &S->pool, S->ws, &S->eval, key, cfg->micro_batch_tokens, cfg->data_max_seq_len,
                           1, cross, pp, &r, err));
        tl_eval_rouge_result rr = {0};
        s = TL_OK;
        if (many) {
            s = merge_i64(&M, &r.examples, "eval example counts", err);
            if (!s) s = merge_i64(&M, &r.tokens, "eval token counts", err);
            if (!s) s = merge_f64(&M, &r.loss, 1, "eval losses", err);
            if (!s) s = merge_f64(&M, &r.base_loss, 1, "eval base losses", err);
            if (!s && r.cross) s = merge_f64(&M, &r.cross, r.n_cols, "eval cross matrix", err);
            r.n = r.n_cols = M.nG;
        }
        if (!s && final && cfg->data_eval_generate > 0) { /* generation metrics: greedy answers scored by ROUGE */
            tl_tokenizer *tok = NULL;
            tl_adapter_map map;
            s = tl_tokenizer_for_model(cfg->model_path, &tok, err);
            if (!s) {
                s = tl_adapter_map_build(&S->eval, key, S->pool.names, n, &map, err);
                if (!s) {
                    tl_adapter_map_keep(&map, M.mine);
                    if (!ui->quiet) fprintf(ui->out, "generating answers for ROUGE (up to %d tokens each)...\n",
                                            cfg->data_eval_generate);
                    s = tl_eval_rouge(&S->model, &S->pool, tok, &S->eval, &map, cfg->data_eval_generate, 1, 0, NULL,
                                      NULL, &rr, err);
                    tl_adapter_map_free(&map);
                }
                tl_tokenizer_free(tok);
            }
            if (!s && many) {
                double **v[4] = {&rr.rouge1, &rr.rougeL, &rr.base_rouge1, &rr.base_rougeL};
                s = merge_i64(&M, &rr.examples, "ROUGE example counts", err);
                for (int k = 0; k < 4 && !s; k++) s = merge_f64(&M, v[k], 1, "ROUGE scores", err);
                rr.n = M.nG;
            }
            if (!s)
                r.rouge1 = rr.rouge1, r.rougeL = rr.rougeL, r.base_rouge1 = rr.base_rouge1,
                r.base_rougeL = rr.base_rougeL;
        }
        if (s) {
            tl_eval_result_free(&r);
            tl_eval_rouge_result_free(&rr);
            return s;
        }
        double l, b;
        int64_t t;
        tl_eval_totals(&r, &l, &b, &t);
        if (!rank0) {
            s = TL_OK;
        } else if (final) {
            s = tl_eval_write_json(&r, &names, path, step, err);
            if (!s) {
                fprintf(ui->out, "eval on %s:\n", cfg->data_eval);
                tl_eval_print(&r, &names, ui->out);
            }
        } else {
            char j[2][48];
            if (metrics)
                fprintf(metrics, "{\"step\": %lld, \"eval_loss\": %s, \"eval_base_loss\": %s, \"eval_tokens\": %lld}\n",
                        (long long)step, jnum(j[0], "%.6f", l), jnum(j[1], "%.6f", b), (long long)t), fflush(metrics);
            if (!ui->quiet) fprintf(ui->out, "eval step %lld: loss %.4f (base model %.4f)\n", (long long)step, l, b);
            s = TL_OK;
        }
        tl_eval_result_free(&r);
        tl_eval_rouge_result_free(&rr);
        return s;
    }
    tl_pref_eval_opts o = pref_eval_opts(S, cfg);
    tl_pref_eval_result r;
    TL_TRY(tl_pref_eval_run(&S->model, &S->pool, S->ws, S->psc, &S->peval, key, cfg->micro_batch_tokens,
                            cfg->data_max_seq_len, &o, cross, pp, &r, err));
    s = TL_OK;
    if (many) {
        s = merge_pref_stats(&M, &r.own, "eval preference metrics", err);
        if (!s && r.cross_acc) s = merge_f64(&M, &r.cross_acc, r.n_cols, "eval cross accuracies", err);
        if (!s && r.by_user) { /* users, not adapters: each user's entry is empty but on its adapter's rank */
            tl_merge U = {.d = S->dist, .n = r.n_users, .nG = r.n_users};
            s = merge_pref_stats(&U, &r.by_user, "eval per-user metrics", err);
        }
        r.n = r.n_cols = M.nG;
    }
    if (s) {
        tl_pref_eval_result_free(&r);
        return s;
    }
    tl_pref_stats all;
    tl_pref_stats_init(&all);
    for (int a = 0; a < r.n; a++) tl_pref_stats_merge(&all, &r.own[a]);
    double mean[TL_PREF_N_METRICS];
    tl_pref_stats_mean(&all, mean);
    if (!rank0) {
        s = TL_OK;
    } else if (final) {
        s = tl_pref_eval_write_json(&r, &names, path, step, err);
        if (!s) {
            fprintf(ui->out, "eval on %s (accuracy: reward of the chosen response > the rejected one's):\n",
                    cfg->data_eval);
            tl_pref_eval_print(&r, &names, ui->out);
        }
    } else {
        char j[3][48];
        if (metrics)
            fprintf(metrics, "{\"step\": %lld, \"eval_loss\": %s, \"eval_accuracy\": %s, \"eval_margin\": %s}\n",
                    (long long)step, jnum(j[0], "%.6f", mean[TL_PREF_M_LOSS]),
                    jnum(j[1], "%.6f", mean[TL_PREF_M_REWARDS_ACCURACIES]),
                    jnum(j[2], "%.6f", mean[TL_PREF_M_REWARDS_MARGINS])), fflush(metrics);
        if (!ui->quiet)
            fprintf(ui->out, "eval step %lld: loss %.4f, preference accuracy %.4f\n", (long long)step,
                    mean[TL_PREF_M_LOSS], mean[TL_PREF_M_REWARDS_ACCURACIES]);
        s = TL_OK;
    }
    tl_pref_eval_result_free(&r);
    return s;
}

static tl_status workspace_for(tl_session *S, const tl_config *cfg, tl_error *err) {
    /* a sequence holds at least one token, so a micro-batch holds at most micro_batch_tokens sequences */
    TL_TRY(tl_workspace_create(&S->model, &S->pool, cfg->micro_batch_tokens, cfg->micro_batch_tokens, &S->ws, err));
    if (S->task == TL_TASK_SFT) return TL_OK;
    return tl_pref_scratch_create(cfg->micro_batch_tokens, cfg->micro_batch_tokens, S->model.cfg.hidden_size,
                                  &S->psc, err);
}

/* data_parallel deals a step's micro-batches round robin: micro-batch k is rank k mod world's. */
static int runs_microbatch(const tl_session *S, int k) {
    return !S->dp || k % tl_dist_world(S->dist) == tl_dist_rank(S->dist);
}

/* Reference log-prob cache (task.precompute_ref): two sums per dataset pair, NaN until first computed. The
 * reference is frozen, so a pair's values never change; after a resume they are simply computed again. */
typedef struct {
    double *v;
    double *in, *out; /* per micro-batch staging, [2 * max pairs] */
} tl_ref_cache;

/* One training step's micro-batches for DPO or reward models; per-adapter stats into st[]. */
static tl_status pref_step(tl_session *S, const tl_config *cfg, const tl_pref_step *PS, tl_ref_cache *rc,
                           int32_t *buf, double *wbuf, tl_pref_stats *st, tl_error *err) {
    const tl_step_batch *B = PS->batch;
    int64_t k0 = 0;
    for (int mbi = 0; mbi < B->n_mb; mbi++) {
        int64_t k1 = k0;
        while (k1 < PS->n_pairs && PS->pairs[k1].mb == mbi) k1++;
        int n = (int)(k1 - k0);
        if (!runs_microbatch(S, mbi)) {
            k0 = k1;
            continue;
        }
        int32_t *sc_c = buf, *sc_r = buf + n, *ad = buf + 2 * n;
        int cached = rc->v != NULL;
        for (int k = 0; k < n; k++) {
            const tl_pref_pair *pp = &PS->pairs[k0 + k];
            sc_c[k] = pp->chosen, sc_r[k] = pp->rejected, ad[k] = pp->adapter;
            wbuf[k] = 1.0 / (double)B->target_count[pp->adapter];
            if (rc->v) {
                rc->in[2 * k] = rc->v[2 * pp->pair], rc->in[2 * k + 1] = rc->v[2 * pp->pair + 1];
                if (isnan(rc->in[2 * k]) || isnan(rc->in[2 * k + 1])) cached = 0;
            }
        }
        tl_pair_set ps = {.n = n, .seq_c = sc_c, .seq_r = sc_r, .adapter = ad, .weight = wbuf,
                          .ref_in = cached ? rc->in : NULL, .ref_out = rc->v && !cached ? rc->out : NULL};
        tl_pref_acc acc = {.stats = st};
        if (S->task == TL_TASK_DPO)
            TL_TRY(tl_dpo_microbatch(&S->model, &S->pool, S->have_ref ? &S->ref : NULL, S->ws, S->psc, &B->mb[mbi],
                                     &ps, &S->popts, 1, &acc, err));
        else
            TL_TRY(tl_reward_microbatch(&S->model, &S->pool, S->ws, S->psc, &B->mb[mbi], &ps, cfg->task_center_rewards,
                                        1, &acc, err));
        if (ps.ref_out)
            for (int k = 0; k < n; k++) {
                int64_t pi = PS->pairs[k0 + k].pair;
                rc->v[2 * pi] = rc->out[2 * k], rc->v[2 * pi + 1] = rc->out[2 * k + 1];
            }
        k0 = k1;
    }
    return TL_OK;
}

/* SIGTERM / SIGUSR1: finish the step, checkpoint, exit TL_EXIT_PREEMPTED. A signal handler can only reach a
 * global; this flag is the one piece of global state of the trainer. */
static volatile sig_atomic_t g_stop_signal = 0;
static void on_stop_signal(int sig) { g_stop_signal = sig; }

static void install_stop_handlers(struct sigaction *old_term, struct sigaction *old_usr1) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    g_stop_signal = 0;
    sigaction(SIGTERM, &sa, old_term);
    sigaction(SIGUSR1, &sa, old_usr1);
}

/* The tokens adapter a will train on over the run (its steps x examples per step x its mean example length,
 * capped at max_seq_len): the cost that user_shard balances. */
static void adapter_costs(const tl_session *S, const tl_config *cfg, const int64_t *total_steps, double *cost) {
    for (int a = 0; a < S->map.n_adapters; a++) {
        double len = 0;
        int64_t n = S->map.n_examples[a];
        for (int64_t i = 0; i < n; i++) {
            int64_t e = S->map.examples[a][i], l;
            if (S->task == TL_TASK_SFT)
                l = S->train.offsets[e + 1] - S->train.offsets[e];
            else
                l = 2 * (S->ptrain.prompt.offsets[e + 1] - S->ptrain.prompt.offsets[e]) +
                    (S->ptrain.chosen.offsets[e + 1] - S->ptrain.chosen.offsets[e]) +
                    (S->ptrain.rejected.offsets[e + 1] - S->ptrain.rejected.offsets[e]);
            if (l > (int64_t)cfg->data_max_seq_len * (S->task == TL_TASK_SFT ? 1 : 2))
                l = (int64_t)cfg->data_max_seq_len * (S->task == TL_TASK_SFT ? 1 : 2);
            len += (double)l;
        }
        cost[a] = n ? (double)total_steps[a] * cfg->examples_per_adapter * len / (double)n : 0;
    }
}

/* What one log line reports, summed over ranks. */
typedef struct {
    double loss, gn, lr, cnt, tokens, tok_since, truncated;
    tl_pref_stats all;
} tl_log_sums;

/* The step's log numbers, the same on every rank. data_parallel: each rank holds partial per-adapter sums
 * (loss, preference stats), reduced per adapter first; everything else is replicated, so the scalars need no
 * reduction. user_shard: each rank's numbers are complete for its own adapters and disjoint from the others'. */
static tl_status log_sums(tl_session *S, const tl_step_batch *B, double *aloss, const float *gnorm, const float *lrs,
                          tl_pref_stats *pst, double *buf, int64_t tok_since, int64_t truncated, int64_t step,
                          tl_log_sums *o, tl_error *err) {
    int world = tl_dist_world(S->dist);
    char what[64];
    snprintf(what, sizeof what, "metrics of step %lld", (long long)step + 1);
    if (S->dp && world > 1) {
        int k = pst ? PSTAT_N : 1;
        for (int i = 0; i < B->n_active; i++) {
            if (pst)
                pstat_pack(&pst[B->active[i]], buf + (size_t)i * k);
            else
                buf[i] = aloss[B->active[i]];
        }
        TL_TRY(tl_dist_allreduce_f64_host(S->dist, buf, (size_t)B->n_active * k, what, err));
        for (int i = 0; i < B->n_active; i++) {
            int a = B->active[i];
            if (pst) {
                pstat_unpack(buf + (size_t)i * k, &pst[a]);
                double mean[TL_PREF_N_METRICS];
                tl_pref_stats_mean(&pst[a], mean);
                aloss[a] = mean[TL_PREF_M_LOSS];
            } else {
                aloss[a] = buf[i];
            }
        }
    }
    memset(o, 0, sizeof *o);
    tl_pref_stats_init(&o->all);
    for (int i = 0; i < B->n_active; i++) {
        int a = B->active[i];
        if (B->target_count[a] == 0) continue;
        o->loss += aloss[a], o->gn += gnorm[i], o->lr += lrs[i], o->cnt += 1;
        if (pst) tl_pref_stats_merge(&o->all, &pst[a]);
    }
    o->tokens = (double)B->n_tokens, o->tok_since = (double)tok_since, o->truncated = (double)truncated;
    if (S->dp || world == 1) return TL_OK;
    double v[7 + PSTAT_N] = {o->loss, o->gn, o->lr, o->cnt, o->tokens, o->tok_since, o->truncated};
    pstat_pack(&o->all, v + 7);
    TL_TRY(tl_dist_allreduce_f64_host(S->dist, v, 7 + PSTAT_N, what, err));
    o->loss = v[0], o->gn = v[1], o->lr = v[2], o->cnt = v[3], o->tokens = v[4], o->tok_since = v[5];
    o->truncated = v[6];
    pstat_unpack(v + 7, &o->all);
    return TL_OK;
}

/* Rank 0 alone writes checkpoints and the export. With a local pool (user_shard) it writes them while the
 * owners' rows arrive through collectives (tl_dist_collect_*: the other ranks serve the same sequence);
 * otherwise from its own pool (data_parallel keeps every rank's pool identical). The ranks then meet, so a
 * failure on rank 0 reaches the others as a failed collective and no rank runs ahead of a checkpoint. */
static tl_status save_run_state(tl_session *S, const tl_config *cfg, int64_t done_steps, tl_cursor *cursors,
                                int checkpoint, int export_adapters, const tl_ui *ui, tl_error *err) {
    int rank0 = tl_dist_rank(S->dist) == 0;
    char adir[TL_PATH_MAX + 16];
    snprintf(adir, sizeof adir, "%s/adapters", cfg->output_dir);
    int written = 0;
    tl_status s = TL_OK;
    if (!S->lp) {
        if (rank0 && checkpoint)
            s = tl_checkpoint_save(cfg->output_dir, cfg, &S->pool, S->be, done_steps, cursors, cfg->keep_checkpoints,
                                   err);
        if (rank0 && export_adapters && !s) s = tl_export_pool(&S->pool, S->be, cfg, cfg->model_path, adir, &written, err);
    } else {
        int nG = S->n_global;
        tl_dist_collector c;
        TL_TRY(tl_dist_collect_init(&c, S->dist, &S->pool, S->be, S->gidx, nG, err));
        int64_t *steps = calloc((size_t)nG + 1, sizeof *steps);
        tl_cursor *cur = calloc((size_t)nG + 1, sizeof *cur);
        s = steps && cur ? tl_dist_collect_ints(&c, cursors, steps, cur, err)
                         : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
        /* the whole run's layout, names and step counts; its rows come from the reader */
        tl_lora_pool run = S->pool;
        run.n_slots = nG, run.names = S->map.names, run.steps = steps;
        run.params = run.grads = run.m = run.v = NULL;
        tl_state_reader rd = tl_dist_collect_reader(&c);
        if (!s && checkpoint)
            s = rank0 ? tl_checkpoint_save_from(cfg->output_dir, cfg, &run, &rd, done_steps, cur,
                                                cfg->keep_checkpoints, err)
                      : tl_dist_collect_serve(&c, 0, err);
        if (!s && export_adapters)
            s = rank0 ? tl_export_pool_from(&run, &rd, cfg, cfg->model_path, adir, &written, err)
                      : tl_dist_collect_serve(&c, 1, err);
        free(steps);
        free(cur);
        tl_dist_collect_free(&c);
    }
    TL_TRY(s);
    if (rank0 && export_adapters) fprintf(ui->out, "exported %d PEFT adapter(s) to %s/\n", written, adir);
    return tl_dist_barrier(S->dist, export_adapters ? "export by rank 0" : "checkpoint written by rank 0", err);
}

/* Resume: the checkpoint holds the whole run, whatever the number of ranks that wrote it; a local pool reads
 * only its own adapters' rows. */
static tl_status load_run_state(tl_session *S, const char *ckpt, int64_t *start, tl_cursor *cursors, tl_error *err) {
    if (!S->lp) return tl_checkpoint_load(ckpt, &S->pool, S->be, start, cursors, err);
    return tl_checkpoint_load_rows(ckpt, &S->pool, S->be, S->map.names, S->n_global, S->gidx, start, cursors, err);
}

/* Places this process: the CUDA device of its local rank and its share of the cores. */
static void place_process(tl_session *S, const tl_config *cfg) {
    S->device = 0, S->threads = cfg->threads;
    if (S->env.world == 1) return;
    if (cfg->threads == 0 && !getenv("OMP_NUM_THREADS")) S->threads = tl_dist_cpu_threads(&S->env);
#ifdef TL_HAVE_CUDA
    S->device = tl_dist_cuda_device(&S->env, tl_cuda_device_count());
#endif
}

tl_status tl_train(const tl_config *cfg, const tl_ui *ui_in, int *stopped, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    int64_t *total_steps = NULL;
    double *aloss = NULL, *wbuf = NULL, *cost = NULL, *rbuf = NULL;
    float *logp = NULL, *gnorm = NULL, *lrs = NULL;
    tl_adam_slot *adam = NULL;
    int32_t *pbuf = NULL;
    tl_pref_stats *pst = NULL;
    tl_ref_cache rc = {0};
    tl_metrics M = {0};
    tl_ui rui = *ui_in;
    const tl_ui *ui = &rui;
    FILE *devnull = NULL;
    struct sigaction old_term, old_usr1;
    int handlers = 0;
    tl_status s;
    int rank = 0, world = 1;
    *stopped = 0;
#define CHECK(x)            \
    do {                    \
        s = (x);            \
        if (s) goto done;   \
    } while (0)
    /* from the start: a preemption during setup still ends in a checkpoint after the first step */
    install_stop_handlers(&old_term, &old_usr1);
    handlers = 1;
    CHECK(tl_dist_env_detect(&S.env, err));
    rank = S.env.rank, world = S.env.world;
    if (rank > 0) { /* rank 0 speaks for the run; the others report only their own failures */
        devnull = fopen("/dev/null", "w");
        if (!devnull) CHECK(tl_fail(err, TL_ERR_RUNTIME, "rank %d: cannot open /dev/null", rank));
        rui.out = devnull, rui.log = devnull, rui.quiet = 1, rui.is_tty = 0;
    }
    place_process(&S, cfg);
    CHECK(open_inputs(&S, cfg, 1, 0, err));
    tl_adapter_key key = parse_key(cfg->adapter_key);
    S.dp = !strcmp(cfg->dist_strategy, "data_parallel") || (!strcmp(cfg->dist_strategy, "auto") && key == TL_KEY_GLOBAL);
    int pref = S.task != TL_TASK_SFT;
    if (pref) {
        CHECK(tl_adapter_map_build_pref(&S.ptrain, key, NULL, 0, &S.map, err));
        S.have_map = 1;
        warn_empty_users(ui, S.ptrain.path, S.ptrain.n_users, S.ptrain.user_names, &S.map, key);
        warn_untrainable(ui, S.ptrain.path, &S.map, NULL, &S.ptrain);
    } else {
        CHECK(tl_adapter_map_build(&S.train, key, NULL, 0, &S.map, err));
        S.have_map = 1;
        warn_empty_users(ui, S.train.path, S.train.n_users, S.train.user_names, &S.map, key);
        warn_untrainable(ui, S.train.path, &S.map, &S.train, NULL);
    }
    CHECK(count_adapter_steps(cfg, S.map.n_adapters, &total_steps, err));
    S.n_global = S.map.n_adapters;

    /* user_shard over many ranks: each rank owns a share of the adapters (balanced by the tokens each will train
     * on) and its pool, batcher and optimizer hold those only; the round robin stays the whole run's */
    S.lp = world > 1 && !S.dp;
    const tl_adapter_map *tmap = &S.map;
    if (S.lp) {
        int NG = S.n_global;
        if (NG < world)
            CHECK(tl_fail(err, TL_ERR_INPUT, "dist.strategy user_shard: %d ranks for %d adapter(s), so a rank would "
                          "own none: run at most %d ranks, or set dist.strategy: data_parallel", world, NG, NG));
        /* owners are needed only here: this rank's share is S.gidx */
        int *owner = malloc((size_t)NG * sizeof *owner);
        S.gidx = malloc((size_t)NG * sizeof *S.gidx);
        cost = malloc((size_t)NG * sizeof *cost);
        char **lnames = malloc((size_t)NG * sizeof *lnames);
        if (!owner || !S.gidx || !cost || !lnames) {
            free(owner), free(lnames);
            CHECK(tl_fail(err, TL_ERR_RUNTIME, "out of host memory"));
        }
        adapter_costs(&S, cfg, total_steps, cost);
        tl_dist_assign_owners(cost, NG, world, owner);
        free(cost);
        cost = NULL;
        int nl = 0;
        for (int g = 0; g < NG; g++)
            if (owner[g] == rank) S.gidx[nl] = g, lnames[nl] = S.map.names[g], total_steps[nl] = total_steps[g], nl++;
        free(owner);
        if (nl == 0) { /* cannot happen with NG >= world (tl_dist_assign_owners); a pool of none would mean all */
            free(lnames);
            CHECK(tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: owns no adapter", rank, world));
        }
        s = pref ? tl_adapter_map_build_pref(&S.ptrain, key, lnames, nl, &S.lmap, err)
                 : tl_adapter_map_build(&S.train, key, lnames, nl, &S.lmap, err);
        free(lnames);
        if (s) goto done;
        S.have_lmap = 1;
        tmap = &S.lmap;
    }
    tl_batcher_opts bo = {.examples_per_adapter = cfg->examples_per_adapter,
                          .adapters_per_step = cfg->adapters_per_step,
                          .micro_batch_tokens = cfg->micro_batch_tokens,
                          .max_seq_len = cfg->data_max_seq_len,
                          .seed = cfg->seed};
    if (pref) {
        CHECK(tl_pref_batcher_init(&S.ptrain, tmap, &bo, &S.pbatcher, err));
        if (S.lp) CHECK(tl_pref_batcher_set_global(S.pbatcher, S.gidx, S.n_global, err));
    } else {
        CHECK(tl_batcher_init(&S.train, tmap, &bo, &S.batcher, err));
        if (S.lp) CHECK(tl_batcher_set_global(S.batcher, S.gidx, S.n_global, err));
    }
    CHECK(make_pools(&S, cfg, tmap->names, tmap->n_adapters, err));
    tl_cursor *cursors = pref ? tl_pref_batcher_cursors(S.pbatcher) : tl_batcher_cursors(S.batcher);
    int n = S.pool.n_slots;

    if (world > 1 && S.dp) { /* evaluation is split too: round robin over the replicated pool */
        S.eval_mine = calloc((size_t)n, 1);
        if (!S.eval_mine) CHECK(tl_fail(err, TL_ERR_RUNTIME, "out of host memory"));
        for (int a = 0; a < n; a++) S.eval_mine[a] = a % world == rank;
    }

    /* Inputs are valid: connect the ranks (the NCCL id file may create <run>/.rendezvous), then rank 0 may write
     * the run directory. */
    {
        char rdv[TL_PATH_MAX + 16];
        snprintf(rdv, sizeof rdv, "%s/.rendezvous", cfg->output_dir);
        tl_dist_opts dopts = {.backend = S.be->name, .timeout_s = cfg->dist_timeout_s,
                              .rendezvous_dir = cfg->dist_rendezvous_dir[0] ? cfg->dist_rendezvous_dir : rdv};
#ifdef TL_HAVE_CUDA
        if (!strcmp(S.be->name, "cuda")) dopts.cuda_stream = tl_cuda_stream(S.be);
#endif
        CHECK(tl_dist_init(&S.env, &dopts, &S.dist, err));
    }

    if (rank == 0 && !strcmp(cfg->resume, "never")) {
        /* a fresh run: the earlier run's checkpoints, adapters and metrics go aside, so that export, eval and a
         * later resume cannot take them for this run's (its checkpoints of later steps would otherwise win) */
        char aside[TL_PATH_MAX];
        int moved = 0;
        CHECK(tl_run_set_aside(cfg->output_dir, -1, aside, sizeof aside, &moved, err));
        if (moved)
            fprintf(ui->log, "note: train.resume is never: the earlier run's outputs in %s were moved to %s/\n",
                    cfg->output_dir, aside);
    }
    if (rank == 0) {
        CHECK(tl_mkdir_p(cfg->output_dir, err));
        char path[TL_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/config.yaml", cfg->output_dir);
        CHECK(tl_config_write_file(cfg, path, err));
    }

    int64_t start = 0;
    char ckpt[TL_PATH_MAX];
    int found = 0;
    if (!strcmp(cfg->resume, "auto")) {
        CHECK(tl_checkpoint_latest(cfg->output_dir, ckpt, sizeof ckpt, &found, err));
    } else if (strcmp(cfg->resume, "never") != 0) {
        snprintf(ckpt, sizeof ckpt, "%s", cfg->resume);
        found = 1;
    }
    if (world > 1) { /* every rank resumes from the checkpoint rank 0 found, whatever the file system shows it */
        int64_t fs[2] = {found, 0};
        char pathbuf[TL_PATH_MAX];
        memset(pathbuf, 0, sizeof pathbuf);
        if (found) snprintf(pathbuf, sizeof pathbuf, "%s", ckpt);
        CHECK(tl_dist_bcast_host(S.dist, fs, sizeof fs, 0, "resume decision", err));
        CHECK(tl_dist_bcast_host(S.dist, pathbuf, sizeof pathbuf, 0, "resume checkpoint path", err));
        found = (int)fs[0];
        memcpy(ckpt, pathbuf, sizeof ckpt);
    }
    if (found) {
        CHECK(load_run_state(&S, ckpt, &start, cursors, err));
        if (start > cfg->steps)
            CHECK(tl_fail(err, TL_ERR_INPUT, "train.resume: %s is at step %lld, beyond train.steps = %lld (raise "
                          "train.steps, or set train.resume: never to start over)", ckpt, (long long)start,
                          (long long)cfg->steps));
        fprintf(ui->out, "resuming from %s (step %lld)\n", ckpt, (long long)start);
        if (rank == 0 && strcmp(cfg->resume, "auto") != 0) {
            /* a given checkpoint: this run directory's checkpoints of later steps are another history */
            char aside[TL_PATH_MAX];
            int moved = 0;
            CHECK(tl_run_set_aside(cfg->output_dir, start, aside, sizeof aside, &moved, err));
            if (moved)
                fprintf(ui->log, "note: checkpoints of %s past step %lld were moved to %s/checkpoints/\n",
                        cfg->output_dir, (long long)start, aside);
        }
    }
    if (rank == 0) CHECK(metrics_open(&M, cfg->output_dir, found ? start : -1, err));
    CHECK(workspace_for(&S, cfg, err));

    aloss = calloc((size_t)n, sizeof(double));
    gnorm = calloc((size_t)n, sizeof(float));
    lrs = calloc((size_t)n, sizeof(float));
    adam = calloc((size_t)n, sizeof *adam);
    logp = malloc((size_t)cfg->micro_batch_tokens * sizeof(float));
    rbuf = malloc((size_t)n * PSTAT_N * sizeof(double));
    if (!aloss || !gnorm || !lrs || !adam || !logp || !rbuf) CHECK(tl_fail(err, TL_ERR_RUNTIME, "out of host memory"));
    if (pref) {
        size_t maxp = (size_t)cfg->micro_batch_tokens; /* pairs per micro-batch, generously */
        pst = calloc((size_t)n, sizeof *pst);
        pbuf = malloc(3 * maxp * sizeof(int32_t));
        wbuf = malloc(maxp * sizeof(double));
        if (!pst || !pbuf || !wbuf) CHECK(tl_fail(err, TL_ERR_RUNTIME, "out of host memory"));
        if (S.task == TL_TASK_DPO && cfg->task_precompute_ref && tl_pref_needs_reference(S.popts.kind)) {
            rc.v = malloc(2 * (size_t)S.ptrain.n_pairs * sizeof(double));
            rc.in = malloc(2 * maxp * sizeof(double));
            rc.out = malloc(2 * maxp * sizeof(double));
            if (!rc.v || !rc.in || !rc.out) CHECK(tl_fail(err, TL_ERR_RUNTIME, "out of host memory for the reference cache"));
            for (int64_t i = 0; i < 2 * S.ptrain.n_pairs; i++) rc.v[i] = NAN;
        }
    }

    fprintf(ui->out,
            "tailor: %s on the %s backend, model %s (%d layers, hidden %d, vocab %d), %d adapter(s) of rank %d, "
            "%lld trainable parameters each; activations %.1f MiB\n",
            cfg->task_type, S.be->name, cfg->model_path, S.model.cfg.num_hidden_layers, S.model.cfg.hidden_size,
            S.model.cfg.vocab_size, n, cfg->adapter_rank, (long long)S.pool.P,
            (double)tl_workspace_bytes(S.ws) / (1 << 20));
    if (world > 1)
        fprintf(ui->out, "%d ranks (%s, %s), strategy %s%s\n", world, S.env.source, tl_dist_transport(S.dist),
                S.dp ? "data_parallel" : "user_shard",
                S.dp ? ": each step's micro-batches are dealt to the ranks, gradients summed per adapter"
                     : ": each rank trains its own adapters, balanced by tokens");

    /* Fault injection for the resume and fault tests: die by SIGKILL right after this global step, as a crash
     * would (TAILOR_FAULT_KILL_RANK limits it to one rank). */
    const char *kill_env = getenv("TAILOR_FAULT_KILL_AFTER_STEP");
    const char *kill_rank_env = getenv("TAILOR_FAULT_KILL_RANK");
    int64_t kill_after = kill_env && (!kill_rank_env || atoi(kill_rank_env) == rank) ? atoll(kill_env) : -1;
    double t0 = tl_now_s(), t_last = t0;
    int64_t tok_since = 0, truncated = 0;
    double truncated_all = 0;
    int64_t last_ckpt = found ? start : -1;
    int stop_sig = 0;
    int64_t step = start;
    for (; step < cfg->steps; step++) {
        tl_step_batch *B = NULL;
        tl_pref_step *PS = NULL;
        if (pref) {
            tl_pref_batcher_set_adapter_steps(S.pbatcher, S.pool.steps);
            CHECK(tl_pref_batcher_next(S.pbatcher, step, &PS, err));
            B = PS->batch;
        } else {
            tl_batcher_set_adapter_steps(S.batcher, S.pool.steps);
            CHECK(tl_batcher_next(S.batcher, step, &B, err));
        }
        if (S.dp && world > 1 && B->n_mb < world && step == start)
            fprintf(ui->log, "warning: step %lld has %d micro-batch(es) for %d ranks: some ranks idle (lower "
                    "train.micro_batch_tokens or raise train.examples_per_adapter)\n", (long long)step + 1, B->n_mb,
                    world);
        for (int i = 0; i < B->n_active; i++) {
            int a = B->active[i];
            aloss[a] = 0;
            if (pst) tl_pref_stats_init(&pst[a]);
            S.be->zero(S.be, S.pool.grads + (size_t)a * S.pool.P, S.pool.P * sizeof(float));
        }
        if (pref) {
            CHECK(pref_step(&S, cfg, PS, &rc, pbuf, wbuf, pst, err));
            for (int i = 0; i < B->n_active; i++) {
                double mean[TL_PREF_N_METRICS];
                tl_pref_stats_mean(&pst[B->active[i]], mean);
                aloss[B->active[i]] = mean[TL_PREF_M_LOSS];
            }
        } else {
            for (int k = 0; k < B->n_mb; k++) {
                if (!runs_microbatch(&S, k)) continue;
                tl_host_mb *mb = &B->mb[k];
                CHECK(tl_model_step(&S.model, &S.pool, S.ws, mb, 1, logp, err));
                for (int i = 0; i < mb->n_tok; i++)
                    if (mb->targets[i] >= 0) aloss[mb->adapter[i]] -= (double)mb->weight[i] * logp[i];
            }
        }
        if (S.dp) CHECK(tl_dist_pool_reduce_grads(S.dist, &S.pool, B->active, B->n_active, step, err));
        CHECK(tl_optim_step(&S.pool, S.be, cfg, B->active, B->n_active, total_steps, gnorm, lrs, adam, err));
        tok_since += B->n_tokens;
        truncated += B->n_truncated;

        int64_t done_steps = step + 1;
        int log_now = done_steps % cfg->log_every == 0 || done_steps == cfg->steps || step == start;
        if (log_now) {
            tl_log_sums L;
            CHECK(log_sums(&S, B, aloss, gnorm, lrs, pst, rbuf, tok_since, truncated, step, &L, err));
            truncated_all = L.truncated;
            double loss = L.loss, gn = L.gn, lr = L.lr;
            int cnt = (int)L.cnt;
            if (cnt) loss /= cnt, gn /= cnt, lr /= cnt;
            double t = tl_now_s(), tps = L.tok_since / fmax(t - t_last, 1e-9);
            if (M.f) {
                char j[4][48];
                fprintf(M.f,
                        "{\"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, \"tokens\": %lld, "
                        "\"tokens_per_s\": %s, \"elapsed_s\": %.3f, \"adapters\": %d, \"truncated\": %lld",
                        (long long)done_steps, jnum(j[0], "%.6f", loss), jnum(j[1], "%.6g", lr),
                        jnum(j[2], "%.6f", gn), (long long)L.tokens, jnum(j[3], "%.1f", tps), t - t0, cnt,
                        (long long)L.truncated);
                if (pst) { /* TRL's batch means over the step's pairs */
                    double mean[TL_PREF_N_METRICS];
                    tl_pref_stats_mean(&L.all, mean);
                    for (int k = 1; k < TL_PREF_N_METRICS; k++)
                        if (isfinite(mean[k])) fprintf(M.f, ", \"%s\": %.6f", tl_pref_metric_names[k], mean[k]);
                }
                fputs("}\n", M.f);
                fflush(M.f);
            }
            char eta[32];
            fmt_eta(eta, sizeof eta, (t - t0) / (double)(done_steps - start) * (double)(cfg->steps - done_steps));
            if (!ui->quiet) {
                if (ui->is_tty)
                    fprintf(ui->out, "\rstep %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s   ",
                            (long long)done_steps, (long long)cfg->steps, loss, lr, tps, eta);
                else
                    fprintf(ui->out, "step %lld/%lld loss %.4f lr %.3e grad_norm %.4f tokens/s %.0f eta %s\n",
                            (long long)done_steps, (long long)cfg->steps, loss, lr, gn, tps, eta);
                fflush(ui->out);
            }
            t_last = t, tok_since = 0;
        }
        /* a stop signal on any rank stops every rank after this same step */
        stop_sig = g_stop_signal;
        if (world > 1) {
            char what[64];
            snprintf(what, sizeof what, "stop vote after step %lld", (long long)done_steps);
            CHECK(tl_dist_allreduce_max_int_host(S.dist, &stop_sig, 1, what, err));
        }
        if (stop_sig && done_steps < cfg->steps) {
            if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
            CHECK(save_run_state(&S, cfg, done_steps, cursors, 1, 0, ui, err));
            fprintf(ui->out, "stopped by %s after step %lld of %lld: checkpoint written; run the same command to "
                    "resume (exit code %d)\n", stop_sig == SIGUSR1 ? "SIGUSR1" : stop_sig == SIGTERM ? "SIGTERM" : "a signal",
                    (long long)done_steps, (long long)cfg->steps, TL_EXIT_PREEMPTED);
            *stopped = 1;
            s = TL_OK;
            goto done;
        }
        if (cfg->checkpoint_every > 0 && done_steps % cfg->checkpoint_every == 0 && done_steps < cfg->steps) {
            CHECK(save_run_state(&S, cfg, done_steps, cursors, 1, 0, ui, err));
            last_ckpt = done_steps;
        }
        if ((S.have_eval || S.have_peval) && cfg->eval_every > 0 && done_steps % cfg->eval_every == 0 &&
            done_steps < cfg->steps) {
            if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
            CHECK(run_eval(&S, cfg, ui, M.f, done_steps, 0, err)); /* each rank its own adapters: no gather */
        }
        if (done_steps == kill_after) {
            fflush(NULL);
            raise(SIGKILL);
        }
    }
    if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
    if (truncated_all > 0)
        fprintf(ui->log, "note: %.0f sequence(s) were longer than data.max_seq_len=%d and were truncated (prompt "
                         "dropped from the left)\n",
                truncated_all, cfg->data_max_seq_len);
    /* the final checkpoint (unless the last step just wrote one) and the exported adapters, in one collection */
    CHECK(save_run_state(&S, cfg, cfg->steps, cursors, last_ckpt != cfg->steps, 1, ui, err));
    if (S.have_eval || S.have_peval) CHECK(run_eval(&S, cfg, ui, NULL, cfg->steps, 1, err));
#ifdef TL_HAVE_CUDA
    if (!strcmp(S.be->name, "cuda")) {
        size_t now_b = 0, peak_b = 0;
        tl_cuda_mem_stats(S.be, &now_b, &peak_b);
        fprintf(ui->out, "GPU memory: planned %.1f MiB of activations, peak %.1f MiB allocated\n",
                (double)tl_workspace_bytes(S.ws) / (1 << 20), (double)peak_b / (1 << 20));
    }
#endif
    fprintf(ui->out, "run directory: %s (metrics.jsonl, checkpoints/, adapters/%s)\n", cfg->output_dir,
            S.have_eval || S.have_peval ? ", eval.json" : "");
    s = TL_OK;
done:
#undef CHECK
    if (handlers) {
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGUSR1, &old_usr1, NULL);
    }
    if (s && S.dist && tl_dist_world(S.dist) > 1) {
        /* the others may be waiting in a collective for this rank: say what failed, then end every rank */
        if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
        fflush(ui->out);
        if (strncmp(err->msg, "rank ", 5) == 0)
            fprintf(stderr, "tailor: error: %s\n", err->msg);
        else
            fprintf(stderr, "tailor: error: rank %d of %d: %s\n", S.env.rank, S.env.world, err->msg);
        tl_dist_abort(S.dist, s == TL_ERR_INPUT ? 2 : 1);
    }
    if (M.f) fclose(M.f);
    if (devnull) fclose(devnull);
    free(total_steps);
    free(aloss);
    free(gnorm);
    free(lrs);
    free(adam);
    free(logp);
    free(pst);
    free(pbuf);
    free(wbuf);
    free(cost);
    free(rbuf);
    free(rc.v);
    free(rc.in);
    free(rc.out);
    tl_session_close(&S);
    return s;
}

/* The pool of a run as its latest checkpoint (or the given checkpoint directory) holds it. */
static tl_status open_checkpoint_pool(tl_session *S, const tl_config *cfg, const char *ckpt, int64_t *step,
                                      tl_error *err) {
    char **names = NULL;
    int n = 0;
    TL_TRY(tl_checkpoint_read_names(ckpt, &names, &n, err));
    tl_status s = tl_lora_pool_init_head(&S->pool, &S->model, n, names, cfg->adapter_rank,
                                         (float)cfg->adapter_alpha, cfg->adapter_rslora, (float)cfg->adapter_dropout,
                                         cfg->adapter_targets, cfg->seed, task_of(cfg) == TL_TASK_REWARD, err);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (s) return s;
    S->have_pool = 1;
    tl_cursor *cur = calloc((size_t)n, sizeof *cur);
    if (!cur) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    s = tl_checkpoint_load(ckpt, &S->pool, S->be, step, cur, err);
    free(cur);
    return s;
}

static tl_status find_checkpoint(const char *run_or_ckpt, char *ckpt, size_t cap, tl_error *err) {
    int found = 0;
    char marker[TL_PATH_MAX + 16];
    snprintf(marker, sizeof marker, "%s/COMPLETE", run_or_ckpt);
    struct stat st;
    if (stat(marker, &st) == 0) {
        snprintf(ckpt, cap, "%s", run_or_ckpt);
        return TL_OK;
    }
    TL_TRY(tl_checkpoint_latest(run_or_ckpt, ckpt, cap, &found, err));
    if (!found)
        return tl_fail(err, TL_ERR_INPUT, "%s: no checkpoint found (expected a run directory with checkpoints/ or a "
                                          "checkpoint directory)",
                       run_or_ckpt);
    return TL_OK;
}

/* eval and export write one file tree each: many copies of them would race on it */
static tl_status one_process_only(const char *cmd, tl_error *err) {
    tl_dist_env e;
    TL_TRY(tl_dist_env_detect(&e, err));
    if (e.world > 1)
        return tl_fail(err, TL_ERR_INPUT, "tailor %s runs as one process, but this is rank %d of %d (%s environment): "
                       "run it without mpirun or srun", cmd, e.rank, e.world, e.source);
    return TL_OK;
}

tl_status tl_eval(const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    tl_status s;
    char ckpt[TL_PATH_MAX];
    int64_t step = 0;
    TL_TRY(one_process_only("eval", err));
    s = open_inputs(&S, cfg, 0, 1, err);
    if (!s) s = find_checkpoint(cfg->output_dir, ckpt, sizeof ckpt, err);
    if (!s) s = open_checkpoint_pool(&S, cfg, ckpt, &step, err);
    if (!s && S.task == TL_TASK_DPO && cfg->adapter_init_from[0]) { /* the reference policy */
        s = tl_lora_pool_init(&S.ref, &S.model, S.pool.n_slots, S.pool.names, cfg->adapter_rank,
                              (float)cfg->adapter_alpha, cfg->adapter_rslora, 0.0f, cfg->adapter_targets, cfg->seed,
                              err);
        if (!s) S.have_ref = 1, s = load_init_from(&S.ref, S.be, cfg->adapter_init_from, err);
    }
    if (!s) s = workspace_for(&S, cfg, err);
    if (!s) {
        fprintf(ui->out, "eval of %s (step %lld)\n", ckpt, (long long)step);
        s = run_eval(&S, cfg, ui, NULL, step, 1, err);
    }
    if (!s) fprintf(ui->out, "wrote %s/eval.json\n", cfg->output_dir);
    tl_session_close(&S);
    return s;
}

tl_status tl_export_cmd(const char *run_or_ckpt, const char *out_dir, const tl_ui *ui, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    char ckpt[TL_PATH_MAX];
    tl_config cfg;
    int64_t step = 0;
    TL_TRY(one_process_only("export", err));
    TL_TRY(find_checkpoint(run_or_ckpt, ckpt, sizeof ckpt, err));
    TL_TRY(tl_checkpoint_read_config(ckpt, &cfg, err));
    /* The pool needs only the model's shapes: read its configuration, keep the weights on disk. */
    tl_status s = tl_backend_cpu_create(1, &S.be, err);
    if (!s) {
        S.model.be = S.be;
        s = tl_model_config_from(cfg.model_path, &S.model.cfg, err);
    }
    if (!s) s = open_checkpoint_pool(&S, &cfg, ckpt, &step, err);
    if (!s) {
        /* default: the adapters/ directory of the run the checkpoint belongs to: <run>/adapters for a run, and for
         * <run>/checkpoints/step-N, found by name (not by "..", which a symlinked checkpoint would lead elsewhere);
         * a checkpoint outside a run's checkpoints/ folder has no run: --out is needed */
        char dflt[TL_PATH_MAX + 32], parent[TL_PATH_MAX], run[TL_PATH_MAX];
        if (!out_dir) {
            if (strcmp(ckpt, run_or_ckpt) == 0) {
                s = tl_path_parent(ckpt, parent, sizeof parent, err);
                const char *base = strrchr(parent, '/');
                base = base ? base + 1 : parent;
                if (!s && strcmp(base, "checkpoints") != 0)
                    s = tl_fail(err, TL_ERR_INPUT, "%s: not inside a run's checkpoints/ folder, so it has no run "
                                "directory to export into: give --out DIR", ckpt);
                if (!s) s = tl_path_parent(parent, run, sizeof run, err);
            } else {
                s = tl_path_trim(run_or_ckpt, run, sizeof run, err);
            }
            if (!s) s = tl_path_join(dflt, sizeof dflt, run, "adapters", err);
            out_dir = dflt;
        }
        int written = 0;
        if (!s) s = tl_export_pool(&S.pool, S.be, &cfg, cfg.model_path, out_dir, &written, err);
        if (!s) fprintf(ui->out, "exported %d PEFT adapter(s) from %s (step %lld) to %s/\n", written, ckpt,
                        (long long)step, out_dir);
    }
    tl_session_close(&S);
    return s;
}
