/* tl_fuzz: a deterministic mutation fuzzer over tailor's input readers (tests/fuzz/README.md).
 *
 * `tl_fuzz TARGET` replays the inputs kept in tests/fuzz/regress/TARGET first, then mutates the target's seed
 * inputs (valid files made here by the project's own writers) for TL_FUZZ_SECONDS seconds or TL_FUZZ_ITERS inputs, whichever ends
 * first, from TL_FUZZ_SEED. Each input runs in a forked child with an alarm, through the public reader API that
 * train and inspect use. The reader must return TL_OK or an error with a non-empty one-line message; a crash, a
 * sanitizer report (ASan, UBSan, LSan at the child's exit), a hang, a bad message or output on stdout/stderr is a
 * finding: its input is kept under TL_FUZZ_FINDINGS/TARGET/ (shrunk when it still fails the same way) and the run
 * fails. Exit 0: no finding; 1: findings; 2: bad usage or a seed that does not load. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_dataset.h"
#include "data/tl_hf_config.h"
#include "data/tl_model_tokenizer.h"
#include "data/tl_pref.h"
#include "data/tl_prompt.h"
#include "data/tl_safetensors.h"
#include "data/tl_tokenizer.h"
#include "kernels/tl_backend.h"
#include "trainer/config/tl_config.h"
#include "data/tl_dataset_build.h"
#include "trainer/run/tl_inspect.h"
#include "trainer/model/tl_model.h"
#include "trainer/model/tl_tinymodel.h"

#ifndef TL_SRC_DIR
#define TL_SRC_DIR "."
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TL_FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TL_FUZZ_ASAN 1
#endif
#endif

#ifdef TL_FUZZ_ASAN
/* A tiny input must not make tailor allocate gigabytes: under ASan such an allocation is a report. */
void __sanitizer_set_report_path(const char *path);
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "max_allocation_size_mb=1024:detect_leaks=1"; }
#endif

/* ------------------------------------------------------------------------------------------------ buffers */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} blob;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tl_fuzz: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void reserve(blob *b, size_t n) {
    if (n <= b->cap) return;
    size_t c = b->cap ? b->cap : 64;
    while (c < n) c *= 2;
    b->p = realloc(b->p, c);
    if (!b->p) die("out of memory");
    b->cap = c;
}
static void put(blob *b, const void *src, size_t n) {
    if (n > SIZE_MAX / 4 || b->n > SIZE_MAX / 4) die("blob too large"); /* also bounds n for gcc -O3 */
    reserve(b, b->n + n + 1);
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void puts_(blob *b, const char *s) { put(b, s, strlen(s)); }
static void printf_(blob *b, const char *fmt, ...) {
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof tmp) die("printf_ overflow");
    put(b, tmp, (size_t)k);
}
static void u32(blob *b, uint32_t v) {
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    put(b, x, 4);
}
static void u64(blob *b, uint64_t v) {
    u32(b, (uint32_t)v);
    u32(b, (uint32_t)(v >> 32));
}
static void insert_at(blob *b, size_t pos, const void *src, size_t n) {
    reserve(b, b->n + n + 1);
    memmove(b->p + pos + n, b->p + pos, b->n - pos);
    memcpy(b->p + pos, src, n);
    b->n += n;
}
static void erase(blob *b, size_t pos, size_t n) {
    memmove(b->p + pos, b->p + pos + n, b->n - pos - n);
    b->n -= n;
}

static int write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}
static int read_file(const char *path, blob *b) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    b->n = 0;
    char tmp[65536];
    size_t k;
    while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) put(b, tmp, k);
    fclose(f);
    return 1;
}
static void rmtree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rmtree(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}
static void mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *s = tmp + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(tmp, 0755);
            *s = '/';
        }
    mkdir(tmp, 0755);
}

/* ----------------------------------------------------------------------------------------------------- rng */

static uint64_t g_rng;
static uint64_t rnd(void) {
    g_rng += 0x9e3779b97f4a7c15ULL;
    uint64_t z = g_rng;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }
static uint64_t fnv(const void *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ULL;
    return h;
}

/* --------------------------------------------------------------------------------------------- the targets */

#define MAX_SEEDS 8
#define MAX_FIXED 4

typedef struct {
    const char *name;
    int text;             /* text format: token-level mutations too */
    const char *input;    /* the input's path inside a case directory */
    int (*run)(const char *dir, const char *input);
    blob seeds[MAX_SEEDS];
    int n_seeds;
    struct {
        const char *rel;
        blob data;
    } fixed[MAX_FIXED]; /* other files every case has (a model's config.json, ...) */
    int n_fixed;
} target;

static char g_base[512];       /* temporary directory of this run */
static char g_tokmodel[600];   /* a model directory holding only tokenizer.json (data build) */
static int g_vocab;            /* its vocabulary size */
static int g_expect_ok;        /* seeds: every reader must return TL_OK */
static int g_had_error;        /* child: some reader refused the input (with a good message) */
#define EXIT_REFUSED 10        /* the child's exit status then */
#define EXIT_NOTE 11           /* not a finding, but worth a line in the summary */

static void add_seed(target *t, const blob *b) {
    if (t->n_seeds >= MAX_SEEDS) die("too many seeds");
    blob c = {0};
    put(&c, b->p, b->n);
    t->seeds[t->n_seeds++] = c;
}
static void add_seed_file(target *t, const char *path) {
    blob b = {0};
    if (!read_file(path, &b)) die("cannot read seed %s", path);
    add_seed(t, &b);
    free(b.p);
}
static void add_fixed_file(target *t, const char *rel, const char *path) {
    if (t->n_fixed >= MAX_FIXED) die("too many fixed files");
    blob b = {0};
    if (!read_file(path, &b)) die("cannot read %s", path);
    t->fixed[t->n_fixed].rel = rel;
    t->fixed[t->n_fixed++].data = b;
}

/* --------------------------------------------------------------- checks made in the child, on every status */

static void check(tl_status s, const tl_error *e, const char *what) {
    if (s == TL_OK) return;
    g_had_error = 1;
    if (s != TL_ERR_INPUT && s != TL_ERR_RUNTIME) {
        fprintf(stderr, "FUZZ-BAD-STATUS: %s returned status %d\n", what, (int)s);
        exit(3);
    }
    if (!e->msg[0] || strchr(e->msg, '\n') || strchr(e->msg, '\r')) {
        fprintf(stderr, "FUZZ-BAD-MESSAGE: %s: status %d with message '%s'\n", what, (int)s, e->msg);
        exit(3);
    }
    if (g_expect_ok) {
        fprintf(stderr, "FUZZ-SEED-FAILS: %s: %s\n", what, e->msg);
        exit(4);
    }
}

static void inspect_to_null(const char *path) {
    FILE *null = fopen("/dev/null", "w");
    if (!null) exit(5);
    tl_error e = {0};
    tl_status s = tl_inspect(path, null, &e);
    fclose(null);
    check(s, &e, "tl_inspect");
}

static void load_model(const char *path) {
    tl_error e = {0};
    tl_backend *be = NULL;
    if (tl_backend_cpu_create(1, &be, &e) != TL_OK) {
        fprintf(stderr, "FUZZ-SETUP: no CPU backend: %s\n", e.msg);
        exit(5);
    }
    tl_model m;
    memset(&m, 0, sizeof m);
    tl_status s = tl_model_load(path, be, &m, &e);
    check(s, &e, "tl_model_load");
    if (s == TL_OK) tl_model_free(&m);
    be->destroy(be);
}

static void use_tokenizer(const char *model_path) {
    tl_error e = {0};
    tl_tokenizer *tk = NULL;
    tl_status s = tl_tokenizer_for_model(model_path, &tk, &e);
    check(s, &e, "tl_tokenizer_for_model");
    if (s != TL_OK) return;
    static const char text[] = "<|im_start|>user\nHello wor ld, 12345 caf\xc3\xa9 \xe4\xb8\xad \xff<|im_end|>\n";
    int32_t *ids = NULL;
    size_t n = 0;
    s = tl_tokenizer_encode(tk, text, sizeof text - 1, 0, &ids, &n, &e);
    check(s, &e, "tl_tokenizer_encode");
    if (s == TL_OK) {
        char *out = NULL;
        size_t len = 0;
        s = tl_tokenizer_decode(tk, ids, n, &out, &len, &e);
        check(s, &e, "tl_tokenizer_decode");
        free(out);
    }
    free(ids);
    if (tl_tokenizer_bos_id(tk) >= 0) {
        s = tl_tokenizer_encode(tk, "hi", 2, TL_TOK_ADD_BOS, &ids, &n, &e);
        check(s, &e, "tl_tokenizer_encode(BOS)");
        if (s == TL_OK) free(ids);
    }
    tl_tokenizer_free(tk);
}

