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

from .build import Converted, Scale, Sequences, convert
from .dataset import check_output
from .engine import Engine, Problems, csv_fields, quote
from .remote import Retry, get_url
from .schema import MAX_TIMESTAMP, BadRecords, DataError, Manifest
from .shards import IMAGE_SUFFIXES, image_ext, image_stem, sha256_file

log = logging.getLogger(__name__)

LICENCE = (
    "Amazon review data, for research use. 2018: Jianmo Ni, Jiacheng Li, Julian McAuley, Justifying "
    "recommendations using distantly-labeled reviews and fine-grained aspects, EMNLP 2019. 2023: Yupeng Hou, "
    "Jiacheng Li, Zhankui He, An Yan, Xiusi Chen, Julian McAuley, Bridging Language and Items for Retrieval and "
    "Recommendation, arXiv:2403.03952 (2024). Product images remain the property of their owners."
)
DESCRIPTION_CHARS = 1000  # encoders read ~128 tokens; longer descriptions only bloat the shards
URL_SCHEMES = ("http", "https")


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


def _literal_reviews(path: Path, rows: list[tuple[int, str]], bad: BadRecords) -> list[tuple[int, str, str, Any]]:
    """The review lines that are not JSON (Python dict literals, as in the 2018 files), parsed here: they are
    few. Returns (line, user, item, timestamp) of the usable ones; the others are reported."""
    found = []
    for n, line in rows:
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            bad.report("bad_record", f"{path}:{n}: neither JSON nor a Python dict literal ({e})")
            continue
        if not isinstance(rec, dict):
            bad.report("bad_record", f"{path}:{n}: not an object")
            continue
        try:
            user, stamp = str(rec["user_id"]), int(rec["timestamp"])
            item = str(rec.get("parent_asin") or rec["asin"])
        except (KeyError, TypeError, ValueError, OverflowError):
            bad.report("bad_record", f"{path}:{n}: review without user_id/parent_asin/timestamp: {str(rec)[:80]}")
            continue
        found.append((n, user, item, stamp))
    return found


def _json_text(j: str) -> str:
    """SQL: Python's str() of a decoded JSON value (NULL when absent)."""
    kind = f"json_type({j})"
    return (f"CASE {kind} WHEN 'VARCHAR' THEN json_extract_string({j}, '$') WHEN 'NULL' THEN 'None' "
            f"WHEN 'BOOLEAN' THEN CASE WHEN CAST({j} AS BOOLEAN) THEN 'True' ELSE 'False' END "
            f"ELSE CAST({j} AS VARCHAR) END")


def _json_int(j: str) -> str:
    """SQL: Python's int() of a decoded JSON value, NULL where it raises."""
    kind = f"json_type({j})"
    d = f"CAST({j} AS DOUBLE)"
    s = f"json_extract_string({j}, '$')"
    return (f"CASE {kind} WHEN 'BIGINT' THEN CAST({j} AS HUGEINT) WHEN 'UBIGINT' THEN CAST({j} AS HUGEINT) "
            f"WHEN 'DOUBLE' THEN CASE WHEN isfinite({d}) THEN CAST(trunc({d}) AS HUGEINT) END "
            f"WHEN 'VARCHAR' THEN CASE WHEN regexp_full_match({s}, '\\s*[+-]?\\d+(_\\d+)*\\s*') "
            f"THEN TRY_CAST({s} AS HUGEINT) END "
            f"WHEN 'BOOLEAN' THEN CASE WHEN CAST({j} AS BOOLEAN) THEN 1 ELSE 0 END END")


