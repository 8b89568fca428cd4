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
#include <unistd.h>

#include <cjson/cJSON.h>

#include "data/tl_dataset.h"
#include "data/tl_model_tokenizer.h"
#include "data/tl_pref.h"
#include "data/tl_prompt.h"
#include "kernels/tl_text.h"
#include "data/tl_io.h" /* TL_PATH_MAX */

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

/* One token run (prompt, response, chosen, rejected): tokens and offsets. */
typedef struct {
    vec tok, off;
} run;

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

/* Tokenizes text and appends it as one run entry. */
static tl_status add_text(ctx *c, const tl_tokenizer *tk, const char *text, run *r, int64_t *count) {
    int32_t *ids = NULL;
    size_t n = 0;
    TL_TRY(tl_tokenizer_encode(tk, text, strlen(text), 0, &ids, &n, c->err));
    int64_t end = (int64_t)(r->tok.n + n);
    int bad = vec_push(&r->tok, ids, n) || vec_push(&r->off, &end, 1);
    free(ids);
    if (bad) return tl_fail(c->err, TL_ERR_RUNTIME, "%s:%ld: out of memory", c->in, c->line);
    *count += (int64_t)n;
    return TL_OK;
}

/* SFT from chat messages: prompt = the messages before the last rendered + generation prompt; response = the
 * last (assistant) message's content + "<|im_end|>\n". */
static tl_status chat_prompt_response(ctx *c, const cJSON *msgs, char **prompt, char **response) {
    int n = cJSON_GetArraySize(msgs);
    if (n < 1) return row_fail(c, "%s: needs at least one message", "messages");
    tl_chat_msg *m = calloc((size_t)n, sizeof *m);
    if (!m) return tl_fail(c->err, TL_ERR_RUNTIME, "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        m[i].role = get_str(it, "role"), m[i].content = get_str(it, "content");
        if (!m[i].role || !m[i].content) {
            free(m);
            char what[64];
            snprintf(what, sizeof what, "messages[%d]", i);
            return row_fail(c, "%s: expected an object with string fields role and content", what);
        }
        i++;
    }
    if (strcmp(m[n - 1].role, "assistant") != 0) {
        free(m);
        return row_fail(c, "%s: the last message must be the assistant's (the response to train on)", "messages");
    }
    if (!m[n - 1].content[0]) {
        free(m);
        return row_fail(c, "%s: the assistant's last message is empty", "messages");
    }
    size_t len;
    tl_status s = tl_chat_render(m, (size_t)n - 1, 1, prompt, &len, c->err);
    if (!s) {
        size_t k = strlen(m[n - 1].content);
        *response = malloc(k + 16);
        if (!*response) s = tl_fail(c->err, TL_ERR_RUNTIME, "out of memory");
        else snprintf(*response, k + 16, "%s<|im_end|>\n", m[n - 1].content);
    }
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
    int n = cJSON_GetArraySize(msgs);
    if (n < 1) return row_fail(c, "%s: needs at least one message", "messages");
    tl_chat_msg *m = calloc((size_t)n, sizeof *m);
    if (!m) return tl_fail(c->err, TL_ERR_RUNTIME, "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        m[i].role = get_str(it, "role"), m[i].content = get_str(it, "content");
        if (!m[i].role || !m[i].content) {
            free(m);
            char what[64];
            snprintf(what, sizeof what, "messages[%d]", i);
            return row_fail(c, "%s: expected an object with string fields role and content", what);
        }
        i++;
    }
    int ref = strcmp(m[n - 1].role, "assistant") == 0;
    if (ref && n == 1) {
        free(m);
        return row_fail(c, "%s: only an assistant message, expected at least one message to answer", "messages");
    }
    size_t len;
    tl_status s = tl_chat_render(m, (size_t)(n - ref), 1, prompt, &len, c->err);
    if (!s && ref) {
        size_t k = strlen(m[n - 1].content);
        *reference = malloc(k + 16);
        if (!*reference) s = tl_fail(c->err, TL_ERR_RUNTIME, "out of memory");
        else snprintf(*reference, k + 16, "%s<|im_end|>\n", m[n - 1].content);
    }
    free(m);
    return s;
}

