"""MovieLens results, reproducible with one command each (the launchers run as subprocesses, two at a time with one
thread each on a 2-core machine):

  quality     ML-100K (or ML-1M): MMM4Rec with text + ID, MMM4Rec text-only (no ID), the SASRec baseline; same
              budget and early stopping; every seed; test metrics unmasked (the protocol) and with seen items
              masked; mean ± std.
  transfer    pre-train on ML-1M (text only, no ID), fine-tune on ML-100K from it, against training from scratch;
              epochs to the best validation score and test metrics per seed; both validation curves in one plot.
  pretrain, fewshot, crossdomain, ablations, timepath: the transfer study (docs/results/transfer_study.md).
  controlled  transfer where content carries the preference by a knob (tools/bench/transfer_control.py,
              docs/results/transfer_control.md): its own arguments, `movielens.py controlled --help`.

Every study is a list of cells (a fine-tuning configuration, run once per seed) and at most one pre-training, run
by one runner (``run_cells``); each run's numbers come from the files it wrote (summary.json, metrics.jsonl) and
its export is loaded through the hash-checked export loader.

    .venv/bin/python tools/bench/movielens.py quality --dataset data/ml-100k --seeds 0 1 2 --out docs/results/ml100k
    .venv/bin/python tools/bench/movielens.py transfer --pretrain-dataset data/ml-1m --dataset data/ml-100k \\
        --seeds 0 1 2 --out docs/results/transfer
Run tools/main_job.sh once first: it fetches and prepares both datasets.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from provenance import REPO, provenance

METRICS = ["hit@10", "ndcg@10", "hit@20", "ndcg@20", "hit@50", "ndcg@50", "mrr"]
# The models a study compares, by the overrides that make them (one name per override set).
VARIANTS = {
    "text + ID": [],  # MMM4Rec as configured: text features plus per-item ID offsets
    "text only": ["model.id_bias=false"],  # MMM4Rec without ID tables: transferable as a whole
    "SASRec (ID)": ["model.arch=sasrec", "model.temperature=1.0"],
}
MMM4REC_VARIANTS = ["text + ID", "text only"]


def launch(script: str, args: list[str], log: Path) -> None:
    """A launcher (launchers/<script>), or this file's own sub-command when ``script`` is "self", as a one-thread
    subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    path = Path(__file__).resolve() if script == "self" else REPO / "launchers" / script
    cmd = [sys.executable, str(path), *args]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def log_of(run_dir: Path, what: str) -> Path:
    """A subprocess's output, beside its run directory (a run refuses a folder it did not create)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return run_dir.with_name(f"{run_dir.name}.{what}.log")


def wait_for_holder(run_dir: Path) -> None:
    """Block while another process trains in ``run_dir`` (it holds the run's exclusive lock), so that two
    invocations sharing a run wait for each other instead of failing."""
    lock = run_dir / ".lock"
    if lock.exists():
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_SH)


def finetune(run_dir: Path, dataset: str, preset: str, seed: int, overrides: list[str]) -> dict:
    """Train (resuming if the run exists), then score the export on the test split, unmasked and with seen items
    masked, each with its timestamps and with all of them zeroed (the `timeless` sub-command)."""
    sets = [f"data.dataset={dataset}", f"train.seed={seed}", f"data.seed={seed}", *overrides]
    args = ["--config", preset, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    wait_for_holder(run_dir)
    if not (run_dir / "summary.json").exists():
        launch("finetune.py", args, log_of(run_dir, "finetune"))
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = time_path(run_dir)
    return {"seed": seed, "test": summary["test"], "test_masked": scores["with_time_masked"],
            "best_epoch": summary["best_epoch"], "epochs_to_best": summary["epochs_to_best"],
            "epochs_run": summary["epochs"], "valid_history": summary["valid_history"],
            "wall_time_s": summary["wall_time_s"], "wall_time_to_best_s": summary["wall_time_to_best_s"],
            "time_path": {k: v for k, v in scores.items() if k != "with_time_masked"}, "run_dir": str(run_dir)}


def time_path(run_dir: Path) -> dict:
    """The run's export scored with its timestamps and with every timestamp zeroed (the `timeless` sub-command)."""
    out = run_dir / "timeless.json"
    if not out.exists():
        launch("self", ["timeless", "--run", str(run_dir)], log_of(run_dir, "timeless"))
    return json.loads(out.read_text())


def zero_shot(args) -> dict:
    """The study's pre-training scored on args.dataset's test targets without any fine-tuning (the `zeroshot`
    sub-command): what its content model ranks before a single interaction of the target is trained on."""
    run = converged_pretraining(args)
    out = zero_shot_path(run, args.dataset)
    if not out.exists():
        launch("self", ["zeroshot", "--run", str(run), "--dataset", args.dataset, "--preset", args.preset],
               log_of(run, out.stem))
    return json.loads(out.read_text())


def zero_shot_path(run: Path, dataset: str) -> Path:
    """Where the `zeroshot` sub-command writes a pre-training's scores on ``dataset``."""
    return run / f"zeroshot-{Path(dataset).name}.json"


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


def quality(args) -> None:
    """The models side by side from scratch, with the preset's own budget."""
    cells = {name: Cell(slug(name), tuple(VARIANTS[name])) for name in args.variants or VARIANTS}
    done = run_cells(args, list(cells.values()))
    results = {name: done[c.tag] for name, c in cells.items()}
    out = {**provenance(), "dataset": args.dataset, "preset": args.preset, "overrides": args.set,
           "protocol": "5-core, chronological leave-one-out, full ranking over all items; test_masked removes items "
                       "the user saw before the target", "results": results}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    print(f"{args.dataset}, test, seen items NOT masked:\n{table(results, 'test')}\n")
    print(f"{args.dataset}, test, seen items masked:\n{table(results, 'test_masked')}")


def pretrain_run(run_dir: Path, dataset: str, preset: str, overrides: list[str]) -> dict:
    """Pre-train (resuming if the run exists); its summary."""
    wait_for_holder(run_dir)
    if not (run_dir / "summary.json").exists():
        sets = [f"data.dataset={dataset}", *overrides]
        launch("pretrain.py", ["--config", preset, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)],
               log_of(run_dir, "pretrain"))
    return json.loads((run_dir / "summary.json").read_text())


