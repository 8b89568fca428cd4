#!/usr/bin/env bash
# bench_gpu.sh: tailor on one GPU against what users would run instead (PyTorch + HF transformers + PEFT), both
# sides in one run on the same GPU, printed as one table with ratios (docs/performance.md records it).
#
#   scripts/bench_gpu.sh [--dry-run] [--out DIR]
#
# Rows (Llama-3.2-1B-shaped random model: vocab 128256, hidden 2048, 16 layers, 32/8 heads, head dim 64, ffn 8192,
# tied embeddings, bf16 weights; LoRA rank 16, alpha 32, on all seven projections):
#   step 1 adapter     one SFT step (forward, backward, clip, AdamW) over 8 x 2048 tokens: tokens/s, MFU
#                      ((4 N_base + 6 N_lora + 6 L T Hq hd) FLOP per token over TL_GPU_PEAK_TFLOPS, default 989,
#                      the datasheet's dense bf16 of an H100/H200 SXM), peak device memory; torch + PEFT the same
#   1 vs 64 adapters   64 x 256 tokens, one adapter vs 64 adapters in the batch (equal tokens): tokens/s ratio
#   short sequences    256 x 64 tokens, 64 adapters
#   attention          causal GQA forward + backward at 8 x 2048, Hq 32, Hkv 8, hd 64: tailor's kernels vs
#                      torch's scaled_dot_product_attention (flash)
#   LM head + CE       16384 tokens, hidden 2048, vocab 128256, forward + backward: tailor's fused chunked op vs
#                      torch's logits + F.cross_entropy
#   64 users           64 users x 4 steps x 4 examples (about 190 tokens each): one `tailor train` vs 64 sequential
#                      torch + PEFT runs (model loaded once, a fresh adapter per user): wall-clock ratio
# Goals (recorded, not asserted): >= 45% MFU, >= 1.5x torch + PEFT tokens/s, <= 0.7x its memory, 64 adapters within
# 10% of 1, 64 users >= 20x faster.
#
# Binaries: TL_BIN_DIR (tailor, tl_bench, tl_bench_ops; default TL_BUILD_DIR or ./build); Python: TL_PYTHON
# (default python3; needs torch, transformers, peft, h5py, numpy). Logs and the table under --out (default a
# temporary folder). --dry-run: every row at a tiny shape on the CPU (both sides; tailor on its CPU backend), so
# that a typo cannot waste device time (ctest gpu.bench_dry_run). Exit status: 0 when every row ran.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
OUT=""
while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) DRY=1; shift ;;
    --out) OUT=${2:?}; shift 2 ;;
    *) echo "usage: scripts/bench_gpu.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
