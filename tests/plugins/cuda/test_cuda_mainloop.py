"""The pipelined tensor-core mainloop (``mainloop.py``) and the GEMM on it (``tc_gemm.py``).

* The portable twins of ``ldmatrix`` (plain and ``.trans``) and ``cp.async`` (queued copies
  landing only at the wait for their group, zero fill) against the PTX layouts and rules,
  written out here independently of the C.
* GEMMs under emulation *bit for bit*: integer-valued float16/bfloat16 inputs make every
  product and partial sum exact in float32, so the emulated result equals the reference
  whatever the summation order, and any misplaced element shows. Every operand layout
  (k-contiguous, m/n-contiguous through ``ldmatrix.trans``, neither), every copy width (16,
  8 and 4 bytes, element loads), every tile of the table, 2-4 stages, split-K (uneven last
  split, batches, epilogues), paired and single stores; random data within tolerance.
* Planted pipeline bugs (waiting for one group too few, no barrier after the wait) give
  wrong numbers under emulation: the twin checks the schedule, not just the arithmetic.
* Split-K leaves its tile counters at zero, so a second launch (a CUDA-graph replay) is right.
* Shared memory is swizzled, not padded (``swizzle.py``; its bank-conflict proof is
  ``test_swizzle.py``): the cases cover every row length of the table's tiles.
* The schedule table, and the machine code NVRTC makes for sm_80 and sm_90: HMMA, LDGSTS
  with 16-byte copies, LDSM (.MT88 for transposed operands), no local memory.
"""
import re

import numpy as np
import pytest

from cuda_harness import Case, aligned, kernel_module_tests, module_library, needs_emu, planted, run_case
from graphopt.plugins.cuda import compile_nvrtc, mainloop
from graphopt.plugins.cuda.kernel import Helper, Kernel, Param, translation_unit
from graphopt.plugins.cuda.mainloop import CP_ASYNC_HELPER, LDSM_HELPER, SMEM_ADDR_HELPER, TILES, choose_schedule
from graphopt.plugins.cuda.scalar import ScalarFn, contiguous_strides
from graphopt.plugins.cuda.specs import Epilogue, View
from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul

H, B16 = "float16", "bfloat16"
NP = {H: np.float16, "float32": np.float32}
CASES: list[Case] = []


def _as(dtype, a):
    if dtype == B16:
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16)
    return a.astype(NP[dtype])


def gemm_case(cid, M, N, K, batch=(), *, a_layout="mk", b_layout="kn", dtype=H, out=None, tile=None, split=None,
              bias=False, exact=True, a_pad=0):
    """``a_layout`` "mk" (k contiguous) or "km" (m contiguous: transA); ``b_layout`` "kn" (n
    contiguous: row-major weights) or "nk" (transB); ``a_pad`` widens A's rows (odd strides)."""
    out = out or dtype
    a_store = (*batch, M, K + a_pad) if a_layout == "mk" else (*batch, K, M + a_pad)
    b_store = (*batch, K, N) if b_layout == "kn" else (*batch, N, K)
    ast, bst = contiguous_strides(a_store), contiguous_strides(b_store)
    av = View(dtype, ast[:-2] + (ast[-2:] if a_layout == "mk" else ast[-2:][::-1]))
    bv = View(dtype, bst[:-2] + (bst[-2:] if b_layout == "kn" else bst[-2:][::-1]))
    ep = Epilogue()
    if bias:
        ep = Epilogue(ScalarFn.from_template("bias_relu", 2, "float32", "fmaxf({0} + {1}, 0.0f)"),
                      (View(dtype, (0,) * len(batch) + (0, 1)),))
    spec = make_tc_matmul(M, N, K, batch, a=av, b=bv, c=View.contiguous(out, (*batch, M, N)), epilogue=ep,
                          tile=TILES[tile] if tile else None, split=split)

    def make(rng):
        gen = (lambda s: rng.integers(-3, 4, s).astype(np.float32)) if exact else \
            (lambda s: rng.standard_normal(s).astype(np.float32))
        a, b = _as(dtype, gen(a_store)), _as(dtype, gen(b_store))
        am = a[..., :K] if a_layout == "mk" else np.swapaxes(a[..., :M], -1, -2)
        bm = b if b_layout == "kn" else np.swapaxes(b, -1, -2)
        ref = np.matmul(am.astype(np.float64), bm.astype(np.float64))
        ins = [a, b]
        if bias:
            bb = _as(dtype, gen((N,)))
            ref = np.maximum(ref + bb.astype(np.float64), 0)
            ins.append(bb)
        ws, ctr = spec.workspace
        if ws:
            ins += [np.zeros(ws, np.float32), np.zeros(ctr, np.int32)]
        return (*batch, M, N), out if out != B16 else _as(B16, np.zeros(1)).dtype, ins, _as(out, ref)

    tol = (0, 0) if exact else ((1e-4, 1e-4) if out == "float32" else (2e-3, 2e-2))
    CASES.append(Case(cid, render_tc_matmul(spec), spec, make, *tol))
    return spec


