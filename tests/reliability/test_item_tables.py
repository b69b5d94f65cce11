"""The item table of the table converter (tools/prepare_tables.py) as careless exports write it: a stray quote, a
`;`-delimited file, a 150 KB description. A bad row costs that row only, and every error names the line."""
import pytest

from mmm4rec.data import tables
from mmm4rec.data.schema import DataError
from mmm4rec.data.tables import TextField

TITLE = [TextField.parse("title")]


def events(tmp_path, items: int = 12):
    rows = [f"u{u},i{(u * 7 + j) % items},{1_000_000_000 + 100 * j}" for u in range(30) for j in range(8)]
    path = tmp_path / "events.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("multiline", [False, True], ids=["one-line-cells", "with-a-multi-line-cell"])
def test_a_stray_quote_in_the_item_table_costs_that_row_only(tmp_path, multiline):
    """Line 5 of 13 reads `i3,"Item 3`: the csv module swallowed every following line into one field (a table with
    a quoted value spanning lines goes through it), so items i4..i11 disappeared. Now: one bad_record at line 5,
    and the other items kept — also when another row legitimately quotes a value over two lines."""
    lines = [f"i{i},Item {i}" for i in range(12)]
    lines[3] = 'i3,"Item 3'
    if multiline:
        lines[8] = 'i8,"Item 8\nsecond line of its title"'
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "\n".join(lines) + "\n")
    m = tables.prepare(events(tmp_path), items, tmp_path / "ds", text_fields=TITLE, k=3)
    assert m.provenance["skipped"].get("bad_record") == 1, m.provenance["skipped"]
    assert m.counts["items"] == 11  # every item but i3
    with pytest.raises(DataError, match=r"items\.csv:5: .*quote"):
        tables.prepare(events(tmp_path), items, tmp_path / "strict", text_fields=TITLE, k=3, strict=True)


def test_a_150_kb_text_cell_is_accepted(tmp_path):
    """Python's csv.field_size_limit (128 KiB) made it `cannot read: field larger than field limit` without a line;
    a long product description is ordinary: cells up to 16 MiB are read (both passes)."""
    for multiline in (False, True):
        lines = [f"i{i},Item {i}" for i in range(12)]
        lines[2] = "i2," + "x" * 150_000
        if multiline:
            lines[8] = 'i8,"Item 8\nsecond line"'
        items = tmp_path / f"items{int(multiline)}.csv"
        items.write_text("item,title\n" + "\n".join(lines) + "\n")
        m = tables.prepare(events(tmp_path), items, tmp_path / f"ds{int(multiline)}", text_fields=TITLE, k=3)
        assert m.counts["items"] == 12 and not m.provenance["skipped"], m.provenance["skipped"]


def test_a_line_over_the_limit_is_an_error_naming_it(tmp_path):
    """Beyond 4 MiB a line is refused by the engine that reads the table (its memory per thread grows with it)."""
    lines = [f"i{i},Item {i}" for i in range(12)]
    lines[2] = 'i2,"' + "x" * (17 << 20) + '"'
    lines[8] = 'i8,"Item 8\nsecond line"'  # the Python pass
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"items\.csv:4: .*larger than"):
        tables.prepare(events(tmp_path), items, tmp_path / "strict", text_fields=TITLE, k=3, strict=True)


@pytest.mark.parametrize("which", ["items", "events"])
def test_a_semicolon_delimited_csv_is_an_error_naming_line_1_and_the_delimiter(tmp_path, which):
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "".join(f"i{i},Item {i}\n" for i in range(12)))
    inter = events(tmp_path)
    target = items if which == "items" else inter
    target.write_text(target.read_text().replace(",", ";"))
    with pytest.raises(DataError) as e:
        tables.prepare(inter, items, tmp_path / "ds", text_fields=TITLE, k=3)
    message = str(e.value)
    assert f"{target}:1: " in message and "';'" in message and "\n" not in message, message
