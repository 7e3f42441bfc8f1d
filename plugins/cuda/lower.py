"""Partition a (lowered) graph into kernel launches, and plan its memory.

Every node becomes one of:

* **folded** - all its inputs are constants (or it only reads a static shape:
  ``Shape``, ``Size``): evaluated once at compile time with the NumPy
  reference and kept as a constant buffer;
* **a view** - ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``,
  ``Identity``, inference ``Dropout``: its output aliases its input's buffer
  (a copy kernel only when the output is a graph output);
* **a host node** - only when not strict: a node with no kernel (or whose
  lowering refuses it) is listed in ``host_nodes`` with the reason, and the
  result only tells ``partition.py`` where to split the graph;
* **launches** - one or more kernels from the op's lowering, found in the
  one registry that the kernel-family modules of ``lowerings/`` register into
  (``Concat`` is one strided copy per input).

The launch plan names buffers by the ``Value`` that owns the storage (a kernel's
parameters made from buffer addresses, such as TMA tensor maps, are the
executables' business: ``kernel.DerivedArg``); memory
is planned with ``graphopt.memory.plan_memory`` over a graph of just the
launching nodes (views and folded nodes removed), so every intermediate gets
an offset into one arena.

>>> lowered = lower_graph(graph, backend_name="cuda-emu")     # doctest: +SKIP
>>> [l.kernel.name for l in lowered.launches]                # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from graphopt import dtypes
from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.memory import MemoryPlan, plan_memory
from graphopt.ops.registry import KernelContext, get_schema, infer_node, node_opset, require_schema

from .kernel import Kernel, check_launch
from .lowerings import LOWERINGS, domain_of, find_lowering, static_shape
from .lowerings.common import emit_copy

__all__ = ["LOWERINGS", "Launch", "LoweredGraph", "Lowerer", "evaluate_node", "lower_graph",
           "static_shape", "supports_node", "why_unsupported"]

VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
SHAPE_ONLY_OPS = {"Shape", "Size"}  # read only the (static) shape of their input


@dataclass
class Launch:
    """One kernel launch of the plan. ``args`` are the storage owners of the kernel's buffer
    parameters, in order; the kernel's ``derived`` parameters (TMA tensor maps) follow them and
    are made by the executable from those buffers' addresses (``kernel.DerivedArg``)."""

    kernel: Kernel
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[Value, ...]  # storage owners, in the kernel's parameter order (its buffers)
    node: Node


def evaluate_node(node: Node, args: list, during: str = "on the host", ctx: KernelContext | None = None) -> list:
    """``node`` evaluated by its NumPy reference kernel on ``args`` (None for absent inputs);
    ``ctx`` gives control flow its subgraph runner. Sequences (lists) come back as lists."""
    schema = require_schema(node)
    try:
        outs = schema.kernel(args, schema.resolve_attrs(node.attrs),
                             ctx or KernelContext(node=node, opset=node_opset(node)))
    except GraphoptError:
        raise
    except Exception as exc:
        raise GraphoptError(f"node {node.name!r} ({node.op_type}) failed {during}: "
                            f"{type(exc).__name__}: {exc}") from exc
    return [a if a is None or isinstance(a, list) else np.asarray(a, order="C") for a in outs]


def why_unsupported(node: Node) -> str | None:
    """A reason the CUDA backend cannot run ``node`` (as a kernel, view or fold), or None."""
    if node.subgraphs():
        return f"{node.op_type} has subgraphs (control flow is not compiled to CUDA)"
    if (node.op_type in VIEW_OPS and domain_of(node) == "") or node.op_type in SHAPE_ONLY_OPS | {"Constant"}:
        return None
    low = find_lowering(node)
    if low is None:
        return f"no CUDA kernel for {node.qualified_op}"
    return low.check(node) if low.check else None


@dataclass
class LoweredGraph:
    graph: Graph
    launches: list[Launch] = field(default_factory=list)
    consts: dict[Value, np.ndarray] = field(default_factory=dict)
    alias: dict[Value, Value] = field(default_factory=dict)  # view -> storage owner
    folded: list[str] = field(default_factory=list)
    plan: MemoryPlan | None = None
    offsets: dict[Value, int] = field(default_factory=dict)  # arena byte offsets of intermediates
    host_nodes: list[tuple[Node, str]] = field(default_factory=list)  # not strict: (node, why) without a kernel
    # not strict: nodes with a kernel that read a tensor whose shape only a run knows (a host node's
    # data-dependent result): compiled per run signature with their segment (partition.py)
    deferred: list[Node] = field(default_factory=list)

    def arena_offset(self, v: Value) -> int:
        """Byte offset of ``v`` in the arena. An empty tensor that no kernel wrote (its
        producer had no work) still needs some address; it is never dereferenced."""
        off = self.offsets.get(v)
        if off is None:
            if v.type is not None and v.type.is_static and v.type.numel() == 0:
                return 0
            raise GraphoptError(f"tensor {v.name!r} has no buffer in the CUDA memory plan")
        return off

    def root(self, v: Value) -> Value:
        while v in self.alias:
            v = self.alias[v]
        return v

    @property
    def kernels(self) -> list[Kernel]:
        return list({l.kernel.name: l.kernel for l in self.launches}.values())


