/* submit: `tailor submit` — writes a run's Slurm batch script and resolved config, and hands the script to sbatch.
 *
 * The script's shape is a contract (tl_submit.h, docs/cluster.md). It is built as text by one function so that
 * --dry-run shows exactly what would be submitted. Quoting is the one delicate part: the same string must read
 * back unchanged both through bash (the body) and through sbatch's own #SBATCH parser, which also honours quotes
 * but treats a backslash as an escape even inside single quotes; so a backslash is always written outside the
 * quotes, as '\\', which both read as one backslash. */
#include "trainer/dist/tl_submit.h"

#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/tl_text.h"
#include "data/tl_io.h"
#include "trainer/run/tl_train.h"

/* ---- checks ---- */

/* n decimal digits (1..9) at *p, advanced; the value in *v. */
static int digits(const char **p, long *v) {
    const char *s = *p;
    long x = 0;
    int n = 0;
    while (isdigit((unsigned char)*s) && n < 10) x = x * 10 + (*s++ - '0'), n++;
    if (n == 0 || n > 9) return 0;
    *p = s, *v = x;
    return 1;
}

int tl_slurm_time_valid(const char *s) {
    if (!strcmp(s, "INFINITE") || !strcmp(s, "UNLIMITED") || !strcmp(s, "infinite") || !strcmp(s, "unlimited"))
        return 1;
    const char *p = s;
    long f[3];
    int n = 0, days = 0;
    if (!digits(&p, &f[0])) return 0;
    if (*p == '-') { /* D-H[:M[:S]] */
        days = 1;
        p++;
        if (!digits(&p, &f[0])) return 0;
    }
    n = 1;
    while (*p == ':' && n < 3) {
        p++;
        if (!digits(&p, &f[n])) return 0;
        n++;
    }
    if (*p) return 0;
    /* the fields after the first are minutes and seconds; hours after a day count stay below a day */
    for (int i = 1; i < n; i++)
        if (f[i] > 59) return 0;
    if (days && f[0] > 23) return 0;
    return 1;
}

static int mem_valid(const char *s) {
    const char *p = s;
    long v;
    if (!digits(&p, &v)) return 0;
    if (*p && strchr("KMGTkmgt", *p)) p++;
    return *p == 0;
}

static int has_control(const char *s, int allow_tab) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && !(allow_tab && *p == '\t')) || *p == 0x7f) return 1;
    return 0;
}

/* A value as it appears in a message: cut after 60 bytes, control characters shown as '?'. */
static const char *shown(const char *v, char *buf, size_t cap) {
    size_t n = strlen(v), k = 0, lim = n > 60 ? 60 : n;
    if (cap < 66) return "(value)";
    for (size_t i = 0; i < lim; i++) buf[k++] = (unsigned char)v[i] < 0x20 || v[i] == 0x7f ? '?' : v[i];
    if (n > lim) memcpy(buf + k, "...", 3), k += 3;
    buf[k] = 0;
    return buf;
}

/* sbatch options tailor writes itself, and the key that sets each. */
static const struct {
    const char *opt, *use;
} OWN_OPTS[] = {
    {"job-name", "cluster.job_name"},
    {"nodes", "cluster.nodes"},
    {"ntasks", "cluster.nodes and cluster.tasks_per_node"},
    {"ntasks-per-node", "cluster.tasks_per_node"},
    {"gpus", "cluster.gpus_per_node"},
    {"gpus-per-node", "cluster.gpus_per_node"},
    {"cpus-per-task", "cluster.cpus_per_task"},
    {"partition", "cluster.partition"},
    {"account", "cluster.account"},
    {"time", "cluster.time"},
    {"mem", "cluster.mem"},
    {"chdir", "the directory tailor submit runs in (the job runs there)"},
    {"output", "run.output_dir (the output goes to <run.output_dir>/submit/slurm-%j.out)"},
    {"open-mode", "nothing: the output is appended to, so that a requeued job keeps its earlier output"},
    {"signal", "cluster.signal_s"},
    {"requeue", "cluster.requeue"},
    {"no-requeue", "cluster.requeue"},
};
#define N_OWN_OPTS ((int)(sizeof OWN_OPTS / sizeof OWN_OPTS[0]))

