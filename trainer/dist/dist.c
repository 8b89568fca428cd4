/* dist: the process's place in the run (environment) and the MPI transport (see tl_dist.h).
 *
 * Every MPI collective is non-blocking and polled against a deadline, on a duplicate of MPI_COMM_WORLD whose
 * error handler returns codes: a dead or stuck peer becomes an error naming this rank instead of a hang. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "trainer/dist/tl_dist.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "trainer/dist/dist_impl.h"
#include "kernels/tl_text.h"

#ifdef TL_HAVE_MPI
#include <mpi.h>
#endif


/* ---- environment ---- */

/* A non-negative decimal integer from the environment: 1 if present and valid, 0 if absent, error if bad. */
static tl_status env_int(const char *name, int *out, int *present, tl_error *err) {
    const char *v = getenv(name);
    *present = 0;
    if (!v || !v[0]) return TL_OK;
    /* the one strict integer reader (tl_text.h): " 5", "5x" and "1e3" are refused, not read as 5 */
    int64_t x;
    if (tl_parse_i64(name, v, 0, 1000000, &x, err) != TL_OK)
        return tl_fail(err, TL_ERR_INPUT, "environment variable %s=%s: expected an integer in [0, 1000000]", name, v);
    *out = (int)x;
    *present = 1;
    return TL_OK;
}

/* A decimal count in [0, 1000000] at *p, advancing *p past it; -1 if there is none or it is out of range. */
static long slurm_count(const char **p) {
    long v = 0;
    const char *s = *p;
    if (*s < '0' || *s > '9') return -1;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (*s - '0');
        if (v > 1000000) return -1;
    }
    *p = s;
    return v;
}

/* SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE: "2(x3),1" -> tasks on node number `node`; 0 (unknown, the
 * caller falls back) when the value is malformed or its counts are absurd, never an overflowed count. */
static int slurm_tasks_on_node(const char *spec, int node) {
    long idx = 0;
    for (const char *p = spec; p && *p;) {
        long n = slurm_count(&p), rep = 1;
        if (n < 0) return 0;
        if (p[0] == '(' && p[1] == 'x') {
            p += 2;
            if ((rep = slurm_count(&p)) < 0 || *p != ')') return 0;
            p++;
        }
        if (node < idx + rep) return (int)n;
        idx += rep;
        if (*p == ',') p++;
        else if (*p) return 0;
    }
    return 0;
}

tl_status tl_dist_env_detect(tl_dist_env *e, tl_error *err) {
    memset(e, 0, sizeof *e);
    e->world = 1, e->local_world = 1;
    snprintf(e->source, sizeof e->source, "single");
    int has_r = 0, has_w = 0, has_lr = 0, has_lw = 0;
    const char *rn, *wn;
    if (getenv("OMPI_COMM_WORLD_SIZE")) {
        rn = "OMPI_COMM_WORLD_RANK", wn = "OMPI_COMM_WORLD_SIZE";
        TL_TRY(env_int(rn, &e->rank, &has_r, err));
        TL_TRY(env_int(wn, &e->world, &has_w, err));
        TL_TRY(env_int("OMPI_COMM_WORLD_LOCAL_RANK", &e->local_rank, &has_lr, err));
        TL_TRY(env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &e->local_world, &has_lw, err));
        snprintf(e->source, sizeof e->source, "openmpi");
    } else if (getenv("SLURM_PROCID") && getenv("SLURM_STEP_NUM_TASKS")) {
        /* only inside a job step (srun): the batch script itself also has SLURM_PROCID=0 and SLURM_NTASKS, but
         * it is one process, not a rank of the step */
        rn = "SLURM_PROCID", wn = "SLURM_STEP_NUM_TASKS";
        TL_TRY(env_int(rn, &e->rank, &has_r, err));
        TL_TRY(env_int(wn, &e->world, &has_w, err));
        TL_TRY(env_int("SLURM_LOCALID", &e->local_rank, &has_lr, err));
        int node = 0, has_node = 0;
        TL_TRY(env_int("SLURM_NODEID", &node, &has_node, err));
        const char *tpn = getenv("SLURM_STEP_TASKS_PER_NODE");
        int lw = tpn ? slurm_tasks_on_node(tpn, node) : 0;
        e->local_world = lw > 0 ? lw : 1;
        has_lw = lw > 0;
        snprintf(e->source, sizeof e->source, "slurm");
    } else if (getenv("WORLD_SIZE")) {
        rn = "RANK", wn = "WORLD_SIZE";
        TL_TRY(env_int(rn, &e->rank, &has_r, err));
        TL_TRY(env_int(wn, &e->world, &has_w, err));
        TL_TRY(env_int("LOCAL_RANK", &e->local_rank, &has_lr, err));
        TL_TRY(env_int("LOCAL_WORLD_SIZE", &e->local_world, &has_lw, err));
        snprintf(e->source, sizeof e->source, "env");
    } else {
        return TL_OK;
    }
    if (!has_r) return tl_fail(err, TL_ERR_INPUT, "environment: %s is set but %s is not", wn, rn);
    if (e->world < 1) return tl_fail(err, TL_ERR_INPUT, "environment variable %s=0: expected at least 1", wn);
    if (e->rank >= e->world)
        return tl_fail(err, TL_ERR_INPUT, "environment: %s=%d is not below %s=%d", rn, e->rank, wn, e->world);
    if (!has_lr) e->local_rank = e->rank;
    if (!has_lw) e->local_world = e->world;
    if (e->local_world < 1) e->local_world = 1;
    if (e->local_rank >= e->local_world)
        return tl_fail(err, TL_ERR_INPUT, "environment: local rank %d is not below the %d process(es) of this node",
                       e->local_rank, e->local_world);
    const char *job = getenv("SLURM_JOB_ID");
    const char *restart = getenv("SLURM_RESTART_COUNT");
    if (job)
        snprintf(e->job_id, sizeof e->job_id, "%s.%s", job, restart ? restart : "0");
    else if ((job = getenv("OMPI_MCA_orte_ess_jobid")) || (job = getenv("TORCHELASTIC_RUN_ID")))
        snprintf(e->job_id, sizeof e->job_id, "%s", job);
    return TL_OK;
}

