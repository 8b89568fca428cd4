/* test_batcher: the adapter map, the training batcher and the eval iterator on in-memory datasets.
 *
 * Two kinds of checks. A reference model written here from the specification in docs/data-format.md (stream
 * shuffle, round robin, truncation, sequential packing, targets, weights, row seeds) must match every field of
 * every micro-batch, step after step. Properties that do not rely on that model hold as well: an adapter's
 * sequences and row seeds are the same whether other users are present or not, micro-batches respect the
 * token limit and keep sequences whole, segments are contiguous, weights sum to 1 per trained adapter, cursors
 * restore exactly, and eval visits every example once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_batcher.h"
#include "kernels/tl_math.h"
#include "tests/lib/tl_batch_ref.h"
#include "tests/lib/tl_batcher_fixture.h"
#include "tests/lib/tl_check.h"

/* ------------------------------------------------------------------------------------------------------------
 * In-memory datasets (allocated the way tl_sft_open does, so tl_sft_free releases them) */

static void ds_build(tl_sft_dataset *ds, int U, const char *const *names, const char *const *groups, int64_t N,
                     const int32_t *user, const int32_t *len, const int32_t *prompt, const int32_t *tokens) {
    memset(ds, 0, sizeof *ds);
    ds->path = xstrdup("mem.h5");
    ds->n_users = U;
    fx_user_table(U, names, groups, &ds->user_names, &ds->user_groups);
    ds->n_examples = N;
    ds->offsets = xmalloc((size_t)(N + 1) * sizeof(int64_t));
    ds->prompt_len = xmalloc((size_t)N * sizeof(int32_t));
    ds->user = xmalloc((size_t)N * sizeof(int32_t));
    ds->offsets[0] = 0;
    for (int64_t i = 0; i < N; i++) {
        ds->offsets[i + 1] = ds->offsets[i] + len[i];
        ds->prompt_len[i] = prompt[i];
        ds->user[i] = user[i];
    }
    ds->n_tokens = ds->offsets[N];
    ds->tokens = xmalloc((size_t)ds->n_tokens * sizeof(int32_t));
    memcpy(ds->tokens, tokens, (size_t)ds->n_tokens * sizeof(int32_t));
}

/* Random dataset: U users, N examples of random owner, length in [minlen, maxlen], random prompt_len. */
static void ds_random(tl_sft_dataset *ds, int U, const char *const *names, const char *const *groups, int64_t N,
                      int minlen, int maxlen) {
    int32_t *user = xmalloc((size_t)N * 4), *len = xmalloc((size_t)N * 4), *prompt = xmalloc((size_t)N * 4);
    int64_t T = 0;
    for (int64_t i = 0; i < N; i++) {
        user[i] = rnd_int(0, U - 1);
        len[i] = rnd_int(minlen, maxlen);
        prompt[i] = rnd_int(0, len[i]);
        T += len[i];
    }
    int32_t *tok = xmalloc((size_t)T * 4);
    for (int64_t t = 0; t < T; t++) tok[t] = rnd_int(0, 999);
    ds_build(ds, U, names, groups, N, user, len, prompt, tok);
    free(user);
    free(len);
    free(prompt);
    free(tok);
}

/* ------------------------------------------------------------------------------------------------------------
 * Reference model of the specification (docs/data-format.md) */

static uint64_t ref_row_seed(uint64_t seed, const char *name, int64_t astep, int j, int pos) {
    uint64_t k = tl_mix64(tl_mix64(seed ^ 0x726f777365656431ULL) ^ ref_fnv1a(name));
    return tl_mix64(tl_mix64(tl_mix64(k ^ (uint64_t)astep) ^ (uint64_t)j) ^ (uint64_t)pos);
}

/* Truncation policy: keep the response; drop prompt from the left; overlong response: its first max tokens. */
static void ref_trunc(const tl_sft_dataset *ds, int64_t e, int max, int64_t *start, int *len, int *prompt) {
    int64_t s = ds->offsets[e];
    int L = (int)(ds->offsets[e + 1] - s), p = ds->prompt_len[e];
    if (L > max) {
        if (L - p <= max) {
            s += L - max;
            p -= L - max;
        } else {
            s += p;
            p = 0;
        }
        L = max;
    }
    *start = s;
    *len = L;
    *prompt = p;
}

static int ref_targets(int len, int prompt) {
    int first = prompt > 1 ? prompt : 1;
    return len > first ? len - first : 0;
}

typedef struct {
    int64_t e, start;
    int a, j, len, prompt, nt, truncated;
} rseq;

typedef struct {
    int n;
    rseq *s;
    int64_t *tc;
    int *active, n_active;
    int64_t n_trunc;
} rstep;

/* The expected content of one step; advances the reference cursors. */
static void ref_step(const tl_sft_dataset *ds, const tl_adapter_map *m, const tl_batcher_opts *o, int64_t step,
                     tl_cursor *cur, rstep *r) {
    int A = m->n_adapters;
    char *sched = ref_schedule(A, o, step);
    r->n = 0;
    r->n_active = 0;
    r->n_trunc = 0;
    memset(r->tc, 0, (size_t)A * sizeof *r->tc);
    for (int a = 0; a < A; a++) {
        if (!sched[a] || m->n_examples[a] == 0) continue;
        int64_t n = m->n_examples[a];
        int64_t *perm = xmalloc((size_t)n * sizeof *perm);
        for (int j = 0; j < o->examples_per_adapter; j++) {
            rseq *q = &r->s[r->n++];
            q->e = ref_draw(m, o, a, cur, perm);
            q->a = a;
            q->j = j;
            ref_trunc(ds, q->e, o->max_seq_len, &q->start, &q->len, &q->prompt);
            q->truncated = ds->offsets[q->e + 1] - ds->offsets[q->e] > o->max_seq_len;
            r->n_trunc += q->truncated;
            q->nt = ref_targets(q->len, q->prompt);
            r->tc[a] += q->nt;
        }
        free(perm);
        if (r->tc[a] > 0) r->active[r->n_active++] = a;
    }
    free(sched);
}

static void rstep_alloc(rstep *r, int A, int epa) {
    r->s = xmalloc((size_t)A * (size_t)epa * sizeof *r->s);
    r->tc = xmalloc((size_t)A * sizeof *r->tc);
    r->active = xmalloc((size_t)A * sizeof *r->active);
}
static void rstep_free(rstep *r) {
    free(r->s);
    free(r->tc);
    free(r->active);
}

