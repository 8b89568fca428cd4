/* store: the adapter store (see tl_store.h). */
#include "trainer/run/tl_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "data/tl_io.h"

#define REC_MAGIC "TLREC001"
#define MAN_MAGIC "TLMAN001"
#define REC_HEADER 48
#define MAN_HEADER 56  /* magic, run_id, P, global_step, next_segment, n_entries, round_start */
#define ENTRY_FIXED 64 /* after the name: segment, 0, offset, steps, epoch, pos, n_examples, round, steps0 */
#define NAME_MAX_BYTES 4096
#define SEG_NONE UINT32_MAX
#define NO_PENDING UINT64_MAX

typedef struct {
    char *name;
    tl_store_meta meta;
    uint32_t seg;  /* SEG_NONE: no record */
    uint64_t off;
} entry;

struct tl_store {
    char dir[TL_PATH_MAX];
    tl_store_layout L;
    uint64_t run_id;
    entry *e;
    int64_t n, cap;
    int64_t *table; /* open addressing over e, -1 empty; size a power of two >= 2 n */
    int64_t tsize;
    uint32_t next_seg; /* the first segment of the current interval: this process writes to next_seg + rank */
    int rank, world;   /* user_shard: this process's place; its writes go to a segment of its own */
    int fd;            /* that segment, open for appending; -1 when none is open */
    uint64_t fd_size;  /* its size with every record reserved in it (records are written at their offsets) */
    uint64_t pending_from; /* write-behind: the offset of the first record reserved and not yet landed, or
                            * NO_PENDING; records at or past it may still be in flight (tl_store_reserve) */
    uint64_t written;
    uint64_t n_records, n_commits; /* for the fault injection */
    unsigned char *buf; /* one record */
};

/* CRC-32 (IEEE 802.3) by zlib: its braided implementation runs at several GB/s, where a byte-wise table loop
 * took most of the store's time (a record is 12 bytes per LoRA parameter). */
static uint32_t crc32_update(uint32_t crc, const void *data, size_t n) {
    const unsigned char *p = data;
    uLong c = crc;
    while (n) { /* zlib takes uInt lengths */
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, k);
        p += k, n -= k;
    }
    return (uint32_t)c;
}

static uint64_t fnv64(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) h = (h ^ *p) * 1099511628211ULL;
    return h;
}

size_t tl_store_record_bytes(size_t P) { return REC_HEADER + 3 * P * sizeof(float); }

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

/* ---- the index ---- */

static int64_t find(const tl_store *st, const char *name) {
    if (!st->tsize) return -1;
    uint64_t mask = (uint64_t)st->tsize - 1;
    for (uint64_t h = fnv64(name) & mask;; h = (h + 1) & mask) {
        int64_t i = st->table[h];
        if (i < 0) return -1;
        if (!strcmp(st->e[i].name, name)) return i;
    }
}

static int table_insert(tl_store *st, int64_t i) {
    uint64_t mask = (uint64_t)st->tsize - 1;
    uint64_t h = fnv64(st->e[i].name) & mask;
    while (st->table[h] >= 0) h = (h + 1) & mask;
    st->table[h] = i;
    return 1;
}

static int grow_table(tl_store *st) {
    int64_t ns = st->tsize ? st->tsize * 2 : 1024;
    int64_t *t = malloc((size_t)ns * sizeof *t);
    if (!t) return 0;
    free(st->table);
    st->table = t, st->tsize = ns;
    for (int64_t k = 0; k < ns; k++) t[k] = -1;
    for (int64_t i = 0; i < st->n; i++) table_insert(st, i);
    return 1;
}

static void clear_index(tl_store *st) {
    for (int64_t i = 0; i < st->n; i++) free(st->e[i].name);
    st->n = 0;
    if (st->table)
        for (int64_t k = 0; k < st->tsize; k++) st->table[k] = -1;
}

/* Appends an entry (name copied); -1 when out of memory. The caller checked that name is absent. */
static int64_t push(tl_store *st, const char *name) {
    if (st->n == st->cap) {
        int64_t nc = st->cap ? st->cap * 2 : 256;
        entry *ne = realloc(st->e, (size_t)nc * sizeof *ne);
        if (!ne) return -1;
        st->e = ne, st->cap = nc;
    }
    if (2 * (st->n + 1) > st->tsize && !grow_table(st)) return -1;
    entry *x = &st->e[st->n];
    memset(x, 0, sizeof *x);
    x->name = strdup(name);
    if (!x->name) return -1;
    x->seg = SEG_NONE;
    table_insert(st, st->n);
    return st->n++;
}

int64_t tl_store_count(const tl_store *st) { return st->n; }
const char *tl_store_name(const tl_store *st, int64_t i) { return st->e[i].name; }
const tl_store_meta *tl_store_meta_at(const tl_store *st, int64_t i) { return &st->e[i].meta; }
int64_t tl_store_find(const tl_store *st, const char *name) { return find(st, name); }
uint64_t tl_store_bytes_written(const tl_store *st) { return st->written; }

tl_status tl_store_add(tl_store *st, const char *name, int64_t *index, tl_error *err) {
    int64_t i = find(st, name);
    if (i < 0) {
        if (strlen(name) > NAME_MAX_BYTES)
            return tl_fail(err, TL_ERR_INPUT, "store: adapter name of %zu bytes (at most %d)", strlen(name),
                           NAME_MAX_BYTES);
        i = push(st, name);
        if (i < 0) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory for the index");
    }
    if (index) *index = i;
    return TL_OK;
}

