"""A run directory: where every file of a run lives (named here once), who may use it, and what it belongs to.

    config.yaml  run.json  train.log  metrics.jsonl  tensorboard/  checkpoints/  best/  export/  summary.json

- One run at a time: rank 0 holds an exclusive lock (fcntl) on ``.lock`` for the run's life; a second run on the
  same folder fails at once, naming the holder (host, pid, start time).
- One config and one dataset per folder: ``run.json`` records the resolved config (without the settings that
  cannot change results: workers, logging and checkpoint cadence, …), its digest and the dataset's manifest
  hash. Re-running resumes only when both match (a refusal names the settings that differ); a deliberate change
  needs train.resume=force, and is logged.
- Nothing is written before every check passes: ``check`` (and ``check_checkpoints``, the refusals a resume would
  meet later) only read; ``record`` writes run.json once the whole start-up has succeeded. A refused start —
  a refused train.resume=force included — leaves the folder as it was.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import ConfigError, RunConfig, flatten, load_yaml, read_text, short_repr
from ..data.atomic import write_atomic

log = logging.getLogger(__name__)

# Settings that change how a run is executed or reported, not what it computes: they may change on a resume.
# (model.kernels and model.stack_streams choose how the same math runs: checkpoints stay interchangeable.)
OPERATIONAL = {"name", "run_dir", "data.num_workers", "train.log_every", "train.checkpoint_every",
               "train.keep_checkpoints", "train.resume", "train.collective_timeout_s", "train.compile_mode",
               "eval.batch_size", "eval.item_chunk", "model.kernels", "model.stack_streams"}
# A registered component's option section, left out while empty: the identity of every run made before these
# sections existed stays what it was.
OPTIONAL_SECTIONS = ("model.options", "train.loss_options")


def identity_config(cfg: RunConfig) -> dict:
    """The resolved config without the OPERATIONAL settings: what a run directory belongs to."""
    data = copy.deepcopy(cfg.to_dict())
    for key in (*OPERATIONAL, *OPTIONAL_SECTIONS):
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        if key in OPERATIONAL or node.get(leaf) == {}:
            node.pop(leaf, None)
    return data


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_digest(cfg: RunConfig) -> str:
    """The run's identity (run.json): every setting that can change its results."""
    return _digest(identity_config(cfg))


def model_digest(cfg: RunConfig) -> str:
    """The model's identity (each checkpoint's COMPLETE marker): the model settings of ``config_digest``, so a
    resume with another optimiser setting reaches the run.json check, and one with another model is refused
    even under train.resume=force."""
    return _digest(identity_config(cfg)["model"])


def config_changes(old: Any, new: dict, limit: int = 6) -> list[str]:
    """``key: old → new`` for every result-relevant setting that differs (dotted keys, OPERATIONAL ones left out;
    at most ``limit``, then how many more)."""
    if not isinstance(old, dict):
        return []
    a, b = flatten(old), flatten(new)
    changed = [f"{k}: {short_repr(a.get(k, '(unset)'), 40)} → {short_repr(b.get(k, '(unset)'), 40)}"
               for k in sorted(a.keys() | b.keys()) if k not in OPERATIONAL and a.get(k) != b.get(k)]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


@dataclass
class Claim:
    """What ``RunDir.check`` found: whether the run continues, and the run.json ``record`` writes (None: keep)."""

    continuing: bool
    identity: Optional[dict]
    forced: bool = False


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
    def check(self, cfg: RunConfig, dataset_hash: str) -> Claim:
        """Whether this folder may run ``cfg`` on the dataset (a ConfigError naming what differs if not), and
        what ``record`` will write. Writes nothing."""
        want = {"config_digest": config_digest(cfg), "dataset": cfg.data.dataset, "dataset_hash": dataset_hash,
                "config": identity_config(cfg)}
        if not self.identity.exists():
            self._refuse_foreign()
            return Claim(False, {**want, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            have = json.loads(self.identity.read_text())
            if not isinstance(have, dict):
                raise ValueError(f"expected a JSON object, got {type(have).__name__}")
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.identity}: unreadable ({e}); this folder's run cannot be continued") from None
        changed = [k for k in ("config_digest", "dataset_hash") if have.get(k) != want[k]]
        if not changed:
            # a run.json of an older version gains the config it belongs to
            return Claim(True, None if "config" in have else {**have, "config": want["config"]})
        if cfg.train.resume != "force":
            what = " and ".join({"config_digest": "config", "dataset_hash": "dataset"}[k] for k in changed)
            raise ConfigError(f"{self.path} belongs to a run with another {what} ({self._differences(have, want)}): "
                              "use a new --run-dir, or --set train.resume=force to continue this run with the change")
        return Claim(True, {**have, **want, "forced": have.get("forced", 0) + 1}, forced=True)

    def _differences(self, have: dict, want: dict) -> str:
        """The settings that differ, from the config run.json records (or, for a run.json of an older version,
        the run's config.yaml), and the dataset if it changed."""
        parts = []
        if have.get("config_digest") != want["config_digest"]:
            old = have.get("config")
            if old is None and self.config.is_file():
                try:
                    old = self.read_config()
                except ConfigError:
                    old = None
            old = flatten(old) if isinstance(old, dict) else None
            if old is not None:  # config.yaml holds the operational settings and "run_dir" too: compared alike
                old = {k: v for k, v in old.items() if k not in OPERATIONAL}
            changes = config_changes(old, want["config"]) if old is not None else []
            parts.append(", ".join(changes) if changes else
                         f"config digest {have.get('config_digest')} → {want['config_digest']}")
        if have.get("dataset_hash") != want["dataset_hash"]:
            if have.get("dataset") != want["dataset"]:
                parts.append(f"dataset {short_repr(have.get('dataset'))} → {short_repr(want['dataset'])}")
            else:
                parts.append(f"dataset {short_repr(want['dataset'])} changed since (manifest hash "
                             f"{str(have.get('dataset_hash'))[:12]} → {want['dataset_hash'][:12]})")
        return "; ".join(parts)

    def record(self, claim: Claim) -> None:
        """Write what ``check`` decided (after every start-up check has passed)."""
        if claim.forced:
            log.warning("train.resume=force: continuing %s with a changed config or dataset", self.path)
        if claim.identity is not None:
            write_atomic(self.identity, json.dumps(claim.identity, indent=1))

    def check_checkpoints(self, model_digest: str, env) -> None:
        """The refusals a resume meets in Checkpointer.load_latest on its newest complete checkpoint (another
        model, another world size), made before anything is written. Reads the COMPLETE markers only."""
        from .checkpoint import Checkpointer

        checkpoints = Checkpointer(self.path, env)
        tags = checkpoints.complete_tags() if self.checkpoints.is_dir() else []
        if tags:
            checkpoints.refuse_other(tags[-1], model_digest)

    def _refuse_foreign(self) -> None:
        if self.identity.exists() or not self.path.exists():
            return
        if any(p.name != ".lock" for p in self.path.iterdir()):
            raise ConfigError(f"{self.path} holds files but no run.json: it was not made by a run of this project "
                              "and is never reused; choose another --run-dir")

    def read_config(self) -> Optional[dict]:
        return load_yaml(read_text(self.config, "a YAML file"), str(self.config)) if self.config.exists() else None