/* Refuses --name (as given, nl bytes) when it is, or abbreviates, an option tailor writes itself. */
static tl_status check_reserved(const char *name, size_t nl, const char *line, int i, tl_error *err) {
    char b[80];
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < N_OWN_OPTS; k++) {
            size_t ol = strlen(OWN_OPTS[k].opt);
            if (pass == 0 && (ol != nl || strncmp(name, OWN_OPTS[k].opt, nl) != 0)) continue;
            /* sbatch takes an unambiguous abbreviation of a long option as the option itself */
            if (pass == 1 && (nl >= ol || strncmp(name, OWN_OPTS[k].opt, nl) != 0)) continue;
            return tl_fail(err, TL_ERR_INPUT, "cluster.sbatch entry %d ('%s'): %s--%s is set by tailor itself: use %s",
                           i + 1, shown(line, b, sizeof b), pass ? "abbreviates " : "", OWN_OPTS[k].opt,
                           OWN_OPTS[k].use);
        }
    return TL_OK;
}

/* length of the option name at p (letters, digits, inner '-') */
static size_t opt_name_len(const char *p) {
    size_t n = 0;
    while (isalnum((unsigned char)p[n]) || (p[n] == '-' && n > 0)) n++;
    return n;
}

static tl_status check_sbatch_line(const char *line, int i, tl_error *err) {
    char b[80];
    if (has_control(line, 1))
        return tl_fail(err, TL_ERR_INPUT, "cluster.sbatch entry %d ('%s'): contains a control character", i + 1,
                       shown(line, b, sizeof b));
    /* Every word that looks like a long option is held against the reserved list first, so that a second option
     * smuggled into one entry ("--qos=high --time=9:00") is named for what it would override. */
    for (const char *p = line; *p;) {
        while (isspace((unsigned char)*p)) p++;
        const char *w = p;
        while (*p && !isspace((unsigned char)*p)) p++;
        if (w[0] == '-' && w[1] == '-') {
            size_t wl = opt_name_len(w + 2);
            if (wl) TL_TRY(check_reserved(w + 2, wl, line, i, err));
        }
    }
    /* One entry is exactly one option: --name or --name=value. sbatch's #SBATCH parser splits a line at blanks and
     * honours quotes, so "--qos high" or "--qos=high -t 9:00" would be two options; the value is written quoted. */
    size_t nl = line[0] == '-' && line[1] == '-' ? opt_name_len(line + 2) : 0;
    if (nl == 0)
        return tl_fail(err, TL_ERR_INPUT, "cluster.sbatch entry %d ('%s'): expected an sbatch long option such as "
                       "--qos=high (starting with --)", i + 1, shown(line, b, sizeof b));
    if (line[2 + nl] != 0 && line[2 + nl] != '=')
        return tl_fail(err, TL_ERR_INPUT, "cluster.sbatch entry %d ('%s'): expected exactly one option, --name or "
                       "--name=value (the name of letters, digits and -, then '=' before the value)", i + 1,
                       shown(line, b, sizeof b));
    if (line[2 + nl] == '=')
        for (const char *q = line + 3 + nl; *q; q++)
            if (isspace((unsigned char)*q) && q[1] == '-')
                return tl_fail(err, TL_ERR_INPUT, "cluster.sbatch entry %d ('%s'): expected exactly one option per "
                               "entry (write each option as its own list item)", i + 1, shown(line, b, sizeof b));
    return TL_OK;
}

static tl_status check_env_line(const char *line, int i, tl_error *err) {
    char b[80];
    /* one entry, one export line: the value is quoted, but a line break would still split the script's text */
    if (has_control(line, 1))
        return tl_fail(err, TL_ERR_INPUT, "cluster.env entry %d ('%s'): contains a control character", i + 1,
                       shown(line, b, sizeof b));
    const char *eq = strchr(line, '=');
    if (!eq)
        return tl_fail(err, TL_ERR_INPUT, "cluster.env entry %d ('%s'): expected KEY=VALUE", i + 1,
                       shown(line, b, sizeof b));
    int ok = eq > line && (isalpha((unsigned char)line[0]) || line[0] == '_');
    for (const char *p = line; ok && p < eq; p++) ok = isalnum((unsigned char)*p) || *p == '_';
    if (!ok)
        return tl_fail(err, TL_ERR_INPUT, "cluster.env entry %d ('%s'): '%.*s' is not a variable name (expected "
                       "letters, digits and _, not starting with a digit)", i + 1, shown(line, b, sizeof b),
                       (int)(eq - line > 40 ? 40 : eq - line), line);
    return TL_OK;
}

