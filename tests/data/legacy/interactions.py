"""From raw interaction rows to chronological user sequences: de-duplication, k-core filtering, the tie-break.

Shared by the converters. Every rating counts as an implicit interaction. The result depends only on the set of
rows, never on their order in the source file: events are ordered by (timestamp, item key) per user and users by
key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mmm4rec.data.schema import SeqRecord


def factorize(keys: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes in sorted-key order (comparing codes compares keys) and the sorted unique keys."""
    uniq = sorted(set(keys))
    code = {k: i for i, k in enumerate(uniq)}
    return np.fromiter(map(code.__getitem__, keys), np.int64, len(keys)), uniq


def kcore(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the rows kept by iterated k-core filtering (every user and item has >= k rows), and the rounds
    it took: dropping an item can push a user below k and vice versa, so repeat until nothing changes."""
    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        per_user = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        per_item = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new = keep & (per_user[users] >= k) & (per_item[items] >= k)
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new


@dataclass
class Sequences:
    records: list[SeqRecord]  # sorted by user key
    item_keys: list[str]  # items left after filtering, sorted
    stats: dict[str, int]


def build_sequences(domain: str, users: Sequence[str], items: Sequence[str], timestamps: Sequence[int],
                    k: int = 5) -> Sequences:
    """Rows (user key, item key, Unix seconds) of one domain -> k-core user sequences.

    Exact duplicate rows (same user, item and second) are dropped first; the same item at another time is a
    real repeat and kept.
    """
    u, user_keys = factorize(users)
    i, item_keys = factorize(items)
    t = np.asarray(timestamps, dtype=np.int64)
    order = np.lexsort((i, t, u))  # user, then time, then item key: the tie-break
    u, i, t = u[order], i[order], t[order]
    dup = np.zeros(len(u), dtype=bool)
    dup[1:] = (u[1:] == u[:-1]) & (t[1:] == t[:-1]) & (i[1:] == i[:-1])
    keep, rounds = kcore(u[~dup], i[~dup], k)
    u, i, t = u[~dup][keep], i[~dup][keep], t[~dup][keep]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(u)]
    records = [SeqRecord(user_keys[u[a]], domain, [item_keys[x] for x in i[a:b]], t[a:b]) for a, b in zip(starts, ends)]
    stats = {"rows": len(order), "duplicate_rows": int(dup.sum()), f"rows_after_{k}core": len(u),
             f"{k}core_rounds": rounds, "users": len(records), "items": len(np.unique(i))}
    return Sequences(records, [item_keys[x] for x in np.unique(i)], stats)

