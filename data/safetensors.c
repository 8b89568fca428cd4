/* safetensors: reading (validated in full on open), writing (atomic), and HF model directories of one file or
 * of shards listed in model.safetensors.index.json.
 *
 * Reading uses pread rather than mmap: a file truncated by someone else while open then gives an error
 * instead of SIGBUS, and only the tensors asked for are ever touched. Tensor data is little-endian in the file
 * and is copied as-is, hence the host check below. */
#include "data/tl_safetensors.h"
#include "data/tl_io.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and is copied in place: tailor needs a little-endian host"
#endif

/* Real headers are a few hundred KB; anything near this is a corrupt length field, not a header. */
#define ST_MAX_HEADER (100ull * 1024 * 1024)
/* cJSON stores numbers as doubles: integers above 2^53 would silently change. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* ------------------------------------------------------------------------------------------------ dtypes */

static const struct {
    const char *name;
    tl_dtype dt;
    unsigned size;
} st_dtypes[] = {
    {"F32", TL_DT_F32, 4},       {"F16", TL_DT_F16, 2},         {"BF16", TL_DT_BF16, 2},
    {"F64", TL_DT_F64, 8},       {"I32", TL_DT_I32, 4},         {"I64", TL_DT_I64, 8},
    {"BOOL", TL_DT_OTHER, 1},    {"U8", TL_DT_OTHER, 1},        {"I8", TL_DT_OTHER, 1},
    {"I16", TL_DT_OTHER, 2},     {"U16", TL_DT_OTHER, 2},       {"U32", TL_DT_OTHER, 4},
    {"U64", TL_DT_OTHER, 8},     {"F8_E4M3", TL_DT_OTHER, 1},   {"F8_E5M2", TL_DT_OTHER, 1},
    {"F8_E8M0", TL_DT_OTHER, 1},
};

unsigned tl_st_dtype_size(const char *dtype_name) {
    if (!dtype_name) return 0;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, dtype_name) == 0) return st_dtypes[i].size;
    return 0;
}

static tl_dtype dtype_of(const char *name) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return st_dtypes[i].dt;
    return TL_DT_OTHER;
}

float tl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, or nan with its payload */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: value = man * 2^-24; normalize the mantissa into an f32 normal */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float tl_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t tl_f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* quiet nan */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* --------------------------------------------------------------------------------------------- helpers */

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t at = 0;
    int n = snprintf(buf, cap, "[");
    at = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < ndim && at < cap; i++) {
        n = snprintf(buf + at, cap - at, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (n < 0) return;
        at += (size_t)n;
    }
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

/* numel of a shape, 0 with *ok = 0 on overflow */
static uint64_t shape_numel(const int64_t *shape, int ndim, int *ok) {
    uint64_t n = 1;
    *ok = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > UINT64_MAX / d) {
            *ok = 0;
            return 0;
        }
        n *= d;
    }
    return n;
}

/* Reads exactly n bytes at off. A short read means the file shrank after it was validated. */
static tl_status pread_full(int fd, void *dst, uint64_t n, uint64_t off, const char *path, tl_error *err) {
    unsigned char *p = dst;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return tl_fail(err, TL_ERR_RUNTIME, "%s: read failed at byte %" PRIu64 ": %s", path, off,
                           strerror(errno));
        }
        if (r == 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: unexpected end of file at byte %" PRIu64
                           " (was the file changed while open?)", path, off);
        p += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return TL_OK;
}

/* A JSON number that is a non-negative integer representable exactly; -1 otherwise. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_JSON_INT || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static const char *json_kind(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* ---------------------------------------------------------------------------------------------- reader */

struct tl_st_file {
    char *path;
    int fd;
    uint64_t file_size, data_start, data_size;
    int n;
    tl_st_tensor *t;
    int *by_name; /* tensor indices sorted by name, for bsearch */
    int n_meta;
    char **meta_key, **meta_val;
};

int tl_st_count(const tl_st_file *f) { return f ? f->n : 0; }
const char *tl_st_path(const tl_st_file *f) { return f ? f->path : NULL; }

const tl_st_tensor *tl_st_get(const tl_st_file *f, int i) {
    if (!f || i < 0 || i >= f->n) return NULL;
    return &f->t[i];
}

