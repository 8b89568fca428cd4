/* tl_checkpoint: saving and restoring the complete training state (see tl_checkpoint.h for the layout).
 *
 * The state file is one safetensors file so that it can be inspected with ordinary tools; integers are I64
 * little-endian. Checkpoints are written under a temporary name and renamed into place, with COMPLETE written
 * last, so a reader that finds step-N with COMPLETE can trust every byte of it. */
#include "trainer/run/tl_checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "kernels/tl_text.h"
#include "data/tl_io.h"

#define STATE_FILE "state.safetensors"
#define CONFIG_FILE "config.yaml"
#define COMPLETE_FILE "COMPLETE"

/* ---- small encoders ---- */

static void put_i64le(unsigned char *dst, int64_t v) {
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++) dst[i] = (unsigned char)(u >> (8 * i));
}

static int64_t get_i64le(const unsigned char *src) {
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u |= (uint64_t)src[i] << (8 * i);
    return (int64_t)u;
}

static char *names_json(const tl_lora_pool *p) {
    cJSON *a = cJSON_CreateArray();
    if (!a) return NULL;
    for (int i = 0; i < p->n_slots; i++) {
        cJSON *s = cJSON_CreateString(p->names[i]);
        if (!s || !cJSON_AddItemToArray(a, s)) {
            cJSON_Delete(s);
            cJSON_Delete(a);
            return NULL;
        }
    }
    char *t = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return t;
}

static char *targets_json(uint32_t targets) {
    cJSON *a = cJSON_CreateArray();
    if (!a) return NULL;
    for (int t = 0; t < TL_N_TARGETS; t++) {
        if (!(targets & (1u << t))) continue;
        cJSON *s = cJSON_CreateString(tl_target_names[t]);
        if (!s || !cJSON_AddItemToArray(a, s)) {
            cJSON_Delete(s);
            cJSON_Delete(a);
            return NULL;
        }
    }
    char *text = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return text;
}

/* ---- saving ---- */

typedef struct {
    const tl_state_reader *rd;
    int k;
} stream_ctx;

static tl_status produce_state(void *ctx, uint64_t offset, void *dst, uint64_t n, tl_error *err) {
    const stream_ctx *c = ctx;
    return c->rd->read(c->rd->ctx, c->k, (size_t)(offset / sizeof(float)), dst, (size_t)(n / sizeof(float)), err);
}

typedef struct {
    const tl_lora_pool *p;
    tl_backend *be;
} backend_reader;

static tl_status read_backend(void *ctx, int k, size_t first, float *dst, size_t n, tl_error *err) {
    const backend_reader *b = ctx;
    const float *src = k == 0 ? b->p->params : k == 1 ? b->p->m : b->p->v;
    b->be->download(b->be, dst, src + first, n * sizeof(float));
    return b->be->status(b->be, err);
}

/* The state file. params, m and v come from rd when given, streamed chunk by chunk; else from p's backend: CPU
 * backend memory is host memory and is written as it is, other backends are streamed through downloads, so no
 * host copy of the whole state is ever made. */
static tl_status write_state(const char *path, const tl_lora_pool *p, tl_backend *be, const tl_state_reader *rd,
                             int64_t global_step, const tl_cursor *cursors, tl_error *err) {
    size_t ns = (size_t)p->n_slots, P = p->P;
    if (P != 0 && ns > SIZE_MAX / sizeof(float) / P)
        return tl_fail(err, TL_ERR_RUNTIME, "%s: %zu slots x %zu parameters overflow", path, ns, P);
    size_t nf = ns * P;
    int host = !rd && be && be->host_memory;
    backend_reader br = {p, be};
    tl_state_reader brd = {read_backend, &br};
    if (!rd && !host) rd = &brd;
    stream_ctx sc[3] = {{rd, 0}, {rd, 1}, {rd, 2}};
    const float *src[3] = {p->params, p->m, p->v};
    unsigned char *ints = malloc((ns * 3 + 1) * 8);
    char *names = names_json(p), *targets = targets_json(p->targets);
    tl_st_writer *wr = tl_st_writer_new();
    tl_status s = TL_OK;
    if (!ints || !names || !targets || !wr) {
        s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for %zu x %zu adapter state", path, ns, P);
        goto done;
    }
    unsigned char *steps = ints, *cur = ints + ns * 8, *gs = ints + ns * 24;
    for (size_t i = 0; i < ns; i++) {
        put_i64le(steps + 8 * i, p->steps[i]);
        put_i64le(cur + 16 * i, cursors ? cursors[i].epoch : 0);
        put_i64le(cur + 16 * i + 8, cursors ? cursors[i].pos : 0);
    }
    put_i64le(gs, global_step);
    int64_t sh2[2] = {(int64_t)ns, (int64_t)P}, shs[1] = {(int64_t)ns}, shc[2] = {(int64_t)ns, 2}, sh1[1] = {1};
    const char *tn[3] = {"params", "m", "v"};
    for (int k = 0; k < 3; k++) {
        s = host ? tl_st_writer_add_f32(wr, tn[k], sh2, 2, src[k], err)
                 : tl_st_writer_add_stream(wr, tn[k], "F32", sh2, 2, (uint64_t)nf * sizeof(float), produce_state,
                                           &sc[k], (uint64_t)tl_state_chunk_floats(P) * sizeof(float), err);
        if (s != TL_OK) goto done;
    }
    if ((s = tl_st_writer_add_bytes(wr, "steps", "I64", shs, 1, steps, ns * 8, err)) != TL_OK) goto done;
    if ((s = tl_st_writer_add_bytes(wr, "cursors", "I64", shc, 2, cur, ns * 16, err)) != TL_OK) goto done;
    if ((s = tl_st_writer_add_bytes(wr, "global_step", "I64", sh1, 1, gs, 8, err)) != TL_OK) goto done;
    char num[3][32];
    snprintf(num[0], sizeof num[0], "%d", p->rank);
    snprintf(num[1], sizeof num[1], "%zu", P);
    snprintf(num[2], sizeof num[2], "%d", p->n_layers);
    const char *meta[][2] = {{"format", TL_CHECKPOINT_FORMAT}, {"adapter_names", names}, {"rank", num[0]},
                             {"targets", targets},             {"P", num[1]},            {"n_layers", num[2]}};
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++)
        if ((s = tl_st_writer_meta(wr, meta[i][0], meta[i][1], err)) != TL_OK) goto done;
    s = tl_st_writer_write(wr, path, err);
