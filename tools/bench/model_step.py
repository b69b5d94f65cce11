"""Training-step throughput of the model alone: forward + full-item CE + backward + optimizer step, as the system
runs it (the Objective DeepSpeed trains, the sync-free NAdam), side by side with the reference-style baseline
(tools/bench/reference_style.py: the same math computed the way the public reference computes it, torch NAdam)
and the SASRec baseline, in one process.

Paper configuration (N=256, E=512, H=8, G=8, S=64, L=20, 1 layer, ID bias on, 768-d text and image features,
25,986 items as in Amazon Office). Variants: eager; ``--compile`` torch.compile of forward + loss (+ backward via
AOTAutograd), and on CUDA also mode=reduce-overhead (CUDA graphs); ``--bf16`` adds bf16 autocast (on a CPU
without native bf16 that is emulated and ~25× slower: the ISA is in the provenance). On CUDA every variant runs
with TF32 matmuls, as the reference does.

``--count-ops`` instead counts what one step dispatches (batch 64; tools/bench/op_count.py): top-level aten ops
eager, for the baseline and for the project's CPU and GPU kernel paths (model.kernels), and for the compiled
step the generated kernels plus the aten ops still dispatched.

    .venv/bin/python tools/bench/model_step.py [--batches 256 1024] [--steps 5] [--bf16] [--compile]
                                               [--device cuda] [--length 20] [--json out.json]
    .venv/bin/python tools/bench/model_step.py --count-ops --json docs/results/step_ops.json
"""
from __future__ import annotations

import argparse
import json

import torch

from mmm4rec.config import ModelConfig, TrainConfig, from_dict
from mmm4rec.losses import LOSSES, Objective
from mmm4rec.model import Batch, ItemFeatures, build_model
from mmm4rec.train.optim import NAdam
from op_count import count_step, enable_kernel_events
from provenance import provenance
from reference_style import ReferenceStyleMMM4Rec
from timing import default_device, seconds_per_call

ITEMS = 25_986


def make_batch(b: int, L: int, items: int, gen: torch.Generator) -> Batch:
    lengths = torch.randint(1, L + 1, (b,), generator=gen)
    pos = torch.arange(L)[None]
    seq = torch.randint(1, items + 1, (b, L), generator=gen).masked_fill(pos >= lengths[:, None], 0)
    ts = (1_500_000_000 + torch.randint(0, 10**6, (b, L), generator=gen).cumsum(1)).masked_fill(pos >= lengths[:, None], 0)
    return Batch(seq, ts, lengths, torch.randint(1, items + 1, (b,), generator=gen), ts.max(1).values + 60,
                 torch.full((b,), 1.0 / b))


def paper_features(gen: torch.Generator, device: torch.device) -> ItemFeatures:
    """Random unit-norm 768-d text and image features for ITEMS items (row 0 = padding)."""
    text, image = (torch.nn.functional.normalize(torch.randn(ITEMS + 1, 768, generator=gen), dim=-1).to(device)
                   for _ in range(2))
    return ItemFeatures(text, image)


def training_step(cfg: ModelConfig, features: ItemFeatures, batch: Batch, bf16: bool = False,
                  reference_style: bool = False, compile_mode: str | None = None):
    """One training step as a callable: forward + loss under autocast, backward, optimizer."""
    torch.manual_seed(0)
    device = batch.items.device
    if reference_style:
        model = ReferenceStyleMMM4Rec(cfg, features.text, features.image).train().to(device)
        forward = lambda: model(batch.items, batch.timestamps, batch.lengths, batch.targets)  # noqa: E731
        opt = torch.optim.NAdam(model.parameters(), lr=1e-4, weight_decay=0.005, foreach=True)
    else:
        model = Objective(build_model(cfg, features), LOSSES["full"](TrainConfig())).train().to(device)
        if compile_mode is not None:  # as train.compile=true does inside the DeepSpeed engine
            model.compile(mode=None if compile_mode == "default" else compile_mode)
        forward = lambda: model(batch)  # noqa: E731
        opt = NAdam(model.parameters(), lr=1e-4, weight_decay=0.005)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def throughput(args, device, features, gen, save) -> list[dict]:
    compile_modes = (["default"] + (["reduce-overhead"] if device.type == "cuda" else [])) if args.compile else []
    precisions = [False, True] if args.bf16 else [False]
    variants = [("reference-style", {}, [False], None)]
    variants += [("mmm4rec", {}, precisions, None)]
    variants += [(f"mmm4rec+compile({m})", {}, precisions, m) for m in compile_modes]
    variants.append(("sasrec", {"arch": "sasrec", "temperature": 1.0}, [False], None))
    rows = []
    print(f"{'batch':>6} {'variant':<32} {'precision':<9} {'samples/s':>10} {'vs reference-style':>19}")
    for b in args.batches:
        batch = make_batch(b, args.length, ITEMS, gen).to(device)
        base = None
        for label, overrides, precs, mode in variants:
            for bf16 in precs:
                cfg = from_dict(ModelConfig, {"max_len": args.length, **overrides})
                step = training_step(cfg, features, batch, bf16, label == "reference-style", mode)
                sps = b / seconds_per_call(step, args.steps, device, warmup=3 if mode is None else 5)
                base = base or sps
                rows.append({"batch": b, "variant": label, "precision": "bf16" if bf16 else "fp32",
                             "samples_per_s": round(sps, 1), "ratio": round(sps / base, 3)})
                print(f"{b:>6} {label:<32} {rows[-1]['precision']:<9} {sps:>10.1f} {sps / base:>17.2f}x", flush=True)
                save({"rows": rows})
    return rows


def op_counts(args, device, features, gen, save) -> dict:
    enable_kernel_events()
    batch = make_batch(64, args.length, ITEMS, gen).to(device)
    cfg = lambda **kw: from_dict(ModelConfig, {"max_len": args.length, **kw})  # noqa: E731
    counted = {
        "reference-style (eager)": training_step(cfg(), features, batch, reference_style=True),
        "mmm4rec eager, CPU kernels": training_step(cfg(kernels="cpu"), features, batch),
        "mmm4rec eager, GPU kernels": training_step(cfg(kernels="gpu"), features, batch),
        "mmm4rec compiled, GPU kernels": training_step(cfg(kernels="gpu"), features, batch, compile_mode="default"),
    }
    out = {}
    for label, step in counted.items():
        out[label] = count_step(step, warmup=3)
        c = out[label]
        print(f"{label:<32} aten ops {c['aten_ops']:>5}  generated kernels {c['generated_kernels']:>4}  "
              f"dispatched {c['dispatched']:>5}", flush=True)
        save({"ops_per_step": out})
    base = out["reference-style (eager)"]["aten_ops"]
    for c in out.values():
        c["vs_baseline_eager"] = round(c["dispatched"] / base, 3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="also measure each variant under bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also measure the compiled step")
    p.add_argument("--count-ops", action="store_true", help="count dispatched ops and kernels per step instead")
    p.add_argument("--device", default=default_device())
    p.add_argument("--length", type=int, default=20, help="window length L")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the reference runs on GPUs
    gen = torch.Generator().manual_seed(0)
    features = paper_features(gen, device)
    prov = provenance()
    print(f"{prov['machine']}; L={args.length}")

    def save(result: dict) -> None:
        """The JSON rewritten after every row: a run stopped at a time limit keeps what it measured."""
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**prov, "device": str(device), "length": args.length, **result}, f, indent=2)

    if args.count_ops:
        save({"ops_per_step": op_counts(args, device, features, gen, save)})
    else:
        throughput(args, device, features, gen, save)


if __name__ == "__main__":
    main()
