"""Distributed training end to end, in real processes under real launchers: same curve on 1 and 2 processes,
exact resume after kill -9 and after SIGTERM, TensorBoard read-back, transfer, and the errors users get."""
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, kill_job, launch_command, run, subprocess_env

pytestmark = pytest.mark.slow

# Dropout off: each rank draws its own dropout masks, so only a deterministic model can follow one curve.
BASE = ["--config", "tiny", "--set", "model.dropout=0.0", "--set", "train.log_every=1"]


def args(dataset, *extra) -> list[str]:
    return BASE + ["--set", f"data.dataset={dataset}", *extra]


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "export" / "model.safetensors")


def test_two_processes_follow_the_one_process_curve(tiny_dataset, tmp_path):
    """Global batch 16 everywhere: 1 process × 8 × 2 accumulation steps, and 2 processes × 8 under torchrun
    (ZeRO-2, and ZeRO-2 with the optimizer offloaded to the CPU) and the deepspeed launcher (ZeRO-3).
    data.partitions=2 makes every global step hold the same 16 samples. What may differ is the order of float
    additions (means of 8 averaged vs accumulated, all-reduce order): ~1e-7 relative per step, compounding over
    12 Adam steps to well under 1e-4."""
    # fp32: on a CPU with native bf16 precision=auto trains in bf16, whose rounding is not what this compares
    common = ["--set", "data.partitions=2", "--set", "train.max_steps=12", "--set", "data.batch_size=8",
              "--set", "train.precision=fp32"]
    one = tmp_path / "one"
    run("finetune.py", args(tiny_dataset, *common, "--set", "train.grad_accum=2", "--run-dir", str(one)))
    curves = {"one": losses(one)}
    for name, launcher, extra in [("torchrun-z2", "torchrun", ["train.zero_stage=2"]),
                                  ("torchrun-z2-offload", "torchrun", ["train.zero_stage=2", "train.offload_optimizer=true"]),
                                  ("deepspeed-z3", "deepspeed", ["train.zero_stage=3"])]:
        out = tmp_path / name
        run("finetune.py", args(tiny_dataset, *common, *[a for e in extra for a in ("--set", e)], "--run-dir", str(out)),
            nproc=2, launcher=launcher)
        assert json.loads((out / "summary.json").read_text())["world_size"] == 2
        curves[name] = losses(out)
    assert len(curves["one"]) == 12
    for name in ("torchrun-z2", "torchrun-z2-offload", "deepspeed-z3"):
        torch.testing.assert_close(torch.tensor(curves[name]), torch.tensor(curves["one"]), rtol=1e-4, atol=1e-5)
    # and the curve is a real one: training moved the loss
    assert curves["one"][-1] < curves["one"][0]


def test_accelerate_launch_completes_in_bf16(tiny_dataset, tmp_path):
    out = tmp_path / "acc"
    run("finetune.py", args(tiny_dataset, "--set", "train.max_steps=6", "--set", "data.batch_size=8",
                            "--set", "train.precision=bf16", "--run-dir", str(out)), nproc=2, launcher="accelerate")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test"]["users"] == 120
    assert "bf16 autocast" in (out / "train.log").read_text()
    assert all(torch.isfinite(torch.tensor(losses(out))))


def test_compiled_training_follows_the_eager_curve(tiny_dataset, tmp_path):
    """train.compile=true: torch.compile (Inductor) inside the DeepSpeed engine. Fused kernels reorder float
    operations: the curves differ by ~1e-7 relative over 10 Adam steps (measured), checked at 1e-5; parameter
    names stay the eager model's, so checkpoints and exports are interchangeable."""
    curves = {}
    for compiled in ("false", "true"):
        out = tmp_path / f"compile-{compiled}"
        run("finetune.py", args(tiny_dataset, "--set", "train.max_steps=10", "--set", f"train.compile={compiled}",
                                "--set", "train.precision=fp32", "--run-dir", str(out)))  # as above: fp32 parity
        curves[compiled] = losses(out)
    assert len(curves["true"]) == 10
    torch.testing.assert_close(torch.tensor(curves["true"]), torch.tensor(curves["false"]), rtol=1e-5, atol=1e-6)
    eager, compiled = weights(tmp_path / "compile-false"), weights(tmp_path / "compile-true")
    assert eager.keys() == compiled.keys()


# Two epochs, a checkpoint every 10 steps and at each epoch end; dropout on, so the RNG has to resume too; a
# warm-up + cosine learning-rate schedule, so the scheduler's position has to resume too.
RESUMABLE = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=10", "--set", "model.dropout=0.1",
             "--set", "train.schedule=cosine", "--set", "train.warmup_steps=5"]
TWO_RANKS = ["--set", "train.zero_stage=2", "--set", "data.partitions=2", "--set", "data.batch_size=8"]


