"""Stage 1 (the feature store) killed half-way, and two builds of one store at once. Real `mmm4rec extract`
processes, SIGKILLed between item shards; the resumed store is compared byte for byte with an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmm4rec.data.synthetic import generate
from tests.conftest import REPO, kill_job, subprocess_env

pytestmark = pytest.mark.slow

SHARDS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage1") / "data"
    generate(root, 60, 30 * SHARDS, images="none", seed=4, shard_size=30)  # item shards of 30 items
    return root


def extract(dataset: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmm4rec", "extract", "--dataset", str(dataset), *extra],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=open(log, "w"),
                            text=True, start_new_session=True)


def wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"ended before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {text!r} in time"
        time.sleep(0.02)


def parts_folders(dataset: Path) -> list[Path]:
    return sorted((dataset / "features").glob(".minilm.parts-*"))


def arrays(store: Path) -> dict:
    return {name: np.load(store / name) for name in ("text.npy", "hashes.npy")} | {
        "items": json.loads((store / "items.json").read_text())}


def test_a_killed_stage_1_resumes_its_finished_parts_and_removes_stale_ones(dataset, tmp_path):
    stale = dataset / "features" / ".minilm.parts-0123456789abcdef"  # of an older build that was killed
    stale.mkdir(parents=True)
    (stale / "000000.npz").write_bytes(b"old")
    first = extract(dataset, tmp_path / "first.log")
    wait_for_line(first, tmp_path / "first.log", f"item shard 1/{SHARDS} encoded")
    kill_job(first.pid)  # kill -9, as a node failure or SLURM's KILL does
    first.wait()
    left = parts_folders(dataset)
    assert stale not in left and len(left) == 1  # the killed build removed the stale folder before encoding
    finished = len(list(left[0].glob("*.json")))
    assert 1 <= finished < SHARDS, finished

    rerun = extract(dataset, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    log = (tmp_path / "rerun.log").read_text()
    assert log.count("kept from the interrupted build") == finished  # verified, not encoded again
    assert log.count(" encoded\n") == SHARDS - finished
    assert parts_folders(dataset) == []  # and nothing left behind

    whole = tmp_path / "whole"  # the same build, never interrupted
    ref = extract(dataset, tmp_path / "whole.log", "--features", str(whole))
    assert ref.wait(timeout=300) == 0
    a, b = arrays(dataset / "features" / "minilm"), arrays(whole)
    assert a["items"] == b["items"] and all(np.array_equal(a[k], b[k]) for k in ("text.npy", "hashes.npy"))


def test_a_damaged_finished_part_is_encoded_again(dataset, tmp_path):
    out = tmp_path / "store"
    first = extract(dataset, tmp_path / "first.log", "--features", str(out))
    wait_for_line(first, tmp_path / "first.log", f"item shard 1/{SHARDS} encoded")
    kill_job(first.pid)
    first.wait()
    (parts,) = tmp_path.glob(".store.parts-*")
    npz = parts / "000000.npz"
    data = bytearray(npz.read_bytes())
    data[-40] ^= 1  # one bit: its recorded sha256 no longer matches
    npz.write_bytes(bytes(data))
    rerun = extract(dataset, tmp_path / "rerun.log", "--features", str(out))
    assert rerun.wait(timeout=300) == 0
    log = (tmp_path / "rerun.log").read_text()
    assert f"item shard 1/{SHARDS} encoded" in log and f"item shard 1/{SHARDS} kept" not in log


def test_a_second_build_of_the_same_store_fails_at_once_naming_the_holder(dataset, tmp_path):
    out = tmp_path / "store"
    first = extract(dataset, tmp_path / "first.log", "--features", str(out))
    try:
        wait_for_line(first, tmp_path / "first.log", f"item shard 1/{SHARDS} encoded")
        os.kill(first.pid, signal.SIGSTOP)  # a build in progress, held there for as long as the second needs
        second = extract(dataset, tmp_path / "second.log", "--features", str(out))
        rc = second.wait(timeout=120)
        os.kill(first.pid, signal.SIGCONT)
        err = (tmp_path / "second.log").read_text()
        assert rc == 2 and "Traceback" not in err, err[-3000:]
        assert f"{out}: another feature build is writing this store now" in err and f"pid {first.pid}" in err
        assert first.wait(timeout=300) == 0  # the first is unharmed
        assert "kept from the interrupted build" not in (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            kill_job(first.pid)
    assert json.loads((out / "manifest.json").read_text())["num_items"] == 30 * SHARDS
