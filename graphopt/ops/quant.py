"""Quantization ops: ONNX's QDQ and integer ops, and graphopt's fused int8 ops.

ONNX ops (exact ONNX semantics, checked against ``onnx.reference`` in tests):
``QuantizeLinear`` / ``DequantizeLinear`` (per-tensor, per-axis, blocked;
uint8/int8/uint16/int16/uint4/int4 and saturating float8), ``DynamicQuantizeLinear``,
``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``.

graphopt's fused int8 ops (domain ``ai.graphopt``) are what ``lower_qdq_int8``
makes of QDQ patterns; a GPU backend implements them with dp4a / int8 mma:

* ``QConv(x, x_scale, x_zp, w, w_scale, w_zp, ?y_scale, ?y_zp, ?bias)``
* ``QGemm(a, a_scale, a_zp, b, b_scale, b_zp, ?y_scale, ?y_zp, ?bias)``  (attr ``transB``)
* ``QMatMul(a, a_scale, a_zp, b, b_scale, b_zp, ?y_scale, ?y_zp, ?bias)``
* ``QAdd(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)``

Their contract, which the NumPy kernels below implement exactly in integers:

1. ``acc = sum((x - x_zp) * (w - w_zp)) + bias`` in int32 (``bias`` is int32 with
   scale ``x_scale * w_scale`` and zero point 0, per output channel).
2. The real multiplier ``M = x_scale * w_scale[c] / y_scale`` (float64 arithmetic
   on the float32 scales) is written ``M = m0 * 2**-shift`` with ``m0`` an integer in
   ``[2**30, 2**31)`` (``quantize_multiplier``).
3. ``y = rshift_round_half_even(acc * m0, shift) + y_zp`` in int64: the product
   is rounded to the nearest integer, **ties to even** (the rule of
   ``QuantizeLinear``), then the zero point is added.
4. The activation epilogue clamps in the quantized domain (``Relu``: ``y >= y_zp``;
   ``Clip``: ``Q(min) <= y <= Q(max)``), which equals quantizing the activated real
   value because quantization is monotone; then ``y`` saturates to its type.

Without ``y_scale`` the op returns float32 ``acc * x_scale * w_scale`` (+ the
activation): the dequantized output, for a last layer whose result stays float.
"""
from __future__ import annotations

import itertools

import numpy as np

from .. import dtypes
from ..errors import GraphoptError, ShapeError
from ..ir import TensorType
from .registry import broadcast_shapes, in_type, register_op

FUSED_DOMAIN = "ai.graphopt"

# integer range of each quantized type
QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
          "uint4": (0, 15), "int4": (-8, 7), "uint2": (0, 3), "int2": (-2, 1), "int32": (-2 ** 31, 2 ** 31 - 1)}
_FLOAT8 = ("float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz")


def _dtype_name(a: np.ndarray) -> str:
    return dtypes.from_numpy(a.dtype)


# ---------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear


def expand_param(p: np.ndarray, shape: tuple, axis: int, block_size: int = 0) -> np.ndarray:
    """Broadcast a scale or zero point to ``shape``: scalar, per-axis (1-D) or blocked.

    >>> expand_param(np.array([1., 2.]), (2, 3), axis=0).shape
    (2, 1)
    """
    p = np.asarray(p)
    if p.ndim == 0 or (p.size == 1 and not block_size):
        return p.reshape(())
    rank = len(shape)
    axis = axis % rank if rank else 0
    if not block_size:
        if p.ndim != 1 or p.shape[0] != shape[axis]:
            raise ShapeError(f"per-axis scale/zero point of shape {list(p.shape)} does not fit axis {axis} "
                             f"of an input of shape {list(shape)}")
        dims = [1] * rank
        dims[axis] = p.shape[0]
        return p.reshape(dims)
    if p.ndim != rank:
        raise ShapeError(f"blocked scale of shape {list(p.shape)} must have the rank of the input {list(shape)}")
    rep = np.repeat(p, block_size, axis=axis)
    rep = np.take(rep, np.arange(shape[axis]), axis=axis)
    if rep.shape != tuple(shape):
        raise ShapeError(f"blocked scale of shape {list(p.shape)} (block_size {block_size}) does not fit "
                         f"an input of shape {list(shape)}")
    return rep


