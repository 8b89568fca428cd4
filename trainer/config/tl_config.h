/* tl_config: the run configuration, read from strict YAML with command-line overrides.
 *
 * Strict: an unknown key, a wrong type (e.g. "16abc" for an int, a list for a scalar), an out-of-range value or
 * a malformed file is TL_ERR_INPUT with the file, the line number and the dotted key. Integers are decimal
 * (a leading 0 is not octal). Overrides are "dotted.key=value" strings, parsed as YAML scalars (or flow lists
 * such as adapter.targets=[q_proj,v_proj]) and checked by the same rules; an error names the override.
 * docs/config.md lists every key with its type, default and meaning. */
#ifndef TL_CONFIG_H
#define TL_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "data/tl_batcher.h" /* tl_adapter_key */
#include "data/tl_io.h"      /* TL_PATH_MAX */
#include "kernels/tl_status.h"

/* LoRA target modules, as bits of tl_config.adapter_targets (order fixed: it is the order of the pool). */
enum {
    TL_T_Q = 0, TL_T_K, TL_T_V, TL_T_O, TL_T_GATE, TL_T_UP, TL_T_DOWN, TL_N_TARGETS
};
extern const char *const tl_target_names[TL_N_TARGETS]; /* "q_proj", ..., "down_proj" */

/* The choice keys, parsed into enums once by tl_config_load (and written back as the same words). Each enum's
 * order is its names array's, so tl_*_names[value] is the word of the YAML file. adapter.key is tl_adapter_key
 * (data/tl_batcher.h: user, group, global); task.loss is the order of tl_pref_kind (tl_pref_loss.h). */
typedef enum { TL_TASK_SFT, TL_TASK_DPO, TL_TASK_REWARD, TL_TASK_GRPO, TL_TASK_RLOO } tl_task_type;
/* online RL (task.type grpo | rloo; docs/rl.md): prompts in, rollouts scored by reward models */
#define TL_TASK_IS_RL(t) ((t) == TL_TASK_GRPO || (t) == TL_TASK_RLOO)
typedef enum { TL_RL_LOSS_GRPO, TL_RL_LOSS_BNPO, TL_RL_LOSS_DR_GRPO } tl_task_loss_type;
typedef enum { TL_LOSS_SIGMOID, TL_LOSS_IPO, TL_LOSS_HINGE, TL_LOSS_ROBUST, TL_LOSS_SIMPO } tl_task_loss;
typedef enum { TL_BACKEND_AUTO, TL_BACKEND_CPU, TL_BACKEND_CUDA } tl_backend_choice;
typedef enum { TL_SCHEDULE_CONSTANT, TL_SCHEDULE_LINEAR, TL_SCHEDULE_COSINE } tl_schedule;
typedef enum { TL_RESUME_AUTO, TL_RESUME_NEVER, TL_RESUME_PATH } tl_resume;
typedef enum { TL_STRATEGY_AUTO, TL_STRATEGY_USER_SHARD, TL_STRATEGY_DATA_PARALLEL } tl_dist_strategy;
typedef enum { TL_STORE_AUTO, TL_STORE_ON, TL_STORE_OFF } tl_store_choice;
extern const char *const tl_adapter_key_names[];   /* "user", "group", "global" */
extern const char *const tl_task_type_names[];     /* "sft", "dpo", "reward", "grpo", "rloo" */
extern const char *const tl_task_loss_type_names[]; /* "grpo", "bnpo", "dr_grpo" (task.loss_type) */
extern const char *const tl_task_loss_names[];     /* "sigmoid", "ipo", "hinge", "robust", "simpo" */
extern const char *const tl_backend_choice_names[]; /* "auto", "cpu", "cuda" */
extern const char *const tl_schedule_names[];      /* "constant", "linear", "cosine" */
extern const char *const tl_dist_strategy_names[]; /* "auto", "user_shard", "data_parallel" */
extern const char *const tl_store_choice_names[];  /* "auto", "on", "off" */

