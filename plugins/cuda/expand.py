"""Op(x...) => the nodes of Op's ONNX function body, where Op has no CUDA kernel and every
node of the body has one.

Many ONNX ops are defined by a function of other ops (``RMSNormalization``,
``RotaryEmbedding``, ``Attention``, ``GroupNormalization``, ``Swish``, ``Shrink``,
``MeanVarianceNormalization``, ``CenterCropPad``...). Where the backend has no kernel for
such a node, its body, taken from onnx's own schema at the model's opset (a
context-dependent body is built for the node's input types, as onnx's reference
evaluator does) and inlined by ``onnx.inliner``, replaces it when the body lowers to
kernels alone; otherwise the node is left for the host. The body is what the ONNX
standard says the op computes, so nothing is written twice by hand; it is not fused
(a chain of kernels where a dedicated kernel would be one), which fusion passes can
improve where the model runs them first.

>>> g2, done = expand_functions(graph, host_nodes)   # doctest: +SKIP
>>> done                                               # doctest: +SKIP
[('rms_1', 'RMSNormalization')]
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, Node, Value

_INLINE_DOMAIN = "graphopt.inline"  # the body as a model-local function, for onnx's inliner
MAX_ROUNDS = 4  # bodies may use ops that are functions themselves


def _schema(node: Node, opset: int):
    import onnx

    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:  # no such op in onnx (graphopt's own, a custom domain)
        return None


def _type_proto(v: Value):
    from onnx import helper

    return helper.make_tensor_type_proto(dtypes.to_onnx(v.dtype), [int(d) for d in v.type.shape])


def _body(node: Node, np_, opset: int):
    """onnx's FunctionProto of ``node`` at ``opset``, or None."""
    from onnx import FunctionProto

    schema = _schema(node, opset)
    if schema is None:
        return None
    for attr, spec in schema.attributes.items():  # the body may read defaults the node leaves out
        if attr not in {a.name for a in np_.attribute} and spec.default_value and spec.default_value.name:
            np_.attribute.extend([spec.default_value])
    fp = FunctionProto()
    if schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset]
        if not versions:
            return None
        fp.ParseFromString(schema.get_function_with_opset_version(max(versions)))
        return fp
    if schema.has_context_dependent_function:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if not versions:
            return None
        types = [b"" if v is None else _type_proto(v).SerializeToString() for v in node.inputs]
        try:
            fp.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                max(versions), np_.SerializeToString(), types))
        except Exception:  # the builder refuses these attributes/types
            return None
        return fp if fp.node else None
    return None


def _same_ops(fp, m) -> bool:
    """Make the body's opsets the model's (onnx's inliner wants them equal); False for a body
    newer than the model. A body older than the model is read at the model's opset: onnx picks
    that body for the model's opset itself, and the later versions of the ops such bodies use
    (Reshape, Cast, Shape...) add element types, not behaviour."""
    import onnx

    have = {o.domain: o.version for o in m.opset_import}
    want = {o.domain: o.version for o in fp.opset_import}
    if any(d in have and v > have[d] for d, v in want.items()):
        return False
    for d, v in want.items():
        if d not in have:
            m.opset_import.append(onnx.helper.make_opsetid(d, v))
    del fp.opset_import[:]
    fp.opset_import.extend(onnx.helper.make_opsetid(d, have.get(d, v)) for d, v in want.items())
    return True


