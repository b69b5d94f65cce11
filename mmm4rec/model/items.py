"""The item side of a model: frozen per-item content features as one process holds them.

Without item parallelism a process holds every item (row = item id, row 0 = padding). With it
(``train.item_parallel``), process r of W holds one contiguous shard of rows, [offset, offset + rows): a catalogue
of 10⁷ items × 768-d features then costs 1/W of the memory per process, and the candidate side of the full
softmax (adapting items, scoring them) is split the same way. Looking up the rows of arbitrary ids — the items of
a batch's histories — is then a collective that every rank joins (``distributed.exchange_rows``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from .precision import acc_dtype

if TYPE_CHECKING:
    from ..data.features import FeatureStore


@dataclass
class ItemFeatures:
    """Frozen content features of the rows a process holds: [offset, offset + rows) of the catalogue's I+1 rows
    (row 0 = padding, zeros). ``num_items`` is the catalogue's size I, whatever this process holds of it."""

    text: torch.Tensor  # (rows, Dt)
    image: Optional[torch.Tensor] = None  # (rows, Dv); None for text-only data
    image_missing: Optional[torch.Tensor] = None  # (rows,) bool
    offset: int = 0
    total: Optional[int] = None  # I+1 when this is a shard; None: these rows are the whole catalogue

    @property
    def num_items(self) -> int:
        return (self.total if self.total is not None else self.text.shape[0]) - 1

    @property
    def sharded(self) -> bool:
        return self.total is not None and self.text.shape[0] != self.total

    def shard(self, rank: int, world: int) -> "ItemFeatures":
        """Rank ``rank``'s contiguous share of these (whole-catalogue) rows."""
        lo, hi = shard_bounds(self.num_items + 1, rank, world)
        part = lambda t: None if t is None else t[lo:hi]  # noqa: E731 — views: a memory map stays one
        return ItemFeatures(part(self.text), part(self.image), part(self.image_missing), lo, self.num_items + 1)


def shard_bounds(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard ``rank`` when ``rows`` rows are cut into ``world`` contiguous shards (±1 row)."""
    return rank * rows // world, (rank + 1) * rows // world


class FrozenTable(nn.Module):
    """One frozen per-item array (features, or a flag) as held by this process, with lookups by item id."""

    def __init__(self, values: torch.Tensor, offset: int = 0, sharded: bool = False):
        super().__init__()
        self.register_buffer("values", values, persistent=False)  # frozen: never in checkpoints or exports
        self.offset, self.sharded = offset, sharded

    def held(self) -> torch.Tensor:
        """The rows this process holds, ids offset … offset + rows - 1."""
        return self.values

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of any item ids (1-D); under item parallelism a collective every rank joins."""
        if self.sharded:
            return distributed.exchange_rows(self.values, self.offset, ids)
        return self.values[ids]


# Catalogues above this many held rows are adapted in blocks: a 10⁷ × 768 bf16 table would be 30 GB as fp32.
ADAPT_BLOCK = 1 << 16


def adapt(rows: torch.Tensor, adapter: nn.Linear) -> torch.Tensor:
    """``adapter`` over frozen feature rows, in the step's dtype. Large tables go through _FrozenLinear: the rows
    are converted one block at a time and never saved for backward (they are frozen: only the adapter's
    gradient is needed, recomputed block by block)."""
    dtype = torch.get_autocast_dtype(rows.device.type) if torch.is_autocast_enabled(rows.device.type) \
        else adapter.weight.dtype
    if len(rows) <= ADAPT_BLOCK:
        return adapter(rows if rows.dtype == dtype else rows.to(dtype))
    return _FrozenLinear.apply(rows, adapter.weight, adapter.bias, dtype)


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, bias, dtype):
        w, b = weight.to(dtype), bias.to(dtype)
        out = torch.empty(len(rows), w.shape[0], dtype=dtype, device=rows.device)
        for i in range(0, len(rows), ADAPT_BLOCK):
            out[i : i + ADAPT_BLOCK] = F.linear(rows[i : i + ADAPT_BLOCK].to(dtype), w, b)
        ctx.rows, ctx.dtype = rows, dtype  # a reference to the frozen table, not a copy
        ctx.weight_dtype = weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, dtype = ctx.rows, ctx.dtype
        acc = acc_dtype(grad.dtype)
        grad_w = torch.zeros(grad.shape[1], rows.shape[1], dtype=acc, device=grad.device)
        for i in range(0, len(rows), ADAPT_BLOCK):
            grad_w += (grad[i : i + ADAPT_BLOCK].t() @ rows[i : i + ADAPT_BLOCK].to(grad.dtype)).to(acc)
        grad_b = grad.sum(0, dtype=acc)
        return None, grad_w.to(ctx.weight_dtype), grad_b.to(ctx.weight_dtype), None


def item_features(store: "FeatureStore", dtype: torch.dtype = torch.float32) -> ItemFeatures:
    """The store's arrays as the tensors a model holds, memory-mapped from the store (shared between processes,
    never copied; ``dtype`` fp32, or bf16 for a bf16 step from the store's bf16 companion). A non-finite row is an
    error naming its item."""
    feats = ItemFeatures(text=store.tensor("text", dtype), image=store.tensor("image", dtype),
                         image_missing=store.tensor("image_missing"))
    if not (torch.isfinite(feats.text).all() and (feats.image is None or torch.isfinite(feats.image).all())):
        store.verify()  # names the first bad item
    return feats