static int64_t numel_of(const int64_t *shape, int nd) {
    int64_t n = 1;
    for (int d = 0; d < nd; d++)
        if (shape[d] < 0 || __builtin_mul_overflow(n, shape[d], &n)) return -1;
    return n;
}

static int run_safetensors(const char *dir, const char *input) {
    inspect_to_null(input);
    tl_error e = {0};
    tl_st_file *f = NULL;
    tl_status s = tl_st_open(input, &f, &e);
    check(s, &e, "tl_st_open");
    if (s == TL_OK) {
        for (int i = 0; i < tl_st_count(f); i++) {
            const tl_st_tensor *t = tl_st_get(f, i);
            uint64_t nb = t->end - t->begin;
            if (nb > (64u << 20)) continue;
            void *buf = malloc(nb ? nb : 1);
            s = tl_st_read_bytes(f, t->name, buf, nb, &e);
            check(s, &e, "tl_st_read_bytes");
            free(buf);
            int64_t n = numel_of(t->shape, t->ndim);
            if (n < 0 || n > (16 << 20)) continue;
            float *fb = malloc((size_t)(n ? n : 1) * sizeof *fb);
            s = tl_st_read_f32(f, t->name, t->shape, t->ndim, fb, &e);
            if (t->dtype == TL_DT_F32 || t->dtype == TL_DT_F16 || t->dtype == TL_DT_BF16 || t->dtype == TL_DT_F64)
                check(s, &e, "tl_st_read_f32");
            else if (s == TL_OK) {
                fprintf(stderr, "FUZZ-BAD-RESULT: tl_st_read_f32 read %s of dtype %s\n", t->name, t->dtype_name);
                exit(3);
            }
            free(fb);
        }
        tl_st_close(f);
    }
    char model[4096];
    snprintf(model, sizeof model, "%s/model", dir);
    inspect_to_null(model);
    load_model(model);
    return 0;
}

static int run_hf_config(const char *dir, const char *input) {
    char model[4096];
    snprintf(model, sizeof model, "%s/model", dir);
    tl_error e = {0};
    tl_model_config c;
    tl_status s = tl_model_config_load(model, &c, &e);
    check(s, &e, "tl_model_config_load");
    inspect_to_null(model);
    load_model(model);
    return 0;
}

static int run_st_index(const char *dir, const char *input) {
    char model[4096];
    snprintf(model, sizeof model, "%s/model", dir);
    inspect_to_null(model);
    load_model(model);
    return 0;
}

static int run_gguf(const char *dir, const char *input) {
    inspect_to_null(input);
    load_model(input);
    use_tokenizer(input);
    return 0;
}

static int run_h5_sft(const char *dir, const char *input) {
    inspect_to_null(input);
    tl_error e = {0};
    tl_sft_dataset ds;
    memset(&ds, 0, sizeof ds);
    tl_status s = tl_sft_open(input, g_vocab, &ds, &e);
    check(s, &e, "tl_sft_open");
    if (s == TL_OK) tl_sft_free(&ds);
    return 0;
}

static int run_h5_pref(const char *dir, const char *input) {
    inspect_to_null(input);
    tl_error e = {0};
    tl_pref_dataset ds;
    memset(&ds, 0, sizeof ds);
    tl_status s = tl_pref_open(input, g_vocab, &ds, &e);
    check(s, &e, "tl_pref_open");
    if (s == TL_OK) tl_pref_free(&ds);
    return 0;
}

static int run_h5_prompt(const char *dir, const char *input) {
    inspect_to_null(input);
    tl_error e = {0};
    tl_prompt_dataset ds;
    memset(&ds, 0, sizeof ds);
    tl_status s = tl_prompt_open(input, g_vocab, &ds, &e);
    check(s, &e, "tl_prompt_open");
    if (s == TL_OK) tl_prompt_free(&ds);
    return 0;
}

static int run_config(const char *dir, const char *input) {
    static tl_config c, c2;
    tl_error e = {0};
    tl_status s = tl_config_load(input, NULL, 0, &c, &e);
    check(s, &e, "tl_config_load");
    if (s != TL_OK) return 0;
    /* what the run directory keeps must load back */
    char rt[4096];
    snprintf(rt, sizeof rt, "%s/resolved.yaml", dir);
    s = tl_config_write_file(&c, rt, &e);
    check(s, &e, "tl_config_write_file");
    if (s != TL_OK) return 0;
    s = tl_config_load(rt, NULL, 0, &c2, &e);
    if (s != TL_OK) {
        fprintf(stderr, "FUZZ-ROUNDTRIP: the written config does not load back: %s\n", e.msg);
        exit(3);
    }
    return 0;
}

/* Each line of the input is one command-line override applied over configs/sft_lora.yaml. */
static int run_config_override(const char *dir, const char *input) {
    blob b = {0};
    if (!read_file(input, &b)) exit(5);
    put(&b, "", 1);
    char *ov[64];
    int n = 0;
    for (char *p = (char *)b.p, *line; n < 64 && (line = strsep(&p, "\n")) != NULL;)
        if (*line || p) ov[n++] = line;
    static tl_config c;
    tl_error e = {0};
    tl_status s = tl_config_load(TL_SRC_DIR "/configs/sft_lora.yaml", ov, n, &c, &e);
    check(s, &e, "tl_config_load with overrides");
    free(b.p);
    return 0;
}

static int run_tokenizer_json(const char *dir, const char *input) {
    char model[4096];
    snprintf(model, sizeof model, "%s/tok", dir);
    use_tokenizer(model);
    return 0;
}

/* Only the input is in dir after a failed build: no output, no temporary file. */
static void expect_only_input(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *ent;
    while (d && (ent = readdir(d))) {
        if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, "..") || !strcmp(ent->d_name, "in.jsonl")) continue;
        fprintf(stderr, "FUZZ-LEFTOVER: a failed data build left %s/%s\n", dir, ent->d_name);
        exit(3);
    }
    if (d) closedir(d);
}

static int run_jsonl(const char *dir, const char *input) {
    static const char *kinds[] = {"sft", "preference"};
    int built = 0;
    for (int k = 0; k < 2; k++) {
        char out[4096];
        snprintf(out, sizeof out, "%s/out.h5", dir);
        tl_error e = {0};
        int was = g_expect_ok;
        /* a seed is of one kind: the other kind's error is expected */
        g_expect_ok = 0;
        tl_status s = tl_data_build(input, out, g_tokmodel, kinds[k], NULL, &e);
        check(s, &e, "tl_data_build");
        g_expect_ok = was;
        if (s != TL_OK) {
            expect_only_input(dir);
            continue;
        }
        built++;
        /* what data build writes, the reader of its kind takes */
        if (k == 0) {
            tl_sft_dataset ds;
            memset(&ds, 0, sizeof ds);
            s = tl_sft_open(out, g_vocab, &ds, &e);
            if (s == TL_OK) tl_sft_free(&ds);
        } else {
            tl_pref_dataset ds;
            memset(&ds, 0, sizeof ds);
            s = tl_pref_open(out, g_vocab, &ds, &e);
            if (s == TL_OK) tl_pref_free(&ds);
        }
        if (s != TL_OK) {
            /* tl_data_build checks rows, the reader checks the whole file (e.g. "no example has a token to train
             * on"): a file train refuses with a clear message is a note, not a finding */
            fprintf(stderr, "FUZZ-NOTE: data build wrote a %s dataset its reader refuses: %s\n", kinds[k], e.msg);
            exit(EXIT_NOTE);
        }
        unlink(out);
    }
    if (g_expect_ok && !built) {
        fprintf(stderr, "FUZZ-SEED-FAILS: tl_data_build built neither kind\n");
        exit(4);
    }
    if (built) g_had_error = 0; /* the other kind's refusal of a seed-like file is expected */
    return 0;
}

/* ----------------------------------------------------------------------------------------- seed generators */

/* GPT-2's bytes_to_unicode: the byte-level spelling of byte b as UTF-8. */
static void byte_char(int b, char out[4]) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}
static void json_str(blob *b, const char *s) {
    puts_(b, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf_(b, "\\%c", *s);
        else
            put(b, s, 1);
    }
    puts_(b, "\"");
}

/* A small byte-level BPE vocabulary: 256 byte tokens, merges, then the ChatML specials. */
static const char *const MERGES[][2] = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"\xc4\xa0", "w"}, {"o", "r"},
                                        {"\xc4\xa0w", "or"}, {"1", "2"}, {"c", "a"}};
