"""Where a dataset's files come from: a local folder, a URL, or a ``pipe:`` command; reads with retries.

``data.dataset`` names the folder that holds ``dataset.json`` (or the manifest file itself, any name ending in
``.json``); the manifest's shard names resolve relative to that folder, whatever the scheme:

  /data/ml-1m, file:///data/ml-1m    local: files are read in place (the stage-2 hot path is a plain file read)
  http(s)://host/ml-1m               urllib
  s3://bucket/ml-1m, gs://…, …       fsspec, where the protocol's backend (s3fs, gcsfs, …) is installed
  pipe:CMD                           CMD with ``{name}`` replaced by the file's name, run by the shell; its stdout
                                     is the file. Only with data.allow_pipe=true: a config must not run commands
                                     unless the user asked for it (a run's config.yaml is re-read on resume)

A remote file is read whole into memory: the readers hash exactly those bytes against the manifest's sha256 and
parse them with the checked tar reader, as they do a local file's. Transient failures (connection reset or
refused, timeout, a truncated body, HTTP 408/429/5xx) are retried with exponential backoff, each retry logged;
anything else (404, 401/403, an unknown host, a failing pipe command) is a one-line DataError naming the URL.

http(s) uses urllib rather than fsspec's HTTPFileSystem, which needs aiohttp and its dependencies: every read
here is one whole-object GET, and the retry policy needs the status code, which urllib hands over as it is.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random
import re
import shlex
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union
from urllib.parse import quote, urlsplit, urlunsplit

from mmm4rec.config import ConfigError

from .schema import MANIFEST, DataError, Manifest

if TYPE_CHECKING:
    from mmm4rec.config import DataConfig

log = logging.getLogger(__name__)

USER_AGENT = "mmm4rec"
RETRY_STATUS = (408, 429)  # besides every 5xx: the server asks to come back later
MAX_BACKOFF_S = 30.0
PIPE_NAME = "{name}"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


MAX_MANIFEST_BYTES = 256 << 20  # a dataset.json is kilobytes to megabytes; a body without end is not one
MIN_BYTES_PER_S = 64 << 10  # slower than this on average, a read is cut (a trickling server never times out)
CHUNK = 1 << 16


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a transient failure is retried."""

    retries: int = 5  # attempts after the first
    backoff_s: float = 1.0  # wait before the first retry; doubled for each next one (at most 30 s), jittered
    timeout_s: float = 60.0  # per connection attempt and per read on the socket

    def delay(self, retry: int) -> float:
        # Jittered: the ranks of a job that all lost the same server do not come back in lockstep.
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)

    def deadline_s(self, size: int) -> float:
        """The time one attempt at a file of ``size`` bytes may take in all: ``timeout_s`` plus the file at
        MIN_BYTES_PER_S. The per-read timeout alone never fires on a server sending a byte every second."""
        return self.timeout_s + size / MIN_BYTES_PER_S


class _Body:
    """A body read in chunks under a size cap and a deadline, progress logged on long reads."""

    def __init__(self, where: str, cap: int, retry: Retry):
        self.where, self.cap = where, cap
        self.started = time.monotonic()
        # a file of unknown size (a manifest: its cap is a bound, not a size) gets the time of 16 MB
        self.deadline = self.started + retry.deadline_s(min(cap, 16 << 20))
        self.logged = self.started
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            # not transient: the manifest says how large the file is, and this one is larger
            raise DataError(f"{self.where}: the body is larger than the {self.cap:,} bytes expected "
                            "(the manifest's size); not reading further")
        self.parts.append(chunk)
        now = time.monotonic()
        if now > self.deadline:
            raise _Transient(f"read {self.size:,} of {self.cap:,} bytes in {now - self.started:.0f} s, slower than "
                             f"{MIN_BYTES_PER_S >> 10} KiB/s after the first {self.deadline - self.started:.0f} s")
        if now - self.logged >= 10:
            self.logged = now
            log.info("%s: still reading, %s bytes in %.0f s", self.where, f"{self.size:,}", now - self.started)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _Transient(Exception):
    """A failure that another attempt may not have."""


