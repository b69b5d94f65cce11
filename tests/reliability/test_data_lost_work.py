"""Lost-work findings: replacing a folder the project did not write (a user's folder named as data.features,
--features or a converter's --out), and "updating" the feature store of another dataset."""
import json
import logging

import pytest

from mmm4rec.config import EncoderConfig
from mmm4rec.data import atomic
from mmm4rec.data.dataset import write_dataset
from mmm4rec.data.features import FeatureStore, ensure_features
from mmm4rec.data.schema import DataError
from mmm4rec.data.synthetic import generate
from tests.data.data_helpers import toy_items, toy_seqs, write_toy

MINILM = EncoderConfig(batch_size=16)


def users_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("two years of work")
    return path


def assert_untouched(path):
    assert sorted(p.name for p in path.iterdir()) == ["thesis.tex"]
    assert (path / "thesis.tex").read_text() == "two years of work"


def test_a_converter_refuses_to_replace_a_users_folder(tmp_path):
    mine = users_folder(tmp_path / "mine")
    with pytest.raises(DataError) as e:
        write_toy(mine)
    assert str(mine) in str(e.value) and "not written by mmm4rec" in str(e.value) and "\n" not in str(e.value)
    assert_untouched(mine)
    with pytest.raises(DataError, match="not written by mmm4rec"):
        generate(mine, 10, 8, images="none")
    assert_untouched(mine)


def test_the_feature_store_refuses_a_users_folder_before_encoding(tmp_path, caplog):
    write_toy(tmp_path / "ds", images=False)
    mine = users_folder(tmp_path / "mine")
    with caplog.at_level(logging.INFO, logger="mmm4rec.data.features"), pytest.raises(DataError) as e:
        ensure_features(tmp_path / "ds", MINILM, features_dir=mine)
    assert str(mine) in str(e.value) and "not written by mmm4rec" in str(e.value)
    assert_untouched(mine)
    assert "item shard" not in caplog.text  # refused up front, not after hours of encoding


def test_folders_the_project_writes_are_marked_and_replaced(tmp_path):
    write_toy(tmp_path / "ds", images=False)
    store = ensure_features(tmp_path / "ds", MINILM)
    assert (tmp_path / "ds" / atomic.MARKER).is_file() and (store / atomic.MARKER).is_file()
    write_toy(tmp_path / "ds", n_items=14, images=False)  # rewriting a dataset folder it wrote
    assert FeatureStore.open(ensure_features(tmp_path / "ds", MINILM)).num_items == 14  # and updating the store
    (tmp_path / "empty").mkdir()
    write_toy(tmp_path / "empty")  # an empty folder is fine too


def test_folders_written_before_the_marker_are_recognised_only_when_they_hold_nothing_else(tmp_path):
    write_toy(tmp_path / "ds", images=False)
    store = ensure_features(tmp_path / "ds", MINILM)
    for folder in (tmp_path / "ds", store):  # as an older version left them
        (folder / atomic.MARKER).unlink()
    write_toy(tmp_path / "ds", n_items=13, images=False)
    assert FeatureStore.open(ensure_features(tmp_path / "ds", MINILM)).num_items == 13
    (tmp_path / "ds" / atomic.MARKER).unlink()
    (tmp_path / "ds" / "notes.txt").write_text("mine")  # a file no converter writes
    with pytest.raises(DataError, match="not written by mmm4rec"):
        write_toy(tmp_path / "ds", images=False)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_the_feature_store_of_another_dataset_is_refused(tmp_path):
    write_toy(tmp_path / "ds", images=False)
    store = ensure_features(tmp_path / "ds", MINILM, features_dir=tmp_path / "shared-store")
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    items = toy_items(9, domain="other", images=False)
    write_dataset(tmp_path / "other", name="other", items=items, seqs=toy_seqs([r.key for r in items], 5, "other"),
                  provenance={}, licence="test")
    with pytest.raises(DataError) as e:
        ensure_features(tmp_path / "other", MINILM, features_dir=store)
    message = str(e.value)
    assert str(store) in message and "'toy'" in message and "'other'" in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    assert json.loads((store / "manifest.json").read_text())["dataset"]["name"] == "toy"
