"""Recognise GELU written out op by op and write one ``Gelu`` (opset 20).

    Mul(Mul(x, Add(Erf(Div(x, 1.4142135)), 1)), 0.5)                  => Gelu(x)
    Mul(Mul(x, Add(Tanh(Mul(Add(x, Mul(Pow(x, 3), 0.044715)), 0.7978846)), 1)), 0.5)
                                                                       => Gelu[approximate="tanh"](x)

Every ordering the exporters write is read: the erf argument as ``Div(x,
sqrt 2)`` or ``Mul(x, 1/sqrt 2)``; the cube as ``Pow(x, 3)`` or ``Mul(x, Mul(x,
x))``; the half applied last (``Mul(Mul(x, 1 + f), 0.5)``, torch's TorchScript
export), first (``Mul(Mul(x, 0.5), 1 + f)``), to the bracket (``Mul(x, Mul(1 + f,
0.5))``) or as ``Div(Mul(x, 1 + f), 2)``; constants on either side of every
commutative op. Constants are compared with a relative tolerance of 1e-4
(exporters write them rounded to float32).

``Gelu`` exists from opset 20: on an older model the rewrite is refused with the
reason "opset 17 < 20", unless ``ctx.target_opset >= 20`` (``graphopt optimize
--target-opset 20``), which raises the model's opset (``OpsetGate``).
"""
from __future__ import annotations

import math

from graphopt.ir import Graph
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Const, Match, P, Rule, X

from ._rewrite_util import apply_gated, approx, scalar_of
from .fuse_layernorm import FLOATS

# name -> the value the bound constant must have
CONSTANTS = {"one": 1.0, "half": 0.5, "two": 2.0, "sqrt2": math.sqrt(2.0), "inv_sqrt2": math.sqrt(0.5),
             "three": 3.0, "coef": 0.044715, "k": math.sqrt(2.0 / math.pi)}


def _mul(a, b) -> P:
    return P("Mul", a, b, commutative=True)


def _outer(f: P) -> list[P]:
    """``x * 0.5 * (1 + f)`` in each order exporters write it."""
    one_plus = P("Add", f, Const("one"), commutative=True)
    return [
        _mul(_mul(X, one_plus), Const("half")),
        _mul(_mul(X, Const("half")), one_plus),
        _mul(X, _mul(one_plus, Const("half"))),
        P("Div", _mul(X, one_plus), Const("two")),
    ]


_ERF = [P("Erf", arg) for arg in (P("Div", X, Const("sqrt2")), _mul(X, Const("inv_sqrt2")))]
_CUBES = (P("Pow", X, Const("three")), _mul(X, _mul(X, X)))
_TANH = [P("Tanh", _mul(P("Add", X, _mul(cube, Const("coef")), commutative=True), Const("k"))) for cube in _CUBES]


def _check(g: Graph, m: Match) -> str | None:
    x = m["x"]
    if x.dtype not in FLOATS:
        return f"{x.dtype} input"
    if x.shape is None or m.root.output.shape != x.shape:
        return "shape unknown or changed by a broadcast constant"
    for name, want in CONSTANTS.items():
        if name in m.values and not approx(scalar_of(m[name]), want):
            return f"constant {name} is not {want:.7g}"
    return None


def _rewrite(approximate: str):
    def rewrite(g: Graph, m: Match) -> bool:
        out = m.root.output
        gelu = g.make_node("Gelu", [m["x"]], {"approximate": approximate}, output_types=[out.type],
                           name="gelu", before=m.root)
        return g.replace_value(out, gelu.output, take_name=True)
    return rewrite


RULES = [
    *[Rule("gelu_erf_to_gelu", pat, _rewrite("none"), check=_check) for f in _ERF for pat in _outer(f)],
    *[Rule("gelu_tanh_to_gelu", pat, _rewrite("tanh"), check=_check) for f in _TANH for pat in _outer(f)],
]


@register_pass("fuse_gelu", opt_level=2, kind="graph", order=55)
def fuse_gelu(graph: Graph, ctx: PassContext) -> PassResult:
    """x * 0.5 * (1 + Erf(x / sqrt 2)) => Gelu(x); the tanh form => Gelu[approximate="tanh"](x) (opset >= 20)."""
    return apply_gated(graph, ctx, RULES, need=20)


__all__ = ["CONSTANTS", "RULES", "fuse_gelu"]
