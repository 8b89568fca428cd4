/* test_safetensors: the safetensors reader, writer and HF model-directory source.
 *
 * Round trips through the writer on fresh random data; hand-built F16/BF16/F64/I64 files checked against
 * independently computed conversions (all 65536 F16 values); every kind of corrupt header is TL_ERR_INPUT
 * naming the file; sharded directories with a missing shard or a lying index; atomic writes leave no
 * temporary file behind, also when they fail. */
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_fs_fixture.h"
#include "tests/lib/tl_rng_xorshift.h"

static char g_dir[512];

/* An expected failure: code TL_ERR_INPUT and every given substring in the one-line message. */
static void expect_input_err(tl_status s, const tl_error *e, const char *what, const char *sub1, const char *sub2,
                             int line) {
    if (s != TL_ERR_INPUT || e->code != TL_ERR_INPUT) {
        fprintf(stderr, "line %d (%s): expected TL_ERR_INPUT, got %d (%s)\n", line, what, (int)s,
                s ? e->msg : "ok");
        g_fail++;
        return;
    }
    if ((sub1 && !strstr(e->msg, sub1)) || (sub2 && !strstr(e->msg, sub2)) || strchr(e->msg, '\n')) {
        fprintf(stderr, "line %d (%s): message '%s' lacks '%s' / '%s'\n", line, what, e->msg, sub1 ? sub1 : "",
                sub2 ? sub2 : "");
        g_fail++;
    }
}
#define EXPECT_INPUT_ERR(s, e, sub1, sub2) expect_input_err((s), &(e), #s, (sub1), (sub2), __LINE__)

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_dir, name); }

static void write_raw(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

/* A safetensors file from a header text and a data section, header padded to 8 bytes. */
static void write_st(const char *path, const char *header, const void *data, size_t ndata) {
    size_t hn = strlen(header), padded = (hn + 7) / 8 * 8;
    unsigned char *buf = calloc(8 + padded + ndata + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, hn);
    memset(buf + 8 + hn, ' ', padded - hn);
    if (ndata) memcpy(buf + 8 + padded, data, ndata);
    write_raw(path, buf, 8 + padded + ndata);
    free(buf);
}

/* Number of directory entries whose name contains `sub`. */
static int count_entries(const char *dir, const char *sub) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, sub)) n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------------------------- round trip */

