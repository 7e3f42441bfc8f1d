"""The sample ResNet-style and BERT-style models (samples/models.py): per-layer int8
error table, the QDQ model in onnxruntime vs graphopt's int8 run, and float16 /
bfloat16 outputs within tolerance of float32.

Run with ``-s`` to see the figures. Whole-model tolerances, relative to the
output's largest magnitude: float16 1e-2, bfloat16 5e-2 (see docs/quantization.md).
"""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
models = pytest.importorskip("samples.models")

import graphopt  # noqa: E402
from graphopt.plugins.cpu.backend import CpuExecutable  # noqa: E402
from graphopt.quantize import convert_bfloat16, convert_float16, lower_int8, quantize_static  # noqa: E402
from graphopt.quantize.diagnostics import compare_with_onnxruntime  # noqa: E402

TOL = {"float16": 1e-2, "bfloat16": 5e-2}


@pytest.fixture(scope="module", params=["resnet_style", "bert_style"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.onnx"
    models.export_onnx(request.param, path)
    return request.param, graphopt.load(str(path))


def feeds_for(graph, rng, batch=2):
    """Random inputs: floats N(0, 1); integer ids below the size of the table they index; masks of ones."""
    rows = {}
    for n in graph:
        if n.op_type == "Gather" and n.input(0) is not None and n.input(0).const is not None:
            rows[n.input(1)] = n.input(0).const.shape[0]
    out = {}
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else batch for d in (v.shape or ())]
        if v.dtype.startswith("float"):
            out[v.name] = rng.standard_normal(shape).astype(v.dtype)
        elif "mask" in v.name:
            out[v.name] = np.ones(shape, v.dtype)
        else:
            hi = min(rows.get(v, 100), 100)
            out[v.name] = rng.integers(0, hi, shape).astype(v.dtype)
    return out


def test_int8_per_layer_table_and_onnxruntime(model):
    name, g = model
    rng = np.random.default_rng(0)
    calib = [feeds_for(g, rng) for _ in range(4)]
    qg, rep = quantize_static(g, calib, method="percentile", return_report=True)
    print(f"\n{name}:\n{rep.table()}")
    assert len(rep.layer_errors) == len(rep.quantized) >= 4
    assert all(r.local_sqnr_db > 25 for r in rep.layer_errors), rep.table()
    low = lower_int8(qg)
    fused = [n for n in low if n.domain == "ai.graphopt"]
    assert len(fused) >= len(rep.quantized) - 1
    test = [feeds_for(g, rng) for _ in range(2)]
    c = compare_with_onnxruntime(qg, low, test)
    print(f"{name}: onnxruntime (QDQ as written) vs graphopt int8: {c}")
    # each int8 op, fed onnxruntime's own int8 inputs, is within one step of it; end to end the
    # differences flow downstream (a conv sums many one-step input differences), so that count is
    # only reported, and the predictions must agree
    assert c["local_max_steps"] <= 1, c
    assert c["argmax_agree"] == c["samples"], c
    ref = CpuExecutable(g).run(test[0])[0]
    got = CpuExecutable(low).run(test[0])[0]
    print(f"{name}: int8 vs float32 output: relative max error "
          f"{np.abs(got - ref).max() / np.abs(ref).max():.3g}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_within_tolerance(model, dtype):
    name, g = model
    rng = np.random.default_rng(1)
    g = graphopt.optimize(g, level=2)
    conv = convert_float16(g) if dtype == "float16" else convert_bfloat16(g, standard=False)
    rep = conv.meta["precision_report"]
    assert sum(rep["converted_ops"].values()) > 0
    ref_exe, low_exe = CpuExecutable(g), CpuExecutable(conv)
    worst = 0.0
    for _ in range(2):
        f = feeds_for(g, rng)
        for ref, got in zip(ref_exe.run(f), low_exe.run(f)):
            assert got.dtype == ref.dtype
            worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    print(f"\n{name} {dtype}: {sum(rep['converted_ops'].values())} ops converted, float32 kept: "
          f"{rep['float32_ops']}; max |y - y_f32| / max |y_f32| = {worst:.3g} (tolerance {TOL[dtype]})")
    assert worst <= TOL[dtype]


def test_dynamic_int8_in_onnxruntime(model, tmp_path):
    import onnxruntime as ort

    from graphopt.quantize import quantize_dynamic

    name, g = model
    q = quantize_dynamic(g, reduce_range=True)
    n = len(q.meta["quantization_report"]["quantized"])
    path = graphopt.save(q, tmp_path / "dyn.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f = feeds_for(g, np.random.default_rng(2))
    ref = CpuExecutable(g).run(f)[0]
    ours, theirs = CpuExecutable(q).run(f)[0], sess.run(None, f)[0]
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"\n{name} dynamic int8: {n} MatMul/Gemm layers; relative max error vs float32 {rel:.3g}; "
          f"onnxruntime vs graphopt max |diff| {float(np.abs(theirs - ours).max()):.3g}")
    assert n >= 1 and rel < 0.05
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
