"""In-batch negatives gathered across 2 real gloo processes equal one process scoring both ranks' targets."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmm4rec.distributed import gather_candidates
from tests.conftest import free_port
from tests.model.test_model import features, make_batch, model_for, tiny


def worker(rank: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = model_for(tiny(), features())
    batches = [make_batch(b=5, seed=s) for s in (0, 1)]
    loss = model(batches[rank], "in_batch", gather=gather_candidates)
    loss.backward()
    grad = model.text_adapter.weight.grad.clone()
    # the same loss computed alone: this rank's users against both ranks' targets
    alone = model_for(tiny(), features())
    tables = alone.item_tables()
    cand = torch.cat([tables.scores[b.targets] for b in batches])
    logits = alone.user_vectors(batches[rank], tables) @ cand.t()
    want = torch.nn.functional.cross_entropy(logits, torch.arange(5) + 5 * rank)
    results[rank] = (loss.item(), want.item(), grad.abs().sum().item())
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_negatives_match_a_single_process():
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        loss, want, grad = results[rank]
        assert loss == pytest.approx(want, rel=1e-5) and grad > 0
