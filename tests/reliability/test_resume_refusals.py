"""A refused (re)start writes nothing into the run directory: every check — the folder's config and dataset, the
latest checkpoint's model and world size, the transfer source, the DeepSpeed config — passes before run.json,
config.yaml or train.log are touched. A refused `--set train.resume=force` used to have rewritten run.json and
config.yaml already, so that the original command was then refused as "another config" and `evaluate` read the
altered config. And "another config" names the settings that differ. Real launcher subprocesses on a real run
directory; each test fails on the code before its fix."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mmm4rec.train.checkpoint import COMPLETE
from tests.conftest import run
from tests.reliability.test_runs import args, one_line_error  # one launcher command line, one error check

pytestmark = pytest.mark.slow

ORIGINAL = ["--set", "train.max_steps=6", "--set", "train.checkpoint_every=3"]


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run("finetune.py", args(tiny_dataset, out, *ORIGINAL))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the run directory but the lock file (its holder line is rewritten by every attempt)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def as_if_written_by_two_processes(out: Path) -> None:
    """What a 2-process run leaves for this check: checkpoints whose COMPLETE markers say world_size 2."""
    for marker in (out / "checkpoints").glob(f"step-*/{COMPLETE}"):
        state = json.loads(marker.read_text())
        marker.write_text(json.dumps({**state, "world_size": 2}))


@pytest.mark.parametrize("case", ["world size", "model"])
def test_a_refused_forced_resume_writes_nothing(finished, tiny_dataset, tmp_path, case):
    out = copy_run(finished, tmp_path / "run")
    if case == "world size":
        as_if_written_by_two_processes(out)
        change, message = ["--set", "train.max_steps=9"], "was written by 2 processes, this run has 1"
    else:
        change, message = ["--set", "model.d_state=4"], "belongs to a different model configuration"
    before = snapshot(out)
    proc = run("finetune.py", args(tiny_dataset, out, *ORIGINAL, *change, "--set", "train.resume=force"),
               check=False)
    assert message in one_line_error(proc)
    after = snapshot(out)
    assert after.keys() == before.keys()
    assert [name for name in before if after[name] != before[name]] == []  # run.json, config.yaml, train.log …
    if case == "model":  # the original command is still this folder's: it resumes (and finds the run done)
        again = run("finetune.py", args(tiny_dataset, out, *ORIGINAL), check=False)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed from" in again.stderr


def test_a_new_run_refused_after_the_folder_checks_leaves_it_reusable(tiny_dataset, tmp_path):
    """A mistake found later at start-up (here: a transfer source that is not there) must not leave a run.json
    and config.yaml behind, which would refuse the corrected command as "another config"."""
    out = tmp_path / "run"
    proc = run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=2", "--set",
                                   f"train.init_from={tmp_path / 'no-such-run'}"), check=False)
    assert "train.init_from" in one_line_error(proc)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.parametrize("recorded_in", ["run.json", "config.yaml"])
def test_another_config_names_the_settings_that_differ(finished, tiny_dataset, tmp_path, recorded_in):
    """run.json records the config it belongs to; a run.json of an older version (without it) is compared with
    the run's config.yaml."""
    out = copy_run(finished, tmp_path / "run")
    if recorded_in == "config.yaml":
        identity = json.loads((out / "run.json").read_text())
        identity.pop("config", None)
        (out / "run.json").write_text(json.dumps(identity))
    proc = run("finetune.py", args(tiny_dataset, out, "--set", "train.max_steps=9", "--set", "train.lr=0.5",
                                   "--set", "train.log_every=2"), check=False)
    err = one_line_error(proc)
    assert "belongs to a run with another config (train.lr: 0.001 → 0.5, train.max_steps: 6 → 9)" in err
    assert "log_every" not in err  # an operational setting may change on a resume
    assert "train.resume=force" in err