done:
    tl_st_writer_free(wr);
    cJSON_free(names);
    cJSON_free(targets);
    free(ints);
    return s;
}

/* Parses "step-<digits>" (nothing else); -1 if name is not one. */
static int64_t step_of(const char *name) {
    if (strncmp(name, "step-", 5) != 0 || name[5] == '\0') return -1;
    int64_t v = 0;
    for (const char *c = name + 5; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        if (v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (*c - '0');
    }
    return v;
}

static int is_complete(const char *ckdir, const char *name) {
    char path[TL_PATH_MAX];
    int k = snprintf(path, sizeof path, "%s/%s/" COMPLETE_FILE, ckdir, name);
    return k > 0 && (size_t)k < sizeof path && tl_is_file(path);
}

typedef struct {
    int64_t step;
    char name[64];
} ck_entry;

static int cmp_desc(const void *a, const void *b) {
    int64_t x = ((const ck_entry *)a)->step, y = ((const ck_entry *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Lists the complete step-* checkpoints of ckdir, newest first. With remove_stale, leftover temporary
 * directories (".tmp-step-*", ".old-step-*") are removed as they are met. *n = 0 when ckdir does not exist. */
static tl_status list_checkpoints(const char *ckdir, ck_entry **out, int *n, int remove_stale, tl_error *err) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(ckdir);
    if (!d) {
        if (errno == ENOENT) return TL_OK;
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot list: %s", ckdir, strerror(errno));
    }
    ck_entry *v = NULL;
    int cnt = 0, cap = 0;
    tl_status s = TL_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno) s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot list: %s", ckdir, strerror(errno));
            break;
        }
        if (remove_stale && (strncmp(e->d_name, ".tmp-step-", 10) == 0 || strncmp(e->d_name, ".old-step-", 10) == 0)) {
            char path[TL_PATH_MAX];
            s = tl_path_join(path, sizeof path, ckdir, e->d_name, err);
            if (s == TL_OK) s = tl_remove_tree(path, err);
            if (s != TL_OK) break;
            continue;
        }
        int64_t st = step_of(e->d_name);
        size_t len = strlen(e->d_name);
        if (st < 0 || len >= sizeof v->name || !is_complete(ckdir, e->d_name)) continue;
        if (cnt == cap) {
            int nc = cap ? cap * 2 : 16;
            ck_entry *nv = realloc(v, (size_t)nc * sizeof *nv);
            if (!nv) {
                s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory listing checkpoints", ckdir);
                break;
            }
            v = nv;
            cap = nc;
        }
        v[cnt].step = st;
        memcpy(v[cnt].name, e->d_name, len + 1);
        cnt++;
    }
    closedir(d);
    if (s != TL_OK) {
        free(v);
        return s;
    }
    if (cnt > 1) qsort(v, (size_t)cnt, sizeof *v, cmp_desc);
    *out = v;
    *n = cnt;
    return TL_OK;
}

static tl_status prune(const char *ckdir, const char *just_written, int keep, tl_error *err) {
    ck_entry *v;
    int n;
    TL_TRY(list_checkpoints(ckdir, &v, &n, 1, err));
    int kept = 1; /* the one just written */
    tl_status s = TL_OK;
    for (int i = 0; i < n && s == TL_OK; i++) {
        if (strcmp(v[i].name, just_written) == 0) continue;
        if (keep <= 0 || kept < keep) {
            kept++;
            continue;
        }
        char path[TL_PATH_MAX];
        s = tl_path_join(path, sizeof path, ckdir, v[i].name, err);
        if (s == TL_OK) s = tl_remove_tree(path, err);
    }
    free(v);
    return s;
}

