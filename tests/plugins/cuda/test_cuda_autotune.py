"""Autotuning (autotune.py): every candidate schedule of a tunable family computes the same
numbers as the reference under emulation; on the CuPy stand-in with a fake timer the fastest
candidate's launch replaces the table's, the model still matches the CPU reference, the choice
is cached for the next compile (nothing timed), ``tune="table"`` times nothing, and the table's
choice wins a tie. cuda-emu has no device to time on: its schedules are the table's."""
import numpy as np
import pytest

import graphopt
from cuda_harness import Case, check_case, module_library, needs_emu
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.errors import GraphoptError
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda import autotune
from graphopt.plugins.cuda.autotune import candidates, schedule_of
from graphopt.plugins.cuda.flash_attention import make_flash_attention, render_flash_attention
from graphopt.plugins.cuda.reduce import make_row_reduce, render_row_reduce

ROW = make_row_reduce("softmax", (6, 300), (1,))
FLASH = make_flash_attention((1, 2), 40, 40, 32, 32)


def _softmax_case(spec, i):
    def make(rng):
        x = rng.standard_normal((6, 300)).astype(np.float32)
        e = np.exp(x - x.max(1, keepdims=True))
        return (6, 300), np.float32, [x], e / e.sum(1, keepdims=True)
    return Case(f"softmax-candidate-{i}-{schedule_of(spec)}", render_row_reduce(spec), spec, make)


def _flash_case(spec, i):
    def make(rng):
        q, k, v = (rng.standard_normal((1, 2, 40, 32)).astype(np.float16) for _ in range(3))
        s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64)) * spec.scale
        p = np.exp(s - s.max(-1, keepdims=True))
        ref = np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v.astype(np.float64))
        return (1, 2, 40, 32), np.float16, [q, k, v], ref.astype(np.float32)
    return Case(f"flash-candidate-{i}-{schedule_of(spec)}", render_flash_attention(spec), spec, make, 1e-3, 1e-3)


CASES = [_softmax_case(s, i) for i, s in enumerate(candidates(ROW))] + \
        [_flash_case(s, i) for i, s in enumerate(candidates(FLASH))]


def test_candidates_start_with_the_tables_choice_and_differ_only_in_schedule():
    rows, flash = candidates(ROW), candidates(FLASH)
    assert rows[0] == ROW and flash[0] == FLASH
    assert {(s.tx, s.rpb) for s in rows} == {(32, 1), (32, 2), (32, 4), (64, 1), (128, 1), (256, 1)}
    assert {(s.tile.warps, s.tile.bc) for s in flash} == {(1, 64), (1, 32), (2, 64), (2, 32)}  # 64 rows > 40
    assert all(s.q == FLASH.q and s.scale == FLASH.scale for s in flash)
    short = make_row_reduce("sum", (2, 4), (1,))  # no block path for 4 columns, no blocks of more rows than 2
    assert [(s.tx, s.rpb) for s in candidates(short)] == [(32, 2), (32, 1)]


@pytest.fixture(scope="module")
def lib():
    return module_library(CASES)


@needs_emu
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_candidate_matches_the_reference(lib, case):
    check_case(lib, case)


def graph():
    b = GraphBuilder()
    q, k, v = (b.input(n, (1, 2, 40, 32), "float16") for n in "qkv")
    att = b.op("Attention", q, k, v, domain="ai.graphopt", scale=0.25)
    b.output(att, "att")
    x = b.input("x", (6, 300))
    b.output(b.op("Softmax", x, axis=-1), "p")
    b.output(b.op("Softmax", b.op("Relu", x), axis=-1), "p2")  # the same row kernel: timed once
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 40, 32)).astype(np.float16) for n in "qkv"}
    feeds["x"] = rng.standard_normal((6, 300)).astype(np.float32)
    return b.graph, feeds


def prefer_last(calls):
    """A fake timer: each candidate's time falls with its block size, so the last candidate wins."""
    def timer(run, stream, reps=autotune.REPS):
        calls.append(run.block)
        return 1.0 / (run.block[0] * run.block[1] * (run.grid[0] + 1))
    return timer


def test_the_fastest_candidate_replaces_the_launch_and_is_cached(fake_gpu, monkeypatch):
    g, feeds = graph()
    calls = []
    monkeypatch.setattr(autotune, "time_on_device", prefer_last(calls))
    m = graphopt.compile(g, backend="cuda", level=0, tune="auto")
    exe = m.executable
    tuning = exe.stats["tuning"]
    assert tuning["mode"] == "auto" and len(tuning["choices"]) == 2  # two distinct kernels, three launches
    assert len(calls) == len(candidates(FLASH)) + len(candidates(ROW))
    for i, l in enumerate(exe.lowered.launches):
        cands = candidates(l.kernel.spec)
        if len(cands) == 1:  # Relu: not tunable
            continue
        choice = tuning["choices"][l.kernel.name]
        best = min(range(len(cands)), key=lambda j: 1.0 / (cands[j].block()[0] * cands[j].block()[1]
                                                          * (cands[j].grid()[0] + 1)))
        assert choice["choice"] == best and choice["reason"] == "timed on this device"
        assert (exe.steps[i].grid, exe.steps[i].block) == (cands[best].grid(), cands[best].block())
    for got, want in zip(m(**feeds), run_reference(g, feeds)):
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3, atol=1e-3)
    # a second compile on the same GPU reuses the choices and times nothing
    monkeypatch.setattr(autotune, "time_on_device", lambda *a, **k: pytest.fail("timed again"))
    again = graphopt.compile(g, backend="cuda", level=0, tune="auto").executable
    assert {c["reason"] for c in again.stats["tuning"]["choices"].values()} == {"cached timing"}
    assert [(s.grid, s.block) for s in again.steps] == [(s.grid, s.block) for s in exe.steps]


def test_table_mode_and_ties_keep_the_tables_schedule(fake_gpu, monkeypatch):
    g, feeds = graph()
    monkeypatch.setattr(autotune, "time_on_device", lambda *a, **k: pytest.fail("timed under tune='table'"))
    exe = graphopt.compile(g, backend="cuda", level=0).executable  # the stand-in's default: GRAPHOPT_TUNE=table
    assert exe.stats["tuning"] == {"mode": "table", "choices": {}}
    monkeypatch.setattr(autotune, "time_on_device", lambda *a, **k: 1.0)
    tied = graphopt.compile(g, backend="cuda", level=0, tune="auto").executable
    assert all(c["choice"] == 0 for c in tied.stats["tuning"]["choices"].values())
    assert [(s.grid, s.block) for s in tied.steps] == [(l.grid, l.block) for l in tied.lowered.launches]
    with pytest.raises(GraphoptError, match="tune='fast': use one of 'auto', 'table'"):
        graphopt.compile(g, backend="cuda", level=0, tune="fast")
