"""A stand-in for CuPy (and the part of cuBLAS the backend calls) whose "device" is host memory
and whose kernels are the same kernels under emulation, so that the `cuda` backend's own code
(the ``device`` seam and everything above it) runs without a GPU.

It keeps CuPy's contract for every call the seam makes (``plugins/cuda/device.py`` lists them),
written from CuPy 14's documentation and source; ``test_cupy_contract.py`` states each behaviour
as a test, run on this stand-in everywhere and on real CuPy on a GPU:

* Device work is **asynchronous**: each stream queues its work, which runs only when something
  forces it -- a host read (``get``, ``synchronize``, an event's completion, DLPack/CAI export
  to a host consumer) or another stream waiting on one of its events. Work on two streams with no
  event between them is run in whatever order the forcing asks for, so a missing ordering shows
  up as wrong numbers instead of passing by luck. Host-to-device copies take the host bytes when
  queued (pageable memory is staged, as CUDA does).
* ``dst[...] = numpy_array`` is refused ("non-scalar numpy.ndarray cannot be used for fill");
  ``set`` wants the same dtype and shape; NumPy will not convert a device array implicitly.
* Capture: never on the legacy stream; while a stream captures, its queued work is recorded
  (not run), and host transfers, ``synchronize`` and any cuBLAS call on it are refused as CuPy
  refuses them; ``end_capture`` returns a graph whose ``launch`` queues the recorded work.
* Kernels: ``grid``/``block`` must be tuples; NumPy arrays of more than one element are refused
  as arguments; the module is a real cubin (compiled by the real NVRTC), checked to be complete,
  for this device's SM, and to hold the function asked for.

What it cannot show is the real driver and hardware; test_cuda_device.py runs on a GPU.
"""
import ctypes
import sys
import types

import numpy as np
import pytest

from graphopt.errors import GraphoptError
from graphopt.plugins.cuda import backend as cuda_backend
from graphopt.plugins.cuda import compile_nvrtc
from graphopt.plugins.cuda import cublas as cuda_cublas
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.plugins.cuda.cubin import read_cubin
from graphopt.plugins.cuda.hostmem import aligned_empty


class CUDARuntimeError(RuntimeError):
    """CuPy's ``cupy_backends.cuda.api.runtime.CUDARuntimeError`` (a RuntimeError)."""


class CUDADriverError(RuntimeError):
    """CuPy's ``cupy_backends.cuda.api.driver.CUDADriverError`` (a RuntimeError)."""


CAPTURE_UNSUPPORTED = "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing"


class FakeStream:
    def __init__(self, fake, null=False, non_blocking=False, ptds=False, name=None):
        self.fake = fake
        self.ptr = 0 if null else fake.next_ptr()
        self.non_blocking = non_blocking
        self.name = name or ("null" if null else f"stream-{self.ptr}")
        self.queue = []  # pending callables, run in order by flush()
        self.capture = None  # a list while capturing

    def __enter__(self):
        self.fake.current.append(self)
        return self

    def __exit__(self, *exc):
        self.fake.current.pop()
        return False

    def use(self):
        self.fake.current[-1:] = [self]
        return self

    # work
    def enqueue(self, op) -> None:
        (self.capture if self.capture is not None else self.queue).append(op)

    def flush(self) -> None:
        while self.queue:
            self.queue.pop(0)()

    def synchronize(self) -> None:
        if self.capture is not None:
            raise CUDARuntimeError(CAPTURE_UNSUPPORTED)
        self.flush()

    def record(self, event=None):
        event = event or FakeEvent(self.fake)
        event.record(self)
        return event

    def wait_event(self, event) -> None:
        self.fake.stream_waits.append((self.name, event.stream.name if event.stream else None))
        self.enqueue(event.wait_op())

    # capture
    def begin_capture(self, mode=None) -> None:
        if self.ptr in (0, 1):
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self.capture is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is already capturing")
        self.capture = []

    def end_capture(self):
        if self.capture is None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is not capturing")
        ops, self.capture = self.capture, None
        return FakeGraph(self.fake, ops)

    def is_capturing(self) -> bool:
        return self.capture is not None


class FakeGraph:
    def __init__(self, fake, ops):
        self.fake = fake
        self.ops = ops

    def launch(self, stream=None):
        s = stream or self.fake.current[-1]
        for op in self.ops:
            s.enqueue(op)


