"""Run one model on onnxruntime, onnx's ReferenceEvaluator and graphopt, and classify the outcome.

onnxruntime is the oracle; ``onnx.reference.ReferenceEvaluator`` breaks ties,
so that a disagreement where graphopt and the reference agree is reported as an
onnxruntime-side divergence, not as a graphopt bug. Outcomes, per backend and
level:

======================  ==================================================================
``ok``                  graphopt's outputs match the oracle's (dtype, shape, values)
``mismatch``            graphopt runs and disagrees with onnxruntime (and the reference)
``crash``               graphopt raises where onnxruntime runs the model
``unsupported``         graphopt refuses an op it has no kernel for (``UnsupportedOpError``,
                        one clear line): a gap, not a wrong answer
``ort_divergence``      onnxruntime disagrees with (or refuses) a model that graphopt and
                        the reference agree on
``disputed``            no tie-breaker: onnxruntime refuses the model and graphopt disagrees
                        with the reference, or the reference cannot settle a disagreement that
                        a NaN reaches (ONNX leaves NaN handling of max/argmax-like ops open)
``invalid``             neither onnxruntime nor the reference runs it: the graph is no test
======================  ==================================================================

Besides the backends, the runner ``ort-optimized`` checks what ``graphopt optimize``
writes: the optimized model must pass onnx's full checker and give onnxruntime's
answers on onnxruntime.

Values are compared at the tolerances of a whole random graph, looser than one
op's (``GRAPH_TOLERANCES``: float32 rtol 1e-3 / atol 1e-4), because rounding
differences compound through a chain of up to a dozen ops; integers and bools
are exact; NaN matches NaN.

>>> c = Checker(model, feeds)                        # doctest: +SKIP
>>> c.classify("cpu", 2).kind                        # doctest: +SKIP
'ok'
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

GRAPH_TOLERANCES = {"float32": (1e-3, 1e-4), "float16": (1e-2, 1e-2), "float64": (1e-6, 1e-8),
                    "bfloat16": (3e-2, 3e-2)}
KINDS = ("ok", "mismatch", "crash", "unsupported", "ort_divergence", "disputed", "invalid")
FAILURES = ("mismatch", "crash")  # graphopt's side


@dataclass
class Outcome:
    kind: str
    message: str = ""
    error_type: str = ""   # the exception's class for a crash


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0][:300] if s else type(exc).__name__


def differ(expected: Sequence[np.ndarray], got: Sequence[np.ndarray], names: Sequence[str] = (),
           rtol: float | None = None, atol: float | None = None,
           steps: Sequence[float | None] = ()) -> str | None:
    """Why two output lists disagree (count, dtype, shape or values), or None when they agree.

    Floats compare at ``GRAPH_TOLERANCES`` unless ``rtol``/``atol`` are given; others exactly.
    ``steps[i]``, when given, is output i's quantization step (it comes out of a
    DequantizeLinear): it may differ by that much, one step, as int8 paths do.

    >>> differ([np.ones(2, np.float32)], [np.ones(2, np.float32) + 1e-6]) is None
    True
    """
    if len(expected) != len(got):
        return f"{len(expected)} outputs expected, {len(got)} given"
    for i, (e, g) in enumerate(zip(expected, got)):
        name = names[i] if i < len(names) else f"#{i}"
        e, g = np.asarray(e), np.asarray(g)
        if e.dtype != g.dtype or e.shape != g.shape:
            return f"output {name}: expected {e.dtype}{list(e.shape)}, got {g.dtype}{list(g.shape)}"
        if e.dtype.kind in "fc":
            rt, at = GRAPH_TOLERANCES.get(str(e.dtype), (1e-3, 1e-4))
            rt, at = rt if rtol is None else rtol, at if atol is None else atol
            if i < len(steps) and steps[i] is not None:
                at = max(at, steps[i] * 1.001)
            e64, g64 = e.astype(np.float64), g.astype(np.float64)
            with np.errstate(invalid="ignore"):
                close = np.isclose(g64, e64, rtol=rt, atol=at, equal_nan=True)
            if not close.all():
                k = int(np.argmin(close.reshape(-1)))
                return (f"output {name}: {int((~close).sum())} of {e.size} values differ, e.g. at flat index {k}: "
                        f"expected {e64.reshape(-1)[k]:.6g}, got {g64.reshape(-1)[k]:.6g}")
        elif not np.array_equal(e, g):
            k = int(np.argmax((e != g).reshape(-1)))
            return f"output {name}: values differ, e.g. at flat index {k}: expected {e.reshape(-1)[k]}, got {g.reshape(-1)[k]}"
    return None


def run_onnxruntime(model, feeds) -> tuple[list | None, str]:
    """(outputs, "") or (None, the error's first line) on onnxruntime's CPU provider, optimizations off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in sess.run(None, feeds)], ""
    except Exception as exc:
        return None, _first_line(exc)


