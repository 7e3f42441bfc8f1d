"""The Hopper wgmma mainloop (``wgmma.py``) of the float16/bfloat16 GEMM, under emulation and in SASS.

* GEMMs under emulation against NumPy, *bit for bit*: integer-valued inputs make every product
  and partial sum exact in float32, so any misplaced element shows. The twin of
  ``wgmma.mma_async`` (``emu/cuda_emu.h``) decodes each descriptor as the PTX ISA says the
  hardware does and reads A and B through the 128-byte swizzle, so the shared layout the copies
  write, the descriptors' offsets and the accumulator fragment map are all checked: both
  operand majors (K-major; M/N-major for transA and row-major weights), odd shapes, one and two
  warpgroups, bf16, batches, epilogue (bias + ReLU), split-K, narrow copies.
* Planted layout bugs (no swizzle on the copies, a wrong stride byte offset, a wrong leading
  byte offset, a refill before the wgmma wait) make those tests fail.
* NVRTC compiles the kernels for sm_90a (the cubin reads sm_90a): HGMMA and LDGSTS in the SASS,
  no local memory; a wgmma kernel refuses sm_90 and sm_80 with one line.
* First contact: ``engage`` picks wgmma only on a device of compute capability 9.0 whose
  self-check agrees; a mismatch or a failed launch keeps mma.sync with one warning.
"""
import re
import warnings

import numpy as np
import pytest

from cuda_harness import Case, kernel_module_tests, module_library, needs_emu, planted, run_case
from graphopt.errors import GraphoptError
from graphopt.plugins.cuda import wgmma
from graphopt.plugins.cuda.scalar import ScalarFn, contiguous_strides
from graphopt.plugins.cuda.specs import Epilogue, View
from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul
from graphopt.plugins.cuda.wgmma import WG_TILES

H, B16 = "float16", "bfloat16"
CASES: list[Case] = []


def _as(dtype, a):
    if dtype == B16:
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16)
    return a.astype({H: np.float16, "float32": np.float32}[dtype])


def _view(dtype, outer, rows, cols, row_major, pad=0):
    """A (rows x cols) operand over ``outer`` batch dims, stored row-major or transposed, its
    stored rows ``pad`` elements longer: (storage shape, View)."""
    store = (*outer, rows, cols + pad) if row_major else (*outer, cols, rows + pad)
    st = contiguous_strides(store)
    return store, View(dtype, st[:-2] + (st[-2:] if row_major else st[-2:][::-1]))


def _strided(buf, view, shape):
    """The matrix ``view`` reads from ``buf`` (its storage), by the view's own strides and offset."""
    flat = buf.reshape(-1)[view.offset:]
    return np.lib.stride_tricks.as_strided(flat, shape, [s * flat.itemsize for s in view.strides])


def wg_case(cid, M, N, K, batch=(), *, a_layout="mk", b_layout="kn", dtype=H, out=None, tile="64x64", split=None,
            bias=False, exact=True, a_pad=0):
    """A GEMM on the wgmma mainloop: ``a_layout`` "mk" (K-major) or "km" (M-major: transA);
    ``b_layout`` "kn" (N-major: row-major weights) or "nk" (K-major); ``a_pad`` widens A's rows.
    The reference multiplies what each view reads from its storage, by the view's strides."""
    out = out or dtype
    a_store, av = _view(dtype, batch, M, K, a_layout == "mk", a_pad)
    b_store, bv = _view(dtype, batch, K, N, b_layout == "kn")
    ops = (View(dtype, (0,) * len(batch) + (0, 1)),) if bias else ()
    ep = Epilogue(ScalarFn.from_template("bias_relu", 2, "float32", "fmaxf({0} + {1}, 0.0f)"), ops) if bias else \
        Epilogue()
    spec = make_tc_matmul(M, N, K, batch, a=av, b=bv, c=View.contiguous(out, (*batch, M, N)), epilogue=ep,
                          tile=WG_TILES[tile], split=split, engine="wgmma")
    out_np = _as(out, np.zeros(1)).dtype

    def make(rng):
        def values(shape):
            x = rng.integers(-3, 4, shape) if exact else rng.standard_normal(shape)
            return _as(dtype, x.astype(np.float32))

        ins = [values(a_store), values(b_store)] + ([values((N,))] if bias else [])
        ref = np.matmul(_strided(ins[0], av, (*batch, M, K)).astype(np.float64),
                        _strided(ins[1], bv, (*batch, K, N)).astype(np.float64))
        if bias:
            ref = np.maximum(ref + ins[2].astype(np.float64), 0)
        ws, ctr = spec.workspace
        extra = [np.zeros(ws, np.float32), np.zeros(ctr, np.int32)] if ws else []
        return (*batch, M, N), out_np, ins + extra, _as(out, ref)

    tol = (0, 0) if exact else ((1e-4, 1e-4) if out == "float32" else (2e-3, 2e-2))
    CASES.append(Case(cid, render_tc_matmul(spec), spec, make, *tol))
    return spec


