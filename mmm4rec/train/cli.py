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

import numpy as np
import torch
from safetensors.torch import load_file

from .. import distributed
from ..config import ConfigError, RunConfig, load_config, save_config
from ..data.features import FeatureStore, default_features_dir, ensure_features
from ..data.schema import DataError
from ..data.stream import EvalStream, SeqIndex
from ..model import ItemFeatures, SequentialRecommender, build_model, from_pretrained
from .engine import deepspeed_config, initialize
from .evaluation import evaluate
from .monitor import announce, setup_logging
from .trainer import Data, Trainer

log = logging.getLogger("mmm4rec")

REPO = Path(__file__).resolve().parents[2]


def parse_args(task: str, argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"launchers/{task}.py", description=f"MMM4Rec {task}")
    p.add_argument("--config", help="preset name (mmm4rec/presets) or YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    p.add_argument("--run-dir", help="run directory (default: runs/<name>); a run resumes from its latest checkpoint")
    if task == "evaluate":
        p.add_argument("--checkpoint", required=True, help="an export folder or a run directory (uses its export)")
        p.add_argument("--split", default="test", choices=["valid", "test"])
    # the deepspeed launcher's arguments
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deepspeed_config", "--deepspeed-config", help="DeepSpeed JSON (default: ds_configs/zero<stage>.json)")
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_run_dir(cfg: RunConfig, cli_run_dir: Optional[str]) -> Path:
    return Path(cli_run_dir or cfg.run_dir or Path("runs") / cfg.name).resolve()


def load_data(cfg: RunConfig, build: bool = True) -> Data:
    """Feature store (built or refreshed on every rank together when ``build``) + stage-2 index."""
    if not cfg.data.dataset:
        raise ConfigError("data.dataset is not set: pass --set data.dataset=<folder with dataset.json>")
    if build:
        store_dir = ensure_features(cfg.data.dataset, cfg.data.encoder, cfg.data.features or None,
                                    strict=cfg.data.strict)
    else:
        store_dir = Path(cfg.data.features or default_features_dir(cfg.data.dataset, cfg.data.encoder))
    store = FeatureStore.open(store_dir)
    if not build:  # ensure_features has just checked it (hashing a local encoder folder is not free)
        store.check_compatible(cfg.data.encoder)
    features = ItemFeatures(
        text=torch.from_numpy(np.array(store.text, dtype=np.float32)),
        image=None if store.image is None else torch.from_numpy(np.array(store.image, dtype=np.float32)),
        image_missing=None if store.image_missing is None else torch.from_numpy(np.array(store.image_missing)),
    )
    if not (torch.isfinite(features.text).all() and (features.image is None or torch.isfinite(features.image).all())):
        store.verify()  # names the first bad item
    seq_index = SeqIndex.load_or_build(cfg.data.dataset, store.index, store_dir, strict=cfg.data.strict)
    bad = dict(store.manifest.get("bad_records") or {})
    for reason, n in seq_index.bad.items():
        bad[reason] = bad.get(reason, 0) + n
    if bad:
        log.warning("bad input skipped (data.strict=false): %s", bad)
    if features.image is None and cfg.model.arch == "mmm4rec":
        log.info("text-only features: the image stream reads text features through its own adapter, and items are "
                 "scored with the text term only")
    return Data(features, store.index, seq_index, store.manifest["encoder"], bad)


def transfer(model: SequentialRecommender, source: str, encoder: dict) -> None:
    """--init-from: load a pre-trained export (or a run's export) except its domain-specific tables, strictly."""
    path = Path(source)
    if (path / "export" / "config.json").exists():
        path = path / "export"
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
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if task in ("pretrain", "finetune"):
        cfg.train.task = task
    run_dir = resolve_run_dir(cfg, args.run_dir)
    env = distributed.init()
    setup_logging(env, run_dir)
    announce(env)
    try:
        if task == "evaluate":
            return _evaluate(cfg, env, args, run_dir)
        return _train(cfg, env, args, run_dir)
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: RunConfig, env, args, run_dir: Path) -> int:
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    log.info("run %s: %s on %d process(es) (%s, %s) via %s -> %s", cfg.name, cfg.train.task, env.world_size,
             env.device.type, env.backend, env.launcher, run_dir)
    torch.manual_seed(cfg.train.seed)
    data = load_data(cfg)
    model = build_model(cfg.model, data.features)
    log.info("%s: %s parameters (%s without ID tables)", cfg.model.arch,
             f"{sum(p.numel() for p in model.parameters()):,}",
             f"{sum(p.numel() for n, p in model.named_parameters() if 'id_bias' not in n):,}")
    if cfg.train.init_from:
        transfer(model, cfg.train.init_from, data.encoder)
    template = args.deepspeed_config or cfg.train.deepspeed_config or REPO / "ds_configs" / (
        f"zero{cfg.train.zero_stage}{'_offload' if cfg.train.offload_optimizer else ''}.json")
    engine = initialize(model, cfg, env, deepspeed_config(cfg, env.world_size, template))
    summary = Trainer(cfg, env, engine, data, run_dir).fit()
    if summary is None:
        return 0  # preempted: checkpoint written; the job scheduler requeues us
    if env.is_main:
        log.info("done: %s; TensorBoard: tensorboard --logdir %s", run_dir / "summary.json", run_dir / "tensorboard")
    return 0


def _evaluate(cfg: RunConfig, env, args, run_dir: Path) -> int:
    path = Path(args.checkpoint)
    export = path / "export" if (path / "export" / "config.json").exists() else path
    data = load_data(cfg, build=False)
    model = from_pretrained(export, data.features, expect=cfg.model).to(env.device)
    e = cfg.eval
    stream = EvalStream(data.seq_index, data.item_index, split=args.split, max_len=cfg.model.max_len,
                        batch_size=e.batch_size, rank=env.rank, world=env.world_size, mask_history=e.mask_history)
    metrics = evaluate(model, stream, ks=e.ks, item_chunk=e.item_chunk, device=env.device,
                       mask_history=e.mask_history)
    if env.is_main:
        out = {"checkpoint": str(export), "split": args.split, "mask_history": e.mask_history,
               "world_size": env.world_size, **metrics}
        print(json.dumps(out, indent=2))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"eval-{args.split}.json").write_text(json.dumps(out, indent=2))
    return 0
