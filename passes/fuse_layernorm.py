"""Recognise layer normalization written out op by op and write one ``LayerNormalization``.

    Div(Sub(x, ReduceMean(x)), Sqrt(Add(ReduceMean(Pow(Sub(x, ReduceMean(x)), 2)), eps)))
        => LayerNormalization[axis, epsilon=eps](x, ones)
    Mul(LayerNormalization(x, s, b), gamma)   => LayerNormalization(x, s * gamma, b * gamma)
    Add(LayerNormalization(x, s, b), beta)    => LayerNormalization(x, s, b + beta)

The variants torch exporters write are all read: the square as ``Pow(d, 2)`` or
``Mul(d, d)``; the division as ``Div(d, Sqrt(v + eps))``, ``Mul(d,
Reciprocal(Sqrt(v + eps)))`` or ``Mul(d, Pow(v + eps, -0.5))``; with or without
gamma and beta; the reduced axes as an attribute (opset < 18) or an input (18
on). The reduction must be over the last axes (``[-1]``, or ``[-2, -1]``...,
keepdims=1), both ReduceMeans over the same ones; ``LayerNormalization``'s
``axis`` is the first of them. Normalizing any other axes is refused
("normalizes axes [1], not the last ones").

Gamma and beta fold into Scale and B only when they are constants that vary
along the normalized axes alone; they are written out to the full normalized
shape (ONNX Runtime wants Scale and B of exactly that shape).

``LayerNormalization`` exists from opset 17: on an older model the rewrite is
refused ("opset 14 < 17") unless ``ctx.target_opset >= 17``, in which case the
model's opset is raised (``OpsetGate``). The TorchScript exporter already writes
``LayerNormalization`` at opset 17, so this pass is for models exported at
13..16 and for graphs from other producers.

Numbers: float32 agrees to reassociation; for float16 inputs LayerNormalization
keeps its statistics in float32 (``stash_type=1``), which is more accurate than
the float16 chain it replaces.
"""
from __future__ import annotations

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, Node
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Const, Match, P, Rule, X

from ._rewrite_util import apply_gated, broadcasts_into, scalar_of, swap_const
from .eliminate_noops import bypass, const_ints

FLOATS = ("float16", "float32", "float64", "bfloat16")

# -- the patterns ------------------------------------------------------------------

_D = P("Sub", X, P("ReduceMean", X, name="mean"))                      # x - E[x]
_SQUARES = [P("Pow", _D, Const("two")), P("Mul", _D, _D)]
_VAR_EPS = [P("Add", P("ReduceMean", sq, name="var"), Const("eps"), commutative=True) for sq in _SQUARES]
_NORMALIZED = [pat for ve in _VAR_EPS for pat in (
    P("Div", _D, P("Sqrt", ve)),
    P("Mul", _D, P("Reciprocal", P("Sqrt", ve)), commutative=True),
    P("Mul", _D, P("Pow", ve, Const("minus_half")), commutative=True),
)]


# -- checks ------------------------------------------------------------------------

def _reduced_axes(node: Node, rank: int) -> list[int] | None | str:
    """The sorted axes a keepdims ReduceMean reduces, or a reason."""
    if not node.attrs.get("keepdims", 1):
        return "ReduceMean without keepdims"
    known, axes = const_ints(node, 1, "axes")
    if not known:
        return "ReduceMean axes are not constant"
    if axes is None or not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return "ReduceMean reduces nothing"
        return list(range(rank))
    norm = sorted({a + rank if a < 0 else a for a in axes})
    return norm if len(norm) == len(axes) and all(0 <= a < rank for a in norm) else "ReduceMean axes out of range"


def _first_axis(m: Match) -> int | str:
    """The first normalized axis (all axes from it on are reduced), or a reason."""
    x = m["x"]
    rank = len(x.shape)
    axes = _reduced_axes(m.node("mean"), rank)
    if isinstance(axes, str):
        return axes
    if _reduced_axes(m.node("var"), rank) != axes:
        return "mean and variance reduce different axes"
    if axes != list(range(rank - len(axes), rank)):
        return f"normalizes axes {axes}, not the last ones"
    return axes[0]


def normalized_shape(x_shape, axis: int) -> tuple[int, ...] | None:
    """The static dims from ``axis`` on, or None when one is symbolic."""
    dims = tuple(x_shape[axis:])
    return dims if all(isinstance(d, int) for d in dims) else None


def row_chain_reason(m: Match) -> str | None:
    """Why a matched normalization chain over ``m["x"]`` cannot become one node: not a float, or
    a constant broadcast that changes the shape (LayerNorm and RMSNorm chains alike)."""
    x, out = m["x"], m.root.output
    if x.dtype not in FLOATS:
        return f"{x.dtype} input"
    if x.shape is None or out.shape != x.shape:
        return "shape unknown or changed by a broadcast constant"
    return None


