/* gguf: llama.cpp's GGUF model files read with pread, validated fully at open, tensors dequantized to fp32 with
 * ggml's block layouts (dequantize_row_* in ggml-quants.c, same operation order so results are bit-identical),
 * and the Llama tensor/metadata naming mapped back to HF's (the inverse of convert_hf_to_gguf.py). */
#include "data/tl_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_safetensors.h" /* tl_f16_to_f32, tl_bf16_to_f32 */

#define RD_BUF (1u << 16)
#define GGUF_DEFAULT_ALIGNMENT 32u
#define QK_K 256

/* ------------------------------------------------------------------------------------------ ggml types */

typedef struct {
    const char *name;
    uint32_t blck, size; /* elements per block, bytes per block; size 0 = unknown id */
} type_traits;

static const type_traits types[] = {
    [0] = {"F32", 1, 4},        [1] = {"F16", 1, 2},          [2] = {"Q4_0", 32, 18},      [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},       [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 40},
    [10] = {"Q2_K", 256, 84},   [11] = {"Q3_K", 256, 110},    [12] = {"Q4_K", 256, 144},   [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},  [15] = {"Q8_K", 256, 292},    [16] = {"IQ2_XXS", 256, 66}, [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},   [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82},  [23] = {"IQ4_XS", 256, 136},  [24] = {"I8", 1, 1},         [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},       [27] = {"I64", 1, 8},         [28] = {"F64", 1, 8},        [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},
};
#define N_TYPES ((uint32_t)(sizeof types / sizeof types[0]))

static const type_traits *traits(uint32_t t) { return t < N_TYPES && types[t].size ? &types[t] : NULL; }

const char *tl_gguf_type_name(uint32_t type) {
    const type_traits *tt = traits(type);
    return tt ? tt->name : "?";
}

static const char *vtype_name(uint32_t t) {
    static const char *n[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                              "bool",  "string", "array", "uint64", "int64", "float64"};
    return t < sizeof n / sizeof n[0] ? n[t] : "unknown";
}

static unsigned vtype_size(uint32_t t) {
    switch (t) {
    case TL_GGUF_U8: case TL_GGUF_I8: case TL_GGUF_BOOL: return 1;
    case TL_GGUF_U16: case TL_GGUF_I16: return 2;
    case TL_GGUF_U32: case TL_GGUF_I32: case TL_GGUF_F32: return 4;
    case TL_GGUF_U64: case TL_GGUF_I64: case TL_GGUF_F64: return 8;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------------------------ the file object */

typedef struct {
    char *key;
    uint32_t type, atype; /* atype: element type of arrays */
    uint64_t n;           /* array length */
    unsigned char scalar[8];
    char *str;            /* strings */
    uint64_t str_len;
    void *arr;            /* numeric array: n raw little-endian elements */
    char **strs;          /* string array */
    uint64_t *lens;
} kv_entry;

struct tl_gguf {
    char *path;
    int fd;
    uint64_t file_size, data_offset, alignment;
    uint32_t version;
    int n_kv, n_tensors;
    kv_entry *kv;
    tl_gguf_tensor *tensors;
    int have_cfg;
    tl_model_config cfg;
};

const char *tl_gguf_path(const tl_gguf *g) { return g->path; }
uint32_t tl_gguf_version(const tl_gguf *g) { return g->version; }
uint64_t tl_gguf_alignment(const tl_gguf *g) { return g->alignment; }
uint64_t tl_gguf_data_offset(const tl_gguf *g) { return g->data_offset; }

void tl_gguf_close(tl_gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) {
        kv_entry *e = &g->kv[i];
        free(e->key), free(e->str), free(e->arr), free(e->lens);
        if (e->strs)
            for (uint64_t j = 0; j < e->n; j++) free(e->strs[j]);
        free(e->strs);
    }
    for (int i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv), free(g->tensors);
    if (g->fd >= 0) close(g->fd);
    free(g->path);
    free(g);
}

/* Full pread of n bytes at off; the range was checked against the file size by the caller. */
static tl_status pread_all(const tl_gguf *g, uint64_t off, void *dst, size_t n, const char *what, tl_error *err) {
    unsigned char *p = dst;
    while (n > 0) {
        ssize_t r = pread(g->fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: reading %s: %s", g->path, what, strerror(errno));
        if (r == 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: file shrank while reading %s (truncated at byte %llu)", g->path,
                           what, (unsigned long long)off);
        p += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------ header reader */

typedef struct {
    tl_gguf *g;
    uint64_t pos;
    unsigned char *buf;
    uint64_t buf_start, buf_len;
    char what[400]; /* what is being read, for messages */
} reader;

static tl_status rd(reader *r, void *dst, uint64_t n, tl_error *err) {
    tl_gguf *g = r->g;
    if (n > g->file_size || r->pos > g->file_size - n)
        return tl_fail(err, TL_ERR_INPUT, "%s: truncated: %s needs %llu bytes at offset %llu, file is %llu bytes",
                       g->path, r->what, (unsigned long long)n, (unsigned long long)r->pos,
                       (unsigned long long)g->file_size);
    unsigned char *p = dst;
    while (n > 0) {
        if (r->pos >= r->buf_start && r->pos < r->buf_start + r->buf_len) {
            uint64_t k = r->buf_start + r->buf_len - r->pos;
            if (k > n) k = n;
            memcpy(p, r->buf + (r->pos - r->buf_start), (size_t)k);
            p += k, n -= k, r->pos += k;
            continue;
        }
        uint64_t want = g->file_size - r->pos;
        if (want > RD_BUF) want = RD_BUF;
        TL_TRY(pread_all(g, r->pos, r->buf, (size_t)want, r->what, err));
        r->buf_start = r->pos, r->buf_len = want;
    }
    return TL_OK;
}

static uint64_t le64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | b[i];
    return v;
}
static uint32_t le32(const unsigned char *b) { return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24; }

static tl_status rd_u32(reader *r, uint32_t *v, tl_error *err) {
    unsigned char b[4];
    TL_TRY(rd(r, b, 4, err));
    *v = le32(b);
    return TL_OK;
}
static tl_status rd_u64(reader *r, uint64_t *v, tl_error *err) {
    unsigned char b[8];
    TL_TRY(rd(r, b, 8, err));
    *v = le64(b);
    return TL_OK;
}

static uint64_t remaining(const reader *r) { return r->g->file_size - r->pos; }

/* A GGUF string: u64 length + bytes; returned NUL-terminated. */
static tl_status rd_str(reader *r, char **out, uint64_t *len, tl_error *err) {
    uint64_t n;
    TL_TRY(rd_u64(r, &n, err));
    if (n > remaining(r))
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: string length %llu runs past the end of the file (%llu bytes left)",
                       r->g->path, r->what, (unsigned long long)n, (unsigned long long)remaining(r));
    char *s = malloc((size_t)n + 1);
    if (!s) return tl_fail(err, TL_ERR_RUNTIME, "%s: %s: out of memory for a %llu-byte string", r->g->path, r->what,
                           (unsigned long long)n);
    tl_status st = rd(r, s, n, err);
    if (st != TL_OK) {
        free(s);
        return st;
    }
    s[n] = 0;
    *out = s;
    if (len) *len = n;
    return TL_OK;
}

static tl_status read_kv(reader *r, int idx, tl_error *err) {
    tl_gguf *g = r->g;
    kv_entry *e = &g->kv[idx];
    snprintf(r->what, sizeof r->what, "key #%d", idx);
    TL_TRY(rd_str(r, &e->key, NULL, err)); /* duplicates: find_duplicate once all are read */
    snprintf(r->what, sizeof r->what, "metadata key '%.300s'", e->key);
    TL_TRY(rd_u32(r, &e->type, err));
    if (e->type == TL_GGUF_STRING) return rd_str(r, &e->str, &e->str_len, err);
    if (e->type == TL_GGUF_ARRAY) {
        TL_TRY(rd_u32(r, &e->atype, err));
        TL_TRY(rd_u64(r, &e->n, err));
        if (e->atype == TL_GGUF_STRING) {
            if (e->n > remaining(r) / 8)
                return tl_fail(err, TL_ERR_INPUT, "%s: %s: array of %llu strings runs past the end of the file",
                               g->path, r->what, (unsigned long long)e->n);
            e->strs = calloc(e->n ? (size_t)e->n : 1, sizeof *e->strs);
            e->lens = calloc(e->n ? (size_t)e->n : 1, sizeof *e->lens);
            if (!e->strs || !e->lens)
                return tl_fail(err, TL_ERR_RUNTIME, "%s: %s: out of memory", g->path, r->what);
            for (uint64_t j = 0; j < e->n; j++) {
                snprintf(r->what, sizeof r->what, "metadata key '%.300s' element %llu", e->key, (unsigned long long)j);
                TL_TRY(rd_str(r, &e->strs[j], &e->lens[j], err));
            }
            return TL_OK;
        }
        unsigned es = vtype_size(e->atype);
        if (!es)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: arrays of %s (type %u) are not supported", g->path, r->what,
                           vtype_name(e->atype), e->atype);
        if (e->n > remaining(r) / es)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: array of %llu %s runs past the end of the file", g->path,
                           r->what, (unsigned long long)e->n, vtype_name(e->atype));
        e->arr = malloc(e->n ? (size_t)(e->n * es) : 1);
        if (!e->arr) return tl_fail(err, TL_ERR_RUNTIME, "%s: %s: out of memory", g->path, r->what);
        return rd(r, e->arr, e->n * es, err);
    }
    unsigned es = vtype_size(e->type);
    if (!es) return tl_fail(err, TL_ERR_INPUT, "%s: %s: unknown value type %u", g->path, r->what, e->type);
    TL_TRY(rd(r, e->scalar, es, err));
    if (e->type == TL_GGUF_BOOL && e->scalar[0] > 1)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: bool value %u is not 0 or 1", g->path, r->what, e->scalar[0]);
    return TL_OK;
}

