"""Building a dataset folder from raw tables at any size: sequences in partitions, shards written in parallel,
resumable after a kill at any point.

A conversion runs in a build folder next to its output (``.<name>.build``), in four steps, each leaving its
result there so that a rerun of the same command redoes only what is unfinished:

1. the converter reads its item table into a catalogue (its own code: MovieLens, Amazon, tables);
2. events -> sequences (``Sequences``, in the columnar engine, mmm4rec.data.engine): exact duplicates dropped,
   k-core to a fixed point, then every partition written as Parquet — **the hand-off contract** below;
3. shards (``write_shards``): each partition into its own WebDataset shards by an independent worker (processes
   here, ``torchrun``-style ranks or a SLURM array elsewhere: tools/write_shards.py, slurm/convert.sh); a
   partition is done when its ``done/<kind>-<part>.json`` exists;
4. ``assemble``: once every partition is done, the shards are linked into the dataset folder with its dataset.json,
   replacing the folder atomically, and the build folder goes.

The hand-off contract (docs/data_format.md, "Building at scale"): a build folder holds ``convert.json`` (written
last: name, licence, provenance, shard size, partition counts) and

    seqs/part=<p>/*.parquet    user, domain, item (string keys, domain-qualified), timestamp (int64 seconds);
                               one row per event, rows sorted by (user, timestamp, item), p = partition(user)
    items/part=<p>/*.parquet   key, text, meta (the item's json without its key), image_file, image_dir,
                               image_id, where; rows sorted by key, p = partition(key)

with ``partition(key)`` = the first 32 bits of md5(UTF-8 key) modulo the partition count — a function every
engine has (DuckDB, Spark: ``conv(substr(md5(key), 1, 8), 16, 10) % P``). Whoever writes that folder (this
module, or a Spark job over logs that live in Hive: mmm4rec.data.spark) hands it to the same shard writer.

With one partition the shards are named and written exactly as ``dataset.write_dataset`` names and writes them
(byte-identical); with P partitions partition p writes ``seqs-p<p>-<n>.tar`` / ``items-p<p>-<n>.tar``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .atomic import MARKER, MARKER_TEXT, check_replaceable, replace_folder, write_atomic
from .dataset import LAYOUT, Counts, load_manifest
from .engine import Engine, ident, quote
from .options import add_scale_arguments  # noqa: F401 (the converters import it from here)
from .schema import BadRecords, DataError, InvalidRecord, ItemRecord, Manifest, SeqRecord, ShardInfo, check_seq
from .shards import ITEM_SHARDS, SEQ_SHARDS, file_image, folder_image, write_items, write_seqs

log = logging.getLogger(__name__)

BUILD_FORMAT = "mmm4rec-build/1"
JOB, CONVERT, LOCK = "job.json", "convert.json", ".lock"
KINDS = ("items", "seqs")
SEQ_COLUMNS = ("user", "domain", "item", "timestamp")
ITEM_COLUMNS = ("key", "text", "meta", "image_file", "image_dir", "image_id", "where")
BATCH_ROWS = 1 << 16  # rows per Parquet batch read by a shard worker: bounded memory


def partition(key: str, parts: int) -> int:
    """The partition of a user or item key: the first 32 bits of md5(UTF-8 key) modulo ``parts``."""
    return int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % parts


def partition_sql(column: str, parts: int) -> str:
    """``partition`` in DuckDB's SQL."""
    return f"CAST(('0x' || md5({column})[1:8]) AS UBIGINT) % {int(parts)}"


def build_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    return out.parent / f".{out.name}.build"


def shard_pattern(kind: str, part: int, parts: int) -> tuple[str, str]:
    """(file name pattern, sample key prefix) of a partition's shards."""
    if parts == 1:
        return (ITEM_SHARDS if kind == "items" else SEQ_SHARDS), ""
    return f"{kind}-p{part:05d}-%06d.tar", f"p{part:05d}-"


