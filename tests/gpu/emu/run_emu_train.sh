#!/usr/bin/env bash
# run_emu_train: a few training steps of a tiny model through the CUDA backend's host code and kernels, run by the
# CPU emulator, compared with the CPU backend (ctest emu.train, label emu). Builds BUILD_DIR/tailor_emu (the whole
# tailor over the emulated CUDA runtime and cuBLAS, run_emu.sh --tailor; needs the kernel objects of the emu.build
# fixture) and runs tests/gpu/e2e_cuda.sh with E2E_STEPS=3: SFT cuda vs cpu (losses within 2e-2 at every step,
# adapters within relative L2 0.1), isolation on cuda, resume bit-identical on cuda, a DPO and a reward step cuda vs
# cpu, greedy generate cuda vs cpu. The quickstart and memory checks need a GPU (gpu_check.sh runs them).
#
#   tests/gpu/emu/run_emu_train.sh [BUILD_DIR]        (default build-emu)
# Exits 77 (skipped) where run_emu.sh cannot build, or Python lacks numpy / h5py.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
B=${1:-$ROOT/build-emu}
PY=${TL_PYTHON:-python3}
"$PY" -c 'import numpy, h5py' 2>/dev/null || { echo "SKIPPED: $PY lacks numpy or h5py"; exit 77; }
bash "$ROOT/tests/gpu/emu/run_emu.sh" --tailor "$B"
rc=$?
[ $rc = 0 ] || exit $rc
O=$(mktemp -d "${TMPDIR:-/tmp}/tailor-emu-train.XXXXXX")
E2E_STEPS=3 TAILOR_BIN="$B/tailor_emu" TL_PYTHON="$PY" bash "$ROOT/tests/gpu/e2e_cuda.sh" "$O" \
    train isolation resume pref generate
rc=$?
if [ $rc != 0 ]; then
    for f in "$O"/e2e/*.out "$O"/e2e/*.log "$O"/e2e/*.txt; do
        [ -f "$f" ] && { echo "---- $f"; tail -5 "$f"; }
    done
fi
# every check must have run: a SKIPPED one here means the test proved nothing
if [ $rc = 0 ] && grep -q ' SKIPPED ' "$O/e2e.txt"; then
    echo "FAIL: a check was skipped"
    rc=1
fi
rm -rf "$O"
exit $rc
