"""Channels-last (NHWC) kernels under emulation vs the CPU reference of the fused ops
(``ai.graphopt::FusedConv`` with ``layout="NHWC"``, the NHWC pools): the implicit-GEMM
convolution (channels that are not multiples of a tile, 1x1, stride 2, groups,
dilation, odd sizes, 1-D and 3-D, float16), the depthwise kernel, window and global
pools; their nvcc sm_90 build; the lowerings; and whole models compiled at -O3, where
``convert_layout_nhwc`` runs, against the CPU reference."""
import numpy as np
import pytest

import graphopt
from cuda_harness import Case, kernel_module_tests, needs_emu
from graphopt.builder import GraphBuilder
from graphopt.dtypes import to_numpy
from graphopt.ops.registry import KernelContext, get_schema
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.conv_nhwc import NARROW_TILE, make_conv_nhwc, render_conv_nhwc
from graphopt.plugins.cuda.gemm import TILES
from graphopt.plugins.cuda.scalar import ScalarFn
from graphopt.plugins.cuda.spatial import make_depthwise, make_pool, render_depthwise, render_pool
from graphopt.plugins.cuda.specs import Epilogue, View

F, H = "float32", "float16"
GD = "ai.graphopt"
CASES: list[Case] = []
TOL = {F: (1e-4, 1e-4), H: (2e-3, 2e-3)}


def ref_op(op: str, inputs, **attrs) -> np.ndarray:
    """The CPU reference of ``ai.graphopt::op`` (float16 inputs are computed in float32)."""
    s = get_schema(op, GD)
    return s.kernel([None if a is None else np.asarray(a) for a in inputs], s.resolve_attrs(attrs),
                    KernelContext())[0]


def _out_spatial(in_sp, ks, strides, pads, dil, ceil=False):
    nd = len(in_sp)
    rnd = np.ceil if ceil else np.floor
    return [int(rnd((in_sp[i] + pads[i] + pads[nd + i] - dil[i] * (ks[i] - 1) - 1) / strides[i])) + 1
            for i in range(nd)]


def conv_case(cid, x_shape, w_shape, strides=None, pads=None, dil=None, groups=1, bias=True, act=True,
              residual=False, dtype=F, tile=None):
    """x [N, *sp, C], w [O, *k, C/g]; epilogue relu(acc + bias) (+ residual), read in NHWC."""
    nd = len(x_shape) - 2
    strides, dil, pads = strides or [1] * nd, dil or [1] * nd, pads or [0] * (2 * nd)
    out_sp = _out_spatial(x_shape[1:-1], w_shape[1:-1], strides, pads, dil)
    o = w_shape[0]
    out_shape = (x_shape[0], *out_sp, o)
    ops, terms = [], "{0}"
    if bias:
        ops.append(View(dtype, (0,) * (nd + 1) + (1,)))
        terms = "({0} + {1})"
    if act:
        terms = f"fmaxf({terms}, 0.0f)"
    if residual:
        ops.append(View.contiguous(dtype, out_shape))
        terms = f"({terms} + {{{len(ops)}}})"
    ep = Epilogue(ScalarFn.from_template("nhwc_ep", 1 + len(ops), F, terms), tuple(ops)) if ops or act else Epilogue()
    depthwise = groups > 1 and w_shape[-1] == 1
    if depthwise:
        spec = make_depthwise(x_shape, w_shape, out_sp, strides=strides, pads=pads, dilations=dil, epilogue=ep,
                              dtype=dtype, layout="NHWC")
        kernel = render_depthwise(spec)
    else:
        spec = make_conv_nhwc(x_shape, w_shape, out_sp, strides=strides, pads=pads[:nd], dilations=dil,
                              groups=groups, epilogue=ep, dtype=dtype, tile=tile)
        kernel = render_conv_nhwc(spec)

    def make(rng):
        x = rng.standard_normal(x_shape).astype(dtype)
        w = (rng.standard_normal(w_shape) * 0.5).astype(dtype)
        b = rng.standard_normal(o).astype(dtype)
        ref = ref_op("FusedConv", [x.astype(F), w.astype(F), b.astype(F) if bias else None], layout="NHWC",
                     strides=strides, pads=pads, dilations=dil, group=groups).astype(np.float64)
        if act:
            ref = np.maximum(ref, 0)
        ins = [x, w] + ([b] if bias else [])
        if residual:
            r = rng.standard_normal(out_shape).astype(dtype)
            ref = ref + r
            ins.append(r)
        return out_shape, dtype, ins, ref.astype(dtype)

    CASES.append(Case(cid, kernel, spec, make, *TOL[dtype]))
    return spec


