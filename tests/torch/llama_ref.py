"""Reference Llama-family decoder with PEFT-style LoRA adapters, in plain torch (no transformers, no peft).

It is the ground truth for tailor's model (tests/torch) and the PyTorch side of the CPU benchmark
(scripts/bench_cpu_torch.py). The math mirrors HF transformers' eager LlamaForCausalLM / MistralForCausalLM /
Qwen2ForCausalLM, term by term:

  embedding -> per layer: x += o_proj(attn(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
                          x += down_proj(silu(gate_proj(rms(x))) * up_proj(rms(x)))
  -> final RMSNorm -> lm_head (the embedding matrix when tie_word_embeddings)

  RMSNorm    w * (x * rsqrt(mean(x^2) + eps))
  RoPE       rotate-half: x * cos + cat(-x2, x1) * sin, angles pos * inv_freq, cos/sin = cat(f, f)
  inv_freq   HF's rope init functions (default, linear, llama3), computed in float32 exactly as HF does, because
             that float32 vector is part of the model's definition; everything after it runs in the weights' dtype
  attention  causal, grouped-query (query head h reads kv head h // (Hq / Hkv), HF's repeat_kv), scale
             1/sqrt(head_dim), softmax over keys
  biases     Qwen2: q/k/v; Llama with attention_bias: q/k/v and o (as HF); Mistral: none
  LoRA       PEFT's Linear: y = W x + b + scale * B(A(dropout(x))), scale = alpha / r, or alpha / sqrt(r) with
             rsLoRA; A is [r, in], B is [out, r]

Deliberate differences from HF: HF upcasts RMSNorm and softmax to float32 and computes cos/sin in float32; here
every step stays in the dtype of the weights, so a float64 model is a float64 reference end to end. Dropout is
not modelled (tests use 0).

Also here: a dependency-free safetensors reader/writer and HF model-directory writer/reader, so tests can create
tiny random models without the safetensors or transformers packages.
"""

import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # tailor's TL_T_* order
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# --------------------------------------------------------------------------------------------------------------
# safetensors, by hand

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BF16": np.uint16}
_NP_TO_ST = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
             np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: numpy array or torch tensor}; written in name order, header padded to 8 bytes."""
    arrays = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        a = np.ascontiguousarray(t)
        if a.dtype not in _NP_TO_ST:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {a.dtype}")
        arrays[name] = a.astype(a.dtype.newbyteorder("<"), copy=False)
    header, off = {}, 0
    for name in sorted(arrays):
        a = arrays[name]
        header[name] = {"dtype": _NP_TO_ST[a.dtype.newbyteorder("=")], "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name in sorted(arrays):
            f.write(arrays[name].tobytes())
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict). BF16 is widened to float32. Arrays are views into one
    buffer read from the file, so the file's bytes are held once."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        buf = bytearray(f.read())
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        dt = np.dtype(_ST_DTYPES[h["dtype"]]).newbyteorder("<")
        a = np.frombuffer(buf, dtype=dt, count=(e - b) // dt.itemsize, offset=b).reshape(h["shape"])
        if h["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out, meta


# --------------------------------------------------------------------------------------------------------------
# configuration and RoPE


class LlamaConfig:
    """The fields of an HF config.json that define the math (HF's defaults where a field is absent)."""

    def __init__(self, d):
        self.raw = dict(d)
        self.model_type = d.get("model_type", "llama")
        self.vocab_size = d["vocab_size"]
        self.hidden_size = d["hidden_size"]
        self.intermediate_size = d["intermediate_size"]
        self.num_hidden_layers = d["num_hidden_layers"]
        self.num_attention_heads = d["num_attention_heads"]
        self.num_key_value_heads = d.get("num_key_value_heads") or self.num_attention_heads
        self.head_dim = d.get("head_dim") or self.hidden_size // self.num_attention_heads
        self.rms_norm_eps = d.get("rms_norm_eps", 1e-6)
        self.rope_theta = d.get("rope_theta", 10000.0)
        self.rope_scaling = d.get("rope_scaling")
        rp = d.get("rope_parameters")  # transformers v5 spelling: theta and scaling in one object
        if rp:
            self.rope_theta = rp.get("rope_theta", self.rope_theta)
            self.rope_scaling = rp if rp.get("rope_type", rp.get("type", "default")) != "default" else None
        self.tie_word_embeddings = bool(d.get("tie_word_embeddings", False))
        if self.model_type == "qwen2":
            self.qkv_bias, self.o_bias = True, False
        elif self.model_type == "mistral":
            self.qkv_bias = self.o_bias = False
        else:
            self.qkv_bias = self.o_bias = bool(d.get("attention_bias", False))

    def target_dims(self, target):
        """(in, out) features of a LoRA target module."""
        d, f = self.hidden_size, self.intermediate_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}[target]