/* kind: 0 sft, 1 preference, 2 prompt */
static tl_status write_h5(const char *path, int pref, const users *u, run *runs, int n_runs, const vec *user_of,
                          int64_t vocab, int has_ref, tl_error *err) {
    H5E_auto2_t old_fn;
    void *old_data;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    int bad = 0;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); /* the empty file tl_data_build made */
    hid_t st = vlen_str_type();
    bad |= f < 0 || st < 0;
    if (!bad) {
        bad |= write_attr_int(f, "tailor_format", 1);
        bad |= write_attr_str(f, "kind", pref == 2 ? "prompt" : pref ? "preference" : "sft");
        bad |= write_attr_int(f, "vocab_size", vocab);
        bad |= write_ds(f, "/users/name", st, st, (size_t)u->n_users, u->names);
        if (u->n_users && u->groups[0]) bad |= write_ds(f, "/users/group", st, st, (size_t)u->n_users, u->groups);
        static const char *const pref_names[3] = {"prompt", "chosen", "rejected"};
        char nm[64];
        for (int r = 0; r < n_runs && !bad; r++) {
            if (pref == 1) {
                snprintf(nm, sizeof nm, "/pref/%s/tokens", pref_names[r]);
                bad |= write_ds(f, nm, H5T_NATIVE_INT32, H5T_STD_I32LE, runs[r].tok.n, runs[r].tok.p);
                snprintf(nm, sizeof nm, "/pref/%s/offsets", pref_names[r]);
                bad |= write_ds(f, nm, H5T_NATIVE_INT64, H5T_STD_I64LE, runs[r].off.n, runs[r].off.p);
            }
        }
        if (pref == 2) {
            /* prompt: run 0 the prompts, run 1 the reference answers (written when every row has one) */
            bad |= write_ds(f, "/prompt/tokens", H5T_NATIVE_INT32, H5T_STD_I32LE, runs[0].tok.n, runs[0].tok.p);
            bad |= write_ds(f, "/prompt/offsets", H5T_NATIVE_INT64, H5T_STD_I64LE, runs[0].off.n, runs[0].off.p);
            bad |= write_ds(f, "/prompt/user", H5T_NATIVE_INT32, H5T_STD_I32LE, user_of->n, user_of->p);
            if (has_ref) {
                bad |= write_ds(f, "/prompt/reference/tokens", H5T_NATIVE_INT32, H5T_STD_I32LE, runs[1].tok.n,
                                runs[1].tok.p);
                bad |= write_ds(f, "/prompt/reference/offsets", H5T_NATIVE_INT64, H5T_STD_I64LE, runs[1].off.n,
                                runs[1].off.p);
            }
        } else if (pref) {
            bad |= write_ds(f, "/pref/user", H5T_NATIVE_INT32, H5T_STD_I32LE, user_of->n, user_of->p);
        } else {
            /* sft: one token array; prompt_len from the prompt run, offsets over prompt+response */
            bad |= write_ds(f, "/sft/tokens", H5T_NATIVE_INT32, H5T_STD_I32LE, runs[0].tok.n, runs[0].tok.p);
            bad |= write_ds(f, "/sft/offsets", H5T_NATIVE_INT64, H5T_STD_I64LE, runs[0].off.n, runs[0].off.p);
            bad |= write_ds(f, "/sft/prompt_len", H5T_NATIVE_INT32, H5T_STD_I32LE, runs[1].tok.n, runs[1].tok.p);
            bad |= write_ds(f, "/sft/user", H5T_NATIVE_INT32, H5T_STD_I32LE, user_of->n, user_of->p);
        }
    }
    if (st >= 0) H5Tclose(st);
    if (f >= 0 && H5Fclose(f) < 0) bad = 1;
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    return bad ? tl_fail(err, TL_ERR_RUNTIME, "%s: writing the HDF5 file failed", path) : TL_OK;
}

/* Opens the written file with the reader train uses (no model: its vocabulary check is train's), so that data
 * build never publishes a file that train or inspect would refuse. The checks above should make this never
 * fire; if it does, the message names OUT and the reader's complaint. */
