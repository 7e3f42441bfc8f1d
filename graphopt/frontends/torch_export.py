"""PyTorch frontend: an ``nn.Module`` straight into graphopt IR through
``torch.export``.

The module is captured with ``torch.export.export`` (in eval mode, under
``no_grad``), decomposed to the core ATen set for inference, and each FX node is
converted by its entry in the ATen converter table (``aten_table.CONVERTERS``,
filled by ``aten_math``, ``aten_shape`` and ``aten_nn``) into opset-17 ONNX ops.
No ONNX file is written on the way.

* Parameters, buffers and lifted constants become initializers named by their
  FQN (``layer1.0.conv1.weight``); the forward() arguments become graph inputs
  of the same names; outputs are ``output`` (or ``output_0``, ``output_1``...).
* Dims made dynamic with ``dynamic_shapes`` (``{"x": {0: Dim("batch")}}``) are
  symbolic dims named after the ``Dim`` (``"batch"``); arithmetic on them
  (``x.shape[0] * 8``) becomes Shape/Gather/Mul nodes.
* A few composite ops are kept out of the decomposition (``KEEP_WHOLE``):
  ``linear``, ``matmul`` and ``scaled_dot_product_attention`` arrive as one
  MatMul (or Gemm) and one attention pattern instead of reshape/expand/bmm
  chains, adaptive average pooling as GlobalAveragePool/AveragePool, hardswish
  and hardsigmoid as their ONNX ops.
* An op without a converter raises ``UnsupportedOpError`` naming the op and the
  line of the user's code it came from; a module torch.export cannot capture
  raises ``GraphoptError``. Both suggest ``graphopt.load(..., via="onnx")``.

>>> g = load_module(model, (torch.randn(1, 3, 32, 32),),                  # doctest: +SKIP
...                 dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
>>> g.inputs[0].type                                                       # doctest: +SKIP
TensorType(dtype='float32', shape=('batch', 3, 32, 32))
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import sys
import warnings
from typing import Any, Sequence

import numpy as np

from .. import dtypes
from ..builder import GraphBuilder
from ..errors import GraphoptError, UnsupportedOpError
from ..ir import Graph, TensorType, Value
from . import aten_math, aten_nn, aten_shape  # noqa: F401  (they fill the converter table)
from .aten_table import IGNORED_KWARGS, ConvertContext, ir_dtype, lookup

OPSET = 17
HINT = 'try graphopt.load(..., via="onnx")'
# composite ops kept whole: each has a converter that emits fewer, more recognisable ops than its
# decomposition (MatMul/Gemm instead of view+bmm chains, GlobalAveragePool instead of a mean, HardSwish)
KEEP_WHOLE = ("linear.default", "matmul.default", "scaled_dot_product_attention.default",
              "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "hardswish.default",
              "hardsigmoid.default")


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - callers import torch to have a module at all
        raise GraphoptError("loading an nn.Module needs torch (pip install torch)") from exc
    return torch


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and lines[1].startswith("- "):  # "Constraints violated (d)!" says why on the next line
        line = f"{line} {lines[1][2:]}"
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ---------------------------------------------------------------------------
# capture


@contextlib.contextmanager
def quiet_torch():
    """torch.export narrates failures and deprecations on the console; graphopt reports one line."""
    log = logging.getLogger("torch")
    level = log.level
    log.setLevel(logging.ERROR)
    sink = io.StringIO()  # torch prints the partial graph of a failed export; the cause stays on the error
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*|copyreg")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def eval_mode(module):
    """Inference semantics (BatchNorm running statistics, no dropout) while capturing, then
    every submodule's own train/eval flag back: the caller's module is left as it was."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _export_failure(name: str, stage: str, exc: BaseException) -> GraphoptError:
    where = user_frame(str(exc))
    where = f" (at {where})" if where else ""
    return GraphoptError(f"{stage} {name} failed: {type(exc).__name__}: {_one_line(exc)}{where}; {HINT}")


