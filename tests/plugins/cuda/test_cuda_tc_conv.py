"""float16/bfloat16 convolutions on tensor cores (``tc_conv.py``): the implicit GEMM on the
pipelined mainloop, NHWC and NCHW, against the CPU reference of ``ai.graphopt::FusedConv``.

Integer-valued inputs make every product and sum exact, so the emulated kernel must match
the reference bit for bit: 3x3, 7x7 stride 2 (ResNet's stem), 1-D and 3-D, dilation, groups,
channel counts that allow 16-, 8- and 4-byte copies or only element loads, the fused epilogue
(bias, relu, a residual read in the output's layout), split-K. Then the lowering: every 16-bit
non-depthwise convolution of a graph runs on ``tcconv`` kernels, and float16 sample CNNs stay
close to the reference at -O2 (NCHW) and -O3 (NHWC); and the SASS of the NHWC kernel."""
import numpy as np
import pytest

import graphopt
from cuda_harness import Case, kernel_module_tests, needs_emu
from graphopt.ops.registry import KernelContext, get_schema
from graphopt.plugins.cuda import compile_nvrtc
from graphopt.plugins.cuda.mainloop import TILES
from graphopt.plugins.cuda.scalar import ScalarFn
from graphopt.plugins.cuda.specs import Epilogue, View
from graphopt.plugins.cuda.tc_conv import make_tc_conv, render_tc_conv

CASES: list[Case] = []


def _as(dtype, a):
    if dtype == "bfloat16":
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16)
    return a.astype(np.float16)


def reference(x, w, strides, pads, dil, groups, layout):
    s = get_schema("FusedConv", "ai.graphopt")
    attrs = s.resolve_attrs(dict(strides=list(strides), pads=list(pads) * 2, dilations=list(dil), group=groups,
                                 layout=layout))
    return s.kernel([x, w, None], attrs, KernelContext())[0]


