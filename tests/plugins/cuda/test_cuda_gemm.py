"""Tiled SIMT GEMM and implicit-GEMM convolution under emulation vs NumPy: sizes that
are not multiples of any tile, every tile configuration, batches with broadcasting,
transposed operands, K=0, a fused epilogue (bias, activation, residual), and
convolutions with strides, pads, dilation and groups in 1-D, 2-D and 3-D."""
import itertools

import numpy as np

from cuda_harness import Case, kernel_module_tests, needs_nvcc
from graphopt.plugins.cuda.gemm import TILES, choose_tile, make_conv, make_matmul, render_conv, render_gemm
from graphopt.plugins.cuda.scalar import ScalarFn, broadcast_strides, contiguous_strides
from graphopt.plugins.cuda.spatial import make_depthwise, render_depthwise
from graphopt.plugins.cuda.specs import Epilogue, View

F = "float32"
CASES: list[Case] = []
BIAS_RELU_RES = ScalarFn.from_template("bias_relu_res", 3, F, "(fmaxf({0} + {1}, 0.0f) + {2})")


def matmul_case(cid, M, N, K, batch=(), a_batch=None, b_batch=None, trans_a=False, trans_b=False, tile=None,
                epilogue=False, alpha=1.0):
    a_batch = batch if a_batch is None else a_batch
    b_batch = batch if b_batch is None else b_batch
    a_store = (*a_batch, K, M) if trans_a else (*a_batch, M, K)
    b_store = (*b_batch, N, K) if trans_b else (*b_batch, K, N)
    ast, bst = contiguous_strides(a_store), contiguous_strides(b_store)
    nb = len(batch)
    a_mk = (ast[-1], ast[-2]) if trans_a else ast[-2:]
    b_kn = (bst[-1], bst[-2]) if trans_b else bst[-2:]
    av = View(F, broadcast_strides(a_batch, batch, ast[:-2]) + tuple(a_mk))
    bv = View(F, broadcast_strides(b_batch, batch, bst[:-2]) + tuple(b_kn))
    out = (*batch, M, N)
    ep = Epilogue()
    if epilogue:
        ep = Epilogue(BIAS_RELU_RES, (View(F, (0,) * nb + (0, 1)), View.contiguous(F, out)))
    spec = make_matmul(M, N, K, batch, a=av, b=bv, alpha=alpha, epilogue=ep, tile=TILES[tile] if tile else None)

    def make(rng):
        a = rng.standard_normal(a_store).astype(np.float32)
        b = rng.standard_normal(b_store).astype(np.float32)
        am = np.swapaxes(a, -1, -2) if trans_a else a
        bm = np.swapaxes(b, -1, -2) if trans_b else b
        ref = alpha * np.matmul(am.astype(np.float64), bm.astype(np.float64))
        ref = np.broadcast_to(ref, out)
        ins = [a, b]
        if epilogue:
            bias = rng.standard_normal(N).astype(np.float32)
            res = rng.standard_normal(out).astype(np.float32)
            ref = np.maximum(ref + bias, 0) + res
            ins += [bias, res]
        return out, F, ins, ref.astype(np.float32)

    CASES.append(Case(cid, render_gemm(spec), spec, make, 1e-4, 1e-4))


matmul_case("tiny", 5, 7, 3)
matmul_case("odd-32x32", 33, 65, 17)
matmul_case("tile128", 130, 129, 40, tile="128x128")
matmul_case("tile64", 70, 66, 33, tile="64x64")
matmul_case("skinny-M", 3, 100, 20)
matmul_case("M1", 1, 45, 31)
matmul_case("N1", 37, 1, 9)
matmul_case("K0", 4, 5, 0)
matmul_case("M0", 0, 5, 3)
matmul_case("transA-transB", 19, 23, 29, trans_a=True, trans_b=True)
matmul_case("transB-only", 40, 24, 64, trans_b=True, tile="32x32")
matmul_case("batched", 9, 10, 11, batch=(2, 3))
matmul_case("batch-broadcast-B", 8, 6, 5, batch=(4,), b_batch=())
matmul_case("batch-broadcast-both", 7, 5, 6, batch=(3, 2), a_batch=(3, 1), b_batch=(2,))
matmul_case("epilogue", 21, 35, 13, epilogue=True, alpha=0.5)
matmul_case("epilogue-batched-tile64", 66, 65, 20, batch=(2,), epilogue=True, tile="64x64")
matmul_case("epilogue-16x64", 10, 70, 8, epilogue=True, tile="16x64")


