"""llama.cpp (PyPI's llama-cpp-python, built from its source package by scripts/pyenv.sh) serves what
`tailor export --format gguf|merged-gguf` writes for the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), and
transformers loads `--format merged` of the same run. Slow (label slow): about 5 minutes on 2 busy cores.

Two users' adapters are trained by `tailor train` on demo data; then, on the same 12 token ids:
- GGUF LoRA over an F32 base: the Q4_1 GGUF dequantized to F32 by PyPI's gguf package (the weights tailor computes
  with) plus each user's GGUF LoRA (and the base alone) in llama.cpp gives the logits of tailor's own forward with
  that adapter (tests/tools/tl_dump fed the PEFT export of the same checkpoint) to F32_TOL = 1e-4 relative
  (max|diff| / max|tailor|; measured 1.3e-6 to 2.7e-6 on 2026-12-05, KV cache in F32), and 16 tokens generated
  greedily by llama.cpp equal tailor's (argmax of tl_dump's logits, one token at a time), users and base alike.
  The adapters move the logits by more than 100 x F32_TOL (checked), so an adapter llama.cpp ignored, or B rows of
  q/k left unpermuted, fail.
- GGUF LoRA over the Q4_1 base itself: llama.cpp multiplies Q4_1 weights with activations quantized to 8 bits
  (Q8_1), tailor with the dequantized fp32 weights, so they differ by that quantization: measured 0.026 to 0.128
  (2026-12-05), Q4_TOL = 0.25. Greedy agreement on this route is printed, not required (measured: both users
  16 of 16 tokens, the base 4 of 16: random prompt tokens leave near-ties that the quantization flips).
- merged GGUF (--dtype f32): llama.cpp's logits equal tailor's forward with the adapter and the GGUF-LoRA route
  over the F32 base to MERGED_TOL = 1e-4 (measured 1.3e-6), and the Q4_1 GGUF-LoRA route's to Q4_TOL.
- merged HF directory (--dtype f32, from the GGUF base, --shard-mb 200: 3 shards + index): transformers' logits
  equal tailor's to 1e-5 relative (measured 3.7e-6).

Skipped (77) when the model file or the PyPI test packages (llama_cpp, transformers) are absent."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SRC = os.environ.get("TAILOR_SRC", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL_DIR = os.path.join(SRC, "models", "smollm2-135m-instruct")
GGUF = os.path.join(MODEL_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.exists(GGUF):
    common.skip(f"{GGUF} is absent (run scripts/get_model.sh)")
try:
    import numpy as np
    import torch
    import gguf
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM
except ImportError as e:
    common.skip(e)
import test_peft_export as pe  # noqa: E402

F32_TOL = 1e-4
Q4_TOL = 0.25
MERGED_TOL = 1e-4
HF_TOL = 1e-5
N_GREEDY = 16
USERS = ("blake", "dana")
failures = []


def check(qty, got, want, tol):
    e, why = common.rel_err(got, want)
    print(f"{qty:72s} {e:.3g} (tolerance {tol:g})")
    if not e <= tol:
        failures.append(f"{qty}: relative error {e:.3g} > {tol:g} {why}".rstrip())
    return e


def f32_base(path, out):
    """The Q4_1 GGUF with every tensor dequantized to F32 (PyPI's gguf package, llama.cpp's gguf-py): the weights
    tailor computes with, so llama.cpp's fp32 matmuls can be compared tightly."""
    r = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type",
                                                 "general.quantization_version", "general.alignment"):
            continue
        vt = gguf.GGUFValueType(f.types[0])
        sub = gguf.GGUFValueType(f.types[-1]) if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vt, sub_type=sub)
    w.add_file_type(0)
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, a.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_logits(model, lora, seq):
    # KV cache in F32 (type_k/type_v 0 = GGML_TYPE_F32; the default F16 cache alone costs ~2e-4)
    llm = Llama(model_path=model, lora_path=lora, logits_all=True, n_ctx=128, n_batch=128, n_threads=2,
                verbose=False, seed=0, type_k=0, type_v=0)
    llm.eval(seq)
    out = np.array(llm.scores[:len(seq)], dtype=np.float32)
    gen = list(seq)
    for _ in range(N_GREEDY):
        tok = int(np.argmax(llm.scores[len(gen) - 1]))
        gen.append(tok)
        llm.eval([tok])
    del llm
    return out, gen[len(seq):]


