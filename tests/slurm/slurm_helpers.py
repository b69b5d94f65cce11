"""Helpers for the SLURM end-to-end tests: the local cluster (tools/slurm_local) as a Python object."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
JOBS = HERE / "jobs"
START = ROOT / "tools" / "slurm_local" / "start.sh"
STOP = ROOT / "tools" / "slurm_local" / "stop.sh"
DAEMONS = {"slurmd-n1.pid": "slurmd", "slurmd-n2.pid": "slurmd", "slurmctld.pid": "slurmctld", "munged.pid": "munged"}
# Terminal job states (`scontrol show job` keeps finished jobs for MinJobAge; there is no sacct here).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def _skip_reason() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "SLURM tests need root: the local test cluster runs its daemons with SlurmUser=root"
    for binary in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "runuser"):
        if not (shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}")):
            return f"SLURM tests need slurm-wlm and munge ({binary} not found; as root: bash tools/setup.sh dev)"
    return None


SKIP_REASON = _skip_reason()


def free_port_base(avoid: set[int] = frozenset()) -> int:
    """First base B in 6817, 6827, … such that B, B+1, B+2 (slurmctld, slurmd n1, n2) are free on loopback."""
    for base in range(6817, 7017, 10):
        if base in avoid:
            continue
        try:
            for port in range(base, base + 3):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for a local SLURM cluster in 6817-7016")


def clean_env() -> dict:
    """This process's environment without anything a launcher or an enclosing SLURM job would leak in."""
    drop = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
    torch_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "RUN_DIR", "RUNS_DIR", "CONFIG", "EXTRA", "DATASET", "DATASETS", "FEATURES", "INIT_FROM",
                  "PYTHON", "MMM4REC_ROOT", "OMP_NUM_THREADS"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in torch_vars
           and not k.startswith("MMM4REC_")}
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin"
    return env


def daemon_alive(pid: int, name: str) -> bool:
    """pid runs and is `name` (zombies awaiting their reaper count as gone)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "?")
    return comm == name and state != "Z"


def cluster_pids(directory: Path) -> dict[int, str]:
    pids = {}
    for pidfile, name in DAEMONS.items():
        path = directory / "run" / pidfile
        try:
            pids[int(path.read_text().strip())] = name
        except (OSError, ValueError):
            pass
    return pids


class Cluster:
    """A running local cluster: submit jobs and poll them with `scontrol` (no accounting, so no sacct)."""

    def __init__(self, directory: Path, port_base: int):
        self.dir = directory
        self.port_base = port_base
        self.env = clean_env()
        self.env["SLURM_CONF"] = str(directory / "slurm.conf")
        self.env["MMM4REC_ROOT"] = str(ROOT)
        self.env["PYTHON"] = sys.executable

    # -- process control ---------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> None:
        env = dict(self.env, SLURM_LOCAL_PORT_BASE=str(self.port_base))
        proc = subprocess.run(["bash", str(START), str(self.dir)], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"start.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert proc.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={self.dir}/slurm.conf"

    def stop(self, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(STOP), str(self.dir)], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def pids(self) -> dict[int, str]:
        return cluster_pids(self.dir)

    # -- jobs ----------------------------------------------------------------------------------------------
    def run(self, *cmd: str, env: dict | None = None, cwd=None, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=dict(self.env, **(env or {})), cwd=cwd, capture_output=True,
                              text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, *args: str, env: dict | None = None, cwd=None) -> str:
        """Submit; returns the job id. `env` is added to the submitting environment (sbatch exports it)."""
        out = self.run("sbatch", "--parsable", *map(str, args), env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job ID -o` as a dict (values may contain spaces, e.g. Command=script args)."""
        line = self.run("scontrol", "show", "job", str(job_id), "-o").stdout.strip()
        fields: dict[str, str] = {}
        key = None
        for token in line.split(" "):
            head, sep, value = token.partition("=")
            # Command= carries the script's arguments (which may contain '='): it runs up to WorkDir=
            in_command = key == "Command" and head != "WorkDir"
            if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", head) and not in_command:
                key = head
                fields[key] = value
            elif key is not None:
                fields[key] += " " + token
        return fields

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "?")

    def wait(self, job_id: str, timeout: float = 120, log: Path | None = None) -> dict[str, str]:
        """Poll until the job reaches a terminal state; returns its record (fails with the log on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", str(job_id), check=False)
                text = log.read_text() if log and log.exists() else "(no log)"
                raise AssertionError(f"job {job_id} not finished after {timeout}s: {info}\n--- log:\n{text}")
            time.sleep(0.5)

    def wait_for(self, predicate, timeout: float = 60, what: str = "condition", job_id: str | None = None,
                 log: Path | None = None):
        """Poll predicate(); fail on timeout, or as soon as job_id (if given) has finished without it."""
        deadline = time.monotonic() + timeout
        while not predicate():
            info = self.job(job_id) if job_id else {}
            ended = info.get("JobState") in FINAL_STATES
            if ended or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log and log.exists() else ""
                why = f"job {job_id} ended ({info.get('JobState')})" if ended else f"timed out after {timeout}s"
                raise AssertionError(f"{why} waiting for {what}: {info}\n--- log:\n{text}")
            time.sleep(0.2)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
