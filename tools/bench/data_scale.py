"""Data at scale: raw interaction tables -> dataset folder, old converter against the columnar one side by side,
at 10⁷ and 10⁸ events, with wall time and peak RSS of every run (its process tree), in one invocation.

Inputs (generated here, never committed, written in chunks so the generator's memory stays flat):
- ``synthetic``: a CSV ``user,item,timestamp`` with ~50 events per user and power-law item popularity, plus an
  item CSV with two text columns — the table the issue measured today's converter on;
- ``fractal``: ML-1M expanded by tools/make_fractal.py (Parquet; needs data/raw/ml-1m, tools/fetch_movielens.py).

Per input and size: the old converter (git revision ``--old-rev``, run from a git worktree of it, where it fits in
memory: ``--old-up-to``); the new one as steps — 2 (the engine: read, filter, partition) then 3 (shards) with 1 and
with 2 worker processes on the same partitions, then 4 (assemble); and with ``--train``, the first training steps
on the largest fractal dataset (stage 1 features, the stage-2 index, 20 sampled-softmax steps of the tiny preset).

    .venv/bin/python tools/bench/data_scale.py --events 1e7 1e8 --old-up-to 1e7 --train --json docs/results/data_scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from provenance import REPO, provenance

PYTHON = sys.executable
TEXT_FIELDS = ("title", "category")


def run(cmd: list[str], env: dict | None = None, cwd: Path = REPO, log: Path | None = None) -> dict:
    """Wall seconds and peak RSS (GB, the largest of the process and its waited-for children) of a command."""
    started = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{tail}")
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2)}


def synthetic(folder: Path, events: int, seed: int = 0, chunk: int = 5_000_000) -> tuple[Path, Path]:
    """``events`` rows, users ~ events/50 (uniform), items ~ events/20 (Pareto popularity), in chunks."""
    inter, items = folder / "events.csv", folder / "items.csv"
    if inter.is_file() and items.is_file():
        return inter, items
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users, n_items = max(events // 50, 1), max(events // 20, 1)
    with open(inter.with_suffix(".part"), "w") as f:
        f.write("user,item,timestamp\n")
        for start in range(0, events, chunk):
            n = min(chunk, events - start)
            u = rng.integers(0, users, n)
            i = (rng.pareto(1.2, n) * n_items / 50).astype(np.int64) % n_items
            t = 1_500_000_000 + rng.integers(0, 10**8, n)
            f.write("\n".join(f"u{a},i{b},{c}" for a, b, c in zip(u.tolist(), i.tolist(), t.tolist())) + "\n")
    inter.with_suffix(".part").replace(inter)
    with open(items, "w") as f:
        f.write("item,title,category\n")
        f.writelines(f"i{i},Title {i},cat{i % 97}\n" for i in range(n_items))
    return inter, items


def fractal(folder: Path, events: int, seed: int = 0) -> tuple[Path, Path]:
    inter, items = folder / "events.parquet", folder / "items.parquet"
    if not (inter.is_file() and items.is_file()):
        run([PYTHON, "tools/make_fractal.py", "--events", str(events), "--seed", str(seed), "--out", str(folder)])
    return inter, items


def old_worktree(rev: str, where: Path) -> Path:
    if not (where / "tools" / "prepare_tables.py").is_file():
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(where), rev], cwd=REPO, check=True,
                       capture_output=True)
    return where


def convert_args(kind: str, inter: Path, items: Path) -> list[str]:
    fields = TEXT_FIELDS if kind == "synthetic" else ("title", "year", "genres")
    args = ["--interactions", str(inter), "--items", str(items), "--text-fields", *fields, "--name", kind]
    return args + (["--list-fields", "genres=|"] if kind == "fractal" else [])


def measure(kind: str, events: int, work: Path, args: argparse.Namespace) -> dict:
    folder = work / f"{kind}-{events:.0e}"
    inter, items = (synthetic if kind == "synthetic" else fractal)(folder / "raw", events)
    result: dict = {"input": kind, "events_target": events, "input_bytes": inter.stat().st_size}
    common = convert_args(kind, inter, items)
    out, build = folder / "dataset", folder / ".dataset.build"
    if events <= args.old_up_to:
        old = old_worktree(args.old_rev, work / "old-tree")
        shutil.rmtree(folder / "old", ignore_errors=True)
        result["old"] = run([PYTHON, str(old / "tools" / "prepare_tables.py"), *common, "--out", str(folder / "old")],
                            env={"PYTHONPATH": str(old)}, cwd=old, log=folder / "old.log")
        print(kind, events, "old", result["old"], flush=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)
    new = [PYTHON, "tools/prepare_tables.py", *common, "--out", str(out), "--partitions", str(args.partitions),
           "--memory-limit", args.memory_limit, "--defer-shards"]
    step2 = run(new, log=folder / "step2.log")
    shards = {}
    for workers in (1, 2):
        shutil.rmtree(build / "done", ignore_errors=True)
        shutil.rmtree(build / "shards", ignore_errors=True)
        shards[workers] = run([PYTHON, "tools/write_shards.py", str(build), "--workers", str(workers)],
                              log=folder / f"shards{workers}.log")
    step4 = run([PYTHON, "tools/write_shards.py", str(build), "--assemble", str(out)], log=folder / "assemble.log")
    manifest = json.loads((out / "dataset.json").read_text())
    wall = step2["wall_s"] + shards[2]["wall_s"] + step4["wall_s"]
    result["new"] = {"step2_engine": step2, "step3_shards_1_worker": shards[1], "step3_shards_2_workers": shards[2],
                     "step4_assemble": step4, "total_wall_s_2_workers": round(wall, 1),
                     "peak_rss_gb": max(step2["peak_rss_gb"], shards[2]["peak_rss_gb"], step4["peak_rss_gb"]),
                     "events_per_s": round(events / wall),
                     "shard_speedup_2_vs_1_workers": round(shards[1]["wall_s"] / shards[2]["wall_s"], 2)}
    result["dataset"] = {**{k: manifest["counts"][k] for k in ("users", "items", "interactions")},
                         "shards": len(manifest["shards"]["items"]) + len(manifest["shards"]["seqs"]),
                         "filtering": manifest["provenance"]["filtering"]}
    if "old" in result:
        result["speedup_events_per_s"] = round(result["old"]["wall_s"] / wall, 2)
        old_manifest = json.loads((folder / "old" / "dataset.json").read_text())
        result["same_records_as_old"] = same_records(folder / "old", out)
        result["same_counts_as_old"] = old_manifest["counts"] == manifest["counts"]
        shutil.rmtree(folder / "old", ignore_errors=True)
    print(kind, events, "new", result["new"], flush=True)
    return result


def same_records(a: Path, b: Path) -> bool:
    """Every user's sequence and every item record equal (the shard layouts differ with partitions)."""
    from mmm4rec.data.dataset import load_manifest
    from mmm4rec.data.schema import BadRecords
    from mmm4rec.data.shards import iter_item_records, iter_seq_records

    def digest(folder: Path) -> tuple:
        import hashlib
        m, bad = load_manifest(folder), BadRecords(strict=True)
        seqs = sorted(hashlib.sha1(json.dumps([r.user, r.items, r.timestamps.tolist()]).encode()).hexdigest()
                      for _, r in iter_seq_records(m.seqs, bad))
        items = sorted(hashlib.sha1(json.dumps([r.key, r.text, r.meta]).encode()).hexdigest()
                       for _, r in iter_item_records(m.items, bad, check_images=False))
        return hashlib.sha1("".join(seqs + items).encode()).hexdigest()

    return digest(a) == digest(b)


