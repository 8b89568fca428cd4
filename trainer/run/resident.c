/* resident: a pool of K slots over an adapter store (see resident.h). */
#include "trainer/run/resident.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_io.h"
#include "trainer/run/prefetch.h"
#include "trainer/run/tl_export.h"

tl_status tl_resident_init(tl_resident *r, tl_store *store, tl_lora_pool *pool, tl_lora_pool *ref, tl_backend *be,
                           uint64_t seed, const char *init_from, char *const *names, int n, tl_error *err) {
    memset(r, 0, sizeof *r);
    r->store = store, r->pool = pool, r->ref = ref, r->be = be, r->seed = seed;
    if (init_from && init_from[0]) {
        tl_status s = tl_init_from_open(&r->init_from_src, init_from, err);
        if (s) {
            tl_store_close(store);
            r->store = NULL;
            return s;
        }
        r->init_from = &r->init_from_src;
    }
    r->n = n, r->names = names;
    int K = pool->n_slots;
    size_t nn = (size_t)(n > 0 ? n : 1), nk = (size_t)K;
    r->entry = malloc(nn * sizeof *r->entry);
    r->slot_of = malloc(nn * sizeof *r->slot_of);
    r->steps = calloc(nn, sizeof *r->steps);
    r->adapter_of = malloc(nk * sizeof *r->adapter_of);
    r->dirty = calloc(nk, 1);
    r->used = calloc(nk, sizeof *r->used);
    r->rec = malloc(tl_store_record_bytes(pool->P)); /* a whole record: write-backs fill it in place */
    r->host = r->rec ? tl_store_record_body(r->rec) : NULL;
    if (!r->entry || !r->slot_of || !r->steps || !r->adapter_of || !r->dirty || !r->used || !r->rec) {
        tl_resident_free(r);
        return tl_fail(err, TL_ERR_RUNTIME, "adapter store: out of host memory for %d adapters", n);
    }
    for (int a = 0; a < n; a++) {
        tl_status s = tl_store_add(store, names[a], &r->entry[a], err);
        if (s) {
            tl_resident_free(r);
            return s;
        }
        r->slot_of[a] = -1;
        r->steps[a] = tl_store_meta_at(store, r->entry[a])->steps;
    }
    for (int k = 0; k < K; k++) r->adapter_of[k] = -1;
    return TL_OK;
}

void tl_resident_free(tl_resident *r) {
    tl_prefetch_stop(r->pf); /* joined before the store and the names it reads go */
    free(r->req);
    if (r->init_from) tl_init_from_close(&r->init_from_src);
    tl_store_close(r->store);
    free(r->entry), free(r->slot_of), free(r->steps), free(r->adapter_of), free(r->dirty), free(r->used);
    free(r->rec);
    memset(r, 0, sizeof *r);
}

/* With the I/O thread: waits for every queued read and write, and makes the store's index whole again (every
 * reserved record landed). A write that failed fails here. */
static tl_status settle(tl_resident *r, tl_error *err) {
    if (!r->pf) return TL_OK;
    double w = tl_prefetch_wait(r->pf);
    r->io_s += w, r->wait_s += w;
    TL_TRY(tl_prefetch_write_status(r->pf, err));
    tl_store_landed(r->store);
    return TL_OK;
}

/* Writes the slot's state back, downloaded straight into a record: one of the I/O thread's buffers, which it
 * checksums and writes while the step computes (write-behind), or, with no thread, r->rec, written here. */
static tl_status write_back(tl_resident *r, int slot, tl_error *err) {
    int a = r->adapter_of[slot];
    tl_lora_pool *p = r->pool;
    size_t P = p->P, off = (size_t)slot * P;
    double t0 = tl_now_s();
    unsigned char *rec = r->rec;
    int wbuf = r->pf ? tl_prefetch_wbuf(r->pf, &rec, &r->wait_s) : -1;
    float *params = tl_store_record_body(rec);
    r->be->download(r->be, params, p->params + off, P * sizeof(float));
    r->be->download(r->be, params + P, p->m + off, P * sizeof(float));
    r->be->download(r->be, params + 2 * P, p->v + off, P * sizeof(float));
    TL_TRY(r->be->status(r->be, err));
    tl_store_wloc w;
    TL_TRY(tl_store_reserve(r->store, r->entry[a], p->steps[slot], rec, &w, err));
    if (r->pf) {
        tl_prefetch_write(r->pf, wbuf, a, &w);
    } else {
        TL_TRY(tl_store_write_at(&w, rec, err));
        tl_store_landed(r->store);
    }
    r->dirty[slot] = 0;
    r->writebacks++;
    r->io_s += tl_now_s() - t0;
    r->wb_s += tl_now_s() - t0;
    return TL_OK;
}

