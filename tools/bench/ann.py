"""ANN retrieval (mmm4rec.serving.ann: FAISS IVF-SQ8 + exact re-scoring) against exact ranking (the Recommender's
user @ candidates.T + top-k), on synthetic clustered candidate vectors at the model's dimension.

Per catalogue size: recall@10 of the ANN top-10 against the exact top-10, queries/s of both (batches of --batch
queries, the same queries), the index's build time and memory (its serialised size: the SQ8 codes + list ids;
the fp32 candidates both paths share are not counted), and the process's peak RSS. The vectors are synthetic
(a mixture of --clusters Gaussian clusters with log-normal norms, like trained item vectors whose norm grows with
popularity); queries are drawn from the same mixture. Real catalogues' recall can differ: tests/serving/test_ann.py
checks it on a trained model's vectors.

    .venv/bin/python tools/bench/ann.py [--items 100000 1000000 10000000] [--dim 64] [--json out.json]

--cache-startup measures instead what the index cache saves at a service's start, side by side per catalogue size:
the index built with no cache (a start before the cache existed), a first start with the cache (build + hashing
the vectors for the key + writing it), and a later start reading it (hashing + reading + checking its sha256);
the read index must answer every query exactly as the built one.

    .venv/bin/python tools/bench/ann.py --cache-startup --items 1000000 --json docs/results/ann_cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np
import torch

from provenance import provenance

from mmm4rec.serving.ann import AnnIndex, retrieve
from mmm4rec.serving.recommender import top_k


def synthetic(num: int, dim: int, clusters: int, queries: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    vectors = np.empty((num, dim), np.float32)
    step = 1 << 20
    for start in range(0, num, step):  # in slices: no second full-size temporary at 10^7
        n = min(step, num - start)
        part = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32)
        part *= np.exp(0.3 * rng.standard_normal((n, 1))).astype(np.float32) / np.sqrt(dim)
        vectors[start:start + n] = part
    users = centers[rng.integers(0, clusters, queries)] + spread * rng.standard_normal((queries, dim), dtype=np.float32)
    return vectors, users.astype(np.float32)


def exact(vectors: torch.Tensor, users: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    return top_k(users @ vectors.t(), k)


def per_second(fn, users: torch.Tensor, batch: int, budget_s: float) -> float:
    """Queries/s over batches of ``batch`` users, as many batches as fit in ``budget_s`` (at least one)."""
    fn(users[:batch])  # warm-up
    done, start = 0, time.perf_counter()
    for lo in range(0, len(users), batch):
        fn(users[lo:lo + batch])
        done += len(users[lo:lo + batch])
        if time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=64, help="candidate vector size (model.d_model of the presets: 64)")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.5, help="within-cluster std (cluster centres: std 1)")
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16],
                   help="queries per call (16: the exact path's score matrix at 10^7 items is 640 MB)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, nargs="*", default=[], help="also measure these nprobe values")
    p.add_argument("--budget-s", type=float, default=8.0, help="timing budget per (path, batch)")
    p.add_argument("--cache-startup", action="store_true", help="measure the index cache's start-up (see above)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.cache_startup:
        return cache_startup(args)
    rows = []
    print(f"torch threads {torch.get_num_threads()}")
    for num in args.items:
        vectors, users = synthetic(num, args.dim, args.clusters, args.queries, args.spread)
        vt, ut = torch.from_numpy(vectors), torch.from_numpy(users)
        truth = [row for lo in range(0, len(ut), 16) for row in exact(vt, ut[lo:lo + 16], args.k)]
        index = AnnIndex(vectors)
        import faiss

        memory = len(faiss.serialize_index(index.index))
        settings = [index.nprobe] + [n for n in args.nprobe if n != index.nprobe]
        for nprobe in settings:
            index.index.nprobe = nprobe
            seen = [np.zeros(0, np.int64)] * len(users)
            got = retrieve(index, vt, ut, args.k, seen)
            recall = float(np.mean([len({c for c, _ in g} & {c for c, _ in t}) / len(t)
                                    for g, t in zip(got, truth) if g is not None]))
            fallbacks = sum(g is None for g in got)
            row = {"items": num, "dim": args.dim, "index": index.factory, "nprobe": nprobe,
                   "default_nprobe": nprobe == settings[0], f"recall@{args.k}": round(recall, 4),
                   "exact_fallbacks": fallbacks, "build_s": round(index.build_seconds, 1),
                   "index_mb": round(memory / 2**20, 1), "candidates_mb": round(vectors.nbytes / 2**20, 1)}
            for batch in args.batch:
                base = per_second(lambda u: exact(vt, u, args.k), ut, batch, args.budget_s)
                ann = per_second(lambda u: retrieve(index, vt, u, args.k, [seen[0]] * len(u)), ut, batch,
                                 args.budget_s)
                row[f"batch{batch}"] = {"exact_qps": round(base, 1), "ann_qps": round(ann, 1),
                                        "speedup": round(ann / base, 1)}
            row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            print(json.dumps(row), flush=True)
            rows.append(row)
        index = vectors = vt = None  # free before the next size
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(), "load_average_at_end": os.getloadavg(), "k": args.k, "clusters": args.clusters, "spread": args.spread, "queries": args.queries,
                       "torch_threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
            f.write("\n")


def cache_startup(args) -> None:
    rows = []
    for num in args.items:
        vectors, users = synthetic(num, args.dim, args.clusters, args.queries, args.spread)
        with tempfile.TemporaryDirectory(prefix="ann-cache-bench-") as tmp:
            cache = os.path.join(tmp, "ann-cache")
            timed = {}
            for name, where in (("no_cache", None), ("first_start", cache), ("cached_start", cache)):
                start = time.perf_counter()
                index = AnnIndex(vectors, cache=where)
                timed[name] = (time.perf_counter() - start, index)
            assert not timed["first_start"][1].loaded_from_cache and timed["cached_start"][1].loaded_from_cache
            same = np.array_equal(timed["no_cache"][1].search(users, args.k), timed["cached_start"][1].search(users, args.k))
            cache_mb = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 2**20
        row = {"items": num, "dim": args.dim, "index": timed["no_cache"][1].factory,
               **{f"{name}_s": round(seconds, 2) for name, (seconds, _) in timed.items()},
               "speedup_cached_vs_no_cache": round(timed["no_cache"][0] / timed["cached_start"][0], 1),
               "cache_mb": round(cache_mb, 1), "same_search_results": bool(same),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        vectors = timed = None
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(), "load_average_at_end": os.getloadavg(),
                       "note": "index only: the export's own loading is the same with or without the cache",
                       "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
