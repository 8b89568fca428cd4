# A real single-node Slurm for the shell tests (sourced after common.sh, not run).
#
#   slurm_need        skips the test (exit 77) unless this can run a Slurm (below); slurm_start calls it too.
#   slurm_start DIR   writes DIR/slurm.conf (this host, CPUs = nproc), starts munged if it is not running, then
#                     slurmctld and slurmd on that config; exports SLURM_CONF; returns once sinfo shows the node
#                     idle (at most ~30 s, else prints the daemons' logs and fails).
#   slurm_stop DIR    cancels every job of this Slurm, waits (bounded) for them to end, and stops slurmd and
#                     slurmctld by their pid files. Safe to call twice; the tests call it from their EXIT trap.
#   slurm_job_field ID KEY   one field of `scontrol show job ID` (JobState, ExitCode, Restarts, ...), "" if gone.
#   slurm_wait_job ID SECS   waits until job ID has ended (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) and is not
#                     requeued; prints its final state; fails after SECS.
#
# Needs root (slurmctld and slurmd run as SlurmUser=root, the daemons and the jobs run as this user) and the
# slurm-wlm and munge packages: otherwise the test is skipped (exit 77). Two tests never run their Slurm at the
# same time: slurm_start takes an exclusive flock on /tmp/tailor-slurm.lock (waiting up to 10 minutes, as ctest
# may run tests in parallel) and slurm_stop releases it, so fixed ports and one ClusterName are enough.
#
# Requeue delay: Slurm holds a requeued job (scontrol requeue) pending, reason BeginTime, for the lifetime of a
# job-step credential, AuthInfo=cred_expire (default 120 s; values below 5 are refused with "invalid" and the
# default is used), and then starts it at the next scheduling pass. Measured on this Slurm (22.05.8), from
# `scontrol requeue` in the batch script to the second start of the script: 121 s with cred_expire=120 (the
# default) and sched_interval=1; 27 s with cred_expire=5 and the default scheduler intervals (the next periodic
# pass: sched_interval 60 s, bf_interval 30 s); 6 s with cred_expire=5, sched_interval=1 and bf_interval=1, as
# configured here. TL_SLURM_CRED_EXPIRE overrides the 5.
#
# munged is shared by everything on the machine (the default socket /run/munge): it is started when
# `munge -n | unmunge` fails and left running.

TL_SLURM_LOCK=/tmp/tailor-slurm.lock

_slurm_skip() { echo "SKIP: $*"; exit 77; }

_slurm_logs() {
  local dir=$1 f
  for f in "$dir"/log/slurmctld.log "$dir"/log/slurmd.log; do
    [ -f "$f" ] && { echo "---- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
  done
  return 0
}

_slurm_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge || return 1
  # (no daemon may inherit the lock's descriptor: it would hold the lock for as long as it runs)
  su -s /bin/sh munge -c "munged --force" >/dev/null 2>&1 {TL_SLURM_LOCK_FD}>&- || return 1
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

slurm_need() {
  [ "$(id -u)" -eq 0 ] || _slurm_skip "a local Slurm needs root (slurmctld and slurmd run as SlurmUser=root)"
  local b
  for b in slurmctld slurmd sbatch srun squeue scontrol scancel sinfo munged munge unmunge flock; do
    command -v "$b" >/dev/null 2>&1 || _slurm_skip "no $b (install slurm-wlm and munge)"
  done
}

slurm_start() {
  local dir=$1
  slurm_need
  exec {TL_SLURM_LOCK_FD}>"$TL_SLURM_LOCK"
  flock -w 600 "$TL_SLURM_LOCK_FD" || { echo "slurm_start: $TL_SLURM_LOCK still locked after 600 s" >&2; return 1; }
  TL_SLURM_DIR=$dir
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" || return 1
  _slurm_munge || { echo "slurm_start: cannot start munged (munge -n | unmunge fails)" >&2; return 1; }
  local host cpus mem
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) # (nproc obeys OpenMP limits)
  mem=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
  cat >"$dir/slurm.conf" <<EOF
# private single-node Slurm of tailor's tests (tests/lib/slurm.sh)
ClusterName=tailortest
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=${TL_SLURM_CRED_EXPIRE:-5}
# the main scheduler and backfill test pending jobs every second (defaults 60 s and 30 s), so that a job whose
# begin time has passed starts at once instead of at the next periodic pass
SchedulerParameters=sched_interval=1,bf_interval=1
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
KillWait=5
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf
  local d
  for d in slurmctld slurmd; do
    "$d" -f "$SLURM_CONF" {TL_SLURM_LOCK_FD}>&- || {
      _slurm_logs "$dir"
      echo "slurm_start: $d failed to start" >&2
      return 1
    }
  done
  local state=""
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && return 0
    sleep 0.5
  done
  echo "slurm_start: node $host is '$state', not idle, 30 s after starting the daemons" >&2
  _slurm_logs "$dir"
  return 1
}

# Kills the daemon whose pid is in file (SIGTERM, then SIGKILL after 10 s), if it is still that daemon.
_slurm_kill() {
  local pidf=$1 name=$2 pid
  [ -f "$pidf" ] || return 0
  pid=$(cat "$pidf" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -d /proc/"$pid" ] || break
      sleep 0.1
    done
    [ -d /proc/"$pid" ] && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$pidf"
}

slurm_stop() {
  local dir=${1:-${TL_SLURM_DIR:-}}
  [ -n "$dir" ] && [ -f "$dir/slurm.conf" ] || return 0
  export SLURM_CONF=$dir/slurm.conf
  if [ -f "$dir/slurmctld.pid" ]; then
    # end the jobs through Slurm first, so that no job step outlives its slurmd
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  _slurm_kill "$dir/slurmd.pid" slurmd
  _slurm_kill "$dir/slurmctld.pid" slurmctld
  if [ -n "${TL_SLURM_LOCK_FD:-}" ]; then
    exec {TL_SLURM_LOCK_FD}>&-
    unset TL_SLURM_LOCK_FD
  fi
  return 0
}

slurm_job_field() {
  scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

slurm_wait_job() {
  local id=$1 secs=$2 t0 st
  t0=$(date +%s)
  while :; do
    st=$(slurm_job_field "$id" JobState)
    case $st in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
        echo "$st"; return 0 ;;
      "") echo "GONE"; return 0 ;;
    esac
    if [ $(($(date +%s) - t0)) -ge "$secs" ]; then
      echo "slurm_wait_job: job $id is still $st after $secs s" >&2
      scontrol show job "$id" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}
