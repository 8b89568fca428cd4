# The rollouts of task.type grpo at temperature 0 are tailor generate's greedy answers: a prompt built by
# `tailor data build --kind prompt`, answered in the first step by a fresh adapter (B = 0: the base model), gives the
# completion (metrics.jsonl users.<name>.sample) that `tailor generate --base` prints for the same text.
source "$TAILOR_SRC/tests/lib/common.sh"
"$TL_PYTHON" -c "import tokenizers" 2>/dev/null || { echo "SKIPPED: the tokenizers package is missing (scripts/pyenv.sh)"; exit 77; }
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
T = sys.argv[1]
corpus = ["The quick brown fox jumps over the lazy dog.", "short answers please", "1234 5678 numbers"] * 20
tok = tiny_tokenizer(corpus)
tok.save(f"{T}/tokenizer.json")
with open(f"{T}/prompts.jsonl", "w") as f:
    for u in ("ann", "bob"):
        f.write(json.dumps({"user": u, "prompt": "The quick brown fox"}) + "\n")
with open(f"{T}/pref.jsonl", "w") as f:
    for u in ("ann", "bob"):
        for i in range(4):
            f.write(json.dumps({"user": u, "prompt": "Answer:", "chosen": " short", "rejected": " 1234 numbers"}) + "\n")
PY
make_model "$T/model" --vocab 300 --hidden 32 --layers 2 --heads 2 --kv-heads 1 --ffn 64 --seed 4
cp "$T/tokenizer.json" "$T/model/"
"$TAILOR_BIN" data build "$T/prompts.jsonl" "$T/prompts.h5" --model "$T/model" --kind prompt >/dev/null || die "prompt build"
"$TAILOR_BIN" data build "$T/pref.jsonl" "$T/pref.h5" --model "$T/model" --kind preference >/dev/null || die "pref build"
write_config "$T/rm.yaml" "$T/model" "$T/pref.h5" "" "$T/rm" "steps: 2"
echo "task: {type: reward}" >>"$T/rm.yaml"
"$TAILOR_BIN" train "$T/rm.yaml" >/dev/null 2>&1 || die "reward model training failed"
write_config "$T/g.yaml" "$T/model" "$T/prompts.h5" "" "$T/run" "steps: 1" "examples_per_adapter: 1" "log_every: 1"
echo "task: {type: grpo, reward_model: $T/rm, num_generations: 2, max_completion_length: 12, temperature: 0}" >>"$T/g.yaml"
"$TAILOR_BIN" train "$T/g.yaml" >"$T/train.out" 2>&1 || { cat "$T/train.out"; die "grpo failed"; }
"$TAILOR_BIN" generate --model "$T/model" --base --prompt "The quick brown fox" --max-new-tokens 12 >"$T/gen.out" 2>&1 \
  || { cat "$T/gen.out"; die "generate failed"; }
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
from tokenizers import Tokenizer
T = sys.argv[1]
tok = Tokenizer.from_file(f"{T}/tokenizer.json")
eos = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
rec = json.loads(open(f"{T}/run/metrics.jsonl").readline())
gen = open(f"{T}/gen.out", "rb").read().rstrip(b"\n")  # raw bytes: random tokens need not be whole UTF-8
# byte-level BPE: each token's string maps back to bytes through GPT-2's bytes_to_unicode table
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
unbyte = {chr(c): b for b, c in zip(bs, cs)}
for u in ("ann", "bob"):
    ids = rec["users"][u]["sample"]
    text = b"".join(bytes(unbyte[ch] for ch in tok.id_to_token(i)) for i in ids if i not in eos)
    print(f"{u}: rollout {text!r}; generate {gen!r}")
    assert text == gen, (u, text, gen)
    assert rec["users"][u]["reward_std"] == 0.0, "two greedy samples of one prompt must be equal"
print("ok")
PY
