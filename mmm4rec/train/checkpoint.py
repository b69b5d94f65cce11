"""Checkpoints: DeepSpeed state (ZeRO-sharded) + client state + every rank's RNG, written atomically.

    <run>/checkpoints/step-00000120/   DeepSpeed files, rng-rank<r>.pt, COMPLETE (sizes of every file)
    <run>/checkpoints/latest           the tag of the newest complete checkpoint; replaced only after COMPLETE

A checkpoint without COMPLETE, with a file of the wrong size, or that fails to load is skipped with a warning and
the previous one is used. The checkpoint directory must be shared by all nodes (as DeepSpeed requires).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..config import ConfigError
from ..distributed import DistEnv, barrier

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, run_dir: str | os.PathLike, env: DistEnv, keep: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.env, self.keep = env, max(1, keep)

    # ------------------------------------------------------------------ write
    def save(self, engine, step: int, client_state: dict, config_digest: str) -> Path:
        tag = f"step-{step:08d}"
        path = self.dir / tag
        if self.env.is_main and path.exists():  # a leftover from a run killed while writing this very step
            shutil.rmtree(path)
        barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), path / f"rng-rank{self.env.rank}.pt")
        barrier()
        if self.env.is_main:
            sizes = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
            _write_atomic(path / COMPLETE, json.dumps({"step": step, "world_size": self.env.world_size,
                                                        "config_digest": config_digest, "files": sizes}))
            _write_atomic(self.dir / "latest", tag)
            for old in self.complete_tags()[: -self.keep]:
                shutil.rmtree(self.dir / old, ignore_errors=True)
        barrier()
        return path

    # ------------------------------------------------------------------ read
    def complete_tags(self) -> list[str]:
        """Tags with a COMPLETE marker whose files all have their recorded sizes, oldest first."""
        tags = []
        for path in sorted(self.dir.glob("step-*")):
            try:
                sizes = json.loads((path / COMPLETE).read_text())["files"]
                if all((path / f).stat().st_size == n for f, n in sizes.items()):
                    tags.append(path.name)
                    continue
                why = "a file has the wrong size"
            except (OSError, ValueError, KeyError) as e:
                why = f"no valid {COMPLETE} marker ({type(e).__name__})"
            log.warning("checkpoint %s is incomplete or damaged (%s); ignoring it", path, why)
        return tags

    def load_latest(self, engine, config_digest: str) -> Optional[dict]:
        """Restore the newest usable checkpoint into ``engine`` and this rank's RNG; return its client state
        (None when there is none)."""
        if not self.dir.exists():
            return None
        tags = self.complete_tags()
        wanted = (self.dir / "latest").read_text().strip() if (self.dir / "latest").exists() else None
        if wanted and wanted not in tags:
            log.warning("latest checkpoint %s is not complete; falling back to %s", wanted, tags[-1] if tags else "none")
        for tag in reversed(tags):
            state = json.loads((self.dir / tag / COMPLETE).read_text())
            if state["config_digest"] != config_digest:
                raise ConfigError(f"{self.dir / tag} belongs to a different model configuration "
                                  f"(digest {state['config_digest']} ≠ {config_digest}); use a new run directory")
            if state["world_size"] != self.env.world_size:
                raise ConfigError(f"{self.dir / tag} was written by {state['world_size']} processes, this run has "
                                  f"{self.env.world_size}; ZeRO shards are per rank (restart with the same world "
                                  f"size, or start from its export with train.init_from)")
            try:
                _, client = engine.load_checkpoint(str(self.dir), tag=tag, load_module_strict=True)
            except Exception as e:  # a damaged file DeepSpeed cannot read: use the one before
                log.warning("checkpoint %s failed to load (%s: %s); trying the previous one", tag,
                            type(e).__name__, e)
                continue
            set_rng_state(torch.load(self.dir / tag / f"rng-rank{self.env.rank}.pt", weights_only=True))
            log.info("resumed from %s (step %d)", self.dir / tag, client["global_step"])
            return client
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
