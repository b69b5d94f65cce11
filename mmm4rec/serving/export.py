"""Self-contained exports: one folder holds everything that turns user histories into recommendations.

  config.json             format, model config and sizes (as ``save_pretrained`` writes them), the feature
                          encoder's identity, the caller's provenance, and the sha256 of every file below
  model.safetensors       fp32 weights (``SequentialRecommender.save_pretrained``)
  items.json              ["<pad>", key_1, …, key_I]: item id = position, as in the feature store
  candidates.safetensors  "scores": fp32 [I+1, N] candidate vectors already divided by the temperature, row 0 =
                          padding: ``user_vector @ scores[1:].T`` ranks the catalogue
  features/               the frozen features histories are encoded with: a complete feature store (hard links
                          where the file system allows, else copies). With ``copy_features=False`` there is no
                          folder: config.json names the store's path, pinned by the hashes of its files.

``write_export`` fills an empty new folder (the caller moves it into place with one rename) and reads it back
once, so an export that would not load is refused when it is written. ``load_export`` checks every hash, shape,
key and encoder identity it reads and refuses a mismatch in one line; it never falls back to zero features.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ConfigError
from ..data.features import HASHES, IMAGE, ITEMS, MANIFEST, MISSING, TEXT, FeatureStore
from ..data.schema import PAD_KEY, DataError
from ..data.shards import sha256_file
from ..model import ItemFeatures, SequentialRecommender, build_model
from ..model.recommender import DOMAIN_SPECIFIC

EXPORT_FORMAT = "mmm4rec-export/1"
CONFIG, MODEL, CANDIDATES, FEATURES = "config.json", "model.safetensors", "candidates.safetensors", "features"
PINNED = (TEXT, IMAGE, MISSING, ITEMS)  # the store files that decide the model inputs, pinned by sha256
# Candidates are recomputed from the model on load: an export whose stored vectors disagree beyond float
# rounding (another device's matmul included) was not written from these weights and features.
CANDIDATE_TOLERANCE = 1e-4


@dataclass
class Export:
    """A loaded export: the model (CPU, eval mode) with the features it reads, and the catalogue it ranks."""

    path: Path
    model: SequentialRecommender
    features: ItemFeatures
    keys: list[str]  # item id -> key, keys[0] = "<pad>"
    candidates: torch.Tensor  # (I+1, N) fp32
    encoder: dict  # the feature encoder's identity (mmm4rec.encoders.encoder_identity)
    meta: dict  # config.json


# ---------------------------------------------------------------------------------------------------------- writing
def write_export(model: SequentialRecommender, out_dir: str | os.PathLike, *, store: FeatureStore,
                 provenance: dict, copy_features: bool = True) -> Path:
    """Write ``model`` with the feature ``store`` it was trained on into the empty or new folder ``out_dir``.

    ``provenance`` (git revision, versions, machine, world size, dataset hash …) is stored as given, in
    config.json. ``copy_features=False`` references the store by path and content hash instead of copying it.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: not empty; an export is written into a new folder")
    sizes = model.extra_config()
    if sizes["num_items"] != store.num_items:
        raise DataError(f"{store.path}: {store.num_items} items, but the model was built for {sizes['num_items']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / ITEMS).write_text(json.dumps(store.keys, ensure_ascii=False))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scores = model.item_tables().scores.detach().float().cpu().contiguous()
    model.train(was_training)
    save_file({"scores": scores}, out / CANDIDATES, metadata={"format": EXPORT_FORMAT})
    if copy_features:
        _place_store(store, out / FEATURES)
        features = {"path": FEATURES, "sha256": _digests(out / FEATURES, store)}
    else:
        features = {"path": str(store.path.resolve()), "sha256": _digests(store.path, store)}
    meta = {"format": EXPORT_FORMAT, "encoder": store.manifest["encoder"], "features": features,
            "provenance": json.loads(json.dumps(provenance, default=str))}
    model.save_pretrained(out, extra=meta)
    meta = json.loads((out / CONFIG).read_text())
    meta["sha256"] = {name: sha256_file(out / name) for name in (MODEL, ITEMS, CANDIDATES)}
    (out / CONFIG).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    load_export(out)  # refuses here, not at serving time, a model whose features are not this store's
    return out


def _store_files(store: FeatureStore) -> list[str]:
    return [TEXT, ITEMS] + ([IMAGE, MISSING] if store.image is not None else [])


def _place_store(store: FeatureStore, dest: Path) -> None:
    """A complete copy of the store. Hard links are safe: stores are replaced by renaming a new folder into
    place (mmm4rec.data.atomic), never rewritten in place, so a linked file keeps the content it had."""
    dest.mkdir()
    for name in _store_files(store) + [HASHES, MANIFEST]:
        try:
            os.link(store.path / name, dest / name)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(store.path / name, dest / name)


def _digests(folder: Path, store: FeatureStore) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in _store_files(store)}


