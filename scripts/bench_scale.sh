#!/usr/bin/env bash
# bench_scale.sh: tailor at many users on one machine (issue 13, docs/scale.md). A random SmolLM2-135M-shaped model
# (written once by tl_bench --make-model), LoRA rank 4 on q_proj and v_proj, 64 adapters per step, one example of
# 16-64 tokens per adapter per step, 2 threads. Two runs, each in its own process, timed in one go:
#   small: the first 64 users only, every adapter resident (train.store off): the reference step time;
#   large: USERS users (default 10,000, 8 examples each) with the adapter store (train.store on).
# Prints, for each: steady step time (median of the steps after the first 3, checkpoint steps excluded), peak RSS,
# the store's bytes written and checkpoint times; then large/small. With --full the large run makes a whole pass
# over its users (ceil(USERS / 64) steps), then evaluates every user on one held-out example each, exports every
# adapter and writes report.html, and the table adds those times and sizes. With --prefetch it runs instead the
# large store run four times, train.store_prefetch off, on, on, off (the order cancels the second run's slower
# page-cache writes), and compares the store I/O the steps waited for, each setting's two runs averaged (with many
# more users than slots, e.g. --users 256 --steps 12: from step 5 on every step loads 64 records).
#
#   scripts/bench_scale.sh [--users N] [--steps N] [--full] [--prefetch] [--threads N] [--build DIR] [--model DIR]
#                          [--keep DIR]
#
# --steps: steps of each run without --full (default 24). --keep DIR keeps the runs and data in DIR (default: a
# temporary folder removed at the end). The build directory (default ./build, or $TL_BUILD) must hold tailor and
# tl_bench; they are built there if missing.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
users=10000 steps=24 full=0 threads=2 keep="" prefetch=0
build=${TL_BUILD:-$src/build}
model=/tmp/tailor_bench_smollm2_135m
python=${TL_PYTHON:-/usr/bin/python3}
[ -x "$src/.pyenv/bin/python" ] && python=${TL_PYTHON:-$src/.pyenv/bin/python}

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --full) full=1; shift ;;
    --prefetch) prefetch=1; shift ;;
    --threads) threads=${2:?}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    --keep) keep=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench_scale.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$users$steps$threads" in *[!0-9]*) echo "bench_scale.sh: --users, --steps, --threads take integers" >&2; exit 2 ;; esac
[ "$users" -ge 64 ] || { echo "bench_scale.sh: --users must be >= 64" >&2; exit 2; }

if [ ! -x "$build/tailor" ] || [ ! -x "$build/tl_bench" ]; then
  echo "== building tailor and tl_bench in $build"
  cmake -S "$src" -B "$build" -DTAILOR_CUDA=OFF >/dev/null
  cmake --build "$build" -j "$(nproc)" --target tailor tl_bench >/dev/null
fi
if [ ! -f "$model/model.safetensors" ] || [ ! -f "$model/config.json" ]; then
  echo "== writing the random model to $model"
  "$build/tl_bench" --make-model "$model"
fi
if [ -n "$keep" ]; then W=$keep; mkdir -p "$W"; else W=$(mktemp -d /tmp/tl_bench_scale.XXXXXX); trap 'rm -rf "$W"' EXIT; fi

echo "== data: $users users x 8 examples of 16-64 tokens, and 64 users alone"
gen() { "$python" "$src/scripts/make_sft_data.py" --out "$1" --eval-out "$2" --users "$3" --examples-per-user 8 \
        --eval-examples-per-user 1 --vocab 49152 --alphabet 64 --prompt-len 4 12 --response-len 12 52 --seed 7; }
[ -f "$W/large.h5" ] || gen "$W/large.h5" "$W/large_eval.h5" "$users"
[ -f "$W/small.h5" ] || gen "$W/small.h5" "$W/small_eval.h5" 64

large_steps=$steps
[ "$full" = 1 ] && large_steps=$(( (users + 63) / 64 ))
config() { # NAME DATA EVAL STORE STEPS CHECKPOINT_EVERY
  {
    echo "run: {name: $1, output_dir: $W/$1, seed: 1}"
    echo "model: {path: $model}"
    echo "adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}"
    if [ -n "$3" ]; then echo "data: {train: $2, eval: $3, max_seq_len: 64}"; else echo "data: {train: $2, max_seq_len: 64}"; fi
    echo "train: {backend: cpu, threads: $threads, steps: $5, adapters_per_step: 64, examples_per_adapter: 1,"
    echo "        micro_batch_tokens: 2048, lr: 0.001, log_every: 1, checkpoint_every: $6, keep_checkpoints: 2,"
    echo "        store: $4, resume: never}"
  } >"$W/$1.yaml"
}
ck=$(( large_steps / 3 > 8 ? large_steps / 3 : 8 ))
config small "$W/small.h5" "" off "$steps" 0
if [ "$full" = 1 ]; then config large "$W/large.h5" "$W/large_eval.h5" on "$large_steps" "$ck"
else config large "$W/large.h5" "" on "$large_steps" "$ck"; fi

