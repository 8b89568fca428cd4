/* rl_step: rollouts with the batched decoder, reward scoring, advantages and the policy-gradient backward pass
 * of task.type grpo / rloo (see tl_rl_step.h; the math is rl_loss.c). */
#include "trainer/step/tl_rl_step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_io.h"
#include "kernels/tl_math.h"
#include "trainer/eval/tl_generate.h"

struct tl_rl {
    tl_rl_opts o;
    const tl_model *m;
    int G, maxc, n_max, max_seqs, hidden;
    /* rollout */
    tl_decoder *dec;
    int32_t *dslots;                  /* [n_max] */
    float *logits;                    /* [n_max * V] */
    tl_prob_id *scratch;              /* [V] */
    int32_t *toks;                    /* [max(micro_batch_tokens, n_max)] */
    int *n_new, *done;                /* [n_max] */
    uint64_t *rng, *seed;             /* [n_max] */
    int32_t *comp;                    /* [n_max * maxc] completion tokens */
    int *comp_len;                    /* [n_max] */
    const tl_rl_prompt **comp_prompt; /* [n_max] */
    double *reward, *adv;             /* [n_max] */
    int *grp_seqs;                    /* [n_max] completions of the completion's adapter in the step */
    int64_t *grp_tokens;              /* [n_max] their completion tokens */
    int n_comp;
    /* one micro-batch of prompt + completion sequences */
    tl_host_mb mb;
    float *logp, *ref_logp, *dlogp; /* [micro_batch_tokens] */
    double *c_logp, *c_ref, *c_d;   /* [micro_batch_tokens] completion rows, compacted */
    int64_t *c_off;                 /* [max_seqs + 1] */
    double *c_adv;                  /* [max_seqs] */
    /* reward scoring */
    tl_workspace *rws;
    int32_t *rows;     /* [max_seqs] */
    float *hid, *head; /* [max_seqs * hidden], [hidden] */
};

static void *xmalloc(size_t n, int *bad) {
    void *p = malloc(n ? n : 1);
    if (!p) *bad = 1;
    return p;
}

void tl_rl_free(tl_rl *r) {
    if (!r) return;
    tl_decoder_free(r->dec);
    if (r->rws) tl_workspace_free(r->rws, r->m->be);
    free(r->dslots), free(r->logits), free(r->scratch), free(r->toks), free(r->n_new), free(r->done);
    free(r->rng), free(r->seed), free(r->comp), free(r->comp_len), free(r->comp_prompt), free(r->reward);
    free(r->adv), free(r->grp_seqs), free(r->grp_tokens);
    tl_host_mb *b = &r->mb;
    free(b->tokens), free(b->pos), free(b->cu_seqlens), free(b->targets), free(b->weight), free(b->adapter);
    free(b->row_seed), free(b->segs), free(b->example);
    free(r->logp), free(r->ref_logp), free(r->dlogp), free(r->c_logp), free(r->c_ref), free(r->c_d), free(r->c_off);
    free(r->c_adv), free(r->rows), free(r->hid), free(r->head);
    free(r);
}

