"""Pass registration and the ``PassManager``.

>>> @register_pass("drop_nothing", opt_level=1)
... def drop_nothing(graph, ctx):
...     "Leaves the graph as it is."
...     return PassResult(False)

Levels: ``-O0`` runs nothing, ``-O1`` safe cleanups (exact to the bit), ``-O2``
(default) every rewrite that is exact up to floating-point reassociation and the
sign of a zero (``x + 0.0 => x``), ``-O3`` adds layout and precision changes. ``kind="graph"`` passes write portable ONNX; ``kind="lowering"``
passes belong to a backend's pipeline and may create graphopt's fused ops.
"""
from __future__ import annotations

import contextlib
import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import GraphoptError, PassError
from .ir import Graph
from .patterns import Rule, RuleStats, apply_rules


@dataclass
class PassResult:
    """What a pass did: ``modified``, counters (``stats``), and refusal reasons."""

    modified: bool
    stats: dict[str, int] = field(default_factory=dict)
    refused: Counter = field(default_factory=Counter)  # (rule, reason) -> count

    @classmethod
    def from_rules(cls, modified: bool, rs: RuleStats) -> "PassResult":
        return cls(modified, dict(rs.applied), Counter(rs.refused))


@dataclass
class PassInfo:
    name: str
    fn: Callable[[Graph, "PassContext"], PassResult]
    opt_level: int = 1
    kind: str = "graph"  # "graph" | "lowering"
    order: int = 100  # position in the default pipeline
    doc: str = ""
    source: str = "graphopt"  # the plugin distribution that registered it
    options: tuple[str, ...] = ()  # the ctx.options keys it reads (graphopt.optimize/compile check them)

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


_PASSES: dict[str, PassInfo] = {}
_current_source = ["graphopt"]


def register_pass(name: str, opt_level: int = 1, kind: str = "graph", order: int = 100,
                  options: tuple[str, ...] = ()):
    """Decorator: register ``fn(graph, ctx) -> PassResult`` under ``name``. ``options`` names
    the ``ctx.options`` keys the pass reads, so that a misspelt option is an error, not ignored."""
    if kind not in ("graph", "lowering"):
        raise ValueError(f"pass kind must be 'graph' or 'lowering', not {kind!r}")

    def deco(fn):
        _PASSES[name] = PassInfo(name, fn, opt_level, kind, order, (fn.__doc__ or "").strip(), _current_source[0],
                                 tuple(options))
        return fn

    return deco


def rule_pass(name: str, rules: list[Rule], opt_level: int = 1, kind: str = "graph", order: int = 100,
              doc: str = ""):
    """Register a pass that is just a list of rules applied to a fixed point."""

    def fn(graph: Graph, ctx: "PassContext") -> PassResult:
        modified, stats = apply_rules(graph, rules)
        return PassResult.from_rules(modified, stats)

    fn.__doc__ = doc or "\n".join(r.name for r in rules)
    fn.__name__ = name
    register_pass(name, opt_level, kind, order)(fn)
    return fn


def check_options(options, backend=None) -> None:
    """Refuse an option that no registered pass (and not ``backend``) reads: one line naming it
    and what is accepted. Keys starting with ``_`` are internal and pass unchecked.

    >>> check_options({"keep_io_types": False})
    """
    known = {o for p in all_passes() for o in p.options} | set(getattr(backend, "options", {}) or {})
    unknown = sorted(k for k in options if not k.startswith("_") and k not in known)
    if unknown:
        where = f"backend {backend.name!r} or any pass" if backend is not None else "any pass"
        raise GraphoptError(f"unknown option {unknown[0]!r}: not read by {where} (options: "
                            f"{', '.join(sorted(known)) or 'none'})")


def get_pass(name: str) -> PassInfo:
    from .plugin_loader import load_plugins

    load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        known = ", ".join(sorted(_PASSES))
        raise GraphoptError(f"unknown pass {name!r} (known: {known})") from None


def all_passes() -> list[PassInfo]:
    from .plugin_loader import load_plugins

    load_plugins()
    return sorted(_PASSES.values(), key=lambda p: (p.kind != "graph", p.order, p.name))


ON_REQUEST = 4  # a pass at this level is in no -O pipeline: it runs only when named (onnxsim, quantization)


def default_pipeline(level: int, kind: str = "graph") -> list[PassInfo]:
    if level <= 0:
        return []
    return [p for p in all_passes() if p.kind == kind and p.opt_level <= level]


@dataclass
class PassContext:
    """Options every pass can read."""

    level: int = 2
    verify: bool = False  # run graph.verify() after every pass
    backend: str | None = None
    keep_fused: bool = False
    target_opset: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fold_size_limit: int = 1 << 20  # elements: constant folding never writes a bigger tensor


@dataclass
class PassRecord:
    name: str
    iteration: int
    seconds: float
    nodes_before: int
    nodes_after: int
    modified: bool
    stats: dict[str, int]
    refused: Counter


