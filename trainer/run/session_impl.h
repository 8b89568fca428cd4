/* session_impl: what the commands of trainer/run/ (tl_train in train.c, tl_eval and tl_export_cmd in
 * commands.c) share: the session that holds a command's backend, model, datasets, pools and ranks open, and the
 * evaluation over data.eval that training and tailor eval both run (session.c). Private to trainer/run/. */
#ifndef TL_SESSION_IMPL_H
#define TL_SESSION_IMPL_H

#include "data/tl_batcher.h"
#include "data/tl_dataset.h"
#include "data/tl_io.h"
#include "data/tl_pref.h"
#include "data/tl_prompt.h"
#include "trainer/config/tl_config.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/model/tl_model.h"
#include "trainer/run/tl_metrics.h"
#include "trainer/run/tl_train.h"
#include "trainer/step/tl_pref_step.h"

typedef struct tl_resident tl_resident; /* resident.h */

/* Everything a command holds open; tl_session_close releases whatever was opened. */
typedef struct {
    tl_task_type task;
    tl_backend *be;
    tl_model model;
    int model_loaded;
    tl_sft_dataset train, eval;     /* sft */
    int have_train, have_eval;
    tl_pref_dataset pref_train, pref_eval_set; /* dpo, reward */
    int have_pref_train, have_pref_eval;
    tl_prompt_dataset prompt_train, prompt_eval; /* grpo, rloo */
    int have_prompt_train, have_prompt_eval;
    tl_adapter_map map;
    int have_map;
    tl_lora_pool pool;
    int have_pool;
    tl_lora_pool ref; /* dpo with adapter.init_from: the frozen starting adapters, the reference policy */
    int have_ref;
    tl_workspace *ws;
    tl_batcher *batcher;
    tl_pref_batcher *pref_batcher;
    tl_pref_scratch *pref_scratch;
    tl_pref_opts pref_opts;
    /* many processes (tl_dist.h) */
    tl_dist_env env;
    tl_dist *dist;   /* NULL outside tl_train */
    int data_parallel; /* dist.strategy data_parallel (else user_shard) */
    /* user_shard with world > 1 ("local pool"): the pool, batcher and optimizer hold this rank's adapters only;
     * local slot a is adapter global_index[a] of the run's n_global adapters (map: all of them, local_map: this
     * rank's) */
    int local_pool;
    int n_global;
    int32_t *global_index; /* [pool.n_slots] */
    tl_adapter_map local_map;
    int have_local_map;
    uint8_t *eval_mine;  /* data_parallel with world > 1: [n_slots] the adapters this rank evaluates */
    int device, threads; /* where this process runs: CUDA device, CPU threads (0 = default) */
    /* The adapter store (train.store, docs/scale.md): the run's adapters live in <run>/store and the pool (and
     * ref) hold the slots a step needs, moved in and out by res. NULL without a store. */
    tl_resident *res;
} tl_session;

void tl_session_close(tl_session *S);
/* The adapter.* keys as pool options, with the dropout and score head the caller gives (a frozen DPO reference
 * has neither). */
tl_lora_opts tl_session_lora_opts(const tl_config *cfg, float dropout, int with_head);
/* Backend, model and the datasets the command needs (data.train when need_train, data.eval when need_eval or
 * when training with one), all validated. */
tl_status tl_session_open(tl_session *S, const tl_config *cfg, int need_train, int need_eval, tl_error *err);
/* adapter.init_from into every slot of p: one PEFT directory for every adapter, or a run's adapters/ directory
 * (index.json) from which each adapter starts from the one of the same name. */
tl_status tl_load_init_from(tl_lora_pool *p, tl_backend *be, const char *from, tl_error *err);
/* The same one slot at a time (a store's pool fills its slots as adapters come in): index.json parsed once. */
typedef struct {
    const char *from;
    char index_path[TL_PATH_MAX + 16];
    struct cJSON *index;           /* NULL: `from` is one PEFT directory for every adapter */
    const struct cJSON *adapters;  /* index's "adapters" array */
} tl_init_from;
tl_status tl_init_from_open(tl_init_from *f, const char *from, tl_error *err);
/* slot's adapter (p->names[slot]) from its init_from source; Adam moments and steps reset (tl_peft_load) */
tl_status tl_init_from_load(const tl_init_from *f, tl_lora_pool *p, tl_backend *be, int slot, tl_error *err);
void tl_init_from_close(tl_init_from *f);
/* The workspace (and for dpo / reward the pair scratch) for micro-batches of train.micro_batch_tokens. */
tl_status tl_session_workspace(tl_session *S, const tl_config *cfg, tl_error *err);
/* Evaluates on data.eval, every rank its share of the adapters. Rank 0 writes eval.json and prints the table
 * when `final`, else appends one record to metrics.jsonl (metrics may be NULL) and prints one line. */
tl_status tl_session_eval(tl_session *S, const tl_config *cfg, const tl_ui *ui, tl_metrics *metrics, int64_t step,
                          int final, tl_error *err);

/* tl_pref_stats as TL_PSTAT_N doubles, for a sum over ranks (counts stay exact below 2^53) */
#define TL_PSTAT_N 9
void tl_pstat_pack(const tl_pref_stats *s, double *d);
void tl_pstat_unpack(const double *d, tl_pref_stats *s);

#endif
