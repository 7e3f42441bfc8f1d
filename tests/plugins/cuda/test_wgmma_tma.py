"""TMA loads for the wgmma mainloop (``wgmma_tma.py``) under emulation, and in sm_90a SASS.

The twins (``emu/cuda_emu.h``): ``cp.async.bulk.tensor.2d`` copies a tensor map's box with zeros
outside the tensor and the 128-byte swizzle on the shared address, and lands only when a thread
waits on its mbarrier, which then completes its phase (one arrival with ``expect_tx`` plus the
box bytes counted off); ``try_wait.parity`` tells which phase has completed. GEMMs through them
are checked bit for bit against NumPy (integer-valued data): K-major and M/N-major operands,
ragged edges (the out-of-bounds fill), two warpgroups, bf16, a bias epilogue, split-K; planted
bugs (the wrong phase parity, boxes landing unswizzled, a tensor map with a wrong row stride)
fail. Under ``GRAPHOPT_EMU_CHECK=race`` every thread order must give the same bits. NVRTC's sm_90a
SASS shows UTMALDG, HGMMA and the mbarrier's SYNCS instructions.
"""
import re

import numpy as np
import pytest

from cuda_harness import Guarded, aligned, needs_emu
from graphopt.plugins.cuda import emucheck
from graphopt.plugins.cuda.kernel import Kernel
from graphopt.plugins.cuda.scalar import ScalarFn, contiguous_strides
from graphopt.plugins.cuda.specs import Epilogue, View
from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul
from graphopt.plugins.cuda.wgmma import WG_TILES
from graphopt.plugins.cuda.wgmma_tma import emu_tensor_map, operand_maps

H, B16 = "float16", "bfloat16"


def _as(dtype, a):
    if dtype == B16:
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16)
    return a.astype(np.float16)


def tma_spec(M, N, K, *, trans_a=False, b_nmajor=True, dtype=H, tile="64x64", split=None, bias=False):
    a = View(dtype, (1, M) if trans_a else (K, 1))
    b = View(dtype, (N, 1) if b_nmajor else (1, K))
    ep = Epilogue()
    if bias:
        ep = Epilogue(ScalarFn.from_template("bias_relu", 2, "float32", "fmaxf({0} + {1}, 0.0f)"), (View(dtype, (0, 1)),))
    return make_tc_matmul(M, N, K, a=a, b=b, c=View.contiguous("float32", (M, N)), epilogue=ep, tile=WG_TILES[tile],
                          split=split, engine="wgmma", tma=True)


SPECS = {
    "kmajor-A-nmajor-B": tma_spec(64, 64, 128),
    "ragged-edges-oob-zero-fill": tma_spec(37, 56, 200),
    "transA-kmajor-B": tma_spec(72, 40, 136, trans_a=True, b_nmajor=False),
    "two-warpgroups-nmajor-two-boxes": tma_spec(130, 136, 192, tile="128x128"),
    "bf16-bias-relu": tma_spec(48, 64, 64, dtype=B16, bias=True),
    "split3-long-k": tma_spec(64, 64, 768, split=3),
}


def run(spec, kernel, lib, seed=0, tensor_map=emu_tensor_map):
    """Launch ``kernel`` (``spec``'s, maybe planted) under emulation with tensor maps over the real
    operands; (result, NumPy reference)."""
    rng = np.random.default_rng(seed)
    M, N, K = spec.M, spec.N, spec.K
    a_store = (K, M) if spec.a.strides == (1, M) else (M, K)
    b_store = (K, N) if spec.b.strides == (N, 1) else (N, K)
    a = aligned(_as(spec.a.dtype, rng.integers(-3, 4, a_store).astype(np.float32)))
    b = aligned(_as(spec.a.dtype, rng.integers(-3, 4, b_store).astype(np.float32)))
    am = a.T if a_store == (K, M) else a
    bm = b if b_store == (K, N) else b.T
    ref = am.astype(np.float64) @ bm.astype(np.float64)
    ins = [a, b]
    if spec.epilogue.operands:
        bias = aligned(_as(spec.a.dtype, rng.integers(-3, 4, (N,)).astype(np.float32)))
        ref = np.maximum(ref + bias.astype(np.float64), 0)
        ins.append(bias)
    ws, ctr = spec.workspace
    if ws:
        ins += [aligned(np.zeros(ws, np.float32)), aligned(np.zeros(ctr, np.int32))]
    maps = [aligned(tensor_map(x.ctypes.data, m)) for x, m in zip((a, b), operand_maps(spec))]
    first = None
    for order in emucheck.race_seeds():  # under GRAPHOPT_EMU_CHECK=race: every thread order, the same bits
        y = Guarded((M, N), "float32")
        lib.set_seed(order)
        lib.launch(kernel.name, spec.grid(), spec.block(), [y.ptr, *(x.ctypes.data for x in ins),
                                                            *(m.ctypes.data for m in maps)])
        y.check_guards()
        assert first is None or np.array_equal(y.array, first), f"thread order {order} changes the result"
        first = y.array if first is None else first
    return first, ref.astype(np.float32)


