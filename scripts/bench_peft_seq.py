#!/usr/bin/python3
"""bench_peft_seq: the HF PEFT + torch side of scripts/bench_peft_seq.sh, and the data both sides train on.

  bench_peft_seq.py make-data OUT.h5 --users U --examples E --seq-len T --prompt-len P --vocab V [--seed S]
  bench_peft_seq.py peft --model DIR --data H5 --steps S [--lr LR] [--rank R] [--alpha A] [--threads N]

make-data writes U users x E examples of T random tokens each (the first P are prompt) in tailor's HDF5 SFT
schema (docs/data-format.md).

peft trains the users one after another, the way per-user methods such as OPPU do in their best case: one
process, the model loaded once, then for every user a fresh LoRA adapter (PeftModel.add_adapter, same rank,
alpha, dropout 0 and all seven projections as tailor), a fresh torch.optim.AdamW (weight decay 0), S steps of
one example each (example k mod E at step k, mean cross-entropy over the response tokens, gradient clipping at
1.0), then the adapter is deleted. Times are split into model load, adapter setup (add + optimizer + delete),
forward, backward and optimizer (clip + AdamW step + zero_grad). The last line is machine-readable:
"RESULT key=value ...".
"""
import argparse
import resource
import sys
import time


def make_data(a):
    import h5py
    import numpy as np
    r = np.random.default_rng(a.seed)
    n = a.users * a.examples
    toks = r.integers(3, a.vocab, size=(n, a.seq_len)).astype(np.int32)
    with h5py.File(a.out, "w") as f:
        f.attrs["tailor_format"] = 1
        f.attrs["kind"] = "sft"
        f.create_dataset("users/name", data=np.array([f"user{u:05d}" for u in range(a.users)],
                                                      dtype=h5py.string_dtype()))
        f.create_dataset("sft/tokens", data=toks.reshape(-1))
        f.create_dataset("sft/offsets", data=np.arange(n + 1, dtype=np.int64) * a.seq_len)
        f.create_dataset("sft/prompt_len", data=np.full(n, a.prompt_len, dtype=np.int32))
        f.create_dataset("sft/user", data=np.repeat(np.arange(a.users, dtype=np.int32), a.examples))
    print(f"bench_peft_seq: wrote {a.users} users x {a.examples} examples x {a.seq_len} tokens to {a.out}")


def peft_side(a):
    import h5py
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # tl_bench --make-model writes safetensors without the "format" metadata from_pretrained wants: build the
    # model from its config and load the tensors (embeddings tied, as config.json says)
    base = LlamaForCausalLM(LlamaConfig.from_pretrained(a.model)).float()
    missing, unexpected = base.load_state_dict(load_file(f"{a.model}/model.safetensors"), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        sys.exit(f"bench_peft_seq: {a.model}: missing {missing}, unexpected {unexpected}")
    base.tie_weights()
    base.config.use_cache = False
    for p in base.parameters():
        p.requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg, adapter_name="init")
    model.train()
    with h5py.File(a.data, "r") as f:
        tokens = f["sft/tokens"][:]
        offs = f["sft/offsets"][:]
        plen = f["sft/prompt_len"][:]
        user = f["sft/user"][:]
    n_users = int(user.max()) + 1
    by_user = [np.nonzero(user == u)[0] for u in range(n_users)]
    t_load = time.perf_counter() - t0
    t = {"setup": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    ntok = 0
    loss0 = []
    t_train0 = time.perf_counter()
    for u in range(n_users):
        c = time.perf_counter()
        name = f"u{u}"
        model.add_adapter(name, cfg)
        model.set_adapter(name)
        params = [p for n_, p in model.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        t["setup"] += time.perf_counter() - c
        for step in range(a.steps):
            e = by_user[u][step % len(by_user[u])]
            ids = torch.from_numpy(tokens[offs[e]:offs[e + 1]].astype(np.int64)).unsqueeze(0)
            labels = ids.clone()
            labels[0, :plen[e]] = -100
            c = time.perf_counter()
            out = model(input_ids=ids, labels=labels)
            c1 = time.perf_counter()
            out.loss.backward()
            c2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            c3 = time.perf_counter()
            t["forward"] += c1 - c
            t["backward"] += c2 - c1
            t["optimizer"] += c3 - c2
            ntok += ids.shape[1]
            if step == 0:
                loss0.append(float(out.loss))
        c = time.perf_counter()
        model.set_adapter("init")
        model.delete_adapter(name)
        del opt, params
        t["setup"] += time.perf_counter() - c
    t_train = time.perf_counter() - t_train0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"peft: {n_users} users x {a.steps} steps, {ntok} tokens; load {t_load:.1f} s, training {t_train:.1f} s "
          f"(setup {t['setup']:.1f}, forward {t['forward']:.1f}, backward {t['backward']:.1f}, optimizer "
          f"{t['optimizer']:.1f}); mean first-step loss {sum(loss0) / len(loss0):.4f}")
    print(f"RESULT impl=peft load_s={t_load:.2f} train_s={t_train:.2f} total_s={t_load + t_train:.2f} "
          f"setup_s={t['setup']:.2f} forward_s={t['forward']:.2f} backward_s={t['backward']:.2f} "
          f"optimizer_s={t['optimizer']:.2f} tokens={ntok} peak_rss_mb={rss:.0f} "
          f"loss0_mean={sum(loss0) / len(loss0):.6f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-data")
    m.add_argument("out")
    m.add_argument("--users", type=int, default=64)
    m.add_argument("--examples", type=int, default=4)
    m.add_argument("--seq-len", type=int, default=16)
    m.add_argument("--prompt-len", type=int, default=4)
    m.add_argument("--vocab", type=int, default=49152)
    m.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("peft")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "make-data":
        if a.prompt_len >= a.seq_len or a.users < 1 or a.examples < 1:
            sys.exit("bench_peft_seq: need --prompt-len < --seq-len, --users >= 1, --examples >= 1")
        make_data(a)
    else:
        peft_side(a)


if __name__ == "__main__":
    main()
