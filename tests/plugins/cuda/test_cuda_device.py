"""The `cuda` backend on a real GPU: what the emulation and the CuPy stand-in cannot show
(issues #5 and #7, the "Only a GPU can check" list of docs/cuda.md), in one short run.

* Every whole graph the cuda-emu tests compile (the graph builders of test_cuda_backend,
  test_cuda_resize, test_cuda_int8, test_cuda_int8_tc, test_cuda_rowfused, test_cuda_models,
  test_cuda_int8_models, test_cuda_nhwc and test_cuda_bf16, imported, not copied) compiled
  for ``cuda`` the way its emu test compiles it, against the CPU reference with that test's
  tolerance; run three times (direct launches, capture + replay, replay): the 2nd and 3rd
  results are bit for bit the 1st, and the CUDA graph was captured (or ``stats`` says why not).
* DLPack: torch CUDA tensors in and out share memory with ``reuse_outputs=True`` and are fresh
  arrays by default; the stream hand-off orders a torch op queued on a side stream right
  before the call and one right after it; cuBLAS (``gemm="cublas"``) gives the reference's
  numbers on test_cuda_cublas_choice's GEMMs and is captured into the CUDA graph (or
  ``stats["cuda_graph"]`` says why not); ``gemm="auto"`` times once, a second compile takes
  the cached choices, cuBLAS wins a large square float32 GEMM; a second process takes the
  cubins and GEMM choices from the cache (NVRTC and the timer made to fail there).

Each test takes the ``gpu`` fixture: ``cuda`` is the real device (skipped with the backend's
own reason where ``get_backend("cuda").is_available()`` is False), ``fake`` the stand-in of
fake_cupy.py (host memory, kernels under emulation, a NumPy cuBLAS), on which the same test
code runs with no-op delays and streams, so that a mistake in a test costs no device minutes.
Whole graphs run on the stand-in for a few cases (``SMOKE``); every case is built and compiled
for ``cuda`` on it (``test_every_case_compiles_for_cuda_on_the_fake_gpu``). A GPU session runs
``-k "not fake"`` (benchmarks/gpu_session.sh). What the device did that is a measurement rather
than a verdict (capture of cuBLAS calls, timed choices) is appended as JSON lines to
``$GRAPHOPT_DEVICE_FACTS`` when that is set.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import graphopt
import test_cuda_backend as t_backend
import test_cuda_bf16 as t_bf16
import test_cuda_cublas_choice as t_cublas
import test_cuda_int8 as t_int8
import test_cuda_int8_models as t_int8_models
import test_cuda_int8_tc as t_int8_tc
import test_cuda_models as t_models
import test_cuda_nhwc as t_nhwc
import test_cuda_resize as t_resize
import test_cuda_rowfused as t_row
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda import compile_nvrtc, cublas, int8_tc
from graphopt.plugins.cuda.compile_emu import emu_available

HERE = Path(__file__).resolve().parent


# -- whole graphs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphCase:
    """``build() -> (graph, feeds, reference outputs)``; ``check(got, want, graph, feeds)``;
    ``api``: ``graphopt.compile`` options (None: ``Backend.compile``, as the emu test does);
    ``patches``: ``(module, attribute, value)`` in force while compiling and running."""

    build: Callable[[], tuple]
    check: Callable[[list, list, object, dict], None]
    api: dict | None = None
    patches: tuple = ()


CASES: dict[str, GraphCase] = {}


def with_reference(build):
    """``build() -> (graph, feeds)`` made into ``() -> (graph, feeds, reference outputs)``."""
    def made():
        g, feeds = build()
        return g, feeds, run_reference(g, feeds)
    return made


def close(rtol: float, atol: float, same_dtype: bool = True):
    def check(got, want, graph, feeds):
        assert len(got) == len(want)
        for v, a, r in zip(graph.outputs, got, want):
            assert a.shape == r.shape and (a.dtype == r.dtype or not same_dtype), v.name
            np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=rtol, atol=atol,
                                       err_msg=v.name)
    return check


def exact(got, want, graph, feeds):
    assert len(got) == len(want)
    for v, a, r in zip(graph.outputs, got, want):
        np.testing.assert_array_equal(a, r, err_msg=v.name, strict=True)  # dtype and shape too


def _backend_case(name, ops, build):
    def made():
        missing = t_backend._missing(ops)
        if missing:
            pytest.skip(f"ops not in the registry yet: {missing}")
        return with_reference(build)()
    tol = 1e-2 if name == "float16_on_tensor_cores" else 1e-4  # half-precision outputs
    return GraphCase(made, close(tol, tol))


for _name, (_ops, _build) in t_backend.GRAPHS.items():
    CASES[f"backend.{_name}"] = _backend_case(_name, _ops, _build)

for _name in [*t_resize.CASES, "upsample_opset9"]:
    _half = t_resize.CASES.get(_name, ((), "float32"))[1] == "float16"
    CASES[f"resize.{_name}"] = GraphCase(
        with_reference(t_resize.upsample if _name == "upsample_opset9" else lambda n=_name: t_resize.build(n)),
        exact if "nearest" in _name else close(1e-3, 1e-3) if _half else close(1e-5, 1e-5))

for _name, _build in t_int8.GRAPHS.items():  # 'tile' cases get their big tiles with one SM
    CASES[f"int8.{_name}"] = GraphCase(with_reference(_build), exact,
                                       patches=((t_int8.int8_mod, "SM_COUNT", 1),) if "tile" in _name else ())

for _name, _build in {**t_int8_tc.FORCED, **t_int8_tc.NATURAL}.items():  # forced onto tensor cores as there
    _knobs = ("MMA_MIN_MN", "MMA_MIN_K", "MMA_MIN_MACS") if _name in t_int8_tc.FORCED else ()
    CASES[f"int8_tc.{_name}"] = GraphCase(
        with_reference(_build), exact,
        patches=tuple((int8_tc, k, 0) for k in _knobs) + (((int8_tc, "SM_COUNT", 1),) if "tile" in _name else ()))


def _row_check(got, want, graph, feeds):
    class Ran:  # test_cuda_rowfused.check runs an executable: hand it what the device computed
        def run(self, _feeds):
            return got

    t_row.check(graph, feeds, Ran())


for _name, _build in t_row.GRAPHS.items():
    CASES[f"rowfused.{_name}"] = GraphCase(with_reference(_build), _row_check)


def _bert_rows():
    g = t_row._bert()
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 1000, (2, 16)).astype(np.int64),
             "attention_mask": np.ones((2, 16), np.int64)}
    feeds["attention_mask"][1, 12:] = 0
    return g, feeds


CASES["rowfused.bert_after_fuse_row_reduce"] = GraphCase(with_reference(_bert_rows), close(1e-3, 1e-4))

_HAND_BUILT = {"small_cnn": (t_models.small_cnn, t_models.CNN_OPS),
               "transformer_block": (t_models.transformer_block, t_models.BLOCK_OPS)}
for _name, (_build, _ops) in _HAND_BUILT.items():
    CASES[f"models.{_name}"] = GraphCase(with_reference(lambda b=_build, o=_ops: t_models._build_or_skip(b, o)),
                                         close(1e-4, 1e-4))


def _float16_model(build, ops):
    def made():
        g, feeds = t_models._build_or_skip(build, ops)
        want = run_reference(g, feeds)  # float32: the half-precision model stays close to it
        return t_models.as_float16(g), {k: v.astype(np.float16) for k, v in feeds.items()}, want
    return made


for _name, (_build, _ops) in _HAND_BUILT.items():
    CASES[f"models.{_name}-float16"] = GraphCase(_float16_model(_build, _ops), close(3e-2, 3e-2, same_dtype=False))


def _sample(name, batch=2, seed=0):
    def made():
        pytest.importorskip("torch")
        models = pytest.importorskip("samples.models")
        g = models.load_graph(name)
        x = g.inputs[0]
        if batch is None:  # test_cuda_models.sample_feeds
            feeds = t_models.sample_feeds(g)
        else:  # test_cuda_nhwc: the image input at this batch
            shape = tuple(d if isinstance(d, int) else batch for d in x.type.shape)
            feeds = {x.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
        return g, feeds, run_reference(g, feeds)
    return made


for _name in t_int8_models.SAMPLES:
    CASES[f"samples.{_name}"] = GraphCase(_sample(_name, batch=None), close(1e-3, 1e-3), api={})


def _int8_sample(name):
    def made():
        pytest.importorskip("torch")
        models = pytest.importorskip("samples.models")
        from graphopt.quantize import lower_int8, quantize_static

        g = models.load_graph(name)
        low = lower_int8(quantize_static(g, [t_models.sample_feeds(g, seed=s) for s in (1, 2)]))
        feeds = t_models.sample_feeds(g, seed=3)
        return low, feeds, run_reference(low, feeds)
    return made


def _int8_sample_check(name):
    if name not in t_int8_models.FLOAT_ISLANDS:
        return exact

    def check(got, want, graph, feeds):
        for a, r in zip(got, want):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * float(np.abs(r).max()))
    return check


for _name in t_int8_models.SAMPLES:
    CASES[f"int8_samples.{_name}"] = GraphCase(_int8_sample(_name), _int8_sample_check(_name))


def _int8_convnet():
    from graphopt.quantize import lower_int8, quantize_static

    qc = t_int8_models._quant_models()
    low = lower_int8(quantize_static(qc.build_convnet(), qc.batches()))
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    return low, feeds, run_reference(low, feeds)


CASES["int8_samples.hand_built_convnet"] = GraphCase(_int8_convnet, exact, api={})

_NHWC_TOL = {"float32": (1e-4, 1e-5), "float16": (1e-2, 1e-2), "bfloat16": (1.6e-2, 1.6e-2)}
for _dtype, (_rtol, _atol) in _NHWC_TOL.items():
    CASES[f"nhwc.nodes-{_dtype}"] = GraphCase(with_reference(lambda d=_dtype: t_nhwc.nhwc_graph(d)),
                                              close(_rtol, _atol), api={"level": 0})
for _name in ("resnet_style", "mobilenet_v2_style"):
    CASES[f"nhwc.{_name}-O3"] = GraphCase(_sample(_name), close(1e-3, 1e-3), api={"level": 3})

for _level in (0, 2):
    CASES[f"bf16.graph-O{_level}"] = GraphCase(with_reference(t_bf16.bf16_graph), close(1.6e-2, 1.6e-2),
                                               api={"level": _level})


def _nan_rows_allowed(build):
    def made():
        with np.errstate(invalid="ignore"):  # the masked row is NaN in the reference too
            return with_reference(build)()
    return made


CASES["models.causal_where_mask_nan_row"] = GraphCase(
    _nan_rows_allowed(t_models.causal_where_mask_with_a_row_masked_everywhere), close(1e-4, 1e-5), api={})
CASES["bf16.nchw_convs_and_pools"] = GraphCase(with_reference(t_bf16.bf16_nchw_cnn), close(1.6e-2, 1.6e-2),
                                               api={"level": 0})

# the cases that also run end to end on the stand-in (each is one emulation build there)
SMOKE = ["backend.gemm_family", "int8.qadd_int8_clip", "rowfused.masked-softmax-epilogue",
         "models.small_cnn-float16", "samples.mnist_convnet"]


@contextlib.contextmanager
def patched(case: GraphCase):
    with pytest.MonkeyPatch.context() as m:
        for module, attr, value in case.patches:
            m.setattr(module, attr, value)
        yield


def compile_case(case: GraphCase, g):
    """``g`` compiled for ``cuda`` the way its emu test compiles it (call inside ``patched``)."""
    if case.api is None:
        return get_backend("cuda").compile(g)
    return graphopt.compile(g, backend="cuda", **case.api)


def static_executable(compiled, feeds):
    """The ``CudaExecutable`` that runs ``feeds`` (a dynamic batch compiles it for their shapes)."""
    exe = getattr(compiled, "executable", compiled)  # a CompiledModel or a backend's executable
    if hasattr(exe, "for_feeds"):
        exe = exe.for_feeds(feeds)
    return exe


# -- the device, real or stand-in -------------------------------------------------------------------


def fresh_compile(forbid_builds: bool, patch=setattr) -> dict:
    """What a new process gets compiling test_cuda_cublas_choice's GEMMs with ``gemm="auto"``: the
    choice and its reason per node. With ``forbid_builds`` NVRTC and the GEMM timer fail, so only
    the cache (``$GRAPHOPT_CACHE_DIR``) can serve. Run by ``python -c`` on a GPU."""
    if forbid_builds:
        def refuse(*args, **kw):
            raise AssertionError("built or timed again: the cache was not used")

        cached_file = compile_nvrtc.cached_file
        patch(compile_nvrtc, "cached_file", lambda kind, key, suffix, build, **kw: cached_file(
            kind, key, suffix, refuse, **kw))
        patch(cublas, "time_on_device", refuse)
    m = graphopt.compile(t_cublas.gemm_graph(), backend="cuda")
    f = t_cublas.feeds(0)
    t_cublas.check(m(*f.values()), f)
    return {node: {"choice": c["choice"], "reason": c["reason"]} for node, c in m.stats["gemm"]["choices"].items()}


FRESH_PROCESS = ("import json, sys\nfrom test_cuda_device import fresh_compile\n"
                 "print(json.dumps(fresh_compile(sys.argv[1] == 'forbid')))")

SPIN = r"""extern "C" __global__ void go_test_spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}"""


class RealGpu:
    """The GPU through CuPy and torch."""

    kind = "cuda"

    def __init__(self):
        import cupy

        self.cp = cupy

    def cycles(self, ms: float) -> int:
        """About ``ms`` of the SM clock (2 GHz where the device does not say: CUDA 13 dropped the attribute)."""
        try:
            khz = int(self.cp.cuda.Device().attributes.get("ClockRate") or 2_000_000)
        except Exception:
            khz = 2_000_000
        return int(ms * khz)

    @staticmethod
    def torch():
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA here")
        return torch

    def tensor(self, x: np.ndarray):
        """``x`` as a torch CUDA tensor."""
        return self.torch().from_numpy(x).to("cuda")

    @staticmethod
    def host(a) -> np.ndarray:
        return a.cpu().numpy() if hasattr(a, "cpu") else a.get()

    def side_stream(self):
        return self.torch().cuda.Stream()

    def on(self, stream):
        return self.torch().cuda.stream(stream)

    def torch_sleep(self, ms: float) -> None:
        """Queue ``ms`` of GPU time on torch's current stream."""
        self.torch().cuda._sleep(self.cycles(ms))

    def hold(self, stream, ms: float) -> None:
        """Queue ``ms`` of GPU time on a CuPy ``stream``."""
        with stream:
            self.cp.RawKernel(SPIN, "go_test_spin")((1,), (1,), (np.int64(self.cycles(ms)),))

    def synchronize(self) -> None:
        self.cp.cuda.Device().synchronize()

    @staticmethod
    def same_device(a, b) -> bool:
        return a.device == b.device

    @staticmethod
    def timing(monkeypatch) -> None:
        """The GEMM timer: the device's own."""

    @staticmethod
    def fresh_process(cache: Path, forbid_builds: bool) -> dict:
        res = subprocess.run([sys.executable, "-c", FRESH_PROCESS, "forbid" if forbid_builds else "build"],
                             cwd=HERE, env={**os.environ, "GRAPHOPT_CACHE_DIR": str(cache)},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])


