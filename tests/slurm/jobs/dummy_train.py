"""A stand-in for a launcher, for the requeue tests: the same signal/checkpoint/summary contract, no model.

On SIGUSR1/SIGTERM every rank stops; rank 0 writes RUN_DIR/checkpoint and all exit 0 without summary.json.
A run that finds the checkpoint resumes: it writes RUN_DIR/summary.json and exits 0. An uninterrupted run
finishes after DUMMY_SECONDS (default 120) and writes summary.json too. DUMMY_CHECKPOINT_SECONDS: how long
writing the checkpoint takes.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
node = os.environ.get("SLURMD_NODENAME", "?")
restart = int(os.environ.get("SLURM_RESTART_COUNT", 0))
run = Path(os.environ["RUN_DIR"])
run.mkdir(parents=True, exist_ok=True)
ckpt = run / "checkpoint"
stop = []
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, lambda s, f: stop.append(signal.Signals(s).name))


def summary(**extra):
    if rank == 0:
        tmp = run / "summary.json.tmp"
        tmp.write_text(json.dumps({"world_size": world, "restart": restart, **extra}))
        tmp.rename(run / "summary.json")


print(f"dummy rank {rank}/{world} host {node} restart {restart} checkpoint={ckpt.exists()}", flush=True)
if ckpt.exists():
    summary(resumed_from=ckpt.read_text())
    print(f"dummy rank {rank} resumed from checkpoint, done", flush=True)
    sys.exit(0)

(run / f"ready-{rank}").write_text(str(restart))
deadline = time.time() + float(os.environ.get("DUMMY_SECONDS", 120))
while time.time() < deadline and not stop:
    time.sleep(0.05)
if stop:
    print(f"dummy rank {rank} got {stop[0]}, writing checkpoint and exiting 0", flush=True)
    time.sleep(float(os.environ.get("DUMMY_CHECKPOINT_SECONDS", 0)))  # a slow checkpoint must not be cut short
    if rank == 0:
        (run / "checkpoint.tmp").write_text(f"restart {restart} signal {stop[0]}")
        (run / "checkpoint.tmp").rename(ckpt)
    sys.exit(0)
summary(resumed_from=None)
print(f"dummy rank {rank} finished uninterrupted", flush=True)
