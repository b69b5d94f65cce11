"""``mmm4rec export`` and ``mmm4rec recommend`` (arguments: mmm4rec.commands).

recommend reads JSON lines ``{"user": …, "history": [[item key, unix seconds], …]}`` (oldest first) and writes one
``{"user": …, "items": [[item key, score], …]}`` per input line, best first, in input order, streaming in batches.
An --output file appears complete or not at all. Bad input is one line on stderr naming file and line (exit 2).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import IO, Iterator

import torch

from .. import __version__
from ..config import ConfigError, load_config
from ..data.atomic import replace_folder
from ..data.features import FeatureStore, default_features_dir
from ..data.remote import DatasetSource
from ..data.schema import DataError
from ..model import from_pretrained
from .export import item_features, write_export
from .recommender import Recommender


def _one_line_errors(run):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped


# -------------------------------------------------------------------------------------------------------- export
@_one_line_errors
def export(args: argparse.Namespace) -> int:
    """A run's weights + the feature store its config names -> a new self-contained export folder."""
    run, out = Path(args.run), Path(args.out)
    if out.exists():
        raise ConfigError(f"{out}: exists; name a new folder")
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: not a run directory (no config.yaml)")
    cfg = load_config(str(run / "config.yaml"))
    weights = run / args.weights
    if not (weights / "config.json").is_file():
        raise DataError(f"{weights}: no exported weights (config.json + model.safetensors)")
    store_dir = args.features or cfg.data.features or default_features_dir(DatasetSource.from_config(cfg.data), cfg.data.encoder)
    store = FeatureStore.open(store_dir)
    meta = json.loads((weights / "config.json").read_text())
    if meta.get("encoder") not in (None, store.manifest["encoder"]):
        raise DataError(f"{store.path}: features of another encoder than {weights} was trained on")
    if meta.get("num_items") != store.num_items:
        raise DataError(f"{store.path}: {store.num_items} items, but {weights} was trained on {meta.get('num_items')}")
    model = from_pretrained(weights, item_features(store), expect=cfg.model)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    provenance = {
        "written_by": f"mmm4rec export {__version__}", "run": str(run.resolve()), "weights": args.weights,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "torch": torch.__version__, "run_config": cfg.to_dict(),
        "run_summary": {k: summary[k] for k in ("task", "test", "best_epoch", "global_step", "world_size")
                        if k in summary},
    }
    with replace_folder(out) as tmp:  # out does not exist: nothing is replaced, the export appears complete
        write_export(model, tmp, store=store, provenance=provenance, copy_features=not args.reference_features)
    print(json.dumps({"export": str(out), "items": store.num_items, "features": "referenced" if
                      args.reference_features else "copied"}))
    return 0


# ----------------------------------------------------------------------------------------------------- recommend
@_one_line_errors
def recommend(args: argparse.Namespace) -> int:
    rec = Recommender.from_pretrained(args.export, device=args.device, transfer=args.transfer,
                                      features=args.features)
    users = 0
    with _lines(args.input) as lines, _output(args.output) as out:
        records = _records(lines, args.input)
        while chunk := list(islice(records, args.batch_size)):
            labels = [f"{args.input}:{line} (user {user!r})" for line, user, _ in chunk]
            ranked = rec.recommend([history for _, _, history in chunk], k=args.k, exclude_seen=not args.keep_seen,
                                   unknown=args.unknown, batch_size=args.batch_size, labels=labels)
            for (_, user, _), items in zip(chunk, ranked):
                out.write(json.dumps({"user": user, "items": [[key, score] for key, score in items]},
                                     ensure_ascii=False) + "\n")
            users += len(chunk)
    print(json.dumps({"users": users, "k": args.k, "output": args.output or "stdout",
                      "skipped": rec.skipped.as_dict()}), file=sys.stderr)
    return 0


def _records(lines: IO[str], name: str) -> Iterator[tuple[int, object, list]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{name}:{number}: not valid JSON: {e}") from None
        if not isinstance(record, dict) or "user" not in record or not isinstance(record.get("history"), list):
            raise DataError(f'{name}:{number}: expected {{"user": …, "history": [[item key, unix seconds], …]}}')
        yield number, record["user"], record["history"]


@contextlib.contextmanager
def _lines(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdin
        return
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        yield f


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or a temp file renamed to ``path`` once everything is written (removed on an error)."""
    if path is None:
        yield sys.stdout
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
