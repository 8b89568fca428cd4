"""Model-level cross-check of tailor's preference training (trainer/pref_step.c) against PyTorch.

For tiny random Llama-family models, one packed micro-batch of preference pairs from several adapters (random
nonzero LoRA, pairs of different lengths, chosen and rejected sharing a prompt) goes through tailor's CPU backend
(fp32, via tests/tools/tl_dump_pref: tl_dpo_microbatch / tl_reward_microbatch with train = 1) and through the
float64 reference of llama_ref.py, one sequence at a time:
  DPO family (sigmoid, ipo, hinge away from its kink, robust, simpo; sigmoid and simpo also with sft_weight > 0;
  sigmoid also with a frozen reference pool): the reference log-probs from the bare base model (LoRA off), or from
  the reference pool; the policy with LoRA; summed response log-probs; the per-pair loss by TRL's expressions
  (imported from test_pref_loss_vs_trl.py, which holds them as TRL writes them) plus sft_weight times the mean NLL
  of the chosen response (F.cross_entropy on its tokens, per pair as docs/preference.md defines it);
  reward model: r = (final normed hidden state of the last token) . w_slot, Bradley-Terry with center_rewards
  (TRL's RewardTrainer.compute_loss, imported likewise).
Total loss = sum over adapters of the mean over that adapter's pairs; autograd gives the gradient of every LoRA A
and B (and of every score head). Compared: every gradient tensor, the reference log-prob sums tailor used, and each
adapter's logged means (loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*).
Pass: max|tailor - ref| / max|ref| <= 1e-4 per quantity; a reference that is exactly zero (an adapter with no
pairs) must be exactly zero in tailor; means over no pair must be NaN in tailor.

Env: TL_TEST_BIN (build dir holding tl_dump_pref).
Run: TL_TEST_BIN=build /usr/bin/python3 tests/torch/test_pref_model_vs_torch.py
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import rel_err  # noqa: E402

np, torch, F = common.require("numpy", "torch", "torch.nn.functional")

import llama_ref as ref  # noqa: E402
import test_pref_loss_vs_trl as trl  # noqa: E402  (TRL's loss expressions, written once there)
from test_model_vs_torch import base_config  # noqa: E402

TOL = 1e-4
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")

MODELS = {
    "gqa_untied": base_config(),
    "qwen2_bias": base_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1000000.0,
                              rms_norm_eps=1e-6),
    "tied_mha": base_config(tie_word_embeddings=True, num_key_value_heads=4),
}
ALL = dict(rank=4, alpha=8, rslora=False, targets=ref.TARGETS, n_slots=3)
SUBSET = dict(rank=4, alpha=8, rslora=False, targets=("q_proj", "v_proj", "up_proj", "down_proj"), n_slots=3)
RSLORA = dict(rank=4, alpha=8, rslora=True, targets=ref.TARGETS, n_slots=3)

# pairs as (slot, prompt_len, chosen response length, rejected response length), grouped by slot
PAIRS3 = [(1, 3, 4, 2), (1, 2, 6, 3), (0, 4, 3, 5), (0, 1, 2, 2), (0, 3, 5, 1), (2, 2, 3, 4), (2, 0, 4, 6)]
PAIRS_GAP = [(2, 2, 5, 3), (2, 3, 2, 4), (0, 1, 4, 4), (0, 4, 3, 2), (0, 2, 1, 5)]  # slot 1 has no pair

# (name, model, lora options, step options, pairs); "beta": None picks a beta away from hinge's kink
CASES = [
    ("sigmoid_ls", "gqa_untied", ALL, dict(mode="dpo", loss="sigmoid", beta=0.1, label_smoothing=0.1), PAIRS3),
    ("ipo", "qwen2_bias", RSLORA, dict(mode="dpo", loss="ipo", beta=0.5), PAIRS3),
    ("hinge", "gqa_untied", ALL, dict(mode="dpo", loss="hinge", beta=None), PAIRS3),
    ("robust", "tied_mha", SUBSET, dict(mode="dpo", loss="robust", beta=0.2, label_smoothing=0.2), PAIRS3),
    ("simpo", "gqa_untied", ALL, dict(mode="dpo", loss="simpo", beta=2.0, gamma=0.5), PAIRS3),
    ("sigmoid_sft", "qwen2_bias", ALL, dict(mode="dpo", loss="sigmoid", beta=0.1, sft_weight=0.7), PAIRS3),
    ("simpo_sft", "tied_mha", SUBSET,
     dict(mode="dpo", loss="simpo", beta=1.5, gamma=0.3, label_smoothing=0.1, sft_weight=0.5), PAIRS3),
    ("sigmoid_refpool", "gqa_untied", ALL, dict(mode="dpo", loss="sigmoid", beta=0.1, ref_pool=1), PAIRS_GAP),
    ("reward_center", "gqa_untied", ALL, dict(mode="reward", center_rewards=0.01), PAIRS3),
    ("reward_plain", "qwen2_bias", SUBSET, dict(mode="reward", center_rewards=0.0), PAIRS_GAP),
]


def build_batch(cfg, pairs, gen):
    """Token ids, cu_seqlens, slot and prompt length of each sequence: chosen then rejected, sharing a prompt."""
    tokens, cu, slots, plen = [], [0], [], []
    for slot, p, lc, lr in pairs:
        prompt = torch.randint(0, cfg.vocab_size, (p,), generator=gen).tolist()
        for n in (lc, lr):
            tokens += prompt + torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist()
            cu.append(len(tokens))
            slots.append(slot)
            plen.append(p)
    return tokens, cu, slots, plen


def seq_forward(model, tokens, slot, lora, plen):
    """(sum of response log-probs, response token count, response logits [n, V], labels [n], last hidden [d])."""
    seq = torch.tensor(tokens, dtype=torch.long)[None]
    h = model.hidden(seq, slots=[slot], lora=lora)[0]
    logits = F.linear(h, model.w["lm_head.weight"])
    tgt = torch.tensor(ref.sft_targets(tokens, plen), dtype=torch.long)
    rows = (tgt >= 0).nonzero()[:, 0]
    lab = tgt[rows]
    lg = logits[rows]
    logp = lg.log_softmax(-1).gather(1, lab[:, None])[:, 0]
    return logp.sum(), int(rows.numel()), lg, lab, h[-1]


def pick_hinge_beta(z):
    """A beta with every |1 - beta z| >= 0.05 (no pair near relu's kink), preferring as many active pairs as
    inactive ones (both branches of relu), then the largest distance from the kink."""
    best = None
    for beta in np.geomspace(0.005, 5.0, 200):
        h = 1.0 - beta * z
        key = (min(int(np.sum(h > 0)), int(np.sum(h < 0))), float(np.min(np.abs(h))))
        if key[1] >= 0.05 and (best is None or key > best[0]):
            best = (key, float(beta))
    if best is None:
        raise RuntimeError("no beta keeps every hinge pair away from the kink")
    return best[1]


def reference(cfg, weights, lora, ref_lora, head, opts, tokens, cu, slots, plen, n_slots):
    """float64 reference: (per-slot stats [n_slots, 7], ref log-prob sums [pairs, 2] or None, grads {name: array},
    the options with beta resolved)."""
    model = ref.LlamaRef(cfg, weights, dtype=torch.float64)
    lora.requires_grad_()
    if head is not None:
        head.requires_grad_(True)
    nseq = len(slots)
    seqs = [tokens[cu[i]:cu[i + 1]] for i in range(nseq)]
    pol = [seq_forward(model, seqs[i], slots[i], lora, plen[i]) for i in range(nseq)]
    opts = dict(opts)
    mode = opts["mode"]
    per_slot_loss, stats, ref_sums = [], np.full((n_slots, len(METRICS)), np.nan), None
    if mode == "dpo":
        kind = opts["loss"]
        if kind == "simpo":  # reference-free: tailor runs no reference pass and reports zeros
            ref_sums = np.zeros((nseq // 2, 2))
        else:
            with torch.no_grad():  # the reference policy: the bare base model, or the frozen reference pool
                rsum = [seq_forward(model, seqs[i], slots[i], ref_lora, plen[i])[0] for i in range(nseq)]
            ref_sums = np.array([[rsum[2 * k].item(), rsum[2 * k + 1].item()] for k in range(nseq // 2)])
        if opts["beta"] is None:  # hinge: logits (summed log-prob margins) do not depend on beta
            z = np.array([(pol[2 * k][0] - pol[2 * k + 1][0]).item() - (ref_sums[k, 0] - ref_sums[k, 1])
                          for k in range(nseq // 2)])
            opts["beta"] = pick_hinge_beta(z)
            h = 1.0 - opts["beta"] * z
            opts["hinge"] = f"{int(np.sum(h > 0))} active / {int(np.sum(h < 0))} inactive pairs, min |1-beta z| " \
                            f"{np.min(np.abs(h)):.3g}"
        beta, ls = opts["beta"], opts.get("label_smoothing", 0.0)
        gamma, sft = opts.get("gamma", 0.0), opts.get("sft_weight", 0.0)
    for s in range(n_slots):
        ks = [k for k in range(nseq // 2) if slots[2 * k] == s]
        if not ks:
            continue
        c = [pol[2 * k] for k in ks]
        r = [pol[2 * k + 1] for k in ks]
        if mode == "dpo":
            pc, pr = torch.stack([x[0] for x in c]), torch.stack([x[0] for x in r])
            rc = torch.tensor([ref_sums[k, 0] for k in ks], dtype=torch.float64)
            rr = torch.tensor([ref_sums[k, 1] for k in ks], dtype=torch.float64)
            nc = torch.tensor([x[1] for x in c], dtype=torch.float64)
            nr = torch.tensor([x[1] for x in r], dtype=torch.float64)
            losses, crew, rrew, lc, lr = trl.trl_per_pair(kind, beta, ls, gamma, pc, pr, rc, rr, nc, nr)
            if sft:  # rpo_alpha / cpo_alpha: TRL's nll (cross_entropy) over each pair's chosen response
                losses = losses + sft * torch.stack([F.cross_entropy(x[2], x[3]) for x in c])
            stats[s] = trl.trl_metrics(losses, crew, rrew, lc, lr)
            per_slot_loss.append(losses.mean())
        else:
            w = head[s]
            r_c = torch.stack([x[4] @ w for x in c])
            r_r = torch.stack([x[4] @ w for x in r])
            loss = trl.trl_reward_loss(r_c, r_r, opts["center_rewards"])
            stats[s, :5] = [loss.item(), r_c.mean().item(), r_r.mean().item(),
                            (r_c > r_r).double().mean().item(), (r_c - r_r).mean().item()]
            per_slot_loss.append(loss)
    total = torch.stack(per_slot_loss).sum()
    params = lora.parameters() + ([head] if head is not None else [])
    grads = torch.autograd.grad(total, params, allow_unused=True)
    gmap, i = {}, 0
    for (s, l, t) in lora.keys():
        for ab in ("A", "B"):
            g = grads[i]
            gmap[f"grad.{s}.{l}.{t}.{ab}"] = (torch.zeros_like(params[i]) if g is None else g).detach().numpy()
            i += 1
    if head is not None:
        gmap["grad_head"] = grads[i].detach().numpy()
    return stats, ref_sums, gmap, opts


def run_case(tool, workdir, case_idx, name, model_name, lopt, opts, pairs, model_cache):
    gen = torch.Generator().manual_seed(2000 + case_idx)
    cfg_dict = MODELS[model_name]
    cfg = ref.LlamaConfig(cfg_dict)
    if model_name not in model_cache:
        weights = ref.random_weights(cfg, torch.Generator().manual_seed(7 + len(model_cache)), dtype=torch.float32)
        model_dir = os.path.join(workdir, model_name)
        ref.write_hf_model(model_dir, cfg_dict, weights)
        model_cache[model_name] = (model_dir, weights)
    model_dir, weights = model_cache[model_name]
    n_slots = lopt["n_slots"]

    def lora_set():
        return ref.LoraSet(cfg, n_slots, lopt["rank"], lopt["alpha"], lopt["targets"], lopt["rslora"])

    lora = lora_set().init_random(gen, torch.float32)
    ref_lora = lora_set().init_random(gen, torch.float32) if opts.get("ref_pool") else None
    head = None
    if opts["mode"] == "reward":
        head = (torch.randn(n_slots, cfg.hidden_size, generator=gen) * 0.3).to(torch.float32)
    tokens, cu, slots, plen = build_batch(cfg, pairs, gen)

    # the reference runs in float64 on the same (fp32-valued) weights, LoRA matrices and heads
    def widen(ls):
        if ls is None:
            return None
        w = lora_set()
        w.A = {k: v.to(torch.float64) for k, v in ls.A.items()}
        w.B = {k: v.to(torch.float64) for k, v in ls.B.items()}
        return w

    stats, ref_sums, grads, opts = reference(cfg, weights, widen(lora), widen(ref_lora),
                                             None if head is None else head.to(torch.float64), opts, tokens, cu,
                                             slots, plen, n_slots)

    tensors = {"tokens": np.array(tokens, np.int32), "cu_seqlens": np.array(cu, np.int32),
               "seq_slot": np.array(slots, np.int32), "prompt_len": np.array(plen, np.int32)}
    for (s, l, t) in lora.keys():
        tensors[f"lora.{s}.{l}.{t}.A"] = lora.A[(s, l, t)]
        tensors[f"lora.{s}.{l}.{t}.B"] = lora.B[(s, l, t)]
        if ref_lora is not None:
            tensors[f"ref.{s}.{l}.{t}.A"] = ref_lora.A[(s, l, t)]
            tensors[f"ref.{s}.{l}.{t}.B"] = ref_lora.B[(s, l, t)]
    if head is not None:
        tensors["head"] = head
    meta = {"rank": lopt["rank"], "alpha": lopt["alpha"], "rslora": int(lopt["rslora"]),
            "targets": ",".join(lora.targets), "n_slots": n_slots, "mode": opts["mode"]}
    if opts["mode"] == "dpo":
        meta.update(loss=opts["loss"], beta=repr(opts["beta"]), label_smoothing=repr(opts.get("label_smoothing", 0.0)),
                    gamma=repr(opts.get("gamma", 0.0)), sft_weight=repr(opts.get("sft_weight", 0.0)),
                    ref_pool=int(bool(opts.get("ref_pool"))))
    else:
        meta["center_rewards"] = repr(opts["center_rewards"])
    in_path, out_path = os.path.join(workdir, name + ".in.safetensors"), os.path.join(workdir, name + ".out.safetensors")
    ref.write_safetensors(in_path, tensors, meta)
    r = subprocess.run([tool, model_dir, in_path, out_path], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return [f"{name}: tl_dump_pref failed (exit {r.returncode}): {r.stderr.strip()}"], []
    out, _ = ref.read_safetensors(out_path)

    failures, rows = [], []

    def check(qty, a, b, tol=TOL):
        e, why = rel_err(a, b)
        rows.append((name, qty, e))
        if not e <= tol:
            failures.append(f"{name}: {qty}: relative error {e:.3g} > {tol:g} {why}".rstrip())

    want_targets = [t for i in range(len(slots)) for t in ref.sft_targets(tokens[cu[i]:cu[i + 1]], plen[i])]
    if out["targets"].tolist() != want_targets:
        failures.append(f"{name}: targets differ from the batcher rule")
    want_pairs = [sum(1 for p in pairs if p[0] == s) for s in range(n_slots)]
    if out["pairs"].tolist() != want_pairs:
        failures.append(f"{name}: pairs per adapter {out['pairs'].tolist()}, expected {want_pairs}")
    if ref_sums is not None:
        check("reference log-prob sums", out["ref_logps"], ref_sums)
    got_stats = np.asarray(out["stats"], dtype=np.float64)
    if got_stats.shape != stats.shape or not np.array_equal(np.isnan(got_stats), np.isnan(stats)):
        failures.append(f"{name}: stats: NaN pattern (means over no pair) differs: tailor\n{got_stats}\nref\n{stats}")
    else:
        for j, m in enumerate(METRICS):
            live = ~np.isnan(stats[:, j])
            if live.any():
                check(f"stats {m}", got_stats[live, j], stats[live, j])
    worst = {}
    for key, g in grads.items():
        if key not in out:
            failures.append(f"{name}: {key} missing from tl_dump_pref's output")
            continue
        e, why = rel_err(out[key], g)
        kind = "grad head" if key == "grad_head" else f"grad {key.split('.')[3]}.{key.split('.')[4]}"
        if e > worst.get(kind, (-1, ""))[0]:
            worst[kind] = (e, key)
        if not e <= TOL:
            failures.append(f"{name}: {key}: relative error {e:.3g} > {TOL:g} {why} "
                            f"(max|ref| {np.max(np.abs(g)):.3g})".rstrip())
    for kind in sorted(worst):
        rows.append((name, kind + f" (worst {worst[kind][1]})", worst[kind][0]))
    desc = ", ".join(f"{k}={v}" for k, v in opts.items() if k != "mode")
    return failures, rows, desc


def main():
    tool = common.built_tool("tl_dump_pref")
    if not tool:
        return 1
    torch.set_num_threads(2)
    t0 = time.time()
    all_fail, all_rows, descs = [], [], []
    with tempfile.TemporaryDirectory(prefix="tl_pref_torch_") as work:
        cache = {}
        for i, (name, model_name, lopt, opts, pairs) in enumerate(CASES):
            try:
                res = run_case(tool, work, i, name, model_name, lopt, opts, pairs, cache)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                all_fail.append(f"{name}: {e}")
                continue
            if len(res) == 2:
                all_fail += res[0]
                continue
            f, rows, desc = res
            all_fail += f
            all_rows += rows
            descs.append(f"{name} ({model_name}): {desc}")
    for d in descs:
        print(d)
    print(f"{'case':<18} {'quantity':<48} {'rel err':>10}")
    for name, qty, e in all_rows:
        print(f"{name:<18} {qty:<48} {e:10.2e}")
    worst = max(all_rows, key=lambda r: r[2]) if all_rows else None
    if worst:
        print(f"worst: {worst[0]} {worst[1]} {worst[2]:.2e}")
    print(f"({len(CASES)} cases, {time.time() - t0:.1f} s; tolerance {TOL:g})")
    return common.verdict(all_fail, "FAIL: tailor disagrees with the PyTorch reference:")


if __name__ == "__main__":
    sys.exit(main())
