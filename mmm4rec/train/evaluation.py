"""Distributed full-ranking evaluation (docs/model.md §11).

Users are split over ranks by the EvalStream; each rank scores its users against all items in chunks and counts,
per user, the items that score at least as high as the target:
    rank = #{j ∉ {0, target} : score_j ≥ score_target}      (ties count against the target)
Hit@K = [rank < K], NDCG@K = [rank < K] / log2(rank + 2), MRR = 1 / (rank + 1). Only sums cross the network
(one all-reduce), never a users × items matrix, and no sort is needed. Seen items can be masked out.

With item parallelism each rank holds a shard of the items: the ranks' users are gathered (b·W vectors, not
their scores), every rank counts the higher-scoring items of its shard for all of them, and the counts are
all-reduced — the same ranks as one process computes.

The target's own score is read from a matrix product too (the diagonal of user @ targetsᵀ): an elementwise dot
product rounds differently in the last bit, which would make exact ties (e.g. a model that scores everything
equal) count wrongly. The target column itself is excluded by index, not by value.

A stop request (SIGTERM during a run's validation or test) is checked between batches of users: the ranking
stops there and ``StopRequested`` is raised on every rank, so a run never waits for a whole ranking to stop.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Optional

import torch

from .. import distributed
from ..model import Batch, SequentialRecommender


class StopRequested(Exception):
    """The evaluation stopped early because a stop was requested (on any rank); no metrics."""


def metric_names(ks: Iterable[int]) -> list[str]:
    ks = list(ks)
    return [f"hit@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


def ranking_sums(ranks: torch.Tensor, ks: list[int], valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sums of every metric over a batch of 0-based ranks (rows where ``valid``), in ``metric_names`` order
    (float64). A mask, not a boolean index: the shapes stay static and nothing waits for the device."""
    r = ranks.double()
    w = torch.ones_like(r) if valid is None else valid.double()
    hit = torch.stack([((r < k) * w).sum() for k in ks])
    gain = w / torch.log2(r + 2)
    ndcg = torch.stack([torch.where(r < k, gain, 0.0).sum() for k in ks])
    return torch.cat([hit, ndcg, (w / (r + 1)).sum()[None]])


def target_scores(user: torch.Tensor, items: torch.Tensor, first_id: int, targets: torch.Tensor) -> torch.Tensor:
    """Each target's score where its row is among ``items`` (ids first_id …), 0 elsewhere."""
    col = targets - first_id
    held = (col >= 0) & (col < len(items))
    score = (user @ items[col.clamp(0, len(items) - 1)].t()).diagonal()
    return torch.where(held, score, 0.0)


def count_higher(user: torch.Tensor, items: torch.Tensor, first_id: int, targets: torch.Tensor,
                 target_score: torch.Tensor, item_chunk: int,
                 seen: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Per user, how many of ``items`` (ids first_id …; id 0 and the target excluded, seen (row, id) pairs
    masked) score at least ``target_score``."""
    rows = torch.arange(len(user), device=user.device)
    higher = torch.zeros(len(user), dtype=torch.long, device=user.device)
    start = max(first_id, 1)  # padding is never a candidate
    stop_all = first_id + len(items)
    for lo in range(start, stop_all, item_chunk):
        hi = min(lo + item_chunk, stop_all)
        scores = user @ items[lo - first_id : hi - first_id].t()
        inside = (targets >= lo) & (targets < hi)
        scores[rows[inside], targets[inside] - lo] = float("-inf")  # the target is not its own competitor
        if seen is not None:
            r, i = seen
            here = (i >= lo) & (i < hi)
            scores[r[here], i[here] - lo] = float("-inf")
        higher += (scores >= target_score[:, None]).sum(-1)
    return higher


def target_ranks(user: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, item_chunk: int,
                 seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """0-based rank of each target among items 1..I scored by ``user @ items.T`` (items row 0 = padding)."""
    return count_higher(user, items, 0, targets, target_scores(user, items, 0, targets), item_chunk, seen)


def _sharded_ranks(user, items, first_id, targets, item_chunk, seen) -> torch.Tensor:
    """target_ranks when ``items`` is this rank's shard: every rank ranks everyone's users against its shard."""
    n, me = len(user), distributed.rank()
    users, all_targets = distributed.all_gather(user), distributed.all_gather(targets)
    if seen is not None:
        seen = distributed.all_gather_pairs(seen, n)
    score = distributed.all_reduce(target_scores(users, items, first_id, all_targets), "sum")
    higher = distributed.all_reduce(count_higher(users, items, first_id, all_targets, score, item_chunk, seen))
    return higher[me * n : (me + 1) * n]


@torch.no_grad()
def evaluate(model: SequentialRecommender, batches: Iterable[dict], *, ks: list[int], item_chunk: int,
             device: torch.device, mask_history: bool = False, gather_params=None,
             stop: Optional[Callable[[], bool]] = None) -> dict[str, float]:
    """Metrics over every valid row of ``batches`` on all ranks (identical on 1 and N processes).

    ``gather_params``: a context manager that materialises ZeRO-3-partitioned parameters (None otherwise).
    ``stop``: asked before each batch (a host flag, no device sync); once it says so on any rank, every rank
    raises ``StopRequested`` (ranks with their own users stop on their own and agree in the final all-reduce;
    with item parallelism, whose batches are collectives, they agree before every batch).
    """
    was_training = model.training
    model.eval()
    # on the device: no sync per batch; the last entry counts the ranks that stopped early
    sums = torch.zeros(2 * len(ks) + 3, dtype=torch.float64, device=device)
    with gather_params or contextlib.nullcontext():
        tables = model.item_tables()  # every item this rank holds (all of them, or its shard)
        items = tables.scores.float()
        for raw in batches:
            if stop is not None:
                stopping = stop()
                if model.sharded:
                    flag = torch.tensor([float(stopping)], device=device)
                    stopping = bool(distributed.all_reduce(flag, "max").item())
                if stopping:
                    sums[-1] = 1
                    break
            batch = Batch.from_dict(raw).to(device)
            valid = raw["valid"].to(device)
            user = model(batch, tables).float()
            seen = (raw["seen_rows"].to(device), raw["seen_items"].to(device)) if mask_history else None
            if model.sharded:
                ranks = _sharded_ranks(user, items, tables.first_id, batch.targets, item_chunk, seen)
            else:
                ranks = target_ranks(user, items, batch.targets, item_chunk, seen)
            sums[:-2] += ranking_sums(ranks, ks, valid)
            sums[-2] += valid.sum()
            distributed.beat()
    model.train(was_training)
    sums = distributed.all_reduce(sums).cpu()
    if sums[-1].item():
        raise StopRequested()
    count = sums[-2].item()
    out = {name: (v / count if count else math.nan) for name, v in zip(metric_names(ks), sums[:-2].tolist())}
    out["users"] = int(count)
    return out
