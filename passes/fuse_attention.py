"""MatMul(Softmax(Add(Div(MatMul(Q, K^T), c), mask)), V) => ai.graphopt::Attention[scale=1/c](Q, K, V, mask)
MatMul(Softmax(Where(cond, fill, Div(MatMul(Q, K^T), c))), V) => Attention[scale=1/c](Q, K, V, where(cond, fill, 0))

Scaled-dot-product attention becomes one ``ai.graphopt::Attention`` node, so a
backend can run it as one kernel that never writes the score matrix (the CUDA
backend's online-softmax kernel). Matched, walking back from ``MatMul(P, V)``:

* ``P = Softmax(S)`` over the last axis;
* ``S`` = the scores, optionally plus an additive mask (``Add``, either operand,
  broadcastable to the scores) and scaled by scalar constants (``Div``/``Mul``
  on the scores, or on Q and K^T before their product, as torch's SDPA export
  does); a mask added before the scale is refused (it would be scaled too);
* or the scores masked by ``Where(cond, fill, S)`` / ``Where(cond, S, fill)``
  (torch's ``masked_fill``, GPT's causal mask): with ``cond`` a constant and
  ``fill`` a scalar ``-inf`` or large negative constant (``<= LARGE_NEGATIVE``),
  this becomes the additive mask ``where(masked, fill, 0)``, a new initializer
  (``mask_type="additive"``; the Attention schema has no boolean mask).
  torch's export slices a ``tril``/``triu`` buffer by the sequence length read
  from ``Shape``; with a static sequence length ``fold_shape_arithmetic`` and
  ``fold_constants`` fold that to a constant at -O1, and a cond that is still
  computed is refused ("mask condition is a Slice of a constant by a length
  that is not static").
* the scores ``MatMul(Q, K^T)``, with ``K^T`` a last-two-axes Transpose of K, the
  dynamo exporter's ``Reshape(Transpose(Reshape(K, [-1, S, D]), [0, 2, 1]), [B, H, D, S])``
  form of one (read from the types), or any value (then ``k_transposed=1``);
* mixed precision's (and autocast's) Casts: float16/bfloat16 scores widened to float32
  for the mask and the Softmax (``Cast`` peeled like a scale: widening is exact) and the
  probabilities cast back to V's type for ``P V``; Q, K, V and the output must then share
  one type (the fused op computes in float32 and skips the two roundings in between);
* torch's guard after the Softmax, ``Where(IsNaN(P), 0, P)`` (today's exporters
  write it for sdpa): it makes a row masked at every key (NaN) zeros. When the
  mask cannot make a row all ``-inf`` (a constant, or a ``Where`` of two finite
  constants such as transformers' ``finfo.min`` mask) it goes; otherwise it is
  kept as ``Where(IsNaN(y), 0, y)`` on the Attention output, the same zeros
  (only a V holding NaN or inf would tell the two apart).

Head layout: when Q, K and V are ``Transpose(Reshape(x, [B, S, H, D]), (0, 2, 1, 3))``
of ``[B, S, H*D]`` projections (K may be ``Transpose(..., (0, 2, 3, 1))``, BERT's
K^T) and the result goes through ``Transpose(0, 2, 1, 3)`` and a Reshape back
to ``[B, S, H*Dv]``, those head reshapes/transposes are absorbed too:
``layout="BSHD"``, ``num_heads=H``, reading the projections as they are.
Otherwise ``layout="BHSD"`` on the per-head tensors.

Refusals are counted: "Softmax output has 2 users" (the probabilities are
read elsewhere), "Softmax is not over the last axis", "mask added before the
scale", "scores come from Reshape, not MatMul(Q, K^T)", and for ``Where`` masks
"Where fill is not -inf or a large negative constant", "mask condition is not
constant", "a query row is masked at every key". Every other candidate -- a
Softmax between two MatMuls that the walk back from ``MatMul(P, V)`` never
reaches -- gets a reason from ``_attention_candidates`` ("probabilities reach
MatMul(P, V) through Dropout"), and a reason stands when a later lowering pass
takes the Softmax into its own fused op (``sweep``).

Where masks, exactness: a kept score gets ``+ 0`` (unchanged); a masked one is
``s + fill`` instead of ``fill``, and both weigh exactly 0 after the Softmax
once the row keeps one key, since ``exp`` underflows to 0 far above
``LARGE_NEGATIVE`` (float32 below about -104). A row masked at every key is
where they could differ: with a finite fill the Where chain gives it uniform
weights and an additive mask softmax(S), so the rewrite is refused; with
``-inf`` the Where chain gives NaN (``-inf - -inf``), and so do the Attention
reference (the same Softmax) and the CUDA kernel (``0 * (1 / 0)`` with an
empty running sum), so it is accepted. (ONNX's Attention gives zeros there:
see ``fuse_attention_onnx``.) A NaN score at a masked position is hidden by
Where and not by the additive mask.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); q, k, v = (b.input(n, (2, 4, 8, 16)) for n in "qkv")
>>> s = b.op("Div", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(4.0))
>>> _ = b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
>>> _ = run_passes(b.graph, ["fuse_attention"])
>>> [(n.op_type, n.attrs["scale"], n.attrs["layout"]) for n in b.graph]
[('Attention', 0.25, 'BHSD')]
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphopt.dtypes import to_numpy as dtype_np
from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.fused import FUSED_DOMAIN
from graphopt.ops.registry import broadcast_shapes, node_opset, normalize_axis
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._attention_candidates import RefusalMemory, candidate_paths, fused_nearby, near_miss, softmaxes
from ._util import remove_dead_from
from .fuse_conv_epilogue import backend_accepts

RULE = "sdpa_to_attention"
HEADS_PERM = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]
KT_PERM = [0, 2, 3, 1]     # [B, S, H, D] -> [B, H, D, S]
# A Where fill at or below this is "large negative": exp() of a masked score underflows to
# exactly 0 whether it reads fill or S + fill, for any S within a few hundred of the row's max.
LARGE_NEGATIVE = -1e3


class Refuse(Exception):
    """Why a candidate is not fused; ``softmax`` is its Softmax once the matcher found one."""

    softmax: Node | None = None


def _op(v: Value | None, op_type: str) -> Node | None:
    p = None if v is None else v.producer
    return p if p is not None and p.op_type == op_type and p.domain == "" and p.graph is v.graph else None


def _only_user(v: Value, what: str) -> None:
    if v.is_graph_output or v.num_uses != 1:
        raise Refuse(f"{what} output has {v.num_uses + int(v.is_graph_output)} users")


def _scalar(v: Value | None) -> float | None:
    if v is None or v.const is None or v.const.size != 1 or v.const.dtype.kind != "f":
        return None
    return float(v.const.reshape(()))


def _widening(cast: Node) -> bool:
    """A Cast of a 16-bit float to float32: exact, and the fused op computes in float32 anyway."""
    x = cast.input(0)
    return x is not None and x.dtype in ("float16", "bfloat16") and cast.output.dtype == "float32"


def _peel_scale(v: Value, chain: list[Node] | None, casts: bool = True) -> tuple[Value, float]:
    """Past scalar Mul/Div by constants and (with ``casts``) widening Casts: (the unscaled value,
    the factor). With a ``chain``, each peeled node must have a single reader and is recorded."""
    scale = 1.0
    while True:
        p = v.producer
        if p is None or p.domain != "" or p.op_type not in ("Mul", "Div", "Cast") or p.graph is not v.graph:
            return v, scale
        a, b = p.input(0), p.input(1)
        if p.op_type == "Cast":
            if not (casts and _widening(p)):
                return v, scale
            nxt, f = a, 1.0
        elif p.op_type == "Div" and _scalar(b) not in (None, 0.0):
            nxt, f = a, 1.0 / _scalar(b)
        elif p.op_type == "Mul" and _scalar(b) is not None:
            nxt, f = a, _scalar(b)
        elif p.op_type == "Mul" and _scalar(a) is not None:
            nxt, f = b, _scalar(a)
        else:
            return v, scale
        if nxt.shape is None or v.shape is None or len(nxt.shape) != len(v.shape):
            return v, scale  # a scalar that broadcasts the shape up is not just a scale
        if chain is not None:
            _only_user(nxt, p.op_type + " input")
            chain.append(p)
        scale *= f
        v = nxt


@dataclass(frozen=True)
class ConstMask:
    """An additive mask known while matching (from a Where with a constant cond). ``match``
    changes nothing, so the initializer is written only by ``mask_value`` when a rewrite
    happens; ``shape`` and ``dtype`` read like a Value's for the checks before that."""

    array: np.ndarray
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> str:
        return self.array.dtype.name


