#!/usr/bin/env bash
# bench_cpu.sh: tailor vs PyTorch on the CPU, one LoRA SFT training step (forward + backward + AdamW) on a random
# SmolLM2-135M-shaped model (30 layers, hidden 576, 9/3 heads, head_dim 64, ffn 1536, vocab 49152, tied),
# rank 8 on all seven projections, one micro-batch of 4 x 256 tokens. Prints tokens/s and peak RSS of each and
# the ratios tailor/torch. Each side runs in its own process (peak RSS = that process's ru_maxrss).
#
#   scripts/bench_cpu.sh [--threads N] [--adapters A] [--steps N] [--warmup N] [--seqs S] [--seq-len T]
#                        [--omp-wait passive|active|unset] [--torch-malloc jemalloc|glibc] [--gemm auto|tailor|openblas]
#                        [--build DIR] [--model DIR]
#
# Besides wall-clock tokens/s both sides report the process CPU seconds of the median step (torch/tailor is
# printed, so above 1 means tailor needs less CPU): the steadier figure when other jobs share the cores.
# tl_bench also prints the step's FLOP rate as a fraction of the machine's sgemm rate measured in the same run.
# --adapters 4 (default): one adapter per sequence, mixed in one batch; --adapters 1: one shared adapter. With
# several adapters the torch side stacks each projection's adapters and runs each adapter's LoRA product on its
# own rows, all in one torch.bmm (bench_cpu_torch.py, --lora-impl), with per-adapter clipping and one AdamW.
# The model is written once by tl_bench --make-model (about 540 MB, default /tmp/tailor_bench_smollm2_135m).
# The build directory (default ./build, or $TL_BUILD) must hold tl_bench; it is built there if missing.
# --omp-wait sets OMP_WAIT_POLICY for both (default passive): torch runs libgomp next to OpenBLAS's own pthread
# pool, and spinning OpenMP workers starve the BLAS threads whenever the cores are shared (with 2 threads on a busy
# 2-core machine, steps were 7-25x slower); "unset" leaves the environment. With passive, tl_bench also gets
# GOMP_SPINCOUNT=10000, what the `tailor` command sets for itself (trainer/cli/main.c: tailor runs OpenBLAS
# single-threaded, so a short spin before sleeping starves nothing); torch's OpenMP waits as the policy says.
# --torch-malloc jemalloc (default) runs torch with jemalloc keeping freed pages, as PyTorch's CPU guides advise;
# glibc is the plain figure (scripts/torch_malloc.sh says why: page faults were a third of torch's CPU time).
# --gemm sets TL_CPU_GEMM for tailor: which code runs its matrix products (auto, the default: tailor's AVX2 tiles
# where the CPU has AVX2 and FMA; openblas: OpenBLAS; kernels/cpu/cpu_mm.c). The summary line names the choice.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
threads=2 adapters=4 steps=5 warmup=2 seqs=4 seq_len=256 omp_wait=passive torch_malloc=jemalloc gemm=auto
build=${TL_BUILD:-$src/build}
model=/tmp/tailor_bench_smollm2_135m
python=${TL_PYTHON:-/usr/bin/python3}

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=${2:?}; shift 2 ;;
    --adapters) adapters=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --warmup) warmup=${2:?}; shift 2 ;;
    --seqs) seqs=${2:?}; shift 2 ;;
    --seq-len) seq_len=${2:?}; shift 2 ;;
    --omp-wait) omp_wait=${2:?}; shift 2 ;;
    --torch-malloc) torch_malloc=${2:?}; shift 2 ;;
    --gemm) gemm=${2:?}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench_cpu.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

if [ ! -x "$build/tl_bench" ]; then
  echo "== building tl_bench in $build"
  cmake -S "$src" -B "$build" -DTAILOR_CUDA=OFF >/dev/null
  cmake --build "$build" -j "$(nproc)" --target tl_bench >/dev/null
fi
if [ ! -f "$model/model.safetensors" ] || [ ! -f "$model/config.json" ]; then
  echo "== writing the random model to $model"
  "$build/tl_bench" --make-model "$model"
fi

# shellcheck source=scripts/torch_malloc.sh
. "$src/scripts/torch_malloc.sh"
torch_malloc_env "$torch_malloc" || exit 2

