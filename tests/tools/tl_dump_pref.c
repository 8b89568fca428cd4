/* tl_dump_pref: runs one micro-batch of preference pairs through tailor's preference step (trainer/pref_step.c:
 * tl_dpo_microbatch or tl_reward_microbatch, train = 1) with given LoRA weights (and score heads), and writes
 * the per-adapter statistics and every gradient, so that tests/torch/test_pref_model_vs_torch.py can compare
 * them with a PyTorch reference (the SFT counterpart is tl_dump).
 *
 *   tl_dump_pref MODEL_DIR IN.safetensors OUT.safetensors
 *
 * IN:  "tokens" I32 [n], "cu_seqlens" I32 [nseq+1], "seq_slot" I32 [nseq], "prompt_len" I32 [nseq]: sequences in
 *      pairs, chosen (2k) then rejected (2k+1), both of one slot, grouped by slot; "lora.{slot}.{layer}.{target}.A"
 *      [r, in] / ".B" [out, r] for every slot, layer and enabled target (as tl_dump); reward mode: "head" F32
 *      [n_slots, d]; DPO with metadata ref_pool=1: "ref.{slot}.{layer}.{target}.A" / ".B", a frozen reference
 *      pool (else the reference is the bare base model).
 *      Metadata: rank, alpha, rslora (0/1), targets (comma list), n_slots, mode (dpo|reward); dpo: loss (sigmoid,
 *      ipo, hinge, robust, simpo), beta, label_smoothing, gamma, sft_weight, ref_pool (optional, 0/1); reward:
 *      center_rewards.
 * OUT: "stats" F64 [n_slots, 7] (tl_pref_stats_mean of each adapter, TL_PREF_M_* order; NaN for no pair),
 *      "pairs" I64 [n_slots] (pairs per adapter), "ref_logps" F64 [n_pairs, 2] (dpo: the reference sums the step
 *      used), "targets" I32 [n], "grad.{slot}.{layer}.{target}.A" / ".B", reward mode "grad_head" F32
 *      [n_slots, d]: p->grads after the step on zeroed gradients.
 *
 * Batch rules are the preference batcher's: row j-1 of a sequence targets tokens[j] for j >= max(1, prompt_len),
 * trained rows weigh 1, each pair weighs 1 / (pairs of its adapter). Runs on the CPU backend (fp32). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_safetensors.h"
#include "trainer/model/tl_model.h"
#include "trainer/step/tl_pref_step.h"
#include "tests/lib/tl_tool_io.h"

typedef struct {
    tl_st_file *in;
    tl_backend *be;
    tl_model model;
    int have_model;
    tl_lora_pool pool, ref;
    int have_pool, have_ref;
    tl_workspace *ws;
    tl_pref_scratch *sc;
    tl_host_mb mb;
    int32_t *seq_slot, *prompt_len, *seq_c, *seq_r, *pair_ad;
    double *pair_w, *ref_logps, *stats_out;
    int64_t *pair_count;
    tl_pref_stats *stats;
    float *host, *grads, *grad_head;
    tl_st_writer *w;
    char **names;
    int n_slots;
} dump_ctx;

static void ctx_free(dump_ctx *c) {
    if (c->w) tl_st_writer_free(c->w);
    tl_pref_scratch_free(c->sc);
    if (c->ws) tl_workspace_free(c->ws, c->be);
    if (c->have_ref) tl_lora_pool_free(&c->ref, c->be);
    if (c->have_pool) tl_lora_pool_free(&c->pool, c->be);
    if (c->have_model) tl_model_free(&c->model);
    if (c->be) c->be->destroy(c->be);
    if (c->in) tl_st_close(c->in);
    mb_free(&c->mb);
    free(c->seq_slot), free(c->prompt_len), free(c->seq_c), free(c->seq_r), free(c->pair_ad);
    free(c->pair_w), free(c->ref_logps), free(c->stats_out), free(c->pair_count), free(c->stats);
    free(c->host), free(c->grads), free(c->grad_head);
    free_slot_names(c->names, c->n_slots);
}

/* Fills a pool's parameters from IN tensors "{prefix}.{slot}.{layer}.{target}.A/B" (and, with a head, "head"),
 * checking that every float of the pool was written (poisoned with NaN first). */