def quantize(x: np.ndarray, scale, zero_point=None, *, axis: int = 1, block_size: int = 0,
             dtype: str = "uint8", saturate: bool = True) -> np.ndarray:
    """ONNX ``QuantizeLinear``: ``saturate(rint(x / scale) + zero_point)``, ties to even.

    The division is done in the input's float type (as ONNX's reference does);
    NaN saturates to the type's lowest value, as in onnxruntime and ONNX's reference.

    >>> quantize(np.array([0.5, 1.5, 300.], np.float32), np.float32(1.0), np.uint8(0))
    array([  0,   2, 255], dtype=uint8)
    """
    x = np.asarray(x)
    s = expand_param(np.asarray(scale), x.shape, axis, block_size)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = x / s
    if dtype in _FLOAT8 or dtype == "float4e2m1":
        target = dtypes.to_numpy(dtype)
        q = q.astype(np.float32)
        if saturate:
            import ml_dtypes

            fmax = float(ml_dtypes.finfo(target).max)
            q = np.where(np.isinf(q), np.sign(q) * fmax, np.clip(q, -fmax, fmax)) if q.size else q
        return q.astype(target)
    if dtype not in QRANGE or dtype == "int32":
        raise GraphoptError(f"QuantizeLinear to {dtype} is not supported")
    lo, hi = QRANGE[dtype]
    r = np.rint(q).astype(np.float64)
    r = np.where(np.isnan(r), -np.inf, r)  # after the zero point too: saturated to lo
    if zero_point is not None:
        r = r + expand_param(np.asarray(zero_point), x.shape, axis, block_size).astype(np.float64)
    return np.clip(r, lo, hi).astype(dtypes.to_numpy(dtype))


def dequantize(x: np.ndarray, scale, zero_point=None, *, axis: int = 1, block_size: int = 0,
               out_dtype=None) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(float32(x) - zero_point) * scale``, in the scale's type.

    >>> dequantize(np.array([0, 2, 255], np.uint8), np.float32(0.5), np.uint8(1))
    array([ -0.5,   0.5, 127. ], dtype=float32)
    """
    x = np.asarray(x)
    scale = np.asarray(scale)
    dx = x.astype(np.float32)
    if zero_point is not None and _dtype_name(x) not in _FLOAT8:
        zp = np.asarray(zero_point)
        if zp.dtype != x.dtype:
            raise GraphoptError(f"DequantizeLinear: zero point is {zp.dtype}, input is {x.dtype}")
        dx = dx - expand_param(zp, x.shape, axis, block_size)
    y = dx * expand_param(scale, x.shape, axis, block_size)
    return y.astype(out_dtype if out_dtype is not None else scale.dtype)


def _q_infer(node, attrs):
    t = in_type(node, 0)
    zp = in_type(node, 2)
    if zp is not None:
        dt = zp.dtype
    elif attrs.get("output_dtype"):
        dt = dtypes.from_onnx(attrs["output_dtype"])
    else:
        dt = "uint8"
    return [TensorType(dt, None if t is None else t.shape)]


@register_op("QuantizeLinear", inputs=["x", "y_scale", "?y_zero_point"],
             attrs={"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0},
             infer=_q_infer)
def quantize_linear(inputs, attrs, ctx):
    x, s = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    if zp is not None:
        dt = _dtype_name(zp)
    elif attrs.get("output_dtype"):
        dt = dtypes.from_onnx(attrs["output_dtype"])
    else:
        dt = "uint8"
    if attrs.get("precision"):
        pt = dtypes.to_numpy(dtypes.from_onnx(attrs["precision"]))
        x, s = x.astype(pt), np.asarray(s).astype(pt)
    return [quantize(x, s, zp, axis=attrs["axis"], block_size=attrs["block_size"], dtype=dt,
                     saturate=bool(attrs["saturate"]))]


def _dq_infer(node, attrs):
    t, st = in_type(node, 0), in_type(node, 1)
    if attrs.get("output_dtype"):
        dt = dtypes.from_onnx(attrs["output_dtype"])
    elif st is not None:
        dt = st.dtype
    else:
        return [None]
    return [TensorType(dt, None if t is None else t.shape)]


@register_op("DequantizeLinear", inputs=["x", "x_scale", "?x_zero_point"],
             attrs={"axis": 1, "block_size": 0, "output_dtype": 0}, infer=_dq_infer)
def dequantize_linear(inputs, attrs, ctx):
    x, s = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    out = dtypes.to_numpy(dtypes.from_onnx(attrs["output_dtype"])) if attrs.get("output_dtype") else None
    return [dequantize(x, s, zp, axis=attrs["axis"], block_size=attrs["block_size"], out_dtype=out)]


def _dql_infer(node, attrs):
    t = in_type(node, 0)
    return [TensorType("uint8", None if t is None else t.shape), TensorType("float32", ()),
            TensorType("uint8", ())]


@register_op("DynamicQuantizeLinear", inputs=["x"], outputs=["y", "y_scale", "y_zero_point"], infer=_dql_infer)
def dynamic_quantize_linear(inputs, attrs, ctx):
    """uint8 with the range [min(0, min x), max(0, max x)] measured at run time."""
    x = inputs[0]
    maxx = np.float32(max(0.0, float(np.max(x)))) if x.size else np.float32(0)
    minx = np.float32(min(0.0, float(np.min(x)))) if x.size else np.float32(0)
    scale = np.float32(1.0 if maxx == minx else (maxx - minx)) / np.float32(255)
    zp = np.rint(max(0.0, min(255.0, np.float32(0) - minx / scale)))
    y = np.clip(np.rint(x / scale) + zp, 0, 255)
    return [y.astype(np.uint8), np.array(scale, dtype=x.dtype), np.array(zp, dtype=np.uint8)]


# ---------------------------------------------------------------------------
# integer convolution and matmul (exact)


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul through float64 BLAS: exact while |sum| < 2**53, which int8/int16
    products over any realistic K satisfy (K * 2**30 < 2**53 for K < 8M)."""
    return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)