#define N_MERGES 8
static const char *const SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

static void vocab_tokens(char tokens[][16], int *n) {
    int k = 0;
    for (int b = 0; b < 256; b++) byte_char(b, tokens[k++]);
    for (int m = 0; m < N_MERGES; m++) snprintf(tokens[k++], 16, "%s%s", MERGES[m][0], MERGES[m][1]);
    *n = k;
}

static void make_tokenizer_json(blob *b, int variant) {
    char tokens[300][16];
    int n;
    vocab_tokens(tokens, &n);
    puts_(b, "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [");
    for (int s = 0; s < 3; s++)
        printf_(b, "%s{\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
                   "\"normalized\": false, \"special\": true}",
                s ? ", " : "", n + s, SPECIALS[s]);
    puts_(b, "], \"normalizer\": null, ");
    if (variant == 0) {
        puts_(b, "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
                 "\"use_regex\": true}, \"post_processor\": null, ");
    } else {
        puts_(b, "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", "
                 "\"individual_digits\": true}, {\"type\": \"Split\", \"pattern\": {\"Regex\": ");
        json_str(b, "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+");
        puts_(b, "}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": "
                 "false, \"trim_offsets\": true, \"use_regex\": false}]}, \"post_processor\": {\"type\": "
                 "\"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<|endoftext|>\", \"type_id\": 0}}, "
                 "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {}}, ");
    }
    puts_(b, "\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, "
             "\"use_regex\": true}, \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "
             "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": false, "
             "\"byte_fallback\": false, \"ignore_merges\": false, \"vocab\": {");
    for (int i = 0; i < n; i++) {
        if (i) puts_(b, ", ");
        json_str(b, tokens[i]);
        printf_(b, ": %d", i);
    }
    puts_(b, "}, \"merges\": [");
    for (int m = 0; m < N_MERGES; m++) {
        if (variant == 0) {
            printf_(b, "%s\"%s %s\"", m ? ", " : "", MERGES[m][0], MERGES[m][1]);
        } else {
            printf_(b, "%s[\"%s\", \"%s\"]", m ? ", " : "", MERGES[m][0], MERGES[m][1]);
        }
    }
    puts_(b, "]}}\n");
}

static const char *SFT_ROWS =
    "{\"user\": \"ann\", \"group\": \"g1\", \"prompt\": \"Summarize: hello world.\", \"response\": \" A hello.\"}\n"
    "{\"user\": \"bob\", \"group\": \"g2\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
    "\"content\": \"Bonjour \\u00e7a va ?\"}, {\"role\": \"assistant\", \"content\": \"Oui, tr\\u00e8s bien.\"}]}\n"
    "\n"
    "{\"user\": \"ann\", \"group\": \"g1\", \"prompt\": \"\", \"response\": \"12345 numbers\\n\\ttab\"}\n"
    "{\"user\": \"caf\\u00e9 \\ud83d\\ude00\", \"group\": \"g2\", \"prompt\": \"Long or short?\", \"response\": \" Long, \\\"quoted\\\".\"}\n";
static const char *PREF_ROWS =
    "{\"user\": \"ann\", \"group\": \"g\", \"prompt\": \"Answer:\", \"chosen\": \" short\", \"rejected\": \" long words\"}\n"
    "{\"user\": \"bob\", \"group\": \"g\", \"prompt\": \"Q: 2+2?\", \"chosen\": \" 4\", \"rejected\": \" 5\"}\n"
    "{\"user\": \"ann\", \"group\": \"g\", \"prompt\": \"\\u4e2d\\u6587\", \"chosen\": \"\\u597d\", \"rejected\": \"\\u4e0d\"}\n";
static const char *PROMPT_ROWS =
    "{\"user\": \"ann\", \"group\": \"g\", \"prompt\": \"Answer:\", \"reference\": \" short\"}\n"
    "{\"user\": \"bob\", \"group\": \"g\", \"messages\": [{\"role\": \"user\", \"content\": \"Q: 2+2?\"}, "
    "{\"role\": \"assistant\", \"content\": \"4\"}]}\n"
    "{\"user\": \"ann\", \"group\": \"g\", \"prompt\": \"\\u4e2d\\u6587\", \"reference\": \"\"}\n";

/* YAML features the configs/ files do not use: a directive, flow mappings, quoting and escapes, a folded scalar */
static const char *CONFIG_STYLES =
    "%YAML 1.1\n"
    "---\n"
    "# flow and block styles, quoting, comments, a folded scalar\n"
    "run: {name: \"fz\\u00e9 run\", output_dir: 'runs/it''s', seed: 7}\n"
    "model:\n"
    "  path: models/tiny   # trailing comment\n"
    "adapter:\n"
    "  key: group\n"
    "  rank: 4\n"
    "  alpha: 8.0\n"
    "  targets:\n"
    "    - q_proj\n"
    "    - \"v_proj\"\n"
    "data: {train: d.h5, max_seq_len: 32}\n"
    "train:\n"
    "  lr: 1.0e-3\n"
    "  steps: 5\n"
    "  schedule: constant\n"
    "cluster:\n"
    "  setup:\n"
    "    - module load x\n"
    "    - >-\n"
    "      echo \"hi\"\n"
    "      there\n"
    "  env: [A=1, \"B=two words\"]\n"
    "...\n";

static void save_seed_text(target *t, const char *text) {
    blob b = {0};
    puts_(&b, text);
    add_seed(t, &b);
    free(b.p);
}

static void build_h5_seed(target *t, const char *rows, const char *kind, const char *name) {
    char in[4096], out[4096];
    snprintf(in, sizeof in, "%s/%s.jsonl", g_base, name);
    snprintf(out, sizeof out, "%s/%s.h5", g_base, name);
    if (!write_file(in, rows, strlen(rows))) die("cannot write %s", in);
    tl_error e = {0};
    if (tl_data_build(in, out, g_tokmodel, kind, NULL, &e) != TL_OK) die("seed data build: %s", e.msg);
    add_seed_file(t, out);
}

static void write_tiny_model(const char *dir, int bf16, int tie, int bias, uint64_t seed) {
    tl_model_config cfg;
    tl_tiny_config(&cfg, 64, 16, 1, 2, 1, 32, 0, tie, bias);
    tl_error e = {0};
    if (tl_write_random_model(dir, &cfg, seed, bf16, 1, &e) != TL_OK) die("tiny model: %s", e.msg);
}

/* --- GGUF: a one-layer llama of every dequantized tensor type, with a byte-level tokenizer in its metadata. */

enum { GV_U32 = 4, GV_I32 = 5, GV_F32 = 6, GV_STRING = 8, GV_ARRAY = 9 };
static void g_str(blob *b, const char *s) {
    u64(b, strlen(s));
    puts_(b, s);
}
static void g_kv_u32(blob *b, const char *k, uint32_t v) {
    g_str(b, k);
    u32(b, GV_U32);
    u32(b, v);
}
static void g_kv_f32(blob *b, const char *k, float v) {
    g_str(b, k);
    u32(b, GV_F32);
    uint32_t x;
    memcpy(&x, &v, 4);
    u32(b, x);
}
static void g_kv_str(blob *b, const char *k, const char *v) {
    g_str(b, k);
    u32(b, GV_STRING);
    g_str(b, v);
}
static uint16_t f16_bits(float f) { /* small normal values only */
    uint32_t x;
    memcpy(&x, &f, 4);
    int exp = (int)((x >> 23) & 0xff) - 127 + 15;
    if (exp <= 0) return (uint16_t)((x >> 16) & 0x8000);
    return (uint16_t)(((x >> 16) & 0x8000) | ((uint32_t)exp << 10) | ((x >> 13) & 0x3ff));
}

typedef struct {
    const char *name;
    int nd;
    int64_t ne[2];
    uint32_t type;
} gt;

