/* tl_batcher: from a dataset to flat, padding-free micro-batches of many adapters.
 *
 * Adapter map: adapter.key = user (one adapter per user), group (one per distinct /users/group value) or
 * global (one adapter, named "global"). Adapters are ordered by first appearance in /users. An adapter with
 * no examples is reported (n_empty) and left out of the pool.
 *
 * Streams: each adapter has its own example stream, a permutation of its examples shuffled with a seed derived
 * from run.seed and the adapter's name and its epoch, so an adapter's order never depends on who else is in
 * the dataset. The cursor (epoch, position) per adapter is all the state, saved in checkpoints.
 *
 * Steps: global step t activates adapters_per_step adapters, round robin over the pool (all when 0 or >= pool
 * size); each active adapter takes examples_per_adapter examples from its stream. Sequences are truncated to
 * max_seq_len (policy: drop prompt tokens from the left, keeping the response; when the response alone is
 * longer, keep its first max_seq_len tokens and drop the whole prompt) and counted. They are then packed, in
 * adapter order, into micro-batches of at most micro_batch_tokens tokens (a sequence never splits), so each
 * adapter's rows in a micro-batch form one contiguous segment.
 *
 * Targets: token j of a sequence is trained when j >= max(1, prompt_len); it is the target of row j - 1.
 * Loss weights: each trained row gets 1 / (number of trained rows of its adapter in the whole step), so the
 * step's loss is the mean per adapter over its own target tokens, summed over adapters. A sequence with no
 * trained token (length < 2, or all prompt) consumes its stream position but is not packed; an adapter whose
 * step has no trained row is not listed in `active` (its optimizer must not step on a zero gradient).
 *
 * Row seeds hash (run.seed, adapter name, the adapter's own step count, index of the example among the
 * adapter's examples of this step, position), so dropout masks never depend on other adapters or on packing.
 * Exact hashing and shuffling are specified in docs/data-format.md. The dataset and the map must outlive the
 * batcher and the eval iterator, which keep pointers to them. */
#ifndef TL_BATCHER_H
#define TL_BATCHER_H

#include <stdint.h>

#include "kernels/tl_backend.h"
#include "data/tl_dataset.h"

typedef enum { TL_KEY_USER = 0, TL_KEY_GROUP = 1, TL_KEY_GLOBAL = 2 } tl_adapter_key;

typedef struct {
    int n_adapters;
    char **names;          /* [n_adapters], the adapter's true name (user name, group name or "global") */
    int64_t *n_examples;   /* [n_adapters] */
    int64_t **examples;    /* [n_adapters][n_examples[a]] example indices into the dataset */
    int *user_adapter;     /* [ds->n_users] adapter of each user, -1 when its adapter is not in the pool (no
                              examples, or left out of a fixed `names` pool) */
    int n_empty;           /* users (or groups) skipped for having no examples; with a fixed `names` pool, the
                              pool's adapters that have no example in this dataset (they stay, with 0 examples) */
} tl_adapter_map;

/* Builds the map. `names` may be given (n_names > 0) to fix the pool from a previous run (eval, resume): then
 * adapters follow that order (adapter index = position in `names`, even for names without examples here),
 * users whose adapter is not in it are ignored, and a name listed twice is an error. key = group on a
 * dataset without /users/group is TL_ERR_INPUT. */
tl_status tl_adapter_map_build(const tl_sft_dataset *ds, tl_adapter_key key, char *const *names, int n_names,
                               tl_adapter_map *out, tl_error *err);
/* The parts every dataset kind has: the users table and the user of each item. */
typedef struct {
    const char *path;         /* names the file in messages (NULL: "(dataset)") */
    int n_users;
    char *const *user_names;  /* [n_users] */
    char *const *user_groups; /* [n_users] or NULL */
    int64_t n_items;          /* examples, or preference pairs */
    const int32_t *user;      /* [n_items] */
} tl_user_items;

/* The same from those parts. A user index out of [0, n_users) is TL_ERR_INPUT. */
tl_status tl_adapter_map_build_users(const tl_user_items *d, tl_adapter_key key, char *const *names, int n_names,
                                     tl_adapter_map *out, tl_error *err);
void tl_adapter_map_free(tl_adapter_map *m);
/* Evaluation split across ranks: adapters with keep[a] == 0 lose their examples (n_examples[a] = 0), so passes
 * over the map skip them. keep NULL keeps everything. */
