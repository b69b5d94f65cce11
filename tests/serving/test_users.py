"""Known users by key (``dataset=``, ``mmm4rec serve --dataset``): a user key is answered exactly as that user's
full history passed explicitly, unknown keys are errors naming them (or the popularity fallback when asked for),
and the dataset's items the export does not hold are counted at load and left out."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from mmm4rec.config import ConfigError
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import BadRecords, DataError
from mmm4rec.data.shards import iter_seq_records
from mmm4rec.data.synthetic import generate
from mmm4rec.serving import Recommender


def records(dataset):
    return {rec.user: rec for _, rec in iter_seq_records(load_manifest(dataset).seqs, BadRecords())}


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    """Users of a 70-item catalogue: their events on syn:60 … syn:69 are unknown to the 60-item export."""
    root = tmp_path_factory.mktemp("wider") / "data"
    generate(root, 40, 70, images="none", seed=5, shard_size=15)
    return root


def test_a_user_key_is_answered_as_the_users_full_history(export_dir, wider, caplog):
    with caplog.at_level(logging.WARNING):
        rec = Recommender.from_pretrained(export_dir, dataset=wider)
    known = {k for k in rec.index}
    recs = records(wider)
    unknown_events = sum(k not in known for r in recs.values() for k in r.items)
    assert unknown_events and rec.users.dropped["unknown_item_events"] == unknown_events
    assert "the export does not hold" in caplog.text and "left out" in caplog.text  # reported once, at load
    assert rec.users.num_users == len(recs) and rec.users.nbytes / rec.users.num_events < 40
    users = sorted(recs)[:12] + ["syn:nobody"]
    histories = [[(k, int(t)) for k, t in zip(recs[u].items, recs[u].timestamps) if k in known] for u in users[:-1]]
    assert [rec.history(u) for u in users[:-1]] == histories
    for exclude_seen in (True, False):
        got = rec.recommend(users=users, k=7, exclude_seen=exclude_seen, unknown_user="popular", with_text=True)
        want = rec.recommend(histories + [[]], k=7, exclude_seen=exclude_seen, with_text=True)
        assert [[(key, text) for key, _, text in row] for row in got] == \
            [[(key, text) for key, _, text in row] for row in want]
        for row, wrow in zip(got, want):
            assert np.allclose([s for _, s, _ in row], [s for _, s, _ in wrow], rtol=1e-5)
        if exclude_seen:
            assert all(not {key for key, _, _ in row} & {key for key, _ in h} for row, h in zip(got, histories))
    assert got[-1][0][:2] == rec.popular(1)[0]  # the unknown key, asked to fall back: a new visitor
    assert np.allclose(rec.score(users=users[:3], item_keys=rec.keys[1:5]),
                       rec.score(histories[:3], rec.keys[1:5]), rtol=1e-5)


def test_unknown_user_keys_and_wrong_calls_are_one_line_errors(export_dir, wider, tiny_dataset):
    rec = Recommender.from_pretrained(export_dir, dataset=wider)
    some = sorted(records(wider))[0]
    with pytest.raises(DataError, match=r"unknown user key 'syn:nobody' \(not among the 40 users"):
        rec.recommend(users=["syn:nobody"])
    with pytest.raises(DataError, match=rf"unknown user key '{some.split(':')[1]}' \(did you mean '{some}'\?\)"):
        rec.recommend(users=[some.split(":")[1]])
    with pytest.raises(ConfigError, match="exactly one of histories and users"):
        rec.recommend([[(rec.keys[1], 0)]], users=[some])
    with pytest.raises(ConfigError, match="exactly one of histories and users"):
        rec.recommend()
    with pytest.raises(ConfigError, match="unknown_user must be one of"):
        rec.recommend(users=[some], unknown_user="skip")
    with pytest.raises(ConfigError, match=r"users\[0\] is not a user key"):
        rec.recommend(users=[3])
    with pytest.raises(ConfigError, match="users are known by key only with a dataset"):
        Recommender.from_pretrained(export_dir).recommend(users=[some])


def test_item_images_are_read_from_their_shard_by_offset_and_bounded(tmp_path, caplog):
    from mmm4rec.data.shards import iter_item_records
    from mmm4rec.serving.dataset import ItemImages, image_type

    root = tmp_path / "data"
    generate(root, 10, 12, images="generated", seed=2, shard_size=5)
    stored = {r.key: r.image for _, r in iter_item_records(load_manifest(root).items, BadRecords(), False)}
    index = {key: i + 1 for i, key in enumerate(sorted(stored)[:-1])}  # the last item: not in the "export"
    images = ItemImages.read(root, index, len(index))
    assert images.count == len(index) and images.shard.max() == 2  # three item shards
    assert all(images.read_image(i) == (stored[key], "image/png") for key, i in index.items())
    with caplog.at_level(logging.WARNING):
        small = ItemImages.read(root, index, len(index), max_bytes=min(map(len, stored.values())))
    assert 0 < small.count < len(index) and "larger than" in caplog.text
    assert image_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg" and image_type(b"GIF89a..") == "image/gif"
    assert image_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp" and image_type(b"<svg xmlns=") is None


# --------------------------------------------------------------------------- hostile keys and a changing dataset
@pytest.mark.parametrize("key", ["\ud800", "syn:\udcff", "x" * 100_000, "", "ü😀"])
def test_a_user_key_that_is_not_encodable_huge_or_empty_is_an_unknown_key(export_dir, wider, key):
    """A lone surrogate (JSON "\\ud800" decodes to one) has no UTF-8 bytes: it was a UnicodeEncodeError (HTTP 500,
    a traceback in `mmm4rec recommend`), now it is an unknown key like any other."""
    rec = Recommender.from_pretrained(export_dir, dataset=wider)
    with pytest.raises(DataError, match="unknown user key"):
        rec.recommend(users=[key])
    with pytest.raises(DataError, match="unknown user key"):
        rec.history(key)
    assert rec.recommend(users=[key], unknown_user="popular", k=3) == [rec.popular(3)]
    assert np.isnan(rec.score(users=[key], item_keys=rec.keys[1:3], unknown_user="popular")).all()


@pytest.mark.parametrize("call", ["history", "image", "text", "has_image"])
@pytest.mark.parametrize("key", [3, None, ["syn:01"], {"k": 1}])
def test_a_key_that_is_not_a_string_is_a_one_line_error(export_dir, wider, call, key):
    """history(3) was an AttributeError, image/text([…]) a TypeError (unhashable); has_image answers False."""
    rec = Recommender.from_pretrained(export_dir, dataset=wider)
    if call == "has_image":
        assert rec.has_image(key) is False
        return
    with pytest.raises((DataError, ConfigError), match="not a(n item| user) key|unknown (item|user) key"):
        getattr(rec, call)(key)


def test_an_item_shard_replaced_or_removed_after_start_is_never_served_as_another_items_image(tmp_path):
    """The image index holds byte offsets into the shards as they were at start: a shard regenerated (other
    content at those offsets) served another item's image silently, a removed one was a FileNotFoundError (500)."""
    import shutil

    from mmm4rec.serving.dataset import ItemImages, ShardChanged

    root = tmp_path / "data"
    generate(root, 10, 12, images="generated", seed=2, shard_size=5)
    index = {f"syn:{i:02d}": i + 1 for i in range(12)}
    images = ItemImages.read(root, index, 12)
    first = images.read_image(1)
    assert first is not None and first[1] == "image/png"
    shards = sorted(root.glob("items-*.tar"))
    shutil.copy(shards[1], shards[0])  # another shard's bytes: PNGs of other items at other offsets
    with pytest.raises(ShardChanged, match=r"items-000000\.tar.*changed since"):
        images.read_image(1)
    shards[0].unlink()
    with pytest.raises(ShardChanged, match=r"items-000000\.tar.*changed since"):
        images.read_image(1)
    assert images.read_image(12) is not None  # the other shards are still served
    assert issubclass(ShardChanged, DataError)


