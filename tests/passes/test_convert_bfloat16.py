"""convert_bfloat16: the same rules as float16, and ONNX's bfloat16 type constraints."""
import numpy as np

from graphopt.builder import GraphBuilder
from graphopt.passmanager import PassContext, PassManager
from graphopt.plugins.cpu.backend import run_reference

RNG = np.random.default_rng(0)


def convmlp():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 3, 6, 6))
    c = b.op("Relu", b.op("Conv", x, (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)))
    f = b.op("Flatten", c)
    b.output(b.op("Gemm", f, (RNG.standard_normal((64, 5)) * 0.2).astype(np.float32)), "y")
    return b.graph


def run(g, **options):
    g = g.clone()
    rep = PassManager(["convert_bfloat16"], PassContext(verify=True, options=options), fixed_point=False).run(g)
    return g, rep.records[0]


def test_conv_stays_float32_at_opset_17_gemm_goes_bfloat16():
    g0 = convmlp()
    g, rec = run(g0)
    dt = {n.op_type: n.output.dtype for n in g if n.op_type != "Cast"}
    assert dt == {"Conv": "float32", "Relu": "float32", "Flatten": "float32", "Gemm": "bfloat16"}
    f = {"x": RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    ref, got = run_reference(g0, f)[0], run_reference(g, f)[0]
    assert np.abs(got - ref).max() <= 1.6e-2 * 2 * np.abs(ref).max()


def test_standard_onnx_false_converts_conv_too():
    g0 = convmlp()
    g, rec = run(g0, standard_onnx=False)
    assert all(n.output.dtype == "bfloat16" for n in g if n.op_type in ("Conv", "Relu", "Flatten", "Gemm"))
    assert rec.stats["bfloat16_ops"] == 4
    f = {"x": RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    ref, got = run_reference(g0, f)[0], run_reference(g, f)[0]
    assert np.abs(got - ref).max() <= 1.6e-2 * 2 * np.abs(ref).max()
