"""Quantization ops against onnx.reference.ReferenceEvaluator (exact), and the fused
int8 ops against their integer contract."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from graphopt.builder import GraphBuilder  # noqa: E402
from graphopt.ops import quant as Q  # noqa: E402
from graphopt.plugins.cpu.backend import run_reference  # noqa: E402

RNG = np.random.default_rng(0)


def ours(op, inputs, attrs=None, opset=21, domain="", num_outputs=1):
    """Run one op on graphopt's reference (through the registry, with shape inference)."""
    b = GraphBuilder(opset=opset)
    vals, feeds = [], {}
    for i, a in enumerate(inputs):
        if a is None:
            vals.append(None)
        elif i == 0:
            from graphopt import dtypes
            vals.append(b.input("x0", a.shape, dtypes.from_numpy(a.dtype)))
            feeds["x0"] = a
        else:
            vals.append(b.const(a, f"c{i}"))
    outs = b.op(op, *vals, domain=domain, num_outputs=num_outputs, **(attrs or {}))
    outs = outs if isinstance(outs, tuple) else (outs,)
    for o in outs:
        b.output(o)
    res = run_reference(b.graph, feeds)
    for o, r in zip(outs, res):  # inferred types match what the kernel produced
        assert o.type.dtype == __import__("graphopt").dtypes.from_numpy(r.dtype), (op, o.type, r.dtype)
        if o.type.shape is not None:
            assert tuple(o.type.shape) == r.shape, (op, o.type, r.shape)
    return res


