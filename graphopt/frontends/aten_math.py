"""ATen converters for math: elementwise ops with PyTorch's type promotion,
activations, reductions, tensor factories, casts and no-ops.

Elementwise arithmetic computes in the dtype torch gives the result (its
``meta["val"]``): ``int_tensor + 2.5`` casts the tensor to float32 first, as
torch does, and a Python scalar becomes a constant of that dtype. Comparisons
compute in the promoted dtype of their operands (``result_type``).

GELU becomes its formula (``Erf`` or ``Tanh`` ops): the ``Gelu`` op needs opset
20 and these graphs are opset 17; graph passes fuse the formula where the
target opset has ``Gelu``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from ..ir import Value
from .aten_table import converter, ir_dtype, norm_axes, result_type

# ---------------------------------------------------------------------------
# unary ops: ATen name -> ONNX op, computed in the output dtype

_UNARY = {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "neg": "Neg", "abs": "Abs", "reciprocal": "Reciprocal", "sin": "Sin", "cos": "Cos", "tan": "Tan",
    "asin": "Asin", "acos": "Acos", "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "asinh": "Asinh",
    "acosh": "Acosh", "atanh": "Atanh", "erf": "Erf", "floor": "Floor", "ceil": "Ceil", "sign": "Sign",
}


def _unary(op_type):
    def conv(cx, x):
        dt = cx.out_dtype()
        if op_type in ("Floor", "Ceil") and x.dtype in dtypes.INT_TYPES:
            return x  # integer floor/ceil is the identity
        return cx.op(op_type, cx.cast(x, dt))

    return conv


for _name, _op in _UNARY.items():
    converter(f"aten.{_name}.default", f"aten.{_name}")(_unary(_op))


@converter("aten.round.default")
def round_(cx, x):
    return x if x.dtype in dtypes.INT_TYPES else cx.op("Round", x)  # both round half to even


@converter("aten.round.decimals")
def round_decimals(cx, x, decimals=0):
    k = cx.const(10.0 ** decimals, x.dtype)
    return cx.op("Div", cx.op("Round", cx.op("Mul", x, k)), k)


@converter("aten.trunc.default")
def trunc(cx, x):
    return x if x.dtype in dtypes.INT_TYPES else _trunc(cx, x)


def _trunc(cx, x):
    neg = cx.op("Less", x, cx.const(0, x.dtype))
    return cx.op("Where", neg, cx.op("Ceil", x), cx.op("Floor", x))


@converter("aten.rsqrt.default")
def rsqrt(cx, x):
    return cx.op("Reciprocal", cx.op("Sqrt", cx.cast(x, cx.out_dtype())))


@converter("aten.log1p.default")
def log1p(cx, x):
    x = cx.cast(x, cx.out_dtype())
    return cx.op("Log", cx.op("Add", x, cx.const(1, x.dtype)))


@converter("aten.expm1.default")
def expm1(cx, x):
    x = cx.cast(x, cx.out_dtype())
    return cx.op("Sub", cx.op("Exp", x), cx.const(1, x.dtype))


@converter("aten.log2.default", "aten.log10.default")
def log_base(cx, x):
    x = cx.cast(x, cx.out_dtype())
    base = 2.0 if "log2" in cx.node.target.name() else 10.0
    return cx.op("Div", cx.op("Log", x), cx.const(math.log(base), x.dtype))


@converter("aten.exp2.default")
def exp2(cx, x):
    x = cx.cast(x, cx.out_dtype())
    return cx.op("Pow", cx.const(2.0, x.dtype), x)


@converter("aten.square.default")
def square(cx, x):
    x = cx.cast(x, cx.out_dtype())
    return cx.op("Mul", x, x)


@converter("aten.logical_not.default", "aten.bitwise_not.default")
def logical_not(cx, x):
    if cx.out_dtype() == "bool":
        return cx.op("Not", cx.op("Cast", x, to=dtypes.ONNX_CODES["bool"]) if x.dtype != "bool" else x)
    return cx.op("Sub", cx.op("Neg", x), cx.const(1, x.dtype))  # ~x == -x - 1 for integers


@converter("aten.isnan.default")
def isnan(cx, x):
    return cx.op("IsNaN", x)


@converter("aten.isinf.default")
def isinf(cx, x):
    return cx.op("IsInf", x)


# ---------------------------------------------------------------------------
# binary arithmetic


def _operands(cx, a, b, dtype):
    return cx.tensor(a, dtype), cx.tensor(b, dtype)


def _binary(op_type):
    def conv(cx, a, b, alpha=1):
        dt = cx.out_dtype()
        x, y = _operands(cx, a, b, dt)
        if alpha != 1:
            y = cx.op("Mul", y, cx.tensor(alpha, dt))
        return cx.op(op_type, x, y)

    return conv


for _name, _op in (("add", "Add"), ("sub", "Sub"), ("mul", "Mul")):
    converter(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_binary(_op))
for _name, _op in (("maximum", "Max"), ("minimum", "Min"), ("fmax", "Max"), ("fmin", "Min")):
    converter(f"aten.{_name}.default")(_binary(_op))


@converter("aten.rsub.Tensor", "aten.rsub.Scalar")
def rsub(cx, a, b, alpha=1):
    return _binary("Sub")(cx, b, a if alpha == 1 else _scaled(cx, a, alpha))


def _scaled(cx, a, alpha):
    return cx.op("Mul", cx.tensor(a, cx.out_dtype()), cx.tensor(alpha, cx.out_dtype()))


@converter("aten.div.Tensor", "aten.div.Scalar", "aten.true_divide.Tensor")
def div(cx, a, b):
    dt = cx.out_dtype()
    return cx.op("Div", *_operands(cx, a, b, dt))


def floor_div(cx, x: Value, y: Value) -> Value:
    """Python's ``//`` on two values of one dtype."""
    if x.dtype not in dtypes.INT_TYPES:
        return cx.op("Floor", cx.op("Div", x, y))
    q = cx.op("Div", x, y)  # truncates toward zero
    if x.dtype.startswith("uint"):
        return q
    r = cx.op("Sub", x, cx.op("Mul", q, y))
    zero = cx.const(0, x.dtype)
    fix = cx.op("And", cx.op("Not", cx.op("Equal", r, zero)),
                cx.op("Xor", cx.op("Less", r, zero), cx.op("Less", y, zero)))
    return cx.op("Sub", q, cx.op("Cast", fix, to=dtypes.ONNX_CODES[x.dtype]))


