"""A model loaded from GGUF gives the same logits and LoRA gradients as the same weights in HF layout.

The weights of a tiny random Llama (GQA, q/k/v biases off and on) are written twice: as an HF directory
(config.json + model.safetensors) and as a GGUF file the way llama.cpp's convert_hf_to_gguf.py writes one (GGUF
names, reversed dims, q/k rows permuted for its RoPE; F32 and F16 tensors). tests/tools/tl_dump runs the same
packed multi-adapter batch on both; F32 must agree exactly, F16 to fp16 rounding of the weights (vs the HF model
holding the same fp16-rounded weights: exactly again). Needs the PyPI gguf package (scripts/pyenv.sh), else SKIP."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

try:
    import gguf
    import numpy as np
    import torch
except ImportError as e:
    common.skip(e)

import llama_ref as ref
from test_gguf_vs_python import gguf_name, to_gguf


def write_gguf(path, cfg_dict, weights, f16):
    nh, nkv = cfg_dict["num_attention_heads"], cfg_dict["num_key_value_heads"]
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_block_count(cfg_dict["num_hidden_layers"])
    wr.add_context_length(cfg_dict["max_position_embeddings"])
    wr.add_embedding_length(cfg_dict["hidden_size"])
    wr.add_feed_forward_length(cfg_dict["intermediate_size"])
    wr.add_head_count(nh)
    wr.add_head_count_kv(nkv)
    wr.add_rope_dimension_count(cfg_dict["hidden_size"] // nh)
    wr.add_layer_norm_rms_eps(cfg_dict["rms_norm_eps"])
    wr.add_rope_freq_base(cfg_dict["rope_theta"])
    for hf, t in weights.items():
        a = to_gguf(hf, t.numpy(), nh, nkv)
        if f16 and a.ndim == 2:
            a = a.astype(np.float16)
        wr.add_tensor(gguf_name(hf), a)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def main():
    tool = os.path.join(os.environ["TL_TEST_BIN"], "tl_dump")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, bias in (("plain", False), ("qkv_bias", True)):
            cfg_dict = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 61,
                        "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
                        "attention_bias": bias, "torch_dtype": "float32"}
            cfg = ref.LlamaConfig(cfg_dict)
            gen = torch.Generator().manual_seed(7)
            weights = ref.random_weights(cfg, gen, dtype=torch.float32)
            lora = ref.LoraSet(cfg, 3, 4, 8.0, ref.TARGETS, False)
            lora.init_random(gen, torch.float32)
            tokens = torch.randint(0, 61, (17,), generator=gen).numpy().astype(np.int32)
            tensors = {"tokens": tokens, "cu_seqlens": np.array([0, 6, 11, 17], np.int32),
                       "seq_slot": np.array([0, 2, -1], np.int32), "prompt_len": np.array([2, 0, 3], np.int32)}
            for (s, l, t) in lora.keys():
                tensors[f"lora.{s}.{l}.{t}.A"] = lora.A[(s, l, t)]
                tensors[f"lora.{s}.{l}.{t}.B"] = lora.B[(s, l, t)]
            meta = {"rank": 4, "alpha": 8.0, "rslora": 0, "targets": ",".join(lora.targets), "n_slots": 3}
            inp = os.path.join(tmp, f"{case}.in.safetensors")
            ref.write_safetensors(inp, tensors, meta)
            for f16 in (False, True):
                w = {k: (v.half().float() if f16 and v.dim() == 2 else v) for k, v in weights.items()}
                hf_dir = os.path.join(tmp, f"{case}-{f16}-hf")
                ref.write_hf_model(hf_dir, cfg_dict, w)
                gg = os.path.join(tmp, f"{case}-{f16}.gguf")
                write_gguf(gg, cfg_dict, weights, f16)
                outs = []
                for model in (hf_dir, gg):
                    o = os.path.join(tmp, "out.safetensors")
                    r = subprocess.run([tool, model, inp, o], capture_output=True, text=True, timeout=120)
                    if r.returncode:
                        raise SystemExit(f"FAIL: tl_dump {model}: {r.stderr.strip()}")
                    outs.append(ref.read_safetensors(o)[0])
                hf_out, gg_out = outs
                n = 0
                for k in hf_out:
                    if k in ("logits", "logp", "loss") or k.startswith("grad."):
                        n += 1
                        if not np.array_equal(hf_out[k], gg_out[k]):
                            d = float(np.max(np.abs(hf_out[k] - gg_out[k])))
                            failures.append(f"{case} {'F16' if f16 else 'F32'}: {k} differs (max abs {d:.3g})")
                print(f"{case:9s} {'F16' if f16 else 'F32'}: {n} quantities (logits, logp, loss, every LoRA gradient) "
                      f"identical between the HF directory and the GGUF file")
    if failures:
        print("\n".join(failures[:20]))
        raise SystemExit(f"FAIL: {len(failures)} quantities differ")
    print("PASS")


if __name__ == "__main__":
    main()
