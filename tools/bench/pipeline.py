"""Training throughput of the whole pipeline — loader + model + DeepSpeed step, wired as the launchers wire it
(mmm4rec.train.assembly) — and, on the same engine, of the step alone on batches already on the device: the gap
between the two is what the loader costs.

Data: by default synthetic at the paper configuration (25,986 items, random unit 768-d text + image features),
where a baseline built the way the reference is built runs first, side by side: the JSON-lines map-style loader
(tools/bench/loader.py's ReferenceStyleDataset, num_workers=0) feeding the reference-style model
(tools/bench/reference_style.py, fp32, quadratic SSD) and torch NAdam. ``--dataset DIR`` instead trains on a
prepared dataset with its feature store (e.g. ML-1M with MiniLM text features), without the baseline.
Model: the paper's width (N=256, L=20, 1 layer, ID bias), full-item softmax; each variant is a precision with
``+compile`` for train.compile. It runs where the launchers would: on CUDA when present (CUDA_VISIBLE_DEVICES=
for the CPU).

    .venv/bin/python tools/bench/pipeline.py [--steps 8] [--users 4000] [--json out.json]
    .venv/bin/python tools/bench/pipeline.py --dataset data/ml-1m --variants bf16 bf16+compile --zero 2 \\
        --batch 1024 --workers 4 --steps 100 --json out.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader

from loader import ReferenceStyleDataset, item_index, write_reference_jsonl
from provenance import provenance
from reference_style import ReferenceStyleMMM4Rec
from timing import synchronize

from mmm4rec import distributed
from mmm4rec.config import load_config
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.stream import SeqIndex
from mmm4rec.data.synthetic import generate
from mmm4rec.model import Batch, ItemFeatures, build_model
from mmm4rec.train.assembly import feature_dtype, load_data, train_engine, train_stream
from mmm4rec.train.engine import step_precision

ITEMS = 25_986
WARMUP = 3  # untimed steps first: allocator, compilation, Triton autotuning


def rate(step, batches, steps: int, device: torch.device) -> float:
    """Samples/s over ``steps`` calls of ``step`` after WARMUP untimed ones."""
    it = iter(batches)
    for batch in itertools.islice(it, WARMUP):
        step(batch)
    synchronize(device)
    start, n = time.perf_counter(), 0
    for batch in itertools.islice(it, steps):
        n += step(batch)
    synchronize(device)
    return n / (time.perf_counter() - start)


def synthetic(args, work: Path):
    """The paper-configuration synthetic dataset: (folder, random fp32 features, what train_stream reads of a
    run's data — the stage-2 index and the item index)."""
    data = work / "data"
    if not (data / "dataset.json").exists():
        generate(data, args.users, ITEMS, images="none", seed=0, shard_size=1000, mean_length=20)
    index = item_index(data)
    gen = torch.Generator().manual_seed(0)
    text, image = (torch.nn.functional.normalize(torch.randn(len(index) + 1, 768, generator=gen), dim=-1)
                   for _ in range(2))
    text[0] = image[0] = 0
    source = SimpleNamespace(seq_index=SeqIndex.build(load_manifest(data), index, strict=False), item_index=index)
    return data, ItemFeatures(text, image), source


def reference_style(args, data: Path, features: ItemFeatures, index: dict, work: Path, device) -> float:
    """The reference's loader, model computation pattern and optimiser loop (fp32)."""
    jsonl = work / "reference.jsonl"
    if not jsonl.exists():
        write_reference_jsonl(data, index, jsonl)
    torch.manual_seed(0)
    ref = ReferenceStyleMMM4Rec(load_config(None, ["model.dropout=0.4"]).model, features.text,
                                features.image).train().to(device)
    opt = torch.optim.NAdam(ref.parameters(), lr=1e-4, weight_decay=0.005)

    def step(batch):
        _, items, label, lengths, _, ts = (t.to(device) for t in batch)
        loss = ref(items, ts, lengths, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(label)

    loader = DataLoader(ReferenceStyleDataset(jsonl), batch_size=args.batch, shuffle=True)
    return rate(step, loader, args.steps, device)


def run_config(args, variant: str, dataset: str):
    precision, _, compiled = variant.partition("+")
    return load_config(None, [f"data.dataset={dataset}", f"data.batch_size={args.batch}", "train.grad_accum=1",
                              f"data.num_workers={args.workers}", f"model.max_len={args.length}",
                              f"train.precision={precision}", f"train.zero_stage={args.zero}",
                              f"train.compile={compiled == 'compile'}"])


def measure(cfg, env, features: ItemFeatures, source, steps: int) -> dict:
    """Samples/s of the loop the trainer runs (stream -> device -> engine step) and of the same step on batches
    already on the device, on one engine built as launchers/finetune.py builds it."""
    torch.manual_seed(cfg.train.seed)
    stream = train_stream(cfg, env, source)
    engine = train_engine(cfg, env, build_model(cfg.model, features), stream.steps_per_epoch)

    def step(batch: Batch) -> int:
        loss = engine(batch)
        engine.backward(loss)
        engine.step()
        return len(batch.targets)

    loaded = rate(lambda raw: step(Batch.from_dict(raw).to(env.device)), stream, steps, env.device)
    on_device = [Batch.from_dict(raw).to(env.device) for raw in itertools.islice(stream, 8)]
    alone = rate(step, itertools.cycle(on_device), steps, env.device)
    return {"pipeline": round(loaded, 1), "step_alone": round(alone, 1), "pipeline_vs_step": round(loaded / alone, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="a prepared dataset with its feature store (default: synthetic)")
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16+compile"],
                   help="precision, with +compile for train.compile")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--length", type=int, default=20, help="window length L")
    p.add_argument("--zero", type=int, default=1, help="ZeRO stage")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes")
    p.add_argument("--users", type=int, default=4000, help="synthetic users")
    p.add_argument("--workdir", help="scratch folder for the synthetic data (default: a new one)")
    p.add_argument("--json")
    args = p.parse_args()
    env = distributed.init()  # the device the launchers would use: CUDA when present
    result = {**provenance(), "device": str(env.device), "dataset": args.dataset or "synthetic", "batch": args.batch,
              "length": args.length, "zero_stage": args.zero, "loader_workers": args.workers, "samples_per_s": {}}
    dataset = args.dataset
    if not dataset:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-"))
        folder, fp32_features, source = synthetic(args, work)
        dataset = str(folder)
        base = reference_style(args, folder, fp32_features, source.item_index, work, env.device)
        result["samples_per_s"]["reference-style loader + model, fp32"] = {"pipeline": round(base, 1)}
        print(f"reference-style (JSONL loader, eager fp32, torch NAdam): {base:9.1f} samples/s", flush=True)
    for variant in args.variants:
        cfg = run_config(args, variant, dataset)
        precision = step_precision(cfg, env.device)
        if args.dataset:
            data = load_data(cfg, precision)  # features in the step's dtype, as the launchers load them
            features, source = data.features, data
        else:
            dtype = feature_dtype(cfg, precision)
            features = ItemFeatures(fp32_features.text.to(dtype), fp32_features.image.to(dtype))
        result["items"] = features.num_items
        rates = measure(cfg, env, features, source, args.steps)
        result["samples_per_s"][f"mmm4rec, {variant}"] = rates
        print(f"mmm4rec (TrainStream + DeepSpeed ZeRO-{args.zero}, {variant + '):':<14} {rates['pipeline']:9.1f} "
              f"samples/s; the step alone {rates['step_alone']:9.1f} (pipeline {rates['pipeline_vs_step']:.2f}x)",
              flush=True)
        if args.json:  # after every variant: a run stopped by its time limit keeps what it measured
            Path(args.json).write_text(json.dumps(result, indent=2))
    distributed.shutdown()


if __name__ == "__main__":
    main()
