"""Stage 2: sequence shards -> int batches, split over ranks and DataLoader workers, resumable.

How an epoch is laid out (all of it a function of the seed and the epoch, never of the world size):

    shards in a seeded order, users in shard order, samples in (user, position) order  = the epoch's sequence
    rotated by a seeded offset, cut into P contiguous partitions of equal size (±1)
    each partition: decoded once per user, block-shuffled (seeded), cut into chunks of s = G / P samples
    global step k = chunk k of every partition                      (G = micro-batch × accumulation × world)

Rank r owns the partitions p ≡ r (mod W) and its DataLoader workers share them out, so every rank reads only its
shards' users, every sample of the epoch is used exactly once (the few rows that fill the last step repeat
samples with loss weight 0, so shapes stay static), every rank yields the same number of micro-batches, and the set of samples in
global step k is the same on 1 or N processes: same global batch ⇒ same training curve up to reduction order.
The stream's position is (epoch, step); restoring it replays the partitions up to that step without the model.

A ``UserSubset`` (a seeded share of the users, picked by a hash of the user key) restricts an epoch to its users:
the plan above is then laid over their samples only, so every guarantee holds for the subset as for all users.

Evaluation splits use one partition per rank, no shuffle and padded final batches with a ``valid`` mask, so
ranks run the same number of batches (ZeRO-3 gathers parameters collectively in every forward).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .atomic import AtomicFile
from .dataset import Counts, check_totals, load_manifest
from .remote import DatasetLike
from .samples import Histories, Samples, expand, samples_per_user, seen_items, targets_of
from .schema import BadRecords, DataError, Manifest, SeqRecord, ShardInfo, map_items
from .shards import iter_seq_records

log = logging.getLogger(__name__)

USERS_PER_BLOCK = 64  # users decoded before one vectorised expansion
WORKER_ERROR = -1  # the partition number of a DataError a DataLoader worker passes on


# -------------------------------------------------------------------------------------------------- user subsets
@dataclass(frozen=True)
class UserSubset:
    """A seeded share of the users, picked by a hash of the user key: the same users whatever the shard layout,
    world size or worker count. ``complement`` keeps exactly the users the plain subset drops (pre-train on the
    complement, validate on the subset; or fine-tune on a few per cent of the users)."""

    fraction: float  # share of users kept, in (0, 1]
    seed: int = 0
    complement: bool = False

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise DataError(f"a user subset's fraction must be in (0, 1], got {self.fraction}")

    def keeps(self, key_hashes: np.ndarray) -> np.ndarray:
        """Which of the users with these ``user_key_hash`` values the subset holds."""
        inside = _uniform(key_hashes, self.seed) < self.fraction
        return ~inside if self.complement else inside

    def __str__(self) -> str:  # also the subset's part of cache file names
        return f"users-{self.fraction!r}-seed{self.seed}{'-complement' if self.complement else ''}"


def user_key_hash(user: str) -> int:
    """A user's 64-bit key hash, stored in the stage-2 index so that subsets never need the keys again."""
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little")


_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _uniform(key_hashes: np.ndarray, seed: int) -> np.ndarray:
    """One number in [0, 1) per user; a new seed draws a new subset (splitmix64's finaliser of hash + seed)."""
    z = key_hashes.astype(np.uint64) + np.uint64(seed * _GOLDEN % 2**64)  # uint64 array arithmetic wraps: intended
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


# --------------------------------------------------------------------------------------------- the stage-2 index
INDEX_VERSION = "stage2-index/2"


