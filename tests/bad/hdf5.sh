# Bad HDF5 datasets and bad `tailor data build` input: each case must exit with code 2, print exactly one line
# on stderr (no libhdf5 error stack after it) naming the file, dataset or line and what was expected, and leave
# nothing behind (no run directory, no output or temporary file of data build; an existing output untouched).
# `hdf5.sh --list` prints the case names; `hdf5.sh CASE` runs one. Bad files come from make_bad_h5.py and
# make_bad_pref_h5.py; each is valid except for its one defect, so only that defect can make tailor refuse it.
CASES="h5_soft_link h5_external_link h5_group_ext_link h5_external_storage h5_virtual h5_compact h5_huge_chunked
h5_huge_contiguous h5_huge_deflate h5_huge_chunk h5_lzf_filter h5_inspect_vocab_u64 h5_nothing_trainable h5_pref_nothing_trainable
h5_pref_external_users h5_libhdf5_hang h5_libhdf5_crash h5_truncated h5_isolate_env_bad h5_timeout_env_bad
h5_inspect_nothing_trainable h5_inspect_external_link h5_inspect_crash h5_inspect_truncated
h5_build_nul_escape h5_build_nul_escape_nested h5_build_nul_escape_key h5_build_raw_nul h5_build_bad_utf8_user
h5_build_bad_utf8_text h5_build_dup_key h5_build_dup_key_nested h5_build_empty_group h5_build_trailing_text
h5_build_keeps_existing h5_build_missing_dir h5_build_nothing_trainable h5_build_pref_nothing_trainable
h5_build_out_is_dir h5_fifo h5_build_line_too_long
h5_isolation_dies_with_parent"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
write_config "$T/c.yaml" "$T/model" "$T/good.h5" "" "$T/run" "steps: 2"
CFG="$T/c.yaml"
args=()
envs=()
cmd=(train "$CFG")
keep=""   # a file that must exist, unchanged, after the command

bad_data() { "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" "$1" "$T/bad.h5"; args=("data.train=$T/bad.h5"); }
bad_pref() {
  "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_pref_h5.py" "$1" "$T/bad.h5"
  args=("data.train=$T/bad.h5" "task.type=dpo" "data.max_seq_len=48" "train.micro_batch_tokens=512")
}
inspect() { bad_data "$1"; args=(); cmd=(inspect "$T/bad.h5"); }
# data build: a small byte-level BPE tokenizer in the model directory, then one JSONL file (printf format)
build() {
  "$TL_PYTHON" -c "import tokenizers" 2>/dev/null || { echo "SKIPPED: the tokenizers package is missing"; exit 77; }
  "$TL_PYTHON" - "$T/model" <<'PY'
import sys
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
tok = tiny_tokenizer(["hello world, a small corpus"] * 10)
tok.save(sys.argv[1] + "/tokenizer.json")
PY
  printf "$1" >"$T/in.jsonl"
  cmd=(data build "$T/in.jsonl" "$T/out.h5" --model "$T/model")
}
G='{"user": "a", "prompt": "x", "response": "y"}\n'   # a good row
H5V=$("$TL_PYTHON" -c 'import h5py; print(".".join(h5py.version.hdf5_version.split(".")[:2]))')  # same libhdf5 as tailor's