gemm_case("64x64-one-k-tile", 64, 64, 32, tile="64x64")
gemm_case("odd-sizes-4-byte-copies", 37, 50, 40, tile="64x64")  # N = 50: copies of 2 elements along n
gemm_case("transB-8-byte-copies", 29, 20, 36, b_layout="nk", out="float32", tile="64x32")
gemm_case("transA-ldmatrix-trans", 48, 40, 72, a_layout="km", tile="64x64")
gemm_case("element-loads-K7", 16, 24, 7, tile="64x32")
gemm_case("odd-row-stride-element-loads", 40, 48, 48, a_pad=1, tile="64x64")
gemm_case("batched-bias-relu", 20, 48, 96, batch=(2,), bias=True, tile="64x64")
gemm_case("tile128x128-dynamic-smem", 130, 136, 200, tile="128x128")
gemm_case("tile64x128-transA-transB", 70, 140, 64, a_layout="km", b_layout="nk", tile="64x128")
gemm_case("tile16x64", 5, 70, 64, tile="16x64")
gemm_case("split4", 64, 64, 512, tile="64x64", split=4)
gemm_case("split16-bias", 49, 64, 2048, tile="64x64", split=16, bias=True)  # ResNet-50 b1's last stage
gemm_case("split3-uneven-batched-bias", 30, 40, 300, batch=(3,), tile="64x64", split=3, bias=True)
gemm_case("split-transB-f32-out", 16, 72, 256, b_layout="nk", out="float32", tile="16x64", split=2)
gemm_case("bf16-split-transA", 40, 64, 256, a_layout="km", dtype=B16, tile="64x64", split=2, bias=True)
# swizzled rows of every length the table makes (k-major: 4 chunks; m/n-major: 2 to 16 chunks)
gemm_case("tile128x64-transA-transB-16-chunk-rows-split2", 130, 70, 256, a_layout="km", b_layout="nk", tile="128x64",
          split=2)  # 48 KB of static shared memory, the split-K ticket inside it
gemm_case("tile16x64-transA-bf16-2-chunk-rows", 5, 70, 64, a_layout="km", dtype=B16, tile="16x64")
gemm_case("tile128x128-transA-element-loads", 129, 130, 40, a_layout="km", a_pad=1, tile="128x128")
gemm_case("tile64x32-bf16-split2-4-chunk-rows", 64, 32, 256, dtype=B16, tile="64x32", split=2)
gemm_case("random-normal", 70, 90, 130, exact=False, tile="64x64")
gemm_case("random-normal-split", 70, 90, 260, exact=False, tile="64x64", split=3, out="float32")

# (nvcc's ptxas report is not asked for: the SASS tests below read NVRTC's, production's compiler)
lib, test_tc_mainloop_gemm_matches_reference, _nvcc_check = kernel_module_tests(CASES, max_registers=255)

