# The commands around a run: `tailor eval` (table + eval.json), `tailor export` from a run directory and from a
# checkpoint directory (same bytes as the run's own export), and `tailor inspect` on everything tailor reads or
# writes. The dataset uses hostile user names, which must never produce a path outside the adapters directory.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --tie
make_data "$T/train.h5" "$T/eval.h5" --users 4 --examples-per-user 8 --eval-examples-per-user 3 --vocab 64 \
  --seed 2 --hostile-names
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/run" "steps: 6" "checkpoint_every: 3"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/train.out" 2>&1 || { cat "$T/train.out"; die "train failed"; }

# nothing escaped the run directory, and every adapter has a directory named in index.json
[ -z "$(find "$T" -mindepth 1 -maxdepth 1 ! -name run ! -name model ! -name '*.h5' ! -name '*.yaml' ! -name '*.out')" ] ||
  die "files outside the run directory: $(ls "$T")"
"$TL_PYTHON" - "$T/run/adapters" <<'PY'
import json, os, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))["adapters"]
assert len(idx) == 4, idx
for a in idx:
    assert "/" not in a["dir"] and not a["dir"].startswith("."), a
    cfg = json.load(open(os.path.join(d, a["dir"], "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and "tailor_adapter_name" not in cfg, cfg
print("names:", [a["name"] for a in idx])
PY

"$TAILOR_BIN" eval "$T/c.yaml" >"$T/eval.out" 2>&1 || { cat "$T/eval.out"; die "eval failed"; }
grep -q "base_loss" "$T/eval.out" || die "no table from tailor eval"
"$TL_PYTHON" -c "import json,sys; e=json.load(open(sys.argv[1])); assert len(e['adapters'])==4 and e['step']==6, e" \
  "$T/run/eval.json"

"$TAILOR_BIN" export "$T/run" --out "$T/exp1" >/dev/null || die "export of a run failed"
"$TAILOR_BIN" export "$T/run/checkpoints/step-00000006" --out "$T/exp2" >/dev/null || die "export of a checkpoint failed"
# the manifests name each export's own absolute folder, so they differ by that path alone
diff -r -x vllm-lora-modules.json -x lorax-adapters.json "$T/run/adapters" "$T/exp1" >/dev/null ||
  die "export of the run differs from the run's own adapters"
for m in vllm-lora-modules.json lorax-adapters.json; do
  diff <(sed "s|$T/run/adapters/|DIR/|" "$T/run/adapters/$m") <(sed "s|$T/exp1/|DIR/|" "$T/exp1/$m") >/dev/null ||
    die "$m of the two exports differ beyond their folder"
done
diff -r -x vllm-lora-modules.json -x lorax-adapters.json "$T/exp1" "$T/exp2" >/dev/null || die "export of the checkpoint differs"
"$TAILOR_BIN" export "$T/run/checkpoints/step-00000003" --out "$T/exp3" >/dev/null || die "export of step 3 failed"
! diff -r "$T/exp1" "$T/exp3" >/dev/null || die "step 3 and step 6 exports are identical"

for p in "$T/model" "$T/model/model.safetensors" "$T/train.h5" "$T/run" "$T/run/checkpoints/step-00000006"; do
  "$TAILOR_BIN" inspect "$p" >"$T/inspect.out" 2>&1 || { cat "$T/inspect.out"; die "inspect $p failed"; }
done
"$TAILOR_BIN" inspect "$T/train.h5" | grep -q "4 user(s)" || die "inspect dataset summary"
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_pref_h5.py" good "$T/pref.h5"
"$TAILOR_BIN" inspect "$T/pref.h5" | grep -q "kind preference, 3 user(s), 6 pair(s)" || die "inspect preference summary"
set +e
"$TAILOR_BIN" inspect "$T/c.yaml" 2>"$T/err"; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "unknown file type" "$T/err" || die "inspect of an unknown file: rc $rc"
echo ok
