#!/usr/bin/env bash
# Stop the local SLURM cluster started by tools/slurm_local/start.sh DIR.
#
#   tools/slurm_local/stop.sh DIR
#
# Cancels the cluster's jobs (so no slurmstepd outlives it), then TERMs each daemon by the pid in its pid file
# under DIR (slurmd n1, slurmd n2, slurmctld, munged), waits for it to exit (KILL after
# SLURM_LOCAL_STOP_TIMEOUT seconds, default 20) and removes the pid file. A pid is only signalled while the
# process behind it is still the daemon that start.sh launched (its command name is checked), so a stale pid
# file never hits an unrelated process. Idempotent: stopping a stopped cluster is a no-op.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ -d "$1" ] || exit 0
dir=$(cd "$1" && pwd)
timeout_s=${SLURM_LOCAL_STOP_TIMEOUT:-20}
export SLURM_CONF=$dir/slurm.conf
PATH=$PATH:/usr/sbin

# alive PID NAME: PID runs and is the daemon NAME (not a recycled pid, not a zombie waiting to be reaped)
alive() {
  [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

ctld_pid=$(cat "$dir/run/slurmctld.pid" 2>/dev/null || true)
if alive "$ctld_pid" slurmctld; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 $((timeout_s * 2))); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

rc=0
stop_one() {  # stop_one PIDFILE NAME
  local pidfile=$1 name=$2 pid
  [ -e "$pidfile" ] || [ -L "$pidfile" ] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((timeout_s * 10))); do
      alive "$pid" "$name" || break
      sleep 0.1
    done
    if alive "$pid" "$name"; then
      echo "slurm_local/stop: $name ($pid) ignored TERM for ${timeout_s}s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      alive "$pid" "$name" && { echo "slurm_local/stop: $name ($pid) still running" >&2; rc=1; return; }
    fi
  fi
  rm -f "$pidfile"
}

stop_one "$dir/run/slurmd-n1.pid" slurmd
stop_one "$dir/run/slurmd-n2.pid" slurmd
stop_one "$dir/run/slurmctld.pid" slurmctld
stop_one "$dir/munge/munged.pid" munged
rm -f "$dir/run/munged.pid"
[ $rc = 0 ] && echo "slurm_local: cluster in $dir stopped" >&2
exit $rc
