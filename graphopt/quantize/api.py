"""``quantize_static`` (post-training int8 with calibration), ``quantize_dynamic``,
``lower_int8`` and the report they return.

>>> qg, rep = quantize_static("model.onnx", batches, method="entropy",
...                           accuracy_budget=0.01, return_report=True)   # doctest: +SKIP
>>> print(rep.table())                                                   # doctest: +SKIP
>>> graphopt.save(qg, "model.int8.onnx")   # QDQ: runs in onnxruntime       # doctest: +SKIP
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import GraphoptError
from ..ir import Graph
from .calibration import METHODS, collect
from .diagnostics import LayerError, format_table, layer_errors, output_metric
from .qdq import LAYER_OPS, Plan, activation_params, insert_qdq, plan_qdq


@dataclass
class QuantizationReport:
    """What ``quantize_static`` did: settings, layers, per-layer errors, fallbacks."""

    method: str
    activation_type: str
    per_channel: bool
    calibration_batches: int = 0
    calibrated_tensors: int = 0
    observer_bytes: int = 0
    quantized: list[dict] = field(default_factory=list)      # {layer, op, output}
    float_layers: list[dict] = field(default_factory=list)   # {layer, op, reason}
    layer_errors: list[LayerError] = field(default_factory=list)
    metric: str | None = None
    metric_value: float | None = None
    metric_before_fallback: float | None = None
    accuracy_budget: float | None = None
    budget_met: bool | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"static int8 quantization: method={self.method}, activations={self.activation_type}, "
                 f"weights=int8 {'per-channel' if self.per_channel else 'per-tensor'} symmetric; "
                 f"{self.calibration_batches} calibration batch(es), {self.calibrated_tensors} tensors observed "
                 f"({self.observer_bytes / 1024:.0f} KiB of observer state)",
                 f"{len(self.quantized)} layer(s) in int8, {len(self.float_layers)} left float"]
        if self.layer_errors:
            lines.append(format_table(self.layer_errors))
        for f in self.float_layers:
            lines.append(f"float: {f['layer']} ({f['op']}): {f['reason']}")
        if self.metric is not None:
            line = f"{self.metric} vs float on the calibration data: {self.metric_value:.4g}"
            if self.accuracy_budget is not None:
                line += (f" (budget {self.accuracy_budget:g}: {'met' if self.budget_met else 'NOT met'}"
                         f"{'' if self.metric_before_fallback is None else f'; {self.metric_before_fallback:.4g} before fallback'})")
            lines.append(line)
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"method": self.method, "activation_type": self.activation_type, "per_channel": self.per_channel,
                "calibration_batches": self.calibration_batches, "calibrated_tensors": self.calibrated_tensors,
                "observer_bytes": self.observer_bytes, "quantized": self.quantized,
                "float_layers": self.float_layers, "layer_errors": [r.to_json() for r in self.layer_errors],
                "metric": self.metric, "metric_value": self.metric_value,
                "metric_before_fallback": self.metric_before_fallback,
                "accuracy_budget": self.accuracy_budget, "budget_met": self.budget_met, "stats": self.stats}


class _Replayable:
    """Iterate calibration data more than once without keeping it all: a re-iterable
    input (list, tuple, ...) is simply re-iterated; a one-shot iterator has its first
    ``keep`` batches cached for the measurements that follow calibration."""

    def __init__(self, data: Iterable[Mapping[str, np.ndarray]], keep: int):
        if isinstance(data, Mapping):
            raise GraphoptError("calibration_data must be an iterable of input dicts, not one dict "
                                "(wrap it in a list)")
        self.data = data
        self.one_shot = iter(data) is data
        self.keep = keep
        self.cache: list = []

    def first_pass(self):
        for i, feeds in enumerate(self.data):
            if self.one_shot and i < self.keep:
                self.cache.append(feeds)
            yield feeds

    def replay(self, limit: int | None = None):
        src = self.cache if self.one_shot else self.data
        return itertools.islice(iter(src), limit) if limit is not None else iter(src)


def _build(graph: Graph, exclude: set[str], op_types, observers, method, act_type, opts, per_channel,
           reduce_range) -> tuple[Graph, Plan, dict]:
    qg = graph.clone()
    plan = plan_qdq(qg, exclude=exclude, op_types=op_types)
    params = activation_params(plan, observers, method, act_type, opts)
    stats = insert_qdq(qg, plan, params, per_channel=per_channel, reduce_range=reduce_range)
    return qg, plan, stats


def _run_all(graph: Graph, batches) -> list[list[np.ndarray]]:
    from ..plugins.cpu.backend import CpuExecutable

    exe = CpuExecutable(graph)
    return [exe.run(f) for f in batches]


def quantize_static(model: Any, calibration_data: Iterable[Mapping[str, np.ndarray]], method: str = "minmax",
                    activation_type: str = "uint8", *, per_channel: bool = True, percentile: float = 99.99,
                    op_types: tuple[str, ...] = LAYER_OPS, exclude: Iterable[str] = (),
                    accuracy_budget: float | None = None, metric: str = "auto", optimize: bool = True,
                    bins: int = 4096, max_batches: int | None = None, measure_batches: int = 64,
                    reduce_range: bool = False, diagnostics: bool = True, return_report: bool = False,
                    progress=None):
    """Post-training static int8 quantization: calibrate, then insert QDQ.

    ``calibration_data`` is an iterable of feed dicts (input name -> batch).
    ``method``: ``minmax | percentile | entropy | mse``; ``activation_type``:
    ``uint8`` (asymmetric) or ``int8`` (symmetric). Weights are int8, symmetric,
    per output channel. With ``accuracy_budget`` the model is measured on (up
    to ``measure_batches`` of) the calibration data and the most sensitive
    layers go back to float until ``metric`` (``top1`` disagreement for
    classifiers, else ``relative_error``; see ``diagnostics.output_metric``)
    is within the budget.

    Returns the QDQ ``Graph`` (standard ONNX: ``graphopt.save`` writes a model
    onnxruntime runs; ``lower_int8`` turns it into graphopt's fused int8 ops),
    and the ``QuantizationReport`` with ``return_report=True``; the report is
    also kept in ``graph.meta["quantization_report"]``.

    >>> batches = [{"x": xb} for xb in np.split(x_train[:256], 8)]     # doctest: +SKIP
    >>> qg = quantize_static("model.onnx", batches, method="percentile") # doctest: +SKIP
    """
    from ..api import load
    from ..api import optimize as run_optimize

    if method not in METHODS:
        raise GraphoptError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if activation_type not in ("uint8", "int8"):
        raise GraphoptError(f"activation_type must be 'uint8' or 'int8', not {activation_type!r}")
    graph = load(model)
    graph = run_optimize(graph, level=2) if optimize else graph.clone()
    opts = {"percentile": percentile}
    data = _Replayable(calibration_data, measure_batches)

    universe = plan_qdq(graph, exclude=set(exclude), op_types=op_types)
    observers, nb = collect(graph, [v.name for v in universe.values], data.first_pass(), method, bins=bins,
                            max_batches=max_batches, progress=progress)
    report = QuantizationReport(method, activation_type, per_channel, nb, len(observers),
                                sum(o.nbytes() for o in observers.values()), accuracy_budget=accuracy_budget)
    excl = set(exclude)
    fallback: dict[str, str] = {}
    qg, plan, stats = _build(graph, excl, op_types, observers, method, activation_type, opts, per_channel,
                             reduce_range)
    measure = list(data.replay(measure_batches)) if (accuracy_budget is not None or diagnostics) else []
    rows: list[LayerError] = []
    if diagnostics or accuracy_budget is not None:
        rows = layer_errors(graph, qg, plan.layers, measure)
    if accuracy_budget is not None:
        ref = _run_all(graph, measure)
        name, value = output_metric(ref, _run_all(qg, measure), metric)
        report.metric, report.metric_before_fallback = name, value
        # most sensitive first: lowest local SQNR, i.e. the layer that adds the most error by itself
        order = [r.layer for r in sorted(rows, key=lambda r: r.local_sqnr_db)]
        while value > accuracy_budget and order:
            victim = order.pop(0)
            row = next(r for r in rows if r.layer == victim)
            fallback[victim] = (f"accuracy budget: most sensitive remaining layer (local SQNR "
                                f"{row.local_sqnr_db:.1f} dB)")
            excl.add(victim)
            qg, plan, stats = _build(graph, excl, op_types, observers, method, activation_type, opts,
                                     per_channel, reduce_range)
            _, value = output_metric(ref, _run_all(qg, measure), name)
        report.metric_value = value
        report.budget_met = value <= accuracy_budget
        if fallback and diagnostics:
            rows = layer_errors(graph, qg, plan.layers, measure)
        elif fallback:
            rows = [r for r in rows if r.layer not in fallback]
        if report.metric_before_fallback == value:
            report.metric_before_fallback = None
    elif diagnostics and measure:
        name, value = output_metric(_run_all(graph, measure), _run_all(qg, measure), metric)
        report.metric, report.metric_value = name, value
    report.layer_errors = rows if diagnostics else []
    report.quantized = [{"layer": lay.name, "op": lay.op_type, "output": lay.output.name} for lay in plan.layers]
    report.float_layers = [{"layer": n, "op": op,
                            "reason": fallback.get(n, "excluded by the caller" if why == "excluded" else why)}
                           for n, op, why in plan.float_nodes]
    report.stats = stats
    qg.meta["quantization_report"] = report
    return (qg, report) if return_report else qg


def lower_int8(graph: Graph, *, verify: bool = False):
    """A copy of a QDQ graph with its QDQ patterns lowered to graphopt's fused int8
    ops (``lower_qdq_int8``), which the CPU reference runs exactly.

    >>> int8 = lower_int8(qg); graphopt.compile(int8, level=0)   # doctest: +SKIP
    """
    from ..passmanager import PassContext, PassManager

    g = graph.clone()
    report = PassManager(["lower_qdq_int8"], PassContext(verify=verify), fixed_point=False).run(g)
    g.meta["lowering_report"] = report
    return g
