#!/usr/bin/env bash
# Online RL per user on the default model (SmolLM2-135M-Instruct): users who disagree about answer length
# (demo/pref_*.jsonl: blake and dana want thorough answers, ada and chen brief ones). Trains one reward model per
# user (task.type reward), then one GRPO policy per user against it (task.type grpo, docs/rl.md), and prints, per
# user, an answer sampled at the first step next to one at the last, and the held-out reward table (rl_eval.json:
# each user's sampled answers scored by their own reward model, trained adapter vs the base model).
#   scripts/rl_demo.sh [OUT_DIR]          (default runs/rl_demo; needs build/tailor and models/ from get_model.sh)
# Environment: RM_STEPS (default 30), RL_STEPS (default 15), TAILOR (default build/tailor), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/rl_demo}
TAILOR=${TAILOR:-build/tailor}
PY=${PYTHON:-python3}
M=models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$M" ] || { echo "rl_demo: $M is missing (scripts/get_model.sh)" >&2; exit 2; }
mkdir -p "$OUT"
"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for split in ("train", "eval"):
    rows = [json.loads(l) for l in open(f"demo/pref_{split}.jsonl")]
    with open(f"{out}/prompts_{split}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"user": r["user"], "group": r["group"], "prompt": r["prompt"]}) + "\n")
PY
"$TAILOR" data build demo/pref_train.jsonl "$OUT/pref.h5" --model "$M" --kind preference >/dev/null
"$TAILOR" data build "$OUT/prompts_train.jsonl" "$OUT/prompts.h5" --model "$M" --kind prompt >/dev/null
"$TAILOR" data build "$OUT/prompts_eval.jsonl" "$OUT/prompts_eval.h5" --model "$M" --kind prompt >/dev/null
cat >"$OUT/rm.yaml" <<YAML
run: {name: rm, output_dir: $OUT/rm, seed: 0}
model: {path: $M}
adapter: {key: user, rank: 8, alpha: 16, targets: [q_proj, v_proj]}
data: {train: $OUT/pref.h5, max_seq_len: 64}
task: {type: reward}
train: {steps: ${RM_STEPS:-30}, examples_per_adapter: 4, micro_batch_tokens: 1024, lr: 2.0e-3, warmup_steps: 3, log_every: 10}
YAML
cat >"$OUT/grpo.yaml" <<YAML
run: {name: grpo, output_dir: $OUT/grpo, seed: 0}
model: {path: $M}
adapter: {key: user, rank: 8, alpha: 16, targets: [q_proj, v_proj]}
data: {train: $OUT/prompts.h5, eval: $OUT/prompts_eval.h5, max_seq_len: 64}
task: {type: grpo, reward_model: $OUT/rm, num_generations: 4, max_completion_length: 20, temperature: 1.0, beta: 0.02}
train: {steps: ${RL_STEPS:-15}, examples_per_adapter: 2, micro_batch_tokens: 1024, lr: 5.0e-3, log_every: 1}
YAML
echo "== reward models"
"$TAILOR" train "$OUT/rm.yaml" train.resume=never | tail -6
echo "== GRPO policies"
"$TAILOR" train "$OUT/grpo.yaml" train.resume=never | tail -8
"$PY" - "$OUT" "$M" <<'PY'
import json, sys
out, model = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(f"{out}/grpo/metrics.jsonl") if '"users"' in l]
def decoder():
    """Token ids -> text through the GGUF's vocabulary (byte-level BPE), when the gguf package is there."""
    try:
        import gguf
    except ImportError:
        return None
    f = gguf.GGUFReader(model).fields["tokenizer.ggml.tokens"]
    vocab = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    unbyte = {chr(c): b for b, c in zip(bs, cs)}
    def dec(ids):
        raw = b"".join(bytes(unbyte.get(ch, 63) for ch in vocab[i]) if not vocab[i].startswith("<|") else b""
                       for i in ids)
        return raw.decode("utf-8", "replace").replace("\n", " ")
    return dec
dec = decoder() or (lambda ids: str(ids))
print("== a sampled answer per user: first step | last step")
for u in sorted(recs[0]["users"]):
    a, b = recs[0]["users"][u], recs[-1]["users"][u]
    print(f"{u}: reward {a['reward']:+.2f} -> {b['reward']:+.2f}, length {a['completion_length']:.1f} -> {b['completion_length']:.1f}")
    print(f"  first: {dec(a['sample'])}")
    print(f"  last:  {dec(b['sample'])}")
ro = sum(r["rollout_tokens_per_s"] for r in recs) / len(recs)
tr = sum(r["train_tokens_per_s"] for r in recs) / len(recs)
print(f"mean over the steps: rollout {ro:.1f} completion tokens/s, training {tr:.1f} rows/s, ratio {ro / tr:.2f}")
ev = json.load(open(f"{out}/grpo/rl_eval.json"))["adapters"]
print("== held-out reward (rl_eval.json): trained vs base (gain)")
for a in ev:
    print(f"{a['name']}: {a['reward']:+.3f} vs {a['reward_base']:+.3f} ({a['reward'] - a['reward_base']:+.3f})")
PY
