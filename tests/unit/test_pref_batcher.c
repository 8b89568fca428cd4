/* test_pref_batcher: the preference adapter map, pair batcher and pair eval iterator on in-memory datasets.
 *
 * A reference model written here from docs/data-format.md (pair streams, round robin, concatenate-then-cut
 * truncation, the skip rule, adapter-aligned packing of whole pairs, targets, weights, row seeds with sequence
 * index 2j + role) must match every field of every micro-batch and of the pairs table, step after step.
 * Properties that do not rely on that model hold too: every sequence belongs to exactly one pair of the table,
 * chosen comes first and adjacent in the same micro-batch, the pairs' rows are their data, per-adapter content
 * is the same alone or mixed, cursors restore exactly, and eval returns every usable pair once, in order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_pref.h"
#include "kernels/tl_math.h"
#include "tests/lib/tl_batch_ref.h"
#include "tests/lib/tl_batcher_fixture.h"
#include "tests/lib/tl_check.h"

enum { P_PROMPT, P_CHOSEN, P_REJECTED };

static tl_pref_tokens *part(tl_pref_dataset *ds, int k) {
    return k == P_PROMPT ? &ds->prompt : k == P_CHOSEN ? &ds->chosen : &ds->rejected;
}

/* ------------------------------------------------------------------------------------------------------------
 * In-memory datasets (allocated the way tl_pref_open does, so tl_pref_free releases them) */

static void pds_build(tl_pref_dataset *ds, int U, const char *const *names, const char *const *groups, int64_t N,
                      const int32_t *user, const int32_t *const len[3], const int32_t *const tok[3]) {
    memset(ds, 0, sizeof *ds);
    ds->path = xstrdup("mem_pref.h5");
    ds->n_users = U;
    fx_user_table(U, names, groups, &ds->user_names, &ds->user_groups);
    ds->n_pairs = N;
    ds->user = xmalloc((size_t)N * sizeof(int32_t));
    memcpy(ds->user, user, (size_t)N * sizeof(int32_t));
    for (int k = 0; k < 3; k++) {
        tl_pref_tokens *p = part(ds, k);
        p->offsets = xmalloc((size_t)(N + 1) * sizeof(int64_t));
        p->offsets[0] = 0;
        for (int64_t i = 0; i < N; i++) p->offsets[i + 1] = p->offsets[i] + len[k][i];
        p->n_tokens = p->offsets[N];
        p->tokens = xmalloc((size_t)p->n_tokens * sizeof(int32_t));
        memcpy(p->tokens, tok[k], (size_t)p->n_tokens * sizeof(int32_t));
    }
}

/* N random pairs of random users: prompt length in [pmin, pmax], responses in [rmin, rmax] (rmin >= 1). With
 * skip_every > 0, every skip_every-th pair gets an empty prompt and a 1-token response on one side: no target
 * there, so the batcher must skip it. */