def run_reference(model, feeds, outputs: Sequence[str] | None = None) -> tuple[list | None, str]:
    """(outputs, "") or (None, why) on ``onnx.reference.ReferenceEvaluator``."""
    from onnx.reference import ReferenceEvaluator

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outs = ReferenceEvaluator(model).run(list(outputs) if outputs else None, feeds)
        return [np.asarray(o) for o in outs], ""
    except Exception as exc:
        return None, _first_line(exc)


def _compiled(graph, feeds, backend: str, level: int) -> list:
    import graphopt

    return graphopt.compile(graph, backend=backend, level=level).run(feeds)


def _optimized_on_onnxruntime(graph, feeds, backend: str, level: int) -> list:
    """What ``graphopt optimize -O<level>`` writes, checked by onnx's full checker and run on onnxruntime."""
    import graphopt
    from ..onnx_io import to_onnx_model
    from ..onnx_io.save import check_full

    out = to_onnx_model(graphopt.optimize(graph, level=level))
    check_full(out, "the optimized model")
    outs, error = run_onnxruntime(out, feeds)
    if outs is None:
        raise RuntimeError(f"onnxruntime refuses the optimized model: {error}")
    return outs


# runners that are not a backend's compiled model; every other name is a backend
RUNNERS = {"ort-optimized": _optimized_on_onnxruntime}


def run_graphopt(model, feeds, backend: str, level: int, graph=None) -> tuple[list | None, BaseException | None]:
    """graphopt's outputs for ``model`` (already loaded: ``graph``) compiled for ``backend`` at
    ``level`` (or run by one of ``RUNNERS``: ``ort-optimized`` is the optimized ONNX file on
    onnxruntime), or the exception raised. ``compile`` and ``optimize`` work on copies, so one
    loaded graph serves every level."""
    import graphopt

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if graph is None:
                graph = graphopt.load(model)
            outs = RUNNERS.get(backend, _compiled)(graph, feeds, backend, level)
            return [np.asarray(o) for o in outs], None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 -- a crash of any kind is what we are looking for
        return None, exc


