/* tl_store: every adapter's training state (LoRA parameters, Adam moments, optimizer steps, batch cursor) on disk
 * in the run directory, so that memory holds only the adapters a step trains, whatever the number of users.
 *
 * Layout (docs/scale.md has it in full):
 *   <run_dir>/store/store.json          format, run_id and the layout (P, rank, targets, n_layers, head_dim);
 *                                       written once, when the store is created
 *   <run_dir>/store/seg-<%08d>.bin      append-only segments of records (with many ranks, each rank its own:
 *                                       tl_store_open_shard): a 48-byte header (magic, run_id, P,
 *                                       steps, name hash, CRC-32 of params, CRC-32 of m and v) then params, m, v
 *                                       as F32 [P] (a reader of params alone reads a third of the record)
 *   <run_dir>/checkpoints/step-N/manifest.bin   the index at step N: for every adapter its name, its record's
 *                                       segment and offset (or none: never trained), steps, cursor, examples
 *
 * Crash safety without rewriting the population: a record is never overwritten. Write-backs append to the open
 * segment; a checkpoint fsyncs it, closes it and writes the index (tl_store_commit) into the checkpoint's
 * temporary directory, which tl_checkpoint renames into place. A kill at any moment leaves the newest complete
 * checkpoint's index pointing at records that were fsynced before it was written; segments opened after it are
 * debris that tl_store_restore removes. So a checkpoint costs the records of the adapters that changed since the
 * last one plus the index (about 60 bytes per adapter), not the population's state.
 *
 * Segments no retained checkpoint refers to are removed by tl_store_prune. Memory: the index (name + 64 bytes per
 * adapter) and one staging buffer; never an adapter's state beyond the one being read or written. */
#ifndef TL_STORE_H
#define TL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "data/tl_io.h"
#include "kernels/tl_status.h"

#define TL_STORE_FORMAT "tailor-store-1"
#define TL_STORE_MANIFEST "manifest.bin"

typedef struct tl_store tl_store;

/* The shape every record of a store has: a pool's layout (tl_lora_pool). */
typedef struct {
    size_t P;         /* floats per adapter */
    int rank, n_layers;
    uint32_t targets; /* TL_T_* bits */
    int head_dim;     /* reward models' score head, else 0 */
} tl_store_layout;

/* One adapter's entry in the index. */
typedef struct {
    int has_state;         /* 0: never written (it starts from its initialization) */
    int64_t steps;         /* optimizer steps taken (the record's) */
    int64_t epoch, pos;    /* the batcher's cursor (tl_cursor) */
    int64_t n_examples;    /* examples the adapter had in the dataset when it last trained (runs that grow) */
    int64_t round;         /* global step at which the last round the adapter took part in began */
    int64_t steps0;        /* its optimizer steps when that round began */
} tl_store_meta;

/* Opens <run_dir>/store, creating it (store.json with a fresh run_id) when absent. An existing store must have
 * this format and layout: TL_ERR_INPUT naming store.json and the field otherwise. The index starts empty:
 * tl_store_restore fills it from a checkpoint. */
tl_status tl_store_open(const char *run_dir, const tl_store_layout *L, tl_store **out, tl_error *err);
/* The same for one of `world` processes of a user_shard run, all opening one store on a shared file system.
 * Rank 0 opens first (creating the store) and alone removes files (tl_store_restore's debris, start_fresh,
 * prune); the others require store.json. Each rank appends to segments of its own (interval base + rank), and
 * tl_store_seal advances every rank's interval by world, so segment numbers never collide. */
tl_status tl_store_open_shard(const char *run_dir, const tl_store_layout *L, int rank, int world, tl_store **out,
                              tl_error *err);
void tl_store_close(tl_store *st);

/* Whether a run directory has a store (store/store.json). */
int tl_store_exists(const char *run_dir);
/* The layout recorded in <run_dir>/store/store.json (for commands that open a run without its config's model). */
tl_status tl_store_read_layout(const char *run_dir, tl_store_layout *L, tl_error *err);