@dataclass(frozen=True)
class Scale:
    """How a conversion runs: sequences and items in ``partitions`` each (1: the shards of write_dataset,
    byte for byte), shards written by ``workers`` processes, the engine under ``memory_limit`` (DuckDB's
    syntax, e.g. "4GB"; default: engine.default_memory_limit) with ``threads`` (default: every core)."""

    partitions: int = 1
    workers: int = 1
    memory_limit: Optional[str] = None
    threads: Optional[int] = None
    defer_shards: bool = False  # stop after step 2: the shards are written elsewhere (tools/write_shards.py)

    def __post_init__(self) -> None:
        for key in ("partitions", "workers"):
            value = getattr(self, key)
            if type(value) is not int or value < 1:
                raise DataError(f"{key} must be a positive integer, got {value!r}")
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise DataError(f"threads must be a positive integer, got {self.threads!r}")

    def args(self) -> dict[str, Any]:
        """What the dataset's provenance records: the partitioning (it names the shards), not the workers."""
        return {"partitions": self.partitions} if self.partitions > 1 else {}

    def parts(self) -> dict[str, int]:
        return {kind: self.partitions for kind in KINDS}


# ------------------------------------------------------------------------------------------------ the build folder
class Build:
    """A build folder: created for one job identity (``job.json``) and reused by a rerun with the same one;
    another identity starts it over. Held under an exclusive lock while a converter works in it."""

    def __init__(self, path: Path, out_dir: Optional[Path] = None):
        self.path = Path(path)
        self.out_dir = out_dir
        self._lock: Optional[Any] = None

    @classmethod
    def open(cls, out_dir: str | os.PathLike, identity: dict[str, Any]) -> "Build":
        out_dir = Path(out_dir)
        build = cls(build_dir(out_dir), out_dir)
        path = build.path
        if path.exists():
            check_replaceable(path)  # ours (marker) or empty: never a user's folder
            build.lock()
            try:
                same = json.loads((path / JOB).read_text()) == {"format": BUILD_FORMAT, **identity}
            except (OSError, ValueError):
                same = False
            if same:
                done = sorted(p.stem for p in (path / "done").glob("*.json"))
                log.info("resuming the conversion in %s (%s; partitions done: %s)", path,
                         "sequences written" if (path / CONVERT).is_file() else "from the start", len(done))
                return build
            log.info("%s belongs to another conversion (other inputs or options): starting it over", path)
            build.unlock()
            shutil.rmtree(path)
        path.mkdir(parents=True)
        (path / MARKER).write_text(MARKER_TEXT)
        build.lock()
        write_atomic(path / JOB, json.dumps({"format": BUILD_FORMAT, **identity}, indent=1, sort_keys=True) + "\n")
        return build

    def lock(self) -> None:
        self._lock = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise DataError(f"{self.path}: another conversion is writing this dataset now") from None

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def converted(self) -> Optional[dict[str, Any]]:
        """convert.json once step 2 is done (the sequences are written), else None."""
        try:
            return json.loads((self.path / CONVERT).read_text())
        except FileNotFoundError:
            return None

    def engine(self, memory_limit: Optional[str] = None, threads: Optional[int] = None) -> Engine:
        return Engine(self.path / "engine", memory_limit, threads)

    def finish_conversion(self, *, name: str, licence: str, provenance: dict[str, Any], shard_size: int,
                          partitions: dict[str, int]) -> None:
        shutil.rmtree(self.path / "engine", ignore_errors=True)
        write_atomic(self.path / CONVERT, json.dumps(
            {"format": BUILD_FORMAT, "name": name, "licence": licence, "provenance": provenance,
             "shard_size": shard_size, "partitions": partitions}, indent=1, ensure_ascii=False) + "\n")

    def remove(self) -> None:
        self.unlock()
        shutil.rmtree(self.path, ignore_errors=True)


