/* session: the session of a command (open, close) and the evaluation over data.eval (see session_impl.h). */
#include "trainer/run/session_impl.h"

#include <stdlib.h>
#include <string.h>

#include "data/tl_io.h"
#include "data/tl_model_tokenizer.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/eval/tl_eval.h"
#include "trainer/eval/tl_pref_eval.h"
#include "trainer/eval/tl_rouge.h"
#include "trainer/run/resident.h"
#include "trainer/run/tl_export.h"
#include "trainer/run/tl_metrics.h"

#include <cjson/cJSON.h>


tl_lora_opts tl_session_lora_opts(const tl_config *cfg, float dropout, int with_head) {
    return (tl_lora_opts){.rank = cfg->adapter_rank, .alpha = (float)cfg->adapter_alpha,
                          .rslora = cfg->adapter_rslora, .dropout = dropout, .targets = cfg->adapter_targets,
                          .seed = cfg->seed, .with_head = with_head};
}

void tl_session_close(tl_session *S) {
    if (S->res) tl_resident_free(S->res);
    free(S->res);
    if (S->batcher) tl_batcher_free(S->batcher);
    if (S->pref_batcher) tl_pref_batcher_free(S->pref_batcher);
    tl_pref_scratch_free(S->pref_scratch);
    if (S->ws) tl_workspace_free(S->ws, S->be);
    if (S->have_pool) tl_lora_pool_free(&S->pool, S->be);
    if (S->have_ref) tl_lora_pool_free(&S->ref, S->be);
    if (S->have_map) tl_adapter_map_free(&S->map);
    if (S->have_train) tl_sft_free(&S->train);
    if (S->have_eval) tl_sft_free(&S->eval);
    if (S->have_pref_train) tl_pref_free(&S->pref_train);
    if (S->have_pref_eval) tl_pref_free(&S->pref_eval_set);
    if (S->have_prompt_train) tl_prompt_free(&S->prompt_train);
    if (S->have_prompt_eval) tl_prompt_free(&S->prompt_eval);
    if (S->model_loaded) tl_model_free(&S->model);
    free(S->global_index);
    free(S->eval_mine);
    if (S->have_local_map) tl_adapter_map_free(&S->local_map);
    tl_dist_free(S->dist);
    if (S->be) S->be->destroy(S->be);
    memset(S, 0, sizeof *S);
}

/* A dataset for this task: SFT files for sft, preference files for dpo and reward, prompt files for grpo and rloo,
 * said clearly otherwise. */
static tl_status check_kind(const char *key, const char *path, tl_task_type task, tl_error *err) {
    char kind[32];
    TL_TRY(tl_h5_kind(path, kind, sizeof kind, err));
    const char *want = task == TL_TASK_SFT ? "sft" : TL_TASK_IS_RL(task) ? "prompt" : "preference";
    if (strcmp(kind, want) != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s is a '%s' dataset, but task.type %s needs kind '%s'", key, path, kind,
                       tl_task_type_names[task], want);
    return TL_OK;
}

