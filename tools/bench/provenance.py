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


def provenance() -> dict:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {
        "command": " ".join([Path(sys.argv[0]).relative_to(REPO).as_posix() if Path(sys.argv[0]).is_absolute()
                             else sys.argv[0], *sys.argv[1:]]),
        "git_revision": rev + (" (with uncommitted changes)" if dirty else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads), Python {platform.python_version()}",
    }