# A dataset: where it is, or its manifest once read (then nothing reads dataset.json again).
DatasetLike = Union[str, os.PathLike, "DatasetSource", Manifest]


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's location, parsed: how to name and read each of its files."""

    location: str  # as given
    kind: str  # "local", "http", "fsspec" or "pipe"
    base: str  # the folder (absolute path or URL without a trailing slash), or the pipe command
    manifest_name: str = MANIFEST
    query: str = ""  # of an http(s) location, kept on every file's URL (a signed or token-carrying address)
    cache: str = ""  # where remote datasets' feature stores and indexes go; "" = ~/.cache/mmm4rec
    retry: Retry = field(default_factory=Retry)

    @classmethod
    def of(cls, dataset: DatasetLike) -> "DatasetSource":
        """``dataset`` itself, where a manifest was read from, or the location it names parsed with the defaults
        (no pipe: commands)."""
        if isinstance(dataset, Manifest):
            return dataset.source
        return dataset if isinstance(dataset, DatasetSource) else cls.parse(dataset)

    @classmethod
    def from_config(cls, data: "DataConfig") -> "DatasetSource":
        """data.dataset with data.allow_pipe, data.cache, data.retries and data.timeout_s."""
        return cls.parse(data.dataset, allow_pipe=data.allow_pipe, cache=data.cache,
                         retry=Retry(retries=data.retries, timeout_s=data.timeout_s))

    @classmethod
    def parse(cls, location: str | os.PathLike, *, allow_pipe: bool = False, cache: str = "",
              retry: Retry = Retry()) -> "DatasetSource":
        text = os.fspath(location)
        common = dict(location=text, cache=cache, retry=retry)
        if text.startswith("pipe:"):
            command = text[len("pipe:"):].strip()
            if not allow_pipe:
                raise ConfigError(f"data.dataset={text!r}: a pipe: location runs a shell command; allow it with "
                                  "data.allow_pipe=true")
            if PIPE_NAME not in command:
                raise ConfigError(f"data.dataset={text!r}: a pipe: command needs {PIPE_NAME} where the file name "
                                  f"goes, e.g. pipe:cat /data/ml-1m/{PIPE_NAME}")
            return cls(kind="pipe", base=command, **common)
        match = _SCHEME.match(text)
        scheme = match.group(1).lower() if match else ""
        if scheme in ("", "file"):
            return cls(kind="local", **_split_local(_local_path(text) if scheme else Path(text)), **common)
        parts = urlsplit(text)
        folder, manifest_name = _split_manifest(parts.path if scheme in ("http", "https") else text[len(match[0]):])
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise DataError(f"{text}: no host in the URL")
            base = urlunsplit((parts.scheme, parts.netloc, folder, "", ""))
            return cls(kind="http", base=base, manifest_name=manifest_name, query=parts.query, **common)
        _check_fsspec(scheme, text)
        return cls(kind="fsspec", base=f"{match[0]}{folder}", manifest_name=manifest_name, **common)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def where(self, name: str) -> Union[Path, str]:
        """The file ``name`` of the dataset (a manifest-checked relative path): a local path, a URL, or the
        command that prints it."""
        if self.kind == "local":
            return Path(self.base) / name
        if self.kind == "pipe":  # quoted: a name never becomes shell syntax
            return "pipe:" + self.base.replace(PIPE_NAME, shlex.quote(name))
        if self.kind == "http":  # quoted: "?", "#" or "%" in a name stay part of the file's name
            return f"{self.base}/{quote(name)}" + (f"?{self.query}" if self.query else "")
        return f"{self.base}/{name}"

    @property
    def manifest_path(self) -> Union[Path, str]:
        return self.where(self.manifest_name)

    def read(self, name: str, size: Optional[int] = None) -> bytes:
        """The bytes of the dataset's file ``name``; transient failures are retried (each retry logged), a
        permanent one, or the last retry's, is a DataError naming the file's URL. ``size``: the bytes the
        manifest lists; a remote body beyond them is not read (an error), and an attempt slower than
        ``Retry.deadline_s`` is cut (a transient failure)."""
        where = self.where(name)
        cap = MAX_MANIFEST_BYTES if size is None else size
        return _with_retries(where, lambda: self._read_once(where, cap), self.retry)

    def _read_once(self, where: Union[Path, str], cap: int) -> bytes:
        if self.kind == "local":
            try:
                return Path(where).read_bytes()
            except OSError as e:  # local trouble does not pass by waiting
                raise DataError(f"{where}: cannot read it: {e.strerror or e}") from None
        if self.kind == "http":
            return _http_get(str(where), self.retry, cap)
        if self.kind == "pipe":
            return _pipe_output(str(where), self.retry, cap)
        return _fsspec_get(str(where), cap)

    def read_manifest(self) -> bytes:
        """The manifest's bytes; a DataError that says so when there is none."""
        where = self.manifest_path
        if self.is_local and not Path(where).is_file():
            raise DataError(f"{where}: no dataset manifest (write one with a tools/prepare_*.py converter)")
        return self.read(self.manifest_name)

    def cache_folder(self, manifest: Manifest) -> Path:
        """The local folder for a remote dataset's feature store and stage-2 index, keyed by its item content
        (``items_digest``: the same items give the same store, whatever the URL; any change, a new folder). Only
        the digest and a cleaned-up dataset name make up the path: a manifest cannot point it elsewhere."""
        return self._cache_root() / f"{_cache_name(manifest)}-{manifest.items_digest[:16]}"

    def earlier_cache_folders(self, manifest: Manifest) -> list[Path]:
        """The other cache folders of a dataset of this name (written for its earlier item contents): a new
        folder's store may reuse the rows of the items that did not change."""
        own = self.cache_folder(manifest)
        return sorted(f for f in self._cache_root().glob(f"{_cache_name(manifest)}-{'[0-9a-f]' * 16}") if f != own)

    def _cache_root(self) -> Path:
        return (Path(self.cache).expanduser() if self.cache else default_cache()) / "datasets"


