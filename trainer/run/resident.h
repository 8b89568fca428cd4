/* resident: the adapters of a run with an adapter store (tl_store.h) move through a pool of K slots, K the most a
 * step trains (train.adapters_per_step), so memory is set by the active set and not by the number of users.
 * Private to trainer/run/.
 *
 * Before a step, tl_resident_acquire gives each of the step's adapters a slot: one it already holds, else a free
 * slot or the least recently used one not needed by this step (written back to the store first when it was
 * trained since it came in). An adapter comes in from its newest store record, or, the first time, from its
 * initialization (tl_lora_fresh_params with the run's seed, or adapter.init_from). tl_resident_remap then rewrites
 * the step's batch from adapter indices to slots, so the model, the losses and the optimizer run unchanged on the
 * pool. tl_resident_trained marks the step's slots dirty; tl_resident_flush writes every dirty slot back (before a
 * checkpoint). Adapter indices are those of the run's map (a round's adapters when a run grows). */
#ifndef TL_RESIDENT_H
#define TL_RESIDENT_H

#include <stdint.h>

#include "data/tl_batcher.h"
#include "data/tl_pref.h"
#include "trainer/dist/tl_dist.h"
#include "trainer/model/tl_model.h"
#include "trainer/run/session_impl.h"
#include "trainer/run/tl_export.h"
#include "trainer/run/tl_store.h"

struct tl_resident {
    tl_store *store;
    tl_lora_pool *pool;      /* K slots (borrowed) */
    tl_lora_pool *ref;       /* DPO reference pool of K slots (adapter.init_from), or NULL */
    tl_backend *be;
    uint64_t seed;           /* adapter.seed: fresh initialization */
    tl_init_from init_from_src;
    const tl_init_from *init_from; /* &init_from_src with adapter.init_from, else NULL */
    int n;                   /* the run's adapters */
    char *const *names;      /* [n] (borrowed) */
    int64_t *entry;          /* [n] the adapter's entry in the store */
    int32_t *slot_of;        /* [n] the slot holding the adapter, -1 */
    int32_t *adapter_of;     /* [K] the adapter a slot holds, -1 */
    uint8_t *dirty;          /* [K] trained since it came in */
    uint64_t *used;          /* [K] tick of the last step that needed it */
    uint64_t tick;
    int64_t *steps;          /* [n] optimizer steps of every adapter (what the batchers read) */
    unsigned char *rec;      /* one store record (tl_store_record_bytes): write-backs without the I/O thread */
    float *host;             /* [3 P] staging: rec's body */
    /* what it cost, for the progress line and the benchmark */
    int64_t loads, inits, writebacks;
    double io_s;             /* seconds the step loop spent in store I/O or waiting for the prefetch */
    double wb_s, wait_s;     /* of io_s: writing back, waiting for the I/O thread */
    /* train.store_prefetch (prefetch.h): the next step's records read while a step computes */
    struct tl_prefetch *pf;  /* NULL: off */
    struct tl_prefetch_req *req; /* [K] */
    int64_t prefetched;      /* loads served from a staged record */
};

/* Takes the store (closed by tl_resident_free), registers the run's adapters in it (an entry each; no state is
 * written) and takes their step counts from it. init_from: adapter.init_from or NULL / "". */
tl_status tl_resident_init(tl_resident *r, tl_store *store, tl_lora_pool *pool, tl_lora_pool *ref, tl_backend *be,
                           uint64_t seed, const char *init_from, char *const *names, int n, tl_error *err);
void tl_resident_free(tl_resident *r);

/* Gives each of adapters[0..n) a slot (n <= K); afterwards r->slot_of[adapters[i]] >= 0. */
tl_status tl_resident_acquire(tl_resident *r, const int32_t *adapters, int n, tl_error *err);
/* The listed adapters were trained: their slots are dirty, their step counts copied from the pool. */
void tl_resident_trained(tl_resident *r, const int32_t *adapters, int n);
/* train.store_prefetch: starts the store I/O thread (prefetch.h; joined by tl_resident_free): the next step's
 * records are read and evicted adapters written back while a step computes. */
tl_status tl_resident_prefetch_start(tl_resident *r, tl_error *err);
/* With the prefetch on, after the current step's acquire: starts reading the records of the listed adapters (the
 * next step's, or a superset) that are not resident and have a record. Results never depend on the list: the next
 * acquire uses a staged record only when it is the adapter's current one, and reads the others itself. */
void tl_resident_prefetch(tl_resident *r, const int32_t *adapters, int n);
/* Seconds the I/O thread spent reading records, and writing them (0 with the prefetch off). */
double tl_resident_read_bg_s(tl_resident *r);
double tl_resident_write_bg_s(tl_resident *r);
/* Writes every dirty slot back to the store and waits until every record has landed (the store's index may then
 * be committed, sealed or read). */
tl_status tl_resident_flush(tl_resident *r, tl_error *err);
/* Drops every slot (after a flush): the next acquire loads afresh, in the order asked. */
void tl_resident_evict_all(tl_resident *r);

/* user_shard with many ranks, each training its own adapters over the one shared store: writes back every dirty
 * slot, seals this rank's segment, and gives every rank the whole index (each adapter's entry from the rank that
 * trains it; a sum over ranks, so O(adapters) integers, about as much as a manifest). Every rank calls it at the
 * same points: before a checkpoint's manifest, an evaluation or an export. *bytes_written: the store bytes all
 * ranks appended since they opened it (NULL: not wanted). extra[0..n_extra): entries of adapters no rank trains
 * this round whose records this rank moved (tl_store_compact), published the same way. */
tl_status tl_resident_sync(tl_resident *r, tl_dist *d, const int64_t *extra, int64_t n_extra, uint64_t *bytes_written,
                           tl_error *err);

/* Rewrites a step's batch into slot space: segment slots and row adapters of every micro-batch (and the pairs'
 * owners when PS is given) become slots; *out is B with active and target_count replaced by the caller's
 * slot-space arrays ([K] each). The batcher's own arrays stay in adapter space. */
void tl_resident_remap(const tl_resident *r, tl_step_batch *B, tl_pref_step *PS, int32_t *active_slots,
                       int64_t *target_count_slots, tl_step_batch *out);

/* One adapter's parameters as the store or its initialization has them (host, P floats), for exports and
 * evaluations that stream the population. */
tl_status tl_resident_params(tl_resident *r, int64_t entry, float *params, tl_error *err);

/* Exports every adapter of the store (tl_export_run in format o->format, o NULL: PEFT directories and index.json,
 * in store order), one adapter in memory at a time. Dirty slots are written back first. */
tl_status tl_resident_export(tl_resident *r, const tl_config *cfg, const tl_export_opts *o, const char *out_dir,
                             int *written, tl_error *err);

#endif
