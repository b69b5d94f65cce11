"""The table converter (mmm4rec.data.tables, `mmm4rec prepare`) fed as a careless or hostile user feeds it: typed
Parquet columns it must read, keys the shards cannot hold, CSV exports with a byte-order mark or a value spanning
lines, a k-core too small for leave-one-out, inputs kept inside the output folder, a table rewritten while it
is read. Each case: a one-line error naming the file/row/key, or a counted skip, never a late failure, a wrong
key or a deleted input."""
from __future__ import annotations

import decimal
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import write_csv

from mmm4rec.data import tables
from mmm4rec.data.schema import BadRecords, DataError
from mmm4rec.data.shards import iter_seq_records
from mmm4rec.data.tables import TextField

T0 = 1_600_000_000
TITLE = [TextField("title", "Title")]


def events(users: int = 4, items: int = 6) -> list[tuple[str, str, int]]:
    return [(f"u{u}", f"i{i}", T0 + 100 * u + i) for u in range(users) for i in range(items)]


def item_table(folder: Path, keys=tuple(f"i{i}" for i in range(6))) -> Path:
    return write_csv(folder / "items.csv", ["item", "title"], ((k, f"Title of {k}") for k in keys))


def users_of(manifest) -> dict[str, int]:
    return {r.user: len(r.items) for _, r in iter_seq_records(manifest.seqs, BadRecords(strict=True))}


def test_parquet_decimal_timestamps_are_unix_seconds(tmp_path):
    """A DECIMAL(p, 0) column (Spark, Hive and database exports write integers so) holds integer seconds: every
    row was a bad timestamp whose message called '1600000000' not integer Unix seconds."""
    rows = events()
    stamps = [decimal.Decimal(t) for *_, t in rows]
    stamps[0] = decimal.Decimal("1600000000.50")  # a fraction stays a bad timestamp
    pq.write_table(pa.table({"user": [u for u, _, _ in rows], "item": [i for _, i, _ in rows],
                             "timestamp": pa.array(stamps, pa.decimal128(14, 2))}), tmp_path / "ev.parquet")
    m = tables.prepare(tmp_path / "ev.parquet", item_table(tmp_path), tmp_path / "ds", text_fields=TITLE, k=1)
    assert m.counts["interactions"] == len(rows) - 1 and m.provenance["skipped"] == {"bad_timestamps": 1}
    ms = [decimal.Decimal(t * 1000) for *_, t in rows]
    pq.write_table(pa.table({"user": [u for u, _, _ in rows], "item": [i for _, i, _ in rows],
                             "timestamp": pa.array(ms, pa.decimal128(18, 0))}), tmp_path / "ms.parquet")
    m = tables.prepare(tmp_path / "ms.parquet", item_table(tmp_path), tmp_path / "ms", text_fields=TITLE, k=1,
                       time_format="unix_ms")
    assert m.counts["interactions"] == len(rows) and not m.provenance["skipped"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_key_with_a_nul_is_a_bad_record_at_its_line(tmp_path, fmt):
    """An item key with a NUL passed the reader and failed the whole conversion in the shard writer ('item ... is
    not a key of domain', naming the build folder); now the row is a counted bad_record at its line."""
    rows = events()
    rows[1] = ("u0", "i1\0x", rows[1][2])
    rows[7] = ("u1\0y", "i1", rows[7][2])
    if fmt == "jsonl":
        inter = tmp_path / "ev.jsonl"
        inter.write_text("".join(json.dumps({"user": u, "item": i, "timestamp": t}) + "\n" for u, i, t in rows))
    else:
        inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], rows)
    items = item_table(tmp_path)
    m = tables.prepare(inter, items, tmp_path / "ds", text_fields=TITLE, k=1)
    assert m.provenance["skipped"] == {"bad_record": 2}
    assert sorted(users_of(m)) == [f"ev:u{u}" for u in range(4)]
    line = 3 if fmt == "csv" else 2
    with pytest.raises(DataError, match=rf"ev\.{fmt}:{line}: item 'i1\\x00x' holds a NUL character"):
        tables.prepare(inter, items, tmp_path / "strict", text_fields=TITLE, k=1, strict=True)


def test_an_item_table_key_with_a_nul_is_a_bad_record(tmp_path):
    rows = events()
    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], rows)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"item": k, "title": "t"}) + "\n" for k in [f"i{i}" for i in range(6)] + ["z\0"]))
    m = tables.prepare(inter, items, tmp_path / "ds", text_fields=TITLE, k=1)
    assert m.provenance["skipped"] == {"bad_record": 1} and m.counts["items"] == 6


