/* test_pref_dataset: tl_pref_open and tl_h5_kind on HDF5 files written here with the C API (in a fresh
 * mkdtemp directory).
 *
 * Valid files (random content, with and without /users/group, empty prompts) must load with exactly the values
 * written; each malformed variant must fail with TL_ERR_INPUT and one line naming the file and the offending
 * dataset or attribute (and the pair, where there is one), leaving the struct empty. The kind probe must tell
 * preference files from SFT files, and adapter.key = group must fail at map building on a file without groups. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_pref.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_dataset_fixture.h"
#include "tests/lib/tl_h5_fixture.h"
#include "tests/lib/tl_rng_splitmix.h"


/* ---- file description: every field a malformed case may change ---- */
enum { D_PTOK, D_POFF, D_CTOK, D_COFF, D_RTOK, D_ROFF, D_USER, N_D };
static const char *const k_ds[N_D] = {"/pref/prompt/tokens",   "/pref/prompt/offsets", "/pref/chosen/tokens",
                                      "/pref/chosen/offsets",  "/pref/rejected/tokens", "/pref/rejected/offsets",
                                      "/pref/user"};
enum { MAXP = 40, MAXT = 512 };

typedef struct {
    int64_t fmt;
    const char *kind;
    int kind_is_int;
    int omit_fmt, omit_kind, omit_names, omit_pref;
    int64_t vocab_attr; /* 0: absent */
    int n_users, n_groups;
    char names[8][32], groups[8][32];
    int has_groups;
    int64_t n_pairs;
    int64_t n[N_D];          /* elements written per dataset */
    int32_t tok[3][MAXT];    /* per part: prompt, chosen, rejected */
    int64_t off[3][MAXP + 2];
    int32_t user[MAXP + 2];
    hid_t type[N_D];
    unsigned omit; /* bit d: dataset d is not written */
} spec;

static tl_pref_tokens *part(tl_pref_dataset *ds, int k) {
    return k == 0 ? &ds->prompt : k == 1 ? &ds->chosen : &ds->rejected;
}

/* Fills pairs from their lengths (random tokens below vocab). */
static void set_pairs(spec *s, int64_t N, const int *plen, const int *clen, const int *rlen, int vocab) {
    const int *lens[3] = {plen, clen, rlen};
    s->n_pairs = N;
    for (int k = 0; k < 3; k++) {
        s->off[k][0] = 0;
        for (int64_t i = 0; i < N; i++) s->off[k][i + 1] = s->off[k][i] + lens[k][i];
        for (int64_t t = 0; t < s->off[k][N]; t++) s->tok[k][t] = rnd_int(0, vocab - 1);
        s->n[2 * k] = s->off[k][N];
        s->n[2 * k + 1] = N + 1;
    }
    for (int64_t i = 0; i < N; i++) s->user[i] = rnd_int(0, s->n_users - 1);
    s->n[D_USER] = N;
}

/* A random valid file: 2..5 users, 1..MAXP pairs, prompts of 0..10 tokens, responses of 1..10. */
static void random_spec(spec *s, int vocab, int64_t N) {
    memset(s, 0, sizeof *s);
    s->fmt = 1;
    s->kind = "preference";
    s->n_users = s->n_groups = rnd_int(2, 5);
    static const char *base[] = {"ann", "bo/b", "c\xc3\xa9line", "dan smith", "eve.."};
    for (int u = 0; u < 5; u++) { /* all five, so a case may use more users than were drawn */
        snprintf(s->names[u], sizeof s->names[u], "%s%d", base[u], rnd_int(0, 99));
        snprintf(s->groups[u], sizeof s->groups[u], "team%d", u % 2);
    }
    int plen[MAXP], clen[MAXP], rlen[MAXP];
    for (int64_t i = 0; i < N; i++) {
        plen[i] = rnd_int(i == 0 ? 1 : 0, 10); /* pair 0 trainable: a file with nothing to train is an error */
        clen[i] = rnd_int(1, 10);
        rlen[i] = rnd_int(1, 10);
    }
    set_pairs(s, N, plen, clen, rlen, vocab);
    for (int d = 0; d < N_D; d++) s->type[d] = d % 2 == 1 && d != D_USER ? H5T_STD_I64LE : H5T_STD_I32LE;
}

