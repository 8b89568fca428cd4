/* tl_submit: `tailor submit CONFIG [--dry-run] [key=value ...]` — a Slurm batch script for a run, handed to sbatch.
 *
 * What submit does: loads the config (overrides applied), checks the cluster section and its agreement with the
 * rest (below), writes the resolved config to <run.output_dir>/submit/config.yaml and the script to
 * <run.output_dir>/submit/job.sbatch (each atomically: a temporary file renamed into place), then runs
 * `sbatch --parsable job.sbatch` and the command prints "submitted job <id>: <script>". --dry-run prints the script on stdout
 * and writes nothing (the script names the config.yaml it would have written). In the resolved config,
 * train.backend auto becomes cpu for a CPU job (cluster.gpus_per_node 0) and cuda for a GPU job, so every rank
 * picks the backend the allocation was made for.
 *
 * The script (a contract, docs/cluster.md; every path and value in it is single-quoted where it needs quotes, a '
 * written as '\'' and a backslash as '\\', which both bash and sbatch's #SBATCH parser read back exactly):
 *   #!/bin/bash and a comment header, then the #SBATCH lines, in this order:
 *     --job-name=<cluster.job_name, else run.name>  --nodes=<cluster.nodes>
 *     --ntasks-per-node=<cluster.tasks_per_node, else cluster.gpus_per_node, else 1>
 *     --gpus-per-node=<n> (gpus_per_node > 0)  --cpus-per-task=<n> (cpus_per_task > 0)
 *     --partition, --account, --time, --mem (each when set)
 *     --chdir=<the absolute working directory of tailor submit: relative paths of the config keep their meaning>
 *     --output=<absolute run dir>/submit/slurm-%j.out  --open-mode=append (a requeued job appends to the same file)
 *     --signal=USR1@<cluster.signal_s> (when > 0; without "B:", so the signal reaches the srun tasks, not the batch
 *       shell: each rank finishes its step, writes a checkpoint and exits 75)
 *     --requeue (cluster.requeue)
 *     then each cluster.sbatch line as "#SBATCH <line>"
 *   body: `set -u`; the cluster.setup lines verbatim (shell, e.g. "module load cuda"); `export KEY='VALUE'` per
 *   cluster.env line; an echo of the job id, restart count and nodes; then
 *   `srun [--mpi=<cluster.mpi>] [--cpus-per-task=<n>] <tailor> train <abs run dir>/submit/config.yaml`; rc=$?.
 *   (--cpus-per-task is repeated because srun of Slurm 22.05 to 23.02 does not inherit it from the allocation.)
 *   On rc 75 (tl_train.h TL_EXIT_PREEMPTED: stopped with a checkpoint) with cluster.requeue: it prints a line,
 *   runs `scontrol requeue "$SLURM_JOB_ID"` and exits 0 (exit 75 if scontrol fails); the job runs again later and
 *   resumes from the latest checkpoint (train.resume auto). Otherwise it exits with rc.
 *   <tailor> is cluster.tailor ("" = the absolute path of the running tailor binary; a relative path with a '/' is
 *   made absolute; a bare name is looked up in the job's PATH).
 *
 * Checks (TL_ERR_INPUT, exit 2, one line naming the key): cluster.time in a Slurm format (M, M:S, H:M:S, D-H,
 * D-H:M, D-H:M:S; INFINITE, UNLIMITED); cluster.mem a number with an optional K/M/G/T suffix; cluster.env lines
 * KEY=VALUE with KEY a shell identifier; cluster.sbatch lines start with "--" and do not set what tailor sets
 * itself (--job-name, --nodes, --ntasks, --ntasks-per-node, --gpus, --gpus-per-node, --cpus-per-task,
 * --partition, --account, --time, --mem, --chdir, --output, --open-mode, --signal, --requeue, --no-requeue; the
 * message names the key to use); no control characters in #SBATCH values, setup or sbatch lines; no backslash in
 * the absolute run directory (Slurm would then not expand %j in --output);
 * train.resume never together with cluster.requeue (a requeued job would start over); cluster.gpus_per_node > 0
 * with train.backend cpu, and a CPU job with train.backend cuda; cluster.mpi none for a CPU job of more than one
 * task (CPU ranks talk over MPI). Without --dry-run also: data.train set, model.path present, data.train a
 * file and an explicit cluster.tailor executable (the job would fail only after waiting in the queue). */
#ifndef TL_SUBMIT_H
#define TL_SUBMIT_H

#include "kernels/tl_status.h"
#include "trainer/config/tl_config.h"

typedef struct {
    char cwd[TL_PATH_MAX];     /* absolute: the job's working directory (--chdir) */
    char run_dir[TL_PATH_MAX]; /* absolute run.output_dir, no trailing slash */
    char config[TL_PATH_MAX];  /* <run_dir>/submit/config.yaml */
    char script[TL_PATH_MAX];  /* <run_dir>/submit/job.sbatch */
    char tailor[TL_PATH_MAX];  /* what srun runs */
} tl_submit_paths;

/* 1 when s is a time limit Slurm's --time accepts (forms above), else 0. */
int tl_slurm_time_valid(const char *s);

/* The checks above that need only the configuration. */
tl_status tl_submit_check(const tl_config *c, tl_error *err);

/* Fills p: cwd must be absolute; self_exe is the running binary's absolute path (used when cluster.tailor is ""). */
tl_status tl_submit_paths_resolve(const tl_config *c, const char *cwd, const char *self_exe, tl_submit_paths *p,
                                  tl_error *err);

/* The resolved configuration written to config.yaml: c with train.backend auto made explicit (see above). */
void tl_submit_job_config(const tl_config *c, tl_config *out);

/* The script's text (malloc'd, NUL-terminated; the caller frees it). c must have passed tl_submit_check. */
tl_status tl_submit_script(const tl_config *c, const tl_submit_paths *p, char **out, tl_error *err);

/* What `tailor submit` was asked (its arguments and messages: trainer/cli/cmd_submit.c). */
typedef struct {
    const char *config;        /* the CONFIG file */
    char *const *overrides;    /* key=value, applied in order */
    int n_overrides;
    int dry_run;               /* make the script only: no file written, no sbatch run */
} tl_submit_opts;

typedef struct {
    char *script;                  /* dry run: the script's text (malloc'd; the caller frees it), else NULL */
    char job_id[64];               /* otherwise: the id sbatch printed */
    char script_path[TL_PATH_MAX]; /* and the script it submitted */
} tl_submit_result;

/* Everything above: loads and checks the config, resolves the paths, then either returns the script (dry run) or
 * writes config.yaml and job.sbatch and runs sbatch. Prints nothing; errors come back in err (TL_ERR_INPUT for
 * a refused config or input, exit 2; TL_ERR_RUNTIME otherwise). */
tl_status tl_submit(const tl_submit_opts *o, tl_submit_result *r, tl_error *err);

#endif