static tl_status check_output(const char *tmp, const char *out, int pref, tl_error *err) {
    tl_error ve;
    memset(&ve, 0, sizeof ve);
    tl_status vs;
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

tl_status tl_data_build(const char *in, const char *out, const char *model, const char *kind, FILE *report,
                        tl_error *err) {
    int pref;
    if (!strcmp(kind, "sft")) pref = 0;
    else if (!strcmp(kind, "preference")) pref = 1;
    else if (!strcmp(kind, "prompt")) pref = 2;
    else return tl_fail(err, TL_ERR_INPUT, "--kind: '%s' is not a dataset kind (expected sft, preference or prompt)",
                        kind);
    tl_tokenizer *tk = NULL;
    TL_TRY(tl_tokenizer_for_model(model, &tk, err));
    FILE *f = fopen(in, "r");
    if (!f) {
        tl_tokenizer_free(tk);
        return tl_fail(err, TL_ERR_INPUT, "%s: %s", in, strerror(errno));
    }
    /* sft: run 0 = whole sequences (prompt + response), run 1's tok = prompt lengths; preference: 3 runs */
    run runs[3];
    for (int r = 0; r < 3; r++) {
        runs[r].tok = (vec){.elem = sizeof(int32_t)};
        runs[r].off = (vec){.elem = sizeof(int64_t)};
        int64_t zero = 0;
        vec_push(&runs[r].off, &zero, 1);
    }
    vec user_of = {.elem = sizeof(int32_t)};
    users u = {0};
    ctx c = {.in = in, .line = 0, .err = err};
    tl_status s = TL_OK;
    char *line = NULL;
    size_t cap = 0;
    int any_group = -1; /* unknown until the first row */
    int any_trainable = 0;
    int any_ref = -1; /* prompt kind: unknown until the first row; then every row has a reference or none */
    ssize_t got;
    int too_long = 0;
    while (!s && (got = read_line(f, &line, &cap, &too_long)) != -1) {
        c.line++;
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
            const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, "messages");
            if (msgs) {
                if (!cJSON_IsArray(msgs)) s = row_fail(&c, "%s: expected an array of messages", "messages");
                else s = chat_prompt_only(&c, msgs, &prompt_alloc, &resp_alloc);
                texts[0] = prompt_alloc, texts[1] = resp_alloc;
            } else {
                texts[0] = get_str(row, "prompt"), texts[1] = get_str(row, "reference");
                if (!texts[0]) s = row_fail(&c, "%s: expected a string (or give \"messages\")", "prompt");
                else if (!texts[0][0]) s = row_fail(&c, "%s: empty prompt, expected text to answer", "prompt");
                else if (cJSON_GetObjectItemCaseSensitive(row, "reference") && !texts[1])
                    s = row_fail(&c, "%s: expected a string", "reference");
            }
            if (!s && ((any_ref == 1 && !texts[1]) || (any_ref == 0 && texts[1])))
                s = row_fail(&c, "%s: either every row has a reference answer (\"reference\" or a last assistant "
                             "message) or none does", texts[1] ? "reference" : "prompt");
            if (!s) any_ref = texts[1] != NULL;
        } else if (!s && pref) {
            static const char *const keys[3] = {"prompt", "chosen", "rejected"};
            for (int r = 0; r < 3 && !s; r++) {
                texts[r] = get_str(row, keys[r]);
                if (!texts[r]) s = row_fail(&c, "%s: expected a string", keys[r]);
                else if (r > 0 && !texts[r][0]) s = row_fail(&c, "%s: empty response", keys[r]);
            }
        } else if (!s) {
            const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, "messages");
            if (msgs) {
                if (!cJSON_IsArray(msgs)) s = row_fail(&c, "%s: expected an array of messages", "messages");
                else s = chat_prompt_response(&c, msgs, &prompt_alloc, &resp_alloc);
                texts[0] = prompt_alloc, texts[1] = resp_alloc;
            } else {
                texts[0] = get_str(row, "prompt"), texts[1] = get_str(row, "response");
                if (!texts[0]) s = row_fail(&c, "%s: expected a string (or give \"messages\")", "prompt");
                else if (!texts[1]) s = row_fail(&c, "%s: expected a string", "response");
                else if (!texts[1][0]) s = row_fail(&c, "%s: empty response", "response");
            }
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
                int64_t before = ntok;
                s = add_text(&c, tk, texts[0], &runs[0], &ntok);
                if (!s && ntok == before) s = row_fail(&c, "%s: tokenizes to no token", "prompt");
                if (!s && texts[1]) s = add_text(&c, tk, texts[1], &runs[1], &ntok);
                if (!s) any_trainable = 1;
            } else if (pref) {
                int64_t part[3] = {0, 0, 0};
                for (int r = 0; r < 3 && !s; r++) {
                    int64_t before = ntok;
                    s = add_text(&c, tk, texts[r], &runs[r], &ntok);
                    part[r] = ntok - before;
                }
                if (!s && part[0] + part[1] >= 2 && part[0] + part[2] >= 2) any_trainable = 1;
            } else {
                /* tokenize prompt and response separately; the sequence is their concatenation */
                int64_t before = ntok;
                s = add_text(&c, tk, texts[0], &runs[2], &ntok); /* scratch run for the prompt */
                int32_t plen = (int32_t)(ntok - before);
                if (!s) s = add_text(&c, tk, texts[1], &runs[2], &ntok);
                if (!s) {
                    /* move the two scratch entries into run 0 as one sequence */
                    int64_t *off = runs[2].off.p;
                    size_t n2 = runs[2].off.n;
                    int64_t start = off[n2 - 3], end = off[n2 - 1];
                    int32_t *tok = runs[2].tok.p;
                    int64_t seq_end = (int64_t)runs[0].tok.n + (end - start);
                    if (end - start >= 2 && plen < end - start) any_trainable = 1;
                    if (end - start > INT32_MAX || vec_push(&runs[0].tok, tok + start, (size_t)(end - start)) ||
                        vec_push(&runs[0].off, &seq_end, 1) || vec_push(&runs[1].tok, &plen, 1))
                        s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
                    runs[2].tok.n = (size_t)start, runs[2].off.n = n2 - 2;
                }
            }
            if (!s) {
                int32_t u32 = ui;
                if (vec_push(&user_of, &u32, 1)) s = tl_fail(err, TL_ERR_RUNTIME, "out of memory");
                u.examples[ui]++, u.tokens[ui] += ntok;
            }
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
    if (!s && user_of.n == 0)
        s = tl_fail(err, TL_ERR_INPUT, "%s: no %s (the file has no non-blank line)", in,
                    pref == 2 ? "prompts" : pref ? "pairs" : "examples");
    /* the rule of the dataset readers (tl_dataset.h, tl_pref.h), said in terms of the input */
    if (!s && !any_trainable)
        s = tl_fail(err, TL_ERR_INPUT, "%s: no %s has a token to train on (each is an empty prompt with a 1-token "
                    "response), expected at least one whose prompt and response make 2 or more tokens", in,
                    pref ? "pair" : "example");
    char tmp[TL_PATH_MAX + 64];
    if (!s && (size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid()) >= sizeof tmp)
        s = tl_fail(err, TL_ERR_INPUT, "%.200s...: output path longer than %d bytes", out, TL_PATH_MAX);
    if (!s) {
        /* claim a fresh name first (O_EXCL: never an existing file), so only what this call created is removed */
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: cannot create the output: %s", tmp, strerror(errno));
        } else {
            close(fd);
            s = write_h5(tmp, pref, &u, runs, 3, &user_of, (int64_t)tl_tokenizer_vocab_size(tk), any_ref == 1, err);
            if (!s) s = check_output(tmp, out, pref, err); /* never publish what train would refuse */
            if (!s && rename(tmp, out) != 0) {
                int e = errno; /* OUT being a directory or not writable is the user's to fix: bad usage */
                s = tl_fail(err, e == EISDIR || e == ENOTDIR || e == EACCES || e == EPERM ? TL_ERR_INPUT : TL_ERR_RUNTIME,
                            "%s: cannot rename the output into place: %s", out, strerror(e));
            }
            if (s) unlink(tmp);
        }
    }
    if (!s && report) {
        const char *unit = pref == 2 ? "prompts" : pref ? "pairs" : "examples";
        fprintf(report, "%s: %zu %s from %d user(s), kind %s\n", out, user_of.n, unit, u.n_users, kind);
        fprintf(report, "  %-28s %9s %10s\n", "user", unit, "tokens");
        char nb[TL_ESC_CAP]; /* user names from the JSONL: shown escaped (tl_text.h) */
        for (int i = 0; i < u.n_users; i++)
            fprintf(report, "  %-28.28s %9lld %10lld\n", tl_escape(nb, sizeof nb, u.names[i]), (long long)u.examples[i], (long long)u.tokens[i]);
    }
    for (int r = 0; r < 3; r++) free(runs[r].tok.p), free(runs[r].off.p);
    free(user_of.p);
    for (int i = 0; i < u.n_users; i++) free(u.names[i]), free(u.groups[i]);
    free(u.names), free(u.groups), free(u.examples), free(u.tokens), free(u.slot);
    tl_tokenizer_free(tk);
    return s;
}
