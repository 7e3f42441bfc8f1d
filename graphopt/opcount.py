"""What an optimization did to a model, as a user reads it: op counts before and after,
and the model's size (weights, and the files on disk when there are files).

``graphopt optimize`` prints this table (and puts it under ``"model"`` in ``--json``),
as onnxslim does.

>>> import graphopt
>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", (2, 3)); y = b.output(b.op("Relu", b.op("Identity", x)), "y")
>>> diff = compare(b.graph, graphopt.optimize(b.graph, level=1))
>>> [(r["op"], r["before"], r["after"]) for r in diff.to_json()["ops"]]
[('Relu', 1, 1), ('Identity', 1, 0)]
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from .ir import Graph


def op_counts(graph: Graph) -> Counter:
    """Nodes of the main graph by op (``domain::op`` outside the default domain).

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); y = b.output(b.op("Relu", b.input("x", (2,))), "y")
    >>> op_counts(b.graph)
    Counter({'Relu': 1})
    """
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in graph)


def weight_bytes(graph: Graph) -> int:
    """Bytes of the graph's initializers (what dominates a model file's size)."""
    return sum(int(v.const.nbytes) for v in graph.initializers.values() if v.const is not None)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@dataclass
class OpDiff:
    """Op counts and sizes before and after; ``table()`` for people, ``to_json()`` for tools."""

    before: Counter
    after: Counter
    weights_before: int
    weights_after: int
    file_before: int | None = None
    file_after: int | None = None

    def rows(self) -> list[tuple[str, int, int]]:
        ops = sorted(set(self.before) | set(self.after), key=lambda op: (-self.before[op], -self.after[op], op))
        return [(op, self.before[op], self.after[op]) for op in ops]

    def to_json(self) -> dict:
        return {"ops": [{"op": op, "before": b, "after": a} for op, b, a in self.rows()],
                "nodes": {"before": sum(self.before.values()), "after": sum(self.after.values())},
                "weight_bytes": {"before": self.weights_before, "after": self.weights_after},
                "file_bytes": {"before": self.file_before, "after": self.file_after}}

    def table(self):
        """A ``Table`` (op, before, after), changed ops marked, a total row last."""
        from .commands.output import Table

        t = Table("op", "before", "after", "", title="ops before and after", right=("before", "after"))
        for op, b, a in self.rows():
            t.add_row(op, b, a, "" if a == b else f"{a - b:+d}")
        nb, na = sum(self.before.values()), sum(self.after.values())
        t.add_row("total", nb, na, "" if na == nb else f"{na - nb:+d}")
        return t

    def size_line(self) -> str:
        """One line: the weights' size before -> after, and the files' where known."""
        line = f"model size: weights {_size(self.weights_before)} -> {_size(self.weights_after)}"
        if self.file_before is not None or self.file_after is not None:
            line += f"; file {_size(self.file_before)} -> {_size(self.file_after)}"
        return line


def _file_bytes(path) -> int | None:
    """A model file's size with its external data files (``name.onnx.data`` beside it)."""
    if path is None or not os.path.isfile(path):
        return None
    total = os.path.getsize(path)
    data = f"{path}.data"
    return total + os.path.getsize(data) if os.path.isfile(data) else total


def compare(before: Graph, after: Graph, *, file_before=None, file_after=None) -> OpDiff:
    """The ``OpDiff`` between two graphs (and their files, when paths are given)."""
    return OpDiff(op_counts(before), op_counts(after), weight_bytes(before), weight_bytes(after),
                  _file_bytes(file_before), _file_bytes(file_after))


__all__ = ["OpDiff", "compare", "op_counts", "weight_bytes"]
