"""Writing ``.onnx`` files: atomically, with large tensors in external data when needed.

Both the model and its data file are written to temporary names in the target
folder and renamed at the end, so an error leaves neither a partial output nor
a stray temporary file. Nothing is written that onnx's full checker
(``onnx.checker.check_model(full_check=True)``: structure, schemas, strict shape
inference) rejects: such a model is refused with the checker's first line. Tensors go to ``<model stem>.onnx.data`` next to the
model when the caller asks (``external_data=True``) or when the constants alone
would bring the model near protobuf's 2 GiB limit.

>>> save_onnx(graph, "model.opt.onnx")                         # doctest: +SKIP
>>> save_onnx(graph, "big.onnx", external_data=True)           # doctest: +SKIP  (writes big.onnx.data)
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import GraphoptError
from ..fileutil import file_mode, set_mode
from ..ir import Graph
from .exporter import build_model
from .external_data import ExternalDataWriter
from .tensors import _first_line

AUTO_EXTERNAL_BYTES = 1_800_000_000  # past this much constant data, tensors go to external data


def save_onnx(graph: Graph, path: str | os.PathLike, *, target_opset: int | None = None, keep_fused: bool = False,
              external_data: bool | None = None, external_data_threshold: int = 1024) -> Path:
    """Write ``graph`` to ``path`` as ONNX and return the path.

    ``external_data``: True puts every tensor of at least
    ``external_data_threshold`` bytes into ``<stem>.onnx.data``; None (default)
    does so only when the model would otherwise pass ~1.8 GB; False never.

    >>> save_onnx(g, "out.onnx", external_data=True)   # doctest: +SKIP
    PosixPath('out.onnx')
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise GraphoptError(f"{path}: folder {folder} does not exist")
    if path.is_dir():
        raise GraphoptError(f"{path}: is a directory")
    if external_data is None:
        external_data = constant_bytes(graph) > AUTO_EXTERNAL_BYTES
    location = f"{path.stem}.onnx.data"
    mode = file_mode(path)
    temps: list[str] = []
    placed_data: Path | None = None
    try:
        data_tmp = None
        if external_data:
            fd, data_tmp = tempfile.mkstemp(prefix=f".{location}.", suffix=".tmp", dir=folder)
            temps.append(data_tmp)
            set_mode(fd, mode)
            with os.fdopen(fd, "wb") as f:
                writer = ExternalDataWriter(f, location, external_data_threshold)
                model = build_model(graph, target_opset=target_opset, keep_fused=keep_fused,
                                    tensor_sink=writer.tensor)
                f.flush()
                os.fsync(f.fileno())
            if not writer.count:
                os.unlink(data_tmp)
                temps.remove(data_tmp)
                data_tmp = None
        else:
            model = build_model(graph, target_opset=target_opset, keep_fused=keep_fused)
        check_full(model, str(path))
        try:
            blob = model.SerializeToString()
        except Exception as exc:
            raise GraphoptError(f"{path}: the model cannot be serialized ({_first_line(exc)}); past 2 GiB, "
                                f"save with external data") from exc
        fd, model_tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        temps.append(model_tmp)
        set_mode(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        if data_tmp is not None:
            placed_data = folder / location
            os.replace(data_tmp, placed_data)
            temps.remove(data_tmp)
        os.replace(model_tmp, path)
        temps.remove(model_tmp)
    except BaseException as exc:
        for t in temps:
            with contextlib.suppress(OSError):
                os.unlink(t)
        if placed_data is not None:
            with contextlib.suppress(OSError):
                os.unlink(placed_data)
        if isinstance(exc, OSError):
            raise GraphoptError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise
    return path


_CHECK_INLINE_BYTES = 1 << 20  # initializers past this are checked by their type alone


def check_full(model, label: str) -> None:
    """Refuse (one line naming ``label``) a model that onnx's full checker rejects. Declared dims
    that onnx's shape inference alone contradicts are first written unknown (in ``model``).

    External and large initializers are checked by type and shape only (as graph inputs), so
    the check neither needs the data file in place nor copies the weights.

    >>> check_full(model, "out.onnx")       # doctest: +SKIP
    """
    import onnx

    try:
        onnx.checker.check_model(_typed_copy(model), full_check=True)
        return
    except Exception as exc:
        first = exc
    # onnx's shape inference is sometimes wrong where graphopt and onnxruntime agree (ConvTranspose
    # with SAME padding and output_padding, ceil-mode pools): a pool is written in the equivalent
    # form it gets right, and the dims it still contradicts are written unknown
    for fix in (_pools_in_floor_mode, _relax_contradicted_dims):
        if fix(model):
            try:
                onnx.checker.check_model(_typed_copy(model), full_check=True)
                return
            except Exception as exc:
                first = exc
    why = _first_line(first).removeprefix("[ShapeInferenceError] ")
    raise GraphoptError(f"{label}: not written: onnx's checker rejects the model: {why}") from first


def _inferred_dims(model) -> dict | None:
    """Dims of the main graph's values by onnx's own inference, run without the declared ones."""
    import onnx

    bare = _typed_copy(model)
    del bare.graph.value_info[:]
    for vi in bare.graph.output:
        for d in vi.type.tensor_type.shape.dim:
            d.Clear()
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=False)
    except Exception:
        return None
    return {vi.name: list(vi.type.tensor_type.shape.dim)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}