const tl_st_tensor *tl_st_find(const tl_st_file *f, const char *name) {
    if (!f || !name) return NULL;
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const tl_st_tensor *t = &f->t[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *tl_st_metadata(const tl_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0) return f->meta_val[i];
    return NULL;
}

void tl_st_close(tl_st_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_key[i]);
        free(f->meta_val[i]);
    }
    free(f->t);
    free(f->by_name);
    free(f->meta_key);
    free(f->meta_val);
    free(f->path);
    free(f);
}

static tl_status parse_metadata(tl_st_file *f, const cJSON *meta, tl_error *err) {
    if (!cJSON_IsObject(meta))
        return tl_fail(err, TL_ERR_INPUT, "%s: __metadata__ must be an object of strings, got %s", f->path,
                       json_kind(meta));
    int n = cJSON_GetArraySize(meta);
    f->meta_key = calloc((size_t)n + 1, sizeof *f->meta_key);
    f->meta_val = calloc((size_t)n + 1, sizeof *f->meta_val);
    if (!f->meta_key || !f->meta_val) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", f->path);
    for (const cJSON *kv = meta->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv) || !kv->valuestring)
            return tl_fail(err, TL_ERR_INPUT, "%s: __metadata__ '%s': value must be a string, got %s", f->path,
                           kv->string, json_kind(kv));
        f->meta_key[f->n_meta] = xstrdup(kv->string);
        f->meta_val[f->n_meta] = xstrdup(kv->valuestring);
        f->n_meta++;
        if (!f->meta_key[f->n_meta - 1] || !f->meta_val[f->n_meta - 1])
            return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", f->path);
    }
    return TL_OK;
}

static tl_status parse_tensor(tl_st_file *f, const cJSON *e, tl_st_tensor *t, tl_error *err) {
    const char *p = f->path, *nm = t->name;
    if (!cJSON_IsObject(e))
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': entry must be an object, got %s", p, nm, json_kind(e));

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt) || !dt->valuestring)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': 'dtype' must be a string, got %s", p, nm,
                       json_kind(dt));
    if (strlen(dt->valuestring) >= sizeof t->dtype_name || dt->valuestring[0] == '\0')
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': dtype '%.40s' is not a safetensors dtype", p, nm,
                       dt->valuestring);
    memcpy(t->dtype_name, dt->valuestring, strlen(dt->valuestring) + 1);
    t->dtype = dtype_of(t->dtype_name);

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': 'shape' must be an array, got %s", p, nm,
                       json_kind(sh));
    int nd = cJSON_GetArraySize(sh);
    if (nd > TL_ST_MAX_DIMS)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': shape has %d dimensions (at most %d)", p, nm, nd,
                       TL_ST_MAX_DIMS);
    t->ndim = 0;
    for (const cJSON *d = sh->child; d; d = d->next) {
        uint64_t v;
        if (json_uint(d, &v) != 0) {
            if (cJSON_IsNumber(d))
                return tl_fail(err, TL_ERR_INPUT,
                               "%s: tensor '%s': shape[%d] is %g, expected a non-negative integer", p, nm,
                               t->ndim, d->valuedouble);
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': shape[%d] is %s, expected a non-negative integer",
                           p, nm, t->ndim, json_kind(d));
        }
        t->shape[t->ndim++] = (int64_t)v;
    }

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, &b) != 0 ||
        json_uint(off->child->next, &en) != 0)
        return tl_fail(err, TL_ERR_INPUT,
                       "%s: tensor '%s': 'data_offsets' must be [begin, end] of non-negative integers", p, nm);
    if (b > en)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before begin",
                       p, nm, b, en);
    if (en > f->data_size)
        return tl_fail(err, TL_ERR_INPUT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] go beyond the data section (%" PRIu64
                       " bytes; file truncated?)",
                       p, nm, b, en, f->data_size);
    t->begin = b;
    t->end = en;

    unsigned es = tl_st_dtype_size(t->dtype_name);
    if (es) { /* an unknown dtype cannot be sized; it stays unreadable but does not block the rest */
        int ok;
        uint64_t numel = shape_numel(t->shape, t->ndim, &ok);
        char sb[160];
        fmt_shape(sb, sizeof sb, t->shape, t->ndim);
        if (!ok || numel > UINT64_MAX / es || numel * es != en - b)
            return tl_fail(err, TL_ERR_INPUT,
                           "%s: tensor '%s': shape %s of %s needs %s%" PRIu64 " bytes, data_offsets hold %" PRIu64, p,
                           nm, sb, t->dtype_name, ok && numel <= UINT64_MAX / es ? "" : "more than ",
                           ok && numel <= UINT64_MAX / es ? numel * es : UINT64_MAX, en - b);
    }
    return TL_OK;
}