# ------------------------------------------------------------------------------------- step 2: events -> sequences
@dataclass
class Sequences:
    """Events -> k-core user sequences in the engine, and their partitions written as Parquet.

    ``events`` is SQL yielding (domain, user, item, t): the user and item ids as the source names them (they are
    qualified here, ``<domain>:<id>``, on the distinct ids only), integer seconds, one row per usable event. The rules are those of ``interactions.build_sequences`` (its in-memory reference, kept for the tests):
    exact duplicates (user, item, second) dropped, k-core to a fixed point, events ordered per user by
    (timestamp, item key), users and items by key (byte order of UTF-8 = code point order, as Python sorts).
    """

    engine: Engine
    k: int

    def build(self, events: str) -> dict[str, dict[str, int]]:
        """Filter; returns the filtering statistics per domain (build_sequences' ``stats``).

        Keys are dictionary-encoded first: ``users`` and ``items`` number them in key order, so that the
        de-duplication, the k-core rounds and the final sort run on integers (the sort on (uid, t, iid) is the
        order on (user key, t, item key)); the keys come back only when the partitions are written."""
        e, k = self.engine, self.k
        # A view, read a few times: a copy of 10^8 events would only move them to the spill folder and back.
        e.execute(f"CREATE OR REPLACE VIEW ev_in AS SELECT domain, user, item, t FROM ({events})")
        rows = dict(e.rows("SELECT domain, count(*) FROM ev_in GROUP BY domain"))
        e.execute("CREATE OR REPLACE TABLE domains AS SELECT domain, row_number() OVER (ORDER BY domain) AS did "
                  "FROM (SELECT DISTINCT domain FROM ev_in)")
        for table, column, number in (("users", "user", "uid"), ("items", "item", "iid")):
            e.execute(f"""CREATE OR REPLACE TABLE {table} AS SELECT x.domain || ':' || x.{column} AS {column}, x.domain,
                          d.did, x.{column} AS id, row_number() OVER (ORDER BY x.domain || ':' || x.{column}) AS {number}
                          FROM (SELECT DISTINCT domain, {column} FROM ev_in) x JOIN domains d USING (domain)""")
        # Encode, then de-duplicate: two operators, each within the memory limit (one query holding both join
        # tables and the aggregate ran out of memory at 10^8 events under 3 GB).
        e.execute("""CREATE OR REPLACE TABLE ev_codes AS SELECT u.uid, i.iid, e.t, u.did FROM ev_in e
                     JOIN users u ON u.domain = e.domain AND u.id = e.user
                     JOIN items i ON i.domain = e.domain AND i.id = e.item""")
        e.execute("DROP VIEW ev_in")
        e.execute("CREATE OR REPLACE TABLE ev AS SELECT DISTINCT uid, iid, t, did FROM ev_codes")
        e.execute("DROP TABLE ev_codes")
        count = self._per_domain()
        distinct = dict(count)
        rounds: dict[str, int] = {}
        r = 0
        while len(rounds) < len(rows):
            # One round drops every row whose user or item has fewer than k rows at the round's start (the
            # reference's simultaneous mask). The dropped keys are few next to the rows: deleting by them
            # cheaper than rewriting the table through a semi-join with the kept ones.
            r += 1
            e.execute(f"CREATE OR REPLACE TABLE drop_u AS SELECT uid FROM ev GROUP BY uid HAVING count(*) < {k}")
            e.execute(f"CREATE OR REPLACE TABLE drop_i AS SELECT iid FROM ev GROUP BY iid HAVING count(*) < {k}")
            if e.value("SELECT (SELECT count(*) FROM drop_u) + (SELECT count(*) FROM drop_i)"):
                e.execute("DELETE FROM ev WHERE uid IN (SELECT uid FROM drop_u) OR iid IN (SELECT iid FROM drop_i)")
                new = self._per_domain()
            else:
                new = count
            rounds.update({d: r for d in rows if d not in rounds and new.get(d, 0) == count.get(d, 0)})
            count = new
        e.execute("DROP TABLE IF EXISTS drop_u")
        e.execute("DROP TABLE IF EXISTS drop_i")
        users = self._per_domain("count(DISTINCT uid)")
        items = self._per_domain("count(DISTINCT iid)")
        return {d: {"rows": rows[d], "duplicate_rows": rows[d] - distinct.get(d, 0),
                    f"rows_after_{k}core": count.get(d, 0), f"{k}core_rounds": rounds[d],
                    "users": users.get(d, 0), "items": items.get(d, 0)} for d in sorted(rows)}

    def stats_of(self, stats: dict[str, dict[str, int]], domain: str) -> dict[str, int]:
        """A domain's statistics from ``build``'s, also for a domain none of whose rows reached it."""
        k = self.k
        return stats.get(domain, {"rows": 0, "duplicate_rows": 0, f"rows_after_{k}core": 0, f"{k}core_rounds": 1,
                                  "users": 0, "items": 0})

    def _per_domain(self, what: str = "count(*)") -> dict[str, int]:
        return dict(self.engine.rows(f"SELECT d.domain, x.n FROM (SELECT did, {what} AS n FROM ev GROUP BY did) x "
                                     "JOIN domains d USING (did)"))

    def kept_items(self) -> str:
        """SQL: (domain, item id without the domain) of every item left after filtering."""
        return "SELECT i.domain, i.id AS item FROM items i WHERE i.iid IN (SELECT iid FROM ev)"

    def write(self, folder: Path, items: str, parts: int) -> None:
        """Write the sequences and ``items`` (SQL yielding ITEM_COLUMNS) as the contract's partitions."""
        e = self.engine
        # md5 once per user and item, not per event
        e.execute(f"CREATE OR REPLACE TABLE user_part AS SELECT uid, user, domain, {partition_sql('user', parts)} "
                  "AS part FROM users WHERE uid IN (SELECT uid FROM ev)")
        for p in range(parts):
            _copy(e, f"""SELECT u.user, u.domain, i.item, e.t AS timestamp FROM ev e
                         JOIN (SELECT * FROM user_part WHERE part = {p}) u ON u.uid = e.uid
                         JOIN items i ON i.iid = e.iid ORDER BY e.uid, e.t, e.iid""", folder / "seqs" / f"part={p}")
        e.execute("DROP TABLE user_part")
        write_item_partitions(e, folder, items, parts)