/* The base of every malformed case: 6 pairs with non-empty prompts and responses, users 0..2 used. */
static void base_spec(spec *s) {
    random_spec(s, 50, 6);
    s->n_users = s->n_groups = 3;
    int plen[6], clen[6], rlen[6];
    for (int i = 0; i < 6; i++) {
        plen[i] = rnd_int(1, 6);
        clen[i] = rnd_int(2, 6);
        rlen[i] = rnd_int(2, 6);
    }
    set_pairs(s, 6, plen, clen, rlen, 50);
    for (int i = 0; i < 6; i++) s->user[i] = i % 3;
}

static void write_spec(const spec *s, char *path, size_t n) {
    fx_next_path(path, n, "p");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    int ok = f >= 0 && lcpl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0;
    if (ok && !s->omit_fmt) ok = h5_write_attr_int(f, "tailor_format", H5T_STD_I64LE, s->fmt);
    if (ok && !s->omit_kind) ok = s->kind_is_int ? h5_write_attr_int(f, "kind", H5T_STD_I64LE, 7)
                                                 : h5_write_attr_str(f, "kind", s->kind, 1);
    if (ok && s->vocab_attr) ok = h5_write_attr_int(f, "vocab_size", H5T_STD_I64LE, s->vocab_attr);
    if (ok && !s->omit_names)
        ok = h5_write_strings(f, lcpl, "/users/name", (char (*)[32])s->names, s->n_users, STR_VLEN, 0);
    if (ok && s->has_groups) ok = h5_write_strings(f, lcpl, "/users/group", (char (*)[32])s->groups, s->n_groups,
                                                  STR_FIXED_NULLPAD, 32);
    for (int d = 0; d < N_D && ok && !s->omit_pref; d++) {
        if (s->omit & (1u << d)) continue;
        const void *data = d == D_USER ? (const void *)s->user : d % 2 == 0 ? (const void *)s->tok[d / 2]
                                                                            : (const void *)s->off[d / 2];
        hid_t mt = d == D_USER || d % 2 == 0 ? H5T_NATIVE_INT32 : H5T_NATIVE_INT64;
        ok = h5_write_ds(f, lcpl, k_ds[d], s->type[d], mt, data, s->n[d], 0);
    }
    if (lcpl >= 0) H5Pclose(lcpl);
    if (f >= 0) H5Fclose(f);
    if (!ok) {
        fprintf(stderr, "FATAL: could not write test file %s\n", path);
        exit(1);
    }
}

static void expect_valid(const spec *s, int model_vocab, const char *label) {
    char path[512];
    write_spec(s, path, sizeof path);
    tl_pref_dataset ds;
    memset(&ds, 0x5a, sizeof ds); /* poison: tl_pref_open must set every field */
    tl_error err = {0};
    tl_status st = tl_pref_open(path, model_vocab, &ds, &err);
    CHECK(st == TL_OK, "%s: open failed: %s", label, err.msg);
    if (st != TL_OK) return;
    CHECK(strcmp(ds.path, path) == 0, "%s: path", label);
    fx_check_users(label, s->n_users, s->names, s->has_groups, s->groups, ds.n_users, ds.user_names, ds.user_groups);
    CHECK(ds.vocab_size_attr == s->vocab_attr, "%s: vocab_size_attr %lld", label, (long long)ds.vocab_size_attr);
    CHECK(ds.n_pairs == s->n_pairs, "%s: n_pairs %lld, expected %lld", label, (long long)ds.n_pairs,
          (long long)s->n_pairs);
    if (ds.n_pairs != s->n_pairs) {
        tl_pref_free(&ds);
        return;
    }
    for (int k = 0; k < 3; k++) {
        const tl_pref_tokens *p = part(&ds, k);
        CHECK(p->n_tokens == s->off[k][s->n_pairs], "%s: part %d n_tokens %lld", label, k, (long long)p->n_tokens);
        CHECK(memcmp(p->offsets, s->off[k], (size_t)(s->n_pairs + 1) * 8) == 0, "%s: part %d offsets differ", label,
              k);
        if (p->n_tokens == s->off[k][s->n_pairs])
            CHECK(memcmp(p->tokens, s->tok[k], (size_t)p->n_tokens * 4) == 0, "%s: part %d tokens differ", label, k);
    }
    CHECK(memcmp(ds.user, s->user, (size_t)s->n_pairs * 4) == 0, "%s: users differ", label);
    tl_pref_free(&ds);
    CHECK(ds.user == NULL && ds.chosen.tokens == NULL && ds.n_users == 0 && ds.path == NULL,
          "%s: tl_pref_free must clear the struct", label);
}