static void test_roundtrip(void) {
    char path[600];
    path_in(path, sizeof path, "rt.safetensors");
    int64_t s_a[2] = {3, 5}, s_b[1] = {7}, s_z[2] = {0, 4}, s_i[1] = {6}, s_c[3] = {2, 3, 4};
    float a[15], b[7], scalar[1], c[24];
    for (int i = 0; i < 15; i++) a[i] = rndf();
    for (int i = 0; i < 7; i++) b[i] = rndf();
    for (int i = 0; i < 24; i++) c[i] = rndf();
    scalar[0] = rndf();
    int64_t iv[6];
    for (int i = 0; i < 6; i++) iv[i] = (int64_t)rnd();
    tl_error e = {0};
    tl_st_writer *w = tl_st_writer_new();
    CHECK(w != NULL);
    CHECK_OK(tl_st_writer_add_f32(w, "layer.a", s_a, 2, a, &e), e);
    CHECK_OK(tl_st_writer_add_f32(w, "b \"quoted\\\"", s_b, 1, b, &e), e);
    CHECK_OK(tl_st_writer_add_f32(w, "scalar", NULL, 0, scalar, &e), e);
    CHECK_OK(tl_st_writer_add_f32(w, "empty", s_z, 2, NULL, &e), e);
    CHECK_OK(tl_st_writer_add_bytes(w, "step", "I64", s_i, 1, iv, sizeof iv, &e), e);
    CHECK_OK(tl_st_writer_add_f32(w, "c3", s_c, 3, c, &e), e);
    CHECK_OK(tl_st_writer_meta(w, "format", "pt", &e), e);
    CHECK_OK(tl_st_writer_meta(w, "note", "line1\nline2 \"q\" \\ é", &e), e);
    /* writer-side misuse is refused, not written */
    CHECK(tl_st_writer_add_f32(w, "layer.a", s_a, 2, a, &e) != TL_OK);
    CHECK(tl_st_writer_add_bytes(w, "bad", "I64", s_i, 1, iv, sizeof iv - 8, &e) != TL_OK);
    CHECK(tl_st_writer_add_bytes(w, "bad", "NOPE", s_i, 1, iv, sizeof iv, &e) != TL_OK);
    CHECK_OK(tl_st_writer_write(w, path, &e), e);
    tl_st_writer_free(w);
    CHECK(count_entries(g_dir, ".tmp.") == 0);

    /* the header length keeps the data 8-byte aligned */
    FILE *fp = fopen(path, "rb");
    unsigned char lb[8] = {0};
    CHECK(fp && fread(lb, 1, 8, fp) == 8);
    if (fp) fclose(fp);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | lb[i];
    CHECK(hl % 8 == 0 && hl > 0);

    tl_st_file *f = NULL;
    tl_status s = tl_st_open(path, &f, &e);
    CHECK_OK(s, e);
    if (s != TL_OK) return;
    CHECK(tl_st_count(f) == 6);
    CHECK(strcmp(tl_st_path(f), path) == 0);
    /* insertion order is the header order */
    CHECK(strcmp(tl_st_get(f, 0)->name, "layer.a") == 0);
    CHECK(strcmp(tl_st_get(f, 5)->name, "c3") == 0);
    CHECK(tl_st_get(f, 6) == NULL);
    const tl_st_tensor *t = tl_st_find(f, "layer.a");
    CHECK(t && t->dtype == TL_DT_F32 && strcmp(t->dtype_name, "F32") == 0 && t->ndim == 2 && t->shape[0] == 3 &&
          t->shape[1] == 5 && t->end - t->begin == 60);
    CHECK(tl_st_find(f, "nope") == NULL);
    CHECK(strcmp(tl_st_metadata(f, "format"), "pt") == 0);
    CHECK(strcmp(tl_st_metadata(f, "note"), "line1\nline2 \"q\" \\ é") == 0);
    CHECK(tl_st_metadata(f, "absent") == NULL);

    float ra[15], rb[7], rs[1], rc[24];
    for (int i = 0; i < 15; i++) ra[i] = NAN;
    for (int i = 0; i < 7; i++) rb[i] = NAN;
    for (int i = 0; i < 24; i++) rc[i] = NAN;
    rs[0] = NAN;
    CHECK_OK(tl_st_read_f32(f, "layer.a", s_a, 2, ra, &e), e);
    CHECK_OK(tl_st_read_f32(f, "b \"quoted\\\"", s_b, 1, rb, &e), e);
    CHECK_OK(tl_st_read_f32(f, "scalar", NULL, 0, rs, &e), e);
    CHECK_OK(tl_st_read_f32(f, "c3", s_c, 3, rc, &e), e);
    CHECK(memcmp(ra, a, sizeof a) == 0);
    CHECK(memcmp(rb, b, sizeof b) == 0);
    CHECK(memcmp(rc, c, sizeof c) == 0);
    CHECK(memcmp(rs, scalar, sizeof scalar) == 0);
    CHECK_OK(tl_st_read_f32(f, "empty", s_z, 2, ra, &e), e);
    t = tl_st_find(f, "step");
    CHECK(t && t->dtype == TL_DT_I64 && t->ndim == 1 && t->shape[0] == 6);
    int64_t riv[6] = {0};
    CHECK_OK(tl_st_read_bytes(f, "step", riv, sizeof riv, &e), e);
    CHECK(memcmp(riv, iv, sizeof iv) == 0);
    EXPECT_INPUT_ERR(tl_st_read_bytes(f, "step", riv, sizeof riv - 8, &e), e, path, "'step'");
    /* integers are not silently reinterpreted as floats */
    EXPECT_INPUT_ERR(tl_st_read_f32(f, "step", s_i, 1, ra, &e), e, path, "I64");
    /* shape check against what the caller expects */
    int64_t wrong[2] = {5, 3};
    EXPECT_INPUT_ERR(tl_st_read_f32(f, "layer.a", wrong, 2, ra, &e), e, path,
                     "tensor 'layer.a' has shape [3, 5], expected [5, 3]");
    int64_t flat[1] = {15};
    EXPECT_INPUT_ERR(tl_st_read_f32(f, "layer.a", flat, 1, ra, &e), e, "[3, 5]", "expected [15]");
    EXPECT_INPUT_ERR(tl_st_read_f32(f, "missing", flat, 1, ra, &e), e, path, "'missing'");
    tl_st_close(f);

    /* rewriting replaces the file */
    w = tl_st_writer_new();
    CHECK_OK(tl_st_writer_add_f32(w, "only", s_b, 1, rb, &e), e);
    CHECK_OK(tl_st_writer_write(w, path, &e), e);
    tl_st_writer_free(w);
    CHECK_OK(tl_st_open(path, &f, &e), e);
    if (f) {
        CHECK(tl_st_count(f) == 1 && tl_st_find(f, "only") && !tl_st_metadata(f, "format"));
        tl_st_close(f);
    }
}