static void pds_random(tl_pref_dataset *ds, int U, const char *const *names, const char *const *groups, int64_t N,
                       int pmin, int pmax, int rmin, int rmax, int skip_every) {
    int32_t *user = xmalloc((size_t)N * 4), *len[3], *tok[3];
    for (int64_t i = 0; i < N; i++) user[i] = rnd_int(0, U - 1);
    for (int k = 0; k < 3; k++) {
        len[k] = xmalloc((size_t)N * 4);
        int64_t T = 0;
        for (int64_t i = 0; i < N; i++) {
            len[k][i] = k == P_PROMPT ? rnd_int(pmin, pmax) : rnd_int(rmin, rmax);
            if (skip_every > 0 && i % skip_every == 0) {
                int short_side = (int)((i / skip_every) % 2) + P_CHOSEN;
                if (k == P_PROMPT) len[k][i] = 0;
                if (k == short_side) len[k][i] = 1;
            }
            T += len[k][i];
        }
        tok[k] = xmalloc((size_t)T * 4);
        for (int64_t t = 0; t < T; t++) tok[k][t] = rnd_int(0, 999);
    }
    const int32_t *const cl[3] = {len[0], len[1], len[2]}, *const ct[3] = {tok[0], tok[1], tok[2]};
    pds_build(ds, U, names, groups, N, user, cl, ct);
    free(user);
    for (int k = 0; k < 3; k++) {
        free(len[k]);
        free(tok[k]);
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Reference model of the specification (docs/data-format.md) */

/* Training row seed of sequence s (= 2j + role) of an adapter's step. */
static uint64_t ref_row_seed(uint64_t seed, const char *name, int64_t astep, int s, int pos) {
    uint64_t k = tl_mix64(tl_mix64(seed ^ 0x726f777365656431ULL) ^ ref_fnv1a(name));
    return tl_mix64(tl_mix64(tl_mix64(k ^ (uint64_t)astep) ^ (uint64_t)s) ^ (uint64_t)pos);
}
/* Eval row seed: no run seed, the pair's sequence 2 * pair + role. */
static uint64_t ref_eval_seed(const char *name, int64_t pair, int role, int pos) {
    uint64_t k = tl_mix64(0x726f777365656431ULL ^ ref_fnv1a(name));
    return tl_mix64(tl_mix64(k ^ (uint64_t)(2 * pair + role)) ^ (uint64_t)pos);
}

/* One sequence as the spec describes it: concatenate prompt and response, then cut. */
typedef struct {
    int32_t tok[96];
    int len, prompt, nt, truncated;
} rseq;

static void ref_seq(const tl_pref_dataset *ds, int64_t i, int role, int max, rseq *q) {
    int32_t full[96];
    const tl_pref_tokens *pp = &ds->prompt, *rr = role == 0 ? &ds->chosen : &ds->rejected;
    int p = (int)(pp->offsets[i + 1] - pp->offsets[i]), R = (int)(rr->offsets[i + 1] - rr->offsets[i]);
    if (p + R > 96) {
        fprintf(stderr, "FATAL: test sequence too long\n");
        exit(1);
    }
    memcpy(full, pp->tokens + pp->offsets[i], (size_t)p * 4);
    memcpy(full + p, rr->tokens + rr->offsets[i], (size_t)R * 4);
    int L = p + R, start = 0;
    q->truncated = L > max;
    if (L > max) {
        if (R <= max) {
            start = L - max;
            p -= start;
        } else {
            start = p;
            p = 0;
        }
        L = max;
    }
    memcpy(q->tok, full + start, (size_t)L * 4);
    q->len = L;
    q->prompt = p;
    int first = p > 1 ? p : 1;
    q->nt = L > first ? L - first : 0;
}

static int ref_target(const rseq *q, int r) {
    int j = r + 1;
    return j < q->len && j >= (q->prompt > 1 ? q->prompt : 1) ? q->tok[j] : -1;
}

typedef struct {
    int64_t pair;
    int a, j, keep, mb, seq;
    rseq s[2];
} rpair;

typedef struct {
    int n, n_mb;
    rpair *p;
    int64_t *tc;
    int *active, n_active, *mb_tok;
    int64_t n_trunc, n_skipped;
} rstep;

static void rstep_alloc(rstep *r, int A, int epa) {
    r->p = xmalloc((size_t)A * (size_t)epa * sizeof *r->p);
    r->tc = xmalloc((size_t)A * sizeof *r->tc);
    r->active = xmalloc((size_t)A * sizeof *r->active);
    r->mb_tok = xmalloc((size_t)A * (size_t)epa * sizeof *r->mb_tok);
}
static void rstep_free(rstep *r) {
    free(r->p);
    free(r->tc);
    free(r->active);
    free(r->mb_tok);
}

/* The expected content of one step (pairs, their placement); advances the reference cursors. */
static void ref_step(const tl_pref_dataset *ds, const tl_adapter_map *m, const tl_batcher_opts *o, int64_t step,
                     tl_cursor *cur, rstep *r) {
    int A = m->n_adapters;
    char *sched = ref_schedule(A, o, step);
    r->n = r->n_active = 0;
    r->n_trunc = r->n_skipped = 0;
    memset(r->tc, 0, (size_t)A * sizeof *r->tc);
    for (int a = 0; a < A; a++) {
        if (!sched[a] || m->n_examples[a] == 0) continue;
        int64_t n = m->n_examples[a];
        int64_t *perm = xmalloc((size_t)n * sizeof *perm);
        for (int j = 0; j < o->examples_per_adapter; j++) {
            rpair *q = &r->p[r->n++];
            q->pair = ref_draw(m, o, a, cur, perm);
            q->a = a;
            q->j = j;
            q->mb = q->seq = -1;
            for (int role = 0; role < 2; role++) {
                ref_seq(ds, q->pair, role, o->max_seq_len, &q->s[role]);
                r->n_trunc += q->s[role].truncated;
            }
            q->keep = q->s[0].nt > 0 && q->s[1].nt > 0;
            if (q->keep)
                r->tc[a]++;
            else
                r->n_skipped++;
        }
        free(perm);
        if (r->tc[a] > 0) r->active[r->n_active++] = a;
    }
    free(sched);
    /* adapter-aligned packing of whole pairs */
    int mb = -1, fill = 0, nseq = 0;
    for (int i = 0; i < r->n;) {
        if (!r->p[i].keep) {
            i++;
            continue;
        }
        int a = r->p[i].a, end = i, chunk = 0;
        for (; end < r->n && r->p[end].a == a; end++) {
            if (!r->p[end].keep) continue;
            int L = r->p[end].s[0].len + r->p[end].s[1].len;
            if (chunk + L > o->micro_batch_tokens) break;
            chunk += L;
        }
        if (mb < 0 || fill + chunk > o->micro_batch_tokens) {
            mb++;
            fill = nseq = 0;
        }
        for (; i < end; i++) {
            if (!r->p[i].keep) continue;
            r->p[i].mb = mb;
            r->p[i].seq = nseq;
            nseq += 2;
            fill += r->p[i].s[0].len + r->p[i].s[1].len;
        }
        r->mb_tok[mb] = fill;
    }
    r->n_mb = mb + 1;
}

/* Rows of sequence q of mb against the expected sequence. */
static void check_rows(const tl_host_mb *mb, int q, const rseq *e, int adapter, float w_trained, const uint64_t *seeds,
                       const char *label) {
    int r0 = mb->cu_seqlens[q], L = mb->cu_seqlens[q + 1] - r0;
    CHECK(L == e->len, "%s: seq %d length %d, expected %d", label, q, L, e->len);
    if (L != e->len) return;
    for (int r = 0; r < L; r++) {
        int tgt = ref_target(e, r);
        CHECK(mb->tokens[r0 + r] == e->tok[r], "%s: seq %d row %d token %d, expected %d", label, q, r,
              mb->tokens[r0 + r], e->tok[r]);
        CHECK(mb->targets[r0 + r] == tgt, "%s: seq %d row %d target %d, expected %d", label, q, r,
              mb->targets[r0 + r], tgt);
        CHECK(mb->weight[r0 + r] == (tgt >= 0 ? w_trained : 0.0f), "%s: seq %d row %d weight %g", label, q, r,
              mb->weight[r0 + r]);
        CHECK(mb->pos[r0 + r] == r, "%s: seq %d row %d pos %d", label, q, r, mb->pos[r0 + r]);
        CHECK(mb->adapter[r0 + r] == adapter, "%s: seq %d row %d adapter %d, expected %d", label, q, r,
              mb->adapter[r0 + r], adapter);
        if (seeds) CHECK(mb->row_seed[r0 + r] == seeds[r], "%s: seq %d row %d row_seed", label, q, r);
    }
}

static void compare_step(const tl_adapter_map *m, const tl_batcher_opts *o, const int64_t *asteps, const rstep *r,
                         const tl_pref_step *ps, const char *label) {
    const tl_step_batch *sb = ps->batch;
    int A = m->n_adapters;
    CHECK(sb->n_active == r->n_active, "%s: n_active %d != %d", label, sb->n_active, r->n_active);
    for (int i = 0; i < r->n_active && i < sb->n_active; i++)
        CHECK(sb->active[i] == r->active[i], "%s: active[%d] %d != %d", label, i, sb->active[i], r->active[i]);
    for (int a = 0; a < A; a++)
        CHECK(sb->target_count[a] == r->tc[a], "%s: target_count[%d] %lld != %lld pairs", label, a,
              (long long)sb->target_count[a], (long long)r->tc[a]);
    CHECK(sb->n_truncated == r->n_trunc, "%s: n_truncated %lld != %lld", label, (long long)sb->n_truncated,
          (long long)r->n_trunc);
    CHECK(ps->n_skipped == r->n_skipped, "%s: n_skipped %lld != %lld", label, (long long)ps->n_skipped,
          (long long)r->n_skipped);
    CHECK(sb->n_mb == r->n_mb, "%s: n_mb %d != %d", label, sb->n_mb, r->n_mb);
    for (int mi = 0; mi < r->n_mb && mi < sb->n_mb; mi++)
        CHECK(sb->mb[mi].n_tok == r->mb_tok[mi], "%s: mb %d n_tok %d != %d", label, mi, sb->mb[mi].n_tok,
              r->mb_tok[mi]);
    int64_t k = 0;
    for (int i = 0; i < r->n; i++) {
        const rpair *q = &r->p[i];
        if (!q->keep) continue;
        if (k >= ps->n_pairs) {
            CHECK(0, "%s: the pairs table has %lld entries, too few", label, (long long)ps->n_pairs);
            return;
        }
        const tl_pref_pair *pp = &ps->pairs[k++];
        CHECK(pp->pair == q->pair && pp->adapter == q->a && pp->mb == q->mb && pp->chosen == q->seq &&
                  pp->rejected == q->seq + 1 && pp->n_chosen_targets == q->s[0].nt &&
                  pp->n_rejected_targets == q->s[1].nt,
              "%s: pairs[%lld] = (pair %lld adapter %d mb %d seqs %d,%d targets %d,%d), expected (%lld %d %d %d,%d "
              "%d,%d)", label, (long long)(k - 1), (long long)pp->pair, pp->adapter, pp->mb, pp->chosen, pp->rejected,
              pp->n_chosen_targets, pp->n_rejected_targets, (long long)q->pair, q->a, q->mb, q->seq, q->seq + 1,
              q->s[0].nt, q->s[1].nt);
        if (q->mb >= sb->n_mb) continue;
        const tl_host_mb *mb = &sb->mb[q->mb];
        for (int role = 0; role < 2; role++) {
            int s = q->seq + role;
            if (s >= mb->n_seq) {
                CHECK(0, "%s: mb %d has %d sequences, expected at least %d", label, q->mb, mb->n_seq, s + 1);
                continue;
            }
            CHECK(mb->example[s] == q->pair, "%s: mb %d seq %d example %lld, expected pair %lld", label, q->mb, s,
                  (long long)mb->example[s], (long long)q->pair);
            uint64_t seeds[96];
            for (int pos = 0; pos < q->s[role].len; pos++)
                seeds[pos] = ref_row_seed(o->seed, m->names[q->a], asteps ? asteps[q->a] : 0, 2 * q->j + role, pos);
            char l2[160];
            snprintf(l2, sizeof l2, "%s mb %d pair %lld role %d", label, q->mb, (long long)q->pair, role);
            check_rows(mb, s, &q->s[role], q->a, 1.0f, seeds, l2);
        }
    }
    CHECK(ps->n_pairs == k, "%s: n_pairs %lld, expected %lld", label, (long long)ps->n_pairs, (long long)k);
}

/* ------------------------------------------------------------------------------------------------------------
 * Properties that do not depend on the reference model */

static void check_mb_shape(const tl_host_mb *mb, int mbt, const char *label) {
    CHECK(mb->n_tok > 0 && mb->n_tok <= mbt, "%s: %d tokens (limit %d)", label, mb->n_tok, mbt);
    CHECK(mb->n_seq % 2 == 0, "%s: odd number of sequences %d", label, mb->n_seq);
    CHECK(mb->cu_seqlens[0] == 0 && mb->cu_seqlens[mb->n_seq] == mb->n_tok, "%s: cu_seqlens ends", label);
    int maxlen = 0;
    for (int q = 0; q < mb->n_seq; q++) {
        int len = mb->cu_seqlens[q + 1] - mb->cu_seqlens[q];
        if (len > maxlen) maxlen = len;
        CHECK(mb->targets[mb->cu_seqlens[q + 1] - 1] == -1, "%s: last row of seq %d has a target", label, q);
    }
    CHECK(mb->max_seqlen == maxlen, "%s: max_seqlen %d, expected %d", label, mb->max_seqlen, maxlen);
    CHECK(mb->n_seg >= 1 && mb->segs[0].row0 == 0 && mb->segs[mb->n_seg - 1].row1 == mb->n_tok,
          "%s: segments do not cover", label);
    for (int g = 0; g < mb->n_seg; g++) {
        const tl_seg *sg = &mb->segs[g];
        CHECK(sg->row0 < sg->row1, "%s: empty segment", label);
        if (g > 0) CHECK(sg->row0 == mb->segs[g - 1].row1, "%s: segments not contiguous", label);
        if (g > 0) CHECK(mb->adapter[sg->row0] > mb->adapter[mb->segs[g - 1].row0], "%s: adapters not ascending",
                         label);
        for (int r = sg->row0; r < sg->row1; r++)
            CHECK(mb->adapter[r] == mb->adapter[sg->row0], "%s: row %d in a segment of another adapter", label, r);
    }
    for (int r = 0; r < mb->n_tok; r++)
        CHECK((mb->targets[r] >= 0) == (mb->weight[r] == 1.0f) && (mb->targets[r] >= 0 || mb->weight[r] == 0.0f),
              "%s: row %d target %d weight %g (weight 1 iff target)", label, r, mb->targets[r], mb->weight[r]);
}

/* One pair entry against its micro-batch and its data. */
static void check_pair(const tl_pref_dataset *ds, const tl_adapter_map *m, int max_seq_len, const tl_host_mb *mb,
                       const tl_pref_pair *pp, const char *label) {
    CHECK(pp->rejected == pp->chosen + 1, "%s: pair %lld: rejected %d is not right after chosen %d", label,
          (long long)pp->pair, pp->rejected, pp->chosen);
    CHECK(pp->chosen >= 0 && pp->rejected < mb->n_seq, "%s: pair %lld: sequences %d,%d outside the mb's %d", label,
          (long long)pp->pair, pp->chosen, pp->rejected, mb->n_seq);
    if (pp->chosen < 0 || pp->rejected >= mb->n_seq || pp->pair < 0 || pp->pair >= ds->n_pairs) return;
    CHECK(m->user_adapter[ds->user[pp->pair]] == pp->adapter, "%s: pair %lld belongs to adapter %d, not %d", label,
          (long long)pp->pair, m->user_adapter[ds->user[pp->pair]], pp->adapter);
    int nts[2] = {pp->n_chosen_targets, pp->n_rejected_targets};
    for (int role = 0; role < 2; role++) {
        int q = pp->chosen + role;
        CHECK(mb->example[q] == pp->pair, "%s: seq %d example %lld, pair %lld", label, q, (long long)mb->example[q],
              (long long)pp->pair);
        rseq e;
        ref_seq(ds, pp->pair, role, max_seq_len, &e);
        check_rows(mb, q, &e, pp->adapter, 1.0f, NULL, label);
        int cnt = 0;
        for (int r = mb->cu_seqlens[q]; r < mb->cu_seqlens[q + 1]; r++) cnt += mb->targets[r] >= 0;
        CHECK(cnt == nts[role] && cnt >= 1, "%s: pair %lld role %d: %d target rows, table says %d", label,
              (long long)pp->pair, role, cnt, nts[role]);
    }
}

static void check_invariants(const tl_pref_dataset *ds, const tl_adapter_map *m, const tl_batcher_opts *o,
                             const tl_pref_step *ps, const char *label) {
    const tl_step_batch *sb = ps->batch;
    int A = m->n_adapters;
    int64_t total = 0, *cnt = calloc((size_t)A, sizeof *cnt);
    char **covered = calloc((size_t)(sb->n_mb ? sb->n_mb : 1), sizeof *covered);
    for (int mi = 0; mi < sb->n_mb; mi++) {
        char l2[128];
        snprintf(l2, sizeof l2, "%s mb %d", label, mi);
        check_mb_shape(&sb->mb[mi], o->micro_batch_tokens, l2);
        total += sb->mb[mi].n_tok;
        covered[mi] = calloc((size_t)sb->mb[mi].n_seq + 1, 1);
    }
    CHECK(total == sb->n_tokens, "%s: n_tokens %lld, rows %lld", label, (long long)sb->n_tokens, (long long)total);
    int last_mb = 0, last_seq = -1;
    for (int64_t k = 0; k < ps->n_pairs; k++) {
        const tl_pref_pair *pp = &ps->pairs[k];
        CHECK(pp->mb >= 0 && pp->mb < sb->n_mb, "%s: pairs[%lld].mb %d of %d", label, (long long)k, pp->mb, sb->n_mb);
        if (pp->mb < 0 || pp->mb >= sb->n_mb) continue;
        CHECK(pp->mb > last_mb || (pp->mb == last_mb && pp->chosen > last_seq), "%s: pairs table not in packing order",
              label);
        last_mb = pp->mb;
        last_seq = pp->rejected;
        char l2[128];
        snprintf(l2, sizeof l2, "%s pairs[%lld]", label, (long long)k);
        check_pair(ds, m, o->max_seq_len, &sb->mb[pp->mb], pp, l2);
        for (int q = pp->chosen; q <= pp->rejected; q++)
            if (q >= 0 && q < sb->mb[pp->mb].n_seq) covered[pp->mb][q]++;
        if (pp->adapter >= 0 && pp->adapter < A) cnt[pp->adapter]++;
    }
    for (int mi = 0; mi < sb->n_mb; mi++) {
        for (int q = 0; q < sb->mb[mi].n_seq; q++)
            CHECK(covered[mi][q] == 1, "%s: mb %d seq %d is in %d pairs, expected exactly 1", label, mi, q,
                  covered[mi][q]);
        free(covered[mi]);
    }
    free(covered);
    int na = 0;
    int64_t sum = 0;
    for (int a = 0; a < A; a++) {
        CHECK(cnt[a] == sb->target_count[a], "%s: adapter %d has %lld pairs, target_count %lld", label, a,
              (long long)cnt[a], (long long)sb->target_count[a]);
        sum += cnt[a];
        if (cnt[a] > 0) {
            CHECK(na < sb->n_active && sb->active[na] == a, "%s: active list misses adapter %d", label, a);
            na++;
        }
    }
    CHECK(na == sb->n_active, "%s: n_active %d, expected %d", label, sb->n_active, na);
    CHECK(sum == ps->n_pairs, "%s: n_pairs %lld, counted %lld", label, (long long)ps->n_pairs, (long long)sum);
    free(cnt);
}

/* ------------------------------------------------------------------------------------------------------------
 * Tests */

/* Reference model vs batcher over many steps and random options (epochs cross, some pairs are skipped). */
static void test_reference(void) {
    for (int rep = 0; rep < 12; rep++) {
        tl_pref_dataset ds;
        int U = rnd_int(1, 8);
        pds_random(&ds, U, k_names, NULL, rnd_int(1, 50), 0, 14, 1, 14, rnd_int(0, 6));
        tl_adapter_map m;
        REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, err));
        tl_batcher_opts o = {.examples_per_adapter = rnd_int(1, 4), .adapters_per_step = rnd_int(0, U + 1),
                             .micro_batch_tokens = rnd_int(24, 90), .max_seq_len = 0, .seed = rnd()};
        o.max_seq_len = rnd_int(2, o.micro_batch_tokens / 2 < 24 ? o.micro_batch_tokens / 2 : 24);
        tl_pref_batcher *b;
        REQUIRE_OK(tl_pref_batcher_init(&ds, &m, &o, &b, err));
        tl_cursor *cur = calloc((size_t)m.n_adapters, sizeof *cur);
        int64_t *asteps = calloc((size_t)m.n_adapters, sizeof *asteps);
        rstep r;
        rstep_alloc(&r, m.n_adapters, o.examples_per_adapter);
        for (int64_t t = 0; t < 14; t++) {
            if (t % 4 == 3) {
                for (int a = 0; a < m.n_adapters; a++) asteps[a] = rnd_int(0, 1000);
                tl_pref_batcher_set_adapter_steps(b, asteps);
            }
            tl_pref_step *ps;
            REQUIRE_OK(tl_pref_batcher_next(b, t, &ps, err));
            ref_step(&ds, &m, &o, t, cur, &r);
            char label[96];
            snprintf(label, sizeof label, "reference rep %d step %lld", rep, (long long)t);
            compare_step(&m, &o, asteps, &r, ps, label);
            check_invariants(&ds, &m, &o, ps, label);
            fx_check_cursors(label, tl_pref_batcher_cursors(b), cur, m.n_adapters);
        }
        rstep_free(&r);
        free(cur);
        free(asteps);
        tl_pref_batcher_free(b);
        tl_adapter_map_free(&m);
        tl_pref_free(&ds);
    }
}

