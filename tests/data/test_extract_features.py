"""Stage 1 through the launcher: one process vs ``torchrun --nproc_per_node 2`` (byte-identical stores), an
incremental update that encodes only new items, and an error on one rank that stops every rank."""
import json
import subprocess

import numpy as np
import pytest
from data_helpers import PYTHON, REPO, run_env, toy_items, truncated_jpeg, write_toy

from mmm4rec.data.features import FeatureStore

pytestmark = pytest.mark.slow
LAUNCHER = str(REPO / "launchers" / "extract_features.py")
TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def extract(*args, procs: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (TORCHRUN if procs == 2 else [PYTHON]) + [LAUNCHER, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def summary(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout[done.stdout.index("{"):])


def contents(path) -> dict:
    """Every file byte for byte; the manifest without its creation record (time, host, world size)."""
    out = {p.name: p.read_bytes() for p in path.iterdir() if p.name != "manifest.json"}
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("created")
    return {**out, "manifest.json": manifest}


def test_two_processes_give_the_one_process_store_and_update_incrementally(tmp_path, tiny_models):
    items = toy_items(22)
    write_toy(tmp_path / "ds", items=items, shard_size=4)  # 6 item shards: ranks get 3 each
    args = ["--dataset", tmp_path / "ds", "--text", "minilm", "--image", tiny_models["siglip"], "--batch-size", 3]
    one = summary(extract(*args, "--features", tmp_path / "one"))
    two = summary(extract(*args, "--features", tmp_path / "two", procs=2))
    assert one["items"] == two["items"] == 22 and two["dims"] == {"text": 384, "image": 32}
    assert two["last_build"]["encoded"] == 22 and two["missing_images"] == 8
    assert contents(tmp_path / "one") == contents(tmp_path / "two")
    assert FeatureStore.open(tmp_path / "two").manifest["created"]["world_size"] == 2

    write_toy(tmp_path / "ds", items=items + toy_items(3, start=90), shard_size=4)
    update = summary(extract(*args, "--features", tmp_path / "two", procs=2))
    assert update["last_build"]["mode"] == "update"
    assert update["last_build"]["encoded"] == 3 and update["last_build"]["reused"] == 22
    store = FeatureStore.open(tmp_path / "two")
    old = FeatureStore.open(tmp_path / "one")
    for key, i in old.index.items():
        assert np.array_equal(store.text[store.index[key]], old.text[i])


def test_an_error_on_one_rank_stops_all_ranks(tmp_path, tiny_models):
    items = toy_items(8, images=False)
    items[7].image = truncated_jpeg()
    write_toy(tmp_path / "ds", items=items, shard_size=4)  # the bad item is in shard 1, rank 1's
    done = extract("--dataset", tmp_path / "ds", "--text", tiny_models["bert"], "--image", tiny_models["vision"],
                   "--strict", procs=2, check=False)
    assert done.returncode != 0
    assert "items-000001.tar: item 'toy:i007': unreadable image" in done.stderr
    assert "rank 1: DataError" in done.stderr  # rank 0 stops too instead of waiting in a collective
    assert not (tmp_path / "ds" / "features").exists() or not any((tmp_path / "ds" / "features").iterdir())
