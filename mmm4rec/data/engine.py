"""The columnar engine under every converter: DuckDB, in process, out of core.

Interaction logs have 10⁸–10⁹ rows, so no converter holds a Python object per event. Tables are read, validated,
de-duplicated, k-core filtered and ordered by DuckDB; Python only sees the rows it reports as bad and, when the
shards are written, one user at a time.

Why DuckDB: it reads CSV, JSON lines and Parquet (plain or gzipped) itself, runs out of core under a memory limit
with a named spill folder (``SET memory_limit``, ``temp_directory``), and keeps the physical line of every row.
That last one decided it against Polars and pyarrow's CSV readers, which report a malformed row without its line:
the bad-row policy (``BadRecords``) names the file and line of each skipped row, and a fast reader that loses it
is not a replacement. Polars and pyarrow were not benchmarked side by side; what DuckDB does here is measured
against the old converter in docs/results/data_scale.json.

How lines are kept: a text table is read as one VARCHAR column per physical line (no quoting, no delimiter), so
DuckDB's row id is the line number minus one — blank lines included — and the fields are split in SQL. A quoted
CSV field is parsed by a regular expression where the line holds a quote, by a plain split elsewhere. A quoted
value cannot span lines in an interaction table: a stray quote costs its own row, never the rest of the file
(Python's csv module swallowed every following line into one field).

Cells become values by the rules the converters have always had (``tables._id`` / ``tables._seconds``), written
here once as SQL: ids are trimmed text (an integral float is an integer, lists are refused); a timestamp is an
integer, an integral float or the text of either, between 1970 and the year 9999.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .schema import MAX_TIMESTAMP, BadRecords, DataError

log = logging.getLogger(__name__)

# What Python's str.strip() removes (str.isspace), as an RE2 class: ids are trimmed exactly as the converters
# trimmed them in Python. A regular expression, because DuckDB's trim() with a character set was the slower of
# the two on 10^7 ids (no result file: a one-off comparison while writing this).
WHITESPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
# The longest line a table may hold. DuckDB's reader buffers 16 lines of this size per thread: 64 MB lines cost
# a 1 GB block per thread and ran out of memory at 10^8 events under a 2 GB limit.
MAX_LINE_BYTES = 4 << 20
CSV_FIELD = r'(?:^|{d})("(?:[^"]|"")*"|[^{d}]*)'  # a quoted field ("" is a quote) or an unquoted one


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def default_memory_limit() -> str:
    """Half the machine's memory, at most 4 GB: the engine spills beyond it, so the conversion's peak RSS does
    not grow with the data (docs/results/data_scale.json)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return f"{min(total // 2, 4 << 30) >> 20}MB"


