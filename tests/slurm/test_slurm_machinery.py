"""The SLURM machinery on the local two-node cluster: rendezvous across nodes, signal forwarding and self-requeue,
failure reporting, the job scripts' command lines, job chaining, and a clean stop. No real launcher needed:
steps are small Python scripts under tests/slurm/jobs (test_launch_jobs.py runs the real launchers).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from slurm_helpers import JOBS, ROOT, daemon_alive, read_log

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

STEP = JOBS / "step.sh"
CPU_PROFILE = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10"]


def submit_step(cluster, tmp_path, *step_args, sbatch_args=(), env=None, name="step"):
    """sbatch tests/slurm/jobs/step.sh (common.sh machinery, 2 nodes x 1 task); returns (job id, log, run dir)."""
    run_dir = tmp_path / f"run-{name}"
    log = tmp_path / f"{name}.log"
    job = cluster.sbatch(f"--job-name={name}", f"--output={log}", *sbatch_args, STEP, *map(str, step_args),
                         env={"RUN_DIR": str(run_dir), **(env or {})}, cwd=tmp_path)
    return job, log, run_dir


def test_allreduce_across_two_nodes(slurm_cluster, tmp_path):
    job, log, _ = submit_step(slurm_cluster, tmp_path, JOBS / "allreduce.py", env={"MMM4REC_DONE_FILE": ""})
    info = slurm_cluster.wait(job, timeout=120, log=log)
    text = read_log(log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text
    lines = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in text.splitlines()
             if line.startswith("allreduce ")]
    assert len(lines) == 2, text
    assert sorted(int(r["rank"]) for r in lines) == [0, 1]
    assert {r["node"] for r in lines} == {"n1", "n2"}, "one rank on each node"
    assert all(r["world"] == "2" and r["sum"] == "3" and r["local_rank"] == "0" for r in lines), text
    # the rendezvous comes from slurm/common.sh: first node's NodeAddr, port 10000 + job id % 10000
    assert {r["master"] for r in lines} == {f"127.0.0.1:{10000 + int(job) % 10000}"}
    assert {r["launcher"] for r in lines} == {"slurm"} and {r["omp"] for r in lines} == {"1"}


def _wait_ready(cluster, job, run_dir, ranks=2):
    cluster.wait_for(lambda: all((run_dir / f"ready-{r}").exists() for r in range(ranks)), timeout=90,
                     what="both ranks of the dummy step to start", job_id=job)


def test_usr1_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    job, log, run_dir = submit_step(slurm_cluster, tmp_path, JOBS / "dummy_train.py", name="usr1",
                                    env={"DUMMY_CHECKPOINT_SECONDS": "1"})
    _wait_ready(slurm_cluster, job, run_dir)
    assert not (run_dir / "summary.json").exists()
    # what `#SBATCH --signal=B:USR1@T` does T seconds before the time limit: USR1 to the batch shell only
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    info = slurm_cluster.wait(job, timeout=120, log=log)
    text = read_log(log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text
    assert info["Restarts"] == "1", f"the job should have run twice: {info}\n{text}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["restart"] == 1 and summary["world_size"] == 2
    assert summary["resumed_from"] == "restart 0 signal SIGUSR1", "second run resumed from the first's checkpoint"
    assert len(re.findall(r"dummy rank \d got SIGUSR1", text)) == 2, "the signal reached both ranks through srun"
    assert "requeueing job" in text and "restart 1 on" in text, "both runs append to one log"


def test_time_limit_signal_requeues(slurm_cluster, tmp_path):
    # The production path: --signal=B:USR1@59 with a one-minute limit fires 1-31 s in (the controller checks
    # time limits about every 30 s).
    job, log, run_dir = submit_step(slurm_cluster, tmp_path, JOBS / "dummy_train.py", name="timelimit",
                                    sbatch_args=["--time=1", "--signal=B:USR1@59"])
    info = slurm_cluster.wait(job, timeout=150, log=log)
    text = read_log(log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", f"{info}\n{text}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == "restart 0 signal SIGUSR1", text


def test_scancel_cancels_without_requeue(slurm_cluster, tmp_path):
    job, log, run_dir = submit_step(slurm_cluster, tmp_path, JOBS / "dummy_train.py", name="cancel",
                                    env={"DUMMY_CHECKPOINT_SECONDS": "2"})
    _wait_ready(slurm_cluster, job, run_dir)
    slurm_cluster.run("scancel", job)
    info = slurm_cluster.wait(job, timeout=60, log=log)
    slurm_cluster.wait_for(lambda: "not requeued" in read_log(log), timeout=30, what="the batch shell's verdict")
    time.sleep(2)
    info = slurm_cluster.job(job)
    text = read_log(log)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", f"{info}\n{text}"
    # TERM reached the tasks with time to checkpoint (KillWait) — a resubmission would resume
    assert (run_dir / "checkpoint").read_text() == "restart 0 signal SIGTERM", text
    assert not (run_dir / "summary.json").exists()


def test_requeue_limit_fails_the_job(slurm_cluster, tmp_path):
    job, log, run_dir = submit_step(slurm_cluster, tmp_path, JOBS / "dummy_train.py", name="limit",
                                    env={"MMM4REC_MAX_REQUEUES": "0"})
    _wait_ready(slurm_cluster, job, run_dir)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    info = slurm_cluster.wait(job, timeout=60, log=log)
    text = read_log(log)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", f"{info}\n{text}"
    assert "MMM4REC_MAX_REQUEUES=0" in text


def test_bad_command_fails_with_error_in_log(slurm_cluster, tmp_path):
    job, log, _ = submit_step(slurm_cluster, tmp_path, "/nonexistent/launcher.py", name="bad")
    info = slurm_cluster.wait(job, timeout=60, log=log)
    text = read_log(log)
    assert info["JobState"] == "FAILED", f"{info}\n{text}"
    assert info["ExitCode"] != "0:0"
    assert "/nonexistent/launcher.py" in text and "No such file" in text, text
    assert "step failed" in text


# ---- the production job scripts with stub launchers -------------------------------------------------------

@pytest.fixture
def stub_root(tmp_path):
    """A scratch repository: the real slurm/ scripts, stub launchers (tests/slurm/jobs/stub_launcher.py)."""
    root = tmp_path / "repo"
    (root / "launchers").mkdir(parents=True)
    (root / "slurm").symlink_to(ROOT / "slurm")
    for name in ("pretrain", "finetune", "extract_features"):
        (root / "launchers" / f"{name}.py").symlink_to(JOBS / "stub_launcher.py")
    return root


def stub_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_pretrain_script_cpu_profile_and_arguments(slurm_cluster, tmp_path, stub_root):
    stub_log = tmp_path / "stub.jsonl"
    # MMM4REC_ROOT empty: the script must find its repository from the submitted path
    env = {"MMM4REC_ROOT": "", "STUB_LOG": str(stub_log), "CONFIG": "tiny", "DATASET": "data/x",
           "EXTRA": "--set train.a=1 --set train.b=2", "RUNS_DIR": str(tmp_path / "runs")}
    job = slurm_cluster.sbatch(*CPU_PROFILE, stub_root / "slurm" / "pretrain.sh", "--set", "train.c=3",
                               env=env, cwd=tmp_path)
    out, err = tmp_path / f"mmm4rec-pretrain-{job}.out", tmp_path / f"mmm4rec-pretrain-{job}.err"
    info = slurm_cluster.wait(job, timeout=90, log=err)
    assert info["JobState"] == "COMPLETED", f"{info}\n{read_log(out)}\n{read_log(err)}"
    assert info["TresPerNode"] == "gres:gpu:0", "--gpus-per-node=0 overrides the script's 8 GPUs"
    records = stub_records(stub_log)
    assert sorted(r["rank"] for r in records) == [0, 1] and {r["node"] for r in records} == {"n1", "n2"}
    run_dir = tmp_path / "runs" / "mmm4rec-pretrain"   # default RUN_DIR = RUNS_DIR/<job name>
    assert records[0]["argv"] == ["--config", "tiny", "--run-dir", str(run_dir), "--set", "train.a=1", "--set",
                                  "train.b=2", "--set", "data.dataset=data/x", "--set", "train.c=3"]
    assert {r["omp"] for r in records} == {"1"}
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert "stub pretrain rank" in read_log(out) and "run complete" in read_log(err)


def test_pipeline_chains_extract_pretrain_finetune(slurm_cluster, tmp_path, stub_root):
    stub_log = tmp_path / "stub.jsonl"
    env = {"MMM4REC_ROOT": "", "STUB_LOG": str(stub_log), "NAME": "chain", "RUNS_DIR": str(tmp_path / "runs"),
           "DATASET": str(tmp_path / "pt-data"), "FINETUNE_DATASET": str(tmp_path / "ft-data"),
           "PRETRAIN_CONFIG": "tiny", "FINETUNE_CONFIG": "tiny-ft"}
    proc = slurm_cluster.run("bash", str(stub_root / "slurm" / "pipeline.sh"), *CPU_PROFILE, env=env, cwd=tmp_path)
    ids = dict(line.split() for line in proc.stdout.splitlines())
    assert set(ids) == {"extract", "pretrain", "finetune"}, proc.stdout
    assert slurm_cluster.job(ids["finetune"])["Dependency"] == f"afterok:{ids['pretrain']}(unfulfilled)"
    for stage in ("extract", "pretrain", "finetune"):
        info = slurm_cluster.wait(ids[stage], timeout=120, log=tmp_path / f"chain-{stage}-{ids[stage]}.err")
        assert info["JobState"] == "COMPLETED", f"{stage}: {info}\n" + read_log(
            tmp_path / f"chain-{stage}-{ids[stage]}.err")
    records = stub_records(stub_log)
    order = [r["name"] for r in sorted(records, key=lambda r: r["time"])]
    assert order == ["extract_features"] * 4 + ["pretrain"] * 2 + ["finetune"] * 2, order  # 2 datasets x 2 ranks
    extract = [r["argv"] for r in records if r["name"] == "extract_features"]
    assert sorted(a[1] for a in extract) == sorted([env["DATASET"]] * 2 + [env["FINETUNE_DATASET"]] * 2)
    pretrain_dir = tmp_path / "runs" / "chain-pretrain"
    finetune = next(r["argv"] for r in records if r["name"] == "finetune")
    assert finetune[:4] == ["--config", "tiny-ft", "--run-dir", str(tmp_path / "runs" / "chain-finetune")]
    assert f"train.init_from={pretrain_dir}/export" in finetune
    assert f"data.dataset={env['FINETUNE_DATASET']}" in finetune
    assert (tmp_path / "runs" / "chain-finetune" / "summary.json").exists()


def test_pipeline_failed_stage_cancels_the_rest(slurm_cluster, tmp_path, stub_root):
    env = {"MMM4REC_ROOT": "", "STUB_FAIL": "pretrain", "NAME": "broken", "RUNS_DIR": str(tmp_path / "runs")}
    proc = slurm_cluster.run("bash", str(stub_root / "slurm" / "pipeline.sh"), *CPU_PROFILE, env=env, cwd=tmp_path)
    ids = dict(line.split() for line in proc.stdout.splitlines())
    assert ids["extract"] == "none", "no DATASET: no extract job"
    err = tmp_path / f"broken-pretrain-{ids['pretrain']}.err"
    info = slurm_cluster.wait(ids["pretrain"], timeout=90, log=err)
    assert info["JobState"] == "FAILED" and "failing on purpose" in read_log(err), f"{info}\n{read_log(err)}"
    info = slurm_cluster.wait(ids["finetune"], timeout=60)
    assert info["JobState"] == "CANCELLED", f"the dependent job must not wait forever: {info}"


# ---- the cluster tooling itself ------------------------------------------------------------------------------

def test_stop_leaves_no_daemon_and_no_job(make_cluster, tmp_path):
    cluster = make_cluster()
    cluster.start()
    pids = cluster.pids()
    assert sorted(pids.values()) == ["munged", "slurmctld", "slurmd", "slurmd"]
    assert all(daemon_alive(pid, name) for pid, name in pids.items())
    nodes = cluster.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")
    assert sorted(n.strip() for n in nodes if n.strip()) == ["n1 idle", "n2 idle"]
    # a job still running at stop time is cancelled: no slurmstepd or task outlives the cluster
    pidfile = tmp_path / "task.pid"
    job = cluster.sbatch("--nodes=1", f"--output={tmp_path / 'sleep.log'}", "--wrap",
                         f"echo $$ > {pidfile}; exec sleep 600", cwd=tmp_path)
    cluster.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=60, what="job start",
                     job_id=job)
    task_pid = int(pidfile.read_text())
    proc = cluster.stop()
    assert proc.returncode == 0, proc.stderr
    left = {pid: name for pid, name in pids.items() if daemon_alive(pid, name)}
    assert not left, f"daemons left running: {left}"
    assert not daemon_alive(task_pid, "sleep"), "the job's process outlived the cluster"
    assert not list((cluster.dir / "run").glob("*.pid"))
    # stopping again is a no-op
    assert cluster.stop().returncode == 0
