"""Amazon Reviews 2018 and 2023 categories -> one dataset folder (one domain per category, for pre-training
mixtures or single-domain fine-tuning).

Formats read (plain or .gz):
- 2018 ratings CSV, no header: ``item,user,rating,timestamp`` (Unix seconds).
- 2018 metadata, one item per line, strict JSON or (as many of those files are) a Python dict literal:
  asin, title, brand, category, description, imageURL, imageURLHighRes.
- 2023 reviews JSONL: user_id, parent_asin, timestamp (milliseconds; truncated to seconds).
- 2023 metadata JSONL: parent_asin, title, store, categories, features, description, images.
Images come from a local folder per domain, ``<image_stem(item id)>.jpg|jpeg|png|webp`` (tools/download_images.py
fetches them; the stem is the id itself for ordinary ids, percent-encoded where it holds anything else).
Keys are domain-qualified ("office:B000123"); items without a title-bearing metadata record are dropped before
k-core filtering (their text would be empty).
"""
from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import logging
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Optional

from mmm4rec.data.dataset import check_output, write_dataset
from mmm4rec.data.interactions import build_sequences  # unchanged: the in-memory reference
from mmm4rec.data.remote import Retry, get_url
from mmm4rec.data.schema import MAX_TIMESTAMP, BadRecords, DataError, ItemRecord, Manifest
from mmm4rec.data.shards import decode_image, image_ext, sha256_file

log = logging.getLogger(__name__)

LICENCE = (
    "Amazon review data, for research use. 2018: Jianmo Ni, Jiacheng Li, Julian McAuley, Justifying "
    "recommendations using distantly-labeled reviews and fine-grained aspects, EMNLP 2019. 2023: Yupeng Hou, "
    "Jiacheng Li, Zhankui He, An Yan, Xiusi Chen, Julian McAuley, Bridging Language and Items for Retrieval and "
    "Recommendation, arXiv:2403.03952 (2024). Product images remain the property of their owners."
)
DESCRIPTION_CHARS = 1000  # encoders read ~128 tokens; longer descriptions only bloat the shards
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
URL_SCHEMES = ("http", "https")


def image_stem(item: str) -> str:
    """The file name (without extension) of an item's image: the id percent-encoded (RFC 3986 unreserved
    characters stay, so ASINs keep their names) and a leading dot too (no hidden files). Injective, and never
    holds a slash, so no id leads outside the folder."""
    stem = urllib.parse.quote(item, safe="")
    return f"%2E{stem[1:]}" if stem.startswith(".") else stem


@dataclass
class DomainSource:
    name: str  # domain, e.g. "office"
    reviews: Path
    meta: Path
    images: Optional[Path] = None


@dataclass
class ItemMeta:
    text: str
    image_urls: list[str]
    fields: dict[str, str]


def _open(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _records(path: Path, bad: BadRecords) -> Iterator[dict[str, Any]]:
    """JSON lines, accepting Python dict literals (single quotes, True/None) as in the 2018 metadata files."""
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError) as e:
                    bad.report("bad_record", f"{path}:{lineno}: neither JSON nor a Python dict literal ({e})")
                    continue
            if isinstance(rec, dict):
                yield rec
            else:
                bad.report("bad_record", f"{path}:{lineno}: not an object")


def _clean(value: Any) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    text = re.sub(r"<[^>]+>", " ", html.unescape(str(value or "")))
    return " ".join(text.split())


def _meta(rec: dict[str, Any]) -> tuple[str, ItemMeta]:
    if "parent_asin" in rec:  # 2023
        item = rec["parent_asin"]
        fields = {"Title": _clean(rec.get("title")), "Store": _clean(rec.get("store")),
                  "Categories": ", ".join(_clean(c) for c in rec.get("categories") or []),
                  "Features": _clean(rec.get("features")), "Description": _clean(rec.get("description"))}
        urls = [i.get("hi_res") or i.get("large") for i in rec.get("images") or [] if isinstance(i, dict)]
    else:  # 2018
        item = rec["asin"]
        fields = {"Title": _clean(rec.get("title")), "Brand": _clean(rec.get("brand")),
                  "Categories": ", ".join(_clean(c) for c in rec.get("category") or []),
                  "Description": _clean(rec.get("description"))}
        urls = list(rec.get("imageURLHighRes") or []) + list(rec.get("imageURL") or [])
    fields["Description"] = fields["Description"][:DESCRIPTION_CHARS]
    text = " ; ".join(f"{k}: {v}" for k, v in fields.items() if v) if fields["Title"] else ""
    return str(item), ItemMeta(text, [u for u in urls if u], fields)


def read_meta(path: Path, bad: BadRecords) -> dict[str, ItemMeta]:
    items = {}
    for rec in _records(path, bad):
        try:
            item, meta = _meta(rec)
        except KeyError:
            bad.report("bad_record", f"{path}: metadata record without asin/parent_asin")
            continue
        items.setdefault(item, meta)  # the 2018 files repeat some items; the first record wins
    return items


