#!/usr/bin/env bash
# e2e_cuda: the CUDA backend end to end, against the CPU backend (the fp32 reference), through the tailor CLI.
#
#   TAILOR_BIN=... tests/gpu/e2e_cuda.sh OUTDIR [CHECK ...]
#
# CHECKs (default: all of them, in this order):
#   train       a tiny model trained E2E_STEPS steps (default 30) on cuda and on cpu: the loss of every step
#               within E2E_LOSS_TOL relative (default 2e-2, bf16), every adapter within E2E_ADAPTER_L2 relative
#               L2 (default 0.1: Adam turns a flipped sign of a near-zero gradient entry into a full step)
#   isolation   on cuda, one user trained alone vs mixed with two others (dropout on): relative L2 <= 0.05
#               (the bf16 base products of a batch of another size may round differently; leakage of other
#               users' data would move the adapter by O(1))
#   resume      on cuda, a run killed (SIGKILL) after a checkpoint and resumed ends bit-identical to an
#               uninterrupted cuda run
#   pref        a DPO step and a reward-model step (2 steps each) on cuda vs cpu: losses and adapters as train
#   generate    greedy `tailor generate` with the trained adapters, cuda vs cpu: how many answers are identical
#               (passes when more than half are; near-tied logits can flip under bf16)
#   quickstart  configs/quickstart.yaml on cuda for E2E_QS_STEPS steps (default 3) with its model and data when
#               present (models/, runs/demo/), else with E2E_QS_MODEL / E2E_QS_DATA (gpu_bundle.sh carries the
#               tokenized demo data; a random model of SmolLM2-135M's shape stands in for the weights)
#   memory      peak device memory reported by tailor (be->mem_stats) vs nvidia-smi's for the process during
#               the quickstart run: nvidia-smi >= tailor's, and the excess (CUDA context, cuBLAS modules) < 1 GiB
#
# Each check prints one line `E2E <check> PASS|FAIL|SKIPPED <detail> <seconds>` (also appended to
# OUTDIR/e2e.txt); logs and run directories go under OUTDIR/e2e/. Exit status 0 when no check failed.
# The binary must have the CUDA backend: the real one (scripts/gpu_check.sh) or the emulated one
# (tests/gpu/emu/run_emu.sh --tailor, ctest emu.train with E2E_STEPS=3 and the checks that need no nvidia-smi).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=${1:?usage: tests/gpu/e2e_cuda.sh OUTDIR [CHECK ...]}
shift
CHECKS=${*:-train isolation resume pref generate quickstart memory}
TL=${TAILOR_BIN:-$ROOT/build/tailor}
PY=${TL_PYTHON:-python3}
STEPS=${E2E_STEPS:-30}
LOSS_TOL=${E2E_LOSS_TOL:-2e-2}
ADAPTER_L2=${E2E_ADAPTER_L2:-0.1}
mkdir -p "$OUTDIR/e2e" && OUTDIR=$(cd "$OUTDIR" && pwd)
W=$OUTDIR/e2e
: >"$OUTDIR/e2e.txt"
FAILED=0

result() { # check status detail seconds
    local line
    line=$(printf 'E2E %-10s %-7s %s %s' "$1" "$2" "$3" "$4")
    echo "$line" | tee -a "$OUTDIR/e2e.txt"
    [ "$2" = FAIL ] && FAILED=1
    return 0
}
run_tl() { # LOG ARGS...: tailor with its output in LOG
    local log=$1
    shift
    "$TL" "$@" >"$log" 2>&1
}

if ! "$TL" version 2>/dev/null | grep -q 'cuda'; then
    echo "e2e_cuda: $TL has no CUDA backend ('$TL version' does not list cuda)" >&2
    exit 1
fi
if ! "$PY" -c 'import numpy, h5py' 2>/dev/null; then
    echo "e2e_cuda: $PY lacks numpy or h5py (the synthetic data writers need them)" >&2
    exit 1
fi

# the tiny model and data every check shares (vocab 64, hidden 48, 2 layers, GQA 4/2)
"$TL" make-model "$W/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 5 >/dev/null ||
    { echo "e2e_cuda: make-model failed" >&2; exit 1; }
"$PY" "$ROOT/scripts/make_sft_data.py" --out "$W/sft.h5" --users 3 --examples-per-user 24 --vocab 64 --seed 4 \
    >/dev/null || { echo "e2e_cuda: make_sft_data.py failed" >&2; exit 1; }

