"""Large catalogues (10⁵–10⁷ items): fine-tuning step time and peak memory per rank for the full softmax, the
sampled softmax and the item-parallel full softmax, and full-ranking evaluation speed, on 1 and 2 processes
(torchrun, gloo), side by side in one invocation.

Features: random unit-norm 768-d rows, written ONCE as one bf16 memory-mapped file for the largest catalogue
(10⁷ × 768 × 2 B = 15 GB); a smaller catalogue is its first rows. Each process maps it the way
``FeatureStore.tensor(name, torch.bfloat16)`` does (copy-on-write, int16 bits viewed as bfloat16).

Model: MMM4Rec content-only (model.id_bias=false: ID tables would add 2·(I+1)·N parameters, their gradients and
optimizer state to every step — 1.3·10⁹ parameters at 10⁷ items and N=64) at the ml100k_finetune width (N=64),
L=20, micro-batch 256 per process, trained by the real DeepSpeed engine (ZeRO-1) as launchers/finetune.py
wires it. Every process runs 1 thread: the machine's cores are shared with other jobs, and an OpenMP team
whose second thread is descheduled stalls at every barrier (the load average at each start is recorded).

Every configuration runs in its own torchrun job so that ru_maxrss is its own; the peak includes the
memory-mapped feature pages the process touched (reported apart as the peak of RssFile, next to RssAnon).
A configuration is not started when the sizes measured before predict (linearly) that it needs more memory than
the machine has available, or more time than --config-timeout; a running one is killed when MemAvailable falls
below --memory-margin-gb. Either way the row says why. Linux only (/proc).

    .venv/bin/python tools/bench/catalogue.py [--sizes 100000 1000000 10000000] [--scratch /tmp/catalogue]
        [--steps 3] [--skip-at-largest "full/1" ...] [--keep-features] [--json docs/results/catalogue.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from provenance import REPO, provenance

from mmm4rec.distributed import free_port

DIM = 768
GIB = 1 << 30
HERE = Path(__file__).resolve()
# what every configuration shares: the ml100k_finetune model without ID tables, fp32 unless the CPU has bf16
MAX_TIMED_STEPS = 20
COMMON = ["model.id_bias=false", "data.batch_size=256", "data.feature_dtype=bfloat16", "train.precision=auto"]


@dataclass
class Config:
    name: str
    task: str  # "train" or "eval"
    world: int
    overrides: list[str] = field(default_factory=list)
    sharded: bool = False  # item rows split over the ranks

    def rows_per_rank(self, items: int) -> int:
        return (items + 1) // self.world if self.sharded else items + 1


CONFIGS = [
    Config("full", "train", 1, ["train.loss=full"]),
    Config("full", "train", 2, ["train.loss=full"]),
    Config("sampled", "train", 1, ["train.loss=sampled"]),
    Config("sampled", "train", 2, ["train.loss=sampled"]),
    Config("full + item_parallel", "train", 2, ["train.loss=full", "train.item_parallel=true"], sharded=True),
    Config("evaluation", "eval", 1),
    Config("evaluation", "eval", 2),
    Config("evaluation, item-sharded", "eval", 2, sharded=True),
]


# ------------------------------------------------------------------------------------------------ the features
def write_features(path: Path, items: int, seed: int = 0, block: int = 1 << 16) -> None:
    """Rows 1..items: random unit-norm vectors as bf16 bits (int16 .npy, the store's bf16 companion format);
    row 0 (padding) zeros. Kept when a file of that shape is already there; written whole, then renamed."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (items + 1, DIM):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, "w+", np.int16, (items + 1, DIM))
    out[0] = 0
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for lo in range(1, items + 1, block):
        rows = torch.nn.functional.normalize(torch.randn(min(block, items + 1 - lo), DIM, generator=gen), dim=-1)
        out[lo : lo + len(rows)] = rows.bfloat16().view(torch.int16).numpy()
    out.flush()
    del out
    os.replace(tmp, path)
    print(f"wrote {path} ({(items + 1) * DIM * 2 / GIB:.1f} GiB) in {time.perf_counter() - start:.0f} s", flush=True)


def catalogue_features(path: str, items: int):
    """The first items+1 rows of the feature file, memory-mapped copy-on-write as FeatureStore.tensor maps them."""
    from mmm4rec.model import ItemFeatures

    bits = np.load(path, mmap_mode="c")[: items + 1]
    return ItemFeatures(torch.from_numpy(bits).view(torch.bfloat16))


def popularity(items: int, seed: int = 0) -> np.ndarray:
    """Target counts with a Zipf(1) popularity over a random order of the items (the popularity sampler's input)."""
    counts = np.zeros(items + 1, np.int64)
    counts[1:] = np.ceil(1e6 / np.arange(1, items + 1))[np.random.default_rng(seed).permutation(items)]
    return counts


# ----------------------------------------------------------------------------------------------- in a worker
class MemoryPeaks:
    """Peaks of this process's RssAnon and RssFile (/proc/self/status, sampled every 20 ms) and its ru_maxrss."""

    def __init__(self):
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def now(status: Path = Path("/proc/self/status")) -> dict[str, int]:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            now = self.now()
            self.anon, self.file = max(self.anon, now["RssAnon"]), max(self.file, now["RssFile"])

    def read(self) -> list[float]:
        """[ru_maxrss, peak RssAnon, peak RssFile] in GiB."""
        self._stop.set()
        self._thread.join()
        now = self.now()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return [peak_rss / GIB, max(self.anon, now["RssAnon"]) / GIB, max(self.file, now["RssFile"]) / GIB]


def worker(args) -> None:
    from mmm4rec import distributed
    from mmm4rec.config import load_config

    torch.set_num_threads(1)
    peaks = MemoryPeaks()
    env = distributed.init()
    cfg = load_config("ml100k_finetune", COMMON + args.set)
    features = catalogue_features(args.features, args.items)
    if args.sharded:
        features = features.shard(env.rank, env.world_size)
    setup_gib = MemoryPeaks.now()["RssAnon"] / GIB  # torch and mmm4rec imported, features mapped
    result = (train_steps if args.task == "train" else evaluation)(args, cfg, env, features)
    per_rank = distributed.all_gather(torch.tensor([[setup_gib, *peaks.read()]], dtype=torch.float64))
    times = distributed.all_gather(torch.tensor([result.pop("seconds")], dtype=torch.float64))
    if env.is_main:
        result.update(
            seconds_per_rank=[[round(t, 3) for t in row] for row in times.tolist()],
            memory_gib_per_rank=[dict(zip(("anon_before_model", "ru_maxrss", "peak_anon", "peak_file"),
                                          [round(v, 3) for v in row])) for row in per_rank.tolist()])
        Path(args.out).write_text(json.dumps(result))
    distributed.shutdown()


def train_steps(args, cfg, env, features) -> dict:
    """Warm-up, then timed DeepSpeed steps (forward + loss + backward + optimizer) on random batches."""
    from model_step import make_batch

    from mmm4rec.losses import needs_target_counts
    from mmm4rec.model import build_model
    from mmm4rec.train.assembly import train_engine
    from mmm4rec.train.engine import step_precision

    precision = step_precision(cfg, env.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, features)
    counts = popularity(args.items) if needs_target_counts(cfg) else None
    most = args.warmup + MAX_TIMED_STEPS
    engine = train_engine(cfg, env, model, most, counts, precision=precision)
    gen = torch.Generator().manual_seed(env.rank)
    seconds, losses = [], []
    while len(seconds) < most and not enough(seconds[args.warmup :], args.steps, args.min_timed_s):
        batch = make_batch(cfg.data.batch_size, cfg.model.max_len, args.items, gen).to(env.device)
        start = time.perf_counter()
        loss = engine(batch)
        engine.backward(loss)
        engine.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite loss: {losses}")
    return {"precision": precision, "seconds": seconds[args.warmup :], "warmup_s": seconds[: args.warmup],
            "loss": losses, "parameters": sum(p.numel() for p in model.parameters())}


def enough(timed: list[float], steps: int, seconds: float) -> bool:
    """At least ``steps`` timed steps and ``seconds`` of them; every rank decides the same (a collective), so all
    take the same number of steps."""
    from mmm4rec import distributed

    done = torch.tensor([float(len(timed) >= steps and sum(timed) >= seconds)])
    return bool(distributed.all_reduce(done, "max").item())


def evaluation(args, cfg, env, features) -> dict:
    """evaluate() over this rank's share of the users: it builds the item tables once (timed: the batches are
    a generator that notes when evaluate() first asks for one), then every batch scores every (held) item."""
    from model_step import make_batch

    from mmm4rec.model import build_model
    from mmm4rec.train.evaluation import evaluate

    torch.manual_seed(0)
    model = build_model(cfg.model, features)
    gen = torch.Generator().manual_seed(env.rank)
    b = cfg.data.batch_size
    batches = [{**vars(make_batch(b, cfg.model.max_len, args.items, gen)), "valid": torch.ones(b, dtype=torch.bool)}
               for _ in range(args.eval_users // env.world_size // b)]
    asked = []

    def stream():
        asked.append(time.perf_counter())
        yield from batches

    start = time.perf_counter()
    metrics = evaluate(model, stream(), ks=cfg.eval.ks, item_chunk=cfg.eval.item_chunk, device=env.device)
    eval_s = time.perf_counter() - start
    return {"users": metrics["users"], "tables_s": round(asked[0] - start, 2), "seconds": [eval_s]}


# ------------------------------------------------------------------------------------------------ the driver
def mem_available() -> int:
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


def launch(args, config: Config, items: int, log: Path) -> dict:
    """One configuration as its own torchrun job, watched: killed (torchrun and its workers) when MemAvailable
    falls below the margin or the time limit passes."""
    out = log.with_suffix(".json")
    out.unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(config.world), "--master_port",
           str(free_port()), str(HERE), "worker", "--task", config.task, "--items", str(items), "--features",
           str(features_path(args)), "--out", str(out), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--min-timed-s", str(args.min_timed_s), "--eval-users", str(args.eval_users)]
    cmd += ["--sharded"] * config.sharded + [a for s in config.overrides + [f"train.negatives={args.negatives}"]
                                             for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start, lowest, why = time.perf_counter(), mem_available(), None
    load = os.getloadavg()[0]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            time.sleep(0.2)
            lowest = min(lowest, mem_available())
            if lowest < args.memory_margin_gb * GIB:
                why = (f"killed: MemAvailable fell below {args.memory_margin_gb} GB while its processes held "
                       f"{sum(map(anon_of, tree(proc.pid))) / GIB:.1f} GiB (RssAnon)")
            elif time.perf_counter() - start > args.config_timeout:
                why = f"killed: ran past --config-timeout {args.config_timeout} s"
            if why:
                for pid in tree(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()
    row = {"wall_s": round(time.perf_counter() - start, 1), "min_mem_available_gib": round(lowest / GIB, 2), "load_average_1min_at_start": round(load, 2)}
    if why or proc.returncode or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {**row, "status": why or f"failed (exit {proc.returncode})", "log_tail": tail}
    return {**row, "status": "ok", **json.loads(out.read_text())}


def tree(root: int) -> list[int]:
    """``root`` and its descendants: torchrun starts every worker in a session of its own, so the launcher's
    process group does not hold them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def anon_of(pid: int) -> int:
    """RssAnon of process ``pid`` (0 once it is gone)."""
    try:
        return MemoryPeaks.now(Path(f"/proc/{pid}/status"))["RssAnon"]
    except (OSError, KeyError):
        return 0


def run(args, config: Config, items: int, need_gib: float) -> dict:
    """launch(), once memory for it is available; a run killed for memory (other jobs share the machine) gets one
    more try, and its row keeps the first try's status."""
    log = Path(args.scratch) / (f"{config.task}-{items}-w{config.world}{'-sharded' if config.sharded else ''}-"
                                f"{config.name.split()[0]}.log")
    earlier = []
    for _ in range(2):
        available_gib(args, need_gib)
        row = launch(args, config, items, log)
        if not row["status"].startswith("killed: MemAvailable"):
            break
        earlier.append(row["status"])
    return {**row, "earlier_tries": earlier} if earlier else row


def features_path(args) -> Path:
    return Path(args.scratch) / f"features-{max(args.sizes)}x{DIM}-bf16.npy"


def extrapolate(points: list[tuple[int, float]], x: int) -> float | None:
    """Linear through the two largest measured sizes; None with fewer (one point cannot tell the fixed cost of
    the libraries and the process from the part that grows with the catalogue)."""
    if len(points) < 2:
        return None
    (x0, y0), (x1, y1) = sorted(points)[-2:]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


def available_gib(args, need: float) -> float:
    """MemAvailable minus the margin, in GiB, once it covers ``need`` — or its best value within
    --wait-for-memory-s (other jobs on the machine come and go)."""
    deadline, best = time.monotonic() + args.wait_for_memory_s, 0.0
    while True:
        best = max(best, mem_available() / GIB - args.memory_margin_gb)
        if best >= need or time.monotonic() > deadline:
            return best
        time.sleep(5)


def refusal(args, config: Config, items: int, done: list[dict]) -> tuple[str | None, float]:
    """Why a configuration is not started (None: it is), predicted from the same configuration at the smaller
    sizes, and the memory it needs (GiB, all ranks; without a prediction, a little more than the libraries')."""
    ok = [r for r in done if r["status"] == "ok"]
    rows = lambda r: config.rows_per_rank(r["items"])  # noqa: E731
    anon = extrapolate([(rows(r), max(m["peak_anon"] for m in r["memory_gib_per_rank"])) for r in ok],
                       config.rows_per_rank(items))
    need = config.world * (anon if anon is not None else 1.5)
    wall = extrapolate([(rows(r), r["wall_s"]) for r in ok], config.rows_per_rank(items))
    if items == max(args.sizes) and f"{config.name}/{config.world}" in args.skip_at_largest and anon is not None:
        return (f"not run: left out at the largest size by --skip-at-largest (the time budget); predicted "
                f"{wall:.0f} s wall and {anon:.1f} GiB peak anonymous memory per rank (linear in the rows a rank "
                f"holds, from the two sizes below)"), need
    if anon is not None:
        available = available_gib(args, need)
        if need > available:
            return (f"not run: predicted peak anonymous memory {anon:.1f} GiB per rank × {config.world} rank(s) "
                    f"(linear in the rows a rank holds, from the two sizes below) > {available:.1f} GiB available "
                    f"(MemAvailable minus the {args.memory_margin_gb} GB margin, best within "
                    f"{args.wait_for_memory_s:.0f} s)"), need
    if wall is not None and wall > args.config_timeout:
        return (f"not run: predicted {wall:.0f} s (linear from the sizes below) > --config-timeout "
                f"{args.config_timeout} s"), need
    previous = [r for r in done if r["status"] != "ok"]
    if previous:
        return f"not run: the same configuration at {previous[-1]['items']:,} items did not complete", need
    return None, need


def summarise(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    mem = row["memory_gib_per_rank"]
    peak = max(m["ru_maxrss"] for m in mem)
    anon = max(m["peak_anon"] for m in mem)
    if "users" in row:
        return (f"{row['users']:,} users, tables {row['tables_s']:.1f} s, evaluate {row['eval_s']:.1f} s "
                f"-> {row['users_per_s']:,.0f} users/s; peak RSS/rank {peak:.2f} GiB (anon {anon:.2f})")
    return f"{row['step_s']:.3f} s/step; peak RSS/rank {peak:.2f} GiB (anon {anon:.2f})"


def finish(row: dict) -> dict:
    """Headline numbers of a completed row: the median step over the timed steps (slowest rank per step), or an
    evaluation's users/s (the pass over all ranks' users, item tables included)."""
    if row["status"] != "ok":
        return row
    slowest = [max(step) for step in zip(*row["seconds_per_rank"])]
    if "users" in row:
        row["eval_s"] = round(slowest[0], 2)
        row["users_per_s"] = round(row["users"] / slowest[0], 1)
    else:
        row["step_s"] = round(statistics.median(slowest), 3)
    return row


def targets(rows: list[dict], sizes: list[int]) -> dict:
    def find(name, world, items):
        return next((r for r in rows if r["config"] == name and r["world"] == world and r["items"] == items), None)

    def ok(r):
        return r is not None and r["status"] == "ok"

    def status(r):
        return "not among --only" if r is None else r["status"]

    largest = max(sizes)
    out = {f"at {largest:,} items a sampled step and an item-parallel step both run (2 processes)": {
        "sampled": status(find("sampled", 2, largest)),
        "item_parallel": status(find("full + item_parallel", 2, largest))}}
    both = [n for n in sorted(sizes) if ok(find("full", 1, n)) and ok(find("full + item_parallel", 2, n))]
    if both:
        n = both[-1]
        one = max(m["ru_maxrss"] for m in find("full", 1, n)["memory_gib_per_rank"])
        ip = max(m["ru_maxrss"] for m in find("full + item_parallel", 2, n)["memory_gib_per_rank"])
        one_anon = max(m["peak_anon"] for m in find("full", 1, n)["memory_gib_per_rank"])
        ip_anon = max(m["peak_anon"] for m in find("full + item_parallel", 2, n)["memory_gib_per_rank"])
        out["item-parallel peak memory per rank <= 0.6x the 1-process full softmax"] = {
            "items": n, "ratio_ru_maxrss": round(ip / one, 3), "ratio_peak_anon": round(ip_anon / one_anon, 3),
            "met": ip / one <= 0.6}
    for world in (1, 2):
        steps = {n: find("sampled", world, n)["step_s"] for n in sorted(sizes) if ok(find("sampled", world, n))}
        if len(steps) > 1:
            first = steps[min(steps)]
            out[f"sampled step time flat (±30%) from {min(sizes):,} to {largest:,} items, {world} process(es)"] = {
                "step_s": steps, "max_vs_smallest": round(max(steps.values()) / first, 3),
                "min_vs_smallest": round(min(steps.values()) / first, 3),
                "met": len(steps) == len(sizes) and all(0.7 <= s / first <= 1.3 for s in steps.values())}
    return out


def drive(args) -> None:
    from mmm4rec.provenance import cpu_isa

    write_features(features_path(args), max(args.sizes))
    rows = []
    for items in sorted(args.sizes):
        for config in CONFIGS:
            if args.only and not {config.name, f"{config.name}/{config.world}"} & set(args.only):
                continue
            same = [r for r in rows if r["config"] == config.name and r["world"] == config.world]
            why, need = refusal(args, config, items, same)
            row = {"config": config.name, "items": items, "world": config.world}
            row.update({"status": why} if why else run(args, config, items, need))
            rows.append(finish(row))
            print(f"{items:>11,} {config.name:<26} {config.world} proc  {summarise(row)}", flush=True)
    if not args.keep_features:
        features_path(args).unlink()
    result = {**provenance(), "cpu_isa": cpu_isa(), "settings": {
        "model": "MMM4Rec content-only (model.id_bias=false), ml100k_finetune width: N=64, L=20, 1 layer",
        "overrides": COMMON, "negatives": args.negatives, "micro_batch_per_process": 256,
        "features": f"random unit-norm {DIM}-d, bf16, memory-mapped; text only (the image stream reads them too)",
        "warmup_steps": args.warmup, "timed_steps": f"at least {args.steps}, more (up to {MAX_TIMED_STEPS}) until "
                                                   f"{args.min_timed_s} s", "eval_users": args.eval_users,
        "threads_per_process": 1, "launcher": "torchrun, gloo, DeepSpeed ZeRO-1",
        "memory": "ru_maxrss includes the memory-mapped feature pages a process touched (peak_file: those pages, "
                  "sampled every 20 ms; peak_anon: everything else)"},
        "rows": rows, "targets": targets(rows, args.sizes)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["targets"], indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what")
    w = sub.add_parser("worker", help="one configuration's process (started by torchrun)")
    w.add_argument("--task", choices=("train", "eval"), required=True)
    w.add_argument("--items", type=int, required=True)
    w.add_argument("--features", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--sharded", action="store_true")
    w.add_argument("--warmup", type=int, default=1)
    w.add_argument("--steps", type=int, default=3)
    w.add_argument("--min-timed-s", type=float, default=0.0)
    w.add_argument("--eval-users", type=int, default=1024)
    w.add_argument("--set", action="append", default=[])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--scratch", default="/tmp/catalogue", help="where the feature file and the logs go")
    p.add_argument("--keep-features", action="store_true", help="keep the feature file for the next invocation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps at least (after --warmup)")
    p.add_argument("--min-timed-s", type=float, default=10.0,
                   help=f"and more (up to {MAX_TIMED_STEPS}) until they add up to this many seconds")
    p.add_argument("--negatives", type=int, default=1024)
    p.add_argument("--eval-users", type=int, default=1024)
    p.add_argument("--only", nargs="*", default=[], metavar="NAME[/WORLD]",
                   help='configurations to run, by name (every world) or as "full/1" (default: all)')
    p.add_argument("--memory-margin-gb", type=float, default=2.0,
                   help="a configuration is killed when MemAvailable falls below this")
    p.add_argument("--wait-for-memory-s", type=float, default=300.0,
                   help="how long a configuration waits for the memory it is predicted to need")
    p.add_argument("--config-timeout", type=float, default=600.0)
    p.add_argument("--skip-at-largest", nargs="*", default=[], metavar="NAME/WORLD",
                   help='configurations not run at the largest size, e.g. "full/1"; their rows give the time and '
                        "memory predicted from the smaller sizes")
    p.add_argument("--json")
    args = p.parse_args()
    if args.what == "worker":
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
