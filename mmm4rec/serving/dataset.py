"""What a service knows of a shop besides its export: every known user's history and the items' images, read once
from a dataset folder in the project's format (``mmm4rec serve --dataset DIR``, ``Recommender(dataset=DIR)``).

``UserHistories``: every user's events as flat numpy arrays, not a Python object per event or per user:

    user_hash   uint64 [U]   blake2b-64 of each user key (mmm4rec.data.stream.user_key_hash), sorted
    user_row    int64  [U]   the row of each sorted hash
    key_bytes   uint8  [·]   the UTF-8 user keys end to end; key_offsets int64 [rows+1] bound each row's key
    offsets     int64  [rows+1]   each row's events: items[offsets[r]:offsets[r + 1]], oldest first
    items       int32  [E]   the export's item ids; timestamps int64 [E]: Unix seconds
    bare_hash / bare_row     the same for the key after its domain prefix ("u1" of "shop:u1"): "did you mean"

A lookup is a binary search on the hash, confirmed by comparing the key's bytes (a hash collision costs one more
comparison, never a wrong user). Items of the dataset the export does not hold are dropped from the histories,
counted and reported once, at load: a user's history is their events on items the model knows, which is what an
explicit history with ``unknown="skip"`` gives.

``ItemImages``: where each item's image lies in the dataset's item shards (shard, byte offset, length), found by
reading the shards' tar headers (Python's tarfile, which seeks over the image bytes); an image is read from its
shard when asked for, so no image is held in memory. Only PNG, JPEG, GIF and WebP (checked by their magic bytes)
of at most ``max_bytes`` are served.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..data.atomic import file_version
from ..data.dataset import load_manifest
from ..data.schema import BadRecords, DataError
from ..data.shards import IMAGE_EXTS, iter_seq_records
from ..data.stream import user_key_hash
from ..data.tar_reader import sample_key

log = logging.getLogger(__name__)

IMAGE_MEMBERS = tuple(IMAGE_EXTS.values())  # the tar member extensions the shard writer gives an item's image
MAX_IMAGE_BYTES = 8 << 20


def _bare(key: str) -> str:
    return key.split(":", 1)[-1]


def _sorted_hashes(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.fromiter(map(user_key_hash, keys), np.uint64, len(keys))
    order = np.argsort(hashes, kind="stable")
    return hashes[order], order.astype(np.int64)


@dataclass
class UserHistories:
    user_hash: np.ndarray
    user_row: np.ndarray
    bare_hash: np.ndarray
    bare_row: np.ndarray
    key_bytes: np.ndarray
    key_offsets: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    dropped: dict  # what the load left out: unknown_item events, distinct unknown items, duplicate users, bad records

    @classmethod
    def read(cls, dataset: str | os.PathLike, item_index: Mapping[str, int]) -> "UserHistories":
        """Every valid user of ``dataset`` (its sequence shards, each checked against its sha256), their items
        mapped through ``item_index`` (item key -> the export's id >= 1)."""
        started = time.perf_counter()
        manifest = load_manifest(dataset)
        bad = BadRecords(strict=False)
        keys: list[str] = []
        encoded: list[bytes] = []
        seen: set[str] = set()
        lengths, item_parts, stamp_parts = [], [], []
        unknown_events, unknown_items, duplicates = 0, set(), 0
        get = item_index.get
        for _, rec in iter_seq_records(manifest.seqs, bad):
            if rec.user in seen:  # the first record of a user wins, as for items
                duplicates += 1
                continue
            seen.add(rec.user)
            try:
                key = rec.user.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800" in its JSON): a str, but no UTF-8 bytes
                bad.report("bad_user_key", f"user {rec.user!r}: not UTF-8 encodable (a lone surrogate)")
                continue
            ids = np.fromiter((get(k, 0) for k in rec.items), np.int32, len(rec.items))
            known = ids > 0
            if not known.all():
                unknown_events += int((~known).sum())
                unknown_items.update(k for k, ok in zip(rec.items, known.tolist()) if not ok)
                ids = ids[known]
            keys.append(rec.user)
            encoded.append(key)
            lengths.append(len(ids))
            item_parts.append(ids)
            stamp_parts.append(np.asarray(rec.timestamps, np.int64)[known])
        del seen
        if unknown_events and not sum(lengths):
            # not one event on an item of the export: another shop's dataset, every user a silent new visitor
            raise DataError(f"{dataset}: none of its {unknown_events} events is on an item the export holds (e.g. "
                            f"{min(unknown_items)!r}; the export's are like {next(iter(item_index), None)!r}): "
                            "the dataset of another catalogue")
        user_hash, user_row = _sorted_hashes(keys)
        bare_hash, bare_row = _sorted_hashes([_bare(k) for k in keys])
        out = cls(user_hash, user_row, bare_hash, bare_row,
                  np.frombuffer(b"".join(encoded), np.uint8),
                  np.concatenate([[0], np.cumsum([len(e) for e in encoded], dtype=np.int64)]).astype(np.int64),
                  np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
                  np.concatenate(item_parts or [np.zeros(0, np.int32)]),
                  np.concatenate(stamp_parts or [np.zeros(0, np.int64)]),
                  {"unknown_item_events": unknown_events, "unknown_items": len(unknown_items),
                   "duplicate_users": duplicates, **bad.as_dict()})
        if unknown_events or duplicates or bad:
            example = f" (e.g. {sorted(unknown_items)[0]!r})" if unknown_items else ""
            log.warning("%s: %d event(s) on %d item(s) the export does not hold%s were left out of the users' "
                        "histories; %d duplicate user(s) and %d bad record(s) skipped", dataset, unknown_events,
                        len(unknown_items), example, duplicates, sum(bad.as_dict().values()))
        log.info("%d known users, %d events (%.1f bytes per event with the user index) read from %s in %.1f s",
                 out.num_users, out.num_events, out.nbytes / max(1, out.num_events), dataset,
                 time.perf_counter() - started)
        return out

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_events(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in ("user_hash", "user_row", "bare_hash", "bare_row", "key_bytes",
                                                      "key_offsets", "offsets", "items", "timestamps"))

    def key(self, row: int) -> str:
        return self.key_bytes[self.key_offsets[row]:self.key_offsets[row + 1]].tobytes().decode("utf-8")

    def _rows(self, hashes: np.ndarray, rows: np.ndarray, value: str) -> np.ndarray:
        try:
            h = np.uint64(user_key_hash(value))
        except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no UTF-8 bytes, so no dataset key
            return rows[:0]
        return rows[np.searchsorted(hashes, h, "left"):np.searchsorted(hashes, h, "right")]

    def row(self, key: str) -> Optional[int]:
        """The row of user ``key``, None when the dataset has no such user."""
        for row in self._rows(self.user_hash, self.user_row, key).tolist():
            if self.key(row) == key:
                return row
        return None

    def like(self, key: str) -> list[str]:
        """Known user keys that differ from ``key`` only in their domain prefix."""
        bare = _bare(key)
        return [k for k in map(self.key, self._rows(self.bare_hash, self.bare_row, bare).tolist())
                if _bare(k) == bare and k != key]

    def history(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids int64, Unix seconds int64) of a row, oldest first."""
        lo, hi = self.offsets[row], self.offsets[row + 1]
        return self.items[lo:hi].astype(np.int64), self.timestamps[lo:hi]


# ---------------------------------------------------------------------------------------------------------- images
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
         (b"GIF89a", "image/gif"))


def image_type(head: bytes) -> Optional[str]:
    """The content type of encoded image bytes by their magic bytes (PNG, JPEG, GIF, WebP), None for any other."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class ShardChanged(DataError):
    """An item shard is not the file the image index was read from (replaced, truncated or removed since)."""


@dataclass
class ItemImages:
    paths: list[Path]  # the item shards
    shard: np.ndarray  # int32 [I+1]: the shard of each item id's image, -1: none
    offset: np.ndarray  # int64 [I+1]: its first byte in the shard
    size: np.ndarray  # int64 [I+1]
    max_bytes: int = MAX_IMAGE_BYTES
    # each shard's (device, inode, size, mtime) when its offsets were read: the offsets hold for that file only
    identity: list[tuple[int, int, int, int]] | None = None

    @classmethod
    def read(cls, dataset: str | os.PathLike, item_index: Mapping[str, int], num_items: int,
             max_bytes: int = MAX_IMAGE_BYTES) -> "ItemImages":
        """Where the images of the items of ``item_index`` lie in the local ``dataset``'s item shards."""
        manifest = load_manifest(dataset)
        if manifest.source is None or not manifest.source.is_local:
            raise DataError(f"{dataset}: item images are served from a local dataset folder only")
        shard = np.full(num_items + 1, -1, np.int32)
        offset = np.zeros(num_items + 1, np.int64)
        size = np.zeros(num_items + 1, np.int64)
        paths = [Path(info.path) for info in manifest.items]
        large, foreign, identity = 0, 0, []
        for s, path in enumerate(paths):
            try:
                with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    identity.append(file_version(os.fstat(f.fileno()), ctime=False))
                    for key, (where, length, kind) in _images_of(tar):
                        item = item_index.get(key)
                        if item is None:
                            continue
                        if length > max_bytes:
                            large += 1
                            continue
                        if kind is None:  # offered (an image URL in every result) only what can be served
                            foreign += 1
                            continue
                        shard[item], offset[item], size[item] = s, where, length
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{path}: cannot read the item shard's members ({e})") from None
        if large:
            log.warning("%s: %d item image(s) larger than %d bytes are not served", dataset, large, max_bytes)
        if foreign:
            log.warning("%s: %d item image(s) that are not PNG, JPEG, GIF or WebP (by their first bytes) are not "
                        "served", dataset, foreign)
        out = cls(paths, shard, offset, size, max_bytes, identity)
        log.info("%d item images found in %s", out.count, dataset)
        return out

    @property
    def count(self) -> int:
        return int((self.shard >= 0).sum())

    def has(self, item: int) -> bool:
        return 0 <= item < len(self.shard) and self.shard[item] >= 0

    def read_image(self, item: int) -> Optional[tuple[bytes, str]]:
        """(bytes, content type) of item id ``item``'s image, None when it has none (or not a served format)."""
        if not self.has(item):
            return None
        s = int(self.shard[item])
        # Another file at that path (a dataset rebuilt or copied over) holds other bytes at these offsets: another
        # item's image, which must never be served as this one's.
        changed = ShardChanged(f"{self.paths[s]}: the item shard changed since its images were indexed (replaced, "
                               "truncated or removed); restart the service to serve the dataset's images as they "
                               "are now")
        try:
            with open(self.paths[s], "rb") as f:
                if self.identity is not None and file_version(os.fstat(f.fileno()), ctime=False) != self.identity[s]:
                    raise changed
                f.seek(int(self.offset[item]))
                data = f.read(int(self.size[item]))
        except OSError:
            raise changed from None
        kind = image_type(data[:12])
        return None if kind is None or len(data) != self.size[item] else (data, kind)


def _images_of(tar: tarfile.TarFile):
    """(item key, (byte offset, length, content type or None) of its image) per sample of an item shard that has an
    image. A sample's members share the name up to the first dot of the basename (webdataset's grouping); its key
    is the string "key" of its .json (a sample whose .json is not an object with one has no key)."""
    current, key, image = None, None, None
    for member in tar:
        if not member.isfile():
            continue
        split = sample_key(member.name)
        if split is None:
            continue
        sample, ext = split[0], split[1].lower()
        if sample != current:
            if key is not None and image is not None:
                yield key, image
            current, key, image = sample, None, None
        if ext == "json":
            try:
                key = json.loads(tar.extractfile(member).read()).get("key")
            except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, [[[[… too deep
                key = None
            if not isinstance(key, str):  # a list would not even be hashable
                key = None
        elif ext in IMAGE_MEMBERS and image is None:
            # its first bytes (in the block after the header tarfile has just read; it seeks back for the next)
            tar.fileobj.seek(member.offset_data)
            image = (member.offset_data, member.size, image_type(tar.fileobj.read(min(12, member.size))))
    if key is not None and image is not None:
        yield key, image
