"""Run assembly: from a config to the parts a run is made of — the dataset's manifest, features and stage-2
index, the model (with a pre-trained backbone), the loss, the DeepSpeed engine, and the training, validation and
test streams. The training command (train/cli.py), the trainer and the benchmarks (tools/bench) all build a run
from these functions, so each part is assembled one way (torchtitan's short main over a library).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file

from ..config import ConfigError, RunConfig
from ..data.dataset import load_manifest
from ..data.features import FeatureStore, default_features_dir, ensure_features
from ..data.remote import DatasetSource
from ..data.schema import Manifest
from ..data.stream import EvalStream, SeqIndex, TrainStream, UserSubset
from ..distributed import DistEnv
from ..losses import Objective, build_loss, needs_target_counts
from ..model import ItemFeatures, SequentialRecommender
from ..model.items import item_features
from ..resources import default_deepspeed_template
from .engine import deepspeed_config, initialize, step_precision
from .rundir import export_of

log = logging.getLogger("mmm4rec")


@dataclass
class Data:
    features: ItemFeatures
    store: FeatureStore  # where the features come from (exports carry it)
    seq_index: SeqIndex
    bad_records: dict  # counted skips of this run's inputs
    dataset: Manifest  # what the run trains on, read once (a remote dataset.json is fetched once)

    @property
    def dataset_hash(self) -> str:
        """sha256 of dataset.json: what the run trained on."""
        return self.dataset.digest

    @property
    def item_index(self) -> dict[str, int]:
        return self.store.index


def read_manifest(cfg: RunConfig) -> Manifest:
    """data.dataset's manifest, read once per run and passed on: the digest a run records (run.json, summaries)
    is of the manifest it trains on, and a remote dataset.json is fetched once."""
    if not cfg.data.dataset:
        raise ConfigError("data.dataset is not set: pass --set data.dataset=<folder with dataset.json>")
    return load_manifest(DatasetSource.from_config(cfg.data))


def load_data(cfg: RunConfig, precision: str = "fp32", build: bool = True, shard: Optional[tuple[int, int]] = None,
              dataset: Optional[Manifest] = None) -> Data:
    """Feature store (built or refreshed on every rank together when ``build``) + stage-2 index of ``dataset``
    (default: data.dataset's). Features come in the step's dtype (data.feature_dtype); ``shard`` = (rank, world)
    keeps only this rank's item rows."""
    dataset = dataset or read_manifest(cfg)
    if build:
        store_dir = ensure_features(dataset, cfg.data.encoder, cfg.data.features or None,
                                    strict=cfg.data.strict)
    else:
        store_dir = Path(cfg.data.features or default_features_dir(dataset, cfg.data.encoder))
    store = FeatureStore.open(store_dir)
    if not build:  # ensure_features has just checked it (hashing a local encoder folder is not free)
        store.check_compatible(cfg.data.encoder)
    features = item_features(store, feature_dtype(cfg, precision))
    if shard is not None:
        features = features.shard(*shard)
    seq_index = SeqIndex.load_or_build(dataset, store.index, store_dir, strict=cfg.data.strict)
    bad = dict(store.manifest.get("bad_records") or {})
    for reason, n in seq_index.bad.items():
        bad[reason] = bad.get(reason, 0) + n
    if bad:
        log.warning("bad input skipped (data.strict=false): %s", bad)
    if features.image is None and cfg.model.arch == "mmm4rec":  # how MMM4Rec's image stream reads text-only data
        log.info("text-only features: the image stream reads text features through its own adapter, and items are "
                 "scored with the text term only")
    return Data(features, store, seq_index, bad, dataset)


def feature_dtype(cfg: RunConfig, precision: str) -> torch.dtype:
    """data.feature_dtype with "auto" resolved: the step's dtype, so items are adapted without a per-step cast."""
    name = cfg.data.feature_dtype
    if name == "auto":
        name = "bfloat16" if precision == "bf16" else "float32"
    return getattr(torch, name)


def transfer(model: SequentialRecommender, source: str, encoder: dict) -> None:
    """--init-from: load a pre-trained export (or a run's export) except its domain-specific tables, strictly."""
    path = export_of(source)
    if not (path / "config.json").exists():
        raise ConfigError(f"train.init_from={source}: no export (config.json + model.safetensors) there")
    cfg, meta = SequentialRecommender.read_config(path)
    if meta.get("encoder") not in (None, encoder):
        raise ConfigError(f"train.init_from={source}: pre-trained on features of another encoder "
                          f"({meta['encoder']}); this dataset's features come from {encoder}")
    model.load_backbone(load_file(path / "model.safetensors"), source=str(path))
    log.info("initialised from %s (%s, %d items there; ID tables and features not transferred)", path, cfg.arch,
             meta["num_items"])


def train_engine(cfg: RunConfig, env: DistEnv, model: SequentialRecommender, total_steps: int,
                 target_counts: Optional[np.ndarray] = None, template: Optional[str] = None,
                 precision: Optional[str] = None):
    """The DeepSpeed engine that trains ``model`` with the run's loss: precision -> loss -> DeepSpeed config ->
    ``initialize`` (``template``: a DeepSpeed JSON, default train.deepspeed_config or the shipped ZeRO one)."""
    precision = precision or step_precision(cfg, env.device)
    objective = Objective(model, build_loss(cfg, target_counts))
    template = template or cfg.train.deepspeed_config or default_deepspeed_template(cfg.train)
    return initialize(objective, cfg, env, deepspeed_config(cfg, env.world_size, template, precision), total_steps)


def target_counts(cfg: RunConfig, data: "Data") -> Optional[np.ndarray]:
    """How often each item is a training target, where the run's loss declares it needs them (None otherwise)."""
    return data.seq_index.target_counts(cfg.train_split) if needs_target_counts(cfg) else None


def train_stream(cfg: RunConfig, env, data: Data) -> TrainStream:
    """This rank's training stream: the task's split, the users the run trains on (data.train_users; minus the
    held-out validation users, data.holdout_users)."""
    d, t = cfg.data, cfg.train
    users = None
    if d.holdout_users:
        users = holdout(cfg, complement=True)
    elif d.train_users < 1:
        users = user_subset(d.train_users, d.seed)
    kwargs = {} if users is None else {"users": users}
    return TrainStream(data.seq_index, data.item_index, split=cfg.train_split, max_len=cfg.model.max_len,
                       micro_batch=d.batch_size, grad_accum=t.grad_accum, rank=env.rank, world=env.world_size,
                       seed=d.seed, partitions=d.partitions, num_workers=d.num_workers,
                       shuffle_buffer=d.shuffle_buffer, **kwargs)


def validation_stream(cfg: RunConfig, env, data: Data):
    """Fine-tuning validates on every user's validation target; pre-training on the held-out users' (if any)."""
    if cfg.train.task == "finetune":
        return eval_stream(cfg, data, env, "valid")
    if cfg.data.holdout_users:
        return eval_stream(cfg, data, env, "valid", users=holdout(cfg))
    log.warning("pre-training without validation (data.holdout_users=0): no early stopping, the last weights "
                "are exported; --set data.holdout_users=0.05 validates on 5 %% of the users")
    return None


def user_subset(fraction: float, seed: int, complement: bool = False) -> UserSubset:
    return UserSubset(fraction=fraction, seed=seed, complement=complement)


def holdout(cfg: RunConfig, complement: bool = False):
    """The pre-training validation users (a seeded share data.holdout_users of all users), or all the others."""
    return user_subset(cfg.data.holdout_users, cfg.data.seed + 1, complement)


def eval_stream(cfg: RunConfig, data: Data, env: DistEnv, split: str, users=None) -> EvalStream:
    """The one definition of an evaluation stream of a run (validation, test, the evaluate launcher)."""
    e = cfg.eval
    kwargs = {} if users is None else {"users": users}
    return EvalStream(data.seq_index, data.item_index, split=split, max_len=cfg.model.max_len,
                      batch_size=e.batch_size, rank=env.rank, world=env.world_size, mask_history=e.mask_history,
                      **kwargs)