void tl_adapter_map_keep(tl_adapter_map *m, const uint8_t *keep);

typedef struct {
    int64_t epoch, pos;
} tl_cursor;

typedef struct {
    int examples_per_adapter, adapters_per_step, micro_batch_tokens, max_seq_len;
    uint64_t seed;
} tl_batcher_opts;

/* One micro-batch in host memory; capacities fixed at tl_batcher_init from micro_batch_tokens. */
typedef struct {
    int n_tok, n_seq, n_seg, max_seqlen;
    int32_t *tokens, *pos, *cu_seqlens, *targets;
    float *weight;      /* [n_tok] loss weight of each row (0 where targets < 0) */
    int32_t *adapter;   /* [n_tok] adapter index of each row */
    uint64_t *row_seed; /* [n_tok] */
    tl_seg *segs;       /* slot = adapter index */
    int64_t *example;   /* [n_seq] dataset example index of each sequence (preference data: its pair index) */
} tl_host_mb;

typedef struct {
    int n_mb;
    tl_host_mb *mb;        /* [capacity] micro-batches of this step */
    int n_active;
    int32_t *active;       /* [n_active] adapter indices trained this step (target_count > 0), ascending */
    int64_t *target_count; /* [n_adapters] trained rows per adapter in this step (0 when inactive); preference
                              batches (tl_pref.h): pairs per adapter */
    int64_t n_tokens;      /* tokens in the step */
    int64_t n_truncated;   /* sequences truncated to max_seq_len in this step */
} tl_step_batch;

typedef struct tl_batcher tl_batcher;

tl_status tl_batcher_init(const tl_sft_dataset *ds, const tl_adapter_map *map, const tl_batcher_opts *opts,
                          tl_batcher **out, tl_error *err);
void tl_batcher_free(tl_batcher *b);
/* Fills the batch for global step `step` (0-based) and advances the scheduled adapters' cursors. The returned
 * batch is owned by the batcher and valid until the next call. Options: examples_per_adapter >= 1,
 * adapters_per_step >= 0, 2 <= max_seq_len <= micro_batch_tokens; a cursor out of range (after a restore) is
 * TL_ERR_INPUT. */
tl_status tl_batcher_next(tl_batcher *b, int64_t step, tl_step_batch **out, tl_error *err);
/* Per-adapter adapter step counts are kept by the trainer; the batcher only needs it for row seeds. */
void tl_batcher_set_adapter_steps(tl_batcher *b, const int64_t *adapter_steps);
tl_cursor *tl_batcher_cursors(tl_batcher *b); /* [n_adapters], read/write (checkpoint save/restore) */
/* The adapters step `step` may train, without drawing anything (no cursor, cache or state changes): its round
 * robin window's adapters that have examples, ascending, into out[0 .. return) (at most cap). A superset of the
 * `active` list tl_batcher_next returns for that step: an adapter whose drawn units have no trained token is left
 * out of `active` only. For the adapter store's prefetch of the next step's adapters. */
int tl_batcher_peek(const tl_batcher *b, int64_t step, int32_t *out, int cap);
/* Many processes, dist.strategy user_shard: this batcher's adapters are one rank's share of a pool of n_global
 * adapters, adapter a being adapter gidx[a] of that pool (ascending). The round robin of adapters_per_step then
 * runs over the whole pool and this batcher's adapters take part when the window covers them, so an adapter's
 * steps are exactly those of a one-process run. gidx is borrowed (it must outlive the batcher); NULL (the
 * default) schedules over this batcher's own adapters. TL_ERR_RUNTIME when gidx is not ascending in range. */
tl_status tl_batcher_set_global(tl_batcher *b, const int32_t *gidx, int n_global, tl_error *err);

/* Evaluation batches: every example of the listed adapters exactly once (adapters in map order, each one's
 * examples in dataset order), truncated and packed the same way, with weights 1 per trained row; examples with
 * no trained token are skipped. Call repeatedly: each call returns a non-empty micro-batch (valid until the
 * next call) with *done = 0, or *out = NULL and *done = 1 once everything was returned. */
