"""Einsum as one index kernel: a thread per output element sums the operands' product over
the letters the output leaves out (``...`` expands to fresh letters; a size-1 dim of one
operand broadcasts; a letter repeated in a term reads the diagonal).

>>> lower_graph(einsum_graph).launches[0].kernel.name      # doctest: +SKIP
'go_einsum_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node
from graphopt.ops.nn import _einsum_terms

from ..index_kernels import einsum_body, ptr
from ..scalar import contiguous_strides
from .common import emit_index_kernel, known_dtypes
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

_FRESH = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _check(node: Node) -> str | None:
    why = known_dtypes(node)
    if why:
        return why
    if node.output.dtype == "bool":
        return "Einsum on bool"
    return None


def explicit_terms(equation: str, shapes) -> tuple[list[str], str]:
    """The equation with ``...`` replaced by letters unused elsewhere (right-aligned, NumPy style)."""
    terms, out = _einsum_terms(equation, len(shapes))
    used = set(equation)
    fresh = [c for c in _FRESH if c not in used]
    n_ell = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(fresh[:n_ell])
    terms = [t.replace("...", ell[n_ell - (len(s) - len(t.replace("...", ""))):]) for t, s in zip(terms, shapes)]
    return terms, out.replace("...", ell)


@lowering("Einsum", check=_check)
def lower_einsum(node: Node, lw: Lowerer) -> None:
    ins, y = list(node.inputs), node.output
    shapes = [static_shape(v, node) for v in ins]
    terms, out = explicit_terms(node.attr("equation"), shapes)
    sizes: dict[str, int] = {}
    for t, s in zip(terms, shapes):
        if len(t) != len(s):
            raise UnsupportedOpError(f"node {node.name!r} (Einsum): term {t!r} does not fit a rank-{len(s)} operand")
        for ch, d in zip(t, s):
            sizes[ch] = d if sizes.get(ch, 1) == 1 else sizes[ch]
    # a size-1 dim against a larger one broadcasts: that operand does not move along the letter
    strides = [tuple(0 if d != sizes[ch] else st for ch, d, st in zip(t, s, contiguous_strides(s)))
               for t, s in zip(terms, shapes)]
    body = einsum_body(terms, out, strides, sizes, [v.dtype for v in ins], y.dtype)
    params = [ptr("y", y.dtype, False), *(ptr(f"x{j}", v.dtype) for j, v in enumerate(ins))]
    emit_index_kernel(lw, node, "einsum", static_shape(y, node), params, body, f"Einsum {','.join(terms)}->{out}",
                      [y, *ins], [y.dtype, *(v.dtype for v in ins)])
