# A rank that dies under Slurm (srun --mpi=pmix, 2 tasks): rank 1 kills itself with SIGKILL after step 4
# (TAILOR_FAULT_KILL_AFTER_STEP, through cluster.env). The job must end, not hang, within a bounded time, in a
# failed state (not requeued: the exit code is not 75), with a line in its output naming the failed rank.
source "$TAILOR_SRC/tests/lib/common.sh"
source "$TAILOR_SRC/tests/lib/slurm.sh"
need_mpi
slurm_need
trap 'slurm_stop "$T/slurm"; rm -rf "$T"' EXIT
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 4 --examples-per-user 20 --vocab 64 --seed 4
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "" "$T/run" "steps: 100000" "log_every: 1" "threads: 1" \
  "examples_per_adapter: 2"
echo "dist: {timeout_s: 5}" >>"$T/c.yaml"

slurm_start "$T/slurm"
srun --mpi=list 2>&1 | grep -q pmix || { echo "SKIP: this Slurm has no pmix plugin"; exit 77; }
cd "$T"
"$TAILOR_BIN" submit c.yaml cluster.tasks_per_node=2 cluster.cpus_per_task=1 \
  "cluster.env=[TAILOR_FAULT_KILL_AFTER_STEP=4, TAILOR_FAULT_KILL_RANK=1]" >"$T/submit.out" 2>&1 ||
  { cat "$T/submit.out"; die "tailor submit failed"; }
id=$(sed -n 's/^submitted job \([0-9][0-9]*\): .*job\.sbatch$/\1/p' "$T/submit.out")
[ -n "$id" ] || { cat "$T/submit.out"; die "no 'submitted job ID: SCRIPT' line"; }
t0=$(date +%s)
state=$(slurm_wait_job "$id" 60) || die "job $id did not end within 60 s of a rank's death: it hangs"
dt=$(($(date +%s) - t0))
out="$T/run/submit/slurm-$id.out"
[ -f "$out" ] || die "no job output file $out"
echo "job $id ended $state after ${dt} s (exit code $(slurm_job_field "$id" ExitCode))"
[ "$state" != COMPLETED ] || { cat "$out"; die "a job whose rank died must not end COMPLETED"; }
grep -q "requeueing" "$out" && { cat "$out"; die "a failed job must not requeue itself"; }
grep -Eq "task 1: Killed|rank 1 of 2|tailor: error: rank [01] of 2" "$out" || { cat "$out"; die "no line names the failed rank"; }
grep -E "task 1|tailor: error" "$out" | head -3
[ ! -e "$T/run/adapters" ] || die "a failed run must not export adapters"
echo ok
