"""Transfer under control (issue 24): on the two-domain benchmark of mmm4rec.data.transfer_bench, where item
content explains the preference by a knob, pre-train on domain a, fine-tune on domain b with shares of b's users
(text only, text + ID) against training from scratch with the same budget; score a's model on b with no
fine-tuning (zero-shot) against popularity and random; at several content settings.

    .venv/bin/python tools/bench/transfer_control.py --contents 1.0 0.5 0.0 --seeds 0 1 2 \\
        --out docs/results/transfer_control

Every run is the real command line (``python -m mmm4rec pretrain|finetune|evaluate``) as a one-thread subprocess,
``--parallel`` at a time; every number is read back from the runs' summary.json / metrics.jsonl / eval-*.json.
Several invocations (which share their runs) become one result file with

    .venv/bin/python tools/bench/transfer_control.py merge OUT PART.json ...

One pre-training per content setting (seed 0) serves every fine-tuning seed. Runs live under --runs and are
reused when they exist (delete a run folder to redo it).
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

from mmm4rec.data.transfer_bench import RENEWALS, baselines
from provenance import REPO, provenance

PRESET = "ml100k_finetune"  # N=64, L=20, one layer, full softmax: the CPU-sized MovieLens study's model
# textimage: text + the offline ImageNet MobileNetV2's features of each item's picture (needs --images fashion-mnist);
# it has its own pre-training on a, with the same image tower.
IMAGE_TOWER = "mobilenet-v2"
VARIANTS = {"text": ["model.id_bias=false"], "textid": [],
            "textimage": ["model.id_bias=false", f"data.encoder.image={IMAGE_TOWER}"]}
EPOCHS = {0.05: 40, 0.2: 20, 1.0: 10}  # a smaller share gets more (shorter) epochs, as in the MovieLens study
METRICS = ("ndcg@10", "hit@10")


def mmm4rec(command: str, args: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mmm4rec", command, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def sets(pairs: list[str]) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


def home_tag(args) -> str:
    """The time study's request-time variant (renewal home) in folder names."""
    return f"-home-d{args.drift:g}" if args.renewal == "home" else ""


def generated(args, content: float, images: str) -> Path:
    """<runs>/data/<name>: domains a and b, generated once (data seed 0 for every training seed). The name is a
    function of the generator's arguments, so two arms share a folder exactly when they share the data."""
    from mmm4rec.data.transfer_bench import generate

    pictures = "-fmnist" if images != "none" else ""
    name = f"c{content:g}-t{args.time_signal:g}{home_tag(args)}-{args.users}u{args.items}i{pictures}"
    out = Path(args.runs) / "data" / name
    if not (out / "b" / "dataset.json").exists():
        generate(out, args.users, args.items, content=content, time_signal=args.time_signal, seed=0, images=images,
                 renewal=args.renewal, **({"drift": args.drift} if args.renewal == "home" else {}))
    return out


def extracted(data: Path, domains: str, image: bool) -> None:
    """Stage 1 once per domain and feature store, before runs share it."""
    for domain in domains:
        store = data / domain / "features" / (f"minilm+{IMAGE_TOWER}" if image else "")
        if not store.exists():
            mmm4rec("extract", ["--dataset", str(data / domain), *(["--image", IMAGE_TOWER] if image else [])],
                    data / f"extract-{domain}{'-image' if image else ''}.log")


def dataset(args, content: float) -> Path:
    """The study's data: with --images, text-only and text + image feature stores."""
    out = generated(args, content, args.images)
    extracted(out, "ab", image=False)
    if "textimage" in args.variants:
        extracted(out, "ab", image=True)
    return out


def without_pictures(args, content: float) -> Path:
    """The same benchmark with no pictures (same items, users and sequences: the generator draws them apart from
    the pictures) and a text + image feature store in which every item has the blank-image features: a text +
    image model scored on it shows what its pictures are worth at test time."""
    out = generated(args, content, "none")
    extracted(out, "b", image=True)
    return out / "b"


def train(task: str, run: Path, data: Path, overrides: list[str]) -> dict:
    if not (run / "summary.json").exists():
        mmm4rec(task, ["--config", args_preset, "--run-dir", str(run),
                       *sets([f"data.dataset={data}", *overrides])], run.with_name(run.name + ".log"))
    return json.loads((run / "summary.json").read_text())


