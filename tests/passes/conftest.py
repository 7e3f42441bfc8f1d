"""Helpers the pass tests share (imported as ``from conftest import ...``, as in tests/quantize)."""
from graphopt import GraphBuilder
from graphopt.testing import run_passes


def ops(g):
    return [n.op_type for n in g]


def refusals(build, passes, opset=17):
    """Build a graph with ``build(b)`` (its result, or tuple of results, become the
    outputs y0, y1...), run ``passes`` once, assert the first one changed nothing and
    return the set of reasons it reported."""
    b = GraphBuilder(opset=opset)
    out = build(b)
    for i, v in enumerate(out if isinstance(out, tuple) else (out,)):
        b.output(v, f"y{i}")
    g0 = b.graph.clone()
    rec = run_passes(b.graph, passes, fixed_point=False).records[0]
    assert not rec.modified and ops(b.graph) == ops(g0)
    return {why for (_, why) in rec.refused}
