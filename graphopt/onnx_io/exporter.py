"""``Graph`` -> ONNX ``ModelProto``.

* Names, doc strings, metadata and opset imports are kept; domains that nodes
  use but the graph does not import are added (``ai.graphopt`` at version 1).
* ``producer_name`` becomes ``"graphopt"``; the original producer is kept in the
  metadata under ``graphopt.original_producer``.
* ``ir_version`` is the smallest one that the model's opsets and element types
  need (per ``onnx.helper.VERSION_TABLE``), at least 4: onnxruntime releases
  cannot load the newest IR versions that onnx writes by default.
* Attribute types follow the op's ONNX schema where onnx knows the op, then the
  type recorded on import, then the Python type (int -> INT, float -> FLOAT,
  list of ints -> INTS, str -> STRING, ndarray -> TENSOR, Graph -> GRAPH).
* graphopt's own fused ops (domain ``ai.graphopt``) are written only with
  ``keep_fused=True``; onnxruntime cannot run them.
* A main-graph input or output whose rank is unknown is written without a
  shape: onnxruntime loads that, ``onnx.checker`` does not.

>>> m = to_onnx_model(graph)                           # doctest: +SKIP
>>> onnx.checker.check_model(m, full_check=True)       # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto

from .. import dtypes
from ..errors import GraphoptError
from ..ir import Graph, Node, Value
from .tensors import _first_line, array_to_tensor

FUSED_DOMAIN = "ai.graphopt"
MIN_IR_VERSION = 4  # IR 3 demands every initializer be a graph input
_A = AttributeProto

# element types that need a newer IR than the opset alone would
_DTYPE_IR = {"float8e4m3fn": 9, "float8e4m3fnuz": 9, "float8e5m2": 9, "float8e5m2fnuz": 9,
             "uint4": 10, "int4": 10, "float4e2m1": 11}
_TABLE_COLUMN = {"": 2, "ai.onnx.ml": 3, "ai.onnx.training": 4}

TensorSink = Callable[[np.ndarray, str], TensorProto]


def to_onnx_model(graph: Graph, *, target_opset: int | None = None, keep_fused: bool = False) -> ModelProto:
    """Build an ONNX ``ModelProto`` from ``graph`` (all tensors inline).

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); b.output(b.op("Relu", b.input("x", ("n", 4))), "y")
    >>> to_onnx_model(b.graph).graph.output[0].name      # doctest: +SKIP
    'y'
    """
    return build_model(graph, target_opset=target_opset, keep_fused=keep_fused)


def build_model(graph: Graph, *, target_opset: int | None = None, keep_fused: bool = False,
                tensor_sink: TensorSink | None = None) -> ModelProto:
    """``to_onnx_model`` with a hook that turns each initializer into a ``TensorProto``
    (the saver uses it to stream large tensors into an external data file)."""
    return _Exporter(graph, keep_fused, tensor_sink or array_to_tensor).model(target_opset)


class _Exporter:
    def __init__(self, graph: Graph, keep_fused: bool, sink: TensorSink):
        self.root = graph
        self.keep_fused = keep_fused
        self.sink = sink
        self.names: dict[Value, str] = {}
        self.used: set[str] = set()
        self.domains: set[str] = set()
        self.dtypes_used: set[str] = set()
        self.opsets = {("" if k in ("", "ai.onnx") else k): int(v) for k, v in graph.opset_imports.items()}
        self._schemas: dict[tuple, Any] = {}

    # -- model ------------------------------------------------------------------
    def model(self, target_opset: int | None) -> ModelProto:
        g = self.root
        info = g.model_info
        m = ModelProto()
        self._graph(g, m.graph, [])
        if g.meta.get("graph_doc_string"):
            m.graph.doc_string = g.meta["graph_doc_string"]
        opsets = dict(self.opsets)
        for d in self.domains:
            if d not in opsets:
                opsets[d] = 17 if d == "" else 1
        if "" not in opsets:
            opsets[""] = 17
        for d, v in sorted(opsets.items()):
            m.opset_import.add(domain=d, version=v)
        m.producer_name = "graphopt"
        from .. import __version__

        m.producer_version = __version__
        m.domain = str(info.get("domain", "") or "")
        m.model_version = int(info.get("model_version", 0) or 0)
        m.doc_string = g.doc_string or ""
        meta = dict(g.metadata)
        orig = " ".join(str(info.get(k, "") or "") for k in ("producer_name", "producer_version")).strip()
        if orig and info.get("producer_name") != "graphopt":
            meta.setdefault("graphopt.original_producer", orig)
        for k, v in meta.items():
            m.metadata_props.add(key=str(k), value=str(v))
        for blob in g.meta.get("onnx_functions", ()):
            f = FunctionProto()
            f.ParseFromString(blob)
            m.functions.append(f)
        m.ir_version = self._ir_version(opsets, bool(len(m.functions)))
        if target_opset is not None and int(target_opset) != opsets[""]:
            m = self._convert(m, opsets[""], int(target_opset))
            opsets[""] = int(target_opset)
        m.ir_version = self._ir_version(opsets, bool(len(m.functions)))
        return m

    def _convert(self, m: ModelProto, have: int, want: int) -> ModelProto:
        from onnx import version_converter

        try:
            return version_converter.convert_version(m, want)
        except Exception as exc:
            why = _first_line(exc).rsplit("failed: ", 1)[-1]  # drop the C++ file:line and assertion text
            raise GraphoptError(f"cannot convert the model from opset {have} to opset {want}: {why}") from exc

    def _ir_version(self, opsets: dict[str, int], has_functions: bool) -> int:
        need = MIN_IR_VERSION
        for d, v in opsets.items():
            col = _TABLE_COLUMN.get(d)
            if col is None:
                continue
            rows = [row for row in onnx.helper.VERSION_TABLE if len(row) > col and row[col] >= v]
            need = max(need, min(row[1] for row in rows) if rows else onnx.IR_VERSION)
        for dt in self.dtypes_used:
            need = max(need, _DTYPE_IR.get(dt, 0))
        if has_functions:
            need = max(need, 8)
        return need

    # -- names --------------------------------------------------------------------
    def _name(self, v: Value) -> str:
        n = self.names.get(v)
        if n is not None:
            return n
        base = v.name or "v"
        n, k = base, 0
        while n in self.used:
            k += 1
            n = f"{base}_{k}"
        self.used.add(n)
        self.names[v] = n
        return n

    # -- graphs -------------------------------------------------------------------
    def _graph(self, g: Graph, gp: GraphProto, outer: list[set[Value]]) -> None:
        gp.name = g.name or "graph"
        if g.parent is not None and g.doc_string:
            gp.doc_string = g.doc_string
        main = g.parent is None
        defined: set[Value] = set()
        scopes = outer + [defined]
        for v in g.inputs:
            gp.input.append(self._value_info(v))
            defined.add(v)
        for v in g.initializers.values():
            if v.const is None:
                raise GraphoptError(f"initializer {v.name!r} of graph {g.name!r} has no data")
            arr = np.asarray(v.const)
            self.dtypes_used.add(dtypes.from_numpy(arr.dtype))
            gp.initializer.append(self.sink(arr, self._name(v)))
            defined.add(v)
        for n in g:
            for v in n.inputs:
                if v is not None and not any(v in s for s in scopes):
                    raise GraphoptError(f"node {n.name!r} ({n.qualified_op}) reads {v.name!r}, which is not "
                                        f"defined before it in graph {g.name!r}")
            gp.node.append(self._node(n, scopes))
            defined.update(n.outputs)
        for v in g.outputs:
            if not any(v in s for s in scopes):
                raise GraphoptError(f"graph output {v.name!r} of graph {g.name!r} is not defined")
            gp.output.append(self._value_info(v))
        outs = set(g.outputs)
        for n in g:
            for v in n.outputs:
                if v.type is not None and v.type.dtype and v not in outs and not _omitted(v):
                    gp.value_info.append(self._value_info(v))
        if main and not len(gp.output):
            raise GraphoptError(f"graph {g.name!r} has no outputs")

    def _value_info(self, v: Value) -> ValueInfoProto:
        vi = ValueInfoProto(name=self._name(v))
        t = v.type
        if t is None or not t.dtype:
            raw = v.meta.get("onnx_type")
            if raw:
                vi.type.ParseFromString(raw)
            return vi
        self.dtypes_used.add(t.dtype)
        tt = vi.type.tensor_type
        tt.elem_type = dtypes.to_onnx(t.dtype)
        if t.shape is not None:
            shape = tt.shape
            shape.SetInParent()
            for d in t.shape:
                dim = shape.dim.add()
                if isinstance(d, (int, np.integer)):
                    dim.dim_value = int(d)
                elif isinstance(d, str) and d:
                    dim.dim_param = d
        return vi

    # -- nodes --------------------------------------------------------------------
    def _node(self, n: Node, scopes: list[set[Value]]) -> NodeProto:
        domain = "" if n.domain in ("", "ai.onnx") else n.domain
        if domain == FUSED_DOMAIN and not self.keep_fused:
            raise GraphoptError(f"node {n.name!r} is graphopt's fused op {FUSED_DOMAIN}::{n.op_type}, which "
                                f"onnxruntime cannot run; save with keep_fused=True (--keep-fused) to write it")
        self.domains.add(domain)
        np_ = NodeProto(op_type=n.op_type, domain=domain)
        if n.name:
            np_.name = n.name
        ins = ["" if v is None else self._name(v) for v in n.inputs]
        while ins and ins[-1] == "":
            ins.pop()
        np_.input.extend(ins)
        outs = ["" if _omitted(v) else self._name(v) for v in n.outputs]
        while outs and outs[-1] == "":
            outs.pop()
        np_.output.extend(outs)
        for k, val in n.attrs.items():
            if val is None:
                continue
            np_.attribute.append(self._attr(n, k, val, scopes))
        for k, blob in n.meta.get("onnx_raw_attrs", {}).items():
            if k not in n.attrs:
                a = AttributeProto()
                a.ParseFromString(blob)
                np_.attribute.append(a)
        if n.meta.get("doc_string"):
            np_.doc_string = n.meta["doc_string"]
        if n.meta.get("overload") and hasattr(np_, "overload"):
            np_.overload = n.meta["overload"]
        for k, v in n.meta.get("metadata_props", {}).items():
            if hasattr(np_, "metadata_props"):
                np_.metadata_props.add(key=str(k), value=str(v))
        return np_

    def _schema_attr_type(self, n: Node, k: str) -> int | None:
        domain = "" if n.domain in ("", "ai.onnx") else n.domain
        key = (n.op_type, domain)
        if key not in self._schemas:
            try:
                self._schemas[key] = onnx.defs.get_schema(n.op_type, self.opsets.get(domain, 1), domain)
            except Exception:
                self._schemas[key] = None
        s = self._schemas[key]
        if s is None or k not in s.attributes:
            return None
        t = _A.AttributeType.Value(s.attributes[k].type.name)
        return t if t != _A.UNDEFINED else None

    def _attr(self, n: Node, k: str, val: Any, scopes) -> AttributeProto:
        recorded = n.meta.get("attr_types", {}).get(k)
        t = self._schema_attr_type(n, k)
        if t is None and recorded:
            t = _A.AttributeType.Value(recorded)
        if t is None or not _fits(t, val):
            t = _guess_type(val)
        if t is None:
            raise GraphoptError(f"attribute {k!r} of node {n.name!r} ({n.qualified_op}) holds a "
                                f"{type(val).__name__}, which ONNX cannot store")
        a = AttributeProto(name=k, type=t)
        try:
            if t == _A.FLOAT:
                a.f = float(np.asarray(val).reshape(-1)[0]) if isinstance(val, np.ndarray) else float(val)
            elif t == _A.INT:
                a.i = int(np.asarray(val).reshape(-1)[0]) if isinstance(val, np.ndarray) else int(val)
            elif t == _A.STRING:
                a.s = _encode(val)
            elif t == _A.TENSOR:
                arr = np.asarray(val)
                self.dtypes_used.add(dtypes.from_numpy(arr.dtype))
                a.t.CopyFrom(array_to_tensor(arr, ""))
            elif t == _A.GRAPH:
                self._graph(val, a.g, scopes)
            elif t == _A.FLOATS:
                a.floats.extend(float(x) for x in _flat(val))
            elif t == _A.INTS:
                a.ints.extend(int(x) for x in _flat(val))
            elif t == _A.STRINGS:
                a.strings.extend(_encode(x) for x in _flat(val))
            elif t == _A.TENSORS:
                for x in val:
                    a.tensors.append(array_to_tensor(np.asarray(x), ""))
            elif t == _A.GRAPHS:
                for sg in val:
                    self._graph(sg, a.graphs.add(), scopes)
            else:
                raise GraphoptError(f"cannot write attribute type {_A.AttributeType.Name(t)}")
        except GraphoptError:
            raise
        except (TypeError, ValueError, IndexError) as exc:
            raise GraphoptError(f"attribute {k!r} of node {n.name!r} ({n.qualified_op}) cannot be written as "
                                f"{_A.AttributeType.Name(t)}: {_first_line(exc)}") from exc
        return a


def _omitted(v: Value) -> bool:
    return bool(v.meta.get("onnx_omitted")) and not v.num_uses and not v.is_graph_output


def _flat(val) -> list:
    if isinstance(val, np.ndarray):
        return val.reshape(-1).tolist()
    return list(val)


def _encode(x) -> bytes:
    if isinstance(x, bytes):
        return x
    return str(x).encode("utf-8", "surrogateescape")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) or isinstance(x, (bool, np.bool_))


def _fits(t: int, val) -> bool:
    """Whether ``val`` can be written as attribute type ``t`` without losing meaning."""
    if t in (_A.FLOAT, _A.INT):
        return isinstance(val, (int, float, np.number, np.bool_, bool)) or (
            isinstance(val, np.ndarray) and val.size == 1)
    if t == _A.STRING:
        return isinstance(val, (str, bytes))
    if t == _A.TENSOR:
        return isinstance(val, (np.ndarray, np.generic, int, float, list))
    if t == _A.GRAPH:
        return isinstance(val, Graph)
    if t == _A.GRAPHS:
        return isinstance(val, (list, tuple)) and all(isinstance(x, Graph) for x in val)
    if t == _A.TENSORS:
        return isinstance(val, (list, tuple))
    if t in (_A.FLOATS, _A.INTS, _A.STRINGS):
        return isinstance(val, (list, tuple, np.ndarray))
    return False


def _guess_type(val) -> int | None:
    if isinstance(val, Graph):
        return _A.GRAPH
    if isinstance(val, (str, bytes)):
        return _A.STRING
    if _is_int(val):
        return _A.INT
    if isinstance(val, (float, np.floating)):
        return _A.FLOAT
    if isinstance(val, (np.ndarray, np.generic)):
        return _A.TENSOR
    if isinstance(val, (list, tuple)):
        items = list(val)
        if items and all(isinstance(x, Graph) for x in items):
            return _A.GRAPHS
        if items and all(isinstance(x, np.ndarray) for x in items):
            return _A.TENSORS
        if items and all(isinstance(x, (str, bytes)) for x in items):
            return _A.STRINGS
        if any(isinstance(x, (float, np.floating)) for x in items):
            return _A.FLOATS
        return _A.INTS
    return None