def load_reviews(engine: Engine, src: "DomainSource", bad: BadRecords, number: int) -> str:
    """Table of the domain's usable reviews (n, user, item, t) from a 2018 ratings CSV or a 2023 reviews JSONL
    (told apart by content), read by the engine; bad rows are reported in file order."""
    path = src.reviews
    with _open(path) as f:
        first = next((line for line in f if line.strip()), "")
    lines, table = f"review_lines_{number}", f"reviews_{number}"
    engine.read_lines(lines, path)
    problems = Problems(bad)
    if first.lstrip().startswith("{"):
        engine.query(f"""CREATE OR REPLACE TABLE rv AS SELECT n, line, json_valid(line) AS valid FROM {lines}
                         WHERE line IS NOT NULL AND trim(line) <> ''""", str(path))
        literal = _literal_reviews(path, engine.rows("SELECT n, line FROM rv WHERE NOT valid ORDER BY n"), bad)
        parent = "json_extract(line, '$.parent_asin')"
        truthy = (f"CASE json_type({parent}) WHEN 'VARCHAR' THEN json_extract_string({parent}, '$') <> '' "
                  f"WHEN 'BOOLEAN' THEN CAST({parent} AS BOOLEAN) WHEN 'BIGINT' THEN CAST({parent} AS HUGEINT) <> 0 "
                  f"WHEN 'DOUBLE' THEN CAST({parent} AS DOUBLE) <> 0 WHEN 'ARRAY' THEN json_array_length({parent}) > 0 "
                  f"WHEN 'OBJECT' THEN {parent} <> '{{}}' ELSE false END")
        asin = "json_extract(line, '$.asin')"
        item = f"CASE WHEN {truthy} THEN {_json_text(parent)} ELSE {_json_text(asin)} END"
        engine.execute(f"""CREATE OR REPLACE TABLE rv_parsed AS SELECT n, json_type(line) = 'OBJECT' AS object,
            {_json_text("json_extract(line, '$.user_id')")} AS user, {item} AS item,
            {_json_int("json_extract(line, '$.timestamp')")} AS stamp FROM rv WHERE valid""")
        engine.table_from_arrow("rv_literal", _arrow(literal))
        engine.execute(f"""CREATE OR REPLACE TABLE {table} AS SELECT n, user, item,
            CAST(floor(stamp / 1000) AS HUGEINT) AS t FROM (
                SELECT n, user, item, stamp FROM rv_parsed WHERE object AND user IS NOT NULL AND item IS NOT NULL
                    AND stamp IS NOT NULL
                UNION ALL SELECT n, user, item, CAST(stamp AS HUGEINT) FROM rv_literal)""")
        problems.add_query(engine, f"""
            SELECT n AS line, 'bad_record' AS reason, {quote(f'{path}:')} || n ||
                   CASE WHEN object THEN ': review without user_id/parent_asin/timestamp' ELSE ': not an object' END
                   AS message FROM rv_parsed WHERE NOT (object AND user IS NOT NULL AND item IS NOT NULL
                                                       AND stamp IS NOT NULL)
            UNION ALL
            SELECT n, 'bad_timestamps', {quote(f'{path}: user ')} || pyrepr(user) || ': timestamp ' || t ||
                   ' s is not between 1970 and the year 9999' FROM {table} WHERE t < 0 OR t > {MAX_TIMESTAMP}""")
        for name in ("rv", "rv_parsed", "rv_literal"):
            engine.execute(f"DROP TABLE {name}")
    else:
        stamp = "TRY_CAST(f[4] AS DOUBLE)"
        engine.query(f"""CREATE OR REPLACE TABLE rv AS SELECT n, f, len(f) = 4 AND isfinite({stamp}) AS ok,
            CASE WHEN len(f) = 4 AND isfinite({stamp}) THEN CAST(trunc({stamp}) AS HUGEINT) END AS t
            FROM (SELECT n, {csv_fields('line', ',')} AS f FROM {lines} WHERE line IS NOT NULL)""", str(path))
        engine.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT n, f[2] AS user, f[1] AS item, t FROM rv WHERE ok")
        problems.add_query(engine, f"""
            SELECT n AS line, 'bad_record' AS reason, {quote(f'{path}:')} || n ||
                   ': expected item,user,rating,timestamp' AS message FROM rv WHERE NOT ok AND n > 1
            UNION ALL
            SELECT n, 'bad_timestamps', {quote(f'{path}:')} || n || ': timestamp ' || t ||
                   ' s is not between 1970 and the year 9999' FROM {table} WHERE t < 0 OR t > {MAX_TIMESTAMP}""")
        engine.execute("DROP TABLE rv")
    problems.flush()
    engine.drop_lines(lines)
    engine.execute(f"DELETE FROM {table} WHERE t < 0 OR t > {MAX_TIMESTAMP}")
    return table