/* bytes of n elements of a ggml type, its block filled with plausible values */
static void g_data(blob *b, uint32_t type, int64_t n) {
    uint16_t d = f16_bits(0.02f), m = f16_bits(-0.01f);
    for (int64_t i = 0; i < n;) {
        switch (type) {
        case 0: { /* F32 */
            float v = (float)((int)(rnd() % 200) - 100) / 500.0f;
            put(b, &v, 4);
            i++;
            break;
        }
        case 1: { /* F16 */
            uint16_t h = f16_bits((float)((int)(rnd() % 200) - 100) / 500.0f + 0.001f);
            put(b, &h, 2);
            i++;
            break;
        }
        case 30: { /* BF16 */
            float v = (float)((int)(rnd() % 200) - 100) / 500.0f;
            uint32_t x;
            memcpy(&x, &v, 4);
            uint16_t h = (uint16_t)(x >> 16);
            put(b, &h, 2);
            i++;
            break;
        }
        case 8: /* Q8_0: d, 32 int8 */
            put(b, &d, 2);
            for (int k = 0; k < 32; k++) {
                unsigned char q = (unsigned char)rnd();
                put(b, &q, 1);
            }
            i += 32;
            break;
        case 2: /* Q4_0: d, 16 nibble pairs */
        case 3: /* Q4_1: d, m, 16 */
            put(b, &d, 2);
            if (type == 3) put(b, &m, 2);
            for (int k = 0; k < 16; k++) {
                unsigned char q = (unsigned char)rnd();
                put(b, &q, 1);
            }
            i += 32;
            break;
        case 12: /* Q4_K: d, dmin, 12 scale bytes, 128 */
            put(b, &d, 2);
            put(b, &m, 2);
            for (int k = 0; k < 140; k++) {
                unsigned char q = (unsigned char)(rnd() & 0x3f);
                put(b, &q, 1);
            }
            i += 256;
            break;
        case 14: /* Q6_K: 128 ql, 64 qh, 16 scales, d */
            for (int k = 0; k < 208; k++) {
                unsigned char q = (unsigned char)(k >= 192 ? rnd() % 16 : rnd());
                put(b, &q, 1);
            }
            put(b, &d, 2);
            i += 256;
            break;
        default:
            die("g_data: type %u", type);
        }
    }
}

static void make_gguf(blob *out, int variant) {
    char tokens[300][16];
    int n;
    vocab_tokens(tokens, &n);
    int vocab = n + 3;
    const int H = 32, F = 64, HD = 16, NH = 2, NKV = 1;
    blob kv = {0};
    int n_kv = 0;
    g_kv_str(&kv, "general.architecture", "llama"), n_kv++;
    g_kv_str(&kv, "general.name", "fuzz"), n_kv++;
    g_kv_u32(&kv, "general.alignment", 32), n_kv++;
    g_kv_u32(&kv, "llama.block_count", 1), n_kv++;
    g_kv_u32(&kv, "llama.context_length", 256), n_kv++;
    g_kv_u32(&kv, "llama.embedding_length", (uint32_t)H), n_kv++;
    g_kv_u32(&kv, "llama.feed_forward_length", (uint32_t)F), n_kv++;
    g_kv_u32(&kv, "llama.attention.head_count", NH), n_kv++;
    g_kv_u32(&kv, "llama.attention.head_count_kv", NKV), n_kv++;
    g_kv_u32(&kv, "llama.rope.dimension_count", HD), n_kv++;
    g_kv_f32(&kv, "llama.rope.freq_base", 10000.0f), n_kv++;
    g_kv_f32(&kv, "llama.attention.layer_norm_rms_epsilon", 1e-5f), n_kv++;
    g_kv_u32(&kv, "llama.vocab_size", (uint32_t)vocab), n_kv++;
    if (variant == 1) g_kv_f32(&kv, "llama.rope.scale_linear", 2.0f), n_kv++;
    g_kv_str(&kv, "tokenizer.ggml.model", "gpt2"), n_kv++;
    g_kv_str(&kv, "tokenizer.ggml.pre", variant ? "smollm" : "default"), n_kv++;
    g_str(&kv, "tokenizer.ggml.tokens"), u32(&kv, GV_ARRAY), u32(&kv, GV_STRING), u64(&kv, (uint64_t)vocab), n_kv++;
    for (int i = 0; i < n; i++) g_str(&kv, tokens[i]);
    for (int s = 0; s < 3; s++) g_str(&kv, SPECIALS[s]);
    g_str(&kv, "tokenizer.ggml.token_type"), u32(&kv, GV_ARRAY), u32(&kv, GV_I32), u64(&kv, (uint64_t)vocab), n_kv++;
    for (int i = 0; i < vocab; i++) u32(&kv, i < n ? 1 : 3);
    g_str(&kv, "tokenizer.ggml.merges"), u32(&kv, GV_ARRAY), u32(&kv, GV_STRING), u64(&kv, N_MERGES), n_kv++;
    for (int m = 0; m < N_MERGES; m++) {
        char mm[40];
        snprintf(mm, sizeof mm, "%s %s", MERGES[m][0], MERGES[m][1]);
        g_str(&kv, mm);
    }
    g_kv_u32(&kv, "tokenizer.ggml.bos_token_id", (uint32_t)n), n_kv++;

    gt ts[] = {
        {"token_embd.weight", 2, {H, vocab}, variant ? 1 : 8},
        {"blk.0.attn_norm.weight", 1, {H, 1}, 0},
        {"blk.0.attn_q.weight", 2, {H, NH * HD}, variant ? 2 : 8},
        {"blk.0.attn_k.weight", 2, {H, NKV * HD}, 1},
        {"blk.0.attn_v.weight", 2, {H, NKV * HD}, variant ? 30 : 2},
        {"blk.0.attn_output.weight", 2, {NH * HD, H}, 3},
        {"blk.0.ffn_norm.weight", 1, {H, 1}, 0},
        {"blk.0.ffn_gate.weight", 2, {H, F}, variant ? 3 : 30},
        {"blk.0.ffn_up.weight", 2, {H, F}, 8},
        {"blk.0.ffn_down.weight", 2, {F, H}, 0},
        {"output_norm.weight", 1, {H, 1}, 0},
        {"output.weight", 2, {H, vocab}, 1},
        {"extra.q4k", 1, {256, 1}, 12},
        {"extra.q6k", 1, {256, 1}, 14},
    };
    int nt = (int)(sizeof ts / sizeof ts[0]) - (variant ? 2 : 0);
    blob data[16];
    memset(data, 0, sizeof data);
    for (int i = 0; i < nt; i++) g_data(&data[i], ts[i].type, ts[i].ne[0] * ts[i].ne[1]);
    puts_(out, "GGUF");
    u32(out, 3);
    u64(out, (uint64_t)nt);
    u64(out, (uint64_t)n_kv);
    put(out, kv.p, kv.n);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        g_str(out, ts[i].name);
        u32(out, (uint32_t)ts[i].nd);
        for (int d = 0; d < ts[i].nd; d++) u64(out, (uint64_t)ts[i].ne[d]);
        u32(out, ts[i].type);
        u64(out, off);
        off += (data[i].n + 31) / 32 * 32;
    }
    static const unsigned char zeros[32];
    put(out, zeros, (32 - out->n % 32) % 32);
    for (int i = 0; i < nt; i++) {
        put(out, data[i].p, data[i].n);
        if (i + 1 < nt) put(out, zeros, (32 - data[i].n % 32) % 32);
        free(data[i].p);
    }
    free(kv.p);
}

/* The input is text: every pre-tokenizer (GPT-2, SmolLM digits, Llama 3 and Qwen2 regexes) encodes it, and decoding
 * gives its bytes back (byte-level BPE is lossless, invalid UTF-8 included). */
