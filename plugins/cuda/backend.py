"""The ``cuda`` and ``cuda-emu`` backends: launch plan and run.

Both compile a graph the same way (``lower.py``: partition into kernels,
specs, rendered CUDA C, one memory arena planned from value lifetimes) and
differ only in where the kernels run:

* ``cuda-emu`` compiles the translation unit with the host C++ compiler
  against the emulation header and runs it block by block, the arena being a
  NumPy byte buffer. Needs only g++ with OpenMP.
* ``cuda`` compiles it with NVRTC and runs it through CuPy on one stream; from
  the second run on, the whole launch sequence is replayed as a CUDA graph.

A kernel's derived parameters (``kernel.DerivedArg``: TMA tensor maps) are made from
its buffers' addresses by a ``DerivedArgs`` table: once per plan on a GPU, where
every buffer is fixed; under emulation once for constants and arena slots and at
every run for inputs and outputs.

>>> exe = CudaEmuBackend().compile(graph)        # doctest: +SKIP
>>> y, = exe.run({"x": x})                       # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Mapping

import numpy as np

from graphopt import dtypes
from graphopt.backend import Backend, Executable, check_feeds
from graphopt.errors import GraphoptError, InputError
from graphopt.ir import Graph, Node, Value
from graphopt.memory import value_nbytes

from . import device
from . import emucheck
from .compile_emu import emu_available, register_kernels
from .hostmem import aligned_copy, aligned_empty, buffer_copy, buffer_empty
from .lower import LOWERINGS, LoweredGraph, lower_graph, supports_node
from .roofline import roofline_stats

# lowering passes this backend can take, and the fused ops each one writes (all must have a lowering)
# (in pipeline order: int8 lowering, then attention, so that elementwise fusion does not take its scale/mask Mul/Add)
PASS_OPS = {
    "lower_qdq_int8": ("QConv", "QGemm", "QMatMul", "QAdd"),  # first: fusion would take the float ops between Q/DQ
    "fuse_attention": ("Attention",),
    "fuse_conv_epilogue": ("FusedConv", "FusedGemm", "FusedMatMul"),
    "convert_layout_nhwc": ("FusedConv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"),  # -O3 only
    "fuse_elementwise": ("FusedElementwise",),
    "fuse_row_reduce": ("FusedRowReduce",),
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
        **roofline_stats(lowered),  # the predicted floor on an H100 (roofline.py)
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

    def results(self, outs: dict, ins: dict, fetch, copy=np.array, const=np.array) -> list:
        """The graph's outputs from the kernel-written buffers ``outs`` (through ``fetch``), the
        inputs ``ins`` and the constants; ``copy`` makes an owned array (an output repeated, an input
        passed through), ``const`` an array of a compile-time constant (host or device)."""
        res, seen = [], set()
        for v in self.graph.outputs:
            r = self.lowered.root(v)
            if r in outs:
                a = fetch(outs[r])
                res.append(copy(a) if r in seen else a)
                seen.add(r)
            elif r in self.lowered.consts:
                res.append(const(self.lowered.consts[r]))
            elif r in ins:
                res.append(copy(ins[r]))
            elif v.type is not None and v.type.is_static and v.type.numel() == 0:
                # an empty result of a node with other, non-empty results (Split): its kernel writes nothing there
                res.append(const(np.empty(tuple(v.type.shape), dtypes.to_numpy(v.dtype))))
            else:
                raise GraphoptError(f"graph output {v.name!r} is produced by no kernel")
        return [a.reshape(tuple(v.type.shape)) if v.type and v.type.is_static else a
                for a, v in zip(res, self.graph.outputs)]


class CudaEmuExecutable(Executable):
    """A compiled graph run under host emulation: the whole launch list in one C call.

    Under ``GRAPHOPT_EMU_CHECK`` (``emucheck.py``) every value gets its own buffer instead of
    an arena slot, launches run one by one, and under ``race`` the graph runs once per seed,
    every launch's results compared bit for bit across seeds."""

    def __init__(self, graph: Graph, lowered: LoweredGraph, seconds: float):
        self.graph = graph
        self.lowered = lowered
        self.runner = _PlanRunner(graph, lowered)
        self.batch = register_kernels(lowered.kernels)
        self.checks = emucheck.modes()
        if self.checks:  # a kernel straying past its tensor meets a red zone, not its neighbour
            self.arena = None
            self.buffers = {v: buffer_empty((value_nbytes(v),), np.uint8) for v in lowered.offsets}
        else:
            self.arena = aligned_empty((max(lowered.plan.peak_bytes, 1),), np.uint8)
            self.buffers = {}
        self.consts = {v: buffer_copy(np.asarray(lowered.consts[v], order="C")) for v in self.runner.const_values}
        self.stats = _stats("cuda-emu", lowered, seconds)
        self._list = None
        self._derived = DerivedArgs(lambda d, addr: aligned_copy(d.host_value(addr)))  # over fixed buffers
        self._lock = threading.Lock()

    def _fixed_addr(self, v: Value) -> int | None:
        """Where ``v`` lives for every run (arena slot, own buffer, constant); None for inputs
        and outputs, which are new arrays each run."""
        if v in self.runner.input_values or v in self.runner.output_roots:
            return None
        if v in self.consts:
            return self.consts[v].ctypes.data
        if self.arena is None:
            b = self.buffers.get(v)
            return b.ctypes.data if b is not None else 0  # an empty tensor: never dereferenced
        return self.arena.ctypes.data + self.lowered.arena_offset(v)

    def _launch_list(self):
        """The arguments of ``go_emu_run_list`` (kernel addresses, dims, argument arrays) and,
        per input/output value, the argument slots that take its address at each run: ``(array,
        i, None)`` for the buffer itself, ``(array, i, derived)`` for a parameter made from its
        address (a tensor map over an input or output is encoded again each run)."""
        if self._list is None:
            ls = self.lowered.launches
            libs = [self.batch.library(l.kernel.name) for l in ls]
            fns = (ctypes.c_void_p * max(len(ls), 1))(*(lib.address(l.kernel.name) for lib, l in zip(libs, ls)))
            dims = (ctypes.c_uint * max(6 * len(ls), 1))(*(d for l in ls for d in (*l.grid, *l.block)))
            argv, slots = [], {}
            for l in ls:
                fixed = [self._fixed_addr(v) for v in l.args]
                derived = l.kernel.derived_values(fixed, lambda d, addr: None if addr is None else
                                                  self._derived.address(d, addr))
                a = (ctypes.c_void_p * max(len(l.args) + len(derived), 1))(*(p or 0 for p in (*fixed, *derived)))
                for i, v in enumerate(l.args):
                    if fixed[i] is None:
                        slots.setdefault(v, []).append((a, i, None))
                for j, d in enumerate(l.kernel.derived):
                    if fixed[d.source] is None:
                        slots.setdefault(l.args[d.source], []).append((a, len(l.args) + j, d))
                argv.append(a)
            argp = (ctypes.c_void_p * max(len(ls), 1))(*(ctypes.addressof(a) for a in argv))
            self._list = (libs, fns, dims, argv, argp, slots)
        return self._list

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)
        with self._lock:  # one arena per executable
            ins = {v: buffer_copy(np.asarray(feeds[v.name], order="C")) for v in self.runner.input_values}
            if self.checks:
                outs = self._run_checked(ins)
            else:
                outs = self._new_outputs()
                self._run_list(ins, outs)
            return self.runner.results(outs, ins, lambda a: a)

    def _new_outputs(self) -> dict:
        return {v: buffer_empty(tuple(v.type.shape), dtypes.to_numpy(v.dtype)) for v in self.runner.output_roots}

    def _run_list(self, ins: dict, outs: dict) -> None:
        if not self.lowered.launches:
            return
        libs, fns, dims, _, argp, slots = self._launch_list()
        per_run = DerivedArgs(lambda d, addr: aligned_copy(d.host_value(addr)))  # alive through the call
        for table in (ins, outs):
            for v, a in table.items():
                for arr, i, d in slots.get(v, ()):
                    arr[i] = a.ctypes.data if d is None else per_run.address(d, a.ctypes.data)
        rc = ctypes.c_int(0)
        failed = libs[0].run_list_fn(len(libs), fns, dims, argp, ctypes.byref(rc))
        if failed >= 0:
            l = self.lowered.launches[failed]
            raise libs[failed].error(l.kernel.name, rc.value, l.grid, l.block)

    def _checkpoints(self) -> dict[int, list[Value]]:
        """Launch index -> the values complete after it: a node's results once its last launch
        ran (a Concat's slots are several launches into one buffer)."""
        last, written = {}, {}
        for i, l in enumerate(self.lowered.launches):
            last[l.node] = i
            written.setdefault(l.node, set()).update(l.args)
        return {i: [r for r in dict.fromkeys(self.lowered.root(o) for o in node.outputs) if r in written[node]]
                for node, i in last.items()}

    def _run_checked(self, ins: dict) -> dict:
        """Launch by launch; under ``race`` once per seed, each node's results hashed once its
        last launch ran and compared with the first seed's. Returns the first seed's outputs."""
        first, digests, checkpoints = None, {}, self._checkpoints()
        for seed in emucheck.race_seeds():
            outs = self._new_outputs()
            for b in (*self.buffers.values(), *outs.values()):
                b.reshape(-1).view(np.uint8)[...] = emucheck.fill_byte(seed)  # garbage: a read of unwritten memory shows

            def addr(v: Value) -> int:
                a = outs.get(v)
                if a is None:
                    a = ins.get(v)
                return a.ctypes.data if a is not None else self._fixed_addr(v)

            per_run = DerivedArgs(lambda d, a: aligned_copy(d.host_value(a)))  # over this seed's inputs/outputs
            for i, l in enumerate(self.lowered.launches):
                lib = self.batch.library(l.kernel.name)
                lib.set_seed(seed)
                bufs = [addr(a) for a in l.args]
                derived = l.kernel.derived_values(bufs, lambda d, a, l=l: (
                    per_run if self._fixed_addr(l.args[d.source]) is None else self._derived).address(d, a))
                try:
                    lib.launch(l.kernel.name, l.grid, l.block, [*bufs, *derived])
                except GraphoptError as exc:
                    raise GraphoptError(f"node {l.node.name!r}: {exc}") from None
                if "race" not in self.checks or i not in checkpoints:
                    continue
                h = emucheck.digest(outs.get(v, self.buffers.get(v)) for v in checkpoints[i])
                if first is None:
                    digests[i] = h
                elif h != digests[i]:
                    raise GraphoptError(
                        f"node {l.node.name!r}: emulated kernel {l.kernel.name} (grid {l.grid}, block {l.block}) "
                        f"failed the race check: the node's results under thread order {seed} "
                        f"({emucheck.SEED_NAMES[seed]}) differ from those in order 0 (in order): a race on "
                        f"shared memory, a missing barrier, a read of memory nothing wrote, or blocks writing "
                        f"one element")
            if first is None:
                first = outs
        return first


