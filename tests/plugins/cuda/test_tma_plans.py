"""TMA tensor maps in the backends' launch plans (``kernel.DerivedArg``, ``wgmma_tma.TensorMapArg``).

With the wgmma engine, the MatMul/Gemm lowering asks for TMA loads (``wgmma_tma.prefer_tma``): the
kernel's last two parameters are tensor maps over its ``a`` and ``b`` buffers, which the
executables make from the buffers' addresses. Whole graphs -- MatMul + bias + Relu, a BERT-like
chain with float16 weights, a graph input as A and as B, a graph output read as the next GEMM's
A, ragged M/N/K, a [1, S, H] batch of one, a transposed Gemm weight, a [2, 3, S, H] batch over a
shared weight folded into one taller GEMM -- are checked against the CPU reference:

* ``cuda-emu``: maps over constants and arena slots are encoded once; over inputs and outputs
  (new arrays each run) at every run, also in checked emulation (``GRAPHOPT_EMU_CHECK=race``);
* ``cuda`` on the CuPy stand-in (and on a real H100 where there is one): maps encoded once by
  ``device.encode_tensor_map`` (the stand-in's refuses what ``cuTensorMapEncodeTiled`` refuses)
  over the executable's fixed buffers, then replayed as a CUDA graph; a TMA GEMM swapped for
  cuBLAS or, by autotuning, for another schedule (with its own maps) still gives the right numbers;
* ``GRAPHOPT_CUDA_TMA=0`` keeps cp.async stages.
"""
import numpy as np
import pytest

from cuda_harness import aligned, needs_emu
from graphopt.plugins.cuda import emucheck, wgmma
from graphopt.plugins.cuda.tc_gemm import TcMatmulSpec
from graphopt.plugins.cuda.wgmma_tma import TMA_ENV, TensorMapArg

from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from test_wgmma_tma import hopper  # noqa: F401  (the fixture: a real Hopper, or the stand-in)

H = "float16"
TOL = dict(rtol=2e-3, atol=2e-2)  # float16 results of float32 accumulation, rounded between GEMMs


def bert_like():
    """x [1, 50, 72] -> Relu(x W1 + b1) = h1 (an output, and the next GEMM's A) -> h1 W2 + b2 ->
    Gemm with a transposed [24, 40] weight (K-major B) = y; and h2 k with the input k [40, 32] as B."""
    from graphopt.builder import GraphBuilder

    rng = np.random.default_rng(7)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float16)  # noqa: E731
    b = GraphBuilder("bert_like_tma")
    x, k = b.input("x", (1, 50, 72), H), b.input("k", (40, 32), H)
    h1 = b.op("Relu", b.op("Add", b.op("MatMul", x, w(72, 136)), w(136)))
    b.output(h1, "h1")
    h2 = b.op("Add", b.op("MatMul", h1, w(136, 40)), w(40))
    r = b.op("Reshape", h2, np.array([50, 40], np.int64))
    b.output(b.op("Gemm", r, w(24, 40), w(24), transB=1), "y")
    b.output(b.op("MatMul", h2, k), "z")
    return b.graph


def feeds(seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((1, 50, 72)).astype(np.float16),
            "k": (rng.standard_normal((40, 32)) * 0.3).astype(np.float16)}


def gemm_launches(exe):
    return [l for l in exe.lowered.launches if isinstance(l.kernel.spec, TcMatmulSpec)]


def assert_tma_plan(exe):
    """Every GEMM launch of the plan is a TMA wgmma kernel whose two trailing parameters are tensor
    maps over its A and B buffers; between them the maps cover a graph input as A and as B, and a
    graph output as A. Returns the operand names the maps cover."""
    gemms = gemm_launches(exe)
    assert len(gemms) == 4
    covered = set()
    for l in gemms:
        s, k = l.kernel.spec, l.kernel
        assert s.engine == "wgmma" and s.tma and not s.batch, l.kernel.name
        assert [p.name for p in k.params[-2:]] == ["tma_a", "tma_b"] and k.n_buffers == len(l.args)
        assert [(type(d), d.source, d.map.operand) for d in k.derived] == [(TensorMapArg, 1, "a"), (TensorMapArg, 2, "b")]
        a, bm = k.derived[0].map, k.derived[1].map
        assert (a.dims, a.box) == ((s.K, s.M), (64, s.tile.bm)) and a.kmajor  # row-major activations
        covered |= {(l.args[d.source].name, d.map.operand, d.map.kmajor) for d in k.derived}
    names = {(n, op) for n, op, _ in covered}
    assert {("x", "a"), ("k", "b"), ("h1", "a")} <= names, covered
    assert any(kmajor for n, op, kmajor in covered if op == "b")  # the transposed Gemm weight
    assert any(not kmajor for n, op, kmajor in covered if op == "b")  # the [K, N] weights
    return names