@dataclass
class Report:
    """Everything the pass manager did, per pass run; ``summary()`` aggregates."""

    records: list[PassRecord] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    iterations: int = 0
    seconds: float = 0.0

    def summary(self) -> list[dict]:
        rows: dict[str, dict] = {}
        for r in self.records:
            row = rows.setdefault(r.name, {"pass": r.name, "runs": 0, "seconds": 0.0, "nodes_removed": 0,
                                           "applied": Counter(), "refused": Counter()})
            row["runs"] += 1
            row["seconds"] += r.seconds
            row["nodes_removed"] += r.nodes_before - r.nodes_after  # its own work, over all its runs
            row["applied"].update(r.stats)
            row["refused"] = r.refused  # the last run's: refusals that still stand in the final graph
        return list(rows.values())

    def to_json(self) -> dict:
        return {
            "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
            "iterations": self.iterations, "seconds": round(self.seconds, 6),
            "passes": [{**{k: v for k, v in row.items() if k not in ("applied", "refused")},
                        "seconds": round(row["seconds"], 6),
                        "applied": dict(row["applied"]),
                        "refused": [{"rule": rule, "reason": why, "count": n}
                                    for (rule, why), n in row["refused"].items()]}
                       for row in self.summary()],
        }

    def table(self):
        """A ``Table`` (``graphopt.commands.output``): per pass its time, the nodes it removed, the rules
        it applied and, on rows of their own, the refusals that still stand; the total under it.
        ``print(report.table())`` prints it plain."""
        from .commands.output import Table

        t = Table("pass", "ms", "nodes", "applied / refused", right=("ms", "nodes"),
                  footer=f"total: {self.nodes_before} -> {self.nodes_after} nodes in {self.seconds * 1e3:.1f} ms, "
                         f"{self.iterations} iteration(s)")
        for row in self.summary():
            applied = ", ".join(f"{k}={v}" for k, v in row["applied"].items()) or "-"
            delta = f"{-row['nodes_removed']:+d}" if row["nodes_removed"] else "0"
            t.add_row(row["pass"], f"{row['seconds'] * 1e3:.1f}", delta, applied)
            for (rule, why), n in row["refused"].items():
                t.add_row("", "", "", f"refused {rule} x{n}: {why}")
        return t


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic collector held off for the block.

    The collector pauses in proportion to the whole heap, and a large graph is a large
    heap of linked objects: collections during a pass run (or a backend's compile) make
    its time grow faster than the graph. That work makes little cyclic garbage, so the
    collector waits until it is over (what the IR drops is freed by reference counting).

    >>> with gc_paused():
    ...     pass
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PassManager:
    """Runs passes in order, repeating the list until nothing changes (bounded).

    >>> pm = PassManager(["eliminate_dead_code"])  # doctest: +SKIP
    >>> report = pm.run(graph)                      # doctest: +SKIP
    """

    def __init__(self, passes: Iterable[str | PassInfo], ctx: PassContext | None = None,
                 fixed_point: bool = True, max_iterations: int = 8):
        self.passes = [get_pass(p) if isinstance(p, str) else p for p in passes]
        self.ctx = ctx or PassContext()
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations

    def run(self, graph: Graph) -> Report:
        with gc_paused():
            return self._run(graph)

    def _run(self, graph: Graph) -> Report:
        report = Report(nodes_before=len(graph))
        t_start = time.perf_counter()
        done: list[str] = []
        # passes that ran on the graph as it is now and left it unchanged: once every pass is
        # among them the graph is a fixed point, without running the passes that follow the
        # last change again (on a large graph a confirming round cost as much as the first)
        clean: set[int] = set()
        for it in range(1, (self.max_iterations if self.fixed_point else 1) + 1):
            report.iterations = it
            any_change = False
            for i, p in enumerate(self.passes):
                if len(clean) == len(self.passes):
                    break
                before = len(graph)
                t0 = time.perf_counter()
                try:
                    res = p.fn(graph, self.ctx)
                    if not isinstance(res, PassResult):
                        raise TypeError(f"returned {type(res).__name__}, not PassResult")
                    if self.ctx.verify:
                        graph.verify()
                except Exception as exc:
                    prior = ", ".join(done[-5:]) or "none"
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise PassError(f"pass {p.name!r} (from {p.source}) failed: {msg} "
                                    f"[passes run before it: {prior}]") from exc
                dt = time.perf_counter() - t0
                report.records.append(PassRecord(p.name, it, dt, before, len(graph), res.modified,
                                                 dict(res.stats), Counter(res.refused)))
                done.append(p.name)
                any_change |= res.modified
                if res.modified:
                    clean.clear()
                else:
                    clean.add(i)
            if not any_change or len(clean) == len(self.passes):
                break
        report.nodes_after = len(graph)
        report.seconds = time.perf_counter() - t_start
        return report
