"""The serving API: user histories in, ranked item keys out, on a self-contained export.

    from mmm4rec import Recommender
    rec = Recommender.from_pretrained("runs/ml100k/export")
    rec.recommend([[("ml-100k:50", 881250949), ("ml-100k:172", 881251130)]], k=10)
    # -> [[("ml-100k:181", 7.91), ...]]  per history, best first

A history is a list of (item key, timestamp) pairs, oldest first. A timestamp is Unix seconds, or Unix
milliseconds with ``time_unit="ms"`` (the unit is stated, never guessed), or an ISO-8601 string ("2026-01-31T12:00:00Z";
no offset = UTC). Histories are batched internally; the model reads the last ``max_len`` items of each, and
``exclude_seen`` drops every item of the history from its ranking. An empty history (a new visitor) gets the
export's popularity ranking: the items most often a training target, scores = those counts (docs/serving.md).
Every argument is checked: a wrong type or value is a ConfigError / DataError of one line naming the argument (or
the history and entry), quoting at most a short prefix of the offending value.
Scores are the model's logits: user vector · candidate vector (already divided by the temperature). Equal scores
rank in catalogue order (lower item id first), so results never depend on how a sort orders ties.

With a dataset (``Recommender.from_pretrained(export, dataset=DIR)``) its users are known by key:
``rec.recommend(users=["shop:u1"])`` answers as that user's full history in the dataset would
(mmm4rec.serving.dataset: every history in flat numpy arrays), and ``rec.image(key)`` returns an item's image.

``add_items`` makes new (cold-start) items recommendable without retraining: their text (and images) go through
the export's own frozen encoder, and they are scored by content alone (no trained ID rows); they may appear in
histories too. ``save(folder)`` writes the grown catalogue as a new export (hashed like any other).

Above ``ann_min_items`` items (mmm4rec.serving.ann.ANN_MIN_ITEMS, chosen by tools/bench/ann.py) ``recommend`` and
``similar`` take their candidates from an approximate (FAISS) index and re-score them exactly; seen-item exclusion
and ``k`` mean the same as in the exact ranking, which answers whenever the index finds too few.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError, EncoderConfig, short_repr
from ..data.schema import MAX_TIMESTAMP, PAD_KEY, BadRecords, DataError
from ..data.shards import decode_image
from ..encoders import Encoders, build_encoders, encoder_identity
from ..model import Batch, ItemFeatures, build_model
from .ann import ANN_MIN_ITEMS, AnnIndex, retrieve
from .ann import available as ann_available
from .dataset import ItemImages, UserHistories
from .export import Export, load_export, resize_id_tables
from .options import ONE_OF, TIME_UNITS, UNKNOWN, UNKNOWN_USER

log = logging.getLogger(__name__)

History = Sequence[tuple[str, int]]
EMPTY = "empty"  # a parsed history with no items at all: the popularity fallback
ANN_CACHE = "ann-cache"  # the ANN index's cache folder inside an export


class _Known:
    """A known user's history (item ids, Unix seconds) taken from the dataset: already parsed."""

    __slots__ = ("ids", "stamps")

    def __init__(self, ids: np.ndarray, stamps: np.ndarray):
        self.ids, self.stamps = ids, stamps


