"""The index-kernel ops on cuda-emu against the CPU reference: GatherElements, GatherND
(batch dims, negative indices), ScatterElements / ScatterND (every reduction, repeated
indices, float16), OneHot, Tile, Trilu, EyeLike, CumSum and CumProd (exclusive, reverse), ArgMax /
ArgMin (keepdims, select_last_index, ties), TopK (largest/smallest, ties), Einsum (matmul,
batched, broadcast, diagonal, ellipsis, three operands), LRN, ConvTranspose (strides,
dilations, groups, output_padding, output_shape, 1-D and 3-D), DepthToSpace / SpaceToDepth,
Mod and BitShift (NumPy's rules at zero divisors and wide shifts), float64 expressions.
Every graph is built in one ``kernel_batch`` (one host compile)."""
import numpy as np
import pytest

from cuda_harness import assert_ptxas_clean, needs_emu, needs_nvcc
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch

pytestmark = needs_emu
CASES = {}  # name -> build() -> (graph, feeds)


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def rnd(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def ints(shape, lo, hi, seed=0):
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.int64)


def one(op, inputs, consts=(), opset=18, n_out=1, **attrs):
    """A graph of one ``op`` node: ``inputs`` are (name, array) fed at run time, ``consts`` constants."""
    b = GraphBuilder(opset=opset)
    args = [b.input(n, a.shape, str(a.dtype)) for n, a in inputs] + list(consts)
    outs = b.op(op, *args, num_outputs=n_out, **attrs) if n_out > 1 else [b.op(op, *args, **attrs)]
    for k, o in enumerate(outs):
        b.output(o, f"y{k}")
    return b.graph, dict(inputs)


@case
def gather_elements():
    return one("GatherElements", [("x", rnd(3, 5, 4)), ("i", ints((3, 2, 4), -5, 5))], axis=1)


@case
def gather_nd():
    return one("GatherND", [("x", rnd(4, 3, 5)), ("i", ints((6, 2), -3, 3))])


@case
def gather_nd_batch_dims():
    return one("GatherND", [("x", rnd(2, 5, 3, 4)), ("i", ints((2, 7, 1), -5, 5))], batch_dims=1)


@case
def scatter_elements_add_repeats():
    i = np.array([[0, 2, 0, 1], [3, 3, 3, 0]], np.int64)
    return one("ScatterElements", [("x", rnd(4, 4)), ("i", i), ("u", rnd(2, 4, seed=1))], axis=0, reduction="add")


@case
def scatter_elements_max_axis1():
    return one("ScatterElements", [("x", rnd(3, 6)), ("i", ints((3, 4), -6, 6)), ("u", rnd(3, 4, seed=1))],
               axis=1, reduction="max")


@case
def scatter_elements_none_float16():
    i = np.array([[1, 0, 2], [2, 1, 0]], np.int64)  # distinct per fiber: the result is defined
    return one("ScatterElements", [("x", rnd(3, 3, dtype=np.float16)), ("i", i),
                                   ("u", rnd(2, 3, seed=1, dtype=np.float16))], axis=0)


@case
def scatter_nd_slices():
    i = np.array([[0], [2], [-1]], np.int64)
    return one("ScatterND", [("x", rnd(4, 3, 5)), ("i", i), ("u", rnd(3, 3, 5, seed=1))])


@case
def scatter_nd_mul_repeats():
    i = np.array([[1, 2], [1, 2], [0, 0]], np.int64)
    return one("ScatterND", [("x", rnd(2, 3, 4)), ("i", i), ("u", rnd(3, 4, seed=1))], reduction="mul")


@case
def scatter_nd_min_int():
    i = np.array([[1], [1], [3]], np.int64)
    return one("ScatterND", [("x", ints((4, 3), -9, 9)), ("i", i), ("u", ints((3, 3), -9, 9, seed=1))],
               reduction="min")


@case
def one_hot():
    b = GraphBuilder(opset=18)
    i, v = b.input("i", (2, 5), "int64"), b.input("v", (2,))
    b.output(b.op("OneHot", i, np.array(4, np.int64), v, axis=1), "y")
    return b.graph, {"i": ints((2, 5), -4, 6), "v": np.array([-1.0, 3.0], np.float32)}


@case
def tile():
    return one("Tile", [("x", rnd(2, 3, 1))], [np.array([2, 1, 3], np.int64)])


@case
def trilu_lower_k():
    return one("Trilu", [("x", rnd(2, 4, 6))], [np.array(-1, np.int64)], upper=0)


@case
def trilu_upper():
    return one("Trilu", [("x", ints((5, 3), -5, 5))])


@case
def eye_like():
    return one("EyeLike", [("x", rnd(4, 6))], k=2, dtype=1)


