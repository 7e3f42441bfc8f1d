"""The pass manager: fixed point, bounded; errors name the pass and its predecessors."""
import pytest

from graphopt import GraphBuilder
from graphopt.errors import PassError
from graphopt.passmanager import PassContext, PassInfo, PassManager, PassResult


def graph():
    b = GraphBuilder()
    x = b.input("x", (2,))
    b.output(b.op("Relu", b.op("Neg", x)), "y")
    return b.graph


def test_fixed_point_stops_when_nothing_changes():
    calls = []

    def shrink(g, ctx):
        calls.append(len(g))
        first = next(iter(g), None)
        if first is not None and first.op_type == "Neg":
            first.output.replace_all_uses_with(first.input(0))
            g.remove(first)
            return PassResult(True, {"removed": 1})
        return PassResult(False)

    g = graph()
    report = PassManager([PassInfo("shrink", shrink)], PassContext(verify=True)).run(g)
    assert report.iterations == 2 and calls == [2, 1]
    assert report.nodes_before == 2 and report.nodes_after == 1
    assert report.summary()[0]["applied"]["removed"] == 1


def test_fixed_point_is_bounded():
    def always(g, ctx):
        return PassResult(True)

    report = PassManager([PassInfo("always", always)], max_iterations=3).run(graph())
    assert report.iterations == 3


def test_error_names_pass_and_predecessors():
    def ok(g, ctx):
        return PassResult(False)

    def broken(g, ctx):
        raise ValueError("boom")

    with pytest.raises(PassError) as ei:
        PassManager([PassInfo("first_ok", ok), PassInfo("second_broken", broken)]).run(graph())
    msg = str(ei.value)
    assert "second_broken" in msg and "boom" in msg and "first_ok" in msg


def test_verify_after_every_pass_catches_a_corrupting_pass():
    def corrupt(g, ctx):
        n = list(g)[1]
        g.move_before(list(g)[0], n)  # Relu before its input's producer
        return PassResult(True)

    with pytest.raises(PassError, match="corrupt.*before it is defined"):
        PassManager([PassInfo("corrupt", corrupt)], PassContext(verify=True)).run(graph())


def test_options_are_checked_against_what_passes_and_the_backend_read():
    import graphopt
    from graphopt.errors import GraphoptError
    from graphopt.passmanager import check_options
    from graphopt.plugin_loader import get_backend

    check_options({"keep_io_types": False, "_internal": 1})  # a pass reads it; "_" keys are internal
    with pytest.raises(GraphoptError, match=r"unknown option 'keep_io_type'"):
        check_options({"keep_io_type": False})
    with pytest.raises(GraphoptError, match=r"unknown option 'gemm': not read by backend 'cpu'"):
        check_options({"gemm": "cublas"}, get_backend("cpu"))
    check_options({"gemm": "generated"}, get_backend("cuda-emu"))
    b = graphopt.GraphBuilder()
    b.output(b.op("Relu", b.input("x", (2,))), "y")
    with pytest.raises(GraphoptError, match="unknown option 'fast'"):
        graphopt.optimize(b.graph, fast=True)