/* Compares a step batch field by field with the reference (adapter-aligned packing of the trained sequences). */
static void compare_step(const tl_sft_dataset *ds, const tl_adapter_map *m, const tl_batcher_opts *o,
                         const int64_t *asteps, const rstep *r, const tl_step_batch *sb, const char *label) {
    int A = m->n_adapters;
    CHECK(sb->n_active == r->n_active, "%s: n_active %d != %d", label, sb->n_active, r->n_active);
    for (int i = 0; i < r->n_active && i < sb->n_active; i++)
        CHECK(sb->active[i] == r->active[i], "%s: active[%d] %d != %d", label, i, sb->active[i], r->active[i]);
    for (int a = 0; a < A; a++)
        CHECK(sb->target_count[a] == r->tc[a], "%s: target_count[%d] %lld != %lld", label, a,
              (long long)sb->target_count[a], (long long)r->tc[a]);
    CHECK(sb->n_truncated == r->n_trunc, "%s: n_truncated %lld != %lld", label, (long long)sb->n_truncated,
          (long long)r->n_trunc);
    int mbi = -1, fill = o->micro_batch_tokens + 1, seq_in_mb = 0, seg_in_mb = 0, maxlen = 0;
    int64_t total = 0;
    int chunk_end = 0; /* adapter-aligned packing: chunks of one adapter's trained sequences, placed whole */
    for (int i = 0; i <= r->n; i++) {
        const rseq *q = i < r->n ? &r->s[i] : NULL;
        if (q && q->nt == 0) continue;
        int close = !q;
        if (q && i >= chunk_end) {
            int chunk = 0, j = i;
            for (; j < r->n && r->s[j].a == q->a; j++) {
                if (r->s[j].nt == 0) continue;
                if (chunk + r->s[j].len > o->micro_batch_tokens) break;
                chunk += r->s[j].len;
            }
            chunk_end = j;
            close = fill + chunk > o->micro_batch_tokens;
        }
        if (close && mbi >= 0 && mbi < sb->n_mb) {
            const tl_host_mb *mb = &sb->mb[mbi];
            CHECK(mb->n_tok == fill, "%s: mb %d n_tok %d != %d", label, mbi, mb->n_tok, fill);
            CHECK(mb->n_seq == seq_in_mb, "%s: mb %d n_seq %d != %d", label, mbi, mb->n_seq, seq_in_mb);
            CHECK(mb->n_seg == seg_in_mb, "%s: mb %d n_seg %d != %d", label, mbi, mb->n_seg, seg_in_mb);
            CHECK(mb->max_seqlen == maxlen, "%s: mb %d max_seqlen %d != %d", label, mbi, mb->max_seqlen, maxlen);
            if (mb->n_seg == seg_in_mb) CHECK(mb->segs[seg_in_mb - 1].row1 == fill, "%s: last segment end", label);
        }
        if (!q) break;
        if (close) {
            mbi++;
            fill = seq_in_mb = seg_in_mb = maxlen = 0;
            if (mbi >= sb->n_mb) {
                CHECK(0, "%s: too few micro-batches (%d)", label, sb->n_mb);
                return;
            }
            CHECK(sb->mb[mbi].cu_seqlens[0] == 0, "%s: cu_seqlens[0]", label);
        }
        const tl_host_mb *mb = &sb->mb[mbi];
        if (seq_in_mb >= mb->n_seq) {
            CHECK(0, "%s: mb %d has too few sequences", label, mbi);
            return;
        }
        CHECK(mb->example[seq_in_mb] == q->e, "%s: mb %d seq %d example %lld != %lld", label, mbi, seq_in_mb,
              (long long)mb->example[seq_in_mb], (long long)q->e);
        CHECK(mb->cu_seqlens[seq_in_mb + 1] == fill + q->len, "%s: cu_seqlens", label);
        /* a new segment starts where the adapter changes */
        if (fill == 0 || mb->adapter[fill - 1] != q->a) {
            if (seg_in_mb < mb->n_seg) {
                CHECK(mb->segs[seg_in_mb].row0 == fill && mb->segs[seg_in_mb].slot == q->a,
                      "%s: mb %d segment %d (row0 %d slot %d) != (%d, %d)", label, mbi, seg_in_mb,
                      mb->segs[seg_in_mb].row0, mb->segs[seg_in_mb].slot, fill, q->a);
                if (seg_in_mb > 0) CHECK(mb->segs[seg_in_mb - 1].row1 == fill, "%s: segment end", label);
            }
            seg_in_mb++;
        }
        float w = (float)(1.0 / (double)r->tc[q->a]);
        for (int p = 0; p < q->len; p++) {
            int row = fill + p, jt = p + 1;
            int trained = jt < q->len && jt >= (q->prompt > 1 ? q->prompt : 1);
            int32_t tgt = trained ? ds->tokens[q->start + jt] : -1;
            CHECK(mb->tokens[row] == ds->tokens[q->start + p], "%s: token row %d", label, row);
            CHECK(mb->pos[row] == p, "%s: pos row %d = %d, expected %d", label, row, mb->pos[row], p);
            CHECK(mb->targets[row] == tgt, "%s: target row %d = %d, expected %d", label, row, mb->targets[row], tgt);
            CHECK(mb->weight[row] == (trained ? w : 0.0f), "%s: weight row %d = %g", label, row, mb->weight[row]);
            CHECK(mb->adapter[row] == q->a, "%s: adapter row %d", label, row);
            uint64_t rs = ref_row_seed(o->seed, m->names[q->a], asteps ? asteps[q->a] : 0, q->j, p);
            CHECK(mb->row_seed[row] == rs, "%s: row_seed row %d", label, row);
        }
        fill += q->len;
        total += q->len;
        seq_in_mb++;
        if (q->len > maxlen) maxlen = q->len;
    }
    CHECK(sb->n_mb == mbi + 1, "%s: n_mb %d != %d", label, sb->n_mb, mbi + 1);
    CHECK(sb->n_tokens == total, "%s: n_tokens %lld != %lld", label, (long long)sb->n_tokens, (long long)total);
}

/* ------------------------------------------------------------------------------------------------------------
 * Properties that do not depend on the reference model */

