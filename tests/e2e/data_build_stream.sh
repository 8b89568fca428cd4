# `tailor data build` streams: rows go to chunked, extendible datasets in batches of TAILOR_DATA_BUILD_FLUSH_BYTES.
# A build with thousands of small flushes must equal, dataset by dataset, a build written in one go (contiguous),
# for all three kinds; a bad row after many flushes leaves neither the output nor the temporary file; progress
# lines and the closing summary (above 64 users) have their documented form.
source "$TAILOR_SRC/tests/lib/common.sh"
"$TL_PYTHON" -c "import tokenizers, h5py" 2>/dev/null || { echo "SKIPPED: tokenizers or h5py missing (scripts/pyenv.sh)"; exit 77; }
"$TL_PYTHON" - "$T" <<'PY'
import json, random, sys
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
T = sys.argv[1]
corpus = ["The quick brown fox jumps over the lazy dog.", "short answers please", "1234 5678 numbers"] * 20
tok = tiny_tokenizer(corpus)
tok.save(f"{T}/tokenizer.json")
rnd = random.Random(5)
words = ["fox", "dog", "quick", "lazy", "12", "short", "a", "the", "ça"]
def text(k): return " ".join(rnd.choice(words) for _ in range(rnd.randint(0, k)))
# many users, skewed sizes (user i has about 1/(i+1) of the rows), rows in a shuffled order
def user(): return f"u{min(int(rnd.paretovariate(0.7)) - 1, 4999)}"
with open(f"{T}/sft.jsonl", "w") as f:
    for i in range(300000):
        r = {"user": user(), "prompt": text(3), "response": " " + text(3) + "."}
        if i % 1000 == 7: r = {"user": r["user"], "messages": [{"role": "user", "content": text(4)}, {"role": "assistant", "content": text(2) + "!"}]}
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
        if i % 50000 == 3: f.write("\n")  # blank lines are skipped
with open(f"{T}/pref.jsonl", "w") as f:
    for i in range(100000):
        f.write(json.dumps({"user": user(), "group": "g", "prompt": text(3), "chosen": " " + text(2) + ".", "rejected": " no" + text(2)}) + "\n")
with open(f"{T}/prompt.jsonl", "w") as f:
    for i in range(100000):
        f.write(json.dumps({"user": user(), "prompt": "Q: " + text(4), "reference": text(3)}) + "\n")
with open(f"{T}/bad.jsonl", "w") as f:
    for i in range(200000):
        f.write(json.dumps({"user": f"u{i % 300}", "prompt": text(3), "response": " ok"}) + "\n")
    f.write(json.dumps({"user": "u1", "prompt": "x", "response": ""}) + "\n")
    f.write(json.dumps({"user": "u2", "prompt": "x", "response": " y"}) + "\n")
PY
make_model "$T/model" --vocab 300 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
cp "$T/tokenizer.json" "$T/model/"

for kind in sft pref prompt; do
  k=$kind; [ $kind = pref ] && k=preference
  TAILOR_DATA_BUILD_FLUSH_BYTES=4096 "$TAILOR_BIN" data build "$T/$kind.jsonl" "$T/$kind.small.h5" --model "$T/model" --kind $k >"$T/$kind.out" \
    || { cat "$T/$kind.out"; die "$kind: build with small flushes failed"; }
  TAILOR_DATA_BUILD_FLUSH_BYTES=1099511627776 "$TAILOR_BIN" data build "$T/$kind.jsonl" "$T/$kind.one.h5" --model "$T/model" --kind $k >/dev/null \
    || die "$kind: build in one flush failed"
  "$TAILOR_BIN" inspect "$T/$kind.small.h5" >/dev/null || die "$kind: inspect of the chunked file"
