"""Stage-2 stream: exactly-once delivery over ranks × workers, equal batch counts, world-size-independent global
steps, seeded shuffling, exact resume, evaluation batches and sample construction, for all users and for user
subsets."""
from collections import Counter

import numpy as np
import pytest
import torch

from mmm4rec.data.dataset import write_dataset
from mmm4rec.data.samples import Histories, expand
from mmm4rec.data.schema import DataError, ItemRecord, SeqRecord
from mmm4rec.data.stream import EvalStream, SeqIndex, TrainStream, UserSubset, user_key_hash

NUM_ITEMS = 120
FEW = UserSubset(0.3, seed=5)  # about 27 of the 89 users


def write_users(root, shard_size=25):
    """89 users with 3–40 interactions, in uneven shards (25, 25, 25, 14 users by default)."""
    rng = np.random.default_rng(7)
    histories = {}
    seqs = []
    for u in range(89):
        n = int(rng.integers(3, 41))
        items = rng.choice(NUM_ITEMS, n, replace=False)
        ts = np.sort(rng.integers(1_000_000_000, 1_100_000_000, n))
        seqs.append(SeqRecord(f"t:u{u}", "t", [f"t:{i}" for i in items], ts))
        histories[u] = (items + 1, ts)
    write_dataset(root, name="t", items=[ItemRecord(f"t:{i}", f"item {i}") for i in range(NUM_ITEMS)],
                  seqs=seqs, provenance={}, licence="test", shard_size=shard_size)
    item_index = {f"t:{i}": i + 1 for i in range(NUM_ITEMS)}
    return SeqIndex.load_or_build(root, item_index, root), item_index, histories


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_users(tmp_path_factory.mktemp("seqs"))


def train_stream(dataset, rank=0, world=1, micro=8, accum=2, workers=0, partitions=4, seed=3, split="train",
                 users=None):
    index, item_index, _ = dataset
    return TrainStream(index, item_index, split=split, max_len=6, micro_batch=micro, grad_accum=accum, rank=rank,
                       world=world, seed=seed, partitions=partitions, num_workers=workers, users=users)


def kept_users(users):
    """Ordinals of the dataset's users a subset holds, from their keys (independent of the index)."""
    hashes = np.array([user_key_hash(f"t:u{u}") for u in range(89)], np.uint64)
    return set(np.flatnonzero(users.keeps(hashes)).tolist()) if users else set(range(89))


def expected_samples(histories, split, users=None):
    first, last = {"train": (1, -3), "pretrain": (1, -1)}[split]
    return {(u, p) for u in kept_users(users) for p in range(first, len(histories[u][0]) + last + 1)}


def sample_ids(batches):
    return [(u, p) for b in batches for u, p in zip(b["user"].tolist(), b["position"].tolist())]


def test_index_counts_match_the_protocol(dataset):
    index, _, histories = dataset
    n = np.array([len(histories[u][0]) for u in range(89)])
    assert index.users == [25, 25, 25, 14]
    assert index.total("pretrain") == (n - 1).sum() and index.total("train") == (n - 3).sum()
    assert index.total("valid") == index.total("test") == 89


@pytest.mark.parametrize("split, users", [("train", None), ("pretrain", None), ("train", FEW),
                                          ("pretrain", UserSubset(0.3, seed=5, complement=True))])