def _arrow(rows: list[tuple[int, str, str, Any]]) -> Any:
    import pyarrow as pa

    columns = list(zip(*rows)) or [[], [], [], []]
    return pa.table({"n": pa.array(columns[0], pa.int64()), "user": pa.array(columns[1], pa.string()),
                     "item": pa.array(columns[2], pa.string()),
                     "stamp": pa.array([str(s) for s in columns[3]], pa.string())})


def prepare(domains: list[DomainSource], out_dir: str | Path, name: str, shard_size: int = 1000, k: int = 5,
            strict: bool = False, scale: Scale = Scale()) -> Manifest:
    """Each domain is filtered on its own (k-core per category); users are keyed per domain."""
    if len({d.name for d in domains}) != len(domains):
        raise DataError("domain names must be unique")
    check_output(out_dir, [p for d in domains for p in (d.reviews, d.meta, d.images)])  # before reading them
    sources = [{"domain": d.name, "file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
               for d in domains for p in (d.reviews, d.meta)]
    args = {"k_core": k, "shard_size": shard_size, "strict": strict,
            "domains": {d.name: {"images": d.images is not None} for d in domains}, **scale.args()}

    def step2(engine: Engine) -> Converted:
        import pyarrow as pa

        bad = BadRecords(strict)
        selects, counts = [], {}
        engine.execute("CREATE OR REPLACE TABLE meta (domain VARCHAR, item VARCHAR, text VARCHAR, meta VARCHAR, "
                       "image_dir VARCHAR)")
        for number, src in enumerate(sorted(domains, key=lambda d: d.name)):
            meta = {item: m for item, m in read_meta(src.meta, bad).items() if m.text}
            engine.append("meta", pa.table({
                "domain": [src.name] * len(meta), "item": list(meta), "text": [m.text for m in meta.values()],
                "meta": [json.dumps({"id": item, **{f.lower(): v for f, v in m.fields.items() if v}})
                         for item, m in meta.items()],
                "image_dir": [str(src.images) if src.images is not None else None] * len(meta)}))
            table = load_reviews(engine, src, bad, number)
            d = quote(src.name)
            counts[src.name] = engine.rows(f"""SELECT count(*), count(*) FILTER (WHERE item NOT IN
                (SELECT item FROM meta WHERE domain = {d})) FROM {table}""")[0]
            selects.append(f"SELECT {d} AS domain, user, item, CAST(t AS BIGINT) AS t FROM {table} "
                           f"WHERE item IN (SELECT item FROM meta WHERE domain = {d})")
        sequences = Sequences(engine, k)
        stats = sequences.build(" UNION ALL ".join(selects))
        filtering: dict[str, Any] = {}
        for domain, (reviews, without_text) in counts.items():
            filtering[domain] = {"reviews": reviews, "reviews_without_item_text": without_text,
                                 **sequences.stats_of(stats, domain)}
            log.info("%s: %s", domain, filtering[domain])
        provenance = {
            "converter": "mmm4rec.data.amazon",
            "args": args,
            "sources": sources,
            "filtering": filtering,
            "images_with_file": 0,  # the shard writers count them
            "skipped": bad.as_dict(),
            "feedback": "implicit: every review is an interaction",
        }
        items = (f"SELECT k.domain || ':' || k.item AS key, m.text, m.meta, NULL::VARCHAR AS image_file, "
                 f"m.image_dir, k.item AS image_id, NULL::VARCHAR AS \"where\" FROM ({sequences.kept_items()}) k "
                 f"JOIN meta m ON m.domain = k.domain AND m.item = k.item")
        return Converted(name, LICENCE, provenance, shard_size, sequences, items)

    return convert(out_dir, {"converter": "mmm4rec.data.amazon", "args": args, "sources": sources, "name": name,
                             "images": [str(d.images) for d in domains]}, scale, step2)


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
