"""graphopt's scalar expressions (``graphopt.expr``) printed as CUDA C.

One C spelling per expression primitive, nothing per ONNX op: an elementwise
node becomes an expression with ``graphopt.expr.node_to_expr`` (the same
expression the NumPy reference evaluates), a fused node carries one already,
and ``expr_fn`` prints it as SSA statements (``nodes_in_order``: operands first,
shared subexpressions once). float16 computes as float32 (loads and stores
convert), and a Cast to a 16-bit float rounds to it and back, as the reference's
float16 intermediate does; NaN propagates as in the NumPy reference (``relu``, ``max``, ``min``
are ternaries, not ``fmaxf``/``fminf``).

>>> from graphopt.expr import parse_exprs
>>> fn = expr_fn(parse_exprs("relu(add(in0, 1.0))"), ["float32"])
>>> for line in fn.emit(["a0"], "v"): print(line)
const float v_t0 = (a0 + ((float)1.0f));
const float v_t1 = (v_t0 < 0.0f ? 0.0f : v_t0);
const float v = v_t1;
"""
from __future__ import annotations

import re
from typing import Sequence

from graphopt import dtypes
from graphopt.errors import UnsupportedOpError
from graphopt.expr import Cast, Const, Expr, Input, Select, Unary, format_exprs, nodes_in_order

from .half import CONVERSIONS, HELPERS_OF
from .kernel import ctype_of
from .scalar import ScalarFn, c_literal, compute_dtype

FLOAT_UNARY = {
    "neg": "(-{0})", "abs": "fabsf({0})", "relu": "({0} < 0.0f ? 0.0f : {0})", "exp": "expf({0})",
    "log": "logf({0})", "sqrt": "sqrtf({0})", "recip": "(1.0f / {0})", "floor": "floorf({0})",
    "ceil": "ceilf({0})", "round": "rintf({0})", "sign": "(float)(({0} > 0.0f) - ({0} < 0.0f))",
    "sin": "sinf({0})", "cos": "cosf({0})", "tan": "tanf({0})", "asin": "asinf({0})", "acos": "acosf({0})",
    "atan": "atanf({0})", "sinh": "sinhf({0})", "cosh": "coshf({0})", "asinh": "asinhf({0})",
    "acosh": "acoshf({0})", "atanh": "atanhf({0})", "tanh": "tanhf({0})",
    "sigmoid": "(1.0f / (1.0f + expf(-{0})))", "erf": "erff({0})",
    "softplus": "(fmaxf({0}, 0.0f) + log1pf(expf(-fabsf({0}))))",
    "isnan": "({0} != {0})",
}


def _double(template: str) -> str:
    """A float32 spelling in double precision: ``expf`` -> ``exp``, ``1.0f`` -> ``1.0``."""
    t = re.sub(r"\b([a-z0-9]+)f\(", r"\1(", template)
    return t.replace("(float)", "(double)").replace(".0f", ".0")


DOUBLE_UNARY = {k: _double(v) for k, v in FLOAT_UNARY.items()}
INT_UNARY = {"neg": "(-{0})", "abs": "({0} < 0 ? -{0} : {0})", "relu": "({0} < 0 ? 0 : {0})",
             "sign": "(({0} > 0) - ({0} < 0))"}
BOOL_UNARY = {"not": "(!{0})"}
ANY_BINARY = {  # C semantics match ONNX here (integer division truncates)
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "max": "(({0} > {1} || {0} != {0}) ? {0} : {1})", "min": "(({0} < {1} || {0} != {0}) ? {0} : {1})",
    "eq": "({0} == {1})", "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
}
FLOAT_BINARY = {**ANY_BINARY, "pow": "powf({0}, {1})"}
DOUBLE_BINARY = {**ANY_BINARY, "pow": "pow({0}, (double){1})"}  # Pow's exponent may be another type
INT_BINARY = {**ANY_BINARY, "bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})"}
BOOL_BINARY = {"and": "({0} && {1})", "or": "({0} || {1})", "xor": "({0} != {1})",
               "eq": "({0} == {1})", "bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})"}


