"""A toy architecture and a toy loss registered from outside the package, as a user's own module would: the
test trains them through the real launcher with ``--plugin toy_components``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmm4rec.losses.weights import sample_weights
from mmm4rec.model import Batch, ItemFeatures, ItemTables, SequentialRecommender, init_weights
from mmm4rec.registry import ARCHS, LOSSES

log = logging.getLogger("mmm4rec")


class MeanPool(SequentialRecommender):
    """The user vector is the (optionally recency-weighted) mean of the history's adapted text features."""

    arch = "toy_mean"
    domain_specific = ("item_bias",)

    @dataclass
    class Options:
        recency: float = 0.0  # weight of position p: exp(recency * p)

    def __init__(self, cfg, features: ItemFeatures):
        super().__init__(cfg, features)
        self.register_buffer("text", features.text.float(), persistent=False)  # frozen: not a weight
        self.adapter = nn.Linear(features.text.shape[1], cfg.d_model)
        self.item_bias = nn.Parameter(torch.zeros(self.num_items + 1, cfg.d_model))
        self.apply(init_weights)
        log.info("toy_mean: recency %s", self.options.recency)

    def item_tables(self, ids: Optional[torch.Tensor] = None) -> ItemTables:
        rows = self.text if ids is None else self.text[ids]
        bias = self.item_bias if ids is None else self.item_bias[ids]
        x = self.adapter(rows) + bias
        return ItemTables((x,), x / self.cfg.temperature, None if ids is not None else 0)

    def encode(self, batch: Batch, history: tuple[torch.Tensor, ...]) -> torch.Tensor:
        pos = torch.arange(batch.items.shape[1], device=batch.items.device, dtype=torch.float32)
        mask = (pos[None, :] < batch.lengths[:, None]).float() * torch.exp(self.options.recency * pos)[None, :]
        return (history[0] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class SmoothedSoftmax(nn.Module):
    """Full softmax with label smoothing."""

    @dataclass
    class Options:
        smoothing: float = 0.1

    def __init__(self, t, options: "SmoothedSoftmax.Options"):
        super().__init__()
        self.smoothing = options.smoothing
        log.info("toy_smoothed loss: smoothing %s", self.smoothing)

    def forward(self, model: SequentialRecommender, batch: Batch) -> torch.Tensor:
        tables = model.item_tables()
        user = model(batch, tables)
        logits = user @ tables.scores[1:].t()
        per = F.cross_entropy(logits.float(), batch.targets - 1, reduction="none", label_smoothing=self.smoothing)
        return (per * sample_weights(batch, user)).sum()  # each sample's share of the global step


ARCHS.register("toy_mean", MeanPool)
LOSSES.register("toy_smoothed", SmoothedSoftmax)