static int run_tokenize_text(const char *dir, const char *input) {
    blob b = {0};
    if (!read_file(input, &b)) exit(5);
    static char tokens[300][16];
    int n;
    vocab_tokens(tokens, &n);
    const char *tok_ptrs[300], *merge_ptrs[N_MERGES];
    char merges[N_MERGES][40];
    for (int i = 0; i < n; i++) tok_ptrs[i] = tokens[i];
    for (int s = 0; s < 3; s++) tok_ptrs[n + s] = SPECIALS[s];
    int32_t types[300];
    for (int i = 0; i < n + 3; i++) types[i] = i < n ? TL_TOKTYPE_NORMAL : TL_TOKTYPE_CONTROL;
    for (int m = 0; m < N_MERGES; m++) {
        snprintf(merges[m], sizeof merges[m], "%s %s", MERGES[m][0], MERGES[m][1]);
        merge_ptrs[m] = merges[m];
    }
    static const char *const pres[] = {"gpt2", "smollm", "llama-bpe", "qwen2"};
    for (size_t k = 0; k < sizeof pres / sizeof pres[0]; k++) {
        tl_tokenizer *tk = NULL;
        tl_error e = {0};
        const tl_gguf_vocab v = {.model = "gpt2", .pre = pres[k], .tokens = (const char *const *)tok_ptrs,
                                 .n_tokens = (size_t)n + 3, .merges = (const char *const *)merge_ptrs,
                                 .n_merges = N_MERGES, .token_types = types, .bos_id = n};
        tl_status s = tl_tokenizer_from_vocab("fuzz", &v, &tk, &e);
        if (s != TL_OK) {
            fprintf(stderr, "FUZZ-SETUP: tokenizer %s: %s\n", pres[k], e.msg);
            exit(5);
        }
        int32_t *ids = NULL;
        size_t nid = 0;
        s = tl_tokenizer_encode(tk, (const char *)b.p, b.n, 0, &ids, &nid, &e);
        check(s, &e, "tl_tokenizer_encode");
        if (s == TL_OK) {
            char *out = NULL;
            size_t len = 0;
            s = tl_tokenizer_decode(tk, ids, nid, &out, &len, &e);
            check(s, &e, "tl_tokenizer_decode");
            if (s == TL_OK && (len != b.n || (len && memcmp(out, b.p, len) != 0))) {
                fprintf(stderr, "FUZZ-ROUNDTRIP: pre-tokenizer %s: decode(encode(text)) differs from the text\n",
                        pres[k]);
                exit(3);
            }
            free(out);
        }
        free(ids);
        tl_tokenizer_free(tk);
    }
    free(b.p);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ mutation */

static const int64_t INTERESTING[] = {0,          1,          -1,         2,          16,         32,        64,
                                      0x7f,       0x80,       0xff,       0x100,      0x7fff,     0x8000,    0xffff,
                                      0x10000,    0x7fffffff, INT32_MIN,  0xffffffffLL, 0x100000000LL, INT64_MAX,
                                      INT64_MIN,  4096,       1 << 20};
#define N_INTERESTING (sizeof INTERESTING / sizeof INTERESTING[0])
static const unsigned char INTERESTING8[] = {0, 0xff, 0x7f, 0x80, 1, 0x20, 0x0a, '"', '\\'};

static const char *const NUMBERS[] = {"0", "-1", "1", "-0", "1e309", "-1e309", "NaN", "nan", ".nan", "inf", ".inf",
                                      "-.inf", "99999999999999999999", "2147483647", "2147483648", "-2147483649",
                                      "9223372036854775807", "9223372036854775808", "-9223372036854775809",
                                      "0.5", "1e-400", "4294967296", "65536", "0x10", "1_000", "+5", "007", "1e2"};
static const char *const SPECIAL_TEXT[] = {
    "\\u0000", "\\ud800", "\\udfff\\ud800", "\"", "\\", "\xff", "\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80", "{", "[",
    "]", "}", ":", ",", "null", "true", "[]", "{}", "\"\"", "- ", ": ", "&a ", "*a", "!!binary ", "? ", "---\n",
    "...\n", "\t", "\n", "\r", "#", "<<: ", "!!str ", "~", "\"\\x\"", "\\n", "\\u12", "\\uZZZZ", "'", "|\n", ">\n",
    "<|im_start|>", "<|im_end|>", "1e999", "-"};

static size_t pick_pos(const blob *b) {
    /* headers hold most of the structure: half the positions fall in the first 4 KiB */
    if (b->n == 0) return 0;
    if (rnd() & 1) return below(b->n < 4096 ? b->n : 4096);
    return below(b->n);
}

static void mutate_binary(blob *b, const target *t) {
    size_t pos = pick_pos(b);
    switch (rnd() % 10) {
    case 0: /* bit flips */
        if (b->n) b->p[pos] ^= (unsigned char)(1u << (rnd() % 8));
        break;
    case 1:
        if (b->n) b->p[pos] = INTERESTING8[below(sizeof INTERESTING8)];
        break;
    case 2: { /* an interesting integer, 2, 4 or 8 bytes little-endian */
        size_t w = (size_t)1 << (1 + rnd() % 3);
        if (pos + w > b->n) break;
        uint64_t v = (uint64_t)INTERESTING[below(N_INTERESTING)];
        for (size_t k = 0; k < w; k++) b->p[pos + k] = (unsigned char)(v >> (8 * k));
        break;
    }
    case 3: /* small arithmetic on a 1, 4 or 8-byte integer */
    {
        size_t w = (size_t[]){1, 4, 8}[rnd() % 3];
        if (pos + w > b->n) break;
        uint64_t v = 0;
        for (size_t k = 0; k < w; k++) v |= (uint64_t)b->p[pos + k] << (8 * k);
        int64_t delta = (int64_t)(rnd() % 35) + 1;
        v = (rnd() & 1) ? v + (uint64_t)delta : v - (uint64_t)delta;
        for (size_t k = 0; k < w; k++) b->p[pos + k] = (unsigned char)(v >> (8 * k));
        break;
    }
    case 4:
        if (b->n) b->p[pos] = (unsigned char)rnd();
        break;
    case 5: /* truncation */
        b->n = pos;
        break;
    case 6: { /* chunk deletion */
        size_t len = 1 + below(rnd() & 1 ? 8 : 256);
        if (pos + len > b->n) len = b->n - pos;
        erase(b, pos, len);
        break;
    }
    case 7: { /* chunk duplication */
        if (!b->n) break;
        size_t from = below(b->n), len = 1 + below(rnd() & 1 ? 8 : 256);
        if (from + len > b->n) len = b->n - from;
        unsigned char *tmp = malloc(len);
        memcpy(tmp, b->p + from, len);
        insert_at(b, pos, tmp, len);
        free(tmp);
        break;
    }
    case 8: { /* splice with another seed: our head, its tail */
        const blob *o = &t->seeds[below((size_t)t->n_seeds)];
        if (!o->n) break;
        size_t from = below(o->n);
        b->n = pos;
        put(b, o->p + from, o->n - from);
        break;
    }
    default: { /* copy a chunk over another place */
        if (!b->n) break;
        size_t from = below(b->n), len = 1 + below(16);
        if (from + len > b->n) len = b->n - from;
        if (pos + len > b->n) len = b->n - pos;
        memmove(b->p + pos, b->p + from, len);
        break;
    }
    }
}

/* positions where ch occurs; one at random, or b->n if none */
static size_t find_random(const blob *b, const char *set) {
    size_t count = 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->p[i] && strchr(set, b->p[i])) count++;
    if (!count) return b->n;
    size_t k = below(count);
    for (size_t i = 0; i < b->n; i++)
        if (b->p[i] && strchr(set, b->p[i]) && k-- == 0) return i;
    return b->n;
}

static void line_bounds(const blob *b, size_t pos, size_t *s, size_t *e) {
    size_t a = pos, z = pos;
    while (a > 0 && b->p[a - 1] != '\n') a--;
    while (z < b->n && b->p[z] != '\n') z++;
    if (z < b->n) z++;
    *s = a, *e = z;
}

static void mutate_text(blob *b, const target *t) {
    switch (rnd() % 8) {
    case 0: { /* a number replaced */
        size_t p = find_random(b, "0123456789");
        if (p >= b->n) break;
        size_t a = p, z = p;
        while (a > 0 && strchr("0123456789.-+eE", b->p[a - 1]) && b->p[a - 1]) a--;
        while (z < b->n && b->p[z] && strchr("0123456789.-+eE", b->p[z])) z++;
        erase(b, a, z - a);
        const char *r = NUMBERS[below(sizeof NUMBERS / sizeof NUMBERS[0])];
        insert_at(b, a, r, strlen(r));
        break;
    }
    case 1: { /* a structural character deleted */
        size_t p = find_random(b, "\"{}[]:,'-");
        if (p < b->n) erase(b, p, 1);
        break;
    }
    case 2: { /* a line duplicated (duplicate keys in YAML / JSONL rows) */
        if (!b->n) break;
        size_t s, e;
        line_bounds(b, below(b->n), &s, &e);
        unsigned char *tmp = malloc(e - s + 1);
        memcpy(tmp, b->p + s, e - s);
        insert_at(b, e, tmp, e - s);
        free(tmp);
        break;
    }
    case 3: { /* a line deleted */
        if (!b->n) break;
        size_t s, e;
        line_bounds(b, below(b->n), &s, &e);
        erase(b, s, e - s);
        break;
    }
    case 4: { /* special text inserted */
        const char *r = SPECIAL_TEXT[below(sizeof SPECIAL_TEXT / sizeof SPECIAL_TEXT[0])];
        insert_at(b, below(b->n + 1), r, strlen(r));
        break;
    }
    case 5: { /* a long run or deep nesting */
        static const char *const fill[] = {"a", "[", "{\"a\":", "- ", "  ", "\\\\", "9", "\xc3\xa9"};
        const char *f = fill[below(sizeof fill / sizeof fill[0])];
        size_t reps = (size_t)1 << (4 + rnd() % 11), fl = strlen(f);
        blob tmp = {0};
        for (size_t i = 0; i < reps; i++) put(&tmp, f, fl);
        insert_at(b, below(b->n + 1), tmp.p, tmp.n);
        free(tmp.p);
        break;
    }
    case 6: { /* a "key": value item duplicated: from a quote to the next comma */
        size_t p = find_random(b, "\"");
        if (p >= b->n) break;
        size_t z = p + 1;
        while (z < b->n && b->p[z] != ',') z++;
        if (z >= b->n) break;
        size_t len = z + 1 - p;
        unsigned char *tmp = malloc(len);
        memcpy(tmp, b->p + p, len);
        insert_at(b, p, tmp, len);
        free(tmp);
        break;
    }
    default: { /* two lines swapped */
        if (!b->n) break;
        size_t s1, e1, s2, e2;
        line_bounds(b, below(b->n), &s1, &e1);
        line_bounds(b, below(b->n), &s2, &e2);
        if (s2 < s1) {
            size_t x = s1, y = e1;
            s1 = s2, e1 = e2, s2 = x, e2 = y;
        }
        if (e1 > s2) break;
        blob out = {0};
        put(&out, b->p, s1);
        put(&out, b->p + s2, e2 - s2);
        put(&out, b->p + e1, s2 - e1);
        put(&out, b->p + s1, e1 - s1);
        put(&out, b->p + e2, b->n - e2);
        free(b->p);
        *b = out;
        break;
    }
    }
}

