"""The build cache of compiled kernels (CUDA and native CPU): content-addressed, owner-only, safe for concurrent processes.

Every artifact (an emulation shared library, a ptxas report, a cubin) is named
by the SHA-256 of everything that determines it: source, flags, compiler
version, graphopt version. A build writes to a private temporary name in the
same folder and is renamed into place, so readers see either nothing or a
whole file, and two processes building the same key at once both succeed.

>>> key = content_key("emu", "extern \\"C\\" ...", "-O2")   # doctest: +SKIP
>>> path = cached_file("emu", key, ".so", build=lambda tmp: compile_to(tmp))   # doctest: +SKIP

The folder is ``$GRAPHOPT_CACHE_DIR`` or ``~/.cache/graphopt``; it is created
0700, its files are 0600, and a folder owned by another user is refused.

An entry is trusted only when it is a regular file (not a link) owned by this
user, writable by no one else, and its bytes match the SHA-256 in its sidecar
``<entry>.sha256`` (written, atomically too, before the entry is published). Anything else
(a truncated file from a crash or a full disk, an entry from an older graphopt
without a sidecar, a file another user planted, a file a caller's ``valid``
check rejects) is ignored and rebuilt in place.
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
    """The owner-only subfolder for one kind of artifact (``cuda-emu``, ``cuda-nvrtc``, ``cpu-native``)."""
    root = _owner_only_dir(cache_root())
    return _owner_only_dir(root / kind)


def content_key(*parts: str | bytes) -> str:
    """SHA-256 over the parts, each length-prefixed so that boundaries count."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _trusted(path: Path) -> bool:
    """A regular file of ours that no one else may write (a link or a foreign file is never trusted)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o022:
        return False
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def _intact(final: Path, sidecar: Path) -> bool:
    """The entry is ours and its bytes are the ones its builder published."""
    if not (_trusted(final) and _trusted(sidecar)):
        return False
    try:
        return sidecar.read_text().strip() == _digest(final)
    except (OSError, UnicodeDecodeError):
        return False


def _publish(folder: Path, final: Path, suffix: str, write: Callable[[Path], None]) -> None:
    """``write`` a private temporary file in ``folder`` and rename it to ``final`` (atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:16]}.", suffix=suffix, dir=folder)  # mode 0600
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, final)  # atomic: a concurrent builder of the same key simply wins or loses
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def cached_entry(kind: str, key: str, suffix: str, valid: Callable[[Path], bool] | None = None) -> Path | None:
    """The trusted entry for ``key`` (see the module docstring), or None: a lookup that builds nothing."""
    final = cache_dir(kind) / f"{key[:40]}{suffix}"
    if _intact(final, final.with_name(final.name + ".sha256")) and (valid is None or valid(final)):
        return final
    return None


def cached_file(kind: str, key: str, suffix: str, build: Callable[[Path], None],
                valid: Callable[[Path], bool] | None = None) -> Path:
    """The cached artifact for ``key``, building it with ``build(tmp_path)`` when absent or
    untrustworthy (see the module docstring); ``valid(path)`` may reject an entry's content
    (a JSON file that does not parse), which is then rebuilt too."""
    found = cached_entry(kind, key, suffix, valid)
    if found is not None:
        return found
    folder = cache_dir(kind)
    final = folder / f"{key[:40]}{suffix}"
    sidecar = final.with_name(final.name + ".sha256")
    digest: list[str] = []

    def build_and_sign(tmp: Path) -> None:
        build(tmp)
        digest.append(_digest(tmp))
        # the sidecar first: a reader that sees the new entry also sees its digest. Builders of one key
        # that produce different bytes (a compiler that stamps its output) only make readers rebuild.
        _publish(folder, sidecar, ".sha256", lambda t: t.write_text(digest[0] + "\n"))

    _publish(folder, final, suffix, build_and_sign)
    return final


def write_cached_text(kind: str, key: str, suffix: str, text: str,
                      valid: Callable[[Path], bool] | None = None) -> Path:
    def build(tmp: Path) -> None:
        tmp.write_text(text)

    return cached_file(kind, key, suffix, build, valid)
