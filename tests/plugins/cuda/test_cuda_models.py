"""End to end under cuda-emu: a small CNN and a small transformer block match the CPU
reference, both built by hand and (when samples/models.py is there) exported from
PyTorch through ONNX and compiled with graphopt.compile."""
import functools

import numpy as np
import pytest

import graphopt
from cuda_harness import needs_emu
from graphopt.builder import GraphBuilder
from graphopt.ops.registry import get_schema
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference

pytestmark = needs_emu


def w(*shape, seed, scale=0.2):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def small_cnn():
    """conv-bn-relu, a residual block with a depthwise conv, pooling, a classifier."""
    b = GraphBuilder("small_cnn")
    x = b.input("x", (2, 3, 16, 16))
    h = b.op("Conv", x, w(8, 3, 3, 3, seed=1), w(8, seed=2), pads=[1, 1, 1, 1], strides=[2, 2])
    h = b.op("Relu", b.op("BatchNormalization", h, w(8, seed=3) + 1, w(8, seed=4), w(8, seed=5),
                          np.abs(w(8, seed=6)) + 1))
    r = b.op("Relu", b.op("Conv", h, w(8, 1, 3, 3, seed=7), w(8, seed=8), pads=[1, 1, 1, 1], group=8))
    r = b.op("Conv", r, w(8, 8, 1, 1, seed=9), w(8, seed=10))
    h = b.op("Relu", b.op("Add", h, r))
    h = b.op("MaxPool", h, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h = b.op("Flatten", b.op("GlobalAveragePool", h), axis=1)
    b.output(b.op("Gemm", h, w(10, 8, seed=11), w(10, seed=12), transB=1), "logits")
    return b.graph, {"x": w(2, 3, 16, 16, seed=0, scale=1.0)}


def transformer_block(batch=2, seq=7, d=32, heads=4, ff=64):
    """Pre-softmax-scaled multi-head attention + FFN with GELU, residuals, post-LayerNorm."""
    b = GraphBuilder("transformer_block", opset=20)
    x = b.input("x", (batch, seq, d))
    dh = d // heads

    def heads_of(t):  # (B, S, D) -> (B, H, S, Dh)
        return b.op("Transpose", b.op("Reshape", t, np.array([batch, seq, heads, dh], np.int64)), perm=[0, 2, 1, 3])

    q = heads_of(b.op("Add", b.op("MatMul", x, w(d, d, seed=1)), w(d, seed=2)))
    k = heads_of(b.op("Add", b.op("MatMul", x, w(d, d, seed=3)), w(d, seed=4)))
    v = heads_of(b.op("Add", b.op("MatMul", x, w(d, d, seed=5)), w(d, seed=6)))
    s = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(1 / np.sqrt(dh)))
    mask = np.triu(np.full((seq, seq), -1e4, np.float32), 1)
    p = b.op("Softmax", b.op("Add", s, mask), axis=-1)
    o = b.op("Reshape", b.op("Transpose", b.op("MatMul", p, v), perm=[0, 2, 1, 3]),
             np.array([batch, seq, d], np.int64))
    o = b.op("Add", b.op("MatMul", o, w(d, d, seed=7)), w(d, seed=8))
    h = b.op("LayerNormalization", b.op("Add", x, o), w(d, seed=9) + 1, w(d, seed=10), axis=-1)
    f = b.op("Gelu", b.op("Add", b.op("MatMul", h, w(d, ff, seed=11)), w(ff, seed=12)))
    f = b.op("Add", b.op("MatMul", f, w(ff, d, seed=13)), w(d, seed=14))
    b.output(b.op("LayerNormalization", b.op("Add", h, f), w(d, seed=15) + 1, w(d, seed=16), axis=-1), "y")
    return b.graph, {"x": w(batch, seq, d, seed=0, scale=1.0)}


def _build_or_skip(build, ops):
    missing = [op for op in ops if get_schema(op) is None]
    if missing:
        pytest.skip(f"ops not in the registry yet: {missing}")
    return build()


CNN_OPS = ("Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm")
BLOCK_OPS = ("MatMul", "Add", "Reshape", "Transpose", "Mul", "Softmax", "LayerNormalization", "Gelu")


@pytest.mark.parametrize("build, ops", [(small_cnn, CNN_OPS), (transformer_block, BLOCK_OPS)],
                         ids=["small_cnn", "transformer_block"])