def check(model, graph, f):
    from graphopt.plugins.cpu import run_reference

    got, want = model.run(f), run_reference(graph, f)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), **TOL)
    return got


@pytest.fixture
def emu_encodings(monkeypatch):
    """The addresses the emulation's tensor maps are encoded over, in order."""
    seen = []
    real = TensorMapArg.host_value

    def spy(self, address):
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(TensorMapArg, "host_value", spy)
    return seen


@needs_emu
def test_a_bert_like_graph_of_tma_gemms_under_emulation(emu_encodings):
    import graphopt

    graph = bert_like()
    with wgmma.engine_forced("wgmma"):
        model = graphopt.compile(graph, backend="cuda-emu")
    assert_tma_plan(model.executable)
    f1 = feeds(1)
    check(model, graph, f1)
    first = list(emu_encodings)
    # four GEMMs, two maps each: four over fixed buffers (W1, W2, W3 and h2, the A of two GEMMs with one
    # tile height: one map serves both), made once; three over x, h1 and k, made per run (per seed)
    seeds = len(emucheck.race_seeds())
    assert len(first) == 4 + 3 * seeds and len(set(first)) == 7 + 1 * (seeds - 1)  # a new h1 array per seed
    # a second run on new input arrays: only the maps over inputs and outputs are made again, over them
    f2 = {k: aligned(v) for k, v in feeds(2).items()}  # taken as they are, not copied
    del emu_encodings[:]
    got = check(model, graph, f2)
    fresh = set(emu_encodings)
    assert len(emu_encodings) == 3 * len(emucheck.race_seeds())  # x, k and h1, per seed under the race check
    assert got[0].ctypes.data in fresh  # h1, returned
    if not emucheck.modes():  # (a check copies the feeds into allocations of their own)
        assert fresh == {f2["x"].ctypes.data, f2["k"].ctypes.data, got[0].ctypes.data}
    # and the first feeds again: nothing stale from the second run
    check(model, graph, f1)


@needs_emu
def test_tma_plans_pass_checked_emulation(monkeypatch):
    """Launch by launch (``_run_checked``): the maps made per launch over each seed's buffers; every
    thread order gives the same bits."""
    import graphopt

    monkeypatch.setenv("GRAPHOPT_EMU_CHECK", "race")
    graph = bert_like()
    with wgmma.engine_forced("wgmma"):
        model = graphopt.compile(graph, backend="cuda-emu")
    assert model.executable.checks == {"race"}
    assert_tma_plan(model.executable)
    for seed in (1, 2):
        check(model, graph, feeds(seed))


@needs_emu
def test_tma_off_keeps_cp_async_stages(monkeypatch):
    import graphopt
    from graphopt.errors import GraphoptError

    graph = bert_like()
    monkeypatch.setenv(TMA_ENV, "0")
    with wgmma.engine_forced("wgmma"):
        model = graphopt.compile(graph, backend="cuda-emu")
    gemms = gemm_launches(model.executable)
    assert len(gemms) == 4 and {(l.kernel.spec.engine, l.kernel.spec.tma) for l in gemms} == {("wgmma", False)}
    assert all(not l.kernel.derived and "tma_a" not in l.kernel.source for l in gemms)
    check(model, graph, feeds(3))
    monkeypatch.setenv(TMA_ENV, "maybe")
    with wgmma.engine_forced("wgmma"), pytest.raises(GraphoptError, match="GRAPHOPT_CUDA_TMA='maybe'"):
        graphopt.compile(graph, backend="cuda-emu")


def test_the_lowering_asks_for_tma_only_where_it_suits():
    """A batched GEMM, a broadcast vector operand (a zero row stride no tensor map takes) and the
    mma.sync engine keep cp.async; a [1, S, H] activation loses its batch of one and takes TMA."""
    from graphopt.plugins.cuda.lowerings.matmul import matmul_spec
    from graphopt.plugins.cuda.specs import View
    from graphopt.plugins.cuda.wgmma_tma import prefer_tma, tma_suits

    c = lambda *s: View.contiguous(H, s)  # noqa: E731
    with wgmma.engine_forced("wgmma"):
        flat = matmul_spec(H, 64, 64, 64, a=c(64, 64), b=c(64, 64), c=c(64, 64))
        batched = matmul_spec(H, 64, 64, 64, (2,), a=c(2, 64, 64), b=c(2, 64, 64), c=c(2, 64, 64))
        vector = matmul_spec(H, 1, 64, 64, a=View(H, (0, 1)), b=c(64, 64), c=c(1, 64))
    with wgmma.engine_forced("mma"):
        mma = matmul_spec(H, 64, 64, 64, a=c(64, 64), b=c(64, 64), c=c(64, 64))
    assert flat.tma and not batched.tma and not mma.tma
    assert "batched" in tma_suits(batched)
    assert vector.engine != "wgmma" or (not vector.tma and "row stride of 0 bytes" in tma_suits(vector))
    assert prefer_tma(mma) is mma