class FakeGpu(RealGpu):
    """fake_cupy's stand-in: host memory as device memory; streams, delays and devices are no-ops."""

    kind = "fake"

    def __init__(self, cp, monkeypatch):
        self.cp = cp
        self.monkeypatch = monkeypatch

    def tensor(self, x: np.ndarray):
        from test_cuda_dlpack import on_cuda

        return on_cuda(x)

    def side_stream(self):
        return None

    def on(self, stream):
        return contextlib.nullcontext()

    def torch_sleep(self, ms: float) -> None:
        pass

    def hold(self, stream, ms: float) -> None:
        pass

    def synchronize(self) -> None:
        pass

    @staticmethod
    def same_device(a, b) -> bool:
        return True

    @staticmethod
    def timing(monkeypatch) -> None:
        """cuBLAS wins the GEMMs of 2^30 multiply-adds or more, the generated kernel the others."""
        def fake_time(run, stream, reps=cublas.REPS):
            big = run.spec.M * run.spec.N * run.spec.K >= 2 ** 30
            return (0.5 if big else 2.0) if run.kind == "cublas" else 1.0

        monkeypatch.setattr(cublas, "time_on_device", fake_time)

    def fresh_process(self, cache: Path, forbid_builds: bool) -> dict:
        with pytest.MonkeyPatch.context() as m:  # in this process: the cache is on disk either way
            m.setenv("GRAPHOPT_CACHE_DIR", str(cache))
            return fresh_compile(forbid_builds, m.setattr)


