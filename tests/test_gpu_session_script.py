"""benchmarks/gpu_session.sh, the one command a GPU session runs, and benchmarks/gpu_report.py, which
summarizes what it wrote: the script parses and is executable; its dry run (GPU_SESSION_DRY=1) lists
every step in the order a short device lease needs (install, versions, a smoke test, the headline
float16 models vs torch eager and torch.compile reduce-overhead, the 4096^3 GEMM vs cuBLAS, the device
tests, the report) with the seconds each may take, all inside one 420 s call, writing nothing; and
the report turns the files those steps write into one Markdown summary."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not on PATH")
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cuda  # noqa: E402
import gpu_report  # noqa: E402

DEVICE_CALL_S = 420  # the longest one device call of a session may be


def dry_run(tmp_path, **env) -> tuple[list[str], list[str]]:
    """(the planned steps' lines, their commands)."""
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GPU_SESSION_DRY": "1", "OUT": str(out), **env})
    assert res.returncode == 0, res.stderr
    assert not out.exists()  # a dry run writes nothing
    lines = res.stdout.splitlines()
    return [l for l in lines if l.startswith("step ")], [l for l in lines if l.startswith("+ timeout")]


def test_script_parses_and_is_executable():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_plans_every_step_in_order_inside_one_device_call(tmp_path):
    steps, commands = dry_run(tmp_path, GPU_SESSION_TAG="h100")
    names = [l.split()[1] for l in steps]
    assert names == ["install", "env", "smoke", "models", "gemm", "tests", "report"]
    caps = {l.split()[1]: int(l.split()[2].rstrip("s")) for l in steps}
    by = [int(re.search(r"\(by +(\d+)s\)", l).group(1)) for l in steps]
    assert by == sorted(by) and by[-2] <= 400 and by[-1] <= 410 < DEVICE_CALL_S  # the report outside the budget
    assert caps["smoke"] <= 45 and caps["install"] <= 60
    text = "\n".join(commands)
    assert "python3 -m pip install --quiet --no-deps --no-build-isolation -e ." in text
    assert "benchmarks/gpu_smoke.py" in text
    (models,) = [c for c in commands if "--only models" in c]
    assert "--models resnet50 bert_base --batches 1 32 --dtypes float16" in models
    assert "--no-torch-compile" not in models  # the torch.compile peer, mode reduce-overhead by default
    (gemm,) = [c for c in commands if "--only gemm" in c]
    assert "--gemm-dtypes float16" in gemm
    (tests,) = [c for c in commands if "-m pytest" in c]
    assert "test_cuda_device.py" in tests and "test_cupy_contract.py" in tests and r"-k not\ fake" in tests
    out = str(tmp_path / "out")
    for c in commands[2:-1]:  # every step's output goes to $OUT as cuda-<what>-<gpu>-<date>.txt
        assert re.search(rf">>{re.escape(out)}/cuda-[a-z0-9-]+-h100-\d{{4}}-\d\d-\d\d\.txt$", c), c


def test_the_torch_compile_peer_is_reduce_overhead():
    assert bench_cuda.parse_args([]).torch_compile == "reduce-overhead"
    assert bench_cuda.parse_args(["--no-torch-compile"]).torch_compile is None
    cases = bench_cuda.model_cases(bench_cuda.parse_args(["--only", "models", "--batches", "1", "32"]))
    assert [b for _, b, _ in cases] == [1, 1, 32, 32]  # every model at batch 1 first


def test_steps_and_budget_are_chosen_by_the_environment(tmp_path):
    steps, commands = dry_run(tmp_path, GPU_SESSION_STEPS="smoke gemm", GPU_SESSION_BUDGET_S="60")
    assert [l.split()[1] for l in steps] == ["smoke", "gemm"]
    smoke_cap, gemm_cap = (int(c.split()[4]) for c in commands)
    assert smoke_cap == 45 and gemm_cap == 15  # a step's cap, at most what is left of the budget
    assert dry_run(tmp_path, GPU_SESSION_BUDGET_S="10", GPU_SESSION_STEPS="tests")[1] == []  # too little left


def _session_files(folder: Path, tag="h100", date="2026-12-07") -> None:
    folder.mkdir()
    name = lambda what: folder / f"cuda-{what}-{tag}-{date}.txt"  # noqa: E731
    name("session").write_text(
        "NVIDIA H100 80GB HBM3, 2026-12-07 10:00 UTC, commit abc1234, budget 400s, steps: install env\n"
        "step install: exit 0 after 21s (cap 60s) -> x\nstep smoke: exit 0 after 28s (cap 45s) -> x\n"
        "step models: exit 124 after 170s (cap 170s) -> x\n")
    name("smoke").write_text("smoke: device NVIDIA H100, compute capability 90\nsmoke cnn_ops: PASS in 3.1s (ok)\n"
                             "smoke gemm_family: FAIL AssertionError: y\n")
    rows = [("resnet50 b1 float16", 0.9, {"torch eager": 1.8}, "-O3"),
            ("resnet50 b1 float16", 0.9, {"torch.compile[reduce-overhead]": 0.6}, "compiled"),
            ("gemm 4096^3 float16", 0.25, {"cuBLAS": 0.2}, "550 TFLOP/s")]
    name("models").write_text("done: whatever\n" + "\n".join(bench_cuda.row_line(*r) for r in rows[:2])
                              + "\n# STOPPED: over its 170s\n")
    name("gemm").write_text(bench_cuda.row_line(*rows[2]) + "\n")
    name("tests").write_text("FAILED tests/x.py::test_y - AssertionError\n"
                             "===== 1 failed, 97 passed, 3 skipped in 101.2s =====\n"
                             + json.dumps({"what": "cuda_graph x", "value": "captured"}) + "\n")


def test_the_report_summarizes_what_the_steps_wrote(tmp_path):
    _session_files(tmp_path / "out")
    s = gpu_report.read_session(tmp_path / "out", "h100", "2026-12-07")
    assert s.steps["models"] == (124, 170, 170) and s.stopped == ["models"]
    assert [(c, r) for c, r, _ in s.smoke] == [("cnn_ops", "PASS"), ("gemm_family", "FAIL")]
    assert s.tests == "1 failed, 97 passed, 3 skipped" and len(s.failures) == 1 and len(s.facts) == 1
    table = gpu_report.ratio_rows(s.rows)
    assert [(c, p, round(r, 2)) for c, _, p, _, r, _ in table] == [
        ("resnet50 b1 float16", "torch eager", 0.5), ("resnet50 b1 float16", "torch.compile[reduce-overhead]", 1.5),
        ("gemm 4096^3 float16", "cuBLAS", 1.25)]
    summary = tmp_path / "summary.md"
    assert gpu_report.main([str(tmp_path / "out"), "--tag", "h100", "--date", "2026-12-07",
                            "--write", str(summary)]) == 0
    text = summary.read_text()
    assert "| resnet50 b1 float16 | 0.900 | torch eager | 1.800 | 0.50 |" in text
    assert "| models | 124 (stopped) | 170 | 170 |" in text and "Smoke test: 1 of 2 passed" in text


def test_the_report_of_a_session_that_never_ran(tmp_path):
    (tmp_path / "empty").mkdir()
    text = gpu_report.markdown(gpu_report.read_session(tmp_path / "empty", "h100", "2026-12-07"), "h100", "x")
    assert "(no step ran)" in text and "(nothing measured)" in text and "Device tests: no result" in text
