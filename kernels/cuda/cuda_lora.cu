/* cuda_lora: LoRA over adapter segments on the CUDA backend (Punica's SGMV idea, forward and backward) with
 * three segmented kernels of our own, each one launch for all segments: grid (column tiles, row tiles,
 * segment), blocks past the end of their segment exit at once.
 *
 *   rows_small : O[row, k]  = alpha sum_c X[row, c] mask(row, c) M(k, c)      (h = x_drop A^T;  dh = scale dy B)
 *   expand     : Y[row, o] += alpha mask(row, o) sum_k H[row, k] M(o, k)      (y += scale h B^T;  dx += (dh A) mask)
 *   grad       : G[p, q]   += alpha sum_rows U[row, p] mask(row, p) W[row, q]  (dB += scale dy^T h;  dA += dh^T x_drop)
 *
 * X, Y, U are bf16 activations; A, B, h, dh, dA, dB are fp32 and every sum accumulates in fp32. The dropout
 * mask is regenerated from (row seed, site, column) with tl_dropout_mul, never stored. The gradient kernel gives
 * each (slot, output tile) to exactly one block, which loops over the rows of every segment of that slot in
 * order: no atomics, so dA and dB are bit-identical from run to run. dh lives in the backend's scratch buffer;
 * when n * r does not fit, the backward runs over blocks of rows (dB, which needs no dh, runs once). */
#include "kernels/cuda/cuda_common.cuh"

#define LR_THREADS 256
#define LR_TM 64 /* rows per block */
#define LR_TR 16 /* rank columns per block (rows_small, grad) */
#define LR_TK 32 /* reduction step of rows_small */
#define LR_TO 64 /* output columns per block (expand) */
#define LR_TP 64 /* output rows p per block (grad) */
#define LR_RW 32 /* rows per reduction step (grad) */

/* the rows [lo, hi) of segment s inside [row_lo, row_hi) */
static __device__ __forceinline__ void seg_rows(const tl_seg *segs, int s, int row_lo, int row_hi, int *lo, int *hi,
                                                int *slot) {
    tl_seg sg = segs[s];
    *lo = sg.row0 > row_lo ? sg.row0 : row_lo;
    *hi = sg.row1 < row_hi ? sg.row1 : row_hi;
    *slot = sg.slot;
}

/* O[(row - obase) * r + k] = alpha * sum_c X[row * ldx + c] * mask(row, c) * M[slot * stride + k * mk + c * mc],
 * for k < r; O = 0 on rows of slot < 0. Grid (ceil(r / TR), row tiles, n_seg). */
static __global__ void __launch_bounds__(LR_THREADS)
    rows_small_kernel(float *O, int obase, const tl_bf16 *X, int ldx, int K, const float *M, size_t stride, int mk,
                      int mc, int r, float alpha, float dropout, uint32_t site, const uint64_t *row_seed,
                      const tl_seg *segs, int row_lo, int row_hi) {
    __shared__ float xs[LR_TM][LR_TK + 1];
    __shared__ float ms[LR_TR][LR_TK + 1];
    int lo, hi, slot;
    seg_rows(segs, blockIdx.z, row_lo, row_hi, &lo, &hi, &slot);
    int r0 = lo + blockIdx.y * LR_TM, k0 = blockIdx.x * LR_TR;
    if (r0 >= hi) return;
    int tid = threadIdx.x, tk = tid % LR_TR, tm = tid / LR_TR; /* rank column tk, rows tm * 4 .. + 3 */
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (slot >= 0) {
        const float *Ms = M + (size_t)slot * stride;
        for (int c0 = 0; c0 < K; c0 += LR_TK) {
            for (int e = tid; e < LR_TM * LR_TK; e += LR_THREADS) {
                int i = e / LR_TK, j = e % LR_TK, row = r0 + i, col = c0 + j;
                float v = 0.0f;
                if (row < hi && col < K) {
                    v = tl_ldf(X + (size_t)row * ldx + col);
                    if (dropout > 0.0f) v *= tl_dropout_mul(row_seed[row], site, (uint32_t)col, dropout);
                }
                xs[i][j] = v;
            }
            for (int e = tid; e < LR_TR * LR_TK; e += LR_THREADS) {
                int i = e / LR_TK, j = e % LR_TK, k = k0 + i, col = c0 + j;
                ms[i][j] = k < r && col < K ? Ms[(size_t)k * mk + (size_t)col * mc] : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int j = 0; j < LR_TK; j++) {
                float m = ms[tk][j];
#pragma unroll
                for (int q = 0; q < 4; q++) acc[q] += xs[tm * 4 + q][j] * m;
            }
            __syncthreads();
        }
    }
    int k = k0 + tk;
    if (k >= r) return;
    for (int q = 0; q < 4; q++) {
        int row = r0 + tm * 4 + q;
        if (row < hi) O[(size_t)(row - obase) * r + k] = slot >= 0 ? alpha * acc[q] : 0.0f;
    }
}

