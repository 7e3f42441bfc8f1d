"""Dynamic quantization: DynamicQuantizeLinear + MatMulInteger, standard ONNX."""
from collections import Counter

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu.backend import run_reference
from graphopt.quantize import quantize_dynamic


def mlp():
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", ("B", 6, 32))
    h = b.op("Relu", b.op("Add", b.op("MatMul", x, rng.standard_normal((32, 48)).astype(np.float32) * 0.2,
                                      name="mm1"), (rng.standard_normal(48) * 0.1).astype(np.float32)))
    h2 = b.op("Reshape", h, np.array([-1, 48], np.int64))
    y = b.op("Gemm", h2, rng.standard_normal((16, 48)).astype(np.float32) * 0.2,
             (rng.standard_normal(16) * 0.1).astype(np.float32), transB=1, alpha=0.5, beta=2.0, name="fc")
    b.output(y, "y")
    k = b.input("k", ("B", 32, 6))
    b.output(b.op("MatMul", x, k, name="act_mm"), "s")  # two activations: must not be touched
    return b.graph


def test_structure_and_names():
    g = mlp()
    q = quantize_dynamic(g)
    q.verify()
    c = Counter(n.op_type for n in q)
    assert c["DynamicQuantizeLinear"] == 2 and c["MatMulInteger"] == 2 and c["Gemm"] == 0
    assert c["MatMul"] == 1  # the activation x activation MatMul stays
    assert [v.name for v in q.outputs] == ["y", "s"]
    assert [d["layer"] for d in q.meta["quantization_report"]["quantized"]] == ["mm1", "fc"]
    w = [n.input(1).const for n in q if n.op_type == "MatMulInteger"]
    assert all(a.dtype == np.int8 for a in w) and w[1].shape == (48, 16)  # Gemm's transB folded


def test_numbers_close_to_float_and_onnxruntime_agrees(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import graphopt

    g = mlp()
    q = quantize_dynamic(g, reduce_range=True)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 6, 32)).astype(np.float32),
             "k": rng.standard_normal((2, 32, 6)).astype(np.float32)}
    ref, got = run_reference(g, feeds), run_reference(q, feeds)
    assert np.linalg.norm(got[0] - ref[0]) / np.linalg.norm(ref[0]) < 0.03
    np.testing.assert_array_equal(got[1], ref[1])
    path = graphopt.save(q, tmp_path / "dyn.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, feeds)
    np.testing.assert_allclose(theirs[0], got[0], rtol=1e-4, atol=1e-4)


def test_must_not_fire_on_non_float_or_runtime_weights():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 4))
    w = b.input("w", (4, 3))
    b.output(b.op("MatMul", x, w), "y")
    q = quantize_dynamic(b.graph)
    assert [n.op_type for n in q] == ["MatMul"] and q.meta["quantization_report"]["quantized"] == []