@needs_emu
@pytest.mark.parametrize("xs, rs, folded", [
    ((1, 40, 64), (1, 40, 48), True),        # a batch of one: dropped
    ((2, 3, 10, 64), (2, 3, 10, 48), True),  # batch dims that continue M, over a shared weight: folded
    ((2, 3, 10, 64), (2, 3, 1, 48), False),  # a residual that differs per batch entry but not per row: kept
], ids=["batch-of-one", "batch-folded-into-m", "per-batch-residual-kept"])
def test_a_shared_weight_gemm_over_a_batch_is_one_tall_gemm(xs, rs, folded):
    """[*batch, S, H] x [H, N] (+ a residual): one 2-D TMA GEMM of batch * S rows where every view
    allows it; the numbers either way."""
    import graphopt
    from graphopt.builder import GraphBuilder
    from graphopt.plugins.cpu import run_reference

    rng = np.random.default_rng(4)
    b = GraphBuilder("residual")
    x, r = b.input("x", xs, H), b.input("r", rs, H)
    b.output(b.op("Add", b.op("MatMul", x, (rng.standard_normal((64, 48)) * 0.1).astype(np.float16)), r), "y")
    with wgmma.engine_forced("wgmma"):
        model = graphopt.compile(b.graph, backend="cuda-emu")
    (l,) = gemm_launches(model.executable)
    s = l.kernel.spec
    rows = int(np.prod(xs[:-1]))
    if folded:
        assert (s.batch, s.M, s.tma) == ((), rows, True)
    else:
        assert s.batch == xs[:-2] and s.M == xs[-2] and not s.tma
    f = {"x": rng.standard_normal(xs).astype(np.float16), "r": rng.standard_normal(rs).astype(np.float16)}
    np.testing.assert_allclose(model.run(f)[0].astype(np.float32), run_reference(b.graph, f)[0].astype(np.float32),
                               **TOL)


@needs_emu
@pytest.mark.parametrize("layout, n, residual", [("NCHW", 1, False), ("NHWC", 1, False), ("NHWC", 2, False),
                                                 ("NCHW", 2, False), ("NHWC", 1, True), ("NCHW", 1, True)])
def test_pointwise_convs_lower_to_tma_gemms_where_the_batch_allows(layout, n, residual):
    """A 1x1 convolution (+ bias, Relu) is a GEMM: with one image an unbatched one, channels-last
    images fold into one taller M over the shared weight; both 2-D, so TMA loads them. NCHW images
    past one keep the batch (the shared operand is A there) and cp.async. Numbers every time."""
    import graphopt
    from graphopt.builder import GraphBuilder
    from graphopt.plugins.cpu import run_reference

    rng = np.random.default_rng(6)
    b = GraphBuilder("pointwise")
    x = b.input("x", (n, 8, 8, 32) if layout == "NHWC" else (n, 32, 8, 8), H)  # rows of 16-byte multiples
    w, bias = (rng.standard_normal((48, 32, 1, 1)) * 0.2).astype(np.float16), rng.standard_normal(48).astype(np.float16)
    out_shape = (n, 8, 8, 48) if layout == "NHWC" else (n, 48, 8, 8)
    extra = [b.input("r", out_shape, H)] if residual else []
    if layout == "NHWC":  # as convert_layout_nhwc writes it: W as [O, 1, 1, C]
        w = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    y = b.op("FusedConv", x, w, bias, *extra, domain="ai.graphopt", epilogue="relu(add(acc, in1))" if residual
             else "relu(acc)", layout=layout, kernel_shape=[1, 1])
    b.output(y, "y")
    with wgmma.engine_forced("wgmma"):
        model = graphopt.compile(b.graph, backend="cuda-emu", level=2)
    (l,) = gemm_launches(model.executable)
    s = l.kernel.spec
    two_d = layout == "NHWC" or n == 1
    assert (s.batch == (), s.tma) == (two_d, two_d) and s.engine == "wgmma"
    if layout == "NHWC":
        assert s.M == n * 64  # the images' pixels as rows
    f = {v.name: rng.standard_normal(v.type.shape).astype(np.float16) for v in b.graph.inputs}
    np.testing.assert_allclose(model.run(f)[0].astype(np.float32), run_reference(b.graph, f)[0].astype(np.float32),
                               **TOL)


