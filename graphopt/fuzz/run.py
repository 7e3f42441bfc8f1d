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
            lines.append(f"  {c.folder}: {c.backend} -O{c.level} {c.outcome.kind}, {c.nodes} -> "
                         f"{c.minimized_nodes} node(s): {c.outcome.message[:160]}")
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
         progress: Callable[[int, "FuzzStats"], None] | None = None) -> FuzzStats:
    """Generate ``count`` graphs (or as many as ``seconds`` allow), check each on every backend and
    level against onnxruntime, and minimize each failure into ``out_dir/<case>/``.

    >>> stats = fuzz(seed=1, count=5, backends=["cpu"], levels=[2])
    >>> stats.graphs
    5
    """
    rows = table_rows(ops)
    share = {**DEFAULT_SHARE, **(share or {})}
    stats = FuzzStats(seed, list(backends), list(levels))
    for b in backends:
        for lv in levels:
            stats.counts[(b, lv)] = Counter()
    out = Path(out_dir) if out_dir is not None else None
    seen: dict[str, str] = {}
    t0 = time.perf_counter()
    i = start
    while (count is None or i < start + count) and (seconds is None or time.perf_counter() - t0 < seconds):
        model, feeds, opset = generate(seed, i, rows)
        stats.graphs += 1
        stats.opsets[opset] += 1
        stats.ops_seen.update(n.op_type for n in model.graph.node)
        checker = Checker(model, feeds)
        share_rng = np.random.default_rng([seed, i, 1])
        for b in backends:
            if share_rng.random() >= share.get(b, 1.0):
                continue
            for lv in levels:
                outcome = checker.classify(b, lv)
                stats.counts[(b, lv)][outcome.kind] += 1
                if outcome.kind in FAILURES:
                    stats.cases.append(_record(stats, i, b, lv, outcome, model, feeds, out, seen,
                                               minimize_failures, seed, opset))
        i += 1
        if progress is not None:
            progress(i - start, stats)
    stats.seconds = time.perf_counter() - t0
    return stats


def _record(stats, index, backend, level, outcome, model, feeds, out, seen, do_min, seed, opset) -> Case:
    case = Case(index, backend, level, outcome, len(model.graph.node))
    small, small_feeds = model, feeds
    if do_min:
        small, small_feeds = minimize(model, feeds, _still_fails(outcome.kind, backend, level, outcome.error_type))
    case.minimized_nodes = len(small.graph.node)
    if out is None:
        return case
    now = Checker(small, small_feeds).classify(backend, level) if do_min else outcome
    sig = _signature(small, outcome, backend, level)
    name = f"{outcome.kind}-{backend}-O{level}-g{index}"
    if sig in seen:
        case.duplicate_of = seen[sig]
        case.folder = seen[sig]
        return case
    seen[sig] = name
    case.folder = name
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
