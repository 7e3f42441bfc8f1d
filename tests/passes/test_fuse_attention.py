"""fuse_attention: scaled-dot-product attention (with BERT's head reshapes/transposes) becomes
one ai.graphopt::Attention node; the reference kernel matches the unfused graph."""
from collections import Counter

import numpy as np
import pytest

from pass_helpers import lowered_sample
from graphopt.builder import GraphBuilder
from graphopt.testing import assert_same_outputs, random_feeds, run_passes

rng = np.random.default_rng(0)
B, S, H, D = 2, 6, 4, 8


def W(*shape, s=0.3):
    return (rng.standard_normal(shape) * s).astype(np.float32)


def fuse(g, **ctx):
    before = g.clone()
    report = run_passes(g, ["fuse_attention"], **ctx)
    return before, report.records[0]


def bert_attention(mask=True, scale_op="Div", k_perm=(0, 2, 3, 1)):
    """What torch.onnx writes for BERT self-attention: projections, head split, K^T in one
    Transpose, Div by sqrt(d), additive mask, Softmax, head merge."""
    b = GraphBuilder()
    x = b.input("x", ("batch", S, H * D))
    heads = np.array([0, 0, H, D], np.int64)

    def proj(name):
        return b.op("Add", b.op("MatMul", x, W(H * D, H * D)), W(H * D), name=name)

    q = b.op("Transpose", b.op("Reshape", proj("q"), heads), perm=[0, 2, 1, 3])
    k4 = b.op("Reshape", proj("k"), heads)
    kt = (b.op("Transpose", k4, perm=list(k_perm)) if k_perm == (0, 2, 3, 1) else
          b.op("Transpose", b.op("Transpose", k4, perm=[0, 2, 1, 3]), perm=[0, 1, 3, 2]))
    v = b.op("Transpose", b.op("Reshape", proj("v"), heads), perm=[0, 2, 1, 3])
    s = b.op("MatMul", q, kt)
    s = b.op("Div", s, np.float32(np.sqrt(D))) if scale_op == "Div" else b.op("Mul", s, np.float32(1 / np.sqrt(D)))
    if mask:
        s = b.op("Add", s, b.input("mask", ("batch", 1, 1, S)))
    p = b.op("Softmax", s, axis=-1)
    o = b.op("Transpose", b.op("MatMul", p, v), perm=[0, 2, 1, 3])
    o = b.op("Reshape", o, np.array([0, 0, H * D], np.int64))
    b.output(b.op("MatMul", o, W(H * D, H * D)), "y")
    return b.graph


def feeds(g, batch=2):
    f = random_feeds(g, batch=batch)
    if "mask" in f:
        f["mask"] = np.zeros_like(f["mask"])
        f["mask"][-1, ..., S - 2:] = -10000.0
    return f


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("k_perm", [(0, 2, 3, 1), "two transposes"])
def test_bert_attention_absorbs_the_head_layout(mask, k_perm):
    g = bert_attention(mask, k_perm=k_perm)
    before, rec = fuse(g)
    assert rec.stats == {"Attention": 1, "packed_heads": 1}
    (att,) = [n for n in g if n.op_type == "Attention"]
    assert att.qualified_op == "ai.graphopt::Attention"
    assert att.attrs == {"scale": pytest.approx(1 / np.sqrt(D)), "mask_type": "additive" if mask else "none",
                         "layout": "BSHD", "num_heads": H, "k_transposed": 0}
    assert [v.producer.op_type for v in att.inputs[:3]] == ["Add"] * 3  # the projections themselves
    assert Counter(n.op_type for n in g) == Counter({"MatMul": 4, "Add": 3, "Attention": 1})
    assert att.output.shape == ("batch", S, H * D)
    assert_same_outputs(before, g, feeds(before))


