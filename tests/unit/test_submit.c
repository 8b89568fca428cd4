/* test_submit: the pieces of `tailor submit` that need no Slurm (tl_submit.h).
 *
 * Slurm time formats; every check of tl_submit_check fails with TL_ERR_INPUT and a message naming the key, and
 * good configurations pass; path resolution; the whole script text for a GPU and a CPU configuration (the
 * contract of docs/cluster.md, line by line); and quoting: random strings with quotes, backslashes, blanks, '#',
 * '$' and UTF-8 put into the job name, the partition and an environment value must read back unchanged through
 * a model of sbatch's #SBATCH argument parser and a model of bash's word quoting. (tests/e2e/submit_dry_run.sh
 * checks the same with the real bash, tests/e2e/slurm_submit.sh with the real sbatch.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/lib/tl_check.h"
#include "tests/lib/tl_rng_splitmix.h"
#include "trainer/dist/tl_submit.h"

/* A config from overrides on top of the defaults (model.path is required). */
static tl_status load(const char *const *ov, int n, tl_config *c, tl_error *err) {
    char *all[32];
    all[0] = (char *)"model.path=/models/m";
    for (int i = 0; i < n; i++) all[i + 1] = (char *)ov[i];
    return tl_config_load(NULL, all, n + 1, c, err);
}

