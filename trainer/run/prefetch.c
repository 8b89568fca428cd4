/* prefetch: the store I/O thread (see prefetch.h). */
#include "trainer/run/prefetch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_io.h"

#define NAME_CAP 4097 /* the store's names are at most 4096 bytes */

typedef struct {
    int32_t adapter;
    tl_store_loc loc;
    char name[NAME_CAP];
    unsigned char *rec; /* tl_store_record_bytes(P) */
    const float *params;
    int done; /* under mu */
    tl_status status;
    tl_error err;
} staged;

typedef struct {
    int32_t adapter;
    tl_store_wloc w;
    unsigned char *rec;
    int busy; /* queued or being written (under mu) */
} wslot;

typedef struct {
    int write; /* 0: a read of b[i]; 1: a write of wb[i] */
    int i;
} job;

struct tl_prefetch {
    tl_store_reader rd;
    int n_bufs, n_wbufs, n_read; /* b[0 .. n_read) is the current read list */
    staged *b;                   /* [n_bufs] */
    wslot *wb;                   /* [n_wbufs] */
    job *q;                      /* [n_bufs + n_wbufs]: a ring; every buffer is in at most one job */
    int64_t head, tail;          /* q[head % cap .. tail % cap) are queued; q[head] runs (under mu) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or stop */
    pthread_cond_t done; /* a job is done */
    int stop;
    int reads_queued; /* read jobs not done yet (under mu) */
    double read_s, write_s; /* under mu */
    int64_t reads, writes;
    tl_status wstatus; /* the first failed write (under mu) */
    tl_error werr;
};

