# Faults across ranks never hang a run: (1) a rank that dies (SIGKILL after step 5) ends the whole job with a
# non-zero code and a line naming the dead rank; (2) a rank that hangs (SIGSTOP) makes the others give up after
# dist.timeout_s with a line naming the waiting rank and the collective, and the job ends non-zero. Both within
# a bounded time; without the fault handling (2) would hang forever.
source "$TAILOR_SRC/tests/lib/common.sh"
need_mpi
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 4 --examples-per-user 20 --eval-examples-per-user 4 --vocab 64 --seed 4
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "" "$T/run" "steps: 100000" "log_every: 1" "threads: 1" \
  "examples_per_adapter: 2"
echo "dist: {timeout_s: 5}" >>"$T/c.yaml"

# (1) rank 1 dies
t0=$(date +%s)
set +e
TAILOR_FAULT_KILL_AFTER_STEP=5 TAILOR_FAULT_KILL_RANK=1 timeout 120 "${MPIRUN[@]}" -np 2 "$TAILOR_BIN" train "$T/c.yaml" \
  >"$T/kill.out" 2>&1
rc=$?
set -e
dt=$(($(date +%s) - t0))
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { cat "$T/kill.out"; die "a dead rank: expected a non-zero exit before the timeout, got $rc"; }
tr '\r' '\n' <"$T/kill.out" | grep -Eq "rank 1 .*(signal 9|Killed)|rank 1 of 2" ||
  { cat "$T/kill.out"; die "no line names the dead rank 1"; }
echo "dead rank: job ended with code $rc after ${dt} s"
[ $dt -le 60 ] || die "a dead rank took ${dt} s to end the job"

# (2) rank 1 hangs: the test stops it once training is under way
rm -rf "$T/run"
timeout 120 "${MPIRUN[@]}" -np 2 "$TAILOR_BIN" train "$T/c.yaml" >"$T/hang.out" 2>&1 &
job=$!
for _ in $(seq 1 200); do
  [ -f "$T/run/metrics.jsonl" ] && [ "$(wc -l <"$T/run/metrics.jsonl")" -ge 3 ] && break
  sleep 0.05
done
victim=$(pgrep -f "tailor train $T/c.yaml" | while read -r p; do
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && echo "$p"; done | head -1)
[ -n "$victim" ] || { kill $job 2>/dev/null; die "could not find rank 1"; }
t0=$(date +%s)
kill -STOP "$victim"
set +e
wait $job
rc=$?
set -e
dt=$(($(date +%s) - t0))
kill -KILL "$victim" 2>/dev/null || true
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { cat "$T/hang.out"; die "a hung rank: expected a non-zero exit before the timeout, got $rc"; }
tr '\r' '\n' <"$T/hang.out" | grep -q "tailor: error: rank 0 of 2: MPI .* timed out after 5 s" ||
  { cat "$T/hang.out"; die "no timeout line from rank 0"; }
echo "hung rank: rank 0 gave up and the job ended with code $rc after ${dt} s"
[ $dt -le 40 ] || die "a hung rank took ${dt} s to end the job"
echo ok
