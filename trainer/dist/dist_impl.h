/* dist_impl: what dist.c (environment, MPI) and dist_nccl.c (NCCL) share; private to those two files. */
#ifndef TL_DIST_IMPL_H
#define TL_DIST_IMPL_H

#include "trainer/dist/tl_dist.h"

typedef enum { TL_DT_F32, TL_DT_F64, TL_DT_I64, TL_DT_I32 } tl_dist_dtype;
typedef enum { TL_DOP_SUM, TL_DOP_MAX } tl_dist_op;

struct tl_nccl; /* dist_nccl.c */

struct tl_dist {
    int rank, world;
    double timeout_s;
    const char *transport; /* "none", "mpi", "nccl" */
    int mpi_inited;        /* this process called MPI_Init */
    void *mpi_comm;        /* MPI_Comm * (a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN) */
    struct tl_nccl *nccl;
    int failed;            /* a collective failed: only abort may follow */
};

#include "data/tl_io.h" /* tl_now_s: the clock of collective timeouts */

/* MPI pieces dist_nccl.c uses for its bootstrap (TL_HAVE_MPI builds; otherwise they fail cleanly). */
int tl_dist_mpi_available(void);
tl_status tl_dist_mpi_start(tl_dist *d, const tl_dist_env *e, tl_error *err);
tl_status tl_dist_mpi_bcast(tl_dist *d, void *buf, size_t bytes, int root, const char *what, tl_error *err);

#ifdef TL_HAVE_NCCL
/* be_stream: the backend's cudaStream_t. The device is already selected. */
tl_status tl_nccl_init(tl_dist *d, const tl_dist_env *e, const tl_dist_opts *o, void *be_stream, tl_error *err);
tl_status tl_nccl_allreduce(tl_dist *d, void *buf, size_t n, tl_dist_dtype t, tl_dist_op op, int host,
                            const char *what, tl_error *err);
tl_status tl_nccl_bcast(tl_dist *d, void *host_buf, size_t bytes, int root, const char *what, tl_error *err);
void tl_nccl_abort(tl_dist *d);
void tl_nccl_free(tl_dist *d);
#endif

#endif
