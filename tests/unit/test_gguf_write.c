/* test_gguf_write: the GGUF writer against tailor's GGUF reader, and the pieces export builds on it.
 *
 * - tl_f32_to_f16: every finite half survives half -> float -> half; nan stays nan; random floats round to the
 *   nearest half (ties to even, checked against both neighbours); overflow goes to inf at the IEEE threshold.
 * - A file with key/values of every type the writer has and F32/F16/BF16 tensors of random values reads back
 *   (keys, types, arrays, dims, offsets aligned, values equal to the rounding of the inputs); copying every key of
 *   that file into a second file reproduces them; a producer's error leaves nothing at the path.
 * - The q/k row permutation export applies (tl_export_permute_rows) is the one tailor's GGUF loader undoes: a small
 *   llama GGUF written with permuted q/k weights reads back through tl_gguf_read_hf_tensor as the HF matrices. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_gguf.h"
#include "data/tl_gguf_write.h"
#include "data/tl_safetensors.h"
#include "tests/lib/tl_check.h"
#include "tests/lib/tl_rng_xorshift.h"
#include "trainer/run/export_impl.h"

static void test_f16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = tl_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            bad += !isnan(tl_f16_to_f32(tl_f32_to_f16(f)));
            continue;
        }
        bad += tl_f32_to_f16(f) != h;
    }
    CHECK(bad == 0, "%d halves do not survive half -> float -> half", bad);
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        float x = rndf() * ldexpf(1.0f, (int)(rnd() % 40) - 30); /* from subnormal halves to ~2^10 */
        uint16_t h = tl_f32_to_f16(x);
        double d = fabs((double)x - tl_f16_to_f32(h));
        for (int k = -1; k <= 1; k += 2) {
            uint16_t nb = (uint16_t)(h + k);
            if ((nb & 0x7FFF) >= 0x7C00 || ((h & 0x7FFF) == 0 && k < 0)) continue;
            double dn = fabs((double)x - tl_f16_to_f32(nb));
            if (dn < d || (dn == d && (h & 1))) bad++;
        }
    }
    CHECK(bad == 0, "%d random floats not rounded to the nearest half (ties to even)", bad);
    CHECK(tl_f32_to_f16(65504.0f) == 0x7BFF && tl_f32_to_f16(65519.99f) == 0x7BFF && tl_f32_to_f16(65520.0f) == 0x7C00);
    CHECK(tl_f32_to_f16(-INFINITY) == 0xFC00 && isnan(tl_f16_to_f32(tl_f32_to_f16(NAN))));
    CHECK(tl_f32_to_f16(ldexpf(1.0f, -25)) == 0 && tl_f32_to_f16(ldexpf(1.5f, -25)) == 1); /* tie to even, above */
}

typedef struct {
    const float *v;
    size_t n;
    uint32_t type;
    int fail;
} src;

static tl_status produce(void *ctx, void *dst, uint64_t nbytes, tl_error *err) {
    src *s = ctx;
    if (s->fail) return tl_fail(err, TL_ERR_INPUT, "producer failed on purpose");
    tl_export_dtype dt = s->type == TL_GGML_F32 ? TL_EXPORT_F32 : s->type == TL_GGML_F16 ? TL_EXPORT_F16 : TL_EXPORT_BF16;
    if (nbytes != s->n * tl_export_dtype_size(dt)) return tl_fail(err, TL_ERR_RUNTIME, "size");
    tl_export_convert(dst, s->v, s->n, dt);
    return TL_OK;
}

static float rounded(float x, uint32_t type) {
    return type == TL_GGML_F32 ? x : type == TL_GGML_F16 ? tl_f16_to_f32(tl_f32_to_f16(x)) : tl_bf16_to_f32(tl_f32_to_bf16(x));
}