@pytest.fixture
def gpu(request):
    """``cuda``: the real device, or a skip with the backend's reason; ``fake``: the stand-in."""
    if request.param == "cuda":
        ok, why = get_backend("cuda").is_available()
        if not ok:
            pytest.skip(why)
        return RealGpu()
    ok, why = emu_available()
    if not ok:
        pytest.skip(f"no CUDA emulation: {why}")
    cp, _ = request.getfixturevalue("fake_gpu")
    return FakeGpu(cp, request.getfixturevalue("monkeypatch"))


both = pytest.mark.parametrize("gpu", ["cuda", "fake"], indirect=True)


def fact(gpu, what: str, value) -> None:
    """Append a measurement (not a verdict) to ``$GRAPHOPT_DEVICE_FACTS``, on the real device only."""
    path = os.environ.get("GRAPHOPT_DEVICE_FACTS")
    if path and gpu.kind == "cuda":
        with open(path, "a") as f:
            f.write(json.dumps({"what": what, "value": value}, default=str) + "\n")


def captured_or_explained(exe) -> bool:
    """After three runs: the launches were captured into a CUDA graph, or ``stats`` says why not."""
    status = exe.stats["cuda_graph"]
    assert exe.cuda_graph is not None or status.startswith("off: capture failed ("), status
    return exe.cuda_graph is not None


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu, name", [("cuda", n) for n in CASES] + [("fake", n) for n in SMOKE],
                         indirect=["gpu"])