/* Collects one adapter's pairs of a step (rows of both sequences, targets counts) as a flat signature. */
static void adapter_signature(const tl_pref_step *ps, int a, sig *s) {
    s->n = 0;
    for (int64_t k = 0; k < ps->n_pairs; k++) {
        const tl_pref_pair *pp = &ps->pairs[k];
        if (pp->adapter != a) continue;
        const tl_host_mb *mb = &ps->batch->mb[pp->mb];
        sig_add(s, -1000 - pp->n_chosen_targets);
        sig_add(s, -2000 - pp->n_rejected_targets);
        for (int q = pp->chosen; q <= pp->rejected; q++) {
            sig_add(s, -3000 - (mb->cu_seqlens[q + 1] - mb->cu_seqlens[q]));
            for (int r = mb->cu_seqlens[q]; r < mb->cu_seqlens[q + 1]; r++) {
                sig_add(s, mb->tokens[r]);
                sig_add(s, mb->targets[r]);
                sig_add(s, (int64_t)mb->weight[r]);
                sig_add(s, (int64_t)(mb->row_seed[r] >> 1));
            }
        }
    }
}

/* Alice's pairs are batched the same in a dataset of her own and in one shared with others whose pairs
 * interleave with hers (so her pair indices differ): order, content, targets and row seeds. */
