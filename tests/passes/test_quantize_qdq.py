"""quantize_qdq: the static QDQ pass, run by name with calibration data in the options."""
from collections import Counter

import numpy as np

from graphopt.builder import GraphBuilder
from graphopt.passmanager import PassContext, PassManager, default_pipeline
from graphopt.plugins.cpu.backend import run_reference

RNG = np.random.default_rng(0)


def small():
    b = GraphBuilder(opset=17)
    x = b.input("x", ("N", 12))
    h = b.op("Relu", b.op("Gemm", x, (RNG.standard_normal((12, 8)) * 0.3).astype(np.float32),
                          np.zeros(8, np.float32), name="fc1"))
    b.output(b.op("Softmax", b.op("MatMul", h, (RNG.standard_normal((8, 4)) * 0.3).astype(np.float32), name="fc2"),
                  axis=-1), "p")
    return b.graph


def run(g, **options):
    g = g.clone()
    rep = PassManager(["quantize_qdq"], PassContext(verify=True, options=options), fixed_point=False).run(g)
    return g, rep.records[0]


def test_inserts_qdq_and_stays_close_to_float():
    g0 = small()
    data = [{"x": RNG.standard_normal((16, 12)).astype(np.float32)} for _ in range(4)]
    g, rec = run(g0, calibration_data=data, quantize_method="percentile")
    assert rec.modified and rec.stats["layers"] == 2 and rec.stats["qdq_pairs"] == 3
    ops = Counter(n.op_type for n in g)
    assert ops["QuantizeLinear"] == 3 and ops["DequantizeLinear"] == 3 + 2 + 1 and ops["Softmax"] == 1
    # x, Relu(fc1) and fc2 (read by the float Softmax) carry Q/DQ
    f = data[0]
    np.testing.assert_allclose(run_reference(g, f)[0], run_reference(g0, f)[0], atol=0.02)


def test_must_not_fire_without_calibration_data_and_is_never_in_a_default_pipeline():
    g, rec = run(small())
    assert not rec.modified and [n.op_type for n in g] == ["Gemm", "Relu", "MatMul", "Softmax"]
    assert rec.refused == Counter({("quantize_qdq", "no calibration_data in the pass options"): 1})
    for level in (1, 2, 3):
        assert "quantize_qdq" not in [p.name for p in default_pipeline(level)]
