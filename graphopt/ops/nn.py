"""Neural-network ops: Conv, ConvTranspose, Gemm, MatMul and the pools.

Convolution is im2col over a stride-trick window view plus one batched matmul
(groups are the batch), so the work runs in BLAS; ConvTranspose is the matmul
followed by a col2im scatter-add (a loop over kernel offsets, never over
pixels). float16/bfloat16 inputs are computed in float32 and cast back; other
dtypes are kept. Normalizations and softmax live in ``norm.py``.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import REQUIRED, broadcast_shapes, in_type, register_op
from .windows import SAME, geometry, infer_sizes, pad_spatial, spatial_attrs, window_view


def compute_dtype(dt: np.dtype) -> np.dtype:
    """The dtype to compute in: half precision goes through float32 (NumPy's float16 math is slow and lossy)."""
    dt = np.dtype(dt)
    half = (dt.kind == "f" and dt.itemsize < 4) or dt.kind == "V"  # ml_dtypes' bfloat16/float8 are kind V
    return np.dtype(np.float32) if half else dt


def _as_compute(*arrays):
    dt = compute_dtype(arrays[0].dtype)
    return [None if a is None else np.asarray(a, dtype=dt) for a in arrays]


def _kernel_shape(attrs: dict, w_shape) -> list[int]:
    ks = attrs.get("kernel_shape")
    if ks:
        return [int(k) for k in ks]
    if w_shape is None or any(not isinstance(d, int) for d in w_shape[2:]):
        raise ShapeError("kernel_shape is not given and the weight's shape is unknown")
    return list(w_shape[2:])


# ---------------------------------------------------------------------------
# Conv


def _conv_family_infer(channels_and_sizes):
    """Inference for Conv-like ops: (N, channels, *spatial), the last two from ``channels_and_sizes``."""

    def infer(node: Node, attrs: dict):
        x, w = in_type(node, 0), in_type(node, 1)
        if x is None:
            return [None]
        if x.shape is None or w is None or w.shape is None:
            return [TensorType(x.dtype, None if x.shape is None else (x.shape[0],) + (None,) * (len(x.shape) - 1))]
        m, sizes = channels_and_sizes(x.shape, w.shape, _kernel_shape(attrs, w.shape), attrs)
        return [TensorType(x.dtype, (x.shape[0], m, *sizes))]

    return infer


_conv_infer = _conv_family_infer(lambda xs, ws, ks, attrs: (ws[0], infer_sizes(xs[2:], ks, attrs)))


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict) -> np.ndarray:
    """N-D grouped convolution, ``x`` (N, C, *S), ``w`` (M, C/group, *K) -> (N, M, *O).

    >>> conv(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 2, 2), np.float32), None, {})[0, 0]
    array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    out_dtype = x.dtype
    x, w, b = _as_compute(x, w, b)
    ks = _kernel_shape(attrs, w.shape)
    r = len(ks)
    if x.ndim != r + 2 or w.ndim != r + 2:
        raise ShapeError(f"Conv of a {x.ndim}-D input with a {w.ndim}-D weight and {r}-D kernel_shape")
    n, c = x.shape[:2]
    m = w.shape[0]
    g = int(attrs.get("group", 1))
    if c % g or m % g or w.shape[1] != c // g:
        raise ShapeError(f"Conv: {c} input channels, weight {list(w.shape)} and group={g} do not fit")
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    out, pb, pe = geometry(x.shape[2:], ks, attrs)
    xp = pad_spatial(x, pb, pe)
    v = window_view(xp, ks, strides, dilations, out)          # (N, C, *O, *K)
    cg, mg = c // g, m // g
    k_size, o_size = math.prod(ks), math.prod(out)
    v = v.reshape((n, g, cg) + tuple(out) + tuple(ks))         # splitting C keeps it a view
    # im2col: (N, G, Cg*K, O), contiguous, so that each group's product is one GEMM
    order = (0, 1, 2) + tuple(range(3 + r, 3 + 2 * r)) + tuple(range(3, 3 + r))
    cols = v.transpose(order).reshape(n, g, cg * k_size, o_size)
    y = np.matmul(w.reshape(g, mg, cg * k_size), cols)         # (N, G, Mg, O)
    y = y.reshape((n, m) + tuple(out))
    if b is not None:
        y += b.reshape((m,) + (1,) * r)
    return y.astype(out_dtype, copy=False)


@register_op("Conv", inputs=["X", "W", "?B"],
             attrs={"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None,
                    "strides": None}, infer=_conv_infer)
def conv_kernel(inputs, attrs, ctx):
    x, w = inputs[:2]
    b = inputs[2] if len(inputs) > 2 else None
    return [conv(x, w, b, attrs)]


# ---------------------------------------------------------------------------
# ConvTranspose


def _convt_geometry(sizes, ks, attrs):
    """Output sizes and begin pads of a transposed conv (pads may be negative: zeros are added)."""
    r = len(ks)
    strides, dilations, pb, pe = spatial_attrs(attrs, ks)
    out_pad = list(attrs.get("output_padding") or [0] * r)
    out_shape = attrs.get("output_shape")
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    full = [(n - 1) * s + (k - 1) * d + 1 + p if isinstance(n, int) else None
            for n, s, k, d, p in zip(sizes, strides, ks, dilations, out_pad)]
    if out_shape or auto_pad in SAME:
        if out_shape:
            target = list(out_shape)[-r:]
        else:  # n * stride, or the full result where that is shorter (no negative padding: onnxruntime)
            target = [None if f is None else min(n * s, f) for n, s, f in zip(sizes, strides, full)]
        begins = []
        for f, t in zip(full, target):
            if f is None or t is None:
                begins.append(None)
                continue
            total = f - t
            # the odd pixel goes to the end for SAME_UPPER, to the beginning otherwise (ONNX, ORT)
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return target, begins
    return [None if f is None else f - b - e for f, b, e in zip(full, pb, pe)], list(pb)


def _convt_channels_and_sizes(xs, ws, ks, attrs):
    m = ws[1] * int(attrs.get("group", 1)) if isinstance(ws[1], int) else None
    return m, _convt_geometry(xs[2:], ks, attrs)[0]


_convt_infer = _conv_family_infer(_convt_channels_and_sizes)


@register_op("ConvTranspose", inputs=["X", "W", "?B"],
             attrs={"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
                    "output_padding": None, "output_shape": None, "pads": None, "strides": None},
             infer=_convt_infer)
def conv_transpose(inputs, attrs, ctx):
    """Transposed convolution: ``w^T @ x`` per group, then col2im (scatter-add per kernel offset)."""
    x, w = inputs[:2]
    out_dtype = x.dtype
    x, w, b = _as_compute(x, w, inputs[2] if len(inputs) > 2 else None)
    ks = _kernel_shape(attrs, w.shape)
    r = len(ks)
    n, c = x.shape[:2]
    g = int(attrs.get("group", 1))
    mg = w.shape[1]
    m = mg * g
    if c % g or w.shape[0] != c:
        raise ShapeError(f"ConvTranspose: {c} input channels, weight {list(w.shape)} and group={g} do not fit")
    cg = c // g
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    ins = x.shape[2:]
    out, begins = _convt_geometry(ins, ks, attrs)
    k_size, i_size = math.prod(ks), math.prod(ins)
    wt = w.reshape(g, cg, mg * k_size).transpose(0, 2, 1)       # (G, Mg*K, Cg)
    cols = np.matmul(wt, x.reshape(n, g, cg, i_size))             # (N, G, Mg*K, I)
    cols = cols.reshape((n, m) + tuple(ks) + tuple(ins))
    # buffer covering both the full result and the requested window (which may extend past it)
    lo = [min(0, bgn) for bgn in begins]
    full = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(ins, strides, ks, dilations)]
    hi = [max(f, bgn + o) for f, bgn, o in zip(full, begins, out)]
    buf = np.zeros((n, m) + tuple(h - l for h, l in zip(hi, lo)), dtype=cols.dtype)
    for kk in itertools.product(*[range(k) for k in ks]):
        dst = tuple(slice(k * d - l, k * d - l + (i - 1) * s + 1, s)
                    for k, d, l, i, s in zip(kk, dilations, lo, ins, strides))
        buf[(slice(None), slice(None)) + dst] += cols[(slice(None), slice(None)) + kk]
    y = buf[(slice(None), slice(None)) + tuple(slice(bgn - l, bgn - l + o) for bgn, l, o in zip(begins, lo, out))]
    if b is not None:
        y = y + b.reshape((m,) + (1,) * r)
    return [np.ascontiguousarray(y).astype(out_dtype, copy=False)]


# ---------------------------------------------------------------------------
# Gemm, MatMul


def _gemm_infer(node: Node, attrs: dict):
    a, b = in_type(node, 0), in_type(node, 1)
    if a is None:
        return [None]
    if a.shape is None or b is None or b.shape is None:
        return [TensorType(a.dtype, (None, None))]
    m = a.shape[1] if attrs["transA"] else a.shape[0]
    n = b.shape[0] if attrs["transB"] else b.shape[1]
    return [TensorType(a.dtype, (m, n))]


@register_op("Gemm", inputs=["A", "B", "?C"], attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
             infer=_gemm_infer)
def gemm(inputs, attrs, ctx):
    """``alpha * A' @ B' + beta * C`` with ``C`` broadcast to the result."""
    a, b = inputs[:2]
    c = inputs[2] if len(inputs) > 2 else None
    out_dtype = a.dtype
    a, b, c = _as_compute(a, b, c)
    if attrs["transA"]:
        a = a.T
    if attrs["transB"]:
        b = b.T
    y = a @ b
    if attrs["alpha"] != 1.0:
        y = y * np.asarray(attrs["alpha"], dtype=y.dtype) if y.dtype.kind == "f" else y * attrs["alpha"]
    if c is not None and attrs["beta"] != 0.0:
        y = y + (c if attrs["beta"] == 1.0 else c * attrs["beta"])
    return [np.asarray(y).astype(out_dtype, copy=False)]


def matmul_shape(a, b):
    """Result shape of ``np.matmul`` on shapes whose dims may be symbolic (None if a rank is unknown)."""
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        raise ShapeError("MatMul of a scalar")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    ka, kb = a2[-1], b2[-2]
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ShapeError(f"MatMul of shapes {list(a)} and {list(b)}: inner dims {ka} and {kb} differ")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = tuple(batch) + ((a2[-2],) if len(a) > 1 else ()) + ((b2[-1],) if len(b) > 1 else ())
    return out


def _matmul_infer(node: Node, attrs: dict):
    a, b = in_type(node, 0), in_type(node, 1)
    if a is None:
        return [None]
    return [TensorType(a.dtype, matmul_shape(a.shape, None if b is None else b.shape))]


@register_op("MatMul", inputs=["A", "B"], infer=_matmul_infer)
def matmul(inputs, attrs, ctx):
    a, b = inputs
    out_dtype = a.dtype
    a, b = _as_compute(a, b)
    return [np.asarray(np.matmul(a, b)).astype(out_dtype, copy=False)]


def _einsum_terms(equation: str, n_inputs: int) -> tuple[list[str], str]:
    """Input terms and the output term (implicit mode: the letters seen once, sorted, after '...')."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ShapeError(f"Einsum equation {equation!r} names {len(terms)} operands, the node has {n_inputs}")
    if not arrow:
        letters = "".join(terms).replace("...", "")
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


