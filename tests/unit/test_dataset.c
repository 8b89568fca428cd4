/* test_dataset: tl_sft_open on HDF5 files written here with the C API (in a fresh mkdtemp directory).
 *
 * Valid files (fixed- and variable-length strings, with and without /users/group, random content) must load
 * with exactly the values written; each malformed variant must fail with TL_ERR_INPUT and a one-line message
 * naming the file and the offending dataset or attribute. */
#include <hdf5.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_dataset.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_dataset_fixture.h"
#include "tests/lib/tl_h5_fixture.h"
#include "tests/lib/tl_rng_splitmix.h"


/* ---- file description: every field a malformed case may change ---- */
enum {
    OMIT_TOKENS = 1,
    OMIT_OFFSETS = 2,
    OMIT_PROMPT = 4,
    OMIT_USER = 8,
    OMIT_NAMES = 16,
    OMIT_FORMAT = 32,
    OMIT_KIND = 64,
    OMIT_SFT_GROUP = 128
};

typedef struct {
    int64_t fmt;
    hid_t fmt_type;
    const char *kind;
    int kind_vlen;
    int64_t vocab_attr; /* 0: absent */
    int n_users;
    char names[8][32];
    int names_style, names_fixed_size;
    int has_groups;
    char groups[8][32];
    int64_t n_tok, n_off, n_prompt, n_user;
    int32_t tokens[256];
    int64_t offsets[64];
    int32_t prompt[64], user[64];
    hid_t tok_type, off_type, prompt_type, user_type;
    int tok_rank2;
    unsigned omit;
} spec;

/* A random valid dataset: 3..5 users, 1..12 examples of length 0..12 (so some have no targets). */
static void random_spec(spec *s, int vocab) {
    memset(s, 0, sizeof *s);
    s->fmt = 1;
    s->fmt_type = H5T_STD_I64LE;
    s->kind = "sft";
    s->n_users = rnd_int(3, 5);
    static const char *base[] = {"alice", "bob/x", "c\xc3\xa9line", "dan smith", "eve..", "f", "g", "h"};
    for (int u = 0; u < s->n_users; u++) {
        snprintf(s->names[u], sizeof s->names[u], "%s%d", base[u], rnd_int(0, 99));
        snprintf(s->groups[u], sizeof s->groups[u], "grp%d", u % 2);
    }
    s->names_style = STR_FIXED_NULLPAD;
    s->names_fixed_size = 24;
    int n = rnd_int(1, 12);
    s->offsets[0] = 0;
    for (int i = 0; i < n; i++) {
        /* example 0 always has a response token at position >= 1: a file with nothing to train is an error */
        int len = rnd_int(i == 0 ? 2 : 0, 12);
        s->offsets[i + 1] = s->offsets[i] + len;
        s->prompt[i] = rnd_int(0, i == 0 ? len - 1 : len);
        s->user[i] = rnd_int(0, s->n_users - 1);
        for (int t = 0; t < len; t++) s->tokens[s->offsets[i] + t] = rnd_int(0, vocab - 1);
    }
    s->n_tok = s->offsets[n];
    s->n_off = n + 1;
    s->n_prompt = s->n_user = n;
    s->tok_type = H5T_STD_I32LE;
    s->off_type = H5T_STD_I64LE;
    s->prompt_type = H5T_STD_I32LE;
    s->user_type = H5T_STD_I32LE;
}

