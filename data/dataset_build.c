/* data_build: JSONL -> tokenized HDF5 dataset (see tl_data_build.h).
 *
 * Every row is checked before anything is tokenized, so that what is written is exactly what the JSON says and
 * what `tailor train` accepts: a line with a raw NUL byte, text after the JSON value, a "\u0000" escape in any
 * string (cJSON would silently cut the string there), a string or key that is not valid UTF-8 (the rule of
 * tl_utf8_valid, which the dataset reader applies to names), a key given twice in one object (cJSON would take
 * the first) and an empty user or group name are each refused with "<file>:<line>: <field>: <problem>". The
 * output is written under a fresh temporary name next to OUT and renamed into place, so OUT is either the
 * complete new file or untouched, and nothing is left behind on error. */
#include "data/tl_dataset_build.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "data/tl_dataset.h"
#include "data/tl_model_tokenizer.h"
#include "data/tl_pref.h"
#include "data/tl_prompt.h"
#include "data/tl_io.h" /* TL_PATH_MAX */
#include "kernels/tl_text.h"

/* a growable int32 or int64 array */
typedef struct {
    void *p;
    size_t n, cap, elem;
} vec;

static int vec_push(vec *v, const void *x, size_t count) {
    if (v->n + count > v->cap) {
        size_t cap = v->cap ? v->cap : 1024;
        while (cap < v->n + count) cap *= 2;
        void *q = realloc(v->p, cap * v->elem);
        if (!q) return -1;
        v->p = q, v->cap = cap;
    }
    if (count) memcpy((char *)v->p + v->n * v->elem, x, count * v->elem); /* x may be NULL when count is 0 */
    v->n += count;
    return 0;
}

typedef struct {
    int n_users, cap;
    char **names, **groups;
    int64_t *examples, *tokens;
    int *slot;      /* open-addressing hash of names: user index + 1, 0 = empty */
    size_t n_slots; /* a power of two, at least twice n_users */
} users;

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The slot of `name` in the hash: where it is, or the empty slot where it would go. */
static size_t find_slot(const users *u, const char *name) {
    size_t m = u->n_slots - 1, i = (size_t)name_hash(name) & m;
    while (u->slot[i] && strcmp(u->names[u->slot[i] - 1], name) != 0) i = (i + 1) & m;
    return i;
}

static int rehash(users *u, size_t n_slots) {
    int *slot = calloc(n_slots, sizeof *slot);
    if (!slot) return -1;
    free(u->slot);
    u->slot = slot, u->n_slots = n_slots;
    for (int i = 0; i < u->n_users; i++) u->slot[find_slot(u, u->names[i])] = i + 1;
    return 0;
}

/* The index of user `name`, added (with its group) on first sight; -1 when out of memory, -2 past the users a
 * dataset can hold (2^31 - 1 at most; this stops at 2^30). Hashed, so a file of many users stays linear. */
static int user_index(users *u, const char *name, const char *group) {
    if (!u->n_slots && rehash(u, 128) < 0) return -1;
    size_t at = find_slot(u, name);
    if (u->slot[at]) return u->slot[at] - 1;
    if (u->n_users >= (1 << 30)) return -2;
    if (u->n_users == u->cap) {
        int cap = u->cap ? 2 * u->cap : 64;
        char **nm = realloc(u->names, (size_t)cap * sizeof *nm), **gr = realloc(u->groups, (size_t)cap * sizeof *gr);
        if (nm) u->names = nm;
        if (gr) u->groups = gr;
        int64_t *ex = realloc(u->examples, (size_t)cap * sizeof *ex), *tk = realloc(u->tokens, (size_t)cap * sizeof *tk);
        if (ex) u->examples = ex;
        if (tk) u->tokens = tk;
        if (!nm || !gr || !ex || !tk) return -1;
        u->cap = cap;
    }
    u->names[u->n_users] = strdup(name);
    u->groups[u->n_users] = group ? strdup(group) : NULL;
    u->examples[u->n_users] = 0, u->tokens[u->n_users] = 0;
    if (!u->names[u->n_users] || (group && !u->groups[u->n_users])) {
        free(u->names[u->n_users]), free(u->groups[u->n_users]);
        return -1;
    }
    u->slot[at] = u->n_users + 1;
    u->n_users++;
    if ((size_t)u->n_users * 2 > u->n_slots && rehash(u, u->n_slots * 2) < 0) return -1;
    return u->n_users - 1;
}

static const char *get_str(const cJSON *row, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

typedef struct {
    const char *in;
    long line;
    tl_error *err;
} ctx;

static tl_status row_fail(ctx *c, const char *fmt, const char *what) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, what);
    return tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: %s", c->in, c->line, msg);
}

/* ---------------------------------------------------------------------------------------------------------
 * Row checks beyond what cJSON does */

#define PATH_DEPTH 32 /* nesting tracked by name in messages; deeper levels are shown as "..." */

typedef struct {
    int is_obj;
    long idx;
    char key[48];
} frame;

/* The path of a value ("prompt", "messages[1].content") from the frames of its enclosing containers. */
static void frame_path(const frame *st, size_t depth, char *out, size_t cap) {
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < depth && n + 1 < cap; i++) {
        int w;
        if (i >= PATH_DEPTH) w = snprintf(out + n, cap - n, "...");
        else if (st[i].is_obj) w = snprintf(out + n, cap - n, "%s%s", i ? "." : "", st[i].key);
        else w = snprintf(out + n, cap - n, "[%ld]", st[i].idx);
        if (w < 0 || (size_t)w >= cap - n) break;
        n += (size_t)w;
        if (i >= PATH_DEPTH) break;
    }
}

/* Finds a "\u0000" escape in a JSON text that cJSON accepted (so it is well-formed): cJSON decodes it into a NUL
 * that ends the C string, silently dropping the rest of the text. Returns 1 and the field's path in `where`
 * (for a key: "a key of <path>") when there is one. */
static int find_nul_escape(const char *s, char *where, size_t cap) {
    frame st[PATH_DEPTH];
    size_t depth = 0;
    int expect_key = 0;
    for (const char *p = s; *p; p++) {
        char ch = *p;
        if (ch == '{' || ch == '[') {
            if (depth < PATH_DEPTH) st[depth] = (frame){.is_obj = ch == '{'};
            depth++;
            expect_key = ch == '{';
        } else if (ch == '}' || ch == ']') {
            if (depth) depth--;
            expect_key = 0;
        } else if (ch == ',' && depth) {
            if (depth <= PATH_DEPTH && !st[depth - 1].is_obj) st[depth - 1].idx++;
            expect_key = depth <= PATH_DEPTH ? st[depth - 1].is_obj : 0;
        } else if (ch == ':') {
            expect_key = 0;
        } else if (ch == '"') {
            const char *start = ++p;
            int nul = 0;
            for (; *p && *p != '"'; p++)
                if (*p == '\\') {
                    p++;
                    if (*p == 'u' && !strncmp(p + 1, "0000", 4)) nul = 1;
                    if (!*p) return 0;
                }
            if (!*p) return 0;
            int is_key = expect_key && depth && depth <= PATH_DEPTH;
            if (is_key) {
                size_t k = (size_t)(p - start);
                if (k >= sizeof st[depth - 1].key) k = sizeof st[depth - 1].key - 1;
                memcpy(st[depth - 1].key, start, k);
                st[depth - 1].key[k] = '\0';
            }
            if (nul) {
                char path[256];
                frame_path(st, is_key ? depth - 1 : depth, path, sizeof path);
                if (is_key) snprintf(where, cap, "a key of %s", depth > 1 ? path : "the row");
                else snprintf(where, cap, "%s", path[0] ? path : "the row");
                return 1;
            }
        }
    }
    return 0;
}

