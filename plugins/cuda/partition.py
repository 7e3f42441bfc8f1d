"""A model with nodes the CUDA backend has no kernel for still runs: those nodes run on
the host, by the CPU reference, and the rest is compiled in pieces around them.

``compile_partitioned`` lowers the graph once without refusing (``lower_graph(...,
strict=False)``), which names every node without a kernel and why, and folds what is
constant. When there are such nodes, the graph is split in topological order into
device segments (runs of nodes with kernels, each compiled as its own graph by the
backend) and host nodes; ``PartitionedExecutable`` runs them in order, handing each
segment its inputs and taking its outputs (a device segment's ``run`` copies them in
and out), as ONNX Runtime splits a model between execution providers. ``strict``
refuses the first such node instead. A node is refused even then when graphopt has no
reference kernel for it.

Host nodes run what the CPU reference runs: control flow (``If``, ``Loop``, ``Scan``:
their bodies by the CPU backend's interpreter, reading the enclosing values they name),
sequences, and ops whose result's shape depends on the data (``NonZero``, ``Unique``, a
``Range`` of computed bounds). A device segment that reads such a result (its nodes are
``deferred`` by the lowering) is compiled at each run for the shapes that run brings
(``specialize.py``: one executable per signature, shape-sized integer inputs bound by
value), and itself partitioned again if a node then still has no kernel.

``stats["host_nodes"]`` lists each host node (name, op, why), those of segments compiled
at run time included once they ran; ``stats["partitions"]`` the segments.

>>> exe = compile_partitioned(graph, compile_static, "cuda-emu")   # doctest: +SKIP
>>> exe.stats["host_nodes"]                                        # doctest: +SKIP
[{'node': 'unique_1', 'op': 'Unique', 'why': 'no CUDA kernel for Unique'}]
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from graphopt.backend import Executable, check_feeds
from graphopt.errors import UnsupportedOpError
from graphopt.ir import Graph, Node, Value
from graphopt.ops.registry import KernelContext, get_schema, node_opset

from .expand import expand_functions
from .lower import LoweredGraph, evaluate_node, lower_graph, supports_node, why_unsupported


def host_node_stats(lowered: LoweredGraph) -> list[dict]:
    return [{"node": n.name, "op": n.qualified_op, "why": why} for n, why in lowered.host_nodes]


def host_nodes_of(graph: Graph, backend_name: str) -> list[Node]:
    """The nodes of ``graph`` that would run on the host (no kernel, or one that refuses them)."""
    return [n for n, _ in lower_graph(graph, backend_name, strict=False).host_nodes]


def why_not_on_host(node: Node) -> str | None:
    """Why ``node`` cannot run on the host inside a compiled model, or None."""
    schema = get_schema(node.op_type, node.domain)
    if schema is None or schema.kernel is None:
        return "graphopt has no reference kernel for it"
    return None


def _refuse(node: Node, backend_name: str, why: str, reason: str):
    raise UnsupportedOpError(f"unsupported op {node.qualified_op} (node {node.name!r}) on backend "
                             f"{backend_name!r}: {why}; it cannot run on the host either: {reason}")


def check_runnable(graph: Graph, backend_name: str) -> None:
    """Refuse now a graph with a node that neither a kernel nor the host can ever run (shapes are
    checked at each signature's compile, once they are known)."""
    for node in graph:
        why = why_unsupported(node)
        if why is not None and not supports_node(node):
            reason = why_not_on_host(node)
            if reason:
                _refuse(node, backend_name, why, reason)


def _refuse_unrunnable(lowered: LoweredGraph, backend_name: str) -> None:
    for node, why in lowered.host_nodes:
        reason = why_not_on_host(node)
        if reason:
            _refuse(node, backend_name, why, reason)


class _Segment:
    """Device nodes compiled together (``exe``), or one host node."""

    def __init__(self, host: Node | None = None):
        self.host = host
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.exe: Executable | None = None
        self.per_run = False  # compiled at each run's shapes (it reads a data-dependent shape)


def split(lowered: LoweredGraph) -> list[_Segment]:
    """The lowered graph's nodes in order as device segments and host nodes; folded nodes are
    left out (their values are constants)."""
    host = {n for n, _ in lowered.host_nodes}
    deferred = set(lowered.deferred)
    consts = lowered.consts
    segs: list[_Segment] = []
    for node in lowered.graph:
        if all(v in consts for v in node.outputs):
            continue  # folded at compile time
        if node in host:
            segs.append(_Segment(node))
        else:
            if not segs or segs[-1].host is not None:
                segs.append(_Segment())
            segs[-1].nodes.append(node)
            segs[-1].per_run |= node in deferred
    later_reads: dict[Value, int] = {}  # value -> index of the last segment reading it
    for k, s in enumerate(segs):
        for n in ([s.host] if s.host else s.nodes):
            for v in lowered.graph.node_inputs(n):  # what control flow's bodies read too
                later_reads[v] = k
    outs = set(lowered.graph.outputs)
    for k, s in enumerate(segs):
        if s.host is not None:
            continue
        made = {v for n in s.nodes for v in n.outputs}
        read = [v for n in s.nodes for v in n.inputs if v is not None]
        s.inputs = list(dict.fromkeys(v for v in read if v not in made and v not in consts))
        s.outputs = [v for n in s.nodes for v in n.outputs if v in outs or later_reads.get(v, -1) > k]
    return segs


def segment_graph(src: Graph, seg: _Segment, consts: Mapping[Value, np.ndarray], k: int) -> Graph:
    """A graph of the segment's nodes: its inputs as graph inputs, constants as initializers."""
    g = Graph(f"{src.name}_part{k}")
    g.opset_imports = dict(src.opset_imports)
    vmap: dict[Value, Value] = {v: g.add_input(v.name, v.type) for v in seg.inputs}

    def operand(v: Value | None) -> Value | None:
        if v is None:
            return None
        if v not in vmap:
            vmap[v] = g.add_initializer(v.name, np.asarray(consts[v]))
        return vmap[v]

    for n in seg.nodes:
        new = g.make_node(n.op_type, [operand(v) for v in n.inputs], dict(n.attrs), num_outputs=len(n.outputs),
                          output_names=[v.name for v in n.outputs], output_types=[v.type for v in n.outputs],
                          domain=n.domain, name=n.name)
        vmap.update(zip(n.outputs, new.outputs))
    for v in seg.outputs:
        g.add_output(vmap[v])
    return g


class PartitionedExecutable(Executable):
    """Device segments and host nodes run in order (see the module docstring)."""

    def __init__(self, graph: Graph, lowered: LoweredGraph, segments: list[_Segment], backend_name: str):
        self.graph = graph
        self.lowered = lowered
        self.segments = segments
        self.consts = lowered.consts
        self.backend_name = backend_name
        self._subgraphs: dict[int, object] = {}  # id(body) -> the CPU interpreter that runs it
        self.expanded: list[tuple[str, str]] = []  # (node, op) replaced by its function body

    @property
    def stats(self) -> dict:
        """Segments and host nodes; a segment compiled per run adds what its last run compiled."""
        devs = [s.exe for s in self.segments if s.exe is not None]
        inner = [h for e in devs for h in e.stats.get("host_nodes", ())]
        return {
            "backend": self.backend_name,
            "partitions": [f"host {s.host.name} ({s.host.op_type})" if s.host is not None
                           else f"device: {len(s.nodes)} nodes, " + (
                               "compiled per run signature" if s.per_run else
                               f"{s.exe.stats.get('launches', 0)} launches")
                           for s in self.segments],
            "launches": sum(e.stats.get("launches", 0) for e in devs),
            "kernels": sum(e.stats.get("kernels", 0) for e in devs),
            "host_nodes": host_node_stats(self.lowered) + inner,
            "compile_seconds": round(sum(e.stats.get("compile_seconds", 0.0) for e in devs), 3),
            "schedules": {k: v for e in devs for k, v in e.stats.get("schedules", {}).items()},
            **({"expanded": [f"{name} ({op})" for name, op in self.expanded]} if self.expanded else {}),
        }

    def _value(self, env: dict, v: Value | None):
        if v is None:
            return None
        return env[v] if v in env else self.consts[v]

    def _host(self, node: Node, env: dict) -> list:
        ctx = None
        if node.subgraphs():  # bodies read the enclosing graph's values by name
            ctx = KernelContext(node=node, opset=node_opset(node), run_subgraph=self._run_subgraph)
            ctx.outer_env = {**self.consts, **env}
        return evaluate_node(node, [self._value(env, v) for v in node.inputs], ctx=ctx)

    def _run_subgraph(self, body: Graph, inputs: list, outer_env: dict | None) -> list:
        from graphopt.plugins.cpu.backend import Interpreter

        interp = self._subgraphs.get(id(body))
        if interp is None:
            interp = self._subgraphs[id(body)] = Interpreter(body)
        return interp.run(inputs, outer_env)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)
        env: dict[Value, object] = {v: feeds[v.name] for v in self.lowered.graph.inputs}
        for s in self.segments:
            if s.host is not None:
                outs = self._host(s.host, env)
                env.update((v, a) for v, a in zip(s.host.outputs, outs) if a is not None)
            else:
                res = s.exe.run({v.name: self._value(env, v) for v in s.inputs})
                env.update(zip(s.outputs, res))
        return [_owned(self._value(env, v)) for v in self.lowered.graph.outputs]


