"""Frozen image tower: a joint model's ``get_image_features``, or any AutoModel vision model (its pooled output,
else the mean of its last hidden state), or the offline ``mobilenet-v2`` (mobilenet.py). Output: L2-normalised
float32.

Missing images (none stored, or unreadable in lenient mode) follow the reference implementation: they are
encoded as a blank white image, and the feature store flags them in ``image_missing.npy``.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor

from . import mobilenet
from .models import autocast, is_joint, pooled, resolve


class ImageEncoder:
    def __init__(self, model: Any, source: str, device: torch.device):
        self.model = model
        self.device = device
        # The PIL backend needs no torchvision and gives the same preprocessing on every machine.
        self.processor = (mobilenet.processor() if source == mobilenet.MOBILENET
                          else AutoImageProcessor.from_pretrained(resolve(source), backend="pil"))
        self.joint = is_joint(model)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device)
        with autocast(self.device):
            if self.joint:
                emb = pooled(self.model.get_image_features(pixel_values=pixels))
            else:
                out = self.model(pixel_values=pixels)
                emb = getattr(out, "pooler_output", None)
                if emb is None:
                    emb = out.last_hidden_state.mean(1)
        return torch.nn.functional.normalize(emb.float().flatten(1), dim=-1).cpu().numpy()

    @cached_property
    def blank(self) -> np.ndarray:
        """Features of the blank white image used for items without one (encoded alone: the same on every rank)."""
        return self([Image.new("RGB", (224, 224), "white")])[0]
