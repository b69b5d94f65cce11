"""Counting what one training step dispatches: on a launch-bound GPU the step time follows these counts (each
dispatched op or kernel costs ~10–20 µs of host time), so they are measured on the CPU as a proxy.

- eager: top-level aten ops (an aten op called from Python or from the autograd engine, not from inside another
  aten op), forward + backward + optimizer;
- compiled: the C++ kernels Inductor generated that ran in the step, plus the aten ops still dispatched
  (matmuls Inductor calls as extern kernels, the optimizer, anything outside the graph).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def _top_level(events) -> list:
    return [e for e in events if e.name.startswith("aten::")
            and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]


def count_step(step: Callable[[], object], warmup: int = 2) -> dict:
    """Run ``step`` ``warmup`` times, then once under the profiler; the counts of that one step."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    aten = _top_level(events)
    kernels = [e for e in events if "cpp_fused" in e.name or e.name.startswith("triton_")]
    top = Counter(e.name for e in aten).most_common(12)
    return {"aten_ops": len(aten), "generated_kernels": len(kernels), "dispatched": len(aten) + len(kernels),
            "most_common": [[name, n] for name, n in top]}


def enable_kernel_events() -> None:
    """Make Inductor's C++ kernels visible to the profiler (set before the first compile)."""
    import torch._inductor.config as inductor

    inductor.cpp.enable_kernel_profile = True
    torch._dynamo.reset()
