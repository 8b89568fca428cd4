/* test_gguf: the GGUF reader on files written byte by byte here.
 *
 * Metadata of every value type through the typed accessors (and their wrong-type / missing-key errors); each
 * supported tensor type dequantized from blocks packed here from random element values by the layout rules
 * (so the expected floats are exact); the HF view of a small Llama (names, reversed shapes, q/k permuted
 * forward here as convert_hf_to_gguf.py does and read back un-permuted, config from metadata, RoPE variants,
 * refusals); every prefix of a valid file and a list of corrupt headers are TL_ERR_INPUT naming the file. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_gguf.h"
#include "data/tl_model_tokenizer.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_rng_xorshift.h"

static char g_path[512];

static void expect_input_err(tl_status s, const tl_error *e, const char *sub, int line) {
    if (s != TL_ERR_INPUT) {
        fprintf(stderr, "line %d: expected TL_ERR_INPUT, got %d (%s)\n", line, (int)s, s ? e->msg : "ok");
        g_fail++;
        return;
    }
    if ((sub && !strstr(e->msg, sub)) || !strstr(e->msg, g_path) || strchr(e->msg, '\n')) {
        fprintf(stderr, "line %d: message '%s' lacks '%s' or the path\n", line, e->msg, sub ? sub : "");
        g_fail++;
    }
}
#define EXPECT_ERR(s, e, sub) expect_input_err((s), &(e), (sub), __LINE__)

/* ------------------------------------------------------------------------------------------ a byte builder */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void u32(buf *b, uint32_t v) {
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    put(b, x, 4);
}
static void u64(buf *b, uint64_t v) {
    u32(b, (uint32_t)v);
    u32(b, (uint32_t)(v >> 32));
}
static void str(buf *b, const char *s) {
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void f32v(buf *b, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    u32(b, v);
}
static void kv_head(buf *b, const char *key, uint32_t type) {
    str(b, key);
    u32(b, type);
}
static void kv_str(buf *b, const char *key, const char *v) {
    kv_head(b, key, TL_GGUF_STRING);
    str(b, v);
}
static void kv_u32(buf *b, const char *key, uint32_t v) {
    kv_head(b, key, TL_GGUF_U32);
    u32(b, v);
}
static void kv_f32(buf *b, const char *key, float v) {
    kv_head(b, key, TL_GGUF_F32);
    f32v(b, v);
}

typedef struct {
    const char *name;
    int nd;
    int64_t ne[4];
    uint32_t type;
    const void *data;
    size_t nbytes;
} tdesc;

/* header + kvs (already serialized, n_kv entries) + tensor infos + aligned data, ending at the last tensor. */
static buf make_file(uint32_t version, const buf *kvs, int n_kv, const tdesc *t, int nt, uint32_t align) {
    buf b = {0};
    put(&b, "GGUF", 4);
    u32(&b, version);
    u64(&b, (uint64_t)nt);
    u64(&b, (uint64_t)n_kv);
    if (kvs->n) put(&b, kvs->p, kvs->n);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        str(&b, t[i].name);
        u32(&b, (uint32_t)t[i].nd);
        for (int d = 0; d < t[i].nd; d++) u64(&b, (uint64_t)t[i].ne[d]);
        u32(&b, t[i].type);
        u64(&b, off);
        off += (t[i].nbytes + align - 1) / align * align;
    }
    static const unsigned char zeros[256];
    put(&b, zeros, (align - b.n % align) % align);
    for (int i = 0; i < nt; i++) {
        put(&b, t[i].data, t[i].nbytes);
        if (i + 1 < nt) put(&b, zeros, (align - t[i].nbytes % align) % align);
    }
    return b;
}

static void write_file(const buf *b) {
    FILE *f = fopen(g_path, "wb");
    if (!f || fwrite(b->p, 1, b->n, f) != b->n || fclose(f) != 0) {
        perror(g_path);
        abort();
    }
}

static tl_status open_buf(const buf *b, tl_gguf **g, tl_error *err) {
    write_file(b);
    return tl_gguf_open(g_path, g, err);
}

/* ------------------------------------------------------------------------------------------ metadata */

