"""Aligned host buffers: what emulated kernels read and write.

Vectorized kernels load ``float4`` (16 bytes) and the arena aligns buffers to
64 bytes, so every host buffer handed to an emulated kernel starts on a
64-byte boundary. Under ``GRAPHOPT_EMU_CHECK`` (``emucheck.py``) ``buffer_empty``
gives each buffer an allocation of exactly its size, so that AddressSanitizer's
red zone starts right after its last byte.

>>> a = aligned_empty((3, 5), "float32")
>>> a.ctypes.data % 64
0
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from . import emucheck

ALIGN = 64


def aligned_empty(shape, dtype, align: int = ALIGN) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.hasobject:  # strings: only host nodes read them, and NumPy cannot view bytes as references
        return np.empty(shape, dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + n].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray, align: int = ALIGN) -> np.ndarray:
    """``a`` itself when C-contiguous and aligned, else an aligned contiguous copy."""
    if a.flags.c_contiguous and a.ctypes.data % align == 0:
        return a
    out = aligned_empty(a.shape, a.dtype, align)
    out[...] = a
    return out


_libc = None


def exact_empty(shape, dtype, align: int = ALIGN) -> np.ndarray:
    """An aligned array in a C allocation of exactly its size (``posix_memalign``), freed with
    the array: under AddressSanitizer the bytes right after it are a red zone, not slack.

    >>> exact_empty((3,), "float32").ctypes.data % 64
    0
    """
    global _libc
    dtype = np.dtype(dtype)
    if dtype.hasobject:  # as in aligned_empty: no kernel reads an array of references
        return np.empty(shape, dtype)
    if _libc is None:
        _libc = ctypes.CDLL(None)
        _libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
        _libc.free.argtypes = [ctypes.c_void_p]
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    p = ctypes.c_void_p()
    if _libc.posix_memalign(ctypes.byref(p), align, max(n, 1)) != 0 or not p.value:
        raise MemoryError(f"cannot allocate {n} bytes for an emulated kernel's buffer")
    holder = (ctypes.c_uint8 * max(n, 1)).from_address(p.value)
    weakref.finalize(holder, _libc.free, p.value)
    return np.frombuffer(holder, np.uint8, count=n).view(dtype).reshape(shape)


def buffer_empty(shape, dtype) -> np.ndarray:
    """A buffer for emulated kernels: aligned, and its own exact allocation under a check.

    >>> buffer_empty((2, 2), "int8").shape
    (2, 2)
    """
    return exact_empty(shape, dtype) if emucheck.modes() else aligned_empty(shape, dtype)


def buffer_copy(a: np.ndarray) -> np.ndarray:
    """``a`` as an emulated kernel's buffer: ``aligned_copy``, or an exact copy under a check."""
    if not emucheck.modes():
        return aligned_copy(a)
    out = exact_empty(a.shape, a.dtype)
    out[...] = a
    return out
