"""Does the sampled softmax lose quality? ML-100K fine-tuning (the ml100k_finetune preset: MMM4Rec text + ID)
with train.loss=sampled — popularity negatives with the logQ correction at a few negative counts, and once
without logQ — against train.loss=full, at the same budget and early stopping, for every seed. Test NDCG@10 /
HR@10 with seen items unmasked (the protocol) and masked, epochs to the best validation score, wall time; the
launchers run as subprocesses, two at a time with one thread each (tools/bench/movielens.py's ``launch``).

    .venv/bin/python tools/bench/sampled_quality.py --dataset data/ml-100k --seeds 0 1 2 \\
        --set train.epochs=15 --set train.patience=3 --json docs/results/sampled_quality.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from movielens import aggregate, launch, run_parallel
from provenance import provenance

SAMPLED = ["train.loss=sampled", "train.sampler=popularity"]
VARIANTS = {
    "full softmax": ["train.loss=full"],
    "sampled, 64 popularity negatives, logQ": SAMPLED + ["train.negatives=64", "train.logq=true"],
    "sampled, 256 popularity negatives, logQ": SAMPLED + ["train.negatives=256", "train.logq=true"],
    "sampled, 256 popularity negatives, no logQ": SAMPLED + ["train.negatives=256", "train.logq=false"],
}
SHOWN = ["ndcg@10", "hit@10"]
TARGET = 0.95  # sampled with logQ: at least this share of the full softmax's test NDCG@10


def run_dir(args, variant: str, seed: int) -> Path:
    tag = "-".join(VARIANTS[variant] + args.set).replace("=", "_")
    return Path(args.runs) / Path(args.dataset).name / f"sampled-quality-{tag}-s{seed}"


def finetune(run_dir: Path, dataset: str, preset: str, seed: int, overrides: list[str]) -> dict:
    """Train (resuming if the run exists), then evaluate the export with seen items masked. The launchers' output
    goes beside the run directory: a run refuses a folder that holds files it did not write."""
    sets = [f"data.dataset={dataset}", f"train.seed={seed}", f"data.seed={seed}", *overrides]
    sets = [a for s in sets for a in ("--set", s)]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "summary.json").exists():
        launch("finetune.py", ["--config", preset, "--run-dir", str(run_dir), *sets],
               run_dir.with_name(f"{run_dir.name}.finetune.log"))
    masked = run_dir / "masked"
    if not (masked / "eval-test-masked.json").exists():
        launch("evaluate.py", ["--config", preset, "--checkpoint", str(run_dir), "--run-dir", str(masked),
                               "--set", "eval.mask_history=true", *sets],
               run_dir.with_name(f"{run_dir.name}.masked.log"))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "test": summary["test"],
            "test_masked": json.loads((masked / "eval-test-masked.json").read_text()),
            "best_epoch": summary["best_epoch"], "epochs_to_best": summary["epochs_to_best"],
            "epochs_run": summary["epochs"], "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)}


def summarise(runs: list[dict]) -> dict:
    """movielens.aggregate's metrics plus the time each run took (mean ± std over seeds)."""
    out = aggregate(runs)
    walls = [r["wall_time_s"] for r in runs]
    out["wall_time_s"] = {"mean": statistics.mean(walls), "std": statistics.stdev(walls) if len(walls) > 1 else 0.0}
    return out


def targets(results: dict) -> dict:
    full = results["full softmax"]["aggregate"]["test"]["ndcg@10"]["mean"]
    out = {}
    for name, r in results.items():
        if name != "full softmax":
            ratio = r["aggregate"]["test"]["ndcg@10"]["mean"] / full
            out[name] = {"ndcg@10_vs_full": round(ratio, 3), "met": ratio >= TARGET if "no logQ" not in name else None}
    return out


def table(results: dict) -> str:
    cols = [f"{m}{' masked' if key == 'test_masked' else ''}" for key in ("test", "test_masked") for m in SHOWN]
    lines = [f"| loss | {' | '.join(cols)} | epochs to best | wall time (s) |", "|---|" + "---|" * (len(cols) + 2)]
    for name, r in results.items():
        a = r["aggregate"]
        cells = [f"{a[key][m]['mean']:.4f} ± {a[key][m]['std']:.4f}" for key in ("test", "test_masked") for m in SHOWN]
        wall = a["wall_time_s"]
        lines.append(f"| {name} | {' | '.join(cells)} | {' / '.join(map(str, a['epochs_to_best']))} | "
                     f"{wall['mean']:.0f} ± {wall['std']:.0f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="data/ml-100k")
    p.add_argument("--preset", default="ml100k_finetune")
    p.add_argument("--set", action="append", default=[], help="override for every fine-tuning run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--runs", default="runs/results")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    if "full softmax" not in args.variants:
        p.error("the full softmax is the reference: keep it among --variants")
    start = time.time()
    jobs = [(name, lambda name=name, seed=seed: finetune(run_dir(args, name, seed), args.dataset, args.preset, seed,
                                                         VARIANTS[name] + args.set))
            for name in args.variants for seed in args.seeds]
    done = run_parallel([job for _, job in jobs], args.parallel)
    results = {name: {"overrides": VARIANTS[name], "runs": [r for (n, _), r in zip(jobs, done) if n == name]}
               for name in args.variants}
    for r in results.values():
        r["aggregate"] = summarise(r["runs"])
    out = {**provenance(), "dataset": args.dataset, "preset": args.preset, "overrides": args.set,
           "protocol": "5-core, chronological leave-one-out, full ranking over all items; test_masked removes items "
                       "the user saw before the target; every run evaluates with full ranking whatever its loss",
           "target": f"sampled with logQ >= {TARGET} x the full softmax's test NDCG@10 (mean over seeds)",
           "results": results, "targets": targets(results)}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(table(results))
    print(json.dumps(out["targets"], indent=1))
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