static int cmp_child_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* Every key and string of the row is valid UTF-8, and no object has a key twice. `path` names `it`. */
static tl_status check_tree(ctx *c, const cJSON *it, const char *path) {
    char sub[256];
    if (cJSON_IsString(it)) {
        const char *v = it->valuestring ? it->valuestring : "";
        if (!tl_utf8_valid((const unsigned char *)v, strlen(v)))
            return tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: %s: not valid UTF-8", c->in, c->line, path);
        return TL_OK;
    }
    if (cJSON_IsArray(it)) {
        long i = 0;
        const cJSON *ch;
        cJSON_ArrayForEach(ch, it) {
            snprintf(sub, sizeof sub, "%s[%ld]", path, i++);
            TL_TRY(check_tree(c, ch, sub));
        }
        return TL_OK;
    }
    if (!cJSON_IsObject(it)) return TL_OK;
    size_t n = 0;
    const cJSON *ch;
    cJSON_ArrayForEach(ch, it) {
        const char *k = ch->string ? ch->string : "";
        snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", k);
        if (!tl_utf8_valid((const unsigned char *)k, strlen(k)))
            return tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: a key of %s: not valid UTF-8", c->in, c->line,
                           path[0] ? path : "the row");
        TL_TRY(check_tree(c, ch, sub));
        n++;
    }
    if (n < 2) return TL_OK;
    const cJSON **keys = malloc(n * sizeof *keys);
    if (!keys) return tl_fail(c->err, TL_ERR_RUNTIME, "%s:%ld: out of memory", c->in, c->line);
    size_t i = 0;
    cJSON_ArrayForEach(ch, it) keys[i++] = ch;
    for (i = 0; i < n; i++)
        if (!keys[i]->string) {
            free(keys);
            return tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: %s: a member without a key", c->in, c->line, path);
        }
    qsort(keys, n, sizeof *keys, cmp_child_key);
    tl_status st = TL_OK;
    for (i = 1; i < n && st == TL_OK; i++)
        if (!strcmp(keys[i - 1]->string, keys[i]->string))
            st = tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: %s%s%.100s: key given twice in one object, expected each key "
                         "once", c->in, c->line, path, path[0] ? "." : "", keys[i]->string);
    free(keys);
    return st;
}

/* Parses one line into a JSON object after the checks above; *row is NULL on failure. */
static tl_status parse_row(ctx *c, const char *line, size_t len, cJSON **row) {
    *row = NULL;
    if (memchr(line, '\0', len))
        return tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: the line contains a NUL byte, expected JSON text", c->in, c->line);
    const char *end = NULL;
    cJSON *r = cJSON_ParseWithOpts(line, &end, 1);
    if (!r || !cJSON_IsObject(r)) {
        cJSON_Delete(r);
        return tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: not a JSON object (one object per line)", c->in, c->line);
    }
    char where[300];
    tl_status st = TL_OK;
    if (find_nul_escape(line, where, sizeof where))
        st = tl_fail(c->err, TL_ERR_INPUT, "%s:%ld: %s: contains \"\\u0000\" (a NUL character), expected text "
                     "without NUL", c->in, c->line, where);
    if (st == TL_OK) st = check_tree(c, r, "");
    if (st != TL_OK) {
        cJSON_Delete(r);
        return st;
    }
    *row = r;
    return TL_OK;
}

/* The row's messages as role/content pairs (*n >= 1; free *m), or the row error naming the first bad one. */
static tl_status parse_messages(ctx *c, const cJSON *msgs, tl_chat_msg **m, int *n) {
    *m = NULL;
    *n = cJSON_GetArraySize(msgs);
    if (*n < 1) return row_fail(c, "%s: needs at least one message", "messages");
    tl_chat_msg *mm = calloc((size_t)*n, sizeof *mm);
    if (!mm) return tl_fail(c->err, TL_ERR_RUNTIME, "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        mm[i].role = get_str(it, "role"), mm[i].content = get_str(it, "content");
        if (!mm[i].role || !mm[i].content) {
            free(mm);
            char what[64];
            snprintf(what, sizeof what, "messages[%d]", i);
            return row_fail(c, "%s: expected an object with string fields role and content", what);
        }
        i++;
    }
    *m = mm;
    return TL_OK;
}

/* Renders the first n_prompt messages with the ChatML template and the generation prompt into *prompt and, when
 * answer is not NULL, *answer = answer + "<|im_end|>\n" (the response or reference answer, so the model learns
 * to stop). */
static tl_status render_chat(ctx *c, const tl_chat_msg *m, int n_prompt, const char *answer, char **prompt,
                             char **out_answer) {
    size_t len;
    tl_status s = tl_chat_render(m, (size_t)n_prompt, 1, prompt, &len, c->err);
    if (!s && answer) {
        size_t k = strlen(answer);
        *out_answer = malloc(k + 16);
        if (!*out_answer) s = tl_fail(c->err, TL_ERR_RUNTIME, "out of memory");
        else snprintf(*out_answer, k + 16, "%s<|im_end|>\n", answer);
    }
    return s;
}

/* SFT from chat messages: prompt = the messages before the last rendered + generation prompt; response = the
 * last (assistant) message's content + "<|im_end|>\n". */
static tl_status chat_prompt_response(ctx *c, const cJSON *msgs, char **prompt, char **response) {
    tl_chat_msg *m;
    int n;
    TL_TRY(parse_messages(c, msgs, &m, &n));
    tl_status s = TL_OK;
    if (strcmp(m[n - 1].role, "assistant") != 0)
        s = row_fail(c, "%s: the last message must be the assistant's (the response to train on)", "messages");
    else if (!m[n - 1].content[0]) s = row_fail(c, "%s: the assistant's last message is empty", "messages");
    else s = render_chat(c, m, n - 1, m[n - 1].content, prompt, response);
    free(m);
    return s;
}

static hid_t vlen_str_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

