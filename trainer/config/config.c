/* config: the run configuration (tl_config.h), read from strict YAML with libyaml, plus "key=value" overrides.
 *
 * Every key is one row of a table (dotted name, kind, field, allowed range). The loader walks libyaml's
 * document tree (so every node carries its line), the overrides go through the same per-key setter, and
 * tl_config_write_yaml walks the same table, so the three cannot drift apart. A typo in a config must never be
 * silently ignored: unknown keys, duplicates, wrong types and out-of-range values are all errors. */
#include "trainer/config/tl_config.h"

#include "data/tl_io.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

const char *const tl_target_names[TL_N_TARGETS] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};

#define ALL_TARGETS ((1u << TL_N_TARGETS) - 1u)

/* ---- the key table ---- */

typedef enum {
    K_STR,     /* non-empty string */
    K_OPTSTR,  /* string; null or "" means unset ("") */
    K_ENUM,    /* one of choices, stored as its index (an enum of tl_config.h) */
    K_RESUME,  /* train.resume: auto | never (tl_resume) | a non-empty path (then TL_RESUME_PATH + resume_path) */
    K_INT,     /* int in [imin, imax] */
    K_I64,     /* int64_t in [imin, imax] */
    K_U64,     /* uint64_t, any */
    K_DBL,     /* finite double in the range given by dlo/dhi and the D_* flags */
    K_BOOL,    /* true | false */
    K_TARGETS, /* list of target module names, or all-linear */
    K_STRLIST  /* list of strings (null or [] = empty), kept as lines: no entry may hold a newline */
} kind;

enum { D_LO_OPEN = 1, D_HAS_HI = 2, D_HI_OPEN = 4 };

typedef struct {
    const char *key; /* dotted: "train.lr" */
    kind k;
    size_t off, cap; /* field offset; buffer size for strings */
    int64_t imin, imax;
    double dlo, dhi;
    int dflags;
    const char *const *choices; /* NULL-terminated, for K_ENUM */
} key_desc;

static const char *const SECTIONS[] = {"run", "model", "adapter", "data", "task", "train", "dist", "cluster"};
#define N_SECTIONS ((int)(sizeof SECTIONS / sizeof SECTIONS[0]))

/* the words of each choice key in the order of its enum (tl_config.h), NULL-terminated */
const char *const tl_adapter_key_names[] = {"user", "group", "global", NULL};
const char *const tl_task_type_names[] = {"sft", "dpo", "reward", "grpo", "rloo", NULL};
const char *const tl_task_loss_type_names[] = {"grpo", "bnpo", "dr_grpo", NULL};
const char *const tl_backend_choice_names[] = {"auto", "cpu", "cuda", NULL};
const char *const tl_schedule_names[] = {"constant", "linear", "cosine", NULL};
const char *const tl_task_loss_names[] = {"sigmoid", "ipo", "hinge", "robust", "simpo", NULL};
const char *const tl_dist_strategy_names[] = {"auto", "user_shard", "data_parallel", NULL};
const char *const tl_store_choice_names[] = {"auto", "on", "off", NULL};
#define KEY_CHOICES tl_adapter_key_names
#define TASK_CHOICES tl_task_type_names
#define BACKEND_CHOICES tl_backend_choice_names
#define SCHEDULE_CHOICES tl_schedule_names
#define PREF_LOSS_CHOICES tl_task_loss_names
#define STRATEGY_CHOICES tl_dist_strategy_names
/* K_ENUM stores an int: every choice enum must be one */
_Static_assert(sizeof(tl_adapter_key) == sizeof(int) && sizeof(tl_task_type) == sizeof(int) &&
                   sizeof(tl_task_loss) == sizeof(int) && sizeof(tl_backend_choice) == sizeof(int) &&
                   sizeof(tl_schedule) == sizeof(int) && sizeof(tl_dist_strategy) == sizeof(int) &&
                   sizeof(tl_store_choice) == sizeof(int) && sizeof(tl_task_loss_type) == sizeof(int),
               "choice enums are ints");

#define F(field) offsetof(tl_config, field)
#define STR(name, field) {name, K_STR, F(field), sizeof(((tl_config *)0)->field), 0, 0, 0, 0, 0, NULL}
#define OPTSTR(name, field) {name, K_OPTSTR, F(field), sizeof(((tl_config *)0)->field), 0, 0, 0, 0, 0, NULL}
#define ENUM(name, field, ch) {name, K_ENUM, F(field), sizeof(((tl_config *)0)->field), 0, 0, 0, 0, 0, ch}
#define INT(name, field, lo, hi) {name, K_INT, F(field), 0, lo, hi, 0, 0, 0, NULL}
/* Step counts (train.steps, warmup, every-N): at most 2^53, the largest integer that checkpoints, metrics.jsonl and
 * eval.json (JSON numbers, doubles) carry exactly; a run that long is absurd anyway. */
#define TL_MAX_STEP_COUNT (INT64_C(1) << 53)
#define I64(name, field, lo) {name, K_I64, F(field), 0, lo, TL_MAX_STEP_COUNT, 0, 0, 0, NULL}
#define DBL(name, field, lo, hi, fl) {name, K_DBL, F(field), 0, 0, 0, lo, hi, fl, NULL}
#define STRLIST(name, field) {name, K_STRLIST, F(field), sizeof(((tl_config *)0)->field), 0, 0, 0, 0, 0, NULL}

