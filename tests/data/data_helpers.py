"""Helpers for the data-pipeline tests: toy records and datasets, subprocess environment."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mmm4rec.data.dataset import write_dataset
from mmm4rec.data.schema import ItemRecord, Manifest, SeqRecord

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
T0 = 1_600_000_000


def image_bytes(color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG cut short: its header still says JPEG (writers accept it), decoding fails."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    return buf.getvalue()[:-1000]


def toy_items(n: int, domain: str = "toy", images: bool = True, start: int = 0) -> list[ItemRecord]:
    """Items ``toy:i000``...; every third has no image; colours and words differ per item."""
    out = []
    for i in range(start, start + n):
        colour = (10 * i % 256, 255 - 7 * i % 256, 90)
        image = image_bytes(colour, "JPEG" if i % 2 else "PNG") if images and i % 3 else None
        out.append(ItemRecord(f"{domain}:i{i:03d}", f"Title: toy item {i} ; Colour: shade {i % 5}", image, {"n": i}))
    return out


def toy_seqs(keys: list[str], n_users: int, domain: str = "toy", length: int = 5) -> list[SeqRecord]:
    return [SeqRecord(f"{domain}:u{u:03d}", domain, [keys[(u + j) % len(keys)] for j in range(length)],
                      np.array([T0 + 60 * j for j in range(length)], dtype=np.int64)) for u in range(n_users)]


def write_toy(path: Path, n_items: int = 12, n_users: int = 6, shard_size: int = 4, images: bool = True,
              items: list[ItemRecord] | None = None) -> Manifest:
    items = items if items is not None else toy_items(n_items, images=images)
    return write_dataset(path, name="toy", items=items, seqs=toy_seqs([r.key for r in items], n_users),
                         provenance={"converter": "tests"}, licence="test data", shard_size=shard_size)


def run_env() -> dict[str, str]:
    """Environment for subprocesses: offline, one thread per process (2 cores for 2 ranks)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}


PYTHON = sys.executable
