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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Optional, Sequence

from .amazon import download_images
from .atomic import file_version
from .build import Build, Converted, Phases, Scale, Sequences, convert, finish, write_item_partitions
from .dataset import check_output
from .engine import (LIST, MS_EARLY, MS_FIRST_SECOND, TIME_FORMATS, WHITESPACE, Engine, Problems, csv_fields,
                     first_second, formatted_seconds, id_problem, json_id, json_seconds, quote, seconds_problem, text_id, text_seconds, trimmed, typed_id,
                     typed_seconds, usable_id)
from .schema import MAX_TIMESTAMP, BadRecords, DataError, InvalidRecord, Manifest
from .shards import sha256_file
from .engine import MAX_LINE_BYTES
from ..config import short_repr

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
    """Text, UTF-8; a byte-order mark before the header (Excel's "CSV UTF-8") is not part of the first column's
    name (the engine's reader drops it too)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


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
            # A table is read several times (header, time sample, sha256, the engine): from a named pipe the
            # header took the data and the next read waited for more, forever.
            if self.path.exists() and not self.path.is_file():
                raise DataError(f"{self.path}: not a regular file (a folder, pipe or device); a table is read more "
                                "than once: write it to a file first")
            self.columns = self._header()
        if self.format in ("csv", "tsv") and len(self.columns) == 1:
            other = next((d for d in ";,\t|" if d != self._delimiter and d in self.columns[0]), None)
            if other:  # e.g. a spreadsheet's "CSV" in a locale whose decimal mark is the comma
                raise DataError(f"{self.path}:1: the header is one column, {short_repr(self.columns[0])}: its "
                                f"fields are separated by {other!r}, and a .{self.format} file's by "
                                f"{self._delimiter!r}; convert the file (or name a tab-separated one .tsv)")
        if self.columns is not None and len(set(self.columns)) < len(self.columns):
            twice = next(c for c in self.columns if self.columns.count(c) > 1)
            raise DataError(f"{self.path}: column {twice!r} appears twice in the header")

    def where(self, n: int) -> str:
        return f"{self.path}: row {n}" if self.format == "parquet" else f"{self.path}:{n}"

    def require(self, columns: Iterable[tuple[str, str]]) -> None:
        """(column, role) pairs that must be in the header. JSON lines have none: there the user, item and time
        columns must be in the first record (a record may leave out a text field, never these)."""
        for column, role in columns:
            if self.columns is not None and column not in self.columns:
                raise DataError(f"{self.path}: no {role} {column!r} (columns: {', '.join(self.columns)})")
            if self.columns is None and role in ("user column", "item column", "time column"):
                first = self._first_record()
                if first is not None and column not in first:
                    raise DataError(f"{self.path}: no {role} {column!r} in the first record (its fields: "
                                    f"{', '.join(first)})")

    def _first_record(self) -> Optional[dict]:
        """The first non-blank line of a JSON-lines table as a dict (None if it is not one)."""
        with _reading(self.path), _open(self.path) as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            record = json.loads(first)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def has_column(self, column: str) -> bool:
        """In the header; for JSON lines, in the first record."""
        if self.columns is not None:
            return column in self.columns
        record = self._first_record()
        return record is not None and column in record

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

    def fields_sql(self, lines: str) -> str:
        """SQL: (n, f, open_quote) for every data row of a CSV/TSV/RecBole table read by ``Engine.read_lines``
        into ``lines``, f its fields as the Python readers below split them: a CSV/TSV line by csv's rules (one
        line per row), an atomic line on tabs; blank lines skipped (whitespace-only too in an atomic file).
        ``open_quote``: a CSV/TSV line with an odd number of quotes, one line of a quoted value that spans lines
        (or a stray quote), which one line cannot be read as."""
        if self.format == "atomic":
            split, keep, odd = "string_split(line, '\t')", "trim(line, ' \t\r\n\x0b\x0c') <> ''", "false"
        else:
            split, keep = csv_fields("line", self._delimiter), "true"
            odd = "(length(line) - length(replace(line, '\"', ''))) % 2 = 1"
        return f"SELECT n, {split} AS f, {odd} AS open_quote FROM {lines} WHERE n > 1 AND line IS NOT NULL AND {keep}"

    def rows(self, bad: BadRecords, columns: Optional[Sequence[str]] = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line or row number, row); malformed lines are ``bad_record``. ``columns``: what Parquet must read."""
        reader = {"csv": self._csv_rows, "tsv": self._csv_rows, "atomic": self._atomic_rows,
                  "jsonl": self._jsonl_rows}.get(self.format)
        with _reading(self.path):
            yield from reader(bad) if reader else self._parquet_rows(columns)

    def _fields_mismatch(self, bad: BadRecords, n: int, got: int) -> None:
        bad.report("bad_record", f"{self.where(n)}: {got} fields, the header has {len(self.columns)}")

    def _csv_rows(self, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
        """Rows by csv's rules (a quoted value may span lines), but a stray quote costs its own row only: a row
        read over several lines that is not well-formed (csv's strict rules: a closing quote followed by a
        delimiter or the end of its line) or has the wrong number of fields is a bad record at its first line, and
        the lines after that one are read again as rows of their own. A row of one line keeps csv's lenient
        rules (as the SQL pass). Cells up to the engine's longest line are read: csv's own limit, 128 KiB, refused
        an ordinary long description."""
        limit = csv.field_size_limit(MAX_LINE_BYTES)
        try:
            with _open(self.path) as f:
                lines = _Lines(f)
                reader = csv.reader(lines, delimiter=self._delimiter, strict=True)
                next(reader)
                while True:
                    first, problem = lines.mark(), None
                    try:
                        row = next(reader, None)
                    except csv.Error as e:
                        row, problem = [], str(e)
                        if lines.taken() == 1:  # one line: csv's lenient rules, as the SQL pass reads it
                            try:
                                row, problem = next(csv.reader([lines.row[0][1]], delimiter=self._delimiter)), None
                            except csv.Error as e2:
                                problem = str(e2)
                    if row is None:
                        return
                    if problem is None and (not row or len(row) == len(self.columns)):
                        if row:
                            yield first, dict(zip(self.columns, row))
                        continue
                    if lines.taken() > 1:
                        what = problem or f"{len(row)} fields over {lines.taken()} lines"
                        bad.report("bad_record", f"{self.where(first)}: a quote opened in this line is not closed "
                                                 f"where its row should end ({what}); only this line is skipped")
                        lines.replay_after_first()
                    elif problem is not None:
                        bad.report("bad_record", f"{self.where(first)}: {problem}")
                    else:
                        self._fields_mismatch(bad, first, len(row))
        finally:
            csv.field_size_limit(limit)

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


class _Lines:
    """A text file's lines for csv.reader, numbered from 1, with the lines of the row being read kept so that a
    damaged row's lines after its first can be read again."""

    def __init__(self, f: IO[str]):
        self.f, self.n, self.again, self.row = f, 0, [], []

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.again:
            self.n, line = self.again.pop()
        else:
            line = next(self.f)
            self.n += 1
        self.row.append((self.n, line))
        return line

    def mark(self) -> int:
        """Start a row; the number of its first line."""
        self.row = []
        return (self.again[-1][0] if self.again else self.n + 1)

    def taken(self) -> int:
        return len(self.row)

    def replay_after_first(self) -> None:
        self.again.extend(reversed(self.row[1:]))
        self.row = []


# ----------------------------------------------------------------------------------------------------------- cells
def _scalar(value: Any) -> str:
    """A cell as text: None and NaN are empty; an integral float is an integer (Parquet and pandas store integer
    columns with gaps as floats)."""
    if value is None:
        return ""
    if isinstance(value, bytes):  # a Parquet BINARY string (no UTF-8 annotation), as the engine reads it
        value = value.decode("utf-8")
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
    if isinstance(value, bytes):
        return value.decode("utf-8").strip()
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
    if "\0" in text:  # engine.id_problem: the shards' key checks refuse it
        raise InvalidRecord("bad_record", f"{column} {text!r} holds a NUL character")
    return text


def _integer(value: Any) -> int:
    """An int, an integral float or decimal, or the text of either ("978301000", "978301000.0", "9.783e8")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)  # a Parquet DECIMAL(p, 0) column: Spark's and databases' integers
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
CATALOGUE_BATCH = 65_536  # item rows per Arrow batch handed to the engine: bounded memory


@dataclass
class Catalogue:
    """The items table read into the engine's ``catalogue`` table: the first row of every item id (per domain when
    ``per_domain``) with non-empty text; ``textless`` holds the ids whose first row had none."""

    table: Table
    per_domain: bool
    items: int = 0


def read_items(engine: Engine, table: Table, columns: Columns, fields: Sequence[TextField], bad: BadRecords
               ) -> Catalogue:
    """Render every item row's text and json (Python: the cell rules above), hand them to the engine in
    batches, then let it pick each id's first row and find duplicates and empty texts (reported in file order)."""
    import pyarrow as pa

    table.require([(columns.item, "item column"), *((f.column, "text field") for f in fields),
                   *([(columns.image, "image column")] if columns.image else [])])
    per_domain = columns.domain is not None and table.has_column(columns.domain)
    wanted = [columns.item, *(f.column for f in fields), columns.image, columns.domain if per_domain else None]
    problems = Problems(bad)
    present: set[str] = set()
    names = ("domain", "id", "n", "text", "meta", "image")
    engine.execute("CREATE OR REPLACE TABLE catalogue_rows (domain VARCHAR, id VARCHAR, n BIGINT, text VARCHAR, "
                   "meta VARCHAR, image VARCHAR)")
    batch: dict[str, list[Any]] = {name: [] for name in names}

    def flush() -> None:
        if batch["id"]:
            engine.append("catalogue_rows", pa.table({name: batch[name] for name in names}))
            for values in batch.values():
                values.clear()

    rows = () if _sql_items(engine, table, columns, fields, per_domain, problems) else \
        table.rows(bad, [c for c in dict.fromkeys(wanted) if c is not None])
    for n, row in rows:
        try:
            domain, item = (_id(row, columns.domain) if per_domain else None), _id(row, columns.item)
        except InvalidRecord as e:
            problems.add(e.reason, 1, [(n, f"{table.where(n)}: {e.problem}")])
            continue
        present.update(row)
        values = {f.column: _split(row.get(f.column), f.split) for f in fields}
        text = " ; ".join(f"{f.label}: {value}" for f in fields if (value := _render(values[f.column])))
        image = _scalar(row.get(columns.image)) if columns.image else ""
        meta = {column: _json_value(value) for column, value in values.items()}
        if _URL.match(image):
            meta["image_url"] = image
        for name, value in zip(names, (domain, item, n, text, json.dumps(meta), image)):
            batch[name].append(value)
        if len(batch["id"]) >= CATALOGUE_BATCH:
            flush()
    flush()
    absent = [f.column for f in fields if f.column not in present]
    if present and absent:  # JSON lines: a misspelt field is in no record
        raise DataError(f"{table.path}: no record has the text field {absent[0]!r}")

    where = _where_sql(table)
    engine.execute("""CREATE OR REPLACE TABLE catalogue_all AS SELECT *, n = min(n) OVER (PARTITION BY domain, id)
                      AS first, min(n) OVER (PARTITION BY domain, id) AS first_n FROM catalogue_rows""")
    engine.execute("DROP TABLE catalogue_rows")
    fields_named = ", ".join(f.column for f in fields)
    problems.add_query(engine, f"""
        SELECT n AS line, 'duplicate_item' AS reason,
               {where('n')} || ': item ' || pyrepr(id) || ' already on ' || {where('first_n')} AS message
        FROM catalogue_all WHERE NOT first
        UNION ALL
        SELECT n, 'bad_text', {where('n')} || ': item ' || pyrepr(id) || {quote(f": empty text ({fields_named} all empty)")}
        FROM catalogue_all WHERE first AND text = ''""")
    problems.flush()
    engine.execute("CREATE OR REPLACE TABLE catalogue AS SELECT domain, id, n, text, meta, image, text <> '' AS ok "
                   "FROM catalogue_all WHERE first")
    engine.execute("DROP TABLE catalogue_all")
    catalogue = Catalogue(table, per_domain, engine.value("SELECT count(*) FROM catalogue WHERE ok"))
    if not catalogue.items:
        raise DataError(f"{table.path}: no usable item rows (skipped: {bad.as_dict()})")
    return catalogue


