"""An export is one hash-checked whole: export.json lists every file of the folder (config.json included) with its
sha256 and carries the sha256 of its own content. An edited config.json (a setting that keeps every tensor shape),
a hand-"fixed" manifest, a removed entry or sha256, a name leading out of the folder (checked by its spelling
before any file is touched: no existence or content oracle), a symlink leaving the folder, and the unprotected
older format are each refused with one line naming the file. Real exports on the tiny dataset; each test fails on
the code before the fix, but the guard that a symlink within the folder is still followed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmm4rec.data.schema import DataError
from mmm4rec.data.shards import sha256_file
from mmm4rec.serving import Recommender, write_export
from tests.serving.serving_helpers import store_of, train

T0 = 1_600_000_000
MANIFEST = "export.json"


@pytest.fixture(scope="module")
def shared(tiny_dataset, tmp_path_factory) -> Path:
    store = store_of(tiny_dataset)
    return write_export(train(tiny_dataset, store, steps=5), tmp_path_factory.mktemp("identity") / "export",
                        store=store, provenance={})


@pytest.fixture
def export(shared, tmp_path) -> Path:
    """A private copy, safe to damage (the feature files are copies, not links to the shared store)."""
    return Path(shutil.copytree(shared, tmp_path / "export"))


def refused(export: Path, message: str) -> str:
    with pytest.raises(DataError) as e:
        Recommender.from_pretrained(export)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    return str(e.value)


def manifest(export: Path) -> dict:
    return json.loads((export / MANIFEST).read_text())


def forge(export: Path, files: dict) -> None:
    """What someone who knows the format does: new entries, and the manifest's own sha256 recomputed."""
    from mmm4rec.serving.export import manifest_digest

    m = manifest(export)
    m["files"] = files
    m["sha256"] = manifest_digest(m)
    (export / MANIFEST).write_text(json.dumps(m))


def edit_config(export: Path, edit) -> None:
    meta = json.loads((export / "config.json").read_text())
    edit(meta)
    (export / "config.json").write_text(json.dumps(meta, indent=2))


def test_every_file_of_the_export_is_listed_with_its_sha256(export):
    listed = manifest(export)["files"]
    on_disk = {str(p.relative_to(export)) for p in export.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(listed) == on_disk and "config.json" in listed and "features/text.npy" in listed
    assert all(listed[name] == sha256_file(export / name) for name in listed)
    history = [[(store_of_export(export)[3], T0), (store_of_export(export)[9], T0 + 60)]]
    assert len(Recommender.from_pretrained(export).recommend(history, k=5)[0]) == 5


def store_of_export(export: Path) -> list[str]:
    return json.loads((export / "items.json").read_text())


# ------------------------------------------------------------------------------------------ config.json is covered
@pytest.mark.parametrize("edit", [
    lambda meta: meta["model"].update(norm_eps=10),  # served without a word: top score 5.43 -> 0.58
    lambda meta: meta["model"]["ssd"].update(skip="mamba"),  # another top 10
    lambda meta: meta["provenance"].update(run="elsewhere"),
], ids=["norm_eps", "ssd.skip", "provenance"])
def test_an_edited_config_json_is_refused_naming_it(export, edit):
    edit_config(export, edit)
    refused(export, "config.json: sha256 does not match export.json")


def test_a_hand_fixed_manifest_is_refused(export):
    """config.json edited and its entry updated, the manifest's own sha256 left as it was."""
    edit_config(export, lambda meta: meta["model"].update(norm_eps=10))
    m = manifest(export)
    m["files"]["config.json"] = sha256_file(export / "config.json")
    (export / MANIFEST).write_text(json.dumps(m))
    refused(export, "export.json: its own sha256 does not match its content")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "items.json", "candidates.safetensors",
                                  "features/text.npy", "features/manifest.json"])
def test_a_removed_entry_is_refused(export, name):
    if name == "model.safetensors":  # the probe's case: every layer weight zeroed, then its entry removed
        state = load_file(export / "model.safetensors")
        save_file({k: torch.zeros_like(v) for k, v in state.items()}, export / "model.safetensors")
    files = manifest(export)["files"]
    del files[name]
    forge(export, files)
    refused(export, f"export.json: no entry for {name}")