static tl_status read_tensor_info(reader *r, int idx, tl_error *err) {
    tl_gguf *g = r->g;
    tl_gguf_tensor *t = &g->tensors[idx];
    snprintf(r->what, sizeof r->what, "tensor info #%d", idx);
    TL_TRY(rd_str(r, &t->name, NULL, err));
    snprintf(r->what, sizeof r->what, "tensor '%.300s'", t->name);
    uint32_t nd;
    TL_TRY(rd_u32(r, &nd, err));
    if (nd < 1 || nd > TL_GGUF_MAX_DIMS)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': n_dims %u is not in 1..%d", g->path, t->name, nd,
                       TL_GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    for (int d = 0; d < TL_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        TL_TRY(rd_u64(r, &v, err));
        if (v > (uint64_t)INT64_MAX)
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': dimension %u is %llu (too large)", g->path, t->name,
                           d, (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    TL_TRY(rd_u32(r, &t->type, err));
    TL_TRY(rd_u64(r, &t->offset, err));
    const type_traits *tt = traits(t->type);
    if (!tt) return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': unknown ggml type %u", g->path, t->name, t->type);
    if (t->ne[0] % tt->blck != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': row length %lld is not a multiple of the %s block size %u",
                       g->path, t->name, (long long)t->ne[0], tt->name, tt->blck);
    uint64_t nb = (uint64_t)t->ne[0] / tt->blck * tt->size; /* ne0 / blck <= 2^63 / 1 and size <= 292: check */
    if ((uint64_t)t->ne[0] / tt->blck > UINT64_MAX / tt->size) nb = UINT64_MAX;
    int64_t numel = t->ne[0];
    for (int d = 1; d < TL_GGUF_MAX_DIMS; d++) {
        uint64_t ne = (uint64_t)t->ne[d];
        if (ne != 0 && (nb > UINT64_MAX / ne || numel > INT64_MAX / t->ne[d]))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': size overflows", g->path, t->name);
        nb *= ne, numel *= t->ne[d];
    }
    if (nb == UINT64_MAX) return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': size overflows", g->path, t->name);
    t->nbytes = nb;
    return TL_OK;
}

/* A name that occurs twice among n (names is sorted in place, so a file of a million keys is no quadratic scan),
 * or NULL. */
static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
static const char *find_duplicate(const char **names, size_t n) {
    qsort(names, n, sizeof *names, cmp_cstr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i], names[i - 1]) == 0) return names[i];
    return NULL;
}

