"""Checkpoints: DeepSpeed state (ZeRO-sharded) + client state + every rank's RNG, written atomically, read as data.

    <run>/checkpoints/step-00000120/   DeepSpeed files, rng-rank<r>.pt, COMPLETE (sizes of every file)
    <run>/checkpoints/latest           the tag of the newest complete checkpoint; replaced only after COMPLETE

Reading: every file goes through ``torch.load(weights_only=True)`` with an allow-list of the few non-tensor types
DeepSpeed stores (``SafeCheckpointEngine`` replaces DeepSpeed's own engine, which unpickles anything): a checkpoint
is data, never code. A file asking for any other type is refused with an error naming the file and the type.
A checkpoint without COMPLETE, with a file of the wrong size, or that fails to load is skipped with a warning and
the previous one is used; when checkpoints exist and none can be loaded the run stops with an error instead of
silently starting over. Retention never deletes the checkpoint ``latest`` names. The checkpoint directory must be
shared by all nodes (as DeepSpeed requires).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..config import ConfigError
from ..data.atomic import write_atomic
from .. import distributed
from ..distributed import DistEnv, barrier

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class CheckpointError(RuntimeError):
    """A checkpoint that must not or cannot be used; the message names the file."""


def _deepspeed_globals() -> list:
    """The non-tensor types DeepSpeed (0.16–0.19) writes into model and ZeRO optimizer state files."""
    import collections

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, collections.OrderedDict,
            torch.Size, set, frozenset]


def safe_load(path: str | os.PathLike, map_location=None):
    """``torch.load`` that unpickles tensors, containers and the allow-listed DeepSpeed types only."""
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch's message is a paragraph; the line that names what the file asked for is the one to show
        what = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        what = what.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
        raise CheckpointError(f"{path}: refused to load: it asks for code or a type not allowed in a checkpoint "
                              f"({what})") from None


def _safe_engine_class():
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, loading with weights_only=True and the allow-list, and saving
        through a Python file so that a failed write keeps its OSError (see ``save_file``)."""

        def load(self, path: str, map_location=None):
            return safe_load(path, map_location)

        def save(self, state_dict, path: str):
            save_file(state_dict, path, _use_new_zipfile_serialization=self.zipfile_serialization)

    return SafeCheckpointEngine


