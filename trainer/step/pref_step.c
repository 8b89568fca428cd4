/* pref_step: DPO-family and reward-model micro-batches (see tl_pref_step.h). */
#include "trainer/step/tl_pref_step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tl_pref_scratch {
    int max_tokens, max_seqs, hidden;
    float *logp, *dlogp; /* [max_tokens] */
    double *seq_policy, *seq_ref; /* [max_seqs] per-sequence sums of response log-probs */
    int64_t *seq_n;               /* [max_seqs] response tokens per sequence */
    int32_t *rows;                /* [max_seqs] */
    float *hid, *dhid;            /* [max_seqs, hidden] */
    double *dr;                   /* [max_seqs] */
    float *head, *dhead;          /* [hidden] one adapter's score head and its gradient */
};

tl_status tl_pref_scratch_create(int max_tokens, int max_seqs, int hidden, tl_pref_scratch **out, tl_error *err) {
    tl_pref_scratch *s = calloc(1, sizeof *s);
    if (!s) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    s->max_tokens = max_tokens, s->max_seqs = max_seqs, s->hidden = hidden;
    size_t nt = (size_t)max_tokens, ns = (size_t)max_seqs, h = (size_t)hidden;
    s->logp = malloc(nt * sizeof(float));
    s->dlogp = malloc(nt * sizeof(float));
    s->seq_policy = malloc(ns * sizeof(double));
    s->seq_ref = malloc(ns * sizeof(double));
    s->seq_n = malloc(ns * sizeof(int64_t));
    s->rows = malloc(ns * sizeof(int32_t));
    s->hid = malloc(ns * h * sizeof(float));
    s->dhid = malloc(ns * h * sizeof(float));
    s->dr = malloc(ns * sizeof(double));
    s->head = malloc(h * sizeof(float));
    s->dhead = malloc(h * sizeof(float));
    if (!s->logp || !s->dlogp || !s->seq_policy || !s->seq_ref || !s->seq_n || !s->rows || !s->hid || !s->dhid ||
        !s->dr || !s->head || !s->dhead) {
        tl_pref_scratch_free(s);
        return tl_fail(err, TL_ERR_RUNTIME, "out of host memory for preference scratch (%d tokens)", max_tokens);
    }
    *out = s;
    return TL_OK;
}

void tl_pref_scratch_free(tl_pref_scratch *s) {
    if (!s) return;
    free(s->logp), free(s->dlogp), free(s->seq_policy), free(s->seq_ref), free(s->seq_n), free(s->rows);
    free(s->hid), free(s->dhid), free(s->dr), free(s->head), free(s->dhead);
    free(s);
}

/* Per-sequence sums of the trained rows' log-probs (the response tokens), and their counts. */
static void seq_sums(const tl_host_mb *mb, const float *logp, double *sum, int64_t *n) {
    for (int q = 0; q < mb->n_seq; q++) {
        double acc = 0;
        int64_t k = 0;
        for (int i = mb->cu_seqlens[q]; i < mb->cu_seqlens[q + 1]; i++)
            if (mb->targets[i] >= 0) acc += logp[i], k++;
        sum[q] = acc;
        if (n) n[q] = k;
    }
}

static tl_status check_fit(const tl_pref_scratch *sc, const tl_host_mb *mb, tl_error *err) {
    if (mb->n_tok > sc->max_tokens || mb->n_seq > sc->max_seqs)
        return tl_fail(err, TL_ERR_RUNTIME, "preference micro-batch of %d tokens / %d sequences exceeds the planned %d / %d",
                       mb->n_tok, mb->n_seq, sc->max_tokens, sc->max_seqs);
    return TL_OK;
}

tl_status tl_dpo_microbatch(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_pref_scratch *sc,
                            const tl_host_mb *mb, const tl_pair_set *ps, const tl_pref_opts *o, int train,
                            tl_pref_acc *acc, tl_error *err) {
    TL_TRY(check_fit(sc, mb, err));
    const tl_lora_pool *ref = ps->ref;
    int need_ref = tl_pref_needs_reference(o->kind);
    if (need_ref && !ps->ref_in) {
        /* reference policy: the frozen starting adapters when there are some, else the bare base model */
        TL_TRY(tl_model_forward(m, ref ? ref : p, ws, mb, ref == NULL, err));
        TL_TRY(tl_model_logp(m, ws, mb, NULL, sc->logp, err));
        seq_sums(mb, sc->logp, sc->seq_ref, NULL);
    } else if (need_ref) {
        for (int k = 0; k < ps->n; k++) {
            sc->seq_ref[ps->seq_c[k]] = ps->ref_in[2 * k];
            sc->seq_ref[ps->seq_r[k]] = ps->ref_in[2 * k + 1];
        }
    } else {
        memset(sc->seq_ref, 0, (size_t)mb->n_seq * sizeof(double));
    }
    if (ps->ref_out)
        for (int k = 0; k < ps->n; k++) {
            ps->ref_out[2 * k] = sc->seq_ref[ps->seq_c[k]];
            ps->ref_out[2 * k + 1] = sc->seq_ref[ps->seq_r[k]];
        }
    TL_TRY(tl_model_forward(m, p, ws, mb, 0, err));
    TL_TRY(tl_model_logp(m, ws, mb, NULL, sc->logp, err));
    seq_sums(mb, sc->logp, sc->seq_policy, sc->seq_n);
    if (train) memset(sc->dlogp, 0, (size_t)mb->n_tok * sizeof(float));
    for (int k = 0; k < ps->n; k++) {
        int c = ps->seq_c[k], r = ps->seq_r[k];
        tl_pref_logps pair = {.pc = sc->seq_policy[c], .pr = sc->seq_policy[r], .rc = sc->seq_ref[c],
                             .rr = sc->seq_ref[r], .nc = sc->seq_n[c], .nr = sc->seq_n[r]};
        tl_pref_out out;
        tl_pref_loss(o, &pair, &out);
        if (!isfinite(out.loss))
            return tl_fail(err, TL_ERR_RUNTIME, "adapter '%s': preference loss is not finite (pair %d of a micro-batch)",
                           p->names[ps->adapter[k]], k);
        tl_pref_stats_add(&acc->stats[ps->adapter[k]], &out);
        if (!train) continue;
        double w = ps->weight ? ps->weight[k] : 1.0;
        /* d(sum of response log-probs)/d(logp of a response token) = 1 */
        for (int i = mb->cu_seqlens[c]; i < mb->cu_seqlens[c + 1]; i++)
            if (mb->targets[i] >= 0) sc->dlogp[i] = (float)(w * out.dpc);
        for (int i = mb->cu_seqlens[r]; i < mb->cu_seqlens[r + 1]; i++)
            if (mb->targets[i] >= 0) sc->dlogp[i] = (float)(w * out.dpr);
    }
    if (!train) return TL_OK;
    TL_TRY(tl_model_logp(m, ws, mb, sc->dlogp, NULL, err));
    return tl_model_backward(m, p, ws, err);
}