def _kind(dtype: str) -> str:
    if dtype == "float32":
        return "float"
    if dtype == "float64":
        return "double"
    if dtype == "bool":
        return "bool"
    if dtype in dtypes.INT_TYPES:
        return "int"
    raise UnsupportedOpError(f"expressions on {dtype} have no CUDA spelling (float32, float64, float16, ints, bool)")


_TABLES = {"float": (FLOAT_UNARY, FLOAT_BINARY), "double": (DOUBLE_UNARY, DOUBLE_BINARY), "int": (INT_UNARY, INT_BINARY), "bool": (BOOL_UNARY, BOOL_BINARY)}


def expr_fn(exprs: Sequence[Expr], input_dtypes: Sequence[str]) -> ScalarFn:
    """The expressions as one ``ScalarFn``: inputs ``in0..`` are the fn's inputs (their storage
    dtypes given), results in compute dtypes. Raises ``UnsupportedOpError`` for what C lacks."""
    comp = [compute_dtype(d) for d in input_dtypes]
    order = nodes_in_order(exprs)
    dt: dict[Expr, str] = {}
    lines_of: list[tuple[Expr, str]] = []  # (node, C expression over operand names)
    helpers: list = []
    for n in order:
        if isinstance(n, Input):
            if n.index >= len(comp):
                raise UnsupportedOpError(f"expression reads in{n.index}, only {len(comp)} inputs")
            dt[n] = comp[n.index]
            continue
        if isinstance(n, Const):
            dt[n] = compute_dtype(n.dtype)
            _kind(dt[n])
            continue
        if isinstance(n, Cast):
            dt[n] = compute_dtype(n.dtype)
            _kind(dt[n])
            tmpl = "({0} != 0)" if dt[n] == "bool" else f"(({ctype_of(dt[n])}){{0}})"
            if n.dtype in CONVERSIONS:  # computed in float32, but a narrower float rounds as it is stored
                to_f, from_f = CONVERSIONS[n.dtype]
                tmpl = f"{to_f}({from_f}({tmpl}))"
                helpers.extend(HELPERS_OF[n.dtype])
        elif isinstance(n, Select):
            dt[n] = dt[n.a]
            tmpl = "({0} ? {1} : {2})"
        else:
            kind = _kind(dt[n.a])
            table = _TABLES[kind][0 if isinstance(n, Unary) else 1]
            if n.op not in table:
                raise UnsupportedOpError(f"{n.op} on {dt[n.a]} has no CUDA spelling")
            tmpl = table[n.op]
            dt[n] = "bool" if n.op in ("isnan", "not", "eq", "lt", "le", "gt", "ge", "and", "or", "xor") else dt[n.a]
        lines_of.append((n, tmpl))
    out_dtypes = tuple(dt[e] for e in exprs)
    key = f"expr:{format_exprs(list(exprs))}:{','.join(comp)}"

    def emitter(ins, outs):
        name: dict[Expr, str] = {}
        lines = []
        for n in order:
            if isinstance(n, Input):
                name[n] = ins[n.index]
            elif isinstance(n, Const):
                name[n] = f"(({ctype_of(dt[n])}){c_literal(n.value, dt[n])})"
        for k, (n, tmpl) in enumerate(lines_of):
            var = f"{outs[0]}_t{k}"
            lines.append(f"const {ctype_of(dt[n])} {var} = {tmpl.format(*(name[o] for o in n.operands))};")
            name[n] = var
        for e, o in zip(exprs, outs):
            lines.append(f"const {ctype_of(dt[e])} {o} = {name[e]};")
        return lines

    return ScalarFn(key, len(comp), out_dtypes, emitter, tuple(dict.fromkeys(helpers)))