wg_case("kmajor-A-nmajor-B", 64, 64, 64)
wg_case("odd-sizes-4-byte-copies", 37, 50, 72)  # N = 50: copies of 2 elements along n
wg_case("transA-transB", 72, 40, 136, a_layout="km", b_layout="nk", out="float32")
wg_case("transA-2-element-copies", 70, 40, 130, a_layout="km", b_layout="nk")
wg_case("two-warpgroups-128x128", 130, 136, 96, tile="128x128")
wg_case("64x128-nmajor-two-blocks", 50, 128, 64, tile="64x128")  # B's 128 of n: two 64-wide blocks (LBO)
wg_case("bf16-batched-bias-relu", 20, 48, 80, batch=(2,), dtype=B16, bias=True)
wg_case("split3-bias", 40, 64, 640, split=3, bias=True)
wg_case("element-loads-odd-stride", 33, 24, 40, a_pad=1, b_layout="nk")
wg_case("long-k", 64, 64, 512)  # eight k-tiles through four stages
wg_case("random-normal-f32-out", 70, 90, 200, exact=False, out="float32")

_CASE = {c.id: c for c in CASES}
lib, test_wgmma_gemm_matches_numpy, _ = kernel_module_tests(CASES, max_registers=255)


@needs_emu
def test_planted_layout_and_pipeline_bugs_give_wrong_numbers_under_emulation():
    good = _CASE["64x128-nmajor-two-blocks"]
    src = good.kernel.source
    swz = re.search(r"\^ \(\(\(?\w+\)? & 7\)\)", src)
    assert swz, "the copies' swizzle"
    bugs = [planted(good, "copies_not_swizzled", swz.group(0), "^ 0)"),
            planted(good, "stride_byte_offset_512", ", 1024u)", ", 512u)"),
            planted(good, "leading_byte_offset_4096", ", 8192u, 1024u)", ", 4096u, 1024u)")]
    # the wgmma of a k-tile waited for only after the loop: its stage is refilled before it reads it
    late = planted(_CASE["long-k"], "wgmma_waited_after_the_loop", "    go_wg_wait<0>();\n", "\n")
    bugs.append(planted(late, "wgmma_waited_after_the_loop", "go_cp_async_wait<0>();  // nothing",
                         "go_wg_wait<0>(); go_cp_async_wait<0>();  // nothing"))
    bad_lib = module_library(bugs)
    for case in bugs:
        got, want, _ = run_case(bad_lib, case)
        assert not np.array_equal(got, want), case.id


needs_nvrtc = pytest.mark.skipif(not __import__("graphopt.plugins.cuda.compile_nvrtc", fromlist=["x"])
                                 .nvrtc_available()[0], reason="no NVRTC")


@needs_nvrtc
@pytest.mark.parametrize("cid", ["two-warpgroups-128x128", "transA-transB", "split3-bias"])
def test_nvrtc_builds_wgmma_kernels_for_sm90a_with_hgmma_and_no_local_memory(cid):
    from graphopt.plugins.cuda import compile_nvrtc, sass
    from graphopt.plugins.cuda.cubin import read_cubin

    k = _CASE[cid].kernel
    for asked in ("sm_80", "sm_90"):  # whatever is asked for, a wgmma kernel's target is sm_90a
        path = compile_nvrtc.compile_kernels([k], asked)[k.name]
        assert read_cubin(path.read_bytes()).arch == "sm_90a"
    text = sass.sass(path)
    n = k.spec.tile.bn
    assert re.search(rf"\bHGMMA\.64x{n}x16\.F32(\.BF16)?\b", text), f"no HGMMA.64x{n}x16 in the SASS"
    assert "LDGSTS" in text and "HMMA" not in text
    assert not re.search(r"\b(LDL|STL)\b", text)
    res = sass.resource_usage(path)[k.name]
    assert res.local == 0 and res.stack == 0 and res.registers <= 168, res