class CudaExecutable(Executable):
    """A compiled graph on a GPU through CuPy: one stream, CUDA-graph replay after the first run.

    ``run`` takes and returns NumPy arrays; ``run_device`` takes device arrays (CuPy, or any
    array in this device's memory that exports DLPack: a torch CUDA tensor), and NumPy arrays,
    and returns CuPy arrays. Both copy the feeds into fixed input buffers (a captured CUDA graph
    reads fixed addresses). Outputs are fresh arrays unless ``reuse_outputs``: then they are the
    executable's own output buffers, overwritten by the next run.

    All device work -- constant uploads, zeroing, GEMM timing, feeds, kernels, library calls,
    graph replays, result copies -- is queued on the executable's own stream, through the
    ``device`` seam, so it is ordered without depending on the caller's current stream."""

    def __init__(self, graph: Graph, lowered: LoweredGraph, seconds: float, use_cuda_graph: bool = True,
                 reuse_outputs: bool = False, gemm: str = "auto", tune: str = "auto"):
        self.graph = graph
        self.lowered = lowered
        self.runner = _PlanRunner(graph, lowered)
        t0 = time.perf_counter()
        self.fns = self.load_functions(lowered.kernels)
        self.device_id = device.device_id()
        self.stream = device.new_stream()
        self.arena = device.empty((max(lowered.plan.peak_bytes, 1),), np.uint8)
        self.consts = {v: device.upload(np.asarray(lowered.consts[v]), self.stream) for v in self.runner.const_values}
        self.inputs = {v: device.empty(v.type.shape, dtypes.to_numpy(v.dtype)) for v in self.runner.input_values}
        self.outputs = {v: device.empty(v.type.shape, dtypes.to_numpy(v.dtype)) for v in self.runner.output_roots}
        # tensor maps (kernel.DerivedArg) over the fixed buffers: encoded once, alive as long as the plan
        self.derived = DerivedArgs(lambda d, addr: d.device_value(addr, self.stream))
        self.steps = [self.launch_step(self.fns[l.kernel.name], l.grid, l.block, self.kernel_args(l.kernel, l.args))
                      for l in lowered.launches]
        self.use_cuda_graph = use_cuda_graph
        self.reuse_outputs = reuse_outputs
        self.segments = None  # after capture: CUDA graphs and the library calls between them, in order
        self.runs = 0
        self.stats = _stats("cuda", lowered, 0.0)
        self.stats["cuda_graph"] = "from the second run" if use_cuda_graph else "off"
        from .autotune import tune_launches
        from .cublas import choose_gemms

        self.stats["tuning"] = tune_launches(self, tune)  # may swap launches for faster schedules (autotune.py)
        self.stats["gemm"] = choose_gemms(self, gemm)  # may swap GEMM launches in self.steps for cuBLAS calls
        device.synchronize(self.stream)  # uploads done: the host copies of the constants may go
        self.stats["compile_seconds"] = round(seconds + time.perf_counter() - t0, 3)

    @staticmethod
    def load_functions(kernels) -> dict:
        """NVRTC-compile (or fetch from the cache) ``kernels``, side by side; their functions by name."""
        from .compile_nvrtc import load_kernels

        return load_kernels(kernels)

    def launch_step(self, fn, grid, block, buffers) -> "LaunchStep":
        return LaunchStep(fn, tuple(grid), tuple(block), tuple(buffers), self.stream)

    def kernel_args(self, kernel, values) -> tuple:
        """The device arguments of a launch of ``kernel`` over ``values`` (its buffer parameters):
        their buffers, then the parameters derived from their addresses (TMA tensor maps), made
        once per address; every buffer has a fixed address, so a captured CUDA graph replays them.

        >>> exe.kernel_args(launch.kernel, launch.args)        # doctest: +SKIP
        (<y>, <a>, <b>, <tma_a map>, <tma_b map>)
        """
        bufs = [self.buffer(v) for v in values]
        return (*bufs, *kernel.derived_values([int(b.data.ptr) for b in bufs], self.derived.value))

    def scratch(self, numel: int, dtype: str):
        """A device buffer owned by the executable, outside the planned arena (cuBLAS accumulators)."""
        return device.empty((numel,), dtypes.to_numpy(dtype))

    def buffer(self, v: Value):
        """The device array holding ``v``: a fixed input/output buffer, a constant, or an arena view."""
        for table in (self.outputs, self.inputs, self.consts):
            if v in table:
                return table[v]
        return self.arena[self.lowered.arena_offset(v):]  # CuPy passes the view's data pointer

    @property
    def cuda_graph(self):
        """The captured graphs (None before capture, or when capture is off or failed)."""
        graphs = [s for s in self.segments or () if not callable(s)]
        return graphs or None

    def _launch_all(self) -> None:
        for step in self.steps:
            step()

    def _capture(self) -> None:
        """Record the launch sequence as CUDA graphs -- one per run of steps between library calls,
        which CuPy will not capture (it refuses any cuBLAS call while the stream captures) -- and
        replay them. If the driver refuses, run without graphs from now on and say why in ``stats``."""
        segments, run = [], []
        for step in (s for step in self.steps for s in getattr(step, "steps", (step,))):  # a Candidate's own steps
            if getattr(step, "capturable", True):
                run.append(step)
                continue
            if run:
                segments.append(run)
            segments.append(step)
            run = []
        if run:
            segments.append(run)
        try:
            done = [device.capture(self.stream, lambda r=s: [f() for f in r]) if isinstance(s, list) else s
                    for s in segments]
        except Exception as exc:
            self.use_cuda_graph = False
            self.stats["cuda_graph"] = f"off: capture failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            self._launch_all()
            return
        self.segments = done
        graphs = sum(1 for s in done if not callable(s))
        calls = len(done) - graphs
        self.stats["cuda_graph"] = (f"captured: {graphs} graph{'s' * (graphs != 1)}"
                                    + (f", {calls} library call{'s' * (calls != 1)} between them" if calls else ""))
        self._replay()

    def _replay(self) -> None:
        for s in self.segments:
            s() if callable(s) else device.replay(s, self.stream)

    def _execute(self, feeds: Mapping[Value, object]) -> None:
        """Copy the feeds (host or device arrays) into the fixed input buffers and run, on ``self.stream``."""
        for v, dst in self.inputs.items():
            device.copy_into(dst, feeds[v], self.stream)
        if self.segments is not None:
            self._replay()
        elif self.use_cuda_graph and self.runs >= 1:  # modules are loaded: capture once, replay from now on
            self._capture()
        else:
            self._launch_all()
        self.runs += 1

    def _to_device(self, name: str, a):
        """``a`` as a CuPy array on this device: itself, a DLPack import (no copy), or a host upload."""
        if device.is_device_array(a):
            return a
        dev = dlpack_device(a)
        if dev is None or dev[0] in HOST_DLPACK_DEVICES:
            host = a if dev is None or isinstance(a, np.ndarray) else np.from_dlpack(a)
            return device.upload(np.asarray(host), self.stream)
        if dev[1] != self.device_id:
            raise InputError(f"input {name!r} is on device {dev[1]}, the model was compiled for device "
                             f"{self.device_id}")
        try:
            return device.import_dlpack(a, self.stream)  # the producer orders its work before our reads
        except Exception as exc:
            raise InputError(f"input {name!r}: a {type(a).__module__}.{type(a).__name__} cannot be taken through "
                             f"DLPack ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None

    def run_device(self, feeds: Mapping[str, object], *, to_host: bool = False,
                   reuse_outputs: bool | None = None) -> list:
        """Run on device arrays without host round trips; CuPy outputs (NumPy with ``to_host``).

        Work is ordered after what the caller's current stream has queued and before what it
        queues next, so arrays made and used on the caller's stream need no synchronization.

        >>> y, = exe.run_device({"x": cupy.asarray(x)})          # doctest: +SKIP
        >>> y, = exe.run_device({"x": torch_cuda_tensor})        # doctest: +SKIP
        """
        check_feeds(self.graph, {k: array_meta(k, a) for k, a in feeds.items()})
        reuse = self.reuse_outputs if reuse_outputs is None else reuse_outputs
        s = self.stream
        caller = device.current_stream()
        device.wait(s, caller)
        dev = {v: self._to_device(v.name, feeds[v.name]) for v in self.graph.inputs}
        self._execute(dev)
        if to_host:
            res = self.runner.results(self.outputs, dev, lambda a: device.download(a, s),
                                      copy=lambda a: device.download(a, s),
                                      const=lambda c: np.array(c))
        else:
            copy = lambda a: device.device_copy(a, s)  # noqa: E731
            res = self.runner.results(self.outputs, dev, (lambda a: a) if reuse else copy, copy=copy,
                                      const=lambda c: device.upload(np.asarray(c), s))
        device.wait(caller, s)
        return res

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)
        self._execute({v: np.asarray(feeds[v.name]) for v in self.graph.inputs})
        res = self.runner.results(self.outputs, feeds_by_value(self.graph, feeds),
                                  lambda a: device.download(a, self.stream))
        device.synchronize(self.stream)
        return res


