"""The op registry: one row per op with schema, shape/type inference and a NumPy
reference kernel.

A new op is one decorated function::

    @register_op("Relu", inputs=["X"], outputs=["Y"], infer=same_as_input(0), elementwise=True)
    def relu(inputs, attrs, ctx):
        (x,) = inputs
        return [np.maximum(x, 0).astype(x.dtype)]

Kernels take the input arrays (``None`` for an omitted optional input), the
node's attributes with the schema's defaults filled in, and a ``KernelContext``
(opset, node, a way to run subgraphs), and return the list of output arrays.
Inference functions take the ``Node`` and the resolved attributes and return one
``TensorType`` (or ``None`` when unknown) per output.

Nodes follow the form of their model's opset (``axes`` of ReduceSum is an
attribute before opset 13 and an input from then on), so kernels and inference
accept both forms; ``ctx.opset`` tells which one the model uses.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import GraphoptError, ShapeError, UnsupportedOpError
from ..ir import Node, TensorType

REQUIRED = object()  # marks an attribute without default


@dataclass
class KernelContext:
    """What a kernel may need beyond its inputs."""

    node: Node | None = None
    opset: int = 17
    run_subgraph: Callable[..., list] | None = None  # (graph, feeds: dict[Value, array]) -> outputs
    rng: np.random.Generator | None = None


@dataclass
class OpSchema:
    op_type: str
    domain: str = ""
    inputs: tuple[str, ...] = ()   # "?name": optional, "*name": variadic (last)
    outputs: tuple[str, ...] = ("Y",)  # "?name": optional, "*name": variadic
    attrs: dict[str, Any] = field(default_factory=dict)
    infer: Callable[[Node, dict], list] | None = None
    kernel: Callable[[list, dict, KernelContext], list] | None = None
    elementwise: bool = False  # pure pointwise/broadcast op: a candidate for elementwise fusion
    doc: str = ""
    check: Callable[[Node, dict], str | None] | None = None  # what counts alone cannot say (subgraph arity)

    @property
    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.startswith(("?", "*")))

    @property
    def max_inputs(self) -> int | None:
        return None if any(n.startswith("*") for n in self.inputs) else len(self.inputs)

    def resolve_attrs(self, node_attrs: dict) -> dict:
        """The node's attributes with defaults filled in; a missing required one raises."""
        out = dict(node_attrs)
        for k, default in self.attrs.items():
            if k not in out:
                if default is REQUIRED:
                    continue  # checked by check_node; kernels that need it fail there
                out[k] = default
        return out

    def check_node(self, node: Node) -> str | None:
        """A reason why ``node`` does not fit this schema, or None."""
        n = len(node.inputs)
        while n and node.inputs[n - 1] is None:
            n -= 1
        if n < self.min_inputs:
            return f"{node.op_type} needs at least {self.min_inputs} inputs, node {node.name!r} has {n}"
        if self.max_inputs is not None and n > self.max_inputs:
            return f"{node.op_type} takes at most {self.max_inputs} inputs, node {node.name!r} has {n}"
        for k, default in self.attrs.items():
            if default is REQUIRED and k not in node.attrs:
                return f"{node.op_type} node {node.name!r} lacks required attribute {k!r}"
        if self.check is not None:
            return self.check(node, self.resolve_attrs(node.attrs))
        return None


_REGISTRY: dict[tuple[str, str], OpSchema] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register_op(op_type: str, *, domain: str = "", inputs: Sequence[str] = (), outputs: Sequence[str] = ("Y",),
                attrs: dict[str, Any] | None = None, infer=None, elementwise: bool = False,
                aliases: Sequence[str] = (), check=None):
    """Decorator registering ``fn`` as the reference kernel of ``op_type``; ``check(node, attrs)``
    returns why a node does not fit beyond its input count and attributes (subgraph arity)."""

    def deco(fn):
        for name in (op_type, *aliases):
            _REGISTRY[(_norm_domain(domain), name)] = OpSchema(
                name, _norm_domain(domain), tuple(inputs), tuple(outputs), dict(attrs or {}), infer, fn,
                elementwise, (fn.__doc__ or "").strip(), check)
        return fn

    return deco


def register_schema(schema: OpSchema) -> OpSchema:
    schema.domain = _norm_domain(schema.domain)
    _REGISTRY[(schema.domain, schema.op_type)] = schema
    return schema