/* qsort comparators need the tensor table: sort (index) pairs that carry what is compared. */
typedef struct {
    const tl_st_tensor *t;
    int i;
} st_ref;

static int cmp_ref_name(const void *a, const void *b) {
    return strcmp(((const st_ref *)a)->t->name, ((const st_ref *)b)->t->name);
}

static int cmp_ref_range(const void *a, const void *b) {
    const tl_st_tensor *x = ((const st_ref *)a)->t, *y = ((const st_ref *)b)->t;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static tl_status check_names_and_overlaps(tl_st_file *f, tl_error *err) {
    st_ref *r = malloc(((size_t)f->n + 1) * sizeof *r);
    f->by_name = malloc(((size_t)f->n + 1) * sizeof *f->by_name);
    if (!r || !f->by_name) {
        free(r);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", f->path);
    }
    for (int i = 0; i < f->n; i++) r[i] = (st_ref){&f->t[i], i};
    qsort(r, (size_t)f->n, sizeof *r, cmp_ref_name);
    for (int i = 0; i < f->n; i++) {
        f->by_name[i] = r[i].i;
        if (i > 0 && strcmp(r[i].t->name, r[i - 1].t->name) == 0) {
            tl_status s = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s': listed twice in the header", f->path,
                                  r[i].t->name);
            free(r);
            return s;
        }
    }
    qsort(r, (size_t)f->n, sizeof *r, cmp_ref_range);
    const tl_st_tensor *prev = NULL; /* the non-empty tensor reaching furthest so far */
    for (int i = 0; i < f->n; i++) {
        const tl_st_tensor *t = r[i].t;
        if (t->end == t->begin) continue; /* empty ranges hold no bytes, so they overlap nothing */
        if (prev && t->begin < prev->end) {
            tl_status s = tl_fail(err, TL_ERR_INPUT,
                                  "%s: tensor '%s': bytes [%" PRIu64 ", %" PRIu64 ") overlap tensor '%s' [%" PRIu64
                                  ", %" PRIu64 ")",
                                  f->path, t->name, t->begin, t->end, prev->name, prev->begin, prev->end);
            free(r);
            return s;
        }
        if (!prev || t->end > prev->end) prev = t;
    }
    free(r);
    return TL_OK;
}

static tl_status parse_header(tl_st_file *f, const char *json, size_t len, tl_error *err) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        return tl_fail(err, TL_ERR_INPUT, "%s: header is not valid JSON (error near header byte %zu)", f->path, at);
    }
    /* writers pad the header with spaces; anything else after the object is corruption */
    for (const char *q = end; q && q < json + len; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            cJSON_Delete(root);
            return tl_fail(err, TL_ERR_INPUT, "%s: header is not valid JSON (unexpected data at header byte %zu)",
                           f->path, (size_t)(q - json));
        }
    }
    tl_status st = TL_OK;
    if (!cJSON_IsObject(root)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: header must be a JSON object, got %s", f->path, json_kind(root));
        goto done;
    }
    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    f->t = calloc((size_t)n + 1, sizeof *f->t);
    if (!f->t) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", f->path);
        goto done;
    }
    int have_meta = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (have_meta++) {
                st = tl_fail(err, TL_ERR_INPUT, "%s: __metadata__ appears twice", f->path);
                goto done;
            }
            if ((st = parse_metadata(f, e, err)) != TL_OK) goto done;
            continue;
        }
        tl_st_tensor *t = &f->t[f->n];
        t->name = xstrdup(e->string);
        if (!t->name) {
            st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", f->path);
            goto done;
        }
        f->n++;
        if ((st = parse_tensor(f, e, t, err)) != TL_OK) goto done;
    }
    st = check_names_and_overlaps(f, err);
done:
    cJSON_Delete(root);
    return st;
}

