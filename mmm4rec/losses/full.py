"""Full-item softmax cross-entropy over items 1..I (fine-tuning; padding id 0 is never a candidate).

Every item is adapted once per step ([I, D] @ [D, N]), the histories read their rows from that table, and the CE
runs chunked over the candidates (never a (b × I) fp32 logits tensor beyond one chunk). With train.item_parallel
each rank adapts and scores only its shard of the items, and the CE is item-parallel.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..model import Batch, SequentialRecommender
from .cross_entropy import chunked_cross_entropy, item_parallel_cross_entropy
from .weights import sample_weights


class FullSoftmax(nn.Module):
    def __init__(self, t: TrainConfig):
        super().__init__()
        self.chunk, self.item_parallel = t.ce_chunk, t.item_parallel

    def forward(self, model: SequentialRecommender, batch: Batch) -> torch.Tensor:
        tables = model.item_tables()  # every item this rank holds, once
        user = model(batch, tables)
        cand, first = tables.scores, tables.first_id
        if first == 0:  # the padding row is never a candidate
            cand, first = cand[1:], 1
        weight = sample_weights(batch, user)
        if model.sharded:
            return item_parallel_cross_entropy(user, cand, first, batch.targets, weight, self.chunk)
        return chunked_cross_entropy(user, cand, batch.targets - first, weight, self.chunk)
