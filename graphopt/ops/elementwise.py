"""Pointwise and broadcasting ops: arithmetic, comparisons, logic, activations, Cast, Where.

Each row keeps the input dtype (ONNX ops do not promote): NumPy results are cast
back with ``_keep``.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import ShapeError
from ..ir import TensorType
from .registry import REQUIRED, broadcast_infer, register_op, same_as_input


def _keep(y, x):
    return np.asarray(y).astype(x.dtype, copy=False)


def _unary(op_type, fn, **kw):
    @register_op(op_type, inputs=["X"], infer=same_as_input(0), elementwise=True, **kw)
    def kernel(inputs, attrs, ctx, _fn=fn):
        x = inputs[0]
        return [_keep(_fn(x, attrs), x)]

    kernel.__name__ = op_type.lower()
    return kernel


def _sigmoid(x):
    # split by sign so that exp never overflows
    out = np.empty_like(x, dtype=np.result_type(x.dtype, np.float32))
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _erf(x):
    try:
        from scipy.special import erf
        return erf(x)
    except ImportError:  # pragma: no cover - scipy is optional
        import math
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def _gelu(x, approximate="none"):
    xf = x.astype(np.float64) if x.dtype != np.float64 else x
    if approximate == "tanh":
        return 0.5 * xf * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (xf + 0.044715 * xf ** 3)))
    return 0.5 * xf * (1.0 + _erf(xf / np.sqrt(2.0)))


_UNARY = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "Neg": lambda x, a: np.negative(x),
    "Abs": lambda x, a: np.abs(x),
    "Exp": lambda x, a: np.exp(x),
    "Log": lambda x, a: np.log(x),
    "Sqrt": lambda x, a: np.sqrt(x),
    "Reciprocal": lambda x, a: np.reciprocal(x),
    "Floor": lambda x, a: np.floor(x),
    "Ceil": lambda x, a: np.ceil(x),
    "Round": lambda x, a: np.round(x),
    "Sign": lambda x, a: np.sign(x),
    "Sin": lambda x, a: np.sin(x), "Cos": lambda x, a: np.cos(x), "Tan": lambda x, a: np.tan(x),
    "Asin": lambda x, a: np.arcsin(x), "Acos": lambda x, a: np.arccos(x), "Atan": lambda x, a: np.arctan(x),
    "Sinh": lambda x, a: np.sinh(x), "Cosh": lambda x, a: np.cosh(x),
    "Asinh": lambda x, a: np.arcsinh(x), "Acosh": lambda x, a: np.arccosh(x), "Atanh": lambda x, a: np.arctanh(x),
    "Tanh": lambda x, a: np.tanh(x),
    "Sigmoid": lambda x, a: _sigmoid(x),
    "Erf": lambda x, a: _erf(x),
    "Softplus": lambda x, a: np.logaddexp(0, x),
    "Softsign": lambda x, a: x / (1 + np.abs(x)),
}
for _name, _fn in _UNARY.items():
    _unary(_name, _fn)

_unary("LeakyRelu", lambda x, a: np.where(x >= 0, x, x * a["alpha"]), attrs={"alpha": 0.01})
_unary("Elu", lambda x, a: np.where(x >= 0, x, a["alpha"] * np.expm1(np.minimum(x, 0))), attrs={"alpha": 1.0})
_unary("Selu", lambda x, a: a["gamma"] * np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0))),
       attrs={"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875})
_unary("Celu", lambda x, a: np.maximum(0, x) + np.minimum(0, a["alpha"] * np.expm1(x / a["alpha"])),
       attrs={"alpha": 1.0})
_unary("ThresholdedRelu", lambda x, a: np.where(x > a["alpha"], x, 0), attrs={"alpha": 1.0})
_unary("HardSigmoid", lambda x, a: np.clip(a["alpha"] * x + a["beta"], 0, 1), attrs={"alpha": 0.2, "beta": 0.5})
_unary("HardSwish", lambda x, a: x * np.clip(x / 6.0 + 0.5, 0, 1))
_unary("Mish", lambda x, a: x * np.tanh(np.logaddexp(0, x)))
_unary("Gelu", lambda x, a: _gelu(x, a["approximate"]), attrs={"approximate": "none"})


@register_op("Identity", inputs=["input"], infer=same_as_input(0), elementwise=True)
def identity(inputs, attrs, ctx):
    """The input itself: a tensor, or a sequence (a list) or an empty optional (None) as it is."""
    return [inputs[0]]


@register_op("Not", inputs=["X"], infer=same_as_input(0), elementwise=True)
def not_(inputs, attrs, ctx):
    return [np.logical_not(inputs[0])]


@register_op("IsNaN", inputs=["X"], infer=same_as_input(0, "bool"), elementwise=True)
def isnan(inputs, attrs, ctx):
    return [np.isnan(inputs[0])]


@register_op("IsInf", inputs=["X"], infer=same_as_input(0, "bool"), elementwise=True,
             attrs={"detect_negative": 1, "detect_positive": 1})
def isinf(inputs, attrs, ctx):
    x = inputs[0]
    out = np.zeros(x.shape, bool)
    if attrs["detect_positive"]:
        out |= np.isposinf(x)
    if attrs["detect_negative"]:
        out |= np.isneginf(x)
    return [out]


def _binary(op_type, fn, out_dtype=None):
    @register_op(op_type, inputs=["A", "B"], infer=broadcast_infer(out_dtype), elementwise=True)
    def kernel(inputs, attrs, ctx, _fn=fn):
        a, b = inputs
        y = _fn(a, b)
        return [np.asarray(y) if out_dtype else _keep(y, a)]

    kernel.__name__ = op_type.lower()
    return kernel


def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        # ONNX integer Div truncates toward zero (C semantics), unlike NumPy's floor division
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.trunc(np.true_divide(a, b)).astype(a.dtype)
    return np.divide(a, b)


def _pow(a, b):
    if np.issubdtype(a.dtype, np.floating):
        return np.power(a, b.astype(a.dtype) if np.issubdtype(b.dtype, np.floating) else b)
    return np.power(a.astype(np.float64), b).astype(a.dtype)


_binary("Add", np.add)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)
_binary("Div", _div)
_binary("Pow", _pow)
_binary("PRelu", lambda x, s: np.where(x >= 0, x, x * s))
_binary("And", np.logical_and, "bool")
_binary("Or", np.logical_or, "bool")
_binary("Xor", np.logical_xor, "bool")
_binary("Equal", np.equal, "bool")
_binary("Less", np.less, "bool")
_binary("LessOrEqual", np.less_equal, "bool")
_binary("Greater", np.greater, "bool")
_binary("GreaterOrEqual", np.greater_equal, "bool")
_binary("BitwiseAnd", np.bitwise_and)
_binary("BitwiseOr", np.bitwise_or)
_binary("BitwiseXor", np.bitwise_xor)


def _variadic(op_type, fn):
    @register_op(op_type, inputs=["*data_0"], infer=broadcast_infer(), elementwise=True)
    def kernel(inputs, attrs, ctx, _fn=fn):
        out = inputs[0]
        for x in inputs[1:]:
            out = _fn(out, x)
        return [_keep(np.broadcast_to(out, np.broadcast_shapes(*[i.shape for i in inputs])), inputs[0])]

    kernel.__name__ = op_type.lower()


_variadic("Sum", np.add)
_variadic("Max", np.maximum)
_variadic("Min", np.minimum)


@register_op("Mean", inputs=["*data_0"], infer=broadcast_infer(), elementwise=True)
def mean(inputs, attrs, ctx):
    out = inputs[0].astype(np.float64)
    for x in inputs[1:]:
        out = out + x
    return [_keep(out / len(inputs), inputs[0])]


@register_op("Clip", inputs=["input", "?min", "?max"], attrs={"min": None, "max": None},
             infer=same_as_input(0), elementwise=True)
def clip(inputs, attrs, ctx):
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    y = x
    if lo is not None:
        y = np.maximum(y, lo)
    if hi is not None:
        y = np.minimum(y, hi)
    return [_keep(y, x)]


@register_op("Where", inputs=["condition", "X", "Y"], infer=broadcast_infer(dtype_from=1), elementwise=True)
def where(inputs, attrs, ctx):
    c, x, y = inputs
    return [_keep(np.where(c, x, y), x)]


def _cast_infer(node, attrs):
    t = node.input(0).type if node.input(0) is not None else None
    dt = dtypes.from_onnx(attrs["to"]) if isinstance(attrs["to"], int) else attrs["to"]
    return [TensorType(dt, None if t is None else t.shape)]


_FLOAT8 = frozenset({"float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"})


def cast_array(x: np.ndarray, to: str, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast semantics: float->int truncates; with ``saturate`` the float8 types clip to their
    largest finite value (NaN stays NaN); float8e8m0 rounds as ``round_mode`` says."""
    target = dtypes.to_numpy(to)
    if to == "bool":
        return x.astype(bool)
    if x.dtype == object or target == object:
        if target == object:
            return np.array([str(v) if not isinstance(v, float) else repr(v) for v in x.ravel()],
                            dtype=object).reshape(x.shape)
        return x.astype(np.float64).astype(target)
    if to == "float8e8m0":
        return _to_e8m0(x, saturate, round_mode).view(target)
    with np.errstate(invalid="ignore", over="ignore"):
        if to in _FLOAT8 and saturate and x.dtype.kind in "fV":
            import ml_dtypes

            info = ml_dtypes.finfo(target)
            x = np.clip(x.astype(np.float32), float(info.min), float(info.max))
        return x.astype(target)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float8e8m0 (a power of two 2**(e-127), e in 0..254; 255 is NaN) bits of ``x``'s magnitude."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.int32)
    frac = bits & 0x7FFFFF
    special = exp == 0xFF
    if round_mode == "up":
        up = frac > 0
    elif round_mode == "down":
        up = np.zeros(exp.shape, bool)
    elif round_mode == "nearest":
        guard, rnd, sticky = (bits & 0x400000) > 0, (bits & 0x200000) > 0, (bits & 0x1FFFFF) > 0
        up = guard & (rnd | sticky | (exp > 0))
    else:
        raise ShapeError(f"Cast: unknown round_mode {round_mode!r} (up, down or nearest)")
    up &= ~special
    if saturate:
        up &= exp != 0xFE
    out = np.where(special, 0xFF, np.minimum(exp + up, 0xFF))
    return out.astype(np.uint8)


