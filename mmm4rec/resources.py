"""Files that ship inside the package, found the same way in a checkout and in an installed wheel.

The DeepSpeed templates live in ``mmm4rec/ds_configs/`` (package data); the checkout's top-level ``ds_configs`` is
a symlink to that folder, so ``--deepspeed_config ds_configs/zero3.json`` keeps working without a second copy.
Presets are ``mmm4rec/presets/*.yaml`` (``mmm4rec.config.PRESET_DIR``).
"""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError, TrainConfig

DS_CONFIG_DIR = Path(__file__).parent / "ds_configs"


def deepspeed_templates() -> list[str]:
    """Names of the shipped DeepSpeed templates (``zero0`` … ``zero3``, ``zero2_offload``)."""
    return sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))


def deepspeed_template(name: str) -> Path:
    """Path of a shipped DeepSpeed template by name, with or without ``.json``."""
    path = DS_CONFIG_DIR / f"{name.removesuffix('.json')}.json"
    if not path.is_file():
        raise ConfigError(f"no DeepSpeed template {name!r} in {DS_CONFIG_DIR}; "
                          f"shipped: {', '.join(deepspeed_templates())}")
    return path


def default_deepspeed_template(train: TrainConfig) -> Path:
    """The template a run uses unless --deepspeed_config or train.deepspeed_config names one."""
    return deepspeed_template(f"zero{train.zero_stage}{'_offload' if train.offload_optimizer else ''}")
