"""How the ``graphopt`` command prints results: tables drawn by rich, or JSON with ``--json``.

On a terminal a table has a box and a header and wraps to the window; elsewhere (a
pipe, a file, CI) it is plain aligned columns under a header line, one row per line
and never wrapped, so ``grep`` and ``head`` see whole rows. ``--json`` output is the
result object itself, unchanged by any of this.

>>> t = Table("pass", "level")
>>> t.add_row("fold_constants", "-O1")
>>> print(t.render(terminal=False))
pass            level
fold_constants  -O1
"""
from __future__ import annotations

import io
import json
import sys
from typing import Any, Sequence


class Table:
    """Rows under named columns; ``right`` names the columns to align right (numbers).
    ``str(t)`` is the plain form with its footer, for printing outside the command line."""

    def __init__(self, *columns: str, title: str | None = None, right: Sequence[str] = (),
                 footer: str | None = None):
        self.columns = list(columns)
        self.title = title
        self.footer = footer  # a line printed under the table (a total), by ``show`` and ``str``
        self.right = set(right)
        self.rows: list[list[str]] = []

    def add_row(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(["" if c is None else str(c) for c in cells])

    def __str__(self) -> str:  # print(t) outside the CLI: the plain form
        return self.render(terminal=False) + (f"\n{self.footer}" if self.footer else "")

    def render(self, terminal: bool, width: int | None = None) -> str:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
        from rich.text import Text

        t = RichTable(title=self.title if terminal else None, box=box.SIMPLE_HEAD if terminal else None,
                      show_edge=False, pad_edge=False, header_style="bold" if terminal else "")
        for c in self.columns:
            t.add_column(c, justify="right" if c in self.right else "left", no_wrap=not terminal)
        for row in self.rows:
            t.add_row(*(Text(c) for c in row))  # Text: a cell like float32[1,3] is not rich markup
        buf = io.StringIO()
        console = Console(file=buf, width=width or (None if terminal else 1 << 16), force_terminal=terminal,
                          color_system="auto" if terminal else None, highlight=False)
        console.print(t)
        lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
        if not terminal and self.title:
            lines.insert(0, self.title)
        return "\n".join(ln for ln in lines if ln or terminal).rstrip("\n")


def _terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def show(args, obj: Any, *parts: "Table | str | None") -> None:
    """Print ``obj`` as JSON under ``--json``, else each part (a table or a line of text) in turn."""
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, default=str))
        return
    terminal = _terminal()
    width = None
    if terminal:
        import shutil

        width = shutil.get_terminal_size().columns
    for p in parts:
        if p is None:
            continue
        if isinstance(p, Table):
            print(p.render(terminal, width))
            if p.footer:
                print(p.footer)
        else:
            print(p)


def fmt(x: float | None, spec: str = ".3g") -> str:
    """A number for a table cell; ``-`` for None."""
    return "-" if x is None else format(x, spec)
