"""fold_shape_arithmetic: shape chains with symbolic dims fold to constants (0 = copy, 1 = keep)."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.ir import TensorType
from graphopt.testing import assert_same_outputs, run_passes

I64 = np.int64


def ops(g):
    return [n.op_type for n in g]


def fold(g):
    return run_passes(g, ["fold_shape_arithmetic"], fixed_point=False).records[0]


def dim(b, x, i):
    """Unsqueeze(Gather(Shape(x), i)): one dim as a 1-D shape value, as PyTorch writes it."""
    return b.op("Unsqueeze", b.op("Gather", b.op("Shape", x), np.array(i, I64), axis=0), np.array([0], I64))


def test_pytorch_flatten_chain_becomes_reshape_with_copy():
    b = GraphBuilder()
    x = b.input("x", ("N", 4, 8))
    shape = b.op("Concat", dim(b, x, 0), np.array([-1], I64), axis=0)
    b.output(b.op("Reshape", x, shape), "y")
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.stats == {"reshape_shapes_folded": 1, "nodes_removed": 4}
    assert ops(b.graph) == ["Reshape"]
    np.testing.assert_array_equal(b.graph.nodes[0].input(1).const, [0, -1])
    assert_same_outputs(g0, b.graph, batch=3)


def test_static_dims_and_arithmetic_fold_symbolic_ones_stay():
    b = GraphBuilder()
    x = b.input("x", ("N", "T", 768))
    heads = b.op("Div", b.op("Gather", b.op("Shape", x), np.array(2, I64)), np.array(12, I64))   # 64
    shape = b.op("Concat", dim(b, x, 0), dim(b, x, 1), np.array([12], I64), b.op("Unsqueeze", heads,
                 np.array([0], I64)), axis=0)
    y = b.op("Reshape", x, shape)                                   # [0, 0, 12, 64]
    half = b.op("Mul", b.op("Gather", b.op("Shape", x, start=1), np.array([1], I64)), np.array(1, I64))
    b.output(y, "y")
    b.output(half, "last_dim")                                      # [768]: a graph output keeps its name
    b.output(b.op("Shape", x), "shape")                             # symbolic: stays
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.modified and rec.stats["reshape_shapes_folded"] == 1
    reshape = next(n for n in b.graph if n.op_type == "Reshape")
    np.testing.assert_array_equal(reshape.input(1).const, [0, 0, 12, 64])
    last = b.graph.outputs[1]
    assert last.name == "last_dim" and last.const.tolist() == [768] and last.const.dtype == np.int64
    assert ops(b.graph) == ["Reshape", "Shape"]
    assert_same_outputs(g0, b.graph, {"x": np.random.default_rng(0).standard_normal((2, 5, 768), np.float32)})


def test_expand_equal_where_and_slice():
    b = GraphBuilder()
    x = b.input("x", ("N", 1))
    y = b.input("y", ("N", 5))
    sy = b.op("Shape", y)
    n_is_n = b.op("Equal", b.op("Slice", sy, np.array([0], I64), np.array([1], I64)),
                  b.op("Slice", b.op("Shape", x), np.array([0], I64), np.array([1], I64)))
    first = b.op("Where", n_is_n, b.op("Slice", sy, np.array([0], I64), np.array([1], I64)),
                 np.array([7], I64))                                 # decidable: N
    target = b.op("Concat", first, b.op("Slice", sy, np.array([-1], I64), np.array([2 ** 62], I64)), axis=0)
    b.output(b.op("Expand", x, target), "z")                         # [N, 5] against x: [1, 5]
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.stats["expand_shapes_folded"] == 1 and ops(b.graph) == ["Expand"]
    np.testing.assert_array_equal(b.graph.nodes[0].input(1).const, [1, 5])
    assert_same_outputs(g0, b.graph, batch=4)


def test_dynamo_style_allowzero_reshape_and_placeholder_symbols():
    b = GraphBuilder()
    x = b.input("x", ("B", "T", 96))
    img = b.input("img", ("B", 3))
    part = b.op("Slice", x, np.array([0], I64), np.array([32], I64), np.array([2], I64))
    # ONNX inference before folding could not see the bounds: placeholder symbols
    part.type = TensorType("float32", ("unk__0", "unk__1", 32))
    target = b.op("Concat", b.op("Shape", img, start=0, end=1), b.op("Shape", x, start=1, end=2),
                  np.array([4, 8], I64), axis=0)
    b.output(b.op("Reshape", part, target, allowzero=1), "y")            # [B, T, 4, 8] -> [0, 0, 4, 8]
    t = b.op("Unsqueeze", b.op("Mul", b.op("Gather", b.op("Shape", x), np.array(1, I64)), np.array(2, I64)),
             np.array([0], I64))
    w = b.input("w", ("T", 2, 24))
    b.output(b.op("Reshape", w, b.op("Concat", t, np.array([24], I64), axis=0)), "z")   # [T*2, 24] -> [-1, 24]
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.stats["reshape_shapes_folded"] == 2 and ops(b.graph) == ["Slice", "Reshape", "Reshape"]
    r1, r2 = b.graph.nodes[1:]
    np.testing.assert_array_equal(r1.input(1).const, [0, 0, 4, 8])
    assert "allowzero" not in r1.attrs
    np.testing.assert_array_equal(r2.input(1).const, [-1, 24])
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 96), np.float32), "img": rng.standard_normal((2, 3), np.float32),
             "w": rng.standard_normal((3, 2, 24), np.float32)}
    assert_same_outputs(g0, b.graph, feeds)


def test_must_not_fire_when_a_dim_is_not_the_inputs_own():
    b = GraphBuilder()
    x = b.input("x", ("N", 4))
    other = b.input("other", ("M", 2))
    shape = b.op("Concat", dim(b, other, 0), np.array([-1], I64), axis=0)
    b.output(b.op("Reshape", x, shape), "y")                          # M is not x's dim 0
    zero = b.op("Concat", dim(b, x, 0), np.array([0], I64), axis=0)
    b.graph.make_node("Reshape", [x, zero], {"allowzero": 1})       # a literal 0: allowzero matters
    b.output(b.graph.nodes[-1].output, "z")
    before = ops(b.graph)
    rec = fold(b.graph)
    assert not rec.modified and ops(b.graph) == before
    assert sorted(why for _, why in rec.refused) == ["Reshape shape has a dim that is not the input's own",
                                                     "Reshape with allowzero=1 and a literal 0"]


def test_a_static_type_never_pins_an_input_symbol():
    b = GraphBuilder()
    x = b.input("x", ("B", 4))
    y = b.op("Relu", x)
    y.type = TensorType("float32", (2, 4))          # as a traced value_info might say
    n = b.op("Gather", b.op("Shape", x), np.array([0], I64))
    b.output(b.op("Reshape", y, b.op("Concat", n, np.array([4], I64), axis=0)), "y")
    fold(b.graph)
    assert y.type.shape == (2, 4) and x.type.shape == ("B", 4)
    reshape = b.graph.nodes[-1]                     # B is not y's dim 0 by its type, and not 2 either:
    np.testing.assert_array_equal(reshape.input(1).const, [-1, 4])   # the one dim left over is -1


def _bert_embeddings(b, ids):
    """What the TorchScript exporter writes for BERT's position ids and token types with a
    dynamic sequence: ``position_ids[:, :seq]`` (a Slice of a [1, 128] buffer by a length
    read from Shape), ``expand`` through Where(Equal(shape, -1), 1, shape), and
    ``arange(seq)`` for a mask."""
    seq = b.op("Gather", b.op("Shape", ids), np.array(1, I64), axis=0)
    pos = b.op("Slice", np.arange(128, dtype=I64)[None], np.array([0], I64), b.op("Unsqueeze", seq, np.array([0], I64)),
               np.array([1], I64), np.array([1], I64))                         # [1, min(128, seq)]
    shape = b.op("Concat", dim(b, ids, 0), dim(b, ids, 1), axis=0)
    shape = b.op("Where", b.op("Equal", shape, np.array([-1, -1], I64)), np.array([1, 1], I64), shape)
    types = b.op("Expand", np.zeros((1, 128), I64)[:, :1], shape)                 # [batch, seq]
    rows = b.op("Range", np.array(0, I64), seq, np.array(1, I64))               # [seq]
    return pos, types, rows


def test_symbolic_slice_range_and_expand_dims_resolve():
    b = GraphBuilder()
    ids = b.input("ids", ("batch", "seq"), "int64")
    pos, types, rows = _bert_embeddings(b, ids)
    x = b.op("Add", b.op("Add", b.op("Cast", ids, to=1), b.op("Cast", types, to=1)), b.op("Cast", pos, to=1))
    r = b.op("Unsqueeze", b.op("Cast", rows, to=1), np.array([0], I64))
    y = b.op("Add", x, r)                                                      # [batch, seq]
    # a Reshape whose target reads the dims of y: foldable once y's dims are known to be (batch, seq)
    b.output(b.op("Reshape", y, b.op("Concat", dim(b, y, 0), dim(b, y, 1), np.array([1], I64), axis=0)), "out")
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.stats["where_decided"] == 1 and rec.stats["reshape_shapes_folded"] == 1
    assert "Where" not in ops(b.graph) and "Equal" not in ops(b.graph)
    assert next(n for n in b.graph if n.op_type == "Reshape").input(1).const.tolist() == [0, 0, 1]
    assert b.graph.outputs[0].shape == ("batch", "seq", 1)
    assert next(n for n in b.graph if n.op_type == "Slice").output.shape == (1, "min(128,seq)")
    assert next(n for n in b.graph if n.op_type == "Range").output.shape == ("seq",)
    for batch, seq in ((2, 5), (3, 9)):
        feeds = {"ids": np.random.default_rng(seq).integers(0, 100, (batch, seq), dtype=I64)}
        assert_same_outputs(g0, b.graph, feeds)


def test_min_dim_is_not_taken_for_a_dim_it_does_not_broadcast_with():
    """x[:, :seq] of a [1, 128] buffer broadcast against another symbol keeps it unknown."""
    b = GraphBuilder()
    ids = b.input("ids", ("batch", "seq"), "int64")
    other = b.input("other", ("batch", "len"), "int64")
    pos, _, _ = _bert_embeddings(b, ids)
    y = b.op("Add", pos, other)
    b.output(y, "y")
    fold(b.graph)
    assert y.shape[1] not in ("seq", "len")
