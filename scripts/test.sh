#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds (CPU backend; CUDA backend too where nvcc exists, warnings
# as errors), builds the unit tests again under AddressSanitizer + UBSan, and runs everything with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

BUILD_DIR=build scripts/setup.sh

echo "== sanitizer build (unit tests under ASan + UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTAILOR_SANITIZE=ON -DTAILOR_CUDA=OFF >/dev/null
cmake --build build-asan -j"$(nproc)"

# a headless browser for the report test (Debian's chromium)
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 ||
    echo "test: could not install chromium; the browser check of the report test will be skipped"
fi

# the default model, for the tests that check it against transformers (they skip when it could not be fetched)
scripts/get_model.sh >/dev/null || echo "test: could not fetch the default model; its tests will be skipped"

status=0
echo "== unit tests under ASan + UBSan"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -L unit -j2 --timeout 300) || status=1
echo "== full suite"
(cd build && ctest --output-on-failure -j2 --timeout 900) || status=1
echo "== quickstart (shortened)"
QUICKSTART_STEPS=${QUICKSTART_STEPS:-6} scripts/quickstart.sh >quickstart-ci.log 2>&1 || { cat quickstart-ci.log; status=1; }
tail -n 6 quickstart-ci.log
exit $status
