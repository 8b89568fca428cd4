/* batcher: turns a dataset into flat, padding-free micro-batches of many adapters (see tl_batcher.h).
 *
 * Isolation is the point of every choice here: an adapter's example order, its truncation, its loss weights and
 * its dropout row seeds are computed from its own name, its own cursor and its own step count only, so training
 * it next to other adapters changes where its rows land in a micro-batch but never what they contain.
 *
 * The engine works on units (an SFT example, or a preference pair of two sequences) read through a
 * tl_unit_source, so the SFT batcher here and the preference batcher (pref_batcher.c) share every rule.
 * All memory is sized at init from the options and the longest unit of each adapter; stepping only writes
 * into it. */
#include "data/tl_batcher.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/tl_math.h"

/* Domain separators, so the stream shuffle and the row seeds never draw the same numbers from one run.seed. */
#define TL_STREAM_SALT 0x73747265616d5f31ULL /* "stream_1" */
#define TL_ROW_SALT 0x726f777365656431ULL    /* "rowseed1" */

/* ------------------------------------------------------------------------------------------------------------
 * Hashing and the per-stream random numbers */

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* splitmix64: tl_mix64 adds the golden-ratio increment itself, so stepping the state by it gives the sequence. */
static uint64_t rng_next(uint64_t *state) {
    uint64_t r = tl_mix64(*state);
    *state += 0x9e3779b97f4a7c15ULL;
    return r;
}

