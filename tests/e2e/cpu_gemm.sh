# Which code runs the CPU backend's matrix products (kernels/cpu/cpu_mm.c, docs/design.md "Backend"):
#  1. `tailor version` names it, and TL_CPU_GEMM=openblas / tailor change what it says;
#  2. a run trains with either, and the two runs' losses agree to fp32 reassociation;
#  3. a TL_CPU_GEMM that is none of auto, tailor, openblas stops `tailor train` with exit code 2 and one line that
#     names the variable, before anything is written.
source "$TAILOR_SRC/tests/lib/common.sh"
"$TAILOR_BIN" version | grep -qE '^cpu products: ' || die "tailor version names no product code"
TL_CPU_GEMM=openblas "$TAILOR_BIN" version | grep -qx 'cpu products: OpenBLAS (TL_CPU_GEMM=openblas)' ||
  die "TL_CPU_GEMM=openblas: $(TL_CPU_GEMM=openblas "$TAILOR_BIN" version | tail -n 1)"
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  TL_CPU_GEMM=tailor "$TAILOR_BIN" version | grep -q "^cpu products: tailor's AVX2 tiles" ||
    die "TL_CPU_GEMM=tailor on an AVX2 CPU: $(TL_CPU_GEMM=tailor "$TAILOR_BIN" version | tail -n 1)"
  "$TAILOR_BIN" version | grep -q "^cpu products: tailor's AVX2 tiles" || die "auto on an AVX2 CPU chose OpenBLAS"
fi

make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 3
make_data "$T/train.h5" "$T/eval.h5" --users 3 --examples-per-user 6 --eval-examples-per-user 2 --vocab 64 --seed 5
for code in tailor openblas; do
  write_config "$T/$code.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/$code" "steps: 4" "log_every: 1"
  TL_CPU_GEMM=$code "$TAILOR_BIN" train "$T/$code.yaml" >"$T/$code.out" 2>&1 || { cat "$T/$code.out"; die "train with TL_CPU_GEMM=$code failed"; }
done
"$TL_PYTHON" - "$T/tailor/metrics.jsonl" "$T/openblas/metrics.jsonl" <<'EOF' || die "the two product codes disagree"
import json, sys
def losses(p):
    return [r["loss"] for r in map(json.loads, open(p)) if "loss" in r and "adapter" not in r]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 4, (a, b)
for x, y in zip(a, b):
    assert abs(x - y) <= 1e-5 * abs(y), (x, y)
print("losses agree:", a)
EOF

write_config "$T/bad.yaml" "$T/model" "$T/train.h5" "$T/eval.h5" "$T/bad" "steps: 2"
set +e
TL_CPU_GEMM=mkl "$TAILOR_BIN" train "$T/bad.yaml" >"$T/bad.out" 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] || { cat "$T/bad.out"; die "TL_CPU_GEMM=mkl: exit code $rc, expected 2"; }
grep -q 'TL_CPU_GEMM=mkl in the environment: expected auto, tailor or openblas' "$T/bad.out" ||
  { cat "$T/bad.out"; die "TL_CPU_GEMM=mkl: the error does not name the variable"; }
[ ! -e "$T/bad/adapters" ] || die "TL_CPU_GEMM=mkl: the run wrote adapters"
echo "cpu_gemm: ok"