def mask_value(graph: Graph, mask: Value | ConstMask | None) -> Value | None:
    """The mask as a value of ``graph``: a ``ConstMask`` becomes a new initializer."""
    return graph.add_initializer(mask.name, mask.array) if isinstance(mask, ConstMask) else mask


def _unfolded_cond(cond: Value) -> str:
    """Why a Where condition that is not a constant cannot become a constant mask."""
    v = cond
    while v.producer is not None and v.producer.op_type in ("Cast", "Slice", "Not", "Expand", "Unsqueeze"):
        p = v.producer
        if p.op_type == "Slice" and p.input(0).const is not None:
            return "mask condition is a Slice of a constant by a length that is not static"
        v = p.input(0)
    return "mask condition is not constant"


def _where_mask(cond: Value, fill: Value, masked_if: bool) -> ConstMask:
    """``where(cond == masked_if, fill, 0)`` as a ``ConstMask``; raises ``Refuse``."""
    f = _scalar(fill)
    if f is None or not f <= LARGE_NEGATIVE:
        raise Refuse("Where fill is not -inf or a large negative constant")
    if cond.const is None:
        raise Refuse(_unfolded_cond(cond))
    masked = np.asarray(cond.const).astype(bool) == masked_if
    if f != -np.inf and np.atleast_1d(masked).all(axis=-1).any():
        raise Refuse("a query row is masked at every key")  # Where: uniform weights; additive: softmax(S)
    fill_dtype = fill.const.dtype
    array = np.where(masked, fill.const.reshape(()), np.zeros((), fill_dtype)).astype(fill_dtype)
    return ConstMask(array, cond.name + "_additive")


