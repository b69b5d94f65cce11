"""Per-sample loss weights: a batch's ``weight`` (its samples' shares of the global step, 0 for the rows that
fill a step) or, without one, the plain mean."""
from __future__ import annotations

import torch

from ..model import Batch


def sample_weights(batch: Batch) -> torch.Tensor:
    if batch.weight is not None:
        return batch.weight.float()
    return torch.full(batch.targets.shape, 1.0 / len(batch.targets), device=batch.targets.device)
