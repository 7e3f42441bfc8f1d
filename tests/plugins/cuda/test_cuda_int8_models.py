"""Whole int8 models under cuda-emu against the CPU reference's int8 run: a hand-built
ConvNet (tests/quantize's, through the public ``graphopt.compile`` path) and every sample
model of samples/models.py, each quantized with ``quantize_static``, lowered with
``lower_int8`` and compiled in one batch (one host compile).

Convolutional models are int8 from the input's QuantizeLinear to the last QGemm (plus
float pooling, whose rounding matches here), so their outputs agree bit for bit. The
transformers keep LayerNorm, Softmax and GELU in float32 between int8 islands; there the
house float32 tolerance holds for the outputs."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import graphopt
from cuda_harness import needs_emu
from test_cuda_models import sample_feeds
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.quantize import lower_int8, quantize_static

pytestmark = needs_emu
ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ["mnist_convnet", "vgg_style", "resnet_style", "mobilenet_v2_style", "bert_style", "gpt_style_block"]
FLOAT_ISLANDS = {"bert_style", "gpt_style_block"}


def _quant_models():
    spec = importlib.util.spec_from_file_location("quant_models", ROOT / "tests" / "quantize" / "quant_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hand_built_convnet_through_compile_is_bit_exact():
    qc = _quant_models()
    qg = quantize_static(qc.build_convnet(), qc.batches())
    low = lower_int8(qg)
    model = graphopt.compile(low, backend="cuda-emu")  # -O2 graph passes and the CUDA pipeline on the int8 graph
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = model.run({"x": x})[0]
    np.testing.assert_array_equal(got, run_reference(low, {"x": x})[0])
    ops = [l.node.op_type for l in model.executable.for_feeds({"x": x}).lowered.launches]
    assert ops == ["QuantizeLinear", "QConv", "MaxPool", "QConv", "QAdd", "QGemm"]


@pytest.fixture(scope="module")
def int8_samples(tmp_path_factory):
    pytest.importorskip("torch")
    models = pytest.importorskip("samples.models")
    be = get_backend("cuda-emu")
    out = {}
    with kernel_batch():
        for name in SAMPLES:
            path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
            models.export_onnx(name, path)
            g = graphopt.load(str(path))
            low = lower_int8(quantize_static(g, [sample_feeds(g, seed=s) for s in (1, 2)]))
            feeds = sample_feeds(g, seed=3)
            exe = be.compile(low).for_feeds(feeds)  # a dynamic batch, fixed
            out[name] = (low, feeds, exe)
    return out


@pytest.mark.parametrize("name", SAMPLES)
def test_int8_sample_model_matches_cpu_int8_run(int8_samples, name):
    low, feeds, exe = int8_samples[name]
    fused = {n.op_type for n in low if n.domain == "ai.graphopt"}
    assert fused & {"QConv", "QGemm", "QMatMul"}  # the model really runs int8 layers
    got, want = exe.run(feeds), run_reference(low, feeds)
    for a, r in zip(got, want):
        if name in FLOAT_ISLANDS:
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * float(np.abs(r).max()))
        else:
            np.testing.assert_array_equal(a, r)
    kinds = {type(l.kernel.spec).__name__ for l in exe.lowered.launches}
    assert "Int8GemmSpec" in kinds