static void test_metadata(void) {
    buf kv = {0};
    uint8_t u8 = (uint8_t)rnd();
    int8_t i8 = (int8_t)rnd();
    int16_t i16 = (int16_t)rnd();
    uint32_t uu = (uint32_t)rnd();
    int64_t i64 = -(int64_t)(rnd() >> 2);
    uint64_t big = (1ULL << 63) + (rnd() >> 40);
    float fv = rndf();
    double dv = rndf() * 1e-3;
    kv_head(&kv, "k.u8", TL_GGUF_U8), put(&kv, &u8, 1);
    kv_head(&kv, "k.i8", TL_GGUF_I8), put(&kv, &i8, 1);
    kv_head(&kv, "k.i16", TL_GGUF_I16), put(&kv, &i16, 2);
    kv_u32(&kv, "k.u32", uu);
    kv_head(&kv, "k.i64", TL_GGUF_I64), u64(&kv, (uint64_t)i64);
    kv_head(&kv, "k.u64big", TL_GGUF_U64), u64(&kv, big);
    kv_f32(&kv, "k.f32", fv);
    kv_head(&kv, "k.f64", TL_GGUF_F64), put(&kv, &dv, 8);
    kv_head(&kv, "k.bool", TL_GGUF_BOOL), put(&kv, "\1", 1);
    kv_str(&kv, "k.str", "hello");
    kv_head(&kv, "k.zstr", TL_GGUF_STRING), u64(&kv, 3), put(&kv, "a\0b", 3);
    kv_head(&kv, "k.arr_str", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_STRING), u64(&kv, 3);
    str(&kv, "x"), str(&kv, ""), str(&kv, "yz");
    int32_t ai[5];
    kv_head(&kv, "k.arr_i32", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_I32), u64(&kv, 5);
    for (int i = 0; i < 5; i++) ai[i] = (int32_t)rnd(), u32(&kv, (uint32_t)ai[i]);
    float af[4];
    kv_head(&kv, "k.arr_f32", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_F32), u64(&kv, 4);
    for (int i = 0; i < 4; i++) af[i] = rndf(), f32v(&kv, af[i]);
    buf b = make_file(2, &kv, 14, NULL, 0, 32);
    tl_gguf *g = NULL;
    tl_error e = {0};
    tl_status s = open_buf(&b, &g, &e);
    CHECK_OK(s, e);
    if (s != TL_OK) goto out;
    CHECK(tl_gguf_version(g) == 2 && tl_gguf_n_kv(g) == 14 && tl_gguf_n_tensors(g) == 0);
    int64_t iv = 0;
    double d = 0;
    CHECK_OK(tl_gguf_get_int(g, "k.u8", &iv, &e), e);
    CHECK(iv == u8);
    CHECK_OK(tl_gguf_get_int(g, "k.i8", &iv, &e), e);
    CHECK(iv == i8);
    CHECK_OK(tl_gguf_get_int(g, "k.i16", &iv, &e), e);
    CHECK(iv == i16);
    CHECK_OK(tl_gguf_get_int(g, "k.u32", &iv, &e), e);
    CHECK(iv == (int64_t)uu);
    CHECK_OK(tl_gguf_get_int(g, "k.i64", &iv, &e), e);
    CHECK(iv == i64);
    EXPECT_ERR(tl_gguf_get_int(g, "k.u64big", &iv, &e), e, "k.u64big");
    CHECK_OK(tl_gguf_get_float(g, "k.u64big", &d, &e), e);
    CHECK(d == (double)big);
    CHECK_OK(tl_gguf_get_float(g, "k.f32", &d, &e), e);
    CHECK(d == (double)fv);
    CHECK_OK(tl_gguf_get_float(g, "k.f64", &d, &e), e);
    CHECK(d == dv);
    EXPECT_ERR(tl_gguf_get_int(g, "k.f32", &iv, &e), e, "k.f32");
    int bo = 0;
    CHECK_OK(tl_gguf_get_bool(g, "k.bool", &bo, &e), e);
    CHECK(bo == 1);
    const char *sv = NULL;
    uint64_t len = 0;
    CHECK_OK(tl_gguf_get_str(g, "k.str", &sv, &len, &e), e);
    CHECK(sv && strcmp(sv, "hello") == 0 && len == 5);
    CHECK_OK(tl_gguf_get_str(g, "k.zstr", &sv, &len, &e), e);
    CHECK(len == 3 && sv && memcmp(sv, "a\0b", 4) == 0);
    EXPECT_ERR(tl_gguf_get_str(g, "k.u8", &sv, NULL, &e), e, "k.u8");
    EXPECT_ERR(tl_gguf_get_str(g, "k.missing", &sv, NULL, &e), e, "k.missing");
    const char *const *ss = NULL;
    const uint64_t *lens = NULL;
    uint64_t n = 0;
    CHECK_OK(tl_gguf_get_str_array(g, "k.arr_str", &ss, &lens, &n, &e), e);
    CHECK(n == 3 && strcmp(ss[0], "x") == 0 && strcmp(ss[1], "") == 0 && strcmp(ss[2], "yz") == 0 && lens[2] == 2);
    EXPECT_ERR(tl_gguf_get_str_array(g, "k.arr_i32", &ss, NULL, &n, &e), e, "array of strings");
    int64_t gi[5];
    CHECK_OK(tl_gguf_get_i64_array(g, "k.arr_i32", gi, 5, &e), e);
    for (int i = 0; i < 5; i++) CHECK(gi[i] == ai[i]);
    EXPECT_ERR(tl_gguf_get_i64_array(g, "k.arr_i32", gi, 4, &e), e, "5 elements");
    float gf[4];
    double gd[4];
    CHECK_OK(tl_gguf_get_f32_array(g, "k.arr_f32", gf, 4, &e), e);
    CHECK_OK(tl_gguf_get_f64_array(g, "k.arr_f32", gd, 4, &e), e);
    for (int i = 0; i < 4; i++) CHECK(gf[i] == af[i] && gd[i] == (double)af[i]);
    EXPECT_ERR(tl_gguf_get_i64_array(g, "k.arr_f32", gi, 4, &e), e, "not an integer");
    int ix = tl_gguf_find_key(g, "k.arr_f32");
    CHECK(ix >= 0 && tl_gguf_kv_type(g, ix) == TL_GGUF_ARRAY && tl_gguf_kv_array_type(g, ix) == TL_GGUF_F32 &&
          tl_gguf_kv_array_len(g, ix) == 4 && strcmp(tl_gguf_kv_key(g, ix), "k.arr_f32") == 0);
    CHECK(tl_gguf_find_key(g, "k.nope") == -1);
out:
    tl_gguf_close(g);
    free(b.p), free(kv.p);
}