def get_url(url: str, retry: Retry = Retry(), max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
    """The body of an http(s) URL, with ``retry``'s policy (DataError naming the URL when it fails), at most
    ``max_bytes``."""
    return _with_retries(url, lambda: _http_get(url, retry, max_bytes), retry)


def _with_retries(where: Union[Path, str], read_once: Callable[[], bytes], retry: Retry) -> bytes:
    for attempt in range(retry.retries + 1):
        try:
            return read_once()
        except _Transient as e:
            if attempt == retry.retries:
                raise DataError(f"{where}: {e} (gave up after {attempt + 1} attempts)") from None
            delay = retry.delay(attempt + 1)
            log.warning("%s: %s; retry %d of %d in %.1f s", where, e, attempt + 1, retry.retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def default_cache() -> Path:
    """~/.cache/mmm4rec (or under $XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mmm4rec"


def _cache_name(manifest: Manifest) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", manifest.name).strip(".-")[:64] or "dataset"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ parsing helpers
def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DataError(f"{url}: a file:// URL names a file on this machine, not on {parts.netloc!r}")
    return Path(urllib.request.url2pathname(parts.path))


def _split_local(path: Path) -> dict[str, str]:
    path = path.expanduser().resolve()
    if path.suffix == ".json" and not path.is_dir():
        return {"base": str(path.parent), "manifest_name": path.name}
    return {"base": str(path)}


def _split_manifest(path: str) -> tuple[str, str]:
    """(folder, manifest file name) of a location's path: a last segment ending in .json is the manifest."""
    path = path.rstrip("/")
    head, _, last = path.rpartition("/")
    return (head, last) if last.endswith(".json") else (path, MANIFEST)


def _check_fsspec(scheme: str, location: str) -> None:
    import fsspec  # only remote locations pay for the import

    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:  # backend not installed / unknown protocol
        raise DataError(f"{location}: fsspec cannot read {scheme}:// here ({e})") from None


# -------------------------------------------------------------------------------------------------------- readers
def _http_get(url: str, retry: Retry, cap: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=retry.timeout_s) as response:
            body = _Body(url, cap, retry)
            while chunk := response.read1(CHUNK):  # returns what has arrived: the deadline is checked meanwhile
                body.add(chunk)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != body.size:
                raise _Transient(f"the body ended after {body.size:,} of its {int(length):,} bytes")
            return body.bytes()
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code} {e.reason}"
        if e.code >= 500 or e.code in RETRY_STATUS:
            raise _Transient(problem) from None
        raise DataError(f"{url}: {problem}") from None
    except urllib.error.URLError as e:  # failed before any response
        reason = e.reason
        if isinstance(reason, socket.gaierror) and reason.errno != socket.EAI_AGAIN:
            raise DataError(f"{url}: unknown host ({reason.strerror})") from None
        if isinstance(reason, ssl.SSLCertVerificationError) or not isinstance(reason, OSError):
            raise DataError(f"{url}: {getattr(reason, 'verify_message', None) or reason}") from None
        raise _Transient(_describe(reason)) from None
    except (OSError, http.client.HTTPException) as e:  # reset, timeout or truncation while reading the body
        raise _Transient(_describe(e)) from None
    except ValueError as e:  # a URL urllib cannot send
        raise DataError(f"{url}: {e}") from None


def _fsspec_get(url: str, cap: int) -> bytes:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        data = fs.cat_file(path, start=0, end=cap + 1)  # a ranged read: never more than the cap and one byte
        if len(data) > cap:
            raise DataError(f"{url}: the file is larger than the {cap:,} bytes expected (the manifest's size)")
        return data
    except FileNotFoundError:
        raise DataError(f"{url}: not found") from None
    except (PermissionError, IsADirectoryError, NotADirectoryError, ImportError, ValueError) as e:
        raise DataError(f"{url}: {_describe(e)}") from None
    except OSError as e:  # the backends' network errors (and TimeoutError, ConnectionError)
        raise _Transient(_describe(e)) from None


def _pipe_output(where: str, retry: Retry, cap: int) -> bytes:
    """stdout of the command, under the size cap and deadline (the command is killed past either); a failing
    command is permanent: nothing says that running it again would help."""
    with tempfile.TemporaryFile() as err, subprocess.Popen(where[len("pipe:"):], shell=True, stdout=subprocess.PIPE,
                                                           stderr=err, start_new_session=True) as proc:
        body = _Body(where, cap, retry)
        try:
            while chunk := proc.stdout.read1(CHUNK):
                body.add(chunk)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            said = err.read().decode(errors="replace").strip().splitlines()
            raise DataError(f"{where}: exited with status {proc.returncode}" + (f": {said[-1]}" if said else ""))
        return body.bytes()


def _describe(e: BaseException) -> str:
    text = str(e) or repr(e)
    return text if type(e).__name__ in text else f"{type(e).__name__}: {text}"