def get_schema(op_type: str, domain: str = "") -> OpSchema | None:
    _ensure_loaded()
    return _REGISTRY.get((_norm_domain(domain), op_type))


def all_schemas() -> list[OpSchema]:
    _ensure_loaded()
    return sorted(_REGISTRY.values(), key=lambda s: (s.domain, s.op_type))


def require_schema(node: Node) -> OpSchema:
    s = get_schema(node.op_type, node.domain)
    if s is None or s.kernel is None:
        raise UnsupportedOpError(
            f"unsupported op {node.qualified_op} (node {node.name!r}): graphopt has no kernel for it")
    return s


def node_opset(node: Node) -> int:
    g = node.graph.root if node.graph is not None else None
    if g is None:
        return 17
    return g.opset_imports.get(_norm_domain(node.domain), g.opset_imports.get("", 17))


def infer_node(node: Node, *, strict: bool = False) -> bool:
    """Run shape/type inference for ``node`` and merge it into its output types.

    Returns True when a type changed. Unknown ops and failed inference leave the
    types alone unless ``strict``.
    """
    s = get_schema(node.op_type, node.domain)
    if s is None or s.infer is None:
        return False
    try:
        types = s.infer(node, s.resolve_attrs(node.attrs))
    except ShapeError:
        if strict:
            raise
        return False
    except Exception as exc:  # inference must never crash an import
        if strict:
            raise ShapeError(f"shape inference failed for node {node.name!r} ({node.op_type}): {exc}") from exc
        return False
    changed = False
    for v, t in zip(node.outputs, types):
        if t is None:
            continue
        merged = merge_types(v.type, t, v.name)
        if merged != v.type:
            v.type = merged
            changed = True
    return changed


def merge_types(old: TensorType | None, new: TensorType, name: str = "") -> TensorType:
    """Combine what was known with what inference says: static beats symbolic beats unknown."""
    if old is None:
        return new
    dtype = new.dtype or old.dtype
    if old.shape is None:
        return TensorType(dtype, new.shape)
    if new.shape is None or len(new.shape) != len(old.shape):
        return TensorType(dtype, old.shape)
    dims = []
    for a, b in zip(old.shape, new.shape):
        if isinstance(b, int):
            dims.append(b)
        elif isinstance(a, int):
            dims.append(a)
        else:
            dims.append(a if a is not None else b)
    return TensorType(dtype, tuple(dims))


def infer_graph(graph, *, strict: bool = False) -> None:
    """Infer types for every node in order (subgraphs included)."""
    for n in graph:
        infer_node(n, strict=strict)
        for sg in n.subgraphs():
            infer_graph(sg, strict=strict)


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import load_builtin_ops

        load_builtin_ops()


# ---------------------------------------------------------------------------
# inference helpers shared by op definitions


def in_type(node: Node, i: int) -> TensorType | None:
    v = node.input(i)
    return None if v is None else v.type


def const_input(node: Node, i: int) -> np.ndarray | None:
    """The constant value of input ``i`` when it is an initializer, else None."""
    v = node.input(i)
    return None if v is None else v.const


def broadcast_shapes(*shapes) -> tuple | None:
    """NumPy broadcasting over dims that may be symbolic; None if a rank is unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if isinstance(d, int) and d != 1}
        if len(known) > 1:
            raise ShapeError(f"shapes {', '.join(map(str, shapes))} do not broadcast")
        if known:
            out.append(known.pop())
            continue
        syms = [d for d in dims if isinstance(d, str)]
        if len(set(syms)) == 1 and all(d == 1 or d == syms[0] for d in dims):
            out.append(syms[0])
        elif syms or any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def same_as_input(i: int = 0, dtype: str | None = None):
    """Inference: output 0 has input ``i``'s type (optionally another dtype)."""

    def infer(node: Node, attrs: dict):
        t = in_type(node, i)
        if t is None:
            return [None]
        return [TensorType(dtype or t.dtype, t.shape)]

    return infer


def broadcast_infer(dtype: str | None = None, dtype_from: int = 0):
    """Inference for n-ary broadcasting ops (arithmetic, comparisons, Where)."""

    def infer(node: Node, attrs: dict):
        types = [v.type if v is not None else None for v in node.inputs]
        if any(t is None for t in types):
            return [None]
        out_dtype = dtype or types[dtype_from].dtype
        return [TensorType(out_dtype, broadcast_shapes(*[t.shape for t in types]))]

    return infer


