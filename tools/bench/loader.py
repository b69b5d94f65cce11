"""Stage-2 data path: training samples/s per worker against a loader built the way the reference builds it, and
peak memory when the dataset grows 10×.

Baseline (the reference's design): one JSON line per training sample ([user, [[item, ts], …]] with the history
and target), parsed into a Python list at start-up (not timed), a map-style Dataset that builds the six tensors of
one sample per __getitem__, DataLoader(batch_size, shuffle=True, num_workers=0) with the default collate.
Ours: TrainStream over the WebDataset sequence shards, decoding every user record inside the timed loop,
num_workers=0 (one worker's throughput). Same synthetic data, same window L and batch size, side by side.

    .venv/bin/python tools/bench/loader.py [--users 20000] [--batches 300] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from provenance import provenance

from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import BadRecords
from mmm4rec.data.shards import iter_seq_records
from mmm4rec.data.stream import SeqIndex, TrainStream
from mmm4rec.data.synthetic import generate

L, BATCH = 20, 256


class ReferenceStyleDataset(Dataset):
    """One training sample per JSON line, tensors built per sample (as the reference's AmazonSequentialDataset)."""

    def __init__(self, path: Path):
        with open(path) as f:
            self.rows = [json.loads(line) for line in f]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        user, seq = self.rows[i]
        items, ts = [x[0] for x in seq], [x[1] for x in seq]
        label = items.pop()
        ts = ts[:-1]
        items, ts = items[-L:], ts[-L:]
        length = len(items)
        pad = L - length
        return (torch.tensor(user), torch.tensor(items + [0] * pad), torch.tensor(label), torch.tensor(length),
                torch.tensor([False] * length + [True] * pad), torch.tensor(ts + [0] * pad))


def item_index(dataset: Path) -> dict[str, int]:
    keys = sorted({k for _, rec in iter_seq_records(load_manifest(dataset).seqs, BadRecords()) for k in rec.items})
    return {k: i + 1 for i, k in enumerate(keys)}


def write_reference_jsonl(dataset: Path, index: dict[str, int], out: Path) -> int:
    """Training samples (targets 1 … n-3 of each user) as the reference stores them."""
    n = 0
    with open(out, "w") as f:
        for u, (_, rec) in enumerate(iter_seq_records(load_manifest(dataset).seqs, BadRecords())):
            pairs = [[index[k], int(t)] for k, t in zip(rec.items, rec.timestamps)]
            for target in range(1, len(pairs) - 2):
                f.write(json.dumps([u, pairs[max(0, target - L) : target + 1]]) + "\n")
                n += 1
    return n


def time_batches(batches, limit: int) -> tuple[float, int]:
    it = iter(batches)
    next(it)  # start-up (worker, first shard) outside the timed window
    start, n = time.perf_counter(), 0
    for i, batch in enumerate(it):
        n += len(batch[2] if isinstance(batch, (list, tuple)) else batch["targets"])
        if i + 1 == limit:
            break
    return n / (time.perf_counter() - start), n


def ours(dataset: Path, index: dict[str, int]) -> TrainStream:
    seq_index = SeqIndex.build(load_manifest(dataset), index, strict=False)
    return TrainStream(seq_index, index, split="train", max_len=L, micro_batch=BATCH, grad_accum=1, rank=0, world=1,
                       seed=0, partitions=1, num_workers=0)


def peak_rss_of_one_epoch(dataset: Path) -> float:
    """Run one full epoch of our stream in a fresh process; its peak RSS in MiB."""
    code = ("import resource, sys; sys.path.insert(0, 'tools/bench'); from pathlib import Path; import loader; "
            "d = Path(sys.argv[1]); s = loader.ours(d, loader.item_index(d)); n = sum(len(b['targets']) for b in s); "
            "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(dataset)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-loader-"))
    small, large = work / "small", work / "large"
    for folder, users in ((small, args.users), (large, 10 * args.users)):
        if not (folder / "dataset.json").exists():
            generate(folder, users, args.items, images="none", seed=0, shard_size=2000)
    index = item_index(small)
    jsonl = work / "reference.jsonl"
    samples = write_reference_jsonl(small, index, jsonl)
    t0 = time.perf_counter()
    baseline_ds = ReferenceStyleDataset(jsonl)
    parse_s = time.perf_counter() - t0
    torch.set_num_threads(1)
    base, n_base = time_batches(DataLoader(baseline_ds, batch_size=BATCH, shuffle=True, num_workers=0), args.batches)
    mine, n_mine = time_batches(ours(small, index), args.batches)
    print(f"{samples:,} training samples from {args.users:,} synthetic users (L={L}, batch {BATCH}, 1 worker each)")
    print(f"  reference-style JSONL map-style loader: {base:>12,.0f} samples/s  (+{parse_s:.1f} s JSON parse at start)")
    print(f"  mmm4rec TrainStream from tar shards:    {mine:>12,.0f} samples/s  -> {mine / base:.1f}x")
    rss_small, rss_large = peak_rss_of_one_epoch(small), peak_rss_of_one_epoch(large)
    print(f"  peak RSS over one epoch: {rss_small:.0f} MiB at {args.users:,} users, {rss_large:.0f} MiB at "
          f"{10 * args.users:,} users -> {rss_large / rss_small:.2f}x for 10x the data")
    if args.json:
        Path(args.json).write_text(json.dumps({
            **provenance(), "users": args.users,
            "training_samples": samples, "reference_style_samples_per_s": round(base),
            "mmm4rec_samples_per_s": round(mine), "ratio": round(mine / base, 2),
            "reference_style_parse_s": round(parse_s, 2), "peak_rss_mib": {"1x": rss_small, "10x": rss_large},
            "rss_ratio_10x_data": round(rss_large / rss_small, 3), "timed_samples": [n_base, n_mine]}, indent=2))


if __name__ == "__main__":
    main()
