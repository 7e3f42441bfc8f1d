"""The int8 kernels under cuda-emu, bit for bit against the NumPy reference of graphopt's
fused int8 ops (QConv, QGemm, QMatMul, QAdd) and of QuantizeLinear / DequantizeLinear /
int8 MaxPool: sizes that are not multiples of a tile, K not a multiple of 4, per-channel
scales, zero points on every operand (uint8 weights with zero points take the row-sum
path, a runtime uint8 B the column-sum path), Relu / Clip, dequantized (float32) outputs,
grouped / dilated / depthwise / 1-D convolutions, broadcasting. Every graph is compiled in
one batch (one host compile for the module) and the same kernels through nvcc for sm_90."""
import shutil
import subprocess

import numpy as np
import pytest

from cuda_harness import assert_ptxas_clean, needs_emu, needs_nvcc
from graphopt.builder import GraphBuilder
from graphopt.errors import UnsupportedOpError
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda import int8 as int8_mod
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.plugins.cuda.kernel import translation_unit

pytestmark = needs_emu
F = "ai.graphopt"
GRAPHS = {}


def graph_case(fn):
    GRAPHS[fn.__name__] = fn
    return fn


def rng(seed):
    return np.random.default_rng(seed)


def q(shape, dtype, seed):
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return rng(seed).integers(lo, hi, shape).astype(dtype)


def scales(n, seed, base=0.02):
    return (base * (0.5 + rng(seed).random(n))).astype(np.float32)


def s32(v):
    return np.float32(v)


def fused(b, op, x, xs, xz, w, ws, wz, ys=None, yz=None, bias=None, **attrs):
    ins = [x, xs, xz, w, ws, wz, ys, yz, bias]
    while ins[-1] is None:
        ins.pop()
    return b.op(op, *ins, domain=F, **attrs)


def one_node(op, x_shape, x_dtype, *params, x=None, **attrs):
    """A graph of one fused int8 node reading the input ``x`` (random values of its type)."""
    b = GraphBuilder()
    b.output(fused(b, op, b.input("x", x_shape, x_dtype), *params, **attrs), "y")
    return b.graph, {"x": q(x_shape, x_dtype, 4) if x is None else x}


def two_inputs(a_shape, a_dtype, k_shape, k_dtype, *params, **attrs):
    """QMatMul of two activations ``a`` and ``k``."""
    b = GraphBuilder()
    a, k = b.input("a", a_shape, a_dtype), b.input("k", k_shape, k_dtype)
    b.output(fused(b, "QMatMul", a, params[0], params[1], k, *params[2:], **attrs), "y")
    return b.graph, {"a": q(a_shape, a_dtype, 1), "k": q(k_shape, k_dtype, 2)}


def bias(n, hi, seed=3):
    return rng(seed).integers(-hi, hi, n).astype(np.int32)


def zeros8(n):
    return np.zeros(n, np.int8)


@graph_case
def qgemm_uint8_per_channel_relu():
    return one_node("QGemm", (5, 37), "uint8", s32(0.05), np.uint8(7), q((13, 37), "int8", 1), scales(13, 2),
                    zeros8(13), s32(0.3), np.uint8(11), bias(13, 2000), transB=1, activation="Relu")


@graph_case
def qgemm_uint8_weights_with_zero_points_clip():
    return one_node("QGemm", (70, 50), "int8", s32(0.04), np.int8(-3), q((50, 45), "uint8", 1), scales(45, 2),
                    rng(5).integers(100, 150, 45).astype(np.uint8), s32(0.5), np.int8(5), None, transB=0,
                    activation="Clip", act_min=-6.0, act_max=20.0)


@graph_case
def qgemm_dequantized_output_word_loads():  # K % 4 == 0: A is read a 32-bit word at a time
    return one_node("QGemm", (3, 128), "uint8", s32(0.05), np.uint8(128), q((10, 128), "int8", 1), scales(10, 2),
                    zeros8(10), None, None, bias(10, 5000), transB=1, activation="Relu")


@graph_case
def qgemm_ties_round_to_even():  # multiplier 0.5 exactly: every odd accumulator is a tie
    return one_node("QGemm", (6, 9), "int8", s32(0.5), np.int8(0), q((9, 11), "int8", 1),
                    np.full(11, 0.25, np.float32), zeros8(11), s32(0.25), np.int8(1),
                    x=rng(4).integers(-3, 4, (6, 9)).astype(np.int8))


@graph_case
def qgemm_tile_128():
    return one_node("QGemm", (130, 44), "uint8", s32(0.02), np.uint8(90), q((129, 44), "int8", 10),
                    scales(129, 11, 0.01), zeros8(129), s32(0.4), np.uint8(60), transB=1)


@graph_case
def qgemm_tile_64():
    return one_node("QGemm", (70, 36), "uint8", s32(0.02), np.uint8(90), q((66, 36), "int8", 20),
                    scales(66, 21, 0.01), zeros8(66), s32(0.4), np.uint8(60), transB=1)


