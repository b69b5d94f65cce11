"""The training loop: DeepSpeed steps over the stage-2 stream, validation, early stopping, checkpoints, preemption,
exports and the run summary.

The step never waits on the device: between log boundaries (every train.log_every optimizer steps) nothing reads a
device value on the host — the loss and token counts accumulate on the device, the gradient norm is computed only
on log steps. Validation, checkpoints and exports are boundaries of their own.

A stop request (SIGTERM / SIGUSR1; ``Preemption``) is honoured in every phase of ``fit``: between training steps
(one process reads its flag after every step; several agree about once a second, or after every step when a step
takes longer), between batches of users of a validation (the checkpoint then records the validation as pending,
and the resumed run redoes it first) and of the final test evaluation (the export is written by then; the test
is not, and no summary.json: the same command again tests the export). Each ends with a checkpoint and exit 0.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm import tqdm

from .. import distributed
from ..config import RunConfig, flatten
from ..data.atomic import replace_folder, write_atomic
from ..data.stream import EvalStream, TrainStream
from ..distributed import DistEnv, barrier
from ..model import Batch, SequentialRecommender, build_model, from_pretrained
from ..model.items import item_features
from ..provenance import provenance
from ..serving.export import catalogue_extras, write_export
from .assembly import Data, eval_stream
from .checkpoint import Checkpointer, CheckpointError
from .evaluation import StopRequested, evaluate
from .examples import Examples
from .monitor import Monitor, peak_memory_mb
from .rundir import RunDir, model_digest

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything besides DeepSpeed's own state that a resumed run needs (saved as client state)."""

    global_step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    best_step: int = -1
    bad_evals: int = 0  # validations in a row without improvement
    wall_time_s: float = 0.0  # training time over all resumes
    best_wall_time_s: float = -1.0  # wall_time_s when the best validation was reached (over resumes too)
    history: list = field(default_factory=list)  # validation metrics, one entry per validation
    pending_validation: Optional[int] = None  # the epoch of a validation a stop request interrupted

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; training stops after the step where every rank has agreed on it.

    One process reads its own flag after every step (no device sync). Several must stop at the same step, so they
    agree by an all-reduce — a host sync, hence not after every step: about every ``AGREE_S`` seconds, the number
    of steps between agreements derived from the slowest rank's step time (the reduced maximum, identical on every
    rank), and after every step when a step takes longer than that."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    AGREE_S = 1.0

    def __init__(self, world_size: int = 1, step: int = 0):
        self.requested = False
        self.world = world_size
        self._next, self._last = step + 1, (step, time.time())
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if not self.requested:
            log.warning("received %s: stopping with a checkpoint (training: after the current step; validation or "
                        "test: after the current batch of users)", signal.Signals(signum).name)
        self.requested = True

    def __call__(self) -> bool:
        """This rank's flag (what an evaluation asks between batches)."""
        return self.requested

    def agreed(self, step: int, device) -> bool:
        """Whether every rank stops after ``step`` (called after every optimizer step, on every rank)."""
        if self.world == 1:
            return self.requested
        if step < self._next:
            return False
        now = time.time()
        per_step = (now - self._last[1]) / max(step - self._last[0], 1)
        flag, slowest = distributed.all_reduce(torch.tensor([float(self.requested), per_step], dtype=torch.float64,
                                                            device=device), "max").tolist()
        self._next, self._last = step + max(1, int(self.AGREE_S / max(slowest, 1e-6))), (step, now)
        return bool(flag)

    def restore(self):
        """The handlers from before, where ours is still installed (a failing rank ignores the signals by now:
        distributed.FailureNotice.announce)."""
        for s, handler in self.previous.items():
            if signal.getsignal(s) == self._handle:
                signal.signal(s, handler)


class StopAtStartup(BaseException):
    """A stop request (SIGTERM / SIGUSR1) before the training loop began: there is nothing to checkpoint, so the
    start-up ends at once. A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way (on_main's
    error broadcast, a fallback) takes it for an error."""


