"""Optimisers and learning-rate schedules.

NAdam is the paper's optimiser. torch.optim.NAdam keeps its step counter and momentum product as CPU tensors and
reads them with ``.item()`` on every step (or, with ``capturable=True``, spends extra kernels on the device and is
CUDA-only). The version here keeps them as Python floats: the same update (checked against torch.optim.NAdam
in float64), computed with foreach ops, with no host read of any tensor — so a training step never waits on the
device. AdamW is torch's fused implementation, which needs no host reads either.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from ..config import TrainConfig
from ..model.layers import is_time_path


class NAdam(torch.optim.Optimizer):
    """NAdam (Dozat, 2016) with L2 weight decay added to the gradient, as torch.optim.NAdam's default."""

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay))

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                if not s:
                    s.update(step=0.0, mu_product=1.0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            # Every parameter of a group has taken the same number of steps (they start together), so one set of
            # scalars serves the group.
            step = states[0]["step"] + 1
            mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * group["momentum_decay"]))
            mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * group["momentum_decay"]))
            # torch keeps the product as a float32 scalar tensor; rounding it the same way keeps the two
            # optimisers' trajectories identical, not merely close
            mu_product = float(np.float32(states[0]["mu_product"]) * np.float32(mu))
            for s in states:
                s["step"], s["mu_product"] = step, mu_product
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            exp_avg = [s["exp_avg"] for s in states]
            exp_avg_sq = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
            denom = torch._foreach_div(exp_avg_sq, 1 - beta2 ** step)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            lr = group["lr"]
            torch._foreach_addcdiv_(params, grads, denom, -lr * (1 - mu) / (1 - mu_product))
            torch._foreach_addcdiv_(params, exp_avg, denom, -lr * mu_next / (1 - mu_product * mu_next))


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """NAdam (the paper) or AdamW over every trainable parameter; weight decay on all of them, as the reference
    does, except the time path's when ``train.time_weight_decay`` is false."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if not t.time_weight_decay and is_time_path(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if t.optimizer == "nadam":
        return NAdam(groups, lr=t.lr)
    return torch.optim.AdamW(groups, lr=t.lr, fused=True)


def lr_lambda(t: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of train.lr after ``step`` optimizer steps: linear warm-up over train.warmup_steps, then
    constant, cosine or linear decay to train.min_lr_ratio × lr at ``total_steps``."""
    warmup, floor = t.warmup_steps, t.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / decay_steps)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if t.schedule == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return factor


def build_scheduler(t: TrainConfig, total_steps: int) -> Callable[[torch.optim.Optimizer], LambdaLR]:
    """What deepspeed.initialize(lr_scheduler=…) takes: a factory applied to the optimizer DeepSpeed wraps. The
    scheduler's position is part of every checkpoint (DeepSpeed saves it)."""
    return lambda optimizer: LambdaLR(optimizer, lr_lambda(t, total_steps))
