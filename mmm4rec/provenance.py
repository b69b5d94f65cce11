"""Where a result came from: code revision, library versions, machine, CPU ISA — recorded by every run (run.json,
summary.json, config.yaml, exports) and every benchmark (tools/bench)."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def code_revision() -> str:
    """The git revision of the checkout the package runs from (marked when it has uncommitted changes), the
    MMM4REC_GIT_REVISION a copied tree names, or the installed package version."""
    rev = _git("rev-parse", "HEAD")
    if rev:
        return rev + (" (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else "")
    from . import __version__

    return os.environ.get("MMM4REC_GIT_REVISION") or f"mmm4rec {__version__} (installed, no git checkout)"


def cpu_isa() -> str:
    """The CPU's vector ISA as torch sees it, and whether it has native bf16 (without it bf16 is emulated, at the
    cost mmm4rec.train.engine.EMULATED_BF16_COST states): compare CPU timings only within one machine."""
    bf16 = [name for name, ok in (("avx512_bf16", torch.cpu._is_avx512_bf16_supported()),
                                  ("amx", torch.cpu._is_amx_tile_supported())) if ok]
    return torch.backends.cpu.get_cpu_capability() + (f" + {' + '.join(bf16)}" if bf16 else " (no native bf16)")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({cpu_isa()}), {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}{gpu}")


def versions() -> dict:
    out = {"torch": str(torch.__version__)}
    for name in ("deepspeed", "transformers", "webdataset"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed (serving-only installs have no deepspeed)
            out[name] = None
    return out


def provenance(**extra) -> dict:
    return {"revision": code_revision(), "package": str(PACKAGE), "versions": versions(), "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
