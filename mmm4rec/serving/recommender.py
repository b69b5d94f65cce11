"""The serving API: user histories in, ranked item keys out, on a self-contained export.

    from mmm4rec import Recommender
    rec = Recommender.from_pretrained("runs/ml100k/export")
    rec.recommend([[("ml-100k:50", 881250949), ("ml-100k:172", 881251130)]], k=10)
    # -> [[("ml-100k:181", 7.91), ...]]  per history, best first

A history is a list of (item key, Unix seconds) pairs, oldest first. Histories are batched internally; the model
reads the last ``max_len`` items of each, and ``exclude_seen`` drops every item of the history from its ranking.
Every argument is checked: a wrong type or value is a ConfigError / DataError of one line naming the argument (or
the history and entry), quoting at most a short prefix of the offending value.
Scores are the model's logits: user vector · candidate vector (already divided by the temperature). Equal scores
rank in catalogue order (lower item id first), so results never depend on how a sort orders ties.

``add_items`` makes new (cold-start) items recommendable without retraining: their text (and images) go through
the export's own frozen encoder, and they are scored by content alone (no trained ID rows); they may appear in
histories too. Added items live in this object only.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError, EncoderConfig, short_repr
from ..data.schema import MAX_TIMESTAMP, PAD_KEY, BadRecords, DataError
from ..data.shards import decode_image
from ..encoders import Encoders, build_encoders, encoder_identity
from ..model import Batch, ItemFeatures, build_model
from .export import Export, load_export, resize_id_tables

log = logging.getLogger(__name__)

History = Sequence[tuple[str, int]]
UNKNOWN = ("error", "skip")


class Recommender:
    """Recommendations from an export. ``unknown="skip"`` drops history items the catalogue does not hold
    (counted in ``skipped`` and logged); a history left empty then gets no recommendations and NaN scores."""

    def __init__(self, export: Export, device: str | torch.device = "cpu"):
        self.path = export.path
        self.device = _device(device)
        self.encoder = export.encoder
        self.skipped = BadRecords()  # unknown history items skipped since loading, by reason
        self._install(export.model, export.features, export.keys, export.candidates)

    @classmethod
    def from_pretrained(cls, export_dir: str | os.PathLike, device: str | torch.device = "cpu",
                        transfer: bool = False, features: str | os.PathLike | None = None) -> "Recommender":
        """Load an export written by ``mmm4rec.serving.write_export`` (every file checked). ``features`` serves
        it on another feature store; another catalogue needs ``transfer=True`` (content-only scores)."""
        return cls(load_export(export_dir, features=features, transfer=transfer), device)

    def _install(self, model, features: ItemFeatures, keys: list[str], candidates: torch.Tensor) -> None:
        self.model = model.eval().to(self.device)
        self.features = features
        self.keys = keys
        self.index = {k: i for i, k in enumerate(keys) if i}
        self.candidates = candidates.to(self.device)

    @property
    def num_items(self) -> int:
        return len(self.keys) - 1

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    # ------------------------------------------------------------------------------------------------- ranking
    def recommend(self, histories: Iterable[History], k: int = 10, exclude_seen: bool = True,
                  unknown: str = "error", batch_size: int = 256,
                  labels: Optional[Sequence[str]] = None) -> list[list[tuple[str, float]]]:
        """Per history, up to ``k`` (item key, score) pairs, best first; padding is never returned.
        ``labels`` name the histories in error messages (default "history <i>")."""
        k = positive_int("k", k)
        if not isinstance(exclude_seen, (bool, np.bool_)):
            raise ConfigError(f"exclude_seen must be True or False, got {short_repr(exclude_seen)}")
        results: list[list[tuple[str, float]]] = []
        for parsed, users in self._user_vectors(histories, unknown, batch_size, labels):
            ranked: Iterator[list[tuple[int, float]]] = iter(())
            if users is not None:
                scores = self._scores(users)
                if exclude_seen:
                    real = [ids for ids, _ in filter(None, parsed)]
                    rows = np.repeat(np.arange(len(real)), [len(ids) for ids in real])
                    cols = np.concatenate(real) - 1
                    scores[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = \
                        float("-inf")
                ranked = iter(top_k(scores, k))
            for history in parsed:
                best = next(ranked) if history is not None else []
                results.append([(self.keys[col + 1], score) for col, score in best])
        return results

    def score(self, histories: Iterable[History], item_keys: Sequence[str], unknown: str = "error",
              batch_size: int = 256, labels: Optional[Sequence[str]] = None) -> np.ndarray:
        """float32 [histories, items]: the score of each of ``item_keys`` for each history (the same numbers
        ``recommend`` ranks by)."""
        item_keys = _listed("item_keys", item_keys, "item keys")
        for i, key in enumerate(item_keys):
            if not isinstance(key, str):
                raise ConfigError(f"item_keys[{i}] is not an item key (a string): {short_repr(key)}")
            if key not in self.index:
                raise DataError(f"unknown item key {short_repr(key)} in item_keys (not among the {self.num_items} "
                                f"items of {self.path})")
        cols = torch.tensor([self.index[key] - 1 for key in item_keys], dtype=torch.long, device=self.device)
        rows: list[np.ndarray] = []
        for parsed, users in self._user_vectors(histories, unknown, batch_size, labels):
            picked = iter(()) if users is None else iter(self._scores(users)[:, cols].cpu().numpy())
            nan = np.full(len(item_keys), np.nan, np.float32)
            rows += [next(picked) if history is not None else nan for history in parsed]
        return np.stack(rows) if rows else np.zeros((0, len(item_keys)), np.float32)

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        """(b, I): every item 1..I (column j is item j+1); padding is never a candidate."""
        return users @ self.candidates[1:].t()

    # ------------------------------------------------------------------------------------------------ histories
    def _user_vectors(self, histories: Iterable[History], unknown: str, batch_size: int,
                      labels: Optional[Sequence[str]]):
        """Per batch: each history as (ids, timestamps), None when skipping left nothing, and the user vectors of
        the others, in order (None when there are none)."""
        if not isinstance(unknown, str) or unknown not in UNKNOWN:
            raise ConfigError(f"unknown must be one of {list(UNKNOWN)}, got {short_repr(unknown)}")
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
            parsed = [self._parse(h, labels[start + i] if labels is not None else f"history {start + i}", bad)
                      for i, h in enumerate(chunk)]
            real = [p for p in parsed if p is not None]
            users = self.model.user_vectors(self._model_input(real).to(self.device)).float() if real else None
            yield parsed, users
        if bad:
            self.skipped.update(bad.counts)
            log.warning("skipped %d unknown history item(s) (unknown='skip')", sum(bad.counts.values()))

    def _parse(self, history: History, label: str, bad: BadRecords) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if not isinstance(history, (list, tuple)) or not history:
            raise DataError(f"{label}: a history is a non-empty list of [item key, unix seconds] pairs, "
                            f"got {short_repr(history, 80)}")
        ids, stamps, previous = [], [], None
        for pos, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                    and _is_integral(pair[1])):
                raise DataError(f"{label}: entry {pos} is not an [item key, unix seconds] pair: "
                                f"{short_repr(pair, 80)}")
            key, ts = pair[0], int(pair[1])
            if not 0 <= ts <= MAX_TIMESTAMP:  # as in training data; an int64 would overflow on 10**30
                raise DataError(f"{label}: entry {pos}: {short_repr(pair[1], 40)} is not Unix seconds (0 to "
                                f"{MAX_TIMESTAMP}, the end of the year 9999)")
            if previous is not None and ts < previous:
                raise DataError(f"{label}: entry {pos} is older than the one before it; histories are oldest "
                                "first")
            previous = ts
            item = self.index.get(key)
            if item is None:
                bad.report("unknown_item", f"{label}: unknown item key {short_repr(key)} (not among the "
                                           f"{self.num_items} items of {self.path}; add it with add_items, or skip "
                                           "unknown items: unknown='skip', CLI --unknown skip)")
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
        if self.features.image is None and with_image:
            raise ConfigError(f"{self.path}: a text-only export; item {keys[with_image[0]]!r} has an image")
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