/* Y[row * ldy + o] += alpha * mask(row, o) * sum_k H[(row - hbase) * r + k] * M[slot * stride + o * mo + k * mk],
 * for o < ncols; rows of slot < 0 are left alone. Grid (ceil(ncols / TO), row tiles, n_seg). */
static __global__ void __launch_bounds__(LR_THREADS)
    expand_kernel(tl_bf16 *Y, int ldy, int ncols, const float *H, int hbase, int r, const float *M, size_t stride,
                  int mo, int mk, float alpha, float dropout, uint32_t site, const uint64_t *row_seed,
                  const tl_seg *segs, int row_lo, int row_hi) {
    __shared__ float hs[LR_TM][LR_TR + 1];
    __shared__ float ms[LR_TO][LR_TR + 1];
    int lo, hi, slot;
    seg_rows(segs, blockIdx.z, row_lo, row_hi, &lo, &hi, &slot);
    int r0 = lo + blockIdx.y * LR_TM, o0 = blockIdx.x * LR_TO;
    if (r0 >= hi || slot < 0) return;
    const float *Ms = M + (size_t)slot * stride;
    int tid = threadIdx.x, to = tid % 16, tm = tid / 16; /* columns to + 16 q, rows tm + 16 p */
    float acc[4][4];
    for (int p = 0; p < 4; p++)
        for (int q = 0; q < 4; q++) acc[p][q] = 0.0f;
    for (int kb = 0; kb < r; kb += LR_TR) {
        for (int e = tid; e < LR_TM * LR_TR; e += LR_THREADS) {
            int i = e / LR_TR, j = e % LR_TR, row = r0 + i, k = kb + j;
            hs[i][j] = row < hi && k < r ? H[(size_t)(row - hbase) * r + k] : 0.0f;
        }
        for (int e = tid; e < LR_TO * LR_TR; e += LR_THREADS) {
            int i = e / LR_TR, j = e % LR_TR, o = o0 + i, k = kb + j;
            ms[i][j] = o < ncols && k < r ? Ms[(size_t)o * mo + (size_t)k * mk] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < LR_TR; j++) {
            float a[4], b[4];
#pragma unroll
            for (int p = 0; p < 4; p++) a[p] = hs[tm + 16 * p][j];
#pragma unroll
            for (int q = 0; q < 4; q++) b[q] = ms[to + 16 * q][j];
#pragma unroll
            for (int p = 0; p < 4; p++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[p][q] += a[p] * b[q];
        }
        __syncthreads();
    }
    for (int p = 0; p < 4; p++) {
        int row = r0 + tm + 16 * p;
        if (row >= hi) continue;
        for (int q = 0; q < 4; q++) {
            int o = o0 + to + 16 * q;
            if (o >= ncols) continue;
            float mul = dropout > 0.0f ? tl_dropout_mul(row_seed[row], site, (uint32_t)o, dropout) : 1.0f;
            tl_bf16 *yp = Y + (size_t)row * ldy + o;
            tl_stf(yp, tl_ldf(yp) + alpha * acc[p][q] * mul);
        }
    }
}

/* G[slot * stride + p * gp + q * gq] += alpha * sum over the rows of every segment of the slot (inside
 * [row_lo, row_hi)) of U[row * ldu + p] * mask(row, p) * W[(row - wbase) * ldw + q], p < P, q < Q.
 * Grid (ceil(P / TP), ceil(Q / TR), n_seg); the block of a slot's first segment does the whole slot. */
static __global__ void __launch_bounds__(LR_THREADS)
    grad_kernel(float *G, size_t stride, int gp, int gq, int P, int Q, const tl_bf16 *U, int ldu, const float *W,
                int ldw, int wbase, float alpha, float dropout, uint32_t site, const uint64_t *row_seed,
                const tl_seg *segs, int n_seg, int row_lo, int row_hi) {
    __shared__ float us[LR_RW][LR_TP + 1];
    __shared__ float ws[LR_RW][LR_TR + 1];
    int s0 = blockIdx.z, slot = segs[s0].slot;
    if (slot < 0) return;
    for (int s = 0; s < s0; s++)
        if (segs[s].slot == slot) return; /* an earlier block owns this slot */
    int p0 = blockIdx.x * LR_TP, q0 = blockIdx.y * LR_TR;
    int tid = threadIdx.x, tq = tid % LR_TR, tp = tid / LR_TR; /* column q0 + tq, rows p0 + tp + 16 i */
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = s0; s < n_seg; s++) {
        int lo, hi, sl;
        seg_rows(segs, s, row_lo, row_hi, &lo, &hi, &sl);
        if (sl != slot) continue;
        for (int rb = lo; rb < hi; rb += LR_RW) {
            for (int e = tid; e < LR_RW * LR_TP; e += LR_THREADS) {
                int i = e / LR_TP, j = e % LR_TP, row = rb + i, p = p0 + j;
                float v = 0.0f;
                if (row < hi && p < P) {
                    v = tl_ldf(U + (size_t)row * ldu + p);
                    if (dropout > 0.0f) v *= tl_dropout_mul(row_seed[row], site, (uint32_t)p, dropout);
                }
                us[i][j] = v;
            }
            for (int e = tid; e < LR_RW * LR_TR; e += LR_THREADS) {
                int i = e / LR_TR, j = e % LR_TR, row = rb + i, q = q0 + j;
                ws[i][j] = row < hi && q < Q ? W[(size_t)(row - wbase) * ldw + q] : 0.0f;
            }
            __syncthreads();
#pragma unroll 4
            for (int i = 0; i < LR_RW; i++) {
                float w = ws[i][tq];
#pragma unroll
                for (int k = 0; k < 4; k++) acc[k] += us[i][tp + 16 * k] * w;
            }
            __syncthreads();
        }
    }
    int q = q0 + tq;
    if (q >= Q) return;
    float *Gs = G + (size_t)slot * stride;
    for (int k = 0; k < 4; k++) {
        int p = p0 + tp + 16 * k;
        if (p < P) Gs[(size_t)p * gp + (size_t)q * gq] += alpha * acc[k];
    }
}

