"""Graphs checked in a worker process, so that a crash no exception catches costs one graph, not the run.

onnxruntime, graphopt's native CPU kernels and the emulated CUDA code run in
the fuzzing process; a generated model can crash them with a signal (onnxruntime
1.32 segfaults on some) or make them hang. ``Worker`` runs ``check_graph`` in a
spawned process that reports each step to the parent as it goes. When the worker
dies or stops answering, the parent knows the step it was in: onnxruntime (then
every cell of that graph is an onnxruntime-side divergence), a backend and level
(a graphopt crash, its graph written unminimized), or a minimization (the
outcome stands, without a reproducer); a fresh worker then checks the cells left.

>>> with Worker(params) as w:                         # doctest: +SKIP
...     events, death = w.check(7, skip=set(), timeout=300)
"""
from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Callable

Emit = Callable[..., None]


def _serve(conn, params: dict) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from ..plugin_loader import load_plugin
    from .run import check_graph

    for spec in params.get("plugins", ()):
        load_plugin(spec)
    seen = dict(params.get("seen", {}))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, skip = msg
        check_graph(index, params, lambda *event: conn.send(event), seen, skip)
        conn.send(("done",))


class Worker:
    """One worker process at a time; ``check`` restarts it after a death."""

    def __init__(self, params: dict):
        self.params = params
        self.proc = None
        self.conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # a fork would copy onnxruntime's and OpenMP's threads' locks
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.params), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def check(self, index: int, skip: set, timeout: float) -> tuple[list, str | None]:
        """The events of checking graph ``index`` (cells in ``skip`` left out), and why the worker
        died, if it did (``"SIGSEGV"``, ``"timed out after 300 s"``...)."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((index, sorted(skip)))
        events = []
        while True:
            if not self.conn.poll(timeout):
                self._kill()
                return events, f"timed out after {timeout:.0f} s"
            try:
                event = self.conn.recv()
            except (EOFError, OSError):
                self.proc.join(5)
                code = self.proc.exitcode
                self.proc = None
                return events, _death(code)
            if event == ("done",):
                return events, None
            events.append(event)
            if event[0] == "case":  # later workers must know the reproducers already written
                self.params.setdefault("seen", {})[event[1]["signature"]] = event[1]["folder"]

    def _kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(10)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
