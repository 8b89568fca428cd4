/* commands: tailor eval and tailor export, over a run's checkpoint (see tl_train.h). */
#include "trainer/run/tl_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/tl_io.h"
#include "data/tl_safetensors.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/run/resident.h"
#include "trainer/run/rl_run.h"
#include "trainer/run/session_impl.h"
#include "trainer/run/tl_checkpoint.h"
#include "trainer/run/tl_export.h"

/* The pool of a run as its latest checkpoint (or the given checkpoint directory) holds it. */
static tl_status open_checkpoint_pool(tl_session *S, const tl_config *cfg, const char *ckpt, int64_t *step,
                                      tl_error *err) {
    char **names = NULL;
    int n = 0;
    TL_TRY(tl_checkpoint_read_names(ckpt, &names, &n, err));
    tl_lora_opts lo = tl_session_lora_opts(cfg, (float)cfg->adapter_dropout, cfg->task_type == TL_TASK_REWARD);
    tl_status s = tl_lora_pool_init(&S->pool, &S->model, n, names, &lo, err);
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

/* A run with the adapter store (docs/scale.md): its checkpoint's manifest over <run_dir>/store, and a pool of up to
 * 64 slots through which evaluation and export stream the adapters (S->res). */
static tl_status open_store_run(tl_session *S, const tl_config *cfg, const char *run_dir, const char *ckpt,
                                int64_t *step, tl_error *err) {
    tl_store_layout want;
    TL_TRY(tl_store_read_layout(run_dir, &want, err));
    /* one slot first: the layout this model and config give, checked against the store's */
    tl_lora_opts lo = tl_session_lora_opts(cfg, (float)cfg->adapter_dropout, cfg->task_type == TL_TASK_REWARD);
    char *first = "(none)";
    TL_TRY(tl_lora_pool_init(&S->pool, &S->model, 1, &first, &lo, err));
    S->have_pool = 1;
    tl_store_layout L = {.P = S->pool.P, .rank = S->pool.rank, .n_layers = S->pool.n_layers,
                         .targets = S->pool.targets, .head_dim = S->pool.head_dim};
    tl_store *st = NULL;
    TL_TRY(tl_store_open(run_dir, &L, &st, err));
    char man[TL_PATH_MAX + 32];
    snprintf(man, sizeof man, "%s/%s", ckpt, TL_STORE_MANIFEST);
    tl_status s = tl_store_restore(st, man, step, NULL, err);
    int64_t N = s ? 0 : tl_store_count(st);
    if (!s && N < 1) s = tl_fail(err, TL_ERR_INPUT, "%s: the store holds no adapter", man);
    int K = N < 64 ? (int)N : 64;
    char **names = s ? NULL : malloc((size_t)K * sizeof *names);
    if (!s && !names) s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int i = 0; !s && i < K; i++) names[i] = (char *)tl_store_name(st, i);
    if (!s) {
        tl_lora_pool_free(&S->pool, S->be);
        S->have_pool = 0;
        s = tl_lora_pool_init(&S->pool, &S->model, K, names, &lo, err);
        if (!s) S->have_pool = 1;
    }
    if (!s && S->task == TL_TASK_DPO && cfg->adapter_init_from[0]) { /* the reference policy, per adapter */
        tl_lora_opts reference = tl_session_lora_opts(cfg, 0.0f, 0);
        s = tl_lora_pool_init(&S->ref, &S->model, K, names, &reference, err);
        if (!s) S->have_ref = 1;
    }
    free(names);
    if (!s && !(S->res = calloc(1, sizeof *S->res))) s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    if (s) {
        tl_store_close(st);
        return s;
    }
    s = tl_resident_init(S->res, st, &S->pool, S->have_ref ? &S->ref : NULL, S->be, cfg->seed, cfg->adapter_init_from,
                         NULL, 0, err);
    if (s) free(S->res), S->res = NULL;
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

/* The run directory a checkpoint belongs to: run_or_ckpt itself when it is a run, else the folder above the
 * checkpoint's checkpoints/ folder (found by name, not by "..", which a symlinked checkpoint would lead elsewhere);
 * "" for a checkpoint outside a run's checkpoints/ folder. */
static tl_status run_of_checkpoint(const char *run_or_ckpt, const char *ckpt, char *run, size_t cap, tl_error *err) {
    run[0] = 0;
    if (strcmp(ckpt, run_or_ckpt) != 0) return tl_path_trim(run_or_ckpt, run, cap, err);
    char parent[TL_PATH_MAX];
    TL_TRY(tl_path_parent(ckpt, parent, sizeof parent, err));
    const char *base = strrchr(parent, '/');
    base = base ? base + 1 : parent;
    if (strcmp(base, "checkpoints") != 0) {
        if (tl_checkpoint_has_store(ckpt))
            return tl_fail(err, TL_ERR_INPUT, "%s: a checkpoint of a run with the adapter store outside its run's "
                           "checkpoints/ folder: its adapters are in the run's store/; give the run directory", ckpt);
        return TL_OK;
    }
    return tl_path_parent(parent, run, cap, err);
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

/* grpo / rloo: the reward of each adapter's sampled answers on data.eval under its own reward model, against the
 * base model and the starting adapters (rl_run.h), instead of the loss evaluation of the other tasks */
static tl_status eval_rl(tl_session *S, const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    if (cfg->adapter_init_from[0]) { /* the starting adapters */
        tl_lora_opts start = tl_session_lora_opts(cfg, 0.0f, 0);
        TL_TRY(tl_lora_pool_init(&S->ref, &S->model, S->pool.n_slots, S->pool.names, &start, err));
        S->have_ref = 1;
        TL_TRY(tl_load_init_from(&S->ref, S->be, cfg->adapter_init_from, err));
    }
    tl_rl_run *rr = NULL;
    TL_TRY(tl_rl_run_setup(S, cfg, 1, &rr, err));
    tl_status s = tl_rl_run_eval(rr, S, cfg, ui, err);
    tl_rl_run_free(rr, S->be);
    return s;
}

tl_status tl_eval(const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    tl_status s;
    char ckpt[TL_PATH_MAX];
    int64_t step = 0;
    TL_TRY(one_process_only("eval", err));
    s = tl_session_open(&S, cfg, 0, 1, err);
    if (!s) s = find_checkpoint(cfg->output_dir, ckpt, sizeof ckpt, err);
    int store = !s && tl_checkpoint_has_store(ckpt);
    if (!s && store) s = open_store_run(&S, cfg, cfg->output_dir, ckpt, &step, err);
    if (!s && !store) s = open_checkpoint_pool(&S, cfg, ckpt, &step, err);
    if (!s && !store && TL_TASK_IS_RL(S.task)) {
        fprintf(ui->out, "eval of %s (step %lld)\n", ckpt, (long long)step);
        s = eval_rl(&S, cfg, ui, err);
        if (!s) fprintf(ui->out, "wrote %s/rl_eval.json\n", cfg->output_dir);
        tl_session_close(&S);
        return s;
    }
    if (!s && !store && S.task == TL_TASK_DPO && cfg->adapter_init_from[0]) { /* the reference policy */
        tl_lora_opts reference = tl_session_lora_opts(cfg, 0.0f, 0);
        s = tl_lora_pool_init(&S.ref, &S.model, S.pool.n_slots, S.pool.names, &reference, err);
        if (!s) S.have_ref = 1, s = tl_load_init_from(&S.ref, S.be, cfg->adapter_init_from, err);
    }
    if (!s) s = tl_session_workspace(&S, cfg, err);
    if (!s) {
        fprintf(ui->out, "eval of %s (step %lld)\n", ckpt, (long long)step);
        s = tl_session_eval(&S, cfg, ui, NULL, step, 1, err);
    }
    if (!s) fprintf(ui->out, "wrote %s/eval.json\n", cfg->output_dir);
    tl_session_close(&S);
    return s;
}

/* ---- tailor export: the adapters of a checkpoint, one at a time ---- */

/* Rows of a checkpoint's params tensor, read one adapter at a time (tl_state_reader, k = 0). */
typedef struct {
    tl_st_file *f;
} ckpt_rows;

static tl_status ckpt_read(void *ctx, int k, size_t first, float *dst, size_t n, tl_error *err) {
    ckpt_rows *c = ctx;
    if (k != 0) return tl_fail(err, TL_ERR_RUNTIME, "export: checkpoint reader asked for state %d", k);
    TL_TRY(tl_st_read_range(c->f, "params", (uint64_t)first * sizeof *dst, dst, (uint64_t)n * sizeof *dst, err));
    for (size_t i = 0; i < n; i++) /* as tl_checkpoint_load: a NaN or Inf is named where it lies */
        if (!isfinite(dst[i]))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor 'params' [element %zu] is %g, expected a finite number",
                           tl_st_path(c->f), first + i, (double)dst[i]);
    return TL_OK;
}

/* What an export needs from a checkpoint: S->pool with the adapters' layout, names and steps only (its own
 * parameters are one slot's worth, never read), and a reader of each adapter's parameters from the state file.
 * The only place an export's source is chosen: another store supplies its own pool layout and reader here. */
static tl_status open_export_source(tl_session *S, const tl_config *cfg, const char *ckpt, ckpt_rows *rows,
                                    tl_state_reader *rd, int64_t *step, tl_error *err) {
    char **names = NULL;
    int n = 0;
    TL_TRY(tl_checkpoint_read_names(ckpt, &names, &n, err));
    tl_lora_opts lo = tl_session_lora_opts(cfg, (float)cfg->adapter_dropout, cfg->task_type == TL_TASK_REWARD);
    tl_status s = n > 0 ? tl_lora_pool_init(&S->pool, &S->model, 1, names, &lo, err)
                        : tl_fail(err, TL_ERR_INPUT, "%s: the checkpoint holds no adapters", ckpt);
    if (s) {
        tl_checkpoint_free_names(names, n);
        return s;
    }
    S->have_pool = 1;
    tl_lora_pool *p = &S->pool;
    S->be->free(S->be, p->params), S->be->free(S->be, p->grads), S->be->free(S->be, p->m), S->be->free(S->be, p->v);
    p->params = p->grads = p->m = p->v = NULL;
    free(p->names[0]);
    free(p->names);
    free(p->steps);
    p->names = names, p->n_slots = n;
    p->steps = calloc((size_t)n, sizeof *p->steps);
    if (!p->steps) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    TL_TRY(tl_checkpoint_check(ckpt, p, err)); /* format, names, layout and the integer state, as a load checks */
    char path[TL_PATH_MAX];
    TL_TRY(tl_path_join(path, sizeof path, ckpt, "state.safetensors", err));
    TL_TRY(tl_st_open(path, &rows->f, err));
    const tl_st_tensor *t = tl_st_find(rows->f, "params"), *st = tl_st_find(rows->f, "steps");
    if (!t || t->dtype != TL_DT_F32 || t->ndim != 2 || t->shape[0] != n || (uint64_t)t->shape[1] != p->P)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor 'params' is not F32 [%d, %zu] (the adapters of its config.yaml)",
                       path, n, p->P);
    if (!st || st->dtype != TL_DT_I64 || st->ndim != 1 || st->shape[0] != n)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor 'steps' is not I64 [%d]", path, n);
    TL_TRY(tl_st_read_bytes(rows->f, "steps", p->steps, (uint64_t)n * sizeof *p->steps, err));
    for (int i = 0; i < n; i++)
        if (p->steps[i] < 0 || p->steps[i] > TL_CHECKPOINT_INT_MAX)
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor 'steps' [adapter %d] is %lld, expected an integer in "
                           "[0, 2^53]", path, i, (long long)p->steps[i]);
    *rd = (tl_state_reader){ckpt_read, rows};
    return tl_checkpoint_read_step(ckpt, step, err);
}

