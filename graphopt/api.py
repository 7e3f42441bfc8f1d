"""The public Python API: ``load``, ``optimize``, ``compile``, ``save``.

>>> import graphopt, numpy as np
>>> g = graphopt.load("model.onnx")                                   # doctest: +SKIP
>>> g2, report = graphopt.optimize(g, level=2, return_report=True)    # doctest: +SKIP
>>> print(report.table())                                             # doctest: +SKIP
>>> model = graphopt.compile(g2, backend="cpu")                       # doctest: +SKIP
>>> (logits,) = model(np.zeros((1, 3, 32, 32), np.float32))           # doctest: +SKIP
>>> graphopt.save(g2, "model.opt.onnx")                               # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import GraphoptError, InputError
from .ir import Graph
from .passmanager import PassContext, PassManager, Report, check_options, default_pipeline, get_pass
from .plugin_loader import get_backend, load_plugins


def _is_torch_module(obj) -> bool:
    mod = type(obj).__module__
    if not mod.startswith("torch") and "torch" not in {c.__module__.split(".")[0] for c in type(obj).__mro__}:
        return False
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def load(model: Any, example_inputs: Sequence | None = None, *, via: str | None = None,
         dynamic_shapes: Any = None, infer_shapes: bool = True) -> Graph:
    """Turn a model into a graphopt ``Graph``.

    ``model`` may be a path to an ``.onnx`` file, ONNX bytes, an ``onnx.ModelProto``,
    a ``Graph`` (returned as is), or a ``torch.nn.Module`` with ``example_inputs``.

    >>> g = graphopt.load("resnet.onnx")                          # doctest: +SKIP
    >>> g = graphopt.load(module, (torch.randn(1, 3, 32, 32),))   # doctest: +SKIP
    """
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .onnx_io import load_onnx

        return load_onnx(Path(model), infer_shapes=infer_shapes)
    if isinstance(model, (bytes, bytearray)):
        from .onnx_io import load_onnx

        return load_onnx(bytes(model), infer_shapes=infer_shapes)
    if type(model).__name__ == "ModelProto":
        from .onnx_io import from_onnx_model

        return from_onnx_model(model, infer_shapes=infer_shapes)
    if _is_torch_module(model):
        if example_inputs is None:
            raise InputError("loading an nn.Module needs example_inputs (a tuple of tensors)")
        via = via or os.environ.get("GRAPHOPT_TORCH_VIA") or "export"
        if via == "export":
            try:
                from .frontends.torch_export import load_module
            except ImportError:
                via = "onnx"  # the direct torch.export frontend is not installed in this build
            else:
                return load_module(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
        if via == "onnx":
            from .frontends.torch_onnx import module_to_onnx_bytes
            from .onnx_io import load_onnx

            return load_onnx(module_to_onnx_bytes(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes))
        raise InputError(f"unknown via={via!r} (use 'export' or 'onnx')")
    raise InputError(f"cannot load a model from a {type(model).__name__}")


LEVELS = (0, 1, 2, 3)


def _check_level(level) -> int:
    """Levels are 0-3; anything else is refused (a level above 3 would run the passes that change
    what the model computes, such as float16 conversion, that run only when named)."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or int(level) not in LEVELS:
        raise InputError(f"level must be 0, 1, 2 or 3, not {level!r}")
    return int(level)


def _names(arg, what: str) -> list[str] | None:
    """A list of pass names; a string is read as comma-separated names."""
    if arg is None:
        return None
    if isinstance(arg, str):
        return [x.strip() for x in arg.split(",") if x.strip()]
    names = list(arg)
    bad = [x for x in names if not isinstance(x, str)]
    if bad:
        raise InputError(f"{what} must be pass names, not {type(bad[0]).__name__} {bad[0]!r}")
    return names


