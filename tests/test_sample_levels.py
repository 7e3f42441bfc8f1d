"""Issue #4's promises on the sample models, end to end on the CPU reference.

Every sample, optimized at -O1, -O2 and -O3 and then lowered with every registered
lowering pass of that level (what a backend may ask for: fused epilogues,
elementwise groups, NHWC, attention), computes what the unoptimized model
computes. Tolerance: float32 rtol 1e-4 with atol 1e-4 -- BatchNorm folding and
fused epilogues reassociate sums, which moves values near zero by more than the
per-op atol 1e-5 (the same bound tests/test_end_to_end.py states).

Structure, where the issue names it: no BatchNormalization in the ResNet after
-O2, every Conv carrying its activation and residual add after lowering; in the
BERT encoder LayerNormalization, Gelu (opset 20, so with ``target_opset=20``) and
attention recognised in every layer.
"""
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

import graphopt  # noqa: E402
from graphopt.passmanager import PassContext, PassManager, default_pipeline  # noqa: E402
from graphopt.testing import assert_same_outputs, random_feeds  # noqa: E402
from samples.models import SAMPLES, load_graph  # noqa: E402

RTOL, ATOL = 1e-4, 1e-4


def lowered(graph, level, **ctx):
    """``graph`` optimized at ``level`` and lowered with every lowering pass of that level."""
    g, report = graphopt.optimize(graph, level=level, return_report=True, **ctx)
    low = PassManager(default_pipeline(level, "lowering"), PassContext(level=level, verify=True, **ctx)).run(g)
    report.records.extend(low.records)
    report.nodes_after = low.nodes_after
    return g, report


def feeds_for(graph):
    feeds = random_feeds(graph, seed=0, batch=2)
    for name in feeds:
        if "mask" in name:
            feeds[name][...] = 1
            feeds[name][:, -3:] = 0  # a padded tail, so the mask matters
    return feeds


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_level_matches_the_unoptimized_model(name, level):
    original = load_graph(name)
    g, report = lowered(original, level)
    assert report.nodes_after <= report.nodes_before
    assert_same_outputs(original, g, feeds_for(original), rtol=RTOL, atol=ATOL)


def test_resnet_has_no_batchnorm_and_every_conv_carries_its_epilogue():
    original = load_graph("resnet_style")
    g2 = graphopt.optimize(original, level=2)
    assert not [n for n in g2 if n.op_type == "BatchNormalization"]
    g, report = lowered(original, 3)
    convs = [n for n in g if n.op_type in ("Conv", "FusedConv")]
    assert convs and all(n.op_type == "FusedConv" for n in convs), [n.op_type for n in convs]
    epilogues = sorted(n.attrs["epilogue"] for n in convs)
    # stem conv and each block's first conv end in relu; each block's second conv adds the residual
    # then relu; the 1x1 downsample convs of blocks 2 and 3 have nothing after them (their BN folded)
    assert epilogues == ["", ""] + ["relu(acc)"] * 4 + ["relu(add(acc, in1))"] * 3, epilogues
    assert not [n for n in g if n.op_type in ("Relu", "Add", "BatchNormalization")]
    assert [n.op_type for n in g].count("Transpose") <= 1  # NHWC: one at the input, GAP+Flatten need none
    print(f"resnet_style: {report.nodes_before} -> {report.nodes_after} nodes after -O3 lowering")


def test_bert_recognises_layernorm_gelu_and_attention_in_every_layer():
    original = load_graph("bert_style")
    layers = 2
    g, report = graphopt.optimize(original, level=2, target_opset=20, return_report=True)
    ops = [n.op_type for n in g]
    # the embeddings' LayerNorm too
    assert ops.count("LayerNormalization") == 2 * layers + 1, ops
    assert ops.count("Gelu") == layers, ops
    assert_same_outputs(original, g, feeds_for(original), rtol=RTOL, atol=ATOL)
    low, low_report = lowered(original, 2, target_opset=20)
    assert [n.op_type for n in low].count("Attention") == layers
    assert_same_outputs(original, low, feeds_for(original), rtol=RTOL, atol=ATOL)
    print(f"bert_style: {report.nodes_before} -> {report.nodes_after} nodes at -O2 (target opset 20), "
          f"{low_report.nodes_after} after lowering")


def test_gpt_block_causal_attention_is_fused():
    # the masked_fill causal mask (Where over a Slice of the triu buffer) folds to a constant
    # at -O2 and becomes Attention's additive mask
    original = load_graph("gpt_style_block")
    g, report = lowered(original, 2)
    ops = [n.op_type for n in g]
    assert ops.count("Attention") == 1 and not {"Where", "Softmax"} & set(ops), ops
    assert_same_outputs(original, g, feeds_for(original), rtol=RTOL, atol=ATOL)
    print(f"gpt_style_block: {report.nodes_before} -> {report.nodes_after} nodes after -O2 lowering")
