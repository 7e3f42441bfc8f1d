"""Input shapes and feeds for the verbs that run a model (run, bench, verify, compare, compile, quantize).

``--input-shape NAME:D0,D1,...`` (repeatable) fixes one input's shape; ``--batch N``
sizes each input's *leading* symbolic dim (default 1). Any other symbolic dim
must be given: it is an error naming the input, the dim and its symbol, never
filled silently (a BERT export's sequence length is not its batch size).

>>> parse_input_shapes(["input_ids:1,128", "pixel_values:2,3,224,224"])
{'input_ids': (1, 128), 'pixel_values': (2, 3, 224, 224)}
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x:1,3,224,224"]`` -> ``{"x": (1, 3, 224, 224)}``; ``"x:"`` is a scalar. The name is
    everything before the last ``:`` (ONNX names such as ``input:0`` keep their colon)."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items or ():
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise InputError(f"--input-shape {item!r}: expected NAME:D0,D1,... (e.g. input_ids:1,128)")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip()) if dims.strip() else ()
        except ValueError:
            raise InputError(f"--input-shape {item!r}: dims must be integers (e.g. {name}:1,128)") from None
        if any(d < 0 for d in shape):
            raise InputError(f"--input-shape {item!r}: dims must not be negative")
        if name in out and out[name] != shape:
            raise InputError(f"--input-shape gives input {name!r} twice ({list(out[name])} and {list(shape)})")
        out[name] = shape
    return out


def resolve_shapes(graph, input_shapes: Mapping[str, tuple[int, ...]], batch: int = 1) -> dict[str, tuple[int, ...]]:
    """A concrete shape for every input of ``graph`` (see the module docstring), or an ``InputError``
    naming what is missing or inconsistent."""
    names = [v.name for v in graph.inputs]
    for name in input_shapes:
        if name not in names:
            raise InputError(f"--input-shape {name}: the model has no input {name!r} "
                             f"(its inputs: {', '.join(names)})")
    bound: dict[str, tuple[int, str]] = {}  # symbol -> (size, who set it)

    def bind(sym: str, size: int, who: str) -> None:
        have = bound.setdefault(sym, (size, who))
        if have[0] != size:
            raise InputError(f"{who} sets symbolic dim {sym!r} to {size}, but {have[1]} set it to {have[0]}")

    for v in graph.inputs:  # given shapes first: they bind symbols for the inputs that follow
        if v.name not in input_shapes:
            continue
        given, t = input_shapes[v.name], v.type
        if t is None or t.shape is None:
            continue
        if len(given) != len(t.shape):
            raise InputError(f"--input-shape {v.name}: {len(given)} dims given, the model's input is {t} "
                             f"(rank {len(t.shape)})")
        for i, (d, n) in enumerate(zip(t.shape, given)):
            if isinstance(d, int) and d != n:
                raise InputError(f"--input-shape {v.name}: dim {i} is {n}, the model fixes it to {d} ({t})")
            if isinstance(d, str):
                bind(d, n, f"--input-shape {v.name}")
    out: dict[str, tuple[int, ...]] = {}
    for v in graph.inputs:
        if v.name in input_shapes:
            out[v.name] = tuple(input_shapes[v.name])
            continue
        t = v.type
        if t is None or t.shape is None:
            raise InputError(f"input {v.name!r} has no known shape: give it with --input-shape {v.name}:D0,D1,...")
        dims = []
        for i, d in enumerate(t.shape):
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and d in bound:
                dims.append(bound[d][0])
            elif i == 0:
                if isinstance(d, str):
                    bind(d, batch, "--batch")
                dims.append(batch)
            else:
                sym = f" ({d!r})" if d else ""
                example = ",".join(str(x) if isinstance(x, int) else ("N" if j else str(batch))
                                   for j, x in enumerate(t.shape))
                raise InputError(f"input {v.name!r} dim {i}{sym} is symbolic: give its size with "
                                 f"--input-shape {v.name}:{example}")
        out[v.name] = tuple(dims)
    return out


@contextlib.contextmanager
def _typed_as(graph, shapes: Mapping[str, tuple[int, ...]]):
    """The graph's inputs typed with ``shapes`` inside the block (random_feeds reads the types)."""
    from ..ir import TensorType

    saved = [(v, v.type) for v in graph.inputs]
    try:
        for v in graph.inputs:
            v.type = TensorType(v.type.dtype, shapes[v.name])
        yield graph
    finally:
        for v, t in saved:
            v.type = t


def read_npz(path: str, what: str = "inputs") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file by name; a missing or unreadable file is one line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such {what} file")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None


def make_feeds(graph, inputs_path: str | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
               batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds read from ``inputs_path`` (checked against ``input_shapes``), else random (seeded)
    ones of the resolved shapes."""
    input_shapes = dict(input_shapes or {})
    if inputs_path is not None:
        feeds = read_npz(inputs_path)
        for name, shape in input_shapes.items():
            if name in feeds and tuple(feeds[name].shape) != tuple(shape):
                raise InputError(f"{inputs_path}: input {name!r} has shape {list(feeds[name].shape)}, "
                                 f"--input-shape says {list(shape)}")
        return feeds
    from ..testing import random_feeds

    shapes = resolve_shapes(graph, input_shapes, batch)
    with _typed_as(graph, shapes):
        return random_feeds(graph, seed=seed)


def specialize(graph, shapes: Mapping[str, tuple[int, ...]]):
    """A copy of ``graph`` whose inputs have the static ``shapes`` (the rest re-inferred), for
    ``compile --input-shape``: kernels are then generated for those shapes now."""
    from ..ir import TensorType
    from ..ops.registry import infer_graph

    g = graph.clone()
    for v in g.inputs:
        v.type = TensorType(v.type.dtype, tuple(shapes[v.name]))
    infer_graph(g)
    return g
