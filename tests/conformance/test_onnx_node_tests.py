"""ONNX's backend node tests (``onnx.backend.test.case.node``) on graphopt's CPU reference.

Every case is one test: import the model with graphopt.onnx_io, run it on the CPU
backend, compare with the expected outputs at ONNX's tolerances, dtypes exact
(``graphopt.conformance.run_case``). The cases graphopt does not pass are listed
with a reason in ``expected_failures.txt``:

* ``unsupported`` entries must be refused with ``UnsupportedOpError`` (never a
  crash or a wrong answer), which the test asserts;
* other entries are strict xfails that must fail the way they are listed: a
  case that starts passing (XPASS) or fails differently fails the run.

Non-deterministic ops (Bernoulli, Random*) are compared on shape and dtype only
and carry the ``nondeterministic`` mark.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("onnx")

from graphopt.conformance import RANDOM_OPS, case_ops, node_cases, run_case  # noqa: E402

EXPECTED_FILE = Path(__file__).with_name("expected_failures.txt")
MIN_PASS_RATE = 0.90


def load_expected(path: Path = EXPECTED_FILE) -> dict[str, tuple[str, str]]:
    """``case name -> (kind, reason)`` from the committed list."""
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        kind, sep2, reason = rest.partition(":")
        if not sep or not sep2 or not reason.strip():
            raise ValueError(f"{path.name}:{lineno}: expected 'case_name: kind: reason', got {line!r}")
        kind = kind.strip()
        if kind not in ("unsupported", "fail", "error"):
            raise ValueError(f"{path.name}:{lineno}: kind {kind!r} is not unsupported, fail or error")
        if name.strip() in out:
            raise ValueError(f"{path.name}:{lineno}: {name.strip()} is listed twice")
        out[name.strip()] = (kind, reason.strip())
    return out


CASES = {c.name: c for c in node_cases(cache_dir=os.environ.get("GRAPHOPT_CONFORMANCE_CACHE"))}  # see conftest
OPS = case_ops(CASES.values())
EXPECTED = load_expected()


class ListedFailure(AssertionError):
    """The case failed exactly as expected_failures.txt says: the only outcome a strict xfail accepts."""


def _params():
    for name in CASES:
        marks = []
        if OPS[name] in RANDOM_OPS:
            marks.append(pytest.mark.nondeterministic)
        kind, reason = EXPECTED.get(name, (None, None))
        if kind in ("fail", "error"):
            marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=ListedFailure))
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", _params())
def test_node(name):
    r = run_case(CASES[name], OPS[name])
    kind, reason = EXPECTED.get(name, (None, None))
    if kind is None:
        assert r.status == "pass", f"{name} ({r.op}): {r.status}: {r.detail}"
    elif kind == "unsupported":
        assert r.status != "pass", f"{name} now passes: remove it from {EXPECTED_FILE.name}"
        assert r.status == "unsupported", \
            f"{name} ({r.op}) must be refused with UnsupportedOpError, got {r.status}: {r.detail}"
        assert r.detail.startswith("UnsupportedOpError"), r.detail
    else:
        assert r.status == kind, f"{name} ({r.op}) was listed as {kind!r} ({reason}) but is {r.status}: {r.detail}"
        raise ListedFailure(f"{r.status}: {r.detail}")


def test_expected_failures_name_real_cases_and_keep_the_pass_rate():
    stale = sorted(set(EXPECTED) - set(CASES))
    assert not stale, f"{EXPECTED_FILE.name} lists cases onnx no longer has: {stale}"
    rate = 1 - len(EXPECTED) / len(CASES)
    assert rate >= MIN_PASS_RATE, f"expected pass rate {rate:.1%} is below {MIN_PASS_RATE:.0%}"


def test_an_unknown_op_is_a_clean_unsupported_result():
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    import numpy as np

    class Case:  # the shape of onnx's TestCase that run_case reads
        name, rtol, atol = "custom_no_such_op", 1e-3, 1e-7
        data_sets = [([np.zeros(2, np.float32)], [np.zeros(2, np.float32)])]

    Case.model = model
    r = run_case(Case, "com.example::NoSuchOp")
    assert r.status == "unsupported" and "com.example::NoSuchOp" in r.detail, r
