#!/usr/bin/env python
"""Stage 1: encode every item of a dataset with frozen encoders into its feature store (or bring it up to date).

  python launchers/extract_features.py --dataset data/ml-1m
  torchrun --nproc_per_node 2 launchers/extract_features.py --dataset data/ml-1m --image google/siglip-base-patch16-224

Item shards are split over the processes; the store lands in <dataset>/features/<encoder-slug>/ unless
--features names a folder. Prints a JSON summary (path, items, dims, encoded/reused counts, bad records).
"""
import sys

from mmm4rec.commands import extract

if __name__ == "__main__":
    sys.exit(extract())
