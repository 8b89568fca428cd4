/* tl_metrics: what a training run reports as it goes: the records of <run>/metrics.jsonl (one per logged step,
 * one per periodic evaluation) and the progress line on ui->out (a self-rewriting line on a terminal, one line
 * per log step otherwise, with the ETA). Only rank 0 holds an open file; the others call the same functions
 * with a closed one (f == NULL) and a quiet ui. */
#ifndef TL_METRICS_H
#define TL_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "trainer/run/tl_train.h"
#include "trainer/step/tl_pref_loss.h"

typedef struct {
    FILE *f;             /* metrics.jsonl, NULL on ranks other than 0 */
    double t0, t_last;   /* run start and last log line (tl_now_s) */
    int64_t start;       /* the step the run (re)started from, for the ETA */
    int64_t steps;       /* train.steps */
} tl_metrics;

/* What one log step reports (means over the step's adapters, summed over ranks). */
typedef struct {
    int64_t done_steps;
    double loss, lr, grad_norm, tokens_per_s;
    int64_t tokens, truncated;
    int adapters;
    const tl_pref_stats *pref; /* dpo / reward: every pair of the step; NULL for sft */
    const char *extra;         /* more fields of the record, a JSON fragment ", \"k\": v, ..." (grpo / rloo); or NULL */
} tl_step_record;

/* Opens metrics.jsonl for appending; on resume (keep_upto >= 0) first drops records past the resumed step so the
 * file tells one story; keep_upto < 0 starts it empty. */
tl_status tl_metrics_open(tl_metrics *M, const char *run_dir, int64_t keep_upto, tl_error *err);
/* Starts the clocks of a run that resumes at step `start` and runs to `steps`. */
void tl_metrics_start(tl_metrics *M, int64_t start, int64_t steps);
void tl_metrics_close(tl_metrics *M);

/* A number for metrics.jsonl: NaN and infinities (a diverged run) become null, as JSON has no other spelling
 * for them and tailor report reads null as "no value". buf: 48 bytes. */
const char *tl_json_num(char *buf, const char *fmt, double v);

/* A log step: its metrics.jsonl record and its progress line. t: tl_now_s() when the step's numbers were read. */
void tl_metrics_step(tl_metrics *M, const tl_ui *ui, const tl_step_record *r, double t);
/* A periodic evaluation's record (sft: loss, base loss, tokens; preference: loss, accuracy, margin). */
void tl_metrics_eval_sft(tl_metrics *M, int64_t step, double loss, double base_loss, int64_t tokens);
void tl_metrics_eval_pref(tl_metrics *M, int64_t step, double loss, double accuracy, double margin);

/* Seconds as "1h02m" or "3m05s". */
void tl_format_eta(char *buf, size_t cap, double seconds);

#endif