class FakeEvent:
    def __init__(self, fake, block=False, disable_timing=False, interprocess=False):
        self.fake = fake
        self.stream = None
        self.done = False

    def record(self, stream=None):
        self.stream = stream or self.fake.current[-1]
        self.done = False

        def mark():
            self.done = True
        self.stream.enqueue(mark)

    def wait_op(self):
        def wait():
            if self.stream is not None and not self.done:
                self.stream.flush()  # the waiting stream needs the recorded work first
        return wait

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.flush()


class FakeArray:
    """A "device" array: host memory, CuPy's surface as the seam uses it."""

    def __init__(self, a: np.ndarray, fake):
        self.a = a
        self.fake = fake

    # what CuPy exposes
    @property
    def ptr(self) -> int:
        return self.a.ctypes.data

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ptr)

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    size = property(lambda self: self.a.size)
    ndim = property(lambda self: self.a.ndim)
    nbytes = property(lambda self: self.a.nbytes)

    def __array__(self, *a, **k):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __getitem__(self, key):
        return FakeArray(self.a[key], self.fake)

    def __setitem__(self, key, value):
        stream = self.fake.current[-1]
        dst = self.a[key]
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if isinstance(value, FakeArray) or hasattr(value, "__cuda_array_interface__"):
            src = value.a if isinstance(value, FakeArray) else _cai_array(value)
            np.broadcast_shapes(src.shape, dst.shape)  # CuPy broadcasts like NumPy, or raises ValueError
            stream.enqueue(lambda: np.copyto(dst, src, casting="unsafe"))
        else:
            stream.enqueue(lambda: dst.fill(value))

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not self.a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        s = stream or self.fake.current[-1]
        if s.capture is not None:
            raise RuntimeError("the current stream is capturing, so H2D transfers are disallowed")
        staged = np.array(arr, copy=True)  # pageable memory is staged when the copy is queued
        dst = self.a
        s.enqueue(lambda: np.copyto(dst, staged))

    def get(self, stream=None, order="C", out=None, blocking=True):
        s = stream or self.fake.current[-1]
        if s.capture is not None:
            raise RuntimeError("the current stream is capturing, so D2H transfers are disallowed")
        s.flush()
        return np.array(self.a, copy=True)

    def copy(self):
        out = FakeArray(aligned_empty(self.a.shape, self.a.dtype), self.fake)
        src, dst = self.a, out.a
        self.fake.current[-1].enqueue(lambda: np.copyto(dst, src))
        return out

    def fill(self, value):
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        dst = self.a
        self.fake.current[-1].enqueue(lambda: dst.fill(value))

    def reshape(self, *shape):
        return FakeArray(self.a.reshape(*shape), self.fake)

    # exports to host consumers (a CPU torch stands in for CUDA torch): the consumer reads now
    @property
    def __cuda_array_interface__(self):
        self.fake.flush_all()
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None if self.a.flags.c_contiguous else self.a.strides}

    def __dlpack__(self, **kw):
        self.fake.flush_all()
        kw.pop("stream", None)
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return (1, 0)  # host memory, so a CPU-only torch can import it (CuPy says (2, device))


def _cai_array(obj) -> np.ndarray:
    """A NumPy view of a host-memory object exposing ``__cuda_array_interface__`` (stand-in tensors)."""
    cai = obj.__cuda_array_interface__
    dt = np.dtype(cai["typestr"])
    n = int(np.prod(cai["shape"], dtype=np.int64))
    buf = (ctypes.c_char * (n * dt.itemsize)).from_address(cai["data"][0])
    return np.frombuffer(buf, dt).reshape(cai["shape"])


