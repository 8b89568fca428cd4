#!/usr/bin/env bash
# gpu_bundle: the whole tailor built here with the CUDA backend, in one folder that the device tool can carry to a
# GPU machine whose image lacks the HDF5, libyaml, cJSON, PCRE2 and OpenBLAS packages and cannot install them.
#
#   scripts/gpu_bundle.sh [BUNDLE_DIR]        (default build-gpu-carry, git-ignored by build*/)
#   scripts/gpu_bundle.sh --from-build BUILD_DIR BUNDLE_DIR   (pack that build's binaries; no cmake here)
#   scripts/gpu_bundle.sh --check BUNDLE_DIR  (only the size and closure checks of an existing bundle)
#
# Builds in TL_BUNDLE_BUILD (default build-gpu-bundle): Release, -DTAILOR_CUDA=ON, TL_GPU_ARCH (default 90), no MPI,
# -DTAILOR_NATIVE=OFF (the CPU kernels for any x86-64 host)
# (one process per GPU bootstraps NCCL through NCCL_COMM_ID), then fills BUNDLE_DIR with
#   bin/      tailor, tl_dist_check, gpu_test_cuda_ops, gpu_test_decode_ops, tl_bench, tl_bench_ops
#   lib.tar.xz  lib/ compressed (59 MiB -> 12 MiB; env.sh unpacks it on first use): every shared library `ldd`
#             resolves for them except those any CUDA image has or that cannot travel:
#             glibc's (libc, libm, libdl, libpthread, librt, libresolv, the loader), libgcc_s, libstdc++, the
#             driver (libcuda), cuBLAS (libcublas 52 MB + libcublasLt 517 MB) and NCCL (218 MB); the device's own
#             are found by env.sh
#   demo/     the quickstart's demo data tokenized here (needs models/; the 96 MB GGUF itself cannot travel)
#   env.sh    sourced on the device: LD_LIBRARY_PATH = lib/ + the directories holding libcublas / libcublasLt /
#             libnccl / libcuda there (ldconfig, /usr/local/cuda*, /usr/local/nvidia, python3's nvidia/* wheels);
#             `tl_bundle_check` says in one line per binary whether every library resolves
#   tailor    a launcher: sources env.sh and runs bin/tailor (TAILOR_BIN for the tests)
#   MANIFEST.txt  the ldd closure (library, where it came from, carried or expected on the device) and sizes
# and fails (exit 1) when the folder is over TL_BUNDLE_MAX_MIB (default 56: the device tool carries 64 MiB in
# all, the working tree included). Prints the size and the closure last.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MAX_MIB=${TL_BUNDLE_MAX_MIB:-56}

# libraries that must come from the device (or any CUDA image): name patterns of `ldd`'s first column
SYSTEM_RE='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libgcc_s\.so|libstdc\+\+\.so|libcuda\.so|libcublas\.so|libcublasLt\.so|libnccl\.so)'

check() { # BUNDLE_DIR: size and closure; exit 1 when over the limit or when a carried library is missing
    local d=$1 kib mib missing=0
    [ -x "$d/bin/tailor" ] || { echo "gpu_bundle: $d/bin/tailor is missing" >&2; return 1; }
    kib=$(du -sk "$d" | cut -f1)
    mib=$(((kib + 1023) / 1024))
    echo "gpu_bundle: $d: $mib MiB (limit $MAX_MIB MiB; the device tool carries 64 MiB in all)"
    du -sk "$d"/bin/* "$d"/lib.tar.xz "$d"/demo 2>/dev/null | awk '{ printf "  %8.1f MiB  %s\n", $1 / 1024, $2 }'
    local carried
    carried=$(tar -tJf "$d/lib.tar.xz" | sed 's#^lib/##')
    echo "gpu_bundle: ldd closure of bin/tailor (carried in lib/ or expected on the device):"
    local name path
    while read -r name path; do
        if grep -qxF "$name" <<<"$carried"; then echo "  carried   $name"
        elif [[ $name =~ $SYSTEM_RE ]]; then echo "  device    $name"
        else echo "  MISSING   $name ($path)"; missing=1; fi
    done < <(ldd "$d/bin/tailor" | awk '$2 == "=>" { print $1, $3 } $2 != "=>" { print $1, "-" }' | sed 's#^/.*/##')
    [ "$missing" = 0 ] || { echo "gpu_bundle: FAIL: a library is neither carried nor a device library" >&2; return 1; }
    [ "$mib" -le "$MAX_MIB" ] || { echo "gpu_bundle: FAIL: $mib MiB is over $MAX_MIB MiB" >&2; return 1; }
    echo "gpu_bundle: ok"
}