static void expect_error_path(const char *path, int model_vocab, const char *label, const char *n1, const char *n2,
                              const char *n3) {
    tl_pref_dataset ds;
    memset(&ds, 0x5a, sizeof ds);
    tl_error err = {0};
    tl_status st = tl_pref_open(path, model_vocab, &ds, &err);
    printf("  %-30s -> %s\n", label, err.msg);
    const char *needles[3] = {n1, n2, n3};
    fx_check_input_error(label, path, st, &err, needles, 3);
    CHECK(ds.user == NULL && ds.user_names == NULL && ds.prompt.tokens == NULL && ds.rejected.offsets == NULL &&
              ds.path == NULL && ds.n_pairs == 0,
          "%s: a failed open must leave the struct empty", label);
    tl_pref_free(&ds); /* safe after a failure */
}

static void expect_error(const spec *s, int model_vocab, const char *label, const char *n1, const char *n2,
                         const char *n3) {
    char path[512];
    write_spec(s, path, sizeof path);
    expect_error_path(path, model_vocab, label, n1, n2, n3);
}

static void test_valid(void) {
    for (int rep = 0; rep < 8; rep++) {
        spec s;
        random_spec(&s, 100, rnd_int(1, MAXP));
        s.has_groups = rep % 2;
        s.vocab_attr = rep % 3 == 1 ? 100 : 0;
        if (rep == 2) /* big-endian storage is still int32 / int64 */
            for (int d = 0; d < N_D; d++) s.type[d] = s.type[d] == H5T_STD_I64LE ? H5T_STD_I64BE : H5T_STD_I32BE;
        if (rep == 3) { /* every prompt empty */
            int plen[MAXP] = {0}, clen[MAXP], rlen[MAXP];
            for (int i = 0; i < 5; i++) clen[i] = rlen[i] = 1 + i;
            set_pairs(&s, 5, plen, clen, rlen, 100);
        }
        char label[64];
        snprintf(label, sizeof label, "valid rep %d", rep);
        expect_valid(&s, rep % 2 ? 100 : 0, label);
    }
    spec s;
    base_spec(&s);
    s.tok[2][s.off[2][3] + 1] = 70;
    expect_valid(&s, 0, "token beyond 50 accepted without a model");
    base_spec(&s);
    s.vocab_attr = 50;
    expect_valid(&s, 50, "vocab_size attribute == model vocab");
}

