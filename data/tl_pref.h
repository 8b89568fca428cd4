/* tl_pref: pairwise preference data for DPO and reward models: the HDF5 file, its adapter map, its training
 * batches and its evaluation batches. Schema and batching rules in docs/data-format.md ("kind preference").
 *
 * File: root attributes tailor_format = 1, kind = "preference", optional vocab_size; /users/name [U] and
 * optional /users/group [U] exactly as for SFT; for N pairs, three token runs per pair, each a flat int32 token
 * array with int64 offsets [N+1] (0, nondecreasing, last = its token count):
 *   /pref/prompt/tokens, /pref/prompt/offsets      the prompt (may be empty)
 *   /pref/chosen/tokens, /pref/chosen/offsets      the preferred response (at least one token)
 *   /pref/rejected/tokens, /pref/rejected/offsets  the other response (at least one token)
 * and /pref/user int32 [N] (index into /users). tl_pref_open validates all of it like tl_sft_open (every
 * violation TL_ERR_INPUT, one line "<file>: <dataset>: <problem>", naming the pair and position; the same
 * storage rules and the same child-process isolation), and refuses a file where no pair could be trained
 * (every pair with a side of fewer than 2 tokens, which the batcher would skip).
 *
 * Batches reuse the SFT machinery (tl_batcher.h) with a pair as the unit: the adapter map lists pairs; each
 * adapter's stream shuffles its pairs exactly as SFT streams shuffle examples (seed from run.seed, the adapter's
 * name and the epoch); a step schedules adapters round robin and takes examples_per_adapter PAIRS from each.
 * Pair i becomes two sequences, prompt+chosen and prompt+rejected, each truncated to max_seq_len by the SFT
 * policy (drop prompt tokens from the left; a response longer than max_seq_len keeps its first max_seq_len
 * tokens and loses the prompt). Token j of a sequence is trained when j >= max(1, its prompt length after
 * truncation), as the target of row j - 1; trained rows weigh 1, others 0 (the loss computes its own
 * per-sequence weights). The two sequences are adjacent in one micro-batch, chosen first; packing is adapter-
 * aligned as for SFT and a chunk never splits a pair, so 2 * max_seq_len <= micro_batch_tokens is required.
 * A pair with a side that has no trained token (an empty prompt and a 1-token response) is skipped: it
 * consumes its stream position, is counted in n_skipped and is not packed.
 *
 * The dataset and the map must outlive the batcher and the eval iterator, which keep pointers to them. */
#ifndef TL_PREF_H
#define TL_PREF_H

#include <stdint.h>

#include "data/tl_batcher.h"
#include "data/tl_dataset.h"

/* One of the three token runs of every pair: run i is tokens[offsets[i] : offsets[i+1]]. */
typedef struct {
    int64_t n_tokens;
    int32_t *tokens;  /* [n_tokens] */
    int64_t *offsets; /* [n_pairs + 1] */
} tl_pref_tokens;

typedef struct {
    char *path;
    int n_users;
    char **user_names;  /* [n_users], UTF-8, unique */
    char **user_groups; /* [n_users] or NULL when /users/group is absent */
    int64_t n_pairs;
    tl_pref_tokens prompt, chosen, rejected;
    int32_t *user;           /* [n_pairs] */
    int64_t vocab_size_attr; /* 0 when absent */
} tl_pref_dataset;

/* model_vocab <= 0 skips the vocabulary check (inspection without a model). A file of another kind is
 * TL_ERR_INPUT naming attribute kind (tl_h5_kind in tl_dataset.h tells the kinds apart first). */
tl_status tl_pref_open(const char *path, int model_vocab, tl_pref_dataset *out, tl_error *err);
void tl_pref_free(tl_pref_dataset *ds);

/* The adapter map over pairs: map->n_examples[a] / map->examples[a] are adapter a's PAIRS (dataset order).
 * Same keys, pool order, fixed-pool rules and errors as tl_adapter_map_build (key = group on a file without
 * /users/group is TL_ERR_INPUT naming adapter.key and the file). */
tl_status tl_adapter_map_build_pref(const tl_pref_dataset *ds, tl_adapter_key key, char *const *names, int n_names,
                                    tl_adapter_map *out, tl_error *err);