/* Backend, model and the datasets the command needs, all validated. */
tl_status tl_session_open(tl_session *S, const tl_config *cfg, int need_train, int need_eval, tl_error *err) {
    S->task = cfg->task_type;
    if (!cfg->model_path[0]) return tl_fail(err, TL_ERR_INPUT, "model.path: required");
    if (need_train && !cfg->data_train[0]) return tl_fail(err, TL_ERR_INPUT, "data.train: required for training");
    if (need_eval && !cfg->data_eval[0]) return tl_fail(err, TL_ERR_INPUT, "data.eval: required for tailor eval");
    if (S->task == TL_TASK_DPO) {
        TL_TRY(tl_pref_kind_parse(tl_task_loss_names[cfg->task_loss], &S->pref_opts.kind, err));
        S->pref_opts.beta = cfg->task_beta, S->pref_opts.label_smoothing = cfg->task_label_smoothing;
        S->pref_opts.gamma = cfg->task_gamma, S->pref_opts.sft_weight = cfg->task_sft_weight;
        TL_TRY(tl_pref_opts_check(&S->pref_opts, err));
    }
    int open_train = need_train, open_eval = cfg->data_eval[0] && (need_eval || need_train);
    if (open_train) TL_TRY(check_kind("data.train", cfg->data_train, S->task, err));
    if (open_eval) TL_TRY(check_kind("data.eval", cfg->data_eval, S->task, err));
    TL_TRY(tl_backend_open_on(tl_backend_choice_names[cfg->backend], S->threads ? S->threads : cfg->threads, S->device, &S->be, err));
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
    } else if (TL_TASK_IS_RL(S->task)) {
        if (open_train) {
            TL_TRY(tl_prompt_open(cfg->data_train, V, &S->prompt_train, err));
            S->have_prompt_train = 1;
        }
        if (open_eval) {
            TL_TRY(tl_prompt_open(cfg->data_eval, V, &S->prompt_eval, err));
            S->have_prompt_eval = 1;
        }
    } else {
        if (open_train) {
            TL_TRY(tl_pref_open(cfg->data_train, V, &S->pref_train, err));
            S->have_pref_train = 1;
        }
        if (open_eval) {
            TL_TRY(tl_pref_open(cfg->data_eval, V, &S->pref_eval_set, err));
            S->have_pref_eval = 1;
        }
        if (2 * cfg->data_max_seq_len > cfg->micro_batch_tokens)
            return tl_fail(err, TL_ERR_INPUT,
                           "train.micro_batch_tokens (%d) must hold a whole pair: at least 2 x data.max_seq_len (%d)",
                           cfg->micro_batch_tokens, cfg->data_max_seq_len);
    }
    return TL_OK;
}

tl_status tl_init_from_open(tl_init_from *f, const char *from, tl_error *err) {
    memset(f, 0, sizeof *f);
    f->from = from;
    TL_TRY(tl_path_join(f->index_path, sizeof f->index_path, from, "index.json", err));
    if (!tl_is_file(f->index_path)) return TL_OK; /* one PEFT directory for every adapter */
    char *text = NULL;
    size_t n = 0;
    TL_TRY(tl_read_file(f->index_path, 64u << 20, &text, &n, err));
    f->index = cJSON_ParseWithLength(text, n);
    free(text);
    f->adapters = f->index ? cJSON_GetObjectItemCaseSensitive(f->index, "adapters") : NULL;
    if (!cJSON_IsArray(f->adapters)) {
        tl_init_from_close(f);
        return tl_fail(err, TL_ERR_INPUT, "adapter.init_from: %s: expected {\"adapters\": [...]}", f->index_path);
    }
    return TL_OK;
}

void tl_init_from_close(tl_init_from *f) {
    cJSON_Delete(f->index);
    f->index = NULL, f->adapters = NULL;
}

tl_status tl_init_from_load(const tl_init_from *f, tl_lora_pool *p, tl_backend *be, int slot, tl_error *err) {
    if (!f->index) return tl_peft_load(f->from, p, be, slot, err);
    const char *name = p->names[slot];
    const cJSON *it, *dir = NULL;
    cJSON_ArrayForEach(it, f->adapters) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (cJSON_IsString(nm) && !strcmp(nm->valuestring, name)) dir = cJSON_GetObjectItemCaseSensitive(it, "dir");
    }
    if (!cJSON_IsString(dir))
        return tl_fail(err, TL_ERR_INPUT, "adapter.init_from: %s has no adapter named '%s'", f->index_path, name);
    /* the entry is metadata: it names a folder inside `from`, never a path elsewhere (nor a symlink out) */
    char path[TL_PATH_MAX + 256], what[TL_PATH_MAX + 64];
    snprintf(what, sizeof what, "adapter.init_from: %s: adapter '%.200s': dir", f->index_path, name);
    if (!tl_plain_name(dir->valuestring))
        return tl_fail(err, TL_ERR_INPUT, "%s '%.200s': expected a folder name inside %s (no '/', no leading '.')",
                       what, dir->valuestring, f->from);
    TL_TRY(tl_path_join(path, sizeof path, f->from, dir->valuestring, err));
    TL_TRY(tl_path_inside(f->from, path, what, err));
    return tl_peft_load(path, p, be, slot, err);
}

