"""The progress line: drawn in place on a terminal, erased at the end, silent elsewhere."""
import io

from graphopt.progress import Progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_silent_when_not_a_terminal():
    s = io.StringIO()
    with Progress("work", 3, stream=s) as p:
        for i in range(3):
            p.update(i + 1)
    assert s.getvalue() == ""


def test_drawn_in_place_and_erased_on_a_terminal():
    s = Tty()
    with Progress("calibrating", 4, stream=s, interval=0.0) as p:
        for i in range(4):
            p.update(i + 1, "batches")
    out = s.getvalue()
    lines = out.split("\r")
    assert "calibrating [" in out and "4/4" in out and "batches" in out
    assert "\n" not in out  # one line, redrawn
    assert lines[-1] == "" and lines[-2].strip() == ""  # the last draw is blanked out


def test_disabled_outright():
    s = Tty()
    with Progress("x", 2, stream=s, enabled=False) as p:
        p.update(2)
    assert s.getvalue() == ""
