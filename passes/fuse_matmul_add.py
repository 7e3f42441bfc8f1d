"""MatMul plus a bias becomes Gemm; transposes on Gemm inputs become its flags.

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

Rank > 2: BERT's ``[B, S, H] @ W + b`` is left as MatMul + Add ("MatMul input
is rank 3: Gemm is 2-D"). Gemm only takes matrices, so the only standard form
would wrap it in two Reshapes, which is no simpler for a runtime: ONNX Runtime
runs batched MatMul + Add itself (its MatMulAddFusion reshapes where that pays),
and the graphopt backends fuse the bias into the MatMul epilogue in lowering.
"""
from __future__ import annotations

from graphopt.ir import Graph, Node, Value
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
]


@register_pass("fuse_matmul_add", opt_level=2, kind="graph", order=45)
def fuse_matmul_add(graph: Graph, ctx: PassContext) -> PassResult:
    """Add(MatMul(a, W), b) => Gemm(a, W, b) for 2-D a and constant W; Transpose on a Gemm input => transA/transB."""
    stats = RuleStats()
    modified = apply_rules_deep(graph, RULES, stats)
    return PassResult.from_rules(modified, stats)


__all__ = ["RULES", "fuse_matmul_add"]