export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads OMP_WAIT_POLICY=passive
load_before=$(cut -d' ' -f1 /proc/loadavg)
uptime_before=$(uptime)
run() { # NAME: train under /usr/bin/time; its peak RSS (KiB) and wall seconds in NAME.time
  echo "== train $1 ($(grep -o 'steps: [0-9]*' "$W/$1.yaml" | head -1))"
  /usr/bin/time -f "%M %e" -o "$W/$1.time" "$build/tailor" train "$W/$1.yaml" >"$W/$1.out" 2>"$W/$1.err" ||
    { cat "$W/$1.out" "$W/$1.err"; echo "bench_scale.sh: the $1 run failed" >&2; exit 1; }
  grep -E "^checkpoint at|^eval on|^exported" "$W/$1.err" "$W/$1.out" | sed 's/^[^:]*://' | sed 's/^/   /' || true
}
if [ "$prefetch" = 1 ]; then
  config pf_off "$W/large.h5" "" "on, store_prefetch: false" "$steps" "$ck"
  config pf_on "$W/large.h5" "" "on, store_prefetch: true" "$steps" "$ck"
  config pf_on2 "$W/large.h5" "" "on, store_prefetch: true" "$steps" "$ck"
  config pf_off2 "$W/large.h5" "" "on, store_prefetch: false" "$steps" "$ck"
  # each run starts with no dirty pages of the others' records left to flush (the write-backs are page-cache writes)
  for r in pf_off pf_on pf_on2 pf_off2; do sync; run $r; rm -rf "$W/$r/store" "$W/$r/adapters" "$W/$r/checkpoints"; done
  uptime_after=$(uptime)
  "$python" - "$W" "$users" "$uptime_before" "$uptime_after" <<'PY'
import json, re, statistics, sys
W, users, ub, ua = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def one(name):
    recs = [json.loads(l) for l in open(f"{W}/{name}/metrics.jsonl") if '"loss"' in l]
    t = [r["elapsed_s"] for r in recs]
    dt = [b - a for a, b in zip(t, t[1:])]
    wall = float(open(f"{W}/{name}.time").read().split()[-1])
    m = None
    for l in open(f"{W}/{name}.err"):
        m = re.search(r"loaded (\d+) from records \((\d+) prefetched\), initialized (\d+), wrote back (\d+): "
                      r"([\d.]+) s of store I/O waited on by the steps and checkpoints \(([\d.]+) s writing back, ([\d.]+) s "
                      r"waiting for the I/O thread\), ([\d.]+) s read and ([\d.]+) s written in the background", l) or m
    if not m: sys.exit(f"bench_scale.sh: no store I/O line in {W}/{name}.err")
    return dict(wall=wall, step=statistics.median(dt[3:] or dt), loads=int(m.group(1)), pf=int(m.group(2)),
                wb=int(m.group(4)), waited=float(m.group(5)), wb_s=float(m.group(6)), wait=float(m.group(7)),
                bg=float(m.group(8)), bgw=float(m.group(9)), steps=len(recs))
runs = {n: one(n) for n in ("pf_off", "pf_on", "pf_on2", "pf_off2")}
def mean2(x, y):
    return {k: (x[k] + y[k]) / 2 if isinstance(x[k], float) else x[k] for k in x}
a, b = mean2(runs["pf_off"], runs["pf_off2"]), mean2(runs["pf_on"], runs["pf_on2"])
print()
print("each run (off, on, on, off): waited / writing back / background (s): " +
      ", ".join(f"{runs[n]['waited']:.1f}/{runs[n]['wb_s']:.1f}/{runs[n]['bg']:.1f}" for n in runs))
print(f"adapter store prefetch: {users} users, 64 adapters per step, {a['steps']} steps, rank 4 on q_proj and v_proj")
print(f"{'(means of two runs each)':44s} {'prefetch off':>13s} {'prefetch on':>13s} {'on/off':>8s}")
for k, label in [("waited", "store I/O waited for, with checkpoints (s)"), ("wb_s", "  of which writing back (s)"),
                 ("wait", "  of which waiting for the I/O thread (s)"), ("bg", "store reads in the background (s)"),
                 ("step", "step time (s, median after step 4)"), ("wall", "wall time of the run (s)")]:
    r = f"{b[k] / a[k]:8.2f}" if a[k] > 0 else f"{'-':>8s}"
    print(f"{label:44s} {a[k]:13.2f} {b[k]:13.2f} {r}")
    if k == "wb_s":
        print(f"{'  of which loads and initializations (s)':44s} {a['waited'] - a['wb_s'] - a['wait']:13.2f} "
              f"{b['waited'] - b['wb_s'] - b['wait']:13.2f}")
print(f"{'records loaded (prefetched) / written back':44s} {a['loads']:>6d} ({a['pf']:>3d}) {b['loads']:>6d} ({b['pf']:>3d})"
      f"   {a['wb']}/{b['wb']}")
