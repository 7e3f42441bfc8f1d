"""cancel_transposes: Transposes move down elementwise chains and cancel, only when the
count of Transposes goes down; reshaping chains merge. Numbers stay exactly the same."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

from pass_helpers import ops, refusals

RNG = np.random.default_rng(0)
I64 = np.int64
P = [0, 2, 3, 1]      # NCHW -> NHWC
INV = [0, 3, 1, 2]    # NHWC -> NCHW


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def cancel(g):
    return run_passes(g, ["cancel_transposes", "eliminate_dead_code"], fixed_point=False).records[0]


def t(b, x, perm=P):
    return b.op("Transpose", x, perm=perm)


# (name, body(b, x, y) -> out, ops left, Transposes before -> after)
FIRES = [
    ("unary", lambda b, x, y: t(b, b.op("Relu", t(b, x)), INV), ["Relu"]),
    ("const_channel_vector", lambda b, x, y: t(b, b.op("Add", t(b, x), rand(3)), INV), ["Add"]),
    ("const_first_operand", lambda b, x, y: t(b, b.op("Div", rand(5, 1), t(b, x)), INV), ["Div"]),
    ("scalar_and_chain", lambda b, x, y: t(b, b.op("Sigmoid", b.op("Mul", t(b, x), np.float32(2))), INV),
     ["Mul", "Sigmoid"]),
    ("both_operands_transposed", lambda b, x, y: t(b, b.op("Mul", t(b, x), t(b, y)), INV), ["Mul"]),
    ("other_operand_gets_inverse", lambda b, x, y: t(b, b.op("Sub", t(b, x), b.op("Exp", y, name="e")), INV),
     ["Exp", "Transpose", "Sub"]),
    ("composes_into_one", lambda b, x, y: t(b, b.op("Neg", t(b, x)), [0, 2, 1, 3]), ["Neg", "Transpose"]),
    ("clip_with_scalar_bounds", lambda b, x, y: t(b, b.op("Clip", t(b, x), np.float32(-1), np.float32(1)), INV),
     ["Clip"]),
    ("prelu_slope", lambda b, x, y: t(b, b.op("PRelu", t(b, x), rand(1, 1, 3)), INV), ["PRelu"]),
]


@pytest.mark.parametrize("name,body,left", FIRES, ids=[f[0] for f in FIRES])
def test_fires_and_keeps_numbers(name, body, left):
    b = GraphBuilder(opset=17)
    x = b.op("Tanh", b.input("x", ("n", 3, 4, 5)))
    y = b.op("Tanh", b.input("y", ("n", 4, 5, 3)) if "inverse" in name else b.input("y", ("n", 3, 4, 5)))
    b.output(body(b, x, y), "out")
    g0 = b.graph.clone()
    rec = cancel(b.graph)
    assert rec.modified and rec.stats == {"transpose_through_elementwise_to_cancel": 1}
    assert [o for o in ops(b.graph) if o != "Tanh"] == left
    assert b.graph.outputs[0].name == "out" and b.graph.outputs[0].type == g0.outputs[0].type
    assert_same_outputs(g0, b.graph, rtol=0, atol=0)  # a permutation of the same arithmetic: exact


def test_chain_read_by_two_transposes_cancels_both():
    b = GraphBuilder(opset=17)
    r = b.op("Relu", t(b, b.op("Tanh", b.input("x", (2, 3, 4, 5)))))
    b.output(t(b, r, INV), "a")
    b.output(b.op("Exp", t(b, r, INV)), "b")
    g0 = b.graph.clone()
    assert cancel(b.graph).modified
    assert ops(b.graph) == ["Tanh", "Relu", "Exp"]
    assert_same_outputs(g0, b.graph, rtol=0, atol=0)


def refused(body):
    return refusals(lambda b: body(b, b.op("Tanh", b.input("x", (2, 3, 4, 5)))), ["cancel_transposes"])


def test_count_that_would_not_go_down_is_refused():
    # Sub(T(x), y) read by a Transpose that does not undo T: 2 Transposes either way
    def body(b, x):
        return t(b, b.op("Sub", t(b, x), b.input("y", (2, 4, 5, 3))), [0, 2, 1, 3])
    assert refused(body) == {"would leave 2 Transposes for 2"}


def test_lower_rank_operand_is_refused():
    def body(b, x):
        return t(b, b.op("Add", t(b, x), b.input("v", (3,))), INV)
    assert refused(body) == {"operand 'v' of Add has a lower rank and is not a constant"}


def test_graph_output_on_the_way_is_refused():
    def body(b, x):
        r = b.op("Relu", t(b, x))
        return t(b, r, INV), r
    assert refused(body) == {"a value on the way is a graph output"}


@pytest.mark.parametrize("body", [
    lambda b, x: b.op("MatMul", t(b, x), rand(3, 2)),                          # nothing to meet
    lambda b, x: (lambda tx: (t(b, b.op("Relu", tx), INV), b.op("Relu", tx)))(t(b, x)),  # T has two readers
    lambda b, x: b.op("Exp", b.op("Relu", t(b, x))),                           # no Transpose at the end
    lambda b, x: t(b, t(b, x), INV),                                           # eliminate_noops's rule
], ids=["matmul", "two_readers", "no_end", "transpose_transpose"])
def test_nothing_to_cancel_is_left_alone(body):
    assert refused(body) == set()


# -- reshaping chains ------------------------------------------------------------------------

RESHAPES = [
    ("unsqueeze_unsqueeze", ("n", 16),
     lambda b, x: b.op("Unsqueeze", b.op("Unsqueeze", x, np.array([1], I64)), np.array([2], I64)),
     ["Unsqueeze"], "unsqueeze_unsqueeze_to_unsqueeze", [1, 2]),
    ("unsqueeze_unsqueeze_negative", (3, 4),
     lambda b, x: b.op("Unsqueeze", b.op("Unsqueeze", x, np.array([0, -1], I64)), np.array([-2, 1], I64)),
     ["Unsqueeze"], "unsqueeze_unsqueeze_to_unsqueeze", [0, 1, 4, 5]),
    ("reshape_after_unsqueeze", ("n", 6),
     lambda b, x: b.op("Reshape", b.op("Unsqueeze", x, np.array([0], I64)), np.array([-1, 2, 3], I64)),
     ["Reshape"], "reshape_after_reshaping_to_reshape", None),
    ("squeeze_of_reshape_static", (2, 3),
     lambda b, x: b.op("Squeeze", b.op("Reshape", x, np.array([1, 6], I64)), np.array([0], I64)),
     ["Reshape"], "reshaping_chain_to_static_reshape", None),
]


@pytest.mark.parametrize("name,shape,body,left,rule,axes", RESHAPES, ids=[r[0] for r in RESHAPES])
def test_reshaping_chains_merge(name, shape, body, left, rule, axes):
    b = GraphBuilder(opset=17)
    x = b.op("Relu", b.input("x", shape))
    b.output(body(b, x), "y")
    g0 = b.graph.clone()
    rec = cancel(b.graph)
    assert rec.modified and rec.stats == {rule: 1}
    assert ops(b.graph) == ["Relu"] + left
    if axes is not None:
        assert list(b.graph.nodes[-1].input(1).const) == axes
    assert b.graph.outputs[0].type == g0.outputs[0].type
    assert_same_outputs(g0, b.graph, rtol=0, atol=0)


def test_reshape_that_copies_an_intermediate_dim_is_refused():
    b = GraphBuilder(opset=17)
    x = b.input("x", ("n", 6))
    b.output(b.op("Reshape", b.op("Flatten", x, axis=1), np.array([0, 2, 3], I64)), "y")
    rec = cancel(b.graph)
    assert not rec.modified
    assert {why for (_, why) in rec.refused} == {"0 in the shape copies a dim of the intermediate"}


@pytest.mark.parametrize("shape, perm, target, fires", [
    (("batch", 1, 1, 8), [0, 3, 1, 2], [0, -1], True),      # timm ConvNeXt's head: only unit axes move
    ((2, 1, 4, 1), [2, 1, 0, 3], [8], False),                # 2 and 4 swap: the data order changes
    (("batch", 1, 1, 8), [1, 0, 2, 3], [0, -1], False),      # the 0 would copy the moved unit axis
])
def test_reshape_of_a_transpose_of_unit_axes(shape, perm, target, fires):
    b = GraphBuilder()
    x = b.input("x", shape)
    b.output(b.op("Reshape", t(b, x, perm), np.array(target, I64)), "y")
    g0 = b.graph.clone()
    cancel(b.graph)
    assert ops(b.graph) == (["Reshape"] if fires else ["Transpose", "Reshape"])
    assert_same_outputs(g0, b.graph, rtol=0, atol=0)
