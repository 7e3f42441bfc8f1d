"""Exact algebraic simplifications, as a list of rules.

    Mul(x, 1) / Mul(1, x)            => x
    Div(x, 1)                        => x
    Add(x, -0.0) / Add(-0.0, x)      => x        (integers: Add(x, 0); -O2: either zero)
    Sub(x, 0.0)                      => x        (-O2: either zero)
    Sub(-0.0, x)                     => Neg(x)   (integers: Sub(0, x); -O2: either zero)
    Mul(x, -1) / Div(x, -1)          => Neg(x)   (Div: floats only)
    Div(x, 2^k)                      => Mul(x, 2^-k)   (floats, when 2^-k is representable)
    Pow(x, 1)                        => x
    Pow(x, 2)                        => Mul(x, x)
    Pow(x, -1)                       => Reciprocal(x)
    Neg(Neg(x)), Not(Not(x))         => x
    f(f(x))  [f idempotent: Relu, Abs, Ceil, Floor, Round, Sign]   => f(x)
    Abs(Neg(x))                      => Abs(x)
    Cast(Cast(x: A, to=B), to=A)     => x          [B holds every value of A]
    Cast(Cast(x: A, to=B), to=C)     => Cast(x, to=C)   [B holds every value of A]

What "exact" means here: the rewritten graph computes, for every input
(NaN, +-inf, -0.0 and subnormals included), the same bits as the original,
NaN payloads aside, assuming IEEE-754 round-to-nearest arithmetic with
correctly rounded ``Pow`` (``x*x`` and ``1/x`` are correctly rounded, so a
correctly rounded ``pow(x, 2)`` / ``pow(x, -1)`` gives the same bits). This is
the rule LLVM follows without fast-math flags. A constant operand must not
change the result's shape by broadcasting (``x: [3] * ones([2, 3])`` stays).

    rewrite                       exact?  why
    x * 1, x / 1, 1 * x           yes     every x, -0.0 and NaN included
    x + (-0.0), x - (+0.0)        yes     -0.0 + -0.0 = -0.0, +0.0 + -0.0 = +0.0
    x + (+0.0), x - (-0.0)        NO      -0.0 + +0.0 = +0.0: the sign of zero is lost
    (-0.0) - x => Neg(x)          yes     (+0.0) - x is not: 0 - (+0.0) = +0.0, Neg gives -0.0
    x * -1 => Neg(x)              yes     floats flip the sign bit; ints wrap the same way
    x / 2^k => x * 2^-k           yes     the same real number, rounded once either way
    x / c => x * (1/c), other c   NO      1/c is rounded, then the product again
    x * 0 => 0                    NO      NaN * 0 = NaN, inf * 0 = NaN, -1 * 0 = -0.0
    x - x => 0, x / x => 1        NO      NaN and inf give NaN
    Pow(x, 0.5) => Sqrt(x)        NO      pow(-0.0, 0.5) = +0.0 but sqrt(-0.0) = -0.0; pow(-inf, 0.5) = inf
    Sqrt(x) * Sqrt(x) => x        NO      two roundings; NaN for x < 0
    Sqrt(x * x) => Abs(x)         NO      x * x overflows to inf and rounds
    Mul(Mul(x, a), b) => x * ab   NO      reassociation (a -O2 fusion may do it, not this pass)
    Cast f32 -> f64 -> f32        yes     float64 holds every float32
    Cast i32 -> i64 -> i32        yes     int64 holds every int32
    Cast f32 -> f16 -> f32        NO      float16 rounds and overflows
    Cast f32 -> i32 -> f32        NO      truncates
    Neg(Neg(x)), Not(Not(x))      yes     (ints: Neg(INT_MIN) = INT_MIN both ways)
    Relu(Relu(x)) etc.            yes     idempotent
    Abs(Neg(x)) => Abs(x)         yes

Near misses (a zero with the wrong sign, a constant that broadcasts x up, a
lossy Cast in the middle) are reported with their reason.

Signed zeros: at -O1 the table above holds to the bit. At -O2 (and above)
+0.0 and -0.0 count as equal where a rewrite changes nothing but the sign of
a zero result, as every peer simplifier (onnxsim, onnxslim, ONNX Runtime) and
C compilers under ``-fno-signed-zeros`` do: ``x + 0.0``, ``x - (-0.0)`` and
``0.0 - x => Neg(x)`` go too (``RULES_O2``). A sign of zero is observable only
through ``1/x``, ``atan2`` or ``copysign``-like ops, which exported networks
do not apply to these sums.
"""
from __future__ import annotations

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, Node, Value
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Const, Match, P, Rule, X

from ._rewrite_util import broadcasts_into, rules_result
from .eliminate_noops import bypass

C = Const("c")
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_SIGNED = ("int8", "int16", "int32", "int64")