static void test_roundtrip(const char *dir) {
    char p1[512], p2[512], p3[512];
    snprintf(p1, sizeof p1, "%s/a.gguf", dir);
    snprintf(p2, sizeof p2, "%s/b.gguf", dir);
    snprintf(p3, sizeof p3, "%s/c.gguf", dir);
    tl_error e = {0};
    float v[3][60];
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 60; i++) v[t][i] = rndf() * 100.0f;
    const uint32_t types[3] = {TL_GGML_F32, TL_GGML_F16, TL_GGML_BF16};
    const int64_t ne[3][3] = {{6, 10, 1}, {60, 1, 1}, {5, 3, 4}};
    const int nd[3] = {2, 1, 3};
    src s[3];
    tl_gguf_writer *w = tl_gguf_writer_new();
    CHECK_OK(tl_gguf_writer_kv_str(w, "general.architecture", "llama", &e), e);
    CHECK_OK(tl_gguf_writer_kv_u32(w, "a.u32", 4000000000u, &e), e);
    CHECK_OK(tl_gguf_writer_kv_f32(w, "a.f32", 0.125f, &e), e);
    CHECK_OK(tl_gguf_writer_kv_bool(w, "a.bool", 1, &e), e);
    const char *strs[3] = {"x", "", "y\xc3\xa9"};
    CHECK_OK(tl_gguf_writer_kv_str_array(w, "a.strs", strs, NULL, 3, &e), e);
    double d[4] = {-3, 0, 7, 2147483647};
    CHECK_OK(tl_gguf_writer_kv_num_array(w, "a.i32", TL_GGUF_I32, d, 4, &e), e);
    double fd[2] = {0.5, -1.25};
    CHECK_OK(tl_gguf_writer_kv_num_array(w, "a.f32s", TL_GGUF_F32, fd, 2, &e), e);
    int64_t big[2] = {-((int64_t)1 << 62), ((int64_t)1 << 62) + 1};
    CHECK_OK(tl_gguf_writer_kv_i64_array(w, "a.i64", TL_GGUF_I64, big, 2, &e), e);
    CHECK(tl_gguf_writer_kv_u32(w, "a.u32", 1, &e) == TL_ERR_RUNTIME); /* duplicate key */
    for (int t = 0; t < 3; t++) {
        s[t] = (src){v[t], 60, types[t], 0};
        char name[16];
        snprintf(name, sizeof name, "t%d", t);
        CHECK_OK(tl_gguf_writer_add_tensor(w, name, nd[t], ne[t], types[t], produce, &s[t], &e), e);
    }
    CHECK(tl_gguf_writer_add_tensor(w, "t0", 1, ne[1], TL_GGML_F32, produce, &s[0], &e) == TL_ERR_RUNTIME);
    CHECK(tl_gguf_writer_add_tensor(w, "q", 1, ne[1], TL_GGML_Q4_0, produce, &s[0], &e) == TL_ERR_RUNTIME);
    CHECK_OK(tl_gguf_writer_write(w, p1, &e), e);
    tl_gguf_writer_free(w);

    tl_gguf *g = NULL;
    tl_status st = tl_gguf_open(p1, &g, &e);
    CHECK_OK(st, e);
    if (st) return;
    const char *sv;
    int64_t iv;
    double fv;
    int bv;
    CHECK(tl_gguf_get_str(g, "general.architecture", &sv, NULL, &e) == TL_OK && !strcmp(sv, "llama"));
    CHECK(tl_gguf_get_int(g, "a.u32", &iv, &e) == TL_OK && iv == 4000000000LL);
    CHECK(tl_gguf_kv_type(g, tl_gguf_find_key(g, "a.u32")) == TL_GGUF_U32);
    CHECK(tl_gguf_get_float(g, "a.f32", &fv, &e) == TL_OK && fv == 0.125);
    CHECK(tl_gguf_get_bool(g, "a.bool", &bv, &e) == TL_OK && bv == 1);
    const char *const *sa;
    uint64_t ns;
    CHECK(tl_gguf_get_str_array(g, "a.strs", &sa, NULL, &ns, &e) == TL_OK && ns == 3 && !strcmp(sa[0], "x") &&
          !strcmp(sa[1], "") && !strcmp(sa[2], "y\xc3\xa9"));
    int64_t ia[4];
    CHECK(tl_gguf_get_i64_array(g, "a.i32", ia, 4, &e) == TL_OK && ia[0] == -3 && ia[3] == 2147483647);
    CHECK(tl_gguf_kv_array_type(g, tl_gguf_find_key(g, "a.i32")) == TL_GGUF_I32);
    int64_t ib[2];
    CHECK(tl_gguf_get_i64_array(g, "a.i64", ib, 2, &e) == TL_OK && ib[0] == big[0] && ib[1] == big[1]);
    double fa[2];
    CHECK(tl_gguf_get_f64_array(g, "a.f32s", fa, 2, &e) == TL_OK && fa[0] == 0.5 && fa[1] == -1.25);
    CHECK(tl_gguf_n_tensors(g) == 3);
    for (int t = 0; t < 3; t++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", t);
        const tl_gguf_tensor *ti = tl_gguf_find_tensor(g, name);
        CHECK(ti && ti->type == types[t] && ti->n_dims == nd[t] && ti->offset % 32 == 0, "tensor %s", name);
        if (!ti) continue;
        for (int k = 0; k < nd[t]; k++) CHECK(ti->ne[k] == ne[t][k]);
        float got[60];
        CHECK_OK(tl_gguf_read_f32(g, name, got, 60, &e), e);
        int diff = 0;
        for (int i = 0; i < 60; i++) diff += got[i] != rounded(v[t][i], types[t]);
        CHECK(diff == 0, "tensor %s: %d values differ", name, diff);
    }
    /* every key copied */
    w = tl_gguf_writer_new();
    for (int i = 0; i < tl_gguf_n_kv(g); i++) CHECK_OK(tl_gguf_writer_copy_kv(w, g, i, &e), e);
    CHECK_OK(tl_gguf_writer_add_tensor(w, "t1", 1, ne[1], TL_GGML_F32, produce, &s[0], &e), e);
    CHECK_OK(tl_gguf_writer_write(w, p2, &e), e);
    tl_gguf_writer_free(w);
    tl_gguf *g2 = NULL;
    st = tl_gguf_open(p2, &g2, &e);
    CHECK_OK(st, e);
    if (!st) {
        CHECK(tl_gguf_n_kv(g2) == tl_gguf_n_kv(g));
        for (int i = 0; i < tl_gguf_n_kv(g) && i < tl_gguf_n_kv(g2); i++)
            CHECK(!strcmp(tl_gguf_kv_key(g, i), tl_gguf_kv_key(g2, i)) && tl_gguf_kv_type(g, i) == tl_gguf_kv_type(g2, i) &&
                  tl_gguf_kv_array_type(g, i) == tl_gguf_kv_array_type(g2, i) &&
                  tl_gguf_kv_array_len(g, i) == tl_gguf_kv_array_len(g2, i), "key %d", i);
        CHECK(tl_gguf_get_i64_array(g2, "a.i64", ib, 2, &e) == TL_OK && ib[0] == big[0] && ib[1] == big[1]);
        tl_gguf_close(g2);
    }
    tl_gguf_close(g);
    /* a producer's error: nothing at the path, no temporary left */
    w = tl_gguf_writer_new();
    src bad = {v[0], 60, TL_GGML_F32, 1};
    CHECK_OK(tl_gguf_writer_add_tensor(w, "t", 1, ne[1], TL_GGML_F32, produce, &bad, &e), e);
    CHECK(tl_gguf_writer_write(w, p3, &e) == TL_ERR_INPUT && strstr(e.msg, "on purpose"));
    CHECK(access(p3, F_OK) != 0);
    tl_gguf_writer_free(w);
    unlink(p1);
    unlink(p2);
}