def test_graph_matches_cpu_reference_and_replays_identically(gpu, name):
    case = CASES[name]
    g, feeds, want = case.build()
    with patched(case):
        compiled = compile_case(case, g)
        runs = [compiled.run(feeds) for _ in range(3)]  # direct launches, capture and replay, replay
    case.check(runs[0], want, g, feeds)
    for later in runs[1:]:
        for a, b in zip(later, runs[0]):
            np.testing.assert_array_equal(a, b, strict=True)  # NaN where NaN
    exe = static_executable(compiled, feeds)
    if not captured_or_explained(exe):
        fact(gpu, f"cuda_graph {name}", exe.stats["cuda_graph"])


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_compiles_for_cuda_on_the_fake_gpu(fake_gpu, name):
    """Each case's graph, feeds, reference and check, and its compile for ``cuda`` on the stand-in
    (no kernel runs: the kernels are the emu tests'), so a slip in a case costs no device time.

    The compile is production's: the real NVRTC with ``NVRTC_OPTIONS`` for sm_90, each kernel's cubin
    checked to hold it; the same translation units are compiled for sm_80 too. These cases are the
    whole graphs of every kernel family's emulation tests in each dtype they support (float32,
    float16, bfloat16, int8), so this is the CI check that real NVRTC accepts all of them."""
    from graphopt.plugins.cuda.compile_nvrtc import compile_kernels

    case = CASES[name]
    g, feeds, want = case.build()
    case.check(want, want, g, feeds)
    with patched(case):
        exe = static_executable(compile_case(case, g), feeds)
    assert exe.stats["backend"] == "cuda" and exe.stats["launches"] == len(exe.steps)
    compile_kernels(exe.lowered.kernels, "sm_80")


