"""Fractal expansion (mmm4rec.data.fractal, tools/make_fractal.py) on a tiny ML-1M-like RecBole input written here:
same seed same bytes, the event count follows the target, every expanded event is a real one re-labelled (user
copy, item variant, whole-week shift), popularity and sequence-length rankings carry over, and the tables have
the columns the table converter reads (user, item, timestamp; item, title, year, genres)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import PYTHON, REPO, run_env

from mmm4rec.data import fractal
from mmm4rec.data.schema import DataError

T0 = 978_300_000
GENRES = ["Action", "Children's", "Comedy", "Drama", "Film-Noir", "Sci-Fi"]


def write_input(folder: Path, n_users: int = 40, n_items: int = 30) -> tuple[Path, dict]:
    """RecBole ML-1M's layout (token ids, float-typed year, space-separated genres): Zipf-like item popularity,
    5 … 30 distinct items per user. The last item has no row in the .item file. Returns (prefix, the events)."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    keys = [f"Movie {j:02d} ({1950 + j})" for j in range(n_items)]
    keys[3] = "Misérables, Les (1953)"  # a comma and a non-ASCII letter, as in the real file
    weights = 1.0 / np.arange(1, n_items + 1) ** 1.1
    events = {}
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, n_users + 1):
        length = 5 + (u * 7) % 26
        chosen = rng.choice(n_items, length, replace=False, p=weights / weights.sum())
        times = T0 + np.sort(rng.integers(0, 10**7, length))
        for j, t in zip(chosen, times):
            events[(f"1m_{u}", keys[j])] = int(t)
            lines.append(f"1m_{u}\t{keys[j]}\t{rng.integers(1, 6)}\t{t}")
    (folder / "ml-1m.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"]
    for j, key in enumerate(keys[:-1]):
        year = f"{1950 + j}.0" if j == 5 else str(1950 + j)  # RecBole writes some years as floats
        rows.append(f"{key}\t{key.rsplit(' (', 1)[0]}\t{year}\t{GENRES[j % 6]} {GENRES[(j + 2) % 6]}")
    (folder / "ml-1m.item").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "ml-1m", events


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict]:
    return write_input(tmp_path / "raw")


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def split_key(key: str) -> tuple[str, int]:
    real, _, copy = key.rpartition("~")
    return real, int(copy)


# ------------------------------------------------------------------------------------------------------ the tests
def test_same_seed_same_bytes_other_seed_other_events(source, tmp_path):
    prefix, events = source
    target = 10 * len(events)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        fractal.generate(prefix, tmp_path / name, target, seed=seed)
    a, b, c = (files(tmp_path / name) for name in "abc")
    assert set(a) == {"events.parquet", "items.parquet", "fractal.json"}
    assert a == b
    assert a["events.parquet"] != c["events.parquet"]
    assert json.loads(a["fractal.json"])["seed"] == 0 and json.loads(c["fractal.json"])["seed"] == 1


@pytest.mark.parametrize("ratio", [1, 4, 10, 30])
def test_event_count_follows_the_target(source, tmp_path, ratio):
    prefix, events = source
    target = ratio * len(events)
    report = fractal.generate(prefix, tmp_path / "out", target, seed=0)
    n = pq.ParquetFile(tmp_path / "out" / "events.parquet").metadata.num_rows
    assert n == report["counts"]["events"]
    assert abs(n - target) < 0.1 * target
    assert report["counts"]["expected_events"] == pytest.approx(target)
    assert report["factors"]["user_copies"] == math.ceil(ratio / fractal.DEFAULT_KEEP)
    assert report["factors"]["item_variants"] == max(2, math.ceil(math.sqrt(ratio)))


def test_plan_keep_rates_and_variants(source):
    prefix, events = source
    src = fractal.read_recbole(prefix)
    p = fractal.plan(src, 12 * src.n_events, seed=0, user_factor=20, item_factor=3)
    assert p.matrix.shape == (20, 3) and p.matrix.min() == 0 and p.matrix.max() == 1
    assert p.keep.max() <= 1 and p.keep.sum() == pytest.approx(12)
    assert np.all(np.diff(p.variant_cdf, axis=1) >= 0) and np.all(p.variant_cdf[:, -1] == 1)
    # keep rates follow the reduced matrix's row sums (up to the cap at 1)
    below = p.keep < 1
    assert np.allclose(p.keep[below] / p.matrix.sum(axis=1)[below], (p.keep / p.matrix.sum(axis=1))[below][0])
    with pytest.raises(DataError, match="raise the user factor"):
        fractal.plan(src, 12 * src.n_events, seed=0, user_factor=5)


def test_expanded_events_are_real_events_relabelled(source, tmp_path):
    """A Kronecker product with the real matrix: (u~a, i~b) only where u had i, at u's time shifted by the
    same whole number of weeks for all of u~a's events, and never two variants of one real event in one copy."""
    prefix, events = source
    report = fractal.generate(prefix, tmp_path / "out", 10 * len(events), seed=3)
    table = pq.read_table(tmp_path / "out" / "events.parquet").to_pylist()
    shifts, seen = defaultdict(set), set()
    for row in table:
        (user, a), (item, b) = split_key(row["user"]), split_key(row["item"])
        assert (user, item) in events
        assert 0 <= a < report["factors"]["user_copies"] and 0 <= b < report["factors"]["item_variants"]
        shift = row["timestamp"] - events[user, item]
        assert shift % fractal.WEEK == 0 and 0 <= shift < fractal.OFFSET_WEEKS * fractal.WEEK
        shifts[row["user"]].add(shift)
        assert (row["user"], item) not in seen
        seen.add((row["user"], item))
    assert all(len(s) == 1 for s in shifts.values())
    # copies one after another, users in real-key order within a copy, each user's events in time order
    order = [(split_key(r["user"])[1], split_key(r["user"])[0], r["timestamp"]) for r in table]
    assert order == sorted(order)


