"""tailor's GGUF reader (data/gguf.c, via tests/tools/tl_gguf_dump) against the `gguf` Python package (0.19).

Files are written with gguf.GGUFWriter on fresh random data (seed printed; TL_TEST_SEED replays):
  A. a tiny Llama in F32 with metadata of every value type (scalars and arrays, strings, a uint64 above 2^53),
     q/k weights and biases permuted as llama.cpp's convert_hf_to_gguf.py does (LlamaModel.permute), untied
     output: tailor's HF tensors must equal the original HF tensors exactly, its config and every metadata value
     must match what was written, tensor infos and the data offset must match gguf.GGUFReader's;
  B. a Llama with hidden 256 and every tensor of a different type (F16, BF16, Q8_0, Q4_0, Q4_1 quantized with
     gguf.quants.quantize; Q4_K and Q6_K random blocks, as gguf has no quantizer for them), tied embeddings,
     llama3 RoPE factors in rope_freqs.weight, custom alignment 64: each tensor must equal
     gguf.quants.dequantize (to 1e-6), the HF q/k must equal the un-permuted dequantized data, and the llama3
     parameters must be recovered;
  C. bad files (truncated at many points, bad magic, version 1, unknown tensor type, tensor data beyond the end,
     unaligned offset, bad n_dims, unknown value type, non-llama architecture, missing key): exit code 2, nothing
     on stdout, exactly one line on stderr naming the file.

Env: TL_TEST_BIN (build dir holding tl_gguf_dump).
Run: TL_TEST_BIN=build .pyenv/bin/python tests/torch/test_gguf_vs_python.py
"""

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as QT, GGUFValueType as VT
except ImportError as e:  # the cross-check needs the gguf package; without it the test is skipped, never passed
    common.skip(e)

FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print(f"  MISMATCH: {what}")


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    hdr = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(data[base + b:base + e], dtype=np.float32).reshape(v["shape"])
    return out


def run_dump(tool, path, tmp):
    st, js = os.path.join(tmp, "out.safetensors"), os.path.join(tmp, "out.json")
    p = subprocess.run([tool, path, st, js], capture_output=True, text=True, timeout=60)
    return p, st, js


def dump_ok(tool, path, tmp):
    p, st, js = run_dump(tool, path, tmp)
    if p.returncode != 0:
        print(p.stderr)
        raise SystemExit(f"FAIL: tl_gguf_dump {path} exited {p.returncode}")
    with open(js) as f:
        meta = json.load(f)
    return read_safetensors(st), meta


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def hf_weights(rng, V, H, I, L, nh, nkv, hd, bias, lm_head):
    w = {"model.embed_tokens.weight": rng.standard_normal((V, H)), "model.norm.weight": rng.standard_normal(H)}
    if lm_head:
        w["lm_head.weight"] = rng.standard_normal((V, H))
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = rng.standard_normal(H)
        w[p + "post_attention_layernorm.weight"] = rng.standard_normal(H)
        w[p + "self_attn.q_proj.weight"] = rng.standard_normal((nh * hd, H))
        w[p + "self_attn.k_proj.weight"] = rng.standard_normal((nkv * hd, H))
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((nkv * hd, H))
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((H, nh * hd))
        w[p + "mlp.gate_proj.weight"] = rng.standard_normal((I, H))
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((I, H))
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((H, I))
        if bias:
            for t, n in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
                w[p + f"self_attn.{t}.bias"] = rng.standard_normal(n * hd)
            w[p + "self_attn.o_proj.bias"] = rng.standard_normal(H)
    return {k: v.astype(np.float32) for k, v in w.items()}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    sub = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{HF_TO_GGUF[sub]}.{parts[-1]}"


def to_gguf(hf, w, nh, nkv):
    """What convert_hf_to_gguf.py does to a llama tensor before writing it."""
    if hf.endswith(("q_proj.weight", "q_proj.bias")):
        return permute(w, nh, nh)
    if hf.endswith(("k_proj.weight", "k_proj.bias")):
        return permute(w, nh, nkv)
    return w


# ------------------------------------------------------------------------------------------ A: F32 model + metadata