static int write_ds(hid_t file, const char *name, hid_t mem_type, hid_t file_type, size_t n, const void *data) {
    hsize_t dims[1] = {n};
    hid_t sp = H5Screate_simple(1, dims, NULL);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (sp < 0 || lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0) return -1;
    hid_t ds = H5Dcreate2(file, name, file_type, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = ds < 0 || (n > 0 && H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(sp);
    H5Pclose(lcpl);
    return rc ? -1 : 0;
}

static int write_attr_int(hid_t file, const char *name, int64_t v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, H5T_NATIVE_INT64, &v) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc ? -1 : 0;
}

static int write_attr_str(hid_t file, const char *name, const char *v) {
    hid_t t = vlen_str_type(), sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, t, &v) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return rc ? -1 : 0;
}

/* A prompt from chat messages (kind prompt): the messages rendered with the ChatML template plus the generation
 * prompt; a trailing assistant message is not part of the prompt but its reference answer (*reference, NULL when
 * the last message is not the assistant's). */
static tl_status chat_prompt_only(ctx *c, const cJSON *msgs, char **prompt, char **reference) {
    tl_chat_msg *m;
    int n;
    TL_TRY(parse_messages(c, msgs, &m, &n));
    int ref = strcmp(m[n - 1].role, "assistant") == 0;
    tl_status s;
    if (ref && n == 1) s = row_fail(c, "%s: only an assistant message, expected at least one message to answer", "messages");
    else s = render_chat(c, m, n - ref, ref ? m[n - 1].content : NULL, prompt, reference);
    free(m);
    return s;
}

/* The two texts of an SFT row or a prompt row (prompt_kind): from "messages" (chat_prompt_response or
 * chat_prompt_only, allocated in *pa and *ra), or from "prompt" and "response" (SFT: required, not empty) or
 * "reference" (prompt kind: optional; the prompt must not be empty). The rules SFT and prompt rows share. */
static tl_status row_texts(ctx *c, const cJSON *row, int prompt_kind, const char *texts[3], char **pa, char **ra) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, "messages");
    if (msgs) {
        if (!cJSON_IsArray(msgs)) return row_fail(c, "%s: expected an array of messages", "messages");
        tl_status s = prompt_kind ? chat_prompt_only(c, msgs, pa, ra) : chat_prompt_response(c, msgs, pa, ra);
        texts[0] = *pa, texts[1] = *ra;
        return s;
    }
    texts[0] = get_str(row, "prompt"), texts[1] = get_str(row, prompt_kind ? "reference" : "response");
    if (!texts[0]) return row_fail(c, "%s: expected a string (or give \"messages\")", "prompt");
    if (prompt_kind) {
        if (!texts[0][0]) return row_fail(c, "%s: empty prompt, expected text to answer", "prompt");
        if (cJSON_GetObjectItemCaseSensitive(row, "reference") && !texts[1])
            return row_fail(c, "%s: expected a string", "reference");
        return TL_OK;
    }
    if (!texts[1]) return row_fail(c, "%s: expected a string", "response");
    if (!texts[1][0]) return row_fail(c, "%s: empty response", "response");
    return TL_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * The streaming writer. Each output array is a column: rows append to its buffer, and when the buffers of all
 * columns together hold flush_bytes (default TL_BUILD_FLUSH_BYTES, TAILOR_DATA_BUILD_FLUSH_BYTES) they are
 * written out: the first flush creates every column as a chunked, extendible dataset (chunks of at most 1 MiB,
 * the largest the reader accepts for a dataset smaller than its chunk), later ones extend it. A file that ends
 * before its first flush is written contiguous in one go, as small files always were. Either way the datasets'
 * names, dtypes and contents are those of docs/data-format.md. */

#define TL_BUILD_FLUSH_BYTES ((size_t)8 << 20)
#define TL_BUILD_CHUNK_BYTES ((size_t)1 << 20)
#define TL_BUILD_MAX_COLS 8

typedef struct {
    char name[40];
    hid_t mem, file_type;
    vec buf;         /* pending elements */
    int64_t written; /* elements in the file */
    hid_t ds;        /* H5I_INVALID_HID until the first flush */
    int on;          /* written at all (the prompt kind's reference columns only when every row has one) */
} column;

typedef struct {
    hid_t f;
    column col[TL_BUILD_MAX_COLS];
    int n_cols;
    size_t pending, flush_bytes; /* bytes buffered in all columns; the flush threshold */
    int64_t n_flushes;
    int silenced; /* HDF5's error printing is off (old_fn, old_data: the caller's setting) */
    H5E_auto2_t old_fn;
    void *old_data;
} writer;

static int64_t col_total(const column *c) { return c->written + (int64_t)c->buf.n; }

static int col_add(writer *w, const char *name, int is64) {
    column *c = &w->col[w->n_cols];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->mem = is64 ? H5T_NATIVE_INT64 : H5T_NATIVE_INT32;
    c->file_type = is64 ? H5T_STD_I64LE : H5T_STD_I32LE;
    c->buf.elem = is64 ? sizeof(int64_t) : sizeof(int32_t);
    c->ds = H5I_INVALID_HID;
    c->on = 1;
    return w->n_cols++;
}

static int col_push(writer *w, int i, const void *x, size_t count) {
    if (vec_push(&w->col[i].buf, x, count)) return -1;
    w->pending += count * w->col[i].buf.elem;
    return 0;
}

/* Appends the buffered elements of column c to its dataset (created chunked and extendible on first use). */
static int col_flush(writer *w, column *c) {
    if (!c->on) return 0;
    if (c->ds < 0) {
        hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunk[1] = {TL_BUILD_CHUNK_BYTES / c->buf.elem};
        hid_t sp = H5Screate_simple(1, dims, maxdims), lcpl = H5Pcreate(H5P_LINK_CREATE);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), dapl = H5Pcreate(H5P_DATASET_ACCESS);
        /* the chunk cache holds the partly filled chunk between flushes, so each chunk is written about once */
        if (sp >= 0 && lcpl >= 0 && dcpl >= 0 && dapl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0 &&
            H5Pset_chunk(dcpl, 1, chunk) >= 0 && H5Pset_chunk_cache(dapl, 521, 3 * TL_BUILD_CHUNK_BYTES, 1.0) >= 0)
            c->ds = H5Dcreate2(w->f, c->name, c->file_type, sp, lcpl, dcpl, dapl);
        if (sp >= 0) H5Sclose(sp);
        if (lcpl >= 0) H5Pclose(lcpl);
        if (dcpl >= 0) H5Pclose(dcpl);
        if (dapl >= 0) H5Pclose(dapl);
        if (c->ds < 0) return -1;
    }
    if (!c->buf.n) return 0;
    hsize_t start[1] = {(hsize_t)c->written}, count[1] = {c->buf.n}, size[1] = {(hsize_t)col_total(c)};
    if (H5Dset_extent(c->ds, size) < 0) return -1;
    hid_t fs = H5Dget_space(c->ds), ms = H5Screate_simple(1, count, NULL);
    int rc = fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
             H5Dwrite(c->ds, c->mem, ms, fs, H5P_DEFAULT, c->buf.p) < 0;
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (rc) return -1;
    c->written += (int64_t)c->buf.n;
    c->buf.n = 0;
    return 0;
}

