/* tl_prompt: prompt-only datasets for online RL (task.type grpo / rloo): the HDF5 file and its adapter map.
 * Schema in docs/data-format.md ("kind prompt").
 *
 * File: root attributes tailor_format = 1, kind = "prompt", optional vocab_size; /users/name [U] and optional
 * /users/group [U] exactly as for SFT; for N prompts:
 *   /prompt/tokens int32 [T], /prompt/offsets int64 [N+1]    each prompt (at least one token: generation
 *                                                             continues it)
 *   /prompt/user int32 [N]                                    index into /users
 *   /prompt/reference/tokens, /prompt/reference/offsets      optional, both or neither: a reference answer per
 *                                                             prompt (may be empty), for evaluation and reading
 * tl_prompt_open validates all of it like tl_sft_open (every violation TL_ERR_INPUT, one line "<file>: <dataset>:
 * <problem>", the same storage rules and the same child-process isolation); an empty set (N = 0) is refused.
 * Whether each prompt fits the context (data.max_seq_len with room for a completion) is the trainer's check: it
 * depends on the config, not the file. */
#ifndef TL_PROMPT_H
#define TL_PROMPT_H

#include <stdint.h>

#include "data/tl_batcher.h"
#include "data/tl_dataset.h"

typedef struct {
    char *path;
    int n_users;
    char **user_names;  /* [n_users], UTF-8, unique */
    char **user_groups; /* [n_users] or NULL when /users/group is absent */
    int64_t n_prompts, n_tokens;
    int32_t *tokens;  /* [n_tokens] */
    int64_t *offsets; /* [n_prompts + 1] */
    int32_t *user;    /* [n_prompts] */
    int has_reference;
    int64_t n_ref_tokens;
    int32_t *ref_tokens;     /* [n_ref_tokens] or NULL */
    int64_t *ref_offsets;    /* [n_prompts + 1] or NULL */
    int64_t vocab_size_attr; /* 0 when absent */
    int64_t max_prompt_len;  /* the longest prompt, in tokens */
} tl_prompt_dataset;

/* model_vocab <= 0 skips the vocabulary check (inspection without a model). A file of another kind is
 * TL_ERR_INPUT naming attribute kind. */
tl_status tl_prompt_open(const char *path, int model_vocab, tl_prompt_dataset *out, tl_error *err);
void tl_prompt_free(tl_prompt_dataset *ds);

/* The adapter map over prompts: map->n_examples[a] / map->examples[a] are adapter a's PROMPTS (dataset order).
 * Same keys, pool order, fixed-pool rules and errors as tl_adapter_map_build. */
tl_status tl_adapter_map_build_prompt(const tl_prompt_dataset *ds, tl_adapter_key key, char *const *names, int n_names,
                                      tl_adapter_map *out, tl_error *err);

/* The prompts as units of the batching engine (tl_batcher.h), so each step's prompts per adapter come from the
 * same per-adapter shuffled streams, round robin, cursors and checkpoints as SFT examples: a prompt reads as one
 * sequence whose "response" is the prompt itself (so the engine never skips it), weighting TL_WEIGHT_ONE. The
 * trainer reads the placements (tl_batcher_units: prompt index and adapter) and builds its own rollouts; the
 * engine's micro-batches are not used. */
tl_unit_source tl_prompt_source(const tl_prompt_dataset *ds);

#endif
