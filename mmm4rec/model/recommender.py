"""What every sequential recommender here shares: batches, item tables, user vectors, save/load.

A model turns item ids into *tables* — per requested item, the inputs its sequence encoder reads and the vector
candidates are scored with — and a batch of histories (read from those tables) into user vectors. Losses
(mmm4rec/losses) and evaluation are written once on top of these two calls; they decide which items a step adapts:
all of them once per step for the full softmax, only the batch's rows for in-batch and sampled softmax.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..config import ConfigError, ModelConfig, from_dict, options_of
from .items import ItemFeatures


@dataclass
class Batch:
    """Int tensors from the loader. Histories are right-padded with 0 and oldest-first."""

    items: torch.Tensor  # (b, L) item ids
    timestamps: torch.Tensor  # (b, L) Unix seconds, 0 on padding
    lengths: torch.Tensor  # (b,) 1..L
    targets: torch.Tensor  # (b,) item ids ≥ 1
    target_ts: torch.Tensor  # (b,) the target's timestamp (used only under compat.target_timestamp)
    # (b,) float: this sample's share of the global step's loss (0 for the rows that fill a step); None = mean
    weight: Optional[torch.Tensor] = None

    @classmethod
    def from_dict(cls, d: dict) -> "Batch":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def to(self, device) -> "Batch":
        return Batch(**{k: None if v is None else v.to(device, non_blocking=True)
                        for k, v in dataclasses.asdict(self).items()})


@dataclass
class ItemTables:
    """Per-item rows a step needs. ``first_id`` set: rows are the consecutive items first_id, first_id+1, …
    (every item this process holds); None: row k belongs to the k-th requested id."""

    inputs: tuple  # what the sequence encoder reads, one (rows, N) tensor per input stream
    scores: torch.Tensor  # (rows, N) candidate vectors, already divided by the temperature
    first_id: Optional[int] = None


class SequentialRecommender(nn.Module):
    """Base class: subclasses implement ``item_tables`` and ``encode``, and are registered in
    mmm4rec.registry.ARCHS under their ``arch`` name."""

    arch: ClassVar[str] = ""
    # Name prefixes of the parameters that belong to one item catalogue (ID tables): dropped when transferring to
    # another domain, resized when items are added to an export.
    domain_specific: ClassVar[tuple[str, ...]] = ()
    # Whether items are scored from their content (frozen features) and not only from ID tables: such a model can
    # serve another catalogue (transfer) and new items (Recommender.add_items) without retraining.
    reads_content: ClassVar[bool] = True
    Options: ClassVar[Optional[type]] = None  # the dataclass of the architecture's own options (model.options)

    def __init__(self, cfg: ModelConfig, features: ItemFeatures):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.options = options_of(type(self), cfg.options, "model.options")
        self.num_items = features.num_items
        self.sharded = features.sharded
        self.first_id = features.offset  # the catalogue rows this process holds start here

    # ------------------------------------------------------------------ to implement
    def item_tables(self, ids: Optional[torch.Tensor] = None) -> ItemTables:
        """Tables for the items ``ids`` (1-D, in that order; under item parallelism a collective) or, with None,
        for every item this process holds."""
        raise NotImplementedError

    def encode(self, batch: Batch, history: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """User vectors (b, N) read at position length-1, from the history's table rows (one (b, L, N) tensor
        per input stream)."""
        raise NotImplementedError

    def extra_config(self) -> dict:
        """Sizes that, with the ModelConfig, rebuild this model (stored in config.json)."""
        return {"num_items": self.num_items}

    @classmethod
    def is_domain_specific(cls, name: str) -> bool:
        """Whether parameter ``name`` is one of this architecture's ID tables."""
        return bool(cls.domain_specific) and name.startswith(cls.domain_specific)

    # ------------------------------------------------------------------ built on the two above
    def history(self, batch: Batch, tables: Optional[ItemTables] = None) -> tuple[torch.Tensor, ...]:
        """The history rows of ``batch``: gathered from whole-catalogue ``tables`` when given, else adapted for
        exactly the batch's items (b·L rows: a static shape, whatever the batch holds)."""
        if tables is not None and tables.first_id == 0 and not self.sharded:
            return tuple(x[batch.items] for x in tables.inputs)
        return history_and_candidates(self, batch)[0]


    def forward(self, batch: Batch, tables: Optional[ItemTables] = None) -> torch.Tensor:
        """User vectors of ``batch`` (with autograd; the training losses call this)."""
        return self.encode(batch, self.history(batch, tables))

    @torch.no_grad()
    def user_vectors(self, batch: Batch, tables: Optional[ItemTables] = None) -> torch.Tensor:
        return self(batch, tables)

    # ------------------------------------------------------------------ save / load (no pickle)
    def save_pretrained(self, path: str | Path, extra: Optional[dict] = None) -> None:
        """fp32 safetensors + config.json; ``extra`` adds provenance (e.g. the feature encoder) to the config."""
        if self.sharded:
            raise RuntimeError("an item-parallel shard of a model cannot be saved on its own")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, path / "model.safetensors", metadata={"arch": self.arch})
        meta = {"arch": self.arch, "model": dataclasses.asdict(self.cfg), **self.extra_config(), **(extra or {})}
        (path / "config.json").write_text(json.dumps(meta, indent=2))

    @staticmethod
    def read_config(path: str | Path) -> tuple[ModelConfig, dict]:
        try:
            meta = json.loads((Path(path) / "config.json").read_text())
            return from_dict(ModelConfig, meta.pop("model"), "model."), meta
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{path}: not a model export (config.json unreadable: {type(e).__name__}: {e})") \
                from None

    def load_backbone(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Transfer: load everything except domain-specific tables, strictly (no silent strict=False)."""
        own = {k: v for k, v in self.state_dict().items() if not self.is_domain_specific(k)}
        theirs = {k: v for k, v in state.items() if not self.is_domain_specific(k)}
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


def history_and_candidates(model: "SequentialRecommender", batch: Batch, ids: Optional[torch.Tensor] = None
                           ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One ``model.item_tables`` call for the batch's b·L history items followed by the items ``ids`` (e.g. a
    loss's candidates): the history rows, (b, L, N) per input stream, and the candidate vectors of ``ids``."""
    b, L = batch.items.shape
    wanted = batch.items.flatten() if ids is None else torch.cat([batch.items.flatten(), ids])
    tables = model.item_tables(wanted)
    return tuple(x[: b * L].view(b, L, -1) for x in tables.inputs), tables.scores[b * L :]


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) for Linear/Embedding weights, zero biases, LayerNorm (1, 0): every architecture's starting
    point (``model.apply(init_weights)``); MMM4Rec's SSD parameters and convolutions keep their own
    initialisation (docs/model.md §4)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
