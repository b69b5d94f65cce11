"""What a run tells the outside world: logs (rank 0 talks, other ranks only warn), TensorBoard scalars and
hparams, ``metrics.jsonl`` and the final ``summary.json`` — all written by rank 0 into the run directory."""
from __future__ import annotations

import json
import logging
import math
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..distributed import DistEnv


def setup_logging(env: DistEnv, run_dir: Optional[Path] = None) -> None:
    fmt = f"%(asctime)s [rank {env.rank}/{env.world_size}] %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING, format=fmt, handlers=handlers,
                        force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "compilers"):  # compilers: DeepSpeed's aio probe
        logging.getLogger(noisy).setLevel(logging.WARNING)


def announce(env: DistEnv) -> None:
    """One line per rank (all ranks), so a job log shows who ran where."""
    import os

    node = os.environ.get("SLURMD_NODENAME", "")
    print(f"rank {env.rank}/{env.world_size} local_rank {env.local_rank} host {socket.gethostname()}"
          f"{' node ' + node if node else ''} launcher {env.launcher} device {env.device}", file=sys.stderr, flush=True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:
        return math.nan


class Monitor:
    """TensorBoard + JSON lines on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, env: DistEnv):
        self.active = env.is_main
        self.run_dir = run_dir
        self.writer = None
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float], **extra: Any) -> None:
        if not self.active:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **extra, **values}) + "\n")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.active:
            clean = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
            self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    def close(self) -> None:
        if self.active:
            self.writer.close()
            self.jsonl.close()


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
