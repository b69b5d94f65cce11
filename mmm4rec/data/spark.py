"""Step 2 of a build (events -> k-core user sequences -> ``seqs/part=<p>/``) on a Spark cluster.

For interaction logs that live in Spark or Hive (10⁹+ events): the same rules as ``build.Sequences`` (the DuckDB
path) and ``interactions.build_sequences`` (the in-memory reference), written as the build contract's sequence
partitions (mmm4rec.data.build, docs/data_format.md) for the project's shard writer (``build.write_shards``):

    BUILD/seqs/part=<p>/part-<task>-<uuid>.c000.snappy.parquet   user, domain, item, timestamp (int64)

exactly one Parquet file per partition folder, its rows sorted by (user, timestamp, item) in byte order of UTF-8
(Spark's string order), p = partition(user) = the first 32 bits of md5(UTF-8 key) modulo P, computed by Spark as
``conv(substring(md5(user), 1, 8), 16, 10)``. A partition without users gets an empty folder where the build
folder is local (an absent folder reads as empty anyway). Spark also leaves ``seqs/_SUCCESS`` and, on a local
file system, hidden ``.crc`` files: the shard writer reads ``*.parquet`` only.

- ``spark_sequences``: events (domain, user id, item id, t int64 seconds: ``build.Sequences``' input; the keys
  are qualified here, ``<domain>:<id>``) -> the partitions, and per domain ``build.Sequences.build``'s
  statistics: ``spark_kcore`` (keys dictionary-encoded, de-duplication and k-core in DataFrame operations,
  materialised round by round) then ``write_sequences``.
- ``read_events`` / ``clean_events``: the usual inputs (a Parquet, CSV or TSV table, or any DataFrame such as a
  Hive table, with columns user, item, timestamp and optionally domain) as such events, with the rows dropped
  counted by reason (``bad_record``, ``bad_timestamps``), by the cell rules of the single-machine converter
  (mmm4rec.data.tables).

What this path leaves out: the item side of a build (``items/part=<p>/``, from the converter's catalogue; the
items kept after filtering are the distinct ``item`` values of the sequences) and ``convert.json``; the file and
line of each bad row (the single-machine path reports them; Spark reads files in parallel splits and only counts
them per reason); dropping events of items missing from an item table (``unknown_item``): join the events with
the catalogue first. tools/spark_sequences.py is the command line, to run with spark-submit.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from .engine import TIME_FORMATS, first_second
from .schema import MAX_TIMESTAMP, DataError
from .tables import TIME_SAMPLE_ROWS, judge_time_sample

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("domain", "user", "item", "t")
# What Python's str.strip() removes: ids are trimmed exactly as the converters trim them
WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
BROADCAST_KEYS = 1_000_000  # a table of keys up to this many rows is broadcast to its join, else shuffled
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
_INTEGER_TEXT = r"^[+-]?[0-9]+(_[0-9]+)*$"  # what Python's int() reads (ASCII digits)
# ISO-8601 as Python's datetime.fromisoformat and DuckDB both read it: a date, optionally a time ('T' or ' '),
# optionally an offset (Z or ±hh[:mm]); Spark's own cast also reads forms the converter refuses (a bare year)
_ISO_TIME = r"[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
_ISO_OFFSET = r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)"
_ISO_TEXT = rf"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}({_ISO_TIME}{_ISO_OFFSET}?)?$"
_FLOAT_TEXT = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # float text, without Java's 1d or 0x1p3


def partition_column(column: str, parts: int) -> Any:
    """``build.partition`` of a string column as a Spark column: md5's first 32 bits, unsigned, modulo ``parts``."""
    from pyspark.sql import functions as F

    return F.conv(F.substring(F.md5(F.col(column)), 1, 8), 16, 10).cast("long") % F.lit(int(parts))


