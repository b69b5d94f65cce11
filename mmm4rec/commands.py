"""The ``mmm4rec`` command (sub-commands) and the ``mmm4rec-<task>`` console scripts.

  mmm4rec prepare --interactions T --items T --out DIR --name DOMAIN --text-fields COL … [--time-format …]
  mmm4rec pretrain|finetune|evaluate --config PRESET --set key=value … [--print-config]
  mmm4rec extract --dataset DIR [--text NAME|PATH] [--image NAME|PATH]
  mmm4rec export --run RUN_DIR --out DIR
  mmm4rec recommend --export DIR --input histories.jsonl [--k 10] [--output recs.jsonl]

Parsing imports nothing heavier than the config module (PyYAML): ``--help`` and ``--print-config`` answer without
loading torch or DeepSpeed; each command imports what it runs when it runs. This is the one parser: the
launchers (launchers/pretrain.py, finetune.py, evaluate.py, extract_features.py) and the console scripts call
``main``, and the training commands hand the resolved config to ``mmm4rec.train.cli.run``, so they work under
python, torchrun (``torchrun --no-python mmm4rec finetune …``), deepspeed and srun alike. ``--plugin MODULE``
imports a module that registers an architecture or a loss of its own (mmm4rec.registry) before anything else.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import yaml

from .config import ConfigError, EncoderConfig, RunConfig, load_config, named_after_dataset, presets
from .registry import load_plugins
from .serving.options import TIME_UNITS, UNKNOWN, UNKNOWN_USER

TRAINING = ("pretrain", "finetune", "evaluate")


# ------------------------------------------------------------------------------------------------------ training
def add_training_arguments(p: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    p.add_argument("--config", help=f"preset name ({', '.join(presets())}) or a YAML file"
                                    + ("; default: the run's own config.yaml" if task == "evaluate" else ""))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    p.add_argument("--run-dir", help="run directory (default: runs/<name>); a run resumes from its latest checkpoint")
    if task == "evaluate":
        p.add_argument("--checkpoint", required=True, help="a run directory (uses its export and config) or an export")
        p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    # the deepspeed launcher's arguments
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deepspeed_config", "--deepspeed-config",
                   help="DeepSpeed JSON (default: the shipped ds_configs/zero<stage>[_offload].json)")
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    return p


EVALUATE_HELP = (
    "Full-ranking evaluation of an export (a run's export/ or any export folder): for every user of the split, "
    "the held-out next item is ranked against every item of the catalogue; prints HR@k, NDCG@k and MRR "
    "(eval.ks) as JSON and writes eval-<split>[-masked].json into the run (or --run-dir). Uses the run's own "
    "config.yaml unless --config is given; --set eval.mask_history=true does not rank the user's own earlier "
    "items. Under torchrun the users are split over the ranks (same numbers).")


def resolved_config(task: str, args: argparse.Namespace) -> RunConfig:
    """The config the run uses: preset + overrides, the command's task winning; evaluate without --config reads
    the run's own resolved config.yaml."""
    preset = args.config
    if task == "evaluate" and preset is None:
        own = Path(args.checkpoint) / "config.yaml"
        if not own.exists():
            raise ConfigError(f"--checkpoint {args.checkpoint}: no run config.yaml there (a run directory has one); "
                              "pass --config")
        preset = str(own)
    sets = list(args.set) + ([f"train.task={task}"] if task in ("pretrain", "finetune") else [])
    return named_after_dataset(load_config(preset, sets), preset, args.set)


