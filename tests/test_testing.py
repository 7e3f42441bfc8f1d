"""graphopt.testing: feeds that fit the graph, comparisons that name what differs."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, random_feeds, run_passes, tolerance_for


def test_random_feeds_bind_symbols_and_keep_indices_in_range():
    b = GraphBuilder()
    x = b.input("x", ("batch", "seq", 4))
    ids = b.input("ids", ("batch", 7), "int64")
    mask = b.input("mask", (3,), "bool")
    table = b.const(np.zeros((5, 2), np.float32))
    b.output(b.op("Gather", table, ids), "e")
    b.output(b.op("Relu", x), "y")
    b.output(b.op("Not", mask), "m")
    f = random_feeds(b.graph, seed=1, batch=3, dims={"seq": 6})
    assert f["x"].shape == (3, 6, 4) and f["x"].dtype == np.float32
    assert f["ids"].shape == (3, 7) and f["ids"].dtype == np.int64 and 0 <= f["ids"].min() and f["ids"].max() < 5
    assert f["mask"].dtype == bool
    np.testing.assert_array_equal(random_feeds(b.graph, seed=1, batch=3, dims={"seq": 6})["x"], f["x"])


def test_assert_same_outputs_names_the_output_and_the_error():
    b = GraphBuilder()
    x = b.input("x", (4,))
    b.output(b.op("Mul", x, np.float32(2)), "y")
    other = GraphBuilder()
    ox = other.input("x", (4,))
    other.output(other.op("Mul", ox, np.float32(2.001)), "y")
    assert_same_outputs(b.graph, b.graph.clone())
    with pytest.raises(AssertionError, match=r"output 'y': max abs error .*max rel error 0\.0005"):
        assert_same_outputs(b.graph, other.graph)
    assert_same_outputs(b.graph, other.graph, rtol=1e-3)  # an explicit tolerance wins for floats


def test_dtype_and_name_changes_fail_and_integers_are_exact():
    def graph(to, name="y"):
        b = GraphBuilder()
        b.output(b.op("Cast", b.input("x", (3,)), to=to), name)
        return b.graph

    with pytest.raises(AssertionError, match=r"output 'y': int64\[3\] before, int32\[3\] after"):
        assert_same_outputs(graph(7), graph(6))
    with pytest.raises(AssertionError, match="output names changed"):
        assert_same_outputs(graph(7), graph(7, "z"))
    assert tolerance_for("int64") == (0.0, 0.0) and tolerance_for(np.float16) == (1e-3, 1e-3)
    assert tolerance_for("bfloat16") == (1.6e-2, 1.6e-2) and tolerance_for("float32") == (1e-4, 1e-5)


def test_run_passes_verifies_and_reports():
    b = GraphBuilder()
    x = b.input("x", (2,))
    b.op("Neg", x)
    b.output(b.op("Identity", b.op("Relu", x)), "y")
    rep = run_passes(b.graph, ["eliminate_noops", "eliminate_dead_code"])
    assert rep.nodes_before == 3 and rep.nodes_after == 1 and rep.iterations == 2
    assert [n.op_type for n in b.graph] == ["Relu"] and b.graph.outputs[0].name == "y"