@both
def test_dlpack_shares_memory_both_ways_with_reuse_outputs(gpu, monkeypatch):
    from test_cuda_dlpack import check, graph, x_

    m = graphopt.compile(graph(), backend="cuda", reuse_outputs=True)
    imported = []
    from_dlpack = gpu.cp.from_dlpack
    monkeypatch.setattr(gpu.cp, "from_dlpack", lambda a: imported.append(from_dlpack(a)) or imported[-1])
    x = gpu.tensor(x_(0))
    y, s = m(x)
    assert [a.data.ptr for a in imported] == [x.data_ptr()]  # cupy.from_dlpack of the torch tensor: its memory
    ours = {b.data.ptr for b in m.executable.outputs.values()}
    assert {y.data_ptr(), s.data_ptr()} == ours  # torch.from_dlpack of our buffers: no copy
    assert gpu.same_device(y, x) and gpu.same_device(s, x)
    gpu.synchronize()
    check([gpu.host(y), gpu.host(s)], x_(0))
    m(gpu.tensor(x_(1)))
    gpu.synchronize()
    check([gpu.host(y), gpu.host(s)], x_(1))  # aliasing, as documented: the next call overwrote them


@both
def test_outputs_are_fresh_device_arrays_by_default(gpu):
    from test_cuda_dlpack import check, graph, x_

    m = graphopt.compile(graph(), backend="cuda")
    x = gpu.tensor(x_(0))
    outs = m(x)
    assert {o.data_ptr() for o in outs}.isdisjoint(b.data.ptr for b in m.executable.outputs.values())
    assert all(gpu.same_device(o, x) for o in outs)
    gpu.synchronize()
    kept = [gpu.host(o).copy() for o in outs]
    check(kept, x_(0))
    for seed in (1, 2):  # a capture, a replay: earlier results stay as they were
        m(gpu.tensor(x_(seed)))
    gpu.synchronize()
    for o, k in zip(outs, kept):
        np.testing.assert_array_equal(gpu.host(o), k)
    got = m(gpu.cp.asarray(x_(3)))  # CuPy in, CuPy out
    assert all(isinstance(o, gpu.cp.ndarray) for o in got)
    check([o.get() for o in got], x_(3))


