#!/usr/bin/env bash
# bench_peft_seq.sh: U users trained at once by tailor vs U sequential runs of HF PEFT + torch (the way per-user
# methods such as OPPU train: one process, the model loaded once, a fresh adapter per user). Both sides train
# the same data (scripts/bench_peft_seq.py make-data: U users x E examples of T tokens, the first 4 prompt) for
# S steps of one example per user, LoRA rank 8 / alpha 16 / dropout 0 on all seven projections, AdamW lr 1e-4
# (no weight decay, constant schedule), gradient clipping at 1.0, on the random SmolLM2-135M-shaped model of
# tl_bench --make-model. tailor runs `tailor train` (all U adapters in every step: U x T tokens per step; its
# final checkpoint and PEFT export are part of its wall time); PEFT runs scripts/bench_peft_seq.py peft. Prints
# wall-clock and CPU seconds of each whole process, where each side's time went, and the ratios.
#
#   scripts/bench_peft_seq.sh [--users U] [--examples E] [--seq-len T] [--steps S] [--threads N] [--build DIR]
#                             [--model DIR] [--torch-malloc jemalloc|glibc]
#
# --torch-malloc jemalloc (default) runs the PEFT side with jemalloc keeping freed pages, as PyTorch's CPU guides
# advise; glibc is the plain figure (scripts/torch_malloc.sh).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
users=64 examples=2 seq_len=16 steps=2 threads=2 torch_malloc=jemalloc
build=${TL_BUILD:-$src/build}
model=/tmp/tailor_bench_smollm2_135m
python=${TL_PYTHON:-$src/.pyenv/bin/python}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users=${2:?}; shift 2 ;;
    --examples) examples=${2:?}; shift 2 ;;
    --seq-len) seq_len=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --threads) threads=${2:?}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    --torch-malloc) torch_malloc=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench_peft_seq.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
for x in "$build/tailor" "$build/tl_bench"; do
  [ -x "$x" ] || { echo "bench_peft_seq.sh: $x is missing (build tailor and tl_bench first)" >&2; exit 2; }
done
if [ ! -f "$model/model.safetensors" ] || [ ! -f "$model/config.json" ]; then
  echo "== writing the random model to $model"
  "$build/tl_bench" --make-model "$model"
fi

# shellcheck source=scripts/torch_malloc.sh
. "$src/scripts/torch_malloc.sh"
torch_malloc_env "$torch_malloc" || exit 2
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OMP_WAIT_POLICY=passive
T=$(mktemp -d /tmp/tl_bench_peft_seq.XXXXXX)
trap 'rm -rf "$T"' EXIT
"$python" "$src/scripts/bench_peft_seq.py" make-data "$T/data.h5" --users "$users" --examples "$examples" \
  --seq-len "$seq_len" --prompt-len 4
cat >"$T/train.yaml" <<YAML
run: {name: bench_peft_seq, output_dir: $T/run, seed: 0}
model: {path: $model}
adapter: {key: user, rank: 8, alpha: 16, dropout: 0.0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
data: {train: $T/data.h5, max_seq_len: $seq_len}
task: {type: sft}
train: {backend: cpu, threads: $threads, steps: $steps, examples_per_adapter: 1, micro_batch_tokens: $((users * seq_len)), lr: 1.0e-4, schedule: constant, warmup_steps: 0, weight_decay: 0.0, grad_clip: 1.0, log_every: 1}
YAML

load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "== tailor: $users users at once, $steps steps ($users x $seq_len tokens per step), $threads threads; load $load_before"
# tailor chooses its own OpenMP waiting (trainer/cli/main.c), as a user's run does
env -u OMP_WAIT_POLICY /usr/bin/time -f "TIME wall=%e cpu=%U+%S rss_kb=%M" "$build/tailor" train "$T/train.yaml" >"$T/tailor.txt" 2>&1 ||
  { cat "$T/tailor.txt"; exit 1; }
tail -n 4 "$T/tailor.txt"
echo "== peft + torch: $users users one after another, $steps steps each (1 x $seq_len tokens per step), malloc $torch_malloc"
env "${torch_env[@]}" /usr/bin/time -f "TIME wall=%e cpu=%U+%S rss_kb=%M" "$python" "$src/scripts/bench_peft_seq.py" peft --model "$model" \
  --data "$T/data.h5" --steps "$steps" --threads "$threads" >"$T/peft.txt" 2>&1 || { cat "$T/peft.txt"; exit 1; }
grep -v '^RESULT' "$T/peft.txt" | tail -n 3
load_after=$(cut -d' ' -f1 /proc/loadavg)

tf() { sed -n "s/^TIME .*$2=\([^ ]*\).*/\1/p" "$1"; }
tl_wall=$(tf "$T/tailor.txt" wall) tl_cpu=$(tf "$T/tailor.txt" cpu | bc -l)
pt_wall=$(tf "$T/peft.txt" wall) pt_cpu=$(tf "$T/peft.txt" cpu | bc -l)
# tailor's steps: elapsed_s of its last step record (from the start of training to the end of the last step; the
# per-adapter records that follow a step's line carry no time)
tl_steps=$(grep '"elapsed_s"' "$T/run/metrics.jsonl" | tail -n 1 | sed -n 's/.*"elapsed_s": \([0-9.]*\).*/\1/p')
get() { grep '^RESULT ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo
echo "$users users x $steps steps x $seq_len tokens, rank 8 x 7 targets, $threads threads, SmolLM2-135M shape"
awk -v tw="$tl_wall" -v tc="$tl_cpu" -v ts="$tl_steps" -v pw="$pt_wall" -v pc="$pt_cpu" \
    -v pl="$(get "$T/peft.txt" load_s)" -v pset="$(get "$T/peft.txt" setup_s)" \
    -v pf="$(get "$T/peft.txt" forward_s)" -v pb="$(get "$T/peft.txt" backward_s)" \
    -v po="$(get "$T/peft.txt" optimizer_s)" -v la="$load_before" -v lb="$load_after" -v thr="$threads" 'BEGIN {
  printf "%-34s %12s %12s %14s\n", "", "tailor", "peft+torch", "peft/tailor"
  printf "%-34s %12.1f %12.1f %14.2f\n", "wall-clock, whole process (s)", tw, pw, pw / tw
  printf "%-34s %12.1f %12.1f %14.2f\n", "CPU time, whole process (s)", tc, pc, pc / tc
  printf "tailor: %.1f s in the training steps, %.1f s loading, checkpoint and PEFT export\n", ts, tw - ts
  printf "peft:   %.1f s loading; per-user adapter setup %.1f s, forward %.1f s, backward %.1f s, optimizer %.1f s\n", \
    pl, pset, pf, pb, po
  if (la + 0 > 0.5 || lb + 0 > thr + 0.5)
    printf "note: load average %s before, %s after: other processes shared the CPU, wall-clock is noisy\n", la, lb
}'
