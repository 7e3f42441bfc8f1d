"""bfloat16: the tensor-core GEMM's bf16 variant (``mma.sync.m16n8k16 .f32.bf16.bf16.f32``;
under emulation its portable twin, float32 products and accumulation) against NumPy, its
sm_90 build with the real instruction in the PTX, the storage conversions bit for bit
against ml_dtypes, and MatMul / Gemm / Cast / elementwise graphs on bfloat16 compiled for
cuda-emu against the CPU reference (bfloat16 tolerance 1.6e-2)."""
import shutil
import subprocess

import numpy as np
import pytest

import graphopt
from cuda_harness import Case, kernel_module_tests, needs_emu, needs_nvcc, run_conversions
from graphopt.builder import GraphBuilder
from graphopt.dtypes import to_numpy
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.half import BF16_HELPERS
from graphopt.plugins.cuda.kernel import translation_unit
from graphopt.plugins.cuda.scalar import ScalarFn, contiguous_strides
from graphopt.plugins.cuda.specs import Epilogue, View
from graphopt.plugins.cuda.tc_gemm import TC_TILES, make_tc_matmul, render_tc_matmul

B = "bfloat16"
BF = to_numpy(B)
CASES: list[Case] = []


def bf16_case(cid, M, N, K, batch=(), trans_b=False, out=B, tile="64x64", bias=False):
    b_store = (*batch, N, K) if trans_b else (*batch, K, N)
    bst = contiguous_strides(b_store)
    bv = View(B, bst[:-2] + ((bst[-1], bst[-2]) if trans_b else bst[-2:]))
    ep = Epilogue()
    if bias:
        ep = Epilogue(ScalarFn.from_template("bias_relu", 2, "float32", "fmaxf({0} + {1}, 0.0f)"),
                      (View(B, (0,) * len(batch) + (0, 1)),))
    spec = make_tc_matmul(M, N, K, batch, a=View.contiguous(B, (*batch, M, K)), b=bv,
                          c=View.contiguous(out, (*batch, M, N)), epilogue=ep, tile=TC_TILES[tile])

    def make(rng):
        a = rng.standard_normal((*batch, M, K)).astype(BF)
        b = rng.standard_normal(b_store).astype(BF)
        bm = np.swapaxes(b, -1, -2) if trans_b else b
        ref = np.matmul(a.astype(np.float64), bm.astype(np.float64))  # bf16 products are exact
        ins = [a, b]
        if bias:
            bb = rng.standard_normal(N).astype(BF)
            ref = np.maximum(ref + bb.astype(np.float64), 0)
            ins.append(bb)
        return (*batch, M, N), to_numpy(out), ins, ref.astype(np.float32).astype(to_numpy(out))

    tol = (1.6e-2, 1.6e-2) if out == B else (1e-5, 1e-4)  # float32 out: only the float32 sum's rounding
    CASES.append(Case(cid, render_tc_matmul(spec), spec, make, *tol))


bf16_case("exact-tile", 64, 64, 32)
bf16_case("odd-sizes", 37, 50, 40)
bf16_case("f32-out-transB", 29, 17, 24, trans_b=True, out="float32")
bf16_case("batched-bias-relu", 20, 24, 16, batch=(2,), bias=True)
bf16_case("K-not-multiple-of-16", 16, 8, 7, out="float32")
bf16_case("tile128", 100, 120, 48, tile="128x128")

lib, test_bf16_tc_gemm_matches_numpy, test_every_bf16_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=255)


@needs_nvcc
def test_device_path_is_real_bf16_mma():
    src = translation_unit([CASES[0].kernel])
    res = subprocess.run([shutil.which("nvcc"), "-arch=sm_90", "-ptx", "-x", "cu", "-", "-o", "-"], input=src,
                         capture_output=True, text=True, check=True)
    assert res.stdout.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == 16  # 2 k-steps x 8 per warp
    assert "f16.f16" not in res.stdout
    assert "cvt.rn.bf16.f32" in res.stdout