@case
def cumsum():
    return one("CumSum", [("x", rnd(3, 7, 2))], [np.array(1, np.int64)])


@case
def cumsum_exclusive_reverse_int():
    return one("CumSum", [("x", ints((4, 5), -9, 9))], [np.array(-1, np.int32)], exclusive=1, reverse=1)


@case
def cumprod_exclusive_reverse():
    return one("CumProd", [("x", rnd(3, 6, 2))], [np.array(1, np.int64)], opset=26, exclusive=1, reverse=1)


@case
def cumprod_int():
    return one("CumProd", [("x", ints((4, 5), -3, 3))], [np.array(-1, np.int32)], opset=26)


@case
def argmax_ties_last():
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2], [0, 0, 0, 0]], np.float32)
    return one("ArgMax", [("x", x)], axis=1, keepdims=0, select_last_index=1)


@case
def argmin_first_keepdims():
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2], [0, 0, 0, 0]], np.float32)
    return one("ArgMin", [("x", np.concatenate([x, rnd(3, 4)], 0))], axis=0)


@case
def argmax_int_nan():
    return one("ArgMax", [("x", ints((3, 4, 5), -3, 3))], axis=-1)


@case
def topk_largest_ties():
    x = np.round(rnd(3, 9) * 2) / 2  # many ties
    return one("TopK", [("x", x)], [np.array([4], np.int64)], n_out=2, axis=1)


@case
def topk_smallest_axis0():
    return one("TopK", [("x", rnd(7, 3))], [np.array([3], np.int64)], n_out=2, axis=0, largest=0)


@case
def einsum_matmul():
    return one("Einsum", [("a", rnd(3, 4)), ("b", rnd(4, 5, seed=1))], equation="ij,jk->ik")


@case
def einsum_batched_broadcast():
    return one("Einsum", [("a", rnd(2, 1, 3, 4)), ("b", rnd(1, 5, 4, 6, seed=1))], equation="...ij,...jk->...ik")


@case
def einsum_diagonal_and_transpose():
    return one("Einsum", [("a", rnd(4, 4, 3))], equation="iij->ji")


@case
def einsum_three_implicit():
    return one("Einsum", [("a", rnd(3, 4)), ("b", rnd(4, 5, seed=1)), ("c", rnd(5, seed=2))], equation="ij,jk,k")


@case
def lrn():
    return one("LRN", [("x", rnd(2, 7, 3, 3))], size=3, alpha=2e-3, beta=0.6, bias=1.5)


@case
def lrn_even_size():
    return one("LRN", [("x", rnd(1, 5, 4))], size=4)


@case
def conv_transpose_strided_padded_bias():
    return one("ConvTranspose", [("x", rnd(2, 4, 5, 3))], [rnd(4, 3, 3, 2, seed=1), rnd(3, seed=2)],
               strides=[2, 3], pads=[1, 0, 0, 1], dilations=[1, 2], output_padding=[1, 0])


@case
def conv_transpose_groups_output_shape():
    return one("ConvTranspose", [("x", rnd(1, 4, 4, 4))], [rnd(4, 3, 3, 3, seed=1)], group=2, strides=[2, 2],
               output_shape=[9, 8], auto_pad="SAME_UPPER")


@case
def conv_transpose_1d_and_3d():
    b = GraphBuilder(opset=18)
    x1, x3 = b.input("x1", (2, 3, 6)), b.input("x3", (1, 2, 3, 2, 3))
    b.output(b.op("ConvTranspose", x1, rnd(3, 2, 4, seed=1), strides=[3]), "y1")
    b.output(b.op("ConvTranspose", x3, rnd(2, 2, 2, 2, 2, seed=2), pads=[1, 0, 0, 0, 1, 0]), "y3")
    return b.graph, {"x1": rnd(2, 3, 6), "x3": rnd(1, 2, 3, 2, 3, seed=3)}


@case
def depth_to_space_both_modes():
    b = GraphBuilder(opset=18)
    x = b.input("x", (2, 8, 3, 2))
    b.output(b.op("DepthToSpace", x, blocksize=2, mode="DCR"), "dcr")
    b.output(b.op("DepthToSpace", x, blocksize=2, mode="CRD"), "crd")
    b.output(b.op("SpaceToDepth", b.op("Relu", x), blocksize=1), "s1")
    return b.graph, {"x": rnd(2, 8, 3, 2)}


@case
def space_to_depth():
    return one("SpaceToDepth", [("x", rnd(1, 3, 4, 6))], blocksize=2)


