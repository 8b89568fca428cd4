/* test_store: the adapter store (trainer/run/tl_store.h): round trips of records and manifests on random values,
 * a crash between a write and a commit, pruning, and the refusals: another store's manifest, another layout, a
 * truncated segment, a corrupt record, a corrupt manifest; two ranks sharing one store; compaction. The prefetch
 * thread's staged reads (prefetch.h): equal to direct reads while the main thread appends, stale snapshots never
 * used, a corrupt record and a record past the end of its segment reported with the direct read's message. Its
 * write-behind: records written on the thread read back bit for bit (staged reads queued after them see them),
 * reads and seals of records in flight refused until they land, a failed write reported and the rest skipped. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/tl_check.h"
#include "tests/lib/tl_fs_fixture.h"
#include "tests/lib/tl_rng_splitmix.h"
#include "trainer/run/prefetch.h"
#include "trainer/run/tl_store.h"

#define NP 37

static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)(rnd() >> 11) / 9007199254740992.0 - 0.5);
}

static int count_segments(const char *run) {
    char path[512];
    int n = 0;
    for (int k = 0; k < 64; k++) {
        snprintf(path, sizeof path, "%s/store/seg-%08d.bin", run, k);
        n += access(path, F_OK) == 0;
    }
    return n;
}

/* A fresh store in run (the layout every section uses) with n entries named "<prefix>-<a>" and no records;
 * NULL when it could not be opened (the check has failed). */
static tl_store *open_named(const char *run, const char *prefix, int n, char (*names)[32], int64_t *idx) {
    tl_error err = {0};
    tl_store_layout L = {.P = NP, .rank = 2, .n_layers = 3, .targets = 5, .head_dim = 0};
    tl_store *st = NULL;
    mkdir(run, 0755);
    CHECK_OK(tl_store_open(run, &L, &st, &err), err);
    for (int a = 0; st && a < n; a++) {
        snprintf(names[a], sizeof names[a], "%s-%d", prefix, a);
        CHECK_OK(tl_store_add(st, names[a], &idx[a], &err), err);
    }
    return st;
}

/* The staged read path: NR adapters with random records, the prefetch thread reading some while this thread
 * appends more (and rewrites one being read); then a corrupt record and one cut short. */