def evaluate(checkpoint: Path, data: Path, where: Path, overrides: list[str]) -> dict:
    """``mmm4rec evaluate``: the export scored on ``data``'s test split (a text-only export of the same catalogue
    size loads onto another domain's items: it has no per-item parameters)."""
    out = where / "eval-test.json"
    if not out.exists():
        mmm4rec("evaluate", ["--config", args_preset, "--checkpoint", str(checkpoint), "--run-dir", str(where),
                             "--split", "test", *sets([f"data.dataset={data}", *overrides])],
                where.with_name(where.name + ".log"))
    return json.loads(out.read_text())


def finetune_record(run: Path, summary: dict) -> dict:
    return {"test": {k: summary["test"][k] for k in METRICS}, "epochs_to_best": summary["epochs_to_best"],
            "epochs_run": summary["epochs"], "best_step": summary["best_step"],
            "valid_curve": [h.get("ndcg@10") if isinstance(h, dict) else h for h in summary["valid_history"]],
            "wall_time_s": summary["wall_time_s"], "wall_time_to_best_s": summary["wall_time_to_best_s"],
            "run_dir": str(run)}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def study(args, content: float, pool: ThreadPoolExecutor) -> dict:
    data = dataset(args, content)
    root = Path(args.runs) / f"c{content:g}-t{args.time_signal:g}{'-fmnist' if args.images != 'none' else ''}"
    pre_sets = ["model.id_bias=false", "train.loss=full", f"train.epochs={args.pretrain_epochs}",
                "train.patience=2", "data.holdout_users=0.1", *args.set]
    # text + image fine-tunings start from a text + image pre-training; the other variants from the text one
    pre_runs = {"text": root / "pretrain-s0", "image": root / "pretrain-image-s0"}
    modalities = ["text"] * any(v != "textimage" for v in args.variants) + ["image"] * ("textimage" in args.variants)
    image_sets = VARIANTS["textimage"][1:]
    pre_futures = {m: pool.submit(train, "pretrain", pre_runs[m], data / "a",
                                  pre_sets + (image_sets if m == "image" else [])) for m in modalities}

    def finetune(variant: str, fraction: float, pretrained: bool, seed: int) -> dict:
        recipe = args.pretrained_set if pretrained else []
        tag = "-".join([variant, "pre" if pretrained else "scratch", *recipe, f"f{fraction:g}", f"s{seed}"])
        tag = tag.replace("=", "_")
        over = [*VARIANTS[variant], f"train.epochs={EPOCHS[fraction]}", f"train.patience={args.patience}",
                f"train.seed={seed}", f"data.seed={seed}", *([f"data.train_users={fraction}"] if fraction < 1 else []),
                *args.set]
        if pretrained:
            m = "image" if variant == "textimage" else "text"
            pre_futures[m].result()
            over += [f"train.init_from={pre_runs[m]}", *recipe]
        run = root / tag
        return {"variant": variant, "fraction": fraction, "init": "pre-trained" if pretrained else "scratch",
                "seed": seed, **finetune_record(run, train("finetune", run, data / "b", over))}

    jobs = [(v, f, p, s) for p in (False, True) for v in args.variants for f in args.fractions for s in args.seeds]
    futures = [pool.submit(finetune, *j) for j in jobs]
    pre_summaries = {m: f.result() for m, f in pre_futures.items()}
    zeros = {m: evaluate(pre_runs[m], data / "b", root / ("zeroshot" if m == "text" else "zeroshot-image"),
                         ["model.id_bias=false", *(image_sets if m == "image" else []), *args.set])
             for m in modalities}
    pre_run, pre_summary, zero = pre_runs[modalities[0]], pre_summaries[modalities[0]], zeros[modalities[0]]
    runs = [f.result() for f in futures]
    if "image" in modalities:  # the text + image models scored with every picture replaced by the blank image
        bare = without_pictures(args, content)
        zero_bare = evaluate(pre_runs["image"], bare, root / "zeroshot-image-nopictures",
                             ["model.id_bias=false", *image_sets, *args.set])
        for r in runs:
            if r["variant"] == "textimage":
                run = Path(r["run_dir"])
                r["test_pictures_removed"] = {m: evaluate(run, bare, run.with_name(run.name + "-nopictures"),
                                                          [*VARIANTS["textimage"], *args.set])[m] for m in METRICS}
    cells = {}
    for v in args.variants:
        for f in args.fractions:
            cell = {}
            for init in ("pre-trained", "scratch"):
                rs = [r for r in runs if (r["variant"], r["fraction"], r["init"]) == (v, f, init)]
                cell[init] = {**{m: mean_std([r["test"][m] for r in rs]) for m in METRICS},
                              "epochs_to_best": mean_std([r["epochs_to_best"] for r in rs]),
                              "wall_time_to_best_s": mean_std([r["wall_time_to_best_s"] or 0.0 for r in rs])}
            p, s = cell["pre-trained"], cell["scratch"]
            cell["ndcg@10_ratio"] = p["ndcg@10"]["mean"] / max(s["ndcg@10"]["mean"], 1e-12)
            cell["epochs_to_best_ratio"] = p["epochs_to_best"]["mean"] / max(s["epochs_to_best"]["mean"], 1e-12)
            cell["per_seed_ndcg@10_ratio"] = [a / max(b, 1e-12) for a, b in
                                              zip(p["ndcg@10"]["values"], s["ndcg@10"]["values"])]
            cells[f"{v} @ {f:g}"] = cell
    base = baselines(data / "b")
    return {"content": content, "time_signal": args.time_signal, "dataset": str(data),
            "pretraining": {"run_dir": str(pre_run), "best_valid": pre_summary["best_valid"],
                            "epochs_to_best": pre_summary["epochs_to_best"], "epochs": pre_summary["epochs"],
                            "wall_time_s": pre_summary["wall_time_s"],
                            "valid_curve": [h.get("ndcg@10") if isinstance(h, dict) else h
                                            for h in pre_summary["valid_history"]]},
            "zero_shot": {m: zero[m] for m in METRICS}, **base,
            "zero_shot_over_popularity": zero["ndcg@10"] / max(base["popularity"]["ndcg@10"], 1e-12),
            **({"images": args.images, "pretraining_image": {
                "run_dir": str(pre_runs["image"]), "best_valid": pre_summaries["image"]["best_valid"],
                "epochs_to_best": pre_summaries["image"]["epochs_to_best"],
                "epochs": pre_summaries["image"]["epochs"], "wall_time_s": pre_summaries["image"]["wall_time_s"]},
                "zero_shot_image": {m: zeros["image"][m] for m in METRICS},
                "zero_shot_image_pictures_removed": {m: zero_bare[m] for m in METRICS}}
               if "image" in modalities else {}),
            "cells": cells, "runs": runs}