def register_output_types(module) -> None:
    """Let torch.export flatten what transformers models return: their ``ModelOutput``
    classes are pytree nodes already; their KV ``Cache`` classes (GPT-2's default
    ``DynamicCache``) become ones through transformers' own exporter helper (or, on an
    older transformers, its executorch helper). Nothing happens for other modules."""
    if "transformers" not in sys.modules or not any(
            c.__module__.startswith("transformers.") for c in type(module).__mro__):
        return
    try:
        from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model
    except ImportError:
        try:
            from transformers.integrations.executorch import register_dynamic_cache_export_support
        except ImportError:
            return
        register_dynamic_cache_export_support()
        return
    register_cache_pytrees_for_model(module)


def output_names(ep) -> list[str] | None:
    """The user outputs' names from the module's output structure, one per leaf:
    ``last_hidden_state``, ``cache.layers.0.keys``, ... (None for a single tensor or
    when the structure is unknown)."""
    try:
        spec = ep.call_spec.out_spec
        paths = list(_leaf_paths(spec, []))
    except Exception:
        return None
    if len(paths) <= 1 or len(paths) != spec.num_leaves:
        return None
    names: list[str] = []
    for i, parts in enumerate(paths):
        if parts and isinstance(parts[0], int):  # a tuple or list: output_0, output_1.0, ...
            parts = [f"output_{parts[0]}", *parts[1:]]
        name = re.sub(r"[^A-Za-z0-9_.]+", "_", ".".join(map(str, parts))).strip("._") or f"output_{i}"
        names.append(name if name not in names else f"{name}_{i}")
    return names


def _leaf_paths(spec, prefix: list):
    """Key paths of a TreeSpec's leaves, in flattening order."""
    if spec.is_leaf():
        yield prefix
        return
    children, ctx = spec.children_specs, spec.context
    if isinstance(ctx, (list, tuple)) and len(ctx) == len(children):
        keys = list(ctx)
    elif isinstance(ctx, dict) and all(c.is_leaf() for c in children):
        found = dict(_context_tensors(ctx, []))  # transformers' object context: {"_t": "tensor", "i": k}
        keys = [".".join(map(str, found[i])) if i in found else i for i in range(len(children))]
    else:
        keys = list(range(len(children)))
    for k, child in zip(keys, children):
        yield from _leaf_paths(child, [*prefix, k])


def _context_tensors(ctx, path: list):
    """(leaf index, path) for each tensor marker in transformers' pytree context of an object."""
    if isinstance(ctx, dict):
        if ctx.get("_t") == "tensor" and isinstance(ctx.get("i"), int):
            yield ctx["i"], path
            return
        for k, v in ctx.items():
            yield from _context_tensors(v, path if k in ("s", "v", "_t", "p") else [*path, k])
    elif isinstance(ctx, (list, tuple)):
        for i, v in enumerate(ctx):
            yield from _context_tensors(v, [*path, i])


def capture(module, example_inputs: Sequence, dynamic_shapes: Any = None):
    """``torch.export`` the module in eval mode and decompose it to core ATen."""
    torch = _torch()
    args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in example_inputs)
    name = type(module).__name__
    register_output_types(module)
    with quiet_torch():
        try:
            with eval_mode(module), torch.no_grad():
                ep = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
        except Exception as exc:
            raise _export_failure(name, "torch.export of", exc) from exc
        table = torch.export.default_decompositions()
        for name in KEEP_WHOLE:
            packet, overload = name.split(".")
            table.pop(getattr(getattr(torch.ops.aten, packet), overload), None)
        try:
            ep = ep.run_decompositions(table)
        except Exception as exc:
            raise _export_failure(name, "decomposing to core ATen of", exc) from exc
    return ep


# ---------------------------------------------------------------------------
# symbolic dim names


def _bound_args(module, args: tuple) -> list[tuple[str, Any]]:
    """forward()'s parameters bound to ``args``: [(name, value)], a ``*args`` as one tuple."""
    try:
        return list(inspect.signature(module.forward).bind(*args).arguments.items())
    except (TypeError, ValueError):
        return [(f"arg{i}", a) for i, a in enumerate(args)]