# config PATH OUTDIR TRAIN [yaml lines of train:] -- the SFT config of the checks
config() {
    local path=$1 out=$2 data=$3
    shift 3
    {
        echo "run: {name: e2e, output_dir: $out, seed: 1}"
        echo "model: {path: $W/model}"
        echo "adapter: {rank: 4, alpha: 8, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}"
        echo "data: {train: $data, max_seq_len: 48}"
        echo "train:"
        # defaults, unless the extra lines set the same key
        for l in "lr: 0.01" "micro_batch_tokens: 512" "examples_per_adapter: 3" "log_every: 1"; do
            case " $* " in *" ${l%%:*}:"*) ;; *) echo "  $l" ;; esac
        done
        for l in "$@"; do echo "  $l"; done
    } >"$path"
}

# compare_losses A/metrics.jsonl B/metrics.jsonl TOL: prints the worst relative loss difference; fails above TOL
compare_losses() {
    "$PY" - "$1" "$2" "$3" <<'PY'
import json, math, sys
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r}
a, b, tol = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3])
if not a or a.keys() != b.keys():
    sys.exit(f"logged steps differ: {sorted(a)} vs {sorted(b)}")
worst, at = 0.0, 0
for s in a:
    if not (math.isfinite(a[s]) and math.isfinite(b[s])):
        sys.exit(f"step {s}: non-finite loss {a[s]} vs {b[s]}")
    d = abs(a[s] - b[s]) / max(abs(b[s]), 1e-6)
    if d > worst:
        worst, at = d, s
print(f"{len(a)} steps, worst loss difference {worst:.2e} at step {at}")
sys.exit(1 if worst > tol else 0)
PY
}
# worst relative L2 over the adapters, from compare_adapters.py's output
worst_l2() { sed -nE 's/.*relative L2 ([0-9.e+-]+)\)/\1/p' "$1" | sort -g | tail -1; }

check_train() {
    config "$W/train.yaml" "$W/train-cpu" "$W/sft.h5" "steps: $STEPS" "checkpoint_every: 0"
    run_tl "$W/train-cpu.log" train "$W/train.yaml" train.backend=cpu || { echo "cpu run failed (train-cpu.log): $(tail -1 "$W/train-cpu.log")"; return 1; }
    run_tl "$W/train-cuda.log" train "$W/train.yaml" train.backend=cuda run.output_dir="$W/train-cuda" ||
        { echo "cuda run failed (train-cuda.log): $(tail -1 "$W/train-cuda.log")"; return 1; }
    local l a
    l=$(compare_losses "$W/train-cpu/metrics.jsonl" "$W/train-cuda/metrics.jsonl" "$LOSS_TOL" 2>&1) || { echo "$l"; return 1; }
    "$PY" "$ROOT/tests/lib/compare_adapters.py" "$W/train-cpu/adapters" "$W/train-cuda/adapters" "$ADAPTER_L2" --l2 \
        >"$W/train-adapters.txt" 2>&1
    local rc=$?
    a=$(worst_l2 "$W/train-adapters.txt")
    echo "$l; adapters relative L2 <= ${a:-?} (tol $ADAPTER_L2)"
    return $rc
}