static tl_status fill_pool(dump_ctx *c, tl_lora_pool *p, const char *prefix, tl_error *err) {
    size_t P = p->P, total = (size_t)c->n_slots * P;
    for (size_t i = 0; i < total; i++) c->host[i] = NAN;
    size_t filled = 0;
    TL_TRY(read_lora_ab(c->in, p, prefix, c->n_slots, c->host, &filled, err));
    if (p->head_dim > 0) {
        int d = p->head_dim;
        int64_t sh[2] = {c->n_slots, d};
        float *head = malloc((size_t)c->n_slots * d * sizeof(float));
        if (!head) return tl_fail(err, TL_ERR_RUNTIME, "out of memory for the heads");
        tl_status s = tl_st_read_f32(c->in, "head", sh, 2, head, err);
        if (s) {
            free(head);
            return s;
        }
        for (int a = 0; a < c->n_slots; a++)
            memcpy(c->host + (size_t)a * P + p->off_head, head + (size_t)a * d, (size_t)d * sizeof(float));
        free(head);
        filled += (size_t)c->n_slots * d;
    }
    if (filled != total)
        return tl_fail(err, TL_ERR_RUNTIME, "pool layout: A/B/head blocks cover %zu floats of the pool's %zu", filled,
                       total);
    for (size_t i = 0; i < total; i++)
        if (isnan(c->host[i]))
            return tl_fail(err, TL_ERR_RUNTIME, "pool layout: float %zu of the pool was not covered by any A/B/head", i);
    c->be->upload(c->be, p->params, c->host, total * sizeof(float));
    return TL_OK;
}

/* The host micro-batch (preference batcher rules: weight 1 per trained row) and the pair set. */
static tl_status build_batch(dump_ctx *c, int64_t n, int64_t nseq, tl_error *err) {
    tl_host_mb *mb = &c->mb;
    TL_TRY(mb_alloc(mb, n, nseq, err));
    TL_TRY(mb_layout(mb, c->seq_slot, c->prompt_len, c->n_slots, 0, 2, err));
    for (int64_t j = 0; j < n; j++) mb->weight[j] = mb->targets[j] >= 0 ? 1.0f : 0.0f;
    int np = (int)(nseq / 2);
    c->seq_c = malloc((size_t)np * sizeof(int32_t));
    c->seq_r = malloc((size_t)np * sizeof(int32_t));
    c->pair_ad = malloc((size_t)np * sizeof(int32_t));
    c->pair_w = malloc((size_t)np * sizeof(double));
    c->ref_logps = malloc((size_t)np * 2 * sizeof(double));
    c->pair_count = calloc((size_t)c->n_slots, sizeof(int64_t));
    if (!c->seq_c || !c->seq_r || !c->pair_ad || !c->pair_w || !c->ref_logps || !c->pair_count)
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory for the pairs");
    for (int k = 0; k < np; k++) {
        c->seq_c[k] = 2 * k, c->seq_r[k] = 2 * k + 1;
        if (c->seq_slot[2 * k] != c->seq_slot[2 * k + 1])
            return tl_fail(err, TL_ERR_INPUT, "pair %d: chosen (slot %d) and rejected (slot %d) differ", k,
                           c->seq_slot[2 * k], c->seq_slot[2 * k + 1]);
        c->pair_ad[k] = c->seq_slot[2 * k];
        c->pair_count[c->pair_ad[k]]++;
        c->ref_logps[2 * k] = c->ref_logps[2 * k + 1] = NAN;
    }
    for (int k = 0; k < np; k++) c->pair_w[k] = 1.0 / (double)c->pair_count[c->pair_ad[k]];
    return TL_OK;
}

