"""Check the failures of an earlier run again, at this version: is each one fixed?

Graph ``i`` of a run is made again from the report's seed and ``--ops`` (the same
graph while the generator is unchanged), and each distinct (graph, backend,
level) of the report's cases is checked once, in a worker process, without
minimizing. Cases onnxruntime alone had (``level`` None) are not graphopt's and
are left out.

>>> rows = recheck(json.load(open("report.json")))     # doctest: +SKIP
>>> rows[0]["was"], rows[0]["now"]                      # doctest: +SKIP
('crash', 'ok')
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..errors import InputError
from .check import KINDS
from .run import fuzz


def recheck(report: dict, *, isolate: bool = True, plugins: Sequence[str] = (), timeout: float = 600.0,
            progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One row per distinct (graph, backend, level) of ``report["cases"]`` (a ``--report`` of
    ``graphopt fuzz``): ``graph``, ``backend``, ``level``, ``was`` (the kind then), ``now`` (the kind
    at this version) and ``message`` (now's, for a failure).

    >>> recheck({"seed": 1, "cases": []})
    []
    """
    try:
        seed = int(report["seed"])
        cases = [(int(c["graph"]), str(c["backend"]), c["level"], str(c["kind"])) for c in report["cases"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a report of graphopt fuzz (--report): {type(exc).__name__}: {exc}") from None
    todo, seen = [], set()
    for graph, backend, level, kind in cases:
        if level is None or (graph, backend, level) in seen:
            continue
        seen.add((graph, backend, level))
        todo.append((graph, backend, int(level), kind))
    rows = []
    for n, (graph, backend, level, kind) in enumerate(todo):
        stats = fuzz(seed=seed, start=graph, count=1, ops=report.get("ops_filter"), backends=[backend],
                     levels=[level], share={backend: 1.0}, minimize_failures=False, isolate=isolate,
                     plugins=plugins, timeout=timeout)
        counts = stats.counts[(backend, level)]
        now = next(k for k in KINDS if counts[k])
        message = stats.cases[0].outcome.message if stats.cases else ""
        rows.append({"graph": graph, "backend": backend, "level": level, "was": kind, "now": now,
                     "message": message})
        if progress is not None:
            progress(n + 1, len(todo))
    return rows