def _sql_items(engine: Engine, table: Table, columns: Columns, fields: Sequence[TextField], per_domain: bool,
               problems: Problems) -> bool:
    """The items pass of a text table in SQL, with the rules of the Python pass (``_id``, ``_split``, ``_render``,
    ``_json_value``: every cell of a text table is a string), filling ``catalogue_rows``; False where it does not
    apply and the Python pass runs instead: JSON lines and Parquet (typed cells), and a CSV/TSV table with a
    quoted value spanning lines (a line with an odd number of quotes), which only Python's csv module reads
    right. The Python pass, a loop per item row, was the slowest part of converting a large item table."""
    if table.format not in ("csv", "tsv", "atomic"):
        return False
    engine.read_lines("item_lines", table.path)
    if table.format != "atomic" and engine.value(
            "SELECT count(*) FROM item_lines WHERE (length(line) - length(replace(line, '\"', ''))) % 2 = 1"):
        return False
    position = {c: i + 1 for i, c in enumerate(table.columns)}
    engine.execute(f"CREATE OR REPLACE TABLE item_fields AS {table.fields_sql('item_lines')}")
    shape = f"len(f) = {len(table.columns)}"
    where = _where_sql(table)
    ids = [(columns.domain, "domain_v")] if per_domain else []
    ids.append((columns.item, "id_v"))
    cells = {c: text_id(f'f[{position[c]}]') for c, _ in ids}
    checks = " ".join(f"WHEN NOT {usable_id(v)} THEN {id_problem(v, c)}" for c, v in cells.items())
    problems.add_query(engine, f"""SELECT n AS line, 'bad_record' AS reason, {where('n')} || ': ' ||
        CASE WHEN NOT ({shape}) THEN len(f) || {quote(' fields, the header has ' + str(len(table.columns)))}
             {checks} END AS message FROM item_fields
        WHERE NOT ({shape}) OR {' OR '.join(f"NOT {usable_id(v)}" for v in cells.values())}""")
    splits = {f.column: f.split for f in fields}  # as the Python pass's dict: the last field of a column wins
    values, pieces = {}, []
    for column, separator in splits.items():
        cell = f"f[{position[column]}]"
        if separator is None:
            values[column] = text_id(cell)
            continue
        parts = (f"string_split({cell}, {quote(separator)})" if separator
                 else f"regexp_split_to_array({cell}, {quote(WHITESPACE + '+')})")
        values[column] = f"list_filter(list_transform({parts}, lambda x: {trimmed('x')}), lambda x: x <> '')"
    for f in fields:
        value = values[f.column]
        rendered = f"array_to_string({value}, ', ')" if splits[f.column] is not None else value
        pieces.append(f"CASE WHEN {rendered} <> '' THEN {quote(f.label + ': ')} || {rendered} END")
    image = text_id(f"f[{position[columns.image]}]") if columns.image else "''"
    meta = ", ".join(f"{quote(c)}, {v}" for c, v in values.items())
    url = f"regexp_matches({image}, {quote(_URL.pattern)})"
    engine.execute(f"""INSERT INTO catalogue_rows SELECT {'domain_v' if per_domain else 'NULL'}, id_v, n,
        coalesce(concat_ws(' ; ', {', '.join(pieces)}), ''),
        CAST(CASE WHEN {url} THEN json_object({meta}, 'image_url', {image}) ELSE json_object({meta}) END AS VARCHAR),
        {image}
        FROM (SELECT *, {', '.join(f"{text_id(f'f[{position[c]}]')} AS {name}" for c, name in ids)}
              FROM item_fields WHERE {shape})
        WHERE {' AND '.join(usable_id(name) for _, name in ids)}""")
    engine.execute("DROP TABLE item_fields")
    engine.drop_lines("item_lines")
    return True


