"""Helpers the pass tests share (``from pass_helpers import ...``: a plain module, so that no two
test folders import different files under one name)."""
from graphopt import GraphBuilder
from graphopt.testing import run_passes


def ops(g):
    return [n.op_type for n in g]


def refusals(build, passes, opset=17, **ctx):
    """Build a graph with ``build(b)`` (its result, or tuple of results, become the
    outputs y0, y1...), run ``passes`` once, assert the first one changed nothing and
    return the set of reasons it reported."""
    b = GraphBuilder(opset=opset)
    out = build(b)
    for i, v in enumerate(out if isinstance(out, tuple) else (out,)):
        b.output(v, f"y{i}")
    g0 = b.graph.clone()
    rec = run_passes(b.graph, passes, fixed_point=False, **ctx).records[0]
    assert not rec.modified and ops(b.graph) == ops(g0)
    return {why for (_, why) in rec.refused}


def lowered_sample(name, passes, level=2, **ctx):
    """The sample ``name`` exported and optimized at -O2 (skipped without torch/onnx), then
    ``passes`` run on it at ``level``: (the graph before the passes, the graph after, the Report)."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    models = pytest.importorskip("samples.models")
    g = models.load_graph(name, level=2)
    before = g.clone()
    return before, g, run_passes(g, passes, level=level, **ctx)
