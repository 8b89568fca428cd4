# tailor submit without a Slurm: --dry-run prints the job script (checked line by line for a 2-node 8-GPU job
# with every optional key, and for a CPU job) and writes nothing; bash -n accepts both scripts and the real bash
# reads the exported values back exactly; each bad input exits 2 with one line naming the key; with a stand-in
# sbatch on PATH: the files are written, sbatch gets `--parsable SCRIPT`, its job id is printed, the written
# config.yaml gives the same script again, a failing sbatch is exit 1 with its message, and no sbatch at all is
# exit 2 pointing to --dry-run.
source "$TAILOR_SRC/tests/lib/common.sh"
TB=$(readlink -f "$TAILOR_BIN")
cd "$T"

cat >gpu.yaml <<'EOF'
run: {name: llama-users, output_dir: runs/llama-users}
model: {path: /models/Llama-3.1-8B}
data: {train: data/train.h5}
train: {steps: 2000, checkpoint_every: 200}
cluster:
  nodes: 2
  gpus_per_node: 8
  cpus_per_task: 12
  partition: gpu
  account: proj-42
  time: "2-00:00:00"
  mem: 480G
  sbatch: ["--qos=high", "--exclusive"]
  setup: ["module load cuda/12.4", "source \"$HOME/venvs/tailor/bin/activate\""]
  env: ["NCCL_DEBUG=WARN", "MSG=it's \"quoted\" $HOME \\ `x` * ~"]
EOF
cat >gpu.want <<'EOF'
#!/bin/bash
# Slurm batch script written by `tailor submit` for run 'llama-users' (docs/cluster.md).
# Exit code 75 means every rank stopped after writing a checkpoint (SIGUSR1 before the time limit, or
# SIGTERM); the job then requeues itself and resumes from that checkpoint (train.resume auto).
#SBATCH --job-name=llama-users
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --partition=gpu
#SBATCH --account=proj-42
#SBATCH --time=2-00:00:00
#SBATCH --mem=480G
#SBATCH --chdir=@CWD@
#SBATCH --output=@CWD@/runs/llama-users/submit/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --qos=high
#SBATCH --exclusive

set -u

# cluster.setup
module load cuda/12.4
source "$HOME/venvs/tailor/bin/activate"

# cluster.env
export NCCL_DEBUG=WARN
export MSG='it'\''s "quoted" $HOME '\\' `x` * ~'

echo "tailor: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}, $(date)"
srun --mpi=pmix --cpus-per-task=12 @TB@ train @CWD@/runs/llama-users/submit/config.yaml
rc=$?
if [ "$rc" -eq 75 ]; then
  echo "tailor: the run stopped at a checkpoint (exit 75): requeueing job ${SLURM_JOB_ID}"
  if scontrol requeue "$SLURM_JOB_ID"; then
    exit 0
  fi
  echo "tailor: scontrol requeue failed; submit the script again to resume" >&2
fi
exit "$rc"
EOF

cat >cpu.yaml <<'EOF'
run: {name: small}
model: {path: models/tiny}
data: {train: train.h5}
train: {backend: cpu, threads: 4}
cluster: {tasks_per_node: 4, cpus_per_task: 4, requeue: false, signal_s: 0, mpi: ~, tailor: bin/tailor}
EOF
cat >cpu.want <<'EOF'
#!/bin/bash
# Slurm batch script written by `tailor submit` for run 'small' (docs/cluster.md).
# Exit code 75 means every rank stopped after writing a checkpoint (SIGUSR1 before the time limit, or
# SIGTERM); submitting this script again resumes from that checkpoint (train.resume auto).
#SBATCH --job-name=small
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=4
#SBATCH --chdir=@CWD@
#SBATCH --output=@CWD@/runs/small/submit/slurm-%j.out
#SBATCH --open-mode=append

set -u

echo "tailor: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}, $(date)"
srun --cpus-per-task=4 @CWD@/bin/tailor train @CWD@/runs/small/submit/config.yaml
rc=$?
if [ "$rc" -eq 75 ]; then
  echo "tailor: the run stopped at a checkpoint (exit 75); submit the script again to resume (cluster.requeue is false)"
fi
exit "$rc"
EOF

for c in gpu cpu; do
  sed "s#@CWD@#$T#g; s#@TB@#$TB#g" "$c.want" >"$c.expected"
  "$TAILOR_BIN" submit "$c.yaml" --dry-run >"$c.sh" 2>"$c.err" || { cat "$c.err"; die "$c: --dry-run failed"; }
  [ ! -s "$c.err" ] || { cat "$c.err"; die "$c: --dry-run wrote to stderr"; }
  diff -u "$c.expected" "$c.sh" || die "$c: the script differs from the expected one (above)"
  bash -n "$c.sh" || die "$c: bash -n rejects the script"
  [ ! -e runs ] || die "$c: --dry-run wrote files"
done
# the real bash reads the quoted values back
got=$(env -i bash -c "$(grep '^export ' gpu.sh)"'; printf "%s|%s" "$NCCL_DEBUG" "$MSG"')
[ "$got" = "WARN|it's \"quoted\" \$HOME \\ \`x\` * ~" ] || die "bash read the exports as [$got]"
# key=value overrides and --dry-run anywhere
"$TAILOR_BIN" submit --dry-run cpu.yaml cluster.nodes=3 "cluster.job_name=a b" >o.sh || die "overrides failed"
grep -qx "#SBATCH --nodes=3" o.sh && grep -qx "#SBATCH --job-name='a b'" o.sh || { cat o.sh; die "overrides not applied"; }