def function_graph(node: Node) -> Graph | None:
    """The inlined function body of ``node`` as a graph whose inputs are ``in0, in1...`` (the
    node's non-constant inputs, static shapes) and constants ``in<i>`` (its constant inputs),
    outputs ``out0...``; None when onnx defines no body for it or it cannot be built.

    >>> [n.op_type for n in function_graph(swish_node)]     # doctest: +SKIP
    ['Constant', 'CastLike', 'Mul', 'Sigmoid', 'Mul']
    """
    import onnx
    import onnx.inliner

    from graphopt.onnx_io.exporter import to_onnx_model
    from graphopt.onnx_io.importer import from_onnx_model

    if node.subgraphs() or any(v is not None and (v.type is None or not v.type.is_static) for v in node.inputs):
        return None
    root = node.graph.root
    tiny = Graph(f"{node.name}_function")
    tiny.opset_imports = dict(root.opset_imports)
    ins = []
    for i, v in enumerate(node.inputs):
        if v is None:
            ins.append(None)
        elif v.is_const:
            ins.append(tiny.add_initializer(f"in{i}", np.asarray(v.const)))
        else:
            ins.append(tiny.add_input(f"in{i}", v.type))
    n = tiny.make_node(node.op_type, ins, dict(node.attrs), num_outputs=len(node.outputs),
                       output_names=[f"out{i}" for i in range(len(node.outputs))],
                       output_types=[v.type if v.type is not None and v.type.is_static else None
                                     for v in node.outputs], domain=node.domain)
    for v in n.outputs:
        tiny.add_output(v)
    try:
        m = to_onnx_model(tiny)
    except Exception:
        return None
    opset = root.opset_imports.get(node.domain or "", root.opset_imports.get("", 17))
    np_ = m.graph.node[0]
    fp = _body(node, np_, opset)
    if fp is None:
        return None
    if not _same_ops(fp, m):
        return None
    fp.domain, fp.name = _INLINE_DOMAIN, node.op_type
    np_.domain = _INLINE_DOMAIN
    m.opset_import.append(onnx.helper.make_opsetid(_INLINE_DOMAIN, 1))
    m.functions.append(fp)
    try:
        return from_onnx_model(onnx.inliner.inline_local_functions(m), label=f"{node.op_type} function body")
    except Exception:  # a body graphopt cannot import or type
        return None


def splice(graph: Graph, node: Node, body: Graph) -> None:
    """Replace ``node`` in ``graph`` by the nodes of ``body`` (``function_graph``'s naming); the
    node's results keep their names.

    >>> splice(graph, swish_node, function_graph(swish_node))   # doctest: +SKIP
    """
    vmap: dict[Value, Value | None] = {}
    for v in body.inputs:
        vmap[v] = node.inputs[int(v.name[2:])]
    for name, v in body.initializers.items():
        if name.startswith("in") and name[2:].isdigit():
            vmap[v] = node.inputs[int(name[2:])]
        else:
            vmap[v] = graph.add_initializer(graph.unique_name(f"{node.name}_{name}"), np.asarray(v.const))
    for b in body:
        new = graph.make_node(b.op_type, [None if v is None else vmap[v] for v in b.inputs], dict(b.attrs),
                              num_outputs=len(b.outputs), output_names=[f"{node.name}_{v.name}" for v in b.outputs],
                              output_types=[v.type for v in b.outputs], domain=b.domain,
                              name=f"{node.name}_{b.name or b.op_type.lower()}", before=node)
        vmap.update(zip(b.outputs, new.outputs))
    for old, bv in zip(node.outputs, body.outputs):
        new = vmap[bv]
        if not graph.replace_value(old, new, take_name=True):  # an output the body passes through
            new = graph.make_node("Identity", [new], output_types=[old.type], before=node).output
            graph.replace_value(old, new, take_name=True)
    graph.remove(node, force=True)


def expand_functions(graph: Graph, host_nodes: Callable[[Graph], list[Node]],
                     depth: int = MAX_ROUNDS) -> tuple[Graph, list[tuple[str, str]]]:
    """``graph`` (a copy, when anything changes) with each node of ``host_nodes(graph)`` that has
    an ONNX function body lowering to kernels alone (``host_nodes(body)`` empty, once the body's
    own function ops are expanded, ``depth`` levels down) replaced by that body, and the
    ``(node, op)`` replaced."""
    done: list[tuple[str, str]] = []
    for _ in range(MAX_ROUNDS):
        todo = []
        for node in host_nodes(graph):
            body = function_graph(node)
            if body is not None and depth > 1:  # SoftmaxCrossEntropyLoss's body is NegativeLogLikelihoodLoss's user
                body = expand_functions(body, host_nodes, depth - 1)[0]
            if body is not None and not host_nodes(body):
                todo.append((node.name, body))
        if not todo:
            break
        graph = graph.clone()
        by_name = {n.name: n for n in graph}
        for name, body in todo:
            done.append((name, by_name[name].qualified_op))
            splice(graph, by_name[name], body)
    return graph, done
