"""Do the passes scale linearly? Times every pass of a level -- the graph pipeline
and then every lowering pass of that level, as a backend would run them -- on
synthetic graphs of 10k and 40k nodes and prints the ratio (linear: ~4,
quadratic: ~16), per pass too, and onnxsim's time on the 10k-node model as a peer.

    python benchmarks/bench_scaling.py [--sizes 10000 40000] [--level 3] [--repeat 3] [--no-onnxsim]

Each size is optimized ``--repeat`` times on a fresh graph and the fastest run
counts. The pass manager holds Python's cyclic garbage collector off during a run
(its pauses grow with the heap); the graph is built and collected before timing.

The graphs are a realistic mix, repeated block after block along one chain:
elementwise ops with constants, PyTorch-style shape chains
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape) on a symbolic batch,
constant subexpressions, duplicated subexpressions, no-ops (Identity,
Transpose pairs, Cast to the same type) and dead branches.
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from graphopt.builder import GraphBuilder
from graphopt.passmanager import PassContext, PassManager, default_pipeline

I64 = np.int64


def block(b: GraphBuilder, x, k: int, rng: np.random.Generator):
    """About 30 nodes; returns the next value of the chain (shape ("N", 8, 16))."""
    c = b.const(rng.standard_normal((8, 16)).astype(np.float32), f"c{k}")
    # constant subexpression (folds) and a duplicate of it (CSE)
    scale = b.op("Add", b.op("Mul", c, np.float32(0.5)), np.float32(1.0))
    scale2 = b.op("Add", b.op("Mul", c, np.float32(0.5)), np.float32(1.0))
    # elementwise chain with duplicated subexpressions
    a1 = b.op("Mul", b.op("Add", x, scale), np.float32(0.9))
    a2 = b.op("Mul", b.op("Add", x, scale2), np.float32(0.9))
    h = b.op("Tanh", b.op("Add", a1, a2))
    # no-ops
    h = b.op("Identity", b.op("Cast", h, to=1))
    h = b.op("Transpose", b.op("Transpose", h, perm=[0, 2, 1]), perm=[0, 2, 1])
    # PyTorch-style flatten and back, through shape arithmetic on the symbolic batch
    n = b.op("Unsqueeze", b.op("Gather", b.op("Shape", h), np.array(0, I64), axis=0), np.array([0], I64))
    flat = b.op("Reshape", h, b.op("Concat", n, np.array([-1], I64), axis=0))
    d1 = b.op("Unsqueeze", b.op("Gather", b.op("Shape", h), np.array(1, I64), axis=0), np.array([0], I64))
    back = b.op("Reshape", flat, b.op("Concat", n, d1, np.array([16], I64), axis=0))
    # a dead branch
    b.op("Sigmoid", b.op("Sub", back, np.float32(3.0)))
    return b.op("Relu", back)


def synthetic(nodes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    b = GraphBuilder(f"synthetic{nodes}", opset=17)
    x = b.input("x", ("N", 8, 16))
    k = 0
    while len(b.graph) < nodes:
        x = block(b, x, k, rng)
        k += 1
    b.output(x, "y")
    return b.graph


def run_pipeline(g, level: int = 3):
    ctx = PassContext(level=level)
    gc.collect()
    t0 = time.perf_counter()
    rep = PassManager(default_pipeline(level), ctx).run(g)
    low = PassManager(default_pipeline(level, "lowering"), ctx).run(g)
    rep.records.extend(low.records)
    rep.nodes_after = low.nodes_after
    return time.perf_counter() - t0, rep


def onnxsim_seconds(g) -> tuple[float | None, str]:
    try:
        import onnxsim
        from graphopt.onnx_io import to_onnx_model
    except ImportError as exc:
        return None, f"skipped ({exc})"
    model = to_onnx_model(g)
    t0 = time.perf_counter()
    out, ok = onnxsim.simplify(model)
    dt = time.perf_counter() - t0
    return dt, f"{len(model.graph.node)} -> {len(out.graph.node)} nodes, check={'ok' if ok else 'failed'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 40_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the fastest counts")
    ap.add_argument("--no-onnxsim", action="store_true")
    ap.add_argument("--level", type=int, default=3, help="optimization level whose passes run (default 3: all)")
    args = ap.parse_args(argv)
    small, large = args.sizes
    times, reports, per_pass = {}, {}, {}
    for n in (small, large):
        per_pass[n] = {}
        for _ in range(max(args.repeat, 1)):
            g = synthetic(n)
            before = len(g)
            dt, rep = run_pipeline(g, args.level)
            if n not in times or dt < times[n]:
                times[n], reports[n] = dt, rep
            for row in rep.summary():  # each pass's fastest run, so one collector pause does not skew it
                per_pass[n][row["pass"]] = min(per_pass[n].get(row["pass"], float("inf")), row["seconds"])
        print(f"{before:>7} nodes -> {len(g):>6}: {times[n]:.3f} s, {reports[n].iterations} iteration(s)")
    ratio = times[large] / times[small]
    print(f"ratio {large}/{small}: {ratio:.2f} (size ratio {large / small:.1f}; linear ~{large / small:.0f}, "
          f"quadratic ~{(large / small) ** 2:.0f})")
    per_small, per_large = per_pass[small], per_pass[large]
    print(f"{'pass':<34} {'small s':>8} {'large s':>8} {'ratio':>6}")
    for name, s in per_small.items():
        lg = per_large.get(name, 0.0)
        print(f"{name:<34} {s:>8.3f} {lg:>8.3f} {lg / s if s else float('nan'):>6.2f}")
    if not args.no_onnxsim:
        dt, what = onnxsim_seconds(synthetic(small))
        if dt is None:
            print(f"onnxsim: {what}")
        else:
            print(f"onnxsim on the {small}-node model: {dt:.3f} s ({what}); "
                  f"graphopt -O{args.level}: {times[small]:.3f} s ({times[small] / dt:.2f}x onnxsim's time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
