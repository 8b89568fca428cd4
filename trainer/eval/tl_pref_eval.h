/* tl_pref_eval: held-out evaluation of preference adapters (DPO policies or reward models): per adapter, the
 * loss and TRL's reward metrics on its own users' pairs, where rewards/accuracies is the held-out preference
 * accuracy; and, for small pools, the cross matrix of accuracies (every adapter on every adapter's users). */
#ifndef TL_PREF_EVAL_H
#define TL_PREF_EVAL_H

#include <stdio.h>

#include "data/tl_pref.h"
#include "trainer/eval/tl_eval.h"
#include "trainer/step/tl_pref_step.h"

typedef struct {
    int n;
    tl_pref_stats *own; /* [n] each adapter on its own users' pairs */
    double *cross_acc;  /* [n * n_cols] or NULL: accuracy of adapter a on adapter b's users' pairs */
    int n_sample;              /* as tl_eval_result's: a sampled cross matrix above TL_EVAL_CROSS_MAX adapters */
    const int32_t *sample;     /* [n_sample], borrowed */
    double *sample_cross_acc;  /* [n_sample * n_sample], owned */
    int n_cols;
    /* When adapters are shared (adapter.key group or global): each user's pairs under that user's adapter, so
     * that a shared adapter that serves one group and fails another shows it. NULL for adapter.key user. */
    int n_users;
    tl_pref_stats *by_user;          /* [n_users] */
    const char *const *user_names;   /* [n_users], borrowed from the dataset */
    const char *const *user_groups;  /* [n_users] or NULL */
} tl_pref_eval_result;

typedef struct {
    int reward;              /* 1: reward model (score head), 0: DPO policy */
    tl_pref_opts opts;       /* DPO loss */
    double center_rewards;   /* reward model */
    const tl_lora_pool *ref; /* DPO reference pool, NULL: the base model */
} tl_pref_eval_opts;

/* e (tl_eval.h): key, micro-batch, cross matrix and part; with_base is unused (the base model is the DPO
 * reference). part (NULL: everything): only the adapters part->only marks (the others' stats stay empty, n = 0,
 * their cross rows 0 and their users' by_user entries empty); cross columns over part->cols when given. The
 * cross matrix is [n, n_cols]. */
tl_status tl_pref_eval_run(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_pref_scratch *sc,
                           const tl_pref_dataset *ds, const tl_eval_opts *e, const tl_pref_eval_opts *o,
                           tl_pref_eval_result *res, tl_error *err);
void tl_pref_eval_result_free(tl_pref_eval_result *r);
void tl_pref_eval_print(const tl_pref_eval_result *r, const tl_lora_pool *p, FILE *f);
tl_status tl_pref_eval_write_json(const tl_pref_eval_result *r, const tl_lora_pool *p, const char *path,
                                  int64_t step, tl_error *err);

#endif
