"""The item side of a model: frozen per-item content features as one process holds them.

Without item parallelism a process holds every item (row = item id, row 0 = padding). With it
(``train.item_parallel``), process r of W holds one contiguous shard of rows, [offset, offset + rows): a catalogue
of 10⁷ items × 768-d features then costs 1/W of the memory per process, and the candidate side of the full
softmax (adapting items, scoring them) is split the same way. Looking up the rows of arbitrary ids — the items of
a batch's histories — is then a collective that every rank joins (``distributed.exchange_rows``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from .. import distributed


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

    @classmethod
    def placeholder(cls, num_items: int, text_dim: int, image_dim: int | None) -> "ItemFeatures":
        image = None if image_dim is None else torch.zeros(num_items + 1, image_dim)
        return cls(torch.zeros(num_items + 1, text_dim), image,
                   None if image is None else torch.zeros(num_items + 1, dtype=torch.bool))


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
