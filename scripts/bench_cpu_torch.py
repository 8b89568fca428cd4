"""PyTorch side of the CPU benchmark (scripts/bench_cpu.sh): the same LoRA SFT training step as tests/tools/tl_bench.c.

fp32 model from an HF directory (tl_bench --make-model), the reference Llama + PEFT-style LoRA of
tests/torch/llama_ref.py (eager HF math), only the LoRA matrices require grad; each step: forward, per-adapter mean
cross-entropy summed over adapters, backward, per-adapter clip_grad_norm_(1.0) math, one torch.optim.AdamW over all
adapters' parameters (lr 1e-4, wd 0, torch's defaults otherwise: what HF Trainer's "adamw_torch" builds), zero_grad.
Same batch as tl_bench: S sequences of T tokens, token i = ((i * 2654435761) mod 2^32) / 128 mod V, sequence k
on adapter k mod A, packed by adapter. Prints a final "RESULT key=value ..." line.

How several adapters share one batch (--lora-impl):
  ref    llama_ref's per-adapter path: each adapter's LoRA product on its rows through index_select / an
         out-of-place index_add, one (A, B) tensor pair per (adapter, layer, target). Every index_add copies the
         whole projection output, and with 64 adapters x 7 targets x 30 layers those copies pile up until
         backward (past 21 GB in the first forward on a 24 GB machine); kept as the check of the other two.
  split  the rows are packed by adapter, so each adapter's rows are one slice: split the input by segment, one
         A / B product per adapter, cat back, one add; each (layer, target) holds all adapters' A and B stacked
         ([n, r, in] and [n, out, r]), so the clipping norms and AdamW see 2 x 7 x 30 tensors, not n times that.
  bmm    as split, but when every adapter has the same number of rows (this benchmark) the n products are one
         torch.bmm over the stacked matrices (the batched-LoRA way of multi-LoRA trainers).
  auto   (default) ref with one adapter (unchanged, so its numbers compare with earlier runs), else bmm when the
         segments are equal, else split.
Clipping with stacked tensors computes clip_grad_norm_'s numbers per adapter: the 2-norm of each tensor's slice,
the 2-norm of those, coefficient 1 / (norm + 1e-6) clamped to 1. AdamW is elementwise and every adapter steps
together, so one optimizer over the stacked tensors updates each adapter exactly as its own optimizer would.
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


class StackedLora:
    """All adapters' LoRA matrices, stacked per (layer, target): A[(l, t)] [n, r, in], B[(l, t)] [n, out, r].
    seg: the token rows of each adapter (sequences packed by adapter: adapter i owns rows [off_i, off_i + seg[i])
    of the flattened [b * T] batch)."""

    def __init__(self, ref_set, seg, use_bmm):
        self.cfg, self.n = ref_set.cfg, ref_set.n_slots
        self.targets, self.scale = ref_set.targets, ref_set.scale
        self.seg, self.use_bmm = list(seg), use_bmm
        self.A, self.B = {}, {}
        for l in range(self.cfg.num_hidden_layers):
            for t in self.targets:
                self.A[(l, t)] = torch.stack([ref_set.A[(s, l, t)] for s in range(self.n)]).requires_grad_()
                self.B[(l, t)] = torch.stack([ref_set.B[(s, l, t)] for s in range(self.n)]).requires_grad_()

    def parameters(self):
        return [t for k in self.A for t in (self.A[k], self.B[k])]

    def delta(self, x, layer, target):
        """scale * B_s A_s x for each adapter s on its own rows; x [b, T, in] -> [b, T, out]"""
        A, B = self.A[(layer, target)], self.B[(layer, target)]
        b, T, inn = x.shape
        if self.use_bmm:  # equal segments: [n, rows, in] x [n, in, r] x [n, r, out]
            h = torch.bmm(x.reshape(self.n, -1, inn), A.transpose(1, 2))
            return torch.bmm(h, B.transpose(1, 2)).reshape(b, T, -1) * self.scale
        parts = x.reshape(b * T, inn).split(self.seg, 0)
        y = torch.cat([F.linear(F.linear(xs, A[s]), B[s]) for s, xs in enumerate(parts)], 0)
        return y.reshape(b, T, -1) * self.scale

    def clip_(self, max_norm):
        """clip_grad_norm_(adapter's parameters, max_norm) for every adapter at once; returns the norms [n]"""
        grads = [p.grad for p in self.parameters()]
        per = torch.stack([torch.linalg.vector_norm(g.reshape(self.n, -1), 2.0, dim=1) for g in grads])
        norms = torch.linalg.vector_norm(per, 2.0, dim=0)
        coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, 1, 1))
        return norms


