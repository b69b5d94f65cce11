"""Dtype helpers for mixed precision: what accumulates in fp32, and casts that cost nothing when not needed.

Δ, cumulative sums, norms and losses accumulate in fp32 under bf16 autocast — and in fp64 for fp64 inputs, so the
test oracles can compare every form to ~1e-12. Both helpers are plain Python on dtypes: the step's op count
(what a launch-bound GPU pays for) is measured, and ``t.to(t.dtype)`` or ``torch.promote_types`` would each be
a dispatched op.
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)
