"""Progress: drawn by rich on a terminal and erased at the end, silent elsewhere; steps only when shown."""
import io

from graphopt import progress
from graphopt.progress import Progress, step


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
    with Progress("calibrating", 4, stream=s) as p:
        for i in range(4):
            p.update(i + 1, "batches")
    out = s.getvalue()
    assert "calibrating" in out and "4/4" in out and "batches" in out
    assert "\n" not in out  # redrawn in place, never scrolled
    assert out.rstrip("\r").endswith("\x1b[2K\x1b[?25h")  # the line is cleared and the cursor back at the end


def test_disabled_outright():
    s = Tty()
    with Progress("x", 2, stream=s, enabled=False) as p:
        p.update(2)
    assert s.getvalue() == ""


def test_steps_draw_only_when_shown_and_share_one_display():
    s = Tty()
    with step("building", stream=s):
        pass
    assert s.getvalue() == ""  # library code stays silent in a user's program
    progress.show_steps(True)
    try:
        with Progress("timing", 2, stream=s) as bar:
            with step("building cpu-native", stream=s):  # nested: one live display, no error
                bar.update(2)
    finally:
        progress.show_steps(False)
    out = s.getvalue()
    assert "building cpu-native" in out and "timing" in out and "2/2" in out
    assert progress._display is None  # released when the last user closed
