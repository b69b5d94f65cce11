"""A run directory: where every file of a run lives (named here once), who may use it, and what it belongs to.

    config.yaml  run.json  train.log  metrics.jsonl  tensorboard/  checkpoints/  best/  export/  summary.json

- One run at a time: rank 0 holds an exclusive lock (fcntl) on ``.lock`` for the run's life; a second run on the
  same folder fails at once, naming the holder (host, pid, start time).
- One config and one dataset per folder: ``run.json`` records the digest of the resolved config (without the
  settings that cannot change results: workers, logging and checkpoint cadence, …) and the dataset's manifest
  hash. Re-running resumes only when both match; a deliberate change needs train.resume=force, and is logged.
- A folder that holds files but no run.json was not made by a run of this project: it is refused, never reused.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from ..config import ConfigError, RunConfig

log = logging.getLogger(__name__)

# Settings that change how a run is executed or reported, not what it computes: they may change on a resume.
OPERATIONAL = {"name", "run_dir", "data.num_workers", "train.log_every", "train.checkpoint_every",
               "train.keep_checkpoints", "train.resume", "train.collective_timeout_s", "train.compile_mode",
               "eval.batch_size", "eval.item_chunk", "model.kernels", "model.stack_streams"}


def config_digest(cfg: RunConfig) -> str:
    data = copy.deepcopy(cfg.to_dict())
    for key in OPERATIONAL:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_of(path: str | os.PathLike) -> Path:
    """The export a path names: a run directory's export/, or the path itself."""
    path = Path(path)
    return path / "export" if (path / "export" / "config.json").exists() else path


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.identity = self.path / "run.json"
        self.log = self.path / "train.log"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tensorboard"
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best"
        self.export = self.path / "export"
        self.summary = self.path / "summary.json"
        self._lock_file = None

    # ------------------------------------------------------------------ one run at a time
    def lock(self) -> None:
        """Exclusive for this process's life (rank 0 calls it); ConfigError naming the holder if taken. A folder
        this project did not make is refused before anything is written into it."""
        self._refuse_foreign()
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"{self.path} is in use by {holder}; wait for it or use another --run-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._lock_file = f  # the lock lives as long as this open file

    # ------------------------------------------------------------------ one config and dataset per folder
    def claim(self, cfg: RunConfig, dataset_hash: str) -> bool:
        """Check (or, for a new run, record) what this folder belongs to. True when it continues a run."""
        want = {"config_digest": config_digest(cfg), "dataset": cfg.data.dataset, "dataset_hash": dataset_hash}
        if self.identity.exists():
            try:
                have = json.loads(self.identity.read_text())
            except ValueError as e:
                raise ConfigError(f"{self.identity}: unreadable ({e}); this folder's run cannot be continued") from None
            changed = [k for k in ("config_digest", "dataset_hash") if have.get(k) != want[k]]
            if changed and cfg.train.resume != "force":
                what = " and ".join({"config_digest": "config", "dataset_hash": "dataset"}[k] for k in changed)
                raise ConfigError(
                    f"{self.path} belongs to a run with another {what} ({have.get('dataset')}, config digest "
                    f"{have.get('config_digest')}; now {want['dataset']}, {want['config_digest']}): use a new "
                    "--run-dir, or --set train.resume=force to continue this run with the change")
            if changed:
                log.warning("train.resume=force: continuing %s with a changed %s", self.path, ", ".join(changed))
                _write_json(self.identity, {**have, **want, "forced": have.get("forced", 0) + 1})
            return True
        self._refuse_foreign()
        _write_json(self.identity, {**want, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return False

    def _refuse_foreign(self) -> None:
        if self.identity.exists() or not self.path.exists():
            return
        if any(p.name != ".lock" for p in self.path.iterdir()):
            raise ConfigError(f"{self.path} holds files but no run.json: it was not made by a run of this project "
                              "and is never reused; choose another --run-dir")

    def read_config(self) -> Optional[dict]:
        import yaml

        return yaml.safe_load(self.config.read_text()) if self.config.exists() else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
