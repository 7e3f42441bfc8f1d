"""Concat without copies (plugins/cpu/concat.py): native convs feeding a Concat write into its
slices; numbers against the registry's kernels, the result fresh on every run, the copies kept
where a slice would be strided or the input is read elsewhere, and two threads at once."""
import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu import CpuExecutable, native
from test_native import assert_threads_agree

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

RNG = np.random.default_rng(11)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def fire(n=1, extra=None):
    """SqueezeNet's fire module: a squeeze conv, two expand convs concatenated (and ``extra(b, x,
    e1)``'s values appended to the Concat's inputs, or its outputs)."""
    b = GraphBuilder()
    x = b.input("x", (n, 16, 13, 13))
    s = b.op("Relu", b.op("Conv", x, rand(8, 16, 1, 1), rand(8)))
    e1 = b.op("Relu", b.op("Conv", s, rand(32, 8, 1, 1), rand(32)))
    e3 = b.op("Relu", b.op("Conv", s, rand(24, 8, 3, 3), rand(24), pads=[1, 1, 1, 1]))
    more = extra(b, x, e1) if extra else []
    b.output(b.op("Sigmoid", b.op("Concat", e1, e3, *more, axis=1)), "y")
    return b.graph


def check(g, taken):
    import graphopt

    exe = graphopt.compile(g.clone(), backend="cpu", level=2)  # the convs take their Relu
    assert exe.stats["concat_in_place"] == taken
    feeds = {"x": rand(*g.inputs[0].type.shape)}
    want = CpuExecutable(g, fast=False).run(feeds)[0]
    first = exe.run(feeds)[0]
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)
    kept = first.copy()
    second = exe.run({"x": rand(*g.inputs[0].type.shape)})[0]  # a new array: the first result untouched
    assert second is not first and not np.shares_memory(second, first)
    np.testing.assert_array_equal(first, kept)
    return exe


def test_both_expand_convs_write_into_the_concat():
    exe = check(fire(), 2)
    steps = {st.node.op_type: st for st in exe.executable.interp.steps}
    assert getattr(steps["FusedConv"].call, "native", False)  # the producers are still native steps


def test_other_inputs_are_copied_beside_them():
    # a graph input and a non-conv result among the pieces: copied, the convs still in place
    check(fire(extra=lambda b, x, e1: [x, b.op("Tanh", x)]), 2)


def test_strided_slices_and_shared_inputs_keep_the_copy():
    check(fire(n=2), 0)  # batch 2 along the channels: each input's slice is strided

    def shared(b, x, e1):  # e1 is read by another node too
        b.output(b.op("Neg", e1), "z")
        return []

    check(fire(extra=shared), 1)


def test_two_threads_run_one_executable():
    import graphopt

    g = fire()
    exe = graphopt.compile(g.clone(), backend="cpu", level=2)
    assert exe.stats["concat_in_place"] == 2
    ref = CpuExecutable(g, fast=False)
    feeds = [{"x": rand(1, 16, 13, 13)} for _ in range(2)]
    assert_threads_agree(exe, feeds, [ref.run(f)[0] for f in feeds], reps=30, rtol=1e-5, atol=1e-5)
