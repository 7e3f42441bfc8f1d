"""Pointwise expressions as native programs: one pass over the data, in C, for a whole fused chain.

``graphopt.expr`` describes what a fused elementwise node (or a conv/GEMM epilogue)
computes per element. NumPy runs it one ufunc call per primitive (``exprcode.py``),
each a full pass over memory plus a Python call; here the expression becomes a short
register program that ``native/exprvm.h`` runs over blocks of 256 values kept in L1,
so a SiLU or a GELU after a conv or a GEMM is one cheap sweep, computed while the
data is in cache. Register allocation is by liveness, so a 100,000-primitive chain
needs a handful of registers, and building a program is one linear walk.

Programs take float32 (and bool) values only and the primitives ``native/exprvm.h``
lists; ``compile_program`` returns None for anything else, and NumPy runs it. The
transcendentals are vector approximations within a few float32 ulps of NumPy's
(``native/vmath.h``); everything else rounds exactly as NumPy does.

>>> from graphopt.expr import parse_exprs
>>> prog = compile_program(parse_exprs("mul(in0, sigmoid(in0))"), ["float32"])   # doctest: +SKIP
>>> prog.run([np.array([0.0, 1.0], np.float32)])                                 # doctest: +SKIP
array([0.       , 0.7310586], dtype=float32)
"""
from __future__ import annotations

import functools
import math
import struct
from typing import Callable, Sequence

import numpy as np

from graphopt.expr import Binary, Cast, Const, Expr, Input, Select, Unary, dtypes_of, nodes_in_order

MAX_CONSTS = 256  # distinct constants a program keeps (each is a register block of 256 values)
MAX_DIMS = 8  # outer axes of the broadcast geometry, after merging
MAX_INPUTS = 64  # inputs (and outputs) a program reads (exprvm.h's limit)
_KIND = {"float32": 0, "bool": 1}
_NP_KIND = {np.dtype(np.float32): 0, np.dtype(np.bool_): 1}
# the primitives that are not worth a native call on their own: NumPy's ufunc is one pass already
CHEAP = frozenset({"add", "sub", "mul", "div", "max", "min", "neg", "abs", "relu", "copy", "square"})


def _library():
    from . import native

    return native.library()


@functools.lru_cache(maxsize=4)
def _opcodes(lib) -> dict[str, int]:
    """The instruction set's opcodes by name, as the extension numbers them (``expr_ops``)."""
    return {name: i for i, name in enumerate(lib.expr_ops())}