/* ------------------------------------------------------------------------------------------ dequantization */

static uint16_t f16_of(float f) { /* only the exact powers of two used here: 2^e, e in [-14, 15] */
    int e;
    float m = frexpf(fabsf(f), &e);
    (void)m;
    return (uint16_t)((f < 0 ? 0x8000 : 0) | ((e - 1 + 15) << 10));
}

#define NQ 512 /* elements per tensor: two K-quant super-blocks, sixteen 32-blocks */

static void test_dequant(void) {
    static unsigned char q8[NQ / 32 * 34], q40[NQ / 32 * 18], q41[NQ / 32 * 20], q4k[NQ / 256 * 144],
        q6k[NQ / 256 * 210], f16b[NQ * 2], bf16b[NQ * 2], q5k[NQ / 256 * 176];
    static float x8[NQ], x40[NQ], x41[NQ], x4k[NQ], x6k[NQ], xf16[NQ], xbf16[NQ];
    const float pw[] = {0.5f, 0.25f, 2.0f, 0.125f, 1.0f, 4.0f};
    for (int blk = 0; blk < NQ / 32; blk++) {
        float d = pw[rnd() % 6], m = -pw[rnd() % 6];
        uint16_t hd = f16_of(d), hm = f16_of(m);
        unsigned char *b8 = q8 + blk * 34, *b40 = q40 + blk * 18, *b41 = q41 + blk * 20;
        memcpy(b8, &hd, 2), memcpy(b40, &hd, 2), memcpy(b41, &hd, 2), memcpy(b41 + 2, &hm, 2);
        for (int j = 0; j < 32; j++) {
            int8_t q = (int8_t)rnd();
            b8[2 + j] = (unsigned char)q;
            x8[blk * 32 + j] = q * d;
            int nib = (int)(rnd() & 15), nib1 = (int)(rnd() & 15);
            /* element j < 16: low nibble of byte j; element j >= 16: high nibble of byte j - 16 */
            if (j < 16) b40[2 + j] = (unsigned char)nib, b41[4 + j] = (unsigned char)nib1;
            else b40[2 + j - 16] |= (unsigned char)(nib << 4), b41[4 + j - 16] |= (unsigned char)(nib1 << 4);
            x40[blk * 32 + j] = (float)(nib - 8) * d;
            x41[blk * 32 + j] = (float)nib1 * d + m;
        }
    }
    for (int sb = 0; sb < NQ / 256; sb++) {
        /* Q4_K: 8 sub-blocks of 32, 6-bit scale and min each, packed as ggml's get_scale_min_k4 reads them */
        unsigned char *b = q4k + sb * 144;
        float d = pw[rnd() % 6], dmin = pw[rnd() % 6];
        uint16_t hd = f16_of(d), hdm = f16_of(dmin);
        memcpy(b, &hd, 2), memcpy(b + 2, &hdm, 2);
        int sc[8], mn[8];
        for (int j = 0; j < 8; j++) sc[j] = (int)(rnd() & 63), mn[j] = (int)(rnd() & 63);
        unsigned char *s = b + 4;
        for (int j = 0; j < 4; j++) {
            s[j] = (unsigned char)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
            s[j + 4] = (unsigned char)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
            s[j + 8] = (unsigned char)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
        }
        memset(b + 16, 0, 128);
        for (int i = 0; i < 256; i++) {
            int nib = (int)(rnd() & 15), chunk = i / 64, hi = (i % 64) / 32, l = i % 32, sub = i / 32;
            b[16 + chunk * 32 + l] |= (unsigned char)(hi ? nib << 4 : nib);
            x4k[sb * 256 + i] = d * (float)sc[sub] * (float)nib - dmin * (float)mn[sub];
        }
        /* Q6_K: 16 sub-blocks of 16 with int8 scales; 6-bit values split into ql nibbles and qh 2-bit pairs */
        unsigned char *c = q6k + sb * 210;
        memset(c, 0, 210);
        float d6 = pw[rnd() % 6];
        uint16_t h6 = f16_of(d6);
        memcpy(c + 208, &h6, 2);
        int8_t s6[16];
        for (int j = 0; j < 16; j++) s6[j] = (int8_t)rnd(), c[192 + j] = (unsigned char)s6[j];
        for (int i = 0; i < 256; i++) {
            int q = (int)(rnd() & 63), half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
            int qli = half * 64 + l + (quarter & 1) * 32;
            c[qli] |= (unsigned char)(quarter < 2 ? (q & 15) : (q & 15) << 4);
            c[128 + half * 32 + l] |= (unsigned char)((q >> 4) << (2 * quarter));
            int si = half * 8 + l / 16 + 2 * quarter;
            x6k[sb * 256 + i] = d6 * (float)s6[si] * (float)(q - 32);
        }
    }
    for (int i = 0; i < NQ; i++) {
        /* f16 and bf16 of exactly representable values (bf16 keeps 8 significant bits) */
        float v = (float)((int)(rnd() % 255) - 127) / 8.0f;
        uint32_t bits;
        memcpy(&bits, &v, 4);
        bf16b[2 * i] = (unsigned char)(bits >> 16), bf16b[2 * i + 1] = (unsigned char)(bits >> 24);
        xbf16[i] = v;
        int k = (int)(rnd() % 2047) - 1023; /* k / 64: |k| < 1024 fits an f16 mantissa */
        float w = (float)k / 64.0f;
        uint16_t h = 0;
        if (k != 0) {
            int e;
            float mnt = frexpf(fabsf(w), &e); /* w = mnt * 2^e, mnt in [0.5, 1) */
            h = (uint16_t)((k < 0 ? 0x8000 : 0) | ((e - 1 + 15) << 10) | ((int)(mnt * 2048.0f) - 1024));
        }
        f16b[2 * i] = (unsigned char)h, f16b[2 * i + 1] = (unsigned char)(h >> 8);
        xf16[i] = w;
    }
    memset(q5k, 0, sizeof q5k);
    const tdesc t[] = {
        {"q8", 2, {64, NQ / 64}, TL_GGML_Q8_0, q8, sizeof q8},     {"q40", 1, {NQ}, TL_GGML_Q4_0, q40, sizeof q40},
        {"q41", 2, {256, 2}, TL_GGML_Q4_1, q41, sizeof q41},       {"q4k", 2, {256, 2}, TL_GGML_Q4_K, q4k, sizeof q4k},
        {"q6k", 3, {256, 1, 2}, TL_GGML_Q6_K, q6k, sizeof q6k},   {"f16", 2, {32, 16}, TL_GGML_F16, f16b, sizeof f16b},
        {"bf16", 1, {NQ}, TL_GGML_BF16, bf16b, sizeof bf16b},     {"q5k", 1, {NQ}, 13, q5k, sizeof q5k},
    };
    const float *want[] = {x8, x40, x41, x4k, x6k, xf16, xbf16};
    buf kv = {0};
    buf b = make_file(3, &kv, 0, t, 8, 32);
    tl_gguf *g = NULL;
    tl_error e = {0};
    tl_status s = open_buf(&b, &g, &e);
    CHECK_OK(s, e);
    if (s == TL_OK) {
        float *y = malloc(NQ * sizeof *y);
        for (int k = 0; k < 7; k++) {
            for (int i = 0; i < NQ; i++) y[i] = NAN;
            s = tl_gguf_read_f32(g, t[k].name, y, NQ, &e);
            CHECK_OK(s, e);
            int bad = 0;
            for (int i = 0; i < NQ; i++) bad += !(y[i] == want[k][i]);
            if (bad) fprintf(stderr, "dequant %s: %d of %d values differ\n", t[k].name, bad, NQ);
            CHECK(bad == 0);
        }
        const tl_gguf_tensor *ti = tl_gguf_find_tensor(g, "q6k");
        CHECK(ti && ti->n_dims == 3 && ti->ne[2] == 2 && ti->nbytes == sizeof q6k && tl_gguf_tensor_numel(ti) == NQ);
        CHECK(strcmp(tl_gguf_type_name(TL_GGML_Q4_K), "Q4_K") == 0);
        EXPECT_ERR(tl_gguf_read_f32(g, "q5k", y, NQ, &e), e, "Q5_K");
        EXPECT_ERR(tl_gguf_read_f32(g, "q8", y, NQ - 1, &e), e, "q8");
        EXPECT_ERR(tl_gguf_read_f32(g, "nothere", y, NQ, &e), e, "nothere");
        free(y);
    }
    tl_gguf_close(g);
    free(b.p);
}