case $case_name in
  h5_soft_link) bad_data soft_link; expect="/sft/tokens: is a soft link" ;;
  h5_external_link) bad_data external_link; expect="/sft/tokens: is an external" ;;
  h5_group_ext_link) bad_data group_ext_link; expect="/sft: is an external" ;;
  h5_external_storage) bad_data external_storage; expect="/sft/tokens: external storage" ;;
  h5_virtual) bad_data virtual; expect="/sft/tokens: virtual dataset" ;;
  h5_compact) bad_data compact; expect="/sft/prompt_len: compact layout" ;;
  h5_huge_chunked) bad_data huge_chunked; expect="/sft/tokens: declares 17179869184 bytes" ;;
  h5_huge_contiguous) bad_data huge_contiguous; expect="/users/name: declares" ;;
  h5_huge_deflate) bad_data huge_deflate; expect="/sft/offsets: declares 8589934592 bytes" ;;
  h5_huge_chunk) bad_data huge_chunk; expect="/sft/user: chunks of 67108864 bytes for 24 bytes of data" ;;
  h5_lzf_filter) bad_data lzf_filter; expect='/sft/user: filter 32000 ("lzf") is not supported' ;;
  h5_nothing_trainable) bad_data nothing_trainable; expect="no example has a token to train on" ;;
  h5_pref_nothing_trainable) bad_pref nothing_trainable; expect="no pair has a token to train on" ;;
  h5_pref_external_users) bad_pref external_users; expect="/users/name: is an external" ;;
  # these two fixtures hang / crash libhdf5 1.10 (found by fuzzing); another libhdf5 may just refuse them
  h5_libhdf5_hang) bad_data libhdf5_hang; envs=(TAILOR_HDF5_TIMEOUT_S=3); expect="bad.h5: libhdf5 hung reading it"
    [ "$H5V" = 1.10 ] || expect="bad.h5: " ;;
  h5_libhdf5_crash) bad_data libhdf5_crash; expect="bad.h5: libhdf5 crashed reading it"
    [ "$H5V" = 1.10 ] || expect="bad.h5: " ;;
  h5_truncated) bad_data good; head -c 5000 "$T/good.h5" >"$T/bad.h5"; expect="bad.h5" ;;
  h5_fifo) mkfifo "$T/bad.h5"; args=("data.train=$T/bad.h5"); expect="bad.h5: not a regular file" ;;
  h5_isolate_env_bad) envs=(TAILOR_HDF5_ISOLATE=yes); expect="TAILOR_HDF5_ISOLATE" ;;
  h5_timeout_env_bad) envs=(TAILOR_HDF5_TIMEOUT_S=0); expect="TAILOR_HDF5_TIMEOUT_S" ;;
  h5_inspect_nothing_trainable) inspect nothing_trainable; expect="no example has a token to train on" ;;
  h5_inspect_external_link) inspect external_link; expect="/sft/tokens: is an external" ;;
  h5_inspect_vocab_u64) inspect vocab_u64_max; expect="attribute vocab_size: 18446744073709551615 is out of range" ;;
  h5_inspect_crash) inspect libhdf5_crash; expect="libhdf5 crashed"; [ "$H5V" = 1.10 ] || expect="bad.h5: " ;;
  h5_inspect_truncated) inspect good; head -c 5000 "$T/good.h5" >"$T/bad.h5"; expect="bad.h5" ;;
  h5_build_nul_escape) build "$G"'{"user": "a", "prompt": "x\\u0000hidden", "response": "y"}\n'
    expect='in.jsonl:2: prompt: contains "\\u0000"' ;;
  h5_build_nul_escape_nested)
    build '{"user": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok\\u0000x"}]}\n'
    expect='in.jsonl:1: messages\[1\].content: contains' ;;
  h5_build_nul_escape_key) build '{"user": "a", "prompt": "x", "response": "y", "us\\u0000er": "b"}\n'
    expect='in.jsonl:1: a key of the row: contains' ;;
  h5_build_raw_nul) build "$G"'{"user": "a", "prompt": "x", "response": "y"}\000junk\n'
    expect='in.jsonl:2: the line contains a NUL byte' ;;
  h5_build_bad_utf8_user) build '{"user": "b\377n", "prompt": "x", "response": "y"}\n'
    expect='in.jsonl:1: user: not valid UTF-8' ;;
  h5_build_bad_utf8_text) build "$G$G"'{"user": "a", "prompt": "x", "response": "\300\257"}\n'
    expect='in.jsonl:3: response: not valid UTF-8' ;;
  h5_build_dup_key) build '{"user": "a", "user": "b", "prompt": "x", "response": "y"}\n'
    expect='in.jsonl:1: user: key given twice' ;;
  h5_build_dup_key_nested)
    build '{"user": "a", "messages": [{"role": "user", "content": "hi", "content": "ho"}, {"role": "assistant", "content": "ok"}]}\n'
    expect='in.jsonl:1: messages\[0\].content: key given twice' ;;
  h5_build_empty_group) build '{"user": "a", "group": "", "prompt": "x", "response": "y"}\n'
    expect='in.jsonl:1: group: expected a non-empty string' ;;
  h5_build_trailing_text) build '{"user": "a", "prompt": "x", "response": "y"} {"user": "b"}\n'
    expect='in.jsonl:1: not a JSON object' ;;
  h5_build_keeps_existing) build "$G"'{"user": "", "prompt": "x", "response": "y"}\n'
    echo "an earlier output" >"$T/out.h5"; keep="$T/out.h5"; cp "$keep" "$T/keep.orig"; expect='in.jsonl:2: user' ;;
  h5_build_missing_dir) build "$G"; cmd=(data build "$T/in.jsonl" "$T/nodir/out.h5" --model "$T/model")
    expect='nodir/out.h5.tmp.[0-9]*: cannot create the output: No such file' ;;
  h5_build_nothing_trainable) build '{"user": "a", "prompt": "", "response": "x"}\n{"user": "b", "prompt": "", "response": "y"}\n'
    expect='in.jsonl: no example has a token to train on' ;;
  h5_build_pref_nothing_trainable) build '{"user": "a", "prompt": "", "chosen": "x", "rejected": "y"}\n'
    cmd+=(--kind preference); expect='in.jsonl: no pair has a token to train on' ;;
  h5_build_out_is_dir) build "$G"; mkdir "$T/out.h5"; echo kept >"$T/out.h5/keep"; keep="$T/out.h5/keep"
    cp "$keep" "$T/keep.orig"
    expect='out.h5: cannot rename the output into place: Is a directory' ;;
  h5_isolation_dies_with_parent) # the checking child of a killed tailor must not spin on in libhdf5 forever
    [ "$H5V" = 1.10 ] || { echo "SKIPPED: the hang fixture hangs libhdf5 1.10 only"; exit 77; }
    bad_data libhdf5_hang
    TAILOR_HDF5_TIMEOUT_S=600 "$TAILOR_BIN" inspect "$T/bad.h5" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do [ -n "$(pgrep -P "$pid")" ] && break; sleep 0.1; done
    child=$(pgrep -P "$pid" || true)
    [ -n "$child" ] || die "no checking child appeared"
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$child" 2>/dev/null; then kill -9 "$child"; die "the checking child outlived its parent"; fi
    echo ok; exit 0 ;;
  h5_build_line_too_long) # one 65 MiB line: refused at the 64 MiB bound instead of read whole into memory
    build "$G"; head -c 68157440 /dev/zero | tr '\0' 'a' >>"$T/in.jsonl"; printf '\n' >>"$T/in.jsonl"
    expect="in.jsonl:2: line longer than 64 MiB" ;;
  *) die "unknown case $case_name" ;;
esac

set +e
env "${envs[@]}" "$TAILOR_BIN" "${cmd[@]}" "${args[@]}" >"$T/out" 2>"$T/err"
rc=$?
set -e
echo "exit $rc; stderr: $(cat "$T/err")"
[ $rc -eq 2 ] || die "expected exit code 2, got $rc"
[ "$(wc -l <"$T/err")" -eq 1 ] || die "expected exactly one line on stderr"
grep -q -- "$expect" "$T/err" || die "stderr does not mention '$expect'"
[ ! -e "$T/run" ] || die "a run directory was created for bad input"
if [ -n "$keep" ]; then
  cmp -s "$keep" "$T/keep.orig" || die "$keep was changed"
elif [ "${cmd[0]}" = data ]; then
  [ ! -e "$T/out.h5" ] || die "data build left an output file"
fi
! ls "$T" | grep -q "out.h5.tmp" || die "data build left a temporary file: $(ls "$T")"
echo ok