/* The slot of the segment that holds row `row` (segments are ordered and cover the micro-batch). */
static int row_slot(const tl_host_mb *mb, int row) {
    int lo = 0, hi = mb->n_seg - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (mb->segs[mid].row0 <= row) lo = mid;
        else hi = mid - 1;
    }
    return mb->n_seg > 0 ? mb->segs[lo].slot : -1;
}

tl_status tl_reward_microbatch(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_pref_scratch *sc,
                               const tl_host_mb *mb, const tl_pair_set *ps, double center_rewards, int train,
                               tl_pref_acc *acc, tl_error *err) {
    TL_TRY(check_fit(sc, mb, err));
    if (p->head_dim != m->cfg.hidden_size)
        return tl_fail(err, TL_ERR_RUNTIME, "reward model: the adapter pool has no score head");
    tl_backend *be = m->be;
    int d = p->head_dim;
    /* HF's sequence classifiers score the last token of each sequence */
    for (int q = 0; q < mb->n_seq; q++) sc->rows[q] = mb->cu_seqlens[q + 1] - 1;
    TL_TRY(tl_model_forward(m, p, ws, mb, 0, err));
    TL_TRY(tl_model_hidden_rows(m, ws, sc->rows, mb->n_seq, sc->hid, err));
    memset(sc->dhid, 0, (size_t)mb->n_seq * d * sizeof(float));
    /* pairs of one adapter are contiguous in a micro-batch: handle the head adapter by adapter. The head is the one
     * of the slot whose LoRA scored the sequence (its segment's): the owner's in training, the evaluated adapter's
     * when an evaluation forces every segment to one slot (cross matrices), never another adapter's. */
    for (int k0 = 0; k0 < ps->n;) {
        int a = ps->adapter[k0], k1 = k0;
        int hs = row_slot(mb, mb->cu_seqlens[ps->seq_c[k0]]);
        if (hs < 0) hs = a;
        while (k1 < ps->n && ps->adapter[k1] == a && row_slot(mb, mb->cu_seqlens[ps->seq_c[k1]]) == hs) k1++;
        be->download(be, sc->head, p->params + (size_t)hs * p->P + p->off_head, (size_t)d * sizeof(float));
        memset(sc->dhead, 0, (size_t)d * sizeof(float));
        for (int k = k0; k < k1; k++) {
            int c = ps->seq_c[k], r = ps->seq_r[k];
            double rc = 0, rr = 0;
            for (int j = 0; j < d; j++) {
                rc += (double)sc->head[j] * sc->hid[(size_t)c * d + j];
                rr += (double)sc->head[j] * sc->hid[(size_t)r * d + j];
            }
            double loss, drc, drr;
            tl_bt_loss(rc, rr, center_rewards, &loss, &drc, &drr);
            if (!isfinite(loss))
                return tl_fail(err, TL_ERR_RUNTIME, "adapter '%s': reward loss is not finite", p->names[a]);
            tl_pref_stats_add_bt(&acc->stats[a], loss, rc, rr);
            if (!train) continue;
            double w = ps->weight ? ps->weight[k] : 1.0;
            drc *= w, drr *= w;
            for (int j = 0; j < d; j++) {
                sc->dhid[(size_t)c * d + j] += (float)(drc * sc->head[j]);
                sc->dhid[(size_t)r * d + j] += (float)(drr * sc->head[j]);
                sc->dhead[j] += (float)(drc * sc->hid[(size_t)c * d + j] + drr * sc->hid[(size_t)r * d + j]);
            }
        }
        if (train) { /* the head's gradient joins the adapter's other gradients (clipping, AdamW) */
            float *g = p->grads + (size_t)hs * p->P + p->off_head;
            be->download(be, sc->head, g, (size_t)d * sizeof(float));
            for (int j = 0; j < d; j++) sc->head[j] += sc->dhead[j];
            be->upload(be, g, sc->head, (size_t)d * sizeof(float));
        }
        k0 = k1;
    }
    if (!train) return be->status(be, err);
    TL_TRY(tl_model_set_dhidden_rows(m, ws, sc->rows, mb->n_seq, sc->dhid, err));
    return tl_model_backward(m, p, ws, err);
}
