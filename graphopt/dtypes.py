"""Element types of the IR, and their NumPy and ONNX equivalents.

The IR names a dtype by a short string (``"float32"``); this module maps it to
a NumPy dtype (``bfloat16`` and the float8 types come from ``ml_dtypes`` when it
is installed, which onnx depends on) and to ONNX's ``TensorProto`` code, which is
hard-coded here so that ``import graphopt`` never needs onnx.

>>> to_numpy("float16")
dtype('float16')
>>> from_onnx(1)
'float32'
"""
from __future__ import annotations

import numpy as np

from .errors import GraphoptError

# name -> ONNX TensorProto.DataType code
ONNX_CODES: dict[str, int] = {
    "float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6,
    "int64": 7, "string": 8, "bool": 9, "float16": 10, "float64": 11,
    "uint32": 12, "uint64": 13, "complex64": 14, "complex128": 15,
    "bfloat16": 16, "float8e4m3fn": 17, "float8e4m3fnuz": 18, "float8e5m2": 19,
    "float8e5m2fnuz": 20, "uint4": 21, "int4": 22, "float4e2m1": 23,
    "float8e8m0": 24, "uint2": 25, "int2": 26,
}
_FROM_ONNX = {code: name for name, code in ONNX_CODES.items()}

FLOAT_TYPES = frozenset({"float16", "bfloat16", "float32", "float64", "float8e4m3fn",
                         "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz", "float8e8m0"})
INT_TYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})

_ML_DTYPES = {"bfloat16": "bfloat16", "float8e4m3fn": "float8_e4m3fn",
              "float8e4m3fnuz": "float8_e4m3fnuz", "float8e5m2": "float8_e5m2",
              "float8e5m2fnuz": "float8_e5m2fnuz", "int4": "int4", "uint4": "uint4",
              "float4e2m1": "float4_e2m1fn", "float8e8m0": "float8_e8m0fnu", "int2": "int2", "uint2": "uint2"}


def _ml_dtype(name: str):
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes ships with onnx
        raise GraphoptError(f"dtype {name} needs the ml_dtypes package") from exc
    return np.dtype(getattr(ml_dtypes, _ML_DTYPES[name]))


def to_numpy(name: str) -> np.dtype:
    """The NumPy dtype of an IR dtype name."""
    if name in _ML_DTYPES:
        return _ml_dtype(name)
    if name == "string":
        return np.dtype(object)
    try:
        return np.dtype(name)
    except TypeError as exc:
        raise GraphoptError(f"unknown dtype {name!r}") from exc


def from_numpy(dtype) -> str:
    """The IR dtype name of a NumPy dtype (``np.float32`` -> ``"float32"``)."""
    dt = np.dtype(dtype)
    if dt == object or dt.kind in "US":
        return "string"
    if dt.name in ("bool", "float16", "float32", "float64") or dt.name in INT_TYPES:
        return dt.name
    for ir_name, ml_name in _ML_DTYPES.items():
        if dt.name == ml_name:
            return ir_name
    if dt.name in ("complex64", "complex128"):
        return dt.name
    raise GraphoptError(f"unsupported NumPy dtype {dt}")


def from_onnx(code: int) -> str:
    try:
        return _FROM_ONNX[int(code)]
    except KeyError:
        raise GraphoptError(f"unsupported ONNX element type {code}") from None


def to_onnx(name: str) -> int:
    return ONNX_CODES[name]


def is_float(name: str) -> bool:
    return name in FLOAT_TYPES
