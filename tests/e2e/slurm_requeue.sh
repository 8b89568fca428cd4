# Preemption on a real single-node Slurm (tests/lib/slurm.sh): a 2-task CPU job of tailor submit gets SIGUSR1 in
# its tasks mid-run (`scancel --signal=USR1`, what --signal=USR1@N does before the time limit); every rank
# finishes its step and checkpoints, tailor exits 75, the batch script requeues the job, Slurm runs it again, it
# resumes from the checkpoint and completes; its adapters equal those of an uninterrupted one-process run (1e-5)
# and its metrics.jsonl holds each step once. Every wait is bounded.
source "$TAILOR_SRC/tests/lib/common.sh"
source "$TAILOR_SRC/tests/lib/slurm.sh"
need_mpi
slurm_need
trap 'slurm_stop "$T/slurm"; rm -rf "$T"' EXIT
# 300 steps of about 25 ms (2 ranks): long enough to signal mid-run, short enough that the one-process and the
# 2-rank runs stay within 1e-5 (their base products pack different adapters together, so fp32 sums reassociate and
# the difference grows with the steps: measured 3e-7 here, 2e-2 after 1500 steps of a smaller model)
steps=300
make_model "$T/model" --vocab 64 --hidden 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 20 --vocab 64 --seed 4
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "" "$T/plain" "steps: $steps" "log_every: 1" "threads: 1" \
  "examples_per_adapter: 8" "micro_batch_tokens: 128" "lr: 0.002" "checkpoint_every: 25"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/plain.out" 2>&1 || { cat "$T/plain.out"; die "one-process run failed"; }

slurm_start "$T/slurm"
srun --mpi=list 2>&1 | grep -q pmix || { echo "SKIP: this Slurm has no pmix plugin"; exit 77; }
cd "$T"
"$TAILOR_BIN" submit c.yaml "run.output_dir=$T/job" cluster.tasks_per_node=2 cluster.cpus_per_task=1 \
  >"$T/submit.out" 2>&1 || { cat "$T/submit.out"; die "tailor submit failed"; }
id=$(sed -n 's/^submitted job \([0-9][0-9]*\): .*/\1/p' "$T/submit.out")
[ -n "$id" ] || { cat "$T/submit.out"; die "no job id"; }
out="$T/job/submit/slurm-$id.out"

# signal the job's tasks once a few steps are logged
for _ in $(seq 1 300); do
  [ -f "$T/job/metrics.jsonl" ] && [ "$(wc -l <"$T/job/metrics.jsonl")" -ge 5 ] && break
  sleep 0.1
done
[ -f "$T/job/metrics.jsonl" ] && [ "$(wc -l <"$T/job/metrics.jsonl")" -ge 5 ] ||
  { cat "$out" 2>/dev/null; die "the job logged no steps within 30 s"; }
scancel --signal=USR1 "$id"

# the job requeues itself (Restarts 1), waits out Slurm's requeue delay, runs again and completes
for _ in $(seq 1 200); do
  [ "$(slurm_job_field "$id" Restarts)" = 1 ] && break
  sleep 0.1
done
[ "$(slurm_job_field "$id" Restarts)" = 1 ] || { cat "$out"; die "job $id was not requeued within 20 s"; }
state=$(slurm_wait_job "$id" 50) || { cat "$out"; die "the requeued job $id did not end within 50 s"; }
[ "$state" = COMPLETED ] || { cat "$out"; die "job $id ended $state"; }
[ "$(slurm_job_field "$id" Restarts)" = 1 ] || { cat "$out"; die "expected exactly one restart"; }
tr '\r' '\n' <"$out" >"$T/out.txt"
grep -q "stopped by SIGUSR1 after step" "$T/out.txt" || { cat "$T/out.txt"; die "no stop line in the job output"; }
stopped_at=$(sed -n 's/.*stopped by SIGUSR1 after step \([0-9]*\) .*/\1/p' "$T/out.txt" | head -n 1)
[ "$stopped_at" -lt "$steps" ] || die "the signal came too late to test anything (step $stopped_at)"
grep -q "requeueing job $id" "$T/out.txt" || { cat "$T/out.txt"; die "no requeue line in the job output"; }
grep -q "resuming from .*step-0*$stopped_at" "$T/out.txt" ||
  { cat "$T/out.txt"; die "the requeued job did not resume from step $stopped_at"; }
[ "$(grep -c "^tailor: job $id (restart" "$T/out.txt")" -eq 2 ] || die "expected two runs of the batch script"
same_adapters "$T/plain/adapters" "$T/job/adapters" 1e-5 || die "the requeued job's adapters differ from one process"
"$TL_PYTHON" - "$T/job/metrics.jsonl" "$steps" <<'PY'
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1]) if '"loss"' in l]
assert steps == list(range(1, int(sys.argv[2]) + 1)), steps[:10]
PY
echo "ok (stopped after step $stopped_at, resumed, completed)"