class PartitionedDeviceExecutable(PartitionedExecutable):
    """The same on device arrays (``run_device``): device segments hand their results to each
    other in device memory; only what a host node reads comes down, and only what a host node
    makes goes up (a device segment uploads a host array it is given)."""

    def run_device(self, feeds: Mapping[str, object], *, to_host: bool = False, **kw) -> list:
        from . import device
        from .backend import array_meta, host_array

        check_feeds(self.graph, {k: array_meta(k, a) for k, a in feeds.items()})
        env: dict[Value, object] = {v: feeds[v.name] for v in self.lowered.graph.inputs}
        on_host: dict[Value, object] = {}  # host copies of device values, each made once

        def host(v: Value):
            if v not in on_host:
                on_host[v] = host_array(env[v])
            return on_host[v]

        for s in self.segments:
            if s.host is not None:
                seen = {v: host(v) for v in self.lowered.graph.node_inputs(s.host) if v in env}
                outs = self._host(s.host, {**env, **seen})
                made = [(v, a) for v, a in zip(s.host.outputs, outs) if a is not None]
                env.update(made)
                on_host.update(made)
            else:
                env.update(zip(s.outputs, s.exe.run_device({v.name: self._value(env, v) for v in s.inputs}, **kw)))
        outs = [self._value(env, v) for v in self.lowered.graph.outputs]
        if to_host:
            return [a if a is None or isinstance(a, list) else np.array(host_array(a)) for a in outs]
        stream = device.current_stream()
        return [device.upload(a, stream) if isinstance(a, np.ndarray) else a for a in outs]


