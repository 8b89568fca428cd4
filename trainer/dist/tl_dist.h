/* tl_dist: many processes of one run — who am I, and the few collectives the trainer needs.
 *
 * One process per GPU (or per CPU socket / share of cores for the CPU backend). The launcher tells each process
 * its place through the environment, read in this order (docs/cluster.md):
 *   OpenMPI   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK, ..._LOCAL_SIZE
 *   Slurm     SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE
 *   generic   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (torchrun's names)
 * A world of one needs no communication library at all.
 *
 * Transports: MPI for the CPU backend (when tailor was built with MPI); NCCL for the CUDA backend, its unique
 * id bootstrapped by an MPI broadcast when MPI is present, else by NCCL_COMM_ID (host:port, NCCL's own), else by
 * a file in a shared directory named by the job id, written atomically by rank 0 and polled by the others.
 *
 * Faults: every collective waits at most timeout_s; a dead peer, a transport error or the timeout comes back as
 * TL_ERR_RUNTIME naming this rank, the collective and what failed. After any failed collective the caller must
 * not call another one: it reports the error and calls tl_dist_abort, which tears the communicator down so
 * that no rank hangs.
 *
 * Buffers: *_host functions take host memory; tl_dist_allreduce_f32 takes memory of the run's backend (device
 * memory for CUDA), the LoRA gradients and pool state. Sums of floats are in float (fp32), deterministic for a
 * fixed world size and transport. */
#ifndef TL_DIST_H
#define TL_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"

typedef struct {
    int rank, world;             /* 0 <= rank < world */
    int local_rank, local_world; /* on this node */
    char source[16];             /* "openmpi", "slurm", "env" or "single" */
    char job_id[64];             /* SLURM_JOB_ID, else OMPI_MCA_orte_ess_jobid, else "" */
} tl_dist_env;

/* Reads the environment. Inconsistent values (rank >= world, a non-number) are TL_ERR_INPUT naming the
 * variable. No variable at all is a world of one ("single"). */
tl_status tl_dist_env_detect(tl_dist_env *e, tl_error *err);

/* Which CUDA device this process should use: 0 when the launcher made one device visible per task
 * (--gpus-per-task, CUDA_VISIBLE_DEVICES of one entry), else local_rank modulo the visible devices.
 * n_visible is the device count the CUDA runtime reports. */
int tl_dist_cuda_device(const tl_dist_env *e, int n_visible);

/* Threads for the CPU backend when train.threads is 0: the cores this process may run on (its affinity mask),
 * shared among the processes of the node when they all see the same cores. */
int tl_dist_cpu_threads(const tl_dist_env *e);

/* dist.strategy user_shard: each adapter's owner rank, balanced by cost (the tokens each adapter will train on):
 * adapters by decreasing cost (ties by index) each go to the least loaded rank (ties: the rank with fewest
 * adapters, then the lowest), the longest-processing-time rule, deterministic so every rank computes the same
 * owners. With n >= world every rank owns at least one adapter, even when costs are zero. */
void tl_dist_assign_owners(const double *cost, int n, int world, int *owner);

typedef struct tl_dist tl_dist;

/* Which transport carries the collectives: MPI for host buffers, NCCL for GPU buffers. */
typedef enum { TL_DIST_MPI = 0, TL_DIST_NCCL = 1 } tl_dist_kind;

/* The transport a backend's buffers need: NCCL when they live in GPU memory, MPI otherwise. */
static inline tl_dist_kind tl_dist_kind_for(int backend_host_memory) {
    return backend_host_memory ? TL_DIST_MPI : TL_DIST_NCCL;
}

typedef struct {
    tl_dist_kind transport;     /* MPI (host buffers, cpu backend) or NCCL (device buffers, cuda backend) */
    double timeout_s;           /* > 0 */
    const char *rendezvous_dir; /* NCCL id file rendezvous (cuda without MPI and NCCL_COMM_ID) */
    void *cuda_stream;          /* cuda: the backend's stream (be->stream); collectives are ordered on it */
    int force;                  /* connect the transport even for a world of one (checks of the NCCL path on a
                                   one-GPU machine: a one-rank NCCL communicator is valid) */
} tl_dist_opts;

/* Connects the processes of e. A world of one succeeds without any library (unless o->force). A larger world without a
 * transport built in is TL_ERR_INPUT ("this tailor was built without MPI"). For cuda, the device must already be
 * selected (cudaSetDevice) by the backend. */
tl_status tl_dist_init(const tl_dist_env *e, const tl_dist_opts *o, tl_dist **out, tl_error *err);
int tl_dist_rank(const tl_dist *d);
int tl_dist_world(const tl_dist *d);
const char *tl_dist_transport(const tl_dist *d); /* "none", "mpi" or "nccl" */

/* In-place sums over all ranks. what names the collective in errors ("gradients of step 12"). */
tl_status tl_dist_allreduce_f32(tl_dist *d, float *buf, size_t n, const char *what, tl_error *err);
tl_status tl_dist_allreduce_f32_host(tl_dist *d, float *buf, size_t n, const char *what, tl_error *err);
tl_status tl_dist_allreduce_f64_host(tl_dist *d, double *buf, size_t n, const char *what, tl_error *err);
tl_status tl_dist_allreduce_i64_host(tl_dist *d, int64_t *buf, size_t n, const char *what, tl_error *err);
/* In-place maximum of ints (stop votes). */
tl_status tl_dist_allreduce_max_int_host(tl_dist *d, int *buf, size_t n, const char *what, tl_error *err);
/* root's bytes to every rank. */
tl_status tl_dist_bcast_host(tl_dist *d, void *buf, size_t bytes, int root, const char *what, tl_error *err);
tl_status tl_dist_barrier(tl_dist *d, const char *what, tl_error *err);

/* After a failure (or on any error when world > 1): tears the communicator down and ends every rank with
 * exit code `code` (MPI_Abort / ncclCommAbort, or _exit for NCCL without MPI). Never returns when a transport is
 * connected; returns otherwise. This is the library's one sanctioned exit (kernels/tl_status.h): the other ranks
 * may be blocked in a collective, so no error can travel back to the CLI for it to exit instead. */
void tl_dist_abort(tl_dist *d, int code);
/* Clean shutdown (MPI_Finalize, ncclCommDestroy). */
void tl_dist_free(tl_dist *d);

#endif
