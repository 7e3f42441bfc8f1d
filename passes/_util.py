"""Small helpers the built-in graph passes share: which ops may be evaluated or
merged, replacing a value by a constant, and removing what a rewrite left dead."""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Node, Value

# ops whose result differs from run to run: never folded, never merged
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})


def is_deterministic(node: Node) -> bool:
    """False for random ops and for a Dropout that may run in training mode."""
    if node.op_type in NONDETERMINISTIC:
        return False
    if node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
        mode = node.input(2)
        if mode is not None and (mode.const is None or bool(np.asarray(mode.const).any())):
            return False
        if node.attrs.get("is_test", 1) == 0:  # opset < 7
            return False
    return True


def has_subgraph(node: Node) -> bool:
    return bool(node.attrs) and bool(node.subgraphs())


def replace_with_constant(graph: Graph, value: Value, array: np.ndarray) -> Value:
    """Make ``value``'s readers read a new initializer holding ``array``; the
    initializer takes ``value``'s name (so a graph output keeps it)."""
    init = graph.add_initializer(value.name + "_const", array)
    graph.replace_value(value, init, take_name=True)
    return init


def drop_node(graph: Graph, node: Node) -> None:
    """Remove ``node`` (its outputs must be unused), forgetting the reads of its subgraphs too."""
    for sg in node.subgraphs():
        _forget_reads(sg)
    graph.remove(node)


def _forget_reads(g: Graph) -> None:
    for n in g:
        n.set_inputs([])
        for sg in n.subgraphs():
            _forget_reads(sg)


def is_dead(v: Value) -> bool:
    return v.num_uses == 0 and not v.is_graph_output


def remove_dead_from(graph: Graph, seeds: list[Node | Value]) -> int:
    """Remove the seed nodes that nothing reads any more, then, transitively, the
    producers and initializers that only they read. Work is proportional to what
    gets removed (plus the seeds). Returns the number of nodes removed."""
    removed = 0
    work = list(seeds)
    while work:
        item = work.pop()
        if isinstance(item, Value):
            if item.producer is not None:
                work.append(item.producer)
            elif item.const is not None and is_dead(item) and graph.initializers.get(item.name) is item:
                graph.remove_initializer(item)
            continue
        node = item
        if node.graph is not graph or not all(is_dead(v) for v in node.outputs):
            continue
        ins = graph.node_inputs(node)
        drop_node(graph, node)
        removed += 1
        work.extend(v for v in ins if v.graph is graph)
    return removed