void tl_store_set_cursor(tl_store *st, int64_t i, int64_t epoch, int64_t pos) {
    st->e[i].meta.epoch = epoch, st->e[i].meta.pos = pos;
}

void tl_store_set_round(tl_store *st, int64_t i, int64_t round, int64_t n_examples) {
    tl_store_meta *m = &st->e[i].meta;
    m->round = round, m->n_examples = n_examples, m->steps0 = m->steps;
}

/* ---- store.json ---- */

static tl_status seg_path(const tl_store *st, uint32_t seg, char *out, size_t cap, tl_error *err) {
    char name[32];
    snprintf(name, sizeof name, "seg-%08" PRIu32 ".bin", seg);
    return tl_path_join(out, cap, st->dir, name, err);
}

static tl_status read_layout_json(const char *path, tl_store_layout *L, uint64_t *run_id, tl_error *err) {
    char *text = NULL;
    size_t n = 0;
    TL_TRY(tl_read_file(path, 1 << 20, &text, &n, err));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tl_fail(err, TL_ERR_INPUT, "%s: not a JSON object", path);
    }
    tl_status s = TL_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, TL_STORE_FORMAT) != 0)
        s = tl_fail(err, TL_ERR_INPUT, "%s: format: expected \"%s\"", path, TL_STORE_FORMAT);
    const char *keys[] = {"P", "rank", "n_layers", "targets", "head_dim"};
    int64_t v[5] = {0};
    for (int k = 0; k < 5 && !s; k++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (!cJSON_IsNumber(x) || !tl_json_int(x->valuedouble, 0, (int64_t)1 << 40, &v[k]))
            s = tl_fail(err, TL_ERR_INPUT, "%s: %s: expected a non-negative integer", path, keys[k]);
    }
    const cJSON *rid = cJSON_GetObjectItemCaseSensitive(root, "run_id");
    char *end = NULL;
    if (!s && (!cJSON_IsString(rid) || strlen(rid->valuestring) != 16))
        s = tl_fail(err, TL_ERR_INPUT, "%s: run_id: expected 16 hexadecimal digits", path);
    if (!s) {
        errno = 0;
        unsigned long long r = strtoull(rid->valuestring, &end, 16);
        if (errno || *end) s = tl_fail(err, TL_ERR_INPUT, "%s: run_id: expected 16 hexadecimal digits", path);
        *run_id = r;
    }
    if (!s) L->P = (size_t)v[0], L->rank = (int)v[1], L->n_layers = (int)v[2], L->targets = (uint32_t)v[3],
            L->head_dim = (int)v[4];
    cJSON_Delete(root);
    return s;
}

int tl_store_exists(const char *run_dir) {
    char p[TL_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/store/store.json", run_dir);
    return tl_is_file(p);
}

tl_status tl_store_read_layout(const char *run_dir, tl_store_layout *L, tl_error *err) {
    char p[TL_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/store/store.json", run_dir);
    uint64_t rid;
    return read_layout_json(p, L, &rid, err);
}

static uint64_t fresh_run_id(void) {
    uint64_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &r, sizeof r) != (ssize_t)sizeof r) r = 0;
        close(fd);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r ^= ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    return r ? r : 1;
}

tl_status tl_store_open(const char *run_dir, const tl_store_layout *L, tl_store **out, tl_error *err) {
    return tl_store_open_shard(run_dir, L, 0, 1, out, err);
}

tl_status tl_store_open_shard(const char *run_dir, const tl_store_layout *L, int rank, int world, tl_store **out,
                              tl_error *err) {
    *out = NULL;
    if (L->P == 0) return tl_fail(err, TL_ERR_RUNTIME, "store: empty adapter layout");
    if (world < 1 || rank < 0 || rank >= world || world > (1 << 16))
        return tl_fail(err, TL_ERR_RUNTIME, "store: rank %d of %d", rank, world);
    tl_store *st = calloc(1, sizeof *st);
    if (!st) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    st->fd = -1;
    st->pending_from = NO_PENDING;
    st->L = *L;
    st->rank = rank, st->world = world;
    tl_status s = tl_path_join(st->dir, sizeof st->dir, run_dir, "store", err);
    char meta[TL_PATH_MAX + 16];
    if (!s) s = tl_path_join(meta, sizeof meta, st->dir, "store.json", err);
    if (!s && tl_is_file(meta)) {
        tl_store_layout have;
        s = read_layout_json(meta, &have, &st->run_id, err);
        if (!s && (have.P != L->P || have.rank != L->rank || have.n_layers != L->n_layers ||
                   have.targets != L->targets || have.head_dim != L->head_dim))
            s = tl_fail(err, TL_ERR_INPUT, "%s: the store holds adapters of another shape (P %zu, rank %d, targets "
                        "0x%x, %d layers, head %d) than this run's (P %zu, rank %d, targets 0x%x, %d layers, head "
                        "%d): a different model or adapter.* config; use another train.output_dir",
                        meta, have.P, have.rank, have.targets, have.n_layers, have.head_dim, L->P, L->rank,
                        L->targets, L->n_layers, L->head_dim);
    } else if (!s && rank > 0) { /* rank 0 created it before the ranks met (tl_train) */
        s = tl_fail(err, TL_ERR_INPUT, "%s: missing on rank %d, though rank 0 created it: train.output_dir must be "
                    "on a file system every rank shares", meta, rank);
    } else if (!s) {
        s = tl_mkdir_p(st->dir, err);
        st->run_id = fresh_run_id();
        char text[512];
        int k = snprintf(text, sizeof text,
                         "{\"format\": \"%s\", \"run_id\": \"%016" PRIx64 "\", \"P\": %zu, \"rank\": %d, "
                         "\"n_layers\": %d, \"targets\": %u, \"head_dim\": %d}\n",
                         TL_STORE_FORMAT, st->run_id, L->P, L->rank, L->n_layers, (unsigned)L->targets,
                         L->head_dim);
        if (!s) s = tl_write_file_atomic(meta, text, (size_t)k, err);
    }
    if (!s) {
        st->buf = malloc(tl_store_record_bytes(L->P));
        if (!st->buf || !grow_table(st)) s = tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    }
    if (s) {
        tl_store_close(st);
        return s;
    }
    st->next_seg = 0;
    *out = st;
    return TL_OK;
}

