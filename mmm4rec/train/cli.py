"""The training commands' run: config -> run directory -> data -> model -> engine -> Trainer (or, for evaluate,
an export's metrics on a split). ``mmm4rec.commands`` parses the arguments and resolves the config once and calls
``run``; launchers/pretrain.py, finetune.py and evaluate.py are that command.

The same entry point serves ``python``, ``torchrun``, ``deepspeed`` (which adds --local_rank and may pass
--deepspeed_config), ``accelerate launch`` and ``srun``; mmm4rec.distributed reads whichever variables they set.
The parts of a run are built by mmm4rec.train.assembly, which the benchmarks use too.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch

from .. import distributed
from ..config import ConfigError, RunConfig, save_config
from ..data.atomic import write_atomic
from ..data.schema import DataError, Manifest
from ..model import build_model, from_pretrained
from ..model.ssd import triton_usable
from ..tool import error_line
from ..provenance import cpu_isa, provenance
from .assembly import (eval_stream, load_data, read_manifest, target_counts, train_engine, train_stream, transfer,
                       validation_stream)
from .checkpoint import CheckpointError
from .engine import precision_warning, step_precision
from .evaluation import evaluate
from .monitor import StartupClock, announce, report_error, setup_logging
from .rundir import Claim, RunDir, export_of, model_digest
from .trainer import StopAtStartup, Trainer, stop_requests_deferred, stop_requests_end_startup

log = logging.getLogger("mmm4rec")


def resolve_run_dir(cfg: RunConfig, cli_run_dir: Optional[str]) -> Path:
    return Path(cli_run_dir or cfg.run_dir or Path("runs") / cfg.name).resolve()


def run(task: str, args: argparse.Namespace, cfg: RunConfig) -> int:
    """Run ``task`` (pretrain, finetune or evaluate) with the resolved ``cfg``; the exit status."""
    run_dir = RunDir(resolve_run_dir(cfg, args.run_dir))
    try:
        env = distributed.init(cfg.train.collective_timeout_s)
    except (ConfigError, RuntimeError) as e:
        print(f"launch error: {e}", file=sys.stderr)
        return 2
    setup_logging(env)
    announce(env)
    try:
        # a rank failing alone (its checkpoint file unwritable) ends its peers at once with its error line
        distributed.start_failure_notice(env, lambda message: report_error(env, message))
        if task == "evaluate":
            return _evaluate(cfg, env, args, run_dir)
        return _train(cfg, env, args, run_dir)
    except (ConfigError, DataError, CheckpointError) as e:
        report_error(env, str(e))
        distributed.announce_failure(str(e))
        return 2
    except OSError as e:  # a read-only, missing or full path: the path and the system's reason, in one line
        if not e.strerror:
            distributed.announce_failure(error_line(e))
            raise
        log.error("%s", error_line(e))
        distributed.announce_failure(error_line(e))
        return 2
    except Exception as e:  # a bug: its traceback follows, and the peers stop waiting for this rank
        distributed.announce_failure(f"{type(e).__name__}: {error_line(e)}")
        raise
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
            run.check_checkpoints(model_digest(cfg), env)
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
    try:
        with stop_requests_end_startup():
            return _start_and_train(cfg, env, args, run)
    except StopAtStartup as e:
        log.warning("stop requested (%s) during start-up, before training began: exiting with nothing written "
                    "but the run's identity (run.json, config.yaml); the same command again starts or resumes the "
                    "run", e)
        return 0


def _start_and_train(cfg: RunConfig, env, args, run: RunDir) -> int:
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
             f"{sum(p.numel() for n, p in model.named_parameters() if not model.is_domain_specific(n)):,}")
    if cfg.train.init_from:
        transfer(model, cfg.train.init_from, data.store.manifest["encoder"])
    stream = train_stream(cfg, env, data)
    _refuse_a_batch_beyond_the_epoch(cfg, env, stream)
    total_steps = cfg.train.max_steps or cfg.train.epochs * stream.steps_per_epoch
    clock.done("model")
    engine = train_engine(cfg, env, model, total_steps, target_counts(cfg, data), args.deepspeed_config, precision)
    clock.done("engine (DeepSpeed)")
    with stop_requests_deferred():  # run.json and config.yaml together
        _record(cfg, env, run, claim, held)
    summary = Trainer(cfg, env, engine, data, stream, run, validation_stream(cfg, env, data)).fit()
    if summary is None:
        return 0  # preempted: checkpoint written; the job scheduler requeues us
    if env.is_main:
        log.info("done: %s; TensorBoard: tensorboard --logdir %s", run.summary, run.tensorboard)
    return 0


def _refuse_a_batch_beyond_the_epoch(cfg: RunConfig, env, stream) -> None:
    """A global batch larger than an epoch's samples makes every step mostly rows of weight 0, computed all the
    same: a mistake, said at start-up."""
    total = stream.plan().total
    if stream.global_batch > total:
        per_process = cfg.train.grad_accum * env.world_size
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: the global batch {stream.global_batch} "
                          f"(data.batch_size × train.grad_accum {cfg.train.grad_accum} × {env.world_size} "
                          f"process(es)) is larger than the {total:,} {cfg.train_split} samples of an epoch of "
                          f"{cfg.data.dataset}; use data.batch_size <= {max(total // per_process, 1)}")


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
        write_atomic(where / f"eval-{args.split}{'-masked' if e.mask_history else ''}.json", json.dumps(out, indent=2))
    return 0
