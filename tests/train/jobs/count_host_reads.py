"""Run a launcher with every host read of a tensor value counted: ``Tensor.item/tolist/__bool__/__int__/
__float__`` and ``torch.cuda.synchronize``, each attributed to the trainer's global step at the time of the call.

    python count_host_reads.py OUT.json finetune.py <launcher args…>

Writes {"calls": [[global_step, what, where], …]} (rank 0) when the run ends.
"""
import json
import runpy
import sys
import traceback
from pathlib import Path

import torch

out, script, *args = sys.argv[1:]
calls: list = []
trainer = {}


def counted(name, original):
    def wrapper(*a, **k):
        if "t" in trainer:
            frame = traceback.extract_stack(limit=3)[0]
            calls.append([trainer["t"].progress.global_step, name, f"{Path(frame.filename).name}:{frame.lineno}"])
        return original(*a, **k)
    return wrapper


for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
    setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
torch.cuda.synchronize = counted("cuda.synchronize", torch.cuda.synchronize)

from mmm4rec.train import trainer as trainer_module  # noqa: E402

original_fit = trainer_module.Trainer.fit


def fit(self):
    trainer["t"] = self
    try:
        return original_fit(self)
    finally:
        trainer.clear()
        if self.env.is_main:
            Path(out).write_text(json.dumps({"calls": calls}))


trainer_module.Trainer.fit = fit
sys.argv = [script, *args]
runpy.run_path(str(Path(__file__).resolve().parents[3] / "launchers" / script), run_name="__main__")