class Recommender:
    """Recommendations from an export. ``unknown="skip"`` drops history items the catalogue does not hold
    (counted in ``skipped`` and logged); a history left empty then gets no recommendations and NaN scores."""

    def __init__(self, export: Export, device: str | torch.device = "cpu",
                 ann_min_items: Optional[int] = ANN_MIN_ITEMS, dataset: str | os.PathLike | None = None,
                 images: bool = True, ann_cache: str | os.PathLike | bool | None = True):
        self.path = export.path
        self.device = _device(device)
        self.encoder = export.encoder
        self.meta = export.meta
        self.digest = export.digest
        self.skipped = BadRecords()  # unknown history items skipped since loading, by reason
        if ann_min_items is not None:
            ann_min_items = positive_int("ann_min_items", ann_min_items)
        self.ann_min_items = ann_min_items  # None: always exact
        # where the ANN index is kept between starts (mmm4rec.serving.ann): True = <export>/ann-cache
        self.ann_cache = (export.path / ANN_CACHE if ann_cache is True else
                          None if ann_cache is None or ann_cache is False else
                          _folder("ann_cache", ann_cache, ", True or None"))
        _flag("images", images)
        if dataset is not None:
            dataset = _folder("dataset", dataset)
        self.popularity = export.popularity
        self.texts = export.texts
        self.store = export.store  # the loaded catalogue's store: save() keeps its rows' content hashes
        self.added = 0  # items added since loading
        self._ann: Optional[AnnIndex] = None
        self._install(export.model, export.features, export.keys, export.candidates)
        self.users: Optional[UserHistories] = None  # known users' histories (dataset=…)
        self.images: Optional[ItemImages] = None  # where the items' images lie (dataset=…)
        if dataset is not None:
            self.load_dataset(dataset, images)

    @classmethod
    def from_pretrained(cls, export_dir: str | os.PathLike, device: str | torch.device = "cpu",
                        transfer: bool = False, features: str | os.PathLike | None = None,
                        ann_min_items: Optional[int] = ANN_MIN_ITEMS, dataset: str | os.PathLike | None = None,
                        images: bool = True, ann_cache: str | os.PathLike | bool | None = True) -> "Recommender":
        """Load an export written by ``mmm4rec.serving.write_export`` (every file checked). ``features`` serves
        it on another feature store; another catalogue needs ``transfer=True`` (content-only scores).
        ``ann_min_items``: catalogues of at least this many items are served through the ANN index (None: never).
        ``dataset``: a local dataset folder whose users can then be recommended to by key (``users=``) and, with
        ``images``, whose items' images ``image`` returns (``load_dataset``). ``ann_cache``: the folder the ANN
        index is kept in between starts (True: ``<export>/ann-cache``; None: built at every start)."""
        return cls(load_export(export_dir, features=features, transfer=transfer), device, ann_min_items, dataset,
                   images, ann_cache)

    def load_dataset(self, dataset: str | os.PathLike, images: bool = True) -> None:
        """Read every user's history of ``dataset`` (mmm4rec.serving.dataset.UserHistories: numpy arrays) and,
        with ``images``, where its items' images lie. Its items the export does not hold are counted and reported
        once, and left out of the histories."""
        dataset = _folder("dataset", dataset)
        _flag("images", images)
        self.users = UserHistories.read(dataset, self.index)
        self.images = None
        if images:
            try:
                self.images = ItemImages.read(dataset, self.index, self.num_items)
            except DataError as e:  # a remote dataset: its users are still known, its images not served
                log.warning("item images not served: %s", e)

    def _install(self, model, features: ItemFeatures, keys: list[str], candidates: torch.Tensor) -> None:
        self.model = model.eval().to(self.device)
        self.features = features
        self.keys = keys
        self.index = {k: i for i, k in enumerate(keys) if i}
        self.candidates = candidates.to(self.device)
        self.__dict__.pop("_bare_keys", None)

    def text(self, key: str) -> Optional[str]:
        """The item's title (else its text) as the export stores it; None when the export stores no texts."""
        if not isinstance(key, str) or key not in self.index:
            raise DataError(self._unknown(key, "text"))
        return None if self.texts is None else self.texts[self.index[key]]

    def popular(self, k: int = 10) -> list[tuple[str, float]]:
        """The empty-history fallback: up to ``k`` (item key, training-target count) pairs, most frequent first,
        equal counts in catalogue order; items added since the export count 0."""
        k = positive_int("k", k)
        if self.popularity is None:
            raise DataError(f"{self.path}: this export stores no popularity (written before popularity.safetensors "
                            "existed, or without its dataset), so an empty history has no fallback; re-export it "
                            "from its run: `mmm4rec export --run RUN_DIR --out NEW_DIR`")
        counts = np.zeros(self.num_items, np.int64)
        counts[:len(self.popularity) - 1] = self.popularity[1:]
        order = np.lexsort((np.arange(self.num_items), -counts))[:k]
        return [(self.keys[c + 1], float(counts[c])) for c in order]

    @cached_property
    def _bare_keys(self) -> dict[str, list[str]]:
        """Item keys by their part after the domain prefix ("shop:P01389" -> "P01389"): the "did you mean" hint."""
        out: dict[str, list[str]] = {}
        for key in self.keys[1:]:
            out.setdefault(key.split(":", 1)[-1], []).append(key)
        return out

    def _unknown(self, key: Any, where: str = "", hint: str = "") -> str:
        """'unknown item key …' (in ``where``), with the key it probably meant when one differs only in its domain
        prefix, else the catalogue it is not in (and ``hint``)."""
        head = f"unknown item key {short_repr(key)}" + (f" in {where}" if where else "")
        if isinstance(key, str):
            similar = self._bare_keys.get(key.split(":", 1)[-1]) or []
            if similar:
                more = f" or {len(similar) - 1} more with that id" if len(similar) > 1 else ""
                return f"{head} (did you mean {similar[0]!r}{more}?)"
        return f"{head} (not among the {self.num_items} items of {self.path}{hint})"

    @property
    def num_items(self) -> int:
        return len(self.keys) - 1

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    # ------------------------------------------------------------------------------------------------- ranking
    def recommend(self, histories: Optional[Iterable[History]] = None, k: int = 10, exclude_seen: bool = True,
                  unknown: str = "error", batch_size: int = 256, labels: Optional[Sequence[str]] = None,
                  time_unit: str = "s", with_text: bool = False, users: Optional[Sequence[str]] = None,
                  unknown_user: str = "error") -> list[list[tuple]]:
        """Per history, up to ``k`` (item key, score) pairs, best first; padding is never returned; with
        ``with_text`` (item key, score, title) triples. An empty history gets ``popular(k)``.
        ``labels`` name the histories in error messages (default "history <i>").
        ``users`` (in place of ``histories``, needs ``dataset=``): user keys of the dataset, each answered as its
        full history would be. A key the dataset does not hold is an error naming it, or with
        ``unknown_user="popular"`` gets the popularity fallback, as a new visitor does."""
        k = positive_int("k", k)
        _flag("exclude_seen", exclude_seen)
        _flag("with_text", with_text)
        histories, labels = self._histories_or_users(histories, users, unknown_user, labels)
        results: list[list[tuple]] = []
        for parsed, users in self._user_vectors(histories, unknown, batch_size, labels, time_unit):
            real = [p[0] for p in parsed if isinstance(p, tuple)]
            ranked = iter(self._top(users, k, [ids - 1 if exclude_seen else ids[:0] for ids in real])
                          if users is not None else ())
            for history in parsed:
                if history is None:
                    results.append([])
                elif history is EMPTY:
                    results.append(self.popular(k))
                else:
                    results.append([(self.keys[col + 1], score) for col, score in next(ranked)])
        return self._with_text(results) if with_text else results

    def similar(self, item_keys: Sequence[str], k: int = 10, with_text: bool = False) -> list[list[tuple]]:
        """Per item, up to ``k`` other items by the inner product of their candidate vectors (the item's vector
        as the query, ranked as a user vector would be), best first, the item itself excluded."""
        k = positive_int("k", k)
        _flag("with_text", with_text)
        cols = np.asarray(self._columns("item_keys", item_keys), np.int64)
        results: list[list[tuple]] = []
        for lo in range(0, len(cols), 256):
            part = cols[lo:lo + 256]
            queries = self.candidates[torch.from_numpy(part + 1).to(self.device)]
            for best in self._top(queries, k, [part[i:i + 1] for i in range(len(part))]):
                results.append([(self.keys[col + 1], score) for col, score in best])
        return self._with_text(results) if with_text else results

    def _with_text(self, results: list[list[tuple]]) -> list[list[tuple]]:
        if self.texts is None:
            raise DataError(f"{self.path}: this export stores no item texts (texts.json: written by `mmm4rec "
                            "export` and by training since it existed); re-export it to show titles")
        return [[(key, score, self.texts[self.index[key]]) for key, score in row] for row in results]

    def _columns(self, name: str, item_keys: Sequence[str]) -> list[int]:
        item_keys = _listed(name, item_keys, "item keys")
        for i, key in enumerate(item_keys):
            if not isinstance(key, str):
                raise ConfigError(f"{name}[{i}] is not an item key (a string): {short_repr(key)}")
            if key not in self.index:
                raise DataError(self._unknown(key, name))
        return [self.index[key] - 1 for key in item_keys]

    @property
    def uses_ann(self) -> bool:
        wanted = (self.ann_min_items is not None and self.num_items >= self.ann_min_items
                  and self.device.type == "cpu")
        if wanted and not ann_available():
            if not getattr(self, "_warned_ann", False):
                log.warning("%d items: ANN retrieval needs faiss-cpu (pip install 'mmm4rec[serve]'); ranking the "
                            "whole catalogue exactly instead", self.num_items)
                self._warned_ann = True
            return False
        return wanted

    def prepare_ann(self, force: bool = False) -> Optional[AnnIndex]:
        """Build (or read from the cache) the ANN index now rather than at the first request, when the catalogue
        is served through it (``force``: whatever its size, e.g. to fill the cache); None when it is not."""
        if force or self.uses_ann:
            return self._ann_index()
        return None

    def _ann_index(self) -> AnnIndex:
        if self._ann is None or self._ann.size > self.num_items:
            # only the export's own catalogue is cached: items added since belong to this process alone
            self._ann = AnnIndex(self.candidates[1:].cpu().numpy(), cache=None if self.added else self.ann_cache)
        elif self._ann.size < self.num_items:  # items added since: appended to their lists
            self._ann.add(self.candidates[1 + self._ann.size:].cpu().numpy())
        return self._ann

    def _top(self, users: torch.Tensor, k: int, seen: list[np.ndarray]) -> list[list[tuple[int, float]]]:
        """Per user vector, up to k (column, score) pairs, best first, the columns in ``seen`` excluded: through
        the ANN index above ann_min_items (re-scored exactly; a user it finds too few for is ranked exactly),
        else by scoring the whole catalogue."""
        found: list[Optional[list[tuple[int, float]]]] = [None] * len(users)
        if self.uses_ann:
            found = retrieve(self._ann_index(), self.candidates[1:], users, k, seen)
        exact = [i for i, f in enumerate(found) if f is None]
        if exact:
            rows = torch.tensor(exact, dtype=torch.long, device=self.device)
            scores = self._scores(users[rows])
            cols = [seen[i] for i in exact]
            at = np.repeat(np.arange(len(cols)), [len(c) for c in cols])
            if len(at):
                scores[torch.from_numpy(at).to(self.device),
                       torch.from_numpy(np.concatenate(cols)).to(self.device)] = float("-inf")
            for i, best in zip(exact, top_k(scores, k)):
                found[i] = best
        return found

    def score(self, histories: Optional[Iterable[History]] = None, item_keys: Sequence[str] = None,
              unknown: str = "error", batch_size: int = 256, labels: Optional[Sequence[str]] = None,
              time_unit: str = "s", users: Optional[Sequence[str]] = None,
              unknown_user: str = "error") -> np.ndarray:
        """float32 [histories, items]: the score of each of ``item_keys`` for each history (the same numbers
        ``recommend`` ranks by); NaN for a history with no known item (the model has no user vector for it).
        ``users``: known user keys in place of histories, as in ``recommend`` (a new visitor's row is NaN)."""
        item_keys = _listed("item_keys", item_keys, "item keys")
        histories, labels = self._histories_or_users(histories, users, unknown_user, labels)
        cols = torch.tensor(self._columns("item_keys", item_keys), dtype=torch.long, device=self.device)
        rows: list[np.ndarray] = []
        for parsed, users in self._user_vectors(histories, unknown, batch_size, labels, time_unit):
            picked = iter(()) if users is None else iter(self._scores(users)[:, cols].cpu().numpy())
            nan = np.full(len(item_keys), np.nan, np.float32)
            rows += [next(picked) if isinstance(history, tuple) else nan for history in parsed]
        return np.stack(rows) if rows else np.zeros((0, len(item_keys)), np.float32)

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        """(b, I): every item 1..I (column j is item j+1); padding is never a candidate."""
        return users @ self.candidates[1:].t()

    # ------------------------------------------------------------------------------------------------ histories
    def _histories_or_users(self, histories, users, unknown_user: str, labels):
        """Exactly one of ``histories`` and ``users``; user keys become their parsed histories (and labels)."""
        if histories is None and users is None:  # the old API's error, with the new alternative named
            raise ConfigError(f"histories must be a list of histories, got None: {ONE_OF} (known user keys)")
        if histories is not None and users is not None:
            raise ConfigError(f"{ONE_OF} (known user keys)")
        if users is None:
            return histories, labels
        if not isinstance(unknown_user, str) or unknown_user not in UNKNOWN_USER:
            raise ConfigError(f"unknown_user must be one of {list(UNKNOWN_USER)}, got {short_repr(unknown_user)}")
        users = _listed("users", users, "user keys")
        if self.users is None:
            raise ConfigError(f"{self.path}: users are known by key only with a dataset (Recommender(dataset=…), "
                              "mmm4rec serve --dataset DIR)")
        out = []
        for i, key in enumerate(users):
            if not isinstance(key, str):
                raise ConfigError(f"users[{i}] is not a user key (a string): {short_repr(key)}")
            row = self.users.row(key)
            if row is not None:
                out.append(_Known(*self.users.history(row)))
            elif unknown_user == "popular":
                out.append([])  # a new visitor
            else:
                raise DataError(self._unknown_user(key))
        return out, labels if labels is not None else [f"user {short_repr(key)}" for key in users]

    def _unknown_user(self, key: str) -> str:
        similar = self.users.like(key)
        if similar:
            more = f" or {len(similar) - 1} more with that id" if len(similar) > 1 else ""
            return f"unknown user key {short_repr(key)} (did you mean {similar[0]!r}{more}?)"
        return (f"unknown user key {short_repr(key)} (not among the {self.users.num_users} users of the dataset; "
                "a new visitor gets the popular items with unknown_user='popular')")

    def history(self, user: str) -> list[tuple[str, int]]:
        """The known user's history, as (item key, Unix seconds) pairs oldest first: what ``users=[user]`` is
        answered with (items the export does not hold left out)."""
        if self.users is None:
            raise ConfigError(f"{self.path}: users are known by key only with a dataset (Recommender(dataset=…))")
        if not isinstance(user, str):
            raise ConfigError(f"history: {short_repr(user)} is not a user key (a string)")
        row = self.users.row(user)
        if row is None:
            raise DataError(self._unknown_user(user))
        ids, stamps = self.users.history(row)
        return [(self.keys[i], t) for i, t in zip(ids.tolist(), stamps.tolist())]

    def image(self, key: str) -> Optional[tuple[bytes, str]]:
        """(encoded bytes, content type) of the item's image in the dataset, None when it has none (or no dataset
        images were loaded)."""
        if not isinstance(key, str) or key not in self.index:
            raise DataError(self._unknown(key, "image"))
        return None if self.images is None else self.images.read_image(self.index[key])

    def has_image(self, key: str) -> bool:
        return (self.images is not None and isinstance(key, str) and key in self.index
                and self.images.has(self.index[key]))

    def _user_vectors(self, histories: Iterable[History], unknown: str, batch_size: int,
                      labels: Optional[Sequence[str]], time_unit: str = "s"):
        """Per batch: each history as (ids, timestamps), None when skipping left nothing, EMPTY when it had no
        entry at all, and the user vectors of the (ids, timestamps) ones, in order (None when there are none)."""
        if not isinstance(unknown, str) or unknown not in UNKNOWN:
            raise ConfigError(f"unknown must be one of {list(UNKNOWN)}, got {short_repr(unknown)}")
        if not isinstance(time_unit, str) or time_unit not in TIME_UNITS:
            raise ConfigError(f"time_unit must be one of {list(TIME_UNITS)} (numbers in histories are Unix seconds "
                              f"or milliseconds; ISO-8601 strings need none), got {short_repr(time_unit)}")
        batch_size = min(positive_int("batch_size", batch_size), sys.maxsize)  # a huge one: everything at once
        if histories is None or isinstance(histories, (str, bytes, Mapping)) or not isinstance(histories, Iterable):
            raise ConfigError("histories must be a list of histories (each a list of [item key, unix seconds] "
                              f"pairs), got {type(histories).__name__} {short_repr(histories)}")
        if labels is not None:
            labels = _listed("labels", labels, "strings, one per history")
            if not all(isinstance(label, str) for label in labels):
                raise ConfigError(f"labels must be a list of strings, one per history, got {short_repr(labels)}")
            if isinstance(histories, Sequence) and len(labels) != len(histories):
                raise ConfigError(f"labels: {len(labels)} label(s) for {len(histories)} histories")
        bad = BadRecords(strict=unknown == "error")
        histories = iter(histories)
        for start in itertools.count(0, batch_size):
            chunk = list(itertools.islice(histories, batch_size))
            if not chunk:
                break
            if labels is not None and start + len(chunk) > len(labels):  # histories of unknown length
                raise ConfigError(f"labels: {len(labels)} label(s) for more histories (history {len(labels)} has "
                                  "none)")
            parsed = [self._parse(h, labels[start + i] if labels is not None else f"history {start + i}", bad,
                                  time_unit) for i, h in enumerate(chunk)]
            real = [p for p in parsed if isinstance(p, tuple)]
            users = self.model.user_vectors(self._model_input(real).to(self.device)).float() if real else None
            yield parsed, users
        if bad:
            self.skipped.update(bad.counts)
            log.warning("skipped %d unknown history item(s) (unknown='skip')", sum(bad.counts.values()))

    def _parse(self, history: History, label: str, bad: BadRecords, time_unit: str = "s"):
        if isinstance(history, _Known):
            return (history.ids, history.stamps) if len(history.ids) else EMPTY
        if not isinstance(history, (list, tuple)):
            raise DataError(f"{label}: a history is a list of [item key, unix seconds] pairs, "
                            f"got {short_repr(history, 80)}")
        if not history:
            return EMPTY
        ids, stamps, previous = [], [], None
        for pos, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                    and (_is_integral(pair[1]) or isinstance(pair[1], str))):
                raise DataError(f"{label}: entry {pos} is not an [item key, unix seconds] pair: "
                                f"{short_repr(pair, 80)}")
            key, ts = pair[0], _seconds(pair[1], time_unit, f"{label}: entry {pos}")
            if previous is not None and ts < previous:
                raise DataError(f"{label}: entry {pos} is older than the one before it; histories are oldest "
                                "first")
            previous = ts
            item = self.index.get(key)
            if item is None:
                bad.report("unknown_item", f"{label}: " + self._unknown(
                    key, hint="; add it with add_items, or skip unknown items: unknown='skip', CLI --unknown skip"))
                continue
            ids.append(item)
            stamps.append(ts)
        return (np.asarray(ids, np.int64), np.asarray(stamps, np.int64)) if ids else None

    def _model_input(self, histories: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        """Right-padded, oldest first, the last max_len items of each history. The next item's time is unknown
        when serving: the last history timestamp stands in (read only under model.compat.target_timestamp)."""
        L, b = self.max_len, len(histories)
        items, stamps = np.zeros((b, L), np.int64), np.zeros((b, L), np.int64)
        lengths = np.array([min(len(ids), L) for ids, _ in histories], np.int64)
        for row, ((ids, ts), n) in enumerate(zip(histories, lengths)):
            items[row, :n], stamps[row, :n] = ids[-n:], ts[-n:]
        last = stamps[np.arange(b), lengths - 1]
        return Batch(torch.from_numpy(items), torch.from_numpy(stamps), torch.from_numpy(lengths),
                     torch.zeros(b, dtype=torch.long), torch.from_numpy(last))

    # ------------------------------------------------------------------------------------------------ cold start
    def add_items(self, keys: Sequence[str], texts: Sequence[str],
                  images: Optional[Sequence[Any]] = None) -> None:
        """Encode new items with the export's frozen encoder and make them recommendable. ``images``: per item a
        PIL image, encoded image bytes or None (no image: the blank-image features, flagged missing, as stage 1
        does). All or nothing: on an error the catalogue is unchanged."""
        if not self.model.reads_content:
            raise ConfigError(f"{self.path}: {self.model.arch} scores items by learned ID embeddings only; new "
                              "items need retraining")
        # A string is a sequence too: add_items("ab", …) would add the items 'a' and 'b'.
        keys = _listed("add_items: keys", keys, "item keys")
        texts = _listed("add_items: texts", texts, "strings")
        images = [None] * len(keys) if images is None else _listed("add_items: images", images,
                                                                   "images (PIL images, encoded bytes or None)")
        if not keys:
            raise ConfigError("add_items: no items given")
        if not len(texts) == len(images) == len(keys):
            raise ConfigError(f"add_items: {len(keys)} keys, {len(texts)} texts and {len(images)} images")
        self._check_new_keys(keys, texts)
        new = self._encode_items(keys, texts, images)
        old = self.features
        features = ItemFeatures(
            torch.cat([old.text, new.text]),
            None if old.image is None else torch.cat([old.image, new.image]),
            None if old.image_missing is None else torch.cat([old.image_missing, new.image_missing]))
        state = resize_id_tables(self.model.state_dict(), features.num_items + 1, keep=self.num_items + 1,
                                 arch=self.model.arch)
        model = build_model(self.model.cfg, features)
        model.load_state_dict(state, strict=True)
        model.eval().to(self.device)
        with torch.no_grad():
            added = model.item_tables().scores.float()[self.num_items + 1:]
        if self.texts is not None:
            self.texts = self.texts + texts
        self.added += len(keys)
        self._install(model, features, self.keys + keys, torch.cat([self.candidates, added]))
        log.info("added %d item(s); %d in the catalogue", len(keys), self.num_items)

    def _check_new_keys(self, keys: list[str], texts: list[str]) -> None:
        seen: set[str] = set()
        for key, text in zip(keys, texts):
            if not isinstance(key, str) or not key or key == PAD_KEY:
                raise DataError(f"add_items: {short_repr(key)} is not a usable item key")
            if key in self.index or key in seen:
                raise DataError(f"add_items: item {short_repr(key)} is already in the catalogue")
            if not isinstance(text, str):
                raise DataError(f"add_items: item {short_repr(key)}: a text is a string, got {type(text).__name__}")
            if not text.strip():
                raise DataError(f"add_items: item {short_repr(key)}: empty text")
            seen.add(key)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write this catalogue (with the items added since loading) as a new export in ``folder``, which must not
        exist: a complete feature store of the grown catalogue, the model with its resized ID tables, and the
        popularity (added items count 0) and titles, all hashed in export.json like any export. The folder
        appears complete or not at all."""
        from ..data.atomic import replace_folder
        from .export import write_export

        out = Path(folder)
        if out.exists() or out.is_symlink():
            raise ConfigError(f"{out}: exists; save writes a new export folder (name one that does not exist)")
        if self.store is None:
            raise ConfigError(f"{self.path}: loaded without its feature store; nothing to save from")
        provenance = {**(self.meta.get("provenance") or {}),
                      "saved_from": {"export": str(self.path), "sha256": self.digest, "added_items": self.added}}
        popularity = None
        if self.popularity is not None:
            popularity = np.zeros(self.num_items + 1, np.int64)
            popularity[:len(self.popularity)] = self.popularity
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        # a new folder of a name no one else has (mkdtemp): the clean-up below removes only what save created
        store_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.store-", dir=out.parent))
        try:
            store = _write_store(store_dir, self.store, self.features, self.keys, self.texts)
            with replace_folder(out) as tmp:
                write_export(self.model.cpu(), tmp, store=store, provenance=provenance, popularity=popularity,
                             texts=self.texts)
        finally:
            self.model.to(self.device)
            import shutil

            shutil.rmtree(store_dir, ignore_errors=True)
        log.info("saved %d items (%d added) as %s", self.num_items, self.added, out)
        return out

    @cached_property
    def _encoders(self) -> Encoders:
        """The encoders the export's features came from; any other revision would make incomparable features."""
        want = self.encoder
        cfg = EncoderConfig(text=want["text"]["source"], image=(want["image"] or {}).get("source"),
                            max_text_tokens=want["max_text_tokens"])
        try:
            here = encoder_identity(cfg)
        except ValueError:  # a local model folder that is gone here reads as a malformed hub name
            here = {**want, **{m: {**want[m], "revision": None} for m in ("text", "image") if want[m]}}
        for m in ("text", "image"):
            if want[m] and here[m] != want[m]:
                state = ("is not available here" if here[m]["revision"] is None
                         else f"is {here[m]['revision']} here")
                raise ConfigError(f"add_items needs the {m} encoder the export's features came from, "
                                  f"{want[m]['source']} ({want[m]['revision']}); it {state}")
        if here != want:
            raise ConfigError(f"add_items: the export's features came from encoding procedure {want}, this "
                              f"mmm4rec encodes with {here}")
        return build_encoders(cfg, self.device)

    def _encode_items(self, keys: list[str], texts: list[str], images: list[Any]) -> ItemFeatures:
        with_image = [i for i, im in enumerate(images) if im is not None]
        if self.features.image is None and with_image:  # the item is still added, by its text
            message = (f"{self.path}: a text-only export; the image(s) of {len(with_image)} item(s) (first "
                       f"{keys[with_image[0]]!r}) are not used")
            log.warning(message)
            warnings.warn(message, stacklevel=3)
            with_image = []
        encoders, step = self._encoders, EncoderConfig().batch_size
        text = np.concatenate([encoders.text(texts[i:i + step]) for i in range(0, len(texts), step)])
        image = missing = None
        if self.features.image is not None:
            image = np.tile(encoders.image.blank, (len(keys), 1))
            decoded = [_as_image(images[i], keys[i]) for i in with_image]
            for i in range(0, len(with_image), step):
                image[with_image[i:i + step]] = encoders.image(decoded[i:i + step])
            missing = torch.ones(len(keys), dtype=torch.bool)
            missing[with_image] = False
        for name, rows in (("text", text), ("image", image)):
            if rows is not None and not np.isfinite(rows).all():
                bad = keys[int(np.argmin(np.isfinite(rows).all(axis=1)))]
                raise DataError(f"add_items: item {bad!r}: the {name} encoder produced NaN/inf features")
        return ItemFeatures(torch.from_numpy(text), None if image is None else torch.from_numpy(image), missing)


def _write_store(folder: Path, old, features: ItemFeatures, keys: list[str], texts: Optional[list[str]]):
    """A feature store (mmm4rec.data.features' layout) holding ``features`` for ``keys``: the loaded store's rows
    and content hashes, then the added items' (text hash; no image bytes are kept, so their image hash is
    zero: "none")."""
    import hashlib
    import json
    from datetime import datetime

    from ..data.features import HASHES, IMAGE, ITEMS, MANIFEST, MISSING, TEXT, FeatureStore
    from ..data.schema import content_hash

    folder.mkdir(parents=True, exist_ok=True)  # save's own, new temp folder
    np.save(folder / TEXT, features.text.float().numpy())
    if features.image is not None:
        np.save(folder / IMAGE, features.image.float().numpy())
        np.save(folder / MISSING, features.image_missing.numpy())
    hashes = np.zeros((len(keys), 2, 16), np.uint8)
    hashes[:old.num_items + 1] = old.hashes
    for row in range(old.num_items + 1, len(keys)):
        if texts is not None:
            hashes[row, 0] = np.frombuffer(content_hash(texts[row].encode("utf-8")), np.uint8)
    np.save(folder / HASHES, hashes)
    index_bytes = json.dumps(keys, ensure_ascii=False).encode()
    (folder / ITEMS).write_bytes(index_bytes)
    manifest = {**old.manifest, "num_items": len(keys) - 1,
                "items_sha256": hashlib.sha256(index_bytes).hexdigest(),
                "missing_images": None if features.image is None else int(features.image_missing[1:].sum()),
                "last_build": {"mode": "add_items", "reason": f"{len(keys) - 1 - old.num_items} item(s) added to "
                               f"{old.path}", "encoded": len(keys) - 1 - old.num_items, "reused": old.num_items},
                "created": {**old.manifest.get("created", {}),
                            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return FeatureStore.open(folder)


def top_k(scores: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per row, up to k (column, score) pairs, best first, equal scores in column order; -inf (excluded) columns
    are never returned. torch.topk finds the k-th score; only the columns tied at or above it are sorted."""
    k = min(k, scores.shape[1])
    if k == 0:
        return [[] for _ in range(len(scores))]
    kth = scores.topk(k, dim=1).values[:, -1:]
    keep = (scores >= kth) & torch.isfinite(scores)
    out = []
    for row, mask in zip(scores, keep):
        cols = mask.nonzero().flatten()  # ascending column
        order = torch.sort(row[cols], descending=True, stable=True).indices[:k]
        out.append(list(zip(cols[order].tolist(), row[cols[order]].tolist())))
    return out


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (numpy integers too; not bool, float or str), or a ConfigError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an int >= 1, got {type(value).__name__} {short_repr(value, 40)}")
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
    return int(value)


def _listed(name: str, value: Any, what: str) -> list:
    """``value`` as a list: any iterable but a string, bytes or mapping (whose iteration would silently give
    characters, byte values or keys)."""
    if value is None or isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of {what}, got {type(value).__name__} {short_repr(value, 60)}")
    return list(value)


def _folder(name: str, value: Any, also: str = "") -> Path:
    """A folder argument as a Path: a str or os.PathLike, not empty (Path("") is the working directory)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a folder path (str or os.PathLike){also}, got {type(value).__name__} "
                          f"{short_repr(value, 60)}")
    if not os.fspath(value):
        raise ConfigError(f"{name} must be a folder path, got an empty string")
    return Path(value)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {short_repr(value)}")


def _seconds(value: Any, unit: str, where: str) -> int:
    """A history timestamp as Unix seconds: an ISO-8601 string (no offset = UTC), or a number in ``unit``."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise DataError(f"{where}: {short_repr(value, 40)} is not an ISO-8601 time (2026-01-31T12:00:00Z) nor "
                            "a number") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        ts = int(when.timestamp())
    else:
        ts = int(value) // 1000 if unit == "ms" else int(value)
    if not 0 <= ts <= MAX_TIMESTAMP:  # as in training data; an int64 would overflow on 10**30
        hint = "; milliseconds? pass time_unit='ms' (CLI --time-unit ms)" if unit == "s" and ts > MAX_TIMESTAMP \
            and int(value) // 1000 <= MAX_TIMESTAMP else ""
        raise DataError(f"{where}: {short_repr(value, 40)} is not Unix {'milli' if unit == 'ms' else ''}seconds "
                        f"(0 to the end of the year 9999, {MAX_TIMESTAMP} s){hint}")
    return ts


def _device(device: Any) -> torch.device:
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {short_repr(device)} is not a torch device (cpu, cuda, cuda:1 …)") from None
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {short_repr(device)}: CUDA is not available here (use device='cpu')")
    return out


def _is_integral(value: Any) -> bool:
    """Unix seconds: an int, or a float with no fraction (JSON writers often emit 881250949.0)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())


def _as_image(image: Any, key: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        try:
            return decode_image(bytes(image))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged images
            raise DataError(f"add_items: item {key!r}: unreadable image ({type(e).__name__}: {e})") from None
    raise DataError(f"add_items: item {key!r}: an image is a PIL image or encoded bytes, got {type(image).__name__}")