@needs_nvrtc
def test_a_wgmma_source_refuses_every_target_but_sm90a():
    from graphopt.plugins.cuda import compile_nvrtc
    from graphopt.plugins.cuda.kernel import translation_unit

    src = translation_unit([_CASE["kmajor-A-nmajor-B"].kernel])
    for arch in ("sm_80", "sm_90"):
        with pytest.raises(GraphoptError, match="compiles for sm_90a only"):
            compile_nvrtc.nvrtc_cubin_bytes(src, arch)


def test_cubin_reader_tells_sm90a_from_sm90(tmp_path):
    from graphopt.plugins.cuda.cubin import _arch_specific

    # .nv.compat as NVRTC 13.5 writes it for sm_90 and sm_90a (attribute 9: arch-specific)
    plain = bytes.fromhex("02090000020c000002020100030d010102030000040b08000000000000000000030e4004")
    arch_a = bytes.fromhex("02090100020c000002020100030d010102030000040b08000000000000000000030e4004")
    assert not _arch_specific(plain, 0, len(plain))
    assert _arch_specific(arch_a, 0, len(arch_a))


# -- first contact ---------------------------------------------------------------------------------


@pytest.fixture
def engine_state(monkeypatch):
    monkeypatch.delenv(wgmma.ENGINE_ENV, raising=False)
    wgmma.reset_engine()
    yield monkeypatch
    wgmma.reset_engine()


def _on_device(monkeypatch, cc):
    from graphopt.plugins.cuda import device

    monkeypatch.setattr(device, "compute_capability", lambda: cc)


def _reference(spec, a, b):
    am = a.T if spec.a.strides[-1] != 1 else a
    bm = b.T if spec.b.strides[-1] != 1 else b
    return (am.astype(np.float32) @ bm.astype(np.float32)).astype(np.float16)


def test_engage_picks_wgmma_on_compute_capability_9_when_the_self_check_agrees(engine_state):
    _on_device(engine_state, "90")
    seen = []

    def run(spec, a, b):
        seen.append(spec.engine)
        return _reference(spec, a, b)

    assert wgmma.engine() == "mma"  # nothing decided yet: new specs stay on mma.sync
    assert wgmma.engage(run) == "wgmma"
    assert sorted(seen) == ["mma", "mma", "wgmma", "wgmma"]
    assert wgmma.engine() == "wgmma" and make_tc_matmul(256, 256, 256).engine == "wgmma"
    assert wgmma.engage(lambda *a: pytest.fail("the self-check runs once per process")) == "wgmma"
    # operands that cannot be copied 16 bytes at a time keep mma.sync unless wgmma is asked for by name
    assert make_tc_matmul(37, 50, 72).engine == "mma" and make_tc_matmul(37, 50, 72, engine="wgmma").engine == "wgmma"
    assert make_tc_matmul(64, 64, 64, a=View(H, (1, 64))).engine == "wgmma"  # transA with 16-byte copies


def test_engage_keeps_mma_sync_with_one_warning_when_the_self_check_differs_or_fails(engine_state):
    _on_device(engine_state, "90")

    def wrong(spec, a, b):
        y = _reference(spec, a, b)
        if spec.engine == "wgmma":
            y[3, 5] += 1
        return y

    with pytest.warns(RuntimeWarning, match=r"self-check 1 \(100x72x200\) differs from mma.sync in 1 of 7200 elements") as rec:
        assert wgmma.engage(wrong) == "mma"
    assert len(rec) == 1 and wgmma.engine() == "mma"

    wgmma.reset_engine()

    def fails(spec, a, b):
        if spec.engine == "wgmma":
            raise RuntimeError("CUDA_ERROR_ILLEGAL_INSTRUCTION: an illegal instruction was encountered")
        return _reference(spec, a, b)

    with pytest.warns(RuntimeWarning, match="self-check failed on this GPU .*ILLEGAL_INSTRUCTION"):
        assert wgmma.engage(fails) == "mma"
    assert make_tc_matmul(256, 256, 256).engine == "mma"