/* A failed write leaves neither a temporary file nor a half-written target. */
static void test_atomic_failure(void) {
    char sub[600];
    path_in(sub, sizeof sub, "adir");
    CHECK(mkdir(sub, 0755) == 0);
    int64_t sh[1] = {4};
    float v[4] = {1, 2, 3, 4};
    tl_error e = {0};
    tl_st_writer *w = tl_st_writer_new();
    CHECK_OK(tl_st_writer_add_f32(w, "x", sh, 1, v, &e), e);
    /* renaming a file onto a directory fails after the data was written */
    CHECK(tl_st_writer_write(w, sub, &e) == TL_ERR_RUNTIME);
    CHECK(strstr(e.msg, sub) != NULL);
    CHECK(count_entries(g_dir, ".tmp.") == 0);
    char nodir[700];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.safetensors", g_dir);
    CHECK(tl_st_writer_write(w, nodir, &e) == TL_ERR_RUNTIME);
    tl_st_writer_free(w);
    CHECK(count_entries(g_dir, ".tmp.") == 0);
    char p[600];
    path_in(p, sizeof p, "atomic.bin");
    CHECK_OK(tl_write_file_atomic(p, "hello", 5, &e), e);
    FILE *fp = fopen(p, "rb");
    char buf[16] = {0};
    CHECK(fp && fread(buf, 1, sizeof buf, fp) == 5 && memcmp(buf, "hello", 5) == 0);
    if (fp) fclose(fp);
    CHECK(count_entries(g_dir, ".tmp.") == 0);
}

/* ---------------------------------------------------------------------------------------- conversions */

/* f16 value computed from its definition, not from bits */
static float f16_ref(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v;
    if (exp == 31) v = man ? NAN : INFINITY;
    else if (exp == 0) v = ldexp((double)man, -24);
    else v = ldexp((double)(1024 + man), exp - 25);
    return (float)(sign ? -v : v);
}

static int same_float(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return a == b && signbit(a) == signbit(b);
}

