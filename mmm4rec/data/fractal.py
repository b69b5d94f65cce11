"""A large dataset from a real one by fractal expansion (Belletti et al. 2019, "Scalable Realistic Recommendation
Datasets through Fractal Expansions", arXiv:1901.08910): MovieLens-1M (10^6 events) -> 10^7 … 10^9 events whose
item-popularity and user-activity distributions are those of ML-1M, scaled.

The method. Let R be the real user x item interaction matrix (m x n, binary: every event is an implicit
interaction) and M a small "reduced" matrix (A x B, entries in [0, 1]). The expansion is a randomised Kronecker
product of R and M: expanded user (u, a) may interact with expanded item (i, b) only where R[u, i] = 1, and does
so with a probability P[a, b] proportional to M[a, b]. In expectation the expanded matrix is exactly the Kronecker
product R (x) P, so each expanded user's activity is its real user's activity times a row sum of P, each expanded
item's popularity is its real item's popularity times a column sum of P, and its singular values are the
products of those of R and P: the heavy tails of ML-1M carry over, at a larger scale (the paper's argument).

M is the paper's Algorithm 2, a spectral summary of R itself: the top k = min(A, B) singular triplets of R,
their singular vectors shrunk to A rows (B columns) by averaging over groups of real users (items), made
orthonormal again (the closest column-orthogonal matrix), recombined with R's singular values, and rescaled to
[0, 1] (min-max). The reference scripts shrink the vectors by image resizing, in id order; here the groups come
from a seeded permutation, so the grouping is random by construction rather than by the accident of id order.

Departures from the paper (and from the ML-1B / generative-recommenders ML-3B scripts), for sequence data with
item text:

- No row and column shuffles per block. The reference scripts (generative-recommenders' run_fractal_expansion.py)
  permute R's rows and columns independently in every block (a, b); an expanded user's history is then the union
  of several real users' histories (a different one per item block), and an expanded item the union of several
  real movies. A sequential model learns from one person's timeline, and an item's text must describe one movie,
  so here (u, a) is always real user u and (i, b) always real movie i.
- At most one variant per real event. Without the shuffles, independent draws per block (as there) would let
  copy (u, a) watch "Toy Story" in several variants at the same instant, a pattern no real log has and a
  next-item model would learn to exploit. Here each copy keeps each of u's events with probability keep[a]
  (proportional to M's row sum, capped at 1) and gives a kept event ONE variant b, drawn with probability
  M[a, b] / (row sum). The rate of block (a, b) is P[a, b] = keep[a] * M[a, b] / (row sum), which is c * M[a, b]
  for one constant c in every row below the cap: the expectations above hold as stated; only the
  correlation between the variants of one event changes (they exclude each other instead of being independent).
- Scale. The expected event count is (real events) x sum_a keep[a]; the keep rates are scaled (one factor,
  found by bisection, each capped at 1) so that it equals the requested ``--events``: the result lands within
  binomial noise (~sqrt(N)) of the target. A copy keeps on average ``keep`` (default 0.8) of a real user's
  events, so A = ceil(N / (E * keep)) user copies; the item factor B defaults to ceil(sqrt(N / E)), which makes
  items grow more slowly than events (per-item popularity rises by ~sqrt(N / E), as in real catalogues that grow);
  at least 2, see ``plan``.

Keys, texts and times:

- Expanded user (u, a) is ``<u>~<a>`` ("1m_1~17"); expanded item (i, b) is ``<i>~<b>`` ("Toy Story (1995)~3").
- Item texts are DERIVED, not new content: variant b of a movie has the movie's year and genres and the title
  "<title> (variant b)"; variant 0 keeps the plain title. A text model sees near-identical texts for the variants
  of one movie, as the expansion intends (they are the same movie, re-sampled).
- Timestamps are the real event's time plus an offset per user copy of a whole number of weeks (0 … 51, seeded).
  A copy therefore keeps its real user's order and gaps exactly; whole weeks keep each event's weekday and hour
  (the daily and weekly rhythm of the log), and the copies of one user are spread over a year instead of all
  acting at the same instants.

Output (the table converter's input, tools/prepare_tables.py): ``events.parquet`` (or ``.csv``) with ``user``
(string), ``item`` (string), ``timestamp`` (int64 Unix seconds), ordered by copy, real user and time;
``items.parquet`` (or ``.csv``) with ``item``, ``title``, ``year``, ``genres`` (``|``-separated), only items with
events; and ``fractal.json``: seed, factors, the reduced matrix, counts, and the item-popularity and sequence-length
distributions of the input and of the expansion side by side.

Determinism and memory. Every user copy draws from its own stream, ``SeedSequence(seed, spawn_key=(1, a))``, so a
copy's events depend on (seed, a) only, and the files are the same bytes for the same seed and input. Copies are
generated and written one at a time (one Parquet row group each): memory is the real data plus one copy (~10^6
events for ML-1M) whatever the target.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np

from .schema import DataError

log = logging.getLogger(__name__)

Format = Literal["parquet", "csv"]
WEEK = 7 * 86_400
OFFSET_WEEKS = 52  # a copy's time shift: 0 … 51 whole weeks
DEFAULT_KEEP = 0.8  # mean share of its real user's events that a copy keeps
POWER_ITERATIONS = 4  # randomised SVD: plenty for the well-separated top of a rating matrix's spectrum
OVERSAMPLE = 10
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
_REDUCE_STREAM, _COPY_STREAM = 0, 1  # SeedSequence spawn keys: the reduced matrix, then one stream per user copy


# ------------------------------------------------------------------------------------------------------- the input
@dataclass
class Source:
    """The real interactions as index arrays, events ordered by (user, time, item); keys sorted."""

    users: np.ndarray  # user keys (str objects), sorted
    items: np.ndarray  # item keys, sorted
    user: np.ndarray  # int32 [E], index into users
    item: np.ndarray  # int32 [E], index into items
    time: np.ndarray  # int64 [E], Unix seconds
    meta: dict[str, tuple[str, str, list[str]]]  # item key -> (title, year, genres)
    name: str
    sha256: str

    @property
    def n_events(self) -> int:
        return len(self.user)


def _atomic_table(path: Path) -> Any:
    """A RecBole atomic file (tab-separated, ``field:type`` header, no quoting) as a pyarrow table of strings,
    columns renamed to the bare field names."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                              convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header}))
    except (OSError, ValueError) as e:  # ValueError: pyarrow.ArrowInvalid, UnicodeDecodeError
        raise DataError(f"{path}: cannot read: {e}") from None
    return table.rename_columns([c.split(":", 1)[0] for c in header])