/* Metadata keys (kv) or tensor names are unique. */
static tl_status check_unique(const tl_gguf *g, int kv, tl_error *err) {
    size_t n = (size_t)(kv ? g->n_kv : g->n_tensors);
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", g->path);
    for (size_t i = 0; i < n; i++) names[i] = kv ? g->kv[i].key : g->tensors[i].name;
    const char *dup = find_duplicate(names, n);
    tl_status st = TL_OK;
    if (dup && kv) st = tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' appears twice", g->path, dup);
    if (dup && !kv) st = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' appears twice", g->path, dup);
    free(names);
    return st;
}

tl_status tl_gguf_open(const char *path, tl_gguf **out, tl_error *err) {
    *out = NULL;
    tl_gguf *g = calloc(1, sizeof *g);
    reader r = {0};
    if (!g || !(g->path = strdup(path)) || !(r.buf = malloc(RD_BUF))) {
        free(r.buf);
        if (g) free(g->path);
        free(g);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    r.g = g;
    g->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO must not block the open (then refused) */
    tl_status st = TL_OK;
    struct stat sb;
    if (g->fd < 0) {
        st = tl_fail(err, errno == ENOENT || errno == EACCES || errno == EISDIR ? TL_ERR_INPUT : TL_ERR_RUNTIME,
                     "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    if (fstat(g->fd, &sb) != 0) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: not a regular file", path);
        goto done;
    }
    g->file_size = (uint64_t)sb.st_size;

    unsigned char magic[4];
    snprintf(r.what, sizeof r.what, "the magic");
    if ((st = rd(&r, magic, 4, err)) != TL_OK) goto done;
    if (memcmp(magic, "GGUF", 4) != 0) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: not a GGUF file (magic %02x %02x %02x %02x, expected 'GGUF')", path,
                     magic[0], magic[1], magic[2], magic[3]);
        goto done;
    }
    snprintf(r.what, sizeof r.what, "the header");
    uint64_t n_tensors, n_kv;
    if ((st = rd_u32(&r, &g->version, err)) != TL_OK) goto done;
    if (g->version != 2 && g->version != 3) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: GGUF version %u is not supported (2 and 3 are; big-endian files are not)",
                     path, g->version);
        goto done;
    }
    if ((st = rd_u64(&r, &n_tensors, err)) != TL_OK || (st = rd_u64(&r, &n_kv, err)) != TL_OK) goto done;
    /* a key/value takes >= 13 bytes and a tensor info >= 32, so larger counts cannot fit in the file */
    if (n_kv > remaining(&r) / 13 || n_kv > INT_MAX) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: header claims %llu metadata keys, more than the file can hold", path,
                     (unsigned long long)n_kv);
        goto done;
    }
    if (n_tensors > remaining(&r) / 32 || n_tensors > INT_MAX) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: header claims %llu tensors, more than the file can hold", path,
                     (unsigned long long)n_tensors);
        goto done;
    }
    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
        goto done;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = (int)i + 1; /* so close frees a partly read entry */
        if ((st = read_kv(&r, (int)i, err)) != TL_OK) goto done;
    }
    if ((st = check_unique(g, 1, err)) != TL_OK) goto done;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int ai = tl_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        const kv_entry *e = &g->kv[ai];
        uint32_t a = le32(e->scalar);
        if (e->type != TL_GGUF_U32 || a == 0 || (a & (a - 1)) != 0) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: general.alignment must be a uint32 power of two, got %s %u", path,
                         vtype_name(e->type), e->type == TL_GGUF_U32 ? a : 0);
            goto done;
        }
        g->alignment = a;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = (int)i + 1;
        if ((st = read_tensor_info(&r, (int)i, err)) != TL_OK) goto done;
    }
    if ((st = check_unique(g, 0, err)) != TL_OK) goto done;
    g->data_offset = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    for (int i = 0; i < g->n_tensors; i++) {
        const tl_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': data offset %llu is not a multiple of the alignment %llu",
                         path, t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
            goto done;
        }
        if (g->data_offset > g->file_size || t->offset > g->file_size - g->data_offset ||
            t->nbytes > g->file_size - g->data_offset - t->offset) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': data [%llu, +%llu bytes) runs past the end of the file "
                         "(%llu bytes, data section at %llu)", path, t->name, (unsigned long long)t->offset,
                         (unsigned long long)t->nbytes, (unsigned long long)g->file_size,
                         (unsigned long long)g->data_offset);
            goto done;
        }
    }
done:
    free(r.buf);
    if (st != TL_OK) {
        tl_gguf_close(g);
        return st;
    }
    *out = g;
    return TL_OK;
}

/* ------------------------------------------------------------------------------------------ metadata */

int tl_gguf_n_kv(const tl_gguf *g) { return g->n_kv; }
const char *tl_gguf_kv_key(const tl_gguf *g, int i) { return g->kv[i].key; }
tl_gguf_vtype tl_gguf_kv_type(const tl_gguf *g, int i) { return (tl_gguf_vtype)g->kv[i].type; }
tl_gguf_vtype tl_gguf_kv_array_type(const tl_gguf *g, int i) { return (tl_gguf_vtype)g->kv[i].atype; }
uint64_t tl_gguf_kv_array_len(const tl_gguf *g, int i) { return g->kv[i].type == TL_GGUF_ARRAY ? g->kv[i].n : 0; }

