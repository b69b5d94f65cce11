"""What launchers/pretrain.py, finetune.py and evaluate.py run: arguments -> config -> data -> model -> engine.

The same entry point serves ``python``, ``torchrun``, ``deepspeed`` (which adds --local_rank and may pass
--deepspeed_config), ``accelerate launch`` and ``srun``; mmm4rec.distributed reads whichever variables they set.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from .. import distributed
from ..commands import print_config, resolved_config, training_parser
from ..config import ConfigError, RunConfig, save_config
from ..data.dataset import load_manifest
from ..data.features import FeatureStore, default_features_dir, ensure_features
from ..data.remote import DatasetSource
from ..data.schema import DataError, Manifest
from ..data.stream import SeqIndex, TrainStream
from ..losses import Objective, build_loss
from ..model import ItemFeatures, SequentialRecommender, build_model, from_pretrained
from ..model.ssd import triton_usable
from ..resources import default_deepspeed_template
from ..serving.export import item_features
from .checkpoint import CheckpointError
from ..provenance import cpu_isa, provenance
from .engine import deepspeed_config, initialize, precision_warning, step_precision
from .evaluation import evaluate
from .monitor import StartupClock, announce, report_error, setup_logging
from .rundir import Claim, RunDir, export_of
from .trainer import Data, Trainer, eval_stream

log = logging.getLogger("mmm4rec")


def parse_args(task: str, argv: Optional[list[str]]) -> argparse.Namespace:
    return training_parser(task, prog=f"launchers/{task}.py").parse_args(argv)


def resolve_run_dir(cfg: RunConfig, cli_run_dir: Optional[str]) -> Path:
    return Path(cli_run_dir or cfg.run_dir or Path("runs") / cfg.name).resolve()


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
    if features.image is None and cfg.model.arch == "mmm4rec":
        log.info("text-only features: the image stream reads text features through its own adapter, and items are "
                 "scored with the text term only")
    return Data(features, store, seq_index, bad, dataset.digest)


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


def main(task: str, argv: Optional[list[str]] = None) -> int:
    args = parse_args(task, argv)
    try:
        cfg = resolved_config(task, args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(cfg)
        return 0
    run = RunDir(resolve_run_dir(cfg, args.run_dir))
    try:
        env = distributed.init(cfg.train.collective_timeout_s)
    except (ConfigError, RuntimeError) as e:
        print(f"launch error: {e}", file=sys.stderr)
        return 2
    setup_logging(env)
    announce(env)
    try:
        if task == "evaluate":
            return _evaluate(cfg, env, args, run)
        return _train(cfg, env, args, run)
    except (ConfigError, DataError, CheckpointError) as e:
        report_error(env, str(e))
        return 2
    finally:
        distributed.shutdown()


class _HeldLogs(logging.Handler):
    """Rank 0's log records from before the run directory is recorded: replayed into train.log once it is, and
    dropped when the start is refused (a refused start writes nothing into the folder)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _claim(cfg: RunConfig, env, run: RunDir, dataset: Manifest) -> Claim:
    """Rank 0 locks the run directory and checks — writing nothing — that this run may use it: the folder's
    config and dataset, and the model and world size of its latest checkpoint (the refusals the resume meets
    later, once run.json and config.yaml would have been rewritten). Every rank learns the outcome."""
    def check() -> Claim:
        run.lock()
        claim = run.check(cfg, dataset.digest)
        if claim.continuing:
            run.check_checkpoints(cfg.digest(), env)
        return claim

    claim = distributed.on_main(check)
    log.info("run %s: %s on %d process(es) (%s, %s%s) via %s -> %s%s", cfg.name, cfg.train.task, env.world_size,
             env.device.type, env.backend, f", CPU {cpu_isa()}" if env.device.type == "cpu" else "", env.launcher,
             run.path, " (continuing)" if claim.continuing else "")
    return claim


def _record(cfg: RunConfig, env, run: RunDir, claim: Claim, held: _HeldLogs) -> None:
    """After every start-up check has passed: run.json, config.yaml, and train.log with what was logged so far."""
    def record() -> None:
        run.record(claim)
        save_config(cfg, run.config, {"provenance": provenance(world_size=env.world_size, launcher=env.launcher)})

    distributed.on_main(record)
    setup_logging(env, run.log)  # replaces the handlers, the held one included
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            for record_ in held.records:
                handler.handle(record_)