static void test_isolation(void) {
    enum { NA = 9 };
    int32_t alen[3][NA], atok[3][NA * 16];
    int at[3] = {0, 0, 0};
    for (int i = 0; i < NA; i++)
        for (int k = 0; k < 3; k++) {
            alen[k][i] = k == P_PROMPT ? rnd_int(0, 12) : rnd_int(2, 14);
            for (int t = 0; t < alen[k][i]; t++) atok[k][at[k]++] = rnd_int(0, 999);
        }
    tl_pref_dataset solo, mixed;
    {
        int32_t user[NA] = {0};
        const char *nm[] = {"alice"};
        const int32_t *const l[3] = {alen[0], alen[1], alen[2]}, *const t[3] = {atok[0], atok[1], atok[2]};
        pds_build(&solo, 1, nm, NULL, NA, user, l, t);
    }
    {
        const char *nm[] = {"bob", "alice", "carol"};
        int32_t user[64], len[3][64], tok[3][64 * 16];
        int n = 0, tt[3] = {0, 0, 0}, ao[3] = {0, 0, 0}, ai = 0;
        while (ai < NA) {
            if (n < 40 && rnd_int(0, 2) != 0) { /* someone else's pair */
                user[n] = rnd_int(0, 1) * 2;
                for (int k = 0; k < 3; k++) {
                    len[k][n] = k == P_PROMPT ? rnd_int(0, 12) : rnd_int(1, 14);
                    for (int t = 0; t < len[k][n]; t++) tok[k][tt[k]++] = rnd_int(0, 999);
                }
            } else {
                user[n] = 1;
                for (int k = 0; k < 3; k++) {
                    len[k][n] = alen[k][ai];
                    memcpy(tok[k] + tt[k], atok[k] + ao[k], (size_t)alen[k][ai] * 4);
                    tt[k] += alen[k][ai];
                    ao[k] += alen[k][ai];
                }
                ai++;
            }
            n++;
        }
        const int32_t *const l[3] = {len[0], len[1], len[2]}, *const t[3] = {tok[0], tok[1], tok[2]};
        pds_build(&mixed, 3, nm, NULL, n, user, l, t);
    }
    tl_adapter_map ms, mm;
    REQUIRE_OK(tl_adapter_map_build_pref(&solo, TL_KEY_USER, NULL, 0, &ms, err));
    REQUIRE_OK(tl_adapter_map_build_pref(&mixed, TL_KEY_USER, NULL, 0, &mm, err));
    int a_mixed = mm.user_adapter[1];
    CHECK(a_mixed >= 0 && strcmp(mm.names[a_mixed], "alice") == 0, "alice's adapter in the mixed map");
    tl_batcher_opts o = {.examples_per_adapter = 3, .adapters_per_step = 0, .micro_batch_tokens = 52,
                         .max_seq_len = 18, .seed = rnd()};
    tl_pref_batcher *bs, *bm;
    REQUIRE_OK(tl_pref_batcher_init(&solo, &ms, &o, &bs, err));
    REQUIRE_OK(tl_pref_batcher_init(&mixed, &mm, &o, &bm, err));
    int64_t ss[1], sm[3];
    sig *s1 = malloc(sizeof *s1), *s2 = malloc(sizeof *s2);
    for (int64_t t = 0; t < 8; t++) {
        ss[0] = sm[a_mixed] = t * 5 + 2;
        sm[(a_mixed + 1) % 3] = 900 + t;
        sm[(a_mixed + 2) % 3] = 17;
        tl_pref_batcher_set_adapter_steps(bs, ss);
        tl_pref_batcher_set_adapter_steps(bm, sm);
        tl_pref_step *p1, *p2;
        REQUIRE_OK(tl_pref_batcher_next(bs, t, &p1, err));
        adapter_signature(p1, 0, s1);
        REQUIRE_OK(tl_pref_batcher_next(bm, t, &p2, err));
        adapter_signature(p2, a_mixed, s2);
        CHECK(s1->n > 0 && sig_equal(s1, s2),
              "isolation: alice's step %lld differs alone (%d values) and mixed (%d values)", (long long)t, s1->n,
              s2->n);
        CHECK(p1->batch->target_count[0] == p2->batch->target_count[a_mixed], "isolation: pair counts");
        CHECK(tl_pref_batcher_cursors(bs)[0].epoch == tl_pref_batcher_cursors(bm)[a_mixed].epoch &&
                  tl_pref_batcher_cursors(bs)[0].pos == tl_pref_batcher_cursors(bm)[a_mixed].pos,
              "isolation: cursors");
    }
    free(s1);
    free(s2);
    tl_pref_batcher_free(bs);
    tl_pref_batcher_free(bm);
    tl_adapter_map_free(&ms);
    tl_adapter_map_free(&mm);
    tl_pref_free(&solo);
    tl_pref_free(&mixed);
}

