"""Random valid ONNX graphs, one node at a time, each node checked by onnx's strict shape inference.

A ``GraphGen`` holds the values made so far (name, dtype, static shape). An op
generator (``opgen.py``) picks operands among them (recent ones first, so that
chains form and passes have patterns to match), adds constants and attributes,
and calls ``emit``; ``emit`` keeps the node only when onnx's shape inference
(strict, with data propagation) accepts it and gives every output a static
shape of bounded size, so each graph is valid by ONNX's own rules before any
runtime sees it.

>>> import numpy as np
>>> g = GraphGen(np.random.default_rng(0), opset=18)
>>> x = g.new_input("float32", (2, 3))
>>> (y,) = g.emit("Relu", [x])
>>> g.model().graph.node[0].op_type, y.shape
('Relu', (2, 3))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import dtypes

MAX_ELEMENTS = 4096   # per value: graphs stay fast on every backend
DIMS = (1, 1, 2, 3, 4, 5, 7)  # size-1 and odd dims come often


@dataclass(frozen=True)
class OpGen:
    """A row of the generator tables: ``fn(g)`` emits the op (or raises ``Reject``), in graphs of
    opset ``min_opset`` to ``max_opset``, drawn with relative ``weight``."""

    min_opset: int
    fn: Callable[["GraphGen"], None]
    weight: float = 1.0
    max_opset: int = 99


def f32(g: "GraphGen", lo: float, hi: float) -> float:
    """A float attribute drawn in ``[lo, hi)``, exact in float32."""
    return float(np.float32(g.rng.uniform(lo, hi)))


def i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


class Reject(Exception):
    """The op cannot be generated here (no fitting operand, or shape inference refused it)."""


@dataclass(frozen=True)
class Val:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


FLOATS = ("float32",)
NUMERIC = ("float32", "int64", "int32")
INTS = ("int64", "int32")


class GraphGen:
    """The graph being generated: its inputs, initializers, nodes and the values they make."""

    def __init__(self, rng: np.random.Generator, opset: int):
        self.rng = rng
        self.opset = opset
        self.vals: list[Val] = []
        self.inputs: list[Val] = []
        self.inits: list[TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.value_info: dict[str, Val] = {}
        self.sinks: list[Val] = []  # graph outputs that later ops must not read
        self._n = 0

    # -- names and values -----------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def new_input(self, dtype: str, shape: Sequence[int]) -> Val:
        v = Val(self.fresh("in"), dtype, tuple(int(d) for d in shape))
        self.inputs.append(v)
        self.vals.append(v)
        return v

    def const(self, arr, name: str | None = None) -> Val:
        """An initializer (not offered as an operand to later ops: constants are operands by choice)."""
        arr = np.asarray(arr)
        v = Val(name or self.fresh("c"), dtypes.from_numpy(arr.dtype), tuple(arr.shape))
        self.inits.append(numpy_helper.from_array(arr, v.name))
        return v

    def random_shape(self, rank: int | None = None, max_rank: int = 4) -> tuple[int, ...]:
        rank = int(self.rng.integers(0, max_rank + 1)) if rank is None else rank
        while True:
            shape = tuple(int(self.rng.choice(DIMS)) for _ in range(rank))
            if np.prod(shape, dtype=np.int64) <= 512:
                return shape

    def random_array(self, dtype: str, shape: Sequence[int], positive: bool = False) -> np.ndarray:
        r = self.rng
        shape = tuple(shape)
        if dtype == "bool":
            return r.random(shape) < 0.5
        if dtype in INTS or dtype in ("int8", "uint8", "int16"):
            lo = 1 if positive else -4
            return r.integers(lo, 6, shape).astype(dtypes.to_numpy(dtype))
        a = r.standard_normal(shape)
        if positive:
            a = np.abs(a) + 0.5
        return a.astype(dtypes.to_numpy(dtype))

    def pick(self, dtypes_: Sequence[str] = FLOATS, min_rank: int = 0, max_rank: int = 6,
             where: Callable[[Val], bool] | None = None, allow_new: bool = True) -> Val:
        """An operand: a recent value that fits (most of the time), else a new graph input."""
        fits = [v for v in self.vals if v.dtype in dtypes_ and min_rank <= v.rank <= max_rank
                and (where is None or where(v))]
        if fits and (not allow_new or self.rng.random() < 0.85):
            # recent values first: geometric preference from the end
            k = min(int(self.rng.geometric(0.45)) - 1, len(fits) - 1)
            return fits[-1 - k]
        if not allow_new:
            raise Reject("no operand fits")
        for _ in range(20):
            shape = self.random_shape(int(self.rng.integers(min_rank, min(max_rank, 4) + 1)))
            dtype = str(self.rng.choice(list(dtypes_)))
            v = Val("", dtype, shape)
            if where is None or where(v):
                return self.new_input(dtype, shape)
        raise Reject("no operand fits")

    def partner(self, v: Val, dtype: str | None = None, const: bool | None = None) -> Val:
        """A second operand that broadcasts with ``v``: same shape, size-1 dims, fewer dims, or a scalar."""
        r = self.rng
        kind = r.integers(0, 5)
        if kind == 0 or v.rank == 0:
            shape = v.shape if kind == 0 else ()
        elif kind == 1:
            shape = tuple(1 if r.random() < 0.5 else d for d in v.shape)
        elif kind == 2:
            shape = v.shape[int(r.integers(0, v.rank + 1)):]
        elif kind == 3:  # grows a size-1 dim of v, or adds a leading dim
            shape = tuple(int(r.choice(DIMS)) if d == 1 else d for d in v.shape)
            if r.random() < 0.3 and v.rank < 4:
                shape = (int(r.choice((2, 3))),) + shape
        else:
            shape = ()
        dtype = dtype or v.dtype
        if const is None:
            const = r.random() < 0.5
        if const:
            return self.const(self.random_array(dtype, shape))
        same = [u for u in self.vals if u.dtype == dtype and u.shape == shape and u.name != v.name]
        if same and r.random() < 0.6:
            return same[-1]
        return self.new_input(dtype, shape)

    def axis(self, rank: int, allow_end: bool = False) -> int:
        hi = rank + (1 if allow_end else 0)
        a = int(self.rng.integers(0, max(hi, 1)))
        return a - hi if self.rng.random() < 0.3 and hi else a  # negative axes too

    # -- nodes ----------------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Val | None], attrs: dict | None = None, n_out: int = 1,
             domain: str = "") -> list[Val]:
        """Add ``op`` when onnx's strict shape inference accepts it; its outputs become operands."""
        outs = [self.fresh(op[:3].lower()) for _ in range(n_out)]
        node = helper.make_node(op, ["" if v is None else v.name for v in inputs], outs, domain=domain,
                                **(attrs or {}))
        self.nodes.append(node)
        try:
            inferred = self._infer()
        except Exception as exc:
            self.nodes.pop()
            raise Reject(f"{op}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        made = []
        for o in outs:
            t = inferred.get(o)
            if t is None or t[1] is None or any(d is None or d < 0 for d in t[1]) or np.prod(t[1]) > MAX_ELEMENTS:
                self.nodes.pop()
                raise Reject(f"{op}: output {o} has no static shape of bounded size")
            made.append(Val(o, t[0], t[1]))
        for v in made:
            self.vals.append(v)
            self.value_info[v.name] = v
        return made

    def _infer(self) -> dict[str, tuple[str, tuple | None]]:
        m = self._model(outputs=[])
        inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
        out = {}
        for vi in inferred.graph.value_info:
            tt = vi.type.tensor_type
            if not tt.elem_type:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
                if tt.HasField("shape") else None
            out[vi.name] = (dtypes.from_onnx(tt.elem_type), dims)
        return out

    # -- the model ------------------------------------------------------------------------
    def _model(self, outputs: Sequence[Val]) -> onnx.ModelProto:
        vi = [helper.make_tensor_value_info(v.name, dtypes.to_onnx(v.dtype), list(v.shape)) for v in self.inputs]
        vo = [helper.make_tensor_value_info(v.name, dtypes.to_onnx(v.dtype), list(v.shape)) for v in outputs]
        g = helper.make_graph(self.nodes, "fuzz", vi, vo, initializer=self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)],
                                 ir_version=ir_version_for(self.opset), producer_name="graphopt-fuzz")

    def model(self, outputs: Sequence[Val] | None = None) -> onnx.ModelProto:
        """The model whose outputs are ``outputs`` (default: every value no node reads)."""
        if outputs is None:
            read = {i for n in self.nodes for i in n.input}
            outputs = [v for v in self.vals if v.name not in read and v not in self.inputs] + self.sinks
            if not outputs and self.vals:
                outputs = [self.vals[-1]]
        return self._model(outputs)

    def feeds(self) -> dict[str, np.ndarray]:
        return {v.name: self.random_array(v.dtype, v.shape) for v in self.inputs}


def ir_version_for(opset: int) -> int:
    """The smallest IR version that carries ``opset`` (onnxruntime loads no newer IR than it knows)."""
    rows = [row for row in helper.VERSION_TABLE if row[2] >= opset]
    return min(row[1] for row in rows) if rows else onnx.IR_VERSION