@dataclass
class SeqIndex:
    """Every valid user's history length and key hash, in shard order, after validation and item mapping.

    Built by one pass over the shards (cached next to the feature store); the bad records that pass finds are the
    ones reported in the run summary, and streaming later skips the very same records. Sample counts per shard
    and split, for all users or any ``UserSubset``, follow from the lengths without reading a shard again. The
    pass verifies every shard's sha256 and checks dataset.json's counts against the records it read (also when
    the index comes from the cache: the manifest may have changed since).
    """

    shards: list[ShardInfo]
    users: list[int]  # valid users per shard
    lengths: np.ndarray  # int64 [U]
    key_hashes: np.ndarray  # uint64 [U], user_key_hash of each valid user
    item_index: dict[str, int] = field(repr=False)
    bad: dict[str, int] = field(default_factory=dict)
    totals: Optional[list] = None  # Counts.totals() of the records read; None when the pass skipped some
    cache: Optional[Path] = None  # the index's cache file; target counts are cached next to it
    _counts: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _targets: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def user_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.users)]).astype(np.int64)

    def keeps(self, users: Optional[UserSubset]) -> Optional[np.ndarray]:
        """Mask over the valid users of the subset (None: every user)."""
        return None if users is None else users.keeps(self.key_hashes)

    def samples(self, split: str, users: Optional[UserSubset] = None) -> np.ndarray:
        """Samples of ``split`` per shard, int64 [shards]."""
        if (split, users) not in self._counts:
            per_user = np.asarray(samples_per_user(self.lengths, split), np.int64)
            if users is not None:
                per_user = np.where(self.keeps(users), per_user, 0)
            cum = np.concatenate([[0], np.cumsum(per_user)])
            offsets = self.user_offsets
            self._counts[split, users] = cum[offsets[1:]] - cum[offsets[:-1]]
        return self._counts[split, users]

    def total(self, split: str, users: Optional[UserSubset] = None) -> int:
        return int(self.samples(split, users).sum())

    def target_counts(self, split: str, users: Optional[UserSubset] = None, keep: bool = True) -> np.ndarray:
        """How often each item id is the target of a sample of ``split``: int64 [I+1], row 0 = 0 (the item
        popularity of a popularity negative sampler, an export's popularity fallback). One pass over the shards
        counts every split at once; the result is cached next to the index when ``keep`` (a loss reads it at
        every start; an export's once)."""
        which = str(users) if users else "all-users"
        if which not in self._targets:
            path = keep and self.cache and self.cache.with_name(f"{self.cache.stem}-targets-{which}.npz")
            counts = _load_npz(path) if path else None
            if counts is None:
                counts = self._count_targets(users)
                if path:
                    _save_npz(path, **counts)
            self._targets[which] = counts
        return self._targets[which][split]

    def _count_targets(self, users: Optional[UserSubset]) -> dict[str, np.ndarray]:
        keep, offsets = self.keeps(users), self.user_offsets
        size = max(self.item_index.values(), default=0) + 1
        counts = {split: np.zeros(size, np.int64) for split in ("train", "valid", "test")}
        bad = BadRecords(strict=False)  # the index pass already reported these records
        for s, shard in enumerate(self.shards):
            kept = [ids for n, (_, ids) in enumerate(_mapped(shard, self.item_index, bad))
                    if keep is None or keep[offsets[s] + n]]
            for split in ("train", "valid", "test") if kept else ():
                counts[split] += np.bincount(np.concatenate([targets_of(ids, split) for ids in kept]),
                                             minlength=size)
        counts["pretrain"] = counts["train"] + counts["valid"] + counts["test"]
        return counts

    @staticmethod
    def key(manifest: Manifest, item_index_digest: str) -> str:
        h = hashlib.sha256(f"{INDEX_VERSION}\n{item_index_digest}\n".encode())
        for s in manifest.seqs:
            h.update(f"{s.name} {s.sha256}\n".encode())
        return h.hexdigest()[:24]

    @classmethod
    def build(cls, manifest: Manifest, item_index: dict[str, int], strict: bool) -> "SeqIndex":
        bad, read = BadRecords(strict=strict), Counts()
        users, lengths, hashes = [], [], []
        for shard in manifest.seqs:
            before = len(lengths)
            for rec, ids in _mapped(shard, item_index, bad, read):
                lengths.append(len(ids))
                hashes.append(user_key_hash(rec.user))
            users.append(len(lengths) - before)
        every_record = read.counts()["users"] == sum(s.count for s in manifest.seqs)  # else a skip was reported
        index = cls(manifest.seqs, users, np.asarray(lengths, np.int64), np.asarray(hashes, np.uint64), item_index,
                    bad.as_dict(), read.totals() if every_record else None)
        index.check(manifest)
        return index

    def check(self, manifest: Manifest) -> None:
        """DataError naming dataset.json and the key when its counts contradict the records the pass read."""
        if self.totals is not None:
            check_totals(manifest, self.totals)

    @classmethod
    def load_or_build(cls, dataset: DatasetLike, item_index: dict[str, int], cache_dir: str | os.PathLike,
                      strict: bool = False) -> "SeqIndex":
        """The index of ``dataset`` (a local folder, a URL, a DatasetSource or its Manifest), cached in
        ``cache_dir`` (a local folder, normally the feature store's) under a key of the sequence shards' and item
        index's hashes."""
        manifest = load_manifest(dataset)
        digest = hashlib.sha256("\n".join(item_index).encode()).hexdigest()
        path = Path(cache_dir) / f"stage2-index-{cls.key(manifest, digest)}{'-strict' if strict else ''}.npz"
        cached = _load_npz(path)
        if cached is not None:
            meta = json.loads(str(cached["meta"]))
            index = cls(manifest.seqs, cached["users"].tolist(), cached["lengths"].astype(np.int64),
                        cached["key_hashes"], item_index, meta["bad"], meta["totals"])
            index.check(manifest)
        else:
            index = cls.build(manifest, item_index, strict)
            _save_npz(path, users=np.asarray(index.users, np.int64), lengths=index.lengths.astype(np.int32),
                      key_hashes=index.key_hashes, meta=np.array(json.dumps({"bad": index.bad,
                                                                            "totals": index.totals})))
        index.cache = path
        return index


