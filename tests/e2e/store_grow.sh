# Runs that grow (train.continue, docs/scale.md): a store run over 5 users, then the dataset grows (two new users,
# new examples for one user) and the same config with train.continue: true trains a round of just those three:
#  - the untouched users' store records stay byte for byte and are not rewritten, their exported adapters are
#    unchanged;
#  - the grown user continues from its stored adapter (its step count goes on), the new users start fresh;
#  - a third call with nothing new trains nothing and changes nothing;
#  - a dataset that lost a user of the store is refused (exit 2, naming the user), and nothing is changed;
#  - compaction moves a lone untouched record out of a sparse segment, which pruning then removes.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 12 --eval-examples-per-user 3 --vocab 64 --seed 4
write_config "$T/a.yaml" "$T/model" "$T/train.h5" "" "$T/run" "steps: 10" "examples_per_adapter: 2" \
  "log_every: 1" "adapters_per_step: 2" "store: on" "continue: true"
"$TAILOR_BIN" train "$T/a.yaml" >"$T/a.out" 2>&1 || { cat "$T/a.out"; die "first round failed"; }
cp -r "$T/run/adapters" "$T/adapters.round1"
# grown.h5: user0001 gets 3 more examples, newbie0 and newbie1 arrive (copies of user0000's examples)
"$TL_PYTHON" - "$T/train.h5" "$T/grown.h5" "$T/shrunk.h5" "$T/most.h5" <<'PY'
import sys, h5py, numpy as np
src, grown, shrunk = sys.argv[1:4]
f = h5py.File(src, "r")
tok, off, pl, usr = (f["sft/tokens"][:], f["sft/offsets"][:], f["sft/prompt_len"][:], f["sft/user"][:])
names = [n.decode() if isinstance(n, bytes) else n for n in f["users/name"][:]]
attrs = dict(f.attrs)
ex = [(tok[off[i]:off[i + 1]], pl[i], usr[i]) for i in range(len(pl))]
def write(path, ex, names):
    with h5py.File(path, "w") as g:
        for k, v in attrs.items(): g.attrs[k] = v
        t = np.concatenate([e[0] for e in ex]).astype(np.int32)
        o = np.concatenate([[0], np.cumsum([len(e[0]) for e in ex])]).astype(np.int64)
        g["sft/tokens"], g["sft/offsets"] = t, o
        g["sft/prompt_len"] = np.array([e[1] for e in ex], np.int32)
        g["sft/user"] = np.array([e[2] for e in ex], np.int32)
        g.create_dataset("users/name", data=names, dtype=h5py.string_dtype("utf-8"))
u1 = [e for e in ex if e[2] == 1][:3]
u0 = [e for e in ex if e[2] == 0]
more = ex + u1 + [(e[0], e[1], 5) for e in u0] + [(e[0], e[1], 6) for e in u0]
write(grown, more, names + ["newbie0", "newbie1"])
write(shrunk, [e for e in ex if e[2] != 4], names[:4])  # user0004 is gone
extra = [e for u in range(4) for e in [x for x in ex if x[2] == u][:3]]
write(sys.argv[4], ex + extra, names)  # most.h5: users 0-3 have new data, user0004 none
PY
sed "s#$T/train.h5#$T/grown.h5#" "$T/a.yaml" >"$T/b.yaml"
snap() { (cd "$T/run/store" && for f in seg-*.bin; do printf '%s %s\n' "$f" "$(md5sum <"$f")"; done) >"$1"; }
snap "$T/segs.before"
"$TAILOR_BIN" train "$T/b.yaml" >"$T/b.out" 2>&1 || { cat "$T/b.out"; die "second round failed"; }
grep -q "a new round of 10 step(s) for 3 adapter(s) (2 new, 1 with new data); 4 others untouched" "$T/b.out" ||
  { cat "$T/b.out"; die "the second round did not pick the 3 changed adapters"; }
# the first round's segments are neither rewritten nor removed (append-only; keep_checkpoints 2 keeps their manifest)
while read -r f sum; do
  [ "$(md5sum <"$T/run/store/$f")" = "$sum" ] || die "store segment $f changed"