static void test_conversions(void) {
    for (uint32_t h = 0; h < 65536; h++)
        if (!same_float(tl_f16_to_f32((uint16_t)h), f16_ref((uint16_t)h))) {
            fprintf(stderr, "f16 0x%04x: got %g expected %g\n", h, (double)tl_f16_to_f32((uint16_t)h),
                    (double)f16_ref((uint16_t)h));
            g_fail++;
            break;
        }
    CHECK(tl_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(tl_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(isinf(tl_f16_to_f32(0xfc00)) && tl_f16_to_f32(0xfc00) < 0);
    /* bf16 -> f32 is exact; f32 -> bf16 rounds to nearest, ties to even */
    CHECK(tl_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(tl_bf16_to_f32(0xc040) == -3.0f);
    float x;
    uint32_t bits;
    bits = 0x3f808000u; /* 1 + 2^-8: halfway between 0x3f80 and 0x3f81, ties to even */
    memcpy(&x, &bits, 4);
    CHECK(tl_f32_to_bf16(x) == 0x3f80);
    bits = 0x3f818000u; /* halfway, odd below: up */
    memcpy(&x, &bits, 4);
    CHECK(tl_f32_to_bf16(x) == 0x3f82);
    bits = 0x3f80c000u;
    memcpy(&x, &bits, 4);
    CHECK(tl_f32_to_bf16(x) == 0x3f81);
    bits = 0x3f807fffu;
    memcpy(&x, &bits, 4);
    CHECK(tl_f32_to_bf16(x) == 0x3f80);
    CHECK(tl_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(isnan(tl_bf16_to_f32(tl_f32_to_bf16(NAN))));
    bits = 0x7f800001u; /* a nan whose payload sits only in the low bits must not become inf */
    memcpy(&x, &bits, 4);
    CHECK(isnan(tl_bf16_to_f32(tl_f32_to_bf16(x))));
    for (int i = 0; i < 1000; i++) { /* the bf16 nearest to x: no other bf16 is closer */
        float v = rndf() * 1000.0f;
        uint16_t b = tl_f32_to_bf16(v);
        double d = fabs((double)tl_bf16_to_f32(b) - v);
        CHECK(d <= fabs((double)tl_bf16_to_f32((uint16_t)(b + 1)) - v));
        CHECK(d <= fabs((double)tl_bf16_to_f32((uint16_t)(b - 1)) - v));
    }
}

/* F16 (all 65536 values), BF16 (random), F64 and I64 tensors in a file built by hand. */
static void test_handbuilt_dtypes(void) {
    enum { NF16 = 65536, NBF = 64, NF64 = 6 };
    size_t nbytes = NF16 * 2 + NBF * 2 + NF64 * 8 + 3 * 8;
    unsigned char *data = malloc(nbytes);
    uint16_t bf[NBF];
    for (uint32_t h = 0; h < NF16; h++) {
        uint16_t v = (uint16_t)h;
        memcpy(data + 2 * h, &v, 2);
    }
    for (int i = 0; i < NBF; i++) bf[i] = (uint16_t)rnd();
    memcpy(data + NF16 * 2, bf, sizeof bf);
    double dv[NF64] = {0.1, -1e300, 1e-50, 3.0, 123456789.123, -0.0};
    memcpy(data + NF16 * 2 + NBF * 2, dv, sizeof dv);
    int64_t iv[3] = {-5, INT64_MAX, 42};
    memcpy(data + NF16 * 2 + NBF * 2 + NF64 * 8, iv, sizeof iv);
    size_t o1 = NF16 * 2, o2 = o1 + NBF * 2, o3 = o2 + NF64 * 8, o4 = o3 + 24;
    char header[1024];
    snprintf(header, sizeof header,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[256,256],\"data_offsets\":[0,%zu]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[8,8],\"data_offsets\":[%zu,%zu]},"
             "\"d\":{\"dtype\":\"F64\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]},"
             "\"i\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[%zu,%zu]},"
             "\"__metadata__\":{\"k\":\"v\"}}",
             o1, o1, o2, NF64, o2, o3, o3, o4);
    char path[600];
    path_in(path, sizeof path, "hand.safetensors");
    write_st(path, header, data, nbytes);
    free(data);
    tl_st_file *f = NULL;
    tl_error e = {0};
    tl_status s = tl_st_open(path, &f, &e);
    CHECK_OK(s, e);
    if (s != TL_OK) return;
    CHECK(tl_st_count(f) == 4 && strcmp(tl_st_metadata(f, "k"), "v") == 0);
    CHECK(tl_st_find(f, "h")->dtype == TL_DT_F16 && tl_st_find(f, "b")->dtype == TL_DT_BF16 &&
          tl_st_find(f, "d")->dtype == TL_DT_F64 && tl_st_find(f, "i")->dtype == TL_DT_I64);
    float *out = malloc(NF16 * sizeof *out);
    for (int i = 0; i < NF16; i++) out[i] = -7.0f;
    int64_t sh[2] = {256, 256};
    CHECK_OK(tl_st_read_f32(f, "h", sh, 2, out, &e), e);
    int bad = 0;
    for (uint32_t h = 0; h < NF16; h++) bad += !same_float(out[h], f16_ref((uint16_t)h));
    CHECK(bad == 0);
    sh[0] = sh[1] = 8;
    for (int i = 0; i < NBF; i++) out[i] = -7.0f;
    CHECK_OK(tl_st_read_f32(f, "b", sh, 2, out, &e), e);
    bad = 0;
    for (int i = 0; i < NBF; i++) {
        uint32_t got;
        memcpy(&got, &out[i], 4);
        bad += got != ((uint32_t)bf[i] << 16);
    }
    CHECK(bad == 0);
    sh[0] = NF64;
    CHECK_OK(tl_st_read_f32(f, "d", sh, 1, out, &e), e);
    for (int i = 0; i < NF64; i++) CHECK(same_float(out[i], (float)dv[i]));
    CHECK(isinf(out[1]) && out[1] < 0);
    int64_t ri[3];
    CHECK_OK(tl_st_read_bytes(f, "i", ri, sizeof ri, &e), e);
    CHECK(ri[0] == -5 && ri[1] == INT64_MAX && ri[2] == 42);
    free(out);
    tl_st_close(f);
}

/* -------------------------------------------------------------------------------------- corrupt files */

static void expect_open_fails(const char *name, const char *header, const void *data, size_t ndata,
                              const char *sub, int line) {
    char path[600];
    path_in(path, sizeof path, name);
    write_st(path, header, data, ndata);
    tl_st_file *f = (tl_st_file *)(uintptr_t)1;
    tl_error e = {0};
    tl_status s = tl_st_open(path, &f, &e);
    expect_input_err(s, &e, name, path, sub, line);
    if (f != NULL) {
        fprintf(stderr, "line %d: out not cleared on failure\n", line);
        g_fail++;
        if (s == TL_OK) tl_st_close(f);
    }
}
#define OPEN_FAILS(name, header, data, n, sub) expect_open_fails(name, header, data, n, sub, __LINE__)

static void test_corrupt(void) {
    unsigned char data[64];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)rnd();
    char path[600];
    tl_error e = {0};
    tl_st_file *f = NULL;

    /* shorter than the length field */
    path_in(path, sizeof path, "short.safetensors");
    write_raw(path, "\x10\x00\x00", 3);
    EXPECT_INPUT_ERR(tl_st_open(path, &f, &e), e, path, "truncated header (needs 8 bytes, file has 3)");
    /* header length beyond the file */
    unsigned char hb[8 + 20] = {0};
    hb[0] = 0xe8, hb[1] = 0x03; /* 1000 */
    memcpy(hb + 8, "{\"a\":1}             ", 20);
    path_in(path, sizeof path, "hdrlen.safetensors");
    write_raw(path, hb, sizeof hb);
    EXPECT_INPUT_ERR(tl_st_open(path, &f, &e), e, path, "truncated header (needs 1008 bytes, file has 28)");
    /* absurd header length */
    memset(hb, 0, 8);
    hb[5] = 1; /* 2^40 */
    write_raw(path, hb, sizeof hb);
    EXPECT_INPUT_ERR(tl_st_open(path, &f, &e), e, path, "100 MB");
    /* a directory is not a file */
    EXPECT_INPUT_ERR(tl_st_open(g_dir, &f, &e), e, g_dir, "not a regular file");
    path_in(path, sizeof path, "does-not-exist.safetensors");
    EXPECT_INPUT_ERR(tl_st_open(path, &f, &e), e, path, "cannot open");

    OPEN_FAILS("json.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],", data, 8, "not valid JSON");
    OPEN_FAILS("garbage.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", data, 8,
               "not valid JSON");
    OPEN_FAILS("array.safetensors", "[1,2]", data, 8, "must be a JSON object");
    OPEN_FAILS("beyond.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 8,
               "tensor 'a': data_offsets [0, 16] go beyond the data section (8 bytes");
    OPEN_FAILS("overlap.safetensors",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               data, 16, "tensor 'b': bytes [4, 12) overlap tensor 'a' [0, 8)");
    OPEN_FAILS("overlap2.safetensors", /* found regardless of header order, and past a zero-size tensor */
               "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
               "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
               data, 16, "overlap tensor 'a'");
    OPEN_FAILS("size.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, 8,
               "tensor 'a': shape [3] of F32 needs 12 bytes, data_offsets hold 8");
    OPEN_FAILS("size16.safetensors", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", data, 16,
               "needs 8 bytes");
    OPEN_FAILS("neg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,2],\"data_offsets\":[0,8]}}", data, 8,
               "tensor 'a': shape[0] is -1, expected a non-negative integer");
    OPEN_FAILS("frac.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", data, 8,
               "shape[0] is 2.5");
    OPEN_FAILS("dims.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}",
               data, 8, "9 dimensions");
    OPEN_FAILS("order.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", data, 8,
               "end before begin");
    OPEN_FAILS("offs.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", data, 8,
               "tensor 'a': 'data_offsets' must be");
    OPEN_FAILS("nodtype.safetensors", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8,
               "tensor 'a': 'dtype' must be a string");
    OPEN_FAILS("noshape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data, 8,
               "tensor 'a': 'shape' must be an array");
    OPEN_FAILS("entry.safetensors", "{\"a\":[1]}", data, 8, "tensor 'a': entry must be an object");
    OPEN_FAILS("meta.safetensors",
               "{\"__metadata__\":{\"k\":3},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8,
               "__metadata__ 'k': value must be a string");
    OPEN_FAILS("dup.safetensors",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               data, 8, "tensor 'a': listed twice");

    /* unknown or non-float dtypes open (other tensors stay usable) but cannot be read as fp32 */
    path_in(path, sizeof path, "u8.safetensors");
    write_st(path,
             "{\"q\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"g\":{\"dtype\":\"Q4_K\",\"shape\":[3],\"data_offsets\":[4,6]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
             data, 12);
    tl_status s = tl_st_open(path, &f, &e);
    CHECK_OK(s, e);
    if (s == TL_OK) {
        float out[4] = {NAN, NAN, NAN, NAN};
        int64_t sh[1] = {4};
        CHECK(tl_st_find(f, "q")->dtype == TL_DT_OTHER && tl_st_find(f, "g")->dtype == TL_DT_OTHER);
        EXPECT_INPUT_ERR(tl_st_read_f32(f, "q", sh, 1, out, &e), e, path, "tensor 'q' has dtype U8");
        sh[0] = 3;
        EXPECT_INPUT_ERR(tl_st_read_f32(f, "g", sh, 1, out, &e), e, path, "Q4_K");
        sh[0] = 1;
        CHECK_OK(tl_st_read_f32(f, "f", sh, 1, out, &e), e);
        CHECK(memcmp(out, data + 8, 4) == 0);
        unsigned char raw[4];
        CHECK_OK(tl_st_read_bytes(f, "q", raw, 4, &e), e);
        CHECK(memcmp(raw, data, 4) == 0);
        tl_st_close(f);
    }
}

/* ------------------------------------------------------------------------------------ model directories */

static void write_tensor_file(const char *path, const char *const *names, int n, const int64_t *shape, int ndim,
                              float *const *vals) {
    tl_error e = {0};
    tl_st_writer *w = tl_st_writer_new();
    for (int i = 0; i < n; i++) CHECK_OK(tl_st_writer_add_f32(w, names[i], shape, ndim, vals[i], &e), e);
    CHECK_OK(tl_st_writer_write(w, path, &e), e);
    tl_st_writer_free(w);
}

static void test_model_dirs(void) {
    char d1[600], d2[600], p[700];
    tl_error e = {0};
    tl_tensor_src *src = (tl_tensor_src *)(uintptr_t)1;
    path_in(d1, sizeof d1, "m1");
    path_in(d2, sizeof d2, "m2");
    CHECK(mkdir(d1, 0755) == 0 && mkdir(d2, 0755) == 0);
    EXPECT_INPUT_ERR(tl_tensor_src_open(d1, &src, &e), e, NULL, NULL);
    CHECK(src == NULL);
    char want[700];
    snprintf(want, sizeof want, "%s: no model.safetensors or model.safetensors.index.json", d1);
    CHECK(strcmp(e.msg, want) == 0);

    int64_t sh[2] = {2, 3};
    float v[4][6];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 6; j++) v[i][j] = rndf();
    float *vp[4] = {v[0], v[1], v[2], v[3]};
    const char *names[4] = {"w.a", "w.b", "w.c", "w.d"};
    float out[6];

    /* one file */
    snprintf(p, sizeof p, "%s/model.safetensors", d1);
    write_tensor_file(p, names, 4, sh, 2, vp);
    tl_status s = tl_tensor_src_open(d1, &src, &e);
    CHECK_OK(s, e);
    if (s == TL_OK) {
        for (int i = 0; i < 4; i++) {
            CHECK(tl_tensor_src_has(src, names[i]));
            for (int j = 0; j < 6; j++) out[j] = NAN;
            CHECK_OK(tl_tensor_src_read_f32(src, names[i], sh, 2, out, &e), e);
            CHECK(memcmp(out, v[i], sizeof out) == 0);
        }
        const tl_st_tensor *t = tl_tensor_src_find(src, "w.c");
        CHECK(t && t->ndim == 2 && t->shape[1] == 3);
        CHECK(!tl_tensor_src_has(src, "w.e") && !tl_tensor_src_find(src, "w.e"));
        int64_t bad[2] = {3, 2};
        EXPECT_INPUT_ERR(tl_tensor_src_read_f32(src, "w.a", bad, 2, out, &e), e,
                         "tensor 'w.a' has shape [2, 3], expected [3, 2] (from config.json)", "model.safetensors");
        EXPECT_INPUT_ERR(tl_tensor_src_read_f32(src, "w.e", sh, 2, out, &e), e, d1, "'w.e'");
        tl_tensor_src_close(src);
    }

    /* shards: index maps a,b -> shard 1 and c,d -> shard 2 */
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", d2);
    write_tensor_file(p, names, 2, sh, 2, vp);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", d2);
    write_tensor_file(p, names + 2, 2, sh, 2, vp + 2);
    const char *index_ok = "{\"metadata\":{\"total_size\":96},\"weight_map\":{"
                           "\"w.a\":\"model-00001-of-00002.safetensors\",\"w.b\":\"model-00001-of-00002.safetensors\","
                           "\"w.c\":\"model-00002-of-00002.safetensors\",\"w.d\":\"model-00002-of-00002.safetensors\"}}";
    char ipath[700];
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", d2);
    write_raw(ipath, index_ok, strlen(index_ok));
    s = tl_tensor_src_open(d2, &src, &e);
    CHECK_OK(s, e);
    if (s == TL_OK) {
        for (int i = 3; i >= 0; i--) {
            for (int j = 0; j < 6; j++) out[j] = NAN;
            CHECK(tl_tensor_src_has(src, names[i]));
            CHECK_OK(tl_tensor_src_read_f32(src, names[i], sh, 2, out, &e), e);
            CHECK(memcmp(out, v[i], sizeof out) == 0);
        }
        CHECK(!tl_tensor_src_has(src, "w.e"));
        tl_tensor_src_close(src);
    }
    /* a shard the index names is missing */
    const char *index_missing = "{\"weight_map\":{\"w.a\":\"model-00001-of-00002.safetensors\","
                                "\"w.c\":\"model-00003-of-00003.safetensors\"}}";
    write_raw(ipath, index_missing, strlen(index_missing));
    EXPECT_INPUT_ERR(tl_tensor_src_open(d2, &src, &e), e, ipath, "shard 'model-00003-of-00003.safetensors'");
    CHECK(strstr(e.msg, "does not exist") && strstr(e.msg, "'w.c'"));
    /* the index claims a tensor its shard does not hold */
    const char *index_lies = "{\"weight_map\":{\"w.a\":\"model-00001-of-00002.safetensors\","
                             "\"w.c\":\"model-00001-of-00002.safetensors\"}}";
    write_raw(ipath, index_lies, strlen(index_lies));
    EXPECT_INPUT_ERR(tl_tensor_src_open(d2, &src, &e), e, ipath, "tensor 'w.c'");
    CHECK(strstr(e.msg, "does not hold it") != NULL);
    /* shard names cannot leave the directory */
    const char *index_path = "{\"weight_map\":{\"w.a\":\"../m1/model.safetensors\"}}";
    write_raw(ipath, index_path, strlen(index_path));
    EXPECT_INPUT_ERR(tl_tensor_src_open(d2, &src, &e), e, ipath, "same directory");
    write_raw(ipath, "{\"weight_map\": [1]}", 19);
    EXPECT_INPUT_ERR(tl_tensor_src_open(d2, &src, &e), e, ipath, "weight_map");
    write_raw(ipath, "{\"weight_map\": ", 15);
    EXPECT_INPUT_ERR(tl_tensor_src_open(d2, &src, &e), e, ipath, "JSON");
    /* a corrupt shard is reported with the shard's own name */
    write_raw(ipath, index_ok, strlen(index_ok));
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", d2);
    write_raw(p, "\x01\x02", 2);
    EXPECT_INPUT_ERR(tl_tensor_src_open(d2, &src, &e), e, p, "truncated header");
    CHECK(src == NULL);
}

/* Streamed tensors: bytes produced chunk by chunk while the file is written give the same file as the data in
 * memory; the producer sees every offset once, in order; a producer's error leaves no file behind. */
typedef struct {
    const unsigned char *src;
    uint64_t next;
    int calls, fail_at;
} producer;

static tl_status produce(void *ctx, uint64_t off, void *dst, uint64_t n, tl_error *err) {
    producer *p = ctx;
    if (off != p->next) return tl_fail(err, TL_ERR_RUNTIME, "offset %" PRIu64 " out of order", off);
    if (++p->calls == p->fail_at) return tl_fail(err, TL_ERR_RUNTIME, "producer failed on purpose");
    memcpy(dst, p->src + off, n);
    p->next = off + n;
    return TL_OK;
}

static int read_all(const char *path, unsigned char **out, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)len + 1);
    *n = fread(*out, 1, (size_t)len, f);
    fclose(f);
    return *n == (size_t)len;
}