/* The index. Adapters are kept in the order they were first added (the order of exports and manifests). */
int64_t tl_store_count(const tl_store *st);
const char *tl_store_name(const tl_store *st, int64_t i); /* i in [0, count) */
const tl_store_meta *tl_store_meta_at(const tl_store *st, int64_t i);
/* The entry of name: its position, or -1. */
int64_t tl_store_find(const tl_store *st, const char *name);
/* Adds name (no state, zero cursor) unless present; *index (may be NULL) receives its position. */
tl_status tl_store_add(tl_store *st, const char *name, int64_t *index, tl_error *err);
/* Sets the cursor of entry i (kept in the next manifest). */
void tl_store_set_cursor(tl_store *st, int64_t i, int64_t epoch, int64_t pos);
/* Enrols entry i in the round that begins at global step `round` with n_examples examples. */
void tl_store_set_round(tl_store *st, int64_t i, int64_t round, int64_t n_examples);

/* Reads entry i's record (which must have state) into params, m, v (host, P floats each; m and v may be NULL):
 * TL_ERR_INPUT naming the segment when the record is missing, truncated, from another store or corrupt. */
tl_status tl_store_read(tl_store *st, int64_t i, float *params, float *m, float *v, tl_error *err);
/* Reading from another thread (the prefetch of the next step's adapters, prefetch.h). tl_store is not
 * thread-safe; a reader on another thread gets what it needs as values taken on the main thread: the store's fixed
 * facts (tl_store_reader_of: they never change after tl_store_open) and a snapshot of an entry's location
 * (tl_store_loc_of). tl_store_read_at then touches no tl_store at all. A location is safe to read while the main
 * thread writes: records are appended and never overwritten, and an entry points at a record only once it was
 * written whole, so the bytes at a snapshot's location never change; a segment is removed (tl_store_prune) only
 * when no entry of the index points into it. The snapshot may go stale (the entry written again): the caller
 * compares it with tl_store_loc_of before using what was read. */
typedef struct {
    uint64_t run_id;
    size_t P;
} tl_store_reader;
typedef struct {
    uint32_t seg;
    uint64_t off;
    int64_t steps;              /* what the record's header must say */
    char path[TL_PATH_MAX];     /* the segment's file */
} tl_store_loc;
void tl_store_reader_of(const tl_store *st, tl_store_reader *rd);
/* Entry i's location (0 and *loc zeroed when it has no record). */
int tl_store_loc_of(const tl_store *st, int64_t i, tl_store_loc *loc);
/* Whether two snapshots name the same record. */
int tl_store_loc_same(const tl_store_loc *a, const tl_store_loc *b);
/* Reads and checks (as tl_store_read: the same messages) the record at loc of adapter `name` into rec
 * (tl_store_record_bytes(P) bytes, from malloc); *params points into rec at the record's params, m and v follow
 * (P floats each). */
tl_status tl_store_read_at(const tl_store_reader *rd, const tl_store_loc *loc, const char *name, unsigned char *rec,
                           const float **params, tl_error *err);
/* Appends a record for entry i (params, m, v: P floats each) to the open segment and points the index at it. */
tl_status tl_store_write(tl_store *st, int64_t i, const float *params, const float *m, const float *v, int64_t steps,
                         tl_error *err);

/* Write-behind: tl_store_write in two halves, so that the checksums and the write of a record run on another
 * thread (prefetch.h) while a step computes. On the main thread tl_store_reserve takes the record's place at the
 * end of the open segment, points entry i's index entry at it and fills rec's header (rec: a buffer of
 * tl_store_record_bytes(P) into whose body, tl_store_record_body, the caller puts params, m and v). Any thread
 * then calls tl_store_write_at (it touches no tl_store). Until the main thread calls tl_store_landed, after every
 * reserved record was written, the records may be in flight: tl_store_read of such an entry and tl_store_seal /
 * tl_store_commit fail (TL_ERR_RUNTIME) rather than read or fsync a record that is not there yet, and a reader
 * on another thread must be ordered after the write (the prefetch thread does both in order). */