check_isolation() {
    "$PY" - "$W" <<'PY' || return 1
import sys, numpy as np, h5py
W = sys.argv[1]
def examples(seed, n):
    r = np.random.default_rng(seed)
    return [(r.integers(0, 64, int(L)).astype(np.int32), int(r.integers(0, L))) for L in r.integers(6, 30, n)]
A = examples(1, 12)
def write(path, users):
    names, toks, offs, pl, us = [], [], [0], [], []
    for ui, (name, exs) in enumerate(users):
        names.append(name)
        for t, p in exs:
            toks.append(t); offs.append(offs[-1] + len(t)); pl.append(p); us.append(ui)
    with h5py.File(path, "w") as f:
        f.attrs["tailor_format"] = 1; f.attrs["kind"] = "sft"
        f.create_dataset("users/name", data=np.array(names, dtype=h5py.string_dtype()))
        f.create_dataset("sft/tokens", data=np.concatenate(toks))
        f.create_dataset("sft/offsets", data=np.array(offs, dtype=np.int64))
        f.create_dataset("sft/prompt_len", data=np.array(pl, dtype=np.int32))
        f.create_dataset("sft/user", data=np.array(us, dtype=np.int32))
write(f"{W}/iso-alone.h5", [("alice", A)])
write(f"{W}/iso-mixed.h5", [("bob", examples(2, 10)), ("alice", A), ("carol", examples(3, 15))])
PY
    local steps=$((STEPS < 12 ? STEPS : 12)) d
    for d in alone mixed; do
        config "$W/iso-$d.yaml" "$W/iso-$d" "$W/iso-$d.h5" "steps: $steps" "checkpoint_every: 0" "backend: cuda" \
            "micro_batch_tokens: 96"
        sed -i 's/^adapter: .*/adapter: {rank: 4, alpha: 8, dropout: 0.2, targets: all-linear}/' "$W/iso-$d.yaml"
        run_tl "$W/iso-$d.log" train "$W/iso-$d.yaml" || { echo "cuda run '$d' failed (iso-$d.log): $(tail -1 "$W/iso-$d.log")"; return 1; }
    done
    # only alice is in both runs: compare her adapter alone
    mkdir -p "$W/iso-cmp/a/x" "$W/iso-cmp/b/x"
    "$PY" - "$W" <<'PY' || return 1
import json, shutil, sys
W = sys.argv[1]
for side, run in (("a", "iso-alone"), ("b", "iso-mixed")):
    idx = json.load(open(f"{W}/{run}/adapters/index.json"))
    a = [x for x in idx["adapters"] if x["name"] == "alice"][0]
    shutil.copy(f"{W}/{run}/adapters/{a['dir']}/adapter_model.safetensors", f"{W}/iso-cmp/{side}/x/")
    json.dump({"adapters": [{"name": "alice", "dir": "x", "steps": a.get("steps")}]},
              open(f"{W}/iso-cmp/{side}/index.json", "w"))
PY
    "$PY" "$ROOT/tests/lib/compare_adapters.py" "$W/iso-cmp/a" "$W/iso-cmp/b" 0.05 --l2 >"$W/iso-adapters.txt" 2>&1
    local rc=$?
    echo "alice alone vs mixed, $steps steps: relative L2 $(worst_l2 "$W/iso-adapters.txt") (tol 0.05)"
    return $rc
}

check_resume() {
    # 12 steps, checkpoints every 4, killed after 5 (the emulator: 3, every 1, killed after 2)
    local steps=$((STEPS < 6 ? 3 : STEPS)) every kill
    [ "$steps" -gt 12 ] && steps=12
    every=$((steps / 3))
    kill=$((every + 1))
    config "$W/res-a.yaml" "$W/res-straight" "$W/sft.h5" "steps: $steps" "checkpoint_every: $every" "backend: cuda"
    sed -i 's/^adapter: .*/adapter: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj, down_proj]}/' \
        "$W/res-a.yaml"
    sed "s#$W/res-straight#$W/res-killed#" "$W/res-a.yaml" >"$W/res-b.yaml"
    run_tl "$W/res-straight.log" train "$W/res-a.yaml" || { echo "straight cuda run failed"; return 1; }
    TAILOR_FAULT_KILL_AFTER_STEP=$kill "$TL" train "$W/res-b.yaml" >"$W/res-killed1.log" 2>&1
    local rc=$?
    [ $rc = 137 ] || { echo "the faulted run exited $rc, not 137 (SIGKILL after step $kill)"; return 1; }
    run_tl "$W/res-killed2.log" train "$W/res-b.yaml" || { echo "resumed cuda run failed"; return 1; }
    grep -q "resuming from" "$W/res-killed2.log" || { echo "the second run did not resume"; return 1; }
    "$PY" "$ROOT/tests/lib/compare_adapters.py" "$W/res-straight/adapters" "$W/res-killed/adapters" 0 \
        >"$W/res-adapters.txt" 2>&1 || { echo "resumed adapters differ from the straight run (res-adapters.txt)"; return 1; }
    echo "$steps steps, killed after $kill, resumed from step $every: bit-identical"
}

