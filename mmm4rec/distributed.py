"""The one place that reads the launcher's environment.

torchrun, the deepspeed launcher and accelerate set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the job's node list. ``DistEnv.from_environ`` turns
either into one description, and ``init`` exports the torch variables before any process group or data split
is made, so everything downstream (DeepSpeed, data sharding, logging) sees the same ranks.
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "python"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    @property
    def backend(self) -> str:
        return "nccl" if torch.cuda.is_available() else "gloo"

    @classmethod
    def from_environ(cls, environ: dict | None = None) -> "DistEnv":
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            world = int(env["WORLD_SIZE"])
            return cls(
                rank=int(env["RANK"]),
                world_size=world,
                local_rank=int(env.get("LOCAL_RANK", 0)),
                local_world_size=int(env.get("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", world))),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT", 29500)),
                launcher=_launcher_name(env),
            )
        if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
            return cls(
                rank=int(env["SLURM_PROCID"]),
                world_size=int(env["SLURM_NTASKS"]),
                local_rank=int(env.get("SLURM_LOCALID", 0)),
                local_world_size=_slurm_tasks_on_node(env),
                master_addr=env.get("MASTER_ADDR") or _slurm_master_addr(env),
                master_port=int(env.get("MASTER_PORT") or 10000 + int(env.get("SLURM_JOB_ID", 0)) % 10000),
                launcher="slurm",
            )
        # a single plain process still gets a process group (DeepSpeed makes one): use a free port so that
        # concurrent single-process runs on one machine do not collide on the default 29500
        return cls(master_port=int(env.get("MASTER_PORT") or _free_port()))

    def export(self) -> None:
        """Write the torch.distributed variables so DeepSpeed/accelerate/torch read the same values."""
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.local_rank),
            LOCAL_WORLD_SIZE=str(self.local_world_size),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_name(env) -> str:
    """Which launcher started us (for the log only; the variables above are what count)."""
    if any(k.startswith("ACCELERATE_") for k in env):
        return "accelerate"
    if "CROSS_RANK" in env:
        return "deepspeed"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    return "slurm" if "SLURM_PROCID" in env else "env"


def _slurm_tasks_on_node(env) -> int:
    # SLURM_TASKS_PER_NODE looks like "2(x3),1"; the per-node count of this node is in SLURM_NTASKS_PER_NODE
    # when set uniformly, otherwise derive from the local id range we can see.
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    first = env.get("SLURM_TASKS_PER_NODE", "1").split(",")[0]
    return int(first.split("(")[0])


def _slurm_master_addr(env) -> str:
    """Address of the job's first node: its NodeAddr, which works where node names do not resolve."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    first = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           check=True).stdout.split()[0]
    info = subprocess.run(["scontrol", "show", "node", first, "-o"], capture_output=True, text=True).stdout
    for token in info.split():
        if token.startswith("NodeAddr="):
            return token.split("=", 1)[1]
    return first


def init(timeout_s: float = 600.0) -> DistEnv:
    """Normalise the environment and start the default process group (gloo on CPU, nccl on GPU) if N > 1."""
    env = DistEnv.from_environ()
    env.export()
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if env.distributed and not dist.is_initialized():
        dist.init_process_group(backend=env.backend, timeout=datetime.timedelta(seconds=timeout_s))
    return env


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_candidates(cand: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' candidate vectors (equal counts per rank), differentiable for this rank's own, and the offset of
    this rank's rows: in-batch negatives from the whole global batch."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(cand)), dist.get_rank() * len(cand)
