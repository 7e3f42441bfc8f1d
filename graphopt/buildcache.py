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

Housekeeping: a build's temporary file carries its process id, so the temporary
files of a build that was killed are removed by the next build of that kind (once
their process is gone, or after a day). The cache holds at most
``$GRAPHOPT_CACHE_MAX_MB`` (default 2048) MiB: past that, the least recently used
entries go. ``cache_info()`` and ``clear_cache()`` are ``graphopt cache info|clear``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
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
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:16]}.{os.getpid()}.", suffix=suffix, dir=folder)  # mode 0600
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
        with contextlib.suppress(OSError):
            os.utime(final)  # recently used: the size limit evicts the least recently used first
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

    remove_stale_temp_files(folder)
    from graphopt.progress import step

    with step(f"building {kind} (cached for next time)"):
        _publish(folder, final, suffix, build_and_sign)
    enforce_size_limit(keep=final)
    return final


def write_cached_text(kind: str, key: str, suffix: str, text: str,
                      valid: Callable[[Path], bool] | None = None) -> Path:
    def build(tmp: Path) -> None:
        tmp.write_text(text)

    return cached_file(kind, key, suffix, build, valid)


# -- housekeeping -------------------------------------------------------------------------------

DEFAULT_MAX_MB = 2048
_STALE_AFTER_S = 24 * 3600  # a temporary file this old is no one's, whatever its process id says


def max_bytes() -> int:
    raw = os.environ.get("GRAPHOPT_CACHE_MAX_MB", "")
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        raise GraphoptError(f"GRAPHOPT_CACHE_MAX_MB={raw!r}: expected a number of MiB") from None
    return int(mb * 2**20)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's process
        return True
    return True


def _temp_pid(name: str) -> int | None:
    """The process id in a temporary file's name (``.<entry>.<pid>.<random><suffix>``), or None."""
    parts = name.split(".")
    for p in parts[2:4]:
        if p.isdigit():
            return int(p)
    return None


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".")


def remove_stale_temp_files(folder: Path, now: float | None = None) -> list[Path]:
    """Remove the temporary files of builds that were killed: their process is gone (and a minute has
    passed), or they are over a day old. A running build's files are left alone."""
    now = time.time() if now is None else now
    removed = []
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            if not _is_temp(p) or not _trusted(p):
                continue
            try:
                age = now - p.lstat().st_mtime
            except OSError:
                continue
            pid = _temp_pid(p.name)
            if age > _STALE_AFTER_S or (age > 60 and (pid is None or not _pid_alive(pid))):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def _entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every regular file of ours under the cache's kind folders (links are never followed)."""
    out = []
    if not root.is_dir() or root.is_symlink():
        return out
    for kind in sorted(root.iterdir()):
        if not kind.is_dir() or kind.is_symlink():
            continue
        for p in sorted(kind.iterdir()):
            if _trusted(p):
                # another thread or process may rename or remove a file between the listing and
                # here (a temporary file published, an entry evicted): it is no longer ours to count
                with contextlib.suppress(FileNotFoundError):
                    out.append((p, p.lstat()))
    return out


def enforce_size_limit(keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Remove least recently used entries (with their sidecars) until the cache fits ``limit`` bytes."""
    limit = max_bytes() if limit is None else limit
    files = _entries(cache_root())
    total = sum(st.st_size for _, st in files)
    if total <= limit:
        return []
    sizes = {p: st.st_size for p, st in files}
    entries = sorted((st.st_mtime, p) for p, st in files if not _is_temp(p) and not p.name.endswith(".sha256"))
    removed = []
    for _, p in entries:
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        for f in (p, p.with_name(p.name + ".sha256")):
            with contextlib.suppress(OSError):
                f.unlink()
                total -= sizes.get(f, 0)
                removed.append(f)
    return removed


def cache_info() -> dict:
    """Where the cache is, its limit, and per kind its entries and bytes (temporary files apart)."""
    root = cache_root()
    kinds: dict[str, dict] = {}
    temp = {"files": 0, "bytes": 0}
    for p, st in _entries(root):
        if _is_temp(p):
            temp["files"] += 1
            temp["bytes"] += st.st_size
            continue
        k = kinds.setdefault(p.parent.name, {"entries": 0, "bytes": 0})
        k["entries"] += not p.name.endswith(".sha256")
        k["bytes"] += st.st_size
    return {"root": str(root), "max_bytes": max_bytes(), "bytes": sum(k["bytes"] for k in kinds.values()),
            "kinds": kinds, "temporary": temp}


def clear_cache(kinds: list[str] | None = None) -> dict:
    """Remove the cache's files (of ``kinds`` only, when given); returns what went.

    >>> clear_cache(["cuda-emu"])   # doctest: +SKIP
    {'files': 12, 'bytes': 3514368}
    """
    root = cache_root()
    if kinds:
        have = {p.parent.name for p, _ in _entries(root)}
        unknown = [k for k in kinds if k not in have]
        if unknown:
            raise GraphoptError(f"the cache at {root} has no kind {unknown[0]!r} "
                                f"(it has: {', '.join(sorted(have)) or 'nothing'})")
    files = bytes_ = 0
    for p, st in _entries(root):
        if kinds and p.parent.name not in kinds:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            files += 1
            bytes_ += st.st_size
    return {"files": files, "bytes": bytes_}