# ------------------------------------------------------------------------------------------------------ sequences
@dataclass
class KCore:
    """The result of ``spark_kcore``, materialised: the kept events as integers (did, uid, iid, t), the
    dictionaries ``users`` (domain, id, key, uid) and ``items`` (domain, id, key, iid) of every key before
    filtering (``n_users``, ``n_items`` rows), numbered in key order, the domains (``domains[did]``), and per
    domain the statistics of ``build.Sequences.build``. ``release()`` frees the executors' copies once the
    sequences are written."""

    events: Any
    users: Any
    items: Any
    n_users: int
    n_items: int
    domains: list[str]
    stats: dict[str, dict[str, int]]
    rounds: int
    broadcast_keys: int
    _keep: "_Materialised"

    def release(self) -> None:
        self._keep.release(self.events, self.users, self.items)


def spark_sequences(spark: Any, events: Any, build_dir: str | os.PathLike, k: int = 5, parts: int = 1, *,
                    checkpoint: Optional[str] = None,
                    broadcast_keys: int = BROADCAST_KEYS) -> dict[str, dict[str, int]]:
    """Events -> k-core user sequences written as ``build_dir/seqs/part=<p>/`` (replacing a ``seqs`` folder
    there, ``parts`` partitions); returns per domain the statistics of ``build.Sequences.build``: rows,
    duplicate_rows, rows_after_<k>core, <k>core_rounds, users, items. ``spark_kcore`` then
    ``write_sequences``; the arguments are theirs."""
    if type(parts) is not int or parts < 1:
        raise DataError(f"parts must be a positive integer, got {parts!r}")
    core = spark_kcore(spark, events, k, checkpoint=checkpoint, broadcast_keys=broadcast_keys)
    started = time.perf_counter()
    try:
        written = write_sequences(spark, core, build_dir, parts)
    finally:
        core.release()
    log.info("spark sequences: %d partitions written to %s (%.1f s)", parts, written, time.perf_counter() - started)
    return core.stats


