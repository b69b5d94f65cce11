"""Distributed full-ranking evaluation (MODEL_SPEC §11).

Users are split over ranks by the EvalStream; each rank scores its users against all items in chunks and counts,
per user, the items that score at least as high as the target:
    rank = #{j ∉ {0, target} : score_j ≥ score_target}      (ties count against the target)
Hit@K = [rank < K], NDCG@K = [rank < K] / log2(rank + 2), MRR = 1 / (rank + 1). Only sums cross the network
(one all-reduce), never a users × items matrix, and no sort is needed. Seen items can be masked out.

The target's own score is read from a matrix product too (the diagonal of user @ targetsᵀ): an elementwise dot
product rounds differently in the last bit, which would make exact ties (e.g. a model that scores everything
equal) count wrongly. The target column itself is excluded by index, not by value.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch

from ..distributed import all_reduce_sum
from ..model import Batch, SequentialRecommender


def metric_names(ks: Iterable[int]) -> list[str]:
    ks = list(ks)
    return [f"hit@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


def ranking_sums(ranks: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """Sums of every metric over a batch of 0-based ranks, in ``metric_names`` order (float64)."""
    r = ranks.double()
    hit = torch.stack([(r < k).double().sum() for k in ks])
    gain = 1.0 / torch.log2(r + 2)
    ndcg = torch.stack([torch.where(r < k, gain, 0.0).sum() for k in ks])
    return torch.cat([hit, ndcg, (1.0 / (r + 1)).sum()[None]])


def target_ranks(user: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, item_chunk: int,
                 seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """0-based rank of each target among items 1..I scored by ``user @ items.T`` (items row 0 = padding)."""
    target_score = (user @ items[targets].t()).diagonal()[:, None]
    rows = torch.arange(len(user), device=user.device)
    higher = torch.zeros(len(user), dtype=torch.long, device=user.device)
    for start in range(1, items.shape[0], item_chunk):
        stop = min(start + item_chunk, items.shape[0])
        scores = user @ items[start:stop].t()
        inside = (targets >= start) & (targets < stop)
        scores[rows[inside], targets[inside] - start] = float("-inf")  # the target is not its own competitor
        if seen is not None:
            r, i = seen
            here = (i >= start) & (i < stop)
            scores[r[here], i[here] - start] = float("-inf")
        higher += (scores >= target_score).sum(-1)
    return higher


@torch.no_grad()
def evaluate(model: SequentialRecommender, batches: Iterable[dict], *, ks: list[int], item_chunk: int,
             device: torch.device, mask_history: bool = False, gather_params=None) -> dict[str, float]:
    """Metrics over every valid row of ``batches`` on all ranks (identical on 1 and N processes).

    ``gather_params``: a context manager that materialises ZeRO-3-partitioned parameters (None otherwise).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2 * len(ks) + 2, dtype=torch.float64, device=device)  # on the device: no sync per batch
    with gather_params or contextlib.nullcontext():
        tables = model.item_tables()
        items = tables.scores.float()
        for raw in batches:
            batch = Batch.from_dict(raw).to(device)
            valid = raw["valid"].to(device)
            user = model.encode(batch, tables).float()
            seen = (raw["seen_rows"].to(device), raw["seen_items"].to(device)) if mask_history else None
            ranks = target_ranks(user, items, batch.targets, item_chunk, seen)[valid]
            sums[:-1] += ranking_sums(ranks, ks)
            sums[-1] += len(ranks)
    model.train(was_training)
    sums = all_reduce_sum(sums).cpu()
    count = sums[-1].item()
    out = {name: (v / count if count else math.nan) for name, v in zip(metric_names(ks), sums[:-1].tolist())}
    out["users"] = int(count)
    return out