typedef struct {
    /* run */
    char run_name[256];
    char output_dir[TL_PATH_MAX]; /* default: runs/<run.name> */
    uint64_t seed;                /* default 0 */
    /* model */
    char model_path[TL_PATH_MAX]; /* required */
    /* adapter */
    int adapter_rank;             /* default 8, 1..1024 */
    double adapter_alpha;         /* default 16, > 0 */
    double adapter_dropout;       /* default 0.0, [0, 1) */
    uint32_t adapter_targets;     /* bitmask; default q_proj,k_proj,v_proj,o_proj */
    tl_adapter_key adapter_key;   /* user (default) | group | global */
    int adapter_rslora;           /* default false */
    char adapter_init_from[TL_PATH_MAX]; /* "" (fresh init) | a PEFT dir | a run's adapters/ dir */
    /* data */
    char data_train[TL_PATH_MAX]; /* "" when absent; tailor train requires it */
    char data_eval[TL_PATH_MAX];  /* optional ("" when absent) */
    int data_max_seq_len;         /* default 512 */
    int data_eval_generate;       /* sft eval: greedy answers of up to this many tokens scored by ROUGE; 0 = off */
    /* task */
    tl_task_type task_type;       /* sft (default) | dpo | reward */
    double task_beta;             /* dpo: default 0.1, > 0 */
    tl_task_loss task_loss;       /* dpo: sigmoid (default) | ipo | hinge | robust | simpo */
    double task_label_smoothing;  /* dpo: default 0, [0, 0.5) */
    double task_gamma;            /* simpo margin: default 0.5, >= 0 */
    double task_sft_weight;       /* dpo: weight of the SFT loss on the chosen response, default 0 */
    int task_precompute_ref;      /* dpo: cache reference log-probabilities per pair, default false */
    double task_center_rewards;   /* reward: coefficient of mean((r_c + r_r)^2), default 0 */
    /* online RL, task.type grpo | rloo (docs/rl.md); task.beta is the k3 KL weight there (0 allowed) */
    char task_reward_model[TL_PATH_MAX]; /* a run directory or adapters/ folder of task.type reward; required */
    int task_num_generations;     /* completions per prompt, default 4, >= 2 */
    int task_max_completion_length; /* default 64, >= 1 */
    double task_temperature;      /* sampling temperature, default 1.0, >= 0 (0: greedy) */
    double task_top_p;            /* default 1.0, (0, 1] */
    double task_epsilon;          /* clip range low, default 0.2, (0, 1) */
    double task_epsilon_high;     /* clip range high, default 0 = task.epsilon */
    tl_task_loss_type task_loss_type; /* grpo | bnpo (default, TRL v0.19) | dr_grpo */
    int task_scale_rewards;       /* grpo: divide by the group std; rloo: normalize advantages; default true */
    /* train */
    tl_backend_choice backend;    /* auto (default) | cpu | cuda */
    int threads;                  /* 0 = all cores; at most TL_MAX_THREADS */
    int64_t steps;                /* default 100, >= 1 */
    int examples_per_adapter;     /* default 4, >= 1 */
    int adapters_per_step;        /* default 0 = all */
    int micro_batch_tokens;       /* default 4096, >= data.max_seq_len */
    double lr;                    /* default 1e-4, > 0 */
    tl_schedule schedule;         /* constant | linear | cosine (default) */
    int64_t warmup_steps;         /* default 0 */
    double weight_decay;          /* default 0.0 */
    double grad_clip;             /* default 1.0; 0 disables */
    double beta1, beta2, adam_eps;/* default 0.9, 0.999, 1e-8 */
    int64_t log_every;            /* default 10 */
    int64_t eval_every;           /* default 0 = only at the end (when data.eval is set) */
    int64_t checkpoint_every;     /* default 0 = only at the end */
    int keep_checkpoints;         /* default 2 */
    tl_store_choice store;        /* auto (default: on when the adapters' state would pass train.store_min_bytes) |
                                     on | off: the adapter store (docs/scale.md) */
    int64_t store_min_bytes;      /* default 2 GiB: auto turns the store on above this much adapter state */
    int store_prefetch;           /* default true: read the next step's adapters from the store while a step runs */
    double store_compact_below;   /* default 0.25: a checkpoint compacts store segments whose live records are under
                                     this fraction of their bytes; 0: never */
    int continue_run;             /* train.continue, default false: train again on a grown dataset (docs/scale.md) */
    tl_resume resume;             /* auto (default) | never | a path of a checkpoint directory: */
    char resume_path[TL_PATH_MAX]; /* TL_RESUME_PATH: that path ("" otherwise) */
    /* dist: many processes (docs/cluster.md) */
    tl_dist_strategy dist_strategy; /* auto (default: user_shard, data_parallel for adapter.key global) |
                                       user_shard | data_parallel */
    double dist_timeout_s;        /* default 600: longest wait in a collective before the run aborts */
    char dist_rendezvous_dir[TL_PATH_MAX]; /* NCCL id file rendezvous; "" = <run.output_dir>/.rendezvous */
    /* cluster: tailor submit's sbatch script (docs/cluster.md) */
    int cluster_nodes;            /* default 1 */
    int cluster_gpus_per_node;    /* default 0 = a CPU job */
    int cluster_tasks_per_node;   /* default 0 = gpus_per_node, or 1 for a CPU job */
    int cluster_cpus_per_task;    /* default 0 = not set (Slurm's default) */
    char cluster_partition[128], cluster_account[128], cluster_time[64], cluster_mem[64]; /* "" = not set */
    char cluster_job_name[256];   /* "" = run.name */
    char cluster_mpi[32];         /* srun --mpi= value, default pmix; "" = none given */
    int cluster_signal_s;         /* default 90: USR1 this many seconds before the time limit; 0 = none */
    int cluster_requeue;          /* default true: a preempted or signalled job requeues itself */
    char cluster_tailor[TL_PATH_MAX]; /* tailor binary in the job; "" = this binary's absolute path */
    char cluster_sbatch[4096];    /* extra sbatch options, one per line ("--qos=high"); tl_config_list_item */
    char cluster_setup[4096];     /* shell lines run before srun (module load ...), one per line */
    char cluster_env[4096];       /* KEY=VALUE lines exported in the job */
} tl_config;