int tl_gguf_find_key(const tl_gguf *g, const char *key) {
    for (int i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return i;
    return -1;
}

static tl_status need_key(const tl_gguf *g, const char *key, const char *expected, const kv_entry **out,
                          tl_error *err) {
    int i = tl_gguf_find_key(g, key);
    if (i < 0) return tl_fail(err, TL_ERR_INPUT, "%s: missing metadata key '%s' (%s)", g->path, key, expected);
    *out = &g->kv[i];
    return TL_OK;
}

static tl_status wrong_type(const tl_gguf *g, const kv_entry *e, const char *expected, tl_error *err) {
    if (e->type == TL_GGUF_ARRAY)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' must be %s, got an array of %s", g->path, e->key,
                       expected, vtype_name(e->atype));
    return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' must be %s, got %s", g->path, e->key, expected,
                   vtype_name(e->type));
}

/* One numeric element as int64 or double; returns 0 for non-numeric types. */
static int num_at(uint32_t type, const unsigned char *p, int64_t *iv, uint64_t *uv, double *dv, int *is_u) {
    *is_u = 0;
    switch (type) {
    case TL_GGUF_U8: case TL_GGUF_BOOL: *iv = p[0]; break;
    case TL_GGUF_I8: *iv = (int8_t)p[0]; break;
    case TL_GGUF_U16: *iv = (uint16_t)(p[0] | p[1] << 8); break;
    case TL_GGUF_I16: *iv = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
    case TL_GGUF_U32: *iv = le32(p); break;
    case TL_GGUF_I32: *iv = (int32_t)le32(p); break;
    case TL_GGUF_U64: *uv = le64(p), *is_u = 1; break;
    case TL_GGUF_I64: *iv = (int64_t)le64(p); break;
    case TL_GGUF_F32: {
        uint32_t b = le32(p);
        float f;
        memcpy(&f, &b, 4);
        *dv = f;
        return 2;
    }
    case TL_GGUF_F64: {
        uint64_t b = le64(p);
        memcpy(dv, &b, 8);
        return 2;
    }
    default: return 0;
    }
    if (*is_u) *dv = (double)*uv;
    else *dv = (double)*iv;
    return 1;
}

tl_status tl_gguf_get_int(const tl_gguf *g, const char *key, int64_t *out, tl_error *err) {
    const kv_entry *e = NULL;
    TL_TRY(need_key(g, key, "an integer", &e, err));
    int64_t iv = 0;
    uint64_t uv = 0;
    double dv;
    int is_u;
    if (e->type == TL_GGUF_ARRAY || e->type == TL_GGUF_STRING || num_at(e->type, e->scalar, &iv, &uv, &dv, &is_u) != 1)
        return wrong_type(g, e, "an integer", err);
    if (is_u) {
        if (uv > (uint64_t)INT64_MAX)
            return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s': %llu is too large", g->path, key,
                           (unsigned long long)uv);
        iv = (int64_t)uv;
    }
    *out = iv;
    return TL_OK;
}

tl_status tl_gguf_get_float(const tl_gguf *g, const char *key, double *out, tl_error *err) {
    const kv_entry *e = NULL;
    TL_TRY(need_key(g, key, "a number", &e, err));
    int64_t iv;
    uint64_t uv;
    int is_u;
    if (e->type == TL_GGUF_ARRAY || e->type == TL_GGUF_STRING || e->type == TL_GGUF_BOOL ||
        !num_at(e->type, e->scalar, &iv, &uv, out, &is_u))
        return wrong_type(g, e, "a number", err);
    return TL_OK;
}

tl_status tl_gguf_get_bool(const tl_gguf *g, const char *key, int *out, tl_error *err) {
    const kv_entry *e = NULL;
    TL_TRY(need_key(g, key, "a bool", &e, err));
    if (e->type != TL_GGUF_BOOL) return wrong_type(g, e, "a bool", err);
    *out = e->scalar[0];
    return TL_OK;
}

tl_status tl_gguf_get_str(const tl_gguf *g, const char *key, const char **out, uint64_t *len, tl_error *err) {
    const kv_entry *e = NULL;
    TL_TRY(need_key(g, key, "a string", &e, err));
    if (e->type != TL_GGUF_STRING) return wrong_type(g, e, "a string", err);
    *out = e->str;
    if (len) *len = e->str_len;
    return TL_OK;
}

tl_status tl_gguf_get_str_array(const tl_gguf *g, const char *key, const char *const **strs, const uint64_t **lens,
                                uint64_t *n, tl_error *err) {
    const kv_entry *e = NULL;
    TL_TRY(need_key(g, key, "an array of strings", &e, err));
    if (e->type != TL_GGUF_ARRAY || e->atype != TL_GGUF_STRING) return wrong_type(g, e, "an array of strings", err);
    *strs = (const char *const *)e->strs;
    if (lens) *lens = e->lens;
    *n = e->n;
    return TL_OK;
}

static tl_status num_array(const tl_gguf *g, const char *key, float *fdst, double *ddst, int64_t *idst, uint64_t n,
                           tl_error *err) {
    const kv_entry *e = NULL;
    TL_TRY(need_key(g, key, "a numeric array", &e, err));
    unsigned es = e->type == TL_GGUF_ARRAY ? vtype_size(e->atype) : 0;
    if (!es) return wrong_type(g, e, "a numeric array", err);
    if (e->n != n)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' has %llu elements, expected %llu", g->path, key,
                       (unsigned long long)e->n, (unsigned long long)n);
    for (uint64_t j = 0; j < n; j++) {
        int64_t iv = 0;
        uint64_t uv = 0;
        double dv = 0;
        int is_u;
        int k = num_at(e->atype, (const unsigned char *)e->arr + j * es, &iv, &uv, &dv, &is_u);
        if (fdst) {
            fdst[j] = (float)dv;
        } else if (ddst) {
            ddst[j] = dv;
        } else {
            if (k == 2) {
                if (!(dv >= -9.2e18 && dv <= 9.2e18) || dv != floor(dv))
                    return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' element %llu: %g is not an integer",
                                   g->path, key, (unsigned long long)j, dv);
                iv = (int64_t)dv;
            } else if (is_u) {
                if (uv > (uint64_t)INT64_MAX)
                    return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' element %llu is too large", g->path, key,
                                   (unsigned long long)j);
                iv = (int64_t)uv;
            }
            idst[j] = iv;
        }
    }
    return TL_OK;
}

