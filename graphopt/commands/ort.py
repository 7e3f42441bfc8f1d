"""onnxruntime as the ``graphopt`` command uses it: a peer to compare with and time against,
its log quiet unless ``--verbose``, its load and run errors one line naming the model.

>>> sess = session("model.onnx")                     # doctest: +SKIP
>>> outs = run(sess, "model.onnx", {"x": x})          # doctest: +SKIP
"""
from __future__ import annotations

import os

from ..errors import GraphoptError, InputError

QUIET, VERBOSE = 3, 1  # onnxruntime severities: 3 = errors only, 1 = info


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise GraphoptError("this needs onnxruntime (pip install graphopt[onnx])") from None
    return ort


def quiet(verbose: bool = False) -> None:
    """Keep onnxruntime's process-wide log to errors (its warnings otherwise reach the terminal)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    ort.set_default_logger_severity(VERBOSE if verbose else QUIET)


def session(model, *, verbose: bool = False, optimize: bool = False, threads: int | None = None):
    """An ``InferenceSession`` on the CPU; ``optimize=False`` runs the graph as written."""
    ort = _ort()
    quiet(verbose)
    so = ort.SessionOptions()
    so.log_severity_level = VERBOSE if verbose else QUIET
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model) if isinstance(model, os.PathLike) else model, so,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise GraphoptError(f"{_name(model)}: onnxruntime cannot load it: {_first_line(exc)}") from None


def run(sess, model, feeds: dict) -> list:
    """``sess.run`` with the feeds checked against its inputs first, so a wrong name, rank, dim or
    dtype is one line naming the input rather than onnxruntime's message."""
    import numpy as np

    expected = {i.name: i for i in sess.get_inputs()}
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r} (the model's inputs are: {', '.join(expected)})")
    for name, i in expected.items():
        if name not in feeds:
            raise InputError(f"missing input {name!r} ({i.type}{list(i.shape)})")
        a = np.asarray(feeds[name])
        if a.ndim != len(i.shape) or any(isinstance(d, int) and d != n for d, n in zip(i.shape, a.shape)):
            raise InputError(f"input {name!r} has shape {tuple(a.shape)}, {_name(model)} expects {list(i.shape)}")
    try:
        return sess.run(None, feeds)
    except Exception as exc:
        raise GraphoptError(f"{_name(model)}: onnxruntime failed: {_first_line(exc)}") from None


def _name(model) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else "the model"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
