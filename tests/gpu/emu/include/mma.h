// Emulated nvcuda::wmma for running the CUDA backend's kernels on the CPU (fiber emulator).
// Every emulated thread of a warp holds a full copy of each fragment; loads and stores are warp barriers, so the
// lanes act collectively as on the GPU. The alignment rules of the real API are asserted.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <type_traits>
void tl_emu_sync(int warp_only);
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {};
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static const int R = std::is_same<Use, matrix_b>::value ? K : M;
    static const int C = std::is_same<Use, matrix_a>::value ? K : N;
    enum { num_elements = R * C };
    float v[R * C];
};
static inline void emu_check(const void *p, unsigned ldm, size_t esz, const char *what) {
    if (((uintptr_t)p & 31u) != 0) { fprintf(stderr, "WMMA EMU: %s pointer %p not 32-byte aligned\n", what, p); abort(); }
    if ((ldm * esz) % 16 != 0) { fprintf(stderr, "WMMA EMU: %s ldm %u not a multiple of 16 bytes\n", what, ldm); abort(); }
}
template <typename Use, int M, int N, int K, typename L>
void load_matrix_sync(fragment<Use, M, N, K, __nv_bfloat16, L> &f, const __nv_bfloat16 *p, unsigned ldm) {
    emu_check(p, ldm, 2, "load");
    tl_emu_sync(1);
    typedef fragment<Use, M, N, K, __nv_bfloat16, L> F;
    for (int r = 0; r < F::R; r++)
        for (int c = 0; c < F::C; c++)
            f.v[r * F::C + c] = __bfloat162float(std::is_same<L, row_major>::value ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]);
}
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm, layout_t l) {
    emu_check(p, ldm, 4, "load acc");
    tl_emu_sync(1);
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) f.v[r * N + c] = l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K>
void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm, layout_t l) {
    emu_check(p, ldm, 4, "store acc");
    tl_emu_sync(1);
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) (l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.v[r * N + c];
}
template <typename Use, int M, int N, int K, typename T, typename L>
void fill_fragment(fragment<Use, M, N, K, T, L> &f, float x) {
    for (int i = 0; i < fragment<Use, M, N, K, T, L>::num_elements; i++) f.v[i] = x;
}
template <int M, int N, int K, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float> &d, const fragment<matrix_a, M, N, K, __nv_bfloat16, LA> &a,
              const fragment<matrix_b, M, N, K, __nv_bfloat16, LB> &b, const fragment<accumulator, M, N, K, float> &c) {
    float t[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c.v[i * N + j];
            for (int k = 0; k < K; k++) s += a.v[i * K + k] * b.v[k * N + j];
            t[i * N + j] = s;
        }
    for (int i = 0; i < M * N; i++) d.v[i] = t[i];
}
}}
