"""The int8 tensor-core GEMM (``mma.sync.m16n8k32`` s8, ``int8_tc.py``) under cuda-emu, bit for
bit against the NumPy reference of QGemm / QMatMul / QConv. Under emulation the mma is its
portable twin, so these check the staging, the fragment indexing of the m16n8k32 layout, the
row/column sums and the epilogue mapping; nvcc must emit the real instruction for sm_90.

Every GEMM-family graph of test_cuda_int8 (sizes that are not multiples of a tile, K not a
multiple of 4 or 32, per-channel scales, zero points on every operand, Relu / Clip, float
outputs, runtime B with broadcast batch dims, grouped / dilated / strided / 1-D convolutions)
runs again here pushed onto tensor cores by zeroing ``mma_pays``'s thresholds, with a few cases
of its own for the warp and slice structure; the schedule's own choice is checked separately,
and on a whole quantized sample model."""
import shutil
import subprocess

import numpy as np
import pytest

from cuda_harness import needs_emu, needs_nvcc
from test_cuda_int8 import GRAPHS as INT8_GRAPHS
from test_cuda_int8 import bias, one_node, q, s32, scales, zeros8
# every kernel of this module's ``compiled`` through nvcc for sm_90: no error, no spill
from test_cuda_int8 import test_int8_kernels_compile_for_sm90  # noqa: F401
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda import int8_tc
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.plugins.cuda.int8 import INT8_TILES, Int8GemmSpec
from graphopt.plugins.cuda.int8_tc import INT8_MMA_TILES, Int8MmaGemmSpec, pick_int8_gemm
from graphopt.plugins.cuda.kernel import translation_unit
from graphopt.plugins.cuda.requant import QuantOut

pytestmark = needs_emu
MMA_INSTR = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"
# built with mma_pays' thresholds at zero: every GEMM runs on tensor cores
FORCED = {k: v for k, v in INT8_GRAPHS.items() if k.startswith(("qgemm", "qmatmul", "qconv")) and "depthwise" not in k}
NATURAL = {}  # built with the schedule's own thresholds


def forced(fn):
    FORCED[fn.__name__] = fn
    return fn


@forced
def qgemm_four_warps_partial_k_step():  # K = 100: the last k-step is partly past K
    return one_node("QGemm", (37, 100), "uint8", s32(0.05), np.uint8(7), q((45, 100), "int8", 1), scales(45, 2),
                    zeros8(45), s32(0.3), np.uint8(11), bias(45, 2000), transB=1, activation="Relu")


@forced
def qgemm_few_rows_tile_16x64():
    return one_node("QGemm", (9, 50), "uint8", s32(0.02), np.uint8(90), q((70, 50), "int8", 3), scales(70, 4),
                    zeros8(70), s32(0.4), np.uint8(60), transB=1)


@forced
def qgemm_tile_128_two_slices():  # K = 72 bytes: two 64-byte slices, four k-steps
    return one_node("QGemm", (130, 72), "int8", s32(0.02), np.int8(-9), q((129, 72), "int8", 10),
                    scales(129, 11, 0.01), zeros8(129), s32(0.4), np.int8(6), transB=1, activation="Relu")


@forced
def qconv_many_channels_weight_zero_points():  # N = 33 across warps; row sums of the im2col
    return one_node("QConv", (2, 5, 9, 11), "uint8", s32(0.02), np.uint8(30), q((33, 5, 3, 3), "uint8", 1),
                    scales(33, 2), q((33,), "uint8", 7), s32(0.1), np.uint8(20), bias(33, 3000), pads=[1, 1, 1, 1],
                    strides=[2, 2], activation="Relu")


def natural(fn):
    NATURAL[fn.__name__] = fn
    return fn


@natural
def qgemm_big_enough():  # 64 x 64 x 128: the schedule picks tensor cores by itself
    return one_node("QGemm", (64, 128), "int8", s32(0.05), np.int8(3), q((64, 128), "int8", 1), scales(64, 2),
                    zeros8(64), s32(0.3), np.int8(-2), bias(64, 2000), transB=1)


@natural
def qconv_few_input_channels():  # K = 3 x 3 x 3: dp4a
    return one_node("QConv", (1, 3, 16, 16), "uint8", s32(0.02), np.uint8(30), q((32, 3, 3, 3), "int8", 1),
                    scales(32, 2), zeros8(32), s32(0.1), np.uint8(20), pads=[1, 1, 1, 1])


def _build(name):
    g, feeds = {**FORCED, **NATURAL}[name]()
    with pytest.MonkeyPatch.context() as m:
        for knob in ("MMA_MIN_MN", "MMA_MIN_K", "MMA_MIN_MACS") if name in FORCED else ():
            m.setattr(int8_tc, knob, 0)
        if "tile" in name:  # one SM: the 'tile' cases get their big tiles
            m.setattr(int8_tc, "SM_COUNT", 1)
        return g, feeds, get_backend("cuda-emu").compile(g)