void tl_store_close(tl_store *st) {
    if (!st) return;
    if (st->fd >= 0) close(st->fd);
    clear_index(st);
    free(st->e);
    free(st->table);
    free(st->buf);
    free(st);
}

/* Fault injection for the crash tests (tests/e2e/store.sh): TAILOR_FAULT_STORE_KILL_RECORD=n kills the process
 * by SIGKILL halfway through writing its n-th record (1-based); TAILOR_FAULT_STORE_KILL_COMMIT=n after the n-th
 * manifest is written but before the checkpoint holding it is complete. */
static void fault_point(const char *env, uint64_t count) {
    const char *v = getenv(env);
    if (v && strtoull(v, NULL, 10) == count) raise(SIGKILL);
}

/* ---- records ---- */

static tl_status pread_all(int fd, void *dst, size_t n, uint64_t off, const char *path, tl_error *err) {
    unsigned char *p = dst;
    while (n) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: read failed: %s", path, strerror(errno));
        if (k == 0) return tl_fail(err, TL_ERR_INPUT, "%s: truncated: a record ends past the end of the file", path);
        p += k, n -= (size_t)k, off += (uint64_t)k;
    }
    return TL_OK;
}

/* Records go to their offsets (pwrite), never to the file position: the write-behind thread writes reserved
 * records while the main thread may append others (compaction) to the same segment. */
static tl_status write_all(int fd, const void *src, size_t n, uint64_t off, const char *path, tl_error *err) {
    const unsigned char *p = src;
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: write failed: %s", path, k < 0 ? strerror(errno) : "0");
        p += k, n -= (size_t)k, off += (uint64_t)k;
    }
    return TL_OK;
}

/* Whether entry x's record may still be in flight (reserved, not landed). */
static int in_flight(const tl_store *st, const entry *x) {
    return st->pending_from != NO_PENDING && st->fd >= 0 && x->seg == st->next_seg + (uint32_t)st->rank &&
           x->off >= st->pending_from;
}

/* Reads and checks one record (its header and `want` bytes from its start: all of it, or the header and the
 * params) into buf. Touches no store state: the main thread's tl_store_read and the prefetch thread's
 * tl_store_read_at both come here, so both report a bad record in the same words. */
