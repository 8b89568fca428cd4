/* backend: picks the backend a run asked for (train.backend: cpu, cuda or auto). */
#include <omp.h>
#include <string.h>

#include "kernels/tl_backend.h"

tl_status tl_backend_open(const char *name, int threads, tl_backend **out, tl_error *err) {
    return tl_backend_open_on(name, threads, 0, out, err);
}

int tl_backend_has_cuda(void) {
#ifdef TL_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int tl_backend_gpu_count(void) {
#ifdef TL_HAVE_CUDA
    return tl_cuda_device_count();
#else
    return 0;
#endif
}

tl_status tl_backend_open_on(const char *name, int threads, int device, tl_backend **out, tl_error *err) {
    *out = NULL;
    if (!name) name = "auto";
    /* The thread count also governs host-side OpenMP loops outside the backend (e.g. data preparation). */
    if (threads > 0) omp_set_num_threads(threads);
    if (strcmp(name, "cpu") == 0) return tl_backend_cpu_create(threads, out, err);
    if (strcmp(name, "cuda") == 0) {
#ifdef TL_HAVE_CUDA
        if (tl_cuda_device_count() > 0) return tl_backend_cuda_create(device, out, err);
        return tl_fail(err, TL_ERR_INPUT, "train.backend: cuda requested but no GPU found");
#else
        return tl_fail(err, TL_ERR_INPUT, "train.backend: cuda requested but this build has no CUDA backend");
#endif
    }
    if (strcmp(name, "auto") == 0) {
#ifdef TL_HAVE_CUDA
        if (tl_cuda_device_count() > 0) return tl_backend_cuda_create(device, out, err);
#endif
        return tl_backend_cpu_create(threads, out, err);
    }
    return tl_fail(err, TL_ERR_INPUT, "train.backend: unknown backend '%s' (expected cpu, cuda or auto)", name);
}