/* safetensors: token-level mutations of the JSON header, its 8-byte length prefix kept right (mostly) */
static int mutate_st_header(blob *b, const target *t) {
    if (b->n < 8) return 0;
    uint64_t len = 0;
    for (int k = 7; k >= 0; k--) len = len << 8 | b->p[k];
    if (len > b->n - 8) return 0;
    blob h = {0};
    put(&h, b->p + 8, (size_t)len);
    mutate_text(&h, t);
    blob out = {0};
    uint64_t nl = rnd() % 8 ? (uint64_t)h.n : len;
    for (int k = 0; k < 8; k++) {
        unsigned char c = (unsigned char)(nl >> (8 * k));
        put(&out, &c, 1);
    }
    put(&out, h.p, h.n);
    put(&out, b->p + 8 + len, b->n - 8 - (size_t)len);
    free(h.p);
    free(b->p);
    *b = out;
    return 1;
}

static void mutate(blob *b, const target *t) {
    int n = 1 + (int)(rnd() % 4);
    for (int i = 0; i < n; i++) {
        if (!strcmp(t->name, "safetensors") && rnd() % 2 && mutate_st_header(b, t)) continue;
        if (t->text && rnd() % 10 < 7)
            mutate_text(b, t);
        else
            mutate_binary(b, t);
    }
    if (b->n > (4u << 20)) b->n = 4u << 20;
}

/* -------------------------------------------------------------------------------------- running one input */

static int g_timeout = 10;

typedef struct {
    int failed;       /* a finding */
    int refused;      /* no finding; some reader returned an error */
    int note;         /* no finding; sig holds a note */
    char sig[512];    /* what failed, one line (the sanitizer's SUMMARY line when there is one) */
} outcome;

static void first_line_with(const char *text, const char *key, char *out, size_t cap) {
    const char *p = strstr(text, key);
    if (!p) return;
    size_t n = strcspn(p, "\n");
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = 0;
}

static blob g_child_out;

/* Sanitizer reports of every process of a case, the child's and those of helper processes a reader starts (whose
 * stderr may be /dev/null), are files g_base/san.PID (__sanitizer_set_report_path in the child). Moves
 * them into out; returns how many there were. */
static int collect_san_reports(blob *out) {
    DIR *d = opendir(g_base);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, "san.", 4) != 0) continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", g_base, e->d_name);
        blob b = {0};
        if (read_file(p, &b) && out) put(out, b.p, b.n);
        free(b.p);
        unlink(p);
        n++;
    }
    if (d) closedir(d);
    return n;
}

/* A report whose first frame outside the sanitizer runtime and libc is in libhdf5 (and no UBSan "runtime error", which only
 * tailor's own code can raise) is libhdf5's crash; anything else is tailor's. */
static int report_in_libhdf5(const char *text) {
    if (strstr(text, "runtime error:")) return 0;
    for (const char *p = text; (p = strstr(p, "    #")) != NULL; p++) {
        size_t k = strcspn(p, "\n");
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(k < 1000 ? k : 1000), p);
        if (strstr(line, "libasan") || strstr(line, "libubsan") || strstr(line, "sanitizer_common") ||
            strstr(line, "__interceptor") || strstr(line, "libc.so") || strstr(line, "sysdeps/"))
            continue;
        return strstr(line, "libhdf5") != NULL;
    }
    return 0;
}

static outcome run_case(const target *t, const unsigned char *data, size_t n) {
    outcome oc = {0};
    oc.refused = 0;
    char dir[1024], input[2048], log[1024];
    snprintf(dir, sizeof dir, "%s/case", g_base);
    snprintf(log, sizeof log, "%s/child.log", g_base);
    rmtree(dir);
    mkdirs(dir);
    for (int i = 0; i < t->n_fixed; i++) {
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, t->fixed[i].rel);
        char parent[2048];
        snprintf(parent, sizeof parent, "%s", p);
        *strrchr(parent, '/') = 0;
        mkdirs(parent);
        if (!write_file(p, t->fixed[i].data.p, t->fixed[i].data.n)) die("cannot write %s", p);
    }
    snprintf(input, sizeof input, "%s/%s", dir, t->input);
    {
        char parent[2048];
        snprintf(parent, sizeof parent, "%s", input);
        *strrchr(parent, '/') = 0;
        mkdirs(parent);
    }
    if (!write_file(input, data, n)) die("cannot write %s", input);
    /* the input is also left where a crash of this whole program would not lose it */
    char last[1024];
    snprintf(last, sizeof last, "%s/last-input", g_base);
    write_file(last, data, n);
    collect_san_reports(NULL);
    fflush(stdout);
    fflush(stderr);
    if (getenv("TL_FUZZ_NOFORK")) { /* debugging one input: in this process, under a debugger */
        alarm((unsigned)g_timeout);
        t->run(dir, input);
        alarm(0);
        return oc;
    }
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0); /* its own group: whatever it starts goes with it */
#ifdef TL_FUZZ_ASAN
        char san_path[1100];
        snprintf(san_path, sizeof san_path, "%s/san", g_base);
        __sanitizer_set_report_path(san_path); /* this process's reports, and its children's: collect_san_reports */
#endif
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) _exit(6);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
#ifndef TL_FUZZ_ASAN
        struct rlimit rl = {(rlim_t)4 << 30, (rlim_t)4 << 30};
        setrlimit(RLIMIT_AS, &rl);
#endif
        alarm((unsigned)g_timeout);
        int rc = t->run(dir, input);
        exit(rc ? rc : g_had_error ? EXIT_REFUSED : 0);
    }
    int st = 0;
    setpgid(pid, pid);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    kill(-pid, SIGKILL); /* e.g. a reader's own helper process, left behind by a child killed by its alarm */
    g_child_out.n = 0;
    read_file(log, &g_child_out);
    put(&g_child_out, "", 1);
    g_child_out.n--;
    size_t own_output = g_child_out.n;
    blob san = {0};
    int n_reports = collect_san_reports(&san);
    put(&san, "", 1);
    san.n--;
    if (san.n) put(&g_child_out, san.p, san.n);
    put(&g_child_out, "", 1);
    g_child_out.n--;
    const char *text = (const char *)g_child_out.p;
    if (WIFSIGNALED(st)) {
        oc.failed = 1;
        if (WTERMSIG(st) == SIGALRM)
            snprintf(oc.sig, sizeof oc.sig, "hang: no result in %d s", g_timeout);
        else
            snprintf(oc.sig, sizeof oc.sig, "signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    } else if (WEXITSTATUS(st) == EXIT_NOTE) {
        oc.note = 1;
        first_line_with(text, "FUZZ-NOTE: ", oc.sig, sizeof oc.sig);
    } else if (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != EXIT_REFUSED) {
        oc.failed = 1;
        snprintf(oc.sig, sizeof oc.sig, "exit %d", WEXITSTATUS(st));
    } else if (own_output) {
        oc.failed = 1;
        snprintf(oc.sig, sizeof oc.sig, "stray output on stdout/stderr");
    }
    if (!oc.failed && n_reports) { /* a helper process's report: its caller got an error and went on */
        char summary[400] = "no SUMMARY line";
        first_line_with((const char *)san.p, "SUMMARY: ", summary, sizeof summary);
        if (report_in_libhdf5((const char *)san.p)) {
            oc.note = 1;
            snprintf(oc.sig, sizeof oc.sig, "libhdf5 crashed in a helper process (the reader refused the file): %s",
                     summary);
        } else {
            oc.failed = 1;
            snprintf(oc.sig, sizeof oc.sig, "sanitizer report from a helper process");
        }
    }
    free(san.p);
    oc.refused = !oc.failed && !oc.note && WIFEXITED(st) && WEXITSTATUS(st) == EXIT_REFUSED;
    if (oc.failed) {
        first_line_with(text, "FUZZ-", oc.sig, sizeof oc.sig);
        first_line_with(text, "runtime error: ", oc.sig, sizeof oc.sig);
        first_line_with(text, "SUMMARY: ", oc.sig, sizeof oc.sig);
        /* a bad message names the temporary path: keep the class only */
        char *colon = strstr(oc.sig, "FUZZ-") == oc.sig ? strstr(oc.sig, " with message") : NULL;
        if (colon) *colon = 0;
    }
    return oc;
}

