"""SSD forward + backward time per form and window length, side by side in one process, and which form "auto" picks.

Shapes of the paper configuration (H=8, P=64, G=8, S=64); every form gets the same inputs; times are the mean of
--repeats timed calls after warm-up (Triton autotuning happens in the warm-up). On CUDA the mamba-ssm Triton form
joins when importable.

    .venv/bin/python tools/bench/ssd_forms.py [--lengths 20 50 200] [--batch 1024] [--device cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from mmm4rec.model.ssd import pick_form, ssd_scan, triton_usable
from provenance import provenance
from timing import default_device, seconds_per_call

H, P, G, S = 8, 64, 8, 64


def inputs(b: int, L: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    r = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    x, dt, B, C = r(b, L, H, P), r(b, L, H) - 1.0, r(b, L, G, S), r(b, L, G, S)
    A = -torch.exp(torch.rand(H, generator=gen) * 2.7).to(device)
    D, dt_bias = torch.ones(H, device=device), (torch.rand(H, generator=gen) - 2.0).to(device)
    return [t.requires_grad_() for t in (x, dt, B, C)], A, D, dt_bias


def fwd_bwd_ms(form: str, b: int, L: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    (x, dt, B, C), A, D, dt_bias = inputs(b, L, dtype, device, torch.Generator().manual_seed(0))

    def call():
        y = ssd_scan(x, dt, A, B, C, D, dt_bias=dt_bias, form=form, chunk_size=64 if form == "triton" else 32)
        y.sum().backward()

    return seconds_per_call(call, repeats, device) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[20, 50, 200])
    p.add_argument("--batch", type=int, default=None, help="default: 1024 on CUDA, 64 on CPU")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default=default_device())
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    b = args.batch or (1024 if device.type == "cuda" else 64)
    forms = ["quadratic", "chunked", "recurrence"] + (["triton"] if triton_usable(device) else [])
    rows = []
    print(f"SSD forward + backward, ms, batch {b}, H={H} P={P} G={G} S={S}, {device}")
    print(f"{'L':>5} {'dtype':<9}" + "".join(f"{f:>12}" for f in forms) + f"{'auto picks':>13}")
    for L in args.lengths:
        for dtype in (torch.float32, torch.bfloat16):
            times = {f: fwd_bwd_ms(f, b, L, dtype, device, args.repeats) for f in forms}
            auto = pick_form(torch.empty(b, L, device=device))
            rows.append({"L": L, "dtype": str(dtype).removeprefix("torch."), "batch": b, "auto": auto,
                         "ms": {f: round(t, 3) for f, t in times.items()}})
            print(f"{L:>5} {rows[-1]['dtype']:<9}" + "".join(f"{t:>12.2f}" for t in times.values()) + f"{auto:>13}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(), "device": str(device), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