tl_status tl_rl_create(const tl_model *m, const tl_lora_pool *policy, const tl_lora_pool *reward, const tl_rl_opts *o,
                       tl_rl **out, tl_error *err) {
    *out = NULL;
    TL_TRY(tl_rl_loss_opts_check(&o->loss, err));
    if (o->num_generations < 2)
        return tl_fail(err, TL_ERR_INPUT,
                       "task.num_generations: %d, expected >= 2 (the advantages compare a "
                       "prompt's completions with each other)",
                       o->num_generations);
    int64_t seq_max = (int64_t)o->max_prompt_len + o->loss.max_completion;
    if (seq_max > o->micro_batch_tokens)
        return tl_fail(err, TL_ERR_INPUT,
                       "train.micro_batch_tokens (%d) must hold the longest prompt (%d tokens) "
                       "plus task.max_completion_length (%d)",
                       o->micro_batch_tokens, o->max_prompt_len, o->loss.max_completion);
    if (seq_max > m->cfg.max_position_embeddings)
        return tl_fail(err, TL_ERR_INPUT,
                       "the longest prompt (%d tokens) plus task.max_completion_length (%d) "
                       "passes the model's context of %d",
                       o->max_prompt_len, o->loss.max_completion, m->cfg.max_position_embeddings);
    if (reward && reward->head_dim != m->cfg.hidden_size)
        return tl_fail(err, TL_ERR_INPUT, "task.reward_model: the reward adapters have no score head");
    tl_rl *r = calloc(1, sizeof *r);
    if (!r) return tl_fail(err, TL_ERR_RUNTIME, "RL step: out of host memory");
    r->o = *o, r->m = m, r->G = o->num_generations, r->maxc = o->loss.max_completion;
    r->n_max = o->max_prompts * o->num_generations, r->hidden = m->cfg.hidden_size;
    int mbt = o->micro_batch_tokens;
    r->max_seqs = mbt / 2 + 1 < r->n_max ? mbt / 2 + 1 : r->n_max;
    size_t n = (size_t)r->n_max, V = (size_t)m->cfg.vocab_size, T = (size_t)mbt, S = (size_t)r->max_seqs;
    int bad = 0;
    r->dslots = xmalloc(n * sizeof(int32_t), &bad);
    r->logits = xmalloc(n * V * sizeof(float), &bad);
    r->scratch = xmalloc(V * sizeof(tl_prob_id), &bad);
    size_t nt = T > n ? T : n;
    r->toks = xmalloc(nt * sizeof(int32_t), &bad);
    r->n_new = xmalloc(n * sizeof(int), &bad);
    r->done = xmalloc(n * sizeof(int), &bad);
    r->rng = xmalloc(n * sizeof(uint64_t), &bad);
    r->seed = xmalloc(n * sizeof(uint64_t), &bad);
    r->comp = xmalloc(n * (size_t)r->maxc * sizeof(int32_t), &bad);
    r->comp_len = xmalloc(n * sizeof(int), &bad);
    r->comp_prompt = xmalloc(n * sizeof(*r->comp_prompt), &bad);
    r->reward = xmalloc(n * sizeof(double), &bad);
    r->adv = xmalloc(n * sizeof(double), &bad);
    r->grp_seqs = xmalloc(n * sizeof(int), &bad);
    r->grp_tokens = xmalloc(n * sizeof(int64_t), &bad);
    tl_host_mb *b = &r->mb;
    b->tokens = xmalloc(T * sizeof(int32_t), &bad);
    b->pos = xmalloc(T * sizeof(int32_t), &bad);
    b->cu_seqlens = xmalloc((S + 1) * sizeof(int32_t), &bad);
    b->targets = xmalloc(T * sizeof(int32_t), &bad);
    b->weight = xmalloc(T * sizeof(float), &bad);
    b->adapter = xmalloc(T * sizeof(int32_t), &bad);
    b->row_seed = xmalloc(T * sizeof(uint64_t), &bad);
    b->segs = xmalloc((S + 1) * sizeof(tl_seg), &bad);
    b->example = xmalloc(S * sizeof(int64_t), &bad);
    r->logp = xmalloc(T * sizeof(float), &bad);
    r->ref_logp = xmalloc(T * sizeof(float), &bad);
    r->dlogp = xmalloc(T * sizeof(float), &bad);
    r->c_logp = xmalloc(T * sizeof(double), &bad);
    r->c_ref = xmalloc(T * sizeof(double), &bad);
    r->c_d = xmalloc(T * sizeof(double), &bad);
    r->c_off = xmalloc((S + 1) * sizeof(int64_t), &bad);
    r->c_adv = xmalloc(S * sizeof(double), &bad);
    r->rows = xmalloc(S * sizeof(int32_t), &bad);
    r->hid = xmalloc(S * (size_t)r->hidden * sizeof(float), &bad);
    r->head = xmalloc((size_t)r->hidden * sizeof(float), &bad);
    tl_status s =
        bad ? tl_fail(err, TL_ERR_RUNTIME, "RL step: out of host memory (%d completions per step)", r->n_max) : TL_OK;
    for (size_t i = 0; !s && i < n; i++) r->dslots[i] = -1; /* TL_SLOT_BASE until a step assigns them */
    int rows = mbt > r->n_max ? mbt : r->n_max;
    if (!s) s = tl_decoder_create(m, policy, r->n_max, r->dslots, (int)seq_max, rows, &r->dec, err);
    /* the reward pool may have another rank or targets than the policy: its own activations */
    if (!s && reward) s = tl_workspace_create(m, reward, mbt, r->max_seqs, &r->rws, err);
    if (s) {
        tl_rl_free(r);
        return s;
    }
    *out = r;
    return TL_OK;
}

