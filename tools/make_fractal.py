"""A large dataset from MovieLens-1M by fractal expansion (Belletti et al. 2019; method in mmm4rec/data/fractal.py).

  python tools/fetch_movielens.py --out data/raw
  python tools/make_fractal.py --events 1e8 --seed 0 --out /scratch/ml1m-x100
  python tools/prepare_tables.py --interactions /scratch/ml1m-x100/events.parquet \\
      --items /scratch/ml1m-x100/items.parquet --out data/ml1m-x100 \\
      --text-fields title year genres --list-fields "genres=|"

Writes OUT/events.{parquet,csv} (user, item, timestamp), OUT/items.{parquet,csv} (item, title, year, genres;
texts derived from the real movie, not new content) and OUT/fractal.json (seed, factors, counts, and the
item-popularity and sequence-length distributions of ML-1M and of the expansion). Same seed, same bytes.
"""
import argparse
import json
import logging
import sys
import time

from mmm4rec.data.fractal import DEFAULT_KEEP, generate
from mmm4rec.tool import tool_errors


def count(text: str) -> int:
    """1e8, 100000000 or 100_000_000."""
    value = float(text.replace("_", ""))
    if not value.is_integer() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of events")
    return int(value)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="data/raw/ml-1m/ml-1m", metavar="DIR/NAME",
                   help="RecBole atomic files NAME.inter and NAME.item in DIR (default: data/raw/ml-1m/ml-1m)")
    p.add_argument("--events", type=count, required=True, help="target number of events, e.g. 1e7 or 1e8")
    p.add_argument("--out", required=True, help="folder to write (files in it are replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="table format (default: parquet)")
    p.add_argument("--user-factor", type=int, metavar="A",
                   help="copies of each user (default: ceil(events / input events / keep))")
    p.add_argument("--item-factor", type=int, metavar="B",
                   help="variants of each item (default: ceil(sqrt(events / input events)), at least 2; with 1, "
                        "one user copy gets no events)")
    p.add_argument("--keep", type=float, default=DEFAULT_KEEP,
                   help=f"mean share of its user's events a copy keeps (default: {DEFAULT_KEEP})")
    args = p.parse_args()
    for name in ("user_factor", "item_factor"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    with tool_errors():
        report = generate(args.input, args.out, args.events, seed=args.seed, fmt=args.format,
                          user_factor=args.user_factor, item_factor=args.item_factor, keep=args.keep)
    summary = {key: report[key] for key in ("counts", "distributions", "rank_agreement")}
    summary["factors"] = {key: report["factors"][key] for key in ("user_copies", "item_variants", "keep_rate")}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
