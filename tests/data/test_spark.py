"""mmm4rec.data.spark: the Spark path of build step 2 against the in-memory reference (interactions.build_sequences)
and the DuckDB path (build.Sequences), row for row. Spark runs in local mode; one session for the module."""
from __future__ import annotations

import json
import random
import runpy
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed")
if shutil.which("java") is None:
    pytest.skip("no java on PATH: Spark needs a JVM (Java 17+)", allow_module_level=True)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from mmm4rec.data.build import (BUILD_FORMAT, ITEM_COLUMNS, Sequences, assemble, partition,  # noqa: E402
                                 write_shards)
from mmm4rec.data.engine import Engine, ident  # noqa: E402
from mmm4rec.data.interactions import build_sequences  # noqa: E402
from mmm4rec.data.schema import DataError  # noqa: E402
from mmm4rec.data.spark import (partition_column, partition_salt, read_events, spark_kcore,  # noqa: E402
                                 write_sequences)


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("mmm4rec-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2").config("spark.driver.memory", "1g")
               .config("spark.local.dir", str(tmp_path_factory.mktemp("spark-local"))).getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# ------------------------------------------------------------------------------------------------- synthetic events
NAMES = ["a", "B", "z", "é", "ü", "日本", "\uff5e", "😀", "0", " x"]  # ～ < 😀 in code points, not in UTF-16


def mixed_events(seed: int = 0) -> list[tuple[str, str, str, int]]:
    """(domain, user id, item id, t): two random domains with power-law items, few distinct seconds (ties broken by
    item), exact duplicates; a chain domain whose k-core takes many rounds; a domain that is filtered away."""
    rng = random.Random(seed)
    rows = []
    for domain, n_rows, n_users, n_items in (("books", 2500, 150, 120), ("é-films", 1500, 100, 200)):
        weights = [1 / (i + 1) for i in range(n_items)]
        items = [f"{rng.choice(NAMES)}{i}" for i in range(n_items)]
        users = [f"{rng.choice(NAMES)}{rng.randrange(10_000)}" for _ in range(n_users)]
        for _ in range(n_rows):
            rows.append((domain, rng.choice(users), rng.choices(items, weights)[0], rng.randrange(1_000, 1_020)))
    # chain (k=3): user j holds items j..j+2; the ends fall below k and the cut travels inwards, one user or item
    # a round; beside it a 3 x 3 block that stays
    for j in range(5):
        for i in range(j, j + 3):
            rows.append(("chain", f"u{j:02d}", f"i{i:02d}", 5 + i))
    rows += [("chain", f"block-u{j}", f"block:i{i}", 5) for j in range(3) for i in range(3)]
    rows += [("gone", f"u{j}", "日本", 7) for j in range(3)]
    rows += rng.sample(rows, 300)  # exact duplicates
    rng.shuffle(rows)
    return rows


def single_user_events() -> list[tuple[str, str, str, int]]:
    """One user (k=1: two of three partitions empty), equal seconds, one duplicate."""
    return [("s", "ü", item, t) for item, t in
            (("b", 3), ("a", 3), ("😀", 3), ("\uff5e", 3), ("a", 3), ("z", 1), ("é", 9))]


CASES = {"mixed": (mixed_events, 3), "single_user": (single_user_events, 1)}


def _reference(rows: list[tuple[str, str, str, int]], k: int) -> dict[str, dict[str, int]]:
    out = {}
    for domain in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == domain]
        out[domain] = build_sequences(domain, [f"{domain}:{r[1]}" for r in mine], [f"{domain}:{r[2]}" for r in mine],
                                      [r[3] for r in mine], k).stats
    return out