def _load_npz(path: Path) -> Optional[dict[str, np.ndarray]]:
    """A cache file's arrays, or None when there is none (or it is damaged: then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return dict(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        log.warning("ignoring the unreadable stage-2 cache %s: %s", path, e)
        return None


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    try:  # every rank may write it; each writes its own temp file and the renames replace the cache whole
        with AtomicFile(path) as f:
            np.savez(f, **arrays)
    except OSError as e:
        log.warning("could not write the stage-2 cache %s: %s", path, e)


def _mapped(shard: ShardInfo, item_index: dict[str, int], bad: BadRecords,
            read: Optional[Counts] = None) -> Iterator[tuple[SeqRecord, np.ndarray]]:
    """Valid users of one shard with their item ids; the one definition of "valid" for index and stream.
    ``read`` counts every valid record as stored, before item mapping drops unknown items."""
    for path, rec in iter_seq_records([shard], bad):
        if read is not None:
            read.seq(rec)
        ids = map_items(rec, item_index, bad, path)
        if ids is not None:
            yield rec, ids


# ------------------------------------------------------------------------------------------------ the epoch plan
@dataclass
class EpochPlan:
    """Where each partition's samples lie in epoch ``epoch`` and how they are chunked."""

    index: SeqIndex
    item_index: dict[str, int]
    split: str
    max_len: int
    partitions: int
    chunk: int  # samples per partition per step
    seed: int
    epoch: int
    shuffle: bool
    buffer: int
    users: Optional[UserSubset] = None

    def __post_init__(self):
        self.total = self.index.total(self.split, self.users)
        if self.total == 0:
            among = f"{self.users}" if self.users else "every user filtered out?"
            raise DataError(f"split {self.split!r} has no samples ({among})")
        self.keep = self.index.keeps(self.users)
        rng = self._rng(0)
        self.shard_order = rng.permutation(len(self.index.shards)) if self.shuffle else np.arange(len(self.index.shards))
        self.rotation = int(rng.integers(self.total)) if self.shuffle else 0
        counts = self.index.samples(self.split, self.users)[self.shard_order]
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)])
        self.steps = math.ceil(math.ceil(self.total / self.partitions) / self.chunk)

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, stream])

    def partition_size(self, p: int) -> int:
        return (p + 1) * self.total // self.partitions - p * self.total // self.partitions

    def segments(self, p: int) -> list[tuple[int, int]]:
        """Partition p's range of the (rotated, cyclic) epoch sequence as non-wrapping [a, b) pieces."""
        a = (p * self.total // self.partitions + self.rotation) % self.total
        b = a + self.partition_size(p)
        return [(a, b)] if b <= self.total else [(a, self.total), (0, b - self.total)]

    def read(self, p: int) -> Iterator[tuple[Samples, Histories]]:
        """Partition p's samples in epoch order, decoded user by user, in blocks."""
        offsets = self.index.user_offsets
        bad = BadRecords(strict=False)  # the index pass already reported these records
        for a, b in self.segments(p):
            first = int(np.searchsorted(self.shard_starts, a, side="right")) - 1
            for pos in range(first, len(self.shard_order)):
                lo, end = int(self.shard_starts[pos]), int(self.shard_starts[pos + 1])
                if lo >= b:
                    break
                if end > lo:
                    s = int(self.shard_order[pos])
                    yield from self._read_shard(s, int(offsets[s]), max(a - lo, 0), min(b, end) - lo, bad)

    def _read_shard(self, s: int, first_user: int, lo: int, hi: int, bad: BadRecords):
        """Samples lo … hi-1 (numbered within shard s for this split)."""
        block: list[tuple] = []  # (ids, timestamps, user, skip, limit) per user in range
        kept = None if self.keep is None else self.keep[first_user : first_user + self.index.users[s]]
        cursor = 0
        for n, (rec, item_ids) in enumerate(_mapped(self.index.shards[s], self.item_index, bad)):
            c = int(samples_per_user(len(item_ids), self.split)) if kept is None or kept[n] else 0
            if cursor + c > lo and c > 0:
                skip = max(0, lo - cursor)
                block.append((item_ids, rec.timestamps, first_user + n, skip, min(c, hi - cursor) - skip))
            cursor += c
            if block and (cursor >= hi or len(block) == USERS_PER_BLOCK):
                yield self._expand(block)
                block = []
            if cursor >= hi:
                return
        if block:
            yield self._expand(block)
        raise DataError(f"{self.index.shards[s].path}: yields {cursor} {self.split} samples but the stage-2 index "
                        f"expects at least {hi}; the shard changed since the index was built")

    def _expand(self, block: list[tuple]) -> tuple[Samples, Histories]:
        ids, tss, users, skips, limits = zip(*block)
        h = Histories.build(list(ids), list(tss), list(users))
        return expand(h, self.split, self.max_len, np.asarray(skips), np.asarray(limits)), h

    def real_samples(self, p: int, step: int) -> int:
        """How many of partition p's chunk at ``step`` are real samples (the rest fill the step)."""
        return min(self.chunk, max(0, self.partition_size(p) - step * self.chunk))

    def chunks(self, p: int, start_step: int = 0) -> Iterator[Samples]:
        """Exactly ``steps`` chunks of ``chunk`` samples from step ``start_step`` on (earlier ones are replayed and
        dropped). Training order is block-shuffled; the final chunk(s) are topped up with repeats of the
        partition's first samples."""
        rng = self._rng(1 + p)
        stream = (s for s, _ in self.read(p))
        if self.shuffle:
            stream = _block_shuffle(stream, self.buffer, rng)
        pieces = _rechunk(stream, self.chunk)
        first: Optional[Samples] = None
        for step in range(self.steps):
            out = next(pieces, None) or Samples.empty(self.max_len)
            if first is None:
                first = out
            if len(out) < self.chunk:  # top up with repeats so every rank and step has a full chunk
                reps = np.arange(self.chunk - len(out)) % max(len(first), 1)
                out = Samples.concat([out, first.take(reps)])
            if step >= start_step:
                yield out


def _rechunk(blocks: Iterator[Samples], size: int) -> Iterator[Samples]:
    """Pieces of exactly ``size`` samples (the last may be shorter): slices of a block are views, only a piece
    spanning two blocks is copied."""
    parts, have = [], 0
    for block in blocks:
        start = 0
        while start < len(block):
            n = min(size - have, len(block) - start)
            parts.append(block.take(slice(start, start + n)))
            have, start = have + n, start + n
            if have == size:
                yield parts[0] if len(parts) == 1 else Samples.concat(parts)
                parts, have = [], 0
    if parts:
        yield Samples.concat(parts)


def _block_shuffle(blocks: Iterator[Samples], size: int, rng: np.random.Generator) -> Iterator[Samples]:
    """Shuffle buffer in blocks: fill to 2·size, emit a random half, keep the other half. Each sample costs
    O(1) row copies, where a per-sample buffer costs O(size) array work per emitted chunk."""
    buf: list[Samples] = []
    n = 0
    for block in blocks:
        buf.append(block)
        n += len(block)
        if n >= 2 * size:
            merged = Samples.concat(buf)
            perm = rng.permutation(n)
            keep = n % size + size  # emit whole multiples of `size`, keep between size and 2·size
            yield merged.take(perm[: n - keep])
            buf, n = [merged.take(perm[n - keep :])], keep
    if n:
        merged = Samples.concat(buf)
        yield merged.take(rng.permutation(n))


# ------------------------------------------------------------------------------------------------ the loaders
def _to_torch(s: Samples, valid: Optional[np.ndarray] = None) -> dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in vars(s).items()}
    if valid is not None:
        out["valid"] = torch.from_numpy(valid)
    return out