def _pipeline(level: int, passes: Iterable[str] | None, disable: Iterable[str] | None) -> list:
    """The passes to run: exactly ``passes``, or, when every entry is written ``+name``,
    the level's pipeline plus those (in pipeline order), or the level's pipeline."""
    load_plugins()
    passes = list(passes or ())
    added = [p[1:] for p in passes if p.startswith("+")]
    if added and len(added) != len(passes):
        raise InputError("passes: either name the passes to run, or add to the level's pipeline with "
                         f"+name entries, not both ({', '.join(passes)})")
    if added:
        chosen = default_pipeline(level)
        chosen += [get_pass(p) for p in dict.fromkeys(added) if p not in {c.name for c in chosen}]
        chosen.sort(key=lambda p: (p.kind != "graph", p.order, p.name))
    else:
        chosen = [get_pass(p) for p in passes] if passes else default_pipeline(level)
    disabled = set(disable or ())
    for name in disabled:
        get_pass(name)  # unknown names are an error, not a silent no-op
    return [p for p in chosen if p.name not in disabled]


def optimize(model: Any, level: int = 2, passes: Iterable[str] | None = None, disable: Iterable[str] | None = None,
             *, verify: bool = False, return_report: bool = False, target_opset: int | None = None,
             keep_fused: bool = False, **options):
    """Run the graph passes of ``level`` (or exactly ``passes``; ``["+onnxsim"]`` adds a
    pass to the level's own) on a copy of ``model``.

    Returns the optimized ``Graph`` (and the ``Report`` with ``return_report=True``).

    >>> g2, rep = graphopt.optimize(g, level=2, return_report=True)   # doctest: +SKIP
    """
    level = _check_level(level)
    passes, disable = _names(passes, "passes"), _names(disable, "disable")
    if target_opset is not None and (isinstance(target_opset, bool) or not isinstance(target_opset, int)
                                     or target_opset < 1):
        raise InputError(f"target_opset must be a positive opset version, not {target_opset!r}")
    check_options(options)
    graph, report = _optimize(model, level, passes, disable, verify, options, target_opset, keep_fused)
    return (graph, report) if return_report else graph


def _optimize(model, level, passes, disable, verify, options, target_opset=None, keep_fused=False):
    """``optimize`` without the option check (``compile`` checks backend options too)."""
    graph = load(model).clone()
    ctx = PassContext(level=level, verify=verify, target_opset=target_opset, keep_fused=keep_fused,
                      options=options)
    return graph, PassManager(_pipeline(level, passes, disable), ctx).run(graph)