def _peel_mask(x: Value, chain: list[Node]) -> tuple[Value, Value | ConstMask | None]:
    """(the scores, the additive mask) when ``x`` is ``Add(scores, mask)`` or a ``Where``
    mask of the scores (scores: what peels down to a MatMul), else (x, None)."""
    node = _op(x, "Add") or _op(x, "Where")
    if node is None:
        return x, None
    operands = node.inputs[1:] if node.op_type == "Where" else node.inputs
    for i, scores in enumerate(operands):
        if _op(_peel_scale(scores, None)[0], "MatMul") is not None:
            other = operands[1 - i]
            break
    else:
        raise Refuse(f"neither operand of the {node.op_type} before the Softmax is MatMul(Q, K^T) "
                     "(after scales): a second bias or a reshaped score")
    _only_user(scores, "scores")
    mask = other
    if node.op_type == "Where":
        mask = _where_mask(node.input(0), other, masked_if=i == 1)  # scores in the else branch
        if x.shape is None or tuple(x.shape) != tuple(scores.shape or ()):
            raise Refuse("mask does not broadcast to the scores")  # cond or fill would grow them
    try:
        grown = broadcast_shapes(mask.shape, scores.shape)
    except Exception:
        grown = None
    if grown is None or tuple(grown) != tuple(scores.shape):
        raise Refuse("mask does not broadcast to the scores")
    chain.append(node)
    return scores, mask