def part_a(tool, rng, tmp):
    print("A: F32 llama, metadata of every type, permuted q/k")
    V, H, I, L, nh, nkv, hd = 40, 48, 80, 2, 4, 2, 12  # head_dim 12 != H / nh: exercises key_length
    w = hf_weights(rng, V, H, I, L, nh, nkv, hd, bias=True, lm_head=True)
    path = os.path.join(tmp, "a.gguf")
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_block_count(L)
    wr.add_context_length(4096)
    wr.add_embedding_length(H)
    wr.add_feed_forward_length(I)
    wr.add_head_count(nh)
    wr.add_head_count_kv(nkv)
    wr.add_key_length(hd)
    wr.add_value_length(hd)
    wr.add_rope_dimension_count(hd)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_freq_base(500000.0)
    wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    wr.add_rope_scaling_factor(2.5)
    tokens = [f"tok{i}_{int(rng.integers(1000))}" for i in range(V)]
    tokens[3] = "h\u00e9llo \u4e16\u754c"  # multibyte UTF-8
    wr.add_token_list(tokens)
    scores = rng.standard_normal(V).astype(np.float32).tolist()
    wr.add_token_scores(scores)
    ttypes = rng.integers(1, 7, V).tolist()
    wr.add_token_types(ttypes)
    big = 2**60 + int(rng.integers(1, 1000))
    scal = {
        "test.u8": (int(rng.integers(0, 256)), VT.UINT8), "test.i8": (int(rng.integers(-128, 128)), VT.INT8),
        "test.u16": (int(rng.integers(0, 65536)), VT.UINT16), "test.i16": (int(rng.integers(-32768, 32768)), VT.INT16),
        "test.u32": (int(rng.integers(0, 2**32)), VT.UINT32), "test.i32": (int(rng.integers(-2**31, 2**31)), VT.INT32),
        "test.u64": (big, VT.UINT64), "test.i64": (-big, VT.INT64),
        "test.f32": (float(np.float32(rng.standard_normal())), VT.FLOAT32),
        "test.f64": (float(rng.standard_normal()), VT.FLOAT64),
        "test.bool_t": (True, VT.BOOL), "test.bool_f": (False, VT.BOOL), "test.str": ("a string \u00fc", VT.STRING),
    }
    for k, (v, t) in scal.items():
        wr.add_key_value(k, v, t)
    arrs = {
        "test.arr_u8": ([int(x) for x in rng.integers(0, 256, 5)], VT.UINT8),
        "test.arr_i16": ([int(x) for x in rng.integers(-32768, 32768, 4)], VT.INT16),
        "test.arr_i64": ([int(x) for x in rng.integers(-2**62, 2**62, 3)], VT.INT64),
        "test.arr_f64": ([float(x) for x in rng.standard_normal(3)], VT.FLOAT64),
        "test.arr_bool": ([bool(x) for x in rng.integers(0, 2, 6)], VT.BOOL),
        "test.arr_str": (["x", "", "yz"], VT.STRING),
    }
    for k, (v, t) in arrs.items():
        wr.add_key_value(k, v, VT.ARRAY, sub_type=t)
    for hf, t in w.items():
        wr.add_tensor(gguf_name(hf), to_gguf(hf, t, nh, nkv))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()

    out, meta = dump_ok(tool, path, tmp)
    for hf, t in w.items():
        got = out.get(hf)
        check(got is not None and got.shape == t.shape and np.array_equal(got, t), f"A: HF tensor {hf}")
        g = gguf_name(hf)
        check(np.array_equal(out.get("gguf." + g), to_gguf(hf, t, nh, nkv)), f"A: GGUF tensor {g}")
    check(sorted(k for k in out if not k.startswith("gguf.")) == sorted(w), "A: set of HF tensors")
    c = meta["config"]
    want = dict(arch="LlamaForCausalLM", model_type="llama", vocab_size=V, hidden_size=H, intermediate_size=I,
                num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd,
                max_position_embeddings=4096, rope_type=2, tie_word_embeddings=0, attention_bias=1)
    for k, v in want.items():
        check(c[k] == v, f"A: config {k} = {c[k]}, expected {v}")
    check(np.float32(c["rms_norm_eps"]) == np.float32(1e-5), f"A: rms_norm_eps {c['rms_norm_eps']}")
    check(c["rope_theta"] == 500000.0 and c["rope_factor"] == 2.5, "A: rope theta / linear factor")
    m = meta["metadata"]
    for k, (v, t) in scal.items():
        check(m.get(k) == v, f"A: metadata {k} = {m.get(k)!r}, expected {v!r}")
    for k, (v, t) in arrs.items():
        check(m.get(k) == v, f"A: metadata {k} = {m.get(k)!r}, expected {v!r}")
    check(m.get("tokenizer.ggml.tokens") == tokens, "A: tokenizer.ggml.tokens")
    check(np.array_equal(np.array(m.get("tokenizer.ggml.scores"), dtype=np.float32), np.array(scores, np.float32)),
          "A: tokenizer.ggml.scores")
    check(m.get("tokenizer.ggml.token_type") == ttypes, "A: tokenizer.ggml.token_type")
    check(m.get("general.architecture") == "llama", "A: general.architecture")
    # tensor infos and layout against gguf's own reader
    rd = gguf.GGUFReader(path)
    check(meta["version"] == 3 and meta["alignment"] == 32, "A: version / alignment")
    rd_keys = sorted(k for k in rd.fields if not k.startswith("GGUF."))  # GGUFReader lists the header too
    check(rd_keys == sorted(m), f"A: keys {sorted(m)}, GGUFReader has {rd_keys}")
    for t in rd.tensors:
        ti = meta["tensors"].get(t.name)
        ok = ti is not None and ti["ne"] == [int(x) for x in t.shape] and ti["type"] == t.tensor_type.name
        ok = ok and meta["data_offset"] + ti["offset"] == t.data_offset
        check(ok, f"A: tensor info {t.name}: {ti} vs GGUFReader shape {list(t.shape)} at {t.data_offset}")