static void *run(void *arg) {
    tl_prefetch *pf = arg;
    int cap = pf->n_bufs + pf->n_wbufs;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        while (!pf->stop && pf->head == pf->tail) pthread_cond_wait(&pf->work, &pf->mu);
        if (pf->head == pf->tail) break; /* stop, with nothing left to do */
        job j = pf->q[pf->head % cap];
        int skip = j.write && pf->wstatus != TL_OK;
        pthread_mutex_unlock(&pf->mu);
        /* the job's buffer is this thread's until head moves past it: the main thread waits for that */
        double t0 = tl_now_s();
        tl_status s = TL_OK;
        tl_error e;
        memset(&e, 0, sizeof e);
        if (!j.write) {
            staged *x = &pf->b[j.i];
            memset(&x->err, 0, sizeof x->err);
            x->status = tl_store_read_at(&pf->rd, &x->loc, x->name, x->rec, &x->params, &x->err);
        } else if (!skip) {
            s = tl_store_write_at(&pf->wb[j.i].w, pf->wb[j.i].rec, &e);
        }
        double dt = tl_now_s() - t0;
        pthread_mutex_lock(&pf->mu);
        if (!j.write) {
            pf->b[j.i].done = 1;
            pf->reads_queued--;
            pf->read_s += dt, pf->reads++;
        } else {
            pf->wb[j.i].busy = 0;
            pf->write_s += dt, pf->writes += !skip;
            if (s && !pf->wstatus) pf->wstatus = s, pf->werr = e;
        }
        pf->head++;
        pthread_cond_broadcast(&pf->done);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

static void free_bufs(tl_prefetch *pf) {
    if (pf->b)
        for (int i = 0; i < pf->n_bufs; i++) free(pf->b[i].rec);
    if (pf->wb)
        for (int i = 0; i < pf->n_wbufs; i++) free(pf->wb[i].rec);
    free(pf->b), free(pf->wb), free(pf->q);
}

tl_status tl_prefetch_start(const tl_store_reader *rd, int n_bufs, int n_wbufs, tl_prefetch **out, tl_error *err) {
    *out = NULL;
    if (n_bufs < 1 || n_wbufs < 1)
        return tl_fail(err, TL_ERR_RUNTIME, "store I/O thread: %d read and %d write buffers", n_bufs, n_wbufs);
    tl_prefetch *pf = calloc(1, sizeof *pf);
    if (!pf) return tl_fail(err, TL_ERR_RUNTIME, "store I/O thread: out of host memory");
    pf->rd = *rd;
    pf->n_bufs = n_bufs, pf->n_wbufs = n_wbufs;
    pf->b = calloc((size_t)n_bufs, sizeof *pf->b);
    pf->wb = calloc((size_t)n_wbufs, sizeof *pf->wb);
    pf->q = calloc((size_t)n_bufs + (size_t)n_wbufs, sizeof *pf->q);
    size_t rec = tl_store_record_bytes(rd->P);
    int ok = pf->b && pf->wb && pf->q;
    for (int i = 0; ok && i < n_bufs; i++) ok = (pf->b[i].rec = malloc(rec)) != NULL;
    for (int i = 0; ok && i < n_wbufs; i++) ok = (pf->wb[i].rec = malloc(rec)) != NULL;
    if (!ok) {
        free_bufs(pf);
        free(pf);
        return tl_fail(err, TL_ERR_RUNTIME, "store I/O thread: out of host memory for %d staged records of %zu bytes",
                       n_bufs + n_wbufs, rec);
    }
    int e = pthread_mutex_init(&pf->mu, NULL);
    if (!e && (e = pthread_cond_init(&pf->work, NULL)) != 0) pthread_mutex_destroy(&pf->mu);
    if (!e && (e = pthread_cond_init(&pf->done, NULL)) != 0) {
        pthread_cond_destroy(&pf->work);
        pthread_mutex_destroy(&pf->mu);
    }
    if (!e && (e = pthread_create(&pf->thread, NULL, run, pf)) != 0) {
        pthread_cond_destroy(&pf->done);
        pthread_cond_destroy(&pf->work);
        pthread_mutex_destroy(&pf->mu);
    }
    if (e) {
        free_bufs(pf);
        free(pf);
        return tl_fail(err, TL_ERR_RUNTIME, "store I/O thread: cannot start: %s", strerror(e));
    }
    *out = pf;
    return TL_OK;
}

/* Queues a job (under mu; there is always room: every buffer is in at most one job). */
static void enqueue(tl_prefetch *pf, int write, int i) {
    pf->q[pf->tail % (pf->n_bufs + pf->n_wbufs)] = (job){write, i};
    pf->tail++;
    pthread_cond_signal(&pf->work);
}

double tl_prefetch_wait(tl_prefetch *pf) {
    double t0 = tl_now_s();
    pthread_mutex_lock(&pf->mu);
    while (pf->head != pf->tail) pthread_cond_wait(&pf->done, &pf->mu);
    pthread_mutex_unlock(&pf->mu);
    return tl_now_s() - t0;
}

void tl_prefetch_submit(tl_prefetch *pf, const tl_prefetch_req *reqs, int n) {
    /* the staging buffers are free once the last list's reads are done; writes queued before (this step's
     * write-backs) go on meanwhile, and the reads below run after them */
    pthread_mutex_lock(&pf->mu);
    while (pf->reads_queued > 0) pthread_cond_wait(&pf->done, &pf->mu);
    pthread_mutex_unlock(&pf->mu);
    if (n > pf->n_bufs) n = pf->n_bufs;
    for (int i = 0; i < n; i++) {
        staged *x = &pf->b[i];
        x->adapter = reqs[i].adapter;
        x->loc = reqs[i].loc;
        snprintf(x->name, sizeof x->name, "%s", reqs[i].name);
        x->params = NULL;
        x->status = TL_OK;
        x->done = 0;
    }
    pthread_mutex_lock(&pf->mu);
    pf->n_read = n;
    pf->reads_queued += n;
    for (int i = 0; i < n; i++) enqueue(pf, 0, i);
    pthread_mutex_unlock(&pf->mu);
}

tl_status tl_prefetch_take(tl_prefetch *pf, int32_t adapter, const tl_store_loc *loc, const float **params,
                           tl_error *err) {
    *params = NULL;
    for (int i = 0; i < pf->n_read; i++) {
        staged *x = &pf->b[i];
        pthread_mutex_lock(&pf->mu);
        int done = x->done; /* only what was read (all of it after tl_prefetch_wait) */
        pthread_mutex_unlock(&pf->mu);
        if (!done || x->adapter != adapter || !tl_store_loc_same(&x->loc, loc)) continue;
        if (x->status) {
            if (err) *err = x->err;
            return x->status;
        }
        *params = x->params;
        return TL_OK;
    }
    return TL_OK;
}

int tl_prefetch_wbuf(tl_prefetch *pf, unsigned char **rec, double *waited) {
    double t0 = tl_now_s();
    pthread_mutex_lock(&pf->mu);
    int i = -1;
    for (;;) {
        for (int k = 0; k < pf->n_wbufs && i < 0; k++)
            if (!pf->wb[k].busy) i = k;
        if (i >= 0) break;
        pthread_cond_wait(&pf->done, &pf->mu);
    }
    pthread_mutex_unlock(&pf->mu);
    *rec = pf->wb[i].rec;
    if (waited) *waited += tl_now_s() - t0;
    return i;
}

void tl_prefetch_write(tl_prefetch *pf, int wbuf, int32_t adapter, const tl_store_wloc *w) {
    pthread_mutex_lock(&pf->mu);
    wslot *x = &pf->wb[wbuf];
    x->adapter = adapter;
    x->w = *w;
    x->busy = 1;
    enqueue(pf, 1, wbuf);
    pthread_mutex_unlock(&pf->mu);
}

int tl_prefetch_writing(tl_prefetch *pf, int32_t adapter) {
    int yes = 0;
    pthread_mutex_lock(&pf->mu);
    for (int k = 0; k < pf->n_wbufs && !yes; k++) yes = pf->wb[k].busy && pf->wb[k].adapter == adapter;
    pthread_mutex_unlock(&pf->mu);
    return yes;
}

tl_status tl_prefetch_write_status(tl_prefetch *pf, tl_error *err) {
    pthread_mutex_lock(&pf->mu);
    tl_status s = pf->wstatus;
    if (s && err) *err = pf->werr;
    pthread_mutex_unlock(&pf->mu);
    return s;
}

#define LOCKED_GET(type, name, field)                                                                                  \
    type name(tl_prefetch *pf) {                                                                                       \
        pthread_mutex_lock(&pf->mu);                                                                                   \
        type v = pf->field;                                                                                            \
        pthread_mutex_unlock(&pf->mu);                                                                                 \
        return v;                                                                                                      \
    }
LOCKED_GET(double, tl_prefetch_read_s, read_s)
LOCKED_GET(double, tl_prefetch_write_s, write_s)
LOCKED_GET(int64_t, tl_prefetch_reads, reads)
LOCKED_GET(int64_t, tl_prefetch_writes, writes)
#undef LOCKED_GET

void tl_prefetch_stop(tl_prefetch *pf) {
    if (!pf) return;
    pthread_mutex_lock(&pf->mu);
    pf->stop = 1;
    pthread_cond_signal(&pf->work);
    pthread_mutex_unlock(&pf->mu);
    pthread_join(pf->thread, NULL);
    pthread_cond_destroy(&pf->done);
    pthread_cond_destroy(&pf->work);
    pthread_mutex_destroy(&pf->mu);
    free_bufs(pf);
    free(pf);
}