def _where_sql(table: Table) -> Any:
    """SQL for ``Table.where``: the file and line (Parquet: row) of a row number."""
    return lambda n: (f"{quote(f'{table.path}: row ')} || {n}" if table.format == "parquet"
                      else f"{quote(f'{table.path}:')} || {n}")


def _image_folder(folder: Optional[Path], per_domain: bool) -> str:
    """SQL: the folder of an item's downloaded URL image (one per domain when items are per domain: the files
    are named by item id)."""
    if folder is None:
        return "NULL"
    return f"{quote(str(folder.resolve()) + '/')} || domain" if per_domain else quote(str(folder.resolve()))


def _download(engine: Engine, catalogue: Catalogue, folder: Optional[Path], kept: str) -> dict[str, int]:
    """Fetch the URL images of the kept items that are not in the folder yet (tools/download_images.py's logic)."""
    if folder is None:
        raise DataError("downloading images needs a folder to put them in")
    by_folder: dict[str, dict[str, str]] = {}
    rows = engine.rows(f"""SELECT {_image_folder(folder, catalogue.per_domain)}, k.item, json_extract_string(c.meta,
        '$.image_url') FROM ({kept}) k JOIN catalogue c ON {_catalogue_match(catalogue, 'k')}
        WHERE json_extract_string(c.meta, '$.image_url') IS NOT NULL""")
    for where, item, url in rows:
        by_folder.setdefault(where, {})[item] = url
    counts = {"downloaded": 0, "present": 0, "failed": 0, "refused": 0}
    for where, urls in sorted(by_folder.items()):
        for outcome, n in download_images(urls, Path(where)).items():
            counts[outcome] += n
    return counts


