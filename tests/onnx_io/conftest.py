"""Small ONNX models made with onnx.helper, and a way to run them in onnxruntime."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture
def vi():
    """``vi("x", [2, 3])``: a float tensor value info."""
    return _vi


@pytest.fixture
def make_model():
    """``make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8, **model_fields)``."""

    def make(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8, name="g", extra_opsets=(), **kw):
        if isinstance(initializers, dict):
            inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()]
        else:  # TensorProtos
            inits = list(initializers)
        g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
        imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        return helper.make_model(g, opset_imports=imports, ir_version=ir_version, **kw)

    return make


@pytest.fixture
def ort_run():
    """``ort_run(model_or_path, feeds) -> list of arrays`` on onnxruntime's CPU provider."""

    def run(model, feeds):
        src = model if isinstance(model, (str, bytes)) else (
            str(model) if hasattr(model, "__fspath__") else model.SerializeToString())
        sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)

    return run


@pytest.fixture
def conv_net(make_model, vi):
    """Conv -> Relu -> Flatten -> Gemm with a symbolic batch dim ``N``."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "B": rng.standard_normal(4).astype(np.float32),
             "G": rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32),
             "C": rng.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flat"),
             helper.make_node("Gemm", ["f", "G", "C"], ["y"], transB=1, alpha=0.5, name="fc")]
    return make_model(nodes, [vi("x", ["N", 3, 6, 6])], [vi("y", ["N", 5])], inits,
                      producer_name="unit-test", producer_version="1.2", doc_string="a conv net",
                      model_version=7, domain="org.example")
