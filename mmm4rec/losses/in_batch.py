"""In-batch softmax cross-entropy (pre-training): user i's candidates are the batch's targets, its own is the
positive. Only the batch's rows are adapted — histories and targets, b·(L+1) rows in one call, duplicates
included — so the step has the same shapes whatever the batch holds (no torch.unique). Two users with the same
target see it as a negative too, as in the reference. With train.gather_negatives the candidates are all ranks'
targets."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..config import TrainConfig
from ..model.precision import acc_dtype
from ..model import Batch, SequentialRecommender
from ..model.recommender import history_and_candidates
from .weights import sample_weights


class InBatchSoftmax(nn.Module):
    def __init__(self, t: TrainConfig):
        super().__init__()
        self.gather = t.gather_negatives

    def forward(self, model: SequentialRecommender, batch: Batch) -> torch.Tensor:
        history, cand = history_and_candidates(model, batch, batch.targets)
        user = model.encode(batch, history)
        b = len(batch.targets)
        offset = 0
        if self.gather and distributed.world_size() > 1:
            cand, offset = distributed.gather_candidates(cand)
        labels = torch.arange(b, device=user.device) + offset
        ce = F.cross_entropy((user @ cand.t()).to(acc_dtype(user.dtype)), labels,
                             reduction="none")
        return (sample_weights(batch, user) * ce).sum()