@both
@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reuse"])
def test_torch_side_stream_work_is_ordered_before_and_after_the_call(gpu, reuse):
    """On a side stream: torch sleeps, then writes the input; the call must read the new input;
    our stream is held busy, and a torch op right after the call must still read its result
    (with ``reuse`` the buffer holds the previous call's result until then)."""
    from test_cuda_dlpack import graph, x_

    m = graphopt.compile(graph(), backend="cuda", reuse_outputs=reuse)
    m(gpu.tensor(x_(0)))  # the output buffers now hold the results for x_(0)
    x, new = gpu.tensor(x_(0)), gpu.tensor(x_(1))
    side = gpu.side_stream()
    gpu.synchronize()
    gpu.hold(m.executable.stream, 100)  # our work starts late...
    with gpu.on(side):
        gpu.torch_sleep(20)  # ...and torch's input is written late
        x.copy_(new)
        y, s = m(x)
        z, t = y * 2, s + 1
    gpu.synchronize()
    want = run_reference(graph(), {"x": x_(1)})
    np.testing.assert_allclose(gpu.host(z), 2 * want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gpu.host(t), want[1] + 1, rtol=1e-5, atol=1e-5)


@both
def test_cublas_gemms_match_the_reference_inside_a_cuda_graph(gpu):
    m = graphopt.compile(t_cublas.gemm_graph(), backend="cuda", gemm="cublas")
    gemm = m.stats["gemm"]
    assert gemm["mode"] == "cublas" and len(gemm["cublas"]) == 4 and gemm["generated"] == []
    first = None
    for seed in (0, 1, 0, 0):  # direct, captured, replayed twice
        f = t_cublas.feeds(seed)
        got = m(*f.values())
        t_cublas.check(got, f)
        if seed == 0 and first is None:
            first = got
        elif seed == 0:
            for a, b in zip(got, first):
                np.testing.assert_array_equal(a, b)
    fact(gpu, "cuBLAS in a CUDA graph", "captured" if captured_or_explained(m.executable)
         else m.stats["cuda_graph"])


@both
def test_auto_times_once_reuses_the_choice_and_picks_cublas_for_a_big_gemm(gpu, monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    gpu.timing(monkeypatch)
    f = t_cublas.feeds(2)
    m = graphopt.compile(t_cublas.gemm_graph(), backend="cuda")
    t_cublas.check(m(*f.values()), f)
    choices = m.stats["gemm"]["choices"]
    assert len(choices) == 4 and {c["reason"] for c in choices.values()} == {"timed on this device"}
    fact(gpu, "gemm=auto choices", choices)
    again = graphopt.compile(t_cublas.gemm_graph(), backend="cuda")
    t_cublas.check(again(*f.values()), f)
    assert {c["reason"] for c in again.stats["gemm"]["choices"].values()} == {"cached timing"}
    assert again.stats["gemm"]["cublas"] == m.stats["gemm"]["cublas"]
    b = GraphBuilder()
    n = 2048
    b.output(b.op("MatMul", b.input("a", (n, n)), np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)),
             "y")
    (big,) = graphopt.compile(b.graph, backend="cuda").stats["gemm"]["choices"].values()
    fact(gpu, f"gemm=auto {n}^3 float32", big)
    assert big["choice"] == "cublas", big  # cuBLAS should win a large square float32 GEMM


@both
def test_a_second_process_reuses_the_cubins_and_gemm_choices(gpu, tmp_path):
    cache = tmp_path / "shared-cache"
    first = gpu.fresh_process(cache, forbid_builds=False)
    assert {c["reason"] for c in first.values()} == {"timed on this device"}
    entries = sorted(p.name for p in (cache / "cuda-nvrtc").iterdir())
    second = gpu.fresh_process(cache, forbid_builds=True)  # NVRTC and the timer fail there
    assert {c["reason"] for c in second.values()} == {"cached timing"}
    assert {k: c["choice"] for k, c in second.items()} == {k: c["choice"] for k, c in first.items()}
    assert sorted(p.name for p in (cache / "cuda-nvrtc").iterdir()) == entries
