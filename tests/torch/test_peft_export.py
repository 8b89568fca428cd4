"""Exported adapters load in Hugging Face PEFT unchanged and compute what tailor computes (slow: ~7 s).

For tiny random Llama models written by `tailor make-model` (untied, tied embeddings, attention_bias), per-user
LoRA adapters (all seven targets, rank 4, alpha 8; one run with rsLoRA) are trained for a few steps with
`tailor train` on synthetic SFT data, so every B is non-zero. Each exported directory (found through
adapters/index.json) is loaded with transformers' AutoModelForCausalLM (float32) + peft.PeftModel.from_pretrained,
exactly as a user would, and:

- PEFT's view of the adapter (get_peft_model_state_dict) must equal adapter_model.safetensors key for key and bit
  for bit, and the scaling PEFT derived from adapter_config.json must be alpha/r (alpha/sqrt(r) with rsLoRA) of
  the training config;
- PEFT's logits on random token sequences must match tailor's own forward (tests/tools/tl_dump fed the same A/B
  matrices, read from the exported file, with rank/alpha/rslora/targets of the training config) to
  max|tailor - peft| / max|peft| <= 1e-4; the base model (PEFT's disable_adapter) is compared the same way, and
  the adapter must move the logits well beyond the tolerance (so a LoRA that PEFT silently ignores fails).

A Bradley-Terry reward model (task.type: reward) is exported as a PEFT SEQ_CLS adapter with the score head under
modules_to_save; it is loaded with AutoModelForSequenceClassification(num_labels=1, pad_token_id=0) + PeftModel
and, on single unpadded sequences:
- PEFT's score head must be the exported base_model.model.score.weight, and PEFT's score must equal
  hidden_last . head, with hidden_last PEFT's final-norm hidden state of the last token;
- PEFT's LoRA-adapted final hidden states, projected through the base model's (untied, full column rank) lm_head,
  must match tailor's logits for the same LoRA (tl_dump), and tailor's own score, hidden recovered from those
  logits by least squares and dotted with the head, must match PEFT's score.

Env (from ctest): TAILOR_BIN, TAILOR_SRC, TL_TEST_BIN (build dir with tl_dump). Exit 77 when transformers or peft
are missing (Debian's python3 without scripts/pyenv.sh's venv).
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import rel_err, sh  # noqa: E402,F401  (test_smollm2_vs_hf uses them as pe.rel_err, pe.sh)

try:
    import numpy as np
    import torch
    import transformers
    import peft
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
except ImportError as e:  # the check needs transformers + peft; without them it is skipped, never passed
    common.skip(e)

import llama_ref as ref

TOL = 1e-4
MIN_EFFECT = 1e-2  # the adapters must change the logits by at least this (relative), 100x the tolerance
TARGETS = ref.TARGETS
RANK, ALPHA = 4, 8
VOCAB = 64
MODEL_ARGS = ["--vocab", str(VOCAB), "--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
              "--ffn", "64"]

# (name, make-model options, rslora)
SFT_CASES = [
    ("untied", ["--seed", "11"], False),
    ("tied", ["--tie", "--seed", "12"], False),
    ("attn_bias", ["--bias", "--seed", "13"], False),
    ("rslora_bias", ["--bias", "--seed", "14"], True),
]

failures = []
rows = []
refused = {}  # message -> adapter dirs: a field of adapter_config.json that PEFT does not accept


def check(case, qty, got, want, tol=TOL):
    e, why = rel_err(got, want)
    rows.append((case, qty, e))
    if not e <= tol:
        failures.append(f"{case}: {qty}: relative error {e:.3g} > {tol:g} {why}".rstrip())
    return e


def write_config(path, model, train, out, rslora, extra_top="", steps=6):
    with open(path, "w") as f:
        f.write(f"run: {{name: t, output_dir: {out}, seed: 3}}\n")
        f.write(f"model: {{path: {model}}}\n")
        f.write(f"adapter: {{rank: {RANK}, alpha: {ALPHA}, rslora: {str(rslora).lower()}, "
                f"targets: [{', '.join(TARGETS)}]}}\n")
        f.write(f"data: {{train: {train}, max_seq_len: 64}}\n")
        f.write(extra_top)
        f.write(f"train: {{backend: cpu, threads: 2, steps: {steps}, lr: 0.02, examples_per_adapter: 4, "
                f"micro_batch_tokens: 512, schedule: constant, log_every: 100}}\n")


def exported(run_dir):
    """[(true name, adapter dir)] from adapters/index.json."""
    idx = json.load(open(os.path.join(run_dir, "adapters", "index.json")))["adapters"]
    return [(a["name"], os.path.join(run_dir, "adapters", a["dir"])) for a in idx]


def peft_key(layer, target):
    blk = "self_attn" if target in ref.ATTN_TARGETS else "mlp"
    return f"base_model.model.model.layers.{layer}.{blk}.{target}"


def tailor_logits(tool, work, tag, model_dir, n_layers, adapters, seqs, slots, rslora):
    """tl_dump on model_dir: adapters = [exported tensors dict] (slot s = adapters[s]); seqs grouped by slot.
    Returns the logits of each sequence, [len, V] each."""
    tokens, cu = [], [0]
    for s in seqs:
        tokens += s
        cu.append(len(tokens))
    t = {"tokens": np.array(tokens, np.int32), "cu_seqlens": np.array(cu, np.int32),
         "seq_slot": np.array(slots, np.int32), "prompt_len": np.zeros(len(seqs), np.int32)}
    for s, ad in enumerate(adapters):
        for l in range(n_layers):
            for tg in TARGETS:
                t[f"lora.{s}.{l}.{tg}.A"] = ad[peft_key(l, tg) + ".lora_A.weight"]
                t[f"lora.{s}.{l}.{tg}.B"] = ad[peft_key(l, tg) + ".lora_B.weight"]
    meta = {"rank": RANK, "alpha": ALPHA, "rslora": int(rslora), "targets": ",".join(TARGETS),
            "n_slots": len(adapters)}
    inp, out = os.path.join(work, tag + ".in.safetensors"), os.path.join(work, tag + ".out.safetensors")
    ref.write_safetensors(inp, t, meta)
    sh([tool, model_dir, inp, out], f"tl_dump on {tag}")
    logits = ref.read_safetensors(out)[0]["logits"]
    return [logits[cu[i]:cu[i + 1]] for i in range(len(seqs))]


def load_peft(base, adapter_dir, name, work):
    """PeftModel.from_pretrained (or load_adapter into an existing PeftModel) with Python warnings recorded: any
    warning is a failure (missing or unexpected keys, ...). A field of adapter_config.json that PEFT refuses is a
    failure naming the field; it is then removed from a copy of the directory so that the numeric checks still
    run and report. Returns (model, the directory actually loaded)."""
    d = adapter_dir
    for _ in range(32):
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                if isinstance(base, PeftModel):
                    base.load_adapter(d, adapter_name=name, is_trainable=False)
                    model = base
                else:
                    model = PeftModel.from_pretrained(base, d, adapter_name=name, is_trainable=False)
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '([^']+)'", str(e))
            path = os.path.join(d, "adapter_config.json")
            if not m or m.group(1) not in json.load(open(path)):
                raise
            refused.setdefault(f"PEFT {peft.__version__} refuses adapter_config.json field '{m.group(1)}' ({e})",
                               []).append(adapter_dir)
            if d == adapter_dir:
                run_dir = os.path.dirname(os.path.dirname(adapter_dir))
                d = os.path.join(work, f"peft_copy.{os.path.basename(run_dir)}.{os.path.basename(adapter_dir)}")
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(adapter_dir, d)
                path = os.path.join(d, "adapter_config.json")
            c = json.load(open(path))
            del c[m.group(1)]
            json.dump(c, open(path, "w"))
            continue
        for x in w:
            failures.append(f"{adapter_dir}: PEFT warned while loading: {x.category.__name__}: {x.message}")
        return model, d
    raise RuntimeError(f"{adapter_dir}: PEFT keeps refusing fields of adapter_config.json")


def check_loaded_state(case, model, name, file_tensors, rslora):
    """PEFT's adapter state must be the file, bit for bit; the scaling must be that of the training config."""
    sd = get_peft_model_state_dict(model, adapter_name=name)
    if set(sd) != set(file_tensors):
        failures.append(f"{case}/{name}: PEFT's adapter keys differ from the file: only in PEFT "
                        f"{sorted(set(sd) - set(file_tensors))[:4]}, only in the file "
                        f"{sorted(set(file_tensors) - set(sd))[:4]}")
        return
    bad = [k for k in sd if not np.array_equal(sd[k].detach().numpy(), file_tensors[k])]
    if bad:
        failures.append(f"{case}/{name}: PEFT holds different values than the file for {bad[:4]}")
    want = ALPHA / (RANK ** 0.5 if rslora else RANK)
    n = 0
    for mod in model.modules():
        if isinstance(mod, peft.tuners.lora.LoraLayer) and name in mod.scaling:
            n += 1
            if abs(mod.scaling[name] - want) > 1e-12:
                failures.append(f"{case}/{name}: PEFT scaling {mod.scaling[name]} != {want}")
                break
    n_want = len([k for k in file_tensors if k.endswith("lora_A.weight")])
    if n != n_want:
        failures.append(f"{case}/{name}: PEFT made {n} LoRA layers, the file has {n_want}")