class Checker:
    """The oracle's answers for one model, computed once and shared by every backend and level."""

    def __init__(self, model, feeds: dict[str, np.ndarray]):
        self.model = model
        self.feeds = feeds
        self.names = [o.name for o in model.graph.output]
        self.ort, self.ort_error = run_onnxruntime(model, feeds)
        self.steps = _quantization_steps(model)
        self._ref: tuple | None = None
        self._values: dict | None = None  # every value of onnxruntime's run, when a NaN question comes up
        self._graph = None  # graphopt's import of the model, made once

    @property
    def ref(self) -> tuple[list | None, str]:
        if self._ref is None:
            self._ref = run_reference(self.model, self.feeds)
        return self._ref

    def classify(self, backend: str, level: int) -> Outcome:
        if self._graph is None:
            import graphopt

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._graph = graphopt.load(self.model)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 -- refusing a valid model is a crash at every level
                return self.judge(None, exc)
        got, exc = run_graphopt(self.model, self.feeds, backend, level, self._graph)
        return self.judge(got, exc)

    def judge(self, got, exc) -> Outcome:
        if self.ort is None:
            ref, ref_error = self.ref
            if ref is None:
                return Outcome("invalid", f"onnxruntime: {self.ort_error}; reference: {ref_error}")
            if exc is not None:
                return Outcome("invalid", f"onnxruntime and graphopt refuse it ({_first_line(exc)}); "
                                          f"the reference runs it")
            why = differ(ref, got, self.names, steps=self.steps)
            if why:
                return Outcome("disputed", f"onnxruntime refuses it ({self.ort_error}); against the reference: {why}")
            return Outcome("ort_divergence", f"onnxruntime refuses a model graphopt and the reference run: "
                                             f"{self.ort_error}")
        if exc is not None:
            from ..errors import UnsupportedOpError

            kind = "unsupported" if isinstance(exc, UnsupportedOpError) else "crash"
            return Outcome(kind, f"{type(exc).__name__}: {_first_line(exc)}", type(exc).__name__)
        why = differ(self.ort, got, self.names, steps=self.steps)
        if why is None:
            return Outcome("ok")
        if len(got) != len(self.ort):
            return Outcome("mismatch", why)
        bad = [i for i, (e, g) in enumerate(zip(self.ort, got)) if differ([e], [g], steps=self.steps[i:i + 1])]
        side = self._reference_sides_with(got, bad)
        if side == "graphopt":
            return Outcome("ort_divergence", f"onnxruntime differs from graphopt and the reference: {why}")
        if side is None and (_only_at_nan(self.ort, got) or self._nan_reaches(bad)):
            return Outcome("disputed", f"NaN handling differs and the reference cannot say: {why}")
        return Outcome("mismatch", why)

    def _nan_reaches(self, bad: list[int]) -> bool:
        """Whether a NaN (in onnxruntime's run) feeds the computation of the outputs ``bad``: ONNX
        leaves what max, argmax, quantization... do with NaN open."""
        from .minimize import intermediate_values

        if self._values is None:
            self._values = intermediate_values(self.model, self.feeds)
        made_by = {o: n for n in self.model.graph.node for o in n.output}
        stack, seen = [self.model.graph.output[i].name for i in bad], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            n = made_by.get(name)
            if n is not None:
                stack.extend(i for i in n.input if i)
        for name in seen:
            a = self._values.get(name)
            if a is not None and np.asarray(a).dtype.kind == "f" and np.isnan(a).any():
                return True
        return False

    def _reference_sides_with(self, got, bad: list[int]) -> str | None:
        """"graphopt" or "onnxruntime": whom the reference agrees with on just the outputs that differ
        (so that an op it cannot run elsewhere in the graph does not matter); None when it cannot run
        them or agrees with neither."""
        from .minimize import prune

        sub = onnx_copy(self.model)
        keep = [sub.graph.output[i] for i in bad]
        del sub.graph.output[:]
        sub.graph.output.extend(keep)
        sub = prune(sub)
        ref, _ = run_reference(sub, {i.name: self.feeds[i.name] for i in sub.graph.input})
        if ref is None:
            return None
        ort_bad, got_bad, steps = [self.ort[i] for i in bad], [got[i] for i in bad], [self.steps[i] for i in bad]
        if differ(ref, got_bad, steps=steps) is None:
            return "graphopt"
        return "onnxruntime" if differ(ref, ort_bad, steps=steps) is None else None


def _only_at_nan(expected, got) -> bool:
    """Whether every disagreement between two same-shaped float outputs is where one side is NaN."""
    for e, g in zip(expected, got):
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape or e.dtype != g.dtype:
            return False
        if e.dtype.kind != "f":
            if not np.array_equal(e, g):
                return False
            continue
        with np.errstate(invalid="ignore"):
            close = np.isclose(g.astype(np.float64), e.astype(np.float64), rtol=1e-3, atol=1e-4, equal_nan=True)
        if not (close | np.isnan(e) | np.isnan(g)).all():
            return False
    return True


def _quantization_steps(model) -> list[float | None]:
    """Per graph output: the largest scale of the DequantizeLinear that makes it (a constant), else None."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    steps = []
    for out in model.graph.output:
        n = made_by.get(out.name)
        scale = inits.get(n.input[1]) if n is not None and n.op_type == "DequantizeLinear" else None
        steps.append(float(np.max(np.abs(numpy_helper.to_array(scale)))) if scale is not None else None)
    return steps


def onnx_copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
