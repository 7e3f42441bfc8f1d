"""ONNX's own backend node tests, run against graphopt's CPU reference (and, with
``--backend cuda-emu``, against the generated CUDA kernels under host emulation).

Each case of ``onnx.backend.test.case.node.collect_testcases()`` (a one-node
model, or the node's function body for the ``_expanded`` variants, with inputs
and expected outputs) is imported with ``graphopt.onnx_io``, compiled for the
CPU backend and run; the outputs are compared as ONNX's own backend runner
compares them (rtol 1e-3, atol 1e-7 unless the case says otherwise) and, in
addition, their dtypes must match exactly. Each case ends in one status:

* ``pass``         the outputs match;
* ``fail``         it ran and gave a wrong answer (values, shape, dtype or count);
* ``unsupported``  graphopt refused it with ``UnsupportedOpError`` (an op,
                   attribute value, mode or element type it does not implement);
* ``error``        anything else: an import failure or a crash inside a kernel.

Non-deterministic ops (``Bernoulli``, ``RandomNormal``...) are checked for
output shape and dtype only (``RANDOM_OPS``).

Another backend (``backend="cuda-emu"``) runs the same cases through the same
judge. Its cases are compiled in chunks, each chunk's kernels in one host compile
(``kernel_batch``); the summary then also counts, per operator, the cases the CPU
reference passes and the share of those the backend passes (``vs_cpu``).

Run it as a command::

    python -m graphopt.conformance                 # pass rate per operator and overall
    python -m graphopt.conformance --op Resize -v  # one operator, with each failing case's reason
    python -m graphopt.conformance --json
    python -m graphopt.conformance --backend cuda-emu --json   # the CUDA kernels, emulated

``tests/conformance/test_onnx_node_tests.py`` runs the same cases under pytest
with a committed list of expected failures. onnx is imported only when a
function here is called.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

STATUSES = ("pass", "fail", "unsupported", "error")

# outputs drawn at random: only their shapes and dtypes can be compared
RANDOM_OPS = frozenset({"Bernoulli", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Multinomial"})

_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


@dataclass
class CaseResult:
    name: str
    op: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    host_nodes: int = 0  # nodes the backend ran on the host (its fallback for a node with no kernel)


def node_cases(pattern: str | None = None, cache_dir: str | os.PathLike | None = None) -> list:
    """ONNX's node test cases (``onnx.backend.test.case.TestCase``), optionally those whose
    name matches the regular expression ``pattern``.

    Collecting them computes every expected output (seconds); with ``cache_dir`` the result is
    kept there as a pickle keyed by the onnx version (the test suite keeps it in pytest's cache).

    >>> [c.name for c in node_cases("^test_abs$")]    # doctest: +SKIP
    ['test_abs']
    """
    import onnx

    cases = None
    path = None if cache_dir is None else Path(cache_dir) / f"onnx-{onnx.__version__}-node-cases.pkl"
    if path is not None and path.is_file():
        try:
            with open(path, "rb") as f:
                cases = pickle.load(f)
        except Exception:  # a stale or truncated cache is rebuilt
            cases = None
    if cases is None:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            from onnx.backend.test.case.node import collect_testcases

            cases = list(collect_testcases(None))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(cases, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    if pattern:
        rx = re.compile(pattern)
        cases = [c for c in cases if rx.search(c.name)]
    return cases


def case_ops(cases: Iterable) -> dict[str, str]:
    """Case name -> the operator it tests (an ``_expanded`` case tests its base case's op)."""
    cases = list(cases)
    ops: dict[str, str] = {}
    for c in cases:
        nodes = c.model.graph.node
        if not _EXPANDED.search(c.name) and len(nodes) == 1:
            n = nodes[0]
            ops[c.name] = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
    for c in cases:
        if c.name not in ops:
            ops[c.name] = ops.get(_EXPANDED.sub("", c.name), "?")
    return ops


def _to_array(x: Any) -> Any:
    """A data-set entry as graphopt feeds and compares it: TensorProto decoded, sequences as lists."""
    from onnx import TensorProto, numpy_helper

    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, (list, tuple)):
        return [_to_array(e) for e in x]
    if x is None:
        return None
    return np.asarray(x)


def compare_outputs(got: Sequence, want: Sequence, rtol: float, atol: float, *, random: bool = False) -> str | None:
    """Why ``got`` differs from ``want`` (ONNX's runner's rules plus exact dtypes), or None.

    >>> compare_outputs([np.float32([1, 2])], [np.float32([1, 2.0001])], 1e-3, 1e-7) is None
    True
    """
    return _compare_seq(list(got), list(want), rtol, atol, random, "output")


def _compare_seq(got: list, want: list, rtol, atol, random, item: str) -> str | None:
    if len(got) != len(want):
        return f"{len(got)} {item}s, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        why = _compare_one(g, w, rtol, atol, random)
        if why:
            return f"{item} {i}: {why}"
    return None


def _compare_one(g, w, rtol, atol, random) -> str | None:
    if w is None or g is None:
        return None if g is None and w is None else f"got {_kind(g)}, expected {_kind(w)}"
    if isinstance(w, list):
        if not isinstance(g, list):
            return f"got {_kind(g)}, expected a sequence"
        return _compare_seq(g, w, rtol, atol, random, "sequence element")
    if isinstance(g, list):
        return f"got a sequence, expected {_kind(w)}"
    g, w = np.asarray(g), np.asarray(w)
    if g.shape != w.shape:
        return f"shape {list(g.shape)}, expected {list(w.shape)}"
    if g.dtype != w.dtype:
        return f"dtype {g.dtype}, expected {w.dtype}"
    if random:
        return None
    if w.dtype == object or w.dtype.kind in "USb" or w.dtype.kind in "iu":
        if not np.array_equal(g, w):
            bad = int(np.sum(g != w))
            return f"{bad} of {w.size} elements differ"
        return None
    gf, wf = g, w
    if w.dtype.kind not in "fc":  # bfloat16, float8, float4, int4 (ml_dtypes): compare as float32
        gf, wf = g.astype(np.float32), w.astype(np.float32)
        if w.dtype.name == "bfloat16":
            rtol = max(rtol, 2 ** -6)  # two bfloat16 ulps, as ONNX's runner allows
    with np.errstate(all="ignore"):
        ok = np.isclose(gf, wf, rtol=rtol, atol=atol, equal_nan=True)
    if not ok.all():
        k = int(np.argmin(ok.reshape(-1)))
        return (f"{int((~ok).sum())} of {w.size} values differ beyond rtol={rtol:g} atol={atol:g} "
                f"(first at flat index {k}: {gf.reshape(-1)[k]!r} vs {wf.reshape(-1)[k]!r})")
    return None


def _kind(x) -> str:
    if x is None:
        return "nothing"
    if isinstance(x, list):
        return "a sequence"
    return f"a tensor {getattr(x, 'dtype', type(x).__name__)}{list(np.shape(x))}"


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return f"{type(exc).__name__}: {s.splitlines()[0] if s else ''}"


def _backend(name: str):
    if name == "cpu":
        from .plugins.cpu import CpuBackend

        return CpuBackend()
    from .plugin_loader import get_backend

    return get_backend(name)


def run_case(case, op: str = "?", backend: str = "cpu") -> CaseResult:
    """Import, compile and run one node test case on ``backend`` and judge the result.

    >>> r = run_case(node_cases("^test_relu$")[0], "Relu"); r.status   # doctest: +SKIP
    'pass'
    """
    return _finish(*_compile_case(case, op, backend))


def _compile_case(case, op: str, backend: str):
    """``(case, op, t0, exe or a finished CaseResult)``: everything before the run."""
    from .errors import GraphoptError, ModelLoadError, UnsupportedOpError
    from .onnx_io.importer import from_onnx_model

    t0 = time.perf_counter()

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            graph = from_onnx_model(case.model, label=case.name)
        except ModelLoadError as exc:
            if "unsupported element type" in str(exc):
                return case, op, t0, _result(case, op, t0, "unsupported", _first_line(exc))
            return case, op, t0, _result(case, op, t0, "error", "import: " + _first_line(exc))
        except Exception as exc:  # an importer bug
            return case, op, t0, _result(case, op, t0, "error", "import crashed: " + _first_line(exc))
        try:
            exe = _backend(backend).compile(graph)
            if hasattr(exe, "for_feeds"):  # specialized now (shape inputs): its kernels join the chunk's one build
                exe.for_feeds(_feeds(case))
            return case, op, t0, exe
        except Exception as exc:
            return case, op, t0, _failure(case, op, t0, exc)


def _feeds(case) -> dict:
    inputs, _ = case.data_sets[0]
    return {vi.name: _to_array(x) for vi, x in zip(case.model.graph.input, inputs)}


def _result(case, op, t0, status: str, detail: str = "") -> CaseResult:
    return CaseResult(case.name, op, status, detail, time.perf_counter() - t0)


def _failure(case, op, t0, exc: BaseException) -> CaseResult:
    from .errors import GraphoptError, UnsupportedOpError

    if isinstance(exc, UnsupportedOpError):
        return _result(case, op, t0, "unsupported", _first_line(exc))
    if isinstance(exc, GraphoptError):
        cause = exc.__cause__
        if isinstance(cause, UnsupportedOpError):
            return _result(case, op, t0, "unsupported", _first_line(cause))
        return _result(case, op, t0, "error", _first_line(exc))
    return _result(case, op, t0, "error", "crashed: " + _first_line(exc))  # a crash outside any kernel


def _finish(case, op, t0, exe) -> CaseResult:
    """Run a compiled case and judge its outputs (``exe`` may already be a result)."""
    if isinstance(exe, CaseResult):
        return exe
    _, expected = case.data_sets[0]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            got = exe.run(_feeds(case))
        except Exception as exc:
            return _failure(case, op, t0, exc)
    why = compare_outputs(list(got), [_to_array(w) for w in expected], case.rtol, case.atol,
                          random=op in RANDOM_OPS)
    r = _result(case, op, t0, "fail", why) if why else _result(case, op, t0, "pass")
    r.host_nodes = len(getattr(exe, "stats", {}).get("host_nodes", ()))
    return r


CHUNK = 120  # cases whose kernels share one host compile under cuda-emu


def run_all(cases: Sequence, progress: bool = False, backend: str = "cpu", isolate: bool = False) -> list[CaseResult]:
    """Every case on ``backend``; cuda-emu compiles ``CHUNK`` cases' kernels at a time in one
    host compile (and, when that compile fails, each case of the chunk alone). With ``isolate``
    each chunk runs in a child process, so a kernel that kills its process (a fault in emulated
    code) costs its own case, reported as an ``error``, not the run."""
    from .progress import Progress

    ops = case_ops(cases)
    out = []
    with Progress(f"conformance ({backend})", len(cases), enabled=progress) as bar:
        if backend != "cuda-emu":
            for i, c in enumerate(cases):
                out.append(run_case(c, ops[c.name], backend))
                bar.update(i + 1, c.name)
            return out
        for at in range(0, len(cases), CHUNK):
            chunk = cases[at:at + CHUNK]
            out += _run_isolated(chunk, ops, backend) if isolate else _run_chunk(chunk, ops, backend)
            bar.update(len(out), cases[min(at + CHUNK, len(cases)) - 1].name)
    return out


def _chunk_in_child(cases, ops, backend, conn) -> None:
    conn.send(_run_chunk(cases, ops, backend))
    conn.close()


def _in_child(cases: Sequence, ops: dict, backend: str, worker=_chunk_in_child) -> list[CaseResult] | int:
    """``worker`` (``_run_chunk`` by default) in a spawned process: its results, or the process's
    exit code if it died."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: no threads or OpenMP state inherited
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=worker, args=(list(cases), {c.name: ops[c.name] for c in cases}, backend, send))
    p.start()
    send.close()
    try:
        got = recv.recv()
    except EOFError:  # it died before sending
        got = None
    p.join()
    return got if got is not None else (p.exitcode or -1)


def _run_isolated(cases: Sequence, ops: dict, backend: str, worker=_chunk_in_child) -> list[CaseResult]:
    got = _in_child(cases, ops, backend, worker)
    if not isinstance(got, int):
        return got
    out = []
    for c in cases:  # find the case that kills its process: each alone
        t0 = time.perf_counter()
        one = got if len(cases) == 1 else _in_child([c], ops, backend, worker)
        out += one if not isinstance(one, int) else [_result(c, ops[c.name], t0, "error", f"crashed: {_death(one)}")]
    return out


def _death(code: int) -> str:
    import signal

    if code < 0:
        try:
            return f"the process died of {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"the process exited with status {code}"


def _run_chunk(cases: Sequence, ops: dict, backend: str) -> list[CaseResult]:
    from .plugins.cuda.compile_emu import kernel_batch

    try:
        with kernel_batch() as batch:
            compiled = [_compile_case(c, ops[c.name], backend) for c in cases]
            batch.flush()
    except Exception:  # one case's kernels break the shared build: build each case alone
        if len(cases) == 1:
            raise
        return [r for c in cases for r in _run_alone(c, ops, backend)]
    return [_finish(*item) for item in compiled]


def _run_alone(case, ops: dict, backend: str) -> list[CaseResult]:
    t0 = time.perf_counter()
    try:
        return _run_chunk([case], ops, backend)
    except Exception as exc:
        return [_result(case, ops[case.name], t0, "error", "kernel build: " + _first_line(exc))]



def summarize(results: Sequence[CaseResult], cpu: Sequence[CaseResult] | None = None) -> dict:
    """Counts per operator and overall: ``{"overall": {...}, "ops": {op: {...}}}``; ``kernel_pass``
    counts the passes with no node on the host. With the CPU reference's results of the same
    cases, also ``cpu_pass``, ``vs_cpu`` (the share of the cases the CPU passes that these pass
    too) and ``kernels_vs_cpu`` (the same, counting only passes with every node on kernels)."""
    cpu_pass = {r.name for r in cpu or () if r.status == "pass"}
    keys = STATUSES + ("kernel_pass",) + (("cpu_pass", "both_pass", "both_kernel_pass") if cpu is not None else ())
    per: dict[str, dict[str, int]] = {}
    for r in results:
        d = per.setdefault(r.op, dict.fromkeys(keys, 0))
        d[r.status] += 1
        d["kernel_pass"] += r.status == "pass" and not r.host_nodes
        if cpu is not None and r.name in cpu_pass:
            d["cpu_pass"] += 1
            d["both_pass"] += r.status == "pass"
            d["both_kernel_pass"] += r.status == "pass" and not r.host_nodes
    total = dict.fromkeys(keys, 0)
    for d in per.values():
        for k in keys:
            total[k] += d[k]
    for d in list(per.values()) + [total]:
        n = sum(d[k] for k in STATUSES)
        d["cases"] = n
        d["pass_rate"] = round(d["pass"] / n, 4) if n else 0.0
        if cpu is not None:
            d["vs_cpu"] = round(d["both_pass"] / d["cpu_pass"], 4) if d["cpu_pass"] else None
            d["kernels_vs_cpu"] = round(d["both_kernel_pass"] / d["cpu_pass"], 4) if d["cpu_pass"] else None
    return {"overall": total, "ops": dict(sorted(per.items()))}


def format_table(summary: dict, results: Sequence[CaseResult], verbose: bool = False) -> str:
    vs = "vs_cpu" in summary["overall"]
    extra = f" {'cpu ok':>6} {'vs cpu':>7} {'kernels':>7}" if vs else ""

    def row(name: str, d: dict) -> str:
        s = (f"{name:<34} {d['cases']:>5} {d['pass']:>5} {d['fail']:>5} {d['unsupported']:>5} "
             f"{d['error']:>5} {d['pass_rate']:>7.1%}")
        if vs:
            s += f" {d['cpu_pass']:>6}"
            for k in ("vs_cpu", "kernels_vs_cpu"):
                s += f" {d[k]:>7.1%}" if d[k] is not None else f" {'-':>7}"
        return s

    lines = [f"{'operator':<34} {'cases':>5} {'pass':>5} {'fail':>5} {'unsup':>5} {'error':>5} {'rate':>7}{extra}"]
    by_op: dict[str, list[CaseResult]] = {}
    for r in results:
        by_op.setdefault(r.op, []).append(r)
    for op, d in summary["ops"].items():
        lines.append(row(op, d))
        if verbose:
            for r in by_op[op]:
                if r.status != "pass":
                    lines.append(f"    {r.name}: {r.status}: {r.detail[:200]}")
                elif r.host_nodes:
                    lines.append(f"    {r.name}: pass with {r.host_nodes} node(s) on the host")
    lines.append("-" * (72 + len(extra)))
    lines.append(row("overall", summary["overall"]))
    failing = [op for op, d in summary["ops"].items() if d["pass"] < d["cases"]]
    lines.append(f"{len(summary['ops']) - len(failing)} of {len(summary['ops'])} operators pass every case")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m graphopt.conformance",
        description="Run ONNX's backend node tests against graphopt's CPU reference (or another backend) and "
                    "print the pass rate per operator and overall.",
        epilog="examples:\n  python -m graphopt.conformance\n  python -m graphopt.conformance --op Resize -v\n"
               "  python -m graphopt.conformance -k '^test_reduce' --json\n"
               "  python -m graphopt.conformance --backend cuda-emu --op GatherND -v",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="pattern", default=None, help="only cases whose name matches this regex")
    ap.add_argument("--op", action="append", default=[], help="only cases of this operator (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every case that does not pass, with why")
    ap.add_argument("--json", action="store_true", help="print the summary and every case's result as JSON")
    ap.add_argument("--backend", default="cpu",
                    help="the backend to run the cases on (default cpu; cuda-emu also runs them on the CPU "
                         "reference and reports the share of its passes it matches)")
    args = ap.parse_args(argv)
    try:
        cases = node_cases(args.pattern)
    except ImportError:
        print("error: the conformance run needs the onnx package: pip install 'graphopt[onnx]'", file=sys.stderr)
        return 2
    if args.op:
        ops = case_ops(cases)
        cases = [c for c in cases if ops[c.name] in set(args.op)]
    if not cases:
        print("error: no test case matches", file=sys.stderr)
        return 2
    if args.backend != "cpu":
        ok, why = _backend(args.backend).is_available()
        if not ok:
            print(f"error: backend {args.backend!r} is not available: {why}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    results = run_all(cases, progress=not args.json, backend=args.backend, isolate=args.backend != "cpu")
    cpu = run_all(cases) if args.backend != "cpu" else None
    summary = summarize(results, cpu)
    summary["backend"] = args.backend
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        json.dump({**summary, "cases": [asdict(r) for r in results]}, sys.stdout, indent=1)
        print()
    else:
        print(format_table(summary, results, args.verbose))
        print(f"({len(results)} cases in {summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
