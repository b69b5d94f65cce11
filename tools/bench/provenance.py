"""What every results JSON records besides its numbers: the command, git revision, machine (with the CPU's ISA)
and date — mmm4rec.provenance plus the command line."""
from __future__ import annotations

import sys
from pathlib import Path

from mmm4rec.provenance import code_revision, machine, provenance as run_provenance

REPO = Path(__file__).resolve().parents[2]


def provenance() -> dict:
    script = Path(sys.argv[0])
    command = script.resolve().relative_to(REPO).as_posix() if script.is_absolute() else sys.argv[0]
    p = run_provenance()
    return {"command": " ".join([command, *sys.argv[1:]]), "git_revision": code_revision(), "date": p["date"],
            "machine": machine(), "versions": p["versions"]}