def test_distributions_carry_over(source, tmp_path):
    prefix, events = source
    ratio = 20
    report = fractal.generate(prefix, tmp_path / "out", ratio * len(events), seed=0)
    table = pq.read_table(tmp_path / "out" / "events.parquet")
    real_items = sorted({i for _, i in events})
    real_pop = np.array([sum(i == item for _, i in events) for item in real_items])
    expanded_pop = defaultdict(int)
    per_copy = defaultdict(int)
    for user, item in zip(table["user"].to_pylist(), table["item"].to_pylist()):
        expanded_pop[split_key(item)[0]] += 1
        per_copy[user] += 1
    # popularity: a real item's variants together rank as the real item does, scaled by the ratio
    summed = np.array([expanded_pop[item] for item in real_items])
    assert fractal.spearman(real_pop, summed) > 0.95
    assert summed.sum() / real_pop.sum() == pytest.approx(ratio, rel=0.1)
    # sequence lengths: a copy's length is its real user's times the copy's keep rate
    real_len = defaultdict(int)
    for user, _ in events:
        real_len[user] += 1
    users = sorted(real_len)
    mean_copy = np.array([np.mean([n for key, n in per_copy.items() if split_key(key)[0] == u]) for u in users])
    real = np.array([real_len[u] for u in users])
    assert fractal.spearman(real, mean_copy) > 0.95
    keep = report["factors"]["keep_rate"]["mean"]
    assert np.median(mean_copy / real) == pytest.approx(keep, rel=0.1)
    # the report says the same as the file
    expanded = report["distributions"]["expanded"]
    assert expanded["events"] == table.num_rows and expanded["users"] == len(per_copy)
    assert report["distributions"]["ml-1m"]["events"] == len(events)
    assert report["distributions"]["ml-1m"]["item_popularity"]["p100"] == real_pop.max()
    assert report["rank_agreement"]["item_popularity_summed"] > 0.95


def test_tables_have_the_converters_columns(source, tmp_path):
    prefix, events = source
    fractal.generate(prefix, tmp_path / "pq", 5 * len(events), seed=0)
    fractal.generate(prefix, tmp_path / "csv", 5 * len(events), seed=0, fmt="csv")
    inter = pq.read_table(tmp_path / "pq" / "events.parquet")
    assert inter.schema == pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64())])
    items = pq.read_table(tmp_path / "pq" / "items.parquet")
    assert items.schema == pa.schema([(c, pa.string()) for c in ("item", "title", "year", "genres")])
    by_key = {row["item"]: row for row in items.to_pylist()}
    assert set(inter["item"].to_pylist()) == set(by_key)  # items with events, no others
    assert by_key["Movie 00 (1950)~0"] == {"item": "Movie 00 (1950)~0", "title": "Movie 00", "year": "1950",
                                           "genres": "Action|Comedy"}
    assert by_key["Movie 00 (1950)~1"]["title"] == "Movie 00 (variant 1)"
    assert by_key["Movie 05 (1955)~0"]["year"] == "1955"
    assert by_key["Misérables, Les (1953)~0"]["title"] == "Misérables, Les"
    assert by_key["Movie 29 (1979)~0"]["title"] == "Movie 29 (1979)"  # no .item row: the key stands in
    # CSV: the same rows as text, quoted where a title has a comma
    with open(tmp_path / "csv" / "events.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["user", "item", "timestamp"]
    assert [(r["user"], r["item"], int(r["timestamp"])) for r in rows] == \
        list(zip(*(inter[c].to_pylist() for c in ("user", "item", "timestamp"))))
    with open(tmp_path / "csv" / "items.csv", newline="", encoding="utf-8") as f:
        assert {r["item"]: r for r in csv.DictReader(f)} == by_key


def test_cli(source, tmp_path):
    prefix, events = source
    out = tmp_path / "out"
    tool = str(REPO / "tools" / "make_fractal.py")
    done = subprocess.run([PYTHON, tool, "--input", str(prefix), "--events", f"{8 * len(events):.0e}", "--seed", "2",
                           "--out", str(out), "--item-factor", "3"],
                          capture_output=True, text=True, env=run_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["factors"]["item_variants"] == 3 and summary["counts"]["events"] > 0
    report = json.loads((out / "fractal.json").read_text())
    assert report["seed"] == 2 and report["counts"] == summary["counts"]
    assert {p.name for p in out.iterdir()} == {"events.parquet", "items.parquet", "fractal.json"}

    missing = subprocess.run([PYTHON, tool, "--input", str(tmp_path / "nowhere" / "ml-1m"), "--events", "100",
                              "--out", str(tmp_path / "x")], capture_output=True, text=True, env=run_env(), timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "cannot read" in missing.stderr
    bad = subprocess.run([PYTHON, tool, "--events", "1.5", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=run_env(), timeout=60)
    assert bad.returncode == 2 and "not a positive whole number" in bad.stderr