def conv_case(cid, layout, xs, ws, strides=None, pads=None, dil=None, groups=1, split=None, tile=None,
              epilogue=False, dtype="float16", cases=CASES):
    """A case of ``cases``: ``tile`` a name in ``mainloop.TILES`` or a ``TcTile``; the engine the
    process's (``test_wgmma_conv.py`` builds its cases under ``wgmma.engine_forced``)."""
    nd = len(xs) - 2
    strides, pads, dil = strides or (1,) * nd, pads or (0,) * nd, dil or (1,) * nd
    sp, ks = (xs[1:-1], ws[1:-1]) if layout == "NHWC" else (xs[2:], ws[2:])
    osp = [(sp[i] + 2 * pads[i] - dil[i] * (ks[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    o = ws[0]
    out_shape = (xs[0], *osp, o) if layout == "NHWC" else (xs[0], o, *osp)
    ep = Epilogue()
    if epilogue:  # relu(acc + bias[channel]) + residual, operands in the output's layout
        chan = (0,) * (nd + 1) + (1,) if layout == "NHWC" else (0, 1) + (0,) * nd
        ep = Epilogue(ScalarFn.from_template("bias_relu_res", 3, "float32", "(fmaxf({0} + {1}, 0.0f) + {2})"),
                      (View(dtype, chan), View.contiguous(dtype, out_shape)))
    spec = make_tc_conv(xs, ws, osp, strides=strides, pads=pads, dilations=dil, groups=groups, layout=layout,
                        split=split, tile=TILES[tile] if isinstance(tile, str) else tile, epilogue=ep, dtype=dtype)

    def make(rng):
        x, w = _as(dtype, rng.integers(-2, 3, xs).astype(np.float32)), _as(dtype, rng.integers(-2, 3, ws).astype(np.float32))
        y = reference(x.astype(np.float32), w.astype(np.float32), strides, pads, dil, groups, layout)
        ins = [x, w]
        if epilogue:
            bias = _as(dtype, rng.integers(-4, 5, o).astype(np.float32))
            res = _as(dtype, rng.integers(-4, 5, out_shape).astype(np.float32))
            shape = [1] * len(out_shape)
            shape[-1 if layout == "NHWC" else 1] = o
            y = np.maximum(y + bias.astype(np.float32).reshape(shape), 0) + res.astype(np.float32)
            ins += [bias, res]
        ws_, ctr = spec.workspace
        if ws_:
            ins += [np.zeros(ws_, np.float32), np.zeros(ctr, np.int32)]
        return y.shape, _as(dtype, np.zeros(1)).dtype, ins, _as(dtype, y)

    cases.append(Case(cid, render_tc_conv(spec), spec, make, 0, 0))
    return spec


conv_case("nhwc-3x3-16B-copies-bias-relu-residual", "NHWC", (2, 9, 9, 16), (24, 3, 3, 16), pads=(1, 1), epilogue=True)
conv_case("nhwc-c3-element-loads", "NHWC", (1, 12, 12, 3), (16, 3, 3, 3), strides=(2, 2), pads=(1, 1))
conv_case("nhwc-7x7-stride2-stem-c8", "NHWC", (1, 15, 15, 8), (64, 7, 7, 8), strides=(2, 2), pads=(3, 3))
conv_case("nhwc-dilated-grouped", "NHWC", (1, 10, 10, 32), (32, 3, 3, 8), dil=(2, 2), pads=(2, 2), groups=4)
conv_case("nhwc-split-k", "NHWC", (1, 7, 7, 64), (64, 3, 3, 64), pads=(1, 1), split=4, epilogue=True)
conv_case("nhwc-1d-c4-8B-copies", "NHWC", (2, 20, 4), (16, 5, 4), pads=(2,), strides=(2,))
conv_case("nhwc-3d", "NHWC", (1, 4, 5, 6, 8), (16, 3, 3, 3, 8), pads=(1, 1, 1))
conv_case("nhwc-128x128-tile", "NHWC", (2, 12, 12, 32), (136, 1, 3, 32), pads=(0, 1), tile="128x128")
conv_case("nhwc-bf16", "NHWC", (1, 9, 9, 16), (32, 3, 3, 16), pads=(1, 1), dtype="bfloat16", epilogue=True)
conv_case("nchw-3x3-bias-relu-residual", "NCHW", (2, 16, 9, 9), (24, 16, 3, 3), pads=(1, 1), epilogue=True)
conv_case("nchw-grouped-stride2", "NCHW", (1, 12, 11, 11), (18, 4, 3, 3), strides=(2, 2), pads=(1, 1), groups=3)
conv_case("nchw-7x7-stride2-c3", "NCHW", (1, 3, 19, 19), (16, 3, 7, 7), strides=(2, 2), pads=(3, 3))
conv_case("nchw-split-bf16", "NCHW", (1, 32, 5, 5), (48, 32, 3, 3), pads=(1, 1), split=3, dtype="bfloat16")

# (nvcc's ptxas report is not asked for: the SASS test below reads NVRTC's, production's compiler)
lib, test_tc_conv_matches_reference_bit_for_bit, _nvcc_check = kernel_module_tests(CASES, max_registers=255)


def test_few_output_tiles_split_k():
    late = make_tc_conv((1, 7, 7, 512), (512, 3, 3, 512), (7, 7), pads=(1, 1))  # ResNet-50 b1, stage 4
    assert late.split > 1 and late.grid()[2] == late.split
    early = make_tc_conv((8, 56, 56, 64), (64, 3, 3, 64), (56, 56), pads=(1, 1))
    assert early.split == 1


def _graph(layout: str, dtype: str):
    from graphopt.builder import GraphBuilder

    b = GraphBuilder("tc_convs")
    rng = np.random.default_rng(0)
    npdt = _as(dtype, np.zeros(1)).dtype

    def c(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(npdt)

    if layout == "NCHW":
        x = b.input("x", (2, 8, 10, 10), dtype)
        h = b.op("Relu", b.op("Conv", x, c(16, 8, 3, 3), c(16), pads=[1, 1, 1, 1], strides=[2, 2]))
        h = b.op("Conv", h, c(16, 4, 3, 3), c(16), pads=[2, 2, 2, 2], dilations=[2, 2], group=4)
        h = b.op("Conv", h, c(16, 1, 3, 3), c(16), pads=[1, 1, 1, 1], group=16)  # depthwise: window kernel
        b.output(b.op("Conv", h, c(8, 16, 1, 1)), "y")
        feeds = {"x": rng.standard_normal((2, 8, 10, 10)).astype(npdt)}
    else:
        x = b.input("x", (2, 10, 10, 8), dtype)

        def conv(h, w, bias, **attrs):
            return b.op("FusedConv", h, w, bias, domain="ai.graphopt", layout="NHWC", epilogue="relu(in0)", **attrs)

        h = conv(x, c(16, 7, 7, 8), c(16), strides=[2, 2], pads=[3, 3, 3, 3])
        h = conv(h, c(16, 3, 3, 4), c(16), group=4, pads=[1, 1, 1, 1])
        b.output(conv(h, c(8, 1, 1, 16), None), "y")
        feeds = {"x": rng.standard_normal((2, 10, 10, 8)).astype(npdt)}
    return b.graph, feeds


@needs_emu
@pytest.mark.parametrize("layout, dtype", [("NCHW", "float16"), ("NHWC", "bfloat16")])
def test_every_16_bit_convolution_lowers_to_tensor_cores(layout, dtype):
    from graphopt.plugins.cpu import run_reference

    g, feeds = _graph(layout, dtype)
    model = graphopt.compile(g, backend="cuda-emu", level=0)
    kinds = [k.split("_")[1] for k in model.stats["schedules"]]
    assert "conv" not in kinds and "convnhwc" not in kinds and "tcconv" in kinds, kinds
    got, want = model.run(feeds)[0], run_reference(g, feeds)[0]
    tol = 1e-2 if dtype == "float16" else 3e-2  # 16-bit roundings after every layer
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("arch", compile_nvrtc.CI_ARCHS)
def test_nhwc_conv_sass_has_16_byte_async_copies_and_tensor_cores(arch):
    ok, why = compile_nvrtc.nvrtc_available()
    if not ok:
        pytest.skip(why)
    from test_cuda_mainloop import _has, sass_counts

    case = CASES[0]
    counts, res = sass_counts(case.kernel, arch)
    assert _has(counts, "HMMA.16816.F32") and _has(counts, "LDSM.16.M88") and _has(counts, "LDGSTS.E.BYPASS.128"), counts
    assert not _has(counts, "LDL") and not _has(counts, "STL") and res.local == 0, (counts, res)


@needs_emu
@pytest.mark.parametrize("name", ["resnet_style", "bert_style"])
def test_float16_sample_models_at_O2_and_O3_stay_close_to_the_reference(name):
    """The sample ResNet and BERT converted to float16: every convolution and GEMM on the
    tensor-core mainloop at -O2 (NCHW) and -O3 (NHWC), against the CPU reference of the same
    float16 graph (16-bit roundings after every layer: 1e-2 of the output's range)."""
    pytest.importorskip("torch")
    models = pytest.importorskip("samples.models")
    from graphopt.quantize import convert_float16
    from test_cuda_models import sample_feeds

    g = convert_float16(models.load_graph(name))
    feeds = sample_feeds(g)
    want = graphopt.compile(g, backend="cpu", level=0).run(feeds)
    for level in (2, 3):
        model = graphopt.compile(g, backend="cuda-emu", level=level)
        got = model.run(feeds)  # the batch is dynamic: kernels are made at the first run
        kinds = {k.split("_")[1] for k in model.stats["schedules"]}
        assert "tcgemm" in kinds and not kinds & {"conv", "convnhwc", "gemm"}, kinds
        assert not model.stats.get("host_nodes"), model.stats["host_nodes"]  # the classifier's float32 result too
        for a, r in zip(got, want):
            r = r.astype(np.float32)
            np.testing.assert_allclose(a.astype(np.float32), r, rtol=1e-2, atol=1e-2 * max(1.0, np.abs(r).max()))
