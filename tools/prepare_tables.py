"""Your own data (an interaction table and an item table, or RecBole atomic files) -> dataset folder.

  python tools/prepare_tables.py --interactions raw/ratings.csv --items raw/movies.csv --out data/my-movies \\
      --user-col userId --item-col movieId --text-fields title genres --list-fields "genres=|"
  python tools/prepare_tables.py --recbole raw/ml-100k/ml-100k --out data/ml-100k \\
      --text-fields Title=movie_title Year=release_year Genres=class
  python tools/prepare_tables.py --interactions raw/events.parquet --items raw/items.jsonl --out data/shop \\
      --domain-col shop --text-fields title brand description --image-col image --images raw/images --download-images

Tables: .csv .tsv .jsonl .parquet (needs pyarrow) and RecBole .inter/.item, optionally .gz (not Parquet).
Timestamps are integer Unix seconds. Every row is an implicit interaction; exact duplicates are dropped, then
k-core filtering to a fixed point; per-user order by (timestamp, item key).
"""
import argparse
import json
import logging
from dataclasses import replace

from mmm4rec.data.build import add_scale_arguments, scale_from_args
from mmm4rec.data.schema import DataError
from mmm4rec.data.tables import (LICENCE, RECBOLE_COLUMNS, Columns, TextField, prepare, prepare_items_for,
                                  prepare_recbole)
from mmm4rec.tool import tool_errors


def list_field(text: str) -> tuple[str, str]:
    column, _, separator = text.partition("=")
    return column, separator


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--interactions", help="table of (user, item, timestamp[, domain]) rows")
    source.add_argument("--recbole", metavar="DIR/NAME", help="RecBole atomic files NAME.inter and NAME.item in DIR")
    source.add_argument("--sequences-from", metavar="BUILD",
                        help="a build folder whose sequences another engine wrote (tools/spark_sequences.py): read "
                             "the --items table for the items they name, then write the shards")
    p.add_argument("--items", help="item table (with --interactions)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--name", help="dataset name (default: the file name, or the domains joined by '+')")
    p.add_argument("--user-col", help="default: user (RecBole: user_id)")
    p.add_argument("--item-col", help="item id in both tables; default: item (RecBole: item_id)")
    p.add_argument("--time-col", help="Unix seconds; default: timestamp")
    p.add_argument("--domain-col", help="domain of each interaction (several domains, keys <domain>:<id>)")
    p.add_argument("--text-fields", nargs="+", required=True, metavar="[LABEL=]COLUMN",
                   help="item columns forming the text 'Label: value ; …' (label default: the column, capitalised)")
    p.add_argument("--list-fields", nargs="+", type=list_field, default=[], metavar="COLUMN[=SEP]",
                   help="text columns whose cells are lists separated by SEP (default: whitespace)")
    p.add_argument("--image-col", help="item image: a path (relative to the item table) or a URL")
    p.add_argument("--images", help="folder of downloaded URL images <item id>.jpg|png|webp")
    p.add_argument("--download-images", action="store_true", help="fetch missing URL images into --images first")
    p.add_argument("--kcore", "--k-core", dest="k_core", type=int, default=5)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--strict", action="store_true", help="bad rows are an error instead of a counted skip")
    p.add_argument("--licence", default=LICENCE, help="licence text recorded in dataset.json")
    add_scale_arguments(p)
    args = p.parse_args()
    if bool(args.interactions or args.sequences_from) != bool(args.items):
        p.error("--items goes with --interactions or --sequences-from (RecBole: NAME.item is read with --recbole)")
    if args.sequences_from and not args.name:
        p.error("--sequences-from needs --name (the dataset's name)")
    if args.download_images and not (args.images and args.image_col):
        p.error("--download-images needs --image-col (the URLs) and --images DIR (where they go)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {"user": args.user_col, "item": args.item_col, "time": args.time_col, "domain": args.domain_col,
                 "image": args.image_col}
    columns = replace(RECBOLE_COLUMNS if args.recbole else Columns(),
                      **{key: value for key, value in overrides.items() if value})
    lists = dict(args.list_fields)
    with tool_errors():
        fields = [TextField.parse(spec, lists) for spec in args.text_fields]
        unknown = sorted(set(lists) - {f.column for f in fields})
        if unknown:
            raise DataError(f"--list-fields {', '.join(unknown)}: not among the --text-fields columns")
        options = dict(text_fields=fields, name=args.name, columns=columns, images=args.images,
                       download=args.download_images, k=args.k_core, shard_size=args.shard_size, strict=args.strict,
                       licence=args.licence, scale=scale_from_args(args))
        if args.recbole:
            manifest = prepare_recbole(args.recbole, args.out, **options)
        elif args.sequences_from:
            for key in ("download", "k"):
                options.pop(key)
            manifest = prepare_items_for(args.sequences_from, args.items, args.out, **options)
        else:
            manifest = prepare(args.interactions, args.items, args.out, **options)
    if manifest is not None:
        print(json.dumps({"counts": manifest.counts, "filtering": manifest.provenance["filtering"],
                          "skipped": manifest.provenance["skipped"]}, indent=1))
