"""Amazon Reviews 2018 / 2023 categories -> one dataset folder (one domain per category).

  python tools/prepare_amazon.py --out data/amazon-mix --name pretrain-mix \
      --domain office=raw/Office_Products.csv,raw/meta_Office_Products.json.gz \
      --domain arts=raw/Arts_Crafts_and_Sewing.jsonl.gz,raw/meta_Arts_Crafts_and_Sewing.jsonl.gz \
      --images office=raw/images/office

The review file's format (2018 ratings CSV or 2023 reviews JSONL) is recognised from its content.
"""
import argparse
import json
import logging
from pathlib import Path

from mmm4rec.data.amazon import DomainSource, prepare
from mmm4rec.data.build import add_scale_arguments, scale_from_args
from mmm4rec.tool import tool_errors


def pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", type=pair, action="append", required=True, metavar="NAME=REVIEWS,META")
    p.add_argument("--images", type=pair, action="append", default=[], metavar="NAME=DIR",
                   help="folder of <item id>.jpg|png|webp for a domain")
    p.add_argument("--out", required=True)
    p.add_argument("--name", help="dataset name (default: the domain names joined by '+')")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--k-core", type=int, default=5)
    p.add_argument("--strict", action="store_true", help="bad input is an error instead of a counted skip")
    add_scale_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    images = dict(args.images)
    domains = []
    for name, files in args.domain:
        reviews, _, meta = files.partition(",")
        if not meta:
            p.error(f"--domain {name}: expected REVIEWS,META")
        domains.append(DomainSource(name, Path(reviews), Path(meta), Path(images[name]) if name in images else None))
    unknown = set(images) - {d.name for d in domains}
    if unknown:
        p.error(f"--images for unknown domain(s): {sorted(unknown)}")
    with tool_errors():
        manifest = prepare(domains, args.out, args.name or "+".join(sorted(d.name for d in domains)),
                           shard_size=args.shard_size, k=args.k_core, strict=args.strict, scale=scale_from_args(args))
    if manifest is not None:
        print(json.dumps({"counts": manifest.counts, "filtering": manifest.provenance["filtering"],
                          "skipped": manifest.provenance["skipped"]}, indent=1))
