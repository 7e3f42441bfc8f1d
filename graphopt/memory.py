"""Memory planning from value lifetimes.

Each intermediate value lives from the node that writes it to the last node
that reads it. ``plan_memory`` packs those live ranges into one arena with a
greedy best-fit by size (the strategy TFLite's and ONNX Runtime's planners use),
so buffers whose lifetimes do not overlap share memory; the arena size is the
planned peak. Graph inputs and outputs and constants are not planned (they
belong to the caller / the model).

>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", (256,))
>>> b.output(b.op("Relu", b.op("Relu", b.op("Relu", x))))
>>> plan_memory(b.graph).peak_bytes   # two 1 KiB temporaries, never both alive... reuse
1024
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import dtypes
from .ir import Graph, Value

ALIGN = 64


@dataclass
class Lifetime:
    value: Value
    start: int  # index of the producing node
    end: int  # index of the last reader
    nbytes: int


@dataclass
class MemoryPlan:
    offsets: dict[Value, int] = field(default_factory=dict)
    lifetimes: list[Lifetime] = field(default_factory=list)
    peak_bytes: int = 0  # arena size
    naive_bytes: int = 0  # sum of all planned buffers without reuse
    last_use: dict[Value, int] = field(default_factory=dict)  # node index after which a value is dead
    unplanned: list[Value] = field(default_factory=list)  # dynamic shapes: allocated at run time

    def summary(self) -> str:
        return (f"planned peak {self.peak_bytes / 2**20:.2f} MiB for {len(self.offsets)} buffers "
                f"(without reuse {self.naive_bytes / 2**20:.2f} MiB)")


def value_nbytes(v: Value, shapes: dict[Value, tuple] | None = None) -> int | None:
    shape = shapes.get(v) if shapes else None
    if shape is None:
        if v.type is None or not v.type.is_static:
            return None
        shape = v.type.shape
    if v.type is None or v.type.dtype == "string":
        return None
    itemsize = dtypes.to_numpy(v.type.dtype).itemsize
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def last_uses(graph: Graph) -> dict[Value, int]:
    """For every value read by a node of ``graph``, the index of its last reader."""
    last: dict[Value, int] = {}
    for i, n in enumerate(graph):
        for v in graph.node_inputs(n):
            last[v] = i
    return last


def plan_memory(graph: Graph, shapes: dict[Value, tuple] | None = None) -> MemoryPlan:
    """Assign arena offsets to the intermediate values of ``graph``."""
    plan = MemoryPlan()
    last = last_uses(graph)
    plan.last_use = last
    keep = set(graph.outputs)
    for i, n in enumerate(graph):
        for v in n.outputs:
            if v in keep:
                continue
            nb = value_nbytes(v, shapes)
            if nb is None:
                plan.unplanned.append(v)
                continue
            plan.lifetimes.append(Lifetime(v, i, last.get(v, i), nb))
    # greedy by size: place the biggest buffers first at the lowest offset free over their lifetime
    placed: list[tuple[int, int, Lifetime]] = []  # (offset, size, lifetime)
    for lt in sorted(plan.lifetimes, key=lambda l: (-l.nbytes, l.start)):
        size = -(-lt.nbytes // ALIGN) * ALIGN
        busy = sorted((off, sz) for off, sz, o in placed if not (o.end < lt.start or lt.end < o.start))
        offset = 0
        best = None
        for off, sz in busy:
            gap = off - offset
            if gap >= size and (best is None or gap < best[1]):
                best = (offset, gap)
            offset = max(offset, off + sz)
        chosen = best[0] if best is not None else offset
        placed.append((chosen, size, lt))
        plan.offsets[lt.value] = chosen
        plan.peak_bytes = max(plan.peak_bytes, chosen + size)
        plan.naive_bytes += size
    return plan
