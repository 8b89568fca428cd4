# The adapter store with many ranks (train.store with dist.strategy user_shard, docs/scale.md): each rank trains
# its share of the users through its own slots and appends to segments of its own; rank 0 writes the manifests,
# the export and eval.json from every rank's records.
#  1. 2 ranks, every adapter each step: the adapters, metrics and eval.json of a one-process run (1e-5, as
#     user_shard without the store), and a store of segments written by both ranks;
#  2. 3 ranks, 2 adapters per step: bit for bit the 3-rank run without the store (the same micro-batches per rank),
#     with the prefetch on (the default) and off;
#  3. a rank killed by SIGKILL mid-run: the job ends, and rerunning it resumes to the uninterrupted run's adapters
#     bit for bit; a run killed at 2 ranks resumes on 3 (records of any rank are read by any rank);
#  4. a run that grows by one user on 3 ranks (two ranks train nothing in that round) gives the one-process result;
#  5. DPO with a per-user reference, and one adapter per group, on 2 ranks give the one-process results;
#  6. the store refuses data_parallel (every rank would write every adapter).
source "$TAILOR_SRC/tests/lib/common.sh"
need_mpi
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 12 --eval-examples-per-user 3 --vocab 64 --seed 4

run1() { "$TAILOR_BIN" train "$1" >"$2" 2>&1 || { cat "$2"; die "one-process run $1 failed"; }; }
runN() { mpirun_tl "$1" "$TAILOR_BIN" train "$2" >"$3" 2>&1 || { cat "$3"; die "$1-rank run $2 failed"; }; }
# cfg NAME EXTRA...: the base config with output_dir $T/NAME
cfg() {
  local name=$1; shift
  write_config "$T/$name.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/$name" "steps: 12" "log_every: 1" \
    "threads: 1" "examples_per_adapter: 2" "micro_batch_tokens: 128" "checkpoint_every: 4" "$@"
  sed -i 's/^adapter: .*/adapter: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj, down_proj]}/' "$T/$name.yaml"
}
segs_by_ranks() { # RUN: the store's segment numbers, one per line
  ls "$1/store" | sed -n 's/^seg-0*\([0-9][0-9]*\)\.bin$/\1/p' | sort -un
}

# ---- 1. 2 ranks vs one process, every adapter in every step ----
cfg one "store: on"
cfg two "store: on"
run1 "$T/one.yaml" "$T/one.out"
runN 2 "$T/two.yaml" "$T/two.out"
grep -q "2 ranks (openmpi, mpi), strategy user_shard" "$T/two.out" || { cat "$T/two.out"; die "no user_shard line"; }
grep -q "adapter store: 5 adapter(s)" "$T/two.out" || { cat "$T/two.out"; die "the 2-rank run has no store"; }
same_adapters "$T/one/adapters" "$T/two/adapters" 1e-5 || die "2 ranks with the store differ from one process"
same_metrics "$T/one" "$T/two" || die "2 ranks with the store: metrics or eval.json differ from one process"
# with 5 users over 2 ranks both ranks wrote records; within a checkpoint interval their segments differ by 1
odd=$(segs_by_ranks "$T/two" | awk '$1 % 2 == 1' | wc -l)
[ "$odd" -ge 1 ] || { ls "$T/two/store"; die "rank 1 wrote no segment of its own"; }
# tailor export (one process) reads both ranks' records
"$TAILOR_BIN" export "$T/two" --out "$T/two.exp" >"$T/two.exp.out" 2>&1 || { cat "$T/two.exp.out"; die "export failed"; }
same_adapters "$T/two/adapters" "$T/two.exp" 0 || die "tailor export of a 2-rank store run differs from its adapters/"

# ---- 2. 3 ranks, 2 adapters per step: the store changes nothing ----
cfg rr_off "adapters_per_step: 2" "store: off"
cfg rr_on "adapters_per_step: 2" "store: on"
runN 3 "$T/rr_off.yaml" "$T/rr_off.out"
runN 3 "$T/rr_on.yaml" "$T/rr_on.out"
same_adapters "$T/rr_off/adapters" "$T/rr_on/adapters" 0 || die "3 ranks: the store changed the adapters"
cmp "$T/rr_off/eval.json" "$T/rr_on/eval.json" || die "3 ranks: the store changed eval.json"
same_metrics "$T/rr_off" "$T/rr_on" || die "3 ranks: the store changed the metrics"
# the prefetch thread on each rank changes nothing either
cfg rr_nopf "adapters_per_step: 2" "store: on" "store_prefetch: false"
runN 3 "$T/rr_nopf.yaml" "$T/rr_nopf.out"
same_adapters "$T/rr_on/adapters" "$T/rr_nopf/adapters" 0 || die "3 ranks: the prefetch changed the adapters"
cmp "$T/rr_on/eval.json" "$T/rr_nopf/eval.json" || die "3 ranks: the prefetch changed eval.json"

# ---- 3. kill -9 of one rank, resume; a different number of ranks on resume ----
cfg kill "adapters_per_step: 2" "store: on"
set +e
TAILOR_FAULT_KILL_AFTER_STEP=6 TAILOR_FAULT_KILL_RANK=1 timeout 120 "${MPIRUN[@]}" -np 3 "$TAILOR_BIN" train \
  "$T/kill.yaml" >"$T/kill.1.out" 2>&1