done
BIN=${TL_BIN_DIR:-${TL_BUILD_DIR:-$ROOT/build}}
PY=${TL_PYTHON:-python3}
PEAK=${TL_GPU_PEAK_TFLOPS:-989}
if [ -z "$OUT" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/bench_gpu.XXXXXX"); fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
for b in tailor tl_bench tl_bench_ops; do
    [ -x "$BIN/$b" ] || { echo "bench_gpu: $BIN/$b is missing (TL_BIN_DIR)" >&2; exit 1; }
done
if ! "$PY" -c 'import torch, transformers, peft, h5py, numpy' 2>/dev/null; then
    # the dry run is a test: where the packages are missing it is skipped (77), on the device it fails
    [ $DRY = 1 ] && { echo "SKIPPED: $PY lacks torch, transformers, peft, h5py or numpy"; exit 77; }
    echo "bench_gpu: $PY lacks torch, transformers, peft, h5py or numpy" >&2
    exit 1
fi

if [ $DRY = 1 ]; then
    BE=cpu DEV=cpu
    V=512 D=64 L=2 HQ=4 HKV=2 HD=16 F=128 R=4
    STEP_S=2 STEP_T=32 EQ_S=8 EQ_T=16 EQ_A=4 SH_S=16 SH_T=8 SH_A=4 CE_N=64
    U=3 U_STEPS=2 U_EX=2 U_LEN="4 8" STEPS=2 WARM=1 ITERS=2
else
    BE=cuda DEV=cuda
    V=128256 D=2048 L=16 HQ=32 HKV=8 HD=64 F=8192 R=16
    STEP_S=8 STEP_T=2048 EQ_S=64 EQ_T=256 EQ_A=64 SH_S=256 SH_T=64 SH_A=64 CE_N=16384
    U=64 U_STEPS=4 U_EX=4 U_LEN="64 128" STEPS=5 WARM=2 ITERS=10
    command -v nvidia-smi >/dev/null && nvidia-smi -L | head -1 >"$OUT/gpu.txt"
fi
echo "bench_gpu: $([ $DRY = 1 ] && echo 'dry run (CPU, tiny shapes)' || cat "$OUT/gpu.txt" 2>/dev/null); logs in $OUT"
FAILED=0
get() { grep '^RESULT ' "$1" 2>/dev/null | tail -1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
step() { # NAME LOG CMD...: runs one side, keeps its output in LOG
    local name=$1 log=$2
    shift 2
    local t0=$SECONDS
    "$@" >"$OUT/$log" 2>&1
    local rc=$?
    echo "bench_gpu: $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    if [ $rc != 0 ] || ! grep -q '^RESULT ' "$OUT/$log"; then
        FAILED=1
        tail -3 "$OUT/$log" | sed 's/^/    /'
    fi
}

M=$OUT/model
"$BIN/tailor" make-model "$M" --vocab $V --hidden $D --layers $L --heads $HQ --kv-heads $HKV --ffn $F --tie --bf16 \
    >"$OUT/make-model.log" 2>&1 || { echo "bench_gpu: make-model failed: $(tail -1 "$OUT/make-model.log")" >&2; exit 1; }

TLB=("$BIN/tl_bench" --model "$M" --backend $BE --rank $R --warmup $WARM --steps $STEPS --threads "$(nproc)")
TPY=("$PY" "$ROOT/scripts/bench_gpu_torch.py" --device $DEV)
step "tailor step 1 adapter" t_step.log "${TLB[@]}" --adapters 1 --seqs $STEP_S --seq-len $STEP_T
step "torch step" p_step.log "${TPY[@]}" --op step --model "$M" --rank $R --seqs $STEP_S --seq-len $STEP_T \
    --warmup $WARM --steps $STEPS
step "tailor 1 adapter (equal tokens)" t_eq1.log "${TLB[@]}" --adapters 1 --seqs $EQ_S --seq-len $EQ_T
step "tailor $EQ_A adapters" t_eq64.log "${TLB[@]}" --adapters $EQ_A --seqs $EQ_S --seq-len $EQ_T
step "tailor short sequences" t_short.log "${TLB[@]}" --adapters $SH_A --seqs $SH_S --seq-len $SH_T
step "tailor attention" t_attn.log "$BIN/tl_bench_ops" --op attn --backend $BE --seqs $STEP_S --seq-len $STEP_T \
    --hq $HQ --hkv $HKV --hd $HD --warmup $WARM --iters $ITERS
step "torch attention" p_attn.log "${TPY[@]}" --op attn --seqs $STEP_S --seq-len $STEP_T --hq $HQ --hkv $HKV \
    --hd $HD --warmup $WARM --iters $ITERS
step "tailor LM head + CE" t_ce.log "$BIN/tl_bench_ops" --op ce --backend $BE --tokens $CE_N --hidden $D --vocab $V \
    --warmup $WARM --iters $ITERS
step "torch LM head + CE" p_ce.log "${TPY[@]}" --op ce --tokens $CE_N --hidden $D --vocab $V --warmup $WARM \
    --iters $ITERS

# 64 users: the same examples for both sides
# shellcheck disable=SC2086
"$PY" "$ROOT/scripts/make_sft_data.py" --out "$OUT/users.h5" --users $U --examples-per-user $((U_STEPS * U_EX)) \
    --vocab $V --prompt-len $U_LEN --response-len $U_LEN --seed 3 >"$OUT/users-data.log" 2>&1 || FAILED=1
cat >"$OUT/users.yaml" <<Y
run: {name: bench_users, output_dir: $OUT/users-run, seed: 0}
model: {path: $M}
adapter: {key: user, rank: $R, alpha: $((2 * R)), targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
data: {train: $OUT/users.h5, max_seq_len: 512}
task: {type: sft}
train: {backend: $BE, steps: $U_STEPS, examples_per_adapter: $U_EX, micro_batch_tokens: 16384, lr: 1.0e-4, log_every: 1, checkpoint_every: 0}
Y
t0=$(date +%s.%N)
"$BIN/tailor" train "$OUT/users.yaml" >"$OUT/t_users.log" 2>&1
rc=$?
if [ $rc = 0 ]; then
    echo "RESULT impl=tailor op=users wall_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" \
        >>"$OUT/t_users.log"
else
    FAILED=1
    tail -3 "$OUT/t_users.log" | sed 's/^/    /'
fi
echo "bench_gpu: tailor $U users: exit $rc" | tee -a "$OUT/steps.txt"
step "torch $U users sequential" p_users.log "${TPY[@]}" --op users --model "$M" --data "$OUT/users.h5" --users $U \
    --steps $U_STEPS --examples $U_EX --rank $R

# ---- the table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
# FLOP per token: 4 N_base (forward + input gradient of every frozen product, the LM head included) + 6 N_lora +
# causal attention forward + backward (3 x 2 products x T/2 keys x Hq hd, per layer)
NB=$(awk -v V=$V -v D=$D -v L=$L -v q=$((HQ * HD)) -v kv=$((HKV * HD)) -v F=$F \
    'BEGIN { printf "%.0f", L * (D * q + 2 * D * kv + q * D + 3 * D * F) + V * D }')
NL=$(awk -v R=$R -v D=$D -v L=$L -v q=$((HQ * HD)) -v kv=$((HKV * HD)) -v F=$F \
    'BEGIN { printf "%.0f", L * R * ((D + q) + 2 * (D + kv) + (q + D) + 3 * (D + F)) }')
mfu() { # tokens/s seq_len adapters
    awk -v t="$1" -v T="$2" -v A="$3" -v nb="$NB" -v nl="$NL" -v L=$L -v h=$((HQ * HD)) -v P="$PEAK" \
        'BEGIN { if (t + 0 <= 0) { printf "-"; exit } f = 4 * nb + 6 * nl + 6 * L * T * h; printf "%.1f%%", 100 * t * f / (P * 1e12) }'
}
{
    echo
    echo "GPU benchmark $(date -u +%Y-%m-%d) $([ $DRY = 1 ] && echo '(DRY RUN: CPU, tiny shapes; the numbers mean nothing)' || cat "$OUT/gpu.txt" 2>/dev/null)"
    echo "model: vocab $V, hidden $D, $L layers, $HQ/$HKV heads x $HD, ffn $F, bf16; LoRA rank $R x 7 targets;" \
        "N_base $NB, N_lora $NL per adapter; MFU over $PEAK TFLOP/s"
    printf '%-34s %16s %16s %10s\n' "row" "tailor" "torch" "ratio"
    ts=$(get "$OUT/t_step.log" tokens_per_s) ps=$(get "$OUT/p_step.log" tokens_per_s)
    printf '%-34s %16s %16s %10s\n' "step $STEP_S x $STEP_T tokens/s" "$ts" "$ps" "$(ratio "$ts" "$ps")"
    printf '%-34s %16s %16s\n' "  MFU" "$(mfu "$ts" $STEP_T 1)" "$(mfu "$ps" $STEP_T 1)"
    tm=$(get "$OUT/t_step.log" peak_dev_mb) pm=$(get "$OUT/p_step.log" peak_dev_mb)
    printf '%-34s %16s %16s %10s\n' "  peak device memory (MiB)" "$tm" "$pm" "$(ratio "$tm" "$pm")"
    printf '%-34s %16s %16s\n' "  first-step loss" "$(get "$OUT/t_step.log" loss0)" "$(get "$OUT/p_step.log" loss0)"
    e1=$(get "$OUT/t_eq1.log" tokens_per_s) e64=$(get "$OUT/t_eq64.log" tokens_per_s)
    printf '%-34s %16s %16s %10s\n' "$EQ_S x $EQ_T: $EQ_A adapters vs 1 (tok/s)" "$e64" "$e1" "$(ratio "$e64" "$e1")"
    sh=$(get "$OUT/t_short.log" tokens_per_s)
    printf '%-34s %16s %16s %10s\n' "$SH_S x $SH_T, $SH_A adapters (tok/s)" "$sh" "" ""
    printf '%-34s %16s %16s\n' "  MFU" "$(mfu "$sh" $SH_T $SH_A)" ""
    ta=$(get "$OUT/t_attn.log" ms_median) pa=$(get "$OUT/p_attn.log" ms_median)
    printf '%-34s %16s %16s %10s\n' "attention fwd+bwd (ms; torch/tailor)" "$ta" "$pa" "$(ratio "$pa" "$ta")"
    printf '%-34s %16s %16s\n' "  TFLOP/s" "$(get "$OUT/t_attn.log" tflops)" "$(get "$OUT/p_attn.log" tflops)"
    tc=$(get "$OUT/t_ce.log" ms_median) pc=$(get "$OUT/p_ce.log" ms_median)
    printf '%-34s %16s %16s %10s\n' "LM head + CE fwd+bwd (ms; t/t)" "$tc" "$pc" "$(ratio "$pc" "$tc")"
    printf '%-34s %16s %16s\n' "  torch peak memory (MiB)" "" "$(get "$OUT/p_ce.log" peak_dev_mb)"
    tu=$(get "$OUT/t_users.log" wall_s) pu=$(get "$OUT/p_users.log" wall_s)
    printf '%-34s %16s %16s %10s\n' "$U users, wall s (torch/tailor)" "$tu" "$pu" "$(ratio "$pu" "$tu")"
    echo "goals: MFU >= 45%, tokens/s ratio >= 1.5, memory ratio <= 0.7, $EQ_A adapters vs 1 >= 0.9," \
        "users ratio >= 20 (recorded, not asserted)"
    [ $FAILED = 0 ] || echo "SOME ROWS FAILED: see $OUT/steps.txt and the logs beside it"
} | tee "$OUT/table.txt"
exit $FAILED
