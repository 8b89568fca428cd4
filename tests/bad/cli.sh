# Bad command lines and hostile names (area cli): each case must exit with code 2, print exactly one line on stderr
# naming the option, key, field or file and what was expected, carry no raw control character to the terminal, and
# leave nothing behind. `cli.sh --list` prints the case names (CMake registers one test per case).
CASES="cli_gen_seed_exponent cli_gen_seed_trailing cli_gen_seed_huge cli_gen_top_p_nan cli_gen_max_new_fraction
cli_make_model_exponent cli_sbatch_smuggled_reserved cli_sbatch_two_options cli_sbatch_value_quoted
cli_escape_names cli_gguf_bos_overflow cli_gguf_merge_key cli_model_hidden_huge cli_model_vocab_huge
cli_inspect_nan_weight cli_inspect_ckpt_nan cli_env_rank_blank cli_gen_adapter_alpha_huge cli_gen_run_dir_symlink
cli_fifo_config cli_fifo_inspect_gguf cli_fifo_inspect_safetensors cli_fifo_inspect_h5 cli_fifo_model_config
cli_fifo_tokenizer"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

# write_gguf OUT KIND: a GGUF file holding only tokenizer metadata (gpt2 BPE, 3 tokens, 1 merge), with one defect
write_gguf() {
  "$TL_PYTHON" - "$1" "$2" <<'PY'
import struct, sys
out, kind = sys.argv[1], sys.argv[2]
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
kv = []
def add(key, vt, payload): kv.append(s(key) + struct.pack("<I", vt) + payload)
add("tokenizer.ggml.model", 8, s("gpt2"))
add("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + s("a") + s("b") + s("ab"))
add("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, 1) + s("a q" if kind == "merge" else "a b"))
if kind == "bos":
    add("tokenizer.ggml.bos_token_id", 10, struct.pack("<Q", 2**32 + 1))   # 1 once truncated to int32
open(out, "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))
PY
}

# set_config KEY VALUE: one field of the model's config.json
set_config() {
  "$TL_PYTHON" - "$MODEL/config.json" "$1" "$2" <<'PY'
import json, sys
p, k, v = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = json.load(open(p)); c[k] = v; json.dump(c, open(p, "w"))
PY
}

MODEL="$T/model"
gen=("$TAILOR_BIN" generate --model "$T/no-model" --base --prompt hi)
case $case_name in
  # an input that is a FIFO: a plain open() would wait for a writer forever (timeout turns a hang into rc 124)
  cli_fifo_config) mkfifo "$T/c.yaml"; expect_fail "is a FIFO" timeout 30 "$TAILOR_BIN" train "$T/c.yaml" ;;
  cli_fifo_inspect_gguf) mkfifo "$T/m.gguf"; expect_fail "is a FIFO" timeout 30 "$TAILOR_BIN" inspect "$T/m.gguf" ;;
  cli_fifo_inspect_safetensors)
    mkfifo "$T/m.safetensors"; expect_fail "is a FIFO" timeout 30 "$TAILOR_BIN" inspect "$T/m.safetensors" ;;
  cli_fifo_inspect_h5) mkfifo "$T/d.h5"; expect_fail "is a FIFO" timeout 30 "$TAILOR_BIN" inspect "$T/d.h5" ;;
  cli_fifo_model_config)
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    rm "$MODEL/config.json"; mkfifo "$MODEL/config.json"
    expect_fail "config.json" timeout 30 "$TAILOR_BIN" inspect "$MODEL" ;;
  cli_fifo_tokenizer)
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    mkfifo "$MODEL/tokenizer.json"
    expect_fail "tokenizer.json: is a FIFO" timeout 30 "$TAILOR_BIN" inspect "$MODEL" ;;
  cli_gen_run_dir_symlink) # an index.json "dir" that is a plain name but a symlink out of the export
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    mkdir -p "$T/run/adapters" "$T/outside"; ln -s "$T/outside" "$T/run/adapters/alice"
    echo '{"format": "tailor-export-1", "adapters": [{"name": "alice", "dir": "alice"}]}' >"$T/run/adapters/index.json"
    expect_fail "alice resolves to" "$TAILOR_BIN" generate --model "$MODEL" --run "$T/run" --all-users --prompt hi ;;
  cli_gen_seed_exponent) expect_fail "generate: --seed: expected an integer" "${gen[@]}" --seed 1e3 ;;
  cli_gen_seed_trailing) expect_fail "generate: --seed: expected an integer" "${gen[@]}" --seed 12abc ;;
  cli_gen_seed_huge) expect_fail "generate: --seed: expected an integer" "${gen[@]}" --seed 99999999999999999999 ;;
  cli_gen_top_p_nan) expect_fail "generate: --top-p" "${gen[@]}" --top-p nan ;;
  cli_gen_max_new_fraction) expect_fail "generate: --max-new-tokens" "${gen[@]}" --max-new-tokens 1.5 ;;
  cli_make_model_exponent)
    expect_fail "make-model --hidden" "$TAILOR_BIN" make-model "$T/mm" --hidden 1e3
    [ ! -e "$T/mm" ] || die "make-model left $T/mm behind" ;;
  cli_sbatch_smuggled_reserved|cli_sbatch_two_options|cli_sbatch_value_quoted)
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
    write_config "$T/c.yaml" "$MODEL" "$T/good.h5" "" "$T/run" "steps: 2"
    case $case_name in
      # a second option hidden in one entry would override what tailor sets: named for the key that sets it
      cli_sbatch_smuggled_reserved)
        expect_fail "cluster.time" "$TAILOR_BIN" submit "$T/c.yaml" "cluster.sbatch=[--qos=high --time=9:00]" ;;
      cli_sbatch_two_options)
        expect_fail "cluster.sbatch entry 2" "$TAILOR_BIN" submit "$T/c.yaml" "cluster.sbatch=[--exclusive, --qos=a -N 64]" ;;
      cli_sbatch_value_quoted)
        # a value with blanks and quotes stays one argument (written quoted), and a bare second word is refused
        "$TAILOR_BIN" submit "$T/c.yaml" --dry-run "cluster.sbatch=[\"--comment=a b 'c'\"]" >"$T/script" ||
          die "a quoted comment was refused"
        grep -qxF "#SBATCH --comment='a b '\\''c'\\'''" "$T/script" || die "value not quoted: $(grep comment "$T/script")"
        expect_fail "cluster.sbatch entry 1" "$TAILOR_BIN" submit "$T/c.yaml" "cluster.sbatch=[--qos high]" ;;
    esac
    [ ! -e "$T/run" ] || die "submit wrote $T/run for a refused config" ;;
  cli_escape_names)
    # a user name holding a terminal escape and a BEL: shown escaped by inspect, and in an error message
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/d.h5"
    "$TL_PYTHON" - "$T/d.h5" <<'PY'
