"""``TensorProto`` <-> NumPy, with the size checks done before anything is allocated.

A tensor's declared shape is only trusted once the bytes it needs are known to
exist: inline data must hold exactly ``numel`` elements, external data must lie
inside its file (see ``external_data``), and no tensor may declare more than
``MAX_TENSOR_BYTES``. bfloat16, float8 and 4-bit types decode to their
``ml_dtypes`` NumPy types.

>>> from onnx import numpy_helper                      # doctest: +SKIP
>>> tensor_to_array(numpy_helper.from_array(np.ones(3, np.float32), "w"), label="m.onnx")  # doctest: +SKIP
array([1., 1., 1.], dtype=float32)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, numpy_helper

from .. import dtypes
from ..errors import GraphoptError, ModelLoadError

# no single constant may be bigger than this, whatever it claims (1 TiB)
MAX_TENSOR_BYTES = 2 ** 40

_PACKED_4BIT = frozenset({"int4", "uint4", "float4e2m1"})
_PACKED_2BIT = frozenset({"int2", "uint2"})  # four elements per byte

# element type -> (typed field holding inline data, values stored per element)
_TYPED_FIELD = {
    "float32": ("float_data", 1), "complex64": ("float_data", 2),
    "float64": ("double_data", 1), "complex128": ("double_data", 2),
    "int64": ("int64_data", 1), "uint32": ("uint64_data", 1), "uint64": ("uint64_data", 1),
    "string": ("string_data", 1),
}
_INT32_FIELD = ("int32_data", 1)  # everything else: int8/16/32, uint8/16, bool, float16, bfloat16, float8


def tensor_dtype(t: TensorProto, label: str, who: str = "") -> str:
    """The IR dtype of ``t``, or a ModelLoadError naming the tensor."""
    try:
        return dtypes.from_onnx(t.data_type)
    except GraphoptError:
        raise ModelLoadError(f"{label}: {who or f'tensor {t.name!r}'} has unsupported element type "
                             f"{t.data_type}") from None


def checked_numel(who: str, dims, label: str) -> int:
    """Number of elements of ``dims``; negative dims are refused (Python ints: no overflow)."""
    numel = 1
    for d in dims:
        d = int(d)
        if d < 0:
            raise ModelLoadError(f"{label}: {who} has a negative dimension in shape {list(dims)}")
        numel *= d
    return numel


def nbytes_of(dtype: str, numel: int) -> int | None:
    """Bytes that ``numel`` elements of ``dtype`` occupy as raw data (None for strings)."""
    if dtype == "string":
        return None
    if dtype in _PACKED_4BIT:
        return (numel + 1) // 2
    if dtype in _PACKED_2BIT:
        return (numel + 3) // 4
    return numel * dtypes.to_numpy(dtype).itemsize


def check_declared_size(who: str, dims, dtype: str, label: str) -> tuple[int, int | None]:
    """(numel, raw byte size) of a declared tensor; refuses absurd shapes before any allocation.

    ``who`` names the tensor in messages ("tensor 'w'").
    """
    numel = checked_numel(who, dims, label)
    nbytes = nbytes_of(dtype, numel)
    if (nbytes if nbytes is not None else numel) > MAX_TENSOR_BYTES:
        raise ModelLoadError(f"{label}: {who} declares shape {[int(d) for d in dims]} ({dtype}), "
                             f"more than the {MAX_TENSOR_BYTES} bytes graphopt accepts for one tensor")
    return numel, nbytes


def _inline_check(t: TensorProto, who: str, dtype: str, numel: int, nbytes: int | None, label: str) -> None:
    """Inline data must hold exactly what the shape declares."""
    if t.HasField("raw_data") and dtype != "string":
        have = len(t.raw_data)
        if have != nbytes:
            raise ModelLoadError(f"{label}: {who} declares shape {list(t.dims)} ({dtype}, {nbytes} "
                                 f"bytes) but its raw_data holds {have} bytes")
        return
    field, per = _TYPED_FIELD.get(dtype, _INT32_FIELD)
    want = (numel + 1) // 2 if dtype in _PACKED_4BIT else (numel + 3) // 4 if dtype in _PACKED_2BIT else numel * per
    have = len(getattr(t, field))
    if have != want:
        raise ModelLoadError(f"{label}: {who} declares shape {list(t.dims)} ({dtype}) but holds "
                             f"{have} values in {field} (expected {want})")


def array_from_raw(buf, dtype: str, dims, name: str = "") -> np.ndarray:
    """Decode little-endian raw bytes (already size-checked) into an array of ``dims``."""
    shape = tuple(int(d) for d in dims)
    if dtype in _PACKED_4BIT or dtype in _PACKED_2BIT:
        t = TensorProto(name=name or "t", data_type=dtypes.to_onnx(dtype), dims=shape)
        t.raw_data = bytes(buf)
        return numpy_helper.to_array(t)
    return np.frombuffer(buf, dtype=dtypes.to_numpy(dtype)).reshape(shape)


def tensor_to_array(t: TensorProto, *, label: str, base_dir: Path | None = None, what: str = "") -> np.ndarray:
    """Decode ``t`` (inline or external data) after checking its declared size.

    ``what`` names an unnamed tensor in messages (e.g. "attribute 'value' of node 'c0'").
    """
    who = what if (what and not t.name) else f"tensor {t.name!r}"
    dtype = tensor_dtype(t, label, who)
    numel, nbytes = check_declared_size(who, t.dims, dtype, label)
    if t.data_location == TensorProto.EXTERNAL:
        from .external_data import read_external

        if dtype == "string":
            raise ModelLoadError(f"{label}: {who}: tensors of strings cannot use external data")
        buf = read_external(t, nbytes, base_dir, label)
        return array_from_raw(buf, dtype, t.dims, t.name)
    _inline_check(t, who, dtype, numel, nbytes, label)
    if dtype == "string":  # str where UTF-8, undecodable bytes kept through surrogateescape
        arr = np.empty(numel, dtype=object)
        arr[:] = [_decode_str(b) for b in t.string_data]
        return arr.reshape(tuple(int(d) for d in t.dims))
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:
        raise ModelLoadError(f"{label}: {who} cannot be decoded: {_first_line(exc)}") from exc


def sparse_to_array(sp, *, label: str, base_dir: Path | None = None, what: str = "") -> np.ndarray:
    """Densify a ``SparseTensorProto`` (values + linear or coordinate indices)."""
    who = f"sparse tensor {sp.values.name!r}" if sp.values.name else (what or "sparse tensor")
    values = tensor_to_array(sp.values, label=label, base_dir=base_dir, what=f"values of {who}")
    indices = tensor_to_array(sp.indices, label=label, base_dir=base_dir, what=f"indices of {who}")
    indices = indices.astype(np.int64, copy=False)
    dtype = dtypes.from_numpy(values.dtype)
    numel, _ = check_declared_size(who, sp.dims, dtype, label)
    shape = tuple(int(d) for d in sp.dims)
    nnz = values.size
    dense = np.zeros(numel, dtype=values.dtype)
    if indices.ndim == 1 and indices.size == nnz:
        flat = indices
    elif indices.ndim == 2 and indices.shape == (nnz, len(shape)):
        if np.any(indices < 0) or np.any(indices >= np.array(shape, np.int64)):
            raise ModelLoadError(f"{label}: {who} has indices outside its shape {list(shape)}")
        flat = np.ravel_multi_index(tuple(indices.T), shape) if nnz else np.zeros(0, np.int64)
    else:
        raise ModelLoadError(f"{label}: {who} has indices of shape {list(indices.shape)} "
                             f"for {nnz} values")
    if np.any(flat < 0) or np.any(flat >= max(numel, 1)) or (numel == 0 and nnz):
        raise ModelLoadError(f"{label}: {who} has indices outside its shape {list(shape)}")
    dense[flat] = values.reshape(-1)
    return dense.reshape(shape)


def array_to_tensor(arr: np.ndarray, name: str) -> TensorProto:
    """A ``TensorProto`` holding ``arr`` inline (strings as UTF-8)."""
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind in "US":
        enc = [x.encode("utf-8", "surrogateescape") if isinstance(x, str) else bytes(x) for x in arr.reshape(-1)]
        t = TensorProto(name=name, data_type=TensorProto.STRING, dims=arr.shape)
        t.string_data.extend(enc)
        return t
    if dtypes.from_numpy(arr.dtype) in _PACKED_4BIT | _PACKED_2BIT:
        return numpy_helper.from_array(arr, name)
    t = TensorProto(name=name, data_type=dtypes.to_onnx(dtypes.from_numpy(arr.dtype)), dims=arr.shape)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    t.raw_data = np.ascontiguousarray(arr).tobytes()
    return t


def _decode_str(x):
    return x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else x


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__