def test_hand_built_model_matches_reference(build, ops):
    g, feeds = _build_or_skip(build, ops)
    exe = get_backend("cuda-emu").compile(g)
    got = exe.run(feeds)[0]
    want = run_reference(g, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # per-op tolerance holds across these depths
    assert exe.stats["launches"] >= 8 and exe.lowered.plan.peak_bytes < exe.lowered.plan.naive_bytes


def as_float16(g):
    """The same model with float16 inputs, weights and activations."""
    from graphopt.ir import TensorType
    from graphopt.ops.registry import infer_graph

    h = g.clone()
    for v in h.inputs:
        v.type = TensorType("float16", v.type.shape)
    for v in h.initializers.values():
        if v.const.dtype == np.float32:
            v.const = v.const.astype(np.float16)
            v.type = TensorType("float16", v.type.shape)
    for n in h:
        for v in n.outputs:
            v.type = TensorType("float16", v.type.shape) if v.dtype == "float32" else v.type
    infer_graph(h)
    return h


@pytest.mark.parametrize("build, ops", [(small_cnn, CNN_OPS),
                                        (functools.partial(transformer_block, batch=1, seq=5), BLOCK_OPS)],
                         ids=["small_cnn", "transformer_block"])  # the tensor-core twin is slow to emulate
def test_hand_built_model_in_float16_stays_close_to_float32(build, ops):
    g, feeds = _build_or_skip(build, ops)
    h = as_float16(g)
    exe = get_backend("cuda-emu").compile(h)
    got = exe.run({k: v.astype(np.float16) for k, v in feeds.items()})[0]
    want = run_reference(g, feeds)[0]
    assert got.dtype == np.float16
    kinds = {type(l.kernel.spec).__name__ for l in exe.lowered.launches}
    assert "TcMatmulSpec" in kinds  # float16 matrix products run on tensor cores
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=3e-2, atol=3e-2)  # half precision end to end


def sample_feeds(graph, batch=2, seed=0):
    """Random inputs for a sample model: floats N(0, 1), token ids inside their embedding table, masks of ones."""
    rng = np.random.default_rng(seed)
    rows = {n.input(1): n.input(0).const.shape[0] for n in graph
            if n.op_type == "Gather" and n.input(0) is not None and n.input(0).const is not None}
    feeds = {}
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else batch for d in (v.shape or ())]
        if v.dtype.startswith("float"):
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype)
        elif "mask" in v.name:
            feeds[v.name] = np.ones(shape, v.dtype)
        else:
            feeds[v.name] = rng.integers(0, min(rows.get(v, 100), 100), shape).astype(v.dtype)
    return feeds


@pytest.mark.parametrize("name", ["mnist_convnet", "vgg_style", "resnet_style", "mobilenet_v2_style", "bert_style",
                                  "gpt_style_block"])  # every model of samples.models.SAMPLES
def test_sample_model_through_onnx_matches_reference(name, tmp_path):
    pytest.importorskip("torch")
    try:
        from samples import models
    except ImportError as exc:
        pytest.skip(f"samples/models.py is not there yet ({exc})")
    path = tmp_path / f"{name}.onnx"
    models.export_onnx(name, path)
    g = graphopt.load(str(path))
    feeds = sample_feeds(g)
    model = graphopt.compile(str(path), backend="cuda-emu")  # -O2 graph passes, then the CUDA lowering
    got = model.run(feeds)
    want = run_reference(g, feeds)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3)  # reassociation across the whole model
    assert model.stats["launches"] >= 5 and model.stats["specializations"] == 1  # a dynamic batch, fixed at run


def causal_where_mask_with_a_row_masked_everywhere():
    """Causal attention through Where(cond, -inf, scores) where query row 2 has every key masked."""
    b = GraphBuilder()
    q, k, v = (b.input(n, (2, 2, 6, 8)) for n in "qkv")
    s = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.float32(8 ** -0.5))
    cond = np.triu(np.ones((1, 1, 6, 6), bool), 1)
    cond[..., 2, :] = True
    s = b.op("Where", b.const(cond, "future"), np.float32(-np.inf), s)
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v), "y")
    return b.graph, {n: w(2, 2, 6, 8, seed=i, scale=1.0) for i, n in enumerate("qkv")}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_causal_where_mask_with_a_row_masked_everywhere_is_nan_as_in_the_graph():
    # fuse_attention turns Where(cond, -inf, scores) into an additive -inf mask; a query row whose
    # every key is masked is NaN in the Where chain, and must be NaN from the kernel too (and only it)
    g, feeds = causal_where_mask_with_a_row_masked_everywhere()
    model = graphopt.compile(g, backend="cuda-emu")
    assert model.stats["kernels"] == 1 and "go_attn" in next(iter(model.stats["schedules"]))
    got, want = model.run(feeds)[0], run_reference(g, feeds)[0]
    assert np.isnan(got[:, :, 2]).all() and np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # equal_nan by default


def test_zoo_bert_dynamo_dynamic_axes_runs_on_kernels_alone():
    """A transformers BERT exported by the dynamo exporter with dynamic batch and sequence
    axes (GatherND in its mask, shapes known only at the first run): specialized per signature,
    every node on a kernel, equal to the CPU reference (the full table of families, exporters
    and levels is benchmarks/bench_cuda_coverage.py's)."""
    zoo = pytest.importorskip("samples.zoo")
    pytest.importorskip("transformers")
    proto = zoo.export("hf_bert", exporter="dynamo", dynamic=True)
    feeds = zoo.feeds("hf_bert", proto)
    want = graphopt.compile(proto, backend="cpu", level=0).run(feeds)
    m = graphopt.compile(proto, backend="cuda-emu", level=2)
    got = m.run(feeds)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-4)  # a whole model's float32 reassociation
    assert not m.stats.get("host_nodes") and m.stats["signatures"] == ["input_ids[2,16] attention_mask[2,16]"]
