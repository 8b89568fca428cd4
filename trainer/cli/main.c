/* tailor: the command-line entry point. Parses the command, runs it, and turns a tl_error into one line on
 * stderr and the exit code (0 success, 1 runtime failure, 2 bad usage or bad input). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_hf_config.h"
#include "kernels/tl_text.h"
#include "trainer/config/tl_config.h"
#include "trainer/cli/cli.h"
#include "data/tl_dataset_build.h"
#include "trainer/eval/tl_generate.h"
#include "trainer/eval/tl_report.h"
#include "trainer/dist/tl_submit.h"
#include "trainer/run/tl_inspect.h"
#include "trainer/model/tl_tinymodel.h"
#include "trainer/run/tl_train.h"

#define TAILOR_VERSION "0.1.0"

static const char *usage =
    "usage: tailor <command> [args]\n"
    "\n"
    "commands:\n"
    "  train CONFIG [key=value ...]       train one LoRA adapter per user (or group, or one global); as many\n"
    "                                     processes under mpirun or srun (docs/cluster.md)\n"
    "  eval CONFIG [key=value ...]        per-adapter loss/perplexity on data.eval vs. the base model\n"
    "  export RUN_OR_CHECKPOINT [--out DIR] [--format peft|gguf|merged|merged-gguf] [--user NAME]\n"
    "         [--dtype f32|f16|bf16] [--shard-mb N]\n"
    "                                     PEFT adapter dirs (default), llama.cpp GGUF LoRAs, or the base\n"
    "                                     model with one user's adapter merged (HF dir or GGUF)\n"
    "  generate --model PATH (--adapter DIR ... | --run DIR --user NAME ... | --run DIR --all-users) [--base]\n"
    "           --prompt TEXT [--chat] [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]\n"
    "                                     KV-cache decoding with one or many adapters side by side\n"
    "  report RUN_DIR [--out FILE]         self-contained HTML page: curves, adapter x user heatmap, eval tables\n"
    "  submit CONFIG [--dry-run] [key=value ...]\n"
    "                                     write the run's Slurm job script (docs/cluster.md) and sbatch it\n"
    "  inspect PATH                       summarize and validate a model dir, .safetensors, dataset, checkpoint\n"
    "  data build IN.jsonl OUT.h5 --model DIR [--kind sft|preference|prompt] [--report-users]\n"
    "                                     tokenize per-user JSONL rows into an HDF5 dataset (docs/data-format.md)\n"
    "  make-model DIR [options]           write a random Llama-family model in HF layout (tests, demos)\n"
    "      --vocab N --hidden N --layers N --heads N --kv-heads N --ffn N --head-dim N\n"
    "      --tie --bias --bf16 --shards N --seed N\n"
    "  version                            print the version\n"
    "\n"
    "key=value overrides any config key by its dotted path, e.g. train.lr=1e-4 (see docs/config.md).\n";

/* the messages of every command: cli.h */
static int fail(const tl_error *e) { return tl_cli_fail(e); }
static int usage_error(const char *fmt, const char *arg) { return tl_cli_usage_error(NULL, fmt, arg); }

static tl_ui make_ui(void) {
    tl_ui ui = {.out = stdout, .log = stderr, .is_tty = isatty(fileno(stdout)), .quiet = 0};
    return ui;
}

static int cmd_train_or_eval(int argc, char **argv, int eval) {
    if (argc < 1) return usage_error("%s needs a CONFIG file", eval ? "eval" : "train");
    for (int i = 1; i < argc; i++)
        if (!strchr(argv[i], '=')) return usage_error("unexpected argument '%s' (expected key=value)", argv[i]);
    tl_config cfg;
    tl_error err = {0};
    if (tl_config_load(argv[0], argv + 1, argc - 1, &cfg, &err)) return fail(&err);
    tl_ui ui = make_ui();
    int stopped = 0;
    if ((eval ? tl_eval(&cfg, &ui, &err) : tl_train(&cfg, &ui, &stopped, &err)) != TL_OK) return fail(&err);
    return stopped ? TL_EXIT_PREEMPTED : 0;
}