def _tensor_specs(value, spec):
    """(tensor, per-dim spec) pairs in pytree leaf order."""
    torch = _torch()
    if isinstance(value, torch.Tensor):
        yield value, spec
    elif isinstance(value, (list, tuple)):
        specs = spec if isinstance(spec, (list, tuple)) and len(spec) == len(value) else [None] * len(value)
        for v, s in zip(value, specs):
            yield from _tensor_specs(v, s)
    elif isinstance(value, dict):
        for k in value:
            yield from _tensor_specs(value[k], spec.get(k) if isinstance(spec, dict) else None)


def dim_names(module, example_inputs: Sequence, dynamic_shapes: Any, user_inputs: list) -> dict:
    """sympy symbol -> the name of the ``torch.export.Dim`` that made it."""
    names: dict = {}
    if dynamic_shapes is None:
        return names
    bound = _bound_args(module, tuple(example_inputs))
    if isinstance(dynamic_shapes, dict):
        specs = [dynamic_shapes.get(name) for name, _ in bound]
    else:
        specs = list(dynamic_shapes) + [None] * (len(bound) - len(dynamic_shapes))
    pairs = list(_tensor_specs(tuple(v for _, v in bound), tuple(specs[:len(bound)])))
    for (tensor, spec), (_, fake) in zip(pairs, user_inputs):
        if spec is None or fake is None or not hasattr(fake, "shape"):
            continue
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        for axis, dim in items:
            label = getattr(dim, "__name__", None)
            if label is None or axis >= len(fake.shape):
                continue
            expr = getattr(getattr(fake.shape[axis], "node", None), "expr", None)
            if expr is not None and getattr(expr, "is_Symbol", False):
                names.setdefault(expr, label)
    return names


class _SymNamer:
    """Turns torch sizes into IR dims: ints stay, symbols get their Dim names."""

    def __init__(self, names: dict, input_dims: list[tuple[str, int, Any]]):
        self.names = dict(names)
        for inp, axis, expr in input_dims:  # unnamed dynamic dims: "<input>_<axis>"
            if getattr(expr, "is_Symbol", False) and expr not in self.names:
                self.names[expr] = f"{inp}_{axis}"

    def __call__(self, d):
        if isinstance(d, int):
            return d
        expr = getattr(getattr(d, "node", None), "expr", None)
        if expr is None:
            return None
        if getattr(expr, "is_number", False):
            return int(expr)
        if expr in self.names:
            return self.names[expr]
        try:
            import sympy

            return str(expr.xreplace({s: sympy.Symbol(n) for s, n in self.names.items()}))
        except Exception:  # pragma: no cover - a printable expression is a nicety
            return str(expr)


# ---------------------------------------------------------------------------
# where an FX node comes from

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>[^\n]+)'
                    r'(?:\n(?P<code>(?!\s*File ")[^\n]*))?')


def user_frame(trace: str) -> str:
    """``model.py:42 in forward: x = torch.fft.fft(x)``: the last frame of a Python stack
    trace outside torch (and outside FX's generated code), or the last frame if all are."""
    frames = list(_FRAME.finditer(trace))
    if not frames:
        return ""
    torch_dir = os.path.dirname(_torch().__file__) + os.sep
    user = [f for f in frames if not f["file"].startswith((torch_dir, "<eval_with_key>"))
            and "/torch/" not in f["file"]]
    f = (user or frames)[-1]
    code = (f["code"] or "").strip()
    return f"{os.path.basename(f['file'])}:{f['line']} in {f['func'].strip()}" + (f": {code}" if code else "")


def source_location(node) -> str:
    """Where an FX node comes from: the user's line, and the submodule when there is one."""
    where = user_frame(node.meta.get("stack_trace") or "")
    if not where:
        return ""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1][:2]
        path = str(path).replace("L['self'].", "").replace("L['self']", "")
        cls_name = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>"))
        if path:
            where += f" (module {path}: {cls_name})"
    return where


