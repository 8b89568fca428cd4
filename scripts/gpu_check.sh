#!/usr/bin/env bash
# gpu_check: every GPU check of tailor in one command, for a machine with an NVIDIA GPU and no network.
#
#   scripts/gpu_check.sh OUTDIR
#
# 1. fails at once, clearly, when nvidia-smi is missing or lists no GPU;
# 2. uses the bundle that scripts/gpu_bundle.sh made before the trip (TL_GPU_BUNDLE, default build-gpu-carry: tailor
#    and the test tools built with CUDA, with their libraries; carried to the device with `carry`), when its
#    libraries all resolve there (env.sh's tl_bundle_check) and the driver runs its kernels; otherwise it
#    configures and builds the whole project with the CUDA backend (-DTAILOR_CUDA=ON, architecture
#    TL_GPU_ARCH, default 90) in TL_GPU_BUILD_DIR (default build-gpu) and runs the tests/gpu tests with ctest;
#    where the whole project cannot be configured or built (GPU images often lack the HDF5 / libyaml / cJSON /
#    OpenBLAS development packages), it builds the GPU tests directly from kernels/ with nvcc and gcc instead
#    (no OpenBLAS: tests/gpu/support holds a plain sgemm for the CPU reference) and runs them;
# 3. checks the NCCL transport (tests/tools/tl_dist_check cuda): one rank per GPU, bootstrapped by NCCL_COMM_ID,
#    or a one-rank communicator (--force) on a one-GPU machine;
# 4. runs tests/gpu/e2e_cuda.sh (cuda vs cpu: 30-step SFT, isolation, resume, DPO and reward, greedy generate,
#    the quickstart config, memory vs nvidia-smi);
# 5. runs scripts/bench_gpu.sh (tailor vs torch + PEFT on the same GPU) with whatever is left of the budget;
# 6. writes OUTDIR/{nvidia-smi.txt, build.log, tests.log, nccl.log, e2e.txt, bench.txt, summary.txt, logs.tar.gz}
#    (8 files: what the device tool brings back; the run directories and models stay in TL_GPU_WORK, default
#    /tmp/tailor-gpu-check) and prints the benchmark's table, then a short table last: step, result, seconds.
# A skipped GPU test counts as a failure here: this script runs only where a GPU must be usable.
# Exit status 0 when every step passed. Sized to finish within 8 minutes on one H200 (docs/cuda.md has the
# estimate of each step).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${TL_GPU_BUILD_DIR:-build-gpu}
BUNDLE=${TL_GPU_BUNDLE:-build-gpu-carry}
WORK=${TL_GPU_WORK:-/tmp/tailor-gpu-check}
PY=${TL_PYTHON:-python3}
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
rm -rf "$WORK" && mkdir -p "$WORK" # this script's own scratch folder (TL_GPU_WORK)

# ---- 2. the carried bundle, else a build here ----
FULL=0 # 1: BIN holds tailor, tl_dist_check, tl_bench, tl_bench_ops built with CUDA
BIN=""
t0=$(date +%s)
: >"$OUTDIR/build.log"
: >"$OUTDIR/tests.log"
if [ -f "$BUNDLE/env.sh" ] && [ -z "${TL_GPU_FORCE_DIRECT:-}" ] && [ -z "${TL_GPU_NO_BUNDLE:-}" ]; then
    # shellcheck disable=SC1091
    source "$BUNDLE/env.sh" >>"$OUTDIR/build.log" 2>&1
    if tl_bundle_check >>"$OUTDIR/build.log" 2>&1 && "$BUNDLE/bin/tailor" version >>"$OUTDIR/build.log" 2>&1; then
        FULL=1
        BIN=$(cd "$BUNDLE/bin" && pwd)
        row "bundle ($BUNDLE, no build)" "PASS" "$(elapsed "$t0")"
        for name in gpu_test_cuda_ops gpu_test_decode_ops; do
            t1=$(date +%s)
            echo "== $name" >>"$OUTDIR/tests.log"
            timeout 300 "$BIN/$name" >>"$OUTDIR/tests.log" 2>&1
            rc=$?
            counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUTDIR/tests.log" | tail -1)
            case $rc in
            0) row "gpu.$name" "PASS ($counts)" "$(elapsed "$t1")" ;;
            77) row "gpu.$name" "FAIL (skipped: no usable GPU?)" "$(elapsed "$t1")" ;;
            *) row "gpu.$name" "FAIL (exit $rc; $counts)" "$(elapsed "$t1")" ;;
            esac
        done
        # a binary whose kernels the driver cannot run (an architecture it lacks) fails the op tests: build instead
        if grep -q 'no kernel image\|unsupported toolchain\|PTX was compiled' "$OUTDIR/tests.log"; then
            echo "gpu_check: the bundle's kernels do not run on this GPU (tests.log): building here" | tee -a "$OUTDIR/build.log"
            FULL=0
            BIN=""
        fi
    else
        row "bundle ($BUNDLE)" "SKIPPED (libraries missing: build.log)" "$(elapsed "$t0")"
    fi
fi
if [ "$FULL" = 0 ] && ! command -v nvcc >/dev/null 2>&1; then
    echo "gpu_check: FAIL: no usable bundle and nvcc not found (looked on PATH and in /usr/local/cuda/bin)" >&2
    table
    exit 1
fi

# ---- 2a. the whole project with the CUDA backend, tests/gpu through ctest ----
t0=$(date +%s)
if [ "$FULL" = 1 ]; then
    : # the bundle's binaries
