# Many processes under mpirun on the CPU backend (MPI): the collectives on real values (tl_dist_check, 3 ranks);
# user_shard with 2 ranks gives the adapters, metrics and eval of a one-process run; data_parallel (3 ranks, a
# global adapter; and DPO with per-user adapters) agrees with one process within fp32 reassociation (1e-5).
source "$TAILOR_SRC/tests/lib/common.sh"
need_mpi

mpirun_tl 3 "$TL_TEST_BIN/tl_dist_check" >"$T/check.out" 2>&1 || { cat "$T/check.out"; die "tl_dist_check failed"; }
tail -1 "$T/check.out" | grep -qx ok || { cat "$T/check.out"; die "tl_dist_check did not end with ok"; }

# vs_one A NP B TOL [EXTRA_YAML [--l2]]: config $T/A.yaml trained as one process and, as run B (with EXTRA_YAML
# appended), under NP ranks; then the same adapters (within TOL) and the same metrics and eval
vs_one() {
  local a=$1 np=$2 b=$3 tol=$4 extra=${5:-} how=${6:-}
  sed "s#$T/$a\b#$T/$b#" "$T/$a.yaml" >"$T/$b.yaml"
  [ -z "$extra" ] || echo "$extra" >>"$T/$b.yaml"
  "$TAILOR_BIN" train "$T/$a.yaml" >"$T/$a.out" 2>&1 || { cat "$T/$a.out"; die "one-process run $a failed"; }
  mpirun_tl "$np" "$TAILOR_BIN" train "$T/$b.yaml" >"$T/$b.out" 2>&1 || { cat "$T/$b.out"; die "$np-rank run $b failed"; }
  same_adapters "$T/$a/adapters" "$T/$b/adapters" "$tol" $how || die "$b: adapters differ from the one-process run $a"
  same_metrics "$T/$a" "$T/$b"
}

make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 20 --eval-examples-per-user 4 --vocab 64 --seed 4
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/pref.h5" --eval-out "$T/pref_eval.h5" --users 4 \
  --pairs-per-user 12 --eval-pairs-per-user 4 --vocab 64 --seed 8 >/dev/null

# user_shard (per-user adapters, dropout on), 2 ranks
write_config "$T/one.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/one" "steps: 12" "log_every: 2" \
  "threads: 1" "examples_per_adapter: 3" "micro_batch_tokens: 128"
sed -i 's/^adapter: {/adapter: {dropout: 0.1, /' "$T/one.yaml"
vs_one one 2 two 1e-5
grep -q "2 ranks (openmpi, mpi), strategy user_shard" "$T/two.out" || { cat "$T/two.out"; die "no user_shard line"; }
# user_shard with adapters_per_step 2 of 5 over 3 ranks: the round robin runs over the whole run's adapters on
# every rank, so each adapter takes the same steps (metrics: the same adapters and tokens per step; the same
# step counts). A rank's micro-batches pack other adapters together than one process's, and a sign flip of a
# near-zero gradient entry in Adam's first steps shows as one element apart: compared by relative L2 (measured
# 1.2e-4 at most, 1e-7 for most adapters)
sed 's/^  steps: 12/  steps: 12\n  adapters_per_step: 2/' "$T/one.yaml" | sed "s#$T/one\b#$T/rr1#" >"$T/rr1.yaml"
grep -q "adapters_per_step: 2" "$T/rr1.yaml" || die "could not write rr1.yaml"
vs_one rr1 3 rr3 1e-3 "" --l2

# data_parallel, one global adapter, 3 ranks, several micro-batches per step. Summing 3 ranks' partial gradients
# reorders fp32 additions; Adam turns near-zero gradient entries into full-size updates, so after 10 steps a few
# elements differ by a few 1e-5 of their tensor's largest value
write_config "$T/g1.yaml" "$T/model" "$T/train.h5" "" "$T/g1" "steps: 10" "threads: 1" \
  "examples_per_adapter: 12" "micro_batch_tokens: 64"
sed -i 's/^adapter: {/adapter: {key: global, /' "$T/g1.yaml"
vs_one g1 3 g3 1e-4
grep -q "strategy data_parallel" "$T/g3.out" || { cat "$T/g3.out"; die "a global adapter should default to data_parallel"; }

# DPO with per-user adapters, forced data_parallel over 2 ranks; then one adapter per group (users share
# adapters: eval.json has per-user results) under user_shard
write_config "$T/d1.yaml" "$T/model" "$T/pref.h5" "$T/pref_eval.h5" "$T/d1" "steps: 6" "threads: 1" \
  "examples_per_adapter: 4" "micro_batch_tokens: 96" "lr: 0.005"
echo "task: {type: dpo, beta: 0.1}" >>"$T/d1.yaml"
vs_one d1 2 d2 1e-5 "dist: {strategy: data_parallel}"
sed "s#$T/d1\b#$T/k1#; s/^adapter: {/adapter: {key: group, /" "$T/d1.yaml" >"$T/k1.yaml"
vs_one k1 2 k2 1e-5
echo "ok"
