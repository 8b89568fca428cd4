/* tl_rl_step: one online-RL step (task.type grpo / rloo) over the prompts of many adapters at once.
 *
 * For each prompt of the step, task.num_generations completions are sampled with the prompt's adapter (policy
 * pool slot) through the batched KV-cache decoder (trainer/eval/tl_generate.h), all adapters side by side;
 * sampling is seeded per prompt (the caller gives each prompt a seed that depends only on its adapter), so a run
 * is repeatable and one adapter's samples never depend on the others. Each prompt + completion is scored by the
 * reward pool's adapter of the same slot (the last token's final hidden state times that adapter's score head,
 * as a task.type reward model scores). Per adapter, the rewards give advantages (tl_rl_advantages: GRPO's group
 * normalization or RLOO's leave-one-out baseline) and the clipped per-token loss with the k3 KL to the
 * reference policy (tl_rl_loss, normalized over the adapter's own completions of the step); its d loss / d logp
 * goes back through the policy into the LoRA gradients of that adapter (tl_model_logp + tl_model_backward), as
 * the DPO step does. Only completion tokens are trained.
 *
 * Each rollout is used for one update, so the sampling policy is the current one and the importance ratio is 1
 * (TRL with num_iterations = 1): old log-probabilities equal the policy's own, and clipping never binds; the
 * clip statistics are still computed. Allocation happens once, in tl_rl_create. */
#ifndef TL_RL_STEP_H
#define TL_RL_STEP_H

#include <stdint.h>

#include "trainer/model/tl_model.h"
#include "trainer/step/tl_rl_loss.h"

typedef struct {
    tl_rl_adv_kind adv;
    tl_rl_loss_opts loss; /* loss.max_completion is the completion length limit too */
    int num_generations;  /* >= 2 */
    int scale_rewards;
    float temperature, top_p; /* tl_sample_token; temperature 0 is greedy */
    int32_t eos[2];           /* stop tokens (the completion keeps it, as TRL's completion_mask does) */
    int n_eos;
    int max_prompt_len;     /* the longest prompt the caller will give */
    int max_prompts;        /* the most prompts of one step */
    int micro_batch_tokens; /* >= max_prompt_len + loss.max_completion */
} tl_rl_opts;

/* One prompt of the step. Prompts of one adapter are given together, adapters in ascending slot order. */
typedef struct {
    const int32_t *tokens;
    int n;         /* >= 1, <= max_prompt_len */
    int32_t slot;  /* policy pool slot = reward pool slot = reference pool slot */
    uint64_t seed; /* sampling stream of this prompt's completions */
} tl_rl_prompt;

/* Per-adapter sums of one step (means by the caller). */
typedef struct {
    int64_t completions, tokens; /* completions sampled, their tokens (EOS included) */
    int64_t groups;              /* prompts */
    int64_t clipped;             /* tokens whose ratio was clipped (low or high) */
    int64_t eos_stops;           /* completions that ended with an EOS token */
    double loss;                 /* the adapter's loss of the step */
    double reward, reward_sq;    /* sums over completions */
    double group_std;            /* sum over groups of the reward std of the group (TRL reward_std) */
    double kl;                   /* sum over tokens of the k3 KL (0 when beta = 0) */
} tl_rl_stats;

typedef struct {
    double rollout_s, train_s; /* wall time of sampling, and of scoring + reference + policy passes */
    int64_t rollout_tokens;    /* completion tokens sampled */
    int64_t train_tokens;      /* rows through the policy's forward and backward */
} tl_rl_timing;

typedef struct tl_rl tl_rl;

/* policy and reward are the pools tl_rl_step will be given (the decoder and the reward workspace are planned for
 * their layouts; reward may be NULL when only tl_rl_train_given is used). TL_ERR_INPUT when the options do not fit (a sequence longer than micro_batch_tokens). */
tl_status tl_rl_create(const tl_model *m, const tl_lora_pool *policy, const tl_lora_pool *reward, const tl_rl_opts *o,
                       tl_rl **out, tl_error *err);
void tl_rl_free(tl_rl *r);

/* The step: rollouts, rewards, advantages, and the policy gradients accumulated into policy->grads of the
 * prompts' slots (the caller zeroes them before and steps the optimizer after). ref: the frozen reference pool
 * (adapter.init_from), NULL for the bare base model; read only when loss.beta > 0. stats[slot] receives the
 * sums of each adapter in the step (initialized here for the slots present). ws: the policy's workspace, of
 * micro_batch_tokens rows. */
tl_status tl_rl_step(tl_rl *r, tl_lora_pool *policy, const tl_lora_pool *ref, const tl_lora_pool *reward,
                     tl_workspace *ws, const tl_rl_prompt *prompts, int n_prompts, tl_rl_stats *stats,
                     tl_rl_timing *timing, tl_error *err);

/* The training half of tl_rl_step on given completions and rewards instead of sampled and scored ones (for the
 * model-level gradient checks, tests/torch/test_rl_model_vs_torch.py): completion c = prompt c / G, generation
 * c % G has comp_len[c] tokens (1..max_completion) at comp[comp_off[c]..]; rewards[c] its reward. The reward pool
 * may have been NULL at tl_rl_create for this use. */
tl_status tl_rl_train_given(tl_rl *r, tl_lora_pool *policy, const tl_lora_pool *ref, tl_workspace *ws,
                            const tl_rl_prompt *prompts, int n_prompts, const int32_t *comp, const int64_t *comp_off,
                            const double *rewards, tl_rl_stats *stats, tl_rl_timing *timing, tl_error *err);

/* Evaluation: samples the completions of the prompts with `policy` (a pool of the layout tl_rl_create was given:
 * the trained adapters or a frozen copy of the starting ones; NULL: the bare base model for every prompt) and
 * scores them with the reward pool; tl_rl_reward(r, c) then gives completion c's reward. Nothing is trained. */
tl_status tl_rl_sample_score(tl_rl *r, const tl_lora_pool *policy, const tl_lora_pool *reward,
                             const tl_rl_prompt *prompts, int n_prompts, tl_error *err);

/* The completions of the last step (for reading, tests and the sampling checks): completion c = prompt
 * c / num_generations, generation c % num_generations; tokens and count (EOS included). */
int tl_rl_completion(const tl_rl *r, int c, const int32_t **tokens);
/* The reward of completion c in the last step. */
double tl_rl_reward(const tl_rl *r, int c);

#endif