/* Every field at its documented default (run.name "run", run.output_dir "runs/run", model.path unset). */
void tl_config_defaults(tl_config *c);
/* Loads path (may be NULL for defaults only), then applies overrides in order (a later one wins), then checks
 * what needs the final values: model.path is required, micro_batch_tokens >= max_seq_len. run.name defaults
 * to path's basename without its extension ("run" without a file), run.output_dir to "runs/<run.name>".
 * Paths are kept as written (relative to the current directory). *c is written only on success. */
tl_status tl_config_load(const char *path, char *const *overrides, int n_overrides, tl_config *c, tl_error *err);

/* The most CPU threads a process may ask for (train.threads, OMP_NUM_THREADS). OpenMP builds its team with
 * per-thread records on the stack of the thread that starts it, so an absurd count overflows that stack. */
#define TL_MAX_THREADS 1024
/* OMP_NUM_THREADS, when OpenMP can read it (integers separated by commas), must not ask for more than
 * TL_MAX_THREADS threads at any level: TL_ERR_INPUT naming the variable otherwise. A value OpenMP cannot read it
 * ignores itself, with its own warning. Called before the first parallel region. */
tl_status tl_config_check_thread_env(tl_error *err);
/* Writes the resolved configuration (every key) as YAML that tl_config_load reads back to the same values,
 * doubles bit for bit. The caller checks the stream (ferror / fclose). */
void tl_config_write_yaml(const tl_config *c, FILE *f);
/* Entry i (0-based) of a string-list field (cluster.sbatch, cluster.setup, cluster.env: entries are lines) into
 * buf, cut to cap - 1 bytes; 0 when there is no such entry. */
int tl_config_list_item(const char *list, int i, char *buf, size_t cap);
/* The same into a file, atomically (tl_write_file_atomic): a crash leaves the old file or the new one. */
tl_status tl_config_write_file(const tl_config *c, const char *path, tl_error *err);

#endif