def _einsum_infer(node: Node, attrs: dict):
    types = [in_type(node, i) for i in range(len(node.inputs))]
    if not types or any(t is None for t in types):
        return [None]
    dt = types[0].dtype
    if any(t.shape is None for t in types):
        return [TensorType(dt, None)]
    terms, out = _einsum_terms(attrs["equation"], len(types))
    dims: dict[str, object] = {}
    ell = []
    for term, t in zip(terms, types):
        head, has_ell, tail = term.partition("...")
        n_ell = len(t.shape) - len(head) - len(tail) if has_ell else 0
        named = list(zip(head, t.shape[:len(head)])) + list(zip(tail, t.shape[len(t.shape) - len(tail):]))
        for c, d in named:
            if dims.get(c) in (None, 1) or (isinstance(d, int) and d != 1 and not isinstance(dims[c], int)):
                dims[c] = d
        if has_ell:
            ell.append(tuple(t.shape[len(head):len(head) + n_ell]))
    batch = broadcast_shapes(*ell) if ell else ()
    head, has_ell, tail = out.partition("...")
    shape = [dims.get(c) for c in head] + (list(batch) if has_ell else []) + [dims.get(c) for c in tail]
    return [TensorType(dt, tuple(shape))]


@register_op("Einsum", inputs=["*Inputs"], attrs={"equation": REQUIRED}, infer=_einsum_infer)
def einsum(inputs, attrs, ctx):
    """``np.einsum`` with path optimization, so contractions go through BLAS."""
    out_dtype = inputs[0].dtype
    arrays = _as_compute(*inputs)
    terms, out = _einsum_terms(attrs["equation"], len(inputs))
    y = np.einsum(",".join(terms) + "->" + out, *arrays, optimize=len(arrays) > 1)
    return [np.asarray(y).astype(out_dtype, copy=False)]


