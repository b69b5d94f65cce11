"""Per-sample loss weights: a batch's ``weight`` (its samples' shares of the global step, 0 for the rows that
fill a step) or, without one, the plain mean."""
from __future__ import annotations

import torch

from ..model.precision import acc_dtype
from ..model import Batch


def sample_weights(batch: Batch, like: torch.Tensor) -> torch.Tensor:
    """In the loss's accumulation dtype (at least fp32; fp64 when ``like`` is fp64)."""
    dtype = acc_dtype(like.dtype)
    if batch.weight is not None:
        return batch.weight.to(dtype)
    return torch.full(batch.targets.shape, 1.0 / len(batch.targets), dtype=dtype, device=batch.targets.device)
