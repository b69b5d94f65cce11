"""Users' own data -> dataset folder: an interaction table and an item table, any column names.

Tables are CSV, TSV, JSON lines, Parquet (needs pyarrow) or RecBole atomic files (``NAME.inter`` / ``NAME.item``:
tab-separated, typed ``field:type`` header), plain or gzipped except Parquet. The format follows the file suffix.
Cells are text as written, except JSON and Parquet values, which keep their types (lists among them). A text
cell becomes a list only where the caller says so (``TextField.split``): RecBole's ``token_seq`` holds word
sequences (ML-100K's titles) as well as lists (its genres), so the type alone cannot tell.

- Interactions: one row per event, a user, an item and integer Unix seconds (an integral float such as RecBole's
  ``978301000.0`` is accepted, a fraction is not), optionally a domain. Every row is an implicit interaction.
  Without a domain column the dataset name is the one domain; with one, every domain is filtered on its own and
  its keys are qualified by it (``books:42``), as in the Amazon merge.
- Items: one row per item id (the interaction table's item column), text fields rendered ``Label: value ; …``
  (the MovieLens style; list values joined by ", ", empty values left out) and optionally an image: a path
  (relative to the table's folder, or absolute) or a URL. A URL is recorded in the item's json (``image_url``);
  its bytes come from a folder of downloaded images ``<id>.jpg|jpeg|png|webp`` (tools/download_images.py's
  naming, and its downloader when asked). An items table with the domain column (JSON lines: in its first
  record) describes items per domain; without it, each row serves every domain.

Then the shared rules (``interactions.build_sequences``): exact duplicate rows dropped, k-core to a fixed point,
events ordered by (timestamp, item key). Structural problems (an unreadable file, a missing column, no usable
rows) are DataErrors. Row problems go through ``BadRecords``: strict raises naming the file, line and key; lenient
skips and counts (``bad_record``, ``bad_timestamps``, ``unknown_item``, ``bad_text``, ``duplicate_item``,
``bad_image``). An item's interactions are dropped with it before k-core and counted in the filtering statistics.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Optional, Sequence

from .amazon import _local_image, download_images
from mmm4rec.data.dataset import check_output, write_dataset
from mmm4rec.data.interactions import build_sequences  # unchanged: the in-memory reference
from mmm4rec.data.schema import MAX_TIMESTAMP, BadRecords, DataError, InvalidRecord, ItemRecord, Manifest, SeqRecord
from mmm4rec.data.shards import decode_image, image_ext, sha256_file

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet", ".inter": "atomic", ".item": "atomic"}
ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
LICENCE = "not stated: the data owner's terms apply"
PARQUET_BATCH = 65_536  # rows per pyarrow batch: bounded memory on large files
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Columns:
    """Column names. ``item`` names the item id in both tables."""

    user: str = "user"
    item: str = "item"
    time: str = "timestamp"
    domain: Optional[str] = None
    image: Optional[str] = None


RECBOLE_COLUMNS = Columns("user_id", "item_id", "timestamp")  # RecBole's USER_ID_FIELD, ITEM_ID_FIELD, TIME_FIELD


@dataclass(frozen=True)
class TextField:
    """An item column rendered into the item text as ``label: value``; ``split`` cuts a text cell into a list
    (on whitespace when it is the empty string), rendered joined by ", "."""

    column: str
    label: str
    split: Optional[str] = None

    @classmethod
    def parse(cls, spec: str, lists: Optional[Mapping[str, str]] = None) -> "TextField":
        """``genres`` -> "Genres: …", ``Genres=genre`` -> "Genres: …" from column genre; ``lists``: column ->
        separator, for the columns whose text cells hold lists."""
        label, _, column = spec.rpartition("=")
        if not column:
            raise DataError(f"text field {spec!r}: expected COLUMN or LABEL=COLUMN")
        label = label or " ".join(w.capitalize() for w in column.replace("_", " ").split())
        return cls(column, label, (lists or {}).get(column))


# ---------------------------------------------------------------------------------------------------------- tables
def table_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes.pop()
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None or (fmt == "parquet" and path.suffix.lower() == ".gz"):
        raise DataError(f"{path}: unknown table format, expected one of {', '.join(sorted(FORMATS))} "
                        "(CSV, TSV, JSON lines, RecBole atomic files optionally .gz)")
    return fmt


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """An unreadable or undecodable file is one DataError naming it."""
    try:
        yield
    except DataError:
        raise
    except (OSError, ValueError, csv.Error, EOFError) as e:  # ValueError: UnicodeDecodeError, pyarrow.ArrowInvalid
        raise DataError(f"{path}: cannot read: {e}") from None


def _open(path: Path) -> IO[str]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _pyarrow_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs the pyarrow package, which is not installed "
                        "(pip install 'mmm4rec[parquet]' or pyarrow)") from None
    return pyarrow.parquet


class Table:
    """One input file: its column names (None for JSON lines, whose records name their own fields) and its rows
    as dicts, each with the line (Parquet: the row) that messages cite."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = table_format(self.path)
        with _reading(self.path):
            self.columns = self._header()
        if self.columns is not None and len(set(self.columns)) < len(self.columns):
            twice = next(c for c in self.columns if self.columns.count(c) > 1)
            raise DataError(f"{self.path}: column {twice!r} appears twice in the header")

    def where(self, n: int) -> str:
        return f"{self.path}: row {n}" if self.format == "parquet" else f"{self.path}:{n}"

    def require(self, columns: Iterable[tuple[str, str]]) -> None:
        """(column, role) pairs that must be in the header."""
        for column, role in columns:
            if self.columns is not None and column not in self.columns:
                raise DataError(f"{self.path}: no {role} {column!r} (columns: {', '.join(self.columns)})")

    def has_column(self, column: str) -> bool:
        """In the header; for JSON lines, in the first record."""
        if self.columns is not None:
            return column in self.columns
        with _reading(self.path), _open(self.path) as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            record = json.loads(first)
        except ValueError:
            return False
        return isinstance(record, dict) and column in record

    def _header(self) -> Optional[list[str]]:
        if self.format == "parquet":
            return list(_pyarrow_parquet(self.path).ParquetFile(self.path).schema_arrow.names)
        if self.format == "jsonl":
            self.path.stat()  # fail early on a missing file
            return None
        with _open(self.path) as f:
            first = f.readline()
        if not first.strip():
            raise DataError(f"{self.path}: empty file, expected a header line")
        if self.format == "atomic":
            return self._atomic_header(first)
        return next(csv.reader([first], delimiter=self._delimiter))

    def _atomic_header(self, line: str) -> list[str]:
        names = []
        for spec in line.rstrip("\r\n").split("\t"):
            name, _, kind = spec.partition(":")
            if kind not in ATOMIC_TYPES:
                raise DataError(f"{self.path}: header field {spec!r} is not NAME:TYPE with TYPE one of "
                                f"{', '.join(ATOMIC_TYPES)} (a RecBole atomic file)")
            names.append(name)
        return names

    @property
    def _delimiter(self) -> str:
        return "\t" if self.format == "tsv" else ","

    def rows(self, bad: BadRecords, columns: Optional[Sequence[str]] = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line or row number, row); malformed lines are ``bad_record``. ``columns``: what Parquet must read."""
        reader = {"csv": self._csv_rows, "tsv": self._csv_rows, "atomic": self._atomic_rows,
                  "jsonl": self._jsonl_rows}.get(self.format)
        with _reading(self.path):
            yield from reader(bad) if reader else self._parquet_rows(columns)

    def _fields_mismatch(self, bad: BadRecords, n: int, got: int) -> None:
        bad.report("bad_record", f"{self.where(n)}: {got} fields, the header has {len(self.columns)}")

    def _csv_rows(self, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
        with _open(self.path) as f:
            reader = csv.reader(f, delimiter=self._delimiter)
            next(reader)
            for row in reader:
                if not row:
                    continue
                if len(row) != len(self.columns):
                    self._fields_mismatch(bad, reader.line_num, len(row))
                    continue
                yield reader.line_num, dict(zip(self.columns, row))

    def _atomic_rows(self, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
        with _open(self.path) as f:
            next(f)
            for n, line in enumerate(f, 2):
                if not line.strip():
                    continue
                values = line.rstrip("\r\n").split("\t")
                if len(values) != len(self.columns):
                    self._fields_mismatch(bad, n, len(values))
                    continue
                yield n, dict(zip(self.columns, values))

    def _jsonl_rows(self, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
        with _open(self.path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    bad.report("bad_record", f"{self.where(n)}: not JSON ({e})")
                    continue
                if not isinstance(row, dict):
                    bad.report("bad_record", f"{self.where(n)}: not a JSON object")
                    continue
                yield n, row

    def _parquet_rows(self, columns: Optional[Sequence[str]]) -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        parquet = _pyarrow_parquet(self.path).ParquetFile(self.path)
        for batch in parquet.iter_batches(PARQUET_BATCH, columns=columns):
            for row in batch.to_pylist():
                n += 1
                yield n, row


# ----------------------------------------------------------------------------------------------------------- cells
def _scalar(value: Any) -> str:
    """A cell as text: None and NaN are empty; an integral float is an integer (Parquet and pandas store integer
    columns with gaps as floats)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(v for v in map(_scalar, value) if v)
    return _scalar(value)


