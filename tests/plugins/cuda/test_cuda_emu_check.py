"""Checked emulation (GRAPHOPT_EMU_CHECK): the CI-sized sweep of real kernels of every family
under AddressSanitizer and the race check finds nothing, and every planted bug is caught;
bad settings are one clear line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuda_harness import needs_emu
from graphopt.errors import GraphoptError
from graphopt.plugins.cuda import emucheck
from graphopt.plugins.cuda.compile_emu import host_compiler

pytestmark = needs_emu
HERE = Path(__file__).resolve().parent


def _asan_runtime() -> bool:
    try:
        out = subprocess.run([host_compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True)
    except (OSError, GraphoptError):
        return False
    return os.path.isabs(out.stdout.strip())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep run once, as the docs say to run it, with a launch log."""
    if not _asan_runtime():
        pytest.skip("the host compiler has no AddressSanitizer runtime")
    log = tmp_path_factory.mktemp("emucheck") / "launches.log"
    cmd = [sys.executable, "-m", "graphopt.plugins.cuda.emucheck", "asan,race", "--log", str(log), "--",
           sys.executable, str(HERE / "emucheck_suite.py")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    line = [l for l in res.stdout.splitlines() if l.startswith("EMUCHECK ")]
    assert res.returncode == 0 and line, f"the sweep failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    out = json.loads(line[0].removeprefix("EMUCHECK "))
    out["summary"] = [l for l in res.stdout.splitlines() if l.startswith("emucheck (")]
    out["stderr"] = res.stderr
    return out


def test_real_kernels_of_every_family_have_no_findings(sweep):
    assert sweep["checks"] == ["asan", "race"]
    real = sweep["real"]
    assert real["findings"] == []
    assert real["cases"] >= 50 and real["graphs"] >= 25 and real["kernels"] >= 100, real
    assert sweep["summary"] and "kernels checked" in sweep["summary"][0]


@pytest.mark.parametrize("bug, expect", [
    ("oob_write", ["p_oob_write", "heap-buffer-overflow", "WRITE of 4 bytes", "0 bytes to the right of 400-byte"]),
    ("oob_read", ["p_oob_read", "heap-buffer-overflow", "READ of 4 bytes", "4 bytes to the left of 400-byte"]),
    ("shared_oob", ["p_shared_oob", "global-buffer-overflow", "READ of 4 bytes", "global variable 's'"]),
    ("arena_overflow", ["node 'sigmoid", "_oob", "heap-buffer-overflow", "READ", "right of 1024-byte region"]),
    ("shared_race", ["differ between thread orders"]),
    ("shared_uninitialized", ["differ between thread orders"]),
    ("divergent_barrier", ["p_divergent", "reached different barriers"]),
    ("graph_race", ["node 'softmax", "_nosync", "race check", "thread order"]),
])
def test_planted_bug_is_caught(sweep, bug, expect):
    err = sweep["planted"][bug]
    assert err is not None, f"planted bug {bug} went unseen"
    for piece in expect:
        assert piece in err, err
    if "AddressSanitizer" in err:  # the full report went to stderr, naming the kernel's function
        assert "ERROR: AddressSanitizer" in sweep["stderr"]


def test_unknown_check_is_one_clear_line(monkeypatch):
    monkeypatch.setenv(emucheck.ENV, "asan,tsan")
    with pytest.raises(GraphoptError, match=r"GRAPHOPT_EMU_CHECK='asan,tsan': unknown check 'tsan'"):
        emucheck.modes()


def test_asan_without_its_runtime_says_how_to_run(monkeypatch):
    if emucheck.asan_loaded():
        pytest.skip("this process has AddressSanitizer's runtime")
    monkeypatch.setenv(emucheck.ENV, "asan")
    with pytest.raises(GraphoptError, match=r"python -m graphopt.plugins.cuda.emucheck asan -- <command>"):
        emucheck.compile_flags(emucheck.modes())


def test_wrapper_needs_a_command(capsys):
    with pytest.raises(SystemExit) as exc:
        emucheck.main(["race"])
    assert exc.value.code == 2 and "no command given" in capsys.readouterr().err
    assert emucheck.main(["bogus", "--", "true"]) == 2