static void test_errors(void) {
    spec s;
    char path[512];
    snprintf(path, sizeof path, "%s/nope.h5", g_dir);
    expect_error_path(path, 0, "missing file", "cannot open", NULL, NULL);
    expect_error_path(g_dir, 0, "a directory", "is a directory", NULL, NULL);

    for (int d = 0; d < N_D; d++) {
        base_spec(&s);
        s.omit = 1u << d;
        char label[64];
        snprintf(label, sizeof label, "missing %s", k_ds[d]);
        expect_error(&s, 0, label, k_ds[d], "missing", NULL);
    }
    base_spec(&s);
    s.omit_pref = 1;
    expect_error(&s, 0, "no /pref group at all", "/pref/prompt/tokens", "missing", NULL);
    base_spec(&s);
    s.omit_names = 1;
    expect_error(&s, 0, "missing /users/name", "/users/name", "missing", NULL);
    base_spec(&s);
    s.omit_kind = 1;
    expect_error(&s, 0, "missing kind", "attribute kind", "missing", NULL);
    base_spec(&s);
    s.omit_fmt = 1;
    expect_error(&s, 0, "missing tailor_format", "tailor_format", "missing", NULL);
    base_spec(&s);
    s.fmt = 3;
    expect_error(&s, 0, "tailor_format 3", "tailor_format", "expected 1", NULL);
    base_spec(&s);
    s.kind = "sft";
    expect_error(&s, 0, "wrong kind", "attribute kind", "\"sft\"", "expected \"preference\"");

    base_spec(&s);
    s.type[D_PTOK] = H5T_IEEE_F32LE;
    expect_error(&s, 0, "float prompt tokens", "/pref/prompt/tokens", "dtype float32, expected int32", NULL);
    base_spec(&s);
    s.type[D_CTOK] = H5T_STD_I64LE;
    expect_error(&s, 0, "int64 chosen tokens", "/pref/chosen/tokens", "expected int32", NULL);
    base_spec(&s);
    s.type[D_RTOK] = H5T_STD_U32LE;
    expect_error(&s, 0, "uint32 rejected tokens", "/pref/rejected/tokens", "expected int32", NULL);
    base_spec(&s);
    s.type[D_ROFF] = H5T_STD_I32LE;
    expect_error(&s, 0, "int32 rejected offsets", "/pref/rejected/offsets", "expected int64", NULL);
    base_spec(&s);
    s.type[D_POFF] = H5T_IEEE_F64LE;
    expect_error(&s, 0, "float prompt offsets", "/pref/prompt/offsets", "expected int64", NULL);
    base_spec(&s);
    s.type[D_USER] = H5T_STD_I64LE;
    expect_error(&s, 0, "int64 user", "/pref/user", "expected int32", NULL);

    /* offsets that disagree with their tokens: a stray token after the last offset, or a short last offset */
    for (int k = 0; k < 3; k++) {
        base_spec(&s);
        s.n[2 * k] += 1;
        char label[64];
        snprintf(label, sizeof label, "stray token in %s", k_ds[2 * k]);
        expect_error(&s, 0, label, k_ds[2 * k + 1], "last offset", k_ds[2 * k]);
    }
    base_spec(&s);
    s.off[1][6] += 2;
    expect_error(&s, 0, "last chosen offset too large", "/pref/chosen/offsets", "last offset", "expected");
    base_spec(&s);
    s.off[1][3] = s.off[1][2] - 1;
    expect_error(&s, 0, "decreasing chosen offsets", "/pref/chosen/offsets", "decreasing at index 3", NULL);
    base_spec(&s);
    s.off[0][0] = 1;
    expect_error(&s, 0, "prompt offsets[0] != 0", "/pref/prompt/offsets", "offsets[0] = 1", NULL);

    /* offsets lengths that disagree between the three parts */
    base_spec(&s);
    s.off[1][7] = s.off[1][6];
    s.n[D_COFF] = 8;
    expect_error(&s, 0, "chosen offsets longer", "/pref/chosen/offsets", "length 8, expected 7",
                 "/pref/prompt/offsets");
    base_spec(&s);
    s.n[D_ROFF] = 6;
    expect_error(&s, 0, "rejected offsets shorter", "/pref/rejected/offsets", "length 6, expected 7", NULL);
    base_spec(&s);
    s.n[D_POFF] = 6;
    expect_error(&s, 0, "prompt offsets shorter", "/pref/chosen/offsets", "expected 6", "/pref/prompt/offsets");
    base_spec(&s);
    s.n[D_USER] = 5;
    expect_error(&s, 0, "user shorter", "/pref/user", "length 5, expected 6", NULL);

    base_spec(&s);
    s.user[4] = 3;
    expect_error(&s, 0, "user out of range", "/pref/user", "pair 4", "user 3");
    base_spec(&s);
    s.user[0] = -1;
    expect_error(&s, 0, "negative user", "/pref/user", "pair 0", NULL);

    int plen[6] = {2, 0, 3, 1, 4, 2}, clen[6] = {2, 3, 0, 2, 2, 1}, rlen[6] = {3, 1, 2, 2, 0, 2};
    base_spec(&s);
    set_pairs(&s, 6, plen, clen, rlen, 50);
    for (int i = 0; i < 6; i++) s.user[i] = i % 3;
    expect_error(&s, 0, "empty chosen", "/pref/chosen/offsets", "pair 2", "empty chosen response");
    clen[2] = 1;
    base_spec(&s);
    set_pairs(&s, 6, plen, clen, rlen, 50);
    for (int i = 0; i < 6; i++) s.user[i] = i % 3;
    expect_error(&s, 0, "empty rejected", "/pref/rejected/offsets", "pair 4", "empty rejected response");

    /* nothing to train: every pair has an empty prompt and a 1-token side; one trainable pair makes it valid */
    int p0[6] = {0, 0, 0, 0, 0, 0}, c1[6] = {1, 2, 1, 3, 1, 1}, r1[6] = {2, 1, 1, 1, 1, 1};
    base_spec(&s);
    set_pairs(&s, 6, p0, c1, r1, 50);
    for (int i = 0; i < 6; i++) s.user[i] = i % 3;
    expect_error(&s, 0, "no trainable pair", "/pref/prompt/offsets", "no pair has a token to train on", NULL);
    p0[5] = 1;
    base_spec(&s);
    set_pairs(&s, 6, p0, c1, r1, 50);
    for (int i = 0; i < 6; i++) s.user[i] = i % 3;
    expect_valid(&s, 0, "one trainable pair");

    base_spec(&s);
    s.tok[2][s.off[2][3] + 1] = 50;
    expect_error(&s, 50, "rejected token >= vocab", "/pref/rejected/tokens", "pair 3 position 1",
                 "model's vocabulary size");
    base_spec(&s);
    s.tok[0][s.off[0][5]] = -4;
    expect_error(&s, 0, "negative prompt token", "/pref/prompt/tokens", "pair 5 position 0", "negative");
    base_spec(&s);
    for (int k = 0; k < 3; k++)
        for (int64_t t = 0; t < s.off[k][6]; t++) s.tok[k][t] %= 20;
    s.vocab_attr = 20;
    s.tok[1][s.off[1][1]] = 30;
    expect_error(&s, 0, "chosen token >= vocab_size attr", "/pref/chosen/tokens", "pair 1 position 0", "vocab_size");
    base_spec(&s);
    s.vocab_attr = 60;
    expect_error(&s, 50, "vocab_size attr > model vocab", "attribute vocab_size", "60", NULL);

    base_spec(&s);
    set_pairs(&s, 0, plen, clen, rlen, 50);
    expect_error(&s, 0, "empty dataset", "/pref/prompt/offsets", "empty dataset", NULL);
    base_spec(&s);
    s.n[D_ROFF] = 0;
    expect_error(&s, 0, "no rejected offsets at all", "/pref/rejected/offsets", "no elements", NULL);

    base_spec(&s);
    snprintf(s.names[2], sizeof s.names[2], "%s", s.names[0]);
    expect_error(&s, 0, "duplicate user names", "/users/name", "duplicate", NULL);
    base_spec(&s);
    s.has_groups = 1;
    s.n_groups = 2;
    expect_error(&s, 0, "groups shorter than users", "/users/group", "length 2, expected 3", NULL);
    base_spec(&s);
    s.has_groups = 1;
    memset(s.groups[1], 0, sizeof s.groups[1]);
    expect_error(&s, 0, "empty group name", "/users/group", "user 1", NULL);
}

