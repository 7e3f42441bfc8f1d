"""C spellings of single ONNX pointwise ops, for nodes outside a fused expression.

``op_scalar_fn(node)`` turns one elementwise node (``Relu``, ``Add``, ``Where``,
``Cast``...) into a ``ScalarFn``. Fused work (``ai.graphopt::FusedElementwise``
and the epilogues of fused GEMM/convolution) is rendered from graphopt's
scalar-expression IR instead (see ``exprc.py``); this table covers the ops a
graph still holds one by one.

NaN behaviour follows the NumPy reference: ``Relu``/``Max``/``Min``/``Clip``
propagate NaN, so they are ternaries rather than ``fmaxf``/``fminf``.

>>> op_c_template("Relu", {}, "float32")
'({0} < 0.0f ? 0.0f : {0})'
"""
from __future__ import annotations

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node

from .kernel import ctype_of
from .scalar import ScalarFn, c_float, compute_dtype

FLOAT_ONLY = {  # float32 math: op -> template (attrs are filled in by _with_attrs)
    "Exp": "expf({0})", "Log": "logf({0})", "Sqrt": "sqrtf({0})", "Reciprocal": "(1.0f / {0})",
    "Floor": "floorf({0})", "Ceil": "ceilf({0})", "Round": "rintf({0})",
    "Sin": "sinf({0})", "Cos": "cosf({0})", "Tan": "tanf({0})", "Asin": "asinf({0})", "Acos": "acosf({0})",
    "Atan": "atanf({0})", "Sinh": "sinhf({0})", "Cosh": "coshf({0})", "Asinh": "asinhf({0})",
    "Acosh": "acoshf({0})", "Atanh": "atanhf({0})", "Tanh": "tanhf({0})", "Erf": "erff({0})",
    "Sigmoid": "(1.0f / (1.0f + expf(-{0})))",
    "Softplus": "(fmaxf({0}, 0.0f) + log1pf(expf(-fabsf({0}))))",
    "Softsign": "({0} / (1.0f + fabsf({0})))",
    "Mish": "({0} * tanhf(fmaxf({0}, 0.0f) + log1pf(expf(-fabsf({0})))))",
    "HardSwish": "({0} * fminf(fmaxf({0} / 6.0f + 0.5f, 0.0f), 1.0f))",
    "Pow": "powf({0}, {1})",
    "IsNaN": "({0} != {0})",
}

GENERIC = {  # any numeric dtype
    "Relu": "({0} < {z} ? {z} : {0})", "Neg": "(-{0})", "Identity": "{0}",
    "Abs": "({0} < {z} ? -{0} : {0})", "Sign": "(({0} > {z}) - ({0} < {z}))",
    "Add": "({0} + {1})", "Sub": "({0} - {1})", "Mul": "({0} * {1})", "Div": "({0} / {1})",
    "PRelu": "({0} < {z} ? {0} * {1} : {0})",
    "Equal": "({0} == {1})", "Less": "({0} < {1})", "LessOrEqual": "({0} <= {1})",
    "Greater": "({0} > {1})", "GreaterOrEqual": "({0} >= {1})",
    "And": "({0} && {1})", "Or": "({0} || {1})", "Xor": "({0} != {1})", "Not": "(!{0})",
    "BitwiseAnd": "({0} & {1})", "BitwiseOr": "({0} | {1})", "BitwiseXor": "({0} ^ {1})",
    "Where": "({0} ? {1} : {2})",
}


def _fmt(v: float) -> str:
    return c_float(v)


def _with_attrs(op: str, a: dict) -> str | None:
    """Templates whose constants come from attributes (float32 only)."""
    if op == "LeakyRelu":
        return f"({{0}} >= 0.0f ? {{0}} : {{0}} * {_fmt(a.get('alpha', 0.01))})"
    if op == "Elu":
        return f"({{0}} >= 0.0f ? {{0}} : {_fmt(a.get('alpha', 1.0))} * expm1f({{0}}))"
    if op == "Selu":
        al, g = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
        return f"({_fmt(g)} * ({{0}} > 0.0f ? {{0}} : {_fmt(al)} * expm1f({{0}})))"
    if op == "Celu":
        al = a.get("alpha", 1.0)
        return f"(fmaxf(0.0f, {{0}}) + fminf(0.0f, {_fmt(al)} * expm1f({{0}} / {_fmt(al)})))"
    if op == "ThresholdedRelu":
        return f"({{0}} > {_fmt(a.get('alpha', 1.0))} ? {{0}} : 0.0f)"
    if op == "HardSigmoid":
        return f"fminf(fmaxf({_fmt(a.get('alpha', 0.2))} * {{0}} + {_fmt(a.get('beta', 0.5))}, 0.0f), 1.0f)"
    if op == "Gelu":
        if a.get("approximate", "none") == "tanh":
            return "(0.5f * {0} * (1.0f + tanhf(0.7978845608028654f * ({0} + 0.044715f * {0} * {0} * {0}))))"
        return "(0.5f * {0} * (1.0f + erff({0} * 0.7071067811865476f)))"
    if op == "IsInf":
        pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
        parts = (["({0} == GO_INF)"] if pos else []) + (["({0} == -GO_INF)"] if neg else [])
        return "(" + (" || ".join(parts) or "false") + ")"
    return None


