"""What a validation shows in TensorBoard besides its numbers (rank 0, bounded): a few validation users'
history, target and top-k with the items' titles (the TEXT tab), and the candidate vectors of the first items
with their keys and titles as metadata (the PROJECTOR tab).

Bounds: SHOW_USERS users, their top SHOW_K; PROJECTOR_ITEMS vectors per validation; titles from at most
TITLE_SCAN item records, read once per run (an item beyond them shows its key alone). A model whose parameters
or items are partitioned over the ranks (ZeRO-3, item parallelism) is not shown: rank 0 does not hold it whole.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..data.schema import DataError, Manifest
from ..model import Batch, SequentialRecommender

log = logging.getLogger(__name__)

SHOW_USERS = 4
SHOW_K = 10
SHOW_HISTORY = 5
PROJECTOR_ITEMS = 1000
TITLE_SCAN = 100_000
TITLE_CHARS = 80


def titles_of(dataset: Manifest, keys: list[str], limit: int = TITLE_SCAN) -> dict[str, str]:
    """The titles (mmm4rec.data.dataset.item_titles) of ``keys`` on one line each, cut for a table cell; {} if the
    items cannot be read (a warning: the examples then show keys)."""
    from ..data.dataset import item_titles

    try:
        return {k: " ".join(t.split())[:TITLE_CHARS] for k, t in item_titles(dataset, keys, limit).items()}
    except (OSError, DataError, ValueError) as e:
        log.warning("TensorBoard examples without titles: the dataset's items could not be read (%s)", e)
        return {}


class Examples:
    """Writes the examples of a validation into the run's TensorBoard (call on rank 0 only)."""

    def __init__(self, dataset: Manifest, keys: list[str]):
        self.dataset, self.keys = dataset, keys  # keys[id]: item id -> key (0 is padding)
        self._titles: Optional[dict[str, str]] = None

    def title(self, item: int) -> str:
        if self._titles is None:
            self._titles = titles_of(self.dataset, self.keys[1:])
        key = self.keys[item]
        return f"{key} — {self._titles[key]}" if key in self._titles else key

    @torch.no_grad()
    def write(self, writer, model: SequentialRecommender, batch: dict, step: int, device: torch.device) -> None:
        if model.sharded:
            return
        was_training = model.training
        model.eval()
        try:
            n = int(min(SHOW_USERS, int(batch["valid"].sum())))
            if n:
                rows = Batch.from_dict({k: v[:n] for k, v in batch.items() if torch.is_tensor(v)}).to(device)
                tables = model.item_tables()
                user = model(rows, tables).float()
                scores = user @ tables.scores.float().T
                scores[:, 0] = -torch.inf  # padding
                top = scores.topk(min(SHOW_K, scores.shape[1] - 1), dim=1)
                writer.add_text("examples/top_k", self._markdown(rows, top), step)
            self._projector(writer, model, step)
        finally:
            model.train(was_training)

    def _markdown(self, rows: Batch, top) -> str:
        parts = []
        for u in range(rows.items.shape[0]):
            length = int(rows.lengths[u])
            history = [int(i) for i in rows.items[u, :length].tolist()][-SHOW_HISTORY:]
            target = int(rows.targets[u])
            lines = [f"**validation user {u + 1}**, last {len(history)} of {length} items: "
                     + "; ".join(self.title(i) for i in history),
                     f"target: {self.title(target)}", "", "| rank | item | score |", "|---|---|---|"]
            for r, (item, score) in enumerate(zip(top.indices[u].tolist(), top.values[u].tolist()), 1):
                hit = " ✔" if item == target else ""
                lines.append(f"| {r} | {self.title(item)}{hit} | {score:.3f} |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def _projector(self, writer, model: SequentialRecommender, step: int) -> None:
        count = min(PROJECTOR_ITEMS, model.num_items)
        if count < 2:
            return
        ids = torch.arange(1, count + 1, device=next(model.parameters()).device)
        vectors = model.item_tables(ids).scores.float().cpu()
        if self._titles is None:
            self.title(1)
        meta = [[self.keys[i], (self._titles or {}).get(self.keys[i], "")] for i in range(1, count + 1)]
        writer.add_embedding(vectors, metadata=meta, metadata_header=["key", "title"], tag="items",
                             global_step=step)