class Program:
    """A compiled expression program over inputs ``used`` (node input indices) with
    ``n_out`` outputs; ``code`` is the int32 array ``native/exprvm.h`` reads."""

    def __init__(self, code: np.ndarray, used: tuple[int, ...], in_kinds: list[int], out_kinds: list[int],
                 ops: list[str], scratch_floats: int):
        self.code = code
        self.used = used
        self.in_kinds = in_kinds
        self.out_kinds = out_kinds
        self.ops = ops
        self.scratch_floats = scratch_floats
        self._geo: dict[tuple, tuple[tuple, np.ndarray]] = {}

    @property
    def worth_it(self) -> bool:
        """Whether a native call beats NumPy's: more than one primitive, or a costly one."""
        return len(self.ops) > 1 or any(op not in CHEAP for op in self.ops)

    def geometry(self, shapes: tuple) -> tuple[tuple, np.ndarray] | None:
        """``(output shape, int64 geometry)`` for inputs of ``shapes`` (None: more axes than
        ``MAX_DIMS`` after merging, or shapes that do not broadcast)."""
        got = self._geo.get(shapes)
        if got is None:
            got = _geometry(shapes)
            if got is None:
                return None
            if len(self._geo) > 64:
                self._geo.clear()
            self._geo[shapes] = got
        return got

    def run(self, inputs: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray | None:
        """The first output for the node inputs ``inputs`` (all of them; the program reads
        ``used``), written into ``out`` when given (it must have the output's shape), or
        None when these arrays do not fit the program (dtypes, axes)."""
        lib = _library()
        ins = []
        for i, k in zip(self.used, self.in_kinds):
            a = inputs[i]
            if a.__class__ is not np.ndarray or _NP_KIND.get(a.dtype) != k:
                return None
            ins.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        geo = self.geometry(tuple(a.shape for a in ins))
        if geo is None:
            return None
        shape, g = geo
        if out is None or out.shape != shape or out.dtype != np.float32 or self.out_kinds[0] \
                or not out.flags.c_contiguous or not out.flags.writeable:
            out = np.empty(shape, np.bool_ if self.out_kinds[0] else np.float32)
        lib.expr(self.code, g, tuple(ins), (out,))
        return out


def _geometry(shapes: tuple) -> tuple[tuple, np.ndarray] | None:
    try:
        out = np.broadcast_shapes(*shapes) if shapes else ()
    except ValueError:
        return None
    r = len(out)
    if math.prod(out) == 0:
        return out, np.array([0, 1, 0] + [0] * len(shapes), np.int64)
    strides = []
    for s in shapes:
        s = (1,) * (r - len(s)) + tuple(s)
        st, acc = [], 1
        for d in reversed(range(r)):
            st.append(0 if s[d] == 1 else acc)
            acc *= s[d]
        strides.append(st[::-1])
    # drop the output's unit axes, then merge neighbours that every input walks as one
    dims = [d for d in range(r) if out[d] != 1]
    sizes = [out[d] for d in dims]
    sts = [[st[d] for d in dims] for st in strides]
    k = len(sizes) - 1
    while k > 0:
        if all(st[k - 1] == st[k] * sizes[k] for st in sts):
            sizes[k - 1] *= sizes[k]
            del sizes[k]
            for st in sts:
                st[k - 1] = st[k]
                del st[k]
        k -= 1
    if not sizes:
        sizes, sts = [1], [[0] for _ in sts]
    if len(sizes) - 1 > MAX_DIMS or any(st[-1] not in (0, 1) for st in sts):
        return None
    L, outer = sizes[-1], sizes[:-1]
    g = [len(outer), L, math.prod(outer)] + outer
    for st in sts:
        g += [st[-1]] + st[:-1]
    return out, np.array(g, np.int64)


def compile_program(exprs: Sequence[Expr], in_dtypes: Sequence[str | None]) -> Program | None:
    """The native program of ``exprs`` over inputs of ``in_dtypes`` (graphopt dtype names),
    or None when the native kernels do not run here or the expressions use a dtype or a
    primitive they do not have."""
    lib = _library()
    if lib is None or not hasattr(lib, "expr"):
        return None
    opcodes = _opcodes(lib)
    order = nodes_in_order(exprs)
    dts = dtypes_of(exprs, list(in_dtypes))
    if any(dts.get(n) not in _KIND for n in order):
        return None
    used = sorted({n.index for n in order if isinstance(n, Input)})
    if len(used) > MAX_INPUTS or len(exprs) > MAX_INPUTS:
        return None
    reg: dict[Expr, int] = {Input(i): k for k, i in enumerate(used)}
    consts: dict[tuple, int] = {}
    const_values: list[float] = []
    for n in order:
        if isinstance(n, Const):
            key = (float(n.value), str(n.value))  # 0.0 and -0.0 apart, NaN once
            if key not in consts:
                consts[key] = len(used) + len(const_values)
                const_values.append(float(n.value))
            reg[n] = consts[key]
    if len(const_values) > MAX_CONSTS:
        return None
    first = len(used) + len(const_values)
    # each computed node's instruction, then register allocation by its last reader
    steps: list[tuple[Expr, str, tuple[Expr, ...]]] = []
    for n in order:
        if isinstance(n, (Input, Const)):
            continue
        got = _instruction(n, dts)
        if got is None or got[0] not in opcodes:
            return None
        steps.append((n, got[0], got[1]))
    last: dict[Expr, int] = {}
    for k, (_, _, args) in enumerate(steps):
        for a in args:
            last[a] = k
    for e in exprs:
        last[e] = len(steps)  # outputs live to the end
    free: list[int] = []
    n_comp = 0
    code: list[int] = []
    ops: list[str] = []
    for k, (n, op, args) in enumerate(steps):
        srcs = [reg[a] for a in args]
        for a in dict.fromkeys(args):  # operands read for the last time give their register back first
            if last[a] == k and reg[a] >= first:
                free.append(reg[a])
        if free:
            dst = free.pop()
        else:
            dst = first + n_comp
            n_comp += 1
        reg[n] = dst
        srcs = (srcs + [srcs[0]] * 3)[:3]
        code += [opcodes[op], dst, *srcs]
        ops.append(op)
        if last.get(n, -1) < k:  # computed but never read (an unused shared value): free at once
            free.append(dst)
    out_regs = [reg[e] for e in exprs]
    in_kinds = [_KIND[in_dtypes[i]] for i in used]
    out_kinds = [_KIND[dts[e]] for e in exprs]
    head = [len(used), len(const_values), n_comp, len(exprs), len(steps)]
    bits = list(struct.unpack(f"{len(const_values)}i", struct.pack(f"{len(const_values)}f", *const_values)))
    arr = np.array(head + in_kinds + out_regs + out_kinds + bits + code, np.int32)
    return Program(arr, tuple(used), in_kinds, out_kinds, ops, (first + n_comp) * 256)


def _instruction(n: Expr, dts: dict) -> tuple[str, tuple[Expr, ...]] | None:
    """``(op, operands)`` of the native instruction computing ``n``, or None."""
    if isinstance(n, Unary):
        return n.op, (n.a,)
    if isinstance(n, Binary):
        if n.op == "pow" and isinstance(n.b, Const) and dts[n.b] == "float32":
            # NumPy's power takes these scalar exponents as copy, square, sqrt and reciprocal (its
            # answers for -inf and -0.0 are theirs, not powf's); x*x*x is within 2 roundings of powf
            special = {1.0: "copy", 2.0: "square", 0.5: "sqrt", -1.0: "recip", 3.0: "cube"}.get(float(n.b.value))
            if special is not None:
                return special, (n.a,)
        return n.op, (n.a, n.b)
    if isinstance(n, Select):
        return "select", (n.c, n.a, n.b)
    if isinstance(n, Cast):
        if n.dtype == "float32":
            return "copy", (n.a,)  # from float32, or from bool (already 1.0 / 0.0)
        if n.dtype == "bool":
            return "tobool", (n.a,)
    return None


def conv_epilogue(expr: Expr) -> Program | None:
    """The program of a conv epilogue over the accumulator alone (``acc`` = in0), small enough
    for the conv kernel to apply to each tile before storing it (None otherwise)."""
    from graphopt.expr import inputs_used

    if inputs_used(expr) != [0]:
        return None
    prog = compile_program([expr], ["float32"])
    if prog is None or prog.out_kinds != [0] or prog.scratch_floats > 8192:
        return None
    return prog


def runner(prog: Program, n_inputs: int, donate: bool = False) -> Callable:
    """``fn(*inputs)`` running ``prog`` on a node's ``n_inputs`` arrays; with ``donate`` the
    result is written over input 0 (the caller checked it may be and has the result's shape).
    Arrays the program does not take (other dtypes) go to ``fallback`` set on the function."""
    run = prog.run

    if donate:
        def fn(*xs):
            r = run(xs, xs[0])
            return fn.fallback(*xs) if r is None else r
    else:
        def fn(*xs):
            r = run(xs)
            return fn.fallback(*xs) if r is None else r
    fn.native = True
    fn.program = prog
    return fn
