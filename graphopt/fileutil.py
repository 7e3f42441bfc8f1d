"""Atomic file output: write to a temporary name in the same folder, then rename.

>>> with atomic_write(Path("out.json"), "w") as f:   # doctest: +SKIP
...     f.write("{}")
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb"):
    """Yield a file object; on success it replaces ``path``, on error nothing is left."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        from .errors import GraphoptError

        raise GraphoptError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