static int is_eos(const tl_rl *r, int32_t t) {
    for (int i = 0; i < r->o.n_eos; i++)
        if (r->o.eos[i] == t) return 1;
    return 0;
}

/* Samples every completion: prompts prefilled in chunks of the decoder's rows, then one token per sequence per
 * decode step until EOS or max_completion. */
static tl_status rollout(tl_rl *r, const tl_lora_pool *pool, int base, const tl_rl_prompt *prompts, int n_prompts,
                         tl_error *err) {
    const int G = r->G, V = r->m->cfg.vocab_size, mbt = r->o.micro_batch_tokens;
    const int nc = n_prompts * G;
    r->n_comp = nc;
    for (int c = 0; c < r->n_max; c++) r->dslots[c] = c < nc && !base ? prompts[c / G].slot : -1;
    TL_TRY(tl_decoder_reset(r->dec, pool, r->dslots, err));
    for (int c = 0; c < r->n_max; c++) r->n_new[c] = 0;
    for (int c = 0; c < nc; c++) {
        const tl_rl_prompt *p = &prompts[c / G];
        r->comp_prompt[c] = p, r->comp_len[c] = 0, r->done[c] = 0;
        /* the stream of generation g of a prompt: its seed and g only, never the batch */
        r->seed[c] = tl_mix64(p->seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(c % G + 1)));
        r->rng[c] = r->seed[c];
    }
    /* prefill, chunk by chunk */
    for (int c0 = 0; c0 < nc;) {
        int rows = 0, c1 = c0;
        while (c1 < nc && rows + r->comp_prompt[c1]->n <= mbt) {
            memcpy(r->toks + rows, r->comp_prompt[c1]->tokens, (size_t)r->comp_prompt[c1]->n * sizeof(int32_t));
            rows += r->comp_prompt[c1]->n;
            r->n_new[c1] = r->comp_prompt[c1]->n;
            c1++;
        }
        TL_TRY(tl_decoder_append(r->dec, r->toks, r->n_new, r->logits, err));
        for (int c = c0; c < c1; c++) r->n_new[c] = 0;
        c0 = c1;
    }
    for (int step = 0; step < r->maxc; step++) {
        int k = 0;
        for (int c = 0; c < nc; c++) {
            r->n_new[c] = 0;
            if (r->done[c]) continue;
            int32_t t =
                tl_sample_token(r->logits + (size_t)c * V, V, r->o.temperature, r->o.top_p, &r->rng[c], r->scratch);
            r->comp[(size_t)c * r->maxc + r->comp_len[c]++] = t;
            if (is_eos(r, t) || r->comp_len[c] == r->maxc) {
                r->done[c] = 1 + is_eos(r, t);
                continue;
            }
            r->toks[k++] = t, r->n_new[c] = 1;
        }
        if (!k) break;
        TL_TRY(tl_decoder_append(r->dec, r->toks, r->n_new, r->logits, err));
    }
    return TL_OK;
}

/* Packs completions c0.. as prompt + completion sequences into r->mb while they fit; returns the end. Each
 * adapter's sequences form one segment (its slot); a row is trained (weight 1) when its target is a completion
 * token. */