static tl_status read_record(const char *path, uint64_t run_id, size_t P, uint64_t off, int64_t steps,
                             const char *name, unsigned char *buf, size_t want, tl_error *err) {
    size_t rec = tl_store_record_bytes(P), bytes = P * sizeof(float);
    int fd = -1;
    int64_t size = 0;
    TL_TRY(tl_open_regular(path, "store segment", &fd, &size, err));
    tl_status s = (uint64_t)size < off || (uint64_t)size - off < rec
                      ? tl_fail(err, TL_ERR_INPUT, "%s: truncated: adapter '%s''s record at byte %" PRIu64
                                " ends past the end of the file (%" PRId64 " bytes)", path, name, off, size)
                      : pread_all(fd, buf, want, off, path, err);
    close(fd);
    TL_TRY(s);
    const unsigned char *h = buf;
    if (memcmp(h, REC_MAGIC, 8) != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: byte %" PRIu64 ": not a store record (adapter '%s')", path, off, name);
    if (get_u64(h + 8) != run_id)
        return tl_fail(err, TL_ERR_INPUT, "%s: adapter '%s''s record belongs to another store (run_id %016" PRIx64
                       ", this store's %016" PRIx64 ")", path, name, get_u64(h + 8), run_id);
    if (get_u64(h + 16) != P || get_u64(h + 32) != fnv64(name) || (int64_t)get_u64(h + 24) != steps)
        return tl_fail(err, TL_ERR_INPUT, "%s: byte %" PRIu64 ": the record is not adapter '%s''s (shape, name or "
                       "step count differ from the index)", path, off, name);
    if (crc32_update(0, h + REC_HEADER, bytes) != get_u32(h + 40) ||
        (want == rec && crc32_update(0, h + REC_HEADER + bytes, 2 * bytes) != get_u32(h + 44)))
        return tl_fail(err, TL_ERR_INPUT, "%s: adapter '%s''s record is corrupt (CRC-32 mismatch)", path, name);
    return TL_OK;
}

tl_status tl_store_read(tl_store *st, int64_t i, float *params, float *m, float *v, tl_error *err) {
    const entry *x = &st->e[i];
    if (x->seg == SEG_NONE) return tl_fail(err, TL_ERR_RUNTIME, "store: adapter '%s' has no record", x->name);
    if (in_flight(st, x))
        return tl_fail(err, TL_ERR_RUNTIME,
                       "store: adapter '%s''s record is still being written (read after "
                       "tl_store_landed)",
                       x->name);
    size_t P = st->L.P, rec = tl_store_record_bytes(P), bytes = P * sizeof(float);
    /* params alone (exports, evaluations) read the header and the params: a third of the record */
    size_t want = m || v ? rec : REC_HEADER + bytes;
    char path[TL_PATH_MAX];
    TL_TRY(seg_path(st, x->seg, path, sizeof path, err));
    TL_TRY(read_record(path, st->run_id, P, x->off, x->meta.steps, x->name, st->buf, want, err));
    const unsigned char *h = st->buf;
    if (params) memcpy(params, h + REC_HEADER, bytes);
    if (m) memcpy(m, h + REC_HEADER + bytes, bytes);
    if (v) memcpy(v, h + REC_HEADER + 2 * bytes, bytes);
    return TL_OK;
}

void tl_store_reader_of(const tl_store *st, tl_store_reader *rd) { rd->run_id = st->run_id, rd->P = st->L.P; }

int tl_store_loc_of(const tl_store *st, int64_t i, tl_store_loc *loc) {
    const entry *x = &st->e[i];
    loc->seg = 0, loc->off = 0, loc->steps = 0, loc->path[0] = 0;
    if (x->seg == SEG_NONE) return 0;
    loc->seg = x->seg, loc->off = x->off, loc->steps = x->meta.steps;
    tl_error e = {0};
    if (seg_path(st, x->seg, loc->path, sizeof loc->path, &e)) loc->path[0] = 0; /* too long: read_at says so */
    return 1;
}

int tl_store_loc_same(const tl_store_loc *a, const tl_store_loc *b) {
    return a->seg == b->seg && a->off == b->off && a->steps == b->steps;
}

tl_status tl_store_read_at(const tl_store_reader *rd, const tl_store_loc *loc, const char *name, unsigned char *rec,
                           const float **params, tl_error *err) {
    *params = NULL;
    if (!loc->path[0]) return tl_fail(err, TL_ERR_RUNTIME, "store: adapter '%s''s segment path is too long", name);
    TL_TRY(read_record(loc->path, rd->run_id, rd->P, loc->off, loc->steps, name, rec, tl_store_record_bytes(rd->P),
                       err));
    *params = (const float *)(const void *)(rec + REC_HEADER);
    return TL_OK;
}

/* The segment this process appends to in the current interval. */
static uint32_t my_segment(const tl_store *st) { return st->next_seg + (uint32_t)st->rank; }

static tl_status open_segment(tl_store *st, tl_error *err) {
    char path[TL_PATH_MAX];
    TL_TRY(seg_path(st, my_segment(st), path, sizeof path, err));
    /* O_EXCL: a segment past the restored index was removed by tl_store_restore; one that exists now is not
     * ours to append to */
    st->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (st->fd < 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create: %s", path, strerror(errno));
    st->fd_size = 0;
    return TL_OK;
}

static tl_status append_record(tl_store *st, int64_t i, int64_t steps, tl_error *err);

/* The header of entry i's record of `steps` steps, CRC-32s aside (seal_record). */
static void fill_header(const tl_store *st, int64_t i, int64_t steps, unsigned char *h) {
    memset(h, 0, REC_HEADER);
    memcpy(h, REC_MAGIC, 8);
    put_u64(h + 8, st->run_id);
    put_u64(h + 16, st->L.P);
    put_u64(h + 24, (uint64_t)steps);
    put_u64(h + 32, fnv64(st->e[i].name));
}

/* The CRC-32s of a record whose header and body are filled. */
static void seal_record(unsigned char *h, size_t P) {
    size_t bytes = P * sizeof(float);
    put_u32(h + 40, crc32_update(0, h + REC_HEADER, bytes));             /* params */
    put_u32(h + 44, crc32_update(0, h + REC_HEADER + bytes, 2 * bytes)); /* m, v */
}

/* Writes a whole record at off; TAILOR_FAULT_STORE_KILL_RECORD's record (fault set) is killed halfway. */
static tl_status put_record(int fd, const unsigned char *h, size_t rec, uint64_t off, int fault, const char *path,
                            tl_error *err) {
    if (!fault) return write_all(fd, h, rec, off, path, err);
    TL_TRY(write_all(fd, h, rec / 2, off, path, err));
    raise(SIGKILL);
    return write_all(fd, h + rec / 2, rec - rec / 2, off + rec / 2, path, err);
}

tl_status tl_store_write(tl_store *st, int64_t i, const float *params, const float *m, const float *v, int64_t steps,
                         tl_error *err) {
    size_t P = st->L.P, bytes = P * sizeof(float);
    unsigned char *h = st->buf;
    fill_header(st, i, steps, h);
    memcpy(h + REC_HEADER, params, bytes);
    memcpy(h + REC_HEADER + bytes, m, bytes);
    memcpy(h + REC_HEADER + 2 * bytes, v, bytes);
    seal_record(h, P);
    return append_record(st, i, steps, err);
}

/* Whether the next record is the one TAILOR_FAULT_STORE_KILL_RECORD names (1-based, over this process). */
static int next_record_faults(tl_store *st) {
    const char *f = getenv("TAILOR_FAULT_STORE_KILL_RECORD");
    if (!f) return 0;
    return strtoull(f, NULL, 10) == ++st->n_records;
}

/* Reserves the next record's place in this process's open segment (opened when none is), points entry i at it
 * and says in *w where and how to write it. The segment's path is resolved before the index points anywhere. */
static tl_status reserve(tl_store *st, int64_t i, int64_t steps, tl_store_wloc *w, tl_error *err) {
    TL_TRY(seg_path(st, my_segment(st), w->path, sizeof w->path, err));
    if (st->fd < 0) TL_TRY(open_segment(st, err));
    w->fault = next_record_faults(st);
    w->fd = st->fd, w->off = st->fd_size, w->P = st->L.P;
    entry *x = &st->e[i];
    x->seg = my_segment(st), x->off = st->fd_size, x->meta.has_state = 1, x->meta.steps = steps;
    size_t rec = tl_store_record_bytes(st->L.P);
    st->fd_size += rec;
    st->written += rec;
    return TL_OK;
}

/* Appends the whole record in st->buf (entry i's, `steps` optimizer steps, CRC-32s filled) to this process's open
 * segment and points the index at it. */
static tl_status append_record(tl_store *st, int64_t i, int64_t steps, tl_error *err) {
    tl_store_wloc w;
    TL_TRY(reserve(st, i, steps, &w, err));
    return put_record(w.fd, st->buf, tl_store_record_bytes(w.P), w.off, w.fault, w.path, err);
}

float *tl_store_record_body(unsigned char *rec) { return (float *)(void *)(rec + REC_HEADER); }

tl_status tl_store_reserve(tl_store *st, int64_t i, int64_t steps, unsigned char *rec, tl_store_wloc *w,
                           tl_error *err) {
    TL_TRY(reserve(st, i, steps, w, err));
    fill_header(st, i, steps, rec);
    if (st->pending_from == NO_PENDING) st->pending_from = w->off;
    return TL_OK;
}

tl_status tl_store_write_at(const tl_store_wloc *w, unsigned char *rec, tl_error *err) {
    seal_record(rec, w->P);
    return put_record(w->fd, rec, tl_store_record_bytes(w->P), w->off, w->fault, w->path, err);
}

void tl_store_landed(tl_store *st) { st->pending_from = NO_PENDING; }

/* ---- manifests ---- */

tl_status tl_store_seal(tl_store *st, tl_error *err) {
    if (st->fd >= 0 && st->pending_from != NO_PENDING)
        return tl_fail(err, TL_ERR_RUNTIME,
                       "store: sealing a segment with records still being written (seal after "
                       "tl_store_landed)");
    if (st->fd >= 0) { /* the records a manifest refers to reach the disk before it does */
        if (fsync(st->fd) != 0) {
            char path[TL_PATH_MAX];
            TL_TRY(seg_path(st, my_segment(st), path, sizeof path, err));
            return tl_fail(err, TL_ERR_RUNTIME, "%s: fsync failed: %s", path, strerror(errno));
        }
        close(st->fd);
        st->fd = -1;
        TL_TRY(tl_fsync_dir(st->dir, err));
        if (st->world == 1) st->next_seg++;
    }
    /* many ranks: every rank seals at the same points, so the intervals stay aligned whoever wrote */
    if (st->world > 1) st->next_seg += (uint32_t)st->world;
    return TL_OK;
}

tl_status tl_store_commit(tl_store *st, int64_t global_step, int64_t round_start, const char *manifest_path,
                          tl_error *err) {
    if (st->fd >= 0) TL_TRY(tl_store_seal(st, err)); /* many ranks: sealed by every rank before (tl_resident_sync) */
    size_t cap = MAN_HEADER;
    for (int64_t i = 0; i < st->n; i++) cap += 4 + strlen(st->e[i].name) + ENTRY_FIXED;
    cap += 4;
    unsigned char *b = malloc(cap), *p = b;
    if (!b) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory for the manifest (%zu bytes)", cap);
    memcpy(p, MAN_MAGIC, 8), p += 8;
    put_u64(p, st->run_id), p += 8;
    put_u64(p, st->L.P), p += 8;
    put_u64(p, (uint64_t)global_step), p += 8;
    put_u64(p, st->next_seg), p += 8;
    put_u64(p, (uint64_t)st->n), p += 8;
    put_u64(p, (uint64_t)round_start), p += 8;
    for (int64_t i = 0; i < st->n; i++) {
        const entry *x = &st->e[i];
        uint32_t len = (uint32_t)strlen(x->name);
        put_u32(p, len), p += 4;
        memcpy(p, x->name, len), p += len;
        put_u32(p, x->seg), p += 4;
        put_u32(p, 0), p += 4;
        put_u64(p, x->off), p += 8;
        put_u64(p, (uint64_t)x->meta.steps), p += 8;
        put_u64(p, (uint64_t)x->meta.epoch), p += 8;
        put_u64(p, (uint64_t)x->meta.pos), p += 8;
        put_u64(p, (uint64_t)x->meta.n_examples), p += 8;
        put_u64(p, (uint64_t)x->meta.round), p += 8;
        put_u64(p, (uint64_t)x->meta.steps0), p += 8;
    }
    put_u32(p, crc32_update(0, b, (size_t)(p - b))), p += 4;
    tl_status s = tl_write_file_atomic(manifest_path, b, (size_t)(p - b), err);
    free(b);
    if (!s) fault_point("TAILOR_FAULT_STORE_KILL_COMMIT", ++st->n_commits);
    return s;
}

/* A parsed manifest: entries in b (names point into it). */
typedef struct {
    unsigned char *b;
    size_t n_bytes;
    uint64_t run_id, P, next_seg, n;
    int64_t global_step, round_start;
} manifest;

static tl_status read_manifest(const char *path, manifest *M, tl_error *err) {
    memset(M, 0, sizeof *M);
    char *text = NULL;
    size_t n = 0;
    TL_TRY(tl_read_file(path, (size_t)1 << 34, &text, &n, err));
    unsigned char *b = (unsigned char *)text;
    if (n < MAN_HEADER + 4 || memcmp(b, MAN_MAGIC, 8) != 0) {
        free(text);
        return tl_fail(err, TL_ERR_INPUT, "%s: not a tailor store manifest", path);
    }
    if (crc32_update(0, b, n - 4) != get_u32(b + n - 4)) {
        free(text);
        return tl_fail(err, TL_ERR_INPUT, "%s: corrupt or truncated (CRC-32 mismatch)", path);
    }
    M->b = b, M->n_bytes = n;
    M->run_id = get_u64(b + 8), M->P = get_u64(b + 16), M->global_step = (int64_t)get_u64(b + 24);
    M->next_seg = get_u64(b + 32), M->n = get_u64(b + 40), M->round_start = (int64_t)get_u64(b + 48);
    return TL_OK;
}

/* Walks the manifest's entries; cb gets each (name copied into a NUL-terminated scratch). */
typedef tl_status (*entry_cb)(void *ctx, const char *name, uint32_t seg, uint64_t off, const tl_store_meta *m,
                              tl_error *err);
static tl_status walk_manifest(const char *path, const manifest *M, entry_cb cb, void *ctx, tl_error *err) {
    const unsigned char *p = M->b + MAN_HEADER, *end = M->b + M->n_bytes - 4;
    char *name = malloc(NAME_MAX_BYTES + 1);
    if (!name) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    tl_status s = TL_OK;
    for (uint64_t i = 0; i < M->n && !s; i++) {
        if (end - p < 4) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: entry %" PRIu64 ": past the end of the file", path, i);
            break;
        }
        uint32_t len = get_u32(p);
        p += 4;
        if (len == 0 || len > NAME_MAX_BYTES || (size_t)(end - p) < (size_t)len + ENTRY_FIXED) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: entry %" PRIu64 ": bad name length %" PRIu32, path, i, len);
            break;
        }
        memcpy(name, p, len);
        name[len] = 0;
        p += len;
        if (strlen(name) != len) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: entry %" PRIu64 ": a NUL byte inside the name", path, i);
            break;
        }
        uint32_t seg = get_u32(p);
        uint64_t off = get_u64(p + 8);
        tl_store_meta m = {.has_state = seg != SEG_NONE,
                           .steps = (int64_t)get_u64(p + 16),
                           .epoch = (int64_t)get_u64(p + 24),
                           .pos = (int64_t)get_u64(p + 32),
                           .n_examples = (int64_t)get_u64(p + 40),
                           .round = (int64_t)get_u64(p + 48),
                           .steps0 = (int64_t)get_u64(p + 56)};
        p += ENTRY_FIXED;
        if (m.steps < 0 || m.epoch < 0 || m.pos < 0 || m.n_examples < 0 || m.round < 0 || m.round > M->global_step ||
            m.steps0 < 0 || m.steps0 > m.steps || (m.has_state && seg >= M->next_seg)) {
            s = tl_fail(err, TL_ERR_INPUT, "%s: entry %" PRIu64 " ('%.100s'): values out of range", path, i, name);
            break;
        }
        s = cb(ctx, name, seg, off, &m, err);
    }
    if (!s && p != end) s = tl_fail(err, TL_ERR_INPUT, "%s: %zu bytes after the last entry", path, (size_t)(end - p));
    free(name);
    return s;
}