/* tl_h5_kind tells the kinds apart; each reader refuses the other kind by naming the attribute. */
static void test_kind_probe(void) {
    spec s;
    char pref[512], sft[512], nokind[512], intkind[512], path[512];
    base_spec(&s);
    write_spec(&s, pref, sizeof pref);
    s.kind = "sft";
    write_spec(&s, sft, sizeof sft);
    s.omit_kind = 1;
    write_spec(&s, nokind, sizeof nokind);
    s.omit_kind = 0;
    s.kind_is_int = 1;
    write_spec(&s, intkind, sizeof intkind);

    char kind[32];
    memset(kind, 'x', sizeof kind);
    tl_error e = {0};
    CHECK(tl_h5_kind(pref, kind, sizeof kind, &e) == TL_OK && strcmp(kind, "preference") == 0, "probe: pref -> '%s' %s",
          kind, e.msg);
    CHECK(tl_h5_kind(sft, kind, sizeof kind, &e) == TL_OK && strcmp(kind, "sft") == 0, "probe: sft -> '%s' %s", kind,
          e.msg);
    struct {
        const char *path;
        size_t cap;
        const char *needle;
    } bad[] = {{nokind, sizeof kind, "attribute kind"},
               {intkind, sizeof kind, "expected strings"},
               {pref, 10, "longer than 9"},
               {path, sizeof kind, "cannot open"}};
    snprintf(path, sizeof path, "%s/absent.h5", g_dir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        CHECK(tl_h5_kind(bad[i].path, kind, bad[i].cap, &e) == TL_ERR_INPUT && strstr(e.msg, bad[i].needle) &&
                  strstr(e.msg, bad[i].path) && !strchr(e.msg, '\n'),
              "probe case %zu: %s", i, e.msg);
    }
    snprintf(path, sizeof path, "%s/text.h5", g_dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) {
        fputs("plain text, long enough to not look like an HDF5 superblock at all\n", f);
        fclose(f);
    }
    memset(&e, 0, sizeof e);
    CHECK(tl_h5_kind(path, kind, sizeof kind, &e) == TL_ERR_INPUT && strstr(e.msg, "not an HDF5 file"), "probe: text "
          "file: %s", e.msg);
    remove(path);

    /* the SFT reader names the kind it found */
    tl_sft_dataset sd;
    memset(&e, 0, sizeof e);
    CHECK(tl_sft_open(pref, 0, &sd, &e) == TL_ERR_INPUT && strstr(e.msg, "\"preference\"") &&
              strstr(e.msg, "expected \"sft\""),
          "tl_sft_open on a preference file: %s", e.msg);
}