static void test_time(void) {
    const char *good[] = {"0", "30", "90", "30:00", "120:30", "1:00:00", "48:00:00", "1-0", "2-12", "1-12:30",
                          "1-23:59:59", "10-00:00:00", "INFINITE", "UNLIMITED"};
    const char *bad[] = {"", "1h", "1:2:3:4", "1-24", "1-12:60", "1:60", "0:00:60", "-5", "1-", ":30", "30:",
                         "1 :00", "1.5", "1--2", "2-3-4", "1:-2", "unlimited2", "1234567890"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK(tl_slurm_time_valid(good[i]), "'%s' rejected", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!tl_slurm_time_valid(bad[i]), "'%s' accepted", bad[i]);
}

static void test_checks(void) {
    static const struct {
        const char *ov[3];
        const char *key; /* NULL: must pass */
    } cases[] = {
        {{"cluster.time=2h"}, "cluster.time"},
        {{"cluster.time=1-12:00:00"}, NULL},
        {{"cluster.mem=lots"}, "cluster.mem"},
        {{"cluster.mem=64G"}, NULL},
        {{"cluster.env=[NOEQUALS]"}, "cluster.env"},
        {{"cluster.env=[1BAD=x]"}, "cluster.env"},
        {{"cluster.env=[BAD-NAME=x]"}, "cluster.env"},
        {{"cluster.env=[=x]"}, "cluster.env"},
        {{"cluster.env=[GOOD_1=a b, _X=]"}, NULL},
        {{"cluster.sbatch=[-N 2]"}, "cluster.sbatch"},
        {{"cluster.sbatch=[qos=high]"}, "cluster.sbatch"},
        {{"cluster.sbatch=[--nodes=2]"}, "cluster.nodes"},
        {{"cluster.sbatch=[--qos=high, --ntasks=4]"}, "cluster.tasks_per_node"},
        {{"cluster.sbatch=[--output=x.out]"}, "run.output_dir"},
        {{"cluster.sbatch=[--signal=B:USR1@60]"}, "cluster.signal_s"},
        {{"cluster.sbatch=[--time 10]"}, "cluster.time"},
        {{"cluster.sbatch=[--job=x]"}, "cluster.job_name"},
        {{"cluster.sbatch=[--no-requeue]"}, "cluster.requeue"},
        {{"cluster.sbatch=[--gpus=8]"}, "cluster.gpus_per_node"},
        {{"cluster.sbatch=[--qos=high, --exclusive, --mem-per-cpu=4G, --gpus-per-task=1, --time-min=10]"}, NULL},
        {{"cluster.sbatch=[\"--comment=a\\tb\"]"}, NULL},
        {{"cluster.sbatch=[\"--comment=a\\rb\"]"}, "cluster.sbatch"},
        /* one entry is one option: a second one smuggled in is refused, and named when it is reserved */
        {{"cluster.sbatch=[--qos=high --time=9:00]"}, "cluster.time"},
        {{"cluster.sbatch=[--qos=high --ntasks=64]"}, "cluster.tasks_per_node"},
        {{"cluster.sbatch=[\"--qos=high\\t--nodes=64\"]"}, "cluster.nodes"},
        {{"cluster.sbatch=[--qos=high -t 9:00]"}, "cluster.sbatch entry 1"},
        {{"cluster.sbatch=[--qos high]"}, "cluster.sbatch entry 1"},
        {{"cluster.sbatch=[--exclusive, --qos=a -N 4]"}, "cluster.sbatch entry 2"},
        {{"cluster.sbatch=[\"--qos='high' --x\"]"}, "cluster.sbatch entry 1"},
        {{"cluster.sbatch=[\"--comment=x\\r--time=5\"]"}, "cluster.sbatch entry 1"},
        {{"cluster.sbatch=[\"--qos=\\\"a\\\"\"]"}, NULL},
        {{"cluster.sbatch=[--qos=a;b]"}, NULL},
        {{"cluster.sbatch=[--comment=two words]"}, NULL},
        {{"cluster.env=[\"X=a\\x1bb\"]"}, "cluster.env entry 1"},
        {{"cluster.setup=[\"module load x\\x01\"]"}, "cluster.setup"},
        {{"cluster.partition=\"gpu\\n\""}, "cluster.partition"},
        {{"train.resume=never"}, "train.resume"},
        {{"train.resume=never", "cluster.requeue=false"}, NULL},
        {{"cluster.gpus_per_node=4", "train.backend=cpu"}, "train.backend"},
        {{"cluster.gpus_per_node=4", "train.backend=auto"}, NULL},
        {{"train.backend=cuda"}, "train.backend"},
        {{"cluster.tasks_per_node=2", "cluster.mpi=none"}, "cluster.mpi"},
        {{"cluster.tasks_per_node=2", "cluster.mpi=none", "cluster.gpus_per_node=2"}, NULL},
        {{"cluster.mpi=none"}, NULL}, /* one rank needs no MPI */
        {{"cluster.tasks_per_node=2", "cluster.mpi=~"}, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int n = 0;
        while (n < 3 && cases[i].ov[n]) n++;
        tl_config c;
        tl_error err = {0};
        if (load(cases[i].ov, n, &c, &err) != TL_OK) {
            CHECK(0, "case %zu (%s): the config does not load: %s", i, cases[i].ov[0], err.msg);
            continue;
        }
        tl_status s = tl_submit_check(&c, &err);
        if (!cases[i].key) {
            CHECK(s == TL_OK, "case %zu (%s): unexpected error: %s", i, cases[i].ov[0], err.msg);
        } else {
            CHECK(s == TL_ERR_INPUT, "case %zu (%s): expected TL_ERR_INPUT, got %d", i, cases[i].ov[0], (int)s);
            CHECK(strstr(err.msg, cases[i].key) != NULL, "case %zu (%s): message does not name %s: %s", i,
                  cases[i].ov[0], cases[i].key, err.msg);
            CHECK(!strchr(err.msg, '\n'), "case %zu: message has a newline", i);
        }
    }
}

static void test_paths(void) {
    tl_config c;
    tl_error err = {0};
    const char *ov[] = {"run.output_dir=./runs//x/"};
    CHECK_OK(load(ov, 1, &c, &err), err);
    tl_submit_paths p;
    CHECK_OK(tl_submit_paths_resolve(&c, "/a/b/", "/opt/bin/tailor", &p, &err), err);
    CHECK(!strcmp(p.cwd, "/a/b"), "cwd %s", p.cwd);
    CHECK(!strcmp(p.run_dir, "/a/b/runs/x"), "run_dir %s", p.run_dir);
    CHECK(!strcmp(p.config, "/a/b/runs/x/submit/config.yaml"), "config %s", p.config);
    CHECK(!strcmp(p.script, "/a/b/runs/x/submit/job.sbatch"), "script %s", p.script);
    CHECK(!strcmp(p.tailor, "/opt/bin/tailor"), "tailor %s", p.tailor);
    snprintf(c.output_dir, sizeof c.output_dir, "/r/./s/../t/");
    snprintf(c.cluster_tailor, sizeof c.cluster_tailor, "bin/tailor");
    CHECK_OK(tl_submit_paths_resolve(&c, "/", "/x", &p, &err), err);
    CHECK(!strcmp(p.run_dir, "/r/s/../t"), "run_dir %s", p.run_dir);
    CHECK(!strcmp(p.tailor, "/bin/tailor"), "tailor %s", p.tailor);
    snprintf(c.cluster_tailor, sizeof c.cluster_tailor, "tailor");
    CHECK_OK(tl_submit_paths_resolve(&c, "/w", "/x", &p, &err), err);
    CHECK(!strcmp(p.tailor, "tailor"), "a bare name must stay for PATH: %s", p.tailor);
    CHECK(tl_submit_paths_resolve(&c, "rel", "/x", &p, &err) != TL_OK);
    snprintf(c.output_dir, sizeof c.output_dir, "a\\b");
    CHECK(tl_submit_paths_resolve(&c, "/w", "/x", &p, &err) == TL_ERR_INPUT && strstr(err.msg, "run.output_dir"),
          "a backslash in the run directory: %s", err.msg);

    tl_config j;
    CHECK(!strcmp(tl_backend_choice_names[c.backend], "auto"));
    tl_submit_job_config(&c, &j);
    CHECK(!strcmp(tl_backend_choice_names[j.backend], "cpu"), "auto for a CPU job: %s", tl_backend_choice_names[j.backend]);
    c.cluster_gpus_per_node = 8;
    tl_submit_job_config(&c, &j);
    CHECK(!strcmp(tl_backend_choice_names[j.backend], "cuda"), "auto for a GPU job: %s",
          tl_backend_choice_names[j.backend]);
    c.backend = TL_BACKEND_CUDA;
    tl_submit_job_config(&c, &j);
    CHECK(!strcmp(tl_backend_choice_names[j.backend], "cuda"));
}

static void expect_script(const tl_config *c, const tl_submit_paths *p, const char *want, const char *what) {
    tl_error err = {0};
    char *s = (char *)"(poison)";
    CHECK_OK(tl_submit_check(c, &err), err);
    if (tl_submit_script(c, p, &s, &err) != TL_OK) {
        CHECK(0, "%s: %s", what, err.msg);
        return;
    }
    /* first differing line, for a readable failure */
    const char *a = s, *b = want;
    int line = 1;
    while (*a && *a == *b) line += *a == '\n', a++, b++;
    CHECK(*a == 0 && *b == 0, "%s: script differs at line %d:\n got: %.80s\nwant: %.80s", what, line, a, b);
    free(s);
}

static void test_script_text(void) {
    tl_config c;
    tl_error err = {0};
    const char *gpu[] = {"run.name=demo", "run.output_dir=runs/demo", "cluster.nodes=2", "cluster.gpus_per_node=8",
                         "cluster.cpus_per_task=12", "cluster.partition=gpu", "cluster.account=proj x",
                         "cluster.time=1-00:00:00", "cluster.mem=500G", "cluster.sbatch=[--qos=high, --exclusive]",
                         "cluster.setup=[module load cuda/12.4]", "cluster.env=[NCCL_DEBUG=WARN, \"MSG=it's $1\"]"};
    CHECK_OK(load(gpu, 12, &c, &err), err);
    tl_submit_paths p;
    CHECK_OK(tl_submit_paths_resolve(&c, "/home/u/work", "/opt/tailor/bin/tailor", &p, &err), err);
    expect_script(&c, &p,
                  "#!/bin/bash\n"
                  "# Slurm batch script written by `tailor submit` for run 'demo' (docs/cluster.md).\n"
                  "# Exit code 75 means every rank stopped after writing a checkpoint (SIGUSR1 before the time limit, "
                  "or\n"
                  "# SIGTERM); the job then requeues itself and resumes from that checkpoint (train.resume auto).\n"
                  "#SBATCH --job-name=demo\n"
                  "#SBATCH --nodes=2\n"
                  "#SBATCH --ntasks-per-node=8\n"
                  "#SBATCH --gpus-per-node=8\n"
                  "#SBATCH --cpus-per-task=12\n"
                  "#SBATCH --partition=gpu\n"
                  "#SBATCH --account='proj x'\n"
                  "#SBATCH --time=1-00:00:00\n"
                  "#SBATCH --mem=500G\n"
                  "#SBATCH --chdir=/home/u/work\n"
                  "#SBATCH --output=/home/u/work/runs/demo/submit/slurm-%j.out\n"
                  "#SBATCH --open-mode=append\n"
                  "#SBATCH --signal=USR1@90\n"
                  "#SBATCH --requeue\n"
                  "#SBATCH --qos=high\n"
                  "#SBATCH --exclusive\n"
                  "\n"
                  "set -u\n"
                  "\n"
                  "# cluster.setup\n"
                  "module load cuda/12.4\n"
                  "\n"
                  "# cluster.env\n"
                  "export NCCL_DEBUG=WARN\n"
                  "export MSG='it'\\''s $1'\n"
                  "\n"
                  "echo \"tailor: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on "
                  "${SLURM_JOB_NODELIST:-?}, $(date)\"\n"
                  "srun --mpi=pmix --cpus-per-task=12 /opt/tailor/bin/tailor train "
                  "/home/u/work/runs/demo/submit/config.yaml\n"
                  "rc=$?\n"
                  "if [ \"$rc\" -eq 75 ]; then\n"
                  "  echo \"tailor: the run stopped at a checkpoint (exit 75): requeueing job ${SLURM_JOB_ID}\"\n"
                  "  if scontrol requeue \"$SLURM_JOB_ID\"; then\n"
                  "    exit 0\n"
                  "  fi\n"
                  "  echo \"tailor: scontrol requeue failed; submit the script again to resume\" >&2\n"
                  "fi\n"
                  "exit \"$rc\"\n",
                  "GPU job");

    const char *cpu[] = {"run.name=small", "run.output_dir=/scratch/100%/r", "cluster.tasks_per_node=4",
                         "cluster.requeue=false", "cluster.signal_s=0", "cluster.mpi=~", "cluster.job_name=my job",
                         "cluster.tailor=/usr/local/bin/tailor"};
    CHECK_OK(load(cpu, 8, &c, &err), err);
    CHECK_OK(tl_submit_paths_resolve(&c, "/w", "/x", &p, &err), err);
    expect_script(&c, &p,
                  "#!/bin/bash\n"
                  "# Slurm batch script written by `tailor submit` for run 'small' (docs/cluster.md).\n"
                  "# Exit code 75 means every rank stopped after writing a checkpoint (SIGUSR1 before the time limit, "
                  "or\n"
                  "# SIGTERM); submitting this script again resumes from that checkpoint (train.resume auto).\n"
                  "#SBATCH --job-name='my job'\n"
                  "#SBATCH --nodes=1\n"
                  "#SBATCH --ntasks-per-node=4\n"
                  "#SBATCH --chdir=/w\n"
                  "#SBATCH --output=/scratch/100%%/r/submit/slurm-%j.out\n"
                  "#SBATCH --open-mode=append\n"
                  "\n"
                  "set -u\n"
                  "\n"
                  "echo \"tailor: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on "
                  "${SLURM_JOB_NODELIST:-?}, $(date)\"\n"
                  "srun /usr/local/bin/tailor train /scratch/100%/r/submit/config.yaml\n"
                  "rc=$?\n"
                  "if [ \"$rc\" -eq 75 ]; then\n"
                  "  echo \"tailor: the run stopped at a checkpoint (exit 75); submit the script again to resume "
                  "(cluster.requeue is false)\"\n"
                  "fi\n"
                  "exit \"$rc\"\n",
                  "CPU job");
}

/* sbatch's reading of one #SBATCH argument (src/sbatch/opt.c, _get_argument): blanks end it unless quoted, ' and
 * " quote, a backslash escapes the next byte everywhere (also inside quotes), an unquoted # ends the line. */
static char *sbatch_arg(const char *p, char *out) {
    int q = 0, esc = 0;
    char qc = 0;
    size_t k = 0;
    while (*p == ' ' || *p == '\t') p++;
    while ((q || (*p != ' ' && *p != '\t')) && *p && *p != '\n') {
        if (esc) {
            esc = 0;
        } else if (*p == '\\') {
            esc = 1, p++;
            continue;
        } else if (q) {
            if (*p == qc) {
                q = 0, p++;
                continue;
            }
        } else if (*p == '"' || *p == '\'') {
            q = 1, qc = *p++;
            continue;
        } else if (*p == '#') {
            break;
        }
        out[k++] = *p++;
    }
    out[k] = 0;
    return out;
}

/* bash's reading of one word made of the quoting tailor writes: '...' literal, \x outside quotes is x; any other
 * unquoted byte must be one of the plain ones (else bash would expand or split it: returns NULL). */
static char *bash_word(const char *p, char *out) {
    size_t k = 0;
    while (*p && *p != '\n' && *p != ' ') {
        if (*p == '\'') {
            const char *e = strchr(p + 1, '\'');
            if (!e) return NULL;
            memcpy(out + k, p + 1, (size_t)(e - p - 1));
            k += (size_t)(e - p - 1);
            p = e + 1;
        } else if (*p == '\\') {
            if (!p[1]) return NULL;
            out[k++] = p[1];
            p += 2;
        } else {
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=@%+,-", *p)) return NULL;
            out[k++] = *p++;
        }
    }
    out[k] = 0;
    return out;
}

static void random_text(char *s, int n) {
    static const char *pieces[] = {"'", "\\", "\"", " ", "#", "$", "`", "!", "*", "?", "~", "%", "=", ",", "\t",
                                   "\xc3\xa9", "\xe2\x82\xac", "a", "Z", "0", "-", "/", "&", ";", "(", "{", "\\'"};
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        const char *pc = pieces[rnd() % (sizeof pieces / sizeof *pieces)];
        size_t l = strlen(pc);
        memcpy(s + k, pc, l);
        k += l;
    }
    s[k] = 0;
}

static const char *find_line(const char *s, const char *prefix) {
    for (const char *l = s; l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, prefix, strlen(prefix))) return l + strlen(prefix);
    return NULL;
}