class Engine:
    """One DuckDB connection with a memory limit, spilling into ``work/spill`` (removed on close)."""

    def __init__(self, work: Path, memory_limit: Optional[str] = None, threads: Optional[int] = None):
        import duckdb  # imported here: reading a dataset never needs it

        self.duckdb = duckdb
        self.work = Path(work)
        self.spill = self.work / "spill"
        self.spill.mkdir(parents=True, exist_ok=True)
        # An in-memory database: its tables spill to temp_directory beyond the limit like any operator's data,
        # and avoids a database file, which writes every table out compressed (slower in a one-off comparison at
        # 10^7 events; no result file).
        self.con = duckdb.connect(":memory:")
        self.memory_limit = memory_limit or default_memory_limit()
        self.execute(f"SET memory_limit = {quote(self.memory_limit)}")
        self.execute(f"SET temp_directory = {quote(str(self.spill))}")
        # Insertion order is kept only where it carries the line numbers (read_lines): elsewhere it costs memory.
        self.execute("SET preserve_insertion_order = false")
        # ISO-8601 text without an offset is UTC (as naive Parquet timestamps are), whatever the machine's zone.
        self.execute("SET TimeZone = 'UTC'")
        if threads:
            self.execute(f"SET threads = {int(threads)}")
        # Python's repr of a str, for messages: quotes chosen as Python does (other escapes left out)
        self.execute(r"""CREATE OR REPLACE MACRO pyrepr(s) AS
            CASE WHEN contains(s, '''') AND NOT contains(s, '"') THEN '"' || s || '"'
                 ELSE '''' || replace(replace(s, '\', '\\'), '''', '\''') || '''' END""")

    def execute(self, sql: str, params: Optional[Sequence[Any]] = None) -> Any:
        started = time.perf_counter()
        try:
            result = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        except self.duckdb.OutOfMemoryException as e:
            # Most operators spill; a few (joins of long strings feeding a sort) still need room in memory.
            raise DataError(f"the conversion's engine ran out of memory under its limit ({self.memory_limit}): "
                            f"{_first_line(e)}; raise --memory-limit (measured: 10^8 events need 3GB, "
                            "docs/results/data_scale.json)") from None
        log.debug("%.2f s: %s", time.perf_counter() - started, " ".join(sql.split())[:160])
        return result

    def rows(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def value(self, sql: str) -> Any:
        return self.con.execute(sql).fetchall()[0][0]  # whole: DuckDB 2 refuses new work while a result is open

    def table_from_arrow(self, name: str, table: Any) -> None:
        """Table ``name`` holding an Arrow table's rows."""
        self.con.register("_arrow_in", table)
        self.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _arrow_in")
        self.con.unregister("_arrow_in")

    def append(self, name: str, table: Any) -> None:
        """Append an Arrow table's rows to table ``name`` (same columns)."""
        self.con.register("_arrow_in", table)
        self.execute(f"INSERT INTO {name} SELECT * FROM _arrow_in")
        self.con.unregister("_arrow_in")

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill, ignore_errors=True)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- reading
    def read_lines(self, name: str, path: Path, encoding: str = "utf-8") -> None:
        """Table ``name``: (n, line) for every physical line of a text file (gzipped or not); n from 1; a blank
        line is NULL. An unreadable or undecodable file is one DataError naming it."""
        source = (f"read_csv({quote(str(path))}, columns={{'line': 'VARCHAR'}}, delim='\\0', quote='', escape='', "
                  f"header=false, auto_detect=false, strict_mode=false, max_line_size={MAX_LINE_BYTES}, "
                  f"encoding={quote(encoding)})")
        try:
            self.execute("SET preserve_insertion_order = true")  # row ids follow the file: line numbers
            self.execute(f"CREATE OR REPLACE TABLE {name}_raw AS SELECT line FROM {source}")
        except self.duckdb.Error as e:
            too_long = re.search(r"CSV Error on Line: (\d+)", str(e)) if "Maximum line size" in str(e) else None
            if too_long:
                raise DataError(f"{path}:{too_long[1]}: a line larger than {MAX_LINE_BYTES >> 20} MiB, the longest "
                                "a table may hold") from None
            raise DataError(f"{path}: cannot read: {_first_line(e)}") from None
        finally:
            self.execute("SET preserve_insertion_order = false")
        self.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT rowid + 1 AS n, line FROM {name}_raw")

    def read_parquet(self, name: str, path: Path, columns: Sequence[str]) -> dict[str, str]:
        """View ``name``: (n, the columns) of a Parquet file, n the row from 1; returns each column's type.
        BINARY columns are read as UTF-8 text (writers that leave out the string annotation); read as bytes, a
        non-ASCII id became escapes (`Caf\\xC3\\xA9`) that no item table names. Invalid UTF-8 is a read error."""
        source = f"read_parquet({quote(str(path))}, file_row_number=true, binary_as_string=true)"
        try:
            types = {row[0]: row[1] for row in self.rows(f"DESCRIBE SELECT * FROM {source}")}
        except self.duckdb.Error as e:
            raise DataError(f"{path}: cannot read: {_first_line(e)}") from None
        picked = ", ".join(ident(c) for c in dict.fromkeys(columns))
        self.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT file_row_number + 1 AS n, {picked} FROM {source}")
        return types

    def drop_lines(self, name: str) -> None:
        """Free a ``read_lines`` table (a copy of the whole file, spilled to disk when it is large)."""
        self.execute(f"DROP VIEW IF EXISTS {name}")
        self.execute(f"DROP TABLE IF EXISTS {name}_raw")

    def query(self, sql: str, what: str) -> Any:
        """Run ``sql``; a read or conversion failure (bad UTF-8 in a gzipped file, say) is a DataError."""
        try:
            return self.execute(sql)
        except self.duckdb.Error as e:
            raise DataError(f"{what}: cannot read: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# ------------------------------------------------------------------------------------------------------- fields
def csv_fields(line: str, delimiter: str) -> str:
    """SQL: the fields of a CSV/TSV line as a list, as Python's csv module splits a one-line row."""
    d = re.escape(delimiter) if delimiter != "\t" else "\\t"
    regex = quote(CSV_FIELD.format(d=d))
    unquote = ("lambda f: CASE WHEN len(f) >= 2 AND f[1] = '\"' AND f[-1:] = '\"' "
               "THEN replace(f[2:-2], '\"\"', '\"') ELSE f END")
    return (f"CASE WHEN contains({line}, '\"') THEN list_transform(regexp_extract_all({line}, {regex}, 1), {unquote}) "
            f"ELSE string_split({line}, {quote(delimiter)}) END")


def trimmed(text: str) -> str:
    return f"regexp_replace({text}, {quote(f'^{WHITESPACE}+|{WHITESPACE}+$')}, '', 'g')"


# A cell as id text, by its type (tables._id / tables._scalar): NULL for "no value", a marker for a list.
LIST = "\0list"


def text_id(cell: str) -> str:
    return f"coalesce({trimmed(cell)}, '')"


def _float_text(x: str) -> str:
    """tables._scalar of a float: '' when not finite, the integer when integral, else its repr."""
    return (f"CASE WHEN NOT isfinite({x}) THEN '' WHEN {x} = trunc({x}) THEN CAST(CAST({x} AS HUGEINT) AS VARCHAR) "
            f"ELSE CAST({x} AS VARCHAR) END")


def json_id(obj: str, key: str) -> str:
    """SQL: the id text of ``obj``'s ``key`` (a JSON object in text)."""
    path = quote("$." + '"' + key.replace('"', '\\"') + '"')
    j = f"json_extract({obj}, {path})"
    return (f"CASE json_type({j}) WHEN 'VARCHAR' THEN {trimmed(f'{obj} ->> {path}')} "
            f"WHEN 'DOUBLE' THEN {_float_text(f'CAST({j} AS DOUBLE)')} "
            f"WHEN 'BOOLEAN' THEN CASE WHEN CAST({j} AS BOOLEAN) THEN 'True' ELSE 'False' END "
            f"WHEN 'ARRAY' THEN {quote(LIST + ':list')} WHEN 'OBJECT' THEN {quote(LIST + ':dict')} "
            f"WHEN 'NULL' THEN '' WHEN NULL THEN '' ELSE coalesce(CAST({j} AS VARCHAR), '') END")


def typed_id(column: str, kind: str) -> str:
    """SQL: the id text of a typed (Parquet) column."""
    c = ident(column)
    if kind.endswith("[]") or kind.startswith(("STRUCT", "MAP")):
        return f"CASE WHEN {c} IS NULL THEN '' ELSE {quote(LIST + ':' + ('list' if kind.endswith('[]') else 'dict'))} END"
    if kind in ("FLOAT", "DOUBLE"):
        return f"coalesce({_float_text(f'CAST({c} AS DOUBLE)')}, '')"
    if kind == "BOOLEAN":
        return f"CASE WHEN {c} IS NULL THEN '' WHEN {c} THEN 'True' ELSE 'False' END"
    return f"coalesce({trimmed(f'CAST({c} AS VARCHAR)')}, '')"


def id_problem(value: str, column: str) -> str:
    """SQL: the problem of an id value (from one of the functions above), NULL when it is usable (``usable_id``).
    A NUL inside a key is refused here, at its line: the shards' key checks (schema.check_seq) refuse it, and
    met there it failed the whole conversion after every table was read."""
    return (f"CASE WHEN {value} = '' THEN {quote('no ' + column)} "
            f"WHEN starts_with({value}, {quote(LIST)}) THEN {quote(column + ' holds a ')} || "
            f"split_part({value}, ':', 2) || ', not an id' "
            f"WHEN contains({value}, chr(0)) THEN {quote(column + ' ')} || replace(pyrepr({value}), chr(0), '\\x00') "
            f"|| ' holds a NUL character' END")


def usable_id(value: str) -> str:
    """SQL: true where ``id_problem`` finds none."""
    return f"({value} <> '' AND NOT starts_with({value}, {quote(LIST)}) AND NOT contains({value}, chr(0)))"


# Timestamps: the HUGEINT value, or NULL with a problem (tables._integer and tables._seconds).
def text_seconds(cell: str) -> str:
    """SQL: HUGEINT seconds of a text cell: integer text exactly, else an integral float's text. Text without
    '.', 'e' or 'E' is read as an integer (DuckDB, like Python's int(), allows spaces, a sign and '_'); with
    one, as a float that must be integral (DuckDB's integer cast would round '1.5')."""
    d = f"TRY_CAST({cell} AS DOUBLE)"
    return (f"CASE WHEN NOT (contains({cell}, '.') OR contains({cell}, 'e') OR contains({cell}, 'E')) "
            f"THEN TRY_CAST({cell} AS HUGEINT) WHEN isfinite({d}) AND {d} = trunc({d}) THEN TRY_CAST({d} AS HUGEINT) END")


def json_seconds(obj: str, key: str) -> tuple[str, str]:
    """SQL: (HUGEINT seconds, the raw value as text for messages) of ``obj``'s ``key``."""
    path = quote("$." + '"' + key.replace('"', '\\"') + '"')
    j = f"json_extract({obj}, {path})"
    kind = f"json_type({j})"
    value = (f"CASE {kind} WHEN 'VARCHAR' THEN {text_seconds(f'({obj} ->> {path})')} "
             f"WHEN 'DOUBLE' THEN {text_seconds(f'CAST({j} AS VARCHAR)')} "
             f"WHEN 'BIGINT' THEN TRY_CAST(CAST({j} AS VARCHAR) AS HUGEINT) "
             f"WHEN 'UBIGINT' THEN TRY_CAST(CAST({j} AS VARCHAR) AS HUGEINT) END")
    raw = f"CASE WHEN {kind} IS NULL OR {kind} = 'NULL' THEN NULL ELSE coalesce({obj} ->> {path}, CAST({j} AS VARCHAR)) END"
    return value, raw


def typed_seconds(column: str, kind: str) -> tuple[str, str]:
    """SQL: (HUGEINT seconds, raw text) of a typed column; a timestamp counts from 1970 UTC (naive = UTC),
    fractions cut off."""
    c = ident(column)
    raw = f"CAST({c} AS VARCHAR)"
    if kind.startswith("TIMESTAMP"):
        return f"CAST(floor(epoch({c})) AS HUGEINT)", raw
    if kind in ("FLOAT", "DOUBLE"):
        return (f"CASE WHEN isfinite(CAST({c} AS DOUBLE)) AND {c} = trunc({c}) THEN CAST({c} AS HUGEINT) END",
                raw)
    if kind in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                "UBIGINT"):
        return f"CAST({c} AS HUGEINT)", raw
    if kind.startswith("DECIMAL"):  # how Spark, Hive and databases export integers: integral values only
        return f"CASE WHEN {c} = trunc({c}) THEN CAST({c} AS HUGEINT) END", raw
    if kind == "VARCHAR":
        return text_seconds(c), raw
    return "NULL::HUGEINT", raw  # dates, lists, booleans: not Unix seconds


