/* batcher: turns an SFT dataset into flat, padding-free micro-batches of many adapters (see tl_batcher.h).
 *
 * Isolation is the point of every choice here: an adapter's example order, its truncation, its loss weights and
 * its dropout row seeds are computed from its own name, its own cursor and its own step count only, so training
 * it next to other adapters changes where its rows land in a micro-batch but never what they contain.
 *
 * All memory is sized in tl_batcher_init from the options and the longest example of each adapter; stepping only
 * writes into it. */
#include "tl_batcher.h"

#include <stdlib.h>
#include <string.h>

#include "../kernels/tl_math.h"

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
    memset(out, 0, sizeof *out);
    const char *path = ds->path ? ds->path : "(dataset)";
    if (key != TL_KEY_USER && key != TL_KEY_GROUP && key != TL_KEY_GLOBAL)
        return tl_fail(err, TL_ERR_INPUT, "adapter.key: unknown value %d, expected user, group or global", (int)key);
    if (key == TL_KEY_GROUP && !ds->user_groups)
        return tl_fail(err, TL_ERR_INPUT, "adapter.key=group: %s: has no /users/group dataset", path);
    if (n_names < 0) return tl_fail(err, TL_ERR_INPUT, "adapter map: n_names %d is negative", n_names);
    const int U = ds->n_users;

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
        refs[u].s = key == TL_KEY_USER ? ds->user_names[u] : key == TL_KEY_GROUP ? ds->user_groups[u] : "global";
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
    for (int64_t e = 0; e < ds->n_examples; e++) cnt[kid[ds->user[e]]]++;

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
    for (int64_t e = 0; e < ds->n_examples; e++) {
        int a = out->user_adapter[ds->user[e]];
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
    int64_t example, start; /* dataset example, index of its first kept token in ds->tokens */
    int32_t adapter, len, prompt, n_targets;
    uint64_t seed; /* row seeds of the sequence are tl_mix64(seed ^ pos) */
} seq_plan;

/* Keeps the response: prompt tokens are dropped from the left first; a response longer than max_seq_len keeps
 * its first max_seq_len tokens (the start of an answer is what the prompt conditions most). Returns 1 when
 * the example was truncated. */
static int plan_sequence(const tl_sft_dataset *ds, int64_t e, int max_seq_len, seq_plan *sp) {
    int64_t start = ds->offsets[e], len = ds->offsets[e + 1] - ds->offsets[e];
    int64_t p = ds->prompt_len[e];
    int truncated = 0;
    if (len > max_seq_len) {
        truncated = 1;
        int64_t resp = len - p;
        if (resp <= max_seq_len) {
            int64_t drop = len - max_seq_len;
            start += drop;
            p -= drop;
        } else {
            start += p;
            p = 0;
        }
        len = max_seq_len;
    }
    sp->example = e;
    sp->start = start;
    sp->len = (int32_t)len;
    sp->prompt = (int32_t)p;
    int64_t first = p > 1 ? p : 1; /* first trained token position */
    sp->n_targets = len > first ? (int32_t)(len - first) : 0;
    return truncated;
}

static void mb_reset(tl_host_mb *mb) {
    mb->n_tok = mb->n_seq = mb->n_seg = mb->max_seqlen = 0;
    mb->cu_seqlens[0] = 0;
}