def main():
    tailor, tool = os.environ["TAILOR_BIN"], common.built_tool("tl_dump")
    if tool is None:
        return 1
    with tempfile.TemporaryDirectory() as work:
        rows = os.path.join(work, "train.jsonl")
        with open(rows, "w") as f:
            for line in open(os.path.join(SRC, "demo", "sft_train.jsonl")):
                if json.loads(line)["user"] in USERS:
                    f.write(line)
        data = os.path.join(work, "train.h5")
        pe.sh([tailor, "data", "build", rows, data, "--model", GGUF], "data build")
        cfg, run = os.path.join(work, "c.yaml"), os.path.join(work, "run")
        pe.write_config(cfg, GGUF, data, run, False, steps=3)
        pe.sh([tailor, "train", cfg], "tailor train", timeout=600)
        ads = pe.exported(run)
        if [n for n, _ in ads] != list(USERS):
            failures.append(f"exported adapters {[n for n, _ in ads]}, expected {list(USERS)}")
            return common.verdict(failures)
        files = [pe.ref.read_safetensors(os.path.join(d, "adapter_model.safetensors"))[0] for _, d in ads]
        gdir, mg = os.path.join(work, "gguf"), os.path.join(work, "merged-gguf")
        pe.sh([tailor, "export", run, "--format", "gguf", "--out", gdir], "export gguf")
        pe.sh([tailor, "export", run, "--format", "merged-gguf", "--user", USERS[1], "--out", mg], "merged-gguf",
              timeout=300)
        gidx = json.load(open(os.path.join(gdir, "index.json")))["adapters"]
        loras = [os.path.join(gdir, e["file"]) for e in gidx]

        gen = torch.Generator().manual_seed(1)
        prompt = torch.randint(1, 49152, (12,), generator=gen).tolist()
        seqs, slots = [prompt, prompt, prompt], [0, 1, -1]
        t_logits = pe.tailor_logits(tool, work, "p", GGUF, 30, files, seqs, slots, False)

        # greedy continuation on tailor's side: one tl_dump per token, the three sequences side by side
        t_gen = [list(prompt) for _ in seqs]
        for k in range(N_GREEDY):
            lg = pe.tailor_logits(tool, work, f"g{k}", GGUF, 30, files, t_gen, slots, False)
            for i in range(3):
                t_gen[i].append(int(np.argmax(lg[i][-1])))
        t_gen = [g[len(prompt):] for g in t_gen]

        f32 = os.path.join(work, "base-f32.gguf")
        f32_base(GGUF, f32)
        l_route, f_route = {}, {}
        for i, (who, lora) in enumerate(zip(list(USERS) + ["base"], loras + [None])):
            lg, lgen = llama_logits(f32, lora, prompt)
            f_route[who] = lg
            check(f"llama.cpp F32 base{' + GGUF LoRA ' + who if lora else ''} vs tailor: logits", lg, t_logits[i],
                  F32_TOL)
            print(f"  greedy {who}: llama.cpp {lgen}\n  greedy {who}: tailor    {t_gen[i]}")
            if lgen != t_gen[i]:
                failures.append(f"greedy {who} (F32 base): llama.cpp {lgen} != tailor {t_gen[i]}")
            lg, lgen = llama_logits(GGUF, lora, prompt)
            l_route[who] = lg
            check(f"llama.cpp Q4_1 base{' + GGUF LoRA ' + who if lora else ''} vs tailor: logits", lg, t_logits[i],
                  Q4_TOL)
            same = sum(a == b for a, b in zip(lgen, t_gen[i]))
            print(f"  greedy {who} on the Q4_1 base: {same} of {N_GREEDY} tokens as tailor's (information only)")
        # merged GGUF of the second user
        (mfile,) = [f for f in os.listdir(mg) if f.endswith(".gguf")]
        lg, _ = llama_logits(os.path.join(mg, mfile), None, prompt)
        check(f"llama.cpp merged GGUF ({USERS[1]}, F32) vs tailor: logits", lg, t_logits[1], MERGED_TOL)
        check(f"llama.cpp merged GGUF vs llama.cpp F32 base + GGUF LoRA ({USERS[1]}): logits", lg, f_route[USERS[1]],
              MERGED_TOL)
        check(f"llama.cpp merged GGUF vs llama.cpp Q4_1 GGUF + LoRA ({USERS[1]}): logits", lg, l_route[USERS[1]],
              Q4_TOL)

        # merged HF directory of the first user, from the GGUF base
        md = os.path.join(work, "merged")
        pe.sh([tailor, "export", run, "--format", "merged", "--user", USERS[0], "--out", md, "--shard-mb", "200"],
              "export merged", timeout=300)
        shards = sorted(f for f in os.listdir(md) if f.endswith(".safetensors"))
        print(f"merged HF directory: {shards}")
        if len(shards) < 2 or not os.path.exists(os.path.join(md, "model.safetensors.index.json")):
            failures.append(f"merged with --shard-mb 200: expected several shards and an index, got {shards}")
        m = AutoModelForCausalLM.from_pretrained(md, torch_dtype=torch.float32)
        m.eval()
        with torch.no_grad():
            hf = m(input_ids=torch.tensor([prompt])).logits[0].numpy()
        check(f"transformers merged directory ({USERS[0]}) vs tailor: logits", hf, t_logits[0], HF_TOL)
    failures.extend(pe.failures)
    return common.verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