def theirs(op, inputs, attrs=None, opset=21, num_outputs=1):
    names = ["" if a is None else f"i{k}" for k, a in enumerate(inputs)]
    while names and names[-1] == "":
        names.pop()
    outs = [f"o{k}" for k in range(num_outputs)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    ref = ReferenceEvaluator(node, opset=opset) if "opset" in ReferenceEvaluator.__init__.__code__.co_varnames \
        else ReferenceEvaluator(node)
    return ref.run(None, {n: a for n, a in zip(names, inputs) if n})


def same(a, b):
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        np.testing.assert_array_equal(x.astype(np.float64), y.astype(np.float64))


@pytest.mark.parametrize("qtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_quantize_linear_per_tensor_saturates_and_rounds_half_to_even(qtype):
    x = (RNG.standard_normal((3, 4, 5)) * 40).astype(np.float32)
    x.flat[:6] = [0.5, 1.5, 2.5, -0.5, -1.5, 1e9]  # ties and saturation
    s, z = np.float32(0.5), np.array(3, qtype)
    same(ours("QuantizeLinear", [x, s, z]), theirs("QuantizeLinear", [x, s, z]))
    y = ours("QuantizeLinear", [np.array([0.5, 1.5, 2.5], np.float32), np.float32(1.0), np.array(0, qtype)])[0]
    assert list(y) == [0, 2, 2]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_dequantize_per_axis(axis):
    x = (RNG.standard_normal((4, 6, 5)) * 3).astype(np.float32)
    n = x.shape[axis]
    s = (RNG.random(n) * 0.1 + 0.01).astype(np.float32)
    z = RNG.integers(-20, 20, n).astype(np.int8)
    q = ours("QuantizeLinear", [x, s, z], {"axis": axis})
    same(q, theirs("QuantizeLinear", [x, s, z], {"axis": axis}))
    same(ours("DequantizeLinear", [q[0], s, z], {"axis": axis}),
         theirs("DequantizeLinear", [q[0], s, z], {"axis": axis}))


def test_quantize_dequantize_blocked():
    x = (RNG.standard_normal((4, 10)) * 3).astype(np.float32)
    s = (RNG.random((4, 3)) * 0.1 + 0.01).astype(np.float32)  # blocks of 4 along axis 1 (last one short)
    z = RNG.integers(0, 255, (4, 3)).astype(np.uint8)
    attrs = {"axis": 1, "block_size": 4}
    q = ours("QuantizeLinear", [x, s, z], attrs)
    same(q, theirs("QuantizeLinear", [x, s, z], attrs))
    same(ours("DequantizeLinear", [q[0], s, z], attrs), theirs("DequantizeLinear", [q[0], s, z], attrs))


def test_quantize_output_dtype_attr_and_default_uint8():
    x = (RNG.standard_normal((8,)) * 100).astype(np.float32)
    same(ours("QuantizeLinear", [x, np.float32(0.7)], {"output_dtype": TensorProto.INT8}),
         theirs("QuantizeLinear", [x, np.float32(0.7)], {"output_dtype": TensorProto.INT8}))
    same(ours("QuantizeLinear", [x, np.float32(0.7)]), theirs("QuantizeLinear", [x, np.float32(0.7)]))


def test_dequantize_int32_bias_and_float16_scale():
    b = RNG.integers(-2 ** 20, 2 ** 20, 16).astype(np.int32)
    same(ours("DequantizeLinear", [b, np.float32(1e-4)]), theirs("DequantizeLinear", [b, np.float32(1e-4)]))
    q = RNG.integers(0, 255, 16).astype(np.uint8)
    same(ours("DequantizeLinear", [q, np.float16(0.25), np.uint8(7)]),
         theirs("DequantizeLinear", [q, np.float16(0.25), np.uint8(7)]))


def test_quantize_float8_saturates():
    x = np.array([0.0, 1.0, -3.3, 1e6, -1e6], np.float32)
    z = np.zeros((), dtype=__import__("ml_dtypes").float8_e4m3fn)
    a, b = ours("QuantizeLinear", [x, np.float32(1.0), z]), theirs("QuantizeLinear", [x, np.float32(1.0), z])
    np.testing.assert_array_equal(a[0].astype(np.float32), b[0].astype(np.float32))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_dynamic_quantize_linear(scale):
    x = (RNG.standard_normal((3, 7)) * scale + 1).astype(np.float32)
    same(ours("DynamicQuantizeLinear", [x], num_outputs=3), theirs("DynamicQuantizeLinear", [x], num_outputs=3))
    pos = np.abs(x)
    same(ours("DynamicQuantizeLinear", [pos], num_outputs=3),
         theirs("DynamicQuantizeLinear", [pos], num_outputs=3))


@pytest.mark.parametrize("attrs", [{}, {"pads": [1, 1, 1, 1], "strides": [2, 2]},
                                   {"group": 2, "dilations": [2, 1], "pads": [0, 1, 2, 0]},
                                   {"auto_pad": "SAME_UPPER", "strides": [2, 2]}])
def test_conv_integer_and_qlinear_conv(attrs):
    x = RNG.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8)
    g = attrs.get("group", 1)
    w = RNG.integers(-128, 128, (6, 4 // g, 3, 3)).astype(np.int8)
    xz, wz = np.uint8(120), np.int8(0)
    same(ours("ConvInteger", [x, w, xz, wz], attrs), theirs("ConvInteger", [x, w, xz, wz], attrs))
    xs, ys, yz = np.float32(0.02), np.float32(0.5), np.uint8(100)
    ws = (RNG.random(6) * 0.02 + 0.001).astype(np.float32)
    wzs = np.zeros(6, np.int8)
    bias = RNG.integers(-5000, 5000, 6).astype(np.int32)
    ins = [x, xs, xz, w, ws, wzs, ys, yz, bias]
    same(ours("QLinearConv", ins, attrs), theirs("QLinearConv", ins, attrs))


def test_conv_integer_1d():
    x = RNG.integers(0, 256, (1, 3, 11)).astype(np.uint8)
    w = RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    attrs = {"strides": [3], "pads": [2, 1]}
    same(ours("ConvInteger", [x, w, np.uint8(9)], attrs), theirs("ConvInteger", [x, w, np.uint8(9)], attrs))


def test_matmul_integer_and_qlinear_matmul():
    a = RNG.integers(0, 256, (2, 5, 8)).astype(np.uint8)
    b = RNG.integers(-128, 128, (8, 3)).astype(np.int8)
    same(ours("MatMulInteger", [a, b, np.uint8(128), np.int8(-3)]),
         theirs("MatMulInteger", [a, b, np.uint8(128), np.int8(-3)]))
    bz = np.array([1, -2, 0], np.int8)  # per column
    same(ours("MatMulInteger", [a, b, np.uint8(128), bz]), theirs("MatMulInteger", [a, b, np.uint8(128), bz]))
    ins = [a, np.float32(0.05), np.uint8(128), b, np.float32(0.01), np.int8(0), np.float32(0.3), np.uint8(10)]
    same(ours("QLinearMatMul", ins), theirs("QLinearMatMul", ins))
    a8 = RNG.integers(-128, 128, (5, 8)).astype(np.int8)
    ins = [a8, np.float32(0.05), np.int8(0), b, np.float32(0.01), np.int8(0), np.float32(0.03), np.int8(-5)]
    same(ours("QLinearMatMul", ins), theirs("QLinearMatMul", ins))


# -- graphopt's fused ops -------------------------------------------------------------


def test_rshift_round_half_even_matches_rint():
    p = RNG.integers(-2 ** 40, 2 ** 40, 10000)
    p[:8] = [5, 6, 7, -5, -6, -7, 2, -2]
    for s in (1, 3, 17):
        want = np.rint(p.astype(np.float64) / 2.0 ** s).astype(np.int64)
        np.testing.assert_array_equal(Q.rshift_round_half_even(p, np.int64(s)), want)


def test_quantize_multiplier_is_accurate():
    m = RNG.random(1000) * 10.0 ** RNG.uniform(-8, 1, 1000)
    m0, shift = Q.quantize_multiplier(m)
    assert ((m0 >= 2 ** 30) & (m0 < 2 ** 31)).all()
    np.testing.assert_allclose(m0 / 2.0 ** shift, m, rtol=2 ** -30)


def _qconv_inputs(act="", out=True, bias=True):
    x = RNG.integers(0, 256, (2, 3, 6, 6)).astype(np.uint8)
    w = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ws = (RNG.random(4) * 0.01 + 0.002).astype(np.float32)
    ins = [x, np.float32(0.03), np.uint8(117), w, ws, np.zeros(4, np.int8)]
    ins += [np.float32(0.2), np.uint8(90)] if out else [None, None]
    ins += [RNG.integers(-3000, 3000, 4).astype(np.int32)] if bias else []
    return ins


@pytest.mark.parametrize("act", ["", "Relu", "Clip"])
def test_qconv_is_exact_integer_requantization(act):
    ins = _qconv_inputs()
    attrs = {"pads": [1, 1, 1, 1], "activation": act, **({"act_min": -1.0, "act_max": 6.0} if act == "Clip" else {})}
    (got,) = ours("QConv", ins, attrs, domain="ai.graphopt")
    x, xs, xz, w, ws, wz, ys, yz, bias = ins
    acc = Q.conv_int(x.astype(np.int64) - 117, w.astype(np.int64), {"pads": [1, 1, 1, 1]}) + bias.reshape(1, -1, 1, 1)
    # the contract, in exact rational arithmetic (Python ints): round half to even of acc * m0 / 2**shift
    m0, sh = Q.quantize_multiplier(np.float64(xs) * ws.astype(np.float64) / np.float64(ys))
    from fractions import Fraction
    want = np.empty(acc.shape, np.int64)
    for idx in np.ndindex(acc.shape):
        c = idx[1]
        v = Fraction(int(acc[idx]) * int(m0[c]), 2 ** int(sh[c]))
        want[idx] = round(v) + 90  # Python's round: ties to even
    if act == "Relu":
        want = np.maximum(want, 90)
    if act == "Clip":
        want = np.clip(want, 90 + round(-1.0 / 0.2), 90 + round(6.0 / 0.2))
    np.testing.assert_array_equal(got, np.clip(want, 0, 255).astype(np.uint8))
    # and within one step of ONNX's float requantization
    ref = theirs("QLinearConv", ins[:8] + [ins[8]], {"pads": [1, 1, 1, 1]})[0]
    if not act:
        assert np.abs(ref.astype(int) - got.astype(int)).max() <= 1


def test_qconv_float_output_is_dequantized_accumulator():
    ins = _qconv_inputs(out=False, bias=False)
    (got,) = ours("QConv", ins, {"activation": "Relu"}, domain="ai.graphopt")
    assert got.dtype == np.float32
    x, xs, xz, w, ws = ins[:5]
    acc = Q.conv_int(x.astype(np.int64) - 117, w.astype(np.int64), {})
    want = np.maximum(acc * (np.float64(xs) * ws.astype(np.float64)).reshape(1, -1, 1, 1), 0).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_qgemm_and_qmatmul_agree_with_qlinearmatmul():
    a = RNG.integers(0, 256, (5, 16)).astype(np.uint8)
    b = RNG.integers(-127, 128, (16, 7)).astype(np.int8)
    common = [a, np.float32(0.04), np.uint8(130), b, np.float32(0.01), np.int8(0), np.float32(0.05), np.uint8(128)]
    ref = theirs("QLinearMatMul", common)[0].astype(int)
    (mm,) = ours("QMatMul", common, domain="ai.graphopt")
    t = list(common)
    t[3] = np.ascontiguousarray(b.T)
    (gm,) = ours("QGemm", t, {"transB": 1}, domain="ai.graphopt")
    np.testing.assert_array_equal(mm, gm)
    assert np.abs(mm.astype(int) - ref).max() <= 1


def test_qadd_within_one_step_of_float_and_exact_on_easy_scales():
    a = RNG.integers(0, 256, (4, 9)).astype(np.uint8)
    b = RNG.integers(0, 256, (9,)).astype(np.uint8)
    ins = [a, np.float32(0.05), np.uint8(100), b, np.float32(0.02), np.uint8(30), np.float32(0.08), np.uint8(60)]
    (got,) = ours("QAdd", ins, domain="ai.graphopt")
    real = (a.astype(np.float64) - 100) * np.float64(np.float32(0.05)) + (b - 30.0) * np.float64(np.float32(0.02))
    want = np.clip(np.rint(real / np.float64(np.float32(0.08))) + 60, 0, 255)
    assert np.abs(got - want).max() <= 1
    # power-of-two scales: the fixed-point path is exact, ties to even included
    ins = [a, np.float32(0.5), np.uint8(100), b, np.float32(0.25), np.uint8(30), np.float32(1.0), np.uint8(60)]
    (got,) = ours("QAdd", ins, domain="ai.graphopt", attrs={"activation": "Relu"})
    real = (a.astype(np.float64) - 100) * 0.5 + (b - 30.0) * 0.25
    np.testing.assert_array_equal(got, np.clip(np.maximum(np.rint(real) + 60, 60), 0, 255))
