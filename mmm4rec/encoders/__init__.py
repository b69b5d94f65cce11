"""Frozen item encoders for stage 1, built with transformers from a model name or a local folder.

``EncoderConfig.text`` / ``.image`` name the models: "minilm" is the offline all-MiniLM-L6-v2 default and
"mobilenet-v2" the offline ImageNet MobileNetV2 image tower (mobilenet.py); a CLIP or SigLIP name gives both towers
(name it in both fields, it is loaded once); any AutoModel text or vision model works too. Outputs are
L2-normalised float32 arrays, one row per input.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from mmm4rec.config import EncoderConfig

from .image import ImageEncoder
from .models import MINILM, MOBILENET, PROCEDURE, load, revision
from .text import TextEncoder

__all__ = ["Encoders", "TextEncoder", "ImageEncoder", "build_encoders", "encoder_identity", "encoder_slug",
           "identity_matches", "MINILM", "MOBILENET"]

log = logging.getLogger(__name__)


@dataclass
class Encoders:
    text: TextEncoder
    image: Optional[ImageEncoder]


def build_encoders(cfg: EncoderConfig, device: Optional[torch.device] = None) -> Encoders:
    device = device or torch.device("cpu")
    models: dict[str, Any] = {}

    def model(source: str) -> Any:
        if source not in models:
            models[source] = load(source, device)
        return models[source]

    text = TextEncoder(model(cfg.text), cfg.text, cfg.max_text_tokens, device)
    image = ImageEncoder(model(cfg.image), cfg.image, device) if cfg.image else None
    return Encoders(text, image)


def encoder_identity(cfg: EncoderConfig) -> dict[str, Any]:
    """Everything that determines the features (batch size does not). Stores compare it to decide on rebuilds."""
    return {
        "text": {"source": cfg.text, "revision": revision(cfg.text)},
        "image": {"source": cfg.image, "revision": revision(cfg.image)} if cfg.image else None,
        "max_text_tokens": cfg.max_text_tokens,
        "procedure": PROCEDURE,
    }


def identity_matches(want: dict[str, Any], have: dict[str, Any]) -> bool:
    """Whether features built by encoders ``have`` are what ``want`` asks for. A revision this machine cannot read
    (None: the encoder is not installed or downloaded here, the store was built elsewhere) matches the stored one,
    with a warning: training needs the features, not the encoder weights."""
    unread = [m for m in ("text", "image") if want[m] and want[m]["revision"] is None and have.get(m)]
    if want != {**have, **{m: {**have[m], "revision": None} for m in unread}}:
        return False
    for m in unread:
        log.warning("%s encoder %s is not available here to check its revision; trusting the feature store, built "
                    "with %s", m, want[m]["source"], have[m]["revision"])
    return True


def encoder_slug(cfg: EncoderConfig) -> str:
    """Folder name for a store: ``minilm``, ``google--siglip-base-patch16-224``, ``tiny-bert-1a2b3c4d`` (a local
    folder: its name plus a hash of its absolute path), text and image joined by ``+``."""

    def one(source: str) -> str:
        if source != MINILM and Path(source).is_dir():
            path = str(Path(source).resolve())
            return f"{Path(path).name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", source.replace("/", "--"))

    return one(cfg.text) + (f"+{one(cfg.image)}" if cfg.image else "")
