#!/usr/bin/env bash
# gpu_check: every GPU check of tailor in one command, for a machine with an NVIDIA GPU and no network.
#
#   scripts/gpu_check.sh OUTDIR
#
# 1. fails at once, clearly, when nvidia-smi is missing or lists no GPU;
# 2. configures and builds the whole project with the CUDA backend (-DTAILOR_CUDA=ON, architecture
#    TL_GPU_ARCH, default 90) in TL_GPU_BUILD_DIR (default build-gpu) and runs the tests/gpu tests with ctest;
#    where the whole project cannot be configured or built (GPU images often lack the HDF5 / libyaml / cJSON /
#    OpenBLAS development packages), it builds the GPU tests directly from kernels/ with nvcc and gcc instead
#    (no OpenBLAS: tests/gpu/support holds a plain sgemm for the CPU reference) and runs them;
# 3. checks the NCCL transport (tests/tools/tl_dist_check cuda): one rank per GPU, bootstrapped by NCCL_COMM_ID,
#    or a one-rank communicator (--force) on a one-GPU machine;
# 4. runs scripts/bench_gpu.sh when it exists and the whole project was built;
# 5. writes full logs under OUTDIR (at most 7 files) and prints a short table last: step, result, seconds.
# A skipped GPU test counts as a failure here: this script runs only where a GPU must be usable.
# Exit status 0 when every step passed. Sized to finish well under 8 minutes on one H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${TL_GPU_BUILD_DIR:-build-gpu}
ARCH=${TL_GPU_ARCH:-90}
START=$(date +%s)
JOBS=$(nproc)

ROWS=()
FAILED=0
row() { # name result seconds
    ROWS+=("$(printf '%-34s %-40s %8s' "$1" "$2" "$3")")
    case "$2" in PASS* | SKIPPED*) ;; *) FAILED=1 ;; esac
}
elapsed() { echo $(($(date +%s) - $1)); }
left() { echo $((470 - ($(date +%s) - START))); } # seconds left of the 8-minute budget, with a margin
table() {
    {
        echo
        printf '%-34s %-40s %8s\n' "step" "result" "seconds"
        printf '%s\n' "----------------------------------------------------------------------------------"
        printf '%s\n' "${ROWS[@]}"
        echo "logs: $OUTDIR"
    } | tee "$OUTDIR/summary.txt"
}

# ---- 1. a GPU must be there ----
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: FAIL: nvidia-smi not found: no NVIDIA driver on this machine, so no GPU to check" >&2
    exit 1
fi
nvidia-smi >"$OUTDIR/nvidia-smi.txt" 2>&1
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu_check: FAIL: nvidia-smi lists no GPU (output in $OUTDIR/nvidia-smi.txt)" >&2
    exit 1
fi
echo "gpu_check: $(nvidia-smi -L | head -1)"
if ! command -v nvcc >/dev/null 2>&1; then
    echo "gpu_check: FAIL: nvcc not found (looked on PATH and in /usr/local/cuda/bin)" >&2
    exit 1
fi

# ---- 2a. the whole project with the CUDA backend, tests/gpu through ctest ----
FULL=0
t0=$(date +%s)
: >"$OUTDIR/build.log"
if [ -z "${TL_GPU_FORCE_DIRECT:-}" ] &&
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTAILOR_CUDA=ON -DTAILOR_CUDA_ARCHS="$ARCH" \
        >>"$OUTDIR/build.log" 2>&1 &&
    timeout 330 cmake --build "$BUILD" -j"$JOBS" >>"$OUTDIR/build.log" 2>&1; then
    FULL=1
    row "build (cmake, sm_$ARCH)" "PASS" "$(elapsed "$t0")"
else
    row "build (cmake, sm_$ARCH)" "SKIPPED (failed: direct build below)" "$(elapsed "$t0")"
    echo "gpu_check: the whole project did not configure/build (see build.log); building the GPU tests directly"
fi

if [ "$FULL" = 1 ]; then
    t0=$(date +%s)
    (cd "$BUILD" && timeout 300 ctest -L gpu --output-on-failure --timeout 300) >"$OUTDIR/tests.log" 2>&1
    # ctest lines look like: "1/1 Test #15: gpu.test_cuda_ops ........   Passed    3.21 sec"
    n=0
    while read -r line; do
        name=$(sed -E 's/.*Test +#[0-9]+: ([^ ]+) .*/\1/' <<<"$line")
        secs=$(sed -E 's/.* ([0-9.]+) sec.*/\1/' <<<"$line")
        if grep -q ' Passed ' <<<"$line"; then res="PASS"; elif grep -q 'Skipped' <<<"$line"; then
            res="FAIL (skipped: no usable GPU?)"
        else res="FAIL"; fi
        row "$name" "$res" "$secs"
        n=$((n + 1))
    done < <(grep -E 'Test +#[0-9]+: ' "$OUTDIR/tests.log")
    [ "$n" = 0 ] && row "tests/gpu (ctest -L gpu)" "FAIL (no GPU test ran)" "$(elapsed "$t0")"
fi

