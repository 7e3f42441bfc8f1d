"""MatMul, Gemm and their fused forms: a float32 SIMT GEMM (``gemm.py``) or a
float16/bfloat16 tensor-core GEMM (``tc_gemm.py``, split-K where the output tiles
cannot fill the GPU), with bias and the fused epilogue expression run in registers
before the store. A MatMul's batch dims of extent 1 are dropped, and a batch over one
shared B folds into M where every view allows (``fold_batch_into_m``); a wgmma GEMM
loads its stages by TMA where it can (``wgmma_tma.prefer_tma``).

>>> spec = matmul_spec("float16", 64, 64, 64, a=View("float16", (64, 1)), b=View("float16", (64, 1)),
...                    c=View("float16", (64, 1)))      # doctest: +SKIP
>>> type(spec).__name__                                   # doctest: +SKIP
'TcMatmulSpec'
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np

from graphopt.expr import Input, parse_exprs
from graphopt.ir import Node, Value

from ..exprc import expr_fn
from ..gemm import make_matmul, render_gemm
from ..scalar import ScalarFn, broadcast_strides, contiguous_strides
from ..specs import Epilogue, View, prod
from ..tc_gemm import MMA_HELPERS, TcMatmulSpec, make_tc_matmul, render_tc_matmul
from ..wgmma_tma import prefer_tma
from .common import FUSED_DOMAIN, fn_check
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

def gemm_dtypes(node: Node, n_base: int = 3) -> str | None:
    """float32 on SIMT cores, or float16 / bfloat16 on tensor cores: A and B alike; the result
    and Gemm's C (both met by the float32 epilogue) alike or float32 (a fused Cast, a wide bias)."""
    ab = {v.dtype for v in node.inputs[:2] if v is not None}
    rest = {v.dtype for v in [*node.inputs[2:n_base], *node.outputs] if v is not None}
    if ab in ({"float32"}, {"float16"}, {"bfloat16"}) and rest <= ab | {"float32"}:
        return None
    return (f"{node.op_type} on {'/'.join(sorted(ab | rest))} has no CUDA kernel (float32, or float16 or bfloat16 "
            "on tensor cores)")


def matmul_spec(dtype: str, M, N, K, batch=(), *, a, b, c, alpha=1.0, epilogue=None):
    """A SIMT spec for float32, a tensor-core spec for float16 and bfloat16; a wgmma one loads its
    stages by TMA where it can (``wgmma_tma.prefer_tma``; ``GRAPHOPT_CUDA_TMA=0`` keeps cp.async)."""
    if dtype in MMA_HELPERS:
        return prefer_tma(make_tc_matmul(M, N, K, batch, a=a, b=b, c=c, alpha=alpha, epilogue=epilogue))
    return make_matmul(M, N, K, batch, a=a, b=b, c=c, alpha=alpha, epilogue=epilogue)


def render_matmul(spec):
    return render_tc_matmul(spec) if isinstance(spec, TcMatmulSpec) else render_gemm(spec)


# per lowering: the split-K workspace and tile counters, with their sizes
_SPLITK: "weakref.WeakKeyDictionary[Lowerer, tuple[Value, Value, int, int]]" = weakref.WeakKeyDictionary()


def splitk_args(lw: Lowerer, spec) -> list[Value]:
    """The extra arguments of a split-K tensor-core kernel (``spec.workspace`` says how much):
    a float32 workspace for the partial tiles and an int32 counter per tile, zero at the start.
    One pair serves every such launch of the graph: launches run one after another on one
    stream, and each leaves its counters at zero, so the buffers are constants of the
    compiled graph, made once (larger when a later launch needs more).

    >>> splitk_args(lw, make_tc_matmul(128, 768, 768))     # doctest: +SKIP
    [Value('splitk_workspace_0'), Value('splitk_counters_0')]
    """
    ws, ctr = getattr(spec, "workspace", (0, 0))
    if not ws:
        return []
    have = _SPLITK.get(lw)
    if have is None or have[2] < ws or have[3] < ctr:
        n = 0 if have is None else int(have[0].name.rsplit("_", 1)[1]) + 1
        ws, ctr = max(ws, have[2] if have else 0), max(ctr, have[3] if have else 0)
        have = (lw.new_const(f"splitk_workspace_{n}", np.zeros(ws, np.float32)),
                lw.new_const(f"splitk_counters_{n}", np.zeros(ctr, np.int32)), ws, ctr)
        _SPLITK[lw] = have
    return [have[0], have[1]]


