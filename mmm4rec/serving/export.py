"""Self-contained exports: one folder holds everything that turns user histories into recommendations.

  export.json             the export's identity: the sha256 of every other file of the folder, and the sha256 of
                          its own content (format + files), recomputed and compared on every load
  config.json             format, model config and sizes (as ``save_pretrained`` writes them), the feature
                          encoder's identity, the caller's provenance, and the feature store's place and hashes
  model.safetensors       fp32 weights (``SequentialRecommender.save_pretrained``)
  items.json              ["<pad>", key_1, …, key_I]: item id = position, as in the feature store
  candidates.safetensors  "scores": fp32 [I+1, N] candidate vectors already divided by the temperature, row 0 =
                          padding: ``user_vector @ scores[1:].T`` ranks the catalogue
  features/               the frozen features histories are encoded with: a complete feature store (hard links
                          where the file system allows, else copies). With ``copy_features=False`` there is no
                          folder: config.json names the store's path, pinned by the hashes of its files.
  popularity.safetensors  optional, "counts": int64 [I+1], how often each item was a training target (row 0 = 0):
                          the ranking an empty history (a new visitor) gets (docs/serving.md)
  texts.json              optional, ["", text_1, …, text_I]: each item's title (else its text), shown beside keys

``write_export`` fills an empty new folder (the caller moves it into place with one rename) and reads it back
once, so an export that would not load is refused when it is written. ``load_export`` trusts nothing in the
folder: export.json's names are checked by their spelling before any file is touched (relative, inside the
folder, no ``..``), every listed file is hashed (a symlink leading out of the folder, a missing entry or sha256
is an error), and then the content of the hashed files is still checked — types, sizes, and the weights' tensor
shapes against the model config.json describes, built on the meta device, before anything is allocated. Every
refusal is one line naming the file; it never falls back to zero features. Exports of the older format
mmm4rec-export/1 left config.json unprotected and are refused with the way to re-export them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import ConfigError, ModelConfig, from_dict, short_repr
from ..data.features import HASHES, IMAGE, ITEMS, MANIFEST, MISSING, TEXT, FeatureStore
from ..data.schema import PAD_KEY, DataError
from ..data.shards import sha256_file
from ..model import ItemFeatures, SequentialRecommender, build_model
from ..model.items import item_features
from ..registry import ARCHS

EXPORT_FORMAT = "mmm4rec-export/2"
OLD_FORMATS = ("mmm4rec-export/1",)  # config.json outside every hash: refused, to be re-exported
IDENTITY = "export.json"
CONFIG, MODEL, CANDIDATES, FEATURES = "config.json", "model.safetensors", "candidates.safetensors", "features"
POPULARITY, TEXTS = "popularity.safetensors", "texts.json"  # optional; hashed like every file when present
REQUIRED = (CONFIG, MODEL, ITEMS, CANDIDATES)  # what every export's export.json must list
PINNED = (TEXT, IMAGE, MISSING, ITEMS)  # the store files that decide the model inputs, pinned by sha256
SHA256 = re.compile(r"[0-9a-f]{64}")
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
    digest: str  # export.json's own sha256: the identity of the whole export
    popularity: Optional[np.ndarray] = None  # int64 [I+1] training-target counts; None: not stored
    texts: Optional[list[str]] = None  # [""] + one title per item; None: not stored
    store: Optional[FeatureStore] = None  # the feature store the features were read from


# ---------------------------------------------------------------------------------------------------------- writing
def write_export(model: SequentialRecommender, out_dir: str | os.PathLike, *, store: FeatureStore,
                 provenance: dict, copy_features: bool = True, popularity: Optional[Any] = None,
                 texts: Optional[list[str]] = None) -> Path:
    """Write ``model`` with the feature ``store`` it was trained on into the empty or new folder ``out_dir``.

    ``provenance`` (git revision, versions, machine, world size, dataset hash …) is stored as given, in
    config.json. ``copy_features=False`` references the store by path and content hash instead of copying it.
    ``popularity``: training-target counts per item id [I+1] (the empty-history fallback); ``texts``: [""] + one
    title per item. Both optional, both hashed in export.json like every other file.
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
    if popularity is not None:
        counts = torch.as_tensor(np.asarray(popularity), dtype=torch.int64).contiguous()
        _check_popularity(counts, store.num_items, out / POPULARITY)
        save_file({"counts": counts}, out / POPULARITY, metadata={"format": EXPORT_FORMAT})
    if texts is not None:
        _check_texts(texts, store.num_items, out / TEXTS)
        (out / TEXTS).write_text(json.dumps(list(texts), ensure_ascii=False))
    if copy_features:
        _place_store(store, out / FEATURES)
        features = {"path": FEATURES, "sha256": _digests(out / FEATURES, store)}
    else:
        features = {"path": str(store.path.resolve()), "sha256": _digests(store.path, store)}
    meta = {"format": EXPORT_FORMAT, "encoder": store.manifest["encoder"], "features": features,
            "provenance": json.loads(json.dumps(provenance, default=str))}
    model.save_pretrained(out, extra=meta)
    known = {f"{FEATURES}/{name}": digest for name, digest in features["sha256"].items()} if copy_features else {}
    _write_identity(out, known)
    load_export(out)  # refuses here, not at serving time, a model whose features are not this store's
    return out


