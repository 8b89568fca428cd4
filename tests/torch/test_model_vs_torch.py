"""Model-level cross-check of tailor against an independent float64 PyTorch reference (llama_ref.py).

For several tiny random Llama-family models, one packed micro-batch of sequences from several adapters (plus a
sequence with no adapter) goes through tailor's CPU backend (fp32, via tests/tools/tl_dump) and through the
reference, one sequence at a time. Compared: RoPE inv_freq, logits of every row, log p(target) per row (train
and eval passes), the loss of each adapter (mean cross-entropy over its own target tokens), and the gradient of
the summed loss w.r.t. every LoRA A and B (autograd). Pass: max|tailor - ref| / max|ref| <= 1e-4 for each
quantity (each gradient tensor on its own scale); a quantity whose reference is exactly zero (an adapter with no
rows in the batch) must be exactly zero in tailor.

Env: TL_TEST_BIN (build dir holding tl_dump). Run: TL_TEST_BIN=build /usr/bin/python3 tests/torch/test_model_vs_torch.py
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import rel_err  # noqa: E402,F401  (test_pref_model_vs_torch imports it from here too)

np, torch = common.require("numpy", "torch")

import llama_ref as ref  # noqa: E402

TOL = 1e-4


def base_config(**over):
    d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 83, "hidden_size": 32,
         "intermediate_size": 56, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "hidden_act": "silu", "torch_dtype": "float32"}
    d.update(over)
    return d


# (name, config, lora options, sequences as (length, prompt_len, slot)); slots grouped, not necessarily ascending.
CASES = [
    ("gqa_untied", base_config(),
     dict(rank=4, alpha=8, rslora=False, targets=ref.TARGETS, n_slots=3),
     [(7, 3, 1), (2, 0, 1), (9, 4, 0), (5, 2, -1), (6, 0, 2), (4, 1, 2)]),
    ("tied_subset", base_config(tie_word_embeddings=True, num_key_value_heads=4),
     dict(rank=4, alpha=8, rslora=False, targets=("q_proj", "v_proj", "up_proj", "down_proj"), n_slots=4),
     [(6, 2, 0), (2, 0, 0), (8, 3, 2), (5, 0, 1), (7, 5, -1)]),  # slot 3 has no rows: its grads must stay 0
    ("qwen2_bias_rslora", base_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1000000.0,
                                      rms_norm_eps=1e-6),
     dict(rank=4, alpha=8, rslora=True, targets=ref.TARGETS, n_slots=3),
     [(5, 0, 2), (8, 2, 0), (2, 0, 0), (6, 3, -1), (7, 1, 1)]),
    ("llama3_rope", base_config(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
     dict(rank=4, alpha=8, rslora=False, targets=ref.TARGETS, n_slots=3),
     [(12, 4, 0), (2, 0, 0), (10, 0, 1), (4, 2, -1), (11, 3, 2)]),
    ("llama_attention_bias", base_config(attention_bias=True),  # q/k/v and o_proj biases, as LlamaAttention
     dict(rank=4, alpha=8, rslora=False, targets=ref.TARGETS, n_slots=3),
     [(6, 2, 0), (3, 0, 1), (7, 3, 2), (4, 1, -1)]),
    # q and v only (the bench shape): xn2 and the SwiGLU output are not kept per layer (one buffer for every layer)
    ("qv_only", base_config(num_hidden_layers=3),
     dict(rank=4, alpha=8, rslora=False, targets=("q_proj", "v_proj"), n_slots=3),
     [(6, 2, 0), (3, 0, 1), (7, 3, 2), (4, 1, -1)]),
    # no q/k/v: the attention input xn1 is not kept per layer either
    ("o_gate_only", base_config(num_hidden_layers=3),
     dict(rank=4, alpha=8, rslora=False, targets=("o_proj", "gate_proj"), n_slots=2),
     [(5, 1, 0), (4, 0, 1), (6, 2, -1)]),
    ("head_dim_12", base_config(head_dim=12, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=3),
     dict(rank=4, alpha=8, rslora=False, targets=ref.TARGETS, n_slots=3),
     [(5, 0, 0), (2, 0, 1), (8, 3, 1), (6, 2, 2), (3, 1, -1)]),
]


def build_batch(cfg, seqs, gen):
    tokens, cu, slots, plen = [], [0], [], []
    for length, p, s in seqs:
        tokens += torch.randint(0, cfg.vocab_size, (length,), generator=gen).tolist()
        cu.append(len(tokens))
        slots.append(s)
        plen.append(p)
    return tokens, cu, slots, plen


def reference(cfg, weights, lora, tokens, cu, slots, plen):
    """float64: logits [n, V], logp [n], targets [n], per-slot loss [n_slots], grads {(s,l,t,'A'|'B'): array}."""
    model = ref.LlamaRef(cfg, weights, dtype=torch.float64)
    lora.requires_grad_()
    logits_all, targets = [], []
    for i in range(len(slots)):
        seq = torch.tensor(tokens[cu[i]:cu[i + 1]], dtype=torch.long)[None]
        logits_all.append(model.forward(seq, slots=[slots[i]], lora=lora)[0])
        targets += ref.sft_targets(seq[0].tolist(), plen[i])
    logits = torch.cat(logits_all)
    tgt = torch.tensor(targets, dtype=torch.long)
    row_slot = torch.tensor([slots[i] for i in range(len(slots)) for _ in range(cu[i + 1] - cu[i])])
    mask = tgt >= 0
    logp = torch.zeros(len(tokens), dtype=torch.float64)
    lsm = torch.log_softmax(logits, dim=-1)
    logp = torch.where(mask, lsm.gather(1, tgt.clamp(min=0)[:, None])[:, 0], logp)
    losses = []
    for s in range(lora.n_slots):
        sel = mask & (row_slot == s)
        losses.append(-logp[sel].mean() if sel.any() else torch.zeros((), dtype=torch.float64))
    total = torch.stack(losses).sum()
    params = lora.parameters()
    grads = torch.autograd.grad(total, params, allow_unused=True)
    gmap, i = {}, 0
    for k in lora.keys():
        for ab in ("A", "B"):
            g = grads[i]
            gmap[k + (ab,)] = (torch.zeros_like(params[i]) if g is None else g).detach().numpy()
            i += 1
    return (logits.detach().numpy(), logp.detach().numpy(), np.array(targets), torch.stack(losses).detach().numpy(),
            gmap)


def run_case(tool, workdir, case_idx, name, cfg_dict, lopt, seqs):
    gen = torch.Generator().manual_seed(1000 + case_idx)
    cfg = ref.LlamaConfig(cfg_dict)
    weights = ref.random_weights(cfg, gen, dtype=torch.float32)
    model_dir = os.path.join(workdir, name)
    ref.write_hf_model(model_dir, cfg_dict, weights)
    lora = ref.LoraSet(cfg, lopt["n_slots"], lopt["rank"], lopt["alpha"], lopt["targets"], lopt["rslora"])
    lora.init_random(gen, torch.float32)
    tokens, cu, slots, plen = build_batch(cfg, seqs, gen)

    tensors = {"tokens": np.array(tokens, np.int32), "cu_seqlens": np.array(cu, np.int32),
               "seq_slot": np.array(slots, np.int32), "prompt_len": np.array(plen, np.int32)}
    for (s, l, t) in lora.keys():
        tensors[f"lora.{s}.{l}.{t}.A"] = lora.A[(s, l, t)]
        tensors[f"lora.{s}.{l}.{t}.B"] = lora.B[(s, l, t)]
    meta = {"rank": lopt["rank"], "alpha": lopt["alpha"], "rslora": int(lopt["rslora"]),
            "targets": ",".join(lora.targets), "n_slots": lopt["n_slots"]}
    in_path, out_path = os.path.join(workdir, name + ".in.safetensors"), os.path.join(workdir, name + ".out.safetensors")
    ref.write_safetensors(in_path, tensors, meta)
    r = subprocess.run([tool, model_dir, in_path, out_path], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return [f"{name}: tl_dump failed (exit {r.returncode}): {r.stderr.strip()}"], []
    out, _ = ref.read_safetensors(out_path)

    # the reference runs in float64 on the same (fp32-valued) weights and LoRA matrices
    lora64 = ref.LoraSet(cfg, lopt["n_slots"], lopt["rank"], lopt["alpha"], lopt["targets"], lopt["rslora"])
    lora64.A = {k: v.to(torch.float64) for k, v in lora.A.items()}
    lora64.B = {k: v.to(torch.float64) for k, v in lora.B.items()}
    logits, logp, targets, loss, grads = reference(cfg, weights, lora64, tokens, cu, slots, plen)

    failures, rows = [], []

    def check(qty, a, b, tol=TOL):
        e, why = rel_err(a, b)
        rows.append((name, qty, e))
        if not e <= tol:
            failures.append(f"{name}: {qty}: relative error {e:.3g} > {tol:g} {why}".rstrip())

    if not np.array_equal(out["targets"], targets):
        failures.append(f"{name}: targets differ from the batcher rule: tailor {out['targets'].tolist()} vs "
                        f"reference {targets.tolist()}")
    check("inv_freq", out["inv_freq"], ref.rope_inv_freq(cfg).double().numpy(), 1e-6)
    check("logits", out["logits"], logits)
    check("logp(train)", out["logp"], logp)
    check("logp(eval)", out["logp_eval"], logp)
    check("loss/slot", out["loss"], loss)
    worst = {}
    for (s, l, t, ab), g in grads.items():
        key = f"grad.{s}.{l}.{t}.{ab}"
        if key not in out:
            failures.append(f"{name}: {key} missing from tl_dump's output")
            continue
        e, why = rel_err(out[key], g)
        kind = f"grad {t}.{ab}"
        if e > worst.get(kind, (-1, ""))[0]:
            worst[kind] = (e, key)
        if not e <= TOL:
            failures.append(f"{name}: {key}: relative error {e:.3g} > {TOL:g} {why} "
                            f"(max|ref| {np.max(np.abs(g)):.3g})".rstrip())
    for kind in sorted(worst, key=lambda k: (ref.TARGETS.index(k.split()[1][:-2]), k)):
        rows.append((name, kind + f" (worst {worst[kind][1]})", worst[kind][0]))
    return failures, rows


def main():
    tool = common.built_tool("tl_dump")
    if not tool:
        return 1
    torch.set_num_threads(2)
    t0 = time.time()
    all_fail, all_rows = [], []
    with tempfile.TemporaryDirectory(prefix="tl_torch_") as work:
        for i, (name, cfg_dict, lopt, seqs) in enumerate(CASES):
            f, rows = run_case(tool, work, i, name, cfg_dict, lopt, seqs)
            all_fail += f
            all_rows += rows
    print(f"{'case':<20} {'quantity':<52} {'rel err':>10}")
    for name, qty, e in all_rows:
        print(f"{name:<20} {qty:<52} {e:10.2e}")
    print(f"({len(CASES)} models, {time.time() - t0:.1f} s; tolerance {TOL:g}, inv_freq 1e-6)")
    return common.verdict(all_fail, "FAIL: tailor disagrees with the PyTorch reference:")


if __name__ == "__main__":
    sys.exit(main())
