# Above 32 adapters the evaluation's cross matrix is sampled (docs/scale.md): 40 users with the store give
# eval.json a cross_sample of 32 evenly spaced adapters; its diagonal is each sampled adapter's own held-out loss,
# and the run says so.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --seed 2
make_data "$T/train.h5" "$T/eval.h5" --users 40 --examples-per-user 4 --eval-examples-per-user 2 --vocab 64 --seed 3
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/run" "steps: 10" "examples_per_adapter: 2" \
  "adapters_per_step: 8" "store: on"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/out" 2>&1 || { cat "$T/out"; die "train failed"; }
grep -q "cross matrix: 32 of the 40 adapters, evenly spaced" "$T/out" || { cat "$T/out"; die "no sampling line"; }
"$TL_PYTHON" - "$T/run/eval.json" <<'PY'
import json, math, sys
ev = json.load(open(sys.argv[1]))
assert "cross" not in ev, "a full cross matrix above 32 adapters"
cs = ev["cross_sample"]
assert cs["of"] == 40 and len(cs["adapters"]) == 32 and len(cs["loss"]) == 32, (cs["of"], len(cs["adapters"]))
own = {a["name"]: a["loss"] for a in ev["adapters"]}
want = [ev["adapters"][i * 40 // 32]["name"] for i in range(32)]
assert cs["adapters"] == want, (cs["adapters"][:3], want[:3])
for i, name in enumerate(cs["adapters"]):
    assert len(cs["loss"][i]) == 32
    d = cs["loss"][i][i]
    assert math.isclose(d, own[name], rel_tol=1e-9), (name, d, own[name])
print("ok")
PY