# ------------------------------------------------------------------------------------------ B: quantized model

def rand_f16_bytes(rng, n):
    return rng.uniform(-1, 1, n).astype(np.float16).view(np.uint8).reshape(n, 2)


def random_k_blocks(rng, qtype, n_blocks):
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    if qtype == QT.Q4_K:
        b[:, 0:2] = rand_f16_bytes(rng, n_blocks)
        b[:, 2:4] = rand_f16_bytes(rng, n_blocks)
    else:  # Q6_K: d last
        b[:, ts - 2:ts] = rand_f16_bytes(rng, n_blocks)
    return b


def part_b(tool, rng, tmp):
    print("B: quantized llama (F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K), llama3 rope_freqs, alignment 64")
    V, H, I, L, nh, nkv, hd = 24, 256, 512, 2, 4, 2, 64
    theta = 500000.0
    w = hf_weights(rng, V, H, I, L, nh, nkv, hd, bias=False, lm_head=False)
    types = {"token_embd.weight": QT.Q6_K, "attn_q.weight": QT.Q4_K, "attn_k.weight": QT.Q8_0,
             "attn_v.weight": QT.Q4_0, "attn_output.weight": QT.Q4_1, "ffn_gate.weight": QT.BF16,
             "ffn_up.weight": QT.F16, "ffn_down.weight": QT.Q6_K}
    path = os.path.join(tmp, "b.gguf")
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_custom_alignment(64)
    wr.add_block_count(L)
    wr.add_context_length(131072)
    wr.add_embedding_length(H)
    wr.add_feed_forward_length(I)
    wr.add_head_count(nh)
    wr.add_head_count_kv(nkv)
    wr.add_layer_norm_rms_eps(1e-6)
    wr.add_rope_freq_base(theta)
    wr.add_vocab_size(V)
    # llama3 factors exactly as convert_hf_to_gguf.py LlamaModel.generate_extra_tensors computes them
    factor, low, high, old_ctx = 8.0, 1.0, 4.0, 8192
    freqs = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    rope = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < old_ctx / high:
            rope.append(1)
        elif wl > old_ctx / low:
            rope.append(factor)
        else:
            s = (old_ctx / wl - low) / (high - low)
            rope.append(1 / ((1 - s) / factor + s))
    wr.add_tensor("rope_freqs.weight", np.array(rope, dtype=np.float32))
    raw = {}  # gguf name -> (bytes array, qtype)
    for hf, t in w.items():
        g = gguf_name(hf)
        qt = types.get(g.split(".", 2)[-1] if g.startswith("blk.") else g, QT.F32)
        data = to_gguf(hf, t, nh, nkv)
        if qt in (QT.Q4_K, QT.Q6_K):
            nb = data.size // 256
            q = random_k_blocks(rng, qt, nb).reshape(data.shape[0], -1)
        elif qt == QT.F32:
            q = data
        else:
            q = gguf.quants.quantize(data, qt)
        raw[g] = (q, qt)
        wr.add_tensor(g, q, raw_dtype=None if qt == QT.F32 else qt)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()

    out, meta = dump_ok(tool, path, tmp)
    seen = set()
    for g, (q, qt) in raw.items():
        ref = gguf.quants.dequantize(q, qt) if qt != QT.F32 else q
        got = out.get("gguf." + g)
        ok = got is not None and got.shape == ref.shape
        err = float(np.max(np.abs(got.astype(np.float64) - ref)) / max(1.0, float(np.max(np.abs(ref))))) if ok else 1
        check(ok and err <= 1e-6, f"B: {g} ({qt.name}) vs gguf.quants.dequantize: rel err {err:.3g}")
        seen.add(qt.name)
    check(seen >= {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"}, f"B: types covered {seen}")
    for hf in w:
        g = gguf_name(hf)
        q, qt = raw[g]
        ref = gguf.quants.dequantize(q, qt) if qt != QT.F32 else q
        if hf.endswith("q_proj.weight"):
            ref = unpermute(ref, nh)
        elif hf.endswith("k_proj.weight"):
            ref = unpermute(ref, nkv)
        got = out.get(hf)
        ok = got is not None and got.shape == w[hf].shape
        err = float(np.max(np.abs(got.astype(np.float64) - ref)) / max(1.0, float(np.max(np.abs(ref))))) if ok else 1
        check(ok and err <= 1e-6, f"B: HF {hf}: rel err {err:.3g}")
    check("lm_head.weight" not in out, "B: no lm_head when output.weight is absent (tied)")
    c = meta["config"]
    check(c["tie_word_embeddings"] == 1 and c["attention_bias"] == 0 and c["head_dim"] == 64, "B: tie/bias/head_dim")
    check(c["rope_type"] == 1 and c["rope_factor"] == 8.0 and c["rope_low_freq_factor"] == 1.0
          and c["rope_high_freq_factor"] == 4.0 and c["rope_original_max_pos"] == 8192,
          f"B: llama3 rope recovered: {c}")
    check(meta["alignment"] == 64 and meta["data_offset"] % 64 == 0, "B: alignment 64")
    rd = gguf.GGUFReader(path)
    for t in rd.tensors:
        check(meta["data_offset"] + meta["tensors"][t.name]["offset"] == t.data_offset, f"B: offset of {t.name}")


# ------------------------------------------------------------------------------------------ C: bad files

def s_(b):
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s_(key.encode()) + struct.pack("<I", vtype) + payload


def tinfo(name, ne, qtype, off):
    return s_(name.encode()) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne) + \
        struct.pack("<IQ", qtype, off)


def raw_file(kvs, tis, data, magic=b"GGUF", version=3, align=32):
    h = magic + struct.pack("<IQQ", version, len(tis), len(kvs)) + b"".join(kvs) + b"".join(tis)
    h += b"\0" * (-len(h) % align)
    return h + data


def part_c(tool, tmp):
    print("C: bad files exit 2 with one line")
    arch = kv("general.architecture", 8, s_(b"llama"))
    good = raw_file([arch], [tinfo("t.weight", [8, 2], 0, 0)], np.arange(16, dtype=np.float32).tobytes())
    cases = {
        "bad_magic": raw_file([arch], [], b"", magic=b"GGUX"),
        "version_1": raw_file([arch], [], b"", version=1),
        "unknown_type": raw_file([arch], [tinfo("t.weight", [8], 99, 0)], bytes(64)),
        "beyond_file": raw_file([arch], [tinfo("t.weight", [8, 2], 0, 32)], bytes(64)),
        "unaligned": raw_file([arch], [tinfo("t.weight", [4], 0, 4)], bytes(64)),
        "n_dims_5": raw_file([arch], [tinfo("t.weight", [1, 1, 1, 1, 1], 0, 0)], bytes(64)),
        "bad_value_type": raw_file([kv("x.y", 13, b"\0" * 8)], [], b""),
        "huge_string": raw_file([kv("x.y", 8, struct.pack("<Q", 2**62))], [], b""),
        "bad_block_row": raw_file([arch], [tinfo("t.weight", [31], 8, 0)], bytes(64)),
        "bad_alignment": raw_file([kv("general.alignment", 4, struct.pack("<I", 48))], [], b""),
        "qwen2_arch": raw_file([kv("general.architecture", 8, s_(b"qwen2"))], [], b""),
        "missing_key": raw_file([arch], [], b""),
    }
    for cut in (3, 10, 30, len(good) // 2, len(good) - 70, len(good) - 1):
        cases[f"truncated_{cut}"] = good[:cut]
    expect_word = {"bad_magic": "magic", "version_1": "version", "unknown_type": "type 99",
                   "beyond_file": "t.weight", "unaligned": "t.weight", "n_dims_5": "n_dims",
                   "bad_value_type": "x.y", "huge_string": "x.y", "bad_block_row": "t.weight",
                   "bad_alignment": "general.alignment", "qwen2_arch": "qwen2", "missing_key": "llama.block_count"}
    for name, data in cases.items():
        path = os.path.join(tmp, f"bad_{name}.gguf")
        with open(path, "wb") as f:
            f.write(data)
        p, _, _ = run_dump(tool, path, tmp)
        lines = p.stderr.strip("\n").split("\n")
        word = expect_word.get(name, "truncated")
        ok = p.returncode == 2 and p.stdout == "" and len(lines) == 1 and path in lines[0] and word in lines[0]
        check(ok, f"C: {name}: rc {p.returncode}, stderr {p.stderr!r} (expected rc 2, one line with path and '{word}')")


def main():
    tool = common.built_tool("tl_gguf_dump", executable=False)
    if not tool:
        return 1
    seed = int(os.environ.get("TL_TEST_SEED", int(time.time() * 1000) % 2**31))
    print(f"seed {seed} (TL_TEST_SEED={seed} replays)")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        part_a(tool, rng, tmp)
        part_b(tool, rng, tmp)
        part_c(tool, tmp)
    if FAILS:
        print(f"FAIL: {len(FAILS)} mismatches")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
