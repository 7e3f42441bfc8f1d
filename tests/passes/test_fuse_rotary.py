"""fuse_rotary / fuse_rotary_onnx: transformers' rotary embedding (q * cos + rotate_half(q) * sin,
full or GPT-NeoX's partial) becomes ai.graphopt::RotaryEmbedding (any opset: the same arithmetic,
so equal bits) or ONNX's RotaryEmbedding (opset 23, half-width caches expanded to the batch);
numbers against the unfused graph on the reference and in onnxruntime (float32 defaults)."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, random_feeds, run_passes
from pass_helpers import ops

RNG = np.random.default_rng(0)
H, S, D = 4, 6, 16


def last(b, x, start, end):
    return b.op("Slice", x, np.array([start], np.int64), np.array([end], np.int64), np.array([-1], np.int64))


def rotate_half(b, x, d):
    return b.op("Concat", b.op("Neg", last(b, x, d // 2, 1 << 62)), last(b, x, 0, d // 2), axis=-1)


def caches(b, rd, cos_input=False):
    """cos/sin [1, 1, S, rd] as LLaMA computes them: Cos/Sin(Concat(f, f)) of positions x inv_freq."""
    if cos_input:
        return b.input("cos", (1, 1, S, rd)), b.input("sin", (1, 1, S, rd))
    pos = b.op("Unsqueeze", b.op("Cast", b.op("Range", np.int64(0), np.int64(S), np.int64(1)), to=1),
               np.array([0, 2], np.int64))                           # [1, S, 1]
    inv = (1.0 / 10000 ** (np.arange(0, rd, 2) / rd)).astype(np.float32)
    f = b.op("Mul", pos, inv)                                         # [1, S, rd/2]
    emb = b.op("Concat", f, f, axis=-1)
    return tuple(b.op("Unsqueeze", b.op(op, emb), np.array([1], np.int64)) for op in ("Cos", "Sin"))


def rope(b, x, cos, sin, d, order=0):
    a, r = b.op("Mul", x, cos), b.op("Mul", rotate_half(b, x, d), sin)
    return b.op("Add", a, r) if order == 0 else b.op("Add", r, a)


def graph(opset=23, partial=None, cos_input=False, order=0):
    b = GraphBuilder(opset=opset)
    q, k = b.input("q", ("batch", H, S, D)), b.input("k", ("batch", 2, S, D))
    rd = partial or D
    cos, sin = caches(b, rd, cos_input)
    for name, x in (("yq", q), ("yk", k)):
        if partial:
            y = b.op("Concat", rope(b, last(b, x, 0, rd), cos, sin, rd, order), last(b, x, rd, D), axis=-1)
        else:
            y = rope(b, x, cos, sin, D, order)
        b.output(y, name)
    return b.graph


def ort_equal(g0, g):
    ort = pytest.importorskip("onnxruntime")
    from graphopt.onnx_io import to_onnx_model

    feeds = random_feeds(g0, batch=2)
    want, got = (ort.InferenceSession(to_onnx_model(h).SerializeToString()).run(None, feeds) for h in (g0, g))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("partial", [None, 4])
def test_onnx_rotary_embedding_with_shared_half_caches(partial):
    g = graph(partial=partial, order=1)
    g0 = g.clone()
    rec = run_passes(g, ["fuse_rotary_onnx", "eliminate_dead_code"]).records[0]
    assert rec.stats == {"rotate_half_to_rotary_embedding": 2, **({"partial": 2} if partial else {})}
    rot = [n for n in g if n.op_type == "RotaryEmbedding"]
    assert len(rot) == 2 and rot[0].inputs[1:] == rot[1].inputs[1:]  # one expanded cache pair for both
    assert rot[0].attrs == ({"rotary_embedding_dim": partial} if partial else {})
    assert {"Neg", "Slice"} & set(ops(g)) == {"Slice"} and ops(g).count("Slice") == 2  # the caches' halves
    assert rot[0].input(1).producer.op_type == "Expand"  # onnxruntime wants the batch of X
    assert_same_outputs(g0, g, random_feeds(g0, batch=2))
    ort_equal(g0, g)


def test_lowering_writes_graphopt_rotary_at_any_opset():
    g = graph(opset=18, partial=4)
    g0 = g.clone()
    run_passes(g, ["fuse_rotary", "eliminate_dead_code"])
    rot = [n for n in g if n.op_type == "RotaryEmbedding"]
    assert [n.qualified_op for n in rot] == ["ai.graphopt::RotaryEmbedding"] * 2
    assert rot[0].attrs == {"rotary_dim": 4} and [v.name for v in rot[0].inputs[:1]] == ["q"]
    feeds = random_feeds(g0, batch=2)
    assert_same_outputs(g0, g, feeds, rtol=0, atol=0)  # the same arithmetic: the same bits


def test_caches_whose_halves_are_not_known_equal():
    # cos/sin given as inputs: their halves may differ, so ONNX's half-width caches cannot stand in
    g = graph(cos_input=True)
    rec = run_passes(g, ["fuse_rotary_onnx"], fixed_point=False).records[0]
    assert not rec.modified
    assert set(rec.refused) == {("rotate_half_to_rotary_embedding", "cos or sin is not Cos/Sin(Concat(f, f)) "
                                 "unsqueezed at axis 1: its halves may differ")}
    g0 = graph(cos_input=True)
    g = g0.clone()
    run_passes(g, ["fuse_rotary", "eliminate_dead_code"])  # graphopt's op takes them as they are
    assert ops(g) == ["RotaryEmbedding", "RotaryEmbedding"]
    assert_same_outputs(g0, g, random_feeds(g0, batch=2))


def test_halves_in_the_wrong_order_are_not_a_rotation():
    b = GraphBuilder(opset=23)
    x = b.input("x", (2, H, S, D))
    cos, sin = caches(b, D)
    wrong = b.op("Concat", b.op("Neg", last(b, x, 0, D // 2)), last(b, x, D // 2, D), axis=-1)
    b.output(b.op("Add", b.op("Mul", x, cos), b.op("Mul", wrong, sin)), "y")
    rec = run_passes(b.graph, ["fuse_rotary_onnx", "fuse_rotary"], fixed_point=False).records
    assert not any(r.modified for r in rec) and "RotaryEmbedding" not in ops(b.graph)
