"""Fold per-channel affine ops into the Conv, ConvTranspose or Gemm before them.

    BatchNormalization(Conv(x, w, b))           => Conv(x, w', b')
    BatchNormalization(ConvTranspose(x, w, b))  => ConvTranspose(x, w', b')
    BatchNormalization(Gemm(a, w, c))           => Gemm(a, w', c')
    Mul(Conv(x, w, b), s)   [s per output channel]       => Conv(x, w * s, b * s)
    Add(Conv(x, w, b), t)   [t per output channel]       => Conv(x, w, b + t)
    Mul(Gemm(a, w, c), s)   [s per output column]        => Gemm(a, w * s, c * s)
    Add(Gemm(a, w, c), t)   [t broadcasts into the output] => Gemm(a, w, beta * c + t, beta=1)

(ConvTranspose takes Mul/Add the same way.) For BatchNormalization,
``f = scale / sqrt(var + eps)`` scales each output channel and
``t = B - mean * f`` shifts it: ``w' = w * f``, ``b' = b * f + t``.

Output channels sit on axis 0 of a Conv weight ``[Cout, Cin/g, k...]``, on axis 1
of a ConvTranspose weight ``[Cin, Cout/g, k...]`` (group ``gi`` owns input rows
``gi*Cin/g...`` and output channels ``gi*Cout/g + j``), and on Gemm's ``N``:
the columns of ``w`` (``transB=0``) or its rows (``transB=1``).

Folds only when the weights (and bias) are constants, the BatchNormalization is
in inference mode with constant parameters and its statistics outputs unread, and
the Conv/Gemm output has no other reader (the pattern machinery refuses
``Conv 'c' has 2 users``). New weights are new initializers computed in float64
and rounded once: a weight shared with another node is never written in place.

Numbers agree with the unfolded graph up to reassociation: ``(x*w)*f`` becomes
``x*(w*f)``, and the BN scale multiplies the accumulated rounding of the conv,
so tests compare float32 with rtol 1e-4 *and* atol 1e-4.

A BatchNormalization that follows nothing foldable is left as it is, not split
into Mul + Add: one BN node is one pass over memory in every runtime (ONNX
Runtime fuses it likewise), two elementwise nodes are two, and a backend that
wants them fused elementwise lowers BN itself.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Node
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Const, Match, P, Rule, RuleStats, Var, W, X

from ._rewrite_util import apply_rules_deep, broadcasts_into, swap_const
from .eliminate_noops import bypass

LINEAR = ("Conv", "ConvTranspose", "Gemm")
_FLOATS = ("float16", "float32", "float64")


# -- channel bookkeeping -----------------------------------------------------------

def out_channels(lin: Node, w: np.ndarray) -> int:
    """How many output channels (Gemm: columns) ``lin`` writes."""
    if lin.op_type == "Conv":
        return w.shape[0]
    if lin.op_type == "ConvTranspose":
        return w.shape[1] * int(lin.attrs.get("group", 1))
    return w.shape[0] if lin.attrs.get("transB", 0) else w.shape[1]


def scale_channels(lin: Node, w: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``w`` with output channel ``c`` multiplied by ``f[c]`` (float64)."""
    w = w.astype(np.float64)
    if lin.op_type == "Conv":
        return w * f.reshape((-1,) + (1,) * (w.ndim - 1))
    if lin.op_type == "ConvTranspose":
        g = int(lin.attrs.get("group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        grouped = w.reshape((g, cin // g, cout_g) + w.shape[2:])
        fg = f.reshape((g, 1, cout_g) + (1,) * (w.ndim - 2))
        return (grouped * fg).reshape(w.shape)
    return w * (f[:, None] if lin.attrs.get("transB", 0) else f[None, :])


def _check_linear(lin: Node) -> str | None:
    w, b = lin.input(1), lin.input(2)
    if w.const is None:
        return "weights not constant"
    if b is not None and b.const is None:
        return "bias not constant"
    if w.dtype not in _FLOATS:
        return f"{w.dtype} weights"
    if lin.op_type == "ConvTranspose" and w.const.ndim >= 2 and w.const.shape[0] % int(lin.attrs.get("group", 1)):
        return "weight rows do not split into the groups"
    return None


def fold_affine(g: Graph, lin: Node, f: np.ndarray | None, t: np.ndarray | None) -> None:
    """Rewrite ``lin`` in place to compute ``lin(x) * f + t`` (per output channel;
    for Gemm ``t`` may be any constant that broadcasts into the output)."""
    w = lin.input(1).const
    dt = w.dtype
    if f is not None:
        swap_const(g, lin, 1, scale_channels(lin, w, f).astype(dt))
    bias = lin.input(2)
    if lin.op_type == "Gemm":
        beta = float(lin.attrs.get("beta", 1.0))
        c = None if bias is None else bias.const.astype(np.float64) * beta
        if c is not None and f is not None:
            c = c * f
        if t is not None:
            c = t if c is None else c + t
        if c is not None:
            if c.ndim == 2 and c.shape[0] == 1:
                c = c.reshape(-1)
            swap_const(g, lin, 2, c.astype(dt))
            lin.attrs["beta"] = 1.0
        return
    if bias is None and t is None:
        return
    b = np.zeros(out_channels(lin, w)) if bias is None else bias.const.astype(np.float64)
    if f is not None:
        b = b * f
    if t is not None:
        b = b + t
    swap_const(g, lin, 2, b.astype(dt))


def _finish(g: Graph, root: Node, lin: Node) -> bool | str:
    """Readers of ``root`` read ``lin`` instead (a graph output keeps its name)."""
    return bypass(g, root, lin.output)


# -- BatchNormalization -----------------------------------------------------------------

def _fold_batchnorm(g: Graph, m: Match) -> bool | str:
    bn, lin = m.root, m.node("lin")
    if bn.attrs.get("training_mode", 0):
        return "BatchNormalization in training mode"
    if any(v.num_uses or v.is_graph_output for v in bn.outputs[1:]):
        return "BatchNormalization statistics outputs are read"
    rank = lin.output.shape and len(lin.output.shape)
    if not bn.attrs.get("spatial", 1) and (rank is None or rank > 2):
        return "BatchNormalization spatial=0"
    params = [bn.input(i) for i in range(1, 5)]
    if any(p is None or p.const is None for p in params):
        return "BatchNormalization parameters not constant"
    why = _check_linear(lin)
    if why:
        return why
    scale, shift, mean, var = (p.const.astype(np.float64).reshape(-1) for p in params)
    c = out_channels(lin, lin.input(1).const)
    if any(a.size != c for a in (scale, shift, mean, var)):
        return f"BatchNormalization parameters do not have {c} channels"
    f = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    fold_affine(g, lin, f, shift - mean * f)
    return _finish(g, bn, lin)


# -- Mul / Add by constants ---------------------------------------------------------------

def _per_channel(lin: Node, c: np.ndarray) -> np.ndarray | None:
    """``c`` as a per-output-channel vector when broadcasting it against the
    output of ``lin`` (channels on axis 1) varies only along the channels."""
    shape = lin.output.shape
    if len(shape) < 2 or c.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1):
        return None
    n = out_channels(lin, lin.input(1).const)
    if full[1] not in (1, n):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (n,)).copy()


