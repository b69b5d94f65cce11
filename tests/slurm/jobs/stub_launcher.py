"""Stands in for launchers/{pretrain,finetune,extract_features}.py when testing the job scripts and
slurm/pipeline.sh before (or without) the real launchers: same command line and run-directory contract, no model.

The launcher name is taken from the file name it is invoked as (tests symlink it as launchers/<name>.py in a
scratch repository). Every rank appends one JSON line to $STUB_LOG: name, argv, rank, world size, node, job id.
pretrain/finetune: rank 0 writes <run dir>/summary.json, pretrain also <run dir>/export/{model.safetensors,
config.json}; finetune fails unless train.init_from names an existing export. extract_features writes
<features or dataset/features>/stub-features.json. STUB_FAIL=<name> makes that launcher fail with an error.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

name = Path(sys.argv[0]).stem
rank = int(os.environ.get("SLURM_PROCID", 0))
world = int(os.environ.get("SLURM_NTASKS", 1))
record = {"name": name, "argv": sys.argv[1:], "rank": rank, "world_size": world, "time": time.time(),
          "node": os.environ.get("SLURMD_NODENAME"), "job_id": os.environ.get("SLURM_JOB_ID"),
          "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
          "omp": os.environ.get("OMP_NUM_THREADS")}
print(f"stub {name} rank {rank}/{world} host {record['node']}", flush=True)
if os.environ.get("STUB_LOG"):
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")
if os.environ.get("STUB_FAIL") == name:
    sys.exit(f"stub {name}: failing on purpose (STUB_FAIL={name})")

parser = argparse.ArgumentParser()
if name == "extract_features":
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--features")
    args, _ = parser.parse_known_args()
    out = Path(args.features or Path(args.dataset) / "features")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stub-features-{rank}.json").write_text(json.dumps(record))
    sys.exit(0)

parser.add_argument("--config", required=True)
parser.add_argument("--run-dir", required=True)
parser.add_argument("--set", action="append", default=[])
args, _ = parser.parse_known_args()
overrides = dict(kv.split("=", 1) for kv in args.set)
run = Path(args.run_dir)
run.mkdir(parents=True, exist_ok=True)
if name == "finetune" and "train.init_from" in overrides:
    init = Path(overrides["train.init_from"])
    if not (init / "model.safetensors").exists():
        sys.exit(f"stub finetune: train.init_from={init} has no model.safetensors")
if rank == 0:
    if name == "pretrain":
        (run / "export").mkdir(exist_ok=True)
        (run / "export" / "model.safetensors").write_bytes(b"stub")
        (run / "export" / "config.json").write_text(json.dumps({"config": args.config}))
    summary = {"world_size": world, "global_step": 1, "test": {}, "config": args.config, "overrides": overrides}
    (run / "summary.json").write_text(json.dumps(summary))
