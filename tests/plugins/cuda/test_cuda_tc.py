"""The float16 tensor-core GEMM: under emulation its portable MMA twin runs the same
tile / warp / fragment indexing as the device path (checked against NumPy here); nvcc
must emit real ``mma.sync`` for sm_90. Also the bit-exact half conversions."""
import shutil
import subprocess

import numpy as np
import pytest

from cuda_harness import Case, kernel_module_tests, needs_emu, needs_nvcc, run_conversions
from graphopt.plugins.cuda.half import HALF_HELPERS
from graphopt.plugins.cuda.kernel import translation_unit
from graphopt.plugins.cuda.scalar import ScalarFn, contiguous_strides
from graphopt.plugins.cuda.specs import Epilogue, View
from graphopt.plugins.cuda.tc_gemm import TC_TILES, make_tc_matmul, render_tc_matmul

H = "float16"
CASES: list[Case] = []


def tc_case(cid, M, N, K, batch=(), trans_b=False, out="float16", tile="64x64", bias=False):
    b_store = (*batch, N, K) if trans_b else (*batch, K, N)
    bst = contiguous_strides(b_store)
    bv = View(H, bst[:-2] + ((bst[-1], bst[-2]) if trans_b else bst[-2:]))
    ep = Epilogue()
    if bias:
        ep = Epilogue(ScalarFn.from_template("bias_relu", 2, "float32", "fmaxf({0} + {1}, 0.0f)"),
                      (View(H, (0,) * len(batch) + (0, 1)),))
    spec = make_tc_matmul(M, N, K, batch, b=bv, c=View.contiguous(out, (*batch, M, N)), epilogue=ep,
                          tile=TC_TILES[tile])

    def make(rng):
        a = rng.standard_normal((*batch, M, K)).astype(np.float16)
        b = rng.standard_normal(b_store).astype(np.float16)
        bm = np.swapaxes(b, -1, -2) if trans_b else b
        ref = np.matmul(a.astype(np.float32), bm.astype(np.float32))
        ins = [a, b]
        if bias:
            bb = rng.standard_normal(N).astype(np.float16)
            ref = np.maximum(ref + bb.astype(np.float32), 0)
            ins.append(bb)
        return (*batch, M, N), out, ins, ref.astype(out)

    tol = (2e-3, 2e-2) if out == "float16" else (1e-4, 1e-4)  # half output: one rounding of |values| ~ 10
    CASES.append(Case(cid, render_tc_matmul(spec), spec, make, *tol))


tc_case("exact-tile", 64, 64, 32)
tc_case("odd-sizes", 37, 50, 40)
tc_case("f32-out-transB", 29, 17, 24, trans_b=True, out="float32")
tc_case("batched-bias-relu", 20, 24, 16, batch=(2,), bias=True)
tc_case("K-not-multiple-of-16", 16, 8, 7)
tc_case("tile128", 100, 120, 16, tile="128x128")

lib, test_tc_gemm_matches_numpy, test_every_tc_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=255)


@needs_nvcc
def test_device_path_is_real_mma():
    nvcc = shutil.which("nvcc")
    src = translation_unit([CASES[0].kernel])
    res = subprocess.run([nvcc, "-arch=sm_90", "-ptx", "-x", "cu", "-", "-o", "-"], input=src, capture_output=True,
                         text=True, check=True)
    assert res.stdout.count("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") == 16  # 2 k-steps x 8 per warp
    assert "cvt.rn.f16.f32" in res.stdout


@needs_emu
def test_half_conversions_are_bit_exact():
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8,
                         1e-9, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11], np.float32)
    x = np.concatenate([specials, (rng.standard_normal(4096 - len(specials)) * 10.0 ** rng.integers(-8, 5, 4096 -
                                                                                                 len(specials)))])
    x = x.astype(np.float32)
    y, z = run_conversions(HALF_HELPERS, "go_h2f", "go_f2h", x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(y, x.astype(np.float16).view(np.uint16))
    want = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(z[nan]).all()
    np.testing.assert_array_equal(z[~nan], want[~nan])


@pytest.mark.parametrize("M, N, expect", [(4096, 4096, "128x128"), (256, 256, "64x64")])
def test_tc_tile_choice(M, N, expect):
    assert make_tc_matmul(M, N, 64).tile == TC_TILES[expect]
