/* test_config: tl_config_load / tl_config_write_yaml on YAML files written here (in a fresh mkdtemp directory).
 *
 * A full config must load with exactly the values written; a minimal one with the documented defaults. Every
 * strictness rule has a case that must fail with TL_ERR_INPUT and a one-line message naming the file, the line
 * (marked in the case text by a "#<" comment, so line numbers are never counted by hand) and the dotted key.
 * Overrides, the cross-key rule and write -> load round trips on random configurations are checked too. */
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "trainer/config/tl_config.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_rng_splitmix.h"

static char g_dir[256];

static double rnd_unit(void) { return (double)(rnd() >> 11) * 0x1.0p-53; } /* [0, 1) */

/* Writes text to g_dir/name; returns the path in a static buffer (one of a few, so two can be live). */
static const char *write_file(const char *name, const char *text) {
    static char bufs[4][512];
    static int k = 0;
    char *path = bufs[k++ % 4];
    snprintf(path, 512, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    size_t n = strlen(text);
    if (fwrite(text, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    return path;
}

static void poison(tl_config *c) { memset(c, 0xA5, sizeof *c); }

static int poisoned(const tl_config *c) {
    const unsigned char *p = (const unsigned char *)c;
    for (size_t i = 0; i < sizeof *c; i++)
        if (p[i] != 0xA5) return 0;
    return 1;
}

/* Field-by-field comparison; doubles bit for bit (so -0.0 vs 0.0 would show). Returns the first differing key. */
static const char *config_diff(const tl_config *a, const tl_config *b) {
#define S_(f, k) if (strcmp(a->f, b->f) != 0) return k
#define N_(f, k) if (a->f != b->f) return k
#define D_(f, k) if (memcmp(&a->f, &b->f, sizeof a->f) != 0) return k
    S_(run_name, "run.name");
    S_(output_dir, "run.output_dir");
    N_(seed, "run.seed");
    S_(model_path, "model.path");
    N_(adapter_rank, "adapter.rank");
    D_(adapter_alpha, "adapter.alpha");
    D_(adapter_dropout, "adapter.dropout");
    N_(adapter_targets, "adapter.targets");
    N_(adapter_key, "adapter.key");
    N_(adapter_rslora, "adapter.rslora");
    S_(data_train, "data.train");
    S_(data_eval, "data.eval");
    N_(data_max_seq_len, "data.max_seq_len");
    N_(task_type, "task.type");
    N_(backend, "train.backend");
    N_(threads, "train.threads");
    N_(steps, "train.steps");
    N_(examples_per_adapter, "train.examples_per_adapter");
    N_(adapters_per_step, "train.adapters_per_step");
    N_(micro_batch_tokens, "train.micro_batch_tokens");
    D_(lr, "train.lr");
    N_(schedule, "train.schedule");
    N_(warmup_steps, "train.warmup_steps");
    D_(weight_decay, "train.weight_decay");
    D_(grad_clip, "train.grad_clip");
    D_(beta1, "train.beta1");
    D_(beta2, "train.beta2");
    D_(adam_eps, "train.adam_eps");
    N_(log_every, "train.log_every");
    N_(eval_every, "train.eval_every");
    N_(checkpoint_every, "train.checkpoint_every");
    N_(keep_checkpoints, "train.keep_checkpoints");
    N_(resume, "train.resume");
    S_(resume_path, "train.resume");
    N_(dist_strategy, "dist.strategy");
    D_(dist_timeout_s, "dist.timeout_s");
    S_(dist_rendezvous_dir, "dist.rendezvous_dir");
    N_(cluster_nodes, "cluster.nodes");
    N_(cluster_gpus_per_node, "cluster.gpus_per_node");
    N_(cluster_tasks_per_node, "cluster.tasks_per_node");
    N_(cluster_cpus_per_task, "cluster.cpus_per_task");
    S_(cluster_partition, "cluster.partition");
    S_(cluster_account, "cluster.account");
    S_(cluster_time, "cluster.time");
    S_(cluster_mem, "cluster.mem");
    S_(cluster_job_name, "cluster.job_name");
    S_(cluster_mpi, "cluster.mpi");
    N_(cluster_signal_s, "cluster.signal_s");
    N_(cluster_requeue, "cluster.requeue");
    S_(cluster_tailor, "cluster.tailor");
    S_(cluster_sbatch, "cluster.sbatch");
    S_(cluster_setup, "cluster.setup");
    S_(cluster_env, "cluster.env");
    return NULL;
#undef S_
#undef N_
#undef D_
}

#define T(x) (1u << (x))
#define DEFAULT_TARGETS (T(TL_T_Q) | T(TL_T_K) | T(TL_T_V) | T(TL_T_O))
#define ALL_TARGETS ((1u << TL_N_TARGETS) - 1u)

/* ---- valid files ---- */

static const char *FULL =
    "# every key, none at its default\n"
    "run:\n"
    "  name: exp1\n"
    "  output_dir: out/exp1\n"
    "  seed: 18446744073709551615\n"
    "model:\n"
    "  path: ../models/m\n"
    "adapter:\n"
    "  rank: 16\n"
    "  alpha: 32.5\n"
    "  dropout: 0.05\n"
    "  targets:\n"
    "    - q_proj\n"
    "    - down_proj\n"
    "  key: group\n"
    "  rslora: true\n"
    "data:\n"
    "  train: d/train.h5\n"
    "  eval: \"d/eval set: 1.h5\"\n"
    "  max_seq_len: 128\n"
    "task:\n"
    "  type: sft\n"
    "train:\n"
    "  backend: cpu\n"
    "  threads: 3\n"
    "  steps: 12345678901\n"
    "  examples_per_adapter: 7\n"
    "  adapters_per_step: 5\n"
    "  micro_batch_tokens: 1024\n"
    "  lr: 3e-4\n"
    "  schedule: linear\n"
    "  warmup_steps: 20\n"
    "  weight_decay: 0.01\n"
    "  grad_clip: 0\n"
    "  beta1: 0.8\n"
    "  beta2: +0.95\n"
    "  adam_eps: 1e-6\n"
    "  log_every: 5\n"
    "  eval_every: 50\n"
    "  checkpoint_every: 100\n"
    "  keep_checkpoints: 3\n"
    "  resume: never\n";

static void check_full(const tl_config *c) {
    CHECK(!strcmp(c->run_name, "exp1"), "run_name %s", c->run_name);
    CHECK(!strcmp(c->output_dir, "out/exp1"), "output_dir %s", c->output_dir);
    CHECK(c->seed == UINT64_MAX, "seed %" PRIu64, c->seed);
    CHECK(!strcmp(c->model_path, "../models/m"), "model_path %s (paths are kept as written)", c->model_path);
    CHECK(c->adapter_rank == 16, "rank %d", c->adapter_rank);
    CHECK(c->adapter_alpha == 32.5, "alpha %g", c->adapter_alpha);
    CHECK(c->adapter_dropout == 0.05, "dropout %g", c->adapter_dropout);
    CHECK(c->adapter_targets == (T(TL_T_Q) | T(TL_T_DOWN)), "targets 0x%x", c->adapter_targets);
    CHECK(!strcmp(tl_adapter_key_names[c->adapter_key], "group"), "key %s", tl_adapter_key_names[c->adapter_key]);
    CHECK(c->adapter_rslora == 1, "rslora %d", c->adapter_rslora);
    CHECK(!strcmp(c->data_train, "d/train.h5"), "train %s", c->data_train);
    CHECK(!strcmp(c->data_eval, "d/eval set: 1.h5"), "eval %s", c->data_eval);
    CHECK(c->data_max_seq_len == 128, "max_seq_len %d", c->data_max_seq_len);
    CHECK(!strcmp(tl_task_type_names[c->task_type], "sft"), "task %s", tl_task_type_names[c->task_type]);
    CHECK(!strcmp(tl_backend_choice_names[c->backend], "cpu"), "backend %s", tl_backend_choice_names[c->backend]);
    CHECK(c->threads == 3, "threads %d", c->threads);
    CHECK(c->steps == 12345678901LL, "steps %" PRId64, c->steps);
    CHECK(c->examples_per_adapter == 7, "epa %d", c->examples_per_adapter);
    CHECK(c->adapters_per_step == 5, "aps %d", c->adapters_per_step);
    CHECK(c->micro_batch_tokens == 1024, "mbt %d", c->micro_batch_tokens);
    CHECK(c->lr == 3e-4, "lr %.17g", c->lr);
    CHECK(!strcmp(tl_schedule_names[c->schedule], "linear"), "schedule %s", tl_schedule_names[c->schedule]);
    CHECK(c->warmup_steps == 20, "warmup %" PRId64, c->warmup_steps);
    CHECK(c->weight_decay == 0.01, "wd %g", c->weight_decay);
    CHECK(c->grad_clip == 0.0, "clip %g", c->grad_clip);
    CHECK(c->beta1 == 0.8, "beta1 %g", c->beta1);
    CHECK(c->beta2 == 0.95, "beta2 %g", c->beta2);
    CHECK(c->adam_eps == 1e-6, "eps %g", c->adam_eps);
    CHECK(c->log_every == 5, "log_every %" PRId64, c->log_every);
    CHECK(c->eval_every == 50, "eval_every %" PRId64, c->eval_every);
    CHECK(c->checkpoint_every == 100, "ckpt_every %" PRId64, c->checkpoint_every);
    CHECK(c->keep_checkpoints == 3, "keep %d", c->keep_checkpoints);
    CHECK(c->resume == TL_RESUME_NEVER && !c->resume_path[0], "resume %d", (int)c->resume);
}

/* The defaults documented in tl_config.h and docs/config.md (run.name / output_dir aside). */
static void check_defaults(const tl_config *c) {
    CHECK(c->seed == 0, "seed");
    CHECK(c->adapter_rank == 8, "rank %d", c->adapter_rank);
    CHECK(c->adapter_alpha == 16.0, "alpha");
    CHECK(c->adapter_dropout == 0.0, "dropout");
    CHECK(c->adapter_targets == DEFAULT_TARGETS, "targets 0x%x", c->adapter_targets);
    CHECK(!strcmp(tl_adapter_key_names[c->adapter_key], "user"), "key %s", tl_adapter_key_names[c->adapter_key]);
    CHECK(c->adapter_rslora == 0, "rslora");
    CHECK(c->data_train[0] == 0, "data.train '%s'", c->data_train);
    CHECK(c->data_eval[0] == 0, "data.eval '%s'", c->data_eval);
    CHECK(c->data_max_seq_len == 512, "max_seq_len");
    CHECK(!strcmp(tl_task_type_names[c->task_type], "sft"), "task");
    CHECK(!strcmp(tl_dist_strategy_names[c->dist_strategy], "auto") && c->dist_timeout_s == 600.0 && c->dist_rendezvous_dir[0] == 0, "dist");
    CHECK(c->cluster_nodes == 1 && c->cluster_gpus_per_node == 0 && c->cluster_tasks_per_node == 0 &&
              c->cluster_cpus_per_task == 0 && !strcmp(c->cluster_mpi, "pmix") && c->cluster_signal_s == 90 &&
              c->cluster_requeue == 1 && !c->cluster_partition[0] && !c->cluster_account[0] && !c->cluster_time[0] &&
              !c->cluster_mem[0] && !c->cluster_job_name[0] && !c->cluster_tailor[0] && !c->cluster_sbatch[0] &&
              !c->cluster_setup[0] && !c->cluster_env[0],
          "cluster defaults");
    CHECK(!strcmp(tl_backend_choice_names[c->backend], "auto"), "backend");
    CHECK(c->threads == 0, "threads");
    CHECK(c->steps == 100, "steps");
    CHECK(c->examples_per_adapter == 4, "epa");
    CHECK(c->adapters_per_step == 0, "aps");
    CHECK(c->micro_batch_tokens == 4096, "mbt");
    CHECK(c->lr == 1e-4, "lr");
    CHECK(!strcmp(tl_schedule_names[c->schedule], "cosine"), "schedule");
    CHECK(c->warmup_steps == 0, "warmup");
    CHECK(c->weight_decay == 0.0, "wd");
    CHECK(c->grad_clip == 1.0, "clip");
    CHECK(c->beta1 == 0.9 && c->beta2 == 0.999 && c->adam_eps == 1e-8, "adam");
    CHECK(c->log_every == 10, "log_every");
    CHECK(c->eval_every == 0, "eval_every");
    CHECK(c->checkpoint_every == 0, "ckpt_every");
    CHECK(c->keep_checkpoints == 2, "keep");
    CHECK(c->store_prefetch == 1, "store_prefetch");
    CHECK(c->resume == TL_RESUME_AUTO && !c->resume_path[0], "resume");
}

static void test_full_and_defaults(void) {
    tl_config c;
    tl_error err = {0};
    poison(&c);
    const char *p = write_file("full.yaml", FULL);
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "full: %s", err.msg);
    check_full(&c);

    /* The same keys in flow style and in another order load to the same values. */
    tl_config c2;
    poison(&c2);
    p = write_file("flow.yaml",
                   "train: {resume: never, keep_checkpoints: 3, checkpoint_every: 100, eval_every: 50, log_every: 5,"
                   " adam_eps: 0.000001, beta2: 0.95, beta1: 0.8, grad_clip: 0.0, weight_decay: 1e-2,"
                   " warmup_steps: 20, schedule: linear, lr: 0.0003, micro_batch_tokens: 1024,"
                   " adapters_per_step: 5, examples_per_adapter: 7, steps: 12345678901, threads: 3, backend: cpu}\n"
                   "task: {type: sft}\n"
                   "data: {max_seq_len: 128, eval: 'd/eval set: 1.h5', train: d/train.h5}\n"
                   "adapter: {rslora: true, key: group, targets: [down_proj, q_proj], dropout: 5e-2, alpha: 32.5,"
                   " rank: +16}\n"
                   "model: {path: ../models/m}\n"
                   "run: {seed: 18446744073709551615, output_dir: out/exp1, name: exp1}\n");
    CHECK(tl_config_load(p, NULL, 0, &c2, &err) == TL_OK, "flow: %s", err.msg);
    const char *d = config_diff(&c, &c2);
    CHECK(d == NULL, "flow-style file differs at %s", d ? d : "");

    /* tl_config_defaults fills every field (poisoned first). */
    poison(&c);
    tl_config_defaults(&c);
    check_defaults(&c);

    /* Only the required key: defaults, run named after the file. */
    poison(&c);
    p = write_file("my.run.yaml", "model:\n  path: m\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "minimal: %s", err.msg);
    check_defaults(&c);
    CHECK(!strcmp(c.run_name, "my.run"), "run_name '%s' (basename without extension)", c.run_name);
    CHECK(!strcmp(c.output_dir, "runs/my.run"), "output_dir '%s'", c.output_dir);
    CHECK(!strcmp(c.model_path, "m"), "model_path '%s'", c.model_path);

    /* Empty sections, explicit nulls for data.eval, comments only elsewhere. */
    poison(&c);
    p = write_file("noext", "# just a comment\nrun:\ntrain:\nmodel: {path: m}\ndata:\n  eval: ~\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "empty sections: %s", err.msg);
    CHECK(!strcmp(c.run_name, "noext") && !strcmp(c.output_dir, "runs/noext"), "name %s dir %s", c.run_name,
          c.output_dir);
    CHECK(c.data_eval[0] == 0, "data.eval ~ is unset");
    p = write_file("evnull.yaml", "model: {path: m}\ndata:\n  eval:\n  train: t.h5\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "eval empty: %s", err.msg);
    CHECK(c.data_eval[0] == 0 && !strcmp(c.data_train, "t.h5"), "eval '%s' train '%s'", c.data_eval, c.data_train);
    p = write_file("evnull2.yaml", "model: {path: m}\ndata: {eval: null}\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "eval null: %s", err.msg);
    CHECK(c.data_eval[0] == 0, "eval '%s'", c.data_eval);

    /* all-linear, given run.name without output_dir, and a quoted "~" is a string, not null. */
    p = write_file("al.yaml", "model: {path: '~'}\nrun: {name: foo}\nadapter: {targets: all-linear}\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "all-linear: %s", err.msg);
    CHECK(c.adapter_targets == ALL_TARGETS, "all-linear 0x%x", c.adapter_targets);
    CHECK(!strcmp(c.run_name, "foo") && !strcmp(c.output_dir, "runs/foo"), "name %s dir %s", c.run_name,
          c.output_dir);
    CHECK(!strcmp(c.model_path, "~"), "quoted ~ '%s'", c.model_path);

    /* Integers accepted where a number is expected; -0 is an integer 0. */
    p = write_file("ints.yaml", "model: {path: m}\ntrain: {lr: 2, grad_clip: 0, threads: -0, warmup_steps: +0}\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "ints: %s", err.msg);
    CHECK(c.lr == 2.0 && c.grad_clip == 0.0 && c.threads == 0, "lr %g clip %g threads %d", c.lr, c.grad_clip,
          c.threads);

    /* Anchors and aliases are YAML; they resolve to the anchored value. */
    p = write_file("alias.yaml", "model: {path: m}\ntrain: {log_every: &n 7, eval_every: *n}\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "alias: %s", err.msg);
    CHECK(c.log_every == 7 && c.eval_every == 7, "alias %" PRId64 " %" PRId64, c.log_every, c.eval_every);
}

/* ---- error cases ---- */

typedef struct {
    const char *name; /* file name */
    const char *text; /* "#<" marks the line the message must name; no marker: no line expected */
    const char *key;  /* must appear in the message ("" for none) */
    const char *frag; /* must appear too */
} bad_case;

#define M "model:\n  path: m\n"

static const bad_case BAD[] = {
    /* unknown sections and keys */
    {"unk_key.yaml", M "train:\n  lrr: 0.1 #<\n", "train.lrr", "did you mean train.lr?"},
    {"unk_key2.yaml", M "train:\n  steps: 3\n  warmup_step: 2 #<\n",
     "train.warmup_step", "did you mean train.warmup_steps?"},
    {"unk_key3.yaml", M "train:\n  frobnicate: 1 #<\n", "train.frobnicate", "unknown key"},
    {"misplaced.yaml", M "train:\n  rank: 4 #<\n", "train.rank", "did you mean adapter.rank?"},
    {"unk_sec.yaml", M "trian: #<\n  lr: 0.1\n", "trian", "did you mean train?"},
    {"unk_sec2.yaml", M "frobnicate: 3 #<\n", "frobnicate", "unknown section"},
    {"bare_key.yaml", M "lr: 0.1 #<\n", "lr", "train.lr"},
    {"optimizer.yaml", M "optimizer: #<\n  nodes: 2\n", "optimizer", "unknown section"},
    {"dup_key.yaml", M "train:\n  lr: 0.1\n  steps: 4\n  lr: 0.2 #<\n", "train.lr", "duplicate key"},
    {"dup_sec.yaml", M "train:\n  lr: 0.1\ntrain: #<\n  steps: 3\n", "train", "duplicate section"},
    {"dup_model.yaml", M "model: #<\n  path: x\n", "model", "duplicate section"},
    /* structure */
    {"map_for_scalar.yaml", M "train:\n  lr: {a: 1} #<\n", "train.lr", "got a mapping"},
    {"seq_for_scalar.yaml", M "train:\n  lr: [1] #<\n", "train.lr", "got a list"},
    {"blockseq_for_scalar.yaml", M "train:\n  steps:\n    - 1 #<\n", "train.steps", "got a list"},
    {"scalar_for_section.yaml", M "train: 5 #<\n", "train", "expected a mapping"},
    {"list_for_section.yaml", M "train: [lr] #<\n", "train", "expected a mapping"},
    {"top_list.yaml", "- a #<\n- b\n", "", "at the top level"},
    {"top_scalar.yaml", "hello #<\n", "", "at the top level"},
    {"map_key.yaml", M "train:\n  ? [a, b] #<\n  : 1\n", "train", "expected a key name"},
    {"map_for_string.yaml", M "run:\n  name: {a: b} #<\n", "run.name", "got a mapping"},
    /* malformed YAML */
    {"malformed1.yaml", M "train:\n  lr: 1\n   steps: 2 #<\n", "", "malformed YAML"},
    {"malformed2.yaml", M "train: {lr: 1, steps: 2\nrun: {name: x} #<\n", "", "did not find expected ',' or '}'"},
    {"malformed3.yaml", M "run:\n  name: x\n    foo: 1 #<\n", "", "malformed YAML"},
    {"malformed_tab.yaml", M "train:\n\tlr: 1 #<\n", "", "malformed YAML"},
    {"malformed_utf8.yaml", M "train:\n  schedule: \xff\xfe #<\n", "", "malformed YAML"},
    {"malformed_colon.yaml", M "run:\n  name: a: b #<\n", "", "malformed YAML"},
    {"two_docs.yaml", M "--- #<\ntrain: {lr: 1}\n", "", "second YAML document"},
    {"undefined_alias.yaml", M "train:\n  lr: *nope #<\n", "", "malformed YAML"},
    /* integers */
    {"int_leading0.yaml", M "train:\n  steps: 010 #<\n", "train.steps", "leading zero"},
    {"int_trailing.yaml", M "train:\n  steps: 16abc #<\n", "train.steps", "expected a decimal integer"},
    {"int_exp.yaml", M "train:\n  steps: 1e3 #<\n", "train.steps", "expected a decimal integer"},
    {"int_float.yaml", M "train:\n  steps: 1.0 #<\n", "train.steps", "expected a decimal integer"},
    {"int_hex.yaml", M "train:\n  steps: 0x10 #<\n", "train.steps", "expected a decimal integer"},
    {"int_sign2.yaml", M "train:\n  steps: +-1 #<\n", "train.steps", "expected a decimal integer"},
    {"int_overflow.yaml", M "train:\n  steps: 99999999999999999999 #<\n", "train.steps", "out of range"},
    {"int_overflow64.yaml", M "train:\n  steps: 9223372036854775808 #<\n", "train.steps", "out of range"},
    {"int_overflow32.yaml", M "train:\n  micro_batch_tokens: 2147483648 #<\n",
     "train.micro_batch_tokens", "<= 2147483647"},
    {"int_quoted.yaml", M "train:\n  steps: \"12\" #<\n", "train.steps", "quoted"},
    {"int_null.yaml", M "train:\n  steps: #<\n  lr: 1\n", "train.steps", "got null"},
    {"int_tilde.yaml", M "train:\n  steps: ~ #<\n", "train.steps", "got null"},
    {"seed_neg.yaml", M "run:\n  seed: -1 #<\n", "run.seed", "out of range"},
    {"seed_overflow.yaml", M "run:\n  seed: 18446744073709551616 #<\n", "run.seed", "out of range"},
    {"seed_float.yaml", M "run:\n  seed: 1.5 #<\n", "run.seed", "expected a decimal integer"},
    /* floats */
    {"float_word.yaml", M "train:\n  lr: fast #<\n", "train.lr", "expected a number"},
    {"float_trailing.yaml", M "train:\n  lr: 1e-4x #<\n", "train.lr", "expected a number"},
    {"float_inf.yaml", M "train:\n  lr: inf #<\n", "train.lr", "finite"},
    {"float_yinf.yaml", M "train:\n  lr: .inf #<\n", "train.lr", "expected a number"},
    {"float_nan.yaml", M "train:\n  lr: nan #<\n", "train.lr", "finite"},
    {"float_huge.yaml", M "train:\n  lr: 1e999 #<\n", "train.lr", "finite"},
    {"float_hex.yaml", M "train:\n  lr: 0x1p-3 #<\n", "train.lr", "expected a number"},
    {"float_quoted.yaml", M "train:\n  lr: '0.1' #<\n", "train.lr", "quoted"},
    {"float_null.yaml", M "train:\n  lr: null #<\n", "train.lr", "got null"},
    /* booleans */
    {"bool_yes.yaml", M "adapter:\n  rslora: yes #<\n", "adapter.rslora", "expected true or false"},
    {"bool_True.yaml", M "adapter:\n  rslora: True #<\n", "adapter.rslora", "expected true or false"},
    {"bool_1.yaml", M "adapter:\n  rslora: 1 #<\n", "adapter.rslora", "expected true or false"},
    {"bool_list.yaml", M "adapter:\n  rslora: [true] #<\n", "adapter.rslora", "got a list"},
    /* strings */
    {"str_null.yaml", "model:\n  path: ~ #<\n", "model.path", "got null"},
    {"str_empty.yaml", "model:\n  path: \"\" #<\n", "model.path", "must not be empty"},
    {"str_list.yaml", M "run:\n  name: [a] #<\n", "run.name", "got a list"},
    {"str_resume_null.yaml", M "train:\n  resume: #<\n", "train.resume", "got null"},
    {"str_output_empty.yaml", M "run:\n  output_dir: '' #<\n", "run.output_dir", "must not be empty"},
    {"str_eval_list.yaml", M "data:\n  eval: [a.h5] #<\n", "data.eval", "got a list"},
    {"str_nul.yaml", M "run:\n  name: \"a\\0b\" #<\n", "run.name", "NUL"},
    /* ranges */
    {"rank0.yaml", M "adapter:\n  rank: 0 #<\n", "adapter.rank", "1 <= adapter.rank <= 1024"},
    {"rank1025.yaml", M "adapter:\n  rank: 1025 #<\n", "adapter.rank", "1 <= adapter.rank <= 1024"},
    {"alpha0.yaml", M "adapter:\n  alpha: 0 #<\n", "adapter.alpha", "adapter.alpha > 0"},
    {"alpha_neg.yaml", M "adapter:\n  alpha: -1.5 #<\n", "adapter.alpha", "out of range"},
    {"dropout1.yaml", M "adapter:\n  dropout: 1 #<\n", "adapter.dropout", "0 <= adapter.dropout < 1"},
    {"dropout_neg.yaml", M "adapter:\n  dropout: -0.1 #<\n", "adapter.dropout", "out of range"},
    {"msl1.yaml", M "data:\n  max_seq_len: 1 #<\n", "data.max_seq_len", "data.max_seq_len >= 2"},
    {"threads_neg.yaml", M "train:\n  threads: -1 #<\n", "train.threads", "0 <= train.threads <= 1024"},
    {"steps0.yaml", M "train:\n  steps: 0 #<\n", "train.steps", "train.steps >= 1"},
    {"epa0.yaml", M "train:\n  examples_per_adapter: 0 #<\n", "train.examples_per_adapter", ">= 1"},
    {"aps_neg.yaml", M "train:\n  adapters_per_step: -1 #<\n", "train.adapters_per_step", ">= 0"},
    {"mbt0.yaml", M "train:\n  micro_batch_tokens: 0 #<\n", "train.micro_batch_tokens", ">= 1"},
    {"lr0.yaml", M "train:\n  lr: 0 #<\n", "train.lr", "train.lr > 0"},
    {"lr_neg.yaml", M "train:\n  lr: -1e-4 #<\n", "train.lr", "out of range"},
    {"warmup_neg.yaml", M "train:\n  warmup_steps: -1 #<\n", "train.warmup_steps", ">= 0"},
    {"wd_neg.yaml", M "train:\n  weight_decay: -1e-9 #<\n", "train.weight_decay", "train.weight_decay >= 0"},
    {"clip_neg.yaml", M "train:\n  grad_clip: -1 #<\n", "train.grad_clip", ">= 0"},
    {"beta1_1.yaml", M "train:\n  beta1: 1 #<\n", "train.beta1", "0 <= train.beta1 < 1"},
    {"beta1_neg.yaml", M "train:\n  beta1: -0.5 #<\n", "train.beta1", "out of range"},
    {"beta2_1.yaml", M "train:\n  beta2: 1.0 #<\n", "train.beta2", "0 <= train.beta2 < 1"},
    {"eps0.yaml", M "train:\n  adam_eps: 0 #<\n", "train.adam_eps", "train.adam_eps > 0"},
    {"log0.yaml", M "train:\n  log_every: 0 #<\n", "train.log_every", ">= 1"},
    {"eval_neg.yaml", M "train:\n  eval_every: -1 #<\n", "train.eval_every", ">= 0"},
    {"ckpt_neg.yaml", M "train:\n  checkpoint_every: -1 #<\n", "train.checkpoint_every", ">= 0"},
    {"keep0.yaml", M "train:\n  keep_checkpoints: 0 #<\n", "train.keep_checkpoints", ">= 1"},
    /* enums */
    {"key_bad.yaml", M "adapter:\n  key: users #<\n", "adapter.key", "did you mean user?"},
    {"key_bad2.yaml", M "adapter:\n  key: everyone #<\n", "adapter.key", "user, group or global"},
    {"task_loss_bad.yaml", M "task:\n  loss: kto #<\n", "task.loss", "sigmoid"},
    {"task_ls_bad.yaml", M "task:\n  label_smoothing: 0.5 #<\n", "task.label_smoothing", "0.5"},
    /* online RL keys (docs/rl.md) */
    {"task_ngen_one.yaml", M "task:\n  num_generations: 1 #<\n", "task.num_generations", "1"},
    {"task_maxc_zero.yaml", M "task:\n  max_completion_length: 0 #<\n", "task.max_completion_length", "0"},
    {"task_top_p_zero.yaml", M "task:\n  top_p: 0 #<\n", "task.top_p", "0"},
    {"task_top_p_big.yaml", M "task:\n  top_p: 1.5 #<\n", "task.top_p", "1.5"},
    {"task_eps_one.yaml", M "task:\n  epsilon: 1 #<\n", "task.epsilon", "1"},
    {"task_eps_high_neg.yaml", M "task:\n  epsilon_high: -0.1 #<\n", "task.epsilon_high", "-0.1"},
    {"task_temp_neg.yaml", M "task:\n  temperature: -1 #<\n", "task.temperature", "-1"},
    {"task_beta_neg.yaml", M "task:\n  beta: -0.5 #<\n", "task.beta", "-0.5"},
    {"task_loss_type_bad.yaml", M "task:\n  loss_type: dapo #<\n", "task.loss_type", "grpo, bnpo or dr_grpo"},
    {"task_scale_bad.yaml", M "task:\n  scale_rewards: maybe #<\n", "task.scale_rewards", "maybe"},
    {"task_bad.yaml", M "task:\n  type: pretrain #<\n", "task.type", "expected sft"},
    {"backend_bad.yaml", M "train:\n  backend: gpu #<\n", "train.backend", "auto, cpu or cuda"},
    {"store_prefetch_bad.yaml", M "train:\n  store_prefetch: sometimes #<\n", "train.store_prefetch", "sometimes"},
    {"schedule_bad.yaml", M "train:\n  schedule: cosin #<\n", "train.schedule", "did you mean cosine?"},
    {"enum_list.yaml", M "train:\n  schedule: [cosine] #<\n", "train.schedule", "got a list"},
    /* targets */
    {"targets_empty.yaml", M "adapter:\n  targets: [] #<\n", "adapter.targets", "empty"},
    {"targets_dup.yaml", M "adapter:\n  targets: [q_proj, v_proj, q_proj] #<\n",
     "adapter.targets", "q_proj is listed twice"},
    {"targets_dup_block.yaml", M "adapter:\n  targets:\n    - q_proj\n    - v_proj\n    - q_proj #<\n",
     "adapter.targets", "listed twice"},
    {"targets_unknown.yaml", M "adapter:\n  targets:\n    - q_proj\n    - x_proj #<\n",
     "adapter.targets", "unknown target module 'x_proj'"},
    {"targets_single.yaml", M "adapter:\n  targets: q_proj #<\n", "adapter.targets", "[q_proj]"},
    {"targets_map.yaml", M "adapter:\n  targets: {q_proj: 1} #<\n", "adapter.targets", "got a mapping"},
    {"targets_nested.yaml", M "adapter:\n  targets: [[q_proj]] #<\n", "adapter.targets", "got a list"},
    {"targets_null.yaml", M "adapter:\n  targets: #<\n", "adapter.targets", "got null"},
    {"targets_null_item.yaml", M "adapter:\n  targets:\n    - q_proj\n    - #<\n", "adapter.targets", "got null"},
    {"targets_alllinear_in_list.yaml", M "adapter:\n  targets: [all-linear] #<\n", "adapter.targets", "unknown target"},
    /* cross-key rule and the required key */
    {"cross.yaml", M "data:\n  max_seq_len: 1024\ntrain:\n  micro_batch_tokens: 512 #<\n",
     "train.micro_batch_tokens", "data.max_seq_len (1024"},
    {"cross_default_mbt.yaml", M "data:\n  max_seq_len: 8192 #<\n",
     "data.max_seq_len", "train.micro_batch_tokens (4096)"},
    {"empty.yaml", "", "model.path", "required"},
    {"no_model.yaml", "train:\n  lr: 0.1\n", "model.path", "required"},
    {"comments_only.yaml", "# nothing\n\n", "model.path", "required"},
};
#undef M

static int marked_line(const char *text) {
    const char *m = strstr(text, "#<");
    if (!m) return 0;
    int line = 1;
    for (const char *p = text; p < m; p++) line += *p == '\n';
    return line;
}

static void check_error(const char *what, tl_status st, const tl_error *err, const char *want_prefix,
                        const char *key, const char *frag) {
    CHECK(st == TL_ERR_INPUT && err->code == TL_ERR_INPUT, "%s: status %d code %d (msg: %s)", what, st, err->code,
          err->msg);
    CHECK(strstr(err->msg, want_prefix) == err->msg, "%s: message should start with '%s': %s", what, want_prefix,
          err->msg);
    CHECK(!key[0] || strstr(err->msg, key), "%s: message should name '%s': %s", what, key, err->msg);
    CHECK(strstr(err->msg, frag), "%s: message should contain '%s': %s", what, frag, err->msg);
    CHECK(!strchr(err->msg, '\n'), "%s: message must be one line", what);
}

static void test_bad_files(void) {
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        const bad_case *b = &BAD[i];
        const char *path = write_file(b->name, b->text);
        char prefix[600];
        int line = marked_line(b->text);
        if (line)
            snprintf(prefix, sizeof prefix, "%s:%d: %s%s", path, line, b->key, b->key[0] ? ": " : "");
        else
            snprintf(prefix, sizeof prefix, "%s: %s%s", path, b->key, b->key[0] ? ": " : "");
        tl_config c;
        tl_error err = {0};
        poison(&c);
        tl_status st = tl_config_load(path, NULL, 0, &c, &err);
        check_error(b->name, st, &err, prefix, b->key, b->frag);
        CHECK(poisoned(&c), "%s: a failed load must leave the config untouched", b->name);
    }

    /* A file that does not exist, and a directory. */
    tl_config c;
    tl_error err = {0};
    char path[600];
    snprintf(path, sizeof path, "%s/nope.yaml", g_dir);
    tl_status st = tl_config_load(path, NULL, 0, &c, &err);
    CHECK(st == TL_ERR_INPUT && strstr(err.msg, path) && strstr(err.msg, "cannot open"), "missing file: %s",
          err.msg);
    st = tl_config_load(g_dir, NULL, 0, &c, &err);
    CHECK(st == TL_ERR_INPUT && strstr(err.msg, g_dir), "directory: %s", err.msg);

    /* A string longer than its field. */
    char text[700];
    char longname[300];
    memset(longname, 'a', 299);
    longname[299] = 0;
    snprintf(text, sizeof text, "model: {path: m}\nrun:\n  name: %s\n", longname);
    const char *p = write_file("longname.yaml", text);
    st = tl_config_load(p, NULL, 0, &c, &err);
    snprintf(path, sizeof path, "%s:3: run.name: ", p);
    check_error("longname", st, &err, path, "run.name", "at most 255");
}

/* ---- overrides ---- */

static void test_overrides(void) {
    tl_config c;
    tl_error err = {0};
    const char *p = write_file("ov.yaml", FULL);

    char *ok[] = {"train.lr=0.5", "adapter.targets=[q_proj,v_proj]", "data.eval=~", "train.steps=5",
                  "train.steps=6", "adapter.rslora=false", "run.seed=42", "model.path='dir: with colon'",
                  "run.output_dir=o u t", "train.resume=runs/x/checkpoints/step_00000010"};
    poison(&c);
    CHECK(tl_config_load(p, ok, (int)(sizeof ok / sizeof ok[0]), &c, &err) == TL_OK, "overrides: %s", err.msg);
    CHECK(c.lr == 0.5, "lr %g", c.lr);
    CHECK(c.adapter_targets == (T(TL_T_Q) | T(TL_T_V)), "targets 0x%x", c.adapter_targets);
    CHECK(c.data_eval[0] == 0, "data.eval=~ unsets: '%s'", c.data_eval);
    CHECK(c.steps == 6, "the last override wins: %" PRId64, c.steps);
    CHECK(c.adapter_rslora == 0 && c.seed == 42, "rslora %d seed %" PRIu64, c.adapter_rslora, c.seed);
    CHECK(!strcmp(c.model_path, "dir: with colon"), "quoted override '%s'", c.model_path);
    CHECK(!strcmp(c.output_dir, "o u t"), "output_dir '%s'", c.output_dir);
    CHECK(c.resume == TL_RESUME_PATH && !strcmp(c.resume_path, "runs/x/checkpoints/step_00000010"), "resume '%s'",
          c.resume_path);
    CHECK(c.adapter_rank == 16 && !strcmp(c.run_name, "exp1"), "untouched keys keep the file's values");

    /* Block-style list, an empty value for the optional key, and flow list with spaces. */
    char *ok2[] = {"data.eval=", "adapter.targets=[ gate_proj , up_proj ]", "run.name=foo"};
    p = write_file("ov2.yaml", "model: {path: m}\ndata: {eval: e.h5}\n");
    CHECK(tl_config_load(p, ok2, 3, &c, &err) == TL_OK, "overrides 2: %s", err.msg);
    CHECK(c.data_eval[0] == 0, "data.eval= unsets");
    CHECK(c.adapter_targets == (T(TL_T_GATE) | T(TL_T_UP)), "targets 0x%x", c.adapter_targets);
    CHECK(!strcmp(c.run_name, "foo") && !strcmp(c.output_dir, "runs/foo"),
          "run.name override moves the default output_dir: %s %s", c.run_name, c.output_dir);

    /* No file at all: overrides only. */
    char *only[] = {"model.path=m", "train.backend=cpu"};
    poison(&c);
    CHECK(tl_config_load(NULL, only, 2, &c, &err) == TL_OK, "no file: %s", err.msg);
    CHECK(!strcmp(c.run_name, "run") && !strcmp(c.output_dir, "runs/run"), "no file: name %s dir %s", c.run_name,
          c.output_dir);
    CHECK(c.backend == TL_BACKEND_CPU && !strcmp(c.model_path, "m"), "no file values");
    CHECK(tl_config_load(NULL, NULL, 0, &c, &err) == TL_ERR_INPUT && !strcmp(err.msg, "model.path: required (the HF "
          "model directory to train on; set it in the model section or with model.path=DIR)"), "no file, nothing: %s",
          err.msg);

    /* The empty file needs model.path, which an override can give. */
    p = write_file("empty_ok.yaml", "");
    poison(&c);
    CHECK(tl_config_load(p, only, 1, &c, &err) == TL_OK, "empty + override: %s", err.msg);
    check_defaults(&c);
    CHECK(!strcmp(c.run_name, "empty_ok"), "name %s", c.run_name);

    /* The cross-key rule runs after the overrides: a file that breaks it is fixed by one. */
    p = write_file("cross_fix.yaml", "model: {path: m}\ndata: {max_seq_len: 1024}\ntrain: {micro_batch_tokens: 512}\n");
    char *fix[] = {"data.max_seq_len=256"};
    CHECK(tl_config_load(p, fix, 1, &c, &err) == TL_OK, "cross fixed by override: %s", err.msg);
    CHECK(c.data_max_seq_len == 256 && c.micro_batch_tokens == 512, "cross fixed values");
    p = write_file("cross_eq.yaml", "model: {path: m}\ndata: {max_seq_len: 512}\ntrain: {micro_batch_tokens: 512}\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "micro_batch_tokens == max_seq_len is fine: %s", err.msg);

    /* Bad overrides: the message starts with the override, then the key. */
    struct {
        const char *ov, *key, *frag;
    } bad[] = {
        {"train.lr=abc", "train.lr", "train.lr: expected a number"},
        {"train.lrr=1", "train.lrr", "did you mean train.lr?"},
        {"lr=1", "lr", "did you mean train.lr?"},
        {"train=5", "train", "unknown key"},
        {"train.steps", "", "expected key=value"},
        {"=3", "", "key is empty"},
        {"adapter.targets=[q_proj", "adapter.targets", "malformed YAML"},
        {"adapter.targets=[q_proj,q_proj]", "adapter.targets", "listed twice"},
        {"adapter.targets=[]", "adapter.targets", "empty"},
        {"train.lr={a: 1}", "train.lr", "got a mapping"},
        {"train.lr=", "train.lr", "got null"},
        {"model.path=", "model.path", "got null"},
        {"adapter.rank=0", "adapter.rank", "1 <= adapter.rank <= 1024"},
        {"train.steps=010", "train.steps", "leading zero"},
        {"train.steps=9007199254740993", "train.steps", "9007199254740992"}, /* 2^53 + 1: past what JSON keeps */
        {"task.type=ppo", "task.type", "sft, dpo, reward, grpo or rloo"},
        {"train.micro_batch_tokens=16", "train.micro_batch_tokens", "data.max_seq_len (128"},
        {"data.max_seq_len=2048", "data.max_seq_len", "train.micro_batch_tokens (1024"},
    };
    p = write_file("ov3.yaml", FULL);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char ovbuf[200];
        snprintf(ovbuf, sizeof ovbuf, "%s", bad[i].ov);
        char *ovs[] = {"train.steps=9", ovbuf};
        char prefix[300];
        snprintf(prefix, sizeof prefix, "override '%s': %s%s", bad[i].ov, bad[i].key, bad[i].key[0] ? ": " : "");
        poison(&c);
        tl_status st = tl_config_load(p, ovs, 2, &c, &err);
        check_error(bad[i].ov, st, &err, prefix, bad[i].key, bad[i].frag);
        CHECK(poisoned(&c), "%s: a failed load must leave the config untouched", bad[i].ov);
    }
    /* The brief's exact message shape. */
    char *lr_abc[] = {"train.lr=abc"};
    tl_config_load(p, lr_abc, 1, &c, &err);
    CHECK(strstr(err.msg, "override 'train.lr=abc': train.lr: expected a number") == err.msg, "shape: %s", err.msg);
}

/* ---- round trips ---- */

static void rnd_string(char *out, size_t cap, int allow_weird) {
    static const char *const pieces[] = {"a", "b", "Z", "0", "7", "_", "-", ".", "/", " ", ":", ": ", "#", " #",
                                         "\"", "'", "\\", "\n", "\t", "{", "}", "[", "]", ",", "&", "*", "!",
                                         "%", "@", "`", "|", ">", "?", "~", "\xc3\xa9", "\xe6\x97\xa5",
                                         "\xc2\x85", "\xc2\x90", "\xe2\x80\xa8", "\xe2\x80\xa9", "\x7f", "\x01",
                                         "\r", "\xef\xbb\xbf", "\xf0\x9f\x98\x80"};
    static const char *const whole[] = {"null", "~", "true", "False", "yes", "no", "0", "010", "1e3", "-", "- a",
                                        " lead", "trail ", "a: b", "---", "...", "x", "runs/a b/c"};
    size_t np = sizeof pieces / sizeof pieces[0];
    if (allow_weird && rnd() % 4 == 0) {
        snprintf(out, cap, "%s", whole[rnd() % (sizeof whole / sizeof whole[0])]);
        return;
    }
    size_t n = 0, want = (size_t)rnd_int(1, 40);
    out[0] = 0;
    while (n < want) {
        const char *pc = allow_weird ? pieces[rnd() % np] : pieces[rnd() % 9];
        size_t l = strlen(pc);
        if (n + l + 1 > cap) break;
        memcpy(out + n, pc, l + 1);
        n += l;
    }
    if (!out[0]) snprintf(out, cap, "x");
}

static void rnd_config(tl_config *c) {
    tl_config_defaults(c);
    rnd_string(c->run_name, sizeof c->run_name, 1);
    rnd_string(c->output_dir, sizeof c->output_dir, 1);
    c->seed = rnd();
    rnd_string(c->model_path, sizeof c->model_path, 1);
    c->adapter_rank = rnd_int(1, 1024);
    c->adapter_alpha = rnd() % 3 ? exp(rnd_unit() * 20 - 10) : (double)rnd_int(1, 64);
    c->adapter_dropout = rnd() % 3 ? rnd_unit() : 0.0;
    do c->adapter_targets = (uint32_t)(rnd() & ALL_TARGETS);
    while (!c->adapter_targets);
    c->adapter_key = (tl_adapter_key)(rnd() % 3); /* user, group, global */
    c->adapter_rslora = (int)(rnd() & 1);
    rnd_string(c->data_train, sizeof c->data_train, 1);
    if (rnd() & 1)
        rnd_string(c->data_eval, sizeof c->data_eval, 1);
    else
        c->data_eval[0] = 0;
    c->data_max_seq_len = rnd_int(2, 1 << 20);
    c->backend = (tl_backend_choice)(rnd() % 3); /* auto, cpu, cuda */
    c->threads = rnd_int(0, 256);
    c->steps = (int64_t)(rnd() >> 11) | 1; /* step counts stop at 2^53 */
    c->examples_per_adapter = rnd_int(1, 1 << 30);
    c->adapters_per_step = rnd_int(0, 1 << 30);
    c->micro_batch_tokens = rnd_int(c->data_max_seq_len, INT32_MAX);
    c->lr = exp(rnd_unit() * 40 - 30);
    c->schedule = (tl_schedule)(rnd() % 3); /* constant, linear, cosine */
    c->warmup_steps = (int64_t)(rnd() >> (rnd() % 53 + 11));
    c->weight_decay = rnd() % 3 ? rnd_unit() * 0.5 : 0.0;
    c->grad_clip = rnd() % 3 ? rnd_unit() * 10 : 0.0;
    c->beta1 = rnd_unit();
    c->beta2 = rnd_unit();
    c->adam_eps = exp(rnd_unit() * -40);
    c->log_every = rnd_int(1, 1000);
    c->eval_every = rnd() % 2 ? 0 : (int64_t)(rnd() >> 11);
    c->checkpoint_every = rnd() % 2 ? 0 : rnd_int(1, 100000);
    c->keep_checkpoints = rnd_int(1, 100);
    switch (rnd() % 3) {
    case 0: c->resume = TL_RESUME_AUTO; break;
    case 1: c->resume = TL_RESUME_NEVER; break;
    default: c->resume = TL_RESUME_PATH, rnd_string(c->resume_path, sizeof c->resume_path, 1);
    }
    c->dist_strategy = (tl_dist_strategy)(rnd() % 3); /* auto, user_shard, data_parallel */
    c->task_type = (tl_task_type)(rnd() % 5); /* sft, dpo, reward, grpo, rloo */
    c->task_beta = rnd() % 3 ? rnd_unit() : 0.0;
    if (rnd() & 1) rnd_string(c->task_reward_model, sizeof c->task_reward_model, 1);
    c->task_num_generations = rnd_int(2, 65536);
    c->task_max_completion_length = rnd_int(1, 1 << 20);
    c->task_temperature = rnd() % 3 ? rnd_unit() * 3 : 0.0;
    c->task_top_p = 1.0 - rnd_unit() * 0.99;
    c->task_epsilon = 0.01 + rnd_unit() * 0.98;
    c->task_epsilon_high = rnd() % 2 ? rnd_unit() : 0.0;
    c->task_loss_type = (tl_task_loss_type)(rnd() % 3); /* grpo, bnpo, dr_grpo */
    c->task_scale_rewards = (int)(rnd() & 1);
    c->dist_timeout_s = exp(rnd_unit() * 10);
    if (rnd() & 1) rnd_string(c->dist_rendezvous_dir, sizeof c->dist_rendezvous_dir, 1);
    c->cluster_nodes = rnd_int(1, 100000);
    c->cluster_gpus_per_node = rnd_int(0, 16);
    c->cluster_tasks_per_node = rnd_int(0, 64);
    c->cluster_cpus_per_task = rnd_int(0, 128);
    if (rnd() & 1) rnd_string(c->cluster_partition, sizeof c->cluster_partition, 1);
    if (rnd() & 1) rnd_string(c->cluster_time, sizeof c->cluster_time, 1);
    if (rnd() & 1) c->cluster_mpi[0] = 0;
    c->cluster_requeue = (int)(rnd() & 1);
    /* string lists: entries of any characters but newlines (entries are lines) */
    char *lists[3] = {c->cluster_sbatch, c->cluster_setup, c->cluster_env};
    for (int l = 0; l < 3; l++) {
        size_t k = 0;
        int n = (int)(rnd() % 4);
        for (int i = 0; i < n; i++) {
            char e[64];
            rnd_string(e, sizeof e, 1);
            for (char *q = e; *q; q++)
                if (*q == '\n' || *q == '\r') *q = 'n';
            if (!e[0]) continue;
            k += (size_t)snprintf(lists[l] + k, 4096 - k, "%s\n", e);
        }
    }
}

static tl_status write_and_load(const tl_config *c, const char *name, tl_config *back, tl_error *err) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return tl_fail(err, TL_ERR_RUNTIME, "cannot write %s", path);
    tl_config_write_yaml(c, f);
    if (fclose(f) != 0) return tl_fail(err, TL_ERR_RUNTIME, "cannot close %s", path);
    poison(back);
    return tl_config_load(path, NULL, 0, back, err);
}

static void test_round_trip(void) {
    tl_config c, back;
    tl_error err = {0};

    /* The full file: load, write, load again. Every dotted key appears in the written file. */
    const char *p = write_file("rt_full.yaml", FULL);
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "%s", err.msg);
    CHECK(write_and_load(&c, "rt_full_out.yaml", &back, &err) == TL_OK, "rt full: %s", err.msg);
    const char *d = config_diff(&c, &back);
    CHECK(d == NULL, "round trip of the full config differs at %s", d ? d : "");
    check_full(&back);
    {
        char path[600], text[8192];
        snprintf(path, sizeof path, "%s/rt_full_out.yaml", g_dir);
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
        if (f) fclose(f);
        text[n] = 0;
        static const char *const expect[] = {
            "run:\n  name: exp1\n  output_dir: out/exp1\n  seed: 18446744073709551615\n",
            "model:\n  path: ../models/m\n",
            "\n  targets: [q_proj, down_proj]\n",
            "  rslora: true\n",
            "  eval: \"d/eval set: 1.h5\"\n",
            "  lr: 0.0003\n",
            "  beta2: 0.95\n",
            "  resume: never\n"};
        for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
            CHECK(strstr(text, expect[i]), "written YAML lacks '%s':\n%s", expect[i], text);
    }

    /* Defaults (data.eval unset, written as ~). */
    tl_config_defaults(&c);
    snprintf(c.model_path, sizeof c.model_path, "m");
    CHECK(write_and_load(&c, "rt_defaults.yaml", &back, &err) == TL_OK, "rt defaults: %s", err.msg);
    d = config_diff(&c, &back);
    CHECK(d == NULL, "round trip of defaults differs at %s", d ? d : "");

    /* Random configurations, strings full of YAML-special characters. */
    for (int it = 0; it < 300; it++) {
        rnd_config(&c);
        char name[64];
        snprintf(name, sizeof name, "rt_rand_%d.yaml", it % 4);
        tl_status st = write_and_load(&c, name, &back, &err);
        CHECK(st == TL_OK, "random round trip %d: %s", it, err.msg);
        if (st != TL_OK) break;
        d = config_diff(&c, &back);
        CHECK(d == NULL, "random round trip %d differs at %s", it, d ? d : "");
        if (d) break;
    }
}

/* Random valid values written by hand (not by tl_config_write_yaml) load exactly. */
static void test_random_values(void) {
    for (int it = 0; it < 100; it++) {
        tl_config want, dflt;
        rnd_config(&want);
        tl_config_defaults(&dflt); /* the text below leaves the dist and cluster sections (the struct's tail) out */
        memcpy(&want.dist_strategy, &dflt.dist_strategy, sizeof want - offsetof(tl_config, dist_strategy));
        /* ... and the task section */
        memcpy(&want.task_type, &dflt.task_type,
               offsetof(tl_config, task_scale_rewards) + sizeof want.task_scale_rewards - offsetof(tl_config, task_type));
        rnd_string(want.run_name, sizeof want.run_name, 0);
        rnd_string(want.output_dir, sizeof want.output_dir, 0);
        snprintf(want.model_path, sizeof want.model_path, "m%d", it);
        snprintf(want.data_train, sizeof want.data_train, "t.h5");
        snprintf(want.data_eval, sizeof want.data_eval, "e.h5");
        want.resume = TL_RESUME_AUTO, want.resume_path[0] = 0;
        char text[16384];
        snprintf(text, sizeof text,
                 "run: {name: '%s', output_dir: '%s', seed: %" PRIu64 "}\n"
                 "model: {path: %s}\n"
                 "adapter: {rank: %d, alpha: %.17g, dropout: %.17g, targets: all-linear, key: %s, rslora: %s}\n"
                 "data: {train: t.h5, eval: e.h5, max_seq_len: %d}\n"
                 "train:\n  backend: %s\n  threads: %d\n  steps: %" PRId64 "\n  examples_per_adapter: %d\n"
                 "  adapters_per_step: %d\n  micro_batch_tokens: %d\n  lr: %.17e\n  schedule: %s\n"
                 "  warmup_steps: %" PRId64 "\n  weight_decay: %.17g\n  grad_clip: %.17g\n  beta1: %.17g\n"
                 "  beta2: %.17g\n  adam_eps: %.17E\n  log_every: %" PRId64 "\n  eval_every: %" PRId64 "\n"
                 "  checkpoint_every: %" PRId64 "\n  keep_checkpoints: %d\n",
                 want.run_name, want.output_dir, want.seed, want.model_path, want.adapter_rank, want.adapter_alpha,
                 want.adapter_dropout, tl_adapter_key_names[want.adapter_key], want.adapter_rslora ? "true" : "false", want.data_max_seq_len,
                 tl_backend_choice_names[want.backend], want.threads, want.steps, want.examples_per_adapter, want.adapters_per_step,
                 want.micro_batch_tokens, want.lr, tl_schedule_names[want.schedule], want.warmup_steps, want.weight_decay,
                 want.grad_clip, want.beta1, want.beta2, want.adam_eps, want.log_every, want.eval_every,
                 want.checkpoint_every, want.keep_checkpoints);
        want.adapter_targets = ALL_TARGETS;
        const char *p = write_file("rand_values.yaml", text);
        tl_config got;
        tl_error err = {0};
        poison(&got);
        tl_status st = tl_config_load(p, NULL, 0, &got, &err);
        CHECK(st == TL_OK, "random values %d: %s\n%s", it, err.msg, text);
        if (st != TL_OK) break;
        const char *d = config_diff(&want, &got);
        CHECK(d == NULL, "random values %d differ at %s\n%s", it, d ? d : "", text);
        if (d) break;
    }
}

/* cluster.* string lists: block and flow lists, overrides, null, and what is refused */
static void test_string_lists(void) {
    tl_config c;
    tl_error err = {0};
    const char *p = write_file("lists.yaml",
                               "model: {path: m}\n"
                               "cluster:\n"
                               "  sbatch:\n"
                               "    - --qos=high\n"
                               "    - \"--constraint=h100|a100\"\n"
                               "  env: [NCCL_DEBUG=WARN, 'A=b c']\n"
                               "  setup: ~\n");
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_OK, "lists: %s", err.msg);
    CHECK(!strcmp(c.cluster_sbatch, "--qos=high\n--constraint=h100|a100\n"), "sbatch '%s'", c.cluster_sbatch);
    CHECK(!strcmp(c.cluster_env, "NCCL_DEBUG=WARN\nA=b c\n"), "env '%s'", c.cluster_env);
    CHECK(c.cluster_setup[0] == 0, "setup should be empty");
    char *ov[] = {"cluster.setup=[module load cuda, echo hi]", "cluster.env=[]"};
    CHECK(tl_config_load(p, ov, 2, &c, &err) == TL_OK, "list overrides: %s", err.msg);
    CHECK(!strcmp(c.cluster_setup, "module load cuda\necho hi\n") && c.cluster_env[0] == 0, "setup '%s' env '%s'",
          c.cluster_setup, c.cluster_env);
    struct { const char *ov, *want; } bad[] = {
        {"cluster.env=NCCL_DEBUG=WARN", "expected a list of strings"},
        {"cluster.env=[[a]]", "expected a string in the list"},
        {"cluster.env=['']", "non-empty single lines"},
        {"cluster.env=[~]", "expected a string in the list"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *o1[] = {(char *)bad[i].ov};
        err = (tl_error){0};
        tl_status st = tl_config_load(p, o1, 1, &c, &err);
        CHECK(st == TL_ERR_INPUT && strstr(err.msg, "cluster.env") && strstr(err.msg, bad[i].want),
              "bad list %s: status %d '%s'", bad[i].ov, (int)st, err.msg);
    }
    /* longer than the field: refused, not cut */
    char big[10000] = "model: {path: m}\ncluster:\n  setup:\n";
    for (int i = 0; i < 300; i++) strcat(big, "    - echo 0123456789\n"); /* 300 x 16 bytes stored > 4096 */
    p = write_file("lists_big.yaml", big);
    err = (tl_error){0};
    CHECK(tl_config_load(p, NULL, 0, &c, &err) == TL_ERR_INPUT && strstr(err.msg, "too long"), "long list: '%s'",
          err.msg);
}

static void test_target_names(void) {
    static const char *const want[TL_N_TARGETS] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
    for (int t = 0; t < TL_N_TARGETS; t++)
        CHECK(tl_target_names[t] && !strcmp(tl_target_names[t], want[t]), "tl_target_names[%d]", t);
}

static void cleanup(void) {
    DIR *d = opendir(g_dir);
    if (!d) return;
    struct dirent *e;
    char path[600];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", g_dir, e->d_name);
        if (unlink(path) != 0) fprintf(stderr, "warning: cannot remove %s\n", path);
    }
    closedir(d);
    if (rmdir(g_dir) != 0) fprintf(stderr, "warning: cannot remove %s\n", g_dir);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/tl_config_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    /* Fresh values each run; TL_TEST_SEED=<printed seed> replays a failing run. */
    const char *env_seed = getenv("TL_TEST_SEED");
    g_rng = env_seed ? strtoull(env_seed, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    uint64_t seed = g_rng;
    test_target_names();
    test_full_and_defaults();
    test_bad_files();
    test_overrides();
    test_string_lists();
    test_round_trip();
    test_random_values();
    if (g_fail) {
        fprintf(stderr, "test_config: %d failure(s) (rng seed %" PRIu64 "; files kept in %s)\n", g_fail, seed, g_dir);
        return 1;
    }
    cleanup();
    printf("test_config: ok (%zu error cases, rng seed %" PRIu64 ")\n", sizeof BAD / sizeof BAD[0], seed);
    return 0;
}