tl_status tl_load_init_from(tl_lora_pool *p, tl_backend *be, const char *from, tl_error *err) {
    tl_init_from f;
    TL_TRY(tl_init_from_open(&f, from, err));
    tl_status s = TL_OK;
    for (int slot = 0; !s && slot < p->n_slots; slot++) s = tl_init_from_load(&f, p, be, slot, err);
    tl_init_from_close(&f);
    return s;
}

static tl_pref_eval_opts pref_eval_opts(const tl_session *S, const tl_config *cfg) {
    return (tl_pref_eval_opts){.reward = S->task == TL_TASK_REWARD, .opts = S->pref_opts,
                               .center_rewards = cfg->task_center_rewards, .ref = S->have_ref ? &S->ref : NULL};
}

/* pst as doubles for a sum over ranks (counts stay exact below 2^53) */
void tl_pstat_pack(const tl_pref_stats *s, double *d) {
    d[0] = (double)s->n, d[1] = (double)s->n_logp, d[2] = s->loss, d[3] = s->reward_chosen;
    d[4] = s->reward_rejected, d[5] = s->accuracy, d[6] = s->margin, d[7] = s->logp_chosen, d[8] = s->logp_rejected;
}
void tl_pstat_unpack(const double *d, tl_pref_stats *s) {
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
    double *buf = malloc((size_t)M->n * TL_PSTAT_N * sizeof *buf + 1);
    tl_pref_stats *out = calloc((size_t)M->nG + 1, sizeof *out);
    tl_status s = buf && out ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int a = 0; !s && a < M->n; a++) tl_pstat_pack(&(*st)[a], buf + (size_t)a * TL_PSTAT_N);
    if (!s) s = merge_f64(M, &buf, TL_PSTAT_N, what, err);
    if (!s) {
        for (int a = 0; a < M->nG; a++) tl_pstat_unpack(buf + (size_t)a * TL_PSTAT_N, &out[a]);
        free(*st);
        *st = out, out = NULL;
    }
    free(buf);
    free(out);
    return s;
}

/* Evaluates on data.eval, every rank its share of the adapters. Rank 0 writes eval.json and prints the table
 * when `final`, else appends one record to metrics.jsonl (metrics may be NULL) and prints one line. */
/* ---- evaluation with the adapter store: the population streams through the pool's slots ---- */

/* Entries [c0, c0 + c) of the store (of list[], when given) into slots 0..c-1 (every dirty slot was written back
 * and the slots dropped). */
static tl_status load_chunk(tl_session *S, int64_t c0, int c, const int32_t *list, float *host, tl_error *err) {
    tl_resident *r = S->res;
    for (int j = 0; j < c; j++) {
        int64_t e = list ? list[c0 + j] : c0 + j;
        TL_TRY(tl_resident_params(r, e, host, err));
        TL_TRY(tl_lora_pool_set_slot(&S->pool, S->be, j, tl_store_name(r->store, e), host, NULL, NULL,
                                     tl_store_meta_at(r->store, e)->steps, err));
        if (!S->have_ref) continue; /* the DPO reference: the adapter as adapter.init_from has it */
        TL_TRY(tl_lora_pool_set_slot(&S->ref, S->be, j, tl_store_name(r->store, e), host, NULL, NULL, 0, err));
        TL_TRY(tl_init_from_load(r->init_from, &S->ref, S->be, j, err));
    }
    return TL_OK;
}

/* ROUGE in store mode: the tokenizer, and the per-adapter means of every adapter of the store. */
typedef struct {
    tl_tokenizer *tok;
    tl_eval_rouge_result r; /* [N] */
} store_rouge;

static tl_status store_rouge_open(store_rouge *g, const tl_config *cfg, const tl_ui *ui, int N, tl_error *err) {
    TL_TRY(tl_tokenizer_for_model(cfg->model_path, &g->tok, err));
    size_t n = (size_t)N + 1;
    g->r.n = N;
    g->r.examples = calloc(n, sizeof(int64_t));
    g->r.rouge1 = calloc(n, sizeof(double)), g->r.rougeL = calloc(n, sizeof(double));
    g->r.base_rouge1 = calloc(n, sizeof(double)), g->r.base_rougeL = calloc(n, sizeof(double));
    if (!g->r.examples || !g->r.rouge1 || !g->r.rougeL || !g->r.base_rouge1 || !g->r.base_rougeL)
        return tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory for ROUGE of %d adapters", N);
    if (!ui->quiet)
        fprintf(ui->out, "generating answers for ROUGE (up to %d tokens each), %d adapter(s)...\n",
                cfg->data_eval_generate, N);
    return TL_OK;
}

