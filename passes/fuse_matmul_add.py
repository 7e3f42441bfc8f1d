"""MatMul plus a bias becomes Gemm on matrices and stays MatMul + Add on 3-D activations; transposes
on Gemm inputs become its flags.

    Add(MatMul(a, W), c)          [a 2-D, W a 2-D constant, c broadcasts into [M, N]]  => Gemm(a, W, c)
    Add(MatMul(a, Transpose(W)), c)                  [W a 2-D constant]  => Gemm(a, W, c, transB=1)
    Gemm(Transpose(a, perm=[1, 0]), b, c, transA=t)  => Gemm(a, b, c, transA=1-t)
    Gemm(a, Transpose(b, perm=[1, 0]), c, transB=t)  => Gemm(a, b, c, transB=1-t)

The weight must be a constant (or a constant behind a 2-D Transpose, which then
becomes ``transB=1`` instead of a transposed copy of the weight); ``c`` is any
value of the output's dtype that broadcasts into ``[M, N]`` without growing it
(the bias ``[N]``, a ``[M, N]`` matrix, a scalar).

Refused, with the reason in the report: an Add operand that would grow the
output ("Add operand broadcasts beyond the MatMul output"), a MatMul read by
other nodes too ("MatMul 'mm' has 2 users"), a weight that is not constant.

Rank > 2: nn.Linear on 3-D activations is MatMul + Add, the other way round too:

    Reshape(Gemm(Reshape(x, [-1, K]), W, b), [*x.shape[:-1], N])  => Add(MatMul(x, W), b)

(GPT-2's Conv1D as the TorchScript and dynamo exporters write it; when the flatten also
merges x's trailing axes, attention's heads, one ``Reshape(x, [0, .., K])`` stays), and
BERT's ``[B, S, H] @ W + b`` is left as it is ("MatMul input is rank 3: Gemm is 2-D").
Decided by measurement (``benchmarks/bench_linear3d.py``, results in
``benchmarks/results/linear3d_2026-12-07.md``): Gemm between Reshapes costs two nodes per
Linear that graphopt's passes cannot cancel (a LayerNorm, a residual Add or an activation
sits between two Linears: BERT tiny 70 -> 76 nodes, BERT-base 370 -> 406); only a rewrite
of the whole residual stream to 2-D would win (at best one node per Linear, 70 -> 64), and
only with static shapes: with a symbolic batch and sequence every Reshape back to [B, S, ...]
(each attention head split) needs its shape computed at run time, more nodes, not fewer.
The CPU backend runs both forms in the same time (the same GEMM; the bias in the MatMul's
epilogue after ``fuse_conv_epilogue``), and ONNX Runtime fuses MatMul + Add itself. The
Reshape/Gemm/Reshape form goes instead: GPT-2's TorchScript export 145 -> 89 nodes, the
shape arithmetic of every view with it.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Match, P, Rule, RuleStats, Var, X

from ._rewrite_util import apply_rules_deep, broadcasts_into
from .fuse_layernorm import FLOATS

SWAP = [1, 0]


def _transpose_2d(node: Node | None) -> bool:
    """A default-domain Transpose that swaps the two axes of a matrix."""
    if node is None or node.op_type != "Transpose" or node.domain != "":
        return False
    x = node.input(0)
    perm = node.attrs.get("perm")
    return x is not None and x.shape is not None and len(x.shape) == 2 and list(perm or SWAP) == SWAP


def _weight(w: Value) -> tuple[Value, int] | str:
    """(the constant weight, transB) for ``w``, or a reason."""
    trans = 0
    if w.const is None and _transpose_2d(w.producer) and w.producer.input(0).const is not None:
        w, trans = w.producer.input(0), 1
    if w.const is None:
        return "weight not constant"
    if w.const.ndim != 2:
        return f"weight is {w.const.ndim}-D"
    return w, trans


def _check_matmul_add(g: Graph, m: Match) -> str | None:
    a, out, c = m["a"], m.node("mm").output, m["c"]
    if a.shape is None:
        return "MatMul input rank unknown"
    if len(a.shape) != 2:
        return f"MatMul input is rank {len(a.shape)}: Gemm is 2-D"
    if out.dtype not in FLOATS:
        return f"{out.dtype} MatMul"
    w = _weight(m["w"])
    if isinstance(w, str):
        return w
    if c.dtype != out.dtype:
        return f"Add operand is {c.dtype}, MatMul output {out.dtype}"
    if out.shape is None or not broadcasts_into(c.shape, out.shape):
        return "Add operand broadcasts beyond the MatMul output"
    return None


def _matmul_add_to_gemm(g: Graph, m: Match) -> bool:
    out = m.root.output
    w, trans_b = _weight(m["w"])
    gemm = g.make_node("Gemm", [m["a"], w, m["c"]], {"transB": trans_b} if trans_b else {},
                       output_types=[out.type], name="gemm", before=m.root)
    return g.replace_value(out, gemm.output, take_name=True)


def _check_reshaped_gemm(g: Graph, m: Match) -> str | None:
    x, gemm, out = m["x"], m.node("gemm"), m.root.output
    if x.shape is None or len(x.shape) < 3 or out.shape is None or gemm.output.shape is None:
        return "ranks unknown or the input is a matrix"
    if any(gemm.attrs.get(a, d) != d for a, d in (("transA", 0), ("alpha", 1.0), ("beta", 1.0))):
        return "Gemm with transA, alpha or beta"
    if gemm.output.dtype not in FLOATS:
        return f"{gemm.output.dtype} Gemm"
    flat = m.node("flat").output.shape
    k = len(out.shape) - 1  # the leading axes the outer Reshape restores
    inner = x.shape[k:]
    if flat is None or len(flat) != 2 or k < 1 or k >= len(x.shape) or not all(isinstance(d, int) for d in inner) \
            or flat[1] != int(np.prod(inner)):
        return "the inner Reshape does not flatten the leading axes"
    if tuple(out.shape) != (*x.shape[:k], gemm.output.shape[1]) or any(d is None for d in out.shape):
        return "the outer Reshape does not restore the leading axes"
    w = _weight(m["w"])
    if isinstance(w, str):
        return w
    if gemm.attrs.get("transB", 0) and (w[0].num_uses > 1 or w[0].is_graph_output):
        return "transposed weight read elsewhere (a transposed copy would double it)"
    c = gemm.input(2)
    if c is not None and (c.shape is None or len(c.shape) > 1 and any(d != 1 for d in c.shape[:-1])):
        return "Gemm's C is not a row bias"
    return None


def _reshaped_gemm_to_matmul_add(g: Graph, m: Match) -> bool:
    x, gemm, out = m["x"], m.node("gemm"), m.root.output
    k = len(out.shape) - 1
    if len(x.shape) > k + 1:  # x's trailing axes merged too (attention heads): [*lead, K], lead copied
        kk = int(np.prod(x.shape[k:]))
        x = g.make_node("Reshape", [x, g.add_initializer("merge_tail", np.array([0] * k + [kk], np.int64))],
                        output_types=[TensorType(x.dtype, (*x.shape[:k], kk))], name="merge_tail",
                        before=m.root).output
    w = gemm.input(1)
    if gemm.attrs.get("transB", 0):
        w = g.add_initializer(f"{w.name}_t", np.ascontiguousarray(w.const.T))
    mm = g.make_node("MatMul", [x, w], output_types=[out.type], name="matmul", before=m.root).output
    c = gemm.input(2)
    if c is not None:
        if c.shape is not None and len(c.shape) == 2:
            c = g.add_initializer(f"{c.name}_row", c.const.reshape(-1)) if c.const is not None else c
        mm = g.make_node("Add", [mm, c], output_types=[out.type], name="bias", before=m.root).output
    return g.replace_value(out, mm, take_name=True)


def _fold_transpose(i: int):
    flag = "transA" if i == 0 else "transB"

    def rewrite(g: Graph, m: Match) -> bool:
        gemm = m.root
        gemm.set_input(i, m["x"])
        gemm.attrs[flag] = 1 - int(gemm.attrs.get(flag, 0))
        return True

    return rewrite


def _gemm_rule(i: int) -> Rule:
    # Gemm's inputs are matrices, so a Transpose feeding one swaps the two axes
    t = P("Transpose", X, name="t", perm=lambda p: p is None or list(p) == SWAP)
    inputs = (t, Var("b")) if i == 0 else (Var("a"), t)
    return Rule(f"transpose_gemm_{'a' if i == 0 else 'b'}_to_gemm", P("Gemm", *inputs), _fold_transpose(i))


RULES = [
    Rule("matmul_add_to_gemm", P("Add", P("MatMul", Var("a"), Var("w"), name="mm"), Var("c"), commutative=True),
         _matmul_add_to_gemm, check=_check_matmul_add),
    _gemm_rule(0),
    _gemm_rule(1),
    Rule("reshaped_gemm_to_matmul_add",
         P("Reshape", P("Gemm", P("Reshape", X, Var("s1"), name="flat"), Var("w"), name="gemm"), Var("s2")),
         _reshaped_gemm_to_matmul_add, check=_check_reshaped_gemm),
    Rule("reshaped_gemm_to_matmul_add",
         P("Reshape", P("Gemm", P("Reshape", X, Var("s1"), name="flat"), Var("w"), Var("c"), name="gemm"), Var("s2")),
         _reshaped_gemm_to_matmul_add, check=_check_reshaped_gemm),
]


@register_pass("fuse_matmul_add", opt_level=2, kind="graph", order=45)
def fuse_matmul_add(graph: Graph, ctx: PassContext) -> PassResult:
    """Add(MatMul(a, W), b) => Gemm(a, W, b) for 2-D a and constant W; Transpose on a Gemm input => transA/transB;
    Gemm between a flatten and its inverse => Add(MatMul(x, W), b) on the 3-D x."""
    stats = RuleStats()
    modified = apply_rules_deep(graph, RULES, stats)
    return PassResult.from_rules(modified, stats)


__all__ = ["RULES", "fuse_matmul_add"]
