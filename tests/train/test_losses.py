"""The losses as components, the fused cross-entropy, the optimiser and the schedules, each against plain torch."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmm4rec.config import TrainConfig, from_dict
from mmm4rec.losses import LOSSES, InBatchSoftmax, SampledSoftmax
from mmm4rec.losses.cross_entropy import chunked_cross_entropy
from mmm4rec.model import Batch
from mmm4rec.train.optim import NAdam, build_optimizer, lr_lambda
from tests.model.test_model import NUM_ITEMS, features, make_batch, model_for, tiny


def train_cfg(**kw) -> TrainConfig:
    return from_dict(TrainConfig, kw)


@pytest.mark.parametrize("chunk", [1000, 7, 1])  # one block, several blocks with a ragged last one, one per item
def test_chunked_cross_entropy_equals_torch_in_value_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    user = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    cand = torch.randn(23, 5, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.tensor([0, 22, 5, 5, 7, 13, 6, 22, 1])  # duplicates, first and last rows
    weight = torch.rand(9, dtype=torch.float64, generator=g)
    weight[3] = 0.0  # a fill row
    mine = chunked_cross_entropy(user, cand, target, weight, chunk)
    want = (weight * F.cross_entropy(user @ cand.t(), target, reduction="none")).sum()
    torch.testing.assert_close(mine, want, rtol=1e-12, atol=1e-12)
    (mine * 2.5).backward()  # an upstream gradient that is not 1
    got = (user.grad.clone(), cand.grad.clone())
    user.grad = cand.grad = None
    (want * 2.5).backward()
    for a, b in zip(got, (user.grad, cand.grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_cross_entropy_without_weights_is_the_mean():
    user, cand = torch.randn(4, 3), torch.randn(10, 3)
    target = torch.tensor([1, 2, 3, 9])
    torch.testing.assert_close(chunked_cross_entropy(user, cand, target, chunk=3),
                               F.cross_entropy(user @ cand.t(), target))


def old_in_batch(model, batch):
    """The in-batch objective as it was before static shapes: unique rows, searchsorted lookups."""
    rows = torch.unique(torch.cat([batch.items.flatten(), batch.targets]))
    tables = model.item_tables(rows)
    pos = torch.searchsorted(rows, batch.items)
    user = model.encode(batch, tuple(x[pos] for x in tables.inputs))
    cand = tables.scores[torch.searchsorted(rows, batch.targets)]
    return F.cross_entropy(user @ cand.t(), torch.arange(len(user)))


def test_in_batch_loss_without_unique_equals_the_unique_version_with_duplicates():
    model = model_for(tiny()).double()
    model.text_id_bias.data.normal_()  # ID rows matter: every occurrence must read the same row
    model.image_id_bias.data.normal_()
    batch = make_batch(b=8, seed=5)
    batch.targets[:3] = batch.targets[3]  # three users share a target
    batch.items[0, :2] = batch.targets[3]  # and a history holds it too
    new = InBatchSoftmax(train_cfg())(model, batch)
    grads_new = torch.autograd.grad(new, list(model.parameters()), allow_unused=True)
    old = old_in_batch(model, batch)
    grads_old = torch.autograd.grad(old, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_new, grads_old):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_full_loss_equals_plain_cross_entropy_with_chunks():
    model = model_for(tiny()).double()
    batch = make_batch()
    want = F.cross_entropy(model.user_vectors(batch) @ model.item_tables().scores[1:].t(), batch.targets - 1)
    for chunk in (10_000, 16, 3):
        got = LOSSES["full"](train_cfg(ce_chunk=chunk))(model, batch)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sampled_softmax_with_logq_against_a_hand_computed_case():
    """b = 2 users, K = 2 drawn negatives, popularity sampler over 4 items with target counts [-, 1, 2, 3, 2]."""
    counts = np.array([0, 1, 2, 3, 2])
    loss = SampledSoftmax(train_cfg(negatives=2, sampler="popularity"), counts)
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    scores = {1: [0.5, 0.0], 2: [0.0, 0.5], 3: [1.0, 1.0], 4: [-1.0, 0.0]}
    targets, negatives = torch.tensor([2, 3]), torch.tensor([3, 4])

    class Stub(torch.nn.Module):  # a model whose user vectors and candidate vectors are fixed
        def item_tables(self, ids):
            table = torch.tensor([[0.0, 0.0]] + [scores[i] for i in range(1, 5)])
            return type("T", (), {"inputs": (torch.zeros(len(ids), 2),), "scores": table[ids]})()

        def encode(self, batch, history):
            return user

    loss.draw = lambda device: negatives
    batch = Batch(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]),
                  targets, torch.zeros(2, dtype=torch.long))
    got = loss(Stub(), batch)
    p = counts / counts.sum()  # target distribution = sampler distribution
    cand = [2, 3, 3, 4]
    expected_count = {j: 2 * p[j] + 2 * p[j] for j in cand}  # b·p + K·q
    total = 0.0
    for i, pos in enumerate([0, 1]):
        logits = [float(torch.tensor(scores[j]) @ user[i]) - math.log(expected_count[j]) for j in cand]
        # accidental hits: user 1's target (3) is also candidate 2 (a drawn negative) -> masked for user 1
        keep = [c for c in range(4) if c == pos or cand[c] != int(targets[i])]
        z = [logits[c] for c in keep]
        total += -(logits[pos] - math.log(sum(math.exp(v) for v in z)))
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


def test_sampled_negatives_follow_the_sampler():
    counts = np.array([0, 10, 0, 30, 60])
    torch.manual_seed(0)
    pop = SampledSoftmax(train_cfg(negatives=20000, sampler="popularity"), counts).draw(torch.device("cpu"))
    freq = torch.bincount(pop, minlength=5).double() / len(pop)
    torch.testing.assert_close(freq, torch.tensor([0, 0.1, 0, 0.3, 0.6], dtype=torch.float64), atol=0.015, rtol=0)
    uni = SampledSoftmax(train_cfg(negatives=20000, sampler="uniform"), counts).draw(torch.device("cpu"))
    assert uni.min() == 1 and uni.max() == 4 and abs((uni == 2).double().mean() - 0.25) < 0.015


def test_sampled_loss_trains_a_model():
    model = model_for(tiny(temperature=0.1)).train()
    counts = np.bincount(make_batch(b=16, seed=3).targets.numpy(), minlength=NUM_ITEMS + 1)
    loss_fn = SampledSoftmax(train_cfg(negatives=16, sampler="uniform"), counts + 1)
    batch = make_batch(b=16, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = loss_fn(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_stacked_streams_equal_two_passes():
    """On CUDA the shared TiSSD runs both modality streams in one call; the result is the two passes' (fp64)."""
    feats = features()
    two = model_for(tiny(stack_streams="off", n_layers=2), feats).double()
    one = model_for(tiny(stack_streams="on", n_layers=2), feats).double()
    one.load_state_dict(two.state_dict())
    batch = make_batch()
    torch.testing.assert_close(one.user_vectors(batch), two.user_vectors(batch), rtol=1e-12, atol=1e-12)
    la, lb = (LOSSES["full"](train_cfg())(m, batch) for m in (one, two))
    ga, gb = (torch.autograd.grad(loss, list(m.parameters())) for loss, m in ((la, one), (lb, two)))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gpu_and_cpu_kernels_compute_the_same_model():
    """model.kernels: grouped conv + fused dropout (fewest launches) vs shifted multiply-adds + rand-mask dropout
    (fastest on CPU): the same values and gradients (fp64, dropout off)."""
    feats = features()
    cpu = model_for(tiny(kernels="cpu"), feats).double()
    gpu = model_for(tiny(kernels="gpu"), feats).double()
    gpu.load_state_dict(cpu.state_dict())
    batch = make_batch()
    la, lb = (LOSSES["full"](train_cfg())(m, batch) for m in (cpu, gpu))
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(la, list(cpu.parameters())), torch.autograd.grad(lb, list(gpu.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_paths_keep_the_expected_share():
    from mmm4rec.model.layers import Dropout

    x = torch.ones(200_000)
    for kernels in ("cpu", "gpu"):
        y = Dropout(0.4, kernels).train()(x)
        kept = (y != 0).double().mean().item()
        assert abs(kept - 0.6) < 0.01 and torch.allclose(y[y != 0], torch.tensor(1 / 0.6))


@pytest.mark.parametrize("weight_decay", [0.0, 0.005])
def test_nadam_equals_torch_nadam(weight_decay):
    torch.manual_seed(0)
    params = [torch.randn(7, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    mine = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    a = NAdam([{"params": mine[:1]}, {"params": mine[1:], "weight_decay": 0.0}], lr=1e-2, weight_decay=weight_decay)
    b = torch.optim.NAdam([{"params": theirs[:1]}, {"params": theirs[1:], "weight_decay": 0.0}], lr=1e-2,
                          weight_decay=weight_decay, foreach=False)
    for step in range(25):
        grads = [torch.randn_like(p) for p in params]
        for ps, opt in ((mine, a), (theirs, b)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for x, y in zip(mine, theirs):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    state = a.state_dict()["state"][0]
    assert state["step"] == 25.0 and isinstance(state["step"], float)  # a Python float: no tensor to read


def test_no_weight_decay_on_the_time_path_when_asked():
    model = model_for(tiny())
    groups = build_optimizer(model, train_cfg(time_weight_decay=False, weight_decay=0.01)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.01
    assert any("time_path.mix" in n for n in no_decay) and any("fourier" in n for n in no_decay)
    assert not any("in_proj" in n or "adapter" in n for n in no_decay)


@pytest.mark.parametrize("schedule, at", [
    ("constant", {0: 0.25, 3: 1.0, 50: 1.0}),
    ("cosine", {0: 0.25, 3: 1.0, 4: 1.0, 52: 0.55, 100: 0.1, 200: 0.1}),
    ("linear", {1: 0.5, 4: 1.0, 52: 0.55, 100: 0.1}),
])
def test_learning_rate_schedules(schedule, at):
    f = lr_lambda(train_cfg(schedule=schedule, warmup_steps=4, min_lr_ratio=0.1), total_steps=100)
    for step, want in at.items():
        assert f(step) == pytest.approx(want, abs=1e-9), (step, f(step))


@pytest.mark.parametrize("init, check", [
    ({"time_init": "kaiming"}, lambda w: w.std() > 0.1),  # PyTorch's default for an L×L Linear: std ≈ 1/√(3L)
    ({"time_init_std": 0.5}, lambda w: 0.3 < w.std() < 0.7),
    ({}, lambda w: w.std() < 0.05),
])
def test_time_path_initialisation_options(init, check):
    model = model_for(tiny(max_len=8, **init))
    w = model.layers[0].tissd.time_path.mix[1].weight
    assert check(w), w.std()
    assert model.layers[0].tissd.in_proj.weight.std() < 0.05  # the rest keeps N(0, 0.02)


def test_batches_with_weights_move_to_devices_and_back():
    b = make_batch()
    w = dataclasses.replace(b, weight=torch.full((6,), 1 / 6))
    assert Batch.from_dict(dataclasses.asdict(w)).weight is not None and b.to("cpu").weight is None


def test_large_catalogues_are_adapted_in_blocks_with_the_same_values_and_gradients(monkeypatch):
    """Above ADAPT_BLOCK held rows the adapter runs block by block over the frozen (possibly bf16) table and
    recomputes the blocks for its gradient instead of keeping an fp32 copy of the table."""
    from mmm4rec.model import items

    table = torch.randn(1000, 24, dtype=torch.float64)
    adapter = torch.nn.Linear(24, 8).double()
    want = adapter(table)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * g).sum(), list(adapter.parameters()))
    monkeypatch.setattr(items, "ADAPT_BLOCK", 96)  # 1000 rows: 11 blocks, the last ragged
    got = items.adapt(table, adapter)
    got_grads = torch.autograd.grad((got * g).sum(), list(adapter.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    bf16 = items.adapt(table.to(torch.bfloat16), adapter.float())  # bf16 rows, fp32 step
    assert bf16.dtype == torch.float32