print(f"uptime before: {ub.strip()}")
print(f"uptime after:  {ua.strip()}")
PY
  losses() { grep -E '"loss"' "$W/$1/metrics.jsonl" | sed 's/"tokens_per_s":[^,}]*//; s/"elapsed_s":[^,}]*//; s/"rss_mib":[^,}]*//'; }
  for r in pf_on pf_on2 pf_off2; do
    cmp <(losses pf_off) <(losses $r) >/dev/null || { echo "bench_scale.sh: $r's losses differ from pf_off's" >&2; exit 1; }
  done
  echo "losses: identical in the four runs"
  exit 0
fi
run small
run large
report_s=""
if [ "$full" = 1 ]; then
  t0=$(date +%s.%N)
  "$build/tailor" report "$W/large" >"$W/report.out" 2>&1 || { cat "$W/report.out"; exit 1; }
  report_s=$(echo "$(date +%s.%N) - $t0" | bc)
fi
load_after=$(cut -d' ' -f1 /proc/loadavg)

"$python" - "$W" "$users" "$full" "$load_before" "$load_after" "$report_s" <<'PY'
import json, os, re, statistics, sys
W, users, full, la, lb, report_s = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5], sys.argv[6]
def steps(name):
    recs = [json.loads(l) for l in open(f"{W}/{name}/metrics.jsonl") if '"loss"' in l]
    t = [r["elapsed_s"] for r in recs]
    dt = [b - a for a, b in zip(t, t[1:])]
    ck = set()
    for l in open(f"{W}/{name}.err"):
        m = re.match(r"checkpoint at step (\d+)", l)
        if m: ck.add(int(m.group(1)))
    # steady: after the first 3 steps, leaving out the steps whose interval holds a checkpoint
    steady = [d for r, d in zip(recs[1:], dt) if r["step"] > 3 and (r["step"] - 1) not in ck] or dt or [t[0]]
    tok = [r["tokens"] for r in recs[3:]]
    return statistics.median(steady), statistics.mean(tok), len(recs)
def rss_wall(name):
    kb, wall = open(f"{W}/{name}.time").read().split()[-2:]
    return int(kb) / 1024, float(wall)
def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) if os.path.exists(path) else 0
(s_t, s_tok, s_n), (l_t, l_tok, l_n) = steps("small"), steps("large")
(s_rss, s_wall), (l_rss, l_wall) = rss_wall("small"), rss_wall("large")
cks = [(int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4)))
       for m in (re.match(r"checkpoint at step (\d+): ([\d.]+) MiB of adapter records since the last one \((\d+) "
                          r"adapter\(s\)\), manifest of \d+ adapter\(s\), ([\d.]+) s", l) for l in open(f"{W}/large.err")) if m]
print()
print(f"SmolLM2-135M shape, rank 4 on q_proj and v_proj, 64 adapters per step, 1 example (16-64 tokens) each, "
      f"{os.environ.get('OMP_NUM_THREADS')} threads")
print(f"{'':38s} {'64 users':>14s} {f'{users} users':>14s} {'ratio':>8s}")
print(f"{'steady step time (s, median)':38s} {s_t:14.3f} {l_t:14.3f} {l_t / s_t:8.2f}")
print(f"{'tokens per step (mean)':38s} {s_tok:14.0f} {l_tok:14.0f}")
print(f"{'tokens/s (steady)':38s} {s_tok / s_t:14.1f} {l_tok / l_t:14.1f} {(l_tok / l_t) / (s_tok / s_t):8.2f}")
print(f"{'peak RSS (MiB)':38s} {s_rss:14.0f} {l_rss:14.0f} {l_rss / s_rss:8.2f}")
print(f"{'steps / wall time of the run (s)':38s} {s_n:>7d}/{s_wall:<6.0f} {l_n:>7d}/{l_wall:<6.0f}")
print(f"{'store on disk (MiB)':38s} {'':14s} {du(f'{W}/large/store') / 2**20:14.1f}")
for st, mib, nad, secs in cks:
    print(f"{f'checkpoint at step {st}':38s} {'':14s} {f'{mib:.1f} MiB, {nad} adapters, {secs:.2f} s':>30s}")
if full:
    ev = json.load(open(f"{W}/large/eval.json"))
    n_eval = len(ev.get("adapters", []))
    print(f"{'eval.json adapters':38s} {'':14s} {n_eval:14d}")
    idx = json.load(open(f"{W}/large/adapters/index.json"))
    print(f"{'exported adapters / MiB':38s} {'':14s} {len(idx['adapters']):>7d}/{du(f'{W}/large/adapters') / 2**20:<6.0f}")
    print(f"{'report.html (KiB) / time (s)':38s} {'':14s} {os.path.getsize(f'{W}/large/report.html') / 1024:>7.0f}/{float(report_s):<6.1f}")
note = "" if float(la) <= 0.5 and float(lb) <= 2.5 else ": other processes shared the CPU, timings are noisy"
print(f"load average {la} before, {lb} after{note}")
PY