@graph_case
def qmatmul_constant_weight_3d():
    return one_node("QMatMul", (2, 9, 20), "uint8", s32(0.03), np.uint8(120), q((20, 24), "int8", 1), scales(24, 2),
                    zeros8(24), s32(0.2), np.uint8(128), bias(24, 900))


@graph_case
def qmatmul_activations_with_zero_points():  # k broadcast over the first batch dim
    return two_inputs((2, 3, 7, 12), "uint8", (1, 3, 12, 9), "uint8", s32(0.05), np.uint8(100), s32(0.04),
                      np.uint8(90), s32(0.6), np.uint8(10), activation="Relu")


@graph_case
def qmatmul_int8_activations_dequantized():
    return two_inputs((4, 33), "int8", (33, 18), "int8", s32(0.05), np.int8(0), s32(0.04), np.int8(0))


@graph_case
def qconv_strided_padded_relu():
    return one_node("QConv", (2, 5, 9, 11), "uint8", s32(0.02), np.uint8(30), q((7, 5, 3, 3), "int8", 1),
                    scales(7, 2), zeros8(7), s32(0.1), np.uint8(20), bias(7, 3000), pads=[1, 1, 1, 1],
                    strides=[2, 2], activation="Relu")


@graph_case
def qconv_groups_dilation_weight_zero_points():
    return one_node("QConv", (1, 8, 10, 10), "int8", s32(0.03), np.int8(-5), q((6, 4, 3, 3), "uint8", 1),
                    scales(6, 2), rng(3).integers(110, 140, 6).astype(np.uint8), s32(0.9), np.int8(-7), group=2,
                    dilations=[2, 2], pads=[2, 1, 0, 2], activation="Clip", act_min=-3.0, act_max=40.0)


@graph_case
def qconv_depthwise_multiplier_2():
    return one_node("QConv", (2, 6, 7, 7), "uint8", s32(0.02), np.uint8(40), q((12, 1, 3, 3), "int8", 1),
                    scales(12, 2), zeros8(12), s32(0.05), np.uint8(3), bias(12, 500), group=6, strides=[2, 2],
                    pads=[1, 1, 1, 1], activation="Relu")


@graph_case
def qconv_1d_dequantized_clip():
    return one_node("QConv", (2, 3, 17), "uint8", s32(0.02), np.uint8(12), q((4, 3, 5), "int8", 1), scales(4, 2),
                    zeros8(4), None, None, bias(4, 100), pads=[2, 1], activation="Clip", act_min=-1.0, act_max=1.5)


@graph_case
def qconv_pointwise():
    return one_node("QConv", (1, 16, 6, 6), "uint8", s32(0.02), np.uint8(0), q((20, 16, 1, 1), "int8", 1),
                    scales(20, 2), zeros8(20), s32(0.1), np.uint8(128))


@graph_case
def qadd_broadcast_relu():
    b = GraphBuilder()
    x, r = b.input("x", (2, 3, 4, 5), "uint8"), b.input("r", (3, 1, 5), "uint8")
    y = b.op("QAdd", x, s32(0.05), np.uint8(100), r, s32(0.13), np.uint8(7), s32(0.11), np.uint8(60), domain=F,
             activation="Relu")
    b.output(y, "y")
    return b.graph, {"x": q((2, 3, 4, 5), "uint8", 1), "r": q((3, 1, 5), "uint8", 2)}


@graph_case
def qadd_int8_clip():
    b = GraphBuilder()
    x, r = b.input("x", (37,), "int8"), b.input("r", (37,), "int8")
    y = b.op("QAdd", x, s32(0.25), np.int8(0), r, s32(0.125), np.int8(-2), s32(0.5), np.int8(3), domain=F,
             activation="Clip", act_min=-10.0, act_max=12.0)
    b.output(y, "y")
    return b.graph, {"x": q((37,), "int8", 1), "r": q((37,), "int8", 2)}


@graph_case
def quantize_dequantize_edges():
    b = GraphBuilder(opset=21)
    x = b.input("x", (2, 3, 5))
    per_tensor = b.op("QuantizeLinear", x, s32(0.1), np.uint8(128))
    per_axis = b.op("QuantizeLinear", x, np.array([0.1, 0.2, 0.05], np.float32), np.array([0, -3, 4], np.int8),
                    axis=1)
    b.output(per_tensor, "q8")
    b.output(per_axis, "qa")
    b.output(b.op("DequantizeLinear", per_axis, np.array([0.1, 0.2, 0.05], np.float32),
                  np.array([0, -3, 4], np.int8), axis=1), "dqa")
    b.output(b.op("DequantizeLinear", per_tensor, s32(0.1), np.uint8(128)), "dq")
    b.output(b.op("QuantizeLinear", x, s32(0.25)), "no_zp")
    b.output(b.op("DequantizeLinear", b.input("i", (4,), "int32"), s32(0.5)), "dq32")
    xs = np.linspace(-30, 30, 30, dtype=np.float32).reshape(2, 3, 5)
    xs.flat[:6] = [0.05, 0.15, -0.25, np.inf, -np.inf, np.nan]  # ties to even, saturation, NaN -> the lowest value
    return b.graph, {"x": xs, "i": np.array([-7, 0, 3, 2 ** 30 + 1], np.int32)}


