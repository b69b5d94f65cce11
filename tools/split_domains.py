"""One dataset folder -> two that share no items and no users (a cross-domain transfer test without overlap).

  python tools/split_domains.py --dataset data/ml-1m --out data/ml-1m-a data/ml-1m-b

Items: each item's first genre (its record's meta["genres"]) goes to one of two groups, the genres taken from the
most to the least common and each put into the group with fewer items so far, so the groups are of similar size.
Users: a seeded hash of the user key (the stage-2 user-subset hash) sends each user to one side. Each side keeps
its users' interactions with its items, is k-core filtered again (as the converters do) and is written under a
new domain name (<name>-a, <name>-b: keys are domain-qualified), with item text and metadata unchanged.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from mmm4rec.data.dataset import check_output, load_manifest, write_dataset
from mmm4rec.data.interactions import build_sequences
from mmm4rec.data.schema import BadRecords, DataError, ItemRecord
from mmm4rec.data.shards import iter_item_records, iter_seq_records
from mmm4rec.data.stream import UserSubset, user_key_hash
from mmm4rec.tool import tool_errors

log = logging.getLogger(__name__)


def first_genres(items: list[ItemRecord]) -> dict[str, str]:
    """Item key -> the first genre of its metadata (a list, as tools/prepare_movielens.py writes it)."""
    first = {}
    for rec in items:
        genres = rec.meta.get("genres")
        if not isinstance(genres, list) or not genres:
            raise DataError(f"item {rec.key!r}: no genre list in its metadata, so no domain to put it in")
        first[rec.key] = genres[0]
    return first


def genre_groups(first: dict[str, str]) -> dict[str, int]:
    """Genre -> group 0 or 1, from the most to the least common, each into the group with fewer items so far."""
    sizes, group_of = [0, 0], {}
    for genre, count in sorted(Counter(first.values()).items(), key=lambda kv: (-kv[1], kv[0])):
        group_of[genre] = int(sizes[1] < sizes[0])
        sizes[group_of[genre]] += count
    return group_of


def requalify(key: str, domain: str) -> str:
    """A domain-qualified key moved under ``domain``."""
    return f"{domain}:{key.split(':', 1)[1]}"


def split(dataset: str, outs: list[str], seed: int = 0, k: int = 5) -> dict:
    for out in outs:
        check_output(out)
    manifest = load_manifest(dataset, verify=True)
    folder, bad = Path(dataset), BadRecords(strict=True)
    items = {rec.key: rec for _, rec in iter_item_records([folder / s.name for s in manifest.items], bad,
                                                          check_images=False)}
    first = first_genres(list(items.values()))
    group_of = genre_groups(first)
    records = [rec for _, rec in iter_seq_records([folder / s.name for s in manifest.seqs], bad)]
    side_b = ~UserSubset(0.5, seed).keeps(np.array([user_key_hash(r.user) for r in records], np.uint64))
    report = {"source": str(dataset), "seed": seed, "k_core": k, "domains": {}}
    for side, out in enumerate(outs):
        domain = f"{manifest.name}-{'ab'[side]}"
        rows = [(requalify(r.user, domain), requalify(key, domain), t)
                for r, b in zip(records, side_b) if b == side
                for key, t in zip(r.items, r.timestamps.tolist()) if group_of[first[key]] == side]
        seqs = build_sequences(domain, *zip(*rows), k=k)
        genres = sorted(genre for genre, g in group_of.items() if g == side)
        provenance = {"converter": "tools/split_domains.py", "args": {"dataset": str(dataset), "side": side,
                                                                      "seed": seed, "k_core": k},
                      "source_dataset": {"name": manifest.name, "items_digest": manifest.items_digest},
                      "genres": genres, "filtering": {domain: seqs.stats}}
        source = {requalify(key, domain): rec for key, rec in items.items()}
        kept = (ItemRecord(key, source[key].text, meta=source[key].meta) for key in seqs.item_keys)
        write_dataset(out, name=domain, items=kept, seqs=seqs.records, provenance=provenance,
                      licence=manifest.licence)
        report["domains"][domain] = {"out": out, "first_genres": genres, **seqs.stats}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset folder to split")
    p.add_argument("--out", nargs=2, required=True, metavar=("A", "B"), help="the two dataset folders to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the user hash")
    p.add_argument("--k-core", type=int, default=5)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(split(args.dataset, args.out, args.seed, args.k_core), indent=1))


if __name__ == "__main__":
    with tool_errors():
        main()
