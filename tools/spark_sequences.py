"""Build step 2 on Spark: an interaction table -> k-core user sequences in a build folder's ``seqs/part=<p>/``
(the hand-off contract of mmm4rec.data.build), with ``spark_stats.json`` beside them: per domain the filtering
statistics (rows, duplicate_rows, rows_after_<k>core, <k>core_rounds, users, items) and the rows skipped by
reason (bad_record, bad_timestamps; counts only: the file and line of each bad row are reported by the
single-machine converter, tools/prepare_tables.py).

Locally (Spark in this process, pyspark installed, Java 17+):

  python tools/spark_sequences.py --events raw/events.parquet --domain shop --k 5 --partitions 8 \\
      --build data/.shop.build --master "local[4]"

On a cluster, with spark-submit from the repository root (the driver imports mmm4rec from it; the executors run
no Python: everything is DataFrame operations). Client deploy mode; in cluster mode ship the package to the
driver with ``zip -r mmm4rec.zip mmm4rec`` and ``--py-files mmm4rec.zip`` (it needs numpy there):

  spark-submit --master yarn --deploy-mode client --driver-memory 8g --executor-memory 16g \\
      --conf spark.sql.shuffle.partitions=2000 --conf spark.checkpoint.dir=hdfs:///tmp/mmm4rec-checkpoints \\
      tools/spark_sequences.py --table logs.events --domain shop --k 5 --partitions 256 \\
      --build file:///shared/data/.shop.build

--events reads a Parquet, CSV or TSV table (a file or a folder of part files, any Hadoop file system); --table a
table of the session's catalogue (Hive: --conf spark.sql.catalogImplementation=hive). Without a domain column,
--domain names the one domain. The executors write the partitions, so --build must be a folder they share with
the machines that write the shards afterwards (a shared file system), or an hdfs:// / s3a:// folder to copy down
(``hdfs dfs -get``). ``spark.checkpoint.dir`` makes every k-core round a reliable checkpoint (survives a lost
executor); without it the rounds are local checkpoints. --master is for local runs: under spark-submit leave it
out.

The item side of the build (items/part=<p>/) and convert.json come from the converter's item catalogue; the
items kept after filtering are the distinct item keys of the sequences.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repository

from mmm4rec.data.engine import TIME_FORMATS  # noqa: E402
from mmm4rec.data.schema import DataError  # noqa: E402
from mmm4rec.data.spark import clean_events, local_path, read_events, spark_sequences  # noqa: E402
from mmm4rec.tool import error_line, tool_errors  # noqa: E402


def write_text(spark, target: str, text: str) -> None:
    """A small text file in the build folder: a local path, or any Hadoop file system (hdfs://, s3a://)."""
    local = local_path(target)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text, encoding="utf-8")
        return
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(target)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    out = fs.create(path, True)
    try:
        out.write(bytearray(text.encode()))
    finally:
        out.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="Parquet, CSV or TSV table (file or folder) of interactions")
    source.add_argument("--table", help="a table of the Spark catalogue (Hive) instead of --events")
    p.add_argument("--domain", help="the domain of every row (required without a domain column)")
    p.add_argument("--domain-col", default="domain", help="domain column, where the table has one (default: domain)")
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--time-col", default="timestamp", help="time column (default: timestamp)")
    p.add_argument("--time-format", default="unix", choices=TIME_FORMATS,
                   help="what the time column holds, as for `mmm4rec prepare`: unix (seconds, the default), unix_ms, "
                        "iso8601 (UTC where no offset is given); a Spark timestamp column is read as such")
    p.add_argument("--format", choices=("parquet", "csv", "tsv"), help="default: from the file name")
    p.add_argument("--k", type=int, default=5, help="k-core: every user and item keeps at least k rows (default 5)")
    p.add_argument("--partitions", type=int, default=1, help="sequence partitions P (default 1)")
    p.add_argument("--build", required=True, help="build folder: seqs/part=<p>/ and spark_stats.json go there")
    p.add_argument("--master", help="Spark master for a local run, e.g. local[4] (spark-submit sets its own)")
    p.add_argument("--checkpoint", choices=("local", "reliable"),
                   help="how k-core rounds are materialised (default: reliable if spark.checkpoint.dir is set)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()  # a caller's session (a test, a notebook) is used, not stopped
    builder = SparkSession.builder.appName("mmm4rec-spark-sequences")
    if args.master:
        builder = builder.master(args.master)
    spark = existing or builder.getOrCreate()
    started = time.perf_counter()
    try:
        columns = dict(user=args.user_col, item=args.item_col, timestamp=args.time_col, domain_column=args.domain_col,
                       time_format=args.time_format)
        if args.events:
            events, skipped = read_events(spark, args.events, args.domain, fmt=args.format, **columns)
        else:
            events, skipped = clean_events(spark.table(args.table), args.domain, where=args.table, **columns)
        stats = spark_sequences(spark, events, args.build, args.k, args.partitions, checkpoint=args.checkpoint)
        report = {"source": args.events or f"table {args.table}", "time_format": args.time_format, "k": args.k,
                  "partitions": args.partitions,
                  "domains": stats, "skipped": skipped, "seconds": round(time.perf_counter() - started, 1),
                  "spark": spark.version}
        text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
        write_text(spark, args.build.rstrip("/") + "/spark_stats.json", text)
        print(text, end="")
    except (DataError, OSError) as e:  # returned, not raised: a caller in this process keeps its session
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    finally:
        if existing is None:
            spark.stop()
    return 0


if __name__ == "__main__":
    with tool_errors():
        sys.exit(main())
