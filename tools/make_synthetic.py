"""A synthetic multi-modal dataset: item clusters visible in both text and images, drifting users, sessions.

  python tools/make_synthetic.py --users 1000 --items 500 --out data/syn
  python tools/make_synthetic.py --users 1000000 --items 100000 --images none --shard-size 10000 --out data/syn-1m

--images: generated (drawn shapes, default), fashion-mnist (real product photos from Debian's
dataset-fashion-mnist package; 10 clusters), none (text only).
"""
import argparse
import json
import sys

from mmm4rec.data.synthetic import fashion_mnist_available, generate
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--images", choices=("generated", "fashion-mnist", "none"), default="generated")
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--mean-length", type=float, default=10.0, help="typical interactions per user beyond 5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000)
    args = p.parse_args()
    if args.images == "fashion-mnist" and not fashion_mnist_available():
        sys.exit("fashion-mnist images need Debian's dataset-fashion-mnist package (apt-get install "
                 "dataset-fashion-mnist); use --images generated or none instead")
    with tool_errors():
        manifest = generate(args.out, args.users, args.items, images=args.images, seed=args.seed,
                            n_clusters=args.clusters, mean_length=args.mean_length, shard_size=args.shard_size)
    print(json.dumps({"counts": manifest.counts, "split": manifest.split}, indent=1))
