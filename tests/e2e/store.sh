# The adapter store (train.store, docs/scale.md):
#  1. a run with the store gives the same adapters, bit for bit, as the same run without it (5 users, 2 per step:
#     adapters move in and out of the pool's 2 slots every step);
#  2. a kill -9 after a step, halfway through writing a record back, and between a manifest and its checkpoint's
#     completion: each resumes to the uninterrupted run's adapters, bit for bit, and metrics.jsonl holds each step
#     once;
#  3. pruning keeps the store to the segments the kept checkpoints use;
#  4. train.store_prefetch (on by default: the next step's records are read while a step computes) changes
#     nothing: off gives the same adapters and losses bit for bit, also when a run killed with one setting resumes
#     with the other.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 12 --eval-examples-per-user 3 --vocab 64 --seed 4
write_config "$T/off.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/off" "steps: 24" "examples_per_adapter: 2" \
  "checkpoint_every: 8" "log_every: 1" "adapters_per_step: 2" "store: off" "keep_checkpoints: 1"
sed -i 's/^adapter: .*/adapter: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj, down_proj]}/' "$T/off.yaml"
sed "s#$T/off#$T/on#; s/store: off/store: on/" "$T/off.yaml" >"$T/on.yaml"

run() { "$TAILOR_BIN" train "$1" >"$2" 2>&1 || { cat "$2"; die "run $1 failed"; }; }
run "$T/off.yaml" "$T/off.out"
run "$T/on.yaml" "$T/on.out"
[ -f "$T/on/store/store.json" ] || die "train.store: on wrote no store"
[ -f "$T/on/checkpoints/step-00000024/manifest.bin" ] || die "the store run's checkpoint has no manifest"
[ ! -e "$T/on/checkpoints/step-00000024/state.safetensors" ] || die "a store checkpoint must not hold the pool state"
same_adapters "$T/off/adapters" "$T/on/adapters" 0 || die "the store changed the trained adapters"
cmp <(grep -E '"loss"|"adapter"' "$T/off/metrics.jsonl" | sed 's/"tokens_per_s":[^,}]*//; s/"elapsed_s":[^,}]*//; s/"rss_mib":[^,}]*//') \
    <(grep -E '"loss"|"adapter"' "$T/on/metrics.jsonl" | sed 's/"tokens_per_s":[^,}]*//; s/"elapsed_s":[^,}]*//; s/"rss_mib":[^,}]*//') ||
  die "the store changed the logged losses"
cmp "$T/off/eval.json" "$T/on/eval.json" || die "the store changed eval.json"
# ---- train.store_prefetch: false reads every record when its step needs it; nothing else may change ----
sed "s#$T/off#$T/nopf#; s/store: off/store: on/" "$T/off.yaml" >"$T/nopf.yaml"
echo "  store_prefetch: false" >>"$T/nopf.yaml"
run "$T/nopf.yaml" "$T/nopf.out"
same_adapters "$T/on/adapters" "$T/nopf/adapters" 0 || die "train.store_prefetch changed the trained adapters"
cmp <(grep -E '"loss"|"adapter"' "$T/on/metrics.jsonl" | sed 's/"tokens_per_s":[^,}]*//; s/"elapsed_s":[^,}]*//; s/"rss_mib":[^,}]*//') \
    <(grep -E '"loss"|"adapter"' "$T/nopf/metrics.jsonl" | sed 's/"tokens_per_s":[^,}]*//; s/"elapsed_s":[^,}]*//; s/"rss_mib":[^,}]*//') ||
  die "train.store_prefetch changed the logged losses"
cmp "$T/on/eval.json" "$T/nopf/eval.json" || die "train.store_prefetch changed eval.json"
# 5 users, 2 slots: from the third step on, every step loads adapters that have records
grep -qE 'loaded [1-9][0-9]* from records \([1-9][0-9]* prefetched\)' "$T/on.out" ||
  { cat "$T/on.out"; die "the prefetch served no load"; }
grep -qE 'loaded [1-9][0-9]* from records \(0 prefetched\)' "$T/nopf.out" ||
  { cat "$T/nopf.out"; die "train.store_prefetch: false still prefetched"; }
