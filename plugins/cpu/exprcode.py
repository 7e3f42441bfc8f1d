"""Pointwise expressions compiled into straight-line Python (the CPU backend's ``ExprProgram``).

An expression (``graphopt.expr``) becomes one generated function: a primitive whose operands
and result share one float dtype is a direct call of its NumPy ufunc, writing (``out=``)
into an operand that is scratch and read for the last time there, decided when the
function is generated; any other primitive calls the registry kernel, as
``graphopt.expr.evaluate`` does. ``Source`` is the small code generator it uses, shared with
``prepared.py`` (fused epilogues) and the interpreter (``backend.py``, the whole step list).

>>> p = ExprProgram(parse_exprs("mul(add(in0, 1.0), in0)")[0], [np.float32])
>>> p([np.array([1.0, 2.0], np.float32)])
array([2., 6.], dtype=float32)
"""
from __future__ import annotations

import functools
import linecache
import weakref
from typing import Callable, Sequence

import numpy as np

from graphopt import dtypes
from graphopt.expr import (BINARY_OPS, UNARY_OPS, Binary, Cast, Const, Expr, Input, Select, Unary, dtypes_of,
                           nodes_in_order, parse_exprs)  # noqa: F401 (parse_exprs: the doctests)
from graphopt.ops.registry import KernelContext, get_schema

_UFUNCS: dict[str, Callable] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
    "min": np.minimum, "neg": np.negative, "abs": np.absolute, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "tanh": np.tanh, "recip": np.reciprocal,
}


try:  # the registry's Erf is scipy's ufunc where scipy is installed
    from scipy.special import erf as _erf_ufunc
except ImportError:  # pragma: no cover - scipy is optional
    _erf_ufunc = None
else:
    _UFUNCS["erf"] = _erf_ufunc


def _relu(x, out=None):
    return np.maximum(x, 0, out=out)


def _registry_kernel(op_type: str):
    schema = get_schema(op_type)
    attrs, ctx = schema.resolve_attrs({}), KernelContext()
    return lambda *arrays: schema.kernel(list(arrays), attrs, ctx)[0]


class Source:
    """Python source built line by line, compiled once into a function; the objects it uses
    (ufuncs, constants, kernels) are bound as its globals.

    >>> src = Source(); f = src.ref(np.add, "add")
    >>> src.line(f"def twice(x):"); src.line(f"    return {f}(x, x)")
    >>> src.function("twice")(np.array([2.0]))
    array([4.])
    """

    _count = 0

    def __init__(self):
        self.lines: list[str] = []
        self.globals: dict = {"__builtins__": __builtins__}
        self._names: dict[int, str] = {}

    def ref(self, obj, hint: str = "g") -> str:
        """The global name under which the code reads ``obj`` (one name per object)."""
        name = self._names.get(id(obj))
        if name is None:
            name = self._names[id(obj)] = f"{hint}_{len(self._names)}"
            self.globals[name] = obj
        return name

    def line(self, text: str, indent: int = 0) -> None:
        self.lines.append("    " * indent + text)

    def function(self, name: str, label: str = "graphopt") -> Callable:
        """Compile the source (once per distinct text: many nodes share one) and return ``name``."""
        code = _compiled("\n".join(self.lines) + "\n", label)
        exec(code, self.globals)
        return self.globals[name]


@functools.lru_cache(maxsize=512)
def _compiled(text: str, label: str):
    Source._count += 1
    filename = f"<{label} #{Source._count}>"
    code = compile(text, filename, "exec")
    # tracebacks through generated code show its lines
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    weakref.finalize(code, linecache.cache.pop, filename, None)
    return code


_STANDARD_CASTS = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                             "uint32", "uint64"})


