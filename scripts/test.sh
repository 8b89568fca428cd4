#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds (CPU backend; CUDA backend too where nvcc exists), builds the
# unit tests again under AddressSanitizer + UBSan, compiles a Release configuration, and runs everything with
# ctest. Every build here has warnings as errors (TAILOR_WERROR=ON, C and CUDA); a user's build does not (the
# option defaults OFF), so CI is where a new warning fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

# the main build: RelWithDebInfo (-O2), the CUDA backend where nvcc exists; the emu.* ctests run its kernels on
# the CPU through tests/gpu/emu where the CUDA headers exist (skipped elsewhere)
BUILD_DIR=build CMAKE_ARGS="-DTAILOR_WERROR=ON ${CMAKE_ARGS:-}" scripts/setup.sh

echo "== sanitizer build (unit, bad-input and fuzz tests under ASan + UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTAILOR_SANITIZE=ON -DTAILOR_CUDA=OFF -DTAILOR_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)"

status=0
# Release (-O3) is what users build: gcc's flow analysis there (maybe-uninitialized, stringop-overflow) differs
# from -O2 and -O0, so it is compiled here too (library, tailor, tests; nothing of it runs, about 30 s on 2 cores).
# A failure here fails the run but the tests still run.
echo "== Release build (compile only)"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DTAILOR_CUDA=OFF -DTAILOR_WERROR=ON >/dev/null
cmake --build build-release -j"$(nproc)" || { echo "test: the Release build failed"; status=1; }
# clang warns about other things than gcc (the builds above are gcc): one clang Release compile where clang and
# its OpenMP exist (about 40 s on 2 cores; Debian's clang with libomp-dev)
if command -v clang >/dev/null 2>&1; then
  echo "== clang Release build (compile only)"
  if CC=clang cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=Release -DTAILOR_CUDA=OFF -DTAILOR_WERROR=ON >/dev/null; then
    cmake --build build-clang -j"$(nproc)" || { echo "test: the clang build failed"; status=1; }
  else
    echo "test: clang cannot configure tailor here (OpenMP for clang: libomp-dev); the clang compile is skipped"
  fi
fi

# a headless browser for the report test (Debian's chromium)
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 ||
    echo "test: could not install chromium; the browser check of the report test will be skipped"
fi

# the default model, for the tests that check it against transformers (they skip when it could not be fetched)
scripts/get_model.sh >/dev/null || echo "test: could not fetch the default model; its tests will be skipped"

echo "== unit, bad-input and fuzz tests under ASan + UBSan"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -L 'unit|bad|fuzz' -j2 --timeout 300) || status=1
# OpenBLAS picks its kernels by CPU (Cooperlake's memset the whole output, older ones do not), so a buffer that is
# too small can pass on one machine and crash on another. The unit tests run again under ASan with each kernel
# family this CPU can execute (OPENBLAS_CORETYPE forces one), so CI sees what another machine's OpenBLAS would do.
for core in Prescott Haswell SkylakeX Cooperlake; do
  case $core in
    Haswell) grep -qw avx2 /proc/cpuinfo || continue ;;
    SkylakeX) grep -qw avx512f /proc/cpuinfo || continue ;;
    Cooperlake) grep -qw avx512_bf16 /proc/cpuinfo || continue ;;
  esac
  echo "== unit tests under ASan + UBSan with OpenBLAS's $core kernels"
  if (cd build-asan && OPENBLAS_CORETYPE=$core ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -L unit -j2 --timeout 300) >unit-$core.log 2>&1; then
    grep "tests passed" unit-$core.log
  else
    cat unit-$core.log; status=1
  fi
done
echo "== full suite"
(cd build && ctest --output-on-failure -j2 --timeout 900) || status=1
echo "== quickstart (shortened)"
QUICKSTART_STEPS=${QUICKSTART_STEPS:-6} scripts/quickstart.sh >quickstart-ci.log 2>&1 || { cat quickstart-ci.log; status=1; }
tail -n 6 quickstart-ci.log
exit $status