def _heads(packed: Value, split: Value) -> tuple[int, int] | None:
    """(H, D) when ``packed`` is [B, S, H*D] and ``split`` the same data as [B, S, H, D]."""
    p, s = packed.shape, split.shape
    if p is None or s is None or len(p) != 3 or len(s) != 4:
        return None
    h, d = s[2], s[3]
    if not (isinstance(h, int) and isinstance(d, int) and p[2] == h * d):
        return None
    return (h, d) if all(a == b and a is not None for a, b in zip(p[:2], s[:2])) else None


def _split_heads(v: Value, perm: list[int]) -> tuple[Value, int, int] | None:
    """``x`` [B, S, H*D] when ``v = Transpose(Reshape(x, [B, S, H, D]), perm)``: (x, H, D)."""
    t = _op(v, "Transpose")
    if t is None or list(t.attrs.get("perm") or []) != perm:
        return None
    r = _op(t.input(0), "Reshape")
    if r is None:
        return None
    x = r.input(0)
    hd = _heads(x, r.output)
    return None if hd is None else (x, *hd)


def _merge_heads(out: Value) -> tuple[Value, list[Node]] | None:
    """The [B, S, H*Dv] value when ``out`` [B, H, S, Dv] only goes through Transpose(0,2,1,3) + Reshape."""
    if out.is_graph_output or out.num_uses != 1:
        return None
    t = out.users[0]
    if t.op_type != "Transpose" or t.domain != "" or list(t.attrs.get("perm") or []) != HEADS_PERM:
        return None
    if t.output.is_graph_output or t.output.num_uses != 1:
        return None
    r = t.output.users[0]
    if r.op_type != "Reshape" or r.domain != "" or r.input(0) is not t.output:
        return None
    return None if _heads(r.output, t.output) is None else (r.output, [t, r])


def _peel_nan_guard(probs: Value) -> tuple[Value, list[Node]]:
    """(P, [Where, IsNaN]) when ``probs = Where(IsNaN(P), 0, P)``, torch's guard that
    turns a softmax row masked at every key (NaN) into zeros; else (probs, [])."""
    w = _op(probs, "Where")
    if w is None:
        return probs, []
    isnan, zero, p = _op(w.input(0), "IsNaN"), w.input(1), w.input(2)
    if isnan is None or isnan.input(0) is not p or _scalar(zero) != 0.0 or _op(p, "Softmax") is None:
        return probs, []
    _only_user(probs, "IsNaN guard")
    _only_user(isnan.output, "IsNaN")
    if p.is_graph_output or p.num_uses != 2:
        raise Refuse(f"Softmax output has {p.num_uses + int(p.is_graph_output)} users")
    return p, [w, isnan]


def match(mm2: Node) -> dict:
    """The parts of the attention ending at ``mm2 = MatMul(P, V)``; raises ``Refuse``
    ("not attention" when no Softmax feeds ``mm2``; then ``softmax`` is None)."""
    try:
        return _match(mm2)
    except Refuse as why:
        if why.softmax is None:
            why.softmax = _softmax_of(mm2)
        raise


def _softmax_of(mm2: Node) -> Node | None:
    """The Softmax whose probabilities ``mm2`` reads, past a Cast and torch's NaN guard."""
    v = mm2.input(0)
    for _ in range(3):
        p = v.producer if v is not None else None
        if p is None or p.domain != "":
            return None
        if p.op_type == "Softmax":
            return p
        v = p.input(2) if p.op_type == "Where" else p.input(0) if p.op_type == "Cast" else None
    return None


