"""Approximate top-k retrieval over an export's candidate vectors (FAISS), for catalogues too large to score whole.

The Recommender ranks by ``user_vector @ candidates[1:].T`` (maximum inner product). The index is FAISS's
inverted file with 8-bit scalar-quantised vectors (``IVF<nlist>,SQ8``, inner-product metric): a query visits the
``nprobe`` lists whose centroids score highest and returns the best ``n`` of their items by the quantised score.
The caller over-fetches and re-scores those items with the exact fp32 vectors (``Recommender``), so returned
scores are the exact ones and only the *choice* of candidates is approximate; an item is missed only when it lies
in none of the probed lists. nlist and nprobe were chosen by tools/bench/ann.py (docs/results/ann.json): recall@10
against exact ranking, queries/s, build time and memory at 10^5, 10^6 and 10^7 items.

The index is built from the candidate vectors (the candidates are checked against the export's hashes on load,
so the index is of exactly the served catalogue) and, given a cache folder (``cache=``; the Recommender's default
is ``<export>/ann-cache/``), kept there: ``index.faiss`` (faiss.serialize_index's bytes: data, read with
faiss.deserialize_index, never code) and ``index.json``, which names the key it was built for — the sha256 of the
vectors' bytes, the index parameters (factory string, k-means seed, iterations and sample size) and the FAISS
version — and the sha256 of index.faiss. A later start with the same key reads the index instead of building it
(docs/results/ann_cache.json: start-up with and without it); another key (other vectors, parameters or FAISS)
or a damaged file is one warning line and a rebuild that replaces the cache, never an index used silently. The
cache folder is created with the project's marker; a folder that exists without the marker and is not empty is
refused (mmm4rec.data.atomic: never write into a folder the project did not create).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

# Below this many items exact ranking answers a single history within a few milliseconds on 2 cores, with no
# build time and no recall loss; from 10^5 on it takes tens of milliseconds per request while the index builds in
# seconds (tools/bench/ann.py: the 10^4 … 10^5 rows of docs/results/ann.json).
ANN_MIN_ITEMS = 100_000
TRAIN_PER_LIST = 32  # k-means training points per list, a sample of the catalogue (the build's cost)
HNSW_ITEMS = 2_000_000
MAX_NLIST = 8192  # 16384 lists at 10^7 items: k-means on 2 cores takes too long for the recall it adds
NITER = 10  # k-means iterations (FAISS: 25); docs/results/ann.json's recall is with 10
CACHE_INDEX, CACHE_META, CACHE_FORMAT = "index.faiss", "index.json", "mmm4rec-ann-cache/1"


def available() -> bool:
    """Whether FAISS is installed (the [serve] extra); without it every catalogue is ranked exactly."""
    return importlib.util.find_spec("faiss") is not None


def default_nlist(num_items: int) -> int:
    """About 4·sqrt(I) lists (a power of two, at most MAX_NLIST), and at least 8 items per list."""
    want = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(num_items))))
    return int(max(1, min(want, MAX_NLIST, num_items // 8)))


def default_nprobe(nlist: int, num_items: int) -> int:
    """Lists visited per query: 1/32 of them, at least 8 and enough to visit ~2048 items (small catalogues have
    few items per list) — the setting of docs/results/ann.json."""
    return int(min(nlist, max(8, nlist // 32, math.ceil(nlist * 2048 / max(1, num_items)))))


class AnnIndex:
    """FAISS IVF-SQ8 over ``vectors`` [I, d] (row j = catalogue column j, i.e. item j+1). ``search`` returns column
    numbers; -1 where fewer than ``n`` items were found in the probed lists."""

    def __init__(self, vectors: np.ndarray, nlist: int | None = None, nprobe: int | None = None, seed: int = 0,
                 cache: str | os.PathLike | None = None):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        num, dim = vectors.shape
        self.nlist = nlist or default_nlist(num)
        self.nprobe = nprobe or default_nprobe(self.nlist, num)
        # Above HNSW_ITEMS, assigning every item to its list by scanning all centroids dominates the build: an
        # HNSW graph over the centroids does it in ~log(nlist) steps (and picks the lists a query probes).
        self.factory = f"IVF{self.nlist}{'_HNSW32' if num > HNSW_ITEMS else ''},SQ8"
        self.params = {"factory": self.factory, "metric": "inner_product", "seed": seed, "niter": NITER,
                       "train_per_list": TRAIN_PER_LIST, "items": num, "dim": dim, "faiss": faiss.__version__}
        self.cache = None if cache is None else Path(cache)
        self.loaded_from_cache = False
        started = time.perf_counter()
        self.key = _key(vectors, self.params) if self.cache is not None else None
        self.index = self._read_cache() if self.cache is not None else None
        if self.index is None:
            self._build(vectors, seed)
            self.build_seconds = time.perf_counter() - started
            if self.cache is not None:
                self._write_cache()
        else:
            self.loaded_from_cache = True
            self.build_seconds = time.perf_counter() - started
        self.index.nprobe = self.nprobe
        log.info("ANN index: %d items, %s, nprobe %d, %s in %.1f s", num, self.factory, self.nprobe,
                 f"read from {self.cache}" if self.loaded_from_cache else "built", self.build_seconds)

    def _build(self, vectors: np.ndarray, seed: int) -> None:
        import faiss

        num, dim = vectors.shape
        self.index = faiss.index_factory(dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if num > self.nlist * TRAIN_PER_LIST:  # k-means needs a sample, not the whole catalogue
            rows = np.random.default_rng(seed).choice(num, self.nlist * TRAIN_PER_LIST, replace=False)
            sample = vectors[np.sort(rows)]
        self.index.cp.seed = seed
        self.index.cp.min_points_per_centroid = 1  # small catalogues (tests): no warning spam
        self.index.cp.niter = NITER
        self.index.train(sample)
        self.index.add(vectors)

    def _read_cache(self):
        """The cached index when its key is this one and its bytes are whole; else None (with a warning when a
        cache was there but unusable)."""
        import faiss

        meta_file, index_file = self.cache / CACHE_META, self.cache / CACHE_INDEX
        if not meta_file.exists() and not index_file.exists():
            return None
        try:
            for file in (meta_file, index_file):  # a FIFO would block the start for ever; a folder, a device …
                if not file.is_file():
                    raise ValueError(f"{file.name} is " + ("missing" if not os.path.lexists(file) else
                                                          "not a regular file"))
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != self.key:
                changed = [name for name, value in self.params.items() if (meta.get("params") or {}).get(name) != value]
                log.warning("ANN cache %s was built for other %s; rebuilding it", self.cache,
                            "parameters (" + ", ".join(changed) + ")" if changed else "candidate vectors")
                return None
            data = index_file.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta.get("index_sha256"):
                raise ValueError(f"{CACHE_INDEX} does not match the sha256 in {CACHE_META}")
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
            if index.ntotal != self.params["items"] or index.d != self.params["dim"]:
                raise ValueError(f"it holds {index.ntotal} vectors of {index.d}")
            return index
        except (OSError, ValueError, RuntimeError, AttributeError) as e:  # faiss raises RuntimeError
            log.warning("ANN cache %s is unreadable (%s); rebuilding it", self.cache, " ".join(str(e).split())[:200])
            return None

    def _write_cache(self) -> None:
        import faiss

        from ..data.atomic import MARKER, MARKER_TEXT, check_replaceable, write_atomic

        try:
            check_replaceable(self.cache)
            foreign = _not_cache_files(self.cache)
            if foreign:  # the marker alone lets the export, a dataset or a run through: not their files' place
                raise ValueError(f"{self.cache}: not an ANN cache (it holds {foreign[0]!r}{' …' * (len(foreign) > 1)}"
                                 "); give --ann-cache a folder of its own")
            self.cache.mkdir(parents=True, exist_ok=True)
            if not (self.cache / MARKER).exists():
                write_atomic(self.cache / MARKER, MARKER_TEXT)
            data = faiss.serialize_index(self.index).tobytes()
            # index.json last: a crash between the two leaves a key whose sha256 index.faiss does not match
            write_atomic(self.cache / CACHE_INDEX, data, sync=True)
            write_atomic(self.cache / CACHE_META, json.dumps(
                {"format": CACHE_FORMAT, "key": self.key, "params": self.params,
                 "index_sha256": hashlib.sha256(data).hexdigest(), "build_seconds": round(self.build_seconds, 2),
                 "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n", sync=True)
        except (OSError, ValueError) as e:  # DataError (not our folder) is a ValueError; a read-only export
            log.warning("ANN index not cached in %s (%s); it is built again at the next start", self.cache,
                        " ".join(str(e).split())[:200])

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (new items) to the lists of their nearest centroids: no retraining."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """int64 [b, n]: per query the columns of the ``n`` best items by quantised score (-1: not found)."""
        _, cols = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(n))
        return cols


def _not_cache_files(folder: Path) -> list[str]:
    """The names in ``folder`` that no cache write leaves there (the marker, the two files, their temp files)."""
    from ..data.atomic import MARKER

    if not folder.is_dir():
        return []
    own = {MARKER, CACHE_INDEX, CACHE_META}
    return sorted(name for name in os.listdir(folder)
                  if name not in own and not any(name.startswith(f".{o}.tmp-") for o in own))


def _key(vectors: np.ndarray, params: dict) -> str:
    """What an index is of: the vectors' bytes and the parameters that decide its content."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **params}, sort_keys=True).encode())
    h.update(memoryview(vectors).cast("B"))
    return h.hexdigest()


