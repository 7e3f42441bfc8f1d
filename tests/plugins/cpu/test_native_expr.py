"""Native expression programs (plugins/cpu/nativeexpr.py, native/exprvm.h, native/vmath.h) against
the registry's NumPy kernels, which define every primitive.

Every primitive of the instruction set on random values and on the special ones (signed
zeros, infinities, NaN, subnormals, the edges of exp's range); the transcendentals' error
in ulps over a dense grid; the broadcast geometries; bool inputs and outputs; long chains;
the fused nodes that run them (FusedElementwise, the conv and GEMM epilogues); and the
programs the C side must refuse.
"""
import numpy as np
import pytest
from scipy import special

from graphopt.builder import GraphBuilder
from graphopt.expr import Binary, Const, Input, Unary, evaluate_many, parse_exprs
from graphopt.plugins.cpu import CpuExecutable, native, nativeexpr

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 1e-8, -1e-8, 0.5, -0.5, 0.625, -0.625,
                    3.5, -3.5, 9.5, -9.5, 86.9, -86.9, 87.5, -87.5, 88.7, 88.8, -103.9, -104.0, 1e30, -1e30],
                   np.float32)


def _values(seed=0, n=997):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-6, 5, n))).astype(np.float32)
    return np.concatenate([x, SPECIAL])


def _check(text, arrays, dtypes=None, rtol=1e-5, atol=1e-6):
    exprs = parse_exprs(text)
    prog = nativeexpr.compile_program(exprs, dtypes or ["float32"] * len(arrays))
    assert prog is not None, text
    got = prog.run(arrays)
    with np.errstate(all="ignore"):
        want = evaluate_many(exprs, arrays)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == np.bool_:
        np.testing.assert_array_equal(got, want, err_msg=text)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=text)
    return prog


UNARY = ["neg", "abs", "relu", "exp", "log", "sqrt", "recip", "floor", "ceil", "round", "sign", "tanh", "sigmoid",
         "erf", "softplus", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh"]


@pytest.mark.parametrize("op", UNARY)
def test_unary_primitives_match_registry(op):
    x = _values()
    _check(f"{op}(in0)", [x])
    _check(f"{op}(in0)", [x.reshape(-1, 1)[:1000].reshape(10, 100)])  # full vectors read in place


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "max", "min", "pow"])
def test_binary_primitives_match_registry(op):
    x, y = _values(1), _values(2)
    if op == "pow":
        x = np.abs(x)
    _check(f"{op}(in0, in1)", [x, y])
    _check(f"{op}(in0, 2.5)", [x])


@pytest.mark.parametrize("k", [2.0, 3.0, 1.0, -1.0, 0.5])
def test_pow_by_constants(k):
    x = _values(3)
    _check(f"pow(in0, {k})", [x], rtol=3e-7 if k == 3.0 else 1e-7, atol=0)


@pytest.mark.parametrize("op", ["eq", "lt", "le", "gt", "ge"])
def test_comparisons_give_bools(op):
    x, y = _values(4), _values(5)
    y[::3] = x[::3]
    prog = _check(f"{op}(in0, in1)", [x, y])
    assert prog.out_kinds == [1]


def test_logic_select_and_casts():
    rng = np.random.default_rng(6)
    a, b = rng.random(300) < 0.5, rng.random(300) < 0.5
    x = rng.standard_normal(300).astype(np.float32)
    for op in ("and", "or", "xor"):
        _check(f"{op}(in0, in1)", [a, b], ["bool", "bool"])
    _check("not(in0)", [a], ["bool"])
    _check("select(in0, in1, neg(in1))", [a, x], ["bool", "float32"])
    _check("cast<float32>(in0)", [a], ["bool"])
    _check("cast<bool>(in0)", [np.where(a, x, 0).astype(np.float32)])
    _check("isnan(in0)", [_values()])
    _check("select(ge(in0, 0.0), in0, mul(in0, 0.01))", [_values()])


