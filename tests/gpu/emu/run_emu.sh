#!/usr/bin/env bash
# run_emu: runs tests/gpu/test_cuda_ops and tests/gpu/test_decode_ops with the CUDA backend's kernels and host
# code executed on the CPU by a small emulator, for checking kernel logic where no GPU exists. The ctests emu.build
# (a fixture) and emu.order0, emu.order1, emu.order2 run it in every build but the sanitizer build (CMakeLists.txt);
# each exits 77 (skipped) where g++, python3 or the CUDA headers (cuda_bf16.h) are missing. About 20 s to build
# and 50 s per run on 2 cores.
#
#   tests/gpu/emu/run_emu.sh [--build-only | --run-only] [BUILD_DIR]        (default build-emu)
#     --build-only   build BUILD_DIR/test_cuda_ops_emu and test_decode_ops_emu, and stop
#     --run-only     run the two already built
#   env: TL_EMU_ORDER=0|1|2  order of the emulated threads between barriers: forward, reverse, shuffled (a
#                            missing __syncthreads shows up as a difference between orders)
#        TL_EMU_OPTIN=BYTES  the device's shared-memory opt-in limit (default 232448, H100/H200; 166912 = A100)
#        TL_EMU_SANITIZE=1   build with AddressSanitizer + UBSan (slower)
#
# How it works: every CUDA thread is a ucontext fiber; __syncthreads / __syncwarp / shuffles are barriers of the
# block's or warp's fibers; blocks run one after another; WMMA fragments are emulated per lane (each lane holds
# the whole tile, loads and stores are warp barriers); the CUDA runtime and cublasGemmEx are plain host code;
# device memory is host memory filled with NaN bytes; the real cuda_bf16.h does the bf16 conversions. It checks
# WMMA alignment rules, launch limits and the shared memory opt-in. It cannot see races between threads that a
# real GPU would interleave differently within a barrier interval (vary TL_EMU_ORDER), nor timing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
MODE=all
case "${1:-}" in --build-only) MODE=build; shift ;; --run-only) MODE=run; shift ;; --tailor) MODE=tailor; shift ;; esac
B=${1:-$ROOT/build-emu}
E=$ROOT/tests/gpu/emu
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
if [ ! -f "$CUDA_INC/cuda_bf16.h" ] || ! command -v g++ >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
    echo "SKIPPED: run_emu needs g++, python3 and the CUDA headers ($CUDA_INC/cuda_bf16.h)"
    exit 77
