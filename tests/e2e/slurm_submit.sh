# tailor submit on a real single-node Slurm (tests/lib/slurm.sh): a 2-task CPU job (srun --mpi=pmix, one core and
# one thread per rank) completes, its output file shows 2 ranks, and its adapters equal those of a plain
# one-process `tailor train` of the same config (1e-5). The job name holds blanks, quotes, '#' and a backslash and
# the run directory blanks, quotes and '$', so the real sbatch reads tailor's quoting of #SBATCH lines and bash
# that of the srun line.
source "$TAILOR_SRC/tests/lib/common.sh"
source "$TAILOR_SRC/tests/lib/slurm.sh"
need_mpi
slurm_need
trap 'slurm_stop "$T/slurm"; rm -rf "$T"' EXIT
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 5 --examples-per-user 20 --vocab 64 --seed 4
write_config "$T/c.yaml" "$T/model" "$T/train.h5" "" "$T/plain" "steps: 8" "log_every: 1" "threads: 1" \
  "examples_per_adapter: 3" "micro_batch_tokens: 128"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/plain.out" 2>&1 || { cat "$T/plain.out"; die "one-process run failed"; }

slurm_start "$T/slurm"
srun --mpi=list 2>&1 | grep -q pmix || { echo "SKIP: this Slurm has no pmix plugin"; exit 77; }
run_dir="$T/job run 'x' \$y"
job_name="it's a \"job\" \\ x#1"
cd "$T"
"$TAILOR_BIN" submit c.yaml "run.output_dir=$run_dir" cluster.tasks_per_node=2 cluster.cpus_per_task=1 \
  "cluster.job_name=$job_name" >"$T/submit.out" 2>&1 || { cat "$T/submit.out"; die "tailor submit failed"; }
id=$(sed -n 's/^submitted job \([0-9][0-9]*\): .*job\.sbatch$/\1/p' "$T/submit.out")
[ -n "$id" ] || { cat "$T/submit.out"; die "no 'submitted job ID: SCRIPT' line"; }
[ -f "$run_dir/submit/job.sbatch" ] && [ -f "$run_dir/submit/config.yaml" ] || die "script or config.yaml missing"
got_name=$(scontrol show job "$id" | sed -n 's/^JobId=[0-9]* JobName=//p')
[ "$got_name" = "$job_name" ] || die "sbatch read the job name as [$got_name], expected [$job_name]"

# bounded wait: the job leaves the queue, and the run exported its adapters
state=$(slurm_wait_job "$id" 50) || die "job $id did not end within 50 s"
out="$run_dir/submit/slurm-$id.out"
[ -f "$out" ] || die "no job output file $out"
[ "$state" = COMPLETED ] || { cat "$out"; die "job $id ended $state"; }
[ "$(slurm_job_field "$id" ExitCode)" = "0:0" ] || { cat "$out"; die "job exit code $(slurm_job_field "$id" ExitCode)"; }
[ -z "$(squeue --jobs="$id" -h -t PENDING,RUNNING,COMPLETING 2>/dev/null)" ] || die "squeue still lists job $id"
[ -f "$run_dir/adapters/index.json" ] || { cat "$out"; die "the job wrote no adapters/index.json"; }
grep -q "2 ranks (slurm, mpi), strategy user_shard" "$out" || { cat "$out"; die "the job did not run 2 MPI ranks"; }
same_adapters "$T/plain/adapters" "$run_dir/adapters" 1e-5 || die "the Slurm job's adapters differ from one process"
echo ok