_CASE = {c.id: c for c in CASES}


def test_cases_cover_every_copy_width_and_layout():
    from graphopt.plugins.cuda.mainloop import view_operand

    seen = set()
    for c in CASES:
        s = c.spec
        nb = len(s.batch)
        A = view_operand("a", "0", *s.a.strides[nb:], s.M, s.K, "0", "int", s.a.strides[:nb], s.a.offset)
        B = view_operand("b", "0", s.b.strides[-1], s.b.strides[-2], s.N, s.K, "0", "int", s.b.strides[:nb], s.b.offset)
        seen |= {("a", A.kmajor, A.vec), ("b", B.kmajor, B.vec)}
    assert {("a", True, 8), ("a", False, 8), ("a", True, 1), ("b", False, 8), ("b", True, 8), ("b", False, 2),
            ("b", True, 4)} <= seen, seen
    assert {c.kernel.dyn_smem > 0 for c in CASES} == {True, False}


# -- the twins against the PTX rules ---------------------------------------------------------------

LDSM_TEST = Kernel("go_test_ldsm", """\
extern "C" __global__ void go_test_ldsm(unsigned* __restrict__ out, const unsigned short* __restrict__ src) {
    __shared__ __align__(16) unsigned short tile[32][24];  // 32 rows of 16 values, rows padded to 48 bytes
    for (int i = threadIdx.x; i < 32 * 16; i += 32) tile[i / 16][i % 16] = src[i];
    __syncthreads();
    const int lane = threadIdx.x;
    unsigned r[4];
    go_ldsm_x4(r, &tile[lane][(lane & 1) * 8]);
    for (int q = 0; q < 4; ++q) out[q * 32 + lane] = r[q];
    go_ldsm_x4_trans(r, &tile[31 - lane][((lane >> 1) & 1) * 8]);
    for (int q = 0; q < 4; ++q) out[128 + q * 32 + lane] = r[q];
}
""", (Param("out", "unsigned*"), Param("src", "const unsigned short*")), (SMEM_ADDR_HELPER, LDSM_HELPER), True)

CP_TEST = Kernel("go_test_cp_async", """\
extern "C" __global__ void go_test_cp_async(float* __restrict__ out, const float* __restrict__ src) {
    __shared__ __align__(16) float buf[3][128];
    const int t = threadIdx.x;
    for (int g = 0; g < 3; ++g) for (int i = 0; i < 4; ++i) buf[g][t * 4 + i] = -1.0f;
    go_cp_async_begin();
    for (int g = 0; g < 3; ++g) {  // three groups of one 16-byte copy per thread; the last reads 8 bytes
        go_cp_async<16>(&buf[g][t * 4], src + g * 128 + t * 4, g == 2 ? 8 : 16);
        go_cp_async_commit();
    }
    go_cp_async_wait<2>();
    for (int g = 0; g < 3; ++g) for (int i = 0; i < 4; ++i) out[g * 128 + t * 4 + i] = buf[g][t * 4 + i];
    go_cp_async_wait<1>();
    for (int g = 0; g < 3; ++g) for (int i = 0; i < 4; ++i) out[384 + g * 128 + t * 4 + i] = buf[g][t * 4 + i];
    go_cp_async_wait<0>();
    for (int g = 0; g < 3; ++g) for (int i = 0; i < 4; ++i) out[768 + g * 128 + t * 4 + i] = buf[g][t * 4 + i];
}
""", (Param("out", "float*"), Param("src", "const float*")), (SMEM_ADDR_HELPER, CP_ASYNC_HELPER), True)


@pytest.fixture(scope="module")
def twin_lib():
    return module_library([Case("ldsm", LDSM_TEST, None, None), Case("cp", CP_TEST, None, None)])