class ExprProgram:
    """One expression over input arrays, compiled into a straight line of Python.

    A primitive whose operands and result share one float dtype runs as its NumPy ufunc
    (what the registry kernel of that primitive computes), writing into an operand that
    is scratch (made by this program, or an input the caller gave up) and read for the
    last time there; any other primitive runs the registry kernel, as
    ``graphopt.expr.evaluate`` does. Which operand a step writes into is decided when the
    program is compiled, once for each set of inputs given up (``function(scratch)``);
    only a result broadcast bigger than that operand falls back to a new array.

    >>> p = ExprProgram(parse_exprs("relu(add(in0, in1))")[0], [np.float32, np.float32])
    >>> a = np.array([-2., 1.], np.float32); p([a, np.ones(2, np.float32)], scratch=(0,)) is a
    True
    """

    def __init__(self, expr: Expr, in_dtypes: Sequence):
        in_dts = [None if d is None else dtypes.from_numpy(np.dtype(d)) for d in in_dtypes]
        every = nodes_in_order([expr])
        order = [n for n in every if not isinstance(n, Input)]
        self.n_inputs = len(in_dts)
        slot = {Input(i): i for i in range(self.n_inputs)}
        for n in every:
            if isinstance(n, Input) and n not in slot:
                raise ValueError(f"expression reads in{n.index}, the node has {self.n_inputs} inputs")
        dt_of = dtypes_of([expr], in_dts)  # one walk: dtype_of per node would re-walk each subexpression
        self.consts: list[tuple[int, np.ndarray]] = []
        for n in order:
            slot[n] = len(slot)
            if isinstance(n, Const):
                self.consts.append((slot[n], np.asarray(n.value, dtype=dtypes.to_numpy(n.dtype))))
        self.last: dict[int, int] = {}
        ops = [n for n in order if not isinstance(n, Const)]
        for k, n in enumerate(ops):
            for o in n.operands:
                self.last[slot[o]] = k
        # (kind, fn, operand slots, result slot): kind "ufunc" (may write into a dying operand),
        # "astype" (always a new array) or "call" (a registry kernel: may return an operand)
        self.steps: list[tuple[str, object, tuple[int, ...], int]] = []
        for n in ops:
            args = tuple(slot[o] for o in n.operands)
            dt = dt_of[n]
            same = dt in ("float32", "float64") and all(dt_of[o] == dt for o in n.operands)
            if isinstance(n, (Unary, Binary)) and same and (n.op in _UFUNCS or n.op == "relu"):
                self.steps.append(("ufunc", _relu if n.op == "relu" else _UFUNCS[n.op], args, slot[n]))
            elif isinstance(n, Cast):
                src = dt_of[n.a]
                if src is not None and np.dtype(dtypes.to_numpy(src)).kind in "biu" and n.dtype in _STANDARD_CASTS:
                    # what cast_array does for these types, without its floating-point error state
                    self.steps.append(("astype", np.dtype(dtypes.to_numpy(n.dtype)), args, slot[n]))
                else:
                    from graphopt.ops.elementwise import cast_array

                    self.steps.append(("call", (lambda dtype: lambda x: cast_array(x, dtype))(n.dtype), args,
                                       slot[n]))
            elif isinstance(n, Select):
                self.steps.append(("call", _registry_kernel("Where"), args, slot[n]))
            else:
                op = (UNARY_OPS if isinstance(n, Unary) else BINARY_OPS)[n.op]
                self.steps.append(("call", _registry_kernel(op), args, slot[n]))
        self.n_slots = len(slot)
        self.result = slot[expr]
        # the result is a new array or an operand given up as scratch, never another input
        self.fresh_result = bool(self.steps) and self.steps[-1][0] != "call" and self.steps[-1][3] == self.result
        self._functions: dict[tuple, Callable] = {}

    def emit(self, src: "Source", names: Sequence[str], scratch=(), indent: int = 1, prefix: str = "t") -> str:
        """Write the program into ``src`` over the inputs named ``names`` (those in ``scratch``
        may be overwritten); returns the name of the result."""
        name = dict(enumerate(names))
        for s, c in self.consts:
            name[s] = src.ref(c, "c")
        owned: dict[int, str | bool] = {i: True for i in scratch}  # True, or the variable that says so
        # slots whose arrays may share memory, as a union-find whose roots know the group's last
        # reader (the group may be overwritten once that is the current step): linear on long chains
        parent = list(range(self.n_slots))
        group_last = [self.last.get(s, -1) for s in range(self.n_slots)]

        def root(s: int) -> int:
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = parent[s]
            return s
        # a registry kernel's result needs a check that it is new only if a later step may overwrite it
        overwritten = {a for k, (kind, _, args, _) in enumerate(self.steps) if kind == "ufunc"
                       for a in args if self.last[a] == k}

        def join(a: int, b: int) -> None:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[rb] = ra
                group_last[ra] = max(group_last[ra], group_last[rb])

        def choose(call: str, res: str, cands: list[int], ind: int) -> None:
            if not cands:
                src.line(f"{res} = {call})", ind)
                return
            c, rest = cands[0], cands[1:]
            if owned[c] is not True:
                src.line(f"if {owned[c]}:", ind)
                ind += 1
            src.line("try:", ind)
            src.line(f"{res} = {call}, out={name[c]})", ind + 1)
            # the result is broadcast bigger than this operand, or the operand is a NumPy scalar (0-d inputs)
            src.line("except (ValueError, TypeError):", ind)
            choose(call, res, rest, ind + 1)
            if owned[c] is not True:
                src.line("else:", ind - 1)
                choose(call, res, rest, ind)

        for k, (kind, fn, args, res) in enumerate(self.steps):
            r = name[res] = f"{prefix}{res}"
            operands = ", ".join(name[a] for a in args)
            if kind == "ufunc":
                call = f"{src.ref(np.maximum, 'maximum')}({operands}, 0" if fn is _relu else \
                    f"{src.ref(fn, fn.__name__)}({operands}"
                cands = [a for a in dict.fromkeys(args) if self.last[a] == k and owned.get(a)
                         and group_last[root(a)] <= k]
                choose(call, r, cands, indent)
                for a in cands:
                    join(res, a)
                owned[res] = True
            elif kind == "astype":
                src.line(f"{r} = {name[args[0]]}.astype({src.ref(fn, 'dtype')})", indent)
                owned[res] = True
            else:
                src.line(f"{r} = {src.ref(fn, 'kernel')}({operands})", indent)
                for a in args:
                    join(res, a)
                if res in overwritten:
                    owned[res] = f"own{res}"
                    fresh = " and ".join([f"{r}.base is None"] + [f"{r} is not {name[a]}" for a in dict.fromkeys(args)])
                    src.line(f"own{res} = isinstance({r}, {src.ref(np.ndarray, 'ndarray')}) and {fresh}", indent)
        return name[self.result]

    def function(self, scratch: Sequence[int] = ()) -> Callable:
        """``f(*inputs)``: the result, overwriting only the inputs in ``scratch``."""
        f = self._functions.get(scratch) if isinstance(scratch, tuple) else None
        if f is None:
            key = tuple(sorted(set(scratch)))
            f = self._functions.get(key)
            if f is None:
                src = Source()
                params = [f"in{i}" for i in range(self.n_inputs)]
                src.line(f"def expr({', '.join(params)}):")
                src.line(f"return {self.emit(src, params, key)}", 1)
                f = self._functions[key] = src.function("expr", "graphopt expr")
            if isinstance(scratch, tuple):  # the caller's spelling of it, for the next call
                self._functions[scratch] = f
        return f

    def __call__(self, inputs: Sequence[np.ndarray], scratch: Sequence[int] = ()) -> np.ndarray:
        return self.function(scratch)(*inputs)
