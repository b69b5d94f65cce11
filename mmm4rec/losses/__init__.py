"""Training losses as components, chosen by name (``train.loss``), each configured by its own train.* keys.

    full      softmax CE over every item (fine-tuning); fused and chunked, optionally item-parallel
    in_batch  softmax CE whose candidates are the batch's targets (pre-training), optionally all ranks' targets
    sampled   the batch's targets plus train.negatives sampled items, logQ-corrected, accidental hits masked

A loss is an nn.Module called as ``loss(model, batch)``; it decides which item rows the step adapts (all once,
or only the batch's). ``Objective`` pairs a model with its loss: it is the module DeepSpeed trains, so the whole
step — forward, loss and (through AOTAutograd) backward — is one compiled graph under train.compile.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError, RunConfig
from ..model import Batch, SequentialRecommender
from .full import FullSoftmax
from .in_batch import InBatchSoftmax
from .sampled import SampledSoftmax

LOSSES = {"full": FullSoftmax, "in_batch": InBatchSoftmax, "sampled": SampledSoftmax}


class Objective(nn.Module):
    """The module DeepSpeed trains: ``forward(batch)`` = the step's loss. Its parameters are the model's."""

    def __init__(self, model: SequentialRecommender, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.loss(self.model, batch)


def build_loss(cfg: RunConfig, target_counts: Optional[np.ndarray] = None) -> nn.Module:
    """The loss ``train.loss`` names. ``target_counts`` (how often each item id is a training target) feeds the
    sampled loss's popularity sampler and logQ correction."""
    name = cfg.loss_name
    if name == "sampled":
        if target_counts is None:
            raise ConfigError("train.loss=sampled needs the items' target counts (the stage-2 index has them)")
        return SampledSoftmax(cfg.train, target_counts)
    return LOSSES[name](cfg.train)


__all__ = ["LOSSES", "Objective", "build_loss", "FullSoftmax", "InBatchSoftmax", "SampledSoftmax"]