class CompiledModel:
    """A graph compiled for one backend; call it with arrays (positional or by name).

    Returns a list of arrays in output order, of the kind it was called with:

    * NumPy arrays (or lists, scalars): NumPy arrays;
    * torch tensors: torch tensors on the same device. CPU tensors go through NumPy without a
      copy; CUDA tensors, on a backend whose executable runs on device arrays (``run_device``:
      the ``cuda`` backend), are taken and returned through DLPack without leaving the device;
    * device arrays of another library (CuPy): that executable's device arrays (CuPy).

    ``model(x, return_numpy=True)`` returns NumPy arrays whatever the inputs (an input named
    ``return_numpy`` is then given positionally or through ``run``).

    >>> m = graphopt.compile(g, backend="cpu")   # doctest: +SKIP
    >>> y, = m(x)                                # doctest: +SKIP
    >>> out = m.run({"input": x})                # doctest: +SKIP
    >>> y, = graphopt.compile(g, backend="cuda")(x.cuda())   # doctest: +SKIP  (a CUDA tensor, no copy)
    """

    def __init__(self, graph: Graph, executable, backend_name: str, report: Report | None):
        self.graph = graph
        self.executable = executable
        self.backend = backend_name
        self.report = report
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]

    @property
    def stats(self) -> dict:
        return getattr(self.executable, "stats", {})

    def run(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        return self.executable.run(feeds)

    def __call__(self, *args, return_numpy: bool = False, **kwargs):
        if len(args) > len(self.input_names):
            raise InputError(f"model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(args)}")
        feeds: dict[str, Any] = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k in feeds:
                raise InputError(f"input {k!r} given twice")
            feeds[k] = v
        # the executable's optional device entry point is the hook: no backend is named here
        run_device = getattr(self.executable, "run_device", None)
        torch_out, on_device = None, []
        for k, v in list(feeds.items()):
            if _is_torch_tensor(v):
                torch_out = v.device
                if v.device.type == "cpu" or run_device is None:
                    feeds[k] = v.detach().cpu().numpy()  # a view for CPU tensors: no copy
                else:
                    on_device.append(k)
            elif _in_device_memory(v):
                if run_device is None:
                    raise InputError(f"input {k!r} is a {type(v).__module__}.{type(v).__name__} in device memory; "
                                     f"backend {self.backend!r} runs on host arrays (copy it to the host first)")
                on_device.append(k)
        if on_device:
            outs = run_device(feeds, to_host=return_numpy)
            if return_numpy:
                return outs
            if torch_out is not None:
                import torch

                return [torch.from_dlpack(o) for o in outs]  # ordered on torch's current stream by DLPack
            return outs
        outs = self.executable.run(feeds)
        if torch_out is not None and not return_numpy:
            import torch

            return [torch.from_numpy(np.ascontiguousarray(o)).to(torch_out) for o in outs]
        return outs


def _is_torch_tensor(v) -> bool:
    if not type(v).__module__.startswith("torch") and not any(
            c.__module__.startswith("torch") for c in type(v).__mro__[1:]):
        return False
    import torch

    return isinstance(v, torch.Tensor)


def _in_device_memory(v) -> bool:
    """An array whose memory the host cannot read: it says so through the CUDA array interface,
    or its DLPack device is neither the CPU nor pinned host memory."""
    if isinstance(v, np.ndarray):
        return False
    if hasattr(v, "__cuda_array_interface__"):
        return True
    dev = getattr(v, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) not in (1, 3)  # kDLCPU, kDLCUDAHost
    except Exception:
        return False


def compile(model: Any, backend: str = "cpu", level: int = 2, *, example_inputs: Sequence | None = None,
            passes: Iterable[str] | None = None, disable: Iterable[str] | None = None,
            verify: bool = False, via: str | None = None, dynamic_shapes: Any = None,
            **options) -> CompiledModel:
    """Optimize ``model`` and compile it for ``backend``.

    ``via`` and ``dynamic_shapes`` are passed to ``load`` for an ``nn.Module``.

    >>> m = graphopt.compile("model.onnx", backend="cpu")   # doctest: +SKIP
    >>> m = graphopt.compile(module, example_inputs=(x,),    # doctest: +SKIP
    ...                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    """
    level = _check_level(level)
    passes, disable = _names(passes, "passes"), _names(disable, "disable")
    if not isinstance(backend, str):
        raise InputError(f"backend must be a backend's name (see graphopt backends), not {backend!r}")
    be = get_backend(backend)
    ok, why = be.is_available()
    if not ok:
        raise GraphoptError(f"backend {backend!r} is not available: {why}")
    check_options(options, be)
    graph = load(model, example_inputs, via=via, dynamic_shapes=dynamic_shapes)
    graph, report = _optimize(graph, level, passes, disable, verify, options)
    ctx = PassContext(level=level, verify=verify, backend=backend, options=options)
    lowering = [get_pass(p) for p in be.lowering_pipeline(ctx) if p not in set(disable or ())]
    if lowering and level > 0:
        low = PassManager(lowering, ctx).run(graph)
        report.records.extend(low.records)
        report.nodes_after = low.nodes_after
    return CompiledModel(graph, be.compile(graph, ctx), backend, report)


def save(graph: Graph, path: str | os.PathLike, *, keep_fused: bool = False, target_opset: int | None = None,
         external_data: bool | None = None) -> Path:
    """Write ``graph`` as an ONNX file (atomically: no partial file on error)."""
    from .onnx_io import save_onnx

    kw = {} if external_data is None else {"external_data": external_data}
    return save_onnx(graph, Path(path), target_opset=target_opset, keep_fused=keep_fused, **kw)