def interrupt(dataset, run_dir: Path, after_step: int, sig: signal.Signals, nproc: int = 1,
              extra: tuple = ()) -> subprocess.Popen:
    """Start a RESUMABLE run and, once its checkpoint of ``after_step`` is complete, send ``sig`` to the launcher
    (SIGTERM: torchrun forwards it) or SIGKILL the whole job, every rank included, as SLURM's kill of a job does."""
    cmd = launch_command("finetune.py", args(dataset, *RESUMABLE, *extra, "--run-dir", str(run_dir)), nproc=nproc,
                         launcher="python" if nproc == 1 else "torchrun")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    marker = run_dir / "checkpoints" / f"step-{after_step:08d}" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, f"run ended early:\n{proc.stderr.read()[-4000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    if sig != signal.SIGKILL:
        proc.send_signal(sig)
        return proc
    kill_job(proc.pid)
    proc.wait()
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run("finetune.py", args(tiny_dataset, *RESUMABLE, "--run-dir", str(out)))
    return out


def assert_same_run(a: Path, b: Path):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bitwise: same data, same RNG, same reduction order on CPU
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["test"] == sb["test"] and sa["valid_history"] == sb["valid_history"]


def test_kill_9_mid_epoch_then_restart_equals_an_uninterrupted_run(tiny_dataset, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    interrupt(tiny_dataset, out, 20, signal.SIGKILL).wait()
    run("finetune.py", args(tiny_dataset, *RESUMABLE, "--run-dir", str(out)))
    log = (out / "train.log").read_text()
    assert "resumed from" in log
    assert_same_run(out, uninterrupted)
    # TensorBoard: the resumed run dropped what the killed one logged past its checkpoint: no step twice
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(set(steps)) == list(range(1, steps[-1] + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_time_s"] > 0 and summary["provenance"]["dataset_hash"]


def test_kill_9_of_a_two_process_zero_2_run_then_restart_equals_an_uninterrupted_one(tiny_dataset, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run("finetune.py", args(tiny_dataset, *RESUMABLE, *TWO_RANKS, "--set", "train.epochs=1", "--run-dir",
                            str(whole)), nproc=2, launcher="torchrun")
    interrupt(tiny_dataset, killed, 20, signal.SIGKILL, nproc=2, extra=(*TWO_RANKS, "--set", "train.epochs=1")).wait()
    run("finetune.py", args(tiny_dataset, *RESUMABLE, *TWO_RANKS, "--set", "train.epochs=1", "--run-dir",
                            str(killed)), nproc=2, launcher="torchrun")
    assert "resumed from" in (killed / "train.log").read_text()
    assert_same_run(killed, whole)


def test_sigterm_checkpoints_exits_zero_and_a_restart_resumes(tiny_dataset, tmp_path, uninterrupted):
    out = tmp_path / "term"
    assert interrupt(tiny_dataset, out, 10, signal.SIGTERM).wait(timeout=120) == 0
    assert not (out / "summary.json").exists()
    stopped_at = int((out / "checkpoints" / "latest").read_text().split("-")[1])
    assert stopped_at >= 10
    run("finetune.py", args(tiny_dataset, *RESUMABLE, "--run-dir", str(out)))
    assert f"(step {stopped_at})" in (out / "train.log").read_text()
    assert_same_run(out, uninterrupted)


def test_an_incomplete_latest_checkpoint_falls_back_to_the_previous_one(tiny_dataset, tmp_path, uninterrupted):
    out = tmp_path / "damaged"
    interrupt(tiny_dataset, out, 20, signal.SIGKILL).wait()
    ckpt = out / "checkpoints"
    latest = (ckpt / "latest").read_text().strip()
    previous = sorted(p.name for p in ckpt.glob("step-*") if (p / "COMPLETE").exists() and p.name < latest)[-1]
    (ckpt / latest / "COMPLETE").unlink()  # as if killed while writing it
    run("finetune.py", args(tiny_dataset, *RESUMABLE, "--run-dir", str(out)))
    log = (out / "train.log").read_text()
    assert f"{latest} is incomplete or damaged" in log and f"(step {int(previous.split('-')[1])})" in log
    assert_same_run(out, uninterrupted)


def test_tensorboard_events_hold_the_scalars(uninterrupted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(uninterrupted / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ["train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s",
                "train/peak_memory_mb", "valid/ndcg@10", "valid/hit@10", "valid/best_epoch", "valid/epochs_to_best",
                "test/ndcg@10", "test/mrr"]:
        assert tag in tags, tag
    summary = json.loads((uninterrupted / "summary.json").read_text())
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, summary["global_step"] + 1))  # log_every=1
    assert [e.step for e in acc.Scalars("valid/ndcg@10")] == [summary["global_step"] // 2, summary["global_step"]]
    assert acc.Scalars("test/ndcg@10")[-1].value == pytest.approx(summary["test"]["ndcg@10"])
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert lr[0] == pytest.approx(1e-3 * 2 / 5)  # warm-up: step 1 of 5 done
    assert max(lr) == pytest.approx(1e-3) and lr[-1] < 0.05 * max(lr)  # then cosine down to ~0


def test_transfer_from_pretraining_to_another_domain(tiny_dataset, other_dataset, tmp_path):
    pre = tmp_path / "pre"
    run("pretrain.py", args(tiny_dataset, "--set", "train.max_steps=8", "--set", "model.id_bias=false",
                            "--run-dir", str(pre)))
    pre_summary = json.loads((pre / "summary.json").read_text())
    assert pre_summary["task"] == "pretrain" and pre_summary["test"] is None
    fine = tmp_path / "fine"
    run("finetune.py", args(other_dataset, "--set", f"train.init_from={pre}", "--set", "train.max_steps=1",
                            "--set", "train.lr=0", "--run-dir", str(fine)))
    assert "initialised from" in (fine / "train.log").read_text()
    pre_w, fine_w = weights(pre), weights(fine)
    assert fine_w["text_id_bias"].shape[0] == 46 and not fine_w["text_id_bias"].any()  # 45 items + padding, fresh
    for k, v in pre_w.items():
        torch.testing.assert_close(fine_w[k], v, rtol=0, atol=0)  # lr=0: the backbone is exactly the transferred one
    bad = run("finetune.py", args(other_dataset, "--set", f"train.init_from={pre}", "--set", "model.d_state=4",
                                  "--run-dir", str(tmp_path / "bad")), check=False)
    assert bad.returncode == 2 and "does not fit this mmm4rec model" in bad.stderr and "shape mismatch" in bad.stderr


@pytest.mark.parametrize("extra, message", [
    (["--set", "model.d_modle=8"], "unknown config key(s) in model: model.d_modle"),
    (["--set", "train.lr=fast"], "train.lr must be float, got str 'fast'"),
    (["--set", "data.dataset="], "data.dataset is not set"),
    (["--set", "data.features=/nonexistent/store"], "not a complete feature store"),
])
def test_bad_input_is_a_clear_error(tiny_dataset, tmp_path, extra, message):
    base = ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--run-dir", str(tmp_path / "r")]
    script = "evaluate.py" if "data.features" in extra[1] else "finetune.py"
    checkpoint = ["--checkpoint", str(tmp_path)] if script == "evaluate.py" else []
    proc = run(script, base + extra + checkpoint, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_inconsistent_deepspeed_batch_sizes_are_refused(tiny_dataset, tmp_path):
    ds = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    ds["train_batch_size"] = 999
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    proc = run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--deepspeed_config",
                               str(path), "--run-dir", str(tmp_path / "r")], check=False)
    assert proc.returncode == 2 and "train_batch_size=999 disagrees with the run config" in proc.stderr


def test_a_checkpoint_of_another_model_is_refused(tiny_dataset, uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "other"
    shutil.copytree(uninterrupted, out)
    # even a forced resume (a changed config) cannot load weights of another architecture
    proc = run("finetune.py", args(tiny_dataset, *RESUMABLE, "--set", "model.d_state=4", "--set", "train.resume=force",
                                   "--run-dir", str(out)), check=False)
    assert proc.returncode == 2 and "belongs to a different model configuration" in proc.stderr


def test_pretraining_validates_on_held_out_users_and_few_shot_fine_tuning_uses_a_share(tiny_dataset, tmp_path):
    """data.holdout_users: pre-training never sees the held-out users and validates on them (full ranking), so a
    pre-training run is chosen by validation, not by its loss; data.train_users: few-shot fine-tuning trains on a
    seeded share of the users and is still evaluated on all of them."""
    pre = tmp_path / "pre"
    run("pretrain.py", args(tiny_dataset, "--set", "data.holdout_users=0.25", "--set", "train.max_steps=30",
                            "--set", "eval.every_steps=10", "--set", "model.id_bias=false", "--run-dir", str(pre)))
    summary = json.loads((pre / "summary.json").read_text())
    history = summary["valid_history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert 15 < history[0]["users"] < 45  # about a quarter of the 120 users
    assert summary["best_step"] in (10, 20, 30) and (pre / "best" / "model.safetensors").exists()
    fine = tmp_path / "fine"
    proc = run("finetune.py", args(tiny_dataset, "--set", "data.train_users=0.3", "--set", "train.max_steps=5",
                                   "--set", f"train.init_from={pre}", "--run-dir", str(fine)))
    per_epoch = int(proc.stderr.split(" train samples of ")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert 0.15 * 2156 < per_epoch < 0.45 * 2156  # the full training split holds 2,156 samples
    assert json.loads((fine / "summary.json").read_text())["test"]["users"] == 120