tl_status tl_resident_params(tl_resident *r, int64_t entry, float *params, tl_error *err) {
    TL_TRY(settle(r, err));
    const tl_store_meta *m = tl_store_meta_at(r->store, entry);
    if (m->has_state) return tl_store_read(r->store, entry, params, NULL, NULL, err);
    if (!r->init_from) {
        tl_lora_fresh_params(r->pool, r->seed, tl_store_name(r->store, entry), params);
        return TL_OK;
    }
    /* through slot 0 of the pool: callers stream outside the step loop, with every slot written back */
    tl_lora_pool *p = r->pool;
    if (r->adapter_of[0] >= 0 && r->dirty[0]) TL_TRY(write_back(r, 0, err));
    if (r->adapter_of[0] >= 0) r->slot_of[r->adapter_of[0]] = -1, r->adapter_of[0] = -1;
    TL_TRY(tl_lora_pool_set_slot(p, r->be, 0, tl_store_name(r->store, entry), r->host, NULL, NULL, 0, err));
    TL_TRY(tl_init_from_load(r->init_from, p, r->be, 0, err));
    r->be->download(r->be, params, p->params, p->P * sizeof(float));
    return r->be->status(r->be, err);
}

/* Brings adapter a into slot k. */
static tl_status load(tl_resident *r, int a, int k, tl_error *err) {
    tl_lora_pool *p = r->pool;
    size_t P = p->P;
    double t0 = tl_now_s();
    const tl_store_meta *meta = tl_store_meta_at(r->store, r->entry[a]);
    if (meta->has_state) {
        const float *staged = NULL;
        if (r->pf) { /* the record as the prefetch read it, when it read the entry's current one */
            tl_store_loc loc;
            tl_store_loc_of(r->store, r->entry[a], &loc);
            TL_TRY(tl_prefetch_take(r->pf, a, &loc, &staged, err));
        }
        if (staged) {
            TL_TRY(tl_lora_pool_set_slot(p, r->be, k, r->names[a], staged, staged + P, staged + 2 * P, meta->steps,
                                         err));
            r->prefetched++;
        } else {
            /* evicted a moment ago by this acquire, its record may still be on its way to the store */
            if (r->pf && tl_prefetch_writing(r->pf, a)) TL_TRY(settle(r, err));
            float *params = r->host, *m = r->host + P, *v = r->host + 2 * P;
            TL_TRY(tl_store_read(r->store, r->entry[a], params, m, v, err));
            TL_TRY(tl_lora_pool_set_slot(p, r->be, k, r->names[a], params, m, v, meta->steps, err));
        }
        r->loads++;
    } else {
        tl_lora_fresh_params(p, r->seed, r->names[a], r->host);
        TL_TRY(tl_lora_pool_set_slot(p, r->be, k, r->names[a], r->host, NULL, NULL, 0, err));
        if (r->init_from) TL_TRY(tl_init_from_load(r->init_from, p, r->be, k, err));
        r->inits++;
    }
    if (r->ref) { /* the DPO reference: the adapter as adapter.init_from has it, never trained */
        tl_lora_fresh_params(r->ref, r->seed, r->names[a], r->host);
        TL_TRY(tl_lora_pool_set_slot(r->ref, r->be, k, r->names[a], r->host, NULL, NULL, 0, err));
        TL_TRY(tl_init_from_load(r->init_from, r->ref, r->be, k, err));
    }
    r->slot_of[a] = k, r->adapter_of[k] = a, r->dirty[k] = 0;
    r->steps[a] = p->steps[k];
    r->io_s += tl_now_s() - t0;
    return TL_OK;
}

tl_status tl_resident_acquire(tl_resident *r, const int32_t *adapters, int n, tl_error *err) {
    int K = r->pool->n_slots;
    if (n > K)
        return tl_fail(err, TL_ERR_RUNTIME, "adapter store: a step of %d adapters for a pool of %d slots", n, K);
    r->tick++;
    /* the thread is idle from here until this acquire's first write-back or the next tl_resident_prefetch */
    TL_TRY(settle(r, err));
    for (int i = 0; i < n; i++) {
        int k = r->slot_of[adapters[i]];
        if (k >= 0) r->used[k] = r->tick;
    }
    int scan = 0;
    for (int i = 0; i < n; i++) {
        int a = adapters[i];
        if (r->slot_of[a] >= 0) continue;
        /* a free slot, else the least recently used one this step does not need */
        int best = -1;
        for (int k = 0; k < K; k++) {
            int q = (scan + k) % K;
            if (r->adapter_of[q] < 0) {
                best = q;
                break;
            }
            if (r->used[q] != r->tick && (best < 0 || r->used[q] < r->used[best])) best = q;
        }
        if (best < 0) return tl_fail(err, TL_ERR_RUNTIME, "adapter store: no slot free for adapter %d", a);
        scan = (best + 1) % K;
        if (r->adapter_of[best] >= 0) {
            if (r->dirty[best]) TL_TRY(write_back(r, best, err));
            r->slot_of[r->adapter_of[best]] = -1;
            r->adapter_of[best] = -1;
        }
        TL_TRY(load(r, a, best, err));
        r->used[best] = r->tick;
    }
    return TL_OK;
}

