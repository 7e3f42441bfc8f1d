"""Dead code elimination.

    y = Relu(x); z = Neg(x)  [only y is an output]  =>  y = Relu(x)

A node lives when one of its outputs is a graph output or is read by a live
node; reads from inside a live node's subgraphs count (they are cleaned first,
so a read by a dead node of a branch keeps nothing alive). One walk backwards
from the outputs marks what lives, one walk over the node list removes the
rest: O(nodes + edges). Initializers nobody reads go too; graph inputs never.
"""
from __future__ import annotations

from graphopt.ir import Graph
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import drop_node


def dead_code_elimination(graph: Graph) -> tuple[int, int]:
    """Remove dead nodes and unused initializers of ``graph`` and its live subgraphs.

    Returns ``(nodes removed, initializers removed)``, subgraphs included.
    """
    live: set = set()
    nodes_removed = inits_removed = 0
    stack = [v for v in graph.outputs]
    while stack:
        v = stack.pop()
        node = v.producer
        if node is None or node in live or node.graph is not graph:
            continue
        live.add(node)
        for sg in node.subgraphs():  # first, so that dead reads inside do not keep outer nodes alive
            n, i = dead_code_elimination(sg)
            nodes_removed += n
            inits_removed += i
        stack.extend(graph.node_inputs(node))
    # users come after producers: removing from the back leaves no dangling use behind
    node = graph._tail
    while node is not None:
        prev = node.prev
        if node not in live:
            for v in node.outputs:  # dead readers are gone already; a live one would be a bug
                if v.num_uses or v.is_graph_output:
                    raise RuntimeError(f"node {node.name!r} was found dead but {v.name!r} is read")
            drop_node(graph, node)
            nodes_removed += 1
        node = prev
    for v in list(graph.initializers.values()):
        if v.num_uses == 0 and not v.is_graph_output:
            graph.remove_initializer(v)
            inits_removed += 1
    return nodes_removed, inits_removed


@register_pass("eliminate_dead_code", opt_level=1, kind="graph", order=90)
def eliminate_dead_code(graph: Graph, ctx: PassContext) -> PassResult:
    """y = Relu(x); z = Neg(x) [z unread] => y = Relu(x); unused initializers removed."""
    nodes, inits = dead_code_elimination(graph)
    stats = {k: v for k, v in (("nodes_removed", nodes), ("initializers_removed", inits)) if v}
    return PassResult(bool(nodes or inits), stats)