def test_transcendentals_within_a_few_ulps():
    x = np.linspace(-20, 20, 400_001).astype(np.float32)
    ref = {"exp": np.exp, "tanh": np.tanh, "erf": special.erf, "sigmoid": special.expit,
           "log": np.log, "softplus": lambda v: np.logaddexp(0, v)}
    limit = {"exp": 2, "tanh": 2, "erf": 8, "sigmoid": 4, "log": 2, "softplus": 4}
    for name, f in ref.items():
        arg = np.abs(x) + np.float32(1e-3) if name == "log" else x
        text = f"{name}(in0)"
        got = nativeexpr.compile_program(parse_exprs(text), ["float32"]).run([arg]).astype(np.float64)
        want = f(arg.astype(np.float64))
        ulp = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert np.max(ulp[np.abs(want) > 1e-30]) <= limit[name], name


BROADCASTS = [  # input shapes; the output is their broadcast
    [(2, 3, 4, 5), (2, 3, 4, 5)],
    [(2, 3, 4, 5), (3, 1, 1)],          # per channel (NCHW)
    [(2, 3, 4, 5), (5,)],               # along the last axis
    [(7, 1), (1, 9)],                   # outer product: a repeated value per row
    [(4, 1, 6), (1, 5, 1), (4, 5, 6)],
    [(), (3, 3)],                       # a 0-d input
    [(), ()],
    [(0, 4), (4,)],                     # empty
    [(1, 1, 1, 700), (3, 1, 700)],      # rows longer than a block
    [(2, 1, 3, 1, 2, 1, 2, 1, 2, 1, 2), (1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)],  # more axes than the kernel takes
]


@pytest.mark.parametrize("shapes", BROADCASTS)
def test_broadcasting_matches_numpy(shapes):
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    body = "in0"
    for i in range(1, len(arrays)):
        body = f"mul(add({body}, in{i}), 0.5)"
    exprs = parse_exprs(f"tanh({body})")
    prog = nativeexpr.compile_program(exprs, ["float32"] * len(arrays))
    got = prog.run(arrays)
    want = evaluate_many(exprs, arrays)[0]
    if got is None:  # more axes than MAX_DIMS after merging: the caller's NumPy path runs it
        assert len(np.broadcast_shapes(*shapes)) > nativeexpr.MAX_DIMS
        return
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_large_input_runs_on_the_pool_and_noncontiguous_inputs_are_read():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 64, 70, 70)).astype(np.float32)
    _check("mul(in0, sigmoid(in0))", [x])
    _check("add(in0, tanh(in1))", [x, x.transpose(0, 1, 3, 2)])
    assert nativeexpr.compile_program(parse_exprs("exp(in0)"), ["float32"]).run([x.transpose(1, 0, 2, 3)]) is not None


def test_long_chain_uses_few_registers():
    e = Input(0)
    for k in range(5000):
        e = Unary("tanh", e) if k % 3 == 0 else Binary("add" if k % 3 == 1 else "mul", e, Const(0.5 + k % 7 * 0.01))
    prog = nativeexpr.compile_program([e], ["float32"])
    n_comp = int(prog.code[2])
    assert n_comp <= 2 and len(prog.ops) == 5000
    x = np.linspace(-3, 3, 100).astype(np.float32)
    np.testing.assert_allclose(prog.run([x]), evaluate_many([e], [x])[0], rtol=1e-5, atol=1e-6)


def test_what_native_programs_do_not_take():
    assert nativeexpr.compile_program(parse_exprs("exp(in0)"), ["float64"]) is None
    assert nativeexpr.compile_program(parse_exprs("add(in0, in1)"), ["int64", "int64"]) is None
    assert nativeexpr.compile_program(parse_exprs("cast<int32>(in0)"), ["float32"]) is None
    prog = nativeexpr.compile_program(parse_exprs("exp(in0)"), ["float32"])
    assert prog.run([np.ones(3, np.float64)]) is None  # the caller falls back to NumPy
    many = parse_exprs("add(" * 70 + "in0, " + "), ".join(f"in{i}" for i in range(1, 71)) + ")")
    assert nativeexpr.compile_program(many, ["float32"] * 71) is None  # more inputs than exprvm.h takes