class FakeCublas:
    """``cublasGemmStridedBatchedEx`` in NumPy over raw pointers, column-major like the real one."""

    DTYPES = {0: (ctypes.c_float, np.float32), 2: (ctypes.c_uint16, np.float16)}

    def __init__(self, fake):
        self.fake = fake
        self.calls = []

    @classmethod
    def _view(cls, ptr, dtype, rows, cols, s_row, s_col, batch, s_batch, out=False):
        ct, nd = cls.DTYPES[dtype]
        extent = 1 + (rows - 1) * s_row + (cols - 1) * s_col + (batch - 1) * s_batch
        flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ct)), shape=(extent,)).view(nd)
        isz = np.dtype(nd).itemsize
        return np.lib.stride_tricks.as_strided(flat, (batch, rows, cols), (s_batch * isz, s_row * isz, s_col * isz),
                                               writeable=out)

    def gemmStridedBatchedEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb,
                             strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType, algo):
        stream = self.fake.current[-1]  # CuPy sets the handle's stream to the current one...
        if stream.capture is not None:  # ...and refuses while it captures (cublas.setStream, CuPy 14)
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        al = ctypes.c_float.from_address(alpha).value  # host scalars are read when the call is queued
        be = ctypes.c_float.from_address(beta).value
        self.calls.append(dict(transa=transa, transb=transb, m=m, n=n, k=k, lda=lda, ldb=ldb, ldc=ldc,
                               batch=batchCount, Ctype=Ctype, computeType=computeType))

        def run():
            assert be == 0.0
            a = self._view(A, Atype, m, k, *((1, lda) if transa == 0 else (lda, 1)), batchCount, strideA)
            b = self._view(B, Btype, k, n, *((1, ldb) if transb == 0 else (ldb, 1)), batchCount, strideB)
            c = self._view(C, Ctype, m, n, 1, ldc, batchCount, strideC, out=True)
            c[...] = (al * np.matmul(a.astype(np.float32), b.astype(np.float32))).astype(c.dtype)
        stream.enqueue(run)

    def getVersion(self, handle):
        return 120900


class FakeCupy:
    """The ``cupy`` module as the seam sees it."""

    COMPUTE_CAPABILITY = "90"
    SMEM_OPTIN = 227 * 1024  # an H100's largest dynamic shared memory per block
    MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute's value

    def __init__(self, batch):
        self.batch = batch
        self.launches = []  # (kernel name, grid, block) actually executed
        self.loaded_cubins = []  # paths of the modules loaded
        self.dlpack_imports = 0
        self.stream_waits = []  # (waiting stream, recording stream)
        self._ptr = 16
        self.streams = []
        self.functions = {}  # ptr -> loaded function
        self.dyn_smem = {}  # kernel name -> the dynamic shared memory its source indexes
        self.blas = FakeCublas(self)
        fake = self

        class Stream(FakeStream):
            def __init__(self, null=False, non_blocking=False, ptds=False):
                super().__init__(fake, null=null, non_blocking=non_blocking, ptds=ptds)
                fake.streams.append(self)

        class Event(FakeEvent):
            def __init__(self, block=False, disable_timing=False, interprocess=False):
                super().__init__(fake, block, disable_timing, interprocess)

        class RawKernel:
            """What ``RawModule.get_function`` returns: launches on ``stream`` or the current one."""

            def __init__(self, name):
                self.name = name
                self.ptr = fake.next_ptr()  # the CUfunction handle funcSetAttribute takes
                self.max_dynamic_smem = 48 * 1024
                fake.functions[self.ptr] = self

            def __call__(self, grid, block, args, shared_mem=0, stream=None, **kw):
                if shared_mem > self.max_dynamic_smem:  # CUDA: past 48 KB only after funcSetAttribute
                    raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: invalid argument")
                if shared_mem < fake.dyn_smem.get(self.name, 0):  # a GPU would fault reading past it
                    raise CUDADriverError(f"CUDA_ERROR_ILLEGAL_ADDRESS: {self.name} indexes "
                                          f"{fake.dyn_smem[self.name]} bytes of dynamic shared memory, "
                                          f"launched with {shared_mem}")
                for what, v in (("grid", grid), ("block", block)):
                    if not isinstance(v, tuple):
                        raise TypeError(f"Argument '{what}' has incorrect type (expected tuple, got {type(v).__name__})")
                ptrs = []
                for a in args:
                    if isinstance(a, FakeArray):
                        ptrs.append(a.ptr)
                    elif isinstance(a, np.ndarray) and a.size != 1:
                        raise TypeError(f"You are trying to pass a numpy.ndarray of shape {a.shape} as a kernel "
                                        "parameter. Only numpy.ndarrays of size one can be passed by value.")
                    else:  # CuPy would pass it by value; the generated kernels take only pointers
                        raise TypeError(f"the stand-in passes only device arrays to generated kernels, got {type(a)}")
                g = tuple(max(1, int(x)) for x in (grid + (1, 1))[:3])  # CuPy launches at least one block
                b = tuple(max(1, int(x)) for x in (block + (1, 1))[:3])
                if (any(x > m for x, m in zip(g, (2**31 - 1, 65535, 65535))) or b[0] * b[1] * b[2] > 1024
                        or any(x > m for x, m in zip(b, (1024, 1024, 64)))):
                    raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: invalid argument")

                def run():
                    fake.launches.append((self.name, g, b))
                    fake.batch.launch(self.name, g, b, ptrs)
                (stream or fake.current[-1]).enqueue(run)

        class RawModule:
            def __init__(self, *, code=None, path=None, options=(), **kw):
                if (code is None) == (path is None):
                    raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
                if code is not None:
                    raise NotImplementedError("the stand-in loads cubins only (graphopt compiles with NVRTC itself)")
                try:
                    self.info = read_cubin(open(path, "rb").read(), path)
                except GraphoptError as exc:
                    raise CUDADriverError(f"CUDA_ERROR_INVALID_IMAGE: device kernel image is invalid ({exc})") from None
                if not _loads_on(self.info.arch, fake.COMPUTE_CAPABILITY):
                    raise CUDADriverError("CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available for "
                                          f"execution on the device ({self.info.arch} on sm_{fake.COMPUTE_CAPABILITY})")
                fake.loaded_cubins.append(path)

            def get_function(self, name):
                if name not in self.info.kernels:
                    raise CUDADriverError("CUDA_ERROR_NOT_FOUND: named symbol not found")
                return RawKernel(name)

        self.null_stream = Stream(null=True)
        self.current = [self.null_stream]

        def blas_call(handle, *args):
            return fake.blas.gemmStridedBatchedEx(handle, *args)

        class Device:
            def __init__(self, device=None):
                self.id = 0
                self.compute_capability = fake.COMPUTE_CAPABILITY

            def synchronize(self):
                fake.flush_all()

        def elapsed(start, end):
            if not (start.done and end.done):
                raise CUDARuntimeError("cudaErrorNotReady: device not ready")
            return 1.0

        def set_attribute(ptr, attribute, value):
            if attribute != self.MAX_DYNAMIC_SHARED_SIZE_BYTES or ptr not in fake.functions:
                raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: invalid argument")
            if value > self.SMEM_OPTIN:  # more than the device's opt-in shared memory per block
                raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: invalid argument")
            fake.functions[ptr].max_dynamic_smem = int(value)

        self.driver_module = types.SimpleNamespace(
            funcSetAttribute=set_attribute, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=self.MAX_DYNAMIC_SHARED_SIZE_BYTES,
            CUDADriverError=CUDADriverError)
        self.cublas_module = types.SimpleNamespace(gemmStridedBatchedEx=blas_call, getVersion=self.blas.getVersion)
        self.cuda = types.SimpleNamespace(
            Stream=Stream, Event=Event, get_elapsed_time=elapsed,
            get_current_stream=lambda: fake.current[-1],
            device=types.SimpleNamespace(get_cublas_handle=lambda: 7),
            Device=Device,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
        self.RawModule = RawModule
        self.ndarray = FakeArray
        self.uint8 = np.uint8

    def next_ptr(self) -> int:
        self._ptr += 16
        return self._ptr

    def flush_all(self) -> None:
        for s in self.streams:
            s.flush()

    def empty(self, shape, dtype):
        return FakeArray(aligned_empty(shape if isinstance(shape, tuple) else (shape,), dtype), self)

    def asarray(self, x):
        if isinstance(x, FakeArray):
            return x
        x = np.asarray(x)
        out = self.empty(x.shape, x.dtype)
        out.set(x)
        return out

    def from_dlpack(self, x):
        self.dlpack_imports += 1
        import torch

        if isinstance(x, torch.Tensor):  # the test's stand-in for a CUDA tensor: its memory, not a copy
            return FakeArray(x.as_subclass(torch.Tensor).detach().numpy(), self)
        return FakeArray(np.from_dlpack(x), self)


def _loads_on(arch: str, cc: str) -> bool:
    """A cubin runs on devices of its major version with an equal or higher minor (sm_80 on sm_86,
    not on sm_90); an arch-specific one (sm_90a: wgmma, TMA) on its own compute capability only."""
    n = int(arch.removeprefix("sm_").rstrip("af"))
    c = int(cc)
    if arch.endswith("a"):
        return n == c
    return n // 10 == c // 10 and n % 10 <= c % 10


def generated_wins(run, stream, reps=cuda_cublas.REPS):
    """The default fake timing: the generated kernel is faster (so nothing changes unless a test says)."""
    return 1.0 if run.kind == "generated" else 2.0


def fake_encode_tensor_map(address: int, dtype: str, dims, stride_bytes: int, box):
    """The stand-in for ``device.encode_tensor_map`` (``cuTensorMapEncodeTiled``, 2-D, 128-byte
    swizzle): it refuses what the driver documents as invalid -- a global address not 16-byte
    aligned, a row stride not a multiple of 16 (or past 2^40), a dim of 0 or past 2^32, a box dim
    of 0 or past 256, a box row wider than the 128-byte swizzle span -- with CUDA_ERROR_INVALID_VALUE,
    and otherwise returns the emulation's 128-byte record, which the TMA twin reads (the driver's
    encoding is opaque)."""
    from graphopt.plugins.cuda.wgmma_tma import TensorMapSpec, emu_tensor_map

    esize = 2
    bad = (address % 16 or stride_bytes % 16 or not 0 < stride_bytes < 2 ** 40
           or any(not 0 < d <= 2 ** 32 for d in dims) or any(not 0 < b <= 256 for b in box)
           or box[0] * esize > 128)
    if bad:
        raise GraphoptError(f"cuTensorMapEncodeTiled refused a {dtype} map of {tuple(dims)} (row stride "
                            f"{stride_bytes} bytes, box {tuple(box)}): CUDA_ERROR_INVALID_VALUE")
    return emu_tensor_map(address, TensorMapSpec("x", True, dtype, tuple(dims), stride_bytes, tuple(box), 0))


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """(FakeCupy, NVRTC compiles): ``cupy`` and cuBLAS replaced by the stand-in; NVRTC is the real
    one (each compile recorded as ``(arch, options)``); every module the backend loads is
    registered with one emulation batch, so its kernels really run."""
    ok, why = compile_nvrtc.nvrtc_available()
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GRAPHOPT_TUNE", "table")  # timing every candidate under emulation is slow: tests ask for it
    # the stand-in is compute capability 9.0, where the backend's first compile would run the wgmma
    # self-check and switch the whole process to wgmma: tests that want that unset this (test_wgmma.py)
    monkeypatch.setenv("GRAPHOPT_CUDA_MMA", "mma")
    compiles = []
    real_compile = compile_nvrtc.nvrtc_cubin_bytes

    def recorded(source, arch, options=None, **kw):
        compiles.append((arch, tuple(compile_nvrtc.NVRTC_OPTIONS if options is None else options)))
        return real_compile(source, arch, options, **kw)

    monkeypatch.setattr(compile_nvrtc, "nvrtc_cubin_bytes", recorded)
    with kernel_batch() as batch:
        cp = FakeCupy(batch)
        monkeypatch.setitem(sys.modules, "cupy", cp)
        libs = types.ModuleType("cupy_backends.cuda.libs")
        libs.cublas = cp.cublas_module
        api = types.ModuleType("cupy_backends.cuda.api")
        api.driver = cp.driver_module
        for name, mod in (("cupy_backends", types.ModuleType("cupy_backends")),
                          ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                          ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.cublas", cp.cublas_module),
                          ("cupy_backends.cuda.api", api), ("cupy_backends.cuda.api.driver", cp.driver_module)):
            monkeypatch.setitem(sys.modules, name, mod)
        load = cuda_backend.CudaExecutable.load_functions

        def load_and_register(kernels):
            batch.add(kernels)
            cp.dyn_smem.update({k.name: k.dyn_smem for k in kernels})
            return load(kernels)

        monkeypatch.setattr(cuda_backend.CudaExecutable, "load_functions", staticmethod(load_and_register))
        from graphopt.plugins.cuda import device as cuda_device

        monkeypatch.setattr(cuda_device, "encode_tensor_map", fake_encode_tensor_map)
        monkeypatch.setattr(cuda_cublas, "time_on_device", generated_wins)
        yield cp, compiles
