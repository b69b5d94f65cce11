"""Stage-1 throughput: items/s of launchers/extract_features.py with the MiniLM text encoder, 1 process vs
2 processes (torchrun), side by side, on the same machine and the same synthetic catalogue.

  python tools/bench/stage1_encode.py --items 4000

Throughput = encoded items / the store's build time (manifest "created.seconds": model load, reading, encoding,
merge); the wall time with process start-up is printed too. The two stores must be byte-identical. torchrun gives
each of its processes one thread (OMP_NUM_THREADS=1); the single process uses torch's default (all cores) unless
--threads is given.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--shard-size", type=int, default=250, help="items per shard (the unit split over processes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the single process (default: torch's)")
    p.add_argument("--dataset", type=Path, help="use this dataset instead of generating a synthetic one")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            dataset = Path(tmp) / "syn"
            subprocess.run([sys.executable, "tools/make_synthetic.py", "--users", "100", "--items", str(args.items),
                            "--images", "none", "--shard-size", str(args.shard_size), "--out", str(dataset)],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        launcher = ["launchers/extract_features.py", "--dataset", str(dataset), "--batch-size", str(args.batch_size)]
        single_env = {**env, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        runs = {
            1: ([sys.executable, *launcher, "--features", f"{tmp}/one"], single_env),
            2: ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher,
                 "--features", f"{tmp}/two"], env),
        }
        rows = {}
        for procs, (cmd, run_env) in runs.items():
            wall = run(cmd, run_env)
            manifest = json.loads(Path(cmd[cmd.index("--features") + 1], "manifest.json").read_text())
            seconds, encoded = manifest["created"]["seconds"], manifest["last_build"]["encoded"]
            rows[procs] = (encoded, seconds, encoded / seconds, wall)
        identical = all((Path(tmp, "one", f).read_bytes() == Path(tmp, "two", f).read_bytes())
                        for f in ("text.npy", "items.json", "hashes.npy"))
    print(f"stage 1, MiniLM text encoder, {rows[1][0]} items, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'processes':>9} {'build s':>8} {'items/s':>8} {'wall s':>7}")
    for procs, (_, seconds, rate, wall) in rows.items():
        print(f"{procs:>9} {seconds:>8.1f} {rate:>8.0f} {wall:>7.1f}")
    print(f"ratio 2/1: {rows[2][2] / rows[1][2]:.2f}x items/s; stores byte-identical: {identical}")


if __name__ == "__main__":
    main()