/* What goes into a checkpoint beside its config: the pool's state file, or an adapter store's manifest. */
typedef struct {
    const tl_lora_pool *p;
    tl_backend *be;
    const tl_state_reader *rd;
    const tl_cursor *cursors;
    tl_store *store; /* set: the store's manifest instead of the state file */
    int64_t round_start;
} state_src;

static tl_status save(const char *run_dir, const tl_config *cfg, const state_src *src, int64_t global_step, int keep,
                      tl_error *err);

tl_status tl_checkpoint_save(const char *run_dir, const tl_config *cfg, const tl_lora_pool *p, tl_backend *be,
                             int64_t global_step, const tl_cursor *cursors, int keep, tl_error *err) {
    const state_src src = {.p = p, .be = be, .cursors = cursors};
    return save(run_dir, cfg, &src, global_step, keep, err);
}

tl_status tl_checkpoint_save_from(const char *run_dir, const tl_config *cfg, const tl_lora_pool *p,
                                  const tl_state_reader *rd, int64_t global_step, const tl_cursor *cursors, int keep,
                                  tl_error *err) {
    const state_src src = {.p = p, .rd = rd, .cursors = cursors};
    return save(run_dir, cfg, &src, global_step, keep, err);
}

/* After a store checkpoint and the pruning of older checkpoints: the store's segments no retained manifest uses
 * are removed. */
static tl_status prune_store(const char *ckdir, tl_store *store, tl_error *err) {
    ck_entry *v;
    int n;
    TL_TRY(list_checkpoints(ckdir, &v, &n, 0, err));
    char **paths = calloc((size_t)n + 1, sizeof *paths);
    tl_status s = paths ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    int m = 0;
    for (int i = 0; i < n && !s; i++) {
        char path[TL_PATH_MAX + 80];
        snprintf(path, sizeof path, "%s/%s/%s", ckdir, v[i].name, TL_STORE_MANIFEST);
        if (!tl_is_file(path)) continue; /* a checkpoint of a run without the store */
        paths[m] = strdup(path);
        if (!paths[m++]) s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    }
    if (!s) s = tl_store_prune(store, paths, m, err);
    for (int i = 0; i < m; i++) free(paths[i]);
    free(paths);
    free(v);
    return s;
}

tl_status tl_checkpoint_save_store(const char *run_dir, const tl_config *cfg, tl_store *store, int64_t global_step,
                                   int64_t round_start, int keep, tl_error *err) {
    const state_src src = {.store = store, .round_start = round_start};
    TL_TRY(save(run_dir, cfg, &src, global_step, keep, err));
    char ckdir[TL_PATH_MAX];
    TL_TRY(tl_path_join(ckdir, sizeof ckdir, run_dir, "checkpoints", err));
    if (prune_store(ckdir, store, err) != TL_OK) return tl_wrap(err, "removing unused store segments");
    return TL_OK;
}

