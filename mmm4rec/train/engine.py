"""DeepSpeed as the training engine: a ZeRO JSON from ds_configs/ with its "auto" fields filled from the run
config, the paper's optimiser as a client optimiser, the learning-rate schedule, and bf16 through DeepSpeed's
torch_autocast section (fp32 master weights; Δ and the SSD cumulative sums stay fp32 inside the model)."""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from ..config import ConfigError, RunConfig
from ..distributed import DistEnv
from .checkpoint import install_safe_loading
from .monitor import adopt_library_loggers
from .optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

# What bf16 costs on a CPU that emulates it, stated once (measured: docs/results/reference.md, a 2-core AVX2 EPYC,
# 7.6 samples/s in bf16 autocast against 177 in fp32).
EMULATED_BF16_COST = "~25x slower per step than fp32"


def step_precision(cfg: RunConfig, device: torch.device) -> str:
    """train.precision with "auto" resolved: bf16 on CUDA and on CPUs with native bf16 (AVX-512-BF16 or AMX),
    fp32 on the rest, where bf16 is emulated (EMULATED_BF16_COST)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if native_bf16() else "fp32"


def native_bf16() -> bool:
    """The CPU computes bf16 natively (AVX-512-BF16 or AMX); without, torch emulates it."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def precision_warning(cfg: RunConfig, device: torch.device, precision: str,
                      native: Optional[bool] = None) -> Optional[str]:
    """The start-up warning of a bf16 step on a CPU that emulates bf16 (a GPU preset on a CPU); None otherwise.
    "auto" never picks bf16 there; an explicit or preset bf16 runs, but says what it costs."""
    if device.type != "cpu" or precision != "bf16":
        return None
    if native_bf16() if native is None else native:
        return None
    return (f"train.precision={cfg.train.precision} on a CPU without native bf16 (no AVX-512-BF16 or AMX): bf16 "
            f"is emulated there, {EMULATED_BF16_COST}; use a CPU preset (cpu_pretrain, cpu_finetune) or "
            "--set train.precision=auto")


def deepspeed_config(cfg: RunConfig, world_size: int, template: str | os.PathLike, precision: str) -> dict:
    """Fill "auto" fields of a DeepSpeed JSON from the run config; values a user wrote must agree with it."""
    path = Path(template)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"DeepSpeed config {path} does not exist") from None
    except ValueError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"DeepSpeed config {path} must be a JSON object, got {type(ds).__name__}")
    t = cfg.train
    micro, accum = cfg.data.batch_size, t.grad_accum
    wanted = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": cfg.global_batch(world_size),
        "gradient_clipping": t.grad_clip,
    }
    for key, value in wanted.items():
        given = ds.get(key, "auto")
        if given == "auto":
            ds[key] = value
        elif given != value:
            raise ConfigError(
                f"{path}: {key}={given} disagrees with the run config ({value}: micro-batch {micro} × accumulation "
                f"{accum} × world size {world_size}); set it to \"auto\" or change data.batch_size/train.grad_accum"
            )
    zero = ds.setdefault("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{path}: zero_optimization must be a JSON object")
    stage = zero.get("stage", "auto")
    if stage == "auto":
        zero["stage"] = t.zero_stage
    elif stage != t.zero_stage:
        raise ConfigError(f"{path}: zero_optimization.stage={stage} disagrees with train.zero_stage={t.zero_stage}; "
                          "set one of them (\"auto\" in the JSON takes the run config's)")
    offload = "offload_optimizer" in zero
    if offload != t.offload_optimizer:
        raise ConfigError(f"{path}: {'has' if offload else 'has no'} zero_optimization.offload_optimizer but "
                          f"train.offload_optimizer={str(t.offload_optimizer).lower()}")
    if zero["stage"] in (1, 2) and t.grad_clip == 0 and not offload:
        # DeepSpeed would read the gradient norm on the host every step; the trainer asks for it on log steps.
        zero.setdefault("compute_grad_norm", False)
    autocast = ds.setdefault("torch_autocast", {"dtype": "bfloat16"})
    if autocast.get("enabled", "auto") == "auto":
        autocast["enabled"] = precision == "bf16"
    elif autocast["enabled"] != (precision == "bf16"):
        raise ConfigError(f"{path}: torch_autocast.enabled={autocast['enabled']} disagrees with the run's "
                          f"precision {precision} (train.precision={t.precision})")
    for key in ("fp16", "bf16"):
        if ds.get(key, {}).get("enabled"):
            raise ConfigError(f"{path}: use torch_autocast for mixed precision (keeps fp32 master weights and lets "
                              f"the model keep its SSD recurrences in fp32), not \"{key}\"")
    _check_known_keys(ds, path)
    return ds


def _check_known_keys(ds: dict, path: Path) -> None:
    """DeepSpeed ignores unknown top-level keys and fails deep inside initialize on unknown nested ones; both are
    a one-line error here, at start-up."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    try:
        DeepSpeedZeroConfig(**ds["zero_optimization"])
    except Exception as e:  # pydantic.ValidationError
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(e)
        raise ConfigError(f"{path}: zero_optimization is not valid for DeepSpeed: {detail}") from None
    known = _known_top_level_keys()
    unknown = sorted(set(ds) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown DeepSpeed config key(s) {unknown}")


def _known_top_level_keys() -> set[str]:
    """DeepSpeed reads its top-level keys by the names in deepspeed.runtime.constants (it has no schema for them),
    plus the sections configured elsewhere."""
    import deepspeed.runtime.constants as c

    return {v for k, v in vars(c).items() if k.isupper() and isinstance(v, str) and v.isidentifier()} | {
        "torch_autocast", "zero_optimization", "zero_allow_untested_optimizer", "steps_per_print",
        "wall_clock_breakdown", "optimizer", "scheduler", "checkpoint", "comms_logger", "flops_profiler",
        "tensorboard", "wandb", "csv_monitor", "aio", "activation_checkpointing", "data_efficiency",
        "compile", "compression_training", "elasticity", "autotuning", "nebula", "monitor_config"}


def initialize(objective: torch.nn.Module, cfg: RunConfig, env: DistEnv, ds_config: dict, total_steps: int):
    """-> DeepSpeed engine (owning the objective — model + loss —, optimiser, schedule and ZeRO partitioning)."""
    import deepspeed

    adopt_library_loggers()
    deepspeed.init_distributed(dist_backend=env.backend, auto_mpi_discovery=False)
    try:
        engine, *_ = deepspeed.initialize(model=objective, optimizer=build_optimizer(objective, cfg.train),
                                          lr_scheduler=build_scheduler(cfg.train, total_steps),
                                          config=copy.deepcopy(ds_config))
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"DeepSpeed refused the configuration: {str(e).strip().splitlines()[0]}") from None
    install_safe_loading(engine)
    if cfg.train.compile:  # in place: parameter names, checkpoints and exports stay those of the eager model
        mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
        engine.compile(compile_kwargs={"mode": mode} if mode else {})
    z = ds_config["zero_optimization"]
    log.info("DeepSpeed ZeRO-%s%s, %s, global batch %d = micro-batch %d × accumulation %d × world %d; %s lr "
             "schedule%s", z["stage"], " + optimizer offload" if "offload_optimizer" in z else "",
             "bf16 autocast" if ds_config["torch_autocast"]["enabled"] else "fp32", ds_config["train_batch_size"],
             ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"], env.world_size,
             cfg.train.schedule, f" after {cfg.train.warmup_steps} warm-up steps" if cfg.train.warmup_steps else "")
    return engine