/* a llama GGUF of one layer whose q/k weights are written in llama.cpp's row order by tl_export_permute_rows */
static void test_permutation(const char *dir) {
    enum { H = 16, NH = 4, NKV = 2, HD = 4, FF = 8, V = 10 };
    char path[512];
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    tl_error e = {0};
    tl_gguf_writer *w = tl_gguf_writer_new();
    CHECK_OK(tl_gguf_writer_kv_str(w, "general.architecture", "llama", &e), e);
    const char *u32k[] = {"llama.block_count", "llama.context_length", "llama.embedding_length",
                          "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv"};
    const uint32_t u32v[] = {1, 64, H, FF, NH, NKV};
    for (int i = 0; i < 6; i++) CHECK_OK(tl_gguf_writer_kv_u32(w, u32k[i], u32v[i], &e), e);
    CHECK_OK(tl_gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &e), e);
    CHECK_OK(tl_gguf_writer_kv_f32(w, "llama.rope.freq_base", 10000.0f, &e), e);
    const char *toks[V] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
    CHECK_OK(tl_gguf_writer_kv_str_array(w, "tokenizer.ggml.tokens", toks, NULL, V, &e), e);
    static float hf_q[NH * HD * H], hf_k[NKV * HD * H], gq[NH * HD * H], gk[NKV * HD * H], other[4 * NH * HD * H];
    for (int i = 0; i < NH * HD * H; i++) hf_q[i] = rndf();
    for (int i = 0; i < NKV * HD * H; i++) hf_k[i] = rndf();
    for (int i = 0; i < 4 * NH * HD * H; i++) other[i] = rndf();
    tl_export_permute_rows(gq, hf_q, NH * HD, H, NH);
    tl_export_permute_rows(gk, hf_k, NKV * HD, H, NKV);
    struct {
        const char *name;
        int64_t ne0, ne1;
        const float *v;
    } ts[] = {{"token_embd.weight", H, V, other},   {"output_norm.weight", H, 1, other},
              {"blk.0.attn_norm.weight", H, 1, other}, {"blk.0.ffn_norm.weight", H, 1, other},
              {"blk.0.attn_q.weight", H, NH * HD, gq},  {"blk.0.attn_k.weight", H, NKV * HD, gk},
              {"blk.0.attn_v.weight", H, NKV * HD, other}, {"blk.0.attn_output.weight", NH * HD, H, other},
              {"blk.0.ffn_gate.weight", H, FF, other}, {"blk.0.ffn_up.weight", H, FF, other},
              {"blk.0.ffn_down.weight", FF, H, other}};
    src s[11];
    for (int i = 0; i < 11; i++) {
        int64_t ne[2] = {ts[i].ne0, ts[i].ne1};
        s[i] = (src){ts[i].v, (size_t)(ts[i].ne0 * ts[i].ne1), TL_GGML_F32, 0};
        CHECK_OK(tl_gguf_writer_add_tensor(w, ts[i].name, ts[i].ne1 == 1 ? 1 : 2, ne, TL_GGML_F32, produce, &s[i], &e), e);
    }
    CHECK_OK(tl_gguf_writer_write(w, path, &e), e);
    tl_gguf_writer_free(w);
    tl_gguf *g = NULL;
    tl_status st = tl_gguf_open(path, &g, &e);
    CHECK_OK(st, e);
    if (st) return;
    float got[NH * HD * H];
    int64_t shq[2] = {NH * HD, H}, shk[2] = {NKV * HD, H};
    CHECK_OK(tl_gguf_read_hf_tensor(g, "model.layers.0.self_attn.q_proj.weight", shq, 2, got, &e), e);
    CHECK(!memcmp(got, hf_q, sizeof hf_q), "q: the loader does not undo the export's permutation");
    CHECK_OK(tl_gguf_read_hf_tensor(g, "model.layers.0.self_attn.k_proj.weight", shk, 2, got, &e), e);
    CHECK(!memcmp(got, hf_k, sizeof hf_k), "k: the loader does not undo the export's permutation");
    tl_gguf_close(g);
    unlink(path);
}

static void test_merge(void) {
    /* W += s B A against a direct double sum */
    enum { O = 7, I = 5, R = 3 };
    float W[O * I], W0[O * I], A[R * I], B[O * R];
    for (int i = 0; i < O * I; i++) W[i] = W0[i] = rndf();
    for (int i = 0; i < R * I; i++) A[i] = rndf();
    for (int i = 0; i < O * R; i++) B[i] = rndf();
    tl_export_merge(W, A, B, O, I, R, 0.75f);
    double worst = 0;
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++) {
            double want = W0[o * I + i];
            for (int k = 0; k < R; k++) want += 0.75 * (double)B[o * R + k] * A[k * I + i];
            worst = fmax(worst, fabs(want - W[o * I + i]));
        }
    CHECK(worst < 1e-5, "merge differs by %g", worst);
}

int main(void) {
    char dir[] = "/tmp/tl_gguf_write.XXXXXX";
    if (!mkdtemp(dir)) return 1;
    test_f16();
    test_roundtrip(dir);
    test_permutation(dir);
    test_merge();
    rmdir(dir);
    return tl_check_done("test_gguf_write");
}