static void staged_reads(const char *run) {
    enum { NR = 24, NB = 8 };
    tl_error err = {0};
    static float want[NR][3][NP];
    float got[3][NP];
    int64_t idx[NR];
    char names[NR][32];
    tl_store *st = open_named(run, "user", NR, names, idx);
    if (!st) return;
    for (int a = 0; a < NR; a++) {
        for (int k = 0; k < 3; k++) fill(want[a][k], NP);
        if (a < NR / 2) CHECK_OK(tl_store_write(st, idx[a], want[a][0], want[a][1], want[a][2], 5 + a, &err), err);
    }
    tl_store_reader rd;
    tl_store_reader_of(st, &rd);
    tl_prefetch *pf = NULL;
    CHECK_OK(tl_prefetch_start(&rd, NB, NB, &pf, &err), err);
    if (!pf) {
        tl_store_close(st);
        return;
    }
    for (int round = 0; round < 3; round++) {
        /* NB + 2 requests over the adapters with records, from a random start: the last two are not staged */
        tl_prefetch_req req[NB + 2];
        int first = (int)(rnd() % (NR / 2));
        for (int i = 0; i < NB + 2; i++) {
            int a = (first + i) % (NR / 2);
            req[i].adapter = a, req[i].name = names[a];
            CHECK(tl_store_loc_of(st, idx[a], &req[i].loc));
        }
        tl_store_loc none;
        CHECK(!tl_store_loc_of(st, idx[NR - 1], &none)); /* never written: no record */
        tl_prefetch_submit(pf, req, NB + 2);
        /* meanwhile: the adapters without records get theirs (appended to the segment being read), and the
         * first requested adapter is written again (its snapshot goes stale) */
        for (int a = NR / 2; a < NR - 1; a++)
            CHECK_OK(tl_store_write(st, idx[a], want[a][0], want[a][1], want[a][2], 100 + round, &err), err);
        int re = req[0].adapter;
        for (int k = 0; k < 3; k++) fill(want[re][k], NP);
        CHECK_OK(tl_store_write(st, idx[re], want[re][0], want[re][1], want[re][2], 50 + round, &err), err);
        CHECK(tl_prefetch_wait(pf) >= 0);
        for (int i = 0; i < NB + 2; i++) {
            int a = req[i].adapter;
            tl_store_loc now;
            tl_store_loc_of(st, idx[a], &now);
            const float *params = NULL;
            CHECK_OK(tl_prefetch_take(pf, a, &now, &params, &err), err);
            if (i == 0 || i >= NB) { /* stale, or past the staging buffers: read directly */
                CHECK(params == NULL, "round %d request %d: a record that must not be staged was", round, i);
                continue;
            }
            CHECK(params != NULL, "round %d request %d: not staged", round, i);
            if (!params) continue;
            CHECK_OK(tl_store_read(st, idx[a], got[0], got[1], got[2], &err), err);
            CHECK(memcmp(params, got, sizeof got) == 0, "adapter %d: the staged record differs from a direct read", a);
            CHECK(memcmp(params, want[a], sizeof got) == 0, "adapter %d: the staged record differs from the written",
                  a);
            /* the snapshot taken before the rewrite names the old record: not handed out for the new location */
            const float *p2 = NULL;
            CHECK_OK(tl_prefetch_take(pf, a + 1000, &now, &p2, &err), err);
            CHECK(p2 == NULL);
        }
        CHECK(tl_prefetch_reads(pf) == (int64_t)(round + 1) * NB && tl_prefetch_read_s(pf) >= 0);
    }
    /* a corrupt record: the staged read reports what tl_store_read reports */
    tl_prefetch_req bad = {.adapter = 3, .name = names[3]};
    CHECK(tl_store_loc_of(st, idx[3], &bad.loc));
    FILE *f = fopen(bad.loc.path, "r+b");
    if (f) {
        fseek(f, (long)bad.loc.off + 48 + 4 * NP + 7, SEEK_SET); /* a byte of m */
        int c = fgetc(f);
        fseek(f, (long)bad.loc.off + 48 + 4 * NP + 7, SEEK_SET);
        fputc(c ^ 0x10, f);
        fclose(f);
    }
    tl_error direct = {0};
    CHECK(tl_store_read(st, idx[3], got[0], got[1], got[2], &direct) == TL_ERR_INPUT && strstr(direct.msg, "corrupt"),
          "corrupt record, direct: %s", direct.msg);
    tl_prefetch_req cut = {.adapter = 4, .name = names[4]};
    CHECK(tl_store_loc_of(st, idx[4], &cut.loc));
    cut.loc.off = (uint64_t)1 << 30; /* past the end of its segment */
    tl_prefetch_req two[2] = {bad, cut};
    tl_prefetch_submit(pf, two, 2);
    tl_prefetch_wait(pf);
    const float *params = NULL;
    tl_error e2 = {0};
    CHECK(tl_prefetch_take(pf, 3, &bad.loc, &params, &e2) == TL_ERR_INPUT && params == NULL &&
              strcmp(e2.msg, direct.msg) == 0,
          "corrupt record, staged: %s (direct: %s)", e2.msg, direct.msg);
    CHECK(tl_prefetch_take(pf, 4, &cut.loc, &params, &e2) == TL_ERR_INPUT && params == NULL &&
              strstr(e2.msg, "truncated") && strstr(e2.msg, names[4]),
          "record past the end, staged: %s", e2.msg);
    /* stopping with a list pending joins the thread after its current record */
    tl_prefetch_submit(pf, two, 2);
    tl_prefetch_stop(pf);
    tl_prefetch_stop(NULL);
    tl_store_close(st);
}

