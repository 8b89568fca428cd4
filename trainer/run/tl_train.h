/* tl_train: the commands that run a whole job from a resolved configuration (train, eval, export).
 *
 * They report as they run to the streams the caller hands them in tl_ui: progress and summaries to ui->out
 * (stdout) and warnings to ui->log (stderr). Errors come back as tl_status + tl_error for the CLI (trainer/cli/)
 * to print; only a failing rank of a multi-process job prints its own error line before tl_dist_abort ends the
 * job (kernels/tl_status.h). */
#ifndef TL_TRAIN_H
#define TL_TRAIN_H

#include <stdio.h>

#include "trainer/config/tl_config.h"
#include "trainer/run/tl_export.h"

typedef struct {
    FILE *out;  /* progress lines, tables */
    FILE *log;  /* warnings */
    int is_tty; /* out is a terminal: one self-rewriting progress line */
    int quiet;
} tl_ui;

/* Exit code of a run stopped by SIGTERM or SIGUSR1 after writing its checkpoint: "try again" (sysexits'
 * EX_TEMPFAIL); the sbatch script of tailor submit requeues the job on it. */
#define TL_EXIT_PREEMPTED 75

/* Trains; with many processes (tl_dist.h) this is one rank of the run: ranks agree on every step, rank 0 writes
 * the run directory. SIGTERM and SIGUSR1 make every rank finish its step, write a checkpoint and return TL_OK
 * with *stopped = 1. When world > 1, a failure after the ranks connected is printed (one line, naming the rank)
 * and ends every rank (tl_dist_abort): it never returns then. */
tl_status tl_train(const tl_config *cfg, const tl_ui *ui, int *stopped, tl_error *err);
/* Evaluates the run's latest checkpoint on data.eval (per adapter and the base model). */
tl_status tl_eval(const tl_config *cfg, const tl_ui *ui, tl_error *err);
/* Exports the adapters of a run directory's latest checkpoint, or of a checkpoint directory, in format o->format
 * (o NULL: PEFT) into out_dir (default: <run>/adapters, <run>/adapters-gguf, <run>/merged/<user>,
 * <run>/merged-gguf/<user>), reading one adapter at a time. o->base_model NULL: the run's model.path. */
tl_status tl_export_cmd(const char *run_or_ckpt, const char *out_dir, const tl_export_opts *o, const tl_ui *ui,
                        tl_error *err);

#endif