def test_engage_runs_nothing_off_hopper_and_the_env_var_forces_either_path(engine_state):
    _on_device(engine_state, "80")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wgmma.engage(lambda *a: pytest.fail("no self-check off compute capability 9.0")) == "mma"
    engine_state.setenv(wgmma.ENGINE_ENV, "wgmma")
    assert make_tc_matmul(64, 64, 64).engine == "wgmma"
    engine_state.setenv(wgmma.ENGINE_ENV, "mma")
    wgmma.reset_engine()
    _on_device(engine_state, "90")
    wgmma.engage(_reference)
    assert make_tc_matmul(64, 64, 64).engine == "mma"  # forced, whatever the device decided
    engine_state.setenv(wgmma.ENGINE_ENV, "tcgen05")
    with pytest.raises(GraphoptError, match="expected 'wgmma', 'mma' or 'auto'"):
        make_tc_matmul(64, 64, 64)


@needs_emu
def test_the_self_check_gemms_agree_under_emulation():
    """The first-contact GEMMs themselves, both mainloops under emulation: what a GPU must reproduce."""
    from graphopt.plugins.cuda.compile_emu import build_library

    gemms = wgmma.selfcheck_gemms()
    assert {(wg.a.strides[-1] == 1, wg.b.strides[-1] == 1, wg.tile.threads) for wg, _, _, _ in gemms} == \
        {(True, True, 128), (False, False, 256)}  # both majors of both operands, one and two warpgroups
    emu = build_library([render_tc_matmul(s) for g in gemms for s in g[:2]])
    for wg, ref, a, b in gemms:
        am = a.T if wg.a.strides[-1] != 1 else a
        bm = b.T if wg.b.strides[-1] != 1 else b
        want = (am.astype(np.float32) @ bm.astype(np.float32)).astype(np.float16)
        for spec in (wg, ref):
            y = np.zeros((spec.M, spec.N), np.float16)
            emu.launch(render_tc_matmul(spec).name, spec.grid(), spec.block(),
                       [y.ctypes.data, a.ctypes.data, b.ctypes.data])
            np.testing.assert_array_equal(y, want, err_msg=spec.engine)


# -- through the device seam, on the CuPy stand-in ----------------------------------------------

from fake_cupy import fake_gpu  # noqa: E402,F401  (the fixture)


@needs_emu
def test_engage_on_the_stand_in_runs_both_kernels_through_the_seam(fake_gpu, engine_state):
    cp, compiles = fake_gpu
    assert wgmma.engage() == "wgmma"  # compiled, loaded, launched and compared through device.py
    names = [name for name, _, _ in cp.launches]
    assert len(names) == 4 and {a for a, _ in compiles} >= {"sm_90", "sm_90a"}
    wgmma.reset_engine()
    engine_state.setattr(type(cp), "COMPUTE_CAPABILITY", "80")
    assert wgmma.engage() == "mma" and len(cp.launches) == 4  # nothing runs off compute capability 9.0


@needs_emu
def test_cuda_backend_runs_wgmma_gemms_on_the_stand_in(fake_gpu, engine_state):
    """The whole device path with wgmma kernels: sm_90a cubins loaded on compute capability 9.0,
    dynamic shared memory past 48 KB, a split-K launch, captured and replayed."""
    import graphopt
    from graphopt.builder import GraphBuilder
    from graphopt.plugins.cpu import run_reference

    engine_state.setenv(wgmma.ENGINE_ENV, "wgmma")
    cp, compiles = fake_gpu
    rng = np.random.default_rng(0)
    b = GraphBuilder("two_gemms")
    x, z = b.input("x", (256, 64), H), b.input("z", (64, 1024), H)
    b.output(b.op("Relu", b.op("MatMul", x, (rng.standard_normal((64, 256)) * 0.2).astype(np.float16))), "h")
    b.output(b.op("MatMul", z, (rng.standard_normal((1024, 64)) * 0.1).astype(np.float16)), "y")
    feeds = {"x": rng.standard_normal((256, 64)).astype(np.float16),
             "z": rng.standard_normal((64, 1024)).astype(np.float16)}
    model = graphopt.compile(b.graph, backend="cuda", gemm="generated")
    specs = [l.kernel.spec for l in model.executable.lowered.launches if l.kernel.name.startswith("go_tcgemm")]
    assert {s.engine for s in specs} == {"wgmma"} and any(s.split > 1 for s in specs)
    want = run_reference(b.graph, feeds)
    for _ in range(3):  # direct, captured, replayed
        for got, ref in zip(model.run(feeds), want):
            np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=2e-3, atol=2e-2)
    assert "sm_90a" in {a for a, _ in compiles}


