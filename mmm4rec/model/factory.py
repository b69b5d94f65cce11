"""Building a model by name (mmm4rec.registry.ARCHS) and loading a ``save_pretrained`` folder: the factory every
caller uses, so that the base class (recommender.py) and the architectures never import each other's modules."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from safetensors.torch import load_file

from ..config import ConfigError, ModelConfig
from ..registry import ARCHS
from .items import ItemFeatures
from .recommender import SequentialRecommender


def build_model(cfg: ModelConfig, features: ItemFeatures) -> SequentialRecommender:
    """The registered architecture ``model.arch`` over the catalogue's ``features``."""
    return ARCHS.get(cfg.arch)(cfg, features)


def from_pretrained(path: str | Path, features: Optional[ItemFeatures],
                    expect: Optional[ModelConfig] = None, transfer: bool = False) -> SequentialRecommender:
    """Load a ``save_pretrained`` folder with the catalogue's ``features`` (mmm4rec.serving.Recommender loads an
    export together with the features it carries). Features of another
    catalogue (a different item count) are an error unless ``transfer``: the export's ID tables are then dropped
    and the backbone loaded strictly. ``expect`` is the config the caller wants: a different window length,
    depth or width is an error."""
    cfg, meta = SequentialRecommender.read_config(path)
    if expect is not None:
        for key in ("arch", "max_len", "n_layers", "d_model"):
            if getattr(expect, key) != getattr(cfg, key):
                raise ConfigError(f"{path}: checkpoint has model.{key}={getattr(cfg, key)!r} but the config asks "
                                  f"for {getattr(expect, key)!r}")
    if features is None:
        raise ConfigError(f"{path}: loading a model needs its catalogue's item features (a model never scores with "
                          "zeros); mmm4rec.serving.Recommender.from_pretrained loads an export with its own")
    if features.num_items != meta["num_items"] and not transfer:
        raise ConfigError(f"{path}: the export was trained on {meta['num_items']} items but the features given hold "
                          f"{features.num_items}; pass transfer=True (train.init_from) to keep only its backbone")
    model = build_model(cfg, features)
    try:
        state = load_file(Path(path) / "model.safetensors")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{Path(path) / 'model.safetensors'}: unreadable weights "
                          f"({type(e).__name__}: {e})") from None
    if features.num_items != meta["num_items"]:
        model.load_backbone(state, source=str(path))
    else:
        model.load_state_dict(state, strict=True)
    return model
