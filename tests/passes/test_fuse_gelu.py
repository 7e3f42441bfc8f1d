"""fuse_gelu: the erf and tanh GELU chains, in every order exporters write them,
become one Gelu at opset 20; an older opset, a wrong constant or a shared
intermediate is refused with a reason.

Tolerance: the float32 default (rtol 1e-4 / atol 1e-5): Gelu's reference computes
the same formula.
"""
import math

import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

SQRT2 = np.float32(math.sqrt(2.0))


def ops(g):
    return [n.op_type for n in g]


def erf_arg(b, x, spelling):
    return b.op("Div", x, SQRT2) if spelling == "div" else b.op("Mul", np.float32(0.70710678), x)


def tanh_arg(b, x, cube):
    x3 = b.op("Pow", x, np.float32(3)) if cube == "pow" else b.op("Mul", x, b.op("Mul", x, x))
    inner = b.op("Add", x, b.op("Mul", np.float32(0.044715), x3))
    return b.op("Mul", np.float32(0.7978845608), inner)


def outer(b, x, f, order):
    """x * 0.5 * (1 + f) in the order given."""
    one_plus = b.op("Add", f, np.float32(1)) if order != "half_first" else b.op("Add", np.float32(1), f)
    half = np.float32(0.5)
    if order == "half_last":       # torch's TorchScript export
        return b.op("Mul", b.op("Mul", x, one_plus), half)
    if order == "half_first":
        return b.op("Mul", b.op("Mul", half, x), one_plus)
    if order == "half_bracket":
        return b.op("Mul", x, b.op("Mul", one_plus, half))
    return b.op("Div", b.op("Mul", one_plus, x), np.float32(2))


ORDERS = ["half_last", "half_first", "half_bracket", "div_two"]
CASES = ([("erf", arg, o) for arg in ("div", "mul") for o in ORDERS]
         + [("tanh", cube, o) for cube in ("pow", "mul") for o in ORDERS])


def gelu_graph(kind, spelling, order, opset=20, dtype="float32"):
    b = GraphBuilder(opset=opset)
    x = b.input("x", ("n", 16), dtype)
    f = b.op("Erf", erf_arg(b, x, spelling)) if kind == "erf" else b.op("Tanh", tanh_arg(b, x, spelling))
    b.output(outer(b, x, f, order), "y")
    return b.graph


def fuse(g, **ctx):
    return run_passes(g, ["fuse_gelu", "eliminate_dead_code"], **ctx).records[0]


@pytest.mark.parametrize("kind,spelling,order", CASES, ids=["-".join(c) for c in CASES])
def test_chain_becomes_gelu(kind, spelling, order):
    g = gelu_graph(kind, spelling, order)
    g0 = g.clone()
    rec = fuse(g)
    assert rec.modified and rec.stats == {f"gelu_{kind}_to_gelu": 1}
    assert ops(g) == ["Gelu"]
    assert g.nodes[0].attrs["approximate"] == ("none" if kind == "erf" else "tanh")
    assert g.outputs[0].name == "y" and not g.initializers
    assert_same_outputs(g0, g)


def test_opset_17_is_refused_with_the_reason():
    g = gelu_graph("erf", "div", "half_last", opset=17)
    rec = fuse(g)
    assert not rec.modified and "Gelu" not in ops(g)
    assert rec.refused == {("gelu_erf_to_gelu", "opset 17 < 20"): 1}


def test_target_opset_20_raises_the_opset_and_fuses():
    g = gelu_graph("tanh", "mul", "half_last", opset=17)
    g0 = g.clone()
    rec = fuse(g, target_opset=20)
    assert rec.modified and ops(g) == ["Gelu"] and g.opset_imports[""] == 20
    assert_same_outputs(g0, g)


def test_target_opset_refused_when_raising_would_change_another_node():
    g = gelu_graph("erf", "div", "half_last", opset=17)
    b = GraphBuilder(graph=g)
    grid = b.op("GridSample", b.input("img", (1, 1, 4, 4)), b.input("grid", (1, 2, 2, 2)), name="gs")
    b.output(grid, "z")
    rec = fuse(g, target_opset=20)
    assert "Gelu" not in ops(g) and g.opset_imports[""] == 17
    assert [why for (_, why) in rec.refused] == [
        "raising opset 17 to 20 would change GridSample (node 'gs', changed at opset 20)"]


def test_wrong_constant_is_refused():
    b = GraphBuilder(opset=20)
    x = b.input("x", (4, 8))
    f = b.op("Erf", b.op("Div", x, np.float32(2.0)))  # not x / sqrt(2)
    b.output(outer(b, x, f, "half_last"), "y")
    rec = fuse(b.graph)
    assert "Gelu" not in ops(b.graph)
    assert {why for (_, why) in rec.refused} == {"constant sqrt2 is not 1.414214"}


def test_shared_intermediate_is_refused():
    g = gelu_graph("erf", "div", "half_last")
    erf = next(n for n in g if n.op_type == "Erf")
    b = GraphBuilder(graph=g)
    b.output(b.op("Neg", erf.output), "z")  # the Erf is read elsewhere
    rec = fuse(g)
    assert "Gelu" not in ops(g)
    assert {why for (_, why) in rec.refused} == {f"Erf {erf.name!r} has 2 users"}


def test_broadcasting_constant_is_refused():
    b = GraphBuilder(opset=20)
    x = b.input("x", (4, 8))
    f = b.op("Erf", b.op("Div", x, np.full((3, 1, 1), SQRT2)))  # grows the rank
    b.output(outer(b, x, f, "half_last"), "y")
    rec = fuse(b.graph)
    assert "Gelu" not in ops(b.graph)
    assert {why for (_, why) in rec.refused} == {"shape unknown or changed by a broadcast constant"}


def test_float16_gelu():
    g = gelu_graph("erf", "div", "half_last", dtype="float16")
    g0 = g.clone()
    assert fuse(g).modified and ops(g) == ["Gelu"]
    assert_same_outputs(g0, g)
