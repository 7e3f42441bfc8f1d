"""Attention candidates the matchers leave unfused get a reason naming what differed (also the
ones the matcher never reaches, and after a lowering pass took the Softmax into its own fused
op); grouped-query attention's repeated K/V (transformers' repeat_kv) goes into ONNX Attention.

Tolerance: float32 defaults (rtol 1e-4 / atol 1e-5); the fused forms reassociate the scale.
"""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

RNG = np.random.default_rng(0)
B, H, S, D = 2, 4, 6, 8


def reasons(report, pass_name):
    rows = {r["pass"]: r for r in report.summary()}
    return {why for (_, why) in rows[pass_name]["refused"]}


def attention(b, q, k, v, *, between_scores=None, between_probs=None, shared_probs=False):
    """softmax(Q K^T / sqrt(D)) V with ``between_*`` ops on the way (each a callable of b, x)."""
    s = b.op("Div", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(np.sqrt(D)))
    if between_scores:
        s = between_scores(b, s)
    p = b.op("Softmax", s, axis=-1, name="softmax")
    if shared_probs:
        b.output(b.op("Relu", p), "p")
    if between_probs:
        p = between_probs(b, p)
    return b.op("MatMul", p, v)


def heads(b, names="qkv", h=H):
    return [b.input(n, (B, h, S, D)) for n in names]


def flat_and_back(b, x):
    return b.op("Reshape", b.op("Reshape", x, np.array([B * H, S, S], np.int64)), np.array([B, H, S, S], np.int64))


@pytest.mark.parametrize("pass_name", ["fuse_attention", "fuse_attention_onnx"])
@pytest.mark.parametrize("case, why", [
    ("reshaped scores", "scores come from Reshape, not MatMul(Q, K^T) (after the scale, mask and Casts)"),
    ("dropout on probabilities", "probabilities reach MatMul(P, V) through Dropout"),
    ("second bias", "neither operand of the Add before the Softmax is MatMul(Q, K^T) (after scales): "
                    "a second bias or a reshaped score"),
])
def test_a_candidate_the_matcher_does_not_take_gets_a_reason(pass_name, case, why):
    b = GraphBuilder(opset=23)
    q, k, v = heads(b)
    kw = {"reshaped scores": {"between_scores": flat_and_back},
          "dropout on probabilities": {"between_probs": lambda b, p: b.op("Dropout", p)},
          "second bias": {"between_scores": lambda b, s: b.op("Add", b.op("Add", s, RNG.standard_normal(
              (1, H, S, S)).astype(np.float32)), b.input("mask", (B, 1, 1, S)))}}[case]
    b.output(attention(b, q, k, v, **kw), "y")
    rep = run_passes(b.graph, [pass_name], fixed_point=False)
    assert not any(n.op_type == "Attention" for n in b.graph)
    assert reasons(rep, pass_name) == {why}


def test_a_softmax_without_a_matmul_after_it_is_no_candidate():
    b = GraphBuilder()
    x = b.input("x", (B, 10))
    b.output(b.op("Softmax", b.op("MatMul", x, RNG.standard_normal((10, 5)).astype(np.float32)), axis=-1), "y")
    rep = run_passes(b.graph, ["fuse_attention"], fixed_point=False)
    assert reasons(rep, "fuse_attention") == set()


def test_the_reason_stands_after_row_fusion_took_the_softmax():
    """fuse_row_reduce (the CUDA backend's lowering) takes the Softmax and its readers into a
    FusedRowReduce; fuse_attention's next run finds no Softmax, and its reason still stands."""
    b = GraphBuilder()
    q, k, v = heads(b)
    b.output(attention(b, q, k, v, shared_probs=True), "y")
    g0 = b.graph.clone()
    rep = run_passes(b.graph, ["fuse_attention", "fuse_conv_epilogue", "fuse_elementwise", "fuse_row_reduce"])
    assert not any(n.op_type == "Softmax" for n in b.graph)  # taken by the row fusion
    assert rep.iterations >= 2
    assert reasons(rep, "fuse_attention") == {"Softmax output has 2 users"}
    assert_same_outputs(g0, b.graph)


def test_a_reason_goes_once_the_candidate_is_fused():
    # the first run refuses (mask condition computed), constant folding decides it, the next run fuses
    b = GraphBuilder(opset=23)
    q, k, v = heads(b)
    cond = b.op("Not", b.const(np.tril(np.ones((1, 1, S, S), bool)), "keep"))
    b.output(attention(b, q, k, v, between_scores=lambda b, s: b.op("Where", cond, np.float32(-np.inf), s)), "y")
    g0 = b.graph.clone()
    rep = run_passes(b.graph, ["fuse_attention_onnx", "fold_constants", "eliminate_dead_code"])
    assert [n.op_type for n in b.graph] == ["Attention"]
    assert reasons(rep, "fuse_attention_onnx") == set()
    assert_same_outputs(g0, b.graph)


def repeat_kv(b, x, n):
    """transformers' repeat_kv as both exporters write it: Unsqueeze, Expand, Reshape."""
    hkv = x.shape[1]
    e = b.op("Expand", b.op("Unsqueeze", x, np.array([2], np.int64)), np.array([B, hkv, n, S, D], np.int64))
    return b.op("Reshape", e, np.array([B, hkv * n, S, D], np.int64))


def gqa_graph(rep_k=2, rep_v=2):
    b = GraphBuilder(opset=23)
    (q,) = heads(b, "q")
    k, v = heads(b, "kv", h=2)
    mask = b.input("mask", (B, 1, S, S))
    y = attention(b, q, repeat_kv(b, k, rep_k), repeat_kv(b, v, rep_v),
                  between_scores=lambda b, s: b.op("Add", s, mask))
    b.output(y, "y")
    return b.graph


def test_grouped_query_attention_takes_the_unrepeated_kv():
    g = gqa_graph()
    g0 = g.clone()
    rec = run_passes(g, ["fuse_attention_onnx", "eliminate_dead_code"]).records[0]
    assert rec.stats == {"sdpa_to_onnx_attention": 1}
    assert [n.op_type for n in g] == ["Attention"]
    assert [x.name for x in g.nodes[0].inputs] == ["q", "k", "v", "mask"]
    assert_same_outputs(g0, g)


def test_grouped_query_attention_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from graphopt.onnx_io import to_onnx_model
    from graphopt.testing import random_feeds

    g = gqa_graph()
    g0 = g.clone()
    run_passes(g, ["fuse_attention_onnx", "eliminate_dead_code"])
    feeds = random_feeds(g0)
    want = ort.InferenceSession(to_onnx_model(g0).SerializeToString()).run(None, feeds)[0]
    got = ort.InferenceSession(to_onnx_model(g).SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_k_and_v_repeated_differently_keep_their_repeats():
    g = gqa_graph(rep_k=2, rep_v=2)
    # V repeated 2x from 2 heads, K given with 4 heads already: only one side is a repeat
    b = GraphBuilder(graph=g)
    att_k = next(n for n in g if n.op_type == "Transpose").input(0)
    new_k = b.input("k4", (B, H, S, D))
    att_k.users[0].set_input(0, new_k)
    g0 = g.clone()
    run_passes(g, ["fuse_attention_onnx", "eliminate_dead_code"])
    (att,) = [n for n in g if n.op_type == "Attention"]
    assert att.input(1).name == "k4" and att.input(2).producer.op_type == "Reshape"
    assert_same_outputs(g0, g)
