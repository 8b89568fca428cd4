/* dist_nccl: the NCCL transport of the CUDA backend (see tl_dist.h).
 *
 * The communicator is created non-blocking (ncclConfig_t.blocking = 0) so that every wait — initialization and
 * each collective — is a poll of ncclCommGetAsyncError and a CUDA event against dist.timeout_s; on an error or
 * the deadline the communicator is aborted (ncclCommAbort) instead of hanging in a kernel that waits for a dead
 * peer. The unique id travels by MPI broadcast when MPI is present, else NCCL_COMM_ID does it (every rank
 * derives the same id from that address), else rank 0 writes it to a file in a shared directory, named by the
 * job id and written atomically, that the other ranks poll. Host-buffer collectives stage through a small
 * device buffer that grows only when a larger message first comes. */
#include "trainer/dist/dist_impl.h"

#ifdef TL_HAVE_NCCL
#include <cuda_runtime.h>
#include <errno.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_io.h"

typedef struct {
    struct tl_dist_transport base;
    struct tl_dist_transport *boot; /* MPI, when the unique id travelled by it (owned: freed with this one) */
    ncclComm_t comm;
    cudaStream_t stream;
    cudaEvent_t done;
    void *stage;
    size_t stage_bytes;
} nccl_transport;

static void nap(int iter) {
    struct timespec ts = {0, iter < 100 ? 20000 : 500000};
    nanosleep(&ts, NULL);
}

static tl_status nccl_fail(tl_dist *d, const char *op, const char *what, const char *why, tl_error *err) {
    d->failed = 1;
    return tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: NCCL %s (%s) failed: %s", d->rank, d->world, op, what, why);
}

/* Waits for the communicator's pending work (ncclInProgress) and, when ev is given, for the event. */
static tl_status nccl_wait(nccl_transport *n, cudaEvent_t ev, const char *op, const char *what, tl_error *err) {
    tl_dist *d = n->base.d;
    double t0 = tl_now_s();
    for (int iter = 0;; iter++) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(n->comm, &st);
        if (r != ncclSuccess) return nccl_fail(d, op, what, ncclGetErrorString(r), err);
        if (st != ncclSuccess && st != ncclInProgress) return nccl_fail(d, op, what, ncclGetErrorString(st), err);
        if (st == ncclSuccess) {
            if (!ev) return TL_OK;
            cudaError_t ce = cudaEventQuery(ev);
            if (ce == cudaSuccess) return TL_OK;
            if (ce != cudaErrorNotReady) return nccl_fail(d, op, what, cudaGetErrorString(ce), err);
        }
        if (tl_now_s() - t0 > d->timeout_s) {
            d->failed = 1;
            return tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: NCCL %s (%s) timed out after %.0f s waiting for the "
                           "other ranks (dist.timeout_s); a rank may have died or hung", d->rank, d->world, op, what,
                           d->timeout_s);
        }
        nap(iter);
    }
}

/* The id file of the shared-directory rendezvous: rank 0 writes it atomically, the others poll for it. */
static tl_status id_by_file(tl_dist *d, const tl_dist_env *e, const char *dir, ncclUniqueId *id, tl_error *err) {
    if (!dir || !dir[0])
        return tl_fail(err, TL_ERR_INPUT, "NCCL rendezvous: no MPI and no NCCL_COMM_ID, and no dist.rendezvous_dir");
    if (!e->job_id[0])
        return tl_fail(err, TL_ERR_INPUT, "NCCL rendezvous by file needs a job id (SLURM_JOB_ID); set NCCL_COMM_ID="
                       "host:port instead");
    char path[4352], tmp[4400];
    snprintf(path, sizeof path, "%s/nccl-id-%s", dir, e->job_id);
    if (e->rank == 0) {
        TL_TRY(tl_mkdir_p(dir, err));
        ncclResult_t r = ncclGetUniqueId(id);
        if (r != ncclSuccess) return nccl_fail(d, "get unique id", path, ncclGetErrorString(r), err);
        snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
        FILE *f = fopen(tmp, "wb");
        if (!f) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot write: %s", tmp, strerror(errno));
        int bad = fwrite(id, sizeof *id, 1, f) != 1;
        bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
        bad |= fclose(f) != 0;
        if (bad || rename(tmp, path) != 0) {
            unlink(tmp);
            return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot write the NCCL id: %s", path, strerror(errno));
        }
        return TL_OK;
    }
    double t0 = tl_now_s();
    for (int iter = 0;; iter++) {
        FILE *f = fopen(path, "rb");
        if (f) {
            int ok = fread(id, sizeof *id, 1, f) == 1;
            fclose(f);
            if (ok) return TL_OK;
        }
        if (tl_now_s() - t0 > d->timeout_s)
            return tl_fail(err, TL_ERR_RUNTIME, "rank %d: no NCCL id from rank 0 in %s after %.0f s (is %s shared by "
                           "every node?)", d->rank, path, d->timeout_s, dir);
        nap(iter + 100);
    }
}

