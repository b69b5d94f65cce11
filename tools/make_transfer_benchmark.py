"""A controlled two-domain transfer benchmark (mmm4rec.data.transfer_bench): domains a and b share an attribute
vocabulary (named in each item's text) but no items and no users; users follow a drifting latent taste.

  python tools/make_transfer_benchmark.py --users 1000 --items 400 --content 1.0 --out data/transfer-c1
  python tools/make_transfer_benchmark.py --users 1000 --items 400 --content 0.0 --time-signal 1 --out data/tr-t1

Writes <out>/a and <out>/b (each a dataset folder: shards + dataset.json).
--content: 1.0 = item content (the attributes the text names) explains the preference fully, 0.0 = pure
item-identity noise. --time-signal: 0 = the taste drifts the same after any gap, 1 = it mostly renews after a
long gap. --images fashion-mnist: a real Fashion-MNIST picture of each item's category (Debian's
dataset-fashion-mnist package).
"""
import argparse
import json
import sys

from mmm4rec.data.synthetic import fashion_mnist_available
from mmm4rec.data.transfer_bench import generate
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, required=True, help="users of domain a (and of b unless --users-b)")
    p.add_argument("--users-b", type=int)
    p.add_argument("--items", type=int, required=True, help="items per domain")
    p.add_argument("--out", required=True)
    p.add_argument("--content", type=float, default=1.0)
    p.add_argument("--time-signal", type=float, default=0.0)
    p.add_argument("--images", choices=("none", "fashion-mnist"), default="none")
    p.add_argument("--mean-length", type=float, default=12.0, help="typical interactions per user beyond 5")
    p.add_argument("--sharpness", type=float, default=15.0, help="how strictly users pick by taste (softmax scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000)
    args = p.parse_args()
    if args.images == "fashion-mnist" and not fashion_mnist_available():
        sys.exit("fashion-mnist images need Debian's dataset-fashion-mnist package (apt-get install "
                 "dataset-fashion-mnist); use --images none instead")
    with tool_errors():
        manifests = generate(args.out, args.users, args.items, content=args.content, time_signal=args.time_signal,
                             images=args.images, seed=args.seed, mean_length=args.mean_length,
                             sharpness=args.sharpness, users_b=args.users_b, shard_size=args.shard_size)
    print(json.dumps({d: {"counts": m.counts, "split": m.split} for d, m in manifests.items()}, indent=1))
