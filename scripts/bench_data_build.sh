#!/usr/bin/env bash
# bench_data_build.sh: `tailor data build` on a large JSONL, a base tailor against this one, in one run (issue 13,
# docs/data-format.md). Writes a JSONL of USERS x EXAMPLES rows with scripts/make_scale_data.py (random English
# words, default 100,000 users x 9 rows, about 200 MB), builds it with both binaries (SmolLM2's tokenizer from its
# GGUF), one after the other, and prints for each: wall and CPU time, rows/s, peak RSS (/usr/bin/time -v), the
# output's size and storage layout; then `tailor inspect` of each output (open and validate, the reader train
# uses; both read by the new binary) and the ratios new/base. The two outputs must hold identical datasets
# (compared with h5py when the python env has it).
#
#   scripts/bench_data_build.sh --base BIN [--new BIN] [--users N] [--examples N] [--model PATH] [--keep DIR]
#
# --base: the tailor to compare against (e.g. one built from main before streaming: `git worktree add /tmp/base
# REV && cmake -S /tmp/base -B /tmp/base/build -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/base/build
# --target tailor`). --new: default build/tailor. --model: default models/smollm2-135m-instruct's GGUF.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base="" new=$src/build/tailor users=100000 examples=9 keep=""
model=$src/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
python=${TL_PYTHON:-/usr/bin/python3}
[ -x "$src/.pyenv/bin/python" ] && python=${TL_PYTHON:-$src/.pyenv/bin/python}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=${2:?}; shift 2 ;;
    --new) new=${2:?}; shift 2 ;;
    --users) users=${2:?}; shift 2 ;;
    --examples) examples=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    --keep) keep=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench_data_build.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$base" ] || { echo "bench_data_build.sh: --base BIN is required" >&2; usage; }
case "$users$examples" in *[!0-9]*) echo "bench_data_build.sh: --users and --examples take integers" >&2; exit 2 ;; esac
for b in "$base" "$new"; do [ -x "$b" ] || { echo "bench_data_build.sh: $b is not an executable" >&2; exit 2; }; done
[ -e "$model" ] || { echo "bench_data_build.sh: no model at $model (scripts/get_model.sh, or --model)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_data_build.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

if [ -n "$keep" ]; then mkdir -p "$keep"; dir=$keep; else dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT; fi
echo "date $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$python" "$src/scripts/make_scale_data.py" jsonl "$dir/in.jsonl" --users "$users" --examples "$examples"
mib=$(( $(stat -c %s "$dir/in.jsonl") / 1048576 ))
rows=$(( users * examples ))

# run NAME BIN: builds, keeps "wall cpu rss_kb" in $dir/NAME.stat
run() {
  local name=$1 bin=$2
  rm -f "$dir/$name.h5"
  /usr/bin/time -v "$bin" data build "$dir/in.jsonl" "$dir/$name.h5" --model "$model" >"$dir/$name.out" 2>"$dir/$name.time" \
    || { cat "$dir/$name.out" "$dir/$name.time"; echo "bench_data_build.sh: $name build failed" >&2; exit 1; }
  local wall cpu rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$dir/$name.time")
  cpu=$(awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {print u + s}' "$dir/$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/$name.time")
  echo "$wall $cpu $rss" >"$dir/$name.stat"
}
# inspect NAME: opens and validates the output with the new binary; "wall rss_kb" in $dir/NAME.inspect
inspect() {
  local name=$1
  /usr/bin/time -v "$new" inspect "$dir/$name.h5" >/dev/null 2>"$dir/$name.itime" || { cat "$dir/$name.itime"; exit 1; }
  awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; w = s}
              /Maximum resident set size/ {r = $2} END {print w, r}' "$dir/$name.itime" >"$dir/$name.inspect"
}
# the floor: a tailor process that does nothing (its shared libraries: CUDA, BLAS, MPI when linked)
floor() { /usr/bin/time -v "$1" version 2>&1 >/dev/null | awk -F': ' '/Maximum resident set size/ {print $2}'; }
floor_base=$(floor "$base") floor_new=$(floor "$new")
run base "$base"
run new "$new"
inspect base
inspect new
layout() {
  "$python" -c 'import sys, h5py
f = h5py.File(sys.argv[1], "r"); d = f["sft/tokens"]
print("chunked %d" % d.chunks[0] if d.chunks else "contiguous")' "$1" 2>/dev/null || echo "?"
}
same=unchecked
if "$python" -c "import h5py" 2>/dev/null; then
  same=$("$python" - "$dir/base.h5" "$dir/new.h5" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
def names(f):
    out = []
    f.visititems(lambda k, v: out.append(k) if isinstance(v, h5py.Dataset) else None)
    return sorted(out)
ok = names(a) == names(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k][:], b[k][:]) for k in names(a))
print("identical" if ok else "DIFFERENT")
PY
)
fi
printf '\ninput: %s rows from %s users, %s MiB of JSONL; outputs: %s\n' "$rows" "$users" "$mib" "$same"
printf '%-6s %9s %9s %10s %10s %9s  %-16s %10s %10s\n' side "wall s" "cpu s" "rows/s" "peak MiB" "out MiB" "tokens layout" "inspect s" "insp. MiB"
for s in base new; do
  read -r w c r <"$dir/$s.stat"
  read -r iw ir <"$dir/$s.inspect"
  printf '%-6s %9.1f %9.1f %10.0f %10.0f %9.0f  %-16s %10.2f %10.0f\n' $s "$w" "$c" "$(echo "$rows / $w" | bc -l)" \
    "$(echo "$r / 1024" | bc -l)" "$(echo "$(stat -c %s "$dir/$s.h5") / 1048576" | bc -l)" "$(layout "$dir/$s.h5")" "$iw" \
    "$(echo "$ir / 1024" | bc -l)"
done
read -r bw bc br <"$dir/base.stat"; read -r nw nc nr <"$dir/new.stat"
read -r biw bir <"$dir/base.inspect"; read -r niw nir <"$dir/new.inspect"
printf 'peak RSS above the floor of `tailor version` (base %.0f MiB, new %.0f MiB): base %.0f MiB, new %.0f MiB\n' \
  "$(echo "$floor_base / 1024" | bc -l)" "$(echo "$floor_new / 1024" | bc -l)" "$(echo "($br - $floor_base) / 1024" | bc -l)" \
  "$(echo "($nr - $floor_new) / 1024" | bc -l)"
printf 'new/base: wall %.2fx, cpu %.2fx, peak RSS %.2fx (above the floor %.2fx); inspect wall %.2fx\n' \
  "$(echo "$nw / $bw" | bc -l)" "$(echo "$nc / $bc" | bc -l)" "$(echo "$nr / $br" | bc -l)" \
  "$(echo "($nr - $floor_new) / ($br - $floor_base)" | bc -l)" "$(echo "$niw / $biw" | bc -l)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