# ---------------------------------------------------------------------------
# pools


def _pool_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None] * len(node.outputs)
    if x.shape is None:
        shape = None
    else:
        shape = (*x.shape[:2], *infer_sizes(x.shape[2:], attrs["kernel_shape"], attrs, bool(attrs["ceil_mode"]),
                                                  pool=True))
    types = [TensorType(x.dtype, shape)]
    if len(node.outputs) > 1:
        types.append(TensorType("int64", shape))
    return types


def _pool_windows(x: np.ndarray, attrs: dict, pad_value):
    """The window view of ``x`` for a pool, plus the geometry: out sizes, the begin and end pads
    of the attributes (or auto_pad), strides, dilations."""
    ks = list(attrs["kernel_shape"])
    if x.ndim != len(ks) + 2:
        raise ShapeError(f"pool over a {x.ndim}-D input with a {len(ks)}-D kernel_shape")
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    out, pb, pe = geometry(x.shape[2:], ks, attrs, bool(attrs.get("ceil_mode", 0)), pool=True)
    # ceil_mode's last window may run past the end padding: pad (with the neutral value) until it fits
    ext = [max(e, (o - 1) * s + (k - 1) * d + 1 - n - b)
           for o, s, k, d, n, b, e in zip(out, strides, ks, dilations, x.shape[2:], pb, pe)]
    xp = pad_spatial(x, pb, ext, pad_value)
    return window_view(xp, ks, strides, dilations, out), out, pb, pe, strides, dilations