static int tasks_per_node(const tl_config *c) {
    if (c->cluster_tasks_per_node > 0) return c->cluster_tasks_per_node;
    return c->cluster_gpus_per_node > 0 ? c->cluster_gpus_per_node : 1;
}

tl_status tl_submit_check(const tl_config *c, tl_error *err) {
    char b[80], line[4096];
    if (c->cluster_time[0] && !tl_slurm_time_valid(c->cluster_time))
        return tl_fail(err, TL_ERR_INPUT, "cluster.time: '%s' is not a Slurm time limit (expected minutes, MM:SS, "
                       "HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. 1-12:00:00)", shown(c->cluster_time, b, sizeof b));
    if (c->cluster_mem[0] && !mem_valid(c->cluster_mem))
        return tl_fail(err, TL_ERR_INPUT, "cluster.mem: '%s' is not a Slurm memory size (expected megabytes such as "
                       "64000, or a number with a unit K, M, G or T such as 64G)", shown(c->cluster_mem, b, sizeof b));
    static const struct {
        const char *key;
        size_t off;
    } one_line[] = {
        {"cluster.partition", offsetof(tl_config, cluster_partition)},
        {"cluster.account", offsetof(tl_config, cluster_account)},
        {"cluster.job_name", offsetof(tl_config, cluster_job_name)},
        {"cluster.mpi", offsetof(tl_config, cluster_mpi)},
        {"run.output_dir", offsetof(tl_config, output_dir)},
    };
    for (size_t k = 0; k < sizeof one_line / sizeof one_line[0]; k++) {
        const char *v = (const char *)c + one_line[k].off;
        if (has_control(v, 0))
            return tl_fail(err, TL_ERR_INPUT, "%s: '%s' contains a control character (it goes into an #SBATCH line)",
                           one_line[k].key, shown(v, b, sizeof b));
    }
    if (!c->cluster_job_name[0] && has_control(c->run_name, 0))
        return tl_fail(err, TL_ERR_INPUT, "run.name: '%s' contains a control character (it names the Slurm job; set "
                       "cluster.job_name)", shown(c->run_name, b, sizeof b));
    for (int i = 0; tl_config_list_item(c->cluster_sbatch, i, line, sizeof line); i++)
        TL_TRY(check_sbatch_line(line, i, err));
    for (int i = 0; tl_config_list_item(c->cluster_setup, i, line, sizeof line); i++)
        if (has_control(line, 1))
            return tl_fail(err, TL_ERR_INPUT, "cluster.setup entry %d ('%s'): contains a control character", i + 1,
                           shown(line, b, sizeof b));
    for (int i = 0; tl_config_list_item(c->cluster_env, i, line, sizeof line); i++) TL_TRY(check_env_line(line, i, err));
    if (c->resume == TL_RESUME_NEVER && c->cluster_requeue)
        return tl_fail(err, TL_ERR_INPUT, "train.resume: never together with cluster.requeue true: a requeued job "
                       "would start the run over (use train.resume auto, or cluster.requeue false)");
    if (c->cluster_gpus_per_node > 0 && c->backend == TL_BACKEND_CPU)
        return tl_fail(err, TL_ERR_INPUT, "train.backend: cpu, but cluster.gpus_per_node is %d: a GPU job trains on "
                       "cuda (set train.backend auto or cuda, or cluster.gpus_per_node 0 for a CPU job)",
                       c->cluster_gpus_per_node);
    if (c->cluster_gpus_per_node == 0 && c->backend == TL_BACKEND_CUDA)
        return tl_fail(err, TL_ERR_INPUT, "train.backend: cuda, but cluster.gpus_per_node is 0 (a CPU job): set "
                       "cluster.gpus_per_node, or train.backend cpu");
    long ranks = (long)c->cluster_nodes * tasks_per_node(c);
    if (c->cluster_gpus_per_node == 0 && ranks > 1 && !strcmp(c->cluster_mpi, "none"))
        return tl_fail(err, TL_ERR_INPUT, "cluster.mpi: none cannot connect the %ld ranks of a CPU job, which talk "
                       "over MPI (use pmix)", ranks);
    return TL_OK;
}