/* The chunk's c adapters (names[0..c), in view's slots 0..c) answer their own users' held-out prompts. */
static tl_status store_rouge_chunk(store_rouge *g, tl_session *S, const tl_config *cfg, const tl_lora_pool *view,
                                   char **names, int c, int c0, tl_error *err) {
    tl_adapter_map map;
    TL_TRY(tl_adapter_map_build(&S->eval, cfg->adapter_key, names, c, &map, err));
    const tl_eval_rouge_opts ro = {.max_new_tokens = cfg->data_eval_generate, .with_base = 1};
    tl_eval_rouge_result rr = {0};
    tl_status s = tl_eval_rouge(&S->model, view, g->tok, &S->eval, &map, &ro, &rr, err);
    tl_adapter_map_free(&map);
    for (int j = 0; !s && j < c; j++) {
        g->r.examples[c0 + j] = rr.examples[j];
        g->r.rouge1[c0 + j] = rr.rouge1[j], g->r.rougeL[c0 + j] = rr.rougeL[j];
        g->r.base_rouge1[c0 + j] = rr.base_rouge1[j], g->r.base_rougeL[c0 + j] = rr.base_rougeL[j];
    }
    tl_eval_rouge_result_free(&rr);
    return s;
}

/* Many ranks: each adapter's ROUGE from the rank that evaluated its chunk (zeros elsewhere; a NaN mean of an
 * adapter without examples stays NaN). */
static tl_status store_rouge_merge(store_rouge *g, tl_session *S, tl_error *err) {
    size_t n = (size_t)g->r.n;
    TL_TRY(tl_dist_allreduce_i64_host(S->dist, g->r.examples, n, "ROUGE example counts", err));
    double *v[4] = {g->r.rouge1, g->r.rougeL, g->r.base_rouge1, g->r.base_rougeL};
    for (int k = 0; k < 4; k++) TL_TRY(tl_dist_allreduce_f64_host(S->dist, v[k], n, "ROUGE scores", err));
    return TL_OK;
}

static void store_rouge_close(store_rouge *g) {
    tl_eval_rouge_result_free(&g->r);
    tl_tokenizer_free(g->tok);
    memset(g, 0, sizeof *g);
}

/* Many ranks: each adapter's results come from the one rank that evaluated its chunk, the other ranks hold zeros
 * there, so a sum over ranks is exact. */
static tl_status store_eval_merge(tl_session *S, int sft, tl_eval_result *all, tl_pref_eval_result *pall, int cross,
                                  double *scross, int ns, tl_error *err) {
    int N = sft ? all->n : pall->n;
    tl_status s = TL_OK;
    if (sft) {
        s = tl_dist_allreduce_i64_host(S->dist, all->examples, (size_t)N, "eval example counts", err);
        if (!s) s = tl_dist_allreduce_i64_host(S->dist, all->tokens, (size_t)N, "eval token counts", err);
        if (!s) s = tl_dist_allreduce_f64_host(S->dist, all->loss, (size_t)N, "eval losses", err);
        if (!s) s = tl_dist_allreduce_f64_host(S->dist, all->base_loss, (size_t)N, "eval base losses", err);
        if (!s && cross) s = tl_dist_allreduce_f64_host(S->dist, all->cross, (size_t)N * N, "eval cross matrix", err);
    } else {
        double *buf = calloc((size_t)N * TL_PSTAT_N + 1, sizeof *buf);
        if (!buf) return tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
        int K = S->pool.n_slots, world = tl_dist_world(S->dist), rank = tl_dist_rank(S->dist);
        for (int a = 0; a < N; a++)
            if ((a / K) % world == rank) tl_pstat_pack(&pall->own[a], buf + (size_t)a * TL_PSTAT_N);
        s = tl_dist_allreduce_f64_host(S->dist, buf, (size_t)N * TL_PSTAT_N, "eval preference metrics", err);
        for (int a = 0; !s && a < N; a++) tl_pstat_unpack(buf + (size_t)a * TL_PSTAT_N, &pall->own[a]);
        free(buf);
        if (!s && cross)
            s = tl_dist_allreduce_f64_host(S->dist, pall->cross_acc, (size_t)N * N, "eval cross accuracies", err);
        if (!s && pall->by_user) { /* users, not adapters: each user's entry is empty but on its chunk's rank */
            tl_merge U = {.d = S->dist, .n = pall->n_users, .nG = pall->n_users};
            s = merge_pref_stats(&U, &pall->by_user, "eval per-user metrics", err);
        }
    }
    if (!s && ns) s = tl_dist_allreduce_f64_host(S->dist, scross, (size_t)ns * ns, "eval cross sample", err);
    return s;
}

