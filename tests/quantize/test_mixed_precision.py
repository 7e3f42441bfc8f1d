"""float16 / bfloat16 conversion: float32 islands, edges, constants, Cast pairs."""
from collections import Counter

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu.backend import run_reference
from graphopt.quantize import convert_bfloat16, convert_float16
from graphopt.quantize.mixed_precision import remove_cast_pairs

RNG = np.random.default_rng(0)


def block(opset=17):
    """MatMul + bias, a decomposed LayerNorm, Softmax, Reshape, two MatMuls sharing a weight."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", (2, 4, 16))
    w = b.const((RNG.standard_normal((16, 16)) * 0.3).astype(np.float32), "w")
    h = b.op("Add", b.op("MatMul", x, w, name="mm1"), (np.ones(16) * 0.1).astype(np.float32), name="bias")
    m = b.op("ReduceMean", h, axes=[-1], name="mean")
    d = b.op("Sub", h, m, name="center")
    v = b.op("ReduceMean", b.op("Pow", d, np.float32(2.0), name="sq"), axes=[-1], name="var")
    n = b.op("Div", d, b.op("Sqrt", b.op("Add", v, np.float32(1e-5), name="eps"), name="std"), name="norm")
    s = b.op("Softmax", n, axis=-1, name="sm")
    y = b.op("Relu", b.op("MatMul", s, w, name="mm2"), name="act")
    b.output(y, "y")
    b.output(h, "h")
    return b.graph


def dtypes_of(g):
    return {n.name: n.output.dtype for n in g}


@pytest.mark.parametrize("convert,low,tol", [(convert_float16, "float16", 1e-2), (convert_bfloat16, "bfloat16", 5e-2)])
def test_islands_edges_and_numbers(convert, low, tol):
    g = block()
    c = convert(g)
    c.verify()
    dt = dtypes_of(c)
    assert dt["mm1"] == low and dt["bias"] == low and dt["mm2"] == low and dt["act"] == low
    # blocklisted ops and the elementwise ops between them stay float32: no Cast ping-pong
    for name in ("mean", "center", "sq", "var", "eps", "std", "norm", "sm"):
        assert dt[name] == "float32", name
    # inputs and outputs keep float32 and their names
    assert [(v.name, v.dtype) for v in c.inputs] == [("x", "float32")]
    assert [(v.name, v.dtype) for v in c.outputs] == [("y", "float32"), ("h", "float32")]
    # the weight shared by both MatMuls is converted once; the float32 original is gone
    lows = [v for v in c.initializers.values() if v.dtype == low and v.shape == (16, 16)]
    assert len(lows) == 1 and lows[0].num_uses == 2 and "w" not in c.initializers
    casts = Counter((n.input(0).dtype, n.output.dtype) for n in c if n.op_type == "Cast")
    # x -> low; h (low) -> float32 once, shared by the output and the LayerNorm; softmax -> low; y -> float32
    assert casts == Counter({("float32", low): 2, (low, "float32"): 2})
    rep = c.meta["precision_report"]
    assert rep["float32_ops"]["Softmax: blocklisted"] == 1
    feeds = {"x": RNG.standard_normal((2, 4, 16)).astype(np.float32)}
    for ref, got in zip(run_reference(g, feeds), run_reference(c, feeds)):
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


def test_float16_model_passes_onnx_checker_and_runs_in_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import graphopt

    g = block()
    c = convert_float16(g)
    path = graphopt.save(c, tmp_path / "fp16.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    feeds = {"x": RNG.standard_normal((2, 4, 16)).astype(np.float32)}
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # pragma: no cover - depends on onnxruntime's float16 CPU kernels
        pytest.skip(f"onnxruntime has no float16 kernel here: {exc}")
    for a, b_ in zip(sess.run(None, feeds), run_reference(c, feeds)):
        np.testing.assert_allclose(a, b_, rtol=2e-3, atol=2e-3)


def test_bfloat16_keeps_ops_onnx_does_not_allow_unless_asked():
    b = GraphBuilder(opset=17)
    x = b.input("x", (1, 2, 5, 5))
    y = b.op("Conv", x, (RNG.standard_normal((3, 2, 3, 3)) * 0.3).astype(np.float32), name="cv")
    b.output(b.op("Relu", y, name="rl"), "y")
    std = convert_bfloat16(b.graph)
    assert dtypes_of(std) == {"cv": "float32", "rl": "float32"}
    assert "Conv: ONNX Conv-17 does not allow bfloat16" in std.meta["precision_report"]["float32_ops"]
    free = convert_bfloat16(b.graph, standard=False)
    assert dtypes_of(free)["cv"] == "bfloat16" and dtypes_of(free)["rl"] == "bfloat16"
    feeds = {"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)}
    ref, got = run_reference(b.graph, feeds)[0], run_reference(free, feeds)[0]
    assert np.abs(got - ref).max() <= 1.6e-2 * 4 * np.abs(ref).max()


def test_keep_io_types_false_changes_the_interface():
    g = convert_float16(block(), keep_io_types=False)
    assert g.inputs[0].dtype == "float16" and g.outputs[0].dtype == "float16"
    assert not any(n.op_type == "Cast" and n.input(0).is_graph_input for n in g)


def test_cast_pair_between_float32_ops_is_removed_and_a_real_cast_is_not():
    b = GraphBuilder(opset=17)
    x = b.input("x", (4,))
    e = b.op("Exp", x)
    y = b.op("Log", b.op("Cast", b.op("Cast", e, to=10), to=1))  # Exp -> f16 -> f32 -> Log: does nothing
    inner = b.op("Cast", x, to=10)
    z = b.op("Add", b.op("Cast", inner, to=1), x)  # this pair's inner Cast has a second reader: kept
    b.output(y, "y")
    b.output(z, "z")
    b.output(b.op("Neg", inner), "h")
    g = b.graph
    assert remove_cast_pairs(g) == 1
    g.verify()
    log = next(n for n in g if n.op_type == "Log")
    assert log.input(0) is e
    assert sum(n.op_type == "Cast" for n in g) == 2
    assert remove_cast_pairs(g) == 0


def test_nothing_to_convert_is_left_alone():
    b = GraphBuilder(opset=17)
    x = b.input("x", (3,), "int64")
    b.output(b.op("Add", x, x), "y")
    g = convert_float16(b.graph)
    assert [n.op_type for n in g] == ["Add"] and g.meta["precision_report"]["converted_ops"] == {}