def _arrow(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    cols = list(zip(*rows))
    return pa.table({"domain": pa.array(cols[0], pa.string()), "user": pa.array(cols[1], pa.string()),
                     "item": pa.array(cols[2], pa.string()), "t": pa.array(cols[3], pa.int64())})


def _duckdb(rows: list[tuple[str, str, str, int]], k: int, parts: int, folder: Path) -> dict[str, dict[str, int]]:
    with Engine(folder / "engine") as engine:
        engine.table_from_arrow("events_in", _arrow(rows))
        seq = Sequences(engine, k)
        stats = seq.build("SELECT * FROM events_in")
        no_items = "SELECT " + ", ".join(f"NULL::VARCHAR AS {ident(c)}" for c in ITEM_COLUMNS) + " WHERE false"
        seq.write(folder, no_items, parts)
    return stats


def _partition_rows(folder: Path) -> list[tuple]:
    """Every row of a partition folder, its files read in name order (as the shard writer reads them)."""
    out = []
    for path in sorted(folder.glob("*.parquet")):
        t = pq.read_table(path, columns=["user", "domain", "item", "timestamp"])
        assert t.schema.field("timestamp").type == pa.int64()
        out += list(zip(*(t.column(c).to_pylist() for c in ("user", "domain", "item", "timestamp"))))
    return out


@pytest.fixture(scope="module")
def spark_runs(spark, tmp_path_factory):
    """Each case written with P = 1 and 3: {(case, P): (stats, build folder)}; spark_kcore runs once per case
    (its rounds are most of this file's time), write_sequences twice (spark_sequences, the two together, runs
    in test_command_line). The mixed case with every join shuffled (broadcast_keys=0) and local checkpoints, the
    other with its joins broadcast and its rounds checkpointed into the context's checkpoint folder."""
    spark.sparkContext.setCheckpointDir(str(tmp_path_factory.mktemp("spark-checkpoints")))
    runs = {}
    for name, (make, k) in CASES.items():
        df = spark.createDataFrame(make(), "domain string, user string, item string, t long")
        if name == "mixed":
            core = spark_kcore(spark, df, k, broadcast_keys=0, checkpoint="local")
        else:  # the default: reliable checkpoints, as the context has a checkpoint folder
            core = spark_kcore(spark, df, k)
        for parts in (1, 3):
            folder = tmp_path_factory.mktemp(f"spark-{name}-{parts}")
            write_sequences(spark, core, folder, parts)
            runs[name, parts] = core.stats, folder
        core.release()
    return runs


@pytest.mark.parametrize("case", sorted(CASES))
def test_stats_equal_the_reference(spark_runs, case):
    make, k = CASES[case]
    rows = make()
    expected = _reference(rows, k)
    for parts in (1, 3):
        assert spark_runs[case, parts][0] == expected
    if case == "mixed":  # the case exercises what it should
        assert expected["chain"][f"{k}core_rounds"] >= 4 and expected["chain"][f"rows_after_{k}core"] == 9
        assert expected["books"][f"{k}core_rounds"] != expected["chain"][f"{k}core_rounds"]
        assert expected["gone"][f"rows_after_{k}core"] == 0
        assert all(s["duplicate_rows"] > 0 for d, s in expected.items() if d in ("books", "é-films"))


@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_partitions_equal_duckdb(spark_runs, tmp_path, case, parts):
    make, k = CASES[case]
    rows = make()
    stats, folder = spark_runs[case, parts]
    assert _duckdb(rows, k, parts, tmp_path) == stats
    assert sorted(p.name for p in (folder / "seqs").glob("part=*")) == [f"part={p}" for p in range(parts)]
    total = 0
    for p in range(parts):
        ours = folder / "seqs" / f"part={p}"
        assert len(list(ours.glob("*.parquet"))) == 1
        got, want = _partition_rows(ours), _partition_rows(tmp_path / "seqs" / f"part={p}")
        assert got == want
        # the contract itself: sorted by (user, timestamp, item) in code point order, each user in its partition
        assert got == sorted(got, key=lambda r: (r[0], r[3], r[2]))
        assert all(partition(r[0], parts) == p for r in got)
        total += len(got)
    assert total == sum(s[f"rows_after_{k}core"] for s in stats.values())
    if case == "single_user" and parts == 3:
        assert sum(1 for p in range(3) if not _partition_rows(folder / "seqs" / f"part={p}")) == 2


@pytest.mark.parametrize("parts", [1, 3])
def test_shard_writer_takes_the_spark_folder(spark_runs, tmp_path, parts):
    """The hand-off: a build folder whose seqs/ Spark wrote gives the dataset of the all-DuckDB build, byte for
    byte (the items, convert.json from the DuckDB build: this path writes the sequences only)."""
    make, k = CASES["mixed"]
    stats, spark_build = spark_runs["mixed", parts]
    duck = tmp_path / "duck"
    with Engine(duck / "engine") as engine:
        engine.table_from_arrow("events_in", _arrow(make()))
        seq = Sequences(engine, k)
        seq.build("SELECT * FROM events_in")
        key = "domain || ':' || item"
        seq.write(duck, f"""SELECT {key} AS key, 'Title: ' || item AS text, '{{}}' AS meta, NULL::VARCHAR AS image_file,
                                   NULL::VARCHAR AS image_dir, NULL::VARCHAR AS image_id, {key} AS "where"
                            FROM ({seq.kept_items()})""", parts)
    shutil.rmtree(duck / "engine")
    (duck / "convert.json").write_text(json.dumps({
        "format": BUILD_FORMAT, "name": "mixed", "licence": "test", "provenance": {"k_core": k}, "shard_size": 40,
        "partitions": {"items": parts, "seqs": parts}}))
    mixed = tmp_path / "mixed"
    shutil.copytree(duck, mixed, ignore=shutil.ignore_patterns("seqs"))
    shutil.copytree(spark_build / "seqs", mixed / "seqs")
    datasets = []
    for build in (duck, mixed):
        write_shards(build)
        datasets.append(assemble(build, tmp_path / f"out-{build.name}"))
    assert datasets[0].counts == datasets[1].counts
    assert datasets[0].counts["interactions"] == sum(s[f"rows_after_{k}core"] for s in stats.values())
    files = [sorted(p.relative_to(tmp_path / f"out-{b}") for p in (tmp_path / f"out-{b}").rglob("*") if p.is_file())
             for b in ("duck", "mixed")]
    assert files[0] == files[1] and len([f for f in files[0] if f.name.startswith("seqs")]) >= parts
    for name in files[0]:
        assert (tmp_path / "out-duck" / name).read_bytes() == (tmp_path / "out-mixed" / name).read_bytes(), name


def test_partition_function_and_salt(spark):
    from pyspark.sql import functions as F

    keys = ["", "a", "é", "日本:1", "😀", "books:x y", *(f"u{i}" for i in range(200))]
    got = spark.createDataFrame([(key,) for key in keys], "user string").select(
        "user", partition_column("user", 7).alias("p")).collect()
    assert {r.user: r.p for r in got} == {key: partition(key, 7) for key in keys}
    for parts in (1, 5, 37):
        salt = partition_salt(spark, parts)
        placed = salt.repartition(parts, "salt").select("part", F.spark_partition_id().alias("sp")).collect()
        assert sorted((r.part, r.sp) for r in placed) == [(p, p) for p in range(parts)]


def test_read_events(spark, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("user,item,timestamp\n"
                   " u1 ,i1,10\n"  # trimmed
                   "u2,i2,978301000.0\n"  # an integral float
                   "u3,i3,1_000\n"  # Python's int() reads it
                   '"u""4",\u00a0i4\u3000,+5\n'  # quoted, Unicode whitespace trimmed
                   ",i5,1\n"  # no user: bad_record
                   "u6,,\n"  # no item (named first): bad_record
                   "u7,i7\n"  # too few fields: bad_record
                   "u8,i8,1,2\n"  # too many: bad_record
                   "u9,i9,1.5\n"  # bad_timestamps
                   "u10,i10,\n"  # empty: bad_timestamps
                   "u11,i11,99999999999999\n"  # after the year 9999: bad_timestamps
                   "u12,i12,1e3\n"
                   "u13,i13,12d\n"  # Java would parse it, Python does not: bad_timestamps
                   "\n", encoding="utf-8")
    events, skipped = read_events(spark, csv, "web")
    assert skipped == {"bad_record": 4, "bad_timestamps": 4}
    assert sorted(tuple(r) for r in events.collect()) == sorted([
        ("web", "u1", "i1", 10), ("web", "u2", "i2", 978301000), ("web", "u3", "i3", 1000), ("web", 'u"4', "i4", 5),
        ("web", "u12", "i12", 1000)])
    with pytest.raises(ValueError, match="domain"):
        read_events(spark, csv)

    table = pa.table({"domain": ["a", "b", "c:d", "a", None, "b"], "user": [1, 2, 3, None, 5, 6],
                      "item": [1.0, 2.5, 3.0, 4.0, 5.0, float("nan")],
                      "timestamp": pa.array([1, 2, 3, 4, 5, 6], pa.int64())})
    pq.write_table(table, tmp_path / "events.parquet")
    events, skipped = read_events(spark, tmp_path / "events.parquet")
    assert skipped == {"bad_record": 4}
    assert sorted(tuple(r) for r in events.collect()) == [("a", "1", "1", 1), ("b", "2", "2.5", 2)]

    # Parquet timestamps, with a time zone or naive (= UTC): seconds rounded down, before 1970 refused
    micros = [1_500_000, -500_000, None, 253_402_300_799_999_999]
    table = pa.table({"user": ["u1", "u2", "u3", "u4"], "item": ["i", "i", "i", "i"],
                      "aware": pa.array(micros, pa.timestamp("us", tz="UTC")),
                      "naive": pa.array(micros, pa.timestamp("us"))})
    pq.write_table(table, tmp_path / "stamps.parquet")
    for column in ("aware", "naive"):
        events, skipped = read_events(spark, tmp_path / "stamps.parquet", "d", timestamp=column)
        assert skipped == {"bad_timestamps": 2}
        assert sorted(tuple(r) for r in events.collect()) == [("d", "u1", "i", 1), ("d", "u4", "i", 253_402_300_799)]


def test_command_line(spark, tmp_path):
    """tools/spark_sequences.py in this process (it uses the running session and leaves it running)."""
    csv = tmp_path / "events.csv"
    csv.write_text("user,item,timestamp\n" + "".join(f"u{u},i{i},{u + i}\n" for u in range(4) for i in range(3))
                   + "u0,i0,0\n" + ",i1,5\n" + "u9,i1,soon\n", encoding="utf-8")
    main = runpy.run_path(str(Path(__file__).resolve().parents[2] / "tools" / "spark_sequences.py"))["main"]
    build = tmp_path / "build"
    assert main(["--events", str(csv), "--domain", "web", "--k", "3", "--partitions", "2", "--build", str(build)]) == 0
    report = json.loads((build / "spark_stats.json").read_text())
    assert report["domains"] == {"web": {"rows": 13, "duplicate_rows": 1, "rows_after_3core": 12, "3core_rounds": 1,
                                         "users": 4, "items": 3}}
    assert report["skipped"] == {"bad_record": 1, "bad_timestamps": 1}
    got = sorted(r for p in range(2) for r in _partition_rows(build / "seqs" / f"part={p}"))
    assert got == sorted((f"web:u{u}", "web", f"web:i{i}", u + i) for u in range(4) for i in range(3))
    assert spark.range(1).count() == 1  # still running


def test_events_checked(spark):
    from mmm4rec.data.schema import DataError

    df = spark.createDataFrame([("d", "u", "i", 1), ("d", None, "i", 2)],
                               "domain string, user string, item string, t long")
    with pytest.raises(DataError, match="null"):
        spark_kcore(spark, df, 1)
    with pytest.raises(DataError, match="missing: t"):
        spark_kcore(spark, df.drop("t"), 1)


def test_a_spark_build_finished_with_the_item_table_is_the_single_machine_dataset(spark, tmp_path):
    """The whole hand-off as a user runs it: tools/spark_sequences.py (events -> seqs/), then
    tables.prepare_items_for (the item table -> items/, convert.json) and the shard writer: the dataset equals the
    one tools/prepare_tables.py writes from the same two tables, record for record."""
    from mmm4rec.data import tables
    from mmm4rec.data.build import Scale
    from mmm4rec.data.schema import BadRecords
    from mmm4rec.data.shards import iter_item_records, iter_seq_records

    rng = random.Random(3)
    events = tmp_path / "events.csv"
    rows = [f"u{rng.randrange(60)},i{min(int(rng.paretovariate(1.2)), 40)},{1_000 + rng.randrange(50)}"
            for _ in range(1500)]
    events.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "".join(f"i{i},Item {i} é\n" for i in range(41)))
    fields = [tables.TextField.parse("title")]
    expected = tables.prepare(events, items, tmp_path / "single", text_fields=fields, name="shop",
                              scale=Scale(partitions=3))
    build = tmp_path / ".spark.build"
    main = runpy.run_path(str(Path(__file__).resolve().parents[2] / "tools" / "spark_sequences.py"))["main"]
    assert main(["--events", str(events), "--domain", "shop", "--k", "5", "--partitions", "3",
                 "--build", str(build)]) == 0
    got = tables.prepare_items_for(build, items, tmp_path / "spark", text_fields=fields, name="shop")
    assert got.counts == expected.counts and got.split == expected.split

    def records(m):
        bad = BadRecords(strict=True)
        return ([(r.key, r.text, r.meta) for _, r in iter_item_records(m.items, bad)],
                [(r.user, r.items, r.timestamps.tolist()) for _, r in iter_seq_records(m.seqs, bad)])

    assert records(got) == records(expected)
    assert [s.sha256 for s in got.items + got.seqs] == [s.sha256 for s in expected.items + expected.seqs]
    assert got.provenance["converter"] == "mmm4rec.data.spark" and not build.exists()
    with pytest.raises(DataError, match="no usable row in"):
        short = tmp_path / "short.csv"
        short.write_text("item,title\ni0,Item 0\n")
        assert main(["--events", str(events), "--domain", "shop", "--k", "5", "--partitions", "3",
                     "--build", str(build)]) == 0
        tables.prepare_items_for(build, short, tmp_path / "spark2", text_fields=fields, name="shop")


def test_time_formats_read_as_the_converter_reads_them(spark, tmp_path):
    """--time-format on the Spark path: milliseconds (floored) and ISO-8601 text (with offsets, without = UTC
    whatever the session's time zone, date only, fractions cut off) give the seconds the single-machine
    converter's rules give (tables.seconds_as); a wrong unit is an error with the converter's hint, judged on the
    first rows."""
    from datetime import datetime, timedelta, timezone

    from mmm4rec.data.schema import InvalidRecord
    from mmm4rec.data.tables import seconds_as

    seconds = [0, 1, 59, 978_300_760, 1_600_000_000, 1_700_000_001, 253_402_300_799]
    texts = [datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None).isoformat() for t in seconds]
    texts += [datetime.fromtimestamp(t, timezone.utc).astimezone(timezone(timedelta(hours=-5))).isoformat()
              for t in seconds[1:-1]]
    texts += ["2020-02-29", "2020-02-29 10:00", "2020-02-29T10:00:00.999999Z", "2020-02-29T10:00:00+0130",
              "1969-12-31T23:59:59.5Z", "2020-13-01", "2020", "1600000000", ""]
    # milliseconds before 1973-03-04 are seconds read as milliseconds (bad): 59 s is, 10^8 s the first that is not
    cases = {"unix_ms": [str(t * 1000 + 999) for t in [59, 100_000_000, *seconds[3:]]] + ["-1", "1.5", "x"],
             "iso8601": texts}
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")  # must not matter
    try:
        for fmt, values in cases.items():
            csv = tmp_path / f"{fmt}.csv"
            csv.write_text("user,item,timestamp\n" + "".join(f"u{n},i{n},{v}\n" for n, v in enumerate(values)))
            expected, bad = {}, 0
            for n, v in enumerate(values):
                try:
                    expected[f"u{n}"] = seconds_as(v, fmt)
                except InvalidRecord:
                    bad += 1
            events, skipped = read_events(spark, csv, "web", time_format=fmt)
            assert {r.user: r.t for r in events.collect()} == expected, fmt
            assert skipped == {"bad_timestamps": bad}, fmt
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)

    ms = tmp_path / "ms.csv"
    ms.write_text("user,item,timestamp\n" + "".join(f"u{n},i{n},{1_600_000_000_000 + n}\n" for n in range(50)))
    with pytest.raises(DataError, match=r"ms.csv: row 1 of the first read: timestamp .* \(50 of the first 50 "
                                        r"timestamps\); looks like milliseconds: use --time-format unix_ms"):
        read_events(spark, ms, "web")
    with pytest.raises(DataError, match="--time-format 'ms'"):
        read_events(spark, ms, "web", time_format="ms")
    main = runpy.run_path(str(Path(__file__).resolve().parents[2] / "tools" / "spark_sequences.py"))["main"]
    build = tmp_path / "build"
    assert main(["--events", str(ms), "--domain", "web", "--k", "1", "--build", str(build),
                 "--time-format", "unix_ms"]) == 0
    report = json.loads((build / "spark_stats.json").read_text())
    assert report["time_format"] == "unix_ms" and report["skipped"] == {}
    assert {r[3] for r in _partition_rows(build / "seqs" / "part=0")} == {1_600_000_000}


