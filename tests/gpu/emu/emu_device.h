// emu_device.h: forced include for compiling the CUDA backend's .cu files with g++ (tests/gpu/emu/run_emu.sh):
// the real CUDA headers for types and host API declarations (implemented by emu_runtime.cpp), then device
// built-ins emulated with fibers.
#pragma once
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stddef.h>
#include <functional>
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define __forceinline__ inline

extern uint3 tl_emu_bidx;
extern dim3 tl_emu_bdim, tl_emu_gdim;
uint3 tl_emu_tid(void);
#define threadIdx (tl_emu_tid())
#define blockIdx tl_emu_bidx
#define blockDim tl_emu_bdim
#define gridDim tl_emu_gdim

void tl_emu_sync(int warp_only);
#define __syncthreads() tl_emu_sync(0)
#define __syncwarp(...) tl_emu_sync(1)
void *tl_emu_xbuf(void); /* 32 x 8 bytes of the current warp */
unsigned tl_emu_lane(void);

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lanemask) {
    if (mask != 0xffffffffu) abort();
    T *buf = (T *)tl_emu_xbuf();
    unsigned lane = tl_emu_lane();
    buf[lane] = v;
    tl_emu_sync(1);
    T r = buf[lane ^ (unsigned)lanemask];
    tl_emu_sync(1);
    return r;
}

void *tl_emu_dyn_smem(void);
void tl_emu_run(const void *kernel, dim3 g, dim3 b, size_t smem, std::function<void()> *body);

template <typename... P, typename... A>
static void tl_emu_launch(void (*k)(P...), dim3 g, dim3 b, size_t smem, cudaStream_t s, A... a) {
    (void)s;
    std::function<void()> body = [&]() { k(a...); };
    tl_emu_run((const void *)k, g, b, smem, &body);
}
template <typename T> static inline cudaError_t cudaFuncSetAttribute(T *f, cudaFuncAttribute a, int v) {
    return ::cudaFuncSetAttribute((const void *)f, a, v);
}
static inline int atomicMax(int *p, int v) { int o = *p; if (v > o) *p = v; return o; }