/* ---- paths ---- */

/* cwd + "/" + p (p as is when absolute), with "." components and repeated or trailing slashes removed. ".." is
 * kept: resolving it by text would be wrong across symbolic links. */
static tl_status abs_path(const char *cwd, const char *p, char *out, size_t cap, const char *what, tl_error *err) {
    char joined[2 * TL_PATH_MAX + 2];
    int w = p[0] == '/' ? snprintf(joined, sizeof joined, "%s", p) : snprintf(joined, sizeof joined, "%s/%s", cwd, p);
    if (w < 0 || (size_t)w >= sizeof joined) return tl_fail(err, TL_ERR_INPUT, "%s: path too long", what);
    size_t k = 0;
    for (const char *s = joined; *s;) {
        while (*s == '/') s++;
        const char *e = s;
        while (*e && *e != '/') e++;
        size_t l = (size_t)(e - s);
        if (l && !(l == 1 && s[0] == '.')) {
            if (k + 1 + l + 1 > cap) return tl_fail(err, TL_ERR_INPUT, "%s: path too long (at most %zu bytes)", what,
                                                    cap - 1);
            out[k++] = '/';
            memcpy(out + k, s, l);
            k += l;
        }
        s = e;
    }
    if (k == 0) out[k++] = '/';
    out[k] = 0;
    return TL_OK;
}

tl_status tl_submit_paths_resolve(const tl_config *c, const char *cwd, const char *self_exe, tl_submit_paths *p,
                                  tl_error *err) {
    memset(p, 0, sizeof *p);
    if (cwd[0] != '/') return tl_fail(err, TL_ERR_RUNTIME, "submit: the working directory '%s' is not absolute", cwd);
    TL_TRY(abs_path("/", cwd, p->cwd, sizeof p->cwd, "the working directory", err));
    if (has_control(p->cwd, 0))
        return tl_fail(err, TL_ERR_INPUT, "the working directory contains a control character (it goes into the "
                       "#SBATCH --chdir line)");
    TL_TRY(abs_path(p->cwd, c->output_dir, p->run_dir, sizeof p->run_dir, "run.output_dir", err));
    char b[80];
    if (strchr(p->run_dir, '\\'))
        return tl_fail(err, TL_ERR_INPUT, "run.output_dir: '%s' contains a backslash, which turns off Slurm's %%j in "
                       "the job's output file name (<run.output_dir>/submit/slurm-%%j.out)",
                       shown(p->run_dir, b, sizeof b));
    int w1 = snprintf(p->config, sizeof p->config, "%s/submit/config.yaml", p->run_dir);
    int w2 = snprintf(p->script, sizeof p->script, "%s/submit/job.sbatch", p->run_dir);
    if (w1 < 0 || w2 < 0 || (size_t)w1 >= sizeof p->config || (size_t)w2 >= sizeof p->script)
        return tl_fail(err, TL_ERR_INPUT, "run.output_dir: path too long");
    const char *t = c->cluster_tailor[0] ? c->cluster_tailor : self_exe;
    if (!t || !t[0]) return tl_fail(err, TL_ERR_RUNTIME, "cannot find the tailor binary's path: set cluster.tailor");
    if (strchr(t, '/'))
        TL_TRY(abs_path(p->cwd, t, p->tailor, sizeof p->tailor, "cluster.tailor", err));
    else if (strlen(t) < sizeof p->tailor)
        memcpy(p->tailor, t, strlen(t) + 1); /* a bare name: the job's PATH finds it */
    else
        return tl_fail(err, TL_ERR_INPUT, "cluster.tailor: too long");
    return TL_OK;
}

void tl_submit_job_config(const tl_config *c, tl_config *out) {
    *out = *c;
    if (out->backend == TL_BACKEND_AUTO) out->backend = c->cluster_gpus_per_node > 0 ? TL_BACKEND_CUDA : TL_BACKEND_CPU;
}

/* ---- the script ---- */

/* Bytes that need no quotes in bash nor in sbatch's #SBATCH parser. */
static int plain_word(const char *s) {
    if (!*s) return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("_./:=@%+,-", *p)) return 0;
    return 1;
}