/* Finds pair i in a step's table. */
static const tl_pref_pair *find_pair(const tl_pref_step *ps, int64_t i) {
    for (int64_t k = 0; k < ps->n_pairs; k++)
        if (ps->pairs[k].pair == i) return &ps->pairs[k];
    return NULL;
}

/* Hand-made pairs with exact expected rows: targets, both truncation cases, the skip rule. */
static void test_hand_made(void) {
    /* pair 0: prompt 10 11 12 | chosen 20 21          | rejected 30 31 32 33
     * pair 1: prompt (empty)  | chosen 40             | rejected 50 51        -> chosen has no target: skipped
     * pair 2: prompt 60       | chosen 70 .. 76 (7)   | rejected 80 81
     * pair 3: prompt 90 91    | chosen 95             | rejected 96 97 */
    const int32_t plen[4] = {3, 0, 1, 2}, clen[4] = {2, 1, 7, 1}, rlen[4] = {4, 2, 2, 2}, user[4] = {0, 0, 0, 0};
    const int32_t ptok[] = {10, 11, 12, 60, 90, 91}, ctok[] = {20, 21, 40, 70, 71, 72, 73, 74, 75, 76, 95},
                  rtok[] = {30, 31, 32, 33, 50, 51, 80, 81, 96, 97};
    const int32_t *const len[3] = {plen, clen, rlen}, *const tok[3] = {ptok, ctok, rtok};
    const char *nm[] = {"solo"};
    tl_pref_dataset ds;
    pds_build(&ds, 1, nm, NULL, 4, user, len, tok);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, err));
    tl_batcher_opts o = {.examples_per_adapter = 4, .adapters_per_step = 0, .micro_batch_tokens = 10,
                         .max_seq_len = 5, .seed = 11};
    tl_pref_batcher *b;
    REQUIRE_OK(tl_pref_batcher_init(&ds, &m, &o, &b, err));
    tl_pref_step *ps;
    REQUIRE_OK(tl_pref_batcher_next(b, 0, &ps, err));
    CHECK(ps->n_pairs == 3 && ps->n_skipped == 1, "hand-made: %lld pairs, %lld skipped; expected 3 and 1",
          (long long)ps->n_pairs, (long long)ps->n_skipped);
    CHECK(ps->batch->target_count[0] == 3 && ps->batch->n_active == 1, "hand-made: target_count %lld pairs",
          (long long)ps->batch->target_count[0]);
    /* truncated: pair 0 rejected (7 > 5), pair 2 chosen (8 > 5) */
    CHECK(ps->batch->n_truncated == 2, "hand-made: n_truncated %lld, expected 2", (long long)ps->batch->n_truncated);
    CHECK(find_pair(ps, 1) == NULL, "hand-made: pair 1 (1-token response, empty prompt) must be skipped");
    static const struct {
        int64_t pair;
        int role, len;
        int32_t tok[5], tgt[5];
    } want[] = {
        /* no truncation, prompt 3: tokens 3 and 4 are trained */
        {0, 0, 5, {10, 11, 12, 20, 21}, {-1, -1, 20, 21, -1}},
        /* 7 > 5, response 4 fits: drop 2 prompt tokens from the left, prompt 1 */
        {0, 1, 5, {12, 30, 31, 32, 33}, {30, 31, 32, 33, -1}},
        /* response 7 > 5: the prompt goes, the first 5 response tokens stay, prompt 0: token 0 is context only */
        {2, 0, 5, {70, 71, 72, 73, 74}, {71, 72, 73, 74, -1}},
        {2, 1, 3, {60, 80, 81}, {80, 81, -1}},
        {3, 0, 3, {90, 91, 95}, {-1, 95, -1}},
        {3, 1, 4, {90, 91, 96, 97}, {-1, 96, 97, -1}},
    };
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        const tl_pref_pair *pp = find_pair(ps, want[w].pair);
        CHECK(pp != NULL, "hand-made: pair %lld missing", (long long)want[w].pair);
        if (!pp) continue;
        const tl_host_mb *mb = &ps->batch->mb[pp->mb];
        int q = want[w].role == 0 ? pp->chosen : pp->rejected;
        int r0 = mb->cu_seqlens[q], L = mb->cu_seqlens[q + 1] - r0, nt = 0;
        CHECK(L == want[w].len, "hand-made: pair %lld role %d length %d, expected %d", (long long)want[w].pair,
              want[w].role, L, want[w].len);
        for (int r = 0; r < L && L == want[w].len; r++) {
            CHECK(mb->tokens[r0 + r] == want[w].tok[r] && mb->targets[r0 + r] == want[w].tgt[r],
                  "hand-made: pair %lld role %d row %d: token %d target %d, expected %d %d", (long long)want[w].pair,
                  want[w].role, r, mb->tokens[r0 + r], mb->targets[r0 + r], want[w].tok[r], want[w].tgt[r]);
            CHECK(mb->weight[r0 + r] == (want[w].tgt[r] >= 0 ? 1.0f : 0.0f), "hand-made: weight");
            nt += want[w].tgt[r] >= 0;
        }
        CHECK((want[w].role == 0 ? pp->n_chosen_targets : pp->n_rejected_targets) == nt,
              "hand-made: pair %lld role %d target count", (long long)want[w].pair, want[w].role);
    }
    /* the packed pairs have 10, 8 and 7 tokens and micro_batch_tokens is 10: whatever the stream order, no two
     * fit together and none is split, so each pair is a micro-batch of its own */
    CHECK(ps->batch->n_mb == 3, "hand-made: %d micro-batches, expected 3", ps->batch->n_mb);
    check_invariants(&ds, &m, &o, ps, "hand-made");
    tl_pref_batcher_free(b);
    tl_adapter_map_free(&m);
    tl_pref_free(&ds);
}