/* Many ranks (user_shard): two handles on one store as ranks 0 and 1 of 2. Each writes its own segment in an
 * interval; the entries travel as integers (what tl_resident_sync sums over ranks); rank 0's manifest restores
 * both ranks' records, in one process or two; only rank 0 removes files. */
static const char *run3_of(const char *run) {
    static char p[300];
    snprintf(p, sizeof p, "%s_shard", run);
    return p;
}

static void shard_section(const char *run) {
    tl_error err = {0};
    tl_store_layout L = {.P = NP, .rank = 2, .n_layers = 3, .targets = 5, .head_dim = 0};
    rm_rf(run);
    mkdir(run, 0755);
    tl_store *r0 = NULL, *r1 = NULL, *one = NULL;
    CHECK(tl_store_open_shard(run, &L, 1, 2, &r1, &err) == TL_ERR_INPUT && strstr(err.msg, "shares"),
          "rank 1 without rank 0's store: %s", err.msg);
    CHECK_OK(tl_store_open_shard(run, &L, 0, 2, &r0, &err), err);
    CHECK_OK(tl_store_open_shard(run, &L, 1, 2, &r1, &err), err);
    if (!r0 || !r1) return;
    CHECK_OK(tl_store_start_fresh(r0, &err), err);
    CHECK_OK(tl_store_start_fresh(r1, &err), err);
    const char *names[4] = {"u0", "u1", "u2", "u3"};
    for (int a = 0; a < 4; a++) {
        tl_store_add(r0, names[a], NULL, &err);
        tl_store_add(r1, names[a], NULL, &err);
    }
    float want[4][3][NP], got[3][NP];
    char man[2][400];
    for (int round = 0; round < 2; round++) {
        /* u0, u2 on rank 0; u1, u3 on rank 1 */
        for (int a = 0; a < 4; a++) {
            for (int k = 0; k < 3; k++) fill(want[a][k], NP);
            CHECK_OK(tl_store_write(a % 2 ? r1 : r0, a, want[a][0], want[a][1], want[a][2], 10 * round + a, &err), err);
        }
        CHECK_OK(tl_store_seal(r0, &err), err);
        CHECK_OK(tl_store_seal(r1, &err), err);
        int64_t w[4][TL_STORE_ENTRY_WORDS];
        for (int a = 0; a < 4; a++) tl_store_entry_pack(a % 2 ? r1 : r0, a, w[a]);
        CHECK(w[0][0] == 2 * round && w[1][0] == 2 * round + 1, "interval %d: segments %lld and %lld", round,
              (long long)w[0][0], (long long)w[1][0]);
        for (int a = 0; a < 4; a++) {
            CHECK_OK(tl_store_entry_unpack(r0, a, w[a], &err), err);
            CHECK_OK(tl_store_entry_unpack(r1, a, w[a], &err), err);
        }
        snprintf(man[round], sizeof man[round], "%s/m%d.bin", run, round);
        CHECK_OK(tl_store_commit(r0, 4 * (round + 1), 0, man[round], &err), err);
        for (int a = 0; a < 4; a++) { /* every rank reads every rank's records */
            CHECK_OK(tl_store_read(a % 2 ? r0 : r1, a, got[0], got[1], got[2], &err), err);
            CHECK(!memcmp(got, want[a], sizeof got), "round %d: adapter %d read across ranks", round, a);
        }
    }
    /* an entry that points past the store's segments is refused */
    int64_t bad[TL_STORE_ENTRY_WORDS];
    tl_store_entry_pack(r0, 0, bad);
    bad[0] = 99;
    CHECK(tl_store_entry_unpack(r0, 0, bad, &err) == TL_ERR_RUNTIME, "an entry past the segments was taken");
    /* debris of a crashed third interval on both ranks */
    CHECK_OK(tl_store_write(r0, 0, want[0][0], want[0][1], want[0][2], 99, &err), err);
    CHECK_OK(tl_store_write(r1, 1, want[1][0], want[1][1], want[1][2], 99, &err), err);
    tl_store_close(r0), tl_store_close(r1);
    CHECK(count_segments(run) == 6, "six segments before the restore: %d", count_segments(run));
    int64_t step = 0;
    CHECK_OK(tl_store_open_shard(run, &L, 1, 2, &r1, &err), err);
    CHECK_OK(tl_store_restore(r1, man[1], &step, NULL, &err), err);
    CHECK(count_segments(run) == 6, "rank 1 removed files: %d segments left", count_segments(run));
    tl_store_close(r1);
    /* one process resumes the two ranks' run: the debris goes, every record of the manifest reads back */
    CHECK_OK(tl_store_open(run, &L, &one, &err), err);
    if (!one) return;
    CHECK_OK(tl_store_restore(one, man[1], &step, NULL, &err), err);
    CHECK(step == 8 && count_segments(run) == 4, "restore: step %lld, %d segments", (long long)step,
          count_segments(run));
    for (int a = 0; a < 4; a++) {
        CHECK_OK(tl_store_read(one, a, got[0], got[1], got[2], &err), err);
        CHECK(!memcmp(got, want[a], sizeof got) && tl_store_meta_at(one, a)->steps == 10 + a, "adapter %d", a);
    }
    /* pruning keeps what m1 uses: the first interval's segments are dead */
    char *keep[1] = {man[1]};
    CHECK_OK(tl_store_prune(one, keep, 1, &err), err);
    CHECK(count_segments(run) == 2, "after pruning: %d segments", count_segments(run));
    tl_store_close(one);
    rm_rf(run);
}

