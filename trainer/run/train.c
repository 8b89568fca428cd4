/* train: one whole training run — set up, step loop, checkpoints, evaluation, export (see tl_train.h).
 *
 * tl_train (at the end) reads as its phases: setup_run, then train_step / after_step per step, then finish_run.
 * A tl_run holds the session (session_impl.h: backend, model, data, pools, ranks) and the step loop's host
 * buffers; the micro-batch steps are trainer/step/ (sft_step.c, pref_step.c), the metrics records and the
 * progress line trainer/run/metrics.c, the evaluation session.c, tailor eval / export commands.c.
 *
 * Order matters for the "nothing half-written" rule: everything a run reads (config, model, datasets) is opened
 * and validated before the run directory is created, so bad input never leaves a run directory behind. */

#include "trainer/run/tl_train.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_io.h"
#include "kernels/tl_text.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/dist/tl_dist_pool.h"
#include "trainer/run/rl_run.h"
#include "trainer/run/session_impl.h"
#include "trainer/run/resident.h"
#include "trainer/run/tl_checkpoint.h"
#include "trainer/run/tl_export.h"
#include "trainer/run/tl_metrics.h"
#include "trainer/step/tl_optim.h"
#include "trainer/step/tl_sft_step.h"

/* The trained pool (with a score head for reward models), started from adapter.init_from when set; for DPO the
 * started adapters are also kept frozen as the reference policy, as TRL does with PEFT. */