static tl_status writer_flush(writer *w, const char *path, tl_error *err) {
    for (int i = 0; i < w->n_cols; i++)
        if (col_flush(w, &w->col[i]) < 0)
            return tl_fail(err, TL_ERR_RUNTIME, "%s: %s: writing the HDF5 file failed", path, w->col[i].name);
    w->pending = 0;
    w->n_flushes++;
    return TL_OK;
}

/* Creates the HDF5 file at path (the empty file tl_data_build made) with its root attributes; HDF5's own error
 * printing is off until writer_close. */
static tl_status writer_open(writer *w, const char *path, const char *kind, int64_t vocab, tl_error *err) {
    H5Eget_auto2(H5E_DEFAULT, &w->old_fn, &w->old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    w->silenced = 1;
    w->f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->f < 0 || write_attr_int(w->f, "tailor_format", 1) || write_attr_str(w->f, "kind", kind) ||
        write_attr_int(w->f, "vocab_size", vocab))
        return tl_fail(err, TL_ERR_RUNTIME, "%s: writing the HDF5 file failed", path);
    return TL_OK;
}

/* Writes what is left (contiguous datasets when nothing was flushed yet), then the users table when st is TL_OK;
 * always closes the file, frees the buffers and restores HDF5's error printing. */
static tl_status writer_close(writer *w, tl_status st, const char *path, const users *u, tl_error *err) {
    int bad = 0;
    if (st == TL_OK && w->f >= 0) {
        if (w->n_flushes) {
            bad = writer_flush(w, path, err) != TL_OK;
        } else {
            for (int i = 0; i < w->n_cols && !bad; i++)
                if (w->col[i].on)
                    bad = write_ds(w->f, w->col[i].name, w->col[i].mem, w->col[i].file_type, w->col[i].buf.n,
                                   w->col[i].buf.p) < 0;
        }
        hid_t t = vlen_str_type();
        bad |= t < 0;
        if (!bad) bad |= write_ds(w->f, "/users/name", t, t, (size_t)u->n_users, u->names) < 0;
        if (!bad && u->n_users && u->groups[0])
            bad |= write_ds(w->f, "/users/group", t, t, (size_t)u->n_users, u->groups) < 0;
        if (t >= 0) H5Tclose(t);
    }
    for (int i = 0; i < w->n_cols; i++) {
        if (w->col[i].ds >= 0 && H5Dclose(w->col[i].ds) < 0) bad = 1;
        free(w->col[i].buf.p);
    }
    if (w->f >= 0 && H5Fclose(w->f) < 0) bad = 1;
    w->f = H5I_INVALID_HID;
    if (w->silenced) H5Eset_auto2(H5E_DEFAULT, w->old_fn, w->old_data);
    if (st == TL_OK && bad) st = tl_fail(err, TL_ERR_RUNTIME, "%s: writing the HDF5 file failed", path);
    return st;
}