grep -qE 's of store I/O waited on by the steps and checkpoints \([0-9.]+ s writing back, [0-9.]+ s waiting for the I/O thread\), [0-9.]+ s read and [0-9.]+ s written in the background' "$T/on.out" ||
  { cat "$T/on.out"; die "the finish line does not split the store I/O"; }

# keep_checkpoints 1: the segments of pruned checkpoints are gone; what is left is what step 24 uses
nseg=$(ls "$T/on/store" | grep -c '^seg-')
[ "$nseg" -le 2 ] || { ls -l "$T/on/store"; die "pruning left $nseg segments"; }

# ---- tailor export and tailor eval stream from the store ----
"$TAILOR_BIN" export "$T/on" --out "$T/exp" >"$T/exp.out" 2>&1 || { cat "$T/exp.out"; die "export of a store run failed"; }
grep -q "exported 5 PEFT adapter(s)" "$T/exp.out" || { cat "$T/exp.out"; die "export: expected 5 adapters"; }
same_adapters "$T/on/adapters" "$T/exp" 0 || die "tailor export of a store run differs from the run's adapters/"
"$TAILOR_BIN" export "$T/on/checkpoints/step-00000024" >"$T/exp2.out" 2>&1 || { cat "$T/exp2.out"; die "export of a store checkpoint failed"; }
cp "$T/on/eval.json" "$T/eval.train.json"
"$TAILOR_BIN" eval "$T/on.yaml" >"$T/eval.out" 2>&1 || { cat "$T/eval.out"; die "tailor eval of a store run failed"; }
cmp "$T/eval.train.json" "$T/on/eval.json" || die "tailor eval of a store run differs from the run's final eval.json"

# ---- crashes: each resumed run must end where the straight store run ended ----
crash() { # NAME ENV=VALUE [PREFETCH1 PREFETCH2]: the run dies by SIGKILL at the fault, then resumes (with
          # train.store_prefetch PREFETCH1, then PREFETCH2; default true)
  local name=$1 fault=$2 pf1=${3:-true} pf2=${4:-true}
  sed "s#$T/off#$T/$name#; s/store: off/store: on/" "$T/off.yaml" >"$T/$name.yaml"
  sed "s#$T/off#$T/$name#; s/store: off/store: on/" "$T/off.yaml" >"$T/$name.1.yaml"
  echo "  store_prefetch: $pf1" >>"$T/$name.1.yaml"
  echo "  store_prefetch: $pf2" >>"$T/$name.yaml"
  set +e
  env "$fault" "$TAILOR_BIN" train "$T/$name.1.yaml" >"$T/$name.1.out" 2>&1
  local rc=$?
  set -e
  [ $rc -eq 137 ] || { cat "$T/$name.1.out"; die "$name: expected death by SIGKILL (137), got $rc"; }
  [ ! -e "$T/$name/adapters" ] || die "$name: a killed run must not have exported adapters"
  run "$T/$name.yaml" "$T/$name.2.out"
  grep -q "resuming from" "$T/$name.2.out" || { cat "$T/$name.2.out"; die "$name: did not resume"; }
  same_adapters "$T/on/adapters" "$T/$name/adapters" 0 || die "$name: the resumed adapters differ"
  "$TL_PYTHON" - "$T/$name/metrics.jsonl" <<'PY' || die "$name: metrics.jsonl"
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1]) if '"loss"' in l]
assert steps == list(range(1, 25)), steps
PY
}
crash after_step TAILOR_FAULT_KILL_AFTER_STEP=13        # between checkpoints, with records written back
crash mid_record TAILOR_FAULT_STORE_KILL_RECORD=21      # halfway through a record after the step-8 checkpoint
crash mid_commit TAILOR_FAULT_STORE_KILL_COMMIT=2       # the step-16 manifest written, its checkpoint not complete
crash pf_off_on TAILOR_FAULT_KILL_AFTER_STEP=13 false true   # killed without the prefetch, resumed with it
crash pf_on_off TAILOR_FAULT_KILL_AFTER_STEP=11 true false   # and the other way round
[ -f "$T/mid_commit/checkpoints/step-00000024/COMPLETE" ] || die "mid_commit: no final checkpoint"
echo ok