def preset_pretraining(args) -> Path:
    """The pre-training with the pre-training preset's own budget (the `transfer` study's); its run directory."""
    run = Path(args.runs) / "transfer" / f"pretrain-{Path(args.pretrain_dataset).name}"
    pretrain_run(run, args.pretrain_dataset, args.pretrain_preset, args.pretrain_set)
    return run


def transfer(args) -> None:
    """Fine-tuning from the preset pre-training against from scratch, the preset's budget for both."""
    cells = {"from pre-training": Cell("textid-pre-trained-preset", (), pretrained=True),
             "from scratch": Cell(slug("text + ID"), ())}
    done = run_cells(args, list(cells.values()), pretraining=preset_pretraining)
    results = {name: done[c.tag] for name, c in cells.items()}
    pre = preset_pretraining(args)
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


# Study 1: pre-training selected by its validation signal. 20 % of the users held out (their validation targets,
# full ranking: ~1,200 users on ML-1M); a validation every 200 steps; stop after 4 without improvement (patience in
# validations: one noisy dip must not end it). Capped at 3,200 steps (~1 epoch of ML-1M): a compute budget, so the
# run may end before it converges, and then says so (budget_capped). The full softmax over the catalogue rather
# than the in-batch softmax the preset implies: in-batch negatives follow item popularity, so that loss learns
# popularity away, while validation ranks all items.
PRETRAIN_BUDGET = ["train.loss=full", "data.holdout_users=0.2", "eval.every_steps=200", "train.patience=4",
                   "train.epochs=4", "train.max_steps=3200", "train.checkpoint_every=400", "train.log_every=20"]


def converged_pretraining(args) -> Path:
    """Where the study's pre-training of args.pretrain_dataset lives (the same run for every study using it)."""
    return Path(args.runs) / "study" / f"pretrain-{Path(args.pretrain_dataset).name}"


def run_pretraining(args) -> Path:
    """The study's pre-training, run unless it has finished; its run directory."""
    run = converged_pretraining(args)
    pretrain_run(run, args.pretrain_dataset, args.pretrain_preset, PRETRAIN_BUDGET + args.pretrain_set)
    return run


