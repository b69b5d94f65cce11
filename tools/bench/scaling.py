"""Data-parallel scaling on this machine: the real launcher (torchrun) with 1 process × 2 threads against 2 processes ×
1 thread (gloo, ZeRO-1 and ZeRO-2) at the same global batch, on the same data, at the paper's model width. On a
2-core box the hardware does not grow with the process count, so the ratio measures what distribution costs
(communication, duplicated work), not speed-up.

    .venv/bin/python tools/bench/scaling.py --dataset DIR [--steps 12] [--json out.json]
DIR: any prepared dataset (e.g. data/ml-1m); its feature store is built on first use.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import REPO, provenance

from mmm4rec.distributed import free_port


def run(dataset: str, nproc: int, zero: int, steps: int, global_batch: int, work: Path) -> float:
    run_dir = work / f"n{nproc}-z{zero}"
    args = ["--config", "finetune", "--run-dir", str(run_dir)]
    for s in (f"data.dataset={dataset}", f"data.batch_size={global_batch // nproc}", "train.grad_accum=1",
              f"train.zero_stage={zero}", "train.precision=fp32", f"train.max_steps={steps}", "train.log_every=1",
              "data.num_workers=0", "train.epochs=1"):
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // nproc), "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()),
           str(REPO / "launchers" / "finetune.py"), *args]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][2:]  # skip warm-up steps
    return sum(rates) / len(rates)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    base = run(args.dataset, 1, 1, args.steps, args.global_batch, work)
    out = {"1 process x 2 threads, ZeRO-1": base}
    print(f"global batch {args.global_batch}, paper-width MMM4Rec, fp32, gloo, samples/s:")
    print(f"  1 process × 2 threads, ZeRO-1: {base:8.1f}")
    for zero in (1, 2):
        v = run(args.dataset, 2, zero, args.steps, args.global_batch, work)
        out[f"2 processes x 1 thread, ZeRO-{zero}"] = v
        print(f"  2 processes × 1 thread, ZeRO-{zero}: {v:8.1f}  -> {v / base:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(), "global_batch": args.global_batch,
                                               "samples_per_s": {k: round(v, 1) for k, v in out.items()}}, indent=2))


if __name__ == "__main__":
    main()