static void check_invariants(const tl_sft_dataset *ds, const tl_adapter_map *m, const tl_batcher_opts *o,
                             const tl_step_batch *sb, const char *label) {
    int A = m->n_adapters;
    double *wsum = calloc((size_t)A, sizeof *wsum);
    int64_t *cnt = calloc((size_t)A, sizeof *cnt);
    int last_adapter = -1;
    int64_t total = 0;
    for (int mi = 0; mi < sb->n_mb; mi++) {
        const tl_host_mb *mb = &sb->mb[mi];
        CHECK(mb->n_tok > 0 && mb->n_tok <= o->micro_batch_tokens, "%s: mb %d has %d tokens (limit %d)", label, mi,
              mb->n_tok, o->micro_batch_tokens);
        total += mb->n_tok;
        CHECK(mb->cu_seqlens[0] == 0 && mb->cu_seqlens[mb->n_seq] == mb->n_tok, "%s: mb %d cu_seqlens ends", label,
              mi);
        int maxlen = 0;
        for (int s = 0; s < mb->n_seq; s++) {
            int r0 = mb->cu_seqlens[s], r1 = mb->cu_seqlens[s + 1], len = r1 - r0;
            CHECK(len >= 2, "%s: mb %d seq %d length %d", label, mi, s, len);
            if (len > maxlen) maxlen = len;
            /* the sequence is one whole truncated example */
            int64_t st;
            int tl, tp;
            ref_trunc(ds, mb->example[s], o->max_seq_len, &st, &tl, &tp);
            CHECK(tl == len, "%s: mb %d seq %d length %d, example %lld truncates to %d", label, mi, s, len,
                  (long long)mb->example[s], tl);
            if (tl != len) continue;
            CHECK(m->user_adapter[ds->user[mb->example[s]]] == mb->adapter[r0], "%s: example owner", label);
            for (int r = r0; r < r1; r++) {
                CHECK(mb->pos[r] == r - r0 && mb->tokens[r] == ds->tokens[st + r - r0], "%s: mb %d row %d", label,
                      mi, r);
                CHECK(mb->adapter[r] == mb->adapter[r0], "%s: one adapter per sequence", label);
                CHECK((mb->targets[r] >= 0) == (mb->weight[r] > 0), "%s: weight iff target (row %d)", label, r);
                if (mb->targets[r] >= 0) {
                    wsum[mb->adapter[r]] += mb->weight[r];
                    cnt[mb->adapter[r]]++;
                }
            }
            CHECK(mb->targets[r1 - 1] == -1, "%s: last row of a sequence has no target", label);
        }
        CHECK(mb->max_seqlen == maxlen, "%s: mb %d max_seqlen", label, mi);
        /* segments: contiguous, covering, one adapter each, adapters ascending */
        CHECK(mb->n_seg >= 1 && mb->segs[0].row0 == 0 && mb->segs[mb->n_seg - 1].row1 == mb->n_tok,
              "%s: mb %d segments do not cover", label, mi);
        for (int g = 0; g < mb->n_seg; g++) {
            const tl_seg *sg = &mb->segs[g];
            CHECK(sg->row0 < sg->row1, "%s: empty segment", label);
            if (g > 0) CHECK(sg->row0 == mb->segs[g - 1].row1, "%s: segments not contiguous", label);
            for (int r = sg->row0; r < sg->row1; r++)
                CHECK(mb->adapter[r] == sg->slot, "%s: row %d adapter %d in segment of slot %d", label, r,
                      mb->adapter[r], sg->slot);
            CHECK(sg->slot > last_adapter || (g == 0 && sg->slot == last_adapter),
                  "%s: adapter order not ascending (mb %d seg %d)", label, mi, g);
            last_adapter = sg->slot;
        }
    }
    CHECK(total == sb->n_tokens, "%s: n_tokens", label);
    for (int a = 0; a < A; a++) {
        CHECK(cnt[a] == sb->target_count[a], "%s: adapter %d target_count %lld, rows %lld", label, a,
              (long long)sb->target_count[a], (long long)cnt[a]);
        if (cnt[a] > 0) CHECK(fabs(wsum[a] - 1.0) < 1e-5, "%s: adapter %d weights sum to %.9f", label, a, wsum[a]);
    }
    int na = 0;
    for (int a = 0; a < A; a++)
        if (cnt[a] > 0) {
            CHECK(na < sb->n_active && sb->active[na] == a, "%s: active list", label);
            na++;
        }
    CHECK(na == sb->n_active, "%s: n_active %d, expected %d", label, sb->n_active, na);
    free(wsum);
    free(cnt);
}

/* ------------------------------------------------------------------------------------------------------------
 * Tests */


/* Reference model vs batcher over many steps and random option sets (also covers epochs crossing). */
static void test_reference(void) {
    for (int rep = 0; rep < 12; rep++) {
        tl_sft_dataset ds;
        int U = rnd_int(1, 10);
        ds_random(&ds, U, k_names, NULL, rnd_int(1, 60), 0, 24);
        tl_adapter_map m;
        REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
        tl_batcher_opts o = {.examples_per_adapter = rnd_int(1, 5),
                             .adapters_per_step = rnd_int(0, U + 1),
                             .micro_batch_tokens = rnd_int(16, 64),
                             .max_seq_len = 0,
                             .seed = rnd()};
        o.max_seq_len = rnd_int(2, o.micro_batch_tokens < 20 ? o.micro_batch_tokens : 20);
        tl_batcher *b;
        REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
        tl_cursor *cur = calloc((size_t)m.n_adapters, sizeof *cur);
        int64_t *asteps = calloc((size_t)m.n_adapters, sizeof *asteps);
        rstep r;
        rstep_alloc(&r, m.n_adapters, o.examples_per_adapter);
        for (int64_t t = 0; t < 15; t++) {
            if (t % 4 == 3) { /* the trainer's per-adapter step counts feed the row seeds */
                for (int a = 0; a < m.n_adapters; a++) asteps[a] = rnd_int(0, 1000);
                tl_batcher_set_adapter_steps(b, asteps);
            }
            /* the peek of this step and the next draws nothing: the comparisons with the reference below hold */
            int32_t pk[16], pk1[16];
            int np = tl_batcher_peek(b, t, pk, 16);
            (void)tl_batcher_peek(b, t + 1, pk1, 16);
            tl_step_batch *sb;
            REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
            ref_step(&ds, &m, &o, t, cur, &r);
            char label[96];
            snprintf(label, sizeof label, "reference rep %d step %lld", rep, (long long)t);
            { /* the peek is the step's window (adapters (t K + i) mod A, i < K), ascending, and holds `active` */
                int A = m.n_adapters;
                int K = o.adapters_per_step == 0 || o.adapters_per_step >= A ? A : o.adapters_per_step;
                int inwin[16] = {0}, nwin = 0;
                for (int i = 0; i < K; i++) inwin[(t * K + i) % A] = 1;
                for (int a = 0; a < A; a++) nwin += inwin[a];
                CHECK(np == nwin, "%s: peek of %d adapters, the window has %d", label, np, nwin);
                for (int i = 0; i < np; i++)
                    CHECK(inwin[pk[i]] && (i == 0 || pk[i] > pk[i - 1]), "%s: peek entry %d (adapter %d)", label, i,
                          pk[i]);
                for (int i = 0; i < sb->n_active; i++) {
                    int found = 0;
                    for (int j = 0; j < np; j++) found |= pk[j] == sb->active[i];
                    CHECK(found, "%s: active adapter %d not in the peek", label, sb->active[i]);
                }
            }
            compare_step(&ds, &m, &o, asteps, &r, sb, label);
            check_invariants(&ds, &m, &o, sb, label);
            fx_check_cursors(label, tl_batcher_cursors(b), cur, m.n_adapters);
        }
        rstep_free(&r);
        free(cur);
        free(asteps);
        tl_batcher_free(b);
        tl_adapter_map_free(&m);
        tl_sft_free(&ds);
    }
}

/* Collects one adapter's sequences (tokens, targets, weights, row seeds) of a step as a flat signature. */
static void adapter_signature(const tl_step_batch *sb, int a, sig *s) {
    for (int mi = 0; mi < sb->n_mb; mi++) {
        const tl_host_mb *mb = &sb->mb[mi];
        for (int q = 0; q < mb->n_seq; q++) {
            int r0 = mb->cu_seqlens[q];
            if (mb->adapter[r0] != a) continue;
            sig_add(s, -1000 - (mb->cu_seqlens[q + 1] - r0));
            for (int r = r0; r < mb->cu_seqlens[q + 1]; r++) {
                sig_add(s, mb->tokens[r]);
                sig_add(s, mb->targets[r]);
                sig_add(s, (int64_t)(mb->weight[r] * 1e9));
                sig_add(s, (int64_t)(mb->row_seed[r] >> 1));
            }
        }
    }
}