/* Tokenizes text and appends it as one entry of columns tok (the tokens) and off (the end offset). */
static tl_status add_text(ctx *c, writer *w, const tl_tokenizer *tk, const char *text, int tok, int off,
                          int64_t *count) {
    int32_t *ids = NULL;
    size_t n = 0;
    TL_TRY(tl_tokenizer_encode(tk, text, strlen(text), 0, &ids, &n, c->err));
    int bad = col_push(w, tok, ids, n);
    int64_t end = col_total(&w->col[tok]);
    bad = bad || col_push(w, off, &end, 1);
    free(ids);
    if (bad) return tl_fail(c->err, TL_ERR_RUNTIME, "%s:%ld: out of memory", c->in, c->line);
    *count += (int64_t)n;
    return TL_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * The final check, in bounded memory. The finished file is read back through the readers' own building blocks
 * (tl_dataset.h: tl_h5_reader_open, the root attributes, the users table, and tl_h5_array_open's link, storage,
 * dtype and size checks on every array) and the readers' content rules are checked block by block: at most
 * CHECK_ROWS rows and, per token array, CHECK_TOKENS tokens (or one row) at a time. Memory: the users table (the
 * reader's copy, O(users)) and the blocks (about 10 MiB), never the dataset. Files up to TL_BUILD_FULL_CHECK
 * bytes are in addition opened whole with the very reader train uses (tl_sft_open, ...). */

#define CHECK_ROWS ((int64_t)1 << 16)
#define CHECK_TOKENS ((int64_t)1 << 20)
#define TL_BUILD_FULL_CHECK ((int64_t)64 << 20)

typedef struct {
    const char *tok_name, *off_name;
    tl_h5_array *tok, *off;
    int64_t n_tok, n_off;
    int64_t *o; /* offsets [i0, i1] of the block */
    int32_t *t; /* its tokens */
} chk_run;

/* Checks the token runs (tokens + offsets) and the per-row arrays (rows[], the user array last) of one kind
 * (0 sft, 1 preference, 2 prompt) block by block. Whatever it opens or allocates is left in runs, rows and rv for
 * the caller to free, also on failure. */
static tl_status chk_runs(const char *path, tl_h5_reader *r, chk_run *runs, int n_runs, tl_h5_array **rows,
                          int32_t **rv, const char *const *row_names, int n_row_arrays, int kind, int64_t vattr,
                          int n_users, tl_error *err) {
    static const char *const item_of[3] = {"example", "pair", "prompt"};
    const char *item = item_of[kind];
    int64_t nr[2] = {0, 0};
    for (int k = 0; k < n_runs; k++) {
        TL_TRY(tl_h5_array_open(r, runs[k].tok_name, 4, &runs[k].tok, &runs[k].n_tok, err));
        TL_TRY(tl_h5_array_open(r, runs[k].off_name, 8, &runs[k].off, &runs[k].n_off, err));
        if (runs[k].n_off == 0)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: no elements, expected N+1 (at least 1)", path, runs[k].off_name);
        if (runs[k].n_off != runs[0].n_off)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: length %lld, expected %lld (the length of %s)", path,
                           runs[k].off_name, (long long)runs[k].n_off, (long long)runs[0].n_off, runs[0].off_name);
    }
    const int64_t n = runs[0].n_off - 1;
    if (n == 0) return tl_fail(err, TL_ERR_INPUT, "%s: %s: empty dataset (no %ss)", path, runs[0].off_name, item);
    for (int a = 0; a < n_row_arrays; a++) {
        TL_TRY(tl_h5_array_open(r, row_names[a], 4, &rows[a], &nr[a], err));
        if (nr[a] != n)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: length %lld, expected %lld (one per %s)", path, row_names[a],
                           (long long)nr[a], (long long)n, item);
    }
    for (int a = 0; a < n_row_arrays; a++)
        if (!(rv[a] = malloc((size_t)CHECK_ROWS * sizeof(int32_t)))) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    for (int k = 0; k < n_runs; k++)
        if (!(runs[k].o = malloc((size_t)(CHECK_ROWS + 1) * sizeof(int64_t))))
            return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    int trainable = 0;
    for (int64_t i0 = 0; i0 < n;) {
        int64_t i1 = n - i0 < CHECK_ROWS ? n : i0 + CHECK_ROWS;
        for (int k = 0; k < n_runs; k++) {
            chk_run *R = &runs[k];
            TL_TRY(tl_h5_array_read(R->off, i0, i1 - i0 + 1, R->o, err));
            if (i0 == 0 && R->o[0] != 0)
                return tl_fail(err, TL_ERR_INPUT, "%s: %s: offsets[0] = %lld, expected 0", path, R->off_name,
                               (long long)R->o[0]);
            for (int64_t j = 0; j < i1 - i0; j++) {
                if (R->o[j + 1] < R->o[j])
                    return tl_fail(err, TL_ERR_INPUT, "%s: %s: decreasing at index %lld (%lld < %lld)", path,
                                   R->off_name, (long long)(i0 + j + 1), (long long)R->o[j + 1], (long long)R->o[j]);
                if (R->o[j + 1] > R->n_tok)
                    return tl_fail(err, TL_ERR_INPUT, "%s: %s: offset %lld at index %lld, expected at most %lld (the "
                                   "length of %s)", path, R->off_name, (long long)R->o[j + 1], (long long)(i0 + j + 1),
                                   (long long)R->n_tok, R->tok_name);
            }
            /* fewer rows when their tokens exceed the block (at least one row) */
            int64_t j = i1 - i0;
            while (j > 1 && R->o[j] - R->o[0] > CHECK_TOKENS) j--;
            i1 = i0 + j;
        }
        for (int k = 0; k < n_runs; k++) {
            chk_run *R = &runs[k];
            int64_t m = R->o[i1 - i0] - R->o[0];
            free(R->t);
            if (!(R->t = malloc((size_t)(m ? m : 1) * sizeof(int32_t)))) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
            TL_TRY(tl_h5_array_read(R->tok, R->o[0], m, R->t, err));
            for (int64_t j = 0; j < i1 - i0; j++)
                for (int64_t q = R->o[j]; q < R->o[j + 1]; q++) {
                    int32_t tok = R->t[q - R->o[0]];
                    if (tok < 0 || (vattr > 0 && tok >= vattr))
                        return tl_fail(err, TL_ERR_INPUT, "%s: %s: %s %lld position %lld: token %d, expected 0 <= "
                                       "token < %lld (attribute vocab_size)", path, R->tok_name, item,
                                       (long long)(i0 + j), (long long)(q - R->o[j]), (int)tok, (long long)vattr);
                }
        }
        for (int a = 0; a < n_row_arrays; a++) TL_TRY(tl_h5_array_read(rows[a], i0, i1 - i0, rv[a], err));
        for (int64_t j = 0; j < i1 - i0; j++) {
            int32_t us = rv[n_row_arrays - 1][j]; /* the user array comes last */
            if (us < 0 || us >= n_users)
                return tl_fail(err, TL_ERR_INPUT, "%s: %s: %s %lld has user %d, expected 0 <= user < %d", path,
                               row_names[n_row_arrays - 1], item, (long long)(i0 + j), (int)us, n_users);
            int64_t len[3];
            for (int k = 0; k < n_runs; k++) len[k] = runs[k].o[j + 1] - runs[k].o[j];
            if (kind == 0) { /* sft: prompt_len, then something to train on */
                int32_t p = rv[0][j];
                if (p < 0 || p > len[0])
                    return tl_fail(err, TL_ERR_INPUT, "%s: /sft/prompt_len: example %lld has prompt_len %d, expected 0 "
                                   "<= prompt_len <= %lld (its length)", path, (long long)(i0 + j), (int)p,
                                   (long long)len[0]);
                trainable |= len[0] - p >= 1 && len[0] >= 2;
            } else if (kind == 1) { /* preference: non-empty responses, 2 or more tokens per side somewhere */
                for (int k = 1; k < 3; k++)
                    if (len[k] == 0)
                        return tl_fail(err, TL_ERR_INPUT, "%s: %s: pair %lld has an empty %s response, expected at "
                                       "least one token", path, runs[k].off_name, (long long)(i0 + j),
                                       k == 1 ? "chosen" : "rejected");
                trainable |= len[0] + len[1] >= 2 && len[0] + len[2] >= 2;
            } else { /* prompt: every prompt has a token */
                if (len[0] == 0)
                    return tl_fail(err, TL_ERR_INPUT, "%s: /prompt/offsets: prompt %lld is empty, expected at least one "
                                   "token", path, (long long)(i0 + j));
                trainable = 1;
            }
        }
        i0 = i1;
    }
    for (int k = 0; k < n_runs; k++) {
        int64_t last = 0;
        TL_TRY(tl_h5_array_read(runs[k].off, n, 1, &last, err));
        if (last != runs[k].n_tok)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: last offset %lld, expected %lld (the length of %s)", path,
                           runs[k].off_name, (long long)last, (long long)runs[k].n_tok, runs[k].tok_name);
    }
    if (!trainable && kind == 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: /sft/prompt_len: no example has a token to train on (each is all "
                       "prompt or shorter than 2 tokens), expected at least one example with a response", path);
    if (!trainable)
        return tl_fail(err, TL_ERR_INPUT, "%s: /pref/prompt/offsets: no pair has a token to train on (each has an "
                       "empty prompt and a 1-token response), expected at least one pair with 2 or more tokens per "
                       "side", path);
    return TL_OK;
}