def print_config(cfg: RunConfig) -> None:
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _run_training(args: argparse.Namespace) -> int:
    task = args.command
    try:
        cfg = resolved_config(task, args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(cfg)
        return 0
    from .train.cli import run

    return run(task, args, cfg)


# ------------------------------------------------------------------------------------------------------- stage 1
def add_extract_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = EncoderConfig()
    p.add_argument("--dataset", required=True, help="folder with dataset.json and the shards")
    p.add_argument("--features", help="feature store folder (default: <dataset>/features/<encoder-slug>)")
    p.add_argument("--text", default=defaults.text, help="'minilm', a transformers model name or a local folder")
    p.add_argument("--image", default=defaults.image, help="image model name or folder (default: text only)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-text-tokens", type=int, default=defaults.max_text_tokens)
    p.add_argument("--strict", action="store_true", help="bad input is an error instead of a counted skip")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings (YAML) and exit")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    return p


def _run_extract(args: argparse.Namespace) -> int:
    """Stage 1: encode every item of a dataset into its feature store (or bring it up to date), in one process or
    on every rank of a torchrun job; prints a JSON summary."""
    cfg = EncoderConfig(text=args.text, image=args.image, batch_size=args.batch_size,
                        max_text_tokens=args.max_text_tokens)
    if args.print_config:
        import dataclasses

        settings = {"dataset": args.dataset,
                    "features": args.features or "(default) <dataset>/features/<encoder slug>",
                    "strict": args.strict, "encoder": dataclasses.asdict(cfg)}
        sys.stdout.write(yaml.safe_dump(settings, sort_keys=False))
        return 0
    import logging

    from . import distributed
    from .data.features import FeatureStore, ensure_features
    from .data.schema import DataError

    env = distributed.init()
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s")
    try:
        path = ensure_features(args.dataset, cfg, args.features, strict=args.strict)
        if env.is_main:
            store = FeatureStore.open(path)
            m = store.manifest
            print(json.dumps({"features": str(path), "items": store.num_items, "dims": m["dims"],
                              "missing_images": m["missing_images"], "last_build": m["last_build"],
                              "bad_records": m["bad_records"]}, indent=1))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


# ------------------------------------------------------------------------------------------------------- serving
def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--run", required=True, help="a run directory (config.yaml + export/)")
    p.add_argument("--out", required=True, help="the new export folder (must not exist)")
    p.add_argument("--weights", default="export", choices=["export", "best"],
                   help="which of the run's weight folders to export (default: export)")
    p.add_argument("--features", help="the feature store (default: the one the run's config names)")
    p.add_argument("--reference-features", action="store_true",
                   help="reference the feature store by path and hash instead of copying it into the export")
    p.add_argument("--ann", action="store_true",
                   help="also build the ANN index into <out>/ann-cache (else built, and cached, at the first start "
                        "of a service whose catalogue needs it)")
    return p


def add_recommend_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--export", required=True, help="a self-contained export folder")
    p.add_argument("--input", required=True,
                   help='JSON lines {"user": …, "history": [[item key, unix seconds], …]} oldest first; - = stdin')
    p.add_argument("--output", help='JSON lines {"user": …, "items": [[item key, score], …]} (default: stdout)')
    p.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    p.add_argument("--keep-seen", action="store_true", help="also recommend items of the user's history")
    p.add_argument("--unknown", choices=UNKNOWN, default="error",
                   help="history items not in the catalogue: an error naming the line (default) or skipped")
    p.add_argument("--batch-size", type=int, default=256, help="histories per model call")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    p.add_argument("--features", help="serve on another feature store than the export's own")
    p.add_argument("--transfer", action="store_true",
                   help="allow --features to be another catalogue (content-only scores, ID tables dropped)")
    p.add_argument("--dataset", help='a local dataset folder: an input line {"user": key} without a history is '
                   "answered from that user's history in it")
    p.add_argument("--unknown-user", choices=UNKNOWN_USER, default="error",
                   help="a user key the --dataset does not hold: a bad line (default) or the popular items")
    p.add_argument("--time-unit", choices=TIME_UNITS, default="s",
                   help="numeric history times: Unix seconds (default) or milliseconds; ISO-8601 strings need none")
    p.add_argument("--with-text", action="store_true", help="each item as [key, score, title]")
    p.add_argument("--strict", action="store_true",
                   help="a bad input line stops the run (default: reported as file:line, counted, left out)")
    return p


def _run_export(args: argparse.Namespace) -> int:
    from .serving.cli import export

    return export(args)


def _run_recommend(args: argparse.Namespace) -> int:
    from .serving.cli import recommend

    return recommend(args)


# ------------------------------------------------------------------------------------------------------- the CLI
def _run_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import run_prepare

    return run_prepare(args)


COMMANDS: dict[str, tuple[str, Callable]] = {
    "prepare": ("your own interaction + item tables (CSV/TSV/JSONL/Parquet, RecBole) -> a dataset folder",
                _run_prepare),
    "pretrain": ("pre-train on a (multi-domain) dataset", _run_training),
    "finetune": ("fine-tune on one domain", _run_training),
    "evaluate": ("full-ranking metrics (HR@k, NDCG@k, MRR) of an export on a dataset split", _run_training),
    "extract": ("stage 1: build or update a dataset's feature store", _run_extract),
    "export": ("a self-contained export (weights, catalogue, features) from a run", _run_export),
    "recommend": ("top-k items for the histories of a JSON-lines file", _run_recommend),
    # serve: arguments and main in mmm4rec.serving.http (imports nothing heavy until it runs)
    "serve": ("an export behind a JSON HTTP service and an exploration page", lambda args: _serve().run(args)),
}


def _serve():
    from .serving import http

    return http


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmm4rec", description="MMM4Rec: transferable multi-modal sequential recommendation.",
        epilog=f"presets (--config): {', '.join(presets())}. `mmm4rec <command> --help` for a command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, (summary, _) in COMMANDS.items():
        parser = sub.add_parser(name, help=summary, description=EVALUATE_HELP if name == "evaluate" else summary)
        if name in TRAINING:
            add_training_arguments(parser, name)
        elif name == "prepare":
            from .data.prepare import add_prepare_arguments

            add_prepare_arguments(parser)
        else:
            {"extract": add_extract_arguments, "export": add_export_arguments,
             "recommend": add_recommend_arguments, "serve": lambda p: _serve().add_arguments(p)}[name](parser)
        parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                            help="import MODULE first: it registers an architecture or a loss of your own "
                                 "(mmm4rec.registry)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """``mmm4rec <command> …``: the one parser of every command (the launchers and console scripts call it)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        load_plugins(args.plugin)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return COMMANDS[args.command][1](args)


def _script(command: str) -> Callable[[], int]:
    def entry() -> int:
        return main([command, *sys.argv[1:]])

    entry.__name__ = command
    return entry


pretrain, finetune, evaluate, extract = (_script(c) for c in ("pretrain", "finetune", "evaluate", "extract"))