/* Compaction: a segment whose live records fell under the threshold gives them to the open segment; pruning then
 * removes it; the records read back bit for bit; an adapter of the current round stays where it is. */
static void compact_section(const char *run) {
    tl_error err = {0};
    tl_store_layout L = {.P = NP, .rank = 2, .n_layers = 3, .targets = 5, .head_dim = 0};
    rm_rf(run);
    mkdir(run, 0755);
    tl_store *st = NULL;
    CHECK_OK(tl_store_open(run, &L, &st, &err), err);
    if (!st) return;
    enum { N = 8 };
    static float want[N][3][NP], got[3][NP];
    char nm[16], m1[400], m2[400], m3[400];
    snprintf(m1, sizeof m1, "%s/c1.bin", run), snprintf(m2, sizeof m2, "%s/c2.bin", run);
    snprintf(m3, sizeof m3, "%s/c3.bin", run);
    for (int a = 0; a < N; a++) {
        snprintf(nm, sizeof nm, "a%d", a);
        int64_t idx;
        CHECK_OK(tl_store_add(st, nm, &idx, &err), err);
        for (int k = 0; k < 3; k++) fill(want[a][k], NP);
        CHECK_OK(tl_store_write(st, idx, want[a][0], want[a][1], want[a][2], 1, &err), err);
    }
    CHECK_OK(tl_store_commit(st, 4, 0, m1, &err), err);
    /* a later round (starting at step 4) retrains a0..a6: segment 0 keeps a7 alone, 1/8 of its bytes */
    for (int a = 0; a < N - 1; a++) {
        tl_store_set_round(st, a, 4, 1);
        for (int k = 0; k < 3; k++) fill(want[a][k], NP);
        CHECK_OK(tl_store_write(st, a, want[a][0], want[a][1], want[a][2], 2, &err), err);
    }
    CHECK_OK(tl_store_commit(st, 8, 4, m2, &err), err);
    tl_store_compaction c;
    CHECK_OK(tl_store_compact(st, 0, 4, &c, &err), err);
    CHECK(c.n_moved == 0 && c.segments == 0, "below = 0 compacted");
    CHECK_OK(tl_store_compact(st, 0.1, 4, &c, &err), err);
    CHECK(c.n_moved == 0, "12.5%% live is not under 10%%");
    /* a7 in the round: it stays */
    tl_store_set_round(st, 7, 4, 1);
    CHECK_OK(tl_store_compact(st, 0.25, 4, &c, &err), err);
    CHECK(c.segments == 1 && c.n_moved == 0, "an adapter of the round moved (%d segments, %lld moved)", c.segments,
          (long long)c.n_moved);
    tl_store_compaction_free(&c);
    tl_store_set_round(st, 7, 0, 1);
    CHECK_OK(tl_store_compact(st, 0.25, 4, &c, &err), err);
    CHECK(c.segments == 1 && c.n_moved == 1 && c.moved[0] == 7 && c.bytes == tl_store_record_bytes(NP),
          "compaction: %d segments, %lld moved", c.segments, (long long)c.n_moved);
    tl_store_compaction_free(&c);
    CHECK_OK(tl_store_commit(st, 8, 4, m3, &err), err);
    char *keep2[2] = {m2, m3};
    CHECK_OK(tl_store_prune(st, keep2, 2, &err), err);
    CHECK(count_segments(run) == 3, "m2 still uses segment 0: %d segments", count_segments(run));
    char *keep1[1] = {m3};
    CHECK_OK(tl_store_prune(st, keep1, 1, &err), err);
    CHECK(count_segments(run) == 2, "after pruning: %d segments", count_segments(run));
    int64_t step;
    CHECK_OK(tl_store_restore(st, m3, &step, NULL, &err), err);
    for (int a = 0; a < N; a++) {
        CHECK_OK(tl_store_read(st, a, got[0], got[1], got[2], &err), err);
        CHECK(!memcmp(got, want[a], sizeof got), "adapter %d after compaction", a);
    }
    tl_store_close(st);
    rm_rf(run);
}