TIME_OPTIONS = {"reference init (N(0, 0.02))": [], "time_init_std=0.5": ["model.time_init_std=0.5"]}


def timeless(run: Path) -> dict:
    """The run's export scored with its timestamps and with every timestamp zeroed: movielens.py's `timeless`
    sub-command (the evaluation code on the test split, plus the relative change of the user vectors)."""
    out = run / "timeless.json"
    if not out.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        with open(run.with_name(run.name + ".timeless.log"), "w") as f:
            subprocess.run([sys.executable, str(REPO / "tools/bench/movielens.py"), "timeless", "--run", str(run)],
                           cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    return json.loads(out.read_text())


def time_study(args, pool: ThreadPoolExecutor) -> dict:
    """With time carrying signal (--time-signal), train from scratch on domain b with the time path at the
    reference's initialisation and with model.time_init_std=0.5, then score each with its timestamps and with
    all of them zeroed: is the time path alive, and does it lift NDCG@10?"""
    data = dataset(args, args.contents[0])
    root = Path(args.runs) / f"c{args.contents[0]:g}-t{args.time_signal:g}{home_tag(args)}"
    fraction = args.fractions[-1]

    def one(name: str, seed: int) -> dict:
        tag = "-".join(["time", *TIME_OPTIONS[name], *args.set, args.variants[0], f"f{fraction:g}", f"s{seed}"])
        tag = tag.replace("=", "_")
        over = [*VARIANTS[args.variants[0]], *TIME_OPTIONS[name], f"train.epochs={EPOCHS[fraction]}",
                f"train.patience={args.patience}", f"train.seed={seed}", f"data.seed={seed}",
                *([f"data.train_users={fraction}"] if fraction < 1 else []), *args.set]
        run = root / tag
        summary = train("finetune", run, data / "b", over)
        t = timeless(run)
        return {"option": name, "seed": seed, "sets": over, "test_ndcg@10": t["with_time"]["ndcg@10"],
                "test_ndcg@10_timestamps_zeroed": t["zero_time"]["ndcg@10"],
                "ndcg@10_change_zeroed": t["ndcg@10_change"], "user_vector_change": t["user_vector_change"],
                "epochs_to_best": summary["epochs_to_best"], "run_dir": str(run)}

    runs = list(pool.map(lambda j: one(*j), [(n, s) for n in TIME_OPTIONS for s in args.seeds]))
    return {"content": args.contents[0], "time_signal": args.time_signal, "renewal": args.renewal,
            **({"drift": args.drift} if args.renewal == "home" else {}), "set": args.set, "variant": args.variants[0],
            "fraction": fraction, "dataset": str(data), "runs": runs}


def markdown(result: dict) -> str:
    prov = result["provenance"]
    lines = [f"# Transfer under control\n\n    {result['command']}\n",
             f"Revision {prov.get('git_revision')}, {prov.get('date')}; machine {prov.get('machine')}.\n",
             "| content | cell | pre-trained NDCG@10 | scratch NDCG@10 | ratio (per seed) | pre HR@10 | scratch HR@10 |"
             " epochs to best pre / scratch | wall to best (s) pre / scratch |", "|---|---|---|---|---|---|---|---|---|"]
    for s in result["studies"]:
        for name, c in s["cells"].items():
            p, q = c["pre-trained"], c["scratch"]
            lines.append(f"| {s['content']:g} | {name} | {p['ndcg@10']['mean']:.4f} ± {p['ndcg@10']['std']:.4f} | "
                         f"{q['ndcg@10']['mean']:.4f} ± {q['ndcg@10']['std']:.4f} | {c['ndcg@10_ratio']:.2f} "
                         f"({', '.join(f'{x:.2f}' for x in c['per_seed_ndcg@10_ratio'])}) | "
                         f"{p['hit@10']['mean']:.4f} | {q['hit@10']['mean']:.4f} | "
                         f"{p['epochs_to_best']['mean']:.1f} / {q['epochs_to_best']['mean']:.1f} | "
                         f"{p['wall_time_to_best_s']['mean']:.0f} / {q['wall_time_to_best_s']['mean']:.0f} |")
    lines += ["", "| content | zero-shot NDCG@10 | popularity | random | zero-shot / popularity | "
              "pre-training best held-out valid NDCG@10 |", "|---|---|---|---|---|---|"]
    for s in result["studies"]:
        lines.append(f"| {s['content']:g} | {s['zero_shot']['ndcg@10']:.4f} | {s['popularity']['ndcg@10']:.4f} | "
                     f"{s['random']['ndcg@10']:.4f} | {s['zero_shot_over_popularity']:.2f} | "
                     f"{s['pretraining']['best_valid']} |")
        if "zero_shot_image" in s:
            z = s["zero_shot_image"]["ndcg@10"]
            lines.append(f"| {s['content']:g}, text + image | {z:.4f} | {s['popularity']['ndcg@10']:.4f} | "
                         f"{s['random']['ndcg@10']:.4f} | {z / max(s['popularity']['ndcg@10'], 1e-12):.2f} | "
                         f"{s['pretraining_image']['best_valid']} |")
            z = s["zero_shot_image_pictures_removed"]["ndcg@10"]
            lines.append(f"| {s['content']:g}, text + image, pictures removed | {z:.4f} | "
                         f"{s['popularity']['ndcg@10']:.4f} | {s['random']['ndcg@10']:.4f} | "
                         f"{z / max(s['popularity']['ndcg@10'], 1e-12):.2f} | |")
    bare = [(s, r) for s in result["studies"] for r in s["runs"] if "test_pictures_removed" in r]
    if bare:
        lines += ["", "| content | text + image cell | test NDCG@10 | with every picture removed (blank) |",
                  "|---|---|---|---|"]
        for s in result["studies"]:
            for name in s["cells"]:
                rs = [r for t, r in bare if t is s and f"{r['variant']} @ {r['fraction']:g}" == name]
                for init in ("pre-trained", "scratch"):
                    got = [r for r in rs if r["init"] == init]
                    if got:
                        a = mean_std([r["test"]["ndcg@10"] for r in got])
                        b = mean_std([r["test_pictures_removed"]["ndcg@10"] for r in got])
                        lines.append(f"| {s['content']:g} | {name}, {init} | {a['mean']:.4f} ± {a['std']:.4f} | "
                                     f"{b['mean']:.4f} ± {b['std']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Validation NDCG@10 per epoch, every run (pre-trained solid, scratch dashed), one panel per cell and
    content setting; zero-shot and popularity as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, name) for s in result["studies"] for name in s["cells"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for ax, (s, name) in zip(axes[0], panels):
        v, f = name.split(" @ ")
        for r in s["runs"]:
            if (r["variant"], f"{r['fraction']:g}") == (v, f):
                pre = r["init"] == "pre-trained"
                ax.plot(range(1, len(r["valid_curve"]) + 1), r["valid_curve"], "-" if pre else "--",
                        color="C0" if pre else "C1", label=r["init"] if r["seed"] == s["runs"][0]["seed"] else None)
        zero = s["zero_shot_image"] if v == "textimage" else s["zero_shot"]  # its own pre-training's
        ax.axhline(zero["ndcg@10"], color="C2", lw=0.8, label="zero-shot (test)")
        ax.axhline(s["popularity"]["ndcg@10"], color="grey", lw=0.8, label="popularity (test)")
        ax.set_title(f"content {s['content']:g}: {name}", fontsize=8)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation NDCG@10")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def time_markdown(result: dict) -> str:
    t = result["time_study"]
    home = f", renewal home (drift {t['drift']:g})" if t.get("renewal") == "home" else ""
    extra = f", {' '.join(t['set'])}" if t.get("set") else ""
    lines = [f"    {result['command']}\n", f"content {t['content']:g}, time signal {t['time_signal']:g}{home}, "
             f"{t['variant']}, {t['fraction']:g} of b's users, from scratch{extra}:\n",
             "| time path | seed | test NDCG@10 | with timestamps zeroed | change | user-vector change "
             "| epochs to best |",
             "|---|---|---|---|---|---|---|"]
    for r in t["runs"]:
        lines.append(f"| {r['option']} | {r['seed']} | {r['test_ndcg@10']:.4f} | "
                     f"{r['test_ndcg@10_timestamps_zeroed']:.4f} | {r['ndcg@10_change_zeroed']:+.4f} | "
                     f"{r['user_vector_change']:.2e} | {r['epochs_to_best']} |")
    return "\n".join(lines) + "\n"


def merge(out: str, parts: list[str]) -> None:
    """One result file from several invocations (their runs are shared): <out>.json {"parts": [...]} and <out>.md
    with each part's tables."""
    results = [json.loads(Path(p).read_text()) for p in parts]
    Path(out).with_suffix(".json").write_text(json.dumps({"parts": results}, indent=1))
    Path(out).with_suffix(".md").write_text("\n".join(time_markdown(r) if "time_study" in r else markdown(r)
                                                       for r in results))


def main(argv: list[str] | None = None) -> None:
    """The study (``tools/bench/movielens.py controlled …`` runs it as one of the study runner's sub-commands)."""
    global args_preset
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge(argv[1], argv[2:])
    p = argparse.ArgumentParser(prog="movielens.py controlled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contents", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    p.add_argument("--time-signal", type=float, default=0.0)
    p.add_argument("--renewal", choices=RENEWALS, default="random",
                   help="home: after a long gap the taste returns to the user's first one (transfer_bench)")
    p.add_argument("--drift", type=float, default=0.8, help="the in-session drift under --renewal home")
    p.add_argument("--users", type=int, default=1000, help="users per domain")
    p.add_argument("--items", type=int, default=400, help="items per domain")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2, 1.0], choices=sorted(EPOCHS))
    p.add_argument("--variants", nargs="+", default=["text", "textid"], choices=sorted(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--images", choices=["none", "fashion-mnist"], default="none",
                   help="give items real Fashion-MNIST pictures (needed by --variants textimage)")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--preset", default=PRESET)
    p.add_argument("--set", action="append", default=[], help="an override for every run, e.g. train.lr=5e-4")
    p.add_argument("--pretrained-set", action="append", default=[],
                   help="an override for the pre-trained fine-tunings only (a recipe for a pre-trained start)")
    p.add_argument("--time-study", action="store_true",
                   help="instead: the time path with and without model.time_init_std=0.5, scored with timestamps "
                        "zeroed (use with --time-signal 1, one content, the last --fractions share)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--runs", default="runs/transfer_control")
    p.add_argument("--out", default="docs/results/transfer_control")
    args = p.parse_args(argv)
    if "textimage" in args.variants and args.images == "none":
        p.error("--variants textimage needs --images fashion-mnist")
    args_preset = args.preset
    start = time.time()
    if args.time_study:
        with ThreadPoolExecutor(args.parallel) as pool:
            result = {"command": " ".join(["tools/bench/transfer_control.py", *argv]),
                      "provenance": provenance(), "time_study": time_study(args, pool)}
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result["time_study"]["runs"], indent=1))
        return
    with ThreadPoolExecutor(args.parallel) as pool:
        studies = [study(args, c, pool) for c in args.contents]
    result = {"command": " ".join(["tools/bench/transfer_control.py", *argv]), "provenance": provenance(),
              "wall_time_s": round(time.time() - start), "preset": args.preset, "epochs_by_fraction": EPOCHS,
              "pretrained_set": args.pretrained_set, "set": args.set,
              "studies": studies}
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    plot(result, Path(args.out).with_suffix(".png"))
    print(markdown(result))


args_preset = PRESET
if __name__ == "__main__":
    main()