class _PartitionChunks(IterableDataset):
    """What one rank's DataLoader workers produce: (partition, step, chunk), step-major, partitions shared
    round-robin among workers."""

    def __init__(self, plan: EpochPlan, partitions: list[int], start_step: int):
        self.plan, self.partitions, self.start_step = plan, partitions, start_step

    def __iter__(self):
        info = get_worker_info()
        mine = self.partitions if info is None else self.partitions[info.id :: info.num_workers]
        streams = [self.plan.chunks(p, self.start_step) for p in mine]
        try:
            for step in range(self.start_step, self.plan.steps):
                for p, chunks in zip(mine, streams):
                    yield p, step, _to_torch(next(chunks))
        except DataError as e:
            if info is None:
                raise
            # Sent as data: raised in a worker, it would reach the main process wrapped in the worker's traceback
            yield WORKER_ERROR, -1, str(e)


def _ignore_preemption_signals(_worker_id: int) -> None:
    """SLURM signals every process of a task; the main process checkpoints and stops, workers just carry on."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


class TrainStream:
    """A rank's training micro-batches for one epoch at a time; ``state_dict`` is its position.

    ``global_batch`` must be divisible by ``partitions`` and ``partitions`` by the world size. ``partitions=0``
    picks world × max(1, workers): fine for a fixed world size; set it explicitly (e.g. 8) to keep the sample
    order identical when the world size changes. ``users`` restricts the epoch to a subset of the users.
    """

    def __init__(self, index: SeqIndex, item_index: dict[str, int], *, split: str, max_len: int, micro_batch: int,
                 grad_accum: int, rank: int, world: int, seed: int, partitions: int = 0, num_workers: int = 0,
                 shuffle_buffer: int = 4096, users: Optional[UserSubset] = None):
        partitions = partitions or world * max(1, num_workers)
        self.global_batch = micro_batch * grad_accum * world
        if partitions % world:
            raise DataError(f"data.partitions={partitions} must be a multiple of the world size {world}")
        if self.global_batch % partitions:
            raise DataError(f"the global batch {self.global_batch} (micro-batch {micro_batch} × accumulation "
                            f"{grad_accum} × world {world}) must be divisible by data.partitions={partitions}")
        self.index, self.item_index, self.split = index, item_index, split
        self.max_len, self.micro_batch, self.seed = max_len, micro_batch, seed
        self.partitions, self.num_workers, self.buffer, self.users = partitions, num_workers, shuffle_buffer, users
        self.owned = list(range(rank, partitions, world))
        self.epoch, self.step = 0, 0  # position: the next step to yield

    def plan(self, epoch: Optional[int] = None) -> EpochPlan:
        return EpochPlan(self.index, self.item_index, self.split, self.max_len, self.partitions,
                         self.global_batch // self.partitions, self.seed, self.epoch if epoch is None else epoch,
                         shuffle=True, buffer=self.buffer, users=self.users)

    @property
    def steps_per_epoch(self) -> int:
        return self.plan().steps

    def describe(self) -> str:
        plan = self.plan()
        among = f" of {self.users}" if self.users else ""
        return (f"{plan.total:,} {self.split} samples{among} per epoch in {plan.steps} steps of {self.global_batch} "
                f"(global batch), {self.partitions} partitions of {plan.chunk} per step, "
                f"{plan.steps * self.global_batch - plan.total} rows of weight 0 fill the last step")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "partitions": self.partitions,
                "global_batch": self.global_batch, "users": str(self.users) if self.users else None}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "partitions", "global_batch", "users"):
            if state.get(key) != mine[key]:  # checkpoints from before user subsets have no "users": all users
                raise DataError(f"cannot resume the data stream: checkpoint has {key}={state.get(key)}, "
                                f"this run {mine[key]}")
        self.epoch, self.step = state["epoch"], state["step"]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of the current epoch from the saved step on; the position advances as steps complete."""
        plan = self.plan()
        data = _PartitionChunks(plan, self.owned, self.step)
        workers = min(self.num_workers, len(self.owned))
        # Its own generator: creating the iterator must not draw from the global torch RNG, or a resumed run's
        # dropout masks would be shifted by one draw against the uninterrupted run's.
        loader = DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=False,
                            prefetch_factor=4 if workers else None, generator=torch.Generator(),
                            worker_init_fn=_ignore_preemption_signals)
        pending: dict[int, dict[int, dict]] = {}
        per_step = len(self.owned)
        error = None
        for p, step, chunk in loader:
            if p == WORKER_ERROR:
                error = chunk
                break  # leaving the loop drops the loader's iterator, which stops the workers
            got = pending.setdefault(step, {})
            got[p] = chunk
            if len(got) < per_step:
                continue
            del pending[step]
            merged = {k: torch.cat([got[q][k] for q in self.owned]) for k in chunk}
            merged["weight"] = self._weights(plan, step)
            starts = range(0, len(merged["targets"]), self.micro_batch)
            for i in starts:
                if i == starts[-1]:  # the position moves on as the step's last micro-batch goes out, so a
                    self.step = step + 1  # checkpoint taken after that optimizer step resumes with the next
                    if self.step == plan.steps:
                        self.epoch, self.step = self.epoch + 1, 0
                yield {k: v[i : i + self.micro_batch] for k, v in merged.items()}
        if error is not None:
            raise DataError(error)


    def _weights(self, plan: EpochPlan, step: int) -> torch.Tensor:
        """Per-sample loss weights of this rank's rows of ``step``: 0 for the rows that fill it, and for real
        samples 1/n of the step's n real samples times (world × accumulation), so that the micro-batch losses
        DeepSpeed averages over accumulation and ranks give the mean over the step's real samples."""
        real = sum(plan.real_samples(q, step) for q in range(self.partitions))
        mask = np.concatenate([np.arange(plan.chunk) < plan.real_samples(q, step) for q in self.owned])
        return torch.from_numpy(mask * np.float32(self.global_batch / self.micro_batch / real))


