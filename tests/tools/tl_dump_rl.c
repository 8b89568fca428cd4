/* tl_dump_rl: runs the training half of tailor's GRPO / RLOO step (trainer/step/rl_step.c: tl_rl_train_given) on
 * given prompts, completions and rewards with given LoRA weights, and writes every LoRA gradient and each
 * adapter's loss and KL sum, so that tests/torch/test_rl_model_vs_torch.py can compare them with TRL's formulas
 * on a PyTorch reference model.
 *
 *   tl_dump_rl MODEL_DIR IN.safetensors OUT.safetensors
 *
 * IN:  "prompt_tokens" I32 [T], "prompt_off" I32 [P+1], "prompt_slot" I32 [P] (grouped by slot, ascending),
 *      "comp_tokens" I32 [C], "comp_off" I32 [P*G+1] (completion c = prompt c / G, generation c % G),
 *      "rewards" F64 [P*G], "lora.{slot}.{layer}.{target}.A/B" for every slot (as tl_dump); with metadata
 *      ref_pool=1 also "ref.{slot}.{layer}.{target}.A/B" (the frozen reference pool; else the base model).
 *      Metadata: rank, alpha, rslora, targets, n_slots; G, adv (grpo | rloo), loss_type (grpo | bnpo | dr_grpo),
 *      beta, epsilon, epsilon_high, max_completion, scale_rewards (0/1), micro_batch_tokens, ref_pool (0/1).
 * OUT: "loss" F64 [n_slots], "kl" F64 [n_slots] (sum of the k3 KL over the adapter's tokens),
 *      "grad.{slot}.{layer}.{target}.A/B": p->grads after the step on zeroed gradients.
 * Runs on the CPU backend (fp32). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_safetensors.h"
#include "tests/lib/tl_tool_io.h"
#include "trainer/model/tl_model.h"
#include "trainer/step/tl_rl_step.h"

typedef struct {
    tl_st_file *in;
    tl_backend *be;
    tl_model model;
    int have_model;
    tl_lora_pool pool, ref;
    int have_pool, have_ref;
    tl_workspace *ws;
    tl_rl *rl;
    int32_t *ptok, *poff, *pslot, *ctok, *coff32;
    int64_t *coff;
    double *rewards, *loss, *kl;
    tl_rl_prompt *prompts;
    tl_rl_stats *stats;
    float *host, *grads;
    tl_st_writer *w;
    char **names;
    int n_slots;
} dump_ctx;

static void ctx_free(dump_ctx *c) {
    if (c->w) tl_st_writer_free(c->w);
    tl_rl_free(c->rl);
    if (c->ws) tl_workspace_free(c->ws, c->be);
    if (c->have_ref) tl_lora_pool_free(&c->ref, c->be);
    if (c->have_pool) tl_lora_pool_free(&c->pool, c->be);
    if (c->have_model) tl_model_free(&c->model);
    if (c->be) c->be->destroy(c->be);
    if (c->in) tl_st_close(c->in);
    free(c->ptok), free(c->poff), free(c->pslot), free(c->ctok), free(c->coff32), free(c->coff);
    free(c->rewards), free(c->loss), free(c->kl), free(c->prompts), free(c->stats), free(c->host), free(c->grads);
    free_slot_names(c->names, c->n_slots);
}

static tl_status fill_pool(dump_ctx *c, tl_lora_pool *p, const char *prefix, tl_error *err) {
    size_t total = (size_t)c->n_slots * p->P, filled = 0;
    for (size_t i = 0; i < total; i++) c->host[i] = NAN;
    TL_TRY(read_lora_ab(c->in, p, prefix, c->n_slots, c->host, &filled, err));
    for (size_t i = 0; i < total; i++)
        if (isnan(c->host[i])) return tl_fail(err, TL_ERR_RUNTIME, "pool layout: float %zu not covered", i);
    c->be->upload(c->be, p->params, c->host, total * sizeof(float));
    return TL_OK;
}

static tl_status run(dump_ctx *c, const char *model_dir, const char *in_path, const char *out_path, tl_error *err) {
    TL_TRY(tl_st_open(in_path, &c->in, err));
    tool_lora_meta lm;
    TL_TRY(read_lora_meta(c->in, &lm, err));
    c->n_slots = (int)lm.n_slots;
    double G, beta, eps, eps_high, maxc, scale, mbt, ref_pool = 0;
    TL_TRY(meta_num(c->in, "G", &G, err));
    TL_TRY(meta_num(c->in, "beta", &beta, err));
    TL_TRY(meta_num(c->in, "epsilon", &eps, err));
    TL_TRY(meta_num(c->in, "epsilon_high", &eps_high, err));
    TL_TRY(meta_num(c->in, "max_completion", &maxc, err));
    TL_TRY(meta_num(c->in, "scale_rewards", &scale, err));
    TL_TRY(meta_num(c->in, "micro_batch_tokens", &mbt, err));
    if (tl_st_metadata(c->in, "ref_pool")) TL_TRY(meta_num(c->in, "ref_pool", &ref_pool, err));
    const char *adv = tl_st_metadata(c->in, "adv");
    if (!adv || (strcmp(adv, "grpo") && strcmp(adv, "rloo")))
        return tl_fail(err, TL_ERR_INPUT, "%s: metadata 'adv' must be grpo or rloo", in_path);
    tl_rl_opts o = {.adv = !strcmp(adv, "rloo") ? TL_RL_ADV_RLOO : TL_RL_ADV_GRPO,
                    .loss = {.beta = beta, .eps_low = eps, .eps_high = eps_high, .max_completion = (int)maxc},
                    .num_generations = (int)G,
                    .scale_rewards = scale != 0,
                    .micro_batch_tokens = (int)mbt};
    TL_TRY(tl_rl_norm_parse(tl_st_metadata(c->in, "loss_type"), &o.loss.norm, err));

    int64_t nt = 0, npo = 0, np = 0, nct = 0, nco = 0;
    TL_TRY(read_i32(c->in, "prompt_tokens", -1, &c->ptok, &nt, err));
    TL_TRY(read_i32(c->in, "prompt_off", -1, &c->poff, &npo, err));
    np = npo - 1;
    if (np < 1) return tl_fail(err, TL_ERR_INPUT, "%s: no prompts", in_path);
    int64_t got = 0;
    TL_TRY(read_i32(c->in, "prompt_slot", np, &c->pslot, &got, err));
    TL_TRY(read_i32(c->in, "comp_tokens", -1, &c->ctok, &nct, err));
    TL_TRY(read_i32(c->in, "comp_off", np * o.num_generations + 1, &c->coff32, &nco, err));
    int64_t ncomp = nco - 1;
    c->rewards = malloc((size_t)ncomp * sizeof(double));
    c->coff = malloc((size_t)nco * sizeof(int64_t));
    c->prompts = calloc((size_t)np, sizeof *c->prompts);
    if (!c->rewards || !c->coff || !c->prompts) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    int64_t rs[1] = {ncomp};
    const tl_st_tensor *rt = tl_st_find(c->in, "rewards");
    if (!rt || rt->dtype != TL_DT_F64 || rt->ndim != 1 || rt->shape[0] != rs[0])
        return tl_fail(err, TL_ERR_INPUT, "%s: 'rewards' must be F64 [%lld]", in_path, (long long)ncomp);
    TL_TRY(tl_st_read_bytes(c->in, "rewards", c->rewards, (uint64_t)ncomp * sizeof(double), err));
    for (int64_t i = 0; i < nco; i++) c->coff[i] = c->coff32[i];
    int max_prompt = 0;
    for (int64_t i = 0; i < np; i++) {
        int n = c->poff[i + 1] - c->poff[i];
        if (n < 1 || c->poff[i + 1] > nt) return tl_fail(err, TL_ERR_INPUT, "%s: prompt_off is malformed", in_path);
        if (n > max_prompt) max_prompt = n;
        c->prompts[i] =
            (tl_rl_prompt){.tokens = c->ptok + c->poff[i], .n = n, .slot = c->pslot[i], .seed = 1000 + (uint64_t)i};
    }
    o.max_prompt_len = max_prompt, o.max_prompts = (int)np;

    TL_TRY(tl_backend_open("cpu", 0, &c->be, err));
    TL_TRY(tl_model_load(model_dir, c->be, &c->model, err));
    c->have_model = 1;
    TL_TRY(check_vocab(in_path, c->ptok, nt, c->model.cfg.vocab_size, err));
    TL_TRY(check_vocab(in_path, c->ctok, nct, c->model.cfg.vocab_size, err));
    TL_TRY(slot_names(c->n_slots, &c->names, err));
    tl_lora_opts lo = {
        .rank = (int)lm.rank, .alpha = (float)lm.alpha, .rslora = lm.rslora != 0, .targets = lm.targets, .seed = 1234};
    TL_TRY(tl_lora_pool_init(&c->pool, &c->model, c->n_slots, c->names, &lo, err));
    c->have_pool = 1;
    size_t total = (size_t)c->n_slots * c->pool.P;
    c->host = malloc(total * sizeof(float));
    c->grads = malloc(total * sizeof(float));
    c->stats = calloc((size_t)c->n_slots, sizeof *c->stats);
    c->loss = malloc((size_t)c->n_slots * sizeof(double));
    c->kl = malloc((size_t)c->n_slots * sizeof(double));
    if (!c->host || !c->grads || !c->stats || !c->loss || !c->kl) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    TL_TRY(fill_pool(c, &c->pool, "lora", err));
    if (ref_pool != 0) {
        lo.seed = 99;
        TL_TRY(tl_lora_pool_init(&c->ref, &c->model, c->n_slots, c->names, &lo, err));
        c->have_ref = 1;
        TL_TRY(fill_pool(c, &c->ref, "ref", err));
    }
    TL_TRY(tl_workspace_create(&c->model, &c->pool, o.micro_batch_tokens, o.micro_batch_tokens, &c->ws, err));
    TL_TRY(tl_rl_create(&c->model, &c->pool, NULL, &o, &c->rl, err));
    c->be->zero(c->be, c->pool.grads, total * sizeof(float));
    tl_rl_timing tm;
    TL_TRY(tl_rl_train_given(c->rl, &c->pool, c->have_ref ? &c->ref : NULL, c->ws, c->prompts, (int)np, c->ctok,
                             c->coff, c->rewards, c->stats, &tm, err));
    TL_TRY(c->be->status(c->be, err));
    c->be->download(c->be, c->grads, c->pool.grads, total * sizeof(float));
    for (int s = 0; s < c->n_slots; s++) c->loss[s] = c->stats[s].loss, c->kl[s] = c->stats[s].kl;
    c->w = tl_st_writer_new();
    if (!c->w) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    int64_t ns = c->n_slots;
    TL_TRY(tl_st_writer_add_bytes(c->w, "loss", "F64", &ns, 1, c->loss, (uint64_t)ns * sizeof(double), err));
    TL_TRY(tl_st_writer_add_bytes(c->w, "kl", "F64", &ns, 1, c->kl, (uint64_t)ns * sizeof(double), err));
    TL_TRY(add_lora_grads(c->w, &c->pool, c->grads, c->n_slots, err));
    return tl_st_writer_write(c->w, out_path, err);
}

int main(int argc, char **argv) {
    if (!tool_args_ok(argc, 4, "tl_dump_rl MODEL_DIR IN.safetensors OUT.safetensors")) return 2;
    dump_ctx c;
    memset(&c, 0, sizeof c);
    tl_error err = {0};
    tl_status s = run(&c, argv[1], argv[2], argv[3], &err);
    ctx_free(&c);
    return tool_exit("tl_dump_rl", s, &err);
}
