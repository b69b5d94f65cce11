"""Print a dataset's counts, split, shards and provenance.

  python tools/inspect_dataset.py data/ml-1m [--verify]
  python tools/inspect_dataset.py https://host/ml-1m      (or file://, s3://…, pipe:… with --allow-pipe)
"""
import argparse

from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.remote import DatasetSource
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a dataset folder or URL (docs/data_format.md, \"Remote datasets\")")
    p.add_argument("--verify", action="store_true", help="re-hash every shard against the manifest")
    p.add_argument("--allow-pipe", action="store_true", help="let the dataset be a pipe: command")
    args = p.parse_args()
    with tool_errors():
        m = load_manifest(DatasetSource.parse(args.dataset, allow_pipe=args.allow_pipe), verify=args.verify)
    c, s = m.counts, m.split
    print(f"{m.name}: {c['users']:,} users, {c['items']:,} items, {c['interactions']:,} interactions")
    for domain, d in c["per_domain"].items():
        print(f"  {domain:<24} {d['users']:>10,} users {d['items']:>10,} items {d['interactions']:>12,} interactions")
    print(f"split: {s['protocol']}, order {s['order']}: {s['train_samples']:,} training samples, "
          f"{s['valid_users']:,} validation / {s['test_users']:,} test users, "
          f"{s['pretrain_samples']:,} pre-training samples")
    for kind, shards in (("items", m.items), ("seqs", m.seqs)):
        print(f"{kind}: {len(shards)} shards, {sum(x.count for x in shards):,} samples, "
              f"{sum(x.bytes for x in shards) / 1e6:,.1f} MB" + (", checksums verified" if args.verify else ""))
    print(f"converter: {m.provenance.get('converter')} {m.provenance.get('args', {})}")
    print(f"licence: {m.licence}")