@graph_case
def maxpool_uint8():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 9, 9), "uint8")
    b.output(b.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), "y")
    return b.graph, {"x": q((2, 3, 9, 9), "uint8", 1)}


@pytest.fixture(scope="module")
def compiled(request):
    """Every graph compiled in one batch; SM_COUNT = 1 lets the 'tile_*' cases pick their big tiles."""
    be = get_backend("cuda-emu")
    out = {}
    mp = pytest.MonkeyPatch()
    with kernel_batch():
        for name, build in GRAPHS.items():
            g, feeds = build()
            with mp.context() as m:
                if "tile" in name:
                    m.setattr(int8_mod, "SM_COUNT", 1)
                out[name] = (g, feeds, be.compile(g))
    return out


@pytest.mark.parametrize("name", list(GRAPHS))
def test_int8_graph_is_bit_exact(compiled, name):
    g, feeds, exe = compiled[name]
    got = exe.run(feeds)
    want = run_reference(g, feeds)
    for v, a, r in zip(g.outputs, got, want):
        assert a.dtype == r.dtype and a.shape == r.shape, v.name
        np.testing.assert_array_equal(a, r, err_msg=f"{name}: {v.name}")


def test_schedules_cover_the_tiles_and_paths(compiled):
    specs = {name: [l.kernel.spec for l in exe.lowered.launches] for name, (_, _, exe) in compiled.items()}
    assert specs["qgemm_tile_128"][0].tile == int8_mod.INT8_TILES["128x128"]
    assert specs["qgemm_tile_64"][0].tile == int8_mod.INT8_TILES["64x64"]
    assert specs["qgemm_dequantized_output_word_loads"][0].a_words
    s = specs["qmatmul_activations_with_zero_points"][0]
    assert s.row_sums and s.col_sums and s.b is not None
    assert specs["qgemm_uint8_weights_with_zero_points_clip"][0].row_sums
    assert not specs["qgemm_uint8_per_channel_relu"][0].row_sums
    assert type(specs["qconv_depthwise_multiplier_2"][0]).__name__ == "Int8DepthwiseSpec"


def test_accumulator_that_could_overflow_is_refused():
    b = GraphBuilder()
    a, k = b.input("a", (2, 40000), "uint8"), b.input("k", (40000, 3), "uint8")
    b.output(fused(b, "QMatMul", a, s32(0.1), np.uint8(0), k, s32(0.1), np.uint8(0), s32(1.0), np.uint8(0)), "y")
    import graphopt

    with pytest.raises(UnsupportedOpError, match="overflow"):  # strict: no kernel is an error
        graphopt.compile(b.graph, backend="cuda-emu", level=0, strict=True)
    m = get_backend("cuda-emu").compile(b.graph)  # else the node runs on the host, where int32 is no limit
    assert [h["op"] for h in m.stats["host_nodes"]] == ["ai.graphopt::QMatMul"]
    assert "overflow" in m.stats["host_nodes"][0]["why"]


def _all_kernels(compiled):
    return list({k.name: k for _, _, exe in compiled.values() for k in exe.lowered.kernels}.values())


@needs_nvcc
def test_int8_kernels_compile_for_sm90(compiled, record_property):
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    kernels = _all_kernels(compiled)
    report = nvcc_check(kernels)
    record_property("ptxas", {k: (r.registers, r.spill_stores, r.smem_bytes) for k, r in report.items()})
    assert_ptxas_clean(report, kernels)


@needs_nvcc
def test_device_path_uses_dp4a(compiled):
    k = compiled["qgemm_tile_128"][2].lowered.kernels[0]
    res = subprocess.run([shutil.which("nvcc"), "-arch=sm_90", "-ptx", "-x", "cu", "-", "-o", "-"],
                         input=translation_unit([k]), capture_output=True, text=True, check=True)
    assert res.stdout.count("dp4a.s32.s32") >= 64  # an 8x8 micro-tile per k word, unrolled


def test_benchmark_parses_its_int8_study_without_a_gpu():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_cuda.py"
    spec = importlib.util.spec_from_file_location("bench_cuda", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cases = bench.model_cases(bench.parse_args(["--only", "int8"]))
    assert cases == [("resnet_style", b, d) for b in (1, 64) for d in ("float32", "float16", "int8")]
    ok, _ = get_backend("cuda").is_available()
    if not ok:
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            bench.main(["--only", "int8"])
