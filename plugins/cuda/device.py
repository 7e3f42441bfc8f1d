"""The one seam between the ``cuda`` backend and CuPy: every CuPy and CUDA-runtime call lives here.

Everything else in ``plugins/cuda`` calls these functions, never ``cupy`` itself, so the part of
the backend that only a GPU can run is this file. Each function states which CuPy call it makes;
``tests/plugins/cuda/test_cupy_contract.py`` checks CuPy's behaviour for each of them, one test
per behaviour, against the stand-in (``fake_cupy.py``) everywhere and against real CuPy on a GPU,
so the stand-in refuses what CuPy refuses.

Every call that queues work takes the stream explicitly: uploads, copies, zeroing, launches,
library calls and graph replays of one executable all go to its own stream, so they are ordered
among themselves without relying on what the current stream happens to be.

CuPy calls made here (and nowhere else in the backend):

=====================================  =========================================================
``cupy.cuda.runtime.getDeviceCount``   ``available``
``cupy.cuda.Device().compute_capability`` / ``.id``   ``compute_capability``, ``device_id``
``cupy.cuda.Stream(non_blocking=True)`` ``new_stream``; ``get_current_stream``: ``current_stream``
``Stream.record`` / ``wait_event`` / ``synchronize``  ``wait``, ``synchronize``
``Stream.begin_capture`` / ``end_capture``, ``Graph.launch``  ``capture``, ``replay``
``cupy.empty``                         ``empty`` (allocation queues no work)
``ndarray.set(host, stream)``          ``upload``, ``copy_into`` from the host (``dst[...] = host``
                                       is refused by CuPy: "non-scalar numpy.ndarray cannot be
                                       used for fill")
``dst[...] = device_array`` in ``with stream``  ``copy_into`` on the device
``ndarray.get(stream)``                ``download`` (synchronizes the stream)
``ndarray.copy()`` in ``with stream``  ``device_copy``; ``ndarray.fill(0)``: ``zero``
``cupy.from_dlpack`` in ``with stream`` ``import_dlpack`` (the producer orders its work first)
``cupy.RawModule(path=)``, ``get_function``  ``load_module``, ``get_function``
``RawKernel(grid, block, args, stream=)`` ``launch`` (grid and block must be tuples)
``RawKernel(..., shared_mem=)``, ``cupy_backends.cuda.api.driver.funcSetAttribute(fn.ptr,
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, n)``  ``with_dynamic_smem`` (a launch asking for
                                       more than 48 KB is refused without the attribute)
``cublas.gemmStridedBatchedEx`` in ``with stream``  ``gemm_strided_batched`` (CuPy refuses any
                                       cuBLAS call while the current stream captures)
``cupy.cuda.Event``, ``get_elapsed_time`` ``time_ms``
=====================================  =========================================================

One driver call that CuPy does not wrap, through NVIDIA's ``cuda-bindings``:
``cuda.bindings.driver.cuTensorMapEncodeTiled`` in ``encode_tensor_map`` (a TMA tensor map's 128
bytes, made on the host; the wgmma kernels take it from device memory, ``wgmma_tma.py``).

>>> s = new_stream()                                   # doctest: +SKIP
>>> x = upload(np.ones(4, np.float32), s)              # doctest: +SKIP
>>> download(x, s)                                     # doctest: +SKIP
array([1., 1., 1., 1.], dtype=float32)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def cupy():
    """The CuPy module (imported at the first call, so that a machine without it imports graphopt)."""
    import cupy as cp

    return cp


def available() -> tuple[bool, str]:
    """Whether a CUDA device can run kernels here, and why not."""
    try:
        cp = cupy()
    except Exception:  # ImportError, or a CuPy built for another CUDA
        return False, "CuPy is not installed (pip install 'graphopt[cuda]')"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"no CUDA device ({type(exc).__name__}: {first})"
    if n == 0:
        return False, "no CUDA device"
    return True, ""


def compute_capability() -> str:
    """The current device's compute capability as CuPy spells it: ``"90"`` on an H100."""
    return str(cupy().cuda.Device().compute_capability)


def device_id() -> int:
    return int(cupy().cuda.Device().id)


def new_stream():
    """A stream of our own that does not synchronize with the legacy default stream."""
    return cupy().cuda.Stream(non_blocking=True)


def current_stream():
    return cupy().cuda.get_current_stream()


def wait(waiter, producer) -> None:
    """``waiter`` runs nothing queued after this call before ``producer``'s queued work is done."""
    waiter.wait_event(producer.record())


def synchronize(stream) -> None:
    stream.synchronize()


def is_device_array(a) -> bool:
    return isinstance(a, cupy().ndarray)


def empty(shape, dtype):
    return cupy().empty(tuple(shape), np.dtype(dtype))


def upload(host: np.ndarray, stream):
    """A new device array holding ``host``, copied on ``stream``."""
    host = np.ascontiguousarray(host)
    dev = empty(host.shape, host.dtype)
    dev.set(host, stream=stream)
    return dev


def copy_into(dst, src, stream) -> None:
    """``dst`` (a device array) := ``src`` (a host or device array of the same shape and dtype), on ``stream``."""
    if isinstance(src, np.ndarray):
        dst.set(np.ascontiguousarray(src), stream=stream)
        return
    with stream:
        dst[...] = src