static void test_eval(void) {
    tl_pref_dataset ds;
    pds_random(&ds, 5, k_names, NULL, 60, 0, 16, 1, 16, 5);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, err));
    const int mbt = 60, msl = 20;
    int forces[3] = {-2, -1, 2};
    for (int fi = 0; fi < 3; fi++) {
        tl_pref_eval_iter *it;
        REQUIRE_OK(tl_pref_eval_iter_init(&ds, &m, mbt, msl, &it, err));
        int *seen = calloc((size_t)ds.n_pairs, sizeof *seen);
        int64_t *order = malloc((size_t)ds.n_pairs * sizeof *order);
        int n = 0, done = 0, calls = 0;
        while (!done && calls++ < 1000) {
            tl_pref_eval_batch *eb;
            REQUIRE_OK(tl_pref_eval_iter_next(it, forces[fi], &eb, &done, err));
            if (done) {
                CHECK(eb == NULL, "eval: done must come with no batch");
                break;
            }
            const tl_host_mb *mb = eb->mb;
            check_mb_shape(mb, mbt, "eval");
            CHECK(eb->n_pairs * 2 == mb->n_seq, "eval: %lld pairs for %d sequences", (long long)eb->n_pairs,
                  mb->n_seq);
            for (int g = 0; g < mb->n_seg; g++) {
                int want = forces[fi] == -2 ? mb->adapter[mb->segs[g].row0] : forces[fi];
                CHECK(mb->segs[g].slot == want, "eval force %d: slot %d", forces[fi], mb->segs[g].slot);
            }
            for (int64_t k = 0; k < eb->n_pairs; k++) {
                const tl_pref_pair *pp = &eb->pairs[k];
                CHECK(pp->mb == 0 && pp->chosen == 2 * k, "eval: pair %lld at mb %d seq %d", (long long)k, pp->mb,
                      pp->chosen);
                check_pair(&ds, &m, msl, mb, pp, "eval");
                if (pp->pair < 0 || pp->pair >= ds.n_pairs) continue;
                seen[pp->pair]++;
                order[n++] = pp->pair;
                for (int role = 0; role < 2; role++) {
                    int q = pp->chosen + role;
                    for (int r = mb->cu_seqlens[q]; r < mb->cu_seqlens[q + 1]; r++)
                        CHECK(mb->row_seed[r] ==
                                  ref_eval_seed(m.names[pp->adapter], pp->pair, role, r - mb->cu_seqlens[q]),
                              "eval: row seed");
                }
            }
        }
        CHECK(done, "eval: never finished");
        int k = 0;
        for (int a = 0; a < m.n_adapters; a++)
            for (int64_t i = 0; i < m.n_examples[a]; i++) {
                int64_t e = m.examples[a][i];
                rseq c, r;
                ref_seq(&ds, e, 0, msl, &c);
                ref_seq(&ds, e, 1, msl, &r);
                int want = c.nt > 0 && r.nt > 0;
                CHECK(seen[e] == want, "eval: pair %lld seen %d times, expected %d", (long long)e, seen[e], want);
                if (want) {
                    CHECK(k < n && order[k] == e, "eval: order at %d", k);
                    k++;
                }
            }
        CHECK(k == n && k > 0, "eval: %d pairs, expected %d", n, k);
        tl_pref_eval_batch *eb;
        REQUIRE_OK(tl_pref_eval_iter_next(it, -2, &eb, &done, err));
        CHECK(done && eb == NULL, "eval: stays done");
        free(seen);
        free(order);
        tl_pref_eval_iter_free(it);
    }
    tl_error e = {0};
    tl_pref_eval_iter *it;
    CHECK(tl_pref_eval_iter_init(&ds, &m, 39, 20, &it, &e) == TL_ERR_INPUT && strstr(e.msg, "data.max_seq_len") &&
              strstr(e.msg, "train.micro_batch_tokens"),
          "eval: 2 * max_seq_len > micro_batch_tokens: %s", e.msg);
    REQUIRE_OK(tl_pref_eval_iter_init(&ds, &m, 40, 20, &it, err));
    tl_pref_eval_batch *eb;
    int done;
    CHECK(tl_pref_eval_iter_next(it, -3, &eb, &done, &e) == TL_ERR_INPUT, "eval: force_slot -3");
    tl_pref_eval_iter_free(it);
    tl_adapter_map_free(&m);
    tl_pref_free(&ds);
}