if [ "${1:-}" = --check ]; then
    check "${2:?usage: scripts/gpu_bundle.sh --check BUNDLE_DIR}"
    exit
fi
BINS="tailor tl_dist_check gpu_test_cuda_ops gpu_test_decode_ops tl_bench tl_bench_ops"
ARCH=${TL_GPU_ARCH:-90}
if [ "${1:-}" = --from-build ]; then
    BUILD=${2:?usage: scripts/gpu_bundle.sh --from-build BUILD_DIR BUNDLE_DIR}
    OUT=${3:?usage: scripts/gpu_bundle.sh --from-build BUILD_DIR BUNDLE_DIR}
    for b in $BINS; do
        [ -x "$BUILD/$b" ] || { echo "SKIPPED: $BUILD/$b is not built (a build with the CUDA backend has it)"; exit 77; }
    done
    if grep -q '^TAILOR_NATIVE:BOOL=ON' "$BUILD/CMakeCache.txt" 2>/dev/null; then
        echo "gpu_bundle: note: $BUILD has TAILOR_NATIVE=ON: its CPU kernels need this machine's instruction set," \
             "which the device's host may lack (a bundle for the trip: scripts/gpu_bundle.sh without --from-build)"
    fi
else
    OUT=${1:-build-gpu-carry}
    BUILD=${TL_BUNDLE_BUILD:-build-gpu-bundle}
    export PATH="/usr/local/cuda/bin:$PATH"
    command -v nvcc >/dev/null || { echo "gpu_bundle: nvcc not found: the bundle needs the CUDA toolkit here" >&2; exit 1; }
    # TAILOR_NATIVE=OFF: the device's host CPU is not this one (an AVX-512 build would stop there on SIGILL)
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTAILOR_CUDA=ON -DTAILOR_CUDA_ARCHS="$ARCH" -DTAILOR_MPI=OFF \
        -DTAILOR_NATIVE=OFF >"$BUILD.log" 2>&1 || { tail -20 "$BUILD.log"; exit 1; }
    # shellcheck disable=SC2086
    cmake --build "$BUILD" -j"${TL_BUNDLE_JOBS:-2}" --target $BINS >>"$BUILD.log" 2>&1 || { tail -20 "$BUILD.log"; exit 1; }
    grep -q "NCCL ON" "$BUILD.log" || echo "gpu_bundle: note: built without NCCL (no nccl.h / libnccl here)"
fi
"$BUILD/tailor" version | grep -q cuda || { echo "gpu_bundle: $BUILD/tailor has no CUDA backend" >&2; exit 1; }

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/bin" "$OUT.tmp/lib"
for b in $BINS; do
    cp "$BUILD/$b" "$OUT.tmp/bin/"
    strip --strip-debug "$OUT.tmp/bin/$b"