static int fill_mb(tl_rl *r, int c0) {
    tl_host_mb *b = &r->mb;
    const int mbt = r->o.micro_batch_tokens;
    b->n_tok = b->n_seq = b->n_seg = b->max_seqlen = 0;
    b->cu_seqlens[0] = 0;
    int c = c0;
    for (; c < r->n_comp && b->n_seq < r->max_seqs; c++) {
        const tl_rl_prompt *p = r->comp_prompt[c];
        int np = p->n, len = np + r->comp_len[c], r0 = b->n_tok;
        if (r0 + len > mbt) break;
        const int32_t *ct = r->comp + (size_t)c * r->maxc;
        for (int j = 0; j < len; j++) {
            int row = r0 + j;
            b->tokens[row] = j < np ? p->tokens[j] : ct[j - np];
            b->pos[row] = j;
            int tgt = j + 1 < len && j + 1 >= np ? (j + 1 < np ? p->tokens[j + 1] : ct[j + 1 - np]) : -1;
            b->targets[row] = tgt;
            b->weight[row] = tgt >= 0 ? 1.0f : 0.0f;
            b->adapter[row] = p->slot;
            b->row_seed[row] = tl_mix64(r->seed[c] ^ (uint64_t)j);
        }
        b->example[b->n_seq] = c;
        b->n_tok += len;
        b->cu_seqlens[++b->n_seq] = b->n_tok;
        if (len > b->max_seqlen) b->max_seqlen = len;
        if (b->n_seg > 0 && b->segs[b->n_seg - 1].slot == p->slot) b->segs[b->n_seg - 1].row1 = b->n_tok;
        else b->segs[b->n_seg++] = (tl_seg){r0, b->n_tok, p->slot};
    }
    return c;
}

/* Rewards of the completions in r->mb: the reward adapter of each sequence's slot scores its last token. */
static tl_status score_mb(tl_rl *r, const tl_lora_pool *reward, tl_error *err) {
    const tl_model *m = r->m;
    tl_backend *be = m->be;
    tl_host_mb *b = &r->mb;
    const int d = r->hidden;
    for (int q = 0; q < b->n_seq; q++) r->rows[q] = b->cu_seqlens[q + 1] - 1;
    TL_TRY(tl_model_forward(m, reward, r->rws, b, 0, err));
    TL_TRY(tl_model_hidden_rows(m, r->rws, r->rows, b->n_seq, r->hid, err));
    int loaded = -1;
    for (int q = 0; q < b->n_seq; q++) {
        int c = (int)b->example[q], slot = r->comp_prompt[c]->slot;
        if (slot != loaded) {
            be->download(be, r->head, reward->params + (size_t)slot * reward->P + reward->off_head,
                         (size_t)d * sizeof(float));
            loaded = slot;
        }
        double acc = 0;
        for (int j = 0; j < d; j++) acc += (double)r->head[j] * r->hid[(size_t)q * d + j];
        r->reward[c] = acc;
    }
    return be->status(be, err);
}

/* Policy (and reference) passes over r->mb: the loss of each adapter's completions in it, scattered as
 * d loss / d logp onto their rows, and the backward pass. */
static tl_status train_mb(tl_rl *r, tl_lora_pool *policy, const tl_lora_pool *ref, tl_workspace *ws, tl_rl_stats *stats,
                          tl_error *err) {
    const tl_model *m = r->m;
    tl_host_mb *b = &r->mb;
    const int use_ref = r->o.loss.beta != 0;
    if (use_ref) {
        TL_TRY(tl_model_forward(m, ref ? ref : policy, ws, b, ref == NULL, err));
        TL_TRY(tl_model_logp(m, ws, b, NULL, r->ref_logp, err));
    }
    TL_TRY(tl_model_forward(m, policy, ws, b, 0, err));
    TL_TRY(tl_model_logp(m, ws, b, NULL, r->logp, err));
    memset(r->dlogp, 0, (size_t)b->n_tok * sizeof(float));
    /* runs of one adapter's sequences; completion rows compacted for tl_rl_loss */
    for (int q0 = 0; q0 < b->n_seq;) {
        int c0 = (int)b->example[q0], slot = r->comp_prompt[c0]->slot, q1 = q0;
        int64_t k = 0;
        r->c_off[0] = 0;
        while (q1 < b->n_seq && r->comp_prompt[b->example[q1]]->slot == slot) {
            int c = (int)b->example[q1];
            int first = b->cu_seqlens[q1] + r->comp_prompt[c]->n - 1; /* the row whose target is completion token 0 */
            for (int j = 0; j < r->comp_len[c]; j++, k++) {
                r->c_logp[k] = r->logp[first + j];
                r->c_ref[k] = use_ref ? r->ref_logp[first + j] : 0.0;
            }
            r->c_off[q1 - q0 + 1] = k;
            r->c_adv[q1 - q0] = r->adv[c];
            q1++;
        }
        tl_rl_batch rb = {.n_seq = q1 - q0,
                          .off = r->c_off,
                          .logp = r->c_logp,
                          .old = r->c_logp,
                          .ref = use_ref ? r->c_ref : NULL,
                          .adv = r->c_adv,
                          .group_seqs = r->grp_seqs[c0],
                          .group_tokens = r->grp_tokens[c0]};
        tl_rl_loss_out lo;
        tl_rl_loss(&r->o.loss, &rb, r->c_d, &lo);
        if (!isfinite(lo.loss))
            return tl_fail(err, TL_ERR_RUNTIME, "adapter '%s': RL loss is not finite", policy->names[slot]);
        tl_rl_stats *st = &stats[slot];
        st->loss += lo.loss, st->kl += lo.kl, st->clipped += lo.low_clipped + lo.high_clipped;
        k = 0;
        for (int q = q0; q < q1; q++) {
            int c = (int)b->example[q];
            int first = b->cu_seqlens[q] + r->comp_prompt[c]->n - 1;
            for (int j = 0; j < r->comp_len[c]; j++, k++) r->dlogp[first + j] = (float)r->c_d[k];
        }
        q0 = q1;
    }
    TL_TRY(tl_model_logp(m, ws, b, r->dlogp, NULL, err));
    return tl_model_backward(m, policy, ws, err);
}