def spark_kcore(spark: Any, events: Any, k: int = 5, *, checkpoint: Optional[str] = None,
                broadcast_keys: int = BROADCAST_KEYS) -> KCore:
    """Exact duplicates dropped, then k-core to a fixed point, with the rules and statistics of
    ``build.Sequences.build`` (and ``interactions.build_sequences``, domain by domain).

    ``events``: a DataFrame with columns domain, user, item (strings: the ids as the source names them) and t
    (integer seconds), one row per usable event, as ``build.Sequences.build`` takes them; no nulls. Keys are
    the contract's, ``<domain>:<id>``, so domains are filtered independently.

    As in ``build.Sequences``, the keys are dictionary-encoded first: the distinct (domain, id) of users and of
    items (one pass over the events) are sorted by key and numbered in that order (``monotonically_increasing_id``
    over the sorted keys: comparing numbers compares keys), so that the de-duplication, the rounds and the final
    sort shuffle and compare integers, not strings; the keys come back when the partitions are written. Exact
    duplicates (same user, item, t) are dropped; then each round drops, at once, every row whose user or item has
    fewer than ``k`` rows at the round's start, until a round drops nothing. A domain's rounds count up to and
    including the first round that drops none of its rows. A round counts the rows of every user and of every item
    (one aggregation, a row per key), from which come the per-domain counts, the keys to drop and, after the last
    round, the users and items; the kept rows are an anti-join with the dropped keys, materialised before the next
    round so that the query plan does not grow with the rounds. Jobs per round: the counts, their per-domain summary
    (collected), the anti-join. A table of keys (a dictionary, the dropped keys) of at most ``broadcast_keys`` rows
    is broadcast to its join, a larger one shuffled (hash join).

    ``checkpoint``: how each step's tables are materialised: "local" (``localCheckpoint``, on the executors,
    released once the next round has its own; lost with an executor, which then fails the job) or "reliable"
    (``checkpoint`` into ``spark.checkpoint.dir`` or ``SparkContext.setCheckpointDir``'s folder, which must be
    set: survives a lost executor, costs a write per round). Default: "reliable" where that folder is set,
    else "local".
    """
    from pyspark.sql import functions as F

    if type(k) is not int or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")
    if checkpoint is None:
        checkpoint = "reliable" if _checkpoint_dir(spark) else "local"
    if checkpoint not in ("local", "reliable"):
        raise DataError(f"checkpoint must be 'local' or 'reliable', got {checkpoint!r}")
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise DataError(f"events need the columns {', '.join(EVENT_COLUMNS)}; missing: {', '.join(missing)}")
    started = time.perf_counter()
    keep = _Materialised(checkpoint)
    src = events.select(*(F.col(c).cast("string").alias(c) for c in EVENT_COLUMNS[:3]), F.col("t").cast("long"))

    # Both dictionaries from one pass over the events: the distinct (kind, domain, id), kind 0 a user and 1 an
    # item, sorted by (kind, key) and numbered in that order.
    keys = keep(src.selectExpr("domain", "stack(2, 0, user, 1, item) AS (kind, id)").distinct()
                .select("kind", "domain", "id", F.concat("domain", F.lit(":"), "id").alias("key"))
                .orderBy("kind", "key").withColumn("number", F.monotonically_increasing_id()))
    sizes = keys.groupBy("kind", "domain").agg(F.count(F.lit(1)), F.count_if(F.col("key").isNull())).collect()
    if any(nulls for *_, nulls in sizes):
        keep.release(keys)
        raise DataError("events with a null domain, user or item (clean_events drops such rows)")
    users = keys.filter(F.col("kind") == 0).select("domain", "id", "key", F.col("number").alias("uid"))
    items = keys.filter(F.col("kind") == 1).select("domain", "id", "key", F.col("number").alias("iid"))
    n_users, n_items = (sum(n for kind, _, n, _ in sizes if kind == wanted) for wanted in (0, 1))
    domains = sorted({d for _, d, _, _ in sizes})
    did = spark.createDataFrame(list(enumerate(domains)), "did int, domain string")
    fit = lambda df, n: _sized(df, n, broadcast_keys)  # noqa: E731
    encoded = (src.join(fit(users.join(F.broadcast(did), "domain").select("domain", F.col("id").alias("user"), "uid",
                                                                        "did"), n_users), ["domain", "user"])
               .join(fit(items.select("domain", F.col("id").alias("item"), "iid"), n_items), ["domain", "item"]))
    # De-duplication, counting the rows of each distinct event on the way
    counted = keep(encoded.groupBy("did", "uid", "iid", "t").agg(F.count(F.lit(1)).alias("n")))
    found = counted.groupBy("did").agg(F.sum("n"), F.count(F.lit(1)), F.count_if(F.col("t").isNull())).collect()
    if any(nulls for *_, nulls in found):
        keep.release(counted, keys)
        raise DataError("events with a null t (clean_events drops such rows)")
    totals = {domains[d]: (int(rows), int(distinct)) for d, rows, distinct, _ in found}
    rows = {d: totals[d][0] for d in domains}
    ev = counted.select("did", "uid", "iid", "t")
    log.info("spark k-core: %d rows, %d distinct, %d users, %d items in %d domains (%.1f s)", sum(rows.values()),
             sum(v[1] for v in totals.values()), n_users, n_items, len(rows), time.perf_counter() - started)

    rounds: dict[str, int] = {}
    r = 0
    while True:
        r += 1
        # (did, kind, key, n): the rows of every user (kind 0) and item (1), in one shuffle
        counts = keep(ev.select("did", F.lit(0).alias("kind"), F.col("uid").alias("key"))
                      .unionByName(ev.select("did", F.lit(1).alias("kind"), F.col("iid").alias("key")))
                      .groupBy("did", "kind", "key").agg(F.count(F.lit(1)).alias("n")))
        summary = {(domains[d], kind): (int(keys), int(n), int(low)) for d, kind, keys, n, low in counts.groupBy(
            "did", "kind").agg(F.count(F.lit(1)), F.sum("n"), F.count_if(F.col("n") < k)).collect()}
        user, item = ({d: summary.get((d, kind), (0, 0, 0)) for d in rows} for kind in (0, 1))
        dropping = {d for d in rows if user[d][2] or item[d][2]}
        # a domain's rows change in this round exactly when it has a key to drop
        rounds.update({d: r for d in rows if d not in rounds and d not in dropping})
        log.info("spark k-core: round %d: %d rows, dropping those of %d users and %d items (%.1f s)", r,
                 sum(u[1] for u in user.values()), sum(u[2] for u in user.values()),
                 sum(i[2] for i in item.values()), time.perf_counter() - started)
        if not dropping:
            keep.release(counts)
            break
        kept = ev
        for kind, column, found_keys in ((0, "uid", user), (1, "iid", item)):
            n_drop = sum(v[2] for v in found_keys.values())
            if n_drop:
                drop = counts.filter((F.col("kind") == kind) & (F.col("n") < k)).select(F.col("key").alias(column))
                kept = kept.join(fit(drop, n_drop), column, "left_anti")
        kept = keep(kept.select("did", "uid", "iid", "t"))
        keep.release(ev, counts)
        ev = kept
    stats = {d: {"rows": rows[d], "duplicate_rows": rows[d] - totals[d][1], f"rows_after_{k}core": user[d][1],
                 f"{k}core_rounds": rounds[d], "users": user[d][0], "items": item[d][0]} for d in sorted(rows)}
    log.info("spark k-core: %d rounds, %d rows kept (%.1f s)", r, sum(u[1] for u in user.values()),
             time.perf_counter() - started)
    return KCore(ev, users, items, n_users, n_items, domains, stats, r, broadcast_keys, keep)


