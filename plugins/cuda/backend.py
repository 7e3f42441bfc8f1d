"""The ``cuda`` and ``cuda-emu`` backends: launch plan and run.

Both compile a graph the same way (``lower.py``: partition into kernels,
specs, rendered CUDA C, one memory arena planned from value lifetimes) and
differ only in where the kernels run:

* ``cuda-emu`` compiles the translation unit with the host C++ compiler
  against the emulation header and runs it block by block, the arena being a
  NumPy byte buffer. Needs only g++ with OpenMP.
* ``cuda`` compiles it with NVRTC and runs it through CuPy on one stream; from
  the second run on, the whole launch sequence is replayed as a CUDA graph.

>>> exe = CudaEmuBackend().compile(graph)        # doctest: +SKIP
>>> y, = exe.run({"x": x})                       # doctest: +SKIP
"""
from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np

from graphopt import dtypes
from graphopt.backend import Backend, Executable, check_feeds
from graphopt.errors import GraphoptError
from graphopt.ir import Graph, Node, Value

from .compile_emu import emu_available, register_kernels
from .hostmem import aligned_copy, aligned_empty
from .lower import LOWERINGS, LoweredGraph, lower_graph, supports_node

# lowering passes this backend can take, and the fused ops each one writes (all must have a lowering)
# (in pipeline order: int8 lowering, then attention, so that elementwise fusion does not take its scale/mask Mul/Add)
PASS_OPS = {
    "lower_qdq_int8": ("QConv", "QGemm", "QMatMul", "QAdd"),  # first: fusion would take the float ops between Q/DQ
    "fuse_attention": ("Attention",),
    "fuse_conv_epilogue": ("FusedConv", "FusedGemm", "FusedMatMul"),
    "fuse_elementwise": ("FusedElementwise",),
}


def _stats(name: str, lowered: LoweredGraph, seconds: float) -> dict:
    plan = lowered.plan
    kernels = lowered.kernels
    return {
        "backend": name,
        "nodes": len(lowered.graph),
        "kernels": len(kernels),
        "launches": len(lowered.launches),
        "folded_at_compile_time": len(lowered.folded),
        "views": len(lowered.alias),
        "planned_peak_bytes": plan.peak_bytes if plan else 0,
        "memory_plan": plan.summary() if plan else "",
        "compile_seconds": round(seconds, 3),
        "schedules": {k.name: _schedule(k.spec) for k in kernels},
    }


def _schedule(spec) -> str:
    parts = []
    for attr in ("tile", "threads", "vec", "tx", "rpb", "index_t"):
        v = getattr(spec, attr, None)
        if v is not None:
            parts.append(f"{attr}={v}")
    return f"{type(spec).__name__}({', '.join(parts)})"


class _PlanRunner:
    """Where each value's bytes live at run time (the shared part of both executables)."""

    def __init__(self, graph: Graph, lowered: LoweredGraph):
        self.graph = graph
        self.lowered = lowered
        used = {a for l in lowered.launches for a in l.args}
        self.input_values = list(graph.inputs)
        self.const_values = [v for v in lowered.consts if v in used]
        produced = {a for l in lowered.launches for a in l.args} - set(lowered.consts) - set(graph.inputs)
        self.output_roots = list(dict.fromkeys(lowered.root(v) for v in graph.outputs
                                               if lowered.root(v) in produced))

    def results(self, outs: dict, ins: dict, consts: dict, fetch) -> list[np.ndarray]:
        res, seen = [], set()
        for v in self.graph.outputs:
            r = self.lowered.root(v)
            if r in outs:
                a = fetch(outs[r])
                res.append(np.array(a) if r in seen else a)
                seen.add(r)
            elif r in self.lowered.consts:
                res.append(np.array(self.lowered.consts[r]))
            elif r in ins:
                res.append(np.array(ins[r]))
            else:
                raise GraphoptError(f"graph output {v.name!r} is produced by no kernel")
        return [a.reshape(tuple(v.type.shape)) if v.type and v.type.is_static else a
                for a, v in zip(res, self.graph.outputs)]