def random_seqs(gen, lengths):
    # no token 0: the reward model's pad_token_id is 0 and HF finds the last token by the first pad
    return [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def sft_case(tool, work, name, mm_opts, rslora, data, gen):
    model_dir = os.path.join(work, name)
    sh([os.environ["TAILOR_BIN"], "make-model", model_dir] + MODEL_ARGS + mm_opts, "make-model")
    cfg_path, run_dir = os.path.join(work, name + ".yaml"), os.path.join(work, name + ".run")
    write_config(cfg_path, model_dir, data, run_dir, rslora)
    sh([os.environ["TAILOR_BIN"], "train", cfg_path], f"tailor train ({name})")
    ads = exported(run_dir)
    if len(ads) != 2:
        failures.append(f"{name}: expected 2 exported adapters, index.json lists {len(ads)}")
        return
    n_layers = json.load(open(os.path.join(model_dir, "config.json")))["num_hidden_layers"]
    files = [ref.read_safetensors(os.path.join(d, "adapter_model.safetensors"))[0] for _, d in ads]
    for (an, _), f in zip(ads, files):
        zero_b = [k for k in f if k.endswith("lora_B.weight") and not np.any(f[k])]
        if zero_b:
            failures.append(f"{name}/{an}: B still zero after training: {zero_b[:3]}")

    # sequences: two per adapter, one without adapter; grouped by slot for tl_dump
    seqs = random_seqs(gen, [9, 5, 12, 3, 7])
    slots = [0, 0, 1, 1, -1]
    t_logits = tailor_logits(tool, work, name, model_dir, n_layers, files, seqs, slots, rslora)

    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    base.eval()
    model = None
    for s, ((an, d), f) in enumerate(zip(ads, files)):
        tag = f"a{s}"
        model, _ = load_peft(model if model is not None else base, d, tag, work)
        check_loaded_state(name, model, tag, f, rslora)
        model.set_adapter(tag)
        with torch.no_grad():
            p_base, p_ad, t_ad = [], [], []
            for sq, sl, tl in zip(seqs, slots, t_logits):
                ids = torch.tensor([sq])
                if sl == s:
                    p_ad.append(model(input_ids=ids).logits[0].numpy())
                    t_ad.append(tl)
                    with model.disable_adapter():
                        p_base.append(model(input_ids=ids).logits[0].numpy())
        p_ad, t_ad, p_base = np.concatenate(p_ad), np.concatenate(t_ad), np.concatenate(p_base)
        check(name, f"logits {an} (peft vs tailor)", t_ad, p_ad)
        effect = rel_err(p_ad, p_base)[0]
        rows.append((name, f"  adapter effect {an} (peft vs base)", effect))
        if not effect >= MIN_EFFECT:
            failures.append(f"{name}/{an}: the adapter changes PEFT's logits by only {effect:.3g} (relative); "
                            f"too little to tell a loaded adapter from an ignored one")
    with torch.no_grad(), model.disable_adapter():
        p_none = model(input_ids=torch.tensor([seqs[-1]])).logits[0].numpy()
    check(name, "logits without adapter (hf vs tailor)", t_logits[-1], p_none)


def reward_case(tool, work, gen):
    name = "reward"
    model_dir = os.path.join(work, name)
    sh([os.environ["TAILOR_BIN"], "make-model", model_dir] + MODEL_ARGS + ["--seed", "15"], "make-model")
    data = os.path.join(work, "pref.h5")
    sh([sys.executable, os.path.join(os.environ["TAILOR_SRC"], "scripts", "make_pref_data.py"), "--out", data,
        "--users", "2", "--pairs-per-user", "16", "--vocab", str(VOCAB), "--seed", "4"], "make_pref_data.py")
    cfg_path, run_dir = os.path.join(work, name + ".yaml"), os.path.join(work, name + ".run")
    write_config(cfg_path, model_dir, data, run_dir, False, extra_top="task: {type: reward}\n")
    sh([os.environ["TAILOR_BIN"], "train", cfg_path], "tailor train (reward)")
    ads = exported(run_dir)
    if len(ads) != 2:
        failures.append(f"{name}: expected 2 exported adapters, index.json lists {len(ads)}")
        return
    mcfg = json.load(open(os.path.join(model_dir, "config.json")))
    n_layers, hidden = mcfg["num_hidden_layers"], mcfg["hidden_size"]
    if mcfg.get("tie_word_embeddings"):
        failures.append(f"{name}: the reward check needs an untied lm_head")
        return
    _, weights = ref.load_hf_model(model_dir)
    lm_head = weights["lm_head.weight"].double().numpy()  # [V, hidden], V > hidden: full column rank
    files = [ref.read_safetensors(os.path.join(d, "adapter_model.safetensors"))[0] for _, d in ads]
    seqs = random_seqs(gen, [10, 6, 8, 4])
    slots = [0, 0, 1, 1]
    t_logits = tailor_logits(tool, work, name, model_dir, n_layers, files, seqs, slots, False)

    for s, ((an, d), f) in enumerate(zip(ads, files)):
        acfg = json.load(open(os.path.join(d, "adapter_config.json")))
        if acfg.get("task_type") != "SEQ_CLS" or acfg.get("modules_to_save") != ["score"]:
            failures.append(f"{name}/{an}: adapter_config task_type {acfg.get('task_type')!r}, modules_to_save "
                            f"{acfg.get('modules_to_save')!r}; expected 'SEQ_CLS', ['score']")
        head = f.get("base_model.model.score.weight")
        if head is None or head.shape != (1, hidden):
            failures.append(f"{name}/{an}: base_model.model.score.weight missing or not [1, {hidden}]")
            return
        # a fresh base per adapter: PEFT 0.13's PeftModelForSequenceClassification.load_adapter is broken
        # (its add_adapter lacks low_cpu_mem_usage), so no second adapter is loaded into one model
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, pad_token_id=0,
                                                                  torch_dtype=torch.float32)
        base.eval()
        tag = f"a{s}"
        model, _ = load_peft(base, d, tag, work)
        check_loaded_state(name, model, tag, f, False)
        model.set_adapter(tag)
        score_mod = model.base_model.model.score
        w_used = score_mod.modules_to_save[tag].weight.detach().numpy()
        if not np.array_equal(w_used, head):
            failures.append(f"{name}/{an}: PEFT's score head is not the exported base_model.model.score.weight")
        p_score, p_proj, t_lg, dot, t_score = [], [], [], [], []
        with torch.no_grad():
            for sq, sl, tl in zip(seqs, slots, t_logits):
                if sl != s:
                    continue
                out = model(input_ids=torch.tensor([sq]), output_hidden_states=True)
                h = out.hidden_states[-1][0].double().numpy()  # final-norm hidden, [len, hidden]
                p_score.append(out.logits[0, 0].item())
                dot.append(float(h[-1] @ head[0].astype(np.float64)))
                p_proj.append(h @ lm_head.T)
                t_lg.append(tl)
                h_t = np.linalg.lstsq(lm_head, tl[-1].astype(np.float64), rcond=None)[0]
                t_score.append(float(h_t @ head[0].astype(np.float64)))
        check(name, f"score {an}: peft vs hidden_last . head", p_score, dot)
        check(name, f"hidden {an} (lm_head-projected, peft vs tailor)", np.concatenate(t_lg),
              np.concatenate(p_proj))
        check(name, f"score {an}: tailor (lstsq hidden . head) vs peft", t_score, p_score)
        with torch.no_grad(), model.disable_adapter():
            h0 = model(input_ids=torch.tensor([seqs[2 * s]]), output_hidden_states=True).hidden_states[-1][0]
        effect = rel_err(p_proj[0], h0.double().numpy() @ lm_head.T)[0]
        rows.append((name, f"  adapter effect {an} (peft vs base)", effect))
        if not effect >= MIN_EFFECT:
            failures.append(f"{name}/{an}: the LoRA changes the hidden states by only {effect:.3g} (relative)")


