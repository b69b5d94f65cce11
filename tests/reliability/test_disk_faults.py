"""Disks that say no: a full disk while checkpointing, a read-only run directory, a read-only dataset folder. Real
file systems: a tmpfs whose size is cut to what is in use plus half a checkpoint (ENOSPC at the next one), and a
tmpfs remounted read-only (EROFS). Mounting needs root (CAP_SYS_ADMIN): skipped, with the reason, elsewhere.
One rank alone that cannot write: the kernel's file size limit (RLIMIT_FSIZE, EFBIG) set on that rank's process."""
import contextlib
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mmm4rec.distributed import DistEnv
from mmm4rec.train.checkpoint import COMPLETE
from mmm4rec.train.checkpoint import Checkpointer
from tests.conftest import REPO, kill_job, launch_command, run, subprocess_env

pytestmark = pytest.mark.slow

BASE = ["--config", "tiny", "--set", "model.dropout=0.0"]


def args(dataset, run_dir, *extra):
    return BASE + ["--set", f"data.dataset={dataset}", "--run-dir", str(run_dir), *extra]


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64m"):
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {getattr(e, 'stderr', e)}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    mount("-o", "remount,ro", str(path))


def one_line_error(proc_stderr: str, rc: int) -> list[str]:
    assert rc == 2, (rc, proc_stderr[-6000:])
    assert "Traceback" not in proc_stderr, proc_stderr[-3000:]
    return [line for line in proc_stderr.splitlines() if " ERROR " in line or line.startswith("error")]


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_path_and_the_last_checkpoint_survives(
        tiny_dataset, tmp_path):
    """It was `RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos 8256 vs 8150`: no path, no
    reason, nothing in train.log."""
    with tmpfs(tmp_path / "disk") as disk:
        out = disk / "run"
        cmd = launch_command("finetune.py", args(tiny_dataset, out, "--set", "train.checkpoint_every=20",
                                                 "--set", "train.log_every=5", "--set", "train.epochs=20"))
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            first = out / "checkpoints" / "step-00000020"
            deadline = time.time() + 300
            while not ((out / "checkpoints" / "latest").exists()
                       and (out / "checkpoints" / "latest").read_text().strip() == first.name):
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                assert time.time() < deadline
                time.sleep(0.02)
            size = sum(p.stat().st_size for p in first.iterdir())
            st = os.statvfs(disk)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            mount("-o", f"remount,size={(used + size // 2) // 1024}k", str(disk))  # the next checkpoint cannot fit
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                kill_job(proc.pid)
        stderr = proc.stderr.read()
        errors = one_line_error(stderr, rc)
        assert len(errors) == 1 and "no space left on device" in errors[0], stderr[-3000:]
        assert f"{out}/checkpoints/step-00000040" in errors[0] and "previous checkpoint is kept" in errors[0]
        log = (out / "train.log").read_text()
        assert errors[0].split(" ERROR ")[-1] in log  # recorded in the run's own log
        assert (out / "checkpoints" / "latest").read_text().strip() == first.name
        assert Checkpointer(out, DistEnv()).complete_tags() == [first.name]  # whole: every size as recorded
        assert not (out / "checkpoints" / "step-00000040").exists()  # the partial one is gone


def test_a_read_only_run_directory_is_one_line_naming_it(tiny_dataset, tmp_path):
    with tmpfs(tmp_path / "ro") as ro:
        read_only(ro)
        proc = run("finetune.py", args(tiny_dataset, ro / "run"), check=False)
        errors = one_line_error(proc.stderr, proc.returncode)
        assert len(errors) == 1 and f"{ro}/run" in errors[0] and "read-only file system" in errors[0].lower()


def test_a_read_only_dataset_folder_is_one_line_naming_it(tiny_dataset, tmp_path):
    """A dataset whose feature store must be built (stage 1 writes next to the dataset) on a read-only disk."""
    with tmpfs(tmp_path / "ro") as ro:
        data = ro / "data"
        shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("features"))
        read_only(ro)
        proc = run("finetune.py", args(data, tmp_path / "run"), check=False)
        errors = one_line_error(proc.stderr, proc.returncode)
        assert len(errors) == 1 and str(data) in errors[0] and "read-only file system" in errors[0].lower(), \
            proc.stderr[-3000:]


def test_a_rank_that_cannot_write_its_checkpoint_ends_every_rank_at_once_with_the_error_naming_the_file(
        tiny_dataset, tmp_path):
    """Rank 1 of 2 cannot write its optimizer shard. Its peer sat in DeepSpeed's barrier: gloo raised "Connection
    closed by peer" with a traceback once rank 1's process was gone, torchrun's SIGTERM killed it (exit -15), and
    the error was in no log of the run; NCCL, or a peer on another node, waits for the collective timeout. Now the
    failing rank posts its error in the rendezvous store and every rank exits 2 with it within seconds."""
    out = tmp_path / "run"
    cmd = launch_command("finetune.py", args(tiny_dataset, out, "--set", "train.epochs=50", "--set",
                                             "train.checkpoint_every=20", "--set", "data.batch_size=2"),
                         nproc=2, launcher="torchrun")
    err = tmp_path / "stderr.txt"  # a file: a pipe nobody reads fills up and blocks rank 0's logging
    with open(err, "w") as stderr_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=stderr_file,
                                text=True, start_new_session=True)
    try:
        heartbeat = out / ".heartbeat" / "rank-1"  # written once training runs
        latest = out / "checkpoints" / "latest"  # a whole checkpoint to fall back on, before the limit
        deadline = time.time() + 180
        while not (heartbeat.exists() and latest.exists()):
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.1)
        pid = int(heartbeat.read_text().split()[2])
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (100_000, 100_000))  # its optimizer shard is ~300 KB
        limited = time.time()
        rc = proc.wait(timeout=120)
        took = time.time() - limited
    finally:
        if proc.poll() is None:
            kill_job(proc.pid)
    stderr = err.read_text()
    assert rc != 0 and took < 30, (rc, took, stderr[-3000:])
    assert re.findall(r"^ +exitcode +: (-?\d+)", stderr, re.M) == ["2", "2"], stderr[-3000:]  # both ranks, no -15
    assert "[rank0]: Traceback" not in stderr and "[rank1]: Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in (out / "train.log").read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"rank 1: {out}/checkpoints/step-" in errors[0], errors
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt: writing the checkpoint failed (file too large)" in errors[0]
    failed = errors[0].split(f"{out}/checkpoints/")[1].split("/")[0]
    kept = latest.read_text().strip()
    assert kept < failed and (out / "checkpoints" / kept / COMPLETE).is_file()  # the previous one is whole
    assert not (out / "checkpoints" / failed).exists()
