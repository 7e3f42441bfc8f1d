"""The squeeze-excitation pieces on the native kernels: reductions over trailing axes and the
1x1 conv of a plane smaller than one vector (``native/reduce.h`` holds both kernels).

A squeeze-excitation block is GlobalAveragePool (or ReduceMean over H, W), two 1x1 convs
on the pooled 1x1 map, and a channel-broadcast Mul. On NumPy's paths its pieces cost far
more than they compute: ``x.mean(axis=(2, 3))`` reduces a short inner axis one row at a
time (40 us for 576 planes of 7x7), and the two small convs were a gemv, a bias add and an
epilogue pass each. Here each piece is one native call.

>>> fn = prepare_reduce("ReduceMean", 2, True, fallback)     # doctest: +SKIP  (None: no native kernels)
>>> fn(np.ones((1, 8, 7, 7), np.float32)).shape              # doctest: +SKIP
(1, 8, 1, 1)
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

_f32 = np.dtype(np.float32)

# the kernel's kind of each reduction (reduce.h: RED_SUM, RED_MEAN, RED_MAX)
REDUCE_KINDS = {"ReduceSum": 0, "ReduceMean": 1, "GlobalAveragePool": 1, "ReduceMax": 2, "GlobalMaxPool": 2}
PANEL = 64  # output channels per packed weight panel (reduce.h: SC_PANEL)
SCALE_MIN = 1024  # values below which NumPy's broadcast Mul is as fast as a native call


def _library():
    from .native import library

    return library()


def prepare_reduce(op_type: str, first: int, keepdims: bool, fallback: Callable) -> Callable | None:
    """``fn(x)``: ``op_type`` (a key of ``REDUCE_KINDS``) of float32 ``x`` over its axes from
    ``first`` on, keeping them as 1s with ``keepdims``, or None where the native kernels do not
    run. ``fallback(x)`` takes what the kernel does not: other dtypes, a rank that leaves no
    axis to reduce, an empty array, a non-contiguous one (NumPy reads it in place).

    The kernel's summation order (blocks summed in float32 lanes, then in double) is described
    in ``native/reduce.h``; the max is exact and propagates NaN as ``np.max``.
    """
    lib = _library()
    kind = REDUCE_KINDS.get(op_type)
    if lib is None or kind is None:
        return None
    reduce_rows = lib.reduce_rows
    shapes: dict[tuple, tuple] = {}

    def fn(x):
        if x.__class__ is not np.ndarray or x.dtype != _f32 or not x.flags.c_contiguous or x.size == 0 \
                or x.ndim <= first:
            return fallback(x)
        got = shapes.get(x.shape)
        if got is None:
            lead = x.shape[:first]
            out = lead + (1,) * (x.ndim - first) if keepdims else lead
            got = shapes[x.shape] = (out, math.prod(x.shape[first:]))
        y = np.empty(got[0], _f32)
        reduce_rows(x, y, got[1], kind)
        return y

    fn.native = True
    return fn


def prepare_channel_scale(shape: tuple, scale_shape: tuple, big: int, fallback: Callable,
                          fallback_inplace: Callable | None = None) -> tuple[Callable, Callable | None] | None:
    """``(fn, fn_inplace or None)`` for a float32 Mul of an array of ``shape`` (input ``big``) by
    one of ``scale_shape``, whose axes are those of ``shape`` up to some axis and 1 after it (a
    squeeze-excitation gate, s[N, C, 1, 1]): each row of the trailing axes times its own value,
    the same float32 products as NumPy's. NumPy's broadcast runs one short inner loop per row
    (12 us for 576 rows of 49); this is one pass. ``fn_inplace`` writes over input 0 (only
    when ``big`` is 0). Other shapes or dtypes run ``fallback`` / ``fallback_inplace``; None
    where the native kernels do not run, the shapes are not of that form, or the product is
    smaller than ``SCALE_MIN`` values.

    >>> fn, fn_inplace = prepare_channel_scale((1, 8, 7, 7), (1, 8, 1, 1), 0, np.multiply)   # doctest: +SKIP
    """
    lib = _library()
    k = len(scale_shape)
    while k > 0 and scale_shape[k - 1] == 1:
        k -= 1
    if lib is None or len(scale_shape) != len(shape) or k == 0 or tuple(scale_shape[:k]) != tuple(shape[:k]) \
            or math.prod(shape[k:]) < 2 or math.prod(shape) < SCALE_MIN:
        return None
    scale_rows, n, shape, scale_shape = lib.scale_rows, math.prod(shape[k:]), tuple(shape), tuple(scale_shape)

    def operands(a0, a1):
        x, s = (a0, a1) if big == 0 else (a1, a0)
        if x.__class__ is not np.ndarray or s.__class__ is not np.ndarray or x.shape != shape \
                or s.shape != scale_shape or x.dtype != _f32 or s.dtype != _f32 or not x.flags.c_contiguous \
                or not s.flags.c_contiguous:
            return None
        return x, s

    def fn(a0, a1):
        got = operands(a0, a1)
        if got is None:
            return fallback(a0, a1)
        y = np.empty(shape, _f32)
        scale_rows(got[0], got[1], y, n)
        return y

    def fn_inplace(a0, a1):
        got = operands(a0, a1)
        if got is None:
            return fallback_inplace(a0, a1)
        scale_rows(got[0], got[1], a0, n)
        return a0

    fn.native = fn_inplace.native = True
    return fn, fn_inplace if big == 0 and fallback_inplace is not None else None


def small_plane_conv(w: np.ndarray, bias: np.ndarray | None, attrs: dict, ks: list[int], strides: list[int],
                     prog, lo: float, hi: float) -> Callable | None:
    """``run(x, residual or None)`` for a float32 1x1, stride-1, unpadded, ungrouped conv whose
    plane is smaller than one vector (a squeeze-excitation FC, a classifier head on a pooled
    map): one native call computing W x + bias and then residual and clamp, or the epilogue
    program ``prog`` (``nativeexpr.conv_epilogue``), per position. None for other convs
    (NumPy's conv runs them) or where the native kernels are missing.

    W is packed once as panels of ``PANEL`` output channels, each (C, PANEL) contiguous, the
    channels padded with zeros to a multiple of 16.

    >>> run = small_plane_conv(w, None, {}, [1, 1], [1, 1], None, 0.0, math.inf)   # doctest: +SKIP
    >>> run(x, None)                                                                 # doctest: +SKIP
    """
    lib = _library()
    if lib is None or w.dtype != _f32 or ks != [1, 1] or strides != [1, 1] or int(attrs.get("group", 1)) != 1 \
            or any(attrs.get("pads") or []) or (attrs.get("auto_pad") or "NOTSET") not in ("NOTSET", "VALID"):
        return None
    m, c = w.shape[:2]
    mp = -(-m // 16) * 16
    wt = np.zeros((c, mp), np.float32)
    wt[:, :m] = w.reshape(m, c).T
    # panels of PANEL columns (the last one narrower), each stored (C, width) contiguously
    packed = np.concatenate([np.ascontiguousarray(wt[:, p:p + PANEL]).reshape(-1) for p in range(0, mp, PANEL)])
    b = None if bias is None else np.ascontiguousarray(bias, np.float32)
    code = None if prog is None else prog.code
    small_conv = lib.small_conv
    geometries: dict[tuple, np.ndarray] = {}
    lo, hi = float(lo), float(hi)

    def run(x, res):
        n, cx, h, wd = x.shape
        if cx != c:
            raise ValueError(f"Conv input {list(x.shape)} does not fit weight {list(w.shape)}, group=1")
        g = geometries.get(x.shape)
        if g is None:
            g = geometries[x.shape] = np.array([n, c, h * wd, m, mp], np.int64)
        y = np.empty((n, m, h, wd), _f32)
        if res is not None and (res.shape != y.shape or res.dtype != _f32 or not res.flags.c_contiguous):
            res = np.ascontiguousarray(np.broadcast_to(res, y.shape), _f32)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        small_conv(g, x, packed, b, res, y, lo, hi, code)
        return y

    run.native = True
    return run