def main():
    for v in ("TAILOR_BIN", "TAILOR_SRC", "TL_TEST_BIN"):
        if not os.environ.get(v):
            print(f"FAIL: {v} is not set")
            return 1
    tool = common.built_tool("tl_dump")
    if not tool:
        return 1
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()  # "score.weight newly initialized" etc.: PEFT replaces it
    t0 = time.time()
    gen = torch.Generator().manual_seed(20240607)
    with tempfile.TemporaryDirectory(prefix="tl_peft_") as work:
        data = os.path.join(work, "sft.h5")
        sh([sys.executable, os.path.join(os.environ["TAILOR_SRC"], "scripts", "make_sft_data.py"), "--out", data,
            "--users", "2", "--examples-per-user", "16", "--vocab", str(VOCAB), "--seed", "2"], "make_sft_data.py")
        for name, opts, rslora in SFT_CASES:
            sft_case(tool, work, name, opts, rslora, data, gen)
        reward_case(tool, work, gen)
    print(f"{'case':<12} {'quantity':<58} {'rel err':>10}")
    for c, q, e in rows:
        print(f"{c:<12} {q:<58} {e:10.2e}")
    print(f"(transformers {transformers.__version__}, peft {peft.__version__}; {time.time() - t0:.1f} s; "
          f"tolerance {TOL:g})")
    for msg, dirs in refused.items():
        failures.insert(0, f"{msg}: {len(dirs)} of the exported adapters, e.g. {dirs[0]} (checks above ran on "
                           f"copies without the field)")
    return common.verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