def _catalogue_match(catalogue: Catalogue, alias: str) -> str:
    """SQL join condition of rows ``alias`` (domain, item) with the catalogue's ids."""
    same = f"c.id = {alias}.item"
    return f"{same} AND c.domain = {alias}.domain" if catalogue.per_domain else same


def _items_sql(catalogue: Catalogue, kept: str, images: Optional[Path]) -> str:
    """SQL: the build contract's item columns of every kept item."""
    table = catalogue.table
    where = _where_sql(table)
    folder = quote(str(table.path.parent.resolve()) + "/")
    url = "regexp_matches(c.image, '^[A-Za-z][A-Za-z0-9+.-]*://')"
    return f"""SELECT k.domain || ':' || k.item AS key, c.text, c.meta,
        CASE WHEN c.image = '' OR {url} THEN NULL WHEN starts_with(c.image, '/') THEN c.image
             ELSE {folder} || c.image END AS image_file,
        CASE WHEN {url} THEN {_image_folder(images, catalogue.per_domain).replace('domain', 'k.domain')} END AS image_dir,
        k.item AS image_id, {where('c.n')} || ': item ' || pyrepr(k.item) AS "where"
        FROM ({kept}) k JOIN catalogue c ON {_catalogue_match(catalogue, 'k')}"""


# ---------------------------------------------------------------------------------------------------- interactions
def _cells(engine: Engine, table: Table, needed: Sequence[str], time_format: str = "unix") -> tuple[str, str, Any]:
    """Register the table's rows in the engine; returns (source view, the condition of a row with the right
    shape, per-column SQL of (id text, seconds in ``time_format``, raw text)) and reports malformed rows."""
    if table.format == "parquet":
        _pyarrow_parquet(table.path)  # the same one-line error without pyarrow as for any Parquet table
        types = engine.read_parquet("rows", table.path, needed)

        def cell(column: str) -> tuple[str, Any]:
            seconds, raw = typed_seconds(column, types[column])
            if not types[column].startswith("TIMESTAMP"):  # a typed timestamp is one, whatever the format says
                seconds = formatted_seconds(seconds, raw, time_format)
            return typed_id(column, types[column]), (seconds, raw)
        return "rows", "true", cell
    engine.read_lines("lines", table.path)
    if table.format == "jsonl":
        engine.execute("""CREATE OR REPLACE VIEW rows AS SELECT n, line, json_valid(line) AS valid,
                          CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE false END AS object FROM lines
                          WHERE line IS NOT NULL AND trim(line, ' \t\r\n') <> ''""")

        def cell(column: str) -> tuple[str, Any]:
            seconds, raw = json_seconds("line", column)
            return json_id("line", column), (formatted_seconds(seconds, raw, time_format), raw)
        return "rows", "object", cell
    engine.execute(f"CREATE OR REPLACE VIEW rows AS {table.fields_sql('lines')}")
    position = {c: i + 1 for i, c in enumerate(table.columns)}

    def cell(column: str) -> tuple[str, Any]:
        value = f"f[{position[column]}]"
        return text_id(value), (formatted_seconds(text_seconds(value), value, time_format), value)
    # A line with an unbalanced quote is no row: read alone, the second line of a value spanning lines
    # (`x",i0,1600000000` after `"u0`) gave a row of a user the table does not have.
    return "rows", f"len(f) = {len(table.columns)} AND NOT open_quote", cell


