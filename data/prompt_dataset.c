/* prompt_dataset: opens an HDF5 prompt dataset (kind "prompt", schema in docs/data-format.md), reads every array
 * into memory and validates all of it, through the same building blocks as the SFT and preference readers
 * (tl_dataset.h), so all kinds obey and report the same rules. */
#include "data/tl_prompt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The optional reference answers: both datasets or neither. */
static tl_status read_reference(tl_h5_reader *r, tl_prompt_dataset *ds, int model_vocab, tl_error *err) {
    const char *path = ds->path;
    int has_off = 0, has_tok = 0;
    TL_TRY(tl_h5_has(r, "/prompt/reference/offsets", &has_off, err));
    TL_TRY(tl_h5_has(r, "/prompt/reference/tokens", &has_tok, err));
    if (!has_off && !has_tok) return TL_OK;
    if (!has_off || !has_tok)
        return tl_fail(err, TL_ERR_INPUT,
                       "%s: %s: missing dataset, expected /prompt/reference/tokens and "
                       "/prompt/reference/offsets together or neither",
                       path, has_off ? "/prompt/reference/tokens" : "/prompt/reference/offsets");
    int64_t n_off = 0;
    TL_TRY(tl_h5_read_i32(r, "/prompt/reference/tokens", &ds->ref_tokens, &ds->n_ref_tokens, err));
    TL_TRY(tl_h5_read_i64(r, "/prompt/reference/offsets", &ds->ref_offsets, &n_off, err));
    if (n_off != ds->n_prompts + 1)
        return tl_fail(err, TL_ERR_INPUT,
                       "%s: /prompt/reference/offsets: length %lld, expected %lld (one offset per "
                       "prompt plus one)",
                       path, (long long)n_off, (long long)(ds->n_prompts + 1));
    ds->has_reference = 1;
    TL_TRY(tl_check_offsets(path, "/prompt/reference/offsets", ds->ref_offsets, ds->n_prompts,
                            "/prompt/reference/tokens", ds->n_ref_tokens, err));
    return tl_check_tokens(path, "/prompt/reference/tokens", "prompt", ds->ref_tokens, ds->ref_offsets, ds->n_prompts,
                           model_vocab, ds->vocab_size_attr, err);
}

static tl_status read_prompts(tl_h5_reader *r, tl_prompt_dataset *ds, int model_vocab, tl_error *err) {
    const char *path = ds->path;
    int64_t n_off = 0, n_user = 0;
    TL_TRY(tl_h5_read_i32(r, "/prompt/tokens", &ds->tokens, &ds->n_tokens, err));
    TL_TRY(tl_h5_read_i64(r, "/prompt/offsets", &ds->offsets, &n_off, err));
    TL_TRY(tl_h5_read_i32(r, "/prompt/user", &ds->user, &n_user, err));
    if (n_off == 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: /prompt/offsets: no elements, expected N+1 (at least 1)", path);
    const int64_t n = n_off - 1;
    ds->n_prompts = n;
    if (n == 0) return tl_fail(err, TL_ERR_INPUT, "%s: /prompt/offsets: empty dataset (no prompts)", path);
    if (n_user != n)
        return tl_fail(err, TL_ERR_INPUT, "%s: /prompt/user: length %lld, expected %lld (one per prompt)", path,
                       (long long)n_user, (long long)n);
    TL_TRY(tl_check_offsets(path, "/prompt/offsets", ds->offsets, n, "/prompt/tokens", ds->n_tokens, err));
    for (int64_t i = 0; i < n; i++) {
        int64_t len = ds->offsets[i + 1] - ds->offsets[i];
        if (len == 0)
            return tl_fail(err, TL_ERR_INPUT,
                           "%s: /prompt/offsets: prompt %lld is empty, expected at least one "
                           "token (generation continues the prompt)",
                           path, (long long)i);
        if (len > ds->max_prompt_len) ds->max_prompt_len = len;
    }
    TL_TRY(tl_check_user_range(path, "/prompt/user", "prompt", ds->user, n, ds->n_users, err));
    TL_TRY(tl_check_tokens(path, "/prompt/tokens", "prompt", ds->tokens, ds->offsets, n, model_vocab,
                           ds->vocab_size_attr, err));
    return read_reference(r, ds, model_vocab, err);
}

void tl_prompt_free(tl_prompt_dataset *ds) {
    if (!ds) return;
    tl_free_strings(ds->user_names, ds->n_users);
    tl_free_strings(ds->user_groups, ds->n_users);
    free(ds->tokens), free(ds->offsets), free(ds->user), free(ds->ref_tokens), free(ds->ref_offsets);
    free(ds->path);
    memset(ds, 0, sizeof *ds);
}

static tl_h5_common prompt_fields(void *p) {
    tl_prompt_dataset *d = p;
    return (tl_h5_common){&d->path, &d->n_users, &d->user_names, &d->user_groups, &d->vocab_size_attr};
}
static tl_status prompt_body(tl_h5_reader *r, void *ds, int model_vocab, tl_error *err) {
    return read_prompts(r, ds, model_vocab, err);
}
static void prompt_free(void *ds) { tl_prompt_free(ds); }

tl_status tl_prompt_open(const char *path, int model_vocab, tl_prompt_dataset *out, tl_error *err) {
    static const tl_h5_kind_reader k = {"prompt", sizeof(tl_prompt_dataset), prompt_fields, prompt_body, prompt_free};
    return tl_h5_open_isolated(path, model_vocab, &k, out, err);
}

tl_status tl_adapter_map_build_prompt(const tl_prompt_dataset *ds, tl_adapter_key key, char *const *names, int n_names,
                                      tl_adapter_map *out, tl_error *err) {
    const tl_user_items d = {.path = ds->path,
                             .n_users = ds->n_users,
                             .user_names = ds->user_names,
                             .user_groups = ds->user_groups,
                             .n_items = ds->n_prompts,
                             .user = ds->user};
    return tl_adapter_map_build_users(&d, key, names, n_names, out, err);
}

static void prompt_get(const void *data, int64_t i, tl_seq_src *out) {
    const tl_prompt_dataset *ds = data;
    out->prompt = ds->tokens + ds->offsets[i];
    out->n_prompt = 0;
    out->response = ds->tokens + ds->offsets[i];
    out->n_response = ds->offsets[i + 1] - ds->offsets[i];
}

tl_unit_source tl_prompt_source(const tl_prompt_dataset *ds) {
    tl_unit_source s = {.path = ds->path,
                        .data = ds,
                        .n_units = ds->n_prompts,
                        .seqs_per_unit = 1,
                        .weighting = TL_WEIGHT_ONE,
                        .get = prompt_get};
    return s;
}
