"""Fixtures for the data-pipeline tests. The tiny models are randomly initialised: their features are NOT
meaningful, they only exercise the plumbing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# huggingface_hub reads these at import time: set them before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from data_helpers import make_tiny_models, write_toy  # noqa: E402

from mmm4rec.data.schema import Manifest  # noqa: E402


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Manifest:
    return write_toy(tmp_path / "toy")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"))