@case
def mod_integers_both_signs():
    """NumPy's mod (the divisor's sign) and fmod (the dividend's), broadcast; divisors 0 and -1
    (C's MIN % -1 traps) give 0."""
    a = np.array([[7, -7, 7, -7, -2147483648], [0, 5, -5, 3, 2147483647]], np.int32)
    b = np.array([[3, 3, -3, -3, -1]], np.int32)
    z = np.array([[0, -1, 4, 0, -1], [2, 0, -1, 7, 1]], np.int32)
    g = GraphBuilder(opset=18)
    x, y, w = g.input("a", a.shape, "int32"), g.input("b", b.shape, "int32"), g.input("z", z.shape, "int32")
    g.output(g.op("Mod", x, y), "mod")
    g.output(g.op("Mod", x, y, fmod=1), "fmod")
    g.output(g.op("Mod", x, w), "by_zero")
    g.output(g.op("Mod", x, w, fmod=1), "fmod_by_zero")
    return g.graph, {"a": a, "b": b, "z": z}


@case
def mod_floats():
    """float32 / float16 / float64 mod and fmod; a zero divisor gives NaN."""
    g = GraphBuilder(opset=18)
    feeds = {}
    for dt in ("float32", "float16", "float64"):
        a = (rnd(4, 6, seed=1) * 5).astype(dt)
        b = (rnd(1, 6, seed=2) * 2).astype(dt)
        b[0, 3] = 0
        feeds[f"a_{dt}"], feeds[f"b_{dt}"] = a, b
        x, y = g.input(f"a_{dt}", a.shape, dt), g.input(f"b_{dt}", b.shape, dt)
        g.output(g.op("Mod", x, y, fmod=1), f"fmod_{dt}")
        if dt != "float16":
            g.output(g.op("Mod", x, y), f"mod_{dt}")
    return g.graph, feeds


@case
def bit_shifts_past_the_width():
    """Shifts by the type's width or more (negative ones too) give 0, or -1 right-shifting a
    negative value; a left shift wraps."""
    u = np.arange(12, dtype=np.uint8) * 23
    s = np.array([0, 1, 3, 7, 8, 9, 200, 2, 5, 6, 1, 4], np.uint8)
    i = np.array([-100, 100, -1, 7, -(2 ** 31), 2 ** 30, 5, -5], np.int32)
    k = np.array([1, 31, 32, 40, 1, 2, -1, -3], np.int32)
    g = GraphBuilder(opset=18)
    xu, su, xi, ki = (g.input(n, a.shape, str(a.dtype)) for n, a in (("u", u), ("s", s), ("i", i), ("k", k)))
    g.output(g.op("BitShift", xu, su, direction="LEFT"), "ul")
    g.output(g.op("BitShift", xu, su, direction="RIGHT"), "ur")
    g.output(g.op("BitShift", xi, ki, direction="LEFT"), "il")
    g.output(g.op("BitShift", xi, ki, direction="RIGHT"), "ir")
    return g.graph, {"u": u, "s": s, "i": i, "k": k}


@case
def float64_elementwise():
    """float64 expressions compute in double: exp, sigmoid, pow, erf, and casts either way."""
    g = GraphBuilder(opset=18)
    x = g.input("x", (3, 7), "float64")
    e = g.op("Add", g.op("Exp", x), g.op("Sigmoid", x))
    p = g.op("Pow", g.op("Abs", x), np.float64(1.5))
    g.output(g.op("Mul", g.op("Erf", e), p), "y")
    g.output(g.op("Cast", g.op("Tanh", x), to=1), "y32")
    return g.graph, {"x": rnd(3, 7, seed=5, dtype=np.float64)}


@pytest.fixture(scope="module")
def compiled():
    be = get_backend("cuda-emu")
    out = {}
    with kernel_batch():
        for name, build in CASES.items():
            g, feeds = build()
            out[name] = (g, feeds, be.compile(g))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_cpu_reference(compiled, name):
    g, feeds, exe = compiled[name]
    assert exe.stats["launches"] >= 1 and not exe.stats.get("host_nodes")  # ran as kernels, not folded
    got = exe.run(feeds)
    want = run_reference(g, feeds)
    for v, a, r in zip(g.outputs, got, want):
        assert a.shape == r.shape and a.dtype == r.dtype, (v.name, a.shape, r.shape, a.dtype, r.dtype)
        if a.dtype.kind in "iub":
            np.testing.assert_array_equal(a, r, err_msg=f"{name}: {v.name}")
        else:
            tol = 1e-3 if a.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=max(tol, 1e-4), atol=tol,
                                       err_msg=f"{name}: {v.name}")


@needs_nvcc
def test_every_kernel_compiles_for_sm90(compiled):
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    kernels = list({k.name: k for _, _, exe in compiled.values() for k in exe.lowered.kernels}.values())
    assert_ptxas_clean(nvcc_check(kernels), kernels, max_registers=64)