static void quoted(FILE *f, const char *s) {
    if (plain_word(s)) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++) {
        if (*p == '\'')
            fputs("'\\''", f);
        else if (*p == '\\')
            fputs("'\\\\'", f);
        else
            fputc(*p, f);
    }
    fputc('\'', f);
}

/* For a comment line: control characters shown as '?'. */
static void comment_text(FILE *f, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
}

static void sbatch_opt(FILE *f, const char *opt, const char *value) {
    fprintf(f, "#SBATCH --%s=", opt);
    quoted(f, value);
    fputc('\n', f);
}

tl_status tl_submit_script(const tl_config *c, const tl_submit_paths *p, char **out, tl_error *err) {
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return tl_fail(err, TL_ERR_RUNTIME, "submit: out of memory for the script");
    char line[4096], num[32];
    int tpn = tasks_per_node(c);
    fputs("#!/bin/bash\n", f);
    fputs("# Slurm batch script written by `tailor submit` for run '", f);
    comment_text(f, c->run_name);
    fputs("' (docs/cluster.md).\n", f);
    fputs("# Exit code 75 means every rank stopped after writing a checkpoint (SIGUSR1 before the time limit, or\n"
          "# SIGTERM); ", f);
    fputs(c->cluster_requeue ? "the job then requeues itself and resumes from that checkpoint"
                             : "submitting this script again resumes from that checkpoint", f);
    fputs(" (train.resume auto).\n", f);
    sbatch_opt(f, "job-name", c->cluster_job_name[0] ? c->cluster_job_name : c->run_name);
    fprintf(f, "#SBATCH --nodes=%d\n", c->cluster_nodes);
    fprintf(f, "#SBATCH --ntasks-per-node=%d\n", tpn);
    if (c->cluster_gpus_per_node > 0) fprintf(f, "#SBATCH --gpus-per-node=%d\n", c->cluster_gpus_per_node);
    if (c->cluster_cpus_per_task > 0) fprintf(f, "#SBATCH --cpus-per-task=%d\n", c->cluster_cpus_per_task);
    if (c->cluster_partition[0]) sbatch_opt(f, "partition", c->cluster_partition);
    if (c->cluster_account[0]) sbatch_opt(f, "account", c->cluster_account);
    if (c->cluster_time[0]) sbatch_opt(f, "time", c->cluster_time);
    if (c->cluster_mem[0]) sbatch_opt(f, "mem", c->cluster_mem);
    sbatch_opt(f, "chdir", p->cwd);
    /* Slurm expands %-patterns in the output name: a literal % of the directory is written %% */
    char outp[2 * TL_PATH_MAX + 32];
    size_t k = 0;
    for (const char *s = p->run_dir; *s && k + 3 < sizeof outp; s++) {
        if (*s == '%') outp[k++] = '%';
        outp[k++] = *s;
    }
    snprintf(outp + k, sizeof outp - k, "/submit/slurm-%%j.out");
    sbatch_opt(f, "output", outp);
    fputs("#SBATCH --open-mode=append\n", f);
    if (c->cluster_signal_s > 0) {
        snprintf(num, sizeof num, "USR1@%d", c->cluster_signal_s);
        sbatch_opt(f, "signal", num);
    }
    if (c->cluster_requeue) fputs("#SBATCH --requeue\n", f);
    for (int i = 0; tl_config_list_item(c->cluster_sbatch, i, line, sizeof line); i++) {
        /* checked by tl_submit_check: --name[=value]; the value quoted so that it stays one word for sbatch */
        char *eq = strchr(line, '=');
        if (!eq) {
            fprintf(f, "#SBATCH %s\n", line);
            continue;
        }
        *eq = 0;
        sbatch_opt(f, line + 2, eq + 1);
    }
    fputs("\nset -u\n", f);
    if (c->cluster_setup[0]) {
        fputs("\n# cluster.setup\n", f);
        for (int i = 0; tl_config_list_item(c->cluster_setup, i, line, sizeof line); i++) fprintf(f, "%s\n", line);
    }
    if (c->cluster_env[0]) {
        fputs("\n# cluster.env\n", f);
        for (int i = 0; tl_config_list_item(c->cluster_env, i, line, sizeof line); i++) {
            char *eq = strchr(line, '=');
            if (!eq) continue; /* refused by tl_submit_check */
            *eq = 0;
            fprintf(f, "export %s=", line);
            quoted(f, eq + 1);
            fputc('\n', f);
        }
    }
    fputs("\necho \"tailor: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}, "
          "$(date)\"\n", f);
    fputs("srun ", f);
    if (c->cluster_mpi[0]) {
        fputs("--mpi=", f);
        quoted(f, c->cluster_mpi);
        fputc(' ', f);
    }
    /* Slurm 22.05 to 23.02: srun no longer inherits the allocation's --cpus-per-task, so a task would be bound to
     * one core unless srun is told again */
    if (c->cluster_cpus_per_task > 0) fprintf(f, "--cpus-per-task=%d ", c->cluster_cpus_per_task);
    quoted(f, p->tailor);
    fputs(" train ", f);
    quoted(f, p->config);
    fputs("\nrc=$?\n", f);
    fprintf(f, "if [ \"$rc\" -eq %d ]; then\n", TL_EXIT_PREEMPTED);
    if (c->cluster_requeue) {
        fputs("  echo \"tailor: the run stopped at a checkpoint (exit 75): requeueing job ${SLURM_JOB_ID}\"\n"
              "  if scontrol requeue \"$SLURM_JOB_ID\"; then\n"
              "    exit 0\n"
              "  fi\n"
              "  echo \"tailor: scontrol requeue failed; submit the script again to resume\" >&2\n", f);
    } else {
        fputs("  echo \"tailor: the run stopped at a checkpoint (exit 75); submit the script again to resume "
              "(cluster.requeue is false)\"\n", f);
    }
    fputs("fi\nexit \"$rc\"\n", f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(buf);
        return tl_fail(err, TL_ERR_RUNTIME, "submit: out of memory for the script");
    }
    *out = buf;
    return TL_OK;
}