/* Write-behind: rounds of NW records written through the thread (reserve on this thread, checksum and write on
 * the thread), with reads of the same records queued right behind them; the store must refuse a direct read and a
 * seal while they may be in flight, then give every record back bit for bit. */
static void write_behind(const char *run) {
    enum { NR = 12, NW = 5 };
    tl_error err = {0};
    static float want[NR][3][NP];
    float got[3][NP];
    int64_t idx[NR];
    char names[NR][32];
    tl_store *st = open_named(run, "wb", NR, names, idx);
    if (!st) return;
    tl_store_reader rd;
    tl_store_reader_of(st, &rd);
    tl_prefetch *pf = NULL;
    CHECK_OK(tl_prefetch_start(&rd, NW, NW - 2, &pf, &err), err); /* fewer write buffers than writes: waits */
    if (!pf) {
        tl_store_close(st);
        return;
    }
    int64_t written = 0;
    for (int round = 0; round < 4; round++) {
        tl_prefetch_req req[NW];
        int first = (int)(rnd() % NR);
        for (int i = 0; i < NW; i++) {
            int a = (first + i) % NR;
            unsigned char *rec = NULL;
            int wb = tl_prefetch_wbuf(pf, &rec, NULL);
            float *body = tl_store_record_body(rec);
            for (int k = 0; k < 3; k++) fill(want[a][k], NP), memcpy(body + k * NP, want[a][k], sizeof want[a][k]);
            tl_store_wloc w;
            CHECK_OK(tl_store_reserve(st, idx[a], 7 + round, rec, &w, &err), err);
            tl_prefetch_write(pf, wb, a, &w);
            written++;
            req[i].adapter = a, req[i].name = names[a];
            CHECK(tl_store_loc_of(st, idx[a], &req[i].loc));
        }
        /* a record may still be in flight: reading it directly or sealing its segment is refused */
        tl_error e = {0};
        CHECK(tl_store_read(st, idx[first], got[0], got[1], got[2], &e) == TL_ERR_RUNTIME &&
                  strstr(e.msg, "still being written"),
              "a direct read of a record in flight: %s", e.msg);
        CHECK(tl_store_seal(st, &e) == TL_ERR_RUNTIME && strstr(e.msg, "still being written"), "seal: %s", e.msg);
        tl_prefetch_submit(pf, req, NW); /* queued behind the writes: read back once written */
        tl_prefetch_wait(pf);
        CHECK_OK(tl_prefetch_write_status(pf, &err), err);
        tl_store_landed(st);
        for (int i = 0; i < NW; i++) {
            int a = req[i].adapter;
            const float *params = NULL;
            CHECK_OK(tl_prefetch_take(pf, a, &req[i].loc, &params, &err), err);
            CHECK(params && memcmp(params, want[a], sizeof got) == 0, "round %d adapter %d: staged read", round, a);
            CHECK_OK(tl_store_read(st, idx[a], got[0], got[1], got[2], &err), err);
            CHECK(memcmp(got, want[a], sizeof got) == 0, "round %d adapter %d: direct read", round, a);
            CHECK(tl_store_meta_at(st, idx[a])->steps == 7 + round);
        }
        if (round == 1) CHECK_OK(tl_store_seal(st, &err), err); /* the next round writes a new segment */
    }
    CHECK(tl_prefetch_writes(pf) == written && tl_prefetch_write_s(pf) >= 0, "%lld writes of %lld",
          (long long)tl_prefetch_writes(pf), (long long)written);
    /* a write that fails (its descriptor is not open) is reported, and the writes after it are skipped */
    unsigned char *rec = NULL;
    int wb = tl_prefetch_wbuf(pf, &rec, NULL);
    tl_store_wloc w;
    CHECK_OK(tl_store_reserve(st, idx[0], 99, rec, &w, &err), err);
    w.fd = -1;
    tl_prefetch_write(pf, wb, 0, &w);
    wb = tl_prefetch_wbuf(pf, &rec, NULL);
    CHECK_OK(tl_store_reserve(st, idx[1], 99, rec, &w, &err), err);
    tl_prefetch_write(pf, wb, 1, &w);
    tl_prefetch_wait(pf);
    tl_error e = {0};
    CHECK(tl_prefetch_write_status(pf, &e) == TL_ERR_RUNTIME && strstr(e.msg, "write failed"), "failed write: %s",
          e.msg);
    CHECK(tl_prefetch_writes(pf) == written + 1, "the write after a failure was not skipped");
    /* stopping with writes queued finishes them first */
    tl_prefetch_stop(pf);
    tl_store_close(st);
}

