"""The feature store: frozen text / image features of every item of a dataset, memory-mapped, plus the item index.

A store folder (docs/data_format.md has the details):
  text.npy           float32 [I+1, Dt]   row 0 = zeros (padding id)
  image.npy          float32 [I+1, Dv]   only with an image encoder
  image_missing.npy  bool    [I+1]       True where an item had no usable image (it got the blank-image features)
  items.json         ["<pad>", key_1, ..., key_I]: item id = position; keys sorted, so ids never depend on the
                     shard layout or the number of processes
  hashes.npy         uint8   [I+1, 2, 16] content hashes of each item's text and image bytes (zeros: none)
  manifest.json      encoder identity and dims, dataset name and item digest, bad-record counts, last build
  <name>-bf16-<tag>.npy  bfloat16 companions of text.npy / image.npy, written on first request (``tensor``)

``ensure_features`` builds it or brings it up to date, in one process or on every rank of a torch.distributed
job: ranks take whole item shards round-robin and write per-shard parts; rank 0 merges them into a new folder
that replaces the old one atomically. Each shard is encoded in the same fixed batches whoever encodes it, so one
or N processes give byte-identical stores. An update re-encodes only items whose content hash changed.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import transformers

from mmm4rec.config import EncoderConfig
from mmm4rec.encoders import Encoders, build_encoders, encoder_identity, encoder_slug, identity_matches

from .atomic import Layout, atomic_path, check_replaceable, replace_folder
from .dataset import load_manifest
from .remote import DatasetLike, DatasetSource
from .schema import PAD_KEY, BadRecords, DataError, ItemRecord, Manifest, ShardInfo, content_hash
from .shards import iter_item_records

log = logging.getLogger(__name__)

STORE_FORMAT = "mmm4rec-features/1"
TEXT, IMAGE, MISSING, ITEMS, HASHES, MANIFEST = (
    "text.npy", "image.npy", "image_missing.npy", "items.json", "hashes.npy", "manifest.json")
ARRAYS = {"text": TEXT, "image": IMAGE, "image_missing": MISSING}
BF16_LOCK = ".bf16.lock"
# What a store written before the ownership marker holds (it may then still be replaced): its files, bf16
# companions and the stage-2 index caches kept next to it.
LAYOUT = Layout(MANIFEST, STORE_FORMAT, (TEXT, IMAGE, MISSING, ITEMS, HASHES, MANIFEST, "*-bf16-*.npy", BF16_LOCK,
                                         "stage2-index-*"))
NO_HASH = bytes(16)
T = TypeVar("T")


@dataclass
class FeatureStore:
    path: Path
    text: np.ndarray  # memory-mapped, read-only
    image: Optional[np.ndarray]
    image_missing: Optional[np.ndarray]
    keys: list[str]
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if manifest.get("format") != STORE_FORMAT:
                raise ValueError(f"format {manifest.get('format')!r} is not {STORE_FORMAT!r}")
            index_bytes = (path / ITEMS).read_bytes()
            if hashlib.sha256(index_bytes).hexdigest() != manifest.get("items_sha256"):
                raise ValueError(f"{path / ITEMS} does not match the item index recorded in {path / MANIFEST} "
                                 "(edited, replaced, or written by an older version)")
            keys = json.loads(index_bytes)
            text = np.load(path / TEXT, mmap_mode="r")
            with_image = manifest["encoder"]["image"] is not None
            image = np.load(path / IMAGE, mmap_mode="r") if with_image else None
            missing = np.load(path / MISSING, mmap_mode="r") if with_image else None
            expected = [(text.shape, (len(keys), manifest["dims"]["text"]))]
            if with_image:
                expected += [(image.shape, (len(keys), manifest["dims"]["image"])), (missing.shape, (len(keys),))]
            if keys[:1] != [PAD_KEY] or any(got != want for got, want in expected):
                raise ValueError("array shapes do not match items.json and the manifest")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a complete feature store: {e}") from None
        return cls(path, text, image, missing, keys, manifest)

    @property
    def num_items(self) -> int:
        return len(self.keys) - 1

    @cached_property
    def index(self) -> dict[str, int]:
        """Item key -> id (1..I)."""
        return {k: i for i, k in enumerate(self.keys) if i}

    @cached_property
    def hashes(self) -> np.ndarray:
        return np.load(self.path / HASHES, mmap_mode="r")

    def tensor(self, name: str, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
        """``text`` / ``image`` features [I+1, D] (float32, or ``torch.bfloat16``) or ``image_missing`` [I+1]
        (bool), memory-mapped from the store; None for the image arrays of a text-only store.

        The mapping is copy-on-write: processes share the page cache instead of holding copies, and torch gets a
        writable array (a write would stay private to the process; the files never change). bfloat16 features
        come from a companion file next to the float32 array, written once (see ``_bf16_file``).
        """
        if name not in ARRAYS:
            raise ValueError(f"no array {name!r} in a feature store; expected one of {sorted(ARRAYS)}")
        stored = torch.bool if name == "image_missing" else torch.float32
        allowed = (stored,) if name == "image_missing" else (torch.float32, torch.bfloat16)
        if (dtype or stored) not in allowed:
            raise ValueError(f"{name} is served as {' or '.join(map(str, allowed))}, not {dtype}")
        if name != "text" and self.image is None:
            return None
        if dtype == torch.bfloat16:  # numpy has no bfloat16: the companion holds its bits as int16
            return torch.from_numpy(np.load(self._bf16_file(name), mmap_mode="c")).view(torch.bfloat16)
        return torch.from_numpy(np.load(self.path / ARRAYS[name], mmap_mode="c"))

    def _bf16_file(self, name: str) -> Path:
        """The bfloat16 companion of ``name``'s float32 array, written on first request.

        Its name carries a tag of the float32 file's size, mtime, ctime and inode: a rewritten or replaced array
        gets a new companion (the stale one is deleted). One process converts, under a lock file in the store;
        the others wait for it and map its file. The companion is renamed into place complete, so a crash never
        leaves a half one.
        """
        source = self.path / ARRAYS[name]
        st = source.stat()
        tag = hashlib.sha256(f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}".encode()).hexdigest()
        target = self.path / f"{source.stem}-bf16-{tag[:16]}.npy"
        if target.exists():
            return target
        try:
            with open(self.path / BF16_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                if not target.exists():
                    _write_bf16(source, target)
        except OSError as e:
            raise DataError(f"{self.path}: cannot write the bfloat16 companion of {source.name} ({e}); make the "
                            "store writable once, or use float32 features") from None
        return target

    def check_compatible(self, encoder_cfg: EncoderConfig) -> None:
        """DataError unless this store was built by the encoders ``encoder_cfg`` names."""
        want, have = encoder_identity(encoder_cfg), self.manifest["encoder"]
        if not identity_matches(want, have):
            raise DataError(f"{self.path}: built with {_describe(have)}, but the config asks for {_describe(want)}; "
                            "rebuild it (launchers/extract_features.py, or ensure_features)")

    def verify(self, chunk: int = 1 << 16) -> None:
        """Scan every feature row (reads the whole store); DataError naming the first non-finite item."""
        for name, array in ((TEXT, self.text), (IMAGE, self.image)):
            for start in range(0, 0 if array is None else len(array), chunk):
                bad = ~np.isfinite(array[start:start + chunk]).all(axis=1)
                if bad.any():
                    i = start + int(np.argmax(bad))
                    raise DataError(f"{self.path / name}: item {self.keys[i]!r} (id {i}) has NaN/inf features")


def _write_bf16(source: Path, target: Path, chunk_bytes: int = 64 << 20) -> None:
    """torch's float32 -> bfloat16 rounding of ``source``, in chunks, stored as int16 bits; stale companions of
    the same array are removed."""
    fp32 = np.load(source, mmap_mode="r")
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, "w+", np.int16, fp32.shape)
        rows = max(1, chunk_bytes // max(1, fp32[:1].nbytes))
        for start in range(0, len(fp32), rows):
            block = torch.from_numpy(np.array(fp32[start : start + rows]))
            out[start : start + rows] = block.to(torch.bfloat16).view(torch.int16).numpy()
        out.flush()
        del out
    for stale in target.parent.glob(f"{source.stem}-bf16-*.npy"):
        if stale != target:
            stale.unlink()
    log.info("%s: wrote the bfloat16 companion %s", source, target.name)


def _describe(identity: dict[str, Any]) -> str:
    def one(m: str) -> str:
        return f"{m}={identity[m]['source']} ({identity[m]['revision'] or 'revision unknown here'})"

    parts = [one("text")] + ([one("image")] if identity["image"] else [])
    return ", ".join(parts + [f"max_text_tokens={identity['max_text_tokens']}", f"procedure={identity['procedure']}"])


def default_features_dir(dataset: DatasetLike, encoder_cfg: EncoderConfig) -> Path:
    """``<dataset>/features/<encoder slug>`` for a local dataset; for a remote one the same under its local cache
    folder (``DatasetSource.cache_folder``: the manifest is read unless ``dataset`` is one): a remote dataset's
    store is never written back to where the dataset came from."""
    source = DatasetSource.of(dataset)
    if source.is_local:
        folder = Path(source.base)
    else:
        folder = source.cache_folder(load_manifest(dataset))
    return folder / "features" / encoder_slug(encoder_cfg)


def _local_store(features_dir: str | os.PathLike) -> Path:
    """data.features as a folder on this machine (the store is memory-mapped; a URL is refused)."""
    if DatasetSource.of(features_dir).kind != "local":
        raise DataError(f"data.features={os.fspath(features_dir)!r}: a feature store is a local folder (it is "
                        "memory-mapped); leave data.features empty for the default, next to or cached for the dataset")
    return Path(features_dir)


# ---------------------------------------------------------------------------------------------------- distribution
class _Group:
    """This process's place in a torch.distributed job (or a group of one). Every step runs through ``run``:
    a failure on any rank is raised on all of them, so no rank waits forever in a collective."""

    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    def run(self, step: Callable[[], T], rank0_only: bool = False) -> Optional[T]:
        """Run ``step`` on every rank (or rank 0 only) and return rank 0's result on every rank."""
        result, error = None, None
        try:
            if self.rank == 0 or not rank0_only:
                result = step()
        except Exception as e:  # re-raised below, after every rank has heard of it
            error = e
        if not self.active:
            if error:
                raise error
            return result
        shared: list[Any] = [None] * self.world
        dist.all_gather_object(shared, (type(error).__name__, str(error)) if error else None)
        if error:
            raise error
        for rank, failure in enumerate(shared):
            if failure:
                kind, message = failure
                raise (DataError if kind == "DataError" else RuntimeError)(f"rank {rank}: {kind}: {message}")
        box = [result]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


