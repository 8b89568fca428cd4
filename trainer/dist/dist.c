/* dist: the process's place in the run (environment), adapter ownership, and the collectives of tl_dist.h over
 * whichever transport the run connected (dist_impl.h: MPI in dist_mpi.c, NCCL in dist_nccl.c). Nothing here
 * knows a transport library. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "trainer/dist/tl_dist.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/dist/dist_impl.h"
#include "kernels/tl_text.h"

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

/* ---- the public API ---- */

tl_status tl_dist_init(const tl_dist_env *e, const tl_dist_opts *o, tl_dist **out, tl_error *err) {
    *out = NULL;
    if (!(o->timeout_s > 0)) return tl_fail(err, TL_ERR_INPUT, "dist.timeout_s: expected > 0");
    tl_dist *d = calloc(1, sizeof *d);
    if (!d) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    d->rank = e->rank, d->world = e->world, d->timeout_s = o->timeout_s;
    tl_status s = TL_OK;
    if (e->world > 1 || o->force) {
        if (o->transport == TL_DIST_NCCL)
            s = tl_dist_nccl_create(d, e, o, &d->tp, err);
        else
            s = tl_dist_mpi_create(d, e, &d->tp, err);
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
const char *tl_dist_transport(const tl_dist *d) { return d && d->tp ? d->tp->name : "none"; }

/* 1: a collective must run on d's transport; 0: nothing to do (no transport: a world of one). */
static int connected(const tl_dist *d) { return d && d->tp; }

static tl_status after_failure(const tl_dist *d, const char *what, tl_error *err) {
    return tl_fail(err, TL_ERR_RUNTIME, "rank %d: collective after a failed one (%s)", d->rank, what);
}

static tl_status reduce(tl_dist *d, void *buf, size_t n, tl_dist_dtype t, tl_dist_op op, int host, const char *what,
                        tl_error *err) {
    if (!connected(d)) return TL_OK;
    if (d->failed) return after_failure(d, what, err);
    return d->tp->allreduce(d->tp, buf, n, t, op, host, what, err);
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
    if (!connected(d)) return TL_OK;
    if (d->failed) return after_failure(d, what, err);
    return d->tp->bcast(d->tp, buf, bytes, root, what, err);
}

tl_status tl_dist_barrier(tl_dist *d, const char *what, tl_error *err) {
    int x = 0;
    return tl_dist_allreduce_max_int_host(d, &x, 1, what, err);
}

/* The one sanctioned exit of the library: a rank that cannot go on ends the whole job, so that no other rank waits
 * for it until the timeout. The transport's abort ends every rank where it can (MPI_Abort); _exit covers the rest
 * (NCCL without MPI: the launcher sees this rank exit and ends the others). */
void tl_dist_abort(tl_dist *d, int code) {
    if (!connected(d)) return;
    fflush(NULL);
    d->tp->abort(d->tp, code);
    _exit(code);
}

void tl_dist_free(tl_dist *d) {
    if (!d) return;
    if (d->tp) d->tp->free(d->tp);
    free(d);
}