int tl_checkpoint_has_store(const char *ckpt_dir) {
    char path[TL_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", ckpt_dir, TL_STORE_MANIFEST);
    return tl_is_file(path);
}

/* The files of a checkpoint, written into its temporary directory tmp: config, state, then the COMPLETE marker. */
static tl_status write_files(const char *tmp, const tl_config *cfg, const state_src *src, int64_t global_step,
                             tl_error *err) {
    char path[TL_PATH_MAX];
    TL_TRY(tl_path_join(path, sizeof path, tmp, CONFIG_FILE, err));
    TL_TRY(tl_config_write_file(cfg, path, err));
    if (src->store) {
        TL_TRY(tl_path_join(path, sizeof path, tmp, TL_STORE_MANIFEST, err));
        TL_TRY(tl_store_commit(src->store, global_step, src->round_start, path, err));
    } else {
        TL_TRY(tl_path_join(path, sizeof path, tmp, STATE_FILE, err));
        TL_TRY(write_state(path, src->p, src->be, src->rd, global_step, src->cursors, err));
    }
    TL_TRY(tl_path_join(path, sizeof path, tmp, COMPLETE_FILE, err));
    char text[96];
    int k = snprintf(text, sizeof text, "%s step %lld\n", TL_CHECKPOINT_FORMAT, (long long)global_step);
    TL_TRY(tl_write_file_atomic(path, text, (size_t)k, err));
    return tl_fsync_dir(tmp, err);
}

static tl_status save(const char *run_dir, const tl_config *cfg, const state_src *src, int64_t global_step, int keep,
                      tl_error *err) {
    if (global_step < 0) return tl_fail(err, TL_ERR_RUNTIME, "checkpoint: negative step %lld", (long long)global_step);
    const tl_lora_pool *p = src->p;
    if (!src->store && (p->n_slots <= 0 || (!src->rd && (!p->params || !p->m || !p->v)) || !p->steps || !p->names))
        return tl_fail(err, TL_ERR_RUNTIME, "checkpoint: adapter pool without state (%d slots)", p->n_slots);
    char ckdir[TL_PATH_MAX], name[64], tmpname[96], fin[TL_PATH_MAX], tmp[TL_PATH_MAX];
    TL_TRY(tl_path_join(ckdir, sizeof ckdir, run_dir, "checkpoints", err));
    snprintf(name, sizeof name, "step-%08lld", (long long)global_step);
    snprintf(tmpname, sizeof tmpname, ".tmp-step-%lld-%ld", (long long)global_step, (long)getpid());
    TL_TRY(tl_path_join(fin, sizeof fin, ckdir, name, err));
    TL_TRY(tl_path_join(tmp, sizeof tmp, ckdir, tmpname, err));
    TL_TRY(tl_mkdir_p(ckdir, err));
    TL_TRY(tl_remove_tree(tmp, err));
    if (mkdir(tmp, 0755) != 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", tmp, strerror(errno));

    tl_status s = write_files(tmp, cfg, src, global_step, err);
    if (s == TL_OK) s = tl_replace_dir(tmp, fin, err);
    if (s != TL_OK) {
        tl_error ignored;
        (void)tl_remove_tree(tmp, &ignored); /* the first error is the one to report */
        return tl_wrap(err, "saving checkpoint %s", fin);
    }
    if (prune(ckdir, name, keep, err) != TL_OK)
        return tl_wrap(err, "checkpoint %s saved, but removing older ones failed", fin);
    return TL_OK;
}

tl_status tl_checkpoint_latest(const char *run_dir, char *path, size_t cap, int *found, tl_error *err) {
    *found = 0;
    char ckdir[TL_PATH_MAX];
    TL_TRY(tl_path_join(ckdir, sizeof ckdir, run_dir, "checkpoints", err));
    ck_entry *v;
    int n;
    TL_TRY(list_checkpoints(ckdir, &v, &n, 0, err));
    tl_status s = TL_OK;
    if (n > 0) {
        s = tl_path_join(path, cap, ckdir, v[0].name, err);
        if (s == TL_OK) *found = 1;
    }
    free(v);
    return s;
}

/* ---- loading ---- */

/* Opens the state file of a complete checkpoint and checks its format tag. */
static tl_status open_state(const char *ckpt_dir, tl_st_file **f, tl_error *err) {
    char path[TL_PATH_MAX];
    TL_TRY(tl_path_join(path, sizeof path, ckpt_dir, COMPLETE_FILE, err));
    if (!tl_is_file(path))
        return tl_fail(err, TL_ERR_INPUT, "%s: not a complete checkpoint (no %s file)", ckpt_dir, COMPLETE_FILE);
    TL_TRY(tl_path_join(path, sizeof path, ckpt_dir, STATE_FILE, err));
    TL_TRY(tl_st_open(path, f, err));
    const char *fmt = tl_st_metadata(*f, "format");
    if (!fmt || strcmp(fmt, TL_CHECKPOINT_FORMAT) != 0) {
        /* fmt lives in the file's metadata: the message is built before the file is closed */
        tl_status s = tl_fail(err, TL_ERR_INPUT, "%s: metadata format is '%.64s', expected '%s'", path,
                              fmt ? fmt : "(none)", TL_CHECKPOINT_FORMAT);
        tl_st_close(*f);
        *f = NULL;
        return s;
    }
    return TL_OK;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static tl_status parse_names(tl_st_file *f, char ***names, int *n, tl_error *err) {
    *names = NULL;
    *n = 0;
    const char *path = tl_st_path(f);
    const char *text = tl_st_metadata(f, "adapter_names");
    cJSON *a = text ? cJSON_Parse(text) : NULL;
    if (!cJSON_IsArray(a)) {
        cJSON_Delete(a);
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata adapter_names: expected a JSON array of strings", path);
    }
    int cnt = cJSON_GetArraySize(a);
    char **v = calloc((size_t)cnt + 1, sizeof *v);
    if (!v) {
        cJSON_Delete(a);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    int i = 0;
    tl_status s = TL_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsString(e)) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: metadata adapter_names[%d]: expected a string", path, i);
            break;
        }
        v[i] = strdup(e->valuestring);
        if (!v[i]) {
            s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
            break;
        }
        i++;
    }
    cJSON_Delete(a);
    if (s == TL_OK && cnt == 0)
        s = tl_fail(err, TL_ERR_INPUT, "%s: metadata adapter_names: expected a non-empty JSON array of strings", path);
    /* names are unique in a run (each is one adapter): a repeated one is a damaged file */
    char **sorted = s == TL_OK ? malloc((size_t)cnt * sizeof *sorted) : NULL;
    if (s == TL_OK && !sorted) s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    if (s == TL_OK) {
        memcpy(sorted, v, (size_t)cnt * sizeof *sorted);
        qsort(sorted, (size_t)cnt, sizeof *sorted, cmp_name);
        for (int k = 1; k < cnt && s == TL_OK; k++)
            if (strcmp(sorted[k - 1], sorted[k]) == 0)
                s = tl_fail(err, TL_ERR_INPUT, "%s: metadata adapter_names: '%.200s' appears twice", path, sorted[k]);
    }
    free(sorted);
    if (s != TL_OK) {
        tl_checkpoint_free_names(v, i);
        return s;
    }
    *names = v;
    *n = cnt;
    return TL_OK;
}

void tl_checkpoint_free_names(char **names, int n) {
    if (!names) return;
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* A tensor's header entry must have this dtype and shape. */
static tl_status expect_tensor(tl_st_file *f, const char *name, tl_dtype dt, const char *dtname,
                               const int64_t *shape, int ndim, tl_error *err) {
    const tl_st_tensor *t = tl_st_find(f, name);
    if (!t) return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' missing", tl_st_path(f), name);
    int same = t->dtype == dt && t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[96];
        int k = snprintf(want, sizeof want, "%s [", dtname);
        for (int i = 0; i < ndim && k > 0 && (size_t)k < sizeof want; i++)
            k += snprintf(want + k, sizeof want - (size_t)k, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (k > 0 && (size_t)k < sizeof want) snprintf(want + k, sizeof want - (size_t)k, "]");
        return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' is %s with %d dims, expected %s (as the run's adapters)",
                       tl_st_path(f), name, t->dtype_name, t->ndim, want);
    }
    return TL_OK;
}

