"""Sampled softmax with logQ correction (Bengio & Senécal 2008; Yi et al., RecSys 2019; mixed negatives as in
Yang et al., 2020): cost per step independent of the catalogue size.

Candidates of a step: the batch's b targets plus K = train.negatives items drawn (with replacement) from
train.sampler — "uniform" over items 1..I, or "popularity" (how often each item is a training target). The
targets themselves are draws from the target distribution p, so item j's expected number of appearances among
the candidates is  E_j = b·p_j + K·q_j,  and every candidate's logit is corrected by −log E_j (train.logq), which
makes the sampled softmax an unbiased estimate of the full one's gradient in expectation. A candidate equal to a
user's own target other than its positive column is an accidental hit and masked out.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..model.precision import acc_dtype
from ..model import Batch, SequentialRecommender
from ..model.recommender import history_and_candidates
from .weights import sample_weights


class SampledSoftmax(nn.Module):
    needs_target_counts = True  # the popularity sampler and the logQ correction read them

    def __init__(self, t: TrainConfig, target_counts: np.ndarray):
        super().__init__()
        counts = np.asarray(target_counts, dtype=np.float64).copy()
        counts[0] = 0.0  # padding is never a candidate
        if counts.sum() <= 0:
            raise ConfigError("train.loss=sampled: no item is ever a training target")
        self.negatives, self.sampler, self.logq = t.negatives, t.sampler, t.logq
        self.num_items = len(counts) - 1
        p = counts / counts.sum()
        q = p if t.sampler == "popularity" else np.r_[0.0, np.full(self.num_items, 1.0 / self.num_items)]
        # Inverse-CDF sampling: O(K log I) per step where torch.multinomial would rebuild an O(I) table each call.
        self.register_buffer("cdf", torch.from_numpy(np.cumsum(q)), persistent=False)
        self.register_buffer("p", torch.from_numpy(p).float(), persistent=False)
        self.register_buffer("q", torch.from_numpy(q).float(), persistent=False)

    def draw(self, device: torch.device) -> torch.Tensor:
        """K negative item ids (1..I)."""
        if self.sampler == "uniform":
            return torch.randint(1, self.num_items + 1, (self.negatives,), device=device)
        u = torch.rand(self.negatives, dtype=self.cdf.dtype, device=device) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(1, self.num_items)

    def log_expected(self, ids: torch.Tensor, b: int) -> torch.Tensor:
        """log E_j of each candidate id (see the module docstring)."""
        return torch.log(b * self.p[ids] + self.negatives * self.q[ids])

    def forward(self, model: SequentialRecommender, batch: Batch) -> torch.Tensor:
        negatives = self.draw(batch.targets.device)
        cand_ids = torch.cat([batch.targets, negatives])
        history, cand = history_and_candidates(model, batch, cand_ids)
        user = model.encode(batch, history)
        b = len(batch.targets)
        logits = (user @ cand.t()).to(acc_dtype(user.dtype))
        if self.logq:
            logits = logits - self.log_expected(cand_ids, b)
        positive = torch.arange(b, device=user.device)
        hit = cand_ids[None, :] == batch.targets[:, None]
        hit[positive, positive] = False
        logits = logits.masked_fill(hit, float("-inf"))
        ce = F.cross_entropy(logits, positive, reduction="none")
        return (sample_weights(batch, user) * ce).sum()