@contextlib.contextmanager
def stop_requests_end_startup():
    """While the run starts (dataset, run folder, engine, checkpoint loading), a stop request raises StopAtStartup
    in the main thread: what was being written is discarded on the way out (temp files, temp folders), and the
    run folder is as the last run left it. ``Preemption`` takes over in ``Trainer.fit`` once the checkpoint is
    loaded. Without this the signal's default action killed the process (exit -15, no word in any log)."""
    def handle(signum, frame):
        raise StopAtStartup(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handle) for s in Preemption.SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if signal.getsignal(s) is handle:
                signal.signal(s, handler)


@contextlib.contextmanager
def stop_requests_deferred():
    """Writing that must happen whole (run.json and config.yaml together): a stop request waits until it is done."""
    signal.pthread_sigmask(signal.SIG_BLOCK, Preemption.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, Preemption.SIGNALS)


class Window:
    """What the log line of a window of steps reports, accumulated without host reads."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.tokens = torch.zeros((), dtype=torch.float64)
        self.samples = torch.zeros((), dtype=torch.float64)
        self.micro_steps, self.steps, self.started = 0, 0, time.time()

    def add(self, loss: torch.Tensor, raw: dict) -> None:
        self.loss += loss.detach()
        real = raw["weight"] > 0  # CPU tensors from the loader
        self.tokens += (raw["lengths"] * real).sum()
        self.samples += real.sum()
        self.micro_steps += 1


class Trainer:
    def __init__(self, cfg: RunConfig, env: DistEnv, engine, data: Data, stream: TrainStream, run: RunDir,
                 validation: Optional[EvalStream] = None):
        self.cfg, self.env, self.engine, self.data, self.stream, self.run = cfg, env, engine, data, stream, run
        self.model: SequentialRecommender = engine.module.model
        self.device = engine.device
        self.validation = validation  # None: no validation signal (pre-training without held-out users)
        self.checkpoints = Checkpointer(run.path, env, keep=cfg.train.keep_checkpoints)
        self.progress = Progress()
        self.digest = model_digest(cfg)
        self.monitor: Optional[Monitor] = None
        self._preempt: Optional[Preemption] = None  # installed by fit
        self._clock = time.time()
        self._first_step_logged = False
        self.examples = Examples(data.dataset, data.store.keys) if env.is_main else None  # TensorBoard text + projector
        self.provenance = provenance(world_size=env.world_size, launcher=env.launcher,
                                     dataset=cfg.data.dataset, dataset_hash=data.dataset_hash)

    # ------------------------------------------------------------------ helpers
    def _gather_params(self):
        """ZeRO-3 partitions parameters; evaluation and export need them whole."""
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def _evaluate(self, model, stream: EvalStream, gather=None) -> dict:
        """Metrics; StopRequested when a stop request came during it."""
        e = self.cfg.eval
        return evaluate(model, stream, ks=e.ks, item_chunk=e.item_chunk, device=self.device,
                        mask_history=e.mask_history, gather_params=gather, stop=self._preempt)

    def _export(self, path) -> None:
        """A self-contained export (mmm4rec.serving.export) that takes the place of ``path`` whole (rank 0); a
        failure there is raised on every rank and leaves ``path`` as it was."""
        model = self._whole_model()

        def write() -> None:
            where = path
            try:  # the run owns its export folders (run.json, the run's lock): replaced without a marker check
                with replace_folder(path, owned=True, create=False) as where:  # write_export makes it
                    write_export(model, where, store=self.data.store, provenance=self.provenance,
                                 **self._catalogue())
            except OSError as e:
                raise CheckpointError(f"{where}: writing the export failed ({e.strerror or e})") from None

        distributed.on_main(write)

    def _catalogue(self) -> dict:
        """The export's popularity (the empty-history fallback) and item titles; without them (the dataset's items
        unreadable here) the export is still written, and serving says what is missing."""
        try:
            return catalogue_extras(self.data.dataset, self.data.store, self.data.seq_index, self.cfg.train_split)
        except (OSError, ValueError) as e:  # DataError is a ValueError
            log.warning("export without popularity and titles: %s", e)
            return {}

    def _whole_model(self) -> Optional[SequentialRecommender]:
        """The model as one process can save and serve it (rank 0; None elsewhere). ZeRO-3 partitions parameters
        and re-partitions them after every module call, an item-parallel rank holds a shard of the features, and a
        bf16 step may hold bf16 features: then the weights go into a standalone CPU model with the whole
        catalogue's fp32 features, the ones an export serves with."""
        if (self.engine.zero_optimization_stage() != 3 and not self.model.sharded
                and self.data.features.text.dtype == torch.float32):
            return self.model
        with self._gather_params():
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()} \
                if self.env.is_main else None
        if not self.env.is_main:
            return None
        model = build_model(self.cfg.model, item_features(self.data.store))
        model.load_state_dict(state)
        return model.train(self.model.training)

    def _checkpoint(self) -> None:
        now = time.time()
        self.progress.wall_time_s += now - self._clock
        self._clock = now
        client = {"progress": vars(self.progress), "stream": self.stream.state_dict()}
        with distributed.quiet_period():
            self.checkpoints.save(self.engine, self.progress.global_step, client, self.digest)

    def _resume(self) -> None:
        client = self.checkpoints.load_latest(self.engine, self.digest)
        if client is not None:
            self.progress = Progress.from_state(client["progress"])
            self.stream.load_state_dict(client["stream"])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Optional[dict]:
        """Train to the end (returns the summary) or until preempted (returns None, checkpoint written)."""
        t = self.cfg.train
        self._resume()
        self._clock = time.time()  # wall time accumulates over resumes, checkpoint by checkpoint
        # TensorBoard drops events past the resumed step, so a step never appears twice in the curves.
        self.monitor = Monitor(self.run, self.env, purge_step=self.progress.global_step + 1
                               if self.progress.global_step else None)
        log.info("%s: %s", t.task, self.stream.describe())
        # installed until fit returns: the final test evaluation honours a stop request too
        preempt = self._preempt = Preemption(self.env.world_size, self.progress.global_step)
        try:
            try:
                stopped = False
                if self.progress.pending_validation is not None:  # a stop request interrupted it: redo it
                    stopped = self._validate(self.progress.pending_validation)  # the next checkpoint records it
                while not stopped and self.stream.epoch < t.epochs and not self._done():
                    epoch = self.stream.epoch
                    ended = self._train_epoch(epoch, preempt)
                    if ended == "preempted":
                        return self._stopped(None)
                    stopped = ended == "stopped" or (self.validation is not None and self._validate(epoch))
                    self._checkpoint()
                    if ended == "max_steps":
                        break
                if stopped:
                    log.info("early stopping: no %s improvement in %d validations", self.cfg.eval.metric,
                             t.patience)
            except StopRequested:
                self._checkpoint()  # progress.pending_validation is set: the resumed run validates first
                log.warning("stop requested during validation at step %d: checkpoint written, exiting for requeue "
                            "(the resumed run redoes this validation)", self.progress.global_step)
                return self._stopped(None)
            except BaseException:
                distributed.end_stopped_peers()
                raise
            finally:
                distributed.stop_watchdog()
            summary = self._finish()
            self.monitor.close()
            return summary
        finally:
            preempt.restore()

    def _stopped(self, summary: Optional[dict]) -> Optional[dict]:
        distributed.stop_watchdog()
        self.monitor.close()
        return summary

    def _stopped_by(self) -> str:
        """Why training ended: "early_stopping" (train.patience validations without improvement), "max_steps"
        or "epochs"."""
        t, p = self.cfg.train, self.progress
        if self.validation is not None and p.bad_evals >= t.patience:
            return "early_stopping"
        return "max_steps" if t.max_steps and p.global_step >= t.max_steps else "epochs"

    def _done(self) -> bool:
        t = self.cfg.train
        return bool(t.max_steps and self.progress.global_step >= t.max_steps) or (
            self.validation is not None and self.progress.bad_evals >= t.patience)

    def _train_epoch(self, epoch: int, preempt: Preemption) -> str:
        """One epoch, or what is left of it: how it ended — "epoch", "max_steps", "stopped" (early stopping at a
        step validation) or "preempted" (checkpoint written)."""
        t, e, engine = self.cfg.train, self.cfg.eval, self.engine
        steps = self.stream.steps_per_epoch
        interactive = self.env.is_main and sys.stderr.isatty()  # no progress bar in SLURM / redirected logs
        bar = tqdm(total=steps, initial=self.stream.step, desc=f"epoch {epoch}", disable=not interactive,
                   dynamic_ncols=True, leave=False)
        window = Window(self.device)
        ended = "epoch"
        started, first_batch = time.perf_counter(), None
        for raw in self.stream:
            if first_batch is None:
                first_batch = time.perf_counter() - started
            batch = Batch.from_dict(raw).to(self.device)
            loss = engine(batch)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            log_step = boundary and (self.progress.global_step + 1) % t.log_every == 0
            with self._grad_norm(log_step):
                engine.step()
            window.add(loss, raw)
            distributed.beat()
            if not boundary:
                continue
            # armed after the first step: compiling the step (train.compile) may take minutes
            distributed.start_watchdog(self.run.path / ".heartbeat", self.env, t.collective_timeout_s)
            self.progress.global_step += 1
            window.steps += 1
            bar.update(1)
            step = self.progress.global_step
            end_of_epoch = self.stream.step == 0
            if not self._first_step_logged:  # within seconds of the start, whatever train.log_every is
                self._first_step_logged = True
                log.info("step %d: first batch %.1f s, first step %.1f s; a line every %d steps (train.log_every)",
                         step, first_batch, time.perf_counter() - started - first_batch, t.log_every)
            if log_step or end_of_epoch:
                self._log_train(step, epoch, window, steps)
            if preempt.agreed(step, self.device):
                self._checkpoint()
                log.warning("preempted at step %d: checkpoint written, exiting for requeue", step)
                ended = "preempted"
                break
            if e.every_steps and step % e.every_steps == 0 and not end_of_epoch and self.validation is not None:
                if self._validate(epoch):
                    ended = "stopped"
                    break
            if t.checkpoint_every and step % t.checkpoint_every == 0 and not end_of_epoch:
                self._checkpoint()
            if t.max_steps and step >= t.max_steps:
                ended = "max_steps"
                break
        bar.close()
        return ended

    @contextlib.contextmanager
    def _grad_norm(self, wanted: bool):
        """Let DeepSpeed compute the gradient norm (a host read) on log steps only: ZeRO-1/2 skip it otherwise
        (zero_optimization.compute_grad_norm=false, see engine.deepspeed_config)."""
        optimizer = self.engine.optimizer
        toggle = wanted and getattr(optimizer, "compute_grad_norm", True) is False
        if toggle:
            optimizer.compute_grad_norm = True
        try:
            yield
        finally:
            if toggle:
                optimizer.compute_grad_norm = False

    def _log_train(self, step: int, epoch: int, window: Window, steps: int) -> None:
        sums = distributed.all_reduce(torch.stack([window.loss.cpu(), window.tokens, window.samples]).to(
            self.device)).tolist()
        world = self.env.world_size
        elapsed = max(time.time() - window.started, 1e-9)
        values = {
            "train/loss": sums[0] / max(window.micro_steps * world, 1),
            "train/lr": self.engine.get_lr()[0],
            "train/samples_per_s": sums[2] / elapsed,
            "train/tokens_per_s": sums[1] / elapsed,
            "train/peak_memory_mb": peak_memory_mb(self.device),
        }
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            values["train/grad_norm"] = float(grad_norm)
        self.monitor.scalars(step, values, epoch=epoch)
        left = steps - self.stream.step if self.stream.step else 0
        until = "epoch"
        cap = self.cfg.train.max_steps
        if cap and cap - step <= left:  # train.max_steps ends the run before this epoch ends
            left, until = max(cap - step, 0), f"max_steps {cap}"
        eta = left * elapsed / max(window.steps, 1)
        log.info("step %d epoch %d (%d/%d) loss %.4f lr %.3g %.0f samples/s ETA %s %s", step, epoch,
                 self.stream.step or steps, steps, values["train/loss"], values["train/lr"],
                 values["train/samples_per_s"], until, _duration(eta))
        window.reset()

    def _validate(self, epoch: int) -> bool:
        """Evaluate on the validation users, keep the best export; True when patience is exhausted."""
        p, e = self.progress, self.cfg.eval
        if p.history and p.history[-1]["step"] == p.global_step:  # a step validation just before an epoch end
            return p.bad_evals >= self.cfg.train.patience
        log.info("validating at step %d", p.global_step)
        p.pending_validation = epoch  # what a checkpoint written while it runs records
        metrics = self._evaluate(self.model, self.validation, self._gather_params())
        p.pending_validation = None
        value = metrics[e.metric]
        p.history.append({"epoch": epoch, "step": p.global_step, **metrics})
        if value > p.best:
            p.best, p.best_epoch, p.best_step, p.bad_evals = value, epoch, p.global_step, 0
            p.best_wall_time_s = p.wall_time_s + (time.time() - self._clock)
            self._export(self.run.best)
        else:
            p.bad_evals += 1
        self.monitor.scalars(p.global_step, {f"valid/{k}": v for k, v in metrics.items()} |
                             {"valid/best_epoch": p.best_epoch, "valid/epochs_to_best": p.best_epoch + 1},
                             epoch=epoch)
        log.info("epoch %d step %d valid %s %.4f (best %.4f at epoch %d)", epoch, p.global_step, e.metric, value,
                 p.best, p.best_epoch)
        if self.examples is not None and self.engine.zero_optimization_stage() != 3:
            batch = next(iter(self.validation), None)
            if batch is not None:
                self.examples.write(self.monitor.writer, self.model, batch, p.global_step, self.device)
        return p.bad_evals >= self.cfg.train.patience

    def _finish(self) -> Optional[dict]:
        """Export (the best validated weights when there was validation), test (fine-tuning), write summary.json
        (None, no summary, when a stop request interrupted the test)."""
        p, cfg = self.progress, self.cfg
        export = self.run.export
        if p.best_epoch < 0:
            self._export(export)
        else:
            if self.env.is_main:
                with replace_folder(export, owned=True) as tmp:  # exports are never edited: links
                    shutil.copytree(self.run.best, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
            barrier()
        test = None
        if cfg.train.task == "finetune":
            best = from_pretrained(export, self.data.features, expect=cfg.model).to(self.device)
            log.info("testing %s", export)
            try:
                test = self._evaluate(best, eval_stream(cfg, self.data, self.env, "test"))
            except StopRequested:
                log.warning("stop requested during the test evaluation: %s is written, its test metrics and "
                            "summary.json are not; the same command again tests it", export)
                return None
            self.monitor.scalars(p.global_step, {f"test/{k}": v for k, v in test.items()})
            log.info("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "users"))
        summary = {
            "task": cfg.train.task,
            "test": test,
            "best_epoch": p.best_epoch,
            "best_step": p.best_step,
            "epochs_to_best": p.best_epoch + 1 if p.best_epoch >= 0 else None,
            "best_valid": p.best if p.best_epoch >= 0 else None,
            "wall_time_to_best_s": round(p.best_wall_time_s, 2) if p.best_epoch >= 0 else None,
            "valid_history": p.history,
            "stopped_by": self._stopped_by(),
            "global_step": p.global_step,
            "steps_per_epoch": self.stream.steps_per_epoch,
            "epochs": self.stream.epoch,
            "world_size": self.env.world_size,
            "global_batch": self.stream.global_batch,
            "wall_time_s": round(p.wall_time_s, 2),
            "provenance": self.provenance,
            "bad_records": self.data.bad_records,
            "export": str(export),
            "config": cfg.to_dict(),
        }
        self.monitor.hparams(hparams(cfg, self.env, self.stream.global_batch, self.data),
                             {k: v for k, v in (test or {}).items() if k != "users"}
                             or ({"best_valid": p.best} if p.best_epoch >= 0 else {}))
        if self.env.is_main:
            write_atomic(self.run.summary, json.dumps(summary, indent=2, default=str))
        return summary


def hparams(cfg: RunConfig, env: DistEnv, global_batch: int, data: Data) -> dict:
    """What TensorBoard's hparams view shows for a run: the nested settings flattened, plus derived ones."""
    out = flatten({"model": cfg.model.__dict__ | {"ssd": vars(cfg.model.ssd), "compat": vars(cfg.model.compat)},
                   "train": cfg.train.__dict__, "data": {k: v for k, v in cfg.data.__dict__.items() if k != "encoder"},
                   "encoder": vars(cfg.data.encoder)})
    return out | {"world_size": env.world_size, "global_batch": global_batch, "loss": cfg.loss_name,
                  "num_items": data.features.num_items}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