static void step_signature(const tl_pref_step *ps, sig *s) {
    s->n = 0;
    sig_add(s, ps->batch->n_mb);
    sig_add(s, ps->n_skipped);
    for (int64_t k = 0; k < ps->n_pairs; k++) {
        sig_add(s, ps->pairs[k].pair);
        sig_add(s, ps->pairs[k].mb * 100000 + ps->pairs[k].chosen);
    }
    for (int mi = 0; mi < ps->batch->n_mb; mi++) {
        const tl_host_mb *mb = &ps->batch->mb[mi];
        for (int r = 0; r < mb->n_tok; r++) sig_add(s, (int64_t)(mb->row_seed[r] >> 1) ^ mb->targets[r]);
    }
}

static void pref_step_sig(void *b, int64_t t, sig *out) {
    tl_pref_step *ps;
    REQUIRE_OK(tl_pref_batcher_next(b, t, &ps, err));
    step_signature(ps, out);
}
static tl_cursor *pref_cursors(void *b) { return tl_pref_batcher_cursors(b); }
static const fx_batcher_ops k_pref_ops = {pref_step_sig, pref_cursors};

static void test_cursors(void) {
    tl_pref_dataset ds;
    pds_random(&ds, 3, k_names, NULL, 30, 0, 8, 1, 8, 7);
    for (int64_t i = 0; i < ds.n_pairs; i++) ds.user[i] = (int32_t)(i % 3);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, err));
    tl_batcher_opts o = {.examples_per_adapter = 3, .adapters_per_step = 2, .micro_batch_tokens = 40,
                         .max_seq_len = 12, .seed = rnd()};
    tl_pref_batcher *b;
    REQUIRE_OK(tl_pref_batcher_init(&ds, &m, &o, &b, err));
    tl_pref_step *ps;
    for (int t = 0; t < 4; t++) REQUIRE_OK(tl_pref_batcher_next(b, t, &ps, err));
    sig *runs = malloc(6 * sizeof *runs);
    tl_pref_batcher *fresh;
    REQUIRE_OK(tl_pref_batcher_init(&ds, &m, &o, &fresh, err));
    fx_check_cursor_restore(&k_pref_ops, b, fresh, 3, 4, 6, runs);
    tl_pref_batcher_cursors(fresh)[2].pos = 10;
    tl_error e = {0};
    CHECK(tl_pref_batcher_next(fresh, 10, &ps, &e) == TL_ERR_INPUT && strstr(e.msg, "carol") && strstr(e.msg, "pairs"),
          "bad cursor: %s", e.msg);
    free(runs);
    tl_pref_batcher_free(fresh);
    tl_pref_batcher_free(b);
    tl_adapter_map_free(&m);
    tl_pref_free(&ds);
}

