# Resume: a run killed with SIGKILL after a checkpoint, then resumed with train.resume=auto, ends with the same
# adapters as an uninterrupted run (bit for bit), and its metrics.jsonl holds each step once.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 3 --examples-per-user 20 --eval-examples-per-user 4 --vocab 64 --seed 4
write_config "$T/a.yaml" "$T/model" "$T/train.h5" "" "$T/straight" "steps: 30" "examples_per_adapter: 3" \
  "checkpoint_every: 10" "log_every: 1" "adapters_per_step: 2"
sed -i 's/^adapter: .*/adapter: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj, down_proj]}/' "$T/a.yaml"
sed "s#$T/straight#$T/killed#" "$T/a.yaml" >"$T/b.yaml"
"$TAILOR_BIN" train "$T/a.yaml" >"$T/a.out" 2>&1 || { cat "$T/a.out"; die "straight run failed"; }
# The fault hook makes the process SIGKILL itself right after finishing step 15 (after the step-10 checkpoint).
set +e
TAILOR_FAULT_KILL_AFTER_STEP=15 "$TAILOR_BIN" train "$T/b.yaml" >"$T/b1.out" 2>&1
rc=$?
set -e
[ $rc -eq 137 ] || { cat "$T/b1.out"; die "expected the run to die by SIGKILL (137), got $rc"; }
[ -f "$T/killed/checkpoints/step-00000010/COMPLETE" ] || die "no step-10 checkpoint before the kill"
[ ! -e "$T/killed/adapters" ] || die "a killed run must not have exported adapters"
"$TAILOR_BIN" train "$T/b.yaml" >"$T/b2.out" 2>&1 || { cat "$T/b2.out"; die "resumed run failed"; }
grep -q "resuming from .*step-00000010" "$T/b2.out" || { cat "$T/b2.out"; die "did not resume from step 10"; }
for d in "$T"/straight/adapters/*/; do
  name=$(basename "$d")
  cmp "$d/adapter_model.safetensors" "$T/killed/adapters/$name/adapter_model.safetensors" ||
    die "adapter $name differs between the straight and the resumed run"
done
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
T = sys.argv[1]
steps = [json.loads(l)["step"] for l in open(f"{T}/killed/metrics.jsonl") if '"loss"' in l]
assert steps == list(range(1, 31)), steps
print("ok")
PY