def normalize_axis(axis: int, rank: int, node: Node | None = None) -> int:
    if not -rank <= axis < max(rank, 1):
        where = f" of node {node.name!r} ({node.op_type})" if node is not None else ""
        raise ShapeError(f"axis {axis}{where} is out of range for rank {rank}")
    return axis % rank if rank else 0


# ---------------------------------------------------------------------------
# the memory limit on a single tensor an op computes the size of


DEFAULT_MAX_TENSOR_BYTES = 16 << 30  # 16 GiB: past any one activation of today's inference models
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def max_tensor_bytes() -> int:
    """The largest tensor (bytes) an op may make: ``GRAPHOPT_MAX_TENSOR_BYTES`` (a number, or one
    with a K/M/G/T suffix, binary) or 16 GiB.

    >>> os.environ["GRAPHOPT_MAX_TENSOR_BYTES"] = "2G"; max_tensor_bytes()
    2147483648
    >>> del os.environ["GRAPHOPT_MAX_TENSOR_BYTES"]
    """
    raw = os.environ.get("GRAPHOPT_MAX_TENSOR_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_TENSOR_BYTES
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", raw, re.IGNORECASE)
    if not m:
        raise GraphoptError(f"GRAPHOPT_MAX_TENSOR_BYTES={raw!r}: expected a number of bytes, such as 8589934592 or 8G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def check_tensor_size(shape: Sequence[int], dtype, node: Node | None = None) -> None:
    """Refuse, before anything is allocated, a tensor past ``max_tensor_bytes()``: a ShapeError
    naming the node (a model asking Tile, Expand, Range, Resize or ConstantOfShape for 10^11
    elements is stopped here, not by a failed allocation or the machine's swap).

    >>> check_tensor_size((10 ** 6, 10 ** 6), "float32")
    Traceback (most recent call last):
    ...
    graphopt.errors.ShapeError: a float32 tensor of shape [1000000, 1000000] (3.64 TiB) is more than the 16 GiB a tensor may take (GRAPHOPT_MAX_TENSOR_BYTES)
    """
    dims = [int(d) for d in shape]
    if isinstance(dtype, str):
        from .. import dtypes

        name, itemsize = dtype, 8 if dtype == "string" else dtypes.to_numpy(dtype).itemsize
    else:
        name, itemsize = np.dtype(dtype).name, np.dtype(dtype).itemsize
    nbytes = math.prod(max(d, 0) for d in dims) * itemsize
    limit = max_tensor_bytes()
    if nbytes > limit:
        what = f"a {name} tensor of shape {dims} ({_bytes(nbytes)})"
        what = f"node {node.name!r} ({node.op_type}) would make {what}," if node is not None else f"{what} is"
        raise ShapeError(f"{what} more than the {_bytes(limit)} a tensor may take (GRAPHOPT_MAX_TENSOR_BYTES)")


# ops whose output size comes from values they read: their inference must hold at load
SIZED_BY_VALUES = frozenset({"Tile", "Expand", "Range", "Resize", "Upsample", "ConstantOfShape", "Reshape", "Pad",
                             "RandomNormal", "RandomUniform", "EyeLike", "OneHot"})


def check_static_sizes(graph) -> None:
    """At load: every output whose shape is known must fit ``max_tensor_bytes()``, and the ops that
    compute sizes from values must infer without error (a Reshape to an impossible size is
    refused here, not at run time). Raises a ShapeError naming the node.

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); _ = b.output(b.op("Relu", b.input("x", (2, 3))), "y")
    >>> check_static_sizes(b.graph)
    """
    for n in graph:
        if n.domain == "" and n.op_type in SIZED_BY_VALUES:
            s = get_schema(n.op_type)
            if s is not None and s.infer is not None:
                try:
                    s.infer(n, s.resolve_attrs(n.attrs))
                except ShapeError as exc:
                    msg = str(exc)
                    raise ShapeError(msg if repr(n.name) in msg else f"node {n.name!r} ({n.op_type}): {msg}") from None
                except Exception:
                    pass  # inference that cannot tell says nothing here; the kernel checks at run time
        for v in n.outputs:
            t = v.type
            if t is not None and t.dtype and t.shape is not None and all(isinstance(d, int) for d in t.shape):
                check_tensor_size(t.shape, t.dtype, n)
        for sg in n.subgraphs():
            check_static_sizes(sg)