def _checkpoint_dir(spark: Any) -> Optional[str]:
    """``spark.checkpoint.dir``, or the folder given to ``SparkContext.setCheckpointDir``."""
    found = spark.conf.get("spark.checkpoint.dir", None)
    if not found:
        try:
            found = spark.sparkContext.getCheckpointDir()
        except Exception:  # Spark Connect has no SparkContext
            found = None
    return found or None


def _sized(df: Any, rows: int, broadcast_keys: int) -> Any:
    """The small side of a join: broadcast up to ``broadcast_keys`` rows, else a shuffled hash join (building
    a hash table per partition; Spark's default, a sort-merge join, would sort the big side as well)."""
    from pyspark.sql import functions as F

    return F.broadcast(df) if rows <= broadcast_keys else df.hint("shuffle_hash")


class _Materialised:
    """Each round's tables computed once and cut from their lineage: a round reads the previous round's rows
    twice (its counts, the anti-join), so without the cut the query plan would double with every round."""

    def __init__(self, how: str):
        self.how = how

    def __call__(self, df: Any) -> Any:
        return df.checkpoint(eager=True) if self.how == "reliable" else df.localCheckpoint(eager=True)

    def release(self, *frames: Any) -> None:
        """Free the executors' blocks of locally checkpointed tables now, not at the JVM's next garbage
        collection (reliable checkpoints are files: spark.cleaner.referenceTracking.cleanCheckpoints)."""
        if self.how != "local":
            return
        for df in frames:
            try:
                df._jdf.queryExecution().analyzed().collectLeaves().head().rdd().unpersist(False)
            except Exception:  # Spark Connect or another plan shape: left to Spark's cleaner
                log.debug("could not release a checkpointed table", exc_info=True)