/* Every integer of the state (steps, cursors, global_step) is in [0, TL_CHECKPOINT_INT_MAX]: counts that a run
 * can reach, exact as a double (metrics.jsonl and index.json carry them as JSON numbers). */
static tl_status read_i64(tl_st_file *f, const char *name, int64_t *dst, size_t n, tl_error *err) {
    unsigned char *buf = malloc(n * 8 + 1);
    if (!buf) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", tl_st_path(f));
    tl_status s = tl_st_read_bytes(f, name, buf, (uint64_t)n * 8, err);
    for (size_t i = 0; s == TL_OK && i < n; i++) {
        dst[i] = get_i64le(buf + 8 * i);
        if (dst[i] < 0 || dst[i] > TL_CHECKPOINT_INT_MAX)
            s = tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s'[%zu] = %lld, expected an integer in [0, 2^53]",
                        tl_st_path(f), name, i, (long long)dst[i]);
    }
    free(buf);
    return s;
}

/* n floats of tensor `name` (rows [row0, ...) of width P) are all finite: a NaN or Inf would train on silently. */
static tl_status check_finite(tl_st_file *f, const char *name, const float *w, size_t n, size_t row0, size_t P,
                              tl_error *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return tl_fail(err, TL_ERR_INPUT, "%s: tensor '%s' [adapter %zu, element %zu] is %g, expected a finite "
                           "number", tl_st_path(f), name, row0 + i / P, i % P, (double)w[i]);
    return TL_OK;
}

static tl_status check_meta_int(tl_st_file *f, const char *key, long long want, tl_error *err) {
    const char *v = tl_st_metadata(f, key);
    char what[TL_PATH_MAX + 64];
    snprintf(what, sizeof what, "%s: metadata %s", tl_st_path(f), key);
    int64_t got = 0;
    if (!v) return tl_fail(err, TL_ERR_INPUT, "%s: expected an integer", what);
    TL_TRY(tl_parse_i64(what, v, 0, INT64_MAX, &got, err));
    if (got != want)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s is %lld in the checkpoint, %lld in the run", tl_st_path(f), key,
                       (long long)got, want);
    return TL_OK;
}