def _lowest(dt: np.dtype):
    return -np.inf if dt.kind == "f" else np.iinfo(dt).min


_POOL_ATTRS = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None, "kernel_shape": REQUIRED, "pads": None,
               "strides": None}


@register_op("MaxPool", inputs=["X"], outputs=["Y", "?Indices"],
             attrs={**_POOL_ATTRS, "storage_order": 0}, infer=_pool_infer)
def max_pool(inputs, attrs, ctx):
    """Max over each window; the optional Indices are flat positions in the unpadded input
    (row-major, or column-major over the spatial axes with ``storage_order=1``)."""
    x = inputs[0]
    if x.dtype.kind == "V" or x.dtype.name == "bfloat16":
        x = x.astype(np.float32)
    v, out, pb, _, strides, dilations = _pool_windows(x, attrs, _lowest(x.dtype))
    r = len(out)
    axes = tuple(range(2 + r, 2 + 2 * r))
    y = v.max(axis=axes).astype(inputs[0].dtype, copy=False)
    if ctx.node is None or len(ctx.node.outputs) < 2:
        return [y]
    n, c = x.shape[:2]
    ks = list(v.shape[2 + r:])
    flat = v.reshape(v.shape[:2 + r] + (math.prod(ks),))  # not -1: the windows may be none at all
    arg = np.argmax(flat, axis=-1)
    koff = np.unravel_index(arg, ks)
    coords = []
    for i in range(r):
        o = np.arange(out[i]).reshape((-1,) + (1,) * (r - 1 - i))
        coords.append(o * strides[i] - pb[i] + koff[i] * dilations[i])
    sizes = x.shape[2:]
    order = "F" if attrs["storage_order"] else "C"
    spatial = np.ravel_multi_index(tuple(np.broadcast_arrays(*coords)), sizes, order=order)
    base = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * math.prod(sizes)
    idx = spatial + base.reshape((n, c) + (1,) * r)
    return [y, idx.astype(np.int64)]


