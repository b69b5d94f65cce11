"""``mmm4rec export`` and ``mmm4rec recommend`` (arguments: mmm4rec.commands).

recommend reads JSON lines ``{"user": …, "history": [[item key, time], …]}`` (oldest first, UTF-8; a byte-order
mark is accepted, as in YAML configs; times in Unix seconds, --time-unit ms, or ISO-8601 strings) and writes one
``{"user": …, "items": [[item key, score], …]}`` (with --with-text ``[item key, score, title]``) per good input
line, best first, in input order, streaming in batches. An --output file appears complete or not at all (a temp
file beside it, renamed over it at the end), and is never the --input file. A bad line (not JSON, not a record, a
malformed history) is reported on stderr as ``file:line: reason``, counted in the summary ("bad_lines") and left
out; with --strict it stops the run instead (exit 2, nothing written). An unknown item key follows --unknown (an
error by default: the export and the histories do not match), and undecodable bytes stop the run (the file is
not UTF-8). With --dataset, a line ``{"user": key}`` without a history is answered from that user's history in the
dataset (as ``Recommender(dataset=…)``'s ``users=`` is); a key it does not hold is a bad line, or with
--unknown-user popular gets the popular items. Bad arguments are one line naming the argument (exit 2), checked before the export is loaded.

torch, transformers and the model are imported when a command runs, after its arguments are checked.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from itertools import islice
from pathlib import Path
from typing import IO, Iterator, Optional

from .. import __version__
from ..config import ConfigError, load_config, short_repr
from ..data.atomic import AtomicFile
from ..data.schema import DataError


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
    from ..data.atomic import replace_folder
    from ..data.features import FeatureStore, default_features_dir
    from ..data.remote import DatasetSource
    from ..model import from_pretrained
    from ..provenance import provenance
    from .export import catalogue_extras, item_features, write_export

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
    prov = provenance(written_by=f"mmm4rec export {__version__}", run=str(run.resolve()), weights=args.weights,
                      run_config=cfg.to_dict(),
                      run_summary={k: summary[k] for k in ("task", "test", "best_epoch", "global_step", "world_size")
                                   if k in summary})
    extras = {}
    try:  # the empty-history fallback and the titles; the export is still written without them
        from ..data.dataset import load_manifest
        from ..data.stream import SeqIndex

        dataset = load_manifest(DatasetSource.from_config(cfg.data))
        extras = catalogue_extras(dataset, store, SeqIndex.load_or_build(dataset, store.index, store.path),
                                  cfg.train_split)
    except (OSError, ValueError, ConfigError) as e:  # DataError is a ValueError
        print(f"warning: export without popularity and titles (the dataset is not readable here: {e})",
              file=sys.stderr)
    with replace_folder(out) as tmp:  # out does not exist: nothing is replaced, the export appears complete
        write_export(model, tmp, store=store, provenance=prov, copy_features=not args.reference_features,
                     **extras)
    done = {"export": str(out), "items": store.num_items,
            "features": "referenced" if args.reference_features else "copied"}
    if args.ann:
        from .recommender import ANN_CACHE, Recommender

        index = Recommender.from_pretrained(out).prepare_ann(force=True)
        done["ann_cache"] = {"folder": str(out / ANN_CACHE), "index": index.factory,
                             "build_s": round(index.build_seconds, 1)}
    print(json.dumps(done))
    return 0


# ----------------------------------------------------------------------------------------------------- recommend
@_one_line_errors
def recommend(args: argparse.Namespace) -> int:
    check_recommend_arguments(args)
    with _lines(args.input) as lines:
        from .recommender import Recommender  # seconds to import: after the checks

        rec = Recommender.from_pretrained(args.export, device=args.device, transfer=args.transfer,
                                          features=args.features, dataset=args.dataset, images=False)
        if args.with_text and rec.texts is None:  # the export's, not a line's: stop before any scoring
            raise DataError(f"{args.export}: --with-text, but this export stores no item texts (texts.json); "
                            "re-export it from its run: `mmm4rec export --run RUN_DIR --out NEW_DIR`")
        users, bad = 0, {"count": 0}
        with _output(args.output) as out:
            records = _records(lines, args.input, None if args.strict else bad, args.dataset is not None)
            while chunk := list(islice(records, args.batch_size)):
                if args.dataset is not None:
                    chunk = _known_users(rec, chunk, args, bad)
                labels = [f"{args.input}:{line} (user {short_repr(user, 60)})" for line, user, _ in chunk]
                options = dict(k=args.k, exclude_seen=not args.keep_seen, unknown=args.unknown,
                               time_unit=args.time_unit, with_text=args.with_text)
                try:
                    ranked = rec.recommend([h for _, _, h in chunk], batch_size=args.batch_size, labels=labels,
                                           **options)
                except DataError:
                    if args.strict:
                        raise
                    ranked = _one_by_one(rec, chunk, labels, options, bad)
                for (_, user, _), items in zip(chunk, ranked):
                    if items is not None:
                        answer = {"user": user, "items": [list(item) for item in items]}
                        text = json.dumps(answer, ensure_ascii=False)
                        try:
                            text.encode("utf-8")
                        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the input) has no UTF-8 bytes
                            text = json.dumps(answer)  # (stdout may write it as a raw byte): its JSON escape
                        out.write(text + "\n")
                        users += 1
    print(json.dumps({"users": users, "bad_lines": bad["count"], "k": args.k, "output": args.output or "stdout",
                      "skipped": rec.skipped.as_dict()}), file=sys.stderr)
    return 0


def _known_users(rec, chunk: list, args: argparse.Namespace, bad: dict) -> list:
    """Lines that name a user without a history, with that user's history from the dataset; an unknown user is a
    bad line (or under --unknown-user popular a new visitor: an empty history)."""
    out = []
    for line, user, history in chunk:
        if history is None:
            try:
                if not isinstance(user, str):
                    raise DataError(f"a user key is a string, got {short_repr(user)}")
                history = rec.history(user)
            except DataError as e:
                if args.unknown_user == "popular" and isinstance(user, str):
                    history = []
                elif args.strict:
                    raise DataError(f"{args.input}:{line}: {e}") from None
                else:
                    _report(bad, f"{args.input}:{line}: {e}")
                    continue
        out.append((line, user, history))
    return out


def _one_by_one(rec, chunk: list, labels: list[str], options: dict, bad: dict) -> list:
    """A batch with a bad history: each history alone, a bad one reported (``file:line …: reason``) and None. An
    unknown item key under --unknown error is not a bad line but a mismatch of export and input: it stops the run."""
    out = []
    for (_, _, history), label in zip(chunk, labels):
        try:
            out.append(rec.recommend([history], labels=[label], **options)[0])
        except DataError as e:
            if "unknown item key" in str(e):
                raise
            _report(bad, str(e))
            out.append(None)
    return out


def _report(bad: dict, message: str) -> None:
    bad["count"] += 1
    print(f"bad line: {message}", file=sys.stderr)


def check_recommend_arguments(args: argparse.Namespace) -> None:
    """Everything that can be refused before the export is loaded and a user scored. The output must not be the
    input: the rename at the end would replace the user's histories with the recommendations."""
    for flag, value in (("--batch-size", args.batch_size), ("--k", args.k)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.output is None:
        return
    out = Path(args.output)
    if out.is_dir() or args.output.endswith(("/", os.sep)):
        raise DataError(f"{out}: --output is a folder; name the file the recommendations go to")
    if not out.parent.is_dir():  # Path("recs.jsonl").parent is "."
        raise DataError(f"{out.parent}: the folder of --output does not exist")
    same = _same_file(out, sys.stdin.fileno() if args.input == "-" else args.input)
    if same:
        raise DataError(f"{out}: --output is the same file as --input {args.input}; writing it would replace the "
                        "histories with the recommendations: name another --output")


def _same_file(path: Path, other: "str | int") -> bool:
    """Whether ``path`` and ``other`` (a path or an open descriptor, e.g. stdin) are one file: compared by device
    and inode, so another spelling, a symlink or a hard link to the same file counts as the same."""
    try:
        a = os.stat(path)
        b = os.fstat(other) if isinstance(other, int) else os.stat(other)
    except OSError:  # one of them does not exist (yet): not the same file; a missing --input is named later
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _records(lines: IO[bytes], name: str, bad: Optional[dict] = None,
             by_user: bool = False) -> Iterator[tuple[int, object, Optional[list]]]:
    """(line number, user, history) per record; a line that is not one is an error, or with ``bad`` (a counter)
    reported, counted and left out. ``by_user``: a record may name a user without a history (history None)."""
    for number, raw in enumerate(lines, 1):
        try:
            record = _record(raw, number, name, by_user)
        except _BadLine as e:
            if bad is None:
                raise DataError(str(e)) from None
            _report(bad, str(e))
            continue
        if record is not None:
            yield number, record["user"], record.get("history")


class _BadLine(Exception):
    pass


def _record(raw: bytes, number: int, name: str, by_user: bool = False) -> Optional[dict]:
    """One decoded record, None for a blank line; _BadLine for a line that is not a record; an undecodable byte
    stops the run (the file is not UTF-8)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "histories are read as UTF-8") from None
    if number == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark, as some editors write: accepted everywhere
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as e:
        raise _BadLine(f"{name}:{number}: not valid JSON: {e}") from None
    except RecursionError:  # json's decoder recurses per nesting level: [[[[… a thousand deep
        raise _BadLine(f"{name}:{number}: not valid JSON: nested too deeply") from None
    if not isinstance(record, dict) or "user" not in record or not (
            isinstance(record.get("history"), list) or (by_user and "history" not in record)):
        alone = ' or {"user": key} (with --dataset)' if by_user else ""
        raise _BadLine(f'{name}:{number}: expected {{"user": …, "history": [[item key, unix seconds], …]}}{alone}')
    return record


@contextlib.contextmanager
def _lines(path: str) -> Iterator[IO[bytes]]:
    """The input as bytes, decoded line by line (an undecodable byte is an error naming its line)."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read --input ({e.strerror})") from None
    with f:
        yield f


@contextlib.contextmanager
def _output(path: Optional[str]) -> Iterator[IO[str]]:
    """stdout, or a temp file beside ``path`` renamed over it once everything is written and on disk (removed on
    an error: a failure never leaves a half file, and a previous output stays whole)."""
    if path is None:
        yield sys.stdout
        return
    target = Path(path)
    with _write_errors(target):
        out = AtomicFile(target, encoding="utf-8")
    try:
        yield _Writer(out.file, target)
        with _write_errors(target):
            out.commit()
    finally:
        out.discard()  # after a commit: nothing left to remove


@contextlib.contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    """An OSError while writing the output (a full disk, a read-only folder …) as one line naming it."""
    try:
        yield
    except OSError as e:
        raise DataError(f"{target}: cannot write --output ({e.strerror or e}); a previous file there is kept "
                        "as it was") from None


class _Writer:
    """The temp output file, its write errors named (an OSError while reading the input must not be blamed on it)."""

    def __init__(self, f: IO[str], target: Path):
        self.f, self.target = f, target

    def write(self, text: str) -> None:
        with _write_errors(self.target):
            self.f.write(text)