# -- the device path: the CuPy stand-in here, a real Hopper where there is one -----------------------

@pytest.fixture
def tma_device(hopper, monkeypatch):
    """(``hopper``'s kind: a real device of compute capability 9.0, or the stand-in; the addresses
    tensor maps are encoded over), new GEMM specs getting wgmma."""
    from graphopt.plugins.cuda import device

    monkeypatch.setenv(wgmma.ENGINE_ENV, "wgmma")
    encoded = []
    real = device.encode_tensor_map

    def spy(address, *rest):
        encoded.append(address)
        return real(address, *rest)

    monkeypatch.setattr(device, "encode_tensor_map", spy)
    return hopper, encoded


def test_a_whole_graph_of_tma_gemms_through_the_device_seam(tma_device):
    """Maps encoded once, at plan time, over the executable's fixed buffers (inputs, outputs, arena,
    constants); the second run captures a CUDA graph and the third replays it, on new feeds."""
    import graphopt

    kind, encoded = tma_device
    graph = bert_like()
    model = graphopt.compile(graph, backend="cuda", gemm="generated")
    exe = model.executable
    assert_tma_plan(exe)
    for l in gemm_launches(exe):  # each map over the address of the buffer it describes
        for d in l.kernel.derived:
            assert int(exe.buffer(l.args[d.source]).data.ptr) + 2 * d.map.offset in encoded
    assert len(encoded) == len(set(encoded)) == 7  # h2's map serves two GEMMs
    for seed in (1, 2, 1):  # direct, captured, replayed
        check(model, graph, feeds(seed))
    assert len(encoded) == 7 and exe.cuda_graph is not None
    assert exe.stats["cuda_graph"].startswith("captured")


def test_a_tma_gemm_swapped_for_cublas_or_another_schedule(fake_gpu, monkeypatch):
    """``gemm="cublas"`` replaces the TMA launches (their maps unused, still alive); autotuning
    with a second schedule of each TMA GEMM (another tile, so other boxes) launches it with
    tensor maps of its own over the same buffers."""
    from dataclasses import replace

    import graphopt
    from graphopt.plugins.cuda import autotune
    from graphopt.plugins.cuda.tc_gemm import render_tc_matmul
    from graphopt.plugins.cuda.wgmma import WG_TILES

    monkeypatch.setenv(wgmma.ENGINE_ENV, "wgmma")
    graph = bert_like()
    blas = graphopt.compile(graph, backend="cuda", gemm="cublas")
    assert_tma_plan(blas.executable)
    assert len(blas.executable.stats["gemm"]["cublas"]) == 4
    for seed in (1, 2, 3):
        check(blas, graph, feeds(seed))

    # another tile height: A's box {64, bm} differs, so the candidate needs maps of its own
    other = {"64x64": WG_TILES["128x128"], "64x128": WG_TILES["128x128"], "128x128": WG_TILES["64x64"]}

    def gemm_candidates(spec):
        name = next(n for n, t in WG_TILES.items() if t == spec.tile)
        return [spec, replace(spec, tile=other[name])]

    calls = []

    def timed(run, stream, reps=autotune.REPS):  # each GEMM's second candidate is the faster
        calls.append(run)
        return 2.0 if len(calls) % 2 else 1.0

    monkeypatch.setitem(autotune.CANDIDATES, TcMatmulSpec, (gemm_candidates, render_tc_matmul))
    monkeypatch.setattr(autotune, "time_on_device", timed)
    tuned = graphopt.compile(graph, backend="cuda", gemm="generated", tune="auto")
    exe = tuned.executable
    choices = exe.stats["tuning"]["choices"]
    assert len(calls) == 8 and len(choices) == 4 and all(c["choice"] == 1 for c in choices.values())
    for l, step in zip(exe.lowered.launches, exe.steps):
        if not isinstance(l.kernel.spec, TcMatmulSpec):
            continue
        second = render_tc_matmul(gemm_candidates(l.kernel.spec)[1])
        assert second.spec.tma and second.derived != l.kernel.derived  # other boxes: maps of its own
        bufs = [int(exe.buffer(v).data.ptr) for v in l.args]
        assert step.args[-2:] == tuple(exe.derived.value(d, bufs[d.source]) for d in second.derived)
    for seed in (1, 2, 3):  # direct, captured, replayed
        check(tuned, graph, feeds(seed))