/* ------------------------------------------------------------------------------------------ the HF view */

enum { V = 10, H = 16, FF = 24, NH = 4, NKV = 2, HD = 6, L = 2 };

typedef struct {
    const char *rope;   /* NULL, "linear", "yarn" */
    const char *arch;   /* general.architecture */
    int rope_dim;       /* llama.rope.dimension_count */
    int drop_required;  /* leave out llama.feed_forward_length */
    int with_output;    /* output.weight (untied) */
} model_opts;

static float g_w[64][V * H > FF * H ? V * H : FF * H]; /* HF data per tensor index */

/* convert_hf_to_gguf's permute: HF row h*hd + i*hd/2 + j goes to GGUF row h*hd + 2*j + i. */
static void permute_rows(const float *hf, float *out, int rows, int cols, int n_head) {
    int hd = rows / n_head, half = hd / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < half; j++)
                memcpy(out + (size_t)(h * hd + 2 * j + i) * cols, hf + (size_t)(h * hd + i * half + j) * cols,
                       (size_t)cols * sizeof *out);
}

typedef struct {
    char hf[64], gg[64];
    int rows, cols; /* HF shape [rows, cols]; cols 0 for 1-D */
    int n_head;     /* q/k permutation heads, 0 = none */
} tspec;

static int model_specs(tspec *ts, int with_output) {
    int n = 0;
#define ADD(h, gname, r, c, p) (snprintf(ts[n].hf, 64, "%s", h), snprintf(ts[n].gg, 64, "%s", gname), ts[n].rows = r, ts[n].cols = c, ts[n].n_head = p, n++)
    ADD("model.embed_tokens.weight", "token_embd.weight", V, H, 0);
    ADD("model.norm.weight", "output_norm.weight", H, 0, 0);
    if (with_output) ADD("lm_head.weight", "output.weight", V, H, 0);
    for (int l = 0; l < L; l++) {
        char a[64], b[64];
#define LAYER(hs, gs, r, c, p) (snprintf(a, 64, "model.layers.%d.%s", l, hs), snprintf(b, 64, "blk.%d.%s", l, gs), ADD(a, b, r, c, p))
        LAYER("input_layernorm.weight", "attn_norm.weight", H, 0, 0);
        LAYER("self_attn.q_proj.weight", "attn_q.weight", NH * HD, H, NH);
        LAYER("self_attn.q_proj.bias", "attn_q.bias", NH * HD, 0, NH);
        LAYER("self_attn.k_proj.weight", "attn_k.weight", NKV * HD, H, NKV);
        LAYER("self_attn.k_proj.bias", "attn_k.bias", NKV * HD, 0, NKV);
        LAYER("self_attn.v_proj.weight", "attn_v.weight", NKV * HD, H, 0);
        LAYER("self_attn.o_proj.weight", "attn_output.weight", H, NH * HD, 0);
        LAYER("post_attention_layernorm.weight", "ffn_norm.weight", H, 0, 0);
        LAYER("mlp.gate_proj.weight", "ffn_gate.weight", FF, H, 0);
        LAYER("mlp.up_proj.weight", "ffn_up.weight", FF, H, 0);
        LAYER("mlp.down_proj.weight", "ffn_down.weight", H, FF, 0);
    }
    return n;
}

