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
        set_mode(fd, file_mode(path))
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give (temp files start owner-only)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def set_mode(fd: int, mode: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.fchmod(fd, mode)