/* Alice's examples are the same (same relative order) in a dataset of her own and one shared with others. */
static void test_isolation(void) {
    int na = 9;
    int32_t alen[9], aprompt[9], atok[9 * 30];
    int at = 0;
    for (int i = 0; i < na; i++) {
        alen[i] = rnd_int(2, 30);
        aprompt[i] = rnd_int(0, alen[i] - 1);
        for (int t = 0; t < alen[i]; t++) atok[at++] = rnd_int(0, 999);
    }
    tl_sft_dataset solo, mixed;
    {
        int32_t user[9] = {0};
        const char *nm[] = {"alice"};
        ds_build(&solo, 1, nm, NULL, na, user, alen, aprompt, atok);
    }
    {
        /* bob and carol's examples interleave with alice's; alice is user 1 here */
        const char *nm[] = {"bob", "alice", "carol"};
        int32_t user[64], len[64], prompt[64], tok[64 * 30];
        int n = 0, t = 0, ai = 0, ao = 0;
        while (ai < na) {
            if (rnd_int(0, 2) == 0) {
                user[n] = 1;
                len[n] = alen[ai];
                prompt[n] = aprompt[ai];
                memcpy(tok + t, atok + ao, (size_t)alen[ai] * 4);
                ao += alen[ai];
                ai++;
            } else {
                user[n] = rnd_int(0, 1) * 2;
                len[n] = rnd_int(2, 30);
                prompt[n] = rnd_int(0, len[n] - 1);
                for (int k = 0; k < len[n]; k++) tok[t + k] = rnd_int(0, 999);
            }
            t += len[n];
            n++;
            if (n == 38) break;
        }
        for (; ai < na; ai++, n++) {
            user[n] = 1;
            len[n] = alen[ai];
            prompt[n] = aprompt[ai];
            memcpy(tok + t, atok + ao, (size_t)alen[ai] * 4);
            ao += alen[ai];
            t += len[n];
        }
        ds_build(&mixed, 3, nm, NULL, n, user, len, prompt, tok);
    }
    tl_adapter_map ms, mm;
    REQUIRE_OK(tl_adapter_map_build(&solo, TL_KEY_USER, NULL, 0, &ms, err));
    REQUIRE_OK(tl_adapter_map_build(&mixed, TL_KEY_USER, NULL, 0, &mm, err));
    int a_mixed = mm.user_adapter[1];
    CHECK(a_mixed >= 0 && strcmp(mm.names[a_mixed], "alice") == 0, "alice's adapter in the mixed map");
    tl_batcher_opts o = {.examples_per_adapter = 4, .adapters_per_step = 0, .micro_batch_tokens = 40,
                         .max_seq_len = 24, .seed = rnd()};
    tl_batcher *bs, *bm;
    REQUIRE_OK(tl_batcher_init(&solo, &ms, &o, &bs, err));
    REQUIRE_OK(tl_batcher_init(&mixed, &mm, &o, &bm, err));
    /* The trainer sets each adapter's own step; alice's is the same in both runs. */
    int64_t ss[1] = {0}, sm[3] = {0, 0, 0};
    sig *s1 = malloc(sizeof *s1), *s2 = malloc(sizeof *s2);
    for (int64_t t = 0; t < 8; t++) {
        ss[0] = sm[a_mixed] = t * 3 + 1;
        sm[(a_mixed + 1) % 3] = 777 + t;
        tl_batcher_set_adapter_steps(bs, ss);
        tl_batcher_set_adapter_steps(bm, sm);
        tl_step_batch *b1, *b2;
        REQUIRE_OK(tl_batcher_next(bs, t, &b1, err));
        s1->n = 0;
        adapter_signature(b1, 0, s1);
        REQUIRE_OK(tl_batcher_next(bm, t, &b2, err));
        s2->n = 0;
        adapter_signature(b2, a_mixed, s2);
        CHECK(s1->n > 0 && sig_equal(s1, s2),
              "isolation: alice's step %lld differs alone (%d values) and mixed (%d values)", (long long)t, s1->n,
              s2->n);
        CHECK(tl_batcher_cursors(bs)[0].epoch == tl_batcher_cursors(bm)[a_mixed].epoch &&
                  tl_batcher_cursors(bs)[0].pos == tl_batcher_cursors(bm)[a_mixed].pos,
              "isolation: cursors");
    }
    /* and the sequences are the same examples: compare dataset tokens through the examples' content */
    free(s1);
    free(s2);
    tl_batcher_free(bs);
    tl_batcher_free(bm);
    tl_adapter_map_free(&ms);
    tl_adapter_map_free(&mm);
    tl_sft_free(&solo);
    tl_sft_free(&mixed);
}

/* Finds the sequence of example e in a step; returns its micro-batch and first row, or NULL. */
static const tl_host_mb *find_seq(const tl_step_batch *sb, int64_t e, int *row0, int *len) {
    for (int mi = 0; mi < sb->n_mb; mi++)
        for (int q = 0; q < sb->mb[mi].n_seq; q++)
            if (sb->mb[mi].example[q] == e) {
                *row0 = sb->mb[mi].cu_seqlens[q];
                *len = sb->mb[mi].cu_seqlens[q + 1] - *row0;
                return &sb->mb[mi];
            }
    return NULL;
}