VARIADIC = {"Sum", "Max", "Min", "Mean"}
ATTR_OPS = {"LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "HardSigmoid", "Gelu", "IsInf"}
SUPPORTED = set(FLOAT_ONLY) | set(GENERIC) | VARIADIC | ATTR_OPS | {"Clip", "Cast", "CastLike"}


def _variadic(op: str, n: int) -> str:
    if op in ("Sum", "Mean"):
        body = " + ".join(f"{{{i}}}" for i in range(n))
        return f"(({body}) / {n}.0f)" if op == "Mean" else f"({body})"
    acc = "{0}"
    cmp = ">" if op == "Max" else "<"
    for i in range(1, n):  # NaN propagates: (a > b || a != a) ? a : b
        acc = f"(({acc}) {cmp} {{{i}}} || ({acc}) != ({acc}) ? ({acc}) : {{{i}}})"
    return acc


def op_c_template(op: str, attrs: dict, dtype: str, present: tuple[bool, ...] = ()) -> str:
    """The C expression template of ``op`` on inputs of ``dtype`` (raises when unsupported)."""
    if op in GENERIC:
        zero = "0.0f" if dtype == "float32" else "0"
        return GENERIC[op].replace("{z}", zero)
    if dtype != "float32":
        raise UnsupportedOpError(f"{op} on {dtype} has no CUDA kernel (float32 only)")
    if op in FLOAT_ONLY:
        return FLOAT_ONLY[op]
    t = _with_attrs(op, attrs)
    if t is not None:
        return t
    if op == "Clip":
        expr, i = "{0}", 1
        for has, cmp in zip(present or (False, False), ("<", ">")):
            if has:  # x < lo ? lo : x  keeps NaN
                expr = f"(({expr}) {cmp} {{{i}}} ? {{{i}}} : ({expr}))"
                i += 1
        return expr
    raise UnsupportedOpError(f"{op} has no CUDA C spelling")


def node_supported(node: Node) -> str | None:
    """Why ``node`` cannot be one elementwise kernel, or None."""
    if node.op_type not in SUPPORTED or node.domain not in ("", "ai.onnx"):
        return f"{node.qualified_op} is not an elementwise op the CUDA backend knows"
    return None


def op_scalar_fn(node: Node) -> ScalarFn:
    """The pointwise function computed by one elementwise ``node``."""
    op = node.op_type
    ins = [v for v in node.inputs]
    in_dtype = compute_dtype(ins[0].dtype if op != "Where" else ins[1].dtype)  # float16 computes as float32
    out_dtype = compute_dtype(node.output.dtype)
    attrs = dict(node.attrs)
    if op in ("Cast", "CastLike"):
        return cast_fn(in_dtype, out_dtype)
    if op in VARIADIC:
        if op == "Mean" and in_dtype != "float32":
            raise UnsupportedOpError(f"Mean on {in_dtype} has no CUDA kernel (float32 only)")
        return ScalarFn.from_template(op, len(ins), out_dtype, _variadic(op, len(ins)))
    if op == "Clip":
        present = tuple(i < len(ins) and ins[i] is not None for i in (1, 2))
        arity = 1 + sum(present)
        return ScalarFn.from_template(op, arity, out_dtype, op_c_template(op, attrs, in_dtype, present))
    tmpl = op_c_template(op, attrs, in_dtype)
    return ScalarFn.from_template(op, len(ins), out_dtype, tmpl)


def cast_fn(in_dtype: str, out_dtype: str) -> ScalarFn:
    """ONNX Cast between compute dtypes (a float16 side is float32 here: loads and stores convert)."""
    in_dtype, out_dtype = compute_dtype(in_dtype), compute_dtype(out_dtype)
    ctype_of(in_dtype)
    tmpl = "({0} != 0)" if out_dtype == "bool" else f"(({ctype_of(out_dtype)}){{0}})"
    return ScalarFn.from_template(f"cast:{in_dtype}", 1, out_dtype, tmpl)


def unary_fn(op: str, attrs: dict | None = None, dtype: str = "float32") -> ScalarFn:
    """A one-input function by op name (activations in epilogues)."""
    return ScalarFn.from_template(op, 1, dtype, op_c_template(op, attrs or {}, dtype))
