"""A stop request (SIGTERM, as SLURM's scancel, preemption or time limit sends it) is honoured within a bounded time in
every phase of a run — between training steps, between batches of users of a validation and of the final test —
with a checkpoint and exit 0, and the same command again finishes the run. Real runs of the tiny preset: the
phases are made slow by sizes only (one user per evaluation batch, one item per scoring chunk, more users)."""
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmm4rec.train.checkpoint import COMPLETE
from tests.conftest import REPO, kill_job, launch_command, make_dataset, run, subprocess_env

pytestmark = pytest.mark.slow

BASE = ["--config", "tiny", "--set", "model.dropout=0.0"]
# every user its own evaluation batch and every item its own scoring chunk: a ranking of many small steps
SLOW_EVAL = ["--set", "eval.batch_size=1", "--set", "eval.item_chunk=1"]


def args(dataset, run_dir, *extra):
    return BASE + ["--set", f"data.dataset={dataset}", "--run-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def many_users(tmp_path_factory) -> Path:
    """Enough users that a validation or test of one user per batch takes many seconds on a CPU."""
    return make_dataset(tmp_path_factory.mktemp("many-users"), users=400, items=40, seed=3)


def start(cmd_args) -> subprocess.Popen:
    return subprocess.Popen(launch_command("finetune.py", cmd_args), cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(proc, ready, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stderr.read()[-4000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop(proc, within: float) -> tuple[int, float, str]:
    """SIGTERM; (exit code, seconds until exit, stderr). The job is killed if it overstays ``within``."""
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        kill_job(proc.pid)
        rc = proc.wait()
    return rc, time.time() - sent, proc.stderr.read()


def latest(out: Path) -> int:
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert (out / "checkpoints" / tag / COMPLETE).is_file()
    return int(tag.split("-")[1])


def test_sigterm_between_training_steps_stops_after_the_current_step(tiny_dataset, tmp_path):
    """log_every 1000: the old loop trained on to the end of the epoch (hundreds of steps) before it looked."""
    out = tmp_path / "run"
    proc = start(args(tiny_dataset, out, "--set", "data.batch_size=1", "--set", "train.log_every=1000",
                      "--set", "train.checkpoint_every=5", "--set", "train.epochs=3"))
    wait_for(proc, lambda: (out / "checkpoints" / "step-00000005" / COMPLETE).exists(), "the step-5 checkpoint")
    rc, took, stderr = stop(proc, within=60)
    assert rc == 0 and "Traceback" not in stderr, (rc, stderr[-3000:])
    step = latest(out)
    assert 5 <= step <= 8 and f"preempted at step {step}: checkpoint written" in stderr, (step, stderr[-2000:])
    assert took < 30, took
    assert not (out / "summary.json").exists()


def test_sigterm_during_validation_stops_the_ranking_checkpoints_and_the_rerun_redoes_it(many_users, tmp_path):
    out = tmp_path / "run"
    extra = ("--set", "train.max_steps=2", "--set", "train.log_every=1", *SLOW_EVAL)
    proc = start(args(many_users, out, *extra))
    log = out / "train.log"
    wait_for(proc, lambda: log.exists() and "step 2 epoch 0" in log.read_text(), "validation")
    rc, took, stderr = stop(proc, within=60)
    assert rc == 0 and "Traceback" not in stderr, (rc, stderr[-3000:])
    assert took < 30, took
    text = log.read_text()
    assert "stop requested during validation at step 2: checkpoint written" in text
    assert "valid ndcg@10" not in text  # the ranking stopped early (one user per batch: seconds of work left)
    assert latest(out) == 2 and not (out / "summary.json").exists() and not (out / "best").exists()
    rerun = run("finetune.py", args(many_users, out, *extra), timeout=600)
    assert "resumed from" in rerun.stderr and "validating at step 2" in rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [v["step"] for v in summary["valid_history"]] == [2] and summary["test"]["users"] == 400


def test_sigterm_during_the_final_test_exits_zero_and_the_rerun_tests(many_users, tmp_path):
    """The handler used to be gone by then: the process died with rc 143 at once."""
    out = tmp_path / "run"
    extra = ("--set", "train.max_steps=1", "--set", "train.log_every=1", *SLOW_EVAL)
    proc = start(args(many_users, out, *extra))
    log = out / "train.log"
    # the export is written just before the test: its config.json appears, then the test begins
    wait_for(proc, lambda: (out / "export" / "config.json").exists(), "the export", timeout=600)
    time.sleep(0.5)
    rc, took, stderr = stop(proc, within=60)
    assert rc == 0 and "Traceback" not in stderr, (rc, stderr[-3000:])
    assert took < 30, took
    text = log.read_text()
    assert "stop requested during the test evaluation" in text and "test: hit@10" not in text
    assert not (out / "summary.json").exists()
    rerun = run("finetune.py", args(many_users, out, *extra), timeout=600)
    assert "resumed from" in rerun.stderr
    assert json.loads((out / "summary.json").read_text())["test"]["users"] == 400


def test_sigterm_during_start_up_exits_zero_at_once_and_leaves_the_run_folder_as_it_was(tiny_dataset, tmp_path):
    """A stop request before the training loop (dataset, run folder, engine, checkpoint loading) had the signal's
    default action: exit -15 and no word in any log. Now it ends the start-up at once with exit 0 and a warning; the
    folder of the run being resumed is untouched (its config.yaml rewritten whole or not at all), and the same
    command again resumes."""
    out = tmp_path / "run"
    same = args(tiny_dataset, out, "--set", "train.max_steps=3")
    run("finetune.py", same)
    (out / "summary.json").unlink()  # as if stopped during the final test: the rerun resumes from step 3
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
              and p.name != ".lock"}
    proc = start(same)
    # the lock names the new holder at once: the start-up has its data, model and engine still ahead
    wait_for(proc, lambda: f"pid {proc.pid} " in (out / ".lock").read_text(), "the run folder's lock")
    rc, took, stderr = stop(proc, within=60)
    assert rc == 0 and "Traceback" not in stderr, (rc, stderr[-3000:])
    assert "stop requested (SIGTERM) during start-up" in stderr and took < 15, (took, stderr[-3000:])
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
             and p.name != ".lock"}
    assert after.keys() == before.keys() and [k for k in before if after[k] != before[k]] == []
    rerun = run("finetune.py", same)
    assert "(step 3)" in rerun.stderr and json.loads((out / "summary.json").read_text())["global_step"] == 3
