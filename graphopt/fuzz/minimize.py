"""Shrink a failing ONNX model to the few nodes that still fail.

``minimize(model, feeds, fails)`` keeps a graph that ``fails(model, feeds)``
still says True about, while it

1. keeps a single graph output where one is enough, and moves it up to the
   earliest value that still fails (what computes later values then dies),
2. cuts a value: the value becomes a graph input fed with what it held in the
   original run (so everything that only computed it dies), trying the values
   nearest the outputs first,
3. drops the nodes, inputs and initializers nothing reads any more,

until no step shrinks it further. The values a cut feeds come from one run of
the original model with every intermediate value exposed (onnxruntime, else the
reference evaluator), so a reproducer sees the very numbers that failed.

``fuzz`` minimizes graphopt failures with it and ``bisect`` the sub-graph on
which a pass changes outputs.

>>> small, small_feeds = minimize(model, feeds, lambda m, f: still_wrong(m, f))   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper

Predicate = Callable[[onnx.ModelProto, dict], bool]


def intermediate_values(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """Every value of ``model`` on ``feeds`` by name (graph inputs, initializers, node outputs)."""
    from onnx import numpy_helper

    from .check import run_onnxruntime, run_reference

    values = dict(feeds)
    for t in model.graph.initializer:
        values[t.name] = numpy_helper.to_array(t)
    names = [o for n in model.graph.node for o in n.output if o]
    if not names:
        return values
    types = {**_value_types(model), **{o.name: o for o in model.graph.output}}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    if all(n in types for n in names):
        exposed.graph.output.extend(types[n] for n in names)
        outs, _ = run_onnxruntime(exposed, feeds)
        if outs is not None:
            values.update(zip(names, outs))
            return values
    outs, _ = run_reference(model, feeds, names)
    if outs is not None:
        values.update(zip(names, outs))
    return values


def _value_info(name: str, arr: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the nodes, inputs and initializers that no graph output depends on."""
    g = model.graph
    live = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep))
    inputs = [i for i in g.input if i.name in live]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    inits = [t for t in g.initializer if t.name in live]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    names = {vi.name for vi in out.graph.input}
    del out.graph.value_info[:]
    out.graph.value_info.extend(vi for vi in g.value_info if vi.name in live and vi.name not in names)
    return out


def cut(model: onnx.ModelProto, name: str, arr: np.ndarray) -> onnx.ModelProto:
    """``model`` with value ``name`` as a graph input (its producer no longer feeds it)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        for k, o in enumerate(n.output):
            if o == name:
                n.output[k] = ""  # an omitted optional output: the node may still make the others
    out.graph.input.append(_value_info(name, arr))
    drop = [i for i, n in enumerate(out.graph.node) if not any(n.output)]
    for i in reversed(drop):
        del out.graph.node[i]
    return prune(out)


def _with_output(model: onnx.ModelProto, out: onnx.ValueInfoProto) -> onnx.ModelProto:
    one = onnx.ModelProto()
    one.CopyFrom(model)
    del one.graph.output[:]
    one.graph.output.append(out)
    return prune(one)


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The value infos onnx's shape inference finds (graphopt's own ops: those the model declares)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    return {vi.name: vi for vi in list(inferred.graph.value_info) + list(model.graph.value_info)
            if vi.type.tensor_type.elem_type}


def _feeds_for(model: onnx.ModelProto, values: dict) -> dict:
    return {i.name: values[i.name] for i in model.graph.input}


def minimize(model: onnx.ModelProto, feeds: dict, fails: Predicate, *, max_tries: int = 400,
             values: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """The smallest model (and its feeds) found that still ``fails``; ``model`` if none is smaller.

    >>> small, small_feeds = minimize(model, feeds, fails)   # doctest: +SKIP
    >>> len(small.graph.node) <= len(model.graph.node)        # doctest: +SKIP
    True
    """
    values = values if values is not None else intermediate_values(model, feeds)
    tries = 0

    def attempt(candidate: onnx.ModelProto) -> bool:
        nonlocal tries
        if tries >= max_tries:
            return False
        tries += 1
        if not len(candidate.graph.node) or not len(candidate.graph.output):
            return False
        try:
            return bool(fails(candidate, _feeds_for(candidate, values)))
        except KeyError:  # a value the run could not produce: cannot cut there
            return False

    best = prune(model)
    if len(best.graph.output) > 1:
        for o in list(best.graph.output):
            one = _with_output(best, o)
            if attempt(one):
                best = one
                break
    typed = _value_types(best)
    for name in [o for n in best.graph.node for o in n.output if o]:  # earliest first: the smallest cone
        if name in typed and name not in {o.name for o in best.graph.output}:
            candidate = _with_output(best, typed[name])
            if len(candidate.graph.node) < len(best.graph.node) and attempt(candidate):
                best = candidate
                break
    changed = True
    while changed and tries < max_tries:
        changed = False
        produced = [o for n in best.graph.node for o in n.output if o]
        outputs = {o.name for o in best.graph.output}
        for name in reversed(produced):  # nearest the outputs first: each success removes the most
            if name in outputs or name not in values:
                continue
            candidate = cut(best, name, np.asarray(values[name]))
            if len(candidate.graph.node) < len(best.graph.node) and attempt(candidate):
                best, changed = candidate, True
                break
    return best, _feeds_for(best, values)