conv_case("conv3x3-pad1-C3", (2, 9, 11, 3), (8, 3, 3, 3), pads=[1, 1, 1, 1])
conv_case("conv3x3-stride2-odd", (1, 13, 9, 5), (19, 3, 3, 5), strides=[2, 2], pads=[1, 1, 1, 1])
conv_case("conv1x1-residual", (2, 5, 7, 17), (12, 1, 1, 17), residual=True)
conv_case("conv1x1-stride2", (1, 7, 7, 6), (10, 1, 1, 6), strides=[2, 2], act=False)
conv_case("conv-groups2-dil2", (1, 10, 8, 6), (10, 3, 3, 3), pads=[2, 2, 2, 2], dil=[2, 2], groups=2)
conv_case("conv-groups3-asym-pads", (2, 7, 6, 9), (6, 2, 3, 3), pads=[0, 2, 1, 0], groups=3, bias=False)
conv_case("conv-tile64-C70", (1, 12, 12, 70), (72, 3, 3, 70), pads=[1, 1, 1, 1], tile=TILES["64x64"])
conv_case("conv-narrow-tile", (2, 10, 10, 4), (7, 3, 3, 4), pads=[1, 1, 1, 1], residual=True)
conv_case("conv-skinny-M", (1, 3, 3, 40), (48, 3, 3, 40), act=False)
conv_case("conv1d", (2, 13, 3), (5, 4, 3), strides=[3], pads=[2, 1])
conv_case("conv3d", (1, 5, 4, 6, 2), (3, 2, 3, 2, 2), pads=[1, 0, 1, 0, 1, 1])
conv_case("conv-float16", (1, 7, 8, 5), (6, 3, 3, 5), pads=[1, 1, 1, 1], residual=True, dtype=H)
conv_case("depthwise3x3-C37", (2, 7, 9, 37), (37, 3, 3, 1), pads=[1, 1, 1, 1], groups=37)
conv_case("depthwise-mult2-stride2", (1, 9, 8, 4), (8, 3, 3, 1), strides=[2, 2], pads=[1, 0, 1, 0], groups=4,
          residual=True)
conv_case("depthwise-dil2-nobias", (1, 10, 10, 3), (3, 3, 3, 1), pads=[2, 2, 2, 2], dil=[2, 2], groups=3,
          bias=False, act=False)
conv_case("depthwise-float16", (1, 6, 6, 9), (9, 3, 3, 1), pads=[1, 1, 1, 1], groups=9, dtype=H)


def pool_case(cid, kind, x_shape, kernel, strides=None, pads=None, dil=None, ceil=False, cip=False, dtype=F):
    nd = len(kernel)
    strides, dil, pads = strides or [1] * nd, dil or [1] * nd, pads or [0] * (2 * nd)
    out_sp = _out_spatial(x_shape[1:-1], kernel, strides, pads, dil, ceil)
    spec = make_pool(kind, x_shape, kernel, out_sp, strides=strides, pads=pads, dilations=dil, count_include_pad=cip,
                     dtype=dtype, layout="NHWC")
    op = "MaxPool" if kind == "max" else "AveragePool"
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=int(ceil))
    attrs.update(dilations=dil) if kind == "max" else attrs.update(count_include_pad=int(cip))

    def make(rng):
        x = rng.standard_normal(x_shape).astype(dtype)
        ref = ref_op(op, [x.astype(F)], layout="NHWC", **attrs)
        return ref.shape, dtype, [x], ref.astype(dtype)

    CASES.append(Case(cid, render_pool(spec), spec, make, *TOL[dtype]))