static void write_spec(const spec *s, char *path, size_t n) {
    fx_next_path(path, n, "f");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    int ok = f >= 0;
    if (ok && !(s->omit & OMIT_FORMAT)) ok = h5_write_attr_int(f, "tailor_format", s->fmt_type, s->fmt);
    if (ok && !(s->omit & OMIT_KIND)) ok = h5_write_attr_str(f, "kind", s->kind, s->kind_vlen);
    if (ok && s->vocab_attr) ok = h5_write_attr_int(f, "vocab_size", H5T_STD_I64LE, s->vocab_attr);
    hid_t gu = H5Gcreate2(f, "/users", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ok = ok && gu >= 0;
    if (ok && !(s->omit & OMIT_NAMES))
        ok = h5_write_strings(f, H5P_DEFAULT, "/users/name", (char (*)[32])s->names, s->n_users, s->names_style,
                           s->names_fixed_size);
    if (ok && s->has_groups)
        ok = h5_write_strings(f, H5P_DEFAULT, "/users/group", (char (*)[32])s->groups, s->n_users, STR_VLEN, 0);
    if (gu >= 0) H5Gclose(gu);
    if (!(s->omit & OMIT_SFT_GROUP)) {
        hid_t gs = H5Gcreate2(f, "/sft", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        ok = ok && gs >= 0;
        if (ok && !(s->omit & OMIT_TOKENS))
            ok = h5_write_ds(f, H5P_DEFAULT, "/sft/tokens", s->tok_type, H5T_NATIVE_INT32, s->tokens, s->n_tok,
                             s->tok_rank2);
        if (ok && !(s->omit & OMIT_OFFSETS))
            ok = h5_write_ds(f, H5P_DEFAULT, "/sft/offsets", s->off_type, H5T_NATIVE_INT64, s->offsets, s->n_off, 0);
        if (ok && !(s->omit & OMIT_PROMPT))
            ok = h5_write_ds(f, H5P_DEFAULT, "/sft/prompt_len", s->prompt_type, H5T_NATIVE_INT32, s->prompt, s->n_prompt,
                             0);
        if (ok && !(s->omit & OMIT_USER))
            ok = h5_write_ds(f, H5P_DEFAULT, "/sft/user", s->user_type, H5T_NATIVE_INT32, s->user, s->n_user, 0);
        if (gs >= 0) H5Gclose(gs);
    }
    if (f >= 0) H5Fclose(f);
    if (!ok) {
        fprintf(stderr, "FATAL: could not write test file %s\n", path);
        exit(1);
    }
}

/* Loads a valid spec and compares every field with what was written. */
static void expect_valid(const spec *s, int model_vocab, const char *label) {
    char path[512];
    write_spec(s, path, sizeof path);
    tl_sft_dataset ds;
    memset(&ds, 0x5a, sizeof ds); /* poison: tl_sft_open must set every field */
    tl_error err = {0};
    tl_status st = tl_sft_open(path, model_vocab, &ds, &err);
    CHECK(st == TL_OK, "%s: open failed: %s", label, err.msg);
    if (st != TL_OK) return;
    CHECK(strcmp(ds.path, path) == 0, "%s: path", label);
    fx_check_users(label, s->n_users, s->names, s->has_groups, s->groups, ds.n_users, ds.user_names, ds.user_groups);
    CHECK(ds.n_examples == s->n_off - 1, "%s: n_examples %lld", label, (long long)ds.n_examples);
    CHECK(ds.n_tokens == s->n_tok, "%s: n_tokens", label);
    CHECK(ds.vocab_size_attr == s->vocab_attr, "%s: vocab_size_attr %lld", label, (long long)ds.vocab_size_attr);
    if (ds.n_tokens == s->n_tok)
        CHECK(memcmp(ds.tokens, s->tokens, (size_t)s->n_tok * 4) == 0, "%s: tokens differ", label);
    if (ds.n_examples == s->n_off - 1) {
        CHECK(memcmp(ds.offsets, s->offsets, (size_t)s->n_off * 8) == 0, "%s: offsets differ", label);
        CHECK(memcmp(ds.prompt_len, s->prompt, (size_t)s->n_prompt * 4) == 0, "%s: prompt_len differ", label);
        CHECK(memcmp(ds.user, s->user, (size_t)s->n_user * 4) == 0, "%s: user differ", label);
    }
    tl_sft_free(&ds);
    CHECK(ds.tokens == NULL && ds.n_users == 0, "%s: tl_sft_free must clear the struct", label);
}

/* Opens a file expected to be rejected: TL_ERR_INPUT, one line, naming the file and each needle. */
static void expect_error_path(const char *path, int model_vocab, const char *label, const char *n1,
                              const char *n2) {
    tl_sft_dataset ds;
    memset(&ds, 0x5a, sizeof ds);
    tl_error err = {0};
    tl_status st = tl_sft_open(path, model_vocab, &ds, &err);
    printf("  %-34s -> %s\n", label, err.msg);
    const char *needles[2] = {n1, n2};
    fx_check_input_error(label, path, st, &err, needles, 2);
    CHECK(ds.tokens == NULL && ds.user_names == NULL && ds.path == NULL, "%s: failed open must leave the struct "
          "empty", label);
    tl_sft_free(&ds); /* must be safe after a failure */
}

static void expect_error(const spec *s, int model_vocab, const char *label, const char *n1, const char *n2) {
    char path[512];
    write_spec(s, path, sizeof path);
    expect_error_path(path, model_vocab, label, n1, n2);
}

/* A base that every malformed case starts from: a few examples, all with tokens, users 0..2 used. */
static void base_spec(spec *s) {
    random_spec(s, 50);
    int n = 6;
    s->offsets[0] = 0;
    for (int i = 0; i < n; i++) {
        int len = rnd_int(2, 8);
        s->offsets[i + 1] = s->offsets[i] + len;
        s->prompt[i] = rnd_int(0, len - 1);
        s->user[i] = i % 3;
        for (int t = 0; t < len; t++) s->tokens[s->offsets[i] + t] = rnd_int(0, 49);
    }
    s->n_tok = s->offsets[n];
    s->n_off = n + 1;
    s->n_prompt = s->n_user = n;
}

static void test_valid(void) {
    for (int rep = 0; rep < 6; rep++) {
        spec s;
        random_spec(&s, 100);
        s.names_style = rep % 4;
        s.has_groups = rep % 2;
        s.kind_vlen = rep % 3 == 0;
        s.fmt_type = rep % 2 ? H5T_STD_I32LE : H5T_STD_I64BE;
        s.vocab_attr = rep % 3 == 1 ? 100 : 0;
        char label[64];
        snprintf(label, sizeof label, "valid rep %d style %d", rep, s.names_style);
        expect_valid(&s, rep % 2 ? 100 : 0, label);
    }
    /* Big-endian storage is still int32/int64: the reader converts. */
    spec s;
    random_spec(&s, 100);
    s.tok_type = H5T_STD_I32BE;
    s.off_type = H5T_STD_I64BE;
    expect_valid(&s, 100, "big-endian integers");

    /* Space-padded names keep their trailing spaces (only NULs are padding); a NUL-terminated fixed string
     * whose bytes after the terminator are NUL reads up to the terminator. */
    random_spec(&s, 100);
    s.names_style = STR_FIXED_SPACEPAD;
    snprintf(s.names[0], sizeof s.names[0], "sp ace  ");
    expect_valid(&s, 0, "space-padded name keeps spaces");
    random_spec(&s, 100);
    s.names_style = STR_FIXED_NULLPAD;
    s.names_fixed_size = (int)strlen(s.names[1]); /* the longest-fitting name has no padding at all */
    size_t w = strlen(s.names[1]) < sizeof s.names[0] ? strlen(s.names[1]) : sizeof s.names[0] - 1;
    for (int u = 0; u < s.n_users && u < 8; u++)
        if (strlen(s.names[u]) > w) s.names[u][w] = '\0';
    expect_valid(&s, 0, "exact-width fixed strings");
}

static void test_errors(void) {
    spec s;
    char path[512];

    snprintf(path, sizeof path, "%s/does_not_exist.h5", g_dir);
    expect_error_path(path, 0, "missing file", "cannot open", NULL);
    snprintf(path, sizeof path, "%s/not_hdf5.h5", g_dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) {
        fputs("this is not an HDF5 file, just some text long enough to have a header\n", f);
        fclose(f);
    }
    expect_error_path(path, 0, "not hdf5", "not an HDF5 file", NULL);
    expect_error_path(g_dir, 0, "a directory", "is a directory", NULL);

    static const struct {
        unsigned omit;
        const char *name;
    } missing[] = {{OMIT_TOKENS, "/sft/tokens"},   {OMIT_OFFSETS, "/sft/offsets"}, {OMIT_PROMPT, "/sft/prompt_len"},
                   {OMIT_USER, "/sft/user"},       {OMIT_NAMES, "/users/name"},    {OMIT_SFT_GROUP, "/sft/tokens"},
                   {OMIT_FORMAT, "tailor_format"}, {OMIT_KIND, "kind"}};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        base_spec(&s);
        s.omit = missing[i].omit;
        char label[64];
        snprintf(label, sizeof label, "missing %s", missing[i].name);
        expect_error(&s, 0, label, missing[i].name, "missing");
    }

    base_spec(&s);
    s.tok_type = H5T_IEEE_F32LE;
    expect_error(&s, 0, "float tokens", "/sft/tokens", "expected int32");
    base_spec(&s);
    s.tok_type = H5T_STD_I64LE;
    expect_error(&s, 0, "int64 tokens", "/sft/tokens", "expected int32");
    base_spec(&s);
    s.tok_type = H5T_STD_U32LE;
    expect_error(&s, 0, "uint32 tokens", "/sft/tokens", "expected int32");
    base_spec(&s);
    s.off_type = H5T_STD_I32LE;
    expect_error(&s, 0, "int32 offsets", "/sft/offsets", "expected int64");
    base_spec(&s);
    s.prompt_type = H5T_IEEE_F64LE;
    expect_error(&s, 0, "float prompt_len", "/sft/prompt_len", "expected int32");
    base_spec(&s);
    s.user_type = H5T_STD_I16LE;
    expect_error(&s, 0, "int16 user", "/sft/user", "expected int32");
    base_spec(&s);
    s.tok_rank2 = 1;
    expect_error(&s, 0, "rank-2 tokens", "/sft/tokens", "rank 2");

    base_spec(&s);
    s.offsets[3] = s.offsets[2] - 1;
    expect_error(&s, 0, "decreasing offsets", "/sft/offsets", "decreasing at index 3");
    base_spec(&s);
    s.offsets[0] = 1;
    expect_error(&s, 0, "offsets[0] != 0", "/sft/offsets", "offsets[0]");
    base_spec(&s);
    s.offsets[s.n_off - 1] -= 1;
    expect_error(&s, 0, "last offset != T", "/sft/offsets", "last offset");
    base_spec(&s);
    s.n_tok += 1; /* a stray token past the last offset */
    expect_error(&s, 0, "tokens longer than last offset", "/sft/offsets", "last offset");

    base_spec(&s);
    s.tokens[s.offsets[4] + 1] = 50;
    expect_error(&s, 50, "token >= vocab", "/sft/tokens", "example 4 position 1");
    base_spec(&s);
    s.tokens[s.offsets[4] + 1] = 50;
    expect_valid(&s, 0, "token beyond vocab accepted when model_vocab <= 0");
    base_spec(&s);
    s.tokens[s.offsets[2]] = -3;
    expect_error(&s, 0, "negative token", "/sft/tokens", "example 2 position 0");
    base_spec(&s);
    s.vocab_attr = 30;
    s.tokens[s.offsets[1]] = 40;
    expect_error(&s, 0, "token >= vocab_size attribute", "/sft/tokens", "vocab_size");
    base_spec(&s);
    s.vocab_attr = 60;
    expect_error(&s, 50, "vocab_size attr > model vocab", "vocab_size", "60");
    base_spec(&s);
    s.vocab_attr = 50;
    expect_valid(&s, 50, "vocab_size attr == model vocab");

    base_spec(&s);
    s.user[5] = s.n_users;
    expect_error(&s, 0, "user index out of range", "/sft/user", "example 5");
    base_spec(&s);
    s.user[0] = -1;
    expect_error(&s, 0, "negative user index", "/sft/user", "example 0");
    base_spec(&s);
    s.prompt[2] = (int32_t)(s.offsets[3] - s.offsets[2] + 1);
    expect_error(&s, 0, "prompt_len > length", "/sft/prompt_len", "example 2");
    base_spec(&s);
    s.prompt[1] = -1;
    expect_error(&s, 0, "negative prompt_len", "/sft/prompt_len", "example 1");
    /* nothing to train: every example all prompt (or shorter than 2 tokens); one response token makes it valid */
    base_spec(&s);
    for (int i = 0; i < 6; i++) s.prompt[i] = (int32_t)(s.offsets[i + 1] - s.offsets[i]);
    expect_error(&s, 0, "no trainable example", "/sft/prompt_len", "no example has a token to train on");
    s.prompt[4] -= 1;
    expect_valid(&s, 0, "one trainable example");

    base_spec(&s);
    s.n_off = 1;
    s.n_tok = 0;
    s.n_prompt = s.n_user = 0;
    expect_error(&s, 0, "empty dataset", "/sft/offsets", "empty dataset");
    base_spec(&s);
    s.n_off = 0;
    expect_error(&s, 0, "no offsets at all", "/sft/offsets", NULL);

    base_spec(&s);
    s.fmt = 2;
    expect_error(&s, 0, "wrong tailor_format", "tailor_format", "expected 1");
    base_spec(&s);
    s.fmt_type = H5T_IEEE_F32LE;
    expect_error(&s, 0, "float tailor_format", "tailor_format", "integer");
    base_spec(&s);
    s.kind = "dpo";
    expect_error(&s, 0, "wrong kind", "kind", "expected \"sft\"");
    base_spec(&s);
    s.kind = "sft";
    s.kind_vlen = 1;
    expect_valid(&s, 0, "vlen kind");

    base_spec(&s);
    snprintf(s.names[2], sizeof s.names[2], "%s", s.names[0]);
    expect_error(&s, 0, "duplicate user names", "/users/name", "duplicate");
    base_spec(&s);
    s.names_style = STR_VLEN;
    snprintf(s.names[1], sizeof s.names[1], "%s", s.names[0]);
    expect_error(&s, 0, "duplicate vlen user names", "/users/name", "duplicate");
    base_spec(&s);
    s.names[1][0] = '\0';
    expect_error(&s, 0, "empty user name", "/users/name", "empty");
    base_spec(&s);
    snprintf(s.names[1], sizeof s.names[1], "bad\xff\xfe");
    expect_error(&s, 0, "invalid UTF-8 name", "/users/name", "UTF-8");

    base_spec(&s);
    s.n_user -= 1;
    expect_error(&s, 0, "user shorter than prompt_len", "/sft/user", "length 5");
    base_spec(&s);
    s.n_prompt -= 1;
    expect_error(&s, 0, "prompt_len shorter than offsets", "/sft/prompt_len", "length 5");
}

/* ---- tl_h5_isolated: a child's crash, hang or error becomes one message naming the file ---- */
static tl_status job_ok(const char *path, void *arg, tl_error *err) {
    (void)path, (void)arg, (void)err;
    return TL_OK;
}
static tl_status job_input(const char *path, void *arg, tl_error *err) {
    (void)arg;
    return tl_fail(err, TL_ERR_INPUT, "%s: /sft/tokens: found by the child", path);
}
static tl_status job_segv(const char *path, void *arg, tl_error *err) {
    (void)path, (void)err;
    raise(SIGSEGV);
    return *(volatile int *)arg ? TL_OK : TL_ERR_RUNTIME;
}
static tl_status job_abort(const char *path, void *arg, tl_error *err) {
    (void)path, (void)arg, (void)err;
    abort();
    return TL_OK;
}
static tl_status job_hang(const char *path, void *arg, tl_error *err) {
    (void)path, (void)arg, (void)err;
    for (volatile int i = 0; i >= 0; i = 0) sleep(1);
    return TL_OK;
}

static void test_isolation(void) {
    tl_error e;
    int zero = 0;
    const char *path = "/no/such/dir/f.h5";
    unsetenv("TAILOR_HDF5_ISOLATE");
    unsetenv("TAILOR_HDF5_TIMEOUT_S");
    memset(&e, 0, sizeof e);
    CHECK(tl_h5_isolated(path, job_ok, NULL, &e) == TL_OK, "ok job: %s", e.msg);
    CHECK(tl_h5_isolated(path, job_input, NULL, &e) == TL_ERR_INPUT && !strcmp(e.msg, "/no/such/dir/f.h5: "
          "/sft/tokens: found by the child"), "the child's error is passed on: %s", e.msg);
    CHECK(tl_h5_isolated(path, job_segv, &zero, &e) == TL_ERR_INPUT && strstr(e.msg, "f.h5: libhdf5 crashed") &&
          !strchr(e.msg, '\n'), "segv: %s", e.msg);
    CHECK(tl_h5_isolated(path, job_abort, NULL, &e) == TL_ERR_INPUT && strstr(e.msg, "f.h5: libhdf5 crashed"),
          "abort: %s", e.msg);
    setenv("TAILOR_HDF5_TIMEOUT_S", "1", 1);
    CHECK(tl_h5_isolated(path, job_hang, NULL, &e) == TL_ERR_INPUT && strstr(e.msg, "f.h5: libhdf5 hung") &&
          strstr(e.msg, "1 s"), "hang: %s", e.msg);
    setenv("TAILOR_HDF5_TIMEOUT_S", "0", 1);
    CHECK(tl_h5_isolated(path, job_ok, NULL, &e) == TL_ERR_INPUT && strstr(e.msg, "TAILOR_HDF5_TIMEOUT_S"),
          "timeout 0: %s", e.msg);
    unsetenv("TAILOR_HDF5_TIMEOUT_S");
    setenv("TAILOR_HDF5_ISOLATE", "0", 1); /* trusted: the job is not run at all */
    CHECK(tl_h5_isolated(path, job_segv, &zero, &e) == TL_OK, "isolation off: %s", e.msg);
    setenv("TAILOR_HDF5_ISOLATE", "2", 1);
    CHECK(tl_h5_isolated(path, job_ok, NULL, &e) == TL_ERR_INPUT && strstr(e.msg, "TAILOR_HDF5_ISOLATE"),
          "isolate 2: %s", e.msg);
    unsetenv("TAILOR_HDF5_ISOLATE");
}

/* tl_h5_array (data build's bounded check): random ranges of a random file read back exactly what was written;
 * open applies tl_h5_read_i32/i64's checks (dtype) and a range beyond the end is an error, not a read. */
static void test_array(void) {
    for (int rep = 0; rep < 30; rep++) {
        spec s;
        random_spec(&s, 1000);
        char path[512];
        write_spec(&s, path, sizeof path);
        tl_h5_reader *r = NULL;
        tl_error e = {0};
        CHECK_OK(tl_h5_reader_open(path, &r, &e), e);
        if (!r) continue;
        tl_h5_array *a = NULL, *o = NULL;
        int64_t nt = -1, no = -1;
        CHECK_OK(tl_h5_array_open(r, "/sft/tokens", 4, &a, &nt, &e), e);
        CHECK_OK(tl_h5_array_open(r, "/sft/offsets", 8, &o, &no, &e), e);
        CHECK(nt == s.n_tok && no == s.n_off, "array lengths %lld %lld", (long long)nt, (long long)no);
        for (int k = 0; a && o && k < 20; k++) {
            int32_t tb[256];
            int64_t ob[64];
            int64_t st = rnd_int(0, (int)nt), n = rnd_int(0, (int)(nt - st));
            memset(tb, 0x5a, sizeof tb);
            CHECK_OK(tl_h5_array_read(a, st, n, tb, &e), e);
            CHECK(memcmp(tb, s.tokens + st, (size_t)n * 4) == 0, "tokens [%lld, +%lld) differ", (long long)st,
                  (long long)n);
            st = rnd_int(0, (int)no), n = rnd_int(0, (int)(no - st));
            CHECK_OK(tl_h5_array_read(o, st, n, ob, &e), e);
            CHECK(memcmp(ob, s.offsets + st, (size_t)n * 8) == 0, "offsets [%lld, +%lld) differ", (long long)st,
                  (long long)n);
        }
        int32_t one;
        if (a) CHECK(tl_h5_array_read(a, nt, 1, &one, &e) == TL_ERR_RUNTIME && strstr(e.msg, "/sft/tokens"),
                     "a read past the end: %s", e.msg);
        tl_h5_array *bad = NULL;
        int64_t nb = 0;
        CHECK(tl_h5_array_open(r, "/sft/tokens", 8, &bad, &nb, &e) == TL_ERR_INPUT && !bad &&
                  strstr(e.msg, "/sft/tokens: dtype int32, expected int64"), "wrong width: %s", e.msg);
        CHECK(tl_h5_array_open(r, "/sft/nothing", 4, &bad, &nb, &e) == TL_ERR_INPUT && !bad &&
                  strstr(e.msg, "missing dataset"), "missing: %s", e.msg);
        tl_h5_array_close(a);
        tl_h5_array_close(o);
        CHECK_OK(tl_h5_reader_close(r, TL_OK, &e), e);
        remove(path);
    }
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the test's own expected failures must not print stacks */
    test_isolation();
    g_rng = 0x1234567ULL ^ (uint64_t)getpid();
    printf("test_dataset rng seed %llu\n", (unsigned long long)g_rng);
    if (fx_scratch_init("tl_test_dataset")) return 1;
    test_valid();
    test_errors();
    test_array();
    /* clean up the scratch directory */
    char p[512];
    snprintf(p, sizeof p, "%s/not_hdf5.h5", g_dir);
    remove(p);
    fx_scratch_clean("f");
    return tl_check_done("test_dataset");
}