def conv_ref(x, w, b, strides, pads, dil, groups):
    n, c, *sp = x.shape
    k, cg, *ks = w.shape
    nd = len(sp)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)])
    out_sp = [(sp[i] + pads[i] + pads[nd + i] - dil[i] * (ks[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((n, k, *out_sp))
    kg = k // groups
    for g in range(groups):
        for pos in itertools.product(*(range(d) for d in ks)):
            sl = tuple(slice(pos[i] * dil[i], pos[i] * dil[i] + strides[i] * (out_sp[i] - 1) + 1, strides[i])
                       for i in range(nd))
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + sl]
            wk = w[(slice(g * kg, (g + 1) * kg), slice(None)) + tuple(pos)]
            y[:, g * kg:(g + 1) * kg] += np.einsum("nc...,kc->nk...", patch, wk)
    if b is not None:
        y += b.reshape((1, k) + (1,) * nd)
    return y, out_sp


def conv_case(cid, x_shape, w_shape, strides=None, pads=None, dil=None, groups=1, bias=True, act=True,
              residual=False, tile=None, dtype=F):
    nd = len(x_shape) - 2
    strides, dil = strides or [1] * nd, dil or [1] * nd
    pads = pads or [0] * (2 * nd)
    _, out_sp = conv_ref(np.zeros(x_shape), np.zeros(w_shape), None, strides, pads, dil, groups)
    out = (x_shape[0], w_shape[0], *out_sp)
    ep, fn_ops = Epilogue(), []
    if bias:
        tmpl = "({0} + {1})" if not act else "fmaxf({0} + {1}, 0.0f)"
        ops = [View(dtype, (0, 1) + (0,) * nd)]
        if residual:
            tmpl = f"({tmpl} + {{2}})"
            ops.append(View.contiguous(dtype, out))
        ep = Epilogue(ScalarFn.from_template("conv_ep", 1 + len(ops), F, tmpl), tuple(ops))
    depthwise = groups > 1 and w_shape[1] == 1
    if depthwise:
        spec = make_depthwise(x_shape, w_shape, out_sp, strides=strides, pads=pads, dilations=dil, epilogue=ep,
                              dtype=dtype)
        kernel = render_depthwise(spec)
    else:
        spec = make_conv(x_shape, w_shape, out_sp, strides=strides, pads=pads[:nd], dilations=dil, groups=groups,
                         epilogue=ep, tile=TILES[tile] if tile else None, dtype=dtype)
        kernel = render_conv(spec)

    def make(rng):
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
        ref, _ = conv_ref(x, w, b, strides, pads, dil, groups)
        if act:
            ref = np.maximum(ref, 0)
        ins = [x, w] + ([b] if bias else [])
        if residual:
            r = rng.standard_normal(out).astype(dtype)
            ref = ref + r
            ins.append(r)
        return out, dtype, ins, ref.astype(dtype)

    CASES.append(Case(cid, kernel, spec, make, *((1e-4, 1e-4) if dtype == F else (2e-3, 1e-2))))


conv_case("conv3x3-pad1", (2, 3, 9, 11), (8, 3, 3, 3), pads=[1, 1, 1, 1])
conv_case("conv-stride2-dil2-groups2", (1, 4, 8, 8), (6, 2, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1], dil=[2, 2],
          groups=2)
conv_case("conv-asym-pads", (1, 3, 7, 6), (5, 3, 2, 3), pads=[0, 2, 1, 0], act=False)
conv_case("conv1x1-residual", (2, 16, 5, 5), (12, 16, 1, 1), residual=True)
conv_case("conv1d", (2, 3, 13), (5, 3, 4), strides=[3], pads=[2, 1])
conv_case("conv3d", (1, 2, 5, 4, 6), (3, 2, 2, 3, 2), pads=[1, 0, 1, 0, 1, 1])
conv_case("conv-no-bias", (1, 3, 6, 6), (4, 3, 3, 3), bias=False, act=False)
conv_case("conv-tile64", (1, 8, 12, 12), (70, 8, 3, 3), pads=[1, 1, 1, 1], tile="64x64")
conv_case("depthwise3x3", (2, 6, 7, 9), (6, 1, 3, 3), pads=[1, 1, 1, 1], groups=6)
conv_case("depthwise-mult2-stride2", (1, 4, 9, 8), (8, 1, 3, 3), strides=[2, 2], pads=[1, 0, 1, 0], groups=4,
          residual=True)
conv_case("conv-float16", (1, 3, 7, 8), (5, 3, 3, 3), pads=[1, 1, 1, 1], residual=True, dtype="float16")
conv_case("depthwise-float16", (1, 4, 6, 6), (4, 1, 3, 3), pads=[1, 1, 1, 1], groups=4, dtype="float16")
conv_case("depthwise-dil2", (1, 3, 10, 10), (3, 1, 3, 3), pads=[2, 2, 2, 2], dil=[2, 2], groups=3, act=False)


_GEMM_4096 = render_gemm(make_matmul(4096, 4096, 4096))
lib, test_gemm_kernel_matches_numpy, test_every_gemm_kernel_compiles_for_sm90_without_spills = \
    kernel_module_tests(CASES, max_registers=255, extra_kernels=[_GEMM_4096])


def test_tile_choice_depends_on_shape():
    assert choose_tile(4096, 4096, 1) == TILES["128x128"]
    assert choose_tile(768, 768, 1) == TILES["64x64"]       # 128x128 would leave SMs idle
    assert choose_tile(1, 768, 1) == TILES["16x64"]          # batch-1 linear layer
    assert choose_tile(20, 20, 1) == TILES["32x32"]
    spec = make_matmul(4096, 4096, 4096)
    assert spec.grid() == (32, 32, 1) and spec.block() == (256, 1, 1)


@needs_nvcc
def test_big_gemm_keeps_its_micro_tile_in_registers():
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    info = nvcc_check([_GEMM_4096])[_GEMM_4096.name]
    assert info.spill_stores == 0 and info.registers >= 64  # 64 accumulators live in registers
    assert info.smem_bytes >= 4 * 8 * (128 + 128)