/* Hand-made examples with exact expected rows (truncation and targets). */
static void test_truncation_and_targets(void) {
    /* tokens are 100*example + position, so every kept token says where it came from */
    int32_t len[5] = {10, 12, 5, 10, 5}, prompt[5] = {4, 3, 2, 0, 5}, user[5] = {0, 0, 0, 0, 0};
    int32_t tok[42];
    int t = 0;
    for (int e = 0; e < 5; e++)
        for (int p = 0; p < len[e]; p++) tok[t++] = 100 * e + p;
    tl_sft_dataset ds;
    const char *nm[] = {"solo"};
    ds_build(&ds, 1, nm, NULL, 5, user, len, prompt, tok);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    tl_batcher_opts o = {.examples_per_adapter = 5, .adapters_per_step = 0, .micro_batch_tokens = 64,
                         .max_seq_len = 8, .seed = 7};
    tl_batcher *b;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
    tl_step_batch *sb;
    REQUIRE_OK(tl_batcher_next(b, 0, &sb, err));
    /* 0: len 10 prompt 4 -> drop 2 prompt tokens: [2..10), prompt 2
     * 1: len 12 prompt 3, response 9 > 8 -> drop the prompt, first 8 response tokens [3..11), prompt 0
     * 2: len 5 prompt 2: unchanged
     * 3: len 10 prompt 0 -> first 8 tokens, prompt 0
     * 4: len 5 prompt 5: all prompt, no target: not packed */
    static const int first_tok[4] = {2, 3, 0, 0}, exp_len[4] = {8, 8, 5, 8}, exp_prompt[4] = {2, 0, 2, 0};
    CHECK(sb->n_truncated == 3, "truncation: n_truncated %lld, expected 3", (long long)sb->n_truncated);
    int64_t count = 0;
    for (int e = 0; e < 4; e++) count += exp_len[e] - (exp_prompt[e] > 1 ? exp_prompt[e] : 1);
    CHECK(sb->target_count[0] == count, "targets: count %lld, expected %lld", (long long)sb->target_count[0],
          (long long)count);
    for (int e = 0; e < 5; e++) {
        int r0, L;
        const tl_host_mb *mb = find_seq(sb, e, &r0, &L);
        if (e == 4) {
            CHECK(mb == NULL, "an example without targets must not be packed");
            continue;
        }
        CHECK(mb != NULL, "example %d missing", e);
        if (!mb) continue;
        CHECK(L == exp_len[e], "example %d length %d, expected %d", e, L, exp_len[e]);
        for (int p = 0; p < L && L == exp_len[e]; p++) {
            int32_t want_tok = 100 * e + first_tok[e] + p;
            int j = p + 1;
            int trained = j < L && j >= (exp_prompt[e] > 1 ? exp_prompt[e] : 1);
            int32_t want_tgt = trained ? want_tok + 1 : -1;
            CHECK(mb->tokens[r0 + p] == want_tok, "example %d row %d token %d, expected %d", e, p, mb->tokens[r0 + p],
                  want_tok);
            CHECK(mb->targets[r0 + p] == want_tgt, "example %d row %d target %d, expected %d", e, p,
                  mb->targets[r0 + p], want_tgt);
            CHECK(mb->weight[r0 + p] == (trained ? (float)(1.0 / (double)count) : 0.0f), "example %d row %d weight",
                  e, p);
        }
    }
    /* Explicit rows of example 2 (tokens 200..204, prompt 2): targets -1, 202, 203, 204, -1. */
    int r0, L;
    const tl_host_mb *mb = find_seq(sb, 2, &r0, &L);
    static const int32_t want2[5] = {-1, 202, 203, 204, -1};
    for (int p = 0; mb && p < 5; p++) CHECK(mb->targets[r0 + p] == want2[p], "example 2 explicit target %d", p);
    /* Example 3 (prompt 0): row 0 predicts token 1. */
    mb = find_seq(sb, 3, &r0, &L);
    CHECK(mb && mb->targets[r0] == 301, "prompt 0: row 0 must target token 1");
    tl_batcher_free(b);
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}

static void test_round_robin(void) {
    tl_sft_dataset ds;
    ds_random(&ds, 5, k_names, NULL, 40, 3, 10);
    /* make sure every user has examples */
    for (int64_t i = 0; i < 5; i++) ds.user[i] = (int32_t)i;
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    CHECK(m.n_adapters == 5, "round robin: 5 adapters");
    /* every example has targets (length >= 3, prompt <= len): make prompts short */
    for (int64_t i = 0; i < ds.n_examples; i++) ds.prompt_len[i] = 1;
    static const int expect[4][2] = {{0, 1}, {2, 3}, {0, 4}, {1, 2}};
    tl_batcher_opts o = {.examples_per_adapter = 1, .adapters_per_step = 2, .micro_batch_tokens = 32,
                         .max_seq_len = 16, .seed = 3};
    tl_batcher *b;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
    for (int t = 0; t < 4; t++) {
        tl_cursor before[5];
        memcpy(before, tl_batcher_cursors(b), sizeof before);
        tl_step_batch *sb;
        REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
        CHECK(sb->n_active == 2 && sb->active[0] == expect[t][0] && sb->active[1] == expect[t][1],
              "round robin step %d: active {%d, %d}, expected {%d, %d}", t, sb->n_active > 0 ? sb->active[0] : -1,
              sb->n_active > 1 ? sb->active[1] : -1, expect[t][0], expect[t][1]);
        for (int a = 0; a < 5; a++) {
            int moved = tl_batcher_cursors(b)[a].pos != before[a].pos || tl_batcher_cursors(b)[a].epoch != before[a].epoch;
            int act = a == expect[t][0] || a == expect[t][1];
            CHECK(moved == act, "round robin step %d: adapter %d cursor moved %d, active %d", t, a, moved, act);
        }
    }
    tl_batcher_free(b);
    /* 0 and >= A both mean all adapters */
    int ks[2] = {0, 7};
    for (int i = 0; i < 2; i++) {
        o.adapters_per_step = ks[i];
        REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
        tl_step_batch *sb;
        REQUIRE_OK(tl_batcher_next(b, 3, &sb, err));
        CHECK(sb->n_active == 5, "adapters_per_step %d: %d active, expected 5", ks[i], sb->n_active);
        tl_batcher_free(b);
    }
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}


/* One rank's share of the adapters (user_shard): a batcher over a map of just those adapters, told their global
 * indices, schedules and fills each of them exactly as the batcher over the whole pool does. */
static void test_global_schedule(void) {
    tl_sft_dataset ds;
    ds_random(&ds, 7, k_names, NULL, 120, 3, 14);
    for (int64_t i = 0; i < 7; i++) ds.user[i] = (int32_t)i;
    tl_adapter_map all, part;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &all, err));
    int32_t gidx[7];
    char *names[7];
    int nl = 0;
    for (int g = 0; g < all.n_adapters; g++)
        if (g % 3 != 1) gidx[nl] = g, names[nl++] = all.names[g]; /* adapters 0, 2, 3, 5, 6 */
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, names, nl, &part, err));
    int aps_cases[3] = {3, 0, 4};
    sig *s1 = malloc(sizeof *s1), *s2 = malloc(sizeof *s2);
    for (int c = 0; c < 3; c++) {
        tl_batcher_opts o = {.examples_per_adapter = 2, .adapters_per_step = aps_cases[c], .micro_batch_tokens = 48,
                             .max_seq_len = 16, .seed = rnd()};
        tl_batcher *bw, *bp;
        REQUIRE_OK(tl_batcher_init(&ds, &all, &o, &bw, err));
        REQUIRE_OK(tl_batcher_init(&ds, &part, &o, &bp, err));
        REQUIRE_OK(tl_batcher_set_global(bp, gidx, all.n_adapters, err));
        int64_t stw[7] = {0}, stp[7] = {0};
        for (int64_t t = 0; t < 9; t++) {
            tl_batcher_set_adapter_steps(bw, stw);
            tl_batcher_set_adapter_steps(bp, stp);
            tl_step_batch *bwb, *bpb;
            REQUIRE_OK(tl_batcher_next(bw, t, &bwb, err));
            int active_w[7] = {0};
            for (int i = 0; i < bwb->n_active; i++) active_w[bwb->active[i]] = 1;
            int nexp = 0;
            for (int a = 0; a < nl; a++) nexp += active_w[gidx[a]];
            int32_t pk[7];
            int np = tl_batcher_peek(bp, t, pk, 7);
            REQUIRE_OK(tl_batcher_next(bp, t, &bpb, err));
            for (int i = 0; i < bpb->n_active; i++) {
                int found = 0;
                for (int j = 0; j < np; j++) found |= pk[j] == bpb->active[i];
                CHECK(found, "global schedule step %lld: active adapter %d not in the peek", (long long)t,
                      bpb->active[i]);
            }
            CHECK(bpb->n_active == nexp, "global schedule (aps %d) step %lld: %d active, expected %d", aps_cases[c],
                  (long long)t, bpb->n_active, nexp);
            for (int i = 0; i < bpb->n_active; i++) {
                int a = bpb->active[i], g = gidx[a];
                CHECK(active_w[g], "global schedule step %lld: adapter %d active here, not in the whole pool",
                      (long long)t, g);
                s1->n = s2->n = 0;
                adapter_signature(bwb, g, s1);
                adapter_signature(bpb, a, s2);
                CHECK(s1->n > 0 && sig_equal(s1, s2),
                      "global schedule step %lld: adapter %d's sequences differ", (long long)t, g);
                CHECK(bwb->target_count[g] == bpb->target_count[a], "target counts of adapter %d", g);
                stp[a]++, stw[g]++;
            }
            for (int i = 0; i < bwb->n_active; i++) {
                int g = bwb->active[i], mine = 0;
                for (int a = 0; a < nl; a++) mine |= gidx[a] == g;
                if (!mine) stw[g]++;
            }
            for (int a = 0; a < nl; a++)
                CHECK(tl_batcher_cursors(bp)[a].pos == tl_batcher_cursors(bw)[gidx[a]].pos &&
                          tl_batcher_cursors(bp)[a].epoch == tl_batcher_cursors(bw)[gidx[a]].epoch,
                      "global schedule: cursor of adapter %d", gidx[a]);
        }
        tl_batcher_free(bw);
        tl_batcher_free(bp);
    }
    /* a global index out of order is refused */
    tl_batcher_opts o = {.examples_per_adapter = 1, .micro_batch_tokens = 48, .max_seq_len = 16};
    tl_batcher *bp;
    REQUIRE_OK(tl_batcher_init(&ds, &part, &o, &bp, err));
    int32_t bad[7] = {0, 3, 2, 5, 6};
    tl_error e = {0};
    CHECK(tl_batcher_set_global(bp, bad, 7, &e) == TL_ERR_RUNTIME && strstr(e.msg, "ascending"),
          "descending global indices accepted");
    int32_t out[7] = {0, 2, 3, 5, 7};
    CHECK(tl_batcher_set_global(bp, out, 7, &e) == TL_ERR_RUNTIME, "a global index past the pool accepted");
    tl_batcher_free(bp);
    free(s1);
    free(s2);
    tl_adapter_map_free(&all);
    tl_adapter_map_free(&part);
    tl_sft_free(&ds);
}

