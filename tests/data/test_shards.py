"""Shard writing and reading, the manifest, and every bad-input case of the readers (strict error naming the
shard and the record, or a counted skip)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from data_helpers import T0, image_bytes, item, raw_shard, seq, toy_items, write_toy

from mmm4rec.data import shards, tar_reader
from mmm4rec.data.dataset import load_manifest, write_dataset
from mmm4rec.data.schema import BadRecords, DataError, SeqRecord, ShardInfo
from mmm4rec.data.shards import iter_item_records, iter_seq_records, sha256_file


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip(tmp_path):
    items = toy_items(10)
    m = write_toy(tmp_path / "ds", items=items, n_users=7, shard_size=4)
    assert [s.count for s in m.items] == [4, 4, 2] and [s.count for s in m.seqs] == [4, 3]
    assert m.counts == {"users": 7, "items": 10, "interactions": 35,
                        "per_domain": {"toy": {"users": 7, "items": 10, "interactions": 35}}}
    assert m.split["train_samples"] == 7 * 2 and m.split["pretrain_samples"] == 7 * 4
    bad = BadRecords(strict=True)
    got = [rec for _, rec in iter_item_records(m.items, bad)]
    assert [(r.key, r.text, r.image, r.meta) for r in got] == [(r.key, r.text, r.image, r.meta) for r in items]
    assert all((r.decoded is None) == (r.image is None) for r in got)
    users = [(path, rec) for path, rec in iter_seq_records(m.seqs, bad)]
    assert [r.user for _, r in users] == [f"toy:u{u:03d}" for u in range(7)]
    assert users[0][0] == str(m.seqs[0].path) and users[0][1].timestamps.dtype == np.int64
    # a subset of shards, by plain path
    assert len(list(iter_seq_records([m.seqs[1].path], bad))) == 3


def test_keys_with_dots_and_slashes_survive(tmp_path):
    items = toy_items(3, images=False)
    items[0].key = "toy:B00.1/x y"
    m = write_toy(tmp_path / "ds", items=items)
    assert [r.key for _, r in iter_item_records(m.items, BadRecords(True))][0] == "toy:B00.1/x y"


def test_same_records_give_identical_shards(tmp_path):
    a, b = write_toy(tmp_path / "a"), write_toy(tmp_path / "b")
    assert [s.sha256 for s in a.items + a.seqs] == [s.sha256 for s in b.items + b.seqs]


def test_rewrite_keeps_feature_stores(tmp_path):
    write_toy(tmp_path / "ds")
    (tmp_path / "ds" / "features" / "x").mkdir(parents=True)
    write_toy(tmp_path / "ds", n_items=14)
    assert (tmp_path / "ds" / "features" / "x").is_dir()
    assert not list(tmp_path.glob(".ds.*"))


def test_writer_refuses_invalid_sequences(tmp_path):
    items = toy_items(4, images=False)
    bad_seq = SeqRecord("toy:u", "toy", [r.key for r in items[:3]], np.array([T0, T0 - 1, T0]))
    with pytest.raises(DataError, match="user 'toy:u'"):
        write_dataset(tmp_path / "ds", name="t", items=items, seqs=[bad_seq], provenance={}, licence="")
    unknown = SeqRecord("toy:u", "toy", ["toy:nope"] * 3, np.array([T0, T0 + 1, T0 + 2]))
    with pytest.raises(DataError, match="'toy:nope' has no item record"):
        write_dataset(tmp_path / "ds", name="t", items=items, seqs=[unknown], provenance={}, licence="")
    assert not (tmp_path / "ds").exists()  # nothing half-written


# ------------------------------------------------------------------------------------------ corrupt shards
def test_truncated_tar(tmp_path):
    m = write_toy(tmp_path / "ds", n_users=8)
    shard = m.seqs[0].path
    data = shard.read_bytes()
    shard.write_bytes(data[:1700])  # inside the second member's data
    with pytest.raises(DataError, match=f"{shard}: corrupt or truncated"):
        list(iter_seq_records([shard], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    got = list(iter_seq_records([s.path for s in m.seqs], bad))  # by path: no checksum to compare
    assert bad.as_dict() == {"corrupt_shard": 1} and 0 < len(got) < 8
    with pytest.raises(DataError, match="bytes but .* lists"):
        load_manifest(tmp_path / "ds")
    # a shard the manifest lists is damaged data, whatever the strictness: its checksum no longer matches
    with pytest.raises(DataError, match=f"{shard}: its sha256 does not match the one in dataset.json"):
        list(iter_seq_records(m.seqs, BadRecords(strict=False)))


def test_tar_cut_at_a_member_boundary_is_caught(tmp_path, monkeypatch):
    m = write_toy(tmp_path / "ds", n_users=8)
    shard = m.seqs[0].path
    shard.write_bytes(shard.read_bytes()[:2048])  # two whole members: tarfile alone would end quietly
    with pytest.raises(DataError, match="truncated tar after 1 samples: truncated: no end-of-archive marker"):
        list(iter_seq_records([shard], BadRecords(strict=True)))
    # webdataset's reader (item shards) ends quietly there: the manifest's count catches it
    items = m.items[0].path
    first_two = list(tar_reader.parse(Path(items).read_bytes()))[:2]
    members = sum(len(sample) - 1 for sample in first_two)
    data, pos = items.read_bytes(), 0
    for _ in range(members):
        pos += 512 + (int(data[pos + 124 : pos + 136].rstrip(b"\0 ") or b"0", 8) + 511) // 512 * 512
    items.write_bytes(data[:pos])
    lying = ShardInfo(items.name, 4, pos, sha256_file(items), path=items)  # right checksum, wrong count
    with pytest.raises(DataError, match="truncated tar after 1 samples: truncated: no end-of-archive marker"):
        list(iter_item_records([lying], BadRecords(strict=True)))  # read whole: tar_reader finds the cut
    monkeypatch.setattr(shards, "WHOLE_READ_BYTES", 0)  # a large shard streams through webdataset's reader
    with pytest.raises(DataError, match="read 2 samples, the manifest lists 4"):
        list(iter_item_records([lying], BadRecords(strict=True)))


def test_fast_reader_equals_webdataset(tmp_path):
    m = write_toy(tmp_path / "ds", n_users=9)
    for shard in m.seqs + m.items:
        reference = [{k: v for k, v in sample.items() if k != "__url__"}
                     for sample in wds.tarfile_samples([{"url": str(shard.path)}])]
        assert list(tar_reader.parse(Path(shard.path).read_bytes())) == reference


def test_garbage_instead_of_tar(tmp_path):
    shard = tmp_path / "seqs-000000.tar"
    shard.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match="seqs-000000.tar: corrupt or truncated"):
        list(iter_seq_records([shard], BadRecords(strict=True)))


def test_manifest_checksum_mismatch(tmp_path):
    m = write_toy(tmp_path / "ds")
    shard = m.items[1].path
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    load_manifest(tmp_path / "ds")  # sizes still match
    with pytest.raises(DataError, match=f"{shard}: sha256 does not match"):
        load_manifest(tmp_path / "ds", verify=True)


def test_missing_shard_and_bad_manifest(tmp_path):
    m = write_toy(tmp_path / "ds")
    m.seqs[1].path.unlink()
    with pytest.raises(DataError, match="seqs-000001.tar: shard listed in .* is missing"):
        load_manifest(tmp_path / "ds")
    (tmp_path / "ds" / "dataset.json").write_text("{")
    with pytest.raises(DataError, match="dataset.json: not valid JSON"):
        load_manifest(tmp_path / "ds")
    with pytest.raises(DataError, match="no dataset manifest"):
        load_manifest(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- bad sequences
ABC = ["toy:a", "toy:b", "toy:c"]


@pytest.mark.parametrize("sample, reason, message", [
    (seq("toy:u1", ABC, [3, 2, 1]), "unsorted_timestamps", "user 'toy:u1': timestamp 2 follows 3"),
    (seq("toy:u1", ABC, [-1, 2, 3]), "bad_timestamps", "user 'toy:u1': negative timestamp"),
    (seq("toy:u1", ABC, [1.5, 2, 3]), "bad_timestamps", "user 'toy:u1': timestamps must be integer"),
    (seq("toy:u1", ABC[:1] + ABC[::2], [1, 1, 3]), "duplicate_event", "user 'toy:u1': the same item appears twice"),
    (seq("toy:u1", ABC[:2], [1, 2]), "too_short", "user 'toy:u1': 2 interactions"),
    ({"json": {"user": "toy:u1", "items": ABC}}, "bad_record", "user 'toy:u1': needs the fields"),
    ({"json": b"{not json"}, "bad_record", "sample 000000001: no valid .json member"),
])
def test_bad_sequences(tmp_path, sample, reason, message):
    shard = raw_shard(tmp_path / "seqs-000000.tar", [seq("toy:ok", ABC, [1, 2, 3]), sample,
                                                      seq("toy:ok2", ABC, [1, 2, 3])])
    with pytest.raises(DataError, match=f"seqs-000000.tar: {message}"):
        list(iter_seq_records([shard], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    assert [r.user for _, r in iter_seq_records([shard], bad)] == ["toy:ok", "toy:ok2"]
    assert bad.as_dict() == {reason: 1}


# ------------------------------------------------------------------------------------------------ bad items
def test_missing_image_is_not_an_error(tmp_path):
    shard = raw_shard(tmp_path / "items-000000.tar", [item("toy:a"), item("toy:b", png=image_bytes())])
    recs = [r for _, r in iter_item_records([shard], BadRecords(strict=True))]
    assert recs[0].image is None and recs[0].decoded is None
    assert recs[1].decoded.size == (16, 16)


@pytest.mark.parametrize("payload", [image_bytes(fmt="JPEG")[:-200], image_bytes()[:60], b"GIF89a not really"])
def test_truncated_or_non_image_bytes(tmp_path, payload):
    shard = raw_shard(tmp_path / "items-000000.tar", [item("toy:a", jpg=payload), item("toy:b", png=image_bytes())])
    with pytest.raises(DataError, match="items-000000.tar: item 'toy:a': unreadable image"):
        list(iter_item_records([shard], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    recs = [r for _, r in iter_item_records([shard], bad)]
    assert [r.key for r in recs] == ["toy:a", "toy:b"] and recs[0].image is None  # kept, as a missing image
    assert bad.as_dict() == {"bad_image": 1}
    # text-only readers never look at the image
    assert len(list(iter_item_records([shard], BadRecords(strict=True), check_images=False))) == 2


@pytest.mark.parametrize("text, message", [(b"  \n", "empty text"), (b"caf\xe9", "text is not UTF-8")])
def test_empty_or_non_utf8_text(tmp_path, text, message):
    shard = raw_shard(tmp_path / "items-000000.tar", [item("toy:a", text), item("toy:b")])
    with pytest.raises(DataError, match=f"items-000000.tar: sample 000000000: item 'toy:a': {message}"):
        list(iter_item_records([shard], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    assert [r.key for _, r in iter_item_records([shard], bad)] == ["toy:b"]
    assert bad.as_dict() == {"bad_text": 1}


def test_duplicate_item_keys_first_wins(tmp_path):
    a = raw_shard(tmp_path / "items-000000.tar", [item("toy:a", b"first"), item("toy:b")])
    b = raw_shard(tmp_path / "items-000001.tar", [item("toy:a", b"second")])
    with pytest.raises(DataError, match="items-000001.tar: item 'toy:a' was already read from .*items-000000.tar"):
        list(iter_item_records([a, b], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    assert [(r.key, r.text) for _, r in iter_item_records([a, b], bad)] == [("toy:a", "first"), ("toy:b", "Title: x")]
    assert bad.as_dict() == {"duplicate_item": 1}


def test_item_without_key(tmp_path):
    shard = raw_shard(tmp_path / "items-000000.tar", [{"json": {"title": "x"}, "txt": b"x"}])
    with pytest.raises(DataError, match="sample 000000000: no .json member with a string 'key'"):
        list(iter_item_records([shard], BadRecords(strict=True)))


def test_copying_a_dataset_keeps_it_valid(tmp_path):
    write_toy(tmp_path / "ds")
    shutil.copytree(tmp_path / "ds", tmp_path / "copy")
    m = load_manifest(tmp_path / "copy", verify=True)
    assert m.root == (tmp_path / "copy").resolve() and m.items[0].path.parent == m.root