def write_sequences(spark: Any, core: KCore, build_dir: str | os.PathLike, parts: int) -> str:
    """Write ``spark_kcore``'s events as the contract's ``seqs/part=<p>/``: one Parquet file per partition,
    rows sorted by (user, timestamp, item) (as numbered: by (uid, t, iid)). Returns the folder written."""
    from pyspark.sql import functions as F

    if type(parts) is not int or parts < 1:
        raise DataError(f"parts must be a positive integer, got {parts!r}")
    seqs = _join(build_dir, "seqs")
    # md5 once per user, not per event. Spark partition p must hold contract partition p alone (one file per
    # folder, no task holding two), but repartition(P, col) hashes the column: repartition by a value chosen
    # per partition to hash to it.
    users = (core.users.select("uid", F.col("key").alias("user"), "domain",
                               partition_column("key", parts).alias("part"))
             .join(F.broadcast(partition_salt(spark, parts)), "part"))
    items = core.items.select("iid", F.col("key").alias("item"))
    rows = (core.events.join(_sized(items, core.n_items, core.broadcast_keys), "iid")
            .join(_sized(users, core.n_users, core.broadcast_keys), "uid"))
    out = (rows.repartition(parts, "salt").sortWithinPartitions("part", "uid", "t", "iid")
           .select("user", "domain", "item", F.col("t").alias("timestamp"), "part"))
    (out.write.mode("overwrite").option("partitionOverwriteMode", "static").option("maxRecordsPerFile", 0)
     .partitionBy("part").parquet(seqs))
    local = local_path(seqs)
    if local is not None:
        for p in range(parts):
            folder = local / f"part={p}"
            files = sorted(folder.glob("*.parquet"))
            if len(files) > 1:
                raise DataError(f"{folder}: Spark wrote {len(files)} files, the build expects one per partition")
            if not files:
                _empty_parquet(folder / "part-empty.parquet")
    return seqs


def partition_salt(spark: Any, parts: int) -> Any:
    """DataFrame (part, salt): for every partition p < ``parts`` a long ``salt`` that Spark's hash partitioning
    into ``parts`` partitions (pmod(murmur3 hash, parts), ``repartition``'s) sends to partition p."""
    from pyspark.sql import functions as F

    span = 16 * parts
    while True:
        salt = (spark.range(span).select(F.col("id").alias("salt"), F.pmod(F.hash(F.col("id")), F.lit(parts))
                                         .cast("long").alias("part"))
                .groupBy("part").agg(F.min("salt").alias("salt")))
        salt = salt.localCheckpoint(eager=True)
        if salt.count() == parts:
            return salt
        span *= 4


def _empty_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("user", pa.string()), ("domain", pa.string()), ("item", pa.string()),
                        ("timestamp", pa.int64())])
    pq.write_table(schema.empty_table(), path)


def _join(base: str | os.PathLike, name: str) -> str:
    base = str(base)
    return base.rstrip("/") + "/" + name if "://" in base else str(Path(base) / name)


def local_path(path: str) -> Optional[Path]:
    """The local folder of ``path`` (plain or file://), None for another file system (hdfs://, s3a://, ...)."""
    parsed = urlparse(path)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else path)
    return None