def _ldsm_expected(tile: np.ndarray, rows: list, trans: bool) -> np.ndarray:
    """What ``ldmatrix.x4`` gives each lane (PTX ISA, "Warp-level matrix load instruction:
    ldmatrix"): lanes 8q..8q+7 address the rows of matrix q; lane l = 4g + t receives row g,
    elements 2t and 2t+1, or with .trans elements g of rows 2t and 2t+1."""
    out = np.zeros((4, 32), np.uint32)
    for q in range(4):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            if trans:
                lo = rows[q * 8 + 2 * t][g]
                hi = rows[q * 8 + 2 * t + 1][g]
            else:
                lo, hi = rows[q * 8 + g][2 * t], rows[q * 8 + g][2 * t + 1]
            out[q, lane] = int(lo) | (int(hi) << 16)
    return out


@needs_emu
def test_ldmatrix_twin_follows_the_ptx_layout(twin_lib):
    src = np.random.default_rng(0).integers(0, 65536, 32 * 16).astype(np.uint16)
    tile = src.reshape(32, 16)
    out, src_dev = aligned(np.zeros(256, np.uint32)), aligned(src)
    twin_lib.launch("go_test_ldsm", (1, 1, 1), (32, 1, 1), [out.ctypes.data, src_dev.ctypes.data])
    plain = [tile[lane, (lane & 1) * 8:] for lane in range(32)]
    trans = [tile[31 - lane, ((lane >> 1) & 1) * 8:] for lane in range(32)]
    np.testing.assert_array_equal(out[:128].reshape(4, 32), _ldsm_expected(tile, plain, False))
    np.testing.assert_array_equal(out[128:].reshape(4, 32), _ldsm_expected(tile, trans, True))


@needs_emu
def test_cp_async_twin_lands_a_group_only_at_its_wait(twin_lib):
    src = aligned(np.arange(1, 385, dtype=np.float32))
    out = aligned(np.zeros(3 * 384, np.float32))
    twin_lib.launch("go_test_cp_async", (1, 1, 1), (32, 1, 1), [out.ctypes.data, src.ctypes.data])
    snaps = out.reshape(3, 3, 32, 4)  # (after wait<2>, <1>, <0>) x group x thread x float
    data = src.reshape(3, 32, 4).copy()
    data[2, :, 2:] = 0  # the last group's copies read 8 of 16 bytes: the rest is zero-filled
    for after, landed in enumerate((1, 2, 3)):
        for g in range(3):
            np.testing.assert_array_equal(snaps[after, g], data[g] if g < landed else -1.0, err_msg=f"{after} {g}")


@needs_emu
def test_planted_pipeline_bugs_give_wrong_numbers_under_emulation():
    good = _CASE["split4"]
    stages = good.spec.tile.stages
    bugs = [planted(good, "wait_one_group_short", f"go_cp_async_wait<{stages - 2}>();",
                     f"go_cp_async_wait<{stages - 1}>();"),
            planted(good, "no_barrier_after_the_wait",
                     "__syncthreads();  // everyone's have; and the stage loaded next is no longer read", ";")]
    bad_lib = module_library(bugs)
    for case in bugs:
        got, want, _ = run_case(bad_lib, case)
        assert not np.array_equal(got, want), case.id


@needs_emu
def test_split_k_leaves_its_counters_at_zero_for_the_next_launch(lib):
    case = _CASE["split3-uneven-batched-bias"]
    shape, dtype, ins, want = case.make(np.random.default_rng(1))[:4]
    ins = [aligned(np.ascontiguousarray(a)) for a in ins]
    assert ins[-1].size == 3 * 1 and ins[-2].size > 0  # 3 batches x 1 tile; the workspace
    for _ in range(2):  # the second launch sees the counters the first left behind
        y = aligned(np.zeros(shape, dtype))
        lib.launch(case.kernel.name, case.spec.grid(), case.spec.block(), [y.ctypes.data, *(a.ctypes.data for a in ins)])
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ins[-1], 0)


# -- the schedule table ------------------------------------------------------------------------------


