/* dist_mpi: the MPI transport of the CPU backend, and the bootstrap NCCL's unique id may travel by (see tl_dist.h).
 *
 * Every MPI collective is non-blocking and polled against a deadline, on a duplicate of MPI_COMM_WORLD whose
 * error handler returns codes: a dead or stuck peer becomes an error naming this rank instead of a hang. */
#include "trainer/dist/dist_impl.h"

#include <stdlib.h>

#ifdef TL_HAVE_MPI
#include <mpi.h>
#include <sched.h>
#include <time.h>

typedef struct {
    struct tl_dist_transport base;
    int inited;    /* this process called MPI_Init */
    int have_comm; /* comm is a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN */
    MPI_Comm comm;
} mpi_transport;

static tl_status mpi_fail(tl_dist *d, int rc, const char *op, const char *what, tl_error *err) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    d->failed = 1;
    return tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: MPI %s (%s) failed: %s (another rank may have died)", d->rank,
                   d->world, op, what, msg);
}

/* Polls a request until done, an error, or the deadline. Spins briefly, then sleeps in growing steps up to
 * 1 ms, so a waiting rank does not steal the cores of a busy one on a shared node. */
static tl_status mpi_wait(tl_dist *d, MPI_Request *rq, const char *op, const char *what, tl_error *err) {
    double t0 = tl_now_s();
    long sleep_ns = 0;
    for (int iter = 0;; iter++) {
        int flag = 0;
        int rc = MPI_Test(rq, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(d, rc, op, what, err);
        if (flag) return TL_OK;
        if (tl_now_s() - t0 > d->timeout_s) {
            d->failed = 1;
            return tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: MPI %s (%s) timed out after %.0f s waiting for the "
                           "other ranks (dist.timeout_s); a rank may have died or hung", d->rank, d->world, op, what,
                           d->timeout_s);
        }
        if (iter < 200) {
            sched_yield();
        } else {
            sleep_ns = sleep_ns ? (sleep_ns * 2 > 1000000 ? 1000000 : sleep_ns * 2) : 10000;
            struct timespec ts = {0, sleep_ns};
            nanosleep(&ts, NULL);
        }
    }
}

static tl_status mpi_bcast(struct tl_dist_transport *tp, void *buf, size_t bytes, int root, const char *what,
                           tl_error *err) {
    mpi_transport *m = (mpi_transport *)tp;
    MPI_Request rq;
    if (bytes > (size_t)1 << 30) return tl_fail(err, TL_ERR_RUNTIME, "broadcast of %zu bytes is too large", bytes);
    int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, m->comm, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(tp->d, rc, "broadcast", what, err);
    return mpi_wait(tp->d, &rq, "broadcast", what, err);
}

/* MPI runs on the CPU backend: backend memory is host memory, so `host` changes nothing. */
static tl_status mpi_allreduce(struct tl_dist_transport *tp, void *buf, size_t n, tl_dist_dtype t, tl_dist_op op,
                               int host, const char *what, tl_error *err) {
    (void)host;
    mpi_transport *m = (mpi_transport *)tp;
    MPI_Datatype dt = t == TL_DT_F32 ? MPI_FLOAT : t == TL_DT_F64 ? MPI_DOUBLE : t == TL_DT_I64 ? MPI_INT64_T : MPI_INT;
    size_t esz = t == TL_DT_F32 || t == TL_DT_I32 ? 4 : 8;
    const size_t chunk = (size_t)1 << 28; /* MPI counts are int */
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        MPI_Request rq;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * esz, (int)k, dt, op == TL_DOP_SUM ? MPI_SUM : MPI_MAX,
                                m->comm, &rq);
        if (rc != MPI_SUCCESS) return mpi_fail(tp->d, rc, "all-reduce", what, err);
        TL_TRY(mpi_wait(tp->d, &rq, "all-reduce", what, err));
    }
    return TL_OK;
}

static void mpi_abort(struct tl_dist_transport *tp, int code) {
    mpi_transport *m = (mpi_transport *)tp;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(m->have_comm ? m->comm : MPI_COMM_WORLD, code);
}

static void mpi_free(struct tl_dist_transport *tp) {
    mpi_transport *m = (mpi_transport *)tp;
    if (m->have_comm) MPI_Comm_free(&m->comm);
    if (m->inited) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }
    free(m);
}

int tl_dist_mpi_available(void) { return 1; }

static tl_status mpi_connect(mpi_transport *m, const tl_dist_env *e, tl_error *err) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int rc = MPI_Init(NULL, NULL);
        if (rc != MPI_SUCCESS)
            return tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: MPI_Init failed (under Slurm, launch with srun "
                           "--mpi=pmix)", e->rank, e->world);
        m->inited = 1;
    }
    if (MPI_Comm_dup(MPI_COMM_WORLD, &m->comm) != MPI_SUCCESS)
        return tl_fail(err, TL_ERR_RUNTIME, "rank %d: MPI_Comm_dup failed", e->rank);
    m->have_comm = 1;
    MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    int r = -1, w = -1;
    MPI_Comm_rank(m->comm, &r);
    MPI_Comm_size(m->comm, &w);
    if (r != e->rank || w != e->world)
        return tl_fail(err, TL_ERR_INPUT, "rank %d of %d (from the %s environment): MPI says rank %d of %d; under "
                       "Slurm launch with srun --mpi=pmix, else with mpirun", e->rank, e->world, e->source, r, w);
    return TL_OK;
}

tl_status tl_dist_mpi_create(tl_dist *d, const tl_dist_env *e, struct tl_dist_transport **out, tl_error *err) {
    *out = NULL;
    mpi_transport *m = calloc(1, sizeof *m);
    if (!m) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    m->base = (struct tl_dist_transport){
        .name = "mpi", .d = d, .allreduce = mpi_allreduce, .bcast = mpi_bcast, .abort = mpi_abort, .free = mpi_free};
    tl_status s = mpi_connect(m, e, err);
    if (s) {
        mpi_free(&m->base);
        return s;
    }
    *out = &m->base;
    return TL_OK;
}
#else
int tl_dist_mpi_available(void) { return 0; }

tl_status tl_dist_mpi_create(tl_dist *d, const tl_dist_env *e, struct tl_dist_transport **out, tl_error *err) {
    (void)d;
    *out = NULL;
    return tl_fail(err, TL_ERR_INPUT, "%d processes (from the %s environment), but this tailor was built without MPI "
                   "(install libopenmpi-dev and rebuild)", e->world, e->source);
}
#endif
