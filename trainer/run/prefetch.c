/* prefetch: the store reader thread (see prefetch.h). */
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
    tl_status status;
    tl_error err;
} staged;

struct tl_prefetch {
    tl_store_reader rd;
    int n_bufs;
    staged *b;           /* [n_bufs] */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a list was submitted, or stop */
    pthread_cond_t done; /* a record was read */
    int n, next;         /* the list is b[0 .. n); b[next ..) are still to read (under mu) */
    int stop;
    double busy_s;       /* under mu */
    int64_t reads;
};

static void *run(void *arg) {
    tl_prefetch *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        while (!pf->stop && pf->next >= pf->n) pthread_cond_wait(&pf->work, &pf->mu);
        if (pf->stop) break;
        staged *x = &pf->b[pf->next];
        pthread_mutex_unlock(&pf->mu);
        /* x is this thread's until next moves past it: the main thread reads it only after waiting for that */
        double t0 = tl_now_s();
        memset(&x->err, 0, sizeof x->err);
        x->status = tl_store_read_at(&pf->rd, &x->loc, x->name, x->rec, &x->params, &x->err);
        double dt = tl_now_s() - t0;
        pthread_mutex_lock(&pf->mu);
        pf->busy_s += dt;
        pf->reads++;
        pf->next++;
        pthread_cond_broadcast(&pf->done);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

static void free_bufs(tl_prefetch *pf) {
    if (pf->b)
        for (int i = 0; i < pf->n_bufs; i++) free(pf->b[i].rec);
    free(pf->b);
}

tl_status tl_prefetch_start(const tl_store_reader *rd, int n_bufs, tl_prefetch **out, tl_error *err) {
    *out = NULL;
    if (n_bufs < 1) return tl_fail(err, TL_ERR_RUNTIME, "store prefetch: %d staging buffers", n_bufs);
    tl_prefetch *pf = calloc(1, sizeof *pf);
    if (!pf) return tl_fail(err, TL_ERR_RUNTIME, "store prefetch: out of host memory");
    pf->rd = *rd;
    pf->n_bufs = n_bufs;
    pf->b = calloc((size_t)n_bufs, sizeof *pf->b);
    size_t rec = tl_store_record_bytes(rd->P);
    int ok = pf->b != NULL;
    for (int i = 0; ok && i < n_bufs; i++) ok = (pf->b[i].rec = malloc(rec)) != NULL;
    if (!ok) {
        free_bufs(pf);
        free(pf);
        return tl_fail(err, TL_ERR_RUNTIME, "store prefetch: out of host memory for %d staged records of %zu bytes",
                       n_bufs, rec);
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
        return tl_fail(err, TL_ERR_RUNTIME, "store prefetch: cannot start its thread: %s", strerror(e));
    }
    *out = pf;
    return TL_OK;
}

double tl_prefetch_wait(tl_prefetch *pf) {
    double t0 = tl_now_s();
    pthread_mutex_lock(&pf->mu);
    while (pf->next < pf->n) pthread_cond_wait(&pf->done, &pf->mu);
    pthread_mutex_unlock(&pf->mu);
    return tl_now_s() - t0;
}

void tl_prefetch_submit(tl_prefetch *pf, const tl_prefetch_req *reqs, int n) {
    tl_prefetch_wait(pf); /* the thread is idle from here until the list below is published */
    if (n > pf->n_bufs) n = pf->n_bufs;
    for (int i = 0; i < n; i++) {
        staged *x = &pf->b[i];
        x->adapter = reqs[i].adapter;
        x->loc = reqs[i].loc;
        snprintf(x->name, sizeof x->name, "%s", reqs[i].name);
        x->params = NULL;
        x->status = TL_OK;
    }
    pthread_mutex_lock(&pf->mu);
    pf->n = n, pf->next = 0;
    pthread_cond_signal(&pf->work);
    pthread_mutex_unlock(&pf->mu);
}

tl_status tl_prefetch_take(tl_prefetch *pf, int32_t adapter, const tl_store_loc *loc, const float **params,
                           tl_error *err) {
    *params = NULL;
    pthread_mutex_lock(&pf->mu);
    int n = pf->next < pf->n ? pf->next : pf->n; /* only what was read (all of it after tl_prefetch_wait) */
    pthread_mutex_unlock(&pf->mu);
    for (int i = 0; i < n; i++) {
        staged *x = &pf->b[i];
        if (x->adapter != adapter || !tl_store_loc_same(&x->loc, loc)) continue;
        if (x->status) {
            if (err) *err = x->err;
            return x->status;
        }
        *params = x->params;
        return TL_OK;
    }
    return TL_OK;
}

double tl_prefetch_busy_s(tl_prefetch *pf) {
    pthread_mutex_lock(&pf->mu);
    double s = pf->busy_s;
    pthread_mutex_unlock(&pf->mu);
    return s;
}

int64_t tl_prefetch_reads(tl_prefetch *pf) {
    pthread_mutex_lock(&pf->mu);
    int64_t n = pf->reads;
    pthread_mutex_unlock(&pf->mu);
    return n;
}

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
