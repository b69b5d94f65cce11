"""The one error guard of the tools/*.py scripts: an expected error is one line on stderr and exit 2.

    if __name__ == "__main__":
        with tool_errors():
            ...

Expected errors are the project's own (DataError, ConfigError: bad input, named in their message) and I/O errors
(a missing, read-only or full path: the path and the system's reason). Anything else is a bug and keeps its
traceback. Light on imports: a tool's ``--help`` stays fast.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from .errors import ConfigError
from .data.schema import DataError


def error_line(e: BaseException) -> str:
    """``e`` as the one line a user reads: an OSError names its path(s) and the system's reason."""
    if isinstance(e, OSError) and e.strerror:
        paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
        return f"{' -> '.join(paths)}: {e.strerror}" if paths else e.strerror
    return " ".join(str(e).split("\n")) or type(e).__name__


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    try:
        yield
    except (DataError, ConfigError, OSError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