def test_per_head_tensors_without_reshapes_and_scale_on_q_and_k():
    # torch's SDPA export scales Q and K^T by sqrt(scale) each
    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    half = np.float32(D ** -0.25)
    kt = b.op("Mul", b.op("Transpose", k, perm=[0, 1, 3, 2]), half)
    p = b.op("Softmax", b.op("MatMul", b.op("Mul", q, half), kt), axis=-1)
    b.output(b.op("MatMul", p, v), "y")
    before, rec = fuse(b.graph)
    (att,) = b.graph.nodes
    assert att.attrs["layout"] == "BHSD" and att.attrs["k_transposed"] == 0 and att.attrs["mask_type"] == "none"
    assert att.attrs["scale"] == pytest.approx(D ** -0.5, rel=1e-6)
    assert [v.name for v in att.inputs] == ["q", "k", "v"]
    assert_same_outputs(before, b.graph)


def test_key_given_already_transposed():
    b = GraphBuilder()
    q, kt, v = b.input("q", (3, S, D)), b.input("kt", (3, D, S + 1)), b.input("v", (3, S + 1, 5))
    s = b.op("Mul", np.float32(0.5), b.op("MatMul", q, kt))
    b.output(b.op("MatMul", b.op("Softmax", s, axis=2), v), "y")
    before, rec = fuse(b.graph)
    (att,) = b.graph.nodes
    assert att.attrs["k_transposed"] == 1 and att.attrs["scale"] == 0.5 and att.output.shape == (3, S, 5)
    assert_same_outputs(before, b.graph)


def test_probabilities_read_elsewhere_are_refused():
    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    p = b.op("Softmax", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), axis=-1)
    b.output(b.op("MatMul", p, v), "y")
    b.output(p, "probs")
    _, rec = fuse(b.graph)
    assert not rec.modified and rec.refused == {("sdpa_to_attention", "Softmax output has 2 users"): 1}


def test_softmax_over_another_axis_and_mask_before_scale_are_refused():
    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, S)) for n in "qkv")
    p = b.op("Softmax", b.op("MatMul", q, k), axis=2)
    b.output(b.op("MatMul", p, v), "y")
    _, rec = fuse(b.graph)
    assert rec.refused == {("sdpa_to_attention", "Softmax is not over the last axis"): 1}

    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, S)) for n in "qkv")
    s = b.op("Div", b.op("Add", b.op("MatMul", q, k), b.input("mask", (1, 1, 1, S))), np.float32(2.0))
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
    _, rec = fuse(b.graph)
    assert not rec.modified and rec.refused == {("sdpa_to_attention", "mask added before the scale"): 1}


def test_output_read_per_head_keeps_bhsd():
    g = bert_attention()
    mm = next(n for n in g if n.op_type == "Softmax").output.users[0]
    g.add_output(mm.output)                                   # the per-head result is an output too
    before, rec = fuse(g)
    (att,) = [n for n in g if n.op_type == "Attention"]
    assert att.attrs["layout"] == "BHSD" and att.attrs["k_transposed"] == 1
    assert_same_outputs(before, g, feeds(before))