import h5py, numpy as np, sys
with h5py.File(sys.argv[1], "r+") as f:
    del f["users/name"]
    f.create_dataset("users/name", data=np.array(["ann", "\x1b[31mevil\x07", "cid"], dtype=h5py.string_dtype()))
PY
    "$TAILOR_BIN" inspect "$T/d.h5" >"$T/out" 2>"$T/err" || die "inspect failed: $(cat "$T/err")"
    if LC_ALL=C grep -q "$(printf '[\033\007]')" "$T/out"; then die "inspect printed a raw control character"; fi
    grep -qF '\x1B[31mevil\x07' "$T/out" || die "inspect does not show the escaped name: $(cat "$T/out")"
    # training on it: the per-adapter eval table, and the warning about a user without examples (a 4th user)
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" user_without_examples "$T/e.h5"
    "$TL_PYTHON" - "$T/e.h5" <<'PY'
import h5py, numpy as np, sys
with h5py.File(sys.argv[1], "r+") as f:
    del f["users/name"]
    f.create_dataset("users/name", data=np.array(["ann", "\x1b[31mevil\x07", "cid", "\x1b]0;t\x07\x9b"],
                                                 dtype=h5py.string_dtype()))
PY
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    write_config "$T/c.yaml" "$MODEL" "$T/e.h5" "$T/e.h5" "$T/run" "steps: 1"
    "$TAILOR_BIN" train "$T/c.yaml" >"$T/out" 2>"$T/err" || die "train failed: $(cat "$T/err")"
    if LC_ALL=C grep -q "$(printf '[\033\007]')" "$T/out" "$T/err"; then die "train printed a raw control character"; fi
    grep -qF '\x1B]0;t\x07\u{009B}' "$T/err" || die "the empty-user warning does not show the escaped name: $(cat "$T/err")"
    grep -qF '\x1B[31mevil\x07' "$T/out" || die "the eval table does not show the escaped name: $(cat "$T/out")"
    expect_fail '\x1B[31mevil\x07' "$TAILOR_BIN" inspect "$T/$(printf '\033[31mevil\007').gguf" ;;
  cli_gguf_bos_overflow)
    write_gguf "$T/tok.gguf" bos
    printf '{"user": "ann", "prompt": "a", "response": "b"}\n' >"$T/in.jsonl"
    expect_fail "tokenizer.ggml.bos_token_id" "$TAILOR_BIN" data build "$T/in.jsonl" "$T/out.h5" --model "$T/tok.gguf"
    grep -qF "tok.gguf" "$T/err" || die "the message does not name the GGUF file"
    [ ! -e "$T/out.h5" ] || die "data build left $T/out.h5 behind" ;;
  cli_gguf_merge_key)
    write_gguf "$T/tok.gguf" merge
    printf '{"user": "ann", "prompt": "a", "response": "b"}\n' >"$T/in.jsonl"
    expect_fail "tok.gguf: tokenizer.ggml.merges[0]" "$TAILOR_BIN" data build "$T/in.jsonl" "$T/out.h5" --model "$T/tok.gguf"
    if grep -qF "model.merges" "$T/err"; then die "a GGUF error names a tokenizer.json field"; fi ;;
  cli_model_hidden_huge)
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    set_config hidden_size $((1 << 40))
    expect_fail "hidden_size 1099511627776 is above the supported limit 65536" "$TAILOR_BIN" inspect "$MODEL" ;;
  cli_model_vocab_huge)
    # 2e9 fits an int: it used to reach the allocator (ASan: out of memory) instead of being refused
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    set_config vocab_size 2000000000
    expect_fail "vocab_size 2000000000 is above the supported limit" "$TAILOR_BIN" inspect "$MODEL" ;;
  cli_inspect_nan_weight)
    # train refuses a NaN weight; inspect used to call the model valid
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    "$TL_PYTHON" - "$MODEL/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
t = h["model.layers.0.mlp.up_proj.weight"]; assert t["dtype"] == "F32"
at = 8 + n + t["data_offsets"][0] + 4 * 5
b[at:at + 4] = struct.pack("<f", float("nan")); open(p, "wb").write(b)
PY
    expect_fail "model.layers.0.mlp.up_proj.weight" "$TAILOR_BIN" inspect "$MODEL" ;;
  cli_inspect_ckpt_nan)
    # export and a resume refuse a checkpoint holding a NaN; inspect used to summarize it without complaint
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
    write_config "$T/c.yaml" "$MODEL" "$T/good.h5" "" "$T/run" "steps: 2"
    "$TAILOR_BIN" train "$T/c.yaml" >/dev/null 2>&1 || die "training the fixture failed"
    "$TAILOR_BIN" inspect "$T/run" >/dev/null || die "inspect refused a good checkpoint"
    "$TL_PYTHON" - "$T/run" <<'PY'