def _valid_counts(n: int, out: int, k: int, s: int, d: int, begin: int, lo: int, hi: int) -> np.ndarray:
    """Per output position along one axis: how many window taps fall in ``[lo, hi)`` (input coordinates)."""
    pos = np.arange(out)[:, None] * s - begin + np.arange(k)[None, :] * d
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def average_pool_counts(attrs: dict, sizes, out, pads_begin, pads_end, opset: int) -> list[np.ndarray]:
    """AveragePool's divisor along each spatial axis: per output position, the taps counted.

    count_include_pad counts the pads (explicit or auto), never the tail added for ceil_mode; a
    window wider than the padded input (one output by truncated division) counts its whole extent
    before opset 19 without ceil_mode, as onnxruntime's AveragePool-11 does, and its input (and
    pad) taps otherwise. The native CPU kernels divide by the same counts.

    >>> [c.tolist() for c in average_pool_counts({"kernel_shape": [3], "count_include_pad": 0, "ceil_mode": 0},
    ...                                          [4], [2], [0], [0], 17)]
    [[3, 3]]
    """
    ks = attrs["kernel_shape"]
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    counts = []
    for i, n in enumerate(sizes):
        pb, pe = pads_begin[i], pads_end[i]
        lo, hi = (-pb, n + pe) if attrs["count_include_pad"] else (0, n)
        dk = (ks[i] - 1) * dilations[i] + 1
        if attrs["count_include_pad"] and opset < 19 and not attrs.get("ceil_mode") and n + pb + pe < dk:
            hi = dk - pb
        counts.append(_valid_counts(n, out[i], ks[i], strides[i], dilations[i], pb, lo, hi))
    return counts


@register_op("AveragePool", inputs=["X"], attrs={**_POOL_ATTRS, "count_include_pad": 0}, infer=_pool_infer)
def average_pool(inputs, attrs, ctx):
    x = inputs[0]
    out_dtype = x.dtype
    (x,) = _as_compute(x)
    v, out, pb, pe, strides, dilations = _pool_windows(x, attrs, 0)
    r = len(out)
    total = v.sum(axis=tuple(range(2 + r, 2 + 2 * r)))
    count = np.ones((), np.int64)
    for i, cnt in enumerate(average_pool_counts(attrs, x.shape[2:], out, pb, pe, ctx.opset)):
        count = count[..., None] * cnt if i else cnt
    y = total / count.astype(total.dtype)
    return [y.astype(out_dtype, copy=False)]


@register_op("LpPool", inputs=["X"], attrs={**_POOL_ATTRS, "p": 2}, infer=_pool_infer)
def lp_pool(inputs, attrs, ctx):
    x = inputs[0]
    out_dtype = x.dtype
    (x,) = _as_compute(x)
    p = attrs["p"]
    v, out = _pool_windows(np.abs(x) ** p, attrs, 0)[:2]
    y = v.sum(axis=tuple(range(2 + len(out), v.ndim))) ** (1.0 / p)
    return [y.astype(out_dtype, copy=False)]


def _global_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    return [TensorType(x.dtype, None if x.shape is None else (*x.shape[:2], *(1,) * (len(x.shape) - 2)))]


def _global(op_type, fn):
    @register_op(op_type, inputs=["X"], infer=_global_infer, attrs={"p": 2} if op_type == "GlobalLpPool" else {})
    def kernel(inputs, attrs, ctx, _fn=fn):
        x = inputs[0]
        (xc,) = _as_compute(x)
        y = _fn(xc, tuple(range(2, x.ndim)), attrs)
        return [np.asarray(y).astype(x.dtype, copy=False)]

    kernel.__name__ = op_type.lower()


_global("GlobalAveragePool", lambda x, axes, a: x.mean(axis=axes, keepdims=True))
_global("GlobalMaxPool", lambda x, axes, a: x.max(axis=axes, keepdims=True))
_global("GlobalLpPool", lambda x, axes, a: (np.abs(x) ** a["p"]).sum(axis=axes, keepdims=True) ** (1.0 / a["p"]))


from . import norm as _norm  # noqa: E402,F401  (registers the normalizations and softmax)