def download(dev, stream) -> np.ndarray:
    """A host copy of ``dev`` after ``stream``'s queued work (blocks the host)."""
    return dev.get(stream=stream)


def device_copy(a, stream):
    with stream:
        return a.copy()


def zero(a, stream) -> None:
    with stream:
        a.fill(0)


def import_dlpack(a, stream):
    """``a`` (a DLPack exporter in this device's memory) as a CuPy array sharing its memory; the
    exporter is asked to order its pending work before ``stream``."""
    with stream:
        return cupy().from_dlpack(a)


def as_host_or_device(a):
    """What ``results`` hands back for a compile-time constant on the device path: a device array."""
    return cupy().asarray(a)


def load_module(path: Path):
    """The module of a cubin file (the driver loads it when a function is first taken)."""
    return cupy().RawModule(path=str(path))


def get_function(module, name: str):
    return module.get_function(name)


STATIC_SMEM_LIMIT = 48 * 1024  # dynamic shared memory past this needs the function attribute


class DynamicSmemFunction:
    """A kernel function that launches with ``nbytes`` of dynamic shared memory."""

    def __init__(self, fn, nbytes: int):
        self.fn, self.nbytes = fn, int(nbytes)

    def __call__(self, grid, block, args, stream=None):
        self.fn(grid, block, args, shared_mem=self.nbytes, stream=stream)


def with_dynamic_smem(fn, nbytes: int):
    """``fn`` launching with ``nbytes`` of dynamic shared memory. Past 48 KB CUDA refuses the
    launch unless the function's limit was raised first, which this does
    (``cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)``, as
    ``cudaFuncSetAttribute`` in CUDA C++).

    >>> f = with_dynamic_smem(get_function(module, "go_tcgemm_..."), 81920)   # doctest: +SKIP
    >>> launch(f, (8, 8, 1), (256, 1, 1), args, stream)                       # doctest: +SKIP
    """
    if nbytes > STATIC_SMEM_LIMIT:
        from cupy_backends.cuda.api import driver

        driver.funcSetAttribute(fn.ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(nbytes))
    return DynamicSmemFunction(fn, nbytes)


def launch(fn, grid: tuple, block: tuple, args: tuple, stream) -> None:
    """Launch ``fn`` on ``stream``; ``args`` are device arrays (their data pointers are passed)."""
    fn(tuple(grid), tuple(block), tuple(args), stream=stream)


def capture(stream, body: Callable[[], None]):
    """A CUDA graph of what ``body`` queues on ``stream`` (nothing runs until it is replayed).
    Raises what CuPy raises when ``body`` does something capture forbids."""
    stream.begin_capture()
    try:
        body()
    finally:
        graph = stream.end_capture()
    return graph


def replay(graph, stream) -> None:
    graph.launch(stream=stream)


def cublas_handle():
    return cupy().cuda.device.get_cublas_handle()


def cublas_version() -> str:
    try:
        from cupy_backends.cuda.libs import cublas

        return str(cublas.getVersion(cublas_handle()))
    except Exception:  # a CuPy without the binding: a key using this still changes with the GPU
        return "unknown"


def gemm_strided_batched(stream, *args) -> None:
    """``cublasGemmStridedBatchedEx(handle, *args)`` on ``stream`` (CuPy sets the handle's stream to
    the current one, and refuses while it captures)."""
    from cupy_backends.cuda.libs import cublas

    with stream:
        cublas.gemmStridedBatchedEx(cublas_handle(), *args)


def time_ms(run: Callable[[], None], stream, reps: int) -> float:
    """Milliseconds per call of ``run`` (which queues on ``stream``), by CUDA events; one warm-up call."""
    cp = cupy()
    run()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    for _ in range(reps):
        run()
    end.record(stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / reps


TENSOR_MAP_BYTES = 128


def encode_tensor_map(address: int, dtype: str, dims, stride_bytes: int, box) -> np.ndarray:
    """The ``CUtensorMap`` (128 bytes, as uint8) of a 2-D ``dtype`` tensor at device ``address``:
    ``dims`` (inner, outer) elements, ``stride_bytes`` between outer rows (a multiple of 16), a
    ``box`` (inner, outer) of elements per copy, the 128-byte swizzle, zeros out of bounds
    (``cuTensorMapEncodeTiled``; needs the driver library, not a device context).

    >>> encode_tensor_map(int(x.data.ptr), "float16", (4096, 4096), 8192, (64, 128))   # doctest: +SKIP
    """
    import ctypes

    from cuda.bindings import driver as drv

    from graphopt.errors import GraphoptError

    types = {"float16": drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
             "bfloat16": drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16}
    err, tmap = drv.cuTensorMapEncodeTiled(
        types[dtype], 2, int(address), [drv.cuuint64_t(int(d)) for d in dims], [drv.cuuint64_t(int(stride_bytes))],
        [drv.cuuint32_t(int(b)) for b in box], [drv.cuuint32_t(1), drv.cuuint32_t(1)],
        drv.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, drv.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        drv.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        drv.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if int(err) != 0:
        raise GraphoptError(f"cuTensorMapEncodeTiled refused a {dtype} map of {tuple(dims)} (row stride "
                            f"{stride_bytes} bytes, box {tuple(box)}): {getattr(err, 'name', err)}")
    return np.frombuffer(ctypes.string_at(tmap.getPtr(), TENSOR_MAP_BYTES), np.uint8).copy()