# ---------------------------------------------------------------------------------------------------------- loading
def load_export(path: str | os.PathLike, *, features: str | os.PathLike | None = None,
                transfer: bool = False) -> Export:
    """Read and check an export. ``features`` serves it on another feature store: the export's own moved
    elsewhere, or another catalogue (only with ``transfer``: the export's ID tables then do not apply and items
    are scored by content alone)."""
    path = Path(path)
    meta = _read_meta(path)
    for name, digest in meta["sha256"].items():
        _check_digest(path / name, digest, path / CONFIG)
    keys = _read_keys(path / ITEMS, meta["num_items"])
    store = _own_store(path, meta) if features is None else FeatureStore.open(features)
    _check_store(store, meta, path)
    cfg, _ = SequentialRecommender.read_config(path)
    other_catalogue = store.keys != keys
    if other_catalogue:
        _check_transfer(store, keys, cfg.arch, transfer, path)
    feats = item_features(store)
    state = load_file(path / MODEL)
    if other_catalogue:
        state = resize_id_tables(state, store.num_items + 1, keep=0)
    model = build_model(cfg, feats)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"{path / MODEL}: does not fit the model config.json describes: "
                        f"{' '.join(str(e).split())[:300]}") from None
    model.eval()
    with torch.no_grad():
        computed = model.item_tables().scores.float()
    # The exported vectors serve wherever the export's own features are found (moved, or passed as features=);
    # with any other features they would be stale.
    own = features is None or _digests(store.path, store) == meta["features"]["sha256"]
    candidates = _stored_candidates(path / CANDIDATES, computed) if own else computed
    return Export(path, model, feats, store.keys, candidates, meta["encoder"], meta)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not an export (no {CONFIG})") from None
    except ValueError as e:
        raise DataError(f"{path / CONFIG}: not valid JSON: {e}") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"{path}: not a self-contained export (format {meta.get('format')!r}, expected "
                        f"{EXPORT_FORMAT!r}); write one from a run with `mmm4rec export --run RUN_DIR --out DIR`")
    missing = [k for k in ("model", "num_items", "encoder", "features", "sha256") if k not in meta]
    if missing:
        raise DataError(f"{path / CONFIG}: incomplete export config, missing {missing}")
    return meta


def _check_digest(file: Path, digest: str, listed_in: Path) -> None:
    if not file.is_file():
        raise DataError(f"{file}: missing (listed in {listed_in})")
    if sha256_file(file) != digest:
        raise DataError(f"{file}: sha256 does not match {listed_in} (changed or corrupted since the export)")


def _read_keys(file: Path, num_items: int) -> list[str]:
    keys = json.loads(file.read_text())
    if not isinstance(keys, list) or keys[:1] != [PAD_KEY] or len(keys) != num_items + 1:
        raise DataError(f"{file}: expected [{PAD_KEY!r}, key_1, …] with {num_items} item keys")
    if len(set(keys)) != len(keys) or not all(isinstance(k, str) for k in keys):
        raise DataError(f"{file}: item keys must be distinct strings")
    return keys