def rope_inv_freq(cfg):
    """inv_freq [head_dim / 2] in float32, as transformers' _compute_{default,linear_scaling,llama3}_parameters."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling
    if not rs:
        return inv_freq
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / rs["factor"]
    if kind == "llama3":
        factor = rs["factor"]
        low_freq_factor = rs["low_freq_factor"]
        high_freq_factor = rs["high_freq_factor"]
        old_context_len = rs["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, inv_freq_llama)
    raise ValueError(f"rope_scaling type {kind!r} is not modelled")


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


# --------------------------------------------------------------------------------------------------------------
# weights


def random_weights(cfg, gen, dtype=torch.float32, std=None):
    """Random HF-named weights. std=None scales each matrix by 1/sqrt(fan_in) and the embedding by 1, so that
    activations and logits are O(1) and every term of the model matters (tests); pass std=0.02 for HF's init
    (benchmarks). Norm weights are 1 + 0.1 N(0,1), biases 0.1 N(0,1)."""

    def mat(out, inn):
        s = std if std is not None else 1.0 / math.sqrt(inn)
        return torch.randn(out, inn, generator=gen, dtype=torch.float32).mul_(s).to(dtype)

    def vec(n, base):
        return (base + 0.1 * torch.randn(n, generator=gen, dtype=torch.float32)).to(dtype)

    d, V = cfg.hidden_size, cfg.vocab_size
    w = {"model.embed_tokens.weight": torch.randn(V, d, generator=gen).mul_(1.0 if std is None else std).to(dtype)}
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = vec(d, 1.0)
        w[p + "post_attention_layernorm.weight"] = vec(d, 1.0)
        for t in TARGETS:
            inn, out = cfg.target_dims(t)
            mod = "self_attn." if t in ATTN_TARGETS else "mlp."
            w[p + mod + t + ".weight"] = mat(out, inn)
            if (cfg.qkv_bias and t in ("q_proj", "k_proj", "v_proj")) or (cfg.o_bias and t == "o_proj"):
                w[p + mod + t + ".bias"] = vec(out, 0.0)
    w["model.norm.weight"] = vec(d, 1.0)
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = mat(V, d)
    return w


def write_hf_model(model_dir, config_dict, weights):
    """An HF model directory: config.json + model.safetensors (weights written as float32)."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config_dict, f, indent=2)
    write_safetensors(os.path.join(model_dir, "model.safetensors"),
                      {k: v.detach().to(torch.float32) for k, v in weights.items()})


def load_hf_model(model_dir, dtype=torch.float32):
    """(LlamaConfig, weights) from config.json + model.safetensors (single file)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = LlamaConfig(json.load(f))
    arrays, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    w = {}
    for k in list(arrays):
        t = torch.from_numpy(arrays.pop(k))
        w[k] = t if t.dtype == dtype else t.to(dtype)
    return cfg, w


# --------------------------------------------------------------------------------------------------------------
# LoRA


class LoraSet:
    """The LoRA matrices of n_slots adapters: A[(slot, layer, target)] [r, in], B[...] [out, r]."""

    def __init__(self, cfg, n_slots, rank, alpha, targets=TARGETS, rslora=False):
        self.cfg, self.n_slots, self.rank, self.alpha = cfg, n_slots, rank, float(alpha)
        self.targets = tuple(t for t in TARGETS if t in targets)  # canonical order
        self.rslora = bool(rslora)
        self.scale = self.alpha / math.sqrt(rank) if rslora else self.alpha / rank
        self.A, self.B = {}, {}

    def keys(self):
        for s in range(self.n_slots):
            for l in range(self.cfg.num_hidden_layers):
                for t in self.targets:
                    yield (s, l, t)

    def init_random(self, gen, dtype, b_std=None):
        """A and B both random and nonzero (tests): A ~ U(+-1/sqrt(in)), B ~ U(+-b) with b = b_std or 1/sqrt(r)."""
        for k in self.keys():
            inn, out = self.cfg.target_dims(k[2])
            ba = 1.0 / math.sqrt(inn)
            bb = b_std if b_std is not None else 1.0 / math.sqrt(self.rank)
            self.A[k] = ((torch.rand(self.rank, inn, generator=gen, dtype=torch.float64) * 2 - 1) * ba).to(dtype)
            self.B[k] = ((torch.rand(out, self.rank, generator=gen, dtype=torch.float64) * 2 - 1) * bb).to(dtype)
        return self

    def init_peft(self, gen, dtype):
        """PEFT's default start: A kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)), B = 0."""
        for k in self.keys():
            inn, out = self.cfg.target_dims(k[2])
            b = 1.0 / math.sqrt(inn)
            self.A[k] = ((torch.rand(self.rank, inn, generator=gen, dtype=torch.float32) * 2 - 1) * b).to(dtype)
            self.B[k] = torch.zeros(out, self.rank, dtype=dtype)
        return self

    def requires_grad_(self):
        for k in self.keys():
            self.A[k].requires_grad_(True)
            self.B[k].requires_grad_(True)
        return self

    def parameters(self, slot=None):
        return [t for k in self.keys() if slot is None or k[0] == slot for t in (self.A[k], self.B[k])]


