# Shared helpers for the shell tests (sourced, not run). Env from ctest: TAILOR_BIN, TAILOR_SRC, TL_PYTHON,
# TL_TEST_BIN.
set -euo pipefail
: "${TAILOR_BIN:?set by ctest}" "${TAILOR_SRC:?set by ctest}"
TL_PYTHON=${TL_PYTHON:-/usr/bin/python3}
T=$(mktemp -d "${TMPDIR:-/tmp}/tailor-test.XXXXXX")
trap 'rm -rf "$T"' EXIT

die() { echo "FAIL: $*" >&2; exit 1; }

# make_model DIR [make-model options]: a tiny random Llama in HF layout
make_model() { "$TAILOR_BIN" make-model "$@" >/dev/null; }

# make_data OUT EVAL_OUT [make_sft_data.py options]
make_data() {
  local out=$1 ev=$2; shift 2
  "$TL_PYTHON" "$TAILOR_SRC/scripts/make_sft_data.py" --out "$out" --eval-out "$ev" "$@" >/dev/null
}

# write_config PATH MODEL TRAIN EVAL OUTDIR [extra yaml lines for the train section]
write_config() {
  local path=$1 model=$2 train=$3 ev=$4 out=$5; shift 5
  {
    echo "run: {name: t, output_dir: $out, seed: 1}"
    echo "model: {path: $model}"
    echo "adapter: {rank: 4, alpha: 8, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}"
    if [ -n "$ev" ]; then echo "data: {train: $train, eval: $ev, max_seq_len: 48}"; else echo "data: {train: $train, max_seq_len: 48}"; fi
    echo "train:"
    # defaults, unless the extra lines set the same key
    for l in "backend: cpu" "lr: 0.01" "micro_batch_tokens: 512"; do
      case " $* " in *" ${l%%:*}:"*) ;; *) echo "  $l" ;; esac
    done
    for l in "$@"; do echo "  $l"; done
  } >"$path"
}

# need_mpi: skips the test (77) unless mpirun exists and this tailor was built with MPI
need_mpi() {
  command -v mpirun >/dev/null 2>&1 || { echo "SKIP: no mpirun (apt-get install openmpi-bin)"; exit 77; }
  "$TAILOR_BIN" version | grep -q "multi-process: mpi" || { echo "SKIP: tailor was built without MPI"; exit 77; }
}

# mpirun for local tests (as root too, more processes than cores allowed, no core binding); as an array so that
# `timeout 60 "${MPIRUN[@]}" -np 2 ...` works; mpirun_tl N ARGS... is the short form
MPIRUN=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe --bind-to none)
mpirun_tl() {
  local n=$1; shift
  "${MPIRUN[@]}" -np "$n" "$@"
}

# same_adapters DIR_A DIR_B TOL: every adapter of two adapters/ directories within TOL (0 = bit-identical)
same_adapters() { "$TL_PYTHON" "$TAILOR_SRC/tests/lib/compare_adapters.py" "$@"; }
# same_metrics RUN_A RUN_B: the same logged steps, losses, grad norms, tokens and eval.json within 1e-5
same_metrics() { "$TL_PYTHON" "$TAILOR_SRC/tests/lib/same_metrics.py" "$1" "$2"; }

# expect_fail NEEDLE CMD...: the bad-input contract for one command: exit 2, exactly one line on stderr holding
# NEEDLE (a fixed string), no raw ESC or BEL byte in it. Messages name $case_name (set by the runner).
expect_fail() {
  local needle=$1; shift
  set +e; "$@" >"$T/out" 2>"$T/err"; local rc=$?; set -e
  [ $rc -eq 2 ] || { cat "$T/err" >&2; die "$case_name: exit code $rc, expected 2"; }
  [ "$(wc -l <"$T/err")" -eq 1 ] || { cat "$T/err" >&2; die "$case_name: expected exactly one line on stderr"; }
  grep -qF -- "$needle" "$T/err" || die "$case_name: stderr does not name '$needle': $(cat "$T/err")"
  if LC_ALL=C grep -q "$(printf '[\033\007]')" "$T/err"; then die "$case_name: a raw control character reached stderr"; fi
}
