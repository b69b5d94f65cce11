"""The request options every serving front end shares: the ``Recommender`` API, the HTTP schema
(``mmm4rec serve``) and the ``mmm4rec recommend`` flags take their values from here. A light module: argument
parsing imports it without torch."""
from __future__ import annotations

from typing import Literal, get_args

Unknown = Literal["error", "skip"]  # a history item the catalogue does not hold
TimeUnit = Literal["s", "ms"]  # numeric history times (ISO-8601 strings need none)
UnknownUser = Literal["error", "popular"]  # a user key the dataset does not hold

UNKNOWN: tuple[str, ...] = get_args(Unknown)
TIME_UNITS: tuple[str, ...] = get_args(TimeUnit)
UNKNOWN_USER: tuple[str, ...] = get_args(UnknownUser)

ONE_OF = "give exactly one of histories and users"  # followed by where user keys come from
