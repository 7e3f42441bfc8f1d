"""float16/bfloat16 convolutions on the Hopper wgmma mainloop (``tc_conv.py`` on ``wgmma.py``).

* Under ``wgmma.engine_forced("wgmma")`` a channels-last convolution whose im2col and W rows are
  copied 16 bytes at a time gets the wgmma mainloop; its emulated kernel matches NumPy *bit for
  bit* on integer-valued data (every product and sum exact in float32), so the im2col copies
  into the 128-byte-swizzled stages, the descriptors and the accumulator map are all checked:
  3x3 pad 1, the 7x7 stride-2 stem over 8 channels, 1x1 stride 2, dilation, groups, 3-D, ragged
  M and N on one and two warpgroups, bf16, the fused bias + ReLU (+ residual) epilogue, split-K.
* What wgmma does not suit stays on mma.sync with its reason (``tc_conv.wgmma_refusal``): the
  stem over 3 channels, NCHW; naming wgmma for it is an error.
* NVRTC builds a wgmma convolution for sm_90a: HGMMA and 16-byte LDGSTS in the SASS, no local
  memory, and the sm_90a audit passes it (HGMMA demanded, not HMMA).
* The whole ``cuda-emu`` backend runs a small float16 channels-last ConvNet with forced wgmma
  (its stem on mma.sync) and matches the CPU reference; the device path on the CuPy stand-in
  loads the sm_90a cubins and asks for their dynamic shared memory.
"""
import re

import numpy as np
import pytest

import graphopt
from cuda_harness import Case, kernel_module_tests, module_library, needs_emu, planted, run_case
from graphopt.plugins.cuda import compile_nvrtc
from graphopt.plugins.cuda.tc_conv import make_tc_conv, render_tc_conv, wgmma_refusal
from graphopt.plugins.cuda.wgmma import BK, WG_TILES, engine_forced
from test_cuda_tc_conv import conv_case

CASES: list[Case] = []


def wg_conv(cid, *args, engine="wgmma", **kw):
    """A ``test_cuda_tc_conv.conv_case`` made while the process's engine is wgmma; the spec must
    have taken ``engine``."""
    with engine_forced("wgmma"):
        spec = conv_case(cid, "NHWC", *args, cases=CASES, **kw)
    assert spec.engine == engine, (cid, spec.engine, wgmma_refusal(spec))
    return spec


wg_conv("3x3-pad1-ragged-m-n-bias-relu-residual", (2, 9, 9, 16), (24, 3, 3, 16), pads=(1, 1), epilogue=True)
wg_conv("7x7-stride2-stem-c8", (1, 15, 15, 8), (64, 7, 7, 8), strides=(2, 2), pads=(3, 3))  # 7 k-tiles, 4 stages
wg_conv("1x1-stride2", (2, 9, 9, 32), (40, 1, 1, 32), strides=(2, 2))
wg_conv("dilated", (1, 10, 10, 16), (32, 3, 3, 16), dil=(2, 2), pads=(2, 2))
wg_conv("grouped-c8-per-group", (1, 10, 10, 32), (32, 3, 3, 8), pads=(1, 1), groups=4)
wg_conv("grouped-stride2-c16-per-group", (1, 11, 11, 32), (48, 3, 3, 16), strides=(2, 2), pads=(1, 1), groups=2)
wg_conv("3d", (1, 4, 5, 6, 8), (16, 3, 3, 3, 8), pads=(1, 1, 1))
wg_conv("two-warpgroups-128x128-ragged", (2, 12, 12, 32), (136, 1, 3, 32), pads=(0, 1), tile=WG_TILES["128x128"])
wg_conv("64x128-ragged-n", (1, 9, 9, 16), (72, 3, 3, 16), pads=(1, 1), tile=WG_TILES["64x128"])
wg_conv("bf16-bias-relu-residual", (1, 9, 9, 16), (32, 3, 3, 16), pads=(1, 1), dtype="bfloat16", epilogue=True)
wg_conv("split3-bias-relu-residual", (1, 7, 7, 64), (64, 3, 3, 64), pads=(1, 1), split=3, epilogue=True)
# the stem over 3 channels: an im2col gathered element by element stays on mma.sync, wgmma or not
wg_conv("c3-stem-stays-on-mma-sync", (1, 12, 12, 3), (16, 7, 7, 3), strides=(2, 2), pads=(3, 3), engine="mma")

_CASE = {c.id: c for c in CASES}
lib, test_wgmma_conv_matches_numpy_bit_for_bit, _nvcc = kernel_module_tests(CASES, max_registers=255)


@needs_emu
def test_a_planted_im2col_bug_gives_wrong_numbers_on_wgmma_under_emulation():
    """The bit-for-bit cases see the im2col's copies: the channel offset of one copy a thread dropped."""
    good = _CASE["3x3-pad1-ragged-m-n-bias-relu-residual"]
    bad = planted(good, "channel_offset_dropped", " + ach0)", ")")
    got, want, _ = run_case(module_library([bad]), bad)
    assert not np.array_equal(got, want)


