/* prefetch: one background thread for the adapter store's I/O while a step computes (issue 13: "the next step's
 * adapters are loaded while the current step computes, and written back after their optimizer step"): it reads
 * the next step's records (prefetch) and writes the records of evicted adapters (write-behind). Private to
 * trainer/run/; resident.c drives it.
 *
 * Jobs run one at a time in the order they were queued, so a read queued after a write of the same record sees
 * it whole. Reads: the main thread hands over a list (tl_prefetch_submit: adapter, location snapshot, name); the
 * thread reads each into a staging buffer of its own (n_bufs buffers of one record each, allocated once) and
 * checks it (magic, run_id, shape, name, step count, CRC-32) with tl_store_read_at, the code tl_store_read runs.
 * Before it uses a staged record the main thread waits (tl_prefetch_wait); a record staged from a location that
 * is no longer the entry's (tl_store_loc_same) is never used; a read that failed is reported by tl_prefetch_take,
 * with the message a direct read gives. Writes: the main thread takes a free write buffer (tl_prefetch_wbuf),
 * fills its record (tl_store_reserve) and queues it (tl_prefetch_write); the thread computes its checksums and
 * writes it (tl_store_write_at). The first failed write is kept and reported by tl_prefetch_write_status; the
 * writes after it are skipped (the run is failing; its last checkpoint stays whole). */
#ifndef TL_PREFETCH_H
#define TL_PREFETCH_H

#include <stdint.h>

#include "trainer/run/tl_store.h"

typedef struct tl_prefetch tl_prefetch;

typedef struct tl_prefetch_req {
    int32_t adapter;  /* the caller's index (the run's adapter) */
    tl_store_loc loc; /* where its record is, taken on the main thread (tl_store_loc_of) */
    const char *name; /* copied by tl_prefetch_submit */
} tl_prefetch_req;

/* Starts the thread with n_bufs read staging buffers and n_wbufs write buffers for records of rd->P floats. */
tl_status tl_prefetch_start(const tl_store_reader *rd, int n_bufs, int n_wbufs, tl_prefetch **out, tl_error *err);
/* Waits for the last list's reads (not for queued writes), then queues reads of reqs[0 .. n) behind whatever is
 * queued (at most n_bufs of them; the rest are not staged and will be read directly). */
void tl_prefetch_submit(tl_prefetch *pf, const tl_prefetch_req *reqs, int n);
/* Waits until the thread has done every queued job, reads and writes; returns the seconds this call waited. */
double tl_prefetch_wait(tl_prefetch *pf);
/* After tl_prefetch_wait: the staged record of `adapter` read from loc. *params NULL: not staged (read it
 * directly); else its params, m and v follow (P floats each), valid until the next submit. A failed read of it:
 * its error. */
tl_status tl_prefetch_take(tl_prefetch *pf, int32_t adapter, const tl_store_loc *loc, const float **params,
                           tl_error *err);

/* A write buffer that no queued write uses (waiting for one when all are in flight; *waited += the seconds):
 * its index, and its record bytes in *rec (tl_store_record_bytes(P)). It stays free until tl_prefetch_write. */
int tl_prefetch_wbuf(tl_prefetch *pf, unsigned char **rec, double *waited);
/* Queues the write of buffer `wbuf`, adapter's record, reserved at w. */
void tl_prefetch_write(tl_prefetch *pf, int wbuf, int32_t adapter, const tl_store_wloc *w);
/* Whether a write of adapter's record is queued or running. */
int tl_prefetch_writing(tl_prefetch *pf, int32_t adapter);
/* The first write that failed, if any (it stays reported). */
tl_status tl_prefetch_write_status(tl_prefetch *pf, tl_error *err);

/* Seconds the thread spent reading and writing, and the records it read and wrote (complete after
 * tl_prefetch_wait). */
double tl_prefetch_read_s(tl_prefetch *pf);
double tl_prefetch_write_s(tl_prefetch *pf);
int64_t tl_prefetch_reads(tl_prefetch *pf);
int64_t tl_prefetch_writes(tl_prefetch *pf);
/* Finishes the queued jobs (writes included), stops and joins the thread and frees everything. NULL is a no-op. */
void tl_prefetch_stop(tl_prefetch *pf);

#endif