def test_attention_kernel_layouts_agree():
    from graphopt.plugins.cpu.backend import run_reference

    q, k, v = W(B, S, H * D), W(B, S + 2, H * D), W(B, S + 2, H * 3)
    mask = np.where(rng.random((B, 1, S, S + 2)) < 0.2, -1e4, 0).astype(np.float32)
    outs = []
    for layout in ("BSHD", "BHSD"):
        b = GraphBuilder()
        ins = [q, k, v] if layout == "BSHD" else [a.reshape(B, -1, H, a.shape[-1] // H).transpose(0, 2, 1, 3)
                                                  for a in (q, k, v)]
        vals = [b.input(n, a.shape) for n, a in zip("qkv", ins)] + [b.input("m", mask.shape)]
        y = b.op("Attention", *vals, domain="ai.graphopt", scale=0.3, layout=layout, num_heads=H,
                 mask_type="additive")
        b.output(y, "y")
        (out,) = run_reference(b.graph, dict(zip("qkvm", ins + [mask])))
        outs.append(out if layout == "BSHD" else out.transpose(0, 2, 1, 3).reshape(B, S, H * 3))
        assert y.shape == out.shape
    qh, kh, vh = (a.reshape(B, -1, H, a.shape[-1] // H).transpose(0, 2, 1, 3) for a in (q, k, v))
    s = qh @ kh.transpose(0, 1, 3, 2) * 0.3 + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = ((p / p.sum(-1, keepdims=True)) @ vh).transpose(0, 2, 1, 3).reshape(B, S, H * 3)
    for out in outs:
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def half_scores_float32_softmax(narrow=True):
    """convert_float16 (or autocast) around attention: float16 scores widened to float32 for the
    mask and the Softmax, the probabilities cast back to float16 for P V (``narrow``)."""
    b = GraphBuilder()
    q, kt, v = (b.input(n, s, "float16") for n, s in (("q", (B, H, S, D)), ("kt", (B, H, D, S)), ("v", (B, H, S, D))))
    mask = b.input("mask", (B, 1, 1, S))
    s = b.op("Mul", b.op("MatMul", q, kt), np.float16(D ** -0.5))
    p = b.op("Softmax", b.op("Add", b.op("Cast", s, to=1), mask), axis=-1)
    b.output(b.op("MatMul", b.op("Cast", p, to=10) if narrow else p, v if narrow else b.op("Cast", v, to=1)), "y")
    return b.graph


def test_casts_of_mixed_precision_around_the_softmax_are_absorbed():
    g = half_scores_float32_softmax()
    before, rec = fuse(g)
    (node,) = g.nodes
    assert node.op_type == "Attention" and node.attrs["k_transposed"] == 1 and node.output.dtype == "float16"
    f = random_feeds(before, batch=B)
    f["mask"] = np.where(rng.random((B, 1, 1, S)) < 0.3, -1e4, 0).astype(np.float32)
    assert_same_outputs(before, g, f, rtol=1e-3, atol=1e-3)  # the fused op skips two float16 roundings


def test_a_half_causal_where_widened_for_the_softmax_is_absorbed():
    # GPT's masked_fill after convert_float16: Where in float16, then a Cast to float32 for the Softmax
    b = GraphBuilder()
    q, kt, v = (b.input(n, s, "float16") for n, s in (("q", (B, H, S, D)), ("kt", (B, H, D, S)), ("v", (B, H, S, D))))
    future = np.triu(np.ones((S, S), bool), 1)
    s = b.op("Where", future, np.float16(-1e4), b.op("Mul", b.op("MatMul", q, kt), np.float16(D ** -0.5)))
    p = b.op("Softmax", b.op("Cast", s, to=1), axis=-1)
    b.output(b.op("MatMul", b.op("Cast", p, to=10), v), "y")
    before, rec = fuse(b.graph)
    assert [n.op_type for n in b.graph] == ["Attention"] and rec.stats["Attention"] == 1
    assert_same_outputs(before, b.graph, rtol=1e-3, atol=1e-3)


def test_widened_scores_with_a_float32_product_are_refused():
    g = half_scores_float32_softmax(narrow=False)  # P V in float32: the output type is not Q's
    _, rec = fuse(g)
    assert "Attention" not in {n.op_type for n in g}
    assert rec.refused == Counter({("sdpa_to_attention", "Q, K, V and the output differ in type"): 1})


LOWER = ["fuse_attention", "fuse_conv_epilogue", "fuse_elementwise"]


def test_sample_bert_has_attention_fused_in_every_layer():
    before, g, report = lowered_sample("bert_style", LOWER)
    layers = 2
    att = [n for n in g if n.op_type == "Attention"]
    assert len(att) == layers and all(n.attrs["layout"] == "BSHD" and n.attrs["num_heads"] == 4 for n in att)
    assert all(n.attrs["mask_type"] == "additive" for n in att)
    assert not [n for n in g if n.op_type in ("Softmax", "Transpose", "Reshape", "Erf", "Div")]
    assert report.records[0].stats == {"Attention": layers, "packed_heads": layers}
    f = random_feeds(before, batch=2)
    f["input_ids"] = rng.integers(0, 1000, f["input_ids"].shape)
    f["attention_mask"] = np.ones_like(f["attention_mask"])
    f["attention_mask"][1, -4:] = 0
    assert_same_outputs(before, g, f)


def where_masked_attention(fill=-np.inf, scores_in_else=True, cond=None, fill_dtype=np.float32):
    """GPT's causal attention as torch's masked_fill exports it: Where(future, fill, scores), or
    Where(past, scores, fill) with ``scores_in_else=False``; ``cond`` defaults to the constant."""
    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    s = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(D ** -0.5))
    future = np.triu(np.ones((S, S), bool), 1)[None, None]
    if cond is None:
        cond = future if scores_in_else else ~future
    if isinstance(cond, np.ndarray):
        cond = b.const(cond, "causal")
    fill = np.asarray(fill, fill_dtype)
    s = b.op("Where", cond, fill, s) if scores_in_else else b.op("Where", cond, s, fill)
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
    return b.graph


@pytest.mark.parametrize("fill", [-np.inf, -10000.0])
@pytest.mark.parametrize("scores_in_else", [True, False])
def test_causal_where_mask_becomes_an_additive_constant(fill, scores_in_else):
    g = where_masked_attention(fill, scores_in_else)
    before, rec = fuse(g)
    assert rec.stats == {"Attention": 1} and not rec.refused
    (att,) = g.nodes
    assert att.attrs["mask_type"] == "additive" and att.attrs["scale"] == pytest.approx(D ** -0.5)
    mask = att.input(3).const
    assert mask.dtype == np.float32 and mask.shape == (1, 1, S, S)
    np.testing.assert_array_equal(mask[0, 0], np.where(np.triu(np.ones((S, S), bool), 1), np.float32(fill), 0))
    assert [n for n in g.initializers] == [att.input(3).name]   # the bool cond went with the Where
    assert_same_outputs(before, g)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_where_row_masked_at_every_key():
    # -inf: the Where chain, the reference Attention (and the CUDA kernel) all give NaN for that row
    cond = np.triu(np.ones((S, S), bool), 1)[None, None].copy()
    cond[..., 2, :] = True
    g = where_masked_attention(-np.inf, cond=cond)
    before, rec = fuse(g)
    assert rec.stats == {"Attention": 1}
    (y,) = assert_same_outputs(before, g)
    assert np.isnan(y[:, :, 2]).all() and not np.isnan(np.delete(y, 2, axis=2)).any()
    # a finite fill: the Where chain gives that row uniform weights, an additive mask would not
    g = where_masked_attention(-10000.0, cond=cond)
    _, rec = fuse(g)
    assert not rec.modified and rec.refused == {("sdpa_to_attention", "a query row is masked at every key"): 1}


def test_where_with_a_small_fill_is_refused():
    g = where_masked_attention(-1.0)
    _, rec = fuse(g)
    assert not rec.modified
    assert rec.refused == {("sdpa_to_attention", "Where fill is not -inf or a large negative constant"): 1}


def test_where_cond_that_is_not_constant_is_refused():
    # torch's export: the causal buffer sliced to the sequence length read from Shape; with a
    # symbolic length fold_constants cannot fold it
    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, "seq", D)) for n in "qkv")
    s = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(D ** -0.5))
    n = b.op("Unsqueeze", b.op("Gather", b.op("Shape", q), np.array(2, np.int64), axis=0), np.array([0], np.int64))
    ends = b.op("Concat", n, n, axis=0)
    future = np.triu(np.ones((1, 1, 64, 64), bool), 1)
    cond = b.op("Slice", future, np.array([0, 0], np.int64), ends, np.array([2, 3], np.int64))
    s = b.op("Where", cond, np.float32(-np.inf), s)
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
    _, rec = fuse(b.graph)
    assert not rec.modified and rec.refused == {
        ("sdpa_to_attention", "mask condition is a Slice of a constant by a length that is not static"): 1}

    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    s = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    s = b.op("Where", b.input("keep", (B, 1, S, S), "bool"), s, np.float32(-1e9))
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
    _, rec = fuse(b.graph)
    assert not rec.modified and rec.refused == {("sdpa_to_attention", "mask condition is not constant"): 1}