def _owned(a):
    """An output the caller may keep: arrays copied (a constant or an input may be one), sequences
    and empty optionals as they are."""
    return a if a is None or isinstance(a, list) else np.array(a)


def compile_partitioned(graph: Graph, compile_static: Callable[[Graph], Executable], backend_name: str,
                        strict: bool = False, device_arrays: bool = False) -> Executable:
    """``compile_static(graph)``; when a node has no kernel: its ONNX function body where that
    lowers to kernels (``expand.py``), and when not ``strict`` the rest in device segments and
    host nodes (see the module docstring). ``device_arrays``: the segments' executables run on
    device arrays (``run_device``), and so does the result."""
    try:
        return compile_static(graph)
    except UnsupportedOpError:
        graph, expanded = expand_functions(graph, lambda g: host_nodes_of(g, backend_name))
        if not expanded and strict:
            raise
    try:
        exe = compile_static(graph) if expanded else None
    except UnsupportedOpError:
        if strict:
            raise
        exe = None
    if exe is None:
        lowered = lower_graph(graph, backend_name, strict=False)
        if not lowered.host_nodes:  # the refusal was not a node's (e.g. the memory plan): say it again
            return compile_static(graph)
        _refuse_unrunnable(lowered, backend_name)
        segments = split(lowered)
        for k, s in enumerate(segments):
            if s.host is None:
                g = segment_graph(lowered.graph, s, lowered.consts, k)
                s.exe = per_run(g, compile_static, backend_name, device_arrays) if s.per_run else compile_static(g)
        exe = (PartitionedDeviceExecutable if device_arrays else PartitionedExecutable)(graph, lowered, segments,
                                                                                       backend_name)
    if expanded:
        exe.expanded = expanded
        exe.stats["expanded"] = [f"{name} ({op})" for name, op in expanded]
    return exe


def per_run(graph: Graph, compile_static: Callable[[Graph], Executable], backend_name: str,
            device_arrays: bool = False) -> Executable:
    """A device segment that reads tensors whose shapes only a run knows: compiled at each run
    for its inputs' shapes (and the values of shape-sized integer inputs), partitioned again
    where a node then has no kernel."""
    from .backend import SpecializingDeviceExecutable, SpecializingExecutable
    from .specialize import Specializer

    cls = SpecializingDeviceExecutable if device_arrays else SpecializingExecutable
    return cls(graph, Specializer(graph, level=0, bind_small_ints=True),
               lambda g: compile_partitioned(g, compile_static, backend_name, device_arrays=device_arrays),
               backend_name)
