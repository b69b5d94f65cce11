# shellcheck shell=bash
# slurm/common.sh — the one helper the SLURM job scripts (slurm/*.sh) source. Not a job script itself.
#
# What it does, in the batch shell of a job (see docs/slurm.md for the full story):
#   * finds the repository (MMM4REC_ROOT) and the interpreter (PYTHON);
#   * exports MASTER_ADDR (NodeAddr of the job's first node) and MASTER_PORT (10000 + job id % 10000), so all
#     ranks agree on the rendezvous before any process starts; mmm4rec.distributed turns SLURM_PROCID /
#     SLURM_NTASKS / SLURM_LOCALID into RANK / WORLD_SIZE / LOCAL_RANK in each task;
#   * picks the run directory, RUN_DIR (default runs/<job name>), reused when the job is requeued;
#   * OMP_NUM_THREADS = cpus per task; optional network variables for NCCL/gloo;
#   * mmm4rec_step CMD…: runs `srun CMD…` (one task per GPU) with preemption handling — USR1/TERM sent to the
#     batch shell are forwarded to the step, the shell waits for the step to checkpoint and exit, and if USR1
#     interrupted a run that is not complete (no $MMM4REC_DONE_FILE, default $RUN_DIR/summary.json) the job
#     requeues itself. mmm4rec_launch NAME … runs launchers/NAME.py that way.
#
# Variables (environment of `sbatch`, which exports it to the job; all optional):
#   MMM4REC_ROOT         repository root (default: the job scripts find it from the submitted script's path)
#   PYTHON               interpreter (default $MMM4REC_ROOT/.venv/bin/python, else python3 on PATH)
#   CONFIG               preset name or YAML path for the launcher (each job script has its own default)
#   RUNS_DIR, RUN_DIR    run directory = ${RUN_DIR:-${RUNS_DIR:-runs}/${SLURM_JOB_NAME}} (relative to the
#                        submit directory). Same job name → same run → a resubmission resumes it.
#   EXTRA                extra launcher arguments, word-split (e.g. EXTRA="--set train.lr=1e-3"); arguments
#                        after the script name on the sbatch line are passed through too.
#   MASTER_ADDR, MASTER_PORT   override the rendezvous address/port.
#   NET_IFNAME           network interface for NCCL and gloo (exports NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME).
#   MMM4REC_MAX_REQUEUES self-requeues allowed (default 20; counts SLURM_RESTART_COUNT).
#   MMM4REC_REQUEUE      0 disables self-requeue (signals are still forwarded).
#   MMM4REC_REQUEUE_ON_TERM  1: requeue on TERM too (clusters that preempt with PreemptMode=CANCEL; see below).
#   MMM4REC_DONE_FILE    the file whose existence means "run complete" (default $RUN_DIR/summary.json; empty:
#                        complete = the step exited 0 without being signalled).
#   MMM4REC_SRUN_ARGS    extra srun options, word-split (e.g. "--gpu-bind=closest").
#   MMM4REC_FAIL_LINGER_S  seconds a failed task waits before exiting so its error reaches the log (default 2).

_mmm4rec_log() { echo "[mmm4rec-slurm $(date +%H:%M:%S)] $*" >&2; }

if [ -z "${SLURM_JOB_ID:-}" ]; then
  _mmm4rec_log "not inside a SLURM job: submit the script with sbatch (see docs/slurm.md)"
  # shellcheck disable=SC2317
  return 2 2>/dev/null || exit 2
fi

# ---- repository and interpreter -------------------------------------------------------------------------
MMM4REC_ROOT=${MMM4REC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
export MMM4REC_ROOT
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$MMM4REC_ROOT/.venv/bin/python" ]; then PYTHON=$MMM4REC_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON
export PYTHONUNBUFFERED=1   # log lines reach %x-%j.out as they happen, not at exit
export MMM4REC_FAIL_LINGER_S=${MMM4REC_FAIL_LINGER_S:-2}

# ---- rendezvous ---------------------------------------------------------------------------------------------
# Node names need not resolve (they do not on the local test cluster): use the first node's NodeAddr.
if [ -z "${MASTER_ADDR:-}" ]; then
  _first=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}" 2>/dev/null | head -n 1)
  MASTER_ADDR=$(scontrol show node "$_first" -o 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p')
  MASTER_ADDR=${MASTER_ADDR:-${_first:-127.0.0.1}}
  unset _first
fi
MASTER_PORT=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 10000))}
export MASTER_ADDR MASTER_PORT
# sbatch copies the submitting shell's environment: a stray RANK/WORLD_SIZE there would make every task take
# itself for a torchrun worker. Ranks come from srun (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID) instead.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE

# ---- run directory (same across requeues: SLURM keeps the job id and name) -------------------------------
RUN_DIR=${RUN_DIR:-${RUNS_DIR:-runs}/${SLURM_JOB_NAME}}
export RUN_DIR
MMM4REC_DONE_FILE=${MMM4REC_DONE_FILE-$RUN_DIR/summary.json}

# ---- threads and network ---------------------------------------------------------------------------------
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# Set only what the cluster needs; everything here is opt-in (sbatch exports your environment to the job):
#   NET_IFNAME=ib0|eth0     -> NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME (bootstrap/socket transport interface)
#   NCCL_IB_DISABLE=1       no InfiniBand/RoCE (e.g. nodes without IB); NCCL_IB_HCA=mlx5 selects HCAs
#   NCCL_DEBUG=INFO         NCCL's topology/transport choices in the log; NCCL_DEBUG_SUBSYS=INIT,NET narrows it
#   NCCL_P2P_DISABLE=1      debug hangs on machines with broken peer-to-peer
if [ -n "${NET_IFNAME:-}" ]; then
  export NCCL_SOCKET_IFNAME=$NET_IFNAME GLOO_SOCKET_IFNAME=$NET_IFNAME
fi

_mmm4rec_log "job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-?}:" \
  "${SLURM_NTASKS:-1} tasks, master ${MASTER_ADDR}:${MASTER_PORT}, run dir ${RUN_DIR}, python ${PYTHON}"

# ---- the step, with preemption handling ------------------------------------------------------------------
# Who sends what (SLURM 22.05):
#   * `#SBATCH --signal=B:USR1@T` → USR1 to this batch shell only, T seconds (±30 s, the controller checks
#     time limits about every 30 s) before the time limit. Manual equivalent: `scancel -b -s USR1 JOBID`.
#     → forwarded to srun, which relays it to every task; the launcher checkpoints and exits 0; the run is
#     incomplete, so the job requeues itself (same job id, same RUN_DIR) and resumes from the checkpoint.
#   * scancel, the time limit, and preemption send TERM to every process of the job (this shell, srun and the
#     tasks) and KILL after KillWait (slurm.conf, default 30 s) or the preemption GraceTime. The launcher
#     checkpoints within that window. The shell cannot tell `scancel` from preemption (both show
#     JobState=COMPLETING), so TERM does not self-requeue: scancel cancels, and preemption with
#     PreemptMode=REQUEUE (or a node failure, with --requeue) is requeued by SLURM itself. On clusters that
#     preempt with PreemptMode=CANCEL set MMM4REC_REQUEUE_ON_TERM=1 (then `scancel` requeues too, unless the
#     run is complete: cancel such a job with `scontrol update jobid=ID requeue=0; scancel ID`).
_mmm4rec_step_pid=
_mmm4rec_signal=

_mmm4rec_on_signal() {  # trap handler: remember the signal and pass it on to srun, which relays it to every task
  _mmm4rec_signal=$1
  _mmm4rec_log "batch shell got SIG$1${_mmm4rec_step_pid:+; forwarding it to the step so it checkpoints and exits}"
  if [ -n "$_mmm4rec_step_pid" ]; then kill -s "$1" "$_mmm4rec_step_pid" 2>/dev/null || true; fi
}
trap '_mmm4rec_on_signal USR1' USR1
trap '_mmm4rec_on_signal TERM' TERM

_mmm4rec_complete() {  # _mmm4rec_complete RC: is the run complete?
  if [ -n "$MMM4REC_DONE_FILE" ]; then [ -e "$MMM4REC_DONE_FILE" ]; else [ "$1" = 0 ] && [ -z "$_mmm4rec_signal" ]; fi
}

