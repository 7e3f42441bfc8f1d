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

With ``--compile`` it measures what a user waits for instead: ``graphopt.compile(graph,
backend="cpu", level=2)`` from the IR to a runnable model (graph passes, lowering, the CPU
backend's kernels and step list), on graphs of 2,000, 8,000 and 100,000 nodes of three
kinds, and checks each compiled model against the unoptimized graph on the registry kernels:

    python benchmarks/bench_scaling.py --compile [--sizes 2000 8000 100000] [--kinds chain gemm mixed]

``chain`` is one long elementwise chain (Add, Mul, Tanh, Sub, Relu with constants: it all
fuses into one kernel, whose expression is as long as the graph), ``gemm`` repeats
MatMul + Add + Relu on a 1x16 row (a FusedGemm step per block: the step list is a third of the
graph), ``mixed`` is the pass benchmark's block mix. The ratio 8k/2k is linear at 4.
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


def elementwise_chain(nodes: int):
    """One chain of elementwise ops with scalar constants on a (1, 64) input."""
    b = GraphBuilder(f"chain{nodes}", opset=17)
    x = b.input("x", (1, 64))
    ops = ("Add", "Mul", "Tanh", "Sub", "Relu")
    k = 0
    while len(b.graph) < nodes:
        op = ops[k % len(ops)]
        x = b.op(op, x) if op in ("Tanh", "Relu") else b.op(op, x, np.float32(0.5 + (k % 7) * 0.01))
        k += 1
    b.output(x, "y")
    return b.graph


def gemm_chain(nodes: int, seed: int = 0):
    """Relu(MatMul(x, W) + c) blocks on a (1, 16) row, four weights used in turn."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(f"gemm{nodes}", opset=17)
    x = b.input("x", (1, 16))
    ws = [(rng.standard_normal((16, 16)) * 0.25).astype(np.float32) for _ in range(4)]
    k = 0
    while len(b.graph) < nodes:
        x = b.op("Relu", b.op("Add", b.op("MatMul", x, ws[k % 4]), np.float32(0.01 * (k % 5))))
        k += 1
    b.output(x, "y")
    return b.graph


KINDS = {"chain": elementwise_chain, "gemm": gemm_chain, "mixed": synthetic}


def compile_seconds(kind: str, nodes: int, repeat: int) -> dict:
    """The fastest of ``repeat`` compiles of a fresh graph (passes and backend apart), and the
    compiled model's largest relative error against the unoptimized graph on the registry kernels."""
    import graphopt
    from graphopt.plugins.cpu import CpuExecutable

    best = None
    for _ in range(max(repeat, 1)):
        g = KINDS[kind](nodes)
        size = len(g)
        gc.collect()
        t0 = time.perf_counter()
        model = graphopt.compile(g, backend="cpu", level=2)
        total = time.perf_counter() - t0
        if best is None or total < best["seconds"]:
            passes = sum(r["seconds"] for r in model.report.summary()) if model.report else 0.0
            best = {"kind": kind, "nodes": size, "nodes_after": len(model.graph), "seconds": total,
                    "passes_seconds": passes, "model": model}
    model = best.pop("model")
    shape = [d if isinstance(d, int) else 2 for d in model.graph.inputs[0].type.shape]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = model.run({"x": x})[0]
    want = CpuExecutable(KINDS[kind](nodes), fast=False).run({"x": x})[0]
    best["max_rel_err"] = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    best["native_steps"] = model.stats.get("native_steps", 0)
    return best


def main_compile(args) -> int:
    from graphopt.plugins.cpu import native

    ok, why = native.status()
    print(f"graphopt.compile(graph, backend='cpu', level=2); native CPU kernels {'on' if ok else 'off: ' + why}; "
          f"fastest of {args.repeat}")
    print(f"{'kind':<6} {'nodes':>7} {'after':>6} {'total s':>8} {'passes s':>9} {'backend s':>10} "
          f"{'native':>6} {'max rel err':>11}")
    for kind in args.kinds:
        times = {}
        for n in args.sizes:
            r = compile_seconds(kind, n, args.repeat if n <= 10_000 else 1)
            times[n] = r["seconds"]
            print(f"{kind:<6} {r['nodes']:>7} {r['nodes_after']:>6} {r['seconds']:>8.2f} {r['passes_seconds']:>9.2f} "
                  f"{r['seconds'] - r['passes_seconds']:>10.2f} {r['native_steps']:>6} {r['max_rel_err']:>11.1e}",
                  flush=True)
        sizes = sorted(times)
        for a, b in zip(sizes, sizes[1:]):
            print(f"{kind:<6} ratio {b}/{a}: {times[b] / times[a]:.2f} (linear {b / a:.1f})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="graph sizes (default: 10000 40000; with --compile 2000 8000 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the fastest counts")
    ap.add_argument("--no-onnxsim", action="store_true")
    ap.add_argument("--level", type=int, default=3, help="optimization level whose passes run (default 3: all)")
    ap.add_argument("--compile", action="store_true", help="time graphopt.compile to the CPU backend at -O2")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS), help="graphs for --compile")
    args = ap.parse_args(argv)
    if args.compile:
        args.sizes = args.sizes or [2_000, 8_000, 100_000]
        return main_compile(args)
    if args.sizes is not None and len(args.sizes) != 2:
        ap.error("--sizes takes two sizes without --compile")
    small, large = args.sizes or [10_000, 40_000]
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
