"""benchmarks/gpu_session.sh, the one command a GPU session runs: it parses, is executable, and its
dry run (GPU_SESSION_DRY=1) lists the install, the device tests and the issue #5 / #7 benchmarks,
each under a timeout that fits the budget, writing nothing."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not on PATH")


def dry_run(tmp_path, **env) -> list[str]:
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GPU_SESSION_DRY": "1", "OUT": str(out), **env})
    assert res.returncode == 0, res.stderr
    assert not out.exists()  # a dry run writes nothing
    return [line for line in res.stdout.splitlines() if line.startswith("+ timeout")]


def test_script_parses_and_is_executable():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_lists_the_install_tests_and_benchmarks(tmp_path):
    commands = dry_run(tmp_path, GPU_SESSION_TAG="h200")
    text = "\n".join(commands)
    assert "python3 -m pip install --no-deps --no-build-isolation -e ." in text
    (tests,) = [c for c in commands if "-m pytest" in c]
    assert "tests/plugins/cuda/test_cuda_device.py" in tests and r"-k not\ fake" in tests
    benches = [c for c in commands if "benchmarks/bench_cuda.py" in c]
    assert any("--only int8" in c for c in benches)  # issue 7
    assert any("--only gemm" in c for c in benches)  # issue 5: 4096^3 vs cuBLAS
    (models,) = [c for c in benches if "--no-torch-compile" in c and "--only models" in c]
    assert "--models resnet50 bert_base --batches 1 32 --dtypes float32 float16" in models
    assert any("--only models" in c and "--no-torch-compile" not in c for c in benches)  # torch.compile, last
    out = str(tmp_path / "out")
    for c in commands[2:]:  # every output goes to $OUT as cuda-<what>-<gpu>-<date>.txt
        assert re.search(rf">>{re.escape(out)}/cuda-[a-z0-9-]+-h200-\d{{4}}-\d\d-\d\d\.txt$", c), c
    caps = [int(c.split()[4]) for c in commands]
    assert all(cap <= 510 for cap in caps)


def test_steps_and_budget_are_chosen_by_the_environment(tmp_path):
    commands = dry_run(tmp_path, GPU_SESSION_STEPS="tests gemm", GPU_SESSION_BUDGET_S="100")
    assert len(commands) == 2 and "-m pytest" in commands[0] and "--only gemm" in commands[1]
    tests_cap, gemm_cap = (int(c.split()[4]) for c in commands)
    assert 90 < tests_cap <= 100 and gemm_cap == 90  # a step's cap (200 for the tests), at most what is left
    assert dry_run(tmp_path, GPU_SESSION_BUDGET_S="10", GPU_SESSION_STEPS="tests") == []  # too little left