typedef struct {
    tl_store *st;
    const char *path;
    uint64_t *seg_size; /* [next_seg], UINT64_MAX: not yet looked at */
} restore_ctx;

static tl_status restore_cb(void *ctx, const char *name, uint32_t seg, uint64_t off, const tl_store_meta *m,
                            tl_error *err) {
    restore_ctx *c = ctx;
    tl_store *st = c->st;
    if (find(st, name) >= 0) return tl_fail(err, TL_ERR_INPUT, "%s: adapter '%.100s' listed twice", c->path, name);
    if (m->has_state) {
        if (c->seg_size[seg] == UINT64_MAX) {
            char sp[TL_PATH_MAX];
            TL_TRY(seg_path(st, seg, sp, sizeof sp, err));
            struct stat sb;
            if (stat(sp, &sb) != 0 || !S_ISREG(sb.st_mode))
                return tl_fail(err, TL_ERR_INPUT, "%s: adapter '%.100s''s record is in %s, which is missing", c->path,
                               name, sp);
            c->seg_size[seg] = (uint64_t)sb.st_size;
        }
        size_t rec = tl_store_record_bytes(st->L.P);
        if (off > c->seg_size[seg] || c->seg_size[seg] - off < rec)
            return tl_fail(err, TL_ERR_INPUT, "%s: adapter '%.100s''s record lies past the end of segment %" PRIu32
                           " (truncated store file)", c->path, name, seg);
    }
    int64_t i = push(st, name);
    if (i < 0) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory for the index");
    st->e[i].meta = *m;
    st->e[i].seg = m->has_state ? seg : SEG_NONE;
    st->e[i].off = off;
    return TL_OK;
}