def _match(mm2: Node) -> dict:
    probs, v = mm2.input(0), mm2.input(1)
    narrow = _op(probs, "Cast")  # mixed precision or autocast: a float32 Softmax cast to V's 16-bit type
    if narrow is not None and probs.dtype == v.dtype and narrow.input(0).dtype == "float32":
        _only_user(probs, "Cast of the probabilities")
        probs = narrow.input(0)
    else:
        narrow = None
    probs, guard = _peel_nan_guard(probs)
    sm = _op(probs, "Softmax")
    if sm is None:
        raise Refuse("not attention")
    x = sm.input(0)
    if x.shape is None or len(x.shape) < 2:
        raise Refuse("scores of unknown shape" if x.shape is None else f"rank {len(x.shape)} scores")
    if x.dtype not in ("float32", "float16", "float64", "bfloat16"):
        raise Refuse(f"{x.dtype} scores")
    rank = len(x.shape)
    axis = sm.attrs.get("axis", 1 if node_opset(sm) < 13 else -1)
    if normalize_axis(axis, rank, sm) != rank - 1:
        raise Refuse("Softmax is not over the last axis")
    if not guard:
        _only_user(probs, "Softmax")
    chain: list[Node] = [*([narrow] if narrow else []), *guard, sm]
    widen = _op(x, "Cast")
    if widen is not None and _widening(widen) and (_op(widen.input(0), "Add") or _op(widen.input(0), "Where")):
        _only_user(x, "Cast of the masked scores")  # a 16-bit mask or Where, then widened for the Softmax
        chain.append(widen)
        x = widen.input(0)
    s, mask = _peel_mask(x, chain)
    s, scale = _peel_scale(s, chain)
    if mask is None and (_op(s, "Add") or _op(s, "Where")) is not None:
        raise Refuse("mask added before the scale")
    mm1 = _op(s, "MatMul")
    if mm1 is None:
        p = s.producer
        raise Refuse("scores are not a MatMul" if p is None else
                     f"scores come from {p.op_type}, not MatMul(Q, K^T) (after the scale, mask and Casts)")
    _only_user(s, "scores MatMul")
    chain.append(mm1)
    q, fq = _peel_scale(mm1.input(0), None, casts=False)
    kt, fk = _peel_scale(mm1.input(1), None, casts=False)
    if q.shape is None or kt.shape is None or v.shape is None or len(q.shape) != rank:
        raise Refuse("unknown shapes")
    if len({q.dtype, kt.dtype, v.dtype, mm2.output.dtype}) != 1:  # the fused op computes in Q's type
        raise Refuse("Q, K, V and the output differ in type")
    return {"q": q, "kt": kt, "v": v, "mask": mask, "scale": scale * fq * fk, "mm1": mm1, "mm2": mm2,
            "chain": chain, "rank": rank, "guard": bool(guard), "softmax": sm}


def _reshaped_transpose(kt: Value) -> Value | None:
    """K when ``kt = Reshape(Transpose(Reshape(K, [-1, S, D]), [0, 2, 1]), [..., D, S])``: the
    dynamo exporter's K^T for a 4-D K (its decomposition of ``k.transpose(-2, -1)``),
    read from the types: the inner Reshape keeps K's last two axes, the outer one
    restores its leading axes with the last two swapped."""
    outer = _op(kt, "Reshape")
    t = None if outer is None else _op(outer.input(0), "Transpose")
    inner = None if t is None else _op(t.input(0), "Reshape")
    if inner is None or list(t.attrs.get("perm") or [2, 1, 0]) != [0, 2, 1]:
        return None
    k, flat = inner.input(0), inner.output
    if k.shape is None or flat.shape is None or kt.shape is None or len(flat.shape) != 3 or len(k.shape) < 3:
        return None
    sd = tuple(k.shape[-2:])
    if tuple(flat.shape[1:]) != sd or tuple(kt.shape) != (*k.shape[:-2], sd[1], sd[0]):
        return None
    if any(d is None for d in kt.shape) or flat.num_uses != 1 or t.output.num_uses != 1:
        return None
    return k


def _key(kt: Value, rank: int) -> tuple[Value, int]:
    """(K as [..., Sk, D], 0) when ``kt`` is a last-axes Transpose of it (or the dynamo
    exporter's Reshape/Transpose/Reshape form of one), else (kt, 1)."""
    t = _op(kt, "Transpose")
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    if t is not None and list(t.attrs.get("perm") or range(rank - 1, -1, -1)) == swap:
        return t.input(0), 0
    k = _reshaped_transpose(kt)
    return (kt, 1) if k is None else (k, 0)


