"""Memory planning reuses buffers whose lifetimes do not overlap."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.memory import plan_memory
from graphopt.plugins.cpu import CpuBackend


def chain(n, size=1024):
    b = GraphBuilder()
    v = b.input("x", (size,))
    for _ in range(n):
        v = b.op("Relu", v)
    b.output(v, "y")
    return b.graph


def test_chain_needs_two_buffers_whatever_its_length():
    for n in (3, 10, 50):
        plan = plan_memory(chain(n))
        assert plan.peak_bytes == 2 * 4096, n  # ping-pong between two buffers
        assert plan.naive_bytes == (n - 1) * 4096


def test_overlapping_lifetimes_do_not_share():
    b = GraphBuilder()
    x = b.input("x", (256,))
    a = b.op("Relu", x)
    c = b.op("Neg", x)
    d = b.op("Add", a, c)  # a and c both alive here
    b.output(b.op("Sigmoid", d), "y")
    plan = plan_memory(b.graph)
    assert plan.offsets[a] != plan.offsets[c]
    spans = {v: (o, o + 1024) for v, o in plan.offsets.items()}
    live = [a, c]
    (a0, a1), (c0, c1) = spans[a], spans[c]
    assert a1 <= c0 or c1 <= a0


def test_cpu_backend_reports_planned_peak_and_runs():
    g = chain(5, 64)
    exe = CpuBackend().compile(g)
    assert exe.stats["planned_peak_bytes"] == 2 * 256
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    np.testing.assert_array_equal(exe.run({"x": x})[0], np.maximum(x, 0))