check_pref() {
    "$PY" "$ROOT/scripts/make_pref_data.py" --out "$W/pref.h5" --users 2 --pairs-per-user 8 --eval-pairs-per-user 2 \
        --vocab 64 --seed 1 >/dev/null || return 1
    local t out=""
    for t in dpo reward; do
        config "$W/$t.yaml" "$W/$t-cpu" "$W/pref.h5" "steps: 2" "checkpoint_every: 0" "examples_per_adapter: 2"
        echo "task: {type: $t}" >>"$W/$t.yaml"
        run_tl "$W/$t-cpu.log" train "$W/$t.yaml" train.backend=cpu || { echo "$t cpu run failed ($t-cpu.log): $(tail -1 "$W/$t-cpu.log")"; return 1; }
        run_tl "$W/$t-cuda.log" train "$W/$t.yaml" train.backend=cuda run.output_dir="$W/$t-cuda" ||
            { echo "$t cuda run failed ($t-cuda.log): $(tail -1 "$W/$t-cuda.log")"; return 1; }
        local l
        l=$(compare_losses "$W/$t-cpu/metrics.jsonl" "$W/$t-cuda/metrics.jsonl" "$LOSS_TOL" 2>&1) ||
            { echo "$t: $l"; return 1; }
        "$PY" "$ROOT/tests/lib/compare_adapters.py" "$W/$t-cpu/adapters" "$W/$t-cuda/adapters" "$ADAPTER_L2" --l2 \
            >"$W/$t-adapters.txt" 2>&1 || { echo "$t: adapters differ ($t-adapters.txt)"; return 1; }
        out="$out$t: ${l#* steps, }, L2 $(worst_l2 "$W/$t-adapters.txt"); "
    done
    echo "${out%; }"
}

check_generate() {
    [ -f "$W/train-cpu/adapters/index.json" ] || { echo "needs the train check's adapters"; return 1; }
    "$PY" -c 'import tokenizers' 2>/dev/null || { echo "SKIPPED: $PY lacks the tokenizers package"; return 77; }
    # a byte-level BPE over the model's 64 ids: 3 specials, 61 single bytes (every prompt below encodes)
    "$PY" - "$W/model" <<'PY' || return 1
import sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
chars = pre_tokenizers.ByteLevel.alphabet()
keep = sorted(c for c in chars if c.isalnum())[:61] if len(chars) > 61 else sorted(chars)
vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
for c in "abcdefghijklmnopqrstuvwxyz":
    vocab.setdefault(c, len(vocab))
for c in sorted(keep):
    if len(vocab) < 64:
        vocab.setdefault(c, len(vocab))
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
tok.save(f"{sys.argv[1]}/tokenizer.json")
PY
    local prompts=(hello abc xyz tailor lora gpu cuda adapter) p same=0 total=0 b
    for p in "${prompts[@]}"; do
        for b in cpu cuda; do
            "$TL" generate --model "$W/model" --run "$W/train-cpu" --all-users --base --prompt "$p" \
                --max-new-tokens 8 --backend $b >"$W/gen-$p-$b.txt" 2>"$W/gen-$p-$b.err" ||
                { echo "generate --backend $b '$p' failed: $(head -1 "$W/gen-$p-$b.err")"; return 1; }
        done
        local n s
        read -r n s < <("$PY" - "$W/gen-$p-cpu.txt" "$W/gen-$p-cuda.txt" <<'PY'
import sys
def answers(p):
    out, cur = {}, None
    for line in open(p, encoding="utf-8", errors="replace").read().split("\n"):
        if line.startswith("=== ") and line.endswith(" ==="):
            cur = line[4:-4]; out[cur] = ""
        elif cur is not None:
            out[cur] += line
    return out
a, b = answers(sys.argv[1]), answers(sys.argv[2])
print(len(a), sum(1 for k in a if b.get(k) == a[k]))
PY
        )
        total=$((total + n))
        same=$((same + s))
    done
    [ "$total" -gt 0 ] || { echo "no answers parsed"; return 1; }
    echo "$same of $total greedy answers identical (8 tokens, ${#prompts[@]} prompts x (adapters + base))"
    [ $((2 * same)) -gt "$total" ]
}

