# Online RL (task.type grpo / rloo, docs/rl.md): each bad input must make `tailor train` exit with code 2, print
# exactly one line on stderr naming the key or file, and leave no run directory behind.
# `rl.sh --list` prints the case names (CMake registers one test per case).
CASES="rl_no_reward_model rl_reward_other_base rl_reward_missing_user rl_reward_not_seq_cls rl_num_generations_one
rl_prompt_too_long rl_empty_prompt_set rl_sft_data rl_eval_sft_set rl_store_on"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1
"$TL_PYTHON" -c "import h5py" 2>/dev/null || { echo "SKIPPED: h5py is missing"; exit 77; }
make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_prompt_h5.py" good "$T/prompts.h5"
# reward models of the three users of make_bad_prompt_h5.py (ann, ben, cid), a few steps on preference pairs
rm_train() { # MODEL OUT
  "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_pref_h5.py" good "$T/pref.h5"
  write_config "$T/rm.yaml" "$1" "$T/pref.h5" "" "$2" "steps: 2"
  echo "task: {type: reward}" >>"$T/rm.yaml"
  "$TAILOR_BIN" train "$T/rm.yaml" >/dev/null 2>&1 || die "reward model training failed"
}
rm_train "$T/model" "$T/rm"
write_config "$T/c.yaml" "$T/model" "$T/prompts.h5" "" "$T/run" "steps: 2"
echo "task: {type: grpo, reward_model: $T/rm, num_generations: 2, max_completion_length: 4}" >>"$T/c.yaml"
args=()
case $case_name in
  rl_no_reward_model) args=("task.reward_model="); expect="task.reward_model: required" ;;
  rl_reward_other_base)
    make_model "$T/other" --vocab 64 --hidden 48 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    rm_train "$T/other" "$T/rm_other"; args=("task.reward_model=$T/rm_other"); expect="has shape [4, 48], expected [4, 32]" ;;
  rl_reward_missing_user)
    "$TL_PYTHON" - "$T/rm/adapters/index.json" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); d["adapters"] = [a for a in d["adapters"] if a["name"] != "ben"]
json.dump(d, open(p, "w"))
PY
    expect="has no reward adapter named 'ben'" ;;
  rl_reward_not_seq_cls)
    write_config "$T/sft.yaml" "$T/model" "$T/sft.h5" "" "$T/sft" "steps: 1"
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/sft.h5"
    "$TAILOR_BIN" train "$T/sft.yaml" >/dev/null 2>&1 || die "sft training failed"
    args=("task.reward_model=$T/sft"); expect="task_type: expected \"SEQ_CLS\"" ;;
  rl_num_generations_one) args=("task.num_generations=1"); expect="task.num_generations" ;;
  rl_prompt_too_long)
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_prompt_h5.py" long_prompt "$T/long.h5"
    args=("data.train=$T/long.h5"); expect="prompt 3 has 300 tokens" ;;
  rl_empty_prompt_set)
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_prompt_h5.py" empty_set "$T/empty.h5"
    args=("data.train=$T/empty.h5"); expect="empty dataset (no prompts)" ;;
  rl_sft_data)
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/sft.h5"
    args=("data.train=$T/sft.h5"); expect="task.type grpo needs kind 'prompt'" ;;
  rl_eval_sft_set)
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/sft.h5"
    args=("data.eval=$T/sft.h5"); expect="data.eval: $T/sft.h5 is a 'sft' dataset, but task.type grpo needs kind 'prompt'" ;;
  rl_store_on) args=("train.store=on"); expect="train.store: not supported with task.type grpo" ;;
  *) die "unknown case $case_name" ;;
esac
expect_fail "$expect" "$TAILOR_BIN" train "$T/c.yaml" "${args[@]}"
echo "stderr: $(cat "$T/err")"
[ ! -e "$T/run" ] || die "$case_name: a run directory was left behind"
echo "ok: $case_name"
