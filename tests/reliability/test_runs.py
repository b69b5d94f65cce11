"""A run as a hostile user and a flaky cluster see it: checkpoints are data, never code; a run directory belongs to
one run, one config and one dataset; nothing silently starts over; a frozen peer ends the job; user mistakes are
one-line errors at start-up. Each test fails on the code before the fix."""
import errno
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mmm4rec import distributed
from mmm4rec.distributed import DistEnv, Watchdog
from mmm4rec.train.checkpoint import COMPLETE, Checkpointer
from tests.conftest import REPO, kill_job, launch_command, run, subprocess_env

pytestmark = pytest.mark.slow

BASE = ["--config", "tiny", "--set", "model.dropout=0.0"]


def args(dataset, run_dir, *extra):
    return BASE + ["--set", f"data.dataset={dataset}", "--run-dir", str(run_dir), *extra]


def one_line_error(proc) -> str:
    """The launcher's error: exit 2, the message on one log line, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=6", "--set", "train.checkpoint_every=3"))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    (dst / "summary.json").unlink()
    return dst


# ------------------------------------------------------------------------------------------ security
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(finished, tiny_dataset, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    states = ckpt / "mp_rank_00_model_states.pt"
    marker = tmp_path / "PWNED"
    state = torch.load(states, weights_only=False)
    state["client_extra"] = Payload(marker)
    torch.save(state, states)
    complete = json.loads((ckpt / COMPLETE).read_text())  # the attacker also fixes the recorded sizes
    complete["files"]["mp_rank_00_model_states.pt"] = states.stat().st_size
    (ckpt / COMPLETE).write_text(json.dumps(complete))
    proc = run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=6", "--set", "train.checkpoint_every=3"),
               check=False)
    err = one_line_error(proc)
    assert "refused to load" in err and "mp_rank_00_model_states.pt" in err and "system" in err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ lost work
def test_a_run_directory_belongs_to_one_config_and_one_dataset(finished, other_dataset, tiny_dataset, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    before = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    other = run("finetune.py", args(other_dataset, out, "--set", "train.max_steps=6"), check=False)
    assert "belongs to a run with another config and dataset" in one_line_error(other)
    lr = run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=6", "--set", "train.checkpoint_every=3",
                                 "--set", "train.lr=0.5"), check=False)
    assert "belongs to a run with another config" in one_line_error(lr) and "train.resume=force" in lr.stderr
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == before  # nothing deleted or added
    forced = run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=9", "--set",
                                     "train.checkpoint_every=3", "--set", "train.resume=force"))
    assert "resumed from" in forced.stderr and "train.resume=force" in forced.stderr
    assert json.loads((out / "summary.json").read_text())["global_step"] == 9


def test_a_folder_the_project_did_not_make_is_never_used(tiny_dataset, tmp_path):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    proc = run("finetune.py", args(tiny_dataset, mine, "--set", "train.max_steps=2"), check=False)
    assert "was not made by a run of this project" in one_line_error(proc)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_a_second_run_on_the_same_directory_fails_at_once_naming_the_holder(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(launch_command("finetune.py", args(tiny_dataset, out, "--set", "train.epochs=3")),
                             cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while not (out / "run.json").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        started = time.time()
        second = run("finetune.py", args(tiny_dataset, out, "--set", "train.epochs=3"), check=False)
        assert "is in use by host" in one_line_error(second) and f"pid {first.pid}" in second.stderr
        assert time.time() - started < 30
    finally:
        first.kill()
        first.wait()


def test_when_no_checkpoint_can_be_read_the_run_stops_instead_of_starting_over(finished, tiny_dataset, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    for ckpt in (out / "checkpoints").glob("step-*"):
        states = ckpt / "mp_rank_00_model_states.pt"
        size = states.stat().st_size
        states.write_bytes(b"\0" * size)  # same size: only loading finds the damage
    proc = run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=6", "--set", "train.checkpoint_every=3"),
               check=False)
    err = one_line_error(proc)
    assert "none can be loaded" in err and "not starting over" in err
    assert not (out / "summary.json").exists()


def test_retention_never_deletes_the_checkpoint_just_written(tmp_path):
    ckpt = Checkpointer(tmp_path, DistEnv(), keep=1)
    for step in (50, 100, 10):  # step 10 written last, e.g. by a run that started over in this folder
        d = ckpt.dir / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / COMPLETE).write_text(json.dumps({"files": {}}))
    ckpt._retain("step-00000010")
    assert [p.name for p in sorted(ckpt.dir.glob("step-*"))] == ["step-00000010"]


def test_a_full_disk_while_exporting_is_an_error_naming_the_path(monkeypatch, tmp_path):
    from mmm4rec.train import trainer as trainer_module

    def full_disk(model, out, **kw):
        Path(out).mkdir()
        (Path(out) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_module, "write_export", full_disk)
    monkeypatch.setattr(trainer_module.Trainer, "_whole_model", lambda self: "the model")
    monkeypatch.setattr(trainer_module.Trainer, "_catalogue", lambda self: {})
    t = trainer_module.Trainer.__new__(trainer_module.Trainer)
    t.env, t.data, t.provenance = DistEnv(), type("D", (), {"store": None})(), {}
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"the previous export")
    with pytest.raises(trainer_module.CheckpointError, match=r"export.tmp: writing the export failed \(No space"):
        t._export(tmp_path / "export")
    assert not (tmp_path / "export.tmp").exists()
    assert (tmp_path / "export" / "model.safetensors").read_bytes() == b"the previous export"  # kept


# ------------------------------------------------------------------------------------------ user mistakes
@pytest.mark.parametrize("extra, message", [
    (["--set", "model.ssd.form=triton"], "model.ssd.form=triton needs a CUDA device and mamba-ssm"),
    (["--set", "eval.metric=ndcg@7"], "eval.metric='ndcg@7' needs 7 in eval.ks"),
    (["--set", "train.epochs=0"], "train.epochs must be >= 1"),
    # it trained: one step of 100000 rows, 97,844 of them padding
    (["--set", "data.batch_size=100000"], "is larger than the 2,156 train samples of an epoch"),
])
def test_start_up_errors(tiny_dataset, tmp_path, extra, message):
    proc = run("finetune.py", args(tiny_dataset, tmp_path / "r", *extra), check=False)
    assert message in proc.stderr and proc.returncode == 2 and "Traceback" not in proc.stderr


def test_evaluating_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    proc = run("evaluate.py", ["--checkpoint", str(tmp_path / "nonexistent")], check=False)
    assert "no run config.yaml there" in proc.stderr and proc.returncode == 2 and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ faults
def test_a_frozen_rank_ends_the_job_within_twice_the_timeout(tiny_dataset, tmp_path):
    """SIGSTOP one of two ranks mid-training: the other blocks in a collective; its watchdog names the silent
    peer, stops it and exits, and torchrun ends the job non-zero — within 2 × train.collective_timeout_s."""
    timeout = 20
    out = tmp_path / "run"
    cmd = launch_command("finetune.py", args(tiny_dataset, out, "--set", "train.epochs=50", "--set",
                                             f"train.collective_timeout_s={timeout}"), nproc=2, launcher="torchrun")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        heartbeat = out / ".heartbeat" / "rank-1"
        deadline = time.time() + 180
        while not heartbeat.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        pid = int(heartbeat.read_text().split()[2])
        os.kill(pid, signal.SIGSTOP)
        stopped = time.time()
        rc = proc.wait(timeout=2 * timeout + 30)
        took = time.time() - stopped
    finally:
        if proc.poll() is None:
            kill_job(proc.pid)
    stderr = proc.stderr.read()
    assert rc != 0 and took < 2 * timeout, (rc, took, stderr[-3000:])
    assert "made no progress" in stderr and f"rank 1 on" in stderr and f"pid {pid}" in stderr


def test_the_watchdog_fires_before_the_default_groups_own_timeout():
    """A frozen peer in a collective on the default group (evaluation's all_reduce): torch's group timeout, had it
    come first, raises instead, and torchrun then waits 30 s for the SIGSTOPped peer to honour SIGTERM — the job
    ended after 52 s with a 20 s timeout. The group's timeout leaves the Watchdog room to fire first."""
    for timeout in (3.0, 20.0, 300.0, 3600.0):
        assert timeout + Watchdog.period(timeout) < distributed.group_timeout_s(timeout) <= 2 * timeout


def test_a_failing_rank_stops_its_silent_peers_on_this_host(tmp_path):
    """Whatever ends a rank with the Watchdog armed (a collective's own timeout, an error), the silent peers on this
    host are stopped on the way out, so torchrun does not wait 30 s for a SIGSTOPped one; live peers are left alone."""
    frozen = subprocess.Popen(["sleep", "600"])
    live = subprocess.Popen(["sleep", "600"])
    folder, host = tmp_path / ".heartbeat", socket.gethostname()
    folder.mkdir()
    (folder / "rank-1").write_text(f"{time.time() - 30:.3f} {host} {frozen.pid}\n")
    (folder / "rank-2").write_text(f"{time.time():.3f} {host} {live.pid}\n")
    distributed.start_watchdog(folder, DistEnv(rank=0, world_size=3), 20.0)
    try:
        with pytest.raises(RuntimeError, match="the collective failed"):
            try:
                raise RuntimeError("the collective failed")
            except RuntimeError:
                distributed.end_stopped_peers()
                raise
        assert frozen.wait(timeout=10) == -signal.SIGKILL
        assert live.poll() is None
    finally:
        distributed.stop_watchdog()
        for p in (frozen, live):
            p.kill()
            p.wait()


def test_sigterm_to_torchrun_checkpoints_every_rank_and_a_restart_resumes(tiny_dataset, tmp_path):
    """torchrun forwards SIGTERM to its ranks and then exits 1 itself (its SignalException; docs/slurm.md and the
    README say so): what matters is that every rank stopped at the same step with a complete checkpoint, and the
    rerun continues from it."""
    out = tmp_path / "run"
    extra = ("--set", "train.epochs=1", "--set", "train.checkpoint_every=10", "--set", "data.batch_size=8")
    cmd = launch_command("finetune.py", args(tiny_dataset, out, *extra), nproc=2, launcher="torchrun")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    marker = out / "checkpoints" / "step-00000010" / COMPLETE
    deadline = time.time() + 180
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 1
    stderr = proc.stderr.read()
    stops = {line.split("preempted at step ")[1].split(":")[0] for line in stderr.splitlines() if "preempted at" in line}
    assert stderr.count("preempted at step") == 2 and len(stops) == 1  # both ranks, at the same step
    latest = (out / "checkpoints" / "latest").read_text().strip()
    complete = json.loads((out / "checkpoints" / latest / COMPLETE).read_text())
    assert complete["world_size"] == 2 and {"rng-rank0.pt", "rng-rank1.pt"} <= set(complete["files"])
    rerun = run("finetune.py", args(tiny_dataset, out, *extra), nproc=2, launcher="torchrun")
    assert f"(step {complete['step']})" in rerun.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_every_rank_resumes_from_the_same_checkpoint_when_one_ranks_shard_is_damaged(tiny_dataset, tmp_path):
    """Rank 1's optimizer shard of the latest checkpoint is damaged (same size: only loading finds it). Rank 1 alone
    fell back to the previous checkpoint while rank 0 resumed from the latest: the ranks were steps apart, in
    mismatched collectives for the rest of the run. Now they agree on each candidate, and all take the previous."""
    out = tmp_path / "run"
    same = args(tiny_dataset, out, "--set", "train.max_steps=9", "--set", "train.checkpoint_every=3", "--set",
                "data.batch_size=8")
    run("finetune.py", same, nproc=2, launcher="torchrun")
    (out / "summary.json").unlink()
    shard = out / "checkpoints" / "step-00000009" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(b"\0" * shard.stat().st_size)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr_file:
        proc = subprocess.Popen(launch_command("finetune.py", same, nproc=2, launcher="torchrun"), cwd=REPO,
                                env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=stderr_file,
                                start_new_session=True)
    try:
        rc = proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            kill_job(proc.pid)
    stderr = err.read_text()
    assert rc == 0, stderr[-3000:]
    assert "checkpoint step-00000009 failed to load" in stderr and "step-00000006 (step 6)" in stderr, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 9 and summary["world_size"] == 2
