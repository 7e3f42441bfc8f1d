"""The `cuda` backend's own code (NVRTC cache keys, device buffers, arena views, launch
arguments, CUDA-graph capture and replay) run against a stand-in for CuPy whose
"device" is host memory and whose kernels are the same kernels under emulation.
What it cannot show is the real driver; benchmarks/bench_cuda.py does that on a GPU."""
import sys
import types

import numpy as np
import pytest

from cuda_harness import needs_emu
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.plugins.cuda.hostmem import aligned_empty

pytestmark = needs_emu


class FakeArray:
    """A "device" array: host memory, CuPy's surface as the backend uses it."""

    def __init__(self, a: np.ndarray):
        self.a = a

    @property
    def ptr(self) -> int:
        return self.a.ctypes.data

    def __getitem__(self, key):
        return FakeArray(self.a[key])

    def __setitem__(self, key, value):
        self.a[key] = value.a if isinstance(value, FakeArray) else value

    def get(self, stream=None):
        return self.a.copy()


class FakeCupy:
    def __init__(self, batch):
        self.batch = batch
        self.launches = []  # (kernel name, grid, block) actually executed
        self.capturing = None
        self.compiled_sources = []
        fake = self

        class Stream:
            def __init__(self, non_blocking=False):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

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

        self.cuda = types.SimpleNamespace(
            Stream=Stream,
            Device=lambda *a: types.SimpleNamespace(compute_capability="90"),
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
        self.RawModule = RawModule
        self.uint8 = np.uint8

    def empty(self, shape, dtype):
        return FakeArray(aligned_empty(shape if isinstance(shape, tuple) else (shape,), dtype))

    def asarray(self, x):
        if isinstance(x, FakeArray):
            return x
        out = self.empty(np.shape(x), np.asarray(x).dtype)
        out.a[...] = x
        return out


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


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    options = []
    with kernel_batch() as batch:
        cp = FakeCupy(batch)
        monkeypatch.setitem(sys.modules, "cupy", cp)
        libs = types.ModuleType("cupy_backends.cuda.libs")
        libs.nvrtc = fake_nvrtc(options)
        for name, mod in (("cupy_backends", types.ModuleType("cupy_backends")),
                          ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                          ("cupy_backends.cuda.libs", libs)):
            monkeypatch.setitem(sys.modules, name, mod)
        yield cp, options


def mlp():
    b = GraphBuilder()
    x = b.input("x", (5, 12))
    rng = np.random.default_rng(0)
    h = b.op("Relu", b.op("Add", b.op("MatMul", x, rng.standard_normal((12, 16)).astype(np.float32)),
                          rng.standard_normal(16).astype(np.float32)))
    y = b.op("Softmax", b.op("MatMul", h, rng.standard_normal((16, 3)).astype(np.float32)), axis=-1)
    b.output(y, "y")
    b.output(h, "h")
    return b.graph


def test_cuda_backend_runs_its_plan_and_replays_a_cuda_graph(fake_gpu):
    cp, options = fake_gpu
    g = mlp()
    get_backend("cuda-emu").compile(g)  # registers the same kernels (same specs, same names) in the batch
    be = get_backend("cuda")
    assert be.is_available() == (True, "")
    exe = be.compile(g)
    assert "-arch=compute_90" in options and len(cp.compiled_sources) == 1
    per_run = exe.stats["launches"]
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((5, 12)).astype(np.float32)
        got = exe.run({"x": x})
        want = run_reference(g, {"x": x})
        for a, r in zip(got, want):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    # run 1 launches directly, run 2 captures and replays, run 3 only replays: same kernels every time
    assert len(cp.launches) == 3 * per_run
    assert cp.launches[:per_run] == cp.launches[per_run:2 * per_run] == cp.launches[2 * per_run:]
    assert exe.cuda_graph is not None


def test_nvrtc_binaries_are_cached_by_content(fake_gpu):
    cp, options = fake_gpu
    g = mlp()
    get_backend("cuda-emu").compile(g)
    get_backend("cuda").compile(g)
    get_backend("cuda").compile(g)
    assert len(cp.compiled_sources) == 2 and options.count("-arch=compute_90") == 1  # second compile: cache hit
