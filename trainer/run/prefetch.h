/* prefetch: one background thread that reads adapter store records while a step computes, so that the next
 * step's adapters come from host staging buffers instead of the disk (issue 13: "the next step's adapters are
 * loaded while the current step computes"). Private to trainer/run/; resident.c drives it.
 *
 * The main thread hands over a list of records (tl_prefetch_submit: adapter, location snapshot, name); the thread
 * reads each into a staging buffer of its own (n_bufs buffers of one record each, tl_store_record_bytes(P),
 * allocated once) and checks it (magic, run_id, shape, name, step count, CRC-32) with tl_store_read_at, the code
 * tl_store_read runs. Before it uses a staged record the main thread waits for the list (tl_prefetch_wait); the
 * thread is then idle until the next submit, so a buffer handed out by tl_prefetch_take stays unchanged while the
 * caller uploads it. A record staged from a location that is no longer the entry's (tl_store_loc_same) is never
 * used; a read that failed is reported by tl_prefetch_take, with the message a direct read gives. */
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

/* Starts the thread with n_bufs staging buffers for records of rd->P floats. */
tl_status tl_prefetch_start(const tl_store_reader *rd, int n_bufs, tl_prefetch **out, tl_error *err);
/* Waits for the previous list, then hands the thread reqs[0 .. n) (at most n_bufs of them; the rest are not
 * staged and will be read directly). */
void tl_prefetch_submit(tl_prefetch *pf, const tl_prefetch_req *reqs, int n);
/* Waits until the thread has read every record of the last list; returns the seconds this call waited. */
double tl_prefetch_wait(tl_prefetch *pf);
/* After tl_prefetch_wait: the staged record of `adapter` read from loc. *params NULL: not staged (read it
 * directly); else its params, m and v follow (P floats each), valid until the next submit. A failed read of it:
 * its error. */
tl_status tl_prefetch_take(tl_prefetch *pf, int32_t adapter, const tl_store_loc *loc, const float **params,
                           tl_error *err);
/* Seconds the thread spent reading, and records it read (after tl_prefetch_wait: complete). */
double tl_prefetch_busy_s(tl_prefetch *pf);
int64_t tl_prefetch_reads(tl_prefetch *pf);
/* Stops and joins the thread (after the record it is reading, if any) and frees everything. NULL is a no-op. */
void tl_prefetch_stop(tl_prefetch *pf);

#endif