static void print_child_output(void) {
    const char *p = (const char *)g_child_out.p;
    int lines = 0;
    while (p && *p && lines < 60) {
        size_t k = strcspn(p, "\n");
        fprintf(stderr, "    | %.*s\n", (int)k, p);
        p += k + (p[k] == '\n');
        lines++;
    }
}

/* Deletes chunks while the input still fails with the same signature (bounded). */
static void shrink(const target *t, blob *b, const char *sig, int budget) {
    for (size_t chunk = b->n / 2; chunk >= 1 && budget > 0; chunk /= 2) {
        for (size_t off = 0; off + chunk <= b->n && budget > 0;) {
            blob c = {0};
            put(&c, b->p, off);
            put(&c, b->p + off + chunk, b->n - off - chunk);
            outcome oc = run_case(t, c.p, c.n);
            budget--;
            if (oc.failed && !strcmp(oc.sig, sig)) {
                free(b->p);
                *b = c;
            } else {
                free(c.p);
                off += chunk;
            }
        }
        if (chunk == 1) break;
    }
}

/* ------------------------------------------------------------------------------------------------ the setup */

static target g_targets[] = {
    {"safetensors", 0, "model/model.safetensors", run_safetensors, {{0}}, 0, {{0}}, 0},
    {"hf_config", 1, "model/config.json", run_hf_config, {{0}}, 0, {{0}}, 0},
    {"st_index", 1, "model/model.safetensors.index.json", run_st_index, {{0}}, 0, {{0}}, 0},
    {"gguf", 0, "model.gguf", run_gguf, {{0}}, 0, {{0}}, 0},
    {"h5_sft", 0, "data.h5", run_h5_sft, {{0}}, 0, {{0}}, 0},
    {"h5_pref", 0, "data.h5", run_h5_pref, {{0}}, 0, {{0}}, 0},
    {"h5_prompt", 0, "data.h5", run_h5_prompt, {{0}}, 0, {{0}}, 0},
    {"config", 1, "config.yaml", run_config, {{0}}, 0, {{0}}, 0},
    {"config_override", 1, "overrides.txt", run_config_override, {{0}}, 0, {{0}}, 0},
    {"tokenizer_json", 1, "tok/tokenizer.json", run_tokenizer_json, {{0}}, 0, {{0}}, 0},
    {"tokenize_text", 1, "text.txt", run_tokenize_text, {{0}}, 0, {{0}}, 0},
    {"jsonl", 1, "in.jsonl", run_jsonl, {{0}}, 0, {{0}}, 0},
};
#define N_TARGETS (int)(sizeof g_targets / sizeof g_targets[0])

static void make_seeds(target *t) {
    char p[2048];
    if (!strcmp(t->name, "safetensors") || !strcmp(t->name, "hf_config")) {
        snprintf(p, sizeof p, "%s/m0", g_base);
        write_tiny_model(p, 0, 0, 1, 1);
        char q[2100];
        if (!strcmp(t->name, "safetensors")) {
            snprintf(q, sizeof q, "%s/config.json", p);
            add_fixed_file(t, "model/config.json", q);
            snprintf(q, sizeof q, "%s/model.safetensors", p);
            add_seed_file(t, q);
            snprintf(p, sizeof p, "%s/m1", g_base);
            write_tiny_model(p, 1, 0, 1, 2); /* the same shapes in BF16 */
            snprintf(q, sizeof q, "%s/model.safetensors", p);
            add_seed_file(t, q);
        } else {
            snprintf(q, sizeof q, "%s/model.safetensors", p);
            add_fixed_file(t, "model/model.safetensors", q);
            snprintf(q, sizeof q, "%s/config.json", p);
            add_seed_file(t, q);
        }
    } else if (!strcmp(t->name, "st_index")) {
        snprintf(p, sizeof p, "%s/m2", g_base);
        tl_model_config cfg;
        tl_tiny_config(&cfg, 64, 16, 1, 2, 1, 32, 0, 0, 1);
        tl_error e = {0};
        if (tl_write_random_model(p, &cfg, 3, 0, 2, &e) != TL_OK) die("tiny sharded model: %s", e.msg);
        static const char *const files[] = {"config.json", "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors"};
        static const char *const rels[] = {"model/config.json", "model/model-00001-of-00002.safetensors",
                                           "model/model-00002-of-00002.safetensors"};
        char q[2100];
        for (int i = 0; i < 3; i++) {
            snprintf(q, sizeof q, "%s/%s", p, files[i]);
            add_fixed_file(t, rels[i], q);
        }
        snprintf(q, sizeof q, "%s/model.safetensors.index.json", p);
        add_seed_file(t, q);
    } else if (!strcmp(t->name, "gguf")) {
        for (int v = 0; v < 2; v++) {
            blob b = {0};
            make_gguf(&b, v);
            add_seed(t, &b);
            free(b.p);
        }
    } else if (!strcmp(t->name, "h5_sft")) {
        build_h5_seed(t, SFT_ROWS, "sft", "sft");
    } else if (!strcmp(t->name, "h5_pref")) {
        build_h5_seed(t, PREF_ROWS, "preference", "pref");
    } else if (!strcmp(t->name, "h5_prompt")) {
        build_h5_seed(t, PROMPT_ROWS, "prompt", "prompt");
    } else if (!strcmp(t->name, "config")) {
        static const char *const files[] = {"sft_lora.yaml", "dpo_conflict.yaml", "quickstart_cluster.yaml"};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            snprintf(p, sizeof p, "%s/configs/%s", TL_SRC_DIR, files[i]);
            add_seed_file(t, p);
        }
        save_seed_text(t, CONFIG_STYLES);
    } else if (!strcmp(t->name, "config_override")) {
        save_seed_text(t, "train.lr=1e-4\nadapter.rank=4\nadapter.targets=[q_proj, v_proj]\nrun.name=x\n"
                          "train.steps=10\ndata.max_seq_len=32\ntrain.schedule=constant\nadapter.dropout=0.1\n"
                          "cluster.env=[A=1, B=2]\ntrain.grad_clip=0\nrun.seed=18446744073709551615");
        save_seed_text(t, "model.path=/nonexistent/model\ntask.type=sft\ntrain.backend=cpu\ntrain.micro_batch_tokens="
                          "4096\ntrain.eval_every=5");
    } else if (!strcmp(t->name, "tokenize_text")) {
        save_seed_text(t, "Hello world, it's DON'T 12345 67 caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 "
                          "a   b\n\n\tx  \r\n<|im_start|>user\nhi<|im_end|>X<|endoftext|> \xff\xc3( \xed\xa0\x80"
                          "e\xcc\x81 \xe2\x80\xa8 1,234.5 (f(x)) ?! ...\n");
        save_seed_text(t, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\nOui, tr\xc3\xa8s bien."
                          "<|im_end|>\n");
    } else if (!strcmp(t->name, "tokenizer_json")) {
        for (int v = 0; v < 2; v++) {
            blob b = {0};
            make_tokenizer_json(&b, v);
            add_seed(t, &b);
            free(b.p);
        }
    } else if (!strcmp(t->name, "jsonl")) {
        save_seed_text(t, SFT_ROWS);
        save_seed_text(t, PREF_ROWS);
    }
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_known_open(const char *target_name, const char *case_name) {
    char path[2048], line[1024], want[600];
    snprintf(path, sizeof path, "%s/tests/fuzz/regress/known_open.txt", TL_SRC_DIR);
    snprintf(want, sizeof want, "%s/%s", target_name, case_name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        size_t k = strcspn(line, " \t\r\n");
        if (line[0] != '#' && k == strlen(want) && !strncmp(line, want, k)) found = 1;
    }
    fclose(f);
    return found;
}

