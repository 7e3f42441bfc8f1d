"""graphopt -O2 against onnxsim on the sample models (TorchScript export, opset 17,
symbolic batch): graphopt leaves no more nodes than onnxsim, and its model gives
the original's outputs in onnxruntime.

Nodes are counted twice: all of them, and all but ``Constant`` (onnxsim keeps some
constants as nodes, graphopt always makes them initializers); graphopt must not
lose on either count. Tolerance rtol/atol 1e-4: BatchNorm folding reassociates
``(x*w)*f`` into ``x*(w*f)`` (see test_fold_batchnorm).
"""
import collections

import numpy as np
import pytest

import graphopt

onnx = pytest.importorskip("onnx")
onnxsim = pytest.importorskip("onnxsim")
ort = pytest.importorskip("onnxruntime")
models = pytest.importorskip("samples.models")

SAMPLES = ["mnist_convnet", "resnet_style", "mobilenet_v2_style", "bert_style"]


def counts(node_ops):
    ops = list(node_ops)
    return len(ops), sum(op != "Constant" for op in ops)


def run_ort(model, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare our graph, not ORT's
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    return {name: models.export_onnx(name, folder / f"{name}.onnx", opset=17) for name in SAMPLES}


@pytest.mark.parametrize("name", SAMPLES)
def test_graphopt_leaves_no_more_nodes_than_onnxsim_and_keeps_outputs(name, exported):
    from graphopt.onnx_io import to_onnx_model

    original = onnx.load(str(exported[name]))
    simplified, ok = onnxsim.simplify(original)
    assert ok
    optimized = graphopt.optimize(str(exported[name]), level=2)
    ours = counts(n.op_type for n in optimized)
    theirs = counts(n.op_type for n in simplified.graph.node)
    left = collections.Counter(n.op_type for n in optimized)
    assert ours[0] <= theirs[0] and ours[1] <= theirs[1], (
        f"{name}: graphopt {ours} nodes, onnxsim {theirs}; graphopt left {dict(left)}, onnxsim left "
        f"{dict(collections.Counter(n.op_type for n in simplified.graph.node))}")

    feeds = {k: v.numpy() for k, v in zip([i.name for i in original.graph.input],
                                          models.example_inputs(name, 2))}
    expected = run_ort(original, feeds)
    got = run_ort(to_onnx_model(optimized), feeds)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