class DerivedArgs:
    """The values of derived kernel parameters (``kernel.DerivedArg``: tensor maps), one per
    (parameter, address), made by ``make(arg, address)`` and kept alive as long as this table.

    >>> table = DerivedArgs(lambda d, addr: d.host_value(addr))      # doctest: +SKIP
    >>> table.address(tensor_map_arg, a.ctypes.data)                 # doctest: +SKIP
    """

    def __init__(self, make):
        self.make = make
        self.values: dict = {}

    def value(self, arg, address: int):
        key = (arg, address)
        if key not in self.values:
            self.values[key] = self.make(arg, address)
        return self.values[key]

    def address(self, arg, address: int) -> int:
        """Where the value lives (a host array's data pointer: the emulation passes it by pointer)."""
        return self.value(arg, address).ctypes.data


class LaunchStep:
    """One kernel launch of the plan, queued on the executable's stream when called."""

    capturable = True

    def __init__(self, fn, grid: tuple, block: tuple, args: tuple, stream):
        self.fn, self.grid, self.block, self.args, self.stream = fn, grid, block, args, stream

    def __call__(self) -> None:
        device.launch(self.fn, self.grid, self.block, self.args, self.stream)


# DLPack device types whose memory the host can read (kDLCPU, kDLCUDAHost)
HOST_DLPACK_DEVICES = (1, 3)


