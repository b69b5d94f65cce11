"""Command-line options shared by the converters, importable without torch (``mmm4rec prepare --help`` loads
nothing heavy)."""
from __future__ import annotations

from typing import Any


def add_scale_arguments(parser: Any) -> None:
    """The converters' options for data at scale (tools/prepare_*.py)."""
    group = parser.add_argument_group("scale (docs/data_format.md, 'Building at scale')")
    group.add_argument("--partitions", type=int, default=1,
                       help="sequences and items in P partitions, each written by its own worker (default 1: "
                            "the classic shard names)")
    group.add_argument("--workers", type=int, default=1, help="processes writing shards (default 1)")
    group.add_argument("--memory-limit", help="the engine's memory limit, e.g. 4GB (it spills beyond it; "
                                              "default: half the memory, at most 4GB)")
    group.add_argument("--threads", type=int, help="the engine's threads (default: every core)")
    group.add_argument("--defer-shards", action="store_true",
                       help="stop once the sequences are partitioned; write the shards with "
                            "tools/write_shards.py (e.g. a SLURM array: slurm/convert.sh)")
