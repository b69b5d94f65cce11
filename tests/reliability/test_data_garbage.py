"""Silent-garbage findings: a feature store whose item index was edited, shards edited in place (same size),
manifest counts that do not match the shards, out-of-range timestamps (in shards and in converter input), and
sequences whose domain contradicts their items."""
import json

import numpy as np
import pytest

from mmm4rec.config import EncoderConfig
from mmm4rec.data import amazon
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.features import FeatureStore, ensure_features
from mmm4rec.data.schema import BadRecords, DataError, InvalidRecord, seq_record
from mmm4rec.data.shards import iter_seq_records
from mmm4rec.data.stream import SeqIndex, TrainStream
from tests.data.data_helpers import REPO, raw_shard, seq, write_toy

MINILM = EncoderConfig(batch_size=16)


def edit_in_place(path, old: bytes, new: bytes) -> None:
    """A same-size edit: the byte count in dataset.json still matches, the tar headers stay valid."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def toy_index(m):
    return {f"toy:i{i:03d}": i + 1 for i in range(m.counts["items"])}


# --------------------------------------------------------------------------------------- the store's item index
def test_an_edited_item_index_is_not_accepted_as_up_to_date(tmp_path):
    write_toy(tmp_path / "ds", images=False)
    path = ensure_features(tmp_path / "ds", MINILM)
    good = FeatureStore.open(path)
    rows = {key: good.text[i].copy() for key, i in good.index.items()}
    keys = json.loads((path / "items.json").read_text())
    keys[1], keys[2] = keys[2], keys[1]  # same bytes, two items' features swapped
    (path / "items.json").write_text(json.dumps(keys))
    with pytest.raises(DataError, match=r"items.json does not match the item index recorded in .*manifest.json"):
        FeatureStore.open(path)
    ensure_features(tmp_path / "ds", MINILM)  # the plan sees it and rebuilds
    store = FeatureStore.open(path)
    assert store.manifest["last_build"]["mode"] == "build"
    assert all(np.allclose(store.text[store.index[key]], row, atol=1e-6) for key, row in rows.items())


# --------------------------------------------------------------------------------------- shards edited in place
def test_a_sequence_shard_edited_in_place_is_refused_by_the_index_pass(tmp_path):
    m = write_toy(tmp_path / "ds", images=False)
    edit_in_place(m.seqs[1].path, b'"toy:i004"', b'"toy:i011"')
    load_manifest(tmp_path / "ds")  # sizes still match
    for strict in (True, False):
        with pytest.raises(DataError) as e:
            SeqIndex.load_or_build(tmp_path / "ds", toy_index(m), tmp_path / "cache", strict=strict)
        assert str(m.seqs[1].path) in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sequence_shard_edited_after_the_index_was_cached_is_never_trained_on(tmp_path, workers):
    m = write_toy(tmp_path / "ds", n_users=8, images=False)  # users 0-3 in seqs-000000, 4-7 in seqs-000001
    (tmp_path / "cache").mkdir()
    SeqIndex.load_or_build(tmp_path / "ds", toy_index(m), tmp_path / "cache")
    edit_in_place(m.seqs[1].path, b'"toy:i004"', b'"toy:i011"')
    index = SeqIndex.load_or_build(tmp_path / "ds", toy_index(m), tmp_path / "cache")  # from the cache
    stream = TrainStream(index, toy_index(m), split="pretrain", max_len=4, micro_batch=2, grad_accum=1, rank=0,
                         world=1, seed=0, partitions=2, num_workers=workers, shuffle_buffer=4)
    users = []
    with pytest.raises(DataError) as e:
        for batch in stream:
            users += batch["user"].tolist()
    assert str(m.seqs[1].path) in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)
    assert not {4, 5, 6, 7} & set(users)


def test_an_item_shard_edited_in_place_is_refused_by_stage_1(tmp_path):
    m = write_toy(tmp_path / "ds", images=False)
    edit_in_place(m.items[0].path, b"toy item 2 ;", b"toy item 9 ;")
    with pytest.raises(DataError) as e:
        ensure_features(tmp_path / "ds", MINILM)
    assert str(m.items[0].path) in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ manifest counts
def edit_manifest(root, change):
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, key", [
    (lambda d: d["counts"].update(users=99999), "counts.users"),
    (lambda d: d["counts"].update(items=3), "counts.items"),
    (lambda d: d["split"].update(valid_users=5), "split.valid_users"),
    (lambda d: d["counts"]["per_domain"]["toy"].update(interactions=7), "counts.per_domain"),
])
def test_manifest_counts_that_contradict_the_shard_list_are_refused(tmp_path, change, key):
    write_toy(tmp_path / "ds", images=False)
    edit_manifest(tmp_path / "ds", change)
    with pytest.raises(DataError) as e:
        load_manifest(tmp_path / "ds")
    assert "dataset.json" in str(e.value) and key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("change, key", [
    (lambda d: d["counts"].update(interactions=d["counts"]["interactions"] + 1), "counts.interactions"),
    (lambda d: d["split"].update(train_samples=1), "split.train_samples"),
    (lambda d: d["split"].update(pretrain_samples=10**6), "split.pretrain_samples"),
])
def test_manifest_counts_that_contradict_the_records_are_refused_by_the_index_pass(tmp_path, change, key):
    m = write_toy(tmp_path / "ds", images=False)
    (tmp_path / "cache").mkdir()
    SeqIndex.load_or_build(tmp_path / "ds", toy_index(m), tmp_path / "cache")
    edit_manifest(tmp_path / "ds", change)
    for cache in (tmp_path / "cache", tmp_path / "fresh"):  # with the index cached before the edit, and without
        cache.mkdir(exist_ok=True)
        with pytest.raises(DataError) as e:
            SeqIndex.load_or_build(tmp_path / "ds", toy_index(m), cache)
        assert "dataset.json" in str(e.value) and key in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------- record contents
GOOD = {"user": "toy:u1", "domain": "toy", "items": ["toy:a", "toy:b", "toy:a"], "timestamps": [10, 20, 30]}


@pytest.mark.parametrize("timestamps", [[10**30] * 3, [10**30, 10**30 + 1, 10**30 + 2], [1, 2, 2**63],
                                        [1_600_000_000_000, 1_600_000_000_001, 1_600_000_000_002]])
def test_out_of_range_timestamps_are_bad_timestamps(timestamps):
    with pytest.raises(InvalidRecord) as e:
        seq_record({**GOOD, "timestamps": timestamps})
    assert e.value.reason == "bad_timestamps" and "year 9999" in e.value.problem


def test_out_of_range_timestamps_in_a_shard_are_counted_as_such(tmp_path):
    shard = raw_shard(tmp_path / "seqs-000000.tar", [seq("toy:u1", ["toy:a", "toy:b", "toy:a"], [10**30] * 3),
                                                      seq("toy:u2", ["toy:a", "toy:b", "toy:c"], [1, 2, 3])])
    bad = BadRecords(strict=False)
    assert [r.user for _, r in iter_seq_records([shard], bad)] == ["toy:u2"]
    assert bad.as_dict() == {"bad_timestamps": 1}


def test_a_domain_that_contradicts_the_item_keys_is_a_bad_record(tmp_path):
    with pytest.raises(InvalidRecord) as e:
        seq_record({**GOOD, "items": ["toy:a", "other:b", "toy:c"]})
    assert e.value.reason == "bad_record" and "'other:b'" in e.value.problem and "'toy'" in e.value.problem
    for sneaky in (["toy:a", "toy:b", "other:c\0toy:d"], ["toy:a", "toy:b", "toytoy:c"], ["toy:a", "toy:b", "toy"]):
        with pytest.raises(InvalidRecord, match="is not a key of domain 'toy'"):
            seq_record({**GOOD, "items": sneaky})
    shard = raw_shard(tmp_path / "seqs-000000.tar", [seq("toy:u1", ["toy:a", "other:b", "toy:c"], [1, 2, 3]),
                                                      seq("toy:u2", ["toy:a", "toy:b", "toy:c"], [1, 2, 3])])
    with pytest.raises(DataError, match=r"seqs-000000.tar: user 'toy:u1': item 'other:b' is not a key of domain 'toy'"):
        list(iter_seq_records([shard], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    assert [r.user for _, r in iter_seq_records([shard], bad)] == ["toy:u2"]
    assert bad.as_dict() == {"bad_record": 1}


def test_a_converter_counts_out_of_range_timestamps_instead_of_crashing(tmp_path):
    fixtures = REPO / "tests" / "fixtures" / "amazon"
    reviews = tmp_path / "Office_Products.csv"
    reviews.write_text((fixtures / "2018" / "Office_Products.csv").read_text()
                       + "B000000003,A01USER,5.0,1e30\nB000000004,A01USER,5.0,-5\n")
    office = amazon.DomainSource("office", reviews, fixtures / "2018" / "meta_Office_Products.json")
    m = amazon.prepare([office], tmp_path / "office", "office")
    assert m.provenance["skipped"] == {"bad_timestamps": 2}
    assert m.counts["interactions"] == 36  # as without the two rows
