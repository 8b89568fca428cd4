# Adapter store cases (train.store, docs/scale.md): each bad input must exit with code 2, print exactly one line on
# stderr naming the file or field, and leave the run directory's files as they were (nothing lost).
# `store.sh --list` prints the case names (CMake registers one test per case).
CASES="store_truncated_segment store_missing_segment store_corrupt_record store_foreign_manifest store_checkpoint_without_store
store_other_shape store_json_bad store_resume_older_checkpoint store_manifest_truncated store_corrupt_record_prefetched"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
write_config "$T/c.yaml" "$T/model" "$T/good.h5" "" "$T/run" "steps: 4" "checkpoint_every: 2" "store: on" \
  "adapters_per_step: 1"
RUN="$T/run"
train() { "$TAILOR_BIN" train "$1" >"$T/train.out" 2>"$T/train.err" || die "train failed: $(cat "$T/train.err")"; }
# the run directory's files and their contents, to show a refusal changed nothing
snapshot() { (cd "$RUN" && find . -type f ! -name '*.out' -print0 | sort -z | xargs -0 md5sum) >"$1"; }
more_steps() { sed 's/steps: 4/steps: 6/' "$T/c.yaml" >"$T/c6.yaml"; }
refused() { # NEEDLE CMD...: exit 2, one line naming NEEDLE, and the run directory unchanged
  local needle=$1; shift
  snapshot "$T/before"
  expect_fail "$needle" "$@"
  snapshot "$T/after"
  cmp -s "$T/before" "$T/after" || { diff "$T/before" "$T/after" >&2; die "$case_name: the refusal changed files"; }
}
train "$T/c.yaml"
more_steps
seg0="$RUN/store/$(ls "$RUN/store" | grep '^seg-' | head -1)"

case "$case_name" in
  store_truncated_segment)  # a record cut short: named, with the segment
    truncate -s 100 "$seg0"
    refused "truncated store file" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_missing_segment)
    rm "$seg0"
    refused "which is missing" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_corrupt_record)     # a flipped byte in a record's parameters: the CRC names it when export reads it
    "$TL_PYTHON" - "$RUN/store" <<'PY'
import glob, json, sys  # one flipped payload byte in every record of every segment
P = json.load(open(f"{sys.argv[1]}/store.json"))["P"]; rec = 48 + 12 * P
for f in glob.glob(f"{sys.argv[1]}/seg-*.bin"):
    b = bytearray(open(f, "rb").read())
    for o in range(0, len(b) - rec + 1, rec): b[o + 60] ^= 1
    open(f, "wb").write(b)
PY
    refused "corrupt (CRC-32 mismatch)" "$TAILOR_BIN" export "$RUN" --out "$T/exp" ;;
  store_foreign_manifest)   # another run's checkpoint copied in: its records are not this store's
    sed "s#$T/run#$T/other#" "$T/c.yaml" >"$T/o.yaml"
    train "$T/o.yaml"
    rm -rf "$RUN/checkpoints" && cp -r "$T/other/checkpoints" "$RUN/checkpoints"
    refused "belongs to another store" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_checkpoint_without_store)  # a run trained without the store, continued with it
    sed "s#$T/run#$T/plain#; s/store: on/store: off/" "$T/c.yaml" >"$T/p.yaml"
    train "$T/p.yaml"
    sed 's/store: off/store: on/; s/steps: 4/steps: 6/' "$T/p.yaml" >"$T/p6.yaml"
    RUN="$T/plain"
    refused "a checkpoint of a run without the adapter store" "$TAILOR_BIN" train "$T/p6.yaml" ;;
  store_other_shape)        # the same run directory with another adapter rank
    sed -i 's/rank: 4/rank: 8/' "$T/c6.yaml"
    refused "another shape" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_json_bad)
    printf '{"format": "tailor-store-9"}\n' >"$RUN/store/store.json"
    refused "store.json: format" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_resume_older_checkpoint)  # restoring step 2 would drop the records step 4 uses
    sed -i "s#^  resume: .*##" "$T/c6.yaml"
    echo "  resume: $RUN/checkpoints/step-00000002" >>"$T/c6.yaml"
    refused "resumes from its newest checkpoint only" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_manifest_truncated)
    m="$RUN/checkpoints/step-00000004/manifest.bin"
    truncate -s 40 "$m"
    refused "not a tailor store manifest" "$TAILOR_BIN" train "$T/c6.yaml" ;;
  store_corrupt_record_prefetched)  # a bad record read by the prefetch thread: reported at the step that needs it,
    # as a direct read reports it. 3 users, 1 per step: the resumed run trains step 5 on the 2nd adapter (read
    # directly), and step 6's 3rd adapter is read in the background while step 5 runs; only its record is bad.
    "$TL_PYTHON" - "$RUN" <<'PY'
import json, struct, sys
run = sys.argv[1]
P = json.load(open(f"{run}/store/store.json"))["P"]
b = open(f"{run}/checkpoints/step-00000004/manifest.bin", "rb").read()
p, ents = 56, []
for _ in range(struct.unpack_from("<Q", b, 40)[0]):
    n = struct.unpack_from("<I", b, p)[0]; p += 4
    name = b[p:p + n].decode(); p += n
    seg, _, off = struct.unpack_from("<IIQ", b, p); p += 64
    ents.append((name, seg, off))
name, seg, off = ents[2]
f = f"{run}/store/seg-{seg:08d}.bin"
d = bytearray(open(f, "rb").read()); d[off + 60] ^= 1; open(f, "wb").write(d)
print(name)
PY
    expect_fail "corrupt (CRC-32 mismatch)" "$TAILOR_BIN" train "$T/c6.yaml"
    grep -q '"step": 5,' "$RUN/metrics.jsonl" || die "$case_name: the bad record was not found at step 6" ;;
  *) die "unknown case $case_name" ;;
esac
echo ok
