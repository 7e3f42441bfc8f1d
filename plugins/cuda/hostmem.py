"""Aligned host buffers: what emulated kernels read and write.

Vectorized kernels load ``float4`` (16 bytes) and the arena aligns buffers to
64 bytes, so every host buffer handed to an emulated kernel starts on a
64-byte boundary.

>>> a = aligned_empty((3, 5), "float32")
>>> a.ctypes.data % 64
0
"""
from __future__ import annotations

import numpy as np

ALIGN = 64


def aligned_empty(shape, dtype, align: int = ALIGN) -> np.ndarray:
    dtype = np.dtype(dtype)
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