def read_reviews(path: Path, bad: BadRecords) -> tuple[list[str], list[str], list[int]]:
    """(users, items, Unix seconds) from a 2018 ratings CSV or a 2023 reviews JSONL (told apart by content)."""
    users, items, stamps = [], [], []

    def add(user: str, item: str, seconds: int, where: str) -> None:
        if not 0 <= seconds <= MAX_TIMESTAMP:  # e.g. a 1e30 sentinel: not a time, and beyond int64
            bad.report("bad_timestamps", f"{where}: timestamp {seconds} s is not between 1970 and the year 9999")
            return
        users.append(user)
        items.append(item)
        stamps.append(seconds)

    with _open(path) as f:
        first = next((line for line in f if line.strip()), "")
    if first.lstrip().startswith("{"):
        for rec in _records(path, bad):
            try:
                user, stamp = str(rec["user_id"]), int(rec["timestamp"])
                item = str(rec.get("parent_asin") or rec["asin"])
            except (KeyError, TypeError, ValueError, OverflowError):
                bad.report("bad_record", f"{path}: review without user_id/parent_asin/timestamp: {str(rec)[:80]}")
                continue
            add(user, item, stamp // 1000, f"{path}: user {user!r}")
        return users, items, stamps
    with _open(path) as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            try:
                item, user, _, stamp = row
                seconds = int(float(stamp))
            except (ValueError, OverflowError):  # int(float("inf")) overflows
                if lineno > 1:  # a header line is fine
                    bad.report("bad_record", f"{path}:{lineno}: expected item,user,rating,timestamp")
                continue
            add(user, item, seconds, f"{path}:{lineno}")
    return users, items, stamps


def _local_image(folder: Optional[Path], item: str, bad: BadRecords) -> Optional[bytes]:
    if folder is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{image_stem(item)}{suffix}"
        if path.is_file():
            data = path.read_bytes()
            try:
                image_ext(data)
                decode_image(data)
            except Exception as e:  # DataError from image_ext, OSError and others from PIL
                bad.report("bad_image", f"{path}: unreadable image for item {item!r} ({e})")
                return None
            return data
    return None


def prepare(domains: list[DomainSource], out_dir: str | Path, name: str, shard_size: int = 1000, k: int = 5,
            strict: bool = False) -> Manifest:
    """Each domain is filtered on its own (k-core per category); users are keyed per domain."""
    if len({d.name for d in domains}) != len(domains):
        raise DataError("domain names must be unique")
    check_output(out_dir)  # before reading the sources, not after
    bad = BadRecords(strict)
    items: list[ItemRecord] = []
    seqs = []
    filtering: dict[str, Any] = {}
    for src in sorted(domains, key=lambda d: d.name):
        meta = read_meta(src.meta, bad)
        users, raw_items, stamps = read_reviews(src.reviews, bad)
        with_text = [bool(meta.get(i) and meta[i].text) for i in raw_items]
        built = build_sequences(src.name, [f"{src.name}:{u}" for u, ok in zip(users, with_text) if ok],
                                [f"{src.name}:{i}" for i, ok in zip(raw_items, with_text) if ok],
                                [t for t, ok in zip(stamps, with_text) if ok], k=k)
        filtering[src.name] = {"reviews": len(raw_items), "reviews_without_item_text": with_text.count(False),
                               **built.stats}
        log.info("%s: %s", src.name, filtering[src.name])
        for key in built.item_keys:
            raw = key.split(":", 1)[1]
            m = meta[raw]
            items.append(ItemRecord(key, m.text, _local_image(src.images, raw, bad),
                                    {"id": raw, **{f.lower(): v for f, v in m.fields.items() if v}}))
        seqs.extend(built.records)
    provenance = {
        "converter": "mmm4rec.data.amazon",
        "args": {"k_core": k, "shard_size": shard_size, "strict": strict,
                 "domains": {d.name: {"images": d.images is not None} for d in domains}},
        "sources": [{"domain": d.name, "file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                    for d in domains for p in (d.reviews, d.meta)],
        "filtering": filtering,
        "images_with_file": sum(r.image is not None for r in items),
        "skipped": bad.as_dict(),
        "feedback": "implicit: every review is an interaction",
    }
    return write_dataset(out_dir, name=name, items=items, seqs=seqs, provenance=provenance, licence=LICENCE,
                         shard_size=shard_size)


# ---------------------------------------------------------------------------------------------------- image fetch
def image_urls(meta_path: Path, bad: BadRecords) -> dict[str, str]:
    """Item id -> its first (highest-resolution) image URL, from 2018 or 2023 metadata."""
    return {item: m.image_urls[0] for item, m in read_meta(meta_path, bad).items() if m.image_urls}


def download_images(urls: Mapping[str, str], out_dir: str | Path, timeout: float = 20.0, retries: int = 3,
                    backoff: float = 1.0, workers: int = 8) -> dict[str, int]:
    """Save each item's image as ``<out_dir>/<image_stem(item)>.<ext>`` (ext from the bytes; non-images are
    refused). Only http(s) URLs are fetched (others count as ``refused``: metadata must not make the tool read
    local files). Items with a file already are skipped, so an interrupted run resumes. Returns counts by outcome."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def one(item: str, url: str) -> str:
        stem = image_stem(item)
        if any((out / f"{stem}{s}").exists() for s in IMAGE_SUFFIXES):
            return "present"
        if urllib.parse.urlsplit(url).scheme.lower() not in URL_SCHEMES:
            log.warning("%s: %s: not an http(s) URL, refused", item, url)
            return "refused"
        try:
            data = get_url(url, Retry(retries=retries, backoff_s=backoff, timeout_s=timeout))
        except DataError as e:  # names the URL
            log.warning("%s: %s", item, e)
            return "failed"
        try:
            target = out / f"{stem}.{image_ext(data)}"
        except DataError as e:
            log.warning("%s: %s: %s", item, url, e)
            return "failed"
        part = target.with_name(target.name + ".part")
        part.write_bytes(data)
        part.replace(target)
        return "downloaded"

    counts = {"downloaded": 0, "present": 0, "failed": 0, "refused": 0}
    with ThreadPoolExecutor(workers) as pool:
        for outcome in pool.map(lambda kv: one(*kv), urls.items()):
            counts[outcome] += 1
    return counts
