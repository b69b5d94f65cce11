"""Records, the dataset manifest and the bad-input policy shared by converters, readers and the feature store.

Bad input never passes silently: a ``BadRecords`` either raises ``DataError`` (strict) or skips the record and
counts it by reason (lenient); the counts go into the run summary. Lenient mode never repairs a record: it drops
it whole (two documented exceptions: an undecodable image counts and becomes a missing image, and ``map_items``
drops unknown item occurrences from a sequence). The reasons are listed in docs/data_format.md.
"""
from __future__ import annotations

import hashlib
import logging
import operator
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

import numpy as np
from braceexpand import braceexpand

if TYPE_CHECKING:
    from .remote import DatasetSource

log = logging.getLogger(__name__)

DATASET_FORMAT = "mmm4rec-dataset/1"
MANIFEST = "dataset.json"
MIN_INTERACTIONS = 3  # leave-one-out needs a training, a validation and a test target (docs/model.md §11)
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: larger values are not Unix seconds (milliseconds?)
PAD_KEY = "<pad>"  # item id 0


class DataError(ValueError):
    """Input that cannot be used. The message names the file and the record key."""


class InvalidRecord(Exception):
    """A record failed validation; readers turn it into a DataError or a counted skip, adding file and key."""

    def __init__(self, reason: str, problem: str):
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


