/* `tailor submit CONFIG [--dry-run] [key=value ...]`: its arguments, usage and messages; the submission itself is
 * tl_submit (dist/tl_submit.h). Prints the script (--dry-run) or "submitted job <id>: <script>" on stdout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/cli/cli.h"
#include "trainer/dist/tl_submit.h"

static const char *submit_usage =
    "usage: tailor submit CONFIG [--dry-run] [key=value ...]\n"
    "\n"
    "Writes <run.output_dir>/submit/config.yaml (the resolved config) and <run.output_dir>/submit/job.sbatch (a\n"
    "Slurm batch script that runs `srun tailor train` on the config's cluster section), then submits the script\n"
    "with sbatch. A run stopped by a signal (exit 75) requeues itself and resumes. --dry-run prints the script and\n"
    "writes nothing. See docs/cluster.md.\n";

static int submit_usage_error(const char *fmt, const char *arg) { return tl_cli_usage_error("submit", fmt, arg); }

int tl_cmd_submit(int argc, char **argv) {
    tl_submit_opts o = {0};
    char **ovr = calloc((size_t)argc + 1, sizeof *ovr);
    if (!ovr) {
        fprintf(stderr, "tailor: error: submit: out of memory\n");
        return 1;
    }
    int rc = 0, n_ovr = 0;
    for (int i = 0; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(submit_usage, stdout);
            free(ovr);
            return 0;
        }
        if (!strcmp(a, "--dry-run"))
            o.dry_run = 1;
        else if (a[0] == '-')
            rc = submit_usage_error("submit: unknown option %s", a);
        else if (!o.config)
            o.config = a;
        else if (strchr(a, '='))
            ovr[n_ovr++] = argv[i];
        else
            rc = submit_usage_error("submit: unexpected argument (expected key=value): %s", a);
    }
    if (!rc && !o.config) rc = submit_usage_error("submit: needs a CONFIG file", NULL);
    if (rc) {
        free(ovr);
        return rc;
    }
    o.overrides = ovr, o.n_overrides = n_ovr;
    tl_submit_result r;
    tl_error err = {0};
    tl_status s = tl_submit(&o, &r, &err);
    free(ovr);
    if (s) return tl_cli_fail(&err);
    if (o.dry_run) {
        fputs(r.script, stdout);
        if (fflush(stdout) != 0 || ferror(stdout))
            s = tl_fail(&err, TL_ERR_RUNTIME, "submit: cannot write the script to stdout: %s", strerror(errno));
        free(r.script);
        return s ? tl_cli_fail(&err) : 0;
    }
    printf("submitted job %s: %s\n", r.job_id, r.script_path);
    return fflush(stdout) == 0 ? 0 : 1;
}
