"""Full-ranking evaluation speed: users/s at 10^4, 10^5 and 10^6 items.

Ours: mmm4rec.train.evaluation.target_ranks — items scored in chunks, the target's rank counted, no sort, no
users × items matrix kept. Baseline (how the reference evaluates): score every item, argsort each user's row,
find the target's position. Same user vectors, item table and targets; ranks are checked equal (up to last-bit rounding).

    .venv/bin/python tools/bench/eval_speed.py [--items 10000 100000 1000000] [--users 1024] [--device cuda]
                                               [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from provenance import provenance
from timing import default_device, seconds_per_call

from mmm4rec.train.evaluation import target_ranks

DIM = 256


def argsort_ranks(user: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    scores = user @ items[1:].t()  # (users, I): the whole matrix
    order = torch.argsort(scores, dim=1, descending=True) + 1
    return (order == targets[:, None]).nonzero()[:, 1]


def users_per_s(fn, users: int, repeats: int, device: torch.device) -> float:
    return users / seconds_per_call(fn, repeats, device, warmup=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=1024, help="users per evaluation batch")
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--device", default=default_device())
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'items':>10} {'argsort baseline':>18} {'chunked count':>15} {'ratio':>7}   (users/s, {args.users} users per batch)")
    for n_items in args.items:
        items = torch.nn.functional.normalize(torch.randn(n_items + 1, DIM, generator=gen), dim=-1)
        user = torch.randn(args.users, DIM, generator=gen)
        targets = torch.randint(1, n_items + 1, (args.users,), generator=gen)
        items, user, targets = items.to(device), user.to(device), targets.to(device)
        mine = target_ranks(user, items, targets, args.chunk)
        # the baseline's users × items matrix for 10^6 items is ~4 GB at 1024 users: run it on a slice
        b = min(args.users, max(16, 2**28 // n_items))
        # the two compute scores with differently shaped matrix products, which may round differently in the last
        # bit: ranks agree except where another item scores within an ulp of the target
        differ = (mine[:b] - argsort_ranks(user[:b], items, targets[:b])).abs()
        assert differ.max() <= 1 and (differ > 0).float().mean() < 0.01, differ.float().mean()
        repeats = max(1, 2_000_000 // n_items)
        base = users_per_s(lambda: argsort_ranks(user[:b], items, targets[:b]), b, repeats, device)
        ours = users_per_s(lambda: target_ranks(user, items, targets, args.chunk), args.users, repeats, device)
        rows.append({"items": n_items, "baseline_users_per_s": round(base), "ours_users_per_s": round(ours),
                     "ratio": round(ours / base, 1), "baseline_batch": b})
        print(f"{n_items:>10,} {base:>18,.0f} {ours:>15,.0f} {ours / base:>6.1f}x", flush=True)
    end_to_end = paper_config_end_to_end(args.users, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(), "device": str(device), "dim": DIM, "ranking_only": rows,
                       "end_to_end_paper_config": end_to_end}, f, indent=2)


@torch.no_grad()
def paper_config_end_to_end(users: int, device: torch.device) -> dict:
    """Users/s including the model's forward pass at the paper configuration (25,986 items, 768-d features):
    the reference-style model + argsort (item vectors recomputed per batch, as the reference does) against MMM4Rec
    + chunked counting (item tables once per evaluation pass, as evaluate() does), fp32 and bf16 autocast."""
    from model_step import ITEMS, make_batch, paper_features
    from reference_style import ReferenceStyleMMM4Rec

    from mmm4rec.config import ModelConfig
    from mmm4rec.model import build_model

    gen = torch.Generator().manual_seed(1)
    feats = paper_features(gen, device)
    batch = make_batch(users, 20, ITEMS, gen).to(device)
    cfg = ModelConfig()
    ref = ReferenceStyleMMM4Rec(cfg, feats.text, feats.image).eval().to(device)

    def reference():  # the reference's full_sort_predict, then an argsort of every row
        scores = ref.logits(ref.user(batch.items, batch.timestamps, batch.lengths))
        return (torch.argsort(scores, 1, descending=True) == batch.targets[:, None]).nonzero()

    model = build_model(cfg, feats).eval().to(device)

    def ours(bf16: bool, tables):  # evaluate(): item tables once per pass, then per batch: encode + count
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            user = model(batch, tables)
        return target_ranks(user.float(), tables.scores.float(), batch.targets, 65536)

    base = users_per_s(reference, users, 2, device)
    out = {"reference_style_argsort": round(base)}
    print(f"\nend to end at the paper configuration ({ITEMS:,} items, model forward included), users/s:")
    print(f"  reference-style model + argsort: {base:8,.0f}")
    for bf16 in (False, True):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            tables = model.item_tables()
        v = users_per_s(lambda: ours(bf16, tables), users, 2, device)
        out[f"mmm4rec_{'bf16' if bf16 else 'fp32'}"] = round(v)
        print(f"  mmm4rec + chunked counting, {'bf16' if bf16 else 'fp32'}: {v:8,.0f}  -> {v / base:.1f}x")
    return out


if __name__ == "__main__":
    main()