/* Copies what identifies a step's content, to compare two runs. */
static void step_signature(const tl_step_batch *sb, sig *s) {
    s->n = 0;
    sig_add(s, sb->n_mb);
    for (int mi = 0; mi < sb->n_mb; mi++) {
        const tl_host_mb *mb = &sb->mb[mi];
        sig_add(s, mb->n_tok);
        for (int q = 0; q < mb->n_seq; q++) sig_add(s, mb->example[q]);
        for (int r = 0; r < mb->n_tok; r++) sig_add(s, (int64_t)(mb->row_seed[r] >> 1) ^ mb->targets[r]);
    }
}

static void sft_step_sig(void *b, int64_t t, sig *out) {
    tl_step_batch *sb;
    REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
    step_signature(sb, out);
}
static tl_cursor *sft_cursors(void *b) { return tl_batcher_cursors(b); }
static const fx_batcher_ops k_sft_ops = {sft_step_sig, sft_cursors};

static void test_epochs_and_cursors(void) {
    tl_sft_dataset ds;
    ds_random(&ds, 3, k_names, NULL, 30, 2, 12);
    for (int64_t i = 0; i < ds.n_examples; i++) {
        ds.user[i] = (int32_t)(i % 3);
        ds.prompt_len[i] = 0;
    }
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    tl_batcher_opts o = {.examples_per_adapter = 3, .adapters_per_step = 0, .micro_batch_tokens = 24,
                         .max_seq_len = 12, .seed = rnd()};
    tl_batcher *b;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
    /* adapter 0 has 10 examples: 10 steps of 3 = 3 full epochs; each epoch is a permutation, and the epochs'
     * orders are not all the same */
    int64_t order[30];
    int n = 0;
    for (int t = 0; t < 10; t++) {
        tl_step_batch *sb;
        REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
        for (int mi = 0; mi < sb->n_mb; mi++)
            for (int q = 0; q < sb->mb[mi].n_seq; q++)
                if (sb->mb[mi].adapter[sb->mb[mi].cu_seqlens[q]] == 0 && n < 30) order[n++] = sb->mb[mi].example[q];
    }
    CHECK(n == 30, "epochs: adapter 0 took %d examples, expected 30", n);
    CHECK(tl_batcher_cursors(b)[0].epoch == 3 && tl_batcher_cursors(b)[0].pos == 0, "epochs: cursor (%lld, %lld), "
          "expected (3, 0)", (long long)tl_batcher_cursors(b)[0].epoch, (long long)tl_batcher_cursors(b)[0].pos);
    for (int ep = 0; ep < 3; ep++) {
        int seen[10] = {0};
        for (int i = 0; i < 10; i++) {
            int64_t e = order[ep * 10 + i];
            CHECK(e % 3 == 0 && e / 3 < 10, "epochs: foreign example %lld", (long long)e);
            if (e % 3 == 0 && e / 3 < 10) seen[e / 3]++;
        }
        for (int i = 0; i < 10; i++) CHECK(seen[i] == 1, "epoch %d: example %d seen %d times", ep, 3 * i, seen[i]);
    }
    CHECK(memcmp(order, order + 10, 80) != 0 || memcmp(order + 10, order + 20, 80) != 0,
          "epochs: the order must be reshuffled each epoch");
    tl_batcher_free(b);

    /* Save cursors after 3 steps, run 5 more, restore (same batcher, and a fresh one as on resume): same batches */
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
    tl_step_batch *sb;
    for (int t = 0; t < 3; t++) REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
    sig *runs = malloc(5 * sizeof *runs), *again = malloc(sizeof *again);
    tl_batcher *fresh;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &fresh, err));
    fx_check_cursor_restore(&k_sft_ops, b, fresh, 3, 3, 5, runs);
    /* a cursor out of range is an input error, not a crash */
    tl_batcher_cursors(fresh)[1].pos = 99;
    tl_error e = {0};
    CHECK(tl_batcher_next(fresh, 8, &sb, &e) == TL_ERR_INPUT && strstr(e.msg, "bob"), "bad cursor: %s", e.msg);
    tl_batcher_cursors(fresh)[1].pos = 0;
    tl_batcher_cursors(fresh)[1].epoch = -1;
    CHECK(tl_batcher_next(fresh, 8, &sb, &e) == TL_ERR_INPUT, "negative epoch must be rejected");
    /* a different seed gives a different order */
    tl_batcher_opts o2 = o;
    o2.seed = o.seed + 1;
    tl_batcher *other;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o2, &other, err));
    int differs = 0;
    for (int t = 0; t < 3 && !differs; t++) {
        REQUIRE_OK(tl_batcher_next(other, t, &sb, err));
        step_signature(sb, again);
        differs = !sig_equal(again, &runs[0]);
    }
    CHECK(differs, "seed must change the batches");
    free(runs);
    free(again);
    tl_batcher_free(other);
    tl_batcher_free(fresh);
    tl_batcher_free(b);
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}