tl_status tl_st_open(const char *path, tl_st_file **out, tl_error *err) {
    *out = NULL;
    tl_st_file *f = calloc(1, sizeof *f);
    if (!f) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    f->fd = -1;
    f->path = xstrdup(path);
    if (!f->path) {
        free(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    tl_status st;
    char *hdr = NULL;
    f->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO must not block the open (then refused) */
    if (f->fd < 0) {
        st = tl_fail(err, errno == ENOMEM ? TL_ERR_RUNTIME : TL_ERR_INPUT, "%s: cannot open: %s", path,
                     strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: not a regular file", path);
        goto fail;
    }
    f->file_size = (uint64_t)sb.st_size;
    if (f->file_size < 8) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: truncated header (needs 8 bytes, file has %" PRIu64 ")", path,
                     f->file_size);
        goto fail;
    }
    unsigned char lenb[8];
    if ((st = pread_full(f->fd, lenb, 8, 0, path, err)) != TL_OK) goto fail;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lenb[i];
    if (n > ST_MAX_HEADER) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: header length %" PRIu64 " is over the 100 MB limit (corrupt file?)",
                     path, n);
        goto fail;
    }
    if (n > f->file_size - 8) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: truncated header (needs %" PRIu64 " bytes, file has %" PRIu64 ")",
                     path, n + 8, f->file_size);
        goto fail;
    }
    if (n < 2) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: header length %" PRIu64 " is too short for a JSON object", path, n);
        goto fail;
    }
    f->data_start = 8 + n;
    f->data_size = f->file_size - f->data_start;
    hdr = malloc((size_t)n);
    if (!hdr) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for a %" PRIu64 "-byte header", path, n);
        goto fail;
    }
    if ((st = pread_full(f->fd, hdr, n, 8, path, err)) != TL_OK) goto fail;
    if ((st = parse_header(f, hdr, (size_t)n, err)) != TL_OK) goto fail;
    free(hdr);
    *out = f;
    return TL_OK;
fail:
    free(hdr);
    tl_st_close(f);
    return st;
}

static tl_status find_or_fail(tl_st_file *f, const char *name, const tl_st_tensor **t, tl_error *err) {
    *t = tl_st_find(f, name);
    if (!*t) return tl_fail(err, TL_ERR_INPUT, "%s: no tensor '%s'", f->path, name);
    return TL_OK;
}

tl_status tl_st_read_bytes(tl_st_file *f, const char *name, void *dst, uint64_t nbytes, tl_error *err) {
    const tl_st_tensor *t;
    TL_TRY(find_or_fail(f, name, &t, err));
    if (t->end - t->begin != nbytes)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' holds %" PRIu64 " bytes, expected %" PRIu64, f->path,
                       name, t->end - t->begin, nbytes);
    return pread_full(f->fd, dst, nbytes, f->data_start + t->begin, f->path, err);
}

tl_status tl_st_read_range(tl_st_file *f, const char *name, uint64_t offset, void *dst, uint64_t nbytes,
                           tl_error *err) {
    const tl_st_tensor *t;
    TL_TRY(find_or_fail(f, name, &t, err));
    if (offset > t->end - t->begin || nbytes > t->end - t->begin - offset)
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' holds %" PRIu64 " bytes: bytes [%" PRIu64 ", %" PRIu64
                       ") are outside it", f->path, name, t->end - t->begin, offset, offset + nbytes);
    return pread_full(f->fd, dst, nbytes, f->data_start + t->begin + offset, f->path, err);
}

/* Shared by the file and the model-directory readers; `from` says where the expected shape came from. */
static tl_status read_f32(tl_st_file *f, const char *name, const int64_t *shape, int ndim, float *dst,
                          const char *from, tl_error *err) {
    const tl_st_tensor *t;
    TL_TRY(find_or_fail(f, name, &t, err));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[200], b[200];
        fmt_shape(a, sizeof a, t->shape, t->ndim);
        fmt_shape(b, sizeof b, shape, ndim > 0 && ndim <= TL_ST_MAX_DIMS ? ndim : 0);
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has shape %s, expected %s%s", f->path, name, a, b, from);
    }
    int ok;
    uint64_t n = shape_numel(t->shape, t->ndim, &ok);
    uint64_t off = f->data_start + t->begin;
    switch (t->dtype) {
    case TL_DT_F32:
        return pread_full(f->fd, dst, n * 4, off, f->path, err);
    case TL_DT_F16:
    case TL_DT_BF16:
    case TL_DT_F64: {
        unsigned es = t->dtype == TL_DT_F64 ? 8 : 2;
        /* convert through a bounce buffer: dst is only as large as the fp32 result */
        enum { CHUNK = 4096 };
        unsigned char buf[CHUNK * 8];
        for (uint64_t i = 0; i < n; i += CHUNK) {
            uint64_t m = n - i < CHUNK ? n - i : CHUNK;
            TL_TRY(pread_full(f->fd, buf, m * es, off + i * es, f->path, err));
            for (uint64_t j = 0; j < m; j++) {
                if (t->dtype == TL_DT_F64) {
                    double d;
                    memcpy(&d, buf + j * 8, 8);
                    dst[i + j] = (float)d;
                } else {
                    uint16_t h;
                    memcpy(&h, buf + j * 2, 2);
                    dst[i + j] = t->dtype == TL_DT_F16 ? tl_f16_to_f32(h) : tl_bf16_to_f32(h);
                }
            }
        }
        return TL_OK;
    }
    default:
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' has dtype %s, which cannot be read as fp32 "
                       "(supported: F32, F16, BF16, F64)", f->path, name, t->dtype_name);
    }
}

