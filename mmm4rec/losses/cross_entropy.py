"""Softmax cross-entropy against many candidates without a (users × items) logits tensor.

``chunked_cross_entropy`` is the full-item CE as a fused linear cross-entropy (in the spirit of Liger's and
Apple's cut-cross-entropy kernels): the logits ``user @ candᵀ`` are formed one chunk of candidates at a time, and
the gradients are computed in the same pass, so forward + backward hold one (b × chunk) block at a time instead
of the (b × I) logits and their softmax. One chunk (I ≤ chunk): one pass, the plain matmul cost. Several chunks: a
first pass finds each user's log-sum-exp, a second recomputes each block's logits and accumulates the gradients
(one extra logits matmul, the price of bounded memory).

``item_parallel_cross_entropy`` is the same loss when every rank holds a shard of the candidates (Megatron's
vocab-parallel CE, with data-parallel users): ranks score ALL ranks' users against their own shard, the per-user
log-sum-exp and target logit are all-reduced, and each rank keeps the gradients of its shard; chunked the same
way, so a rank holds one (world · b × chunk) block at a time.

Both return Σ_i w_i · CE_i (w: per-user weights, e.g. 1/b for a mean) and accumulate in fp32 (fp64 for fp64
inputs) whatever the inputs' dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import distributed
from ..model.precision import acc_dtype


def _acc(t: torch.Tensor) -> torch.dtype:
    return acc_dtype(t.dtype)


def _logits(user: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    return (user @ cand.t()).to(_acc(user))


def _block_grads(logits, lse, weight, target_col, scale):
    """d(Σ w·CE)/d logits for one block: w · (softmax − onehot(target)) · scale; target_col -1 where the target
    lies outside this block."""
    grad = torch.exp(logits - lse[:, None]).mul_((weight * scale)[:, None])
    rows = torch.arange(len(grad), device=grad.device)
    inside = target_col >= 0
    grad[rows, target_col.clamp(min=0)] -= torch.where(inside, weight * scale, 0.0)
    return grad


def _statistics(user, cand, col, chunk: int):
    """Per user over this process's candidates, one chunk at a time: the log-sum-exp of the logits and the
    target's logit (0 where ``col`` is -1: the target is not among them); with one chunk, also its logits."""
    starts = range(0, cand.shape[0], chunk)
    if len(starts) == 1:
        logits = _logits(user, cand)
        inside = col >= 0
        target = torch.where(inside, logits.gather(1, col.clamp(min=0)[:, None])[:, 0], 0.0)
        return torch.logsumexp(logits, dim=-1), target, logits
    lse = torch.full((len(user),), float("-inf"), dtype=_acc(user), device=user.device)
    target = torch.zeros(len(user), dtype=_acc(user), device=user.device)
    for s in starts:
        logits = _logits(user, cand[s : s + chunk])
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
        c = col - s  # -1 (not here) stays negative
        inside = (c >= 0) & (c < logits.shape[1])
        target += torch.where(inside, logits.gather(1, c.clamp(0, logits.shape[1] - 1)[:, None])[:, 0], 0.0)
    return lse, target, None


class _FusedCE(torch.autograd.Function):
    """Σ w·CE over chunks of candidates, gradients computed in the forward pass (backward only scales them).
    ``parallel``: the candidates are this rank's shard, every rank holds the same (gathered) users, and the
    per-user log-sum-exp and target logit are all-reduced before the gradient pass."""

    @staticmethod
    def forward(ctx, user, cand, col, weight, chunk: int, parallel: bool, grad_scale: float):
        with torch.no_grad():
            lse, target_logit, logits = _statistics(user, cand, col, chunk)
            if parallel:
                m = distributed.all_reduce(lse.clone(), "max")  # in place: lse is still needed
                lse = m + torch.log(distributed.all_reduce(torch.exp(lse - m), "sum"))
                target_logit = distributed.all_reduce(target_logit, "sum")
            loss = (weight * (lse - target_logit)).sum()
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:  # recomputing each chunk's logits (or the one)
                grad_user = torch.zeros(user.shape, dtype=_acc(user), device=user.device)
                grad_cand = torch.empty(cand.shape, dtype=_acc(user), device=cand.device)
                for s in range(0, cand.shape[0], chunk):
                    block = cand[s : s + chunk]
                    block_logits = _logits(user, block) if logits is None else logits
                    c = col - s
                    g = _block_grads(block_logits, lse, weight, torch.where((c >= 0) & (c < len(block)), c, -1),
                                     grad_scale)
                    grad_user += g @ block.to(g.dtype)
                    grad_cand[s : s + chunk] = g.t() @ user.to(g.dtype)
                ctx.save_for_backward(grad_user.to(user.dtype), grad_cand.to(cand.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_user, grad_cand = ctx.saved_tensors
        return (grad_user * grad_loss.to(grad_user.dtype), grad_cand * grad_loss.to(grad_cand.dtype),
                None, None, None, None, None)


def chunked_cross_entropy(user: torch.Tensor, cand: torch.Tensor, target: torch.Tensor,
                          weight: Optional[torch.Tensor] = None, chunk: int = 32768) -> torch.Tensor:
    """Σ_i w_i · CE(user_i @ candᵀ, target_i); target = row of ``cand``; ``weight`` None = mean over users.
    Equal to ``F.cross_entropy(user @ cand.T, target, reduction=…)`` in value and gradients (tested in fp64)."""
    if weight is None:
        weight = torch.full((len(user),), 1.0 / len(user), device=user.device)
    return _FusedCE.apply(user, cand, target, weight.to(_acc(user)), chunk, False, 1.0)


def item_parallel_cross_entropy(user: torch.Tensor, cand: torch.Tensor, first_id: int, target: torch.Tensor,
                                weight: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
    """The full-item CE of the GLOBAL batch with candidates sharded over ranks.

    ``cand``: this rank's candidate rows, item ids first_id, first_id+1, …; ``target``: item ids; ``weight``: per
    user, such that Σ over all ranks' users of w·CE is the loss of one micro-step. Returns that global sum
    divided by the world size on every rank (so DeepSpeed's average over ranks reports it), with gradients scaled
    to match what DeepSpeed's gradient average expects: ∇ of the global sum, not of a rank's share.
    """
    world = distributed.world_size()
    users = distributed.all_gather_with_grad(user)
    targets, weights = distributed.all_gather(target), distributed.all_gather(weight.to(_acc(user)))
    col = targets - first_id
    col = torch.where((col >= 0) & (col < cand.shape[0]), col, -1)
    # backward: this rank's shard's gradient, and its shard's share of every gathered user's gradient (the
    # all-gather's backward sums those over ranks)
    return _FusedCE.apply(users, cand, col, weights, chunk, True, float(world)) / world
