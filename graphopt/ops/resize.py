"""Resize (opset 10, 11-13 and 18+ forms) and Upsample (opset 7-9).

Resizing is separable: one axis at a time, each output position maps back to a
source coordinate (``coordinate_transformation_mode``), which picks a few source
taps with weights (nearest: one tap; linear: two; cubic: four; antialiased
downscaling: a stretched filter with more taps). An axis is resized as a short
sum over taps of ``np.take`` along it, so the cost is ``taps x output size``.

>>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
>>> resize_array(x, [1, 1, 4, 4], [1, 1, 2, 2], mode="nearest", ctm="asymmetric")[0, 0, 0]
array([0., 0., 1., 1.], dtype=float32)
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..ir import Node, TensorType
from .registry import check_tensor_size, in_type, node_opset, normalize_axis, register_op


def source_coords(ctm: str, out_len: int, in_len: int, scale: float, roi=(0.0, 1.0)) -> np.ndarray:
    """Source coordinate of each output index along one axis (float64)."""
    x = np.arange(out_len, dtype=np.float64)
    if ctm == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if ctm == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if ctm == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros(out_len)
    if ctm == "asymmetric":
        return x / scale
    if ctm == "tf_crop_and_resize":
        start, end = float(roi[0]), float(roi[1])
        if out_len > 1:
            return start * (in_len - 1) + x * (end - start) * (in_len - 1) / (out_len - 1)
        return np.full(out_len, 0.5 * (start + end) * (in_len - 1))
    raise ShapeError(f"Resize: unknown coordinate_transformation_mode {ctm!r}")


def _nearest_index(xo: np.ndarray, mode: str, downscale: bool) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.ceil(xo - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(xo + 0.5)
    if mode == "floor":
        return np.floor(xo)
    if mode == "ceil":
        return np.ceil(xo)
    if mode == "simple":  # opset 10 Resize and Upsample (as ORT): ceil when shrinking, else floor
        return np.ceil(xo) if downscale else np.floor(xo)
    raise ShapeError(f"Resize: unknown nearest_mode {mode!r}")


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def axis_taps(xo: np.ndarray, in_len: int, scale: float, mode: str, *, nearest_mode: str = "round_prefer_floor",
              cubic_a: float = -0.75, exclude_outside: bool = False, antialias: bool = False):
    """``(indices, weights)`` of shape (out, taps): which source elements feed each output and how much."""
    if mode == "nearest":
        idx = _nearest_index(xo, nearest_mode, scale < 1)
        return np.clip(idx, 0, in_len - 1).astype(np.intp)[:, None], np.ones((len(xo), 1))
    base = np.floor(xo)
    ratio = xo - base
    # an exact source coordinate counts as ratio 1 from the pixel before it (ONNX's reference convention,
    # which only matters for which taps the stretched antialias filter covers)
    exact = ratio == 0
    base = np.where(exact, base - 1, base)
    ratio = np.where(exact, 1.0, ratio)
    s = min(scale, 1.0) if antialias else 1.0
    if mode == "linear":
        start = int(math.floor(-1 / s)) + 1
        offsets = np.arange(start, 2 - start)
        w = np.clip(1 - np.abs((offsets[None, :] - ratio[:, None]) * s), 0, 1)
    elif mode == "cubic":
        start = int(math.floor(-2 / s)) + 1
        offsets = np.arange(start, 2 - start)
        w = _cubic((offsets[None, :] - ratio[:, None]) * s, cubic_a)
    else:
        raise ShapeError(f"Resize: unknown mode {mode!r}")
    idx = base[:, None].astype(np.int64) + offsets[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
    if antialias or exclude_outside:
        tot = w.sum(axis=1, keepdims=True)
        w = w / np.where(tot == 0, 1.0, tot)
    return np.clip(idx, 0, in_len - 1).astype(np.intp), w


def resize_array(x: np.ndarray, out_sizes, scales, *, mode: str = "nearest", ctm: str = "half_pixel",
                 nearest_mode: str = "round_prefer_floor", cubic_a: float = -0.75, exclude_outside: bool = False,
                 extrapolation_value: float = 0.0, antialias: bool = False, roi=None) -> np.ndarray:
    """Resize ``x`` to ``out_sizes`` with per-axis ``scales`` (see the module docstring)."""
    if x.dtype.kind == "f" and x.dtype.itemsize >= 4:
        work = x.dtype
    else:
        work = np.dtype(np.float64 if x.dtype.kind in "iub" else np.float32)
    y = x.astype(work, copy=False)
    r = x.ndim
    for axis in range(r):
        n_in, n_out, sc = x.shape[axis], int(out_sizes[axis]), float(scales[axis])
        ax_roi = (0.0, 1.0) if roi is None else (roi[axis], roi[axis + r])
        if n_out == n_in and sc == 1.0 and (ctm != "tf_crop_and_resize" or tuple(ax_roi) == (0.0, 1.0)):
            continue
        if n_out == 0 or n_in == 0:
            shape = list(y.shape)
            shape[axis] = n_out
            y = np.zeros(shape, work)
            continue
        xo = source_coords(ctm, n_out, n_in, sc, ax_roi)
        idx, w = axis_taps(xo, n_in, sc, mode, nearest_mode=nearest_mode, cubic_a=cubic_a,
                           exclude_outside=exclude_outside, antialias=antialias)
        bshape = (1,) * axis + (n_out,) + (1,) * (r - axis - 1)
        if idx.shape[1] == 1:
            out = np.take(y, idx[:, 0], axis=axis)
        else:
            w = w.astype(work)
            out = np.take(y, idx[:, 0], axis=axis) * w[:, 0].reshape(bshape)
            for t in range(1, idx.shape[1]):
                out += np.take(y, idx[:, t], axis=axis) * w[:, t].reshape(bshape)
        if ctm == "tf_crop_and_resize":
            outside = ((xo < 0) | (xo > n_in - 1)).reshape(bshape)
            if outside.any():
                out = np.where(outside, work.type(extrapolation_value), out)
        y = out
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.round(y), info.min, info.max).astype(x.dtype)
    return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------
# the node forms


def _plan(shape, scales, sizes, axes, policy: str):
    """Full-rank ``(out_sizes, scales)`` from the given scales or sizes (and opset 18's axes/policy)."""
    r = len(shape)
    axes = list(range(r)) if axes is None else [normalize_axis(int(a), r) for a in axes]
    out = list(shape)
    sc = [1.0] * r
    if sizes is not None and len(sizes):
        sizes = [int(s) for s in sizes]
        if len(sizes) != len(axes):
            raise ShapeError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
        for a, s in zip(axes, sizes):
            out[a], sc[a] = s, s / shape[a] if shape[a] else 1.0
        if policy in ("not_larger", "not_smaller"):
            ratios = [sc[a] for a in axes]
            k = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out[a], sc[a] = int(k * shape[a] + 0.5), k
        elif policy != "stretch":
            raise ShapeError(f"Resize: unknown keep_aspect_ratio_policy {policy!r}")
    elif scales is not None and len(scales):
        if len(scales) != len(axes):
            raise ShapeError(f"Resize: {len(scales)} scales for {len(axes)} axes")
        for a, s in zip(axes, scales):
            sc[a] = float(s)
            out[a] = int(math.floor(shape[a] * float(s)))
    else:
        raise ShapeError("Resize needs scales or sizes")
    return out, sc, axes


def _full_roi(roi, axes, r):
    if roi is None or np.size(roi) == 0:
        return None
    roi = [float(v) for v in np.asarray(roi).reshape(-1)]
    if len(roi) == 2 * r:
        return roi
    full = [0.0] * r + [1.0] * r
    n = len(axes)
    for i, a in enumerate(axes):
        full[a], full[a + r] = roi[i], roi[i + n]
    return full


def _opt(inputs, i):
    return inputs[i] if len(inputs) > i and inputs[i] is not None and np.size(inputs[i]) else None


def _resize_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    r = len(x.shape)
    if node.op_type == "Upsample" or node_opset(node) < 11:  # scales as the second input or an attribute
        sizes, scales = None, node.input(1).const if node.input(1) is not None else attrs.get("scales")
    else:
        scales = node.input(2).const if node.input(2) is not None else None
        sizes = node.input(3).const if node.input(3) is not None else None
        if scales is not None and scales.size == 0:
            scales = None
        if sizes is not None and sizes.size == 0:
            sizes = None
    axes = attrs.get("axes")
    if scales is None and sizes is None:
        return [TensorType(x.dtype, (None,) * r)]
    all_axes = list(range(r)) if axes is None else [normalize_axis(a, r, node) for a in axes]
    if all(isinstance(x.shape[a], int) for a in all_axes):
        static = [d if isinstance(d, int) else 1 for d in x.shape]
        out, sc, _ = _plan(static, scales, sizes, axes, attrs.get("keep_aspect_ratio_policy") or "stretch")
        return [TensorType(x.dtype, tuple(o if a in all_axes else d for a, (o, d) in enumerate(zip(out, x.shape))))]
    # symbolic resized dims: only a scale of exactly 1 keeps them
    dims = list(x.shape)
    if scales is not None:
        for i, a in enumerate(all_axes):
            if not isinstance(dims[a], int) and float(np.asarray(scales).reshape(-1)[i]) != 1.0:
                dims[a] = None
            elif isinstance(dims[a], int):
                dims[a] = int(math.floor(dims[a] * float(np.asarray(scales).reshape(-1)[i])))
    else:
        for i, a in enumerate(all_axes):
            dims[a] = int(np.asarray(sizes).reshape(-1)[i])
        if (attrs.get("keep_aspect_ratio_policy") or "stretch") != "stretch":
            dims = [None if a in all_axes else d for a, d in enumerate(dims)]
    return [TensorType(x.dtype, tuple(dims))]


@register_op("Resize", inputs=["X", "?roi", "?scales", "?sizes"],
             attrs={"antialias": 0, "axes": None, "coordinate_transformation_mode": "half_pixel",
                    "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0,
                    "keep_aspect_ratio_policy": "stretch", "mode": "nearest", "nearest_mode": "round_prefer_floor"},
             infer=_resize_infer)
def resize(inputs, attrs, ctx):
    """Opset 11+: (X, roi, scales, sizes); opset 10: (X, scales) with asymmetric coordinates."""
    x = inputs[0]
    if ctx.opset < 11:
        return _upsample_like(x, inputs[1], attrs["mode"], ctx)
    out, sc, axes = _plan(x.shape, _opt(inputs, 2), _opt(inputs, 3), attrs.get("axes"),
                          attrs.get("keep_aspect_ratio_policy") or "stretch")
    check_tensor_size(out, x.dtype, ctx.node)
    mode = attrs["mode"]
    if attrs["antialias"] and mode == "nearest":
        raise UnsupportedOpError("Resize: antialias applies to linear and cubic modes, not nearest")
    return [resize_array(x, out, sc, mode=mode, ctm=attrs["coordinate_transformation_mode"],
                         nearest_mode=attrs["nearest_mode"], cubic_a=attrs["cubic_coeff_a"],
                         exclude_outside=bool(attrs["exclude_outside"]),
                         extrapolation_value=attrs["extrapolation_value"], antialias=bool(attrs["antialias"]),
                         roi=_full_roi(_opt(inputs, 1), axes, x.ndim))]


def _upsample_like(x, scales, mode, ctx=None):
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    out = [int(math.floor(d * s)) for d, s in zip(x.shape, scales)]
    check_tensor_size(out, x.dtype, ctx.node if ctx is not None else None)
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    return [resize_array(x, out, scales, mode=mode, ctm="asymmetric", nearest_mode="simple")]


@register_op("Upsample", inputs=["X", "?scales"], attrs={"mode": "nearest", "scales": None}, infer=_resize_infer)
def upsample(inputs, attrs, ctx):
    """Opset 7 (scales attribute) and 9 (scales input): asymmetric coordinates, nearest floors."""
    scales = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("scales")
    if scales is None:
        raise ShapeError("Upsample needs scales")
    return _upsample_like(inputs[0], scales, attrs["mode"], ctx)