class GroupedModel(ref.LlamaRef):
    """llama_ref's model with the LoRA products of a StackedLora (same base math, same LoRA formula)."""

    def _proj(self, x, layer, target, lora, groups):
        mod = "self_attn." if target in ref.ATTN_TARGETS else "mlp."
        p = f"model.layers.{layer}.{mod}{target}."
        y = F.linear(x, self.w[p + "weight"], self.w.get(p + "bias"))
        if lora is not None and target in lora.targets:
            y = y + lora.delta(x, layer, target)
        return y


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
    ap.add_argument("--lora-impl", choices=("auto", "ref", "split", "bmm"), default="auto")
    ap.add_argument("--lr", type=float, default=1e-4)  # tl_bench's; tests/torch/test_bench_torch_lora.py raises it
    a = ap.parse_args()
    if a.steps < 1:
        sys.exit("--steps must be >= 1")
    if a.adapters > a.seqs:
        sys.exit(f"--adapters {a.adapters} exceeds --seqs {a.seqs}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rss_import = rss_now_mb()

    t0 = time.time()
    S = a.seqs
    slots = [ad for ad in range(a.adapters) for _ in range(ad, S, a.adapters)]
    seg = [slots.count(ad) for ad in range(a.adapters)]
    impl = a.lora_impl
    if impl == "auto":
        impl = "ref" if a.adapters == 1 else "bmm" if len(set(seg)) == 1 else "split"
    if impl == "bmm" and len(set(seg)) != 1:
        sys.exit("--lora-impl bmm needs as many sequences on every adapter (--seqs a multiple of --adapters)")

    cfg, weights = ref.load_hf_model(a.model, torch.float32)
    model = (ref.LlamaRef if impl == "ref" else GroupedModel)(cfg, weights, dtype=torch.float32)
    del weights
    t_load = time.time() - t0
    rss_load = rss_now_mb()

    lora = ref.LoraSet(cfg, a.adapters, a.rank, 2 * a.rank, ref.TARGETS)
    lora.init_peft(torch.Generator().manual_seed(0), torch.float32)
    n_per_adapter = sum(p.numel() for p in lora.parameters(0))
    if impl == "ref":
        lora.requires_grad_()
        params = lora.parameters()
    else:  # the same initial values, stacked
        lora = StackedLora(lora, [n * a.seq_len for n in seg], impl == "bmm")
        params = lora.parameters()
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    T, V = a.seq_len, cfg.vocab_size
    idx = torch.arange(S * T, dtype=torch.int64)
    tokens = (((idx * 2654435761) % (1 << 32)) // 128 % V).view(S, T)
    targets = tokens[:, 1:]
    slot_t = torch.tensor(slots)

    n_tok = S * T
    print(f"torch {torch.__version__}: {a.threads} threads, {cfg.num_hidden_layers} layers, {n_tok} tokens in {S} "
          f"sequences, {a.adapters} adapter(s), rank {a.rank}, {n_per_adapter} LoRA params per adapter, "
          f"LoRA products: {impl}; load {t_load:.1f} s")
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
        if impl == "ref":
            norms = [torch.nn.utils.clip_grad_norm_(lora.parameters(ad), 1.0) for ad in range(a.adapters)]
        else:
            norms = lora.clip_(1.0)
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
          f"loss0={loss0:.6f} loss_last={loss:.6f} threads={a.threads} adapters={a.adapters} tokens={n_tok} "
          f"lora_impl={impl}")


if __name__ == "__main__":
    main()