def global_pool_case(cid, kind, x_shape, dtype=F):
    sp = list(x_shape[1:-1])
    spec = make_pool(kind, x_shape, sp, [1] * len(sp), dtype=dtype, layout="NHWC")

    def make(rng):
        x = rng.standard_normal(x_shape).astype(dtype)
        ref = ref_op("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", [x.astype(F)], layout="NHWC")
        return ref.shape, dtype, [x], ref.astype(dtype)

    CASES.append(Case(cid, render_pool(spec), spec, make, *TOL[dtype]))


pool_case("max3x3-s2-p1-C5", "max", (2, 9, 10, 5), [3, 3], [2, 2], [1, 1, 1, 1])
pool_case("max2x2-dil2", "max", (1, 8, 7, 3), [2, 2], [1, 1], dil=[2, 2])
pool_case("max-ceil", "max", (1, 7, 7, 33), [3, 3], [2, 2], ceil=True)
pool_case("avg3x3-exclude-pad", "avg", (2, 6, 7, 3), [3, 3], [1, 1], [1, 1, 1, 1])
pool_case("avg-ceil-include-pad", "avg", (1, 6, 6, 2), [3, 3], [2, 2], [1, 1, 1, 1], ceil=True, cip=True)
pool_case("avg-float16", "avg", (1, 6, 5, 3), [2, 2], [2, 1], [0, 1, 1, 0], dtype=H)
pool_case("max1d", "max", (2, 11, 4), [4], [3])
global_pool_case("gap-7x7-C37", "avg", (2, 7, 7, 37))
global_pool_case("gmp-odd", "max", (3, 5, 3, 6))
global_pool_case("gap-big-image-not-unrolled", "avg", (1, 20, 20, 3))
global_pool_case("gap-float16", "avg", (1, 4, 4, 10), dtype=H)


lib, test_nhwc_kernel_matches_reference, test_every_nhwc_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=255)  # the implicit GEMM, as in test_cuda_gemm


def test_nhwc_tile_choice():
    assert make_conv_nhwc((1, 16, 16, 3), (8, 3, 3, 3), (16, 16)).tile == NARROW_TILE  # a stem: few channels
    assert make_conv_nhwc((1, 8, 8, 64), (64, 3, 3, 64), (8, 8)).tile == TILES["32x32"]
    big = make_conv_nhwc((8, 56, 56, 64), (256, 1, 1, 64), (56, 56))
    assert big.tile == TILES["128x128"] and big.grid() == (2, 196, 1)  # (channels, pixels, groups)


# -- lowerings: NHWC nodes in a graph ----------------------------------------------------------------


