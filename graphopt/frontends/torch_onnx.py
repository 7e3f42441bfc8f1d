"""PyTorch frontend, fallback path: ``torch.onnx.export`` to ONNX bytes, which
``graphopt.onnx_io`` imports (``graphopt.load(module, ..., via="onnx")``).

torch 2.13's exporter is the ``torch.export``-based one (``dynamo=True``,
onnxscript's ATen library); it covers ops that graphopt's own ATen table does
not (FFT, linear algebra, ...). The model is written with the smallest IR
version that knows its opset, so older onnxruntime releases load it too, and
its outputs are renamed ``output`` / ``output_0``... like the direct frontend's.

>>> data = module_to_onnx_bytes(model, (torch.randn(1, 3, 32, 32),))   # doctest: +SKIP
>>> graph = graphopt.onnx_io.load_onnx(data)                          # doctest: +SKIP
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from ..errors import GraphoptError

DEFAULT_OPSET = 18  # the exporter's native opset: no version conversion on the way out


def min_ir_version(opset: int) -> int:
    """The smallest ONNX IR version whose release supports ``opset`` of the default domain.

    >>> min_ir_version(17), min_ir_version(18)
    (8, 8)
    """
    import onnx

    best = None
    for row in onnx.helper.VERSION_TABLE:
        _release, ir, ai_onnx = row[:3]
        if ai_onnx >= opset and (best is None or ir < best):
            best = ir
    return best if best is not None else onnx.IR_VERSION


def _rename_outputs(graph) -> None:
    """Outputs become ``output`` (one) or ``output_<i>``, as in the direct frontend."""
    outs = list(graph.output)
    names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    taken = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        taken.update(n.output)
    mapping = {}
    for o, new in zip(outs, names):
        if o.name == new:
            continue
        if new in taken or o.name in mapping or o.name in {v.name for v in graph.input} \
                or o.name in {t.name for t in graph.initializer}:
            mapping = None
            break
        mapping[o.name] = new
    if not mapping:
        return
    for n in graph.node:
        for i, name in enumerate(n.output):
            if name in mapping:
                n.output[i] = mapping[name]
        for i, name in enumerate(n.input):
            if name in mapping:
                n.input[i] = mapping[name]
    for vi in list(graph.value_info):
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    for o in outs:
        if o.name in mapping:
            o.name = mapping[o.name]


def module_to_onnx_bytes(module, example_inputs: Sequence, dynamic_shapes: Any = None, *,
                         opset: int = DEFAULT_OPSET) -> bytes:
    """Export ``module`` (in eval mode) with ``torch.onnx.export`` and return the model's bytes.

    >>> data = module_to_onnx_bytes(torch.nn.Linear(4, 2), (torch.randn(3, 4),))   # doctest: +SKIP
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise GraphoptError("exporting an nn.Module needs torch (pip install torch)") from exc
    args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in example_inputs)
    name = type(module).__name__
    from .torch_export import eval_mode, quiet_torch

    try:
        with eval_mode(module), torch.no_grad(), quiet_torch():
            program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        opset_version=opset, external_data=False, verbose=False)
    except Exception as exc:
        root = exc
        while root.__cause__ is not None:  # the exporter wraps torch.export's own error
            root = root.__cause__
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(root).splitlines() if ln.strip()]
        why = lines[0] if lines else type(root).__name__
        raise GraphoptError(f"torch.onnx.export failed for {name}: {type(root).__name__}: {why[:300]}") from exc
    model = program.model_proto
    _rename_outputs(model.graph)
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    model.ir_version = min_ir_version(default[0] if default else opset)
    return model.SerializeToString()