int main(void) {
    uint64_t seed = (uint64_t)time(NULL);
    g_rng = seed;
    char run[256], run2[256], man1[512], man2[512], man3[512];
    snprintf(run, sizeof run, "/tmp/tl_test_store_%d", (int)getpid());
    snprintf(run2, sizeof run2, "%s_other", run);
    rm_rf(run), rm_rf(run2);
    mkdir(run, 0755), mkdir(run2, 0755);
    snprintf(man1, sizeof man1, "%s/m1.bin", run);
    snprintf(man2, sizeof man2, "%s/m2.bin", run);
    snprintf(man3, sizeof man3, "%s/m3.bin", run);
    tl_error err = {0};
    tl_store_layout L = {.P = NP, .rank = 2, .n_layers = 3, .targets = 5, .head_dim = 0};
    tl_store *st = NULL;
    CHECK_OK(tl_store_open(run, &L, &st, &err), err);
    if (!st) return tl_check_done("test_store");
    CHECK(tl_store_exists(run) && !tl_store_exists(run2));

    /* ---- records: write three adapters, read them back bit for bit ---- */
    enum { N = 3 };
    const char *names[N] = {"alice", "b\303\266b", "carol with spaces"};
    float want[N][3][NP], got[3][NP];
    int64_t idx[N];
    for (int a = 0; a < N; a++) {
        CHECK_OK(tl_store_add(st, names[a], &idx[a], &err), err);
        for (int k = 0; k < 3; k++) fill(want[a][k], NP);
        CHECK_OK(tl_store_write(st, idx[a], want[a][0], want[a][1], want[a][2], 10 + a, &err), err);
    }
    int64_t again = -1;
    CHECK_OK(tl_store_add(st, "alice", &again, &err), err);
    CHECK(again == idx[0] && tl_store_count(st) == N, "adding a known name keeps its entry");
    CHECK(tl_store_find(st, "nobody") == -1);
    for (int a = 0; a < N; a++) {
        CHECK_OK(tl_store_read(st, idx[a], got[0], got[1], got[2], &err), err);
        CHECK(!memcmp(got, want[a], sizeof got), "record %d round trip", a);
        CHECK(tl_store_meta_at(st, idx[a])->steps == 10 + a && tl_store_meta_at(st, idx[a])->has_state);
    }
    /* a newer record of alice supersedes the first */
    float alice2[3][NP];
    for (int k = 0; k < 3; k++) fill(alice2[k], NP);
    CHECK_OK(tl_store_write(st, idx[0], alice2[0], alice2[1], alice2[2], 11, &err), err);
    CHECK_OK(tl_store_read(st, idx[0], got[0], got[1], got[2], &err), err);
    CHECK(!memcmp(got, alice2, sizeof got), "the newest record wins");
    int64_t dan;
    CHECK_OK(tl_store_add(st, "dan", &dan, &err), err); /* known, never written */
    tl_store_set_cursor(st, dan, 2, 5);
    tl_store_set_round(st, dan, 40, 7);
    CHECK(!tl_store_meta_at(st, dan)->has_state);

    /* ---- commit, more writes (a crash after them), restore: the manifest's state comes back ---- */
    CHECK_OK(tl_store_commit(st, 42, 40, man1, &err), err);
    float later[3][NP];
    for (int k = 0; k < 3; k++) fill(later[k], NP);
    CHECK_OK(tl_store_write(st, idx[1], later[0], later[1], later[2], 99, &err), err);
    CHECK(count_segments(run) == 2, "a write after a commit opens a new segment (%d)", count_segments(run));
    tl_store_close(st); /* as if killed: segment 1 holds an uncommitted record */
    st = NULL;
    CHECK_OK(tl_store_open(run, &L, &st, &err), err);
    if (!st) return tl_check_done("test_store");
    int64_t step = -1, round = -1;
    CHECK_OK(tl_store_restore(st, man1, &step, &round, &err), err);
    CHECK(step == 42 && round == 40 && tl_store_count(st) == N + 1, "restore: step %lld, %lld entries", (long long)step,
          (long long)tl_store_count(st));
    CHECK(count_segments(run) == 1, "the crashed run's segment is removed (%d left)", count_segments(run));
    for (int a = 0; a < N; a++) {
        int64_t i = tl_store_find(st, names[a]);
        CHECK(i == a, "manifest order kept");
        CHECK_OK(tl_store_read(st, i, got[0], got[1], got[2], &err), err);
        CHECK(!memcmp(got, a == 0 ? alice2 : want[a], sizeof got), "restored record %d", a);
    }
    const tl_store_meta *dm = tl_store_meta_at(st, tl_store_find(st, "dan"));
    CHECK(!dm->has_state && dm->epoch == 2 && dm->pos == 5 && dm->n_examples == 7 && dm->round == 40,
          "cursor, round and examples restored");

    /* ---- pruning: after a second commit that rewrites everyone, segment 0 is dead unless m1 is retained ---- */
    for (int a = 0; a < N; a++) CHECK_OK(tl_store_write(st, a, want[a][0], want[a][1], want[a][2], 50, &err), err);
    CHECK_OK(tl_store_commit(st, 50, 40, man2, &err), err);
    char *keep1[] = {man1, man2};
    CHECK_OK(tl_store_prune(st, keep1, 2, &err), err);
    CHECK(count_segments(run) == 2, "segment 0 kept while a retained manifest refers to it");
    char *keep2[] = {man2};
    CHECK_OK(tl_store_prune(st, keep2, 1, &err), err);
    CHECK(count_segments(run) == 1, "segment 0 removed once no manifest refers to it (%d)", count_segments(run));
    CHECK_OK(tl_store_read(st, 0, got[0], NULL, NULL, &err), err);
    CHECK(!memcmp(got[0], want[0][0], sizeof got[0]), "params only read");
    CHECK(tl_store_bytes_written(st) == 3 * tl_store_record_bytes(NP));

    /* ---- refusals ---- */
    tl_store_layout L2 = L;
    L2.rank = 4;
    tl_store *bad = NULL;
    CHECK(tl_store_open(run, &L2, &bad, &err) == TL_ERR_INPUT && !bad && strstr(err.msg, "store.json") &&
              strstr(err.msg, "another shape"),
          "another layout: %s", err.msg);
    tl_store *other = NULL;
    CHECK_OK(tl_store_open(run2, &L, &other, &err), err);
    if (other) {
        CHECK(tl_store_restore(other, man2, &step, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "another store"),
              "another run's manifest: %s", err.msg);
        tl_store_close(other);
    }
    /* a corrupt manifest: one byte flipped */
    FILE *f = fopen(man2, "rb");
    unsigned char buf[4096];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f) fclose(f);
    CHECK(n > 60 && n < sizeof buf);
    buf[n / 2] ^= 0x40;
    f = fopen(man3, "wb");
    if (f) fwrite(buf, 1, n, f), fclose(f);
    CHECK(tl_store_restore(st, man3, &step, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "CRC-32"),
          "corrupt manifest: %s", err.msg);
    f = fopen(man3, "wb");
    if (f) fwrite(buf, 1, 30, f), fclose(f);
    CHECK(tl_store_restore(st, man3, &step, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "not a tailor store manifest"),
          "truncated manifest: %s", err.msg);
    /* a failed restore leaves the store usable: restore the good one again */
    CHECK_OK(tl_store_restore(st, man2, &step, NULL, &err), err);
    /* a corrupt record: flip a payload byte of segment 1 */
    char seg[512];
    snprintf(seg, sizeof seg, "%s/store/seg-%08d.bin", run, 1);
    f = fopen(seg, "r+b");
    if (f) {
        fseek(f, 48 + 5, SEEK_SET);
        int c = fgetc(f);
        fseek(f, 48 + 5, SEEK_SET);
        fputc(c ^ 1, f);
        fclose(f);
    }
    CHECK(tl_store_read(st, 0, got[0], got[1], got[2], &err) == TL_ERR_INPUT && strstr(err.msg, "corrupt"),
          "corrupt record: %s", err.msg);
    /* a truncated segment: restore names the adapter whose record is cut */
    CHECK(truncate(seg, (off_t)(2 * tl_store_record_bytes(NP) + 10)) == 0);
    CHECK(tl_store_restore(st, man2, &step, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "truncated store file") &&
              strstr(err.msg, "carol"),
          "truncated segment: %s", err.msg);
    unlink(seg);
    CHECK(tl_store_restore(st, man2, &step, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "missing"),
          "missing segment: %s", err.msg);
    tl_store_close(st);
    rm_rf(run), rm_rf(run2);
    shard_section(run3_of(run));
    compact_section(run3_of(run));
    char run4[300];
    snprintf(run4, sizeof run4, "%s_staged", run);
    rm_rf(run4);
    staged_reads(run4);
    rm_rf(run4);
    write_behind(run4);
    rm_rf(run4);
    return tl_check_done_seed("test_store", (unsigned long long)seed);
}