@pytest.mark.parametrize("value", [None, "", "0" * 63, 42])
def test_an_entry_without_a_sha256_is_refused(export, value):
    files = manifest(export)["files"]
    files["model.safetensors"] = value
    forge(export, files)
    refused(export, "export.json: entry 'model.safetensors' has no sha256")


@pytest.mark.parametrize("damage, message", [
    (lambda e: (e / MANIFEST).unlink(), "export.json: missing, so no file of this export can be checked"),
    (lambda e: (e / MANIFEST).write_text("{"), "export.json: not valid JSON"),
    (lambda e: (e / MANIFEST).write_text("[]"), "export.json: expected"),
    (lambda e: (e / MANIFEST).write_bytes(b"{\"format\": \"caf\xe9\"}"), "export.json: not valid UTF-8"),
])
def test_a_missing_or_broken_manifest_is_refused(export, damage, message):
    damage(export)
    refused(export, message)


# ------------------------------------------------------------------------------------------ names stay inside
@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "features/../../secret", "../secret",
                                  "", "features//text.npy", "./config.json", "features\\..\\..\\secret"])
def test_a_name_leading_out_of_the_folder_is_refused_before_any_file_is_read(export, monkeypatch, name):
    """Refused by its spelling: whether the target exists (and what it holds) makes no difference, and no file is
    hashed before the names are checked."""
    secret = export.parent / "secret"
    secret.write_text("the target exists")
    files = manifest(export)["files"]
    files[name] = sha256_file(secret)  # the right hash: before the fix, the export loaded
    forge(export, files)
    hashed = []
    import mmm4rec.serving.export as export_module

    monkeypatch.setattr(export_module, "sha256_file", lambda path, *a: hashed.append(str(path)) or
                        sha256_file(path, *a))
    first = refused(export, "export.json: entry")
    assert "not a file name inside the export folder" in first and hashed == []
    secret.unlink()  # no oracle: the same answer when the target does not exist
    assert refused(export, "export.json: entry") == first


def test_a_symlink_leaving_the_folder_is_refused(export, tmp_path):
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(export / "features" / "text.npy", outside)  # the same bytes: the sha256 matches
    (export / "features" / "text.npy").unlink()
    (export / "features" / "text.npy").symlink_to(outside)
    refused(export, "features/text.npy: a symbolic link leading out of the export folder")


def test_a_symlink_inside_the_folder_is_followed(export):
    (export / "spare").mkdir()
    os.replace(export / "items.json", export / "spare" / "items.json")
    (export / "items.json").symlink_to(Path("spare") / "items.json")
    Recommender.from_pretrained(export)


def test_feature_names_in_config_json_stay_inside_the_store(export):
    """config.json (hashed, so this needs a forger) names the store's files: only the store's own names."""
    edit_config(export, lambda meta: meta["features"]["sha256"].update({"../../../../etc/passwd": "0" * 64}))
    files = manifest(export)["files"]
    files["config.json"] = sha256_file(export / "config.json")
    forge(export, files)
    refused(export, "config.json: features.sha256 names '../../../../etc/passwd', not a file of a feature store")


def test_a_non_regular_file_is_refused_without_reading_it(export):
    (export / "candidates.safetensors").unlink()
    os.mkfifo(export / "candidates.safetensors")  # reading it would block for ever
    refused(export, "candidates.safetensors: not a regular file")


# ------------------------------------------------------------------------------------------ older exports
def test_an_export_of_the_older_unprotected_format_is_refused_with_the_way_out(export):
    """mmm4rec-export/1 hashed the other files from config.json, leaving config.json itself unprotected."""
    files = manifest(export)["files"]
    (export / MANIFEST).unlink()
    edit_config(export, lambda meta: meta.update(format="mmm4rec-export/1", sha256={
        name: files[name] for name in ("model.safetensors", "items.json", "candidates.safetensors")}))
    message = refused(export, "config.json: an export of the older format mmm4rec-export/1")
    assert "re-export" in message and "mmm4rec export --run" in message