static tl_status check_prompts(const tl_rl *r, const tl_rl_prompt *prompts, int n_prompts, tl_rl_stats *stats,
                               tl_error *err) {
    if (n_prompts > r->o.max_prompts)
        return tl_fail(err, TL_ERR_RUNTIME, "RL step: %d prompts, planned for %d", n_prompts, r->o.max_prompts);
    for (int i = 0; i < n_prompts; i++) {
        if (prompts[i].n < 1 || prompts[i].n > r->o.max_prompt_len)
            return tl_fail(err, TL_ERR_RUNTIME, "RL step: prompt %d has %d tokens, planned for 1..%d", i, prompts[i].n,
                           r->o.max_prompt_len);
        if (i > 0 && prompts[i].slot < prompts[i - 1].slot)
            return tl_fail(err, TL_ERR_RUNTIME, "RL step: prompts not grouped by adapter in slot order");
        memset(&stats[prompts[i].slot], 0, sizeof *stats);
    }
    return TL_OK;
}

/* Advantages per adapter and the policy passes, on the completions and rewards held in r. */
static tl_status advantages_and_train(tl_rl *r, tl_lora_pool *policy, const tl_lora_pool *ref, tl_workspace *ws,
                                      const tl_rl_prompt *prompts, int n_prompts, tl_rl_stats *stats,
                                      tl_rl_timing *timing, tl_error *err) {
    const int G = r->G, nc = r->n_comp;
    /* per adapter (a run of prompts of one slot): advantages over its groups, and the group totals */
    for (int i0 = 0; i0 < n_prompts;) {
        int slot = prompts[i0].slot, i1 = i0;
        while (i1 < n_prompts && prompts[i1].slot == slot) i1++;
        int c0 = i0 * G, c1 = i1 * G;
        tl_rl_stats *st = &stats[slot];
        int64_t tok = 0;
        for (int c = c0; c < c1; c++) {
            tok += r->comp_len[c];
            st->reward += r->reward[c], st->reward_sq += r->reward[c] * r->reward[c];
            st->eos_stops += r->done[c] == 2;
        }
        for (int c = c0; c < c1; c++) r->grp_seqs[c] = c1 - c0, r->grp_tokens[c] = tok;
        st->completions += c1 - c0, st->tokens += tok, st->groups += i1 - i0;
        for (int g = i0; g < i1; g++) { /* each group's reward std (TRL's reward_std) */
            double sd;
            tl_rl_advantages(r->o.adv, 1, G, 0, r->reward + (size_t)g * G, r->adv + (size_t)g * G, &sd);
            st->group_std += sd;
        }
        tl_rl_advantages(r->o.adv, i1 - i0, G, r->o.scale_rewards, r->reward + c0, r->adv + c0, NULL);
        i0 = i1;
    }
    for (int c0 = 0; c0 < nc;) { /* policy gradients */
        int c1 = fill_mb(r, c0);
        TL_TRY(train_mb(r, policy, ref, ws, stats, err));
        timing->train_tokens += r->mb.n_tok;
        c0 = c1;
    }
    return TL_OK;
}

