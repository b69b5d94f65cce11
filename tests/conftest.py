"""Shared fixtures: tiny real datasets with MiniLM features, and a helper that runs a launcher under a real
launcher (python, torchrun, deepspeed, accelerate) in a subprocess."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmm4rec.distributed import free_port  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def launch_command(script: str, args: list[str], nproc: int = 1, launcher: str = "python") -> list[str]:
    script = str(REPO / "launchers" / script)
    port = str(free_port())
    if launcher == "python":
        assert nproc == 1
        return [sys.executable, script, *args]
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", port, script, *args]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", str(nproc), "--master_port", port, script,
                *args]
    if launcher == "accelerate":
        return [str(BIN / "accelerate"), "launch", "--use_deepspeed", "--num_processes", str(nproc),
                "--main_process_port", port, script, *args]
    raise ValueError(launcher)


def subprocess_env() -> dict:
    # one thread per process: two processes share the machine's two cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(script: str, args: list[str], nproc: int = 1, launcher: str = "python", timeout: int = 300,
        check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = launch_command(script, args, nproc, launcher)
    proc = subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def make_dataset(root: Path, users: int, items: int, seed: int) -> Path:
    """A synthetic text-only dataset (labelled synthetic: clusters visible in the item text) plus its
    MiniLM feature store, built once."""
    from mmm4rec.config import EncoderConfig
    from mmm4rec.data.features import ensure_features
    from mmm4rec.data.synthetic import generate

    generate(root, users, items, images="none", seed=seed, shard_size=max(users // 3, 1))
    ensure_features(root, EncoderConfig())
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny-a"), users=120, items=60, seed=1)


@pytest.fixture(scope="session")
def other_dataset(tmp_path_factory) -> Path:
    """Another domain for transfer: different users and a different number of items."""
    return make_dataset(tmp_path_factory.mktemp("tiny-b"), users=90, items=45, seed=2)


def kill_job(root: int, timeout: float = 60) -> None:
    """SIGKILL every process group of the job ``root`` leads, and wait until none of them is alive. torchrun starts
    each rank in a session of its own, so killing torchrun's group alone would leave its ranks running, rank 0
    still holding the run-dir lock. Zombies count as gone (their files are closed; an init that does not reap
    would keep them for ever)."""
    alive, job = processes(), {root}
    while grown := {pid for pid, (_, parent, _) in alive.items() if parent in job} - job:
        job |= grown
    groups = {alive[pid][2] for pid in job if pid in alive}
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    deadline = time.time() + timeout
    while any(stat[2] in groups and stat[0] not in "ZX" for stat in processes().values()):
        assert time.time() < deadline, f"killed processes of groups {sorted(groups)} did not exit"
        time.sleep(0.05)


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process listed in /proc now."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        state, parent, group = stat[stat.rindex(")") + 2:].split()[:3]  # the command name may hold spaces and ")"
        out[int(pid)] = (state, int(parent), int(group))
    return out