def _write_identity(out: Path, known: dict[str, str]) -> None:
    """export.json: every file of the folder with its sha256 (``known``: already hashed), and its own sha256."""
    files = {}
    for file in sorted(p for p in out.rglob("*") if p.is_file()):
        name = file.relative_to(out).as_posix()
        if name != IDENTITY:
            files[name] = known.get(name) or sha256_file(file)
    identity: dict[str, Any] = {"format": EXPORT_FORMAT, "files": files}
    identity["sha256"] = manifest_digest(identity)
    (out / IDENTITY).write_text(json.dumps(identity, indent=1) + "\n")


def manifest_digest(identity: dict) -> str:
    """The sha256 of export.json's content without its own "sha256" field, serialised canonically (sorted keys,
    no spaces): an entry changed by hand without recomputing this is detected."""
    content = {k: v for k, v in identity.items() if k != "sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    identity = _read_identity(path)
    files = identity["files"]
    # The export's copy of the features is read only when no other store is given: only then is it hashed.
    _verify_files(path, {n: d for n, d in files.items() if features is None or not n.startswith(FEATURES + "/")})
    meta, cfg = _read_meta(path)
    keys = _read_keys(path / ITEMS, meta["num_items"])
    store = _own_store(path, meta, files) if features is None else FeatureStore.open(features)
    _check_store(store, meta, path)
    other_catalogue = store.keys != keys
    if other_catalogue:
        _check_transfer(store, keys, cfg.arch, transfer, path)
    feats = item_features(store)
    _check_weights(path, cfg, feats, rows=meta["num_items"] + 1)
    state = _read_safetensors(path / MODEL)
    if other_catalogue:
        state = resize_id_tables(state, store.num_items + 1, keep=0, arch=cfg.arch)
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
    popularity = texts = None
    if POPULARITY in files:  # hashed above with the rest
        popularity = _read_safetensors(path / POPULARITY).get("counts")
        _check_popularity(popularity, meta["num_items"], path / POPULARITY)
        popularity = popularity.numpy()
    if TEXTS in files:
        texts = _read_json(path / TEXTS)
        _check_texts(texts, meta["num_items"], path / TEXTS)
    if other_catalogue:  # another catalogue: the export's counts and titles are of its own items
        popularity = texts = None
    return Export(path, model, feats, store.keys, candidates, meta["encoder"], meta, identity["sha256"],
                  popularity, texts, store)


def _check_popularity(counts: Any, num_items: int, file: Path) -> None:
    if not (isinstance(counts, torch.Tensor) and counts.dtype == torch.int64 and tuple(counts.shape) ==
            (num_items + 1,) and bool((counts >= 0).all())):
        raise DataError(f"{file}: expected 'counts', int64 >= 0 of shape ({num_items + 1},) (one per item id)")


def _check_texts(texts: Any, num_items: int, file: Path) -> None:
    if not (isinstance(texts, list) and len(texts) == num_items + 1 and all(isinstance(t, str) for t in texts)):
        raise DataError(f"{file}: expected a list of {num_items + 1} strings (\"\" for the padding, then one per "
                        "item)")


def _read_identity(path: Path) -> dict:
    """export.json, checked against its own sha256, every name checked by its spelling (before any listed file
    is touched: a name leading out of the folder must not become an existence or content oracle)."""
    if not path.is_dir():
        raise DataError(f"{path}: {'a file, not an export folder' if path.exists() else 'no such export folder'}")
    file = path / IDENTITY
    if not file.is_file():
        _no_identity(path)
    identity = _read_json(file)
    if not (isinstance(identity, dict) and isinstance(identity.get("files"), dict)):
        raise DataError(f'{file}: expected {{"format": …, "files": {{name: sha256, …}}, "sha256": …}}')
    if identity.get("format") != EXPORT_FORMAT:
        raise DataError(f"{file}: format {short_repr(identity.get('format'))}, expected {EXPORT_FORMAT!r}")
    if identity.get("sha256") != manifest_digest(identity):
        raise DataError(f"{file}: its own sha256 does not match its content (edited by hand?); an export is "
                        "written whole: re-export it with `mmm4rec export --run RUN_DIR --out NEW_DIR`")
    files = identity["files"]
    for name, digest in files.items():
        if not _plain_name(name):
            raise DataError(f"{file}: entry {short_repr(name)} is not a file name inside the export folder "
                            "(relative, '/'-separated, no '..', '.' or empty parts)")
        if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
            raise DataError(f"{file}: entry {name!r} has no sha256 (got {short_repr(digest)})")
    for name in REQUIRED:
        if name not in files:
            raise DataError(f"{file}: no entry for {name}; every file an export reads is listed with its sha256")
    return identity


def _no_identity(path: Path) -> None:
    """No export.json: name what the folder is instead (an export of the older format, a model folder …)."""
    try:
        fmt = json.loads((path / CONFIG).read_bytes()).get("format")
    except FileNotFoundError:
        raise DataError(f"{path}: not an export (no {IDENTITY}, no {CONFIG})") from None
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt in OLD_FORMATS:
        raise DataError(f"{path / CONFIG}: an export of the older format {fmt}, in which no hash covers config.json "
                        "(an edit to it would be served unnoticed); re-export it from its run: "
                        "`mmm4rec export --run RUN_DIR --out NEW_DIR`")
    if fmt == EXPORT_FORMAT:
        raise DataError(f"{path / IDENTITY}: missing, so no file of this export can be checked; re-export it: "
                        "`mmm4rec export --run RUN_DIR --out NEW_DIR`")
    raise DataError(f"{path}: not a self-contained export (no {IDENTITY}; config.json format {short_repr(fmt)}); "
                    f"write one from a run with `mmm4rec export --run RUN_DIR --out DIR`")


def _plain_name(name: Any) -> bool:
    """A path inside the folder by its spelling alone: relative, '/'-separated plain parts (no '..', '.', empty
    part, backslash or NUL), and not export.json itself."""
    if not isinstance(name, str) or not name or name == IDENTITY or "\\" in name or "\0" in name:
        return False
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in name.split("/"))


