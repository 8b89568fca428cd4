"""`tailor export --format merged|gguf|peft` on tiny random HF models, checked with outside readers (~20 s).

For a Llama model with untied embeddings and one with tied embeddings, attention biases and rsLoRA, two users'
adapters are trained by `tailor train` (so every B is non-zero), then:

- merged (--dtype f32): the base's tokenizer and generation files are copied byte for byte (a stranger file is
  not), index.json's "files" lists every file; transformers' AutoModelForCausalLM loads each user's merged
  directory, and its logits equal
  tailor's own forward with that user's adapter (tests/tools/tl_dump fed the exported PEFT matrices) to 1e-5
  relative; --dtype bf16 and f16 load too, every tensor is the f32 merged tensor rounded to that type (to
  nearest even), and config.json says torch_dtype;
- gguf: each user's GGUF LoRA, read with PyPI's gguf package (llama.cpp's gguf-py), has general.type "adapter",
  adapter.type "lora", adapter.lora.alpha such that alpha / r is the trained scale (alpha * sqrt(r) with rsLoRA,
  since llama.cpp has no rsLoRA), llama.cpp's tensor names blk.L.<name>.weight.lora_{a,b} with ne [in, r] and
  [r, out], A equal to PEFT's lora_A, and B equal to PEFT's lora_B after undoing llama.cpp's row permutation of
  q and k (n_head heads for q, n_kv_head for k); nothing else;
- llama.cpp (PyPI's llama-cpp-python): the HF base written as a llama GGUF the way convert_hf_to_gguf.py lays it
  out (q/k rows permuted, by PyPI's gguf package) plus each user's GGUF LoRA gives tailor's logits to 1e-4
  relative, and so does the base alone (models from HF directories, not only GGUF ones);
- manifests: vllm-lora-modules.json and lorax-adapters.json list every adapter under its true name, pointing to
  the export's folders, each of which PEFT loads; llama-server-lora.json lists every GGUF in index order, and
  llama-server-args.txt holds the matching "--lora PATH" lines.

Env (from ctest): TAILOR_BIN, TAILOR_SRC, TL_TEST_BIN. Exit 77 when transformers, peft, gguf or llama_cpp are missing."""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

try:
    import numpy as np
    import torch
    import gguf
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM
except ImportError as e:
    common.skip(e)
import test_peft_export as pe  # noqa: E402  (training config, tl_dump logits, PEFT loading)

TOL = 1e-5
GGUF_NAME = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
CASES = [("untied", ["--seed", "11"], False), ("tied_bias_rslora", ["--tie", "--bias", "--seed", "13"], True)]

failures = []


def check(case, qty, got, want, tol=TOL):
    e, why = common.rel_err(got, want)
    print(f"{case:18s} {qty:58s} {e:.3g}")
    if not e <= tol:
        failures.append(f"{case}: {qty}: relative error {e:.3g} > {tol:g} {why}".rstrip())


def unpermute(b, n_head):
    """llama.cpp's q/k row order (per head: rows 2j + i) back to HF's (rows i * half + j)."""
    out, r = b.shape
    return b.reshape(n_head, out // n_head // 2, 2, r).swapaxes(1, 2).reshape(out, r)


def hf_to_gguf(model_dir, out):
    """A llama GGUF of a tiny HF model as llama.cpp's convert_hf_to_gguf.py lays it out (q/k weight and bias rows
    permuted per head), written with PyPI's gguf package (llama.cpp's gguf-py), with a placeholder vocabulary
    t0..t{V-1} and one dummy merge (the test feeds token ids)."""
    c = json.load(open(os.path.join(model_dir, "config.json")))
    t = pe.ref.read_safetensors(os.path.join(model_dir, "model.safetensors"))[0]
    nh, nkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    hd = c.get("head_dim", d // nh)
    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(c["max_position_embeddings"]); w.add_embedding_length(d)
    w.add_block_count(c["num_hidden_layers"]); w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(nh); w.add_head_count_kv(nkv); w.add_key_length(hd); w.add_value_length(hd)
    w.add_rope_dimension_count(hd); w.add_layer_norm_rms_eps(c["rms_norm_eps"]); w.add_rope_freq_base(c["rope_theta"])
    w.add_file_type(0)
    V = c["vocab_size"]
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(V)]); w.add_token_types([1] * V); w.add_token_merges(["t 0"])
    w.add_bos_token_id(0); w.add_eos_token_id(1)

    def perm(x, n):
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, v in t.items():
        v = np.ascontiguousarray(v, dtype=np.float32)
        if k == "model.embed_tokens.weight": g = "token_embd.weight"
        elif k == "model.norm.weight": g = "output_norm.weight"
        elif k == "lm_head.weight": g = "output.weight"
        else:
            parts = k.split(".")
            L, mod, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
            g = f"blk.{L}.{names[mod]}.{kind}"
            if mod == "self_attn.q_proj": v = perm(v, nh)
            if mod == "self_attn.k_proj": v = perm(v, nkv)
        w.add_tensor(g, np.ascontiguousarray(v))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def to_half_bits(x, dtype):
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(torch.bfloat16 if dtype == "bf16" else torch.float16).float().numpy()


