"""Frozen text tower: a joint model's ``get_text_features``, or any AutoModel with masked mean pooling (as
sentence-transformers does for MiniLM). Output: L2-normalised float32."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer

from .models import autocast, is_joint, pooled, resolve


class TextEncoder:
    def __init__(self, model: Any, source: str, max_tokens: int, device: torch.device):
        self.model = model
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(resolve(source))
        self.joint = is_joint(model)
        config = model.config.text_config if self.joint else model.config
        self.max_tokens = min(max_tokens, getattr(config, "max_position_embeddings", max_tokens))
        # SigLIP was trained on texts padded to a fixed length; padding changes its features, so joint models
        # always get max_length padding. Mean pooling ignores padding, so AutoModel text towers pad per batch.
        self.padding = "max_length" if self.joint else True

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        inputs = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask") if k in batch}
        with autocast(self.device):
            if self.joint:
                emb = pooled(self.model.get_text_features(**inputs))
            else:
                hidden = self.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()