tl_status tl_rl_step(tl_rl *r, tl_lora_pool *policy, const tl_lora_pool *ref, const tl_lora_pool *reward,
                     tl_workspace *ws, const tl_rl_prompt *prompts, int n_prompts, tl_rl_stats *stats,
                     tl_rl_timing *timing, tl_error *err) {
    if (!r->rws) return tl_fail(err, TL_ERR_RUNTIME, "RL step: planned without a reward pool");
    TL_TRY(check_prompts(r, prompts, n_prompts, stats, err));
    memset(timing, 0, sizeof *timing);
    double t0 = tl_now_s();
    TL_TRY(rollout(r, policy, 0, prompts, n_prompts, err));
    double t1 = tl_now_s();
    for (int c = 0; c < r->n_comp; c++) timing->rollout_tokens += r->comp_len[c];
    for (int c0 = 0; c0 < r->n_comp;) { /* rewards */
        int c1 = fill_mb(r, c0);
        TL_TRY(score_mb(r, reward, err));
        c0 = c1;
    }
    TL_TRY(advantages_and_train(r, policy, ref, ws, prompts, n_prompts, stats, timing, err));
    timing->rollout_s = t1 - t0, timing->train_s = tl_now_s() - t1;
    return TL_OK;
}

tl_status tl_rl_sample_score(tl_rl *r, const tl_lora_pool *policy, const tl_lora_pool *reward,
                             const tl_rl_prompt *prompts, int n_prompts, tl_error *err) {
    if (!r->rws) return tl_fail(err, TL_ERR_RUNTIME, "RL evaluation: planned without a reward pool");
    if (n_prompts > r->o.max_prompts)
        return tl_fail(err, TL_ERR_RUNTIME, "RL evaluation: %d prompts, planned for %d", n_prompts, r->o.max_prompts);
    TL_TRY(rollout(r, policy, policy == NULL, prompts, n_prompts, err));
    for (int c0 = 0; c0 < r->n_comp;) {
        int c1 = fill_mb(r, c0);
        TL_TRY(score_mb(r, reward, err));
        c0 = c1;
    }
    return TL_OK;
}

tl_status tl_rl_train_given(tl_rl *r, tl_lora_pool *policy, const tl_lora_pool *ref, tl_workspace *ws,
                            const tl_rl_prompt *prompts, int n_prompts, const int32_t *comp, const int64_t *comp_off,
                            const double *rewards, tl_rl_stats *stats, tl_rl_timing *timing, tl_error *err) {
    TL_TRY(check_prompts(r, prompts, n_prompts, stats, err));
    memset(timing, 0, sizeof *timing);
    const int G = r->G;
    r->n_comp = n_prompts * G;
    for (int c = 0; c < r->n_comp; c++) {
        int64_t len = comp_off[c + 1] - comp_off[c];
        if (len < 1 || len > r->maxc)
            return tl_fail(err, TL_ERR_INPUT, "RL step: completion %d has %lld tokens, expected 1..%d", c,
                           (long long)len, r->maxc);
        r->comp_prompt[c] = &prompts[c / G];
        r->comp_len[c] = (int)len, r->done[c] = 1, r->reward[c] = rewards[c];
        r->seed[c] = tl_mix64(prompts[c / G].seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(c % G + 1)));
        memcpy(r->comp + (size_t)c * r->maxc, comp + comp_off[c], (size_t)len * sizeof(int32_t));
    }
    double t1 = tl_now_s();
    TL_TRY(advantages_and_train(r, policy, ref, ws, prompts, n_prompts, stats, timing, err));
    timing->train_s = tl_now_s() - t1;
    return TL_OK;
}

int tl_rl_completion(const tl_rl *r, int c, const int32_t **tokens) {
    if (c < 0 || c >= r->n_comp) return 0;
    *tokens = r->comp + (size_t)c * r->maxc;
    return r->comp_len[c];
}

double tl_rl_reward(const tl_rl *r, int c) { return c >= 0 && c < r->n_comp ? r->reward[c] : NAN; }