elif [ -z "${TL_GPU_FORCE_DIRECT:-}" ] &&
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTAILOR_CUDA=ON -DTAILOR_CUDA_ARCHS="$ARCH" \
        >>"$OUTDIR/build.log" 2>&1 &&
    timeout 330 cmake --build "$BUILD" -j"$JOBS" >>"$OUTDIR/build.log" 2>&1; then
    FULL=2
    BIN=$(cd "$BUILD" && pwd)
    row "build (cmake, sm_$ARCH)" "PASS" "$(elapsed "$t0")"
else
    row "build (cmake, sm_$ARCH)" "SKIPPED (failed: direct build below)" "$(elapsed "$t0")"
    echo "gpu_check: the whole project did not configure/build (see build.log); building the GPU tests directly"
fi

if [ "$FULL" = 2 ]; then
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
    FULL=1
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
if [ "$FULL" = 1 ] && [ -x "$BIN/tl_dist_check" ] && "$BIN/tailor" version | grep -q nccl; then
    t0=$(date +%s)
    G=$(nvidia-smi -L | grep -c '^GPU ')
    port=$((29500 + RANDOM % 400))
    : >"$OUTDIR/nccl.log"
    if [ "$G" -ge 2 ]; then
        pids=()
        for r in $(seq 0 $((G - 1))); do
            RANK=$r WORLD_SIZE=$G LOCAL_RANK=$r LOCAL_WORLD_SIZE=$G NCCL_COMM_ID=127.0.0.1:$port \
                timeout 120 "$BIN/tl_dist_check" cuda >>"$OUTDIR/nccl.log" 2>&1 &
            pids+=($!)
        done
        rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=1; done
        what="$G ranks"
    else
        RANK=0 WORLD_SIZE=1 NCCL_COMM_ID=127.0.0.1:$port timeout 120 "$BIN/tl_dist_check" cuda --force \
            >>"$OUTDIR/nccl.log" 2>&1
        rc=$?
        what="1 rank, forced"
    fi
    if [ $rc = 0 ] && tail -1 "$OUTDIR/nccl.log" | grep -qx ok; then row "nccl collectives ($what)" "PASS" "$(elapsed "$t0")"
    else row "nccl collectives ($what)" "FAIL (see nccl.log)" "$(elapsed "$t0")"; fi
else
    row "nccl collectives" "SKIPPED (needs the whole project with NCCL)" "0"
fi

# ---- 4. end to end: cuda vs cpu through the CLI ----
: >"$OUTDIR/e2e.txt"
if [ "$FULL" = 0 ]; then
    row "e2e (tests/gpu/e2e_cuda.sh)" "SKIPPED (no tailor with CUDA)" "0"
    FAILED=1
else
    t0=$(date +%s)
    qs_data=${E2E_QS_DATA:-}
    [ -z "$qs_data" ] && [ -f "$BUNDLE/demo/sft_train.h5" ] && qs_data=$(cd "$BUNDLE/demo" && pwd)
    E2E_QS_DATA=${qs_data:-runs/demo} TAILOR_BIN="$BIN/tailor" TL_PYTHON="$PY" \
        timeout "$(left)" bash tests/gpu/e2e_cuda.sh "$WORK/e2e" >"$WORK/e2e.log" 2>&1
    rc=$?
    cp "$WORK/e2e/e2e.txt" "$OUTDIR/e2e.txt" 2>/dev/null
    n=0
    while read -r _ name res detail; do
        row "e2e $name" "$res" "${detail##* }"
        n=$((n + 1))
    done < <(grep '^E2E ' "$OUTDIR/e2e.txt")
    # the details do not fit the table: they are in e2e.txt
    [ $rc = 0 ] || row "e2e (tests/gpu/e2e_cuda.sh)" "FAIL (exit $rc; e2e.txt, logs.tar.gz)" "$(elapsed "$t0")"
    [ "$n" -gt 0 ] || row "e2e (tests/gpu/e2e_cuda.sh)" "FAIL (no check ran: e2e.log)" "$(elapsed "$t0")"
fi

# ---- 5. the GPU benchmark ----
if [ "$FULL" = 0 ]; then
    row "bench_gpu" "SKIPPED (no tailor with CUDA)" "0"
elif [ "$(left)" -lt 60 ]; then
    row "bench_gpu" "SKIPPED (no time left)" "0"
else
    t0=$(date +%s)
    TL_BIN_DIR="$BIN" TL_PYTHON="$PY" timeout "$(left)" bash scripts/bench_gpu.sh --out "$WORK/bench" \
        >"$WORK/bench.log" 2>&1
    rc=$?
    cp "$WORK/bench/table.txt" "$OUTDIR/bench.txt" 2>/dev/null || tail -20 "$WORK/bench.log" >"$OUTDIR/bench.txt"
    if [ $rc = 0 ]; then row "bench_gpu" "PASS (bench.txt)" "$(elapsed "$t0")"; else
        row "bench_gpu" "FAIL (exit $rc; bench.txt, logs.tar.gz)" "$(elapsed "$t0")"
    fi
fi

# ---- 6. logs: the small files of the work folder in one archive (models and run directories stay behind) ----
(cd "$WORK" && find . -type f \( -name '*.log' -o -name '*.txt' -o -name '*.out' -o -name '*.jsonl' -o -name '*.yaml' \
    -o -name '*.csv' \) -size -2M -print0 | tar --null -czf "$OUTDIR/logs.tar.gz" -T - 2>/dev/null)
[ -f "$OUTDIR/bench.txt" ] && cat "$OUTDIR/bench.txt"
table
exit $FAILED
