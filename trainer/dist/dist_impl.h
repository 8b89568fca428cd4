/* dist_impl: the transport table behind tl_dist, and what dist.c shares with its transports (dist_mpi.c,
 * dist_nccl.c); private to those three files.
 *
 * dist.c is transport-neutral: it picks a transport by the run's backend (MPI for cpu, NCCL for cuda), then
 * every collective, abort and shutdown goes through the table, the way the model calls tl_backend. Each
 * transport file fills the table when its library was built in; when it was not, its creator fails with a
 * "built without" message and nothing else of it exists (one #ifdef per file). */
#ifndef TL_DIST_IMPL_H
#define TL_DIST_IMPL_H

#include "trainer/dist/tl_dist.h"

#include "data/tl_io.h" /* tl_now_s: the clock of collective timeouts */

typedef enum { TL_DT_F32, TL_DT_F64, TL_DT_I64, TL_DT_I32 } tl_dist_dtype;
typedef enum { TL_DOP_SUM, TL_DOP_MAX } tl_dist_op;

/* A connected transport. A transport embeds this as the first member of its own state. Every collective waits at
 * most d->timeout_s and, on any failure, sets d->failed and returns TL_ERR_RUNTIME naming the rank. */
struct tl_dist_transport {
    const char *name; /* "mpi" or "nccl": tl_dist_transport() */
    tl_dist *d;       /* the run's place (rank, world, timeout, failed) */
    /* in place over every rank; host: buf is host memory, else memory of the run's backend */
    tl_status (*allreduce)(struct tl_dist_transport *tp, void *buf, size_t n, tl_dist_dtype t, tl_dist_op op, int host,
                           const char *what, tl_error *err);
    /* root's bytes of host memory to every rank */
    tl_status (*bcast)(struct tl_dist_transport *tp, void *host_buf, size_t bytes, int root, const char *what,
                       tl_error *err);
    /* tears the communicator down so that no rank hangs; may end the process (MPI_Abort) */
    void (*abort)(struct tl_dist_transport *tp, int code);
    /* clean shutdown (MPI_Finalize, ncclCommDestroy, or ncclCommAbort after a failure); frees tp */
    void (*free)(struct tl_dist_transport *tp);
};

struct tl_dist {
    int rank, world;
    double timeout_s;
    struct tl_dist_transport *tp; /* NULL: no transport (a world of one) */
    int failed;                   /* a collective failed: only abort may follow */
};

/* The creators. On success *out is connected; on failure *out is NULL and everything made is released. */
/* dist_mpi.c: MPI over a duplicate of MPI_COMM_WORLD (MPI_Init when nobody did). */
tl_status tl_dist_mpi_create(tl_dist *d, const tl_dist_env *e, struct tl_dist_transport **out, tl_error *err);
int tl_dist_mpi_available(void); /* 1 when tailor was built with MPI (NCCL's bootstrap then may use it) */
/* dist_nccl.c: NCCL on the backend's stream o->cuda_stream; the device is already selected. */
tl_status tl_dist_nccl_create(tl_dist *d, const tl_dist_env *e, const tl_dist_opts *o, struct tl_dist_transport **out,
                              tl_error *err);

#endif
