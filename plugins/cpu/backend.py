"""CPU backend: runs a graph node by node with the registry's NumPy kernels.

Compilation resolves every node's kernel and attributes once, numbers values
into slots, plans memory from lifetimes (the planned peak is reported in
``stats``) and releases each intermediate array right after its last reader, so
the live set follows the plan.

>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", (2,)); _ = b.output(b.op("Neg", x), "y")
>>> run_reference(b.graph, {"x": np.array([1., -2.], np.float32)})
[array([-1.,  2.], dtype=float32)]
"""
from __future__ import annotations

import bisect
import gc
from typing import Callable, Mapping

import numpy as np

from graphopt.backend import Backend, Executable, check_feeds
from graphopt.errors import GraphoptError, ShapeError
from graphopt.ir import Graph, Node, Value
from graphopt.memory import MemoryPlan, plan_memory
from graphopt.ops.registry import KernelContext, get_schema, node_opset, require_schema

from .concat import concat_in_place
from .exprcode import Source
from .prepared import prepare


class _Step:
    # call(*args) for a prepared step (args: slots), call(args, attrs, ctx) for a registry kernel
    __slots__ = ("node", "run", "in_slots", "out_slots", "free", "inplace", "prepared", "call", "args", "attrs", "ctx")


class Interpreter:
    """A graph prepared for repeated execution (used for the main graph and subgraphs).

    Every node becomes a step ``run(env)`` over a list of slots: a ``Prepared`` kernel
    (``prepared.py``) where one applies, else the registry kernel with its attributes
    resolved once. Arrays are released right after their last reader; a prepared
    pointwise step writes its result into its first input when that array is fresh (made
    by a prepared step, not a view, not a graph input, output or constant) and neither it
    nor anything that may alias it is read later (``inplace`` counts those steps).
    ``fast=False`` runs every node on its registry kernel.

    The step list is compiled once into one Python function (``_compile``): each step a
    direct call over local variables, each release a ``del``. Graphs with subgraph steps,
    type checks and runs that record shapes go through the step loop instead.
    """

    def __init__(self, graph: Graph, check_types: bool = False, fast: bool = True):
        self.graph = graph
        self.check_types = check_types
        self.fast = fast
        self.slot: dict[Value, int] = {}
        self.outer: list[Value] = []  # values of enclosing graphs read here
        self._outer_env: dict[Value, np.ndarray] | None = None

        def slot_of(v: Value) -> int:
            s = self.slot.get(v)
            if s is None:
                s = self.slot[v] = len(self.slot)
            return s

        for v in graph.inputs:
            slot_of(v)
        self.consts: list[tuple[int, np.ndarray]] = [(slot_of(v), v.const) for v in graph.initializers.values()]
        defined = set(self.slot)
        nodes = list(graph)
        last: dict[Value, int] = {}
        for i, n in enumerate(nodes):
            for v in graph.node_inputs(n):
                last[v] = i
        for n in nodes:
            for v in graph.node_inputs(n):
                if v not in defined and v not in self.slot:
                    self.outer.append(v)
                    slot_of(v)
            for v in n.outputs:
                slot_of(v)
            defined.update(n.outputs)
        outputs = set(graph.outputs)
        pinned = outputs | set(graph.inputs) | set(graph.initializers.values()) | set(self.outer)
        self._sub_cache: dict[int, Interpreter] = {}
        storage = _Storage(self.slot, pinned)
        self.steps: list[_Step] = []
        self.inplace = 0
        for i, n in enumerate(nodes):
            self.steps.append(self._compile_node(i, n, storage, last))
        # free after last use: everything that is not an output, an input or a constant
        frees: dict[int, list[int]] = {}
        for v, i in last.items():
            if v not in pinned and v in self.slot:
                frees.setdefault(i, []).append(self.slot[v])
        for i, n in enumerate(nodes):  # outputs nobody reads die at once
            for v in n.outputs:
                if v not in last and v not in outputs:
                    frees.setdefault(i, []).append(self.slot[v])
        for i, st in enumerate(self.steps):
            st.free = tuple(frees.get(i, ()))
        self.out_slots = [self.slot[v] for v in graph.outputs]
        self.in_slots = [self.slot[v] for v in graph.inputs]
        self.concat_in_place = concat_in_place(self.steps, _bind) if self.fast else 0
        self._compiled, self._lines = self._compile()

    def _compile_node(self, i: int, n: Node, storage: "_Storage", last: dict[Value, int]) -> _Step:
        schema = require_schema(n)
        why = schema.check_node(n)
        if why:
            raise GraphoptError(why)
        st = _Step()
        st.node = n
        st.inplace = st.prepared = False
        st.in_slots = [None if v is None else self.slot[v] for v in n.inputs]
        st.out_slots = [self.slot[v] for v in n.outputs]
        attrs = schema.resolve_attrs(n.attrs)
        prep = None
        if self.fast and not self.check_types and not n.subgraphs():
            prep = prepare(n, attrs, [None if v is None else v.const for v in n.inputs])
        if prep is None:
            st.ctx = KernelContext(node=n, opset=node_opset(n), run_subgraph=self._run_subgraph)
            st.run = self._generic(n, schema.kernel, attrs, st.ctx, st.in_slots, st.out_slots)
            st.call, st.args, st.attrs = schema.kernel, st.in_slots, attrs
            storage.produced(n, fresh=False, ins=n.inputs)
            return st
        ins = [st.in_slots[k] for k in prep.inputs]
        if prep.donate is not None:
            v = n.inputs[prep.inputs[prep.donate]]
            # the other inputs must not share its memory either: they may be read after it is written
            if sum(u is v for u in n.inputs) == 1 and storage.dies_here(v, i, last) \
                    and not any(u is not None and u is not v and storage.shared(u, v) for u in n.inputs):
                st.inplace = True
                self.inplace += 1
        fn = prep.function(st.inplace)
        st.run = _bind(fn, ins, st.out_slots[0])
        st.prepared, st.call, st.args = True, fn, ins
        # a result written over a dying array owns that buffer from now on, as a fresh one does
        storage.produced(n, fresh=prep.fresh or st.inplace, ins=[n.inputs[k] for k in prep.inputs])
        return st

    def _generic(self, n: Node, kernel, attrs: dict, ctx: KernelContext, in_slots: list, out_slots: list):
        check = self.check_types
        if n.subgraphs():
            def run(env):
                ctx.outer_env = self._visible(env, self._outer_env)
                outs = kernel([None if s is None else env[s] for s in in_slots], attrs, ctx)
                for s, o in zip(out_slots, outs):
                    env[s] = o
                if check:
                    _check_outputs(n, outs)
        else:
            def run(env):
                outs = kernel([None if s is None else env[s] for s in in_slots], attrs, ctx)
                for s, o in zip(out_slots, outs):
                    env[s] = o
                if check:
                    _check_outputs(n, outs)
        return run

    def _run_subgraph(self, graph: Graph, inputs: list, outer_env: dict[Value, np.ndarray]) -> list:
        interp = self._sub_cache.get(id(graph))
        if interp is None:
            interp = self._sub_cache[id(graph)] = Interpreter(graph, self.check_types, self.fast)
        return interp.run(inputs, outer_env)

    def _compile(self) -> tuple[Callable | None, list[int]]:
        """The steps as one function ``run(inputs, outer_values)`` and the first line of each
        step in its source; None where the step loop must run them."""
        if self.check_types or any(st.node.subgraphs() for st in self.steps):
            return None, []
        src = Source()
        name = {s: f"v{s}" for s in self.slot.values()}
        consts = dict(self.consts)
        for s, c in self.consts:
            name[s] = src.ref(c, "const")
        src.line("def run(inputs, outer):")
        if self.in_slots:  # an input that is also an initializer reads the initializer, as in the step loop
            src.line(f"{', '.join('_' if s in consts else name[s] for s in self.in_slots)}, = inputs", 1)
        if self.outer:
            src.line(f"{', '.join(name[self.slot[v]] for v in self.outer)}, = outer", 1)
        lines = []
        for i, st in enumerate(self.steps):
            lines.append(len(src.lines) + 1)
            outs = ", ".join(name[s] for s in st.out_slots)
            if st.prepared:
                src.line(f"{outs} = {src.ref(st.call, 'step')}({', '.join(name[s] for s in st.args)})", 1)
            else:
                args = "[" + ", ".join("None" if s is None else name[s] for s in st.args) + "]"
                src.line(f"_o = {src.ref(st.call, 'kernel')}({args}, {src.ref(st.attrs, 'attrs')}, "
                         f"{src.ref(st.ctx, 'ctx')})", 1)
                n = len(st.out_slots)
                src.line(f"{outs}, = _o if len(_o) == {n} else {src.ref(_pad, '_pad')}(_o, {n})", 1)
            if st.free:
                src.line(f"del {', '.join(name[s] for s in st.free)}", 1)
        src.line(f"return [{', '.join(name[s] for s in self.out_slots)}]", 1)
        return src.function("run", f"graphopt graph {self.graph.name!r}"), lines

    def run(self, inputs: list, outer_env: dict[Value, np.ndarray] | None = None,
            record: dict[Value, tuple] | None = None) -> list:
        """The outputs for ``inputs``; ``record`` collects the shape of every node output."""
        if self.outer:
            for v in self.outer:
                if outer_env is None or v not in outer_env:
                    raise GraphoptError(f"subgraph {self.graph.name!r} reads {v.name!r}, which is not available")
        if self._compiled is not None and record is None and len(inputs) == len(self.in_slots):
            try:
                return self._compiled(inputs, [outer_env[v] for v in self.outer] if self.outer else None)
            except GraphoptError:
                raise
            except Exception as exc:
                err = self._compiled_failure(exc)
                if err is None:
                    raise
                raise err from exc
        return self._run_steps(inputs, outer_env, record)

    def _compiled_failure(self, exc: Exception) -> GraphoptError | None:
        """The error naming the step of the compiled function that raised ``exc``."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code is not self._compiled.__code__:
            tb = tb.tb_next
        if tb is None:
            return None
        i = bisect.bisect_right(self._lines, tb.tb_lineno) - 1
        if i < 0:
            return None
        local = tb.tb_frame.f_locals
        consts = dict(self.consts)
        return _node_failure(self.steps[i], lambda s: consts[s] if s in consts else local.get(f"v{s}"), exc)

    def _run_steps(self, inputs: list, outer_env: dict[Value, np.ndarray] | None,
                   record: dict[Value, tuple] | None) -> list:
        env: list = [None] * len(self.slot)
        for s, a in zip(self.in_slots, inputs):
            env[s] = a
        for s, c in self.consts:
            env[s] = c
        for v in self.outer:
            env[self.slot[v]] = outer_env[v]
        saved, self._outer_env = self._outer_env, outer_env
        st = None
        try:
            for st in self.steps:
                st.run(env)
                if record is not None:
                    for v, s in zip(st.node.outputs, st.out_slots):
                        record[v] = np.shape(env[s])
                for s in st.free:
                    env[s] = None
        except GraphoptError:
            raise
        except Exception as exc:
            raise _node_failure(st, env.__getitem__, exc) from exc
        finally:
            self._outer_env = saved
        return [env[s] for s in self.out_slots]

    def _visible(self, env: list, outer_env) -> dict:
        vis = dict(outer_env or {})
        for v, s in self.slot.items():
            if env[s] is not None:
                vis[v] = env[s]
        return vis


def _node_failure(st: _Step, value: Callable[[int], object], exc: Exception) -> GraphoptError:
    """The one-line error for ``exc`` raised by step ``st``, with the dtypes and shapes of its inputs."""
    n = st.node
    shapes = []
    for s in st.in_slots:
        a = None if s is None else value(s)
        shapes.append("None" if a is None else f"{getattr(a, 'dtype', '?')}{list(np.shape(a))}")
    return GraphoptError(f"node {n.name!r} ({n.qualified_op}) failed on inputs ({', '.join(shapes)}): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _pad(outs: list, n: int) -> list:
    """A kernel's outputs as ``n`` values: missing ones are None (as the step loop leaves them)."""
    return list(outs[:n]) + [None] * (n - len(outs))


