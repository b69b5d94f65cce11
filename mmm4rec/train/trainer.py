"""The training loop: DeepSpeed steps over the stage-2 stream, evaluation per epoch, early stopping, checkpoints,
preemption, exports and the run summary."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..config import RunConfig
from ..data.stream import EvalStream, SeqIndex, TrainStream
from ..distributed import DistEnv, all_reduce_sum, barrier, gather_candidates
from ..model import Batch, ItemFeatures, SequentialRecommender, from_pretrained
from .checkpoint import Checkpointer
from .evaluation import evaluate
from .monitor import Monitor, flatten, peak_memory_mb

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything besides DeepSpeed's own state that a resumed run needs (saved as client state)."""

    global_step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)  # validation metrics per epoch


@dataclass
class Data:
    features: ItemFeatures
    item_index: dict[str, int]
    seq_index: SeqIndex
    encoder: dict  # the feature store's encoder identity (recorded in exports)
    bad_records: dict  # counted skips of this run's inputs


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; the loop stops at the next step boundary, once every rank agrees."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if not self.requested:
            log.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)
        self.requested = True

    def agreed(self, device) -> bool:
        flag = torch.tensor([float(self.requested)], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(self, cfg: RunConfig, env: DistEnv, engine, data: Data, run_dir: Path):
        self.cfg, self.env, self.engine, self.data, self.run_dir = cfg, env, engine, data, run_dir
        self.model: SequentialRecommender = engine.module
        self.device = engine.device
        self.pretrain = cfg.train.task == "pretrain"
        self.objective = "in_batch" if self.pretrain else "full"
        d, t = cfg.data, cfg.train
        self.stream = TrainStream(data.seq_index, data.item_index, split="pretrain" if self.pretrain else "train",
                                  max_len=cfg.model.max_len, micro_batch=d.batch_size, grad_accum=t.grad_accum,
                                  rank=env.rank, world=env.world_size, seed=d.seed, partitions=d.partitions,
                                  num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer)
        self.checkpoints = Checkpointer(run_dir, env, keep=t.keep_checkpoints)
        self.monitor = Monitor(run_dir, env)
        self.progress = Progress()
        self.digest = cfg.digest()

    # ------------------------------------------------------------------ helpers
    def _gather_params(self):
        """ZeRO-3 partitions parameters; evaluation and export need them whole."""
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def _eval_stream(self, split: str) -> EvalStream:
        e = self.cfg.eval
        return EvalStream(self.data.seq_index, self.data.item_index, split=split, max_len=self.cfg.model.max_len,
                          batch_size=e.batch_size, rank=self.env.rank, world=self.env.world_size,
                          mask_history=e.mask_history)

    def _evaluate(self, model, split: str, gather=None) -> dict:
        e = self.cfg.eval
        return evaluate(model, self._eval_stream(split), ks=e.ks, item_chunk=e.item_chunk, device=self.device,
                        mask_history=e.mask_history, gather_params=gather)

    def _export(self, path: Path) -> None:
        with self._gather_params():
            if self.env.is_main:
                tmp = path.with_name(path.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                self.model.save_pretrained(tmp, extra={"encoder": self.data.encoder})
                shutil.rmtree(path, ignore_errors=True)
                tmp.rename(path)
        barrier()

    def _checkpoint(self) -> None:
        client = {"global_step": self.progress.global_step, "progress": vars(self.progress),
                  "stream": self.stream.state_dict(), "config_digest": self.digest}
        self.checkpoints.save(self.engine, self.progress.global_step, client, self.digest)

    def _resume(self) -> None:
        client = self.checkpoints.load_latest(self.engine, self.digest)
        if client is not None:
            self.progress = Progress(**client["progress"])
            self.stream.load_state_dict(client["stream"])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Optional[dict]:
        """Train to the end (returns the summary) or until preempted (returns None, checkpoint written)."""
        cfg, t = self.cfg, self.cfg.train
        self._resume()
        log.info("%s: %s", t.task, self.stream.describe())
        preempt = Preemption()
        started, interrupted = time.time(), False
        try:
            while self.stream.epoch < t.epochs and not self._done():
                epoch = self.stream.epoch
                if self._train_epoch(epoch, preempt):
                    interrupted = True
                    break
                if self.stream.epoch == epoch:  # max_steps reached inside the epoch: validate where it stopped
                    if not self.pretrain:
                        self._validate(epoch)
                    self._checkpoint()
                    break
                if not self.pretrain and self._validate(epoch):
                    self._checkpoint()
                    log.info("early stopping: no %s improvement for %d epochs", cfg.eval.metric, t.patience)
                    break
                self._checkpoint()
        finally:
            preempt.restore()
        if interrupted:
            self.monitor.close()
            return None
        summary = self._finish(time.time() - started)
        self.monitor.close()
        return summary

    def _done(self) -> bool:
        t = self.cfg.train
        return (t.max_steps and self.progress.global_step >= t.max_steps) or (
            not self.pretrain and self.progress.bad_epochs >= t.patience)

    def _train_epoch(self, epoch: int, preempt: Preemption) -> bool:
        """One epoch (or what is left of it). True when preempted."""
        t, engine = self.cfg.train, self.engine
        steps = self.stream.steps_per_epoch
        bar = tqdm(total=steps, initial=self.stream.step, desc=f"epoch {epoch}", disable=not self.env.is_main,
                   dynamic_ncols=True, leave=False)
        gather = gather_candidates if (self.pretrain and t.gather_negatives and self.env.distributed) else None
        window = {"loss": 0.0, "n": 0, "tokens": 0, "samples": 0, "t0": time.time()}
        for raw in self.stream:
            batch = Batch.from_dict(raw).to(self.device)
            loss = engine(batch, objective=self.objective, gather=gather)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            window["loss"] += loss.item()
            window["n"] += 1
            window["tokens"] += int(batch.lengths.sum())
            window["samples"] += len(batch.targets)
            if not boundary:
                continue
            self.progress.global_step += 1
            bar.update(1)
            step = self.progress.global_step
            if step % t.log_every == 0 or self.stream.step == 0:
                self._log_train(step, epoch, window)
            if t.checkpoint_every and step % t.checkpoint_every == 0 and self.stream.step != 0:
                self._checkpoint()
            if preempt.agreed(self.device):
                self._checkpoint()
                log.warning("preempted at step %d: checkpoint written, exiting for requeue", step)
                bar.close()
                return True
            if t.max_steps and step >= t.max_steps:
                break
        bar.close()
        return False

    def _log_train(self, step: int, epoch: int, window: dict) -> None:
        sums = all_reduce_sum(torch.tensor([window["loss"], window["n"], window["tokens"], window["samples"]],
                                           dtype=torch.float64, device=self.device)).tolist()
        elapsed = max(time.time() - window["t0"], 1e-9)
        grad_norm = self.engine.get_global_grad_norm()
        values = {
            "train/loss": sums[0] / max(sums[1], 1),
            "train/lr": self.engine.get_lr()[0],
            "train/samples_per_s": sums[3] / elapsed,
            "train/tokens_per_s": sums[2] / elapsed,
            "train/peak_memory_mb": peak_memory_mb(self.device),
        }
        if grad_norm is not None:
            values["train/grad_norm"] = float(grad_norm)
        self.monitor.scalars(step, values, epoch=epoch)
        log.info("step %d epoch %d loss %.4f %.0f samples/s", step, epoch, values["train/loss"],
                 values["train/samples_per_s"])
        window.update(loss=0.0, n=0, tokens=0, samples=0, t0=time.time())

    def _validate(self, epoch: int) -> bool:
        """Evaluate on the validation split, keep the best export; True when patience is exhausted."""
        p, e = self.progress, self.cfg.eval
        metrics = self._evaluate(self.model, "valid", self._gather_params())
        value = metrics[e.metric]
        p.history.append({"epoch": epoch, **metrics})
        improved = value > p.best
        if improved:
            p.best, p.best_epoch, p.bad_epochs = value, epoch, 0
            self._export(self.run_dir / "best")
        else:
            p.bad_epochs += 1
        self.monitor.scalars(p.global_step, {f"valid/{k}": v for k, v in metrics.items()} |
                             {"valid/best_epoch": p.best_epoch, "valid/epochs_to_best": p.best_epoch + 1},
                             epoch=epoch)
        log.info("epoch %d valid %s %s (best %.4f at epoch %d)", epoch, e.metric, f"{value:.4f}", p.best,
                 p.best_epoch)
        return p.bad_epochs >= self.cfg.train.patience

    def _finish(self, wall: float) -> dict:
        """Export, test with the best weights (fine-tuning), write summary.json."""
        p, cfg = self.progress, self.cfg
        export = self.run_dir / "export"
        test = None
        if self.pretrain or p.best_epoch < 0:
            self._export(export)
        else:
            if self.env.is_main:
                shutil.rmtree(export, ignore_errors=True)
                shutil.copytree(self.run_dir / "best", export)
            barrier()
        if not self.pretrain:
            best = from_pretrained(export, self.data.features, expect=cfg.model).to(self.device)
            test = self._evaluate(best, "test")
            self.monitor.scalars(p.global_step, {f"test/{k}": v for k, v in test.items()})
            log.info("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "users"))
        summary = {
            "task": cfg.train.task,
            "test": test,
            "best_epoch": p.best_epoch,
            "epochs_to_best": p.best_epoch + 1 if p.best_epoch >= 0 else None,
            "best_valid": p.best if p.best_epoch >= 0 else None,
            "valid_history": p.history,
            "global_step": p.global_step,
            "epochs": self.stream.epoch,
            "world_size": self.env.world_size,
            "global_batch": self.stream.global_batch,
            "wall_time_s": round(wall, 2),
            "bad_records": self.data.bad_records,
            "export": str(export),
            "config": cfg.to_dict(),
        }
        if test is not None:
            self.monitor.hparams(flatten({"model": cfg.model.__dict__, "train": cfg.train.__dict__}),
                                 {k: v for k, v in test.items() if k != "users"})
        if self.env.is_main:
            tmp = self.run_dir / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=str))
            tmp.rename(self.run_dir / "summary.json")
        return summary