/* keep == NULL: removes the segments numbered from `from` on; else the segments below `from` that keep[] does not
 * mark (those from `from` on stay). */
static tl_status remove_segments(tl_store *st, uint32_t from, const uint8_t *keep, tl_error *err) {
    DIR *d = opendir(st->dir);
    if (!d) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot list: %s", st->dir, strerror(errno));
    tl_status s = TL_OK;
    struct dirent *de;
    while (!s && (de = readdir(d))) {
        const char *nm = de->d_name;
        if (strlen(nm) != 16 || strncmp(nm, "seg-", 4) != 0 || strcmp(nm + 12, ".bin") != 0) continue;
        uint32_t seg = 0;
        int digits = 1;
        for (int k = 4; k < 12; k++) {
            if (nm[k] < '0' || nm[k] > '9') digits = 0;
            seg = seg * 10 + (uint32_t)(nm[k] - '0');
        }
        if (!digits) continue;
        if (keep ? seg >= from || keep[seg] : seg < from) continue;
        char path[TL_PATH_MAX];
        s = tl_path_join(path, sizeof path, st->dir, de->d_name, err);
        if (!s && unlink(path) != 0 && errno != ENOENT)
            s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot remove: %s", path, strerror(errno));
    }
    closedir(d);
    return s ? s : tl_fsync_dir(st->dir, err);
}

