"""``mmm4rec prepare`` (and tools/prepare_tables.py, the same command): your own tables -> dataset folder.

  mmm4rec prepare --interactions raw/events.csv --items raw/products.csv --out data/shop --name shop \\
      --user-col visitor --item-col sku --time-col ts --time-format unix_ms --text-fields title brand
  mmm4rec prepare --interactions raw/ratings.csv --items raw/movies.csv --out data/my-movies --name movies \\
      --user-col userId --item-col movieId --text-fields title genres --list-fields "genres=|"
  mmm4rec prepare --recbole raw/ml-100k/ml-100k --out data/ml-100k \\
      --text-fields Title=movie_title Year=release_year Genres=class
  mmm4rec prepare --interactions raw/events.parquet --items raw/items.jsonl --out data/shops \\
      --domain-col shop --text-fields title brand description --image-col image --images raw/images --download-images

Tables: .csv .tsv .jsonl .parquet (needs pyarrow) and RecBole .inter/.item, optionally .gz (not Parquet).
Item keys are '<domain>:<item id>': the domain is --name (default: the interaction file's name up to its first
'.', printed), or each row's --domain-col. Timestamps are --time-format: integer Unix seconds (default),
milliseconds (unix_ms) or ISO-8601 text (iso8601, UTC unless it carries an offset); the first 1000 rows are
checked before the whole table is read. Every row is an implicit interaction; exact duplicates are dropped, then
k-core filtering to a fixed point; per-user order by (timestamp, item key). docs/data_format.md documents every
option.

Parsing imports nothing heavy: the conversion imports the engine when it runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .options import add_scale_arguments

TIME_FORMATS = ("unix", "unix_ms", "iso8601")  # engine.TIME_FORMATS (which imports duckdb)


def list_field(text: str) -> tuple[str, str]:
    column, _, separator = text.partition("=")
    return column, separator


def add_prepare_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--interactions", help="table of (user, item, timestamp[, domain]) rows")
    source.add_argument("--recbole", metavar="DIR/NAME", help="RecBole atomic files NAME.inter and NAME.item in DIR")
    source.add_argument("--sequences-from", metavar="BUILD",
                        help="a build folder whose sequences another engine wrote (tools/spark_sequences.py): read "
                             "the --items table for the items they name, then write the shards")
    p.add_argument("--items", help="item table (with --interactions)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--name", help="dataset name and, without --domain-col, the domain every key gets "
                                  "('<name>:<item id>'); default: the interaction file's name up to its first '.' "
                                  "(RecBole: NAME), or the domains joined by '+'")
    p.add_argument("--user-col", help="default: user (RecBole: user_id)")
    p.add_argument("--item-col", help="item id in both tables; default: item (RecBole: item_id)")
    p.add_argument("--time-col", help="default: timestamp")
    p.add_argument("--time-format", choices=TIME_FORMATS, default="unix",
                   help="what the time column holds: unix = integer Unix seconds (default), unix_ms = "
                        "milliseconds, iso8601 = ISO-8601 text (UTC unless it has an offset); typed Parquet "
                        "timestamps are read as such")
    p.add_argument("--domain-col", help="domain of each interaction (several domains, keys <domain>:<id>)")
    p.add_argument("--text-fields", nargs="+", required=True, metavar="[LABEL=]COLUMN",
                   help="item columns forming the text 'Label: value ; …' (label default: the column, capitalised)")
    p.add_argument("--list-fields", nargs="+", type=list_field, default=[], metavar="COLUMN[=SEP]",
                   help="text columns whose cells are lists separated by SEP (default: whitespace)")
    p.add_argument("--image-col", help="item image: a path (relative to the item table) or a URL")
    p.add_argument("--images", help="folder of downloaded URL images <item id>.jpg|png|webp")
    p.add_argument("--download-images", action="store_true", help="fetch missing URL images into --images first")
    p.add_argument("--kcore", "--k-core", dest="k_core", type=int, default=5,
                   help="keep users and items with at least K interactions, to a fixed point (default 5)")
    p.add_argument("--shard-size", type=int, default=1000, help="records per WebDataset shard (default 1000)")
    p.add_argument("--strict", action="store_true", help="bad rows are an error instead of a counted skip")
    p.add_argument("--licence", help="licence text recorded in dataset.json (default: not stated: the data "
                                     "owner's terms apply)")
    add_scale_arguments(p)
    return p


def run_prepare(args: argparse.Namespace, error=None) -> int:
    """Convert; a bad input or an I/O error is one line on stderr (exit 2), a bad combination of options
    ``error`` (argparse)."""
    def fail(message: str) -> int:
        if error is not None:
            error(message)
        print(f"error: {message}", file=sys.stderr)
        return 2

    if bool(args.interactions or args.sequences_from) != bool(args.items):
        return fail("--items goes with --interactions or --sequences-from (RecBole: NAME.item is read with --recbole)")
    if args.sequences_from and not args.name:
        return fail("--sequences-from needs --name (the dataset's name)")
    if args.download_images and not (args.images and args.image_col):
        return fail("--download-images needs --image-col (the URLs) and --images DIR (where they go)")
    if args.sequences_from and args.time_format != "unix":
        return fail("--time-format applies to --interactions and --recbole (the sequences are already built)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from dataclasses import replace

    from .build import scale_from_args
    from .schema import DataError
    from .tables import LICENCE, RECBOLE_COLUMNS, Columns, TextField, prepare, prepare_items_for, prepare_recbole

    overrides = {"user": args.user_col, "item": args.item_col, "time": args.time_col, "domain": args.domain_col,
                 "image": args.image_col}
    columns = replace(RECBOLE_COLUMNS if args.recbole else Columns(),
                      **{key: value for key, value in overrides.items() if value})
    lists = dict(args.list_fields)
    try:
        fields = [TextField.parse(spec, lists) for spec in args.text_fields]
        unknown = sorted(set(lists) - {f.column for f in fields})
        if unknown:
            raise DataError(f"--list-fields {', '.join(unknown)}: not among the --text-fields columns")
        options = dict(text_fields=fields, name=args.name, columns=columns, images=args.images,
                       download=args.download_images, k=args.k_core, shard_size=args.shard_size, strict=args.strict,
                       licence=args.licence or LICENCE, scale=scale_from_args(args))
        if args.recbole:
            manifest = prepare_recbole(args.recbole, args.out, time_format=args.time_format, **options)
        elif args.sequences_from:
            for key in ("download", "k"):
                options.pop(key)
            manifest = prepare_items_for(args.sequences_from, args.items, args.out, **options)
        else:
            manifest = prepare(args.interactions, args.items, args.out, time_format=args.time_format, **options)
    except (DataError, OSError) as e:  # OSError: an output folder that cannot be made, a full disk (tool.py's rule)
        from ..tool import error_line

        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    if manifest is not None:
        domains = sorted(manifest.provenance["filtering"])
        print(json.dumps({"dataset": manifest.name, "key_prefixes": [f"{d}:" for d in domains],
                          "counts": manifest.counts, "filtering": manifest.provenance["filtering"],
                          "skipped": manifest.provenance["skipped"]}, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mmm4rec prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(p)
    return run_prepare(p.parse_args(argv), p.error)