/* Per-adapter held-out loss (SFT) or preference metrics for every adapter of the store, K at a time; the slots are
 * dropped afterwards (the next step loads what it needs). The cross matrix is left out (docs/scale.md). */
static tl_status store_eval(tl_session *S, const tl_config *cfg, const tl_ui *ui, tl_metrics *metrics, int64_t step,
                            int final, tl_error *err) {
    tl_resident *res = S->res;
    /* many ranks (user_shard): every rank sees every rank's newest records, and evaluates every world-th chunk
     * of K adapters (the chunks of one process, so the same numbers); the results are summed over ranks */
    int world = tl_dist_world(S->dist), rank = tl_dist_rank(S->dist);
    if (world > 1) TL_TRY(tl_resident_sync(res, S->dist, NULL, 0, NULL, err));
    else TL_TRY(tl_resident_flush(res, err));
    tl_resident_evict_all(res);
    int64_t N64 = tl_store_count(res->store);
    int K = S->pool.n_slots, N = (int)N64;
    char path[TL_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/eval.json", cfg->output_dir);
    char **names = malloc((size_t)(N ? N : 1) * sizeof *names);
    float *host = malloc(S->pool.P * sizeof(float));
    tl_eval_result all = {.n = N, .n_cols = N};
    tl_pref_eval_result pall = {.n = N, .n_cols = N};
    int sft = S->task == TL_TASK_SFT;
    if (sft) {
        all.examples = calloc((size_t)N + 1, sizeof(int64_t)), all.tokens = calloc((size_t)N + 1, sizeof(int64_t));
        all.loss = calloc((size_t)N + 1, sizeof(double)), all.base_loss = calloc((size_t)N + 1, sizeof(double));
    } else {
        pall.own = calloc((size_t)N + 1, sizeof *pall.own);
    }
    tl_status s = names && host && (sft ? all.examples && all.tokens && all.loss && all.base_loss : pall.own != NULL)
                      ? TL_OK
                      : tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory for %d adapters", N);
    for (int i = 0; !s && i < N; i++) names[i] = (char *)tl_store_name(res->store, i);
    tl_lora_pool view = S->pool;
    /* the cross matrix as without the store: at the end, for up to TL_EVAL_CROSS_MAX adapters, each chunk's rows
     * over every adapter's users */
    int cross = final && N <= TL_EVAL_CROSS_MAX;
    const tl_eval_part cols = {.cols = names, .n_cols = N};
    const tl_eval_opts eo = {.key = cfg->adapter_key, .micro_batch_tokens = cfg->micro_batch_tokens,
                             .max_seq_len = cfg->data_max_seq_len, .with_base = 1, .with_cross = cross,
                             .part = cross ? &cols : NULL};
    /* data.eval_generate: ROUGE of greedy answers, per chunk as per adapter (each on its own users' examples) */
    store_rouge rg = {0};
    if (!s && sft && final && cfg->data_eval_generate > 0) s = store_rouge_open(&rg, cfg, ui, N, err);
    if (!s && cross && sft && !(all.cross = calloc((size_t)N * N + 1, sizeof(double))))
        s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
    if (!s && cross && !sft && !(pall.cross_acc = calloc((size_t)N * N + 1, sizeof(double))))
        s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
    tl_pref_eval_opts po = pref_eval_opts(S, cfg);
    if (!s && !sft && cfg->adapter_key != TL_KEY_USER) { /* per-user rows of shared adapters, on every rank */
        const tl_pref_dataset *ed = &S->pref_eval_set;
        pall.n_users = ed->n_users;
        pall.user_names = (const char *const *)ed->user_names, pall.user_groups = (const char *const *)ed->user_groups;
        if (!(pall.by_user = calloc((size_t)ed->n_users + 1, sizeof *pall.by_user)))
            s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
    }
    tl_lora_pool refview = S->ref;
    if (S->have_ref) po.ref = &refview;
    for (int c0 = 0; !s && c0 < N; c0 += K) {
        int c = N - c0 < K ? N - c0 : K;
        if ((c0 / K) % world != rank) continue;
        s = load_chunk(S, c0, c, NULL, host, err);
        view.n_slots = c, refview.n_slots = c;
        if (s) break;
        if (sft) {
            tl_eval_result r;
            s = tl_eval_run(&S->model, &view, S->ws, &S->eval, &eo, &r, err);
            for (int j = 0; !s && j < c; j++) {
                all.examples[c0 + j] = r.examples[j], all.tokens[c0 + j] = r.tokens[j];
                all.loss[c0 + j] = r.loss[j], all.base_loss[c0 + j] = r.base_loss[j];
                if (cross) memcpy(all.cross + (size_t)(c0 + j) * N, r.cross + (size_t)j * N, (size_t)N * sizeof(double));
            }
            if (!s) tl_eval_result_free(&r);
            if (!s && rg.tok) s = store_rouge_chunk(&rg, S, cfg, &view, names + c0, c, c0, err);
        } else {
            tl_pref_eval_result r;
            s = tl_pref_eval_run(&S->model, &view, S->ws, S->pref_scratch, &S->pref_eval_set, &eo, &po, &r, err);
            for (int j = 0; !s && j < c; j++) {
                pall.own[c0 + j] = r.own[j];
                if (cross)
                    memcpy(pall.cross_acc + (size_t)(c0 + j) * N, r.cross_acc + (size_t)j * N,
                           (size_t)N * sizeof(double));
            }
            /* shared (group / global) adapters: each user's results, filled by the chunk holding its adapter */
            for (int u = 0; !s && r.by_user && pall.by_user && u < r.n_users && u < pall.n_users; u++)
                tl_pref_stats_merge(&pall.by_user[u], &r.by_user[u]);
            if (!s) tl_pref_eval_result_free(&r);
        }
        if (!ui->quiet && ui->is_tty)
            fprintf(ui->out, "\reval: %d of %d adapter(s)", c0 + c, N), fflush(ui->out);
    }
    if (!ui->quiet && ui->is_tty && N > 0) fputc('\n', ui->out);
    /* above TL_EVAL_CROSS_MAX adapters, the cross matrix of an evenly spaced sample of them */
    int32_t sample[TL_EVAL_CROSS_MAX];
    char *snames[TL_EVAL_CROSS_MAX];
    int ns = final && N > TL_EVAL_CROSS_MAX ? TL_EVAL_CROSS_MAX : 0;
    for (int i = 0; i < ns; i++) sample[i] = (int32_t)((int64_t)i * N / ns), snames[i] = names[sample[i]];
    double *scross = NULL;
    if (!s && ns && !(scross = calloc((size_t)ns * ns, sizeof(double))))
        s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
    const tl_eval_part scols = {.cols = snames, .n_cols = ns};
    const tl_eval_opts so = {.key = cfg->adapter_key, .micro_batch_tokens = cfg->micro_batch_tokens,
                             .max_seq_len = cfg->data_max_seq_len, .with_cross = 1, .part = &scols};
    for (int c0 = 0; !s && c0 < ns; c0 += K) {
        int c = ns - c0 < K ? ns - c0 : K;
        if ((c0 / K) % world != rank) continue;
        s = load_chunk(S, c0, c, sample, host, err);
        view.n_slots = c, refview.n_slots = c;
        if (s) break;
        const double *rows = NULL;
        tl_eval_result r = {0};
        tl_pref_eval_result pr = {0};
        if (sft) {
            s = tl_eval_run(&S->model, &view, S->ws, &S->eval, &so, &r, err);
            rows = r.cross;
        } else {
            s = tl_pref_eval_run(&S->model, &view, S->ws, S->pref_scratch, &S->pref_eval_set, &so, &po, &pr, err);
            rows = pr.cross_acc;
        }
        if (!s) memcpy(scross + (size_t)c0 * ns, rows, (size_t)c * ns * sizeof(double));
        tl_eval_result_free(&r);
        tl_pref_eval_result_free(&pr);
    }
    if (!s && world > 1) s = store_eval_merge(S, sft, &all, &pall, cross, scross, ns, err);
    if (!s && world > 1 && rg.tok) s = store_rouge_merge(&rg, S, err);
    if (!s && rg.tok)
        all.rouge1 = rg.r.rouge1, all.rougeL = rg.r.rougeL, all.base_rouge1 = rg.r.base_rouge1,
        all.base_rougeL = rg.r.base_rougeL;
    if (!s && ns) {
        if (sft) all.n_sample = ns, all.sample = sample, all.sample_cross = scross;
        else pall.n_sample = ns, pall.sample = sample, pall.sample_cross_acc = scross;
        scross = NULL;
        if (rank == 0)
            fprintf(ui->out, "cross matrix: %d of the %d adapters, evenly spaced, in eval.json's cross_sample\n", ns,
                    N);
    }
    free(scross);
    tl_resident_evict_all(res);
    tl_lora_pool byname = S->pool;
    byname.n_slots = N, byname.names = names;
    if (rank != 0) { /* rank 0 speaks for the run */
    } else if (!s && sft) {
        double l, b;
        int64_t t;
        tl_eval_totals(&all, &l, &b, &t);
        if (final) {
            s = tl_eval_write_json(&all, &byname, path, step, err);
            if (!s && N <= 64) {
                fprintf(ui->out, "eval on %s:\n", cfg->data_eval);
                tl_eval_print(&all, &byname, ui->out);
            } else if (!s) {
                int better = 0, with = 0;
                for (int a = 0; a < N; a++)
                    if (all.tokens[a]) with++, better += all.loss[a] < all.base_loss[a];
                fprintf(ui->out, "eval on %s: %d adapter(s) with held-out data, %d of them below the base model's loss; "
                        "loss %.4f vs %.4f for the base model over %lld tokens (per adapter: %s)\n", cfg->data_eval,
                        with, better, l, b, (long long)t, path);
            }
        } else {
            tl_metrics_eval_sft(metrics, step, l, b, t);
            if (!ui->quiet) fprintf(ui->out, "eval step %lld: loss %.4f (base model %.4f)\n", (long long)step, l, b);
        }
    } else if (!s) {
        tl_pref_stats tot;
        tl_pref_stats_init(&tot);
        for (int a = 0; a < N; a++) tl_pref_stats_merge(&tot, &pall.own[a]);
        double mean[TL_PREF_N_METRICS];
        tl_pref_stats_mean(&tot, mean);
        if (final) {
            s = tl_pref_eval_write_json(&pall, &byname, path, step, err);
            if (!s && N <= 64) {
                fprintf(ui->out, "eval on %s (accuracy: reward of the chosen response > the rejected one's):\n",
                        cfg->data_eval);
                tl_pref_eval_print(&pall, &byname, ui->out);
            } else if (!s) {
                fprintf(ui->out, "eval on %s: %d adapter(s), loss %.4f, preference accuracy %.4f (per adapter: %s)\n",
                        cfg->data_eval, N, mean[TL_PREF_M_LOSS], mean[TL_PREF_M_REWARDS_ACCURACIES], path);
            }
        } else {
            tl_metrics_eval_pref(metrics, step, mean[TL_PREF_M_LOSS], mean[TL_PREF_M_REWARDS_ACCURACIES],
                                 mean[TL_PREF_M_REWARDS_MARGINS]);
            if (!ui->quiet)
                fprintf(ui->out, "eval step %lld: loss %.4f, preference accuracy %.4f\n", (long long)step,
                        mean[TL_PREF_M_LOSS], mean[TL_PREF_M_REWARDS_ACCURACIES]);
        }
    }
    tl_eval_result_free(&all);
    tl_pref_eval_result_free(&pall);
    store_rouge_close(&rg);
    free(names);
    free(host);
    return s;
}

tl_status tl_session_eval(tl_session *S, const tl_config *cfg, const tl_ui *ui, tl_metrics *metrics, int64_t step,
                          int final, tl_error *err) {
    if (S->res) return store_eval(S, cfg, ui, metrics, step, final, err);
    char path[TL_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/eval.json", cfg->output_dir);
    tl_adapter_key key = cfg->adapter_key;
    int n = S->pool.n_slots;
    int many = tl_dist_world(S->dist) > 1, rank0 = tl_dist_rank(S->dist) == 0;
    tl_merge M = {.d = S->dist, .n = n, .nG = S->local_pool ? S->n_global : n, .gi = S->local_pool ? S->global_index : NULL,
                  .mine = S->local_pool ? NULL : S->eval_mine};
    tl_eval_part part = {.only = M.mine, .cols = S->local_pool ? S->map.names : NULL, .n_cols = S->local_pool ? S->n_global : 0};
    const tl_eval_part *pp = many ? &part : NULL;
    int cross = final && M.nG <= TL_EVAL_CROSS_MAX;
    const tl_eval_opts eo = {.key = key, .micro_batch_tokens = cfg->micro_batch_tokens,
                             .max_seq_len = cfg->data_max_seq_len, .with_base = 1, .with_cross = cross, .part = pp};
    tl_lora_pool names = S->pool; /* for the table and eval.json: every adapter of the run by name */
    if (S->local_pool) names.n_slots = S->n_global, names.names = S->map.names;
    tl_status s;
    if (S->task == TL_TASK_SFT) {
        tl_eval_result r;
        TL_TRY(tl_eval_run(&S->model, &S->pool, S->ws, &S->eval, &eo, &r, err));
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
                    const tl_eval_rouge_opts ro = {.max_new_tokens = cfg->data_eval_generate, .with_base = 1};
                    s = tl_eval_rouge(&S->model, &S->pool, tok, &S->eval, &map, &ro, &rr, err);
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
            tl_metrics_eval_sft(metrics, step, l, b, t);
            if (!ui->quiet) fprintf(ui->out, "eval step %lld: loss %.4f (base model %.4f)\n", (long long)step, l, b);
            s = TL_OK;
        }
        tl_eval_result_free(&r);
        tl_eval_rouge_result_free(&rr);
        return s;
    }
    tl_pref_eval_opts o = pref_eval_opts(S, cfg);
    tl_pref_eval_result r;
    TL_TRY(tl_pref_eval_run(&S->model, &S->pool, S->ws, S->pref_scratch, &S->pref_eval_set, &eo, &o, &r, err));
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
        tl_metrics_eval_pref(metrics, step, mean[TL_PREF_M_LOSS], mean[TL_PREF_M_REWARDS_ACCURACIES],
                             mean[TL_PREF_M_REWARDS_MARGINS]);
        if (!ui->quiet)
            fprintf(ui->out, "eval step %lld: loss %.4f, preference accuracy %.4f\n", (long long)step,
                    mean[TL_PREF_M_LOSS], mean[TL_PREF_M_REWARDS_ACCURACIES]);
        s = TL_OK;
    }
    tl_pref_eval_result_free(&r);
    return s;
}

tl_status tl_session_workspace(tl_session *S, const tl_config *cfg, tl_error *err) {
    /* a sequence holds at least one token, so a micro-batch holds at most micro_batch_tokens sequences */
    TL_TRY(tl_workspace_create(&S->model, &S->pool, cfg->micro_batch_tokens, cfg->micro_batch_tokens, &S->ws, err));
    if (S->task == TL_TASK_SFT || TL_TASK_IS_RL(S->task)) return TL_OK;
    return tl_pref_scratch_create(cfg->micro_batch_tokens, cfg->micro_batch_tokens, S->model.cfg.hidden_size,
                                  &S->pref_scratch, err);
}