@converter("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(cx, a, b, rounding_mode=None):
    dt = cx.out_dtype()
    x, y = _operands(cx, a, b, dt)
    if rounding_mode is None:
        return cx.op("Div", x, y)
    if rounding_mode == "floor":
        return floor_div(cx, x, y)
    if rounding_mode == "trunc":
        q = cx.op("Div", x, y)
        return q if dt in dtypes.INT_TYPES else _trunc(cx, q)
    cx.unsupported(f"rounding_mode={rounding_mode!r}")


@converter("aten.floor_divide.default", "aten.floor_divide.Scalar")
def floor_divide(cx, a, b):
    return floor_div(cx, *_operands(cx, a, b, cx.out_dtype()))


@converter("aten.remainder.Tensor", "aten.remainder.Scalar", "aten.remainder.Scalar_Tensor")
def remainder(cx, a, b):
    x, y = _operands(cx, a, b, cx.out_dtype())
    return cx.op("Sub", x, cx.op("Mul", floor_div(cx, x, y), y))  # sign follows the divisor


@converter("aten.fmod.Tensor", "aten.fmod.Scalar")
def fmod(cx, a, b):
    x, y = _operands(cx, a, b, cx.out_dtype())
    q = cx.op("Div", x, y)
    if x.dtype not in dtypes.INT_TYPES:
        q = _trunc(cx, q)
    return cx.op("Sub", x, cx.op("Mul", q, y))  # sign follows the dividend


@converter("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(cx, a, b):
    dt = cx.out_dtype()
    x = cx.tensor(a, dt)
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        if b == 1:
            return x
        if b == 2:
            return cx.op("Mul", x, x)
        if b == 0.5 and dt not in dtypes.INT_TYPES:
            return cx.op("Sqrt", x)
    return cx.op("Pow", x, cx.tensor(b, dt))


# ---------------------------------------------------------------------------
# comparisons, logical ops, where

_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


def _compare(op_type):
    def conv(cx, a, b):
        dt = result_type(a, b)
        return cx.op(op_type, *_operands(cx, a, b, dt))

    return conv


for _name, _op in _COMPARE.items():
    converter(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_compare(_op))


@converter("aten.ne.Tensor", "aten.ne.Scalar")
def ne(cx, a, b):
    return cx.op("Not", _compare("Equal")(cx, a, b))


def _to_bool(cx, x):
    return cx.tensor(x, "bool") if not isinstance(x, Value) or x.dtype == "bool" else \
        cx.op("Not", cx.op("Equal", x, cx.const(0, x.dtype)))


def _logical(op_type):
    def conv(cx, a, b):
        return cx.op(op_type, _to_bool(cx, a), _to_bool(cx, b))

    return conv


for _name, _op in (("and", "And"), ("or", "Or"), ("xor", "Xor")):
    converter(f"aten.logical_{_name}.default")(_logical(_op))


def _bitwise(bool_op):
    def conv(cx, a, b):
        dt = cx.out_dtype()
        if dt != "bool":  # BitwiseAnd/Or/Xor arrive with opset 18; these graphs are opset 17
            cx.unsupported(f"bitwise ops on {dt} tensors (ONNX has them from opset 18)")
        return cx.op(bool_op, *_operands(cx, a, b, dt))

    return conv


for _name, _op in (("and", "And"), ("or", "Or"), ("xor", "Xor")):
    converter(f"aten.bitwise_{_name}.Tensor", f"aten.bitwise_{_name}.Scalar")(_bitwise(_op))


@converter("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(cx, cond, a, b):
    dt = cx.out_dtype()
    return cx.op("Where", _to_bool(cx, cond), *_operands(cx, a, b, dt))


@converter("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(cx, x, mask, value):
    dt = cx.out_dtype()
    return cx.op("Where", _to_bool(cx, mask), cx.tensor(value, dt), cx.cast(x, dt))


# ---------------------------------------------------------------------------
# activations


@converter("aten.gelu.default")
def gelu(cx, x, approximate="none"):
    dt = x.dtype
    half = cx.op("Mul", x, cx.const(0.5, dt))
    if approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = cx.op("Mul", cx.op("Mul", x, x), x)
        inner = cx.op("Add", x, cx.op("Mul", x3, cx.const(0.044715, dt)))
        t = cx.op("Tanh", cx.op("Mul", inner, cx.const(math.sqrt(2.0 / math.pi), dt)))
    else:
        # 0.5 x (1 + erf(x / sqrt(2)))
        t = cx.op("Erf", cx.op("Div", x, cx.const(math.sqrt(2.0), dt)))
    return cx.op("Mul", half, cx.op("Add", t, cx.const(1.0, dt)))


@converter("aten.silu.default")
def silu(cx, x):
    return cx.op("Mul", x, cx.op("Sigmoid", x))


@converter("aten.mish.default")
def mish(cx, x):
    return cx.op("Mul", x, cx.op("Tanh", cx.op("Softplus", x)))


@converter("aten.hardswish.default")
def hardswish(cx, x):
    return cx.op("HardSwish", x)


@converter("aten.hardsigmoid.default")
def hardsigmoid(cx, x):
    return cx.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5)


@converter("aten.leaky_relu.default")
def leaky_relu(cx, x, negative_slope=0.01):
    return cx.op("LeakyRelu", x, alpha=float(negative_slope))


@converter("aten.elu.default")
def elu(cx, x, alpha=1.0, scale=1.0, input_scale=1.0):
    if scale == 1 and input_scale == 1:
        return cx.op("Elu", x, alpha=float(alpha))
    xs = cx.op("Mul", x, cx.const(input_scale, x.dtype))
    neg = cx.op("Mul", cx.op("Sub", cx.op("Exp", xs), cx.const(1.0, x.dtype)), cx.const(alpha, x.dtype))
    y = cx.op("Where", cx.op("Greater", x, cx.const(0, x.dtype)), x, neg)
    return cx.op("Mul", y, cx.const(scale, x.dtype))


@converter("aten.softplus.default")
def softplus(cx, x, beta=1, threshold=20):
    dt = x.dtype
    xb = x if beta == 1 else cx.op("Mul", x, cx.const(beta, dt))
    sp = cx.op("Softplus", xb)
    if beta != 1:
        sp = cx.op("Div", sp, cx.const(beta, dt))
    return cx.op("Where", cx.op("Greater", xb, cx.const(threshold, dt)), x, sp)


@converter("aten._prelu_kernel.default", "aten.prelu.default")
def prelu(cx, x, w):
    r = cx.rank(x)
    if cx.rank(w) == 1 and r >= 2 and w.shape[0] != 1:
        w = cx.op("Reshape", w, cx.const([-1] + [1] * (r - 2), "int64"))
    return cx.op("PRelu", x, w)


def _clip(cx, x, lo, hi):
    dt = cx.out_dtype()
    x = cx.cast(x, dt)
    if dt == "bool":
        cx.unsupported("clamp of a bool tensor")
    lo_v = None if lo is None else cx.tensor(lo, dt)
    hi_v = None if hi is None else cx.tensor(hi, dt)
    if all(v is None or (v.shape is not None and len(v.shape) == 0) for v in (lo_v, hi_v)):
        return cx.op("Clip", x, lo_v, hi_v)
    if lo_v is not None:
        x = cx.op("Max", x, lo_v)
    if hi_v is not None:
        x = cx.op("Min", x, hi_v)
    return x


@converter("aten.clamp.default", "aten.clamp.Tensor", "aten.clip.default")
def clamp(cx, x, min=None, max=None):
    return _clip(cx, x, min, max)


@converter("aten.clamp_min.default", "aten.clamp_min.Tensor")
def clamp_min(cx, x, lo):
    return _clip(cx, x, lo, None)


@converter("aten.clamp_max.default", "aten.clamp_max.Tensor")
def clamp_max(cx, x, hi):
    return _clip(cx, x, None, hi)


@converter("aten.hardtanh.default")
def hardtanh(cx, x, min_val=-1.0, max_val=1.0):
    return _clip(cx, x, min_val, max_val)


@converter("aten.relu6.default")
def relu6(cx, x):
    return _clip(cx, x, 0, 6)


@converter("aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default")
def softmax(cx, x, dim, half_to_float=False, dtype=None):
    dt = cx.out_dtype()
    return cx.op("Softmax", cx.cast(x, dt), axis=int(dim))


@converter("aten._log_softmax.default", "aten.log_softmax.int")
def log_softmax(cx, x, dim, half_to_float=False, dtype=None):
    dt = cx.out_dtype()
    return cx.op("LogSoftmax", cx.cast(x, dt), axis=int(dim))


# ---------------------------------------------------------------------------
# reductions (opset 17: ReduceSum takes axes as an input, the others as an attribute)


def _axes(cx, x, dims):
    r = cx.rank(x)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(r))
    return norm_axes(dims, r)


def reduce(cx, op_type, x, axes, keepdim):
    if not axes and cx.rank(x) > 0:
        return x
    if cx.rank(x) == 0:
        return x
    if op_type == "ReduceSum":
        return cx.op("ReduceSum", x, cx.const(np.asarray(axes, np.int64), "int64"), keepdims=int(bool(keepdim)))
    return cx.op(op_type, x, axes=list(axes), keepdims=int(bool(keepdim)))


def _reduction(op_type, cast_to_out=True):
    def conv(cx, x, dim=None, keepdim=False, dtype=None):
        if cast_to_out:
            x = cx.cast(x, cx.out_dtype())
        return reduce(cx, op_type, x, _axes(cx, x, dim), keepdim)

    return conv


converter("aten.sum.dim_IntList", "aten.sum.default")(_reduction("ReduceSum"))
converter("aten.mean.dim", "aten.mean.default")(_reduction("ReduceMean"))
converter("aten.amax.default")(_reduction("ReduceMax"))
converter("aten.amin.default")(_reduction("ReduceMin"))


@converter("aten.prod.dim_int", "aten.prod.default")
def prod(cx, x, dim=None, keepdim=False, dtype=None):
    x = cx.cast(x, cx.out_dtype())
    return reduce(cx, "ReduceProd", x, _axes(cx, x, dim), keepdim)


@converter("aten.logsumexp.default")
def logsumexp(cx, x, dim, keepdim=False):
    x = cx.cast(x, cx.out_dtype())
    return reduce(cx, "ReduceLogSumExp", x, _axes(cx, x, dim), keepdim)


def _any_all(op_type):
    def conv(cx, x, dim=None, keepdim=False):
        # opset 17 has no boolean ReduceMax: reduce the 0/1 values as int32
        b = _to_bool(cx, x)
        i = cx.op("Cast", b, to=dtypes.ONNX_CODES["int32"])
        r = reduce(cx, op_type, i, _axes(cx, x, dim), keepdim)
        return cx.op("Cast", r, to=dtypes.ONNX_CODES["bool"])

    return conv


converter("aten.any.dim", "aten.any.dims", "aten.any.default")(_any_all("ReduceMax"))
converter("aten.all.dim", "aten.all.dims", "aten.all.default")(_any_all("ReduceMin"))


def _max_min_dim(reduce_op, arg_op):
    def conv(cx, x, dim, keepdim=False):
        axis = norm_axes(dim, cx.rank(x))[0]
        values = reduce(cx, reduce_op, x, [axis], keepdim)
        idx = cx.op(arg_op, x, axis=axis, keepdims=int(bool(keepdim))) if cx.uses_output(1) else None
        return values, idx

    return conv


converter("aten.max.dim")(_max_min_dim("ReduceMax", "ArgMax"))
converter("aten.min.dim")(_max_min_dim("ReduceMin", "ArgMin"))


@converter("aten.max.default")
def max_all(cx, x):
    return reduce(cx, "ReduceMax", x, _axes(cx, x, None), False)


@converter("aten.min.default")
def min_all(cx, x):
    return reduce(cx, "ReduceMin", x, _axes(cx, x, None), False)


def _arg(op_type):
    def conv(cx, x, dim=None, keepdim=False):
        if dim is None:
            flat = cx.op("Reshape", x, cx.const([-1], "int64"))
            out = cx.op(op_type, flat, axis=0, keepdims=0)
            if keepdim:
                out = cx.op("Reshape", out, cx.const([1] * cx.rank(x), "int64"))
            return out
        return cx.op(op_type, x, axis=norm_axes(dim, cx.rank(x))[0], keepdims=int(bool(keepdim)))

    return conv


converter("aten.argmax.default")(_arg("ArgMax"))
converter("aten.argmin.default")(_arg("ArgMin"))


def _var_args(name, args, kwargs):
    """(dims, correction, keepdim) of var/std's .correction, .dim and .default overloads."""
    if name.endswith(".correction"):
        dim = args[0] if args else kwargs.get("dim")
        correction = kwargs.get("correction")
        return dim, 1 if correction is None else correction, kwargs.get("keepdim", False)
    if name.endswith(".dim"):
        vals = list(args) + [None] * 3
        dim = vals[0] if vals[0] is not None else kwargs.get("dim")
        unbiased = vals[1] if vals[1] is not None else kwargs.get("unbiased", True)
        keepdim = vals[2] if vals[2] is not None else kwargs.get("keepdim", False)
        return dim, int(bool(unbiased)), keepdim
    unbiased = args[0] if args else kwargs.get("unbiased", True)
    return None, int(bool(unbiased)), False


@converter("aten.var.correction", "aten.var.dim", "aten.var.default")
def var(cx, x, *args, **kwargs):
    return _var(cx, x, *_var_args(str(cx.node.target), args, kwargs))


@converter("aten.std.correction", "aten.std.dim", "aten.std.default")
def std(cx, x, *args, **kwargs):
    return cx.op("Sqrt", _var(cx, x, *_var_args(str(cx.node.target), args, kwargs)))


def _var(cx, x, dim, correction, keepdim):
    x = cx.cast(x, cx.out_dtype())
    axes = _axes(cx, x, dim)
    mean = reduce(cx, "ReduceMean", x, axes, True)
    d = cx.op("Sub", x, mean)
    ss = reduce(cx, "ReduceSum", cx.op("Mul", d, d), axes, keepdim)
    n = cx.numel(x, axes)
    if isinstance(n, int):
        return cx.op("Div", ss, cx.const(max(n - correction, 0), x.dtype))
    denom = cx.op("Max", cx.op("Sub", n, cx.const(int(correction), "int64")), cx.const(0, "int64"))
    return cx.op("Div", ss, cx.cast(denom, x.dtype))


@converter("aten.linalg_vector_norm.default")
def vector_norm(cx, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    x = cx.cast(x, cx.out_dtype())
    axes = _axes(cx, x, dim)
    if ord == 2:
        return reduce(cx, "ReduceL2", x, axes, keepdim)
    if ord == 1:
        return reduce(cx, "ReduceL1", x, axes, keepdim)
    if ord == float("inf"):
        return reduce(cx, "ReduceMax", cx.op("Abs", x), axes, keepdim)
    cx.unsupported(f"vector norm of order {ord}")


@converter("aten.cumsum.default")
def cumsum(cx, x, dim, *, dtype=None):
    """Prefix sums as a MatMul with an upper-triangular ones matrix (opset 17 CumSum has no kernel here)."""
    dt = cx.out_dtype()
    x = cx.cast(x, dt)
    r = cx.rank(x)
    if r == 0:
        return x
    d = norm_axes(dim, r)[0]
    n = cx.dim(x, d)
    if isinstance(n, int):
        tri = cx.const(np.triu(np.ones((n, n))), dt)
    else:
        ar = cx.op("Range", cx.scalar(0), cx.scalar(n), cx.scalar(1))
        rows = cx.op("Unsqueeze", ar, cx.const([1], "int64"))
        tri = cx.op("Cast", cx.op("LessOrEqual", rows, ar), to=dtypes.ONNX_CODES[dt])
    if d == r - 1:
        return cx.op("MatMul", x, tri)
    perm = list(range(r))
    perm[d], perm[-1] = perm[-1], perm[d]
    y = cx.op("MatMul", cx.op("Transpose", x, perm=perm), tri)
    return cx.op("Transpose", y, perm=perm)


# ---------------------------------------------------------------------------
# factories

_BIG_CONST = 4096  # larger constant fills are built at run time (ConstantOfShape), not stored


def fill(cx, sizes, value, dtype):
    """A tensor of ``sizes`` (ints and SymInt Values) filled with ``value``."""
    if isinstance(value, Value):
        return cx.op("Expand", cx.cast(value, dtype), cx.ints(sizes))
    static = all(isinstance(s, int) for s in sizes)
    if static and math.prod(sizes) <= _BIG_CONST:
        return cx.const(np.full(tuple(sizes), value, dtype=dtypes.to_numpy(dtype)), name="full")
    return cx.op("ConstantOfShape", cx.ints(sizes), value=np.full((1,), value, dtype=dtypes.to_numpy(dtype)))


def _factory_dtype(cx, dtype):
    return ir_dtype(dtype) if dtype is not None else cx.out_dtype()


@converter("aten.full.default")
def full(cx, size, fill_value, *, dtype=None):
    return fill(cx, list(size), fill_value, _factory_dtype(cx, dtype))


@converter("aten.zeros.default", "aten.empty.memory_format", "aten.new_zeros.default", "aten.new_empty.default")
def zeros(cx, *args, dtype=None):
    size = args[-1] if args and isinstance(args[-1], (list, tuple)) else args[0]
    return fill(cx, list(size), 0, _factory_dtype(cx, dtype))


@converter("aten.empty_permuted.default", "aten.empty_strided.default")
def empty_permuted(cx, size, layout_or_stride, *, dtype=None):
    return fill(cx, list(size), 0, _factory_dtype(cx, dtype))


@converter("aten.ones.default", "aten.new_ones.default")
def ones(cx, *args, dtype=None):
    size = args[-1] if args and isinstance(args[-1], (list, tuple)) else args[0]
    return fill(cx, list(size), 1, _factory_dtype(cx, dtype))


@converter("aten.new_full.default")
def new_full(cx, x, size, fill_value, *, dtype=None):
    return fill(cx, list(size), fill_value, _factory_dtype(cx, dtype))


def _like_sizes(cx, x):
    return [cx.dim(x, i) for i in range(cx.rank(x))]


@converter("aten.full_like.default")
def full_like(cx, x, fill_value, *, dtype=None):
    return fill(cx, _like_sizes(cx, x), fill_value, _factory_dtype(cx, dtype))


@converter("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(cx, x, *, dtype=None):
    return fill(cx, _like_sizes(cx, x), 0, _factory_dtype(cx, dtype))


@converter("aten.ones_like.default")
def ones_like(cx, x, *, dtype=None):
    return fill(cx, _like_sizes(cx, x), 1, _factory_dtype(cx, dtype))


@converter("aten.fill.Scalar", "aten.fill.Tensor")
def fill_(cx, x, value):
    return fill(cx, _like_sizes(cx, x), value, x.dtype)


@converter("aten.scalar_tensor.default")
def scalar_tensor(cx, value, *, dtype=None):
    dt = _factory_dtype(cx, dtype)
    return cx.tensor(value, dt) if isinstance(value, Value) else cx.const(value, dt, name="scalar")


@converter("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def arange(cx, *args, dtype=None):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args + (1,))[:3]
    dt = _factory_dtype(cx, dtype)
    if not any(isinstance(a, Value) for a in (start, end, step)):
        return cx.const(np.arange(start, end, step).astype(dtypes.to_numpy(dt)), name="arange")
    return cx.op("Range", cx.scalar(start, dt), cx.scalar(end, dt), cx.scalar(step, dt))


@converter("aten.tril.default", "aten.triu.default")
def tril(cx, x, diagonal=0):
    """Keep (tril) or zero (triu) the part below diagonal ``diagonal`` of the last two dims."""
    lower = cx.node.target.name().startswith("aten::tril")
    rows, cols = cx.dim(x, -2), cx.dim(x, -1)
    if isinstance(rows, int) and isinstance(cols, int):
        i = np.arange(rows)[:, None]
        j = np.arange(cols)[None, :]
        keep = cx.const((j - i <= diagonal) if lower else (j - i >= diagonal), "bool")
    else:
        i = cx.op("Unsqueeze", cx.op("Range", cx.scalar(0), cx.scalar(rows), cx.scalar(1)), cx.const([1], "int64"))
        j = cx.op("Range", cx.scalar(0), cx.scalar(cols), cx.scalar(1))
        diff = cx.op("Sub", j, cx.op("Add", i, cx.const(diagonal, "int64")))
        keep = cx.op("LessOrEqual" if lower else "GreaterOrEqual", diff, cx.const(0, "int64"))
    return cx.op("Where", keep, x, cx.const(0, x.dtype))


# ---------------------------------------------------------------------------
# casts and no-ops


@converter("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten._to_dim_order_copy.default")
def to_copy(cx, x, *args, dtype=None, **_):
    if dtype is None and args and not isinstance(args[0], (str, bool)) and "dtype" in str(type(args[0])):
        dtype = args[0]
    return x if dtype is None else cx.cast(x, ir_dtype(dtype))


@converter("aten.type_as.default")
def type_as(cx, x, other):
    return cx.cast(x, other.dtype)


@converter("aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default",
           "aten.lift_fresh_copy.default", "aten.lift_fresh.default", "aten.dropout.default",
           "aten.feature_dropout.default", "aten.alpha_dropout.default", "aten.positive.default",
           "aten.resolve_conj.default", "aten.resolve_neg.default")
def identity(cx, x, *args, **_):
    return x


@converter("aten.native_dropout.default")
def native_dropout(cx, x, p, train=None):
    if train:
        cx.unsupported("dropout in training mode (call module.eval())")
    mask = fill(cx, _like_sizes(cx, x), True, "bool") if cx.uses_output(1) else None
    return x, mask


@converter("aten.copy.default")
def copy(cx, dst, src, non_blocking=False):
    src = cx.cast(src, dst.dtype)
    if src.shape == dst.shape and src.shape is not None and all(isinstance(d, int) for d in src.shape):
        return src
    return cx.op("Expand", src, cx.shape_of(dst))


@converter("aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten._assert_async.msg",
           "aten._assert_async.default", "aten.sym_constrain_range_for_size.default",
           "aten.sym_constrain_range.default", "aten._functional_sym_constrain_range_for_size.default",
           "aten._functional_assert_async.msg", "aten._functional_sym_constrain_range.default")
def no_value(cx, *args, **kwargs):
    return None  # guards torch checked while tracing: nothing to compute
