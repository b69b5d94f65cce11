"""Serving: self-contained exports (``write_export`` / ``load_export``), the ``Recommender`` API on top of them,
and the ``mmm4rec recommend`` / ``mmm4rec export`` commands (``mmm4rec.serving.cli``).

The names below are imported on first use: ``mmm4rec recommend`` checks its arguments (and refuses bad ones in
a fraction of a second) before torch and transformers, seconds to import, are loaded.
"""
from __future__ import annotations

import importlib

_WHERE = {"EXPORT_FORMAT": "export", "Export": "export", "load_export": "export", "write_export": "export",
          "Recommender": "recommender", "top_k": "recommender"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
