# Bad input: each case must exit with code 2, print exactly one line on stderr naming what is wrong, and leave
# no run directory behind. `run_case.sh --list` prints the case names (CMake registers one test per case).
CASES="config_unknown_key config_misspelled_key config_wrong_type config_out_of_range config_missing_file
config_bad_override model_missing_dir model_no_config_json model_unknown_arch st_truncated_header st_bad_offsets
st_shape_mismatch data_missing_file data_missing_dataset data_wrong_dtype data_decreasing_offsets
data_token_out_of_vocab data_user_out_of_range data_prompt_len_gt_length data_empty cli_unknown_command
cli_bad_override_syntax pref_missing_group pref_offsets_mismatch pref_user_out_of_range pref_empty_chosen
pref_empty_rejected pref_kind_mismatch pref_pair_too_long dist_bad_env dist_env_without_rank dist_bad_strategy
dist_zero_timeout cluster_env_not_list eval_as_many_processes"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
write_config "$T/c.yaml" "$T/model" "$T/good.h5" "" "$T/run" "steps: 2"
MODEL="$T/model" DATA="$T/good.h5" CFG="$T/c.yaml"
args=()
envs=()
cmd=train

bad_data() { "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" "$1" "$T/bad.h5"; args=("data.train=$T/bad.h5"); }
# a preference file with one defect, trained with task.type=dpo
bad_pref() {
  "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_pref_h5.py" "$1" "$T/bad.h5"
  args=("data.train=$T/bad.h5" "task.type=dpo" "data.max_seq_len=48" "train.micro_batch_tokens=512")
}
# st_patch: rewrite model.safetensors' header with a Python expression applied to the parsed JSON (h), or cut it
st_patch() {
  "$TL_PYTHON" - "$T/model/model.safetensors" "$1" <<'PY'
import json, struct, sys
path, how = sys.argv[1], sys.argv[2]
b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); data = b[8 + n:]
if how == "truncate":
    open(path, "wb").write(b[:8 + n // 2]); sys.exit(0)
name = "model.layers.0.self_attn.q_proj.weight"
h[name]["data_offsets"][1] = len(data) + 4096
hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + data)
PY
}

case $case_name in
  config_unknown_key) echo "frobnicate: 3" >>"$CFG"; expect="frobnicate" ;;
  config_misspelled_key) sed -i 's/^  lr: 0.01/  lrr: 0.01/' "$CFG"; expect="train.lrr" ;;
  config_wrong_type) sed -i 's/^  lr: 0.01/  lr: fast/' "$CFG"; expect="train.lr" ;;
  config_out_of_range) echo "  examples_per_adapter: 0" >>"$CFG"; expect="train.examples_per_adapter" ;;
  config_missing_file) CFG="$T/nope.yaml"; expect="nope.yaml" ;;
  config_bad_override) args=("train.steps=many"); expect="train.steps" ;;
  model_missing_dir) args=("model.path=$T/no-model"); expect="no-model" ;;
  model_no_config_json) rm "$MODEL/config.json"; expect="config.json" ;;
  model_unknown_arch) sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' "$MODEL/config.json"; expect="GPT2LMHeadModel" ;;
  st_truncated_header) st_patch truncate; expect="model.safetensors" ;;
  st_bad_offsets) st_patch offsets; expect="q_proj" ;;
  st_shape_mismatch)
    make_model "$T/other" --vocab 64 --hidden 48 --layers 1 --heads 2 --kv-heads 1 --ffn 64
    cp "$T/other/model.safetensors" "$MODEL/model.safetensors"; expect="shape" ;;
  data_missing_file) args=("data.train=$T/missing.h5"); expect="missing.h5" ;;
  data_missing_dataset) bad_data missing_dataset; expect="prompt_len" ;;
  data_wrong_dtype) bad_data wrong_dtype; expect="tokens" ;;
  data_decreasing_offsets) bad_data decreasing_offsets; expect="offsets" ;;
  data_token_out_of_vocab) bad_data token_out_of_vocab; expect="1000" ;;
  data_user_out_of_range) bad_data user_out_of_range; expect="user" ;;
  data_prompt_len_gt_length) bad_data prompt_len_gt_length; expect="prompt_len" ;;
  data_empty) bad_data empty; expect="empty" ;;
  cli_unknown_command) set +e; "$TAILOR_BIN" frobnicate >"$T/out" 2>"$T/err"; rc=$?; set -e
    [ $rc -eq 2 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q frobnicate "$T/err" || die "unknown command: rc $rc"
    echo ok; exit 0 ;;
  cli_bad_override_syntax) args=("train.steps"); expect="train.steps" ;;
  pref_missing_group) bad_pref missing_group; args+=("adapter.key=group"); expect="/users/group" ;;
  pref_offsets_mismatch) bad_pref offsets_mismatch; expect="/pref/rejected/offsets" ;;
  pref_user_out_of_range) bad_pref user_out_of_range; expect="/pref/user" ;;
  pref_empty_chosen) bad_pref empty_chosen; expect="chosen" ;;
  pref_empty_rejected) bad_pref empty_rejected; expect="rejected" ;;
  pref_kind_mismatch) args=("task.type=dpo"); expect="preference" ;;   # an SFT file for a DPO run
  pref_pair_too_long) bad_pref good; args+=("data.max_seq_len=300"); expect="micro_batch_tokens" ;;
  dist_bad_env) envs=(RANK=2 WORLD_SIZE=2); expect="RANK=2 is not below WORLD_SIZE=2" ;;
  dist_env_without_rank) envs=(WORLD_SIZE=4); expect="RANK is not" ;;
  dist_bad_strategy) args=("dist.strategy=sharded"); expect="dist.strategy" ;;
  dist_zero_timeout) args=("dist.timeout_s=0"); expect="dist.timeout_s" ;;
  cluster_env_not_list) args=("cluster.env=NCCL_DEBUG=WARN"); expect="cluster.env" ;;
  eval_as_many_processes) cmd=eval; envs=(RANK=1 WORLD_SIZE=2); expect="runs as one process" ;;
  *) die "unknown case $case_name" ;;
esac

set +e
env "${envs[@]}" "$TAILOR_BIN" "$cmd" "$CFG" "${args[@]}" >"$T/out" 2>"$T/err"
rc=$?
set -e
echo "exit $rc; stderr: $(cat "$T/err")"
[ $rc -eq 2 ] || die "expected exit code 2, got $rc"
[ "$(wc -l <"$T/err")" -eq 1 ] || die "expected exactly one line on stderr"
grep -q -- "$expect" "$T/err" || die "stderr does not mention '$expect'"
[ ! -e "$T/run" ] || die "a run directory was created for bad input"
echo ok
