/* pref_dataset: opens an HDF5 preference dataset (kind "preference", schema in docs/data-format.md), reads every
 * array into memory and validates all of it, so the preference batcher and the trainer index it unchecked.
 * Root attributes, the users table, typed reads, offsets and token ranges go through the same building blocks
 * as the SFT reader (tl_dataset.h), so both kinds obey and report the same rules. */
#include "data/tl_pref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The three token runs of a pair, in the order they are read and checked. */
enum { PART_PROMPT, PART_CHOSEN, PART_REJECTED, N_PARTS };
static const char *const k_part[N_PARTS] = {"prompt", "chosen", "rejected"};

static tl_pref_tokens *part(tl_pref_dataset *ds, int k) {
    return k == PART_PROMPT ? &ds->prompt : k == PART_CHOSEN ? &ds->chosen : &ds->rejected;
}

static tl_status read_pairs(tl_h5_reader *r, tl_pref_dataset *ds, int model_vocab, tl_error *err) {
    const char *path = ds->path;
    char tok_name[N_PARTS][32], off_name[N_PARTS][32];
    int64_t n_off[N_PARTS];
    for (int k = 0; k < N_PARTS; k++) {
        snprintf(tok_name[k], sizeof tok_name[k], "/pref/%s/tokens", k_part[k]);
        snprintf(off_name[k], sizeof off_name[k], "/pref/%s/offsets", k_part[k]);
        tl_pref_tokens *p = part(ds, k);
        TL_TRY(tl_h5_read_i32(r, tok_name[k], &p->tokens, &p->n_tokens, err));
        TL_TRY(tl_h5_read_i64(r, off_name[k], &p->offsets, &n_off[k], err));
    }
    int64_t n_user = 0;
    TL_TRY(tl_h5_read_i32(r, "/pref/user", &ds->user, &n_user, err));
    for (int k = 0; k < N_PARTS; k++)
        if (n_off[k] == 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: no elements, expected N+1 (at least 1)", path, off_name[k]);
    for (int k = PART_CHOSEN; k < N_PARTS; k++)
        if (n_off[k] != n_off[PART_PROMPT])
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: length %lld, expected %lld (the length of %s: one offset per "
                           "pair plus one)", path, off_name[k], (long long)n_off[k], (long long)n_off[PART_PROMPT],
                           off_name[PART_PROMPT]);
    const int64_t n = n_off[PART_PROMPT] - 1;
    ds->n_pairs = n;
    if (n == 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s: empty dataset (no pairs)", path, off_name[PART_PROMPT]);
    if (n_user != n)
        return tl_fail(err, TL_ERR_INPUT, "%s: /pref/user: length %lld, expected %lld (one per pair, %s has %lld)",
                       path, (long long)n_user, (long long)n, off_name[PART_PROMPT], (long long)n_off[PART_PROMPT]);
    for (int k = 0; k < N_PARTS; k++) {
        const tl_pref_tokens *p = part(ds, k);
        TL_TRY(tl_check_offsets(path, off_name[k], p->offsets, n, tok_name[k], p->n_tokens, err));
    }
    /* An empty response leaves a sequence with nothing to score: the pair would carry no preference. */
    for (int k = PART_CHOSEN; k < N_PARTS; k++) {
        const int64_t *off = part(ds, k)->offsets;
        for (int64_t i = 0; i < n; i++)
            if (off[i + 1] == off[i])
                return tl_fail(err, TL_ERR_INPUT, "%s: %s: pair %lld has an empty %s response, expected at least "
                               "one token", path, off_name[k], (long long)i, k_part[k]);
    }
    TL_TRY(tl_check_user_range(path, "/pref/user", "pair", ds->user, n, ds->n_users, err));
    for (int k = 0; k < N_PARTS; k++) {
        const tl_pref_tokens *p = part(ds, k);
        TL_TRY(tl_check_tokens(path, tok_name[k], "pair", p->tokens, p->offsets, n, model_vocab, ds->vocab_size_attr,
                               err));
    }
    /* A pair trains when both its sequences (prompt + response) have a trained token, i.e. at least 2 tokens
     * (responses are non-empty, checked above); truncation keeps that (tl_pref.h). If no pair does, every pair
     * would be skipped and the run would export untouched adapters. */
    const int64_t *po = ds->prompt.offsets, *co = ds->chosen.offsets, *ro = ds->rejected.offsets;
    for (int64_t i = 0; i < n; i++) {
        int64_t p = po[i + 1] - po[i];
        if (p + co[i + 1] - co[i] >= 2 && p + ro[i + 1] - ro[i] >= 2) return TL_OK;
    }
    return tl_fail(err, TL_ERR_INPUT, "%s: /pref/prompt/offsets: no pair has a token to train on (each has an empty "
                   "prompt and a 1-token response), expected at least one pair with 2 or more tokens per side", path);
}

void tl_pref_free(tl_pref_dataset *ds) {
    if (!ds) return;
    tl_free_strings(ds->user_names, ds->n_users);
    tl_free_strings(ds->user_groups, ds->n_users);
    for (int k = 0; k < N_PARTS; k++) {
        free(part(ds, k)->tokens);
        free(part(ds, k)->offsets);
    }
    free(ds->user);
    free(ds->path);
    memset(ds, 0, sizeof *ds);
}

static tl_h5_common pref_fields(void *p) {
    tl_pref_dataset *d = p;
    return (tl_h5_common){&d->path, &d->n_users, &d->user_names, &d->user_groups, &d->vocab_size_attr};
}
static tl_status pref_body(tl_h5_reader *r, void *ds, int model_vocab, tl_error *err) {
    return read_pairs(r, ds, model_vocab, err);
}
static void pref_free(void *ds) { tl_pref_free(ds); }

/* First the whole open in a separate process (tl_h5_isolated: a crash or hang of libhdf5 on a corrupt file
 * becomes one error line), then in this one (tl_h5_open_isolated). */
tl_status tl_pref_open(const char *path, int model_vocab, tl_pref_dataset *out, tl_error *err) {
    static const tl_h5_kind_reader k = {"preference", sizeof(tl_pref_dataset), pref_fields, pref_body, pref_free};
    return tl_h5_open_isolated(path, model_vocab, &k, out, err);
}