tl_status tl_gguf_get_f32_array(const tl_gguf *g, const char *key, float *dst, uint64_t n, tl_error *err) {
    return num_array(g, key, dst, NULL, NULL, n, err);
}
tl_status tl_gguf_get_f64_array(const tl_gguf *g, const char *key, double *dst, uint64_t n, tl_error *err) {
    return num_array(g, key, NULL, dst, NULL, n, err);
}
tl_status tl_gguf_get_i64_array(const tl_gguf *g, const char *key, int64_t *dst, uint64_t n, tl_error *err) {
    return num_array(g, key, NULL, NULL, dst, n, err);
}

/* ------------------------------------------------------------------------------------------ dequantization */

static float h2f(const unsigned char *p) { return tl_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* ggml's get_scale_min_k4: 8 six-bit scales and mins packed in 12 bytes. */
static void scale_min_k4(int j, const unsigned char *q, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

static int supported(uint32_t type) {
    switch (type) {
    case TL_GGML_F32: case TL_GGML_F16: case TL_GGML_BF16: case TL_GGML_F64: case TL_GGML_Q8_0: case TL_GGML_Q4_0:
    case TL_GGML_Q4_1: case TL_GGML_Q4_K: case TL_GGML_Q6_K: return 1;
    default: return 0;
    }
}

int tl_gguf_dequantize(uint32_t type, const void *src, float *y, int64_t n) {
    const unsigned char *b = src;
    switch (type) {
    case TL_GGML_F32:
        memcpy(y, b, (size_t)n * 4); /* little-endian host, as the rest of tailor assumes */
        return 1;
    case TL_GGML_F16:
        for (int64_t i = 0; i < n; i++) y[i] = h2f(b + 2 * i);
        return 1;
    case TL_GGML_BF16:
        for (int64_t i = 0; i < n; i++) y[i] = tl_bf16_to_f32((uint16_t)(b[2 * i] | b[2 * i + 1] << 8));
        return 1;
    case TL_GGML_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t v = le64(b + 8 * i);
            double d;
            memcpy(&d, &v, 8);
            y[i] = (float)d;
        }
        return 1;
    case TL_GGML_Q8_0:
        for (int64_t i = 0; i < n / 32; i++, b += 34, y += 32) {
            const float d = h2f(b);
            for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
        }
        return 1;
    case TL_GGML_Q4_0:
        for (int64_t i = 0; i < n / 32; i++, b += 18, y += 32) {
            const float d = h2f(b);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((b[2 + j] & 0x0F) - 8) * d;
                y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
            }
        }
        return 1;
    case TL_GGML_Q4_1:
        for (int64_t i = 0; i < n / 32; i++, b += 20, y += 32) {
            const float d = h2f(b), m = h2f(b + 2);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(b[4 + j] & 0x0F) * d + m;
                y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
            }
        }
        return 1;
    case TL_GGML_Q4_K:
        for (int64_t i = 0; i < n / QK_K; i++, b += 144) {
            const float d = h2f(b), dmin = h2f(b + 2);
            const unsigned char *scales = b + 4, *q = b + 16;
            for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
                int sc, m;
                scale_min_k4(is, scales, &sc, &m);
                const float d1 = d * (float)sc, m1 = dmin * (float)m;
                scale_min_k4(is + 1, scales, &sc, &m);
                const float d2 = d * (float)sc, m2 = dmin * (float)m;
                for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
            }
        }
        return 1;
    case TL_GGML_Q6_K:
        for (int64_t i = 0; i < n / QK_K; i++, b += 210) {
            const unsigned char *ql = b, *qh = b + 128;
            const int8_t *sc = (const int8_t *)(b + 192);
            const float d = h2f(b + 208);
            for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * (float)sc[is] * (float)q1;
                    y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    y[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
            }
        }
        return 1;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------------------------------ tensors */

int tl_gguf_n_tensors(const tl_gguf *g) { return g->n_tensors; }
const tl_gguf_tensor *tl_gguf_tensor_at(const tl_gguf *g, int i) { return &g->tensors[i]; }