static const key_desc KEYS[] = {
    STR("run.name", run_name),
    STR("run.output_dir", output_dir),
    {"run.seed", K_U64, F(seed), 0, 0, 0, 0, 0, 0, NULL},
    STR("model.path", model_path),
    INT("adapter.rank", adapter_rank, 1, 1024),
    DBL("adapter.alpha", adapter_alpha, 0, 0, D_LO_OPEN),
    DBL("adapter.dropout", adapter_dropout, 0, 1, D_HAS_HI | D_HI_OPEN),
    {"adapter.targets", K_TARGETS, F(adapter_targets), 0, 0, 0, 0, 0, 0, NULL},
    ENUM("adapter.key", adapter_key, KEY_CHOICES),
    {"adapter.rslora", K_BOOL, F(adapter_rslora), 0, 0, 0, 0, 0, 0, NULL},
    OPTSTR("adapter.init_from", adapter_init_from),
    OPTSTR("data.train", data_train),
    OPTSTR("data.eval", data_eval),
    INT("data.max_seq_len", data_max_seq_len, 2, INT_MAX),
    INT("data.eval_generate", data_eval_generate, 0, 4096),
    ENUM("task.type", task_type, TASK_CHOICES),
    DBL("task.beta", task_beta, 0, 0, 0), /* > 0 for dpo: checked by tl_pref_opts_check */
    ENUM("task.loss", task_loss, PREF_LOSS_CHOICES),
    DBL("task.label_smoothing", task_label_smoothing, 0, 0.5, D_HAS_HI | D_HI_OPEN),
    DBL("task.gamma", task_gamma, 0, 0, 0),
    DBL("task.sft_weight", task_sft_weight, 0, 0, 0),
    {"task.precompute_ref", K_BOOL, F(task_precompute_ref), 0, 0, 0, 0, 0, 0, NULL},
    DBL("task.center_rewards", task_center_rewards, 0, 0, 0),
    OPTSTR("task.reward_model", task_reward_model),
    INT("task.num_generations", task_num_generations, 2, 65536),
    INT("task.max_completion_length", task_max_completion_length, 1, INT_MAX),
    DBL("task.temperature", task_temperature, 0, 0, 0),
    DBL("task.top_p", task_top_p, 0, 1, D_LO_OPEN | D_HAS_HI),
    DBL("task.epsilon", task_epsilon, 0, 1, D_LO_OPEN | D_HAS_HI | D_HI_OPEN),
    DBL("task.epsilon_high", task_epsilon_high, 0, 0, 0),
    ENUM("task.loss_type", task_loss_type, tl_task_loss_type_names),
    {"task.scale_rewards", K_BOOL, F(task_scale_rewards), 0, 0, 0, 0, 0, 0, NULL},
    ENUM("train.backend", backend, BACKEND_CHOICES),
    INT("train.threads", threads, 0, TL_MAX_THREADS),
    I64("train.steps", steps, 1),
    INT("train.examples_per_adapter", examples_per_adapter, 1, INT_MAX),
    INT("train.adapters_per_step", adapters_per_step, 0, INT_MAX),
    INT("train.micro_batch_tokens", micro_batch_tokens, 1, INT_MAX),
    DBL("train.lr", lr, 0, 0, D_LO_OPEN),
    ENUM("train.schedule", schedule, SCHEDULE_CHOICES),
    I64("train.warmup_steps", warmup_steps, 0),
    DBL("train.weight_decay", weight_decay, 0, 0, 0),
    DBL("train.grad_clip", grad_clip, 0, 0, 0),
    DBL("train.beta1", beta1, 0, 1, D_HAS_HI | D_HI_OPEN),
    DBL("train.beta2", beta2, 0, 1, D_HAS_HI | D_HI_OPEN),
    DBL("train.adam_eps", adam_eps, 0, 0, D_LO_OPEN),
    I64("train.log_every", log_every, 1),
    I64("train.eval_every", eval_every, 0),
    I64("train.checkpoint_every", checkpoint_every, 0),
    INT("train.keep_checkpoints", keep_checkpoints, 1, INT_MAX),
    ENUM("train.store", store, tl_store_choice_names),
    I64("train.store_min_bytes", store_min_bytes, 0),
    {"train.store_prefetch", K_BOOL, F(store_prefetch), 0, 0, 0, 0, 0, 0, NULL},
    DBL("train.store_compact_below", store_compact_below, 0, 1, D_HAS_HI | D_HI_OPEN),
    {"train.continue", K_BOOL, F(continue_run), 0, 0, 0, 0, 0, 0, NULL},
    {"train.resume", K_RESUME, F(resume), sizeof(((tl_config *)0)->resume_path), 0, 0, 0, 0, 0, NULL},
    ENUM("dist.strategy", dist_strategy, STRATEGY_CHOICES),
    DBL("dist.timeout_s", dist_timeout_s, 0, 0, D_LO_OPEN),
    OPTSTR("dist.rendezvous_dir", dist_rendezvous_dir),
    INT("cluster.nodes", cluster_nodes, 1, 100000),
    INT("cluster.gpus_per_node", cluster_gpus_per_node, 0, 1024),
    INT("cluster.tasks_per_node", cluster_tasks_per_node, 0, 4096),
    INT("cluster.cpus_per_task", cluster_cpus_per_task, 0, 4096),
    OPTSTR("cluster.partition", cluster_partition),
    OPTSTR("cluster.account", cluster_account),
    OPTSTR("cluster.time", cluster_time),
    OPTSTR("cluster.mem", cluster_mem),
    OPTSTR("cluster.job_name", cluster_job_name),
    OPTSTR("cluster.mpi", cluster_mpi),
    INT("cluster.signal_s", cluster_signal_s, 0, 86400),
    {"cluster.requeue", K_BOOL, F(cluster_requeue), 0, 0, 0, 0, 0, 0, NULL},
    OPTSTR("cluster.tailor", cluster_tailor),
    STRLIST("cluster.sbatch", cluster_sbatch),
    STRLIST("cluster.setup", cluster_setup),
    STRLIST("cluster.env", cluster_env),
};
#define N_KEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

static int key_index(const char *dotted) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].key, dotted)) return i;
    return -1;
}

static const char *leaf_of(const char *dotted) {
    const char *d = strrchr(dotted, '.');
    return d ? d + 1 : dotted;
}