tl_status tl_store_restore(tl_store *st, const char *manifest_path, int64_t *global_step, int64_t *round_start,
                           tl_error *err) {
    manifest M;
    TL_TRY(read_manifest(manifest_path, &M, err));
    tl_status s = TL_OK;
    if (M.run_id != st->run_id)
        s = tl_fail(err, TL_ERR_INPUT, "%s: the checkpoint belongs to another store (run_id %016" PRIx64 ", %s/store."
                    "json says %016" PRIx64 "): the checkpoint and the store come from different runs",
                    manifest_path, M.run_id, st->dir, st->run_id);
    else if (M.P != st->L.P)
        s = tl_fail(err, TL_ERR_INPUT, "%s: adapters of %" PRIu64 " parameters, the store's have %zu", manifest_path,
                    M.P, st->L.P);
    else if (M.global_step < 0 || M.round_start < 0 || M.round_start > M.global_step)
        s = tl_fail(err, TL_ERR_INPUT, "%s: step %" PRId64 " / round start %" PRId64 " out of range", manifest_path,
                    M.global_step, M.round_start);
    else if (M.next_seg > ((uint64_t)1 << 24)) /* one segment per checkpoint: 16M is out of reach */
        s = tl_fail(err, TL_ERR_INPUT, "%s: segment count %" PRIu64 " out of range", manifest_path, M.next_seg);
    uint64_t *sizes = s ? NULL : malloc((size_t)(M.next_seg + 1) * sizeof *sizes);
    if (!s && !sizes) s = tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    if (!s) {
        for (uint64_t k = 0; k <= M.next_seg; k++) sizes[k] = UINT64_MAX;
        if (st->fd >= 0) close(st->fd), st->fd = -1;
        clear_index(st);
        restore_ctx c = {.st = st, .path = manifest_path, .seg_size = sizes};
        s = walk_manifest(manifest_path, &M, restore_cb, &c, err);
        if (s) clear_index(st);
    }
    free(sizes);
    free(M.b);
    if (s) return s;
    st->next_seg = (uint32_t)M.next_seg;
    *global_step = M.global_step;
    if (round_start) *round_start = M.round_start;
    /* a crashed run's segments (written after this checkpoint) are debris; rank 0 removes them before the ranks
     * meet again, the others only read */
    return st->rank == 0 ? remove_segments(st, st->next_seg, NULL, err) : TL_OK;
}

tl_status tl_store_start_fresh(tl_store *st, tl_error *err) {
    if (st->fd >= 0) close(st->fd), st->fd = -1;
    clear_index(st);
    st->next_seg = 0;
    return st->rank == 0 ? remove_segments(st, 0, NULL, err) : TL_OK;
}

typedef struct {
    uint8_t *keep;
    uint32_t n;
} prune_ctx;

static tl_status prune_cb(void *ctx, const char *name, uint32_t seg, uint64_t off, const tl_store_meta *m,
                          tl_error *err) {
    (void)name, (void)off, (void)err;
    prune_ctx *c = ctx;
    if (m->has_state && seg < c->n) c->keep[seg] = 1;
    return TL_OK;
}

