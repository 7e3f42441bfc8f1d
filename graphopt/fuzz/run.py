"""The fuzzing loop: generate, check on every backend and level, minimize failures, count.

Graph ``i`` of seed ``s`` comes from ``np.random.default_rng([s, i])`` alone (for one
graphopt version: a new generator row changes the draws), so
any graph of a run can be made again (``generate(s, i)``) without the others.
Backends other than ``cpu`` may take a share of the graphs only
(``DEFAULT_SHARE``: the host emulation of the CUDA backend compiles every
kernel with the C++ compiler, so it sees one graph in fifty by default).

>>> stats = fuzz(seed=0, count=20, backends=["cpu"], levels=[0, 2])    # doctest: +SKIP
>>> print(stats.table())                                              # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import GraphoptError
from .check import FAILURES, KINDS, Checker, Outcome, run_graphopt, run_onnxruntime, run_reference, differ
from .gen import GraphGen, Reject
from .minimize import intermediate_values, minimize
from .opgen import MOTIFS, OPS, op_name

OPSETS = (13, 17, 18, 20, 21, 23)
OPSET_WEIGHTS = (0.1, 0.3, 0.2, 0.1, 0.2, 0.1)
DEFAULT_SHARE = {"cuda-emu": 0.02}  # the fraction of graphs a slow backend sees
MAX_NODES = 10


def table_rows(ops: Sequence[str] | None):
    """The generator rows a run draws from: every op and motif, or the rows of the named ops."""
    if not ops:
        return {**OPS, **MOTIFS}
    known = {op_name(k) for k in OPS}
    unknown = sorted(set(ops) - known)
    if unknown:
        raise GraphoptError(f"no fuzz generator for op {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return {k: v for k, v in OPS.items() if op_name(k) in set(ops)}


def generate(seed: int, index: int, rows: dict | None = None, max_nodes: int = MAX_NODES):
    """``(model, feeds, opset)`` of graph ``index`` of run ``seed``.

    >>> model, feeds, opset = generate(0, 7)
    >>> len(model.graph.node) >= 1
    True
    """
    rows = rows or {**OPS, **MOTIFS}
    rng = np.random.default_rng([seed, index])
    opset = int(rng.choice(OPSETS, p=OPSET_WEIGHTS))
    usable = [(k, r) for k, r in rows.items() if r.min_opset <= opset <= r.max_opset]
    if not usable:
        opset = max(r.min_opset for r in rows.values())
        usable = [(k, r) for k, r in rows.items() if r.min_opset <= opset <= r.max_opset]
    weights = np.array([r.weight for _, r in usable], np.float64)
    weights /= weights.sum()
    g = GraphGen(rng, opset)
    target = int(rng.integers(1, max_nodes + 1))
    for _ in range(4 * target):
        if len(g.nodes) >= target:
            break
        _, row = usable[int(rng.choice(len(usable), p=weights))]
        state = (len(g.vals), len(g.inputs), len(g.inits), len(g.nodes), dict(g.value_info), len(g.sinks))
        try:
            row.fn(g)
        except (Reject, ValueError, IndexError):  # no fitting operand, or a draw the op cannot take
            del g.vals[state[0]:], g.inputs[state[1]:], g.inits[state[2]:], g.nodes[state[3]:], g.sinks[state[5]:]
            g.value_info = state[4]
    if not g.nodes:
        g.emit("Identity", [g.pick()])
    outputs = None
    if rng.random() < 0.2:  # an intermediate value read by a node is a graph output too
        read = {i for n in g.nodes for i in n.input}
        outputs = [v for v in g.vals if v.name not in read and v not in g.inputs] + g.sinks
        inner = [v for v in g.vals if v.name in read and v not in g.inputs]
        if inner:
            outputs.append(inner[int(rng.integers(0, len(inner)))])
    return g.model(outputs), g.feeds(), opset


@dataclass
class Case:
    """One failure: where it happened, what it was, and its minimized reproducer."""

    index: int
    backend: str
    level: int
    outcome: Outcome
    nodes: int
    minimized_nodes: int | None = None
    folder: str | None = None
    duplicate_of: str | None = None
    signature: str = ""


@dataclass
class FuzzStats:
    seed: int
    backends: list[str]
    levels: list[int]
    graphs: int = 0
    seconds: float = 0.0
    counts: dict[tuple[str, int], Counter] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)
    ops_seen: Counter = field(default_factory=Counter)
    opsets: Counter = field(default_factory=Counter)
    ops_filter: list[str] | None = None  # the run's --ops (needed to make its graphs again)

    @property
    def failures(self) -> int:
        return sum(c[k] for c in self.counts.values() for k in FAILURES)

    def to_json(self) -> dict:
        return {
            "seed": self.seed, "graphs": self.graphs, "seconds": round(self.seconds, 1),
            "results": [{"backend": b, "level": lv, "graphs": sum(c.values()), **{k: c[k] for k in KINDS}}
                        for (b, lv), c in self.counts.items()],
            "cases": [{"graph": c.index, "backend": c.backend, "level": c.level, "kind": c.outcome.kind,
                       "message": c.outcome.message, "nodes": c.nodes, "minimized_nodes": c.minimized_nodes,
                       "folder": c.folder, "duplicate_of": c.duplicate_of} for c in self.cases],
            "ops": dict(self.ops_seen.most_common()), "opsets": dict(sorted(self.opsets.items())),
            "ops_filter": self.ops_filter,
        }

    def table(self) -> str:
        """Counts per backend and level, then ``summary()``."""
        lines = [f"{'backend':<14} {'level':>5} {'graphs':>7} " + " ".join(f"{k:>14}" for k in KINDS)]
        for (b, lv), c in self.counts.items():
            lines.append(f"{b:<14} {'-O' + str(lv):>5} {sum(c.values()):>7} "
                         + " ".join(f"{c[k]:>14}" for k in KINDS))
        return "\n".join(lines + [self.summary()])

    def summary(self) -> str:
        """The run in one line, then one line per distinct reproducer."""
        unique = [c for c in self.cases if c.folder and not c.duplicate_of]
        lines = [f"{self.graphs} graphs in {self.seconds:.0f} s (seed {self.seed}); {len(self.cases)} failure(s), "
                 f"{len(unique)} distinct reproducer(s)"]
        for c in unique:
            where = c.backend if c.level is None else f"{c.backend} -O{c.level}"
            size = f"{c.nodes} node(s), not minimized" if c.minimized_nodes is None else \
                f"{c.nodes} -> {c.minimized_nodes} node(s)"
            lines.append(f"  {c.folder}: {where} {c.outcome.kind}, {size}: {c.outcome.message[:160]}")
        return "\n".join(lines)


def _still_fails(kind: str, backend: str, level: int, error_type: str) -> Callable:
    """The minimizer's test: the same kind of failure at the same backend and level (a crash: of the same
    exception class)."""
    def fails(model, feeds) -> bool:
        o = Checker(model, feeds).classify(backend, level)
        return o.kind == kind and (kind != "crash" or o.error_type == error_type)
    return fails


def _signature(model, outcome: Outcome, backend: str, level: int) -> str:
    ops = "-".join(sorted({n.op_type for n in model.graph.node}))
    return f"{backend}-O{level}-{outcome.kind}-{outcome.error_type}-{ops}"


def write_case(folder: Path, model, feeds: dict, info: dict) -> None:
    """A reproducer folder: ``model.onnx``, ``inputs.npz`` and ``case.json`` (what failed, how to rerun)."""
    from ..fileutil import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "model.onnx") as f:
        f.write(model.SerializeToString())
    with atomic_write(folder / "inputs.npz") as f:
        np.savez(f, **feeds)
    with atomic_write(folder / "case.json", "w") as f:
        json.dump(info, f, indent=2, default=str)


def fuzz(seed: int = 0, count: int | None = 100, seconds: float | None = None, ops: Sequence[str] | None = None,
         backends: Sequence[str] = ("cpu",), levels: Sequence[int] = (0, 1, 2, 3), out_dir: str | Path | None = None,
         share: dict[str, float] | None = None, minimize_failures: bool = True, start: int = 0,
         progress: Callable[[int, "FuzzStats"], None] | None = None, isolate: bool = False,
         plugins: Sequence[str] = (), timeout: float = 600.0, log: str | Path | None = None) -> FuzzStats:
    """Generate ``count`` graphs (or as many as ``seconds`` allow), check each on every backend and
    level against onnxruntime, and minimize each failure into ``out_dir/<case>/``.

    ``isolate`` checks each graph in a worker process (``worker.py``): a crash by a signal or a
    hang past ``timeout`` seconds costs that graph only. ``plugins`` are loaded there too.
    ``log`` gets one JSON line per outcome as it comes (a long run stopped from outside keeps
    what it did; ``start`` resumes it).

    >>> stats = fuzz(seed=1, count=5, backends=["cpu"], levels=[2])
    >>> stats.graphs
    5
    """
    table_rows(ops)  # an unknown op is refused before any work
    params = {"seed": seed, "ops": list(ops) if ops else None, "backends": list(backends), "levels": list(levels),
              "out_dir": None if out_dir is None else str(out_dir), "share": {**DEFAULT_SHARE, **(share or {})},
              "minimize": minimize_failures, "plugins": list(plugins)}
    stats = FuzzStats(seed, list(backends), list(levels), ops_filter=list(ops) if ops else None)
    for b in backends:
        for lv in levels:
            stats.counts[(b, lv)] = Counter()
    collect = _Collector(stats, open(log, "a", buffering=1) if log is not None else None)
    seen: dict[str, str] = {}
    t0 = time.perf_counter()
    i = start
    worker = None
    if isolate:
        from .worker import Worker

        worker = Worker(params)
    try:
        while (count is None or i < start + count) and (seconds is None or time.perf_counter() - t0 < seconds):
            if worker is None:
                check_graph(i, params, collect, seen)
            else:
                _check_isolated(worker, i, params, collect, timeout)
            i += 1
            if progress is not None:
                progress(i - start, stats)
    finally:
        if worker is not None:
            worker.close()
        if collect.log is not None:
            collect.log.close()
    stats.seconds = time.perf_counter() - t0
    return stats


def check_graph(index: int, params: dict, emit: Callable[..., None], seen: dict[str, str], skip=()) -> None:
    """Generate graph ``index`` and check it on every backend and level of ``params`` (cells in
    ``skip`` left out), reporting each step to ``emit`` (see ``_Collector`` for the events)."""
    seed, out = params["seed"], params["out_dir"] and Path(params["out_dir"])
    model, feeds, opset = generate(seed, index, table_rows(params["ops"]))
    emit("graph", index, opset, [n.op_type for n in model.graph.node])
    emit("step", "onnxruntime", None, "check")
    checker = Checker(model, feeds)
    skip = {tuple(c) for c in skip}
    for b, lv in _cells(index, params):
        if (b, lv) in skip:
            continue
        emit("step", b, lv, "check")
        outcome = checker.classify(b, lv)
        emit("outcome", b, lv, outcome.kind, outcome.message, outcome.error_type)
        if outcome.kind in FAILURES:
            emit("step", b, lv, "minimize")
            case = _record(index, b, lv, outcome, model, feeds, out, seen, params["minimize"], seed, opset)
            emit("case", {k: getattr(case, k) for k in ("index", "backend", "level", "nodes", "minimized_nodes",
                                                         "folder", "duplicate_of", "signature")}
                 | {"kind": outcome.kind, "message": outcome.message, "error_type": outcome.error_type})


def _cells(index: int, params: dict) -> list[tuple[str, int]]:
    """The (backend, level) pairs graph ``index`` is checked on: a backend with a share sees a
    fixed pseudo-random part of the graphs."""
    share_rng = np.random.default_rng([params["seed"], index, 1])
    return [(b, lv) for b in params["backends"] if share_rng.random() < params["share"].get(b, 1.0)
            for lv in params["levels"]]


class _Collector:
    """Turns ``check_graph``'s events into ``FuzzStats``: ``("graph", index, opset, ops)``, ``("step",
    backend, level, phase)``, ``("outcome", backend, level, kind, message, error_type)``, ``("case", dict)``."""

    def __init__(self, stats: FuzzStats, log=None):
        self.stats = stats
        self.log = log
        self.index = None
        self.counted: set[int] = set()
        self.last_step: tuple | None = None
        self.done: set[tuple] = set()

    def __call__(self, *event) -> None:
        kind = event[0]
        if kind == "graph":
            _, index, opset, ops = event
            self.index = index
            if index not in self.counted:  # a graph checked again after a worker died counts once
                self.counted.add(index)
                self.stats.graphs += 1
                self.stats.opsets[opset] += 1
                self.stats.ops_seen.update(ops)
        elif kind == "step":
            self.last_step = event[1:]
        elif kind == "outcome":
            _, b, lv, k, message, error_type = event
            self.stats.counts[(b, lv)][k] += 1
            self.done.add((b, lv))
            if self.log is not None:
                self.log.write(json.dumps({"graph": self.index, "backend": b, "level": lv, "kind": k,
                                           "message": message[:300]}) + "\n")
        elif kind == "case":
            c = event[1]
            case = Case(c["index"], c["backend"], c["level"], Outcome(c["kind"], c["message"], c["error_type"]),
                        c["nodes"], c["minimized_nodes"], c["folder"], c["duplicate_of"])
            case.signature = c["signature"]
            self.stats.cases.append(case)


def _check_isolated(worker, index: int, params: dict, collect: _Collector, timeout: float) -> None:
    """Check graph ``index`` in ``worker``; after a death, record what crashed and check the cells left."""
    collect.done, collect.last_step = set(), None
    for _ in range(len(params["backends"]) * len(params["levels"]) + 1):
        events, death = worker.check(index, collect.done, timeout)
        for e in events:
            collect(*e)
        if death is None:
            return
        step = collect.last_step
        if step is None or step[0] == "onnxruntime":
            why = "the generator" if step is None else "onnxruntime"
            for b, lv in _cells(index, params):
                collect("outcome", b, lv, "ort_divergence" if step else "invalid",
                        f"{why} crashed the process ({death})", "")
            if step is not None:  # onnxruntime's crash, kept as a reproducer (not a graphopt failure)
                collect("case", _unminimized_case(index, "onnxruntime", None, f"onnxruntime crashed the process "
                                                  f"({death})", death, params, "ort_divergence"))
            return
        b, lv, phase = step
        if phase == "check":
            message = f"the process died in graphopt ({death})"
            collect("outcome", b, lv, "crash", message, death)
            collect("case", _unminimized_case(index, b, lv, message, death, params))
        # a death while minimizing leaves the outcome, already counted, without a reproducer
        collect.done.add((b, lv))


def _unminimized_case(index, backend, level, message, death, params, kind: str = "crash") -> dict:
    """The generated graph itself as the reproducer of a crash that killed the process."""
    model, feeds, opset = generate(params["seed"], index, table_rows(params["ops"]))
    where = backend if level is None else f"{backend}-O{level}"
    folder = f"{kind}-{where}-g{index}"
    if params["out_dir"]:
        rerun = f"graphopt verify model.onnx --inputs inputs.npz -O{level} --backend {backend}" if level is not None \
            else "python -c \"import onnxruntime as o, numpy as n; z = n.load('inputs.npz'); " \
                 "o.InferenceSession('model.onnx').run(None, dict(z))\""
        write_case(Path(params["out_dir"]) / folder, model, feeds, {
            "kind": kind, "backend": backend, "level": level, "message": message, "seed": params["seed"],
            "graph": index, "opset": opset, "nodes": len(model.graph.node), "minimized_nodes": None,
            "ops": [n.op_type for n in model.graph.node], "reproduce": rerun})
    return {"index": index, "backend": backend, "level": level, "nodes": len(model.graph.node),
            "minimized_nodes": None, "folder": folder if params["out_dir"] else None, "duplicate_of": None,
            "signature": folder, "kind": kind, "message": message, "error_type": death}


def _record(index, backend, level, outcome, model, feeds, out, seen, do_min, seed, opset) -> Case:
    case = Case(index, backend, level, outcome, len(model.graph.node))
    small, small_feeds = model, feeds
    if do_min:
        small, small_feeds = minimize(model, feeds, _still_fails(outcome.kind, backend, level, outcome.error_type))
    case.minimized_nodes = len(small.graph.node)
    case.signature = _signature(small, outcome, backend, level)
    if out is None:
        return case
    now = Checker(small, small_feeds).classify(backend, level) if do_min else outcome
    name = f"{outcome.kind}-{backend}-O{level}-g{index}"
    if case.signature in seen:
        case.duplicate_of = case.folder = seen[case.signature]
        return case
    seen[case.signature] = case.folder = name
    write_case(out / name, small, small_feeds, {
        "kind": outcome.kind, "backend": backend, "level": level, "message": now.message,
        "message_before_minimizing": outcome.message,
        "seed": seed, "graph": index, "opset": opset, "nodes": case.nodes, "minimized_nodes": case.minimized_nodes,
        "ops": [n.op_type for n in small.graph.node],
        "reproduce": f"graphopt verify model.onnx --inputs inputs.npz -O{level} --backend {backend}",
        "regenerate": f"graphopt fuzz --seed {seed} --start {index} --count 1 --backend {backend} --level {level}",
    })
    return case


__all__ = ["fuzz", "generate", "FuzzStats", "Case", "write_case", "table_rows", "run_graphopt", "run_onnxruntime",
           "run_reference", "differ", "intermediate_values"]
