"""CPU backend: runs a graph node by node with the registry's NumPy kernels.

Compilation resolves every node's kernel and attributes once, numbers values
into slots, plans memory from lifetimes (the planned peak is reported in
``stats``) and releases each intermediate array right after its last reader, so
the live set follows the plan.

>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", (2,)); b.output(b.op("Neg", x), "y")
>>> run_reference(b.graph, {"x": np.array([1., -2.], np.float32)})
[array([-1.,  2.], dtype=float32)]
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from graphopt.backend import Backend, Executable, check_feeds
from graphopt.errors import GraphoptError, ShapeError
from graphopt.ir import Graph, Node, Value
from graphopt.memory import plan_memory
from graphopt.ops.registry import KernelContext, get_schema, node_opset, require_schema


class _Step:
    __slots__ = ("node", "kernel", "attrs", "in_slots", "out_slots", "free", "ctx")


class Interpreter:
    """A graph prepared for repeated execution (used for the main graph and subgraphs)."""

    def __init__(self, graph: Graph, check_types: bool = False):
        self.graph = graph
        self.check_types = check_types
        self.slot: dict[Value, int] = {}
        self.outer: list[Value] = []  # values of enclosing graphs read here

        def slot_of(v: Value) -> int:
            s = self.slot.get(v)
            if s is None:
                s = self.slot[v] = len(self.slot)
            return s

        for v in graph.inputs:
            slot_of(v)
        self.consts: list[tuple[int, np.ndarray]] = [(slot_of(v), v.const) for v in graph.initializers.values()]
        defined = set(self.slot)
        self.steps: list[_Step] = []
        last: dict[Value, int] = {}
        nodes = list(graph)
        for i, n in enumerate(nodes):
            for v in graph.node_inputs(n):
                last[v] = i
        outputs = set(graph.outputs)
        self._sub_cache: dict[int, Interpreter] = {}
        for i, n in enumerate(nodes):
            schema = require_schema(n)
            why = schema.check_node(n)
            if why:
                raise GraphoptError(why)
            st = _Step()
            st.node = n
            st.kernel = schema.kernel
            st.attrs = schema.resolve_attrs(n.attrs)
            for v in graph.node_inputs(n):
                if v not in defined and v not in self.slot:
                    self.outer.append(v)
                    slot_of(v)
            st.in_slots = [None if v is None else slot_of(v) for v in n.inputs]
            st.out_slots = [slot_of(v) for v in n.outputs]
            defined.update(n.outputs)
            st.ctx = KernelContext(node=n, opset=node_opset(n), run_subgraph=self._run_subgraph)
            self.steps.append(st)
        # free after last use: everything that is not an output, an input or a constant
        pinned = outputs | set(graph.inputs) | set(graph.initializers.values()) | set(self.outer)
        frees: dict[int, list[int]] = {}
        for v, i in last.items():
            if v not in pinned and v in self.slot:
                frees.setdefault(i, []).append(self.slot[v])
        for i, n in enumerate(nodes):  # outputs nobody reads die at once
            for v in n.outputs:
                if v not in last and v not in outputs:
                    frees.setdefault(i, []).append(self.slot[v])
        for i, st in enumerate(self.steps):
            st.free = frees.get(i, [])
        self.out_slots = [self.slot[v] for v in graph.outputs]
        self.in_slots = [self.slot[v] for v in graph.inputs]

    def _run_subgraph(self, graph: Graph, inputs: list, outer_env: dict[Value, np.ndarray]) -> list:
        interp = self._sub_cache.get(id(graph))
        if interp is None:
            interp = self._sub_cache[id(graph)] = Interpreter(graph, self.check_types)
        return interp.run(inputs, outer_env)

    def run(self, inputs: list, outer_env: dict[Value, np.ndarray] | None = None) -> list:
        env: list = [None] * len(self.slot)
        for s, a in zip(self.in_slots, inputs):
            env[s] = a
        for s, c in self.consts:
            env[s] = c
        if self.outer:
            for v in self.outer:
                if outer_env is None or v not in outer_env:
                    raise GraphoptError(f"subgraph {self.graph.name!r} reads {v.name!r}, which is not available")
                env[self.slot[v]] = outer_env[v]
        for st in self.steps:
            args = [None if s is None else env[s] for s in st.in_slots]
            if st.node.attrs and any(isinstance(a, (Graph, list)) for a in st.node.attrs.values()):
                st.ctx.outer_env = self._visible(env, outer_env)
            try:
                outs = st.kernel(args, st.attrs, st.ctx)
            except GraphoptError:
                raise
            except Exception as exc:
                n = st.node
                shapes = ", ".join("None" if a is None else f"{getattr(a, 'dtype', '?')}{list(np.shape(a))}"
                                   for a in args)
                raise GraphoptError(f"node {n.name!r} ({n.qualified_op}) failed on inputs ({shapes}): "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
            for s, o in zip(st.out_slots, outs):
                env[s] = o
            if self.check_types:
                _check_outputs(st.node, outs)
            for s in st.free:
                env[s] = None
        return [env[s] for s in self.out_slots]

    def _visible(self, env: list, outer_env) -> dict:
        vis = dict(outer_env or {})
        for v, s in self.slot.items():
            if env[s] is not None:
                vis[v] = env[s]
        return vis


def _check_outputs(node: Node, outs: list) -> None:
    for v, a in zip(node.outputs, outs):
        if a is None or v.type is None or not isinstance(a, np.ndarray):
            continue
        from graphopt import dtypes

        have = dtypes.from_numpy(a.dtype)
        if have != v.type.dtype:
            raise ShapeError(f"node {node.name!r} ({node.op_type}) produced {have} for {v.name!r}, "
                             f"inferred {v.type.dtype}")
        if v.type.shape is not None:
            if a.ndim != len(v.type.shape) or any(isinstance(d, int) and d != n
                                                   for d, n in zip(v.type.shape, a.shape)):
                raise ShapeError(f"node {node.name!r} ({node.op_type}) produced shape {list(a.shape)} for "
                                 f"{v.name!r}, inferred {v.type}")


class CpuExecutable(Executable):
    def __init__(self, graph: Graph, check_types: bool = False):
        self.graph = graph
        self.interp = Interpreter(graph, check_types)
        plan = plan_memory(graph)
        self.plan = plan
        self.stats = {"backend": "cpu", "nodes": len(graph), "planned_peak_bytes": plan.peak_bytes,
                      "unplanned_buffers": len(plan.unplanned), "memory_plan": plan.summary()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)
        return self.interp.run([feeds[v.name] for v in self.graph.inputs])


class CpuBackend(Backend):
    """NumPy reference backend."""

    name = "cpu"

    def is_available(self):
        return True, ""

    def lowering_pipeline(self, ctx) -> list[str]:
        return []

    def supports(self, node: Node) -> bool:
        s = get_schema(node.op_type, node.domain)
        return s is not None and s.kernel is not None

    def compile(self, graph: Graph, ctx=None) -> CpuExecutable:
        self.check_supported(graph)
        return CpuExecutable(graph, check_types=bool(ctx is not None and getattr(ctx, "verify", False)))


def run_reference(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``graph`` on the NumPy reference (the oracle of every test)."""
    return CpuExecutable(graph).run(feeds)
