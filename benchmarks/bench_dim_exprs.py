"""Symbolic shape folding: graphopt's shape-value sweep against a sympy-backed prototype of it.

``fold_shape_arithmetic`` keeps a shape value's entries as ints, dims of tensors (``DimOf``,
with the type's symbol) or unknown; arithmetic on dims is exact only for ``d + 0``, ``d * 1``,
``d - d`` and the like. The issue asked for a dim-expression engine (onnxslim and onnxruntime's
symbolic shape inference have one) or sympy. This script measures what sympy would add:
``SympySweep`` (below, a prototype, not shipped) lets every entry be a sympy expression of the
dim symbols -- ``batch*4``, ``batch*seq`` (the dynamo exporter's own symbol names included) --
with Add/Sub/Mul/Div/Mod/Max/Min computed symbolically, Equal decided by simplification, and a
Reshape's -1 solved as ``prod(input dims) / prod(other entries)`` so that a single symbolic
entry left can take the -1 instead. For every zoo family and both exporters (dynamic axes):
nodes after -O2 and optimize time with the shipped sweep and with the prototype, and the
outputs of both checked against the export in onnxruntime.

    python benchmarks/bench_dim_exprs.py                      # every transformers family
    python benchmarks/bench_dim_exprs.py hf_mobilevit hf_gpt2 --markdown out.md
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def sympy_sweep_class():
    """The prototype: ``fold_shape_arithmetic._Sweep`` with sympy expressions as entries."""
    import sympy

    from graphopt.passes import fold_shape_arithmetic as F

    class SympySweep(F._Sweep):
        def sym(self, e):
            """An entry as a sympy expression, or None (unknown)."""
            if isinstance(e, bool):
                return sympy.Integer(int(e))
            if isinstance(e, int):
                return sympy.Integer(e)
            if isinstance(e, sympy.Expr):
                return e
            if isinstance(e, F.DimOf):
                name = self.dims.find(e.name) if e.name is not None else None
                if isinstance(name, int):
                    return sympy.Integer(name)
                if isinstance(name, str):
                    try:  # the dynamo exporter names dims by expressions: 'batch*seq', 's0 + 1'
                        return sympy.sympify(name.replace("min(", "Min("), locals=self.symbols(name))
                    except Exception:  # noqa: BLE001
                        pass
                return sympy.Symbol(f"d{id(e.value)}_{e.axis}", integer=True, positive=True)
            return None

        def symbols(self, text: str) -> dict:
            import re

            return {w: sympy.Symbol(w, integer=True, positive=True)
                    for w in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", text) if w not in ("Min", "Max")}

        @staticmethod
        def back(x):
            """A sympy result as an entry: an int when it is one."""
            x = sympy.simplify(x)
            return int(x) if x.is_Integer else x

        def _arith(self, node):
            s = super()._arith(node)
            a, b = self.get(node.input(0)), self.get(node.input(1))
            if s is None or a is None or b is None or all(e is not None for e in s.entries):
                return s
            pairs = self._broadcast(a, b)
            if pairs is None:
                return s
            op = node.op_type
            f = {"Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y,
                 "Div": lambda x, y: sympy.floor(x / y), "Mod": lambda x, y: sympy.Mod(x, y),
                 "Max": sympy.Max, "Min": sympy.Min}[op]
            out = []
            for got, (x, y) in zip(s.entries, pairs[0]):
                sx, sy = self.sym(x), self.sym(y)
                out.append(got if got is not None or sx is None or sy is None else self.back(f(sx, sy)))
            return F.ShapeValue(tuple(out), s.scalar, s.dtype)

        def _equal(self, node):
            s = super()._equal(node)
            a, b = self.get(node.input(0)), self.get(node.input(1))
            if s is None or a is None or b is None:
                return s
            pairs = self._broadcast(a, b)
            out = []
            for got, (x, y) in zip(s.entries, pairs[0]):
                sx, sy = self.sym(x), self.sym(y)
                if got is None and sx is not None and sy is not None and sympy.simplify(sx - sy) == 0:
                    got = 1
                out.append(got)
            return F.ShapeValue(tuple(out), s.scalar, s.dtype)

        def publish(self, v, s):
            if not any(isinstance(e, sympy.Expr) for e in s.entries):
                super().publish(v, s)

        def reshape_target(self, node, entries):
            x = node.input(0)
            if x.shape is not None and -1 in entries:
                dims = [self.sym(F.DimOf(x, i, d) if isinstance(d, str) else d) for i, d in enumerate(x.shape)]
                rest = [self.sym(e) for e in entries if e != -1]
                if all(d is not None for d in dims) and all(e is not None for e in rest):
                    solved = self.back(sympy.Mul(*dims) / sympy.Mul(*rest))
                    if isinstance(solved, int):
                        entries = [solved if e == -1 else e for e in entries]
            entries = [e if not isinstance(e, sympy.Expr) else self.as_dim(e, x, i) for i, e in enumerate(entries)]
            return super().reshape_target(node, entries)

        def as_dim(self, e, x, i):
            """An expression entry equal to x's dim i reads as that dim (then written 0)."""
            if x.shape is not None and i < len(x.shape):
                d = x.shape[i]
                dim = F.DimOf(x, i, d if isinstance(d, str) else None)
                sd = self.sym(dim) if isinstance(d, str) else sympy.Integer(d) if isinstance(d, int) else None
                if sd is not None and sympy.simplify(e - sd) == 0:
                    return dim
            return None

    return SympySweep