def _verify_files(path: Path, files: dict[str, str]) -> None:
    """Every entry is a regular file inside the folder (a symlink may point within it, never out) whose content
    has the listed sha256."""
    root = os.path.realpath(path)
    if any(name.startswith(FEATURES + "/") for name in files) and not (path / FEATURES).is_dir():
        raise DataError(f"{path / FEATURES}: the export's feature store is missing (moved or deleted?); pass the "
                        "store's path as features=… (CLI: --features)")
    for name, digest in sorted(files.items()):
        file = path / name
        real = os.path.realpath(file)
        if os.path.commonpath([root, real]) != root:
            raise DataError(f"{file}: a symbolic link leading out of the export folder; an export holds its own "
                            f"files (listed in {IDENTITY})")
        try:
            mode = os.stat(file).st_mode
        except FileNotFoundError:
            raise DataError(f"{file}: missing (listed in {path / IDENTITY})") from None
        if not stat.S_ISREG(mode):  # a FIFO would block the hash for ever, a folder cannot be hashed
            raise DataError(f"{file}: not a regular file (listed in {path / IDENTITY})")
        _check_digest(file, digest, IDENTITY)


def _read_json(file: Path) -> Any:
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{file}: not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise DataError(f"{file}: not valid JSON: {e}") from None