@pytest.fixture(scope="module")
def compiled():
    """Every graph compiled in one batch (one host compile for the module)."""
    with kernel_batch():
        return {name: _build(name) for name in [*FORCED, *NATURAL]}


def _specs(exe):
    return [l.kernel.spec for l in exe.lowered.launches]


@pytest.mark.parametrize("name", [*FORCED, *NATURAL])
def test_int8_mma_graph_is_bit_exact(compiled, name):
    g, feeds, exe = compiled[name]
    for v, a, r in zip(g.outputs, exe.run(feeds), run_reference(g, feeds)):
        np.testing.assert_array_equal(a, r, err_msg=f"{name}: {v.name}", strict=True)  # dtype and shape too
    kinds = {type(s) for s in _specs(exe)}
    assert Int8MmaGemmSpec in kinds and Int8GemmSpec not in kinds or name in NATURAL


def test_schedule_records_the_tensor_core_choice(compiled):
    specs = {name: _specs(exe)[0] for name, (_, _, exe) in compiled.items()}
    for name, tile in (("qgemm_tile_128", "128x128"), ("qgemm_tile_64", "64x64"),
                       ("qgemm_few_rows_tile_16x64", "16x64"), ("qgemm_uint8_per_channel_relu", "32x32")):
        assert specs[name].tile == INT8_MMA_TILES[tile], name
    s = specs["qmatmul_activations_with_zero_points"]
    assert s.row_sums and s.col_sums and s.b is not None
    assert specs["qconv_many_channels_weight_zero_points"].row_sums
    assert specs["qgemm_dequantized_output_word_loads"].a_words
    assert type(specs["qgemm_big_enough"]) is Int8MmaGemmSpec
    assert type(specs["qconv_few_input_channels"]) is Int8GemmSpec
    sched = compiled["qgemm_big_enough"][2].stats["schedules"]
    assert [v for v in sched.values() if v.startswith("Int8MmaGemmSpec(tile=TcTile(")]


@pytest.mark.parametrize("M, N, K, mma", [(256, 256, 512, True), (4096, 4096, 4096, True), (1, 1000, 512, False),
                                          (64, 8, 512, False), (512, 512, 32, False), (40, 40, 100, False)])
def test_mma_pays_only_where_the_work_is(M, N, K, mma):
    spec = pick_int8_gemm(M, N, K, out=QuantOut("int8"))
    assert isinstance(spec, Int8MmaGemmSpec) is mma
    if M == 4096:
        assert spec.tile == INT8_MMA_TILES["128x128"]


def test_a_dp4a_tile_forces_dp4a():
    spec = pick_int8_gemm(256, 256, 512, out=QuantOut("int8"), tile=INT8_TILES["64x64"])
    assert type(spec) is Int8GemmSpec and spec.tile == INT8_TILES["64x64"]


@needs_nvcc
def test_device_path_is_real_mma(compiled):
    k = compiled["qgemm_tile_128"][2].lowered.kernels[0]
    res = subprocess.run([shutil.which("nvcc"), "-arch=sm_90", "-ptx", "-x", "cu", "-", "-o", "-"],
                         input=translation_unit([k]), capture_output=True, text=True, check=True)
    # warp tile 64x32 = 4 x 4 fragments, two k-steps per 64-byte slice, unrolled; no twin left over
    assert res.stdout.count(MMA_INSTR) == 32
    assert "shfl" not in res.stdout and "dp4a" not in res.stdout


@pytest.fixture(scope="module")
def int8_sample(tmp_path_factory):
    """resnet_style quantized and lowered as test_cuda_int8_models does, compiled by the schedule's own choice."""
    pytest.importorskip("torch")
    models = pytest.importorskip("samples.models")
    import graphopt
    from graphopt.quantize import lower_int8, quantize_static
    from test_cuda_models import sample_feeds

    path = tmp_path_factory.mktemp("int8_tc") / "resnet_style.onnx"
    models.export_onnx("resnet_style", path)
    g = graphopt.load(str(path))
    low = lower_int8(quantize_static(g, [sample_feeds(g, seed=s) for s in (1, 2)]))
    feeds = sample_feeds(g, seed=3)
    with kernel_batch():
        exe = get_backend("cuda-emu").compile(low).for_feeds(feeds)
    return low, feeds, exe


def test_quantized_sample_runs_layers_on_tensor_cores(int8_sample):
    low, feeds, exe = int8_sample
    kinds = [type(s).__name__ for s in _specs(exe)]
    assert "Int8MmaGemmSpec" in kinds and "Int8GemmSpec" in kinds  # the stem conv (K = 27) stays on dp4a
    for a, r in zip(exe.run(feeds), run_reference(low, feeds)):
        np.testing.assert_array_equal(a, r)
