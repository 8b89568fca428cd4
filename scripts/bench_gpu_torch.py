"""PyTorch side of the GPU benchmark (scripts/bench_gpu.sh): what users would run instead of tailor.

  bench_gpu_torch.py --op step  --model DIR --seqs S --seq-len T --rank R [--steps N --warmup W]
      one LoRA SFT step with HF transformers + PEFT (rank R, alpha 2R, all seven projections, one adapter) on the
      model tailor trains (HF layout, loaded from DIR: no hub), bf16 weights, SDPA attention, AdamW on the LoRA
      parameters (lr 1e-4), grad clip 1.0; the batch and loss of tests/tools/tl_bench.c (token i =
      ((i * 2654435761) mod 2^32) / 128 mod V, every next token a target, mean cross-entropy).
  bench_gpu_torch.py --op attn --seqs S --seq-len T --hq H --hkv K --hd D
      torch.nn.functional.scaled_dot_product_attention (causal, GQA, bf16) forward + backward.
  bench_gpu_torch.py --op ce --tokens N --hidden D --vocab V
      torch's LM head + cross-entropy as HF computes it: logits = x W^T (bf16), upcast to fp32,
      F.cross_entropy, backward to x.
  bench_gpu_torch.py --op users --model DIR --data H5 --users U --steps N --examples E --rank R
      U users trained one after another, as PEFT allows (no mixed-adapter batches in training): the model loaded
      once, a fresh LoRA adapter and AdamW per user, N steps of E of that user's examples (padded batch, loss on
      response tokens), the adapter deleted afterwards. Wall clock of the whole, model load included.

--device cpu (the dry run of bench_gpu.sh) runs in fp32 on the CPU, at whatever tiny shape it is given, and
accepts a torch without SDPA (a plain causal attention stands in, and says so). Prints a last line
"RESULT key=value ...".
"""

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, warmup, iters):
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def peak_mb(dev):
    return torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0.0


def sdpa(q, k, v, allow_fallback):
    """q [B, Hq, T, hd], k/v [B, Hkv, T, hd], causal"""
    hq, hkv = q.shape[1], k.shape[1]
    if hasattr(F, "scaled_dot_product_attention"):
        if hq != hkv:
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if not allow_fallback:
        sys.exit("bench_gpu_torch: this torch has no scaled_dot_product_attention")
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    T = q.shape[2]
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s.float(), -1).to(q.dtype) @ v


def load_lora_model(path, dev, dtype, rank):
    import transformers
    from transformers import AutoModelForCausalLM
    # transformers 5 (the device image has 5.17) names it dtype; 4.x torch_dtype
    kw = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}
    if dev.type == "cuda":
        kw["attn_implementation"] = "sdpa"
    model = AutoModelForCausalLM.from_pretrained(path, **kw).to(dev)
    model.config.use_cache = False
    return model


