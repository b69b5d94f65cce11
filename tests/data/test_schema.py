"""Record validation, the strict/lenient policy and item-id mapping."""
import numpy as np
import pytest

from mmm4rec.data.schema import BadRecords, DataError, InvalidRecord, SeqRecord, map_items, seq_record

GOOD = {"user": "toy:u1", "domain": "toy", "items": ["toy:a", "toy:b", "toy:c"], "timestamps": [10, 10, 20]}


def test_valid_record_with_equal_timestamps():
    rec = seq_record(GOOD)
    assert rec.items == GOOD["items"] and rec.timestamps.dtype == np.int64
    assert rec.timestamps.tolist() == [10, 10, 20]


@pytest.mark.parametrize("change, reason", [
    ({"user": None}, "bad_record"),
    ({"items": "toy:a"}, "bad_record"),
    ({"items": ["toy:a", 3, "toy:c"]}, "bad_record"),
    ({"timestamps": [10, 20]}, "bad_record"),
    ({"items": ["toy:a", "toy:b"], "timestamps": [1, 2]}, "too_short"),
    ({"timestamps": [10, 11.5, 20]}, "bad_timestamps"),
    ({"timestamps": ["10", "11", "20"]}, "bad_timestamps"),
    ({"timestamps": [-5, 10, 20]}, "bad_timestamps"),
    ({"timestamps": [10, 30, 20]}, "unsorted_timestamps"),
    ({"items": ["toy:a", "toy:a", "toy:c"]}, "duplicate_event"),
])
def test_invalid_records_name_their_reason(change, reason):
    with pytest.raises(InvalidRecord) as e:
        seq_record({**GOOD, **change})
    assert e.value.reason == reason


def test_missing_field():
    with pytest.raises(InvalidRecord, match="user, domain, items, timestamps"):
        seq_record({"user": "x"})


def test_same_item_at_different_times_is_a_repeat_not_a_duplicate():
    seq_record({**GOOD, "items": ["toy:a", "toy:b", "toy:a"]})


def test_bad_records_strict_raises_lenient_counts():
    with pytest.raises(DataError, match="file.tar: user 'u'"):
        BadRecords(strict=True).report("too_short", "file.tar: user 'u': 2 interactions")
    bad = BadRecords(strict=False)
    for _ in range(5):
        bad.report("too_short", "x")
    bad.report("unsorted_timestamps", "y")
    bad.update({"too_short": 2})
    assert bad.as_dict() == {"too_short": 7, "unsorted_timestamps": 1} and bad


def _rec(items):
    return SeqRecord("toy:u1", "toy", list(items), np.arange(len(items), dtype=np.int64) * 10)


def test_map_items():
    index = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert map_items(_rec("abcd"), index, BadRecords(True)).tolist() == [1, 2, 3, 4]


def test_map_items_unknown_strict_names_shard_user_and_item():
    with pytest.raises(DataError, match=r"seqs-000003.tar: user 'toy:u1': item 'x' is not in the feature store"):
        map_items(_rec("abxc"), {"a": 1, "b": 2, "c": 3}, BadRecords(True), shard="seqs-000003.tar")


def test_map_items_unknown_lenient_drops_occurrences_and_keeps_timestamps_aligned():
    bad = BadRecords(False)
    rec = _rec("axbcx")
    ids = map_items(rec, {"a": 1, "b": 2, "c": 3}, bad)
    assert ids.tolist() == [1, 2, 3] and rec.items == ["a", "b", "c"] and rec.timestamps.tolist() == [0, 20, 30]
    assert bad.as_dict() == {"unknown_item": 2}
    assert map_items(_rec("axx"), {"a": 1}, bad) is None
    assert bad.as_dict() == {"too_short": 1, "unknown_item": 4}