def unrepeated_kv(x: Value) -> tuple[Value, int] | None:
    """(K, n) when ``x`` is K [B, Hkv, S, D] with each head repeated n times in place:
    ``Reshape(Expand(Unsqueeze(K, 2), [B, Hkv, n, S, D]), [B, Hkv*n, S, D])``, transformers'
    ``repeat_kv`` for grouped-query attention as both exporters write it (read from the types).

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); k = b.input("k", (1, 2, 5, 8))
    >>> e = b.op("Expand", b.op("Unsqueeze", k, np.array([2])), np.array([1, 2, 3, 1, 1]))
    >>> r = b.op("Reshape", e, np.array([1, 6, 5, 8]))
    >>> unrepeated_kv(r)[1], r.shape
    (3, (1, 6, 5, 8))
    """
    r = _op(x, "Reshape")
    e = None if r is None else _op(r.input(0), "Expand")
    u = None if e is None else _op(e.input(0), "Unsqueeze")
    if u is None:
        return None
    k = u.input(0)
    ks, es, rs = k.shape, e.output.shape, x.shape
    if ks is None or es is None or rs is None or len(ks) != 4 or len(es) != 5 or len(rs) != 4:
        return None
    n = es[2]
    if not isinstance(n, int) or not isinstance(ks[1], int) or tuple(u.output.shape or ()) != (*ks[:2], 1, *ks[2:]):
        return None
    if tuple(es) != (ks[0], ks[1], n, ks[2], ks[3]) or tuple(rs) != (ks[0], ks[1] * n, ks[2], ks[3]):
        return None
    return k, n


def _packed(m: dict) -> dict | None:
    """The BSHD form (projections [B, S, H*D]) when every head reshape/transpose can go."""
    if m["rank"] != 4:
        return None
    q = _split_heads(m["q"], HEADS_PERM)
    k = _split_heads(m["kt"], KT_PERM)
    if k is None:
        kh, transposed = _key(m["kt"], 4)
        k = None if transposed else _split_heads(kh, HEADS_PERM)
    v = _split_heads(m["v"], HEADS_PERM)
    out = _merge_heads(m["mm2"].output)
    if q is None or k is None or v is None or out is None or not (q[1] == k[1] == v[1]) or q[2] != k[2]:
        return None
    return {"inputs": [q[0], k[0], v[0]], "heads": q[1], "out": out[0], "tail": out[1]}


def _rewrite(graph: Graph, m: dict, ctx: PassContext) -> Node | str:
    """The Attention node written in place of the match, or why not."""
    packed = _packed(m)
    attrs = {"scale": float(np.float32(m["scale"])), "mask_type": "none" if m["mask"] is None else "additive"}
    if packed is not None:
        inputs, out = packed["inputs"], packed["out"]
        attrs.update(layout="BSHD", num_heads=packed["heads"], k_transposed=0)
    else:
        k, transposed = _key(m["kt"], m["rank"])
        inputs, out = [m["q"], k, m["v"]], m["mm2"].output
        attrs.update(layout="BHSD", num_heads=0, k_transposed=transposed)
    if m["mask"] is not None:
        inputs.append(mask_value(graph, m["mask"]))
    node = graph.make_node("Attention", inputs, attrs, output_names=[out.name], output_types=[out.type],
                           domain=FUSED_DOMAIN, name="attention", before=out.producer)
    if not backend_accepts(ctx, node):
        graph.remove(node)
        return f"backend {ctx.backend!r} cannot run Attention"
    result = node.output
    if m["guard"] and not mask_is_finite(m["mask"]):
        result = _nan_guard(graph, node)
    graph.replace_value(out, result, take_name=True)
    remove_dead_from(graph, [m["mm2"], *m["chain"], *(packed["tail"] if packed else []), out.producer])
    return node