def _read_meta(path: Path) -> tuple[dict, ModelConfig]:
    """config.json (its hash has passed) and its validated model config; every field the loader uses is checked
    for type and range."""
    file = path / CONFIG
    meta = _read_json(file)
    if not isinstance(meta, dict):
        raise DataError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"{file}: format {short_repr(meta.get('format'))}, expected {EXPORT_FORMAT!r}")
    missing = [k for k in ("arch", "model", "num_items", "encoder", "features") if k not in meta]
    if missing:
        raise DataError(f"{file}: incomplete export config, missing {missing}")

    def bad(key: str, value: Any, want: str) -> DataError:
        return DataError(f"{file}: {key} must be {want}, got {short_repr(value)}")

    if not isinstance(meta["arch"], str) or meta["arch"] not in ARCHS.names():
        raise bad("arch", meta["arch"], f"one of {ARCHS.names()} (a registered architecture)")
    try:
        model = from_dict(ModelConfig, meta["model"], "model.")
        model.validate()
    except ConfigError as e:
        raise DataError(f"{file}: {e}") from None
    if model.arch != meta["arch"]:
        raise DataError(f"{file}: arch {meta['arch']!r} but model.arch {model.arch!r}")
    for key in ("num_items", "text_dim", "image_dim"):
        if (key == "num_items" or meta.get(key) is not None) and not _count(meta.get(key)):
            raise bad(key, meta.get(key), "a positive integer")
    if not isinstance(meta["encoder"], dict):
        raise bad("encoder", meta["encoder"], "an object (the feature encoder's identity)")
    feats = meta["features"]
    if not isinstance(feats, dict):
        raise bad("features", feats, 'an object {"path": …, "sha256": {…}}')
    where, pinned = feats.get("path"), feats.get("sha256")
    # the export's own copy, or a store referenced by its absolute path (copy_features=False)
    if not (where == FEATURES or (isinstance(where, str) and os.path.isabs(where) and "\0" not in where)):
        raise bad("features.path", where, f"{FEATURES!r} or an absolute path")
    if not isinstance(pinned, dict) or TEXT not in pinned:
        raise bad("features.sha256", pinned, f"an object {{file name: sha256}} naming at least {TEXT}")
    for name, digest in pinned.items():
        if name not in PINNED:
            raise DataError(f"{file}: features.sha256 names {short_repr(name)}, not a file of a feature store "
                            f"(one of {list(PINNED)})")
        if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
            raise bad(f"features.sha256[{name!r}]", digest, "a sha256")
    return meta, model


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_digest(file: Path, digest: str, listed_in: str | Path) -> None:
    if not file.is_file():
        raise DataError(f"{file}: missing (listed in {listed_in})")
    if sha256_file(file) != digest:
        raise DataError(f"{file}: sha256 does not match {listed_in} (changed or corrupted since the export)")


def _read_keys(file: Path, num_items: int) -> list[str]:
    keys = _read_json(file)
    if not isinstance(keys, list) or keys[:1] != [PAD_KEY] or len(keys) != num_items + 1:
        raise DataError(f"{file}: expected [{PAD_KEY!r}, key_1, …] with {num_items} item keys (config.json's "
                        f"num_items)")
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise DataError(f"{file}: item keys must be distinct strings")
    return keys


def _own_store(path: Path, meta: dict, files: dict[str, str]) -> FeatureStore:
    """The export's features: its copy (hashed with the export's other files, and the same files config.json
    pins), or the store it references by path, checked against the hashes config.json records."""
    pinned = meta["features"]["sha256"]
    if meta["features"]["path"] == FEATURES:
        for name in [*pinned, HASHES, MANIFEST]:
            if f"{FEATURES}/{name}" not in files:
                raise DataError(f"{path / IDENTITY}: no entry for {FEATURES}/{name}; every file an export reads is "
                                "listed with its sha256")
            if name in pinned and files[f"{FEATURES}/{name}"] != pinned[name]:
                raise DataError(f"{path / CONFIG}: features.sha256[{name!r}] differs from the entry of "
                                f"{FEATURES}/{name} in {IDENTITY}")
        return FeatureStore.open(path / FEATURES)
    # A referenced store lies outside the export by design (copy_features=False): its path and hashes are part
    # of config.json, which export.json covers.
    where = Path(meta["features"]["path"])
    if not where.is_dir():
        raise DataError(f"{where}: the feature store {path / CONFIG} names is missing (moved or deleted?); pass "
                        "the store's new path as features=… (CLI: --features)")
    for name, digest in pinned.items():
        _check_digest(where / name, digest, path / CONFIG)
    return FeatureStore.open(where)


def _check_store(store: FeatureStore, meta: dict, path: Path) -> None:
    if store.manifest["encoder"] != meta["encoder"]:
        raise DataError(f"{store.path}: features of another encoder ({store.manifest['encoder']}) than the "
                        f"export {path} was trained on ({short_repr(meta['encoder'], 300)})")
    dims = store.manifest["dims"]
    want = {"text": meta.get("text_dim", dims["text"]), "image": meta.get("image_dim", dims["image"])}
    if dims != want:
        raise DataError(f"{store.path}: feature dims {dims}, the export {path} expects {want}")