/* Checks everything that must agree between the checkpoint and the pool, before any state is touched. */
/* run_names[n_run]: the run's adapters, which must be the checkpoint's, in its order; p gives the layout. */
static tl_status check_compatible(tl_st_file *f, const tl_lora_pool *p, char *const *run_names, int n_run,
                                  tl_error *err) {
    const char *path = tl_st_path(f);
    char **names;
    int n;
    TL_TRY(parse_names(f, &names, &n, err));
    tl_status s = TL_OK;
    if (n != n_run) s = tl_fail(err, TL_ERR_INPUT, "%s: %d adapters in the checkpoint, %d in the run", path, n, n_run);
    for (int i = 0; s == TL_OK && i < n; i++)
        if (strcmp(names[i], run_names[i]) != 0)
            s = tl_fail(err, TL_ERR_INPUT, "%s: adapter %d is '%s' in the checkpoint, '%s' in the run", path, i,
                        names[i], run_names[i]);
    tl_checkpoint_free_names(names, n);
    TL_TRY(s);
    TL_TRY(check_meta_int(f, "rank", p->rank, err));
    TL_TRY(check_meta_int(f, "P", (long long)p->P, err));
    TL_TRY(check_meta_int(f, "n_layers", p->n_layers, err));

    const char *tt = tl_st_metadata(f, "targets");
    cJSON *a = tt ? cJSON_Parse(tt) : NULL;
    uint32_t mask = 0;
    int ok = cJSON_IsArray(a);
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        int t = -1;
        for (int j = 0; cJSON_IsString(e) && j < TL_N_TARGETS; j++)
            if (strcmp(e->valuestring, tl_target_names[j]) == 0) t = j;
        if (t < 0) ok = 0;
        else mask |= 1u << t;
    }
    cJSON_Delete(a);
    if (!ok) return tl_fail(err, TL_ERR_INPUT, "%s: metadata targets: expected a JSON array of module names", path);
    if (mask != p->targets) {
        char *want = targets_json(p->targets);
        s = tl_fail(err, TL_ERR_INPUT, "%s: targets are %s in the checkpoint, %s in the run", path, tt,
                    want ? want : "?");
        cJSON_free(want);
        return s;
    }

    int64_t ns = n_run, sh2[2] = {ns, (int64_t)p->P}, shs[1] = {ns}, shc[2] = {ns, 2}, sh1[1] = {1};
    TL_TRY(expect_tensor(f, "params", TL_DT_F32, "F32", sh2, 2, err));
    TL_TRY(expect_tensor(f, "m", TL_DT_F32, "F32", sh2, 2, err));
    TL_TRY(expect_tensor(f, "v", TL_DT_F32, "F32", sh2, 2, err));
    TL_TRY(expect_tensor(f, "steps", TL_DT_I64, "I64", shs, 1, err));
    TL_TRY(expect_tensor(f, "cursors", TL_DT_I64, "I64", shc, 2, err));
    TL_TRY(expect_tensor(f, "global_step", TL_DT_I64, "I64", sh1, 1, err));
    return TL_OK;
}

tl_status tl_checkpoint_check(const char *ckpt_dir, const tl_lora_pool *layout, tl_error *err) {
    tl_st_file *f = NULL;
    TL_TRY(open_state(ckpt_dir, &f, err));
    size_t ns = (size_t)layout->n_slots;
    int64_t *ints = malloc((ns * 3 + 1) * sizeof *ints);
    tl_status s = ints ? check_compatible(f, layout, layout->names, layout->n_slots, err)
                       : tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", ckpt_dir);
    if (!s) s = read_i64(f, "steps", ints, ns, err);
    if (!s) s = read_i64(f, "cursors", ints + ns, ns * 2, err);
    if (!s) s = read_i64(f, "global_step", ints + ns * 3, 1, err);
    free(ints);
    tl_st_close(f);
    return s;
}

tl_status tl_checkpoint_load(const char *ckpt_dir, tl_lora_pool *p, tl_backend *be, int64_t *global_step,
                             tl_cursor *cursors, tl_error *err) {
    if (p->n_slots <= 0 || !p->params || !p->m || !p->v || !p->steps || !p->names)
        return tl_fail(err, TL_ERR_RUNTIME, "checkpoint load: adapter pool without state (%d slots)", p->n_slots);
    tl_st_file *f = NULL;
    TL_TRY(open_state(ckpt_dir, &f, err));
    size_t ns = (size_t)p->n_slots, nf = ns * p->P;
    int64_t *ints = NULL;
    float *w = NULL;
    tl_status s = check_compatible(f, p, p->names, p->n_slots, err);
    if (s != TL_OK) goto done;
    ints = malloc((ns * 3 + 1) * sizeof *ints);
    w = malloc(nf * sizeof *w + 1);
    if (!ints || !w) {
        s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for the adapter state", ckpt_dir);
        goto done;
    }
    /* The small integer state first: it is validated before the large tensors touch the backend. */
    if ((s = read_i64(f, "steps", ints, ns, err)) != TL_OK) goto done;
    if ((s = read_i64(f, "cursors", ints + ns, ns * 2, err)) != TL_OK) goto done;
    if ((s = read_i64(f, "global_step", ints + ns * 3, 1, err)) != TL_OK) goto done;
    const char *tn[3] = {"params", "m", "v"};
    float *dst[3] = {p->params, p->m, p->v};
    int64_t sh2[2] = {(int64_t)ns, (int64_t)p->P};
    for (int k = 0; k < 3; k++) {
        if ((s = tl_st_read_f32(f, tn[k], sh2, 2, w, err)) != TL_OK) goto done;
        if ((s = check_finite(f, tn[k], w, nf, 0, p->P, err)) != TL_OK) goto done;
        be->upload(be, dst[k], w, nf * sizeof *w);
    }
    if ((s = be->status(be, err)) != TL_OK) goto done;
    for (size_t i = 0; i < ns; i++) {
        p->steps[i] = ints[i];
        if (cursors) {
            cursors[i].epoch = ints[ns + 2 * i];
            cursors[i].pos = ints[ns + 2 * i + 1];
        }
    }
    if (global_step) *global_step = ints[ns * 3];
done:
    free(ints);
    free(w);
    tl_st_close(f);
    return s;
}