/* Uniform in [0, m) without modulo bias: draws below 2^64 mod m are rejected. */
static uint64_t rng_below(uint64_t *state, uint64_t m) {
    uint64_t threshold = (0 - m) % m;
    for (;;) {
        uint64_t r = rng_next(state);
        if (r >= threshold) return r % m;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Adapter map */

typedef struct {
    const char *s;
    int u;
} keyref;

static int cmp_keyref(const void *x, const void *y) {
    const keyref *a = x, *b = y;
    int c = strcmp(a->s, b->s);
    if (c) return c;
    return (a->u > b->u) - (a->u < b->u);
}

void tl_adapter_map_keep(tl_adapter_map *m, const uint8_t *keep) {
    if (!keep) return;
    for (int a = 0; a < m->n_adapters; a++)
        if (!keep[a]) m->n_examples[a] = 0;
}

void tl_adapter_map_free(tl_adapter_map *m) {
    if (!m) return;
    for (int a = 0; a < m->n_adapters; a++) {
        if (m->names) free(m->names[a]);
        if (m->examples) free(m->examples[a]);
    }
    free(m->names);
    free(m->examples);
    free(m->n_examples);
    free(m->user_adapter);
    memset(m, 0, sizeof *m);
}

/* Allocates the pool arrays for n adapters (entries zeroed so a partial map can be freed). */
static int map_alloc(tl_adapter_map *m, int n, int n_users) {
    m->n_adapters = n;
    m->names = calloc((size_t)(n ? n : 1), sizeof *m->names);
    m->examples = calloc((size_t)(n ? n : 1), sizeof *m->examples);
    m->n_examples = calloc((size_t)(n ? n : 1), sizeof *m->n_examples);
    m->user_adapter = malloc((size_t)(n_users ? n_users : 1) * sizeof *m->user_adapter);
    return m->names && m->examples && m->n_examples && m->user_adapter;
}

tl_status tl_adapter_map_build(const tl_sft_dataset *ds, tl_adapter_key key, char *const *names, int n_names,
                               tl_adapter_map *out, tl_error *err) {
    const tl_user_items d = {.path = ds->path, .n_users = ds->n_users, .user_names = ds->user_names,
                             .user_groups = ds->user_groups, .n_items = ds->n_examples, .user = ds->user};
    return tl_adapter_map_build_users(&d, key, names, n_names, out, err);
}

tl_status tl_adapter_map_build_users(const tl_user_items *d, tl_adapter_key key, char *const *names, int n_names,
                                     tl_adapter_map *out, tl_error *err) {
    memset(out, 0, sizeof *out);
    const char *path = d->path;
    int n_users = d->n_users;
    char *const *user_names = d->user_names, *const *user_groups = d->user_groups;
    int64_t n_examples = d->n_items;
    const int32_t *user = d->user;
    if (!path) path = "(dataset)";
    if (key != TL_KEY_USER && key != TL_KEY_GROUP && key != TL_KEY_GLOBAL)
        return tl_fail(err, TL_ERR_INPUT, "adapter.key: unknown value %d, expected user, group or global", (int)key);
    if (key == TL_KEY_GROUP && !user_groups)
        return tl_fail(err, TL_ERR_INPUT, "adapter.key=group: %s: has no /users/group dataset", path);
    if (n_names < 0) return tl_fail(err, TL_ERR_INPUT, "adapter map: n_names %d is negative", n_names);
    if (n_users < 0) return tl_fail(err, TL_ERR_INPUT, "adapter map: %s: n_users %d is negative", path, n_users);
    for (int64_t e = 0; e < n_examples; e++)
        if (user[e] < 0 || user[e] >= n_users)
            return tl_fail(err, TL_ERR_INPUT, "adapter map: %s: item %lld has user %d, expected 0 <= user < %d", path,
                           (long long)e, (int)user[e], n_users);
    const int U = n_users;

    keyref *refs = malloc((size_t)(U ? U : 1) * sizeof *refs);
    int *kid = malloc((size_t)(U ? U : 1) * sizeof *kid);
    /* Per distinct key (at most U of them): first user, examples, adapter index. */
    int *first_user = malloc((size_t)(U ? U : 1) * sizeof *first_user);
    int64_t *cnt = calloc((size_t)(U ? U : 1), sizeof *cnt);
    int *kid2a = malloc((size_t)(U ? U : 1) * sizeof *kid2a);
    const char **kname = malloc((size_t)(U ? U : 1) * sizeof *kname);
    keyref *nref = malloc((size_t)(n_names ? n_names : 1) * sizeof *nref);
    int64_t *fill = NULL;
    tl_status st = TL_OK;
    if (!refs || !kid || !first_user || !cnt || !kid2a || !kname || !nref) {
        st = tl_fail(err, TL_ERR_RUNTIME, "adapter map: out of memory for %d users", U);
        goto done;
    }
    for (int u = 0; u < U; u++) {
        refs[u].s = key == TL_KEY_USER ? user_names[u] : key == TL_KEY_GROUP ? user_groups[u] : "global";
        refs[u].u = u;
    }
    /* Sorting (key, user) groups equal keys with their first user leading, in O(U log U) for large user tables. */
    qsort(refs, (size_t)U, sizeof *refs, cmp_keyref);
    int nk = 0;
    for (int i = 0; i < U; i++) {
        if (i == 0 || strcmp(refs[i].s, refs[i - 1].s) != 0) {
            kname[nk] = refs[i].s;
            first_user[nk] = refs[i].u;
            kid2a[nk] = -1;
            nk++;
        }
        kid[refs[i].u] = nk - 1;
    }
    for (int64_t e = 0; e < n_examples; e++) cnt[kid[user[e]]]++;

    int n_ad = 0, n_empty = 0;
    if (n_names > 0) {
        for (int i = 0; i < n_names; i++) {
            nref[i].s = names[i];
            nref[i].u = i;
        }
        qsort(nref, (size_t)n_names, sizeof *nref, cmp_keyref);
        for (int i = 1; i < n_names; i++)
            if (strcmp(nref[i].s, nref[i - 1].s) == 0) {
                st = tl_fail(err, TL_ERR_INPUT, "adapter map: adapter name \"%.200s\" listed twice", nref[i].s);
                goto done;
            }
        /* Both lists are sorted: one merge pass matches names to keys. */
        for (int i = 0, k = 0; i < n_names; i++) {
            while (k < nk && strcmp(kname[k], nref[i].s) < 0) k++;
            if (k < nk && strcmp(kname[k], nref[i].s) == 0) kid2a[k] = nref[i].u;
        }
        n_ad = n_names;
    } else {
        /* Keys in order of first appearance in /users: walk users and pick each key at its first user. */
        for (int u = 0; u < U; u++) {
            int k = kid[u];
            if (first_user[k] != u) continue;
            if (cnt[k] > 0)
                kid2a[k] = n_ad++;
            else
                n_empty++;
        }
    }
    if (!map_alloc(out, n_ad, U)) {
        st = tl_fail(err, TL_ERR_RUNTIME, "adapter map: out of memory for %d adapters", n_ad);
        goto done;
    }
    for (int k = 0; k < nk; k++)
        if (kid2a[k] >= 0) out->n_examples[kid2a[k]] = cnt[k];
    for (int a = 0; a < n_ad; a++) {
        const char *nm = NULL;
        if (n_names > 0) {
            nm = names[a];
            if (out->n_examples[a] == 0) n_empty++;
        }
        out->examples[a] = malloc((size_t)(out->n_examples[a] ? out->n_examples[a] : 1) * sizeof(int64_t));
        if (!out->examples[a]) {
            st = tl_fail(err, TL_ERR_RUNTIME, "adapter map: out of memory");
            goto done;
        }
        if (nm) {
            out->names[a] = strdup(nm);
            if (!out->names[a]) {
                st = tl_fail(err, TL_ERR_RUNTIME, "adapter map: out of memory");
                goto done;
            }
        }
    }
    if (n_names == 0)
        for (int k = 0; k < nk; k++)
            if (kid2a[k] >= 0 && !(out->names[kid2a[k]] = strdup(kname[k]))) {
                st = tl_fail(err, TL_ERR_RUNTIME, "adapter map: out of memory");
                goto done;
            }
    out->n_empty = n_empty;
    for (int u = 0; u < U; u++) out->user_adapter[u] = kid2a[kid[u]];
    fill = calloc((size_t)(n_ad ? n_ad : 1), sizeof *fill);
    if (!fill) {
        st = tl_fail(err, TL_ERR_RUNTIME, "adapter map: out of memory");
        goto done;
    }
    for (int64_t e = 0; e < n_examples; e++) {
        int a = out->user_adapter[user[e]];
        if (a >= 0) out->examples[a][fill[a]++] = e;
    }

done:
    free(refs);
    free(kid);
    free(first_user);
    free(cnt);
    free(kid2a);
    free(kname);
    free(nref);
    free(fill);
    if (st != TL_OK) tl_adapter_map_free(out);
    return st;
}

/* ------------------------------------------------------------------------------------------------------------
 * Sequences: truncation, targets, appending to a micro-batch */

/* One sequence of a step (or of an eval pass) after truncation. */
typedef struct {
    const int32_t *prompt, *response; /* first kept token of each part */
    int64_t unit;                     /* dataset example or pair */
    int32_t adapter, n_prompt, n_response, n_targets;
    int32_t keep;  /* every sequence of its unit has a trained token, so the unit is packed */
    uint64_t seed; /* row seeds of the sequence are tl_mix64(seed ^ pos) */
} seq_plan;

/* Keeps the response: prompt tokens are dropped from the left first; a response longer than max_seq_len keeps
 * its first max_seq_len tokens (the start of an answer is what the prompt conditions most). Returns 1 when
 * the sequence was truncated. */
static int plan_truncate(const tl_seq_src *src, int max_seq_len, seq_plan *sp) {
    int64_t p = src->n_prompt, r = src->n_response;
    const int32_t *prompt = src->prompt;
    int truncated = 0;
    if (p + r > max_seq_len) {
        truncated = 1;
        if (r <= max_seq_len) {
            int64_t drop = p + r - max_seq_len;
            prompt += drop;
            p -= drop;
        } else {
            p = 0;
            r = max_seq_len;
        }
    }
    sp->prompt = prompt;
    sp->response = src->response;
    sp->n_prompt = (int32_t)p;
    sp->n_response = (int32_t)r;
    int64_t len = p + r, first = p > 1 ? p : 1; /* first trained token position */
    sp->n_targets = len > first ? (int32_t)(len - first) : 0;
    return truncated;
}

static int32_t seq_len(const seq_plan *sp) { return sp->n_prompt + sp->n_response; }

static void mb_reset(tl_host_mb *mb) {
    mb->n_tok = mb->n_seq = mb->n_seg = mb->max_seqlen = 0;
    mb->cu_seqlens[0] = 0;
}

/* Appends a planned sequence; rows of the same adapter as the previous row extend its segment. */
static void mb_append(tl_host_mb *mb, const seq_plan *sp, int32_t slot, float w) {
    const int r0 = mb->n_tok, P = sp->n_prompt, len = seq_len(sp);
    const int first = P > 1 ? P : 1;
    for (int r = 0; r < len; r++) {
        int j = r + 1; /* token j is the target of row j - 1; a trained j >= P is a response token */
        int trained = j < len && j >= first;
        mb->tokens[r0 + r] = r < P ? sp->prompt[r] : sp->response[r - P];
        mb->pos[r0 + r] = r;
        mb->targets[r0 + r] = trained ? sp->response[j - P] : -1;
        mb->weight[r0 + r] = trained ? w : 0.0f;
        mb->adapter[r0 + r] = sp->adapter;
        mb->row_seed[r0 + r] = tl_mix64(sp->seed ^ (uint64_t)r);
    }
    mb->n_tok = r0 + len;
    mb->example[mb->n_seq] = sp->unit;
    mb->n_seq++;
    mb->cu_seqlens[mb->n_seq] = mb->n_tok;
    if (len > mb->max_seqlen) mb->max_seqlen = len;
    if (mb->n_seg > 0 && mb->adapter[r0 - 1] == sp->adapter) {
        mb->segs[mb->n_seg - 1].row1 = mb->n_tok;
    } else {
        mb->segs[mb->n_seg].row0 = r0;
        mb->segs[mb->n_seg].row1 = mb->n_tok;
        mb->segs[mb->n_seg].slot = slot;
        mb->n_seg++;
    }
}

/* Plans the sequences of one unit into sp[0 .. spu); returns how many were truncated. */
static int plan_unit(const tl_unit_source *src, int64_t u, int32_t adapter, int max_seq_len, seq_plan *sp) {
    tl_seq_src raw[2];
    src->get(src->data, u, raw);
    int truncated = 0, keep = 1;
    for (int r = 0; r < src->seqs_per_unit; r++) {
        truncated += plan_truncate(&raw[r], max_seq_len, &sp[r]);
        sp[r].unit = u;
        sp[r].adapter = adapter;
        keep &= sp[r].n_targets > 0;
    }
    for (int r = 0; r < src->seqs_per_unit; r++) sp[r].keep = keep;
    return truncated;
}

static int64_t unit_len(const seq_plan *sp, int spu) {
    int64_t len = 0;
    for (int r = 0; r < spu; r++) len += seq_len(&sp[r]);
    return len;
}

static void place_unit(tl_host_mb *mb, int32_t mb_index, const seq_plan *sp, int spu, int32_t slot, float w,
                       tl_unit_place *pl) {
    pl->unit = sp[0].unit;
    pl->adapter = sp[0].adapter;
    pl->mb = mb_index;
    pl->seq = mb->n_seq;
    pl->n_targets[0] = pl->n_targets[1] = 0;
    for (int r = 0; r < spu; r++) {
        mb_append(mb, &sp[r], slot, w);
        pl->n_targets[r] = sp[r].n_targets;
    }
}

static tl_status check_source(const char *who, const tl_unit_source *src, int micro_batch_tokens, int max_seq_len,
                              tl_error *err) {
    if (!src->get || src->n_units < 0 || (src->seqs_per_unit != 1 && src->seqs_per_unit != 2) ||
        (src->weighting != TL_WEIGHT_TOKEN_MEAN && src->weighting != TL_WEIGHT_ONE))
        return tl_fail(err, TL_ERR_INPUT, "%s: invalid unit source (%d sequences per unit, %lld units)", who,
                       src->seqs_per_unit, (long long)src->n_units);
    if (micro_batch_tokens < 2)
        return tl_fail(err, TL_ERR_INPUT, "%s: micro_batch_tokens %d, expected >= 2", who, micro_batch_tokens);
    if (max_seq_len < 2)
        return tl_fail(err, TL_ERR_INPUT, "%s: max_seq_len %d, expected >= 2 (a sequence of one token has no "
                       "target)", who, max_seq_len);
    if (max_seq_len > micro_batch_tokens)
        return tl_fail(err, TL_ERR_INPUT, "%s: max_seq_len %d exceeds micro_batch_tokens %d (a sequence never "
                       "splits across micro-batches)", who, max_seq_len, micro_batch_tokens);
    if (src->seqs_per_unit == 2 && 2 * (int64_t)max_seq_len > micro_batch_tokens)
        return tl_fail(err, TL_ERR_INPUT, "%s: 2 * data.max_seq_len (2 * %d) exceeds train.micro_batch_tokens %d "
                       "(the chosen and rejected sequences of a pair share one micro-batch)", who, max_seq_len,
                       micro_batch_tokens);
    return TL_OK;
}

static tl_status check_map(const tl_unit_source *src, const tl_adapter_map *map, const char *who, tl_error *err) {
    for (int a = 0; a < map->n_adapters; a++)
        for (int64_t i = 0; i < map->n_examples[a]; i++) {
            int64_t e = map->examples[a][i];
            if (e < 0 || e >= src->n_units)
                return tl_fail(err, TL_ERR_INPUT, "%s: adapter %d lists %s %lld, outside the dataset's %lld", who, a,
                               src->seqs_per_unit == 2 ? "pair" : "example", (long long)e, (long long)src->n_units);
        }
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * SFT examples as units */

static void sft_get(const void *data, int64_t e, tl_seq_src *out) {
    const tl_sft_dataset *ds = data;
    int64_t start = ds->offsets[e], len = ds->offsets[e + 1] - start, p = ds->prompt_len[e];
    out->prompt = ds->tokens + start;
    out->n_prompt = p;
    out->response = ds->tokens + start + p;
    out->n_response = len - p;
}

static tl_unit_source sft_source(const tl_sft_dataset *ds) {
    tl_unit_source s = {.path = ds->path, .data = ds, .n_units = ds->n_examples, .seqs_per_unit = 1,
                        .weighting = TL_WEIGHT_TOKEN_MEAN, .get = sft_get};
    return s;
}

/* ------------------------------------------------------------------------------------------------------------
 * Training batcher */

struct tl_batcher {
    tl_unit_source src;
    const tl_adapter_map *map;
    tl_batcher_opts o;
    int A, k_eff, spu;
    uint64_t *stream_key, *row_key; /* [A] per adapter, from seed and name */
    tl_cursor *cursors;             /* [A] */
    int64_t *perm_epoch;            /* [A] epoch whose permutation perm[a] holds; -1: none */
    int64_t **perm;                 /* [A] into perm_buf */
    int64_t *perm_buf;
    int64_t *adapter_steps; /* [A] */
    const int32_t *gidx;    /* [A] or NULL: adapter a is adapter gidx[a] of a pool of n_global (user_shard: one
                               rank's share, ascending); the round robin runs over that pool (borrowed) */
    int n_global;
    seq_plan *plan;         /* [seq_cap] */
    tl_unit_place *placed;  /* [unit_cap] the last step's packed units */
    int64_t n_placed, n_skipped;
    int64_t unit_cap, seq_cap, row_cap;
    int mb_cap;
    /* flat storage that the step's micro-batches slice */
    int32_t *tokens, *pos, *targets, *adapter, *cu;
    float *weight;
    uint64_t *row_seed;
    tl_seg *segs;
    int64_t *example;
    tl_step_batch step;
};

void tl_batcher_free(tl_batcher *b) {
    if (!b) return;
    free(b->stream_key);
    free(b->row_key);
    free(b->cursors);
    free(b->perm_epoch);
    free(b->perm);
    free(b->perm_buf);
    free(b->adapter_steps);
    free(b->plan);
    free(b->placed);
    free(b->tokens);
    free(b->pos);
    free(b->targets);
    free(b->adapter);
    free(b->cu);
    free(b->weight);
    free(b->row_seed);
    free(b->segs);
    free(b->example);
    free(b->step.mb);
    free(b->step.active);
    free(b->step.target_count);
    free(b);
}

static int cmp_i64_desc(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a < b) - (a > b);
}

/* Largest total rows a step can hold: the k_eff adapters with the longest possible units, each taking
 * examples_per_adapter units of at most the length of its longest unit after truncation. */
static int64_t step_row_bound(const tl_batcher *b, int64_t *caps) {
    seq_plan sp[2];
    for (int a = 0; a < b->A; a++) {
        int64_t longest = 0;
        for (int64_t i = 0; i < b->map->n_examples[a]; i++) {
            plan_unit(&b->src, b->map->examples[a][i], a, b->o.max_seq_len, sp);
            int64_t len = unit_len(sp, b->spu);
            if (len > longest) longest = len;
        }
        caps[a] = longest * b->o.examples_per_adapter;
    }
    qsort(caps, (size_t)b->A, sizeof *caps, cmp_i64_desc);
    int64_t rows = 0;
    for (int i = 0; i < b->k_eff; i++) rows += caps[i];
    return rows;
}

tl_status tl_batcher_init(const tl_sft_dataset *ds, const tl_adapter_map *map, const tl_batcher_opts *opts,
                          tl_batcher **out, tl_error *err) {
    tl_unit_source src = sft_source(ds);
    return tl_batcher_init_units(&src, map, opts, out, err);
}

tl_status tl_batcher_init_units(const tl_unit_source *src, const tl_adapter_map *map, const tl_batcher_opts *opts,
                                tl_batcher **out, tl_error *err) {
    *out = NULL;
    const tl_batcher_opts o = *opts;
    const char *who = src->seqs_per_unit == 2 ? "preference batcher" : "batcher";
    TL_TRY(check_source(who, src, o.micro_batch_tokens, o.max_seq_len, err));
    if (o.examples_per_adapter < 1)
        return tl_fail(err, TL_ERR_INPUT, "%s: examples_per_adapter %d, expected >= 1", who, o.examples_per_adapter);
    if (o.adapters_per_step < 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: adapters_per_step %d, expected >= 0 (0 = all)", who,
                       o.adapters_per_step);
    if (map->n_adapters < 1) return tl_fail(err, TL_ERR_INPUT, "%s: the adapter pool is empty", who);
    int64_t total = 0;
    for (int a = 0; a < map->n_adapters; a++) total += map->n_examples[a];
    if (total == 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: no adapter of the pool has %s", who,
                       src->path ? src->path : "(dataset)", src->seqs_per_unit == 2 ? "pairs" : "examples");
    TL_TRY(check_map(src, map, who, err));

    tl_batcher *b = calloc(1, sizeof *b);
    if (!b) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", who);
    b->src = *src;
    b->map = map;
    b->o = o;
    b->spu = src->seqs_per_unit;
    const int A = b->A = map->n_adapters;
    b->k_eff = (o.adapters_per_step == 0 || o.adapters_per_step >= A) ? A : o.adapters_per_step;
    b->stream_key = malloc((size_t)A * sizeof *b->stream_key);
    b->row_key = malloc((size_t)A * sizeof *b->row_key);
    b->cursors = calloc((size_t)A, sizeof *b->cursors);
    b->perm_epoch = malloc((size_t)A * sizeof *b->perm_epoch);
    b->perm = malloc((size_t)A * sizeof *b->perm);
    b->perm_buf = malloc((size_t)total * sizeof *b->perm_buf);
    b->adapter_steps = calloc((size_t)A, sizeof *b->adapter_steps);
    b->step.active = malloc((size_t)A * sizeof *b->step.active);
    b->step.target_count = calloc((size_t)A, sizeof *b->step.target_count);
    int64_t *caps = malloc((size_t)A * sizeof *caps);
    if (!b->stream_key || !b->row_key || !b->cursors || !b->perm_epoch || !b->perm || !b->perm_buf ||
        !b->adapter_steps || !b->step.active || !b->step.target_count || !caps) {
        free(caps);
        tl_batcher_free(b);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for %d adapters", who, A);
    }
    int64_t off = 0;
    for (int a = 0; a < A; a++) {
        uint64_t nh = fnv1a64(map->names[a]);
        b->stream_key[a] = tl_mix64(tl_mix64(o.seed ^ TL_STREAM_SALT) ^ nh);
        b->row_key[a] = tl_mix64(tl_mix64(o.seed ^ TL_ROW_SALT) ^ nh);
        b->perm_epoch[a] = -1;
        b->perm[a] = b->perm_buf + off;
        off += map->n_examples[a];
    }
    b->row_cap = step_row_bound(b, caps);
    free(caps);
    b->unit_cap = (int64_t)o.examples_per_adapter * b->k_eff;
    b->seq_cap = b->unit_cap * b->spu;
    /* Packing closes a micro-batch only when the next chunk does not fit, so two consecutive micro-batches hold
     * more than micro_batch_tokens together: at most 2 * rows / mbt + 1 of them (and at most one per unit). */
    int64_t mbs = 2 * ((b->row_cap + o.micro_batch_tokens - 1) / o.micro_batch_tokens) + 1;
    if (mbs > b->unit_cap) mbs = b->unit_cap;
    if (mbs > 0x7fffffff) mbs = 0x7fffffff;
    b->mb_cap = (int)mbs;
    size_t rows = (size_t)(b->row_cap ? b->row_cap : 1), seqs = (size_t)b->seq_cap;
    b->plan = malloc(seqs * sizeof *b->plan);
    b->placed = malloc((size_t)b->unit_cap * sizeof *b->placed);
    b->tokens = malloc(rows * sizeof *b->tokens);
    b->pos = malloc(rows * sizeof *b->pos);
    b->targets = malloc(rows * sizeof *b->targets);
    b->adapter = malloc(rows * sizeof *b->adapter);
    b->weight = malloc(rows * sizeof *b->weight);
    b->row_seed = malloc(rows * sizeof *b->row_seed);
    b->cu = malloc((seqs + (size_t)b->mb_cap) * sizeof *b->cu);
    b->segs = malloc(seqs * sizeof *b->segs);
    b->example = malloc(seqs * sizeof *b->example);
    b->step.mb = calloc((size_t)b->mb_cap, sizeof *b->step.mb);
    if (!b->plan || !b->placed || !b->tokens || !b->pos || !b->targets || !b->adapter || !b->weight ||
        !b->row_seed || !b->cu || !b->segs || !b->example || !b->step.mb) {
        tl_batcher_free(b);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for %lld rows per step", who, (long long)rows);
    }
    *out = b;
    return TL_OK;
}

tl_status tl_batcher_set_global(tl_batcher *b, const int32_t *gidx, int n_global, tl_error *err) {
    for (int a = 0; a < b->A; a++)
        if (gidx && (gidx[a] < 0 || gidx[a] >= n_global || (a > 0 && gidx[a] <= gidx[a - 1])))
            return tl_fail(err, TL_ERR_RUNTIME, "batcher: global index %d of adapter %d is not ascending in [0, %d)",
                           gidx[a], a, n_global);
    b->gidx = gidx, b->n_global = n_global;
    return TL_OK;
}

void tl_batcher_set_adapter_steps(tl_batcher *b, const int64_t *adapter_steps) {
    if (adapter_steps)
        memcpy(b->adapter_steps, adapter_steps, (size_t)b->A * sizeof *b->adapter_steps);
    else
        memset(b->adapter_steps, 0, (size_t)b->A * sizeof *b->adapter_steps);
}

tl_cursor *tl_batcher_cursors(tl_batcher *b) { return b->cursors; }

int tl_batcher_peek(const tl_batcher *b, int64_t step, int32_t *out, int cap) {
    int n = 0;
    if (step < 0) return 0;
    const int A = b->A, K = b->k_eff;
    /* the window of tl_batcher_next, in the same order */
    if (b->gidx) {
        const int64_t NG = b->n_global, aps = b->o.adapters_per_step;
        const int64_t KG = (aps == 0 || aps >= NG) ? NG : aps;
        const int64_t sg = KG == NG ? 0 : (int64_t)(((uint64_t)(step % NG) * (uint64_t)KG) % (uint64_t)NG);
        for (int a = 0; a < A && n < cap; a++)
            if (((b->gidx[a] - sg) % NG + NG) % NG < KG && b->map->n_examples[a] > 0) out[n++] = (int32_t)a;
    } else {
        int64_t s = K == A ? 0 : (int64_t)(((uint64_t)(step % A) * (uint64_t)K) % (uint64_t)A);
        int64_t wrap = s + K > A ? s + K - A : 0;
        for (int pass = 0; pass < 2; pass++) {
            int64_t lo = pass == 0 ? 0 : s, hi = pass == 0 ? wrap : (s + K < A ? s + K : A);
            for (int64_t a = lo; a < hi && n < cap; a++)
                if (b->map->n_examples[a] > 0) out[n++] = (int32_t)a;
        }
    }
    return n;
}

const tl_unit_place *tl_batcher_units(const tl_batcher *b, int64_t *n_units, int64_t *n_skipped) {
    if (n_units) *n_units = b->n_placed;
    if (n_skipped) *n_skipped = b->n_skipped;
    return b->placed;
}

/* Fisher-Yates over the adapter's units in dataset order, from a generator keyed by (seed, name, epoch). */
static void shuffle(tl_batcher *b, int a, int64_t epoch) {
    int64_t n = b->map->n_examples[a];
    int64_t *p = b->perm[a];
    memcpy(p, b->map->examples[a], (size_t)n * sizeof *p);
    uint64_t state = tl_mix64(b->stream_key[a] ^ tl_mix64((uint64_t)epoch));
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&state, (uint64_t)i + 1);
        int64_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    b->perm_epoch[a] = epoch;
}

static int64_t stream_take(tl_batcher *b, int a) {
    tl_cursor *c = &b->cursors[a];
    if (b->perm_epoch[a] != c->epoch) shuffle(b, a, c->epoch);
    int64_t e = b->perm[a][c->pos];
    if (++c->pos == b->map->n_examples[a]) {
        c->epoch++;
        c->pos = 0;
    }
    return e;
}

/* Starts micro-batch m right after the storage used by micro-batches 0..m-1. */
static void step_mb_start(tl_batcher *b, int m, int64_t rows, int64_t seqs, int64_t segs) {
    tl_host_mb *mb = &b->step.mb[m];
    mb->tokens = b->tokens + rows;
    mb->pos = b->pos + rows;
    mb->targets = b->targets + rows;
    mb->weight = b->weight + rows;
    mb->adapter = b->adapter + rows;
    mb->row_seed = b->row_seed + rows;
    mb->cu_seqlens = b->cu + seqs + m;
    mb->segs = b->segs + segs;
    mb->example = b->example + seqs;
    mb_reset(mb);
}

/* Draws adapter a's examples of this step from its stream into the plan (tl_batcher_next's round robin). */
static void plan_adapter(tl_batcher *b, tl_step_batch *sb, int a, int64_t *n_plan) {
    const int spu = b->spu;
    if (b->map->n_examples[a] == 0) return;
    uint64_t akey = tl_mix64(b->row_key[a] ^ (uint64_t)b->adapter_steps[a]);
    for (int j = 0; j < b->o.examples_per_adapter; j++) {
        seq_plan *sp = &b->plan[*n_plan];
        int64_t u = stream_take(b, a);
        sb->n_truncated += plan_unit(&b->src, u, (int32_t)a, b->o.max_seq_len, sp);
        *n_plan += spu;
        for (int r = 0; r < spu; r++) sp[r].seed = tl_mix64(akey ^ ((uint64_t)j * (uint64_t)spu + (uint64_t)r));
        if (!sp[0].keep) {
            b->n_skipped++;
            continue;
        }
        if (b->src.weighting == TL_WEIGHT_ONE)
            sb->target_count[a]++;
        else
            for (int r = 0; r < spu; r++) sb->target_count[a] += sp[r].n_targets;
    }
    if (sb->target_count[a] > 0) sb->active[sb->n_active++] = (int32_t)a;
}

tl_status tl_batcher_next(tl_batcher *b, int64_t step, tl_step_batch **out, tl_error *err) {
    *out = NULL;
    const char *who = b->spu == 2 ? "preference batcher" : "batcher";
    if (step < 0) return tl_fail(err, TL_ERR_INPUT, "%s: step %lld is negative", who, (long long)step);
    const int A = b->A, K = b->k_eff, mbt = b->o.micro_batch_tokens, spu = b->spu;
    for (int a = 0; a < A; a++) {
        tl_cursor c = b->cursors[a];
        int64_t n = b->map->n_examples[a];
        if (c.epoch < 0 || c.pos < 0 || (n > 0 && c.pos >= n) || (n == 0 && c.pos != 0))
            return tl_fail(err, TL_ERR_INPUT, "%s: cursor of adapter \"%.200s\" (epoch %lld, position %lld) "
                           "is out of range for its %lld %s", who, b->map->names[a], (long long)c.epoch,
                           (long long)c.pos, (long long)n, spu == 2 ? "pairs" : "examples");
    }
    tl_step_batch *sb = &b->step;
    memset(sb->target_count, 0, (size_t)A * sizeof *sb->target_count);
    sb->n_active = 0;
    sb->n_mb = 0;
    sb->n_tokens = 0;
    sb->n_truncated = 0;
    b->n_placed = 0;
    b->n_skipped = 0;

    /* Round robin: adapters (t*k + i) mod A for i < k are one or two ascending runs; visit them ascending. With
     * a global pool (user_shard) the window is the pool's, and this batcher's adapters inside it take part. */
    int64_t n_plan = 0;
    if (b->gidx) {
        const int64_t NG = b->n_global, aps = b->o.adapters_per_step;
        const int64_t KG = (aps == 0 || aps >= NG) ? NG : aps;
        const int64_t sg = KG == NG ? 0 : (int64_t)(((uint64_t)(step % NG) * (uint64_t)KG) % (uint64_t)NG);
        for (int a = 0; a < A; a++)
            if (((b->gidx[a] - sg) % NG + NG) % NG < KG) plan_adapter(b, sb, a, &n_plan);
    } else {
        int64_t s = K == A ? 0 : (int64_t)(((uint64_t)(step % A) * (uint64_t)K) % (uint64_t)A);
        int64_t wrap = s + K > A ? s + K - A : 0; /* adapters [0, wrap) come first, then [s, min(s+K, A)) */
        for (int pass = 0; pass < 2; pass++) {
            int64_t lo = pass == 0 ? 0 : s, hi = pass == 0 ? wrap : (s + K < A ? s + K : A);
            for (int64_t a = lo; a < hi; a++) plan_adapter(b, sb, (int)a, &n_plan);
        }
    }

    /* Packing is adapter-aligned: each adapter's units are cut into chunks of at most micro_batch_tokens
     * greedily over its own units only, and a chunk is placed whole (in the current micro-batch if it fits,
     * else in a new one). So which rows an adapter's gradient sums over, and in which order, depends on that
     * adapter's data alone: training a user alone or mixed with others gives bit-identical LoRA gradients. */
    int64_t rows = 0, seqs = 0, segs = 0;
    tl_host_mb *mb = NULL;
    for (int64_t i = 0; i < n_plan;) {
        if (!b->plan[i].keep) { /* nothing to learn from it; it only consumed its stream position */
            i += spu;
            continue;
        }
        const int32_t a = b->plan[i].adapter;
        int64_t end = i, chunk = 0;
        for (; end < n_plan && b->plan[end].adapter == a; end += spu) {
            if (!b->plan[end].keep) continue;
            int64_t len = unit_len(&b->plan[end], spu);
            if (chunk + len > mbt) break;
            chunk += len;
        }
        if (!mb || mb->n_tok + chunk > mbt) {
            if (mb) {
                rows += mb->n_tok;
                seqs += mb->n_seq;
                segs += mb->n_seg;
            }
            if (sb->n_mb == b->mb_cap)
                return tl_fail(err, TL_ERR_RUNTIME, "%s: internal error: step %lld exceeds the planned capacity",
                               who, (long long)step);
            step_mb_start(b, sb->n_mb, rows, seqs, segs);
            mb = &sb->mb[sb->n_mb++];
        }
        if (rows + mb->n_tok + chunk > b->row_cap)
            return tl_fail(err, TL_ERR_RUNTIME, "%s: internal error: step %lld exceeds the planned row capacity",
                           who, (long long)step);
        const float w =
            b->src.weighting == TL_WEIGHT_ONE ? 1.0f : (float)(1.0 / (double)sb->target_count[a]);
        for (; i < end; i += spu) {
            if (!b->plan[i].keep) continue;
            place_unit(mb, sb->n_mb - 1, &b->plan[i], spu, a, w, &b->placed[b->n_placed++]);
            sb->n_tokens += unit_len(&b->plan[i], spu);
        }
    }
    *out = sb;
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Evaluation iterator */

struct tl_eval_iter {
    tl_unit_source src;
    const tl_adapter_map *map;
    int mbt, max_seq_len;
    int a;             /* current adapter */
    int64_t i;         /* next unit of adapter a */
    uint64_t *row_key; /* [n_adapters] */
    tl_host_mb mb;
    tl_unit_place *placed; /* [mbt] units of the current micro-batch */
    int64_t n_placed;
};

void tl_eval_iter_free(tl_eval_iter *it) {
    if (!it) return;
    free(it->row_key);
    free(it->placed);
    free(it->mb.tokens);
    free(it->mb.pos);
    free(it->mb.cu_seqlens);
    free(it->mb.targets);
    free(it->mb.weight);
    free(it->mb.adapter);
    free(it->mb.row_seed);
    free(it->mb.segs);
    free(it->mb.example);
    free(it);
}

tl_status tl_eval_iter_init(const tl_sft_dataset *ds, const tl_adapter_map *map, int micro_batch_tokens,
                            int max_seq_len, tl_eval_iter **out, tl_error *err) {
    tl_unit_source src = sft_source(ds);
    return tl_eval_iter_init_units(&src, map, micro_batch_tokens, max_seq_len, out, err);
}

tl_status tl_eval_iter_init_units(const tl_unit_source *src, const tl_adapter_map *map, int micro_batch_tokens,
                                  int max_seq_len, tl_eval_iter **out, tl_error *err) {
    *out = NULL;
    const char *who = src->seqs_per_unit == 2 ? "preference eval" : "eval";
    TL_TRY(check_source(who, src, micro_batch_tokens, max_seq_len, err));
    TL_TRY(check_map(src, map, who, err));
    tl_eval_iter *it = calloc(1, sizeof *it);
    if (!it) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", who);
    it->src = *src;
    it->map = map;
    it->mbt = micro_batch_tokens;
    it->max_seq_len = max_seq_len;
    /* every packed sequence holds at least two tokens, so micro_batch_tokens bounds sequences and units */
    size_t n = (size_t)micro_batch_tokens, na = (size_t)(map->n_adapters ? map->n_adapters : 1);
    it->row_key = malloc(na * sizeof *it->row_key);
    it->placed = malloc(n * sizeof *it->placed);
    it->mb.tokens = malloc(n * sizeof *it->mb.tokens);
    it->mb.pos = malloc(n * sizeof *it->mb.pos);
    it->mb.cu_seqlens = malloc((n + 1) * sizeof *it->mb.cu_seqlens);
    it->mb.targets = malloc(n * sizeof *it->mb.targets);
    it->mb.weight = malloc(n * sizeof *it->mb.weight);
    it->mb.adapter = malloc(n * sizeof *it->mb.adapter);
    it->mb.row_seed = malloc(n * sizeof *it->mb.row_seed);
    it->mb.segs = malloc(n * sizeof *it->mb.segs);
    it->mb.example = malloc(n * sizeof *it->mb.example);
    if (!it->row_key || !it->placed || !it->mb.tokens || !it->mb.pos || !it->mb.cu_seqlens || !it->mb.targets ||
        !it->mb.weight || !it->mb.adapter || !it->mb.row_seed || !it->mb.segs || !it->mb.example) {
        tl_eval_iter_free(it);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for %d tokens", who, micro_batch_tokens);
    }
    for (int a = 0; a < map->n_adapters; a++) it->row_key[a] = tl_mix64(TL_ROW_SALT ^ fnv1a64(map->names[a]));
    *out = it;
    return TL_OK;
}

tl_status tl_eval_iter_next(tl_eval_iter *it, int force_slot, tl_host_mb **out, int *done, tl_error *err) {
    *out = NULL;
    *done = 0;
    it->n_placed = 0;
    if (force_slot < TL_SLOT_OWN)
        return tl_fail(err, TL_ERR_INPUT, "%s: force_slot %d, expected >= %d",
                       it->src.seqs_per_unit == 2 ? "preference eval" : "eval", force_slot, TL_SLOT_OWN);
    const int spu = it->src.seqs_per_unit;
    tl_host_mb *mb = &it->mb;
    mb_reset(mb);
    while (it->a < it->map->n_adapters) {
        if (it->i >= it->map->n_examples[it->a]) {
            it->a++;
            it->i = 0;
            continue;
        }
        seq_plan sp[2];
        int64_t u = it->map->examples[it->a][it->i];
        plan_unit(&it->src, u, it->a, it->max_seq_len, sp);
        if (!sp[0].keep) {
            it->i++;
            continue;
        }
        if (mb->n_tok + unit_len(sp, spu) > it->mbt) break;
        for (int r = 0; r < spu; r++)
            sp[r].seed = tl_mix64(it->row_key[it->a] ^ ((uint64_t)u * (uint64_t)spu + (uint64_t)r));
        place_unit(mb, 0, sp, spu, force_slot == TL_SLOT_OWN ? it->a : force_slot, 1.0f, &it->placed[it->n_placed++]);
        it->i++;
    }
    if (mb->n_tok == 0) {
        *done = 1;
        return TL_OK;
    }
    *out = mb;
    return TL_OK;
}

const tl_unit_place *tl_eval_iter_units(const tl_eval_iter *it, int64_t *n_units) {
    if (n_units) *n_units = it->n_placed;
    return it->placed;
}
