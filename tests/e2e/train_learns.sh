# A short training run on a tiny model where each user has a learnable pattern of its own: every user's
# held-out loss must fall well below the base model's, and every adapter must fit its own user best.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --seed 3
make_data "$T/train.h5" "$T/eval.h5" --users 4 --examples-per-user 64 --eval-examples-per-user 16 --vocab 64 \
  --seed 11
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/run" "steps: 80" "examples_per_adapter: 8" \
  "warmup_steps: 5" "log_every: 20"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/out.txt" 2>"$T/err.txt" || { cat "$T/out.txt" "$T/err.txt"; die "train failed"; }
cat "$T/out.txt"
for f in metrics.jsonl eval.json config.yaml adapters/index.json; do
  [ -s "$T/run/$f" ] || die "missing $f"
done
"$TL_PYTHON" - "$T/run" <<'PY'
import json, math, sys
run = sys.argv[1]
ev = json.load(open(f"{run}/eval.json"))
names = [a["name"] for a in ev["adapters"]]
assert len(names) == 4, names
for a in ev["adapters"]:
    print(f'{a["name"]}: loss {a["loss"]:.4f} base {a["base_loss"]:.4f}')
    assert a["loss"] < 0.6 * a["base_loss"], f'{a["name"]} did not learn: {a["loss"]} vs base {a["base_loss"]}'
cross = ev["cross"]["loss"]
for i in range(4):
    row = cross[i]
    assert min(range(4), key=lambda j: row[j]) == i, f"adapter {names[i]} fits another user better: {row}"
    col = [cross[j][i] for j in range(4)]
    assert min(range(4), key=lambda j: col[j]) == i, f"user {names[i]} is fit better by another adapter: {col}"
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"loss"' in l]
assert steps[-1]["step"] == 80 and steps[-1]["loss"] < steps[0]["loss"], (steps[0], steps[-1])
for k in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"):
    assert k in steps[-1], k
print("ok")
PY
