/* pref_batcher: preference pairs as units of the shared batching engine (tl_batcher.h), plus the pairs table
 * that tells a sequence-level loss (DPO, reward) which two sequences of which micro-batch form each pair.
 *
 * Everything that decides what a pair's rows contain (stream order, truncation, targets, row seeds, adapter-
 * aligned packing) is the engine's, so preference and SFT batches obey the same isolation guarantees; this file
 * only says how a pair reads as two sequences and translates the engine's unit placements into pairs. */
#include "data/tl_pref.h"

#include <stdlib.h>

static void pref_get(const void *data, int64_t i, tl_seq_src *out) {
    const tl_pref_dataset *ds = data;
    const tl_pref_tokens *resp[2] = {&ds->chosen, &ds->rejected};
    const int64_t p0 = ds->prompt.offsets[i], p1 = ds->prompt.offsets[i + 1];
    for (int r = 0; r < 2; r++) {
        const int64_t r0 = resp[r]->offsets[i], r1 = resp[r]->offsets[i + 1];
        out[r].prompt = ds->prompt.tokens + p0;
        out[r].n_prompt = p1 - p0;
        out[r].response = resp[r]->tokens + r0;
        out[r].n_response = r1 - r0;
    }
}

static tl_unit_source pref_source(const tl_pref_dataset *ds) {
    tl_unit_source s = {.path = ds->path, .data = ds, .n_units = ds->n_pairs, .seqs_per_unit = 2,
                        .weighting = TL_WEIGHT_ONE, .get = pref_get};
    return s;
}

static void to_pairs(const tl_unit_place *u, int64_t n, tl_pref_pair *out) {
    for (int64_t i = 0; i < n; i++) {
        out[i].pair = u[i].unit;
        out[i].adapter = u[i].adapter;
        out[i].mb = u[i].mb;
        out[i].chosen = u[i].seq;
        out[i].rejected = u[i].seq + 1;
        out[i].n_chosen_targets = u[i].n_targets[0];
        out[i].n_rejected_targets = u[i].n_targets[1];
    }
}

tl_status tl_adapter_map_build_pref(const tl_pref_dataset *ds, tl_adapter_key key, char *const *names, int n_names,
                                    tl_adapter_map *out, tl_error *err) {
    const tl_user_items d = {.path = ds->path, .n_users = ds->n_users, .user_names = ds->user_names,
                             .user_groups = ds->user_groups, .n_items = ds->n_pairs, .user = ds->user};
    return tl_adapter_map_build_users(&d, key, names, n_names, out, err);
}

/* ------------------------------------------------------------------------------------------------------------
 * Training */

struct tl_pref_batcher {
    tl_batcher *core;
    tl_pref_pair *pairs; /* [examples_per_adapter * scheduled adapters] */
    tl_pref_step step;
};

void tl_pref_batcher_free(tl_pref_batcher *b) {
    if (!b) return;
    tl_batcher_free(b->core);
    free(b->pairs);
    free(b);
}

tl_status tl_pref_batcher_init(const tl_pref_dataset *ds, const tl_adapter_map *map, const tl_batcher_opts *opts,
                               tl_pref_batcher **out, tl_error *err) {
    *out = NULL;
    tl_unit_source src = pref_source(ds);
    tl_pref_batcher *b = calloc(1, sizeof *b);
    if (!b) return tl_fail(err, TL_ERR_RUNTIME, "preference batcher: out of memory");
    tl_status st = tl_batcher_init_units(&src, map, opts, &b->core, err);
    if (st != TL_OK) {
        free(b);
        return st;
    }
    /* the engine accepted the options: adapters_per_step >= 0, examples_per_adapter >= 1, a non-empty pool */
    int A = map->n_adapters;
    int64_t k = (opts->adapters_per_step == 0 || opts->adapters_per_step >= A) ? A : opts->adapters_per_step;
    int64_t cap = k * opts->examples_per_adapter;
    b->pairs = malloc((size_t)cap * sizeof *b->pairs);
    if (!b->pairs) {
        tl_pref_batcher_free(b);
        return tl_fail(err, TL_ERR_RUNTIME, "preference batcher: out of memory for %lld pairs per step",
                       (long long)cap);
    }
    b->step.pairs = b->pairs;
    *out = b;
    return TL_OK;
}