/* Replays tests/fuzz/regress/TARGET/; returns the number of failures that are not known-open. */
static int replay(const target *t) {
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regress/%s", TL_SRC_DIR, t->name);
    DIR *d = opendir(dir);
    if (!d) {
        printf("regress %s: no cases\n", t->name);
        return 0;
    }
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    int bad = 0, open_fail = 0;
    for (int i = 0; i < n; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        blob b = {0};
        if (!read_file(p, &b)) die("cannot read %s", p);
        outcome oc = run_case(t, b.p, b.n);
        int known = is_known_open(t->name, names[i]);
        if (oc.failed && known) {
            printf("regress %s/%s: KNOWN-OPEN, still fails (%s); not counted\n", t->name, names[i], oc.sig);
            open_fail++;
        } else if (oc.failed) {
            printf("regress %s/%s: FAILED: %s\n", t->name, names[i], oc.sig);
            print_child_output();
            bad++;
        } else if (oc.note) {
            printf("regress %s/%s: passes (%s)\n", t->name, names[i], oc.sig);
        } else if (known) {
            printf("regress %s/%s: passes now; remove it from tests/fuzz/regress/known_open.txt\n", t->name, names[i]);
        }
        free(b.p);
        free(names[i]);
    }
    printf("regress %s: %d case(s), %d failed, %d known-open still failing\n", t->name, n, bad, open_fail);
    return bad;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 0) die("%s must be a non-negative integer, got '%s'", name, v);
    return x;
}

static pid_t g_parent;
static void cleanup(void) { /* children exit() too (for LSan's check), but only the parent cleans up */
    if (g_base[0] && getpid() == g_parent && !getenv("TL_FUZZ_KEEP")) rmtree(g_base);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tl_fuzz TARGET [FILE...] (");
        for (int i = 0; i < N_TARGETS; i++) fprintf(stderr, "%s%s", i ? ", " : "", g_targets[i].name);
        fprintf(stderr, ")\n");
        return 2;
    }
    target *t = NULL;
    for (int i = 0; i < N_TARGETS; i++)
        if (!strcmp(argv[1], g_targets[i].name)) t = &g_targets[i];
    if (!t) die("unknown target '%s'", argv[1]);
    setenv("OMP_NUM_THREADS", "1", 0);
    /* a libhdf5 hang on a corrupt file becomes an error after this long (data/dataset.c), inside our alarm */
    setenv("TAILOR_HDF5_TIMEOUT_S", "2", 0);
    uint64_t seed = (uint64_t)env_long("TL_FUZZ_SEED", 1);
    double seconds = (double)env_long("TL_FUZZ_SECONDS", 15);
    long iters = env_long("TL_FUZZ_ITERS", 1000000);
    long max_findings = env_long("TL_FUZZ_MAX_FINDINGS", 10);
    g_timeout = (int)env_long("TL_FUZZ_TIMEOUT", 10);
    const char *fdir = getenv("TL_FUZZ_FINDINGS") ? getenv("TL_FUZZ_FINDINGS") : "fuzz-findings";

    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(g_base, sizeof g_base, "%s/tl_fuzz.XXXXXX", tmp);
    if (!mkdtemp(g_base)) die("mkdtemp: %s", strerror(errno));
    g_parent = getpid();
    atexit(cleanup);

    /* the tokenizer every data build uses */
    g_rng = 12345;
    snprintf(g_tokmodel, sizeof g_tokmodel, "%s/tokmodel", g_base);
    mkdirs(g_tokmodel);
    {
        blob b = {0};
        make_tokenizer_json(&b, 1);
        char p[700];
        snprintf(p, sizeof p, "%s/tokenizer.json", g_tokmodel);
        if (!write_file(p, b.p, b.n)) die("cannot write %s", p);
        free(b.p);
        tl_tokenizer *tk;
        tl_error e = {0};
        if (tl_tokenizer_for_model(g_tokmodel, &tk, &e) != TL_OK) die("seed tokenizer: %s", e.msg);
        g_vocab = (int)tl_tokenizer_vocab_size(tk);
        tl_tokenizer_free(tk);
    }
    make_seeds(t);

    /* every seed must load cleanly, or the fuzzing would only test one error path */
    g_expect_ok = 1;
    for (int i = 0; i < t->n_seeds; i++) {
        outcome oc = run_case(t, t->seeds[i].p, t->seeds[i].n);
        if (oc.failed) {
            fprintf(stderr, "tl_fuzz %s: seed %d does not pass: %s\n", t->name, i, oc.sig);
            print_child_output();
            return 2;
        }
    }
    g_expect_ok = 0;

    if (argc > 2) { /* just these inputs */
        int bad = 0;
        for (int i = 2; i < argc; i++) {
            blob b = {0};
            if (!read_file(argv[i], &b)) die("cannot read %s", argv[i]);
            outcome oc = run_case(t, b.p, b.n);
            printf("%s: %s\n", argv[i], oc.failed || oc.note ? oc.sig : oc.refused ? "refused (no finding)" : "accepted");
            if (oc.failed || oc.note) print_child_output();
            bad += oc.failed;
            free(b.p);
        }
        return bad ? 1 : 0;
    }

    int failures = replay(t);

    uint64_t tseed = seed ^ fnv(t->name, strlen(t->name));
    g_rng = tseed;
    double t0 = now_s();
    long execs = 0, findings = 0, refused = 0, notes = 0;
    char sigs[64][512];
    int n_sigs = 0;
    static char note_sigs[32][512];
    int n_note_sigs = 0;
    while (execs < iters && now_s() - t0 < seconds && findings < max_findings) {
        const blob *s = &t->seeds[below((size_t)t->n_seeds)];
        blob b = {0};
        put(&b, s->p, s->n);
        mutate(&b, t);
        outcome oc = run_case(t, b.p, b.n);
        execs++;
        refused += oc.refused;
        if (oc.note) { /* each distinct note once */
            notes++;
            int seen = 0;
            for (int k = 0; k < n_note_sigs; k++) seen |= !strcmp(note_sigs[k], oc.sig);
            if (!seen && n_note_sigs < 32) {
                snprintf(note_sigs[n_note_sigs++], sizeof note_sigs[0], "%s", oc.sig);
                printf("note %s (exec %ld): %s\n", t->name, execs, oc.sig);
                char p[4096];
                snprintf(p, sizeof p, "%s/%s/notes", fdir, t->name);
                mkdirs(p);
                snprintf(p, sizeof p, "%s/%s/notes/%s-%016" PRIx64, fdir, t->name, t->name, fnv(b.p, b.n));
                if (write_file(p, b.p, b.n)) printf("  kept as %s\n", p);
            }
        }
        if (oc.failed) {
            int seen = 0;
            for (int k = 0; k < n_sigs; k++) seen |= !strcmp(sigs[k], oc.sig);
            findings++;
            if (!seen) {
                printf("FINDING %s #%ld (exec %ld): %s\n", t->name, findings, execs, oc.sig);
                print_child_output();
                if (n_sigs < 64) snprintf(sigs[n_sigs++], sizeof sigs[0], "%s", oc.sig);
                if (!strstr(oc.sig, "hang")) shrink(t, &b, oc.sig, (int)env_long("TL_FUZZ_SHRINK", 200));
                char p[4096];
                snprintf(p, sizeof p, "%s/%s", fdir, t->name);
                mkdirs(p);
                snprintf(p, sizeof p, "%s/%s/%s-%016" PRIx64, fdir, t->name, t->name, fnv(b.p, b.n));
                if (write_file(p, b.p, b.n))
                    printf("  kept %zu bytes as %s\n", b.n, p);
                else
                    printf("  could not write %s\n", p);
            }
        }
        free(b.p);
    }
    double dt = now_s() - t0;
    printf("fuzz %s: seed %" PRIu64 ", %ld execs in %.1f s (%.0f/s; %ld refused, %ld accepted, %ld note(s)), %ld "
           "finding(s), %d distinct\n",
           t->name, seed, execs, dt, dt > 0 ? (double)execs / dt : 0.0, refused, execs - refused - findings - notes,
           notes, findings, n_sigs);
    return failures || findings ? 1 : 0;
}