def _w(*shape, seed, scale=0.3):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def nhwc_graph(dtype=F):
    """Every NHWC lowering path: implicit GEMM (stride 2, bias + relu epilogue), pointwise GEMM
    with a residual, a 1x1 conv whose epilogue operand is per image (no pointwise GEMM view: the
    implicit GEMM takes it), grouped + dilated, depthwise, the four pools."""
    b = GraphBuilder("nhwc")
    x = b.input("x", (2, 9, 11, 5), dtype)

    def c(*shape, seed):
        return _w(*shape, seed=seed).astype(to_numpy(dtype))

    def conv(h, w, bias, *extra, epilogue="", **attrs):
        return b.op("FusedConv", h, w, bias, *extra, domain=GD, layout="NHWC", epilogue=epilogue, **attrs)

    h = conv(x, c(12, 3, 3, 5, seed=1), c(12, seed=2), epilogue="relu(in0)", strides=[2, 2], pads=[1, 1, 1, 1])
    h = conv(h, c(12, 1, 1, 12, seed=3), c(12, seed=4), h, epilogue="add(in0, in1)")
    s = b.input("scale", (2, 1, 1, 12), dtype)  # per image (an SE block's)
    h = conv(h, c(12, 1, 1, 12, seed=5), None, s, epilogue="mul(in0, in1)")
    h = conv(h, c(12, 3, 3, 4, seed=6), c(12, seed=7), group=3, dilations=[2, 2], pads=[2, 2, 2, 2])
    h = conv(h, c(12, 3, 3, 1, seed=8), c(12, seed=9), epilogue="min(max(in0, 0.0), 6.0)", group=12, pads=[1, 1, 1, 1])
    m = b.op("MaxPool", h, domain=GD, layout="NHWC", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    a = b.op("AveragePool", h, domain=GD, layout="NHWC", kernel_shape=[2, 2], strides=[2, 2])
    b.output(b.op("GlobalAveragePool", m, domain=GD, layout="NHWC"), "gap")
    b.output(b.op("GlobalMaxPool", a, domain=GD, layout="NHWC"), "gmp")
    b.output(m, "maxpool")
    rng = np.random.default_rng(0)
    return b.graph, {"x": rng.standard_normal((2, 9, 11, 5)).astype(to_numpy(dtype)),
                     "scale": rng.uniform(0.5, 1.5, (2, 1, 1, 12)).astype(to_numpy(dtype))}


@needs_emu
@pytest.mark.parametrize("dtype", [F, H, "bfloat16"])
def test_nhwc_nodes_lower_and_match_reference(dtype):
    g, feeds = nhwc_graph(dtype)
    model = graphopt.compile(g, backend="cuda-emu", level=0)
    kinds = {k.split("_")[1] for k in model.stats["schedules"]}  # go_<family>_<hash>
    want = {"convnhwc", "gemm"} if dtype == F else {"tcconv", "tcgemm"}  # 16-bit convolutions on tensor cores
    assert want | {"dw", "pool"} <= kinds, kinds
    got, want = model.run(feeds), run_reference(g, feeds)
    # 16-bit floats: the chain rounds after every layer
    rtol, atol = {F: (1e-4, 1e-5), H: (1e-2, 1e-2), "bfloat16": (1.6e-2, 1.6e-2)}[dtype]
    for a, r in zip(got, want):
        np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=rtol, atol=atol)


# -- whole models at -O3: convert_layout_nhwc on the CUDA backend ------------------------------------

@needs_emu
@pytest.mark.parametrize("name", ["resnet_style", "mobilenet_v2_style"])
def test_sample_cnn_at_O3_runs_channels_last_and_matches_reference(name):
    pytest.importorskip("torch")
    from samples.models import load_graph

    g = load_graph(name)
    x = g.inputs[0]
    shape = tuple(d if isinstance(d, int) else 2 for d in x.type.shape)
    feeds = {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    from graphopt.plugins.cuda.backend import CudaEmuBackend

    assert "convert_layout_nhwc" in CudaEmuBackend().lowering_pipeline(None)
    model = graphopt.compile(g, backend="cuda-emu", level=3)
    convs = [n for n in model.graph if n.op_type == "FusedConv"]
    assert convs and all(n.attr("layout") == "NHWC" for n in convs)
    transposes = [n for n in model.graph if n.op_type == "Transpose"]
    assert len(transposes) <= 2  # at the edges of the channels-last region only
    got, want = model.run(feeds), run_reference(g, feeds)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3)  # reassociation across the whole model
    kinds = {k.split("_")[1] for k in model.executable.stats["schedules"]}
    assert "conv" not in kinds and "convnhwc" in kinds  # no NCHW implicit GEMM left