def conv_geometry(in_spatial, kernel, strides, pads, dilations, auto_pad: str):
    """Output spatial dims and the resolved ``pads`` (begin..., end...) of a convolution."""
    nd = len(kernel)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    out = []
    for d in range(nd):
        size, k, s, dl = in_spatial[d], kernel[d], strides[d], dilations[d]
        ek = (k - 1) * dl + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max(0, (o - 1) * s + ek - size)
            small, big = total // 2, total - total // 2
            pads[d], pads[d + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        elif auto_pad == "VALID":
            pads[d] = pads[d + nd] = 0
            o = (size - ek) // s + 1
        else:
            o = (size + pads[d] + pads[d + nd] - ek) // s + 1
        out.append(o)
    return out, pads, strides, dilations


def conv_int(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """Exact integer N-d convolution (im2col): ``x`` (N, C, *S), ``w`` (M, C/g, *K) -> int64."""
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    group = int(attrs.get("group") or 1)
    out_sp, pads, strides, dil = conv_geometry(x.shape[2:], kernel, attrs.get("strides"), attrs.get("pads"),
                                               attrs.get("dilations"), attrs.get("auto_pad") or "NOTSET")
    nd = len(kernel)
    n, c = x.shape[:2]
    m = w.shape[0]
    if c % group or m % group or w.shape[1] * group != c:
        raise ShapeError(f"conv: {c} input channels, weight {list(w.shape)} and group {group} do not fit")
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[d], pads[d + nd]) for d in range(nd)])
    cols = []
    for off in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(slice(off[d] * dil[d], off[d] * dil[d] + (out_sp[d] - 1) * strides[d] + 1, strides[d])
                   for d in range(nd))
        cols.append(xp[(slice(None), slice(None)) + sl])
    p = int(np.prod(out_sp)) if out_sp else 1
    kk = len(cols)
    col = np.stack(cols, axis=2).reshape(n, group, (c // group) * kk, p)
    wm = w.reshape(group, m // group, (c // group) * kk)
    y = _exact_matmul(wm[None], col)  # (n, g, m/g, p)
    return y.reshape((n, m, *out_sp))


def _conv_infer_shape(node, attrs, x_i: int = 0, w_i: int = 3) -> tuple | None:
    xt, wt = in_type(node, x_i), in_type(node, w_i)
    if xt is None or wt is None or xt.shape is None or wt.shape is None:
        return None
    kernel = list(attrs.get("kernel_shape") or wt.shape[2:])
    if not all(isinstance(d, int) for d in list(xt.shape[2:]) + kernel):
        return (xt.shape[0], wt.shape[0]) + (None,) * len(kernel)
    out_sp, *_ = conv_geometry(xt.shape[2:], kernel, attrs.get("strides"), attrs.get("pads"),
                               attrs.get("dilations"), attrs.get("auto_pad") or "NOTSET")
    return (xt.shape[0], wt.shape[0], *out_sp)


def _matmul_shape(a, b) -> tuple | None:
    if a is None or b is None:
        return None
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return tuple(b[:-2]) + (b[-1],)
    if len(b) == 1:
        return tuple(a[:-1])
    batch = broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return None if batch is None else batch + (a[-2], b[-1])


_CONV_ATTRS = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None,
               "strides": None}


def _zp(a, dt):
    return np.zeros((), dt) if a is None else a


@register_op("ConvInteger", inputs=["x", "w", "?x_zero_point", "?w_zero_point"], attrs=dict(_CONV_ATTRS),
             infer=lambda n, a: [TensorType("int32", _conv_infer_shape(n, a, 0, 1))])
def conv_integer(inputs, attrs, ctx):
    x, w = inputs[0], inputs[1]
    xzp = inputs[2] if len(inputs) > 2 else None
    wzp = inputs[3] if len(inputs) > 3 else None
    xi = x.astype(np.int64) - (0 if xzp is None else np.asarray(xzp).astype(np.int64).reshape(()))
    wi = w.astype(np.int64)
    if wzp is not None:
        wzp = np.asarray(wzp).astype(np.int64)
        wi = wi - (wzp.reshape((-1,) + (1,) * (w.ndim - 1)) if wzp.size > 1 else wzp.reshape(()))
    return [conv_int(xi, wi, attrs).astype(np.int32)]


def _mmi_infer(node, attrs):
    a, b = in_type(node, 0), in_type(node, 1)
    return [TensorType("int32", _matmul_shape(a and a.shape, b and b.shape))]


def _sub_zp_rows(a: np.ndarray, zp) -> np.ndarray:
    """``a - zp`` where ``zp`` is scalar or per-row (1-D over the second-to-last axis)."""
    a = a.astype(np.int64)
    if zp is None:
        return a
    zp = np.asarray(zp).astype(np.int64)
    return a - (zp.reshape(-1, 1) if zp.size > 1 else zp.reshape(()))


@register_op("MatMulInteger", inputs=["A", "B", "?a_zero_point", "?b_zero_point"], infer=_mmi_infer)
def matmul_integer(inputs, attrs, ctx):
    a, b = inputs[0], inputs[1]
    azp = inputs[2] if len(inputs) > 2 else None
    bzp = inputs[3] if len(inputs) > 3 else None
    ai = _sub_zp_rows(a, azp)
    bi = b.astype(np.int64) - (0 if bzp is None else np.asarray(bzp).astype(np.int64))
    return [_exact_matmul(ai, bi).astype(np.int32)]


def _requant_float(acc: np.ndarray, mult: np.ndarray, zp, out_dtype) -> np.ndarray:
    """ONNX's reference requantization for QLinear* ops: ``rint(acc * M + zp)``, M in float32."""
    dt = np.dtype(out_dtype)
    lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
    r = acc.astype(np.float64) * mult.astype(np.float64)
    if zp is not None:
        r = r + np.asarray(zp).astype(np.float64)
    return np.clip(np.rint(r), lo, hi).astype(dt)


def _qlinearconv_infer(node, attrs):
    zt = in_type(node, 7)
    xt = in_type(node, 0)
    dt = zt.dtype if zt is not None else (xt.dtype if xt is not None else None)
    return [TensorType(dt, _conv_infer_shape(node, attrs, 0, 3))] if dt else [None]


@register_op("QLinearConv", inputs=["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point",
                                    "y_scale", "y_zero_point", "?B"], attrs=dict(_CONV_ATTRS),
             infer=_qlinearconv_infer)
def qlinear_conv(inputs, attrs, ctx):
    x, xs, xzp, w, ws, wzp, ys, yzp = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    xi = x.astype(np.int64) - np.asarray(_zp(xzp, x.dtype)).astype(np.int64).reshape(())
    wzp = np.asarray(_zp(wzp, w.dtype)).astype(np.int64)
    wi = w.astype(np.int64) - (wzp.reshape((-1,) + (1,) * (w.ndim - 1)) if wzp.size > 1 else wzp.reshape(()))
    acc = conv_int(xi, wi, attrs)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    ws = np.asarray(ws, np.float32)
    mult = np.asarray(xs, np.float32) * ws / np.asarray(ys, np.float32)
    if mult.size > 1:
        mult = mult.reshape((1, -1) + (1,) * (acc.ndim - 2))
    acc = acc.astype(np.int32)
    return [_requant_float(acc, mult, yzp, (yzp if yzp is not None else x).dtype)]


def _qlinearmatmul_infer(node, attrs):
    a, b, z = in_type(node, 0), in_type(node, 3), in_type(node, 7)
    dt = z.dtype if z is not None else (a.dtype if a is not None else None)
    return [TensorType(dt, _matmul_shape(a and a.shape, b and b.shape))] if dt else [None]


@register_op("QLinearMatMul", inputs=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point",
                                      "y_scale", "y_zero_point"], infer=_qlinearmatmul_infer)
def qlinear_matmul(inputs, attrs, ctx):
    a, as_, azp, b, bs, bzp, ys, yzp = inputs
    ai = _sub_zp_rows(a, azp)
    bi = b.astype(np.int64) - (0 if bzp is None else np.asarray(bzp).astype(np.int64))
    acc = _exact_matmul(ai, bi).astype(np.int32)
    as_ = np.asarray(as_, np.float32)
    if as_.size > 1:
        as_ = as_.reshape(-1, 1)
    mult = as_ * np.asarray(bs, np.float32) / np.asarray(ys, np.float32)
    return [_requant_float(acc, mult, yzp, (yzp if yzp is not None else a).dtype)]


# ---------------------------------------------------------------------------
# fixed-point requantization shared by the fused ops (and by backends that
# implement them: the same m0/shift constants, the same rounding)


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """Write positive multipliers ``m`` as ``m0 * 2**-shift``, ``m0`` in ``[2**30, 2**31)``.

    >>> quantize_multiplier(np.array([0.5, 0.75]))
    (array([1073741824, 1610612736]), array([31, 31]))
    """
    m = np.asarray(m, np.float64)
    if np.any(~np.isfinite(m)) or np.any(m < 0):
        raise GraphoptError(f"requantization multiplier must be finite and non-negative, got {m.ravel()[:4]}")
    frac, exp = np.frexp(m)
    m0 = np.rint(frac * 2.0 ** 31).astype(np.int64)
    carry = m0 == 2 ** 31
    m0 = np.where(carry, m0 // 2, m0)
    exp = exp + carry
    shift = (31 - exp).astype(np.int64)
    shift = np.where(m0 == 0, 31, shift)
    if np.any(shift < 1):
        raise GraphoptError("requantization multiplier >= 2**30 is not supported")
    return m0, shift


def rshift_round_half_even(p: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``p / 2**shift`` rounded to the nearest integer, ties to even, in int64 arithmetic.

    >>> rshift_round_half_even(np.array([5, 6, 7, -5, -6]), np.array(1))
    array([ 2,  3,  4, -2, -3])
    """
    p = np.asarray(p, np.int64)
    s = np.minimum(np.asarray(shift, np.int64), 62)
    q = p >> s
    r = p - (q << s)
    half = np.int64(1) << (s - 1)
    up = (r > half) | ((r == half) & ((q & 1) == 1))
    return q + up.astype(np.int64)


def requantize(acc: np.ndarray, multiplier, zero_point, out_dtype: str, activation: str = "",
               act_min: float | None = None, act_max: float | None = None, y_scale=None) -> np.ndarray:
    """int32 accumulators -> quantized outputs, per the fused-op contract (module docstring)."""
    m0, shift = quantize_multiplier(multiplier)
    acc = np.clip(np.asarray(acc, np.int64), -2 ** 31, 2 ** 31 - 1)
    y = rshift_round_half_even(acc * m0, shift)
    zp = np.int64(0) if zero_point is None else np.asarray(zero_point).astype(np.int64)
    y = y + zp
    lo, hi = QRANGE[out_dtype]
    if activation == "Relu":
        y = np.maximum(y, zp)
    elif activation == "Clip":
        if act_min is not None:
            y = np.maximum(y, quantize(np.float32(act_min), y_scale, zero_point, dtype=out_dtype).astype(np.int64))
        if act_max is not None:
            y = np.minimum(y, quantize(np.float32(act_max), y_scale, zero_point, dtype=out_dtype).astype(np.int64))
    elif activation:
        raise GraphoptError(f"unknown fused activation {activation!r}")
    return np.clip(y, lo, hi).astype(dtypes.to_numpy(out_dtype))


def _float_epilogue(y: np.ndarray, activation: str, act_min, act_max) -> np.ndarray:
    if activation == "Relu":
        return np.maximum(y, np.float32(0))
    if activation == "Clip":
        if act_min is not None:
            y = np.maximum(y, np.float32(act_min))
        if act_max is not None:
            y = np.minimum(y, np.float32(act_max))
        return y
    if activation:
        raise GraphoptError(f"unknown fused activation {activation!r}")
    return y


def _finish(acc, in_scale, w_scale, ys, yzp, channel_shape, attrs):
    """Shared tail of QConv/QGemm/QMatMul: requantize (or dequantize when no y_scale)."""
    act, lo, hi = attrs.get("activation") or "", attrs.get("act_min"), attrs.get("act_max")
    s = np.asarray(in_scale, np.float32).astype(np.float64) * np.asarray(w_scale, np.float32).astype(np.float64)
    if s.size > 1:
        s = s.reshape(channel_shape)
    if ys is None:
        return _float_epilogue((acc.astype(np.float64) * s).astype(np.float32), act, lo, hi)
    mult = s / np.asarray(ys, np.float32).astype(np.float64)
    out_dt = _dtype_name(yzp) if yzp is not None else "uint8"
    return requantize(acc, mult, yzp, out_dt, act, lo, hi, np.asarray(ys, np.float32))


def _fused_out_type(node, shape):
    if node.input(6) is None:
        return TensorType("float32", shape)
    z = in_type(node, 7)
    return TensorType(z.dtype if z is not None else "uint8", shape)


_FUSED_INPUTS = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "?y_scale", "?y_zero_point",
                 "?bias"]
_EPILOGUE = {"activation": "", "act_min": None, "act_max": None}


def _opt(inputs, i):
    return inputs[i] if len(inputs) > i else None


def _centered(a, zp):
    a = a.astype(np.int64)
    return a if zp is None else a - np.asarray(zp).astype(np.int64).reshape(())


@register_op("QConv", domain=FUSED_DOMAIN, inputs=_FUSED_INPUTS, attrs={**_CONV_ATTRS, **_EPILOGUE},
             infer=lambda n, a: [_fused_out_type(n, _conv_infer_shape(n, a, 0, 3))])
def qconv(inputs, attrs, ctx):
    """Conv on int8/uint8 with int32 accumulation, fixed-point requantization and an epilogue."""
    x, xs, xzp, w, ws, wzp = inputs[:6]
    ys, yzp, bias = _opt(inputs, 6), _opt(inputs, 7), _opt(inputs, 8)
    wi = w.astype(np.int64)
    if wzp is not None:
        wzp = np.asarray(wzp).astype(np.int64)
        wi = wi - (wzp.reshape((-1,) + (1,) * (w.ndim - 1)) if wzp.size > 1 else wzp.reshape(()))
    acc = conv_int(_centered(x, xzp), wi, attrs)
    chan = (1, -1) + (1,) * (acc.ndim - 2)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(chan)
    return [_finish(acc, xs, ws, ys, yzp, chan, attrs)]


def _gemm_shape(node, attrs):
    a, b = in_type(node, 0), in_type(node, 3)
    if a is None or b is None or a.shape is None or b.shape is None:
        return None
    return (a.shape[0], b.shape[0] if attrs.get("transB") else b.shape[1])


def _weight_cols(b, bzp, trans: bool):
    """``b - b_zp`` as a (K, N) int64 matrix; ``b_zp`` scalar or per output column."""
    bi = b.astype(np.int64)
    if trans:
        bi = bi.T
    if bzp is not None:
        bi = bi - np.asarray(bzp).astype(np.int64).reshape(-1 if np.size(bzp) > 1 else ())
    return bi


@register_op("QGemm", domain=FUSED_DOMAIN, inputs=_FUSED_INPUTS, attrs={"transB": 0, **_EPILOGUE},
             infer=lambda n, a: [_fused_out_type(n, _gemm_shape(n, a))])
def qgemm(inputs, attrs, ctx):
    """A (M, K) x B (K, N) (or (N, K) with transB=1), per-column weight scales."""
    a, as_, azp, b, bs, bzp = inputs[:6]
    ys, yzp, bias = _opt(inputs, 6), _opt(inputs, 7), _opt(inputs, 8)
    acc = _exact_matmul(_centered(a, azp), _weight_cols(b, bzp, bool(attrs["transB"])))
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return [_finish(acc, as_, bs, ys, yzp, (1, -1), attrs)]


def _qmatmul_infer(node, attrs):
    a, b = in_type(node, 0), in_type(node, 3)
    return [_fused_out_type(node, _matmul_shape(a and a.shape, b and b.shape))]


@register_op("QMatMul", domain=FUSED_DOMAIN, inputs=_FUSED_INPUTS, attrs=dict(_EPILOGUE), infer=_qmatmul_infer)
def qmatmul(inputs, attrs, ctx):
    """Batched A (..., M, K) x B (..., K, N); per-column scales when B is a 2-D weight."""
    a, as_, azp, b, bs, bzp = inputs[:6]
    ys, yzp, bias = _opt(inputs, 6), _opt(inputs, 7), _opt(inputs, 8)
    bi = b.astype(np.int64) - (0 if bzp is None else np.asarray(bzp).astype(np.int64))
    acc = _exact_matmul(_centered(a, azp), bi)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return [_finish(acc, as_, bs, ys, yzp, (-1,), attrs)]


def _qadd_infer(node, attrs):
    a, b, z = in_type(node, 0), in_type(node, 3), in_type(node, 7)
    shape = None if a is None or b is None else broadcast_shapes(a.shape, b.shape)
    return [TensorType(z.dtype if z is not None else "uint8", shape)]


@register_op("QAdd", domain=FUSED_DOMAIN, inputs=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point",
                                                  "y_scale", "y_zero_point"],
             attrs=dict(_EPILOGUE), infer=_qadd_infer)
def qadd(inputs, attrs, ctx):
    """``y = Q(DQ(a) + DQ(b))`` in integers: both terms scaled by fixed-point multipliers
    ``a_scale/y_scale`` and ``b_scale/y_scale`` sharing one shift, summed, rounded half to even."""
    a, as_, azp, b, bs, bzp, ys, yzp = inputs
    ys64 = float(np.float32(ys))
    ma, mb = float(np.float32(as_)) / ys64, float(np.float32(bs)) / ys64
    big = max(ma, mb)
    if big == 0:
        m0a = m0b = np.int64(0)
        shift = np.int64(31)
    else:
        _, exp = np.frexp(big)
        shift = np.int64(31 - exp)
        if shift < 1:
            raise GraphoptError("QAdd: scale ratio >= 2**30 is not supported")
        m0a, m0b = np.int64(np.rint(ma * 2.0 ** shift)), np.int64(np.rint(mb * 2.0 ** shift))
    acc = _centered(a, azp) * m0a + _centered(b, bzp) * m0b
    y = rshift_round_half_even(acc, shift)
    out_dt = _dtype_name(yzp)
    zp = np.asarray(yzp).astype(np.int64)
    y = y + zp
    act = attrs.get("activation") or ""
    if act == "Relu":
        y = np.maximum(y, zp)
    elif act == "Clip":
        for bound, fn in ((attrs.get("act_min"), np.maximum), (attrs.get("act_max"), np.minimum)):
            if bound is not None:
                y = fn(y, quantize(np.float32(bound), np.float32(ys), yzp, dtype=out_dt).astype(np.int64))
    elif act:
        raise GraphoptError(f"unknown fused activation {act!r}")
    lo, hi = QRANGE[out_dt]
    return [np.clip(y, lo, hi).astype(yzp.dtype)]
