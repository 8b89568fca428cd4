# `tailor data build --kind prompt`: JSONL prompts ({"user", "prompt"[, "reference"]} or chat messages) -> the
# HDF5 prompt kind. Token ids equal HF tokenizers' for the same text; chat prompts end with the generation
# prompt and a last assistant message becomes the reference answer; inspect reads the file; bad rows are refused
# with their line number, exit 2, one line and no output left behind.
source "$TAILOR_SRC/tests/lib/common.sh"
"$TL_PYTHON" -c "import tokenizers, h5py" 2>/dev/null || { echo "SKIPPED: tokenizers or h5py is missing (scripts/pyenv.sh)"; exit 77; }
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
T = sys.argv[1]
corpus = ["The quick brown fox jumps over the lazy dog.", "Bonjour, ça va très bien !", "1234 5678 numbers"] * 20
tok = tiny_tokenizer(corpus)
tok.save(f"{T}/tokenizer.json")
with open(f"{T}/plain.jsonl", "w") as f:
    f.write(json.dumps({"user": "ann", "group": "a", "prompt": "Question: the quick fox?", "reference": " A fox."}) + "\n")
    f.write(json.dumps({"user": "bob", "group": "b", "prompt": "Bonjour ?", "reference": ""}) + "\n")
    f.write(json.dumps({"user": "ann", "group": "a", "prompt": "1234?", "reference": " 5678"}) + "\n")
with open(f"{T}/chat.jsonl", "w") as f:
    f.write(json.dumps({"user": "cy", "messages": [{"role": "user", "content": "Bonjour !"}]}, ensure_ascii=False) + "\n")
    f.write(json.dumps({"user": "cy", "messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "The fox?"}]}) + "\n")
PY
make_model "$T/model" --vocab 300 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
cp "$T/tokenizer.json" "$T/model/"
"$TAILOR_BIN" data build "$T/plain.jsonl" "$T/plain.h5" --model "$T/model" --kind prompt >"$T/out" || { cat "$T/out"; die "prompt build failed"; }
grep -q "3 prompts from 2 user(s), kind prompt" "$T/out" || die "report: $(head -1 "$T/out")"
"$TAILOR_BIN" data build "$T/chat.jsonl" "$T/chat.h5" --model "$T/model" --kind prompt >/dev/null || die "chat prompt build failed"
"$TL_PYTHON" - "$T" <<'PY'
import sys, h5py
from tokenizers import Tokenizer
T = sys.argv[1]
tok = Tokenizer.from_file(f"{T}/tokenizer.json")
enc = lambda s: tok.encode(s, add_special_tokens=False).ids
f = h5py.File(f"{T}/plain.h5", "r")
assert f.attrs["kind"] in ("prompt", b"prompt") and int(f.attrs["tailor_format"]) == 1
names = [n.decode() if isinstance(n, bytes) else n for n in f["users/name"][:]]
assert names == ["ann", "bob"], names
toks, offs = f["prompt/tokens"][:], f["prompt/offsets"][:]
rt, ro = f["prompt/reference/tokens"][:], f["prompt/reference/offsets"][:]
for i, (p, r) in enumerate([("Question: the quick fox?", " A fox."), ("Bonjour ?", ""), ("1234?", " 5678")]):
    assert list(toks[offs[i]:offs[i + 1]]) == enc(p), (i, list(toks[offs[i]:offs[i + 1]]), enc(p))
    assert list(rt[ro[i]:ro[i + 1]]) == enc(r), (i, "reference")
assert list(f["prompt/user"][:]) == [0, 1, 0]
g = h5py.File(f"{T}/chat.h5", "r")
assert "reference" not in g["prompt"], "a chat without an assistant message has no reference"
toks, offs = g["prompt/tokens"][:], g["prompt/offsets"][:]
want = ["<|im_start|>user\nBonjour !<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nThe fox?<|im_end|>\n<|im_start|>assistant\n"]
for i, p in enumerate(want):
    assert list(toks[offs[i]:offs[i + 1]]) == enc(p), (i, "chat prompt")
print("ok")
PY
"$TAILOR_BIN" inspect "$T/plain.h5" >"$T/insp" || die "inspect failed"
grep -q "kind prompt, 2 user(s), 3 prompt(s)" "$T/insp" && grep -q "with reference answers" "$T/insp" && grep -q "^valid" "$T/insp" || die "inspect: $(cat "$T/insp")"

bad() {
  local name=$1 content=$2 expect=$3
  printf '%s' "$content" >"$T/$name.jsonl"
  set +e
  "$TAILOR_BIN" data build "$T/$name.jsonl" "$T/$name.h5" --model "$T/model" --kind prompt >/dev/null 2>"$T/err"
  local rc=$?
  set -e
  [ $rc -eq 2 ] || die "$name: expected exit 2, got $rc"
  [ "$(wc -l <"$T/err")" -eq 1 ] || die "$name: expected one line: $(cat "$T/err")"
  grep -q -- "$expect" "$T/err" || die "$name: '$expect' not in: $(cat "$T/err")"
  [ ! -e "$T/$name.h5" ] && [ -z "$(ls "$T" | grep "$name.h5.tmp")" ] || die "$name: output left behind"
}
bad empty_prompt '{"user": "a", "prompt": ""}'$'\n' "empty_prompt.jsonl:1: prompt: empty prompt"
bad no_prompt '{"user": "a"}'$'\n' "no_prompt.jsonl:1: prompt"
bad mixed_reference '{"user": "a", "prompt": "x", "reference": "y"}'$'\n''{"user": "a", "prompt": "x"}'$'\n' "mixed_reference.jsonl:2: prompt: either every row has a reference"
bad reference_not_string '{"user": "a", "prompt": "x", "reference": 3}'$'\n' "reference: expected a string"
bad only_assistant '{"user": "a", "messages": [{"role": "assistant", "content": "hi"}]}'$'\n' "only an assistant message"
bad empty_set $'\n' "no prompts"
echo ok