fi
TESTS="test_cuda_ops test_decode_ops"
# --tailor: BUILD_DIR/tailor_emu, the whole tailor executable (data/, trainer/, cli/) over the emulated CUDA
# backend and the CPU backend, so that `tailor train ... train.backend=cuda` runs a real training step through the
# CUDA backend's host code and kernels (tests/gpu/e2e_cuda.sh compares it with train.backend=cpu). Needs the
# kernel objects of --build-only in BUILD_DIR and the HDF5, libyaml, cJSON, PCRE2 and zlib development packages. No MPI
# or NCCL (one process).
if [ "$MODE" = tailor ]; then
    [ -f "$B/obj/emu_runtime.o" ] || { echo "run_emu: $B/obj is not built (run --build-only first)" >&2; exit 1; }
    if ! PKG=$(pkg-config --cflags --libs yaml-0.1 libcjson libpcre2-8 zlib 2>/dev/null); then
        echo "SKIPPED: tailor_emu needs the libyaml, cJSON, PCRE2 and zlib development packages (pkg-config)"
        exit 77
    fi
    H5=$(pkg-config --cflags --libs hdf5 2>/dev/null || echo "-I/usr/include/hdf5/serial -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5")
    mkdir -p "$B/obj_tailor"
    rm -f "$B"/obj_tailor/*.o
    TF="-std=c11 -O1 -g -fopenmp -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DTL_HAVE_CUDA=1 -I$ROOT
        -I$ROOT/tests/gpu/support $PKG $H5 ${TL_EMU_SANITIZE:+-fsanitize=address,undefined}"
    srcs=("$ROOT"/kernels/backend.c "$ROOT"/data/*.c "$ROOT"/trainer/*/*.c)
    # two compilers at a time: the machine this runs on in CI is small and shared
    i=0
    pids=()
    for f in "${srcs[@]}"; do
        o="$B/obj_tailor/$(basename "$(dirname "$f")")_$(basename "$f" .c).o"
        gcc $TF -c "$f" -o "$o" &
        pids+=($!)
        i=$((i + 1))
        if [ $((i % 2)) = 0 ]; then for p in "${pids[@]}"; do wait "$p"; done; pids=(); fi
    done
    for p in "${pids[@]}"; do wait "$p"; done
    lib=()
    for o in "$B"/obj/*.o; do case "$o" in */c_test_*.o) ;; *) lib+=("$o") ;; esac; done
    rm -f "$B/tailor_emu"
    g++ ${TL_EMU_SANITIZE:+-fsanitize=address,undefined} -fopenmp "$B"/obj_tailor/*.o "${lib[@]}" -o "$B/tailor_emu" \
        $PKG $H5 -lm
    echo "run_emu: built $B/tailor_emu"
    exit 0
fi
run() {
    for t in $TESTS; do
        # leak checking would report the emulator's fiber stacks, which live until exit
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0} "$B/${t}_emu"
    done
}
if [ "$MODE" = run ]; then
    for t in $TESTS; do
        [ -x "$B/${t}_emu" ] || { echo "run_emu: $B/${t}_emu is not built (run --build-only first)" >&2; exit 1; }
    done
    run
    exit
fi
SAN=""
[ -n "${TL_EMU_SANITIZE:-}" ] && SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
mkdir -p "$B/gen" "$B/obj"
rm -f "$B"/obj/*.o
CXXF="-std=c++17 -O1 -g -fno-strict-aliasing -Wall -Wno-unused-function -Wno-unused-parameter -Wno-unknown-pragmas
      -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -I$E/include -I$CUDA_INC -I$ROOT -I$ROOT/kernels/cuda
      -include $E/emu_device.h $SAN"
CF="-std=c11 -O1 -g -fopenmp -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DTL_HAVE_CUDA=1 -I$ROOT
    -I$ROOT/tests/gpu/support $SAN"
pids=()
for f in "$ROOT"/kernels/cuda/*.cu; do
    b=$(basename "$f" .cu)
    python3 "$E/transform.py" "$f" "$B/gen/$b.cpp"
    g++ $CXXF -c "$B/gen/$b.cpp" -o "$B/obj/$b.o" &
    pids+=($!)
done
g++ -std=c++17 -O1 -g -I"$CUDA_INC" $SAN -c "$E/emu_runtime.cpp" -o "$B/obj/emu_runtime.o" &
pids+=($!)
# the CPU reference with the plain sgemm of tests/gpu/support (no OpenBLAS needed)
for f in "$ROOT"/kernels/cpu/*.c "$ROOT"/kernels/tl_status.c "$ROOT"/kernels/tl_text.c "$ROOT"/tests/gpu/support/cblas_naive.c \
    "$ROOT"/tests/gpu/test_cuda_ops.c "$ROOT"/tests/gpu/test_decode_ops.c; do
    gcc $CF -c "$f" -o "$B/obj/c_$(basename "$f" .c).o" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
lib=()
for o in "$B"/obj/*.o; do case "$o" in */c_test_*.o) ;; *) lib+=("$o") ;; esac; done
for t in $TESTS; do
    rm -f "$B/${t}_emu"
    g++ $SAN -fopenmp "${lib[@]}" "$B/obj/c_$t.o" -o "$B/${t}_emu" -lm
done
[ "$MODE" = build ] && { echo "run_emu: built $B/{${TESTS// /,}}_emu"; exit 0; }
echo "run_emu: built $B/{${TESTS// /,}}_emu; running"
run