def pretrain(args) -> None:
    """Study 1: the converged pre-training, its curve, wall time and time-path check."""
    run = run_pretraining(args)
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss = [{"step": m["step"], "epoch": m.get("epoch"), "loss": m["train/loss"]} for m in metrics if "train/loss" in m]
    out = {**provenance(), "dataset": args.pretrain_dataset, "preset": args.pretrain_preset,
           "overrides": PRETRAIN_BUDGET + args.pretrain_set, "run_dir": str(run),
           "validation": "full ranking of the held-out users' validation targets (data.holdout_users)",
           "epochs_run": summary["epochs"], "global_step": summary["global_step"],
           "global_batch": summary["global_batch"], "best_step": summary["best_step"],
           "best_epoch": summary["best_epoch"], "best_valid_ndcg@10": summary["best_valid"],
           "wall_time_s": summary["wall_time_s"], "wall_time_to_best_s": summary["wall_time_to_best_s"],
           "steps_per_epoch": summary["steps_per_epoch"], "stopped_early": summary["stopped_by"] == "early_stopping",
           "valid_history": summary["valid_history"], "train_loss": loss, "time_path": time_path(run)}
    # Ended by the step cap while validation still improved: a compute budget, not convergence.
    out["budget_capped"] = not out["stopped_early"] and summary["best_step"] == summary["global_step"]
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot_pretraining(out, args.out + ".png")
    print(f"{out['global_step']} steps ({out['global_step'] / out['steps_per_epoch']:.2f} epoch) in {out['wall_time_s']:.0f} s; best validation "
          f"NDCG@10 {out['best_valid_ndcg@10']:.4f} at step {out['best_step']}; stopped early: {out['stopped_early']}")


