"""The training step as a GPU needs it: no host reads between log boundaries (a real DeepSpeed run, counted),
one graph for forward + loss under torch.compile for both objectives, no recompiles across steps."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch._dynamo

from mmm4rec.config import TrainConfig, from_dict
from mmm4rec.losses import LOSSES, Objective
from tests.conftest import REPO, subprocess_env
from tests.model.test_model import make_batch, model_for, tiny


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_steps_between_log_boundaries_read_nothing_from_the_device(tiny_dataset, tmp_path, accum):
    """Tensor.item/tolist/__bool__/__int__/__float__ and torch.cuda.synchronize are counted during a real run
    (DeepSpeed ZeRO-1, gloo), by the trainer's global step at the time of the call. With log_every=5, the only
    steps that may read are the log steps (the gradient norm is computed in step 5's optimizer step, while the
    counter still says 4; the log line after it) and the last one (validation, checkpoint, test)."""
    out = tmp_path / "calls.json"
    cmd = [sys.executable, str(REPO / "tests" / "train" / "jobs" / "count_host_reads.py"), str(out), "finetune.py",
           "--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--set", "train.max_steps=20",
           "--set", "train.log_every=5", "--set", f"train.grad_accum={accum}", "--set", f"data.batch_size={16 // accum}",
           "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = json.loads(out.read_text())["calls"]
    boundary = {s for s in range(21) if s % 5 == 0 or (s + 1) % 5 == 0}
    offending = [c for c in calls if c[0] not in boundary]
    assert not offending, offending[:10]
    assert any(c[0] == 5 for c in calls)  # the counting works: the log boundary does read (the loss, the lr)


def objective(name):
    return Objective(model_for(tiny()).train(), LOSSES[name](from_dict(TrainConfig, {})))


def with_weights(batch):
    return dataclasses.replace(batch, weight=torch.full((len(batch.targets),), 1 / len(batch.targets)))


@pytest.mark.parametrize("name", ["full", "in_batch"])
def test_forward_and_loss_compile_to_one_graph(name):
    explanation = torch._dynamo.explain(objective(name))(with_weights(make_batch()))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", ["full", "in_batch"])
def test_no_recompiles_across_steps(name):
    """Different batches of the same shapes (the stream guarantees them) reuse the compiled step; backward runs
    through AOTAutograd."""
    torch._dynamo.reset()
    obj = objective(name)
    step = torch.compile(obj, backend="aot_eager")
    opt = torch.optim.SGD(obj.parameters(), lr=1e-2)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(4):
            loss = step(with_weights(make_batch(seed=seed)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_a_redirected_log_has_one_line_per_log_step_and_no_redraws(tiny_dataset, tmp_path):
    """Under SLURM stderr is a file: no progress bar (its carriage-return redraws were 95% of such a log), one
    line every train.log_every steps with step, epoch, loss, samples/s and ETA; known library noise filtered."""
    from tests.conftest import run

    proc = run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--set",
                               "train.max_steps=20", "--set", "train.log_every=5", "--run-dir", str(tmp_path / "r")])
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "samples/s" in line]
    assert len(lines) == 4 and all("loss" in line and "ETA" in line and "epoch 0" in line for line in lines)
    assert "untested optimizer" not in proc.stderr and "Setting accelerator" not in proc.stderr
    log = (tmp_path / "r" / "train.log").read_text()
    assert "\r" not in log and log.count("samples/s") == 4
