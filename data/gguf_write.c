/* tl_gguf_write: a GGUF v3 writer (see tl_gguf_write.h). Key/values are serialized into one growing buffer as
 * they are added; tensors are described up front and their bytes produced one tensor at a time while writing. */
#include "data/tl_gguf_write.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_io.h"

#define GGUF_DEFAULT_ALIGN 32

typedef struct {
    char *name;
    int n_dims;
    int64_t ne[TL_GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t nbytes, offset;
    tl_gguf_produce_fn produce;
    void *ctx;
} wtensor;

struct tl_gguf_writer {
    unsigned char *kv;
    size_t kv_n, kv_cap;
    uint64_t n_kv;
    char **keys;
    size_t n_keys, keys_cap;
    wtensor *t;
    size_t n_t, t_cap;
    uint64_t align;
    int bad; /* out of memory while serializing */
};

uint16_t tl_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ex = (x >> 23) & 0xFFu, man = x & 0x7FFFFFu;
    if (ex == 0xFFu) return (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0)); /* inf, nan */
    int32_t e = (int32_t)ex - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7C00u); /* overflow */
    if (e <= 0) {                                   /* subnormal half (or zero) */
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into the exponent: still correct */
    return (uint16_t)(sign | h);
}

tl_gguf_writer *tl_gguf_writer_new(void) {
    tl_gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->align = GGUF_DEFAULT_ALIGN;
    return w;
}

void tl_gguf_writer_free(tl_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_keys; i++) free(w->keys[i]);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->keys);
    free(w->t);
    free(w->kv);
    free(w);
}

static void put(tl_gguf_writer *w, const void *p, size_t n) {
    if (w->bad || n == 0) return;
    if (w->kv_n + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_n + n) cap *= 2;
        unsigned char *nb = realloc(w->kv, cap);
        if (!nb) {
            w->bad = 1;
            return;
        }
        w->kv = nb, w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_n, p, n);
    w->kv_n += n;
}

/* little-endian integers (every target tailor builds for is little-endian; GGUF v3 is too) */
static void put_u32(tl_gguf_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(tl_gguf_writer *w, uint64_t v) { put(w, &v, 8); }
static void put_str(tl_gguf_writer *w, const char *s, uint64_t n) {
    put_u64(w, n);
    put(w, s, (size_t)n);
}

int tl_gguf_writer_has_key(const tl_gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_keys; i++)
        if (!strcmp(w->keys[i], key)) return 1;
    return 0;
}

/* Registers key (no duplicates) and writes its name and type. */
static tl_status begin_kv(tl_gguf_writer *w, const char *key, tl_gguf_vtype type, tl_error *err) {
    if (!w || !key || !*key) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: empty key");
    if (tl_gguf_writer_has_key(w, key)) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: duplicate key '%s'", key);
    if (w->n_keys == w->keys_cap) {
        size_t cap = w->keys_cap ? 2 * w->keys_cap : 32;
        char **nk = realloc(w->keys, cap * sizeof *nk);
        if (!nk) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory");
        w->keys = nk, w->keys_cap = cap;
    }
    if (!(w->keys[w->n_keys] = strdup(key))) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory");
    w->n_keys++;
    w->n_kv++;
    put_str(w, key, strlen(key));
    put_u32(w, (uint32_t)type);
    return TL_OK;
}

static tl_status end_kv(tl_gguf_writer *w, tl_error *err) {
    return w->bad ? tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory") : TL_OK;
}

tl_status tl_gguf_writer_kv_str(tl_gguf_writer *w, const char *key, const char *value, tl_error *err) {
    TL_TRY(begin_kv(w, key, TL_GGUF_STRING, err));
    put_str(w, value, strlen(value));
    return end_kv(w, err);
}

tl_status tl_gguf_writer_kv_u32(tl_gguf_writer *w, const char *key, uint32_t value, tl_error *err) {
    TL_TRY(begin_kv(w, key, TL_GGUF_U32, err));
    put_u32(w, value);
    if (!strcmp(key, "general.alignment")) {
        if (value == 0 || (value & (value - 1)) != 0)
            return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: general.alignment %u is not a power of two", value);
        w->align = value;
    }
    return end_kv(w, err);
}

tl_status tl_gguf_writer_kv_f32(tl_gguf_writer *w, const char *key, float value, tl_error *err) {
    TL_TRY(begin_kv(w, key, TL_GGUF_F32, err));
    put(w, &value, 4);
    return end_kv(w, err);
}

tl_status tl_gguf_writer_kv_bool(tl_gguf_writer *w, const char *key, int value, tl_error *err) {
    TL_TRY(begin_kv(w, key, TL_GGUF_BOOL, err));
    unsigned char b = value ? 1 : 0;
    put(w, &b, 1);
    return end_kv(w, err);
}

static int num_size(tl_gguf_vtype t) {
    switch (t) {
    case TL_GGUF_U8: case TL_GGUF_I8: case TL_GGUF_BOOL: return 1;
    case TL_GGUF_U16: case TL_GGUF_I16: return 2;
    case TL_GGUF_U32: case TL_GGUF_I32: case TL_GGUF_F32: return 4;
    case TL_GGUF_U64: case TL_GGUF_I64: case TL_GGUF_F64: return 8;
    default: return 0;
    }
}

