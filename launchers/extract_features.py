"""Stage 1: encode every item of a dataset with frozen encoders into its feature store (or bring it up to date).

  python launchers/extract_features.py --dataset data/ml-1m
  torchrun --nproc_per_node 2 launchers/extract_features.py --dataset data/ml-1m --image google/siglip-base-patch16-224

Item shards are split over the processes; the store lands in <dataset>/features/<encoder-slug>/ unless
--features names a folder. Prints a JSON summary (path, items, dims, encoded/reused counts, bad records).
"""
from __future__ import annotations

import argparse
import json
import logging

import torch.distributed as dist

from mmm4rec import distributed
from mmm4rec.config import EncoderConfig
from mmm4rec.data.features import FeatureStore, ensure_features


def main(argv: list[str] | None = None) -> None:
    defaults = EncoderConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="folder with dataset.json and the shards")
    p.add_argument("--features", help="feature store folder (default: <dataset>/features/<encoder-slug>)")
    p.add_argument("--text", default=defaults.text, help="'minilm', a transformers model name or a local folder")
    p.add_argument("--image", default=defaults.image, help="image model name or folder (default: text only)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-text-tokens", type=int, default=defaults.max_text_tokens)
    p.add_argument("--strict", action="store_true", help="bad input is an error instead of a counted skip")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    args = p.parse_args(argv)

    env = distributed.init()
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s")
    cfg = EncoderConfig(text=args.text, image=args.image, batch_size=args.batch_size,
                        max_text_tokens=args.max_text_tokens)
    try:
        path = ensure_features(args.dataset, cfg, args.features, strict=args.strict)
        if env.is_main:
            store = FeatureStore.open(path)
            m = store.manifest
            print(json.dumps({"features": str(path), "items": store.num_items, "dims": m["dims"],
                              "missing_images": m["missing_images"], "last_build": m["last_build"],
                              "bad_records": m["bad_records"]}, indent=1))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