# ---------------------------------------------------------------------------
# conversion


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(dtypes.to_numpy("bfloat16"))
    return t.numpy().copy() if t.dtype != torch.bool else t.numpy().astype(bool)


def _map_args(x, env):
    import torch.fx as fx

    if isinstance(x, fx.Node):
        return env[x]
    if isinstance(x, (list, tuple)):
        return type(x)(_map_args(a, env) for a in x)
    if isinstance(x, dict):
        return {k: _map_args(v, env) for k, v in x.items()}
    return x


def _static_meta(node):
    """A Python number when torch knows a SymInt/SymFloat node's value statically."""
    val = node.meta.get("val")
    if isinstance(val, (int, float, bool)):
        return val
    expr = getattr(getattr(val, "node", None), "expr", None)
    if expr is not None and getattr(expr, "is_number", False):
        return int(expr) if getattr(expr, "is_integer", False) else float(expr)
    return None


def convert_program(ep, *, name: str = "torch_module", symbol_names: dict | None = None,
                    names_of_outputs: list[str] | None = None) -> Graph:
    """Convert an ExportedProgram (core ATen) into a graphopt ``Graph`` at opset 17."""
    from torch.export.graph_signature import InputKind, OutputKind

    b = GraphBuilder(name, opset=OPSET)
    sig = ep.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user_inputs = [(n.name, n.meta.get("val")) for n in placeholders
                   if specs[n.name].kind == InputKind.USER_INPUT]
    input_dims = [(inp, i, getattr(getattr(d, "node", None), "expr", None))
                  for inp, fake in user_inputs if hasattr(fake, "shape") for i, d in enumerate(fake.shape)]
    namer = _SymNamer(symbol_names or {}, input_dims)
    cx = ConvertContext(b, namer)
    env: dict = {}
    cx.env_value = env.get

    for node in placeholders:
        spec = specs[node.name]
        if spec.kind == InputKind.USER_INPUT:
            fake = node.meta.get("val")
            if not hasattr(fake, "shape"):
                env[node] = fake if isinstance(fake, (int, float, bool)) else None
                continue
            env[node] = b.input(node.name, tuple(namer(d) for d in fake.shape), ir_dtype(fake.dtype))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            if not node.users:
                continue
            target = spec.target
            tensor = ep.state_dict.get(target) if target in ep.state_dict else ep.constants.get(target)
            if tensor is None:
                raise GraphoptError(f"exported program has no value for {spec.kind.name.lower()} {target!r}")
            env[node] = b.graph.add_initializer(target, _to_numpy(tensor))
        else:
            raise UnsupportedOpError(f"exported input {node.name!r} of kind {spec.kind.name} is not supported; "
                                     f"{HINT}")

    output_node = None
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            output_node = node
            break
        if node.op == "get_attr":  # a subgraph of a higher-order op (cond, map): that op reports
            env[node] = None
            continue
        if node.op != "call_function":
            raise UnsupportedOpError(f"FX node {node.name!r} ({node.op} {node.target}) is not supported; {HINT}")
        env[node] = _convert_node(cx, node, env)

    out_values = list(output_node.args[0])
    user_outs = [v for v, s in zip(out_values, sig.output_specs) if s.kind == OutputKind.USER_OUTPUT]
    _set_outputs(cx, user_outs, env, names_of_outputs if names_of_outputs and len(names_of_outputs) == len(user_outs)
                 else None)
    remove_dead_nodes(b.graph)
    b.graph.model_info.setdefault("producer_name", "graphopt.frontends.torch_export")
    return b.graph