class BadRecords:
    """The strictness policy: ``report`` raises in strict mode, otherwise counts the skip by reason.

    The first few messages per reason are logged so that a lenient run still shows what it skipped.
    """

    def __init__(self, strict: bool = False, examples: int = 3):
        self.strict = strict
        self.examples = examples
        self.counts: Counter[str] = Counter()

    def report(self, reason: str, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.counts[reason] += 1
        if self.counts[reason] <= self.examples:
            log.warning("skipped (%s): %s", reason, message)

    def report_counted(self, reason: str, count: int, messages: list[str]) -> None:
        """``count`` skips of one reason found in bulk (by the columnar engine), ``messages`` the first few in
        file order: as ``count`` calls of ``report`` would do, without a message for each."""
        for message in messages[:count]:
            self.report(reason, message)
        self.counts[reason] += max(count - len(messages), 0)

    def update(self, counts: Mapping[str, int]) -> None:
        """Add counts gathered elsewhere (another shard, worker or rank)."""
        self.counts.update(counts)

    def as_dict(self) -> dict[str, int]:
        return {reason: n for reason, n in sorted(self.counts.items()) if n}

    def __bool__(self) -> bool:
        return any(self.counts.values())


def domain_of(key: str) -> str:
    """Item and user keys are domain-qualified: ``"ml-1m:1193"`` belongs to domain ``"ml-1m"``."""
    return key.split(":", 1)[0]


def content_hash(data: bytes) -> bytes:
    """16-byte content hash of an item's text or image; the feature store re-encodes an item when it changes."""
    return hashlib.sha256(data).digest()[:16]


# --------------------------------------------------------------------------------------------------------- records
@dataclass
class ItemRecord:
    key: str  # domain-qualified
    text: str
    image: Optional[bytes] = None  # JPEG/PNG/WebP bytes as stored
    meta: dict[str, Any] = field(default_factory=dict)  # the rest of the item's .json (title, source id, ...)
    # The decoded RGB image, set by readers that verified ``image`` (so stage 1 decodes each image once).
    decoded: Any = field(default=None, repr=False, compare=False)


@dataclass
class SeqRecord:
    user: str
    domain: str
    items: list[str]  # item keys, chronological
    timestamps: np.ndarray  # int64 seconds, non-decreasing


def check_seq(rec: SeqRecord) -> None:
    """Validate a sequence in place (timestamps become an int64 array); raise InvalidRecord with the first problem.

    The checks run on Python lists: the stage-2 stream validates every user of every epoch, and for histories of
    tens of events a handful of numpy calls costs more than the C-level list builtins used here. Out-of-range
    values are reported before order problems: a sentinel such as 10**30 for every event is a bad timestamp, not
    the duplicated event its equal values look like (the range is read off the ends of a sorted list).
    """
    n = len(rec.items)
    ts = rec.timestamps.tolist() if isinstance(rec.timestamps, np.ndarray) else list(rec.timestamps)
    if len(ts) != n:
        raise InvalidRecord("bad_record", f"{n} items but {len(ts)} timestamps")
    if n < MIN_INTERACTIONS:
        raise InvalidRecord("too_short", f"{n} interactions, leave-one-out needs at least {MIN_INTERACTIONS}")
    prefix = rec.domain + ":"
    # Every key starts with the prefix iff the NUL-joined keys hold n NULs and n NUL+prefix: two C-level scans,
    # a quarter of the cost of a startswith call per key.
    joined = "\0" + "\0".join(rec.items)
    if joined.count("\0") != n or joined.count("\0" + prefix) != n:
        key = next(k for k in rec.items if not k.startswith(prefix) or "\0" in k)
        raise InvalidRecord("bad_record", f"item {key!r} is not a key of domain {rec.domain!r}")
    if set(map(type, ts)) != {int}:  # JSON floats, strings, booleans
        kinds = sorted({type(t).__name__ for t in ts} - {"int"})
        raise InvalidRecord("bad_timestamps", f"timestamps must be integer seconds, got {', '.join(kinds)}")
    later = ts[1:]
    unsorted = any(map(operator.gt, ts, later))
    low, high = (min(ts), max(ts)) if unsorted else (ts[0], ts[-1])
    if low < 0:
        raise InvalidRecord("bad_timestamps", f"negative timestamp {low}")
    if high > MAX_TIMESTAMP:
        raise InvalidRecord("bad_timestamps", f"timestamp {high} is after the year 9999 (not Unix seconds)")
    if unsorted:
        i = next(i for i, (a, b) in enumerate(zip(ts, later)) if a > b)
        raise InvalidRecord("unsorted_timestamps", f"timestamp {ts[i + 1]} follows {ts[i]} (position {i + 1})")
    # The same item twice at the same second is a duplicated event; only equal timestamps can produce one.
    if any(map(operator.eq, ts, later)) and len(set(zip(ts, rec.items))) < n:
        raise InvalidRecord("duplicate_event", "the same item appears twice with the same timestamp")
    rec.timestamps = np.array(ts, dtype=np.int64)


def seq_record(obj: Any) -> SeqRecord:
    """Build and validate a SeqRecord from a decoded ``.json`` sample; raise InvalidRecord."""
    try:
        user, domain, items, ts = obj["user"], obj["domain"], obj["items"], obj["timestamps"]
    except (KeyError, TypeError):
        raise InvalidRecord("bad_record", "needs the fields user, domain, items, timestamps") from None
    if not (type(user) is str and type(domain) is str and type(items) is list and type(ts) is list):
        raise InvalidRecord("bad_record", "user/domain must be strings, items/timestamps lists")
    if set(map(type, items)) - {str}:  # all(isinstance(...)) in C: this runs for every user of every epoch
        raise InvalidRecord("bad_record", "item keys must be strings")
    rec = SeqRecord(user, domain, items, ts)
    check_seq(rec)
    return rec


def map_items(record: SeqRecord, index: Mapping[str, int], bad: BadRecords, shard: str = "") -> Optional[np.ndarray]:
    """Item keys -> int64 ids of a feature store index.

    An unknown key is bad input: strict raises; lenient drops those occurrences from the record (items and
    timestamps, so the record is modified), counts them as ``unknown_item`` and returns None (``too_short``) if
    fewer than MIN_INTERACTIONS remain. Dropping, not skipping the user, keeps one bad item from erasing every
    history that touched it.
    """
    try:
        return np.fromiter(map(index.__getitem__, record.items), np.int64, len(record.items))
    except KeyError:
        pass
    known = [k in index for k in record.items]
    unknown = [k for k, ok in zip(record.items, known) if not ok]
    where = f"{shard}: " if shard else ""
    for key in unknown:
        bad.report("unknown_item", f"{where}user {record.user!r}: item {key!r} is not in the feature store")
    record.items = [k for k, ok in zip(record.items, known) if ok]
    record.timestamps = record.timestamps[np.asarray(known)]
    if len(record.items) < MIN_INTERACTIONS:
        bad.report("too_short", f"{where}user {record.user!r}: {len(record.items)} known items left")
        return None
    return np.fromiter(map(index.__getitem__, record.items), np.int64, len(record.items))


# -------------------------------------------------------------------------------------------------------- manifest
@dataclass
class ShardInfo:
    name: str  # file name inside the dataset folder
    count: int  # samples
    bytes: int
    sha256: str
    # Where it is: a path on this machine, or the URL of a remote dataset's shard (read through ``source``).
    path: Optional[Union[Path, str]] = field(default=None, compare=False, repr=False)
    source: Optional["DatasetSource"] = field(default=None, compare=False, repr=False)

    @property
    def remote(self) -> bool:
        return self.source is not None and not self.source.is_local

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class Manifest:
    """``dataset.json``: what a dataset folder holds and where it came from."""

    name: str
    domains: list[str]
    counts: dict[str, Any]  # users, items, interactions, per_domain: {domain: {users, items, interactions}}
    split: dict[str, Any]  # leave-one-out protocol and its sample counts
    items: list[ShardInfo]
    seqs: list[ShardInfo]
    provenance: dict[str, Any]  # converter, args, source files with sha256, filtering statistics
    licence: str
    source: Optional["DatasetSource"] = field(default=None, compare=False, repr=False)  # where it was read from
    digest: str = field(default="", compare=False, repr=False)  # sha256 of the dataset.json bytes it was parsed from

    @property
    def items_digest(self) -> str:
        """Identity of the item content: equal digests mean the feature store needs no item re-read."""
        h = hashlib.sha256()
        for s in self.items:
            h.update(f"{s.name} {s.sha256}\n".encode())
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DATASET_FORMAT,
            "name": self.name,
            "domains": self.domains,
            "counts": self.counts,
            "split": self.split,
            "shards": {"items": [s.to_json() for s in self.items], "seqs": [s.to_json() for s in self.seqs]},
            "provenance": self.provenance,
            "licence": self.licence,
        }

    @property
    def root(self) -> Union[Path, str]:
        """The dataset folder: a local path or a URL."""
        return Path(self.source.base) if self.source.is_local else self.source.base

    @property
    def path(self) -> Union[Path, str]:
        return self.source.manifest_path

    @classmethod
    def from_json(cls, data: Any, path: Union[str, Path], digest: str = "") -> "Manifest":
        """Parse a decoded dataset.json (``path`` names it in errors, ``digest``: of its bytes); DataError naming
        the file and the key at fault. The schema reads names only: ``locate`` attaches where the shards are."""
        try:
            return cls._parse(data, digest)
        except _BadManifest as e:
            raise DataError(f"{path}: {e}") from None

    def locate(self, source: "DatasetSource") -> "Manifest":
        """Attach where this manifest and its shards were read from (a local folder or a remote dataset)."""
        self.source = source
        for shard in self.items + self.seqs:
            shard.path, shard.source = source.where(shard.name), source
        return self

    @classmethod
    def _parse(cls, data: Any, digest: str) -> "Manifest":
        if not isinstance(data, dict):
            raise _BadManifest(f"not a dataset manifest: expected a JSON object, got {type(data).__name__}")
        _field(data, "format", "", f"{DATASET_FORMAT!r}", lambda v: v == DATASET_FORMAT)
        counts = _field(data, "counts", "", "an object", _is_object)
        per_domain = _field(counts, "per_domain", "counts", "an object", _is_object)
        _counts(counts, "counts", ("users", "items", "interactions"))
        for domain in per_domain:
            entry = _field(per_domain, domain, "counts.per_domain", "an object", _is_object)
            _counts(entry, f"counts.per_domain.{domain}", ("users", "items", "interactions"))
        split = _field(data, "split", "", "an object", _is_object)
        _counts(split, "split", ("test_users", "valid_users", "train_samples", "pretrain_samples"))
        shards = _field(data, "shards", "", "an object", _is_object)
        manifest = cls(
            name=_field(data, "name", "", "a string", _is_string),
            domains=_field(data, "domains", "", "a list of strings",
                           lambda v: type(v) is list and all(map(_is_string, v))),
            counts=counts,
            split=split,
            items=_shard_list(shards, "items"),
            seqs=_shard_list(shards, "seqs"),
            provenance=_field(data, "provenance", "", "an object", _is_object),
            licence=_field(data, "licence", "", "a string", _is_string),
            digest=digest,
        )
        manifest._check_counts()
        return manifest

    def _check_counts(self) -> None:
        """The counts that follow from the shard list alone: one item per item sample, one user per sequence."""
        c = self.counts
        for key, shards, what in (("users", self.seqs, "sequence"), ("items", self.items, "item")):
            held = sum(s.count for s in shards)
            if c[key] != held:
                raise _BadManifest(f"counts.{key} = {c[key]}, but the {what} shards hold {held}")
        for key in ("valid_users", "test_users"):
            if self.split[key] != c["users"]:
                raise _BadManifest(f"split.{key} = {self.split[key]}, but counts.users = {c['users']}")
        for key in ("users", "items", "interactions"):
            total = sum(d[key] for d in c["per_domain"].values())
            if total != c[key]:
                raise _BadManifest(f"counts.per_domain: its {key} add up to {total}, but counts.{key} = {c[key]}")


