"""SASRec-style ID-only baseline (Kang & McAuley, 2018) on the same tables, losses and evaluation as MMM4Rec."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import ConfigError, ModelConfig
from .items import ItemFeatures
from .recommender import Batch, ItemTables, SequentialRecommender, init_weights


class SASRec(SequentialRecommender):
    """Learned item + position embeddings, pre-norm causal self-attention blocks, read-out at length-1."""

    arch = "sasrec"
    domain_specific = ("item_emb",)  # everything it knows of an item is its ID embedding
    reads_content = False

    def __init__(self, cfg: ModelConfig, features: ItemFeatures):
        super().__init__(cfg, features)
        N = cfg.d_model
        if N % cfg.n_heads_sasrec:
            raise ConfigError(f"model.d_model {N} is not divisible by model.n_heads_sasrec ({cfg.n_heads_sasrec})")
        self.item_emb = nn.Embedding(self.num_items + 1, N, padding_idx=0)
        self.held_items = len(features.text)
        self.pos_emb = nn.Embedding(cfg.max_len, N)
        block = nn.TransformerEncoderLayer(N, cfg.n_heads_sasrec, dim_feedforward=N, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(N, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(cfg.max_len), persistent=False)
        self.apply(init_weights)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def item_tables(self, ids: Optional[torch.Tensor] = None) -> ItemTables:
        if ids is None:  # the rows this process holds (all of them, or its item-parallel shard)
            emb = self.item_emb.weight[self.first_id : self.first_id + self.held_items]
        else:
            emb = self.item_emb(ids)
        return ItemTables((emb,), emb / self.cfg.temperature, None if ids is not None else self.first_id)

    def encode(self, batch: Batch, history: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = history[0] + self.pos_emb.weight[None]
        # right padding: the causal mask alone keeps padding out of every real position
        h = self.norm(self.blocks(self.dropout(x), mask=self.causal, is_causal=True))
        return h[torch.arange(len(h), device=h.device), batch.lengths - 1]
