"""Serving: self-contained exports (``write_export`` / ``load_export``), the ``Recommender`` API on top of them,
and the ``mmm4rec recommend`` / ``mmm4rec export`` commands (``mmm4rec.serving.cli``)."""
from .export import EXPORT_FORMAT, Export, load_export, write_export
from .recommender import Recommender, top_k

__all__ = ["EXPORT_FORMAT", "Export", "Recommender", "load_export", "top_k", "write_export"]