def test_a_dataset_of_another_catalogue_is_refused(export_dir, wider):
    """Not one event on an item the export holds: every user would silently be a new visitor."""
    from mmm4rec.serving.dataset import UserHistories

    with pytest.raises(DataError, match="none of its .* events is on an item the export holds"):
        UserHistories.read(wider, {"shop:P1": 1, "shop:P2": 2})


def rewrite_item_shard(dataset, edit, kind: str = "items") -> None:
    """Rewrite the dataset's first item (or ``kind="seqs"``: sequence) shard member by member through
    ``edit(name, data) -> data``, and its manifest entry (bytes, sha256) to match: a dataset that passes its checks
    but holds what ``edit`` put there."""
    import hashlib
    import io
    import json
    import tarfile

    path = min(dataset.glob(f"{kind}-*.tar"))
    out = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src.getmembers():
            data = edit(member.name, src.extractfile(member).read())
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    manifest = json.loads((dataset / "dataset.json").read_text())
    for shard in manifest["shards"][kind]:
        if shard["name"] == path.name:
            shard["bytes"], shard["sha256"] = len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()
    (dataset / "dataset.json").write_text(json.dumps(manifest))


def test_item_records_a_hostile_dataset_holds_are_skipped_at_start_and_only_real_images_offered(tmp_path, caplog):
    """An item's .json with a list as its key was a TypeError (unhashable) at start, one nested past the JSON
    parser's depth a RecursionError: both tracebacks instead of a served dataset. A .png member holding HTML was
    offered (has_image, an image URL in every result) and then answered 404; now it is counted at start and not
    offered."""
    import json

    from mmm4rec.serving.dataset import ItemImages

    root = tmp_path / "data"
    generate(root, 10, 12, images="generated", seed=2, shard_size=5)
    index = {f"syn:{i:02d}": i + 1 for i in range(12)}
    damage = {"syn:00": lambda data: json.dumps({**json.loads(data), "key": ["syn:00"]}).encode(),
              "syn:01": lambda data: b"[" * 100_000 + b"]" * 100_000}
    samples: dict[str, str] = {}

    def edit(name, data):
        sample, ext = name.rsplit(".", 1)
        if ext == "json":
            samples[sample] = json.loads(data)["key"]
            return damage.get(samples[sample], lambda d: d)(data)
        if ext == "png" and samples.get(sample) == "syn:02":
            return b"<html><script>alert(1)</script></html>"
        return data

    rewrite_item_shard(root, edit)
    with caplog.at_level(logging.WARNING):
        images = ItemImages.read(root, index, 12)
    assert [images.has(i) for i in (1, 2, 3, 4)] == [False, False, False, True]
    assert images.count == 9 and "1 item image(s) that are not PNG, JPEG, GIF or WebP" in caplog.text
    assert images.read_image(4)[1] == "image/png"


def test_a_dataset_user_key_with_a_lone_surrogate_is_a_counted_skip(export_dir, tmp_path, caplog):
    """A sequence record's "user": "\\ud800…" passes the record checks (it is a str) but has no UTF-8 bytes: the
    user index's encode was a UnicodeEncodeError at start. That user is skipped and counted; the others load."""
    import json

    root = tmp_path / "data"
    generate(root, 12, 60, images="none", seed=4, shard_size=6)
    first = []

    def edit(name, data):
        record = json.loads(data)
        if not first:
            first.append(record["user"])
            record["user"] = "\ud800" + record["user"]
        return json.dumps(record).encode()

    rewrite_item_shard(root, edit, kind="seqs")
    with caplog.at_level(logging.WARNING):
        rec = Recommender.from_pretrained(export_dir, dataset=root)
    assert rec.users.num_users == 11 and rec.users.dropped["bad_user_key"] == 1
    assert "1 bad record(s) skipped" in caplog.text
    with pytest.raises(DataError, match="unknown user key"):
        rec.history("\ud800" + first[0])