# --------------------------------------------------------------------------------------------------------------
# the model


class LlamaRef:
    """Functional Llama-family model over a weights dict (HF names). forward() runs a [b, T] batch of
    equal-length sequences; `slots` gives each batch row's adapter slot (-1: the bare base model)."""

    def __init__(self, cfg, weights, dtype=torch.float64):
        self.cfg, self.dtype = cfg, dtype
        self.w = {k: v.to(dtype) for k, v in weights.items()}
        if cfg.tie_word_embeddings or "lm_head.weight" not in self.w:
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]
        self.inv_freq = rope_inv_freq(cfg)

    def _rms(self, x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + self.cfg.rms_norm_eps))

    def _proj(self, x, layer, target, lora, groups):
        mod = "self_attn." if target in ATTN_TARGETS else "mlp."
        p = f"model.layers.{layer}.{mod}{target}."
        y = F.linear(x, self.w[p + "weight"], self.w.get(p + "bias"))
        if lora is not None and target in lora.targets:
            for s, idx in groups:
                A, B = lora.A[(s, layer, target)], lora.B[(s, layer, target)]
                if idx is None:
                    y = y + F.linear(F.linear(x, A), B) * lora.scale
                else:
                    y = y.index_add(0, idx, F.linear(F.linear(x.index_select(0, idx), A), B) * lora.scale)
        return y

    def hidden(self, tokens, slots=None, lora=None, positions=None):
        """Final normed hidden states [b, T, d]."""
        cfg = self.cfg
        b, T = tokens.shape
        Hq, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        groups = []
        if lora is not None:
            slots = [-1] * b if slots is None else list(slots)
            uniq = sorted(set(s for s in slots if s >= 0))
            for s in uniq:
                rows = [i for i, x in enumerate(slots) if x == s]
                groups.append((s, None if len(rows) == b else torch.tensor(rows, dtype=torch.long)))
        if positions is None:
            positions = torch.arange(T).expand(b, T)
        freqs = positions.to(self.dtype)[..., None] * self.inv_freq.to(self.dtype)[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [b, 1, T, hd]
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)

        x = F.embedding(tokens, self.w["model.embed_tokens.weight"])
        for l in range(cfg.num_hidden_layers):
            p = f"model.layers.{l}."
            h = self._rms(x, self.w[p + "input_layernorm.weight"])
            q = self._proj(h, l, "q_proj", lora, groups).view(b, T, Hq, hd).transpose(1, 2)
            k = self._proj(h, l, "k_proj", lora, groups).view(b, T, Hkv, hd).transpose(1, 2)
            v = self._proj(h, l, "v_proj", lora, groups).view(b, T, Hkv, hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            rep = Hq // Hkv
            if rep > 1:
                k = k[:, :, None].expand(b, Hkv, rep, T, hd).reshape(b, Hq, T, hd)
                v = v[:, :, None].expand(b, Hkv, rep, T, hd).reshape(b, Hq, T, hd)
            s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
            s = s.masked_fill(causal, float("-inf"))
            a = torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(b, T, Hq * hd)
            x = x + self._proj(a, l, "o_proj", lora, groups)
            h = self._rms(x, self.w[p + "post_attention_layernorm.weight"])
            g = self._proj(h, l, "gate_proj", lora, groups)
            u = self._proj(h, l, "up_proj", lora, groups)
            x = x + self._proj(F.silu(g) * u, l, "down_proj", lora, groups)
        return self._rms(x, self.w["model.norm.weight"])

    def forward(self, tokens, slots=None, lora=None, positions=None):
        """Logits [b, T, V]."""
        return F.linear(self.hidden(tokens, slots, lora, positions), self.w["lm_head.weight"])


def sft_targets(tokens, prompt_len):
    """tailor's (and the usual SFT) target rule for one sequence: row j-1 predicts tokens[j] for
    j >= max(1, prompt_len); other rows -1."""
    T = len(tokens)
    t = [-1] * T
    for j in range(max(1, prompt_len), T):
        t[j - 1] = int(tokens[j])
    return t
