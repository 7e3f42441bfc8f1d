"""One helper for every op test: run a single node on graphopt's NumPy reference and on
an oracle (onnx's ReferenceEvaluator, or onnxruntime where the reference is known to
differ from the spec), and compare values, dtypes and the inferred output types.

>>> check_op("Relu", [np.array([-1.0, 2.0], np.float32)])   # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from graphopt import dtypes
from graphopt.builder import GraphBuilder
from graphopt.ops.registry import infer_node
from graphopt.plugins.cpu import run_reference

TOL = {"float32": (1e-4, 1e-5), "float16": (1e-3, 1e-3), "float64": (1e-7, 1e-9)}


def _onnx_attr_value(v):
    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v)
    return v


def onnx_single_node(op_type, inputs, attrs, n_outputs, opset, consts, in_shapes, domain=""):
    """The same node as a one-node ONNX model (initializers for ``consts``, omitted inputs as "")."""
    names, graph_inputs, inits = [], [], []
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if i in consts:
            inits.append(numpy_helper.from_array(np.asarray(a), name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(in_shapes.get(i, np.shape(a)))))
    outs = [f"out{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, domain=domain,
                            **{k: _onnx_attr_value(v) for k, v in (attrs or {}).items()})
    graph = helper.make_graph([node], "single", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def run_oracle(model, feeds, oracle="ref"):
    if oracle == "ref":
        return ReferenceEvaluator(model).run(None, feeds)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def build_single_node(op_type, inputs, attrs, n_outputs, opset, consts, in_shapes):
    """The node built with GraphBuilder (inference runs as it is appended)."""
    b = GraphBuilder("single", opset=opset)
    vals = []
    for i, a in enumerate(inputs):
        if a is None:
            vals.append(None)
        elif i in consts:
            vals.append(b.const(np.asarray(a), f"in{i}"))
        else:
            a = np.asarray(a)
            vals.append(b.input(f"in{i}", in_shapes.get(i, a.shape), dtypes.from_numpy(a.dtype)))
    # make_node rather than b.op: ONNX attributes may be called num_outputs (Split)
    node = b.graph.make_node(op_type, vals, dict(attrs or {}), num_outputs=n_outputs)
    infer_node(node)
    outs = node.outputs
    for k, o in enumerate(outs):
        b.output(o, f"out{k}")
    return b.graph, outs


def check_types(values, results, exact: bool, expect=None):
    """Inferred types against what the kernel produced: same dtype; same shape where the
    inference knows it (all of it when ``exact``); ``expect`` pins the inferred shapes."""
    for k, (v, r) in enumerate(zip(values, results)):
        r = np.asarray(r)
        assert v.type is not None, f"output {k}: no inferred type"
        assert v.type.dtype == dtypes.from_numpy(r.dtype), f"output {k}: inferred {v.type}, got {r.dtype}"
        if expect is not None and expect[k] is not None:
            assert v.type.shape == tuple(expect[k]), f"output {k}: inferred {v.type.shape}, expected {expect[k]}"
        if exact:
            assert v.type.shape == r.shape, f"output {k}: inferred {v.type.shape}, got {r.shape}"
        elif v.type.shape is not None:
            assert len(v.type.shape) == r.ndim, f"output {k}: inferred {v.type.shape}, got {r.shape}"
            for d, n in zip(v.type.shape, r.shape):
                assert not isinstance(d, int) or d == n, f"output {k}: inferred {v.type.shape}, got {r.shape}"


def check_op(op_type, inputs, attrs=None, *, opset=17, consts=None, n_outputs=1, oracle="ref",
             in_shapes=None, expect_shapes=None, exact_types=None, rtol=None, atol=None):
    """Run ``op_type`` on ``inputs`` on both sides and compare everything; returns graphopt's outputs.

    ``consts``: input indices that become initializers (default: the integer ones, which are
    shape-like and must be constant for static inference). ``in_shapes``: declared shapes of
    graph inputs (symbolic dims test inference). ``expect_shapes``: the inferred shapes to
    require. Types must be exact when every input shape is static, unless ``exact_types=False``.
    """
    inputs = [None if a is None else np.asarray(a) for a in inputs]
    if consts is None:
        consts = {i for i, a in enumerate(inputs) if a is not None and a.dtype.kind in "iu"}
    consts = set(consts)
    in_shapes = dict(in_shapes or {})
    graph, outs = build_single_node(op_type, inputs, attrs, n_outputs, opset, consts, in_shapes)
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if a is not None and i not in consts}
    got = run_reference(graph, feeds)
    model = onnx_single_node(op_type, inputs, attrs, n_outputs, opset, consts, in_shapes)
    want = run_oracle(model, feeds, oracle)
    compare(got, want, rtol, atol)
    check_types(outs, got, exact=not in_shapes if exact_types is None else exact_types, expect=expect_shapes)
    return got


def compare(got, want, rtol=None, atol=None):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, f"output {k}: dtype {g.dtype}, oracle {w.dtype}"
        assert g.shape == w.shape, f"output {k}: shape {g.shape}, oracle {w.shape}"
        if g.dtype.kind == "f":
            rt, at = TOL.get(g.dtype.name, (1e-4, 1e-5))
            np.testing.assert_allclose(g, w, rtol=rtol or rt, atol=atol or at, err_msg=f"output {k}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"output {k}")


def check_model(model: onnx.ModelProto, feeds: dict, oracle="ref"):
    """For nodes with subgraphs: import the ONNX model and compare with the oracle on it."""
    from graphopt.onnx_io import from_onnx_model

    g = from_onnx_model(model)
    got = run_reference(g, feeds)
    compare(got, run_oracle(model, feeds, oracle))
    return g, got


def rand(*shape, dtype=np.float32, seed=0, lo=-1.0, hi=1.0):
    """Deterministic test data."""
    rng = np.random.default_rng(seed + 1000 * len(shape) + sum(shape))
    return rng.uniform(lo, hi, size=shape).astype(dtype)


__all__ = ["check_op", "check_model", "compare", "rand", "onnx_single_node", "run_oracle"]
