"""Self-contained exports: what they hold, and every way loading one refuses what does not fit (missing or changed
files, features of another encoder or catalogue, old-style folders) with a one-line error naming the culprit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from serving_helpers import store_of, train

from mmm4rec.commands import main
from mmm4rec.config import ConfigError, EncoderConfig, RunConfig, save_config
from mmm4rec.data.features import FeatureStore
from mmm4rec.data.schema import DataError
from mmm4rec.model import ItemFeatures, build_model, from_pretrained
from mmm4rec.serving import EXPORT_FORMAT, Recommender, load_export, write_export
from mmm4rec.serving.export import item_features

T0 = 1_600_000_000


def test_an_export_holds_weights_catalogue_candidates_features_and_provenance(export_dir, trained):
    model, store = trained
    meta = json.loads((export_dir / "config.json").read_text())
    assert meta["format"] == EXPORT_FORMAT and meta["num_items"] == 60
    assert meta["provenance"] == {"test": "serving", "steps": 25}
    assert meta["encoder"] == store.manifest["encoder"]
    assert json.loads((export_dir / "items.json").read_text()) == store.keys
    with torch.no_grad():
        assert torch.equal(load_file(export_dir / "candidates.safetensors")["scores"], model.item_tables().scores)
    copy = FeatureStore.open(export_dir / "features")  # a complete feature store
    assert copy.keys == store.keys and (copy.text == store.text).all()
    assert os.stat(export_dir / "features" / "text.npy").st_ino == os.stat(store.path / "text.npy").st_ino  # linked
    # the weights still load the way the evaluate launcher loads them
    again = from_pretrained(export_dir, item_features(store))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_write_export_wants_a_new_folder_and_the_models_own_store(trained, other_dataset, tmp_path):
    model, store = trained
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("not ours")
    with pytest.raises(ConfigError, match="full: not empty"):
        write_export(model, tmp_path / "full", store=store, provenance={})
    assert (tmp_path / "full" / "keep.txt").read_text() == "not ours"
    with pytest.raises(DataError, match="45 items, but the model was built for 60"):
        write_export(model, tmp_path / "other", store=store_of(other_dataset), provenance={})


def test_the_model_must_have_been_trained_on_the_stores_features(trained, tmp_path):
    """Same catalogue size, other features: the candidates read back do not match the model."""
    model, store = trained
    feats = item_features(store)
    shuffled = build_model(model.cfg, ItemFeatures(feats.text.flip(0)))
    shuffled.load_state_dict(model.state_dict())
    with pytest.raises(DataError, match="candidate vectors differ from the model's"):
        write_export(shuffled, tmp_path / "e", store=store, provenance={})


@pytest.fixture
def copy_of(export_dir, tmp_path):
    """A private copy of the shared export, safe to damage."""
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)
    return out


@pytest.mark.parametrize("damage, message", [
    (lambda e: (e / "features" / "text.npy").unlink(), r"features/text.npy: missing \(listed in"),
    (lambda e: shutil.rmtree(e / "features"), "export/features: the export's feature store is missing"),
    (lambda e: (e / "items.json").write_text(json.dumps(["<pad>"] + [f"x{i}" for i in range(60)])),
     "items.json: sha256 does not match"),
    (lambda e: _flip_last_byte(e / "model.safetensors"), "model.safetensors: sha256 does not match"),
    (lambda e: _flip_last_byte(e / "features" / "text.npy"), "text.npy: sha256 does not match"),
    (lambda e: (e / "config.json").write_text("{"), "config.json: sha256 does not match export.json"),
    (lambda e: (e / "config.json").unlink(), r"config.json: missing \(listed in"),
])
def test_missing_or_changed_files_are_refused_never_replaced_by_zeros(copy_of, damage, message):
    damage(copy_of)
    with pytest.raises(DataError, match=message) as e:
        Recommender.from_pretrained(copy_of)
    assert "\n" not in str(e.value)


def _flip_last_byte(path):
    # the hard-linked feature files are shared with the store: replace the file, never write through the link
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def test_an_old_style_export_is_refused_with_the_way_out(trained, tmp_path):
    model, store = trained
    model.save_pretrained(tmp_path / "old", extra={"encoder": store.manifest["encoder"]})
    with pytest.raises(DataError, match="not a self-contained export .*mmm4rec export --run"):
        Recommender.from_pretrained(tmp_path / "old")


def test_referenced_features_are_pinned_by_their_hashes(trained, tiny_dataset, tmp_path):
    model, store = trained
    linked = tmp_path / "store"
    shutil.copytree(store.path, linked)
    export = write_export(model, tmp_path / "e", store=FeatureStore.open(linked), provenance={}, copy_features=False)
    assert not (export / "features").exists()
    assert json.loads((export / "config.json").read_text())["features"]["path"] == str(linked.resolve())
    history = [[(store.keys[3], T0), (store.keys[9], T0 + 60)]]
    want = Recommender.from_pretrained(export).recommend(history)
    moved = tmp_path / "moved"
    linked.rename(moved)
    with pytest.raises(DataError, match=f"{linked}: the feature store .* is missing .*features="):
        Recommender.from_pretrained(export)
    assert Recommender.from_pretrained(export, features=moved).recommend(history) == want
    moved.rename(linked)
    _flip_last_byte(linked / "text.npy")
    with pytest.raises(DataError, match="store/text.npy: sha256 does not match"):
        Recommender.from_pretrained(export)


def test_another_catalogue_is_refused_unless_transfer(export_dir, trained, other_dataset):
    model, _ = trained
    other = store_of(other_dataset)
    with pytest.raises(ConfigError, match=r"another catalogue than the export .*45 items vs 60.*pass transfer=True"):
        Recommender.from_pretrained(export_dir, features=other.path)
    rec = Recommender.from_pretrained(export_dir, features=other.path, transfer=True)
    assert rec.keys == other.keys
    # content only: the backbone of the export on the other catalogue's features, ID tables zero
    ref = build_model(model.cfg, item_features(other))
    state = {k: v for k, v in model.state_dict().items() if "id_bias" not in k}
    ref.load_state_dict(state, strict=False)
    assert all(not t.any() for n, t in ref.state_dict().items() if "id_bias" in n)
    with torch.no_grad():
        assert torch.allclose(rec.candidates, ref.eval().item_tables().scores, atol=1e-6)
    assert all(key.startswith("syn:") and key in other.index for key, _ in rec.recommend([[(other.keys[1], T0)]])[0])


def test_features_of_another_encoder_are_refused(export_dir, multimodal):
    with pytest.raises(DataError, match="features of another encoder"):
        Recommender.from_pretrained(export_dir, features=multimodal[3].path, transfer=True)


def test_sasrec_cannot_serve_another_catalogue(tiny_dataset, other_dataset, tmp_path):
    store = store_of(tiny_dataset)
    export = write_export(train(tiny_dataset, store, steps=2, arch="sasrec"), tmp_path / "e", store=store,
                          provenance={})
    with pytest.raises(ConfigError, match="SASRec scores items by learned ID embeddings only"):
        load_export(export, features=store_of(other_dataset).path, transfer=True)


def test_the_export_command_turns_a_run_into_an_export(trained, tiny_dataset, tmp_path, capsys):
    """A run directory as the trainer leaves it (config.yaml, export/ from save_pretrained) -> `mmm4rec export`."""
    model, store = trained
    run = tmp_path / "run"
    run.mkdir()
    cfg = RunConfig()
    cfg.model, cfg.data.dataset = model.cfg, str(tiny_dataset)
    save_config(cfg, run / "config.yaml")
    model.save_pretrained(run / "export", extra={"encoder": store.manifest["encoder"]})
    argv = ["export", "--run", str(run), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"export": str(tmp_path / "out"), "items": 60, "features": "copied"}
    provenance = json.loads((tmp_path / "out" / "config.json").read_text())["provenance"]
    assert provenance["run"] == str(run.resolve()) and provenance["run_config"]["data"]["dataset"] == str(tiny_dataset)
    history = [[(store.keys[3], T0), (store.keys[9], T0 + 60)]]
    direct = write_export(model, tmp_path / "direct", store=store, provenance={})
    assert Recommender.from_pretrained(tmp_path / "out").recommend(history) == \
        Recommender.from_pretrained(direct).recommend(history)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'out'}: exists; name a new folder"
    assert main(argv[:-1] + [str(tmp_path / "with-ann"), "--ann"]) == 0  # the ANN index built into its cache
    assert json.loads(capsys.readouterr().out)["ann_cache"]["folder"] == str(tmp_path / "with-ann" / "ann-cache")
    served = Recommender.from_pretrained(tmp_path / "with-ann", ann_min_items=1)
    assert served.prepare_ann().loaded_from_cache
    assert [key for key, _ in served.recommend(history)[0]] == \
        [key for key, _ in Recommender.from_pretrained(direct, ann_min_items=None).recommend(history)[0]]
    assert EncoderConfig() == cfg.data.encoder  # the run's store is the default MiniLM one


@pytest.mark.slow
def test_serving_needs_none_of_the_training_extras(export_dir, tmp_path):
    """deepspeed, accelerate and tensorboard made unimportable: an export still loads, ranks and adds items."""
    code = ("import sys\nfor m in ('deepspeed', 'accelerate', 'tensorboard'):\n    sys.modules[m] = None\n"
            "from mmm4rec import Recommender\n"
            f"rec = Recommender.from_pretrained({str(export_dir)!r})\n"
            "rec.add_items(['new:1'], ['a new item'])\n"
            "print(len(rec.recommend([[('new:1', 1)]], k=4)[0]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "4"
