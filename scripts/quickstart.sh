#!/usr/bin/env bash
# Quickstart: installs what is needed, builds, prepares the default demo model and data, trains one LoRA adapter
# per user, evaluates them against the base model, exports PEFT adapters and says where everything is.
#
# The default model is, for now, a tiny random Llama-family model written by `tailor make-model` and the data a
# synthetic multi-user dataset where each user has its own learnable token pattern (scripts/make_sft_data.py).
# Real base models and real text (SmolLM2 from a package, a tokenizer, `tailor data build`) are the next step.
# QUICKSTART_STEPS=N shortens the run (CI uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build scripts/setup.sh
TAILOR=build/tailor
PY=/usr/bin/python3

if [ ! -f models/tiny-llama/config.json ]; then
  "$TAILOR" make-model models/tiny-llama --vocab 128 --hidden 96 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --seed 7
fi
mkdir -p runs/data
if [ ! -f runs/data/sft_train.h5 ]; then
  "$PY" scripts/make_sft_data.py --out runs/data/sft_train.h5 --eval-out runs/data/sft_eval.h5 --users 6 \
    --examples-per-user 96 --eval-examples-per-user 16 --vocab 128 --seed 1
fi
"$TAILOR" inspect runs/data/sft_train.h5 | head -n 12

overrides=()
[ -n "${QUICKSTART_STEPS:-}" ] && overrides+=("train.steps=$QUICKSTART_STEPS" "train.eval_every=0" "train.checkpoint_every=0")
rm -rf runs/sft_lora
"$TAILOR" train configs/sft_lora.yaml "${overrides[@]}"

echo
echo "Done. Everything is under runs/sft_lora/:"
echo "  metrics.jsonl      training curve (one JSON object per logged step)"
echo "  eval.json          per-user loss and perplexity, with and without the adapter"
echo "  adapters/<user>/   HF PEFT adapters (adapter_config.json + adapter_model.safetensors)"
echo "  checkpoints/       resumable state (tailor train configs/sft_lora.yaml resumes automatically)"
"$PY" - <<'PY'
import json, math
ev = json.load(open("runs/sft_lora/eval.json"))
print(f"held-out loss over all users: {ev['loss']:.3f} with per-user adapters vs {ev['base_loss']:.3f} for the base "
      f"model (perplexity {ev['ppl']:.1f} vs {ev['base_ppl']:.1f})")
PY