tl_status tl_resident_prefetch_start(tl_resident *r, tl_error *err) {
    int K = r->pool->n_slots;
    r->req = malloc((size_t)K * sizeof *r->req);
    if (!r->req) return tl_fail(err, TL_ERR_RUNTIME, "adapter store: out of host memory for the prefetch");
    tl_store_reader rd;
    tl_store_reader_of(r->store, &rd);
    return tl_prefetch_start(&rd, K, K, &r->pf, err);
}

/* Which records may be read while the main thread goes on: the listed adapters are not resident, so nothing
 * writes their entries until the next acquire (write_back writes resident slots only, and the next acquire waits
 * for the thread first). A record being written back by this step (evicted by the acquire just done) is read
 * after its write: the thread runs its jobs in order. Every other record was written whole before the snapshot
 * and is never overwritten; the write-backs, checkpoints and prunes that run meanwhile append to the open
 * segment, close it, or remove segments no entry points into, and these entries point into theirs. */
void tl_resident_prefetch(tl_resident *r, const int32_t *adapters, int n) {
    if (!r->pf) return;
    int K = r->pool->n_slots, m = 0;
    for (int i = 0; i < n && m < K; i++) {
        int a = adapters[i];
        if (a < 0 || a >= r->n || r->slot_of[a] >= 0) continue;
        tl_prefetch_req *q = &r->req[m];
        if (!tl_store_loc_of(r->store, r->entry[a], &q->loc)) continue; /* initialized, not read */
        q->adapter = a, q->name = r->names[a];
        m++;
    }
    tl_prefetch_submit(r->pf, r->req, m);
}

double tl_resident_read_bg_s(tl_resident *r) { return r->pf ? tl_prefetch_read_s(r->pf) : 0.0; }
double tl_resident_write_bg_s(tl_resident *r) { return r->pf ? tl_prefetch_write_s(r->pf) : 0.0; }

void tl_resident_trained(tl_resident *r, const int32_t *adapters, int n) {
    for (int i = 0; i < n; i++) {
        int k = r->slot_of[adapters[i]];
        if (k < 0) continue;
        r->dirty[k] = 1;
        r->steps[adapters[i]] = r->pool->steps[k];
    }
}

tl_status tl_resident_flush(tl_resident *r, tl_error *err) {
    for (int k = 0; k < r->pool->n_slots; k++)
        if (r->adapter_of[k] >= 0 && r->dirty[k]) TL_TRY(write_back(r, k, err));
    return settle(r, err);
}

void tl_resident_evict_all(tl_resident *r) {
    for (int k = 0; k < r->pool->n_slots; k++) {
        if (r->adapter_of[k] >= 0) r->slot_of[r->adapter_of[k]] = -1;
        r->adapter_of[k] = -1, r->dirty[k] = 0, r->used[k] = 0;
    }
}

void tl_resident_remap(const tl_resident *r, tl_step_batch *B, tl_pref_step *PS, int32_t *active_slots,
                       int64_t *target_count_slots, tl_step_batch *out) {
    const int32_t *slot = r->slot_of;
    for (int k = 0; k < B->n_mb; k++) {
        tl_host_mb *mb = &B->mb[k];
        for (int j = 0; j < mb->n_seg; j++)
            if (mb->segs[j].slot >= 0) mb->segs[j].slot = slot[mb->segs[j].slot];
        for (int i = 0; i < mb->n_tok; i++) mb->adapter[i] = slot[mb->adapter[i]];
    }
    if (PS)
        for (int64_t q = 0; q < PS->n_pairs; q++) PS->pairs[q].adapter = slot[PS->pairs[q].adapter];
    memset(target_count_slots, 0, (size_t)r->pool->n_slots * sizeof *target_count_slots);
    for (int i = 0; i < B->n_active; i++) {
        int a = B->active[i], s = slot[a];
        active_slots[i] = s;
        target_count_slots[s] = B->target_count[a];
    }
    *out = *B;
    out->active = active_slots;
    out->target_count = target_count_slots;
}

