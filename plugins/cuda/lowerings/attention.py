"""``ai.graphopt::Attention`` (what ``fuse_attention`` writes) as one kernel: BHSD or BSHD
heads read in place through strided views. float16/bfloat16 heads up to width 128 run on
the tensor-core flash kernel (``flash_attention.py``), the rest (float32, wider heads) on
the warp-per-row kernel (``attention.py``).

A constant mask that is a causal mask (0 on and below a diagonal ``j <= i + offset``,
``-inf`` or at most ``CAUSAL_FILL`` above it, the same for every batch and head) becomes the
kernel's causal flag: no mask read, and the tiles above the diagonal are skipped. With a
finite fill the reference's masked weights are ``exp(s + fill - max)``, which is 0 in float32
once ``fill`` is below -104 less the score spread, so the two agree; a finite fill that would
mask a whole row (``offset < 0``: uniform weights in the reference) stays a mask.

>>> lower_graph(attention_graph).launches[0].kernel.name   # doctest: +SKIP
'go_flash_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.ir import Node, Value

from ..attention import make_attention, render_attention
from ..flash_attention import flash_supported, make_flash_attention, render_flash_attention
from ..scalar import broadcast_strides, contiguous_strides
from ..specs import View
from .common import FUSED_DOMAIN, window_floats
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

CAUSAL_FILL = -1e4  # a finite fill at or below this masks as -inf does (exp underflows)


def causal_offset(mask: np.ndarray | None, sq: int, sk: int) -> int | None:
    """``offset`` when ``mask`` (broadcastable to ``[..., sq, sk]``) is 0 exactly where key
    ``j <= i + offset`` and masked elsewhere, the same for every batch and head; else None.

    >>> causal_offset(np.triu(np.full((3, 3), -np.inf), 1), 3, 3)
    0
    """
    if mask is None or mask.ndim < 2 or mask.dtype.kind != "f" or sq == 0 or sk == 0:
        return None
    m = mask.reshape(-1, *mask.shape[-2:]).astype(np.float32)
    if not (m == m[:1]).all():
        return None
    m = np.broadcast_to(m[0], (sq, sk))
    visible = m == 0
    counts = visible.sum(axis=1)
    partial = np.flatnonzero((counts > 0) & (counts < sk))
    if partial.size == 0:
        return None
    i = int(partial[0])
    offset = int(counts[i]) - 1 - i  # row i sees keys 0 .. i + offset
    want = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + offset
    if not (visible == want).all():
        return None
    hidden = m[~want]
    if hidden.size == 0 or (hidden == -np.inf).all():
        return offset
    return offset if offset >= 0 and (hidden <= CAUSAL_FILL).all() else None


def _attention_check(node: Node) -> str | None:
    why = window_floats(node)
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
    scale = float(node.attr("scale"))
    flash = flash_supported(q.dtype, d, dv) is None and q.dtype == k.dtype == v.dtype
    offset = causal_offset(lw.const(mask), sq, sk) if mask is not None else None
    if offset is not None and not flash and offset != 0:
        offset = None  # the warp kernel's causal flag has no offset: it reads the mask
    if offset is not None:
        mask = None
    bias = None if mask is None else View(mask.dtype, broadcast_strides(static_shape(mask, node), (*batch, sq, sk)))
    make, render = (make_flash_attention, render_flash_attention) if flash else (make_attention, render_attention)
    extra = {"causal_offset": offset} if flash and offset is not None else {}
    spec = make(batch, sq, sk, d, dv, q=qv, k=kv, v=vv, out=ov, bias=bias, scale=scale, causal=offset is not None,
                **extra)
    lw.emit(node, render(spec), spec, [y, q, k, v, *([mask] if mask is not None else [])])