int tl_dist_cuda_device(const tl_dist_env *e, int n_visible) {
    if (n_visible <= 1) return 0;
    return e->local_rank % n_visible;
}

int tl_dist_cpu_threads(const tl_dist_env *e) {
    cpu_set_t set;
    int mine = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) mine = CPU_COUNT(&set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (mine <= 0) mine = online > 0 ? (int)online : 1;
    /* a launcher that bound this process to a share of the cores (mpirun's default binding, srun with
     * --cpus-per-task) already divided them; otherwise the node's processes split the cores they all see */
    if (online > 0 && mine < online) return mine;
    int t = mine / (e->local_world > 0 ? e->local_world : 1);
    return t > 0 ? t : 1;
}

/* ---- adapter ownership ---- */

typedef struct {
    double cost;
    int idx;
} cost_idx;

static int by_cost_desc(const void *x, const void *y) {
    const cost_idx *a = x, *b = y;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

void tl_dist_assign_owners(const double *cost, int n, int world, int *owner) {
    cost_idx *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    double *load = calloc((size_t)world, sizeof *load);
    int *count = calloc((size_t)world, sizeof *count);
    if (!order || !load || !count) { /* out of memory: a deterministic round robin is still a valid assignment */
        for (int a = 0; a < n; a++) owner[a] = a % world;
        free(order), free(load), free(count);
        return;
    }
    for (int a = 0; a < n; a++) order[a] = (cost_idx){cost[a] > 0 ? cost[a] : 0, a};
    qsort(order, (size_t)n, sizeof *order, by_cost_desc);
    for (int k = 0; k < n; k++) {
        /* the least loaded rank, then the one with fewest adapters (so zero costs still spread: with n >= world
         * every rank owns at least one adapter), then the lowest; a scan, as world is small next to n */
        int r = 0;
        for (int q = 1; q < world; q++)
            if (load[q] < load[r] || (load[q] == load[r] && count[q] < count[r])) r = q;
        owner[order[k].idx] = r;
        load[r] += order[k].cost;
        count[r]++;
    }
    free(order), free(load), free(count);
}

/* ---- MPI ---- */

#ifdef TL_HAVE_MPI
static MPI_Comm *comm_of(tl_dist *d) { return (MPI_Comm *)d->mpi_comm; }

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

int tl_dist_mpi_available(void) { return 1; }

tl_status tl_dist_mpi_start(tl_dist *d, const tl_dist_env *e, tl_error *err) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int rc = MPI_Init(NULL, NULL);
        if (rc != MPI_SUCCESS)
            return tl_fail(err, TL_ERR_RUNTIME, "rank %d of %d: MPI_Init failed (under Slurm, launch with srun "
                           "--mpi=pmix)", e->rank, e->world);
        d->mpi_inited = 1;
    }
    MPI_Comm *c = malloc(sizeof *c);
    if (!c) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    if (MPI_Comm_dup(MPI_COMM_WORLD, c) != MPI_SUCCESS) {
        free(c);
        return tl_fail(err, TL_ERR_RUNTIME, "rank %d: MPI_Comm_dup failed", e->rank);
    }
    d->mpi_comm = c;
    MPI_Comm_set_errhandler(*c, MPI_ERRORS_RETURN);
    int r = -1, w = -1;
    MPI_Comm_rank(*c, &r);
    MPI_Comm_size(*c, &w);
    if (r != e->rank || w != e->world)
        return tl_fail(err, TL_ERR_INPUT, "rank %d of %d (from the %s environment): MPI says rank %d of %d; under "
                       "Slurm launch with srun --mpi=pmix, else with mpirun", e->rank, e->world, e->source, r, w);
    return TL_OK;
}