import glob, json, struct, sys
p = glob.glob(sys.argv[1] + "/checkpoints/*/state.safetensors")[0]
b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
P = int(h["__metadata__"]["P"]); at = 8 + n + h["params"]["data_offsets"][0] + 4 * (P + 7)
b[at:at + 4] = struct.pack("<f", float("nan")); open(p, "wb").write(b)
PY
    expect_fail "tensor 'params' [adapter 1, element 7]" "$TAILOR_BIN" inspect "$T/run" ;;
  cli_env_rank_blank)
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
    write_config "$T/c.yaml" "$MODEL" "$T/good.h5" "" "$T/run" "steps: 2"
    # strtol took a leading blank ("RANK= 1" ran as rank 1)
    expect_fail "RANK= 1" env "RANK= 1" WORLD_SIZE=2 "$TAILOR_BIN" train "$T/c.yaml"
    [ ! -e "$T/run" ] || die "train wrote $T/run" ;;
  cli_gen_adapter_alpha_huge)
    # lora_alpha 1e300 is a positive number but no float: it became inf and every answer NaN
    make_model "$MODEL" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
    write_config "$T/c.yaml" "$MODEL" "$T/good.h5" "" "$T/run" "steps: 1"
    "$TAILOR_BIN" train "$T/c.yaml" >/dev/null 2>&1 || die "training the fixture failed"
    sed -i 's/"lora_alpha":[^,]*,/"lora_alpha": 1e300,/' "$T/run/adapters/ann/adapter_config.json"
    grep -q '1e300' "$T/run/adapters/ann/adapter_config.json" || die "the fixture was not patched"
    expect_fail "lora_alpha" "$TAILOR_BIN" generate --model "$MODEL" --adapter "$T/run/adapters/ann" --prompt hi
    # and inspect, which used to list the adapter's tensors without reading its adapter_config.json
    expect_fail "lora_alpha" "$TAILOR_BIN" inspect "$T/run/adapters/ann" ;;
  *) die "unknown case $case_name" ;;
esac
echo ok