def test_sample_gpt_block_has_its_causal_attention_fused():
    # the masked_fill causal mask: Where(Slice(triu buffer), -10000, scores), the Slice folded at -O2
    before, g, report = lowered_sample("gpt_style_block", LOWER)
    (att,) = [n for n in g if n.op_type == "Attention"]
    assert att.attrs == {"scale": 0.25, "mask_type": "additive", "layout": "BSHD", "num_heads": 4, "k_transposed": 0}
    assert report.records[0].stats == {"Attention": 1, "packed_heads": 1} and not report.records[0].refused
    assert not [n for n in g if n.op_type in ("Where", "Softmax", "Transpose", "Reshape")]
    mask = att.input(3).const
    assert mask.shape == (1, 1, 16, 16) and (mask[0, 0] == np.triu(np.full((16, 16), -10000.0, np.float32), 1)).all()
    assert_same_outputs(before, g, random_feeds(before, batch=2))


def sdpa_export(fill=np.float32(np.finfo(np.float32).min), guard=True):
    """What today's dynamo exporter writes for transformers' sdpa attention: Q and K^T each
    scaled by sqrt(scale), K^T as Reshape/Transpose/Reshape, the mask Where(keep, 0, fill)
    of a boolean input, and the IsNaN/Where guard after the Softmax."""
    b = GraphBuilder()
    q, k, v = (b.input(n, (B, H, S, D)) for n in "qkv")
    keep = b.input("keep", (B, 1, S, S), "bool")
    flat = b.op("Reshape", k, np.array([-1, S, D], np.int64))
    kt = b.op("Reshape", b.op("Transpose", flat, perm=[0, 2, 1]), np.array([B, H, D, S], np.int64))
    half = np.float32(D ** -0.25)
    s = b.op("MatMul", b.op("Mul", q, half), b.op("Mul", kt, half))
    s = b.op("Add", s, b.op("Where", keep, np.float32(0.0), fill))
    p = b.op("Softmax", s, axis=-1)
    if guard:
        p = b.op("Where", b.op("IsNaN", p), np.float32(0.0), p)
    b.output(b.op("MatMul", p, v), "y")
    return b.graph


