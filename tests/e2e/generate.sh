# `tailor generate`: bad usage and bad input exit 2 with one line on stderr (missing adapter dir, an adapter of
# another model, an unknown user, a prompt longer than the context, bad flags); valid runs answer, greedy and
# seeded sampling are repeatable, and several adapters print one block each.
source "$TAILOR_SRC/tests/lib/common.sh"
"$TL_PYTHON" -c "import tokenizers" 2>/dev/null || { echo "SKIPPED: the tokenizers package is missing (scripts/pyenv.sh)"; exit 77; }
"$TL_PYTHON" - "$T" <<'PY'
import sys
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
tok = tiny_tokenizer(["The quick brown fox jumps over the lazy dog."] * 20)
tok.save(f"{sys.argv[1]}/tokenizer.json")
print(tok.get_vocab_size(), file=open(f"{sys.argv[1]}/V", "w"))
PY
V=$(cat "$T/V")
make_model "$T/model" --vocab "$V" --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
make_model "$T/other" --vocab "$V" --hidden 48 --layers 1 --heads 2 --kv-heads 1 --ffn 64
cp "$T/tokenizer.json" "$T/model/" && cp "$T/tokenizer.json" "$T/other/"
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_sft_data.py" --out "$T/d.h5" --users 2 --examples-per-user 4 --vocab "$V" --seed 1 >/dev/null
cat >"$T/c.yaml" <<Y
run: {name: t, output_dir: $T/run, seed: 1}
model: {path: $T/model}
adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}
data: {train: $T/d.h5, max_seq_len: 48}
train: {backend: cpu, threads: 2, steps: 2, lr: 0.01, micro_batch_tokens: 512, log_every: 100}
Y
"$TAILOR_BIN" train "$T/c.yaml" >/dev/null 2>&1 || die "train failed"
U=$("$TL_PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['adapters'][0]['name'])" "$T/run/adapters/index.json")
AD=$("$TL_PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['adapters'][0]['dir'])" "$T/run/adapters/index.json")

# expect_fail WHAT PATTERN ARGS...: exit 2, one line on stderr matching PATTERN, nothing on stdout
expect_fail() {
  local what=$1 pat=$2; shift 2
  set +e
  "$TAILOR_BIN" generate "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  set -e
  [ $rc -eq 2 ] || die "$what: exit $rc, expected 2 (stderr: $(cat "$T/err"))"
  [ "$(wc -l <"$T/err")" -eq 1 ] || die "$what: expected one line on stderr, got: $(cat "$T/err")"
  grep -q -- "$pat" "$T/err" || die "$what: stderr does not mention '$pat': $(cat "$T/err")"
  [ ! -s "$T/out" ] || die "$what: printed to stdout: $(cat "$T/out")"
}
P=(--backend cpu --prompt "The quick brown fox")
expect_fail "no model" "--model" "${P[@]}" --base
expect_fail "no prompt" "--prompt" --model "$T/model" --base
expect_fail "nothing to answer with" "--adapter" --model "$T/model" "${P[@]}"
expect_fail "unknown flag" "--bogus" --model "$T/model" "${P[@]}" --base --bogus
expect_fail "bad temperature" "temperature" --model "$T/model" "${P[@]}" --base --temperature -1
expect_fail "bad top-p" "top-p" --model "$T/model" "${P[@]}" --base --top-p 0
expect_fail "user without run" "--run" --model "$T/model" "${P[@]}" --user "$U"
expect_fail "missing adapter dir" "$T/nope" --model "$T/model" "${P[@]}" --adapter "$T/nope"
expect_fail "adapter of another model" "shape\|expected" --model "$T/other" "${P[@]}" --adapter "$T/run/adapters/$AD"
expect_fail "unknown user" "no user 'zed'" --model "$T/model" "${P[@]}" --run "$T/run" --user zed
expect_fail "run without export" "index.json" --model "$T/model" "${P[@]}" --run "$T" --all-users
LONG=$(printf 'fox %.0s' $(seq 1 2100))
expect_fail "prompt longer than the context" "context" --model "$T/model" --backend cpu --prompt "$LONG" --base

# valid runs: greedy twice gives the same; seeded sampling repeats; several adapters print one block each
g() { "$TAILOR_BIN" generate --model "$T/model" "${P[@]}" --max-new-tokens 8 "$@"; }
a=$(g --adapter "$T/run/adapters/$AD") || die "greedy generate failed"
b=$(g --adapter "$T/run/adapters/$AD") || die "greedy generate failed"
[ "$a" = "$b" ] || die "greedy answers differ: '$a' vs '$b'"
a=$(g --run "$T/run" --user "$U" --temperature 1.3 --top-p 0.9 --seed 7) || die "sampling failed"
b=$(g --run "$T/run" --user "$U" --temperature 1.3 --top-p 0.9 --seed 7) || die "sampling failed"
[ "$a" = "$b" ] || die "seeded sampling differs: '$a' vs '$b'"
g --run "$T/run" --all-users --base --chat >"$T/multi" || die "multi-adapter generate failed"
[ "$(grep -c '^=== .* ===$' "$T/multi")" -eq 3 ] || die "expected 3 answer blocks: $(cat "$T/multi")"
grep -q "^=== base ===$" "$T/multi" || die "no base block: $(cat "$T/multi")"
echo ok