static int cmd_export(int argc, char **argv) {
    const char *src = NULL, *out = NULL;
    tl_export_opts o = {.format = TL_EXPORT_PEFT, .dtype = TL_EXPORT_F32};
    int have_dtype = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--out") || !strcmp(a, "--format") || !strcmp(a, "--user") || !strcmp(a, "--dtype") ||
            !strcmp(a, "--shard-mb")) {
            if (i + 1 >= argc) return usage_error("%s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--out")) {
                out = v;
            } else if (!strcmp(a, "--format")) {
                int f = tl_export_format_parse(v);
                if (f < 0) return usage_error("--format '%s' is unknown (expected peft, gguf, merged or merged-gguf)", v);
                o.format = (tl_export_format)f;
            } else if (!strcmp(a, "--user")) {
                o.user = v;
            } else if (!strcmp(a, "--dtype")) {
                int d = tl_export_dtype_parse(v);
                if (d < 0) return usage_error("--dtype '%s' is unknown (expected f32, f16 or bf16)", v);
                o.dtype = (tl_export_dtype)d;
                have_dtype = 1;
            } else {
                char *end = NULL;
                long long mb = strtoll(v, &end, 10);
                if (!*v || *end || mb < 1 || mb > (1ll << 30)) return usage_error("--shard-mb '%s': expected MiB >= 1", v);
                o.shard_bytes = (uint64_t)mb << 20;
            }
        } else if (a[0] == '-' && a[1]) {
            return usage_error("export: unknown option '%s'", a);
        } else if (!src) {
            src = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
    }
    if (!src) return usage_error("%s needs a run directory or a checkpoint directory", "export");
    int merged = o.format == TL_EXPORT_MERGED || o.format == TL_EXPORT_MERGED_GGUF;
    if (merged && !o.user) return usage_error("--format %s needs --user NAME (the adapter to merge)", tl_export_format_name(o.format));
    if (!merged && o.user) return usage_error("--user is for --format merged or merged-gguf, not %s", tl_export_format_name(o.format));
    if (o.format == TL_EXPORT_PEFT && have_dtype && o.dtype != TL_EXPORT_F32)
        return usage_error("--format %s writes F32 only", "peft");
    tl_error err = {0};
    tl_ui ui = make_ui();
    if (tl_export_cmd(src, out, &o, &ui, &err)) return fail(&err);
    return 0;
}

static int cmd_data(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "build") != 0)
        return usage_error("%s: expected 'data build IN.jsonl OUT.h5 --model DIR [--kind sft|preference|prompt]'", "data");
    const char *in = NULL, *out = NULL, *model = NULL, *kind = "sft";
    int report_users = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--report-users")) {
            report_users = 1;
        } else if (!strcmp(argv[i], "--model") || !strcmp(argv[i], "--kind")) {
            if (i + 1 >= argc) return usage_error("data build: %s needs a value", argv[i]);
            if (!strcmp(argv[i], "--model")) model = argv[++i];
            else kind = argv[++i];
        } else if (argv[i][0] == '-') {
            return usage_error("data build: unknown option '%s'", argv[i]);
        } else if (!in) {
            in = argv[i];
        } else if (!out) {
            out = argv[i];
        } else {
            return usage_error("data build: unexpected argument '%s'", argv[i]);
        }
    }
    if (!in || !out) return usage_error("data build: %s", "needs IN.jsonl and OUT.h5");
    if (!model) return usage_error("data build: %s", "needs --model DIR (its tokenizer.json)");
    tl_error err = {0};
    /* progress like train's: a self-rewriting line on a terminal, otherwise a line every 10 s */
    tl_data_build_opts o = {.report = stdout, .report_users = report_users, .progress = stdout,
                            .progress_tty = isatty(fileno(stdout))};
    if (tl_data_build_ex(in, out, model, kind, &o, &err)) return fail(&err);
    return 0;
}

/* the one strict integer reader (tl_text.h): "1e3", "12abc" and values out of [lo, hi] are refused */
static int parse_int_arg(const char *flag, const char *v, long lo, long hi, long *out) {
    char what[64];
    int64_t x = 0; /* set by tl_cli_parse_i64 on success, the only path that reads it */
    snprintf(what, sizeof what, "make-model %s", flag);
    int rc = tl_cli_parse_i64(what, v, lo, hi, &x);
    if (!rc) *out = (long)x;
    return rc;
}

