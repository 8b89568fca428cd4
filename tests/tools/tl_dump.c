/* tl_dump: runs tailor's model on a given packed micro-batch with given LoRA weights and writes everything a
 * cross-check needs (logits, per-row log-probabilities, per-adapter losses, every LoRA gradient), so that
 * tests/torch/test_model_vs_torch.py can compare tailor with an independent PyTorch reference.
 *
 *   tl_dump MODEL_DIR IN.safetensors OUT.safetensors
 *
 * IN:  "tokens" I32 [n], "cu_seqlens" I32 [nseq+1], "seq_slot" I32 [nseq] (-1 = no adapter), "prompt_len" I32
 *      [nseq], "lora.{slot}.{layer}.{target}.A" [r, in] and ".B" [out, r] for every slot, layer and enabled
 *      target (target by name, e.g. q_proj); metadata rank, alpha, rslora (0/1), targets (comma list), n_slots.
 *      Sequences must be grouped by slot (one contiguous run of sequences per slot).
 * OUT: "logits" F32 [n, V] (tl_model_logits), "logp" F32 [n] (tl_model_step, train), "logp_eval" F32 [n]
 *      (tl_model_step, no train), "loss" F32 [n_slots] = -sum weight * logp over each slot's rows,
 *      "inv_freq" F32 [head_dim/2], "grad.{slot}.{layer}.{target}.A" / ".B".
 *
 * Batch rules are the batcher's: row j-1 of a sequence targets tokens[j] for j >= max(1, prompt_len); each
 * target row weighs 1 / (target rows of its slot in the batch). Runs on the CPU backend (fp32). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_safetensors.h"
#include "trainer/model/tl_model.h"
#include "tests/lib/tl_tool_io.h"

typedef struct {
    tl_st_file *in;
    tl_backend *be;
    tl_model model;
    int have_model;
    tl_lora_pool pool;
    int have_pool;
    tl_workspace *ws;
    tl_host_mb mb;
    int32_t *seq_slot, *prompt_len;
    float *host_params, *grads, *logits, *logp, *logp_eval, *loss, *inv_freq;
    tl_st_writer *w;
    char **names;
    int n_slots;
} dump_ctx;

static void ctx_free(dump_ctx *c) {
    if (c->w) tl_st_writer_free(c->w);
    if (c->ws) tl_workspace_free(c->ws, c->be);
    if (c->have_pool) tl_lora_pool_free(&c->pool, c->be);
    if (c->have_model) tl_model_free(&c->model);
    if (c->be) c->be->destroy(c->be);
    if (c->in) tl_st_close(c->in);
    tl_host_mb *mb = &c->mb;
    free(mb->tokens), free(mb->pos), free(mb->cu_seqlens), free(mb->targets), free(mb->weight);
    free(mb->adapter), free(mb->row_seed), free(mb->segs), free(mb->example);
    free(c->seq_slot), free(c->prompt_len), free(c->host_params), free(c->grads), free(c->logits);
    free(c->logp), free(c->logp_eval), free(c->loss), free(c->inv_freq);
    if (c->names)
        for (int s = 0; s < c->n_slots; s++) free(c->names[s]);
    free(c->names);
}

/* Builds the host micro-batch from tokens / cu_seqlens / seq_slot / prompt_len (batcher rules). */
static tl_status build_mb(dump_ctx *c, int32_t *tokens, int64_t n, int32_t *cu, int64_t nseq, tl_error *err) {
    tl_host_mb *mb = &c->mb;
    mb->n_tok = (int)n, mb->n_seq = (int)nseq, mb->tokens = tokens, mb->cu_seqlens = cu;
    mb->pos = malloc((size_t)n * sizeof(int32_t));
    mb->targets = malloc((size_t)n * sizeof(int32_t));
    mb->weight = malloc((size_t)n * sizeof(float));
    mb->adapter = malloc((size_t)n * sizeof(int32_t));
    mb->row_seed = malloc((size_t)n * sizeof(uint64_t));
    mb->segs = malloc((size_t)nseq * sizeof(tl_seg));
    mb->example = malloc((size_t)nseq * sizeof(int64_t));
    int64_t *count = calloc((size_t)c->n_slots + 1, sizeof(int64_t)); /* index slot + 1 */
    if (!mb->pos || !mb->targets || !mb->weight || !mb->adapter || !mb->row_seed || !mb->segs || !mb->example ||
        !count) {
        free(count);
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory building the micro-batch");
    }
    if (cu[0] != 0 || cu[nseq] != n) {
        free(count);
        return tl_fail(err, TL_ERR_INPUT, "cu_seqlens must start at 0 and end at %lld", (long long)n);
    }
    mb->max_seqlen = 0;
    mb->n_seg = 0;
    for (int64_t s = 0; s < nseq; s++) {
        int32_t b = cu[s], e = cu[s + 1], slot = c->seq_slot[s];
        if (e <= b) {
            free(count);
            return tl_fail(err, TL_ERR_INPUT, "cu_seqlens: sequence %lld is empty", (long long)s);
        }
        if (slot < -1 || slot >= c->n_slots) {
            free(count);
            return tl_fail(err, TL_ERR_INPUT, "seq_slot[%lld] = %d outside [-1, %d)", (long long)s, slot,
                           c->n_slots);
        }
        if (e - b > mb->max_seqlen) mb->max_seqlen = e - b;
        if (mb->n_seg > 0 && mb->segs[mb->n_seg - 1].slot == slot) {
            mb->segs[mb->n_seg - 1].row1 = e;
        } else {
            for (int g = 0; g < mb->n_seg; g++)
                if (mb->segs[g].slot == slot) {
                    free(count);
                    return tl_fail(err, TL_ERR_INPUT, "sequence %lld: slot %d appears in two runs; group the "
                                   "sequences by slot", (long long)s, slot);
                }
            mb->segs[mb->n_seg++] = (tl_seg){.row0 = b, .row1 = e, .slot = slot};
        }
        mb->example[s] = s;
        int first = c->prompt_len[s] > 1 ? c->prompt_len[s] : 1;
        for (int32_t j = b; j < e; j++) {
            int32_t k = j - b;
            mb->pos[j] = k;
            mb->adapter[j] = slot;
            mb->row_seed[j] = (uint64_t)j * 0x9e3779b97f4a7c15ULL + 1;
            mb->targets[j] = (k + 1 < e - b && k + 1 >= first) ? tokens[j + 1] : -1;
            if (mb->targets[j] >= 0) count[slot + 1]++;
        }
    }
    for (int64_t j = 0; j < n; j++)
        mb->weight[j] = mb->targets[j] >= 0 ? (float)(1.0 / (double)count[mb->adapter[j] + 1]) : 0.0f;
    free(count);
    return TL_OK;
}