tl_status tl_checkpoint_load_rows(const char *ckpt_dir, tl_lora_pool *p, tl_backend *be, char *const *run_names,
                                  int n_run, const int32_t *rows, int64_t *global_step, tl_cursor *cursors,
                                  tl_error *err) {
    if (p->n_slots <= 0 || !p->params || !p->m || !p->v || !p->steps)
        return tl_fail(err, TL_ERR_RUNTIME, "checkpoint load: adapter pool without state (%d slots)", p->n_slots);
    for (int a = 0; a < p->n_slots; a++)
        if (rows[a] < 0 || rows[a] >= n_run || (p->names && strcmp(p->names[a], run_names[rows[a]]) != 0))
            return tl_fail(err, TL_ERR_RUNTIME, "checkpoint load: slot %d is not adapter %d of the run", a, rows[a]);
    tl_st_file *f = NULL;
    TL_TRY(open_state(ckpt_dir, &f, err));
    size_t nr = (size_t)n_run, P = p->P;
    int64_t *ints = NULL;
    float *w = NULL;
    tl_status s = check_compatible(f, p, run_names, n_run, err);
    if (s != TL_OK) goto done;
    ints = malloc((nr * 3 + 1) * sizeof *ints);
    w = malloc(P * sizeof *w + 1);
    if (!ints || !w) {
        s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory for the adapter state", ckpt_dir);
        goto done;
    }
    if ((s = read_i64(f, "steps", ints, nr, err)) != TL_OK) goto done;
    if ((s = read_i64(f, "cursors", ints + nr, nr * 2, err)) != TL_OK) goto done;
    if ((s = read_i64(f, "global_step", ints + nr * 3, 1, err)) != TL_OK) goto done;
    /* only this pool's rows of the large tensors: F32 [n_run, P], checked above */
    const char *tn[3] = {"params", "m", "v"};
    float *dst[3] = {p->params, p->m, p->v};
    for (int k = 0; k < 3; k++)
        for (int a = 0; a < p->n_slots; a++) {
            s = tl_st_read_range(f, tn[k], (uint64_t)rows[a] * P * sizeof(float), w, P * sizeof(float), err);
            if (s != TL_OK) goto done;
            if ((s = check_finite(f, tn[k], w, P, (size_t)rows[a], P, err)) != TL_OK) goto done;
            be->upload(be, dst[k] + (size_t)a * P, w, P * sizeof(float));
        }
    if ((s = be->status(be, err)) != TL_OK) goto done;
    for (int a = 0; a < p->n_slots; a++) {
        size_t r = (size_t)rows[a];
        p->steps[a] = ints[r];
        if (cursors) cursors[a].epoch = ints[nr + 2 * r], cursors[a].pos = ints[nr + 2 * r + 1];
    }
    if (global_step) *global_step = ints[nr * 3];
done:
    free(ints);
    free(w);
    tl_st_close(f);
    return s;
}

tl_status tl_checkpoint_read_config(const char *ckpt_dir, tl_config *cfg, tl_error *err) {
    char path[TL_PATH_MAX];
    TL_TRY(tl_path_join(path, sizeof path, ckpt_dir, COMPLETE_FILE, err));
    if (!tl_is_file(path))
        return tl_fail(err, TL_ERR_INPUT, "%s: not a complete checkpoint (no %s file)", ckpt_dir, COMPLETE_FILE);
    TL_TRY(tl_path_join(path, sizeof path, ckpt_dir, CONFIG_FILE, err));
    return tl_config_load(path, NULL, 0, cfg, err);
}

tl_status tl_checkpoint_read_names(const char *ckpt_dir, char ***names, int *n, tl_error *err) {
    tl_st_file *f = NULL;
    TL_TRY(open_state(ckpt_dir, &f, err));
    tl_status s = parse_names(f, names, n, err);
    tl_st_close(f);
    return s;
}

tl_status tl_checkpoint_read_step(const char *ckpt_dir, int64_t *global_step, tl_error *err) {
    tl_st_file *f = NULL;
    TL_TRY(open_state(ckpt_dir, &f, err));
    int64_t sh1[1] = {1};
    tl_status s = expect_tensor(f, "global_step", TL_DT_I64, "I64", sh1, 1, err);
    if (s == TL_OK) s = read_i64(f, "global_step", global_step, 1, err);
    tl_st_close(f);
    return s;
}

/* ---- setting an earlier run aside ---- */

static const char *const RUN_OUTPUTS[] = {"checkpoints", "store", "adapters", "metrics.jsonl", "eval.json",
                                          "report.html", "config.yaml"};
#define N_RUN_OUTPUTS ((int)(sizeof RUN_OUTPUTS / sizeof RUN_OUTPUTS[0]))