const tl_gguf_tensor *tl_gguf_find_tensor(const tl_gguf *g, const char *name) {
    for (int i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

int64_t tl_gguf_tensor_numel(const tl_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

tl_status tl_gguf_read_f32(tl_gguf *g, const char *name, float *dst, int64_t n, tl_error *err) {
    const tl_gguf_tensor *t = tl_gguf_find_tensor(g, name);
    if (!t) return tl_fail(err, TL_ERR_INPUT, "%s: no tensor '%s'", g->path, name);
    if (tl_gguf_tensor_numel(t) != n)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has %lld elements, expected %lld", g->path, name,
                       (long long)tl_gguf_tensor_numel(t), (long long)n);
    if (!supported(t->type))
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has type %s, which tailor cannot dequantize (supported: "
                       "F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)", g->path, name, tl_gguf_type_name(t->type));
    if (n == 0) return TL_OK;
    /* whole rows at a time, about 4 MiB of file data per read */
    const type_traits *tt = traits(t->type);
    const uint64_t row_bytes = (uint64_t)t->ne[0] / tt->blck * tt->size;
    const int64_t n_rows = n / t->ne[0];
    int64_t rows_per = (int64_t)((4u << 20) / row_bytes);
    if (rows_per < 1) rows_per = 1;
    if (rows_per > n_rows) rows_per = n_rows;
    unsigned char *buf = malloc((size_t)(rows_per * row_bytes));
    if (!buf) return tl_fail(err, TL_ERR_RUNTIME, "%s: tensor '%s': out of memory", g->path, name);
    tl_status st = TL_OK;
    char what[400];
    snprintf(what, sizeof what, "tensor '%.300s'", name);
    for (int64_t r0 = 0; r0 < n_rows && st == TL_OK; r0 += rows_per) {
        int64_t nr = n_rows - r0 < rows_per ? n_rows - r0 : rows_per;
        st = pread_all(g, g->data_offset + t->offset + (uint64_t)r0 * row_bytes, buf, (size_t)(nr * row_bytes), what,
                       err);
        if (st == TL_OK) tl_gguf_dequantize(t->type, buf, dst + r0 * t->ne[0], nr * t->ne[0]);
    }
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------------------------ HF view */

static const struct {
    const char *hf, *gguf;
} layer_map[] = {
    {"input_layernorm", "attn_norm"},        {"self_attn.q_proj", "attn_q"},   {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},          {"self_attn.o_proj", "attn_output"},
    {"post_attention_layernorm", "ffn_norm"}, {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},
};

int tl_gguf_hf_to_gguf_name(const char *hf, char *buf, size_t size) {
    int n = -1;
    if (strcmp(hf, "model.embed_tokens.weight") == 0) n = snprintf(buf, size, "token_embd.weight");
    else if (strcmp(hf, "model.norm.weight") == 0) n = snprintf(buf, size, "output_norm.weight");
    else if (strcmp(hf, "lm_head.weight") == 0) n = snprintf(buf, size, "output.weight");
    else if (strncmp(hf, "model.layers.", 13) == 0) {
        const char *p = hf + 13;
        long layer = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 9) layer = layer * 10 + (*p++ - '0'), digits++;
        if (!digits || *p != '.' || (digits > 1 && hf[13] == '0')) return 0;
        p++;
        for (size_t i = 0; i < sizeof layer_map / sizeof layer_map[0]; i++) {
            size_t l = strlen(layer_map[i].hf);
            if (strncmp(p, layer_map[i].hf, l) != 0) continue;
            const char *suf = p + l;
            if (strcmp(suf, ".weight") != 0 && strcmp(suf, ".bias") != 0) continue;
            n = snprintf(buf, size, "blk.%ld.%s%s", layer, layer_map[i].gguf, suf);
            break;
        }
    }
    return n > 0 && (size_t)n < size;
}

static const tl_gguf_tensor *hf_tensor(const tl_gguf *g, const char *hf) {
    char name[256];
    return tl_gguf_hf_to_gguf_name(hf, name, sizeof name) ? tl_gguf_find_tensor(g, name) : NULL;
}

int tl_gguf_has_hf_tensor(const tl_gguf *g, const char *hf_name) { return hf_tensor(g, hf_name) != NULL; }

int tl_gguf_hf_shape(const tl_gguf *g, const char *hf_name, int64_t shape[TL_GGUF_MAX_DIMS], int *ndim) {
    const tl_gguf_tensor *t = hf_tensor(g, hf_name);
    if (!t) return 0;
    *ndim = t->n_dims;
    for (int d = 0; d < t->n_dims; d++) shape[d] = t->ne[t->n_dims - 1 - d];
    return 1;
}

/* convert_hf_to_gguf.py permutes q/k rows within each head: HF row i*half + j (i = rotate-half side, j < half)
 * becomes GGUF row 2*j + i. Undo it in place, head by head. */
static tl_status unpermute(const tl_gguf *g, const char *hf, float *w, int64_t rows, int64_t cols, int n_head,
                           tl_error *err) {
    if (n_head <= 0 || rows % (2 * (int64_t)n_head) != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': %lld rows do not split into %d heads of even size",
                       g->path, hf, (long long)rows, n_head);
    const int64_t hd = rows / n_head, half = hd / 2;
    float *tmp = malloc((size_t)(hd * cols) * sizeof *tmp);
    if (!tmp) return tl_fail(err, TL_ERR_RUNTIME, "%s: tensor '%s': out of memory", g->path, hf);
    for (int h = 0; h < n_head; h++) {
        float *head = w + (int64_t)h * hd * cols;
        memcpy(tmp, head, (size_t)(hd * cols) * sizeof *tmp);
        for (int64_t i = 0; i < 2; i++)
            for (int64_t j = 0; j < half; j++)
                memcpy(head + (i * half + j) * cols, tmp + (2 * j + i) * cols, (size_t)cols * sizeof *tmp);
    }
    free(tmp);
    return TL_OK;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

tl_status tl_gguf_read_hf_tensor(tl_gguf *g, const char *hf_name, const int64_t *shape, int ndim, float *dst,
                                 tl_error *err) {
    int64_t hs[TL_GGUF_MAX_DIMS];
    int hn;
    if (!tl_gguf_hf_shape(g, hf_name, hs, &hn)) {
        char name[256];
        if (!tl_gguf_hf_to_gguf_name(hf_name, name, sizeof name))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has no GGUF counterpart", g->path, hf_name);
        return tl_fail(err, TL_ERR_INPUT, "%s: no tensor '%s' (for %s)", g->path, name, hf_name);
    }
    int same = hn == ndim;
    for (int d = 0; same && d < hn; d++) same = hs[d] == shape[d];
    if (!same) {
        char a[128] = "", b[128] = "";
        size_t la = 0, lb = 0;
        for (int d = 0; d < hn && la < sizeof a; d++)
            la += (size_t)snprintf(a + la, sizeof a - la, "%s%lld", d ? ", " : "", (long long)hs[d]);
        for (int d = 0; d < ndim && d < 8 && lb < sizeof b; d++)
            lb += (size_t)snprintf(b + lb, sizeof b - lb, "%s%lld", d ? ", " : "", (long long)shape[d]);
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has shape [%s], expected [%s]", g->path, hf_name, a, b);
    }
    char name[256];
    tl_gguf_hf_to_gguf_name(hf_name, name, sizeof name);
    int64_t n = 1;
    for (int d = 0; d < hn; d++) n *= hs[d];
    TL_TRY(tl_gguf_read_f32(g, name, dst, n, err));
    int is_q = strstr(hf_name, ".self_attn.q_proj.") != NULL, is_k = strstr(hf_name, ".self_attn.k_proj.") != NULL;
    if (!is_q && !is_k) return TL_OK;
    if (!g->have_cfg) TL_TRY(tl_gguf_model_config(g, &g->cfg, err));
    int64_t cols = ends_with(hf_name, ".bias") || hn == 1 ? 1 : hs[1];
    return unpermute(g, hf_name, dst, hs[0], cols, is_q ? g->cfg.num_attention_heads : g->cfg.num_key_value_heads,
                     err);
}

/* ------------------------------------------------------------------------------------------ config */

static tl_status get_pos_int(tl_gguf *g, const char *key, int required, int def, int *out, tl_error *err) {
    if (tl_gguf_find_key(g, key) < 0) {
        if (required) return tl_fail(err, TL_ERR_INPUT, "%s: missing metadata key '%s' (an integer)", g->path, key);
        *out = def;
        return TL_OK;
    }
    int64_t v;
    TL_TRY(tl_gguf_get_int(g, key, &v, err));
    /* a dimension's sane limit (tl_model_dim_limit), named with the GGUF key, before anything is sized from it */
    static const char *const hf_of[][2] = {
        {"llama.vocab_size", "vocab_size"},
        {"llama.embedding_length", "hidden_size"},
        {"llama.feed_forward_length", "intermediate_size"},
        {"llama.block_count", "num_hidden_layers"},
        {"llama.attention.head_count", "num_attention_heads"},
        {"llama.attention.head_count_kv", "num_key_value_heads"},
        {"llama.attention.key_length", "head_dim"},
        {"llama.attention.value_length", "head_dim"},
        {"llama.rope.dimension_count", "head_dim"},
        {"llama.context_length", "max_position_embeddings"},
    };
    for (size_t i = 0; i < sizeof hf_of / sizeof hf_of[0]; i++)
        if (!strcmp(key, hf_of[i][0]) && v > tl_model_dim_limit(hf_of[i][1]))
            return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s': %lld is above the supported limit %d", g->path,
                           key, (long long)v, tl_model_dim_limit(hf_of[i][1]));
    if (v <= 0 || v > INT_MAX)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata key '%s' must be a positive int, got %lld", g->path, key,
                       (long long)v);
    *out = (int)v;
    return TL_OK;
}

/* llama3 factor for one frequency, as convert_hf_to_gguf.py computes rope_freqs (and transformers the scaling). */
static double llama3_factor(double freq, double factor, double low, double high, double orig) {
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < orig / high) return 1.0;
    if (wavelen > orig / low) return factor;
    const double smooth = (orig / wavelen - low) / (high - low);
    return 1.0 / ((1 - smooth) / factor + smooth);
}