/* Longest part of a segment inside [lo, hi): the row-tile extent of the grid. */
static int max_seg_rows(const tl_mb *mb, int lo, int hi) {
    int mx = 0;
    for (int s = 0; s < mb->n_seg; s++) {
        int a = mb->h_segs[s].row0 > lo ? mb->h_segs[s].row0 : lo;
        int b = mb->h_segs[s].row1 < hi ? mb->h_segs[s].row1 : hi;
        if (b - a > mx) mx = b - a;
    }
    return mx;
}

static int check_shape(tl_cuda_ctx *c, const char *op, const tl_mb *mb, int in, int out, int r) {
    if (in <= 0 || out <= 0 || r <= 0) {
        tl_cuda_fail(c, "in, out and r must be positive", "%s (in=%d, out=%d, r=%d)", op, in, out, r);
        return 0;
    }
    if (mb->n_seg > 65535) {
        tl_cuda_fail(c, "more than 65535 segments in one micro-batch", "%s (n_seg=%d)", op, mb->n_seg);
        return 0;
    }
    return 1;
}

static dim3 grid3(int cols, int tile_cols, int rows, int n_seg) {
    return dim3((unsigned)((cols + tile_cols - 1) / tile_cols), (unsigned)((rows + LR_TM - 1) / LR_TM),
                (unsigned)n_seg);
}

void tl_cuda_lora_fwd(tl_backend *be, tl_act *y, float *h, const tl_act *x, const tl_lora_site *ls, const tl_mb *mb,
                      int in, int out) {
    const float *A = ls->A, *B = ls->B;
    size_t slot_stride = ls->slot_stride;
    int r = ls->r;
    float scale = ls->scale, dropout = ls->dropout;
    uint32_t site = ls->site;
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || mb->n_tok <= 0 || mb->n_seg <= 0) return;
    if (!check_shape(c, "lora_fwd", mb, in, out, r)) return;
    int n = mb->n_tok, mx = max_seg_rows(mb, 0, n);
    if (mx <= 0) return;
    /* h = x_drop A_s^T */
    rows_small_kernel<<<grid3(r, LR_TR, mx, mb->n_seg), LR_THREADS, 0, c->stream>>>(
        h, 0, (const tl_bf16 *)x, in, in, A, slot_stride, in, 1, r, 1.0f, dropout, site, mb->row_seed, mb->segs, 0, n);
    if (!tl_cuda_ok(c, cudaGetLastError(), "lora_fwd (shrink, n=%d, in=%d, r=%d, n_seg=%d)", n, in, r, mb->n_seg))
        return;
    /* y += scale h B_s^T; B_s [out, r]: M(o, k) = B_s[o r + k] */
    expand_kernel<<<grid3(out, LR_TO, mx, mb->n_seg), LR_THREADS, 0, c->stream>>>(
        (tl_bf16 *)y, out, out, h, 0, r, B, slot_stride, r, 1, scale, 0.0f, site, mb->row_seed, mb->segs, 0, n);
    tl_cuda_ok(c, cudaGetLastError(), "lora_fwd (expand, n=%d, out=%d, r=%d, n_seg=%d)", n, out, r, mb->n_seg);
}