static tl_status run(dump_ctx *c, const char *model_dir, const char *in_path, const char *out_path,
                     tl_error *err) {
    TL_TRY(tl_st_open(in_path, &c->in, err));
    double rank = 0, alpha = 0, rslora = 0, n_slots = 0;
    uint32_t targets = 0;
    TL_TRY(meta_num(c->in, "rank", &rank, err));
    TL_TRY(meta_num(c->in, "alpha", &alpha, err));
    TL_TRY(meta_num(c->in, "rslora", &rslora, err));
    TL_TRY(meta_num(c->in, "n_slots", &n_slots, err));
    TL_TRY(parse_targets(c->in, &targets, err));
    if (n_slots < 1 || n_slots > 1024 || rank < 1)
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata n_slots %g / rank %g out of range", in_path, n_slots, rank);
    c->n_slots = (int)n_slots;

    int64_t n = 0, ncu = 0, nseq, np = 0;
    int32_t *tokens = NULL, *cu = NULL;
    TL_TRY(read_i32(c->in, "tokens", -1, &c->mb.tokens, &n, err)); /* owned by mb */
    TL_TRY(read_i32(c->in, "cu_seqlens", -1, &c->mb.cu_seqlens, &ncu, err));
    tokens = c->mb.tokens, cu = c->mb.cu_seqlens;
    nseq = ncu - 1;
    if (n < 1 || nseq < 1) return tl_fail(err, TL_ERR_INPUT, "%s: empty batch", in_path);
    TL_TRY(read_i32(c->in, "seq_slot", nseq, &c->seq_slot, &np, err));
    TL_TRY(read_i32(c->in, "prompt_len", nseq, &c->prompt_len, &np, err));

    TL_TRY(tl_backend_open("cpu", 0, &c->be, err));
    tl_backend *be = c->be;
    TL_TRY(tl_model_load(model_dir, be, &c->model, err));
    c->have_model = 1;
    const tl_model_config *cfg = &c->model.cfg;
    int V = cfg->vocab_size, L = cfg->num_hidden_layers;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return tl_fail(err, TL_ERR_INPUT, "%s: tokens[%lld] = %d outside the vocabulary of %d", in_path,
                           (long long)i, tokens[i], V);

    c->names = calloc((size_t)c->n_slots, sizeof(char *));
    if (!c->names) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    for (int s = 0; s < c->n_slots; s++) {
        c->names[s] = malloc(32);
        if (!c->names[s]) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        snprintf(c->names[s], 32, "slot%d", s);
    }
    TL_TRY(tl_lora_pool_init(&c->pool, &c->model, c->n_slots, c->names, (int)rank, (float)alpha, rslora != 0, 0.0f,
                             targets, 1234, err));
    c->have_pool = 1;
    tl_lora_pool *p = &c->pool;
    size_t P = p->P, total = (size_t)c->n_slots * P;

    /* Every float of the pool must come from IN: poison first, then count what was written. */
    c->host_params = malloc(total * sizeof(float));
    c->grads = malloc(total * sizeof(float));
    if (!c->host_params || !c->grads) return tl_fail(err, TL_ERR_RUNTIME, "out of memory for the pool");
    for (size_t i = 0; i < total; i++) c->host_params[i] = NAN;
    size_t filled = 0;
    char name[128];
    for (int s = 0; s < c->n_slots; s++)
        for (int l = 0; l < L; l++)
            for (int t = 0; t < TL_N_TARGETS; t++) {
                if (!(targets & (1u << t))) continue;
                size_t k = (size_t)l * TL_N_TARGETS + t;
                int in = p->in_dim[t], out = p->out_dim[t], r = p->rank;
                int64_t sa[2] = {r, in}, sb[2] = {out, r};
                snprintf(name, sizeof name, "lora.%d.%d.%s.A", s, l, tl_target_names[t]);
                TL_TRY(tl_st_read_f32(c->in, name, sa, 2, c->host_params + (size_t)s * P + p->off_A[k], err));
                snprintf(name, sizeof name, "lora.%d.%d.%s.B", s, l, tl_target_names[t]);
                TL_TRY(tl_st_read_f32(c->in, name, sb, 2, c->host_params + (size_t)s * P + p->off_B[k], err));
                filled += (size_t)r * in + (size_t)out * r;
            }
    if (filled != total)
        return tl_fail(err, TL_ERR_RUNTIME, "pool layout: A/B blocks cover %zu floats of the pool's %zu", filled,
                       total);
    for (size_t i = 0; i < total; i++)
        if (isnan(c->host_params[i]))
            return tl_fail(err, TL_ERR_RUNTIME, "pool layout: float %zu of the pool was not covered by any A/B", i);
    be->upload(be, p->params, c->host_params, total * sizeof(float));

    TL_TRY(build_mb(c, tokens, n, cu, nseq, err));
    TL_TRY(tl_workspace_create(&c->model, p, (int)n, (int)nseq, &c->ws, err));

    size_t nv = (size_t)n * V;
    c->logits = malloc(nv * sizeof(float));
    c->logp = malloc((size_t)n * sizeof(float));
    c->logp_eval = malloc((size_t)n * sizeof(float));
    c->loss = malloc((size_t)c->n_slots * sizeof(float));
    c->inv_freq = malloc((size_t)(cfg->head_dim / 2) * sizeof(float));
    if (!c->logits || !c->logp || !c->logp_eval || !c->loss || !c->inv_freq)
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory for outputs");
    for (size_t i = 0; i < nv; i++) c->logits[i] = NAN;
    for (int64_t i = 0; i < n; i++) c->logp[i] = c->logp_eval[i] = NAN;

    TL_TRY(tl_model_logits(&c->model, p, c->ws, &c->mb, c->logits, err));
    TL_TRY(tl_model_step(&c->model, p, c->ws, &c->mb, 0, c->logp_eval, err));
    be->zero(be, p->grads, total * sizeof(float));
    TL_TRY(tl_model_step(&c->model, p, c->ws, &c->mb, 1, c->logp, err));
    TL_TRY(be->status(be, err));
    be->download(be, c->grads, p->grads, total * sizeof(float));
    be->download(be, c->inv_freq, c->model.inv_freq, (size_t)(cfg->head_dim / 2) * sizeof(float));

    for (int s = 0; s < c->n_slots; s++) {
        double acc = 0.0;
        for (int64_t j = 0; j < n; j++)
            if (c->mb.adapter[j] == s) acc -= (double)c->mb.weight[j] * (double)c->logp[j];
        c->loss[s] = (float)acc;
    }

    c->w = tl_st_writer_new();
    if (!c->w) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    int64_t shp[2] = {n, V};
    TL_TRY(tl_st_writer_add_f32(c->w, "logits", shp, 2, c->logits, err));
    TL_TRY(tl_st_writer_add_f32(c->w, "logp", &n, 1, c->logp, err));
    TL_TRY(tl_st_writer_add_f32(c->w, "logp_eval", &n, 1, c->logp_eval, err));
    int64_t ns = c->n_slots, nh = cfg->head_dim / 2;
    TL_TRY(tl_st_writer_add_f32(c->w, "loss", &ns, 1, c->loss, err));
    TL_TRY(tl_st_writer_add_f32(c->w, "inv_freq", &nh, 1, c->inv_freq, err));
    TL_TRY(tl_st_writer_add_bytes(c->w, "targets", "I32", &n, 1, c->mb.targets, (uint64_t)n * sizeof(int32_t),
                                  err));
    TL_TRY(tl_st_writer_add_f32(c->w, "weight", &n, 1, c->mb.weight, err));
    TL_TRY(add_lora_grads(c->w, p, c->grads, c->n_slots, err));
    return tl_st_writer_write(c->w, out_path, err);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: tl_dump MODEL_DIR IN.safetensors OUT.safetensors\n");
        return 2;
    }
    dump_ctx c;
    memset(&c, 0, sizeof c);
    tl_error err = {0};
    tl_status s = run(&c, argv[1], argv[2], argv[3], &err);
    ctx_free(&c);
    if (s != TL_OK) {
        fprintf(stderr, "tl_dump: %s\n", err.msg);
        return (int)s;
    }
    return 0;
}