def _bind(fn, ins: list, out: int):
    """``run(env)`` calling ``fn`` on the arrays in slots ``ins`` and storing the result in slot ``out``."""
    if len(ins) == 1:
        (a,) = ins

        def run_prepared(env):
            env[out] = fn(env[a])
    elif len(ins) == 2:
        a, b = ins

        def run_prepared(env):
            env[out] = fn(env[a], env[b])
    else:
        def run_prepared(env):
            env[out] = fn(*[env[s] for s in ins])
    return run_prepared


class _Storage:
    """Which values may share memory, for in-place decisions.

    Values are grouped by the buffer they may reference: a fresh result starts a group;
    any other result (a view, a registry kernel's output, which may be an input itself)
    joins the groups of the inputs it was computed from. A value may be overwritten at
    node ``i`` when it is fresh and its whole group is unpinned and dead after ``i``.
    """

    def __init__(self, slot: dict[Value, int], pinned: set[Value]):
        self.parent = list(range(len(slot)))
        self.slot = slot
        self.fresh: set[Value] = set()
        self.pinned_roots = set()
        self.members: dict[int, list[Value]] = {}
        for v, s in slot.items():
            self.members[s] = [v]
        for v in pinned:
            if v in slot:
                self.pinned_roots.add(slot[v])

    def _root(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._root(a), self._root(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        if rb in self.pinned_roots:
            self.pinned_roots.add(ra)

    def produced(self, node: Node, fresh: bool, ins) -> None:
        for v in node.outputs:
            if fresh:
                self.fresh.add(v)
                continue
            for u in ins:
                if u is not None:
                    self._union(self.slot[u], self.slot[v])

    def shared(self, u: Value, v: Value) -> bool:
        """Whether ``u`` and ``v`` may reference the same buffer."""
        return self._root(self.slot[u]) == self._root(self.slot[v])

    def dies_here(self, v: Value, i: int, last: dict[Value, int]) -> bool:
        if v not in self.fresh:
            return False
        r = self._root(self.slot[v])
        return r not in self.pinned_roots and all(last.get(u, -1) <= i for u in self.members[r])


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
    """A graph compiled for the CPU backend: ``run(feeds)`` -> outputs.

    ``stats["planned_peak_bytes"]`` is the memory plan's peak for the intermediates. With
    symbolic dims the plan is made again for each new set of input shapes, from the shapes
    the first run with them meets (``plan_for``).
    """

    def __init__(self, graph: Graph, check_types: bool = False, fast: bool = True):
        from graphopt.passmanager import gc_paused

        self.graph = graph
        with gc_paused():  # compiling builds many linked objects: collections would cost more than linear
            self.interp = Interpreter(graph, check_types, fast)
            self._set_plan(plan_memory(graph))
        self._input_names = [v.name for v in graph.inputs]
        self._checked: set[tuple] = set()  # input signatures that passed check_feeds
        self._plans: dict[tuple, MemoryPlan] = {}

    def _set_plan(self, plan: MemoryPlan) -> None:
        self.plan = plan
        self.stats = {"backend": "cpu", "nodes": len(self.graph), "planned_peak_bytes": plan.peak_bytes,
                      "unplanned_buffers": len(plan.unplanned), "memory_plan": plan.summary(),
                      "prepared_steps": sum(1 for st in self.interp.steps if st.prepared),
                      "inplace_steps": self.interp.inplace,
                      "concat_in_place": self.interp.concat_in_place,
                      "native_steps": sum(1 for st in self.interp.steps if getattr(st.call, "native", False))}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        sig = _signature(self._input_names, feeds)
        if sig is None or sig not in self._checked:
            feeds = check_feeds(self.graph, feeds)
            sig = _signature(self._input_names, feeds)
            if sig is not None:
                self._checked.add(sig)
        inputs = [feeds[n] for n in self._input_names]
        if self.plan.unplanned and sig is not None and sig not in self._plans:
            shapes: dict[Value, tuple] = {}
            outs = self.interp.run(inputs, record=shapes)
            self._plans[sig] = plan_memory(self.graph, shapes)
            self._set_plan(self._plans[sig])
            return outs
        if sig is not None and sig in self._plans and self._plans[sig] is not self.plan:
            self._set_plan(self._plans[sig])
        # a run makes no cyclic garbage (its arrays die by reference counting), yet each of its
        # allocations counts toward the collector's threshold: collections during runs were 4% of
        # MobileNetV3's time (perf), so the collector waits until the run is over
        if not gc.isenabled():
            return self.interp.run(inputs)
        gc.disable()
        try:
            return self.interp.run(inputs)
        finally:
            gc.enable()

    def plan_for(self, feeds: Mapping[str, np.ndarray]) -> MemoryPlan:
        """The memory plan for the shapes of ``feeds`` (runs the graph once if not planned yet)."""
        sig = _signature(self._input_names, feeds)
        if self.plan.unplanned and sig not in self._plans:
            self.run(feeds)
        return self._plans.get(sig, self.plan)


def _signature(names: list[str], feeds: Mapping) -> tuple | None:
    """``(name, dtype, shape)`` of each input, when the feeds are exactly the inputs as arrays."""
    if len(feeds) != len(names):
        return None
    sig = []
    for n in names:
        a = feeds.get(n)
        if type(a) is not np.ndarray:
            return None
        sig.append((n, a.dtype, a.shape))
    return tuple(sig)


class CpuBackend(Backend):
    """NumPy reference backend.

    At -O2 and above it asks for the fusion passes whose fused ops it runs faster than the
    ops they replace (``LOWERING``), where they are installed.
    """

    name = "cpu"
    LOWERING = ("fuse_attention", "fuse_rmsnorm", "fuse_rotary", "fuse_conv_epilogue", "lower_batchnorm",
                "lower_channel_layernorm", "fuse_elementwise")

    def is_available(self):
        return True, ""

    def lowering_pipeline(self, ctx) -> list[str]:
        from graphopt.passmanager import all_passes

        if ctx is None or getattr(ctx, "level", 0) < 2:
            return []
        registered = {p.name for p in all_passes()}
        return [p for p in self.LOWERING if p in registered]

    def supports(self, node: Node) -> bool:
        s = get_schema(node.op_type, node.domain)
        return s is not None and s.kernel is not None

    def compile(self, graph: Graph, ctx=None) -> CpuExecutable:
        self.check_supported(graph)
        return CpuExecutable(graph, check_types=bool(ctx is not None and getattr(ctx, "verify", False)))


def run_reference(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``graph`` on the NumPy reference (the oracle of every test)."""
    return CpuExecutable(graph).run(feeds)