def test_the_wgmma_specs_take_the_wgmma_tiles_and_name_the_engine():
    for c in CASES:
        t, src = c.spec.tile, c.kernel.source
        if c.spec.engine == "wgmma":
            assert t.bk == BK and t.warps_n == 1 and t.wm == 16, (c.id, t)
            assert "wgmma (sm_90a)" in src and "go_wgmma_m64n" in src and "go_mma_16816" not in src, c.id
            assert c.spec.block() == (t.threads, 1, 1) and c.kernel.dyn_smem == 4 * (t.bm + t.bn) * 128 + 1024
        else:
            assert "mma.sync" in src and "go_wgmma_m64n" not in src, c.id
    split = _CASE["split3-bias-relu-residual"].spec
    assert split.split == 3 and split.grid()[2] == 3 and split.workspace == (3 * 64 * 64, 1)


def test_few_output_tiles_split_k_on_wgmma_as_the_gemm_does():
    with engine_forced("wgmma"):
        late = make_tc_conv((1, 7, 7, 512), (512, 3, 3, 512), (7, 7), pads=(1, 1))  # ResNet-50 b1, stage 4
        early = make_tc_conv((8, 56, 56, 64), (64, 3, 3, 64), (56, 56), pads=(1, 1))
    assert late.engine == early.engine == "wgmma"
    assert late.tile == WG_TILES["64x64"] and late.split > 1 and late.grid()[2] == late.split
    assert early.split == 1 and early.grid() == (1, 8 * 56 * 56 // 64, 1)


def test_what_wgmma_does_not_suit_stays_on_mma_sync_with_its_reason():
    with engine_forced("wgmma"):
        stem = make_tc_conv((1, 224, 224, 3), (64, 7, 7, 3), (112, 112), strides=(2, 2), pads=(3, 3))
        nchw = make_tc_conv((1, 16, 8, 8), (32, 16, 3, 3), (8, 8), pads=(1, 1), layout="NCHW")
        c12 = make_tc_conv((1, 8, 8, 12), (32, 3, 3, 12), (8, 8), pads=(1, 1))  # 8-byte copies
        tiled = make_tc_conv((1, 8, 8, 16), (32, 3, 3, 16), (8, 8), pads=(1, 1),
                             tile=make_tc_conv((1, 8, 8, 16), (32, 3, 3, 16), (8, 8), engine="mma").tile)
    assert {s.engine for s in (stem, nchw, c12, tiled)} == {"mma"}
    assert wgmma_refusal(stem) == "C/group = 3 is not a multiple of 8: the im2col is copied 1 element at a time"
    assert wgmma_refusal(c12) == "C/group = 12 is not a multiple of 8: the im2col is copied 4 elements at a time"
    assert wgmma_refusal(nchw) == "an NCHW im2col, gathered element by element"
    assert wgmma_refusal(tiled, tiled.tile).startswith("a tile the wgmma mainloop does not take")
    assert stem.tile.threads == 256  # mma.sync's gathered stem keeps its 256 threads
    with pytest.raises(ValueError, match="a wgmma convolution: C/group = 3 is not a multiple of 8"):
        make_tc_conv((1, 224, 224, 3), (64, 7, 7, 3), (112, 112), strides=(2, 2), pads=(3, 3), engine="wgmma")
    with pytest.raises(ValueError, match="a wgmma convolution: an NCHW im2col"):
        make_tc_conv((1, 16, 8, 8), (32, 16, 3, 3), (8, 8), layout="NCHW", engine="wgmma")
    with engine_forced("mma"):  # the process's mma.sync: even a convolution wgmma suits stays there
        assert make_tc_conv((1, 8, 8, 16), (32, 3, 3, 16), (8, 8), pads=(1, 1)).engine == "mma"


needs_nvrtc = pytest.mark.skipif(not compile_nvrtc.nvrtc_available()[0], reason="no NVRTC")


@needs_nvrtc
@pytest.mark.parametrize("cid", ["3x3-pad1-ragged-m-n-bias-relu-residual", "two-warpgroups-128x128-ragged",
                                 "split3-bias-relu-residual"])
def test_nvrtc_builds_wgmma_convs_for_sm90a_with_hgmma_and_no_local_memory(cid):
    from graphopt.plugins.cuda import sass
    from graphopt.plugins.cuda.cubin import read_cubin

    k = _CASE[cid].kernel
    path = compile_nvrtc.compile_kernels([k], "sm_90")[k.name]  # a wgmma kernel's target is sm_90a
    assert read_cubin(path.read_bytes()).arch == "sm_90a"
    text = sass.sass(path)
    n = k.spec.tile.bn
    assert re.search(rf"\bHGMMA\.64x{n}x16\.F32\b", text), f"no HGMMA.64x{n}x16 in the SASS"
    assert re.search(r"\bLDGSTS\.E\.(?:\w+\.)*128\b", text) and "HMMA" not in text  # 16-byte cp.async of both
    assert not re.search(r"\b(LDL|STL)\b", text)
    res = sass.resource_usage(path)[k.name]
    assert res.local == 0 and res.stack == 0, res


@needs_nvrtc
def test_the_sm90a_audit_passes_a_wgmma_conv_and_demands_hgmma():
    from types import SimpleNamespace

    from graphopt.plugins.cuda.audit import audit_kernels, audit_one
    from graphopt.plugins.cuda.sass import Resources

    case = _CASE["3x3-pad1-ragged-m-n-bias-relu-residual"]
    (a,) = audit_kernels([SimpleNamespace(kernel=case.kernel, block=case.spec.block())], ("sm_90",))
    assert a.arch == "sm_90a" and a.family == "TcConvSpec" and a.failures() == [], a.results
    assert all(a.results[c] == "pass" for c in ("tensor_cores", "async_copy", "vec16", "no_local")), a.results
    hmma = "HMMA.16816.F32 R4, R8, R12, R4 ;\nLDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64] ;"
    res = Resources(registers=90, stack=0, shared=1024, local=0)
    assert audit_one(case.kernel, 128, "sm_90a", hmma, res).results["tensor_cores"] == "FAIL"


def _convnet():
    """A float16 ConvNet in ONNX's NCHW Convs (-O3 turns them channels-last): a stem over 3
    channels, a 3x3 stride 2, a grouped 3x3 (32 channels a group), a dilated 3x3, a 1x1 head."""
    from graphopt.builder import GraphBuilder

    rng = np.random.default_rng(7)
    b = GraphBuilder("wgmma_convnet")

    def c(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    x = b.input("x", (2, 3, 16, 16), "float16")
    h = b.op("Relu", b.op("Conv", x, c(16, 3, 3, 3), c(16), pads=[1, 1, 1, 1]))
    h = b.op("Relu", b.op("Conv", h, c(64, 16, 3, 3), c(64), pads=[1, 1, 1, 1], strides=[2, 2]))
    h = b.op("Relu", b.op("Conv", h, c(64, 32, 3, 3, scale=0.1), c(64), pads=[1, 1, 1, 1], group=2))
    # K = 576, 9 k-tiles for 2 output tiles: split-K
    h = b.op("Relu", b.op("Conv", h, c(24, 64, 3, 3, scale=0.05), c(24), pads=[2, 2, 2, 2], dilations=[2, 2]))
    b.output(b.op("Conv", h, c(8, 24, 1, 1)), "y")
    return b.graph, {"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float16)}


def _tcconv_specs(model):
    return [l.kernel.spec for l in model.executable.lowered.launches if l.kernel.name.startswith("go_tcconv")]


@needs_emu
def test_the_cuda_emu_backend_runs_a_float16_convnet_on_wgmma_close_to_the_reference():
    from graphopt.plugins.cpu import run_reference

    g, feeds = _convnet()
    with engine_forced("wgmma"):
        model = graphopt.compile(g, backend="cuda-emu", level=3)
        got = model.run(feeds)[0]
    specs = _tcconv_specs(model)
    assert {s.layout for s in specs} == {"NHWC"}
    assert sorted(s.engine for s in specs) == ["mma", "wgmma", "wgmma", "wgmma"], specs  # the stem over 3: mma
    assert [s.c for s in specs if s.engine == "mma"] == [3] and any(s.split > 1 for s in specs if s.engine == "wgmma")
    want = run_reference(g, feeds)[0].astype(np.float32)
    # float16's tolerance: the sums are float32 on either side, rounded to float16 after every layer
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-3, atol=1e-3)


from fake_cupy import fake_gpu  # noqa: E402,F401  (the fixture)


@needs_emu
def test_the_device_path_on_the_stand_in_runs_wgmma_convs(fake_gpu, monkeypatch):
    """sm_90a cubins loaded on compute capability 9.0, their dynamic shared memory past 48 KB
    asked for, a split-K conv's workspace, captured and replayed."""
    from graphopt.plugins.cpu import run_reference
    from graphopt.plugins.cuda import wgmma

    monkeypatch.setenv(wgmma.ENGINE_ENV, "wgmma")
    cp, compiles = fake_gpu
    g, feeds = _convnet()
    model = graphopt.compile(g, backend="cuda", level=3, gemm="generated")
    specs = _tcconv_specs(model)
    assert sum(s.engine == "wgmma" for s in specs) == 3 and any(s.split > 1 for s in specs if s.engine == "wgmma")
    want = run_reference(g, feeds)[0].astype(np.float32)
    for _ in range(3):  # direct, captured, replayed
        got = model.run(feeds)[0].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert "sm_90a" in {a for a, _ in compiles}