/* Appends a planned sequence; rows of the same adapter as the previous row extend its segment. */
static void mb_append(tl_host_mb *mb, const tl_sft_dataset *ds, const seq_plan *sp, int32_t slot, float w) {
    const int32_t *src = ds->tokens + sp->start;
    const int r0 = mb->n_tok, len = sp->len;
    const int first = sp->prompt > 1 ? sp->prompt : 1;
    for (int r = 0; r < len; r++) {
        int j = r + 1; /* token j is the target of row j - 1 */
        int trained = j < len && j >= first;
        mb->tokens[r0 + r] = src[r];
        mb->pos[r0 + r] = r;
        mb->targets[r0 + r] = trained ? src[j] : -1;
        mb->weight[r0 + r] = trained ? w : 0.0f;
        mb->adapter[r0 + r] = sp->adapter;
        mb->row_seed[r0 + r] = tl_mix64(sp->seed ^ (uint64_t)r);
    }
    mb->n_tok = r0 + len;
    mb->example[mb->n_seq] = sp->example;
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

static tl_status check_lengths(const char *who, int micro_batch_tokens, int max_seq_len, tl_error *err) {
    if (micro_batch_tokens < 2)
        return tl_fail(err, TL_ERR_INPUT, "%s: micro_batch_tokens %d, expected >= 2", who, micro_batch_tokens);
    if (max_seq_len < 2)
        return tl_fail(err, TL_ERR_INPUT, "%s: max_seq_len %d, expected >= 2 (a sequence of one token has no "
                       "target)", who, max_seq_len);
    if (max_seq_len > micro_batch_tokens)
        return tl_fail(err, TL_ERR_INPUT, "%s: max_seq_len %d exceeds micro_batch_tokens %d (a sequence never "
                       "splits across micro-batches)", who, max_seq_len, micro_batch_tokens);
    return TL_OK;
}

static tl_status check_map(const tl_sft_dataset *ds, const tl_adapter_map *map, const char *who, tl_error *err) {
    for (int a = 0; a < map->n_adapters; a++)
        for (int64_t i = 0; i < map->n_examples[a]; i++) {
            int64_t e = map->examples[a][i];
            if (e < 0 || e >= ds->n_examples)
                return tl_fail(err, TL_ERR_INPUT, "%s: adapter %d lists example %lld, outside the dataset's %lld",
                               who, a, (long long)e, (long long)ds->n_examples);
        }
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Training batcher */

struct tl_batcher {
    const tl_sft_dataset *ds;
    const tl_adapter_map *map;
    tl_batcher_opts o;
    int A, k_eff;
    uint64_t *stream_key, *row_key; /* [A] per adapter, from seed and name */
    tl_cursor *cursors;             /* [A] */
    int64_t *perm_epoch;            /* [A] epoch whose permutation perm[a] holds; -1: none */
    int64_t **perm;                 /* [A] into perm_buf */
    int64_t *perm_buf;
    int64_t *adapter_steps; /* [A] */
    seq_plan *plan;         /* [seq_cap] */
    int64_t seq_cap, row_cap;
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

/* Largest total rows a step can hold: the k_eff adapters with the longest possible sequences, each taking
 * examples_per_adapter sequences of at most min(max_seq_len, its longest example) tokens. */
static int64_t step_row_bound(const tl_batcher *b, int64_t *caps) {
    for (int a = 0; a < b->A; a++) {
        int64_t longest = 0;
        for (int64_t i = 0; i < b->map->n_examples[a]; i++) {
            int64_t e = b->map->examples[a][i];
            int64_t len = b->ds->offsets[e + 1] - b->ds->offsets[e];
            if (len > longest) longest = len;
        }
        if (longest > b->o.max_seq_len) longest = b->o.max_seq_len;
        caps[a] = longest * b->o.examples_per_adapter;
    }
    qsort(caps, (size_t)b->A, sizeof *caps, cmp_i64_desc);
    int64_t rows = 0;
    for (int i = 0; i < b->k_eff; i++) rows += caps[i];
    return rows;
}

tl_status tl_batcher_init(const tl_sft_dataset *ds, const tl_adapter_map *map, const tl_batcher_opts *opts,
                          tl_batcher **out, tl_error *err) {
    *out = NULL;
    const tl_batcher_opts o = *opts;
    TL_TRY(check_lengths("batcher", o.micro_batch_tokens, o.max_seq_len, err));
    if (o.examples_per_adapter < 1)
        return tl_fail(err, TL_ERR_INPUT, "batcher: examples_per_adapter %d, expected >= 1", o.examples_per_adapter);
    if (o.adapters_per_step < 0)
        return tl_fail(err, TL_ERR_INPUT, "batcher: adapters_per_step %d, expected >= 0 (0 = all)",
                       o.adapters_per_step);
    if (map->n_adapters < 1) return tl_fail(err, TL_ERR_INPUT, "batcher: the adapter pool is empty");
    int64_t total = 0;
    for (int a = 0; a < map->n_adapters; a++) total += map->n_examples[a];
    if (total == 0)
        return tl_fail(err, TL_ERR_INPUT, "batcher: %s: no adapter of the pool has examples",
                       ds->path ? ds->path : "(dataset)");
    TL_TRY(check_map(ds, map, "batcher", err));

    tl_batcher *b = calloc(1, sizeof *b);
    if (!b) return tl_fail(err, TL_ERR_RUNTIME, "batcher: out of memory");
    b->ds = ds;
    b->map = map;
    b->o = o;
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
        return tl_fail(err, TL_ERR_RUNTIME, "batcher: out of memory for %d adapters", A);
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
    b->seq_cap = (int64_t)o.examples_per_adapter * b->k_eff;
    /* Sequential packing closes a micro-batch only when the next sequence does not fit, so two consecutive
     * micro-batches hold more than micro_batch_tokens together: at most 2 * rows / mbt + 1 of them. */
    int64_t mbs = 2 * ((b->row_cap + o.micro_batch_tokens - 1) / o.micro_batch_tokens) + 1;
    if (mbs > b->seq_cap) mbs = b->seq_cap;
    if (mbs > 0x7fffffff) mbs = 0x7fffffff;
    b->mb_cap = (int)mbs;
    size_t rows = (size_t)(b->row_cap ? b->row_cap : 1), seqs = (size_t)b->seq_cap;
    b->plan = malloc(seqs * sizeof *b->plan);
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
    if (!b->plan || !b->tokens || !b->pos || !b->targets || !b->adapter || !b->weight || !b->row_seed || !b->cu ||
        !b->segs || !b->example || !b->step.mb) {
        tl_batcher_free(b);
        return tl_fail(err, TL_ERR_RUNTIME, "batcher: out of memory for %lld rows per step", (long long)rows);
    }
    *out = b;
    return TL_OK;
}

void tl_batcher_set_adapter_steps(tl_batcher *b, const int64_t *adapter_steps) {
    if (adapter_steps)
        memcpy(b->adapter_steps, adapter_steps, (size_t)b->A * sizeof *b->adapter_steps);
    else
        memset(b->adapter_steps, 0, (size_t)b->A * sizeof *b->adapter_steps);
}

tl_cursor *tl_batcher_cursors(tl_batcher *b) { return b->cursors; }

/* Fisher-Yates over the adapter's examples in dataset order, from a generator keyed by (seed, name, epoch). */
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

tl_status tl_batcher_next(tl_batcher *b, int64_t step, tl_step_batch **out, tl_error *err) {
    *out = NULL;
    if (step < 0) return tl_fail(err, TL_ERR_INPUT, "batcher: step %lld is negative", (long long)step);
    const int A = b->A, K = b->k_eff, mbt = b->o.micro_batch_tokens;
    for (int a = 0; a < A; a++) {
        tl_cursor c = b->cursors[a];
        int64_t n = b->map->n_examples[a];
        if (c.epoch < 0 || c.pos < 0 || (n > 0 && c.pos >= n) || (n == 0 && c.pos != 0))
            return tl_fail(err, TL_ERR_INPUT, "batcher: cursor of adapter \"%.200s\" (epoch %lld, position %lld) "
                           "is out of range for its %lld examples", b->map->names[a], (long long)c.epoch,
                           (long long)c.pos, (long long)n);
    }
    tl_step_batch *sb = &b->step;
    memset(sb->target_count, 0, (size_t)A * sizeof *sb->target_count);
    sb->n_active = 0;
    sb->n_mb = 0;
    sb->n_tokens = 0;
    sb->n_truncated = 0;

    /* Round robin: adapters (t*k + i) mod A for i < k are one or two ascending runs; visit them ascending. */
    int64_t s = K == A ? 0 : (int64_t)(((uint64_t)(step % A) * (uint64_t)K) % (uint64_t)A);
    int64_t wrap = s + K > A ? s + K - A : 0; /* adapters [0, wrap) come first, then [s, min(s+K, A)) */
    int64_t n_plan = 0;
    for (int pass = 0; pass < 2; pass++) {
        int64_t lo = pass == 0 ? 0 : s, hi = pass == 0 ? wrap : (s + K < A ? s + K : A);
        for (int64_t a = lo; a < hi; a++) {
            if (b->map->n_examples[a] == 0) continue;
            for (int j = 0; j < b->o.examples_per_adapter; j++) {
                seq_plan *sp = &b->plan[n_plan++];
                int64_t e = stream_take(b, (int)a);
                sb->n_truncated += plan_sequence(b->ds, e, b->o.max_seq_len, sp);
                sp->adapter = (int32_t)a;
                sp->seed = tl_mix64(tl_mix64(b->row_key[a] ^ (uint64_t)b->adapter_steps[a]) ^ (uint64_t)j);
                sb->target_count[a] += sp->n_targets;
            }
            if (sb->target_count[a] > 0) sb->active[sb->n_active++] = (int32_t)a;
        }
    }

    /* Packing is adapter-aligned: each adapter's sequences are cut into chunks of at most micro_batch_tokens
     * greedily over its own sequences only, and a chunk is placed whole (in the current micro-batch if it fits,
     * else in a new one). So which rows an adapter's gradient sums over, and in which order, depends on that
     * adapter's data alone: training a user alone or mixed with others gives bit-identical LoRA gradients. */
    int64_t rows = 0, seqs = 0, segs = 0;
    tl_host_mb *mb = NULL;
    for (int64_t i = 0; i < n_plan;) {
        if (b->plan[i].n_targets == 0) { /* nothing to learn from it; it only consumed its stream position */
            i++;
            continue;
        }
        const int32_t a = b->plan[i].adapter;
        int64_t end = i, chunk = 0;
        while (end < n_plan && b->plan[end].adapter == a &&
               (b->plan[end].n_targets == 0 || chunk + b->plan[end].len <= mbt)) {
            if (b->plan[end].n_targets) chunk += b->plan[end].len;
            end++;
        }
        if (!mb || mb->n_tok + chunk > mbt) {
            if (mb) {
                rows += mb->n_tok;
                seqs += mb->n_seq;
                segs += mb->n_seg;
            }
            if (sb->n_mb == b->mb_cap)
                return tl_fail(err, TL_ERR_RUNTIME, "batcher: internal error: step %lld exceeds the planned "
                               "capacity", (long long)step);
            step_mb_start(b, sb->n_mb, rows, seqs, segs);
            mb = &sb->mb[sb->n_mb++];
        }
        if (rows + mb->n_tok + chunk > b->row_cap)
            return tl_fail(err, TL_ERR_RUNTIME, "batcher: internal error: step %lld exceeds the planned row "
                           "capacity", (long long)step);
        for (; i < end; i++) {
            const seq_plan *sp = &b->plan[i];
            if (sp->n_targets == 0) continue;
            mb_append(mb, b->ds, sp, sp->adapter, (float)(1.0 / (double)sb->target_count[sp->adapter]));
            sb->n_tokens += sp->len;
        }
    }
    *out = sb;
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Evaluation iterator */

struct tl_eval_iter {
    const tl_sft_dataset *ds;
    const tl_adapter_map *map;
    int mbt, max_seq_len;
    int a;     /* current adapter */
    int64_t i; /* next example of adapter a */
    uint64_t *row_key; /* [n_adapters] */
    tl_host_mb mb;
};

void tl_eval_iter_free(tl_eval_iter *it) {
    if (!it) return;
    free(it->row_key);
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
    *out = NULL;
    TL_TRY(check_lengths("eval", micro_batch_tokens, max_seq_len, err));
    TL_TRY(check_map(ds, map, "eval", err));
    tl_eval_iter *it = calloc(1, sizeof *it);
    if (!it) return tl_fail(err, TL_ERR_RUNTIME, "eval: out of memory");
    it->ds = ds;
    it->map = map;
    it->mbt = micro_batch_tokens;
    it->max_seq_len = max_seq_len;
    size_t n = (size_t)micro_batch_tokens, na = (size_t)(map->n_adapters ? map->n_adapters : 1);
    it->row_key = malloc(na * sizeof *it->row_key);
    it->mb.tokens = malloc(n * sizeof *it->mb.tokens);
    it->mb.pos = malloc(n * sizeof *it->mb.pos);
    it->mb.cu_seqlens = malloc((n + 1) * sizeof *it->mb.cu_seqlens);
    it->mb.targets = malloc(n * sizeof *it->mb.targets);
    it->mb.weight = malloc(n * sizeof *it->mb.weight);
    it->mb.adapter = malloc(n * sizeof *it->mb.adapter);
    it->mb.row_seed = malloc(n * sizeof *it->mb.row_seed);
    it->mb.segs = malloc(n * sizeof *it->mb.segs);
    it->mb.example = malloc(n * sizeof *it->mb.example);
    if (!it->row_key || !it->mb.tokens || !it->mb.pos || !it->mb.cu_seqlens || !it->mb.targets || !it->mb.weight ||
        !it->mb.adapter || !it->mb.row_seed || !it->mb.segs || !it->mb.example) {
        tl_eval_iter_free(it);
        return tl_fail(err, TL_ERR_RUNTIME, "eval: out of memory for %d tokens", micro_batch_tokens);
    }
    for (int a = 0; a < map->n_adapters; a++) it->row_key[a] = tl_mix64(TL_ROW_SALT ^ fnv1a64(map->names[a]));
    *out = it;
    return TL_OK;
}

tl_status tl_eval_iter_next(tl_eval_iter *it, int force_slot, tl_host_mb **out, int *done, tl_error *err) {
    *out = NULL;
    *done = 0;
    if (force_slot < -2)
        return tl_fail(err, TL_ERR_INPUT, "eval: force_slot %d, expected >= -2", force_slot);
    tl_host_mb *mb = &it->mb;
    mb_reset(mb);
    while (it->a < it->map->n_adapters) {
        if (it->i >= it->map->n_examples[it->a]) {
            it->a++;
            it->i = 0;
            continue;
        }
        seq_plan sp;
        int64_t e = it->map->examples[it->a][it->i];
        plan_sequence(it->ds, e, it->max_seq_len, &sp);
        if (sp.n_targets == 0) {
            it->i++;
            continue;
        }
        if (mb->n_tok + sp.len > it->mbt) break;
        sp.adapter = it->a;
        sp.seed = tl_mix64(it->row_key[it->a] ^ (uint64_t)e);
        mb_append(mb, it->ds, &sp, force_slot == -2 ? it->a : force_slot, 1.0f);
        it->i++;
    }
    if (mb->n_tok == 0) {
        *done = 1;
        return TL_OK;
    }
    *out = mb;
    return TL_OK;
}
