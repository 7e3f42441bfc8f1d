"""Post-training int8 quantization of a small ConvNet on scikit-learn's 8x8 digits.

Trains the net with torch (a few seconds on a CPU), exports it to ONNX, quantizes
it with graphopt (calibration on a subset of the training set), and prints:

* float32 vs int8 test accuracy (the int8 model is the QDQ model lowered to
  graphopt's fused int8 ops, run exactly on the NumPy CPU reference);
* the per-layer error table;
* the QDQ model in onnxruntime vs graphopt's int8 run: every int8 tensor compared
  (difference in quantization steps) and the logits.

    python samples/digits_int8.py [--method entropy] [--epochs 30] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_data(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = 360
    te, tr = idx[:n_test], idx[n_test:]
    return x[tr], y[tr], x[te], y[te]


def make_net():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def train(x, y, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a tiny net: one thread is as fast, and immune to oversubscription
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[b]), yt[b])
            loss.backward()
            opt.step()
    return net.eval()


def export(net, path: Path) -> None:
    import torch

    dummy = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(net, (dummy,), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)


def batches(x, size: int):
    return [{"x": x[i:i + size]} for i in range(0, len(x), size)]


def accuracy(run, x, y) -> float:
    logits = np.concatenate([run({"x": b["x"]})[0] for b in batches(x, 120)])
    return float(np.mean(np.argmax(logits, axis=1) == y))


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--calibration-samples", type=int, default=512)
    ap.add_argument("--out", default=None, help="folder for the .onnx files (default: a temporary one)")
    args = ap.parse_args(argv)

    import graphopt
    from graphopt.plugins.cpu.backend import CpuExecutable
    from graphopt.quantize import lower_int8, quantize_static
    from graphopt.quantize.diagnostics import compare_with_onnxruntime

    t0 = time.perf_counter()
    xtr, ytr, xte, yte = load_data()
    net = train(xtr, ytr, args.epochs)
    out = Path(args.out or tempfile.mkdtemp(prefix="digits_int8_"))
    out.mkdir(parents=True, exist_ok=True)
    fp32_path = out / "digits.onnx"
    export(net, fp32_path)
    print(f"trained on {len(xtr)} digits, exported {fp32_path} ({time.perf_counter() - t0:.1f} s)")

    # onnxruntime's int8 kernels on x86 without VNNI add pairs of u8*s8 products in int16,
    # which saturates with full 8-bit weights; 7-bit weights (reduce_range) avoid it there
    reduce_range = not has_vnni()
    calib = batches(xtr[:args.calibration_samples], 64)
    t1 = time.perf_counter()
    qdq, report = quantize_static(str(fp32_path), calib, method=args.method, reduce_range=reduce_range,
                                  return_report=True)
    print(f"quantized in {time.perf_counter() - t1:.1f} s (method={args.method}, reduce_range={reduce_range})")
    print(report.table())
    graphopt.save(qdq, out / "digits.int8.onnx")
    int8 = lower_int8(qdq)
    ops = sorted({n.qualified_op for n in int8})
    print(f"lowered int8 graph: {len(int8)} nodes: {', '.join(ops)}")

    fp32 = CpuExecutable(graphopt.load(str(fp32_path)))
    q8 = CpuExecutable(int8)
    acc_f, acc_q = accuracy(fp32.run, xte, yte), accuracy(q8.run, xte, yte)
    print(f"test accuracy ({len(xte)} digits): float32 {acc_f * 100:.2f}%   int8 {acc_q * 100:.2f}%   "
          f"difference {(acc_q - acc_f) * 100:+.2f} points")

    # onnxruntime on the QDQ model vs graphopt's int8 run: every int8 tensor, in steps
    worst = 0
    for fused, label in ((False, "QDQ ops as written"), (True, "fused int8 kernels")):
        c = compare_with_onnxruntime(qdq, int8, batches(xte, 120), ort_optimizations=fused)
        worst = max(worst, c["max_steps"])
        print(f"onnxruntime ({label}) vs graphopt int8: {c['int8_tensors']} int8 tensors, max difference "
              f"{c['max_steps']} quantization step(s); logits max |diff| {c['output_max_abs']:.3g}; "
              f"argmax agrees on {c['argmax_agree']}/{c['samples']}")
    print(f"total {time.perf_counter() - t0:.1f} s; models in {out}")
    ok = abs(acc_q - acc_f) <= 0.01 and worst <= 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
