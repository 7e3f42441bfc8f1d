"""Progress of long work (calibration, benchmarks, builds, compiles), drawn by rich on stderr.

Two kinds, one display: ``Progress(label, total)`` is a bar for counted work
(batches, timed runs), ``step(label)`` a spinner with the elapsed time for work
of unknown length (a native build, a compile, one emulated run). Both draw only
when stderr is a terminal, so logs, pipes and CI output stay clean and ``--json``
on stdout is never touched; the lines are erased when the work ends. Several at
once (a build inside a compile) share one rich live display.

``step`` is silent until ``show_steps(True)`` (the ``graphopt`` command turns it
on): library code may call it freely without drawing in a user's program.

>>> import io
>>> with Progress("calibrating", total=3, stream=io.StringIO()) as p:   # not a terminal: silent
...     p.update(1)
>>> with step("building the native CPU kernels (once per machine)"):   # silent unless show_steps(True)
...     pass
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator, TextIO

_lock = threading.Lock()
_display = None  # (rich Progress, stream, users) while anything is drawn
_show_steps = False


def show_steps(on: bool = True) -> None:
    """Let ``step`` draw (on a terminal). The ``graphopt`` command calls this; libraries do not."""
    global _show_steps
    _show_steps = bool(on)


def _is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def _acquire(stream: TextIO):
    """The shared rich display on ``stream`` (started by its first user), or None when another
    stream already holds it (one live display per process)."""
    global _display
    with _lock:
        if _display is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            class Counted:  # a bar and "n/total" for counted work, nothing for a step of unknown length
                def __init__(self, column):
                    self.column = column

                def __call__(self, task):
                    return "" if task.total is None else self.column(task)

                def __getattr__(self, name):
                    return getattr(self.column, name)

            console = Console(file=stream, force_terminal=True, stderr=stream is sys.stderr)
            bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                               Counted(BarColumn(bar_width=24)), Counted(MofNCompleteColumn()),
                               TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                               console=console, transient=True, refresh_per_second=4)
            bar.start()
            _display = [bar, stream, 0]
        if _display[1] is not stream:
            return None
        _display[2] += 1
        return _display[0]


def _release() -> None:
    global _display
    with _lock:
        if _display is None:
            return
        _display[2] -= 1
        if _display[2] <= 0:
            _display[0].stop()  # transient: the lines are erased
            _display = None


class Progress:
    """``Progress(label, total)``; ``update(done, note="")`` as work advances; ``close()`` (or
    use it as a context manager) erases it. ``enabled=False`` silences it outright.

    >>> with Progress("timing", 20) as bar:   # doctest: +SKIP
    ...     for i in range(20): bar.update(i + 1)
    """

    def __init__(self, label: str, total: int | None = None, *, stream: TextIO | None = None,
                 interval: float = 0.1, enabled: bool = True):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and _is_terminal(self.stream)
        self._bar = _acquire(self.stream) if self.enabled else None
        self._task = None
        if self._bar is not None:
            self._task = self._bar.add_task(label, total=total, note="")

    def update(self, done: int, note: str = "") -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=done, note=note,
                             refresh=self.total is not None and done >= self.total)

    def close(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
            _release()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def step(label: str, *, stream: TextIO | None = None) -> Iterator[Progress]:
    """A spinner with the elapsed time while the block runs (see the module docstring)."""
    bar = Progress(label, None, stream=stream, enabled=_show_steps)
    try:
        yield bar
    finally:
        bar.close()


__all__ = ["Progress", "show_steps", "step"]