@pytest.mark.parametrize("M, N, K, nz, gpu, tile, split", [
    (4096, 4096, 4096, 1, "H100", "128x128", 1),
    (128, 768, 768, 1, "H100", "64x64", 5),      # BERT-base b1, seq 128: 24 tiles -> 120 blocks
    (128, 768, 3072, 1, "H100", "64x64", 5),     # its second FFN GEMM
    (128, 3072, 768, 1, "H100", "64x64", 1),     # 96 tiles: no split
    (49, 512, 4608, 1, "H100", "64x64", 16),     # ResNet-50 b1, last 3x3 stage
    (3136, 64, 576, 1, "H100", "64x64", 2),      # ResNet-50 b1, first 3x3 stage
    (12544, 64, 147, 1, "H100", "64x64", 1),     # the stem: 196 tiles
    (1, 1000, 2048, 1, "H100", "16x64", 8),      # a batch-1 classifier: 16 tiles -> 128 blocks
    (2048, 2048, 64, 1, "H100", "128x128", 1),
    (1024, 1024, 4096, 1, "A100", "128x64", 1),  # 128 blocks fill 108 SMs, not 132
])
def test_schedule_table(monkeypatch, M, N, K, nz, gpu, tile, split):
    monkeypatch.setenv("GRAPHOPT_CUDA_GPU", gpu)
    t, s = choose_schedule(M, N, K, nz)
    assert (t.bm, t.bn, s) == (TILES[tile].bm, TILES[tile].bn, split)
    assert mainloop.smem_bytes(t) <= mainloop.target_gpu().smem_per_block


def test_stages_shrink_to_fit_a_small_shared_memory():
    small = mainloop.Gpu("small", 8, 64 * 1024)  # 128x128: 16 KB a stage, unpadded
    t = mainloop.fit_stages(TILES["128x128"], small)
    assert t.stages == 4 and mainloop.smem_bytes(t) == 64 * 1024  # padded rows needed 80 KB: 3 stages
    t = mainloop.fit_stages(TILES["128x128"], mainloop.Gpu("smaller", 8, 40 * 1024))
    assert t.stages == 2 and mainloop.smem_bytes(t) == 32 * 1024


def test_an_unknown_target_gpu_is_one_line(monkeypatch):
    from graphopt.errors import GraphoptError

    monkeypatch.setenv("GRAPHOPT_CUDA_GPU", "Z80")
    with pytest.raises(GraphoptError, match="GRAPHOPT_CUDA_GPU='Z80' is not a known GPU"):
        choose_schedule(64, 64, 64, 1)


# -- machine code from the real NVRTC ----------------------------------------------------------------


def sass_counts(kernel: Kernel, arch: str) -> tuple[dict, object]:
    """Instruction counts of the kernel's SASS (HMMA, LDGSTS, LDSM, LDG/STG, local memory) and its
    resources, compiled by production's NVRTC function and options."""
    from graphopt.plugins.cuda.sass import resource_usage, sass

    path = compile_nvrtc.compile_kernels([kernel], arch)[kernel.name]
    text = sass(path)
    ops = re.findall(r"\b((?:HMMA|LDGSTS|LDSM|LDG|STG|LDL|STL|LDS|STS|HGMMA|UTMALDG)(?:\.[\w]+)*)", text)
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return counts, resource_usage(path)[kernel.name]


def _has(counts: dict, prefix: str) -> int:
    return sum(n for op, n in counts.items() if op.startswith(prefix))


@pytest.mark.parametrize("arch", compile_nvrtc.CI_ARCHS)
@pytest.mark.parametrize("cid", ["tile128x128-dynamic-smem", "transA-ldmatrix-trans", "split16-bias",
                                 "transB-8-byte-copies", "tile128x64-transA-transB-16-chunk-rows-split2"])