class CudaEmuExecutable(Executable):
    """A compiled graph run under host emulation."""

    def __init__(self, graph: Graph, lowered: LoweredGraph, seconds: float):
        self.graph = graph
        self.lowered = lowered
        self.runner = _PlanRunner(graph, lowered)
        self.batch = register_kernels(lowered.kernels)
        self.arena = aligned_empty((max(lowered.plan.peak_bytes, 1),), np.uint8)
        self.consts = {v: aligned_copy(np.asarray(lowered.consts[v], order="C")) for v in self.runner.const_values}
        self.stats = _stats("cuda-emu", lowered, seconds)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)
        with self._lock:  # one arena per executable
            ins = {v: aligned_copy(np.asarray(feeds[v.name], order="C")) for v in self.runner.input_values}
            outs = {v: aligned_empty(tuple(v.type.shape), dtypes.to_numpy(v.dtype)) for v in self.runner.output_roots}
            base = self.arena.ctypes.data

            def addr(v: Value) -> int:
                for table in (outs, ins, self.consts):
                    a = table.get(v)
                    if a is not None:
                        return a.ctypes.data
                return base + self.lowered.arena_offset(v)

            for l in self.lowered.launches:
                self.batch.launch(l.kernel.name, l.grid, l.block, [addr(a) for a in l.args])
            return self.runner.results(outs, ins, self.lowered.consts, lambda a: a)


class CudaExecutable(Executable):
    """A compiled graph on a GPU through CuPy: one stream, CUDA-graph replay after the first run."""

    def __init__(self, graph: Graph, lowered: LoweredGraph, seconds: float, use_cuda_graph: bool = True):
        import cupy as cp

        from .compile_nvrtc import load_module
        from .kernel import translation_unit

        self.graph = graph
        self.lowered = lowered
        self.runner = _PlanRunner(graph, lowered)
        kernels = lowered.kernels
        t0 = time.perf_counter()
        self.module = load_module(translation_unit(kernels)) if kernels else None
        self.fns = {k.name: self.module.get_function(k.name) for k in kernels}
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.arena = cp.empty(max(lowered.plan.peak_bytes, 1), cp.uint8)
        self.consts = {v: cp.asarray(np.asarray(lowered.consts[v], order="C")) for v in self.runner.const_values}
        self.inputs = {v: cp.empty(tuple(v.type.shape), dtypes.to_numpy(v.dtype)) for v in self.runner.input_values}
        self.outputs = {v: cp.empty(tuple(v.type.shape), dtypes.to_numpy(v.dtype)) for v in self.runner.output_roots}

        def buf(v: Value):
            for table in (self.outputs, self.inputs, self.consts):
                if v in table:
                    return table[v]
            return self.arena[lowered.arena_offset(v):]  # CuPy passes the view's data pointer

        self.launch_args = [(self.fns[l.kernel.name], l.grid, l.block, tuple(buf(a) for a in l.args))
                            for l in lowered.launches]
        self.use_cuda_graph = use_cuda_graph
        self.cuda_graph = None
        self.runs = 0
        self.stats = _stats("cuda", lowered, seconds + time.perf_counter() - t0)

    def _launch_all(self) -> None:
        for fn, grid, block, args in self.launch_args:
            fn(grid, block, args)

    def run_device(self, feeds: Mapping[str, object]) -> list:
        """Run on device arrays (CuPy, or anything ``cupy.asarray`` takes without a copy); device outputs."""
        import cupy as cp

        with self.stream:
            for v, dst in self.inputs.items():
                dst[...] = cp.asarray(feeds[v.name])
            if self.cuda_graph is not None:
                self.cuda_graph.launch(stream=self.stream)
            elif self.use_cuda_graph and self.runs >= 1:  # modules are loaded: capture once, replay from now on
                self.stream.begin_capture()
                self._launch_all()
                self.cuda_graph = self.stream.end_capture()
                self.cuda_graph.launch(stream=self.stream)
            else:
                self._launch_all()
            self.runs += 1
            return [self.outputs.get(self.lowered.root(v)) for v in self.graph.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)
        self.run_device({k: np.asarray(a, order="C") for k, a in feeds.items()})
        with self.stream:
            res = self.runner.results(self.outputs, feeds_by_value(self.graph, feeds), self.lowered.consts,
                                      lambda a: a.get(stream=self.stream))
        self.stream.synchronize()
        return res