static void test_map_and_options(void) {
    /* users u0 g2, u1 g1, u2 g2, u3 g3 (no pairs) */
    const char *nm[] = {"u0", "u1", "u2", "u3"}, *gr[] = {"g2", "g1", "g2", "g3"};
    tl_pref_dataset ds;
    pds_random(&ds, 4, nm, gr, 6, 1, 3, 2, 3, 0);
    const int32_t user[6] = {1, 0, 2, 1, 0, 2};
    memcpy(ds.user, user, sizeof user);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, err));
    CHECK(m.n_adapters == 3 && m.n_empty == 1 && !strcmp(m.names[0], "u0") && m.n_examples[0] == 2 &&
              m.examples[0][0] == 1 && m.examples[0][1] == 4,
          "pref map, user key");
    tl_adapter_map_free(&m);
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_GROUP, NULL, 0, &m, err));
    static const int64_t g2[4] = {1, 2, 4, 5};
    CHECK(m.n_adapters == 2 && !strcmp(m.names[0], "g2") && m.n_examples[0] == 4 &&
              !memcmp(m.examples[0], g2, sizeof g2) && m.n_empty == 1,
          "pref map, group key");
    tl_adapter_map_free(&m);
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_GLOBAL, NULL, 0, &m, err));
    CHECK(m.n_adapters == 1 && !strcmp(m.names[0], "global") && m.n_examples[0] == 6, "pref map, global key");

    tl_batcher_opts good = {.examples_per_adapter = 2, .adapters_per_step = 0, .micro_batch_tokens = 16,
                            .max_seq_len = 8, .seed = 1};
    tl_pref_batcher *b = NULL;
    REQUIRE_OK(tl_pref_batcher_init(&ds, &m, &good, &b, err)); /* 2 * max_seq_len == micro_batch_tokens fits */
    tl_pref_step *ps;
    REQUIRE_OK(tl_pref_batcher_next(b, 0, &ps, err));
    check_invariants(&ds, &m, &good, ps, "exact fit");
    tl_error e = {0};
    CHECK(tl_pref_batcher_next(b, -1, &ps, &e) == TL_ERR_INPUT, "negative step");
    tl_pref_batcher_free(b);
    struct {
        tl_batcher_opts o;
        const char *n1, *n2;
    } bad[4] = {{good, "train.micro_batch_tokens", "data.max_seq_len"},
                {good, "max_seq_len", NULL},
                {good, "examples_per_adapter", NULL},
                {good, "adapters_per_step", NULL}};
    bad[0].o.micro_batch_tokens = 15;
    bad[1].o.max_seq_len = 1;
    bad[2].o.examples_per_adapter = 0;
    bad[3].o.adapters_per_step = -2;
    for (int i = 0; i < 4; i++) {
        b = (tl_pref_batcher *)&g_fail;
        memset(&e, 0, sizeof e);
        CHECK(tl_pref_batcher_init(&ds, &m, &bad[i].o, &b, &e) == TL_ERR_INPUT && b == NULL &&
                  strstr(e.msg, bad[i].n1) && (!bad[i].n2 || strstr(e.msg, bad[i].n2)) && !strchr(e.msg, '\n'),
              "bad option %d: %s", i, e.msg);
    }
    tl_adapter_map_free(&m);
    tl_free_strings(ds.user_groups, ds.n_users);
    ds.user_groups = NULL;
    memset(&e, 0, sizeof e);
    CHECK(tl_adapter_map_build_pref(&ds, TL_KEY_GROUP, NULL, 0, &m, &e) == TL_ERR_INPUT &&
              strstr(e.msg, "adapter.key") && strstr(e.msg, "mem_pref.h5") && strstr(e.msg, "/users/group"),
          "group key without /users/group: %s", e.msg);
    tl_pref_free(&ds);
}

/* Many users, long run: capacity planning holds under random options; invariants on every step. */
static void test_stress(void) {
    const char *const *np = fx_user_names(150);
    tl_pref_dataset ds;
    pds_random(&ds, 150, np, NULL, 1500, 0, 40, 1, 40, 9);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, err));
    for (int rep = 0; rep < 4; rep++) {
        tl_batcher_opts o = {.examples_per_adapter = rnd_int(1, 5), .adapters_per_step = rnd_int(0, 180),
                             .micro_batch_tokens = rnd_int(64, 300), .max_seq_len = 0, .seed = rnd()};
        o.max_seq_len = rnd_int(2, o.micro_batch_tokens / 2 < 48 ? o.micro_batch_tokens / 2 : 48);
        tl_pref_batcher *b;
        REQUIRE_OK(tl_pref_batcher_init(&ds, &m, &o, &b, err));
        for (int64_t t = 0; t < 15; t++) {
            tl_pref_step *ps;
            REQUIRE_OK(tl_pref_batcher_next(b, t, &ps, err));
            check_invariants(&ds, &m, &o, ps, "stress");
        }
        tl_pref_batcher_free(b);
    }
    tl_adapter_map_free(&m);
    tl_pref_free(&ds);
}

int main(void) {
    fx_seed_rng(0x5eedULL, "test_pref_batcher");
    test_reference();
    test_isolation();
    test_hand_made();
    test_eval();
    test_cursors();
    test_map_and_options();
    test_stress();
    return tl_check_done("test_pref_batcher");
}
