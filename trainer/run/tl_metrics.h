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

/* The sampled adapters whose own losses metrics.jsonl records: at most this many. */
#define TL_METRICS_SAMPLE 16

typedef struct {
    FILE *f;             /* metrics.jsonl, NULL on ranks other than 0 */
    double t0, t_last;   /* run start and last log line (tl_now_s) */
    int64_t start;       /* the step the run (re)started from, for the ETA */
    int64_t steps;       /* train.steps */
    /* the sample (tl_metrics_sample_init): the TL_METRICS_SAMPLE adapters of smallest tl_metrics_name_hash,
     * in that order; the same on every rank, in every run over the same adapters, and after a resume */
    int n_sample;
    uint64_t sample_hash[TL_METRICS_SAMPLE];
    char *sample_name[TL_METRICS_SAMPLE];
} tl_metrics;

/* What one log step reports (means over the step's adapters, summed over ranks). */
typedef struct {
    int64_t done_steps;
    double loss, lr, grad_norm, tokens_per_s;
    int64_t tokens, truncated;
    int adapters;
    const tl_pref_stats *pref; /* dpo / reward: every pair of the step; NULL for sft */
    double rss_mib;            /* the writing process's resident memory (tl_metrics_rss_mib), NaN: unknown */
    /* [M->n_sample] or NULL: the step's loss of each sampled adapter, in sample order; NaN for one that did not
     * train in this step (no record is written for it) */
    const double *sample_loss;
    const uint8_t *sample_trained; /* [M->n_sample]: 1 if the sampled adapter trained in this step */
    const char *extra;         /* more fields of the record, a JSON fragment ", \"k\": v, ..." (grpo / rloo); or NULL */
} tl_step_record;

/* Opens metrics.jsonl for appending; on resume (keep_upto >= 0) first drops records past the resumed step so the
 * file tells one story; keep_upto < 0 starts it empty. */
tl_status tl_metrics_open(tl_metrics *M, const char *run_dir, int64_t keep_upto, tl_error *err);
/* Starts the clocks of a run that resumes at step `start` and runs to `steps`. */
void tl_metrics_start(tl_metrics *M, int64_t start, int64_t steps);
/* Closes the file and frees the sample. */
void tl_metrics_close(tl_metrics *M);

/* The sample of adapters whose losses are recorded: the (up to) TL_METRICS_SAMPLE names of smallest hash among
 * names[0..n) (ties by name; duplicates count once). O(n) once, at setup. */
tl_status tl_metrics_sample_init(tl_metrics *M, char *const *names, int n, tl_error *err);
/* The name's position in the sample, or -1. */
int tl_metrics_sample_index(const tl_metrics *M, const char *name);
/* 64-bit hash of an adapter name (FNV-1a with a final mix), fixed across versions: it picks the sample. */
uint64_t tl_metrics_name_hash(const char *name);
/* This process's resident memory in MiB from /proc/self/statm; NaN where it cannot be read. */
double tl_metrics_rss_mib(void);

/* A number for metrics.jsonl: NaN and infinities (a diverged run) become null, as JSON has no other spelling
 * for them and tailor report reads null as "no value". buf: 48 bytes. */
const char *tl_json_num(char *buf, const char *fmt, double v);

/* A log step: its metrics.jsonl record, then one {"step", "adapter", "adapter_loss"} record per sampled adapter
 * that trained in the step, and its progress line. t: tl_now_s() when the step's numbers were read. */
void tl_metrics_step(tl_metrics *M, const tl_ui *ui, const tl_step_record *r, double t);
/* A periodic evaluation's record (sft: loss, base loss, tokens; preference: loss, accuracy, margin). */
void tl_metrics_eval_sft(tl_metrics *M, int64_t step, double loss, double base_loss, int64_t tokens);
void tl_metrics_eval_pref(tl_metrics *M, int64_t step, double loss, double accuracy, double margin);

/* Seconds as "1h02m" or "3m05s". */
void tl_format_eta(char *buf, size_t cap, double seconds);

#endif