# _mmm4rec_interrupted RC: a signal stopped an incomplete run; requeue the job (and exit) or exit with failure.
_mmm4rec_interrupted() {
  local rc=$1 restarts=${SLURM_RESTART_COUNT:-0} why=
  if [ "${MMM4REC_REQUEUE:-1}" = 0 ]; then
    why="self-requeue disabled (MMM4REC_REQUEUE=0)"
  elif [ "$_mmm4rec_signal" = TERM ] && [ "${MMM4REC_REQUEUE_ON_TERM:-0}" != 1 ]; then
    why="SIGTERM (scancel, time limit or preemption) is left to SLURM (MMM4REC_REQUEUE_ON_TERM=0)"
  elif [ "$restarts" -ge "${MMM4REC_MAX_REQUEUES:-20}" ]; then
    why="already restarted $restarts times (MMM4REC_MAX_REQUEUES=${MMM4REC_MAX_REQUEUES:-20})"
  else
    _mmm4rec_log "interrupted by SIG$_mmm4rec_signal (step exit $rc), run incomplete: requeueing job" \
      "$SLURM_JOB_ID (restart $((restarts + 1))); it resumes from $RUN_DIR"
    if scontrol requeue "$SLURM_JOB_ID"; then
      exit 0
    fi
    why="scontrol requeue failed"
  fi
  _mmm4rec_log "interrupted by SIG$_mmm4rec_signal (step exit $rc), run incomplete, not requeued: $why." \
    "Resubmit with the same RUN_DIR (or job name) to resume."
  [ "$rc" = 0 ] && rc=1
  exit "$rc"
}

# mmm4rec_step CMD [ARGS…] — srun CMD on every task of the allocation (one task per GPU). Returns the step's
# exit status when the run is complete or failed on its own; when a signal interrupted an incomplete run it
# requeues the job (see above) and exits.
mmm4rec_step() {
  local rc=0 srun_args=(--kill-on-bad-exit=1)
  # SLURM 22.05's srun does not inherit --cpus-per-task from sbatch: pass it on explicitly.
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  # shellcheck disable=SC2206
  [ -n "${MMM4REC_SRUN_ARGS:-}" ] && srun_args+=($MMM4REC_SRUN_ARGS)

  if [ -n "$MMM4REC_DONE_FILE" ] && [ -e "$MMM4REC_DONE_FILE" ]; then
    _mmm4rec_log "run already complete ($MMM4REC_DONE_FILE exists); nothing to do. Use another RUN_DIR or" \
      "--job-name for a new run."
    return 0
  fi
  [ -n "$_mmm4rec_signal" ] && _mmm4rec_interrupted 0   # signalled before the step even started

  _mmm4rec_log "srun ${srun_args[*]} $*"
  # In the background: bash runs a trap only between commands, and `wait` returns as soon as one fires.
  # Each task runs under a small bash wrapper: a failing task lingers MMM4REC_FAIL_LINGER_S seconds before it
  # exits, so its last words (the error) reach the log before --kill-on-bad-exit tears the step down — SLURM
  # 22.05 drops them otherwise when the tasks span several nodes. The wrapper ignores USR1/TERM itself
  # (trapped as no-ops, so the command still gets the default disposition); only the command acts on them.
  # shellcheck disable=SC2016
  srun "${srun_args[@]}" bash -c 'trap : USR1 TERM; "$@"; rc=$?; [ "$rc" = 0 ] || sleep "$MMM4REC_FAIL_LINGER_S"
    exit "$rc"' mmm4rec-task "$@" &
  _mmm4rec_step_pid=$!
  while kill -0 "$_mmm4rec_step_pid" 2>/dev/null; do
    wait "$_mmm4rec_step_pid" 2>/dev/null || true
  done
  wait "$_mmm4rec_step_pid" 2>/dev/null || rc=$?   # bash keeps the status of a reaped background job
  _mmm4rec_step_pid=

  if _mmm4rec_complete "$rc"; then
    _mmm4rec_log "step finished (exit $rc)${MMM4REC_DONE_FILE:+, run complete}"
    return "$rc"
  fi
  if [ -z "$_mmm4rec_signal" ]; then
    if [ "$rc" = 0 ]; then
      _mmm4rec_log "step exited 0 but the run is not complete (no $MMM4REC_DONE_FILE)"
      rc=1
    else
      _mmm4rec_log "step failed (exit $rc)"
    fi
    return "$rc"
  fi
  _mmm4rec_interrupted "$rc"
}

# mmm4rec_launch NAME [ARGS…] — run launchers/NAME.py on every task with the run's config and directory.
mmm4rec_launch() {
  local name=$1; shift
  # shellcheck disable=SC2086
  mmm4rec_step "$PYTHON" "$MMM4REC_ROOT/launchers/$name.py" --config "$CONFIG" --run-dir "$RUN_DIR" ${EXTRA:-} "$@"
}
