"""Run onnxsim (onnx-simplifier) on the model, only when asked for by name.

    Graph => to_onnx_model => onnxsim.simplify => from_onnx_model => Graph

``graphopt optimize m.onnx --passes +onnxsim`` runs it before the level's own
passes (it is first by ``order``), ``--passes onnxsim,fold_constants`` runs
exactly those; the default pipelines of -O1...-O3 never include it (its level,
4, is above them all). The result replaces the graph's contents in place
(inputs, initializers, nodes, outputs; the model's metadata and ``graph.meta``
stay). onnxsim's answer is adopted only when it differs from what it was given,
and the pass does not run onnxsim again on a graph it has already simplified
(the pass manager's fixed point would otherwise call it every iteration).

A model onnxsim cannot handle (it raises, or says its check failed) is left as
it was, with the reason in the report. Without the onnxsim package the pass
fails with one line saying how to install it.
"""
from __future__ import annotations

import importlib
from collections import Counter

from graphopt.errors import GraphoptError
from graphopt.ir import Graph
from graphopt.passmanager import ON_REQUEST, PassContext, PassResult, register_pass

RULE = "onnxsim_simplify"
_DONE = "onnxsim_signature"


def is_available() -> tuple[bool, str]:
    """``(True, "")`` when onnxsim can be imported, else ``(False, why)``."""
    try:
        importlib.import_module("onnxsim")
    except ImportError as exc:
        return False, f"the onnxsim pass needs the onnxsim package (pip install onnxsim): {exc}"
    return True, ""


def _signature(graph: Graph) -> tuple:
    return tuple(n.op_type for n in graph), len(graph.initializers)


@register_pass("onnxsim", opt_level=ON_REQUEST, kind="graph", order=5)
def onnxsim_pass(graph: Graph, ctx: PassContext) -> PassResult:
    """Run onnxsim.simplify on the model (only when named: --passes +onnxsim)."""
    ok, why = is_available()
    if not ok:
        raise GraphoptError(why)
    if graph.parent is not None or graph.meta.get(_DONE) == _signature(graph):
        return PassResult(False)
    import onnxsim

    from graphopt.onnx_io import from_onnx_model, to_onnx_model

    try:
        simplified, checked = onnxsim.simplify(to_onnx_model(graph))
    except Exception as exc:  # onnxsim's own failure: the model stays as it was
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PassResult(False, refused=Counter({(RULE, f"onnxsim failed: {msg[:200]}"): 1}))
    if not checked:
        return PassResult(False, refused=Counter({(RULE, "onnxsim could not check its result"): 1}))
    new = from_onnx_model(simplified)
    before = len(graph)
    changed = _signature(new) != _signature(graph)
    if changed:
        graph.adopt(new)
    graph.meta[_DONE] = _signature(graph)
    return PassResult(changed, {"nodes_removed": max(before - len(graph), 0)} if changed else {})


__all__ = ["is_available", "onnxsim_pass"]