def sdpa_feeds(g, all_masked_row=False):
    f = random_feeds(g)
    keep = np.tril(np.ones((S, S), bool))[None, None].repeat(B, axis=0)
    keep[1, ..., S - 2:] = False  # padding
    if all_masked_row:
        keep[1, 0, 0, :] = False
    f["keep"] = keep
    return f


@pytest.mark.parametrize("fill,guard_left", [(np.float32(np.finfo(np.float32).min), False),
                                             (np.float32(-np.inf), True)], ids=["finite_fill", "minus_inf"])
def test_dynamo_sdpa_export_with_nan_guard(fill, guard_left):
    g = sdpa_export(fill)
    before, rec = fuse(g)
    assert rec.stats == {"Attention": 1}
    (att,) = [n for n in g if n.op_type == "Attention"]
    assert att.attrs["scale"] == pytest.approx(D ** -0.5) and att.attrs["k_transposed"] == 0
    assert att.input(1).name == "k"  # the Reshape/Transpose/Reshape K^T went
    ops = Counter(n.op_type for n in g)
    # a finite fill cannot mask a row to NaN: the guard goes; with -inf it stays, after the Attention
    assert ops == Counter({"Attention": 1, "Where": 1 + guard_left, "IsNaN": int(guard_left)})
    assert_same_outputs(before, g, sdpa_feeds(before))
    if guard_left:  # a query row masked at every key: 0 from the exported guard, 0 after fusion
        f = sdpa_feeds(before, all_masked_row=True)
        assert_same_outputs(before, g, f)
        from graphopt.plugins.cpu.backend import run_reference

        assert not np.isnan(run_reference(g, f)[0]).any()


def test_guarded_probabilities_read_elsewhere_are_refused():
    g = sdpa_export()
    p = next(n for n in g if n.op_type == "Softmax").output
    g.add_output(g.make_node("Exp", [p], output_types=[p.type]).output)
    _, rec = fuse(g)
    assert not rec.modified and {why for _, why in rec.refused} == {"Softmax output has 3 users"}