tl_status tl_st_read_f32(tl_st_file *f, const char *name, const int64_t *shape, int ndim, float *dst,
                         tl_error *err) {
    return read_f32(f, name, shape, ndim, dst, "", err);
}

/* ------------------------------------------------------------------------------------- model directory */

typedef struct {
    const char *name; /* owned by the shard's tl_st_file */
    int shard;
} src_entry;

struct tl_tensor_src {
    char *dir;
    int n_shards;
    tl_st_file **shards;
    int n;
    src_entry *e; /* sorted by name */
};

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const src_entry *)a)->name, ((const src_entry *)b)->name);
}

static const src_entry *src_lookup(const tl_tensor_src *s, const char *name) {
    if (!s || !name) return NULL;
    src_entry key = {name, 0};
    return bsearch(&key, s->e, (size_t)s->n, sizeof *s->e, cmp_entry);
}

void tl_tensor_src_close(tl_tensor_src *s) {
    if (!s) return;
    for (int i = 0; i < s->n_shards; i++) tl_st_close(s->shards[i]);
    free(s->shards);
    free(s->e);
    free(s->dir);
    free(s);
}

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int path_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static tl_status read_small_file(const char *path, char **out, size_t *len, tl_error *err) {
    *out = NULL;
    FILE *fp;
    TL_TRY(tl_fopen_regular(path, NULL, &fp, NULL, err));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (n < cap) break;
        if (cap >= ST_MAX_HEADER) {
            free(buf);
            fclose(fp);
            return tl_fail(err, TL_ERR_INPUT, "%s: larger than 100 MB, not an index file", path);
        }
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) free(buf);
        buf = nb;
    }
    if (!buf) {
        fclose(fp);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: read failed", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return TL_OK;
}

static tl_status open_single(tl_tensor_src *s, const char *path, tl_error *err) {
    s->shards = calloc(1, sizeof *s->shards);
    if (!s->shards) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    TL_TRY(tl_st_open(path, &s->shards[0], err));
    s->n_shards = 1;
    tl_st_file *f = s->shards[0];
    s->e = malloc(((size_t)f->n + 1) * sizeof *s->e);
    if (!s->e) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    for (int i = 0; i < f->n; i++) s->e[i] = (src_entry){f->t[f->by_name[i]].name, 0};
    s->n = f->n; /* by_name order is already sorted by strcmp */
    return TL_OK;
}

/* Opens every shard the index names and checks each holds the tensors mapped to it, so a broken download is
 * reported at open, not halfway through loading. */