tl_status tl_dist_mpi_bcast(tl_dist *d, void *buf, size_t bytes, int root, const char *what, tl_error *err) {
    MPI_Request rq;
    if (bytes > (size_t)1 << 30) return tl_fail(err, TL_ERR_RUNTIME, "broadcast of %zu bytes is too large", bytes);
    int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, *comm_of(d), &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(d, rc, "broadcast", what, err);
    return mpi_wait(d, &rq, "broadcast", what, err);
}

static tl_status mpi_allreduce(tl_dist *d, void *buf, size_t n, tl_dist_dtype t, tl_dist_op op, const char *what,
                               tl_error *err) {
    MPI_Datatype dt = t == TL_DT_F32 ? MPI_FLOAT : t == TL_DT_F64 ? MPI_DOUBLE : t == TL_DT_I64 ? MPI_INT64_T : MPI_INT;
    size_t esz = t == TL_DT_F32 || t == TL_DT_I32 ? 4 : 8;
    const size_t chunk = (size_t)1 << 28; /* MPI counts are int */
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        MPI_Request rq;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * esz, (int)m, dt, op == TL_DOP_SUM ? MPI_SUM : MPI_MAX,
                                *comm_of(d), &rq);
        if (rc != MPI_SUCCESS) return mpi_fail(d, rc, "all-reduce", what, err);
        TL_TRY(mpi_wait(d, &rq, "all-reduce", what, err));
    }
    return TL_OK;
}
#else
int tl_dist_mpi_available(void) { return 0; }
tl_status tl_dist_mpi_start(tl_dist *d, const tl_dist_env *e, tl_error *err) {
    (void)d;
    return tl_fail(err, TL_ERR_INPUT, "%d processes (from the %s environment), but this tailor was built without MPI "
                   "(install libopenmpi-dev and rebuild)", e->world, e->source);
}
tl_status tl_dist_mpi_bcast(tl_dist *d, void *buf, size_t bytes, int root, const char *what, tl_error *err) {
    (void)d, (void)buf, (void)bytes, (void)root, (void)what;
    return tl_fail(err, TL_ERR_RUNTIME, "MPI broadcast in a build without MPI");
}
#endif

/* ---- the public API ---- */

tl_status tl_dist_init(const tl_dist_env *e, const tl_dist_opts *o, tl_dist **out, tl_error *err) {
    *out = NULL;
    if (!(o->timeout_s > 0)) return tl_fail(err, TL_ERR_INPUT, "dist.timeout_s: expected > 0");
    tl_dist *d = calloc(1, sizeof *d);
    if (!d) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    d->rank = e->rank, d->world = e->world, d->timeout_s = o->timeout_s, d->transport = "none";
    tl_status s = TL_OK;
    if (e->world > 1 || o->force) {
        if (o->backend && !strcmp(o->backend, "cuda")) {
#ifdef TL_HAVE_NCCL
            s = tl_nccl_init(d, e, o, o->cuda_stream, err);
            if (!s) d->transport = "nccl";
#else
            s = tl_fail(err, TL_ERR_INPUT, "%d processes on the cuda backend, but this tailor was built without NCCL",
                        e->world);
#endif
        } else {
            s = tl_dist_mpi_start(d, e, err);
            if (!s) d->transport = "mpi";
        }
    }
    if (s) {
        tl_dist_free(d);
        return s;
    }
    *out = d;
    return TL_OK;
}