def _shape_known(lin: Node) -> str | None:
    return None if lin.output.shape is not None else f"{lin.op_type} output rank unknown"


def _fold_mul(g: Graph, m: Match) -> bool | str:
    lin = m.node("lin")
    why = _check_linear(lin) or _shape_known(lin)
    if why:
        return why
    f = _per_channel(lin, m.const("c"))
    if f is None:
        return "scale not per-channel"
    fold_affine(g, lin, f, None)
    return _finish(g, m.root, lin)


def _fold_add(g: Graph, m: Match) -> bool | str:
    lin = m.node("lin")
    why = _check_linear(lin) or _shape_known(lin)
    if why:
        return why
    c = m.const("c")
    if lin.op_type == "Gemm":
        if not broadcasts_into(c.shape, lin.output.shape):
            return "bias broadcasts beyond the Gemm output"
        t = c.astype(np.float64)
    else:
        t = _per_channel(lin, c)
        if t is None:
            return "bias not per-channel"
    fold_affine(g, lin, None, t)
    return _finish(g, m.root, lin)


def _same_dtype(g: Graph, m: Match) -> str | None:
    c, out = m["c"], m.node("lin").output
    return None if c.dtype == out.dtype else f"constant is {c.dtype}, output {out.dtype}"


def _lin(op: str) -> P:
    return P(op, X, W, name="lin")


RULES = [
    *[Rule(f"batchnorm_{op.lower()}_to_{op.lower()}",
           P("BatchNormalization", _lin(op), Var("scale"), Var("shift"), Var("mean"), Var("var")),
           _fold_batchnorm) for op in LINEAR],
    *[Rule(f"mul_{op.lower()}_to_{op.lower()}", P("Mul", _lin(op), Const("c"), commutative=True),
           _fold_mul, check=_same_dtype) for op in LINEAR],
    *[Rule(f"add_{op.lower()}_to_{op.lower()}", P("Add", _lin(op), Const("c"), commutative=True),
           _fold_add, check=_same_dtype) for op in LINEAR],
]


@register_pass("fold_batchnorm", opt_level=2, kind="graph", order=40)
def fold_batchnorm(graph: Graph, ctx: PassContext) -> PassResult:
    """BatchNormalization(Conv(x, w, b)) => Conv(x, w', b'); Mul/Add by per-channel constants into Conv/Gemm."""
    stats = RuleStats()
    modified = apply_rules_deep(graph, RULES, stats)
    return PassResult.from_rules(modified, stats)


__all__ = ["RULES", "fold_affine", "fold_batchnorm", "out_channels", "scale_channels"]
