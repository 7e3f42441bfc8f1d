"""Helpers for checking that a rewrite keeps a graph's numbers: random feeds,
before/after comparison on the NumPy reference, and running passes by name.

>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", ("n", 3))
>>> _ = b.output(b.op("Relu", b.op("Identity", x)), "y")
>>> before = b.graph.clone()
>>> report = run_passes(b.graph, ["eliminate_noops"])
>>> [n.op_type for n in b.graph]
['Relu']
>>> outputs = assert_same_outputs(before, b.graph)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from . import dtypes
from .ir import Graph, Value

# (rtol, atol) per output dtype: DESIGN.md "Verification is part of the product"
_TOLERANCES = {
    "float32": (1e-4, 1e-5),
    "float64": (1e-7, 1e-9),
    "float16": (1e-3, 1e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
    "int8": (0.0, 1.0),   # quantized paths: within one quantization step
    "uint8": (0.0, 1.0),
}


def tolerance_for(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing outputs of ``dtype`` (IR name or NumPy dtype).

    >>> tolerance_for("float32"), tolerance_for("int64")
    ((0.0001, 1e-05), (0.0, 0.0))
    """
    name = dtype if isinstance(dtype, str) and dtype in dtypes.ONNX_CODES else dtypes.from_numpy(dtype)
    if name in _TOLERANCES:
        return _TOLERANCES[name]
    if name.startswith("float8") or name == "float4e2m1":
        return (0.25, 0.25)  # a few mantissa bits: one step of the coarsest format
    return (0.0, 0.0)


def _int_high(v: Value, default: int) -> int:
    """An exclusive upper bound for an int input: indices stay inside what they index."""
    high = default
    for node, i in v.uses:
        if node.op_type in ("Gather", "GatherElements") and i == 1:
            data = node.input(0)
            axis = node.attrs.get("axis", 0)
            shape = data.shape if data is not None else None
            if shape and -len(shape) <= axis < len(shape) and isinstance(shape[axis], int):
                high = min(high, max(shape[axis], 1))
    return high


def random_feeds(graph: Graph, seed: int = 0, batch: int = 1, dims: Mapping[str, int] | None = None,
                 int_high: int = 10) -> dict[str, np.ndarray]:
    """Random inputs matching the graph's input types.

    Symbolic or unknown dims are bound to ``dims[name]`` or else ``batch``; floats
    are standard normal, ints lie in ``[0, int_high)`` (and inside the dim they
    index when an input feeds a ``Gather``), bools are fair coins.

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); _ = b.output(b.op("Neg", b.input("x", ("n", 2))), "y")
    >>> random_feeds(b.graph, batch=3)["x"].shape
    (3, 2)
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    feeds = {}
    for v in graph.inputs:
        t = v.type
        if t is None or t.shape is None:
            raise ValueError(f"input {v.name!r} has no known shape: pass feeds explicitly")
        shape = tuple(d if isinstance(d, int) else dims.get(d, batch) for d in t.shape)
        dt = dtypes.to_numpy(t.dtype)
        if t.dtype == "bool":
            a = rng.random(shape) < 0.5
        elif t.dtype in dtypes.INT_TYPES:
            a = rng.integers(0, _int_high(v, int_high), shape)
        elif t.dtype == "string":
            a = np.array([f"s{k}" for k in rng.integers(0, int_high, int(np.prod(shape)))], dtype=object)
            a = a.reshape(shape)
        elif t.dtype.startswith("complex"):
            a = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape)
        feeds[v.name] = np.asarray(a).astype(dt)
    return feeds


def compare_outputs(names: Sequence[str], expected: Sequence[np.ndarray], got: Sequence[np.ndarray],
                    rtol: float | None = None, atol: float | None = None) -> list[str]:
    """One line per mismatching output (dtype, shape or values), empty when all agree."""
    problems = []
    if len(expected) != len(got):
        return [f"{len(expected)} outputs before, {len(got)} after"]
    for name, e, g in zip(names, expected, got):
        e, g = np.asarray(e), np.asarray(g)
        if e.dtype != g.dtype or e.shape != g.shape:
            problems.append(f"output {name!r}: {e.dtype}{list(e.shape)} before, {g.dtype}{list(g.shape)} after")
            continue
        if e.dtype == object:
            if not np.array_equal(e, g):
                problems.append(f"output {name!r}: strings differ")
            continue
        rt, at = tolerance_for(e.dtype)
        if e.dtype.kind in "fc":  # explicit tolerances are for floats; ints stay exact (int8: one step)
            rt = rt if rtol is None else rtol
            at = at if atol is None else atol
        e64, g64 = e.astype(np.complex128 if e.dtype.kind == "c" else np.float64), \
            g.astype(np.complex128 if g.dtype.kind == "c" else np.float64)
        if np.allclose(g64, e64, rtol=rt, atol=at, equal_nan=True):
            continue
        both = np.isfinite(e64) & np.isfinite(g64)
        diff = np.abs(e64 - g64)[both]
        rel = diff / np.maximum(np.abs(e64[both]), 1e-30)
        problems.append(f"output {name!r}: max abs error {diff.max() if diff.size else float('nan'):.3g}, "
                        f"max rel error {rel.max() if rel.size else float('nan'):.3g} "
                        f"(rtol={rt:g}, atol={at:g}; non-finite mismatch: "
                        f"{int(np.sum(np.isfinite(e64) != np.isfinite(g64)))})")
    return problems


def assert_same_outputs(graph_before: Graph, graph_after: Graph, feeds: Mapping[str, np.ndarray] | None = None,
                        rtol: float | None = None, atol: float | None = None, *, batch: int = 2,
                        seed: int = 0) -> list[np.ndarray]:
    """Run both graphs on the CPU reference and assert equal dtypes, shapes and values.

    Tolerances default by dtype (``tolerance_for``: float32 rtol 1e-4 / atol 1e-5);
    ``rtol``/``atol`` override them for floating outputs. Integers and bools are exact.
    Returns the outputs of ``graph_after``.

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); _ = b.output(b.op("Neg", b.input("x", (2,))), "y")
    >>> _ = assert_same_outputs(b.graph, b.graph.clone())
    """
    from .plugins.cpu.backend import run_reference

    if feeds is None:
        feeds = random_feeds(graph_before, seed=seed, batch=batch)
    names_before = [v.name for v in graph_before.outputs]
    names_after = [v.name for v in graph_after.outputs]
    assert names_before == names_after, f"output names changed: {names_before} -> {names_after}"
    expected = run_reference(graph_before, feeds)
    got = run_reference(graph_after, feeds)
    problems = compare_outputs(names_before, expected, got, rtol, atol)
    assert not problems, "; ".join(problems)
    return got


def run_passes(graph: Graph, names: Sequence[str], *, fixed_point: bool = True, **ctx):
    """Run the named passes on ``graph`` in place (``verify=True`` unless given) and return the ``Report``.

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); x = b.input("x", (2,)); dead = b.op("Neg", x); y = b.output(b.op("Relu", x), "y")
    >>> run_passes(b.graph, ["eliminate_dead_code"]).nodes_after
    1
    """
    from .passmanager import PassContext, PassManager

    ctx.setdefault("verify", True)
    return PassManager(list(names), PassContext(**ctx), fixed_point=fixed_point).run(graph)


__all__ = ["tolerance_for", "random_feeds", "compare_outputs", "assert_same_outputs", "run_passes"]