def lora_config(rank):
    from peft import LoraConfig
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def op_step(a, dev, dtype):
    from peft import get_peft_model
    t0 = time.perf_counter()
    model = get_peft_model(load_lora_model(a.model, dev, dtype, a.rank), lora_config(a.rank))
    load_s = time.perf_counter() - t0
    V = model.config.vocab_size
    n = a.seqs * a.seq_len
    ids = torch.tensor([((i * 2654435761) & 0xFFFFFFFF) // 128 % V for i in range(n)], dtype=torch.long)
    ids = ids.view(a.seqs, a.seq_len).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    losses = []

    def step():
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed(step, dev, a.warmup, a.steps)
    med = statistics.median(times)
    print(f"RESULT impl=torch op=step tokens_per_s={n / med:.2f} step_s_median={med:.4f} peak_dev_mb={peak_mb(dev):.1f}"
          f" loss0={losses[0]:.6f} load_s={load_s:.1f} tokens={n}")


def op_attn(a, dev, dtype):
    g = torch.Generator(device="cpu").manual_seed(1)
    shp = lambda h: (a.seqs, h, a.seq_len, a.hd)  # noqa: E731
    q = torch.randn(shp(a.hq), generator=g).to(dev, dtype).requires_grad_()
    k = torch.randn(shp(a.hkv), generator=g).to(dev, dtype).requires_grad_()
    v = torch.randn(shp(a.hkv), generator=g).to(dev, dtype).requires_grad_()
    do = torch.randn(shp(a.hq), generator=g).to(dev, dtype)

    def fb():
        q.grad = k.grad = v.grad = None
        sdpa(q, k, v, dev.type != "cuda").backward(do)

    times = timed(fb, dev, a.warmup, a.iters)
    med = statistics.median(times)
    flops = 7.0 * 2.0 * a.seqs * 0.5 * a.seq_len ** 2 * a.hq * a.hd
    print(f"RESULT impl=torch op=attn ms_median={1e3 * med:.4f} tflops={flops / med * 1e-12:.2f}"
          f" peak_dev_mb={peak_mb(dev):.1f}")


def op_ce(a, dev, dtype):
    g = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(a.tokens, a.hidden, generator=g).to(dev, dtype).requires_grad_()
    W = (0.02 * torch.randn(a.vocab, a.hidden, generator=g)).to(dev, dtype)
    t = torch.randint(0, a.vocab, (a.tokens,), generator=g).to(dev)

    def fb():
        x.grad = None
        F.cross_entropy((x @ W.t()).float(), t).backward()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed(fb, dev, a.warmup, a.iters)
    med = statistics.median(times)
    flops = 2.0 * 2.0 * a.tokens * a.hidden * a.vocab
    print(f"RESULT impl=torch op=ce ms_median={1e3 * med:.4f} tflops={flops / med * 1e-12:.2f}"
          f" peak_dev_mb={peak_mb(dev):.1f}")


def op_users(a, dev, dtype):
    import h5py
    import numpy as np
    from peft import get_peft_model
    t0 = time.perf_counter()
    with h5py.File(a.data, "r") as f:
        tok = f["sft/tokens"][:]
        off = f["sft/offsets"][:]
        pl = f["sft/prompt_len"][:]
        user = f["sft/user"][:]
    base = load_lora_model(a.model, dev, dtype, a.rank)
    model = get_peft_model(base, lora_config(a.rank), adapter_name="u0")
    n_tokens = 0
    for u in range(a.users):
        ex = np.flatnonzero(user == u)
        if len(ex) == 0:
            sys.exit(f"bench_gpu_torch: user {u} has no examples in {a.data}")
        name = f"u{u}"
        if u > 0:
            model.add_adapter(name, lora_config(a.rank))
            model.set_adapter(name)
        params = [p for n_, p in model.named_parameters() if f".{name}." in n_ and p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        for s in range(a.steps):
            rows = [ex[(s * a.examples + j) % len(ex)] for j in range(a.examples)]
            L = max(int(off[r + 1] - off[r]) for r in rows)
            ids = torch.zeros(len(rows), L, dtype=torch.long)
            lab = torch.full((len(rows), L), -100, dtype=torch.long)
            att = torch.zeros(len(rows), L, dtype=torch.long)
            for i, r in enumerate(rows):
                seq = torch.from_numpy(tok[off[r]:off[r + 1]].astype(np.int64))
                ids[i, :len(seq)] = seq
                att[i, :len(seq)] = 1
                lab[i, int(pl[r]):len(seq)] = seq[int(pl[r]):]
                n_tokens += len(seq)
            out = model(input_ids=ids.to(dev), attention_mask=att.to(dev), labels=lab.to(dev))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if u > 0:
            model.set_adapter("u0")
            model.delete_adapter(name)
    sync(dev)
    wall = time.perf_counter() - t0
    print(f"RESULT impl=torch op=users wall_s={wall:.2f} users={a.users} steps={a.steps} tokens={n_tokens}"
          f" peak_dev_mb={peak_mb(dev):.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--op", required=True, choices=["step", "attn", "ce", "users"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--model")
    p.add_argument("--data")
    for k, d in (("seqs", 8), ("seq-len", 2048), ("rank", 16), ("steps", 5), ("warmup", 2), ("iters", 10),
                 ("hq", 32), ("hkv", 8), ("hd", 64), ("tokens", 16384), ("hidden", 2048), ("vocab", 128256),
                 ("users", 64), ("examples", 4)):
        p.add_argument("--" + k, type=int, default=d)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_torch: torch sees no CUDA device (--device cpu for the dry run)")
    if a.op in ("step", "users") and not a.model:
        sys.exit(f"bench_gpu_torch: --op {a.op} needs --model DIR")
    if a.op == "users" and not a.data:
        sys.exit("bench_gpu_torch: --op users needs --data H5")
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    {"step": op_step, "attn": op_attn, "ce": op_ce, "users": op_users}[a.op](a, dev, dtype)


if __name__ == "__main__":
    main()