tl_status tl_data_check_bounded(const char *path, const char *kind, tl_error *err) {
    int pref;
    if (!strcmp(kind, "sft")) pref = 0;
    else if (!strcmp(kind, "preference")) pref = 1;
    else if (!strcmp(kind, "prompt")) pref = 2;
    else return tl_fail(err, TL_ERR_INPUT, "'%s' is not a dataset kind (expected sft, preference or prompt)", kind);
    tl_h5_reader *r = NULL;
    TL_TRY(tl_h5_reader_open(path, &r, err));
    int64_t vattr = 0;
    int n_users = 0;
    char **names = NULL, **groups = NULL;
    tl_status st = tl_h5_read_root(r, pref == 2 ? "prompt" : pref ? "preference" : "sft", 0, &vattr, err);
    if (st == TL_OK) st = tl_h5_read_users(r, &n_users, &names, &groups, err);
    tl_free_strings(names, n_users);
    tl_free_strings(groups, n_users);
    chk_run runs[3];
    memset(runs, 0, sizeof runs);
    tl_h5_array *rows[2] = {NULL, NULL};
    int32_t *rv[2] = {NULL, NULL};
    if (st == TL_OK && pref == 1) {
        runs[0] = (chk_run){.tok_name = "/pref/prompt/tokens", .off_name = "/pref/prompt/offsets"};
        runs[1] = (chk_run){.tok_name = "/pref/chosen/tokens", .off_name = "/pref/chosen/offsets"};
        runs[2] = (chk_run){.tok_name = "/pref/rejected/tokens", .off_name = "/pref/rejected/offsets"};
        static const char *const rn[1] = {"/pref/user"};
        st = chk_runs(path, r, runs, 3, rows, rv, rn, 1, 1, vattr, n_users, err);
    } else if (st == TL_OK && pref == 2) {
        int has_t = 0, has_o = 0;
        st = tl_h5_has(r, "/prompt/reference/tokens", &has_t, err);
        if (st == TL_OK) st = tl_h5_has(r, "/prompt/reference/offsets", &has_o, err);
        if (st == TL_OK && has_t != has_o)
            st = tl_fail(err, TL_ERR_INPUT, "%s: %s: missing dataset, expected /prompt/reference/tokens and "
                         "/prompt/reference/offsets together or neither", path,
                         has_t ? "/prompt/reference/offsets" : "/prompt/reference/tokens");
        runs[0] = (chk_run){.tok_name = "/prompt/tokens", .off_name = "/prompt/offsets"};
        runs[1] = (chk_run){.tok_name = "/prompt/reference/tokens", .off_name = "/prompt/reference/offsets"};
        static const char *const rn[1] = {"/prompt/user"};
        if (st == TL_OK) st = chk_runs(path, r, runs, has_t ? 2 : 1, rows, rv, rn, 1, 2, vattr, n_users, err);
    } else if (st == TL_OK) {
        runs[0] = (chk_run){.tok_name = "/sft/tokens", .off_name = "/sft/offsets"};
        static const char *const rn[2] = {"/sft/prompt_len", "/sft/user"};
        st = chk_runs(path, r, runs, 1, rows, rv, rn, 2, 0, vattr, n_users, err);
    }
    for (int k = 0; k < 3; k++) {
        tl_h5_array_close(runs[k].tok), tl_h5_array_close(runs[k].off);
        free(runs[k].o), free(runs[k].t);
    }
    for (int a = 0; a < 2; a++) tl_h5_array_close(rows[a]), free(rv[a]);
    return tl_h5_reader_close(r, st, err);
}

/* Checks the written file before it is published, so that data build never publishes a file that train or inspect
 * would refuse: in bounded memory always (check_bounded), and with the reader train uses (no model: its
 * vocabulary check is train's) when the file is at most TL_BUILD_FULL_CHECK bytes. The row checks above should
 * make this never fire; if it does, the message names OUT and the reader's complaint. */
static tl_status check_output(const char *tmp, const char *out, int pref, tl_error *err) {
    tl_error ve;
    memset(&ve, 0, sizeof ve);
    tl_status vs = tl_data_check_bounded(tmp, pref == 2 ? "prompt" : pref ? "preference" : "sft", &ve);
    struct stat sb;
    if (vs == TL_OK && stat(tmp, &sb) == 0 && (int64_t)sb.st_size <= TL_BUILD_FULL_CHECK) {
        if (pref == 2) {
            tl_prompt_dataset d;
            vs = tl_prompt_open(tmp, 0, &d, &ve);
            if (vs == TL_OK) tl_prompt_free(&d);
        } else if (pref) {
            tl_pref_dataset d;
            vs = tl_pref_open(tmp, 0, &d, &ve);
            if (vs == TL_OK) tl_pref_free(&d);
        } else {
            tl_sft_dataset d;
            vs = tl_sft_open(tmp, 0, &d, &ve);
            if (vs == TL_OK) tl_sft_free(&d);
        }
    }
    if (vs == TL_OK) return TL_OK;
    return tl_fail(err, vs, "%s: the built dataset fails tailor's own checks: %.900s", out, ve.msg);
}

/* One JSONL row may be long (a whole conversation) but not unbounded: a file that is one multi-GB line would
 * otherwise be read whole into memory before anything is checked. */
#define TL_JSONL_MAX_LINE (64 << 20)

/* getline with a bound: the line (with its '\n', NUL bytes kept) in *line, its length returned; -1 at the end of
 * the input, or with *too_long = 1 past TL_JSONL_MAX_LINE bytes (2: out of memory). */
static ssize_t read_line(FILE *f, char **line, size_t *cap, int *too_long) {
    size_t n = 0;
    int ch = EOF;
    while ((ch = getc_unlocked(f)) != EOF) {
        if (n + 2 > *cap) {
            if (n >= TL_JSONL_MAX_LINE) {
                *too_long = 1;
                return -1;
            }
            size_t nc = *cap ? *cap * 2 : 4096;
            if (nc > (size_t)TL_JSONL_MAX_LINE + 2) nc = (size_t)TL_JSONL_MAX_LINE + 2;
            char *nb = realloc(*line, nc);
            if (!nb) {
                *too_long = 2;
                return -1;
            }
            *line = nb, *cap = nc;
        }
        (*line)[n++] = (char)ch;
        if (ch == '\n') break;
    }
    if (n == 0) return -1;
    (*line)[n] = '\0';
    return (ssize_t)n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    FILE *out;
    int tty;
    double every, t0, t_last;
    int64_t in_size; /* bytes of the input, 0 when unknown (not a regular file) */
    int printed;     /* a line was printed: the final one is too (a short build prints none) */
} progress;

