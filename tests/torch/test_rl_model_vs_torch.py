"""Model-level cross-check of tailor's GRPO / RLOO training step (trainer/step/rl_step.c) against PyTorch.

Fixed prompts, completions and rewards of several adapters (random nonzero LoRA, prompts and completions of
different lengths, a completion of one token) go through tailor's CPU backend (fp32, via tests/tools/tl_dump_rl:
tl_rl_train_given, the step's advantages + reference + policy passes without the sampling) and through the float64
reference model of llama_ref.py, one sequence at a time, with TRL's formulas as written in
test_rl_loss_vs_trl.py (trl v0.19.1 GRPOTrainer advantages and _compute_loss; trl v0.22.0 RLOOTrainer's
leave-one-out advantages): per-token log-probs of the completion tokens under the policy (LoRA) and the reference
(LoRA off, or a frozen reference pool), old = policy.detach() (one update per rollout), the per-adapter loss
(TRL's batch = one adapter's completions), summed over adapters; autograd gives every LoRA A and B gradient.
Compared: each adapter's loss and KL sum, and every gradient tensor, for grpo / bnpo / dr_grpo, GRPO and RLOO
advantages, scaled and not, beta = 0 and beta > 0, base-model and pool references, and a micro-batch budget that
splits an adapter's completions over several micro-batches.
Pass: max|tailor - ref| / max|ref| <= 1e-5 per quantity (fp32 model vs float64 reference).

Env: TL_TEST_BIN (build dir holding tl_dump_rl).
Run: TL_TEST_BIN=build /usr/bin/python3 tests/torch/test_rl_model_vs_torch.py
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import rel_err  # noqa: E402

np, torch, F = common.require("numpy", "torch", "torch.nn.functional")

import llama_ref as ref  # noqa: E402
import test_rl_loss_vs_trl as trl  # noqa: E402  (TRL's expressions, written once there)
from test_model_vs_torch import base_config  # noqa: E402

TOL = 1e-5
MODELS = {
    "gqa_untied": base_config(),
    "qwen2_bias": base_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1000000.0,
                              rms_norm_eps=1e-6),
}
ALL = dict(rank=4, alpha=8, rslora=False, targets=ref.TARGETS, n_slots=3)
SUBSET = dict(rank=4, alpha=8, rslora=True, targets=("q_proj", "v_proj", "up_proj", "down_proj"), n_slots=3)
# prompts as (slot, prompt length); G completions each; grouped by slot
PROMPTS = [(0, 3), (0, 5), (1, 2), (2, 4), (2, 1), (2, 6)]
PROMPTS_GAP = [(0, 4), (2, 3), (2, 2)]  # slot 1 has none

CASES = [
    ("grpo_bnpo_beta", "gqa_untied", ALL, dict(adv="grpo", loss_type="bnpo", beta=0.04, scale=1), PROMPTS, 4096),
    ("grpo_grpo_nokl", "qwen2_bias", SUBSET, dict(adv="grpo", loss_type="grpo", beta=0.0, scale=1), PROMPTS, 4096),
    ("grpo_dr_unscaled", "gqa_untied", ALL, dict(adv="grpo", loss_type="dr_grpo", beta=0.1, scale=0), PROMPTS, 4096),
    ("rloo_bnpo_refpool", "gqa_untied", ALL, dict(adv="rloo", loss_type="bnpo", beta=0.2, scale=1, ref_pool=1),
     PROMPTS_GAP, 4096),
    ("rloo_grpo_split", "qwen2_bias", ALL, dict(adv="rloo", loss_type="grpo", beta=0.05, scale=0), PROMPTS, 24),
    ("grpo_bnpo_split", "gqa_untied", SUBSET, dict(adv="grpo", loss_type="bnpo", beta=0.3, scale=1), PROMPTS, 20),
]
G, MAXC = 3, 6


def comp_logps(model, prompt, comp, slot, lora):
    """Per-token log-probs of the completion tokens (rows prompt_len-1 .. end-1)."""
    seq = torch.tensor(prompt + comp, dtype=torch.long)[None]
    h = model.hidden(seq, slots=[slot], lora=lora)[0]
    logits = F.linear(h, model.w["lm_head.weight"])
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(comp) - 1)
    lab = torch.tensor(comp, dtype=torch.long)
    return logits[rows].log_softmax(-1).gather(1, lab[:, None])[:, 0]


def reference(cfg, weights, lora, ref_lora, opts, prompts, comps, rewards, n_slots):
    model = ref.LlamaRef(cfg, weights, dtype=torch.float64)
    lora.requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    losses, kls = np.zeros(n_slots), np.zeros(n_slots)
    for s in range(n_slots):
        idx = [i for i, p in enumerate(prompts) if p[0] == s]
        if not idx:
            continue
        cs = [i * G + g for i in idx for g in range(G)]
        r = torch.tensor([rewards[c] for c in cs], dtype=torch.float64)
        if opts["adv"] == "grpo":
            adv, _ = trl.trl_grpo_advantages(r, G, bool(opts["scale"]))
        else:
            adv = trl.trl_rloo_advantages(r, G, bool(opts["scale"]))
        L = max(len(comps[c]) for c in cs)
        logp = torch.zeros((len(cs), L), dtype=torch.float64)
        refp = torch.zeros((len(cs), L), dtype=torch.float64)
        mask = torch.zeros((len(cs), L), dtype=torch.float64)
        rows = []
        for k, c in enumerate(cs):
            p = prompts[c // G][1]
            lp = comp_logps(model, p, comps[c], s, lora)
            with torch.no_grad():
                rp = comp_logps(model, p, comps[c], s, ref_lora)
            n = len(comps[c])
            rows.append(lp)
            refp[k, :n] = rp
            mask[k, :n] = 1
        logp = torch.stack([torch.cat([lp, torch.zeros(L - lp.numel(), dtype=torch.float64)]) for lp in rows])
        loss, kl, _, _ = trl.trl_grpo_loss(logp, logp.detach(), refp, adv, mask, opts["beta"], 0.2, 0.28,
                                           opts["loss_type"], MAXC)
        losses[s], kls[s] = loss.item(), kl.item()
        total = total + loss
    total.backward()
    grads = {}
    for (s, l, t) in lora.keys():  # an adapter without prompts has no graph: its gradient is zero
        for ab, m in (("A", lora.A), ("B", lora.B)):
            g = m[(s, l, t)].grad
            grads[f"grad.{s}.{l}.{t}.{ab}"] = np.zeros(m[(s, l, t)].shape) if g is None else g.numpy()
    return losses, kls, grads


def run_case(tool, workdir, case_idx, name, model_name, lopt, opts, prompt_spec, mbt, cache):
    gen = torch.Generator().manual_seed(3000 + case_idx)
    cfg_dict = MODELS[model_name]
    cfg = ref.LlamaConfig(cfg_dict)
    if model_name not in cache:
        weights = ref.random_weights(cfg, torch.Generator().manual_seed(11 + len(cache)), dtype=torch.float32)
        model_dir = os.path.join(workdir, model_name)
        ref.write_hf_model(model_dir, cfg_dict, weights)
        cache[model_name] = (model_dir, weights)
    model_dir, weights = cache[model_name]
    n_slots = lopt["n_slots"]

    def lora_set():
        return ref.LoraSet(cfg, n_slots, lopt["rank"], lopt["alpha"], lopt["targets"], lopt["rslora"])

    lora = lora_set().init_random(gen, torch.float32)
    ref_lora = lora_set().init_random(gen, torch.float32) if opts.get("ref_pool") else None
    prompts = [(s, torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist()) for s, n in prompt_spec]
    comps = []
    for i in range(len(prompts) * G):
        n = 1 if i == 1 else int(torch.randint(1, MAXC + 1, (1,), generator=gen))
        comps.append(torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist())
    rewards = (torch.randn(len(comps), generator=gen, dtype=torch.float64) * 2).tolist()

    def widen(ls):
        if ls is None:
            return None
        w = lora_set()
        w.A = {k: v.to(torch.float64) for k, v in ls.A.items()}
        w.B = {k: v.to(torch.float64) for k, v in ls.B.items()}
        return w

    losses, kls, grads = reference(cfg, weights, widen(lora), widen(ref_lora), opts, prompts, comps, rewards, n_slots)
    tensors = {"prompt_tokens": np.array([t for _, p in prompts for t in p], np.int32),
               "prompt_off": np.cumsum([0] + [len(p) for _, p in prompts]).astype(np.int32),
               "prompt_slot": np.array([s for s, _ in prompts], np.int32),
               "comp_tokens": np.array([t for c in comps for t in c], np.int32),
               "comp_off": np.cumsum([0] + [len(c) for c in comps]).astype(np.int32),
               "rewards": np.array(rewards, np.float64)}
    for (s, l, t) in lora.keys():
        tensors[f"lora.{s}.{l}.{t}.A"] = lora.A[(s, l, t)]
        tensors[f"lora.{s}.{l}.{t}.B"] = lora.B[(s, l, t)]
        if ref_lora is not None:
            tensors[f"ref.{s}.{l}.{t}.A"] = ref_lora.A[(s, l, t)]
            tensors[f"ref.{s}.{l}.{t}.B"] = ref_lora.B[(s, l, t)]
    meta = {"rank": lopt["rank"], "alpha": lopt["alpha"], "rslora": int(lopt["rslora"]),
            "targets": ",".join(lora.targets), "n_slots": n_slots, "G": G, "adv": opts["adv"],
            "loss_type": opts["loss_type"], "beta": repr(opts["beta"]), "epsilon": "0.2", "epsilon_high": "0.28",
            "max_completion": MAXC, "scale_rewards": opts["scale"], "micro_batch_tokens": mbt,
            "ref_pool": int(bool(opts.get("ref_pool")))}
    in_path, out_path = os.path.join(workdir, name + ".in.safetensors"), os.path.join(workdir, name + ".out.safetensors")
    ref.write_safetensors(in_path, tensors, meta)
    r = subprocess.run([tool, model_dir, in_path, out_path], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return [f"{name}: tl_dump_rl failed (exit {r.returncode}): {r.stderr.strip()}"], []
    out, _ = ref.read_safetensors(out_path)
    failures, rows = [], []

    def check(qty, a, b):
        e, why = rel_err(a, b)
        rows.append((name, qty, e))
        if not e <= TOL:
            failures.append(f"{name}: {qty}: relative error {e:.3g} > {TOL:g} {why}".rstrip())

    # a loss is a sum of terms of both signs that can cancel to ~0 (beta = 0 and ratio 1: -mean(A) = 0 for GRPO):
    # its error is relative to the advantages' scale, 1, rather than to its own size
    e = float(np.max(np.abs(np.asarray(out["loss"]) - losses)) / max(float(np.max(np.abs(losses))), 1.0))
    rows.append((name, "loss per adapter (relative to max(|loss|, 1))", e))
    if not e <= TOL:
        failures.append(f"{name}: loss per adapter: error {e:.3g} > {TOL:g}")
    check("kl sum per adapter", out["kl"], kls)
    worst = (0.0, "")
    for key, g in grads.items():
        e, why = rel_err(out[key], g)
        if e > worst[0]:
            worst = (e, key)
        if not e <= TOL:
            failures.append(f"{name}: {key}: relative error {e:.3g} > {TOL:g} {why}".rstrip())
    rows.append((name, f"LoRA grads (worst {worst[1]})", worst[0]))
    return failures, rows


def main():
    tool = common.built_tool("tl_dump_rl")
    if not tool:
        return 1
    torch.set_num_threads(2)
    fails, rows = [], []
    with tempfile.TemporaryDirectory(prefix="tl_rl_torch_") as work:
        cache = {}
        for i, (name, model_name, lopt, opts, prompts, mbt) in enumerate(CASES):
            try:
                f, r = run_case(tool, work, i, name, model_name, lopt, opts, prompts, mbt, cache)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                f, r = [f"{name}: {e}"], []
            fails += f
            rows += r
    print(f"{'case':<20} {'quantity':<58} {'rel err':>10}")
    for name, qty, e in rows:
        print(f"{name:<20} {qty:<58} {e:10.3g}")
    return common.verdict(fails, "FAIL: tailor's RL step disagrees with the torch reference:")


if __name__ == "__main__":
    sys.exit(main())
