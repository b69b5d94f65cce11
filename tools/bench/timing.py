"""What the benchmarks share: the device they default to, and wall-clock timing of a callable after warm-up that
synchronises CUDA so the GPU's queued work is counted."""
from __future__ import annotations

import time
from typing import Callable

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 3) -> float:
    """Mean time of ``repeats`` calls after ``warmup`` untimed ones (allocator, kernels, Triton autotuning)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats
