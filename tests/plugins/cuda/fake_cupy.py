"""A stand-in for CuPy (and the parts of cuBLAS and NVRTC the backend calls) whose "device" is
host memory and whose kernels are the same kernels under emulation, so that the `cuda`
backend's own code runs without a GPU: device buffers, arena views, launch arguments, CUDA-graph
capture and replay, DLPack in and out, stream ordering, cuBLAS calls (a NumPy GEMM reading the
very pointers, leading dimensions and strides the backend passes). What it cannot show is the
real driver; the GPU checks listed in docs/cuda.md do that."""
import ctypes
import sys
import types

import numpy as np
import pytest

from graphopt.plugins.cuda import backend as cuda_backend
from graphopt.plugins.cuda import cublas as cuda_cublas
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.plugins.cuda.hostmem import aligned_empty


class FakeArray:
    """A "device" array: host memory, CuPy's surface as the backend uses it."""

    def __init__(self, a: np.ndarray):
        self.a = a

    @property
    def ptr(self) -> int:
        return self.a.ctypes.data

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ptr)

    @property
    def shape(self):
        return self.a.shape

    @property
    def dtype(self):
        return self.a.dtype

    def __getitem__(self, key):
        return FakeArray(self.a[key])

    def __setitem__(self, key, value):
        self.a[key] = value.a if isinstance(value, FakeArray) else value

    def copy(self):
        out = aligned_empty(self.a.shape, self.a.dtype)
        out[...] = self.a
        return FakeArray(out)

    def reshape(self, shape):
        return FakeArray(self.a.reshape(shape))

    def fill(self, value):
        self.a.fill(value)

    def get(self, stream=None):
        return self.a.copy()

    # device memory by the CUDA array interface; DLPack says CPU so that a CPU-only torch can import it
    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.ptr, False), "version": 3}

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return (1, 0)


class FakeCublas:
    """``cublasGemmStridedBatchedEx`` in NumPy over raw pointers, column-major like the real one."""

    DTYPES = {0: (ctypes.c_float, np.float32), 2: (ctypes.c_uint16, np.float16)}

    def __init__(self):
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
        self.calls.append(dict(transa=transa, transb=transb, m=m, n=n, k=k, lda=lda, ldb=ldb, ldc=ldc,
                               batch=batchCount, Ctype=Ctype, computeType=computeType))
        al = ctypes.c_float.from_address(alpha).value
        assert ctypes.c_float.from_address(beta).value == 0.0
        a = self._view(A, Atype, m, k, *((1, lda) if transa == 0 else (lda, 1)), batchCount, strideA)
        b = self._view(B, Btype, k, n, *((1, ldb) if transb == 0 else (ldb, 1)), batchCount, strideB)
        c = self._view(C, Ctype, m, n, 1, ldc, batchCount, strideC, out=True)
        c[...] = (al * np.matmul(a.astype(np.float32), b.astype(np.float32))).astype(c.dtype)

    def getVersion(self, handle):
        return 120900


class FakeCupy:
    def __init__(self, batch):
        self.batch = batch
        self.launches = []  # (kernel name, grid, block) actually executed
        self.capturing = None
        self.compiled_sources = []
        self.dlpack_imports = 0
        self.stream_waits = []  # (waiting stream, recording stream)
        self.blas = FakeCublas()
        fake = self

        class Event:
            def __init__(self, stream=None):
                self.stream = stream

            def record(self, stream=None):
                self.stream = stream

            def synchronize(self):
                pass

        class Stream:
            def __init__(self, non_blocking=False, name="graphopt"):
                self.name = name

            def __enter__(self):
                fake.current.append(self)
                return self

            def __exit__(self, *exc):
                fake.current.pop()
                return False

            def record(self):
                return Event(self)

            def wait_event(self, event):
                fake.stream_waits.append((self.name, event.stream.name))

            def begin_capture(self):
                fake.capturing = []

            def end_capture(self):
                calls, fake.capturing = fake.capturing, None
                return types.SimpleNamespace(launch=lambda stream=None: [c() for c in calls])

            def synchronize(self):
                pass

        class Function:
            def __init__(self, name):
                self.name = name

            def __call__(self, grid, block, args):
                def run():
                    fake.launches.append((self.name, grid, block))
                    fake.batch.launch(self.name, grid, block, [a.ptr for a in args])

                (fake.capturing.append if fake.capturing is not None else lambda f: f())(run)

        class RawModule:
            def __init__(self, path):
                fake.compiled_sources.append(open(path).read())

            def get_function(self, name):
                return Function(name)

        self.null_stream = Stream(name="caller")
        self.current = [self.null_stream]

        def blas_call(*args):
            run = lambda: fake.blas.gemmStridedBatchedEx(*args)  # noqa: E731
            (fake.capturing.append if fake.capturing is not None else lambda f: f())(run)

        self.cublas_module = types.SimpleNamespace(gemmStridedBatchedEx=blas_call, getVersion=self.blas.getVersion)
        self.cuda = types.SimpleNamespace(
            Stream=Stream, Event=Event, get_elapsed_time=lambda a, b: 1.0,
            get_current_stream=lambda: fake.current[-1],
            device=types.SimpleNamespace(get_cublas_handle=lambda: 7),
            Device=lambda *a: types.SimpleNamespace(compute_capability="90", id=0),
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
        self.RawModule = RawModule
        self.ndarray = FakeArray
        self.uint8 = np.uint8

    def empty(self, shape, dtype):
        return FakeArray(aligned_empty(shape if isinstance(shape, tuple) else (shape,), dtype))

    def asarray(self, x):
        if isinstance(x, FakeArray):
            return x
        out = self.empty(np.shape(x), np.asarray(x).dtype)
        out.a[...] = x
        return out

    def from_dlpack(self, x):
        self.dlpack_imports += 1
        import torch

        if isinstance(x, torch.Tensor):  # the test's stand-in for a CUDA tensor: its memory, not a copy
            return FakeArray(x.as_subclass(torch.Tensor).detach().numpy())
        return FakeArray(np.from_dlpack(x))


def fake_nvrtc(options_seen):
    prog = {}

    def create(src, name, headers, include_names):
        prog["src"] = src
        return 1

    def compile_(p, options):
        options_seen.extend(options)

    return types.SimpleNamespace(createProgram=create, compileProgram=compile_, getPTX=lambda p: prog["src"],
                                 getVersion=lambda: (13, 0), destroyProgram=lambda p: None,
                                 getProgramLog=lambda p: "")


def generated_wins(run, stream, reps=cuda_cublas.REPS):
    """The default fake timing: the generated kernel is faster (so nothing changes unless a test says)."""
    return 1.0 if run.kind == "generated" else 2.0


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """(FakeCupy, NVRTC options seen): ``cupy``, NVRTC and cuBLAS replaced; every module the
    backend loads is registered with one emulation batch, so its kernels really run."""
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    options = []
    with kernel_batch() as batch:
        cp = FakeCupy(batch)
        monkeypatch.setitem(sys.modules, "cupy", cp)
        libs = types.ModuleType("cupy_backends.cuda.libs")
        libs.nvrtc = fake_nvrtc(options)
        libs.cublas = cp.cublas_module
        for name, mod in (("cupy_backends", types.ModuleType("cupy_backends")),
                          ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                          ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.cublas", cp.cublas_module)):
            monkeypatch.setitem(sys.modules, name, mod)
        load = cuda_backend.CudaExecutable.load_functions

        def load_and_register(kernels):
            batch.add(kernels)
            return load(kernels)

        monkeypatch.setattr(cuda_backend.CudaExecutable, "load_functions", staticmethod(load_and_register))
        monkeypatch.setattr(cuda_cublas, "time_on_device", generated_wins)
        yield cp, options
