"""Replacing a folder so that readers see the old or the new version, never half of one."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replace_folder(path: str | os.PathLike, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it takes the place of ``path``.

    Entries named in ``keep`` move from the old folder into the new one (a dataset keeps its feature stores).
    If the block raises, the temp folder is removed and ``path`` is untouched. The swap is two renames: a crash
    between them leaves the complete old version under a hidden ``.<name>.old-*`` name and no half folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{token}"
    if path.exists():
        for name in keep:
            if (path / name).exists():
                os.replace(path / name, tmp / name)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
