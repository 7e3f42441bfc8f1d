"""Sliding-window geometry shared by Conv, ConvTranspose and the pools.

One place decides how ``kernel_shape``, ``strides``, ``dilations``, ``pads``,
``auto_pad`` and ``ceil_mode`` turn into output sizes and the padding actually
applied, for concrete sizes (kernels) and for symbolic ones (inference), so the
two can never disagree. ``window_view`` is the im2col view the kernels reduce
or multiply over, made with stride tricks (no copy, no Python loop per pixel).

>>> out_size(5, 3, stride=2, dilation=1, pad_begin=1, pad_end=1)
(3, 1, 1)
>>> out_size(5, 2, stride=2, dilation=1, auto_pad="SAME_UPPER")
(3, 0, 1)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import ShapeError

SAME = ("SAME_UPPER", "SAME_LOWER")


def out_size(n: int, k: int, stride: int = 1, dilation: int = 1, pad_begin: int = 0, pad_end: int = 0,
             auto_pad: str = "NOTSET", ceil_mode: bool = False, pool: bool = False) -> tuple[int, int, int]:
    """Output length and the (begin, end) padding really used along one spatial axis.

    A window wider than the (padded) input is an error for a convolution; for a pool
    (``pool=True``) the output length is ``(span / stride) + 1`` with the division
    truncated toward zero, as ONNX's shape inference and onnxruntime compute it: a
    window less than one stride too wide still gives one output, which reads only
    the input it covers (``out_size(2, 3, stride=2, pool=True)`` is ``(1, 0, 0)``).
    """
    dk = (k - 1) * dilation + 1
    if auto_pad in SAME:
        out = -(-n // stride)
        total = max(0, (out - 1) * stride + dk - n)
        # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning
        pad_begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        return out, pad_begin, total - pad_begin
    if auto_pad == "VALID":
        pad_begin = pad_end = 0
    span = n + pad_begin + pad_end - dk
    if span < 0 and pool and span > -2 * stride:
        return -(-span // stride) + 1, pad_begin, pad_end  # 1 or 0 (truncated, not floored, division)
    if span < 0:
        raise ShapeError(f"window of {dk} does not fit in {n} + padding {pad_begin}+{pad_end}")
    if ceil_mode:
        out = -(-span // stride) + 1
        # the last window must start inside the input or the begin padding (as ORT and PyTorch do)
        if (out - 1) * stride >= n + pad_begin:
            out -= 1
    else:
        out = span // stride + 1
    return out, pad_begin, pad_end


def spatial_attrs(attrs: dict, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """strides, dilations, begin pads and end pads with their defaults filled in."""
    r = len(kernel)
    strides = list(attrs.get("strides") or [1] * r)
    dilations = list(attrs.get("dilations") or [1] * r)
    pads = list(attrs.get("pads") or [0] * (2 * r))
    if len(strides) != r or len(dilations) != r or len(pads) != 2 * r:
        raise ShapeError(f"strides/dilations/pads do not match a {r}-D kernel {list(kernel)}")
    return strides, dilations, pads[:r], pads[r:]


def geometry(sizes: Sequence[int], kernel: Sequence[int], attrs: dict, ceil_mode: bool = False,
             pool: bool = False):
    """``(out_sizes, pads_begin, pads_end)`` for concrete spatial ``sizes`` (``pool``: see ``out_size``)."""
    strides, dilations, pb, pe = spatial_attrs(attrs, kernel)
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    res = [out_size(n, k, s, d, b, e, auto_pad, ceil_mode, pool)
           for n, k, s, d, b, e in zip(sizes, kernel, strides, dilations, pb, pe)]
    return [r[0] for r in res], [r[1] for r in res], [r[2] for r in res]


def infer_sizes(sizes: Sequence, kernel: Sequence[int], attrs: dict, ceil_mode: bool = False,
                pool: bool = False) -> list:
    """Output spatial dims for dims that may be symbolic.

    A symbolic dim survives when the window provably keeps the length (stride 1
    with SAME padding or padding of the window's extent, as in 3x3/pad-1 convs);
    otherwise it becomes unknown.
    """
    strides, dilations, pb, pe = spatial_attrs(attrs, kernel)
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    out = []
    for n, k, s, d, b, e in zip(sizes, kernel, strides, dilations, pb, pe):
        if isinstance(n, int):
            out.append(out_size(n, k, s, d, b, e, auto_pad, ceil_mode, pool)[0])
        elif s == 1 and (auto_pad in SAME or (auto_pad != "VALID" and b + e == (k - 1) * d)
                         or (k - 1) * d == 0):
            out.append(n)
        else:
            out.append(None)
    return out


def pad_spatial(x: np.ndarray, pads_begin: Sequence[int], pads_end: Sequence[int], value=0) -> np.ndarray:
    """``x`` (N, C, *spatial) padded with ``value`` on its spatial axes (no copy when no padding)."""
    if not any(pads_begin) and not any(pads_end):
        return x
    width = [(0, 0), (0, 0)] + [(int(b), int(e)) for b, e in zip(pads_begin, pads_end)]
    return np.pad(x, width, mode="constant", constant_values=value)


def window_view(xp: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                out: Sequence[int]) -> np.ndarray:
    """Read-only view ``(N, C, *out, *kernel)`` of the padded input ``xp``.

    Element ``[n, c, o..., k...]`` is ``xp[n, c, o*stride + k*dilation ...]``;
    ``xp`` must be large enough for the last window (the caller pads it so).
    """
    r = len(kernel)
    for i in range(r):
        need = (out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        if need > xp.shape[2 + i]:
            raise ShapeError(f"window reads {need} elements along spatial axis {i}, input has {xp.shape[2 + i]}")
    st = xp.strides
    shape = tuple(xp.shape[:2]) + tuple(out) + tuple(kernel)
    strides_ = st[:2] + tuple(st[2 + i] * strides[i] for i in range(r)) + tuple(st[2 + i] * dilations[i]
                                                                            for i in range(r))
    return as_strided(xp, shape, strides_, writeable=False)
