"""Training-step throughput of the model alone: forward + full-item CE + backward + optimizer step.

Paper configuration (N=256, E=512, H=8, G=8, S=64, L=20, 1 layer, ID bias on, 768-d text and image features,
25,986 items as in Amazon Office), batch 256 and 1024, for every SSD form, the auto choice and the SASRec
baseline, side by side in one process; ratios are against the reference-style baseline
(tools/bench/reference_style.py: the same math computed the way the public reference computes it, fp32; on CUDA
with TF32 matmuls for every variant, as the reference runs). On CUDA the mamba-ssm Triton form joins when importable.

    .venv/bin/python tools/bench/model_step.py [--batches 256 1024] [--steps 5] [--bf16] [--compile] [--device cuda]
                                               [--length 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform

import torch

from mmm4rec.config import ModelConfig, from_dict
from mmm4rec.model import Batch, ItemFeatures, build_model
from mmm4rec.model.ssd import triton_usable
from provenance import provenance
from reference_style import ReferenceStyleMMM4Rec
from timing import default_device, seconds_per_call

ITEMS = 25_986


def make_batch(b: int, L: int, items: int, gen: torch.Generator) -> Batch:
    lengths = torch.randint(1, L + 1, (b,), generator=gen)
    pos = torch.arange(L)[None]
    seq = torch.randint(1, items + 1, (b, L), generator=gen).masked_fill(pos >= lengths[:, None], 0)
    ts = (1_500_000_000 + torch.randint(0, 10**6, (b, L), generator=gen).cumsum(1)).masked_fill(pos >= lengths[:, None], 0)
    return Batch(seq, ts, lengths, torch.randint(1, items + 1, (b,), generator=gen), ts.max(1).values + 60)


def paper_features(gen: torch.Generator, device: torch.device) -> ItemFeatures:
    """Random unit-norm 768-d text and image features for ITEMS items (row 0 = padding)."""
    text, image = (torch.nn.functional.normalize(torch.randn(ITEMS + 1, 768, generator=gen), dim=-1).to(device)
                   for _ in range(2))
    return ItemFeatures(text, image)


def measure(cfg: ModelConfig, features: ItemFeatures, batch: Batch, steps: int, bf16: bool,
            reference_style: bool = False, compiled: bool = False) -> float:
    torch.manual_seed(0)
    device = batch.items.device
    if reference_style:
        model = ReferenceStyleMMM4Rec(cfg, features.text, features.image).train().to(device)
        forward = lambda: model(batch.items, batch.timestamps, batch.lengths, batch.targets)  # noqa: E731
    else:
        model = build_model(cfg, features).train().to(device)
        if compiled:
            model.compile()  # as train.compile=true does inside the DeepSpeed engine
        forward = lambda: model(batch, "full")  # noqa: E731
    opt = torch.optim.NAdam(model.parameters(), lr=1e-4, weight_decay=0.005)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return len(batch.targets) / seconds_per_call(step, steps, device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="also measure each variant under bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also measure the auto form under torch.compile")
    p.add_argument("--device", default=default_device())
    p.add_argument("--length", type=int, default=20, help="window length L")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the reference runs on GPUs
    gen = torch.Generator().manual_seed(0)
    features = paper_features(gen, device)
    forms = ["quadratic", "chunked", "auto"] + (["triton"] if triton_usable(device) else [])
    precisions = [False, True] if args.bf16 else [False]
    variants = [("reference-style", {}, [False])]
    variants += [(f"mmm4rec/{f}", {"ssd": {"form": f}}, precisions) for f in forms]
    variants += [("mmm4rec/auto+compile", {}, precisions)] if args.compile else []
    variants.append(("sasrec", {"arch": "sasrec", "temperature": 1.0}, [False]))
    rows = []
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, L={args.length}")
    print(f"{'batch':>6} {'variant':<22} {'precision':<9} {'samples/s':>10} {'vs reference-style':>19}")
    for b in args.batches:
        batch = make_batch(b, args.length, ITEMS, gen).to(device)
        base = None
        for label, overrides, precisions in variants:
            for bf16 in precisions:
                cfg = from_dict(ModelConfig, {"max_len": args.length, **overrides})
                sps = measure(cfg, features, batch, args.steps, bf16, reference_style=label == "reference-style",
                              compiled=label.endswith("+compile"))
                base = base or sps
                rows.append({"batch": b, "variant": label, "precision": "bf16" if bf16 else "fp32",
                             "samples_per_s": round(sps, 1), "ratio": round(sps / base, 3)})
                print(f"{b:>6} {label:<22} {rows[-1]['precision']:<9} {sps:>10.1f} {sps / base:>17.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(), "length": args.length, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