/* ---- streaming the population: exports ---- */

typedef struct {
    tl_resident *r;
} export_ctx;

static tl_status export_read(void *ctx, int k, size_t first, float *dst, size_t n, tl_error *err) {
    tl_resident *r = ((export_ctx *)ctx)->r;
    size_t P = r->pool->P;
    if (k != 0 || first % P != 0 || n != P)
        return tl_fail(err, TL_ERR_RUNTIME, "adapter store: export reads one adapter's parameters at a time");
    return tl_resident_params(r, (int64_t)(first / P), dst, err);
}

tl_status tl_resident_export(tl_resident *r, const tl_config *cfg, const tl_export_opts *o, const char *out_dir,
                             int *written, tl_error *err) {
    int64_t N = tl_store_count(r->store);
    if (N > INT32_MAX) return tl_fail(err, TL_ERR_RUNTIME, "adapter store: %lld adapters", (long long)N);
    TL_TRY(tl_resident_flush(r, err));
    char **names = malloc((size_t)(N ? N : 1) * sizeof *names);
    int64_t *steps = malloc((size_t)(N ? N : 1) * sizeof *steps);
    if (!names || !steps) {
        free(names), free(steps);
        return tl_fail(err, TL_ERR_RUNTIME, "adapter store: out of host memory listing %lld adapters", (long long)N);
    }
    for (int64_t i = 0; i < N; i++) {
        names[i] = (char *)tl_store_name(r->store, i);
        steps[i] = tl_store_meta_at(r->store, i)->steps;
    }
    /* the shape; the rows come from the store, one adapter at a time */
    tl_lora_pool layout = tl_lora_pool_layout(r->pool, (int)N, names, steps);
    export_ctx c = {.r = r};
    tl_state_reader rd = {.read = export_read, .ctx = &c};
    tl_export_opts peft = {.format = TL_EXPORT_PEFT, .base_model = cfg->model_path};
    tl_status s = tl_export_run(&layout, &rd, cfg, o ? o : &peft, out_dir, written, err);
    free(names), free(steps);
    return s;
}

/* ---- many ranks (user_shard) ---- */

tl_status tl_resident_sync(tl_resident *r, tl_dist *d, const int64_t *extra, int64_t n_extra, uint64_t *bytes_written,
                           tl_error *err) {
    TL_TRY(tl_resident_flush(r, err));
    TL_TRY(tl_store_seal(r->store, err));
    int64_t N = tl_store_count(r->store);
    enum { W = TL_STORE_ENTRY_WORDS + 1 }; /* an entry, then its owner count */
    /* + the check that every rank has the same index, and the bytes every rank wrote */
    size_t n = (size_t)N * W + 2;
    int64_t *buf = calloc(n, sizeof *buf);
    if (!buf) return tl_fail(err, TL_ERR_RUNTIME, "adapter store: out of host memory for %lld entries", (long long)N);
    for (int a = 0; a < r->n; a++) {
        int64_t e = r->entry[a];
        tl_store_entry_pack(r->store, e, buf + (size_t)e * W);
        buf[(size_t)e * W + W - 1] = 1;
    }
    for (int64_t k = 0; k < n_extra; k++) { /* entries this rank moved (compaction: adapters outside the round) */
        int64_t e = extra[k];
        tl_store_entry_pack(r->store, e, buf + (size_t)e * W);
        buf[(size_t)e * W + W - 1] += 1;
    }
    buf[n - 2] = N;
    buf[n - 1] = (int64_t)tl_store_bytes_written(r->store);
    tl_status s = tl_dist_allreduce_i64_host(d, buf, n, "adapter store index", err);
    int world = tl_dist_world(d);
    if (!s && buf[n - 2] != N * world)
        s = tl_fail(err, TL_ERR_RUNTIME, "adapter store: the ranks hold indexes of different sizes (%lld here)",
                    (long long)N);
    for (int64_t e = 0; !s && e < N; e++) {
        int64_t owners = buf[(size_t)e * W + W - 1];
        if (owners > 1)
            s = tl_fail(err, TL_ERR_RUNTIME, "adapter store: adapter '%.100s' is trained by %lld ranks",
                        tl_store_name(r->store, e), (long long)owners);
        else if (owners == 1) /* the owner's entry; an adapter nobody trains this round is the same everywhere */
            s = tl_store_entry_unpack(r->store, e, buf + (size_t)e * W, err);
    }
    if (!s && bytes_written) *bytes_written = (uint64_t)buf[n - 1];
    free(buf);
    return s;
}
