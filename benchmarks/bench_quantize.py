"""graphopt's int8 post-training quantization next to onnxruntime's, in one process.

For each model, the same float ONNX file and the same calibration batches go to
``graphopt.quantize.quantize_static`` and to
``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel weights,
uint8 activations, the same calibration method where both have it). Both QDQ
files then run in onnxruntime on the same held-out inputs, and the table shows:

* calibration + rewriting time of each tool;
* the error of each int8 model against the float model (relative max error of
  the logits, and agreement of the argmax), and for the digits ConvNet the test
  accuracy of each;
* the number of QuantizeLinear nodes each wrote.

    python benchmarks/bench_quantize.py [--models digits resnet_style bert_style] [--method minmax]

Models: ``digits`` is samples/digits_int8.py's ConvNet trained on scikit-learn's
8x8 digits (real data); the others are samples/models.py's ResNet-style and
BERT-style models with random weights, calibrated on random inputs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ORT_METHOD = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def digits_model(tmp: Path):
    from samples import digits_int8 as d

    xtr, ytr, xte, yte = d.load_data()
    net = d.train(xtr, ytr, epochs=30)
    path = tmp / "digits.onnx"
    d.export(net, path)
    calib = [{"x": xtr[i:i + 64]} for i in range(0, 512, 64)]
    test = [{"x": xte[i:i + 120]} for i in range(0, len(xte), 120)]
    return path, calib, test, yte


def sample_model(name: str, tmp: Path):
    import graphopt
    from graphopt.testing import random_feeds
    from samples.models import export_onnx

    path = export_onnx(name, tmp / f"{name}.onnx")
    g = graphopt.load(str(path))

    def feeds(seed):
        f = random_feeds(g, seed=seed, batch=4)
        for k in f:
            if "mask" in k:
                f[k][...] = 1
        return f

    return path, [feeds(s) for s in range(8)], [feeds(100 + s) for s in range(4)], None


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # onnxruntime >= 1.17 may call it
        pass


def quantize_with_graphopt(src: Path, dst: Path, calib, method: str) -> float:
    import graphopt
    from graphopt.quantize import quantize_static

    t0 = time.perf_counter()
    qg = quantize_static(str(src), calib, method=method, per_channel=True, diagnostics=False)
    dt = time.perf_counter() - t0
    graphopt.save(qg, dst)
    return dt


def quantize_with_onnxruntime(src: Path, dst: Path, calib, method: str) -> float:
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process; per-channel axis notes
    t0 = time.perf_counter()
    quantize_static(str(src), str(dst), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, ORT_METHOD[method]))
    return time.perf_counter() - t0


def run_ort(path: Path, batches) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ ops as written
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, b)[0] for b in batches]


def count_q(path: Path) -> int:
    import onnx

    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


def bench(name: str, method: str, tmp: Path) -> list[dict]:
    src, calib, test, labels = digits_model(tmp) if name == "digits" else sample_model(name, tmp)
    ref = run_ort(src, test)
    rows = []
    for tool, fn in (("graphopt", quantize_with_graphopt), ("onnxruntime", quantize_with_onnxruntime)):
        dst = tmp / f"{name}.{tool}.int8.onnx"
        seconds = fn(src, dst, calib, method)
        got = run_ort(dst, test)
        err = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-12)) for g, r in zip(got, ref))
        agree = np.mean(np.concatenate([np.argmax(g, -1).ravel() == np.argmax(r, -1).ravel()
                                        for g, r in zip(got, ref)]))
        row = {"model": name, "tool": tool, "seconds": seconds, "rel_err": err, "argmax_agree": float(agree),
               "quantize_nodes": count_q(dst)}
        if labels is not None:
            row["accuracy"] = float(np.mean(np.argmax(np.concatenate(got), -1) == labels))
            row["float_accuracy"] = float(np.mean(np.argmax(np.concatenate(ref), -1) == labels))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "resnet_style", "bert_style"])
    ap.add_argument("--method", default="minmax", choices=sorted(ORT_METHOD))
    args = ap.parse_args(argv)
    print(f"{'model':<14} {'tool':<12} {'quantize s':>10} {'rel err':>8} {'argmax':>7} {'Q nodes':>7} "
          f"{'accuracy (float)':>17}")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            for r in bench(name, args.method, Path(d)):
                acc = (f"{r['accuracy'] * 100:.2f}% ({r['float_accuracy'] * 100:.2f}%)" if "accuracy" in r else "-")
                print(f"{r['model']:<14} {r['tool']:<12} {r['seconds']:>10.2f} {r['rel_err']:>8.4f} "
                      f"{r['argmax_agree'] * 100:>6.1f}% {r['quantize_nodes']:>7} {acc:>17}")
    print(f"method {args.method}; both QDQ models run in onnxruntime with graph optimizations off; "
          "rel err = max |int8 - float| / max |float| of the first output")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
