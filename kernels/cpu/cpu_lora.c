/* cpu_lora: LoRA over adapter segments on the CPU backend (Punica's SGMV idea, forward and backward).
 *
 * Each segment [row0, row1) with slot s >= 0 uses A_s [r, in] and B_s [out, r]; its products are sgemm calls on
 * the segment's rows. With dropout the masked input x_drop is built block by block in the backend's scratch
 * (the mask is regenerated from (row seed, site, column), never stored between forward and backward). Segments
 * of one slot are processed one after another in order, so dA / dB accumulate deterministically even when a slot
 * appears in several segments, and an adapter's blocks depend only on its own rows.
 *
 * Parallelism: with at least as many adapter segments as threads, the segments are shared out by slot (slot s to
 * thread s mod team size, each thread taking its segments in order), each thread running its small products on
 * one core in its own slice of the scratch; with fewer segments they run one after another, each product split
 * over the team (tl_cpu_gemm). The slice a block of rows uses is the same in both cases (scratch / team size),
 * so the row blocks, and hence the summation order of dA, never depend on how many other adapters share the
 * micro-batch. Short sequences of many users (64 segments of 16 rows) used to leave all but one core idle. */
#include <omp.h>
#include <string.h>

#include "kernels/tl_math.h"
#include "kernels/cpu/cpu_internal.h"

/* xd[i, :] = x[row0 + i, :] * mask and, when mk != NULL, mk[i, :] = mask, for i < m */
static void build_dropout(tl_backend *be, float *xd, float *mk, const float *x, const uint64_t *row_seed, int row0,
                          int m, int in, float dropout, uint32_t site) {
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)m * in > 4096)
    for (int i = 0; i < m; i++) {
        uint64_t seed = row_seed[row0 + i];
        const float *xi = x + (size_t)(row0 + i) * in;
        float *xdi = xd + (size_t)i * in;
        float *mki = mk ? mk + (size_t)i * in : NULL;
        for (int c = 0; c < in; c++) {
            float mul = tl_dropout_mul(seed, site, (uint32_t)c, dropout);
            xdi[c] = xi[c] * mul;
            if (mki) mki[c] = mul;
        }
    }
}

/* Rows per scratch block given the floats needed per row, in one thread's slice of the scratch; 0 (and a recorded
 * failure) when not even one fits. */
static int block_rows(tl_backend *be, const char *op, size_t per_row, int in, int r) {
    size_t slice = tl_cpu(be)->scratch_n / (size_t)tl_cpu(be)->threads;
    size_t rows = slice / (per_row ? per_row : 1);
    if (rows == 0) {
        tl_cpu_fail(be, "%s: in = %d, r = %d need %zu scratch floats per row, more than the %zu of a thread's slice",
                    op, in, r, per_row, slice);
        return 0;
    }
    return rows > (size_t)1 << 30 ? 1 << 30 : (int)rows;
}

/* Whether the segments are shared out over the team: enough of them with an adapter to keep every thread busy. */
static int by_slot(tl_backend *be, const tl_mb *mb) {
    int nthr = tl_cpu(be)->threads, n = 0;
    if (nthr <= 1) return 0;
    for (int sg = 0; sg < mb->n_seg; sg++) n += mb->h_segs[sg].slot >= 0 && mb->h_segs[sg].row1 > mb->h_segs[sg].row0;
    return n >= nthr;
}

typedef struct {
    const float *A, *B, *x, *dy, *hin;
    float *y, *h, *dx, *dA, *dB;
    size_t slot_stride;
    int r, in, out, bm;
    float scale, dropout;
    uint32_t site;
} lora_args;

static void seg_fwd(tl_backend *be, const lora_args *a, const tl_mb *mb, tl_seg seg, float *ws) {
    int m = seg.row1 - seg.row0, r = a->r, in = a->in, out = a->out;
    if (m <= 0) return;
    float *hs = a->h + (size_t)seg.row0 * r;
    if (seg.slot < 0) {
        memset(hs, 0, (size_t)m * r * sizeof(float));
        return;
    }
    const float *As = a->A + (size_t)seg.slot * a->slot_stride, *Bs = a->B + (size_t)seg.slot * a->slot_stride;
    if (a->dropout > 0.0f) {
        for (int b0 = 0; b0 < m; b0 += a->bm) {
            int mm = m - b0 < a->bm ? m - b0 : a->bm;
            build_dropout(be, ws, NULL, a->x, mb->row_seed, seg.row0 + b0, mm, in, a->dropout, a->site);
            tl_cpu_gemm(be, 0, 1, mm, r, in, 1.0f, ws, in, As, in, 0.0f, hs + (size_t)b0 * r, r);
        }
    } else {
        tl_cpu_gemm(be, 0, 1, m, r, in, 1.0f, a->x + (size_t)seg.row0 * in, in, As, in, 0.0f, hs, r);
    }
    tl_cpu_gemm(be, 0, 1, m, out, r, a->scale, hs, r, Bs, r, 1.0f, a->y + (size_t)seg.row0 * out, out);
}

