"""WebDataset shards: writing item and sequence shards with the checksums the manifest records, reading them
back with validation.

A sample's ``__key__`` is its running index in the dataset (``000000042``): true keys may hold dots and slashes,
which webdataset reads as extension and folder separators, so the real key lives in the ``.json`` member.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import webdataset as wds
from PIL import Image

from mmm4rec.config import EncoderConfig

from . import tar_reader
from .remote import sha256_hex
from .schema import MANIFEST, BadRecords, DataError, InvalidRecord, ItemRecord, SeqRecord, ShardInfo, seq_record

ITEM_SHARDS = "items-%06d.tar"
SEQ_SHARDS = "seqs-%06d.tar"
IMAGE_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # PIL format -> tar member extension
MAX_SHARD_BYTES = 1 << 30
# A listed shard up to this size is read whole, hashed in memory and parsed by tar_reader: one read instead of two,
# and 7x webdataset's tarfile path for stage 1's item read pass (docs/results/stage1_item_read.json).
WHOLE_READ_BYTES = 256 << 20
MAX_IMAGE_PIXELS = EncoderConfig.max_image_pixels  # PIL's own limit lets a 140 KB PNG decode to ~550 MB

ShardLike = Union[str, os.PathLike, ShardInfo]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_ext(data: bytes) -> str:
    """Tar member extension for encoded image bytes; DataError when they are not a JPEG, PNG or WebP."""
    try:
        fmt = Image.open(io.BytesIO(data)).format
    except Exception as e:  # PIL raises several types for non-images
        raise DataError(f"not an image: {e}") from None
    if fmt not in IMAGE_EXTS:
        raise DataError(f"image format {fmt} is not one of {sorted(IMAGE_EXTS)}")
    return IMAGE_EXTS[fmt]


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Fully decode (truncated files fail here, not later in the encoder) and convert to RGB. The pixel count is
    checked on the header, before anything is decoded (DataError)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below is the limit that applies
        im = Image.open(io.BytesIO(data))
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise DataError(f"{width} x {height} = {width * height:,} pixels, more than the {max_pixels:,} allowed "
                            "(data.encoder.max_image_pixels)")
        im.load()
        return im.convert("RGB")


# ----------------------------------------------------------------------------------------------------------- write
BLOCK, RECORD = tar_reader.BLOCK, 20 * tar_reader.BLOCK  # tar's block and record (tarfile.RECORDSIZE) sizes
TAR_USER = "bigdata"  # webdataset's TarWriter defaults: owner, group and mode of every member
TAR_MODE = 0o444


def _header_template() -> bytes:
    header = bytearray(BLOCK)
    header[100:108] = b"%07o\0" % TAR_MODE
    header[108:116] = header[116:124] = b"0000000\0"  # uid, gid
    header[136:148] = b"00000000000\0"  # mtime 0: the same records give byte-identical shards
    header[148:156] = b"        "  # the checksum counts its own field as spaces
    header[156:157] = b"0"  # a regular file; devmajor and devminor stay empty
    header[257:265] = b"ustar\x0000"
    header[265:265 + len(TAR_USER)] = header[297:297 + len(TAR_USER)] = TAR_USER.encode()
    return bytes(header)


_TEMPLATE = _header_template()
_TEMPLATE_SUM = sum(_TEMPLATE)


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte header tarfile writes for a member of ``size`` bytes named ``name`` with webdataset's
    TarWriter settings (mtime 0): a POSIX ustar header, no pax extension needed for a short ASCII name.

    Written by hand because tarfile's TarInfo, pax check and copy were most of the shard-writing time in a
    profile of a 10^7-event conversion (no result file); tests/data/test_build.py holds it byte-identical to
    webdataset's writer."""
    encoded = name.encode("ascii", "strict") if name.isascii() else b""
    if not encoded or len(encoded) > 100 or size >= 8 ** 11:
        raise ValueError(f"tar member {name!r} of {size} bytes needs a pax header")
    digits = b"%011o\0" % size
    header = bytearray(_TEMPLATE)
    header[0:len(encoded)] = encoded
    header[124:136] = digits
    header[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(encoded) + sum(digits))
    return bytes(header)


class _ShardSink:
    """Samples into numbered tar shards (``pattern`` % n) of at most ``shard_size`` samples, byte for byte as
    webdataset's ShardWriter writes them (encoder off, mtime 0; a new shard also once the samples' bytes reach
    MAX_SHARD_BYTES), plus the ShardInfo (count, size, sha256) of every shard, hashed while it is written."""

    def __init__(self, folder: Path, pattern: str, shard_size: int):
        self.folder, self.pattern, self.shard_size = folder, pattern, shard_size
        self.shards: list[ShardInfo] = []

    def write_all(self, samples: Iterable[dict[str, Any]]) -> list[ShardInfo]:
        out = None
        try:
            for sample in samples:
                if out is None or out.count >= self.shard_size or out.data_bytes >= MAX_SHARD_BYTES:
                    if out is not None:
                        self.shards.append(out.close())
                    out = _TarOut(self.folder / (self.pattern % len(self.shards)))
                out.write(sample)
            if out is not None:
                self.shards.append(out.close())
        finally:
            if out is not None:
                out.file.close()
        return self.shards