rc=$?
set -e
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { cat "$T/kill.1.out"; die "a killed rank must end the job (rc $rc)"; }
[ ! -e "$T/kill/adapters" ] || die "a killed run must not have exported adapters"
runN 3 "$T/kill.yaml" "$T/kill.2.out"
grep -q "resuming from .*step-00000004" "$T/kill.2.out" || { cat "$T/kill.2.out"; die "did not resume from step 4"; }
same_adapters "$T/rr_on/adapters" "$T/kill/adapters" 0 || die "the resumed 3-rank store run differs"
# killed at 2 ranks after step 9 (checkpoint at 8), resumed on 3: the schedule is the run's, whatever the ranks
cfg w23 "store: on"
set +e
TAILOR_FAULT_KILL_AFTER_STEP=9 TAILOR_FAULT_KILL_RANK=0 timeout 120 "${MPIRUN[@]}" -np 2 "$TAILOR_BIN" train \
  "$T/w23.yaml" >"$T/w23.1.out" 2>&1
set -e
[ ! -e "$T/w23/adapters" ] || die "a killed run must not have exported adapters"
runN 3 "$T/w23.yaml" "$T/w23.2.out"
grep -q "resuming from .*step-00000008" "$T/w23.2.out" || { cat "$T/w23.2.out"; die "3 ranks did not resume the 2-rank run"; }
same_adapters "$T/one/adapters" "$T/w23/adapters" 1e-5 || die "2 ranks then 3 differ from one process"

# ---- 4. a run that grows by one user, on 3 ranks ----
"$TL_PYTHON" - "$T/train.h5" "$T/grown.h5" <<'PY'
import sys, h5py, numpy as np
src, grown = sys.argv[1:]
f = h5py.File(src, "r")
tok, off, pl, usr = (f["sft/tokens"][:], f["sft/offsets"][:], f["sft/prompt_len"][:], f["sft/user"][:])
names = [n.decode() if isinstance(n, bytes) else n for n in f["users/name"][:]]
ex = [(tok[off[i]:off[i + 1]], pl[i], usr[i]) for i in range(len(pl))]
ex += [(e[0], e[1], 5) for e in ex if e[2] == 2]  # newbie: user0002's examples
with h5py.File(grown, "w") as g:
    for k, v in f.attrs.items(): g.attrs[k] = v
    g["sft/tokens"] = np.concatenate([e[0] for e in ex]).astype(np.int32)
    g["sft/offsets"] = np.concatenate([[0], np.cumsum([len(e[0]) for e in ex])]).astype(np.int64)
    g["sft/prompt_len"] = np.array([e[1] for e in ex], np.int32)
    g["sft/user"] = np.array([e[2] for e in ex], np.int32)
    g.create_dataset("users/name", data=names + ["newbie"], dtype=h5py.string_dtype("utf-8"))
PY
for r in g1 g3; do
  cfg $r "store: on" "continue: true" "adapters_per_step: 2"
done
run1 "$T/g1.yaml" "$T/g1.1.out"
runN 3 "$T/g3.yaml" "$T/g3.1.out"
sed -i "s#$T/train.h5#$T/grown.h5#" "$T/g1.yaml" "$T/g3.yaml"
run1 "$T/g1.yaml" "$T/g1.2.out"
runN 3 "$T/g3.yaml" "$T/g3.2.out"
grep -q "a new round of 12 step(s) for 1 adapter(s) (1 new, 0 with new data); 5 others untouched" "$T/g3.2.out" ||
  { cat "$T/g3.2.out"; die "3 ranks: the grown round is not the one new user"; }
same_adapters "$T/g1/adapters" "$T/g3/adapters" 1e-3 --l2 || die "the grown 3-rank run differs from one process"

# ---- 5. DPO with a per-user reference (adapter.init_from), 2 ranks ----
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/pref.h5" --eval-out "$T/pref_eval.h5" --users 4 \
  --pairs-per-user 12 --eval-pairs-per-user 4 --vocab 64 --seed 8 >/dev/null
for r in d1 d2; do
  write_config "$T/$r.yaml" "$T/model" "$T/pref.h5" "$T/pref_eval.h5" "$T/$r" "steps: 6" "threads: 1" \
    "examples_per_adapter: 4" "micro_batch_tokens: 96" "lr: 0.005" "store: on"
  sed -i "s#^adapter: .*#adapter: {init_from: $T/one/adapters, rank: 4, alpha: 8, targets: [q_proj, v_proj, down_proj]}#" \
    "$T/$r.yaml"
  echo "task: {type: dpo, beta: 0.1}" >>"$T/$r.yaml"
done
run1 "$T/d1.yaml" "$T/d1.out"
runN 2 "$T/d2.yaml" "$T/d2.out"
same_adapters "$T/d1/adapters" "$T/d2/adapters" 1e-5 || die "DPO with the store on 2 ranks differs from one process"
same_metrics "$T/d1" "$T/d2" || die "DPO with the store on 2 ranks: metrics or eval differ"
# one adapter per group: eval.json's per-user rows come from the rank that evaluated each group
for r in k1 k2; do
  sed "s#$T/d1\b#$T/$r#; s#init_from: [^,]*, ##; s/^adapter: {/adapter: {key: group, /" "$T/d1.yaml" >"$T/$r.yaml"
done
run1 "$T/k1.yaml" "$T/k1.out"
runN 2 "$T/k2.yaml" "$T/k2.out"
grep -q '"users"' "$T/k2/eval.json" || die "group DPO on 2 ranks with the store: no per-user rows"
same_metrics "$T/k1" "$T/k2" || die "group DPO with the store on 2 ranks: metrics or eval differ"

# ---- 6. data_parallel is refused ----
cfg dp "store: on"
echo "dist: {strategy: data_parallel}" >>"$T/dp.yaml"
set +e
mpirun_tl 2 "$TAILOR_BIN" train "$T/dp.yaml" >"$T/dp.out" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] || { cat "$T/dp.out"; die "store + data_parallel: expected exit 2, got $rc"; }
grep -q "train.store: the adapter store shards users over ranks" "$T/dp.out" || { cat "$T/dp.out"; die "no clear error"; }
echo "ok"