static buf model_file(const model_opts *o, tspec *ts, int *nts, float **gguf_data) {
    buf kv = {0};
    int nkv = 0;
    kv_str(&kv, "general.architecture", o->arch ? o->arch : "llama"), nkv++;
    kv_u32(&kv, "llama.block_count", L), nkv++;
    kv_u32(&kv, "llama.context_length", 512), nkv++;
    kv_u32(&kv, "llama.embedding_length", H), nkv++;
    if (!o->drop_required) kv_u32(&kv, "llama.feed_forward_length", FF), nkv++;
    kv_u32(&kv, "llama.attention.head_count", NH), nkv++;
    kv_u32(&kv, "llama.attention.head_count_kv", NKV), nkv++;
    kv_u32(&kv, "llama.attention.key_length", HD), nkv++;
    kv_u32(&kv, "llama.rope.dimension_count", (uint32_t)(o->rope_dim ? o->rope_dim : HD)), nkv++;
    kv_f32(&kv, "llama.attention.layer_norm_rms_epsilon", 1e-5f), nkv++;
    kv_f32(&kv, "llama.rope.freq_base", 10000.0f), nkv++;
    kv_head(&kv, "tokenizer.ggml.tokens", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_STRING), u64(&kv, V), nkv++;
    for (int i = 0; i < V; i++) {
        char s[16];
        snprintf(s, sizeof s, "t%d", i);
        str(&kv, s);
    }
    if (o->rope) {
        kv_str(&kv, "llama.rope.scaling.type", o->rope), nkv++;
        kv_f32(&kv, "llama.rope.scaling.factor", 4.0f), nkv++;
    }
    int n = model_specs(ts, o->with_output);
    tdesc td[64];
    for (int i = 0; i < n; i++) {
        int cnt = ts[i].rows * (ts[i].cols ? ts[i].cols : 1);
        for (int k = 0; k < cnt; k++) g_w[i][k] = rndf();
        gguf_data[i] = malloc((size_t)cnt * sizeof(float));
        if (ts[i].n_head) permute_rows(g_w[i], gguf_data[i], ts[i].rows, ts[i].cols ? ts[i].cols : 1, ts[i].n_head);
        else memcpy(gguf_data[i], g_w[i], (size_t)cnt * sizeof(float));
        td[i] = (tdesc){ts[i].gg, ts[i].cols ? 2 : 1, {ts[i].cols ? ts[i].cols : ts[i].rows, ts[i].rows, 1, 1},
                        TL_GGML_F32, gguf_data[i], (size_t)cnt * 4};
    }
    *nts = n;
    buf b = make_file(3, &kv, nkv, td, n, 32);
    free(kv.p);
    return b;
}