class _TarOut:
    """One shard being written."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.hash = hashlib.sha256()
        self.count = self.data_bytes = self.offset = 0

    def _put(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.offset += len(data)

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        for ext in sorted(sample):  # webdataset's member order
            if ext == "__key__":
                continue
            data = sample[ext]
            self._put(tar_header(f"{key}.{ext}", len(data)) + data + bytes(-len(data) % BLOCK))
            self.data_bytes += len(data)
        self.count += 1

    def close(self) -> ShardInfo:
        self._put(bytes(2 * BLOCK))  # the end-of-archive marker, then padding to a whole record, as tarfile
        self._put(bytes(-self.offset % RECORD))
        self.file.close()
        return ShardInfo(self.path.name, self.count, self.offset, self.hash.hexdigest(), path=self.path)


def write_items(folder: Path, records: Iterable[ItemRecord], shard_size: int, pattern: str = ITEM_SHARDS,
                prefix: str = "") -> list[ShardInfo]:
    """Item shards ``pattern`` % n in ``folder``; sample keys ``<prefix><running index>``."""
    def samples() -> Iterator[dict[str, Any]]:
        for n, rec in enumerate(records):
            meta = json.dumps({"key": rec.key, **rec.meta}).encode()
            sample = {"__key__": f"{prefix}{n:09d}", "txt": rec.text.encode(), "json": meta}
            if rec.image is not None:
                try:
                    sample[image_ext(rec.image)] = rec.image
                except DataError as e:
                    raise DataError(f"item {rec.key!r}: {e}") from None
            yield sample

    return _ShardSink(folder, pattern, shard_size).write_all(samples())


def write_seqs(folder: Path, records: Iterable[SeqRecord], shard_size: int, pattern: str = SEQ_SHARDS,
               prefix: str = "") -> list[ShardInfo]:
    """Sequence shards ``pattern`` % n in ``folder``; sample keys ``<prefix><running index>``."""
    samples = (
        {"__key__": f"{prefix}{n:09d}", "json": json.dumps({"user": r.user, "domain": r.domain, "items": r.items,
                                                            "timestamps": r.timestamps.tolist()}).encode()}
        for n, r in enumerate(records)
    )
    return _ShardSink(folder, pattern, shard_size).write_all(samples)


# ---------------------------------------------------------------------------------------------- item image files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_stem(item: str) -> str:
    """The file name (without extension) of an item's image: the id percent-encoded (RFC 3986 unreserved
    characters stay, so ASINs keep their names) and a leading dot too (no hidden files). Injective, and never
    holds a slash, so no id leads outside the folder."""
    stem = urllib.parse.quote(item, safe="")
    return f"%2E{stem[1:]}" if stem.startswith(".") else stem


def folder_image(folder: Optional[Path], item: str, bad: BadRecords) -> Optional[bytes]:
    """The image ``<folder>/<image_stem(item)>.jpg|jpeg|png|webp`` (tools/download_images.py's naming), checked;
    None when there is none, a counted ``bad_image`` when it does not decode."""
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


def file_image(path: Path, where: str, bad: BadRecords) -> Optional[bytes]:
    """An image file named by a table cell, checked; a counted ``bad_image`` (``where``: the table row and item)
    when it cannot be read or decoded."""
    try:
        data = path.read_bytes()
        image_ext(data)
        decode_image(data)
    except OSError as e:
        bad.report("bad_image", f"{where}: cannot read image {path} ({e.strerror or e})")
        return None
    except Exception as e:  # DataError from image_ext; PIL raises several types for damaged images
        bad.report("bad_image", f"{where}: {path} is not a readable image ({e})")
        return None
    return data


# ------------------------------------------------------------------------------------------------------------ read
def _shard_samples(shard: ShardLike, fast: bool) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, after checking its bytes against the manifest's sha256 when it is a ShardInfo.

    ``fast`` reads a local shard with tar_reader (the stage-2 hot path): the whole shard is in memory anyway, so
    hashing it costs no extra read, and the check runs on every read, not just once per index. So is a listed
    shard of at most WHOLE_READ_BYTES (stage 1's item shards, as converters write them); webdataset streams a
    larger local file, hashed in a first pass. A remote shard is fetched whole (mmm4rec.data.remote, with
    retries) and read like a fast local one.
    """
    info = shard if isinstance(shard, ShardInfo) else None
    path = str(info.path if info else shard)
    sha256 = info.sha256 if info else None
    remote = info is not None and info.remote
    if fast or remote or (info is not None and info.bytes <= WHOLE_READ_BYTES):
        data = info.source.read(info.name, info.bytes) if remote else Path(path).read_bytes()
        digest = sha256_hex(data) if sha256 else None
        samples = tar_reader.parse(data, verified=digest is not None and digest == sha256)
    else:
        digest = sha256_file(path) if sha256 else None
        samples = wds.tarfile_samples([{"url": path}])
    if digest != sha256:
        raise DataError(f"{path}: its sha256 does not match the one in {MANIFEST} (edited or replaced since it was "
                        "written)")
    yield from samples


def _samples(shards: Iterable[ShardLike], bad: BadRecords, fast: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(shard path, raw sample) for every sample; a corrupt or truncated shard is one ``corrupt_shard``.

    A ShardInfo (a shard the manifest lists) is checked against its sha256 before any sample is yielded (a
    mismatch is a DataError, whatever the strictness: the dataset is not what its manifest describes) and its
    sample count after the last: Python's tarfile ends a stream quietly at a damaged header.
    """
    for shard in shards:
        info = shard if isinstance(shard, ShardInfo) else None
        path = str(info.path if info else shard)
        n = 0
        try:
            for sample in _shard_samples(shard, fast):
                n += 1
                yield path, sample
        except DataError:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            cause = e.args[0] if e.args else e  # webdataset appends the stream and url to the arguments
            bad.report("corrupt_shard", f"{path}: corrupt or truncated tar after {n} samples: {cause}")
            continue
        if info is not None and n != info.count:
            bad.report("corrupt_shard",
                       f"{path}: corrupt or truncated tar: read {n} samples, the manifest lists {info.count}")


def iter_seq_records(shard_paths: Iterable[ShardLike], bad: BadRecords) -> Iterator[tuple[str, SeqRecord]]:
    """Validated user sequences of the given shards (paths or the manifest's ShardInfo, which adds a count check).

    Per record: one json.loads and a few numpy checks (see ``check_seq``); bad records raise or are counted.
    """
    for path, sample in _samples(shard_paths, bad, fast=True):
        try:
            obj = json.loads(sample["json"].decode())  # str: skips json's encoding sniffing
        except (KeyError, ValueError):
            bad.report("bad_record", f"{path}: sample {sample['__key__']}: no valid .json member")
            continue
        try:
            yield path, seq_record(obj)
        except InvalidRecord as e:
            who = obj.get("user") if isinstance(obj, dict) else None
            bad.report(e.reason, f"{path}: user {who or sample['__key__']!r}: {e.problem}")


def _item_record(path: str, sample: dict[str, Any], bad: BadRecords, check_images: bool,
                 max_image_pixels: int) -> ItemRecord:
    try:
        meta = json.loads(sample["json"].decode())  # str: skips json's encoding sniffing
        key = meta.pop("key")
        if type(key) is not str:
            raise TypeError
    except (KeyError, ValueError, TypeError, AttributeError):
        raise InvalidRecord("bad_record", "no .json member with a string 'key'") from None
    try:
        text = sample["txt"].decode("utf-8")
    except KeyError:
        raise InvalidRecord("bad_text", f"item {key!r} has no .txt member") from None
    except UnicodeDecodeError as e:
        raise InvalidRecord("bad_text", f"item {key!r}: text is not UTF-8 ({e})") from None
    if not text.strip():
        raise InvalidRecord("bad_text", f"item {key!r}: empty text")
    image = next((sample[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in sample), None)
    rec = ItemRecord(key, text, image, meta)
    if image is not None and check_images:
        try:
            rec.decoded = decode_image(image, max_image_pixels)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged images
            rec.image = None  # lenient: a bad image is a missing image
            bad.report("bad_image", f"{path}: item {key!r}: unreadable image ({type(e).__name__}: {e})")
    return rec


def iter_item_records(shard_paths: Iterable[ShardLike], bad: BadRecords, check_images: bool = True,
                      max_image_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[tuple[str, ItemRecord]]:
    """Validated items: UTF-8 non-empty text, unique keys (the first occurrence wins) and, when
    ``check_images``, fully decodable images of at most ``max_image_pixels`` (``ItemRecord.decoded`` then holds
    the RGB image)."""
    seen: dict[str, str] = {}
    for path, sample in _samples(shard_paths, bad):
        try:
            rec = _item_record(path, sample, bad, check_images, max_image_pixels)
        except InvalidRecord as e:
            bad.report(e.reason, f"{path}: sample {sample['__key__']}: {e.problem}")
            continue
        if rec.key in seen:
            bad.report("duplicate_item", f"{path}: item {rec.key!r} was already read from {seen[rec.key]}")
            continue
        seen[rec.key] = path
        yield path, rec
