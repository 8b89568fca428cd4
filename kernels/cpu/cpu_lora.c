/* cpu_lora: LoRA over adapter segments on the CPU backend (Punica's SGMV idea, forward and backward).
 *
 * Each segment [row0, row1) with slot s >= 0 uses A_s [r, in] and B_s [out, r]; its products are sgemm calls on
 * the segment's rows. With dropout the masked input x_drop is built block by block in the backend's scratch
 * (the mask is regenerated from (row seed, site, column), never stored between forward and backward). Segments
 * are processed one after another in order, so dA / dB accumulate deterministically even when a slot appears
 * in several segments, and an adapter's blocks depend only on its own rows. */
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

/* Rows per scratch block given the floats needed per row; 0 (and a recorded failure) when not even one fits. */
static int block_rows(tl_backend *be, const char *op, size_t per_row, int in, int r) {
    size_t rows = tl_cpu(be)->scratch_n / (per_row ? per_row : 1);
    if (rows == 0) {
        tl_cpu_fail(be, "%s: in = %d, r = %d need %zu scratch floats per row, more than the %zu available", op, in,
                    r, per_row, tl_cpu(be)->scratch_n);
        return 0;
    }
    return rows > (size_t)1 << 30 ? 1 << 30 : (int)rows;
}

void tl_cpu_lora_fwd(tl_backend *be, tl_act *y_, float *h, const tl_act *x_, const tl_lora_site *ls, const tl_mb *mb,
                     int in, int out) {
    const float *A = ls->A, *B = ls->B;
    size_t slot_stride = ls->slot_stride;
    int r = ls->r;
    float scale = ls->scale, dropout = ls->dropout;
    uint32_t site = ls->site;
    float *y = y_;
    const float *x = x_;
    float *scratch = tl_cpu(be)->scratch;
    for (int sg = 0; sg < mb->n_seg; sg++) {
        tl_seg seg = mb->h_segs[sg];
        int m = seg.row1 - seg.row0;
        if (m <= 0) continue;
        float *hs = h + (size_t)seg.row0 * r;
        if (seg.slot < 0) {
            memset(hs, 0, (size_t)m * r * sizeof(float));
            continue;
        }
        const float *As = A + (size_t)seg.slot * slot_stride, *Bs = B + (size_t)seg.slot * slot_stride;
        if (dropout > 0.0f) {
            int bm = block_rows(be, "lora_fwd", (size_t)in, in, r);
            if (bm == 0) return;
            for (int b0 = 0; b0 < m; b0 += bm) {
                int mm = m - b0 < bm ? m - b0 : bm;
                build_dropout(be, scratch, NULL, x, mb->row_seed, seg.row0 + b0, mm, in, dropout, site);
                tl_cpu_sgemm(0, 1, mm, r, in, 1.0f, scratch, in, As, in, 0.0f, hs + (size_t)b0 * r, r);
            }
        } else {
            tl_cpu_sgemm(0, 1, m, r, in, 1.0f, x + (size_t)seg.row0 * in, in, As, in, 0.0f, hs, r);
        }
        tl_cpu_sgemm(0, 1, m, out, r, scale, hs, r, Bs, r, 1.0f, y + (size_t)seg.row0 * out, out);
    }
}

void tl_cpu_lora_bwd(tl_backend *be, tl_act *dx_, float *dA, float *dB, const tl_act *dy_, const tl_act *x_,
                     const float *h, const tl_lora_site *ls, const tl_mb *mb, int in, int out) {
    const float *A = ls->A, *B = ls->B;
    size_t slot_stride = ls->slot_stride;
    int r = ls->r;
    float scale = ls->scale, dropout = ls->dropout;
    uint32_t site = ls->site;
    float *dx = dx_;
    const float *dy = dy_, *x = x_;
    float *scratch = tl_cpu(be)->scratch;
    int drop = dropout > 0.0f;
    /* per row: dh [r], and with dropout x_drop [in] (reused for dh A_s) and the mask [in] */
    int bm = block_rows(be, "lora_bwd", (size_t)r + (drop ? 2 * (size_t)in : 0), in, r);
    if (bm == 0) return;
    for (int sg = 0; sg < mb->n_seg; sg++) {
        tl_seg seg = mb->h_segs[sg];
        int m = seg.row1 - seg.row0;
        if (m <= 0 || seg.slot < 0) continue;
        size_t off = (size_t)seg.slot * slot_stride;
        const float *As = A + off, *Bs = B + off;
        float *dAs = dA + off, *dBs = dB + off;
        const float *dys = dy + (size_t)seg.row0 * out;
        /* dB_s += scale dy^T h over the whole segment */
        tl_cpu_sgemm(1, 0, out, r, m, scale, dys, out, h + (size_t)seg.row0 * r, r, 1.0f, dBs, r);
        for (int b0 = 0; b0 < m; b0 += bm) {
            int mm = m - b0 < bm ? m - b0 : bm;
            int row0 = seg.row0 + b0;
            float *dh = scratch;
            /* dh = scale dy B_s */
            tl_cpu_sgemm(0, 0, mm, r, out, scale, dy + (size_t)row0 * out, out, Bs, r, 0.0f, dh, r);
            if (drop) {
                float *xd = scratch + (size_t)bm * r, *mk = xd + (size_t)bm * in;
                build_dropout(be, xd, mk, x, mb->row_seed, row0, mm, in, dropout, site);
                tl_cpu_sgemm(1, 0, r, in, mm, 1.0f, dh, r, xd, in, 1.0f, dAs, in);
                if (dx) {
                    tl_cpu_sgemm(0, 0, mm, in, r, 1.0f, dh, r, As, in, 0.0f, xd, in);
#pragma omp parallel for num_threads(tl_cpu(be)->threads) if ((long)mm * in > 4096)
                    for (int i = 0; i < mm; i++) {
                        float *dxi = dx + (size_t)(row0 + i) * in;
                        const float *ti = xd + (size_t)i * in, *mi = mk + (size_t)i * in;
                        for (int c = 0; c < in; c++) dxi[c] += ti[c] * mi[c];
                    }
                }
            } else {
                const float *xb = x + (size_t)row0 * in;
                tl_cpu_sgemm(1, 0, r, in, mm, 1.0f, dh, r, xb, in, 1.0f, dAs, in);
                if (dx) tl_cpu_sgemm(0, 0, mm, in, r, 1.0f, dh, r, As, in, 1.0f, dx + (size_t)row0 * in, in);
            }
        }
    }
}
