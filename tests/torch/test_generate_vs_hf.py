"""`tailor generate` answers token for token as Hugging Face transformers + PEFT greedy generation (~10 s).

A byte-level BPE tokenizer.json is trained locally (as tests/e2e/data_build.sh does) and put into a tiny random
Llama model (`tailor make-model`, GQA, attention biases); two per-user adapters (all seven targets) are trained
for a few steps with `tailor train` and exported. One `tailor generate --all-users --base --chat` call answers
the prompt with both adapters and the base model side by side in one batch (greedy, KV cache); each answer must
equal, byte for byte, the decoded ids of HF `model.generate(do_sample=False)` on the same prompt ids with the
PEFT adapter loaded from the exported directory (or with the adapter disabled for the base model), stopping at
the same EOS ids. The adapters must change the answers (else the check could not tell them apart). A single
adapter (`--run --user`, streamed) must give the same answer as in the batch.

Env (from ctest): TAILOR_BIN, TAILOR_SRC. Exit 77 when transformers, peft or tokenizers are missing.
"""

import json
import os
import subprocess
import sys
import tempfile

import common  # noqa: E402

try:
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    from tiny_tokenizer import tiny_tokenizer
except ImportError as e:
    common.skip(e)

MAX_NEW = 16
PROMPT = "The quick brown fox"


def sh(args, what):
    r = subprocess.run(args, capture_output=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"FAIL: {what} (exit {r.returncode}): {(r.stderr or r.stdout).decode(errors='replace')[-2000:]}")
    return r.stdout


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    tailor = os.environ["TAILOR_BIN"]
    src = os.environ["TAILOR_SRC"]
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="tl_gen_") as T:
        corpus = ["The quick brown fox jumps over the lazy dog.", "Bonjour, ça va très bien !",
                  "short answers please", "Long, detailed answers with many words are what I want."] * 20
        tok = tiny_tokenizer(corpus)
        V = tok.get_vocab_size()
        model = os.path.join(T, "model")
        sh([tailor, "make-model", model, "--vocab", str(V), "--hidden", "32", "--layers", "2", "--heads", "4",
            "--kv-heads", "2", "--ffn", "64", "--bias", "--seed", "5"], "make-model")
        tok.save(os.path.join(model, "tokenizer.json"))
        data = os.path.join(T, "sft.h5")
        sh([sys.executable, os.path.join(src, "scripts", "make_sft_data.py"), "--out", data, "--users", "2",
            "--examples-per-user", "16", "--vocab", str(V), "--seed", "4"], "make_sft_data.py")
        run = os.path.join(T, "run")
        cfg = os.path.join(T, "c.yaml")
        with open(cfg, "w") as f:
            f.write(f"run: {{name: g, output_dir: {run}, seed: 3}}\nmodel: {{path: {model}}}\n"
                    "adapter: {rank: 4, alpha: 8, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                    "down_proj]}\n"
                    f"data: {{train: {data}, max_seq_len: 64}}\n"
                    "train: {backend: cpu, threads: 2, steps: 8, lr: 0.05, examples_per_adapter: 4, "
                    "micro_batch_tokens: 512, schedule: constant, log_every: 100}\n")
        sh([tailor, "train", cfg], "tailor train")
        idx = json.load(open(os.path.join(run, "adapters", "index.json")))["adapters"]
        users = [(a["name"], os.path.join(run, "adapters", a["dir"])) for a in idx]

        out = sh([tailor, "generate", "--model", model, "--run", run, "--all-users", "--base", "--chat",
                  "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW), "--backend", "cpu"], "tailor generate")
        blocks, cur = {}, None
        for line in out.split(b"\n"):
            if line.startswith(b"=== ") and line.endswith(b" ===") and line[4:-4].decode() in [u for u, _ in users] + ["base"]:
                cur = line[4:-4].decode()
                blocks[cur] = []
            elif cur is not None:
                blocks[cur].append(line)
        got = {k: b"\n".join(v)[:-1] if v and v[-1] == b"" else b"\n".join(v) for k, v in blocks.items()}

        chat = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
        ids = tok.encode(chat, add_special_tokens=False).ids
        eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
        bd = byte_decoder()
        special = {tok.token_to_id(s): s for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}

        def decode(seq):
            b = b""
            for t in seq:
                b += special[t].encode() if t in special else bytes(bd[c] for c in tok.id_to_token(t))
            return b

        base = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32).eval()
        inp = torch.tensor([ids])

        def hf_answer(m):
            with torch.no_grad():
                o = m.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=False,
                               max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=eos[1])[0, len(ids):].tolist()
            while o and o[-1] in eos:
                o.pop()
            return o

        failures = []
        want = {"base": hf_answer(base)}
        pm = None
        for i, (u, d) in enumerate(users):
            pm = PeftModel.from_pretrained(base, d, adapter_name=f"a{i}") if pm is None else pm
            if i > 0:
                pm.load_adapter(d, adapter_name=f"a{i}")
            pm.set_adapter(f"a{i}")
            want[u] = hf_answer(pm)
        for k, w in want.items():
            if got.get(k) != decode(w):
                failures.append(f"{k}: tailor {got.get(k)!r} != HF {decode(w)!r} (ids {w})")
            else:
                print(f"{k}: {len(w)} tokens match: {decode(w)!r}")
        if len({tuple(v) for v in want.values()}) < 2:
            failures.append(f"the adapters do not change the greedy answer: {want}")
        u0 = users[0][0]
        one = sh([tailor, "generate", "--model", model, "--run", run, "--user", u0, "--chat", "--prompt", PROMPT,
                  "--max-new-tokens", str(MAX_NEW), "--backend", "cpu"], "tailor generate --user")
        w0 = decode(want[u0]) + b"\n"
        if one != w0:
            failures.append(f"single streamed answer {one!r} != {w0!r}")
        if failures:
            print("FAIL:\n  " + "\n  ".join(failures))
            return 1
        print("ok")
        return 0


if __name__ == "__main__":
    sys.exit(main())