static int cmd_make_model(int argc, char **argv) {
    if (argc < 1 || argv[0][0] == '-') return usage_error("%s needs an output directory", "make-model");
    const char *dir = argv[0];
    long vocab = 256, hidden = 64, layers = 2, heads = 4, kv = 2, ffn = 128, head_dim = 0, shards = 1, seed = 0;
    int tie = 0, bias = 0, bf16 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long *dst = NULL, lo = 1, hi = 1 << 24;
        if (!strcmp(a, "--tie")) { tie = 1; continue; }
        if (!strcmp(a, "--bias")) { bias = 1; continue; }
        if (!strcmp(a, "--bf16")) { bf16 = 1; continue; }
        if (!strcmp(a, "--vocab")) dst = &vocab;
        else if (!strcmp(a, "--hidden")) dst = &hidden;
        else if (!strcmp(a, "--layers")) dst = &layers, hi = 1024;
        else if (!strcmp(a, "--heads")) dst = &heads, hi = 1024;
        else if (!strcmp(a, "--kv-heads")) dst = &kv, hi = 1024;
        else if (!strcmp(a, "--ffn")) dst = &ffn;
        else if (!strcmp(a, "--head-dim")) dst = &head_dim, hi = 1024;
        else if (!strcmp(a, "--shards")) dst = &shards, hi = 64;
        else if (!strcmp(a, "--seed")) dst = &seed, lo = 0, hi = 0x7fffffffL;
        else return usage_error("make-model: unknown option '%s'", a);
        if (i + 1 >= argc) return usage_error("make-model: %s needs a value", a);
        int rc = parse_int_arg(a, argv[++i], lo, hi, dst);
        if (rc) return rc;
    }
    tl_model_config cfg;
    tl_error err = {0};
    tl_tiny_config(&cfg, (int)vocab, (int)hidden, (int)layers, (int)heads, (int)kv, (int)ffn, (int)head_dim, tie, bias);
    if (tl_write_random_model(dir, &cfg, (uint64_t)seed, bf16, (int)shards, &err)) return fail(&err);
    printf("wrote a random %s model to %s: vocab %ld, hidden %ld, %ld layers, %ld heads (%ld kv), ffn %ld\n",
           cfg.arch, dir, vocab, hidden, layers, heads, kv, ffn);
    return 0;
}

/* How the OpenMP workers wait between parallel regions. Workers that spin without bound starve any other thread
 * on shared cores: measured on the 2-core development machine (2026-11-28, when OpenBLAS still ran its own thread
 * pool), a 64-token training step took 9.4 s with spinning workers and 0.74 s with passive ones. Workers that go
 * to sleep at once pay a futex wake-up at each of the thousands of parallel regions of a step (every matrix
 * product and elementwise op): a short spin first saved 3% of a 64 x 16-token step with nothing else running
 * and 18% of a 128-token step beside two busy processes (2026-12-06). So when the user has chosen neither,
 * OMP_WAIT_POLICY=PASSIVE (libomp: sleep at once) and GOMP_SPINCOUNT=10000 (libgomp: spin about 0.1 ms, then
 * sleep; libgomp lets the spin count override the policy). Both runtimes read them when they load, before main,
 * so we set them and re-execute once. */
static void prefer_short_omp_spin(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0 || setenv("GOMP_SPINCOUNT", "10000", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): run on with the default policy */
}

int main(int argc, char **argv) {
    prefer_short_omp_spin(argv);
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    {
        tl_error err = {0}; /* before any OpenMP team is built: an absurd count overflows libgomp's stack */
        if (tl_config_check_thread_env(&err)) return fail(&err);
    }
    if (!strcmp(cmd, "train")) return cmd_train_or_eval(argc - 2, argv + 2, 0);
    if (!strcmp(cmd, "eval")) return cmd_train_or_eval(argc - 2, argv + 2, 1);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(cmd, "make-model")) return cmd_make_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "data")) return cmd_data(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return tl_cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "report")) return tl_cmd_report(argc - 2, argv + 2);
    if (!strcmp(cmd, "submit")) return tl_cmd_submit(argc - 2, argv + 2);
    if (!strcmp(cmd, "inspect")) {
        if (argc != 3) return usage_error("%s needs exactly one PATH", "inspect");
        tl_error err = {0};
        if (tl_inspect(argv[2], stdout, &err)) return fail(&err);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("tailor %s (backends: cpu%s; multi-process: %s%s)\n", TAILOR_VERSION, tl_backend_has_cuda() ? ", cuda" : "",
#ifdef TL_HAVE_MPI
               "mpi",
#else
               "no mpi",
#endif
#ifdef TL_HAVE_NCCL
               ", nccl"
#else
               ""
#endif
        );
        /* what decides CPU speed on this machine: the kernels' instruction set and how the OpenMP workers wait
         * (as this process runs: set by the user, else by prefer_short_omp_spin) */
        const char *wp = getenv("OMP_WAIT_POLICY"), *sc = getenv("GOMP_SPINCOUNT");
        printf("cpu kernels: %s; OpenMP: OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s\n",
#ifdef TL_KERNELS_NATIVE
               "built for this machine's instruction set (TAILOR_NATIVE)",
#else
               "built for the compiler's baseline instruction set",
#endif
               wp ? wp : "(unset)", sc ? sc : "(unset)");
        printf("cpu products: %s\n", tl_backend_cpu_products());
        return 0;
    }
    return usage_error("unknown command '%s'", cmd);
}