static tl_status open_index(tl_tensor_src *s, const char *ipath, tl_error *err) {
    char *text;
    size_t len = 0;
    TL_TRY(read_small_file(ipath, &text, &len, err));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return tl_fail(err, TL_ERR_INPUT, "%s: not valid JSON", ipath);
    tl_status st = TL_OK;
    char **names = NULL; /* distinct shard file names, in order of first appearance */
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: 'weight_map' must be an object of tensor name -> shard file, got %s",
                     ipath, json_kind(wm));
        goto done;
    }
    int n = cJSON_GetArraySize(wm);
    if (n == 0) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: 'weight_map' is empty", ipath);
        goto done;
    }
    names = calloc((size_t)n, sizeof *names);
    s->shards = calloc((size_t)n, sizeof *s->shards);
    s->e = calloc((size_t)n, sizeof *s->e);
    if (!names || !s->shards || !s->e) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", ipath);
        goto done;
    }
    int k = 0;
    for (const cJSON *kv = wm->child; kv; kv = kv->next, k++) {
        if (!cJSON_IsString(kv) || !kv->valuestring || !kv->valuestring[0]) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: weight_map '%s': expected a shard file name, got %s", ipath,
                         kv->string, json_kind(kv));
            goto done;
        }
        const char *fn = kv->valuestring;
        /* shards live beside the index; a path could point anywhere on the machine */
        if (strchr(fn, '/') || strcmp(fn, ".") == 0 || strcmp(fn, "..") == 0) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: weight_map '%s': shard '%s' must be a file name in the same directory",
                         ipath, kv->string, fn);
            goto done;
        }
        int sh = 0;
        while (sh < s->n_shards && strcmp(names[sh], fn) != 0) sh++;
        if (sh == s->n_shards) {
            char *p = join_path(s->dir, fn);
            if (!p) {
                st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", ipath);
                goto done;
            }
            if (!path_exists(p)) {
                st = tl_fail(err, TL_ERR_INPUT, "%s: shard '%s' (holding tensor '%s') does not exist", ipath, fn,
                             kv->string);
                free(p);
                goto done;
            }
            st = tl_st_open(p, &s->shards[sh], err);
            free(p);
            if (st != TL_OK) goto done;
            names[sh] = (char *)fn;
            s->n_shards++;
        }
        const tl_st_tensor *t = tl_st_find(s->shards[sh], kv->string);
        if (!t) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' is mapped to shard '%s', which does not hold it", ipath,
                         kv->string, fn);
            goto done;
        }
        s->e[k] = (src_entry){t->name, sh};
    }
    s->n = k;
    qsort(s->e, (size_t)s->n, sizeof *s->e, cmp_entry);
    for (int i = 1; i < s->n; i++)
        if (strcmp(s->e[i].name, s->e[i - 1].name) == 0) {
            st = tl_fail(err, TL_ERR_INPUT, "%s: weight_map lists tensor '%s' twice", ipath, s->e[i].name);
            goto done;
        }
done:
    free(names); /* pointed into the JSON tree */
    cJSON_Delete(root);
    return st;
}

tl_status tl_tensor_src_open(const char *model_dir, tl_tensor_src **out, tl_error *err) {
    *out = NULL;
    tl_tensor_src *s = calloc(1, sizeof *s);
    if (!s) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", model_dir);
    s->dir = xstrdup(model_dir);
    char *single = join_path(model_dir, "model.safetensors");
    char *index = join_path(model_dir, "model.safetensors.index.json");
    tl_status st;
    if (!s->dir || !single || !index) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", model_dir);
    } else if (path_exists(single)) { /* as transformers: the single file wins when both exist */
        st = open_single(s, single, err);
    } else if (path_exists(index)) {
        st = open_index(s, index, err);
    } else {
        st = tl_fail(err, TL_ERR_INPUT, "%s: no model.safetensors or model.safetensors.index.json", model_dir);
    }
    free(single);
    free(index);
    if (st != TL_OK) {
        tl_tensor_src_close(s);
        return st;
    }
    *out = s;
    return TL_OK;
}

int tl_tensor_src_has(const tl_tensor_src *s, const char *name) { return src_lookup(s, name) != NULL; }

const tl_st_tensor *tl_tensor_src_find(const tl_tensor_src *s, const char *name) {
    const src_entry *e = src_lookup(s, name);
    return e ? tl_st_find(s->shards[e->shard], name) : NULL;
}

tl_status tl_tensor_src_read_f32(tl_tensor_src *s, const char *name, const int64_t *shape, int ndim, float *dst,
                                 tl_error *err) {
    const src_entry *e = src_lookup(s, name);
    if (!e) return tl_fail(err, TL_ERR_INPUT, "%s: model has no tensor '%s' (expected from config.json)", s->dir, name);
    return read_f32(s->shards[e->shard], name, shape, ndim, dst, " (from config.json)", err);
}

/* ---------------------------------------------------------------------------------------------- writer */

typedef struct {
    char *name;
    char dtype[16];
    int ndim;
    int64_t shape[TL_ST_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
    tl_st_produce_fn produce; /* streamed tensors: data comes from here, chunk bytes at a time */
    void *ctx;
    uint64_t chunk;
} wr_tensor;

struct tl_st_writer {
    int n, cap;
    wr_tensor *t;
    int n_meta, cap_meta;
    char **mk, **mv;
};

tl_st_writer *tl_st_writer_new(void) { return calloc(1, sizeof(tl_st_writer)); }

void tl_st_writer_free(tl_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->t);
    free(w->mk);
    free(w->mv);
    free(w);
}