def _own_store(path: Path, meta: dict) -> FeatureStore:
    """The export's features: its copy, or the store it references, checked against the recorded hashes."""
    where = path / meta["features"]["path"]  # a referenced store's path is absolute: the join keeps it
    if not where.is_dir():
        raise DataError(f"{where}: the feature store {path / CONFIG} names is missing (moved or deleted?); pass "
                        "the store's new path as features=… (CLI: --features)")
    for name, digest in meta["features"]["sha256"].items():
        _check_digest(where / name, digest, path / CONFIG)
    return FeatureStore.open(where)


def _check_store(store: FeatureStore, meta: dict, path: Path) -> None:
    if store.manifest["encoder"] != meta["encoder"]:
        raise DataError(f"{store.path}: features of another encoder ({store.manifest['encoder']}) than the "
                        f"export {path} was trained on ({meta['encoder']})")
    dims = store.manifest["dims"]
    want = {"text": meta.get("text_dim", dims["text"]), "image": meta.get("image_dim", dims["image"])}
    if dims != want:
        raise DataError(f"{store.path}: feature dims {dims}, the export {path} expects {want}")


def _check_transfer(store: FeatureStore, keys: list[str], arch: str, transfer: bool, path: Path) -> None:
    theirs, ours = set(store.keys), set(keys)
    example = next(iter(sorted(theirs - ours) or sorted(ours - theirs)), None)
    what = (f"another catalogue than the export {path} ({store.num_items} items vs {len(keys) - 1}"
            + (f", e.g. {example!r} is only in one of them)" if example else ", the same keys in another order)"))
    if arch == "sasrec":
        raise ConfigError(f"{store.path}: {what}; SASRec scores items by learned ID embeddings only and "
                          "cannot serve another catalogue")
    if not transfer:
        raise ConfigError(f"{store.path}: {what}; pass transfer=True (CLI: --transfer) to serve it by content "
                          "alone: the export's ID tables belong to its own catalogue")


def _stored_candidates(file: Path, computed: torch.Tensor) -> torch.Tensor:
    stored = load_file(file).get("scores")
    if stored is None or stored.shape != computed.shape:
        raise DataError(f"{file}: expected 'scores' of shape {tuple(computed.shape)}, got "
                        f"{None if stored is None else tuple(stored.shape)}")
    diff = (stored - computed).abs().max().item()
    if not diff <= CANDIDATE_TOLERANCE:  # also catches NaN
        raise DataError(f"{file}: the candidate vectors differ from the model's by up to {diff:.3g}: not written "
                        "from these weights and features")
    return stored


# ------------------------------------------------------------------------------------------------ shared helpers
def item_features(store: FeatureStore, dtype: torch.dtype = torch.float32) -> ItemFeatures:
    """The store's arrays as the tensors a model holds, memory-mapped from the store (shared between processes,
    never copied; ``dtype`` fp32, or bf16 for a bf16 step from the store's bf16 companion). A non-finite row is an
    error naming its item."""
    feats = ItemFeatures(text=store.tensor("text", dtype), image=store.tensor("image", dtype),
                         image_missing=store.tensor("image_missing"))
    if not (torch.isfinite(feats.text).all() and (feats.image is None or torch.isfinite(feats.image).all())):
        store.verify()  # names the first bad item
    return feats


def resize_id_tables(state: dict[str, torch.Tensor], rows: int, keep: int) -> dict[str, torch.Tensor]:
    """The state with every ID table (DOMAIN_SPECIFIC) cut to its first ``keep`` rows and zero-filled to ``rows``:
    items without a trained row are scored by content alone."""
    out = dict(state)
    for name, table in state.items():
        if name.startswith(DOMAIN_SPECIFIC):
            resized = table.new_zeros((rows, *table.shape[1:]))
            resized[:keep] = table[:keep]
            out[name] = resized
    return out

