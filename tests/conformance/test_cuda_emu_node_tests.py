"""ONNX's backend node tests on the CUDA backend under emulation (``cuda-emu``): a time-boxed
share of them, with the harness of the CPU conformance (``graphopt.conformance``, same judge,
same tolerances).

The share is one case per operator that the CUDA backend has a lowering for (the first case
of the operator by name), compiled in chunks whose kernels share one host compile. Each must
pass as it does on the CPU reference, unless ``expected_failures.txt`` lists it (then it must
not pass on the CPU either: the case is outside graphopt) or ``expected_failures_cuda.txt``
does (cuda only, with a reason; a listed case that starts passing fails the run, so the list
stays honest). Passing with nodes on the host (the backend's fallback) counts as passing here;
the share of passes on kernels alone is checked separately. The full run's per-operator
figures are in ``benchmarks/results/`` (``python -m graphopt.conformance --backend cuda-emu``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("onnx")

from graphopt.conformance import case_ops, node_cases, run_all  # noqa: E402
from graphopt.plugin_loader import get_backend  # noqa: E402

HERE = Path(__file__).parent
CUDA_EXPECTED_FILE = HERE / "expected_failures_cuda.txt"
MIN_KERNEL_SHARE = 0.85  # of the share's passes, those with every node on a kernel

emu_ok, emu_why = get_backend("cuda-emu").is_available()
pytestmark = pytest.mark.skipif(not emu_ok, reason=f"cuda-emu is not available: {emu_why}")


def _expected(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition(":")
            out[name.strip()] = rest.strip()
    return out


def share(cases, ops) -> list:
    """The first case (by name) of every operator the CUDA backend lowers."""
    from graphopt.plugins.cuda.lowerings import LOWERINGS

    lowered = {op for _, op in LOWERINGS}
    seen, out = set(), []
    for c in sorted(cases, key=lambda c: c.name):
        op = ops[c.name]
        if op in lowered and op not in seen:
            seen.add(op)
            out.append(c)
    return out


ALL = node_cases(cache_dir=os.environ.get("GRAPHOPT_CONFORMANCE_CACHE"))
OPS = case_ops(ALL)
SHARE = share(ALL, OPS)
CPU_EXPECTED = _expected(HERE / "expected_failures.txt")
CUDA_EXPECTED = _expected(CUDA_EXPECTED_FILE)


@pytest.fixture(scope="module")
def results():
    return {r.name: r for r in run_all(SHARE, backend="cuda-emu")}


@pytest.mark.parametrize("name", [c.name for c in SHARE])
def test_node_case_on_cuda_emu(results, name):
    r = results[name]
    if name in CPU_EXPECTED:
        assert r.status != "pass", f"{name} passes on cuda-emu but is listed for the CPU reference"
        return
    if name in CUDA_EXPECTED:
        assert r.status != "pass", f"{name} now passes on cuda-emu: remove it from {CUDA_EXPECTED_FILE.name}"
        return
    assert r.status == "pass", f"{name} ({r.op}) on cuda-emu: {r.status}: {r.detail}"


def test_most_passes_of_the_share_run_on_kernels_alone(results):
    passed = [r for r in results.values() if r.status == "pass"]
    on_kernels = [r for r in passed if not r.host_nodes]
    assert len(SHARE) >= 60 and passed
    assert len(on_kernels) >= MIN_KERNEL_SHARE * len(passed), \
        sorted(r.name for r in passed if r.host_nodes)


def test_cuda_expected_failures_name_real_cases():
    stale = sorted(set(CUDA_EXPECTED) - {c.name for c in ALL})
    assert not stale, f"{CUDA_EXPECTED_FILE.name} lists cases onnx no longer has: {stale}"
