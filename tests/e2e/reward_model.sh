# Per-user Bradley-Terry reward models (LoRA + score head) on the conflicting-preferences data: >= 95% held-out
# pairwise accuracy per user, exported as PEFT SEQ_CLS adapters with the head under modules_to_save.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --seed 3
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/train.h5" --eval-out "$T/eval.h5" --users 4 \
  --pairs-per-user 48 --eval-pairs-per-user 16 --vocab 64 --seed 6 >/dev/null
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/run" "steps: 40" "examples_per_adapter: 8" \
  "lr: 0.005" "warmup_steps: 3" "micro_batch_tokens: 1024" "checkpoint_every: 20"
sed -i 's/^data: {\(.*\), max_seq_len: 48}/data: {\1, max_seq_len: 64}/' "$T/c.yaml"
echo "task: {type: reward, center_rewards: 0.01}" >>"$T/c.yaml"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/out" 2>&1 || { cat "$T/out"; die "reward training failed"; }
"$TAILOR_BIN" eval "$T/c.yaml" >"$T/eval.out" 2>&1 || { cat "$T/eval.out"; die "tailor eval failed"; }
"$TL_PYTHON" - "$T/run" <<'PY'
import json, struct, sys
run = sys.argv[1]
ev = json.load(open(f"{run}/eval.json"))
for a in ev["adapters"]:
    print(f'{a["name"]}: held-out accuracy {a["rewards/accuracies"]:.3f}')
    assert a["rewards/accuracies"] >= 0.95, a
idx = json.load(open(f"{run}/adapters/index.json"))["adapters"]
cfg = json.load(open(f'{run}/adapters/{idx[0]["dir"]}/adapter_config.json'))
assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"], cfg
b = open(f'{run}/adapters/{idx[0]["dir"]}/adapter_model.safetensors', "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
assert h["base_model.model.score.weight"]["shape"] == [1, 64], h["base_model.model.score.weight"]
print("ok")
PY