def _json_value(value: Any) -> Any:
    """A cell as it goes into the item's json (dates and other Parquet types as text)."""
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value).strip()


def _id(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if type(value) is str:  # every cell of a text table: the per-row cost of the conversion
        text = value.strip()
    elif isinstance(value, (list, tuple, dict)):
        raise InvalidRecord("bad_record", f"{column} holds a {type(value).__name__}, not an id")
    else:
        text = _scalar(value)
    if not text:
        raise InvalidRecord("bad_record", f"no {column}")
    return text


def _integer(value: Any) -> int:
    """An int, an integral float, or the text of either ("978301000", "978301000.0", "9.783e8")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)  # exact, also beyond float precision
        except ValueError:
            pass
    if isinstance(value, (str, float)):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if number.is_integer():
            return int(number)
    problem = "empty timestamp" if value in (None, "") else f"timestamp {value!r} is not integer Unix seconds"
    raise InvalidRecord("bad_timestamps", problem)


def _seconds(value: Any) -> int:
    """Unix seconds from ``_integer`` or a datetime (Parquet timestamps; naive = UTC, fractions cut off)."""
    if isinstance(value, datetime):
        seconds = math.floor((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    else:
        seconds = _integer(value)
    if not 0 <= seconds <= MAX_TIMESTAMP:  # the range every sequence record must keep (schema.check_seq)
        raise InvalidRecord("bad_timestamps", f"timestamp {value!r} is not between 1970 and the year 9999")
    return seconds


def _split(value: Any, separator: Optional[str]) -> Any:
    if separator is None or not isinstance(value, str):
        return value
    return [part.strip() for part in (value.split(separator) if separator else value.split()) if part.strip()]


# ----------------------------------------------------------------------------------------------------------- items
ItemId = tuple[Optional[str], str]  # (domain, id); domain None when the items table serves every domain


@dataclass
class _Item:
    text: str
    meta: dict[str, Any]
    image: str  # the image cell: empty, a URL or a path
    n: int  # its line in the items table


@dataclass
class Catalogue:
    """The items table read: usable items, and the rows of those dropped for empty text."""

    table: Table
    per_domain: bool
    items: dict[ItemId, _Item] = field(default_factory=dict)
    textless: dict[ItemId, int] = field(default_factory=dict)

    def id(self, domain: str, item: str) -> ItemId:
        return (domain if self.per_domain else None, item)


def read_items(table: Table, columns: Columns, fields: Sequence[TextField], bad: BadRecords) -> Catalogue:
    table.require([(columns.item, "item column"), *((f.column, "text field") for f in fields),
                   *([(columns.image, "image column")] if columns.image else [])])
    per_domain = columns.domain is not None and table.has_column(columns.domain)
    wanted = [columns.item, *(f.column for f in fields), columns.image, columns.domain if per_domain else None]
    catalogue = Catalogue(table, per_domain)
    present: set[str] = set()
    for n, row in table.rows(bad, [c for c in dict.fromkeys(wanted) if c is not None]):
        try:
            key = (_id(row, columns.domain) if per_domain else None, _id(row, columns.item))
        except InvalidRecord as e:
            bad.report(e.reason, f"{table.where(n)}: {e.problem}")
            continue
        first = catalogue.items[key].n if key in catalogue.items else catalogue.textless.get(key)
        if first is not None:
            bad.report("duplicate_item", f"{table.where(n)}: item {key[1]!r} already on {table.where(first)}")
            continue
        present.update(row)
        values = {f.column: _split(row.get(f.column), f.split) for f in fields}
        text = " ; ".join(f"{f.label}: {value}" for f in fields if (value := _render(values[f.column])))
        if not text:
            bad.report("bad_text", f"{table.where(n)}: item {key[1]!r}: empty text "
                                   f"({', '.join(f.column for f in fields)} all empty)")
            catalogue.textless[key] = n
            continue
        image = _scalar(row.get(columns.image)) if columns.image else ""
        meta = {column: _json_value(value) for column, value in values.items()}
        if _URL.match(image):
            meta["image_url"] = image
        catalogue.items[key] = _Item(text, meta, image, n)
    absent = [f.column for f in fields if f.column not in present]
    if present and absent:  # JSON lines: a misspelt field is in no record
        raise DataError(f"{table.path}: no record has the text field {absent[0]!r}")
    if not catalogue.items:
        raise DataError(f"{table.path}: no usable item rows (skipped: {bad.as_dict()})")
    return catalogue


class _Images:
    """An item's image bytes from its image cell: a file, or for a URL the download in ``folder`` (one
    sub-folder per domain when items are per domain: the files are named by item id)."""

    def __init__(self, catalogue: Catalogue, folder: Optional[Path], bad: BadRecords):
        self.catalogue, self.folder, self.bad = catalogue, folder, bad
        self.stored = 0

    def folder_for(self, domain: str) -> Optional[Path]:
        if self.folder is None:
            return None
        return self.folder / domain if self.catalogue.per_domain else self.folder

    def download(self, item_keys: Iterable[str]) -> dict[str, int]:
        """Fetch the URL images of these items that are not in the folder yet (tools/download_images.py's logic)."""
        if self.folder is None:
            raise DataError("downloading images needs a folder to put them in")
        by_folder: dict[Path, dict[str, str]] = {}
        for key in item_keys:
            domain, raw = key.split(":", 1)
            url = self.catalogue.items[self.catalogue.id(domain, raw)].meta.get("image_url")
            if url:
                by_folder.setdefault(self.folder_for(domain), {})[raw] = url
        counts = {"downloaded": 0, "present": 0, "failed": 0, "refused": 0}
        for folder, urls in by_folder.items():
            for outcome, n in download_images(urls, folder).items():
                counts[outcome] += n
        return counts

    def load(self, domain: str, raw: str, item: _Item) -> Optional[bytes]:
        if not item.image:
            return None
        if _URL.match(item.image):
            data = _local_image(self.folder_for(domain), raw, self.bad)
        else:
            data = self._file(raw, item)
        self.stored += data is not None
        return data

    def _file(self, raw: str, item: _Item) -> Optional[bytes]:
        path = Path(item.image)
        path = path if path.is_absolute() else self.catalogue.table.path.parent / path
        where = f"{self.catalogue.table.where(item.n)}: item {raw!r}"
        try:
            data = path.read_bytes()
            image_ext(data)
            decode_image(data)
        except OSError as e:
            self.bad.report("bad_image", f"{where}: cannot read image {path} ({e.strerror or e})")
            return None
        except Exception as e:  # DataError from image_ext; PIL raises several types for damaged images
            self.bad.report("bad_image", f"{where}: {path} is not a readable image ({e})")
            return None
        return data


# ---------------------------------------------------------------------------------------------------- interactions
@dataclass
class _Events:
    """One domain's usable rows, and the rows dropped with their item."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    unknown_item: int = 0
    without_item_text: int = 0


def _domain(row: Mapping[str, Any], column: str) -> str:
    domain = _id(row, column)
    if ":" in domain:
        raise InvalidRecord("bad_record", f"domain {domain!r} contains ':' (keys are <domain>:<id>)")
    return domain


def read_events(table: Table, columns: Columns, domain: Optional[str], catalogue: Catalogue,
                bad: BadRecords) -> dict[str, _Events]:
    """Rows per domain: from the domain column, else all in ``domain``."""
    needed = [(columns.user, "user column"), (columns.item, "item column"), (columns.time, "time column")]
    table.require(needed + ([(columns.domain, "domain column")] if columns.domain else []))
    events: dict[str, _Events] = {}
    for n, row in table.rows(bad, [c for c, _ in needed] + ([columns.domain] if columns.domain else [])):
        try:
            user, item, stamp = _id(row, columns.user), _id(row, columns.item), _seconds(row.get(columns.time))
            row_domain = _domain(row, columns.domain) if columns.domain else domain
        except InvalidRecord as e:
            bad.report(e.reason, f"{table.where(n)}: {e.problem}")
            continue
        found = events.setdefault(row_domain, _Events())
        item_id = catalogue.id(row_domain, item)
        if item_id not in catalogue.items:
            if item_id in catalogue.textless:  # reported once, as the item's bad_text
                found.without_item_text += 1
            else:
                found.unknown_item += 1
                where = f" for domain {row_domain!r}" if catalogue.per_domain else ""
                bad.report("unknown_item", f"{table.where(n)}: item {item!r} is not in {catalogue.table.path}{where}")
            continue
        found.users.append(user)
        found.items.append(item)
        found.stamps.append(stamp)
    if not any(e.users for e in events.values()):
        raise DataError(f"{table.path}: no usable interaction rows (skipped: {bad.as_dict()})")
    return events


# --------------------------------------------------------------------------------------------------------- convert
def _source(path: Path, role: str) -> dict[str, Any]:
    return {"role": role, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def prepare(interactions: str | os.PathLike, items: str | os.PathLike, out_dir: str | os.PathLike, *,
            text_fields: Sequence[TextField], name: Optional[str] = None, columns: Columns = Columns(),
            images: Optional[str | os.PathLike] = None, download: bool = False, k: int = 5,
            shard_size: int = 1000, strict: bool = False, licence: str = LICENCE) -> Manifest:
    """Convert an interaction table and an item table into a dataset folder.

    ``name`` defaults to the interaction file's stem (the one domain) or, with a domain column, the domains
    joined by "+". ``images``: the folder of downloaded URL images; ``download`` fills it first, for the items
    left after filtering only.
    """
    if not text_fields:
        raise DataError("no text fields: name the item columns that form the item text")
    check_output(out_dir)  # before reading the tables, not after
    bad = BadRecords(strict)
    inter_table, item_table = Table(interactions), Table(items)
    domain = None if columns.domain else (name or inter_table.path.name.split(".")[0])
    if domain is not None and (":" in domain or not domain):
        raise DataError(f"dataset name {domain!r} is the domain of every key: it must be non-empty, without ':'")
    catalogue = read_items(item_table, columns, text_fields, bad)
    events = read_events(inter_table, columns, domain, catalogue, bad)
    name = name or domain or "+".join(sorted(events))

    seqs: list[SeqRecord] = []
    item_keys: list[str] = []
    filtering: dict[str, Any] = {}
    for d in sorted(events):
        found = events[d]
        built = build_sequences(d, [f"{d}:{u}" for u in found.users], [f"{d}:{i}" for i in found.items],
                                found.stamps, k=k)
        filtering[d] = {"rows_unknown_item": found.unknown_item, "rows_without_item_text": found.without_item_text,
                        **built.stats}
        log.info("%s: %s", d, filtering[d])
        seqs.extend(built.records)
        item_keys.extend(built.item_keys)
    seqs.sort(key=lambda r: r.user)  # domain by domain is not key order when one domain prefixes another
    item_keys.sort()

    image_files = _Images(catalogue, Path(images) if images is not None else None, bad)
    provenance: dict[str, Any] = {
        "converter": "mmm4rec.data.tables",
        "args": {"columns": asdict(columns), "text_fields": [asdict(f) for f in text_fields], "k_core": k,
                 "shard_size": shard_size, "strict": strict, "images": images is not None, "download": download},
        "source_format": {"interactions": inter_table.format, "items": item_table.format},
        "sources": [_source(inter_table.path, "interactions"), _source(item_table.path, "items")],
        "filtering": filtering,
        "feedback": "implicit: every row is an interaction",
    }
    if download:
        provenance["image_download"] = image_files.download(item_keys)

    def item_records() -> Iterator[ItemRecord]:
        for key in item_keys:
            d, raw = key.split(":", 1)
            item = catalogue.items[catalogue.id(d, raw)]
            yield ItemRecord(key, item.text, image_files.load(d, raw, item), item.meta)

    def seq_records() -> Iterator[SeqRecord]:
        # write_dataset consumes every item before the first sequence and builds the manifest after the last:
        # image outcomes are known, and recorded, by now
        provenance["images_with_file"] = image_files.stored
        provenance["skipped"] = bad.as_dict()
        yield from seqs

    return write_dataset(out_dir, name=name, items=item_records(), seqs=seq_records(), provenance=provenance,
                         licence=licence, shard_size=shard_size)


def prepare_recbole(prefix: str | os.PathLike, out_dir: str | os.PathLike, *, columns: Columns = RECBOLE_COLUMNS,
                    name: Optional[str] = None, **kwargs: Any) -> Manifest:
    """RecBole atomic files ``<prefix>.inter`` and ``<prefix>.item``; the dataset is named after the prefix."""
    prefix = Path(prefix)
    return prepare(prefix.with_name(prefix.name + ".inter"), prefix.with_name(prefix.name + ".item"), out_dir,
                   columns=columns, name=name or (None if columns.domain else prefix.name), **kwargs)