# --------------------------------------------------------------------------------------------------------- inputs
def read_events(spark: Any, path: str | os.PathLike, domain: Optional[str] = None, *, user: str = "user",
                item: str = "item", timestamp: str = "timestamp", domain_column: Optional[str] = "domain",
                fmt: Optional[str] = None, time_format: str = "unix") -> tuple[Any, dict[str, int]]:
    """A Parquet, CSV or TSV table (a file or a folder of them; CSV/TSV with a header line, plain or
    compressed) -> ``clean_events`` of it: (usable events, rows skipped by reason). A CSV/TSV line whose field
    count differs from the header's, or with an odd number of quotes, is a ``bad_record``; blank lines are left
    out, as the converter does. A path that names no file, and Parquet files whose schemas do not merge (a
    column of numbers in one, of text in another), are a DataError naming the path."""
    from pyspark.errors import AnalysisException

    path = str(path)
    fmt = fmt or _format(path)
    malformed = None
    try:
        if fmt == "parquet":
            # Every file's schema, merged: without it Spark takes one file's, and a file whose column has another
            # type (a timestamp written as text) failed the job with a Java traceback at its first read
            table = spark.read.option("mergeSchema", "true").parquet(path)
        elif fmt in ("csv", "tsv"):
            table, malformed = _read_csv(spark, path, fmt)
        else:
            raise DataError(f"{path}: format {fmt!r} is not one of parquet, csv, tsv")
    except AnalysisException as e:  # no such file, a glob matching none, an empty folder
        raise DataError(f"{path}: cannot read: {_first_line(e)}") from None
    except Exception as e:  # py4j's Py4JJavaError: Spark's SparkException, such as schemas that do not merge
        java = getattr(e, "java_exception", None)
        if java is None or "CANNOT_MERGE_SCHEMAS" not in str(java.toString()):
            raise
        raise DataError(f"{path}: cannot read: {' '.join(str(java.getMessage()).split())}") from None
    return clean_events(table, domain, user=user, item=item, timestamp=timestamp, domain_column=domain_column,
                        malformed=malformed, where=path, time_format=time_format)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_csv(spark: Any, path: str, fmt: str) -> tuple[Any, Any]:
    """A CSV/TSV table (every column a string) and the condition of a malformed row: a line whose field count
    differs from the header's, or one with an odd number of quotes. One line is one row, as in the converter (a
    quoted value cannot span lines): the lines are read as text and each parsed by Spark's CSV parser
    (``from_csv``), so that the line's quotes can be counted: read alone, the second line of a value spanning
    lines (`x",i0,...` after `"u0`) was a row of a user the table does not have."""
    from pyspark.sql import functions as F

    options = {"sep": "," if fmt == "csv" else "\t", "quote": '"', "escape": '"'}
    header = spark.read.options(header=True, **options).csv(path).columns  # reads the first line
    if not header:
        raise DataError(f"{path}: empty file, expected a header line")
    corrupt = "_corrupt_record"
    while corrupt in header or f"{corrupt}_quotes" in header:
        corrupt = "_" + corrupt
    odd = f"{corrupt}_quotes"
    schema = ", ".join(f"{_quoted(c)} STRING" for c in [*header, corrupt])
    # every part file of a folder starts with the header line (a byte-order mark before the first one at most)
    first = spark.read.text(path).limit(1).collect()
    header_line = first[0][0].lstrip("\ufeff") if first else ""
    line = F.regexp_replace(F.col("value"), "^\ufeff", "")
    rows = (spark.read.text(path).filter((F.col("value") != "") & (line != F.lit(header_line)))
            .select(F.from_csv(F.col("value"), schema, {**options, "mode": "PERMISSIVE",
                                                        "columnNameOfCorruptRecord": corrupt}).alias("row"),
                    ((F.length("value") - F.length(F.regexp_replace("value", '"', ""))) % 2 == 1).alias(odd))
            .select("row.*", odd))
    return rows, F.col(_quoted(corrupt)).isNotNull() | F.col(_quoted(odd))