QS_PEAK=""
QS_BE=${E2E_QS_BACKEND:-cuda} # cpu only to try this script's logic on a machine without a GPU
check_quickstart() {
    local steps=${E2E_QS_STEPS:-3} model data_dir
    model=${E2E_QS_MODEL:-$ROOT/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
    data_dir=${E2E_QS_DATA:-$ROOT/runs/demo}
    [ -f "$data_dir/sft_train.h5" ] || { echo "SKIPPED: no tokenized demo data ($data_dir/sft_train.h5)"; return 77; }
    local what="SmolLM2-135M Q4_1"
    if [ ! -e "$model" ]; then
        # the weights cannot travel (96 MB): a random model of the same shape and vocabulary
        model=$W/qs-model
        "$TL" make-model "$model" --vocab 49152 --hidden 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536 --seed 1 \
            >"$W/qs-make-model.log" 2>&1 || { echo "make-model (SmolLM2 shape) failed"; return 1; }
        what="random model of SmolLM2-135M's shape"
    fi
    "$TL" train "$ROOT/configs/quickstart.yaml" train.backend="$QS_BE" train.steps="$steps" train.log_every=1 \
        model.path="$model" data.train="$data_dir/sft_train.h5" data.eval="$data_dir/sft_eval.h5" \
        run.output_dir="$W/quickstart" train.eval_every=0 >"$W/quickstart.log" 2>&1 &
    local pid=$! base=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        # device memory while it runs: per process where nvidia-smi can see processes, and the whole card's
        # used memory (minus what was used before) as the fallback inside containers that hide them
        base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
        : >"$W/qs-smi.csv"
        while kill -0 $pid 2>/dev/null; do
            echo "card, $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)" \
                >>"$W/qs-smi.csv"
            nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
                awk -F', *' -v p=$pid '$1 == p { print "proc, " $2 }' >>"$W/qs-smi.csv"
            sleep 0.2
        done
        echo "base, ${base:-0}" >>"$W/qs-smi.csv"
    fi
    wait $pid
    local rc=$?
    [ $rc = 0 ] || { echo "quickstart on $QS_BE failed (exit $rc, quickstart.log): $(tail -1 "$W/quickstart.log")"; return 1; }
    QS_PEAK=$(sed -nE 's/.*GPU memory: .* peak ([0-9.]+) MiB allocated.*/\1/p' "$W/quickstart.log")
    local l
    l=$("$PY" -c 'import json,sys; r=[json.loads(x) for x in open(sys.argv[1]) if "\"loss\"" in x]; print(len(r), r[0]["loss"], r[-1]["loss"], r[-1].get("tokens_per_s"))' \
        "$W/quickstart/metrics.jsonl")
    set -- $l
    echo "$what, $1 steps: loss $2 -> $3, $4 tokens/s"
}

check_memory() {
    command -v nvidia-smi >/dev/null 2>&1 || { echo "SKIPPED: no nvidia-smi"; return 77; }
    [ -s "$W/qs-smi.csv" ] || { echo "needs the quickstart check's nvidia-smi samples"; return 1; }
    [ -n "$QS_PEAK" ] || { echo "tailor printed no GPU memory line (quickstart.log)"; return 1; }
    local smi how="for the process"
    smi=$(awk -F', *' '$1 == "proc" && $2 ~ /^[0-9]+$/ && $2 > m { m = $2 } END { print m + 0 }' "$W/qs-smi.csv")
    if [ "$smi" = 0 ]; then
        how="card used minus before"
        smi=$(awk -F', *' '$1 == "base" { b = $2 } $1 == "card" && $2 ~ /^[0-9]+$/ && $2 > m { m = $2 }
            END { print m - b }' "$W/qs-smi.csv")
    fi
    [ "$smi" -gt 0 ] 2>/dev/null || { echo "nvidia-smi showed no memory in use (qs-smi.csv)"; return 1; }
    echo "tailor peak $QS_PEAK MiB allocated, nvidia-smi peak $smi MiB ($how)"
    awk -v t="$QS_PEAK" -v s="$smi" 'BEGIN { exit !(s >= t && s - t < 1024) }'
}

for c in $CHECKS; do
    case $c in train | isolation | resume | pref | generate | quickstart | memory) ;;
    *) echo "e2e_cuda: unknown check '$c' (train isolation resume pref generate quickstart memory)" >&2; exit 2 ;;
    esac
    t0=$(date +%s)
    # in this shell (the quickstart check leaves its peak for the memory check); the detail is the last line
    "check_$c" >"$W/$c.out" 2>&1
    rc=$?
    detail=$(tail -1 "$W/$c.out")
    if [ "$rc" = 77 ]; then result "$c" SKIPPED "${detail#SKIPPED: }" "$(($(date +%s) - t0))s"
    elif [ "$rc" = 0 ]; then result "$c" PASS "$detail" "$(($(date +%s) - t0))s"
    else result "$c" FAIL "$detail" "$(($(date +%s) - t0))s"; fi
done
exit $FAILED