tl_status tl_store_prune(tl_store *st, char *const *manifests, int n, tl_error *err) {
    uint32_t ns = st->next_seg;
    if (ns == 0 || st->rank != 0) return TL_OK; /* rank 0 prunes for every rank */
    uint8_t *keep = calloc(ns, 1);
    if (!keep) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    for (int64_t i = 0; i < st->n; i++)
        if (st->e[i].seg != SEG_NONE && st->e[i].seg < ns) keep[st->e[i].seg] = 1;
    tl_status s = TL_OK;
    for (int k = 0; k < n && !s; k++) {
        manifest M;
        s = read_manifest(manifests[k], &M, err);
        if (s) break;
        prune_ctx c = {.keep = keep, .n = ns};
        if (M.run_id == st->run_id) s = walk_manifest(manifests[k], &M, prune_cb, &c, err);
        free(M.b);
    }
    /* segments from ns on are the open one (or none yet): never pruned */
    if (!s) s = remove_segments(st, ns, keep, err);
    free(keep);
    return s;
}

/* ---- many ranks: the index entries travel as integers (tl_resident_sync) ---- */

void tl_store_entry_pack(const tl_store *st, int64_t i, int64_t w[TL_STORE_ENTRY_WORDS]) {
    const entry *x = &st->e[i];
    w[0] = x->seg, w[1] = (int64_t)x->off, w[2] = x->meta.has_state, w[3] = x->meta.steps, w[4] = x->meta.epoch;
    w[5] = x->meta.pos, w[6] = x->meta.n_examples, w[7] = x->meta.round, w[8] = x->meta.steps0;
}

tl_status tl_store_entry_unpack(tl_store *st, int64_t i, const int64_t w[TL_STORE_ENTRY_WORDS], tl_error *err) {
    entry *x = &st->e[i];
    int has = w[2] != 0;
    if (w[0] < 0 || w[0] > (int64_t)SEG_NONE || w[1] < 0 || (has && w[0] >= (int64_t)st->next_seg) ||
        (!has && w[0] != (int64_t)SEG_NONE) || w[3] < 0 || w[4] < 0 || w[5] < 0 || w[6] < 0 || w[7] < 0 ||
        w[8] < 0 || w[8] > w[3])
        return tl_fail(err, TL_ERR_RUNTIME, "store: adapter '%.100s': inconsistent index entry from its rank",
                       x->name);
    x->seg = (uint32_t)w[0], x->off = (uint64_t)w[1];
    x->meta = (tl_store_meta){.has_state = has, .steps = w[3], .epoch = w[4], .pos = w[5], .n_examples = w[6],
                              .round = w[7], .steps0 = w[8]};
    return TL_OK;
}

/* ---- compaction ---- */

tl_status tl_store_compact(tl_store *st, double below, int64_t round, tl_store_compaction *out, tl_error *err) {
    memset(out, 0, sizeof *out);
    uint32_t first_open = st->next_seg; /* this interval's segments (every rank's) are still being written */
    if (below <= 0 || first_open == 0) return TL_OK;
    size_t rec = tl_store_record_bytes(st->L.P);
    uint64_t *live = calloc(first_open, sizeof *live);
    if (!live) return tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    for (int64_t i = 0; i < st->n; i++)
        if (st->e[i].seg < first_open) live[st->e[i].seg] += rec;
    /* a segment is sparse when its live records are under `below` of its bytes; an adapter of the current round
     * stays (with many ranks its rank owns its entry), every other live record of a sparse segment moves */
    uint8_t *sparse = calloc(first_open, 1);
    tl_status s = sparse ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    for (uint32_t k = 0; !s && k < first_open; k++) {
        if (!live[k]) continue; /* dead already: pruning removes it once no kept checkpoint uses it */
        char path[TL_PATH_MAX];
        struct stat sb;
        s = seg_path(st, k, path, sizeof path, err);
        if (!s && stat(path, &sb) == 0 && (double)live[k] < below * (double)sb.st_size) {
            sparse[k] = 1;
            out->segments++;
        }
    }
    if (!s && out->segments && !(out->moved = malloc((size_t)(st->n ? st->n : 1) * sizeof *out->moved)))
        s = tl_fail(err, TL_ERR_RUNTIME, "store: out of host memory");
    for (int64_t i = 0; !s && out->segments && i < st->n; i++) {
        entry *e = &st->e[i];
        if (e->seg >= first_open || !sparse[e->seg] || e->meta.round == round) continue;
        /* the record's bytes, checked as a read checks them (CRC-32s included), appended as they are */
        char path[TL_PATH_MAX];
        s = seg_path(st, e->seg, path, sizeof path, err);
        if (!s) s = read_record(path, st->run_id, st->L.P, e->off, e->meta.steps, e->name, st->buf, rec, err);
        if (!s) s = append_record(st, i, e->meta.steps, err);
        if (!s) out->moved[out->n_moved++] = i, out->bytes += rec;
    }
    free(sparse), free(live);
    if (s) tl_store_compaction_free(out);
    return s;
}

void tl_store_compaction_free(tl_store_compaction *c) {
    free(c->moved);
    memset(c, 0, sizeof *c);
}