# ---- 2b. direct build of the GPU tests from kernels/ ----
if [ "$FULL" = 0 ]; then
    t0=$(date +%s)
    D="$BUILD/direct"
    mkdir -p "$D"
    CFLAGS="-std=c11 -O2 -g -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -Werror -fopenmp -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DTL_HAVE_CUDA=1 -I."
    BLAS_LIB="-lopenblas"
    EXTRA_C=()
    if [ -n "${TL_GPU_CBLAS_STANDIN:-}" ] ||
        ! echo 'int main(void){return 0;}' | gcc -x c - -include cblas.h $(pkg-config --cflags openblas 2>/dev/null) \
            -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o "$D/blas_probe" >/dev/null 2>&1; then
        CFLAGS="$CFLAGS -Itests/gpu/support"
        BLAS_LIB=""
        EXTRA_C=(tests/gpu/support/cblas_naive.c)
        echo "gpu_check: no OpenBLAS here: the CPU reference uses tests/gpu/support/cblas_naive.c" >>"$OUTDIR/build.log"
    else
        CFLAGS="$CFLAGS $(pkg-config --cflags openblas 2>/dev/null) -I/usr/include/x86_64-linux-gnu/openblas-pthread"
    fi
    ok=1
    pids=()
    for f in kernels/cuda/*.cu; do
        nvcc -std=c++17 -O2 -g -arch=sm_"$ARCH" -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter \
            -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -I. -c "$f" -o "$D/$(basename "$f" .cu).cu.o" >>"$OUTDIR/build.log" 2>&1 &
        pids+=($!)
    done
    for f in kernels/cpu/*.c kernels/tl_status.c "${EXTRA_C[@]}"; do
        gcc $CFLAGS -c "$f" -o "$D/$(basename "$f" .c).c.o" >>"$OUTDIR/build.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || ok=0; done
    tests=()
    if [ "$ok" = 1 ]; then
        for src in tests/gpu/test_*.c; do
            name=$(basename "$src" .c)
            if gcc $CFLAGS -c "$src" -o "$D/$name.o" >>"$OUTDIR/build.log" 2>&1 &&
                nvcc -arch=sm_"$ARCH" -o "$D/$name" "$D/$name.o" "$D"/*.cu.o "$D"/*.c.o -lcublas -lgomp $BLAS_LIB -lm \
                    >>"$OUTDIR/build.log" 2>&1; then
                tests+=("$name")
            else
                ok=0
            fi
        done
    fi
    if [ "$ok" = 1 ]; then row "build (direct, sm_$ARCH)" "PASS" "$(elapsed "$t0")"; else
        row "build (direct, sm_$ARCH)" "FAIL (see build.log)" "$(elapsed "$t0")"
    fi
    : >"$OUTDIR/tests.log"
    for name in "${tests[@]}"; do
        t0=$(date +%s)
        echo "== $name" >>"$OUTDIR/tests.log"
        timeout 300 "$D/$name" >>"$OUTDIR/tests.log" 2>&1
        rc=$?
        counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUTDIR/tests.log" | tail -1)
        case $rc in
        0) row "gpu.$name" "PASS ($counts)" "$(elapsed "$t0")" ;;
        77) row "gpu.$name" "FAIL (skipped: no usable GPU?)" "$(elapsed "$t0")" ;;
        124) row "gpu.$name" "FAIL (timed out)" "$(elapsed "$t0")" ;;
        *) row "gpu.$name" "FAIL (exit $rc; $counts)" "$(elapsed "$t0")" ;;
        esac
    done
fi

# ---- 3. the NCCL path: every collective of tl_dist.h on device buffers, one rank per GPU ----
if [ "$FULL" = 1 ] && [ -x "$BUILD/tl_dist_check" ] && "$BUILD/tailor" version | grep -q nccl; then
    t0=$(date +%s)
    G=$(nvidia-smi -L | grep -c '^GPU ')
    port=$((29500 + RANDOM % 400))
    : >"$OUTDIR/nccl.log"
    if [ "$G" -ge 2 ]; then
        pids=()
        for r in $(seq 0 $((G - 1))); do
            RANK=$r WORLD_SIZE=$G LOCAL_RANK=$r LOCAL_WORLD_SIZE=$G NCCL_COMM_ID=127.0.0.1:$port \
                timeout 120 "$BUILD/tl_dist_check" cuda >>"$OUTDIR/nccl.log" 2>&1 &
            pids+=($!)
        done
        rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=1; done
        what="$G ranks"
    else
        RANK=0 WORLD_SIZE=1 NCCL_COMM_ID=127.0.0.1:$port timeout 120 "$BUILD/tl_dist_check" cuda --force \
            >>"$OUTDIR/nccl.log" 2>&1
        rc=$?
        what="1 rank, forced"
    fi
    if [ $rc = 0 ] && tail -1 "$OUTDIR/nccl.log" | grep -qx ok; then row "nccl collectives ($what)" "PASS" "$(elapsed "$t0")"
    else row "nccl collectives ($what)" "FAIL (see nccl.log)" "$(elapsed "$t0")"; fi
else
    row "nccl collectives" "SKIPPED (needs the whole project with NCCL)" "0"
fi

# ---- 4. the GPU benchmark, when there is one ----
if [ ! -f scripts/bench_gpu.sh ]; then
    row "bench_gpu" "SKIPPED (scripts/bench_gpu.sh absent)" "0"
elif [ "$FULL" = 0 ]; then
    row "bench_gpu" "SKIPPED (needs the whole project)" "0"
elif [ "$(left)" -lt 30 ]; then
    row "bench_gpu" "SKIPPED (no time left)" "0"
else
    t0=$(date +%s)
    TL_BUILD_DIR="$BUILD" timeout "$(left)" bash scripts/bench_gpu.sh >"$OUTDIR/bench.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then row "bench_gpu" "PASS (see bench.log)" "$(elapsed "$t0")"; else
        row "bench_gpu" "FAIL (exit $rc, see bench.log)" "$(elapsed "$t0")"
    fi
fi

table
exit $FAILED
