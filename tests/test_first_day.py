"""A new user's first day (issue 23, items 4 and 7): CPU presets and the bf16 warning, runs named after their
dataset (an existing run resumes where it is), what a run says at start-up and in TensorBoard, the commands'
--help / --print-config, and a one-line error that ends a 2-process torchrun job's output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import REPO, free_port, run, subprocess_env

from mmm4rec.config import dataset_run_name, load_config, named_after_dataset
from mmm4rec.train.engine import precision_warning

BIN = Path(sys.executable).parent


def mmm4rec(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmm4rec", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ item 4: CPU defaults
def test_cpu_presets_are_cpu_sized_and_gpu_presets_warn_on_an_emulating_cpu():
    for name in ("cpu_pretrain", "cpu_finetune"):
        cfg = load_config(name)
        assert cfg.train.precision == "auto" and cfg.data.batch_size <= 256 and cfg.train.grad_accum == 1
    assert load_config("cpu_pretrain").train.max_steps and load_config("cpu_finetune").train.epochs <= 8
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    paper = load_config("finetune")
    assert paper.train.precision == "bf16"
    message = precision_warning(paper, cpu, "bf16", native=False)
    assert "train.precision=bf16 on a CPU without native bf16" in message and "~25x slower" in message
    assert "cpu_finetune" in message and "\n" not in message
    assert precision_warning(paper, cpu, "bf16", native=True) is None
    assert precision_warning(paper, cuda, "bf16", native=False) is None
    assert precision_warning(load_config("cpu_finetune"), cpu, "fp32", native=False) is None


def test_pretraining_presets_validate_on_held_out_users():
    for name in ("pretrain", "ml1m_pretrain", "cpu_pretrain"):
        assert load_config(name).data.holdout_users > 0, name


def test_runs_are_named_after_the_dataset_and_an_existing_run_stays_where_it_is(tmp_path):
    runs = tmp_path / "runs"

    def named(preset, *sets):
        return named_after_dataset(load_config(preset, list(sets)), preset, list(sets), runs).name

    ft = "train.task=finetune"
    assert named("cpu_finetune", "data.dataset=data/shop", ft) == "shop-finetune"
    assert named("cpu_pretrain", "data.dataset=s3://bucket/logs/shop-2024/dataset.json",
                 "train.task=pretrain") == "shop-2024-pretrain"
    assert named("cpu_finetune", "data.dataset=data/shop", "name=mine", ft) == "mine"  # explicit
    assert named("ml100k_finetune", "data.dataset=data/ml-100k", ft) == "ml100k-finetune"  # the preset's own data
    # a run this command made before the rule (runs/<preset name>, same dataset) keeps its folder
    (runs / "cpu-finetune").mkdir(parents=True)
    (runs / "cpu-finetune" / "run.json").write_text(json.dumps({"dataset": "data/shop"}))
    assert named("cpu_finetune", "data.dataset=data/shop", ft) == "cpu-finetune"
    assert named("cpu_finetune", "data.dataset=data/other", ft) == "other-finetune"
    assert dataset_run_name("data/shop/", "finetune") == "shop-finetune"


# ------------------------------------------------------------------------------------- item 7: the commands
def test_help_and_print_config_of_every_command():
    done = mmm4rec("evaluate", "--help")
    assert done.returncode == 0 and "Full-ranking evaluation of an export" in " ".join(done.stdout.split())
    done = mmm4rec("extract", "--dataset", "data/shop", "--text", "minilm", "--print-config")
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["dataset"] == "data/shop" and printed["encoder"]["text"] == "minilm"
    done = mmm4rec("finetune", "--config", "cpu_finetune", "--set", "data.dataset=data/shop", "--print-config")
    assert done.returncode == 0 and yaml.safe_load(done.stdout)["name"] == "shop-finetune"
    done = mmm4rec("--help")
    assert "prepare" in done.stdout and "cpu_finetune" in done.stdout


# ----------------------------------------------------------------------------------- item 7: what a run shows
def test_a_pretraining_run_logs_its_start_and_fills_tensorboard(tiny_dataset, tmp_path):
    """cpu_pretrain on a tiny dataset, capped at 6 steps: start-up phases and the first step at once, an ETA to
    max_steps, validation on held-out users (the preset's default), and per validation a top-k text and the
    item projector, read back with TensorBoard's own readers."""
    from google.protobuf import text_format
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    out = tmp_path / "run"
    proc = run("pretrain.py", ["--config", "cpu_pretrain", "--set", f"data.dataset={tiny_dataset}",
                               "--set", "data.batch_size=16", "--set", "train.max_steps=6", "--set",
                               "train.log_every=3", "--run-dir", str(out)])
    log = proc.stderr
    for phase in ("start-up: data", "start-up: model", "start-up: engine"):
        assert phase in log, log[-3000:]
    assert "step 1: first batch" in log and "ETA max_steps 6" in log and "ETA epoch" not in log
    assert "valid ndcg@10" in log and "FutureWarning" not in log
    first = next(line for line in log.splitlines() if "step 1: first batch" in line)
    assert log.index(first) < log.index("step 3 epoch 0")
    tb = out / "tensorboard"
    events = EventAccumulator(str(tb), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("examples/top_k/text_summary")
    assert [t.step for t in texts] == [6]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert "**validation user 1**" in text and "| 1 | syn:" in text and "| 10 | syn:" in text
    assert "Title:" in text  # titles beside the keys
    config = text_format.Parse((tb / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    meta = (tb / embedding.metadata_path).read_text().splitlines()
    vectors = (tb / embedding.tensor_path).read_text().splitlines()
    assert meta[0] == "key\ttitle" and len(meta) == 61 and len(vectors) == 60  # the 60 items, padding left out
    assert all(row.split("\t")[1] for row in meta[1:]) and len(vectors[0].split("\t")) == 64


def test_a_one_line_error_ends_a_two_process_torchrun_job(tmp_path):
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "launchers" / "finetune.py"), "--config", "tiny", "--set",
           f"data.dataset={tmp_path / 'missing'}", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    message = f"{tmp_path / 'missing'}/dataset.json: no dataset manifest"
    errors = [line for line in proc.stderr.splitlines() if " ERROR mmm4rec: " in line]
    assert len(errors) == 1 and "[rank 0/2]" in errors[0] and message in errors[0], proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip() and set(line.strip()) != {"="}][-1]
    assert last.strip().startswith("traceback :") and message in last, proc.stderr[-2000:]
    assert "To enable traceback" not in proc.stderr
