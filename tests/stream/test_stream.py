"""Stage-2 stream: exactly-once delivery over ranks × workers, equal batch counts, world-size-independent global
steps, seeded shuffling, exact resume, evaluation batches and sample construction."""
from collections import Counter

import numpy as np
import pytest
import torch

from mmm4rec.data.dataset import write_dataset
from mmm4rec.data.samples import Histories, expand
from mmm4rec.data.schema import DataError, ItemRecord, SeqRecord
from mmm4rec.data.stream import EvalStream, SeqIndex, TrainStream

NUM_ITEMS = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """89 users with 3–40 interactions in uneven shards (25, 25, 25, 14 users)."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("seqs")
    histories = {}
    seqs = []
    for u in range(89):
        n = int(rng.integers(3, 41))
        items = rng.choice(NUM_ITEMS, n, replace=False)
        ts = np.sort(rng.integers(1_000_000_000, 1_100_000_000, n))
        seqs.append(SeqRecord(f"t:u{u}", "t", [f"t:{i}" for i in items], ts))
        histories[u] = (items + 1, ts)
    write_dataset(root, name="t", items=[ItemRecord(f"t:{i}", f"item {i}") for i in range(NUM_ITEMS)],
                  seqs=seqs, provenance={}, licence="test", shard_size=25)
    item_index = {f"t:{i}": i + 1 for i in range(NUM_ITEMS)}
    return SeqIndex.load_or_build(root, item_index, root), item_index, histories


def train_stream(dataset, rank=0, world=1, micro=8, accum=2, workers=0, partitions=4, seed=3, split="train"):
    index, item_index, _ = dataset
    return TrainStream(index, item_index, split=split, max_len=6, micro_batch=micro, grad_accum=accum, rank=rank,
                       world=world, seed=seed, partitions=partitions, num_workers=workers)


def sample_ids(batches):
    return [(u, p) for b in batches for u, p in zip(b["user"].tolist(), b["position"].tolist())]


def test_index_counts_match_the_protocol(dataset):
    index, _, histories = dataset
    n = np.array([len(histories[u][0]) for u in range(89)])
    assert index.users == [25, 25, 25, 14]
    assert index.total("pretrain") == (n - 1).sum() and index.total("train") == (n - 3).sum()
    assert index.total("valid") == index.total("test") == 89


@pytest.mark.parametrize("split", ["train", "pretrain"])
def test_exactly_once_over_two_ranks_and_two_workers(dataset, split):
    index = dataset[0]
    ranks = [list(train_stream(dataset, rank=r, world=2, micro=4, accum=2, workers=2, split=split)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # equal micro-batch counts: no collective can deadlock
    assert all(len(b["targets"]) == 4 for rank in ranks for b in rank)
    seen = Counter(sample_ids(ranks[0] + ranks[1]))
    assert len(seen) == index.total(split)  # every sample of the epoch ...
    stream = train_stream(dataset, world=2, micro=4, accum=2, split=split)
    repeats = stream.steps_per_epoch * stream.global_batch - index.total(split)
    assert sum(seen.values()) - len(seen) == repeats < stream.global_batch  # ... once, plus the stated top-up
    assert f"{repeats} rows of weight 0" in stream.describe()
    # ... whose loss weight is 0: weighted, every sample counts exactly once, and each global step's real
    # samples carry equal weights that average (over accumulation and ranks) to the step's mean
    weighted = Counter()
    for rank in ranks:
        for b in rank:
            for u, p, w in zip(b["user"].tolist(), b["position"].tolist(), b["weight"].tolist()):
                weighted[(u, p)] += w > 0
    assert set(weighted.values()) == {1} and len(weighted) == index.total(split)
    steps = [ranks[0][i : i + 2] + ranks[1][i : i + 2] for i in range(0, len(ranks[0]), 2)]  # accumulation 2
    for step in steps:
        w = torch.cat([b["weight"] for b in step])
        real = int((w > 0).sum())
        torch.testing.assert_close(w[w > 0], torch.full((real,), 2 * 2 / real))  # world × accumulation / real


def test_global_steps_hold_the_same_samples_on_one_and_two_ranks(dataset):
    one = list(train_stream(dataset, world=1, micro=8, accum=2))  # global batch 16
    two = [list(train_stream(dataset, rank=r, world=2, micro=8, accum=1, workers=2)) for r in range(2)]
    one_steps = [set(sample_ids(one[i : i + 2])) for i in range(0, len(one), 2)]
    two_steps = [set(sample_ids([a, b])) for a, b in zip(*two)]
    assert one_steps == two_steps


def test_epochs_reshuffle_and_seeds_reproduce(dataset):
    def order(epoch, seed):
        s = train_stream(dataset, seed=seed)
        s.set_epoch(epoch)
        return sample_ids(s)

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(1, 3) and sorted(set(order(0, 3))) == sorted(set(order(1, 3)))
    assert order(0, 3) != order(0, 4)


def test_iterating_advances_to_the_next_epoch(dataset):
    s = train_stream(dataset)
    first = sample_ids(s)
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["step"] == 0
    assert sample_ids(s) != first


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_where_it_stopped(dataset, workers):
    full = list(train_stream(dataset, workers=workers))
    s = train_stream(dataset, workers=workers)
    s.set_epoch(0)
    taken = []
    for b in s:  # stop after 3 complete steps (2 micro-batches each)
        taken.append(b)
        if len(taken) == 6:
            break
    state = s.state_dict()
    assert state["step"] == 3
    resumed = train_stream(dataset, workers=workers)
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
