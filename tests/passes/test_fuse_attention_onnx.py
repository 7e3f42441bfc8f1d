"""fuse_attention_onnx: scaled-dot-product attention becomes the ONNX opset-23 Attention;
older opsets, shared probabilities and 3-D scores are refused with a reason.

Tolerance: rtol 1e-4 / atol 1e-5 (the float32 default): the reference Attention applies
the scale as sqrt(scale) to Q and K, the chain divides the scores: a reassociation.
"""
import numpy as np

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

RNG = np.random.default_rng(0)
B, H, S, D = 2, 4, 8, 16


def ops(g):
    return [n.op_type for n in g]


def sdpa(b, q, kt, v, mask=None, scale_div=4.0):
    s = b.op("Div", b.op("MatMul", q, kt), np.float32(scale_div))
    if mask is not None:
        s = b.op("Add", s, mask)
    return b.op("MatMul", b.op("Softmax", s, axis=-1, name="softmax"), v)


def heads_graph(opset=23, k_given_transposed=False, mask_shape=None):
    b = GraphBuilder(opset=opset)
    q, v = b.input("q", (B, H, S, D)), b.input("v", (B, H, S, D))
    if k_given_transposed:
        kt = b.input("kt", (B, H, D, S))
    else:
        kt = b.op("Transpose", b.input("k", (B, H, S, D)), perm=[0, 1, 3, 2])
    mask = None if mask_shape is None else b.input("mask", mask_shape)
    b.output(sdpa(b, q, kt, v, mask), "y")
    return b.graph


def fuse(g, **ctx):
    return run_passes(g, ["fuse_attention_onnx", "eliminate_dead_code"], **ctx).records[0]


def test_heads_attention_becomes_onnx_attention():
    g = heads_graph()
    g0 = g.clone()
    rec = fuse(g)
    assert rec.stats == {"sdpa_to_onnx_attention": 1}
    assert ops(g) == ["Attention"]
    att = g.nodes[0]
    assert att.domain == "" and att.attrs == {"scale": 0.25}
    assert [v.name for v in att.inputs] == ["q", "k", "v"] and g.outputs[0].name == "y"
    assert_same_outputs(g0, g)


def test_key_given_transposed_gets_a_transpose():
    g = heads_graph(k_given_transposed=True)
    g0 = g.clone()
    fuse(g)
    assert ops(g) == ["Transpose", "Attention"]
    assert g.nodes[0].attrs["perm"] == [0, 1, 3, 2]
    assert_same_outputs(g0, g)


def test_mask_broadcast_over_queries_is_expanded_for_onnxruntime():
    g = heads_graph(mask_shape=(B, 1, 1, S))
    g0 = g.clone()
    fuse(g)
    assert ops(g) == ["Expand", "Attention"]
    assert g.nodes[1].input(3).shape == (B, 1, S, S)
    assert_same_outputs(g0, g)


def test_full_mask_is_used_as_it_is():
    g = heads_graph(mask_shape=(1, H, S, S))
    g0 = g.clone()
    fuse(g)
    assert ops(g) == ["Attention"] and g.nodes[0].input(3).name == "mask"
    assert_same_outputs(g0, g)


def test_opset_17_is_refused_unless_target_opset_23():
    g = heads_graph(opset=17)
    rec = fuse(g)
    assert "Attention" not in ops(g)
    assert rec.refused == {("sdpa_to_onnx_attention", "opset 17 < 23"): 1}

    g = heads_graph(opset=17)
    g0 = g.clone()
    assert fuse(g, target_opset=23).modified
    assert ops(g) == ["Attention"] and g.opset_imports[""] == 23
    assert_same_outputs(g0, g)


def test_probabilities_read_elsewhere_are_refused():
    g = heads_graph()
    b = GraphBuilder(graph=g)
    b.output(b.op("Neg", next(n for n in g if n.op_type == "Softmax").output), "p")
    rec = fuse(g)
    assert "Attention" not in ops(g)
    assert {why for (_, why) in rec.refused} == {"Softmax output has 2 users"}


