# tailor export --format / --user / --dtype: each bad input exits 2 with one line naming it, writes nothing, and
# deletes nothing (the output folder and its files are left as they were).
# `export.sh --list` prints the case names (CMake registers one test per case).
CASES="ex_user_not_in_run ex_format_unknown ex_dtype_unknown ex_merged_no_user ex_user_with_peft
ex_gguf_reward_head ex_merged_reward_head ex_gguf_out_foreign ex_merged_out_foreign ex_merged_gguf_hf_base ex_out_listed_stranger"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
RUN="$T/run"
train_sft() {
  make_data "$T/sft.h5" "$T/eval.h5" --users 2 --examples-per-user 8 --vocab 64 --seed 2
  write_config "$T/c.yaml" "$T/model" "$T/sft.h5" "" "$RUN" "steps: 2"
  "$TAILOR_BIN" train "$T/c.yaml" >"$T/train.out" 2>&1 || die "train failed: $(cat "$T/train.out")"
}
train_reward() {
  "$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/pref.h5" --users 2 --pairs-per-user 8 --vocab 64 \
    --seed 4 >/dev/null
  write_config "$T/c.yaml" "$T/model" "$T/pref.h5" "" "$RUN" "steps: 2"
  echo "task: {type: reward}" >>"$T/c.yaml"
  "$TAILOR_BIN" train "$T/c.yaml" >"$T/train.out" 2>&1 || die "train failed: $(cat "$T/train.out")"
}
# snapshot DIR: every file under DIR with its checksum (to show that nothing changed)
snapshot() { (cd "$1" && find . -type f | sort | xargs md5sum); }

case $case_name in
  ex_user_not_in_run)
    train_sft
    expect_fail "'nobody' is not an adapter of this run" "$TAILOR_BIN" export "$RUN" --format merged --user nobody
    [ ! -e "$RUN/merged" ] || die "$case_name: an output was written" ;;
  ex_format_unknown)
    train_sft; expect_fail "--format 'onnx' is unknown" "$TAILOR_BIN" export "$RUN" --format onnx ;;
  ex_dtype_unknown)
    train_sft; expect_fail "--dtype 'q4_0' is unknown" "$TAILOR_BIN" export "$RUN" --format gguf --dtype q4_0
    [ ! -e "$RUN/adapters-gguf" ] || die "$case_name: an output was written" ;;
  ex_merged_no_user)
    train_sft; expect_fail "needs --user NAME" "$TAILOR_BIN" export "$RUN" --format merged ;;
  ex_user_with_peft)
    train_sft; expect_fail "--user is for --format merged" "$TAILOR_BIN" export "$RUN" --user user0000 ;;
  ex_gguf_reward_head)  # a target llama.cpp cannot take: the reward model's score head
    train_reward
    expect_fail "score head" "$TAILOR_BIN" export "$RUN" --format gguf
    [ ! -e "$RUN/adapters-gguf" ] || die "$case_name: an output was written" ;;
  ex_merged_reward_head)
    train_reward
    expect_fail "score head" "$TAILOR_BIN" export "$RUN" --format merged --user user0000
    [ ! -e "$RUN/merged" ] || die "$case_name: an output was written" ;;
  ex_gguf_out_foreign)  # an output folder that holds a file tailor did not write: refused, nothing deleted
    train_sft; mkdir -p "$T/mine"; echo keep >"$T/mine/notes.txt"; before=$(snapshot "$T/mine")
    expect_fail "notes.txt" "$TAILOR_BIN" export "$RUN" --format gguf --out "$T/mine"
    [ "$(snapshot "$T/mine")" = "$before" ] || die "$case_name: the folder changed"
    [ -z "$(ls -d "$T"/mine.tmp-* 2>/dev/null)" ] || die "$case_name: a temporary folder was left" ;;
  ex_merged_out_foreign)  # a merged export with a file of the user's added is not replaced
    train_sft; "$TAILOR_BIN" export "$RUN" --format merged --user user0001 --out "$T/m" >/dev/null || die "export"
    echo keep >"$T/m/README.md"; before=$(snapshot "$T/m")
    expect_fail "README.md" "$TAILOR_BIN" export "$RUN" --format merged --user user0000 --out "$T/m"
    [ "$(snapshot "$T/m")" = "$before" ] || die "$case_name: the folder changed"
    rm "$T/m/README.md"
    "$TAILOR_BIN" export "$RUN" --format merged --user user0000 --out "$T/m" >/dev/null || die "a clean merged export must be replaceable"
    grep -q '"user0000"' "$T/m/index.json" || die "$case_name: not replaced" ;;
  ex_merged_gguf_hf_base)
    train_sft
    expect_fail "needs a GGUF base model" "$TAILOR_BIN" export "$RUN" --format merged-gguf --user user0000
    [ ! -e "$RUN/merged-gguf" ] || die "$case_name: an output was written" ;;
  ex_out_listed_stranger)  # an index.json that lists a file of the user's under "files" does not make it ours
    train_sft; "$TAILOR_BIN" export "$RUN" --format gguf --out "$T/g" >/dev/null || die "export"
    echo keep >"$T/g/notes.txt"
    "$TL_PYTHON" -c "import json,sys; p=sys.argv[1]; i=json.load(open(p)); i['files'].append('notes.txt'); json.dump(i, open(p, 'w'))" "$T/g/index.json"
    before=$(snapshot "$T/g")
    expect_fail "notes.txt" "$TAILOR_BIN" export "$RUN" --format gguf --out "$T/g"
    [ "$(snapshot "$T/g")" = "$before" ] || die "$case_name: the folder changed" ;;
  *) die "unknown case $case_name" ;;
esac
echo "ok: $case_name"
