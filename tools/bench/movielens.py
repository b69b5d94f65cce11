"""MovieLens results, reproducible with one command each (the launchers run as subprocesses, two at a time with one
thread each on a 2-core machine):

  quality   ML-100K (or ML-1M): MMM4Rec with text + ID, MMM4Rec text-only (no ID), the SASRec baseline; same
            budget and early stopping; every seed; test metrics unmasked (the protocol) and with seen items
            masked; mean ± std.
  transfer  pre-train on ML-1M (text only, no ID), fine-tune on ML-100K from it, against training from scratch;
            epochs to the best validation score and test metrics per seed; both validation curves in one plot.

    .venv/bin/python tools/bench/movielens.py quality --dataset data/ml-100k --seeds 0 1 2 --out docs/results/ml100k
    .venv/bin/python tools/bench/movielens.py transfer --pretrain-dataset data/ml-1m --dataset data/ml-100k \\
        --seeds 0 1 2 --out docs/results/transfer
Run tools/main_job.sh once first: it fetches and prepares both datasets.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provenance import REPO, provenance

METRICS = ["hit@10", "ndcg@10", "hit@20", "ndcg@20", "hit@50", "ndcg@50", "mrr"]
VARIANTS = {
    "MMM4Rec (text + ID)": [],
    "MMM4Rec (text, no ID)": ["model.id_bias=false"],
    "SASRec (ID)": ["model.arch=sasrec", "model.temperature=1.0"],
}


def launch(script: str, args: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "launchers" / script), *args]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def finetune(run_dir: Path, dataset: str, preset: str, seed: int, overrides: list[str]) -> dict:
    """Train (resuming if the run exists), then evaluate the export with seen items masked."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = [f"data.dataset={dataset}", f"train.seed={seed}", f"data.seed={seed}", *overrides]
    args = ["--config", preset, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    if not (run_dir / "summary.json").exists():
        launch("finetune.py", args, run_dir / "stdout.log")
    masked = run_dir / "masked"
    if not (masked / "eval-test-masked.json").exists():
        launch("evaluate.py", ["--config", preset, "--checkpoint", str(run_dir), "--run-dir", str(masked),
                               "--set", "eval.mask_history=true"] + [a for s in sets for a in ("--set", s)],
               run_dir / "masked.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "test": summary["test"], "test_masked": json.loads((masked / "eval-test-masked.json").read_text()),
            "best_epoch": summary["best_epoch"], "epochs_to_best": summary["epochs_to_best"],
            "epochs_run": summary["epochs"], "valid_history": summary["valid_history"],
            "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)}


def aggregate(runs: list[dict]) -> dict:
    out = {}
    for key in ("test", "test_masked"):
        out[key] = {m: {"mean": statistics.mean(r[key][m] for r in runs),
                        "std": statistics.stdev(r[key][m] for r in runs) if len(runs) > 1 else 0.0} for m in METRICS}
    out["epochs_to_best"] = [r["epochs_to_best"] for r in runs]
    return out


def table(results: dict, key: str) -> str:
    lines = [f"| model | {' | '.join(METRICS)} |", "|---|" + "---|" * len(METRICS)]
    for name, r in results.items():
        agg = r["aggregate"][key]
        lines.append(f"| {name} | " + " | ".join(f"{agg[m]['mean']:.4f} ± {agg[m]['std']:.4f}" for m in METRICS) + " |")
    return "\n".join(lines)


def run_parallel(jobs, workers: int):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


def run_dir(args, variant: str, seed: int) -> Path:
    """Where a fine-tuning run lives; the same variant, seed and overrides share one (transfer reuses quality's
    from-scratch runs)."""
    tag = "-".join([*VARIANTS[variant], *args.set]) or "default"
    return Path(args.runs) / Path(args.dataset).name / f"{variant.split()[0].lower()}-{tag}-s{seed}".replace("=", "_")


def quality(args) -> None:
    variants = [v for v in VARIANTS if not args.variants or v in args.variants]
    jobs = [(name, seed, lambda name=name, seed=seed: finetune(
        run_dir(args, name, seed), args.dataset, args.preset, seed, VARIANTS[name] + args.set))
        for name in variants for seed in args.seeds]
    done = run_parallel([j[2] for j in jobs], args.parallel)
    results = {name: {"runs": [r for (n, _, _), r in zip(jobs, done) if n == name]} for name in variants}
    for r in results.values():
        r["aggregate"] = aggregate(r["runs"])
    out = {**provenance(), "dataset": args.dataset, "preset": args.preset, "overrides": args.set,
           "protocol": "5-core, chronological leave-one-out, full ranking over all items; test_masked removes items "
                       "the user saw before the target", "results": results}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    print(f"{args.dataset}, test, seen items NOT masked:\n{table(results, 'test')}\n")
    print(f"{args.dataset}, test, seen items masked:\n{table(results, 'test_masked')}")


def transfer(args) -> None:
    root = Path(args.runs) / "transfer"
    pre = root / "pretrain-ml1m"
    if not (pre / "summary.json").exists():
        pre.mkdir(parents=True, exist_ok=True)
        launch("pretrain.py", ["--config", args.pretrain_preset, "--set", f"data.dataset={args.pretrain_dataset}",
                               "--run-dir", str(pre)] + [a for s in args.pretrain_set for a in ("--set", s)],
               pre / "stdout.log")
    jobs = []
    for seed in args.seeds:
        jobs.append(("from pre-training", lambda s=seed: finetune(root / f"finetune-pretrained-s{s}", args.dataset,
                                                                  args.preset, s, [f"train.init_from={pre}", *args.set])))
        jobs.append(("from scratch", lambda s=seed: finetune(run_dir(args, "MMM4Rec (text + ID)", s), args.dataset,
                                                             args.preset, s, list(args.set))))
    done = run_parallel([j[1] for j in jobs], args.parallel)
    results = {name: {"runs": [r for (n, _), r in zip(jobs, done) if n == name]}
               for name in ("from pre-training", "from scratch")}
    for r in results.values():
        r["aggregate"] = aggregate(r["runs"])
    pre_summary = json.loads((pre / "summary.json").read_text())
    out = {**provenance(), "pretrain": {"dataset": args.pretrain_dataset, "preset": args.pretrain_preset,
                                                          "overrides": args.pretrain_set, "global_step": pre_summary["global_step"],
                                                          "wall_time_s": pre_summary["wall_time_s"]},
           "finetune": {"dataset": args.dataset, "preset": args.preset, "overrides": args.set}, "results": results}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot_curves(results, args.out + ".png")
    print(table(results, "test"))
    for name, r in results.items():
        print(f"{name}: epochs to best validation NDCG@10 per seed: {r['aggregate']['epochs_to_best']}")


def plot_curves(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, r), colour in zip(results.items(), ("tab:blue", "tab:orange")):
        for i, run in enumerate(r["runs"]):
            ys = [h["ndcg@10"] for h in run["valid_history"]]
            ax.plot(range(1, len(ys) + 1), ys, color=colour, alpha=0.8, marker="o", ms=3,
                    label=name if i == 0 else None)
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("ML-100K fine-tuning: from ML-1M pre-training vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("quality", "transfer"):
        s = sub.add_parser(name)
        s.add_argument("--dataset", default="data/ml-100k")
        s.add_argument("--preset", default="ml100k_finetune")
        s.add_argument("--set", action="append", default=[], help="override for every fine-tuning run")
        s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        s.add_argument("--runs", default="runs/results")
        s.add_argument("--parallel", type=int, default=2)
        s.add_argument("--out", required=True, help="path prefix for the .json (and .png)")
        if name == "quality":
            s.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all")
        if name == "transfer":
            s.add_argument("--pretrain-dataset", default="data/ml-1m")
            s.add_argument("--pretrain-preset", default="ml1m_pretrain")
            s.add_argument("--pretrain-set", action="append", default=[])
    args = p.parse_args()
    start = time.time()
    {"quality": quality, "transfer": transfer}[args.what](args)
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