def test_exactly_once_over_two_ranks_and_two_workers(dataset, split, users):
    index, _, histories = dataset
    ranks = [list(train_stream(dataset, rank=r, world=2, micro=4, accum=2, workers=2, split=split, users=users))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # equal micro-batch counts: no collective can deadlock
    assert all(len(b["targets"]) == 4 for rank in ranks for b in rank)
    seen = Counter(sample_ids(ranks[0] + ranks[1]))
    assert set(seen) == expected_samples(histories, split, users)  # every sample of the epoch (of its users) ...
    assert len(seen) == index.total(split, users)
    stream = train_stream(dataset, world=2, micro=4, accum=2, split=split, users=users)
    repeats = stream.steps_per_epoch * stream.global_batch - index.total(split, users)
    assert sum(seen.values()) - len(seen) == repeats < stream.global_batch  # ... once, plus the stated top-up
    assert f"{repeats} rows of weight 0" in stream.describe()
    # ... whose loss weight is 0: weighted, every sample counts exactly once, and each global step's real
    # samples carry equal weights that average (over accumulation and ranks) to the step's mean
    weighted = Counter()
    for rank in ranks:
        for b in rank:
            for u, p, w in zip(b["user"].tolist(), b["position"].tolist(), b["weight"].tolist()):
                weighted[(u, p)] += w > 0
    assert set(weighted.values()) == {1} and len(weighted) == index.total(split, users)
    steps = [ranks[0][i : i + 2] + ranks[1][i : i + 2] for i in range(0, len(ranks[0]), 2)]  # accumulation 2
    for step in steps:
        w = torch.cat([b["weight"] for b in step])
        real = int((w > 0).sum())
        torch.testing.assert_close(w[w > 0], torch.full((real,), 2 * 2 / real))  # world × accumulation / real


@pytest.mark.parametrize("users", [None, FEW])
def test_global_steps_hold_the_same_samples_on_one_and_two_ranks(dataset, users):
    one = list(train_stream(dataset, world=1, micro=8, accum=2, users=users))  # global batch 16
    two = [list(train_stream(dataset, rank=r, world=2, micro=8, accum=1, workers=2, users=users)) for r in range(2)]
    one_steps = [set(sample_ids(one[i : i + 2])) for i in range(0, len(one), 2)]
    two_steps = [set(sample_ids([a, b])) for a, b in zip(*two)]
    assert one_steps == two_steps


def test_epochs_reshuffle_and_seeds_reproduce(dataset):
    def order(epoch, seed):
        s = train_stream(dataset, seed=seed)
        s.load_state_dict({**s.state_dict(), "epoch": epoch, "step": 0})
        return sample_ids(s)

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(1, 3) and sorted(set(order(0, 3))) == sorted(set(order(1, 3)))
    assert order(0, 3) != order(0, 4)


def test_iterating_advances_to_the_next_epoch(dataset):
    s = train_stream(dataset)
    first = sample_ids(s)
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["step"] == 0
    assert sample_ids(s) != first


@pytest.mark.parametrize("workers, users", [(0, None), (2, None), (2, FEW)])
def test_resume_continues_exactly_where_it_stopped(dataset, workers, users):
    full = list(train_stream(dataset, workers=workers, users=users))
    s = train_stream(dataset, workers=workers, users=users)
    taken = []
    for b in s:  # stop after 3 complete steps (2 micro-batches each)
        taken.append(b)
        if len(taken) == 6:
            break
    state = s.state_dict()
    assert state["step"] == 3
    resumed = train_stream(dataset, workers=workers, users=users)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(taken) + len(rest) == len(full)
    for a, b in zip(taken + rest, full):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_data_layout(dataset):
    state = train_stream(dataset, partitions=4).state_dict()
    with pytest.raises(DataError, match="partitions=4"):
        train_stream(dataset, partitions=2).load_state_dict(state)
    with pytest.raises(DataError, match=r"checkpoint has users=None, this run users-0.3-seed5"):
        train_stream(dataset, users=FEW).load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "users"}  # a checkpoint from before user subsets
    train_stream(dataset).load_state_dict(old)


def test_bad_partitioning_is_a_clear_error(dataset):
    with pytest.raises(DataError, match="multiple of the world size"):
        train_stream(dataset, world=2, partitions=3)
    with pytest.raises(DataError, match="must be divisible by data.partitions"):
        train_stream(dataset, micro=5, accum=1, partitions=4)


def test_batches_are_the_protocols_samples(dataset):
    _, _, histories = dataset
    for b in train_stream(dataset):
        for row in range(len(b["targets"])):
            items, ts = histories[int(b["user"][row])]
            pos, L = int(b["position"][row]), 6
            assert 1 <= pos <= len(items) - 3
            hist = items[max(0, pos - L) : pos]
            assert b["lengths"][row] == len(hist) and b["targets"][row] == items[pos] and b["target_ts"][row] == ts[pos]
            assert b["items"][row].tolist() == list(hist) + [0] * (L - len(hist))
            assert b["timestamps"][row, : len(hist)].tolist() == list(ts[max(0, pos - L) : pos])


def test_expand_each_split():
    h = Histories.build([np.arange(1, 8)], [np.arange(10, 17)], [0])  # one user, 7 items
    for split, positions in [("pretrain", range(1, 7)), ("train", range(1, 5)), ("valid", [5]), ("test", [6])]:
        s = expand(h, split, L=3)
        assert s.position.tolist() == list(positions)
        assert s.targets.tolist() == [p + 1 for p in positions]
    s = expand(h, "pretrain", L=3, skip=np.array([2]), limit=np.array([2]))
    assert s.position.tolist() == [3, 4] and s.items.tolist() == [[1, 2, 3], [2, 3, 4]]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluation_covers_every_user_once_with_equal_batches(dataset, split):
    index, item_index, histories = dataset
    streams = [EvalStream(index, item_index, split=split, max_len=6, batch_size=16, rank=r, world=3, mask_history=True)
               for r in range(3)]
    batches = [list(s) for s in streams]
    assert len({len(b) for b in batches}) == 1
    users = Counter(int(u) for rank in batches for b in rank for u, v in zip(b["user"], b["valid"]) if v)
    assert sorted(users) == list(range(89)) and set(users.values()) == {1}
    for rank in batches:
        for b in rank:
            for row in torch.nonzero(b["valid"]).flatten().tolist():
                items, _ = histories[int(b["user"][row])]
                pos = len(items) - (2 if split == "valid" else 1)
                assert b["targets"][row] == items[pos]
                seen = b["seen_items"][b["seen_rows"] == row].tolist()
                assert sorted(seen) == sorted(set(items[:pos].tolist()) - {items[pos]})


