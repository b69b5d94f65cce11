"""A small synthetic online shop's raw tables, for the README's "Your own data" walkthrough and tests (offline).

  python tools/make_shop_tables.py --out raw/shop [--visitors 1000 --products 300 --seed 0]

writes
  events.csv       visitor,sku,ts            one row per product view; ts in Unix milliseconds (as web logs have it)
  products.jsonl   {"sku", "title", "brand", "category", "price"}
  histories.jsonl  two visitors' recent views, the input of `mmm4rec recommend` (keys shop:<sku>, Unix seconds)

Labelled synthetic: each visitor browses one or two favourite categories (80 % of the views, popular products
more often) and the rest at random, so the item text carries the signal a content model can learn.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

CATEGORIES = {
    "running shoes": ["trail", "road", "cushioned", "lightweight", "racing"],
    "espresso machines": ["manual", "automatic", "dual boiler", "compact", "bean-to-cup"],
    "yoga mats": ["non-slip", "travel", "thick", "cork", "eco"],
    "wireless earbuds": ["noise cancelling", "sport", "budget", "studio", "waterproof"],
    "backpacks": ["hiking", "laptop", "rolltop", "daypack", "travel"],
    "chef knives": ["santoku", "damascus", "paring", "bread", "carbon steel"],
    "desk lamps": ["LED", "architect", "clip-on", "dimmable", "smart"],
    "board games": ["strategy", "party", "cooperative", "family", "card"],
    "tents": ["2-person", "ultralight", "family", "pop-up", "4-season"],
    "mechanical keyboards": ["tenkeyless", "wireless", "hot-swap", "low-profile", "split"],
    "coffee beans": ["single origin", "decaf", "dark roast", "espresso blend", "light roast"],
    "water bottles": ["insulated", "collapsible", "filter", "glass", "kids"],
}
BRANDS = ["Northwind", "Acme", "Bluepeak", "Lumen", "Orca", "Kestrel", "Tandem"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the three files")
    p.add_argument("--visitors", type=int, default=1000)
    p.add_argument("--products", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    names = list(CATEGORIES)
    category = rng.integers(len(names), size=args.products)
    skus = [f"P{i + 1:04d}" for i in range(args.products)]
    with open(out / "products.jsonl", "w") as f:
        for i, sku in enumerate(skus):
            c = names[category[i]]
            kind = CATEGORIES[c][rng.integers(len(CATEGORIES[c]))]
            brand = BRANDS[rng.integers(len(BRANDS))]
            f.write(json.dumps({"sku": sku, "title": f"{brand} {kind} {c[:-1] if c.endswith('s') else c} {i + 1}",
                                "brand": brand, "category": c,
                                "price": round(float(rng.lognormal(3.5, 0.6)), 2)}) + "\n")

    members = [np.flatnonzero(category == k) for k in range(len(names))]
    popularity = [rng.zipf(1.6, size=len(m)).astype(float) for m in members]
    rows = []
    start_ms = 1_730_000_000_000  # 2024-10-27
    for v in range(args.visitors):
        favourites = rng.choice(len(names), size=rng.integers(1, 3), replace=False)
        t = start_ms + int(rng.integers(0, 30 * 86_400_000))
        for _ in range(int(rng.integers(8, 40))):
            if rng.random() < 0.8:
                k = favourites[rng.integers(len(favourites))]
                item = members[k][rng.choice(len(members[k]), p=popularity[k] / popularity[k].sum())]
            else:
                item = rng.integers(args.products)
            t += int(rng.exponential(3_600_000)) + 1000
            rows.append((f"v{v:05d}", skus[item], t))
    with open(out / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["visitor", "sku", "ts"])
        w.writerows(rows)

    with open(out / "histories.jsonl", "w") as f:
        for user, k in (("runner", names.index("running shoes")), ("barista", names.index("espresso machines"))):
            views = members[k][np.argsort(-popularity[k])[:4]]  # popular: kept by the 5-core filter
            history = [[f"shop:{skus[i]}", 1_733_000_000 + 600 * n] for n, i in enumerate(views)]
            f.write(json.dumps({"user": user, "history": history}) + "\n")
    print(f"{out}: {len(rows):,} events of {args.visitors:,} visitors, {args.products:,} products")


if __name__ == "__main__":
    main()
