"""``ai.graphopt::Attention`` (what ``fuse_attention`` writes) as one kernel
(``attention.py``): BHSD or BSHD heads read in place through strided views.

>>> lower_graph(attention_graph).launches[0].kernel.name   # doctest: +SKIP
'go_attn_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.ir import Node, Value

from ..attention import make_attention, render_attention
from ..scalar import broadcast_strides, contiguous_strides
from ..specs import View
from .common import FUSED_DOMAIN, float_only
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

def _attention_check(node: Node) -> str | None:
    why = float_only(node)
    if why:
        return why
    if node.attr("layout", "BHSD") not in ("BHSD", "BSHD"):
        return f"Attention layout {node.attr('layout')!r}"
    if node.attr("layout", "BHSD") == "BSHD" and int(node.attr("num_heads", 0)) < 1:
        return "Attention with layout 'BSHD' needs num_heads"
    return None


def _heads_view(dtype: str, b: int, s: int, h: int, d: int) -> View:
    """[B, S, H, D] memory (or [B, S, H*D]) seen as (B, H, S, D)."""
    st = contiguous_strides((b, s, h, d))
    return View(dtype, (st[0], st[2], st[1], st[3]))


@lowering("Attention", domain=FUSED_DOMAIN, check=_attention_check)
def lower_attention(node: Node, lw: Lowerer) -> None:
    q, k, v = node.inputs[:3]
    mask = node.input(3)
    y = node.output
    qs, ks, vs = static_shape(q, node), static_shape(k, node), static_shape(v, node)
    if node.attr("layout", "BHSD") == "BHSD":
        sq, d = qs[-2:]
        sk, dv = vs[-2:]
        batch = tuple(np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2]))

        def view(val: Value, shape, swap=False) -> View:
            st = contiguous_strides(shape)
            last = (st[-1], st[-2]) if swap else st[-2:]
            return View(val.dtype, broadcast_strides(shape[:-2], batch, st[:-2]) + tuple(last))

        qv, kv, vv = view(q, qs), view(k, ks, bool(node.attr("k_transposed", 0))), view(v, vs)
        ov = View.contiguous(y.dtype, (*batch, sq, dv))
    else:
        h = int(node.attr("num_heads"))
        b, sq, sk = qs[0], qs[1], ks[1]
        d = qs[-1] // h if len(qs) == 3 else qs[-1]
        dv = vs[-1] // h if len(vs) == 3 else vs[-1]
        batch = (b, h)
        qv, kv = _heads_view(q.dtype, b, sq, h, d), _heads_view(k.dtype, b, sk, h, d)
        vv = _heads_view(v.dtype, b, sk, h, dv)
        ov = _heads_view(y.dtype, b, sq, h, dv)
    bias = None if mask is None else View(mask.dtype, broadcast_strides(static_shape(mask, node), (*batch, sq, sk)))
    spec = make_attention(batch, sq, sk, d, dv, q=qv, k=kv, v=vv, out=ov, bias=bias, scale=float(node.attr("scale")))
    lw.emit(node, render_attention(spec), spec, [y, q, k, v, *([mask] if mask is not None else [])])