# B holds every value of A: Cast(x: A, to=B) loses nothing (IEEE formats, two's complement ints)
LOSSLESS: dict[str, frozenset[str]] = {
    "bool": frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                       "float16", "bfloat16", "float32", "float64"}),
    "uint8": frozenset({"uint16", "uint32", "uint64", "int16", "int32", "int64",
                        "float16", "bfloat16", "float32", "float64"}),
    "int8": frozenset({"int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"}),
    "uint16": frozenset({"uint32", "uint64", "int32", "int64", "float32", "float64"}),
    "int16": frozenset({"int32", "int64", "float32", "float64"}),
    "uint32": frozenset({"uint64", "int64", "float64"}),
    "int32": frozenset({"int64", "float64"}),
    "uint64": frozenset(),
    "int64": frozenset(),
    "float16": frozenset({"float32", "float64"}),
    "bfloat16": frozenset({"float32", "float64"}),
    "float32": frozenset({"float64"}),
}
IDEMPOTENT = ("Relu", "Abs", "Ceil", "Floor", "Round", "Sign")


# -- helpers -------------------------------------------------------------------------

def _const_all(v: Value, want: float) -> bool:
    """Every element of constant ``v`` equals ``want`` (with the sign of a zero)."""
    a = np.asarray(v.const)
    if a.size == 0 or a.dtype.kind not in "biuf":
        return False
    if a.dtype.kind == "f" and want == 0.0:
        return bool(np.all(a == 0) and np.all(np.signbit(a) == np.signbit(want)))
    return bool(np.all(a == want))


def _keeps_shape(m: Match) -> str | None:
    """Why the constant cannot simply vanish: it would change the result's shape."""
    x, c = m["x"], m["c"]
    if x.shape is None:
        return "shape of x unknown"
    if not broadcasts_into(c.shape, x.shape):
        return f"the constant broadcasts x from {list(x.shape)} to a bigger shape"
    return None


def _is_float(v: Value) -> bool:
    return v.dtype in _FLOATS


def replace_by(g: Graph, root: Node, op_type: str, inputs: list[Value], attrs: dict | None = None) -> bool | str:
    """Put ``op_type(inputs)`` before ``root`` and make ``root``'s readers read it."""
    new = g.make_node(op_type, inputs, attrs, before=root, output_types=[root.output.type])
    return bypass(g, root, new.output)


# -- binary ops with a constant --------------------------------------------------------

def _identity_const(want: float):
    def rw(g: Graph, m: Match) -> bool | str:
        if not _const_all(m["c"], want):
            return False
        return _keeps_shape(m) or bypass(g, m.root, m["x"])
    return rw


def _zero_with_sign(c: Value, negative: bool, why: str) -> bool | str:
    """True for a zero constant of the exact sign (any zero for integers), ``why`` for
    a float zero of the other sign, False for anything else."""
    if not _const_all(c, 0.0) and not _const_all(c, -0.0):
        return False
    if _is_float(c) and np.signbit(np.asarray(c.const).reshape(-1)[0]) != negative:
        return why
    return True


def _drop_zero(negative: bool, why: str):
    def rw(g: Graph, m: Match) -> bool | str:
        ok = _zero_with_sign(m["c"], negative, why)
        return ok if ok is not True else _keeps_shape(m) or bypass(g, m.root, m["x"])
    return rw


def _neg_allowed(x: Value) -> str | None:
    if x.dtype in _FLOATS or x.dtype in _SIGNED:
        return None
    return f"Neg has no {x.dtype} kernel in ONNX"


def _zero_minus(g: Graph, m: Match) -> bool | str:
    ok = _zero_with_sign(m["c"], True, "0.0 - x is not Neg(x) for x = +0.0 (only -0.0 - x is)")
    if ok is not True:
        return ok
    return _keeps_shape(m) or _neg_allowed(m["x"]) or replace_by(g, m.root, "Neg", [m["x"]])


def _times_minus_one(g: Graph, m: Match) -> bool | str:
    if not _const_all(m["c"], -1.0):
        return False
    if m.root.op_type == "Div" and not _is_float(m["x"]):
        return "integer x / -1 overflows for the smallest value"
    return _keeps_shape(m) or _neg_allowed(m["x"]) or replace_by(g, m.root, "Neg", [m["x"]])


def _div_power_of_two(g: Graph, m: Match) -> bool | str:
    c, x = m["c"], m["x"]
    if not _is_float(x) or c.dtype != x.dtype:
        return False
    a = np.asarray(c.const)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a == 0):
        return False
    mant, _ = np.frexp(np.abs(a).astype(np.float64))
    if not np.all(mant == 0.5) or _const_all(c, 1.0) or _const_all(c, -1.0):
        return False
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        inv = (1.0 / a.astype(np.float64)).astype(a.dtype)
    if not np.all(inv.astype(np.float64) * a.astype(np.float64) == 1.0):
        return "1/c is not representable (over- or underflows)"
    # the new initializer is written beside the old one: c may be shared
    inv_v = g.add_initializer(f"{c.name}_reciprocal", inv)
    return replace_by(g, m.root, "Mul", [x, inv_v])


