"""Common subexpression elimination by value numbering.

    a = Relu(x); b = Relu(x); Add(a, b)      =>  a = Relu(x); Add(a, a)
    Add(x, y) and Add(y, x)                  =>  one Add (commutative ops sort their inputs)
    two initializers with equal dtype, shape and bytes  =>  one

A node's key is (domain, op_type, its inputs' identities, its attributes with
the schema's defaults filled in and tensors as bytes, its number of outputs);
nodes are visited once in topological order, a duplicate's readers are moved
to the first node with that key, so chains of duplicates collapse in one sweep.
Initializers are grouped by dtype and shape and hashed only when a group has
more than one member. Random ops, training-mode Dropout and nodes with
subgraphs are never merged. When the duplicate's output is a graph output the
kept value takes its name; if both are graph outputs, both stay.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np

from graphopt.ir import Graph, Node, Value
from graphopt.ops.registry import get_schema
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import drop_node, has_subgraph, is_deterministic

RULE = "eliminate_common_subexpressions"

# every input may be permuted without changing the result
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal",
                         "BitwiseAnd", "BitwiseOr", "BitwiseXor"})


def _canon(a):
    """A hashable stand-in for an attribute value."""
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            return ("tensor", "object", a.shape, tuple(map(str, a.reshape(-1))))
        return ("tensor", a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())
    if isinstance(a, (list, tuple)):
        return tuple(_canon(x) for x in a)
    if isinstance(a, float) and math.isnan(a):
        return ("nan",)
    if isinstance(a, (np.generic,)):
        return _canon(np.asarray(a))
    return a


def _array_digest(a: np.ndarray) -> bytes:
    if a.dtype == object:
        return hashlib.blake2b(repr(a.tolist()).encode(), digest_size=16).digest()
    a = np.ascontiguousarray(a)
    # an empty array has no bytes (and memoryview refuses to cast a view with a 0 in its shape)
    return hashlib.blake2b(memoryview(a).cast("B") if a.size else b"", digest_size=16).digest()


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    # bytes, not values: -0.0 and 0.0 differ, equal NaN payloads match
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


class _CSE:
    def __init__(self):
        self.stats: Counter = Counter()
        self.refused: Counter = Counter()

    def run(self, g: Graph) -> None:
        self.dedupe_initializers(g)
        table: dict[tuple, Node] = {}
        for node in list(g):
            if has_subgraph(node):
                for sg in node.subgraphs():
                    self.run(sg)
                continue
            if not is_deterministic(node):
                continue
            key = self.key(node)
            if key is None:
                continue
            first = table.get(key)
            if first is None:
                table[key] = node
                continue
            why = next((g.replace_value_blocker(old, new) for old, new in zip(node.outputs, first.outputs)
                        if g.replace_value_blocker(old, new)), None)
            if why:
                self.refused[(RULE, why)] += 1
                continue
            for old, new in zip(node.outputs, first.outputs):
                g.replace_value(old, new)
            drop_node(g, node)
            self.stats["nodes_merged"] += 1

    @staticmethod
    def key(node: Node) -> tuple | None:
        ins = node.inputs  # the Value objects themselves: identity, and no id() reuse
        if node.op_type in COMMUTATIVE and node.domain in ("", "ai.onnx") and None not in ins:
            ins = tuple(sorted(ins, key=id))
        schema = get_schema(node.op_type, node.domain)
        attrs = schema.resolve_attrs(node.attrs) if schema is not None else node.attrs
        try:
            akey = tuple(sorted((k, _canon(v)) for k, v in attrs.items()))
            hash(akey)
        except TypeError:  # an attribute we cannot compare: leave the node alone
            return None
        return (node.domain, node.op_type, ins, akey, len(node.outputs))

    def dedupe_initializers(self, g: Graph) -> None:
        groups: dict[tuple, list[Value]] = {}
        for v in g.initializers.values():
            a = v.const
            groups.setdefault((a.dtype.str, a.shape), []).append(v)
        for members in groups.values():
            if len(members) < 2:
                continue
            by_digest: dict[bytes, list[Value]] = {}
            for v in members:
                kept = by_digest.setdefault(_array_digest(v.const), [])
                twin = next((k for k in kept if _same_array(k.const, v.const)), None)
                if twin is None:
                    kept.append(v)
                    continue
                if v.is_graph_output and twin.is_graph_output:
                    self.refused[(RULE, f"initializers {twin.name!r} and {v.name!r} are both graph outputs")] += 1
                    continue
                if v.is_graph_output:  # keep the one whose name is fixed
                    kept[kept.index(twin)] = v
                    twin, v = v, twin
                g.replace_value(v, twin)
                g.remove_initializer(v)
                self.stats["initializers_merged"] += 1


@register_pass("eliminate_common_subexpressions", opt_level=1, kind="graph", order=30)
def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> PassResult:
    """Relu(x) twice => Relu(x) once; Add(x, y) ~ Add(y, x); equal initializers merged."""
    cse = _CSE()
    cse.run(graph)
    return PassResult(bool(cse.stats), dict(cse.stats), cse.refused)