static void test_model(void) {
    tspec ts[64];
    float *gd[64];
    int n = 0;
    tl_error e = {0};
    {
        model_opts o = {.with_output = 1};
        buf b = model_file(&o, ts, &n, gd);
        tl_gguf *g = NULL;
        tl_status s = open_buf(&b, &g, &e);
        CHECK_OK(s, e);
        if (s == TL_OK) {
            tl_model_config c;
            s = tl_gguf_model_config(g, &c, &e);
            CHECK_OK(s, e);
            CHECK(s != TL_OK || (strcmp(c.arch, "LlamaForCausalLM") == 0 && c.vocab_size == V && c.hidden_size == H &&
                                 c.intermediate_size == FF && c.num_hidden_layers == L && c.num_attention_heads == NH &&
                                 c.num_key_value_heads == NKV && c.head_dim == HD && c.max_position_embeddings == 512 &&
                                 c.rms_norm_eps == 1e-5f && c.rope_theta == 10000.0f && c.rope_type == TL_ROPE_DEFAULT &&
                                 c.tie_word_embeddings == 0 && c.attention_bias == 1));
            for (int i = 0; i < n; i++) {
                int cnt = ts[i].rows * (ts[i].cols ? ts[i].cols : 1);
                int64_t shape[2] = {ts[i].rows, ts[i].cols}, got[4];
                int nd = ts[i].cols ? 2 : 1, gnd = 0;
                CHECK(tl_gguf_has_hf_tensor(g, ts[i].hf));
                CHECK(tl_gguf_hf_shape(g, ts[i].hf, got, &gnd) && gnd == nd && got[0] == shape[0] &&
                      (nd == 1 || got[1] == shape[1]));
                float *y = malloc((size_t)cnt * sizeof *y);
                for (int k = 0; k < cnt; k++) y[k] = NAN;
                CHECK_OK(tl_gguf_read_hf_tensor(g, ts[i].hf, shape, nd, y, &e), e);
                CHECK(memcmp(y, g_w[i], (size_t)cnt * sizeof *y) == 0);
                if (ts[i].n_head) CHECK(memcmp(gd[i], g_w[i], (size_t)cnt * sizeof *y) != 0); /* really permuted */
                free(y);
                char nm[64];
                CHECK(tl_gguf_hf_to_gguf_name(ts[i].hf, nm, sizeof nm) && strcmp(nm, ts[i].gg) == 0);
            }
            char nm[64];
            CHECK(!tl_gguf_hf_to_gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq", nm, sizeof nm));
            CHECK(!tl_gguf_hf_to_gguf_name("model.layers.x.input_layernorm.weight", nm, sizeof nm));
            CHECK(!tl_gguf_has_hf_tensor(g, "model.layers.7.input_layernorm.weight"));
            int64_t wrong[2] = {H, V};
            float tmp[V * H];
            EXPECT_ERR(tl_gguf_read_hf_tensor(g, "model.embed_tokens.weight", wrong, 2, tmp, &e), e, "[10, 16]");
            EXPECT_ERR(tl_gguf_read_hf_tensor(g, "model.layers.5.input_layernorm.weight", wrong, 1, tmp, &e), e,
                       "blk.5.attn_norm.weight");
        }
        tl_gguf_close(g);
        free(b.p);
        for (int i = 0; i < n; i++) free(gd[i]);
    }
    struct {
        model_opts o;
        const char *err; /* NULL: config must load */
    } cases[] = {
        {{.rope = "linear"}, NULL},
        {{.rope = "yarn"}, "yarn"},
        {{.arch = "qwen2"}, "qwen2"},
        {{.rope_dim = 4}, "dimension_count"},
        {{.drop_required = 1}, "llama.feed_forward_length"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        buf b = model_file(&cases[k].o, ts, &n, gd);
        tl_gguf *g = NULL;
        tl_status s = open_buf(&b, &g, &e);
        CHECK_OK(s, e);
        if (s == TL_OK) {
            tl_model_config c;
            s = tl_gguf_model_config(g, &c, &e);
            if (cases[k].err) {
                EXPECT_ERR(s, e, cases[k].err);
            } else {
                CHECK_OK(s, e);
                CHECK(s != TL_OK || (c.rope_type == TL_ROPE_LINEAR && c.rope_factor == 4.0f && c.tie_word_embeddings));
            }
        }
        tl_gguf_close(g);
        free(b.p);
        for (int i = 0; i < n; i++) free(gd[i]);
    }
}

/* ------------------------------------------------------------------------------------------ corrupt files */

static void test_corrupt(void) {
    float data[24];
    for (int i = 0; i < 24; i++) data[i] = rndf();
    buf kv = {0};
    kv_str(&kv, "general.architecture", "llama");
    kv_head(&kv, "a.arr", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_STRING), u64(&kv, 2), str(&kv, "p"), str(&kv, "q");
    const tdesc t[] = {{"t.a", 2, {4, 2}, TL_GGML_F32, data, 32}, {"t.b", 1, {16}, TL_GGML_F32, data + 8, 64}};
    buf good = make_file(3, &kv, 2, t, 2, 32);
    tl_gguf *g = NULL;
    tl_error e = {0};
    tl_status s = open_buf(&good, &g, &e);
    CHECK_OK(s, e);
    tl_gguf_close(g);
    /* every proper prefix lacks something the header promised */
    for (size_t cut = 0; cut < good.n; cut++) {
        buf p = {good.p, cut, cut};
        g = NULL;
        s = open_buf(&p, &g, &e);
        if (s != TL_ERR_INPUT) fprintf(stderr, "prefix of %zu bytes: status %d\n", cut, (int)s);
        EXPECT_ERR(s, e, cut < 4 ? "truncated" : NULL);
        if (g) tl_gguf_close(g);
    }
    /* patched copies of the good file */
    const size_t off_ver = 4, off_ntens = 8;
    buf x = {malloc(good.n), good.n, good.n};
    memcpy(x.p, good.p, good.n);
    memcpy(x.p, "GGUG", 4);
    EXPECT_ERR(open_buf(&x, &g, &e), e, "magic");
    memcpy(x.p, good.p, good.n), x.p[off_ver] = 1;
    EXPECT_ERR(open_buf(&x, &g, &e), e, "version 1");
    memcpy(x.p, good.p, good.n), x.p[off_ntens + 7] = 0x10;
    EXPECT_ERR(open_buf(&x, &g, &e), e, "tensors");
    free(x.p);

    struct {
        const char *sub;
        uint32_t nd, type;
        int64_t ne[5];
        uint64_t off;
    } tc[] = {
        {"unknown ggml type 77", 1, 77, {4}, 0},
        {"n_dims 0", 0, 0, {4}, 0},
        {"n_dims 5", 5, 0, {1, 1, 1, 1, 1}, 0},
        {"overflows", 2, 0, {1LL << 40, 1LL << 40}, 0},
        {"runs past the end", 1, 0, {8}, 32},
        {"not a multiple of the alignment", 1, 0, {4}, 16},
        {"block size", 1, TL_GGML_Q8_0, {16}, 0},
    };
    for (size_t k = 0; k < sizeof tc / sizeof tc[0]; k++) {
        buf b = {0};
        put(&b, "GGUF", 4), u32(&b, 3), u64(&b, 1), u64(&b, 0);
        str(&b, "bad.t"), u32(&b, tc[k].nd);
        for (uint32_t d = 0; d < tc[k].nd; d++) u64(&b, (uint64_t)tc[k].ne[d]);
        u32(&b, tc[k].type), u64(&b, tc[k].off);
        static const unsigned char z[96];
        put(&b, z, (32 - b.n % 32) % 32), put(&b, z, 32);
        g = NULL;
        s = open_buf(&b, &g, &e);
        EXPECT_ERR(s, e, tc[k].sub);
        if (s == TL_ERR_INPUT && tc[k].nd >= 1 && !strstr(e.msg, "bad.t")) {
            fprintf(stderr, "tensor case '%s': message '%s' does not name the tensor\n", tc[k].sub, e.msg);
            g_fail++;
        }
        if (g) tl_gguf_close(g);
        free(b.p);
    }
    /* key/value corruptions, each its own tiny file */
    for (int k = 0; k < 6; k++) {
        buf b = {0};
        put(&b, "GGUF", 4), u32(&b, 3), u64(&b, 0), u64(&b, k == 0 ? 2 : 1);
        const char *sub = NULL;
        switch (k) {
        case 0: kv_u32(&b, "dup.k", 1), kv_u32(&b, "dup.k", 2), sub = "dup.k"; break;
        case 1: kv_head(&b, "bad.type", 13), u64(&b, 0), sub = "bad.type"; break;
        case 2: kv_head(&b, "bad.bool", TL_GGUF_BOOL), put(&b, "\2", 1), sub = "bad.bool"; break;
        case 3: kv_head(&b, "bad.nest", TL_GGUF_ARRAY), u32(&b, TL_GGUF_ARRAY), u64(&b, 1), u64(&b, 0), sub = "bad.nest"; break;
        case 4: kv_head(&b, "bad.len", TL_GGUF_STRING), u64(&b, 1ULL << 62), sub = "bad.len"; break;
        case 5: kv_head(&b, "general.alignment", TL_GGUF_U32), u32(&b, 24), sub = "general.alignment"; break;
        }
        put(&b, "padding.padding.padding.", 24);
        g = NULL;
        s = open_buf(&b, &g, &e);
        EXPECT_ERR(s, e, sub);
        if (g) tl_gguf_close(g);
        free(b.p);
    }
    unlink(g_path);
    e.code = TL_OK;
    EXPECT_ERR(tl_gguf_open(g_path, &g, &e), e, "cannot open");
    free(good.p), free(kv.p);
}

/* ------------------------------------------------------------------------------------------ tokenizer ids */

/* A GGUF tokenizer's integers must fit what they name: a token id of 2^32 + 1 (1, a valid id, once truncated to int32) or one
 * past the vocabulary, a token type outside 0..6, are refused naming the key and the file. */
static void test_tokenizer_ints(void) {
    static const struct {
        const char *key;
        uint32_t type; /* TL_GGUF_U64 / I32 / U32 scalar, or TL_GGUF_ARRAY for token_type */
        int64_t v;
        const char *want; /* NULL: loads */
    } cases[] = {
        {"tokenizer.ggml.bos_token_id", TL_GGUF_U64, (int64_t)((1ULL << 32) + 1), "tokenizer.ggml.bos_token_id"},
        {"tokenizer.ggml.bos_token_id", TL_GGUF_U64, (int64_t)((1ULL << 32) + 5), "tokenizer.ggml.bos_token_id"},
        {"tokenizer.ggml.bos_token_id", TL_GGUF_U32, 3, "tokenizer.ggml.bos_token_id"},
        {"tokenizer.ggml.bos_token_id", TL_GGUF_I32, -2, "tokenizer.ggml.bos_token_id"},
        {"tokenizer.ggml.bos_token_id", TL_GGUF_U32, 2, NULL},
        {"tokenizer.ggml.eos_token_id", TL_GGUF_U64, (int64_t)((1ULL << 32) + 1), "tokenizer.ggml.eos_token_id"},
        {"tokenizer.ggml.padding_token_id", TL_GGUF_U32, 99, "tokenizer.ggml.padding_token_id"},
        {"tokenizer.ggml.eos_token_id", TL_GGUF_U32, 1, NULL},
        {"tokenizer.ggml.token_type", TL_GGUF_ARRAY, 7, "tokenizer.ggml.token_type"},
        {"tokenizer.ggml.token_type", TL_GGUF_ARRAY, (int64_t)((1ULL << 32) + 1), "tokenizer.ggml.token_type"},
        {"tokenizer.ggml.token_type", TL_GGUF_ARRAY, 1, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        buf kv = {0};
        int nkv = 0;
        kv_str(&kv, "tokenizer.ggml.model", "gpt2"), nkv++;
        kv_head(&kv, "tokenizer.ggml.tokens", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_STRING), u64(&kv, 3), nkv++;
        str(&kv, "a"), str(&kv, "b"), str(&kv, "ab");
        kv_head(&kv, "tokenizer.ggml.merges", TL_GGUF_ARRAY), u32(&kv, TL_GGUF_STRING), u64(&kv, 1), nkv++;
        str(&kv, "a b");
        if (cases[i].type == TL_GGUF_ARRAY) {
            kv_head(&kv, cases[i].key, TL_GGUF_ARRAY), u32(&kv, TL_GGUF_I64), u64(&kv, 3), nkv++;
            u64(&kv, 1), u64(&kv, (uint64_t)cases[i].v), u64(&kv, 1);
        } else {
            kv_head(&kv, cases[i].key, cases[i].type), nkv++;
            if (cases[i].type == TL_GGUF_U64) u64(&kv, (uint64_t)cases[i].v);
            else u32(&kv, (uint32_t)cases[i].v);
        }
        buf b = make_file(3, &kv, nkv, NULL, 0, 32);
        write_file(&b);
        tl_tokenizer *t = NULL;
        tl_error e = {0};
        tl_status s = tl_tokenizer_for_model(g_path, &t, &e);
        if (!cases[i].want) {
            CHECK(s == TL_OK, "case %zu (%s): %s", i, cases[i].key, e.msg);
        } else {
            expect_input_err(s, &e, cases[i].want, __LINE__);
            CHECK(t == NULL, "case %zu: a tokenizer came back", i);
        }
        tl_tokenizer_free(t);
        free(b.p), free(kv.p);
    }
}

/* Absurd dimensions in the llama.* metadata are refused naming the GGUF key and the limit, before any tensor is
 * looked at or anything allocated (2^40 does not fit an int; 5000 layers and 2^20 hidden do, and used to pass on). */
static void test_absurd_dims(void) {
    static const struct {
        const char *key;
        uint64_t v;
        const char *want;
    } cases[] = {
        {"llama.block_count", 5000, "'llama.block_count': 5000 is above the supported limit 1024"},
        {"llama.embedding_length", 1u << 20, "'llama.embedding_length': 1048576 is above the supported limit 65536"},
        {"llama.embedding_length", 1ULL << 40, "'llama.embedding_length': 1099511627776 is above the supported limit"},
        {"llama.context_length", 1ULL << 31, "'llama.context_length': 2147483648 is above the supported limit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *keys[] = {"llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                              "llama.attention.head_count", "llama.context_length"};
        buf kv = {0};
        int nkv = 0;
        kv_str(&kv, "general.architecture", "llama"), nkv++;
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            kv_head(&kv, keys[k], TL_GGUF_U64), nkv++;
            u64(&kv, !strcmp(keys[k], cases[i].key) ? cases[i].v : 64);
        }
        buf b = make_file(3, &kv, nkv, NULL, 0, 32);
        tl_gguf *g = NULL;
        tl_error e = {0};
        tl_status s = open_buf(&b, &g, &e);
        CHECK_OK(s, e);
        if (!s) {
            tl_model_config c;
            expect_input_err(tl_gguf_model_config(g, &c, &e), &e, cases[i].want, __LINE__);
            tl_gguf_close(g);
        }
        free(b.p), free(kv.p);
    }
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_path, sizeof g_path, "%s/tl_gguf_test_%ld.gguf", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    g_rng = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    if (!g_rng) g_rng = 1;
    uint64_t seed = g_rng;
    test_metadata();
    test_dequant();
    test_model();
    test_corrupt();
    test_tokenizer_ints();
    test_absurd_dims();
    unlink(g_path);
    return tl_check_done_seed("test_gguf", seed);
}
