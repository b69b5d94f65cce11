"""Collectives across 2 real gloo processes against one process: gathered in-batch negatives, the item-parallel
full-item cross-entropy (fp64: loss and every gradient), row exchange, and item-sharded evaluation."""
import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmm4rec.config import TrainConfig, from_dict
from mmm4rec.distributed import exchange_rows
from mmm4rec.losses import LOSSES
from mmm4rec.model import build_model
from mmm4rec.train.evaluation import evaluate
from tests.conftest import free_port
from tests.model.test_model import features, make_batch, model_for, tiny

pytestmark = pytest.mark.slow


def spawn(worker, *args):
    results = mp.Manager().dict()
    mp.spawn(_init_and_run, args=(worker, free_port(), results, args), nprocs=2, join=True)
    return results


def _init_and_run(rank, worker, port, results, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        worker(rank, results, *args)
    finally:
        dist.destroy_process_group()


def loss_fn(name, **train):
    return LOSSES[name](from_dict(TrainConfig, train))


# ------------------------------------------------------------------------------------------ gathered negatives
def gathered_worker(rank, results):
    model = model_for(tiny(), features())
    batches = [make_batch(b=5, seed=s) for s in (0, 1)]
    loss = loss_fn("in_batch", gather_negatives=True)(model, batches[rank])
    loss.backward()
    grad = model.text_adapter.weight.grad.clone()
    # the same loss computed alone: this rank's users against both ranks' targets
    alone = model_for(tiny(), features())
    tables = alone.item_tables()
    cand = torch.cat([tables.scores[b.targets] for b in batches])
    logits = alone.user_vectors(batches[rank], tables) @ cand.t()
    want = torch.nn.functional.cross_entropy(logits, torch.arange(5) + 5 * rank)
    results[rank] = (loss.item(), want.item(), grad.abs().sum().item())


def test_gathered_negatives_match_a_single_process():
    results = spawn(gathered_worker)
    for rank in (0, 1):
        loss, want, grad = results[rank]
        assert loss == pytest.approx(want, rel=1e-5) and grad > 0


# ------------------------------------------------------------------------------------------ item parallelism
def global_batch():
    parts = [make_batch(b=5, seed=s) for s in (0, 1)]
    return parts, dataclasses.replace(parts[0], **{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                                 for f in dataclasses.fields(parts[0]) if f.name != "weight"})


def item_parallel_worker(rank, results):
    feats = features(images=True)
    feats = dataclasses.replace(feats, text=feats.text.double(), image=feats.image.double())
    parts, _ = global_batch()
    torch.manual_seed(0)
    model = build_model(tiny(), feats.shard(rank, 2)).double().eval()  # same init as the 1-process model
    assert model.sharded and model.text.values.shape[0] in (25, 26)  # half of the 51 rows
    with torch.no_grad():  # the ID rows must be looked up and trained too
        for name in ("text_id_bias", "image_id_bias"):
            getattr(model, name).copy_(torch.randn(getattr(model, name).shape, generator=torch.Generator()
                                                   .manual_seed(7), dtype=torch.float64))
    batch = dataclasses.replace(parts[rank], weight=torch.full((5,), 2 / 10, dtype=torch.float64))  # W·A/n
    loss = loss_fn("full", item_parallel=True, ce_chunk=3)(model, batch)  # several chunks per shard
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    for g in grads.values():  # what DeepSpeed does with them: average over ranks
        dist.all_reduce(g)
        g /= 2
    rows = exchange_rows(model.text.values, model.first_id, parts[rank].items.flatten())
    ranking = evaluate(model, [eval_batch(parts[rank])], ks=[1, 5, 10], item_chunk=7, device=torch.device("cpu"))
    results[rank] = (loss.item(), grads, rows, ranking)


def eval_batch(batch):
    return {**dataclasses.asdict(batch), "valid": torch.tensor([True, True, True, False, True])}


def test_item_parallel_cross_entropy_equals_one_process_in_loss_and_gradients():
    """Each rank holds half of the items' features and scores every rank's users against its half; the loss and
    the averaged gradients are the single-process full softmax over the global batch (fp64)."""
    results = spawn(item_parallel_worker)
    feats = features(images=True)
    feats = dataclasses.replace(feats, text=feats.text.double(), image=feats.image.double())
    parts, whole = global_batch()
    torch.manual_seed(0)
    model = build_model(tiny(), feats).double().eval()
    with torch.no_grad():
        for name in ("text_id_bias", "image_id_bias"):
            getattr(model, name).copy_(torch.randn(getattr(model, name).shape, generator=torch.Generator()
                                                   .manual_seed(7), dtype=torch.float64))
    want = loss_fn("full")(model, whole)
    want.backward()
    for rank in (0, 1):
        loss, grads, rows, ranking = results[rank]
        assert loss == pytest.approx(want.item(), rel=1e-12)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(rows, feats.text[parts[rank].items.flatten()], rtol=0, atol=0)
    # item-sharded evaluation: the metrics of one process ranking both ranks' users against all items
    alone = evaluate(model, [eval_batch(p) for p in parts], ks=[1, 5, 10], item_chunk=7,
                     device=torch.device("cpu"))
    assert results[0][3] == results[1][3] == alone and alone["users"] == 8