@needs_nvrtc
def test_the_sm90a_audit_requires_hgmma_of_wgmma_kernels():
    from types import SimpleNamespace

    from graphopt.plugins.cuda.audit import audit_kernels, audit_one
    from graphopt.plugins.cuda.sass import Resources

    case = _CASE["two-warpgroups-128x128"]
    (a,) = audit_kernels([SimpleNamespace(kernel=case.kernel, block=case.spec.block())], ("sm_90",))
    assert a.arch == "sm_90a" and a.failures() == [] and a.results["tensor_cores"] == "pass"
    # an HMMA where a wgmma kernel must show HGMMA fails the check
    hmma = "HMMA.16816.F32 R4, R8, R12, R4 ;\nLDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64] ;"
    res = Resources(registers=90, stack=0, shared=1024, local=0)
    assert audit_one(case.kernel, 256, "sm_90a", hmma, res).results["tensor_cores"] == "FAIL"


def test_the_stand_in_loads_an_sm90a_cubin_on_compute_capability_9_0_only():
    from fake_cupy import _loads_on

    assert _loads_on("sm_90a", "90") and _loads_on("sm_90", "90") and _loads_on("sm_80", "86")
    assert not _loads_on("sm_90a", "100") and not _loads_on("sm_90a", "80") and not _loads_on("sm_90a", "91")


def test_on_a_real_hopper_the_self_check_keeps_wgmma(engine_state):
    """First contact, on a GPU of compute capability 9.0 only: both self-check GEMMs agree with
    mma.sync, with no warning. (Everywhere else: skipped; the stand-in test above runs the same path.)"""
    from graphopt.plugins.cuda import device

    ok, why = device.available()
    if not ok:
        pytest.skip(why)
    if device.compute_capability() != "90":
        pytest.skip("not compute capability 9.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wgmma.engage() == "wgmma"


@needs_emu
def test_the_cuda_backend_engages_wgmma_itself_on_compute_capability_9(fake_gpu, engine_state):
    """No variable set: the backend's first compile runs the self-check (4 launches through the
    seam) and the model's GEMMs then take the wgmma mainloop; off 9.0 nothing runs and mma.sync stays."""
    import graphopt
    from graphopt.builder import GraphBuilder

    cp, _ = fake_gpu
    b = GraphBuilder("one_gemm")
    x = b.input("x", (128, 64), H)
    b.output(b.op("MatMul", x, np.ones((64, 128), np.float16)), "y")
    model = graphopt.compile(b.graph, backend="cuda", gemm="generated")
    assert wgmma.engine() == "wgmma" and len(cp.launches) == 4
    specs = [l.kernel.spec for l in model.executable.lowered.launches if l.kernel.name.startswith("go_tcgemm")]
    assert specs and {s.engine for s in specs} == {"wgmma"}
    got = model.run({"x": np.ones((128, 64), np.float16)})[0]
    np.testing.assert_array_equal(got.astype(np.float32), np.full((128, 128), 64.0, np.float32))
    wgmma.reset_engine()
    engine_state.setattr(type(cp), "COMPUTE_CAPABILITY", "80")
    model = graphopt.compile(b.graph, backend="cuda", gemm="generated")
    specs = [l.kernel.spec for l in model.executable.lowered.launches if l.kernel.name.startswith("go_tcgemm")]
    assert wgmma.engine() == "mma" and {s.engine for s in specs} == {"mma"}