static tl_status run(dump_ctx *c, const char *model_dir, const char *in_path, const char *out_path,
                     tl_error *err) {
    TL_TRY(tl_st_open(in_path, &c->in, err));
    tool_lora_meta lm;
    TL_TRY(read_lora_meta(c->in, &lm, err));
    c->n_slots = (int)lm.n_slots;
    const char *mode = tl_st_metadata(c->in, "mode");
    if (!mode || (strcmp(mode, "dpo") && strcmp(mode, "reward")))
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata 'mode' must be dpo or reward", in_path);
    int reward = !strcmp(mode, "reward");
    tl_pref_opts o = {0};
    double center = 0, use_ref = 0;
    if (reward) {
        TL_TRY(meta_num(c->in, "center_rewards", &center, err));
    } else {
        TL_TRY(tl_pref_kind_parse(tl_st_metadata(c->in, "loss"), &o.kind, err));
        TL_TRY(meta_num(c->in, "beta", &o.beta, err));
        TL_TRY(meta_num(c->in, "label_smoothing", &o.label_smoothing, err));
        TL_TRY(meta_num(c->in, "gamma", &o.gamma, err));
        TL_TRY(meta_num(c->in, "sft_weight", &o.sft_weight, err));
        TL_TRY(tl_pref_opts_check(&o, err));
        if (tl_st_metadata(c->in, "ref_pool")) TL_TRY(meta_num(c->in, "ref_pool", &use_ref, err));
    }

    int64_t n = 0, ncu = 0, nseq, np = 0;
    TL_TRY(read_i32(c->in, "tokens", -1, &c->mb.tokens, &n, err)); /* owned by mb */
    TL_TRY(read_i32(c->in, "cu_seqlens", -1, &c->mb.cu_seqlens, &ncu, err));
    nseq = ncu - 1;
    if (n < 1 || nseq < 2 || nseq % 2)
        return tl_fail(err, TL_ERR_INPUT, "%s: expected pairs of sequences, got %lld sequences", in_path,
                       (long long)nseq);
    TL_TRY(read_i32(c->in, "seq_slot", nseq, &c->seq_slot, &np, err));
    TL_TRY(read_i32(c->in, "prompt_len", nseq, &c->prompt_len, &np, err));

    TL_TRY(tl_backend_open("cpu", 0, &c->be, err));
    tl_backend *be = c->be;
    TL_TRY(tl_model_load(model_dir, be, &c->model, err));
    c->have_model = 1;
    const tl_model_config *cfg = &c->model.cfg;
    int V = cfg->vocab_size, d = cfg->hidden_size;
    TL_TRY(check_vocab(in_path, c->mb.tokens, n, V, err));

    TL_TRY(slot_names(c->n_slots, &c->names, err));
    tl_lora_opts lo = {.rank = (int)lm.rank, .alpha = (float)lm.alpha, .rslora = lm.rslora != 0,
                       .targets = lm.targets, .seed = 1234, .with_head = reward};
    TL_TRY(tl_lora_pool_init(&c->pool, &c->model, c->n_slots, c->names, &lo, err));
    c->have_pool = 1;
    tl_lora_pool *p = &c->pool;
    size_t P = p->P, total = (size_t)c->n_slots * P;
    c->host = malloc(total * sizeof(float));
    c->grads = malloc(total * sizeof(float));
    if (!c->host || !c->grads) return tl_fail(err, TL_ERR_RUNTIME, "out of memory for the pool");
    TL_TRY(fill_pool(c, p, "lora", err));
    if (use_ref != 0) {
        lo.seed = 99, lo.with_head = 0;
        TL_TRY(tl_lora_pool_init(&c->ref, &c->model, c->n_slots, c->names, &lo, err));
        c->have_ref = 1;
        TL_TRY(fill_pool(c, &c->ref, "ref", err));
    }

    TL_TRY(build_batch(c, n, nseq, err));
    int npairs = (int)(nseq / 2);
    TL_TRY(tl_workspace_create(&c->model, p, (int)n, (int)nseq, &c->ws, err));
    TL_TRY(tl_pref_scratch_create((int)n, (int)nseq, d, &c->sc, err));
    c->stats = malloc((size_t)c->n_slots * sizeof(tl_pref_stats));
    c->stats_out = malloc((size_t)c->n_slots * TL_PREF_N_METRICS * sizeof(double));
    if (!c->stats || !c->stats_out) return tl_fail(err, TL_ERR_RUNTIME, "out of memory for stats");
    for (int s = 0; s < c->n_slots; s++) tl_pref_stats_init(&c->stats[s]);

    tl_pair_set ps = {.n = npairs, .seq_c = c->seq_c, .seq_r = c->seq_r, .adapter = c->pair_ad,
                      .weight = c->pair_w, .ref_in = NULL, .ref_out = reward ? NULL : c->ref_logps,
                      .ref = c->have_ref ? &c->ref : NULL};
    tl_pref_acc acc = {.stats = c->stats};
    be->zero(be, p->grads, total * sizeof(float));
    if (reward)
        TL_TRY(tl_reward_microbatch(&c->model, p, c->ws, c->sc, &c->mb, &ps, center, 1, &acc, err));
    else
        TL_TRY(tl_dpo_microbatch(&c->model, p, c->ws, c->sc, &c->mb, &ps, &o, 1, &acc, err));
    TL_TRY(be->status(be, err));
    be->download(be, c->grads, p->grads, total * sizeof(float));
    for (int s = 0; s < c->n_slots; s++) tl_pref_stats_mean(&c->stats[s], c->stats_out + (size_t)s * TL_PREF_N_METRICS);

    c->w = tl_st_writer_new();
    if (!c->w) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    int64_t sst[2] = {c->n_slots, TL_PREF_N_METRICS}, ns = c->n_slots, srl[2] = {npairs, 2};
    TL_TRY(tl_st_writer_add_bytes(c->w, "stats", "F64", sst, 2, c->stats_out,
                                  (uint64_t)c->n_slots * TL_PREF_N_METRICS * sizeof(double), err));
    TL_TRY(tl_st_writer_add_bytes(c->w, "pairs", "I64", &ns, 1, c->pair_count, (uint64_t)ns * sizeof(int64_t), err));
    if (!reward)
        TL_TRY(tl_st_writer_add_bytes(c->w, "ref_logps", "F64", srl, 2, c->ref_logps,
                                      (uint64_t)npairs * 2 * sizeof(double), err));
    TL_TRY(tl_st_writer_add_bytes(c->w, "targets", "I32", &n, 1, c->mb.targets, (uint64_t)n * sizeof(int32_t), err));
    TL_TRY(add_lora_grads(c->w, p, c->grads, c->n_slots, err));
    if (reward) {
        c->grad_head = malloc((size_t)c->n_slots * d * sizeof(float));
        if (!c->grad_head) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        for (int s = 0; s < c->n_slots; s++)
            memcpy(c->grad_head + (size_t)s * d, c->grads + (size_t)s * P + p->off_head, (size_t)d * sizeof(float));
        int64_t sh[2] = {c->n_slots, d};
        TL_TRY(tl_st_writer_add_f32(c->w, "grad_head", sh, 2, c->grad_head, err));
    }
    return tl_st_writer_write(c->w, out_path, err);
}

int main(int argc, char **argv) {
    if (!tool_args_ok(argc, 4, "tl_dump_pref MODEL_DIR IN.safetensors OUT.safetensors")) return 2;
    dump_ctx c;
    memset(&c, 0, sizeof c);
    tl_error err = {0};
    tl_status s = run(&c, argv[1], argv[2], argv[3], &err);
    ctx_free(&c);
    return tool_exit("tl_dump_pref", s, &err);
}
