"""The one place that reads the launcher's environment.

torchrun, the deepspeed launcher and accelerate set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the job's node list. ``DistEnv.from_environ`` turns
either into one description, and ``init`` exports the torch variables before any process group or data split
is made, so everything downstream (DeepSpeed, data sharding, logging) sees the same ranks.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .data.atomic import write_atomic

T = TypeVar("T")

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
        return cls(master_port=int(env.get("MASTER_PORT") or free_port()))

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


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous of a single-process run; tests and benchmarks that start
    servers or launchers)."""
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


def group_timeout_s(timeout_s: float) -> float:
    """The default group's own timeout: the Watchdog's latest firing time (timeout + one period) plus one more
    period, so where the Watchdog is armed it always ends the job first, naming and stopping the silent peer. Had
    torch's timeout come first, its exception leaves a SIGSTOPped peer that torchrun gives 30 s to honour SIGTERM."""
    return timeout_s + 2 * Watchdog.period(timeout_s)


def init(timeout_s: float = 300.0) -> DistEnv:
    """Normalise the environment and start the default process group (gloo on CPU, nccl on GPU) if N > 1.
    ``timeout_s`` (see group_timeout_s) bounds every collective on that group; the Watchdog covers the groups
    DeepSpeed makes."""
    _refuse_silent_single_process()
    if not torch.cuda.is_available():  # DeepSpeed then picks its CPU accelerator without warning about it
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env = DistEnv.from_environ()
    env.export()
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if env.distributed and not dist.is_initialized():
        dist.init_process_group(backend=env.backend, timeout=datetime.timedelta(seconds=group_timeout_s(timeout_s)))
    return env


