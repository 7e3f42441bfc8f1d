"""The backend protocol, and input checking shared by every backend.

A backend plugin is a class with a ``name`` and four methods::

    class MyBackend(Backend):
        name = "mine"
        def is_available(self): return True, ""
        def lowering_pipeline(self, ctx): return ["fuse_elementwise"]
        def supports(self, node): return node.op_type in MY_KERNELS
        def compile(self, graph, ctx): return MyExecutable(graph)

``Executable.run(feeds)`` takes a dict ``input name -> array`` and returns the
list of output arrays in graph-output order.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import dtypes
from .errors import InputError, UnsupportedOpError
from .ir import Graph, Node


class Executable:
    """A compiled graph. Subclasses implement ``run``."""

    graph: Graph
    stats: dict[str, Any]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - protocol
        raise NotImplementedError


class Backend:
    name = "backend"
    options: dict[str, str] = {}  # the compile options it reads -> what each does (checked by graphopt.compile)

    def is_available(self) -> tuple[bool, str]:
        return True, ""

    def lowering_pipeline(self, ctx) -> list[str]:
        return []

    def supports(self, node: Node) -> bool:
        return True

    def compile(self, graph: Graph, ctx) -> Executable:  # pragma: no cover - protocol
        raise NotImplementedError

    def check_supported(self, graph: Graph) -> None:
        """Raise a clear error naming the first node this backend cannot run."""
        for n in graph:
            if not self.supports(n):
                raise UnsupportedOpError(
                    f"unsupported op {n.qualified_op} (node {n.name!r}) on backend {self.name!r}")


def check_feeds(graph: Graph, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate run inputs against the graph's inputs: names, dtypes, ranks, static dims.

    Binds symbolic dims consistently (two inputs sharing ``batch`` must agree). An input
    without a tensor type (an ONNX sequence or optional) takes a list of arrays or None.
    """
    out: dict[str, np.ndarray] = {}
    names = [v.name for v in graph.inputs]
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r} (the model's inputs are: {', '.join(names)})")
    bound: dict[str, int] = {}
    for v in graph.inputs:
        if v.name not in feeds:
            raise InputError(f"missing input {v.name!r} ({v.type})")
        t = v.type
        raw = feeds[v.name]
        if t is None and (raw is None or isinstance(raw, (list, tuple))):
            # a sequence (a list of arrays) or an empty optional: passed on as it is
            out[v.name] = raw if raw is None else list(raw)
            continue
        arr = np.asarray(raw)
        if t is not None:
            want = t.dtype
            have = dtypes.from_numpy(arr.dtype) if arr.dtype != object else "string"
            if have != want:
                raise InputError(f"input {v.name!r} has dtype {have}, the model expects {want}")
            if t.shape is not None:
                if arr.ndim != len(t.shape):
                    raise InputError(f"input {v.name!r} has shape {tuple(arr.shape)}, "
                                     f"the model expects rank {len(t.shape)} {t}")
                for i, (d, n) in enumerate(zip(t.shape, arr.shape)):
                    if isinstance(d, int) and d != n:
                        raise InputError(f"input {v.name!r} has shape {tuple(arr.shape)}, the model expects {t} "
                                         f"(dim {i} must be {d})")
                    if isinstance(d, str):
                        if bound.setdefault(d, n) != n:
                            raise InputError(f"input {v.name!r} dim {i} ({d}) is {n}, but another input "
                                             f"set {d}={bound[d]}")
        out[v.name] = arr
    return out