typedef struct {
    int fd;       /* the open segment's descriptor (valid until tl_store_seal) */
    uint64_t off; /* the record's place in it */
    size_t P;
    int fault;              /* TAILOR_FAULT_STORE_KILL_RECORD names this record: killed halfway */
    char path[TL_PATH_MAX]; /* for messages */
} tl_store_wloc;
float *tl_store_record_body(unsigned char *rec); /* params, then m, then v: P floats each */
tl_status tl_store_reserve(tl_store *st, int64_t i, int64_t steps, unsigned char *rec, tl_store_wloc *w, tl_error *err);
tl_status tl_store_write_at(const tl_store_wloc *w, unsigned char *rec, tl_error *err);
/* Every reserved record has been written (or the run is failing and will not read them). */
void tl_store_landed(tl_store *st);

/* Ends the current interval: fsyncs and closes the open segment (if any); the next write opens a new one. With
 * many ranks every rank calls it at the same points (before a manifest, tl_resident_sync). */
tl_status tl_store_seal(tl_store *st, tl_error *err);
/* Checkpoint: fsyncs and closes the open segment, then writes the index at global_step to manifest_path
 * (atomically). The next write opens a new segment. */
tl_status tl_store_commit(tl_store *st, int64_t global_step, int64_t round_start, const char *manifest_path,
                          tl_error *err);
/* Resume: replaces the index with the manifest's (format, run_id and P must match this store's; every referenced
 * record must lie inside its segment) and removes segments written after it (a crashed run's). */
tl_status tl_store_restore(tl_store *st, const char *manifest_path, int64_t *global_step, int64_t *round_start,
                           tl_error *err);
/* A run with no checkpoint yet: drops the index and every segment (a run killed before its first checkpoint left
 * them; nothing refers to them). */
tl_status tl_store_start_fresh(tl_store *st, tl_error *err);
/* Removes the segments that none of the given manifests (the retained checkpoints') and the open index refer
 * to. */
tl_status tl_store_prune(tl_store *st, char *const *manifests, int n, tl_error *err);

/* Many ranks: an index entry as integers (record location, state, cursor, round), for a sum over ranks in which
 * only the adapter's owner contributes. unpack checks the values against this store (TL_ERR_RUNTIME). */
#define TL_STORE_ENTRY_WORDS 9
void tl_store_entry_pack(const tl_store *st, int64_t i, int64_t w[TL_STORE_ENTRY_WORDS]);
tl_status tl_store_entry_unpack(tl_store *st, int64_t i, const int64_t w[TL_STORE_ENTRY_WORDS], tl_error *err);

/* Compaction: without it an adapter that never trains again pins its segment, and every dead record beside it,
 * for the life of the run. A closed segment whose live records (those the index points to) are under `below` of
 * its bytes is sparse; every live record in it, except those of adapters enrolled in the round that began at
 * global step `round` (they are being trained, and with many ranks another rank owns their entries), is copied to
 * the open segment, CRC-checked, as a write-back would. The sparse segment is then dead to the index, and pruning
 * removes it once no retained checkpoint refers to it. Each byte moved follows at least (1 - below) / below dead
 * bytes that training wrote, so over a run compaction costs at most that fraction of the write-backs' bytes.
 * below <= 0: nothing. out->moved lists the moved entries (free with tl_store_compaction_free). */
typedef struct {
    int64_t *moved;     /* [n_moved] entries whose record moved */
    int64_t n_moved;
    int segments;       /* sparse segments found */
    uint64_t bytes;     /* bytes appended */
} tl_store_compaction;
tl_status tl_store_compact(tl_store *st, double below, int64_t round, tl_store_compaction *out, tl_error *err);
void tl_store_compaction_free(tl_store_compaction *c);

/* Bytes appended to segments since the store was opened (for the checkpoint size line and the benchmark). */
uint64_t tl_store_bytes_written(const tl_store *st);
/* Bytes of one record (header + 3 P floats). */
size_t tl_store_record_bytes(size_t P);

#endif