static void progress_line(progress *p, long lines, int64_t bytes, int64_t rows, int final) {
    if (!p->out) return;
    double t = now_s();
    if (final ? !p->printed : t - p->t_last < p->every) return;
    p->t_last = t;
    p->printed = 1;
    double dt = t - p->t0 > 1e-9 ? t - p->t0 : 1e-9;
    char pct[32] = "";
    if (p->in_size > 0) snprintf(pct, sizeof pct, " (%.0f%%)", 100.0 * (double)bytes / (double)p->in_size);
    fprintf(p->out, "%sdata build: %ld lines, %.1f MiB%s read, %.1f MiB/s, %.0f rows/s%s", p->tty ? "\r" : "", lines,
            (double)bytes / 1048576.0, pct, (double)bytes / 1048576.0 / dt, (double)rows / dt,
            p->tty ? (final ? "   \n" : "   ") : "\n");
    fflush(p->out);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The closing report: totals, then one line per user, or above 64 users (unless report_users) the distribution
 * of rows per user and the 5 largest users. */
static void print_report(FILE *f, const char *out, const char *kind, const char *unit, int64_t rows, int64_t tokens,
                         const users *u, int report_users) {
    fprintf(f, "%s: %lld %s from %d user(s), kind %s\n", out, (long long)rows, unit, u->n_users, kind);
    char nb[TL_ESC_CAP]; /* user names from the JSONL: shown escaped (tl_text.h) */
    if (report_users || u->n_users <= 64) {
        fprintf(f, "  %-28s %9s %10s\n", "user", unit, "tokens");
        for (int i = 0; i < u->n_users; i++)
            fprintf(f, "  %-28.28s %9lld %10lld\n", tl_escape(nb, sizeof nb, u->names[i]), (long long)u->examples[i],
                    (long long)u->tokens[i]);
        return;
    }
    fprintf(f, "  %lld tokens; %s per user: ", (long long)tokens, unit);
    int64_t *s = malloc((size_t)u->n_users * sizeof *s);
    if (s) {
        memcpy(s, u->examples, (size_t)u->n_users * sizeof *s);
        qsort(s, (size_t)u->n_users, sizeof *s, cmp_i64);
        int n = u->n_users;
        double med = n % 2 ? (double)s[n / 2] : 0.5 * (double)(s[n / 2 - 1] + s[n / 2]);
        fprintf(f, "min %lld, median %g, max %lld\n", (long long)s[0], med, (long long)s[n - 1]);
        free(s);
    } else {
        fprintf(f, "(no memory to sort them)\n");
    }
    /* the 5 largest by rows (ties: the earlier user), one pass */
    int top[5], nt = 0;
    for (int i = 0; i < u->n_users; i++) {
        int at = nt;
        while (at > 0 && u->examples[top[at - 1]] < u->examples[i]) at--;
        if (at >= 5) continue;
        if (nt < 5) nt++;
        for (int k = nt - 1; k > at; k--) top[k] = top[k - 1];
        top[at] = i;
    }
    fprintf(f, "  the %d largest users (all %d: --report-users):\n", nt, u->n_users);
    fprintf(f, "  %-28s %9s %10s\n", "user", unit, "tokens");
    for (int k = 0; k < nt; k++)
        fprintf(f, "  %-28.28s %9lld %10lld\n", tl_escape(nb, sizeof nb, u->names[top[k]]),
                (long long)u->examples[top[k]], (long long)u->tokens[top[k]]);
}

tl_status tl_data_build(const char *in, const char *out, const char *model, const char *kind, FILE *report,
                        tl_error *err) {
    tl_data_build_opts o = {.report = report};
    return tl_data_build_ex(in, out, model, kind, &o, err);
}

tl_status tl_data_build_ex(const char *in, const char *out, const char *model, const char *kind,
                           const tl_data_build_opts *opts, tl_error *err) {
    int pref;
    if (!strcmp(kind, "sft")) pref = 0;
    else if (!strcmp(kind, "preference")) pref = 1;
    else if (!strcmp(kind, "prompt")) pref = 2;
    else return tl_fail(err, TL_ERR_INPUT, "--kind: '%s' is not a dataset kind (expected sft, preference or prompt)",
                        kind);
    int64_t flush_bytes = (int64_t)TL_BUILD_FLUSH_BYTES;
    const char *fe = getenv("TAILOR_DATA_BUILD_FLUSH_BYTES");
    if (fe && *fe && tl_parse_i64("TAILOR_DATA_BUILD_FLUSH_BYTES", fe, 1, (int64_t)1 << 40, &flush_bytes, err))
        return tl_fail(err, TL_ERR_INPUT, "environment TAILOR_DATA_BUILD_FLUSH_BYTES: \"%.40s\", expected an integer "
                       "in [1, 2^40]", fe);
    tl_tokenizer *tk = NULL;
    TL_TRY(tl_tokenizer_for_model(model, &tk, err));
    FILE *f = fopen(in, "r");
    if (!f) {
        tl_tokenizer_free(tk);
        return tl_fail(err, TL_ERR_INPUT, "%s: %s", in, strerror(errno));
    }
    progress pg = {.out = opts ? opts->progress : NULL, .tty = opts && opts->progress_tty};
    pg.every = pg.tty ? 1.0 : 10.0;
    const char *pe = getenv("TAILOR_DATA_BUILD_PROGRESS_S"); /* tests: a line per row with 0 */
    if (pe && *pe) pg.every = atof(pe);
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode)) pg.in_size = (int64_t)sb.st_size;
    pg.t0 = pg.t_last = now_s();
    users u = {0};
    ctx c = {.in = in, .line = 0, .err = err};
    tl_status s = TL_OK;
    writer w;
    memset(&w, 0, sizeof w);
    w.f = H5I_INVALID_HID;
    w.flush_bytes = (size_t)flush_bytes;
    /* columns: sft 0 tokens, 1 offsets (over prompt + response), 2 prompt_len, 3 user; preference 0-5 the tokens
     * and offsets of prompt, chosen, rejected, 6 user; prompt 0 tokens, 1 offsets, 2 user, 3-4 reference */
    int c_user;
    if (pref == 1) {
        static const char *const parts[3] = {"prompt", "chosen", "rejected"};
        char nm[64];
        for (int r = 0; r < 3; r++) {
            snprintf(nm, sizeof nm, "/pref/%s/tokens", parts[r]);
            col_add(&w, nm, 0);
            snprintf(nm, sizeof nm, "/pref/%s/offsets", parts[r]);
            col_add(&w, nm, 1);
        }
        c_user = col_add(&w, "/pref/user", 0);
    } else if (pref == 2) {
        col_add(&w, "/prompt/tokens", 0), col_add(&w, "/prompt/offsets", 1);
        c_user = col_add(&w, "/prompt/user", 0);
        col_add(&w, "/prompt/reference/tokens", 0), col_add(&w, "/prompt/reference/offsets", 1);
    } else {
        col_add(&w, "/sft/tokens", 0), col_add(&w, "/sft/offsets", 1), col_add(&w, "/sft/prompt_len", 0);
        c_user = col_add(&w, "/sft/user", 0);
    }
    int64_t zero = 0;
    for (int i = 0; i < w.n_cols && !s; i++)
        if (w.col[i].mem == H5T_NATIVE_INT64 && col_push(&w, i, &zero, 1)) s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    /* claim a fresh name first (O_EXCL: never an existing file), so only what this call created is removed */
    char tmp[TL_PATH_MAX + 64];
    int made_tmp = 0;
    if (!s && (size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid()) >= sizeof tmp)
        s = tl_fail(err, TL_ERR_INPUT, "%.200s...: output path longer than %d bytes", out, TL_PATH_MAX);
    if (!s) {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: cannot create the output: %s", tmp, strerror(errno));
        } else {
            close(fd);
            made_tmp = 1;
            s = writer_open(&w, tmp, pref == 2 ? "prompt" : pref ? "preference" : "sft",
                            (int64_t)tl_tokenizer_vocab_size(tk), err);
        }
    }
    char *line = NULL;
    size_t cap = 0;
    int any_group = -1; /* unknown until the first row */
    int any_trainable = 0;
    int any_ref = -1; /* prompt kind: unknown until the first row; then every row has a reference or none */
    int64_t n_rows = 0, n_tokens = 0, bytes_read = 0;
    ssize_t got;
    int too_long = 0;
    while (!s && (got = read_line(f, &line, &cap, &too_long)) != -1) {
        c.line++;
        bytes_read += got;
        progress_line(&pg, c.line, bytes_read, n_rows, 0);
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
        if (!*p && p == line + got) continue;
        cJSON *row = NULL;
        s = parse_row(&c, line, (size_t)got, &row);
        if (s) break;
        const char *user = get_str(row, "user"), *group = get_str(row, "group");
        char *prompt_alloc = NULL, *resp_alloc = NULL;
        const char *texts[3] = {0};
        if (!user || !user[0]) s = row_fail(&c, "%s: expected a non-empty string", "user");
        else if (cJSON_GetObjectItemCaseSensitive(row, "group") && (!group || !group[0]))
            s = row_fail(&c, "%s: expected a non-empty string", "group");
        else if ((any_group == 1 && !group) || (any_group == 0 && group))
            s = row_fail(&c, "%s: either every row has a group or none does", "group");
        if (!s) any_group = group != NULL;
        if (!s && pref == 2) {
            s = row_texts(&c, row, 1, texts, &prompt_alloc, &resp_alloc);
            if (!s && ((any_ref == 1 && !texts[1]) || (any_ref == 0 && texts[1])))
                s = row_fail(&c, "%s: either every row has a reference answer (\"reference\" or a last assistant "
                             "message) or none does", texts[1] ? "reference" : "prompt");
            if (!s) any_ref = texts[1] != NULL;
            if (!s) w.col[3].on = w.col[4].on = any_ref;
        } else if (!s && pref) {
            static const char *const keys[3] = {"prompt", "chosen", "rejected"};
            for (int r = 0; r < 3 && !s; r++) {
                texts[r] = get_str(row, keys[r]);
                if (!texts[r]) s = row_fail(&c, "%s: expected a string", keys[r]);
                else if (r > 0 && !texts[r][0]) s = row_fail(&c, "%s: empty response", keys[r]);
            }
        } else if (!s) {
            s = row_texts(&c, row, 0, texts, &prompt_alloc, &resp_alloc);
        }
        int ui = -1;
        if (!s) {
            ui = user_index(&u, user, group);
            if (ui == -2) s = row_fail(&c, "%s: more than 2^30 distinct users", "user");
            else if (ui < 0) s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
            else if ((group && (!u.groups[ui] || strcmp(u.groups[ui], group))))
                s = row_fail(&c, "group: user '%s' appears with two different groups", user);
        }
        if (!s) {
            int64_t ntok = 0;
            if (pref == 2) {
                s = add_text(&c, &w, tk, texts[0], 0, 1, &ntok);
                if (!s && ntok == 0) s = row_fail(&c, "%s: tokenizes to no token", "prompt");
                if (!s && texts[1]) s = add_text(&c, &w, tk, texts[1], 3, 4, &ntok);
                if (!s) any_trainable = 1;
            } else if (pref) {
                int64_t part[3] = {0, 0, 0};
                for (int r = 0; r < 3 && !s; r++) {
                    int64_t before = ntok;
                    s = add_text(&c, &w, tk, texts[r], 2 * r, 2 * r + 1, &ntok);
                    part[r] = ntok - before;
                }
                if (!s && part[0] + part[1] >= 2 && part[0] + part[2] >= 2) any_trainable = 1;
            } else {
                /* tokenize prompt and response separately (the boundary is exact); the sequence is their
                 * concatenation */
                int32_t *ids[2] = {NULL, NULL};
                size_t n[2] = {0, 0};
                for (int k = 0; k < 2 && !s; k++) s = tl_tokenizer_encode(tk, texts[k], strlen(texts[k]), 0, &ids[k], &n[k], err);
                if (!s) {
                    int64_t len = (int64_t)(n[0] + n[1]), end = col_total(&w.col[0]) + len;
                    int32_t plen = (int32_t)n[0];
                    if (len >= 2 && (int64_t)plen < len) any_trainable = 1;
                    if (len > INT32_MAX || col_push(&w, 0, ids[0], n[0]) || col_push(&w, 0, ids[1], n[1]) ||
                        col_push(&w, 1, &end, 1) || col_push(&w, 2, &plen, 1))
                        s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
                    ntok = len;
                }
                free(ids[0]), free(ids[1]);
            }
            if (!s) {
                int32_t u32 = ui;
                if (col_push(&w, c_user, &u32, 1)) s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
                u.examples[ui]++, u.tokens[ui] += ntok;
                n_rows++, n_tokens += ntok;
            }
            if (!s && w.pending >= w.flush_bytes) s = writer_flush(&w, tmp, err);
        }
        free(prompt_alloc);
        free(resp_alloc);
        cJSON_Delete(row);
    }
    free(line);
    if (!s && too_long == 1)
        s = tl_fail(err, TL_ERR_INPUT, "%s:%ld: line longer than %d MiB, expected one JSON object per line", in,
                    c.line + 1, TL_JSONL_MAX_LINE >> 20);
    else if (!s && too_long)
        s = tl_fail(err, TL_ERR_RUNTIME, "%s:%ld: out of memory reading the line", in, c.line + 1);
    if (!s && ferror(f)) s = tl_fail(err, TL_ERR_RUNTIME, "%s: read error", in);
    fclose(f);
    if (!s && n_rows == 0)
        s = tl_fail(err, TL_ERR_INPUT, "%s: no %s (the file has no non-blank line)", in,
                    pref == 2 ? "prompts" : pref ? "pairs" : "examples");
    /* the rule of the dataset readers (tl_dataset.h, tl_pref.h), said in terms of the input */
    if (!s && !any_trainable)
        s = tl_fail(err, TL_ERR_INPUT, "%s: no %s has a token to train on (each is an empty prompt with a 1-token "
                    "response), expected at least one whose prompt and response make 2 or more tokens", in,
                    pref ? "pair" : "example");
    if (!s) progress_line(&pg, c.line, bytes_read, n_rows, 1);
    s = writer_close(&w, s, tmp, &u, err);
    if (!s) s = check_output(tmp, out, pref, err); /* never publish what train would refuse */
    if (!s && rename(tmp, out) != 0) {
        int e = errno; /* OUT being a directory or not writable is the user's to fix: bad usage */
        s = tl_fail(err, e == EISDIR || e == ENOTDIR || e == EACCES || e == EPERM ? TL_ERR_INPUT : TL_ERR_RUNTIME,
                    "%s: cannot rename the output into place: %s", out, strerror(e));
    }
    if (s && made_tmp) unlink(tmp);
    if (!s && opts && opts->report)
        print_report(opts->report, out, kind, pref == 2 ? "prompts" : pref ? "pairs" : "examples", n_rows, n_tokens,
                     &u, opts->report_users);
    for (int i = 0; i < u.n_users; i++) free(u.names[i]), free(u.groups[i]);
    free(u.names), free(u.groups), free(u.examples), free(u.tokens), free(u.slot);
    tl_tokenizer_free(tk);
    return s;
}