/* Where one pair of a step (or of an eval micro-batch) lies. In micro-batch mb, the chosen sequence is rows
 * [cu_seqlens[chosen], cu_seqlens[chosen + 1]) and the rejected one the next sequence (rejected = chosen + 1);
 * both rows ranges belong to `adapter` (one segment of that micro-batch, with the segment's slot). */
typedef struct {
    int64_t pair;    /* dataset pair index (also mb->example[] of both sequences) */
    int32_t adapter; /* adapter index in the map */
    int32_t mb;      /* micro-batch index within the step (always 0 in eval) */
    int32_t chosen, rejected;                     /* sequence indices within that micro-batch */
    int32_t n_chosen_targets, n_rejected_targets; /* trained rows (targets >= 0) of each sequence, both >= 1 */
} tl_pref_pair;

typedef struct {
    /* The micro-batches, as for SFT, except: target_count[a] = number of PAIRS of adapter a in the step, active =
     * adapters with at least one pair (ascending), weight = 1 on every trained row, n_truncated counts
     * truncated sequences (up to two per pair), mb->example[] holds pair indices. */
    tl_step_batch *batch;
    int64_t n_pairs;     /* pairs in the step = sum of target_count */
    tl_pref_pair *pairs; /* [n_pairs], in packing order: ascending micro-batch, then sequence */
    int64_t n_skipped;   /* pairs taken from streams but not packed (a side with no trained token) */
} tl_pref_step;

typedef struct tl_pref_batcher tl_pref_batcher;

/* Options as for tl_batcher_init, with examples_per_adapter counting pairs; 2 * max_seq_len >
 * micro_batch_tokens is TL_ERR_INPUT naming train.micro_batch_tokens and data.max_seq_len. */
tl_status tl_pref_batcher_init(const tl_pref_dataset *ds, const tl_adapter_map *map, const tl_batcher_opts *opts,
                               tl_pref_batcher **out, tl_error *err);
void tl_pref_batcher_free(tl_pref_batcher *b);
/* Fills the step `step` (0-based) and advances the scheduled adapters' cursors. The returned step (and its
 * batch) is owned by the batcher and valid until the next call. Row seeds as for SFT, with the pair's sequence
 * index 2 * j + role (j its index among the adapter's pairs of this step, role 0 chosen, 1 rejected) in place
 * of the example index: they depend on the adapter's name, its own step count and j, never on placement. */
tl_status tl_pref_batcher_next(tl_pref_batcher *b, int64_t step, tl_pref_step **out, tl_error *err);
void tl_pref_batcher_set_adapter_steps(tl_pref_batcher *b, const int64_t *adapter_steps);
tl_cursor *tl_pref_batcher_cursors(tl_pref_batcher *b); /* [n_adapters], read/write (checkpoints) */
/* tl_batcher_peek on the pairs' batcher: a superset of step `step`'s active adapters, drawing nothing. */
int tl_pref_batcher_peek(const tl_pref_batcher *b, int64_t step, int32_t *out, int cap);
/* as tl_batcher_set_global */
tl_status tl_pref_batcher_set_global(tl_pref_batcher *b, const int32_t *gidx, int n_global, tl_error *err);

/* Evaluation: every pair of the map's adapters exactly once (adapters in map order, each one's pairs in dataset
 * order), truncated and packed the same way (pairs whole, chosen first), trained rows weighted 1; pairs that
 * would be skipped in training are skipped. force_slot as for tl_eval_iter_next: >= 0 sets every segment's slot
 * to it, TL_SLOT_BASE the base model (no adapter: the DPO reference policy), TL_SLOT_OWN each pair's own adapter.
 * Each call returns a non-empty micro-batch with its pairs (valid until the next call) and *done = 0, or
 * *out = NULL and *done = 1 once every pair was returned. */
typedef struct {
    tl_host_mb *mb;
    int64_t n_pairs;
    tl_pref_pair *pairs; /* [n_pairs], mb = 0, in sequence order */
} tl_pref_eval_batch;

typedef struct tl_pref_eval_iter tl_pref_eval_iter;
tl_status tl_pref_eval_iter_init(const tl_pref_dataset *ds, const tl_adapter_map *map, int micro_batch_tokens,
                                 int max_seq_len, tl_pref_eval_iter **out, tl_error *err);
tl_status tl_pref_eval_iter_next(tl_pref_eval_iter *it, int force_slot, tl_pref_eval_batch **out, int *done,
                                 tl_error *err);
void tl_pref_eval_iter_free(tl_pref_eval_iter *it);

#endif
