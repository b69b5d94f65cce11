"""Load test of `mmm4rec serve` on loopback: requests/s and p50/p99 latency of POST /recommend for batches of 1 and
64 histories, at 10^4 and 10^6 catalogue items, against the same calls made directly on the Recommender (no HTTP)
in the server process — the baseline of the ratio printed.

The catalogue is padded with SYNTHETIC candidate vectors: a small real export (a synthetic 60-item dataset, MiniLM
features, an untrained MMM4Rec with the ml100k preset's sizes) encodes the histories, and 10^4 or 10^6 random vectors of that
dimension are the items ranked (a load test measures serving cost, not quality). Above the ANN threshold
(mmm4rec.serving.ann.ANN_MIN_ITEMS) the service ranks through the index, as it would in production; the index is
built before timing (its build time is reported). The server runs in its own process (uvicorn, one worker), the
client in this one with --concurrency threads; both share this machine's cores. Bounded: --requests per setting.
Each setting is loaded twice: with one kept-alive connection per client thread (``http``, how a service's client
pool calls it) and with a new connection per request (``http_new_connection``, urllib's way).

The known-user index (mmm4rec.serving.dataset.UserHistories) is measured on a synthetic dataset of --users users:
its bytes per event, load time and the time of one key lookup (``user_index`` in the JSON).

    .venv/bin/python tools/bench/serve_load.py [--items 10000 1000000] [--json docs/results/serve_load.json]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from provenance import provenance

from mmm4rec.distributed import free_port

T0 = 1_600_000_000


def tiny_export(root: Path, dim: int) -> Path:
    import torch

    from mmm4rec.config import EncoderConfig, ModelConfig, from_dict
    from mmm4rec.data.dataset import load_manifest
    from mmm4rec.data.features import FeatureStore, default_features_dir, ensure_features
    from mmm4rec.data.stream import SeqIndex
    from mmm4rec.data.synthetic import generate
    from mmm4rec.model import build_model
    from mmm4rec.serving.export import catalogue_extras, item_features, write_export

    data = root / "data"
    generate(data, 120, 60, images="none", seed=1, shard_size=40)
    ensure_features(data, EncoderConfig())
    store = FeatureStore.open(default_features_dir(data, EncoderConfig()))
    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, dict(d_model=dim, expand=2, head_dim=16, n_groups=4, d_state=16, max_len=20)), item_features(store)).eval()
    manifest = load_manifest(data)
    extras = catalogue_extras(manifest, store, SeqIndex.load_or_build(manifest, store.index, store.path), "train")
    return write_export(model, root / "export", store=store, provenance={"bench": "serve_load"}, **extras)


def padded(export: Path, items: int):
    """The export's Recommender with its catalogue padded to ``items`` by synthetic candidate vectors (keys
    pad:<i>); histories still use the real items."""
    import torch

    from mmm4rec.serving import Recommender

    rec = Recommender.from_pretrained(export)
    real = rec.num_items
    dim = rec.candidates.shape[1]
    gen = torch.Generator().manual_seed(0)
    extra = torch.randn(items - real, dim, generator=gen) * rec.candidates[1:].std()
    rec.keys = rec.keys + [f"pad:{i}" for i in range(items - real)]
    rec.index = {k: i for i, k in enumerate(rec.keys) if i}
    rec.candidates = torch.cat([rec.candidates, extra])
    rec.texts = rec.texts + [f"synthetic item {i}" for i in range(items - real)]
    return rec


def user_index(root: Path, users: int) -> dict:
    """Bytes per event, load time and lookup time of the known-user index over a synthetic dataset."""
    from mmm4rec.data.synthetic import generate
    from mmm4rec.serving.dataset import UserHistories

    generate(root / "users", users, 10_000, images="none", seed=0, shard_size=20_000)
    index = {f"syn:{i:04d}": i + 1 for i in range(10_000)}
    started = time.perf_counter()
    known = UserHistories.read(root / "users", index)
    load_s = time.perf_counter() - started
    keys = [known.key(r) for r in range(0, known.num_users, max(1, known.num_users // 10_000))]
    started = time.perf_counter()
    assert all(known.row(k) is not None for k in keys)
    lookup = (time.perf_counter() - started) / len(keys)
    out = {"users": known.num_users, "events": known.num_events, "bytes": known.nbytes,
           "bytes_per_event": round(known.nbytes / known.num_events, 1), "load_s": round(load_s, 1),
           "lookup_us": round(1e6 * lookup, 1)}
    print(json.dumps({"user_index": out}), flush=True)
    return out


def histories(keys: list[str], n: int, seed: int) -> list[list]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(1, 20))
        picked = rng.choice(np.arange(1, 61), length)
        out.append([[keys[i], T0 + 60 * j] for j, i in enumerate(picked)])
    return out


def serve(args) -> None:
    """The server process: uvicorn until killed; a line "<batch>" on stdin times direct Recommender calls of that
    batch size here (the baseline, taken right before the HTTP load of the same setting, the server idle)."""
    import uvicorn

    from mmm4rec.serving.http import Limits, create_app

    rec = padded(Path(args.export), args.items)
    started = time.perf_counter()
    rec.recommend(histories(rec.keys, 1, 0), k=args.k)  # builds the ANN index when it is used
    print(json.dumps({"ann": rec.uses_ann, "first_call_s": round(time.perf_counter() - started, 1)}), flush=True)

    def direct():
        for line in sys.stdin:
            batch = int(line)
            calls = [histories(rec.keys, batch, 10_000 + seed) for seed in range(args.direct_calls)]
            rec.recommend(calls[0], k=args.k)
            times = []
            for h in calls:
                t = time.perf_counter()
                rec.recommend(h, k=args.k)
                times.append(time.perf_counter() - t)
            print(json.dumps({"calls_per_s": round(len(times) / sum(times), 1),
                              "p50_ms": round(1e3 * float(np.percentile(times, 50)), 2),
                              "p99_ms": round(1e3 * float(np.percentile(times, 99)), 2)}), flush=True)

    threading.Thread(target=direct, daemon=True).start()
    uvicorn.run(create_app(rec, Limits(max_batch=256)), host="127.0.0.1", port=args.port, log_level="warning",
                limit_concurrency=64)


def load(url: str, bodies: list[bytes], concurrency: int, keep_alive: bool) -> dict:
    local = threading.local()
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]

    def one(body: bytes) -> float:
        t = time.perf_counter()
        if keep_alive:
            if getattr(local, "conn", None) is None:
                local.conn = http.client.HTTPConnection(host, int(port), timeout=120)
            local.conn.request("POST", path, body, {"Content-Type": "application/json"})
            r = local.conn.getresponse()
            r.read()
            assert r.status == 200
            return time.perf_counter() - t
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            assert r.status == 200
        return time.perf_counter() - t

    one(bodies[0])
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = list(pool.map(one, bodies))
    wall = time.perf_counter() - started
    return {"requests": len(bodies), "requests_per_s": round(len(bodies) / wall, 1),
            "p50_ms": round(1e3 * float(np.percentile(times, 50)), 2),
            "p99_ms": round(1e3 * float(np.percentile(times, 99)), 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--requests", type=int, default=200, help="requests per (items, batch) setting")
    p.add_argument("--concurrency", type=int, default=4, help="client threads")
    p.add_argument("--direct-calls", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=int, default=100_000, help="users of the known-user index measurement (0: skip)")
    p.add_argument("--json")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        args.items = args.items[0]
        return serve(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        users = user_index(Path(tmp), args.users) if args.users else None
        export = tiny_export(Path(tmp), args.dim)
        keys = json.loads((export / "items.json").read_text())
        for items in args.items:
            port = free_port()
            cmd = [sys.executable, __file__, "--serve", "--export", str(export), "--port", str(port), "--items",
                   str(items), "--k", str(args.k), "--direct-calls", str(args.direct_calls), "--batches",
                   *map(str, args.batches)]
            server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ})
            try:
                ready = json.loads(server.stdout.readline())
                url = f"http://127.0.0.1:{port}"
                for _ in range(600):
                    try:
                        urllib.request.urlopen(url + "/health", timeout=2).read()
                        break
                    except OSError:
                        time.sleep(0.2)
                for batch in args.batches:
                    n = max(8, args.requests // (1 if batch == 1 else 4))
                    bodies = [json.dumps({"histories": histories(keys, batch, seed), "k": args.k}).encode()
                              for seed in range(n)]
                    server.stdin.write(f"{batch}\n")
                    server.stdin.flush()
                    direct = json.loads(server.stdout.readline())
                    got = load(url + "/recommend", bodies, args.concurrency, keep_alive=True)
                    fresh = load(url + "/recommend", bodies, args.concurrency, keep_alive=False)
                    row = {"items": items, "batch": batch, "ann": ready["ann"], "first_call_s": ready["first_call_s"],
                           "http": got, "http_new_connection": fresh, "direct": direct,
                           "http_vs_direct_throughput": round(got["requests_per_s"] / direct["calls_per_s"], 2),
                           "http_new_connection_vs_direct_throughput":
                               round(fresh["requests_per_s"] / direct["calls_per_s"], 2)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                server.terminate()
                server.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(), "load_average_at_end": os.getloadavg(), "synthetic_candidates": True, "concurrency": args.concurrency, "k": args.k,
                       "user_index": users,
                       "dim": args.dim, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
