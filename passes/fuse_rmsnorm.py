"""Recognise RMS normalization written out op by op (LLaMA, Qwen2, T5, Mistral...) and write one node.

    Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Mul(x, x)), eps))))  => RMSNormalization[axis, epsilon=eps](x, ones)
    Mul(RMSNormalization(x, s), gamma)                            => RMSNormalization(x, s * gamma)

The variants torch exporters write are all read: the square as ``Mul(x, x)`` or
``Pow(x, 2)``; the inverse root as ``Reciprocal(Sqrt(.))`` (the dynamo exporter's
``rsqrt``), ``Div(1, Sqrt(.))`` (TorchScript's), ``Pow(., -0.5)``, or the
division ``Div(x, Sqrt(.))``; the reduction over the last axes with keepdims
(axes as attribute or input); gamma (the module's weight) on either side,
folded into the scale when it is a constant that varies along the normalized
axes only.

Two passes write it:

* ``fuse_rmsnorm_onnx`` (graph pass): the standard ``RMSNormalization`` of
  opset 23, which ONNX Runtime runs as one kernel. On an older model it is
  refused ("opset 18 < 23") unless ``ctx.target_opset >= 23`` lets ``OpsetGate``
  raise the model's opset.
* ``fuse_rmsnorm`` (lowering, at any opset): ``ai.graphopt::RMSNormalization``,
  the same schema and the same reference (``graphopt/ops/fused.py``), for a
  backend that asks for it (the CPU backend; one row kernel there).

Numbers: float32 agrees to reassociation (``x / sqrt(m)`` for ``x * (1 /
sqrt(m))``); for float16 inputs the fused op keeps its statistics in float32
(``stash_type=1``), more accurate than the float16 chain it replaces.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(opset=23); x = b.input("x", (2, 5, 8))
>>> ms = b.op("ReduceMean", b.op("Mul", x, x), np.array([-1]), keepdims=1)
>>> r = b.op("Reciprocal", b.op("Sqrt", b.op("Add", ms, np.float32(1e-6))))
>>> _ = b.output(b.op("Mul", np.full(8, 0.5, np.float32), b.op("Mul", x, r)), "y")
>>> _ = run_passes(b.graph, ["fuse_rmsnorm_onnx", "eliminate_dead_code"])
>>> [(n.op_type, n.attrs["epsilon"], n.input(1).const.tolist()) for n in b.graph]
[('RMSNormalization', 9.999999974752427e-07, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])]
"""
from __future__ import annotations

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph
from graphopt.ops.fused import FUSED_DOMAIN
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Const, Match, P, Rule, X

from ._rewrite_util import apply_gated, rules_result, scalar_of, swap_const
from .eliminate_noops import bypass
from .fuse_layernorm import _reduced_axes, eps_and_axis_reason, normalized_shape, row_chain_reason

# -- the patterns ------------------------------------------------------------------

_SQUARES = [P("Mul", X, X), P("Pow", X, Const("two"))]
_VAR_EPS = [P("Add", P("ReduceMean", sq, name="ms"), Const("eps"), commutative=True) for sq in _SQUARES]
_NORMALIZED = [pat for ve in _VAR_EPS for pat in (
    P("Mul", X, P("Reciprocal", P("Sqrt", ve)), commutative=True),
    P("Mul", X, P("Div", Const("one"), P("Sqrt", ve)), commutative=True),
    P("Mul", X, P("Pow", ve, Const("minus_half")), commutative=True),
    P("Div", X, P("Sqrt", ve)),
)]
_EXPECTED = {"two": 2.0, "one": 1.0, "minus_half": -0.5}


def _axis(m: Match) -> int | str:
    """The first normalized axis (every axis from it on is reduced), or a reason."""
    rank = len(m["x"].shape)
    axes = _reduced_axes(m.node("ms"), rank)
    if isinstance(axes, str):
        return axes
    if axes != list(range(rank - len(axes), rank)):
        return f"normalizes axes {axes}, not the last ones"
    return axes[0]


def _check_chain(g: Graph, m: Match) -> str | None:
    why = row_chain_reason(m)
    if why is not None:
        return why
    for name, want in _EXPECTED.items():
        if name in m.values and scalar_of(m[name]) != want:
            return f"constant {scalar_of(m[name])} where {want} belongs"
    return eps_and_axis_reason(m, _axis(m))


def _writer(domain: str):
    def to_rmsnorm(g: Graph, m: Match) -> bool | str:
        x, out = m["x"], m.root.output
        axis = _axis(m)
        ones = g.add_initializer(f"{m.root.name}_scale",
                                 np.ones(normalized_shape(x.shape, axis), dtypes.to_numpy(x.dtype)))
        node = g.make_node("RMSNormalization", [x, ones], {"axis": axis, "epsilon": scalar_of(m["eps"])},
                           output_types=[out.type], name="rmsnorm", before=m.root, domain=domain)
        return g.replace_value(out, node.output, take_name=True)

    return to_rmsnorm


# -- gamma -----------------------------------------------------------------------------

def _fold_gamma(g: Graph, m: Match) -> bool | str:
    """Scale times the constant, when it varies along the normalized axes only."""
    rms, c = m.node("rms"), m["c"]
    x = rms.input(0)
    if c.dtype != rms.output.dtype or x.shape is None or rms.input(1).const is None:
        return "gamma is not a constant of the output's type"
    rank = len(x.shape)
    axis = int(rms.attrs.get("axis", -1)) % rank
    shape = normalized_shape(x.shape, axis)
    cs = c.const.shape
    lead = max(0, len(cs) - len(shape))
    if shape is None or len(cs) > rank or any(d != 1 for d in cs[:lead]) \
            or any(d not in (1, n) for d, n in zip(cs[lead:][::-1], shape[::-1])):
        return "gamma varies along axes that are not normalized"
    gamma = np.broadcast_to(c.const.reshape(cs[lead:]), shape).astype(np.float64)
    scale = rms.input(1).const
    swap_const(g, rms, 1, (scale.astype(np.float64) * gamma).astype(scale.dtype))
    return bypass(g, m.root, rms.output)


def _rules(domain: str) -> list[Rule]:
    rms = P("RMSNormalization", X, Const("s"), name="rms", domain=domain)
    return [*[Rule("rmsnorm_chain_to_rmsnormalization", pat, _writer(domain), check=_check_chain)
              for pat in _NORMALIZED],
            Rule("mul_rmsnorm_to_rmsnorm", P("Mul", rms, Const("c"), commutative=True), _fold_gamma)]


RULES_ONNX = _rules("")
RULES_FUSED = _rules(FUSED_DOMAIN)


@register_pass("fuse_rmsnorm_onnx", opt_level=2, kind="graph", order=52)
def fuse_rmsnorm_onnx(graph: Graph, ctx: PassContext) -> PassResult:
    """x * rsqrt(mean(x^2) + eps) * gamma => RMSNormalization(x, gamma) (opset >= 23)."""
    return apply_gated(graph, ctx, RULES_ONNX, need=23)


@register_pass("fuse_rmsnorm", opt_level=2, kind="lowering", order=12)
def fuse_rmsnorm(graph: Graph, ctx: PassContext) -> PassResult:
    """x * rsqrt(mean(x^2) + eps) * gamma => ai.graphopt::RMSNormalization(x, gamma) (any opset;
    a backend asks for it in its lowering pipeline when it runs the op)."""
    return rules_result(graph, RULES_FUSED)


__all__ = ["fuse_rmsnorm", "fuse_rmsnorm_onnx"]
