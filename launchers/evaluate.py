#!/usr/bin/env python
"""MMM4Rec evaluate: see `python launchers/evaluate.py --help` and README.md.

Runs unchanged under python, torchrun, deepspeed, accelerate launch and srun; the same as `mmm4rec evaluate`."""
import sys

from mmm4rec.commands import evaluate

if __name__ == "__main__":
    sys.exit(evaluate())