def _check_weights(path: Path, cfg: ModelConfig, feats: ItemFeatures, rows: int) -> None:
    """model.safetensors' tensor names and shapes (read from its header) against the model config.json describes,
    built on the meta device: a config whose sizes do not fit the weights (a huge d_model included) is refused
    before a byte is allocated for it. ``rows``: the ID tables' rows in the export's own catalogue."""
    try:
        with torch.device("meta"):
            skeleton = build_model(cfg, feats)
    except (ConfigError, ValueError, RuntimeError, TypeError) as e:
        raise DataError(f"{path / CONFIG}: the model it describes cannot be built: "
                        f"{' '.join(str(e).split())[:200]}") from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for name in want:
        if skeleton.is_domain_specific(name):
            want[name] = (rows, *want[name][1:])
    file = path / MODEL
    try:
        with safe_open(file, framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own exception types for a damaged header
        raise DataError(f"{file}: unreadable weights ({type(e).__name__}: {' '.join(str(e).split())[:200]})") \
            from None
    missing, unexpected = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    shapes = [f"{k}: {have[k]} vs {v}" for k, v in want.items() if k in have and have[k] != v]
    if missing or unexpected or shapes:
        raise DataError(f"{file}: does not fit the model config.json describes: " + "; ".join(p for p in (
            f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
            f"shapes (file vs config) {shapes[:4]}" if shapes else "") if p))


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except Exception as e:  # safetensors raises its own exception types for damaged content
        raise DataError(f"{file}: unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _check_transfer(store: FeatureStore, keys: list[str], arch: str, transfer: bool, path: Path) -> None:
    theirs, ours = set(store.keys), set(keys)
    example = next(iter(sorted(theirs - ours) or sorted(ours - theirs)), None)
    what = (f"another catalogue than the export {path} ({store.num_items} items vs {len(keys) - 1}"
            + (f", e.g. {short_repr(example)} is only in one of them)" if example else
               ", the same keys in another order)"))
    if not ARCHS.get(arch).reads_content:
        raise ConfigError(f"{store.path}: {what}; {ARCHS.get(arch).__name__} scores items by learned ID embeddings only and "
                          "cannot serve another catalogue")
    if not transfer:
        raise ConfigError(f"{store.path}: {what}; pass transfer=True (CLI: --transfer) to serve it by content "
                          "alone: the export's ID tables belong to its own catalogue")


def _stored_candidates(file: Path, computed: torch.Tensor) -> torch.Tensor:
    stored = _read_safetensors(file).get("scores")
    if stored is None or stored.shape != computed.shape:
        raise DataError(f"{file}: expected 'scores' of shape {tuple(computed.shape)}, got "
                        f"{None if stored is None else tuple(stored.shape)}")
    diff = (stored.float() - computed).abs().max().item()
    if not diff <= CANDIDATE_TOLERANCE:  # also catches NaN
        raise DataError(f"{file}: the candidate vectors differ from the model's by up to {diff:.3g}: not written "
                        "from these weights and features")
    return stored.float()


# ------------------------------------------------------------------------------------------------ shared helpers
def resize_id_tables(state: dict[str, torch.Tensor], rows: int, keep: int,
                     arch: str = "mmm4rec") -> dict[str, torch.Tensor]:
    """The state with every ID table (what architecture ``arch`` declares domain-specific) cut to its first
    ``keep`` rows and zero-filled to ``rows``: items without a trained row are scored by content alone."""
    out = dict(state)
    is_id_table = ARCHS.get(arch).is_domain_specific
    for name, table in state.items():
        if is_id_table(name):
            resized = table.new_zeros((rows, *table.shape[1:]))
            resized[:keep] = table[:keep]
            out[name] = resized
    return out



def catalogue_extras(dataset: Any, store: FeatureStore, seq_index: Any, split: str) -> dict[str, Any]:
    """``write_export``'s optional ``popularity`` and ``texts`` for a model trained on ``dataset`` (a Manifest) with
    ``store``: how often each item was a target of ``split`` (the training split: "train", or "pretrain"), and each
    item's title (its .json "title", else its text). One pass over the item shards, images not decoded."""
    from ..data.dataset import item_titles

    titles = item_titles(dataset)
    return {"popularity": seq_index.target_counts(split, keep=False),
            "texts": [""] + [titles.get(k, "") for k in store.keys[1:]]}