def test_hostile_inputs_are_skips_or_one_line_errors(spark, tmp_path):
    """As the converter reads them (tests/data/test_hostile_tables.py): a quoted id spanning lines costs its lines
    (its second line was a row of user `x"`), a key with a NUL is a bad_record (it failed the shard writer), and a
    folder of Parquet files whose timestamp column is a number in one file and text in another, a glob matching
    no file and an empty CSV are one-line DataErrors naming the path (a Java traceback before)."""
    csv = tmp_path / "events.csv"
    csv.write_text('user,item,timestamp\n"u0\nx",i0,10\nu1,i1,11\n"u""2",i2,12\na\0b,i3,13\nu4,i4\0,14\n')
    events, skipped = read_events(spark, csv, "web")
    assert skipped == {"bad_record": 4}
    assert sorted(tuple(r) for r in events.collect()) == [("web", 'u"2', "i2", 12), ("web", "u1", "i1", 11)]
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"user": ["a"], "item": ["i"], "timestamp": [10]}), parts / "a.parquet")
    pq.write_table(pa.table({"user": ["b"], "item": ["i"], "timestamp": ["10"]}), parts / "b.parquet")
    with pytest.raises(DataError, match=r"parts: cannot read: \[CANNOT_MERGE_SCHEMAS\]"):
        read_events(spark, parts, "web")
    with pytest.raises(DataError, match=r"\*\.parquet: cannot read: \[PATH_NOT_FOUND\]"):
        read_events(spark, tmp_path / "*.parquet", "web")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        read_events(spark, tmp_path / "empty.csv", "web")