tl_status tl_st_writer_add_bytes(tl_st_writer *w, const char *name, const char *dtype_name, const int64_t *shape,
                                 int ndim, const void *data, uint64_t nbytes, tl_error *err) {
    if (!w || !name || !dtype_name) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: null argument");
    if (!name[0] || strcmp(name, "__metadata__") == 0)
        return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: invalid tensor name '%s'", name);
    unsigned es = tl_st_dtype_size(dtype_name);
    if (!es) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': unknown dtype '%s'", name,
                            dtype_name);
    if (ndim < 0 || ndim > TL_ST_MAX_DIMS)
        return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': %d dimensions (0..%d)", name, ndim,
                       TL_ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': negative shape[%d]", name, i);
    int ok;
    uint64_t numel = shape_numel(shape, ndim, &ok);
    if (!ok || numel > UINT64_MAX / es || numel * es != nbytes)
        return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': %" PRIu64
                       " bytes given, shape and dtype need %" PRIu64, name, nbytes, ok ? numel * es : 0);
    if (nbytes && !data) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': null data", name);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        int nc = w->cap ? 2 * w->cap : 64;
        wr_tensor *nt = realloc(w->t, (size_t)nc * sizeof *nt);
        if (!nt) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: out of memory");
        w->t = nt;
        w->cap = nc;
    }
    wr_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    if (!t->name) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: out of memory");
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype_name);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    w->n++;
    return TL_OK;
}

tl_status tl_st_writer_add_f32(tl_st_writer *w, const char *name, const int64_t *shape, int ndim,
                               const float *data, tl_error *err) {
    if (ndim < 0 || ndim > TL_ST_MAX_DIMS || (ndim > 0 && !shape))
        return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': %d dimensions (0..%d)",
                       name ? name : "?", ndim, TL_ST_MAX_DIMS);
    int ok;
    uint64_t numel = shape_numel(shape, ndim, &ok);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) ok = 0;
    if (!ok || numel > UINT64_MAX / 4)
        return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: tensor '%s': invalid shape", name ? name : "?");
    return tl_st_writer_add_bytes(w, name, "F32", shape, ndim, data, numel * 4, err);
}

tl_status tl_st_writer_add_stream(tl_st_writer *w, const char *name, const char *dtype_name, const int64_t *shape,
                                  int ndim, uint64_t nbytes, tl_st_produce_fn produce, void *ctx, uint64_t chunk,
                                  tl_error *err) {
    static const unsigned char placeholder; /* add_bytes wants data for a non-empty tensor; it is never read */
    if (!produce || chunk == 0) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: '%s': no producer", name);
    TL_TRY(tl_st_writer_add_bytes(w, name, dtype_name, shape, ndim, &placeholder, nbytes, err));
    wr_tensor *t = &w->t[w->n - 1];
    t->data = NULL, t->produce = produce, t->ctx = ctx, t->chunk = chunk;
    return TL_OK;
}

tl_status tl_st_writer_meta(tl_st_writer *w, const char *key, const char *value, tl_error *err) {
    if (!w || !key || !value) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: null metadata argument");
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->mk[i], key) == 0) {
            char *v = xstrdup(value);
            if (!v) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: out of memory");
            free(w->mv[i]);
            w->mv[i] = v;
            return TL_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int nc = w->cap_meta ? 2 * w->cap_meta : 8;
        char **a = realloc(w->mk, (size_t)nc * sizeof *a);
        if (!a) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: out of memory");
        w->mk = a;
        char **b = realloc(w->mv, (size_t)nc * sizeof *b);
        if (!b) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: out of memory");
        w->mv = b;
        w->cap_meta = nc;
    }
    char *k = xstrdup(key), *v = xstrdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: out of memory");
    }
    w->mk[w->n_meta] = k;
    w->mv[w->n_meta] = v;
    w->n_meta++;
    return TL_OK;
}

/* A growable text buffer for the header; `bad` latches the first allocation failure. */
typedef struct {
    char *p;
    size_t n, cap;
    int bad;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->bad) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > nc) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->bad = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*c;
            sb_put(b, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

typedef struct {
    const void *p;
    uint64_t n;
    tl_st_produce_fn produce; /* when set, the n bytes come from produce, chunk at a time */
    void *ctx;
    uint64_t chunk;
} wr_piece;

static tl_status write_all(int fd, const void *data, uint64_t n, const char *path, tl_error *err) {
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = write(fd, p, chunk);
        if (r < 0) {
            if (errno == EINTR) continue;
            return tl_fail(err, TL_ERR_RUNTIME, "%s: write failed: %s", path, strerror(errno));
        }
        p += r;
        n -= (uint64_t)r;
    }
    return TL_OK;
}