void tl_config_defaults(tl_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->run_name, sizeof c->run_name, "run");
    snprintf(c->output_dir, sizeof c->output_dir, "runs/run");
    c->seed = 0;
    c->adapter_rank = 8;
    c->adapter_alpha = 16.0;
    c->adapter_dropout = 0.0;
    c->adapter_targets = (1u << TL_T_Q) | (1u << TL_T_K) | (1u << TL_T_V) | (1u << TL_T_O);
    c->adapter_key = TL_KEY_USER;
    c->adapter_rslora = 0;
    c->data_max_seq_len = 512;
    c->task_type = TL_TASK_SFT;
    c->task_beta = 0.1;
    c->task_loss = TL_LOSS_SIGMOID;
    c->task_gamma = 0.5;
    c->task_num_generations = 4;
    c->task_max_completion_length = 64;
    c->task_temperature = 1.0;
    c->task_top_p = 1.0;
    c->task_epsilon = 0.2;
    c->task_loss_type = TL_RL_LOSS_BNPO;
    c->task_scale_rewards = 1;
    c->backend = TL_BACKEND_AUTO;
    c->threads = 0;
    c->steps = 100;
    c->examples_per_adapter = 4;
    c->adapters_per_step = 0;
    c->micro_batch_tokens = 4096;
    c->lr = 1e-4;
    c->schedule = TL_SCHEDULE_COSINE;
    c->warmup_steps = 0;
    c->weight_decay = 0.0;
    c->grad_clip = 1.0;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->adam_eps = 1e-8;
    c->log_every = 10;
    c->eval_every = 0;
    c->checkpoint_every = 0;
    c->keep_checkpoints = 2;
    c->resume = TL_RESUME_AUTO;
    c->dist_strategy = TL_STRATEGY_AUTO;
    c->store = TL_STORE_AUTO;
    c->store_min_bytes = (int64_t)2 << 30;
    c->store_prefetch = 1;
    c->store_compact_below = 0.25;
    c->dist_timeout_s = 600.0;
    c->cluster_nodes = 1;
    snprintf(c->cluster_mpi, sizeof c->cluster_mpi, "pmix");
    c->cluster_signal_s = 90;
    c->cluster_requeue = 1;
}

/* ---- error messages ---- */

/* Where a value came from: a line of the config file, or one command-line override. */
typedef struct {
    const char *file;     /* config path, or NULL */
    const char *override; /* the whole "key=value" string, or NULL */
} source;

/* Per key: where its current value was set (for duplicate and cross-key messages). */
typedef struct {
    int set;              /* 0: default; 1: the file; 2 + i: override i (so later settings compare larger) */
    size_t line;
    const char *override;
} origin;

static tl_status fail_at(tl_error *err, const source *s, size_t line, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static tl_status fail_at(tl_error *err, const source *s, size_t line, const char *key, const char *fmt, ...) {
    char body[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    char where[600] = "";
    if (s && s->override)
        snprintf(where, sizeof where, "override '%.500s': ", s->override);
    else if (s && s->file && line)
        snprintf(where, sizeof where, "%.500s:%zu: ", s->file, line);
    else if (s && s->file)
        snprintf(where, sizeof where, "%.500s: ", s->file);
    return tl_fail(err, TL_ERR_INPUT, "%s%s%s%s", where, key ? key : "", key ? ": " : "", body);
}

/* A value as it appears in a message: quoted, cut after 60 bytes, control characters shown as '?'. */
static const char *shown(const char *v, char *buf, size_t cap) {
    size_t n = strlen(v), k = 0, lim = n > 60 ? 60 : n;
    if (cap < 70) return "(value)";
    buf[k++] = '\'';
    for (size_t i = 0; i < lim; i++) buf[k++] = (unsigned char)v[i] < 0x20 ? '?' : v[i];
    if (n > lim) memcpy(buf + k, "...", 3), k += 3;
    buf[k++] = '\'';
    buf[k] = 0;
    return buf;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    if (na > 63 || nb > 63) return SIZE_MAX;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= nb; j++) prev[j] = j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (nb + 1) * sizeof prev[0]);
    }
    return prev[nb];
}

/* The known key an unknown dotted key was probably meant to be, or -1: the closest within edit distance 2, else a
 * key with the same leaf name (train.rank for adapter.rank, a bare "lr" for train.lr). */
static int suggest_key(const char *dotted) {
    int best = -1;
    size_t bd = 3;
    for (int i = 0; i < N_KEYS; i++) {
        size_t d = edit_distance(dotted, KEYS[i].key);
        if (d < bd) bd = d, best = i;
    }
    const char *leaf = leaf_of(dotted);
    for (int i = 0; i < N_KEYS && best < 0; i++)
        if (!strcmp(leaf, leaf_of(KEYS[i].key))) best = i;
    return best;
}

/* "backend, threads, steps, ..." : the keys of one section, for an unknown-key message. */
static void section_keys(const char *section, char *buf, size_t cap) {
    size_t sl = strlen(section), k = 0;
    buf[0] = 0;
    for (int i = 0; i < N_KEYS; i++) {
        if (strncmp(KEYS[i].key, section, sl) != 0 || KEYS[i].key[sl] != '.') continue;
        int w = snprintf(buf + k, cap - k, "%s%s", k ? ", " : "", KEYS[i].key + sl + 1);
        if (w < 0 || (size_t)w >= cap - k) break;
        k += (size_t)w;
    }
}

static void choices_list(const char *const *ch, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; ch[i]; i++) {
        int w = snprintf(buf + k, cap - k, "%s%s", i ? (ch[i + 1] ? ", " : " or ") : "", ch[i]);
        if (w < 0 || (size_t)w >= cap - k) break;
        k += (size_t)w;
    }
}

static void targets_list(char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = 0;
    for (int t = 0; t < TL_N_TARGETS; t++) {
        int w = snprintf(buf + k, cap - k, "%s%s", t ? ", " : "", tl_target_names[t]);
        if (w < 0 || (size_t)w >= cap - k) break;
        k += (size_t)w;
    }
}

/* ---- scalar parsing ---- */

static size_t node_line(const yaml_node_t *n) { return n ? n->start_mark.line + 1 : 0; }

static int is_null(const yaml_node_t *n) {
    if (!n) return 1; /* an empty override value */
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *v = (const char *)n->data.scalar.value;
    return !v[0] || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

/* What a node is, for "expected X, got Y". */
static const char *describe(const yaml_node_t *n, char *buf, size_t cap) {
    if (is_null(n)) return "null";
    if (n->type == YAML_SEQUENCE_NODE) return "a list";
    if (n->type == YAML_MAPPING_NODE) return "a mapping";
    return shown((const char *)n->data.scalar.value, buf, cap);
}

typedef enum { INT_OK, INT_BAD, INT_LEADING_ZERO, INT_OVERFLOW } int_parse;

/* Decimal integer: optional sign, digits, no leading zero (so "010" cannot be mistaken for octal or 10). */
static int_parse parse_int(const char *s, int *neg, uint64_t *mag) {
    *neg = 0;
    *mag = 0;
    if (*s == '+' || *s == '-') *neg = *s++ == '-';
    if (!isdigit((unsigned char)*s)) return INT_BAD;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p)) return INT_BAD;
    if (s[0] == '0' && s[1]) return INT_LEADING_ZERO;
    uint64_t m = 0;
    for (const char *p = s; *p; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (m > (UINT64_MAX - d) / 10) return INT_OVERFLOW;
        m = m * 10 + d;
    }
    *mag = m;
    return INT_OK;
}

