"""A one-line progress indicator for long CLI work (calibration, benchmarks, conformance).

It writes to stderr, and only when stderr is a terminal: logs, pipes and CI output
stay clean, and ``--json`` output on stdout is never touched. The line is
redrawn in place (``\\r``) at most every ``interval`` seconds and erased when the
work ends.

>>> import io
>>> with Progress("calibrating", total=3, stream=io.StringIO()) as p:   # not a terminal: silent
...     p.update(1)
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``Progress(label, total)``; ``update(done, note="")`` as work advances; ``close()`` (or
    use it as a context manager) erases the line. ``enabled=False`` silences it outright."""

    def __init__(self, label: str, total: int | None = None, *, stream: TextIO | None = None,
                 interval: float = 0.1, enabled: bool = True):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self._last = 0.0
        self._width = 0
        self._start = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < self.interval and (self.total is None or done < self.total):
            return
        self._last = now
        if self.total:
            width = 24
            filled = min(width, int(width * done / self.total))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        else:
            bar = str(done)
        line = f"{self.label} {bar} {now - self._start:.1f}s {note}".rstrip()[:100]
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress"]
