"""DeepSpeed as the training engine: a ZeRO JSON from ds_configs/ with its "auto" fields filled from the run
config, the paper's optimiser as a client optimiser, and bf16 through DeepSpeed's torch_autocast section (fp32
master weights; Δ and the SSD cumulative sums stay fp32 inside the model)."""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch

from ..config import ConfigError, RunConfig
from ..distributed import DistEnv

log = logging.getLogger(__name__)


def deepspeed_config(cfg: RunConfig, world_size: int, template: str | os.PathLike) -> dict:
    """Fill "auto" fields of a DeepSpeed JSON from the run config; values a user wrote must agree with it."""
    path = Path(template)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"DeepSpeed config {path} does not exist") from None
    except ValueError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    t = cfg.train
    micro, accum = cfg.data.batch_size, t.grad_accum
    wanted = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
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
    if zero.get("stage", "auto") == "auto":
        zero["stage"] = t.zero_stage
    autocast = ds.setdefault("torch_autocast", {"dtype": "bfloat16"})
    if autocast.get("enabled", "auto") == "auto":
        autocast["enabled"] = t.precision == "bf16"
    for key in ("fp16", "bf16"):
        if ds.get(key, {}).get("enabled"):
            raise ConfigError(f"{path}: use torch_autocast for mixed precision (keeps fp32 master weights and lets "
                              f"the model keep its SSD recurrences in fp32), not \"{key}\"")
    return ds


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """NAdam (the paper) or AdamW; weight decay on every parameter, as the reference does."""
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if t.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def initialize(model: torch.nn.Module, cfg: RunConfig, env: DistEnv, ds_config: dict):
    """-> DeepSpeed engine (owning model, optimiser and the ZeRO partitioning)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend=env.backend, auto_mpi_discovery=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg),
                                      config=copy.deepcopy(ds_config))
    if cfg.train.compile:  # in place: parameter names, checkpoints and exports stay those of the eager model
        engine.compile()
    z = ds_config["zero_optimization"]
    log.info("DeepSpeed ZeRO-%s%s, %s, global batch %d = micro-batch %d × accumulation %d × world %d",
             z["stage"], " + optimizer offload" if "offload_optimizer" in z else "",
             "bf16 autocast" if ds_config["torch_autocast"]["enabled"] else "fp32", ds_config["train_batch_size"],
             ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"], env.world_size)
    return engine