def _check_chain(g: Graph, m: Match) -> str | None:
    why = row_chain_reason(m)
    if why is not None:
        return why
    if "two" in m.values and scalar_of(m["two"]) != 2.0:
        return "Pow exponent is not 2"
    if "minus_half" in m.values and scalar_of(m["minus_half"]) != -0.5:
        return "Pow exponent is not -0.5"
    return eps_and_axis_reason(m, _first_axis(m))


def eps_and_axis_reason(m: Match, axis: int | str) -> str | None:
    """Why a normalization chain's epsilon (``m["eps"]``) or first normalized ``axis`` (or the
    reason found for it) cannot go into one op, or None."""
    eps = scalar_of(m["eps"])
    if eps is None or eps < 0:
        return "epsilon is not a non-negative scalar"
    if isinstance(axis, str):
        return axis
    if normalized_shape(m["x"].shape, axis) is None:
        return "normalized dims are not static"
    return None


def _to_layernorm(g: Graph, m: Match) -> bool:
    x, out = m["x"], m.root.output
    axis = _first_axis(m)
    ones = np.ones(normalized_shape(x.shape, axis), dtypes.to_numpy(x.dtype))
    scale = g.add_initializer(f"{m.root.name}_scale", ones)
    ln = g.make_node("LayerNormalization", [x, scale], {"axis": axis, "epsilon": scalar_of(m["eps"])},
                     output_types=[out.type], name="layernorm", before=m.root)
    return g.replace_value(out, ln.output, take_name=True)


# -- gamma and beta ------------------------------------------------------------------

def _affine(m: Match) -> tuple[Node, np.ndarray] | str:
    """(the LayerNormalization, the constant as its normalized shape), or a reason."""
    ln, c = m.node("ln"), m["c"]
    x = ln.input(0)
    if any(v.num_uses or v.is_graph_output for v in ln.outputs[1:]):
        return "LayerNormalization statistics outputs are read"
    if c.dtype != ln.output.dtype:
        return f"constant is {c.dtype}, output {ln.output.dtype}"
    if x.shape is None:
        return "LayerNormalization input rank unknown"
    rank = len(x.shape)
    axis = int(ln.attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    shape = normalized_shape(x.shape, axis)
    if shape is None:
        return "normalized dims are not static"
    cs = c.const.shape
    if not broadcasts_into(cs, x.shape) or any(d != 1 for d in cs[:max(0, len(cs) - len(shape))]):
        return "constant varies along axes that are not normalized"
    for i in (1, 2):
        v = ln.input(i)
        if v is not None and v.const is None:
            return "LayerNormalization scale or bias not constant"
    full = np.broadcast_to(c.const.reshape(cs[max(0, len(cs) - len(shape)):]), shape)
    return ln, full.astype(np.float64)


def _fold_affine(g: Graph, m: Match) -> bool | str:
    """Mul: Scale and B times the constant; Add: B plus it."""
    got = _affine(m)
    if isinstance(got, str):
        return got
    ln, c = got
    scale, bias = ln.input(1).const, ln.input(2)
    b = None if bias is None else bias.const.astype(np.float64)
    if m.root.op_type == "Mul":
        swap_const(g, ln, 1, (scale.astype(np.float64) * c).astype(scale.dtype))
        b = None if b is None else b * c
    else:
        b = c if b is None else b + c
    if b is not None:
        swap_const(g, ln, 2, np.ascontiguousarray(b).astype(scale.dtype))
    return bypass(g, m.root, ln.output)


def _ln() -> P:
    return P("LayerNormalization", X, Const("s"), name="ln")


RULES = [
    *[Rule("layernorm_chain_to_layernormalization", pat, _to_layernorm, check=_check_chain) for pat in _NORMALIZED],
    *[Rule(f"{op.lower()}_layernorm_to_layernorm", P(op, _ln(), Const("c"), commutative=True), _fold_affine)
      for op in ("Mul", "Add")],
]


@register_pass("fuse_layernorm", opt_level=2, kind="graph", order=50)
def fuse_layernorm(graph: Graph, ctx: PassContext) -> PassResult:
    """(x - mean) / sqrt(var + eps) * gamma + beta => LayerNormalization(x, gamma, beta) (opset >= 17)."""
    return apply_gated(graph, ctx, RULES, need=17)


__all__ = ["RULES", "eps_and_axis_reason", "fuse_layernorm", "normalized_shape"]