void tl_cuda_lora_bwd(tl_backend *be, tl_act *dx, float *dA, float *dB, const tl_act *dy, const tl_act *x,
                      const float *h, const tl_lora_site *ls, const tl_mb *mb, int in, int out) {
    const float *A = ls->A, *B = ls->B;
    size_t slot_stride = ls->slot_stride;
    int r = ls->r;
    float scale = ls->scale, dropout = ls->dropout;
    uint32_t site = ls->site;
    tl_cuda_ctx *c = tl_cuda(be);
    if (c->failed || mb->n_tok <= 0 || mb->n_seg <= 0) return;
    if (!check_shape(c, "lora_bwd", mb, in, out, r)) return;
    int n = mb->n_tok, mx = max_seg_rows(mb, 0, n);
    if (mx <= 0) return;
    dim3 gg((unsigned)((out + LR_TP - 1) / LR_TP), (unsigned)((r + LR_TR - 1) / LR_TR), (unsigned)mb->n_seg);
    /* dB_s [out, r] += scale dy^T h: G(p = o, q = k) at o r + k */
    grad_kernel<<<gg, LR_THREADS, 0, c->stream>>>(dB, slot_stride, r, 1, out, r, (const tl_bf16 *)dy, out, h, r, 0,
                                                  scale, 0.0f, site, mb->row_seed, mb->segs, mb->n_seg, 0, n);
    if (!tl_cuda_ok(c, cudaGetLastError(), "lora_bwd (dB, n=%d, out=%d, r=%d, n_seg=%d)", n, out, r, mb->n_seg))
        return;
    size_t rows_fit = TL_CUDA_SCRATCH_FLOATS / (size_t)r;
    int block = rows_fit >= (size_t)n ? n : (int)rows_fit;
    if (block <= 0) {
        tl_cuda_fail(c, "rank larger than the scratch buffer", "lora_bwd (r=%d)", r);
        return;
    }
    float *dh = c->scratch;
    for (int b0 = 0; b0 < n; b0 += block) {
        int b1 = n - b0 < block ? n : b0 + block;
        int m = max_seg_rows(mb, b0, b1);
        if (m <= 0) continue;
        /* dh = scale dy B_s; B_s [out, r]: M(k, o) = B_s[o r + k] */
        rows_small_kernel<<<grid3(r, LR_TR, m, mb->n_seg), LR_THREADS, 0, c->stream>>>(
            dh, b0, (const tl_bf16 *)dy, out, out, B, slot_stride, 1, r, r, scale, 0.0f, site, mb->row_seed,
            mb->segs, b0, b1);
        if (!tl_cuda_ok(c, cudaGetLastError(), "lora_bwd (dh, rows %d..%d, out=%d, r=%d)", b0, b1, out, r)) return;
        /* dA_s [r, in] += dh^T x_drop: G(p = c, q = k) at k in + c */
        dim3 ga((unsigned)((in + LR_TP - 1) / LR_TP), (unsigned)((r + LR_TR - 1) / LR_TR), (unsigned)mb->n_seg);
        grad_kernel<<<ga, LR_THREADS, 0, c->stream>>>(dA, slot_stride, 1, in, in, r, (const tl_bf16 *)x, in, dh, r,
                                                      b0, 1.0f, dropout, site, mb->row_seed, mb->segs, mb->n_seg, b0,
                                                      b1);
        if (!tl_cuda_ok(c, cudaGetLastError(), "lora_bwd (dA, rows %d..%d, in=%d, r=%d)", b0, b1, in, r)) return;
        if (!dx) continue;
        /* dx += (dh A_s) * mask; A_s [r, in]: M(c, k) = A_s[k in + c] */
        expand_kernel<<<grid3(in, LR_TO, m, mb->n_seg), LR_THREADS, 0, c->stream>>>(
            (tl_bf16 *)dx, in, in, dh, b0, r, A, slot_stride, 1, in, 1.0f, dropout, site, mb->row_seed, mb->segs, b0,
            b1);
        if (!tl_cuda_ok(c, cudaGetLastError(), "lora_bwd (dx, rows %d..%d, in=%d, r=%d)", b0, b1, in, r)) return;
    }
}