/* The node as a plain (unquoted, non-null) scalar: numbers and booleans are never quoted in YAML. */
static tl_status plain_scalar(const yaml_node_t *n, const source *s, const key_desc *kd, const char *expected,
                              const char **out, tl_error *err) {
    char b[96];
    if (is_null(n) || n->type != YAML_SCALAR_NODE)
        return fail_at(err, s, node_line(n), kd->key, "expected %s, got %s", expected, describe(n, b, sizeof b));
    const char *v = (const char *)n->data.scalar.value;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return fail_at(err, s, node_line(n), kd->key, "expected %s, got the quoted string %s (remove the quotes)",
                       expected, shown(v, b, sizeof b));
    *out = v;
    return TL_OK;
}

/* The shared front of the integer getters: a plain scalar in decimal, no leading zero. */
static tl_status scan_int(const yaml_node_t *n, const source *s, const key_desc *kd, const char *expected,
                          const char **v, int *neg, uint64_t *mag, int_parse *r, tl_error *err) {
    TL_TRY(plain_scalar(n, s, kd, expected, v, err));
    char b[96];
    *r = parse_int(*v, neg, mag);
    if (*r == INT_BAD)
        return fail_at(err, s, node_line(n), kd->key, "expected a decimal integer, got %s", shown(*v, b, sizeof b));
    if (*r == INT_LEADING_ZERO)
        return fail_at(err, s, node_line(n), kd->key, "%s has a leading zero, which is ambiguous (expected a "
                       "decimal integer such as 10)", shown(*v, b, sizeof b));
    return TL_OK;
}

static tl_status get_int(const yaml_node_t *n, const source *s, const key_desc *kd, int64_t *out, tl_error *err) {
    const char *v = "";
    int neg;
    uint64_t mag;
    int_parse r;
    TL_TRY(scan_int(n, s, kd, "an integer", &v, &neg, &mag, &r, err));
    size_t line = node_line(n);
    if (r == INT_OVERFLOW || (neg ? mag > (uint64_t)INT64_MAX + 1u : mag > (uint64_t)INT64_MAX))
        goto range;
    int64_t x = neg ? (mag == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    if (x < kd->imin || x > kd->imax) goto range;
    *out = x;
    return TL_OK;
range:
    /* An open-ended key states only its lower bound unless the value broke the type's upper one. */
    if ((kd->imax == INT64_MAX || kd->imax == INT_MAX || kd->imax == TL_MAX_STEP_COUNT) && r == INT_OK && neg)
        return fail_at(err, s, line, kd->key, "%s is out of range (expected %s >= %" PRId64 ")", v, kd->key,
                       kd->imin);
    if ((kd->imax == INT64_MAX || kd->imax == INT_MAX || kd->imax == TL_MAX_STEP_COUNT) && r == INT_OK &&
        mag < (uint64_t)kd->imin)
        return fail_at(err, s, line, kd->key, "%s is out of range (expected %s >= %" PRId64 ")", v, kd->key,
                       kd->imin);
    return fail_at(err, s, line, kd->key, "%s is out of range (expected %" PRId64 " <= %s <= %" PRId64 ")", v,
                   kd->imin, kd->key, kd->imax);
}

static tl_status get_u64(const yaml_node_t *n, const source *s, const key_desc *kd, uint64_t *out, tl_error *err) {
    const char *v = "";
    int neg;
    uint64_t mag;
    int_parse r;
    TL_TRY(scan_int(n, s, kd, "a non-negative integer", &v, &neg, &mag, &r, err));
    size_t line = node_line(n);
    if (r == INT_OVERFLOW || (neg && mag))
        return fail_at(err, s, line, kd->key, "%s is out of range (expected 0 <= %s <= %" PRIu64 ")", v, kd->key,
                       UINT64_MAX);
    *out = mag;
    return TL_OK;
}

static tl_status get_double(const yaml_node_t *n, const source *s, const key_desc *kd, double *out, tl_error *err) {
    const char *v = "";
    TL_TRY(plain_scalar(n, s, kd, "a number", &v, err));
    char b[96];
    size_t line = node_line(n);
    /* strtod also takes hex, "inf", "nan" and leading blanks: none of them is a plain decimal number. (strtod and
     * the %g of the writer follow LC_NUMERIC; tailor never calls setlocale, so both use the C locale's '.'.) */
    int bad = isspace((unsigned char)v[0]) || strchr(v, 'x') || strchr(v, 'X');
    char *end = NULL;
    errno = 0;
    double x = bad ? 0 : strtod(v, &end);
    if (bad || end == v || *end)
        return fail_at(err, s, line, kd->key, "expected a number, got %s", shown(v, b, sizeof b));
    if (!isfinite(x) || errno == ERANGE)
        return fail_at(err, s, line, kd->key, "%s is not a finite number in double range", shown(v, b, sizeof b));
    int lo_ok = (kd->dflags & D_LO_OPEN) ? x > kd->dlo : x >= kd->dlo;
    int hi_ok = !(kd->dflags & D_HAS_HI) || ((kd->dflags & D_HI_OPEN) ? x < kd->dhi : x <= kd->dhi);
    if (!lo_ok || !hi_ok) {
        const char *lop = (kd->dflags & D_LO_OPEN) ? "<" : "<=";
        if (kd->dflags & D_HAS_HI)
            return fail_at(err, s, line, kd->key, "%s is out of range (expected %g %s %s %s %g)", v, kd->dlo, lop,
                           kd->key, (kd->dflags & D_HI_OPEN) ? "<" : "<=", kd->dhi);
        return fail_at(err, s, line, kd->key, "%s is out of range (expected %s %s %g)", v, kd->key,
                       (kd->dflags & D_LO_OPEN) ? ">" : ">=", kd->dlo);
    }
    *out = x;
    return TL_OK;
}

/* Any scalar, as a string that fits the field (strings keep their YAML meaning: quoting is optional). */
static tl_status get_string(const yaml_node_t *n, const source *s, const key_desc *kd, const char *expected,
                            const char **out, tl_error *err) {
    char b[96];
    if (is_null(n) || n->type != YAML_SCALAR_NODE)
        return fail_at(err, s, node_line(n), kd->key, "expected %s, got %s", expected, describe(n, b, sizeof b));
    const char *v = (const char *)n->data.scalar.value;
    if (strlen(v) != n->data.scalar.length)
        return fail_at(err, s, node_line(n), kd->key, "contains a NUL character");
    *out = v;
    return TL_OK;
}

static tl_status get_targets(const yaml_document_t *doc, const yaml_node_t *n, const source *s, const key_desc *kd,
                             uint32_t *out, tl_error *err) {
    char b[96], names[160];
    targets_list(names, sizeof names);
    if (!is_null(n) && n->type == YAML_SCALAR_NODE) {
        const char *v = (const char *)n->data.scalar.value;
        if (!strcmp(v, "all-linear")) {
            *out = ALL_TARGETS;
            return TL_OK;
        }
        return fail_at(err, s, node_line(n), kd->key, "expected a list of target modules (%s) or all-linear, got %s "
                       "(a single module is written [%s])", names, shown(v, b, sizeof b), v);
    }
    if (n == NULL || n->type != YAML_SEQUENCE_NODE)
        return fail_at(err, s, node_line(n), kd->key, "expected a list of target modules (%s) or all-linear, got %s",
                       names, describe(n, b, sizeof b));
    uint32_t mask = 0;
    yaml_node_item_t *it = n->data.sequence.items.start;
    if (it == n->data.sequence.items.top)
        return fail_at(err, s, node_line(n), kd->key, "the list is empty (expected at least one of %s, or "
                       "all-linear)", names);
    for (; it < n->data.sequence.items.top; it++) {
        const yaml_node_t *e = yaml_document_get_node((yaml_document_t *)doc, *it);
        if (is_null(e) || e->type != YAML_SCALAR_NODE)
            return fail_at(err, s, node_line(e), kd->key, "expected a target module name (%s) in the list, got %s",
                           names, describe(e, b, sizeof b));
        const char *v = (const char *)e->data.scalar.value;
        int t = -1;
        for (int j = 0; j < TL_N_TARGETS; j++)
            if (!strcmp(v, tl_target_names[j])) t = j;
        if (t < 0)
            return fail_at(err, s, node_line(e), kd->key, "unknown target module %s (expected %s; all-linear stands "
                           "alone, not in a list)", shown(v, b, sizeof b), names);
        if (mask & (1u << t))
            return fail_at(err, s, node_line(e), kd->key, "%s is listed twice", v);
        mask |= 1u << t;
    }
    *out = mask;
    return TL_OK;
}

/* A list of strings into field (cap kd->cap) as newline-separated lines; null or [] is the empty list. */
static tl_status get_strlist(const yaml_document_t *doc, const yaml_node_t *n, const source *s, const key_desc *kd,
                             char *field, tl_error *err) {
    char b[96];
    if (is_null(n)) {
        field[0] = 0;
        return TL_OK;
    }
    if (n->type != YAML_SEQUENCE_NODE)
        return fail_at(err, s, node_line(n), kd->key, "expected a list of strings, got %s (a single entry is written "
                       "[...] or as a '- ' line)", describe(n, b, sizeof b));
    size_t k = 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
        const yaml_node_t *e = yaml_document_get_node((yaml_document_t *)doc, *it);
        if (!e || e->type != YAML_SCALAR_NODE || is_null(e))
            return fail_at(err, s, node_line(e), kd->key, "expected a string in the list, got %s",
                           describe(e, b, sizeof b));
        const char *v = (const char *)e->data.scalar.value;
        size_t l = strlen(v);
        if (l != e->data.scalar.length || memchr(v, '\n', l) || !l)
            return fail_at(err, s, node_line(e), kd->key, "list entries must be non-empty single lines");
        if (k + l + 2 > kd->cap)
            return fail_at(err, s, node_line(e), kd->key, "the list is too long (at most %zu bytes in all)",
                           kd->cap - 1);
        memcpy(field + k, v, l);
        k += l;
        field[k++] = '\n';
    }
    field[k] = 0;
    return TL_OK;
}

