/* rl_run: what tl_train does for task.type grpo / rloo (docs/rl.md), kept out of the loop of train.c, which
 * calls tl_rl_run_setup once (after the pools and the workspace exist), tl_rl_run_step for each step and
 * tl_rl_run_free at the end. It holds the reward models (task.reward_model, loaded like the DPO reference pool,
 * adapter by adapter name) and the rollout state of trainer/step/tl_rl_step.h. Private to trainer/run/. */
#ifndef TL_RL_RUN_H
#define TL_RL_RUN_H

#include "trainer/run/session_impl.h"

typedef struct tl_rl_run tl_rl_run;

/* Checks the RL options and the prompts against the context, loads the reward models and plans the rollouts.
 * TL_ERR_INPUT for a missing or unusable task.reward_model, a reward model without a user's adapter or made for
 * another base model (shapes), task.num_generations < 2, a prompt that leaves no room for
 * task.max_completion_length within data.max_seq_len, or many processes (not supported yet). */
tl_status tl_rl_run_setup(tl_session *S, const tl_config *cfg, int world, tl_rl_run **out, tl_error *err);
/* One step over the prompts the batcher placed in B (tl_batcher_units of S->batcher): rollouts, rewards, the
 * policy gradients of B's active adapters (zeroed by the caller), and each one's loss into adapter_loss[]. */
tl_status tl_rl_run_step(tl_rl_run *rr, tl_session *S, const tl_step_batch *B, double *adapter_loss, tl_error *err);
/* The step's RL fields for its metrics.jsonl record (a JSON fragment, valid until the next call): means over
 * the step's completions, rollout and training throughput, and per adapter (up to 64 of the step's, a sample
 * when there are more) reward mean / std, KL, completion length and clip fraction. */
const char *tl_rl_run_metrics(tl_rl_run *rr, const tl_session *S, const tl_step_batch *B);
/* The final evaluation on data.eval (a prompt set): each adapter's eval prompts answered (task.num_generations
 * samples each, task.temperature, seeded by run.seed and the prompt) by the trained adapter, by the bare base
 * model and, with adapter.init_from, by the starting adapters, every answer scored by the adapter's own reward
 * model; the mean rewards go to <run>/eval.json (written atomically) and a table to ui->out. */
tl_status tl_rl_run_eval(tl_rl_run *rr, tl_session *S, const tl_config *cfg, const tl_ui *ui, tl_error *err);
void tl_rl_run_free(tl_rl_run *rr, tl_backend *be);

#endif