def run_case(tailor, tool, work, name, mm_opts, rslora, data, gen):
    model_dir = os.path.join(work, name)
    pe.sh([tailor, "make-model", model_dir] + pe.MODEL_ARGS + mm_opts, "make-model")
    cfg_path, run = os.path.join(work, name + ".yaml"), os.path.join(work, name + ".run")
    pe.write_config(cfg_path, model_dir, data, run, rslora)
    pe.sh([tailor, "train", cfg_path], f"tailor train ({name})")
    # side files of an HF model directory: copied byte for byte when present; anything else is not
    side = {"tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
            "tokenizer_config.json": '{"model_max_length": 64}\n', "generation_config.json": '{"do_sample": false}\n'}
    for fn, text in side.items():
        open(os.path.join(model_dir, fn), "w").write(text)
    open(os.path.join(model_dir, "notes.txt"), "w").write("not a model file\n")
    hf_cfg = json.load(open(os.path.join(model_dir, "config.json")))
    n_layers, n_head, n_kv = hf_cfg["num_hidden_layers"], hf_cfg["num_attention_heads"], hf_cfg["num_key_value_heads"]
    ads = pe.exported(run)
    files = [pe.ref.read_safetensors(os.path.join(d, "adapter_model.safetensors"))[0] for _, d in ads]
    seqs = pe.random_seqs(gen, [9, 5, 12, 3])
    slots = [0, 0, 1, 1]
    t_logits = pe.tailor_logits(tool, work, name, model_dir, n_layers, files, seqs, slots, rslora)

    # merged, f32: transformers vs tailor's forward with the adapter
    for s, (an, _) in enumerate(ads):
        out = os.path.join(work, f"{name}.merged.{s}")
        pe.sh([tailor, "export", run, "--format", "merged", "--user", an, "--out", out], "export merged")
        idx = json.load(open(os.path.join(out, "index.json")))
        for fn, text in side.items():
            if not os.path.exists(os.path.join(out, fn)) or open(os.path.join(out, fn)).read() != text:
                failures.append(f"{name}: merged directory: {fn} not copied from the base")
        if os.path.exists(os.path.join(out, "notes.txt")):
            failures.append(f"{name}: merged directory: notes.txt copied")
        if sorted(idx.get("files", [])) != sorted(os.listdir(out)) and \
                sorted(idx.get("files", []) + ["index.json"]) != sorted(os.listdir(out)):
            failures.append(f"{name}: index.json files {idx.get('files')} vs {sorted(os.listdir(out))}")
        if idx.get("kind") != "merged" or [a["name"] for a in idx["adapters"]] != [an]:
            failures.append(f"{name}: merged index.json is {idx}")
        m = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
        m.eval()
        with torch.no_grad():
            got = [m(input_ids=torch.tensor([q])).logits[0].numpy() for q, sl in zip(seqs, slots) if sl == s]
        want = [t for t, sl in zip(t_logits, slots) if sl == s]
        check(name, f"merged f32 logits {an} (transformers vs tailor)", np.concatenate(got), np.concatenate(want))
        if s == 0:
            f32 = pe.ref.read_safetensors(os.path.join(out, "model.safetensors"))[0]
            for dt in ("bf16", "f16"):
                o2 = out + "." + dt
                pe.sh([tailor, "export", run, "--format", "merged", "--user", an, "--out", o2, "--dtype", dt],
                      f"export merged {dt}")
                torch_dtype = json.load(open(os.path.join(o2, "config.json"))).get("torch_dtype")
                if torch_dtype != {"bf16": "bfloat16", "f16": "float16"}[dt]:
                    failures.append(f"{name}: merged {dt}: config.json torch_dtype {torch_dtype}")
                m2 = AutoModelForCausalLM.from_pretrained(o2, torch_dtype=torch.float32)
                sd = {k: v.float().numpy() for k, v in m2.state_dict().items()}
                bad = [k for k in f32 if not np.array_equal(sd[k], to_half_bits(f32[k], dt))]
                if bad:
                    failures.append(f"{name}: merged {dt}: tensors are not the f32 merge rounded: {bad[:3]}")
                print(f"{name:18s} merged {dt}: {len(f32)} tensors equal the f32 merge rounded to {dt}")

    # gguf LoRA: layout as llama.cpp's convert_lora_to_gguf.py writes it
    gdir = os.path.join(work, name + ".gguf")
    pe.sh([tailor, "export", run, "--format", "gguf", "--out", gdir], "export gguf")
    gidx = json.load(open(os.path.join(gdir, "index.json")))
    if [a["name"] for a in gidx["adapters"]] != [a for a, _ in ads]:
        failures.append(f"{name}: gguf index.json names {gidx['adapters']}")
    for e, f in zip(gidx["adapters"], files):
        r = gguf.GGUFReader(os.path.join(gdir, e["file"]))
        kv = {k: fl.contents() for k, fl in r.fields.items() if not k.startswith("GGUF.")}
        want_alpha = pe.ALPHA * (pe.RANK ** 0.5 if rslora else 1.0)
        if kv.get("general.type") != "adapter" or kv.get("adapter.type") != "lora" or \
                kv.get("general.architecture") != "llama" or abs(kv.get("adapter.lora.alpha", 0) - want_alpha) > 1e-5:
            failures.append(f"{name}/{e['name']}: gguf keys {kv}")
        tensors = {t.name: t for t in r.tensors}
        want_names = set()
        for l in range(n_layers):
            for tg in pe.TARGETS:
                base = f"blk.{l}.{GGUF_NAME[tg]}.weight"
                want_names |= {base + ".lora_a", base + ".lora_b"}
                A, B = f[pe.peft_key(l, tg) + ".lora_A.weight"], f[pe.peft_key(l, tg) + ".lora_B.weight"]
                ta, tb = tensors.get(base + ".lora_a"), tensors.get(base + ".lora_b")
                if ta is None or tb is None:
                    continue
                if list(ta.shape) != [A.shape[1], A.shape[0]] or list(tb.shape) != [B.shape[1], B.shape[0]]:
                    failures.append(f"{name}: {base}: ne {list(ta.shape)}, {list(tb.shape)} for A {A.shape}, B {B.shape}")
                    continue
                ga, gb = np.array(ta.data).reshape(A.shape), np.array(tb.data).reshape(B.shape)
                heads = {"q_proj": n_head, "k_proj": n_kv}.get(tg)
                if heads:
                    gb = unpermute(gb, heads)
                if not (np.array_equal(ga, A) and np.array_equal(gb, B)):
                    failures.append(f"{name}/{e['name']}: {base}: A or B differs from PEFT's (permutation?)")
        if set(tensors) != want_names:
            failures.append(f"{name}: gguf tensors differ: extra {sorted(set(tensors) - want_names)[:3]}, missing "
                            f"{sorted(want_names - set(tensors))[:3]}")
    print(f"{name:18s} gguf: {len(gidx['adapters'])} adapters, names, shapes, alpha and q/k permutation checked")
    # llama.cpp itself: the HF base converted to GGUF plus each user's GGUF LoRA (and the base alone) vs tailor
    base_gguf = os.path.join(work, name + ".base.gguf")
    hf_to_gguf(model_dir, base_gguf)
    base_logits = pe.tailor_logits(tool, work, name + ".base", model_dir, n_layers, files, seqs, [-1] * len(seqs),
                                   rslora)
    for s, lora in [(i, os.path.join(gdir, e["file"])) for i, e in enumerate(gidx["adapters"])] + [(-1, None)]:
        llm = Llama(model_path=base_gguf, lora_path=lora, logits_all=True, n_ctx=64, n_threads=2, verbose=False,
                    seed=0, type_k=0, type_v=0)
        got, want = [], []
        pairs = [(q, t) for q, t, sl in zip(seqs, t_logits, slots) if sl == s] if s >= 0 else \
            [(seqs[0], base_logits[0])]
        for q, t in pairs:
            llm.reset()
            llm.eval(q)
            got.append(np.array(llm.scores[:len(q)], dtype=np.float32))
            want.append(t)
        del llm
        who = f"+ GGUF LoRA {ads[s][0]}" if s >= 0 else "alone"
        check(name, f"llama.cpp (HF base as GGUF) {who} vs tailor", np.concatenate(got), np.concatenate(want),
              tol=1e-4)
        if s >= 0:  # the adapter must matter far beyond the tolerance, or an ignored LoRA would pass
            effect = common.rel_err(np.concatenate(want), np.concatenate(
                [b for b, sl in zip(base_logits, slots) if sl == s]))[0]
            if not effect > 1e-2:
                failures.append(f"{name}: adapter {ads[s][0]} moves tailor's logits by only {effect:.3g}")
    lj = json.load(open(os.path.join(gdir, "llama-server-lora.json")))
    args = open(os.path.join(gdir, "llama-server-args.txt")).read().splitlines()
    want_paths = [os.path.join(os.path.abspath(gdir), e["file"]) for e in gidx["adapters"]]
    if [x["path"] for x in lj] != want_paths or [x["id"] for x in lj] != list(range(len(want_paths))) or \
            args != [f"--lora {p}" for p in want_paths] or [x["name"] for x in lj] != [a for a, _ in ads]:
        failures.append(f"{name}: llama.cpp server manifest {lj} / {args}")

    # manifests of the PEFT export: every entry is an adapter PEFT loads
    adir = os.path.join(run, "adapters")
    vl = json.load(open(os.path.join(adir, "vllm-lora-modules.json")))
    lx = json.load(open(os.path.join(adir, "lorax-adapters.json")))
    if [x["name"] for x in vl] != [a for a, _ in ads] or [x["path"] for x in vl] != [os.path.abspath(d) for _, d in ads]:
        failures.append(f"{name}: vllm manifest {vl}")
    if [(x["name"], x["adapter_id"], x["adapter_source"]) for x in lx] != [(x["name"], x["path"], "local") for x in vl]:
        failures.append(f"{name}: lorax manifest {lx}")
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model = None
    for i, x in enumerate(vl):
        if x["base_model_name"] != model_dir:
            failures.append(f"{name}: vllm base_model_name {x['base_model_name']}")
        model, _ = pe.load_peft(model if model is not None else base, x["path"], f"m{i}", work)
        model.set_adapter(f"m{i}")
        with torch.no_grad():
            got = np.concatenate([model(input_ids=torch.tensor([q])).logits[0].numpy()
                                  for q, sl in zip(seqs, slots) if sl == i])
        check(name, f"vllm manifest entry {x['name']}: PEFT logits vs tailor", got,
              np.concatenate([t for t, sl in zip(t_logits, slots) if sl == i]), tol=pe.TOL)


def main():
    tailor = os.environ["TAILOR_BIN"]
    tool = common.built_tool("tl_dump")
    if tool is None:
        raise SystemExit(1)
    gen = torch.Generator().manual_seed(5)
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "sft.h5")
        pe.sh([sys.executable, os.path.join(os.environ["TAILOR_SRC"], "scripts", "make_sft_data.py"), "--out", data,
               "--users", "2", "--examples-per-user", "16", "--vocab", str(pe.VOCAB), "--seed", "2"], "make_sft_data")
        for name, mm, rs in CASES:
            run_case(tailor, tool, work, name, mm, rs, data, gen)
    failures.extend(pe.failures)
    if failures:
        print("\n".join(failures))
        raise SystemExit("FAIL")
    print("PASS")


if __name__ == "__main__":
    main()