@pytest.fixture(scope="module")
def lib():
    from graphopt.plugins.cuda.compile_emu import build_library

    return build_library([render_tc_matmul(s) for s in SPECS.values()])


@needs_emu
@pytest.mark.parametrize("cid", list(SPECS))
def test_tma_wgmma_gemm_matches_numpy(lib, cid):
    spec = SPECS[cid]
    got, want = run(spec, render_tc_matmul(spec), lib)
    np.testing.assert_array_equal(got, want, err_msg=cid)


def test_tensor_maps_describe_the_wgmma_layout():
    a, b = operand_maps(SPECS["two-warpgroups-nmajor-two-boxes"])
    assert (a.kmajor, a.dims, a.stride, a.box) == (True, (192, 130), 192 * 2, (64, 128))
    assert (b.kmajor, b.dims, b.stride, b.box) == (False, (136, 192), 136 * 2, (64, 64))
    with pytest.raises(ValueError, match="TMA loads for a batched GEMM"):
        make_tc_matmul(64, 64, 64, (2,), engine="wgmma", tma=True)
    with pytest.raises(ValueError, match="not 16-byte aligned"):
        make_tc_matmul(64, 60, 64, engine="wgmma", tma=True)
    with pytest.raises(ValueError, match="TMA loads for a mma.sync GEMM"):
        make_tc_matmul(64, 64, 64, engine="mma", tma=True)


def _planted(spec, cid, old, new):
    k = render_tc_matmul(spec)
    assert old in k.source, old
    name = k.name + "_" + cid
    return Kernel(name, k.source.replace(old, new).replace(k.name, name), k.params, k.helpers, True, k.spec)


@needs_emu
def test_planted_tma_bugs_fail_under_emulation():
    from graphopt.errors import GraphoptError
    from graphopt.plugins.cuda.compile_emu import build_library

    spec = SPECS["split3-long-k"]
    # waiting on the other phase: on a GPU a hang, under emulation a failed launch
    parity = _planted(spec, "parity_flipped", "/ 4) & 1u)", "/ 4 + 1) & 1u)")
    with pytest.raises(GraphoptError, match="mbarrier wait that cannot complete"):
        run(spec, parity, build_library([parity]))
    # a tensor map off by 16 bytes a row, or one that lands its boxes unswizzled, gives wrong numbers
    good = render_tc_matmul(spec)
    lib = build_library([good])
    for field, tweak in ((slice(32, 40), lambda v: v + 16), (slice(52, 56), lambda v: 0)):
        def planted(ptr, m, field=field, tweak=tweak):
            out = emu_tensor_map(ptr, m)
            word = out[field].view(np.uint64 if field.stop - field.start == 8 else np.uint32)
            word[0] = tweak(int(word[0]))
            return out

        try:
            got, want = run(spec, good, lib, tensor_map=planted)
        except AssertionError:  # under the race check: stale or unwritten shared memory differs by thread order
            continue
        assert not np.array_equal(got, want), field


@pytest.mark.skipif(not __import__("graphopt.plugins.cuda.compile_nvrtc", fromlist=["x"]).nvrtc_available()[0],
                    reason="no NVRTC")