def clean_events(table: Any, domain: Optional[str] = None, *, user: str = "user", item: str = "item",
                 timestamp: str = "timestamp", domain_column: Optional[str] = "domain", malformed: Any = None,
                 where: str = "events", time_format: str = "unix") -> tuple[Any, dict[str, int]]:
    """A table of interactions (a DataFrame: a Hive table, ``spark.table(name)``, or a file read by
    ``read_events``) -> (events, skipped): the usable events (domain, user, item, t) for ``spark_sequences``,
    and how many rows were dropped by reason (``bad_record``, ``bad_timestamps``; reasons without rows left out).

    The domain comes from ``domain_column`` where the table has it, else it is ``domain`` (required then);
    ids stay as the table names them (``spark_sequences`` qualifies them). Cells follow the single-machine
    converter's rules (mmm4rec.data.tables): ids are trimmed text (an integral float is an integer); a timestamp
    is an integer, an integral float or the text of either (or a Spark timestamp: seconds from 1970 UTC,
    fractions cut off), between 1970 and the year 9999. A row with a missing or empty id, a list for an id, a
    domain containing ':' (or ``malformed``, a boolean column) is ``bad_record``; an empty or unusable timestamp
    is ``bad_timestamps`` (an id problem is named first, as the converter does). ``time_format`` (engine.TIME_FORMATS)
    says what a timestamp that is not a Spark timestamp holds: Unix seconds, Unix milliseconds (floored to
    seconds) or ISO-8601 text (UTC where it names no offset); as in the converter, the first rows are judged before
    the whole table is read (tables.judge_time_sample), so a wrong unit is an error with a hint, not a table of
    skipped rows.

    Only the counts come back, not the file and line of each bad row: the single-machine path
    (tools/prepare_tables.py, mmm4rec.data.tables) reports those; Spark reads a table in parallel splits. The
    counts take one pass over the table and ``spark_sequences`` reads it again (persist the table to read it
    once).
    """
    from pyspark.sql import functions as F

    types = {f.name: f.dataType for f in table.schema.fields}
    has_domain = domain_column is not None and domain_column in types
    for column, what in ((user, "user"), (item, "item"), (timestamp, "timestamp")):
        if column not in types:
            raise DataError(f"{where}: no {what} column {column!r} (columns: {', '.join(types)})")
    if not has_domain and (not domain or ":" in domain):
        raise DataError(f"{where}: without a domain column the domain must be given, non-empty and without ':' "
                        f"(got {domain!r})")
    if time_format not in TIME_FORMATS:
        raise DataError(f"--time-format {time_format!r}: expected one of {', '.join(TIME_FORMATS)}")
    sample = table.select(timestamp).limit(TIME_SAMPLE_ROWS).collect()
    judge_time_sample(((f"{where}: row {n} of the first read", row[0]) for n, row in enumerate(sample, 1)),
                      time_format, where)

    user_v, item_v = _id(user, types[user]), _id(item, types[item])
    t_v = _seconds(timestamp, types[timestamp], time_format)
    domain_v = _id(domain_column, types[domain_column]) if has_domain else F.lit(domain)
    # a NUL inside a key: the shards' key checks refuse it (tables: engine.id_problem)
    good_id = lambda v: v.isNotNull() & (v != "") & ~v.contains("\u0000")  # noqa: E731
    good_t = t_v.isNotNull() & (t_v >= first_second(time_format)) & (t_v <= MAX_TIMESTAMP)
    good_domain = good_id(domain_v) & ~domain_v.contains(":") if has_domain else F.lit(True)
    shaped = ~malformed if malformed is not None else F.lit(True)
    reason = (F.when(~shaped | ~good_id(user_v) | ~good_id(item_v), F.lit("bad_record"))
              .when(~good_t, F.lit("bad_timestamps")).when(~good_domain, F.lit("bad_record")))
    rows = table.select(domain_v.alias("domain"), user_v.alias("user"), item_v.alias("item"), t_v.alias("t"),
                        reason.alias("reason"))
    skipped = {r: int(n) for r, n in rows.filter(F.col("reason").isNotNull()).groupBy("reason").count().collect()}
    events = rows.filter(F.col("reason").isNull()).select(*EVENT_COLUMNS)
    return events, dict(sorted(skipped.items()))


