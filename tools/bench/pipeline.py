"""Training throughput of the whole pipeline (loader + model + optimizer step) against a baseline built the way the
reference is built, side by side in one invocation, at the paper configuration (N=256, L=20, 1 layer, ID bias,
768-d text + image features, full-item softmax over 25,986 items, batch 256).

- baseline: JSON-lines map-style loader (tools/bench/loader.py's ReferenceStyleDataset, num_workers=0) feeding
  the reference-style model (tools/bench/reference_style.py, fp32, quadratic SSD) and torch NAdam, one process;
- mmm4rec: TrainStream over the WebDataset shards feeding MMM4Rec under a DeepSpeed engine (ZeRO-1), fp32 and
  bf16 autocast (DeepSpeed torch_autocast), and bf16 with train.compile, one process.

    .venv/bin/python tools/bench/pipeline.py [--steps 8] [--users 4000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from loader import ReferenceStyleDataset, item_index, write_reference_jsonl
from provenance import provenance
from reference_style import ReferenceStyleMMM4Rec

from mmm4rec.config import load_config
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.stream import SeqIndex, TrainStream
from mmm4rec.data.synthetic import generate
from mmm4rec.distributed import DistEnv
from mmm4rec.model import Batch, ItemFeatures, build_model
from mmm4rec.train.engine import deepspeed_config, initialize

ITEMS, BATCH = 25_986, 256
REPO = Path(__file__).resolve().parents[2]


def timed(step, batches, steps: int) -> float:
    it = iter(batches)
    step(next(it))  # warm-up outside the timed window
    start, n = time.perf_counter(), 0
    for i, batch in enumerate(it):
        n += step(batch)
        if i + 1 == steps:
            break
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--users", type=int, default=4000)
    p.add_argument("--workdir")
    p.add_argument("--json")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    data = work / "data"
    if not (data / "dataset.json").exists():
        generate(data, args.users, ITEMS, images="none", seed=0, shard_size=1000, mean_length=20)
    index = item_index(data)
    gen = torch.Generator().manual_seed(0)
    n_items = len(index)
    text = torch.nn.functional.normalize(torch.randn(n_items + 1, 768, generator=gen), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(n_items + 1, 768, generator=gen), dim=-1)
    text[0] = image[0] = 0

    # baseline: the reference's loader, model computation pattern and optimiser loop
    jsonl = work / "reference.jsonl"
    if not jsonl.exists():
        write_reference_jsonl(data, index, jsonl)
    cfg = load_config(None, ["model.dropout=0.4"]).model
    torch.manual_seed(0)
    ref = ReferenceStyleMMM4Rec(cfg, text, image).train()
    ref_opt = torch.optim.NAdam(ref.parameters(), lr=1e-4, weight_decay=0.005)

    def ref_step(batch):
        _, items, label, lengths, _, ts = batch
        loss = ref(items, ts, lengths, label)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        return len(label)

    baseline = timed(ref_step, DataLoader(ReferenceStyleDataset(jsonl), batch_size=BATCH, shuffle=True), args.steps)
    rows = {"reference-style loader + model, fp32": baseline}
    print(f"reference-style (JSONL loader, eager fp32, torch NAdam): {baseline:8.1f} samples/s", flush=True)

    os.environ.setdefault("MASTER_PORT", str(DistEnv.from_environ().master_port))
    env = DistEnv.from_environ()
    env.export()
    seq_index = SeqIndex.build(load_manifest(data), index, strict=False)
    for precision, compiled in (("fp32", False), ("bf16", False), ("bf16", True)):
        run = load_config(None, ["data.batch_size=256", f"train.precision={precision}", "train.zero_stage=1",
                                 f"train.compile={compiled}"])
        label = precision + (" + compile" if compiled else "")
        torch.manual_seed(0)
        model = build_model(run.model, ItemFeatures(text, image))
        engine = initialize(model, run, env, deepspeed_config(run, 1, REPO / "ds_configs" / "zero1.json"))
        stream = TrainStream(seq_index, index, split="train", max_len=20, micro_batch=BATCH, grad_accum=1, rank=0,
                             world=1, seed=0, partitions=1, num_workers=0)

        def step(raw):
            batch = Batch.from_dict(raw)
            loss = engine(batch, objective="full")
            engine.backward(loss)
            engine.step()
            return len(batch.targets)

        sps = timed(step, stream, args.steps)
        rows[f"mmm4rec stream + DeepSpeed, {label}"] = sps
        print(f"mmm4rec (TrainStream + DeepSpeed ZeRO-1, {label + '):':<16} {sps:8.1f} samples/s  "
              f"-> {sps / baseline:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            **provenance(), "batch": BATCH, "items": n_items,
            "samples_per_s": {k: round(v, 1) for k, v in rows.items()},
            "ratio_vs_reference_style": {k: round(v / baseline, 2) for k, v in rows.items()}}, indent=2))


if __name__ == "__main__":
    main()