static void test_stream(void) {
    enum { N = 1237 }; /* floats: not a multiple of the chunk */
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    for (int i = 0; i < N; i++) a[i] = rndf(), b[i] = -a[i] / 3.0f;
    int64_t shape[2] = {N, 1};
    char p1[600], p2[600], p3[600];
    path_in(p1, sizeof p1, "mem.safetensors");
    path_in(p2, sizeof p2, "stream.safetensors");
    path_in(p3, sizeof p3, "failed.safetensors");
    tl_error err = {0};
    tl_st_writer *w = tl_st_writer_new();
    CHECK_OK(tl_st_writer_add_f32(w, "a", shape, 2, a, &err), err);
    CHECK_OK(tl_st_writer_add_f32(w, "b", shape, 2, b, &err), err);
    CHECK_OK(tl_st_writer_meta(w, "k", "v", &err), err);
    CHECK_OK(tl_st_writer_write(w, p1, &err), err);
    tl_st_writer_free(w);
    producer pa = {(const unsigned char *)a, 0, 0, 0};
    w = tl_st_writer_new();
    CHECK_OK(tl_st_writer_add_stream(w, "a", "F32", shape, 2, N * 4, produce, &pa, 400, &err), err);
    CHECK_OK(tl_st_writer_add_f32(w, "b", shape, 2, b, &err), err);
    CHECK_OK(tl_st_writer_meta(w, "k", "v", &err), err);
    CHECK_OK(tl_st_writer_write(w, p2, &err), err);
    tl_st_writer_free(w);
    CHECK(pa.calls == (N * 4 + 399) / 400 && pa.next == N * 4, "producer: %d calls, reached byte %" PRIu64, pa.calls,
          pa.next);
    unsigned char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    CHECK(read_all(p1, &x, &nx) && read_all(p2, &y, &ny) && nx == ny && !memcmp(x, y, nx),
          "a streamed tensor must give the same file (%zu vs %zu bytes)", nx, ny);
    free(x), free(y);
    producer pf = {(const unsigned char *)a, 0, 0, 3};
    w = tl_st_writer_new();
    CHECK_OK(tl_st_writer_add_stream(w, "a", "F32", shape, 2, N * 4, produce, &pf, 400, &err), err);
    err = (tl_error){0};
    CHECK(tl_st_writer_write(w, p3, &err) == TL_ERR_RUNTIME && strstr(err.msg, "on purpose"), "failed producer: '%s'",
          err.msg);
    tl_st_writer_free(w);
    CHECK(access(p3, F_OK) != 0 && count_entries(g_dir, "failed.safetensors") == 0,
          "a failed stream must leave nothing behind");
    w = tl_st_writer_new();
    CHECK(tl_st_writer_add_stream(w, "a", "F32", shape, 2, N * 4 + 4, produce, &pf, 400, &err) == TL_ERR_RUNTIME,
          "a stream whose size does not match the shape must be refused");
    tl_st_writer_free(w);
    free(a), free(b);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/tl_st_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    g_rng = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    if (!g_rng) g_rng = 1;
    uint64_t seed = g_rng;
    test_roundtrip();
    test_atomic_failure();
    test_conversions();
    test_handbuilt_dtypes();
    test_corrupt();
    test_model_dirs();
    test_stream();
    rm_rf(g_dir);
    return tl_check_done_seed("test_safetensors", seed);
}
