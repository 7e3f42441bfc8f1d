"""convert_float16: float16 with float32 islands and float32 model edges."""
from collections import Counter

import numpy as np

from graphopt.builder import GraphBuilder
from graphopt.passmanager import PassContext, PassManager, default_pipeline
from graphopt.plugins.cpu.backend import run_reference

RNG = np.random.default_rng(0)


def attention_like():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 6, 8))
    q = b.op("MatMul", x, (RNG.standard_normal((8, 8)) * 0.3).astype(np.float32))
    s = b.op("Softmax", b.op("MatMul", q, b.op("Transpose", q, perm=[0, 2, 1])), axis=-1)
    b.output(b.op("MatMul", s, q), "y")
    return b.graph


def run(g, pass_name="convert_float16", **options):
    g = g.clone()
    rep = PassManager([pass_name], PassContext(verify=True, options=options), fixed_point=False).run(g)
    return g, rep.records[0]


def test_softmax_stays_float32_the_rest_is_float16():
    g0 = attention_like()
    g, rec = run(g0)
    assert rec.modified and rec.stats["float16_ops"] == 4  # 3 MatMuls + Transpose
    dt = {n.op_type: n.output.dtype for n in g if n.op_type != "Cast"}
    assert dt["Softmax"] == "float32" and dt["MatMul"] == "float16" and dt["Transpose"] == "float16"
    casts = Counter((n.input(0).dtype, n.output.dtype) for n in g if n.op_type == "Cast")
    # x in, around Softmax (out and back), y out
    assert casts == Counter({("float32", "float16"): 2, ("float16", "float32"): 2})
    assert g.outputs[0].dtype == "float32" and g.outputs[0].name == "y"
    f = {"x": RNG.standard_normal((2, 6, 8)).astype(np.float32)}
    ref, got = run_reference(g0, f)[0], run_reference(g, f)[0]
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()


def test_must_not_fire_on_an_all_blocklisted_graph_or_in_a_default_pipeline():
    b = GraphBuilder(opset=17)
    x = b.input("x", (3, 4))
    b.output(b.op("Softmax", b.op("Exp", x), axis=-1), "y")
    g, rec = run(b.graph)
    assert not rec.modified and [n.op_type for n in g] == ["Exp", "Softmax"]
    for level in (1, 2, 3):
        assert "convert_float16" not in [p.name for p in default_pipeline(level)]
