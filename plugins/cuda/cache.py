"""The build cache: content-addressed, owner-only, safe for concurrent processes.

Every artifact (an emulation shared library, a ptxas report, a cubin) is named
by the SHA-256 of everything that determines it: source, flags, compiler
version, graphopt version. A build writes to a private temporary name in the
same folder and is renamed into place, so readers see either nothing or a
whole file, and two processes building the same key at once both succeed.

>>> key = content_key("emu", "extern \\"C\\" ...", "-O2")   # doctest: +SKIP
>>> path = cached_file("emu", key, ".so", build=lambda tmp: compile_to(tmp))   # doctest: +SKIP

The folder is ``$GRAPHOPT_CACHE_DIR`` or ``~/.cache/graphopt``; it is created
0700, its files are 0600, and a folder owned by another user is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from graphopt.errors import GraphoptError


def graphopt_version() -> str:
    try:
        from importlib import metadata

        return metadata.version("graphopt")
    except Exception:  # a plain checkout without installed metadata
        return "0+unknown"


def cache_root() -> Path:
    env = os.environ.get("GRAPHOPT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "graphopt"


def _owner_only_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise GraphoptError(f"cache folder {path} belongs to another user; set GRAPHOPT_CACHE_DIR to a folder of yours")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def cache_dir(kind: str) -> Path:
    """The owner-only subfolder for one kind of artifact (``emu``, ``nvcc``, ``nvrtc``)."""
    root = _owner_only_dir(cache_root())
    return _owner_only_dir(root / f"cuda-{kind}")


def content_key(*parts: str | bytes) -> str:
    """SHA-256 over the parts, each length-prefixed so that boundaries count."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def cached_file(kind: str, key: str, suffix: str, build: Callable[[Path], None]) -> Path:
    """The cached artifact for ``key``, building it with ``build(tmp_path)`` when absent."""
    folder = cache_dir(kind)
    final = folder / f"{key[:40]}{suffix}"
    if final.exists():
        return final
    fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=suffix, dir=folder)  # mode 0600
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        build(tmp_path)
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, final)  # atomic: a concurrent builder of the same key simply wins or loses
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
    return final


def write_cached_text(kind: str, key: str, suffix: str, text: str) -> Path:
    def build(tmp: Path) -> None:
        tmp.write_text(text)

    return cached_file(kind, key, suffix, build)