static tl_status nccl_connect(nccl_transport *n, const tl_dist_env *e, const tl_dist_opts *o, tl_error *err) {
    tl_dist *d = n->base.d;
    if (cudaEventCreateWithFlags(&n->done, cudaEventDisableTiming) != cudaSuccess)
        return tl_fail(err, TL_ERR_RUNTIME, "rank %d: cudaEventCreate failed", d->rank);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (tl_dist_mpi_available() && (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK"))) {
        TL_TRY(tl_dist_mpi_create(d, e, &n->boot, err));
        if (e->rank == 0) {
            ncclResult_t r = ncclGetUniqueId(&id);
            if (r != ncclSuccess) return nccl_fail(d, "get unique id", "bootstrap", ncclGetErrorString(r), err);
        }
        TL_TRY(n->boot->bcast(n->boot, &id, sizeof id, 0, "NCCL unique id", err));
    } else if (getenv("NCCL_COMM_ID")) {
        ncclResult_t r = ncclGetUniqueId(&id); /* derived from NCCL_COMM_ID, the same on every rank */
        if (r != ncclSuccess) return nccl_fail(d, "get unique id", "NCCL_COMM_ID", ncclGetErrorString(r), err);
    } else {
        TL_TRY(id_by_file(d, e, o->rendezvous_dir, &id, err));
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&n->comm, e->world, id, e->rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        n->comm = NULL;
        return nccl_fail(d, "communicator init", "bootstrap", ncclGetErrorString(r), err);
    }
    return nccl_wait(n, NULL, "communicator init", "bootstrap", err);
}

static ncclDataType_t nccl_type(tl_dist_dtype t) {
    return t == TL_DT_F32 ? ncclFloat32 : t == TL_DT_F64 ? ncclFloat64 : t == TL_DT_I64 ? ncclInt64 : ncclInt32;
}

static tl_status stage_for(nccl_transport *n, size_t bytes, tl_error *err) {
    tl_dist *d = n->base.d;
    if (bytes <= n->stage_bytes) return TL_OK;
    if (n->stage) cudaFree(n->stage);
    n->stage = NULL, n->stage_bytes = 0;
    if (cudaMalloc(&n->stage, bytes) != cudaSuccess)
        return tl_fail(err, TL_ERR_RUNTIME, "rank %d: cannot allocate %zu bytes of device staging", d->rank, bytes);
    n->stage_bytes = bytes;
    return TL_OK;
}

static tl_status nccl_allreduce(struct tl_dist_transport *tp, void *buf, size_t count, tl_dist_dtype t,
                                tl_dist_op op, int host, const char *what, tl_error *err) {
    nccl_transport *n = (nccl_transport *)tp;
    tl_dist *d = tp->d;
    size_t bytes = count * (t == TL_DT_F32 || t == TL_DT_I32 ? 4 : 8);
    void *dev = buf;
    if (host) {
        TL_TRY(stage_for(n, bytes, err));
        dev = n->stage;
        if (cudaMemcpyAsync(dev, buf, bytes, cudaMemcpyHostToDevice, n->stream) != cudaSuccess)
            return nccl_fail(d, "all-reduce", what, "host to device copy failed", err);
    }
    ncclResult_t r = ncclAllReduce(dev, dev, count, nccl_type(t), op == TL_DOP_SUM ? ncclSum : ncclMax, n->comm,
                                   n->stream);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(d, "all-reduce", what, ncclGetErrorString(r), err);
    TL_TRY(nccl_wait(n, NULL, "all-reduce", what, err)); /* the enqueue itself may be in progress */
    if (host && cudaMemcpyAsync(buf, dev, bytes, cudaMemcpyDeviceToHost, n->stream) != cudaSuccess)
        return nccl_fail(d, "all-reduce", what, "device to host copy failed", err);
    if (cudaEventRecord(n->done, n->stream) != cudaSuccess)
        return nccl_fail(d, "all-reduce", what, "cudaEventRecord failed", err);
    return nccl_wait(n, n->done, "all-reduce", what, err);
}

static tl_status nccl_bcast(struct tl_dist_transport *tp, void *host_buf, size_t bytes, int root, const char *what,
                            tl_error *err) {
    nccl_transport *n = (nccl_transport *)tp;
    tl_dist *d = tp->d;
    TL_TRY(stage_for(n, bytes, err));
    if (cudaMemcpyAsync(n->stage, host_buf, bytes, cudaMemcpyHostToDevice, n->stream) != cudaSuccess)
        return nccl_fail(d, "broadcast", what, "host to device copy failed", err);
    ncclResult_t r = ncclBroadcast(n->stage, n->stage, bytes, ncclUint8, root, n->comm, n->stream);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(d, "broadcast", what, ncclGetErrorString(r), err);
    TL_TRY(nccl_wait(n, NULL, "broadcast", what, err));
    if (cudaMemcpyAsync(host_buf, n->stage, bytes, cudaMemcpyDeviceToHost, n->stream) != cudaSuccess)
        return nccl_fail(d, "broadcast", what, "device to host copy failed", err);
    if (cudaEventRecord(n->done, n->stream) != cudaSuccess)
        return nccl_fail(d, "broadcast", what, "cudaEventRecord failed", err);
    return nccl_wait(n, n->done, "broadcast", what, err);
}

/* ncclCommAbort, then the bootstrap's abort (MPI_Abort ends every rank when MPI carried the id). */
static void nccl_abort(struct tl_dist_transport *tp, int code) {
    nccl_transport *n = (nccl_transport *)tp;
    if (n->comm) ncclCommAbort(n->comm);
    n->comm = NULL;
    if (n->boot) n->boot->abort(n->boot, code);
}

static void nccl_free(struct tl_dist_transport *tp) {
    nccl_transport *n = (nccl_transport *)tp;
    if (n->comm) {
        if (tp->d->failed)
            ncclCommAbort(n->comm);
        else
            ncclCommDestroy(n->comm);
    }
    if (n->stage) cudaFree(n->stage);
    if (n->done) cudaEventDestroy(n->done);
    if (n->boot) n->boot->free(n->boot);
    free(n);
}

tl_status tl_dist_nccl_create(tl_dist *d, const tl_dist_env *e, const tl_dist_opts *o, struct tl_dist_transport **out,
                              tl_error *err) {
    *out = NULL;
    nccl_transport *n = calloc(1, sizeof *n);
    if (!n) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    n->base = (struct tl_dist_transport){.name = "nccl", .d = d, .allreduce = nccl_allreduce, .bcast = nccl_bcast,
                                         .abort = nccl_abort, .free = nccl_free};
    n->stream = (cudaStream_t)o->cuda_stream;
    tl_status s = nccl_connect(n, e, o, err);
    if (s) {
        nccl_free(&n->base);
        return s;
    }
    *out = &n->base;
    return TL_OK;
}
#else
tl_status tl_dist_nccl_create(tl_dist *d, const tl_dist_env *e, const tl_dist_opts *o, struct tl_dist_transport **out,
                              tl_error *err) {
    (void)d, (void)o;
    *out = NULL;
    return tl_fail(err, TL_ERR_INPUT, "%d processes on the cuda backend, but this tailor was built without NCCL",
                   e->world);
}
#endif
