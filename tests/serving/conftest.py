"""Fixtures for the serving tests: tiny MMM4Rec models trained on the shared tiny dataset (MiniLM features) and on
a multi-modal one (tiny random SigLIP features), and a self-contained export."""
from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import store_of, tiny_siglip, train

from mmm4rec.config import EncoderConfig
from mmm4rec.data.features import ensure_features
from mmm4rec.data.synthetic import generate
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.stream import SeqIndex
from mmm4rec.serving import write_export
from mmm4rec.serving.export import catalogue_extras


@pytest.fixture(scope="session")
def trained(tiny_dataset):
    """MMM4Rec (text + ID tables) on tiny_dataset, and its store."""
    store = store_of(tiny_dataset)
    return train(tiny_dataset, store), store


@pytest.fixture(scope="session")
def export_dir(trained, tiny_dataset, tmp_path_factory) -> Path:
    """With the popularity (training-target counts) and titles `mmm4rec export` and training write."""
    model, store = trained
    dataset = load_manifest(tiny_dataset)
    extras = catalogue_extras(dataset, store, SeqIndex.load_or_build(dataset, store.index, store.path), "train")
    return write_export(model, tmp_path_factory.mktemp("export") / "export", store=store,
                        provenance={"test": "serving", "steps": 25}, **extras)


@pytest.fixture(scope="session")
def multimodal(tmp_path_factory):
    """(dataset, encoder config, trained MMM4Rec, store): generated images, features from a tiny SigLIP."""
    root = tmp_path_factory.mktemp("serving-mm")
    encoder = EncoderConfig(text=tiny_siglip(root / "siglip"), image=str(root / "siglip"), batch_size=16)
    dataset = root / "data"
    generate(dataset, 60, 30, images="generated", seed=3, shard_size=30)
    ensure_features(dataset, encoder)
    store = store_of(dataset, encoder)
    return dataset, encoder, train(dataset, store, steps=10), store