static tl_status make_pools(tl_session *S, const tl_config *cfg, char *const *names, int n, tl_error *err) {
    tl_lora_opts trained = tl_session_lora_opts(cfg, (float)cfg->adapter_dropout, S->task == TL_TASK_REWARD);
    TL_TRY(tl_lora_pool_init(&S->pool, &S->model, n, names, &trained, err));
    S->have_pool = 1;
    if (!cfg->adapter_init_from[0]) return TL_OK;
    TL_TRY(tl_load_init_from(&S->pool, S->be, cfg->adapter_init_from, err));
    if (S->task != TL_TASK_DPO && !TL_TASK_IS_RL(S->task)) return TL_OK;
    /* the reference runs without dropout, as TRL's reference model is in eval mode */
    tl_lora_opts reference = tl_session_lora_opts(cfg, 0.0f, 0);
    TL_TRY(tl_lora_pool_init(&S->ref, &S->model, n, names, &reference, err));
    S->have_ref = 1;
    return tl_load_init_from(&S->ref, S->be, cfg->adapter_init_from, err);
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

/* data_parallel deals a step's micro-batches round robin: micro-batch k is rank k mod world's. */
static int runs_microbatch(const tl_session *S, int k) {
    return !S->data_parallel || k % tl_dist_world(S->dist) == tl_dist_rank(S->dist);
}

/* Reference log-prob cache (task.precompute_ref): two sums per dataset pair, NaN until first computed. The
 * reference is frozen, so a pair's values never change; after a resume they are simply computed again. */
typedef struct {
    double *v;
    double *in, *out; /* per micro-batch staging, [2 * max pairs] */
} tl_ref_cache;

/* One training step's micro-batches for DPO or reward models; per-adapter stats into st[]. */
/* B: PS's batch in the pool's slot space (PS->batch itself without the store). */
static tl_status pref_step(tl_session *S, const tl_config *cfg, const tl_pref_step *PS, const tl_step_batch *B,
                           tl_ref_cache *rc, int32_t *buf, double *wbuf, tl_pref_stats *st, tl_error *err) {
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
                          .ref_in = cached ? rc->in : NULL, .ref_out = rc->v && !cached ? rc->out : NULL,
                          .ref = S->have_ref ? &S->ref : NULL};
        tl_pref_acc acc = {.stats = st};
        if (S->task == TL_TASK_DPO)
            TL_TRY(tl_dpo_microbatch(&S->model, &S->pool, S->ws, S->pref_scratch, &B->mb[mbi], &ps, &S->pref_opts, 1, &acc, err));
        else
            TL_TRY(tl_reward_microbatch(&S->model, &S->pool, S->ws, S->pref_scratch, &B->mb[mbi], &ps, cfg->task_center_rewards,
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
static void adapter_costs(const tl_session *S, const tl_adapter_map *map, const tl_config *cfg,
                          const int64_t *total_steps, double *cost) {
    for (int a = 0; a < map->n_adapters; a++) {
        double len = 0;
        int64_t n = map->n_examples[a];
        for (int64_t i = 0; i < n; i++) {
            int64_t e = map->examples[a][i], l;
            if (S->task == TL_TASK_SFT)
                l = S->train.offsets[e + 1] - S->train.offsets[e];
            else
                l = 2 * (S->pref_train.prompt.offsets[e + 1] - S->pref_train.prompt.offsets[e]) +
                    (S->pref_train.chosen.offsets[e + 1] - S->pref_train.chosen.offsets[e]) +
                    (S->pref_train.rejected.offsets[e + 1] - S->pref_train.rejected.offsets[e]);
            if (l > (int64_t)cfg->data_max_seq_len * (S->task == TL_TASK_SFT ? 1 : 2))
                l = (int64_t)cfg->data_max_seq_len * (S->task == TL_TASK_SFT ? 1 : 2);
            len += (double)l;
        }
        cost[a] = n ? (double)total_steps[a] * cfg->examples_per_adapter * len / (double)n : 0;
    }
}

/* Rank 0 alone writes checkpoints and the export. With a local pool (user_shard) it writes them while the
 * owners' rows arrive through collectives (tl_dist_collect_*: the other ranks serve the same sequence);
 * otherwise from its own pool (data_parallel keeps every rank's pool identical). The ranks then meet, so a
 * failure on rank 0 reaches the others as a failed collective and no rank runs ahead of a checkpoint. */
static tl_status save_pool_state(tl_session *S, const tl_config *cfg, int64_t done_steps, tl_cursor *cursors,
                                int checkpoint, int export_adapters, const tl_ui *ui, tl_error *err) {
    int rank0 = tl_dist_rank(S->dist) == 0;
    char adir[TL_PATH_MAX + 16];
    snprintf(adir, sizeof adir, "%s/adapters", cfg->output_dir);
    int written = 0;
    tl_status s = TL_OK;
    if (!S->local_pool) {
        if (rank0 && checkpoint)
            s = tl_checkpoint_save(cfg->output_dir, cfg, &S->pool, S->be, done_steps, cursors, cfg->keep_checkpoints,
                                   err);
        if (rank0 && export_adapters && !s) s = tl_export_pool(&S->pool, S->be, cfg, cfg->model_path, adir, &written, err);
    } else {
        int nG = S->n_global;
        tl_dist_collector c;
        TL_TRY(tl_dist_collect_init(&c, S->dist, &S->pool, S->be, S->global_index, nG, err));
        int64_t *steps = calloc((size_t)nG + 1, sizeof *steps);
        tl_cursor *cur = calloc((size_t)nG + 1, sizeof *cur);
        s = steps && cur ? tl_dist_collect_ints(&c, cursors, steps, cur, err)
                         : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
        /* the whole run's layout, names and step counts; its rows come from the reader */
        tl_lora_pool run = tl_lora_pool_layout(&S->pool, nG, S->map.names, steps);
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
    if (!S->local_pool) return tl_checkpoint_load(ckpt, &S->pool, S->be, start, cursors, err);
    return tl_checkpoint_load_rows(ckpt, &S->pool, S->be, S->map.names, S->n_global, S->global_index, start, cursors,
                                   err);
}

/* Places this process: the GPU of its local rank and its share of the cores. */
static void place_process(tl_session *S, const tl_config *cfg) {
    S->device = 0, S->threads = cfg->threads;
    if (S->env.world == 1) return;
    if (cfg->threads == 0 && !getenv("OMP_NUM_THREADS")) S->threads = tl_dist_cpu_threads(&S->env);
    S->device = tl_dist_cuda_device(&S->env, tl_backend_gpu_count());
}

/* One training run: the session (everything held open) and the host buffers of the step loop, allocated at
 * setup (the loop allocates nothing) and released, with the signal handlers and the metrics file, by
 * tl_run_close. */
typedef struct {
    tl_session S;
    const tl_config *cfg;
    tl_ui ui;      /* this rank's: rank 0 speaks for the run, the others write to /dev/null */
    FILE *devnull;
    struct sigaction old_term, old_usr1;
    int handlers;  /* the stop handlers are installed (old_* to restore) */
    int rank, world;
    int pref;      /* dpo or reward: preference pairs */
    int rl;        /* grpo or rloo: prompts, rollouts, reward models (rl_run.h) */
    tl_rl_run *rl_run;
    tl_cursor *cursors;        /* the batcher's, saved in every checkpoint */
    int64_t *total_steps;      /* [slots] optimizer steps each adapter takes over the run */
    double *adapter_loss;      /* [slots] this step's loss of each adapter */
    float *grad_norm, *lr;     /* [slots] of this step's active adapters, in order */
    tl_adam_slot *adam;        /* [slots] optimizer scratch */
    float *logp;               /* [micro_batch_tokens] sft: log p(target) per row */
    double *reduce_buf;        /* [slots * TL_PSTAT_N] per-adapter metrics summed over ranks (data_parallel) */
    tl_pref_stats *pref_stats; /* [slots] dpo / reward: this step's per-adapter statistics */
    int32_t *pair_buf;         /* [3 * max pairs] pair sequence indices and adapters of a micro-batch */
    double *pair_weight;       /* [max pairs] */
    tl_ref_cache ref_cache;
    tl_metrics metrics;
    tl_optim_opts optim;
    int64_t start;             /* the first step this run takes (resume) */
    int64_t last_checkpoint;   /* the step of the latest checkpoint written or resumed from, -1: none */
    int64_t kill_after;        /* fault injection, -1: none */
    int64_t tokens_since_log, truncated;
    double truncated_all;      /* sequences truncated over the run, summed over ranks at the last log step */
    tl_step_batch *batch;      /* the current step's (in slot space with a store) */
    tl_pref_step *pref_batch;  /* the current step's pairs (dpo / reward) */
    int64_t end;               /* the step this run stops after: round_start + train.steps */
    /* with the adapter store (S.res; docs/scale.md) */
    int64_t round_start;       /* the global step at which this round began (runs that grow) */
    int nothing_new;           /* train.continue found no adapter with new data: the run ends at once */
    tl_adapter_map round_map;  /* this round's adapters and their examples (what the batcher schedules); many
                                  ranks: this rank's share of them */
    int have_round_map;
    int32_t *round_gidx;       /* many ranks: [round_map.n_adapters] each one's index in the whole round */
    int n_round;               /* many ranks: the adapters of the whole round */
    tl_step_batch empty_batch; /* the step of a rank that trains no adapter this round */
    int32_t *active_slots;     /* [slots] the step's active adapters' slots */
    int64_t *slot_targets;     /* [slots] the step's trained rows per slot */
    int64_t *slot_total;       /* [slots] the schedule length of the adapter in each slot */
    tl_step_batch slot_batch;  /* the step's batch in slot space */
    uint64_t ckpt_bytes;       /* store bytes written up to the last checkpoint */
    int32_t *next_adapters;    /* [slots] train.store_prefetch: the next step's adapters (tl_batcher_peek) */
} tl_run;

/* Rank 0 writes the checkpoint (every `checkpoint`) and the exported adapters; with the adapter store, the
 * store's manifest after every trained slot is written back, and the export streams from the store. */
static tl_status save_run_state(tl_run *R, int64_t done_steps, int checkpoint, int export_adapters, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    if (!S->res) return save_pool_state(S, cfg, done_steps, R->cursors, checkpoint, export_adapters, &R->ui, err);
    tl_resident *res = S->res;
    double t0 = tl_now_s();
    for (int a = 0; a < res->n; a++)
        tl_store_set_cursor(res->store, res->entry[a], R->cursors[a].epoch, R->cursors[a].pos);
    uint64_t written_all = 0; /* store bytes appended by every rank */
    tl_store_compaction cp = {0};
    TL_TRY(tl_resident_flush(res, err));
    /* a checkpoint compacts the store (rank 0: the adapters outside the round, which no rank owns) */
    if (checkpoint && R->rank == 0)
        TL_TRY(tl_store_compact(res->store, cfg->store_compact_below, R->round_start, &cp, err));
    tl_status s = TL_OK;
    if (R->world > 1) /* user_shard: each rank's records sealed, and every rank's entries on every rank */
        s = tl_resident_sync(res, S->dist, cp.moved, cp.n_moved, &written_all, err);
    else
        written_all = tl_store_bytes_written(res->store);
    int n_moved = (int)cp.n_moved, n_sparse = cp.segments;
    uint64_t moved_bytes = cp.bytes;
    tl_store_compaction_free(&cp);
    TL_TRY(s);
    if (checkpoint && R->rank == 0) { /* rank 0 writes the manifest (and prunes) for every rank */
        TL_TRY(tl_checkpoint_save_store(cfg->output_dir, cfg, res->store, done_steps, R->round_start,
                                        cfg->keep_checkpoints, err));
        /* what this checkpoint cost: the records written back since the last one, and the manifest */
        uint64_t bytes = written_all - R->ckpt_bytes - moved_bytes;
        fprintf(R->ui.log, "checkpoint at step %lld: %.1f MiB of adapter records since the last one (%llu "
                "adapter(s)), manifest of %lld adapter(s), %.2f s\n", (long long)done_steps,
                (double)bytes / (1 << 20), (unsigned long long)(bytes / tl_store_record_bytes(S->pool.P)),
                (long long)tl_store_count(res->store), tl_now_s() - t0);
        if (n_moved)
            fprintf(R->ui.log, "store compaction: %d record(s) (%.1f MiB) moved out of %d sparse segment(s), which "
                    "pruning removes once no kept checkpoint uses them\n", n_moved, (double)moved_bytes / (1 << 20),
                    n_sparse);
    }
    if (checkpoint) R->ckpt_bytes = written_all;
    if (export_adapters && R->rank == 0) { /* rank 0 reads every rank's records from the shared store */
        char adir[TL_PATH_MAX + 16];
        snprintf(adir, sizeof adir, "%s/adapters", cfg->output_dir);
        int written = 0;
        TL_TRY(tl_resident_export(res, cfg, NULL, adir, &written, err));
        fprintf(R->ui.out, "exported %d PEFT adapter(s) to %s/\n", written, adir);
    }
    if (R->world == 1) return TL_OK;
    return tl_dist_barrier(S->dist, export_adapters ? "export by rank 0" : "checkpoint written by rank 0", err);
}

static void restore_stop_handlers(tl_run *R) {
    if (!R->handlers) return;
    sigaction(SIGTERM, &R->old_term, NULL);
    sigaction(SIGUSR1, &R->old_usr1, NULL);
    R->handlers = 0;
}

static void tl_run_close(tl_run *R) {
    restore_stop_handlers(R);
    tl_metrics_close(&R->metrics);
    if (R->devnull) fclose(R->devnull);
    free(R->total_steps);
    free(R->adapter_loss);
    free(R->grad_norm);
    free(R->lr);
    free(R->adam);
    free(R->logp);
    free(R->pref_stats);
    free(R->pair_buf);
    free(R->pair_weight);
    free(R->reduce_buf);
    free(R->ref_cache.v);
    free(R->ref_cache.in);
    free(R->ref_cache.out);
    tl_rl_run_free(R->rl_run, R->S.be);
    free(R->active_slots);
    free(R->slot_targets);
    free(R->slot_total);
    free(R->next_adapters);
    if (R->have_round_map) tl_adapter_map_free(&R->round_map);
    free(R->round_gidx);
    tl_session_close(&R->S);
    memset(R, 0, sizeof *R);
}

/* Fault injection for the resume and fault tests: the global step after which this process dies by SIGKILL, as
 * a crash would (TAILOR_FAULT_KILL_AFTER_STEP; TAILOR_FAULT_KILL_RANK limits it to one rank); -1: never. */
static int64_t fault_kill_step(int rank) {
    const char *kill_env = getenv("TAILOR_FAULT_KILL_AFTER_STEP");
    const char *kill_rank_env = getenv("TAILOR_FAULT_KILL_RANK");
    return kill_env && (!kill_rank_env || atoi(kill_rank_env) == rank) ? atoll(kill_env) : -1;
}

/* The process's place in the job, its inputs, the adapter map (with its warnings) and each adapter's steps. */
static tl_status setup_inputs(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    TL_TRY(tl_dist_env_detect(&S->env, err));
    R->rank = S->env.rank, R->world = S->env.world;
    if (R->rank > 0) { /* rank 0 speaks for the run; the others report only their own failures */
        R->devnull = fopen("/dev/null", "w");
        if (!R->devnull) return tl_fail(err, TL_ERR_RUNTIME, "rank %d: cannot open /dev/null", R->rank);
        R->ui.out = R->devnull, R->ui.log = R->devnull, R->ui.quiet = 1, R->ui.is_tty = 0;
    }
    place_process(S, cfg);
    TL_TRY(tl_session_open(S, cfg, 1, 0, err));
    tl_adapter_key key = cfg->adapter_key;
    S->data_parallel = cfg->dist_strategy == TL_STRATEGY_DATA_PARALLEL ||
                       (cfg->dist_strategy == TL_STRATEGY_AUTO && key == TL_KEY_GLOBAL);
    R->pref = S->task == TL_TASK_DPO || S->task == TL_TASK_REWARD;
    R->rl = TL_TASK_IS_RL(S->task);
    if (R->rl) {
        if (R->world > 1)
            return tl_fail(err, TL_ERR_INPUT, "task.type %s: runs as one process only for now (%d ranks given)",
                           tl_task_type_names[S->task], R->world);
        TL_TRY(tl_adapter_map_build_prompt(&S->prompt_train, key, NULL, 0, &S->map, err));
        S->have_map = 1;
        warn_empty_users(&R->ui, S->prompt_train.path, S->prompt_train.n_users, S->prompt_train.user_names, &S->map,
                         key);
    } else if (R->pref) {
        TL_TRY(tl_adapter_map_build_pref(&S->pref_train, key, NULL, 0, &S->map, err));
        S->have_map = 1;
        warn_empty_users(&R->ui, S->pref_train.path, S->pref_train.n_users, S->pref_train.user_names, &S->map, key);
        warn_untrainable(&R->ui, S->pref_train.path, &S->map, NULL, &S->pref_train);
    } else {
        TL_TRY(tl_adapter_map_build(&S->train, key, NULL, 0, &S->map, err));
        S->have_map = 1;
        warn_empty_users(&R->ui, S->train.path, S->train.n_users, S->train.user_names, &S->map, key);
        warn_untrainable(&R->ui, S->train.path, &S->map, &S->train, NULL);
    }
    TL_TRY(count_adapter_steps(cfg, S->map.n_adapters, &R->total_steps, err));
    S->n_global = S->map.n_adapters;
    return TL_OK;
}

/* user_shard over many ranks: each rank owns a share of the adapters (balanced by the tokens each will train on)
 * and its pool, batcher and optimizer hold those only (S->local_map); the round robin stays the whole run's. */
/* The training map over the given adapter names (a rank's share, a round). */
static tl_status train_map_of(tl_run *R, char *const *names, int n, tl_adapter_map *out, tl_error *err) {
    tl_session *S = &R->S;
    tl_adapter_key key = R->cfg->adapter_key;
    return R->pref ? tl_adapter_map_build_pref(&S->pref_train, key, names, n, out, err)
                   : tl_adapter_map_build(&S->train, key, names, n, out, err);
}

/* user_shard: this rank's share of map's adapters, balanced by the tokens each will train on (steps[a] optimizer
 * steps), the same on every rank (tl_dist_assign_owners). gidx[0 .. *n_local) receive their indices in map
 * (ascending) and names[] their names; both hold map->n_adapters entries. */
static tl_status my_share(tl_run *R, const tl_adapter_map *map, const int64_t *steps, int32_t *gidx, char **names,
                          int *n_local, tl_error *err) {
    int n = map->n_adapters;
    int *owner = malloc((size_t)(n ? n : 1) * sizeof *owner);
    double *cost = malloc((size_t)(n ? n : 1) * sizeof *cost);
    *n_local = 0;
    if (!owner || !cost) {
        free(owner), free(cost);
        return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    }
    adapter_costs(&R->S, map, R->cfg, steps, cost);
    tl_dist_assign_owners(cost, n, R->world, owner);
    for (int g = 0; g < n; g++)
        if (owner[g] == R->rank) gidx[*n_local] = g, names[*n_local] = map->names[g], (*n_local)++;
    free(owner), free(cost);
    return TL_OK;
}

static tl_status shard_adapters(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    int n_global = S->n_global, world = R->world;
    if (n_global < world)
        return tl_fail(err, TL_ERR_INPUT, "dist.strategy user_shard: %d ranks for %d adapter(s), so a rank would "
                       "own none: run at most %d ranks, or set dist.strategy: data_parallel", world, n_global,
                       n_global);
    S->global_index = malloc((size_t)n_global * sizeof *S->global_index);
    char **local_names = malloc((size_t)n_global * sizeof *local_names);
    int n_local = 0;
    tl_status s = S->global_index && local_names
                      ? my_share(R, &S->map, R->total_steps, S->global_index, local_names, &n_local, err)
                      : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    /* cannot happen with n_global >= world (tl_dist_assign_owners); a pool of none would mean all */
    if (!s && n_local == 0) s = tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: owns no adapter", R->rank, world);
    for (int a = 0; !s && a < n_local; a++) /* in place: global_index ascends and global_index[a] >= a */
        R->total_steps[a] = R->total_steps[S->global_index[a]];
    if (!s) s = train_map_of(R, local_names, n_local, &S->local_map, err);
    if (!s) S->have_local_map = 1;
    free(local_names);
    return s;
}

/* The batcher over this rank's adapters, the pools, and (data_parallel) this rank's share of the evaluation. */
static tl_status setup_batcher_and_pools(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    const tl_adapter_map *train_map = S->local_pool ? &S->local_map : &S->map;
    tl_batcher_opts bo = {.examples_per_adapter = cfg->examples_per_adapter,
                          .adapters_per_step = cfg->adapters_per_step,
                          .micro_batch_tokens = cfg->micro_batch_tokens,
                          .max_seq_len = cfg->data_max_seq_len,
                          .seed = cfg->seed};
    if (R->rl) { /* prompts as units of the SFT engine: the same streams, round robin and cursors */
        tl_unit_source src = tl_prompt_source(&S->prompt_train);
        TL_TRY(tl_batcher_init_units(&src, train_map, &bo, &S->batcher, err));
    } else if (R->pref) {
        TL_TRY(tl_pref_batcher_init(&S->pref_train, train_map, &bo, &S->pref_batcher, err));
        if (S->local_pool) TL_TRY(tl_pref_batcher_set_global(S->pref_batcher, S->global_index, S->n_global, err));
    } else {
        TL_TRY(tl_batcher_init(&S->train, train_map, &bo, &S->batcher, err));
        if (S->local_pool) TL_TRY(tl_batcher_set_global(S->batcher, S->global_index, S->n_global, err));
    }
    TL_TRY(make_pools(S, cfg, train_map->names, train_map->n_adapters, err));
    R->cursors = R->pref ? tl_pref_batcher_cursors(S->pref_batcher) : tl_batcher_cursors(S->batcher);
    if (R->world > 1 && S->data_parallel) { /* evaluation is split too: round robin over the replicated pool */
        int n = S->pool.n_slots;
        S->eval_mine = calloc((size_t)n, 1);
        if (!S->eval_mine) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
        for (int a = 0; a < n; a++) S->eval_mine[a] = a % R->world == R->rank;
    }
    return TL_OK;
}

/* Inputs are valid: connect the ranks (the NCCL id file may create <run>/.rendezvous), then rank 0 may write the
 * run directory: a fresh run (train.resume never) first moves the earlier run's outputs aside. */
static tl_status connect_and_make_run_dir(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    char rdv[TL_PATH_MAX + 16];
    snprintf(rdv, sizeof rdv, "%s/.rendezvous", cfg->output_dir);
    tl_dist_opts dopts = {.transport = tl_dist_kind_for(S->be->host_memory), .timeout_s = cfg->dist_timeout_s,
                          .rendezvous_dir = cfg->dist_rendezvous_dir[0] ? cfg->dist_rendezvous_dir : rdv};
    if (S->be->stream) dopts.cuda_stream = S->be->stream(S->be);
    TL_TRY(tl_dist_init(&S->env, &dopts, &S->dist, err));
    if (R->rank != 0) return TL_OK;
    if (cfg->resume == TL_RESUME_NEVER) {
        /* the earlier run's checkpoints, adapters and metrics go aside, so that export, eval and a later resume
         * cannot take them for this run's (its checkpoints of later steps would otherwise win) */
        char aside[TL_PATH_MAX];
        int moved = 0;
        TL_TRY(tl_run_set_aside(cfg->output_dir, -1, aside, sizeof aside, &moved, err));
        if (moved)
            fprintf(R->ui.log, "note: train.resume is never: the earlier run's outputs in %s were moved to %s/\n",
                    cfg->output_dir, aside);
    }
    return tl_mkdir_p(cfg->output_dir, err);
}

/* The run's resolved config, once what the run resumes from was found valid (rank 0). */
static tl_status write_run_config(const tl_run *R, tl_error *err) {
    if (R->rank != 0) return TL_OK;
    char path[TL_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.yaml", R->cfg->output_dir);
    return tl_config_write_file(R->cfg, path, err);
}

/* Many ranks: every rank goes on from the checkpoint rank 0 chose (the file system may show them others). */
static tl_status agree_on_checkpoint(tl_run *R, int *found, char *ckpt, tl_error *err) {
    int64_t f = *found;
    char pathbuf[TL_PATH_MAX];
    memset(pathbuf, 0, sizeof pathbuf);
    if (*found) snprintf(pathbuf, sizeof pathbuf, "%s", ckpt);
    TL_TRY(tl_dist_bcast_host(R->S.dist, &f, sizeof f, 0, "resume decision", err));
    TL_TRY(tl_dist_bcast_host(R->S.dist, pathbuf, sizeof pathbuf, 0, "resume checkpoint path", err));
    *found = (int)f;
    memcpy(ckpt, pathbuf, TL_PATH_MAX);
    return TL_OK;
}

/* train.resume: the checkpoint rank 0 finds (auto) or is given, loaded by every rank; then metrics.jsonl. */
static tl_status resume_run(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    char ckpt[TL_PATH_MAX];
    int found = 0;
    R->start = 0;
    if (cfg->resume == TL_RESUME_AUTO) {
        TL_TRY(tl_checkpoint_latest(cfg->output_dir, ckpt, sizeof ckpt, &found, err));
    } else if (cfg->resume == TL_RESUME_PATH) {
        snprintf(ckpt, sizeof ckpt, "%s", cfg->resume_path);
        found = 1;
    }
    if (R->world > 1) TL_TRY(agree_on_checkpoint(R, &found, ckpt, err));
    if (found) {
        TL_TRY(load_run_state(S, ckpt, &R->start, R->cursors, err));
        if (R->start > cfg->steps)
            return tl_fail(err, TL_ERR_INPUT, "train.resume: %s is at step %lld, beyond train.steps = %lld (raise "
                           "train.steps, or set train.resume: never to start over)", ckpt, (long long)R->start,
                           (long long)cfg->steps);
        fprintf(R->ui.out, "resuming from %s (step %lld)\n", ckpt, (long long)R->start);
        if (R->rank == 0 && cfg->resume != TL_RESUME_AUTO) {
            /* a given checkpoint: this run directory's checkpoints of later steps are another history */
            char aside[TL_PATH_MAX];
            int moved = 0;
            TL_TRY(tl_run_set_aside(cfg->output_dir, R->start, aside, sizeof aside, &moved, err));
            if (moved)
                fprintf(R->ui.log, "note: checkpoints of %s past step %lld were moved to %s/checkpoints/\n",
                        cfg->output_dir, (long long)R->start, aside);
        }
    }
    R->last_checkpoint = found ? R->start : -1;
    if (R->rank == 0) TL_TRY(tl_metrics_open(&R->metrics, cfg->output_dir, found ? R->start : -1, err));
    return TL_OK;
}

/* ---- the adapter store (train.store; docs/scale.md) ---- */

/* Whether this run keeps its adapters in a store: train.store on, or auto when the adapters' state (parameters,
 * gradients and Adam moments, 16 bytes per parameter) would pass train.store_min_bytes. */
static tl_status choose_store(tl_run *R, int *use, tl_error *err) {
    const tl_config *cfg = R->cfg;
    tl_session *S = &R->S;
    *use = 0;
    if (cfg->store == TL_STORE_OFF && cfg->continue_run)
        return tl_fail(err, TL_ERR_INPUT, "train.continue: true needs the adapter store: set train.store: on");
    if (cfg->store == TL_STORE_OFF) return TL_OK;
    if (R->rl) { /* the reward pool is laid out by the policy pool's names: no store for grpo / rloo yet */
        if (cfg->store == TL_STORE_AUTO) return TL_OK;
        return tl_fail(err, TL_ERR_INPUT, "train.store: not supported with task.type %s yet: set train.store: off",
                       tl_task_type_names[cfg->task_type]);
    }
    if (cfg->store == TL_STORE_AUTO) {
        tl_lora_pool probe; /* one slot: the layout's size */
        tl_lora_opts o = tl_session_lora_opts(cfg, 0.0f, S->task == TL_TASK_REWARD);
        TL_TRY(tl_lora_pool_init(&probe, &S->model, 1, S->map.names, &o, err));
        double bytes = 16.0 * (double)probe.P * (double)S->map.n_adapters;
        tl_lora_pool_free(&probe, S->be);
        if (bytes <= (double)cfg->store_min_bytes && !cfg->continue_run) return TL_OK;
    }
    if (R->world > 1 && S->data_parallel) /* every rank would hold and write every adapter */
        return tl_fail(err, TL_ERR_INPUT, "train.store: the adapter store shards users over ranks (dist.strategy "
                       "user_shard), and this run is data_parallel over %d ranks: set train.store: off, or "
                       "dist.strategy: user_shard", R->world);
    *use = 1;
    return TL_OK;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every adapter the store holds must still be in the dataset: a renamed or removed user would otherwise be
 * silently dropped from exports and evaluations. */
static tl_status check_store_users(const tl_store *st, const tl_adapter_map *map, const char *data, tl_error *err) {
    int64_t N = tl_store_count(st);
    char **sorted = malloc((size_t)(map->n_adapters ? map->n_adapters : 1) * sizeof *sorted);
    if (!sorted) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    memcpy(sorted, map->names, (size_t)map->n_adapters * sizeof *sorted);
    qsort(sorted, (size_t)map->n_adapters, sizeof *sorted, cmp_str_ptr);
    int64_t missing = 0;
    char shown[512] = "";
    for (int64_t i = 0; i < N; i++) {
        const char *name = tl_store_name(st, i);
        if (bsearch(&name, sorted, (size_t)map->n_adapters, sizeof *sorted, cmp_str_ptr)) continue;
        if (missing++ < 3) {
            char nb[TL_ESC_CAP];
            size_t l = strlen(shown);
            snprintf(shown + l, sizeof shown - l, "%s'%s'", l ? ", " : "", tl_escape(nb, sizeof nb, name));
        }
    }
    free(sorted);
    if (!missing) return TL_OK;
    return tl_fail(err, TL_ERR_INPUT, "%s: %lld adapter(s) of the run's store are not in this dataset (users renamed "
                   "or removed?): %s%s; nothing was changed: train on a dataset that still has them, or start a new "
                   "run (another train.output_dir, or train.resume: never)", data, (long long)missing, shown,
                   missing > 3 ? ", ..." : "");
}

/* The round this run trains (docs/scale.md, "Runs that grow"): a fresh run's round is every adapter; a resumed
 * round keeps the adapters enrolled in it; a run whose round is complete with train.continue starts a round of the
 * adapters that are new or whose example count changed. Fills *idx (map indices) and the run's steps. */
static tl_status plan_round(tl_run *R, tl_store *st, int found, int64_t G, int64_t round_start, int32_t **idx,
                            int *n_round, int *n_new, tl_error *err) {
    const tl_config *cfg = R->cfg;
    const tl_adapter_map *map = &R->S.map;
    int n = map->n_adapters;
    *idx = malloc((size_t)(n ? n : 1) * sizeof **idx);
    if (!*idx) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    *n_round = 0, *n_new = 0;
    int new_round = !found || (cfg->continue_run && G >= round_start + cfg->steps);
    if (new_round) round_start = found ? G : 0;
    for (int a = 0; a < n; a++) {
        int64_t e = tl_store_find(st, map->names[a]);
        const tl_store_meta *m = e >= 0 ? tl_store_meta_at(st, e) : NULL;
        int take = new_round ? !m || m->n_examples != map->n_examples[a] : m && m->round == round_start;
        if (!take) continue;
        if (new_round) {
            if (!m) (*n_new)++;
            TL_TRY(tl_store_add(st, map->names[a], &e, err));
            tl_store_set_round(st, e, round_start, map->n_examples[a]);
        }
        (*idx)[(*n_round)++] = a;
    }
    R->round_start = round_start;
    R->start = found ? G : 0;
    R->end = *n_round ? round_start + cfg->steps : R->start;
    R->nothing_new = found && new_round && *n_round == 0;
    return TL_OK;
}

/* The checkpoint a store run goes on from (train.resume): *found = 0 for none. */
static tl_status find_store_checkpoint(tl_run *R, char *ckpt, int *found, tl_error *err) {
    const tl_config *cfg = R->cfg;
    tl_status s = TL_OK;
    *found = 0;
    if (cfg->resume == TL_RESUME_AUTO) {
        s = tl_checkpoint_latest(cfg->output_dir, ckpt, TL_PATH_MAX, found, err);
    } else if (cfg->resume == TL_RESUME_PATH) {
        snprintf(ckpt, TL_PATH_MAX, "%s", cfg->resume_path);
        *found = 1;
    }
    if (!s && *found && cfg->resume == TL_RESUME_PATH) { /* only the newest: restoring an older one would drop the
                                                            store records the later checkpoints use */
        char latest[TL_PATH_MAX];
        int any = 0;
        s = tl_checkpoint_latest(cfg->output_dir, latest, sizeof latest, &any, err);
        char rp1[TL_PATH_MAX], rp2[TL_PATH_MAX];
        if (!s && (!any || !realpath(ckpt, rp1) || !realpath(latest, rp2) || strcmp(rp1, rp2) != 0))
            s = tl_fail(err, TL_ERR_INPUT, "train.resume: %s: a run with the adapter store resumes from its newest "
                        "checkpoint only (%s), whose store records the older ones share; copy the run directory "
                        "to branch from an older step", ckpt, any ? latest : "none in train.output_dir");
    }
    if (!s && *found && !tl_checkpoint_has_store(ckpt))
        s = tl_fail(err, TL_ERR_INPUT, "%s: a checkpoint of a run without the adapter store: resume it with "
                    "train.store: off, or start over with train.resume: never", ckpt);
    return s;
}

/* Opens this rank's view of the store and fills its index from the checkpoint (or starts it empty). */
static tl_status open_store_at(tl_run *R, const tl_store_layout *L, int found, const char *ckpt, tl_store **out,
                               int64_t *G, int64_t *round_start, tl_error *err) {
    tl_store *st = NULL;
    TL_TRY(tl_store_open_shard(R->cfg->output_dir, L, R->rank, R->world, &st, err));
    tl_status s;
    if (found) {
        char man[TL_PATH_MAX + 32];
        snprintf(man, sizeof man, "%s/%s", ckpt, TL_STORE_MANIFEST);
        s = tl_store_restore(st, man, G, round_start, err);
    } else {
        s = tl_store_start_fresh(st, err);
    }
    if (s) {
        tl_store_close(st);
        return s;
    }
    *out = st;
    return TL_OK;
}

/* The round's adapter map (map indices idx[0..n_round)). With many ranks (user_shard), the round's adapters are
 * shared out by the tokens each will train on (tl_dist_assign_owners, the same on every rank), and R->round_map
 * holds this rank's; R->round_gidx maps them to their index in the round, whose round robin every rank follows.
 * A round of fewer adapters than ranks leaves some ranks none (a run that grows by one user): they take part in
 * the collectives and train nothing. */
static tl_status build_round_maps(tl_run *R, const int32_t *idx, int n_round, tl_error *err) {
    tl_session *S = &R->S;
    char **names = malloc((size_t)n_round * sizeof *names);
    if (!names) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    for (int i = 0; i < n_round; i++) names[i] = S->map.names[idx[i]];
    tl_adapter_map whole;
    tl_status s = train_map_of(R, names, n_round, &whole, err);
    if (s || R->world == 1) {
        free(names);
        if (!s) R->round_map = whole, R->have_round_map = 1;
        return s;
    }
    int64_t *steps = NULL;
    int n_local = 0;
    R->round_gidx = malloc((size_t)n_round * sizeof *R->round_gidx);
    s = R->round_gidx ? count_adapter_steps(R->cfg, n_round, &steps, err)
                      : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    /* names[] now receives this rank's share (whole's strings: the round map copies them) */
    if (!s) s = my_share(R, &whole, steps, R->round_gidx, names, &n_local, err);
    R->n_round = n_round;
    if (!s && n_local > 0) {
        s = train_map_of(R, names, n_local, &R->round_map, err);
        if (!s) R->have_round_map = 1;
    }
    tl_adapter_map_free(&whole);
    free(steps), free(names);
    return s;
}

/* Store mode setup: the pools of K slots, the store and the checkpoint to go on from, the round, its batcher and
 * the resident slots. Runs after the run directory is made (a fresh run's earlier outputs are set aside first). */
static tl_status setup_store_run(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    int n = S->map.n_adapters;
    int K = cfg->adapters_per_step <= 0 || cfg->adapters_per_step >= n ? n : cfg->adapters_per_step;
    TL_TRY(make_pools(S, cfg, S->map.names, K, err));
    tl_store_layout L = {.P = S->pool.P, .rank = S->pool.rank, .n_layers = S->pool.n_layers,
                         .targets = S->pool.targets, .head_dim = S->pool.head_dim};
    char ckpt[TL_PATH_MAX];
    int found = 0;
    int64_t G = 0, round_start = 0;
    tl_status s = TL_OK;
    /* rank 0 decides (it may have just set an earlier run aside); the others follow */
    if (R->rank == 0) TL_TRY(find_store_checkpoint(R, ckpt, &found, err));
    if (R->world > 1) TL_TRY(agree_on_checkpoint(R, &found, ckpt, err));
    /* the store (created when absent) only once the checkpoint to go on from is known to be a store's. Many
     * ranks: rank 0 creates it and removes a crashed run's segments before the others open it and write */
    tl_store *st = NULL;
    if (R->rank == 0) TL_TRY(open_store_at(R, &L, found, ckpt, &st, &G, &round_start, err));
    if (R->world > 1) {
        s = tl_dist_barrier(S->dist, "adapter store opened by rank 0", err);
        if (!s && R->rank > 0) s = open_store_at(R, &L, found, ckpt, &st, &G, &round_start, err);
    }
    if (!s) s = check_store_users(st, &S->map, R->pref ? S->pref_train.path : S->train.path, err);
    int32_t *idx = NULL;
    int n_round = 0, n_new = 0;
    if (!s) s = plan_round(R, st, found, G, round_start, &idx, &n_round, &n_new, err);
    if (!s && n_round > 0) s = build_round_maps(R, idx, n_round, err);
    free(idx);
    if (!s) {
        S->res = calloc(1, sizeof *S->res);
        if (!S->res) s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    }
    if (s) {
        tl_store_close(st);
        return s;
    }
    /* the resident slots take the store; their adapters are the round's (the map's names outlive them) */
    char *const *rnames = R->have_round_map ? R->round_map.names : NULL;
    s = tl_resident_init(S->res, st, &S->pool, S->have_ref ? &S->ref : NULL, S->be, cfg->seed,
                         cfg->adapter_init_from, rnames, R->have_round_map ? R->round_map.n_adapters : 0, err);
    if (s) {
        free(S->res);
        S->res = NULL;
        return s;
    }
    R->ckpt_bytes = 0;
    if (R->nothing_new)
        fprintf(R->ui.out, "train.continue: no user has new data since step %lld (%lld adapter(s) in the store): "
                "nothing to train\n", (long long)G, (long long)tl_store_count(st));
    else if (found && R->start == R->round_start && cfg->continue_run)
        fprintf(R->ui.out, "continuing %s from step %lld: a new round of %lld step(s) for %d adapter(s) (%d new, %d "
                "with new data); %lld others untouched\n", cfg->output_dir, (long long)G, (long long)cfg->steps,
                n_round, n_new, n_round - n_new, (long long)tl_store_count(st) - n_round);
    else if (found)
        fprintf(R->ui.out, "resuming from %s (step %lld)\n", ckpt, (long long)G);
    R->last_checkpoint = found ? G : -1;
    if (R->rank == 0) TL_TRY(tl_metrics_open(&R->metrics, cfg->output_dir, found ? R->start : -1, err));
    if (!R->have_round_map) return TL_OK;
    /* the batcher over the round, cursors and steps from the store, each adapter's schedule over its history */
    const tl_adapter_map *rm = &R->round_map;
    tl_batcher_opts bo = {.examples_per_adapter = cfg->examples_per_adapter,
                          .adapters_per_step = cfg->adapters_per_step,
                          .micro_batch_tokens = cfg->micro_batch_tokens,
                          .max_seq_len = cfg->data_max_seq_len,
                          .seed = cfg->seed};
    if (R->pref) {
        TL_TRY(tl_pref_batcher_init(&S->pref_train, rm, &bo, &S->pref_batcher, err));
        if (R->world > 1) TL_TRY(tl_pref_batcher_set_global(S->pref_batcher, R->round_gidx, R->n_round, err));
    } else {
        TL_TRY(tl_batcher_init(&S->train, rm, &bo, &S->batcher, err));
        if (R->world > 1) TL_TRY(tl_batcher_set_global(S->batcher, R->round_gidx, R->n_round, err));
    }
    R->cursors = R->pref ? tl_pref_batcher_cursors(S->pref_batcher) : tl_batcher_cursors(S->batcher);
    free(R->total_steps);
    R->total_steps = NULL;
    /* the schedule is the whole round's: a rank's adapter a is the round's adapter round_gidx[a] */
    TL_TRY(count_adapter_steps(cfg, R->world > 1 ? R->n_round : rm->n_adapters, &R->total_steps, err));
    for (int a = 0; a < rm->n_adapters; a++) {
        const tl_store_meta *m = tl_store_meta_at(st, S->res->entry[a]);
        R->cursors[a].epoch = m->epoch, R->cursors[a].pos = m->pos;
        /* in place: round_gidx ascends and round_gidx[a] >= a */
        R->total_steps[a] = (R->world > 1 ? R->total_steps[R->round_gidx[a]] : R->total_steps[a]) + m->steps0;
    }
    size_t k = (size_t)S->pool.n_slots;
    R->active_slots = malloc(k * sizeof *R->active_slots);
    R->slot_targets = malloc(k * sizeof *R->slot_targets);
    R->slot_total = calloc(k, sizeof *R->slot_total);
    if (!R->active_slots || !R->slot_targets || !R->slot_total)
        return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    return TL_OK;
}

/* The workspace and the step loop's host buffers. */
static tl_status alloc_step_buffers(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    TL_TRY(tl_session_workspace(S, cfg, err));
    size_t n = (size_t)S->pool.n_slots;
    R->adapter_loss = calloc(n, sizeof(double));
    R->grad_norm = calloc(n, sizeof(float));
    R->lr = calloc(n, sizeof(float));
    R->adam = calloc(n, sizeof *R->adam);
    R->logp = malloc((size_t)cfg->micro_batch_tokens * sizeof(float));
    R->reduce_buf = malloc(n * TL_PSTAT_N * sizeof(double));
    if (!R->adapter_loss || !R->grad_norm || !R->lr || !R->adam || !R->logp || !R->reduce_buf)
        return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    if (!R->pref) return TL_OK;
    size_t max_pairs = (size_t)cfg->micro_batch_tokens; /* pairs per micro-batch, generously */
    R->pref_stats = calloc(n, sizeof *R->pref_stats);
    R->pair_buf = malloc(3 * max_pairs * sizeof(int32_t));
    R->pair_weight = malloc(max_pairs * sizeof(double));
    if (!R->pref_stats || !R->pair_buf || !R->pair_weight) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    if (S->task == TL_TASK_DPO && cfg->task_precompute_ref && tl_pref_needs_reference(S->pref_opts.kind)) {
        tl_ref_cache *rc = &R->ref_cache;
        rc->v = malloc(2 * (size_t)S->pref_train.n_pairs * sizeof(double));
        rc->in = malloc(2 * max_pairs * sizeof(double));
        rc->out = malloc(2 * max_pairs * sizeof(double));
        if (!rc->v || !rc->in || !rc->out)
            return tl_fail(err, TL_ERR_RUNTIME, "out of host memory for the reference cache");
        for (int64_t i = 0; i < 2 * S->pref_train.n_pairs; i++) rc->v[i] = NAN;
    }
    return TL_OK;
}

static void print_banner(const tl_run *R) {
    const tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    fprintf(R->ui.out,
            "tailor: %s on the %s backend, model %s (%d layers, hidden %d, vocab %d), %d adapter(s) of rank %d, "
            "%lld trainable parameters each; activations %.1f MiB\n",
            tl_task_type_names[cfg->task_type], S->be->name, cfg->model_path, S->model.cfg.num_hidden_layers,
            S->model.cfg.hidden_size,
            S->model.cfg.vocab_size, S->pool.n_slots, cfg->adapter_rank, (long long)S->pool.P,
            (double)tl_workspace_bytes(S->ws) / (1 << 20));
    if (R->world > 1)
        fprintf(R->ui.out, "%d ranks (%s, %s), strategy %s%s\n", R->world, S->env.source, tl_dist_transport(S->dist),
                S->data_parallel ? "data_parallel" : "user_shard",
                S->data_parallel ? ": each step's micro-batches are dealt to the ranks, gradients summed per adapter"
                                 : ": each rank trains its own adapters, balanced by tokens");
    if (S->res)
        fprintf(R->ui.out, "adapter store: %lld adapter(s) in %s/store, %d in this round, %d slot(s) in memory "
                "(%.1f MiB of adapter state)\n", (long long)tl_store_count(S->res->store), cfg->output_dir,
                R->world > 1 ? R->n_round : S->res->n,
                S->pool.n_slots, 16.0 * (double)S->pool.P * S->pool.n_slots / (1 << 20));
}

/* Setup: everything the run reads is opened and checked before rank 0 writes the run directory. *R is always
 * initialized, for tl_run_close. */
static tl_status setup_run(tl_run *R, const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    memset(R, 0, sizeof *R);
    R->cfg = cfg, R->ui = *ui, R->world = 1, R->optim = tl_optim_opts_of(cfg);
    /* from the start: a preemption during setup still ends in a checkpoint after the first step */
    install_stop_handlers(&R->old_term, &R->old_usr1);
    R->handlers = 1;
    TL_TRY(setup_inputs(R, err));
    TL_TRY(tl_metrics_sample_init(&R->metrics, R->S.map.names, R->S.map.n_adapters, err)); /* per-adapter curves */
    R->S.local_pool = R->world > 1 && !R->S.data_parallel;
    int store = 0;
    TL_TRY(choose_store(R, &store, err));
    if (R->S.local_pool && !store) TL_TRY(shard_adapters(R, err)); /* with the store: each round's (setup_store_run) */
    R->end = cfg->steps;
    if (store) {
        TL_TRY(connect_and_make_run_dir(R, err));
        TL_TRY(setup_store_run(R, err));
        if (cfg->store_prefetch && R->S.res && R->have_round_map) { /* docs/scale.md: the prefetch */
            R->next_adapters = malloc((size_t)R->S.pool.n_slots * sizeof *R->next_adapters);
            if (!R->next_adapters) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
            TL_TRY(tl_resident_prefetch_start(R->S.res, err));
        }
    } else {
        TL_TRY(setup_batcher_and_pools(R, err));
        /* grpo / rloo: the reward models and the rollout plan, checked before the run directory exists */
        if (R->rl) TL_TRY(tl_rl_run_setup(&R->S, cfg, R->world, &R->rl_run, err));
        TL_TRY(connect_and_make_run_dir(R, err));
        TL_TRY(resume_run(R, err));
    }
    TL_TRY(write_run_config(R, err));
    TL_TRY(alloc_step_buffers(R, err));
    print_banner(R);
    R->kill_after = fault_kill_step(R->rank);
    tl_metrics_start(&R->metrics, R->start, R->end);
    return TL_OK;
}

/* One optimizer step: the step's batch, the active adapters' gradients from its micro-batches (this rank's
 * share of them under data_parallel, then summed over ranks), and AdamW. */
static tl_status train_step(tl_run *R, int64_t step, tl_error *err) {
    tl_session *S = &R->S;
    if (S->res && !R->have_round_map) { /* many ranks: this rank has no adapter in the round */
        R->batch = &R->empty_batch;
        return TL_OK;
    }
    /* the batchers count in adapters; with the store, the pool in slots (tl_resident_remap) */
    const int64_t *adapter_steps = S->res ? S->res->steps : S->pool.steps;
    int64_t round_step = step - R->round_start;
    if (R->pref) {
        tl_pref_batcher_set_adapter_steps(S->pref_batcher, adapter_steps);
        TL_TRY(tl_pref_batcher_next(S->pref_batcher, round_step, &R->pref_batch, err));
        R->batch = R->pref_batch->batch;
    } else {
        tl_batcher_set_adapter_steps(S->batcher, adapter_steps);
        TL_TRY(tl_batcher_next(S->batcher, round_step, &R->batch, err));
    }
    const tl_step_batch *by_adapter = R->batch;
    const int64_t *total_steps = R->total_steps;
    if (S->res) {
        TL_TRY(tl_resident_acquire(S->res, by_adapter->active, by_adapter->n_active, err));
        tl_resident_remap(S->res, R->batch, R->pref ? R->pref_batch : NULL, R->active_slots, R->slot_targets,
                          &R->slot_batch);
        for (int i = 0; i < by_adapter->n_active; i++)
            R->slot_total[R->active_slots[i]] = R->total_steps[by_adapter->active[i]];
        R->batch = &R->slot_batch;
        total_steps = R->slot_total;
        if (R->next_adapters && step + 1 < R->end) { /* the next step's records are read while this one runs */
            int n = R->pref ? tl_pref_batcher_peek(S->pref_batcher, round_step + 1, R->next_adapters, S->pool.n_slots)
                            : tl_batcher_peek(S->batcher, round_step + 1, R->next_adapters, S->pool.n_slots);
            tl_resident_prefetch(S->res, R->next_adapters, n);
        }
    }
    tl_step_batch *B = R->batch;
    if (S->data_parallel && R->world > 1 && B->n_mb < R->world && step == R->start)
        fprintf(R->ui.log, "warning: step %lld has %d micro-batch(es) for %d ranks: some ranks idle (lower "
                "train.micro_batch_tokens or raise train.examples_per_adapter)\n", (long long)step + 1, B->n_mb,
                R->world);
    for (int i = 0; i < B->n_active; i++) {
        int a = B->active[i];
        R->adapter_loss[a] = 0;
        if (R->pref_stats) tl_pref_stats_init(&R->pref_stats[a]);
        S->be->zero(S->be, S->pool.grads + (size_t)a * S->pool.P, S->pool.P * sizeof(float));
    }
    if (R->pref) {
        TL_TRY(pref_step(S, R->cfg, R->pref_batch, B, &R->ref_cache, R->pair_buf, R->pair_weight, R->pref_stats,
                         err));
        for (int i = 0; i < B->n_active; i++) {
            double mean[TL_PREF_N_METRICS];
            tl_pref_stats_mean(&R->pref_stats[B->active[i]], mean);
            R->adapter_loss[B->active[i]] = mean[TL_PREF_M_LOSS];
        }
    } else if (R->rl) {
        TL_TRY(tl_rl_run_step(R->rl_run, S, B, R->adapter_loss, err));
    } else {
        for (int k = 0; k < B->n_mb; k++)
            if (runs_microbatch(S, k))
                TL_TRY(tl_sft_microbatch(&S->model, &S->pool, S->ws, &B->mb[k], R->logp, R->adapter_loss, err));
    }
    if (S->data_parallel) TL_TRY(tl_dist_pool_reduce_grads(S->dist, &S->pool, B->active, B->n_active, step, err));
    TL_TRY(tl_optim_step(&S->pool, S->be, &R->optim, B->active, B->n_active, total_steps, R->grad_norm, R->lr,
                         R->adam, err));
    if (S->res) tl_resident_trained(S->res, by_adapter->active, by_adapter->n_active);
    R->tokens_since_log += B->n_tokens;
    R->truncated += B->n_truncated;
    return TL_OK;
}

/* What one log line reports, summed over ranks. */
typedef struct {
    double loss, gn, lr, cnt, tokens, tok_since, truncated;
    tl_pref_stats all;
    double sample[TL_METRICS_SAMPLE]; /* the sampled adapters' losses (R->metrics' sample) */
    uint8_t sampled[TL_METRICS_SAMPLE]; /* 1: that adapter trained in this step */
} tl_log_sums;

/* The step's log numbers, the same on every rank. data_parallel: each rank holds partial per-adapter sums
 * (loss, preference stats), reduced per adapter first; everything else is replicated, so the scalars need no
 * reduction. user_shard: each rank's numbers are complete for its own adapters and disjoint from the others'. */
static tl_status log_sums(tl_run *R, int64_t step, tl_log_sums *o, tl_error *err) {
    tl_session *S = &R->S;
    const tl_step_batch *B = R->batch;
    double *aloss = R->adapter_loss, *buf = R->reduce_buf;
    const float *gnorm = R->grad_norm, *lrs = R->lr;
    tl_pref_stats *pst = R->pref_stats;
    int64_t tok_since = R->tokens_since_log, truncated = R->truncated;
    int world = tl_dist_world(S->dist);
    char what[64];
    snprintf(what, sizeof what, "metrics of step %lld", (long long)step + 1);
    if (S->data_parallel && world > 1) {
        int k = pst ? TL_PSTAT_N : 1;
        for (int i = 0; i < B->n_active; i++) {
            if (pst)
                tl_pstat_pack(&pst[B->active[i]], buf + (size_t)i * k);
            else
                buf[i] = aloss[B->active[i]];
        }
        TL_TRY(tl_dist_allreduce_f64_host(S->dist, buf, (size_t)B->n_active * k, what, err));
        for (int i = 0; i < B->n_active; i++) {
            int a = B->active[i];
            if (pst) {
                tl_pstat_unpack(buf + (size_t)i * k, &pst[a]);
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
        int j = tl_metrics_sample_index(&R->metrics, S->pool.names[a]);
        if (j >= 0) o->sample[j] = aloss[a], o->sampled[j] = 1;
    }
    o->tokens = (double)B->n_tokens, o->tok_since = (double)tok_since, o->truncated = (double)truncated;
    if (S->data_parallel || world == 1) return TL_OK;
    enum { NV = 7 + TL_PSTAT_N + 2 * TL_METRICS_SAMPLE };
    double v[NV] = {o->loss, o->gn, o->lr, o->cnt, o->tokens, o->tok_since, o->truncated};
    tl_pstat_pack(&o->all, v + 7);
    for (int j = 0; j < TL_METRICS_SAMPLE; j++) /* each sampled adapter trains on one rank at most */
        v[7 + TL_PSTAT_N + 2 * j] = o->sample[j], v[8 + TL_PSTAT_N + 2 * j] = o->sampled[j];
    TL_TRY(tl_dist_allreduce_f64_host(S->dist, v, NV, what, err));
    for (int j = 0; j < TL_METRICS_SAMPLE; j++)
        o->sample[j] = v[7 + TL_PSTAT_N + 2 * j], o->sampled[j] = v[8 + TL_PSTAT_N + 2 * j] > 0.5;
    o->loss = v[0], o->gn = v[1], o->lr = v[2], o->cnt = v[3], o->tokens = v[4], o->tok_since = v[5];
    o->truncated = v[6];
    tl_pstat_unpack(v + 7, &o->all);
    return TL_OK;
}

/* A log step: the step's numbers summed over ranks, into metrics.jsonl and the progress line. */
static tl_status log_step(tl_run *R, int64_t done_steps, tl_error *err) {
    tl_log_sums L;
    TL_TRY(log_sums(R, done_steps - 1, &L, err));
    R->truncated_all = L.truncated;
    tl_step_record rec = {.done_steps = done_steps, .loss = L.loss, .lr = L.lr, .grad_norm = L.gn,
                          .tokens = (int64_t)L.tokens, .truncated = (int64_t)L.truncated, .adapters = (int)L.cnt,
                          .pref = R->pref_stats ? &L.all : NULL, .rss_mib = tl_metrics_rss_mib(),
                          .sample_loss = L.sample, .sample_trained = L.sampled,
                          .extra = R->rl ? tl_rl_run_metrics(R->rl_run, &R->S, R->batch) : NULL};
    if (rec.adapters) rec.loss /= rec.adapters, rec.grad_norm /= rec.adapters, rec.lr /= rec.adapters;
    double t = tl_now_s();
    rec.tokens_per_s = L.tok_since / fmax(t - R->metrics.t_last, 1e-9);
    tl_metrics_step(&R->metrics, &R->ui, &rec, t);
    R->tokens_since_log = 0;
    return TL_OK;
}

/* After step done_steps: its log line when due, the stop vote (a signal on any rank stops every rank after this
 * same step, with a checkpoint: *stopped), the periodic checkpoint and evaluation, and the fault injection. */
static tl_status after_step(tl_run *R, int64_t done_steps, int *stopped, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    const tl_ui *ui = &R->ui;
    if (done_steps % cfg->log_every == 0 || done_steps == R->end || done_steps == R->start + 1)
        TL_TRY(log_step(R, done_steps, err));
    int stop_sig = g_stop_signal;
    if (R->world > 1) {
        char what[64];
        snprintf(what, sizeof what, "stop vote after step %lld", (long long)done_steps);
        TL_TRY(tl_dist_allreduce_max_int_host(S->dist, &stop_sig, 1, what, err));
    }
    if (stop_sig && done_steps < R->end) {
        if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
        TL_TRY(save_run_state(R, done_steps, 1, 0, err));
        fprintf(ui->out, "stopped by %s after step %lld of %lld: checkpoint written; run the same command to "
                "resume (exit code %d)\n",
                stop_sig == SIGUSR1 ? "SIGUSR1" : stop_sig == SIGTERM ? "SIGTERM" : "a signal",
                (long long)done_steps, (long long)R->end, TL_EXIT_PREEMPTED);
        *stopped = 1;
        return TL_OK;
    }
    if (cfg->checkpoint_every > 0 && done_steps % cfg->checkpoint_every == 0 && done_steps < R->end) {
        TL_TRY(save_run_state(R, done_steps, 1, 0, err));
        R->last_checkpoint = done_steps;
    }
    if ((S->have_eval || S->have_pref_eval) && cfg->eval_every > 0 && done_steps % cfg->eval_every == 0 &&
        done_steps < R->end) {
        if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
        /* each rank its own adapters: no gather */
        TL_TRY(tl_session_eval(S, cfg, ui, &R->metrics, done_steps, 0, err));
    }
    if (done_steps == R->kill_after) {
        fflush(NULL);
        raise(SIGKILL);
    }
    return TL_OK;
}

/* Finish: the truncation note, the final checkpoint (unless the last step just wrote one) and the exported
 * adapters in one collection, the final evaluation, the memory line. */
static tl_status finish_run(tl_run *R, tl_error *err) {
    tl_session *S = &R->S;
    const tl_config *cfg = R->cfg;
    const tl_ui *ui = &R->ui;
    if (ui->is_tty && !ui->quiet) fputc('\n', ui->out);
    if (R->truncated_all > 0)
        fprintf(ui->log, "note: %.0f sequence(s) were longer than data.max_seq_len=%d and were truncated (prompt "
                         "dropped from the left)\n",
                R->truncated_all, cfg->data_max_seq_len);
    TL_TRY(save_run_state(R, R->end, R->last_checkpoint != R->end, 1, err));
    if (S->have_eval || S->have_pref_eval) TL_TRY(tl_session_eval(S, cfg, ui, NULL, R->end, 1, err));
    if (R->rl && S->have_prompt_eval) TL_TRY(tl_rl_run_eval(R->rl_run, S, cfg, ui, err));
    if (S->be->mem_stats) {
        size_t now_b = 0, peak_b = 0;
        S->be->mem_stats(S->be, &now_b, &peak_b);
        fprintf(ui->out, "GPU memory: planned %.1f MiB of activations, peak %.1f MiB allocated\n",
                (double)tl_workspace_bytes(S->ws) / (1 << 20), (double)peak_b / (1 << 20));
    }
    if (S->res)
        fprintf(ui->log,
                "adapter store: %lld adapter(s); this run loaded %lld from records (%lld prefetched), "
                "initialized %lld, wrote back %lld: %.1f s of store I/O waited on by the steps and checkpoints (%.1f "
                "s writing back, %.1f s waiting for the I/O thread), %.1f s read and %.1f s written in the "
                "background\n",
                (long long)tl_store_count(S->res->store), (long long)S->res->loads, (long long)S->res->prefetched,
                (long long)S->res->inits, (long long)S->res->writebacks, S->res->io_s, S->res->wb_s, S->res->wait_s,
                tl_resident_read_bg_s(S->res), tl_resident_write_bg_s(S->res));
    fprintf(ui->out, "run directory: %s (metrics.jsonl, checkpoints/, adapters/%s)\n", cfg->output_dir,
            S->have_eval || S->have_pref_eval ? ", eval.json" : S->have_prompt_eval ? ", rl_eval.json" : "");
    return TL_OK;
}

/* A failure with many ranks: the others may be waiting in a collective for this rank, so say what failed, then
 * end every rank (the one sanctioned exit of the library, tl_dist_abort). Returns only when world == 1. */
static void abort_job_on_failure(tl_run *R, tl_status s, const tl_error *err) {
    if (!R->S.dist || tl_dist_world(R->S.dist) <= 1) return;
    restore_stop_handlers(R);
    if (R->ui.is_tty && !R->ui.quiet) fputc('\n', R->ui.out);
    fflush(R->ui.out);
    if (strncmp(err->msg, "rank ", 5) == 0)
        fprintf(stderr, "tailor: error: %s\n", err->msg);
    else
        fprintf(stderr, "tailor: error: rank %d of %d: %s\n", R->S.env.rank, R->S.env.world, err->msg);
    tl_dist_abort(R->S.dist, s == TL_ERR_INPUT ? 2 : 1);
}

/* A whole run. Setup opens and checks every input, shards the adapters over the ranks, connects them, writes
 * the run directory (rank 0) and resumes from a checkpoint; then each step trains (train_step) and is followed
 * by its log line, stop vote, checkpoint, evaluation (after_step); finish writes the final checkpoint, the
 * adapters and the evaluation. */
tl_status tl_train(const tl_config *cfg, const tl_ui *ui, int *stopped, tl_error *err) {
    tl_run R;
    *stopped = 0;
    tl_status s = setup_run(&R, cfg, ui, err);
    for (int64_t step = R.start; !s && !*stopped && step < R.end; step++) {
        s = train_step(&R, step, err);
        if (!s) s = after_step(&R, step + 1, stopped, err);
    }
    if (!s && !*stopped && !R.nothing_new) s = finish_run(&R, err);
    if (s) abort_job_on_failure(&R, s, err);
    tl_run_close(&R);
    return s;
}

