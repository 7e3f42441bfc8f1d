"""The one registry of CUDA lowerings: how each op becomes kernel launches.

Each kernel family module in this package registers its ops with ``@lowering``;
the partitioner (``lower.py``) looks a node up here and the backend asks
``why_unsupported`` before compiling. Nothing here imports a family module, so
families never import each other through the partitioner.

>>> @lowering("Relu", check=lambda node: None)              # doctest: +SKIP
... def lower_relu(node, lw): ...
>>> LOWERINGS[("", "Relu")].lower is lower_relu              # doctest: +SKIP
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node, Value

if TYPE_CHECKING:
    from ..lower import Lowerer


@dataclass
class Lowering:
    """How one op becomes launches: ``check(node)`` gives a reason it cannot, or None."""

    lower: Callable[[Node, "Lowerer"], None]
    check: Callable[[Node], str | None] | None = None


LOWERINGS: dict[tuple[str, str], Lowering] = {}


def lowering(*ops: str, domain: str = "", check: Callable[[Node], str | None] | None = None):
    """Register ``fn(node, lowerer)`` as the CUDA lowering of ``ops``."""

    def deco(fn):
        for op in ops:
            LOWERINGS[(domain, op)] = Lowering(fn, check)
        return fn

    return deco


def domain_of(node: Node) -> str:
    """The registry's domain key: the default ONNX domain is ``""`` however a model spells it."""
    return "" if node.domain in ("", "ai.onnx") else node.domain


def find_lowering(node: Node) -> Lowering | None:
    return LOWERINGS.get((domain_of(node), node.op_type))


def static_shape(v: Value, node: Node) -> tuple[int, ...]:
    """``v``'s shape as ints, or an ``UnsupportedOpError`` naming the node and the tensor."""
    if v.type is None or not v.type.is_static:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): tensor {v.name!r} has no static shape "
                                 f"({v.type}); the CUDA backend compiles static shapes only")
    return tuple(int(d) for d in v.type.shape)
