"""ONNX model -> ``Graph``.

What the import keeps and where:

* ``graph.opset_imports`` (``"ai.onnx"`` is spelled ``""``), ``graph.model_info``
  (``ir_version``, ``producer_name``, ``producer_version``, ``domain``,
  ``model_version``, ``source``), ``graph.metadata`` (metadata_props),
  ``graph.doc_string`` (the model's), ``graph.meta["graph_doc_string"]``,
  ``graph.meta["onnx_functions"]`` (model-local functions, serialized, written
  back on export).
* Value names as in the file (a name that shadows an outer scope's is renamed,
  since IR names are unique across subgraphs); node names as in the file,
  empty or repeated ones made unique.
* Initializers become constant values. One that is also listed as a graph input
  (an overridable input in ONNX, common in IR < 4) is imported as a constant and
  dropped from the inputs; its name is recorded in
  ``graph.meta["onnx_initializer_inputs"]``. Export writes it as a plain
  initializer, so the optimized model treats it as the constant it almost always is.
* Attributes become Python values (str, int, float, lists, ``np.ndarray``,
  ``Graph``); their ONNX types are kept in ``node.meta["attr_types"]``. Type-proto
  and sparse attributes (other than Constant's ``sparse_value``, which is
  densified) are kept serialized in ``node.meta["onnx_raw_attrs"]``.
* Optional outputs left empty (``""``) become placeholder values marked
  ``meta["onnx_omitted"]`` and are written back empty while nobody reads them.
* Unknown ops (no registry schema, custom domains) are ordinary nodes; only a
  backend asked to run them fails.

>>> g = load_onnx("model.onnx")                        # doctest: +SKIP
>>> g.opset_imports, g.model_info["producer_name"]     # doctest: +SKIP
({'': 17}, 'pytorch')
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto

from .. import dtypes
from ..errors import GraphoptError, ModelLoadError
from ..ir import Graph, Node, TensorType, Value
from ..ops.registry import check_static_sizes, check_tensor_size, get_schema, infer_graph, merge_types
from .tensors import _first_line, nbytes_of, sparse_to_array, tensor_to_array

MIN_OPSET = 7        # older models are refused
OLD_OPSET = 11       # older models load with a warning
PROTOBUF_LIMIT = 2 ** 31 - 1
# onnx shape inference serializes the model; it sees initializers past this many elements
# without their data (it only needs their type, and the values of small shape-like tensors)
_INFER_KEEP_NUMEL = 4096

_A = AttributeProto


def _norm_domain(d: str) -> str:
    return "" if d in ("", "ai.onnx") else d


def max_opset(domain: str) -> int | None:
    """The newest version of ``domain`` graphopt reads: the installed onnx's schemas for ONNX's
    domains (the importer and the ops follow them), 1 for graphopt's own; None for others.

    >>> max_opset("") >= 21, max_opset("ai.graphopt"), max_opset("com.example")
    (True, 1, None)
    """
    from ..ops.fused import FUSED_DOMAIN

    if domain == "":
        return onnx.defs.onnx_opset_version()
    if domain == FUSED_DOMAIN:
        return 1
    if domain in ("ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"):
        versions = [s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain]
        return max(versions) if versions else None
    return None


# ---------------------------------------------------------------------------
# entry points


def load_onnx(model: Any, *, infer_shapes: bool = True, base_dir: str | os.PathLike | None = None) -> Graph:
    """Import an ONNX model from a path, bytes or ``ModelProto``.

    External tensor data is read from beneath the model's folder (``base_dir``
    for bytes and protos). Every problem is a ``ModelLoadError`` whose one line
    names the file and the node or tensor at fault.

    >>> g = load_onnx("resnet18.onnx")                  # doctest: +SKIP
    >>> [v.type for v in g.inputs]                       # doctest: +SKIP
    [TensorType(dtype='float32', shape=('batch', 3, 224, 224))]
    """
    if isinstance(model, ModelProto):
        return from_onnx_model(model, infer_shapes=infer_shapes, base_dir=base_dir)
    if isinstance(model, (bytes, bytearray, memoryview)):
        label = "<onnx bytes>"
        data = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = str(path)
        data = _read_file(path)
        if base_dir is None:
            base_dir = path.absolute().parent
    else:
        raise ModelLoadError(f"cannot load an ONNX model from a {type(model).__name__}")
    proto = _parse(data, label)
    del data, model  # the parsed proto and the decoded arrays are enough copies of the weights
    return _import(proto, label, base_dir, infer_shapes)


def from_onnx_model(model: ModelProto, *, infer_shapes: bool = True, base_dir: str | os.PathLike | None = None,
                    label: str = "<ModelProto>") -> Graph:
    """Import an in-memory ``onnx.ModelProto`` (it is not modified).

    >>> g = from_onnx_model(onnx.load("m.onnx", load_external_data=False), base_dir=".")  # doctest: +SKIP
    """
    return _import(model, label, base_dir, infer_shapes)


def _read_file(path: Path) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"{path}: is a directory, not an ONNX model file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{path}: not a regular file")
    if st.st_size > PROTOBUF_LIMIT:
        raise ModelLoadError(f"{path}: {st.st_size} bytes is past protobuf's 2 GiB limit "
                             f"(large models keep their weights in external data)")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse(data: bytes, label: str) -> ModelProto:
    if not data:
        raise ModelLoadError(f"{label}: empty file, not an ONNX model")
    m = ModelProto()
    try:
        m.ParseFromString(data)
    except Exception:  # DecodeError, and whatever else a corrupt buffer provokes
        raise ModelLoadError(f"{label}: not a valid ONNX model (protobuf parse failed)") from None
    return m


def _import(m: ModelProto, label: str, base_dir, infer_shapes: bool) -> Graph:
    try:
        return _Importer(m, label, None if base_dir is None else Path(base_dir)).run(infer_shapes)
    except ModelLoadError:
        raise
    except RecursionError:
        raise ModelLoadError(f"{label}: subgraphs are nested too deeply") from None
    except GraphoptError as exc:
        raise ModelLoadError(f"{label}: {exc}") from exc
    except Exception as exc:  # never a traceback for a malformed model
        raise ModelLoadError(f"{label}: cannot import: {type(exc).__name__}: {_first_line(exc)}") from exc


# ---------------------------------------------------------------------------


class _Scope:
    """ONNX names visible in one graph: its own, then its parents' (inner names shadow outer)."""

    def __init__(self, parent: "_Scope | None"):
        self.parent = parent
        self.local: dict[str, Value] = {}
        self.origin: dict[str, str] = {}  # name -> what defines it, for messages

    def lookup(self, name: str) -> Value | None:
        s = self
        while s is not None:
            v = s.local.get(name)
            if v is not None:
                return v
            s = s.parent
        return None

    def define(self, name: str, v: Value, origin: str, label: str, who: str) -> None:
        if name in self.local:
            raise ModelLoadError(f"{label}: {who} defines {name!r}, which {self.origin[name]} already defines "
                                 f"(duplicate name)")
        self.local[name] = v
        self.origin[name] = origin