def test_nvrtc_sass_of_the_tma_kernel_has_utmaldg_hgmma_and_mbarrier_waits():
    from graphopt.plugins.cuda import compile_nvrtc, sass
    from graphopt.plugins.cuda.cubin import read_cubin

    k = render_tc_matmul(SPECS["two-warpgroups-nmajor-two-boxes"])
    path = compile_nvrtc.compile_kernels([k], "sm_90")[k.name]
    assert read_cubin(path.read_bytes()).arch == "sm_90a"
    text = sass.sass(path)
    for op in ("UTMALDG.2D", "HGMMA.64x128x16.F32", "SYNCS.ARRIVE.TRANS64", "SYNCS.PHASECHK"):
        assert op in text, op
    assert "LDGSTS" not in text and not re.search(r"\b(LDL|STL)\b", text)
    res = sass.resource_usage(path)[k.name]
    assert res.local == 0 and res.stack == 0 and res.registers <= 168, res


def test_the_driver_encoding_call_is_well_formed():
    """``device.encode_tensor_map``'s arguments pass cuda-bindings' type checks (they are checked
    before the driver library is loaded); the encoding itself needs the driver, so here it either
    returns 128 bytes (a machine with a driver) or stops at the missing driver library."""
    pytest.importorskip("cuda.bindings.driver")
    from graphopt.plugins.cuda import device

    m = operand_maps(SPECS["two-warpgroups-nmajor-two-boxes"])[0]
    try:
        out = device.encode_tensor_map(1 << 40, m.dtype, m.dims, m.stride, m.box)
    except TypeError:
        raise
    except Exception as exc:  # no NVIDIA driver on this machine
        assert "driver" in str(exc).lower() or "cuda" in str(exc).lower(), exc
    else:
        assert out.shape == (128,) and out.dtype == np.uint8


# -- through the device seam: the stand-in here, the real device where there is an H100 ---------------

from fake_cupy import fake_encode_tensor_map, fake_gpu  # noqa: E402,F401  (the fixture)


@pytest.fixture(params=["cuda", "fake"])
def hopper(request):
    """``cuda``: a real device of compute capability 9.0 (else a skip); ``fake``: the stand-in."""
    from graphopt.plugins.cuda import device

    if request.param == "cuda":
        ok, why = device.available()
        if not ok:
            pytest.skip(why)
        if device.compute_capability() != "90":
            pytest.skip("not compute capability 9.0")
        return "cuda"
    if not __import__("graphopt.plugins.cuda.compile_emu", fromlist=["x"]).emu_available()[0]:
        pytest.skip("no CUDA emulation")
    request.getfixturevalue("fake_gpu")
    return "fake"


def test_a_tma_gemm_runs_through_the_device_seam(hopper):
    """Tensor maps encoded at launch time over the uploaded operands (the driver's on a GPU), copied
    to device memory, passed by pointer: the GEMM matches NumPy bit for bit."""
    from graphopt.plugins.cuda import device
    from graphopt.plugins.cuda.backend import CudaExecutable
    from graphopt.plugins.cuda.wgmma_tma import device_tensor_maps

    spec = SPECS["two-warpgroups-nmajor-two-boxes"]
    k = render_tc_matmul(spec)
    fn = CudaExecutable.load_functions([k])[k.name]
    rng = np.random.default_rng(3)
    a = rng.integers(-3, 4, (spec.M, spec.K)).astype(np.float16)
    b = rng.integers(-3, 4, (spec.K, spec.N)).astype(np.float16)
    s = device.new_stream()
    da, db = device.upload(a, s), device.upload(b, s)
    y = device.empty((spec.M, spec.N), np.float32)
    maps = device_tensor_maps(spec, int(da.data.ptr), int(db.data.ptr), s)
    device.launch(fn, spec.grid(), spec.block(), (y, da, db, *maps), s)
    np.testing.assert_array_equal(device.download(y, s), a.astype(np.float32) @ b.astype(np.float32))


def test_the_stand_in_encoder_refuses_what_the_driver_refuses():
    from graphopt.errors import GraphoptError

    ok = fake_encode_tensor_map(1 << 20, H, (192, 130), 384, (64, 128))
    assert ok.shape == (128,)
    for args in ((1 << 20 | 8, H, (192, 130), 384, (64, 128)),   # address not 16-byte aligned
                 (1 << 20, H, (192, 130), 392, (64, 128)),       # row stride not a multiple of 16
                 (1 << 20, H, (192, 130), 384, (128, 64)),       # a 256-byte box row under the 128-byte swizzle
                 (1 << 20, H, (192, 130), 384, (64, 512))):      # a box dim past 256
        with pytest.raises(GraphoptError, match="CUDA_ERROR_INVALID_VALUE"):
            fake_encode_tensor_map(*args)