def dlpack_device(a) -> tuple[int, int] | None:
    """``a.__dlpack_device__()`` (DLPack device type and id), or None for an array without DLPack."""
    f = getattr(a, "__dlpack_device__", None)
    if f is None:
        return None
    try:
        kind, dev = f()
    except Exception:
        return None
    return int(kind), int(dev)


def array_meta(name: str, a) -> np.ndarray:
    """A zero-stride NumPy stand-in with ``a``'s dtype and shape, for ``check_feeds`` on arrays
    NumPy cannot read (device memory); a torch dtype maps to NumPy's by name."""
    if isinstance(a, np.ndarray) or not hasattr(a, "shape") or not hasattr(a, "dtype"):
        return a
    name = str(a.dtype).removeprefix("torch.")
    try:  # graphopt's names first: "bfloat16" is a NumPy dtype only through ml_dtypes
        dt = np.dtype(dtypes.to_numpy(name)) if name in dtypes.ONNX_CODES else np.dtype(name)
    except (TypeError, KeyError, ImportError):
        raise InputError(f"input {name!r} has dtype {a.dtype}, which no graphopt model takes") from None
    return np.broadcast_to(np.zeros((), dt), tuple(int(d) for d in a.shape))


class SpecializingExecutable(Executable):
    """A graph whose runs differ (symbolic input dims, shape inputs): compiled per signature at
    its first run (``specialize.py``: shapes bound, shape inputs as constants, what became static
    folded), the executables kept in a bounded LRU cache."""

    def __init__(self, graph: Graph, specializer, compile_one, backend_name: str, cache_size: int | None = None):
        from .specialize import DEFAULT_CACHE, SignatureCache

        self.graph = graph
        self.specializer = specializer
        self._compile_one = compile_one
        self._cache = SignatureCache(cache_size or DEFAULT_CACHE)
        self._lock = threading.Lock()
        self.stats = {"backend": backend_name, "specializations": 0, "signatures": [],
                      "note": "compiled at the first run per input signature"}

    def for_feeds(self, feeds: Mapping[str, object]) -> Executable:
        key = self.specializer.signature(feeds)
        with self._lock:
            exe = self._cache.get(key, lambda: self._compile_one(self.specializer.graph_for(key)))
            sp = self.specializer
            self.stats = {**exe.stats, "specializations": self._cache.compiled,
                          "signatures": [sp.describe(k, self.graph, sp.values) for k in self._cache.keys()]}
        return exe

    def for_shapes(self, shapes: Mapping[str, tuple]) -> Executable:
        """The executable for these input shapes (a graph without shape inputs, whose values
        would be part of the signature)."""
        if self.specializer.values:
            raise GraphoptError(f"this model has shape inputs ({', '.join(v.name for v in self.specializer.values)}): "
                                "give their values through for_feeds")
        return self.for_feeds({v.name: np.broadcast_to(np.zeros((), dtypes.to_numpy(v.dtype)), tuple(shapes[v.name]))
                               for v in self.graph.inputs})

    @staticmethod
    def _own(exe: Executable, feeds: Mapping[str, object]) -> dict:
        return {v.name: feeds[v.name] for v in exe.graph.inputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = check_feeds(self.graph, feeds)  # binds symbolic dims consistently across inputs
        exe = self.for_feeds(feeds)
        return exe.run(self._own(exe, feeds))


class SpecializingDeviceExecutable(SpecializingExecutable):
    """The same, for a backend whose executables also run on device arrays (``run_device``)."""

    def run_device(self, feeds: Mapping[str, object], **kw) -> list:
        check_feeds(self.graph, {k: array_meta(k, a) for k, a in feeds.items()})
        exe = self.for_feeds(feeds)
        if not hasattr(exe, "run_device"):  # host nodes in this signature: through the host
            return exe.run({k: host_array(a) for k, a in self._own(exe, feeds).items()})
        return exe.run_device(self._own(exe, feeds), **kw)


def host_array(a) -> np.ndarray:
    """A device array's contents on the host (CuPy ``get``, torch ``cpu``), or the array."""
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        return a.get()
    if hasattr(a, "cpu"):
        return a.cpu().numpy()
    return np.asarray(a)


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
    specializing = SpecializingExecutable

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
        """Static input shapes compile now; symbolic ones (a dynamic batch) or shape inputs
        compile at the first run of each input signature (``specialize.py``). A node with no
        kernel runs on the host (``partition.py``) unless the option ``strict`` is set."""
        from .partition import check_runnable, compile_partitioned
        from .specialize import Specializer

        self._check_available()
        opts = _options(ctx)
        strict = str(opts.get("strict", False)).lower() in ("1", "true", "yes", "on")

        def compile_one(g: Graph) -> Executable:
            return compile_partitioned(g, lambda h: self._compile_static(h, ctx), self.name, strict,
                                       device_arrays=self.specializing is SpecializingDeviceExecutable)

        level = getattr(ctx, "level", 0) if ctx is not None else 0
        lowering = self.lowering_pipeline(ctx) if ctx is not None else []
        sp = Specializer(graph, level=level, lowering=lowering, options=opts)
        if not sp.needed:
            return compile_one(graph)
        if strict:
            self.check_supported(graph)  # a node without a kernel fails now, not at the first run
        else:
            check_runnable(graph, self.name)  # one that could never run, too
        return self.specializing(graph, sp, compile_one, self.name, opts.get("max_specializations"))

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
    options = {"gemm": "'auto' or 'generated' (no cuBLAS under emulation)",
               "nvcc_check": "also compile every kernel for sm_90 with nvcc and report ptxas resources",
               "strict": "refuse a node with no CUDA kernel instead of running it on the host",
               "max_specializations": "input signatures whose executables are kept (default 8)"}

    def is_available(self) -> tuple[bool, str]:
        ok, why = emu_available()
        return (True, "") if ok else (False, why)

    def _compile_static(self, graph: Graph, ctx=None) -> CudaEmuExecutable:
        from .cublas import check_mode

        if check_mode(_options(ctx).get("gemm", "auto")) == "cublas":
            raise GraphoptError("gemm='cublas' needs the 'cuda' backend: emulation runs only generated kernels")
        lowered, seconds = self._lower(graph)
        exe = CudaEmuExecutable(lowered.graph, lowered, seconds)
        if _options(ctx).get("nvcc_check"):  # static sm_90 check of the same kernels
            from dataclasses import asdict

            from .compile_nvcc import nvcc_check

            exe.stats["ptxas"] = {k: asdict(v) for k, v in nvcc_check(lowered.kernels).items()}
        return exe


MIN_COMPUTE_CAPABILITY = 80


class CudaBackend(_CudaBackendBase):
    """Generated CUDA kernels on an NVIDIA GPU through CuPy (NVRTC, CUDA graphs)."""

    name = "cuda"
    options = {"gemm": "'auto' (time both, keep the faster), 'generated' or 'cublas'",
               "cuda_graph": "capture the launches once and replay them (default True)",
               "reuse_outputs": "return the executable's own output buffers instead of fresh copies",
               "tune": "'auto' (time candidate schedules once per shape and GPU, cached) or 'table'",
               "strict": "refuse a node with no CUDA kernel instead of running it on the host",
               "max_specializations": "input signatures whose executables are kept (default 8)"}

    def is_available(self) -> tuple[bool, str]:
        from .compile_nvrtc import nvrtc_available

        ok, why = device.available()
        if not ok:
            return ok, why
        cc = device.compute_capability()
        if int(cc) < MIN_COMPUTE_CAPABILITY:  # mma.sync m16n8k16 (float16, bfloat16) needs sm_80
            return False, (f"the GPU has compute capability {int(cc) // 10}.{int(cc) % 10}; the cuda backend needs "
                           f"{MIN_COMPUTE_CAPABILITY // 10}.0 or newer (A100, A-series, L4, H100/H200)")
        ok, why = nvrtc_available()
        return (True, "") if ok else (False, why)

    specializing = SpecializingDeviceExecutable

    def _compile_static(self, graph: Graph, ctx=None) -> CudaExecutable:
        """Options: ``cuda_graph`` (default True), ``reuse_outputs`` (default False: outputs are
        fresh arrays), ``gemm`` ("auto" default, "generated", "cublas": see ``cublas.py``)."""
        from .cublas import check_mode

        from .wgmma import engage, engine

        opts = _options(ctx)
        gemm = check_mode(opts.get("gemm", "auto"))
        engine()  # a misspelt GRAPHOPT_CUDA_MMA is an error before anything is compiled
        if os.environ.get("GRAPHOPT_CUDA_MMA", "auto").strip().lower() == "auto":
            engage()  # once per process: wgmma on compute capability 9.0 after its self-check, else mma.sync
        lowered, seconds = self._lower(graph)
        from .autotune import check_mode as check_tune, default_mode

        return CudaExecutable(lowered.graph, lowered, seconds, use_cuda_graph=opts.get("cuda_graph", True),
                              reuse_outputs=bool(opts.get("reuse_outputs", False)), gemm=gemm,
                              tune=check_tune(opts.get("tune", default_mode())))


def _options(ctx) -> dict:
    return getattr(ctx, "options", None) or {}