/* ---- the submission ---- */

/* The first executable regular file called name in PATH, into out; 0 when there is none. */
static int find_in_path(const char *name, char *out, size_t cap) {
    const char *path = getenv("PATH");
    if (!path) path = "/usr/bin:/bin";
    for (const char *s = path;;) {
        const char *e = strchr(s, ':');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        int w = l ? snprintf(out, cap, "%.*s/%s", (int)l, s, name) : snprintf(out, cap, "./%s", name);
        struct stat st;
        if (w > 0 && (size_t)w < cap && stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 1;
        if (!e) return 0;
        s = e + 1;
    }
}

/* Checks the job would not fail at its start for want of an input (it may have waited hours in the queue). */
static tl_status preflight(const tl_config *c, const tl_submit_paths *p, tl_error *err) {
    char b[80];
    if (!c->data_train[0])
        return tl_fail(err, TL_ERR_INPUT, "data.train: not set (tailor train needs it; the job would fail at its "
                       "start)");
    if (!tl_is_dir(c->model_path) && !tl_is_file(c->model_path)) /* an HF directory or a .gguf file */
        return tl_fail(err, TL_ERR_INPUT, "model.path: '%s' does not exist", shown(c->model_path, b, sizeof b));
    if (!tl_is_file(c->data_train))
        return tl_fail(err, TL_ERR_INPUT, "data.train: '%s' is not a file", shown(c->data_train, b, sizeof b));
    if (c->data_eval[0] && !tl_is_file(c->data_eval))
        return tl_fail(err, TL_ERR_INPUT, "data.eval: '%s' is not a file", shown(c->data_eval, b, sizeof b));
    if (strchr(p->tailor, '/') && (!tl_is_file(p->tailor) || access(p->tailor, X_OK) != 0))
        return tl_fail(err, TL_ERR_INPUT, "cluster.tailor: '%s' is not an executable file",
                       shown(p->tailor, b, sizeof b));
    return TL_OK;
}

/* Reads what is ready on fd into buf (at most cap - 1 bytes kept, the rest drained); 0 at end of file. */
static int drain(int fd, char *buf, size_t cap, size_t *n) {
    char tmp[4096];
    ssize_t r = read(fd, tmp, sizeof tmp);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
    if (r <= 0) return 0;
    size_t take = (size_t)r;
    if (*n + take > cap - 1) take = cap - 1 - *n;
    memcpy(buf + *n, tmp, take);
    *n += take;
    buf[*n] = 0;
    return 1;
}

/* Runs `sbatch --parsable script` and returns the job id it printed. */
static tl_status run_sbatch(const char *sbatch, const char *script, char *job_id, size_t cap, tl_error *err) {
    int po[2], pe[2];
    if (pipe(po) != 0) return tl_fail(err, TL_ERR_RUNTIME, "submit: pipe: %s", strerror(errno));
    if (pipe(pe) != 0) {
        close(po[0]), close(po[1]);
        return tl_fail(err, TL_ERR_RUNTIME, "submit: pipe: %s", strerror(errno));
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(po[0]), close(po[1]), close(pe[0]), close(pe[1]);
        return tl_fail(err, TL_ERR_RUNTIME, "submit: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        if (dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0) _exit(127);
        close(po[0]), close(po[1]), close(pe[0]), close(pe[1]);
        char *const argv[] = {(char *)"sbatch", (char *)"--parsable", (char *)script, NULL};
        execv(sbatch, argv);
        dprintf(2, "cannot run %s: %s\n", sbatch, strerror(errno));
        _exit(127);
    }
    close(po[1]), close(pe[1]);
    char out[4096] = "", errb[4096] = "";
    size_t no = 0, ne = 0;
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            if (!drain(fds[i].fd, i ? errb : out, 4096, i ? &ne : &no)) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0) close(fds[i].fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return tl_fail(err, TL_ERR_RUNTIME, "submit: waitpid: %s", strerror(errno));
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (code != 0) {
        char *nl = strchr(errb, '\n');
        if (nl) *nl = 0;
        return tl_fail(err, TL_ERR_RUNTIME, "sbatch failed (exit %d): %s (the script is %s)", code,
                       errb[0] ? errb : "(no message)", script);
    }
    /* --parsable prints "<id>" or "<id>;<cluster>" */
    size_t l = 0;
    while (l < no && isdigit((unsigned char)out[l])) l++;
    if (l == 0 || l >= cap || (l < no && out[l] != ';' && out[l] != '\n' && out[l] != '\r'))
        return tl_fail(err, TL_ERR_RUNTIME, "sbatch succeeded but printed '%.60s', not a job id", out);
    memcpy(job_id, out, l);
    job_id[l] = 0;
    return TL_OK;
}

tl_status tl_submit(const tl_submit_opts *o, tl_submit_result *r, tl_error *err) {
    tl_config c, job;
    tl_submit_paths p;
    char cwd[TL_PATH_MAX], self[TL_PATH_MAX], sbatch[TL_PATH_MAX];
    char *script = NULL;
    memset(r, 0, sizeof *r);
    tl_status s = tl_config_load(o->config, o->overrides, o->n_overrides, &c, err);
    if (!s) s = tl_submit_check(&c, err);
    if (!s && !getcwd(cwd, sizeof cwd))
        s = tl_fail(err, TL_ERR_RUNTIME, "submit: cannot get the working directory: %s", strerror(errno));
    if (!s) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        self[n > 0 ? n : 0] = 0;
        s = tl_submit_paths_resolve(&c, cwd, self, &p, err);
    }
    if (!s && !o->dry_run) s = preflight(&c, &p, err);
    if (!s && !o->dry_run && !find_in_path("sbatch", sbatch, sizeof sbatch))
        s = tl_fail(err, TL_ERR_INPUT, "submit: sbatch is not in PATH (is this a Slurm login node?); tailor submit "
                    "%s --dry-run prints the job script instead", o->config);
    if (!s) {
        tl_submit_job_config(&c, &job);
        s = tl_submit_script(&job, &p, &script, err);
    }
    if (!s && o->dry_run) {
        r->script = script;
        return TL_OK;
    }
    char dir[TL_PATH_MAX + 16];
    if (!s) {
        snprintf(dir, sizeof dir, "%s/submit", p.run_dir);
        s = tl_mkdir_p(dir, err);
    }
    if (!s) s = tl_config_write_file(&job, p.config, err);
    if (!s) s = tl_write_file_atomic(p.script, script, strlen(script), err);
    free(script);
    if (!s) s = run_sbatch(sbatch, p.script, r->job_id, sizeof r->job_id, err);
    if (!s) snprintf(r->script_path, sizeof r->script_path, "%s", p.script);
    return s;
}