/* Creates <run_dir>/previous/.tmp-<stamp>-<pid> and names the final <run_dir>/previous/<stamp>[-k] that is free. */
static tl_status aside_dirs(const char *run_dir, char *tmp, char *fin, size_t cap, tl_error *err) {
    char prev[TL_PATH_MAX], stamp[32], name[64];
    TL_TRY(tl_path_join(prev, sizeof prev, run_dir, "previous", err));
    TL_TRY(tl_mkdir_p(prev, err));
    time_t now = time(NULL);
    struct tm tm;
    if (!gmtime_r(&now, &tm) || !strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm))
        snprintf(stamp, sizeof stamp, "%lld", (long long)now);
    for (int k = 1;; k++) {
        if (k == 1) snprintf(name, sizeof name, "%s", stamp);
        else snprintf(name, sizeof name, "%s-%d", stamp, k);
        TL_TRY(tl_path_join(fin, cap, prev, name, err));
        if (!tl_path_exists(fin)) break;
        if (k == 1000) return tl_fail(err, TL_ERR_RUNTIME, "%s: 1000 earlier runs set aside this second", prev);
    }
    snprintf(name, sizeof name, ".tmp-%s-%ld", stamp, (long)getpid());
    TL_TRY(tl_path_join(tmp, cap, prev, name, err));
    TL_TRY(tl_remove_tree(tmp, err)); /* a leftover of a crashed process with our pid: ours */
    if (mkdir(tmp, 0755) != 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", tmp, strerror(errno));
    return TL_OK;
}

/* Copies the regular file from to the new file to (which must not exist), flushed to disk. */
static tl_status copy_file(const char *from, const char *to, tl_error *err) {
    FILE *in = fopen(from, "rb");
    if (!in) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(to, "wbx");
    if (!out) {
        int e = errno;
        fclose(in);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", to, strerror(e));
    }
    char buf[1 << 16];
    size_t n;
    int bad = 0;
    while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0) bad = fwrite(buf, 1, n, out) != n;
    bad |= ferror(in);
    fclose(in);
    bad |= fflush(out) != 0 || fsync(fileno(out)) != 0;
    bad |= fclose(out) != 0;
    return bad ? tl_fail(err, TL_ERR_RUNTIME, "cannot copy %s to %s", from, to) : TL_OK;
}

tl_status tl_run_set_aside(const char *run_dir, int64_t after, char *dest, size_t cap, int *moved, tl_error *err) {
    *moved = 0;
    char from[TL_PATH_MAX], to[TL_PATH_MAX], tmp[TL_PATH_MAX], ckdir[TL_PATH_MAX];
    ck_entry *v = NULL;
    int n = 0, any = 0;
    TL_TRY(tl_path_join(ckdir, sizeof ckdir, run_dir, "checkpoints", err));
    if (after >= 0) {
        TL_TRY(list_checkpoints(ckdir, &v, &n, 0, err));
        for (int i = 0; i < n; i++) any |= v[i].step > after;
    } else {
        for (int i = 0; i < 5; i++) { /* outputs of a run; config.yaml and report.html alone are not one */
            TL_TRY(tl_path_join(from, sizeof from, run_dir, RUN_OUTPUTS[i], err));
            any |= tl_path_exists(from);
        }
    }
    if (!any) {
        free(v);
        return TL_OK;
    }
    tl_status s = aside_dirs(run_dir, tmp, dest, cap, err);
    if (!s && after >= 0) { /* only the checkpoints past `after` */
        s = tl_path_join(to, sizeof to, tmp, "checkpoints", err);
        if (!s && mkdir(to, 0755) != 0) s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", to, strerror(errno));
        for (int i = 0; !s && i < n; i++) {
            if (v[i].step <= after) continue;
            char t2[TL_PATH_MAX];
            s = tl_path_join(from, sizeof from, ckdir, v[i].name, err);
            if (!s) s = tl_path_join(t2, sizeof t2, to, v[i].name, err);
            if (!s && rename(from, t2) != 0)
                s = tl_fail(err, TL_ERR_RUNTIME, "cannot move %s to %s: %s", from, t2, strerror(errno));
        }
    }
    if (!s && after >= 0) { /* the resumed run cuts metrics.jsonl back to step `after`: keep the whole of it */
        s = tl_path_join(from, sizeof from, run_dir, "metrics.jsonl", err);
        if (!s) s = tl_path_join(to, sizeof to, tmp, "metrics.jsonl", err);
        if (!s && tl_is_file(from)) s = copy_file(from, to, err);
    }
    for (int i = 0; !s && after < 0 && i < N_RUN_OUTPUTS; i++) {
        s = tl_path_join(from, sizeof from, run_dir, RUN_OUTPUTS[i], err);
        if (!s) s = tl_path_join(to, sizeof to, tmp, RUN_OUTPUTS[i], err);
        if (!s && tl_path_exists(from) && rename(from, to) != 0)
            s = tl_fail(err, TL_ERR_RUNTIME, "cannot move %s to %s: %s", from, to, strerror(errno));
    }
    free(v);
    /* on failure what was moved stays in tmp, nothing is lost; the message names the place */
    if (!s) s = tl_fsync_dir(tmp, err);
    if (!s) s = tl_rename_into_place(tmp, dest, err);
    if (!s) s = tl_fsync_dir(run_dir, err);
    if (s) return tl_wrap(err, "setting the earlier run of %s aside (into %s)", run_dir, tmp);
    *moved = 1;
    return TL_OK;
}
