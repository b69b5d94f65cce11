"""The registries: the one list of the model architectures and the one list of the training losses.

Adding a component is one module plus one line here (torchtitan's ``TrainSpec``, open_clip's factory):

    ARCHS.builtin("mmm4rec", "mmm4rec.model.mmm4rec:MMM4Rec")     # model.arch=mmm4rec
    LOSSES.builtin("sampled", "mmm4rec.losses.sampled:SampledSoftmax")   # train.loss=sampled

Code outside the package registers its own the same way, at import time of a module the commands load with
``--plugin MODULE`` (see docs/design.md, "How to add …"):

    from mmm4rec.registry import ARCHS
    ARCHS.register("toy", ToyRecommender)

Built-ins are named by ``module:attribute`` and imported on first use, so the config (which checks names
against this list) and ``--help`` never import torch. What a component needs and owns it declares on its class:
an architecture its domain-specific tensors (``SequentialRecommender.domain_specific``) and its options
(``Options``, read from ``model.options``); a loss the data it needs (``needs_target_counts``) and its options
(``Options``, from ``train.loss_options``). The built-ins' options keep their historical flat keys
(``model.n_heads_sasrec``, ``train.negatives`` …) so that every preset, run and export stays readable.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Union

from .errors import ConfigError


class RegistryError(ConfigError):
    """An unknown or clashing component name; a ConfigError, so every command reports it as one line."""


class Registry:
    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key  # e.g. "architecture", "model.arch": the config key that names one
        self._entries: dict[str, Union[str, Any]] = {}

    def builtin(self, name: str, target: str) -> None:
        """A component of this package, imported on first use from ``module:attribute``."""
        self._add(name, target)

    def register(self, name: str, component: Any = None) -> Any:
        """Register ``component`` under ``name`` (also usable as a class decorator: ``@LOSSES.register("x")``)."""
        if component is None:
            return lambda c: self.register(name, c) or c
        self._add(name, component)
        return component

    def _add(self, name: str, component: Union[str, Any]) -> None:
        if not (isinstance(name, str) and name.isidentifier()):
            raise RegistryError(f"{self.kind} name must be an identifier, got {name!r}")
        old = self._entries.get(name)
        if old is not None and old is not component:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({_label(old)})")
        self._entries[name] = component

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: Any) -> None:
        """RegistryError naming the config key unless ``name`` is registered (imports nothing)."""
        if not isinstance(name, str) or name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"{self.key} must be one of {self.names()}, got {name!r}{hint}; a {self.kind} of "
                                "your own is registered by a module passed with --plugin")

    def get(self, name: str) -> Any:
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry


def _label(component: Any) -> str:
    return component if isinstance(component, str) else f"{component.__module__}.{component.__qualname__}"


def load_plugins(modules: list[str]) -> None:
    """Import each ``--plugin`` module (they register their components). A module named on the command line is
    code the user chose to run; nothing read from a run, a checkpoint or an export ever names one."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise RegistryError(f"--plugin {module}: cannot import it ({e})") from None


# ------------------------------------------------------------------------------------------ the only lists
ARCHS = Registry("architecture", "model.arch")
ARCHS.builtin("mmm4rec", "mmm4rec.model.mmm4rec:MMM4Rec")
ARCHS.builtin("sasrec", "mmm4rec.model.sasrec:SASRec")

LOSSES = Registry("loss", "train.loss")
LOSSES.builtin("full", "mmm4rec.losses.full:FullSoftmax")
LOSSES.builtin("in_batch", "mmm4rec.losses.in_batch:InBatchSoftmax")
LOSSES.builtin("sampled", "mmm4rec.losses.sampled:SampledSoftmax")