def bias_fn(bias_dtype: str, beta: float = 1.0) -> ScalarFn:
    """``acc + beta * bias``: Gemm's C, Conv's B."""
    text = "add(in0, in1)" if beta == 1.0 else f"add(in0, mul(in1, {beta!r}))"
    return expr_fn(parse_exprs(text), ["float32", bias_dtype])


def gemm_epilogue(node: Node, n_base: int, out_shape, base: tuple[ScalarFn, View, Value] | None,
              to_kernel_view=lambda v: v) -> tuple[Epilogue, list[Value]]:
    """The kernel epilogue of a GEMM-family node: its base operand (bias, C) and, for a fused
    node, its ``epilogue`` expression over the accumulator and the extra inputs (views broadcast
    to the output, then mapped to the kernel's coordinates by ``to_kernel_view``)."""
    fn, views, args = None, [], []
    if base is not None:
        fn, view, value = base
        views.append(to_kernel_view(view))
        args.append(value)
    text = node.attr("epilogue", "") if node.domain == FUSED_DOMAIN else ""
    e = parse_exprs(text)[0] if text else Input(0)
    if e != Input(0):
        extras = list(node.inputs[n_base:])
        ep_fn = expr_fn([e], ["float32", *(v.dtype for v in extras)])
        fn = ep_fn if fn is None else fn.then(ep_fn)
        views += [to_kernel_view(View(v.dtype, broadcast_strides(static_shape(v, node), out_shape))) for v in extras]
        args += extras
    return Epilogue(fn, tuple(views)), args


def epilogue_check(node: Node, n_base: int) -> str | None:
    if node.domain != FUSED_DOMAIN or not node.attr("epilogue", ""):
        return None
    extras = [v.dtype for v in node.inputs[n_base:]]
    return fn_check(lambda: expr_fn(parse_exprs(node.attr("epilogue")), ["float32", *extras]))


def _gemm_check(n_base: int):
    return lambda node: gemm_dtypes(node, n_base) or epilogue_check(node, n_base)