def _require(table: Any, path: Path, *names: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: no field {missing[0]!r} (fields: {', '.join(table.column_names)})")


def _indexed(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, int32 index of each row): sorted keys make the indices independent of row order;
    only the distinct keys become Python strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = np.sort(np.asarray(pc.unique(column).to_pylist(), dtype=object))
    return keys, pc.index_in(column, value_set=pa.array(keys, pa.string())).to_numpy().astype(np.int32)


def _year(text: str) -> str:
    """RecBole types release_year as float: "1995.0" -> "1995"."""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def read_recbole(prefix: str | Path) -> Source:
    """``PREFIX.inter`` (user_id, item_id, timestamp) and ``PREFIX.item`` (item_id, movie_title, release_year,
    genre or class), as in RecBole's ML-1M and ML-100K. Field types in the header are ignored: RecBole's own files
    disagree with its documentation on them."""
    prefix = Path(prefix)
    inter_path, item_path = prefix.with_name(prefix.name + ".inter"), prefix.with_name(prefix.name + ".item")
    inter = _atomic_table(inter_path)
    _require(inter, inter_path, "user_id", "item_id", "timestamp")
    if inter.num_rows == 0:
        raise DataError(f"{inter_path}: no events")
    import pyarrow.compute as pc

    try:
        seconds = pc.cast(inter["timestamp"], "float64").to_numpy()
    except ValueError as e:
        raise DataError(f"{inter_path}: timestamp is not a number: {e}") from None
    if not np.all(np.isfinite(seconds) & (seconds == np.floor(seconds)) & (seconds >= 0)):
        raise DataError(f"{inter_path}: timestamps must be integer Unix seconds")
    users, user = _indexed(inter["user_id"])
    items, item = _indexed(inter["item_id"])
    time = seconds.astype(np.int64)
    order = np.lexsort((item, time, user))  # the converter's per-user order: time, then item

    catalogue = _atomic_table(item_path)
    genre = "genre" if "genre" in catalogue.column_names else "class"  # ML-1M: genre, ML-100K: class
    _require(catalogue, item_path, "item_id", "movie_title", "release_year", genre)
    meta = {key: (title.strip(), _year(year.strip()), genres.split())
            for key, title, year, genres in zip(*(catalogue[c].to_pylist()
                                                  for c in ("item_id", "movie_title", "release_year", genre)))}
    return Source(users, items, user[order], item[order], time[order], meta, prefix.name, _sha256(inter_path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------- the reduced matrix
def _matmul(rows: np.ndarray, cols: np.ndarray, n_rows: int, x: np.ndarray) -> np.ndarray:
    """R @ x for the binary sparse R with ones at (rows, cols), one bincount per column of x: O(nnz) memory,
    no dense R (ML-20M's would be 15 GB) and no scipy."""
    return np.stack([np.bincount(rows, weights=x[cols, j], minlength=n_rows) for j in range(x.shape[1])], axis=1)


def top_singular(src: Source, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top k singular triplets (U [m, k], s [k], Vt [k, n]) of the binary interaction matrix, by randomised
    subspace iteration (Halko, Martinsson and Tropp 2011)."""
    m, n = len(src.users), len(src.items)
    p = min(k + OVERSAMPLE, m, n)
    q = np.linalg.qr(_matmul(src.user, src.item, m, rng.standard_normal((n, p))))[0]
    for _ in range(POWER_ITERATIONS):
        q = np.linalg.qr(_matmul(src.item, src.user, n, q))[0]
        q = np.linalg.qr(_matmul(src.user, src.item, m, q))[0]
    ub, s, vt = np.linalg.svd(_matmul(src.item, src.user, n, q).T, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vt[:k]


def _group_means(vectors: np.ndarray, parts: int, rng: np.random.Generator) -> np.ndarray:
    """[size, k] -> [parts, k]: means over a random partition of the rows into ``parts`` groups of equal size (the
    paper's resize, anti-aliased). With fewer rows than parts, rows are reused through further permutations."""
    size = len(vectors)
    order = np.concatenate([rng.permutation(size) for _ in range(-(-parts // size))])
    return np.stack([vectors[group].mean(axis=0) for group in np.array_split(order, parts)])


def _closest_orthonormal(x: np.ndarray) -> np.ndarray:
    """The column-orthonormal matrix nearest to x (its polar factor); the paper's X (X^T X)^-1/2, but defined
    also when x is rank-deficient."""
    w, _, zt = np.linalg.svd(x, full_matrices=False)
    return w @ zt


def reduced_matrix(src: Source, rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The paper's Algorithm 2: (M [rows, cols] in [0, 1], the singular values it carries)."""
    k = min(rows, cols, len(src.users), len(src.items))
    u, s, vt = top_singular(src, k, rng)
    u_small = _closest_orthonormal(_group_means(u, rows, rng))
    v_small = _closest_orthonormal(_group_means(vt.T, cols, rng))
    m = u_small @ np.diag(s) @ v_small.T
    span = m.max() - m.min()
    m = (m - m.min()) / span if span > 0 else np.ones_like(m)
    # Rounding makes the draws below insensitive to the last bits of the linear algebra (BLAS builds, threads).
    return np.round(m, 6), s


@dataclass
class Plan:
    """What the expansion draws from: per user copy a, the keep rate and the variant distribution."""

    user_copies: int  # A
    item_variants: int  # B
    matrix: np.ndarray  # M [A, B]
    singular_values: np.ndarray
    keep: np.ndarray  # [A]: probability that copy a keeps one of its real user's events
    variant_cdf: np.ndarray  # [A, B]: cumulative P(variant b | copy a, event kept)
    expected_events: float


def _keep_rates(row_sums: np.ndarray, ratio: float) -> np.ndarray:
    """min(1, c * row_sums) with c such that they sum to ``ratio`` (bisection: the sum is monotone in c)."""
    positive = row_sums[row_sums > 0]
    if len(positive) < ratio:
        raise DataError(f"{len(positive)} user copies cannot reach {ratio:.3g}x the real events (each copy holds "
                        "at most all of its user's events): raise the user factor")
    low, high = 0.0, 1.0 / positive.min()
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if np.minimum(1.0, mid * row_sums).sum() < ratio else (low, mid)
    return np.minimum(1.0, high * row_sums)


def plan(src: Source, events: int, seed: int, user_factor: Optional[int] = None, item_factor: Optional[int] = None,
         keep: float = DEFAULT_KEEP) -> Plan:
    """Factors for about ``events`` events: A = ceil(ratio / keep) user copies and B = ceil(sqrt(ratio)) variants
    (at least 2) unless given, ratio = events / real events. With B = 1 the min-max rescaling would send one
    whole row of M, a whole user copy, to 0."""
    if events <= 0 or not 0 < keep <= 1:
        raise DataError(f"need events > 0 and 0 < keep <= 1 (got {events}, {keep})")
    ratio = events / src.n_events
    rows = user_factor or max(1, math.ceil(ratio / keep - 1e-9))
    cols = item_factor or max(2, math.ceil(math.sqrt(ratio) - 1e-9))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_REDUCE_STREAM,)))
    m, s = reduced_matrix(src, rows, cols, rng)
    row_sums = m.sum(axis=1)
    rates = _keep_rates(row_sums, ratio)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.cumsum(m, axis=1) / row_sums[:, None]
    cdf = np.nan_to_num(cdf, nan=1.0)
    cdf[:, -1] = 1.0  # no rounding gap at the top: every uniform draw in [0, 1) finds a variant
    return Plan(rows, cols, m, s, rates, cdf, float(rates.sum() * src.n_events))


# ------------------------------------------------------------------------------------------------- the expansion
@dataclass
class Copy:
    """The events of user copy a: user index (into the real users), expanded item index i * B + b, time."""

    index: int
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray


def expand_copy(src: Source, p: Plan, seed: int, a: int) -> Copy:
    """User copy a: its own random stream, so the result depends on (seed, a) alone and copies can be made in any
    order (or in parallel) with the same bytes out."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_COPY_STREAM, a)))
    shift = rng.integers(0, OFFSET_WEEKS, len(src.users)) * WEEK
    kept = np.flatnonzero(rng.random(src.n_events) < p.keep[a])
    variant = np.searchsorted(p.variant_cdf[a], rng.random(len(kept)), side="right")
    np.minimum(variant, p.item_variants - 1, out=variant)
    user = src.user[kept]
    # src is ordered by (user, time, item) and a copy shifts all of a user's events alike: the order holds.
    return Copy(a, user, src.item[kept].astype(np.int64) * p.item_variants + variant, src.time[kept] + shift[user])


def expand(src: Source, p: Plan, seed: int) -> Iterator[Copy]:
    for a in range(p.user_copies):
        yield expand_copy(src, p, seed, a)


def item_keys(src: Source, variants: int) -> np.ndarray:
    """Expanded item keys in index order i * B + b."""
    return np.asarray([f"{key}~{b}" for key in src.items for b in range(variants)], dtype=object)


def item_rows(src: Source, variants: int, present: np.ndarray) -> dict[str, list[str]]:
    """The items table: expanded items ``present`` (sorted indices i * B + b) with their derived texts. A movie
    missing from the item file keeps its key as title (ML-1M's keys are "Title (year)")."""
    rows: dict[str, list[str]] = {"item": [], "title": [], "year": [], "genres": []}
    for j in present.tolist():
        key = src.items[j // variants]
        b = j % variants
        title, year, genres = src.meta.get(key, (key, "", []))
        rows["item"].append(f"{key}~{b}")
        rows["title"].append(title if b == 0 else f"{title} (variant {b})")
        rows["year"].append(year)
        rows["genres"].append("|".join(genres))
    return rows


# ------------------------------------------------------------------------------------------------------- writing
class _TableWriter:
    """Parquet (one row group per write) or CSV, into ``<path>.partial`` renamed on close: an interrupted run
    leaves no file that looks finished."""

    def __init__(self, path: Path, schema: Any, fmt: Format):
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        self.path, self.partial = path, path.with_name(path.name + ".partial")
        if fmt == "parquet":
            # zstd: about half snappy's size on these columns, at a small cost next to generating them
            self.writer = pq.ParquetWriter(self.partial, schema, compression="zstd")
        else:
            self.writer = pcsv.CSVWriter(self.partial, schema)

    def write(self, table: Any) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
        os.replace(self.partial, self.path)


def _events_table(copy: Copy, users: Any, items: Any) -> Any:
    """Keys by taking from per-copy / global key arrays: C++ gathers instead of 10^8 Python strings."""
    import pyarrow as pa

    return pa.table({"user": users.take(pa.array(copy.user)), "item": items.take(pa.array(copy.item)),
                     "timestamp": pa.array(copy.time, pa.int64())})


# ------------------------------------------------------------------------------------------------- distributions
def _gini(counts: np.ndarray) -> float:
    x = np.sort(counts.astype(np.float64))
    n = len(x)
    return float(2 * np.dot(np.arange(1, n + 1), x) / (n * x.sum()) - (n + 1) / n) if n and x.sum() else 0.0


def _top_share(counts: np.ndarray, fraction: float) -> float:
    x = np.sort(counts)[::-1]
    return float(x[:max(1, round(fraction * len(x)))].sum() / x.sum())


def _quantiles(counts: np.ndarray) -> dict[str, float]:
    return {f"p{round(q * 100)}": round(float(v), 2) for q, v in zip(QUANTILES, np.quantile(counts, QUANTILES))}


def distribution(per_item: np.ndarray, per_user: np.ndarray) -> dict[str, Any]:
    """Item popularity (events per item) and sequence length (events per user), over those with events."""
    items, users = per_item[per_item > 0], per_user[per_user > 0]
    return {
        "events": int(items.sum()), "items": len(items), "users": len(users),
        "item_popularity": {"mean": round(float(items.mean()), 2), **_quantiles(items),
                            "gini": round(_gini(items), 4), "top1pct_share": round(_top_share(items, 0.01), 4),
                            "top10pct_share": round(_top_share(items, 0.10), 4)},
        "sequence_length": {"mean": round(float(users.mean()), 2), **_quantiles(users),
                            "gini": round(_gini(users), 4)},
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (Spearman's convention)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    first = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((first + last) / 2, last - first + 1)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(np.asarray(x)), _ranks(np.asarray(y))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def agreement(real_item: np.ndarray, real_user: np.ndarray, per_item: np.ndarray, per_copy: np.ndarray,
              variants: int) -> dict[str, float]:
    """How closely the expansion follows the real ranking: Spearman correlations between a real item's popularity
    and its variants' (each variant alone, averaged over variants; and summed over variants), and between a real
    user's sequence length and its copies' (each copy alone, averaged over copies)."""
    by_variant = per_item.reshape(-1, variants)
    return {
        "item_popularity_per_variant": round(float(np.mean([spearman(real_item, by_variant[:, b])
                                                            for b in range(variants)])), 4),
        "item_popularity_summed": round(spearman(real_item, by_variant.sum(axis=1)), 4),
        "sequence_length_per_copy": round(float(np.mean([spearman(real_user, row) for row in per_copy])), 4),
    }


# ------------------------------------------------------------------------------------------------------ the tool
def generate(prefix: str | Path, out_dir: str | Path, events: int, seed: int = 0, fmt: Format = "parquet",
             user_factor: Optional[int] = None, item_factor: Optional[int] = None,
             keep: float = DEFAULT_KEEP) -> dict[str, Any]:
    """Expand the RecBole files ``prefix``.inter/.item to about ``events`` events in ``out_dir``: events, items and
    fractal.json (returned)."""
    import pyarrow as pa

    if fmt not in ("parquet", "csv"):
        raise DataError(f"format {fmt!r}: expected parquet or csv")
    src = read_recbole(prefix)
    p = plan(src, events, seed, user_factor, item_factor, keep)
    log.info("%s: %d events, %d users, %d items -> %d user copies x %d item variants, %.4g events expected",
             src.name, src.n_events, len(src.users), len(src.items), p.user_copies, p.item_variants,
             p.expected_events)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    keys = pa.array(item_keys(src, p.item_variants), pa.string())
    per_item = np.zeros(len(keys), np.int64)
    per_copy = np.zeros((p.user_copies, len(src.users)), np.int64)
    schema = pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64())])
    writer = _TableWriter(out / f"events.{fmt}", schema, fmt)
    step = max(1, p.user_copies // 10)
    for copy in expand(src, p, seed):
        users = pa.array([f"{u}~{copy.index}" for u in src.users], pa.string())
        writer.write(_events_table(copy, users, keys))
        per_item += np.bincount(copy.item, minlength=len(keys))
        per_copy[copy.index] = np.bincount(copy.user, minlength=len(src.users))
        if (copy.index + 1) % step == 0 or copy.index + 1 == p.user_copies:
            log.info("copy %d/%d: %d events so far", copy.index + 1, p.user_copies, per_item.sum())
    writer.close()

    items = _TableWriter(out / f"items.{fmt}", pa.schema([(c, pa.string()) for c in ("item", "title", "year",
                                                                                      "genres")]), fmt)
    items.write(pa.table(item_rows(src, p.item_variants, np.flatnonzero(per_item))))
    items.close()

    real_item = np.bincount(src.item, minlength=len(src.items))
    real_user = np.bincount(src.user, minlength=len(src.users))
    report = {
        "method": "fractal expansion (Belletti et al. 2019, arXiv:1901.08910): randomised Kronecker product of the "
                  "real interactions with a reduced matrix (Algorithm 2), one variant per kept event, no shuffles "
                  "(mmm4rec.data.fractal)",
        "seed": seed,
        "input": {"name": src.name, "inter_sha256": src.sha256, "events": src.n_events, "users": len(src.users),
                  "items": len(src.items), "items_without_metadata": int(sum(k not in src.meta for k in src.items))},
        "target_events": events,
        "factors": {"user_copies": p.user_copies, "item_variants": p.item_variants, "keep": keep,
                    "keep_rate": {"mean": round(float(p.keep.mean()), 4), **_quantiles(p.keep)},
                    "variant_weight": [round(float(w), 4) for w in (p.keep @ (np.diff(p.variant_cdf, axis=1,
                                                                                      prepend=0.0)))]},
        "reduced_matrix": {"singular_values": [round(float(v), 3) for v in p.singular_values],
                           "values": p.matrix.tolist()},
        "timestamps": f"real time + a whole number of weeks (0-{OFFSET_WEEKS - 1}) per user copy",
        "counts": {"events": int(per_item.sum()), "expected_events": round(p.expected_events, 1),
                   "users": int((per_copy > 0).sum()), "items": int((per_item > 0).sum())},
        "files": {"events": f"events.{fmt}", "items": f"items.{fmt}"},
        "distributions": {src.name: distribution(real_item, real_user),
                          "expanded": distribution(per_item, per_copy.ravel())},
        "rank_agreement": agreement(real_item, real_user, per_item, per_copy, p.item_variants),
    }
    (out / "fractal.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