def plot_pretraining(out: dict, path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    hist = list({h["step"]: h for h in out["valid_history"]}.values())  # the last step validates once per trigger
    ax.plot([h["step"] for h in hist], [h["ndcg@10"] for h in hist], marker="o", ms=3, color="tab:blue",
            label="validation NDCG@10 (held-out users)")
    ax.axvline(out["best_step"], color="tab:blue", ls=":", alpha=0.6)
    ax.set_xlabel("optimizer step (global batch %d)" % out["global_batch"])
    ax.set_ylabel("validation NDCG@10")
    loss_ax = ax.twinx()
    loss_ax.plot([m["step"] for m in out["train_loss"]], [m["loss"] for m in out["train_loss"]], color="tab:gray",
                 alpha=0.5, lw=0.8, label="train loss (full-softmax CE)")
    loss_ax.set_ylabel("train loss")
    lines = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title(f"{Path(out['dataset']).name} text-only pre-training: {out['global_step']} steps "
                 f"({out['global_step'] / out['steps_per_epoch']:.2f} epoch), {out['wall_time_s'] / 60:.0f} min"
                 + (" (step cap)" if out["budget_capped"] else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The epoch cap per share of training users: an epoch of 5 % of the users is 1/20 of a full one, so the smaller
# shares get more epochs (2/15 and 4/15 of the full run's optimizer steps at most: a CPU-sized compromise); early
# stopping (train.patience=3 validations) ends most runs before the cap.
FEWSHOT_EPOCHS = {1.0: 15, 0.2: 20, 0.05: 40}
PATIENCE = 3


@dataclass(frozen=True)
class Cell:
    """One fine-tuning configuration of a study, run once per seed. Its runs live under
    <runs>/study/<dataset>/<tag>-s<seed>, so studies that need the same configuration share them."""

    tag: str
    sets: tuple[str, ...]
    pretrained: bool = False  # starts from the study's pre-training (which must run first)


def slug(variant: str) -> str:
    return {"text + ID": "textid", "text only": "text", "SASRec (ID)": "sasrec"}[variant]


def cell(variant: str = "text + ID", fraction: float = 1.0, pretrained: bool = False, extra: tuple = (),
         epochs: dict = FEWSHOT_EPOCHS, patience: int = PATIENCE) -> Cell:
    """A capped-budget cell: ``variant`` on ``fraction`` of the training users, from the pre-training or not."""
    tag = "-".join([slug(variant), "pre-trained" if pretrained else "scratch", f"f{fraction}", *extra]
                   ).replace("=", "_")
    sets = (*VARIANTS[variant], f"train.epochs={epochs[fraction]}", f"train.patience={patience}",
            *([f"data.train_users={fraction}"] if fraction < 1 else []), *extra)
    return Cell(tag, sets, pretrained)


def run_cells(args, cells: list[Cell], pretraining=None) -> dict[str, dict]:
    """Every seed of every cell, args.parallel at a time: the pre-training (``pretraining``: args -> its run
    directory) first, then the runs from scratch, then the pre-trained ones (they wait for it). Returns
    {tag: {"sets", "runs", "aggregate"}}."""
    root = Path(args.runs) / "study" / Path(args.dataset).name
    jobs = sorted(((c, seed) for c in cells for seed in args.seeds), key=lambda job: job[0].pretrained)

    def job(c: Cell, seed: int) -> dict:
        sets = [*c.sets, *([f"train.init_from={pre_future.result()}"] if c.pretrained else []), *args.set]
        return finetune(root / f"{c.tag}-s{seed}", args.dataset, args.preset, seed, sets)

    with ThreadPoolExecutor(args.parallel) as pool:
        pre_future = pool.submit(pretraining, args) if pretraining else None
        runs = [f.result() for f in [pool.submit(job, *j) for j in jobs]]
    results = {c.tag: {"sets": list(c.sets) + (["train.init_from=<the pre-training>"] if c.pretrained else []),
                       "runs": [r for (c_, _), r in zip(jobs, runs) if c_ == c]} for c in cells}
    for r in results.values():
        r["aggregate"] = aggregate(r["runs"])
    return results


def pretrained_vs_scratch(args, variants: list[str], epochs: dict, patience: int) -> dict:
    """Every variant at every share of the training users (args.fractions), from the study's pre-training and
    from scratch with the same budget: {variant: {fraction: {"pre-trained", "scratch", "against target"}}}."""
    grid = {(variant, fraction, init): cell(variant, fraction, init == "pre-trained", epochs=epochs,
                                            patience=patience)
            for fraction in args.fractions for variant in variants for init in ("pre-trained", "scratch")}
    done = run_cells(args, list(grid.values()), pretraining=run_pretraining)
    results: dict = {}
    for (variant, fraction, init), c in grid.items():
        results.setdefault(variant, {}).setdefault(str(fraction), {})[init] = done[c.tag]
    for by_fraction in results.values():
        for fraction, by_init in by_fraction.items():
            by_init["against target"] = against_target(by_init["pre-trained"], by_init["scratch"])
            print(fraction, json.dumps(by_init["against target"]))
    return results


def fewshot(args) -> None:
    """Study 2: fine-tune on shares of the training users from the pre-trained backbone and from scratch."""
    results = pretrained_vs_scratch(args, args.variants, FEWSHOT_EPOCHS, PATIENCE)
    out = {**provenance(), "pretrain": pretraining_record(args), "zero_shot": zero_shot(args),
           "dataset": args.dataset, "preset": args.preset, "overrides": args.set, "epoch_caps": FEWSHOT_EPOCHS,
           "patience": PATIENCE,
           "target": "pre-trained >= 1.05x scratch test NDCG@10 at 5 % and 20 %, best validation in <= 1/3 of "
                     "scratch's epochs", "results": results}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot_fewshot(results, args.out + ".png", out["zero_shot"])


# Study 4: the paper's ablations, each from scratch with the same budget as the full model; the paper's Office
# numbers (NDCG@10) for the ordering.
ABLATIONS = {"full": (), "w/o shared": ("model.shared=false",), "w/o time": ("model.time=false",),
             "w/o learnable filter": ("model.learnable_filter=false",),
             "w/o adaptive filter": ("model.adaptive_filter=false",)}
PAPER_OFFICE_NDCG10 = {"full": 0.0906, "w/o pre-training": 0.0751, "w/o time": 0.0895, "w/o shared": 0.0897}


def ablations(args) -> None:
    """Study 4: every ablation switch from scratch on --fraction of the training users; ID off; full from
    pre-training (unless --scratch-only)."""
    cells = {name: cell(fraction=args.fraction, extra=extra) for name, extra in ABLATIONS.items()}
    cells["ID off (text only)"] = cell("text only", args.fraction)
    pretraining = None if args.scratch_only else run_pretraining
    if pretraining:
        cells["full, pre-trained"] = cell(fraction=args.fraction, pretrained=True)
    done = run_cells(args, list(cells.values()), pretraining=pretraining)
    results = {name: done[c.tag] for name, c in cells.items()}
    ours = {name: r["aggregate"]["test"]["ndcg@10"]["mean"] for name, r in results.items()}
    # The paper's full model is pre-trained; its ablations are measured against it, ours against full from scratch.
    ordering = {"paper (Office)": sorted(PAPER_OFFICE_NDCG10, key=PAPER_OFFICE_NDCG10.get, reverse=True),
                "ours": sorted(ours, key=ours.get, reverse=True)}
    out = {**provenance(), "dataset": args.dataset, "preset": args.preset, "overrides": args.set,
           "budget": budget(args.fraction), "pretrain": pretraining_record(args) if pretraining else None,
           "paper_office_ndcg@10": PAPER_OFFICE_NDCG10, "ordering": ordering, "results": results}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot_cells(results, args.out + ".png", f"{Path(args.dataset).name} ablations ({out['budget']})")
    print(table(results, "test"))
    print(json.dumps(ordering, indent=1))


# Study 5: the time path's initialisation and regularisation options (defaults unchanged), and the time path's
# measured contribution in every study run.
TIME_OPTIONS = {"default (normal init, std 0.02)": (), "kaiming init": ("model.time_init=kaiming",),
                "no weight decay on the time path": ("train.time_weight_decay=false",),
                "time_init_std 0.5": ("model.time_init_std=0.5",), "no time path": ("model.time=false",)}


def timepath(args) -> None:
    """Study 5: the time options from scratch on --fraction of the training users (unless --measured-only), every
    study run's time-path check, and the Tanhshrink probe of the runs given by --probe."""
    results = {}
    if not args.measured_only:
        cells = {name: cell(fraction=args.fraction, extra=extra) for name, extra in TIME_OPTIONS.items()}
        done = run_cells(args, list(cells.values()))
        results = {name: done[c.tag] | {"time_path": time_path_summary(done[c.tag]["runs"])}
                   for name, c in cells.items()}
    out = {**provenance(), "dataset": args.dataset, "preset": args.preset, "overrides": args.set,
           "budget": budget(args.fraction),
           "measure": "test metrics of each run's best export with every timestamp zeroed minus with its timestamps "
                      "(ndcg@10_change; negative = time helps), and the relative change of the user vectors",
           "results": results, "every_study_run": every_time_path(Path(args.runs) / "study"),
           "tanhshrink_probe": {run: probe(Path(run)) for run in args.probe}}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    if results:
        plot_cells(results, args.out + ".png", f"{Path(args.dataset).name} time-path options ({out['budget']})")
        print(table(results, "test"))
    for name, r in results.items():
        print(name, json.dumps(r["time_path"]))


def budget(fraction: float) -> str:
    users = "all training users" if fraction == 1 else f"a seeded {fraction:.0%} of the training users"
    return f"train.epochs={FEWSHOT_EPOCHS[fraction]}, train.patience={PATIENCE}, {users}"


def time_path_summary(runs: list[dict]) -> dict:
    changes = {key: [r["time_path"][key] for r in runs] for key in ("ndcg@10_change", "ndcg@10_change_masked",
                                                                    "user_vector_change")}
    return {key: {"mean": statistics.mean(v), "per_seed": v} for key, v in changes.items()}


def every_time_path(root: Path) -> dict:
    """The time-path check of every finished run under ``root`` (fine-tuning and pre-training)."""
    out = {}
    for path in sorted(root.glob("**/timeless.json")):
        t = json.loads(path.read_text())
        out[str(path.parent.relative_to(root))] = {key: t[key] for key in ("split", "ndcg@10_change",
                                                                           "ndcg@10_change_masked",
                                                                           "user_vector_change")}
    return out


# Study 3: domains sharing no items and no users (tools/split_domains.py); a CPU-sized budget.
CROSSDOMAIN_EPOCHS = {1.0: 8, 0.2: 16}
CROSSDOMAIN_PATIENCE = 2


def crossdomain(args) -> None:
    """Study 3: pre-train on one domain, fine-tune on the other (all and 20 % of its users) vs from scratch, with
    --variant's inputs."""
    results = pretrained_vs_scratch(args, [args.variant], CROSSDOMAIN_EPOCHS, CROSSDOMAIN_PATIENCE)[args.variant]
    out = {**provenance(), "pretrain": pretraining_record(args), "zero_shot": zero_shot(args),
           "dataset": args.dataset, "preset": args.preset, "variant": args.variant, "overrides": args.set,
           "epoch_caps": CROSSDOMAIN_EPOCHS, "patience": CROSSDOMAIN_PATIENCE,
           "domains": {name: json.loads((Path(d) / "dataset.json").read_text())["provenance"]
                       for name, d in (("pretrain", args.pretrain_dataset), ("finetune", args.dataset))},
           "target": "pre-trained >= 1.05x scratch test NDCG@10, best validation in <= 1/3 of scratch's epochs",
           "results": results}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot_fewshot({args.variant: results}, args.out + ".png", out["zero_shot"])


def against_target(pre: dict, scratch: dict) -> dict:
    """Pre-trained over scratch: the NDCG@10 ratio (unmasked, masked), the epochs-to-best and the wall-to-best
    ratio, on means over seeds."""
    out = {}
    for split in ("test", "test_masked"):
        out[f"ndcg@10_ratio{'_masked' if split == 'test_masked' else ''}"] = (
            pre["aggregate"][split]["ndcg@10"]["mean"] / scratch["aggregate"][split]["ndcg@10"]["mean"])
    epochs = [statistics.mean(r["epochs_to_best"] for r in x["runs"]) for x in (pre, scratch)]
    out["epochs_to_best_ratio"] = epochs[0] / epochs[1]
    # Wall time only over the seeds timed in both arms (a resumed run's clock restarted: None).
    scratch_s = {r["seed"]: r["wall_time_to_best_s"] for r in scratch["runs"]}
    timed = [(r["wall_time_to_best_s"], scratch_s.get(r["seed"])) for r in pre["runs"]]
    timed = [(p, s) for p, s in timed if p is not None and s is not None]
    out["wall_time_to_best_ratio"] = sum(p for p, _ in timed) / sum(s for _, s in timed) if timed else None
    out["meets_ndcg_target"] = out["ndcg@10_ratio"] >= 1.05
    out["meets_epochs_target"] = out["epochs_to_best_ratio"] <= 1 / 3
    return out


def pretraining_record(args) -> dict:
    run = converged_pretraining(args)
    summary = json.loads((run / "summary.json").read_text())
    return {"run_dir": str(run), "dataset": args.pretrain_dataset, "preset": args.pretrain_preset,
            "overrides": PRETRAIN_BUDGET + args.pretrain_set, "global_step": summary["global_step"],
            "best_step": summary["best_step"], "wall_time_s": summary["wall_time_s"]}


def plot_fewshot(results: dict, path: str, zero_shot: dict | None = None) -> None:
    plt = pyplot()
    fractions = sorted({float(f) for by_fraction in results.values() for f in by_fraction})
    fig, axes = plt.subplots(1, 1 + len(fractions), figsize=(5 * (1 + len(fractions)), 4))
    styles = {("text + ID", "pre-trained"): ("tab:blue", "-"), ("text + ID", "scratch"): ("tab:blue", "--"),
              ("text only", "pre-trained"): ("tab:orange", "-"), ("text only", "scratch"): ("tab:orange", "--")}
    for k, ((variant, init), (colour, ls)) in enumerate(styles.items()):
        if variant not in results:
            continue
        agg = [results[variant][str(f)][init]["aggregate"]["test"]["ndcg@10"] for f in fractions]
        dodge = 1 + 0.03 * (k - 1.5)  # side by side on the log axis, so no error bar hides another
        axes[0].errorbar([f * dodge for f in fractions], [a["mean"] for a in agg], yerr=[a["std"] for a in agg],
                         color=colour, ls=ls, marker="o", mfc=colour if init == "pre-trained" else "white", capsize=3,
                         label=f"{variant}, {init}")
        for ax, f in zip(axes[1:], fractions):
            for i, run in enumerate(results[variant][str(f)][init]["runs"]):
                ys = [h["ndcg@10"] for h in run["valid_history"]]
                ax.plot(range(1, len(ys) + 1), ys, color=colour, ls=ls, alpha=0.7, lw=1,
                        label=f"{variant}, {init}" if i == 0 else None)
    if zero_shot:
        axes[0].axhline(zero_shot["test"]["ndcg@10"], color="tab:gray", ls=":", label="pre-trained, no fine-tuning")
    axes[0].set_xscale("log")
    axes[0].set_xlim(min(fractions) / 1.5, max(fractions) * 1.5)
    axes[0].set_xticks(fractions, [f"{f:.0%}" for f in fractions])
    axes[0].minorticks_off()
    axes[0].set_xlabel("share of training users")
    axes[0].set_ylabel("test NDCG@10 (mean ± std over seeds)")
    axes[0].legend(fontsize=8)
    for ax, f in zip(axes[1:], fractions):
        ax.set_title(f"validation curves, {f:.0%} of the users")
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel("validation NDCG@10")
    axes[-1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_cells(results: dict, path: str, title: str) -> None:
    """Test NDCG@10 (mean ± std over seeds, each seed a dot), unmasked and with seen items masked, one row a cell."""
    plt = pyplot()
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 1.5), sharey=True)
    for ax, split in zip(axes, ("test", "test_masked")):
        agg = [results[n]["aggregate"][split]["ndcg@10"] for n in names]
        ax.barh(range(len(names)), [a["mean"] for a in agg], xerr=[a["std"] for a in agg], color="tab:blue",
                alpha=0.6, capsize=3)
        for i, n in enumerate(names):
            ax.plot([r[split]["ndcg@10"] for r in results[n]["runs"]], [i] * len(results[n]["runs"]), "k.", ms=4)
        ax.set_xlabel(f"test NDCG@10{', seen items masked' if split == 'test_masked' else ''}")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def zero_timestamps(raw: dict) -> dict:
    """A batch whose history and target timestamps are all 0: every time gap is 0, so the time path sees no time."""
    return {**raw, "timestamps": torch.zeros_like(raw["timestamps"]), "target_ts": torch.zeros_like(raw["target_ts"])}


@torch.no_grad()
def user_vector_change(model, stream) -> float:
    """How far zeroing the timestamps moves the user vectors: ‖u − u₀‖ / ‖u‖ over all valid users (a ranking
    metric can stay the same while the time path still contributes a little)."""
    from mmm4rec.model import Batch

    model.eval()
    moved, norm = 0.0, 0.0
    for raw in stream:
        valid = raw["valid"]
        user = model(Batch.from_dict(raw))[valid]
        moved += (user - model(Batch.from_dict(zero_timestamps(raw)))[valid]).square().sum().item()
        norm += user.square().sum().item()
    return (moved / norm) ** 0.5


def load_export(cfg, export: Path, transfer: bool = False):
    """The data ``cfg`` names, the process environment, and ``export``'s model (every file hash-checked by the
    export loader) on that data's feature store."""
    from mmm4rec import distributed
    from mmm4rec.serving.export import load_export as load_checked
    from mmm4rec.train.assembly import load_data

    env = distributed.init()
    data = load_data(cfg, build=False)
    return data, env, load_checked(export, features=data.store.path, transfer=transfer).model


def load_run(run: Path):
    """A finished run's config, data, process environment, best export (loaded) and the split its scores use
    (test; a pre-training run: its held-out users' validation targets)."""
    from mmm4rec.config import load_config
    from mmm4rec.train.assembly import holdout
    from mmm4rec.train.rundir import export_of

    cfg = load_config(str(run / "config.yaml"))
    export = export_of(run)
    data, env, model = load_export(cfg, export)
    split, users = ("valid", holdout(cfg)) if cfg.train.task == "pretrain" else ("test", None)
    return cfg, data, env, export, model, split, users


def score(model, cfg, data, env, split: str, users=None, masked: bool = False, zeroed: bool = False) -> dict:
    """The evaluation code's metrics on one split: seen items masked or not, timestamps kept or all zeroed."""
    from mmm4rec.train.evaluation import evaluate
    from mmm4rec.train.assembly import eval_stream

    masked_cfg = replace(cfg, eval=replace(cfg.eval, mask_history=masked))  # the stream carries seen items
    stream = eval_stream(masked_cfg, data, env, split, users)
    return evaluate(model, map(zero_timestamps, stream) if zeroed else stream, ks=cfg.eval.ks,
                    item_chunk=cfg.eval.item_chunk, device=env.device, mask_history=masked)


def timeless(args) -> None:
    """Score a run's export with its timestamps and with all of them zeroed, unmasked and masked, through the
    same evaluation code. Writes <run>/timeless.json."""
    from mmm4rec.train.assembly import eval_stream

    cfg, data, env, export, model, split, users = load_run(Path(args.run))
    pretraining = users is not None
    out = {"export": str(export), "split": split, "users": "held-out pre-training users" if pretraining else "all"}
    for masked in (False, True):
        for zeroed in (False, True):
            out[f"{'zero_time' if zeroed else 'with_time'}{'_masked' if masked else ''}"] = score(
                model, cfg, data, env, split, users, masked, zeroed)
    for suffix in ("", "_masked"):
        out[f"ndcg@10_change{suffix}"] = out[f"zero_time{suffix}"]["ndcg@10"] - out[f"with_time{suffix}"]["ndcg@10"]
    out["user_vector_change"] = user_vector_change(model, eval_stream(cfg, data, env, split, users))
    (Path(args.run) / "timeless.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if "change" in k}))


def zeroshot(args) -> None:
    """Score a text-only pre-training's export on --dataset's test targets (all users, unmasked and masked), no
    fine-tuning: the target's items are new to it, so only their content ranks them. Writes
    <run>/zeroshot-<dataset>.json."""
    from mmm4rec.config import load_config
    from mmm4rec.train.rundir import export_of

    cfg = load_config(args.preset, [f"data.dataset={args.dataset}", *VARIANTS["text only"]])
    export = export_of(Path(args.run))
    data, env, model = load_export(cfg, export, transfer=True)
    out = {"export": str(export), "dataset": args.dataset, "split": "test", "users": "all"}
    for masked in (False, True):
        out["test_masked" if masked else "test"] = score(model, cfg, data, env, "test", masked=masked)
    zero_shot_path(Path(args.run), args.dataset).write_text(json.dumps(out, indent=1))
    print(json.dumps({split: out[split]["ndcg@10"] for split in ("test", "test_masked")}))


@torch.no_grad()
def probe(run: Path) -> dict:
    """Why a time path contributes nothing: the input and output of each layer's Tanhshrink (the last step of the
    time path's position mix) on the run's first evaluation batch. In float32, x − tanh(x) is exactly 0 once
    |x| ≲ 4e-4 (tanh(x) rounds to x), and then D ⊙ 0 leaves the time path a constant, timestamp-free scale."""
    from mmm4rec.model import Batch
    from mmm4rec.train.assembly import eval_stream

    cfg, data, env, export, model, split, users = load_run(run)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = {"max_abs_input": inputs[0].abs().max().item(), "max_abs_output": output.abs().max().item(),
                          "share_of_outputs_exactly_0": (output == 0).float().mean().item()}
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Tanhshrink):
            module.register_forward_hook(record(name))
    model.eval()
    model(Batch.from_dict(next(iter(eval_stream(cfg, data, env, split, users)))))
    return {"export": str(export), "split": split, "tanhshrink": seen}


def timeprobe(args) -> None:
    print(json.dumps(probe(Path(args.run)), indent=1))


def plot_curves(results: dict, path: str) -> None:
    plt = pyplot()
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
    if sys.argv[1:2] == ["controlled"]:  # the controlled benchmark's study: its own datasets and arguments
        import transfer_control

        return transfer_control.main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    studies = {"quality": quality, "transfer": transfer, "pretrain": pretrain, "fewshot": fewshot,
               "timepath": timepath, "ablations": ablations, "crossdomain": crossdomain}
    for name in studies:
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
        if name == "fewshot":
            s.add_argument("--variants", nargs="+", choices=MMM4REC_VARIANTS, default=MMM4REC_VARIANTS)
        if name == "crossdomain":
            s.add_argument("--variant", choices=MMM4REC_VARIANTS, default="text + ID")
        if name != "quality":
            s.add_argument("--pretrain-dataset", default="data/ml-1m")
            s.add_argument("--pretrain-preset", default="ml1m_pretrain")
            s.add_argument("--pretrain-set", action="append", default=[])
        if name == "timepath":
            s.add_argument("--measured-only", action="store_true", help="skip the option runs")
            s.add_argument("--probe", nargs="*", default=[], help="run directories to probe (timeprobe)")
        if name in ("ablations", "timepath"):
            s.add_argument("--fraction", type=float, default=1.0, choices=list(FEWSHOT_EPOCHS),
                           help="share of the training users (evaluation on all users)")
        if name == "ablations":
            s.add_argument("--scratch-only", action="store_true",
                           help="leave out the pre-trained full model (it needs the study's pre-training)")
        if name in ("fewshot", "crossdomain"):
            caps = FEWSHOT_EPOCHS if name == "fewshot" else CROSSDOMAIN_EPOCHS
            s.add_argument("--fractions", type=float, nargs="+", default=list(caps), choices=list(caps))
    for name, help in (("timeless", "score a run's export with and without its timestamps"),
                       ("timeprobe", "the time path's Tanhshrink inputs and outputs on one evaluation batch"),
                       ("zeroshot", "score a pre-training's export on another dataset's test targets, no fine-tuning")):
        s = sub.add_parser(name, help=help)
        s.add_argument("--run", required=True, help="run directory (its config.yaml and export/)")
        if name == "zeroshot":
            s.add_argument("--dataset", required=True)
            s.add_argument("--preset", default="ml100k_finetune")
    args = p.parse_args()
    start = time.time()
    {**studies, "timeless": timeless, "timeprobe": timeprobe, "zeroshot": zeroshot}[args.what](args)
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