static tl_status write_pieces_atomic(const char *path, const wr_piece *pc, int npc, tl_error *err) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 40);
    if (!tmp) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    snprintf(tmp, pl + 40, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        tl_status s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return s;
    }
    tl_status st = TL_OK;
    for (int i = 0; i < npc && st == TL_OK; i++) {
        if (!pc[i].produce) {
            st = write_all(fd, pc[i].p, pc[i].n, tmp, err);
            continue;
        }
        uint64_t cap = pc[i].chunk < pc[i].n ? pc[i].chunk : pc[i].n;
        void *buf = malloc(cap ? cap : 1);
        if (!buf) st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for a %" PRIu64 "-byte chunk", tmp, cap);
        for (uint64_t off = 0; st == TL_OK && off < pc[i].n; off += cap) {
            uint64_t m = pc[i].n - off < cap ? pc[i].n - off : cap;
            st = pc[i].produce(pc[i].ctx, off, buf, m, err);
            if (st == TL_OK) st = write_all(fd, buf, m, tmp, err);
        }
        free(buf);
    }
    if (st == TL_OK && fsync(fd) != 0) st = tl_fail(err, TL_ERR_RUNTIME, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == TL_OK)
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: close failed: %s", tmp, strerror(errno));
    if (st == TL_OK && rename(tmp, path) != 0)
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot rename into place: %s", path, strerror(errno));
    if (st != TL_OK) {
        unlink(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    /* the rename itself is durable only once the directory is synced */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? malloc((size_t)(slash - path) + 2) : xstrdup(".");
    if (!dir) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    if (slash) {
        size_t dl = slash == path ? 1 : (size_t)(slash - path);
        memcpy(dir, path, dl);
        dir[dl] = '\0';
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open directory to sync: %s", dir, strerror(errno));
    } else {
        /* some file systems cannot fsync a directory (EINVAL); the data itself is already synced */
        if (fsync(dfd) != 0 && errno != EINVAL)
            st = tl_fail(err, TL_ERR_RUNTIME, "%s: fsync of directory failed: %s", dir, strerror(errno));
        close(dfd);
    }
    free(dir);
    return st;
}

tl_status tl_write_file_atomic(const char *path, const void *data, size_t len, tl_error *err) {
    wr_piece p = {data, len, NULL, NULL, 0};
    return write_pieces_atomic(path, &p, 1, err);
}

tl_status tl_st_writer_write(tl_st_writer *w, const char *path, tl_error *err) {
    if (!w || !path) return tl_fail(err, TL_ERR_RUNTIME, "safetensors writer: null argument");
    sbuf b = {0};
    char num[64];
    sb_str(&b, "{");
    int first = 1;
    if (w->n_meta > 0) {
        sb_str(&b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) sb_str(&b, ",");
            sb_json_string(&b, w->mk[i]);
            sb_str(&b, ":");
            sb_json_string(&b, w->mv[i]);
        }
        sb_str(&b, "}");
        first = 0;
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const wr_tensor *t = &w->t[i];
        if (!first) sb_str(&b, ",");
        first = 0;
        sb_json_string(&b, t->name);
        sb_str(&b, ":{\"dtype\":");
        sb_json_string(&b, t->dtype);
        sb_str(&b, ",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->shape[d]);
            sb_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
        sb_str(&b, num);
        off += t->nbytes;
    }
    sb_str(&b, "}");
    while (!b.bad && b.n % 8 != 0) sb_str(&b, " "); /* so the data section starts 8-byte aligned */
    if (b.bad) {
        free(b.p);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory building the header", path);
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
    wr_piece *pc = malloc(((size_t)w->n + 2) * sizeof *pc);
    if (!pc) {
        free(b.p);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    pc[0] = (wr_piece){lenb, 8, NULL, NULL, 0};
    pc[1] = (wr_piece){b.p, b.n, NULL, NULL, 0};
    for (int i = 0; i < w->n; i++)
        pc[i + 2] = (wr_piece){w->t[i].data, w->t[i].nbytes, w->t[i].produce, w->t[i].ctx, w->t[i].chunk};
    tl_status st = write_pieces_atomic(path, pc, w->n + 2, err);
    free(pc);
    free(b.p);
    return st;
}
