/* test_parser_scale: inputs whose size the readers accept must not take quadratic time. A GGUF file with 300000
 * distinct metadata keys, and one with 300000 tensors, open in seconds (duplicate names are found by sorting,
 * not by comparing every pair: 4.5e10 comparisons would not finish), and a duplicate among them is still found. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_gguf.h"
#include "tests/lib/tl_check.h"

static void u32(FILE *f, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    fwrite(b, 1, 4, f);
}
static void u64(FILE *f, uint64_t v) {
    u32(f, (uint32_t)v);
    u32(f, (uint32_t)(v >> 32));
}
static void str(FILE *f, const char *s) {
    u64(f, strlen(s));
    fwrite(s, 1, strlen(s), f);
}

/* n_kv u8 keys "k%07d", n_t one-element F32 tensors "t%07d" all at offset 0; dup: the last name repeats the first */
static void write_gguf(const char *path, int n_kv, int n_t, int dup) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite("GGUF", 1, 4, f);
    u32(f, 3);
    u64(f, (uint64_t)n_t);
    u64(f, (uint64_t)n_kv);
    char name[32];
    for (int i = 0; i < n_kv; i++) {
        snprintf(name, sizeof name, "k%07d", dup && i == n_kv - 1 ? 0 : i);
        str(f, name);
        u32(f, TL_GGUF_U8);
        fputc(1, f);
    }
    for (int i = 0; i < n_t; i++) {
        snprintf(name, sizeof name, "t%07d", dup && i == n_t - 1 ? 0 : i);
        str(f, name);
        u32(f, 1);
        u64(f, 1);
        u32(f, TL_GGML_F32);
        u64(f, 0);
    }
    long pos = ftell(f);
    for (long p = pos; p % 32; p++) fputc(0, f);
    u32(f, 0);
    fclose(f);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(void) {
    char path[] = "/tmp/tl_scale_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return 1;
    close(fd);
    const int N = 300000;
    for (int kind = 0; kind < 2; kind++) {
        for (int dup = 0; dup < 2; dup++) {
            write_gguf(path, kind == 0 ? N : 1, kind == 1 ? N : 1, dup);
            tl_gguf *g = NULL;
            tl_error e = {0};
            double t0 = now_s();
            tl_status s = tl_gguf_open(path, &g, &e);
            double dt = now_s() - t0;
            const char *what = kind == 0 ? "metadata keys" : "tensors";
            CHECK(dt < 30.0, "%d %s: open took %.1f s", N, what, dt);
            if (!dup) {
                CHECK(s == TL_OK, "%d %s: %s", N, what, e.msg);
                if (s == TL_OK)
                    CHECK((kind == 0 ? tl_gguf_n_kv(g) : tl_gguf_n_tensors(g)) == N, "%s count", what);
            } else {
                CHECK(s == TL_ERR_INPUT && strstr(e.msg, "appears twice") &&
                          strstr(e.msg, kind == 0 ? "k0000000" : "t0000000"),
                      "duplicate among %d %s: status %d, '%s'", N, what, (int)s, e.msg);
            }
            tl_gguf_close(g);
        }
    }
    unlink(path);
    return tl_check_done("test_parser_scale");
}