class Lowerer:
    """State while lowering one graph; lowerings call ``const``, ``emit`` and ``alias``."""

    def __init__(self, graph: Graph, backend_name: str, strict: bool = True):
        # a private copy: folded values become constants in it, and types are re-inferred from them
        graph = graph.clone()
        self.graph = graph
        self.backend_name = backend_name
        self.strict = strict  # refuse a node without a kernel, else list it in host_nodes (not runnable then)
        self.out = LoweredGraph(graph)
        for v in graph.initializers.values():
            self.out.consts[v] = v.const
        self._node_launches: list[tuple[Node, list[Launch]]] = []
        self._current: list[Launch] = []

    # -- helpers for lowerings ----------------------------------------------------------------
    def const(self, v: Value | None) -> np.ndarray | None:
        """The compile-time value of ``v`` (initializer or folded), or None."""
        if v is None:
            return None
        return self.out.consts.get(self.out.root(v))

    def require_const(self, node: Node, i: int, what: str) -> np.ndarray:
        c = self.const(node.input(i))
        if c is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): {what} (input {i}) must be a constant "
                                     f"for the CUDA backend")
        return c

    def optional_const(self, node: Node, i: int, what: str) -> np.ndarray | None:
        """An optional constant operand: None when the input is absent, refused when it is
        present but computed at run time (a default in its place would be a wrong answer)."""
        return None if node.input(i) is None else self.require_const(node, i, what)

    def new_const(self, name: str, array: np.ndarray) -> Value:
        """A constant made at compile time (packed weights, per-channel parameters)."""
        v = self.graph.add_initializer(name, np.ascontiguousarray(array))
        self.out.consts[v] = v.const
        return v

    def emit(self, node: Node, kernel: Kernel, spec, args: list[Value]) -> None:
        """Add a launch of ``kernel`` (skipped when its spec says there is no work)."""
        if getattr(spec, "empty", False) or (hasattr(spec, "numel") and spec.numel == 0):
            return
        grid, block = tuple(spec.grid()), tuple(spec.block())
        check_launch(kernel.name, grid, block)
        if len(args) != kernel.n_buffers:
            raise GraphoptError(f"node {node.name!r}: kernel {kernel.name} has {kernel.n_buffers} buffer "
                                f"parameters, the lowering gave {len(args)} arguments")
        self._current.append(Launch(kernel, grid, block, tuple(self.out.root(a) for a in args), node))

    def alias(self, view: Value, base: Value) -> None:
        self.out.alias[view] = self.out.root(base)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> LoweredGraph:
        for node in self.graph:
            self._current = []
            if not self.strict and self._waits_for_shapes(node):
                self.out.deferred.append(node)
                continue
            if self._foldable(node):
                try:
                    self._fold(node)
                except UnsupportedOpError as exc:  # Shape of a tensor that is not one (a sequence)
                    if self.strict:
                        raise
                    self.out.host_nodes.append((node, str(exc).splitlines()[0]))
                continue
            if any(v.type is None or not v.type.is_static for v in node.outputs):
                infer_node(node)  # shapes computed from folded constants (Shape -> Concat -> Reshape) are known now
            if self._no_work(node):
                # an empty result is a constant: a kernel rendered for it would divide by a zero extent
                # in its index math (undefined behaviour that g++ compiles to a trap under emulation)
                for v in node.outputs:
                    if v is not None:
                        v.const = self.out.consts[v] = np.empty(static_shape(v, node), dtypes.to_numpy(v.dtype))
                self.out.folded.append(node.name)
                continue
            why = why_unsupported(node)
            if why is None and not self.strict:
                dynamic = [v for v in node.outputs if v is not None and v.type is not None and not v.type.is_static]
                if dynamic:  # e.g. a Reshape to a shape computed from data: its readers are compiled per run
                    why = f"the shape of {dynamic[0].name!r} depends on the data ({dynamic[0].type})"
            try:
                if why is not None:
                    raise UnsupportedOpError(f"unsupported op {node.qualified_op} (node {node.name!r}) on backend "
                                             f"{self.backend_name!r}: {why}")
                if node.op_type in VIEW_OPS and domain_of(node) == "":
                    self._view(node)
                else:
                    find_lowering(node).lower(node, self)
            except UnsupportedOpError as exc:
                if self.strict:
                    raise
                self.out.host_nodes.append((node, why or str(exc).splitlines()[0]))
                continue
            self._node_launches.append((node, self._current))
            self.out.launches.extend(self._current)
        if not self.out.host_nodes and not self.out.deferred:
            self._plan()
        return self.out

    def _waits_for_shapes(self, node: Node) -> bool:
        """``node`` has a kernel (or is a view or a shape read) but reads a tensor whose shape is
        not static here: only a run knows it."""
        if node.subgraphs() or (find_lowering(node) is None and node.op_type not in VIEW_OPS | SHAPE_ONLY_OPS):
            return False
        return any(v.type is not None and not v.type.is_static and self.const(v) is None
                   for v in node.inputs if v is not None)

    def _foldable(self, node: Node) -> bool:
        if node.op_type in SHAPE_ONLY_OPS or node.op_type == "Constant":
            return True
        ins = [v for v in node.inputs if v is not None]
        return bool(ins) and not node.subgraphs() and all(self.const(v) is not None for v in ins)

    @staticmethod
    def _no_work(node: Node) -> bool:
        """Every result of ``node`` is statically empty (a view's alias is no work either way)."""
        outs = [v for v in node.outputs if v is not None]
        return bool(outs) and not node.subgraphs() and all(
            v.type is not None and v.type.is_static and v.type.numel() == 0 for v in outs)

    def _fold(self, node: Node) -> None:
        args = []
        for v in node.inputs:
            if v is None:
                args.append(None)
            elif node.op_type in SHAPE_ONLY_OPS and self.const(v) is None:
                shape = static_shape(v, node)  # a zero-stride stand-in: only its shape is read
                args.append(np.broadcast_to(np.zeros((), dtypes.to_numpy(v.dtype)), shape))
            else:
                args.append(self.const(v))
        outs = evaluate_node(node, args, "while folding constants")
        for v, a in zip(node.outputs, outs):
            if a is not None:
                v.const = self.out.consts[v] = np.asarray(a, order="C")
                if v.type is None or not v.type.is_static:  # readers re-infer their shapes from this one
                    v.type = TensorType(dtypes.from_numpy(v.const.dtype), v.const.shape)
        self.out.folded.append(node.name)

    def _view(self, node: Node) -> None:
        x, y = node.input(0), node.output
        if node.op_type == "Dropout" and len(node.outputs) > 1 and (node.outputs[1].num_uses
                                                                   or node.outputs[1].is_graph_output):
            raise UnsupportedOpError(f"unsupported op Dropout (node {node.name!r}) on backend "
                                     f"{self.backend_name!r}: its mask output is used")
        if node.op_type == "Dropout" and node.input(2) is not None:
            training = self.const(node.input(2))
            if training is None or bool(np.asarray(training)):  # the reference decides at run time, or refuses
                raise UnsupportedOpError(f"unsupported op Dropout (node {node.name!r}) on backend "
                                         f"{self.backend_name!r}: training_mode is not a constant false "
                                         f"(a view is inference-only Dropout)")
        if y.is_graph_output:  # the caller owns output buffers: copy rather than alias
            emit_copy(node, self, x, y)
        else:
            self.alias(y, x)

    def _plan(self) -> None:
        """Arena offsets for every intermediate written by a kernel."""
        g = self.graph
        pg = Graph("cuda_memory_plan")
        vmap: dict[Value, Value] = {}
        for v in g.inputs:
            vmap[v] = pg.add_input(v.name, v.type)
        for v, a in self.out.consts.items():
            vmap[v] = pg.add_initializer(v.name, a)
        for node, launches in self._node_launches:
            if not launches:
                continue
            written = [v for v in node.outputs if any(v in l.args for l in launches) and v not in vmap]
            read = list(dict.fromkeys(vmap[a] for l in launches for a in l.args if a in vmap))
            pn = pg.make_node("Kernel", read, num_outputs=max(len(written), 1),
                              output_types=[v.type for v in written] or None)
            for v, pv in zip(written, pn.outputs):
                vmap[v] = pv
        for v in g.outputs:
            r = self.out.root(v)
            if r in vmap and vmap[r] not in pg.inputs and r not in self.out.consts:
                pg.add_output(vmap[r])
        plan = plan_memory(pg)
        back = {pv: v for v, pv in vmap.items()}
        self.out.plan = plan
        self.out.offsets = {back[pv]: off for pv, off in plan.offsets.items()}
        if plan.unplanned:
            names = ", ".join(pv.name for pv in plan.unplanned[:3])
            raise UnsupportedOpError(f"the CUDA backend cannot plan buffers without static sizes: {names}")


def lower_graph(graph: Graph, backend_name: str = "cuda", strict: bool = True) -> LoweredGraph:
    """Partition ``graph`` into launches; ``strict=False`` lists the nodes without a kernel in
    ``host_nodes`` instead of refusing the first (the result is then for ``partition.py`` only)."""
    return Lowerer(graph, backend_name, strict).run()


def supports_node(node: Node) -> bool:
    if node.op_type not in VIEW_OPS | SHAPE_ONLY_OPS | {"Constant"} and get_schema(node.op_type, node.domain) is None:
        return False
    ins = [v for v in node.inputs if v is not None]
    if ins and all(v.is_const for v in ins) and not node.subgraphs():
        return True  # folded at compile time
    return why_unsupported(node) is None