/* Finds llama3 parameters reproducing rope_freqs. The factors only depend on orig/low and high/low, so low is
 * taken as 1; orig/low comes out an integer for real models (8192 / 1). */
static tl_status fit_llama3(tl_gguf *g, tl_model_config *c, tl_error *err) {
    const tl_gguf_tensor *t = tl_gguf_find_tensor(g, "rope_freqs.weight");
    const int half = c->head_dim / 2;
    if (t->n_dims != 1 || t->ne[0] != half)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor 'rope_freqs.weight' has %lld elements, expected head_dim/2 = %d",
                       g->path, (long long)tl_gguf_tensor_numel(t), half);
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", g->path);
    tl_status st = tl_gguf_read_f32(g, "rope_freqs.weight", f, half, err);
    if (st != TL_OK) {
        free(f);
        return st;
    }
    double fmax = 0;
    int all_one = 1;
    for (int i = 0; i < half; i++) {
        if (!(f[i] >= 1.0f) || !isfinite(f[i])) {
            const double bad = f[i];
            free(f);
            return tl_fail(err, TL_ERR_INPUT, "%s: rope_freqs.weight[%d] = %g: only llama3-style factors (>= 1) are "
                           "supported", g->path, i, bad);
        }
        if (f[i] > fmax) fmax = f[i];
        if (f[i] != 1.0f) all_one = 0;
    }
    if (all_one) {
        free(f);
        return TL_OK;
    }
    double orig = 8192, low = 1, high = 4;
    /* smooth-region points: s = (1/r - 1/F) / (1 - 1/F) is linear in freq: s = a * freq + b */
    int i0 = -1, i1 = -1;
    for (int i = 0; i < half; i++)
        if (f[i] > 1.0f + 1e-6f && f[i] < fmax * (1 - 1e-6)) {
            if (i0 < 0) i0 = i;
            i1 = i;
        }
    if (i0 >= 0 && i1 > i0) {
        double fr0 = pow(c->rope_theta, -2.0 * i0 / c->head_dim), fr1 = pow(c->rope_theta, -2.0 * i1 / c->head_dim);
        double s0 = (1.0 / f[i0] - 1.0 / fmax) / (1 - 1.0 / fmax), s1 = (1.0 / f[i1] - 1.0 / fmax) / (1 - 1.0 / fmax);
        double a = (s1 - s0) / (fr1 - fr0), b = s0 - a * fr0;
        if (b < 0 && a > 0) {
            high = 1 - 1 / b;
            orig = round(-2 * M_PI * a / b);
        }
    }
    /* the fit comes from float32 factors; prefer the nearby round value (4.0, not 3.9999998) when it fits too */
    const double snapped = round(high * 1000) / 1000;
    int ok = 0;
    for (int attempt = 0; attempt < 2 && !ok; attempt++) {
        const double hi = attempt == 0 ? snapped : high;
        ok = orig >= 1 && orig <= INT_MAX && hi > low;
        for (int i = 0; ok && i < half; i++) {
            double want = llama3_factor(pow(c->rope_theta, -2.0 * i / c->head_dim), fmax, low, hi, orig);
            if (fabs(want - f[i]) > 1e-4 * want) ok = 0;
        }
        if (ok) high = hi;
    }
    free(f);
    if (!ok)
        return tl_fail(err, TL_ERR_INPUT, "%s: rope_freqs.weight does not match llama3-style RoPE scaling (the only "
                       "per-frequency scaling tailor supports)", g->path);
    c->rope_type = TL_ROPE_LLAMA3;
    c->rope_factor = (float)fmax;
    c->rope_low_freq_factor = (float)low;
    c->rope_high_freq_factor = (float)high;
    c->rope_original_max_pos = (int)orig;
    return TL_OK;
}