class EvalStream:
    """One sample per user of ``split`` ("valid"/"test"), users split over ranks; every rank yields the same
    number of batches; padding rows have ``valid`` False. With ``mask_history`` a batch also carries the
    (row, item) pairs of items its users saw before the target. ``users`` restricts it to a subset of the users."""

    def __init__(self, index: SeqIndex, item_index: dict[str, int], *, split: str, max_len: int, batch_size: int,
                 rank: int, world: int, mask_history: bool = False, users: Optional[UserSubset] = None):
        self.plan = EpochPlan(index, item_index, split, max_len, world, batch_size, seed=0, epoch=0,
                              shuffle=False, buffer=0, users=users)
        self.rank, self.mask_history = rank, mask_history

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        B, L = self.plan.chunk, self.plan.max_len
        blocks = self.plan.read(self.rank)
        pending, seen = Samples.empty(L), []
        for _ in range(self.plan.steps):
            while len(pending) < B and (nxt := next(blocks, None)) is not None:
                pending = Samples.concat([pending, nxt[0]])
                if self.mask_history:
                    seen += seen_items(nxt[1], nxt[0])
            out, pending = pending.take(slice(0, B)), pending.take(slice(B, None))
            real = len(out)
            if real < B:  # padding rows repeat a valid sample (ids stay in range) and are masked out
                out = Samples.concat([out, (out if real else _dummy(L)).take(np.zeros(B - real, np.int64))])
            batch = _to_torch(out, np.arange(B) < real)
            if self.mask_history:
                rows = np.repeat(np.arange(real), [len(x) for x in seen[:real]])
                batch["seen_rows"] = torch.from_numpy(rows)
                batch["seen_items"] = torch.from_numpy(np.concatenate(seen[:real] or [np.zeros(0, np.int64)]))
                seen = seen[real:]
            yield batch


def _dummy(L: int) -> Samples:
    one, z = np.ones(1, np.int64), np.zeros(1, np.int64)
    return Samples(np.zeros((1, L), np.int64), np.zeros((1, L), np.int64), one, one, z, z, z)