def optimize(proto, sweep_cls=None):
    """(graph after -O2, seconds), with ``sweep_cls`` in place of the shipped sweep."""
    import graphopt
    from graphopt.passes import fold_shape_arithmetic as F

    shipped = F._Sweep
    if sweep_cls is not None:
        F._Sweep = sweep_cls
    try:
        t = time.perf_counter()
        g = graphopt.optimize(graphopt.load(proto), level=2)
        return g, time.perf_counter() - t
    finally:
        F._Sweep = shipped


def main(argv=None) -> int:
    from graphopt.onnx_io import to_onnx_model
    from samples import zoo
    from bench_passes import RTOL, ATOL, _run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    names = args.families or [n for n in zoo.FAMILIES if zoo.FAMILIES[n].library == "transformers"]
    proto_sweep = sympy_sweep_class()
    rows = []
    for name in names:
        for exporter in ("torchscript", "dynamo"):
            proto = zoo.export(name, exporter=exporter, dynamic=True)
            feeds = zoo.feeds(name, proto)
            want = _run(proto, feeds)
            row = {"family": name, "exporter": exporter, "export": len(proto.graph.node)}
            for key, cls in (("sweep", None), ("sympy", proto_sweep)):
                best = None
                for _ in range(3):  # the fastest of three: the machine is shared
                    g, secs = optimize(proto, cls)
                    best = secs if best is None else min(best, secs)
                got = _run(to_onnx_model(g), feeds)
                row[key] = (len(g), best, bool(np.allclose(got, want, rtol=RTOL, atol=ATOL)))
            rows.append(row)
            print(row, flush=True)
    lines = ["# Symbolic shape folding: shape-value sweep vs a sympy-backed prototype", "",
             f"{datetime.date.today()}, {platform.node()} ({platform.machine()}), "
             f"`python benchmarks/bench_dim_exprs.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
             "Zoo tiny configs, dynamic axes; nodes after graphopt -O2; optimize seconds (whole -O2 "
             "pipeline, fastest of 3); outputs checked against the export in onnxruntime.", "",
             "| family | exporter | export | nodes: sweep | nodes: sympy | seconds: sweep | seconds: sympy | "
             "outputs equal |", "|---|---|---:|---:|---:|---:|---:|:-:|"]
    for r in rows:
        (n1, t1, ok1), (n2, t2, ok2) = r["sweep"], r["sympy"]
        lines.append(f"| {r['family']} | {r['exporter']} | {r['export']} | {n1} | {n2} | {t1:.2f} | {t2:.2f} | "
                     f"{'yes' if ok1 and ok2 else 'NO'} |")
    fewer = sum(r["sweep"][0] - r["sympy"][0] for r in rows)
    lines += ["", f"Nodes the prototype removes over all rows: {fewer}; rows it changes: "
              f"{sum(1 for r in rows if r['sweep'][0] != r['sympy'][0])} of {len(rows)}; total optimize seconds "
              f"{sum(r['sweep'][1] for r in rows):.2f} (sweep) vs {sum(r['sympy'][1] for r in rows):.2f} (sympy)."]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