/* Sets one key from a YAML node (NULL: an empty override value), with all of that key's own checks. */
static tl_status set_key(tl_config *c, int ki, const yaml_document_t *doc, const yaml_node_t *n, const source *s,
                         tl_error *err) {
    const key_desc *kd = &KEYS[ki];
    char *field = (char *)c + kd->off;
    char b[96], list[160];
    switch (kd->k) {
    case K_STR:
    case K_RESUME:
    case K_OPTSTR: {
        if (kd->k == K_OPTSTR && is_null(n)) {
            field[0] = 0;
            return TL_OK;
        }
        const char *v = "";
        TL_TRY(get_string(n, s, kd, kd->k == K_OPTSTR ? "a string or null" : "a string", &v, err));
        if (kd->k != K_OPTSTR && !v[0])
            return fail_at(err, s, node_line(n), kd->key, "must not be empty");
        if (strlen(v) >= kd->cap)
            return fail_at(err, s, node_line(n), kd->key, "is %zu bytes long (at most %zu)", strlen(v), kd->cap - 1);
        if (kd->k == K_RESUME) {
            c->resume = !strcmp(v, "auto") ? TL_RESUME_AUTO : !strcmp(v, "never") ? TL_RESUME_NEVER : TL_RESUME_PATH;
            field = c->resume_path;
            if (c->resume != TL_RESUME_PATH) v = "";
        }
        memcpy(field, v, strlen(v) + 1);
        return TL_OK;
    }
    case K_ENUM: {
        choices_list(kd->choices, list, sizeof list);
        const char *v = "";
        char what[200];
        snprintf(what, sizeof what, "one of %s", list);
        TL_TRY(get_string(n, s, kd, what, &v, err));
        for (int i = 0; kd->choices[i]; i++)
            if (!strcmp(v, kd->choices[i])) {
                *(int *)(void *)field = i;
                return TL_OK;
            }
        const char *close = NULL;
        for (int i = 0; kd->choices[i] && !close; i++)
            if (edit_distance(v, kd->choices[i]) <= 2) close = kd->choices[i];
        char hint[64] = "";
        if (close) snprintf(hint, sizeof hint, "; did you mean %s?", close);
        return fail_at(err, s, node_line(n), kd->key, "expected %s, got %s%s", list, shown(v, b, sizeof b), hint);
    }
    case K_INT: {
        int64_t x = 0;
        TL_TRY(get_int(n, s, kd, &x, err));
        *(int *)(void *)field = (int)x;
        return TL_OK;
    }
    case K_I64: {
        int64_t x = 0;
        TL_TRY(get_int(n, s, kd, &x, err));
        *(int64_t *)(void *)field = x;
        return TL_OK;
    }
    case K_U64: {
        uint64_t x = 0;
        TL_TRY(get_u64(n, s, kd, &x, err));
        *(uint64_t *)(void *)field = x;
        return TL_OK;
    }
    case K_DBL: {
        double x = 0;
        TL_TRY(get_double(n, s, kd, &x, err));
        *(double *)(void *)field = x;
        return TL_OK;
    }
    case K_BOOL: {
        const char *v = "";
        TL_TRY(plain_scalar(n, s, kd, "true or false", &v, err));
        if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0)
            return fail_at(err, s, node_line(n), kd->key, "expected true or false, got %s", shown(v, b, sizeof b));
        *(int *)(void *)field = !strcmp(v, "true");
        return TL_OK;
    }
    case K_STRLIST: return get_strlist(doc, n, s, kd, field, err);
    case K_TARGETS: {
        uint32_t m = 0;
        TL_TRY(get_targets(doc, n, s, kd, &m, err));
        *(uint32_t *)(void *)field = m;
        return TL_OK;
    }
    }
    return tl_fail(err, TL_ERR_RUNTIME, "%s: internal error: unknown key kind", kd->key);
}

