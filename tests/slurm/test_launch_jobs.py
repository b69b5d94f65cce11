"""The real launchers through the production job scripts on the local two-node cluster (CPU profile):
slurm/pretrain.sh with the tiny preset, preemption + requeue resuming to the same result, slurm/pipeline.sh
chaining extract -> pretrain -> finetune, and a bad config failing with the error in the job's log.

Written against the launcher contract (docs/slurm.md): `--config PRESET --run-dir DIR [--set k=v]`, auto-resume
from <run dir>/checkpoints/latest, USR1/TERM -> checkpoint + exit 0 without summary.json, summary.json with
world_size / global_step / test, export at <run dir>/export, per-rank start lines naming SLURMD_NODENAME.
Datasets: the root conftest's session `tiny_dataset` (feature store built once) for the training jobs, fresh
ones from tools/make_synthetic.py for the pipeline (its extract job builds their feature stores).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time

import pytest

from slurm_helpers import ROOT, read_log

if not (ROOT / "launchers" / "pretrain.py").exists() or not (ROOT / "launchers" / "finetune.py").exists():
    pytest.skip("launchers/pretrain.py and launchers/finetune.py are not there yet", allow_module_level=True)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]

CPU_PROFILE = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=20"]
# Overrides that make the tiny run last long enough (tens of seconds) to be preempted in the middle.
LONG_RUN = ["--set", "train.epochs=6", "--set", "train.patience=100"]
TRAINING = re.compile(r"\bstep \d+\b.*\bloss\b")   # a training progress line: the loop (and its handlers) runs


def make_tiny_dataset(path, users, items, seed):
    """A fresh tiny text-only dataset without a feature store (tools/make_synthetic.py)."""
    cmd = [sys.executable, str(ROOT / "tools" / "make_synthetic.py"), "--out", str(path), "--users", str(users),
           "--items", str(items), "--images", "none", "--seed", str(seed), "--shard-size", str(users // 3)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return path


def job_logs(tmp_path, name, job):
    return tmp_path / f"{name}-{job}.out", tmp_path / f"{name}-{job}.err"


def both_logs(tmp_path, name, job):
    out, err = job_logs(tmp_path, name, job)
    return read_log(out) + "\n" + read_log(err)


def submit(cluster, tmp_path, script, *args, env=None, name=None):
    name = name or f"mmm4rec-{script}"
    job = cluster.sbatch(f"--job-name={name}", *CPU_PROFILE, ROOT / "slurm" / f"{script}.sh", *args,
                         env=env, cwd=tmp_path)
    return job, name


def finish(cluster, tmp_path, job, name, timeout=480):
    info = cluster.wait(job, timeout=timeout, log=job_logs(tmp_path, name, job)[1])
    return info, both_logs(tmp_path, name, job)


@pytest.fixture(scope="module")
def pretrain_pair(slurm_cluster, tmp_path_factory, tiny_dataset):
    """Two identical tiny pre-training jobs on 2 nodes x 1 task, side by side: "reference" runs through,
    "preempted" gets USR1 once it trains (what --signal=B:USR1@120 sends before the time limit)."""
    tmp = tmp_path_factory.mktemp("pretrain-pair")
    common = {"CONFIG": "tiny", "DATASET": str(tiny_dataset)}
    jobs = {}
    for name in ("reference", "preempted"):
        job, _ = submit(slurm_cluster, tmp, "pretrain", *LONG_RUN, name=name,
                        env={**common, "RUN_DIR": str(tmp / name)})
        jobs[name] = job
    pre = jobs["preempted"]
    slurm_cluster.wait_for(lambda: TRAINING.search(both_logs(tmp, "preempted", pre)), timeout=240,
                           what="the pre-training to start", job_id=pre, log=job_logs(tmp, "preempted", pre)[1])
    time.sleep(1)
    assert not (tmp / "preempted" / "summary.json").exists(), "finished before the signal: lengthen LONG_RUN"
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", pre)
    return tmp, jobs


def test_pretrain_tiny_on_two_nodes(slurm_cluster, pretrain_pair):
    tmp, jobs = pretrain_pair
    info, logs = finish(slurm_cluster, tmp, jobs["reference"], "reference")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{logs}"
    run_dir = tmp / "reference"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] > 0 and "test" in summary, summary
    # one rank per node, each naming its node in its start line
    assert any("n1" in line and "rank" in line for line in logs.splitlines()), logs
    assert any("n2" in line and "rank" in line for line in logs.splitlines()), logs
    assert (run_dir / "export" / "model.safetensors").exists() and (run_dir / "export" / "config.json").exists()


def _metrics_equal(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_metrics_equal(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def _weight_differences(a, b) -> dict[str, float]:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "export" / "model.safetensors")), load_file(str(b / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    diff = {k: (wa[k].float() - wb[k].float()).abs().max().item() for k in wa if not torch.equal(wa[k], wb[k])}
    return {k: d for k, d in diff.items() if d >= 1e-6}


def test_preempted_pretrain_resumes_with_same_result(slurm_cluster, pretrain_pair):
    tmp, jobs = pretrain_pair
    ref_info, ref_logs = finish(slurm_cluster, tmp, jobs["reference"], "reference")
    pre_info, pre_logs = finish(slurm_cluster, tmp, jobs["preempted"], "preempted")
    assert ref_info["JobState"] == "COMPLETED", f"{ref_info}\n{ref_logs}"
    assert pre_info["JobState"] == "COMPLETED", f"{pre_info}\n{pre_logs}"
    assert pre_info["Restarts"] == "1", f"the preempted job should have run twice: {pre_info}\n{pre_logs}"
    assert "requeueing job" in pre_logs
    pre_dir, ref_dir = tmp / "preempted", tmp / "reference"
    assert (pre_dir / "checkpoints").is_dir(), "the interrupted run left no checkpoint to resume from"
    ref = json.loads((ref_dir / "summary.json").read_text())
    pre = json.loads((pre_dir / "summary.json").read_text())
    assert pre["global_step"] == ref["global_step"] and pre["world_size"] == ref["world_size"] == 2
    assert _metrics_equal(pre["test"], ref["test"]), f"resumed {pre['test']} != uninterrupted {ref['test']}"
    assert _metrics_equal(pre.get("valid_history"), ref.get("valid_history"))
    diff = _weight_differences(pre_dir, ref_dir)
    worst = max(diff.items(), key=lambda kv: kv[1]) if diff else None
    assert not diff, f"exported weights differ after resume in {len(diff)} tensors (worst {worst})"


def test_pipeline_extract_pretrain_finetune(slurm_cluster, tmp_path):
    # one fresh dataset for both stages keeps this quick (the stub pipeline test covers FINETUNE_DATASET)
    source = make_tiny_dataset(tmp_path / "source", users=120, items=60, seed=11)
    runs = tmp_path / "runs"
    env = {"NAME": "chain", "RUNS_DIR": str(runs), "DATASET": str(source), "FINETUNE_DATASET": str(source),
           "PRETRAIN_CONFIG": "tiny", "FINETUNE_CONFIG": "tiny"}
    proc = slurm_cluster.run("bash", str(ROOT / "slurm" / "pipeline.sh"), *CPU_PROFILE, env=env, cwd=tmp_path)
    ids = dict(line.split() for line in proc.stdout.splitlines())
    assert set(ids) == {"extract", "pretrain", "finetune"} and "none" not in ids.values(), proc.stdout
    for stage in ("extract", "pretrain", "finetune"):
        info, logs = finish(slurm_cluster, tmp_path, ids[stage], f"chain-{stage}")
        assert info["JobState"] == "COMPLETED", f"{stage}: {info}\n{logs}"
    assert list(source.glob("features/*")), "the extract job built the feature store"
    export = runs / "chain-pretrain" / "export"
    assert (export / "model.safetensors").exists() and (export / "config.json").exists()
    summary = json.loads((runs / "chain-finetune" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # the fine-tuning started from the pre-trained export: its command line / resolved config names it
    logs = both_logs(tmp_path, "chain-finetune", ids["finetune"])
    recorded = logs + "".join(p.read_text(errors="replace") for p in (runs / "chain-finetune").glob("*")
                              if p.is_file() and p.suffix in {".json", ".yaml", ".yml"})
    assert f"train.init_from={export}" in logs and str(export) in recorded


def test_bad_config_fails_with_error_in_log(slurm_cluster, tmp_path, tiny_dataset):
    bad = tmp_path / "no-such-config.yaml"
    job, name = submit(slurm_cluster, tmp_path, "pretrain",
                       env={"CONFIG": str(bad), "RUN_DIR": str(tmp_path / "r"), "DATASET": str(tiny_dataset)})
    info, logs = finish(slurm_cluster, tmp_path, job, name, timeout=240)
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", f"{info}\n{logs}"
    assert "no-such-config.yaml" in logs, logs
    assert info["Restarts"] == "0"
