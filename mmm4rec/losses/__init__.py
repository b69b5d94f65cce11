"""Training losses as components, chosen by name (``train.loss``, the registry mmm4rec.registry.LOSSES).

    full      softmax CE over every item (fine-tuning); fused and chunked, optionally item-parallel
    in_batch  softmax CE whose candidates are the batch's targets (pre-training), optionally all ranks' targets
    sampled   the batch's targets plus train.negatives sampled items, logQ-corrected, accidental hits masked

A loss is an nn.Module built as ``Loss(train_config, **needs)`` and called as ``loss(model, batch)``; it decides
which item rows the step adapts (all once, or only the batch's). It declares what it needs from the data on its
class (``needs_target_counts``) and, for a loss of your own, its options (an ``Options`` dataclass read from
``train.loss_options``, passed as ``options=``); the built-ins read their historical train.* keys. ``Objective`` pairs a model with its loss: it is the module DeepSpeed trains, so the whole
step — forward, loss and (through AOTAutograd) backward — is one compiled graph under train.compile.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError, RunConfig, options_of
from ..model import Batch, SequentialRecommender
from ..registry import LOSSES
from .full import FullSoftmax
from .in_batch import InBatchSoftmax
from .sampled import SampledSoftmax


class Objective(nn.Module):
    """The module DeepSpeed trains: ``forward(batch)`` = the step's loss. Its parameters are the model's."""

    def __init__(self, model: SequentialRecommender, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.loss(self.model, batch)


def build_loss(cfg: RunConfig, target_counts: Optional[np.ndarray] = None) -> nn.Module:
    """The loss ``train.loss`` names, given what it declares it needs: ``target_counts`` (how often each item id
    is a training target; the sampled loss's popularity sampler and logQ correction)."""
    name = cfg.loss_name
    cls = LOSSES.get(name)
    kwargs = {}
    if needs_target_counts(cfg):
        if target_counts is None:
            raise ConfigError(f"train.loss={name} needs the items' target counts (the stage-2 index has them)")
        kwargs["target_counts"] = target_counts
    options = options_of(cls, cfg.train.loss_options, "train.loss_options")
    if options is not None:
        kwargs["options"] = options
    return cls(cfg.train, **kwargs)


def needs_target_counts(cfg: RunConfig) -> bool:
    """Whether the run's loss declares that it needs the items' target counts (counting them reads the index)."""
    return bool(getattr(LOSSES.get(cfg.loss_name), "needs_target_counts", False))


__all__ = ["LOSSES", "Objective", "build_loss", "needs_target_counts", "FullSoftmax", "InBatchSoftmax", "SampledSoftmax"]
