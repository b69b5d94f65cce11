"""A dataset folder: item shards, sequence shards and ``dataset.json``.

Converters write one with ``write_dataset`` (streaming: only the item keys are held in memory); everything else
opens it with ``load_manifest``, from a local folder or from wherever mmm4rec.data.remote reads.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .atomic import Layout, check_replaceable, replace_folder
from .remote import DatasetLike, DatasetSource, sha256_hex
from .samples import samples_per_user
from .schema import (DATASET_FORMAT, MANIFEST, MIN_INTERACTIONS, DataError, InvalidRecord, ItemRecord, Manifest,
                     SeqRecord, check_seq, domain_of)
from .shards import sha256_file, write_items, write_seqs

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1000
# What a dataset folder written before the ownership marker holds (it may then still be replaced).
LAYOUT = Layout(MANIFEST, DATASET_FORMAT, (MANIFEST, "items-*.tar", "seqs-*.tar", "features"))


def load_manifest(dataset: DatasetLike, verify: bool = False) -> Manifest:
    """Read the manifest of ``dataset`` (a local folder, a URL or a DatasetSource, see mmm4rec.data.remote);
    check its shape, the counts the shard list implies, that every shard of a local dataset exists with the
    recorded size, and with ``verify`` every shard's sha256. A Manifest is returned as it is (unless ``verify``):
    a run reads dataset.json once, so the digest it records is of the manifest it trains on.

    Raises DataError naming the file (and the key) at fault. The size check is a stat per shard (cheap enough
    for every launch; a remote shard's is checked when it is read, with its sha256); hashing reads every byte,
    so here it is opt-in (the readers verify each shard they read).
    """
    if isinstance(dataset, Manifest) and not verify:
        return dataset
    source = DatasetSource.of(dataset)
    path = source.manifest_path
    raw = source.read_manifest()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    manifest = Manifest.from_json(data, path, sha256_hex(raw)).locate(source)
    for shard in manifest.items + manifest.seqs:
        if source.is_local:
            if not shard.path.is_file():
                raise DataError(f"{shard.path}: shard listed in {path} is missing")
            size = shard.path.stat().st_size
            if size != shard.bytes:
                raise DataError(f"{shard.path}: {size} bytes but {path} lists {shard.bytes} (truncated or replaced)")
        if verify:
            digest = sha256_file(shard.path) if source.is_local else sha256_hex(source.read(shard.name, shard.bytes))
            if digest != shard.sha256:
                raise DataError(f"{shard.path}: sha256 does not match {path} (corrupted or replaced)")
    return manifest


def check_output(out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """DataError unless ``write_dataset`` may replace ``out_dir`` (absent, empty, or a dataset folder it wrote):
    converters call it before reading their sources. ``inputs`` (tables, folders of images) must lie outside
    ``out_dir`` and its build folder (``.<name>.build`` beside it): both are replaced or removed whole, and an
    input kept there was deleted by the next conversion into the same folder."""
    check_replaceable(out_dir, LAYOUT)
    out = Path(out_dir).resolve()
    for path in inputs:
        if path is None:
            continue
        where = Path(path).resolve()
        for folder in (out, out.parent / f".{out.name}.build"):
            if where == folder or folder in where.parents:
                raise DataError(f"{path}: inside the output folder {folder}, which a conversion replaces whole; "
                                "move it elsewhere or choose another output folder")


class Counts:
    """Per-domain users / items / interactions and the leave-one-out sample counts, accumulated while streaming
    (by the writer for dataset.json, by the stage-2 index pass to check it)."""

    def __init__(self) -> None:
        self.per_domain: dict[str, dict[str, int]] = defaultdict(lambda: {"users": 0, "items": 0, "interactions": 0})
        self.train_samples = 0
        self.pretrain_samples = 0

    def item(self, rec: ItemRecord) -> None:
        self.per_domain[domain_of(rec.key)]["items"] += 1

    def seq(self, rec: SeqRecord) -> None:
        n = len(rec.items)
        d = self.per_domain[rec.domain]
        d["users"] += 1
        d["interactions"] += n
        self.train_samples += samples_per_user(n, "train")
        self.pretrain_samples += samples_per_user(n, "pretrain")

    def to_json(self) -> dict[str, Any]:
        return {"per_domain": dict(self.per_domain), "train_samples": self.train_samples,
                "pretrain_samples": self.pretrain_samples}

    def add(self, other: dict[str, Any]) -> None:
        """Add the ``to_json`` of counts gathered elsewhere (another partition)."""
        for domain, counts in other["per_domain"].items():
            for key, n in counts.items():
                self.per_domain[domain][key] += n
        self.train_samples += other["train_samples"]
        self.pretrain_samples += other["pretrain_samples"]

    def counts(self) -> dict[str, Any]:
        total = {k: sum(d[k] for d in self.per_domain.values()) for k in ("users", "items", "interactions")}
        return {**total, "per_domain": {k: self.per_domain[k] for k in sorted(self.per_domain)}}

    def split(self) -> dict[str, Any]:
        users = sum(d["users"] for d in self.per_domain.values())
        return {
            "protocol": "leave-one-out",
            "order": "timestamp, ties by item key",
            "min_interactions": MIN_INTERACTIONS,
            "test": "last item of each user",
            "valid": "second-to-last item of each user",
            "train": "every earlier position from the second on, history = the items before it",
            "test_users": users,
            "valid_users": users,
            "train_samples": self.train_samples,
            "pretrain_samples": self.pretrain_samples,
        }

    def totals(self) -> list[tuple[list[str], int]]:
        """The dataset.json values that only the records determine, as (key path, value)."""
        out = [(["counts", "interactions"], sum(d["interactions"] for d in self.per_domain.values())),
               (["split", "train_samples"], self.train_samples), (["split", "pretrain_samples"], self.pretrain_samples)]
        for domain in sorted(self.per_domain):
            out += [(["counts", "per_domain", domain, key], self.per_domain[domain][key])
                    for key in ("users", "interactions")]
        return out


def check_totals(manifest: Manifest, totals: list[tuple[list[str], int]]) -> None:
    """DataError naming dataset.json and the key when a count it states differs from the records' ``totals``."""
    listed = {"counts": manifest.counts, "split": manifest.split}
    for keys, value in totals:
        node: Any = listed
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node != value:
            raise DataError(f"{manifest.path}: {'.'.join(keys)} = {node}, but the sequence records hold {value}")


def write_dataset(out_dir: str | os.PathLike, *, name: str, items: Iterable[ItemRecord], seqs: Iterable[SeqRecord],
                  provenance: dict[str, Any], licence: str, shard_size: int = DEFAULT_SHARD_SIZE) -> Manifest:
    """Write item shards, sequence shards and dataset.json, replacing ``out_dir`` atomically (its feature stores
    are kept: they are re-validated by content hash when next used).

    Converters must produce valid data, so any problem here is a DataError, never a skip. ``items`` is consumed
    before ``seqs``, which may therefore be a generator that depends on the items having been written.
    """
    counts = Counts()
    keys: set[str] = set()

    def checked_items() -> Iterator[ItemRecord]:
        for rec in items:
            if rec.key in keys:
                raise DataError(f"{name}: duplicate item key {rec.key!r}")
            if not rec.text.strip():
                raise DataError(f"{name}: item {rec.key!r} has empty text")
            keys.add(rec.key)
            counts.item(rec)
            yield rec

    def checked_seqs() -> Iterator[SeqRecord]:
        for rec in seqs:
            rec.timestamps = np.asarray(rec.timestamps)
            try:
                check_seq(rec)
            except InvalidRecord as e:
                raise DataError(f"{name}: user {rec.user!r}: {e.problem}") from None
            unknown = next((k for k in rec.items if k not in keys), None)
            if unknown is not None:
                raise DataError(f"{name}: user {rec.user!r}: item {unknown!r} has no item record")
            counts.seq(rec)
            yield rec

    with replace_folder(out_dir, keep=("features",), layout=LAYOUT) as tmp:
        item_shards = write_items(tmp, checked_items(), shard_size)
        seq_shards = write_seqs(tmp, checked_seqs(), shard_size)
        if not keys or not counts.counts()["users"]:
            raise DataError(f"{name}: no items or no users left to write")
        manifest = Manifest(name=name, domains=sorted(counts.per_domain), counts=counts.counts(), split=counts.split(),
                            items=item_shards, seqs=seq_shards, provenance=provenance, licence=licence)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n")
    c = manifest.counts
    log.info("%s: %d users, %d items, %d interactions in %d + %d shards -> %s", name, c["users"], c["items"],
             c["interactions"], len(item_shards), len(seq_shards), out_dir)
    return load_manifest(out_dir)


def item_titles(manifest: Manifest, keys: Iterable[str] | None = None, limit: int | None = None) -> dict[str, str]:
    """key -> an item's title: its json "title", else its text (one pass over the item shards, images not
    decoded); only ``keys`` when given, from the first ``limit`` records when given. What an export stores beside
    each key and what TensorBoard's examples show."""
    from .schema import BadRecords
    from .shards import iter_item_records

    wanted = None if keys is None else set(keys)
    titles: dict[str, str] = {}
    for n, (_, rec) in enumerate(iter_item_records(manifest.items, BadRecords(strict=False), check_images=False)):
        if limit is not None and n >= limit:
            break
        if wanted is None or rec.key in wanted:
            title = rec.meta.get("title") if isinstance(rec.meta, dict) else None
            titles[rec.key] = title if isinstance(title, str) and title.strip() else rec.text
    return titles