/* ---- documents ---- */

/* Reads one YAML document from the parser, failing on malformed input and on a second document. *have_doc is
 * set when doc must be deleted by the caller. */
static tl_status load_document(yaml_parser_t *p, yaml_document_t *doc, int *have_doc, const source *s,
                               const char *key, const char *text, size_t len, tl_error *err) {
    *have_doc = 0;
    if (!yaml_parser_load(p, doc)) goto parse_error;
    *have_doc = 1;
    yaml_document_t extra;
    if (!yaml_parser_load(p, &extra)) goto parse_error;
    int more = yaml_document_get_root_node(&extra) != NULL;
    size_t second = extra.start_mark.line + 1;
    yaml_document_delete(&extra);
    if (more) return fail_at(err, s, second, key, "a second YAML document ('---') is not allowed");
    return TL_OK;
parse_error:
    if (p->error == YAML_MEMORY_ERROR) return tl_fail(err, TL_ERR_RUNTIME, "out of memory while parsing YAML");
    {
        const char *problem = p->problem ? p->problem : "unknown error";
        char ctx[200] = "";
        if (p->context) snprintf(ctx, sizeof ctx, " (%s at line %zu)", p->context, p->context_mark.line + 1);
        if (p->error == YAML_READER_ERROR) {
            /* The reader reports a byte offset, not a line: count the lines up to it. */
            size_t line = 1;
            for (size_t i = 0; i < p->problem_offset && i < len; i++) line += text[i] == '\n';
            return fail_at(err, s, line, key, "malformed YAML: %s at byte %zu", problem, p->problem_offset);
        }
        return fail_at(err, s, p->problem_mark.line + 1, key, "malformed YAML: %s%s", problem, ctx);
    }
}

static tl_status apply_section(tl_config *c, origin *o, size_t *first_line, const char *section,
                               const yaml_document_t *doc, const yaml_node_t *m, const source *s, tl_error *err) {
    char b[96];
    if (is_null(m)) return TL_OK; /* "train:" with nothing under it */
    if (m->type != YAML_MAPPING_NODE)
        return fail_at(err, s, node_line(m), section, "expected a mapping of %s keys, got %s", section,
                       describe(m, b, sizeof b));
    for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
        const yaml_node_t *k = yaml_document_get_node((yaml_document_t *)doc, pr->key);
        const yaml_node_t *v = yaml_document_get_node((yaml_document_t *)doc, pr->value);
        if (!k || k->type != YAML_SCALAR_NODE)
            return fail_at(err, s, node_line(k), section, "expected a key name, got %s", describe(k, b, sizeof b));
        char dotted[160];
        snprintf(dotted, sizeof dotted, "%s.%.120s", section, (const char *)k->data.scalar.value);
        int ki = key_index(dotted);
        if (ki < 0) {
            char keys[400];
            int sug = suggest_key(dotted);
            section_keys(section, keys, sizeof keys);
            if (sug >= 0) return fail_at(err, s, node_line(k), dotted, "unknown key (did you mean %s?)", KEYS[sug].key);
            return fail_at(err, s, node_line(k), dotted, "unknown key (%s keys: %s)", section, keys);
        }
        if (first_line[ki])
            return fail_at(err, s, node_line(k), dotted, "duplicate key (first set at line %zu)", first_line[ki]);
        first_line[ki] = node_line(k);
        TL_TRY(set_key(c, ki, doc, v, s, err));
        o[ki] = (origin){.set = 1, .line = node_line(v)};
    }
    return TL_OK;
}

static tl_status apply_document(tl_config *c, origin *o, const yaml_document_t *doc, const source *s,
                                tl_error *err) {
    const yaml_node_t *root = yaml_document_get_root_node((yaml_document_t *)doc);
    char b[96];
    if (is_null(root)) return TL_OK; /* empty file: defaults */
    if (root->type != YAML_MAPPING_NODE)
        return fail_at(err, s, node_line(root), NULL, "expected a mapping of sections (run, model, adapter, data, "
                       "task, train, dist, cluster) at the top level, got %s", describe(root, b, sizeof b));
    size_t section_line[N_SECTIONS] = {0}, first_line[N_KEYS] = {0};
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        const yaml_node_t *k = yaml_document_get_node((yaml_document_t *)doc, pr->key);
        const yaml_node_t *v = yaml_document_get_node((yaml_document_t *)doc, pr->value);
        if (!k || k->type != YAML_SCALAR_NODE)
            return fail_at(err, s, node_line(k), NULL, "expected a section name, got %s", describe(k, b, sizeof b));
        const char *name = (const char *)k->data.scalar.value;
        int si = -1;
        for (int i = 0; i < N_SECTIONS; i++)
            if (!strcmp(name, SECTIONS[i])) si = i;
        if (si < 0) {
            char hint[96] = "";
            const char *close = NULL;
            for (int i = 0; i < N_SECTIONS && !close; i++)
                if (edit_distance(name, SECTIONS[i]) <= 2) close = SECTIONS[i];
            if (close) {
                snprintf(hint, sizeof hint, " (did you mean %s?)", close);
            } else {
                int sug = suggest_key(name);
                if (sug >= 0) snprintf(hint, sizeof hint, " (did you mean %s? keys go inside their section)",
                                       KEYS[sug].key);
            }
            return fail_at(err, s, node_line(k), name, "unknown section%s; the sections are run, model, adapter, "
                           "data, task, train, dist and cluster", hint);
        }
        if (section_line[si])
            return fail_at(err, s, node_line(k), name, "duplicate section (first at line %zu)", section_line[si]);
        section_line[si] = node_line(k);
        TL_TRY(apply_section(c, o, first_line, SECTIONS[si], doc, v, s, err));
    }
    return TL_OK;
}