done
"$TL_PYTHON" - "$T" <<'PY'
import sys, h5py, numpy as np
T = sys.argv[1]
for kind, n in (("sft", 300000), ("pref", 100000), ("prompt", 100000)):
    a, b = h5py.File(f"{T}/{kind}.small.h5", "r"), h5py.File(f"{T}/{kind}.one.h5", "r")
    def names(f):
        out = []
        f.visititems(lambda k, v: out.append(k) if isinstance(v, h5py.Dataset) else None)
        return sorted(out)
    assert names(a) == names(b), (kind, names(a), names(b))
    assert dict(a.attrs) == dict(b.attrs), kind
    chunked = 0
    for k in names(a):
        x, y = a[k], b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, (kind, k, x.dtype, y.dtype, x.shape, y.shape)
        assert np.array_equal(x[:], y[:]), (kind, k)
        assert y.chunks is None, (kind, k, "one flush: contiguous")
        if not k.startswith("users/"):
            assert x.chunks is not None and x.chunks[0] * x.dtype.itemsize <= 1 << 20, (kind, k, x.chunks)
            chunked += 1
    rows = {"sft": "sft/user", "pref": "pref/user", "prompt": "prompt/user"}[kind]
    assert a[rows].shape == (n,), (kind, a[rows].shape)
    assert chunked >= 4, (kind, chunked)
    print(kind, "identical:", ", ".join(names(a)))
PY
# the summary above 64 users: totals, rows per user, the 5 largest; --report-users gives every user
grep -q "300000 examples from" "$T/sft.out" || die "summary: $(head -1 "$T/sft.out")"
grep -q "examples per user: min 1, median" "$T/sft.out" || die "summary: no distribution: $(cat "$T/sft.out")"
grep -q "the 5 largest users" "$T/sft.out" || die "summary: no largest users"
[ "$(grep -c '^  u[0-9]' "$T/sft.out")" -eq 5 ] || die "summary: expected 5 user lines: $(cat "$T/sft.out")"
grep -A2 "largest" "$T/sft.out" | tail -1 | grep -q "^  u0 " || die "summary: u0 is the largest user: $(cat "$T/sft.out")"
n_users=$(sed -n 's/.* from \([0-9]*\) user(s).*/\1/p' "$T/sft.out")
"$TAILOR_BIN" data build "$T/sft.jsonl" "$T/sft2.h5" --model "$T/model" --report-users >"$T/all.out" || die "--report-users"
[ "$(grep -c '^  u[0-9]' "$T/all.out")" -eq "$n_users" ] || die "--report-users: expected $n_users user lines"

# progress: one line per read line with an interval of 0 (not a terminal: full lines)
head -3 "$T/sft.jsonl" >"$T/three.jsonl"
TAILOR_DATA_BUILD_PROGRESS_S=0 "$TAILOR_BIN" data build "$T/three.jsonl" "$T/three.h5" --model "$T/model" >"$T/p.out" || die "progress build"
grep -Eq '^data build: 3 lines, [0-9.]+ MiB \(100%\) read, [0-9.]+ MiB/s, [0-9]+ rows/s$' "$T/p.out" || die "progress: $(cat "$T/p.out")"

# a bad row after many flushes: exit 2, one line naming the line, no output, no temporary file
set +e
TAILOR_DATA_BUILD_FLUSH_BYTES=4096 "$TAILOR_BIN" data build "$T/bad.jsonl" "$T/bad.h5" --model "$T/model" >/dev/null 2>"$T/err"
rc=$?
set -e
[ $rc -eq 2 ] || die "bad row: expected exit 2, got $rc"
[ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "bad.jsonl:200001: response: empty response" "$T/err" || die "bad row: $(cat "$T/err")"
[ ! -e "$T/bad.h5" ] && [ -z "$(ls "$T" | grep 'bad.h5.tmp')" ] || die "bad row: output left behind: $(ls "$T")"
# a malformed flush size is refused naming the variable
set +e
TAILOR_DATA_BUILD_FLUSH_BYTES=4k "$TAILOR_BIN" data build "$T/three.jsonl" "$T/x.h5" --model "$T/model" >/dev/null 2>"$T/err"
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "TAILOR_DATA_BUILD_FLUSH_BYTES" "$T/err" && [ ! -e "$T/x.h5" ] || die "flush size 4k: rc $rc: $(cat "$T/err")"
echo ok
