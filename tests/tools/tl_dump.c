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
    mb_free(&c->mb);
    free(c->seq_slot), free(c->prompt_len), free(c->host_params), free(c->grads), free(c->logits);
    free(c->logp), free(c->logp_eval), free(c->loss), free(c->inv_freq);
    free_slot_names(c->names, c->n_slots);
}

/* Builds the host micro-batch from tokens / cu_seqlens / seq_slot / prompt_len (batcher rules: each target row
 * weighs 1 / (target rows of its slot); slot -1 = no adapter). */
static tl_status build_mb(dump_ctx *c, int64_t n, int64_t nseq, tl_error *err) {
    tl_host_mb *mb = &c->mb;
    TL_TRY(mb_alloc(mb, n, nseq, err));
    TL_TRY(mb_layout(mb, c->seq_slot, c->prompt_len, c->n_slots, -1, 1, err));
    int64_t *count = calloc((size_t)c->n_slots + 1, sizeof(int64_t)); /* index slot + 1 */
    if (!count) return tl_fail(err, TL_ERR_RUNTIME, "out of memory building the micro-batch");
    for (int64_t j = 0; j < n; j++)
        if (mb->targets[j] >= 0) count[mb->adapter[j] + 1]++;
    for (int64_t j = 0; j < n; j++)
        mb->weight[j] = mb->targets[j] >= 0 ? (float)(1.0 / (double)count[mb->adapter[j] + 1]) : 0.0f;
    free(count);
    return TL_OK;
}

static tl_status run(dump_ctx *c, const char *model_dir, const char *in_path, const char *out_path,
                     tl_error *err) {
    TL_TRY(tl_st_open(in_path, &c->in, err));
    tool_lora_meta lm;
    TL_TRY(read_lora_meta(c->in, &lm, err));
    c->n_slots = (int)lm.n_slots;

    int64_t n = 0, ncu = 0, nseq, np = 0;
    TL_TRY(read_i32(c->in, "tokens", -1, &c->mb.tokens, &n, err)); /* owned by mb */
    TL_TRY(read_i32(c->in, "cu_seqlens", -1, &c->mb.cu_seqlens, &ncu, err));
    nseq = ncu - 1;
    if (n < 1 || nseq < 1) return tl_fail(err, TL_ERR_INPUT, "%s: empty batch", in_path);
    TL_TRY(read_i32(c->in, "seq_slot", nseq, &c->seq_slot, &np, err));
    TL_TRY(read_i32(c->in, "prompt_len", nseq, &c->prompt_len, &np, err));

    TL_TRY(tl_backend_open("cpu", 0, &c->be, err));
    tl_backend *be = c->be;
    TL_TRY(tl_model_load(model_dir, be, &c->model, err));
    c->have_model = 1;
    const tl_model_config *cfg = &c->model.cfg;
    int V = cfg->vocab_size;
    TL_TRY(check_vocab(in_path, c->mb.tokens, n, V, err));

    TL_TRY(slot_names(c->n_slots, &c->names, err));
    tl_lora_opts lo = {.rank = (int)lm.rank, .alpha = (float)lm.alpha, .rslora = lm.rslora != 0,
                       .targets = lm.targets, .seed = 1234};
    TL_TRY(tl_lora_pool_init(&c->pool, &c->model, c->n_slots, c->names, &lo, err));
    c->have_pool = 1;
    tl_lora_pool *p = &c->pool;
    size_t P = p->P, total = (size_t)c->n_slots * P;

    /* Every float of the pool must come from IN: poison first, then count what was written. */
    c->host_params = malloc(total * sizeof(float));
    c->grads = malloc(total * sizeof(float));
    if (!c->host_params || !c->grads) return tl_fail(err, TL_ERR_RUNTIME, "out of memory for the pool");
    for (size_t i = 0; i < total; i++) c->host_params[i] = NAN;
    size_t filled = 0;
    TL_TRY(read_lora_ab(c->in, p, "lora", c->n_slots, c->host_params, &filled, err));
    if (filled != total)
        return tl_fail(err, TL_ERR_RUNTIME, "pool layout: A/B blocks cover %zu floats of the pool's %zu", filled,
                       total);
    for (size_t i = 0; i < total; i++)
        if (isnan(c->host_params[i]))
            return tl_fail(err, TL_ERR_RUNTIME, "pool layout: float %zu of the pool was not covered by any A/B", i);
    be->upload(be, p->params, c->host_params, total * sizeof(float));

    TL_TRY(build_mb(c, n, nseq, err));
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
    if (!tool_args_ok(argc, 4, "tl_dump MODEL_DIR IN.safetensors OUT.safetensors")) return 2;
    dump_ctx c;
    memset(&c, 0, sizeof c);
    tl_error err = {0};
    tl_status s = run(&c, argv[1], argv[2], argv[3], &err);
    ctx_free(&c);
    return tool_exit("tl_dump", s, &err);
}