done <"$T/segs.before"
"$TL_PYTHON" - "$T/adapters.round1" "$T/run/adapters" <<'PY' || die "round 2 adapters"
import json, sys, filecmp
a, b = sys.argv[1:]
ia = {e["name"]: e for e in json.load(open(f"{a}/index.json"))["adapters"]}
ib = {e["name"]: e for e in json.load(open(f"{b}/index.json"))["adapters"]}
assert set(ib) == set(ia) | {"newbie0", "newbie1"}, sorted(ib)
for n in ["user0000", "user0002", "user0003", "user0004"]:
    assert ia[n]["steps"] == ib[n]["steps"], (n, ia[n]["steps"], ib[n]["steps"])
    fa, fb = f"{a}/{ia[n]['dir']}/adapter_model.safetensors", f"{b}/{ib[n]['dir']}/adapter_model.safetensors"
    assert filecmp.cmp(fa, fb, shallow=False), f"untouched {n} changed"
assert ib["user0001"]["steps"] > ia["user0001"]["steps"], (ia["user0001"], ib["user0001"])
assert ib["newbie0"]["steps"] > 0 and ib["newbie1"]["steps"] > 0
print("ok")
PY
# nothing new: no step, no file changes
snap "$T/segs.round2"
cp "$T/run/metrics.jsonl" "$T/metrics.round2"
"$TAILOR_BIN" train "$T/b.yaml" >"$T/c.out" 2>&1 || { cat "$T/c.out"; die "third call failed"; }
grep -q "nothing to train" "$T/c.out" || { cat "$T/c.out"; die "expected nothing to train"; }
snap "$T/segs.round3"
cmp "$T/segs.round2" "$T/segs.round3" || die "a call with nothing new changed the store"
cmp "$T/metrics.round2" "$T/run/metrics.jsonl" || die "a call with nothing new changed metrics.jsonl"
# a user of the store missing from the data: refused, nothing changed
sed "s#$T/train.h5#$T/shrunk.h5#" "$T/a.yaml" >"$T/d.yaml"
case_name=store_user_removed
expect_fail "not in this dataset (users renamed or removed?): 'user0004'" "$TAILOR_BIN" train "$T/d.yaml"
snap "$T/segs.after_refusal"
cmp "$T/segs.round2" "$T/segs.after_refusal" || die "a refused run changed the store"

# compaction (train.store_compact_below, default 0.25): every adapter resident, one checkpoint per round, so round
# 1's records share one segment; round 2 retrains 4 of the 5 users, leaving user0004's record alone in it (20% live):
# the round's checkpoint moves that record out, and pruning (keep 1) removes the old segment. user0004's adapter is
# unchanged byte for byte; a run with compaction off keeps the segment.
for c in cmp nocmp; do
  write_config "$T/$c.yaml" "$T/model" "$T/train.h5" "" "$T/$c" "steps: 4" "examples_per_adapter: 2" "store: on" \
    "continue: true" "keep_checkpoints: 1"
done
echo "  store_compact_below: 0" >>"$T/nocmp.yaml"
for c in cmp nocmp; do
  "$TAILOR_BIN" train "$T/$c.yaml" >"$T/$c.1.out" 2>&1 || { cat "$T/$c.1.out"; die "$c: round 1 failed"; }
  cp -r "$T/$c/adapters" "$T/$c.adapters.1"
  sed -i "s#$T/train.h5#$T/most.h5#" "$T/$c.yaml"
  "$TAILOR_BIN" train "$T/$c.yaml" >"$T/$c.2.out" 2>&1 || { cat "$T/$c.2.out"; die "$c: round 2 failed"; }
done
grep -q "store compaction: 1 record(s) (.* MiB) moved out of 1 sparse segment(s)" "$T/cmp.2.out" ||
  { cat "$T/cmp.2.out"; die "no compaction in round 2"; }
! grep -q "store compaction" "$T/nocmp.2.out" || die "store_compact_below: 0 still compacted"
[ ! -e "$T/cmp/store/seg-00000000.bin" ] || { ls "$T/cmp/store"; die "the compacted segment was not pruned"; }
[ -e "$T/nocmp/store/seg-00000000.bin" ] || { ls "$T/nocmp/store"; die "without compaction round 1's segment must stay"; }
same_adapters "$T/cmp/adapters" "$T/nocmp/adapters" 0 || die "compaction changed the adapters"
cmp "$T/cmp.adapters.1/user0004/adapter_model.safetensors" "$T/cmp/adapters/user0004/adapter_model.safetensors" ||
  die "compaction changed the untouched user's adapter"
"$TAILOR_BIN" export "$T/cmp" --out "$T/cmp.exp" >"$T/cmp.exp.out" 2>&1 || { cat "$T/cmp.exp.out"; die "export after compaction"; }
same_adapters "$T/cmp/adapters" "$T/cmp.exp" 0 || die "export after compaction differs"
echo ok