def overfetch(k: int, seen: int) -> int:
    """Items asked of the index per query: the k wanted, the seen items that may be among them, and as many again
    for the quantisation error of the index's scores (the exact re-scoring picks the best k of them)."""
    return 2 * k + seen + 8


def retrieve(index: AnnIndex, vectors: torch.Tensor, users: torch.Tensor, k: int,
             seen: Sequence[np.ndarray]) -> list[Optional[list[tuple[int, float]]]]:
    """Per user, up to ``k`` (column, exact score) pairs, best first (equal scores in column order), the columns of
    ``seen`` (per user, possibly empty) excluded: the index's candidates re-scored with the exact ``vectors``
    [I, d] (column j = row j). None where the probed lists held fewer than the k (or all the unseen) items
    wanted: the caller ranks that user exactly, so ``k`` semantics never depend on the index."""
    num = vectors.shape[0]
    cols = index.search(users.detach().float().cpu().numpy(), min(num, overfetch(k, max(map(len, seen), default=0))))
    out: list[Optional[list[tuple[int, float]]]] = []
    for user, found, skip in zip(users, cols, seen):
        found = found[found >= 0]
        if len(skip):
            found = found[~np.isin(found, skip)]
        want = min(k, num - len(np.unique(skip)))
        if len(found) < want:
            out.append(None)
            continue
        picked = torch.from_numpy(found).to(vectors.device)
        scores = (vectors[picked] @ user).cpu().numpy()
        order = np.lexsort((found, -scores))[:k]
        out.append(list(zip(found[order].tolist(), scores[order].tolist())))
    return out