static void test_eval(void) {
    tl_sft_dataset ds;
    ds_random(&ds, 6, k_names, NULL, 80, 0, 30);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    const int mbt = 48, msl = 20;
    int forces[3] = {-2, -1, 3};
    for (int fi = 0; fi < 3; fi++) {
        tl_eval_iter *it;
        REQUIRE_OK(tl_eval_iter_init(&ds, &m, mbt, msl, &it, err));
        int *seen = calloc((size_t)ds.n_examples, sizeof *seen);
        int64_t *order = malloc((size_t)ds.n_examples * sizeof *order);
        int n = 0, done = 0, calls = 0;
        while (!done && calls++ < 1000) {
            tl_host_mb *mb;
            REQUIRE_OK(tl_eval_iter_next(it, forces[fi], &mb, &done, err));
            if (done) {
                CHECK(mb == NULL, "eval: done must come with no micro-batch");
                break;
            }
            CHECK(mb && mb->n_tok > 0 && mb->n_tok <= mbt, "eval: micro-batch size %d", mb ? mb->n_tok : -1);
            if (!mb) break;
            for (int g = 0; g < mb->n_seg; g++) {
                int want = forces[fi] == -2 ? mb->adapter[mb->segs[g].row0] : forces[fi];
                CHECK(mb->segs[g].slot == want, "eval force %d: slot %d", forces[fi], mb->segs[g].slot);
                for (int r = mb->segs[g].row0; r < mb->segs[g].row1; r++)
                    CHECK(mb->adapter[r] == mb->adapter[mb->segs[g].row0], "eval: one adapter per segment");
            }
            for (int q = 0; q < mb->n_seq; q++) {
                int64_t e = mb->example[q];
                seen[e]++;
                order[n++] = e;
                int64_t st;
                int L, P;
                ref_trunc(&ds, e, msl, &st, &L, &P);
                int r0 = mb->cu_seqlens[q];
                CHECK(mb->cu_seqlens[q + 1] - r0 == L, "eval: example %lld length", (long long)e);
                for (int p = 0; p < L && mb->cu_seqlens[q + 1] - r0 == L; p++) {
                    int j = p + 1, tr = j < L && j >= (P > 1 ? P : 1);
                    CHECK(mb->tokens[r0 + p] == ds.tokens[st + p], "eval: token");
                    CHECK(mb->targets[r0 + p] == (tr ? ds.tokens[st + j] : -1), "eval: target");
                    CHECK(mb->weight[r0 + p] == (tr ? 1.0f : 0.0f), "eval: weight");
                    CHECK(mb->pos[r0 + p] == p, "eval: pos");
                    CHECK(mb->adapter[r0 + p] == m.user_adapter[ds.user[e]], "eval: adapter");
                }
            }
        }
        CHECK(done, "eval: never finished");
        /* order: adapters in map order, each adapter's examples in dataset order */
        int k = 0;
        for (int a = 0; a < m.n_adapters; a++)
            for (int64_t i = 0; i < m.n_examples[a]; i++) {
                int64_t e = m.examples[a][i];
                int64_t st;
                int L, P;
                ref_trunc(&ds, e, msl, &st, &L, &P);
                int want = ref_targets(L, P) > 0;
                CHECK(seen[e] == want, "eval: example %lld seen %d times, expected %d", (long long)e, seen[e], want);
                if (want) {
                    CHECK(k < n && order[k] == e, "eval: order at %d", k);
                    k++;
                }
            }
        CHECK(k == n, "eval: %d sequences, expected %d", n, k);
        /* after done it stays done */
        tl_host_mb *mb;
        REQUIRE_OK(tl_eval_iter_next(it, -2, &mb, &done, err));
        CHECK(done && mb == NULL, "eval: stays done");
        free(seen);
        free(order);
        tl_eval_iter_free(it);
    }
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}

static void test_map_keys(void) {
    /* users: u0 g2, u1 g1, u2 g2, u3 g3 (no examples), u4 g1 (no examples) */
    const char *nm[] = {"u0", "u1", "u2", "u3", "u4"};
    const char *gr[] = {"g2", "g1", "g2", "g3", "g1"};
    int32_t user[6] = {1, 0, 2, 1, 0, 2}, len[6] = {3, 3, 3, 3, 3, 3}, prompt[6] = {1, 1, 1, 1, 1, 1};
    int32_t tok[18];
    for (int i = 0; i < 18; i++) tok[i] = i;
    tl_sft_dataset ds;
    ds_build(&ds, 5, nm, gr, 6, user, len, prompt, tok);

    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    CHECK(m.n_adapters == 3 && m.n_empty == 2, "user key: %d adapters, %d empty", m.n_adapters, m.n_empty);
    CHECK(!strcmp(m.names[0], "u0") && !strcmp(m.names[1], "u1") && !strcmp(m.names[2], "u2"), "user key: names");
    CHECK(m.user_adapter[0] == 0 && m.user_adapter[1] == 1 && m.user_adapter[2] == 2 && m.user_adapter[3] == -1 &&
              m.user_adapter[4] == -1,
          "user key: user_adapter");
    CHECK(m.n_examples[0] == 2 && m.examples[0][0] == 1 && m.examples[0][1] == 4, "user key: u0's examples");
    CHECK(m.n_examples[1] == 2 && m.examples[1][0] == 0 && m.examples[1][1] == 3, "user key: u1's examples");
    tl_adapter_map_free(&m);

    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_GROUP, NULL, 0, &m, err));
    CHECK(m.n_adapters == 2 && m.n_empty == 1, "group key: %d adapters, %d empty", m.n_adapters, m.n_empty);
    CHECK(m.n_adapters == 2 && !strcmp(m.names[0], "g2") && !strcmp(m.names[1], "g1"), "group key: first-appearance order");
    CHECK(m.user_adapter[0] == 0 && m.user_adapter[1] == 1 && m.user_adapter[2] == 0 && m.user_adapter[3] == -1 &&
              m.user_adapter[4] == 1,
          "group key: user_adapter");
    static const int64_t g2[4] = {1, 2, 4, 5};
    CHECK(m.n_examples[0] == 4 && !memcmp(m.examples[0], g2, sizeof g2), "group key: g2 examples in dataset order");
    CHECK(m.n_examples[1] == 2 && m.examples[1][0] == 0 && m.examples[1][1] == 3, "group key: g1 examples");
    tl_adapter_map_free(&m);

    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_GLOBAL, NULL, 0, &m, err));
    CHECK(m.n_adapters == 1 && !strcmp(m.names[0], "global") && m.n_examples[0] == 6 && m.n_empty == 0,
          "global key");
    for (int i = 0; i < 6; i++) CHECK(m.examples[0][i] == i, "global key: dataset order");
    for (int u = 0; u < 5; u++) CHECK(m.user_adapter[u] == 0, "global key: user_adapter");
    tl_adapter_map_free(&m);

    /* a fixed pool: its order, empty names kept (counted), users outside it ignored */
    char *pool[] = {"u2", "nobody", "u0"};
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, pool, 3, &m, err));
    CHECK(m.n_adapters == 3 && !strcmp(m.names[0], "u2") && !strcmp(m.names[1], "nobody") &&
              !strcmp(m.names[2], "u0"),
          "fixed pool: names");
    CHECK(m.n_examples[0] == 2 && m.n_examples[1] == 0 && m.n_examples[2] == 2 && m.n_empty == 1,
          "fixed pool: counts");
    CHECK(m.user_adapter[0] == 2 && m.user_adapter[1] == -1 && m.user_adapter[2] == 0, "fixed pool: user_adapter");
    /* a batcher over a pool with an empty adapter skips it */
    tl_batcher_opts o = {.examples_per_adapter = 2, .adapters_per_step = 0, .micro_batch_tokens = 16,
                         .max_seq_len = 8, .seed = 1};
    tl_batcher *b;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
    tl_step_batch *sb;
    REQUIRE_OK(tl_batcher_next(b, 0, &sb, err));
    CHECK(sb->n_active == 2 && sb->active[0] == 0 && sb->active[1] == 2 && sb->target_count[1] == 0,
          "fixed pool: the empty adapter is not trained");
    check_invariants(&ds, &m, &o, sb, "fixed pool");
    tl_batcher_free(b);
    tl_adapter_map_free(&m);

    tl_error e = {0};
    char *dup[] = {"u0", "u0"};
    CHECK(tl_adapter_map_build(&ds, TL_KEY_USER, dup, 2, &m, &e) == TL_ERR_INPUT && strstr(e.msg, "u0"),
          "duplicate pool names: %s", e.msg);
    free(ds.user_groups[0]);
    free(ds.user_groups[1]);
    free(ds.user_groups[2]);
    free(ds.user_groups[3]);
    free(ds.user_groups[4]);
    free(ds.user_groups);
    ds.user_groups = NULL;
    CHECK(tl_adapter_map_build(&ds, TL_KEY_GROUP, NULL, 0, &m, &e) == TL_ERR_INPUT &&
              strstr(e.msg, "adapter.key") && strstr(e.msg, "mem.h5"),
          "group key without /users/group: %s", e.msg);
    tl_sft_free(&ds);
}