/* One number of type t from an integer or a double (is_int selects which). */
static void put_num(tl_gguf_writer *w, tl_gguf_vtype t, int64_t iv, double dv, int is_int) {
    unsigned char b[8];
    int64_t i = is_int ? iv : (int64_t)dv;
    switch (t) {
    case TL_GGUF_F32: {
        float f = is_int ? (float)iv : (float)dv;
        memcpy(b, &f, 4);
        break;
    }
    case TL_GGUF_F64: {
        double d = is_int ? (double)iv : dv;
        memcpy(b, &d, 8);
        break;
    }
    default:
        memcpy(b, &i, 8); /* little-endian: the low bytes are the value in every narrower two's-complement type */
    }
    put(w, b, (size_t)num_size(t));
}

static tl_status begin_array(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem, uint64_t n, tl_error *err) {
    if (elem != TL_GGUF_STRING && num_size(elem) == 0)
        return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: key '%s': bad array element type %d", key, (int)elem);
    TL_TRY(begin_kv(w, key, TL_GGUF_ARRAY, err));
    put_u32(w, (uint32_t)elem);
    put_u64(w, n);
    return TL_OK;
}

tl_status tl_gguf_writer_kv_num_array(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem_type,
                                      const double *v, uint64_t n, tl_error *err) {
    if (elem_type == TL_GGUF_STRING) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: '%s': not numeric", key);
    TL_TRY(begin_array(w, key, elem_type, n, err));
    for (uint64_t i = 0; i < n; i++) put_num(w, elem_type, 0, v[i], 0);
    return end_kv(w, err);
}

tl_status tl_gguf_writer_kv_i64_array(tl_gguf_writer *w, const char *key, tl_gguf_vtype elem_type,
                                      const int64_t *v, uint64_t n, tl_error *err) {
    if (elem_type == TL_GGUF_STRING) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: '%s': not numeric", key);
    TL_TRY(begin_array(w, key, elem_type, n, err));
    for (uint64_t i = 0; i < n; i++) put_num(w, elem_type, v[i], 0, 1);
    return end_kv(w, err);
}

tl_status tl_gguf_writer_kv_str_array(tl_gguf_writer *w, const char *key, const char *const *s,
                                      const uint64_t *lens, uint64_t n, tl_error *err) {
    TL_TRY(begin_array(w, key, TL_GGUF_STRING, n, err));
    for (uint64_t i = 0; i < n; i++) put_str(w, s[i], lens ? lens[i] : strlen(s[i]));
    return end_kv(w, err);
}

static int is_float_type(tl_gguf_vtype t) { return t == TL_GGUF_F32 || t == TL_GGUF_F64; }

tl_status tl_gguf_writer_copy_kv(tl_gguf_writer *w, const tl_gguf *g, int i, tl_error *err) {
    const char *key = tl_gguf_kv_key(g, i);
    tl_gguf_vtype t = tl_gguf_kv_type(g, i);
    if (t == TL_GGUF_STRING) {
        const char *s;
        uint64_t len;
        TL_TRY(tl_gguf_get_str(g, key, &s, &len, err));
        TL_TRY(begin_kv(w, key, TL_GGUF_STRING, err));
        put_str(w, s, len);
        return end_kv(w, err);
    }
    if (t == TL_GGUF_BOOL) {
        int b;
        TL_TRY(tl_gguf_get_bool(g, key, &b, err));
        return tl_gguf_writer_kv_bool(w, key, b, err);
    }
    if (t != TL_GGUF_ARRAY) {
        if (num_size(t) == 0) return tl_fail(err, TL_ERR_INPUT, "%s: key '%s': unknown type %d", tl_gguf_path(g), key, t);
        TL_TRY(begin_kv(w, key, t, err));
        if (is_float_type(t)) {
            double d;
            TL_TRY(tl_gguf_get_float(g, key, &d, err));
            put_num(w, t, 0, d, 0);
        } else {
            int64_t v;
            TL_TRY(tl_gguf_get_int(g, key, &v, err));
            put_num(w, t, v, 0, 1);
        }
        return end_kv(w, err);
    }
    tl_gguf_vtype et = tl_gguf_kv_array_type(g, i);
    uint64_t n = tl_gguf_kv_array_len(g, i);
    if (et == TL_GGUF_STRING) {
        const char *const *strs;
        const uint64_t *lens;
        uint64_t m;
        TL_TRY(tl_gguf_get_str_array(g, key, &strs, &lens, &m, err));
        return tl_gguf_writer_kv_str_array(w, key, strs, lens, m, err);
    }
    if (num_size(et) == 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: key '%s': arrays of type %d cannot be copied", tl_gguf_path(g), key,
                       (int)et);
    tl_status s;
    if (is_float_type(et)) {
        double *v = malloc((n ? n : 1) * sizeof *v);
        if (!v) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory copying '%s'", key);
        s = tl_gguf_get_f64_array(g, key, v, n, err);
        if (!s) s = tl_gguf_writer_kv_num_array(w, key, et, v, n, err);
        free(v);
    } else {
        int64_t *v = malloc((n ? n : 1) * sizeof *v);
        if (!v) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory copying '%s'", key);
        s = tl_gguf_get_i64_array(g, key, v, n, err);
        if (!s) s = tl_gguf_writer_kv_i64_array(w, key, et, v, n, err);
        free(v);
    }
    return s;
}