def write_item_partitions(engine: Engine, folder: Path, items: str, parts: int) -> None:
    """The contract's ``items/part=<p>/`` from ``items`` (SQL yielding ITEM_COLUMNS)."""
    engine.execute(f"CREATE OR REPLACE TABLE item_out AS SELECT {_names(ITEM_COLUMNS)}, "
                   f"{partition_sql('key', parts)} AS part FROM ({items})")
    for p in range(parts):
        _copy(engine, f"SELECT {_names(ITEM_COLUMNS)} FROM item_out WHERE part = {p} ORDER BY key",
              folder / "items" / f"part={p}")
    engine.execute("DROP TABLE item_out")


def _copy(engine: Engine, query: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    engine.execute(f"COPY ({query}) TO {quote(str(folder / 'data.parquet'))} (FORMAT parquet)")


def _names(columns: Sequence[str]) -> str:
    return ", ".join(ident(c) for c in columns)


# ------------------------------------------------------------------------------------------------ step 3: shards
def _parquet_batches(folder: Path, columns: Sequence[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for path in sorted(folder.glob("*.parquet")):
        try:
            parquet = pq.ParquetFile(path)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (the build contract needs {', '.join(columns)})")
            yield from parquet.iter_batches(BATCH_ROWS, columns=list(columns))
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: cannot read: {e}") from None


class _ContractError(DataError):
    pass


def read_sequences(folder: Path, part: int, parts: int, short: Optional[BadRecords] = None) -> Iterator[SeqRecord]:
    """The user sequences of one partition folder, checked against the contract: each user in its partition,
    users in key order, each user's events together. A user with fewer events than leave-one-out needs (left
    by a k-core below 3) is counted in ``short`` as ``too_short`` and skipped, as the dataset reader skips one;
    without ``short`` it is a contract error."""
    import numpy as np
    import pyarrow.compute as pc

    current: Optional[tuple[str, str, list[str], list[int]]] = None
    for batch in _parquet_batches(folder, SEQ_COLUMNS):
        n = batch.num_rows
        if not n:
            continue
        users = batch.column("user")
        if users.null_count or batch.column("item").null_count or batch.column("timestamp").null_count:
            raise _ContractError(f"{folder}: null user, item or timestamp")
        change = np.flatnonzero(pc.not_equal(users.slice(1), users.slice(0, n - 1)).to_numpy(zero_copy_only=False))
        starts = np.r_[0, change + 1]
        ends = np.r_[starts[1:], n]
        firsts = users.take(starts).to_pylist()
        domains = batch.column("domain").take(starts).to_pylist()
        items = batch.column("item").to_pylist()
        stamps = batch.column("timestamp").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        for user, domain, a, b in zip(firsts, domains, starts.tolist(), ends.tolist()):
            if current is not None and user == current[0]:
                current[2].extend(items[a:b])
                current[3].extend(stamps[a:b].tolist())
                continue
            if current is not None:
                if user < current[0]:
                    raise _ContractError(f"{folder}: user {user!r} follows {current[0]!r}: not sorted by user")
                rec = _seq(current, part, parts, folder, short)
                if rec is not None:
                    yield rec
            current = (user, domain, items[a:b], stamps[a:b].tolist())
    if current is not None:
        rec = _seq(current, part, parts, folder, short)
        if rec is not None:
            yield rec


def _seq(found: tuple[str, str, list[str], list[int]], part: int, parts: int, folder: Path,
         short: Optional[BadRecords] = None) -> Optional[SeqRecord]:
    user, domain, items, stamps = found
    if parts > 1 and partition(user, parts) != part:
        raise _ContractError(f"{folder}: user {user!r} belongs to partition {partition(user, parts)}, not {part}")
    rec = SeqRecord(user, domain, items, stamps)
    try:
        check_seq(rec)
    except InvalidRecord as e:
        if e.reason == "too_short" and short is not None:
            short.report("too_short", f"{folder}: user {user!r}: {e.problem}")
            return None
        raise _ContractError(f"{folder}: user {user!r}: {e.problem}") from None
    return rec


def read_items(folder: Path, part: int, parts: int, bad: BadRecords, images: list[int]) -> Iterator[ItemRecord]:
    """The item records of one partition folder, with their images loaded and checked (``images[0]`` counts
    those stored)."""
    last: Optional[str] = None
    for batch in _parquet_batches(folder, ITEM_COLUMNS):
        for row in batch.to_pylist():
            key = row["key"]
            if not isinstance(key, str) or (last is not None and key <= last):
                raise _ContractError(f"{folder}: item {key!r} follows {last!r}: keys must be unique and sorted")
            if parts > 1 and partition(key, parts) != part:
                raise _ContractError(f"{folder}: item {key!r} belongs to partition {partition(key, parts)}")
            if not (row["text"] or "").strip():
                raise _ContractError(f"{folder}: item {key!r} has empty text")
            last = key
            image = None
            if row["image_file"]:
                image = file_image(Path(row["image_file"]), row["where"] or key, bad)
            elif row["image_dir"]:
                image = folder_image(Path(row["image_dir"]), row["image_id"], bad)
            images[0] += image is not None
            yield ItemRecord(key, row["text"], image, json.loads(row["meta"] or "{}"))


def write_partition(build: str, kind: str, part: int, parts: int, shard_size: int, strict: bool) -> str:
    """Write one partition's shards (step 3); idempotent: a partial attempt's files are removed first."""
    root = Path(build)
    done = root / "done" / f"{kind}-{part:05d}.json"
    if done.is_file():
        return str(done)
    shards = root / "shards"
    shards.mkdir(exist_ok=True)
    pattern, prefix = shard_pattern(kind, part, parts)
    stem = pattern.split("%")[0]
    for old in shards.glob(f"{stem}[0-9]*.tar*"):  # an interrupted attempt's shards (names are per partition)
        old.unlink()
    source = root / kind / f"part={part}"
    bad = BadRecords(strict)
    # A k-core below 3 leaves users leave-one-out cannot use: skipped and counted whatever the strictness (the
    # option made them, not a bad row), rather than failing the build after every event was read and filtered.
    short = BadRecords(False)
    counts = Counts()
    images = [0]
    started = time.perf_counter()

    def counted(records: Iterator[Any]) -> Iterator[Any]:
        for rec in records:
            counts.item(rec) if kind == "items" else counts.seq(rec)
            yield rec

    if kind == "items":
        infos = write_items(shards, counted(read_items(source, part, parts, bad, images)), shard_size, pattern, prefix)
    else:
        infos = write_seqs(shards, counted(read_sequences(source, part, parts, short)), shard_size, pattern, prefix)
    done.parent.mkdir(exist_ok=True)
    write_atomic(done, json.dumps({"shards": [s.to_json() for s in infos], "counts": counts.to_json(),
                                   "skipped": {**bad.as_dict(), **short.as_dict()}, "images_with_file": images[0],
                                   "seconds": round(time.perf_counter() - started, 3)}) + "\n")
    return str(done)


def pending(build: Path, parts: dict[str, int]) -> list[tuple[str, int]]:
    return [(kind, p) for kind in KINDS for p in range(parts[kind])
            if not (build / "done" / f"{kind}-{p:05d}.json").is_file()]


def write_shards(build: str | os.PathLike, workers: int = 1, rank: int = 0, world: int = 1) -> int:
    """Step 3 for the partitions of this rank (every ``world``-th, from ``rank``) that are not done yet, over
    ``workers`` processes. Returns how many it wrote."""
    build = Path(build)
    spec = _converted(build)
    everything = [(kind, p) for kind in KINDS for p in range(spec["partitions"][kind])]
    left = set(pending(build, spec["partitions"]))
    todo = [task for task in everything[rank::world] if task in left]  # a rank's share never depends on timing
    strict = bool(spec["provenance"].get("args", {}).get("strict", False))
    args = [(str(build), kind, p, spec["partitions"][kind], spec["shard_size"], strict) for kind, p in todo]
    if workers <= 1 or len(args) <= 1:
        for a in args:
            write_partition(*a)
    else:
        # fork, not spawn: a spawned child re-imports the caller's __main__, which a user's unguarded script
        # would run again. The engine is closed by now; pyarrow re-creates its thread pool after a fork.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for future in [pool.submit(write_partition, *a) for a in args]:
                future.result()
    return len(args)


def _converted(build: Path) -> dict[str, Any]:
    try:
        spec = json.loads((build / CONVERT).read_text())
    except FileNotFoundError:
        raise DataError(f"{build}: no {CONVERT}: the sequences are not written yet (step 2 of the conversion)") from None
    except ValueError as e:
        raise DataError(f"{build / CONVERT}: not valid JSON: {e}") from None
    if not isinstance(spec, dict) or spec.get("format") != BUILD_FORMAT:
        raise DataError(f"{build / CONVERT}: not a build description (format {BUILD_FORMAT!r})")
    for key in ("name", "licence", "provenance", "shard_size", "partitions"):
        if key not in spec:
            raise DataError(f"{build / CONVERT}: {key} is missing")
    parts = spec["partitions"]
    if not (isinstance(parts, dict) and all(type(parts.get(k)) is int and parts[k] >= 1 for k in KINDS)):
        raise DataError(f"{build / CONVERT}: partitions must be {{\"items\": N, \"seqs\": N}} with N >= 1")
    return spec


# ---------------------------------------------------------------------------------------------- step 4: assemble
def assemble(build: str | os.PathLike, out_dir: str | os.PathLike) -> Manifest:
    """Once every partition is done: the dataset folder (shards linked in, dataset.json), replacing ``out_dir``
    atomically (its feature stores are kept)."""
    build, out_dir = Path(build), Path(out_dir)
    spec = _converted(build)
    left = pending(build, spec["partitions"])
    if left:
        raise DataError(f"{build}: {len(left)} partitions are not written yet (first: {left[0][0]} {left[0][1]})")
    counts = Counts()
    skipped = BadRecords()
    skipped.update(spec["provenance"].get("skipped", {}))
    images = 0
    listed: dict[str, list[ShardInfo]] = {}
    for kind in KINDS:
        listed[kind] = []
        for p in range(spec["partitions"][kind]):
            done = json.loads((build / "done" / f"{kind}-{p:05d}.json").read_text())
            listed[kind] += [ShardInfo(**s, path=build / "shards" / s["name"]) for s in done["shards"]]
            counts.add(done["counts"])
            skipped.update(done["skipped"])
            images += done["images_with_file"]
    name = spec["name"]
    if not listed["items"] or not counts.counts()["users"]:
        raise DataError(f"{name}: no items or no users left to write")
    provenance = dict(spec["provenance"])
    if "skipped" in provenance:
        provenance["skipped"] = skipped.as_dict()
    if "images_with_file" in provenance:
        provenance["images_with_file"] = images
    with replace_folder(out_dir, keep=("features",), layout=LAYOUT) as tmp:
        for shard in listed["items"] + listed["seqs"]:
            _link(shard.path, tmp / shard.name)
        manifest = Manifest(name=name, domains=sorted(counts.per_domain), counts=counts.counts(), split=counts.split(),
                            items=listed["items"], seqs=listed["seqs"], provenance=provenance,
                            licence=spec["licence"])
        (tmp / "dataset.json").write_text(json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n")
    c = manifest.counts
    log.info("%s: %d users, %d items, %d interactions in %d + %d shards -> %s", name, c["users"], c["items"],
             c["interactions"], len(listed["items"]), len(listed["seqs"]), out_dir)
    return load_manifest(out_dir)


def _link(source: Path, target: Path) -> None:
    """A hard link (the build keeps its copy until the dataset is complete), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ------------------------------------------------------------------------------------------ the whole conversion
@dataclass
class Converted:
    """What a converter's step 2 hands on: the dataset's description and its sequences and items, still in the
    engine (``items``: SQL yielding ITEM_COLUMNS)."""

    name: str
    licence: str
    provenance: dict[str, Any]
    shard_size: int
    sequences: Sequences
    items: str


def check_options(args: dict[str, Any]) -> None:
    """The converters' numeric options, before any work: a shard of 0 samples or a k-core below 1 is no option."""
    for key, least in (("shard_size", 1), ("k_core", 1)):
        value = args.get(key, least)
        if type(value) is not int or value < least:
            flag = "--" + key.replace("_", "-")
            raise DataError(f"{key} ({flag}) must be an integer of at least {least}, got {value!r}")


class Phases:
    """Logs each phase of a conversion as it ends, with its time: a long conversion shows where it is."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()

    def done(self, what: str) -> None:
        now = time.perf_counter()
        log.info("%s (%.1f s, %.1f s in all)", what, now - self.last, now - self.started)
        self.last = now


def convert(out_dir: str | os.PathLike, identity: dict[str, Any], scale: Scale,
            step2: Callable[[Engine], Converted]) -> Optional[Manifest]:
    """A whole conversion: ``step2`` (the converter's reading and filtering, in the engine) unless a previous run
    with the same ``identity`` finished it, then the partitions, the shards and the dataset folder. Rerun after
    an interruption, it redoes only what is unfinished. None when ``scale.defer_shards``."""
    check_options(identity.get("args", {}))
    build = Build.open(out_dir, identity)
    try:
        if build.converted is None:
            phases = Phases()
            with build.engine(scale.memory_limit, scale.threads) as engine:
                done = step2(engine)
                phases.done("events read and filtered")
                done.sequences.write(build.path, done.items, scale.partitions)
                phases.done(f"{scale.partitions} partitions of sequences and items written")
            build.finish_conversion(name=done.name, licence=done.licence, provenance=done.provenance,
                                    shard_size=done.shard_size, partitions=scale.parts())
        return finish(build, scale)
    finally:
        build.unlock()


def finish(build: Build, scale: Scale) -> Optional[Manifest]:
    """Steps 3 and 4 in this process (and ``scale.workers`` processes), then the build folder goes; nothing
    (None) with ``scale.defer_shards``: the shards are written elsewhere."""
    if scale.defer_shards:
        log.info("sequences written to %s; write the shards with tools/write_shards.py %s", build.path, build.path)
        return None
    phases = Phases()
    written = write_shards(build.path, scale.workers)
    phases.done(f"shards: {written} partitions written by {scale.workers} worker(s), assembling {build.out_dir}")
    manifest = assemble(build.path, build.out_dir)
    build.remove()
    return manifest


# --------------------------------------------------------------------------------------------------- command line
def scale_from_args(args: Any) -> Scale:
    return Scale(args.partitions, args.workers, args.memory_limit, args.threads, args.defer_shards)


def rank_from_env(environ: Optional[dict[str, str]] = None) -> tuple[int, int]:
    """(rank, world size) of this shard writer: a SLURM array task (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of
    SLURM_ARRAY_TASK_COUNT), else the launcher's rank as training reads it (DistEnv: torchrun's RANK/WORLD_SIZE,
    srun's SLURM_PROCID/SLURM_NTASKS); (0, 1) alone."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        return (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
                int(env["SLURM_ARRAY_TASK_COUNT"]))
    from mmm4rec.distributed import DistEnv  # torch: only writers started by a launcher pay for it

    launched = DistEnv.from_environ(dict(env))
    return launched.rank, launched.world_size