def test_a_value_spanning_lines_never_leaves_a_row_with_a_wrong_key(tmp_path):
    """A quoted user id holding a newline (`"u0<newline>x",i0,...`): its first line was a bad record and its second
    line, `x",i0,...`, a row of user `x"`: 24 events of a user the table does not have."""
    rows = [(f"{u}\nx", i, t) for u, i, t in events()]
    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], rows + events(users=3))
    m = tables.prepare(inter, item_table(tmp_path), tmp_path / "ds", text_fields=TITLE, k=1)
    assert sorted(users_of(m)) == ["ev:u0", "ev:u1", "ev:u2"]
    assert m.provenance["skipped"] == {"bad_record": 2 * len(rows)}
    with pytest.raises(DataError, match=r"ev\.csv:2: .*unbalanced quote"):
        tables.prepare(inter, item_table(tmp_path), tmp_path / "strict", text_fields=TITLE, k=1, strict=True)


@pytest.mark.parametrize("gz", [False, True])
def test_a_byte_order_mark_before_the_header_is_not_part_of_a_column_name(tmp_path, gz):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the error was `no user column 'user' (columns: user,
    item, timestamp)` with the mark invisible in the first name."""
    import gzip

    body = "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in events())
    inter = tmp_path / ("ev.csv.gz" if gz else "ev.csv")
    data = b"\xef\xbb\xbf" + body.encode()
    inter.write_bytes(gzip.compress(data) if gz else data)
    items = tmp_path / "items.csv"
    items.write_bytes(b"\xef\xbb\xbfitem,title\n" + "".join(f"i{i},T{i}\n" for i in range(6)).encode())
    m = tables.prepare(inter, items, tmp_path / "ds", text_fields=TITLE, k=1)
    assert m.counts == {"users": 4, "items": 6, "interactions": 24,
                        "per_domain": {"ev": {"users": 4, "items": 6, "interactions": 24}}}


@pytest.mark.parametrize("k", [1, 2])
def test_a_kcore_below_three_skips_users_too_short_for_leave_one_out(tmp_path, k):
    """--kcore 1 or 2 keeps a user with 2 events: the conversion read and filtered everything, then the shard
    writer refused the whole build ('leave-one-out needs at least 3', naming the build folder). Such a user is a
    counted too_short skip, as the dataset reader counts one."""
    rows = events() + [("short", "i0", T0), ("short", "i1", T0 + 1)]
    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], rows)
    m = tables.prepare(inter, item_table(tmp_path), tmp_path / "ds", text_fields=TITLE, k=k)
    assert sorted(users_of(m)) == [f"ev:u{u}" for u in range(4)]
    assert m.provenance["skipped"] == {"too_short": 1} and m.counts["users"] == 4


@pytest.mark.parametrize("where", ["inter", "items", "images"])
def test_an_input_inside_the_output_folder_is_refused_not_deleted(tmp_path, where):
    """Tables (or the image folder) kept inside a dataset folder this project wrote: rewriting that folder
    replaced it whole and the input was gone."""
    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], events())
    items = item_table(tmp_path)
    out = tmp_path / "ds"
    tables.prepare(inter, items, out, text_fields=TITLE, k=1)
    moved = out / "raw" / {"inter": "ev.csv", "items": "items.csv", "images": "images"}[where]
    moved.parent.mkdir()
    if where == "images":
        moved.mkdir()
        images = moved
    else:
        moved.write_bytes((inter if where == "inter" else items).read_bytes())
        images = None
    args = {"inter": (moved, items), "items": (inter, moved), "images": (inter, items)}[where]
    with pytest.raises(DataError, match=r"inside the output folder"):
        tables.prepare(*args, out, text_fields=TITLE, k=1, images=images)
    assert moved.exists()


def test_a_table_rewritten_while_it_is_read_is_an_error(tmp_path, monkeypatch):
    """The header and the sha256 in the provenance were taken from the file as it was at the start; a table
    rewritten meanwhile (an export still running) was read with the old header's column positions: here user
    and item swapped, silently."""
    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], events())
    items = item_table(tmp_path)
    read_items = tables.read_items

    def rewriting(*args, **kwargs):  # the export writes the file again, columns in another order
        write_csv(inter, ["item", "user", "timestamp"], [(i, u, t) for u, i, t in events(users=5)])
        return read_items(*args, **kwargs)

    monkeypatch.setattr(tables, "read_items", rewriting)
    with pytest.raises(DataError, match=r"ev\.csv: changed while it was read"):
        tables.prepare(inter, items, tmp_path / "ds", text_fields=TITLE, k=1)
    assert not (tmp_path / "ds").exists()


def test_nanoseconds_are_named_in_the_sample(tmp_path):
    """Timestamps in nanoseconds passed the sample (no hint beyond microseconds) and every row was skipped after
    the whole table was read."""
    with pytest.raises(DataError, match="looks like nanoseconds"):
        tables.judge_time_sample((("r", 1_600_000_000_000_000_000) for _ in range(5)), "unix", "src")


def test_an_output_folder_that_cannot_be_made_is_one_line_from_mmm4rec_prepare(tmp_path, capsys):
    """`mmm4rec prepare --out` below a file (or on a read-only file system): a Python traceback from mkdir;
    tools/prepare_tables.py printed one line. Now both do, naming the path."""
    from mmm4rec.data.prepare import main

    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], events())
    (tmp_path / "file").write_text("not a folder")
    rc = main(["--interactions", str(inter), "--items", str(item_table(tmp_path)), "--out",
               str(tmp_path / "file" / "ds"), "--text-fields", "title", "--kcore", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / "file") in err[0]


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    """A table is read several times (header, time sample, sha256, the engine): from a named pipe the header
    took the data and the sha256 waited for more, forever."""
    import os

    os.mkfifo(tmp_path / "ev.csv")
    with pytest.raises(DataError, match=r"ev\.csv: not a regular file"):
        tables.prepare(tmp_path / "ev.csv", item_table(tmp_path), tmp_path / "ds", text_fields=TITLE, k=1)


def test_parquet_binary_strings_are_text(tmp_path):
    """Strings written as Parquet BINARY (writers that leave out the UTF-8 annotation): the item table's keys
    and texts were Python's repr of bytes (`b'i0'`, "Title: b'Caf\\xc3\\xa9'") and the interaction table's non-ASCII
    keys DuckDB's escapes (`Caf\\xC3\\xA9`): every event an unknown item. Invalid UTF-8 is an error naming the
    file, as in a text table."""
    keys = ["i0", "Café", "i2", "日本"]
    rows = [(f"u{u}", k, T0 + 10 * u + n) for u in range(3) for n, k in enumerate(keys)]
    binary = lambda values: pa.array([v.encode() for v in values], pa.binary())  # noqa: E731
    pq.write_table(pa.table({"user": binary([u for u, _, _ in rows]), "item": binary([i for _, i, _ in rows]),
                             "timestamp": [t for *_, t in rows]}), tmp_path / "ev.parquet")
    pq.write_table(pa.table({"item": binary(keys), "title": binary([f"Title {k}" for k in keys])}),
                   tmp_path / "items.parquet")
    m = tables.prepare(tmp_path / "ev.parquet", tmp_path / "items.parquet", tmp_path / "ds", text_fields=TITLE, k=1)
    assert m.counts["items"] == 4 and m.counts["interactions"] == 12 and not m.provenance["skipped"]
    from mmm4rec.data.shards import iter_item_records

    texts = {r.key: r.text for _, r in iter_item_records(m.items, BadRecords(strict=True))}
    assert texts["ev:Café"] == "Title: Title Café"
    pq.write_table(pa.table({"user": pa.array([b"\xff"] * 3, pa.binary()), "item": binary(["i0"] * 3),
                             "timestamp": [T0, T0 + 1, T0 + 2]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read: .*not valid UTF8"):
        tables.prepare(tmp_path / "bad.parquet", tmp_path / "items.parquet", tmp_path / "bad", text_fields=TITLE,
                       k=1)


def test_seconds_mixed_into_milliseconds_are_bad_timestamps(tmp_path):
    """--time-format unix_ms on a column where some rows hold seconds: those rows became events of January 1970,
    first in every history, silently (the sample only refused a column of seconds alone)."""
    rows = [(u, i, t * 1000 if n % 4 else t) for n, (u, i, t) in enumerate(events())]
    inter = write_csv(tmp_path / "ev.csv", ["user", "item", "timestamp"], rows)
    m = tables.prepare(inter, item_table(tmp_path), tmp_path / "ds", text_fields=TITLE, k=1, time_format="unix_ms")
    assert m.provenance["skipped"] == {"bad_timestamps": 6} and m.counts["interactions"] == 18
    with pytest.raises(DataError, match=r"ev\.csv:2: timestamp '1600000000' read as milliseconds falls before "
                                        r"1973-03-04; looks like Unix seconds: use --time-format unix"):
        tables.prepare(inter, item_table(tmp_path), tmp_path / "strict", text_fields=TITLE, k=1,
                       time_format="unix_ms", strict=True)
