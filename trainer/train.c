/* train: one whole training run — set up, step loop, checkpoints, evaluation, export (see tl_train.h).
 *
 * Order matters for the "nothing half-written" rule: everything a run reads (config, model, datasets) is opened
 * and validated before the run directory is created, so bad input never leaves a run directory behind. */
#include "tl_train.h"

#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../data/tl_batcher.h"
#include "../data/tl_dataset.h"
#include "tl_checkpoint.h"
#include "tl_eval.h"
#include "tl_export.h"
#include "tl_fsutil.h"
#include "tl_model.h"
#include "tl_optim.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static tl_adapter_key parse_key(const char *k) {
    return !strcmp(k, "group") ? TL_KEY_GROUP : !strcmp(k, "global") ? TL_KEY_GLOBAL : TL_KEY_USER;
}

/* Everything a command holds open; tl_session_close releases whatever was opened. */
typedef struct {
    tl_backend *be;
    tl_model model;
    int model_loaded;
    tl_sft_dataset train, eval;
    int have_train, have_eval;
    tl_adapter_map map;
    int have_map;
    tl_lora_pool pool;
    int have_pool;
    tl_workspace *ws;
    tl_batcher *batcher;
} tl_session;

static void tl_session_close(tl_session *S) {
    if (S->batcher) tl_batcher_free(S->batcher);
    if (S->ws) tl_workspace_free(S->ws, S->be);
    if (S->have_pool) tl_lora_pool_free(&S->pool, S->be);
    if (S->have_map) tl_adapter_map_free(&S->map);
    if (S->have_train) tl_sft_free(&S->train);
    if (S->have_eval) tl_sft_free(&S->eval);
    if (S->model_loaded) tl_model_free(&S->model);
    if (S->be) S->be->destroy(S->be);
    memset(S, 0, sizeof *S);
}

/* Backend, model and the datasets the command needs, all validated. */
static tl_status open_inputs(tl_session *S, const tl_config *cfg, int need_train, int need_eval, tl_error *err) {
    if (strcmp(cfg->task_type, "sft") != 0)
        return tl_fail(err, TL_ERR_INPUT, "task.type: '%s' is not implemented yet (supported: sft)", cfg->task_type);
    if (!cfg->model_path[0]) return tl_fail(err, TL_ERR_INPUT, "model.path: required");
    if (need_train && !cfg->data_train[0]) return tl_fail(err, TL_ERR_INPUT, "data.train: required for training");
    if (need_eval && !cfg->data_eval[0]) return tl_fail(err, TL_ERR_INPUT, "data.eval: required for tailor eval");
    TL_TRY(tl_backend_open(cfg->backend, cfg->threads, &S->be, err));
    TL_TRY(tl_model_load(cfg->model_path, S->be, &S->model, err));
    S->model_loaded = 1;
    int V = S->model.cfg.vocab_size;
    if (need_train) {
        TL_TRY(tl_sft_open(cfg->data_train, V, &S->train, err));
        S->have_train = 1;
    }
    if (cfg->data_eval[0] && (need_eval || need_train)) {
        TL_TRY(tl_sft_open(cfg->data_eval, V, &S->eval, err));
        S->have_eval = 1;
    }
    return TL_OK;
}

static void warn_empty_users(const tl_ui *ui, const tl_sft_dataset *ds, const tl_adapter_map *map,
                             tl_adapter_key key) {
    if (!map->n_empty || key != TL_KEY_USER) {
        if (map->n_empty)
            fprintf(ui->log, "warning: %s: %d adapter(s) have no examples and are skipped\n", ds->path,
                    map->n_empty);
        return;
    }
    fprintf(ui->log, "warning: %s: %d user(s) have no examples and are skipped:", ds->path, map->n_empty);
    int shown = 0;
    for (int u = 0; u < ds->n_users && shown < 5; u++)
        if (map->user_adapter[u] < 0) fprintf(ui->log, "%s '%s'", shown++ ? "," : "", ds->user_names[u]);
    fprintf(ui->log, "%s\n", map->n_empty > shown ? ", ..." : "");
}

/* Steps each adapter takes over the run under round-robin activation (its schedule length). */
static tl_status count_adapter_steps(const tl_config *cfg, int n, int64_t **out, tl_error *err) {
    int64_t *tot = calloc((size_t)n, sizeof(int64_t));
    if (!tot) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    int k = cfg->adapters_per_step;
    if (k <= 0 || k >= n) {
        for (int a = 0; a < n; a++) tot[a] = cfg->steps;
    } else {
        /* adapters (t*k + i) mod n for i < k: full cycles give each adapter k steps per n global steps */
        for (int64_t t = 0; t < cfg->steps; t++)
            for (int i = 0; i < k; i++) tot[(int)(((int64_t)t * k + i) % n)]++;
    }
    *out = tot;
    return TL_OK;
}