/* The default output of each format inside the run directory. */
static tl_status default_out(const char *run, const tl_export_opts *o, char *out, size_t cap, tl_error *err) {
    char user[TL_SAFE_DIRNAME_MAX + 1], sub[TL_SAFE_DIRNAME_MAX + 32];
    switch (o->format) {
    case TL_EXPORT_PEFT: return tl_path_join(out, cap, run, "adapters", err);
    case TL_EXPORT_GGUF: return tl_path_join(out, cap, run, "adapters-gguf", err);
    default:
        if (tl_safe_dirname(o->user ? o->user : "", user, sizeof user) != TL_OK)
            return tl_fail(err, TL_ERR_RUNTIME, "export: no folder name for the user");
        snprintf(sub, sizeof sub, "%s/%s", o->format == TL_EXPORT_MERGED ? "merged" : "merged-gguf", user);
        return tl_path_join(out, cap, run, sub, err);
    }
}

tl_status tl_export_cmd(const char *run_or_ckpt, const char *out_dir, const tl_export_opts *opts, const tl_ui *ui,
                        tl_error *err) {
    tl_session S;
    memset(&S, 0, sizeof S);
    char ckpt[TL_PATH_MAX];
    tl_config cfg;
    int64_t step = 0;
    tl_export_opts o = opts ? *opts : (tl_export_opts){.format = TL_EXPORT_PEFT};
    TL_TRY(one_process_only("export", err));
    TL_TRY(find_checkpoint(run_or_ckpt, ckpt, sizeof ckpt, err));
    TL_TRY(tl_checkpoint_read_config(ckpt, &cfg, err));
    if (!o.base_model) o.base_model = cfg.model_path;
    /* The pool needs only the model's shapes: read its configuration, keep the weights on disk. */
    ckpt_rows rows = {NULL};
    tl_state_reader rd;
    tl_status s = tl_backend_cpu_create(1, &S.be, err);
    if (!s) {
        S.model.be = S.be;
        s = tl_model_config_from(cfg.model_path, &S.model.cfg, err);
    }
    int store = tl_checkpoint_has_store(ckpt);
    char run[TL_PATH_MAX];
    if (!s) s = run_of_checkpoint(run_or_ckpt, ckpt, run, sizeof run, err);
    if (!s && store) s = open_store_run(&S, &cfg, run, ckpt, &step, err);
    if (!s && !store) s = open_export_source(&S, &cfg, ckpt, &rows, &rd, &step, err);
    if (!s) {
        /* default: inside the run the checkpoint belongs to: <run> for a run, and for <run>/checkpoints/step-N,
         * found by name (not by "..", which a symlinked checkpoint would lead elsewhere); a checkpoint outside a
         * run's checkpoints/ folder has no run: --out is needed */
        char dflt[TL_PATH_MAX + 32];
        if (!out_dir) {
            if (!run[0])
                s = tl_fail(err, TL_ERR_INPUT, "%s: not inside a run's checkpoints/ folder, so it has no run "
                            "directory to export into: give --out DIR", ckpt);
            if (!s) s = default_out(run, &o, dflt, sizeof dflt, err);
            out_dir = dflt;
        }
        int written = 0;
        if (!s && store) s = tl_resident_export(S.res, &cfg, &o, out_dir, &written, err);
        if (!s && !store) s = tl_export_run(&S.pool, &rd, &cfg, &o, out_dir, &written, err);
        if (!s && (o.format == TL_EXPORT_PEFT || o.format == TL_EXPORT_GGUF))
            fprintf(ui->out, "exported %d %s adapter(s) from %s (step %lld) to %s/\n", written,
                    o.format == TL_EXPORT_PEFT ? "PEFT" : "GGUF LoRA", ckpt, (long long)step, out_dir);
        else if (!s)
            fprintf(ui->out, "exported the base model with adapter '%s' merged (%s) from %s (step %lld) to %s/\n",
                    o.user, tl_export_format_name(o.format), ckpt, (long long)step, out_dir);
    }
    if (rows.f) tl_st_close(rows.f);
    tl_session_close(&S);
    return s;
}
