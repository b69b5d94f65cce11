#!/usr/bin/env python
"""MMM4Rec finetune: see `python launchers/finetune.py --help` and README.md.

Runs unchanged under python, torchrun, deepspeed, accelerate launch and srun; the same as `mmm4rec finetune`."""
import sys

from mmm4rec.commands import finetune

if __name__ == "__main__":
    sys.exit(finetune())