def _convert_node(cx: ConvertContext, node, env):
    static = _static_meta(node)
    if static is not None and not hasattr(node.meta.get("val"), "shape") and not isinstance(
            node.meta.get("val"), (tuple, list)):
        return static  # a SymInt torch already knows: no run-time shape arithmetic
    op_name, fn = lookup(node.target)
    where = source_location(node)
    at = f" at {where}" if where else ""
    if fn is None:
        raise UnsupportedOpError(f"{op_name} has no graphopt converter{at}; {HINT}")
    args = _map_args(node.args, env)
    kwargs = {k: v for k, v in _map_args(dict(node.kwargs), env).items() if k not in IGNORED_KWARGS}
    cx.node = node
    try:
        out = fn(cx, *args, **kwargs)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{op_name}: {_one_line(exc)}{at}; {HINT}") from exc
    except GraphoptError as exc:
        raise GraphoptError(f"converting {op_name}{at} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise GraphoptError(f"converting {op_name}{at} failed: {type(exc).__name__}: {_one_line(exc)}") from exc
    _check_types(cx, op_name, at, out)
    return out


def _check_types(cx: ConvertContext, op_name: str, at: str, out) -> None:
    """Give each output torch's (symbolic) shape; a dtype that differs from torch's is a converter bug."""
    vals = out if isinstance(out, (tuple, list)) else (out,)
    for i, v in enumerate(vals):
        if not isinstance(v, Value):
            continue
        fake = cx.out_at(i if isinstance(out, (tuple, list)) else None)
        if not hasattr(fake, "dtype") or not hasattr(fake, "shape"):
            continue  # a SymInt as a 0-d tensor
        want = TensorType(ir_dtype(fake.dtype), tuple(cx.sym_name(d) for d in fake.shape))
        if v.type is not None and v.dtype != want.dtype:
            raise GraphoptError(f"converter of {op_name}{at} produced {v.dtype} for {v.name!r}, torch has "
                                f"{want.dtype} (a graphopt bug)")
        if v.type is not None and v.shape is not None and len(v.shape) != len(want.shape):
            raise GraphoptError(f"converter of {op_name}{at} produced rank {len(v.shape)} for {v.name!r}, "
                                f"torch has {want} (a graphopt bug)")
        if v.is_const or v.is_graph_input:
            continue
        if v.type is None or v.shape is None:
            v.type = want
        else:
            v.type = TensorType(want.dtype, tuple(w if w is not None else h for w, h in zip(want.shape, v.shape)))


def _set_outputs(cx: ConvertContext, outs: list, env, names: list[str] | None = None) -> None:
    import torch.fx as fx

    b = cx.b
    cx.node = None
    seen: set = set()
    for i, o in enumerate(outs):
        name = names[i] if names else "output" if len(outs) == 1 else f"output_{i}"
        v = env[o] if isinstance(o, fx.Node) else o
        if v is None:
            raise UnsupportedOpError(f"model output {i} is None; graphopt outputs must be tensors")
        if not isinstance(v, Value):
            v = cx.as_value(v)
        if v.is_graph_input or v.is_const or v in seen or v.is_graph_output:
            v = b.op("Identity", v)
        seen.add(v)
        b.output(v, name)


def remove_dead_nodes(graph: Graph) -> None:
    """Drop nodes and initializers nothing reads (converters may leave a spare Shape or Transpose)."""
    for node in reversed(graph.nodes):
        if all(v.num_uses == 0 and not v.is_graph_output for v in node.outputs):
            graph.remove(node)
    for v in list(graph.initializers.values()):
        if v.num_uses == 0 and not v.is_graph_output:
            graph.remove_initializer(v)


def load_module(module, example_inputs: Sequence, dynamic_shapes: Any = None) -> Graph:
    """Capture ``module`` with torch.export and convert it to a graphopt ``Graph``.

    >>> g = load_module(torch.nn.Linear(4, 2), (torch.randn(3, 4),))   # doctest: +SKIP
    >>> [n.op_type for n in g]                                          # doctest: +SKIP
    ['Gemm']
    """
    ep = capture(module, example_inputs, dynamic_shapes)
    from torch.export.graph_signature import InputKind

    specs = {s.arg.name: s for s in ep.graph_signature.input_specs}
    user_inputs = [(n.name, n.meta.get("val")) for n in ep.graph.nodes
                   if n.op == "placeholder" and specs[n.name].kind == InputKind.USER_INPUT]
    names = dim_names(module, example_inputs, dynamic_shapes, user_inputs)
    return convert_program(ep, name=type(module).__name__, symbol_names=names, names_of_outputs=output_names(ep))
