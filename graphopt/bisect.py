"""Pass bisection: the first pass (and rule rewrite) whose rewrite changes a model's outputs.

``bisect(model)`` replays what ``graphopt.compile`` does (the level's graph
passes to a fixed point, then the backend's lowering passes), one pass
application at a time, and runs the graph on the NumPy reference (registry
kernels only) after each; the first application whose outputs differ from the
unoptimized graph's beyond tolerance is the culprit. A pass built from rules
is then bisected on its rewrites (``patterns.RewriteLimit``) down to the first
rewrite that changes the outputs, named with the node it matched. Passes of
plugins are replayed like built-in ones. When every pass keeps the outputs,
the backend's compiled executable is compared too, so a backend kernel bug is
told apart from a pass bug.

The sub-graph of the graph before the failing application on which that pass
alone still changes the outputs is found with ``fuzz.minimize`` and written to a
folder (``model.onnx`` with graphopt's fused ops kept, ``inputs.npz``,
``case.json``).

Outputs are compared at the tolerances of a whole model (``fuzz.check.differ``:
float32 rtol 1e-3 / atol 1e-4; integers exact), since the -O2 fusions reassociate
floating-point sums; ``rtol``/``atol`` override them.

>>> res = bisect("model.onnx", plugins=["my_passes.py"], out_dir="bisect-out")   # doctest: +SKIP
>>> res.pass_name, res.rule, res.node                                            # doctest: +SKIP
('my_fold', 'sub_to_neg_add', 'sub_3')
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .commands.base import register_verb
from .errors import GraphoptError, InputError
from .ir import Graph


@dataclass
class BisectResult:
    """What bisection found: ``pass_name`` is None when no pass changes the outputs."""

    pass_name: str | None = None
    source: str | None = None          # the plugin distribution (or "graphopt") that registered it
    kind: str | None = None            # "graph" | "lowering" | "backend"
    iteration: int | None = None       # of the fixed-point loop
    rule: str | None = None            # the rewrite that changed the outputs (rule passes)
    node: str | None = None            # the node that rewrite matched
    rewrite_index: int | None = None   # 1-based, among the pass's rewrites in that application
    message: str = ""
    applications: int = 0              # pass applications checked
    nodes: int = 0                     # of the graph before the failing application
    minimized_nodes: int | None = None
    folder: str | None = None
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    def summary(self) -> str:
        if self.pass_name is None:
            return (f"no pass changes the outputs ({self.applications} pass applications checked"
                    f"{'; ' + self.message if self.message else ''})")
        where = f"pass {self.pass_name!r} (from {self.source}, {self.kind}, iteration {self.iteration})"
        if self.kind == "backend":
            where = f"backend {self.pass_name!r}: every pass keeps the outputs, its compiled model does not"
        rule = f", rule {self.rule!r} on node {self.node!r} (rewrite {self.rewrite_index})" if self.rule else ""
        sub = (f"\nsmallest sub-graph: {self.nodes} -> {self.minimized_nodes} node(s), written to {self.folder}"
               if self.folder else "")
        return f"first change: {where}{rule}\n  {self.message}{sub}"


def _reference(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    from .plugins.cpu.backend import CpuExecutable

    with np.errstate(all="ignore"):
        return [np.asarray(o) for o in CpuExecutable(graph, fast=False).run(dict(feeds))]


class _Replay:
    """Runs the compile pipeline one pass application at a time, checking the outputs after each."""

    def __init__(self, graph: Graph, feeds, expected, names, tol, backend, level, passes, disable):
        from .api import _pipeline
        from .passmanager import PassContext, get_pass
        from .plugin_loader import get_backend

        self.feeds, self.expected, self.names, self.tol = feeds, expected, names, tol
        self.graph = graph
        self.backend = get_backend(backend)
        self.graph_ctx = PassContext(level=level)
        self.low_ctx = PassContext(level=level, backend=backend)
        self.graph_passes = _pipeline(level, passes, disable)
        lowering = self.backend.lowering_pipeline(self.low_ctx) if level > 0 else []
        self.low_passes = [get_pass(p) for p in lowering if p not in set(disable or ())]
        self.applications = 0
        self.history: list[dict] = []

    def differs(self, graph: Graph) -> str | None:
        from .fuzz.check import differ

        try:
            got = _reference(graph, self.feeds)
        except Exception as exc:  # a graph the reference cannot run any more is a changed graph
            return f"the rewritten graph no longer runs: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return differ(self.expected, got, self.names, *self.tol)

    def run(self) -> tuple | None:
        """``(pass, ctx, iteration, graph before, message)`` of the first failing application, else None."""
        for passes, ctx in ((self.graph_passes, self.graph_ctx), (self.low_passes, self.low_ctx)):
            for it in range(1, 9):
                changed = False
                for p in passes:
                    before = self.graph.clone()
                    self.applications += 1
                    try:
                        res = p.fn(self.graph, ctx)
                        changed |= bool(res.modified)
                        why = self.differs(self.graph)
                    except Exception as exc:
                        why = f"the pass raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    self.history.append({"pass": p.name, "iteration": it, "ok": why is None})
                    if why is not None:
                        return p, ctx, it, before, why
                if not changed:
                    break
        return None


def _pass_changes(p, ctx, tol, limit: int | None = None):
    """A test of one model: does applying pass ``p`` (at most ``limit`` rewrites) change its outputs?"""
    from .fuzz.check import differ
    from .patterns import RewriteLimit

    def fails(graph: Graph, feeds) -> tuple[bool, list]:
        expected = _reference(graph, feeds)
        g = graph.clone()
        with RewriteLimit(limit) as rl:
            try:
                p.fn(g, ctx)
            except Exception:
                return True, rl.applied
        try:
            got = _reference(g, feeds)
        except Exception:
            return True, rl.applied
        return differ(expected, got, [v.name for v in graph.outputs], *tol) is not None, rl.applied

    return fails


def _first_rewrite(p, ctx, before: Graph, feeds, tol) -> tuple[str, str, int] | None:
    """Bisect the number of rewrites of ``p`` on ``before``: the first one after which outputs differ."""
    unlimited = _pass_changes(p, ctx, tol)
    failed, applied = unlimited(before, feeds)
    if not failed or not applied:
        return None  # not a rule pass, or the change does not come from a rewrite alone
    if _pass_changes(p, ctx, tol, 0)(before, feeds)[0]:
        return None  # it changes the outputs with no rewrite at all: not a rule's doing
    lo, hi = 0, len(applied)  # lo rewrites keep the outputs, hi rewrites change them
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _pass_changes(p, ctx, tol, mid)(before, feeds)[0]:
            hi = mid
        else:
            lo = mid
    rule, node = applied[hi - 1]
    return rule, node, hi


def _write_subgraph(p, ctx, before: Graph, feeds, tol, out: Path, info: dict) -> tuple[int, int]:
    """Minimize ``before`` to the sub-graph on which ``p`` still changes the outputs; write it to ``out``."""
    from .fuzz.minimize import minimize
    from .fuzz.run import write_case
    from .onnx_io import from_onnx_model, to_onnx_model

    model = to_onnx_model(before, keep_fused=True)
    values = _all_values(before, feeds)
    changes = _pass_changes(p, ctx, tol)

    def fails(m, f) -> bool:
        try:
            g = from_onnx_model(m)
        except GraphoptError:
            return False
        return changes(g, f)[0]

    small, small_feeds = minimize(model, {v.name: feeds[v.name] for v in before.inputs}, fails, values=values)
    write_case(out, small, small_feeds, {**info, "nodes": len(model.graph.node),
                                         "minimized_nodes": len(small.graph.node)})
    return len(model.graph.node), len(small.graph.node)


def _all_values(graph: Graph, feeds) -> dict[str, np.ndarray]:
    """Every value of ``graph`` on ``feeds``, by name, from the NumPy reference."""
    g = graph.clone()
    for n in g:
        for v in n.outputs:
            if not v.is_graph_output and not v.meta.get("onnx_omitted"):
                g.add_output(v)
    values = dict(feeds)
    values.update({k: np.asarray(v.const) for k, v in g.initializers.items()})
    try:
        outs = _reference(g, feeds)
    except Exception:
        return values
    values.update(zip([v.name for v in g.outputs], outs))
    return values


def bisect(model, feeds: Mapping[str, np.ndarray] | None = None, *, backend: str = "cpu", level: int = 2,
           passes: Sequence[str] | None = None, disable: Sequence[str] | None = None,
           plugins: Sequence[str] = (), rtol: float | None = None, atol: float | None = None,
           out_dir: str | Path | None = None, seed: int = 0, batch: int = 1) -> BisectResult:
    """Find the first pass application (and rule rewrite) that changes ``model``'s outputs.

    ``feeds`` default to random inputs (``testing.random_feeds(seed, batch)``); ``out_dir``
    receives the smallest sub-graph that reproduces the change.

    >>> from graphopt.builder import GraphBuilder
    >>> b = GraphBuilder(); _ = b.output(b.op("Relu", b.op("Neg", b.op("Neg", b.input("x", (4,))))), "y")
    >>> bisect(b.graph).pass_name is None
    True
    """
    import graphopt

    from .plugin_loader import load_plugin
    from .testing import random_feeds

    for spec in plugins:
        load_plugin(spec)
    graph = graphopt.load(model).clone()
    if feeds is None:
        try:
            feeds = random_feeds(graph, seed=seed, batch=batch)
        except ValueError as exc:
            raise InputError(f"bisect: {exc}") from None
    from .backend import check_feeds

    feeds = check_feeds(graph, feeds)
    names = [v.name for v in graph.outputs]
    expected = _reference(graph, feeds)
    tol = (rtol, atol)
    replay = _Replay(graph, feeds, expected, names, tol, backend, level, passes, disable)
    found = replay.run()
    res = BisectResult(applications=replay.applications, history=replay.history)
    if found is None:
        from .fuzz.check import differ

        try:
            compiled = replay.backend.compile(replay.graph, replay.low_ctx)
            with np.errstate(all="ignore"):
                got = [np.asarray(o) for o in compiled.run(feeds)]
            why = differ(expected, got, names, *tol)
        except Exception as exc:
            why = f"compiling or running it raised {type(exc).__name__}: {str(exc).splitlines()[0]}"
        if why is not None:
            res.pass_name, res.source, res.kind, res.message = backend, "backend", "backend", why
        return res
    p, ctx, it, before, why = found
    res.pass_name, res.source, res.kind, res.iteration, res.message = p.name, p.source, p.kind, it, why
    res.nodes = len(before)
    rewrite = _first_rewrite(p, ctx, before, feeds, tol)
    if rewrite is not None:
        res.rule, res.node, res.rewrite_index = rewrite
    if out_dir is not None:
        info = {"pass": p.name, "source": p.source, "kind": p.kind, "iteration": it, "rule": res.rule,
                "node": res.node, "message": why,
                "reproduce": f"graphopt bisect model.onnx --inputs inputs.npz --passes {p.name}"
                             + (f" --backend {backend}" if p.kind == "lowering" else "")}
        folder = Path(out_dir)
        _, res.minimized_nodes = _write_subgraph(p, ctx, before, feeds, tol, folder, info)
        res.folder = str(folder)
    return res


__all__ = ["bisect", "BisectResult"]


# -- graphopt bisect ----------------------------------------------------------------------------------

def _arguments(p) -> None:
    from .commands.base import add_backend_options, add_common, add_shape_options, nonneg_float, nonneg_int

    p.add_argument("model")
    add_backend_options(p)
    add_shape_options(p)
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the smallest reproducing sub-graph goes (default bisect-<model name>)")
    p.add_argument("--rtol", type=nonneg_float, default=None, help="relative tolerance (default 1e-3 for float32)")
    p.add_argument("--atol", type=nonneg_float, default=None, help="absolute tolerance (default 1e-4 for float32)")
    add_common(p)


EXAMPLE = ("examples:\n  graphopt bisect model.onnx                             (random inputs, -O2, cpu)\n"
           "  graphopt bisect model.onnx --inputs in.npz --plugin my_passes.py --out culprit\n"
           "  graphopt bisect bert.onnx --input-shape input_ids:1,128 --backend cuda-emu -O3")


@register_verb("bisect", "find the first pass (and rule rewrite) that changes a model's outputs", EXAMPLE,
               _arguments)
def cmd_bisect(args) -> int:
    """Exit status 0 when no pass changes the outputs, 3 when one does (its sub-graph written)."""
    from .commands.base import check_writable, load_model, split
    from .commands.inputs import make_feeds, parse_input_shapes
    from .commands.output import Table, show
    from .progress import step

    out = Path(args.out or f"bisect-{Path(args.model).stem}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a folder")
    check_writable(str(out / "model.onnx") if out.is_dir() else str(out), "--out")
    graph = load_model(args)
    feeds = make_feeds(graph, args.inputs, parse_input_shapes(args.input_shape), args.batch)
    with step("bisecting the passes"):
        res = bisect(graph, feeds, backend=args.backend, level=args.level, passes=split(args.passes),
                     disable=split(args.disable), rtol=args.rtol, atol=args.atol, out_dir=out, seed=args.seed)
    t = Table("pass", "iteration", "outputs")
    for h in res.history:
        t.add_row(h["pass"], h["iteration"], "same" if h["ok"] else "CHANGED")
    show(args, res.to_json(), t, res.summary())
    return 3 if res.pass_name is not None else 0