static tl_status read_all(const char *path, char **out, size_t *len, tl_error *err) {
    FILE *f;
    TL_TRY(tl_fopen_regular(path, "config file", &f, NULL, err));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
            }
            buf = nb, cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    int e = errno;
    if (fclose(f) != 0 && !bad) bad = 1, e = errno;
    if (bad) {
        free(buf);
        return tl_fail(err, TL_ERR_INPUT, "%s: cannot read config file: %s", path, strerror(e));
    }
    *out = buf;
    *len = n;
    return TL_OK;
}

static tl_status load_file(const char *path, tl_config *c, origin *o, tl_error *err) {
    char *text = NULL;
    size_t len = 0;
    TL_TRY(read_all(path, &text, &len, err));
    source s = {.file = path};
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        free(text);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot initialize the YAML parser", path);
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    yaml_document_t doc;
    int have = 0;
    tl_status st = load_document(&p, &doc, &have, &s, NULL, text, len, err);
    if (st == TL_OK) st = apply_document(c, o, &doc, &s, err);
    if (have) yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    free(text);
    return st;
}

static tl_status apply_override(const char *ov, int index, tl_config *c, origin *o, tl_error *err) {
    source s = {.override = ov};
    const char *eq = strchr(ov, '=');
    if (!eq) return fail_at(err, &s, 0, NULL, "expected key=value (e.g. train.lr=1e-4)");
    char key[160];
    size_t kl = (size_t)(eq - ov);
    if (kl == 0) return fail_at(err, &s, 0, NULL, "expected key=value, the key is empty");
    snprintf(key, sizeof key, "%.*s", kl < 150 ? (int)kl : 150, ov);
    int ki = key_index(key);
    if (ki < 0) {
        int sug = suggest_key(key);
        if (sug >= 0) return fail_at(err, &s, 0, key, "unknown key (did you mean %s?)", KEYS[sug].key);
        return fail_at(err, &s, 0, key, "unknown key (see docs/config.md for the keys)");
    }
    const char *val = eq + 1;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return tl_fail(err, TL_ERR_RUNTIME, "cannot initialize the YAML parser");
    yaml_parser_set_input_string(&p, (const unsigned char *)val, strlen(val));
    yaml_document_t doc;
    int have = 0;
    tl_status st = load_document(&p, &doc, &have, &s, key, val, strlen(val), err);
    if (st == TL_OK) st = set_key(c, ki, &doc, yaml_document_get_root_node(&doc), &s, err);
    if (st == TL_OK) o[ki] = (origin){.set = 2 + index, .override = ov};
    if (have) yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    return st;
}

/* "c.yaml:12" / "override 'x=y'" / "the default", for a cross-key message. */
static void origin_text(const origin *o, const char *file, char *buf, size_t cap) {
    if (!o->set)
        snprintf(buf, cap, "the default");
    else if (o->override)
        snprintf(buf, cap, "set by override '%.300s'", o->override);
    else
        snprintf(buf, cap, "set at %.300s:%zu", file ? file : "?", o->line);
}

static tl_status finish(tl_config *c, const origin *o, const char *path, tl_error *err) {
    source fs = {.file = path};
    int k_model = key_index("model.path"), k_mbt = key_index("train.micro_batch_tokens"),
        k_msl = key_index("data.max_seq_len"), k_name = key_index("run.name"), k_out = key_index("run.output_dir");
    if (!o[k_model].set)
        return fail_at(err, &fs, 0, "model.path", "required (the HF model directory to train on; set it in the "
                       "model section or with model.path=DIR)");
    if (c->micro_batch_tokens < c->data_max_seq_len) {
        /* Blame the key set last (the change that broke the rule); the other one is quoted with its origin. */
        int blame = o[k_mbt].set >= o[k_msl].set ? k_mbt : k_msl;
        source bs = {.file = path, .override = o[blame].override};
        char other[400];
        origin_text(&o[blame == k_mbt ? k_msl : k_mbt], path, other, sizeof other);
        return fail_at(err, &bs, o[blame].line, KEYS[blame].key,
                       "train.micro_batch_tokens (%d) is less than data.max_seq_len (%d; %s is %s): expected "
                       "train.micro_batch_tokens >= data.max_seq_len so that a micro-batch holds the longest sequence",
                       c->micro_batch_tokens, c->data_max_seq_len,
                       blame == k_mbt ? "data.max_seq_len" : "train.micro_batch_tokens", other);
    }
    if (!o[k_name].set) {
        /* The run is named after its config file: configs/sft_lora.yaml -> sft_lora. */
        const char *base = "run";
        size_t bl = 3;
        if (path) {
            const char *sl = strrchr(path, '/');
            base = sl ? sl + 1 : path;
            const char *dot = strrchr(base, '.');
            bl = dot && dot != base ? (size_t)(dot - base) : strlen(base);
            if (bl == 0) base = "run", bl = 3;
        }
        if (bl >= sizeof c->run_name) bl = sizeof c->run_name - 1;
        memcpy(c->run_name, base, bl);
        c->run_name[bl] = 0;
    }
    if (!o[k_out].set) snprintf(c->output_dir, sizeof c->output_dir, "runs/%s", c->run_name);
    return TL_OK;
}