# --time-format: what a timestamp cell holds. A stated unit, never guessed (tables.check_time_sample hints).
TIME_FORMATS = {"unix": "integer Unix seconds", "unix_ms": "integer Unix milliseconds",
                "iso8601": "an ISO-8601 date-time"}


def formatted_seconds(seconds: str, raw: str, time_format: str) -> str:
    """SQL: HUGEINT Unix seconds of a cell in ``time_format``, from its ``seconds`` SQL (the cell read as a number
    by the rules above) and its ``raw`` text. Milliseconds are floored to seconds; an ISO-8601 text without an
    offset is UTC, fractions cut off."""
    if time_format == "unix":
        return seconds
    if time_format == "unix_ms":
        return f"CASE WHEN ({seconds}) < 0 THEN -1 ELSE ({seconds}) // 1000 END"
    if time_format == "iso8601":
        return f"CAST(floor(epoch(TRY_CAST({raw} AS TIMESTAMPTZ))) AS HUGEINT)"
    raise ValueError(f"time format {time_format!r}: expected one of {', '.join(TIME_FORMATS)}")


# Unix milliseconds before this many seconds (1973-03-03) are seconds read as milliseconds: seconds mixed into a
# column of milliseconds became events of January 1970, first in every history, silently.
MS_FIRST_SECOND = 100_000_000
MS_EARLY = " read as milliseconds falls before 1973-03-04"


