"""float16 / bfloat16 conversion with float32 islands.

Every float32 op is put in one of three classes:

* **blocklisted** (stay float32): ops whose accuracy rests on a wide range or a
  long accumulation: ``Softmax``/``LogSoftmax`` (exp and a normalizing sum),
  the normalizations (``LayerNormalization``, ``GroupNormalization``,
  ``InstanceNormalization``, ``RMSNormalization``: mean and variance), the
  reductions (``ReduceMean``, ``ReduceSum``, ``ReduceSumSquare``, ``ReduceL1``,
  ``ReduceL2``, ``ReduceLogSum``, ``ReduceLogSumExp``, ``ReduceProd``, ``CumSum``),
  and ``Exp``, ``Log``, ``Pow`` (fp16 overflows past 65504: ``exp(11.1)``,
  ``x**2`` for ``|x| > 256``). Ops of other domains and ops with subgraphs also stay.
* **followers**: elementwise ops and data movement (``Add``, ``Mul``, ``Relu``,
  ``Sqrt``, ``Reshape``, ``Transpose``, ``Concat``, ``Gather``, ...) run in the
  low type only when all their non-constant float inputs are already low. So a
  float32 island grows over the elementwise ops around it (``x - mean`` and
  ``Sqrt(var + eps)`` of a decomposed LayerNorm, a residual ``Add`` of a
  LayerNorm output, an embedding ``Gather``/``Add``) instead of bouncing
  through Casts.
* everything else (``Conv``, ``MatMul``, ``Gemm``, pools, ``BatchNormalization``,
  ...) runs in the low type.

Which inputs of an op change type follows its ONNX schema (the inputs that
share the output's type parameter); an op whose schema does not allow the
low type at the model's opset stays float32 (``bfloat16`` ``Conv`` needs
opset 22) unless ``standard=False``, which converts anyway for graphopt's own
backends. Constants are converted once (one low copy per constant, shared).
A Cast is inserted once per (value, type) at each precision boundary; model
inputs and outputs keep their float32 types unless ``keep_io_types=False``;
a ``Cast(Cast(x, low), float32)`` pair left with nothing between is removed.

>>> g16 = convert_float16(graph)                  # doctest: +SKIP
>>> g16.meta["precision_report"]["float32_ops"]   # doctest: +SKIP
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import GraphoptError
from ..ir import Graph, Node, TensorType, Value

DEFAULT_BLOCKLIST = frozenset({
    "Softmax", "LogSoftmax",
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
    "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "CumSum",
    "Exp", "Log", "Pow",
})
# ops that read any type and whose output type does not follow their input
_ANY_INPUT = frozenset({"Cast", "CastLike", "Shape", "Size", "IsNaN", "IsInf", "NonZero"})
MOVEMENT = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
                      "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity", "DepthToSpace",
                      "SpaceToDepth", "MaxPool", "ReduceMax", "ReduceMin", "Where", "Dropout"})
LOW_TYPES = ("float16", "bfloat16")


def _schema_types(node: Node, opset: int) -> tuple[set[int] | None, set[int] | None, set[str] | None]:
    """(input positions, output positions) typed like output 0, and the type names allowed there.

    None when onnx does not know the op (then every float input/output is treated as data).
    """
    try:
        import onnx.defs
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except Exception:
        return None, None, None
    if not schema.outputs:
        return None, None, None
    tparam = schema.outputs[0].type_str
    ins = set()
    for i in range(len(node.inputs)):
        formal = schema.inputs[min(i, len(schema.inputs) - 1)] if schema.inputs else None
        if formal is not None and formal.type_str == tparam:
            ins.add(i)
    outs = {i for i in range(len(node.outputs))
            if schema.outputs[min(i, len(schema.outputs) - 1)].type_str == tparam}
    allowed = None
    for c in schema.type_constraints:
        if c.type_param_str == tparam:
            allowed = {t[len("tensor("):-1] for t in c.allowed_type_strs if t.startswith("tensor(")}
    if allowed is None and tparam.startswith("tensor("):
        allowed = {tparam[len("tensor("):-1]}
    return ins, outs, {"float32" if t == "float" else "float64" if t == "double" else t for t in (allowed or ())}


def _const_of(v: Value) -> np.ndarray | None:
    if v.const is not None:
        return v.const
    p = v.producer
    if p is not None and p.op_type == "Constant" and isinstance(p.attrs.get("value"), np.ndarray):
        return p.attrs["value"]
    return None


def convert_precision(graph: Graph, dtype: str = "float16", *, keep_io_types: bool = True,
                      blocklist: frozenset[str] | set[str] = DEFAULT_BLOCKLIST, standard: bool = True) -> dict:
    """Convert ``graph`` in place to ``dtype`` (``float16`` or ``bfloat16``) with float32
    islands; returns a report (also stored in ``graph.meta["precision_report"]``)."""
    if dtype not in LOW_TYPES:
        raise GraphoptError(f"mixed precision type must be float16 or bfloat16, not {dtype!r}")
    from ..ops.registry import get_schema

    np_low = dtypes.to_numpy(dtype)
    opset = graph.opset_imports.get("", 17)
    low: dict[Value, bool] = {}          # float tensors: is it in the low type now?
    kept: Counter = Counter()            # op -> why it stayed float32
    converted: Counter = Counter()
    const_cache: dict[tuple[int, str], Value] = {}
    cast_cache: dict[tuple[Value, str], Value] = {}
    stats = Counter()

    if not keep_io_types:
        for v in graph.inputs:
            if v.dtype == "float32":
                v.type = TensorType(dtype, v.shape)
                low[v] = True

    def casted(v: Value, to: str) -> Value:
        key = (v, to)
        if key not in cast_cache:
            anchor = {"after": v.producer} if v.producer is not None else {"before": next(iter(graph))}
            c = graph.make_node("Cast", [v], {"to": dtypes.to_onnx(to)}, output_names=[f"{v.name}_{to}"],
                                output_types=[TensorType(to, v.shape)], **anchor)
            cast_cache[key] = c.output
            low[c.output] = to != "float32"
            stats["casts"] += 1
        return cast_cache[key]

    def low_const(v: Value, arr: np.ndarray) -> Value:
        key = (id(arr), v.name)
        if key not in const_cache:
            const_cache[key] = graph.add_initializer(f"{v.name}_{dtype}", arr.astype(np_low))
            stats["constants"] += 1
        return const_cache[key]

    for n in list(graph):
        float_ins = [i for i, v in enumerate(n.inputs) if v is not None and v.dtype in ("float32", dtype)]
        float_outs = [i for i, v in enumerate(n.outputs) if v.dtype == "float32"]
        if not float_ins:
            continue  # Constant, ConstantOfShape, Cast from ints...: their readers convert what they read
        if n.op_type in _ANY_INPUT:
            continue
        why = None
        data_ins, data_outs, allowed = (None, None, None)
        if n.domain not in ("", "ai.onnx"):
            why = f"{n.domain} op"
        elif n.subgraphs():
            why = "has subgraphs"
        elif n.op_type in blocklist:
            why = "blocklisted"
        else:
            data_ins, data_outs, allowed = _schema_types(n, opset)
            if allowed is not None and dtype not in allowed and standard:
                why = f"ONNX {n.op_type}-{opset} does not allow {dtype}"
            elif allowed is not None and "float32" not in allowed:
                why = "not a float op"
        if why is None:
            if data_ins is None:
                data_ins, data_outs = set(float_ins), set(float_outs)
            s = get_schema(n.op_type, n.domain)
            follower = n.op_type in MOVEMENT or (s is not None and s.elementwise)
            if follower:
                dyn = [n.input(i) for i in data_ins if n.input(i) is not None and _const_of(n.input(i)) is None
                       and n.input(i).dtype in ("float32", dtype)]
                if not dyn or not all(low.get(v, False) for v in dyn):
                    why = "follows float32 inputs"
        if why is not None:
            kept[f"{n.op_type}: {why}"] += 1
            for i in float_ins:
                v = n.input(i)
                if low.get(v, False):
                    n.set_input(i, casted(v, "float32"))
            continue
        # run this op in the low type
        for i in data_ins:
            v = n.input(i)
            if v is None or v.dtype not in ("float32", dtype):
                continue
            arr = _const_of(v)
            if arr is not None and arr.dtype == np.float32:
                n.set_input(i, low_const(v, arr))
            elif not low.get(v, False) and v.dtype == "float32":
                n.set_input(i, casted(v, dtype))
        for i in data_outs:
            if i < len(n.outputs) and n.outputs[i].dtype == "float32":
                o = n.outputs[i]
                o.type = TensorType(dtype, o.shape)
                low[o] = True
        converted[n.op_type] += 1
    # outputs keep their float32 type (and name)
    if keep_io_types:
        for v in list(graph.outputs):
            if low.get(v, False):
                stats["casts"] += _cast_output(graph, v, cast_cache.get((v, "float32")))
    stats["cast_pairs_removed"] = remove_cast_pairs(graph)
    for v in [v for v in graph.initializers.values() if not v.num_uses and not v.is_graph_output]:
        graph.remove_initializer(v)
    report = {"dtype": dtype, "converted_ops": dict(converted), "float32_ops": dict(kept), **stats}
    graph.meta["precision_report"] = report
    return report


def _cast_output(graph: Graph, v: Value, existing: Value | None) -> int:
    """Graph output ``v`` (now low precision) becomes ``Cast(v, float32)`` under ``v``'s name,
    reusing the float32 Cast of ``v`` that other readers already have. Returns Casts added."""
    name = v.name
    names = graph._all_names()
    names.discard(name)
    v.name = graph.unique_name(f"{name}_{v.dtype}")
    added = 0
    if existing is None:
        anchor = {"after": v.producer} if v.producer is not None else {"before": next(iter(graph))}
        existing = graph.make_node("Cast", [v], {"to": 1}, output_names=[f"{name}_float32"],
                                   output_types=[TensorType("float32", v.shape)], **anchor).output
        added = 1
    names.discard(existing.name)
    existing.name = name
    names.add(name)
    graph.replace_output(v, existing)
    return added


def remove_cast_pairs(graph: Graph) -> int:
    """``Cast(Cast(x: float32, to=low), to=float32) => x`` when the inner Cast has no other reader.

    Such a pair only rounds ``x`` to the low type and back: precision lost for nothing.
    """
    removed = 0
    for n in list(graph):
        if n.graph is not graph or n.op_type != "Cast":
            continue
        inner = n.input(0).producer if n.input(0) is not None else None
        if inner is None or inner.op_type != "Cast":
            continue
        x = inner.input(0)
        if x is None or x.dtype != n.output.dtype or x.dtype not in ("float32", "float64"):
            continue
        if inner.output.dtype not in LOW_TYPES or inner.output.num_uses != 1 or inner.output.is_graph_output:
            continue
        if n.output.is_graph_output:
            continue  # keep the output's name and node
        n.output.replace_all_uses_with(x)
        graph.remove(n)
        graph.remove(inner)
        removed += 1
    return removed


def convert_float16(model: Any, **kw) -> Graph:
    """A float16 copy of ``model`` (float32 inputs/outputs by default).

    >>> g16 = convert_float16("bert.onnx")   # doctest: +SKIP
    """
    from ..api import load

    g = load(model).clone()
    convert_precision(g, "float16", **kw)
    return g


def convert_bfloat16(model: Any, **kw) -> Graph:
    """A bfloat16 copy of ``model`` (see ``convert_precision``)."""
    from ..api import load

    g = load(model).clone()
    convert_precision(g, "bfloat16", **kw)
    return g