def _train(cfg: RunConfig, env, args, run: RunDir) -> int:
    held = _HeldLogs()
    if env.is_main:
        logging.getLogger().addHandler(held)
    clock = StartupClock()
    dataset = read_manifest(cfg)
    if cfg.model.ssd.form == "triton" and not triton_usable(env.device):
        raise ConfigError(f"model.ssd.form=triton needs a CUDA device and mamba-ssm; this run is on {env.device} "
                          "(use auto)")
    claim = _claim(cfg, env, run, dataset)
    precision = step_precision(cfg, env.device)
    log.info("precision %s (train.precision=%s)", precision, cfg.train.precision)
    if precision_warning(cfg, env.device, precision):
        log.warning(precision_warning(cfg, env.device, precision))
    torch.manual_seed(cfg.train.seed)
    data = load_data(cfg, precision, shard=(env.rank, env.world_size) if cfg.train.item_parallel else None,
                     dataset=dataset)
    clock.done("data (manifest, run folder, features, stage-2 index)")
    model = build_model(cfg.model, data.features)
    log.info("%s: %s parameters (%s without ID tables)", cfg.model.arch,
             f"{sum(p.numel() for p in model.parameters()):,}",
             f"{sum(p.numel() for n, p in model.named_parameters() if 'id_bias' not in n):,}")
    if cfg.train.init_from:
        transfer(model, cfg.train.init_from, data.store.manifest["encoder"])
    counts = data.seq_index.target_counts(train_split(cfg)) if cfg.loss_name == "sampled" else None
    objective = Objective(model, build_loss(cfg, counts))
    stream = train_stream(cfg, env, data)
    template = args.deepspeed_config or cfg.train.deepspeed_config or default_deepspeed_template(cfg.train)
    total_steps = cfg.train.max_steps or cfg.train.epochs * stream.steps_per_epoch
    clock.done("model")
    engine = initialize(objective, cfg, env, deepspeed_config(cfg, env.world_size, template, precision), total_steps)
    clock.done("engine (DeepSpeed)")
    _record(cfg, env, run, claim, held)
    summary = Trainer(cfg, env, engine, data, stream, run, validation_stream(cfg, env, data)).fit()
    if summary is None:
        return 0  # preempted: checkpoint written; the job scheduler requeues us
    if env.is_main:
        log.info("done: %s; TensorBoard: tensorboard --logdir %s", run.summary, run.tensorboard)
    return 0


def train_split(cfg: RunConfig) -> str:
    return "pretrain" if cfg.train.task == "pretrain" else "train"


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
    return TrainStream(data.seq_index, data.item_index, split=train_split(cfg), max_len=cfg.model.max_len,
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


def user_subset(fraction: float, seed: int, complement: bool = False):
    from ..data.stream import UserSubset

    return UserSubset(fraction=fraction, seed=seed, complement=complement)


def holdout(cfg: RunConfig, complement: bool = False):
    """The pre-training validation users (a seeded share data.holdout_users of all users), or all the others."""
    return user_subset(cfg.data.holdout_users, cfg.data.seed + 1, complement)


def _evaluate(cfg: RunConfig, env, args, run: RunDir) -> int:
    data = load_data(cfg, build=False)
    export = export_of(args.checkpoint)
    if not (export / "config.json").exists():
        raise ConfigError(f"--checkpoint {args.checkpoint}: no export there (neither <run>/export/config.json nor "
                          "config.json)")
    model = from_pretrained(export, data.features, expect=cfg.model).to(env.device)
    stream = eval_stream(cfg, data, env, args.split)
    e = cfg.eval
    metrics = evaluate(model, stream, ks=e.ks, item_chunk=e.item_chunk, device=env.device,
                       mask_history=e.mask_history)
    if env.is_main:
        out = {"checkpoint": str(export), "split": args.split, "mask_history": e.mask_history,
               "world_size": env.world_size, **metrics}
        print(json.dumps(out, indent=2))
        where = Path(args.run_dir) if args.run_dir else (export.parent if export.name == "export" else export)
        where.mkdir(parents=True, exist_ok=True)
        name = f"eval-{args.split}{'-masked' if e.mask_history else ''}.json"
        (where / name).write_text(json.dumps(out, indent=2))
    return 0