tl_status tl_config_check_thread_env(tl_error *err) {
    const char *v = getenv("OMP_NUM_THREADS");
    if (!v) return TL_OK;
    /* A value OpenMP cannot read it ignores itself (with its own warning): only a readable list with a count
     * above the maximum is refused, as OpenMP would build that team. */
    int too_many = 0;
    for (const char *p = v;;) {
        while (*p == ' ' || *p == '\t') p++;
        long n = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (n <= TL_MAX_THREADS) n = n * 10 + (*p - '0');
            p++, digits++;
        }
        while (*p == ' ' || *p == '\t') p++;
        if (!digits) return TL_OK;
        too_many |= n > TL_MAX_THREADS;
        if (*p == '\0') break;
        if (*p++ != ',') return TL_OK;
    }
    if (!too_many) return TL_OK;
    return tl_fail(err, TL_ERR_INPUT, "OMP_NUM_THREADS=%.40s: expected thread counts of at most %d", v,
                   TL_MAX_THREADS);
}

tl_status tl_config_load(const char *path, char *const *overrides, int n_overrides, tl_config *c, tl_error *err) {
    /* Built aside and copied out only when everything passed, so a failed load leaves *c as it was. */
    tl_config t;
    origin o[N_KEYS];
    memset(o, 0, sizeof o);
    tl_config_defaults(&t);
    if (path) TL_TRY(load_file(path, &t, o, err));
    for (int i = 0; i < n_overrides; i++) TL_TRY(apply_override(overrides[i], i, &t, o, err));
    TL_TRY(finish(&t, o, path, err));
    *c = t;
    return TL_OK;
}

/* ---- writing ---- */

/* Plain when it cannot be misread by any YAML reader (not a number, bool or null); double-quoted otherwise. */
static void write_string(FILE *f, const char *v) {
    static const char *const words[] = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", NULL};
    int plain = isalpha((unsigned char)v[0]) || v[0] == '_' || v[0] == '/' ||
                (v[0] == '.' && (v[1] == '/' || (v[1] == '.' && v[2] == '/')));
    for (const char *p = v; *p && plain; p++)
        plain = isalnum((unsigned char)*p) || strchr("_./-+", *p) != NULL;
    for (int i = 0; words[i] && plain; i++)
        if (!strcasecmp(v, words[i])) plain = 0;
    if (plain) {
        fputs(v, f);
        return;
    }
    /* Escapes cover what a YAML reader would refuse or fold: control bytes, DEL, the C1 controls, NEL and the
     * line/paragraph separators (YAML 1.1 line breaks), and the non-characters. */
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (p[0] == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F) {
            fprintf(f, "\\x%02x", p[1]);
            p++;
        } else if (p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
            fputs(p[2] == 0xA8 ? "\\L" : "\\P", f);
            p += 2;
        } else if (p[0] == 0xEF &&
                   ((p[1] == 0xBB && p[2] == 0xBF) || (p[1] == 0xBF && (p[2] == 0xBE || p[2] == 0xBF)))) {
            fprintf(f, "\\u%s", p[1] == 0xBB ? "feff" : p[2] == 0xBE ? "fffe" : "ffff");
            p += 2;
        } else if (*p == '"' || *p == '\\') {
            fputc('\\', f);
            fputc(*p, f);
        } else if (*p == '\n') {
            fputs("\\n", f);
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(f, "\\x%02x", *p);
        } else {
            fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* The shortest %g form that reads back to the same double (at most %.17g), so the file stays readable. */
static void write_double(FILE *f, double x) {
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    fputs(buf, f);
}

void tl_config_write_yaml(const tl_config *c, FILE *f) {
    const char *prev = NULL;
    size_t prev_len = 0;
    fputs("# tailor run configuration, resolved: every key with its value (docs/config.md)\n", f);
    for (int i = 0; i < N_KEYS; i++) {
        const key_desc *kd = &KEYS[i];
        const char *dot = strchr(kd->key, '.');
        size_t sl = (size_t)(dot - kd->key);
        if (!prev || sl != prev_len || strncmp(prev, kd->key, sl) != 0) {
            fprintf(f, "%s%.*s:\n", prev ? "\n" : "", (int)sl, kd->key);
            prev = kd->key, prev_len = sl;
        }
        fprintf(f, "  %s: ", dot + 1);
        const char *field = (const char *)c + kd->off;
        switch (kd->k) {
        case K_STR: write_string(f, field); break;
        case K_ENUM: write_string(f, kd->choices[*(const int *)(const void *)field]); break;
        case K_RESUME:
            write_string(f, c->resume == TL_RESUME_PATH ? c->resume_path
                            : c->resume == TL_RESUME_NEVER ? "never" : "auto");
            break;
        case K_OPTSTR:
            if (field[0])
                write_string(f, field);
            else
                fputs("~", f);
            break;
        case K_INT: fprintf(f, "%d", *(const int *)(const void *)field); break;
        case K_I64: fprintf(f, "%" PRId64, *(const int64_t *)(const void *)field); break;
        case K_U64: fprintf(f, "%" PRIu64, *(const uint64_t *)(const void *)field); break;
        case K_DBL: write_double(f, *(const double *)(const void *)field); break;
        case K_BOOL: fputs(*(const int *)(const void *)field ? "true" : "false", f); break;
        case K_STRLIST: {
            fputc('[', f);
            char item[4096];
            for (int e = 0; tl_config_list_item(field, e, item, sizeof item); e++) {
                if (e) fputs(", ", f);
                write_string(f, item);
            }
            fputc(']', f);
            break;
        }
        case K_TARGETS: {
            uint32_t m = *(const uint32_t *)(const void *)field;
            fputc('[', f);
            for (int t = 0, n = 0; t < TL_N_TARGETS; t++)
                if (m & (1u << t)) fprintf(f, "%s%s", n++ ? ", " : "", tl_target_names[t]);
            fputc(']', f);
            break;
        }
        }
        fputc('\n', f);
    }
}

tl_status tl_config_write_file(const tl_config *c, const char *path, tl_error *err) {
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    tl_config_write_yaml(c, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || !text) {
        free(text);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: could not format the configuration", path);
    }
    tl_status s = tl_write_file_atomic(path, text, n, err);
    free(text);
    return s;
}

int tl_config_list_item(const char *list, int i, char *buf, size_t cap) {
    const char *p = list;
    for (int k = 0; *p; k++) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (k == i) {
            if (l >= cap) l = cap - 1;
            memcpy(buf, p, l);
            buf[l] = 0;
            return 1;
        }
        p += l + (e ? 1 : 0);
    }
    return 0;
}
