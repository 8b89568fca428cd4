"""The multi-adapter LoRA paths of scripts/bench_cpu_torch.py (the PyTorch peer of scripts/bench_cpu.sh) compute
the same training steps as llama_ref's per-adapter path they replace in the benchmark.

bench_cpu_torch.py runs several adapters in one batch either through llama_ref (index_select / index_add per
adapter, one tensor pair per adapter: "ref") or with each (layer, target)'s matrices stacked over adapters and
the products split by segment ("split") or batched ("bmm"), with clipping done per adapter on the stacked
gradients. On a tiny random model, 4 steps (forward, backward, per-adapter clipping, AdamW) must give the same
loss at every step and the same gradient norm of adapter 0 as "ref": losses within 1e-6 relative (float32
rounding of a different product order), norms as printed (4 digits). The lr is raised so that the LoRA
updates move the loss well beyond that tolerance, and the clip is active (norms above 1), so a row given to the
wrong adapter or a wrong clipping coefficient changes the later steps' losses. Equal segments (8 sequences on 4
adapters) check split and bmm; unequal ones (6 on 4) check split.

Run: /usr/bin/python3 tests/torch/test_bench_torch_lora.py
"""

import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

np, torch = common.require("numpy", "torch")

import llama_ref as ref  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BENCH = os.path.join(SRC, "scripts", "bench_cpu_torch.py")
TOL = 1e-6
STEP = re.compile(r"^torch: step (\d+) \S+ s  loss (\S+)  grad-norm\[0\] (\S+)$")


def run(model_dir, impl, seqs, adapters):
    """[(loss, grad-norm[0] as printed)] of each step"""
    out = common.sh([sys.executable, BENCH, "--model", model_dir, "--threads", "1", "--adapters", str(adapters),
                     "--seqs", str(seqs), "--seq-len", "7", "--warmup", "0", "--steps", "4", "--lr", "0.005",
                     "--lora-impl", impl], f"bench_cpu_torch.py --lora-impl {impl}")
    steps = [STEP.match(line) for line in out.splitlines()]
    return [(float(m.group(2)), m.group(3)) for m in steps if m]


def main():
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 32,
           "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "hidden_act": "silu", "torch_dtype": "float32"}
    failures = []
    with tempfile.TemporaryDirectory(prefix="tl_bench_lora_") as tmp:
        w = ref.random_weights(ref.LlamaConfig(cfg), torch.Generator().manual_seed(3), torch.float32)
        ref.write_hf_model(tmp, cfg, w)
        for seqs, impls in ((8, ("split", "bmm")), (6, ("split",))):
            want = run(tmp, "ref", seqs, 4)
            what = f"{seqs} sequences on 4 adapters"
            if len(want) != 4:
                failures.append(f"{what}: ref printed {len(want)} steps, expected 4")
                continue
            moved = abs(want[-1][0] - want[0][0]) / abs(want[0][0])
            if moved < 100 * TOL:
                failures.append(f"{what}: the loss moved only {moved:.2g} (relative) in 4 steps: no test")
            if float(want[0][1]) <= 1.0:
                failures.append(f"{what}: grad-norm[0] {want[0][1]} does not reach the clip (1.0)")
            for impl in impls:
                got = run(tmp, impl, seqs, 4)
                if len(got) != len(want):
                    failures.append(f"{what}, {impl}: {len(got)} steps printed, expected {len(want)}")
                    continue
                for k, ((lg, ng), (lw, nw)) in enumerate(zip(got, want)):
                    err = abs(lg - lw) / abs(lw)
                    print(f"{what}, {impl}, step {k}: loss {lg:.6f} vs ref {lw:.6f} (rel {err:.2g}), "
                          f"grad-norm[0] {ng} vs {nw}")
                    if not err <= TOL:
                        failures.append(f"{what}, {impl}, step {k}: loss {lg} vs ref {lw} (relative {err:.2g})")
                    if ng != nw:
                        failures.append(f"{what}, {impl}, step {k}: grad-norm[0] {ng} vs ref {nw}")
    return common.verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
