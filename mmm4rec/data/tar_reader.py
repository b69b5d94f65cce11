"""A minimal reader for the uncompressed tar shards this project writes, for the stage-2 hot path.

Python's tarfile (under webdataset) builds header objects and keeps stream bookkeeping for every member, and a
sequence shard holds one small member per user: per-member overhead, not bytes, bounds a loader worker. This
reader parses the 512-byte ustar headers directly, verifies each header checksum and every
member's bounds, and groups members into samples exactly as webdataset does (key = path up to the first dot of
the basename). Anything it does not understand is an error naming the shard, never a silent stop; the test suite
checks it against webdataset's reader on the same shards.
"""
from __future__ import annotations

from typing import Any, Iterator

BLOCK = 512
ZEROS = bytes(BLOCK)
REGULAR = (b"0", b"\0")
SKIPPED = (b"5", b"g")  # directories, global pax headers: carry no sample data


class TarFormatError(ValueError):
    pass


def _number(field: bytes, what: str, offset: int) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarFormatError(f"bad {what} field in the header at byte {offset}") from None


def members(data: bytes, verified: bool = False) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every regular file in an uncompressed tar held in ``data``. ``verified``: the bytes
    matched the manifest's sha256, so the header checksums (a sum over 512 bytes per member, the reader's largest
    cost) cannot fail and are not recomputed; bounds are checked whatever."""
    pos, n = 0, len(data)
    long_name = None
    while True:
        if pos + BLOCK > n:
            raise TarFormatError(f"truncated: no end-of-archive marker (stopped at byte {pos} of {n})")
        header = data[pos : pos + BLOCK]
        if header == ZEROS:
            return  # end of archive
        if not verified:
            stored = _number(header[148:156], "checksum", pos)
            if stored != sum(header) - sum(header[148:156]) + 8 * 32:  # the checksum field counts as spaces
                raise TarFormatError(f"header checksum mismatch at byte {pos}")
        size = _number(header[124:136], "size", pos)
        start, end = pos + BLOCK, pos + BLOCK + size
        if end > n:
            raise TarFormatError(f"truncated: a member at byte {pos} needs {size} bytes, {n - start} remain")
        kind = header[156:157]
        if kind in REGULAR:
            name = header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            path = long_name or ((prefix + b"/" + name) if prefix else name).decode("utf-8")
            long_name = None
            yield path, data[start:end]
        elif kind == b"L":  # GNU long name for the next member
            long_name = data[start:end].split(b"\0", 1)[0].decode("utf-8")
        elif kind == b"x":  # pax extended header: only "path" matters here
            for record in data[start:end].decode("utf-8").splitlines():
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    long_name = value
        elif kind not in SKIPPED:
            raise TarFormatError(f"unsupported member type {kind!r} at byte {pos}")
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK


def sample_key(name: str) -> tuple[str, str] | None:
    """(sample key, extension) of a member name: webdataset's grouping, the name up to the first dot of its
    basename; None when the basename has no dot."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return None if dot < 0 else (name[:dot], name[dot + 1 :])


def parse(data: bytes, verified: bool = False) -> Iterator[dict[str, Any]]:
    """webdataset-style samples of a shard held in memory (``verified``: its bytes matched the manifest)."""
    current: dict[str, Any] | None = None
    for name, content in members(data, verified):
        split = sample_key(name)
        if split is None:
            raise TarFormatError(f"member {name!r} has no extension")
        key, ext = split
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = content
    if current is not None:
        yield current
