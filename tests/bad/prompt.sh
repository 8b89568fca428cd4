# Prompt datasets (kind "prompt", task.type grpo / rloo; docs/data-format.md): each defective file must make
# `tailor inspect` exit with code 2 and one stderr line naming the file and the dataset.
# `prompt.sh --list` prints the case names (CMake registers one test per case).
CASES="prompt_empty_set prompt_empty_prompt prompt_user_out_of_range prompt_user_length prompt_half_reference
prompt_kind_mismatch"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1
"$TL_PYTHON" -c "import h5py" 2>/dev/null || { echo "SKIPPED: h5py is missing"; exit 77; }
mk() { "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_prompt_h5.py" "$1" "$T/bad.h5"; }
case $case_name in
  prompt_empty_set) mk empty_set; expect="/prompt/offsets: empty dataset (no prompts)" ;;
  prompt_empty_prompt) mk empty_prompt; expect="/prompt/offsets: prompt 2 is empty" ;;
  prompt_user_out_of_range) mk user_out_of_range; expect="/prompt/user" ;;
  prompt_user_length) mk user_length; expect="/prompt/user: length 5, expected 6" ;;
  prompt_half_reference) mk half_reference; expect="/prompt/reference/offsets: missing dataset" ;;
  prompt_kind_mismatch)
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_pref_h5.py" good "$T/pref.h5"
    "$TL_PYTHON" - "$T/pref.h5" "$T/bad.h5" <<'PY'
import sys, h5py, shutil
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "a") as f:
    f.attrs["kind"] = "prompt"
PY
    expect="missing dataset" ;;
  *) die "unknown case $case_name" ;;
esac
expect_fail "$expect" "$TAILOR_BIN" inspect "$T/bad.h5"
ls "$T" | grep -q "bad.h5.tmp" && die "$case_name: something left behind"
echo "ok: $case_name"
