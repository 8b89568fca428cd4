# Preemption under mpirun: SIGUSR1 to the ranks mid-run makes every rank finish its step, rank 0 write one
# checkpoint, and the job exit 75 without exporting; resuming with a different number of ranks (3) ends with the
# adapters of an uninterrupted one-process run (1e-5) and a metrics.jsonl that holds each logged step once.
source "$TAILOR_SRC/tests/lib/common.sh"
need_mpi
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 20 --eval-examples-per-user 4 --vocab 64 --seed 4
write_config "$T/a.yaml" "$T/model" "$T/train.h5" "" "$T/straight" "steps: 300" "log_every: 1" "threads: 1" \
  "examples_per_adapter: 3" "micro_batch_tokens: 128" "lr: 0.002"
sed "s#$T/straight#$T/pre#" "$T/a.yaml" >"$T/b.yaml"
"$TAILOR_BIN" train "$T/a.yaml" >"$T/a.out" 2>&1 || { cat "$T/a.out"; die "uninterrupted run failed"; }

mpirun_tl 2 "$TAILOR_BIN" train "$T/b.yaml" >"$T/b1.out" 2>&1 &
job=$!
# signal once a few steps are logged (bounded wait)
for _ in $(seq 1 200); do
  [ -f "$T/pre/metrics.jsonl" ] && [ "$(wc -l <"$T/pre/metrics.jsonl")" -ge 5 ] && break
  sleep 0.05
done
pkill -USR1 -f "tailor train $T/b.yaml" || true
set +e
timeout 60 tail --pid=$job -f /dev/null
wait $job
rc=$?
set -e
[ $rc -eq 75 ] || { cat "$T/b1.out"; die "expected exit code 75 after SIGUSR1, got $rc"; }
tr '\r' '\n' <"$T/b1.out" | grep -q "stopped by SIGUSR1 after step" || { cat "$T/b1.out"; die "no stop line"; }
n_ckpt=$(ls -d "$T"/pre/checkpoints/step-* | wc -l)
[ "$n_ckpt" -eq 1 ] || die "expected one checkpoint, found $n_ckpt"
[ -f "$T"/pre/checkpoints/step-*/COMPLETE ] || die "the checkpoint is incomplete"
[ ! -e "$T/pre/adapters" ] || die "a stopped run must not export adapters"
stopped_at=$(basename "$T"/pre/checkpoints/step-*)
[ "$stopped_at" != "step-00000300" ] || die "the signal came too late to test anything"

mpirun_tl 3 "$TAILOR_BIN" train "$T/b.yaml" >"$T/b2.out" 2>&1 || { cat "$T/b2.out"; die "resumed run failed"; }
grep -q "resuming from .*$stopped_at" "$T/b2.out" || { cat "$T/b2.out"; die "did not resume from $stopped_at"; }
grep -q "3 ranks" "$T/b2.out" || die "the resumed run did not use 3 ranks"
same_adapters "$T/straight/adapters" "$T/pre/adapters" 1e-5 || die "resumed adapters differ from the straight run"
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
T = sys.argv[1]
steps = [json.loads(l)["step"] for l in open(f"{T}/pre/metrics.jsonl") if '"loss"' in l]
assert steps == list(range(1, 301)), steps[:10]
print("metrics hold each step once")
PY
echo "ok ($stopped_at)"