# bad input: exit 2, one line on stderr naming the key, nothing written
bad() {
  local key=$1; shift
  set +e
  "$TAILOR_BIN" submit "$@" >bad.out 2>bad.err
  local rc=$?
  set -e
  [ $rc -eq 2 ] || { cat bad.err; die "submit $*: expected exit 2, got $rc"; }
  [ "$(wc -l <bad.err)" -eq 1 ] || { cat bad.err; die "submit $*: expected one line on stderr"; }
  grep -q "^tailor: error: .*$key" bad.err || { cat bad.err; die "submit $*: the message does not name $key"; }
  [ ! -s bad.out ] || die "submit $*: printed a script for bad input"
  [ ! -e runs ] || die "submit $*: wrote files for bad input"
}
bad cluster.time cpu.yaml --dry-run cluster.time=2h
bad cluster.time cpu.yaml --dry-run cluster.time=1-24:00
bad cluster.mem cpu.yaml --dry-run cluster.mem=lots
bad cluster.env cpu.yaml --dry-run "cluster.env=[NO_EQUALS]"
bad cluster.env cpu.yaml --dry-run "cluster.env=[1X=a]"
bad cluster.sbatch cpu.yaml --dry-run "cluster.sbatch=[-q high]"
bad cluster.tasks_per_node cpu.yaml --dry-run "cluster.sbatch=[--ntasks=8]"
bad cluster.nodes cpu.yaml --dry-run "cluster.sbatch=[--qos=x, --nodes=2]"
bad run.output_dir cpu.yaml --dry-run "cluster.sbatch=[--output=x.out]"
bad cluster.signal_s cpu.yaml --dry-run "cluster.sbatch=[--signal=B:USR1@60]"
bad train.resume cpu.yaml --dry-run train.resume=never cluster.requeue=true
bad train.backend gpu.yaml --dry-run train.backend=cpu
bad train.backend cpu.yaml --dry-run train.backend=cuda
bad cluster.mpi cpu.yaml --dry-run cluster.mpi=none
bad run.output_dir cpu.yaml --dry-run 'run.output_dir=a\b'
bad cluster.lol cpu.yaml --dry-run cluster.lol=1
bad "needs a CONFIG" --dry-run
bad "unknown option --frob" cpu.yaml --frob
bad "unexpected argument" cpu.yaml extra
bad "nope.yaml" nope.yaml --dry-run
bad model.path cpu.yaml   # without --dry-run the inputs must exist

# a real submission with a stand-in sbatch (tests/e2e/slurm_submit.sh uses the real one)
make_model models/tiny --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
make_data train.h5 eval.h5 --users 2 --examples-per-user 4 --vocab 64
mkdir -p bin fake
cp "$TB" bin/tailor
cat >fake/sbatch <<EOF
#!/bin/bash
printf '%s\n' "\$@" >"$T/sbatch.args"
[ -z "\${FAIL:-}" ] || { echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2; echo "second line" >&2; exit 1; }
echo "4242;cluster"
EOF
chmod +x fake/sbatch
PATH="$T/fake:$PATH" "$TAILOR_BIN" submit cpu.yaml >sub.out 2>sub.err || { cat sub.err; die "submit failed"; }
[ "$(cat sub.out)" = "submitted job 4242: $T/runs/small/submit/job.sbatch" ] || { cat sub.out; die "unexpected output"; }
[ "$(cat sbatch.args)" = "--parsable
$T/runs/small/submit/job.sbatch" ] || { cat sbatch.args; die "sbatch got other arguments"; }
diff -u cpu.expected runs/small/submit/job.sbatch || die "the written script differs from the dry run"
grep -qx "  backend: cpu" runs/small/submit/config.yaml || die "config.yaml lacks train.backend cpu"
[ "$(find runs/small/submit -mindepth 1 -printf '%f\n' | sort | tr '\n' ' ')" = "config.yaml job.sbatch " ] ||
  die "other files in submit/ (a temporary file?)"
# the written config.yaml is the whole run: it gives the same script
"$TAILOR_BIN" submit runs/small/submit/config.yaml --dry-run >again.sh || die "config.yaml does not load"
diff -u runs/small/submit/job.sbatch again.sh || die "config.yaml gives another script"
# train.backend auto becomes cpu for a CPU job in config.yaml
PATH="$T/fake:$PATH" "$TAILOR_BIN" submit cpu.yaml train.backend=auto run.output_dir=runs/auto >/dev/null ||
  die "submit with backend auto failed"
grep -qx "  backend: cpu" runs/auto/submit/config.yaml || die "backend auto was not made cpu"

set +e
PATH="$T/fake:$PATH" FAIL=1 "$TAILOR_BIN" submit cpu.yaml >fail.out 2>fail.err
rc=$?
set -e
[ $rc -eq 1 ] || { cat fail.err; die "a failing sbatch: expected exit 1, got $rc"; }
[ "$(wc -l <fail.err)" -eq 1 ] && grep -q "sbatch failed (exit 1): sbatch: error: Batch job submission failed: Invalid account" fail.err ||
  { cat fail.err; die "a failing sbatch: expected its first stderr line"; }
rm -rf runs
mkdir empty
set +e
PATH="$T/empty" "$TAILOR_BIN" submit cpu.yaml >nos.out 2>nos.err
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "sbatch is not in PATH.*--dry-run" nos.err || { cat nos.err; die "no sbatch: expected exit 2"; }
[ ! -e runs ] || die "no sbatch: files were written"
echo ok
