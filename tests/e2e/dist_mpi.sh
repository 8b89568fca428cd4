# Many processes under mpirun on the CPU backend (MPI): the collectives on real values (tl_dist_check, 3 ranks);
# user_shard with 2 ranks gives the adapters, metrics and eval of a one-process run; data_parallel (3 ranks, a
# global adapter; and DPO with per-user adapters) agrees with one process within fp32 reassociation (1e-5).
source "$TAILOR_SRC/tests/lib/common.sh"
need_mpi
# same_metrics RUN_A RUN_B: the same logged steps with the same loss, grad_norm (before clipping: a micro-batch
# counted twice or lost shows here even where Adam would hide it in the adapters), lr and token counts; and the
# same eval losses when both runs have eval.json
same_metrics() {
  "$TL_PYTHON" - "$1" "$2" <<'PY'
import json, os, sys
a, b = sys.argv[1], sys.argv[2]
def recs(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
# the sampled adapters' own losses (records with "adapter"): the same records, the same losses
def per_adapter(rs):
    return {(r["step"], r["adapter"]): r["adapter_loss"] for r in rs if "adapter" in r}
pa, pb = per_adapter(recs(a)), per_adapter(recs(b))
assert pa.keys() == pb.keys() and pa, ("per-adapter records differ", sorted(pa.keys() ^ pb.keys())[:5])
for k in pa:
    assert abs(pa[k] - pb[k]) <= 1e-5 * max(1, abs(pa[k])), (k, pa[k], pb[k])
ra, rb = [r for r in recs(a) if "adapter" not in r], [r for r in recs(b) if "adapter" not in r]
assert [r["step"] for r in ra] == [r["step"] for r in rb], "metrics steps differ"
for x, y in zip(ra, rb):
    for k in ("loss", "grad_norm", "lr"):
        assert abs(x[k] - y[k]) <= 1e-5 * max(1, abs(x[k])), (k, x, y)
    assert x["tokens"] == y["tokens"] and x["adapters"] == y["adapters"], (x, y)
if os.path.exists(f"{a}/eval.json"):
    ea, eb = json.load(open(f"{a}/eval.json")), json.load(open(f"{b}/eval.json"))
    key = "loss" if "loss" in ea["adapters"][0] else "rewards/accuracies"
    la = {r["name"]: r[key] for r in ea["adapters"]}
    lb = {r["name"]: r[key] for r in eb["adapters"]}
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-5 for k in la), (la, lb)
    ua, ub = ea.get("users"), eb.get("users")
    assert (ua is None) == (ub is None), "one run has per-user results, the other not"
    if ua is not None:
        assert [u["name"] for u in ua] == [u["name"] for u in ub], "per-user results list other users"
        for x, y in zip(ua, ub):
            assert x["pairs"] == y["pairs"] and x["pairs"] > 0, (x, y)
            assert abs(x["rewards/accuracies"] - y["rewards/accuracies"]) <= 1e-9, (x, y)
    ca, cb = ea.get("cross"), eb.get("cross")
    assert (ca is None) == (cb is None), "one run has a cross matrix, the other not"
    if ca is not None:
        def flat(x):
            if isinstance(x, dict): return [v for k in sorted(x) for v in flat(x[k])]
            if isinstance(x, list): return [v for e in x for v in flat(e)]
            return [x] if isinstance(x, (int, float)) else []
        xa, xb = flat(ca), flat(cb)
        assert len(xa) == len(xb) and len(xa) > 0, "cross matrices differ in shape"
        assert all(abs(p - q) <= 1e-5 * max(1, abs(p)) for p, q in zip(xa, xb)), "cross matrices differ"
print(f"metrics agree: {a} and {b}")
PY
}

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
