"""What every sequential recommender here shares: batches, item tables, scores, the two losses, save/load.

A model turns item ids into *tables* (one row per requested item: the inputs its sequence encoder reads, and the
vectors candidates are scored with) and a batch of histories into user vectors. Both losses and evaluation are
written once on top of that:
- full-item softmax CE over items 1..I (fine-tuning; padding id 0 is never a candidate),
- in-batch softmax CE whose candidates are the batch's targets (pre-training; optionally all ranks' targets).
Items are adapted once per step for all the rows the step needs, never once per sample (DESIGN.md).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..config import ConfigError, ModelConfig, from_dict

# Parameters that belong to one item catalogue: dropped when transferring to another domain.
DOMAIN_SPECIFIC = ("text_id_bias", "image_id_bias")


@dataclass
class Batch:
    """Int tensors from the loader. Histories are right-padded with 0 and oldest-first."""

    items: torch.Tensor  # (b, L) item ids
    timestamps: torch.Tensor  # (b, L) Unix seconds, 0 on padding
    lengths: torch.Tensor  # (b,) 1..L
    targets: torch.Tensor  # (b,) item ids ≥ 1
    target_ts: torch.Tensor  # (b,) the target's timestamp (used only under compat.target_timestamp)

    @classmethod
    def from_dict(cls, d: dict) -> "Batch":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def to(self, device) -> "Batch":
        return Batch(**{k: v.to(device, non_blocking=True) for k, v in dataclasses.asdict(self).items()})


@dataclass
class ItemFeatures:
    """Frozen per-item content features, row 0 = padding (zeros)."""

    text: torch.Tensor  # (I+1, Dt)
    image: Optional[torch.Tensor] = None  # (I+1, Dv); None for text-only data
    image_missing: Optional[torch.Tensor] = None  # (I+1,) bool

    @property
    def num_items(self) -> int:
        return self.text.shape[0] - 1

    @classmethod
    def placeholder(cls, num_items: int, text_dim: int, image_dim: int | None) -> "ItemFeatures":
        image = None if image_dim is None else torch.zeros(num_items + 1, image_dim)
        return cls(torch.zeros(num_items + 1, text_dim), image,
                   None if image is None else torch.zeros(num_items + 1, dtype=torch.bool))


@dataclass
class ItemTables:
    rows: Optional[torch.Tensor]  # item ids the tables hold (None: all items 0..I, row = id)
    inputs: tuple  # what the sequence encoder gathers, one (rows, N) tensor per input stream
    scores: torch.Tensor  # (rows, N) candidate vectors, already divided by the temperature

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Row of each id inside these tables."""
        return ids if self.rows is None else torch.searchsorted(self.rows, ids)


class SequentialRecommender(nn.Module):
    """Base class: subclasses implement ``item_tables`` and ``encode``."""

    arch: str = ""

    def __init__(self, cfg: ModelConfig, features: ItemFeatures):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_items = features.num_items

    # ------------------------------------------------------------------ to implement
    def item_tables(self, ids: Optional[torch.Tensor] = None) -> ItemTables:
        raise NotImplementedError

    def encode(self, batch: Batch, tables: ItemTables) -> torch.Tensor:
        """User vectors (b, N) read at position length-1."""
        raise NotImplementedError

    def extra_config(self) -> dict:
        """Sizes that, with the ModelConfig, rebuild this model (stored in config.json)."""
        return {"num_items": self.num_items}

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch, objective: str = "full",
                gather: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, int]]] = None) -> torch.Tensor:
        """Mean cross-entropy of the batch. ``gather`` (in-batch only) all-gathers candidate vectors across
        ranks and returns them with this rank's offset, for more negatives."""
        if objective == "full":
            tables = self.item_tables()
            user = self.encode(batch, tables)
            logits = user @ tables.scores[1:].t()  # candidates 1..I: padding is never scored
            return F.cross_entropy(logits.float(), batch.targets - 1)
        if objective == "in_batch":
            rows = torch.unique(torch.cat([batch.items.flatten(), batch.targets]))
            tables = self.item_tables(rows)
            user = self.encode(batch, tables)
            cand = tables.scores[tables.lookup(batch.targets)]
            offset = 0
            if gather is not None:
                cand, offset = gather(cand)
            labels = torch.arange(len(user), device=user.device) + offset
            return F.cross_entropy((user @ cand.t()).float(), labels)
        raise ValueError(f"unknown objective {objective!r}")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def user_vectors(self, batch: Batch, tables: Optional[ItemTables] = None) -> torch.Tensor:
        return self.encode(batch, tables if tables is not None else self.item_tables())

    # ------------------------------------------------------------------ save / load (no pickle)
    def save_pretrained(self, path: str | Path, extra: Optional[dict] = None) -> None:
        """fp32 safetensors + config.json; ``extra`` adds provenance (e.g. the feature encoder) to the config."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, path / "model.safetensors", metadata={"arch": self.arch})
        meta = {"arch": self.arch, "model": dataclasses.asdict(self.cfg), **self.extra_config(), **(extra or {})}
        (path / "config.json").write_text(json.dumps(meta, indent=2))

    @staticmethod
    def read_config(path: str | Path) -> tuple[ModelConfig, dict]:
        meta = json.loads((Path(path) / "config.json").read_text())
        return from_dict(ModelConfig, meta.pop("model"), "model."), meta

    def load_backbone(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Transfer: load everything except domain-specific tables, strictly (no silent strict=False)."""
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(DOMAIN_SPECIFIC)}
        theirs = {k: v for k, v in state.items() if not k.startswith(DOMAIN_SPECIFIC)}
        missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
        shapes = [f"{k}: {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in theirs and theirs[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise ConfigError(
                f"{source} does not fit this {self.arch} model: "
                + "; ".join(p for p in (f"missing {missing[:8]}" if missing else "",
                                        f"unexpected {unexpected[:8]}" if unexpected else "",
                                        f"shape mismatch {shapes[:8]}" if shapes else "") if p)
            )
        self.load_state_dict(theirs, strict=False)  # strictness checked above; only the dropped tables differ


def build_model(cfg: ModelConfig, features: ItemFeatures) -> SequentialRecommender:
    from .mmm4rec import MMM4Rec
    from .sasrec import SASRec

    return {"mmm4rec": MMM4Rec, "sasrec": SASRec}[cfg.arch](cfg, features)


def from_pretrained(path: str | Path, features: Optional[ItemFeatures] = None,
                    expect: Optional[ModelConfig] = None) -> SequentialRecommender:
    """Load a ``save_pretrained`` folder. ``features`` supplies the catalogue (placeholders if omitted);
    ``expect`` is the config the caller wants: a different window length or layer count is an error."""
    cfg, meta = SequentialRecommender.read_config(path)
    if expect is not None:
        for key in ("arch", "max_len", "n_layers", "d_model"):
            if getattr(expect, key) != getattr(cfg, key):
                raise ConfigError(f"{path}: checkpoint has model.{key}={getattr(cfg, key)!r} but the config asks "
                                  f"for {getattr(expect, key)!r}")
    if features is None:
        features = ItemFeatures.placeholder(meta["num_items"], meta.get("text_dim", 1), meta.get("image_dim"))
    model = build_model(cfg, features)
    state = load_file(Path(path) / "model.safetensors")
    if features.num_items != meta["num_items"]:
        model.load_backbone(state, source=str(path))
    else:
        model.load_state_dict(state, strict=True)
    return model