def mask_is_finite(mask: Value | ConstMask | None) -> bool:
    """Can no score row become all -inf through this mask? A constant is read; a computed
    mask is followed through Cast/Expand/Unsqueeze/Reshape to a Where of two constants
    (transformers' ``where(keep, 0, finfo.min)``). Anything else may be -inf."""
    if mask is None:
        return True
    if isinstance(mask, ConstMask):
        return bool(np.isfinite(mask.array).all())
    v = mask
    while True:
        if v.const is not None:
            return bool(np.isfinite(np.asarray(v.const, dtype=np.float64)).all())
        p = v.producer
        if p is None or p.domain != "":
            return False
        if p.op_type == "Cast" and p.input(0).dtype in ("bool", "uint8", "int8", "int16", "int32", "int64"):
            return True
        if p.op_type in ("Cast", "Expand", "Unsqueeze", "Reshape", "Identity"):
            v = p.input(0)
        elif p.op_type == "Where":
            return all(x is not None and x.const is not None and np.isfinite(np.asarray(x.const, np.float64)).all()
                       for x in p.inputs[1:])
        else:
            return False


def _nan_guard(graph: Graph, node: Node) -> Value:
    """``Where(IsNaN(y), 0, y)`` after the Attention ``node``: the exported guard set a
    softmax row masked at every key (NaN) to zeros, so its output row is 0 too."""
    y = node.output
    isnan = graph.make_node("IsNaN", [y], output_types=[TensorType("bool", y.shape)], name="attention_isnan",
                            after=node)
    zero = graph.add_initializer("attention_zero", np.zeros((), dtype=dtype_np(y.dtype)))
    return graph.make_node("Where", [isnan.output, zero, y], output_types=[y.type], name="attention_guard",
                           after=isnan).output


def sweep(graph: Graph, ctx: PassContext, pass_name: str, rule: str,
          fuse: Callable[[dict], Node | str]) -> tuple[Counter, Counter]:
    """The body of an attention pass: ``fuse(match)`` at every ``MatMul(P, V)`` that
    ``match`` takes (it rewrites, or says why not), then a reason for every other
    candidate (``_attention_candidates``): a Softmax between two MatMuls the matcher
    refused or never reached, and one that another pass has taken into its fused op
    since it was refused. Returns (fused counts by ``fuse``'s node's op type, refusals)."""
    memory = RefusalMemory(ctx.options, pass_name, graph)
    done: set[Node] = set()
    stats: Counter = Counter()
    refused: Counter = Counter()

    def refuse(sm: Node | None, why: str) -> None:
        if sm is not None:
            why = memory.note(sm, why, degraded=fused_nearby(candidate_paths(sm)))
            done.add(sm)
        refused[(rule, why)] += 1

    for node in list(graph):
        if node.graph is not graph or node.op_type != "MatMul" or node.domain != "":
            continue
        try:
            m = match(node)
        except Refuse as why:
            if str(why) != "not attention":
                refuse(why.softmax, str(why))
            continue
        new = fuse(m)
        if isinstance(new, str):
            refuse(m["softmax"], new)
            continue
        memory.fused(m["softmax"])
        done.add(m["softmax"])
        stats[new.op_type] += 1
        stats["packed_heads"] += int(new.attrs.get("layout") == "BSHD" or "q_num_heads" in new.attrs)
    for sm in softmaxes(graph):
        if sm not in done:
            paths = candidate_paths(sm)
            why = near_miss(sm, paths)
            if why is not None:
                refuse(sm, why)
            else:
                memory.fused(sm)  # no candidate any more: nothing stands
    for why in memory.gone(graph):
        refused[(rule, why)] += 1
    return stats, refused


@register_pass("fuse_attention", opt_level=2, kind="lowering", order=10)
def fuse_attention(graph: Graph, ctx: PassContext) -> PassResult:
    """MatMul(Softmax(Add(Div(MatMul(Q, K^T), c), mask)), V) => Attention[scale=1/c](Q, K, V, mask);
    a Where(cond, fill, scores) mask with a constant cond => the constant mask where(cond, fill, 0)."""
    if ctx.level < 2:
        return PassResult(False, refused=Counter({(RULE, "operator fusion needs -O2"): 1}))
    stats, refused = sweep(graph, ctx, "fuse_attention", RULE, lambda m: _rewrite(graph, m, ctx))
    return PassResult(bool(stats), {k: v for k, v in stats.items() if v}, refused)