@lowering("MatMul", check=_gemm_check(2))
@lowering("FusedMatMul", domain=FUSED_DOMAIN, check=_gemm_check(2))
def lower_matmul(node: Node, lw: Lowerer) -> None:
    a, b = node.input(0), node.input(1)
    y = node.output
    dt = a.dtype  # of A and B; the result may be float32 (a fused Cast)
    ash, bsh = static_shape(a, node), static_shape(b, node)
    ast, bst = contiguous_strides(ash), contiguous_strides(bsh)
    a_vec, b_vec = len(ash) == 1, len(bsh) == 1
    if a_vec:
        ash, ast = (1, ash[0]), (0, ast[0])
    if b_vec:
        bsh, bst = (bsh[0], 1), (bst[0], 0)
    M, K = ash[-2:]
    N = bsh[-1]
    full = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    # batch dims of extent 1 address nothing: dropped, a [1, S, H] x [H, N] MatMul is an unbatched
    # GEMM (which TMA can load: wgmma_tma.tma_suits)
    keep = [i for i, d in enumerate(full) if d != 1]
    batch = tuple(full[i] for i in keep)

    def kept(strides) -> tuple:  # (*full batch, m, n) strides -> (*batch, m, n)
        return tuple(strides[i] for i in keep) + tuple(strides[len(full):])

    av = View(dt, kept(broadcast_strides(ash[:-2], full, ast[:-2]) + ast[-2:]))
    bv = View(dt, kept(broadcast_strides(bsh[:-2], full, bst[:-2]) + bst[-2:]))

    def to_kernel_view(v: View) -> View:  # (*batch, [M], [N]) of the output -> (*batch, M, N)
        st = list(v.strides)
        if a_vec:
            st.insert(len(st) - (0 if b_vec else 1), 0)
        if b_vec:
            st.append(0)
        return View(v.dtype, kept(st), v.offset)

    ep, ep_args = gemm_epilogue(node, 2, static_shape(y, node), None, to_kernel_view)
    cv = View.contiguous(y.dtype, (*batch, M, N))
    folded = fold_batch_into_m(batch, M, bv, [av, cv, *ep.operands])
    if folded is not None:  # one taller GEMM over a shared B: bigger tiles, and a 2-D one TMA can load
        (av, cv, *ops), M, batch = folded, M * prod(batch), ()
        bv, ep = View(dt, bv.strides[-2:], bv.offset), Epilogue(ep.fn, tuple(ops))
    spec = matmul_spec(dt, M, N, K, batch, a=av, b=bv, c=cv, epilogue=ep)
    lw.emit(node, render_matmul(spec), spec, [y, a, b, *ep_args, *splitk_args(lw, spec)])


def fold_batch_into_m(batch: tuple, M: int, b: View, views: list[View]) -> list[View] | None:
    """``views`` (strides over ``(*batch, m, x)``) as 2-D views over ``(batch * m, x)``, when B is
    one matrix for every batch entry (batch strides 0) and each view's batch dims continue its m
    dim (stride of a batch dim = extent * stride of the dim after it); else None.

    >>> fold_batch_into_m((4,), 8, View("float16", (0, 16, 1)), [View("float16", (128, 16, 1))])
    [View(dtype='float16', strides=(16, 1), offset=0)]
    """
    nb = len(batch)
    if not nb or any(b.strides[:nb]):
        return None
    out = []
    for v in views:
        step, extent = v.strides[nb], M  # the stride and extent of the dim inside the next batch dim
        for d, st in zip(reversed(batch), reversed(v.strides[:nb])):
            if st != step * extent:
                return None
            step, extent = st, d
        out.append(View(v.dtype, v.strides[nb:], v.offset))
    return out


@lowering("Gemm", check=_gemm_check(3))
@lowering("FusedGemm", domain=FUSED_DOMAIN, check=_gemm_check(3))
def lower_gemm(node: Node, lw: Lowerer) -> None:
    a, b, c = node.input(0), node.input(1), node.input(2)
    y = node.output
    dt = a.dtype  # of A and B; the result may be float32 (a fused Cast)
    ash, bsh = static_shape(a, node), static_shape(b, node)
    ast, bst = contiguous_strides(ash), contiguous_strides(bsh)
    if node.attr("transA", 0):
        ash, ast = ash[::-1], ast[::-1]
    if node.attr("transB", 0):
        bsh, bst = bsh[::-1], bst[::-1]
    M, K = ash
    N = bsh[1]
    beta = float(node.attr("beta", 1.0))
    base = None
    if c is not None and beta != 0.0:
        base = (bias_fn(c.dtype, beta), View(c.dtype, broadcast_strides(static_shape(c, node), (M, N))), c)
    ep, ep_args = gemm_epilogue(node, 3, (M, N), base)
    spec = matmul_spec(dt, M, N, K, a=View(dt, ast), b=View(dt, bst), c=View.contiguous(y.dtype, (M, N)),
                        alpha=node.attr("alpha", 1.0), epilogue=ep)
    lw.emit(node, render_matmul(spec), spec, [y, a, b, *ep_args, *splitk_args(lw, spec)])