def _pow(g: Graph, m: Match) -> bool | str:
    x, c = m["x"], m["c"]
    if _const_all(c, 1.0):
        return _keeps_shape(m) or bypass(g, m.root, x)
    if not _is_float(x) or (not _const_all(c, 2.0) and not _const_all(c, -1.0)):
        return False
    why = _keeps_shape(m)
    if why:
        return why
    if _const_all(c, 2.0):
        return replace_by(g, m.root, "Mul", [x, x])
    return replace_by(g, m.root, "Reciprocal", [x])


# -- unary chains -------------------------------------------------------------------

def _inner(m: Match) -> Node:
    return m.root.input(0).producer


def _involution(g: Graph, m: Match) -> bool | str:
    return bypass(g, m.root, m["x"])


def _idempotent(g: Graph, m: Match) -> bool | str:
    return bypass(g, m.root, m.root.input(0))


def _abs_neg(g: Graph, m: Match) -> bool | str:
    m.root.set_input(0, m["x"])
    return True


def _cast_to(node: Node) -> str | None:
    to = node.attrs.get("to")
    return dtypes.from_onnx(int(to)) if isinstance(to, (int, np.integer)) else to


def _cast_cast(g: Graph, m: Match) -> bool | str:
    outer, x = m.root, m["x"]
    a, b, c = x.dtype, _cast_to(_inner(m)), _cast_to(outer)
    if a is None or b is None:
        return False
    if b not in LOSSLESS.get(a, ()):
        return f"Cast {a} -> {b} loses values"
    if c == a:
        return bypass(g, outer, x)
    outer.set_input(0, x)
    return True


RULES = [
    Rule("mul_one_to_input", P("Mul", X, C, commutative=True), _identity_const(1.0)),
    Rule("div_one_to_input", P("Div", X, C), _identity_const(1.0)),
    Rule("add_negative_zero_to_input", P("Add", X, C, commutative=True),
         _drop_zero(True, "x + 0.0 maps -0.0 to +0.0 (only x + -0.0 is exact)")),
    Rule("sub_zero_to_input", P("Sub", X, C), _drop_zero(False, "x - (-0.0) maps -0.0 to +0.0 (only x - 0.0 is exact)")),
    Rule("sub_from_negative_zero_to_neg", P("Sub", C, X), _zero_minus),
    Rule("mul_minus_one_to_neg", P("Mul", X, C, commutative=True), _times_minus_one),
    Rule("div_minus_one_to_neg", P("Div", X, C), _times_minus_one),
    Rule("div_power_of_two_to_mul", P("Div", X, C), _div_power_of_two),
    Rule("pow_small_integer_to_simpler", P("Pow", X, C), _pow),
    Rule("neg_neg_to_input", P("Neg", P("Neg", X)), _involution, allow_shared=True),
    Rule("not_not_to_input", P("Not", P("Not", X)), _involution, allow_shared=True),
    *[Rule(f"{op.lower()}_{op.lower()}_to_{op.lower()}", P(op, P(op, X)), _idempotent, allow_shared=True)
      for op in IDEMPOTENT],
    Rule("abs_neg_to_abs", P("Abs", P("Neg", X)), _abs_neg, allow_shared=True),
    Rule("cast_lossless_cast_to_cast", P("Cast", P("Cast", X)), _cast_cast, allow_shared=True),
]


def _drop_any_zero(g: Graph, m: Match) -> bool | str:
    """x + (+-0.0) => x, x - (+-0.0) => x: only the sign of a zero result may change."""
    if not _is_zero(m["c"]):
        return False
    return _keeps_shape(m) or bypass(g, m.root, m["x"])


def _any_zero_minus(g: Graph, m: Match) -> bool | str:
    """(+-0.0) - x => Neg(x): only the sign of a zero result may change."""
    if not _is_zero(m["c"]):
        return False
    return _keeps_shape(m) or _neg_allowed(m["x"]) or replace_by(g, m.root, "Neg", [m["x"]])


def _is_zero(c: Value) -> bool:
    """Every element of constant ``c`` is a zero of either sign."""
    return c.const is not None and c.const.size > 0 and not np.any(np.asarray(c.const))


# -O2: +0.0 and -0.0 are equal where only the sign of a zero result changes
_SIGNED_ZERO = {
    "add_negative_zero_to_input": Rule("add_zero_to_input", P("Add", X, C, commutative=True), _drop_any_zero),
    "sub_zero_to_input": Rule("sub_any_zero_to_input", P("Sub", X, C), _drop_any_zero),
    "sub_from_negative_zero_to_neg": Rule("sub_from_zero_to_neg", P("Sub", C, X), _any_zero_minus),
}
RULES_O2 = [_SIGNED_ZERO.get(r.name, r) for r in RULES]


@register_pass("simplify_algebra", opt_level=1, kind="graph", order=25)
def simplify_algebra(graph: Graph, ctx: PassContext) -> PassResult:
    """Mul(x, 1) => x; Neg(Neg(x)) => x; Cast(Cast(x: i32, i64), i32) => x; ... (exact; -O2: x + 0.0 => x too)"""
    return rules_result(graph, RULES_O2 if ctx.level >= 2 else RULES)


__all__ = ["IDEMPOTENT", "LOSSLESS", "RULES", "RULES_O2", "replace_by", "simplify_algebra"]
