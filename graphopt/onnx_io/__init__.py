"""ONNX import and export.

``load_onnx`` / ``from_onnx_model`` turn a model into a ``Graph`` (guarding
against malformed and hostile files: every problem is one ``ModelLoadError``
line naming the file); ``to_onnx_model`` / ``save_onnx`` write a ``Graph`` back
as a model that ``onnx.checker`` accepts and onnxruntime loads.

onnx itself is imported only when one of these functions is called, so that
``import graphopt`` needs NumPy alone.

>>> from graphopt.onnx_io import load_onnx, save_onnx   # doctest: +SKIP
>>> g = load_onnx("model.onnx")                         # doctest: +SKIP
>>> save_onnx(g, "copy.onnx")                           # doctest: +SKIP
"""
from __future__ import annotations

from ..errors import GraphoptError


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise GraphoptError("ONNX support needs the onnx package: pip install 'graphopt[onnx]'") from None


def load_onnx(model, *, infer_shapes: bool = True, base_dir=None):
    """Import an ONNX model (path, bytes or ``ModelProto``) as a ``Graph``; see ``importer.load_onnx``."""
    _need_onnx()
    from .importer import load_onnx as _load

    return _load(model, infer_shapes=infer_shapes, base_dir=base_dir)


def from_onnx_model(model, *, infer_shapes: bool = True, base_dir=None):
    """Import an in-memory ``onnx.ModelProto`` as a ``Graph``."""
    _need_onnx()
    from .importer import from_onnx_model as _from

    return _from(model, infer_shapes=infer_shapes, base_dir=base_dir)


def to_onnx_model(graph, *, target_opset: int | None = None, keep_fused: bool = False):
    """Build an ``onnx.ModelProto`` from ``graph``; see ``exporter``."""
    _need_onnx()
    from .exporter import to_onnx_model as _to

    return _to(graph, target_opset=target_opset, keep_fused=keep_fused)


def save_onnx(graph, path, *, target_opset: int | None = None, keep_fused: bool = False,
              external_data: bool | None = None, external_data_threshold: int = 1024):
    """Write ``graph`` to ``path`` atomically (large tensors to ``<stem>.onnx.data``); see ``save``."""
    _need_onnx()
    from .save import save_onnx as _save

    return _save(graph, path, target_opset=target_opset, keep_fused=keep_fused, external_data=external_data,
                 external_data_threshold=external_data_threshold)


__all__ = ["load_onnx", "from_onnx_model", "to_onnx_model", "save_onnx"]