def test_3d_scores_are_refused():
    b = GraphBuilder(opset=23)
    q, k, v = (b.input(n, (H, S, D)) for n in "qkv")
    b.output(sdpa(b, q, b.op("Transpose", k, perm=[0, 2, 1]), v), "y")
    rec = fuse(b.graph)
    assert "Attention" not in ops(b.graph)
    assert {why for (_, why) in rec.refused} == {"rank 3 scores: ONNX Attention takes 4-D heads"}


def test_raising_across_groupnormalization_21_is_refused():
    g = heads_graph(opset=18)
    b = GraphBuilder(graph=g)
    gn = b.op("GroupNormalization", b.input("img", (1, 4, 3, 3)), np.ones(2, np.float32), np.zeros(2, np.float32),
              num_groups=2, name="gn")  # scale/bias per group at 18, per channel from 21
    b.output(gn, "z")
    rec = fuse(g, target_opset=23)
    assert "Attention" not in ops(g) and g.opset_imports[""] == 18
    assert [why for (_, why) in rec.refused] == [
        "raising opset 18 to 23 would change GroupNormalization (node 'gn', changed at opset 21)"]


def test_causal_where_mask_becomes_a_float_attn_mask():
    # GPT's masked_fill export: Where(future, -inf, scores), the cond a constant after folding
    b = GraphBuilder(opset=23)
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    s = b.op("Div", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(4.0))
    future = b.const(np.triu(np.ones((1, 1, S, S), bool), 1), "future")
    s = b.op("Where", future, np.float32(-np.inf), s)
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
    g0 = b.graph.clone()
    rec = fuse(b.graph)
    assert rec.stats == {"sdpa_to_onnx_attention": 1} and ops(b.graph) == ["Attention"]
    mask = b.graph.nodes[0].input(3).const
    assert mask.dtype == np.float32 and (mask == np.where(np.triu(np.ones((S, S), bool), 1), -np.inf, 0)).all()
    assert_same_outputs(g0, b.graph)


def test_dynamo_sdpa_with_nan_guard_in_onnxruntime():
    """Today's dynamo export of sdpa: sqrt(scale) on Q and K^T (K^T as Reshape/Transpose/Reshape),
    a -inf Where mask of a boolean input, the IsNaN/Where guard. ONNX Attention gives zeros for
    a query row masked at every key, which is what the guard wrote: the guard goes too."""
    ort = __import__("pytest").importorskip("onnxruntime")
    import graphopt
    from graphopt.onnx_io import to_onnx_model

    b = GraphBuilder(opset=23)
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    keep = b.input("keep", (B, 1, S, S), "bool")
    kt = b.op("Reshape", b.op("Transpose", b.op("Reshape", k, np.array([-1, S, D], np.int64)), perm=[0, 2, 1]),
              np.array([B, H, D, S], np.int64))
    half = np.float32(D ** -0.25)
    s = b.op("Add", b.op("MatMul", b.op("Mul", q, half), b.op("Mul", kt, half)),
             b.op("Where", keep, np.float32(0.0), np.float32(-np.inf)))
    p = b.op("Softmax", s, axis=-1)
    b.output(b.op("MatMul", b.op("Where", b.op("IsNaN", p), np.float32(0.0), p), v), "y")
    g0 = b.graph.clone()
    rec = fuse(b.graph)
    assert rec.stats == {"sdpa_to_onnx_attention": 1}
    assert ops(b.graph) == ["Where", "Attention"]  # the mask, then one Attention on K itself
    assert b.graph.nodes[1].input(1).name == "k"
    feeds = {n: RNG.standard_normal((B, H, S, D)).astype(np.float32) for n in "qkv"}
    keep_v = np.tril(np.ones((S, S), bool))[None, None].repeat(B, axis=0)
    keep_v[1, ..., S - 2:] = False
    keep_v[1, 0, 3, :] = False  # a query row masked at every key
    feeds["keep"] = keep_v
    from graphopt.plugins.cpu.backend import run_reference

    (want,) = run_reference(g0, feeds)
    assert (want[1, :, 3] == 0).all()
    sess = ort.InferenceSession(to_onnx_model(b.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-4, atol=1e-5)