# ------------------------------------------------------------------------------------------------ user subsets
def test_a_subset_and_its_complement_partition_the_users(dataset):
    index, item_index, _ = dataset
    complement = UserSubset(FEW.fraction, FEW.seed, complement=True)

    def users_of(subset):
        return [int(u) for b in EvalStream(index, item_index, split="valid", max_len=6, batch_size=16, rank=0,
                                           world=1, users=subset) for u, v in zip(b["user"], b["valid"]) if v]

    few, rest = users_of(FEW), users_of(complement)
    assert set(few) == kept_users(FEW) and len(few) == len(set(few)) == index.total("valid", FEW)
    assert sorted(few + rest) == list(range(89))  # disjoint, and together every user
    assert 15 < len(few) < 40
    assert kept_users(UserSubset(0.3, seed=6)) != kept_users(FEW)  # another seed, another subset
    assert kept_users(UserSubset(1.0)) == set(range(89)) and not kept_users(UserSubset(1.0, complement=True))


def test_subset_fraction_is_close_to_the_request():
    hashes = np.array([user_key_hash(f"shop:user{u}") for u in range(20_000)], np.uint64)
    for fraction, seed in [(0.05, 0), (0.05, 1), (0.5, 2), (0.9, 3)]:
        share = UserSubset(fraction, seed).keeps(hashes).mean()
        assert abs(share - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / len(hashes))
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\], got 0"):
        UserSubset(0)


def test_subset_is_stable_across_shard_layouts(tmp_path, dataset):
    resharded = write_users(tmp_path / "seven", shard_size=7)  # the same users, 13 shards
    assert resharded[0].users == [7] * 12 + [5]
    here, there = (set(sample_ids(train_stream(d, split="pretrain", users=FEW))) for d in (dataset, resharded))
    assert here == there and {u for u, _ in here} == kept_users(FEW)


def test_subset_counts_come_from_the_cached_index_without_reading_shards(tmp_path, dataset, monkeypatch):
    _, item_index, histories = dataset
    index = write_users(tmp_path / "ds")[0]
    assert list(tmp_path.glob("ds/stage2-index-*.npz"))
    monkeypatch.setattr("mmm4rec.data.stream.iter_seq_records", lambda *a: pytest.fail("a shard was read"))
    cached = SeqIndex.load_or_build(tmp_path / "ds", item_index, tmp_path / "ds")
    assert cached.users == index.users and np.array_equal(cached.key_hashes, index.key_hashes)
    lengths = {u: len(histories[u][0]) for u in range(89)}
    for users in (None, FEW, UserSubset(0.05, seed=1), UserSubset(0.05, seed=1, complement=True)):
        kept = kept_users(users)
        assert cached.total("train", users) == sum(lengths[u] - 3 for u in kept)
        assert cached.total("pretrain", users) == sum(lengths[u] - 1 for u in kept)
        assert cached.total("test", users) == len(kept)
        assert cached.samples("valid", users).tolist() == [len(kept & set(range(a, a + 25))) for a in (0, 25, 50, 75)]


# ------------------------------------------------------------------------------------------ item popularity
@pytest.mark.parametrize("users", [None, FEW])
def test_target_counts_equal_a_count_over_expanded_samples(tmp_path, users, monkeypatch):
    index, item_index, histories = write_users(tmp_path / "ds")
    kept = sorted(kept_users(users))
    h = Histories.build([histories[u][0] for u in kept], [histories[u][1] for u in kept], kept)
    for split in ("pretrain", "train", "valid", "test"):
        brute = np.bincount(expand(h, split, L=6).targets, minlength=NUM_ITEMS + 1)
        got = index.target_counts(split, users)
        assert got.dtype == np.int64 and got.shape == (NUM_ITEMS + 1,) and got[0] == 0
        assert np.array_equal(got, brute) and got.sum() == index.total(split, users)
    # cached next to the index: a new process gets them without reading a shard
    assert len(list((tmp_path / "ds").glob("stage2-index-*-targets-*.npz"))) == 1
    monkeypatch.setattr("mmm4rec.data.stream.iter_seq_records", lambda *a: pytest.fail("a shard was read"))
    again = SeqIndex.load_or_build(tmp_path / "ds", item_index, tmp_path / "ds")
    assert np.array_equal(again.target_counts("train", users), index.target_counts("train", users))
