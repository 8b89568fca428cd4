# Bad inputs the fuzzer found (area fuzz, tests/fuzz/README.md), through the command line: each case must exit with
# code 2, print exactly one line on stderr naming the file and what was expected, and leave no output behind.
# `fuzz.sh --list` prints the case names (CMake registers one test per case).
CASES="fuzz_tokenizer_huge_id fuzz_gguf_duplicate_key"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

case $case_name in
fuzz_tokenizer_huge_id)
  # a two-token tokenizer.json whose second id is 2^31 - 1: once sized the id tables by it (16 GB)
  mkdir -p "$T/m"
  cat >"$T/m/tokenizer.json" <<'JSON'
{"added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
 "use_regex": true}, "post_processor": null, "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE",
 "dropout": null, "unk_token": null, "vocab": {"a": 0, "b": 2147483647}, "merges": []}}
JSON
  echo '{"user": "u", "prompt": "a", "response": "b"}' >"$T/rows.jsonl"
  expect_fail "tokenizer.json: model.vocab: id 2147483647" "$TAILOR_BIN" data build "$T/rows.jsonl" "$T/out.h5" --model "$T/m"
  [ ! -e "$T/out.h5" ] || die "$case_name: a failed build left out.h5"
  ;;
fuzz_gguf_duplicate_key)
  # 20000 distinct keys then the first one again: found after all are read (sorted, not a quadratic scan)
  "$TL_PYTHON" - "$T/dup.gguf" <<'PY'
import struct, sys
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
kv = [s("k%06d" % i) + struct.pack("<IB", 0, 1) for i in range(20000)] + [s("k000000") + struct.pack("<IB", 0, 1)]
open(sys.argv[1], "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))
PY
  expect_fail "metadata key 'k000000' appears twice" "$TAILOR_BIN" inspect "$T/dup.gguf"
  ;;
*) die "unknown case $case_name" ;;
esac
echo "ok: $case_name"
