#!/usr/bin/env python
"""MMM4Rec evaluate: see `python launchers/evaluate.py --help` and README.md.

Runs unchanged under python, torchrun, deepspeed, accelerate launch and srun."""
import sys

from mmm4rec.train.cli import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