def _declared_dims(model) -> dict:
    return {vi.name: vi.type.tensor_type.shape.dim for vi in list(model.graph.value_info) + list(model.graph.output)}


def _dims_agree(ours, theirs) -> bool:
    return theirs is not None and len(theirs) == len(ours) and all(
        not (d.HasField("dim_value") and t.HasField("dim_value") and d.dim_value != t.dim_value)
        for d, t in zip(ours, theirs))


_POOLS = ("MaxPool", "AveragePool", "LpPool")


def _pools_in_floor_mode(model) -> bool:
    """Write ``ceil_mode=0`` on a ceil-mode pool whose output onnx's inference contradicts and gets
    right in floor mode; True when any was. ONNX drops a last window that would start past the
    input; onnx's inference counts it (onnxruntime's kernel does not, but its buffer planner trusts
    the inferred size). Where both modes give graphopt's size the windows are the same ones.

    >>> _pools_in_floor_mode(model)     # doctest: +SKIP
    True
    """
    declared = _declared_dims(model)
    before = _inferred_dims(model)
    if before is None:
        return False
    inputs = {vi.name for vi in model.graph.input}
    flipped = []
    for n in model.graph.node:
        ceil = next((a for a in n.attribute if a.name == "ceil_mode" and a.i == 1), None)
        x, y = n.input[0] if n.input else "", n.output[0]
        # only where the pool itself is where inference departs: its input agrees, its output does not
        # (from a contradicted input, floor mode might match by chance and compute something else)
        if (n.op_type in _POOLS and n.domain in ("", "ai.onnx") and ceil is not None and y in declared
                and (x in inputs or (x in declared and _dims_agree(declared[x], before.get(x))))
                and not _dims_agree(declared[y], before.get(y))):
            ceil.i = 0
            flipped.append((n, ceil))
    if not flipped:
        return False
    after = _inferred_dims(model) or {}
    kept = False
    for n, ceil in flipped:
        if _dims_agree(declared[n.output[0]], after.get(n.output[0])):
            kept = True
        else:
            ceil.i = 1
    return kept


def _relax_contradicted_dims(model) -> bool:
    """Clear the declared dims of the main graph's values that onnx's own inference (run without
    them) contradicts; True when any was cleared."""
    dims = _inferred_dims(model)
    if dims is None:
        return False
    changed = False
    for vi in list(model.graph.value_info) + list(model.graph.output):
        theirs = dims.get(vi.name)
        ours = vi.type.tensor_type.shape.dim
        if theirs is None or len(theirs) != len(ours):
            continue
        for d, t in zip(ours, theirs):
            if d.HasField("dim_value") and t.HasField("dim_value") and d.dim_value != t.dim_value:
                d.Clear()
                changed = True
    return changed


def _typed_copy(model):
    """``model`` with its external and large initializers turned into typed graph inputs."""
    from onnx import ModelProto, TensorProto, helper

    def copy_fields(src, dst, skip: str) -> None:
        for fd, val in src.ListFields():
            if fd.name == skip:
                continue
            if hasattr(val, "extend"):  # a repeated field
                getattr(dst, fd.name).extend(val)
            elif hasattr(val, "CopyFrom"):  # a message
                getattr(dst, fd.name).CopyFrom(val)
            else:
                setattr(dst, fd.name, val)

    out = ModelProto()
    copy_fields(model, out, "graph")
    copy_fields(model.graph, out.graph, "initializer")
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL or len(t.raw_data) > _CHECK_INLINE_BYTES:
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            out.graph.initializer.append(t)
    return out


def constant_bytes(graph: Graph) -> int:
    """Bytes of constant data in ``graph`` and its subgraphs (initializers and attribute tensors)."""
    total = 0
    for v in graph.initializers.values():
        if v.const is not None:
            total += np.asarray(v.const).nbytes
    for n in graph:
        for a in n.attrs.values():
            if isinstance(a, np.ndarray):
                total += a.nbytes
        for sg in n.subgraphs():
            total += constant_bytes(sg)
    return total