static uint64_t type_size(uint32_t type) {
    return type == TL_GGML_F32 ? 4 : (type == TL_GGML_F16 || type == TL_GGML_BF16) ? 2 : 0;
}

tl_status tl_gguf_writer_add_tensor(tl_gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                                    uint32_t type, tl_gguf_produce_fn produce, void *ctx, tl_error *err) {
    if (!w || !name || !*name || !produce) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: bad tensor argument");
    if (n_dims < 1 || n_dims > TL_GGUF_MAX_DIMS)
        return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: tensor '%s': %d dims", name, n_dims);
    if (!type_size(type))
        return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: tensor '%s': type %u is not F32, F16 or BF16", name, type);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: duplicate tensor '%s'", name);
    uint64_t n = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || (uint64_t)ne[d] > (UINT64_MAX / 8) / n)
            return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: tensor '%s': bad dim %lld", name, (long long)ne[d]);
        n *= (uint64_t)ne[d];
    }
    if (w->n_t == w->t_cap) {
        size_t cap = w->t_cap ? 2 * w->t_cap : 64;
        wtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory");
        w->t = nt, w->t_cap = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: out of memory");
    t->n_dims = n_dims;
    for (int d = 0; d < TL_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->nbytes = n * type_size(type);
    t->produce = produce;
    t->ctx = ctx;
    w->n_t++;
    return TL_OK;
}

static uint64_t pad_to(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static tl_status fwrite_all(FILE *f, const void *p, size_t n, const char *path, tl_error *err) {
    if (n && fwrite(p, 1, n, f) != n) return tl_fail(err, TL_ERR_RUNTIME, "%s: write failed: %s", path, strerror(errno));
    return TL_OK;
}

static tl_status write_zeros(FILE *f, uint64_t n, const char *path, tl_error *err) {
    static const unsigned char z[64];
    while (n) {
        size_t k = n > sizeof z ? sizeof z : (size_t)n;
        TL_TRY(fwrite_all(f, z, k, path, err));
        n -= k;
    }
    return TL_OK;
}

static tl_status write_body(tl_gguf_writer *w, FILE *f, const char *path, tl_error *err) {
    /* header and tensor infos, built into a second buffer after the key/values */
    tl_gguf_writer h = {0};
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)w->n_t);
    put_u64(&h, w->n_kv);
    put(&h, w->kv, w->kv_n);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, t->type);
        t->offset = off;
        put_u64(&h, off);
        off = pad_to(off + t->nbytes, w->align);
    }
    if (h.bad) {
        free(h.kv);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory building the GGUF header", path);
    }
    tl_status s = fwrite_all(f, h.kv, h.kv_n, path, err);
    uint64_t pos = h.kv_n;
    free(h.kv);
    if (!s) s = write_zeros(f, pad_to(pos, w->align) - pos, path, err);
    for (size_t i = 0; i < w->n_t && !s; i++) {
        wtensor *t = &w->t[i];
        void *buf = malloc(t->nbytes);
        if (!buf) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for tensor '%s'", path, t->name);
        s = t->produce(t->ctx, buf, t->nbytes, err);
        if (!s) s = fwrite_all(f, buf, (size_t)t->nbytes, path, err);
        free(buf);
        if (!s && i + 1 < w->n_t) s = write_zeros(f, pad_to(t->nbytes, w->align) - t->nbytes, path, err);
    }
    return s;
}

tl_status tl_gguf_writer_write(tl_gguf_writer *w, const char *path, tl_error *err) {
    if (!w || !path) return tl_fail(err, TL_ERR_RUNTIME, "gguf writer: null argument");
    if (w->bad) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory building the GGUF key/values", path);
    char tmp[TL_PATH_MAX + 16];
    int k = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    if (k < 0 || (size_t)k >= sizeof tmp) return tl_fail(err, TL_ERR_RUNTIME, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open: %s", tmp, strerror(e));
    }
    tl_status s = write_body(w, f, tmp, err);
    if (!s && fflush(f) != 0) s = tl_fail(err, TL_ERR_RUNTIME, "%s: write failed: %s", tmp, strerror(errno));
    if (!s && fsync(fileno(f)) != 0) s = tl_fail(err, TL_ERR_RUNTIME, "%s: fsync failed: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && !s) s = tl_fail(err, TL_ERR_RUNTIME, "%s: close failed: %s", tmp, strerror(errno));
    if (!s && chmod(tmp, 0644) != 0) s = tl_fail(err, TL_ERR_RUNTIME, "%s: chmod failed: %s", tmp, strerror(errno));
    if (!s) s = tl_rename_into_place(tmp, path, err);
    if (s) unlink(tmp);
    return s;
}
