"""PyTorch side of the CPU benchmark (scripts/bench_cpu.sh): the same LoRA SFT training step as tests/tools/tl_bench.c.

fp32 model from an HF directory (tl_bench --make-model), the reference Llama + PEFT-style LoRA of
tests/torch/llama_ref.py (eager HF math), only the LoRA matrices require grad; each step: forward, per-adapter mean
cross-entropy summed over adapters, backward, per-adapter clip_grad_norm_(1.0), torch.optim.AdamW (lr 1e-4, wd 0),
zero_grad. Several adapters in one batch are applied the way plain torch would: the base product over all rows,
each adapter's LoRA product on its own rows (index_select / index_add).
Same batch as tl_bench: S sequences of T tokens, token i = ((i * 2654435761) mod 2^32) / 128 mod V, sequence k
on adapter k mod A, packed by adapter. Prints a final "RESULT key=value ..." line.
"""

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "torch"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import llama_ref as ref  # noqa: E402


def rss_now_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    if a.steps < 1:
        sys.exit("--steps must be >= 1")
    if a.adapters > a.seqs:
        sys.exit(f"--adapters {a.adapters} exceeds --seqs {a.seqs}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rss_import = rss_now_mb()

    t0 = time.time()
    cfg, weights = ref.load_hf_model(a.model, torch.float32)
    model = ref.LlamaRef(cfg, weights, dtype=torch.float32)
    del weights
    t_load = time.time() - t0
    rss_load = rss_now_mb()

    lora = ref.LoraSet(cfg, a.adapters, a.rank, 2 * a.rank, ref.TARGETS)
    lora.init_peft(torch.Generator().manual_seed(0), torch.float32).requires_grad_()
    opt = torch.optim.AdamW(lora.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    S, T, V = a.seqs, a.seq_len, cfg.vocab_size
    slots = [ad for ad in range(a.adapters) for _ in range(ad, S, a.adapters)]
    idx = torch.arange(S * T, dtype=torch.int64)
    tokens = (((idx * 2654435761) % (1 << 32)) // 128 % V).view(S, T)
    targets = tokens[:, 1:]
    slot_t = torch.tensor(slots)

    n_tok = S * T
    print(f"torch {torch.__version__}: {a.threads} threads, {cfg.num_hidden_layers} layers, {n_tok} tokens in {S} "
          f"sequences, {a.adapters} adapter(s), rank {a.rank}, "
          f"{sum(p.numel() for p in lora.parameters(0))} LoRA params per adapter; load {t_load:.1f} s")
    timed, loss0, loss, times, ctimes = 0.0, None, None, [], []
    for step in range(a.warmup + a.steps):
        ts, cs = time.perf_counter(), time.process_time()
        logits = model.forward(tokens, slots=slots, lora=lora)[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view(S, T - 1)
        per_seq = ce.sum(1)
        total = 0
        for ad in range(a.adapters):
            sel = slot_t == ad
            total = total + per_seq[sel].sum() / (sel.sum() * (T - 1))
        total.backward()
        norms = [torch.nn.utils.clip_grad_norm_(lora.parameters(ad), 1.0) for ad in range(a.adapters)]
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt, dc = time.perf_counter() - ts, time.process_time() - cs
        loss = float(total)
        if loss0 is None:
            loss0 = loss
        if step >= a.warmup:
            timed += dt
            times.append(dt)
            ctimes.append(dc)
        print(f"torch: step {step}{' (warmup)' if step < a.warmup else ''} {dt:.3f} s  loss {loss:.6f}  "
              f"grad-norm[0] {float(norms[0]):.4g}", flush=True)
        del logits, ce, per_seq, total
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    med = statistics.median(times)  # robust to a step slowed by other processes on a shared machine
    print(f"RESULT impl=torch tokens_per_s={n_tok / med:.2f} tokens_per_s_mean={n_tok * a.steps / timed:.2f} "
          f"step_s_median={med:.4f} cpu_s_median={statistics.median(ctimes):.4f} "
          f"peak_rss_mb={peak:.1f} rss_after_load_mb={rss_load:.1f} rss_after_import_mb={rss_import:.1f} "
          f"loss0={loss0:.6f} loss_last={loss:.6f} threads={a.threads} adapters={a.adapters} tokens={n_tok}")


if __name__ == "__main__":
    main()
