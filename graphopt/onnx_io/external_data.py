"""External tensor data: read only from beneath the model's folder; write next to the model.

Reading checks everything before a byte is allocated: the location is relative,
has no ``..`` component and no symbolic link anywhere beneath the model's
folder, crosses no mount point, names a regular file with a single hard link
(a second link would make a file outside the folder readable through it), and
``offset``/``length`` lie inside that file and match the tensor's declared shape. We read the bytes ourselves (rather than
``onnx.load_external_data_for_model``) so that these checks come first.

>>> buf = read_external(tensor, nbytes=24, base_dir=Path("models"), label="m.onnx")  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from onnx import TensorProto

from ..errors import ModelLoadError

_SEP = re.compile(r"[\\/]")
_ALIGN = 64  # offsets of written tensors, so that a reader can map them aligned


def _int_field(info: dict, key: str, where: str, label: str) -> int | None:
    if key not in info:
        return None
    try:
        v = int(info[key])
    except ValueError:
        raise ModelLoadError(f"{label}: {where} has a non-integer {key} {info[key]!r}") from None
    if v < 0:
        raise ModelLoadError(f"{label}: {where} has a negative {key} {v}")
    return v


def _check_location(loc: str, where: str, label: str) -> list[str]:
    """The path components of ``loc``, refusing anything that could leave the model's folder."""
    if not loc:
        raise ModelLoadError(f"{label}: {where} has no location")
    if "\x00" in loc:
        raise ModelLoadError(f"{label}: {where}: location contains a NUL byte")
    if os.path.isabs(loc) or loc[0] in "/\\" or re.match(r"^[A-Za-z]:", loc):
        raise ModelLoadError(f"{label}: {where}: absolute locations are refused (external data must lie "
                             f"beneath the model's folder)")
    parts = _SEP.split(loc)
    if ".." in parts:
        raise ModelLoadError(f"{label}: {where}: locations with '..' are refused (external data must lie "
                             f"beneath the model's folder)")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise ModelLoadError(f"{label}: {where}: location names no file")
    return parts


_RDONLY = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# a FIFO swapped in after the check must not block the open
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_WALK_WITH_FDS = bool(_NOFOLLOW) and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd


def _open_beneath(base_dir: Path, parts: list[str], where: str, label: str) -> tuple[int, Path]:
    """Open ``base_dir/parts...`` read-only, one component at a time, refusing symbolic links
    and anything but directories on the way and a regular file at the end."""
    cur = Path(base_dir)
    try:
        dfd = os.open(base_dir, _RDONLY | getattr(os, "O_DIRECTORY", 0)) if _WALK_WITH_FDS else None
        base_dev = os.fstat(dfd).st_dev if dfd is not None else os.stat(base_dir).st_dev
    except OSError as exc:
        raise ModelLoadError(f"{label}: {where}: cannot open the model's folder {base_dir} "
                             f"({exc.strerror or exc})") from None
    try:
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            cur = cur / p
            try:
                st = os.stat(p, dir_fd=dfd, follow_symlinks=False) if dfd is not None else os.lstat(cur)
            except OSError as exc:
                raise ModelLoadError(f"{label}: {where}: cannot open {cur} ({exc.strerror or exc})") from None
            if stat.S_ISLNK(st.st_mode):
                raise ModelLoadError(f"{label}: {where}: {cur} is a symbolic link, which is refused")
            if st.st_dev != base_dev:
                raise ModelLoadError(f"{label}: {where}: {cur} is on another file system mounted beneath the "
                                     f"model's folder, which is refused")
            if last and not stat.S_ISREG(st.st_mode):
                raise ModelLoadError(f"{label}: {where}: {cur} is not a regular file")
            if not last and not stat.S_ISDIR(st.st_mode):
                raise ModelLoadError(f"{label}: {where}: {cur} is not a folder")
            if dfd is None:
                continue
            flags = _RDONLY | _NOFOLLOW | (_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nfd = os.open(p, flags, dir_fd=dfd)
            except OSError as exc:
                raise ModelLoadError(f"{label}: {where}: cannot open {cur} ({exc.strerror or exc})") from None
            os.close(dfd)
            dfd = nfd
        if dfd is None:  # no dir_fd support: open the checked path, the last component unfollowed
            try:
                dfd = os.open(cur, _RDONLY | _NOFOLLOW | _NONBLOCK)
            except OSError as exc:
                raise ModelLoadError(f"{label}: {where}: cannot open {cur} ({exc.strerror or exc})") from None
        fst = os.fstat(dfd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise ModelLoadError(f"{label}: {where}: {cur} changed while it was being opened")
        if fst.st_nlink != 1:  # checked on the open file: a link made after the walk counts too
            raise ModelLoadError(f"{label}: {where}: {cur} has {fst.st_nlink} hard links, so it may be a file "
                                 f"from outside the model's folder; refused")
        fd, dfd = dfd, None
        return fd, cur
    finally:
        if dfd is not None:
            os.close(dfd)


def read_external(t: TensorProto, nbytes: int, base_dir: Path | None, label: str) -> np.ndarray:
    """The ``nbytes`` raw bytes of external tensor ``t`` as a uint8 array, after all checks."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    where = f"tensor {t.name!r} (external data {loc!r})"
    if base_dir is None:
        raise ModelLoadError(f"{label}: {where}: the model was not loaded from a file, so external data "
                             f"cannot be located (pass base_dir)")
    parts = _check_location(loc, where, label)
    offset = _int_field(info, "offset", where, label) or 0
    length = _int_field(info, "length", where, label)
    fd, path = _open_beneath(Path(base_dir), parts, where, label)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        if length is not None and offset + length > size:
            raise ModelLoadError(f"{label}: {where}: offset {offset} + length {length} is beyond the end of "
                                 f"{path.name} ({size} bytes)")
        if length is not None and length != nbytes:
            raise ModelLoadError(f"{label}: {where}: length {length} does not match the declared shape "
                                 f"{list(t.dims)} ({nbytes} bytes)")
        if offset + nbytes > size:
            raise ModelLoadError(f"{label}: {where}: the declared shape {list(t.dims)} needs {nbytes} bytes at "
                                 f"offset {offset}, beyond the end of {path.name} ({size} bytes)")
        buf = np.empty(nbytes, np.uint8)
        f.seek(offset)
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise ModelLoadError(f"{label}: {where}: {path.name} ended early")
            got += n
    return buf


class ExternalDataWriter:
    """Appends tensors to one open data file and returns ``TensorProto``s that point at them.

    >>> w = ExternalDataWriter(f, "model.onnx.data", threshold=1024)  # doctest: +SKIP
    >>> proto = w.tensor(np.zeros((512, 512), np.float32), "w")     # doctest: +SKIP
    """

    def __init__(self, f: BinaryIO, location: str, threshold: int = 1024):
        self.f = f
        self.location = location
        self.threshold = threshold
        self.offset = 0
        self.count = 0

    def wants(self, arr: np.ndarray) -> bool:
        return arr.dtype != object and arr.dtype.kind not in "US" and arr.nbytes >= self.threshold

    def tensor(self, arr: np.ndarray, name: str) -> TensorProto:
        from .tensors import array_to_tensor

        inline = array_to_tensor(arr, name)
        if not self.wants(np.asarray(arr)):
            return inline
        raw = inline.raw_data
        pad = (-self.offset) % _ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        self.f.write(raw)
        t = TensorProto(name=name, data_type=inline.data_type, dims=inline.dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.offset += len(raw)
        self.count += 1
        return t