done
{
    echo "# gpu_bundle $(date -u +%Y-%m-%dT%H:%MZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?'), sm_$ARCH"
    echo "# library  path-here  carried|device"
} >"$OUT.tmp/MANIFEST.txt"
for b in "$OUT.tmp"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u |
    while read -r name path; do
        if [[ $name =~ $SYSTEM_RE ]]; then
            echo "$name $path device" >>"$OUT.tmp/MANIFEST.txt"
        else
            cp -L "$path" "$OUT.tmp/lib/$name"
            strip --strip-unneeded "$OUT.tmp/lib/$name" 2>/dev/null || true
            echo "$name $path carried" >>"$OUT.tmp/MANIFEST.txt"
        fi
    done
XZ_OPT=${XZ_OPT:--6 -T2} tar -C "$OUT.tmp" -cJf "$OUT.tmp/lib.tar.xz" lib
rm -rf "$OUT.tmp/lib"

# the quickstart's demo data, tokenized with the model's tokenizer (the model itself is too large to carry)
M=models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$M" ]; then
    mkdir -p "$OUT.tmp/demo"
    for part in sft_train sft_eval; do
        "$BUILD/tailor" data build "demo/$part.jsonl" "$OUT.tmp/demo/$part.h5" --model "$M" >/dev/null
    done
else
    echo "gpu_bundle: note: $M absent: no demo data in the bundle (gpu_check's quickstart step will be skipped)"
fi

cat >"$OUT.tmp/env.sh" <<'SH'
# env.sh (sourced): libraries of this bundle first, then the device's CUDA libraries wherever that image keeps them.
TL_BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TL_BUNDLE_LIB=$TL_BUNDLE/lib
if [ ! -f "$TL_BUNDLE_LIB/.unpacked" ]; then
    # beside the bundle, or under /tmp where the bundle's folder is read-only
    if ! { mkdir -p "$TL_BUNDLE_LIB" 2>/dev/null && [ -w "$TL_BUNDLE_LIB" ]; }; then
        TL_BUNDLE_LIB=${TMPDIR:-/tmp}/tailor-bundle-lib.$(id -u)
    fi
    if [ ! -f "$TL_BUNDLE_LIB/.unpacked" ]; then
        mkdir -p "$TL_BUNDLE_LIB" && tar -C "$TL_BUNDLE_LIB" --strip-components=1 -xJf "$TL_BUNDLE/lib.tar.xz" &&
            touch "$TL_BUNDLE_LIB/.unpacked" || echo "bundle: cannot unpack $TL_BUNDLE/lib.tar.xz into $TL_BUNDLE_LIB" >&2
    fi
fi
tl_bundle_dirs() {
    local want d
    for want in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
        d=$(ldconfig -p 2>/dev/null | awk -v w="$want" '$1 == w { print $NF; exit }')
        if [ -n "$d" ]; then dirname "$d"; continue; fi
        for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 /usr/local/cuda/lib \
            /usr/local/cuda/targets/x86_64-linux/lib \
            $(python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null |
                xargs -I{} sh -c 'ls -d {}/nvidia/*/lib {}/nvidia/cu13/lib 2>/dev/null'); do
            [ -e "$d/$want" ] && { echo "$d"; break; }
        done
    done | awk '!seen[$0]++' | paste -sd:
}
export LD_LIBRARY_PATH="$TL_BUNDLE_LIB:$(tl_bundle_dirs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# one line per binary: ok, or the libraries that do not resolve
tl_bundle_check() {
    local b miss rc=0
    for b in "$TL_BUNDLE"/bin/*; do
        miss=$(ldd "$b" 2>&1 | awk '/not found/ { printf "%s ", $1 }')
        if [ -n "$miss" ]; then echo "bundle: $(basename "$b"): not found: $miss"; rc=1; else echo "bundle: $(basename "$b"): ok"; fi
    done
    return $rc
}
SH
cat >"$OUT.tmp/tailor" <<'SH'
#!/usr/bin/env bash
# the bundled tailor with its libraries (env.sh)
source "$(dirname "$(readlink -f "$0")")/env.sh"
exec "$TL_BUNDLE/bin/tailor" "$@"
SH
chmod +x "$OUT.tmp/tailor"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
check "$OUT"