@needs_emu
def test_bfloat16_conversions_are_bit_exact_with_ml_dtypes():
    rng = np.random.default_rng(0)
    ties = np.array([0x3f808000, 0x3f818000, 0x3f80c000, 0x3f807fff, 0x7f7f8000, 0x7f7fffff, 0x00008000, 0x00018000,
                     0x807f8000, 0x7f800000, 0xff800000, 0x7f800001, 0xff812345, 0x7fc00000, 0, 0x80000000],
                    np.uint32).view(np.float32)  # ties both ways, overflow to inf, subnormals, signed NaNs
    bits = rng.integers(0, 2 ** 32, 8192 - len(ties), dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([ties, bits]).astype(np.float32)
    y, z = run_conversions(BF16_HELPERS, "go_bf2f", "go_f2bf", x)
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(y, x.astype(BF).view(np.uint16))  # NaNs included
    want = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(BF).astype(np.float32)
    np.testing.assert_array_equal(z.view(np.uint32), want.view(np.uint32))  # widening is exact, NaNs too



# -- graphs ----------------------------------------------------------------------------------------


def _bf(*shape, seed, scale=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(BF)


def bf16_graph():
    """Cast in, MatMul (batched, broadcast weight) + bias + Relu, Gemm (transB, bias, alpha),
    an elementwise chain on bfloat16 storage, Cast out."""
    b = GraphBuilder("bf16", opset=17)
    x = b.input("x", (2, 5, 24), "float32")
    h = b.op("Cast", x, to=16)  # bfloat16
    h = b.op("Relu", b.op("Add", b.op("MatMul", h, b.const(_bf(24, 40, seed=1), "w1")), b.const(_bf(40, seed=2),
                                                                                                  "b1")))
    h = b.op("Reshape", h, np.array([10, 40], np.int64))
    h = b.op("Gemm", h, b.const(_bf(33, 40, seed=3), "w2"), b.const(_bf(33, seed=4), "b2"), transB=1, alpha=0.5)
    h = b.op("Sigmoid", b.op("Mul", h, b.const(_bf(1, seed=5), "s")))
    b.output(b.op("Cast", h, to=1), "y")
    b.output(h, "y_bf16")
    return b.graph, {"x": np.random.default_rng(0).standard_normal((2, 5, 24)).astype(np.float32)}


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_bfloat16_graph_matches_reference(level):
    g, feeds = bf16_graph()
    model = graphopt.compile(g, backend="cuda-emu", level=level)
    assert sum(k.startswith("go_tcgemm") for k in model.stats["schedules"]) == 2
    got, want = model.run(feeds), run_reference(g, feeds)
    assert got[1].dtype == BF
    for a, r in zip(got, want):
        np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=1.6e-2, atol=1.6e-2)


@needs_emu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_constant_pad_of_16bit_floats_writes_the_value_bits(dtype):
    b = GraphBuilder("pad16", opset=17)
    x = b.input("x", (2, 3), dtype)
    b.output(b.op("Pad", x, np.array([1, 0, 0, 2], np.int64), b.const(np.array(1.5, to_numpy(dtype)), "v")), "y")
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3).astype(to_numpy(dtype))}
    got = graphopt.compile(b.graph, backend="cuda-emu", level=0).run(feeds)[0]
    np.testing.assert_array_equal(got.astype(np.float32), run_reference(b.graph, feeds)[0].astype(np.float32))


def bf16_nchw_cnn():
    """Convolution (strided, bias, Relu), depthwise, pointwise, MaxPool, AveragePool and a global pool in bfloat16."""
    b = GraphBuilder("cnn_bf16", opset=17)
    x = b.input("x", (2, 5, 9, 9), B)
    h = b.op("Relu", b.op("Conv", x, b.const(_bf(8, 5, 3, 3, seed=1), "w1"), b.const(_bf(8, seed=2), "b1"),
                          pads=[1, 1, 1, 1], strides=[2, 2]))
    h = b.op("Conv", h, b.const(_bf(8, 1, 3, 3, seed=3), "dw"), pads=[1, 1, 1, 1], group=8)
    h = b.op("Conv", h, b.const(_bf(12, 8, 1, 1, seed=4), "pw"))
    h = b.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2])
    b.output(b.op("GlobalAveragePool", b.op("AveragePool", h, kernel_shape=[2, 2], pads=[1, 1, 0, 0])), "y")
    return b.graph, {"x": np.random.default_rng(0).standard_normal((2, 5, 9, 9)).astype(BF)}


@needs_emu
def test_bfloat16_nchw_convolutions_and_pools_match_reference():
    g, feeds = bf16_nchw_cnn()
    model = graphopt.compile(g, backend="cuda-emu", level=0)
    kinds = {k.split("_")[1] for k in model.stats["schedules"]}
    assert {"tcconv", "dw", "tcgemm", "pool"} <= kinds, kinds  # the 3x3 stride-2 conv on tensor cores too
    got, want = model.run(feeds)[0], run_reference(g, feeds)[0]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1.6e-2, atol=1.6e-2)