# ------------------------------------------------------------------------------------------------------- building
@dataclass
class _Plan:
    mode: str  # "fresh" (nothing to do), "update" (encode changed items only) or "build" (from scratch)
    reason: str
    token: str = ""
    reuse: str = ""  # the store whose unchanged rows an update copies ("": the store being updated)


def _dataset_of(store_dir: Path) -> Optional[str]:
    """The dataset name a (possibly broken) store's manifest records, if it can be read."""
    try:
        return json.loads((store_dir / MANIFEST).read_text())["dataset"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _plan(store_dir: Path, dataset: Manifest, cfg: EncoderConfig, strict: bool, earlier: list[Path]) -> _Plan:
    token = uuid.uuid4().hex[:8]
    check_replaceable(store_dir, LAYOUT)  # before hours of encoding, not at the final swap
    if not store_dir.exists():
        identity = encoder_identity(cfg) if earlier else None
        for old_dir in earlier:
            if _built_alike(old_dir, dataset, identity):
                return _Plan("update", f"no feature store yet; encoding the items that changed since {old_dir}",
                             token, reuse=str(old_dir))
        return _Plan("build", "no feature store yet, building it", token)
    owner = _dataset_of(store_dir)
    if owner not in (None, dataset.name):
        raise DataError(f"{store_dir}: the feature store of dataset {owner!r}, not of {dataset.name!r} "
                        f"({dataset.path}); point data.features (--features) at another folder")
    try:
        old = FeatureStore.open(store_dir)
    except DataError as e:  # the log line names the folder already
        return _Plan("build", f"{str(e).removeprefix(f'{store_dir}: ')}; rebuilding it", token)
    identity = encoder_identity(cfg)
    if not identity_matches(identity, old.manifest["encoder"]):
        return _Plan("build", f"built with {_describe(old.manifest['encoder'])} but {_describe(identity)} "
                              "is requested; rebuilding from scratch", token)
    if old.manifest["dataset"]["items_digest"] != dataset.items_digest:
        return _Plan("update", "the item shards changed; encoding new and changed items", token)
    if strict and old.manifest["bad_records"]:
        raise DataError(f"{store_dir}: built leniently and skipped bad input {old.manifest['bad_records']}; "
                        "strict mode refuses it (fix the data or run without strict)")
    return _Plan("fresh", "up to date")


def _earlier_stores(source: DatasetSource, dataset: Manifest, store_dir: Path) -> list[Path]:
    """The stores of a remote dataset's earlier cache folders (same name, other item contents), newest first;
    none for a store outside the cache (a local dataset's, or data.features)."""
    if source.is_local or not store_dir.is_relative_to(own := source.cache_folder(dataset)):
        return []
    stores = [folder / store_dir.relative_to(own) for folder in source.earlier_cache_folders(dataset)]
    stores = [s for s in stores if (s / MANIFEST).is_file()]
    return sorted(stores, key=lambda s: (s / MANIFEST).stat().st_mtime_ns, reverse=True)


def _built_alike(store_dir: Path, dataset: Manifest, identity: dict[str, Any]) -> bool:
    """Whether the store opens and was built for a dataset of this name by the encoder of this identity."""
    try:
        store = FeatureStore.open(store_dir)
    except DataError:
        return False
    return store.manifest["dataset"]["name"] == dataset.name and identity_matches(identity, store.manifest["encoder"])


class _ShardEncoder:
    """Encodes one item shard into a part file: keys in shard order, features, flags, content hashes."""

    def __init__(self, cfg: EncoderConfig, old: Optional[FeatureStore], strict: bool):
        self.cfg, self.old, self.strict = cfg, old, strict

    @cached_property
    def encoders(self) -> Encoders:  # loaded on first need: a rank that only reuses rows never loads a model
        return build_encoders(self.cfg, _device())

    def _reusable(self, key: str, hashes: np.ndarray) -> Optional[int]:
        old_id = self.old.index.get(key) if self.old is not None else None
        if old_id is None:
            return None
        same = self.old.hashes[old_id] == hashes
        return old_id if same[0].all() and (self.cfg.image is None or same[1].all()) else None

    def _encode(self, shard: ShardInfo, batch: list[ItemRecord]) -> dict[str, np.ndarray]:
        out = {"text": self.encoders.text([r.text for r in batch])}
        if self.cfg.image:
            image = self.encoders.image
            with_image = [i for i, r in enumerate(batch) if r.decoded is not None]
            out["image"] = np.tile(image.blank, (len(batch), 1))
            if with_image:
                out["image"][with_image] = image([batch[i].decoded for i in with_image])
        for name, rows in out.items():
            finite = np.isfinite(rows).all(axis=1)
            if not finite.all():
                key = batch[int(np.argmin(finite))].key
                raise DataError(f"{shard.path}: item {key!r}: the {name} encoder produced NaN/inf features")
        return out

    def __call__(self, shard: ShardInfo, part: Path) -> None:
        bad = BadRecords(self.strict)
        keys: list[str] = []
        hashes: list[np.ndarray] = []
        missing: list[bool] = []
        reused: list[tuple[int, int]] = []  # (row in this part, id in the old store)
        encoded_rows: list[int] = []
        encoded: dict[str, list[np.ndarray]] = {"text": [], "image": []}
        batch: list[ItemRecord] = []

        def flush() -> None:
            for name, rows in self._encode(shard, batch).items():
                encoded[name].append(rows)
            batch.clear()

        for _, rec in iter_item_records([shard], bad, check_images=self.cfg.image is not None,
                                        max_image_pixels=self.cfg.max_image_pixels):
            h = np.frombuffer(content_hash(rec.text.encode()) + (content_hash(rec.image) if rec.image else NO_HASH),
                              dtype=np.uint8).reshape(2, 16)
            old_id = self._reusable(rec.key, h)
            if old_id is not None:
                reused.append((len(keys), old_id))
            else:
                encoded_rows.append(len(keys))
                batch.append(rec)
                if len(batch) == self.cfg.batch_size:
                    flush()
            keys.append(rec.key)
            hashes.append(h)
            missing.append(rec.image is None)
        if batch:
            flush()

        arrays = {"hashes": np.asarray(hashes, dtype=np.uint8).reshape(-1, 2, 16),
                  "missing": np.asarray(missing, dtype=bool)}
        for name in ("text", "image") if self.cfg.image else ("text",):
            old = None if self.old is None else getattr(self.old, name)
            dim = encoded[name][0].shape[1] if encoded[name] else (old.shape[1] if old is not None else 0)
            rows = np.zeros((len(keys), dim), dtype=np.float32)
            if encoded[name]:
                rows[encoded_rows] = np.concatenate(encoded[name])
            if reused:
                at, old_ids = zip(*reused)
                rows[list(at)] = old[list(old_ids)]
            arrays[name] = rows
        np.savez(part.with_suffix(".npz"), **arrays)
        info = {"keys": keys, "encoded": len(encoded_rows), "reused": len(reused), "bad": bad.as_dict()}
        part.with_suffix(".json").write_text(json.dumps(info))


def _merge(store_dir: Path, dataset: Manifest, cfg: EncoderConfig, parts: Path, plan: _Plan, strict: bool,
           world: int, started: float) -> dict[str, Any]:
    """Rank 0: one store from the per-shard parts. A key in several shards keeps its first shard's row."""
    bad = BadRecords(strict)
    infos = [json.loads((parts / f"{i:06d}.json").read_text()) for i in range(len(dataset.items))]
    first: dict[str, int] = {}
    for idx, info in enumerate(infos):
        bad.update(info["bad"])
        for key in info["keys"]:
            if key in first:
                bad.report("duplicate_item", f"{dataset.items[idx].path}: item {key!r} was already read from "
                                             f"{dataset.items[first[key]].path}")
            else:
                first[key] = idx
    if not first:
        raise DataError(f"{dataset.root}: no usable items to encode")
    keys = [PAD_KEY, *sorted(first)]
    ids = {k: i for i, k in enumerate(keys)}
    names = ("text", "image") if cfg.image else ("text",)
    dims: dict[str, int] = {}
    with replace_folder(store_dir, layout=LAYOUT) as tmp:
        out: dict[str, np.ndarray] = {}
        for idx, info in enumerate(infos):
            with np.load(parts / f"{idx:06d}.npz") as part:
                if not out and info["keys"]:
                    dims = {n: part[n].shape[1] for n in names}
                    out = {n: np.lib.format.open_memmap(tmp / f"{n}.npy", "w+", np.float32, (len(keys), dims[n]))
                           for n in names}
                    out["hashes"] = np.lib.format.open_memmap(tmp / HASHES, "w+", np.uint8, (len(keys), 2, 16))
                    if cfg.image:
                        out["missing"] = np.lib.format.open_memmap(tmp / MISSING, "w+", bool, (len(keys),))
                rows = [r for r, k in enumerate(info["keys"]) if first[k] == idx]
                if rows:
                    dest = [ids[info["keys"][r]] for r in rows]
                    for name, array in out.items():
                        array[dest] = part[name][rows]
        for array in out.values():
            array.flush()
        del out
        index_bytes = json.dumps(keys, ensure_ascii=False).encode()
        (tmp / ITEMS).write_bytes(index_bytes)
        missing_images = int(np.load(tmp / MISSING)[1:].sum()) if cfg.image else None
        manifest = {
            "format": STORE_FORMAT,
            "dataset": {"name": dataset.name, "items_digest": dataset.items_digest},
            "encoder": encoder_identity(cfg),  # after loading: a hub name now resolves to its cached commit
            "dims": {"text": dims["text"], "image": dims.get("image")},
            "num_items": len(keys) - 1,
            "items_sha256": hashlib.sha256(index_bytes).hexdigest(),  # open() checks items.json against it
            "missing_images": missing_images,
            "content_hashes": {"file": HASHES, "how": "sha256[:16] of the text (UTF-8) and of the image bytes"},
            "bad_records": bad.as_dict(),
            "last_build": {"mode": plan.mode, "reason": plan.reason, "encoded": sum(i["encoded"] for i in infos),
                           "reused": sum(i["reused"] for i in infos)},
            "created": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                        "world_size": world, "seconds": round(time.time() - started, 3),
                        "torch": torch.__version__, "transformers": transformers.__version__},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def ensure_features(location: DatasetLike, encoder_cfg: EncoderConfig,
                    features_dir: str | os.PathLike | None = None, strict: bool = False) -> Path:
    """Return the path of an up-to-date feature store for the dataset, building or updating it if needed.

    ``location``: a local folder, a URL, a DatasetSource or its Manifest (mmm4rec.data.remote); a remote
    dataset's store goes to its local cache folder unless ``features_dir`` names one. Call it on every rank once
    torch.distributed is initialised (or in a plain process). The store is fresh when its encoder identity and
    the dataset's item-shard digest match; a different encoder means a full rebuild (logged); changed item shards
    mean an update that encodes only new or changed items (for a remote dataset whose items changed, the new cache
    folder's store starts as an update of the newest earlier one). Bad items follow ``strict`` and are counted in
    the store manifest's ``bad_records``.
    """
    started = time.time()
    dataset = load_manifest(location)
    source = dataset.source
    store_dir = _local_store(features_dir) if features_dir else default_features_dir(dataset, encoder_cfg)
    group = _Group()
    plan = group.run(lambda: _plan(store_dir, dataset, encoder_cfg, strict,
                                   _earlier_stores(source, dataset, store_dir)), rank0_only=True)
    if group.rank == 0:
        log.info("%s: %s", store_dir, plan.reason)
    if plan.mode == "fresh":
        return store_dir
    parts = store_dir.parent / f".{store_dir.name}.parts-{plan.token}"
    try:
        def encode_my_shards() -> None:
            parts.mkdir(parents=True, exist_ok=True)
            old = FeatureStore.open(plan.reuse or store_dir) if plan.mode == "update" else None
            encode = _ShardEncoder(encoder_cfg, old, strict)
            for idx in range(group.rank, len(dataset.items), group.world):
                encode(dataset.items[idx], parts / f"{idx:06d}")
                log.info("rank %d: item shard %d/%d encoded", group.rank, idx + 1, len(dataset.items))

        group.run(encode_my_shards)
        manifest = group.run(lambda: _merge(store_dir, dataset, encoder_cfg, parts, plan, strict, group.world,
                                            started), rank0_only=True)
    finally:
        if group.rank == 0:
            shutil.rmtree(parts, ignore_errors=True)
    if group.rank == 0:
        build = manifest["last_build"]
        log.info("%s: %d items (%d encoded, %d reused) in %.1f s; bad records: %s", store_dir, manifest["num_items"],
                 build["encoded"], build["reused"], manifest["created"]["seconds"], manifest["bad_records"] or "none")
    return store_dir
