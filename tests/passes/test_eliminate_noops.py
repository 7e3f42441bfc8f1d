"""eliminate_noops: each rule removes its no-op, leaves near misses alone, and keeps output names."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

I64 = np.int64


def ops(g):
    return [n.op_type for n in g]


def noops(g):
    return run_passes(g, ["eliminate_noops"], fixed_point=False).records[0]


# (name, input shape, body(b, x) -> y, ops left when the rule fires, opset)
FIRES = [
    ("identity", (2, 3), lambda b, x: b.op("Identity", x), []),
    ("dropout", (2, 3), lambda b, x: b.op("Dropout", x, np.float32(0.3), np.array(False)), []),
    ("cast_same", (2, 3), lambda b, x: b.op("Cast", x, to=1), []),
    ("reshape_same_static", (2, 3), lambda b, x: b.op("Reshape", x, np.array([2, -1], I64)), []),
    ("reshape_copy_symbolic", ("n", 3, 4), lambda b, x: b.op("Reshape", x, np.array([0, 3, -1], I64)), []),
    ("transpose_identity", (2, 3, 4), lambda b, x: b.op("Transpose", x, perm=[0, 1, 2]), []),
    ("transpose_transpose_cancel", (2, 3, 4),
     lambda b, x: b.op("Transpose", b.op("Transpose", x, perm=[1, 2, 0]), perm=[2, 0, 1]), []),
    ("transpose_transpose_compose", (2, 3, 4),
     lambda b, x: b.op("Transpose", b.op("Transpose", x, perm=[1, 0, 2]), perm=[0, 2, 1]), ["Transpose"]),
    ("reshape_reshape", ("n", 6),
     lambda b, x: b.op("Reshape", b.op("Reshape", x, np.array([0, 2, 3], I64)), np.array([0, 3, 2], I64)),
     ["Reshape"]),
    ("reshape_reshape_static_mid", (4, 6),
     lambda b, x: b.op("Reshape", b.op("Reshape", x, np.array([2, 12], I64)), np.array([0, -1, 3], I64)),
     ["Reshape"]),
    ("squeeze_unsqueeze", (2, 3),
     lambda b, x: b.op("Squeeze", b.op("Unsqueeze", x, np.array([0, -1], I64)), np.array([3, 0], I64)), []),
    ("unsqueeze_squeeze", (2, 1, 3),
     lambda b, x: b.op("Unsqueeze", b.op("Squeeze", x, np.array([-2], I64)), np.array([1], I64)), []),
    ("flatten_2d", ("n", 3), lambda b, x: b.op("Flatten", x, axis=1), []),
    ("expand_same", ("n", 3), lambda b, x: b.op("Expand", x, np.array([1, 3], I64)), []),
    ("concat_single", (2, 3), lambda b, x: b.op("Concat", x, axis=0), []),
    ("slice_everything", ("n", 3),
     lambda b, x: b.op("Slice", x, np.array([0, -5], I64), np.array([2 ** 63 - 1, 3], I64),
                       np.array([0, 1], I64)), []),
    ("pad_zero", (2, 3), lambda b, x: b.op("Pad", x, np.zeros(4, I64), mode="reflect"), []),
]

# the same ops where they do change something: no rule may fire
STAYS = [
    ("dropout_mask_read", lambda b, x: b.op("Add", *[b.op("Cast", m, to=1) if i else m for i, m in
                                                   enumerate(b.op("Dropout", x, num_outputs=2))]), "Dropout"),
    ("cast_other", lambda b, x: b.op("Cast", x, to=10), "Cast"),
    ("reshape_other", lambda b, x: b.op("Reshape", x, np.array([3, 2], I64)), "Reshape"),
    ("transpose_other", lambda b, x: b.op("Transpose", x, perm=[1, 0]), "Transpose"),
    ("squeeze_unsqueeze_other_axes",
     lambda b, x: b.op("Squeeze", b.op("Unsqueeze", x, np.array([0], I64)), np.array([1], I64)), "Squeeze"),
    ("flatten_axis0", lambda b, x: b.op("Flatten", x, axis=0), "Flatten"),
    ("expand_grows", lambda b, x: b.op("Expand", x, np.array([4, 2, 3], I64)), "Expand"),
    ("slice_part", lambda b, x: b.op("Slice", x, np.array([1], I64), np.array([3], I64), np.array([1], I64)),
     "Slice"),
    ("pad_some", lambda b, x: b.op("Pad", x, np.array([0, 1, 0, 0], I64)), "Pad"),
]


def build(shape, body):
    b = GraphBuilder(opset=17)
    x = b.input("x", shape)
    b.output(b.op("Relu", body(b, b.op("Neg", x))), "y")  # Neg/Relu: the no-op sits between nodes
    return b.graph


@pytest.mark.parametrize("name,shape,body,left", FIRES, ids=[f[0] for f in FIRES])
def test_rule_fires(name, shape, body, left):
    g = build(shape, body)
    g0 = g.clone()
    rec = noops(g)
    assert rec.modified
    assert ops(g) == ["Neg", *left, "Relu"]
    assert_same_outputs(g0, g, batch=2)


@pytest.mark.parametrize("name,body,op", STAYS, ids=[s[0] for s in STAYS])
def test_rule_must_not_fire(name, body, op):
    g = build((2, 3), body)
    before = ops(g)
    rec = noops(g)
    assert not rec.modified and ops(g) == before and op in before


def test_reshape_reshape_refuses_a_zero_that_copies_an_unknown_intermediate_dim():
    g = build(("n", 6), lambda b, x: b.op("Reshape", b.op("Reshape", x, np.array([-1, 2], I64)),
                                           np.array([0, 1, -1], I64)))
    rec = noops(g)
    assert not rec.modified and ops(g).count("Reshape") == 2
    assert rec.refused == {("reshape_reshape_to_reshape",
                            "0 at position 0 copies an intermediate dim that is not known"): 1}


def test_graph_output_names_are_kept():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 3))
    r = b.op("Relu", x)
    b.output(b.op("Identity", r), "y")                       # Relu's output takes the name "y"
    b.output(b.op("Transpose", x, perm=[0, 1]), "t")         # reads a graph input: becomes an Identity
    b.output(b.op("Identity", x), "i")                       # an Identity of a graph input must stay
    g0 = b.graph.clone()
    rec = noops(b.graph)
    assert rec.modified and ops(b.graph) == ["Relu", "Identity", "Identity"]
    assert [v.name for v in b.graph.outputs] == ["y", "t", "i"] and b.graph.outputs[0] is r
    assert rec.refused == {("identity_to_input", f"graph output {n!r} would become graph input 'x'"): 1
                           for n in "ti"}
    assert_same_outputs(g0, b.graph)


@pytest.mark.parametrize("opset", [11, 17])
def test_axes_as_attributes_or_inputs(opset):
    b = GraphBuilder(opset=opset)
    x = b.input("x", ("n", 3))
    if opset < 13:
        u = b.op("Unsqueeze", b.op("Neg", x), axes=[1])
        y = b.op("Squeeze", u, axes=[-2])
    else:
        u = b.op("Unsqueeze", b.op("Neg", x), np.array([1], I64))
        y = b.op("Squeeze", u, np.array([-2], I64))
    b.output(b.op("Relu", y), "y")
    g0 = b.graph.clone()
    assert noops(b.graph).modified and ops(b.graph) == ["Neg", "Relu"]
    assert_same_outputs(g0, b.graph, batch=3)