def test_malformed_programs_are_refused():
    lib = native.library()
    prog = nativeexpr.compile_program(parse_exprs("exp(add(in0, 1.0))"), ["float32"])
    x = np.ones(8, np.float32)
    out = np.empty(8, np.float32)
    geo = prog.geometry(((8,),))[1]
    bad = prog.code.copy()
    bad[-4] = 99  # a register out of range
    with pytest.raises(ValueError, match="malformed"):
        lib.expr(bad, geo, (x,), (out,))
    with pytest.raises(ValueError, match="malformed"):
        lib.expr(prog.code[:-1], geo, (x,), (out,))
    with pytest.raises(ValueError, match="does not fit"):
        lib.expr(prog.code, geo, (x[:4],), (out,))
    with pytest.raises(ValueError, match="does not fit"):
        lib.expr(prog.code, geo, (x,), (out[:4],))
    with pytest.raises(ValueError, match="geometry"):
        lib.expr(prog.code, geo[:-1], (x,), (out,))


def _fused_graph(op, shape, epilogue, extra_shapes=(), **attrs):
    rng = np.random.default_rng(9)
    b = GraphBuilder()
    x = b.input("x", shape)
    extra = [b.input(f"e{i}", s) for i, s in enumerate(extra_shapes)]
    if op == "FusedElementwise":
        y = b.op(op, x, *extra, domain="ai.graphopt", expr=epilogue)
    elif op == "FusedMatMul":
        w = (rng.standard_normal((shape[-1], 48)) * 0.2).astype(np.float32)
        y = b.op(op, x, w, *extra, domain="ai.graphopt", epilogue=epilogue)
    else:
        w = (rng.standard_normal(attrs.pop("w")) * 0.3).astype(np.float32)
        bias = rng.standard_normal(w.shape[0]).astype(np.float32)
        y = b.op(op, x, w, bias, *extra, domain="ai.graphopt", epilogue=epilogue, **attrs)
    b.output(y, "y")
    return b.graph


def _compare(g, rtol=1e-4, atol=1e-5):
    rng = np.random.default_rng(10)
    feeds = {v.name: (rng.standard_normal(v.type.shape) * 2).astype(np.float32) for v in g.inputs}
    exe = CpuExecutable(g)
    np.testing.assert_allclose(exe.run(feeds)[0], CpuExecutable(g, fast=False).run(feeds)[0], rtol=rtol, atol=atol)
    return exe


SILU = "mul(acc, sigmoid(acc))"
HARDSWISH = "mul(acc, min(max(add(div(acc, 6.0), 0.5), 0.0), 1.0))"
GELU = "mul(mul(0.5, acc), add(1.0, erf(mul(acc, 0.7071067811865476))))"


@pytest.mark.parametrize("epilogue", [SILU, HARDSWISH, GELU, "sigmoid(acc)"])
@pytest.mark.parametrize("geometry", [
    dict(w=(24, 8, 3, 3), pads=[1, 1, 1, 1]),
    dict(w=(16, 16, 3, 3), pads=[1, 1, 1, 1], group=16),                 # depthwise
    dict(w=(16, 16, 5, 5), pads=[2, 2, 2, 2], group=16, strides=[2, 2]),
    dict(w=(32, 16, 1, 1)),
])
def test_conv_activation_epilogues_run_natively(epilogue, geometry):
    exe = _compare(_fused_graph("FusedConv", (2, 16 if geometry["w"][1] in (1, 16) else 8, 19, 18), epilogue,
                                **({**geometry, "w": (geometry["w"][0], 1 if geometry.get("group") else
                                                      geometry["w"][1], *geometry["w"][2:])})))
    assert exe.stats["native_steps"] == 1


@pytest.mark.parametrize("epilogue,extra", [(GELU, []), ("add(tanh(acc), in1)", [(4, 5, 48)]),
                                            ("mul(acc, sigmoid(in1))", [(48,)])])
def test_matmul_epilogues_run_natively(epilogue, extra):
    exe = _compare(_fused_graph("FusedMatMul", (4, 5, 32), epilogue, extra))
    assert exe.stats["native_steps"] == 1


