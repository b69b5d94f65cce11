"""Full-ranking evaluation speed: users/s at 10^4, 10^5 and 10^6 items.

Ours: mmm4rec.train.evaluation.target_ranks — items scored in chunks, the target's rank counted, no sort, no
users × items matrix kept. Baseline (how the reference evaluates): score every item, argsort each user's row,
find the target's position. Same user vectors, item table and targets; ranks are checked equal (ties aside).

    .venv/bin/python tools/bench/eval_speed.py [--items 10000 100000 1000000] [--users 1024] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from mmm4rec.train.evaluation import target_ranks

DIM = 256


def argsort_ranks(user: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    scores = user @ items[1:].t()  # (users, I): the whole matrix
    order = torch.argsort(scores, dim=1, descending=True) + 1
    return (order == targets[:, None]).nonzero()[:, 1]


def users_per_s(fn, users: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return users * repeats / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=1024, help="users per evaluation batch")
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--json")
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'items':>10} {'argsort baseline':>18} {'chunked count':>15} {'ratio':>7}   (users/s, {args.users} users per batch)")
    for n_items in args.items:
        items = torch.nn.functional.normalize(torch.randn(n_items + 1, DIM, generator=gen), dim=-1)
        user = torch.randn(args.users, DIM, generator=gen)
        targets = torch.randint(1, n_items + 1, (args.users,), generator=gen)
        mine = target_ranks(user, items, targets, args.chunk)
        # the baseline's users × items matrix for 10^6 items is ~4 GB at 1024 users: run it on a slice
        b = min(args.users, max(16, 2**28 // n_items))
        assert torch.equal(argsort_ranks(user[:b], items, targets[:b]), mine[:b])
        repeats = max(1, 2_000_000 // n_items)
        base = users_per_s(lambda: argsort_ranks(user[:b], items, targets[:b]), b, repeats)
        ours = users_per_s(lambda: target_ranks(user, items, targets, args.chunk), args.users, repeats)
        rows.append({"items": n_items, "baseline_users_per_s": round(base), "ours_users_per_s": round(ours),
                     "ratio": round(ours / base, 1), "baseline_batch": b})
        print(f"{n_items:>10,} {base:>18,.0f} {ours:>15,.0f} {ours / base:>6.1f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "tools/bench/eval_speed.py " + " ".join(sys.argv[1:]), "dim": DIM,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