def test_sass_has_tensor_cores_async_16_byte_copies_ldmatrix_and_no_local_memory(cid, arch):
    ok, why = compile_nvrtc.nvrtc_available()
    if not ok:
        pytest.skip(why)
    pytest.importorskip("graphopt.plugins.cuda.sass").tool("cuobjdump") or pytest.skip("no cuobjdump")
    case = _CASE[cid]
    counts, res = sass_counts(case.kernel, arch)
    t = case.spec.tile
    assert _has(counts, "HMMA.16816.F32") >= (t.wm // 16) * (t.wn // 8) * (t.bk // 16), counts
    assert _has(counts, "LDSM.16.M") > 0, counts
    if cid == "transA-ldmatrix-trans":
        assert _has(counts, "LDSM.16.MT88") > 0, counts  # A read through ldmatrix.trans
    width = "LDGSTS.E.BYPASS.128" if cid != "transB-8-byte-copies" else "LDGSTS.E.64"
    assert _has(counts, width) > 0, counts
    assert not _has(counts, "LDL") and not _has(counts, "STL") and res.local == 0 and res.stack == 0, (counts, res)
    assert res.registers <= 255


# -- the cuda backend's own path on the CuPy stand-in ------------------------------------------------

from fake_cupy import fake_gpu  # noqa: E402,F401  (the fixture)


def _two_gemms():
    """A 256x256x64 GEMM (on a 4-SM GPU: 128x128 tiles, 75 KB of dynamic shared memory) and a
    16x64x512 one (one 16x64 tile: split-K over 4 blocks), float16."""
    from graphopt.builder import GraphBuilder

    rng = np.random.default_rng(0)
    b = GraphBuilder("two_gemms")
    x, z = b.input("x", (256, 64), H), b.input("z", (16, 512), H)
    b.output(b.op("Relu", b.op("MatMul", x, (rng.standard_normal((64, 256)) * 0.2).astype(np.float16))), "h")
    b.output(b.op("MatMul", z, (rng.standard_normal((512, 64)) * 0.1).astype(np.float16)), "y")
    return b.graph, {"x": rng.standard_normal((256, 64)).astype(np.float16),
                     "z": rng.standard_normal((16, 512)).astype(np.float16)}


@pytest.fixture
def tiny_gpu(monkeypatch):
    monkeypatch.setitem(mainloop.GPUS, "tiny", mainloop.Gpu("tiny", 4, 227 * 1024))
    monkeypatch.setenv("GRAPHOPT_CUDA_GPU", "tiny")


@needs_emu
def test_cuda_backend_launches_dynamic_smem_and_split_k_kernels_and_replays_them(fake_gpu, tiny_gpu):
    import graphopt
    from graphopt.plugins.cpu import run_reference

    cp, _ = fake_gpu
    g, feeds = _two_gemms()
    model = graphopt.compile(g, backend="cuda", gemm="generated")
    specs = [l.kernel.spec for l in model.executable.lowered.launches if l.kernel.name.startswith("go_tcgemm")]
    assert sorted((s.tile.bm, s.split) for s in specs) == [(16, 4), (128, 1)]
    assert [l.kernel.dyn_smem > 48 * 1024 for l in model.executable.lowered.launches
            if l.kernel.name.startswith("go_tcgemm")].count(True) == 1
    want = run_reference(g, feeds)
    first = None
    for _ in range(3):  # direct, captured, replayed: the split-K counters are back at 0 every time
        got = model.run(feeds)
        for a, r in zip(got, want):
            np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=2e-3, atol=2e-2)
        first = first or got
        for a, f in zip(got, first):
            np.testing.assert_array_equal(a, f)


@needs_emu
def test_without_the_attribute_the_stand_in_refuses_the_big_launch(fake_gpu, tiny_gpu, monkeypatch):
    import graphopt
    from graphopt.plugins.cuda import device

    monkeypatch.setattr(device, "with_dynamic_smem", device.DynamicSmemFunction)  # forgets cuFuncSetAttribute
    g, feeds = _two_gemms()
    model = graphopt.compile(g, backend="cuda", gemm="generated")
    with pytest.raises(Exception, match="CUDA_ERROR_INVALID_VALUE"):
        model.run(feeds)