tl_status tl_pref_batcher_next(tl_pref_batcher *b, int64_t step, tl_pref_step **out, tl_error *err) {
    *out = NULL;
    tl_step_batch *sb = NULL;
    TL_TRY(tl_batcher_next(b->core, step, &sb, err));
    int64_t n = 0, skipped = 0;
    const tl_unit_place *u = tl_batcher_units(b->core, &n, &skipped);
    to_pairs(u, n, b->pairs);
    b->step.batch = sb;
    b->step.n_pairs = n;
    b->step.n_skipped = skipped;
    *out = &b->step;
    return TL_OK;
}

void tl_pref_batcher_set_adapter_steps(tl_pref_batcher *b, const int64_t *adapter_steps) {
    tl_batcher_set_adapter_steps(b->core, adapter_steps);
}

tl_cursor *tl_pref_batcher_cursors(tl_pref_batcher *b) { return tl_batcher_cursors(b->core); }

int tl_pref_batcher_peek(const tl_pref_batcher *b, int64_t step, int32_t *out, int cap) {
    return tl_batcher_peek(b->core, step, out, cap);
}

tl_status tl_pref_batcher_set_global(tl_pref_batcher *b, const int32_t *gidx, int n_global, tl_error *err) {
    return tl_batcher_set_global(b->core, gidx, n_global, err);
}

/* ------------------------------------------------------------------------------------------------------------
 * Evaluation */

struct tl_pref_eval_iter {
    tl_eval_iter *core;
    tl_pref_pair *pairs; /* a pair holds at least 4 tokens, so micro_batch_tokens / 4 of them fit */
    tl_pref_eval_batch batch;
};

void tl_pref_eval_iter_free(tl_pref_eval_iter *it) {
    if (!it) return;
    tl_eval_iter_free(it->core);
    free(it->pairs);
    free(it);
}

tl_status tl_pref_eval_iter_init(const tl_pref_dataset *ds, const tl_adapter_map *map, int micro_batch_tokens,
                                 int max_seq_len, tl_pref_eval_iter **out, tl_error *err) {
    *out = NULL;
    tl_unit_source src = pref_source(ds);
    tl_pref_eval_iter *it = calloc(1, sizeof *it);
    if (!it) return tl_fail(err, TL_ERR_RUNTIME, "preference eval: out of memory");
    tl_status st = tl_eval_iter_init_units(&src, map, micro_batch_tokens, max_seq_len, &it->core, err);
    if (st != TL_OK) {
        free(it);
        return st;
    }
    it->pairs = malloc(((size_t)micro_batch_tokens / 4 + 1) * sizeof *it->pairs);
    if (!it->pairs) {
        tl_pref_eval_iter_free(it);
        return tl_fail(err, TL_ERR_RUNTIME, "preference eval: out of memory for %d tokens", micro_batch_tokens);
    }
    it->batch.pairs = it->pairs;
    *out = it;
    return TL_OK;
}

tl_status tl_pref_eval_iter_next(tl_pref_eval_iter *it, int force_slot, tl_pref_eval_batch **out, int *done,
                                 tl_error *err) {
    *out = NULL;
    tl_host_mb *mb = NULL;
    TL_TRY(tl_eval_iter_next(it->core, force_slot, &mb, done, err));
    if (*done) return TL_OK;
    int64_t n = 0;
    const tl_unit_place *u = tl_eval_iter_units(it->core, &n);
    to_pairs(u, n, it->pairs);
    it->batch.mb = mb;
    it->batch.n_pairs = n;
    *out = &it->batch;
    return TL_OK;
}
