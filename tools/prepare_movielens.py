"""MovieLens (RecBole atomic files or GroupLens originals) -> dataset folder of WebDataset shards.

  python tools/prepare_movielens.py --raw data/raw --variant ml-1m --out data/ml-1m

Every rating is an implicit interaction; 5-core filtering to a fixed point; per-user order by (timestamp, item key).
"""
import argparse
import json
import logging

from mmm4rec.data.build import add_scale_arguments, scale_from_args
from mmm4rec.data.movielens import VARIANTS, prepare
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="folder holding <variant>/ (RecBole or GroupLens files)")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    add_scale_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tool_errors():
        manifest = prepare(args.raw, args.variant, args.out, shard_size=args.shard_size, scale=scale_from_args(args))
    if manifest is not None:
        print(json.dumps({"counts": manifest.counts, "filtering": manifest.provenance["filtering"]}, indent=1))