@register_op("Cast", inputs=["input"], attrs={"to": REQUIRED, "saturate": 1, "round_mode": "up"}, infer=_cast_infer,
             elementwise=True)
def cast(inputs, attrs, ctx):
    to = dtypes.from_onnx(attrs["to"]) if isinstance(attrs["to"], int) else attrs["to"]
    return [cast_array(inputs[0], to, bool(attrs["saturate"]), attrs["round_mode"])]


def _castlike_infer(node, attrs):
    t, like = node.input(0).type, node.input(1).type
    if like is None:
        return [None]
    return [TensorType(like.dtype, None if t is None else t.shape)]


@register_op("CastLike", inputs=["input", "target_type"], attrs={"saturate": 1, "round_mode": "up"},
             infer=_castlike_infer, elementwise=True)
def castlike(inputs, attrs, ctx):
    return [cast_array(inputs[0], dtypes.from_numpy(inputs[1].dtype), bool(attrs["saturate"]), attrs["round_mode"])]


def _dropout_infer(node, attrs):
    t = node.input(0).type
    out = [t]
    if len(node.outputs) > 1:
        out.append(None if t is None else TensorType("bool", t.shape))
    return out


@register_op("Dropout", inputs=["data", "?ratio", "?training_mode"], outputs=["output", "?mask"],
             attrs={"seed": None, "ratio": 0.5}, infer=_dropout_infer)
def dropout(inputs, attrs, ctx):
    """Inference-mode Dropout: the identity (training_mode=True is refused)."""
    x = inputs[0]
    training = inputs[2] if len(inputs) > 2 and inputs[2] is not None else False
    if bool(np.asarray(training)):
        from ..errors import UnsupportedOpError
        raise UnsupportedOpError("Dropout with training_mode=True is not supported (inference only)")
    return [x.copy(), np.ones(x.shape, bool)]