typedef struct tl_eval_iter tl_eval_iter;
/* Slot sentinels: TL_SLOT_BASE is the slot of a segment that runs the bare base model, no adapter (tl_seg's
 * slot < 0, kernels/tl_backend.h); TL_SLOT_OWN, only as a force_slot, keeps each example's own adapter. */
enum { TL_SLOT_BASE = -1, TL_SLOT_OWN = -2 };
tl_status tl_eval_iter_init(const tl_sft_dataset *ds, const tl_adapter_map *map, int micro_batch_tokens,
                            int max_seq_len, tl_eval_iter **out, tl_error *err);
/* force_slot >= 0 sets every segment's slot to it (cross evaluation); TL_SLOT_BASE for none (base model);
 * TL_SLOT_OWN keeps each example's own adapter. */
tl_status tl_eval_iter_next(tl_eval_iter *it, int force_slot, tl_host_mb **out, int *done, tl_error *err);
void tl_eval_iter_free(tl_eval_iter *it);

/* ------------------------------------------------------------------------------------------------------------
 * The engine under the batcher and the eval iterator, shared with the preference batcher (tl_pref.h); the
 * trainer uses the typed APIs instead. It works on units: an SFT example (one sequence) or a preference pair
 * (two sequences: chosen, then rejected). Everything above applies per unit: the map lists units, streams
 * shuffle units, examples_per_adapter counts units; each sequence of a unit is truncated by the policy above;
 * a unit is packed whole (its sequences adjacent, in one micro-batch) and an adapter's chunks never split a
 * unit; a unit with a sequence that has no trained token is skipped (its stream position is still consumed).
 * Row seeds: sequence s = j * seqs_per_unit + role of the adapter's step (j the unit's index among the
 * adapter's units of this step, role the sequence's index in its unit) gets mix(mix(row_key ^ adapter_step)
 * ^ s); in eval, mix(row_key ^ (unit * seqs_per_unit + role)); row pos gets mix(that ^ pos). With one
 * sequence per unit these are exactly the SFT seeds above. */

/* One sequence before truncation: a prompt, then a response; the two need not be adjacent in memory. */
typedef struct {
    const int32_t *prompt, *response;
    int64_t n_prompt, n_response;
} tl_seq_src;

typedef enum {
    TL_WEIGHT_TOKEN_MEAN = 0, /* target_count[a] = trained rows of adapter a in the step, weight 1/target_count */
    TL_WEIGHT_ONE = 1         /* target_count[a] = units of adapter a in the step, weight 1 per trained row (the
                                 loss weighs whole sequences itself) */
} tl_unit_weighting;

typedef struct {
    const char *path; /* the dataset's file, for messages (may be NULL) */
    const void *data; /* handed to get; must outlive the batcher or iterator */
    int64_t n_units;  /* the map's entries must lie in [0, n_units) */
    int seqs_per_unit; /* 1 or 2; seqs_per_unit * max_seq_len <= micro_batch_tokens is required */
    tl_unit_weighting weighting;
    void (*get)(const void *data, int64_t unit, tl_seq_src *out); /* fills out[0 .. seqs_per_unit) */
} tl_unit_source;

/* Where a packed unit landed. */
typedef struct {
    int64_t unit;         /* dataset example or pair index */
    int32_t adapter;
    int32_t mb;           /* micro-batch index in the step (always 0 in eval) */
    int32_t seq;          /* index of the unit's first sequence in that micro-batch; the others follow it */
    int32_t n_targets[2]; /* trained rows of each of its sequences ([1] = 0 for one-sequence units) */
} tl_unit_place;

tl_status tl_batcher_init_units(const tl_unit_source *src, const tl_adapter_map *map, const tl_batcher_opts *opts,
                                tl_batcher **out, tl_error *err);
/* The units packed by the last tl_batcher_next, in packing order (ascending micro-batch and sequence), and the
 * number of units it skipped for having a sequence without trained tokens. Valid until the next call. */
const tl_unit_place *tl_batcher_units(const tl_batcher *b, int64_t *n_units, int64_t *n_skipped);
tl_status tl_eval_iter_init_units(const tl_unit_source *src, const tl_adapter_map *map, int micro_batch_tokens,
                                  int max_seq_len, tl_eval_iter **out, tl_error *err);
/* The units of the micro-batch returned by the last tl_eval_iter_next. */
const tl_unit_place *tl_eval_iter_units(const tl_eval_iter *it, int64_t *n_units);

#endif
