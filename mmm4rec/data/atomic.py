"""Replacing a folder so that readers see the old or the new version, never half of one — and only a folder this
project wrote: every folder ``replace_folder`` creates holds a marker file, and a folder without one (a user's
folder named by mistake as an output) is refused, never deleted."""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from .schema import DataError

MARKER = ".mmm4rec"
MARKER_TEXT = "Written by mmm4rec, which may replace this folder as a whole.\n"


@dataclass(frozen=True)
class Layout:
    """A kind of folder this project writes, to recognise one written before the marker existed: it holds
    ``manifest`` (JSON with this ``format``) and nothing but entries matching ``entries``."""

    manifest: str
    format: str
    entries: tuple[str, ...]  # fnmatch patterns

    def matches(self, path: Path) -> bool:
        try:
            ours = json.loads((path / self.manifest).read_text()).get("format") == self.format
        except (OSError, ValueError, AttributeError):
            return False
        return ours and all(any(fnmatch.fnmatchcase(p.name, e) for e in self.entries) for p in path.iterdir())


def check_replaceable(path: str | os.PathLike, layout: Optional[Layout] = None) -> None:
    """DataError unless ``path`` is absent, an empty folder, or a folder this project wrote (its marker, or a
    ``layout`` folder from before the marker)."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and ((path / MARKER).is_file() or not any(path.iterdir()) or (layout and layout.matches(path))):
        return
    raise DataError(f"{path}: not written by mmm4rec (no {MARKER} marker) and not empty; refusing to replace it, "
                    "choose a new or empty folder")


@contextmanager
def replace_folder(path: str | os.PathLike, keep: tuple[str, ...] = (), layout: Optional[Layout] = None,
                   owned: bool = False, create: bool = True) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it gets the marker and takes the place of ``path``.

    ``path`` must pass ``check_replaceable`` (checked first, before any work; skipped when the caller ``owned``
    it). ``create=False`` yields the temp folder's path for a writer that makes the folder itself. Entries named in ``keep`` move from
    the old folder into the new one (a dataset keeps its feature stores). If the block raises, the temp folder is
    removed and ``path`` is untouched. The swap is two renames: a crash between them leaves the complete old
    version under a hidden ``.<name>.old-*`` name and no half folder.
    """
    path = Path(path)
    if not owned:  # ``owned``: the caller vouches for the folder (a run's own best/ and export/, under its lock)
        check_replaceable(path, layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    # An owned folder has one writer (the caller holds its lock): a fixed temp name, whose leftover from a killed
    # writer is cleared here; other folders may have several writers at once, each with its own temp folder.
    tmp = path.parent / (f".{path.name}.tmp" if owned else f".{path.name}.tmp-{token}")
    if owned:
        shutil.rmtree(tmp, ignore_errors=True)
    if create:
        tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(MARKER_TEXT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{token}"
    if path.exists():
        for name in keep:
            if (path / name).exists():
                os.replace(path / name, tmp / name)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def file_version(st: os.stat_result, ctime: bool = True) -> tuple[int, ...]:
    """Which version of a file ``st`` describes: (device, inode, size, mtime_ns[, ctime_ns]). A rewrite in place
    changes the size or mtime, a replacement the inode. ctime also changes on a chmod or a new hard link: a reader
    that must not mind those (a service reading shards a user may hard-link) leaves it out."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) + ((st.st_ctime_ns,) if ctime else ())


def temp_beside(path: Path) -> Path:
    """The one temp-name scheme of every atomic write: hidden, beside ``path``, unique per writer (processes and
    ranks may write the same file at once; the last rename wins, whole)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path for a writer that needs a file name (``np.lib.format.open_memmap``, ``np.savez``); on
    success it is renamed over ``path``, on an exception removed."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicFile:
    """A file written beside ``path`` (``temp_beside``) that takes its place only on ``commit``: flushed to
    disk, then renamed over it, so readers see the old content or the new, never part of it. ``discard`` (also
    on leaving a ``with`` block by an exception) removes the temp file and leaves ``path`` as it was."""

    def __init__(self, path: str | os.PathLike, encoding: Optional[str] = None, sync: bool = True):
        self.path, self.sync = Path(path), sync
        self.tmp = temp_beside(self.path)
        self.file = open(self.tmp, "x", encoding=encoding) if encoding else open(self.tmp, "xb")

    def commit(self) -> None:
        self.file.flush()
        if self.sync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:  # after a failed write the close may fail too: the file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> IO:
        return self.file

    def __exit__(self, kind: Any, *exc: Any) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.discard()


def write_atomic(path: str | os.PathLike, data: str | bytes, sync: bool = False) -> None:
    """Write a whole file atomically (AtomicFile): every small state and identity file of the project (run.json,
    COMPLETE, latest, summary.json, evaluation results) goes through here. Not flushed to disk by default: a
    checkpoint's COMPLETE and ``latest`` follow each other at once, and the rename alone gives readers the old
    file or the new."""
    with AtomicFile(path, sync=sync) as f:
        f.write(data.encode() if isinstance(data, str) else data)