def test_fused_elementwise_runs_natively_and_in_place():
    text = "mul(add(in0, in1), sigmoid(in2))"
    exe = _compare(_fused_graph("FusedElementwise", (2, 8, 9, 9), text, [(8, 1, 1), (2, 8, 9, 9)]))
    assert exe.stats["native_steps"] == 1
    # a fresh intermediate that dies at the fused node is written over
    b = GraphBuilder()
    x = b.input("x", (4, 300))
    t = b.op("Mul", x, np.float32(2.0))
    b.output(b.op("FusedElementwise", t, domain="ai.graphopt", expr="tanh(mul(in0, sigmoid(in0)))"), "y")
    exe = _compare(b.graph)
    assert exe.stats["inplace_steps"] >= 1 and exe.stats["native_steps"] == 1


def test_hard_swish_and_gelu_nodes_through_the_backend():
    rng = np.random.default_rng(11)
    for op, attrs in (("HardSwish", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Sigmoid", {})):
        b = GraphBuilder(opset=20)
        x = b.input("x", (3, 257))
        b.output(b.op(op, x, **attrs), "y")
        import graphopt

        m = graphopt.compile(b.graph, backend="cpu", level=2)
        feeds = {"x": (rng.standard_normal((3, 257)) * 3).astype(np.float32)}
        np.testing.assert_allclose(m.run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0],
                                   rtol=1e-4, atol=1e-5, err_msg=op)



ACTIVATIONS = {  # recognised whole (exprvm.h's xact) -> the same steps over two inputs, in1 = x or ones
    "mul(in0, sigmoid(in0))": ("mul(in1, sigmoid(in0))", "x"),
    "mul(sigmoid(in0), in0)": ("mul(sigmoid(in0), in1)", "x"),
    "sigmoid(in0)": ("mul(sigmoid(in0), in1)", "ones"),
    "mul(in0, min(max(add(div(in0, 6.0), 0.5), 0.0), 1.0))": ("mul(in1, min(max(add(div(in0, 6.0), 0.5), 0.0), 1.0))", "x"),
    "min(max(add(mul(0.2, in0), 0.5), 0.0), 1.0)": ("min(max(add(mul(0.2, in0), 0.5), 0.0), in1)", "ones"),
    "min(max(add(mul(in0, 0.16666667), 0.5), -0.0), 1.0)": ("min(max(add(mul(in0, 0.16666667), 0.5), -0.0), in1)", "ones"),
    "mul(mul(0.5, in0), add(1.0, erf(mul(in0, 0.7071067811865476))))": ("mul(mul(0.5, in0), add(1.0, erf(mul(in1, 0.7071067811865476))))", "x"),
    "mul(add(erf(mul(0.7071067811865476, in0)), 1.0), mul(in0, 0.5))":
        ("mul(add(erf(mul(0.7071067811865476, in0)), 1.0), mul(in1, 0.5))", "x"),
}


@pytest.mark.parametrize("text", list(ACTIVATIONS))
def test_recognised_activations_keep_numpys_answers_and_the_vms_bits(text):
    x = np.concatenate([_values(5), SPECIAL, -SPECIAL, np.float32([6.0, -6.0, 3.0, -3.0, 2.5e38, -2.5e38])])
    prog = _check(text, [x])
    twin_text, second = ACTIVATIONS[text]
    # the twin is not recognised (two inputs): the VM runs its instructions one at a time, and
    # multiplying by 1.0 changes no bits
    twin = nativeexpr.compile_program(parse_exprs(twin_text), ["float32"] * 2)
    for n in (x.size, 16, 7):  # whole vectors and a masked tail
        got = prog.run([x[:n]])
        want = twin.run([x[:n], x[:n] if second == "x" else np.ones(n, np.float32)])
        assert np.array_equal(np.isnan(got), np.isnan(want)), text
        finite = ~np.isnan(want)
        assert np.array_equal(got[finite].view(np.int32), want[finite].view(np.int32)), text