def _refuse_silent_single_process() -> None:
    """``accelerate launch --num_processes N`` without --use_deepspeed (or --multi_gpu) on a CPU machine starts ONE
    plain process (its "simple launcher": it sets ACCELERATE_USE_CPU and, for N > 1, MASTER_ADDR, but no ranks).
    Training alone when N were asked for is an error."""
    env = os.environ
    if "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        raise RuntimeError("accelerate launch started a single process although several were asked for (on CPU its "
                           "multi-process mode is mpirun); use `accelerate launch --use_deepspeed --num_processes N "
                           "…` or torchrun --nproc_per_node N")


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on every rank (as a
    ConfigError with rank 0's message on the others), so no rank waits forever in the next collective."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except Exception as e:  # re-raised below, after every rank has heard of it
            error = e
    if not _active():
        if error is not None:
            raise error
        return result
    box = [(result, None if error is None else f"{type(error).__name__}: {error}")]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    value, failure = box[0]
    if failure is not None:
        from .config import ConfigError

        raise ConfigError(f"rank 0: {failure}")
    return value


def shutdown() -> None:
    stop_failure_notice()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Watchdog:
    """Ends the job when this rank makes no progress for ``timeout_s`` — a peer stopped (SIGSTOP, a hung node)
    or dead, so a collective can never finish. torch's own timeout covers the default process group only; the
    groups DeepSpeed creates get torch's 30-minute default, and NCCL may block the host thread outright.

    The main thread calls ``beat()`` as it makes progress (every micro-step, every evaluation batch). A thread
    writes ``<folder>/rank-<r>`` every few seconds with the time and the last beat; a rank that cannot write
    (stopped, dead) goes stale. On a timeout the watchdog names the stale peers in its error, stops those on its
    own host (they belong to this job and can never resume), and exits with status 3 so the launcher ends the job.
    """

    def __init__(self, folder: Path, env: DistEnv, timeout_s: float):
        self.folder, self.env, self.timeout = Path(folder), env, timeout_s
        self.folder.mkdir(parents=True, exist_ok=True)
        self.last = time.monotonic()
        self.paused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmm4rec-watchdog", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def pause(self):
        """For long single operations without collectives on DeepSpeed's groups (writing a checkpoint)."""
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1
            self.beat()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _file(self, r: int) -> Path:
        return self.folder / f"rank-{r}"

    @staticmethod
    def period(timeout_s: float) -> float:
        """How often the heartbeat is written and the timeout checked: it fires within timeout + period."""
        return max(0.5, min(5.0, timeout_s / 6))

    def _run(self) -> None:
        while not self._stop.wait(self.period(self.timeout)):
            idle = time.monotonic() - self.last
            try:  # whole or not at all: a peer (or a test) reading it mid-write must not see an empty file
                write_atomic(self._file(self.env.rank), f"{time.time():.3f} {socket.gethostname()} {os.getpid()}\n")
            except OSError:
                pass
            if not self.paused and idle > self.timeout:
                self._fire(idle)

    def stale_peers(self, stop: bool) -> list[str]:
        """The peers whose heartbeat is older than half the timeout (stopped, dead, hung), described for the log;
        with ``stop``, those on this host are SIGKILLed: they belong to this job and can never resume."""
        stale, now, host = [], time.time(), socket.gethostname()
        for r in range(self.env.world_size):
            if r == self.env.rank:
                continue
            try:
                stamp, peer_host, pid = self._file(r).read_text().split()
            except (OSError, ValueError):
                stale.append(f"rank {r} (no heartbeat)")
                continue
            if now - float(stamp) > self.timeout / 2:
                stale.append(f"rank {r} on {peer_host} pid {pid} (silent for {now - float(stamp):.0f} s)")
                if stop and peer_host == host:
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
        return stale

    def _fire(self, idle: float) -> None:
        who = ", ".join(self.stale_peers(stop=True)) or \
            "no peer looks stopped: a collective or the file system is stuck"
        logging.getLogger(__name__).error(
            "rank %d made no progress for %.0f s (train.collective_timeout_s=%g): %s; ending the job",
            self.env.rank, idle, self.timeout, who)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(3)


class FailureNotice:
    """Tells the other ranks at once that this rank is failing, and ends this rank when another one is.

    A rank that fails alone (its checkpoint file cannot be written: a full or read-only disk) leaves its peers in
    a collective: gloo notices the closed connection only when that rank's process is gone (and then with a
    traceback instead of the error), NCCL and peers on other nodes not at all, and the SIGTERM torchrun sends the
    survivors is a stop request, which a rank blocked in a collective never reads. So the failing rank posts its
    one-line error in the job's rendezvous store (``announce``) — the TCP key-value store every launcher already
    runs, reachable whatever the collectives are doing — and a thread on every rank polls it every ``POLL_S``:
    on a peer's failure it reports the same line and exits with status 2. The failing rank waits (at most
    ``WAIT_S``) until every rank has read it, since under srun or a plain launch the store lives in rank 0."""

    POLL_S = 0.2
    WAIT_S = 10.0

    def __init__(self, env: DistEnv, on_peer_failure: Callable[[str], None]):
        self.env, self.on_peer_failure = env, on_peer_failure
        # a client of its own: the default group's client may be held by a blocking wait of the main thread; keys
        # carry torchrun's run id and restart count, as its store outlives a restarted attempt
        client = dist.TCPStore(env.master_addr, env.master_port, is_master=False,
                               timeout=datetime.timedelta(seconds=30))
        attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.store = dist.PrefixStore(f"mmm4rec/failure/{attempt}/", client)
        self._failing = threading.Lock()  # held by whichever of the main thread or the poller ends this rank
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmm4rec-failure-notice", daemon=True)
        self._thread.start()

    def announce(self, message: str) -> None:
        """This rank is failing with ``message`` (one line naming the path): tell every rank, and return once they
        have heard (or after WAIT_S)."""
        if not self._failing.acquire(blocking=False):
            return  # the poller is ending this rank for a peer's failure already
        self._stop.set()
        if threading.current_thread() is threading.main_thread():
            # the launcher's SIGTERM, sent once a peer has ended, would turn this rank's exit status 2 into -15
            for s in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(s, signal.SIG_IGN)
        try:
            if self.store.add("count", 1) == 1:  # the first failure is the one every rank reports
                self.store.set("message", f"rank {self.env.rank}: {message}")
            self.store.add("ended", 1)
            deadline = time.monotonic() + self.WAIT_S
            while self.store.add("ended", 0) < self.env.world_size and time.monotonic() < deadline:
                time.sleep(self.POLL_S / 2)
        except Exception:  # noqa: BLE001 the store is gone (its host ended): the peers' collectives fail anyway
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            try:
                if not self.store.check(["message"]):
                    continue
                message = self.store.get("message").decode()
            except Exception:  # noqa: BLE001 the store's host has ended (the job is over): nothing to watch
                return
            if not self._failing.acquire(blocking=False):
                return  # this rank is failing itself and reports its own error
            try:
                self.on_peer_failure(message)
                for handler in logging.getLogger().handlers:
                    handler.flush()
                self.store.add("ended", 1)
            finally:
                os._exit(2)


_notice: "FailureNotice | None" = None


def start_failure_notice(env: DistEnv, on_peer_failure: Callable[[str], None]) -> None:
    """Arm FailureNotice (N > 1 only; after ``init``). ``on_peer_failure(message)`` reports a peer's error line
    (called on the poller thread just before this rank exits with status 2)."""
    global _notice
    if env.distributed and _notice is None:
        try:
            _notice = FailureNotice(env, on_peer_failure)
        except Exception as e:  # noqa: BLE001 the run works without it: a peer's failure then ends it later
            logging.getLogger(__name__).warning("cannot reach the rendezvous store at %s:%d (%s): a rank failing "
                                                "alone ends its peers only through the collectives",
                                                env.master_addr, env.master_port, e)


def announce_failure(message: str) -> None:
    """This rank is about to exit with an error: its peers end too, reporting ``message`` (a no-op in one
    process)."""
    if _notice is not None:
        _notice.announce(message)


def stop_failure_notice() -> None:
    global _notice
    if _notice is not None:
        _notice.close()
        _notice = None


def barrier() -> None:
    if _active():
        dist.barrier()


_watchdog: "Watchdog | None" = None


def start_watchdog(folder: Path, env: DistEnv, timeout_s: float) -> None:
    """Arm the job's Watchdog (N > 1 only): from now on the main thread must ``beat()`` at least every timeout."""
    global _watchdog
    if env.distributed and _watchdog is None:
        _watchdog = Watchdog(folder, env, timeout_s)


def stop_watchdog() -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.close()
        _watchdog = None


def end_stopped_peers() -> None:
    """This rank is failing (e.g. torch's own collective timeout fired before the Watchdog did): stop the silent
    peers on this host now. A SIGSTOPped peer cannot honour the launcher's SIGTERM, and torchrun waits 30 s before
    its SIGKILL, so without this a frozen rank ends the job late."""
    if _watchdog is not None:
        stale = _watchdog.stale_peers(stop=True)
        if stale:
            logging.getLogger(__name__).error("rank %d is failing; stopped its silent peers: %s",
                                              _watchdog.env.rank, ", ".join(stale))


def beat() -> None:
    """Progress was made (a micro-step, an evaluation batch)."""
    if _watchdog is not None:
        _watchdog.beat()


def quiet_period():
    """A long operation that beats nowhere but whose collectives are on the default group (which has its own
    timeout): writing a checkpoint."""
    return _watchdog.pause() if _watchdog is not None else contextlib.nullcontext()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over all ranks (a no-op in one process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=_OPS[op])
    return t


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (equal shapes) concatenated along dim 0, rank order; no gradient."""
    if not _active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """As all_gather, differentiable: the gradient of each rank's slice, summed over ranks, flows back to it."""
    if not _active():
        return t
    from torch.distributed.nn.functional import all_gather as gather_autograd

    return torch.cat(gather_autograd(t.contiguous()))


def gather_candidates(cand: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' candidate vectors (equal counts per rank), differentiable for this rank's own, and the offset of
    this rank's rows: in-batch negatives from the whole global batch."""
    return all_gather_with_grad(cand), rank() * len(cand)


def all_gather_pairs(pairs: tuple[torch.Tensor, torch.Tensor], rows_per_rank: int) -> tuple[torch.Tensor, ...]:
    """(row, item) pairs of every rank, rows renumbered into the rank-ordered concatenation of all ranks'
    ``rows_per_rank`` rows. Counts differ between ranks, so they are exchanged first (evaluation only)."""
    rows, items = pairs
    if not _active():
        return rows, items
    counts = all_gather(torch.tensor([len(rows)], device=rows.device)).tolist()
    width = max(counts)
    pad = lambda t: torch.cat([t, t.new_zeros(width - len(t))])  # noqa: E731
    all_rows, all_items = all_gather(pad(rows)), all_gather(pad(items))
    keep = torch.cat([torch.arange(width, device=rows.device) < c for c in counts])
    offsets = torch.arange(len(counts), device=rows.device).repeat_interleave(width) * rows_per_rank
    return (all_rows + offsets)[keep], all_items[keep]


def exchange_rows(values: torch.Tensor, offset: int, ids: torch.Tensor) -> torch.Tensor:
    """Rows of any ``ids`` of a table whose rows are split over ranks (this rank holds rows offset … offset +
    len(values) - 1). Every rank asks for the same number of ids; each answers the rows it holds for everybody's
    ids (zeros elsewhere) and one all-reduce sums the answers. No gradient: the tables are frozen."""
    if not _active():
        return values[ids - offset]
    everyone = all_gather(ids)
    local = everyone - offset
    held = (local >= 0) & (local < len(values))
    rows = values[local.clamp(0, len(values) - 1)]
    wire = torch.float32 if rows.dtype in (torch.bfloat16, torch.float16, torch.bool) else rows.dtype  # gloo sums
    rows = torch.where(held.view(-1, *[1] * (rows.dim() - 1)), rows.to(wire), 0)
    total = all_reduce(rows, "sum")
    mine = total[rank() * len(ids) : (rank() + 1) * len(ids)]
    return mine.bool() if values.dtype == torch.bool else mine.to(values.dtype)