class _Importer:
    def __init__(self, m: ModelProto, label: str, base_dir: Path | None):
        self.m = m
        self.label = label
        self.base_dir = base_dir
        self.scopes: dict[tuple, _Scope] = {}
        self.node_names: set[str] = set()

    def fail(self, msg: str) -> ModelLoadError:
        return ModelLoadError(f"{self.label}: {msg}")

    def run(self, infer_shapes: bool) -> Graph:
        m = self.m
        if not m.HasField("graph"):
            raise self.fail("not a valid ONNX model (it has no graph)")
        if m.ir_version <= 0:
            raise self.fail("not a valid ONNX model (it has no ir_version)")
        opsets = self._opsets()
        g = Graph(m.graph.name or "graph")
        g.opset_imports = opsets
        g.doc_string = m.doc_string
        g.metadata = {p.key: p.value for p in m.metadata_props}
        g.model_info = {"ir_version": int(m.ir_version), "producer_name": m.producer_name,
                        "producer_version": m.producer_version, "domain": m.domain,
                        "model_version": int(m.model_version), "source": self.label}
        if m.graph.doc_string:
            g.meta["graph_doc_string"] = m.graph.doc_string
        if len(m.functions):
            g.meta["onnx_functions"] = [f.SerializeToString() for f in m.functions]
        self._import_graph(m.graph, g, None, ())
        _check_generated_sizes(g, self.label)
        if infer_shapes:
            self._onnx_shape_inference(_lite_copy(m))
            infer_graph(g)
            check_static_sizes(g)  # a Tile/Expand/Range... to 10^11 elements: refused now, not at run
        return g

    def _opsets(self) -> dict[str, int]:
        m = self.m
        opsets: dict[str, int] = {}
        for o in m.opset_import:
            d = _norm_domain(o.domain)
            if d in opsets and opsets[d] != o.version:
                raise self.fail(f"opset_import lists domain {o.domain or 'ai.onnx'!r} twice "
                                f"({opsets[d]} and {o.version})")
            opsets[d] = int(o.version)
        if not opsets:
            raise self.fail("not a valid ONNX model (it imports no opset)")
        v = opsets.get("")
        if v is not None:
            if v < MIN_OPSET:
                changed = self._changed_since(v)
                if changed:
                    raise self.fail(f"opset {v} is too old: {changed} changed meaning by opset {MIN_OPSET}, the "
                                    f"oldest graphopt reads (convert it with onnx.version_converter)")
                opsets[""] = v = MIN_OPSET  # every op it uses reads the same at MIN_OPSET
            if v < OLD_OPSET:
                warnings.warn(f"{self.label}: opset {v} is older than {OLD_OPSET}; graphopt's ops follow opset "
                              f"{OLD_OPSET} and newer, so some nodes may not run", stacklevel=4)
        for d, v in opsets.items():
            newest = max_opset(d)
            if newest is not None and v > newest:
                name = f"opset {v}" if d == "" else f"opset {v} of domain {d!r}"
                raise self.fail(f"{name} is newer than any graphopt knows ({newest}): its ops may mean something "
                                f"else (convert the model to opset {newest} or older)")
        return opsets

    def _changed_since(self, version: int) -> str | None:
        """The first default-domain op of the model (subgraphs included) whose definition at
        ``version`` is not the one in force at ``MIN_OPSET`` (as "Add (node 'a')"), else None."""
        stack = [self.m.graph]
        while stack:
            graph = stack.pop()
            for n in graph.node:
                for a in n.attribute:
                    stack.extend([a.g] if a.HasField("g") else [])
                    stack.extend(a.graphs)
                if _norm_domain(n.domain) != "":
                    continue
                try:
                    old = onnx.defs.get_schema(n.op_type, version, "").since_version
                    new = onnx.defs.get_schema(n.op_type, MIN_OPSET, "").since_version
                except onnx.defs.SchemaError:
                    return f"{n.op_type} (node {n.name!r}, not defined at opset {version})"
                if old != new:
                    return f"{n.op_type} (node {n.name!r}, redefined at opset {new})"
        return None

    # -- types ------------------------------------------------------------------
    def _type(self, vi, who: str, strict: bool) -> TensorType | None:
        """The IR type of a ValueInfoProto (None when not a tensor or unknown)."""
        if not vi.HasField("type"):
            return None
        if vi.type.WhichOneof("value") != "tensor_type":
            return None
        tt = vi.type.tensor_type
        if tt.elem_type == 0:
            return None
        try:
            dtype = dtypes.from_onnx(tt.elem_type)
        except GraphoptError:
            if strict:
                raise self.fail(f"{who} {vi.name!r} has unsupported element type {tt.elem_type}") from None
            return None
        if not tt.HasField("shape"):
            return TensorType(dtype, None)
        dims: list = []
        for d in tt.shape.dim:
            kind = d.WhichOneof("value")
            if kind == "dim_value" and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif kind == "dim_param" and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return TensorType(dtype, tuple(dims))

    def _declare(self, v: Value, vi, who: str, strict: bool) -> None:
        """Apply a declared type; constants keep the type of their data."""
        t = self._type(vi, who, strict)
        if t is None:
            kind = vi.type.WhichOneof("value") if vi.HasField("type") else None
            if kind not in (None, "tensor_type"):
                v.meta["onnx_type"] = vi.type.SerializeToString()
            return
        if v.const is None:
            v.type = t if v.type is None else merge_types(v.type, t, v.name)

    # -- graphs -------------------------------------------------------------------
    def _import_graph(self, gp: GraphProto, g: Graph, outer: _Scope | None, path: tuple) -> None:
        scope = _Scope(outer)
        self.scopes[path] = scope
        where = "the main graph" if not path else f"subgraph {gp.name!r}"
        init_names = {t.name for t in gp.initializer} | {s.values.name for s in gp.sparse_initializer}
        overridable = []
        for vi in gp.input:
            if not vi.name:
                raise self.fail(f"{where} has an input without a name")
            if vi.name in init_names:
                overridable.append(vi.name)
                continue
            v = g.add_input(vi.name, None)
            scope.define(vi.name, v, "a graph input", self.label, f"graph input {vi.name!r} of {where}")
            self._declare(v, vi, "graph input", strict=not path)
        if overridable:
            g.meta["onnx_initializer_inputs"] = overridable
        for t in gp.initializer:
            if not t.name:
                raise self.fail(f"{where} has an initializer without a name")
            arr = tensor_to_array(t, label=self.label, base_dir=self.base_dir)
            self._define_const(g, scope, t.name, arr, where)
        for sp in gp.sparse_initializer:
            if not sp.values.name:
                raise self.fail(f"{where} has a sparse initializer without a name")
            arr = sparse_to_array(sp, label=self.label, base_dir=self.base_dir)
            self._define_const(g, scope, sp.values.name, arr, where)

        # outputs first, so that nodes may read values defined later in the file (sorted below)
        outs_of: list[list[Value]] = []
        for i, np_ in enumerate(gp.node):
            who = _node_desc(np_, i)
            names = list(np_.output)
            while names and names[-1] == "":
                names.pop()
            outs = []
            for k, oname in enumerate(names):
                if oname == "":
                    v = Value(f"{np_.name or np_.op_type.lower()}_unused{k}")
                    v.meta["onnx_omitted"] = True
                else:
                    v = Value(oname)
                    scope.define(oname, v, who, self.label, who)
                g._claim(v)
                outs.append(v)
            outs_of.append(outs)

        nodes: list[tuple[Node, str]] = []
        for i, (np_, outs) in enumerate(zip(gp.node, outs_of)):
            who = _node_desc(np_, i)
            inputs: list[Value | None] = []
            for iname in np_.input:
                if iname == "":
                    inputs.append(None)
                    continue
                v = scope.lookup(iname)
                if v is None:
                    raise self.fail(f"{who} reads {iname!r}, which is not defined (no graph input, initializer "
                                    f"or node output of that name)")
                inputs.append(v)
            attrs, types, raw = self._attrs(np_, g, scope, path + (i,), who)
            node = Node(np_.op_type, inputs, outs, attrs, domain=_norm_domain(np_.domain))
            node.meta["attr_types"] = types
            if raw:
                node.meta["onnx_raw_attrs"] = raw
            if np_.doc_string:
                node.meta["doc_string"] = np_.doc_string
            if getattr(np_, "overload", ""):
                node.meta["overload"] = np_.overload
            if len(getattr(np_, "metadata_props", ())):
                node.meta["metadata_props"] = {p.key: p.value for p in np_.metadata_props}
            nodes.append((node, np_.name))

        names = g._all_names()
        for node, nname in nodes:  # file names first, so that generated ones avoid them
            if nname and nname not in self.node_names:
                node.name = nname
                names.add(nname)
                self.node_names.add(nname)
        for node, nname in nodes:
            if nname and not node.name:  # a repeated name
                node.name = g.unique_name(nname)
            g.append(node)
            self.node_names.add(node.name)
            if node.subgraphs():  # a body of the wrong arity would be written back as it is
                schema = get_schema(node.op_type, node.domain)
                why = schema.check_node(node) if schema is not None else None
                if why:
                    raise self.fail(why)

        for vi in gp.output:
            v = scope.lookup(vi.name)
            if v is None:
                raise self.fail(f"graph output {vi.name!r} of {where} is not defined (no node, input or "
                                f"initializer of that name)")
            self._declare(v, vi, "graph output", strict=not path)
            g.add_output(v)
        for vi in gp.value_info:
            v = scope.local.get(vi.name)
            if v is not None:
                self._declare(v, vi, "value", strict=False)
        try:
            g.toposort()
        except GraphoptError as exc:
            raise self.fail(str(exc)) from None

    def _define_const(self, g: Graph, scope: _Scope, name: str, arr: np.ndarray, where: str) -> None:
        if name in scope.local:
            raise self.fail(f"initializer {name!r} of {where} is defined twice")
        v = g.add_initializer(name, arr)
        scope.define(name, v, "an initializer", self.label, f"initializer {name!r}")

    # -- attributes -----------------------------------------------------------------
    def _attrs(self, np_, g: Graph, scope: _Scope, path: tuple, who: str):
        attrs: dict[str, Any] = {}
        types: dict[str, str] = {}
        raw: dict[str, bytes] = {}
        for a in np_.attribute:
            what = f"attribute {a.name!r} of {who}"
            t = a.type or _guess_attr_type(a)
            if a.ref_attr_name:
                raw[a.name] = a.SerializeToString()
                continue
            if t == _A.FLOAT:
                val: Any = float(a.f)
            elif t == _A.INT:
                val = int(a.i)
            elif t == _A.STRING:
                val = _decode(a.s)
            elif t == _A.TENSOR:
                val = tensor_to_array(a.t, label=self.label, base_dir=self.base_dir, what=what)
            elif t == _A.GRAPH:
                val = self._subgraph(a.g, g, scope, path + (a.name,))
            elif t == _A.FLOATS:
                val = [float(x) for x in a.floats]
            elif t == _A.INTS:
                val = [int(x) for x in a.ints]
            elif t == _A.STRINGS:
                val = [_decode(x) for x in a.strings]
            elif t == _A.TENSORS:
                val = [tensor_to_array(x, label=self.label, base_dir=self.base_dir, what=what) for x in a.tensors]
            elif t == _A.GRAPHS:
                val = [self._subgraph(x, g, scope, path + (a.name, k)) for k, x in enumerate(a.graphs)]
            elif (t == _A.SPARSE_TENSOR and a.name == "sparse_value" and np_.op_type == "Constant"
                  and _norm_domain(np_.domain) == ""):
                attrs["value"] = sparse_to_array(a.sparse_tensor, label=self.label, base_dir=self.base_dir,
                                                 what=what)
                types["value"] = "TENSOR"
                continue
            else:  # type protos, other sparse tensors: kept as they are
                raw[a.name] = a.SerializeToString()
                continue
            attrs[a.name] = val
            types[a.name] = _A.AttributeType.Name(t)
        return attrs, types, raw

    def _subgraph(self, gp: GraphProto, parent: Graph, scope: _Scope, path: tuple) -> Graph:
        sg = Graph(gp.name or "subgraph", parent)
        sg.opset_imports = parent.root.opset_imports
        sg.doc_string = gp.doc_string
        self._import_graph(gp, sg, scope, path)
        return sg

    # -- onnx shape inference -------------------------------------------------------
    def _onnx_shape_inference(self, lite: ModelProto) -> None:
        """Fill intermediate types from onnx's shape inference (best effort, never fatal)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inferred = onnx.shape_inference.infer_shapes(lite, check_type=False, strict_mode=False)
        except Exception:
            return
        self._apply_inferred(inferred.graph, ())

    def _apply_inferred(self, gp: GraphProto, path: tuple) -> None:
        scope = self.scopes.get(path)
        if scope is None:
            return
        for vi in list(gp.value_info) + list(gp.output):
            v = scope.local.get(vi.name)
            if v is not None and v.const is None:
                t = self._type(vi, "value", strict=False)
                if t is not None:
                    v.type = t if v.type is None else merge_types(v.type, t, v.name)
        for i, np_ in enumerate(gp.node):
            for a in np_.attribute:
                if a.type == _A.GRAPH:
                    self._apply_inferred(a.g, path + (i, a.name))
                elif a.type == _A.GRAPHS:
                    for k, sg in enumerate(a.graphs):
                        self._apply_inferred(sg, path + (i, a.name, k))


def _lite_copy(m: ModelProto) -> ModelProto:
    """``m`` without the data of its large initializers: what shape inference needs, cheaply.

    Run after the import has checked every tensor, so the dims copied here are sane.
    """
    lite = ModelProto(ir_version=m.ir_version)
    lite.opset_import.extend(m.opset_import)
    lite.functions.extend(m.functions)
    src, dst = m.graph, lite.graph
    dst.name = src.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(dst, field).extend(getattr(src, field))
    for t in src.initializer:
        numel = 1
        for d in t.dims:
            numel *= max(int(d), 0)
        if numel <= _INFER_KEEP_NUMEL:
            dst.initializer.append(t)
        else:
            dst.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    return lite


def _node_desc(np_, i: int) -> str:
    op = f"{np_.domain}::{np_.op_type}" if _norm_domain(np_.domain) else np_.op_type
    return f"node {np_.name!r} ({op})" if np_.name else f"node #{i} ({op})"


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _guess_attr_type(a) -> int:
    """IR version 1 attributes carry no type: tell it from the field that is set."""
    for field, t in (("f", _A.FLOAT), ("i", _A.INT), ("s", _A.STRING), ("t", _A.TENSOR), ("g", _A.GRAPH)):
        if a.HasField(field):
            return t
    for field, t in (("floats", _A.FLOATS), ("ints", _A.INTS), ("strings", _A.STRINGS),
                     ("tensors", _A.TENSORS), ("graphs", _A.GRAPHS)):
        if len(getattr(a, field)):
            return t
    return _A.UNDEFINED


# ops whose output size is a constant they read: checked before inference, which an import
# without it skips (check_static_sizes covers the rest once types are inferred)
_SHAPE_INPUT = {"ConstantOfShape": 0, "Expand": 1}
_SHAPE_ATTR = ("RandomNormal", "RandomUniform")


def _made_dtype(n: Node) -> str:
    """The element type ``n`` makes, as far as is known before inference (else one byte: a lower bound)."""
    try:
        if n.op_type == "ConstantOfShape":
            v = n.attrs.get("value")
            return dtypes.from_numpy(np.asarray(v).dtype) if v is not None else "float32"
        if n.op_type == "Expand":
            t = n.input(0).type if n.input(0) is not None else None
            return t.dtype if t is not None and t.dtype else "uint8"
        return dtypes.from_onnx(int(n.attrs.get("dtype", 1)))
    except GraphoptError:
        return "uint8"


def _check_generated_sizes(g: Graph, label: str) -> None:
    for n in g:
        shape = None
        if n.domain == "" and n.op_type in _SHAPE_INPUT:
            v = n.input(_SHAPE_INPUT[n.op_type])
            if v is not None:
                if v.const is not None:
                    shape = v.const
                elif v.producer is not None and v.producer.op_type == "Constant":
                    shape = v.producer.attrs.get("value", v.producer.attrs.get("value_ints"))
        elif n.domain == "" and n.op_type in _SHAPE_ATTR:
            shape = n.attrs.get("shape")
        if shape is not None:
            try:
                dims = [int(d) for d in np.asarray(shape).reshape(-1)]
            except (TypeError, ValueError):
                dims = []
            check_tensor_size([max(d, 0) for d in dims], _made_dtype(n), n)
        for sg in n.subgraphs():
            _check_generated_sizes(sg, label)