tl_status tl_gguf_model_config(tl_gguf *g, tl_model_config *cfg, tl_error *err) {
    tl_model_config c;
    memset(&c, 0, sizeof c);
    const char *arch;
    TL_TRY(tl_gguf_get_str(g, "general.architecture", &arch, NULL, err));
    if (strcmp(arch, "llama") != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: general.architecture is '%.200s'; tailor reads only 'llama' GGUF models",
                       g->path, arch);
    snprintf(c.arch, sizeof c.arch, "LlamaForCausalLM");
    snprintf(c.model_type, sizeof c.model_type, "llama");
    TL_TRY(get_pos_int(g, "llama.block_count", 1, 0, &c.num_hidden_layers, err));
    TL_TRY(get_pos_int(g, "llama.embedding_length", 1, 0, &c.hidden_size, err));
    TL_TRY(get_pos_int(g, "llama.feed_forward_length", 1, 0, &c.intermediate_size, err));
    TL_TRY(get_pos_int(g, "llama.attention.head_count", 1, 0, &c.num_attention_heads, err));
    TL_TRY(get_pos_int(g, "llama.attention.head_count_kv", 0, c.num_attention_heads, &c.num_key_value_heads, err));
    TL_TRY(get_pos_int(g, "llama.context_length", 1, 0, &c.max_position_embeddings, err));
    TL_TRY(get_pos_int(g, "llama.attention.key_length", 0, c.hidden_size / c.num_attention_heads, &c.head_dim, err));
    int vlen, rdim;
    TL_TRY(get_pos_int(g, "llama.attention.value_length", 0, c.head_dim, &vlen, err));
    if (vlen != c.head_dim)
        return tl_fail(err, TL_ERR_INPUT, "%s: llama.attention.value_length %d differs from key_length %d", g->path,
                       vlen, c.head_dim);
    TL_TRY(get_pos_int(g, "llama.rope.dimension_count", 0, c.head_dim, &rdim, err));
    if (rdim != c.head_dim)
        return tl_fail(err, TL_ERR_INPUT, "%s: llama.rope.dimension_count %d differs from head_dim %d (partial "
                       "rotary embeddings are not supported)", g->path, rdim, c.head_dim);
    double v;
    TL_TRY(tl_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &v, err));
    c.rms_norm_eps = (float)v;
    c.rope_theta = 10000.0f;
    if (tl_gguf_find_key(g, "llama.rope.freq_base") >= 0) {
        TL_TRY(tl_gguf_get_float(g, "llama.rope.freq_base", &v, err));
        c.rope_theta = (float)v;
    }
    const tl_gguf_tensor *emb = tl_gguf_find_tensor(g, "token_embd.weight");
    if (tl_gguf_find_key(g, "llama.vocab_size") >= 0) {
        TL_TRY(get_pos_int(g, "llama.vocab_size", 1, 0, &c.vocab_size, err));
    } else if (tl_gguf_find_key(g, "tokenizer.ggml.tokens") >= 0) {
        const char *const *s;
        uint64_t n;
        TL_TRY(tl_gguf_get_str_array(g, "tokenizer.ggml.tokens", &s, NULL, &n, err));
        if (n == 0 || n > INT_MAX)
            return tl_fail(err, TL_ERR_INPUT, "%s: tokenizer.ggml.tokens has %llu entries", g->path,
                           (unsigned long long)n);
        c.vocab_size = (int)n;
    } else if (emb && emb->n_dims == 2 && emb->ne[1] > 0 && emb->ne[1] <= INT_MAX) {
        c.vocab_size = (int)emb->ne[1];
    } else {
        return tl_fail(err, TL_ERR_INPUT, "%s: no vocabulary size (llama.vocab_size, tokenizer.ggml.tokens or "
                       "token_embd.weight)", g->path);
    }
    if (emb && (emb->n_dims != 2 || emb->ne[1] != c.vocab_size || emb->ne[0] != c.hidden_size))
        return tl_fail(err, TL_ERR_INPUT, "%s: token_embd.weight has ne [%lld, %lld], expected [%d, %d] (hidden, vocab)",
                       g->path, (long long)emb->ne[0], (long long)emb->ne[1], c.hidden_size, c.vocab_size);
    c.tie_word_embeddings = tl_gguf_find_tensor(g, "output.weight") == NULL;
    c.attention_bias = tl_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;

    c.rope_type = TL_ROPE_DEFAULT;
    const char *stype = NULL;
    if (tl_gguf_find_key(g, "llama.rope.scaling.type") >= 0)
        TL_TRY(tl_gguf_get_str(g, "llama.rope.scaling.type", &stype, NULL, err));
    if (stype && strcmp(stype, "linear") == 0) {
        TL_TRY(tl_gguf_get_float(g, "llama.rope.scaling.factor", &v, err));
        c.rope_type = TL_ROPE_LINEAR;
        c.rope_factor = (float)v;
    } else if (stype && strcmp(stype, "none") != 0) {
        return tl_fail(err, TL_ERR_INPUT, "%s: llama.rope.scaling.type '%.100s' is not supported (none, linear, or "
                       "llama3 factors in rope_freqs.weight)", g->path, stype);
    } else if (!stype && tl_gguf_find_key(g, "llama.rope.scale_linear") >= 0) {
        TL_TRY(tl_gguf_get_float(g, "llama.rope.scale_linear", &v, err));
        if (v != 1.0) c.rope_type = TL_ROPE_LINEAR, c.rope_factor = (float)v;
    }
    if (tl_gguf_find_tensor(g, "rope_freqs.weight")) {
        if (c.rope_type != TL_ROPE_DEFAULT)
            return tl_fail(err, TL_ERR_INPUT, "%s: both linear RoPE scaling and rope_freqs.weight are present", g->path);
        TL_TRY(fit_llama3(g, &c, err));
    }
    TL_TRY(tl_model_config_check(&c, g->path, err));
    *cfg = c;
    g->cfg = c;
    g->have_cfg = 1;
    return TL_OK;
}
