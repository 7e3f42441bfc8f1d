"""MatMul(Softmax(Add(Div(MatMul(Q, K^T), c), mask)), V) => Attention[scale=1/c](Q, K, V, mask) (ONNX, opset 23)

The standard-ONNX twin of the ``fuse_attention`` lowering: the same matcher
(``fuse_attention.match``, so the same forms and refusals: "Softmax output has
2 users", "mask added before the scale", "Softmax is not over the last axis"),
but the node written is the default-domain ``Attention`` of opset 23, which
ONNX Runtime runs as one kernel. A ``Where(cond, fill, S)`` mask with a constant
cond (GPT's causal mask) becomes a float ``attn_mask`` initializer as there.

* Head layout: when Q, K and V are split into heads by ``Reshape`` +
  ``Transpose(0, 2, 1, 3)`` of ``[B, S, H*D]`` projections and merged back the
  same way (BERT, GPT), those go too: ``Attention`` takes the 3-D projections
  with ``q_num_heads = kv_num_heads = H`` and writes ``[B, S, H*Dv]``.
  Otherwise it takes the 4-D ``[B, H, S, D]`` tensors; a K^T that is not a
  Transpose of K gets one (``Attention`` wants K untransposed).
* Grouped-query attention: K and V repeated per head by transformers'
  ``repeat_kv`` (``Reshape(Expand(Unsqueeze(K, 2)))``, ``unrepeated_kv``) go in
  unrepeated, with fewer heads than Q: ``Attention`` repeats them itself (ONNX's
  GQA), and the repeated copies are never written.
* Refused: other ranks ("rank 3 scores: ONNX Attention takes 4-D heads"),
  other dtypes, a mask of another dtype than Q.

``Attention`` exists from opset 23: on an older model the rewrite is refused
("opset 17 < 23") unless ``ctx.target_opset >= 23`` lets ``OpsetGate`` raise
the model's opset. One difference at the edge: a query row whose every key is
masked with ``-inf`` gives zeros in ``Attention`` where the Softmax chain gave
NaN (for a Where mask too: ``fuse_attention`` refuses only finite-fill rows
masked at every key). With torch's ``Where(IsNaN(P), 0, P)`` guard after the
Softmax (today's sdpa exports) the chain gives those zeros as well, so the
guard goes with the rest of the match.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._rewrite_util import OpsetGate
from ._util import remove_dead_from
from .fuse_attention import _key, _packed, mask_value, sweep, unrepeated_kv

RULE = "sdpa_to_onnx_attention"
DTYPES = ("float16", "float32", "bfloat16")


def _transposed_key(graph: Graph, kt: Value, before: Node) -> Value:
    """K from a K^T that is not a Transpose: a new last-two-axes Transpose."""
    shape = None if kt.shape is None else (*kt.shape[:-2], kt.shape[-1], kt.shape[-2])
    t = graph.make_node("Transpose", [kt], {"perm": [0, 1, 3, 2]}, output_types=[TensorType(kt.dtype, shape)],
                        name="key_transpose", before=before)
    return t.output


def _query_rows_mask(graph: Graph, mask: Value, rows: int, before: Node) -> Value:
    """``mask`` expanded along the query axis to ``rows``: onnxruntime's Attention
    kernel wants the mask's axis -2 to be the query length (it broadcasts only
    the batch and head axes)."""
    target = [1] * len(mask.shape)
    target[-2] = rows
    shape = graph.add_initializer("mask_rows", np.asarray(target, np.int64))
    out = TensorType(mask.dtype, (*mask.shape[:-2], rows, mask.shape[-1]))
    return graph.make_node("Expand", [mask, shape], output_types=[out], name="mask_expand", before=before).output


def _plan(m: dict) -> dict | str:
    """Inputs, attributes and the value replaced, or a reason."""
    if m["q"].dtype not in DTYPES:
        return f"{m['q'].dtype} attention"
    mask = m["mask"]
    if mask is not None and mask.dtype != m["q"].dtype:
        return f"mask is {mask.dtype}, Q {m['q'].dtype}"
    rows = m["q"].shape[-2]
    if mask is not None and (len(mask.shape) < 2 or mask.shape[-2] not in (1, rows)):
        return "mask rank or query axis unknown"
    if mask is not None and mask.shape[-2] == 1 and not isinstance(rows, int):
        return "mask broadcasts over a query length that is not static"
    attrs = {"scale": float(m["scale"])}
    packed = _packed(m)
    if packed is not None:
        attrs.update(q_num_heads=packed["heads"], kv_num_heads=packed["heads"])
        return {"inputs": packed["inputs"], "out": packed["out"], "tail": packed["tail"], "attrs": attrs,
                "kt": None}
    if m["rank"] != 4:
        return f"rank {m['rank']} scores: ONNX Attention takes 4-D heads"
    k, transposed = _key(m["kt"], 4)
    v = m["v"]
    if not transposed:
        k, v = _grouped(k, v)
    return {"inputs": [m["q"], k, v], "out": m["mm2"].output, "tail": [], "attrs": attrs,
            "kt": m["kt"] if transposed else None}


def _grouped(k: Value, v: Value) -> tuple[Value, Value]:
    """K and V before transformers' ``repeat_kv`` when both are repeated alike: Attention
    takes fewer K/V heads than Q heads (grouped-query attention) and repeats them itself,
    so the repeated copies are never written."""
    rk, rv = unrepeated_kv(k), unrepeated_kv(v)
    if rk is None or rv is None or rk[1] != rv[1]:
        return k, v
    return rk[0], rv[0]


def _rewrite(graph: Graph, m: dict, plan: dict) -> Node:
    out = plan["out"]
    anchor = out.producer
    inputs = list(plan["inputs"])
    if plan["kt"] is not None:
        inputs[1] = _transposed_key(graph, plan["kt"], anchor)
    mask = mask_value(graph, m["mask"])
    if mask is not None:
        rows = m["q"].shape[-2]
        inputs.append(mask if mask.shape[-2] == rows else _query_rows_mask(graph, mask, rows, anchor))
    node = graph.make_node("Attention", inputs, plan["attrs"], output_types=[out.type], name="attention",
                           before=anchor)
    graph.replace_value(out, node.output, take_name=True)
    remove_dead_from(graph, [m["mm2"], *m["chain"], *plan["tail"], anchor])
    return node


@register_pass("fuse_attention_onnx", opt_level=2, kind="graph", order=60)
def fuse_attention_onnx(graph: Graph, ctx: PassContext) -> PassResult:
    """MatMul(Softmax(Add(Div(MatMul(Q, K^T), c), mask)), V) => Attention[scale=1/c](Q, K, V, mask) (opset >= 23)."""
    fuse = OpsetGate(graph, ctx, 23).fuse(_plan, lambda m, plan: _rewrite(graph, m, plan))
    stats, refused = sweep(graph, ctx, "fuse_attention_onnx", RULE, fuse)
    stats = Counter({RULE: stats.pop("Attention", 0), **stats})
    return PassResult(bool(stats[RULE]), {k: v for k, v in stats.items() if v}, refused)


__all__ = ["fuse_attention_onnx"]