class _WriteErrors:
    """A file's ``write`` that remembers the first OSError (torch's writer turns it into a RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_file(obj, path: str | os.PathLike, **kwargs) -> None:
    """``torch.save`` that reports a failed write as the OSError it is, naming the file. torch's own writer turns
    a full disk (ENOSPC, EFBIG) into "RuntimeError: [enforce fail at inline_container.cc] unexpected pos …", with
    no path and no reason, whether given a path or a file."""
    with open(path, "wb") as f:
        out = _WriteErrors(f)
        try:
            torch.save(obj, out, **kwargs)
        except RuntimeError:
            if out.error is None:
                raise
            raise OSError(out.error.errno, out.error.strerror, str(path)) from None


def install_safe_loading(engine) -> None:
    """Make every checkpoint file this DeepSpeed engine reads go through ``safe_load``."""
    current = engine.checkpoint_engine
    safe = _safe_engine_class()
    if type(current).__name__ != "TorchCheckpointEngine":
        raise ConfigError(f"DeepSpeed checkpoint engine {type(current).__name__} is not supported here (only the "
                          "torch engine is loaded safely); remove the checkpoint engine settings from the ZeRO JSON")
    current.__class__ = safe  # keeps its configuration (serialization format, name)


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
    def save(self, engine, step: int, client_state: dict, model_digest: str) -> Path:
        tag = f"step-{step:08d}"
        path = self.dir / tag
        if self.env.is_main and path.exists():  # a leftover from a run killed while writing this very step
            shutil.rmtree(path)
        barrier()
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
            save_file(rng_state(), path / f"rng-rank{self.env.rank}.pt")
        except OSError as e:
            self._failed(path, e)
        barrier()
        if self.env.is_main:
            try:
                sizes = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
                write_atomic(path / COMPLETE, json.dumps({"step": step, "world_size": self.env.world_size,
                                                          "model_digest": model_digest, "files": sizes}))
                write_atomic(self.dir / "latest", tag)
            except OSError as e:
                self._failed(path, e)
            self._retain(tag)
        barrier()
        return path

    def _failed(self, path: Path, e: OSError):
        """One line naming the checkpoint and the system's reason ("No space left on device"); the partial
        folder is removed (it would hold the space a retry needs) and ``latest`` still names the previous one. The
        other ranks hear of it first (they end at once, see distributed.FailureNotice), so none writes into the
        folder after it is removed."""
        where = e.filename if e.filename and Path(e.filename) != path else path
        message = (f"{where}: writing the checkpoint failed ({(e.strerror or str(e)).lower()}); the previous "
                   "checkpoint is kept")
        distributed.announce_failure(message)
        shutil.rmtree(path, ignore_errors=True)
        raise CheckpointError(message) from None

    def _retain(self, newest: str) -> None:
        """Keep the ``keep`` most recent complete checkpoints by step — and always the one just written."""
        tags = [t for t in self.complete_tags() if t != newest]
        for old in tags[: max(0, len(tags) - (self.keep - 1))]:
            shutil.rmtree(self.dir / old, ignore_errors=True)

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
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                why = f"no valid {COMPLETE} marker ({type(e).__name__})"
            log.warning("checkpoint %s is incomplete or damaged (%s); ignoring it", path, why)
        return tags

    def refuse_other(self, tag: str, model_digest: str) -> None:
        """ConfigError unless checkpoint ``tag`` fits this run: the same model (``rundir.model_digest``) and world
        size. Checked before anything is written (RunDir.check_checkpoints) and again when loading."""
        state = json.loads((self.dir / tag / COMPLETE).read_text())
        theirs = state.get("model_digest", state.get("config_digest"))  # the key's name before 2026-12
        if theirs != model_digest:
            raise ConfigError(f"{self.dir / tag} belongs to a different model configuration "
                              f"(digest {theirs} ≠ {model_digest}); use a new run directory")
        if state.get("world_size") != self.env.world_size:
            raise ConfigError(f"{self.dir / tag} was written by {state.get('world_size')} processes, this run has "
                              f"{self.env.world_size}; ZeRO shards are per rank (restart with the same world "
                              f"size, or start from its export with train.init_from)")

    def load_latest(self, engine, model_digest: str) -> Optional[dict]:
        """Restore the newest usable checkpoint into ``engine`` and this rank's RNG; return its client state
        (None when there is no checkpoint at all; an error when there are some and none loads)."""
        if not self.dir.exists():
            return None
        tried = sorted(self.dir.glob("step-*"))
        tags = self.complete_tags()
        wanted = (self.dir / "latest").read_text().strip() if (self.dir / "latest").exists() else None
        if wanted and wanted not in tags:
            log.warning("latest checkpoint %s is not complete; falling back to %s", wanted, tags[-1] if tags else "none")
        failures = []
        for tag in reversed(tags):
            self.refuse_other(tag, model_digest)
            error = None
            try:
                _, client = engine.load_checkpoint(str(self.dir), tag=tag, load_module_strict=True)
                if client is None:
                    raise CheckpointError("DeepSpeed found no model state")
                set_rng_state(safe_load(self.dir / tag / f"rng-rank{self.env.rank}.pt"))
            except CheckpointError:
                raise  # refused as unsafe: never fall back silently past a tampered file
            except Exception as e:  # a damaged file DeepSpeed cannot read: use the one before
                error = f"{type(e).__name__}: {e}"
            # every rank resumes from the same checkpoint: a file damaged on one rank's shard alone sends all of
            # them to the previous one (alone, that rank resumed steps behind the others, out of step for good)
            failed = distributed.all_reduce(torch.tensor([float(error is not None)], device=engine.device), "max")
            if failed.item():
                why = error or "another rank could not load its part"
                failures.append(f"{tag}: {why}")
                if error is not None or self.env.is_main:
                    log.warning("checkpoint %s failed to load (%s); every rank tries the previous one", tag, why)
                continue
            log.info("resumed from %s (step %d)", self.dir / tag, client["progress"]["global_step"])
            return client
        if tried:
            raise CheckpointError(f"{self.dir}: holds {len(tried)} checkpoint(s) and none can be loaded "
                                  f"({'; '.join(failures) or 'none is complete'}); not starting over silently — "
                                  "move the folder away to train from scratch")
        return None