static void test_quoting(void) {
    tl_config c;
    tl_error err = {0};
    CHECK_OK(load(NULL, 0, &c, &err), err);
    for (int it = 0; it < 300; it++) {
        char name[200], part[200], val[200], got[400];
        random_text(name, 1 + (int)(rnd() % 20));
        random_text(part, 1 + (int)(rnd() % 20));
        random_text(val, (int)(rnd() % 20));
        if (strchr(name, '\t') || strchr(part, '\t')) { /* #SBATCH values: no control characters */
            for (char *q = name; *q; q++) *q = *q == '\t' ? 'T' : *q;
            for (char *q = part; *q; q++) *q = *q == '\t' ? 'T' : *q;
        }
        snprintf(c.cluster_job_name, sizeof c.cluster_job_name, "%s", name);
        snprintf(c.cluster_partition, sizeof c.cluster_partition, "%s", part);
        snprintf(c.cluster_env, sizeof c.cluster_env, "A=1\nK=%s\n", val);
        /* a cluster.sbatch value is one argument to sbatch whatever it holds (no blank followed by '-') */
        char sval[200];
        snprintf(sval, sizeof sval, "%s", part);
        for (char *q = sval; *q; q++)
            if (q[1] == '-') *q = *q == ' ' ? '_' : *q;
        snprintf(c.cluster_sbatch, sizeof c.cluster_sbatch, "--comment=%s\n", sval);
        tl_submit_paths p;
        CHECK_OK(tl_submit_paths_resolve(&c, "/w", "/t", &p, &err), err);
        CHECK_OK(tl_submit_check(&c, &err), err);
        char *s = NULL;
        if (tl_submit_script(&c, &p, &s, &err) != TL_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        const char *l = find_line(s, "#SBATCH --job-name=");
        CHECK(l != NULL);
        if (l) {
            char arg[400];
            sbatch_arg(l - strlen("--job-name="), arg);
            CHECK(!strncmp(arg, "--job-name=", 11) && !strcmp(arg + 11, name), "job name '%s' read by sbatch as '%s'",
                  name, arg);
            CHECK(bash_word(l, got) && !strcmp(got, name), "job name '%s' read by bash as '%s'", name, got);
        }
        l = find_line(s, "#SBATCH --partition=");
        CHECK(l && !strcmp(sbatch_arg(l, got), c.cluster_partition), "partition '%s' read by sbatch as '%s'",
              c.cluster_partition, got);
        l = find_line(s, "#SBATCH --comment=");
        CHECK(l && !strcmp(sbatch_arg(l, got), sval), "cluster.sbatch value '%s' read by sbatch as '%s'", sval,
              l ? got : "(no line)");
        l = find_line(s, "export K=");
        CHECK(l && bash_word(l, got) && !strcmp(got, val), "env value '%s' read by bash as '%s'", val,
              l ? got : "(no line)");
        free(s);
    }
}

int main(void) {
    unsigned long long seed = (unsigned long long)time(NULL);
    if (getenv("TL_TEST_SEED")) seed = strtoull(getenv("TL_TEST_SEED"), NULL, 10);
    g_rng = seed;
    test_time();
    test_checks();
    test_paths();
    test_script_text();
    test_quoting();
    return tl_check_done_seed("test_submit", seed);
}
