"""The scalar-expression IR: what one fused elementwise kernel computes per element.

An expression is an immutable DAG over six node kinds:

* ``Input(i)``: the i-th input of the fused op (broadcast by the op, NumPy rules);
* ``Const(value, dtype)``: a scalar;
* ``Unary(op, a)``, ``Binary(op, a, b)``: a primitive from ``UNARY_OPS`` / ``BINARY_OPS``;
* ``Select(c, a, b)``: ``c ? a : b``;
* ``Cast(a, dtype)``.

The primitives are a closed set, each named after (and evaluated by the NumPy
kernel of) one ONNX op in the registry, so the reference evaluator and the op
rows cannot drift apart, and a code generator needs exactly one C spelling per
primitive (``"sigmoid": "1.f/(1.f+expf(-{0}))"``): ``nodes_in_order`` lists an
expression's nodes operands first, shared subexpressions once, ready to be
printed as SSA statements. Ops with attributes or several steps (``LeakyRelu``,
``HardSwish``, ``Gelu``, ``Clip``...) are written in primitives by
``node_to_expr``. Dtype rules are ONNX's: no promotion, comparisons give bool.

The text form (``format_exprs`` / ``parse_exprs``) is what fused nodes carry in
their ``expr`` / ``epilogue`` attribute, so it survives ONNX export::

    relu(add(in0, in1))                          one output
    t0 = add(in0, 0.5); relu(t0), mul(t0, in2)   a shared value, two outputs
    cast<int64>(in0), 3:int64, true, -inf        casts and typed literals (float32 is bare)

``acc`` is another name for ``in0``: in an epilogue, the base op's accumulator.

>>> e = Unary("relu", Binary("add", Input(0), Const(1.0)))
>>> format_expr(e)
'relu(add(in0, 1.0))'
>>> parse_expr("relu(add(in0, 1.0))") == e
True
>>> evaluate(e, [np.array([-3.0, 2.0], np.float32)])
array([0., 3.], dtype=float32)
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import dtypes
from .errors import GraphoptError

# ---------------------------------------------------------------------------
# primitives: expression op -> the registry op whose NumPy kernel defines it

UNARY_OPS: dict[str, str] = {
    "neg": "Neg", "abs": "Abs", "relu": "Relu", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "recip": "Reciprocal", "floor": "Floor", "ceil": "Ceil", "round": "Round", "sign": "Sign",
    "sin": "Sin", "cos": "Cos", "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan",
    "sinh": "Sinh", "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh",
    "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "softplus": "Softplus",
    "not": "Not", "isnan": "IsNaN",
}
BINARY_OPS: dict[str, str] = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "max": "Max", "min": "Min",
    "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
    "and": "And", "or": "Or", "xor": "Xor",
    "bitand": "BitwiseAnd", "bitor": "BitwiseOr", "bitxor": "BitwiseXor",
}
BOOL_RESULT = frozenset({"not", "isnan", "eq", "lt", "le", "gt", "ge", "and", "or", "xor"})


class ExprError(GraphoptError):
    """A malformed expression, or an op that has no expression form."""


# ---------------------------------------------------------------------------
# nodes


class Expr:
    """Base of the expression nodes: immutable, hashed and compared by structure."""

    __slots__ = ("_hash",)
    _fields: tuple[str, ...] = ()

    def _key(self) -> tuple:
        return (type(self).__name__,) + tuple(getattr(self, f) for f in self._fields)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if type(self) is not type(other) or self._hash != other._hash:
            return False
        if not self.operands:  # a leaf (dicts of nodes meet many equal constants): compare keys
            return self._key() == other._key()
        # iterative, each pair of shared nodes compared once: linear on DAGs with sharing
        stack, seen = [(self, other)], set()
        while stack:
            a, b = stack.pop()
            if a is b or (id(a), id(b)) in seen:
                continue
            if type(a) is not type(b) or hash(a) != hash(b):
                return False
            ka, kb = a._key(), b._key()
            if any(x != y for x, y in zip(ka, kb) if not isinstance(x, Expr)):
                return False
            seen.add((id(a), id(b)))
            stack.extend(zip(a.operands, b.operands))
        return True

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(self, **kw) -> None:
        for k, v in kw.items():
            object.__setattr__(self, k, v)
        # operands are hashed already: hashing here never recurses, however deep the chain
        object.__setattr__(self, "_hash", hash(self._key()))

    @property
    def operands(self) -> tuple["Expr", ...]:
        return ()

    def __repr__(self) -> str:
        return f"<{format_expr(self)}>"


class Input(Expr):
    __slots__ = ("index",)
    _fields = ("index",)

    def __init__(self, index: int):
        if int(index) < 0:
            raise ExprError(f"input index {index} is negative")
        self._init(index=int(index))


class Const(Expr):
    """A scalar literal; ``value`` is normalized to what ``dtype`` can hold."""

    __slots__ = ("value", "dtype")
    _fields = ("value", "dtype")

    def __init__(self, value: Any, dtype: str = "float32"):
        v = np.asarray(value).astype(dtypes.to_numpy(dtype)).item()
        if dtype == "bool":
            v = bool(v)
        elif dtype in dtypes.INT_TYPES:
            v = int(v)
        else:
            v = float(v)
        self._init(value=v, dtype=dtype)

    def _key(self) -> tuple:  # NaN equals NaN here, so that parse(format(e)) == e
        v = self.value
        return ("Const", "nan" if isinstance(v, float) and math.isnan(v) else v, self.dtype)


class Unary(Expr):
    __slots__ = ("op", "a")
    _fields = ("op", "a")

    def __init__(self, op: str, a: Expr):
        if op not in UNARY_OPS:
            raise ExprError(f"unknown unary op {op!r} (known: {', '.join(sorted(UNARY_OPS))})")
        self._init(op=op, a=a)

    @property
    def operands(self):
        return (self.a,)


class Binary(Expr):
    __slots__ = ("op", "a", "b")
    _fields = ("op", "a", "b")

    def __init__(self, op: str, a: Expr, b: Expr):
        if op not in BINARY_OPS:
            raise ExprError(f"unknown binary op {op!r} (known: {', '.join(sorted(BINARY_OPS))})")
        self._init(op=op, a=a, b=b)

    @property
    def operands(self):
        return (self.a, self.b)


class Select(Expr):
    __slots__ = ("c", "a", "b")
    _fields = ("c", "a", "b")

    def __init__(self, c: Expr, a: Expr, b: Expr):
        self._init(c=c, a=a, b=b)

    @property
    def operands(self):
        return (self.c, self.a, self.b)


class Cast(Expr):
    __slots__ = ("a", "dtype")
    _fields = ("a", "dtype")

    def __init__(self, a: Expr, dtype: str):
        dtypes.to_numpy(dtype)  # an unknown dtype fails here
        self._init(a=a, dtype=dtype)

    @property
    def operands(self):
        return (self.a,)


# ---------------------------------------------------------------------------
# traversal and queries


def nodes_in_order(exprs: Iterable[Expr]) -> list[Expr]:
    """Every distinct node of ``exprs``, operands before users (a renderer's statement order).

    >>> x = Input(0); s = Unary("sigmoid", x)
    >>> [format_expr(n) for n in nodes_in_order([Binary("mul", x, s)])]
    ['in0', 'sigmoid(in0)', 'mul(in0, sigmoid(in0))']
    """
    seen: dict[Expr, None] = {}
    for root in exprs:
        stack: list[tuple[Expr, bool]] = [(root, False)]
        while stack:
            e, expanded = stack.pop()
            if e in seen:
                continue
            if expanded:
                seen[e] = None
                continue
            stack.append((e, True))
            stack.extend((o, False) for o in reversed(e.operands) if o not in seen)
    return list(seen)


def inputs_used(exprs: Expr | Iterable[Expr]) -> list[int]:
    """Sorted indices of the inputs an expression (or several) reads."""
    roots = [exprs] if isinstance(exprs, Expr) else list(exprs)
    return sorted({n.index for n in nodes_in_order(roots) if isinstance(n, Input)})


def dtype_of(expr: Expr, input_dtypes: Sequence[str | None]) -> str | None:
    """The result dtype given the inputs' dtypes (None where one is unknown).

    >>> dtype_of(Binary("lt", Input(0), Const(0.0)), ["float32"])
    'bool'
    """
    return dtypes_of([expr], input_dtypes)[expr]


def dtypes_of(exprs: Iterable[Expr], input_dtypes: Sequence[str | None]) -> dict[Expr, str | None]:
    """The dtype of every node of ``exprs`` in one walk (``dtype_of`` of each node, in linear time).

    >>> e = Binary("lt", Input(0), Const(0.0)); dtypes_of([e], ["float32"])[e.a]
    'float32'
    """
    memo: dict[Expr, str | None] = {}
    for n in nodes_in_order(exprs):
        if isinstance(n, Input):
            memo[n] = input_dtypes[n.index] if n.index < len(input_dtypes) else None
        elif isinstance(n, (Const, Cast)):
            memo[n] = n.dtype
        elif isinstance(n, Select):
            memo[n] = memo[n.a]
        elif n.op in BOOL_RESULT:
            memo[n] = "bool"
        else:
            memo[n] = memo[n.a]
    return memo


def substitute(expr: Expr, mapping: Callable[[Input], Expr]) -> Expr:
    """``expr`` with every ``Input`` replaced by ``mapping(input)`` (sharing is kept)."""
    memo: dict[Expr, Expr] = {}
    for n in nodes_in_order([expr]):
        if isinstance(n, Input):
            memo[n] = mapping(n)
        elif isinstance(n, Const):
            memo[n] = n
        elif isinstance(n, Unary):
            memo[n] = Unary(n.op, memo[n.a])
        elif isinstance(n, Binary):
            memo[n] = Binary(n.op, memo[n.a], memo[n.b])
        elif isinstance(n, Select):
            memo[n] = Select(memo[n.c], memo[n.a], memo[n.b])
        else:
            memo[n] = Cast(memo[n.a], n.dtype)
    return memo[expr]


def renumber(expr: Expr, mapping: dict[int, int] | Sequence[int]) -> Expr:
    """``expr`` reading input ``mapping[i]`` where it read input ``i``."""
    return substitute(expr, lambda inp: Input(mapping[inp.index]))


# ---------------------------------------------------------------------------
# NumPy evaluation: each primitive runs the registry kernel of its ONNX op


@lru_cache(maxsize=None)
def _kernel(op_type: str):
    from .ops.registry import KernelContext, get_schema

    schema = get_schema(op_type)
    attrs = schema.resolve_attrs({})
    ctx = KernelContext()
    return lambda *arrays: schema.kernel(list(arrays), attrs, ctx)[0]


def evaluate(expr: Expr, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The value of ``expr`` on NumPy ``inputs`` (broadcast together as the ops do)."""
    return evaluate_many([expr], inputs)[0]


def evaluate_many(exprs: Sequence[Expr], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Several expressions over the same inputs, shared subexpressions computed once."""
    from .ops.elementwise import cast_array

    memo: dict[Expr, np.ndarray] = {}
    for n in nodes_in_order(exprs):
        if isinstance(n, Input):
            if n.index >= len(inputs):
                raise ExprError(f"expression reads in{n.index} but only {len(inputs)} inputs were given")
            memo[n] = np.asarray(inputs[n.index])
        elif isinstance(n, Const):
            memo[n] = np.asarray(n.value, dtype=dtypes.to_numpy(n.dtype))
        elif isinstance(n, Cast):
            memo[n] = cast_array(memo[n.a], n.dtype)
        elif isinstance(n, Select):
            memo[n] = _kernel("Where")(memo[n.c], memo[n.a], memo[n.b])
        elif isinstance(n, Unary):
            memo[n] = _kernel(UNARY_OPS[n.op])(memo[n.a])
        else:
            memo[n] = _kernel(BINARY_OPS[n.op])(memo[n.a], memo[n.b])
    return [memo[e] for e in exprs]


# ---------------------------------------------------------------------------
# text form


def _literal(c: Const) -> str:
    v = c.value
    if c.dtype == "bool":
        return "true" if v else "false"
    if c.dtype in dtypes.INT_TYPES:
        return f"{v}:{c.dtype}"
    if math.isnan(v):
        text = "nan"
    elif math.isinf(v):
        text = "inf" if v > 0 else "-inf"
    else:  # the shortest text that reads back as the same value of this dtype
        text = str(dtypes.to_numpy(c.dtype).type(v))
        if float(dtypes.to_numpy(c.dtype).type(float(text))) != v:
            text = repr(v)
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text if c.dtype == "float32" else f"{text}:{c.dtype}"


MAX_NESTING = 48


def format_exprs(exprs: Sequence[Expr], acc: bool = False) -> str:
    """The text form of one or more expressions (``acc=True`` prints ``in0`` as ``acc``).

    >>> t = Binary("add", Input(0), Input(1))
    >>> format_exprs([Unary("relu", t), Binary("mul", t, Input(2))])
    't0 = add(in0, in1); relu(t0), mul(t0, in2)'
    """
    order = nodes_in_order(exprs)
    uses: dict[Expr, int] = {}
    for n in order:
        for o in n.operands:
            uses[o] = uses.get(o, 0) + 1
    roots = list(exprs)
    root_count: dict[Expr, int] = {}
    for r in roots:
        root_count[r] = root_count.get(r, 0) + 1
    text: dict[Expr, str] = {}
    depth: dict[Expr, int] = {}
    lets: list[str] = []
    for n in order:
        depth[n] = 1 + max((depth[o] for o in n.operands), default=0)
        if isinstance(n, Input):
            s = "acc" if acc and n.index == 0 else f"in{n.index}"
        elif isinstance(n, Const):
            s = _literal(n)
        else:
            args = ", ".join(text[o] for o in n.operands)
            if isinstance(n, (Unary, Binary)):
                s = f"{n.op}({args})"
            elif isinstance(n, Select):
                s = f"select({args})"
            else:
                s = f"cast<{n.dtype}>({args})"
            # bind what more than one place reads (an output read elsewhere too counts), and
            # every MAX_NESTING levels of a deep chain (the text is read back recursively)
            shared = uses.get(n, 0) + root_count.get(n, 0) > 1 and uses.get(n, 0) > 0
            if shared or (depth[n] >= MAX_NESTING and uses.get(n, 0) > 0):
                depth[n] = 1
                name = f"t{len(lets)}"
                lets.append(f"{name} = {s}")
                s = name
        text[n] = s
    body = ", ".join(text[r] for r in roots)
    return "; ".join(lets + [body])


def format_expr(expr: Expr, acc: bool = False) -> str:
    return format_exprs([expr], acc)


_TOKEN = re.compile(r"\s*(?:(?P<num>-?(?:inf|nan|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),;=<>:]))")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise ExprError(f"cannot read expression {self.text!r} at offset {pos}")
            kind = m.lastgroup
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.env: dict[str, Expr] = {}

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok[1] != want):
            got = "the end" if tok is None else repr(tok[1])
            raise ExprError(f"expression {self.text!r}: expected {want or 'more'}, found {got}")
        self.i += 1
        return tok[1]

    def parse(self) -> list[Expr]:
        while True:
            if (self.i + 1 < len(self.toks) and self.toks[self.i][0] == "name"
                    and self.toks[self.i + 1][1] == "="):
                name = self.take()
                self.take("=")
                self.env[name] = self.expr()
                self.take(";")
                continue
            outs = [self.expr()]
            while self.peek() is not None and self.peek()[1] == ",":
                self.take(",")
                outs.append(self.expr())
            if self.peek() is not None:
                raise ExprError(f"expression {self.text!r}: unexpected {self.peek()[1]!r}")
            return outs

    def literal(self, text: str) -> Expr:
        dtype = "float32"
        if self.peek() is not None and self.peek()[1] == ":":
            self.take(":")
            dtype = self.take()
        if dtype in dtypes.INT_TYPES:
            return Const(int(text) if re.fullmatch(r"-?\d+", text) else int(float(text)), dtype)
        return Const(float(text), dtype)

    def args(self, n: int) -> list[Expr]:
        self.take("(")
        out = [self.expr()]
        while len(out) < n:
            self.take(",")
            out.append(self.expr())
        self.take(")")
        return out

    def expr(self) -> Expr:
        kind, text = self.peek() or ("", "")
        self.take()
        if kind == "num":
            return self.literal(text)
        if kind != "name":
            raise ExprError(f"expression {self.text!r}: unexpected {text!r}")
        if text in ("true", "false"):
            return Const(text == "true", "bool")
        if text == "acc":
            return Input(0)
        if re.fullmatch(r"in\d+", text):
            return Input(int(text[2:]))
        if text in self.env:
            return self.env[text]
        if text in UNARY_OPS:
            return Unary(text, *self.args(1))
        if text in BINARY_OPS:
            return Binary(text, *self.args(2))
        if text == "select":
            return Select(*self.args(3))
        if text == "cast":
            self.take("<")
            dtype = self.take()
            self.take(">")
            return Cast(*self.args(1), dtype)
        raise ExprError(f"expression {self.text!r}: unknown name {text!r}")


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> tuple[Expr, ...]:
    return tuple(_Parser(text).parse())


def parse_exprs(text: str) -> list[Expr]:
    """The expressions of a text form (cached: fused nodes parse the same string often)."""
    return list(_parse_cached(text))


def parse_expr(text: str) -> Expr:
    (e,) = parse_exprs(text)
    return e


# ---------------------------------------------------------------------------
# ONNX elementwise ops as expressions

_FROM_UNARY = {v: k for k, v in UNARY_OPS.items()}
_FROM_BINARY = {v: k for k, v in BINARY_OPS.items() if k not in ("max", "min")}


def _b(op, a, b):
    return Binary(op, a, b)


def _clamp(x: Expr, lo: Expr | None, hi: Expr | None) -> Expr:
    if lo is not None:
        x = _b("max", x, lo)
    if hi is not None:
        x = _b("min", x, hi)
    return x


def _fold(op: str, args: Sequence[Expr]) -> Expr:
    out = args[0]
    for a in args[1:]:
        out = _b(op, out, a)
    return out


def _gelu(x: Expr, approximate: str, c) -> Expr:
    if approximate == "tanh":
        inner = _b("mul", c(0.7978845608028654), _b("add", x, _b("mul", c(0.044715), _b("mul", _b("mul", x, x), x))))
        return _b("mul", _b("mul", c(0.5), x), _b("add", c(1.0), Unary("tanh", inner)))
    return _b("mul", _b("mul", c(0.5), x), _b("add", c(1.0), Unary("erf", _b("mul", x, c(0.7071067811865476)))))


def _expm1(x: Expr, c) -> Expr:
    return _b("sub", Unary("exp", x), c(1.0))


def _special(op: str, a: list, at: dict, c, dts: list) -> Expr | None:
    x = a[0]
    zero = c(0.0)
    if op == "Identity":
        return x
    if op in ("Max", "Min", "Sum"):
        return _fold({"Max": "max", "Min": "min", "Sum": "add"}[op], a)
    if op == "Mean":
        if dts[0] not in dtypes.FLOAT_TYPES:
            return None
        return _b("div", _fold("add", a), c(len(a)))
    if op == "Clip":
        lo = a[1] if len(a) > 1 and a[1] is not None else (None if at.get("min") is None else c(at["min"]))
        hi = a[2] if len(a) > 2 and a[2] is not None else (None if at.get("max") is None else c(at["max"]))
        return _clamp(x, lo, hi)
    if op == "LeakyRelu":
        return Select(_b("ge", x, zero), x, _b("mul", x, c(at["alpha"])))
    if op == "PRelu":
        return Select(_b("ge", x, zero), x, _b("mul", x, a[1]))
    if op == "ThresholdedRelu":
        return Select(_b("gt", x, c(at["alpha"])), x, zero)
    if op == "HardSigmoid":
        return _clamp(_b("add", _b("mul", c(at["alpha"]), x), c(at["beta"])), zero, c(1.0))
    if op == "HardSwish":
        return _b("mul", x, _clamp(_b("add", _b("div", x, c(6.0)), c(0.5)), zero, c(1.0)))
    if op == "Gelu":
        return _gelu(x, at.get("approximate", "none"), c)
    if op == "Elu":
        return Select(_b("ge", x, zero), x, _b("mul", c(at["alpha"]), _expm1(x, c)))
    if op == "Selu":
        neg = _b("mul", c(at["alpha"]), _expm1(x, c))
        return _b("mul", c(at["gamma"]), Select(_b("gt", x, zero), x, neg))
    if op == "Celu":
        al = c(at["alpha"])
        return _b("add", _b("max", zero, x), _b("min", zero, _b("mul", al, _expm1(_b("div", x, al), c))))
    if op == "Softsign":
        return _b("div", x, _b("add", c(1.0), Unary("abs", x)))
    if op == "Mish":
        return _b("mul", x, Unary("tanh", Unary("softplus", x)))
    if op == "IsInf":
        tests = []
        if at.get("detect_positive", 1):
            tests.append(_b("eq", x, c(math.inf)))
        if at.get("detect_negative", 1):
            tests.append(_b("eq", x, c(-math.inf)))
        return _fold("or", tests) if tests else Const(False, "bool")
    if op == "Where":
        return Select(a[0], a[1], a[2])
    if op == "Cast":
        to = at["to"]
        return Cast(x, dtypes.from_onnx(to) if isinstance(to, int) else to)
    if op == "CastLike":
        return None if dts[1] is None else Cast(x, dts[1])
    return None


def onnx_to_expr(op_type: str, args: Sequence[Expr | None], attrs: dict, input_dtypes: Sequence[str | None]
                 ) -> Expr | None:
    """The expression of one ONNX elementwise op applied to ``args`` (None: no expression form).

    ``attrs`` are the op's attributes with defaults filled in; literal constants
    take the dtype of the first input.

    >>> format_expr(onnx_to_expr("LeakyRelu", [Input(0)], {"alpha": 0.1}, ["float32"]))
    'select(ge(in0, 0.0), in0, mul(in0, 0.1))'
    """
    dt = input_dtypes[0] if input_dtypes else None
    if dt is None or dt == "string":
        return None
    if op_type == "Where":
        dt = input_dtypes[1]
    args = list(args)
    if op_type in _FROM_UNARY and len(args) == 1:
        return Unary(_FROM_UNARY[op_type], args[0])
    if op_type in _FROM_BINARY and len(args) == 2:
        return Binary(_FROM_BINARY[op_type], args[0], args[1])

    def c(v):
        return Const(v, dt)

    try:
        return _special(op_type, args, attrs, c, list(input_dtypes))
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def node_to_expr(node, args: Sequence[Expr | None]) -> Expr | None:
    """``onnx_to_expr`` for an IR node of the default domain (attributes from its schema)."""
    from .ops.registry import get_schema

    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    schema = get_schema(node.op_type)
    if schema is None or not schema.elementwise:
        return None
    attrs = schema.resolve_attrs(node.attrs)
    return onnx_to_expr(node.op_type, args, attrs, [None if v is None else v.dtype for v in node.inputs])


__all__ = ["Expr", "Input", "Const", "Unary", "Binary", "Select", "Cast", "ExprError", "UNARY_OPS", "BINARY_OPS",
           "BOOL_RESULT", "nodes_in_order", "inputs_used", "dtype_of", "dtypes_of", "substitute", "renumber",
           "evaluate", "evaluate_many", "format_expr", "format_exprs", "parse_expr", "parse_exprs", "onnx_to_expr",
           "node_to_expr"]