typedef struct {
    FILE *f;
} tl_metrics;

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
            if (fclose(o) || rename(tmp, path))
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

static tl_status run_eval(tl_session *S, const tl_config *cfg, int with_base, int with_cross, tl_eval_result *res,
                          tl_error *err) {
    return tl_eval_run(&S->model, &S->pool, S->ws, &S->eval, parse_key(cfg->adapter_key), cfg->micro_batch_tokens,
                       cfg->data_max_seq_len, with_base, with_cross, res, err);
}

static tl_status workspace_for(tl_session *S, const tl_config *cfg, tl_error *err) {
    /* a sequence holds at least one token, so a micro-batch holds at most micro_batch_tokens sequences */
    return tl_workspace_create(&S->model, &S->pool, cfg->micro_batch_tokens, cfg->micro_batch_tokens, &S->ws, err);
}

tl_status tl_train(const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    int64_t *total_steps = NULL;
    double *aloss = NULL;
    float *logp = NULL, *gnorm = NULL, *lrs = NULL;
    tl_metrics M = {0};
    tl_status s;
#define CHECK(x)            \
    do {                    \
        s = (x);            \
        if (s) goto done;   \
    } while (0)
    CHECK(open_inputs(&S, cfg, 1, 0, err));
    tl_adapter_key key = parse_key(cfg->adapter_key);
    CHECK(tl_adapter_map_build(&S.train, key, NULL, 0, &S.map, err));
    S.have_map = 1;
    warn_empty_users(ui, &S.train, &S.map, key);

    /* Inputs are valid: from here on the run directory may be written. */
    CHECK(tl_mkdir_p(cfg->output_dir, err));
    {
        char path[TL_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/config.yaml", cfg->output_dir);
        FILE *f = fopen(path, "w");
        if (!f) CHECK(tl_fail(err, TL_ERR_RUNTIME, "%s: cannot write: %s", path, strerror(errno)));
        tl_config_write_yaml(cfg, f);
        if (fclose(f)) CHECK(tl_fail(err, TL_ERR_RUNTIME, "%s: write failed", path));
    }
    CHECK(tl_lora_pool_init(&S.pool, &S.model, S.map.n_adapters, S.map.names, cfg->adapter_rank,
                            (float)cfg->adapter_alpha, cfg->adapter_rslora, (float)cfg->adapter_dropout,
                            cfg->adapter_targets, cfg->seed, err));
    S.have_pool = 1;
    tl_batcher_opts bo = {.examples_per_adapter = cfg->examples_per_adapter,
                          .adapters_per_step = cfg->adapters_per_step,
                          .micro_batch_tokens = cfg->micro_batch_tokens,
                          .max_seq_len = cfg->data_max_seq_len,
                          .seed = cfg->seed};
    CHECK(tl_batcher_init(&S.train, &S.map, &bo, &S.batcher, err));

    int64_t start = 0;
    char ckpt[TL_PATH_MAX];
    int found = 0;
    if (!strcmp(cfg->resume, "auto")) {
        CHECK(tl_checkpoint_latest(cfg->output_dir, ckpt, sizeof ckpt, &found, err));
    } else if (strcmp(cfg->resume, "never") != 0) {
        snprintf(ckpt, sizeof ckpt, "%s", cfg->resume);
        found = 1;
    }
    if (found) {
        CHECK(tl_checkpoint_load(ckpt, &S.pool, S.be, &start, tl_batcher_cursors(S.batcher), err));
        fprintf(ui->out, "resuming from %s (step %lld)\n", ckpt, (long long)start);
    }
    CHECK(metrics_open(&M, cfg->output_dir, found ? start : -1, err));
    CHECK(workspace_for(&S, cfg, err));
    CHECK(count_adapter_steps(cfg, S.pool.n_slots, &total_steps, err));

    int n = S.pool.n_slots;
    aloss = calloc((size_t)n, sizeof(double));
    gnorm = calloc((size_t)n, sizeof(float));
    lrs = calloc((size_t)n, sizeof(float));
    logp = malloc((size_t)cfg->micro_batch_tokens * sizeof(float));
    if (!aloss || !gnorm || !lrs || !logp) CHECK(tl_fail(err, TL_ERR_RUNTIME, "out of host memory"));

    fprintf(ui->out,
            "tailor: %s backend, model %s (%d layers, hidden %d, vocab %d), %d adapter(s) of rank %d, "
            "%lld trainable parameters each; activations %.1f MiB\n",
            S.be->name, cfg->model_path, S.model.cfg.num_hidden_layers, S.model.cfg.hidden_size,
            S.model.cfg.vocab_size, n, cfg->adapter_rank, (long long)S.pool.P,
            (double)tl_workspace_bytes(S.ws) / (1 << 20));

    /* Fault injection for the resume test: die by SIGKILL right after this global step, as a crash would. */
    const char *kill_env = getenv("TAILOR_FAULT_KILL_AFTER_STEP");
    int64_t kill_after = kill_env ? atoll(kill_env) : -1;
    double base_eval = NAN;
    double t0 = now_s(), t_last = t0;
    int64_t tok_since = 0, truncated = 0;
    int64_t last_ckpt = found ? start : -1;
    for (int64_t step = start; step < cfg->steps; step++) {
        tl_step_batch *B = NULL;
        tl_batcher_set_adapter_steps(S.batcher, S.pool.steps);
        CHECK(tl_batcher_next(S.batcher, step, &B, err));
        for (int i = 0; i < B->n_active; i++) {
            int a = B->active[i];
            aloss[a] = 0;
            S.be->zero(S.be, S.pool.grads + (size_t)a * S.pool.P, S.pool.P * sizeof(float));
        }
        for (int k = 0; k < B->n_mb; k++) {
            tl_host_mb *mb = &B->mb[k];
            CHECK(tl_model_step(&S.model, &S.pool, S.ws, mb, 1, logp, err));
            for (int i = 0; i < mb->n_tok; i++)
                if (mb->targets[i] >= 0) aloss[mb->adapter[i]] -= (double)mb->weight[i] * logp[i];
        }
        CHECK(tl_optim_step(&S.pool, S.be, cfg, B->active, B->n_active, total_steps, gnorm, lrs, err));
        tok_since += B->n_tokens;
        truncated += B->n_truncated;

        int64_t done_steps = step + 1;
        int log_now = done_steps % cfg->log_every == 0 || done_steps == cfg->steps || step == start;
        if (log_now) {
            double loss = 0, gn = 0, lr = 0;
            int cnt = 0;
            for (int i = 0; i < B->n_active; i++) {
                int a = B->active[i];
                if (B->target_count[a] == 0) continue;
                loss += aloss[a], gn += gnorm[i], lr += lrs[i], cnt++;
            }
            if (cnt) loss /= cnt, gn /= cnt, lr /= cnt;
            double t = now_s(), tps = (double)tok_since / fmax(t - t_last, 1e-9);
            fprintf(M.f,
                    "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens\": %lld, "
                    "\"tokens_per_s\": %.1f, \"elapsed_s\": %.3f, \"adapters\": %d, \"truncated\": %lld}\n",
                    (long long)done_steps, loss, lr, gn, (long long)B->n_tokens, tps, t - t0, cnt,
                    (long long)truncated);
            fflush(M.f);
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
        if (cfg->checkpoint_every > 0 && done_steps % cfg->checkpoint_every == 0 && done_steps < cfg->steps) {
            CHECK(tl_checkpoint_save(cfg->output_dir, cfg, &S.pool, S.be, done_steps, tl_batcher_cursors(S.batcher),
                                     cfg->keep_checkpoints, err));
            last_ckpt = done_steps;
        }
        if (S.have_eval && cfg->eval_every > 0 && done_steps % cfg->eval_every == 0 && done_steps < cfg->steps) {
            tl_eval_result r;
            CHECK(run_eval(&S, cfg, !isfinite(base_eval), 0, &r, err));
            double l, b;
            int64_t t;
            tl_eval_totals(&r, &l, &b, &t);
            if (!isfinite(base_eval)) base_eval = b;
            fprintf(M.f, "{\"step\": %lld, \"eval_loss\": %.6f, \"eval_base_loss\": %.6f, \"eval_tokens\": %lld}\n",
                    (long long)done_steps, l, base_eval, (long long)t);
            fflush(M.f);
            if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
            if (!ui->quiet)
                fprintf(ui->out, "eval step %lld: loss %.4f (base model %.4f)\n", (long long)done_steps, l,
                        base_eval);
            tl_eval_result_free(&r);
        }
        if (done_steps == kill_after) {
            fflush(NULL);
            raise(SIGKILL);
        }
    }
    if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
    if (truncated)
        fprintf(ui->log, "note: %lld sequence(s) were longer than data.max_seq_len=%d and were truncated (prompt "
                         "dropped from the left)\n",
                (long long)truncated, cfg->data_max_seq_len);
    if (last_ckpt != cfg->steps)
        CHECK(tl_checkpoint_save(cfg->output_dir, cfg, &S.pool, S.be, cfg->steps, tl_batcher_cursors(S.batcher),
                                 cfg->keep_checkpoints, err));
    {
        char adir[TL_PATH_MAX + 16];
        snprintf(adir, sizeof adir, "%s/adapters", cfg->output_dir);
        int written = 0;
        CHECK(tl_export_pool(&S.pool, S.be, cfg, cfg->model_path, adir, &written, err));
        fprintf(ui->out, "exported %d PEFT adapter(s) to %s/\n", written, adir);
    }
    if (S.have_eval) {
        tl_eval_result r;
        CHECK(run_eval(&S, cfg, 1, S.pool.n_slots <= TL_EVAL_CROSS_MAX, &r, err));
        char path[TL_PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/eval.json", cfg->output_dir);
        s = tl_eval_write_json(&r, &S.pool, path, cfg->steps, err);
        if (!s) {
            fprintf(ui->out, "eval on %s:\n", cfg->data_eval);
            tl_eval_print(&r, &S.pool, ui->out);
        }
        tl_eval_result_free(&r);
        if (s) goto done;
    }
    fprintf(ui->out, "run directory: %s (metrics.jsonl, checkpoints/, adapters/)\n", cfg->output_dir);
    s = TL_OK;
done:
#undef CHECK
    if (M.f) fclose(M.f);
    free(total_steps);
    free(aloss);
    free(gnorm);
    free(lrs);
    free(logp);
    tl_session_close(&S);
    return s;
}

/* The pool of a run as its latest checkpoint (or the given checkpoint directory) holds it. */
static tl_status open_checkpoint_pool(tl_session *S, const tl_config *cfg, const char *ckpt, int64_t *step,
                                      tl_error *err) {
    char **names = NULL;
    int n = 0;
    TL_TRY(tl_checkpoint_read_names(ckpt, &names, &n, err));
    tl_status s = tl_lora_pool_init(&S->pool, &S->model, n, names, cfg->adapter_rank, (float)cfg->adapter_alpha,
                                    cfg->adapter_rslora, (float)cfg->adapter_dropout, cfg->adapter_targets, cfg->seed,
                                    err);
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

tl_status tl_eval(const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    tl_status s;
    char ckpt[TL_PATH_MAX];
    int64_t step = 0;
    tl_eval_result r = {0};
    s = open_inputs(&S, cfg, 0, 1, err);
    if (!s) s = find_checkpoint(cfg->output_dir, ckpt, sizeof ckpt, err);
    if (!s) s = open_checkpoint_pool(&S, cfg, ckpt, &step, err);
    if (!s) s = workspace_for(&S, cfg, err);
    if (!s) s = run_eval(&S, cfg, 1, S.pool.n_slots <= TL_EVAL_CROSS_MAX, &r, err);
    if (!s) {
        char path[TL_PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/eval.json", cfg->output_dir);
        s = tl_eval_write_json(&r, &S.pool, path, step, err);
        if (!s) {
            fprintf(ui->out, "eval of %s (step %lld) on %s:\n", ckpt, (long long)step, cfg->data_eval);
            tl_eval_print(&r, &S.pool, ui->out);
            fprintf(ui->out, "wrote %s\n", path);
        }
        tl_eval_result_free(&r);
    }
    tl_session_close(&S);
    return s;
}

tl_status tl_export_cmd(const char *run_or_ckpt, const char *out_dir, const tl_ui *ui, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    char ckpt[TL_PATH_MAX];
    tl_config cfg;
    int64_t step = 0;
    TL_TRY(find_checkpoint(run_or_ckpt, ckpt, sizeof ckpt, err));
    TL_TRY(tl_checkpoint_read_config(ckpt, &cfg, err));
    /* The pool needs only the model's shapes: read config.json, keep the weights on disk. */
    tl_status s = tl_backend_cpu_create(1, &S.be, err);
    if (!s) {
        S.model.be = S.be;
        s = tl_model_config_load(cfg.model_path, &S.model.cfg, err);
    }
    if (!s) s = open_checkpoint_pool(&S, &cfg, ckpt, &step, err);
    if (!s) {
        /* default: the adapters/ directory of the run the checkpoint belongs to (<run>/checkpoints/step-N) */
        char dflt[TL_PATH_MAX + 32];
        if (!out_dir) {
            if (strcmp(ckpt, run_or_ckpt) == 0)
                snprintf(dflt, sizeof dflt, "%s/../../adapters", ckpt);
            else
                snprintf(dflt, sizeof dflt, "%s/adapters", run_or_ckpt);
            out_dir = dflt;
        }
        int written = 0;
        s = tl_export_pool(&S.pool, S.be, &cfg, cfg.model_path, out_dir, &written, err);
        if (!s) fprintf(ui->out, "exported %d PEFT adapter(s) from %s (step %lld) to %s/\n", written, ckpt,
                        (long long)step, out_dir);
    }
    tl_session_close(&S);
    return s;
}