def _format(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for compressed in (".gz", ".bz2", ".zst", ".lz4", ".snappy", ".deflate"):
        if name.endswith(compressed):
            name = name[: -len(compressed)]
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return "parquet"  # a folder of part files, as Spark and Hive write tables


def _id(column: str, kind: Any) -> Any:
    """A cell as id text (tables._id): trimmed text, '' for no value or a list (both bad_record)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    c = F.col(_quoted(column))
    if isinstance(kind, (T.ArrayType, T.MapType, T.StructType)):
        return F.lit("")
    if isinstance(kind, (T.FloatType, T.DoubleType)):
        d = c.cast("double")
        integral = ~F.isnan(d) & (F.abs(d) < 1e300) & (d % 1 == 0)
        # an integral float is its integer (tables._scalar); other values as Spark prints them (Python's repr
        # differs for exponents: 1e-05 here is 1.0E-5)
        return F.when(integral, d.try_cast("decimal(38,0)").cast("string")).when(
            ~F.isnan(d) & (F.abs(d) < float("inf")), d.cast("string"))
    if isinstance(kind, T.BooleanType):
        return F.when(c, F.lit("True")).when(~c, F.lit("False"))
    return F.btrim(c.cast("string"), F.lit(WHITESPACE))


def _seconds(column: str, kind: Any, time_format: str = "unix") -> Any:
    """A cell as integer seconds (engine.formatted_seconds' rules for ``time_format``), NULL where it is none."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    c = F.col(_quoted(column))
    if isinstance(kind, T.TimestampType):
        return _floor_seconds(f"unix_micros({_quoted(column)})")
    if isinstance(kind, T.TimestampNTZType):
        return _floor_seconds(f"timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', {_quoted(column)})")
    if time_format == "iso8601":
        if not isinstance(kind, T.StringType):
            return F.lit(None).cast("long")  # a number is not ISO-8601 text
        s = F.btrim(c, F.lit(WHITESPACE))
        # Spark reads no hh:mm without seconds before an offset: ':00' is added
        s = F.regexp_replace(s, r"^([0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2})(?=$|Z|[+-])", "$1:00")
        # Text without an offset is UTC, whatever the session's time zone: it gets a 'Z' before Spark reads it
        utc = (F.when(s.rlike(f"{_ISO_TIME}{_ISO_OFFSET}$"), s).when(s.rlike(f"{_ISO_TIME}$"), F.concat(s, F.lit("Z")))
               .otherwise(F.concat(s, F.lit("T00:00:00Z"))))
        stamp = utc.try_cast("timestamp")
        seconds = F.unix_seconds(stamp)  # truncated toward 0: one less where a fraction lies before 1970
        return F.when(s.rlike(_ISO_TEXT), seconds - F.when(F.unix_micros(stamp) < seconds * 1_000_000, 1)
                      .otherwise(0))
    if isinstance(kind, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        number = c.cast("long")
    elif isinstance(kind, (T.FloatType, T.DoubleType, T.DecimalType)):
        d = c.cast("double")
        limit = MAX_TIMESTAMP * (1000 if time_format == "unix_ms" else 1)
        number = F.when(~F.isnan(d) & (d % 1 == 0) & (d >= 0) & (d <= limit), d.cast("long"))
    elif isinstance(kind, T.StringType):
        s = F.btrim(c, F.lit(WHITESPACE))
        d = s.try_cast("double")
        limit = MAX_TIMESTAMP * (1000 if time_format == "unix_ms" else 1)
        number = (F.when(s.rlike(_INTEGER_TEXT), F.regexp_replace(s, "_", "").try_cast("long"))
                  .when(s.rlike(_FLOAT_TEXT) & (d % 1 == 0) & (d >= 0) & (d <= limit), d.cast("long")))
    else:
        return F.lit(None).cast("long")  # dates, booleans, binary, lists: not Unix seconds
    if time_format == "unix_ms":  # floored to seconds; a negative value stays out of range (engine: -1)
        return F.when(number < 0, F.lit(-1).cast("long")).otherwise(F.floor(number / 1000).cast("long"))
    return number


def _floor_seconds(micros: str) -> Any:
    """SQL microseconds -> whole seconds, rounded down, in integers (a double would round large values)."""
    from pyspark.sql import functions as F

    return F.expr(f"(({micros}) - pmod({micros}, 1000000)) div 1000000")


def _quoted(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"
