"""nn.Linear on 3-D activations: MatMul + Add (graphopt's choice) against Gemm between Reshapes.

The question (issue: "3-D Linear as Gemm with Reshapes cancelled across layers, or FusedMatMul
with the bias in the backends -- decide by measurement"). For each model, at -O2:

* ``matmul+add``: graphopt as it is: ``MatMul(x[B, S, K], W) + b`` stays two nodes in the ONNX
  output; the backends' lowering fuses the bias into the MatMul (``FusedMatMul``).
* ``gemm``: every such pair rewritten to ``Reshape(Gemm(Reshape(x, [B*S, K]), W, b), [B, S, N])``
  (static shapes), then -O2 again without ``fuse_matmul_add`` (which would turn it back), so
  that whatever graphopt's passes cancel is cancelled (adjacent Reshapes merge; nothing moves a
  Reshape across an elementwise op or a norm).
* ``gemm, best case``: the node count if every Reshape between two Linears cancelled -- the
  whole residual stream kept 2-D: the ``matmul+add`` count minus one node per pair plus the two
  Reshapes at the stream's ends. No pass does this; it bounds what one could gain.

and onnxsim's and onnxslim's counts for scale; then the CPU backend's time per call for the
two forms (lowered as the backend lowers them; alternating rounds, median call, ratio per round).

    python benchmarks/bench_linear3d.py                       # BERT and GPT-2, tiny and full
    python benchmarks/bench_linear3d.py --models hf_bert --sizes tiny --rounds 3
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def linear_pairs(g) -> list:
    """(MatMul, Add) pairs of a 3-D activation, a 2-D constant weight and a constant [N] bias."""
    pairs = []
    for mm in g:
        if mm.op_type != "MatMul" or mm.domain != "":
            continue
        x, w, out = mm.input(0), mm.input(1), mm.output
        if x.shape is None or len(x.shape) != 3 or w.const is None or w.const.ndim != 2 or out.num_uses != 1:
            continue
        add = out.users[0]
        if add.op_type != "Add" or add.domain != "":
            continue
        b = add.input(1) if add.input(0) is out else add.input(0)
        if b.const is not None and b.const.shape == (w.const.shape[1],) and add.output.shape == out.shape:
            pairs.append((mm, add))
    return pairs


def to_gemm(g) -> int:
    """Rewrite every pair of ``linear_pairs`` (static shapes) as Reshape -> Gemm -> Reshape."""
    from graphopt.ir import TensorType

    n = 0
    for mm, add in linear_pairs(g):
        x, w, out = mm.input(0), mm.input(1), add.output
        b = add.input(1) if add.input(0) is mm.output else add.input(0)
        if not all(isinstance(d, int) for d in x.shape):
            continue
        (bs, s, k), nn_ = x.shape, w.const.shape[1]
        flat = g.make_node("Reshape", [x, g.add_initializer("flat", np.array([bs * s, k], np.int64))],
                           output_types=[TensorType(x.dtype, (bs * s, k))], before=mm).output
        gemm = g.make_node("Gemm", [flat, w, b], output_types=[TensorType(x.dtype, (bs * s, nn_))], before=mm).output
        back = g.make_node("Reshape", [gemm, g.add_initializer("back", np.array([bs, s, nn_], np.int64))],
                           output_types=[out.type], before=mm).output
        g.replace_value(out, back, take_name=True)
        g.remove(add)
        g.remove(mm)
        n += 1
    return n


def cpu_runner(g):
    """The CPU backend at -O2 on ``g`` as it is (its graph passes again, but not the one that
    would turn Gemm between Reshapes back into MatMul + Add)."""
    import graphopt

    return graphopt.compile(g, backend="cpu", level=2, disable=["fuse_matmul_add"])


def time_pair(a, b, feeds, rounds: int, reps: int) -> tuple[float, float, float]:
    """Median call of each (ms) and the median of the per-round ratios b / a."""
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        ra, rb = [], []
        for run, acc in ((a, ra), (b, rb)):
            for _ in range(reps):
                t0 = time.perf_counter()
                run.run(feeds)
                acc.append(time.perf_counter() - t0)
        ta += ra
        tb += rb
        ratios.append(statistics.median(rb) / statistics.median(ra))
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3, statistics.median(ratios)


def bench(name: str, size: str, rounds: int, reps: int) -> dict:
    import graphopt
    from graphopt.onnx_io import to_onnx_model
    from samples import zoo

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_passes import _onnxsim, _onnxslim, _run

    proto = zoo.export(name, exporter="torchscript", size=size, batch=1, seq=128 if size == "full" else 16)
    feeds = zoo.feeds(name, proto, size=size, batch=1, seq=128 if size == "full" else 16)
    want = _run(proto, feeds)
    g = graphopt.optimize(graphopt.load(proto), level=2)
    pairs = len(linear_pairs(g))
    h = g.clone()
    rewritten = to_gemm(h)
    h = graphopt.optimize(h, level=2, disable=["fuse_matmul_add"])  # which would turn it back
    row = {"model": name, "size": size, "export": len(proto.graph.node), "pairs": pairs, "rewritten": rewritten,
           "matmul+add": len(g), "gemm": len(h), "gemm_best": len(g) - pairs + 2,
           "onnxsim": len(_onnxsim(proto)[0].graph.node), "onnxslim": len(_onnxslim(proto)[0].graph.node)}
    for key, graph in (("diff_matmul_add", g), ("diff_gemm", h)):
        got = _run(to_onnx_model(graph), feeds)
        row[key] = float(np.abs(got - want).max())
    a, b = cpu_runner(g), cpu_runner(h)
    row["cpu_ops"] = [sorted({n.op_type for n in r.graph if "Gemm" in n.op_type or "MatMul" in n.op_type})
                      for r in (a, b)]
    row["diff_cpu"] = max(float(np.abs(a.run(feeds)[0] - want).max()), float(np.abs(b.run(feeds)[0] - want).max()))
    row["ms_matmul_add"], row["ms_gemm"], row["ratio"] = time_pair(a, b, feeds, rounds, reps)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["hf_bert", "hf_gpt2"])
    ap.add_argument("--sizes", nargs="*", default=["tiny", "full"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        for size in args.sizes:
            rows.append(bench(name, size, args.rounds, args.reps))
            print(rows[-1], flush=True)
    import torch

    lines = [f"# nn.Linear on 3-D activations: MatMul + Add vs Gemm between Reshapes\n",
             f"{datetime.date.today()}, {platform.node()} ({platform.machine()}), torch {torch.__version__}, "
             f"`python benchmarks/bench_linear3d.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
             "TorchScript exports at batch 1 (tiny: 16 tokens, full: 128), static shapes; node counts after "
             "-O2; CPU backend at -O2, median call over all rounds; ratio = gemm / matmul+add per round, "
             "median (> 1: the Gemm form is slower).", "",
             "| model | size | 3-D Linear pairs | matmul+add | gemm | gemm, best case | onnxsim | onnxslim | "
             "max diff (ORT) matmul+add / gemm | ms matmul+add | ms gemm | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['pairs']} | {r['matmul+add']} | {r['gemm']} | "
                     f"{r['gemm_best']} | {r['onnxsim']} | {r['onnxslim']} | {r['diff_matmul_add']:.1e} / "
                     f"{r['diff_gemm']:.1e} | {r['ms_matmul_add']:.2f} | {r['ms_gemm']:.2f} | {r['ratio']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