def train(folder: Path, work: Path) -> dict:
    """Stage 1 (offline MiniLM), the stage-2 index and 20 sampled-softmax steps of the tiny preset."""
    run_dir = work / "train-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = run([PYTHON, "launchers/pretrain.py", "--config", "tiny", "--set", f"data.dataset={folder}",
                  "--set", "train.loss=sampled", "--set", "train.negatives=256", "--set", "train.max_steps=20",
                  "--set", "train.log_every=5", "--set", "eval.every_steps=0", "--run-dir", str(run_dir)],
                 env={"HF_HUB_OFFLINE": "1"}, log=work / "train.log")
    log = (work / "train.log").read_text()
    result["log_tail"] = [line for line in log.splitlines() if "step" in line or "index" in line][-8:]
    return result


def item_read(folder: Path) -> dict:
    """Stage 1's item read pass over a dataset's item shards (iter_item_records: hash check, parse, validate),
    items/s: streamed through webdataset's tarfile reader (how it read them before) vs read whole and parsed by
    tar_reader (listed shards up to shards.WHOLE_READ_BYTES), same shards, same process."""
    from mmm4rec.data.dataset import load_manifest
    from mmm4rec.data.schema import BadRecords
    from mmm4rec.data.shards import iter_item_records

    manifest = load_manifest(folder)
    result = {"items": manifest.counts["items"]}
    for label, shards in (("streamed_items_per_s", [s.path for s in manifest.items]),
                          ("whole_shard_items_per_s", manifest.items)):
        started = time.perf_counter()
        n = sum(1 for _ in iter_item_records(shards, BadRecords(), check_images=False))
        result[label] = round(n / (time.perf_counter() - started))
    result["speedup"] = round(result["whole_shard_items_per_s"] / result["streamed_items_per_s"], 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=float, nargs="+", default=[1e7, 1e8])
    p.add_argument("--inputs", nargs="+", default=["synthetic", "fractal"], choices=["synthetic", "fractal"])
    p.add_argument("--old-up-to", type=float, default=1e7, help="run the old converter up to this size")
    p.add_argument("--old-rev", default="ce31670", help="the old converter's git revision")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--memory-limit", default="3GB")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmm4rec-data-scale"))
    p.add_argument("--train", action="store_true", help="train on the largest fractal dataset")
    p.add_argument("--item-read", action="store_true", help="stage 1's item read pass on the largest dataset")
    p.add_argument("--json", type=Path)
    p.add_argument("--item-read-only", type=Path, metavar="DATASET",
                   help="only measure stage 1's item read pass on this dataset folder")
    args = p.parse_args()
    if args.item_read_only:
        report = {"provenance": provenance(), "stage1_item_read": {"dataset": str(args.item_read_only),
                                                                   **item_read(args.item_read_only)}}
        text = json.dumps(report, indent=1)
        if args.json:
            args.json.write_text(text + "\n")
        print(text)
        return
    results = [measure(kind, int(n), args.work, args) for n in args.events for kind in args.inputs]
    report = {"provenance": provenance(), "partitions": args.partitions, "memory_limit": args.memory_limit,
              "results": results}
    for kind in args.inputs:
        sizes = [r for r in results if r["input"] == kind]
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            report[f"{kind}_rss_ratio_largest_vs_smallest"] = round(
                large["new"]["peak_rss_gb"] / small["new"]["peak_rss_gb"], 2)
    if args.train and "fractal" in args.inputs:
        largest = max(args.events)
        report["train"] = train(args.work / f"fractal-{int(largest):.0e}" / "dataset", args.work)
        print("train", report["train"], flush=True)
    if args.item_read:
        largest = max(results, key=lambda r: (r["dataset"]["items"], r["events_target"]))
        report["stage1_item_read"] = {"dataset": f"{largest['input']}-{largest['events_target']:.0e}",
                                      **item_read(args.work / f"{largest['input']}-{largest['events_target']:.0e}"
                                                  / "dataset")}
        print("item read", report["stage1_item_read"], flush=True)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