class SpecializingExecutable(Executable):
    """A graph with symbolic input dims: compiled per distinct set of input shapes, at first use."""

    def __init__(self, graph: Graph, compile_static, backend_name: str):
        self.graph = graph
        self._compile_static = compile_static
        self._compiled: dict[tuple, Executable] = {}
        self._lock = threading.Lock()
        self.stats = {"backend": backend_name, "specializations": 0, "note": "compiled at the first run per shape"}

    def for_shapes(self, shapes: Mapping[str, tuple]) -> Executable:
        key = tuple(tuple(int(d) for d in shapes[v.name]) for v in self.graph.inputs)
        with self._lock:
            exe = self._compiled.get(key)
            if exe is None:
                exe = self._compiled[key] = self._compile_static(specialize(self.graph, dict(zip(
                    (v.name for v in self.graph.inputs), key))))
                self.stats = {**exe.stats, "specializations": len(self._compiled)}
        return exe

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)  # binds symbolic dims consistently across inputs
        return self.for_shapes({k: np.shape(a) for k, a in feeds.items()}).run(feeds)

    def run_device(self, feeds: Mapping[str, object]) -> list:
        return self.for_shapes({k: tuple(a.shape) for k, a in feeds.items()}).run_device(feeds)


def specialize(graph: Graph, shapes: Mapping[str, tuple]) -> Graph:
    """A copy of ``graph`` with static input shapes, the rest re-inferred from them."""
    from graphopt.ir import TensorType
    from graphopt.ops.registry import infer_graph

    g = graph.clone()
    for v in g.inputs:
        v.type = TensorType(v.dtype, tuple(shapes[v.name]))
    infer_graph(g)
    return g


def feeds_by_value(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[Value, np.ndarray]:
    return {v: feeds[v.name] for v in graph.inputs}


class _CudaBackendBase(Backend):
    def lowering_pipeline(self, ctx) -> list[str]:
        """The registered lowering passes whose fused ops this backend has kernels for."""
        from graphopt.passmanager import all_passes

        from . import lowerings  # noqa: F401

        registered = {p.name for p in all_passes()}
        return [p for p, ops in PASS_OPS.items()
                if p in registered and all(("ai.graphopt", op) in LOWERINGS for op in ops)]

    def supports(self, node: Node) -> bool:
        return supports_node(node)

    def compile(self, graph: Graph, ctx=None) -> Executable:
        """Static input shapes compile now; symbolic ones (a dynamic batch) compile at the
        first run for the shapes given, once per distinct set of input shapes."""
        self._check_available()
        if all(v.type is not None and v.type.is_static for v in graph.inputs):
            return self._compile_static(graph, ctx)
        self.check_supported(graph)  # unsupported ops fail now, not at the first run
        return SpecializingExecutable(graph, lambda g: self._compile_static(g, ctx), self.name)

    def _check_available(self) -> None:
        ok, why = self.is_available()
        if not ok:
            raise GraphoptError(f"backend {self.name!r} is not available: {why}")

    def _compile_static(self, graph: Graph, ctx) -> Executable:  # pragma: no cover - per backend
        raise NotImplementedError

    def _lower(self, graph: Graph) -> tuple[LoweredGraph, float]:
        t0 = time.perf_counter()
        lowered = lower_graph(graph, self.name)
        return lowered, time.perf_counter() - t0


class CudaEmuBackend(_CudaBackendBase):
    """Generated CUDA kernels run on the host under emulation (no GPU needed)."""

    name = "cuda-emu"

    def is_available(self) -> tuple[bool, str]:
        ok, why = emu_available()
        return (True, "") if ok else (False, why)

    def _compile_static(self, graph: Graph, ctx=None) -> CudaEmuExecutable:
        lowered, seconds = self._lower(graph)
        exe = CudaEmuExecutable(lowered.graph, lowered, seconds)
        if (getattr(ctx, "options", None) or {}).get("nvcc_check"):  # static sm_90 check of the same kernels
            from dataclasses import asdict

            from .compile_nvcc import nvcc_check

            exe.stats["ptxas"] = {k: asdict(v) for k, v in nvcc_check(lowered.kernels).items()}
        return exe


class CudaBackend(_CudaBackendBase):
    """Generated CUDA kernels on an NVIDIA GPU through CuPy (NVRTC, CUDA graphs)."""

    name = "cuda"

    def is_available(self) -> tuple[bool, str]:
        from .compile_nvrtc import cupy_available

        return cupy_available()

    def _compile_static(self, graph: Graph, ctx=None) -> CudaExecutable:
        lowered, seconds = self._lower(graph)
        opts = getattr(ctx, "options", None) or {}
        return CudaExecutable(lowered.graph, lowered, seconds, use_cuda_graph=opts.get("cuda_graph", True))
