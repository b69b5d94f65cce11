"""From user histories to training and evaluation samples (docs/model.md §11), vectorised over many users at once.

Leave-one-out on a chronological history i_0 … i_{n-1} (n ≥ 3):
- ``pretrain``: every prefix — targets at positions 1 … n-1;
- ``train``:    every prefix ending before the validation item — targets 1 … n-3;
- ``valid``:    target n-2;   ``test``: target n-1.
A sample's history is the up-to-L items before its target, oldest first, right-padded with 0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

SPLITS = ("pretrain", "train", "valid", "test")


def target_span(n: np.ndarray | int, split: str):
    """The leave-one-out rule, written once: the positions [first, stop) of a length-n history whose items are
    ``split``'s targets (n ≥ 3 is guaranteed by validation); vectorised over an array of lengths."""
    spans = {"pretrain": (1, n), "train": (1, n - 2), "valid": (n - 2, n - 1), "test": (n - 1, n)}
    if split not in spans:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    first, stop = spans[split]
    return (np.full_like(n, first) if isinstance(n, np.ndarray) and isinstance(first, int) else first), stop


def samples_per_user(n: np.ndarray | int, split: str):
    """How many samples a history of length n yields."""
    first, stop = target_span(n, split)
    return stop - first


def targets_of(ids: np.ndarray, split: str) -> np.ndarray:
    """The target items of one history for ``split``."""
    return ids[slice(*target_span(len(ids), split))]


@dataclass
class Samples:
    """A block of samples as parallel numpy arrays (one row per sample)."""

    items: np.ndarray  # (m, L) int64
    timestamps: np.ndarray  # (m, L) int64, 0 on padding
    lengths: np.ndarray  # (m,) int64
    targets: np.ndarray  # (m,) int64
    target_ts: np.ndarray  # (m,) int64
    user: np.ndarray  # (m,) int64 ordinal of the user in the dataset (identity for tests and history masks)
    position: np.ndarray  # (m,) int64 target position in the user's history

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, idx) -> "Samples":
        return Samples(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: list["Samples"]) -> "Samples":
        return Samples(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Samples)})

    @staticmethod
    def empty(L: int) -> "Samples":
        z = np.zeros(0, np.int64)
        return Samples(np.zeros((0, L), np.int64), np.zeros((0, L), np.int64), z, z, z, z, z)


@dataclass
class Histories:
    """Many users' histories flattened: user u owns ids[offsets[u]:offsets[u+1]]."""

    ids: np.ndarray  # int64 item ids
    ts: np.ndarray  # int64 seconds
    offsets: np.ndarray  # (users+1,) int64
    user: np.ndarray  # (users,) int64 ordinals

    @staticmethod
    def build(id_arrays: list[np.ndarray], ts_arrays: list[np.ndarray], users: list[int]) -> "Histories":
        lengths = np.fromiter((len(a) for a in id_arrays), np.int64, len(id_arrays))
        offsets = np.zeros(len(id_arrays) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cat = (lambda xs: np.concatenate(xs)) if id_arrays else (lambda xs: np.zeros(0, np.int64))
        return Histories(cat(id_arrays), cat(ts_arrays), offsets, np.asarray(users, np.int64))


def expand(h: Histories, split: str, L: int, skip: np.ndarray | None = None,
           limit: np.ndarray | None = None) -> Samples:
    """All samples of ``split`` from these histories, in (user, position) order.

    ``skip`` / ``limit`` (per user) keep only samples skip[u] … skip[u]+limit[u]-1 of each user: the part of a
    user that falls inside a partition's range.
    """
    n = np.diff(h.offsets)
    count = samples_per_user(n, split)
    first = target_span(n, split)[0]
    if skip is not None:
        first, count = first + skip, np.minimum(count - skip, limit)
    count = np.maximum(count, 0)
    total = int(count.sum())
    if total == 0:
        return Samples.empty(L)
    owner = np.repeat(np.arange(len(n)), count)  # user of each sample
    starts = np.zeros(len(n), np.int64)
    np.cumsum(count[:-1], out=starts[1:])
    position = first[owner] + np.arange(total) - starts[owner]  # target position within the user
    target = h.offsets[owner] + position  # flat index of the target
    length = np.minimum(position, L)
    col = np.arange(L)[None, :]
    src = target[:, None] - length[:, None] + col  # flat index of each history slot
    valid = col < length[:, None]
    src = np.where(valid, src, 0)
    return Samples(
        items=np.where(valid, h.ids[src], 0),
        timestamps=np.where(valid, h.ts[src], 0),
        lengths=length,
        targets=h.ids[target],
        target_ts=h.ts[target],
        user=h.user[owner],
        position=position,
    )


def seen_items(h: Histories, samples: Samples) -> list[np.ndarray]:
    """Per sample, the items its user saw before the target (the target itself excluded): the seen-items mask of
    full-ranking evaluation. Samples must be one per user of ``h``, in its order (evaluation splits)."""
    seen = []
    for start, pos, target in zip(h.offsets[:-1], samples.position, samples.targets):
        items = np.unique(h.ids[start : start + pos])
        seen.append(items[items != target])
    return seen
