#!/usr/bin/env python
"""MMM4Rec pretrain: see `python launchers/pretrain.py --help` and README.md.

Runs unchanged under python, torchrun, deepspeed, accelerate launch and srun; the same as `mmm4rec pretrain`."""
import sys

from mmm4rec.commands import pretrain

if __name__ == "__main__":
    sys.exit(pretrain())
