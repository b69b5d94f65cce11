"""What a run tells the outside world: logs (rank 0 talks, other ranks only warn), TensorBoard scalars and
hparams, ``metrics.jsonl`` and the final ``summary.json`` — all written by rank 0 into the run directory."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ..distributed import DistEnv


class _KnownNoise(logging.Filter):
    """Messages libraries print on every run that are expected here, dropped from the run's log (docs/design.md
    explains them once): DeepSpeed's warning about client optimisers it has not tested (ours are plain torch
    optimisers over its flat partitions) and its accelerator auto-detection notice."""

    PHRASES = ("untested optimizer", "Setting accelerator to CPU", "Setting ds_accelerator")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.PHRASES)


def setup_logging(env: DistEnv, log_file: Optional[Path] = None) -> None:
    """One stream for the run's messages (stderr, and the run's train.log on rank 0); rank 0 talks, the other
    ranks only warn."""
    fmt = f"%(asctime)s [rank {env.rank}/{env.world_size}] %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and env.is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    noise = _KnownNoise()
    for h in handlers:
        h.addFilter(noise)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING, format=fmt, handlers=handlers,
                        force=True)
    adopt_library_loggers()
    # DeepSpeed's collectives call torch.distributed functions torch has renamed: every rank warned about each
    # once per run (all_gather_into_tensor, reduce_scatter_tensor …), burying what the run says. Ours are not
    # affected; the filter names torch.distributed's deprecations only.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    try:  # transformers prints a progress bar per rank while loading weights; the log says what loads
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def adopt_library_loggers() -> None:
    """Route DeepSpeed's and torch.distributed's loggers through the run's handlers (and their noise filter), at
    WARNING. DeepSpeed installs its own stdout handler when it is first imported: call again after that."""
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "compilers"):  # compilers: DeepSpeed's aio probe
        logger = logging.getLogger(noisy)
        logger.setLevel(logging.WARNING)
        logger.handlers, logger.propagate = [], True


def announce(env: DistEnv) -> None:
    """One line per rank (all ranks), so a job log shows who ran where."""
    import os

    node = os.environ.get("SLURMD_NODENAME", "")
    print(f"rank {env.rank}/{env.world_size} local_rank {env.local_rank} host {socket.gethostname()}"
          f"{' node ' + node if node else ''} launcher {env.launcher} device {env.device}", file=sys.stderr, flush=True)


def report_error(env: DistEnv, message: str) -> None:
    """A run's one-line error (a refused config, bad data, a bad checkpoint: checks every rank makes alike). Rank 0
    logs it; the other ranks do not repeat it on stderr. Under torchrun every rank also writes it into its error
    file (TORCHELASTIC_ERROR_FILE), so torchrun's failure summary, printed last, ends with this line instead of
    'To enable traceback see: …'."""
    if env.is_main:
        logging.getLogger("mmm4rec").error("%s", message)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        record = {"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                                "timestamp": str(int(time.time()))}}}
        try:
            Path(path).write_text(json.dumps(record))
        except OSError:
            pass  # the message is on rank 0's stderr already


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:
        return math.nan


class StartupClock:
    """Logs each start-up phase as it ends (data, model, engine …) with its time, so a slow start shows where it
    is before the first step line."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()

    def done(self, phase: str) -> float:
        now = time.perf_counter()
        spent, self.last = now - self.last, now
        logging.getLogger("mmm4rec").info("start-up: %s %.1f s (%.1f s in all)", phase, spent, now - self.started)
        return spent


class Monitor:
    """TensorBoard + JSON lines on rank 0; a no-op elsewhere. ``purge_step`` (a resumed run's first new step)
    makes TensorBoard drop what an interrupted run wrote past its checkpoint, so no step appears twice."""

    def __init__(self, run, env: DistEnv, purge_step: Optional[int] = None):
        self.active = env.is_main
        self.writer = None
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run.tensorboard), purge_step=purge_step)
            self.jsonl = open(run.metrics, "a", buffering=1)

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
