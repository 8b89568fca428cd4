#!/usr/bin/env bash
# gpu_check without a GPU: scripts/gpu_check.sh must fail at once (non-zero, within seconds, before building
# anything) with exactly one line on stderr that says why. Skipped (77) on a machine where nvidia-smi lists a GPU.
set -uo pipefail
ROOT=${TAILOR_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "SKIPPED: this machine has a GPU"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/tailor-gpucheck.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { # label, then the environment to run gpu_check.sh under
    local label=$1
    shift
    local t0=$SECONDS
    (cd "$T" && env "$@" TL_GPU_BUILD_DIR="$T/build-gpu" bash "$ROOT/scripts/gpu_check.sh" "$T/out") >"$T/stdout" 2>"$T/stderr"
    local rc=$?
    [ $rc != 0 ] || fail "$label: gpu_check.sh exited 0 without a GPU"
    [ $((SECONDS - t0)) -le 10 ] || fail "$label: took $((SECONDS - t0)) s, not 'at once'"
    [ "$(wc -l <"$T/stderr")" = 1 ] || { cat "$T/stderr" >&2; fail "$label: expected exactly one line on stderr"; }
    grep -q '^gpu_check: FAIL: .*GPU' "$T/stderr" || fail "$label: unclear message: $(cat "$T/stderr")"
    [ ! -e "$T/build-gpu" ] || fail "$label: it started a build"
    echo "$label: exit $rc: $(cat "$T/stderr")"
}
# this machine as it is (no nvidia-smi, or one that lists no GPU)
check "as is" PATH="$PATH"
# an nvidia-smi that answers but lists no GPU (a driver without a device)
mkdir -p "$T/fakebin"
printf '#!/bin/sh\necho "No devices were found"\nexit 6\n' >"$T/fakebin/nvidia-smi"
chmod +x "$T/fakebin/nvidia-smi"
check "nvidia-smi without a device" PATH="$T/fakebin:$PATH"
echo ok