class _BadManifest(Exception):
    pass


_COUNT = "a non-negative integer"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _counts(obj: dict, where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        _field(obj, key, where, _COUNT, _is_count)


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0  # bool is not a count


def _is_string(v: Any) -> bool:
    return type(v) is str


def _is_object(v: Any) -> bool:
    return type(v) is dict


def _is_list(v: Any) -> bool:
    return type(v) is list


def _is_sha256(v: Any) -> bool:
    return type(v) is str and bool(_SHA256.fullmatch(v))


def _inside(name: Any) -> bool:
    """A shard name is a relative path that stays inside the dataset folder (read lexically, before any file
    is touched: a manifest must not make the readers open, or reveal the size of, a file elsewhere). A first
    segment with a colon is refused too: joined to a URL, ``http://elsewhere/x.tar`` would name another server."""
    if type(name) is not str or "\0" in name:
        return False
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts and ":" not in parts[0]


def _field(obj: dict, key: str, where: str, want: str, ok: Callable[[Any], bool]) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise _BadManifest(f"{name} is missing")
    value = obj[key]
    if not ok(value):
        shown = repr(value)
        raise _BadManifest(f"{name} must be {want}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")
    return value


def _shard_list(shards: dict, kind: str) -> list[ShardInfo]:
    entries = _field(shards, kind, "shards", "a list", _is_list)
    return [info for n, entry in enumerate(entries) for info in _shard(entry, f"shards.{kind}[{n}]")]


_INSIDE = "a relative path inside the dataset folder"
_SHARD_FIELDS = (("count", _COUNT, _is_count), ("bytes", _COUNT, _is_count),
                 ("sha256", "64 lowercase hex digits", _is_sha256))


def _shard(entry: Any, where: str) -> list[ShardInfo]:
    """One entry of a shard list: a shard, or a brace pattern (``seqs-{000000..000009}.tar``, webdataset's
    notation) whose count, bytes and sha256 are lists holding one value per name, in expansion order."""
    if not _is_object(entry):
        raise _BadManifest(f"{where} must be an object with name, count, bytes, sha256, got {entry!r:.60}")
    name = _field(entry, "name", where, _INSIDE, lambda v: type(v) is str and ("{" in v or _inside(v)))
    if "{" not in name:
        values = [_field(entry, key, where, want, ok) for key, want, ok in _SHARD_FIELDS]
        return [ShardInfo(name, *values)]
    columns = [_field(entry, key, where, f"a list of {want} (one per name of the pattern)",
                      lambda v, ok=ok: _is_list(v) and all(map(ok, v))) for key, want, ok in _SHARD_FIELDS]
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise _BadManifest(f"{where}: count, bytes and sha256 must list as many values ({[len(c) for c in columns]})")
    size = _pattern_size(name)
    if size is None:
        raise _BadManifest(f"{where}.name: {name!r} is not a brace pattern of numeric ranges ({{000..009}}) and "
                           "lists ({a,b})")
    if size != n:
        raise _BadManifest(f"{where}.name: {name!r} expands to {size} names, but count lists {n} values")
    names = list(braceexpand(name, escape=False))  # as many names as the manifest lists values: bounded
    for one in names:
        if not _inside(one):
            raise _BadManifest(f"{where}.name: {one!r} (from {name!r}) must be {_INSIDE}")
    return [ShardInfo(one, count, size, sha) for one, count, size, sha in zip(names, *columns)]


_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


def _pattern_size(pattern: str) -> Optional[int]:
    """How many names a brace pattern expands to, counted without expanding it: braceexpand builds the whole
    product before yielding the first name, so a manifest's ``{0..999999999}`` would fill the memory. Only
    numeric ranges (with an optional step) and comma lists, not nested; None for anything else."""
    if "{" in _BRACES.sub("", pattern) or "}" in _BRACES.sub("", pattern):
        return None  # nested or unbalanced
    size = 1
    for group in _BRACES.findall(pattern):
        bounds = _RANGE.fullmatch(group)
        if bounds:
            first, last, step = int(bounds[1]), int(bounds[2]), abs(int(bounds[3] or 1)) or 1
            size *= abs(last - first) // step + 1
        elif ".." in group:
            return None  # letter ranges and the like
        else:
            size *= len(group.split(","))
    return size
