"""Elementwise ops, ``ai.graphopt::FusedElementwise`` and inference BatchNormalization:
each an expression (``graphopt.expr``, the one the NumPy reference evaluates) printed
as C by ``exprc.py`` and run by the elementwise kernel (``ew.py``).

>>> lower_graph(relu_graph).launches[0].kernel.name     # doctest: +SKIP
'go_ew_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graphopt import dtypes
from graphopt.expr import Expr, Input, node_to_expr, parse_exprs
from graphopt.ir import Node, Value
from graphopt.ops.registry import all_schemas

from ..ew import make_elementwise, render_elementwise
from ..exprc import expr_fn
from ..index_kernels import bit_shift_body, mod_body, ptr
from ..scalar import broadcast_strides
from ..specs import View
from .common import FUSED_DOMAIN, emit_expressions, emit_index_kernel, fn_check, float_only, known_dtypes, unused
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

def _node_expr(node: Node) -> tuple[Expr | None, list[Value]]:
    """One elementwise node as an expression over its present inputs (``in0``... in order)."""
    present = [v for v in node.inputs if v is not None]
    args, k = [], 0
    for v in node.inputs:
        args.append(None if v is None else Input(k))
        k += v is not None
    return node_to_expr(node, args), present


def _ew_check(node: Node) -> str | None:
    why = known_dtypes(node)
    if why:
        return why
    e, present = _node_expr(node)
    if e is None:
        return f"{node.op_type} has no expression form"
    return fn_check(lambda: expr_fn([e], [v.dtype for v in present]))


BODY_OPS = ("Mod", "BitShift")  # C's % and << are not NumPy's: a body each (index_kernels.py)


def _elementwise_ops() -> list[str]:
    return sorted(s.op_type for s in all_schemas() if s.elementwise and s.domain == "" and s.op_type not in BODY_OPS)


@lowering(*_elementwise_ops(), check=_ew_check)
def lower_elementwise(node: Node, lw: Lowerer) -> None:
    e, present = _node_expr(node)
    emit_expressions(node, lw, [e], present, [node.output])


def _fused_exprs(node: Node) -> list[Expr]:
    text = node.attr("expr", "")
    return parse_exprs(text) if text else [Input(0)]


def _fused_ew_check(node: Node) -> str | None:
    why = known_dtypes(node)
    if why:
        return why
    return fn_check(lambda: expr_fn(_fused_exprs(node), [v.dtype for v in node.inputs]))


@lowering("FusedElementwise", domain=FUSED_DOMAIN, check=_fused_ew_check)
def lower_fused_elementwise(node: Node, lw: Lowerer) -> None:
    emit_expressions(node, lw, _fused_exprs(node), list(node.inputs), list(node.outputs))


@lowering("BatchNormalization", check=lambda n: float_only(n) or (None if unused(n, 1) else
                                                                     "BatchNormalization in training mode"))
def lower_batchnorm(node: Node, lw: Lowerer) -> None:
    x, scale, bias, mean, var = node.inputs[:5]
    eps = node.attr("epsilon", 1e-5)
    oshape = static_shape(node.output, node)
    chan = [0] * len(oshape)
    if len(oshape) > 1:
        chan[1] = 1
    views = [View.contiguous(x.dtype, oshape)] + [View(v.dtype, tuple(chan)) for v in (scale, bias, mean, var)]
    # (x - mean) / sqrt(var + eps) * scale + bias
    fn = expr_fn(parse_exprs(f"add(mul(div(sub(in0, in3), sqrt(add(in4, {float(eps)!r}))), in1), in2)"),
                 [v.dtype for v in (x, scale, bias, mean, var)])
    spec = make_elementwise(oshape, View.contiguous(node.output.dtype, oshape), views, fn)
    lw.emit(node, render_elementwise(spec), spec, [node.output, x, scale, bias, mean, var])


def _binary_body_check(node: Node) -> str | None:
    why = known_dtypes(node)
    if why:
        return why
    dt = node.input(0).dtype
    if dt == "bool" or (node.op_type == "BitShift" and dt not in dtypes.INT_TYPES):
        return f"{node.op_type} on {dt}"
    return None


@lowering(*BODY_OPS, check=_binary_body_check)
def lower_binary_body(node: Node, lw: Lowerer) -> None:
    """Mod and BitShift: one thread per output element, both operands broadcast."""
    a, b, y = node.input(0), node.input(1), node.output
    shape = static_shape(y, node)
    sa, sb = (broadcast_strides(static_shape(v, node), shape) for v in (a, b))
    if node.op_type == "Mod":
        fmod = bool(node.attr("fmod", 0))
        body, what = mod_body(sa, sb, fmod, y.dtype, len(shape)), f"{'fmod' if fmod else 'mod'}"
    else:
        left = node.attr("direction") == "LEFT"
        body, what = bit_shift_body(sa, sb, left, y.dtype, len(shape)), "shift " + ("left" if left else "right")
    emit_index_kernel(lw, node, "mod" if node.op_type == "Mod" else "shift", shape,
                      [ptr("y", y.dtype, False), ptr("pa", a.dtype), ptr("pb", b.dtype)], body,
                      f"{what} {y.dtype} {list(shape)}", [y, a, b], [y.dtype])
