"""graphopt's main job on a sample model, end to end.

1. build a ResNet-style CNN in code (random weights) and export it to ONNX;
2. ``graphopt optimize`` it at -O2 (the per-pass table shows what changed);
3. run the optimized model on graphopt's CPU backend and on ONNX Runtime, and
   the original model on ONNX Runtime, on the same input, and compare.

    python3 samples/quickstart.py [--model resnet_style] [--out DIR]

Exits non-zero if any output differs beyond float32 tolerance.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet_style")
    ap.add_argument("--out", default=None, help="folder for the .onnx files (default: a temporary folder)")
    args = ap.parse_args()

    import onnxruntime as ort

    import graphopt
    from samples.models import export_onnx

    out = Path(args.out or tempfile.mkdtemp(prefix="graphopt-quickstart-"))
    out.mkdir(parents=True, exist_ok=True)
    src = out / f"{args.model}.onnx"
    dst = out / f"{args.model}.opt.onnx"
    print(f"[1/3] exporting {args.model} to {src}")
    export_onnx(args.model, src)

    print(f"[2/3] graphopt optimize {src.name} -o {dst.name} -O2")
    r = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(src), "-o", str(dst), "-O2"])
    if r.returncode:
        return r.returncode

    print("[3/3] running: ONNX Runtime (original), ONNX Runtime (optimized), graphopt CPU (optimized)")
    g = graphopt.load(src)
    rng = np.random.default_rng(0)
    feeds = {}
    for v in g.inputs:
        shape = [d if isinstance(d, int) else 2 for d in v.shape]
        feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    opt_ort = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)
    ours = graphopt.compile(graphopt.load(dst), backend="cpu").run(feeds)
    ok = True
    for name, a, b, c in zip([v.name for v in g.outputs], ref, opt_ort, ours):
        e1 = float(np.max(np.abs(a - b)))
        e2 = float(np.max(np.abs(a - c)))
        good = np.allclose(b, a, rtol=1e-4, atol=1e-4) and np.allclose(c, a, rtol=1e-4, atol=1e-4)
        ok &= good
        print(f"  output {name} {list(a.shape)}: max |ORT(optimized) - ORT(original)| = {e1:.2e}, "
              f"max |graphopt CPU - ORT(original)| = {e2:.2e}  {'ok' if good else 'MISMATCH'}")
    print("outputs match ONNX Runtime" if ok else "MISMATCH against ONNX Runtime")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
