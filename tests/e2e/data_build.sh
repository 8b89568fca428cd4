# `tailor data build`: JSONL rows -> tokenized HDF5 with the model's tokenizer.json. Token ids must equal HF
# tokenizers' for the same text; chat messages go through the ChatML template; a bad row is reported with its
# line number and leaves no output file; the built dataset trains.
source "$TAILOR_SRC/tests/lib/common.sh"
"$TL_PYTHON" -c "import tokenizers" 2>/dev/null || { echo "SKIPPED: the tokenizers package is missing (scripts/pyenv.sh)"; exit 77; }
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
T = sys.argv[1]
corpus = ["The quick brown fox jumps over the lazy dog.", "Bonjour, ça va très bien !", "1234 5678 numbers",
          "short answers please", "Long, detailed answers with many words are what I want."] * 20
tok = tiny_tokenizer(corpus, vocab_size=400)
tok.save(f"{T}/tokenizer.json")
rows = [
    {"user": "ann", "prompt": "Summarize: the quick brown fox.", "response": " A fox jumps."},
    {"user": "bob", "messages": [{"role": "user", "content": "Bonjour !"}, {"role": "assistant", "content": "Ça va très bien."}]},
    {"user": "ann", "prompt": "", "response": "1234 numbers"},
    {"user": "bob", "prompt": "Long or short?", "response": " Long, detailed answers."},
]
with open(f"{T}/sft.jsonl", "w") as f:
    for r in rows: f.write(json.dumps(r, ensure_ascii=False) + "\n")
with open(f"{T}/pref.jsonl", "w") as f:
    for u in ("ann", "bob"):
        f.write(json.dumps({"user": u, "group": "g", "prompt": "Answer:", "chosen": " short", "rejected": " long words"}) + "\n")
PY
make_model "$T/model" --vocab 400 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
cp "$T/tokenizer.json" "$T/model/"
"$TAILOR_BIN" data build "$T/sft.jsonl" "$T/sft.h5" --model "$T/model" >"$T/out" || { cat "$T/out"; die "data build failed"; }
cat "$T/out"
"$TAILOR_BIN" data build "$T/pref.jsonl" "$T/pref.h5" --model "$T/model" --kind preference >/dev/null || die "pref build failed"
"$TL_PYTHON" - "$T" <<'PY'
import sys, h5py, numpy as np
from tokenizers import Tokenizer
T = sys.argv[1]
tok = Tokenizer.from_file(f"{T}/tokenizer.json")
enc = lambda s: tok.encode(s, add_special_tokens=False).ids
f = h5py.File(f"{T}/sft.h5", "r")
assert f.attrs["kind"] in ("sft", b"sft") and int(f.attrs["tailor_format"]) == 1
names = [n.decode() if isinstance(n, bytes) else n for n in f["users/name"][:]]
assert names == ["ann", "bob"], names
toks, offs, pl, us = f["sft/tokens"][:], f["sft/offsets"][:], f["sft/prompt_len"][:], f["sft/user"][:]
chat_prompt = "<|im_start|>user\nBonjour !<|im_end|>\n<|im_start|>assistant\n"
want = [("Summarize: the quick brown fox.", " A fox jumps."), (chat_prompt, "Ça va très bien.<|im_end|>\n"),
        ("", "1234 numbers"), ("Long or short?", " Long, detailed answers.")]
for i, (p, r) in enumerate(want):
    seq = list(toks[offs[i]:offs[i + 1]])
    assert seq == enc(p) + enc(r), (i, seq, enc(p) + enc(r))
    assert pl[i] == len(enc(p)), (i, pl[i])
assert list(us) == [0, 1, 0, 1]
g = h5py.File(f"{T}/pref.h5", "r")
assert list(g["pref/chosen/tokens"][:]) == enc(" short") * 2
print("ok")
PY
"$TAILOR_BIN" inspect "$T/sft.h5" | grep -q "2 user(s), 4 example(s)" || die "inspect of the built file"

# bad rows: line numbers, exit 2, one line, no output file
bad() {
  local name=$1 content=$2 expect=$3; shift 3
  printf '%s' "$content" >"$T/$name.jsonl"
  set +e
  "$TAILOR_BIN" data build "$T/$name.jsonl" "$T/$name.h5" --model "$T/model" "$@" >/dev/null 2>"$T/err"
  local rc=$?
  set -e
  [ $rc -eq 2 ] || die "$name: expected exit 2, got $rc"
  [ "$(wc -l <"$T/err")" -eq 1 ] || die "$name: expected one line: $(cat "$T/err")"
  grep -q -- "$expect" "$T/err" || die "$name: '$expect' not in: $(cat "$T/err")"
  [ ! -e "$T/$name.h5" ] && [ -z "$(ls "$T" | grep "$name.h5.tmp")" ] || die "$name: output left behind"
}
good='{"user": "a", "prompt": "x", "response": "y"}'
bad malformed "$good"$'\n'"$good"$'\n''{"user": "a", "prompt": '$'\n' "malformed.jsonl:3"
bad missing_field "$good"$'\n''{"user": "a", "prompt": "x"}'$'\n' "missing_field.jsonl:2: response"
bad empty_response '{"user": "a", "prompt": "x", "response": ""}'$'\n' "empty response"
bad no_user '{"prompt": "x", "response": "y"}'$'\n' "user"
bad chat_last_not_assistant '{"user": "a", "messages": [{"role": "user", "content": "hi"}]}'$'\n' "assistant"
bad empty_chosen '{"user": "a", "prompt": "x", "chosen": "", "rejected": "z"}'$'\n' "chosen" --kind preference
bad unknown_kind "$good"$'\n' "--kind" --kind dpo
bad empty_file $'\n\n' "no examples"

# many users: the user table is hashed, so 400k distinct users build in seconds (a linear search per row
# would compare names 8e10 times)
"$TL_PYTHON" -c '
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(400000): f.write(json.dumps({"user": f"u{i}", "prompt": "x", "response": " y"}) + "\n")' "$T/many.jsonl"
timeout 60 "$TAILOR_BIN" data build "$T/many.jsonl" "$T/many.h5" --model "$T/model" >"$T/out" || die "400k users: not built in 60 s"
grep -q "400000 examples from 400000 user(s)" "$T/out" || die "400k users: $(head -1 "$T/out")"
echo ok