void tl_cpu_lora_fwd(tl_backend *be, tl_act *y, float *h, const tl_act *x, const tl_lora_site *ls, const tl_mb *mb,
                     int in, int out) {
    lora_args a = {.A = ls->A, .B = ls->B, .x = x, .y = y, .h = h, .slot_stride = ls->slot_stride, .r = ls->r,
                   .in = in, .out = out, .scale = ls->scale, .dropout = ls->dropout, .site = ls->site, .bm = 1};
    if (a.dropout > 0.0f && (a.bm = block_rows(be, "lora_fwd", (size_t)in, in, a.r)) == 0) return;
    tl_cpu_ctx *c = tl_cpu(be);
    size_t slice = c->scratch_n / (size_t)c->threads;
    if (!by_slot(be, mb)) {
        for (int sg = 0; sg < mb->n_seg; sg++) seg_fwd(be, &a, mb, mb->h_segs[sg], c->scratch);
        return;
    }
    int nthr = c->threads;
#pragma omp parallel num_threads(nthr)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *ws = c->scratch + (size_t)t * slice;
        /* rows of y and h are disjoint between segments: any assignment is race-free; by slot keeps it simple */
        for (int sg = 0; sg < mb->n_seg; sg++) {
            tl_seg seg = mb->h_segs[sg];
            if ((seg.slot < 0 ? sg : seg.slot) % nt == t) seg_fwd(be, &a, mb, seg, ws);
        }
    }
}

static void seg_bwd(tl_backend *be, const lora_args *a, const tl_mb *mb, tl_seg seg, float *ws) {
    int m = seg.row1 - seg.row0, r = a->r, in = a->in, out = a->out, bm = a->bm;
    if (m <= 0 || seg.slot < 0) return;
    size_t off = (size_t)seg.slot * a->slot_stride;
    const float *As = a->A + off, *Bs = a->B + off, *x = a->x, *dy = a->dy;
    float *dAs = a->dA + off, *dBs = a->dB + off, *dx = a->dx;
    float scale = a->scale;
    const float *dys = dy + (size_t)seg.row0 * out;
    /* dB_s += scale dy^T h over the whole segment */
    tl_cpu_gemm(be, 1, 0, out, r, m, scale, dys, out, a->hin + (size_t)seg.row0 * r, r, 1.0f, dBs, r);
    for (int b0 = 0; b0 < m; b0 += bm) {
        int mm = m - b0 < bm ? m - b0 : bm;
        int row0 = seg.row0 + b0;
        float *dh = ws;
        /* dh = scale dy B_s */
        tl_cpu_gemm(be, 0, 0, mm, r, out, scale, dy + (size_t)row0 * out, out, Bs, r, 0.0f, dh, r);
        if (a->dropout > 0.0f) {
            float *xd = ws + (size_t)bm * r, *mk = xd + (size_t)bm * in;
            build_dropout(be, xd, mk, x, mb->row_seed, row0, mm, in, a->dropout, a->site);
            tl_cpu_gemm(be, 1, 0, r, in, mm, 1.0f, dh, r, xd, in, 1.0f, dAs, in);
            if (dx) {
                tl_cpu_gemm(be, 0, 0, mm, in, r, 1.0f, dh, r, As, in, 0.0f, xd, in);
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)mm * in > 4096 && !omp_in_parallel())
                for (int i = 0; i < mm; i++) {
                    float *dxi = dx + (size_t)(row0 + i) * in;
                    const float *ti = xd + (size_t)i * in, *mi = mk + (size_t)i * in;
                    for (int c = 0; c < in; c++) dxi[c] += ti[c] * mi[c];
                }
            }
        } else {
            const float *xb = x + (size_t)row0 * in;
            tl_cpu_gemm(be, 1, 0, r, in, mm, 1.0f, dh, r, xb, in, 1.0f, dAs, in);
            if (dx) tl_cpu_gemm(be, 0, 0, mm, in, r, 1.0f, dh, r, As, in, 1.0f, dx + (size_t)row0 * in, in);
        }
    }
}

void tl_cpu_lora_bwd(tl_backend *be, tl_act *dx, float *dA, float *dB, const tl_act *dy, const tl_act *x,
                     const float *h, const tl_lora_site *ls, const tl_mb *mb, int in, int out) {
    lora_args a = {.A = ls->A, .B = ls->B, .x = x, .dy = dy, .hin = h, .dx = dx, .dA = dA, .dB = dB,
                   .slot_stride = ls->slot_stride, .r = ls->r, .in = in, .out = out, .scale = ls->scale,
                   .dropout = ls->dropout, .site = ls->site};
    /* per row: dh [r], and with dropout x_drop [in] (reused for dh A_s) and the mask [in] */
    a.bm = block_rows(be, "lora_bwd", (size_t)a.r + (a.dropout > 0.0f ? 2 * (size_t)in : 0), in, a.r);
    if (a.bm == 0) return;
    tl_cpu_ctx *c = tl_cpu(be);
    size_t slice = c->scratch_n / (size_t)c->threads;
    if (!by_slot(be, mb)) {
        for (int sg = 0; sg < mb->n_seg; sg++) seg_bwd(be, &a, mb, mb->h_segs[sg], c->scratch);
        return;
    }
#pragma omp parallel num_threads(c->threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *ws = c->scratch + (size_t)t * slice;
        /* all segments of a slot on one thread, in order: dA_s / dB_s sum in the serial order, without races */
        for (int sg = 0; sg < mb->n_seg; sg++) {
            tl_seg seg = mb->h_segs[sg];
            if (seg.slot >= 0 && seg.slot % nt == t) seg_bwd(be, &a, mb, seg, ws);
        }
    }
}