def first_second(time_format: str) -> int:
    """The earliest usable timestamp in ``time_format``, in seconds."""
    return MS_FIRST_SECOND if time_format == "unix_ms" else 0


def seconds_problem(seconds: str, raw: str, time_format: str = "unix") -> str:
    """SQL: the problem of a timestamp, NULL when it is usable (``raw`` NULL or '' is an empty timestamp)."""
    shown = f"'''' || {raw} || ''''"
    early = (f"WHEN {seconds} < {MS_FIRST_SECOND} THEN 'timestamp ' || {shown} || {quote(MS_EARLY)} "
             if time_format == "unix_ms" else "")
    return (f"CASE WHEN {raw} IS NULL OR {raw} = '' THEN 'empty timestamp' "
            f"WHEN {seconds} IS NULL THEN 'timestamp ' || {shown} || ' is not {TIME_FORMATS[time_format]}' "
            f"WHEN {seconds} < 0 OR {seconds} > {MAX_TIMESTAMP} THEN 'timestamp ' || {shown} || "
            f"' is not between 1970 and the year 9999' {early}END")


# ----------------------------------------------------------------------------------------------------- problems
@dataclass
class Problems:
    """Bad rows found by the engine, reported through ``BadRecords`` as if met one by one in file order: under
    strict the earliest raises; otherwise each reason is counted and its first few messages logged."""

    bad: BadRecords
    found: dict[str, tuple[int, list[tuple[int, str]]]] = field(default_factory=dict)  # reason -> (count, examples)

    def add(self, reason: str, count: int, examples: Sequence[tuple[int, str]]) -> None:
        """``examples``: (line, message) of the first rows of this reason, in line order."""
        if not count:
            return
        n, seen = self.found.get(reason, (0, []))
        self.found[reason] = (n + count, sorted([*seen, *examples])[: max(self.bad.examples, 1)])

    def add_query(self, engine: Engine, sql: str) -> None:
        """Rows (line, reason, message) of ``sql``: counted per reason, the first few kept as examples."""
        limit = max(self.bad.examples, 1)
        ranked = (f"SELECT line, reason, message, count(*) OVER (PARTITION BY reason) AS total, "
                  f"row_number() OVER (PARTITION BY reason ORDER BY line) AS r FROM ({sql})")
        rows = engine.rows(f"SELECT line, reason, message, total FROM ({ranked}) WHERE r <= {limit} ORDER BY line")
        per_reason: dict[str, tuple[int, list[tuple[int, str]]]] = {}
        for line, reason, message, total in rows:
            per_reason.setdefault(reason, (total, []))[1].append((line, message))
        for reason, (total, examples) in per_reason.items():
            self.add(reason, total, examples)

    def flush(self) -> None:
        """Hand everything found to ``bad`` (raising the earliest under strict) and start over."""
        found, self.found = self.found, {}
        if self.bad.strict and found:
            _, message, reason = min((ex[0][0], ex[0][1], r) for r, (_, ex) in found.items() if ex)
            self.bad.report(reason, message)
        for reason, (count, examples) in sorted(found.items()):
            self.bad.report_counted(reason, count, [message for _, message in examples])


def iter_batches(engine: Engine, sql: str, rows: int = 1 << 16) -> Iterator[Any]:
    """Arrow record batches of a query, streamed (bounded memory)."""
    reader = engine.con.sql(sql).to_arrow_reader(rows)
    yield from reader
