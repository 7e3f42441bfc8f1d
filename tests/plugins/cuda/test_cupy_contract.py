"""CuPy's contract for every call the ``device`` seam makes, one test per behaviour.

Each test runs on the stand-in (``fake``, everywhere) and on real CuPy (``cuda``, skipped without a
GPU; benchmarks/gpu_session.sh runs it there), so the stand-in that certifies the backend in CI is
itself checked against the library it stands for. The behaviours come from CuPy 14's documentation
and source (``cupy/_core/core.pyx``: ``set``/``get``/``__setitem__``/``fill``/``__array__``;
``cupy/cuda/stream.pyx`` and ``memory.pyx``: streams, events, capture and the transfers it refuses;
``cupy/cuda/function.pyx``: launch arguments; ``cupy_backends/cuda/libs/cublas.pyx``: no cuBLAS call
while the current stream captures). A last group checks what only the stand-in adds: it runs queued
work lazily, so a missing ordering between streams gives wrong numbers instead of passing by luck.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from fake_cupy import FakeCupy
from graphopt.plugins.cuda import compile_nvrtc
from graphopt.plugins.cuda.compile_emu import emu_available, kernel_batch
from graphopt.plugins.cuda.kernel import Kernel, Param

SCALE_SRC = ('extern "C" __global__ void go_test_scale(const float* __restrict__ x, float* __restrict__ y) '
             '{ const int i = blockIdx.x * blockDim.x + threadIdx.x; y[i] = 2.0f * x[i]; }\n')
SCALE = Kernel("go_test_scale", SCALE_SRC, (Param("x", "const float*"), Param("y", "float*")))


# 64 KB of dynamic shared memory (under emulation a static array: the host has no launch-time size)
SMEM_SRC = ('extern "C" __global__ void go_test_smem(const float* __restrict__ x, float* __restrict__ y) {\n'
            '#if defined(__CUDA_ARCH__)\n    extern __shared__ float buf[];\n#else\n    __shared__ float buf[16384];\n'
            '#endif\n    for (int i = threadIdx.x; i < 16384; i += blockDim.x) buf[i] = x[i];\n    __syncthreads();\n'
            '    y[threadIdx.x] = buf[16383 - threadIdx.x];\n}\n')
SMEM = Kernel("go_test_smem", SMEM_SRC, (Param("x", "const float*"), Param("y", "float*")), (), True)


class Api:
    """What a test needs of one side: the ``cupy`` module, a loaded test kernel, cuBLAS, the driver API."""

    def __init__(self, cp, kind: str, cublas, driver=None):
        self.cp, self.kind, self.cublas, self.driver = cp, kind, cublas, driver

    def smem_kernel(self):
        path = compile_nvrtc.compile_cubin(SMEM_SRC, f"sm_{self.cp.cuda.Device().compute_capability}")
        return self.cp.RawModule(path=str(path)).get_function("go_test_smem")

    def scale_kernel(self):
        path = compile_nvrtc.compile_cubin(SCALE_SRC, f"sm_{self.cp.cuda.Device().compute_capability}")
        return self.cp.RawModule(path=str(path)).get_function("go_test_scale")

    def stream(self):
        return self.cp.cuda.Stream(non_blocking=True)


@pytest.fixture(params=["fake", "cuda"])
def api(request, monkeypatch, tmp_path):
    ok, why = compile_nvrtc.nvrtc_available()
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    if request.param == "cuda":
        from graphopt.plugins.cuda import device

        ok, why = device.available()
        if not ok:
            pytest.skip(why)
        import cupy
        from cupy_backends.cuda.api import driver
        from cupy_backends.cuda.libs import cublas

        yield Api(cupy, "cuda", cublas, driver)
        return
    ok, why = emu_available()
    if not ok:
        pytest.skip(why)
    with kernel_batch() as batch:
        batch.add([SCALE, SMEM])
        cp = FakeCupy(batch)
        yield Api(cp, "fake", cp.cublas_module, cp.driver_module)


def host(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


# -- host <-> device ---------------------------------------------------------------------------------


def test_set_copies_a_host_array_of_the_same_dtype_and_shape(api):
    s = api.stream()
    d = api.cp.empty((8,), np.float32)
    d.set(host(), stream=s)
    np.testing.assert_array_equal(d.get(stream=s), host())


def test_set_refuses_another_dtype_shape_or_a_non_numpy_value(api):
    d = api.cp.empty((8,), np.float32)
    with pytest.raises(TypeError):
        d.set(host().astype(np.float64))
    with pytest.raises(ValueError):
        d.set(host(9))
    with pytest.raises(TypeError):
        d.set([0.0] * 8)


def test_item_assignment_of_a_host_array_is_refused(api):
    d = api.cp.empty((8,), np.float32)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        d[...] = host()


def test_item_assignment_of_a_device_array_copies_and_broadcasts(api):
    s = api.stream()
    src = api.cp.empty((8,), np.float32)
    src.set(host(seed=1), stream=s)
    dst = api.cp.empty((2, 8), np.float32)
    with s:
        dst[...] = src
    np.testing.assert_array_equal(dst.get(stream=s), np.stack([host(seed=1)] * 2))


def test_fill_zero_and_copy_run_on_the_current_stream(api):
    s = api.stream()
    a = api.cp.empty((8,), np.float32)
    a.set(host(), stream=s)
    with s:
        b = a.copy()
        a.fill(0)
    np.testing.assert_array_equal(a.get(stream=s), np.zeros(8, np.float32))
    np.testing.assert_array_equal(b.get(stream=s), host())
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a.fill(host())


def test_numpy_will_not_convert_a_device_array_implicitly(api):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(api.cp.empty((8,), np.float32))


# -- kernels -----------------------------------------------------------------------------------------


def test_a_kernel_launches_on_the_stream_given(api):
    s = api.stream()
    x, y = api.cp.empty((64,), np.float32), api.cp.empty((64,), np.float32)
    x.set(host(64), stream=s)
    api.scale_kernel()((2,), (32,), (x, y), stream=s)
    np.testing.assert_allclose(y.get(stream=s), 2 * host(64))


def test_launch_wants_tuples_and_device_arrays(api):
    f = api.scale_kernel()
    x = api.cp.empty((64,), np.float32)
    with pytest.raises(TypeError):
        f([2], (32,), (x, x))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        f((2,), (32,), (x, host(64)))


@pytest.mark.parametrize("grid, block", [((1, 65536), (32,)), ((1,), (1025,)), ((1,), (1, 1, 65))])
def test_a_launch_outside_cudas_limits_is_refused(api, grid, block):
    x = api.cp.empty((64,), np.float32)
    with pytest.raises(Exception, match="CUDA_ERROR_INVALID_VALUE"):
        api.scale_kernel()(grid, block, (x, x))
        api.cp.cuda.Device().synchronize()


def test_past_48_kb_of_dynamic_shared_memory_a_launch_needs_the_function_attribute(api):
    x, y = api.cp.empty((16384,), np.float32), api.cp.empty((64,), np.float32)
    x.set(host(16384))
    f = api.smem_kernel()
    with pytest.raises(Exception, match="CUDA_ERROR_INVALID_VALUE"):
        f((1,), (64,), (x, y), shared_mem=65536)
        api.cp.cuda.Device().synchronize()
    api.driver.funcSetAttribute(f.ptr, api.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 65536)
    f((1,), (64,), (x, y), shared_mem=65536)
    np.testing.assert_array_equal(y.get(), host(16384)[::-1][:64])


def test_the_dynamic_shared_memory_attribute_stops_at_the_devices_limit(api):
    f = api.smem_kernel()
    with pytest.raises(Exception, match="CUDA_ERROR_INVALID_VALUE"):
        api.driver.funcSetAttribute(f.ptr, api.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 256 * 1024)


def test_a_module_without_the_function_refuses_it(api):
    path = compile_nvrtc.compile_cubin(SCALE_SRC, f"sm_{api.cp.cuda.Device().compute_capability}")
    with pytest.raises(Exception, match="CUDA_ERROR_NOT_FOUND"):
        api.cp.RawModule(path=str(path)).get_function("go_not_there")


# -- streams and events ------------------------------------------------------------------------------


def test_with_stream_makes_it_current(api):
    s = api.stream()
    before = api.cp.cuda.get_current_stream()
    with s:
        assert api.cp.cuda.get_current_stream().ptr == s.ptr
    assert api.cp.cuda.get_current_stream().ptr == before.ptr


def test_a_stream_waiting_on_an_event_sees_the_recorded_work(api):
    a, b = api.stream(), api.stream()
    x, y = api.cp.empty((64,), np.float32), api.cp.empty((64,), np.float32)
    x.set(host(64), stream=a)
    b.wait_event(a.record())
    api.scale_kernel()((2,), (32,), (x, y), stream=b)
    np.testing.assert_allclose(y.get(stream=b), 2 * host(64))


def test_event_timing_after_the_end_event_completes(api):
    s = api.stream()
    start, end = api.cp.cuda.Event(), api.cp.cuda.Event()
    start.record(s)
    x = api.cp.empty((64,), np.float32)
    x.set(host(64), stream=s)
    end.record(s)
    end.synchronize()
    assert api.cp.cuda.get_elapsed_time(start, end) >= 0.0


# -- CUDA graph capture ------------------------------------------------------------------------------


def test_the_legacy_stream_cannot_capture(api):
    with pytest.raises(RuntimeError, match="cannot capture on the default"):
        api.cp.cuda.Stream(null=True).begin_capture()


def test_captured_work_runs_only_when_the_graph_is_launched(api):
    s = api.stream()
    f = api.scale_kernel()
    x, y = api.cp.empty((64,), np.float32), api.cp.empty((64,), np.float32)
    x.set(host(64), stream=s)
    with s:
        y.fill(0)
    s.begin_capture()
    f((2,), (32,), (x, y), stream=s)
    graph = s.end_capture()
    np.testing.assert_array_equal(y.get(stream=s), np.zeros(64, np.float32))  # recorded, not run
    graph.launch(stream=s)
    np.testing.assert_allclose(y.get(stream=s), 2 * host(64))
    x.set(host(64, seed=3), stream=s)  # a replay reads the same addresses again
    graph.launch(stream=s)
    np.testing.assert_allclose(y.get(stream=s), 2 * host(64, seed=3))


@pytest.mark.parametrize("what", ["set", "get", "synchronize"])
def test_capture_refuses_host_transfers_and_synchronization(api, what):
    s = api.stream()
    x = api.cp.empty((8,), np.float32)
    s.begin_capture()
    try:
        with pytest.raises(RuntimeError):
            {"set": lambda: x.set(host(), stream=s), "get": lambda: x.get(stream=s),
             "synchronize": s.synchronize}[what]()
    finally:
        try:
            s.end_capture()
        except Exception:  # the failed call may have invalidated the capture: that is the point
            pass


def test_no_cublas_call_while_the_current_stream_captures(api):
    s = api.stream()
    a = api.cp.empty((4, 4), np.float32)
    alpha, beta = np.ones(1, np.float32), np.zeros(1, np.float32)
    handle = api.cp.cuda.device.get_cublas_handle()
    args = (0, 0, 4, 4, 4, alpha.ctypes.data, a.data.ptr, 0, 4, 16, a.data.ptr, 0, 4, 16, beta.ctypes.data,
            a.data.ptr, 0, 4, 16, 1, 68, -1)
    with s:
        s.begin_capture()
        try:
            with pytest.raises(NotImplementedError, match="stream capture"):
                api.cublas.gemmStridedBatchedEx(handle, *args)
        finally:
            s.end_capture()


# -- what only the stand-in adds ---------------------------------------------------------------------


@pytest.fixture
def fake(api):
    if api.kind != "fake":
        pytest.skip("a property of the stand-in")
    return api


def test_stand_in_work_without_an_ordering_is_not_visible_to_another_stream(fake):
    """An upload on one stream and a kernel on another, with no event between them: the stand-in runs
    the kernel before the upload, so code that forgot the ordering reads stale memory here too."""
    a, b = fake.stream(), fake.stream()
    x, y = fake.cp.empty((64,), np.float32), fake.cp.empty((64,), np.float32)
    with a:
        x.fill(0)
    a.synchronize()
    x.set(host(64), stream=a)  # queued on a, never forced before b reads x
    fake.scale_kernel()((2,), (32,), (x, y), stream=b)
    np.testing.assert_array_equal(y.get(stream=b), np.zeros(64, np.float32))


def test_stand_in_loads_only_cubins_for_its_sm(fake, tmp_path):
    path = compile_nvrtc.compile_cubin(SCALE_SRC, "sm_80")  # the stand-in is an sm_90 device
    with pytest.raises(Exception, match="CUDA_ERROR_NO_BINARY_FOR_GPU"):
        fake.cp.RawModule(path=str(path))
    bad = tmp_path / "bad.cubin"
    bad.write_bytes(compile_nvrtc.compile_cubin(SCALE_SRC, "sm_90").read_bytes()[:-1])
    with pytest.raises(Exception, match="CUDA_ERROR_INVALID_IMAGE"):
        fake.cp.RawModule(path=str(bad))