int tl_dist_rank(const tl_dist *d) { return d ? d->rank : 0; }
int tl_dist_world(const tl_dist *d) { return d ? d->world : 1; }
const char *tl_dist_transport(const tl_dist *d) { return d ? d->transport : "none"; }

static tl_status reduce(tl_dist *d, void *buf, size_t n, tl_dist_dtype t, tl_dist_op op, int host, const char *what,
                        tl_error *err) {
    if (!d || !strcmp(d->transport, "none")) return TL_OK;
    if (d->failed) return tl_fail(err, TL_ERR_RUNTIME, "rank %d: collective after a failed one (%s)", d->rank, what);
#ifdef TL_HAVE_NCCL
    if (d->nccl) return tl_nccl_allreduce(d, buf, n, t, op, host, what, err);
#endif
#ifdef TL_HAVE_MPI
    (void)host; /* MPI runs on the CPU backend: backend memory is host memory */
    return mpi_allreduce(d, buf, n, t, op, what, err);
#else
    (void)buf, (void)n, (void)t, (void)op, (void)host;
    return tl_fail(err, TL_ERR_RUNTIME, "rank %d: no transport for %s", d->rank, what);
#endif
}

tl_status tl_dist_allreduce_f32(tl_dist *d, float *buf, size_t n, const char *what, tl_error *err) {
    return reduce(d, buf, n, TL_DT_F32, TL_DOP_SUM, 0, what, err);
}
tl_status tl_dist_allreduce_f32_host(tl_dist *d, float *buf, size_t n, const char *what, tl_error *err) {
    return reduce(d, buf, n, TL_DT_F32, TL_DOP_SUM, 1, what, err);
}
tl_status tl_dist_allreduce_f64_host(tl_dist *d, double *buf, size_t n, const char *what, tl_error *err) {
    return reduce(d, buf, n, TL_DT_F64, TL_DOP_SUM, 1, what, err);
}
tl_status tl_dist_allreduce_i64_host(tl_dist *d, int64_t *buf, size_t n, const char *what, tl_error *err) {
    return reduce(d, buf, n, TL_DT_I64, TL_DOP_SUM, 1, what, err);
}
tl_status tl_dist_allreduce_max_int_host(tl_dist *d, int *buf, size_t n, const char *what, tl_error *err) {
    return reduce(d, buf, n, TL_DT_I32, TL_DOP_MAX, 1, what, err);
}

tl_status tl_dist_bcast_host(tl_dist *d, void *buf, size_t bytes, int root, const char *what, tl_error *err) {
    if (!d || !strcmp(d->transport, "none")) return TL_OK;
    if (d->failed) return tl_fail(err, TL_ERR_RUNTIME, "rank %d: collective after a failed one (%s)", d->rank, what);
#ifdef TL_HAVE_NCCL
    if (d->nccl) return tl_nccl_bcast(d, buf, bytes, root, what, err);
#endif
    return tl_dist_mpi_bcast(d, buf, bytes, root, what, err);
}

tl_status tl_dist_barrier(tl_dist *d, const char *what, tl_error *err) {
    int x = 0;
    return tl_dist_allreduce_max_int_host(d, &x, 1, what, err);
}

void tl_dist_abort(tl_dist *d, int code) {
    if (!d || !strcmp(d->transport, "none")) return;
    fflush(NULL);
#ifdef TL_HAVE_NCCL
    if (d->nccl) tl_nccl_abort(d);
#endif
#ifdef TL_HAVE_MPI
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(d->mpi_comm ? *comm_of(d) : MPI_COMM_WORLD, code);
#endif
    _exit(code); /* NCCL without MPI: the launcher sees this rank exit and ends the others */
}

void tl_dist_free(tl_dist *d) {
    if (!d) return;
#ifdef TL_HAVE_NCCL
    if (d->nccl) tl_nccl_free(d);
#endif
#ifdef TL_HAVE_MPI
    if (d->mpi_comm) {
        MPI_Comm_free(comm_of(d));
        free(d->mpi_comm);
    }
    if (d->mpi_inited) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }
#endif
    free(d);
}