export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
if [ "$omp_wait" != unset ]; then export OMP_WAIT_POLICY=$omp_wait; fi
common=(--model "$model" --threads "$threads" --adapters "$adapters" --warmup "$warmup" --steps "$steps"
        --seqs "$seqs" --seq-len "$seq_len")
log=$(mktemp -d /tmp/tl_bench_cpu.XXXXXX)
trap 'rm -rf "$log"' EXIT

load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "== tailor ($threads threads, $adapters adapter(s)); load average $load_before"
case $gemm in auto|tailor|openblas) ;; *) echo "bench_cpu.sh: --gemm $gemm: expected auto, tailor or openblas" >&2; exit 2 ;; esac
tailor_env=(TL_CPU_GEMM="$gemm") tailor_spin=unset
if [ "$omp_wait" = passive ]; then tailor_spin=10000 tailor_env+=(GOMP_SPINCOUNT=10000); fi
env "${tailor_env[@]}" "$build/tl_bench" "${common[@]}" | tee "$log/tailor.txt"
echo "== torch ($threads threads, $adapters adapter(s), malloc $torch_malloc)"
env "${torch_env[@]}" "$python" "$src/scripts/bench_cpu_torch.py" "${common[@]}" | tee "$log/torch.txt"

get() { grep '^RESULT ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
load_after=$(cut -d' ' -f1 /proc/loadavg)
for k in tokens_per_s tokens_per_s_mean cpu_s_median peak_rss_mb rss_after_load_mb loss0; do
  eval "tl_$k=\$(get \"\$log/tailor.txt\" $k)"
  eval "pt_$k=\$(get \"\$log/torch.txt\" $k)"
done

echo
echo "LoRA SFT step, SmolLM2-135M shape, $seqs x $seq_len tokens, rank 8 x 7 targets, $adapters adapter(s)," \
  "$threads threads, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset} (tailor: GOMP_SPINCOUNT=$tailor_spin," \
  "products: $(grep -m1 '^tl_bench: products:' "$log/tailor.txt" | sed 's/^tl_bench: products: //')), torch malloc $torch_malloc"
awk -v a="$tl_tokens_per_s" -v b="$pt_tokens_per_s" -v c="$tl_peak_rss_mb" -v d="$pt_peak_rss_mb" \
    -v e="$tl_rss_after_load_mb" -v f="$pt_rss_after_load_mb" -v g="$tl_loss0" -v h="$pt_loss0" \
    -v am="$tl_tokens_per_s_mean" -v bm="$pt_tokens_per_s_mean" -v la="$load_before" -v lb="$load_after" \
    -v thr="$threads" -v tc="$tl_cpu_s_median" -v pc="$pt_cpu_s_median" 'BEGIN {
  printf "%-26s %14s %14s %16s\n", "", "tailor", "torch", "tailor/torch"
  printf "%-26s %14.1f %14.1f %16.2f\n", "tokens/s (median step)", a, b, a / b
  printf "%-26s %14.1f %14.1f %16.2f\n", "tokens/s (mean)", am, bm, am / bm
  printf "%-26s %14.3f %14.3f %16.2f\n", "CPU s per step (median)", tc, pc, pc / tc
  printf "%-26s %14.0f %14.0f %16.2f\n", "peak RSS (MiB)", c, d, c / d
  printf "%-26s %14.0f %14.0f %16.2f\n", "RSS after model load (MiB)", e, f, e / f
  printf "%-26s %14.6f %14.6f\n", "first-step loss", g, h
  rel = (g - h) / h; if (rel < 0) rel = -rel
  if (la + 0 > 0.5 || lb + 0 > thr + 0.5)
    printf "note: load average %s before, %s after: other processes shared the CPU, timings are noisy\n", la, lb
  if (rel > 1e-3) { printf "WARNING: first-step losses differ by %.2g (relative): not the same computation\n", rel; exit 1 }
}'
echo "tailor step: $(get "$log/tailor.txt" gflops) GFLOP/s of the $(get "$log/tailor.txt" sgemm_gflops) GFLOP/s" \
  "sgemm measured in this run (fraction $(get "$log/tailor.txt" sgemm_fraction) by wall-clock," \
  "$(get "$log/tailor.txt" sgemm_cpu_fraction) by CPU time)"
