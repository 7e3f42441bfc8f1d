"""Index-driven reads: Gather (``movement.py``).

>>> lower_graph(gather_graph).launches[0].kernel.name   # doctest: +SKIP
'go_gather_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graphopt.ir import Node

from ..movement import make_gather, render_gather
from .common import known_dtypes
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

@lowering("Gather", check=known_dtypes)
def lower_gather(node: Node, lw: Lowerer) -> None:
    data, idx = node.input(0), node.input(1)
    spec = make_gather(static_shape(data, node), data.dtype, static_shape(idx, node), idx.dtype, node.attr("axis", 0))
    lw.emit(node, render_gather(spec), spec, [node.output, data, idx])