/* Examples with nothing to train on (length 0 or 1, or all prompt) are consumed but never packed. */
static void test_no_target_examples(void) {
    const char *nm[] = {"short", "ok"};
    int32_t user[6] = {0, 0, 0, 1, 1, 0}, len[6] = {0, 1, 4, 5, 6, 3}, prompt[6] = {0, 0, 4, 2, 0, 3};
    int32_t tok[19];
    for (int i = 0; i < 19; i++) tok[i] = i + 10;
    tl_sft_dataset ds;
    ds_build(&ds, 2, nm, NULL, 6, user, len, prompt, tok);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    tl_batcher_opts o = {.examples_per_adapter = 4, .adapters_per_step = 0, .micro_batch_tokens = 8,
                         .max_seq_len = 8, .seed = 5};
    tl_batcher *b;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
    for (int t = 0; t < 4; t++) {
        tl_step_batch *sb;
        REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
        CHECK(sb->n_active == 1 && sb->active[0] == 1 && sb->target_count[0] == 0,
              "no-target adapter must not be active (step %d)", t);
        check_invariants(&ds, &m, &o, sb, "no-target examples");
        CHECK(tl_batcher_cursors(b)[0].epoch == t + 1, "the no-target adapter still advances its stream");
    }
    tl_batcher_free(b);
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}

static void test_bad_options(void) {
    tl_sft_dataset ds;
    ds_random(&ds, 2, k_names, NULL, 5, 2, 5);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    tl_batcher_opts good = {.examples_per_adapter = 1, .adapters_per_step = 0, .micro_batch_tokens = 16,
                            .max_seq_len = 8, .seed = 1};
    struct {
        tl_batcher_opts o;
        const char *needle;
    } bad[4] = {{good, "examples_per_adapter"}, {good, "adapters_per_step"}, {good, "max_seq_len"},
                {good, "max_seq_len"}};
    bad[0].o.examples_per_adapter = 0;
    bad[1].o.adapters_per_step = -1;
    bad[2].o.max_seq_len = 32;
    bad[3].o.max_seq_len = 1;
    for (int i = 0; i < 4; i++) {
        tl_batcher *b = (tl_batcher *)&g_fail; /* must be reset to NULL */
        tl_error e = {0};
        CHECK(tl_batcher_init(&ds, &m, &bad[i].o, &b, &e) == TL_ERR_INPUT && strstr(e.msg, bad[i].needle) &&
                  b == NULL,
              "bad option %d: %s", i, e.msg);
    }
    tl_eval_iter *it;
    tl_error e = {0};
    CHECK(tl_eval_iter_init(&ds, &m, 8, 9, &it, &e) == TL_ERR_INPUT, "eval: max_seq_len > micro_batch_tokens");
    REQUIRE_OK(tl_eval_iter_init(&ds, &m, 8, 8, &it, err));
    tl_host_mb *mb;
    int done;
    CHECK(tl_eval_iter_next(it, -3, &mb, &done, &e) == TL_ERR_INPUT, "eval: force_slot -3");
    tl_eval_iter_free(it);
    tl_batcher *b;
    REQUIRE_OK(tl_batcher_init(&ds, &m, &good, &b, err));
    tl_step_batch *sb;
    CHECK(tl_batcher_next(b, -1, &sb, &e) == TL_ERR_INPUT, "negative step");
    tl_batcher_free(b);
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}

/* Many users, long run: capacity planning holds (no internal capacity error) under the worst packing. */
static void test_capacity_stress(void) {
    const char *const *np = fx_user_names(200);
    tl_sft_dataset ds;
    ds_random(&ds, 200, np, NULL, 3000, 0, 70);
    tl_adapter_map m;
    REQUIRE_OK(tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &m, err));
    for (int rep = 0; rep < 4; rep++) {
        tl_batcher_opts o = {.examples_per_adapter = rnd_int(1, 6), .adapters_per_step = rnd_int(0, 250),
                             .micro_batch_tokens = rnd_int(64, 300), .max_seq_len = 0, .seed = rnd()};
        o.max_seq_len = rnd_int(2, o.micro_batch_tokens);
        tl_batcher *b;
        REQUIRE_OK(tl_batcher_init(&ds, &m, &o, &b, err));
        for (int64_t t = 0; t < 25; t++) {
            tl_step_batch *sb;
            REQUIRE_OK(tl_batcher_next(b, t, &sb, err));
            check_invariants(&ds, &m, &o, sb, "stress");
        }
        tl_batcher_free(b);
    }
    tl_adapter_map_free(&m);
    tl_sft_free(&ds);
}

int main(void) {
    fx_seed_rng(0xabcdefULL, "test_batcher");
    test_reference();
    test_isolation();
    test_truncation_and_targets();
    test_round_robin();
    test_global_schedule();
    test_epochs_and_cursors();
    test_eval();
    test_map_keys();
    test_no_target_examples();
    test_bad_options();
    test_capacity_stress();
    return tl_check_done("test_batcher");
}