/* adapter.key = group needs /users/group: checked when the map is built, naming the key and the file. */
static void test_group_key(void) {
    spec s;
    base_spec(&s);
    s.has_groups = 1;
    char with[512], without[512];
    write_spec(&s, with, sizeof with);
    s.has_groups = 0;
    write_spec(&s, without, sizeof without);
    tl_pref_dataset ds;
    tl_error e = {0};
    tl_adapter_map m;
    CHECK(tl_pref_open(with, 0, &ds, &e) == TL_OK, "open: %s", e.msg);
    CHECK(tl_adapter_map_build_pref(&ds, TL_KEY_GROUP, NULL, 0, &m, &e) == TL_OK && m.n_adapters == 2 &&
              strcmp(m.names[0], "team0") == 0 && m.n_examples[0] == 4 && m.n_examples[1] == 2,
          "group map on a file with groups: %s", e.msg);
    tl_adapter_map_free(&m);
    tl_pref_free(&ds);
    CHECK(tl_pref_open(without, 0, &ds, &e) == TL_OK, "open: %s", e.msg);
    memset(&e, 0, sizeof e);
    CHECK(tl_adapter_map_build_pref(&ds, TL_KEY_GROUP, NULL, 0, &m, &e) == TL_ERR_INPUT &&
              strstr(e.msg, "adapter.key") && strstr(e.msg, without) && strstr(e.msg, "/users/group"),
          "group map without /users/group: %s", e.msg);
    CHECK(tl_adapter_map_build_pref(&ds, TL_KEY_USER, NULL, 0, &m, &e) == TL_OK && m.n_adapters == 3,
          "user map: %s", e.msg);
    tl_adapter_map_free(&m);
    tl_pref_free(&ds);
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the test's own expected failures must not print stacks */
    g_rng = 0x7654321ULL ^ (uint64_t)getpid();
    printf("test_pref_dataset rng seed %llu\n", (unsigned long long)g_rng);
    if (fx_scratch_init("tl_test_pref")) return 1;
    test_valid();
    test_errors();
    test_kind_probe();
    test_group_key();
    fx_scratch_clean("p");
    return tl_check_done("test_pref_dataset");
}
