"""What every results JSON records besides its numbers: the command, git revision, machine and date."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on this machine
        return ""


def provenance() -> dict:
    # a copy of the tree without .git (a GPU machine it was shipped to) names its revision in the environment
    rev = _git("rev-parse", "HEAD") or os.environ.get("MMM4REC_GIT_REVISION", "unknown")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {
        "command": " ".join([Path(sys.argv[0]).relative_to(REPO).as_posix() if Path(sys.argv[0]).is_absolute()
                             else sys.argv[0], *sys.argv[1:]]),
        "git_revision": rev + (" (with uncommitted changes)" if dirty else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
                   + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
    }