UNBALANCED = "an unbalanced quote (a quoted value cannot span lines in an interaction table)"
_PATHLIKE = "(contains({v}, '/') OR contains({v}, '\\') OR {v} IN ('.', '..') OR contains({v}, chr(0)))"


def _shape_columns(table: Table) -> list[str]:
    """The columns the shape problem reads, carried to the outer query."""
    return {"jsonl": ["valid,"], "parquet": []}.get(table.format, ["f, open_quote,"])


@dataclass
class Events:
    """The usable interactions of one table, in the engine (view ``events``: domain, user, item, t; keys
    domain-qualified), and per domain the rows dropped with their item."""

    domains: list[str]
    unknown_item: dict[str, int]
    without_item_text: dict[str, int]


# The rows check_time_sample reads before the engine reads the whole table: a wrong --time-format shows there.
TIME_SAMPLE_ROWS = 1000


def seconds_as(value: Any, time_format: str) -> int:
    """Unix seconds of one timestamp cell in ``time_format`` (engine.formatted_seconds' rules, for a sample);
    a typed datetime is one whatever the format."""
    if time_format == "unix" or isinstance(value, datetime):
        return _seconds(value)
    if value in (None, ""):
        raise InvalidRecord("bad_timestamps", "empty timestamp")
    problem = f"timestamp {value!r} is not {TIME_FORMATS[time_format]}"
    if time_format == "unix_ms":
        try:
            ms = _integer(value)
        except InvalidRecord:
            raise InvalidRecord("bad_timestamps", problem) from None
        seconds = _seconds(ms // 1000 if ms >= 0 else -1)
        if seconds < MS_FIRST_SECOND:
            raise InvalidRecord("bad_timestamps", f"timestamp {value!r}{MS_EARLY}")
        return seconds
    parsed = None
    if isinstance(value, str) and not _looks_numeric(value):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    if parsed is None:
        raise InvalidRecord("bad_timestamps", problem)
    return _seconds(parsed)


def _looks_numeric(value: Any) -> bool:
    try:
        _integer(value)
        return True
    except InvalidRecord:
        return False


def time_hint(value: Any, time_format: str) -> Optional[str]:
    """What a timestamp that is not ``time_format`` looks like, as the option that reads it; None: no idea."""
    if isinstance(value, datetime):
        return None
    if _looks_numeric(value):
        n = _integer(value)
        if MAX_TIMESTAMP < n <= MAX_TIMESTAMP * 1000:
            return None if time_format == "unix_ms" else "looks like milliseconds: use --time-format unix_ms"
        if MAX_TIMESTAMP * 1000 < n <= MAX_TIMESTAMP * 10**6:
            return "looks like microseconds: convert the column to seconds or milliseconds first"
        if MAX_TIMESTAMP * 10**6 < n <= MAX_TIMESTAMP * 10**9:
            return "looks like nanoseconds: convert the column to seconds or milliseconds first"
        if 0 <= n <= MAX_TIMESTAMP and time_format != "unix":
            return "looks like Unix seconds: use --time-format unix"
        return None
    if time_format != "iso8601" and isinstance(value, str):
        try:
            datetime.fromisoformat(value.strip())
            return "looks like ISO-8601: use --time-format iso8601"
        except ValueError:
            return None
    return None


def check_time_sample(table: Table, column: str, time_format: str, strict: bool = False,
                      rows: int = TIME_SAMPLE_ROWS) -> None:
    """Read the first ``rows`` timestamps before the whole table and judge them (``judge_time_sample``): a wrong
    unit fails here, not after a full read that skipped every row."""
    if time_format not in TIME_FORMATS:
        raise DataError(f"--time-format {time_format!r}: expected one of {', '.join(TIME_FORMATS)}")
    sample = table.rows(BadRecords(False, examples=0), [column])
    try:
        judge_time_sample(((table.where(n), row.get(column)) for n, row in sample), time_format, table.path,
                          strict, rows)
    finally:
        sample.close()


def judge_time_sample(cells: Iterable[tuple[str, Any]], time_format: str, source: Any, strict: bool = False,
                      rows: int = TIME_SAMPLE_ROWS) -> None:
    """The first ``rows`` (where, timestamp cell) of a table: when the first one that is not ``time_format`` looks
    like another format and half of them or more are not (with ``strict``: any one), a DataError naming it, with
    the hint (``looks like milliseconds: use --time-format unix_ms``). Other bad timestamps stay the reader's
    (counted skips, or strict errors). Milliseconds before 1973 are seconds read as milliseconds (bad timestamps
    with the hint ``looks like Unix seconds``). Shared by the single-machine converter and the Spark path
    (mmm4rec.data.spark)."""
    seen, bad, first, values = 0, 0, None, []
    for where, value in cells:
        seen += 1
        try:
            values.append(seconds_as(value, time_format))
        except InvalidRecord as e:
            bad += 1
            hint = time_hint(value, time_format)
            if first is None:
                first = (where, e.problem, hint)
            if strict and hint:
                break
        if seen >= rows:
            break
    if first is not None and first[2] and (bad * 2 >= seen or strict):
        where, problem, hint = first
        share = f" ({bad} of the first {seen} timestamps)" if bad > 1 else ""
        raise DataError(f"{where}: {problem}{share}" + (f"; {hint}" if hint else ""))


def read_events(engine: Engine, table: Table, columns: Columns, domain: Optional[str], catalogue: Catalogue,
                bad: BadRecords, time_format: str = "unix") -> Events:
    """Rows per domain: from the domain column, else all in ``domain``. Bad rows are reported in file order;
    timestamps are read as ``time_format`` (engine.TIME_FORMATS)."""
    needed = [(columns.user, "user column"), (columns.item, "item column"), (columns.time, "time column")]
    table.require(needed + ([(columns.domain, "domain column")] if columns.domain else []))
    check_time_sample(table, columns.time, time_format, bad.strict)
    source, shaped, cell = _cells(engine, table, [c for c, _ in needed] + ([columns.domain] if columns.domain else []),
                                  time_format)
    (user, _), (item, _), (_, (seconds, raw)) = cell(columns.user), cell(columns.item), cell(columns.time)
    domain_value = cell(columns.domain)[0] if columns.domain else quote(domain)
    # A domain names a folder of downloaded images too: nothing derived from data may choose a path outside it.
    domain_problem = (f"CASE WHEN contains(domain_v, ':') THEN 'domain ' || pyrepr(domain_v) || "
                      f"{quote(' contains ' + repr(':') + ' (keys are <domain>:<id>)')} "
                      f"WHEN {_PATHLIKE.format(v='domain_v')} THEN 'domain ' || pyrepr(domain_v) || "
                      f"' is not a plain name (no /, \\, . or ..: it names a folder of images)' END")
    shape_problem = {"jsonl": "CASE WHEN NOT valid THEN 'not JSON' ELSE 'not a JSON object' END",
                     "parquet": "NULL"}.get(table.format, f"CASE WHEN open_quote THEN {quote(UNBALANCED)} ELSE "
                                                          f"len(f) || {quote(' fields, the header has ')} || "
                                                          f"{len(table.columns or [])} END")
    usable = [usable_id(v) for v in ("user_v", "item_v")]
    usable.append(f"t_v BETWEEN {first_second(time_format)} AND {MAX_TIMESTAMP}")
    if columns.domain:
        usable.append(f"domain_v <> '' AND NOT starts_with(domain_v, {quote(LIST)}) AND NOT contains(domain_v, ':') "
                      f"AND NOT {_PATHLIKE.format(v='domain_v')}")
    problem = (f"coalesce({id_problem('user_v', columns.user)}, {id_problem('item_v', columns.item)}, "
               f"{seconds_problem('t_v', 't_raw', time_format)}"
               + (f", {id_problem('domain_v', columns.domain)}, {domain_problem})" if columns.domain else ")"))
    # The problem's text is built only for the rows that have one: CASE evaluates a branch for its rows alone.
    engine.query(f"""CREATE OR REPLACE TABLE ev_rows AS SELECT n, domain_v, user_v, item_v, t_v, problem,
        CASE WHEN problem IS NULL THEN NULL WHEN problem LIKE 'timestamp %' OR problem = 'empty timestamp'
             THEN 'bad_timestamps' ELSE 'bad_record' END AS reason
        FROM (SELECT *, CASE WHEN NOT shaped THEN {shape_problem} WHEN {' AND '.join(usable)} THEN NULL
                             ELSE {problem} END AS problem
              FROM (SELECT n, {shaped} AS shaped, {', '.join(_shape_columns(table))}
                           CASE WHEN {shaped} THEN {user} END AS user_v, CASE WHEN {shaped} THEN {item} END AS item_v,
                           CASE WHEN {shaped} THEN {seconds} END AS t_v, CASE WHEN {shaped} THEN {raw} END AS t_raw,
                           CASE WHEN {shaped} THEN {domain_value} END AS domain_v
                    FROM {source}))""", str(table.path))
    engine.execute("DROP VIEW rows")
    engine.drop_lines("lines")
    where = _where_sql(table)
    for_domain = "' for domain ' || pyrepr(e.domain_v)" if catalogue.per_domain else "''"
    engine.execute(f"""CREATE OR REPLACE TABLE ev_matched AS SELECT e.n, e.domain_v AS domain, e.user_v AS user,
        e.item_v AS item, CAST(e.t_v AS BIGINT) AS t, c.ok FROM ev_rows e LEFT JOIN catalogue c
        ON c.id = e.item_v {'AND c.domain = e.domain_v' if catalogue.per_domain else ''} WHERE e.problem IS NULL""")
    problems = Problems(bad)
    problems.add_query(engine, f"""
        SELECT n AS line, reason, {where('n')} || ': ' || problem AS message FROM ev_rows WHERE problem IS NOT NULL
        UNION ALL
        SELECT e.n, 'unknown_item', {where('e.n')} || ': item ' || pyrepr(e.item) || {quote(' is not in ' + str(catalogue.table.path))} || {for_domain.replace('e.domain_v', 'e.domain')}
        FROM ev_matched e WHERE e.ok IS NULL""")
    problems.flush()
    engine.execute("DROP TABLE ev_rows")
    found = engine.rows("SELECT domain, count(*) FILTER (WHERE ok IS NULL), count(*) FILTER (WHERE NOT ok), "
                        "count(*) FILTER (WHERE ok) FROM ev_matched GROUP BY domain ORDER BY domain")
    if not any(row[3] for row in found):
        raise DataError(f"{table.path}: no usable interaction rows (skipped: {bad.as_dict()})")
    engine.execute("CREATE OR REPLACE VIEW events AS SELECT domain, user, item, t FROM ev_matched WHERE ok")
    return Events([row[0] for row in found], {row[0]: row[1] for row in found}, {row[0]: row[2] for row in found})


# --------------------------------------------------------------------------------------------------------- convert
class _Unchanged:
    """The input files as they were before the first read (size, times, inode): a table is read several times
    (header, time sample, sha256, the engine's pass), and one rewritten in between (an export still running) was
    read with the old header's column positions and recorded under the old content's sha256."""

    def __init__(self, *paths: str | os.PathLike):
        self.seen = {Path(p): self._stat(Path(p)) for p in paths}

    @staticmethod
    def _stat(path: Path) -> Optional[tuple[int, ...]]:
        try:
            return file_version(path.stat())
        except OSError:  # a missing file is the table reader's error
            return None

    @contextmanager
    def check(self) -> Iterator[None]:
        """Around the reads: a changed file is the error, also where the reads failed because of it."""
        try:
            yield
        finally:
            for path, before in self.seen.items():
                if self._stat(path) != before:
                    raise DataError(f"{path}: changed while it was read (size or modification time differ from "
                                    "the start); convert it once it is complete") from None


def _source(path: Path, role: str) -> dict[str, Any]:
    return {"role": role, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def prepare(interactions: str | os.PathLike, items: str | os.PathLike, out_dir: str | os.PathLike, *,
            text_fields: Sequence[TextField], name: Optional[str] = None, columns: Columns = Columns(),
            images: Optional[str | os.PathLike] = None, download: bool = False, k: int = 5,
            shard_size: int = 1000, strict: bool = False, licence: str = LICENCE,
            scale: Scale = Scale(), time_format: str = "unix") -> Manifest:
    """Convert an interaction table and an item table into a dataset folder.

    ``name`` defaults to the interaction file's stem (the one domain) or, with a domain column, the domains
    joined by "+"; without a domain column it is every key's prefix (``<name>:<item id>``), logged.
    ``time_format``: what the time column holds (engine.TIME_FORMATS: unix seconds, unix_ms, iso8601).
    ``images``: the folder of downloaded URL images; ``download`` fills it first, for the items
    left after filtering only. ``scale``: partitions, workers and the engine's memory (mmm4rec.data.build); a
    rerun after an interruption redoes only what is unfinished.
    """
    if not text_fields:
        raise DataError("no text fields: name the item columns that form the item text")
    check_output(out_dir, [interactions, items, images])  # before reading the tables, not after
    seen = _Unchanged(interactions, items)
    inter_table, item_table = Table(interactions), Table(items)
    domain = None if columns.domain else (name or inter_table.path.name.split(".")[0])
    if domain is not None and (":" in domain or not domain or domain in (".", "..") or any(c in domain for c in "/\\\0")):
        raise DataError(f"dataset name {domain!r} is the domain of every key: it must be non-empty, without ':', "
                        "and a plain name (no /, \\, . or ..)")
    if time_format not in TIME_FORMATS:
        raise DataError(f"--time-format {time_format!r}: expected one of {', '.join(TIME_FORMATS)}")
    args = {"columns": asdict(columns), "text_fields": [asdict(f) for f in text_fields], "k_core": k,
            "shard_size": shard_size, "strict": strict, "images": images is not None, "download": download,
            **scale.args()}
    if time_format != "unix":  # only then: the identity of a build made before the option stays the same
        args["time_format"] = time_format
    if domain is not None:
        log.info("item keys: '%s:<item id>' (domain %r, %s)", domain, domain,
                 "--name" if name else f"from the file name {inter_table.path.name}; --name sets it")
    sources = [_source(inter_table.path, "interactions"), _source(item_table.path, "items")]
    image_folder = Path(images) if images is not None else None

    def step2(engine: Engine) -> Converted:
        bad = BadRecords(strict)
        phases = Phases()
        with seen.check():
            catalogue = read_items(engine, item_table, columns, text_fields, bad)
            phases.done(f"{item_table.path}: {catalogue.items:,} items read")
            events = read_events(engine, inter_table, columns, domain, catalogue, bad, time_format)
        phases.done(f"{inter_table.path}: read and checked")
        sequences = Sequences(engine, k)
        stats = sequences.build("SELECT * FROM events")
        engine.execute("DROP VIEW events")
        engine.execute("DROP TABLE ev_matched")
        filtering: dict[str, Any] = {}
        for d in events.domains:
            filtering[d] = {"rows_unknown_item": events.unknown_item[d],
                            "rows_without_item_text": events.without_item_text[d], **sequences.stats_of(stats, d)}
            log.info("%s: %s", d, filtering[d])
        provenance: dict[str, Any] = {
            "converter": "mmm4rec.data.tables",
            "args": args,
            "source_format": {"interactions": inter_table.format, "items": item_table.format},
            "sources": sources,
            "filtering": filtering,
            "feedback": "implicit: every row is an interaction",
        }
        kept = sequences.kept_items()
        if download:
            provenance["image_download"] = _download(engine, catalogue, image_folder, kept)
        provenance["images_with_file"] = 0  # the shard writers count them
        provenance["skipped"] = bad.as_dict()
        return Converted(name or domain or "+".join(events.domains), licence, provenance, shard_size, sequences,
                         _items_sql(catalogue, kept, image_folder))

    identity = {"converter": "mmm4rec.data.tables", "args": args, "sources": sources, "name": name,
                "licence": licence, "image_folder": str(image_folder)}
    return convert(out_dir, identity, scale, step2)


def prepare_items_for(build_dir: str | os.PathLike, items: str | os.PathLike, out_dir: str | os.PathLike, *,
                      text_fields: Sequence[TextField], name: str, columns: Columns = Columns(),
                      images: Optional[str | os.PathLike] = None, shard_size: int = 1000, strict: bool = False,
                      licence: str = LICENCE, scale: Scale = Scale()) -> Optional[Manifest]:
    """The rest of step 2 for sequences another engine wrote into ``build_dir`` (``seqs/part=<p>/`` and
    ``spark_stats.json``, tools/spark_sequences.py): the item partitions of the items the sequences name, read
    from the item table as ``prepare`` reads it, and ``convert.json``; then steps 3-4 into ``out_dir`` (unless
    ``scale.defer_shards``). An item the sequences name without a usable row in the item table is an error: the
    events must be joined with the item table before the k-core filtering."""
    if not text_fields:
        raise DataError("no text fields: name the item columns that form the item text")
    build = Build(Path(build_dir), Path(out_dir))
    try:
        spark = json.loads((build.path / "spark_stats.json").read_text())
        parts = int(spark["partitions"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{build.path}: no readable spark_stats.json with the partition count ({e})") from None
    check_output(out_dir, [items, images])
    seen = _Unchanged(items)
    item_table = Table(items)
    image_folder = Path(images) if images is not None else None
    build.lock()
    try:
        with build.engine(scale.memory_limit, scale.threads) as engine:
            bad = BadRecords(strict)
            with seen.check():
                catalogue = read_items(engine, item_table, columns, text_fields, bad)
            engine.execute(f"""CREATE OR REPLACE TABLE kept AS SELECT DISTINCT domain,
                substr(item, length(domain) + 2) AS item FROM read_parquet({quote(str(build.path / 'seqs'))} ||
                '/part=*/*.parquet')""")
            missing = engine.rows(f"SELECT domain || ':' || item FROM kept k WHERE NOT EXISTS (SELECT 1 FROM catalogue c "
                                  f"WHERE c.ok AND {_catalogue_match(catalogue, 'k')}) ORDER BY 1 LIMIT 1")
            if missing:
                raise DataError(f"{build.path}: the sequences name item {missing[0][0]!r}, which has no usable row in "
                                f"{item_table.path} (join the events with the item table before the k-core)")
            write_item_partitions(engine, build.path, _items_sql(catalogue, "SELECT * FROM kept", image_folder),
                                  parts)
        provenance = {"converter": "mmm4rec.data.spark", "args": {"k_core": spark.get("k"), "partitions": parts,
                                                                 "text_fields": [asdict(f) for f in text_fields]},
                      "source": spark.get("source"), "filtering": spark.get("domains", {}),
                      "sources": [_source(item_table.path, "items")], "images_with_file": 0,
                      "skipped": {**spark.get("skipped", {}), **bad.as_dict()},
                      "feedback": "implicit: every row is an interaction"}
        build.finish_conversion(name=name, licence=licence, provenance=provenance, shard_size=shard_size,
                                partitions={"items": parts, "seqs": parts})
        return finish(build, scale)
    finally:
        build.unlock()


def prepare_recbole(prefix: str | os.PathLike, out_dir: str | os.PathLike, *, columns: Columns = RECBOLE_COLUMNS,
                    name: Optional[str] = None, **kwargs: Any) -> Manifest:
    """RecBole atomic files ``<prefix>.inter`` and ``<prefix>.item``; the dataset is named after the prefix."""
    prefix = Path(prefix)
    return prepare(prefix.with_name(prefix.name + ".inter"), prefix.with_name(prefix.name + ".item"), out_dir,
                   columns=columns, name=name or (None if columns.domain else prefix.name), **kwargs)
