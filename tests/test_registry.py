"""A component is added in one place: an architecture and a loss registered by a module outside the package
train, validate, export and evaluate through the real launcher, with their own options; the registry is the only
list the config, the CLI and the export loader consult."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmm4rec.config import ConfigError, load_config
from mmm4rec.registry import ARCHS, LOSSES, Registry, RegistryError

from tests.conftest import REPO, run

PLUGINS = Path(__file__).parent / "plugins"
TOY = ["--plugin", "toy_components", "--set", "model.arch=toy_mean", "--set", "train.loss=toy_smoothed"]


def plugin_env() -> dict:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH", "")]))}


def test_a_toy_architecture_and_loss_from_outside_the_package_train_export_and_evaluate(tiny_dataset, tmp_path):
    out = tmp_path / "toy"
    common = ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--set", "train.max_steps=12",
              "--set", "train.precision=fp32", "--set", "train.log_every=2"]
    run("finetune.py", [*common, *TOY, "--set", "model.options.recency=0.5",
                        "--set", "train.loss_options.smoothing=0.2", "--run-dir", str(out)], env=plugin_env())
    log = (out / "train.log").read_text()
    assert "toy_mean: recency 0.5" in log and "toy_smoothed loss: smoothing 0.2" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 12 and summary["test"]["ndcg@10"] > 0
    config = json.loads((out / "export" / "config.json").read_text())
    assert config["arch"] == "toy_mean" and config["model"]["options"] == {"recency": 0.5}
    # the export is evaluated by the same launcher, the plug-in named again (nothing read from a run imports code)
    proc = run("evaluate.py", ["--plugin", "toy_components", "--checkpoint", str(out), "--split", "test"],
               env=plugin_env())
    assert json.loads(proc.stdout)["ndcg@10"] == pytest.approx(summary["test"]["ndcg@10"], rel=1e-6)


def test_without_the_plugin_the_name_is_an_error_naming_the_key(tiny_dataset, tmp_path):
    proc = run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}",
                               "--set", "model.arch=toy_mean", "--run-dir", str(tmp_path / "r")], check=False)
    assert proc.returncode == 2
    assert "model.arch must be one of ['mmm4rec', 'sasrec'], got 'toy_mean'" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_plugins_own_options_are_checked_like_every_key(tiny_dataset, tmp_path):
    proc = run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", *TOY,
                               "--set", "model.options.recncy=1", "--run-dir", str(tmp_path / "r")],
               env=plugin_env(), check=False)
    assert proc.returncode == 2
    assert "model.options.recncy (did you mean model.options.recency?)" in proc.stderr
    assert not (tmp_path / "r" / "run.json").exists()


def test_a_missing_plugin_module_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "mmm4rec", "finetune", "--plugin", "no_such_plugin_xyz",
                           "--print-config"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: --plugin no_such_plugin_xyz: cannot import it (No module named 'no_such_plugin_xyz')"]


def test_builtins_take_no_options_and_names_are_checked_without_importing_torch():
    with pytest.raises(ConfigError, match=r"model.options: MMM4Rec takes no options"):
        from mmm4rec.model import ItemFeatures, build_model
        import torch
        build_model(load_config("tiny", ["model.options.x=1"]).model, ItemFeatures(torch.zeros(4, 8)))
    with pytest.raises(ConfigError, match=r"train.loss must be one of \['full', 'in_batch', 'sampled'\], got 'ful' "
                                          r"\(did you mean 'full'\?\)"):
        load_config("tiny", ["train.loss=ful"])
    code = "import sys; from mmm4rec.config import load_config; load_config('tiny'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=60).stdout.strip() == "False"


def test_a_name_is_registered_once():
    reg = Registry("thing", "x.thing")
    reg.builtin("a", "json:dumps")
    assert reg.get("a") is json.dumps
    reg.register("b", len)
    reg.register("b", len)  # the same component again: harmless (a module imported twice)
    with pytest.raises(RegistryError, match="thing 'b' is already registered"):
        reg.register("b", max)
    assert ARCHS.names() == sorted(set(ARCHS.names()) | {"mmm4rec", "sasrec"})
    assert {"full", "in_batch", "sampled"} <= set(LOSSES.names())


def test_the_package_has_no_import_circle():
    """tools/import_cycles.py over every module, lazy imports included (a lazy import only moves a circle)."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "import_cycles.py")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("0 import circle(s) among ")


def test_the_circle_checker_finds_a_lazy_circle(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_cycles", REPO / "tools" / "import_cycles.py")
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    package = tmp_path / "mmm4rec"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    monkeypatch.setattr(checker, "ROOT", tmp_path)
    edges = checker.graph()
    assert edges["mmm4rec.a"] == {"mmm4rec.sub.b"} and edges["mmm4rec.sub.b"] == {"mmm4rec.a"}
    assert edges["mmm4rec.c"] == set()  # annotations only
    assert checker.circles(edges) == [["mmm4rec.a", "mmm4rec.sub.b"]]
